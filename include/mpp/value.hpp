// mpp — Value<T> and RawValue<T> (Python's multiprocessing.Value / RawValue): one trivially
// copyable T in a named segment, with an embedded robust Lock (get_lock(), with_lock()) and, for
// lock-free T, atomic load / store / fetch_add / compare_exchange that need no lock at all.
//
// Payload layout (shared with Array<T>, see array.hpp): a 32-byte BlockHeader {count, flags,
// element size, RLockState} then the elements, aligned for std::atomic_ref<T>. A Value<int64_t>'s
// lock and value share one cache line, so "lock; ++v; unlock" moves one line between cores.
// The lock is re-entrant, as Python's (Value/Array with lock=True make an RLock).
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
#include <type_traits>
#include <utility>

#include "codec.hpp"
#include "detail/sync_state.hpp"
#include "errors.hpp"
#include "segment.hpp"
#include "sync.hpp"

namespace mpp {

/// Options of Value / Array (Python: `lock=True`), and of the named segment.
struct SharedOptions {
  bool lock = true;         ///< embed a robust Lock (get_lock(), with_lock()); false: RawValue
  bool persistent = false;  ///< keep the name when the creating handle goes away
};

namespace detail {

/// The first bytes of a Value / Array payload.
struct BlockHeader {
  std::uint64_t count;      ///< elements (1 for a Value); must equal the segment's capacity
  std::uint32_t flags;      ///< kBlockHasLock
  std::uint32_t elem_size;  ///< sizeof(T), for tools
  RLockState lock;          ///< zero (unused) without kBlockHasLock
};
static_assert(std::is_standard_layout_v<BlockHeader> && sizeof(BlockHeader) == 48);
inline constexpr std::uint32_t kBlockHasLock = 1;

/// True when T can be shared by Value / Array at all (the static_asserts below say why not).
template <class T>
inline constexpr bool shareable_element_v = std::is_trivially_copyable_v<T> &&
                                            !std::is_pointer_v<T> && !std::is_member_pointer_v<T> &&
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

/// Compile-time contract shared by Value and Array: one readable message per broken rule.
template <class T>
constexpr bool check_shared_element() {
  static_assert(std::is_trivially_copyable_v<T>,
                "mpp::Value<T> / mpp::Array<T> need a trivially copyable T (its bytes are shared "
                "as they are); for std::string, containers and other types use a Manager "
                "(mpp::Manager::value<T>, Manager::list<T>), or Queue/Pipe to send copies");
  static_assert(!std::is_pointer_v<T> && !std::is_member_pointer_v<T>,
                "mpp::Value<T> / mpp::Array<T>: a pointer means nothing in another process");
  static_assert(!std::is_const_v<T> && !std::is_volatile_v<T>,
                "mpp::Value<T> / mpp::Array<T>: use a non-const, non-volatile T");
  static_assert(alignof(T) <= kCacheLine, "mpp::Value<T> / mpp::Array<T>: T is over-aligned");
  return true;
}

/// A mapped Value / Array segment: the validated header and elements of one T block.
template <class T>
struct SharedBlock {
  std::shared_ptr<Segment> seg;
  BlockHeader* header = nullptr;
  T* data = nullptr;
  std::size_t count = 0;  ///< validated against the mapping; never re-read from shared memory
  bool has_lock = false;

  static SegmentSpec spec(Kind kind, std::size_t n) {
    if (n > (std::uint64_t{1} << 46) / sizeof(T))
      fail<InvalidArgument>("cannot create a {} of {} elements of {} bytes: too large",
                            kind_name(kind), n, sizeof(T));
    return SegmentSpec{kind, type_info<T>(), block_data_offset<T>() + n * sizeof(T), n};
  }

  /// `fill(T*)` writes the n initial elements (the payload starts zeroed).
  template <class Fill>
  static PayloadInit initializer(std::size_t n, bool lock, Fill& fill) {
    return [n, lock, &fill](std::byte* p, std::uint64_t) {
      auto* h = new (p) BlockHeader{};
      h->count = n;
      h->flags = lock ? kBlockHasLock : 0;
      h->elem_size = sizeof(T);
      fill(reinterpret_cast<T*>(p + block_data_offset<T>()));
    };
  }

  //!Effects: creates a block of n elements (anonymous when `name` is empty).
  template <class Fill>
  static SharedBlock create(Kind kind, std::string_view name, std::size_t n,
                            const SharedOptions& o, Fill&& fill) {
    const SegmentSpec sp = spec(kind, n);
    const PayloadInit init = initializer(n, o.lock, fill);
    Segment s = name.empty() ? Segment::create_anonymous(sp, init)
                             : Segment::create(name, sp, init, SegmentOptions{o.persistent});
    if (name.empty() && o.persistent) {
      s.set_persistent(true);
      s.mark_persistent(true);  // `mpp gc` keeps it
    }
    return wrap(std::move(s));
  }

