// mpp — Python's multiprocessing.Manager(): a shared dict, list, Namespace and user objects that
// live directly in one shared segment (no server process, no round trip).
//
//   mpp::Manager m;                                   // anonymous; forked children inherit it
//   auto d = m.dict<std::string, int>("scores");      // opens or creates the dict "scores"
//   d["alice"] = 3; d["alice"] += 1;                  // each an atomic transaction
//   for (const auto& [k, v] : d) fmt::print("{} {}\n", k, v);   // live iteration
//   auto l = m.list<std::pair<std::string, int>>("database");
//   auto ns = m.Namespace("config"); ns.set("name", "Bob"); auto n = ns.get<std::string>("name");
//   auto acct = m.object<Account>("acct"); acct.call(&Account::deposit, 10);  // atomic method
//
// Crash consistency: every mutation is a transaction under the manager's robust lock with an
// undo log (detail/shm_alloc.hpp); a process SIGKILLed in the middle of any mutation leaves each
// container as before or as after it, and the next writer (or a reader that needs the lock)
// repairs it. Reads take no lock: they are validated by a per-container sequence word.
// Keys (and list items, for remove/index/count) compare by their encoded bytes (mpp::codec).
//
// This header declares the API; the implementation is in detail/manager_*.hpp.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <iterator>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "array.hpp"
#include "codec.hpp"
#include "detail/manager_common.hpp"
#include "detail/name_codec.hpp"
#include "errors.hpp"
#include "queue.hpp"
#include "segment.hpp"
#include "sync.hpp"
#include "value.hpp"

namespace mpp {

/// How a Manager's segment is made.
struct ManagerOptions {
  /// Bytes reserved for all containers. The segment is sparse: memory is used only as it fills.
  std::uint64_t capacity = std::uint64_t{1} << 30;
  /// Keep the name when the creating handle goes away (named managers only).
  bool persistent = false;
  /// Longest wait for the manager's lock (nullopt: no limit; a dead holder is always taken over).
  Timeout timeout = std::nullopt;
  /// How long open() waits for a manager that its creator is still initialising.
  std::chrono::milliseconds init_timeout{5000};

  /// The options of the manager's named segment.
  NamedOptions named() const noexcept { return NamedOptions{persistent, init_timeout}; }
};

class Manager;

namespace detail {
struct Nest;
}

/// Python's Manager().dict(): a dict in shared memory with keys K and values V of any codec type.
/// Handles are cheap to copy and usable in forked children. Reads take no lock. A value that is
/// itself a container (a SharedDict or SharedList) is read and written through: d["a"]["b"] = 7.
template <class K, class V>
class SharedDict {
 public:
  using key_type = K;     ///< the type of the keys
  using mapped_type = V;  ///< the type of the values

  /// What d[k] returns: reads, assigns and updates the item in place.
  class Proxy {
   public:
    /// The value. Throws: KeyError if the key is missing.
    operator V() const { return d_->at(k_); }
    /// The value (explicitly). Throws: KeyError.
    V value() const { return d_->at(k_); }
    /// Sets the value.
    Proxy& operator=(const V& v) {
      d_->set(k_, v);
      return *this;
    }
    /// Atomic d[k] += x (a missing key starts from V{}).
    template <class X>
    Proxy& operator+=(const X& x) {
      d_->update_with(k_, [&](V v) { return static_cast<V>(v + x); });
      return *this;
    }
    /// Atomic d[k] -= x (a missing key starts from V{}).
    template <class X>
    Proxy& operator-=(const X& x) {
      d_->update_with(k_, [&](V v) { return static_cast<V>(v - x); });
      return *this;
    }
    /// d[k][x]: item x of the container stored at k (V a SharedDict or SharedList), which can be
    /// read and assigned in turn. Throws: KeyError if k is missing.
    template <class X>
    auto operator[](X&& x) const -> decltype(std::declval<V&>()[std::forward<X>(x)]);
    /// d[k]->f(): calls f on the value (decoded once; for a handle, on the object it names).
    std::optional<V> operator->() const { return value(); }

   private:
    friend class SharedDict;
    Proxy(SharedDict* d, K k, std::shared_ptr<const void> keep = {})
        : d_(d), k_(std::move(k)), keep_(std::move(keep)) {}
    SharedDict* d_;
    K k_;
    std::shared_ptr<const void> keep_;  // the dict when it is a temporary of a nested d[a][b]
  };

