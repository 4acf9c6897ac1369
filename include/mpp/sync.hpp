// mpp — Python's synchronisation primitives across processes: Lock, RLock, Semaphore,
// BoundedSemaphore, Event, Condition, Barrier (DESIGN.md section 4).
//
// Each exists anonymous (`mpp::Lock l;`, inherited by forked children), named
// (`Lock::create(name)`, `open(name)`, `open_or_create(name)`) and as a raw in-segment state
// (detail/sync_state.hpp) that other objects embed. Handles are cheap to copy: copies share one
// mapping. Locks survive a dead holder: the next acquirer gets the lock within ~100 ms of the
// death and is told (`previous_owner_died()`), so it can repair what the lock protects.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>

#include "detail/sync_state.hpp"
#include "errors.hpp"
#include "segment.hpp"

namespace mpp {

namespace detail {

/// Converts a std::chrono duration into a Python-style Timeout.
template <class Rep, class Period>
Timeout to_timeout(std::chrono::duration<Rep, Period> d) noexcept {
  return std::chrono::duration<double>(d);
}

/// The deadline of acquire(block, timeout): non-blocking means "already expired".
inline Deadline acquire_deadline(bool block, const Timeout& timeout) noexcept {
  if (!block) return Deadline::after(std::chrono::nanoseconds(0));
  return Deadline::from(timeout);
}

/// A mapped segment holding a `State` at the start of its payload.
template <class State>
struct SyncHandle {
  std::shared_ptr<Segment> seg;
  State* state = nullptr;

  //!Effects: creates a segment (anonymous when `name` is empty) and constructs the state with
  //! `make(void*)` in its payload.
  template <class Make>
  static SyncHandle create(Kind kind, std::string_view name, Make&& make,
                           const SegmentOptions& opts) {
    const SegmentSpec spec{kind, type_info<State>(), sizeof(State), 0};
    auto init = [&](std::byte* p, std::uint64_t) { make(static_cast<void*>(p)); };
    Segment s = name.empty() ? Segment::create_anonymous(spec, init)
                             : Segment::create(name, spec, init, opts);
    return wrap(std::move(s));
  }
  /// Opens the named segment and checks that it holds a `State`.
  static SyncHandle open(Kind kind, std::string_view name, const SegmentOptions& opts) {
    return wrap(Segment::open(name, kind, type_info<State>(), opts));
  }
  template <class Make>
  static SyncHandle open_or_create(Kind kind, std::string_view name, Make&& make,
                                   const SegmentOptions& opts) {
    const SegmentSpec spec{kind, type_info<State>(), sizeof(State), 0};
    auto init = [&](std::byte* p, std::uint64_t) { make(static_cast<void*>(p)); };
    return wrap(Segment::open_or_create(name, spec, init, opts).first);
  }
  static SyncHandle wrap(Segment s) {
    if (s.payload_size() < sizeof(State))
      fail<CorruptedError>("'{}': payload of {} bytes cannot hold a {} of {} bytes", s.name(),
                           s.payload_size(), type_name<State>(), sizeof(State));
    SyncHandle h;
    h.seg = std::make_shared<Segment>(std::move(s));
    h.state = reinterpret_cast<State*>(h.seg->payload());
    return h;
  }
  const std::string& name() const noexcept {
    static const std::string none;
    return seg ? seg->name() : none;
  }
};

}  // namespace detail

/// RAII guard for any mpp lock (and Condition): acquires in the constructor, releases in the
/// destructor, and tells whether the previous holder died.
template <class L>
class Guard {
 public:
  //!Effects: acquires `l` (blocking). Throws: what l.acquire() throws.
  explicit Guard(L& l) : l_(&l) { l_->acquire(); }
  Guard(const Guard&) = delete;
  Guard& operator=(const Guard&) = delete;
  ~Guard() {
    if (l_ != nullptr) l_->release();
  }
  /// True if the lock was taken over from a holder that died: repair the protected data.
  bool previous_owner_died() const noexcept { return l_->previous_owner_died(); }