  static SharedBlock open(Kind kind, std::string_view name, const SegmentOptions& opts = {}) {
    return wrap(Segment::open(name, kind, type_info<T>(), opts));
  }

  template <class Fill>
  static SharedBlock open_or_create(Kind kind, std::string_view name, std::size_t n,
                                    const SharedOptions& o, Fill&& fill) {
    const SegmentSpec sp = spec(kind, n);
    const PayloadInit init = initializer(n, o.lock, fill);
    return wrap(Segment::open_or_create(name, sp, init, SegmentOptions{o.persistent}).first);
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
    if (n != s.capacity() || n > (psize - block_data_offset<T>()) / sizeof(T))
      fail<CorruptedError>("'{}' claims {} elements of {} bytes but its payload holds {} bytes; "
                           "it is corrupted: remove it",
                           s.name(), n, sizeof(T), psize);
    if ((flags & ~kBlockHasLock) != 0 || esize != sizeof(T))
      fail<CorruptedError>("'{}': invalid header (flags {:#x}, element size {}); remove it",
                           s.name(), flags, esize);
    b.header = h;
    b.data = reinterpret_cast<T*>(s.payload() + block_data_offset<T>());
    b.count = static_cast<std::size_t>(n);
    b.has_lock = (flags & kBlockHasLock) != 0;
    b.seg = std::make_shared<Segment>(std::move(s));
    return b;
  }

  std::optional<RLock> make_lock() const {
    if (!has_lock) return std::nullopt;
    return RLock::view(seg, &header->lock);
  }

  /// Holds the embedded lock for a scope (no Lock handle: the fast path is one CAS).
  class Hold {
   public:
    Hold(RLockState& l, const Deadline& d, std::string_view name) : l_(l) {
      const LockResult r = l_.acquire(d);
      if (r == LockResult::timeout)
        fail<TimeoutError>("could not acquire the lock of '{}' before the timeout", name);
      died_ = r == LockResult::owner_died;
    }
    Hold(const Hold&) = delete;
    Hold& operator=(const Hold&) = delete;
    ~Hold() { l_.release(); }
    bool previous_owner_died() const noexcept { return died_; }

   private:
    RLockState& l_;
    bool died_ = false;
  };

  RLockState& lock_state(const char* what) const {
    if (!has_lock)
      fail<ValueError>("{}() on '{}', which was created with lock=false (a RawValue/RawArray): "
                       "it has no lock",
                       what, seg->name());
    return header->lock;
  }

  //!Effects: runs fn(args..., [previous_owner_died]) holding the lock until `deadline`.
  template <class F, class... A>
  decltype(auto) with_lock(const Deadline& d, F& fn, A&&... args) const {
    Hold h(lock_state("with_lock"), d, seg->name());
    if constexpr (std::is_invocable_v<F&, A..., bool>)
      return std::invoke(fn, std::forward<A>(args)..., h.previous_owner_died());
    else
      return std::invoke(fn, std::forward<A>(args)...);
  }
};

/// What Value<T> and RawValue<T> share.
template <class T>
class ValueBase {
  static_assert(check_shared_element<T>());

 public:
  /// The element type.
  using value_type = T;
  /// True when T supports lock-free atomic operations in shared memory.
  static constexpr bool is_lock_free = atomic_lock_free<T>();

  //!Returns: a copy of the value. Atomic for lock-free T; otherwise read under the embedded
  //! lock (Python's `v.value`) unless this process already holds it, or without one for a
  //! RawValue (no synchronisation, as in Python).
  T value() const {
    if constexpr (is_lock_free) {
      return std::atomic_ref<T>(*b_.data).load(std::memory_order_seq_cst);
    } else {
      if (b_.has_lock) {  // re-entrant: also when this thread holds it already
        typename SharedBlock<T>::Hold h(b_.header->lock, Deadline::never(), b_.seg->name());
        return copy();
      }
      return copy();
    }
  }
  //!Effects: stores `v` (atomically for lock-free T; else as value() reads).
  void set(const T& v) {
    if constexpr (is_lock_free) {
      std::atomic_ref<T>(*b_.data).store(v, std::memory_order_seq_cst);
    } else {
      if (b_.has_lock) {
        typename SharedBlock<T>::Hold h(b_.header->lock, Deadline::never(), b_.seg->name());
        std::memcpy(static_cast<void*>(b_.data), &v, sizeof(T));
        return;
      }
      std::memcpy(static_cast<void*>(b_.data), &v, sizeof(T));
    }
  }

