// mpp — Value<T> and RawValue<T> (Python's multiprocessing.Value / RawValue): one trivially
// copyable T in a named segment, with an embedded robust Lock (get_lock(), with_lock()) and, for
// lock-free T, atomic load / store / fetch_add / compare_exchange that need no lock at all.
//
// Payload layout (shared with Array<T>, see array.hpp): a 48-byte BlockHeader {count, flags,
// element size, RLockState} then the elements, aligned for std::atomic_ref<T>, then an 8-byte
// trailer holding kBlockLive. A Value<int64_t>'s lock, value and trailer share one cache line, so
// "lock; ++v; unlock" moves one line between cores. The lock is re-entrant, as Python's
// (Value/Array with lock=True make an RLock).
//
// A dead holder: when a process dies holding the lock (e.g. inside with_lock, half-way through
// writing a struct), the lock keeps an "owner died, not yet repaired" mark in shared memory
// (RLockState::died) until a holder that was told repairs the data. Meanwhile nothing returns the
// possibly torn data as if it were whole: value() raises OwnerDiedError (naming the object and
// the repair); with_lock(fn(T&)) raises it too, without running fn; with_lock(fn(T&, bool)) runs
// fn with true and clears the mark when fn returns normally; set() overwrites the whole value, so
// it repairs; get_lock()'s acquirer sees previous_owner_died() and its release repairs. The
// lock-free operations of a lock-free T (load(), value(), store(), fetch_add(), ...) take no lock,
// so they do not consult the mark: each reads or writes a whole T, but a holder that wrote such
// a T field by field inside with_lock and died may have left a mix (use with_lock(fn(T&, bool))
// or get_lock() where that matters).
//
// Truncation: a cut of the segment (another process's ftruncate) zeroes everything from some
// byte to the end, so it always clears the trailer. Every operation that reads or writes the
// data checks the trailer after doing so (one load of a line the data shares for small T) and
// raises CorruptedError instead of returning zeros from a vanished page; the lock's own word is
// checked by the lock (see detail/sync_state.hpp).
#pragma once

#include <algorithm>
#include <atomic>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <new>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>

#include "codec.hpp"
#include "detail/name_codec.hpp"
#include "detail/sync_state.hpp"
#include "errors.hpp"
#include "options.hpp"
#include "segment.hpp"
#include "sync.hpp"

namespace mpp {

/// Options of Value / Array (Python: `lock=True`), and of the named segment (the fields of
/// NamedOptions, under the same names as in QueueOptions and ManagerOptions).
struct SharedOptions {
  /// Embed a robust re-entrant lock (get_lock(), with_lock()); false: as RawValue / RawArray.
  bool lock = true;
  /// Keep the name when the creating handle goes away (see NamedOptions::persistent).
  bool persistent = false;
  /// How long open_or_create() waits for an object whose creator is still initialising it.
  std::chrono::milliseconds init_timeout{5000};

