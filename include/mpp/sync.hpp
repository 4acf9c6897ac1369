// mpp — Python's synchronisation primitives across processes: Lock, RLock, Semaphore,
// BoundedSemaphore, Event, Condition, Barrier.
//
// Each exists anonymous (`mpp::Lock l;`, inherited by forked children), named
// (`Lock::create(name)`, `open(name)`, `open_or_create(name)`) and as a raw in-segment state
// (detail/sync_state.hpp) that other objects embed. Handles are cheap to copy: copies share one
// mapping. Locks survive a dead holder: the next acquirer gets the lock within ~100 ms of the
// death and is told (`previous_owner_died()`), so it can repair what the lock protects.
// A segment that another process truncates under its users is detected before its state is
// trusted, including a cut that zeroes a lock word in place: every operation then raises
// mpp::CorruptedError naming the object, and a cut Lock is never acquired by anyone (releasing
// one is a no-op: nothing is left to release).
// Misuse — releasing an unlocked Lock or an RLock this thread does not own, over-releasing a
// BoundedSemaphore, wait()/notify() without holding a Condition's lock — raises mpp::ValueError
// (Python raises ValueError, AssertionError or RuntimeError depending on the class). Semaphores
// have no owner, as in Python: a unit taken by a process that dies is not given back.
// fmt::format("{}", x) writes a Python-like repr of each (`<Lock(name='...', owner=None)>`).
//
// This file is the API. The handles' common plumbing is in detail/sync_object.hpp, the shared
// states in detail/sync_state.hpp and detail/sync_barrier.hpp, the out-of-line members and the
// reprs in detail/sync_impl.hpp (included at the end).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>

#include "codec.hpp"
#include "detail/name_codec.hpp"
#include "detail/sync_barrier.hpp"
#include "detail/sync_object.hpp"
#include "detail/sync_repr.hpp"
#include "detail/sync_state.hpp"
#include "errors.hpp"
#include "segment.hpp"

namespace mpp {

/// RAII guard for any mpp lock (and Condition): acquires in the constructor, releases in the
/// destructor, and tells whether the previous holder died. Left by an exception, it keeps an
/// RLock's "not yet repaired" mark (see RLock::release): the repair did not finish.
template <class L>
class Guard {
 public:
  //!Effects: acquires `l` (blocking). Throws: what l.acquire() throws.
  explicit Guard(L& l) : l_(&l) {
    if constexpr (requires { l.release_unrepaired(); }) unwinding_ = std::uncaught_exceptions();
    l_->acquire();
  }
  Guard(const Guard&) = delete;
  Guard& operator=(const Guard&) = delete;
  /// Releases the lock; an error (another process already released a Lock) is ignored here.
  ~Guard() {
    try {
      if constexpr (requires { l_->release_unrepaired(); }) {
        if (std::uncaught_exceptions() > unwinding_) {
          l_->release_unrepaired();
          return;
        }
      }
      l_->release();
    } catch (const Error&) {
    }
  }
  /// True if the lock was taken over from a holder that died: repair the protected data.
  bool previous_owner_died() const noexcept { return l_->previous_owner_died(); }

 private:
  L* l_;
  int unwinding_ = 0;  // exceptions in flight at construction (RLock only)
};

/// Python's multiprocessing.Lock: a robust, non-recursive lock shared between processes.
/// Any process may release it (as in Python); releasing an unlocked Lock raises ValueError.
/// If a holder dies, the next acquirer gets the lock and previous_owner_died() is true.
class Lock : public detail::SyncObject<Lock, detail::LockState, Kind::lock> {
 public:
  //!Effects: creates an anonymous lock (inherited by forked children). Throws: OSError.
  Lock() : SyncObject(anonymous(construct)) {}
  //!Effects: creates the named lock `name`. Throws: ExistsError, InvalidArgument, OSError.
  static Lock create(std::string_view name, const NamedOptions& opts = {}) {
    return created(name, construct, opts);
  }
  //!Effects: opens the named lock `name`. Throws: NotFoundError, TypeMismatchError, ...
  static Lock open(std::string_view name, const NamedOptions& opts = {}) {
    return opened(name, opts);
  }
  /// Opens the named lock `name`, creating it if it does not exist.
  static Lock open_or_create(std::string_view name, const NamedOptions& opts = {}) {
    return opened_or_created(name, construct, opts);
  }

