// mpp — Python's multiprocessing.Manager(): a shared dict, list and Namespace that live directly
// in one shared segment (no server process, no round trip).
//
//   mpp::Manager m;                                   // anonymous; forked children inherit it
//   auto d = m.dict<std::string, int>("scores");      // opens or creates the dict "scores"
//   d["alice"] = 3; d.update_with("alice", [](int v) { return v + 1; });
//   auto l = m.list<std::pair<std::string, int>>("database");
//   auto ns = m.Namespace("config"); ns.set("x", 1); int x = ns.get<int>("x");
//
// Crash consistency: every mutation is a transaction under the manager's robust lock with an
// undo log (detail/shm_alloc.hpp); a process SIGKILLed in the middle of any mutation leaves each
// container as before or as after it, and the next writer (or a reader that needs the lock)
// repairs it. Reads take no lock: they are validated by a per-container sequence word.
// Keys (and list items, for remove/index/count) compare by their encoded bytes (mpp::codec).
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <initializer_list>
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
#include "detail/manager_containers.hpp"
#include "detail/name_codec.hpp"
#include "detail/shm_alloc.hpp"
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

namespace detail {

using shm::ByteSpan;

/// What a named container of a manager is.
enum class ObjectKind : std::uint32_t { dict = 1, list = 2, ns = 3 };

inline const char* object_kind_name(std::uint32_t k) noexcept {
  switch (k) {
    case 1:
      return "dict";
    case 2:
      return "list";
    case 3:
      return "Namespace";
  }
  return "unknown";
}

/// A manager mapping shared by every handle made from it.
struct ManagerCore {
  std::shared_ptr<Segment> seg;
  shm::Arena arena;
  Timeout timeout;

  Deadline deadline() const noexcept { return Deadline::from(timeout); }
  const std::string& name() const noexcept { return seg->name(); }
};

/// One container of a manager: the shared mapping, its root block and its name.
struct ObjectRef {
  std::shared_ptr<ManagerCore> core;
  std::uint64_t root = 0;
  std::string name;

  shm::Arena& arena() const noexcept { return core->arena; }
  Deadline deadline() const noexcept { return core->deadline(); }
};

/// Per-thread scratch buffers for encoding keys and values (no allocation per call).
inline Bytes& scratch(int i) {
  thread_local Bytes buf[2];
  return buf[i];
}

template <class T>
ByteSpan encode_into(const T& v, Bytes& out) {
  if constexpr (RawEncodable<T> && requires { codec<T>::kind; }) {
    if constexpr (codec<T>::kind == std::string_view("raw")) {  // the bytes of v, no insert()
      out.resize(sizeof(T));
      std::memcpy(out.data(), std::addressof(v), sizeof(T));
      return {out.data(), out.size()};
    }
  }
  out.clear();
  codec<T>::encode(v, out);
  return {out.data(), out.size()};
}

template <class K>
std::string key_text(const K& k) {
  if constexpr (fmt::is_formattable<K>::value)
    return fmt::format(" {}", k);
  else
    return {};
}

/// Frees blocks unlinked by a committed clear(), in bounded transactions (a crash in between
/// only leaks the rest).
inline void free_blocks(shm::Arena& a, const Deadline& dl, const std::vector<std::uint64_t>& v) {
  constexpr std::size_t kChunk = 50'000;
  for (std::size_t i = 0; i < v.size(); i += kChunk) {
    shm::Tx tx(a, dl, "free cleared items");
    for (std::size_t j = i; j < std::min(v.size(), i + kChunk); ++j) tx.free_now(v[j]);
    tx.commit();
  }
}

}  // namespace detail

/// Python's Manager().dict(): a dict in shared memory with keys K and values V of any codec type.
/// Handles are cheap to copy and usable in forked children. Reads take no lock.
template <class K, class V>
class SharedDict {
  using Core = detail::shm::DictCore;

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