  /// Atomic read (lock-free T only; no lock needed).
  T load(std::memory_order o = std::memory_order_seq_cst) const
    requires is_lock_free
  {
    return std::atomic_ref<T>(*b_.data).load(o);
  }
  /// Atomic write (lock-free T only).
  void store(T v, std::memory_order o = std::memory_order_seq_cst)
    requires is_lock_free
  {
    std::atomic_ref<T>(*b_.data).store(v, o);
  }
  /// Atomic exchange; returns the previous value (lock-free T only).
  T exchange(T v, std::memory_order o = std::memory_order_seq_cst)
    requires is_lock_free
  {
    return std::atomic_ref<T>(*b_.data).exchange(v, o);
  }
  /// Atomic compare-and-swap: if the value equals `expected`, stores `desired` and returns true;
  /// otherwise loads the value into `expected` and returns false (lock-free T only).
  bool compare_exchange(T& expected, T desired, std::memory_order o = std::memory_order_seq_cst)
    requires is_lock_free
  {
    return std::atomic_ref<T>(*b_.data).compare_exchange_strong(expected, desired, o);
  }
  /// Atomic `value += d`; returns the previous value (integral or floating-point T).
  T fetch_add(T d, std::memory_order o = std::memory_order_seq_cst)
    requires is_lock_free && (std::is_integral_v<T> || std::is_floating_point_v<T>) &&
             (!std::is_same_v<T, bool>)
  {
    return std::atomic_ref<T>(*b_.data).fetch_add(d, o);
  }
  /// Atomic `value -= d`; returns the previous value.
  T fetch_sub(T d, std::memory_order o = std::memory_order_seq_cst)
    requires is_lock_free && (std::is_integral_v<T> || std::is_floating_point_v<T>) &&
             (!std::is_same_v<T, bool>)
  {
    return std::atomic_ref<T>(*b_.data).fetch_sub(d, o);
  }
  /// Atomic bitwise and / or / xor; return the previous value (integral T).
  T fetch_and(T d, std::memory_order o = std::memory_order_seq_cst)
    requires is_lock_free && std::is_integral_v<T> && (!std::is_same_v<T, bool>)
  {
    return std::atomic_ref<T>(*b_.data).fetch_and(d, o);
  }
  /// See fetch_and.
  T fetch_or(T d, std::memory_order o = std::memory_order_seq_cst)
    requires is_lock_free && std::is_integral_v<T> && (!std::is_same_v<T, bool>)
  {
    return std::atomic_ref<T>(*b_.data).fetch_or(d, o);
  }
  /// See fetch_and.
  T fetch_xor(T d, std::memory_order o = std::memory_order_seq_cst)
    requires is_lock_free && std::is_integral_v<T> && (!std::is_same_v<T, bool>)
  {
    return std::atomic_ref<T>(*b_.data).fetch_xor(d, o);
  }

  /// Python's get_obj(): the shared T itself, for use while holding the lock (or for a
  /// RawValue, with your own synchronisation).
  T& get_obj() const noexcept { return *b_.data; }
  /// The object's name ("mpp.anon.*" when anonymous): open it elsewhere with open(name).
  const std::string& name() const noexcept { return b_.seg->name(); }
  /// True if this Value has an embedded lock (false for RawValue and lock=false).
  bool has_lock() const noexcept { return b_.has_lock; }
  //!Effects: removes the name now; every handle keeps working. Returns: false if already gone.
  bool unlink() { return b_.seg->unlink(); }
  /// The segment behind the value (kept mapped by this handle and its copies).
  const std::shared_ptr<Segment>& segment() const noexcept { return b_.seg; }

 protected:
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
    return out;
  }

  SharedBlock<T> b_;
};

}  // namespace detail

/// Python's multiprocessing.Value: one T in shared memory with an embedded robust Lock.
/// T must be trivially copyable (use a Manager for other types). Copies of a Value share one
/// mapping and can be captured by value into forked children; a Value created by one process can
/// be opened in any other by name().
template <class T>
class Value : public detail::ValueBase<T> {
  using Base = detail::ValueBase<T>;
  using Block = detail::SharedBlock<T>;

 public:
  //!Effects: creates an anonymous Value holding `v` (Python: Value(typecode, v, lock=...)).
  //! With opts.lock=false there is no lock (Python: lock=False; prefer RawValue<T>).
  explicit Value(const T& v = T{}, const SharedOptions& opts = {})
      : Value(Block::create(Kind::value, {}, 1, opts, Base::filler(v))) {}