  //!Effects: acquires the lock; with block=false tries once; with a timeout waits at most that
  //! long. A lock whose holder died is taken over (see previous_owner_died()).
  //!Returns: true if the lock is now held.
  //!Throws: CorruptedError if another process truncated the lock's segment (nobody can
  //! acquire it then).
  bool acquire(bool block = true, Timeout timeout = {}) {
    return record(
        h_.state->acquire(detail::acquire_deadline(block, timeout), detail::LazyName<Handle>{&h_}));
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

 private:
  friend SyncObject;
  explicit Lock(Handle h) : SyncObject(std::move(h)) {}
  static void construct(void* p) { new (p) detail::LockState(); }
  bool record(detail::LockResult r) noexcept {
    if (r == detail::LockResult::timeout) return false;
    died_ = r == detail::LockResult::owner_died;  // written while holding the lock
    return true;
  }
  friend class Condition;

  bool died_ = false;
};

/// Python's multiprocessing.RLock: a robust re-entrant lock owned by one thread of one process.
/// release() by a thread that does not own it raises ValueError (Python: AssertionError or
/// RuntimeError; mpp uses ValueError for every misuse of a lock's state).
class RLock : public detail::SyncObject<RLock, detail::RLockState, Kind::rlock> {
 public:
  //!Effects: creates an anonymous re-entrant lock (inherited by forked children).
  RLock() : SyncObject(anonymous(construct)) {}
  //!Effects: creates the named re-entrant lock `name`. Throws: ExistsError, ...
  static RLock create(std::string_view name, const NamedOptions& opts = {}) {
    return created(name, construct, opts);
  }
  //!Effects: opens the named re-entrant lock `name`. Throws: NotFoundError, ...
  static RLock open(std::string_view name, const NamedOptions& opts = {}) {
    return opened(name, opts);
  }
  /// Opens the named re-entrant lock `name`, creating it if it does not exist.
  static RLock open_or_create(std::string_view name, const NamedOptions& opts = {}) {
    return opened_or_created(name, construct, opts);
  }

  //!Effects: acquires or re-enters the lock (see Lock::acquire). Returns: true if held.
  //! previous_owner_died() is true after an outermost acquire while the data the lock protects
  //! waits for repair: its holder died just now, or earlier and no holder repaired it since
  //! (e.g. Value::value() met the death first and raised OwnerDiedError).
  //!Throws: CorruptedError if another process truncated the lock's segment.
  bool acquire(bool block = true, Timeout timeout = {}) {
    const auto r =
        h_.state->acquire(detail::acquire_deadline(block, timeout), detail::LazyName<Handle>{&h_});
    if (r == detail::LockResult::timeout) return false;
    if (h_.state->count.load(std::memory_order_relaxed) == 1)
      died_ = r == detail::LockResult::owner_died;
    return true;
  }
  //!Effects: undoes one acquire. The outermost release by a holder that was told
  //! (previous_owner_died()) declares the protected data repaired: the owner-died mark is
  //! cleared, and value() works again (a Guard left by an exception keeps the mark).
  //!Throws: ValueError if the calling thread does not own the lock.
  void release() { release_impl(true); }
  /// release() that keeps the owner-died mark (the repair did not finish).
  void release_unrepaired() { release_impl(false); }
  /// True if the outermost acquire took the lock over from a dead holder, or found the data it
  /// protects still waiting for repair after such a death.
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

 private:
  friend SyncObject;
  explicit RLock(Handle h) : SyncObject(std::move(h)) {}
  static void construct(void* p) { new (p) detail::RLockState(); }
  void release_impl(bool repaired);
  friend class Condition;

  bool died_ = false;
};

namespace detail {
/// Common part of Semaphore and BoundedSemaphore.
template <class Derived, Kind K>
class SemaphoreBase : public SyncObject<Derived, SemaphoreState, K> {
  using Base = SyncObject<Derived, SemaphoreState, K>;
  using Base::h_;