   private:
    friend class SharedDict;
    Proxy(SharedDict* d, K k) : d_(d), k_(std::move(k)) {}
    SharedDict* d_;
    K k_;
  };

  //!Returns: the value of `k`, or nullopt (Python's d.get(k) returning None).
  std::optional<V> get(const K& k) const {
    const detail::ByteSpan key = detail::encode_into(k, detail::scratch(0));
    const std::uint64_t h = detail::shm::hash_bytes(key.data(), key.size());
    return read("get", [&]() -> std::optional<V> {
      auto hit = core().find(key, h);
      if (!hit) return std::nullopt;
      return mpp::decode<V>(hit->value);
    });
  }
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
  void set(const K& k, const V& v) {
    const detail::ByteSpan key = detail::encode_into(k, detail::scratch(0));
    const detail::ByteSpan val = detail::encode_into(v, detail::scratch(1));
    const std::uint64_t h = detail::shm::hash_bytes(key.data(), key.size());
    detail::shm::Tx tx(arena(), ref_.deadline(), "set an item", &root()->seq);
    core().set(tx, key, h, val);
    tx.commit();
  }
  /// True if `k` is present.
  bool contains(const K& k) const {
    const detail::ByteSpan key = detail::encode_into(k, detail::scratch(0));
    const std::uint64_t h = detail::shm::hash_bytes(key.data(), key.size());
    return read("contains", [&] { return core().find(key, h).has_value(); });
  }
  //!Effects: inserts k -> def if k is missing. Returns: the value now stored.
  V setdefault(const K& k, const V& def = V{}) {
    Bytes key = mpp::encode(k);
    const std::uint64_t h = detail::shm::hash_bytes(key.data(), key.size());
    Bytes found;
    {
      detail::shm::Tx tx(arena(), ref_.deadline(), "setdefault", &root()->seq);
      if (auto hit = core().find(key, h)) {
        // Decoded after the lock is released: decoding a container handle opens the manager.
        found.assign(hit->value.begin(), hit->value.end());
        tx.commit();
      } else {
        const detail::ByteSpan val = detail::encode_into(def, detail::scratch(1));
        core().insert_new(tx, key, h, val);
        tx.commit();
        return def;
      }
    }
    return mpp::decode<V>(found);
  }
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
  std::pair<K, V> popitem() {
    Bytes k, v;
    {
      detail::shm::Tx tx(arena(), ref_.deadline(), "popitem", &root()->seq);
      auto hit = core().last();
      if (!hit)
        detail::fail<KeyError>("popitem(): dict '{}' of manager '{}' is empty", ref_.name, mname());
      // Copied under the lock, decoded after it (decoding a handle opens the manager).
      k.assign(hit->key.begin(), hit->key.end());
      v.assign(hit->value.begin(), hit->value.end());
      core().erase(tx, *hit);
      tx.commit();
    }
    return {mpp::decode<K>(k), mpp::decode<V>(v)};
  }
  /// Removes k; returns false if it was missing (Python's `del d[k]` without the KeyError).
  bool erase(const K& k) { return take(k).has_value(); }

  //!Effects: sets every (key, value) pair of `items`, atomically per batch of 65536 items.
  template <class Range>
  void update(const Range& items) {
    constexpr std::size_t kBatch = 65'536;
    auto it = std::begin(items);
    const auto end = std::end(items);
    Bytes key, val;
    while (it != end) {
      detail::shm::Tx tx(arena(), ref_.deadline(), "update", &root()->seq);
      for (std::size_t n = 0; n < kBatch && it != end; ++n, ++it) {
        const auto& [k, v] = *it;
        detail::encode_into(static_cast<const K&>(k), key);
        detail::encode_into(static_cast<const V&>(v), val);
        core().set(tx, key, detail::shm::hash_bytes(key.data(), key.size()), val);
      }
      tx.commit();
    }
  }
  /// update() from a braced list: d.update({{"a", 1}, {"b", 2}}).
  void update(std::initializer_list<std::pair<K, V>> items) {
    update<std::initializer_list<std::pair<K, V>>>(items);
  }

  //!Effects: atomically replaces the value of k by fn(current value, or `def` if missing).
  //! `fn` runs under the manager's lock: it must not use this manager. If it throws, nothing
  //! changes. Returns: the new value.
  template <class F>
  V update_with(const K& k, F&& fn, const V& def = V{}) {
    Bytes key = mpp::encode(k);
    const std::uint64_t h = detail::shm::hash_bytes(key.data(), key.size());
    detail::shm::Tx tx(arena(), ref_.deadline(), "update_with", &root()->seq);
    auto hit = core().find(key, h);
    V nv = std::invoke(fn, hit ? mpp::decode<V>(hit->value) : def);
    Bytes val = mpp::encode(nv);
    if (hit)
      core().replace(tx, *hit, val);
    else
      core().insert_new(tx, key, h, val);
    tx.commit();
    return nv;
  }

  /// Number of items (Python's len(d)).
  std::size_t size() const {
    return read("size", [&] { return static_cast<std::size_t>(core().size()); });
  }
  /// True when the dict has no items.
  bool empty() const { return size() == 0; }
  //!Effects: removes every item (atomically; memory is reclaimed right after).
  void clear() {
    std::vector<std::uint64_t> blocks;
    {
      detail::shm::Tx tx(arena(), ref_.deadline(), "clear", &root()->seq);
      blocks = core().clear(tx);
      tx.commit();
    }
    detail::free_blocks(arena(), ref_.deadline(), blocks);
  }

  /// The keys, in insertion order (a consistent snapshot).
  std::vector<K> keys() const {
    return read("keys", [&] {
      std::vector<K> out;
      core().for_each(
          [&](detail::ByteSpan k, detail::ByteSpan) { out.push_back(mpp::decode<K>(k)); });
      return out;
    });
  }
  /// The values, in insertion order (a consistent snapshot).
  std::vector<V> values() const {
    return read("values", [&] {
      std::vector<V> out;
      core().for_each(
          [&](detail::ByteSpan, detail::ByteSpan v) { out.push_back(mpp::decode<V>(v)); });
      return out;
    });
  }
  /// The (key, value) pairs, in insertion order (a consistent snapshot).
  std::vector<std::pair<K, V>> items() const {
    return read("items", [&] {
      std::vector<std::pair<K, V>> out;
      core().for_each([&](detail::ByteSpan k, detail::ByteSpan v) {
        out.emplace_back(mpp::decode<K>(k), mpp::decode<V>(v));
      });
      return out;
    });
  }
  /// A consistent snapshot as a std::map (K must be ordered).
  std::map<K, V> to_map() const {
    auto it = items();
    return std::map<K, V>(std::make_move_iterator(it.begin()), std::make_move_iterator(it.end()));
  }

  /// The dict's name inside its manager.
  const std::string& name() const noexcept { return ref_.name; }
  /// The name of the manager that holds it.
  const std::string& manager_name() const noexcept { return ref_.core->name(); }

 private:
  friend class Manager;
  explicit SharedDict(detail::ObjectRef ref) : ref_(std::move(ref)) {}

  detail::shm::Arena& arena() const noexcept { return ref_.arena(); }
  Core core() const noexcept { return Core(&ref_.arena(), ref_.root); }
  detail::shm::DictRoot* root() const { return core().root(); }
  const std::string& mname() const noexcept { return ref_.core->name(); }

  template <class F>
  auto read(std::string_view what, F&& f) const -> decltype(f()) {
    return detail::shm::seq_read(arena(), root()->seq, ref_.deadline(), what, f);
  }
  std::optional<V> take(const K& k) {
    const detail::ByteSpan key = detail::encode_into(k, detail::scratch(0));
    const std::uint64_t h = detail::shm::hash_bytes(key.data(), key.size());
    Bytes v;
    {
      detail::shm::Tx tx(arena(), ref_.deadline(), "pop", &root()->seq);
      auto hit = core().find(key, h);
      if (!hit) return std::nullopt;  // ~Tx releases the lock (nothing was logged)
      // Copied under the lock, decoded after it (decoding a handle opens the manager).
      v.assign(hit->value.begin(), hit->value.end());
      core().erase(tx, *hit);
      tx.commit();
    }
    return mpp::decode<V>(v);
  }
  [[noreturn]] void missing(const K& k) const {
    detail::fail<KeyError>("key{} not found in dict '{}' of manager '{}'", detail::key_text(k),
                           ref_.name, mname());
  }

  detail::ObjectRef ref_;
};