 private:
  L* l_;
};

/// Python's multiprocessing.Lock: a robust, non-recursive lock shared between processes.
/// Any process may release it (as in Python); releasing an unlocked Lock raises ValueError.
/// If a holder dies, the next acquirer gets the lock and previous_owner_died() is true.
class Lock {
 public:
  //!Effects: creates an anonymous lock (inherited by forked children). Throws: OSError.
  Lock() : h_(Handle::create(Kind::lock, {}, construct, {})) {}
  //!Effects: creates the named lock `name`. Throws: ExistsError, InvalidArgument, OSError.
  static Lock create(std::string_view name, const detail::SegmentOptions& opts = {}) {
    return Lock(Handle::create(Kind::lock, name, construct, opts));
  }
  //!Effects: opens the named lock `name`. Throws: NotFoundError, TypeMismatchError, ...
  static Lock open(std::string_view name, const detail::SegmentOptions& opts = {}) {
    return Lock(Handle::open(Kind::lock, name, opts));
  }
  /// Opens the named lock `name`, creating it if it does not exist.
  static Lock open_or_create(std::string_view name, const detail::SegmentOptions& opts = {}) {
    return Lock(Handle::open_or_create(Kind::lock, name, construct, opts));
  }
  //!Effects: a Lock over a LockState embedded in another object's segment; `owner` keeps that
  //! segment mapped while this handle (or a copy) lives. Throws: InvalidArgument on null state.
  static Lock view(std::shared_ptr<detail::Segment> owner, detail::LockState* state) {
    if (state == nullptr) detail::fail<InvalidArgument>("Lock::view: null LockState");
    Handle h;
    h.seg = std::move(owner);
    h.state = state;
    return Lock(std::move(h));
  }

  //!Effects: acquires the lock; with block=false tries once; with a timeout waits at most that
  //! long. A lock whose holder died is taken over (see previous_owner_died()).
  //!Returns: true if the lock is now held.
  bool acquire(bool block = true, Timeout timeout = {}) {
    return record(h_.state->acquire(detail::acquire_deadline(block, timeout)));
  }
  //!Effects: releases the lock. Throws: ValueError if it is not locked (Python: ValueError).
  void release() {
    if (!h_.state->release())
      detail::fail<ValueError>("release() of lock '{}' which is not locked", h_.name());
  }
  /// True if this handle's last successful acquire took the lock over from a dead holder.
  bool previous_owner_died() const noexcept { return died_; }
  /// True while some process holds the lock.
  bool locked() const noexcept { return h_.state->locked(); }
  /// An RAII guard holding the lock.
  [[nodiscard]] Guard<Lock> guard() { return Guard<Lock>(*this); }

  /// BasicLockable: acquire (blocking).
  void lock() { acquire(); }
  /// BasicLockable: release.
  void unlock() { release(); }
  /// Lockable: acquire if free (and take over a dead holder's lock).
  bool try_lock() { return acquire(false); }
  /// TimedLockable: acquire within `d`.
  template <class Rep, class Period>
  bool try_lock_for(const std::chrono::duration<Rep, Period>& d) {
    return acquire(true, detail::to_timeout(d));
  }
  /// TimedLockable: acquire before `t`.
  template <class Clock, class Duration>
  bool try_lock_until(const std::chrono::time_point<Clock, Duration>& t) {
    return acquire(true, detail::to_timeout(t - Clock::now()));
  }

  /// The object's name ("mpp.anon..." for anonymous locks; the owner's name for views).
  const std::string& name() const noexcept { return h_.name(); }
  /// The raw state (for objects that embed or inspect it).
  detail::LockState& state() const noexcept { return *h_.state; }
  /// The segment that holds the state (kept alive by this handle).
  const std::shared_ptr<detail::Segment>& segment() const noexcept { return h_.seg; }

 private:
  using Handle = detail::SyncHandle<detail::LockState>;
  explicit Lock(Handle h) : h_(std::move(h)) {}
  static void construct(void* p) { new (p) detail::LockState(); }
  bool record(detail::LockResult r) noexcept {
    if (r == detail::LockResult::timeout) return false;
    died_ = r == detail::LockResult::owner_died;  // written while holding the lock
    return true;
  }
  friend class Condition;