  /// Creates the named Value `name` holding `v`. Throws: ExistsError, InvalidArgument, OSError.
  static Value create(std::string_view name, const T& v = T{}, const SharedOptions& opts = {}) {
    return Value(Block::create(Kind::value, name, 1, opts, Base::filler(v)));
  }
  //!Effects: opens the named Value `name`. Throws: NotFoundError, TypeMismatchError (another
  //! element type, naming both), CorruptedError, TimeoutError (still being created).
  static Value open(std::string_view name, const detail::SegmentOptions& opts = {}) {
    return Value(Block::open(Kind::value, name, opts));
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

  //!Returns: the embedded robust re-entrant lock (Python's get_lock(), an RLock); lock it around
  //! read-modify-write sequences. Its previous_owner_died() tells when a holder died holding it.
  //!Throws: ValueError if the Value was created with lock=false.
  RLock& get_lock() {
    if (!lock_) (void)this->b_.lock_state("get_lock");
    return *lock_;
  }

  //!Effects: runs fn(T&) — or fn(T&, bool previous_owner_died) — holding the lock, and returns
  //! what fn returns. The lock is released when fn returns or throws.
  //!Throws: ValueError (no lock), what fn throws.
  template <class F>
    requires std::is_invocable_v<F&, T&> || std::is_invocable_v<F&, T&, bool>
  decltype(auto) with_lock(F&& fn) {
    return this->b_.with_lock(detail::Deadline::never(), fn, *this->b_.data);
  }
  /// with_lock() waiting at most `timeout` for the lock. Throws: TimeoutError.
  template <class F>
    requires std::is_invocable_v<F&, T&> || std::is_invocable_v<F&, T&, bool>
  decltype(auto) with_lock(Timeout timeout, F&& fn) {
    return this->b_.with_lock(detail::Deadline::from(timeout), fn, *this->b_.data);
  }

 private:
  explicit Value(Block b) : Base(std::move(b)), lock_(this->b_.make_lock()) {}
  std::optional<RLock> lock_;
};

/// Python's multiprocessing.RawValue: one T in shared memory, no lock. Reads and writes of a
/// lock-free T are still atomic; anything larger needs your own synchronisation.
template <class T>
class RawValue : public detail::ValueBase<T> {
  using Base = detail::ValueBase<T>;
  using Block = detail::SharedBlock<T>;

 public:
  /// Creates an anonymous RawValue holding `v`.
  explicit RawValue(const T& v = T{}) : RawValue(make({}, v, false)) {}
  /// Creates the named RawValue `name` holding `v`.
  static RawValue create(std::string_view name, const T& v = T{}, bool persistent = false) {
    return make(name, v, persistent);
  }
  /// Opens the named Value or RawValue `name` (its lock, if any, is ignored).
  static RawValue open(std::string_view name, const detail::SegmentOptions& opts = {}) {
    return RawValue(Block::open(Kind::value, name, opts));
  }
  /// Opens `name`, or creates it holding `v`.
  static RawValue open_or_create(std::string_view name, const T& v = T{}) {
    return RawValue(Block::open_or_create(Kind::value, name, 1, {false, false}, Base::filler(v)));
  }
  /// Stores `v` (see set()).
  RawValue& operator=(const T& v) {
    this->set(v);
    return *this;
  }

 private:
  explicit RawValue(Block b) : Base(std::move(b)) { this->b_.has_lock = false; }
  static RawValue make(std::string_view name, const T& v, bool persistent) {
    return RawValue(Block::create(Kind::value, name, 1, {false, persistent}, Base::filler(v)));
  }
};

/// A Value<T> crosses processes as its name (as Python pickles it): the receiver opens it.
template <class T>
struct codec<Value<T>> {
  /// Name of the encoding (part of the type fingerprint).
  static constexpr std::string_view kind = "handle";
  /// Appends the object's name.
  static void encode(const Value<T>& v, Bytes& out) { codec<std::string>::encode(v.name(), out); }
  //!Returns: the object opened by name. Throws: CorruptedError, NotFoundError, TypeMismatchError.
  static Value<T> decode(std::span<const std::byte> in) {
    return Value<T>::open(codec<std::string>::decode(in));
  }
};

/// A RawValue<T> crosses processes as its name (as Python pickles it): the receiver opens it.
template <class T>
struct codec<RawValue<T>> {
  /// Name of the encoding (part of the type fingerprint).
  static constexpr std::string_view kind = "handle";
  /// Appends the object's name.
  static void encode(const RawValue<T>& v, Bytes& out) { codec<std::string>::encode(v.name(), out); }
  //!Returns: the object opened by name. Throws: CorruptedError, NotFoundError, TypeMismatchError.
  static RawValue<T> decode(std::span<const std::byte> in) {
    return RawValue<T>::open(codec<std::string>::decode(in));
  }
};

}  // namespace mpp