  /// A live iterator over the (key, value) items in insertion order, as Python iterates a dict:
  /// each step reads the dict as it is then. Throws: RuntimeError when the dict's size changed
  /// since the iteration began (Python: "dictionary changed size during iteration").
  class iterator {
   public:
    using value_type = std::pair<K, V>;                 ///< an item
    using difference_type = std::ptrdiff_t;             ///< unused (an input iterator)
    using reference = const value_type&;                ///< what * gives
    using pointer = const value_type*;                  ///< what -> gives
    using iterator_category = std::input_iterator_tag;  ///< single pass

    /// The current item.
    reference operator*() const;
    /// The current item.
    pointer operator->() const { return &**this; }
    /// Moves to the next item.
    iterator& operator++();
    /// Moves to the next item.
    void operator++(int) { ++*this; }
    /// True once no item is left.
    friend bool operator==(const iterator& it, std::default_sentinel_t) { return !it.load(); }

   private:
    friend class SharedDict;
    iterator(const SharedDict* d, std::uint64_t count) : d_(d), count_(count) {}
    bool load() const;
    const SharedDict* d_;
    std::uint64_t count_;  // the size when the iteration began
    mutable std::uint64_t pos_ = 0;
    mutable std::optional<value_type> cur_;
  };

  //!Returns: the value of `k`, or nullopt (Python's d.get(k) returning None).
  std::optional<V> get(const K& k) const;
  /// The value of `k`, or `def` when missing.
  V get(const K& k, const V& def) const {
    auto v = get(k);
    return v ? std::move(*v) : def;
  }
  /// The value of `k`. Throws: KeyError if missing.
  V at(const K& k) const {
    auto v = get(k);
    if (!v) missing(k);
    return std::move(*v);
  }
  /// d[k]: a proxy to read (KeyError if missing), assign or update the item.
  Proxy operator[](const K& k) { return Proxy(this, k); }

  /// Sets d[k] = v (atomically; a killed writer leaves the old or the new value).
  void set(const K& k, const V& v);
  /// True if `k` is present.
  bool contains(const K& k) const;
  //!Effects: inserts k -> def if k is missing. Returns: the value now stored.
  V setdefault(const K& k, const V& def = V{});
  //!Effects: removes k. Returns: its value. Throws: KeyError if missing.
  //! Like Python's manager, pop(), popitem() and SharedList::pop() decode the item after it is
  //! removed (outside the lock, as decoding a container handle opens its manager): an item that
  //! cannot be decoded is gone and the decoding error propagates.
  V pop(const K& k) {
    auto v = take(k);
    if (!v) missing(k);
    return std::move(*v);
  }
  /// Removes k and returns its value, or `def` if missing.
  V pop(const K& k, const V& def) {
    auto v = take(k);
    return v ? std::move(*v) : def;
  }
  //!Effects: removes the most recently inserted item. Returns: it. Throws: KeyError if empty.
  std::pair<K, V> popitem();
  /// Removes k; returns false if it was missing (Python's `del d[k]` without the KeyError).
  bool erase(const K& k) { return take(k).has_value(); }

  //!Effects: sets every (key, value) pair of `items`, atomically per batch of 65536 items.
  template <class Range>
  void update(const Range& items);
  /// update() from a braced list: d.update({{"a", 1}, {"b", 2}}).
  void update(std::initializer_list<std::pair<K, V>> items) {
    update<std::initializer_list<std::pair<K, V>>>(items);
  }
  //!Effects: atomically replaces the value of k by fn(current value, or `def` if missing).
  //! `fn` runs under the manager's lock: it must not use this manager. If it throws, nothing
  //! changes. Returns: the new value.
  template <class F>
  V update_with(const K& k, F&& fn, const V& def = V{});

  /// Number of items (Python's len(d)).
  std::size_t size() const;
  /// True when the dict has no items.
  bool empty() const { return size() == 0; }
  //!Effects: removes every item (atomically; memory is reclaimed right after).
  void clear();