  /// The options of the named segment.
  NamedOptions named() const noexcept { return NamedOptions{persistent, init_timeout}; }
};

namespace detail {

/// The last 8 bytes of a Value / Array payload: non-zero (and this exact constant) until a
/// truncation clears them.
inline constexpr std::uint64_t kBlockLive = 0x6576696c2e70706dull;  // "mpp.live"

/// The first bytes of a Value / Array payload.
struct BlockHeader {
  std::uint64_t count;      ///< elements (1 for a Value); must equal the segment's capacity
  std::uint32_t flags;      ///< kBlockHasLock
  std::uint32_t elem_size;  ///< sizeof(T), for tools
  RLockState lock;          ///< zero (unused) without kBlockHasLock
};
static_assert(std::is_standard_layout_v<BlockHeader> && sizeof(BlockHeader) == 48);
inline constexpr std::uint32_t kBlockHasLock = 1;
/// Set when the block was created with a caller's lock (Python's `lock=some_lock`): it has no
/// embedded lock, and its users lock the supplied one.
inline constexpr std::uint32_t kBlockSuppliedLock = 2;

/// The locks a caller can give a Value or Array (Python's `lock=` argument).
template <class L>
concept SuppliedLock = std::same_as<L, Lock> || std::same_as<L, RLock>;

/// What a Value / Array handle locks: nothing, its embedded RLock, or a caller's Lock or RLock.
using BlockLock = std::variant<std::monostate, RLock, Lock>;

/// The options of a RawValue / RawArray: no lock, and the named segment's options `o`.
constexpr SharedOptions unlocked(const NamedOptions& o) noexcept {
  SharedOptions s;
  s.lock = false;
  s.persistent = o.persistent;
  s.init_timeout = o.init_timeout;
  return s;
}

/// True when T can be shared by Value / Array at all (the static_asserts below say why not).
template <class T>
inline constexpr bool shareable_element_v =
    std::is_trivially_copyable_v<T> && !std::is_pointer_v<T> && !std::is_member_pointer_v<T> &&
    !std::is_const_v<T> && !std::is_volatile_v<T>;

/// True when atomic operations on a shared T need no lock.
template <class T>
constexpr bool atomic_lock_free() noexcept {
  if constexpr (shareable_element_v<T>)
    return std::atomic_ref<T>::is_always_lock_free;
  else
    return false;
}

/// Where the elements start: after the header, aligned for T and for std::atomic_ref<T>.
template <class T>
constexpr std::size_t block_data_offset() noexcept {
  std::size_t a = alignof(T);
  if constexpr (shareable_element_v<T>) a = std::max(a, std::atomic_ref<T>::required_alignment);
  return (sizeof(BlockHeader) + a - 1) / a * a;
}

/// Compile-time contract shared by Value (`K` = Kind::value) and Array (Kind::array): one
/// readable message per broken rule; the compiler's note names the T.
template <class T, Kind K>
constexpr bool check_shared_element() {
  if constexpr (K == Kind::value)
    static_assert(std::is_trivially_copyable_v<T>,
                  "mpp::Value<T> needs a trivially copyable T: its bytes are shared as they are, "
                  "and a std::string or container holds pointers to this process's heap. Share "
                  "such a value through an mpp::Manager m (m.Namespace(\"config\").set(\"name\", "
                  "std::string(...)), or m.dict<K, V>(name)), keep text of bounded length in an "
                  "mpp::Array<char>, or send copies through a Queue or Pipe");
  else
    static_assert(std::is_trivially_copyable_v<T>,
                  "mpp::Array<T> needs a trivially copyable T: its bytes are shared as they are, "
                  "and a std::string or container holds pointers to this process's heap. Keep "
                  "such items in a Manager's list (m.list<T>(name)) or dict (m.dict<K, V>(name)), "
                  "or send copies through a Queue or Pipe");
  static_assert(!std::is_pointer_v<T> && !std::is_member_pointer_v<T>,
                "mpp::Value<T> / mpp::Array<T>: a pointer means nothing in another process");
  static_assert(!std::is_const_v<T> && !std::is_volatile_v<T>,
                "mpp::Value<T> / mpp::Array<T>: use a non-const, non-volatile T");
  static_assert(alignof(T) <= kCacheLine, "mpp::Value<T> / mpp::Array<T>: T is over-aligned");
  return true;
}

/// What with_lock(fn, args...) returns: fn(args..., bool) if fn takes the bool, else fn(args...).
template <class F, class... A>
using with_lock_result_t = typename std::conditional_t<std::is_invocable_v<F&, A..., bool>,
                                                       std::invoke_result<F&, A..., bool>,
                                                       std::invoke_result<F&, A...>>::type;

/// A mapped Value / Array segment: the validated header and elements of one T block.
template <class T>
struct SharedBlock {
  std::shared_ptr<Segment> seg;
  BlockHeader* header = nullptr;
  T* data = nullptr;
  std::size_t count = 0;       ///< validated against the mapping; never re-read from shared memory
  bool has_lock = false;       ///< the block embeds its lock
  bool supplied_lock = false;  ///< the block was created with a caller's lock (kBlockSuppliedLock)
  BlockLock lock;              ///< what this handle locks (see use_embedded_lock, use_lock)

  std::uint64_t* trailer = nullptr;  ///< kBlockLive at the payload's end (see the file's top)

  /// Offset of the trailer in a payload of `n` elements (after them, 8-aligned).
  static constexpr std::uint64_t trailer_offset(std::uint64_t n) noexcept {
    return (block_data_offset<T>() + n * sizeof(T) + 7) / 8 * 8;
  }

  static SegmentSpec spec(Kind kind, std::size_t n) {
    if (n > (std::uint64_t{1} << 46) / sizeof(T))
      fail<InvalidArgument>("cannot create a {} of {} elements of {} bytes: too large",
                            kind_name(kind), n, sizeof(T));
    return SegmentSpec{kind, type_info<T>(), trailer_offset(n) + sizeof(std::uint64_t), n};
  }

  /// `fill(T*)` writes the n initial elements (the payload starts zeroed).
  template <class Fill>
  static PayloadInit initializer(std::size_t n, std::uint32_t flags, Fill& fill) {
    return [n, flags, &fill](std::byte* p, std::uint64_t) {
      auto* h = new (p) BlockHeader{};
      h->count = n;
      h->flags = flags;
      h->elem_size = sizeof(T);
      fill(reinterpret_cast<T*>(p + block_data_offset<T>()));
      std::memcpy(p + trailer_offset(n), &kBlockLive, sizeof kBlockLive);
    };
  }

