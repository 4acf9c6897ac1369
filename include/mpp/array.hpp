// mpp — Array<T> and RawArray<T> (Python's multiprocessing.Array / RawArray): a fixed number of
// trivially copyable T in a named segment, with an embedded robust re-entrant lock (Array only).
// Elements are plain shared memory: index them, view them as a std::span<T>, slice and copy them;
// hold get_lock() (or use with_lock) around updates that other processes must see whole, or use
// atomic(i) on lock-free element types. Same payload layout as Value<T> (see value.hpp); the
// element count read back from the segment is validated against the mapping. A holder that dies
// inside with_lock leaves the lock's "not yet repaired" mark (see value.hpp): with_lock(fn(span))
// then raises OwnerDiedError instead of handing fn possibly torn elements, fn(span, bool) is told
// and repairs, get_lock()'s acquirer sees previous_owner_died(). The copying reads and writes
// (slice, to_vector, set_slice, with_lock) raise CorruptedError if another process truncated the
// segment; operator[], at(), span() and the iterators are raw shared memory and check nothing.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <iterator>
#include <optional>
#include <ranges>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "value.hpp"

namespace mpp {

namespace detail {

/// Python's slice.indices(): clamps [start, stop) with negative indices counted from the end.
struct SliceBounds {
  std::ptrdiff_t start, stop, step;
  std::size_t length;
};
inline SliceBounds slice_bounds(std::ptrdiff_t n, std::optional<std::ptrdiff_t> start,
                                std::optional<std::ptrdiff_t> stop, std::ptrdiff_t step) {
  if (step == 0) fail<ValueError>("slice step cannot be zero");
  auto clamp = [&](std::optional<std::ptrdiff_t> v, std::ptrdiff_t dflt) {
    if (!v) return dflt;
    std::ptrdiff_t x = *v;
    if (x < 0) x += n;
    if (step > 0) return std::clamp<std::ptrdiff_t>(x, 0, n);
    return std::clamp<std::ptrdiff_t>(x, -1, n - 1);
  };
  SliceBounds b{};
  b.step = step;
  b.start = clamp(start, step > 0 ? 0 : n - 1);
  b.stop = clamp(stop, step > 0 ? n : -1);
  if (step > 0)
    b.length =
        b.stop > b.start ? static_cast<std::size_t>((b.stop - b.start + step - 1) / step) : 0;
  else
    b.length =
        b.start > b.stop ? static_cast<std::size_t>((b.start - b.stop - step - 1) / -step) : 0;
  return b;
}

/// What Array<T> and RawArray<T> share.
template <class T>
class ArrayBase {
  static_assert(check_shared_element<T, Kind::array>());

 public:
  using value_type = T;             ///< the element type
  using iterator = T*;              ///< contiguous iterator over the shared elements
  using const_iterator = const T*;  ///< contiguous iterator (read-only)
  using size_type = std::size_t;    ///< element counts
  /// True when atomic(i) is available (std::atomic_ref<T> is lock-free).
  static constexpr bool is_lock_free = atomic_lock_free<T>();

  /// Number of elements (fixed at creation; validated against the mapping when opened).
  std::size_t size() const noexcept { return b_.count; }
  /// Python's len(arr).
  friend std::size_t len(const ArrayBase& a) noexcept { return a.size(); }
  /// True when the array has no elements.
  bool empty() const noexcept { return b_.count == 0; }
  /// Element `i`, unchecked like std::vector (use at() for a checked access).
  T& operator[](std::size_t i) const noexcept { return b_.data[i]; }
  //!Returns: element `i`; negative `i` counts from the end, as in Python.
  //!Throws: mpp::IndexError (Python's IndexError) naming the array, the index and the size.
  T& at(std::ptrdiff_t i) const {
    const auto n = static_cast<std::ptrdiff_t>(b_.count);
    const std::ptrdiff_t j = i < 0 ? i + n : i;
    if (j < 0 || j >= n)
      fail<IndexError>("Array '{}': index {} out of range (size {}; valid: {}..{})", b_.seg->name(),
                       i, n, -n, n - 1);
    return b_.data[j];
  }
  /// The elements as a span over shared memory (no copy).
  std::span<T> span() const noexcept { return {b_.data, b_.count}; }
  /// Implicit view as a span.
  operator std::span<T>() const noexcept { return span(); }
  /// First element's address.
  T* data() const noexcept { return b_.data; }
  /// Iteration over the shared elements.
  T* begin() const noexcept { return b_.data; }
  /// End of iteration.
  T* end() const noexcept { return b_.data + b_.count; }

