// mpp — the Manager's containers over raw bytes (the typed wrappers are in manager.hpp).
//
// Dict: CPython's compact layout. An index table (power-of-two slots, linear probing; a slot holds
// 0 = empty, 1 = deleted, or entry number + 2) over an entries array kept in insertion order
// ({hash, kv block}; kv = 0 is a hole left by a deletion), so iteration and popitem() follow
// Python's insertion order. A kv block is {u32 key length, key bytes, value bytes}; keys compare
// by their encoded bytes. List: an array of item-block offsets.
//
// Every function that reads may run optimistically (no lock, concurrent writer): it reads shared
// words with racy_load and bounds-checks every offset and count, so a torn read throws
// CorruptedError (which shm::seq_read retries) instead of touching memory outside the arena.
// Every function that writes runs inside a Tx and logs each live byte before changing it.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <utility>
#include <vector>

#include "shm_alloc.hpp"

namespace mpp::detail::shm {

using ByteSpan = std::span<const std::byte>;

/// Root block of a dict; never moves while the manager lives.
struct DictRoot {
  std::atomic<std::uint64_t> seq;  ///< odd while a writer changes the dict
  std::uint64_t count;             ///< live items
  std::uint64_t used;              ///< entries appended so far (holes included)
  std::uint64_t ecap;              ///< entries capacity
  std::uint64_t icap;              ///< index slots (power of two)
  std::uint64_t filled;            ///< index slots not empty (live + deleted)
  std::uint64_t index_off;         ///< u64[icap]
  std::uint64_t entries_off;       ///< DictEntry[ecap]
};
static_assert(std::is_standard_layout_v<DictRoot> && sizeof(DictRoot) == 64);

/// One dict entry, in insertion order.
struct DictEntry {
  std::uint64_t hash;
  std::uint64_t kv;  ///< kv block, 0 for a hole
};

/// Root block of a list.
struct ListRoot {
  std::atomic<std::uint64_t> seq;  ///< odd while a writer changes the list
  std::uint64_t size;
  std::uint64_t cap;
  std::uint64_t arr_off;  ///< u64[cap] item blocks
};
static_assert(std::is_standard_layout_v<ListRoot> && sizeof(ListRoot) == 32);

/// An index slot: low 40 bits = 0 (empty), 1 (deleted) or entry number + 2; high 24 bits = the
/// top bits of the key's hash, so a probe skips other keys without touching their entries.
inline constexpr unsigned kSlotBits = 40;
inline constexpr std::uint64_t kSlotMask = (std::uint64_t{1} << kSlotBits) - 1;
constexpr std::uint64_t make_slot(std::uint64_t e, std::uint64_t h) noexcept {
  return (e + 2) | ((h >> kSlotBits) << kSlotBits);
}

[[noreturn]] inline void torn(const Arena& a, const char* what) {
  a.corrupted(fmt::format("inconsistent {}", what));
}

/// A dict's root fields, each read once from shared memory and checked, with its tables.
struct DictView {
  DictRoot* r;
  std::uint64_t count, used, ecap, icap, filled;
  std::uint64_t* idx;  ///< u64[icap]
  DictEntry* ent;      ///< DictEntry[ecap]
};

/// A dict's operations over encoded keys and values.
class DictCore {
 public:
  DictCore(const Arena* a, std::uint64_t root) noexcept : a_(a), root_(root) {}

  //!Effects: allocates an empty dict inside `tx`. Returns: its root offset.
  static std::uint64_t create(Tx& tx) {
    const std::uint64_t r = tx.alloc(sizeof(DictRoot));
    auto* root = tx.arena().heap_obj<DictRoot>(r);
    std::memset(static_cast<void*>(root), 0, sizeof(DictRoot));
    DictCore d(&tx.arena(), r);
    d.build(tx, root, 8, {}, false);
    return r;
  }

  DictRoot* root() const { return a_->heap_obj<DictRoot>(root_); }