  /// The header flags of a block made with options `o` (and a caller's lock if `supplied`).
  static std::uint32_t flags_for(const SharedOptions& o, bool supplied) noexcept {
    return supplied ? kBlockSuppliedLock : o.lock ? kBlockHasLock : 0;
  }

  //!Effects: creates a block of n elements (anonymous when `name` is empty), for a caller's
  //! lock if `supplied`.
  template <class Fill>
  static SharedBlock create(Kind kind, std::string_view name, std::size_t n, const SharedOptions& o,
                            Fill&& fill, bool supplied = false) {
    const SegmentSpec sp = spec(kind, n);
    const PayloadInit init = initializer(n, flags_for(o, supplied), fill);
    Segment s = name.empty() ? Segment::create_anonymous(sp, init)
                             : Segment::create(name, sp, init, o.named());
    if (name.empty() && o.persistent) {
      s.set_persistent(true);
      s.mark_persistent(true);  // `mpp gc` keeps it
    }
    return wrap(std::move(s));
  }

  static SharedBlock open(Kind kind, std::string_view name, const NamedOptions& opts = {}) {
    return wrap(Segment::open(name, kind, type_info<T>(), opts));
  }

  template <class Fill>
  static SharedBlock open_or_create(Kind kind, std::string_view name, std::size_t n,
                                    const SharedOptions& o, Fill&& fill, bool supplied = false) {
    const SegmentSpec sp = spec(kind, n);
    const PayloadInit init = initializer(n, flags_for(o, supplied), fill);
    return wrap(Segment::open_or_create(name, sp, init, o.named()).first);
  }

  // Every header field is read once, checked against the mapping, and kept in the handle.
  static SharedBlock wrap(Segment s) {
    SharedBlock b;
    const std::uint64_t psize = s.payload_size();
    if (psize < block_data_offset<T>())
      fail<CorruptedError>("'{}': a payload of {} bytes cannot hold its header; remove it",
                           s.name(), psize);
    auto* h = reinterpret_cast<BlockHeader*>(s.payload());
    const std::uint64_t n = h->count;
    const std::uint32_t flags = h->flags, esize = h->elem_size;
    if (n != s.capacity() || n > (psize - block_data_offset<T>()) / sizeof(T) ||
        psize < trailer_offset(n) + sizeof(std::uint64_t))
      fail<CorruptedError>(
          "'{}' claims {} elements of {} bytes but its payload holds {} bytes; "
          "it is corrupted: remove it",
          s.name(), n, sizeof(T), psize);
    auto* tr = reinterpret_cast<std::uint64_t*>(s.payload() + trailer_offset(n));
    if (std::atomic_ref<std::uint64_t>(*tr).load(std::memory_order_acquire) != kBlockLive)
      fail<CorruptedError>(
          "'{}': its last bytes are not the end mark of a {}: it was truncated "
          "(or overwritten) by another process; remove it",
          s.name(), kind_name(static_cast<Kind>(s.header().kind)));
    if ((flags & ~(kBlockHasLock | kBlockSuppliedLock)) != 0 ||
        flags == (kBlockHasLock | kBlockSuppliedLock) || esize != sizeof(T))
      fail<CorruptedError>("'{}': invalid header (flags {:#x}, element size {}); remove it",
                           s.name(), flags, esize);
    b.header = h;
    b.data = reinterpret_cast<T*>(s.payload() + block_data_offset<T>());
    b.count = static_cast<std::size_t>(n);
    b.has_lock = (flags & kBlockHasLock) != 0;
    b.supplied_lock = (flags & kBlockSuppliedLock) != 0;
    b.trailer = tr;
    b.seg = std::make_shared<Segment>(std::move(s));
    return b;
  }

  //!Effects: nothing while the payload is whole (one load).
  //!Throws: CorruptedError naming the object if a truncation cleared the trailer (the data read
  //! or written just now may have been on a vanished page).
  void check_whole() const {
    // seq_cst: ordered after the caller's accesses to the data, stores included.
    const std::uint64_t t =
        std::atomic_ref<std::uint64_t>(*trailer).load(std::memory_order_seq_cst);
    if (t != kBlockLive) [[unlikely]]
      cut(t);
  }
  [[noreturn]] void cut(std::uint64_t seen) const {
    os::check_mapping(trailer);  // the guard's message, if this process faulted on it
    fail<CorruptedError>(
        "'{}' shrank while in use: another process truncated its segment, so "
        "its data now reads as zeros (end mark {:#x}) and writes to it are lost; "
        "close every handle and recreate the object",
        seg->name(), seen);
  }
  //!Throws: OwnerDiedError for `what` on this object, saying how to repair it.
  [[noreturn]] void owner_died(std::string_view what, std::string_view repair) const {
    fail<OwnerDiedError>(
        "{} of '{}': a process died holding its lock, possibly half-way through "
        "an update, so the data may be torn. Repair it: {}",
        what, seg->name(), repair);
  }