  //!Returns: a copy of arr[start:stop:step] with Python's rules (negative indices count from
  //! the end, out-of-range bounds are clamped, std::nullopt is an omitted bound).
  //!Throws: ValueError for step 0.
  std::vector<T> slice(std::optional<std::ptrdiff_t> start, std::optional<std::ptrdiff_t> stop,
                       std::ptrdiff_t step = 1) const {
    const SliceBounds s = slice_bounds(static_cast<std::ptrdiff_t>(b_.count), start, stop, step);
    std::vector<T> out;
    out.reserve(s.length);
    for (std::size_t k = 0; k < s.length; ++k)
      out.push_back(b_.data[s.start + static_cast<std::ptrdiff_t>(k) * s.step]);
    b_.check_whole();
    return out;
  }
  //!Effects: arr[start:stop] = values (Python: the lengths must match).
  //!Throws: ValueError if `values` does not have exactly as many elements as the slice.
  template <std::ranges::input_range R>
  requires std::convertible_to<std::ranges::range_reference_t<R>, T>
  void set_slice(std::optional<std::ptrdiff_t> start, std::optional<std::ptrdiff_t> stop,
                 const R& values) {
    const SliceBounds s = slice_bounds(static_cast<std::ptrdiff_t>(b_.count), start, stop, 1);
    std::vector<T> tmp;
    for (auto&& v : values) tmp.push_back(static_cast<T>(v));
    if (tmp.size() != s.length)
      fail<ValueError>(
          "Array '{}': can only assign a sequence of the same size ({} elements to "
          "a slice of {})",
          b_.seg->name(), tmp.size(), s.length);
    if (!tmp.empty())
      std::memcpy(static_cast<void*>(b_.data + s.start), tmp.data(), tmp.size() * sizeof(T));
    b_.check_whole();
  }
  /// set_slice() from a braced list.
  void set_slice(std::optional<std::ptrdiff_t> start, std::optional<std::ptrdiff_t> stop,
                 std::initializer_list<T> values) {
    set_slice<std::initializer_list<T>>(start, stop, values);
  }

  /// A copy of every element (Python's list(arr) / arr[:]). Throws: CorruptedError if the
  /// segment was truncated (the copy would hold zeros).
  std::vector<T> to_vector() const {
    std::vector<T> out(begin(), end());
    b_.check_whole();
    return out;
  }

  /// Atomic access to element `i` (checked; lock-free T only): e.g. arr.atomic(3).fetch_add(1).
  std::atomic_ref<T> atomic(std::ptrdiff_t i) const requires is_lock_free {
    return std::atomic_ref<T>(at(i));
  }

  /// The object's name ("mpp.anon.*" when anonymous): open it elsewhere with open(name).
  const std::string& name() const noexcept { return b_.seg->name(); }
  /// True if this array has a lock, embedded or supplied (false for RawArray and lock=false).
  bool has_lock() const noexcept { return b_.lock.index() != 0; }
  //!Effects: removes the name now; every handle keeps working. Returns: false if already gone.
  bool unlink() { return b_.seg->unlink(); }

 protected:
  friend struct HandleAccess;
  // The segment behind the array (kept mapped by this handle and its copies).
  const std::shared_ptr<Segment>& segment() const noexcept { return b_.seg; }

  ArrayBase() = default;
  explicit ArrayBase(SharedBlock<T> b) : b_(std::move(b)) {}

  static auto zero_fill() {
    return [](T*) {};  // the payload starts zeroed, as Python's Array(typecode, n)
  }
  template <class R>
  static auto range_fill(const R& r) {
    return [&r](T* p) {
      std::size_t i = 0;
      for (auto&& v : r) {
        const T x = static_cast<T>(v);
        std::memcpy(static_cast<void*>(p + i++), &x, sizeof(T));
      }
    };
  }
  template <class R>
  static std::size_t range_size(const R& r) {
    return static_cast<std::size_t>(std::ranges::distance(r));
  }

  SharedBlock<T> b_;
};

/// Ranges an Array can be built from (sized, so the segment is sized before it is filled).
template <class R, class T>
concept ArrayInitRange = std::ranges::sized_range<R> && std::ranges::forward_range<R> &&
    std::convertible_to<std::ranges::range_reference_t<R>, T>;

}  // namespace detail

/// Python's multiprocessing.Array: n elements of T in shared memory with an embedded robust
/// RLock, or a caller's Lock or RLock (Python's `lock=` argument), or none (`lock=false`).
/// T must be trivially copyable. Array<int>(4) is four zeros (Python: Array('i', 4));
/// Array<int>{1, 2, 3} or Array<int>(vec) copies the values (Python: Array('i', [1, 2, 3])).
template <class T>
class Array : public detail::ArrayBase<T> {
  using Base = detail::ArrayBase<T>;
  using Block = detail::SharedBlock<T>;