/// Python's Manager().list(): a list in shared memory with items of any codec type.
/// Indices may be negative (counted from the end) as in Python.
template <class T>
class SharedList {
  using Core = detail::shm::ListCore;

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

   private:
    friend class SharedList;
    Proxy(SharedList* l, std::int64_t i) : l_(l), i_(i) {}
    SharedList* l_;
    std::int64_t i_;
  };

  /// Appends v (atomically).
  void append(const T& v) {
    const detail::ByteSpan b = detail::encode_into(v, detail::scratch(1));
    detail::shm::Tx tx(arena(), ref_.deadline(), "append", &root()->seq);
    Core c = core();
    c.push_back(tx, c.make_item(tx, b));
    tx.commit();
  }
  //!Effects: appends every item of `items`, atomically per batch of 65536 items.
  template <class Range>
  void extend(const Range& items) {
    constexpr std::size_t kBatch = 65'536;
    auto it = std::begin(items);
    const auto end = std::end(items);
    Bytes buf;
    while (it != end) {
      detail::shm::Tx tx(arena(), ref_.deadline(), "extend", &root()->seq);
      Core c = core();
      for (std::size_t n = 0; n < kBatch && it != end; ++n, ++it)
        c.push_back(tx, c.make_item(tx, detail::encode_into(static_cast<const T&>(*it), buf)));
      tx.commit();
    }
  }
  /// extend() from a braced list.
  void extend(std::initializer_list<T> items) { extend<std::initializer_list<T>>(items); }
  /// Inserts v before position i (clamped to [0, size] as in Python).
  void insert(std::int64_t i, const T& v) {
    const detail::ByteSpan b = detail::encode_into(v, detail::scratch(1));
    detail::shm::Tx tx(arena(), ref_.deadline(), "insert", &root()->seq);
    Core c = core();
    const auto n = static_cast<std::int64_t>(c.size());
    if (i < 0) i = std::max<std::int64_t>(0, i + n);
    if (i > n) i = n;
    c.insert(tx, static_cast<std::uint64_t>(i), c.make_item(tx, b));
    tx.commit();
  }
  //!Effects: removes item i (default: the last). Returns: it. Throws: IndexError.
  T pop(std::int64_t i = -1) {
    Bytes v;
    {
      detail::shm::Tx tx(arena(), ref_.deadline(), "pop", &root()->seq);
      Core c = core();
      const std::uint64_t at = normalize(i, c.size(), "pop");
      // Copied under the lock, decoded after it (decoding a handle opens the manager).
      const detail::ByteSpan b = c.item(at);
      v.assign(b.begin(), b.end());
      c.erase(tx, at);
      tx.commit();
    }
    return mpp::decode<T>(v);
  }
  //!Effects: removes the first item equal to v. Throws: ValueError if there is none.
  void remove(const T& v) {
    Bytes b = mpp::encode(v);
    detail::shm::Tx tx(arena(), ref_.deadline(), "remove", &root()->seq);
    Core c = core();
    const auto items = c.items();
    for (std::uint64_t i = 0; i < items.size(); ++i) {
      if (equal(arena().block_bytes(items[i]), b)) {
        c.erase(tx, i);
        tx.commit();
        return;
      }
    }
    detail::fail<ValueError>("remove(x): x not in list '{}' of manager '{}'", ref_.name, mname());
  }
  //!Returns: the position of the first item equal to v in [start, stop).
  //!Throws: ValueError if there is none.
  std::size_t index(const T& v, std::int64_t start = 0,
                    std::int64_t stop = std::numeric_limits<std::int64_t>::max()) const {
    const Bytes b = mpp::encode(v);
    const auto r = read("index", [&]() -> std::int64_t {
      const auto items = core().items();
      const auto n = static_cast<std::int64_t>(items.size());
      const auto [lo, hi] = clamp_range(start, stop, n);
      for (std::int64_t i = lo; i < hi; ++i)
        if (equal(arena().block_bytes(items[static_cast<std::size_t>(i)]), b)) return i;
      return -1;
    });
    if (r < 0)
      detail::fail<ValueError>("index(x): x not in list '{}' of manager '{}'", ref_.name, mname());
    return static_cast<std::size_t>(r);
  }
  /// Number of items equal to v.
  std::size_t count(const T& v) const {
    const Bytes b = mpp::encode(v);
    return read("count", [&] {
      std::size_t n = 0;
      for (std::uint64_t off : core().items()) n += equal(arena().block_bytes(off), b);
      return n;
    });
  }
  //!Effects: sorts the list in place (stable) by `comp` on the decoded items; reverse=true sorts
  //! in descending order, as Python's sort(reverse=True).
  template <class Compare = std::less<>>
  void sort(Compare comp = {}, bool reverse = false) {
    detail::shm::Tx tx(arena(), ref_.deadline(), "sort", &root()->seq);
    Core c = core();
    const auto items = c.items();
    std::vector<std::pair<T, std::uint64_t>> v;
    v.reserve(items.size());
    for (std::uint64_t off : items) v.emplace_back(mpp::decode<T>(arena().block_bytes(off)), off);
    std::stable_sort(v.begin(), v.end(), [&](const auto& a, const auto& b) {
      return reverse ? comp(b.first, a.first) : comp(a.first, b.first);
    });
    std::vector<std::uint64_t> order;
    order.reserve(v.size());
    for (auto& p : v) order.push_back(p.second);
    c.reorder(tx, order);
    tx.commit();
  }
  /// Reverses the list in place.
  void reverse() {
    detail::shm::Tx tx(arena(), ref_.deadline(), "reverse", &root()->seq);
    Core c = core();
    const auto items = c.items();
    std::vector<std::uint64_t> order(items.rbegin(), items.rend());
    c.reorder(tx, order);
    tx.commit();
  }
  /// l[i]: a proxy to read or assign item i.
  Proxy operator[](std::int64_t i) { return Proxy(this, i); }
  /// Item i. Throws: IndexError.
  T get(std::int64_t i) const {
    std::uint64_t n = 0;
    auto v = read("get", [&]() -> std::optional<T> {
      const auto items = core().items();
      n = items.size();
      const std::int64_t j = i < 0 ? i + static_cast<std::int64_t>(n) : i;
      if (j < 0 || static_cast<std::uint64_t>(j) >= n) return std::nullopt;
      return mpp::decode<T>(arena().block_bytes(items[static_cast<std::size_t>(j)]));
    });
    if (!v) normalize(i, n, "index");  // throws IndexError
    return std::move(*v);
  }
  /// Replaces item i. Throws: IndexError.
  void set(std::int64_t i, const T& v) {
    const detail::ByteSpan b = detail::encode_into(v, detail::scratch(1));
    detail::shm::Tx tx(arena(), ref_.deadline(), "assign", &root()->seq);
    Core c = core();
    const std::uint64_t at = normalize(i, c.size(), "assignment");
    c.assign(tx, at, c.make_item(tx, b));
    tx.commit();
  }
  /// Python's l[start:stop:step] (negative and out-of-range bounds as in Python; step != 0).
  std::vector<T> slice(std::int64_t start, std::int64_t stop, std::int64_t step = 1) const {
    if (step == 0) detail::fail<ValueError>("slice step cannot be zero");
    return read("slice", [&] {
      const auto items = core().items();
      std::vector<T> out;
      for (std::int64_t i : slice_indices(start, stop, step, items.size()))
        out.push_back(mpp::decode<T>(arena().block_bytes(items[static_cast<std::size_t>(i)])));
      return out;
    });
  }
  //!Effects: Python's del l[start:stop:step], atomically.
  void erase(std::int64_t start, std::int64_t stop, std::int64_t step = 1) {
    if (step == 0) detail::fail<ValueError>("slice step cannot be zero");
    detail::shm::Tx tx(arena(), ref_.deadline(), "delete a slice", &root()->seq);
    Core c = core();
    const auto items = c.items();
    std::vector<bool> drop(items.size());
    for (std::int64_t i : slice_indices(start, stop, step, items.size()))
      drop[static_cast<std::size_t>(i)] = true;
    std::vector<std::uint64_t> keep;
    for (std::uint64_t i = 0; i < items.size(); ++i) {
      if (drop[i])
        tx.free(items[i]);
      else
        keep.push_back(items[i]);
    }
    c.reorder(tx, keep);
    tx.commit();
  }
  /// Number of items (Python's len(l)).
  std::size_t size() const {
    return read("size", [&] { return static_cast<std::size_t>(core().size()); });
  }
  /// True when the list has no items.
  bool empty() const { return size() == 0; }
  //!Effects: removes every item (atomically; memory is reclaimed right after).
  void clear() {
    std::vector<std::uint64_t> blocks;
    {
      detail::shm::Tx tx(arena(), ref_.deadline(), "clear", &root()->seq);
      Core c = core();
      const auto items = c.items();
      blocks.assign(items.begin(), items.end());
      tx.put_once(&c.root()->size, std::uint64_t{0});
      tx.commit();
    }
    detail::free_blocks(arena(), ref_.deadline(), blocks);
  }
  /// A consistent snapshot of the items (Python's l[:]).
  std::vector<T> to_vector() const {
    return read("to_vector", [&] {
      std::vector<T> out;
      for (std::uint64_t off : core().items())
        out.push_back(mpp::decode<T>(arena().block_bytes(off)));
      return out;
    });
  }

  /// The list's name inside its manager.
  const std::string& name() const noexcept { return ref_.name; }
  /// The name of the manager that holds it.
  const std::string& manager_name() const noexcept { return ref_.core->name(); }

 private:
  friend class Manager;
  explicit SharedList(detail::ObjectRef ref) : ref_(std::move(ref)) {}

  detail::shm::Arena& arena() const noexcept { return ref_.arena(); }
  Core core() const noexcept { return Core(&ref_.arena(), ref_.root); }
  detail::shm::ListRoot* root() const { return core().root(); }
  const std::string& mname() const noexcept { return ref_.core->name(); }

  template <class F>
  auto read(std::string_view what, F&& f) const -> decltype(f()) {
    return detail::shm::seq_read(arena(), root()->seq, ref_.deadline(), what, f);
  }
  static bool equal(detail::ByteSpan a, const Bytes& b) noexcept {
    return a.size() == b.size() && (b.empty() || std::memcmp(a.data(), b.data(), b.size()) == 0);
  }
  std::uint64_t normalize(std::int64_t i, std::uint64_t size, const char* what) const {
    const auto n = static_cast<std::int64_t>(size);
    const std::int64_t j = i < 0 ? i + n : i;
    if (j < 0 || j >= n)
      detail::fail<IndexError>(
          "list {} index {} out of range for list '{}' of manager '{}' ({} items)", what, i,
          ref_.name, mname(), n);
    return static_cast<std::uint64_t>(j);
  }
  static std::pair<std::int64_t, std::int64_t> clamp_range(std::int64_t a, std::int64_t b,
                                                           std::int64_t n) {
    if (a < 0) a = std::max<std::int64_t>(0, a + n);
    if (b < 0) b = std::max<std::int64_t>(0, b + n);
    return {std::min(a, n), std::min(b, n)};
  }
  // Python's slice.indices() followed by range().
  static std::vector<std::int64_t> slice_indices(std::int64_t start, std::int64_t stop,
                                                 std::int64_t step, std::uint64_t size) {
    const auto n = static_cast<std::int64_t>(size);
    auto adjust = [&](std::int64_t v, std::int64_t lo, std::int64_t hi) {
      if (v < 0) v = std::max(v + n, lo);
      return std::min(v, hi);
    };
    std::vector<std::int64_t> out;
    if (step > 0) {
      const std::int64_t a = adjust(start, 0, n), b = adjust(stop, 0, n);
      for (std::int64_t i = a; i < b; i += step) out.push_back(i);
    } else {
      const std::int64_t a = adjust(start, -1, n - 1), b = adjust(stop, -1, n - 1);
      for (std::int64_t i = a; i > b; i += step) out.push_back(i);
    }
    return out;
  }

  detail::ObjectRef ref_;
};