  //!Returns: the root's fields and tables, each field read once and checked (a racy snapshot
  //! for optimistic readers, which validate it with the sequence word). Throws: CorruptedError.
  DictView view() const {
    DictRoot* r = root();
    DictView v{r,
               racy_load(&r->count),
               racy_load(&r->used),
               racy_load(&r->ecap),
               racy_load(&r->icap),
               racy_load(&r->filled),
               nullptr,
               nullptr};
    if (v.icap == 0 || (v.icap & (v.icap - 1)) != 0 || v.used > v.ecap || v.ecap > kSlotMask - 2 ||
        v.filled > v.icap)
      torn(*a_, "dict table");
    v.idx = a_->array<std::uint64_t>(racy_load(&r->index_off), v.icap);
    v.ent = a_->array<DictEntry>(racy_load(&r->entries_off), v.ecap);
    return v;
  }

  /// A located item.
  struct Hit {
    std::uint64_t slot;  ///< index slot
    std::uint64_t e;     ///< entry number
    std::uint64_t kv;    ///< kv block
    ByteSpan key, value;
  };

  /// Splits a kv block into key and value bytes (bounds-checked).
  std::pair<ByteSpan, ByteSpan> split(std::uint64_t kv) const {
    const ByteSpan b = a_->block_bytes(kv);
    if (b.size() < 4) torn(*a_, "dict item");
    const std::uint32_t klen = racy_load(reinterpret_cast<const std::uint32_t*>(b.data()));
    if (klen > b.size() - 4) torn(*a_, "dict item");
    return {b.subspan(4, klen), b.subspan(4 + klen)};
  }

  /// Number of live items (racy read).
  std::uint64_t size() const { return racy_load(&root()->count); }

  //!Returns: the item with key bytes `key` (hash `h`), if any.
  std::optional<Hit> find(ByteSpan key, std::uint64_t h) const { return find(view(), key, h); }

  //!Effects: calls fn(key bytes, value bytes) for each item in insertion order.
  template <class F>
  void for_each(F&& fn) const {
    const DictView v = view();
    for (std::uint64_t e = 0; e < v.used; ++e) {
      const std::uint64_t kv = racy_load(&v.ent[e].kv);
      if (kv == 0) continue;
      auto [k, val] = split(kv);
      fn(k, val);
    }
  }

  //!Effects: sets key -> value inside `tx` (in place when the encoded size is unchanged).
  //!Returns: true if the key was new.
  bool set(Tx& tx, ByteSpan key, std::uint64_t h, ByteSpan value) {
    if (auto hit = find(key, h)) {
      replace(tx, *hit, value);
      return false;
    }
    insert_new(tx, key, h, value);
    return true;
  }

  /// Replaces the value of an existing item.
  void replace(Tx& tx, const Hit& hit, ByteSpan value) {
    if (hit.value.size() == value.size()) {
      auto* dst = const_cast<std::byte*>(hit.value.data());
      if (!value.empty()) {
        tx.log(dst, value.size());
        std::memcpy(dst, value.data(), value.size());
      }
      return;
    }
    const std::uint64_t kv = make_kv(tx, hit.key, value);
    MPP_CRASH_POINT("manager.dict.replace.after_alloc");
    const DictView v = view();
    if (hit.e >= v.used) torn(*a_, "dict entry");
    tx.put(&v.ent[hit.e].kv, kv);
    tx.free(hit.kv);
  }

  /// Inserts a key known to be absent.
  void insert_new(Tx& tx, ByteSpan key, std::uint64_t h, ByteSpan value) {
    DictView v = view();
    if (v.used >= v.ecap || v.filled + 1 > v.icap / 3 * 2) {
      grow(tx, v);
      v = view();
      if (v.used >= v.ecap) torn(*a_, "dict table");
    }
    const std::uint64_t kv = make_kv(tx, key, value);
    MPP_CRASH_POINT("manager.dict.set.after_alloc");
    const std::uint64_t mask = v.icap - 1;
    std::uint64_t i = h & mask, slot = racy_load(&v.idx[i]);
    for (std::uint64_t n = 0; (slot & kSlotMask) > 1; slot = racy_load(&v.idx[i])) {
      if (++n >= v.icap) torn(*a_, "dict index (full)");
      i = (i + 1) & mask;
    }
    const bool was_empty = (slot & kSlotMask) == 0;
    const std::uint64_t e = v.used;
    // Entry `e` is past `used`: no reader looks at it and a rollback restores `used`, so it is
    // written unlogged (within one transaction a dict only grows or only shrinks).
    v.ent[e] = DictEntry{h, kv};
    MPP_CRASH_POINT("manager.dict.set.after_entry");
    tx.put(&v.idx[i], make_slot(e, h));
    MPP_CRASH_POINT("manager.dict.set.after_index");
    tx.put_once(&v.r->used, e + 1);
    tx.put_once(&v.r->count, v.count + 1);
    if (was_empty) tx.put_once(&v.r->filled, v.filled + 1);
  }