  /// The keys, in insertion order (a consistent snapshot).
  std::vector<K> keys() const;
  /// The values, in insertion order (a consistent snapshot).
  std::vector<V> values() const;
  /// The (key, value) pairs, in insertion order (a consistent snapshot).
  std::vector<std::pair<K, V>> items() const;
  /// A consistent snapshot as a std::map (K must be ordered; Python's d.copy()).
  std::map<K, V> to_map() const {
    auto it = items();
    return std::map<K, V>(std::make_move_iterator(it.begin()), std::make_move_iterator(it.end()));
  }
  /// Starts a live iteration (see `iterator`); items() is the consistent snapshot.
  iterator begin() const { return iterator(this, size()); }
  /// The end of a live iteration.
  std::default_sentinel_t end() const noexcept { return {}; }

  /// Python's repr of the dict with its name: `<SharedDict 'scores' {'alice': 3}>`.
  std::string repr() const;
  /// The dict's name inside its manager.
  const std::string& name() const noexcept { return ref_.name; }
  /// The name of the manager that holds it.
  const std::string& manager_name() const noexcept { return ref_.manager(); }

 private:
  friend class Manager;
  friend struct detail::Nest;
  using Core = detail::shm::DictCore;
  explicit SharedDict(detail::ObjectRef ref) : ref_(std::move(ref)) {}
  Proxy kept(std::shared_ptr<const void> keep, const K& k) {
    return Proxy(this, k, std::move(keep));
  }

  detail::shm::Arena& arena() const noexcept { return ref_.arena(); }
  Core core() const noexcept { return Core(&ref_.arena(), ref_.root); }
  detail::shm::DictRoot* root() const { return core().root(); }
  template <class F>
  auto read(std::string_view what, F&& f) const -> decltype(f()) {
    return detail::shm::seq_read(arena(), root()->seq, ref_.deadline(), what, f);
  }
  template <class T>
  T decode(detail::ByteSpan b, std::string_view what) const;
  std::optional<V> take(const K& k);
  [[noreturn]] void missing(const K& k) const;

  detail::ObjectRef ref_;
};

/// Python's Manager().list(): a list in shared memory with items of any codec type.
/// Indices may be negative (counted from the end) as in Python. An item that is itself a
/// container is read and written through: l[0][-1] = 55.
template <class T>
class SharedList {
 public:
  using value_type = T;  ///< the type of the items

  /// What l[i] returns: reads or assigns the item.
  class Proxy {
   public:
    /// The item. Throws: IndexError.
    operator T() const { return l_->get(i_); }
    /// The item (explicitly). Throws: IndexError.
    T value() const { return l_->get(i_); }
    /// Replaces the item. Throws: IndexError.
    Proxy& operator=(const T& v) {
      l_->set(i_, v);
      return *this;
    }
    /// l[i][x]: item x of the container stored at i (T a SharedDict or SharedList), which can be
    /// read and assigned in turn. Throws: IndexError.
    template <class X>
    auto operator[](X&& x) const -> decltype(std::declval<T&>()[std::forward<X>(x)]);
    /// l[i]->f(): calls f on the item (decoded once; for a handle, on the object it names).
    std::optional<T> operator->() const { return value(); }

   private:
    friend class SharedList;
    Proxy(SharedList* l, std::int64_t i, std::shared_ptr<const void> keep = {})
        : l_(l), i_(i), keep_(std::move(keep)) {}
    SharedList* l_;
    std::int64_t i_;
    std::shared_ptr<const void> keep_;  // the list when it is a temporary of a nested l[a][b]
  };

  /// A live iterator, as Python iterates a list: step i reads item i of the list as it is then
  /// (a change made during the iteration is seen; the iteration ends at the current end).
  class iterator {
   public:
    using value_type = T;                               ///< an item
    using difference_type = std::ptrdiff_t;             ///< unused (an input iterator)
    using reference = const T&;                         ///< what * gives
    using pointer = const T*;                           ///< what -> gives
    using iterator_category = std::input_iterator_tag;  ///< single pass

    /// The current item. Throws: IndexError if the list shrank under it.
    reference operator*() const;
    /// The current item.
    pointer operator->() const { return &**this; }
    /// Moves to the next item.
    iterator& operator++() {
      cur_.reset();
      ++pos_;
      return *this;
    }
    /// Moves to the next item.
    void operator++(int) { ++*this; }
    /// True once the position is past the list's current end.
    friend bool operator==(const iterator& it, std::default_sentinel_t) { return !it.load(); }