 public:
  //!Effects: takes a unit; with block=false tries once; with a timeout waits at most that long.
  //!Returns: true if a unit was taken.
  //!Throws: CorruptedError if another process truncated the semaphore's segment.
  bool acquire(bool block = true, Timeout timeout = {}) {
    if (!block) return h_.state->try_acquire(LazyName<Handle>{&h_});
    return h_.state->acquire(Deadline::from(timeout), LazyName<Handle>{&h_});
  }
  //!Effects: gives back `n` units (waking waiters). Throws: ValueError if a BoundedSemaphore
  //! would exceed its initial value, or the value would exceed SemaphoreState::kValueMax.
  void release(std::uint32_t n = 1) {
    if (!h_.state->release(n, LazyName<Handle>{&h_}))
      fail<ValueError>("semaphore '{}' released too many times (value {}, bound {})", h_.name(),
                       h_.state->get_value(h_.name()),
                       h_.state->max_value != 0 ? h_.state->max_value : SemaphoreState::kValueMax);
  }
  /// Units available now (Python's get_value(); works on every platform). Throws: CorruptedError
  /// if another process truncated the semaphore's segment.
  std::uint32_t get_value() const { return h_.state->get_value(h_.name()); }
  /// BasicLockable: acquire (blocking).
  void lock() { acquire(); }
  /// BasicLockable: release one unit.
  void unlock() { release(); }
  /// Lockable: take a unit if one is available.
  bool try_lock() { return acquire(false); }
  /// TimedLockable: take a unit within `d`.
  template <class Rep, class Period>
  bool try_lock_for(const std::chrono::duration<Rep, Period>& d) {
    return acquire(true, to_timeout(d));
  }
  /// TimedLockable: take a unit before `t`.
  template <class Clock, class Duration>
  bool try_lock_until(const std::chrono::time_point<Clock, Duration>& t) {
    return acquire(true, to_timeout(t - Clock::now()));
  }
  /// Always false: semaphores have no owner (for Guard).
  bool previous_owner_died() const noexcept { return false; }

 protected:
  using Handle = typename Base::Handle;
  explicit SemaphoreBase(Handle h) : Base(std::move(h)) {}
  static std::function<void(void*)> maker(std::uint32_t value, bool bounded) {
    if (value > SemaphoreState::kValueMax)
      fail<InvalidArgument>("semaphore value {} is larger than the maximum {}", value,
                            SemaphoreState::kValueMax);
    if (bounded && value == 0)
      fail<InvalidArgument>("a BoundedSemaphore needs an initial value of at least 1");
    return [value, bounded](void* p) { new (p) SemaphoreState(value, bounded ? value : 0); };
  }
};
}  // namespace detail

/// Python's multiprocessing.Semaphore. Semaphores have no owner: a unit taken by a process that
/// dies is never given back (the value stays lower), exactly as in Python.
class Semaphore : public detail::SemaphoreBase<Semaphore, Kind::semaphore> {
 public:
  //!Effects: an anonymous semaphore holding `value` units. Throws: InvalidArgument, OSError.
  explicit Semaphore(std::uint32_t value = 1) : SemaphoreBase(anonymous(maker(value, false))) {}
  //!Effects: creates the named semaphore `name`. Throws: ExistsError, InvalidArgument, OSError.
  static Semaphore create(std::string_view name, std::uint32_t value = 1,
                          const NamedOptions& opts = {}) {
    return created(name, maker(value, false), opts);
  }
  //!Effects: opens the named semaphore `name`. Throws: NotFoundError, TypeMismatchError, ...
  static Semaphore open(std::string_view name, const NamedOptions& opts = {}) {
    return opened(name, opts);
  }
  /// Opens `name`, or creates it with `value` units.
  static Semaphore open_or_create(std::string_view name, std::uint32_t value = 1,
                                  const NamedOptions& opts = {}) {
    return opened_or_created(name, maker(value, false), opts);
  }

 private:
  friend SyncObject;
  explicit Semaphore(Handle h) : SemaphoreBase(std::move(h)) {}
};

/// Python's multiprocessing.BoundedSemaphore: release() beyond the initial value raises
/// ValueError. No owner (see Semaphore).
class BoundedSemaphore : public detail::SemaphoreBase<BoundedSemaphore, Kind::bounded_semaphore> {
 public:
  //!Effects: an anonymous bounded semaphore holding (and bounded by) `value` >= 1 units.
  explicit BoundedSemaphore(std::uint32_t value = 1)
      : SemaphoreBase(anonymous(maker(value, true))) {}
  //!Effects: creates the named bounded semaphore `name`. Throws: ExistsError, InvalidArgument.
  static BoundedSemaphore create(std::string_view name, std::uint32_t value = 1,
                                 const NamedOptions& opts = {}) {
    return created(name, maker(value, true), opts);
  }
  //!Effects: opens the named bounded semaphore `name`. Throws: NotFoundError, ...
  static BoundedSemaphore open(std::string_view name, const NamedOptions& opts = {}) {
    return opened(name, opts);
  }
  /// Opens `name`, or creates it with `value` units.
  static BoundedSemaphore open_or_create(std::string_view name, std::uint32_t value = 1,
                                         const NamedOptions& opts = {}) {
    return opened_or_created(name, maker(value, true), opts);
  }