  //!Effects: removes the item `hit` inside `tx`.
  void erase(Tx& tx, const Hit& hit) {
    const DictView v = view();
    if (hit.slot >= v.icap || hit.e >= v.used || v.count == 0) torn(*a_, "dict entry");
    tx.put(&v.idx[hit.slot], std::uint64_t{1});
    MPP_CRASH_POINT("manager.dict.erase.after_index");
    tx.put(&v.ent[hit.e].kv, std::uint64_t{0});
    tx.put_once(&v.r->count, v.count - 1);
    // Trailing holes are dropped so that popitem() stays O(1) amortised.
    if (hit.e + 1 == v.used) {
      std::uint64_t u = hit.e;
      while (u > 0 && racy_load(&v.ent[u - 1].kv) == 0) --u;
      tx.put_once(&v.r->used, u);
    }
    tx.free(hit.kv);
  }

  //!Returns: the last item in insertion order (for popitem), if any.
  std::optional<Hit> last() const {
    const DictView v = view();
    for (std::uint64_t e = v.used; e > 0; --e) {
      const std::uint64_t kv = racy_load(&v.ent[e - 1].kv);
      if (kv == 0) continue;
      auto [k, val] = split(kv);
      auto hit = find(v, k, racy_load(&v.ent[e - 1].hash));
      if (!hit || hit->e != e - 1) torn(*a_, "dict index");
      return hit;
    }
    return std::nullopt;
  }

  //!Effects: empties the dict inside `tx` (fresh small tables). Returns: the kv blocks that the
  //! caller frees after the commit, in later transactions (so the log stays small).
  std::vector<std::uint64_t> clear(Tx& tx) {
    const DictView v = view();
    std::vector<std::uint64_t> blocks;
    blocks.reserve(std::min(v.count, v.used));
    for (std::uint64_t e = 0; e < v.used; ++e)
      if (const std::uint64_t kv = racy_load(&v.ent[e].kv); kv != 0) blocks.push_back(kv);
    build(tx, v.r, 8, {}, true);
    return blocks;
  }

 private:
  std::optional<Hit> find(const DictView& v, ByteSpan key, std::uint64_t h) const {
    const std::uint64_t mask = v.icap - 1;
    std::uint64_t i = h & mask;
    for (std::uint64_t n = 0; n < v.icap; ++n, i = (i + 1) & mask) {
      const std::uint64_t s = racy_load(&v.idx[i]);
      const std::uint64_t low = s & kSlotMask;
      if (low == 0) return std::nullopt;
      if (low == 1 || (s >> kSlotBits) != (h >> kSlotBits)) continue;
      const std::uint64_t e = low - 2;
      if (e >= v.used) torn(*a_, "dict index");
      if (racy_load(&v.ent[e].hash) != h) continue;
      const std::uint64_t kv = racy_load(&v.ent[e].kv);
      if (kv == 0) torn(*a_, "dict entry");
      auto [k, val] = split(kv);
      if (k.size() == key.size() && std::memcmp(k.data(), key.data(), key.size()) == 0)
        return Hit{i, e, kv, k, val};
    }
    return std::nullopt;
  }

  std::uint64_t make_kv(Tx& tx, ByteSpan key, ByteSpan value) {
    const std::uint64_t n = 4 + key.size() + value.size();
    const std::uint64_t kv = tx.alloc(n);
    std::byte* p = a_->at(kv, n);
    const auto klen = static_cast<std::uint32_t>(key.size());
    std::memcpy(p, &klen, 4);
    if (!key.empty()) std::memcpy(p + 4, key.data(), key.size());
    if (!value.empty()) std::memcpy(p + 4 + key.size(), value.data(), value.size());
    return kv;
  }