/// Python's Manager().Namespace(): named attributes of any codec type. Reading an attribute as
/// another type than it was set with is a TypeMismatchError; a missing one is a KeyError
/// (Python: AttributeError).
class Namespace {
  using Core = detail::shm::DictCore;

 public:
  /// Sets attribute `attr` to v (atomically).
  template <class T>
  void set(std::string_view attr, const T& v) {
    const detail::ByteSpan key = detail::encode_into(std::string(attr), detail::scratch(0));
    Bytes& val = detail::scratch(1);
    val.clear();
    const std::uint64_t fp = type_info<T>().fingerprint;
    val.resize(8);
    std::memcpy(val.data(), &fp, 8);
    codec<T>::encode(v, val);
    detail::shm::Tx tx(arena(), ref_.deadline(), "set an attribute", &root()->seq);
    core().set(tx, key, detail::shm::hash_bytes(key.data(), key.size()), val);
    tx.commit();
  }
  //!Returns: attribute `attr` as a T. Throws: KeyError if missing, TypeMismatchError if it was
  //! set with another type.
  template <class T>
  T get(std::string_view attr) const {
    auto v = try_get<T>(attr);
    if (!v)
      detail::fail<KeyError>("Namespace '{}' of manager '{}' has no attribute '{}'", ref_.name,
                             mname(), attr);
    return std::move(*v);
  }
  /// Attribute `attr`, or `def` if missing. Throws: TypeMismatchError.
  template <class T>
  T get(std::string_view attr, const T& def) const {
    auto v = try_get<T>(attr);
    return v ? std::move(*v) : def;
  }
  /// True if attribute `attr` is set.
  bool contains(std::string_view attr) const {
    const detail::ByteSpan key = detail::encode_into(std::string(attr), detail::scratch(0));
    const std::uint64_t h = detail::shm::hash_bytes(key.data(), key.size());
    return read([&] { return core().find(key, h).has_value(); });
  }
  /// Removes attribute `attr` (Python's `del ns.attr`); false if it was missing.
  bool erase(std::string_view attr) {
    const detail::ByteSpan key = detail::encode_into(std::string(attr), detail::scratch(0));
    const std::uint64_t h = detail::shm::hash_bytes(key.data(), key.size());
    detail::shm::Tx tx(arena(), ref_.deadline(), "delete an attribute", &root()->seq);
    auto hit = core().find(key, h);
    if (!hit) return false;
    core().erase(tx, *hit);
    tx.commit();
    return true;
  }
  /// The attribute names, in the order they were first set.
  std::vector<std::string> names() const {
    return read([&] {
      std::vector<std::string> out;
      core().for_each([&](detail::ByteSpan k, detail::ByteSpan) {
        out.push_back(mpp::decode<std::string>(k));
      });
      return out;
    });
  }
  /// The Namespace's name inside its manager.
  const std::string& name() const noexcept { return ref_.name; }
  /// The name of the manager that holds it.
  const std::string& manager_name() const noexcept { return ref_.core->name(); }