  /// Locks the embedded RLock from now on (Value, Array), if the block has one.
  void use_embedded_lock() {
    if (has_lock) lock = HandleAccess::view<RLock>(seg, &header->lock);
  }
  //!Effects: locks `l`, a caller's lock, from now on.
  //!Throws: InvalidArgument if the block embeds its own lock (every user must lock the same).
  template <SuppliedLock L>
  void use_lock(L l) {
    if (has_lock)
      fail<InvalidArgument>(
          "'{}' has its own lock, which every process uses: open it without "
          "one (or create it with the lock you pass, to share that lock)",
          seg->name());
    lock = std::move(l);
  }
  //!Throws: ValueError naming `what` if this handle has no lock to take.
  void require_lock(const char* what) const {
    if (lock.index() != 0) return;
    if (supplied_lock)
      fail<ValueError>(
          "{}() on '{}', which was created with a caller's lock that this handle "
          "was not given: open it with open(name, lock), or pass the object itself "
          "to the other process (its lock travels with it)",
          what, seg->name());
    fail<ValueError>(
        "{}() on '{}', which was created with lock=false (a RawValue/RawArray): "
        "it has no lock",
        what, seg->name());
  }
  //!Returns: the lock as an L. Throws: ValueError if there is none or it is of the other type.
  template <SuppliedLock L>
  L& lock_as(const char* what) {
    require_lock(what);
    if (auto* l = std::get_if<L>(&lock)) return *l;
    constexpr bool want_lock = std::is_same_v<L, Lock>;
    fail<ValueError>("{}() on '{}': its lock is {}, not {}; call get_lock<mpp::{}>()", what,
                     seg->name(), want_lock ? "an RLock" : "a Lock",
                     want_lock ? "a Lock" : "an RLock", want_lock ? "RLock" : "Lock");
  }

  /// Holds the block's lock for a scope (no Lock handle: the fast path is one CAS).
  /// previous_owner_died() is true while the data waits for repair (an RLock's mark; a Lock has
  /// none and tells only the acquisition that took it over); the user of a Hold must raise
  /// OwnerDiedError, tell its caller, or repair (repaired()). A Lock that this process holds
  /// already is not taken again (Python would deadlock): the caller's hold covers the access.
  class Hold {
   public:
    Hold(const BlockLock& l, const Deadline& d, const std::shared_ptr<Segment>& seg) {
      const auto named = [&] { return std::string_view(seg->name()); };
      LockResult r = LockResult::acquired;
      if (const auto* rl = std::get_if<RLock>(&l)) {
        rlock_ = &HandleAccess::state(*rl);
        r = rlock_->acquire(d, named);
      } else if (const auto* k = std::get_if<Lock>(&l)) {
        LockState& st = HandleAccess::state(*k);
        if (st.held_by_this_process() && !st.cut()) return;
        lock_ = &st;
        r = lock_->acquire(d, named);
      }
      if (r == LockResult::timeout) {
        rlock_ = nullptr;
        lock_ = nullptr;
        fail<TimeoutError>("could not acquire the lock of '{}' before the timeout", seg->name());
      }
      died_ = r == LockResult::owner_died;
    }
    Hold(const Hold&) = delete;
    Hold& operator=(const Hold&) = delete;
    ~Hold() {
      if (rlock_ != nullptr) (void)rlock_->release();
      if (lock_ != nullptr) (void)lock_->release();
    }
    bool previous_owner_died() const noexcept { return died_; }
    /// Clears the owner-died mark: the holder rewrote (or was told and repaired) the data.
    void repaired() noexcept {
      if (died_ && rlock_ != nullptr) rlock_->mark_repaired();
    }

   private:
    RLockState* rlock_ = nullptr;
    LockState* lock_ = nullptr;
    bool died_ = false;
  };