  void grow(Tx& tx, const DictView& v) {
    std::vector<DictEntry> live;
    live.reserve(std::min(v.count, v.used));
    for (std::uint64_t e = 0; e < v.used; ++e) {
      const DictEntry d{racy_load(&v.ent[e].hash), racy_load(&v.ent[e].kv)};
      if (d.kv != 0) live.push_back(d);
    }
    // Doubling: the tables of all generations add up to about twice the final ones.
    build(tx, v.r, std::max<std::uint64_t>(8, (live.size() + 1) * 2), live, true);
    MPP_CRASH_POINT("manager.dict.grow.after_build");
  }

  // New tables (allocated in this transaction, so written unlogged) for at least `usable`
  // entries, holding `live`; the root's fields are logged, the old tables freed on commit.
  void build(Tx& tx, DictRoot* r, std::uint64_t usable, const std::vector<DictEntry>& live,
             bool free_old) {
    std::uint64_t icap = 8;
    while (icap / 3 * 2 < usable) icap *= 2;
    // Entries only as many as asked for (the index's power-of-two rounding need not apply).
    const std::uint64_t ecap = std::max<std::uint64_t>(usable, live.size());
    const std::uint64_t io = tx.alloc(icap * 8), eo = tx.alloc(ecap * sizeof(DictEntry));
    auto* idx = a_->array<std::uint64_t>(io, icap);
    auto* ent = a_->array<DictEntry>(eo, ecap);
    std::memset(static_cast<void*>(idx), 0, icap * 8);
    const std::uint64_t mask = icap - 1;
    for (std::uint64_t e = 0; e < live.size(); ++e) {
      ent[e] = live[e];
      std::uint64_t i = live[e].hash & mask;
      // Bounded: the table has room (icap > usable >= live.size()) unless a peer fills it.
      for (std::uint64_t n = 0; racy_load(&idx[i]) != 0; i = (i + 1) & mask)
        if (++n >= icap) torn(*a_, "dict index (full)");
      idx[i] = make_slot(e, live[e].hash);
    }
    if (free_old) {
      tx.free(racy_load(&r->index_off));
      tx.free(racy_load(&r->entries_off));
    }
    tx.put_once(&r->index_off, io);
    tx.put_once(&r->entries_off, eo);
    tx.put_once(&r->icap, icap);
    tx.put_once(&r->ecap, ecap);
    tx.put_once(&r->used, std::uint64_t{live.size()});
    tx.put_once(&r->filled, std::uint64_t{live.size()});
    tx.put_once(&r->count, std::uint64_t{live.size()});
  }

  const Arena* a_;
  std::uint64_t root_;
};

/// A list's root fields, each read once from shared memory and checked, with its array.
struct ListView {
  ListRoot* r;
  std::uint64_t size, cap;
  std::uint64_t* arr;  ///< u64[cap] (null when cap is 0)
};

/// A list's operations over encoded items.
class ListCore {
 public:
  ListCore(const Arena* a, std::uint64_t root) noexcept : a_(a), root_(root) {}

  //!Effects: allocates an empty list inside `tx`. Returns: its root offset.
  static std::uint64_t create(Tx& tx) {
    const std::uint64_t r = tx.alloc(sizeof(ListRoot));
    auto* root = tx.arena().heap_obj<ListRoot>(r);
    std::memset(static_cast<void*>(root), 0, sizeof(ListRoot));
    return r;
  }

  ListRoot* root() const { return a_->heap_obj<ListRoot>(root_); }

  //!Returns: the root's fields and array, each field read once and checked.
  //!Throws: CorruptedError.
  ListView view() const {
    ListRoot* r = root();
    ListView v{r, racy_load(&r->size), racy_load(&r->cap), nullptr};
    if (v.size > v.cap) torn(*a_, "list");
    if (v.cap != 0) v.arr = a_->array<std::uint64_t>(racy_load(&r->arr_off), v.cap);
    return v;
  }

  /// Number of items (racy read).
  std::uint64_t size() const { return racy_load(&root()->size); }

  /// The item offsets [0, size) (bounds-checked, racy).
  std::span<const std::uint64_t> items() const {
    const ListView v = view();
    if (v.cap == 0) return {};
    return {v.arr, v.size};
  }