 private:
  friend SyncObject;
  explicit BoundedSemaphore(Handle h) : SemaphoreBase(std::move(h)) {}
};

/// Python's multiprocessing.Event: a flag processes can wait for.
class Event : public detail::SyncObject<Event, detail::EventState, Kind::event> {
 public:
  //!Effects: an anonymous, clear event (inherited by forked children).
  Event() : SyncObject(anonymous(construct)) {}
  //!Effects: creates the named event `name` (clear). Throws: ExistsError, InvalidArgument, ...
  static Event create(std::string_view name, const NamedOptions& opts = {}) {
    return created(name, construct, opts);
  }
  //!Effects: opens the named event `name`. Throws: NotFoundError, TypeMismatchError, ...
  static Event open(std::string_view name, const NamedOptions& opts = {}) {
    return opened(name, opts);
  }
  /// Opens `name`, creating it (clear) if it does not exist.
  static Event open_or_create(std::string_view name, const NamedOptions& opts = {}) {
    return opened_or_created(name, construct, opts);
  }

  /// Sets the flag and wakes every waiter. Each operation of an Event throws CorruptedError if
  /// another process truncated its segment.
  void set() { h_.state->set(detail::LazyName<Handle>{&h_}); }
  /// Clears the flag.
  void clear() { h_.state->clear(h_.name()); }
  /// True if the flag is set.
  bool is_set() const { return h_.state->is_set(detail::LazyName<Handle>{&h_}); }
  //!Effects: waits until the flag is set, at most `timeout` (forever when nullopt).
  //!Returns: the flag (false only on timeout), as Python's Event.wait.
  bool wait(Timeout timeout = {}) {
    return h_.state->wait(detail::Deadline::from(timeout), h_.name());
  }

 private:
  friend SyncObject;
  explicit Event(Handle h) : SyncObject(std::move(h)) {}
  static void construct(void* p) { new (p) detail::EventState(); }
};

namespace detail {
/// What a named Condition's segment holds: its own RLock (used unless a lock is supplied) and
/// the waiter table.
struct ConditionBlock {
  RLockState lock;
  ConditionState cond;
};
static_assert(std::is_standard_layout_v<ConditionBlock>);
}  // namespace detail

/// Python's multiprocessing.Condition over a Lock or an RLock (its own RLock by default; the
/// lock may be embedded in another object, e.g. Value::get_lock()). wait() must be called with
/// the lock held; notify(n) wakes exactly the n oldest waiters. If a process dies holding the
/// lock, the next acquirer (or a waiter re-acquiring it) is told via previous_owner_died().
class Condition : public detail::SyncObject<Condition, detail::ConditionBlock, Kind::condition> {
 public:
  //!Effects: an anonymous condition with its own RLock (Python's default).
  Condition() : Condition(anonymous(construct)) {}
  //!Effects: an anonymous condition over `lock` (a Lock or an RLock, anonymous, named or
  //! embedded in another object).
  explicit Condition(Lock lock) : SyncObject(anonymous(construct)), lock_(std::move(lock)) {}
  /// An anonymous condition over `lock`.
  explicit Condition(RLock lock) : SyncObject(anonymous(construct)), lock_(std::move(lock)) {}
  //!Effects: creates the named condition `name` with its own RLock, which every opener shares.
  static Condition create(std::string_view name, const NamedOptions& opts = {}) {
    return created(name, construct, opts);
  }
  //!Effects: creates the named condition `name` over `lock`; every process must then open it
  //! with the same lock (open(name, lock)).
  template <class L>
  static Condition create(std::string_view name, L lock, const NamedOptions& opts = {}) {
    return created(name, construct, opts, std::move(lock));
  }
  //!Effects: opens the named condition `name` with its own RLock. Throws: NotFoundError, ...
  static Condition open(std::string_view name, const NamedOptions& opts = {}) {
    return opened(name, opts);
  }
  /// Opens the named condition `name` over `lock` (the lock it was created with).
  template <class L>
  static Condition open(std::string_view name, L lock, const NamedOptions& opts = {}) {
    return opened(name, opts, std::move(lock));
  }
  /// Opens `name` with its own RLock, creating it if it does not exist.
  static Condition open_or_create(std::string_view name, const NamedOptions& opts = {}) {
    return opened_or_created(name, construct, opts);
  }