 private:
  friend class Manager;
  explicit Namespace(detail::ObjectRef ref) : ref_(std::move(ref)) {}

  detail::shm::Arena& arena() const noexcept { return ref_.arena(); }
  Core core() const noexcept { return Core(&ref_.arena(), ref_.root); }
  detail::shm::DictRoot* root() const { return core().root(); }
  const std::string& mname() const noexcept { return ref_.core->name(); }
  template <class F>
  auto read(F&& f) const -> decltype(f()) {
    return detail::shm::seq_read(arena(), root()->seq, ref_.deadline(), "read", f);
  }

  template <class T>
  std::optional<T> try_get(std::string_view attr) const {
    const detail::ByteSpan key = detail::encode_into(std::string(attr), detail::scratch(0));
    const std::uint64_t h = detail::shm::hash_bytes(key.data(), key.size());
    std::uint64_t stored = 0;
    auto v = read([&]() -> std::optional<T> {
      stored = 0;
      auto hit = core().find(key, h);
      if (!hit) return std::nullopt;
      if (hit->value.size() < 8) detail::shm::torn(arena(), "Namespace attribute");
      std::memcpy(&stored, hit->value.data(), 8);
      if (stored != type_info<T>().fingerprint) return std::nullopt;
      return mpp::decode<T>(hit->value.subspan(8));
    });
    if (!v && stored != 0 && stored != type_info<T>().fingerprint)
      detail::fail<TypeMismatchError>(
          "attribute '{}' of Namespace '{}' (manager '{}') holds another type "
          "than '{}'",
          attr, ref_.name, mname(), type_info<T>().name);
    return v;
  }

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
  SharedDict<K, V> dict(std::string_view name) {
    return SharedDict<K, V>(
        object(name, detail::ObjectKind::dict, dict_type<K, V>(),
               [](detail::shm::Tx& tx) { return detail::shm::DictCore::create(tx); }));
  }
  /// A new dict with a generated name (Python's m.dict()); share it by copying the handle.
  template <class K, class V>
  SharedDict<K, V> dict() {
    return dict<K, V>(auto_name("dict"));
  }
  //!Returns: the list `name`, creating it empty if it does not exist. Throws: as dict().
  template <class T>
  SharedList<T> list(std::string_view name) {
    return SharedList<T>(
        object(name, detail::ObjectKind::list, type_info<T>().fingerprint,
               [](detail::shm::Tx& tx) { return detail::shm::ListCore::create(tx); }));
  }
  /// A new list with a generated name (Python's m.list()).
  template <class T>
  SharedList<T> list() {
    return list<T>(auto_name("list"));
  }
  //!Returns: the Namespace `name`, creating it empty if it does not exist. Throws: as dict().
  ::mpp::Namespace Namespace(std::string_view name) {
    return ::mpp::Namespace(
        object(name, detail::ObjectKind::ns, 0x6e616d65ull,
               [](detail::shm::Tx& tx) { return detail::shm::DictCore::create(tx); }));
  }
  /// A new Namespace with a generated name (Python's m.Namespace()).
  ::mpp::Namespace Namespace() { return Namespace(auto_name("ns")); }

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
  Manager(detail::Segment seg, const ManagerOptions& opts)
      : core_(std::make_shared<detail::ManagerCore>()) {
    core_->seg = std::make_shared<detail::Segment>(std::move(seg));
    const detail::Segment& s = *core_->seg;
    const auto* file = reinterpret_cast<const std::byte*>(&s.header());
    const auto file_end = static_cast<std::uint64_t>(s.payload() - file) + s.payload_size();
    // Every mapping of this segment computes the same identity (its creator and creation time):
    // how a thread that holds the lock recognises the manager when a decode reopens it.
    const std::uint64_t id =
        detail::shm::fmix64(s.header().creator.load(std::memory_order_relaxed) ^
                            detail::shm::fmix64(s.header().created_unix_ms)) |
        1;
    core_->arena = detail::shm::Arena(s.payload(), s.payload_size(), s.name(), file_end, id);
    core_->timeout = opts.timeout;
    core_->arena.validate();
  }