  /// The bytes of item `i` (checked against the size).
  ByteSpan item(std::uint64_t i) const {
    const auto it = items();
    if (i >= it.size()) torn(*a_, "list index");
    return a_->block_bytes(racy_load(&it[i]));
  }

  /// Copies `bytes` into a new item block.
  std::uint64_t make_item(Tx& tx, ByteSpan bytes) {
    const std::uint64_t p = tx.alloc(bytes.size());
    if (!bytes.empty()) std::memcpy(a_->at(p, bytes.size()), bytes.data(), bytes.size());
    return p;
  }

  /// Appends an item block.
  void push_back(Tx& tx, std::uint64_t item) {
    const ListView v = room(tx);
    // Slot `size` is past the end: a rollback restores `size` (a list only grows or only shrinks
    // within one transaction), so it is written unlogged.
    v.arr[v.size] = item;
    MPP_CRASH_POINT("manager.list.append.after_slot");
    tx.put_once(&v.r->size, v.size + 1);
  }

  /// Inserts an item block at position i (0 <= i <= size).
  void insert(Tx& tx, std::uint64_t i, std::uint64_t item) {
    const ListView v = room(tx);
    if (i > v.size) torn(*a_, "list index");
    if (i < v.size) {
      tx.log(&v.arr[i], (v.size - i) * 8);
      std::memmove(&v.arr[i + 1], &v.arr[i], (v.size - i) * 8);
    }
    MPP_CRASH_POINT("manager.list.insert.after_shift");
    v.arr[i] = item;
    tx.put_once(&v.r->size, v.size + 1);
  }

  /// Removes position i; returns its item block (freed by the caller's transaction).
  std::uint64_t erase(Tx& tx, std::uint64_t i) {
    const ListView v = view();
    if (i >= v.size) torn(*a_, "list index");
    const std::uint64_t item = racy_load(&v.arr[i]);
    if (i + 1 < v.size) {
      tx.log(&v.arr[i], (v.size - i - 1) * 8);
      std::memmove(&v.arr[i], &v.arr[i + 1], (v.size - i - 1) * 8);
    }
    MPP_CRASH_POINT("manager.list.erase.after_shift");
    tx.put_once(&v.r->size, v.size - 1);
    tx.free(item);
    return item;
  }

  /// Replaces the item block at i.
  void assign(Tx& tx, std::uint64_t i, std::uint64_t item) {
    const ListView v = view();
    if (i >= v.size) torn(*a_, "list index");
    const std::uint64_t old = racy_load(&v.arr[i]);
    tx.put(&v.arr[i], item);
    tx.free(old);
  }

  //!Effects: replaces the whole order with `order` (a permutation or subset of the current item
  //! blocks) in a new array; the old array is freed on commit.
  void reorder(Tx& tx, const std::vector<std::uint64_t>& order) {
    ListRoot* r = root();
    const std::uint64_t cap = std::max<std::uint64_t>(8, order.size());
    const std::uint64_t na = tx.alloc(cap * 8);
    if (!order.empty()) std::memcpy(a_->at(na, order.size() * 8), order.data(), order.size() * 8);
    if (const std::uint64_t old = racy_load(&r->arr_off); old != 0) tx.free(old);
    tx.put_once(&r->arr_off, na);
    tx.put_once(&r->cap, cap);
    tx.put_once(&r->size, std::uint64_t{order.size()});
  }

 private:
  // The view, after growing the array if it is full: arr[size] is then a free slot.
  ListView room(Tx& tx) {
    ListView v = view();
    if (v.size < v.cap) return v;
    const std::uint64_t cap = std::max<std::uint64_t>(8, v.cap * 2);
    const std::uint64_t na = tx.alloc(cap * 8);
    if (v.size > 0) std::memcpy(a_->at(na, v.size * 8), v.arr, v.size * 8);
    if (const std::uint64_t old = racy_load(&v.r->arr_off); old != 0) tx.free(old);
    tx.put_once(&v.r->arr_off, na);
    tx.put_once(&v.r->cap, cap);
    MPP_CRASH_POINT("manager.list.grow.after_swap");
    v = view();
    if (v.size >= v.cap) torn(*a_, "list array");
    return v;
  }

  const Arena* a_;
  std::uint64_t root_;
};

}  // namespace mpp::detail::shm