  /// Acquires the underlying lock (see Lock::acquire / RLock::acquire).
  bool acquire(bool block = true, Timeout timeout = {}) {
    return std::visit([&](auto& l) { return l.acquire(block, timeout); }, lock_);
  }
  /// Releases the underlying lock. Throws: ValueError if it is not held (by this thread: RLock).
  void release() {
    std::visit([](auto& l) { l.release(); }, lock_);
  }
  /// True if the last acquisition of the lock through this handle (including the re-acquire at
  /// the end of wait()) took it over from a holder that died.
  bool previous_owner_died() const noexcept {
    return std::visit([](const auto& l) { return l.previous_owner_died(); }, lock_);
  }
  /// True while some process holds the lock.
  bool locked() const noexcept {
    return std::visit([](const auto& l) { return l.locked(); }, lock_);
  }
  /// BasicLockable: acquire the lock.
  void lock() { acquire(); }
  /// BasicLockable: release the lock.
  void unlock() { release(); }
  /// Lockable: acquire the lock if free.
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
  /// An RAII guard holding the lock.
  [[nodiscard]] Guard<Condition> guard() { return Guard<Condition>(*this); }

  //!Effects: releases the lock (fully, for an RLock), waits until notified or `timeout`, then
  //! re-acquires it (restoring an RLock's depth).
  //!Returns: false if the timeout expired. Throws: ValueError if the caller does not hold the
  //! lock; Error if 64 threads already wait on this condition.
  //! CorruptedError if another process truncated the condition's or the lock's segment.
  bool wait(Timeout timeout = {});
  //!Effects: waits until `pred()` is true (checked first, then after each wake-up), at most
  //! `timeout` in total. Returns: the last value of pred(), as Python's wait_for.
  //! previous_owner_died() is true afterwards if any of the re-acquisitions took the lock over
  //! from a dead holder (a later one does not hide an earlier one).
  template <class Pred>
  bool wait_for(Pred&& pred, Timeout timeout = {});
  //!Effects: wakes up to `n` waiters, oldest first. Throws: ValueError without the lock held.
  void notify(std::uint32_t n = 1) {
    check_owned("notify");
    h_.state->cond.notify(n, h_.name());
  }
  /// Wakes every waiter. Throws: ValueError without the lock held.
  void notify_all() {
    check_owned("notify_all");
    h_.state->cond.notify(detail::kConditionSlots, h_.name());
  }

  /// True if the condition uses its own RLock (then it can cross processes as its name).
  bool uses_own_lock() const noexcept {
    const auto* r = std::get_if<RLock>(&lock_);
    return r != nullptr && &r->state() == &h_.state->lock;
  }

 private:
  friend SyncObject;
  // Over the condition's own RLock (h_ is initialised before lock_).
  explicit Condition(Handle h)
      : SyncObject(std::move(h)), lock_(RLock::view(h_.seg, &h_.state->lock)) {}
  template <class L>
  Condition(Handle h, L lock) : SyncObject(std::move(h)), lock_(std::move(lock)) {}
  static void construct(void* p) { new (p) detail::ConditionBlock(); }
  void check_owned(const char* what) const;