  static detail::SegmentSpec spec(const ManagerOptions& opts) {
    detail::SegmentSpec s{Kind::manager, TypeInfo::none(), opts.capacity, 0};
    // Backed at creation: the arena header and the first part of the undo log; the rest of the
    // log and the heap are populated as they are reached (1 GiB by default).
    s.reserve = std::min(opts.capacity, detail::shm::Arena::reserved_bytes());
    return s;
  }
  static void format(std::byte* p, std::uint64_t size) { detail::shm::Arena::format(p, size); }

  template <class K, class V>
  static std::uint64_t dict_type() noexcept {
    return (type_info<K>().fingerprint * 1099511628211ull) ^ type_info<V>().fingerprint;
  }

  std::string auto_name(std::string_view kind) {
    auto& a = core_->arena;
    detail::shm::Tx tx(a, core_->deadline(), "name a container");
    const std::uint64_t n = a.header()->next_auto;
    tx.put(&a.header()->next_auto, n + 1);
    tx.commit();
    return fmt::format("{}#{}", kind, n);
  }

  template <class Make>
  detail::ObjectRef object(std::string_view name, detail::ObjectKind kind, std::uint64_t type,
                           Make&& make) {
    if (name.empty() || name.size() >= detail::shm::kObjectNameCapacity)
      detail::fail<InvalidArgument>("container name '{}' must have 1 to {} characters", name,
                                    detail::shm::kObjectNameCapacity - 1);
    for (char c : name)
      if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
            c == '.' || c == '_' || c == '-' || c == '#'))
        detail::fail<InvalidArgument>(
            "container name '{}': character {:?} is not allowed (use letters, "
            "digits, '.', '_' and '-')",
            name, c);
    auto& a = core_->arena;
    auto* h = a.header();
    if (a.held_by_this_thread()) {
      // A decode under this manager's lock (a container of containers read, sorted or updated)
      // reopens it: the directory cannot change while we hold the lock, so look it up directly.
      if (auto root = find_object(name, kind, type))
        return detail::ObjectRef{core_, *root, std::string(name)};
      detail::fail<Error>(
          "manager '{}': cannot create container '{}' while this thread holds the "
          "manager's lock (inside update_with() or a decode); create it first",
          this->name(), name);
    }
    detail::shm::Tx tx(a, core_->deadline(), "create a container");
    if (auto root = find_object(name, kind, type)) {
      tx.commit();
      return detail::ObjectRef{core_, *root, std::string(name)};
    }
    const std::uint64_t n = detail::shm::racy_load(&h->dir_count);
    if (n >= detail::shm::kMaxObjects)
      detail::fail<Error>(
          "manager '{}' already holds {} containers, the limit; reuse existing ones", this->name(),
          detail::shm::kMaxObjects);
    const std::uint64_t root = make(tx);
    detail::shm::DirEntry de{};
    std::memcpy(de.name, name.data(), name.size());
    de.kind = static_cast<std::uint32_t>(kind);
    de.type = type;
    de.root = root;
    tx.put(&h->dir[n], de);
    tx.put(&h->dir_count, n + 1);
    tx.commit();
    return detail::ObjectRef{core_, root, std::string(name)};
  }

  // The root of container `name` if it exists (called with the lock held). Throws:
  // TypeMismatchError for another kind or type, CorruptedError for a damaged directory.
  std::optional<std::uint64_t> find_object(std::string_view name, detail::ObjectKind kind,
                                           std::uint64_t type) const {
    auto& a = core_->arena;
    const auto* h = a.header();
    const std::uint64_t n = detail::shm::racy_load(&h->dir_count);
    if (n > detail::shm::kMaxObjects) a.corrupted(fmt::format("directory count {} is invalid", n));
    for (std::uint64_t i = 0; i < n; ++i) {
      detail::shm::DirEntry e;  // one copy, checked and used (a peer may write the directory)
      std::memcpy(static_cast<void*>(&e), &h->dir[i], sizeof e);
      if (std::memchr(e.name, '\0', sizeof e.name) == nullptr)
        a.corrupted("unterminated container name");
      if (std::string_view(e.name) != name) continue;
      if (e.kind != static_cast<std::uint32_t>(kind))
        detail::fail<TypeMismatchError>("'{}' in manager '{}' is a {}, not a {}", name,
                                        this->name(), detail::object_kind_name(e.kind),
                                        detail::object_kind_name(static_cast<std::uint32_t>(kind)));
      if (e.type != type)
        detail::fail<TypeMismatchError>(
            "{} '{}' in manager '{}' was created with other element types",
            detail::object_kind_name(e.kind), name, this->name());
      return e.root;
    }
    return std::nullopt;
  }

  std::shared_ptr<detail::ManagerCore> core_;
};