  Handle h_;
  bool died_ = false;
};

/// Python's multiprocessing.RLock: a robust re-entrant lock owned by one thread of one process.
/// release() by a thread that does not own it raises ValueError (Python: AssertionError or
/// RuntimeError; mpp uses ValueError for every misuse of a lock's state).
class RLock {
 public:
  //!Effects: creates an anonymous re-entrant lock (inherited by forked children).
  RLock() : h_(Handle::create(Kind::rlock, {}, construct, {})) {}
  //!Effects: creates the named re-entrant lock `name`. Throws: ExistsError, ...
  static RLock create(std::string_view name, const detail::SegmentOptions& opts = {}) {
    return RLock(Handle::create(Kind::rlock, name, construct, opts));
  }
  //!Effects: opens the named re-entrant lock `name`. Throws: NotFoundError, ...
  static RLock open(std::string_view name, const detail::SegmentOptions& opts = {}) {
    return RLock(Handle::open(Kind::rlock, name, opts));
  }
  /// Opens the named re-entrant lock `name`, creating it if it does not exist.
  static RLock open_or_create(std::string_view name, const detail::SegmentOptions& opts = {}) {
    return RLock(Handle::open_or_create(Kind::rlock, name, construct, opts));
  }
  /// An RLock over an RLockState embedded in `owner`'s segment (kept alive by the handle).
  static RLock view(std::shared_ptr<detail::Segment> owner, detail::RLockState* state) {
    if (state == nullptr) detail::fail<InvalidArgument>("RLock::view: null RLockState");
    Handle h;
    h.seg = std::move(owner);
    h.state = state;
    return RLock(std::move(h));
  }

  //!Effects: acquires or re-enters the lock (see Lock::acquire). Returns: true if held.
  bool acquire(bool block = true, Timeout timeout = {}) {
    const auto r = h_.state->acquire(detail::acquire_deadline(block, timeout));
    if (r == detail::LockResult::timeout) return false;
    if (h_.state->count.load(std::memory_order_relaxed) == 1)
      died_ = r == detail::LockResult::owner_died;
    return true;
  }
  //!Effects: undoes one acquire. Throws: ValueError if the calling thread does not own the lock.
  void release() {
    if (!h_.state->release())
      detail::fail<ValueError>("release() of re-entrant lock '{}' which this thread does not own",
                               h_.name());
  }
  /// True if the outermost acquire took the lock over from a dead holder.
  bool previous_owner_died() const noexcept { return died_; }
  /// True while some thread holds the lock.
  bool locked() const noexcept { return h_.state->locked(); }
  /// True if the calling thread owns the lock.
  bool is_owned() const noexcept { return h_.state->is_owned(); }
  /// Recursion depth of the calling thread (0 if it does not own the lock).
  std::uint32_t depth() const noexcept { return h_.state->depth(); }
  /// An RAII guard holding the lock.
  [[nodiscard]] Guard<RLock> guard() { return Guard<RLock>(*this); }

  /// BasicLockable: acquire (blocking).
  void lock() { acquire(); }
  /// BasicLockable: release.
  void unlock() { release(); }
  /// Lockable: acquire if that needs no waiting.
  bool try_lock() { return acquire(false); }
  /// TimedLockable: acquire within `d`.
  template <class Rep, class Period>
  bool try_lock_for(const std::chrono::duration<Rep, Period>& d) {
    return acquire(true, detail::to_timeout(d));
  }
  /// TimedLockable: acquire before `t`.
  template <class Clock, class Duration>
  bool try_lock_until(const std::chrono::time_point<Clock, Duration>& t) {
    return acquire(true, detail::to_timeout(t - Clock::now()));
  }

  /// The object's name.
  const std::string& name() const noexcept { return h_.name(); }
  /// The raw state.
  detail::RLockState& state() const noexcept { return *h_.state; }
  /// The segment that holds the state.
  const std::shared_ptr<detail::Segment>& segment() const noexcept { return h_.seg; }

 private:
  using Handle = detail::SyncHandle<detail::RLockState>;
  explicit RLock(Handle h) : h_(std::move(h)) {}
  static void construct(void* p) { new (p) detail::RLockState(); }
  friend class Condition;

  Handle h_;
  bool died_ = false;
};

}  // namespace mpp