   private:
    friend class SharedList;
    explicit iterator(const SharedList* l) : l_(l) {}
    bool load() const;
    const SharedList* l_;
    std::uint64_t pos_ = 0;
    mutable std::optional<T> cur_;
  };

  /// Appends v (atomically).
  void append(const T& v);
  //!Effects: appends every item of `items`, atomically per batch of 65536 items.
  template <class Range>
  void extend(const Range& items);
  /// extend() from a braced list.
  void extend(std::initializer_list<T> items) { extend<std::initializer_list<T>>(items); }
  /// Inserts v before position i (clamped to [0, size] as in Python).
  void insert(std::int64_t i, const T& v);
  //!Effects: removes item i (default: the last). Returns: it. Throws: IndexError.
  T pop(std::int64_t i = -1);
  //!Effects: removes the first item equal to v. Throws: ValueError if there is none.
  void remove(const T& v);
  //!Returns: the position of the first item equal to v in [start, stop).
  //!Throws: ValueError if there is none.
  std::size_t index(const T& v, std::int64_t start = 0,
                    std::int64_t stop = std::numeric_limits<std::int64_t>::max()) const;
  /// Number of items equal to v.
  std::size_t count(const T& v) const;
  //!Effects: sorts the list in place (stable) by `comp` on the decoded items; reverse=true sorts
  //! in descending order, as Python's sort(reverse=True).
  template <class Compare = std::less<>>
  void sort(Compare comp = {}, bool reverse = false);
  /// Reverses the list in place.
  void reverse();
  /// l[i]: a proxy to read or assign item i.
  Proxy operator[](std::int64_t i) { return Proxy(this, i); }
  /// Item i. Throws: IndexError.
  T get(std::int64_t i) const;
  /// Replaces item i. Throws: IndexError.
  void set(std::int64_t i, const T& v);
  /// Python's l[start:stop:step] (negative and out-of-range bounds as in Python; step != 0).
  std::vector<T> slice(std::int64_t start, std::int64_t stop, std::int64_t step = 1) const;
  //!Effects: Python's del l[start:stop:step], atomically.
  void erase(std::int64_t start, std::int64_t stop, std::int64_t step = 1);
  /// Number of items (Python's len(l)).
  std::size_t size() const;
  /// True when the list has no items.
  bool empty() const { return size() == 0; }
  //!Effects: removes every item (atomically; memory is reclaimed right after).
  void clear();
  /// A consistent snapshot of the items (Python's l[:]).
  std::vector<T> to_vector() const;
  /// Starts a live iteration (see `iterator`); to_vector() is the consistent snapshot.
  iterator begin() const { return iterator(this); }
  /// The end of a live iteration.
  std::default_sentinel_t end() const noexcept { return {}; }

  /// Python's `l += items`: extend(items).
  template <class Range>
  SharedList& operator+=(const Range& items) {
    extend(items);
    return *this;
  }
  /// Python's `l += [a, b]`.
  SharedList& operator+=(std::initializer_list<T> items) {
    extend(items);
    return *this;
  }
  //!Effects: Python's `l *= n`: the list repeated n times, atomically (n <= 0 empties it).
  SharedList& operator*=(std::int64_t n);
  /// Python's `l * n`: a snapshot repeated n times (a plain vector, as Python returns a list).
  std::vector<T> operator*(std::int64_t n) const;
  /// Python's `l + items`: a snapshot followed by `items` (a plain vector).
  template <class Range>
  std::vector<T> operator+(const Range& items) const {
    auto out = to_vector();
    out.insert(out.end(), std::begin(items), std::end(items));
    return out;
  }

  /// Python's repr of the list with its name: `<SharedList 'l' [1, 2]>`.
  std::string repr() const;
  /// The list's name inside its manager.
  const std::string& name() const noexcept { return ref_.name; }
  /// The name of the manager that holds it.
  const std::string& manager_name() const noexcept { return ref_.manager(); }

 private:
  friend class Manager;
  friend struct detail::Nest;
  using Core = detail::shm::ListCore;
  explicit SharedList(detail::ObjectRef ref) : ref_(std::move(ref)) {}
  Proxy kept(std::shared_ptr<const void> keep, std::int64_t i) {
    return Proxy(this, i, std::move(keep));
  }