/// A Manager crosses processes as its name (as Python pickles a manager's address).
template <>
struct codec<Manager> : detail::NameCodec<Manager> {};

namespace detail {
/// How a manager container crosses processes: as (manager name, container name); the receiver
/// opens the manager, then the container with `Open`.
template <class H, class Open>
struct ContainerName {
  using name_type = std::pair<std::string, std::string>;
  static name_type name_of(const H& h) { return {h.manager_name(), h.name()}; }
  static H open(const name_type& n) {
    auto mgr = Manager::open(n.first);
    return Open{}(mgr, n.second);
  }
};
template <class K, class V>
struct OpenDict {
  SharedDict<K, V> operator()(Manager& m, const std::string& c) const { return m.dict<K, V>(c); }
};
template <class T>
struct OpenList {
  SharedList<T> operator()(Manager& m, const std::string& c) const { return m.list<T>(c); }
};
struct OpenNamespace {
  ::mpp::Namespace operator()(Manager& m, const std::string& c) const { return m.Namespace(c); }
};
}  // namespace detail

/// A SharedDict crosses processes as (manager name, dict name): the receiver opens it.
template <class K, class V>
struct codec<SharedDict<K, V>>
    : detail::NameCodec<SharedDict<K, V>,
                        detail::ContainerName<SharedDict<K, V>, detail::OpenDict<K, V>>> {};
/// A SharedList crosses processes as (manager name, list name): the receiver opens it.
template <class T>
struct codec<SharedList<T>>
    : detail::NameCodec<SharedList<T>, detail::ContainerName<SharedList<T>, detail::OpenList<T>>> {
};
/// A Namespace crosses processes as (manager name, Namespace name): the receiver opens it.
template <>
struct codec<Namespace>
    : detail::NameCodec<Namespace, detail::ContainerName<Namespace, detail::OpenNamespace>> {};

}  // namespace mpp