  //!Effects: runs fn(args..., [previous_owner_died]) holding the lock until `deadline`; checks
  //! the trailer before and after fn. With the bool, fn is told of a dead holder and the mark
  //! is cleared when fn returns normally; without it, a dead holder's data is not handed to fn.
  //!Throws: OwnerDiedError (fn without the bool, data waiting for repair; `repair` says how),
  //! CorruptedError (truncated), TimeoutError, what fn throws.
  template <class F, class... A>
  with_lock_result_t<F, A...> with_lock(const Deadline& d, std::string_view repair, F& fn,
                                        A&&... args) const {
    constexpr bool told = std::is_invocable_v<F&, A..., bool>;
    using R = with_lock_result_t<F, A...>;
    require_lock("with_lock");
    Hold h(lock, d, seg);
    if constexpr (!told)
      if (h.previous_owner_died()) owner_died("with_lock(fn)", repair);
    check_whole();
    auto call = [&]() -> R {
      if constexpr (told)
        return std::invoke(fn, std::forward<A>(args)..., h.previous_owner_died());
      else
        return std::invoke(fn, std::forward<A>(args)...);
    };
    if constexpr (std::is_void_v<R>) {
      call();
      h.repaired();
      check_whole();
    } else {
      R r = call();
      h.repaired();
      check_whole();
      if constexpr (std::is_reference_v<R>)
        return static_cast<R>(r);
      else
        return r;
    }
  }
};

/// How a Value or Array crosses processes: its name, and the name of the caller's lock it was
/// given (if any), which the receiver opens too (Python pickles the lock with the object).
template <class H>
struct OpenWithLock {
  /// The object's name, the kind of the caller's lock (0: none, 1: RLock, 2: Lock), its name.
  using name_type = std::tuple<std::string, std::uint8_t, std::string>;
  //!Returns: what crosses. Throws: InvalidArgument if the caller's lock is itself part of
  //! another object (e.g. another Value's get_lock()): such a lock cannot cross by itself.
  static name_type name_of(const H& h) {
    const auto& b = HandleAccess::block(h);
    if (b.has_lock) return {b.seg->name(), 0, {}};
    if (const auto* r = std::get_if<RLock>(&b.lock))
      return {b.seg->name(), 1, SyncName<RLock, Kind::rlock>::name_of(*r)};
    if (const auto* l = std::get_if<Lock>(&b.lock))
      return {b.seg->name(), 2, SyncName<Lock, Kind::lock>::name_of(*l)};
    return {b.seg->name(), 0, {}};
  }
  //!Returns: `n` reopened in this process. Throws: what H::open throws; CorruptedError.
  static H open(const name_type& n) {
    const std::string& name = std::get<0>(n);
    const std::uint8_t kind = std::get<1>(n);
    if (kind > 2) fail<CorruptedError>("'{}' arrived with an unknown lock kind {}", name, kind);
    if constexpr (requires { H::open(name, Lock::open(name)); }) {  // not RawValue / RawArray
      if (kind == 1) return H::open(name, RLock::open(std::get<2>(n)));
      if (kind == 2) return H::open(name, Lock::open(std::get<2>(n)));
    }
    return H::open(name);
  }
};

/// What Value<T> and RawValue<T> share.
template <class T>
class ValueBase {
  static_assert(check_shared_element<T, Kind::value>());

 public:
  /// The element type.
  using value_type = T;
  /// True when T supports lock-free atomic operations in shared memory.
  static constexpr bool is_lock_free = atomic_lock_free<T>();

  //!Returns: a copy of the value. Atomic for lock-free T; otherwise read under the embedded
  //! lock (Python's `v.value`) unless this process already holds it, or without one for a
  //! RawValue (no synchronisation, as in Python).
  //!Throws: OwnerDiedError (not lock-free T) if a process died holding the lock and nobody
  //! repaired the value since: it may be torn (see the top of this file for the repair);
  //! CorruptedError if another process truncated the segment (the value would read as zeros).
  T value() const {
    if constexpr (is_lock_free) {
      const T v = std::atomic_ref<T>(*b_.data).load(std::memory_order_seq_cst);
      b_.check_whole();
      return v;
    } else {
      if (b_.lock.index() != 0) {  // re-entrant: also when this thread holds it already
        typename SharedBlock<T>::Hold h(b_.lock, Deadline::never(), b_.seg);
        if (h.previous_owner_died()) b_.owner_died("value()", repair_hint());
        return copy();
      }
      return copy();
    }
  }
  //!Effects: stores `v` (atomically for lock-free T; else as value() reads). Overwriting the
  //! whole value repairs it after a holder died (the owner-died mark is cleared).
  //!Throws: CorruptedError if another process truncated the segment (the store is lost).
  void set(const T& v) {
    if constexpr (is_lock_free) {
      std::atomic_ref<T>(*b_.data).store(v, std::memory_order_seq_cst);
      b_.check_whole();
    } else {
      if (b_.lock.index() != 0) {
        typename SharedBlock<T>::Hold h(b_.lock, Deadline::never(), b_.seg);
        std::memcpy(static_cast<void*>(b_.data), &v, sizeof(T));
        b_.check_whole();
        h.repaired();
        return;
      }
      std::memcpy(static_cast<void*>(b_.data), &v, sizeof(T));
      b_.check_whole();
    }
  }

  // Each atomic operation below checks the trailer after it (one load, no system call) and
  // throws CorruptedError if another process truncated the segment.