 public:
  /// Creates an anonymous array of `n` zeroed elements (opts.lock=false: no lock).
  explicit Array(std::size_t n, const SharedOptions& opts = {})
      : Array(Block::create(Kind::array, {}, n, opts, Base::zero_fill())) {}
  /// Creates an anonymous array holding `values`.
  Array(std::initializer_list<T> values, const SharedOptions& opts = {})
      : Array(Block::create(Kind::array, {}, values.size(), opts, Base::range_fill(values))) {}
  /// Creates an anonymous array holding a copy of the range `values`.
  template <detail::ArrayInitRange<T> R>
  explicit Array(const R& values, const SharedOptions& opts = {})
      : Array(Block::create(Kind::array, {}, Base::range_size(values), opts,
                            Base::range_fill(values))) {}

  /// Creates an anonymous array of `n` zeroed elements synchronised by the caller's `lock` (a
  /// Lock or an RLock; Python: Array(typecode, n, lock=lock)).
  template <detail::SuppliedLock L>
  Array(std::size_t n, L lock, const SharedOptions& opts = {})
      : Array(Block::create(Kind::array, {}, n, opts, Base::zero_fill(), true), std::move(lock)) {}
  /// Creates an anonymous array holding `values`, synchronised by the caller's `lock`.
  template <detail::SuppliedLock L>
  Array(std::initializer_list<T> values, L lock, const SharedOptions& opts = {})
      : Array(Block::create(Kind::array, {}, values.size(), opts, Base::range_fill(values), true),
              std::move(lock)) {}

  /// Creates the named array `name` of `n` zeroed elements. Throws: ExistsError, ...
  static Array create(std::string_view name, std::size_t n, const SharedOptions& opts = {}) {
    return Array(Block::create(Kind::array, name, n, opts, Base::zero_fill()));
  }
  /// Creates the named array `name` holding a copy of `values`.
  template <detail::ArrayInitRange<T> R>
  static Array create(std::string_view name, const R& values, const SharedOptions& opts = {}) {
    return Array(
        Block::create(Kind::array, name, Base::range_size(values), opts, Base::range_fill(values)));
  }
  /// Creates the named array `name` holding `values`.
  static Array create(std::string_view name, std::initializer_list<T> values,
                      const SharedOptions& opts = {}) {
    return create<std::initializer_list<T>>(name, values, opts);
  }
  /// Creates the named array `name` of `n` zeroed elements, synchronised by the caller's `lock`.
  template <detail::SuppliedLock L>
  static Array create(std::string_view name, std::size_t n, L lock,
                      const SharedOptions& opts = {}) {
    return Array(Block::create(Kind::array, name, n, opts, Base::zero_fill(), true),
                 std::move(lock));
  }
  //!Effects: opens the named array `name`; its size is read from the segment and checked.
  //!Throws: NotFoundError, TypeMismatchError, CorruptedError, TimeoutError.
  static Array open(std::string_view name, const NamedOptions& opts = {}) {
    return Array(Block::open(Kind::array, name, opts));
  }
  //!Effects: opens the named array `name`, created with a caller's lock, with that `lock`.
  //!Throws: as open(name); InvalidArgument if the array has its own lock.
  template <detail::SuppliedLock L>
  static Array open(std::string_view name, L lock, const NamedOptions& opts = {}) {
    return Array(Block::open(Kind::array, name, opts), std::move(lock));
  }
  /// Opens `name`, or creates it with `n` zeroed elements if it does not exist.
  static Array open_or_create(std::string_view name, std::size_t n,
                              const SharedOptions& opts = {}) {
    return Array(Block::open_or_create(Kind::array, name, n, opts, Base::zero_fill()));
  }

  //!Returns: the array's lock (Python's get_lock()): its embedded robust RLock, or the lock it
  //! was given — get_lock<mpp::Lock>() for a Lock. Its previous_owner_died() tells when a holder
  //! died holding it (for an RLock also when one died earlier and the elements were not
  //! repaired since); releasing it then repairs.
  //!Throws: ValueError if the array has no lock (lock=false, or opened by name without the
  //! caller's lock it was created with), or its lock is of the other type.
  template <detail::SuppliedLock L = RLock>
  L& get_lock() {
    return this->b_.template lock_as<L>("get_lock");
  }
  //!Effects: runs fn(std::span<T>) — or fn(span, bool previous_owner_died) — holding the lock.
  //! After a holder died (and until someone repairs the elements), fn(span, bool) is told (true)
  //! and its normal return declares them repaired; fn(span) is not run on possibly torn data.
  //!Throws: ValueError (no lock), OwnerDiedError (fn(span) while the elements wait for repair),
  //! CorruptedError (the segment was truncated), what fn throws.
  template <class F>
  requires std::is_invocable_v<F&, std::span<T>> || std::is_invocable_v < F&, std::span<T>,
  bool > decltype(auto) with_lock(F&& fn) {
    return this->b_.with_lock(detail::Deadline::never(), kRepairHint, fn, this->span());
  }
  /// with_lock() waiting at most `timeout` for the lock. Throws: TimeoutError.
  template <class F>
  requires std::is_invocable_v<F&, std::span<T>> || std::is_invocable_v < F&, std::span<T>,
  bool > decltype(auto) with_lock(Timeout timeout, F&& fn) {
    return this->b_.with_lock(detail::Deadline::from(timeout), kRepairHint, fn, this->span());
  }