  detail::shm::Arena& arena() const noexcept { return ref_.arena(); }
  Core core() const noexcept { return Core(&ref_.arena(), ref_.root); }
  detail::shm::ListRoot* root() const { return core().root(); }
  template <class F>
  auto read(std::string_view what, F&& f) const -> decltype(f()) {
    return detail::shm::seq_read(arena(), root()->seq, ref_.deadline(), what, f);
  }
  T decode(detail::ByteSpan b, std::uint64_t i) const;
  std::uint64_t normalize(std::int64_t i, std::uint64_t size, const char* what) const;

  detail::ObjectRef ref_;
};

/// Python's Manager().Namespace(): named attributes of any codec type. Reading an attribute as
/// another type than it was set with is a TypeMismatchError; a missing one is a KeyError
/// (Python: AttributeError). A string literal is stored as a std::string.
class Namespace {
 public:
  /// Sets attribute `attr` to v (atomically). A string literal or C string is a std::string.
  template <class T>
  void set(std::string_view attr, const T& v);
  //!Returns: attribute `attr` as a T. Throws: KeyError if missing, TypeMismatchError if it was
  //! set with another type.
  template <class T>
  T get(std::string_view attr) const;
  /// Attribute `attr`, or `def` if missing. Throws: TypeMismatchError.
  template <class T>
  T get(std::string_view attr, const T& def) const {
    auto v = try_get<T>(attr);
    return v ? std::move(*v) : def;
  }
  /// String attribute `attr`, or `def` if missing: ns.get("name", "nobody").
  std::string get(std::string_view attr, const char* def) const {
    return get<std::string>(attr, std::string(def));
  }
  /// True if attribute `attr` is set.
  bool contains(std::string_view attr) const;
  /// Removes attribute `attr` (Python's `del ns.attr`); false if it was missing.
  bool erase(std::string_view attr);
  /// The attribute names, in the order they were first set.
  std::vector<std::string> names() const;
  /// Python's repr: `Namespace(a=1, b='x')` (names starting with '_' hidden, as in Python).
  std::string repr() const;
  /// The Namespace's name inside its manager.
  const std::string& name() const noexcept { return ref_.name; }
  /// The name of the manager that holds it.
  const std::string& manager_name() const noexcept { return ref_.manager(); }

 private:
  friend class Manager;
  using Core = detail::shm::DictCore;
  explicit Namespace(detail::ObjectRef ref) : ref_(std::move(ref)) {}

  detail::shm::Arena& arena() const noexcept { return ref_.arena(); }
  Core core() const noexcept { return Core(&ref_.arena(), ref_.root); }
  detail::shm::DictRoot* root() const { return core().root(); }
  template <class F>
  auto read(F&& f) const -> decltype(f()) {
    return detail::shm::seq_read(arena(), root()->seq, ref_.deadline(), "read", f);
  }
  template <class T>
  std::optional<T> try_get(std::string_view attr) const;

  detail::ObjectRef ref_;
};

/// A user type T kept in a manager, Python's BaseManager.register in C++ terms: call() runs one
/// of T's methods (or any callable on a T&) atomically under the manager's transaction and
/// returns its result; get() returns a snapshot copy. T must be encodable (trivially copyable, or
/// with a serialize() member as for mpp::codec). Unlike Python there is no server process and no
/// `exposed` list: every method can be called, on the shared state itself.
template <class T>
class SharedObject {
 public:
  using value_type = T;  ///< the stored type

  //!Effects: decodes the object, calls fn(object, args...) under the manager's lock and stores
  //! the object back if it changed, all in one transaction (a process killed in between leaves
  //! the object as before). fn must not use this manager. If fn throws, nothing changes.
  //!Returns: fn's result (a copy; void for a void method).
  template <class F, class... A>
  std::decay_t<std::invoke_result_t<F, T&, A...>> call(F&& fn, A&&... args);
  /// A snapshot copy of the object (no lock).
  T get() const;
  /// Replaces the object (atomically).
  void set(const T& v);

  /// Python-like repr: `<SharedObject 'acct' of type Account>`, or with the value if fmt can
  /// format T.
  std::string repr() const;
  /// The object's name inside its manager.
  const std::string& name() const noexcept { return ref_.name; }
  /// The name of the manager that holds it.
  const std::string& manager_name() const noexcept { return ref_.manager(); }