  /// Atomic read (lock-free T only; no lock needed).
  T load(std::memory_order o = std::memory_order_seq_cst) const requires is_lock_free {
    const T v = std::atomic_ref<T>(*b_.data).load(o);
    b_.check_whole();
    return v;
  }
  /// Atomic write (lock-free T only).
  void store(T v, std::memory_order o = std::memory_order_seq_cst) requires is_lock_free {
    std::atomic_ref<T>(*b_.data).store(v, o);
    b_.check_whole();
  }
  /// Atomic exchange; returns the previous value (lock-free T only).
  T exchange(T v, std::memory_order o = std::memory_order_seq_cst) requires is_lock_free {
    return checked(std::atomic_ref<T>(*b_.data).exchange(v, o));
  }
  /// Atomic compare-and-swap: if the value equals `expected`, stores `desired` and returns true;
  /// otherwise loads the value into `expected` and returns false (lock-free T only).
  bool compare_exchange(T& expected, T desired,
                        std::memory_order o = std::memory_order_seq_cst) requires is_lock_free {
    return checked(std::atomic_ref<T>(*b_.data).compare_exchange_strong(expected, desired, o));
  }
  /// Atomic `value += d`; returns the previous value (integral or floating-point T).
  T fetch_add(T d, std::memory_order o = std::memory_order_seq_cst) requires is_lock_free &&
      (std::is_integral_v<T> || std::is_floating_point_v<T>)&&(!std::is_same_v<T, bool>) {
    return checked(std::atomic_ref<T>(*b_.data).fetch_add(d, o));
  }
  /// Atomic `value -= d`; returns the previous value.
  T fetch_sub(T d, std::memory_order o = std::memory_order_seq_cst) requires is_lock_free &&
      (std::is_integral_v<T> || std::is_floating_point_v<T>)&&(!std::is_same_v<T, bool>) {
    return checked(std::atomic_ref<T>(*b_.data).fetch_sub(d, o));
  }
  /// Atomic bitwise and / or / xor; return the previous value (integral T).
  T fetch_and(T d, std::memory_order o = std::memory_order_seq_cst) requires is_lock_free
      && std::is_integral_v<T> &&(!std::is_same_v<T, bool>) {
    return checked(std::atomic_ref<T>(*b_.data).fetch_and(d, o));
  }
  /// See fetch_and.
  T fetch_or(T d, std::memory_order o = std::memory_order_seq_cst) requires is_lock_free
      && std::is_integral_v<T> &&(!std::is_same_v<T, bool>) {
    return checked(std::atomic_ref<T>(*b_.data).fetch_or(d, o));
  }
  /// See fetch_and.
  T fetch_xor(T d, std::memory_order o = std::memory_order_seq_cst) requires is_lock_free
      && std::is_integral_v<T> &&(!std::is_same_v<T, bool>) {
    return checked(std::atomic_ref<T>(*b_.data).fetch_xor(d, o));
  }

  /// Python's get_obj(): the shared T itself, for use while holding the lock (or for a
  /// RawValue, with your own synchronisation). Raw memory: neither a dead holder nor a
  /// truncation is checked through it.
  T& get_obj() const noexcept { return *b_.data; }
  /// The object's name ("mpp.anon.*" when anonymous): open it elsewhere with open(name).
  const std::string& name() const noexcept { return b_.seg->name(); }
  /// True if this Value has a lock, embedded or supplied (false for RawValue and lock=false).
  bool has_lock() const noexcept { return b_.lock.index() != 0; }
  //!Effects: removes the name now; every handle keeps working. Returns: false if already gone.
  bool unlink() { return b_.seg->unlink(); }

 protected:
  friend struct HandleAccess;
  // The segment behind the value (kept mapped by this handle and its copies).
  const std::shared_ptr<Segment>& segment() const noexcept { return b_.seg; }

  ValueBase() = default;
  explicit ValueBase(SharedBlock<T> b) : b_(std::move(b)) {
    if (b_.count != 1)
      fail<CorruptedError>("'{}' holds {} elements; a Value holds exactly one", b_.seg->name(),
                           b_.count);
  }
  static auto filler(const T& v) {
    return [v](T* p) { std::memcpy(static_cast<void*>(p), &v, sizeof(T)); };
  }
  T copy() const {
    T out;
    std::memcpy(static_cast<void*>(&out), b_.data, sizeof(T));
    b_.check_whole();
    return out;
  }
  template <class U>
  U checked(U r) const {
    b_.check_whole();
    return r;
  }
  static constexpr std::string_view repair_hint() noexcept {
    return "set() a whole new value, or call with_lock([](T& v, bool previous_owner_died) { ... "
           "}) and fix v (or acquire get_lock(), whose previous_owner_died() is then true, and "
           "release it once repaired)";
  }