 private:
  explicit Array(Block b) : Base(std::move(b)) { this->b_.use_embedded_lock(); }
  template <detail::SuppliedLock L>
  Array(Block b, L lock) : Base(std::move(b)) {
    this->b_.use_lock(std::move(lock));
  }
  static constexpr std::string_view kRepairHint =
      "call with_lock([](std::span<T> s, bool previous_owner_died) { ... }) and fix the elements "
      "(or acquire get_lock(), whose previous_owner_died() is then true, and release it once "
      "repaired)";
};

/// Python's multiprocessing.RawArray: n elements of T in shared memory, no lock.
template <class T>
class RawArray : public detail::ArrayBase<T> {
  using Base = detail::ArrayBase<T>;
  using Block = detail::SharedBlock<T>;
  static constexpr SharedOptions kNoLock = detail::unlocked({});

 public:
  /// Creates an anonymous array of `n` zeroed elements.
  explicit RawArray(std::size_t n)
      : RawArray(Block::create(Kind::array, {}, n, kNoLock, Base::zero_fill())) {}
  /// Creates an anonymous array holding `values`.
  RawArray(std::initializer_list<T> values)
      : RawArray(Block::create(Kind::array, {}, values.size(), kNoLock, Base::range_fill(values))) {
  }
  /// Creates an anonymous array holding a copy of the range `values`.
  template <detail::ArrayInitRange<T> R>
  explicit RawArray(const R& values)
      : RawArray(Block::create(Kind::array, {}, Base::range_size(values), kNoLock,
                               Base::range_fill(values))) {}
  /// Creates the named array `name` of `n` zeroed elements.
  static RawArray create(std::string_view name, std::size_t n) {
    return RawArray(Block::create(Kind::array, name, n, kNoLock, Base::zero_fill()));
  }
  /// Opens the named Array or RawArray `name` (its lock, if any, is ignored).
  static RawArray open(std::string_view name, const NamedOptions& opts = {}) {
    return RawArray(Block::open(Kind::array, name, opts));
  }

 private:
  explicit RawArray(Block b) : Base(std::move(b)) { this->b_.has_lock = false; }
};

namespace detail {
/// Elements an Array's repr shows before "...".
inline constexpr std::size_t kReprElements = 16;
/// `<Array<int>(name='...', size=3, [1, 2, 3])>` (Python: `<SynchronizedArray wrapper for ...>`).
template <class T>
std::string array_repr(std::string_view kind, const SharedBlock<T>& b) {
  if (!block_whole(b))
    return fmt::format("<{}<{}>(name='{}', truncated)>", kind, type_name<T>(), b.seg->name());
  std::string items;
  for (std::size_t i = 0; i < b.count && i < kReprElements; ++i)
    items += (i == 0 ? "" : ", ") + element_repr(b.data[i]);
  if (b.count > kReprElements) items += ", ...";
  return fmt::format("<{}<{}>(name='{}', size={}, [{}])>", kind, type_name<T>(), b.seg->name(),
                     b.count, items);
}
template <class T>
std::string repr(const Array<T>& a, ReprTag) {
  return array_repr("Array", HandleAccess::block(a));
}
template <class T>
std::string repr(const RawArray<T>& a, ReprTag) {
  return array_repr("RawArray", HandleAccess::block(a));
}
}  // namespace detail

/// An Array<T> crosses processes as its name, with the caller's lock it was given (as Python
/// pickles it): the receiver opens both.
template <class T>
struct codec<Array<T>> : detail::NameCodec<Array<T>, detail::OpenWithLock<Array<T>>> {};

/// A RawArray<T> crosses processes as its name (as Python pickles it): the receiver opens it.
/// (The encoding is an Array's: either decodes what the other encoded.)
template <class T>
struct codec<RawArray<T>> : detail::NameCodec<RawArray<T>, detail::OpenWithLock<RawArray<T>>> {};

}  // namespace mpp

namespace fmt {
/// Formats an Array as a Python-like repr: `<Array<int>(name='...', size=3, [1, 2, 3])>` (the
/// first 16 elements, read without the lock).
template <class T>
struct formatter<mpp::Array<T>> : mpp::detail::ReprFormatter<mpp::Array<T>> {};
/// Formats a RawArray: `<RawArray<int>(name='...', size=3, [1, 2, 3])>`.
template <class T>
struct formatter<mpp::RawArray<T>> : mpp::detail::ReprFormatter<mpp::RawArray<T>> {};
}  // namespace fmt