 private:
  friend class Manager;
  using Core = detail::shm::ListCore;  // a list of exactly one item
  explicit SharedObject(detail::ObjectRef ref) : ref_(std::move(ref)) {}

  detail::shm::Arena& arena() const noexcept { return ref_.arena(); }
  Core core() const noexcept { return Core(&ref_.arena(), ref_.root); }
  detail::ByteSpan bytes() const;

  detail::ObjectRef ref_;
};

/// Python's multiprocessing.Manager(): shared containers in one shared segment. RAII: the
/// creating handle removes the segment's name when destroyed (unless persistent); processes
/// that still use it keep working. Copies share one mapping; forked children inherit it.
/// A mutation that does not fit in the capacity raises mpp::MemoryError (as Python raises
/// MemoryError) and changes nothing; a full /dev/shm raises mpp::NoSpaceError.
class Manager {
 public:
  //!Effects: creates an anonymous manager (inherited by forked children). Throws: OSError.
  Manager() : Manager(ManagerOptions{}) {}
  //!Effects: creates an anonymous manager with `opts`. Throws: InvalidArgument, OSError.
  explicit Manager(const ManagerOptions& opts)
      : Manager(detail::Segment::create_anonymous(spec(opts), format), opts) {}

  //!Effects: creates the named manager `name`. Throws: ExistsError, InvalidArgument, OSError.
  static Manager create(std::string_view name, const ManagerOptions& opts = {}) {
    return Manager(detail::Segment::create(name, spec(opts), format, opts.named()), opts);
  }
  //!Effects: opens the named manager `name`. Throws: NotFoundError, TypeMismatchError,
  //! CorruptedError, TimeoutError.
  static Manager open(std::string_view name, const ManagerOptions& opts = {}) {
    return Manager(detail::Segment::open(name, Kind::manager, TypeInfo::none(), opts.named()),
                   opts);
  }
  /// Opens the named manager `name`, creating it (with `opts`) if it does not exist.
  static Manager open_or_create(std::string_view name, const ManagerOptions& opts = {}) {
    return Manager(detail::Segment::open_or_create(name, spec(opts), format, opts.named()).first,
                   opts);
  }

  //!Returns: the dict `name` of this manager, creating it empty if it does not exist.
  //!Throws: TypeMismatchError if `name` is another kind of container or has other key/value
  //! types; InvalidArgument for a bad name; Error when the manager holds too many containers.
  template <class K, class V>
  SharedDict<K, V> dict(std::string_view name);
  /// A new dict with a generated name (Python's m.dict()); share it by copying the handle.
  template <class K, class V>
  SharedDict<K, V> dict() {
    return dict<K, V>(auto_name("dict"));
  }
  /// A new dict holding `items` (Python's m.dict({...}) or m.dict(a=1, b=2)).
  template <class K, class V>
  SharedDict<K, V> dict(std::initializer_list<std::pair<K, V>> items) {
    auto d = dict<K, V>();
    d.update(items);
    return d;
  }
  //!Returns: the list `name`, creating it empty if it does not exist. Throws: as dict().
  template <class T>
  SharedList<T> list(std::string_view name);
  /// A new list with a generated name (Python's m.list()).
  template <class T>
  SharedList<T> list() {
    return list<T>(auto_name("list"));
  }
  /// A new list holding `items` (Python's m.list([...])).
  template <class T>
  SharedList<T> list(std::initializer_list<T> items) {
    auto l = list<T>();
    l.extend(items);
    return l;
  }
  //!Returns: the Namespace `name`, creating it empty if it does not exist. Throws: as dict().
  ::mpp::Namespace Namespace(std::string_view name);
  /// A new Namespace with a generated name (Python's m.Namespace()).
  ::mpp::Namespace Namespace() { return Namespace(auto_name("ns")); }
  //!Returns: the object `name` of type T, created as `init` if it does not exist (Python's
  //! BaseManager.register(typeid, T) then m.typeid()). Throws: as dict().
  template <class T>
  SharedObject<T> object(std::string_view name, const T& init = T{});
  /// A new object holding `init`, with a generated name.
  template <class T>
  SharedObject<T> object(const T& init = T{}) {
    return object<T>(auto_name("object"), init);
  }