  SharedBlock<T> b_;
};

}  // namespace detail

/// Python's multiprocessing.Value: one T in shared memory with an embedded robust RLock, or a
/// caller's Lock or RLock (Python's `lock=` argument), or none (`lock=false`).
/// T must be trivially copyable (use a Manager for other types). Copies of a Value share one
/// mapping and can be captured by value into forked children; a Value created by one process can
/// be opened in any other by name(), and crosses to children as an argument with its lock.
template <class T>
class Value : public detail::ValueBase<T> {
  using Base = detail::ValueBase<T>;
  using Block = detail::SharedBlock<T>;

 public:
  //!Effects: creates an anonymous Value holding `v` (Python: Value(typecode, v)).
  //! With opts.lock=false there is no lock (Python: lock=False; prefer RawValue<T>).
  explicit Value(const T& v = T{}, const SharedOptions& opts = {})
      : Value(Block::create(Kind::value, {}, 1, opts, Base::filler(v))) {}
  //!Effects: creates an anonymous Value holding `v`, synchronised by `lock`, a caller's Lock or
  //! RLock (Python: Value(typecode, v, lock=lock)); several Values may share one lock.
  template <detail::SuppliedLock L>
  Value(const T& v, L lock, const SharedOptions& opts = {})
      : Value(Block::create(Kind::value, {}, 1, opts, Base::filler(v), true), std::move(lock)) {}

  /// Creates the named Value `name` holding `v`. Throws: ExistsError, InvalidArgument, OSError.
  static Value create(std::string_view name, const T& v = T{}, const SharedOptions& opts = {}) {
    return Value(Block::create(Kind::value, name, 1, opts, Base::filler(v)));
  }
  /// Creates the named Value `name` holding `v`, synchronised by the caller's `lock`.
  template <detail::SuppliedLock L>
  static Value create(std::string_view name, const T& v, L lock, const SharedOptions& opts = {}) {
    return Value(Block::create(Kind::value, name, 1, opts, Base::filler(v), true), std::move(lock));
  }
  //!Effects: opens the named Value `name`. Throws: NotFoundError, TypeMismatchError (another
  //! element type, naming both), CorruptedError, TimeoutError (still being created).
  static Value open(std::string_view name, const NamedOptions& opts = {}) {
    return Value(Block::open(Kind::value, name, opts));
  }
  //!Effects: opens the named Value `name`, created with a caller's lock, with that `lock`.
  //!Throws: as open(name); InvalidArgument if the Value has its own lock.
  template <detail::SuppliedLock L>
  static Value open(std::string_view name, L lock, const NamedOptions& opts = {}) {
    return Value(Block::open(Kind::value, name, opts), std::move(lock));
  }
  /// Opens `name`, or creates it holding `v` if it does not exist (safe against racing creators).
  static Value open_or_create(std::string_view name, const T& v = T{},
                              const SharedOptions& opts = {}) {
    return Value(Block::open_or_create(Kind::value, name, 1, opts, Base::filler(v)));
  }

  /// Stores `v` (see set()).
  Value& operator=(const T& v) {
    this->set(v);
    return *this;
  }

  //!Returns: the Value's lock (Python's get_lock()): its embedded robust RLock, or the lock it
  //! was given — get_lock<mpp::Lock>() for a Lock. Lock it around read-modify-write sequences.
  //! Its previous_owner_died() tells when a holder died holding it (for an RLock also when one
  //! died earlier and the value was not repaired since); releasing it then repairs.
  //!Throws: ValueError if the Value has no lock (lock=false, or opened by name without the
  //! caller's lock it was created with), or its lock is of the other type.
  template <detail::SuppliedLock L = RLock>
  L& get_lock() {
    return this->b_.template lock_as<L>("get_lock");
  }

  //!Effects: runs fn(T&) — or fn(T&, bool previous_owner_died) — holding the lock, and returns
  //! what fn returns. The lock is released when fn returns or throws.
  //! After a holder died (and until someone repairs the value), fn(T&, bool) is told (true) and
  //! its normal return declares the value repaired; fn(T&) is not run on possibly torn data.
  //!Throws: ValueError (no lock), OwnerDiedError (fn(T&) while the value waits for repair),
  //! CorruptedError (the segment was truncated), what fn throws.
  template <class F>
  requires std::is_invocable_v<F&, T&> || std::is_invocable_v<F&, T&, bool>
  decltype(auto) with_lock(F&& fn) {
    return this->b_.with_lock(detail::Deadline::never(), Base::repair_hint(), fn, *this->b_.data);
  }
  /// with_lock() waiting at most `timeout` for the lock. Throws: TimeoutError.
  template <class F>
  requires std::is_invocable_v<F&, T&> || std::is_invocable_v<F&, T&, bool>
  decltype(auto) with_lock(Timeout timeout, F&& fn) {
    return this->b_.with_lock(detail::Deadline::from(timeout), Base::repair_hint(), fn,
                              *this->b_.data);
  }