  friend struct detail::HandleAccess;
  std::variant<Lock, RLock> lock_;
};

/// A Barrier's action: what the last party to arrive runs before the others are released.
/// A registered function (MPP_REGISTER: a function or a capture-less lambda without
/// parameters) is stored by name in the barrier's shared memory, so whichever process completes
/// the barrier runs it — a spawn or forkserver child, or a process that opened the barrier by
/// name — as Python pickles the action with the barrier. Any other callable (a lambda with
/// captures) stays with the handle it was given to and that handle's copies (threads, forked
/// children); a barrier with such an action cannot cross processes by name.
class BarrierAction {
 public:
  /// No action.
  BarrierAction() = default;
  /// No action.
  BarrierAction(std::nullptr_t) noexcept {}  // NOLINT(google-explicit-constructor)
  //!Effects: an action calling `fn()`, stored by name when `fn` is registered.
  //!Throws: InvalidArgument if its registered name is longer than 120 bytes.
  template <class F>
  requires(std::is_invocable_v<std::decay_t<F>&> && !std::is_same_v<std::decay_t<F>, BarrierAction>)
      BarrierAction(F&& fn)  // NOLINT
      : BarrierAction(std::decay_t<F>(std::forward<F>(fn)), 0) {}
  /// True if there is an action.
  explicit operator bool() const noexcept { return static_cast<bool>(fn_); }
  /// The name the action is registered under, or nullopt (no action, or not registered).
  const std::optional<std::string>& registered_name() const noexcept { return name_; }
  /// Runs the action.
  void operator()() const { fn_(); }

 private:
  template <class D>
  BarrierAction(D fn, int);

  std::function<void()> fn_;
  std::optional<std::string> name_;
};

/// Python's multiprocessing.Barrier for `parties` processes or threads. A party that dies while
/// others wait breaks the barrier: they get BrokenBarrierError within ~100 ms instead of hanging.
/// The action runs in the last party to arrive, before any party is released; the action (when
/// registered, see BarrierAction) and the default timeout live in the barrier's shared memory,
/// so every process that uses the barrier honours both.
class Barrier : public detail::SyncObject<Barrier, detail::BarrierState, Kind::barrier> {
 public:
  /// What the last arriving party runs before the others are released.
  using Action = BarrierAction;

  //!Effects: an anonymous barrier for `parties` (1..4096) parties; `timeout` is the default for
  //! wait() in every process. Throws: InvalidArgument for a bad count, OSError.
  explicit Barrier(std::uint32_t parties, Action action = {}, Timeout timeout = {})
      : SyncObject(anonymous(maker(parties, action, timeout))), action_(std::move(action)) {}
  //!Effects: creates the named barrier `name`. Throws: ExistsError, InvalidArgument, OSError.
  static Barrier create(std::string_view name, std::uint32_t parties, Action action = {},
                        Timeout timeout = {}, const NamedOptions& opts = {}) {
    return created(name, maker(parties, action, timeout), opts, std::move(action), Timeout{});
  }
  //!Effects: opens the named barrier `name`; its party count, default timeout and registered
  //! action are stored. `action` replaces the stored action when this process arrives last;
  //! `timeout` replaces the stored default timeout for this handle's waits.
  //!Throws: NotFoundError, TypeMismatchError, CorruptedError.
  static Barrier open(std::string_view name, Action action = {}, Timeout timeout = {},
                      const NamedOptions& opts = {}) {
    Barrier b = opened(name, opts, std::move(action), timeout);
    b.h_.state->checked_parties(b.name());
    return b;
  }
  /// Opens `name`, creating it for `parties` (with `action` and `timeout`) if it does not exist.
  static Barrier open_or_create(std::string_view name, std::uint32_t parties, Action action = {},
                                Timeout timeout = {}, const NamedOptions& opts = {}) {
    Barrier b = opened_or_created(name, maker(parties, action, timeout), opts, std::move(action),
                                  Timeout{});
    b.h_.state->checked_parties(b.name());
    return b;
  }

  //!Effects: waits for all parties (at most `timeout`, or the barrier's default when nullopt).
  //! The last party to arrive runs the action first.
  //!Returns: this party's arrival index, 0..parties()-1.
  //!Throws: BrokenBarrierError if the barrier is or becomes broken (abort, reset, timeout, a
  //! waiting party died, or the action threw — then the action's exception propagates instead);
  //! InvalidArgument in the last party if it cannot run the action (not registered in this
  //! process, or an unregistered callable held by another handle), which breaks the barrier.
  std::uint32_t wait(Timeout timeout = {}) {
    const Timeout t = timeout ? timeout : timeout_ ? timeout_ : default_timeout();
    return h_.state->wait(
        detail::Deadline::from(t), [this] { run_action(); }, name());
  }
  /// Returns the barrier to its initial state; parties waiting now get BrokenBarrierError.
  void reset() { h_.state->reset(name()); }
  /// Breaks the barrier: waiters (now and later, until reset()) get BrokenBarrierError.
  void abort() { h_.state->abort(name()); }
  /// Number of parties needed to trip the barrier.
  std::uint32_t parties() const { return h_.state->checked_parties(name()); }
  /// Parties waiting now.
  std::uint32_t n_waiting() const noexcept { return h_.state->n_waiting(); }
  /// True if the barrier is broken.
  bool broken() const noexcept { return h_.state->is_broken(); }
  /// The default timeout of wait() (Python's `timeout` argument), as stored in the barrier.
  Timeout default_timeout() const noexcept { return h_.state->default_timeout(); }