  // Python's SyncManager also hands out these; ours are the very objects of the free
  // constructors (each in its own anonymous segment, inherited by forked children and passed to
  // other processes by name through mpp::codec), so m.Lock() is exactly mpp::Lock().

  /// Python's m.Value(typecode, v): the same as mpp::Value<T>(args...).
  template <class T, class... A>
  ::mpp::Value<T> Value(A&&... args) {
    return ::mpp::Value<T>(std::forward<A>(args)...);
  }
  /// Python's m.Array(typecode, seq): the same as mpp::Array<T>(args...).
  template <class T, class... A>
  ::mpp::Array<T> Array(A&&... args) {
    return ::mpp::Array<T>(std::forward<A>(args)...);
  }
  /// Python's m.Array(typecode, [0, 1]): m.Array<int>({0, 1}).
  template <class T>
  ::mpp::Array<T> Array(std::initializer_list<T> values, const SharedOptions& opts = {}) {
    return ::mpp::Array<T>(values, opts);
  }
  /// Python's m.Queue(maxsize): the same as mpp::Queue<T>(args...).
  template <class T, class... A>
  ::mpp::Queue<T> Queue(A&&... args) {
    return ::mpp::Queue<T>(std::forward<A>(args)...);
  }
  /// Python's m.JoinableQueue(maxsize): the same as mpp::JoinableQueue<T>(args...).
  template <class T, class... A>
  ::mpp::JoinableQueue<T> JoinableQueue(A&&... args) {
    return ::mpp::JoinableQueue<T>(std::forward<A>(args)...);
  }
  /// Python's m.Lock(): the same as mpp::Lock().
  ::mpp::Lock Lock() { return ::mpp::Lock(); }
  /// Python's m.RLock(): the same as mpp::RLock().
  ::mpp::RLock RLock() { return ::mpp::RLock(); }
  /// Python's m.Semaphore(value): the same as mpp::Semaphore(value).
  ::mpp::Semaphore Semaphore(std::uint32_t value = 1) { return ::mpp::Semaphore(value); }
  /// Python's m.BoundedSemaphore(value): the same as mpp::BoundedSemaphore(value).
  ::mpp::BoundedSemaphore BoundedSemaphore(std::uint32_t value = 1) {
    return ::mpp::BoundedSemaphore(value);
  }
  /// Python's m.Event(): the same as mpp::Event().
  ::mpp::Event Event() { return ::mpp::Event(); }
  /// Python's m.Condition(lock): the same as mpp::Condition(args...).
  template <class... A>
  ::mpp::Condition Condition(A&&... args) {
    return ::mpp::Condition(std::forward<A>(args)...);
  }
  /// Python's m.Barrier(parties, action, timeout): the same as mpp::Barrier(args...).
  template <class... A>
  ::mpp::Barrier Barrier(A&&... args) {
    return ::mpp::Barrier(std::forward<A>(args)...);
  }

  /// The manager's segment name (give it to Manager::open in an unrelated process).
  const std::string& name() const noexcept { return core_->name(); }
  /// Bytes reserved for containers.
  std::uint64_t capacity() const noexcept { return core_->arena.size(); }
  /// Bytes handed out so far (including freed blocks kept for reuse).
  std::uint64_t used_bytes() const noexcept {
    return detail::shm::racy_load(&core_->arena.header()->bump);
  }
  //!Effects: removes the manager's name now; handles keep working. Returns: false if gone.
  bool unlink() { return core_->seg->unlink(); }

 private:
  Manager(detail::Segment seg, const ManagerOptions& opts);
  static detail::SegmentSpec spec(const ManagerOptions& opts);
  static void format(std::byte* p, std::uint64_t size) { detail::shm::Arena::format(p, size); }
  std::string auto_name(std::string_view kind);
  template <class Make>
  detail::ObjectRef open_container(std::string_view name, detail::ObjectKind kind,
                                   std::uint64_t type, Make&& make);
  std::optional<std::uint64_t> find_container(std::string_view name, detail::ObjectKind kind,
                                              std::uint64_t type) const;

  std::shared_ptr<detail::ManagerCore> core_;
};

}  // namespace mpp

#include "detail/manager_codec.hpp"
#include "detail/manager_dict.hpp"
#include "detail/manager_directory.hpp"
#include "detail/manager_list.hpp"
#include "detail/manager_object.hpp"