 private:
  explicit Value(Block b) : Base(std::move(b)) { this->b_.use_embedded_lock(); }
  template <detail::SuppliedLock L>
  Value(Block b, L lock) : Base(std::move(b)) {
    this->b_.use_lock(std::move(lock));
  }
};

/// Python's multiprocessing.RawValue: one T in shared memory, no lock. Reads and writes of a
/// lock-free T are still atomic; anything larger needs your own synchronisation.
template <class T>
class RawValue : public detail::ValueBase<T> {
  using Base = detail::ValueBase<T>;
  using Block = detail::SharedBlock<T>;

 public:
  /// Creates an anonymous RawValue holding `v`.
  explicit RawValue(const T& v = T{}) : RawValue(make({}, v, NamedOptions{})) {}
  /// Creates the named RawValue `name` holding `v`.
  static RawValue create(std::string_view name, const T& v = T{}, bool persistent = false) {
    NamedOptions o;
    o.persistent = persistent;
    return make(name, v, o);
  }
  /// Opens the named Value or RawValue `name` (its lock, if any, is ignored).
  static RawValue open(std::string_view name, const NamedOptions& opts = {}) {
    return RawValue(Block::open(Kind::value, name, opts));
  }
  /// Opens `name`, or creates it holding `v`.
  static RawValue open_or_create(std::string_view name, const T& v = T{}) {
    return RawValue(
        Block::open_or_create(Kind::value, name, 1, detail::unlocked({}), Base::filler(v)));
  }
  /// Stores `v` (see set()).
  RawValue& operator=(const T& v) {
    this->set(v);
    return *this;
  }

 private:
  explicit RawValue(Block b) : Base(std::move(b)) { this->b_.has_lock = false; }
  static RawValue make(std::string_view name, const T& v, const NamedOptions& o) {
    return RawValue(Block::create(Kind::value, name, 1, detail::unlocked(o), Base::filler(v)));
  }
};

namespace detail {
/// One shared element as a repr shows it, read without a lock (atomically for a lock-free T):
/// fmt's formatting when T has one (bool as Python's True/False), else its size.
template <class T>
std::string element_repr(const T& shared) {
  T v;
  if constexpr (atomic_lock_free<T>())
    v = std::atomic_ref<T>(const_cast<T&>(shared)).load(std::memory_order_relaxed);
  else
    std::memcpy(static_cast<void*>(&v), &shared, sizeof(T));
  if constexpr (std::is_same_v<T, bool>)
    return std::string(py_bool(v));
  else if constexpr (fmt::is_formattable<T>::value)
    return fmt::format("{}", v);
  else
    return fmt::format("<{} bytes>", sizeof(T));
}
/// True while a truncation has not cleared the block's trailer.
template <class T>
bool block_whole(const SharedBlock<T>& b) noexcept {
  return std::atomic_ref<std::uint64_t>(*b.trailer).load(std::memory_order_acquire) == kBlockLive;
}
/// `<Value<int>(name='...', 42)>` (Python: `<Synchronized wrapper for c_int(42)>`).
template <class T>
std::string value_repr(std::string_view kind, const SharedBlock<T>& b) {
  if (!block_whole(b))
    return fmt::format("<{}<{}>(name='{}', truncated)>", kind, type_name<T>(), b.seg->name());
  return fmt::format("<{}<{}>(name='{}', {})>", kind, type_name<T>(), b.seg->name(),
                     element_repr(*b.data));
}
template <class T>
std::string repr(const Value<T>& v, ReprTag) {
  return value_repr("Value", HandleAccess::block(v));
}
template <class T>
std::string repr(const RawValue<T>& v, ReprTag) {
  return value_repr("RawValue", HandleAccess::block(v));
}
}  // namespace detail

/// A Value<T> crosses processes as its name, with the caller's lock it was given (as Python
/// pickles it): the receiver opens both.
template <class T>
struct codec<Value<T>> : detail::NameCodec<Value<T>, detail::OpenWithLock<Value<T>>> {};

/// A RawValue<T> crosses processes as its name (as Python pickles it): the receiver opens it.
/// (The encoding is a Value's: either decodes what the other encoded.)
template <class T>
struct codec<RawValue<T>> : detail::NameCodec<RawValue<T>, detail::OpenWithLock<RawValue<T>>> {};

}  // namespace mpp

namespace fmt {
/// Formats a Value as a Python-like repr: `<Value<int>(name='...', 42)>` (read without the lock;
/// a T without a formatter shows its size).
template <class T>
struct formatter<mpp::Value<T>> : mpp::detail::ReprFormatter<mpp::Value<T>> {};
/// Formats a RawValue: `<RawValue<int>(name='...', 42)>`.
template <class T>
struct formatter<mpp::RawValue<T>> : mpp::detail::ReprFormatter<mpp::RawValue<T>> {};
}  // namespace fmt