 private:
  friend SyncObject;
  template <class, Kind>
  friend struct detail::SyncName;
  Barrier(Handle h, Action action, Timeout timeout)
      : SyncObject(std::move(h)), action_(std::move(action)), timeout_(timeout) {}
  static std::function<void(void*)> maker(std::uint32_t parties, const Action& action,
                                          Timeout timeout);
  void run_action() const;
  // The codec: a barrier whose action only its creating handle holds does not cross by name.
  static void check_crossing(const Barrier& b);

  Action action_;
  Timeout timeout_;
};

/// A Lock crosses processes as its name.
template <>
struct codec<Lock> : detail::NameCodec<Lock, detail::SyncName<Lock, Kind::lock>> {};
/// An RLock crosses processes as its name.
template <>
struct codec<RLock> : detail::NameCodec<RLock, detail::SyncName<RLock, Kind::rlock>> {};
/// A Semaphore crosses processes as its name.
template <>
struct codec<Semaphore>
    : detail::NameCodec<Semaphore, detail::SyncName<Semaphore, Kind::semaphore>> {};
/// A BoundedSemaphore crosses processes as its name.
template <>
struct codec<BoundedSemaphore>
    : detail::NameCodec<BoundedSemaphore,
                        detail::SyncName<BoundedSemaphore, Kind::bounded_semaphore>> {};
/// An Event crosses processes as its name.
template <>
struct codec<Event> : detail::NameCodec<Event, detail::SyncName<Event, Kind::event>> {};
/// A Condition with its own RLock crosses processes as its name.
template <>
struct codec<Condition>
    : detail::NameCodec<Condition, detail::SyncName<Condition, Kind::condition>> {};
/// A Barrier crosses processes as its name, with its default timeout and its registered action
/// (see BarrierAction).
template <>
struct codec<Barrier> : detail::NameCodec<Barrier, detail::SyncName<Barrier, Kind::barrier>> {};

}  // namespace mpp

// The implementation: out-of-line members and the reprs.
#include "detail/sync_impl.hpp"  // IWYU pragma: export

namespace fmt {
/// Formats a Lock as Python's repr, naming the owner by pid: `<Lock(name='...', owner=None)>`.
template <>
struct formatter<mpp::Lock> : mpp::detail::ReprFormatter<mpp::Lock> {};
/// Formats an RLock: `<RLock(name='...', owner=4242, count=2)>` (Python: `<RLock(None, 0)>`).
template <>
struct formatter<mpp::RLock> : mpp::detail::ReprFormatter<mpp::RLock> {};
/// Formats a Semaphore: `<Semaphore(name='...', value=2)>`.
template <>
struct formatter<mpp::Semaphore> : mpp::detail::ReprFormatter<mpp::Semaphore> {};
/// Formats a BoundedSemaphore: `<BoundedSemaphore(name='...', value=2, maxvalue=3)>`.
template <>
struct formatter<mpp::BoundedSemaphore> : mpp::detail::ReprFormatter<mpp::BoundedSemaphore> {};
/// Formats an Event: `<Event(name='...', set=False)>`.
template <>
struct formatter<mpp::Event> : mpp::detail::ReprFormatter<mpp::Event> {};
/// Formats a Condition as Python does, its lock and its waiters: `<Condition(<RLock(...)>, 0)>`.
template <>
struct formatter<mpp::Condition> : mpp::detail::ReprFormatter<mpp::Condition> {};
/// Formats a Barrier: `<Barrier(name='...', parties=3, waiting=1, broken=False)>`.
template <>
struct formatter<mpp::Barrier> : mpp::detail::ReprFormatter<mpp::Barrier> {};
}  // namespace fmt
