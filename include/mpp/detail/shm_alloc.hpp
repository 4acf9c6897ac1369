// mpp — the Manager's storage layer: an offset-based arena in one shared segment with a
// size-class allocator, a robust write lock and an undo log that makes every mutation atomic with
// respect to a writer killed at any instruction.
//
// Why not Boost.Interprocess managed memory: its segment manager takes an interprocess_mutex that
// stays locked forever when a process dies inside an allocation, and a half-done rbtree allocation
// cannot be rolled back. Here every mutation is a transaction (Tx):
//   1. take the arena's robust lock (detail::LockState); if its previous holder died, or the undo
//      log is not empty, replay the log first (recover());
//   2. before any byte of live shared memory changes, save its old bytes in the undo log
//      (Tx::log: entry written first, then `log_used` published, then the target written);
//   3. commit = `log_used = 0`, one store. A crash before it is undone by the next acquirer;
//      a crash after it leaves the complete new state.
// Writes into blocks allocated by the same transaction need no logging: rolling back the
// allocator's own (logged) words returns those blocks to the free state.
//
// Readers do not take the lock: each container has a sequence word (odd while a writer changes
// it); a reader reads optimistically with every offset bounds-checked and retries if the word
// moved (seqlock), falling back to the lock after a few failed attempts. A writer that dies leaves
// its container's word odd; recovery makes it even again (never back to its old value, so a
// reader that started before the crash cannot validate a torn read).
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <new>
#include <cstring>
#include <span>
#include <string_view>
#include <vector>

#include "../errors.hpp"
#include "config.hpp"
#include "os.hpp"
#include "sync_state.hpp"
#include "wait.hpp"

namespace mpp::detail::shm {

inline constexpr std::uint64_t kArenaMagic = 0x3161'6e65'7261'706dull;  // "mparena1"
inline constexpr std::uint32_t kArenaVersion = 4;
inline constexpr unsigned kClasses = 112;  ///< size classes (see class_size)
inline constexpr std::uint64_t kMinBlock = 16;
inline constexpr std::uint64_t kBlockHeader = 8;  ///< {u32 class, u32 user length}
inline constexpr std::uint32_t kMaxObjects = 256;  ///< named containers per manager
inline constexpr std::size_t kObjectNameCapacity = 56;
inline constexpr std::uint64_t kMinArena = std::uint64_t{1} << 20;
/// The heap's pages are allocated ahead of the bump pointer in chunks of this size: one system
/// call instead of a page fault per page, and a full /dev/shm is an error, not a SIGBUS.
inline constexpr std::uint64_t kPopulateChunk = std::uint64_t{2} << 20;

/// Thrown (inside a transaction, which then rolls back) when the arena has no room left.
class ArenaFull : public Error {
 public:
  using Error::Error;
};

/// One named container of a manager: kind, element-type fingerprint, root block.
struct DirEntry {
  char name[kObjectNameCapacity];  ///< NUL-terminated
  std::uint32_t kind;              ///< ObjectKind
  std::uint32_t reserved;
  std::uint64_t type;  ///< fingerprint of the element types
  std::uint64_t root;  ///< arena offset of the container's root block (0: free entry)
};
static_assert(sizeof(DirEntry) == 80 && std::is_standard_layout_v<DirEntry>);

/// The first bytes of an arena. Offsets are from the arena's first byte; 0 means "none".
struct ArenaHeader {
  std::uint64_t magic;
  std::uint32_t version;
  std::uint32_t header_size;
  std::uint64_t size;        ///< bytes in the arena
  std::uint64_t log_off;     ///< undo log region
  std::uint64_t log_cap;
  std::uint64_t heap_start;  ///< first block
  alignas(kCacheLine) LockState lock;  ///< serialises writers (robust)
  alignas(kCacheLine) std::atomic<std::uint64_t> log_used;  ///< bytes of undo log; 0 = committed
  std::atomic<std::uint64_t> seq_off;  ///< the sequence word the current writer made odd
  std::uint64_t populated;  ///< heap pages below this offset were allocated ahead (a hint)
  // ---- everything from here on is changed only inside transactions (logged) ----
  std::uint64_t bump;        ///< next never-used byte of the heap
  std::uint64_t next_auto;   ///< counter for anonymous container names
  std::uint64_t free_head[kClasses];
  std::uint64_t dir_count;
  DirEntry dir[kMaxObjects];
};
static_assert(std::is_standard_layout_v<ArenaHeader>);
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);

/// Header of one undo-log entry; followed by `size` saved bytes, padded to 8.
struct UndoEntry {
  std::uint64_t off;
  std::uint64_t size;
};

/// Relaxed load of a word another process may be writing (seqlock readers validate afterwards).
template <class T>
inline T racy_load(const T* p) noexcept {
  static_assert(std::is_trivially_copyable_v<T> && (sizeof(T) == 4 || sizeof(T) == 8));
  // atomic_ref, not a compiler builtin: the header must build with MSVC too. Never writes.
  return std::atomic_ref<T>(*const_cast<T*>(p)).load(std::memory_order_relaxed);
}

inline std::uint64_t fmix64(std::uint64_t h) noexcept {
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ull;
  h ^= h >> 33;
  return h;
}

/// A fast 64-bit hash of a byte string (keys are compared by their encoded bytes). Keys of at
/// most 8 bytes (integers, enums, small PODs) keep their 3 lowest bits: 8 consecutive integers
/// land in one cache line of the index (linear probing), the rest of the bits are mixed.
inline std::uint64_t hash_bytes(const std::byte* p, std::size_t n) noexcept {
  constexpr std::uint64_t k1 = 0x9E3779B97F4A7C15ull, k2 = 0xC2B2AE3D27D4EB4Full;
  if (n <= 8) {
    std::uint64_t w = 0;
    std::memcpy(&w, p, n);
    return (fmix64((w >> 3) * k1 ^ (n * k2)) & ~std::uint64_t{7}) | (w & 7);
  }
  std::uint64_t h = k1 ^ (n * k2);
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    std::uint64_t w;
    std::memcpy(&w, p + i, 8);
    h = (h ^ (w * k2)) * k1;
    h ^= h >> 29;
  }
  if (i < n) {
    std::uint64_t w = 0;
    std::memcpy(&w, p + i, n - i);
    h = (h ^ (w * k2)) * k1;
  }
  return fmix64(h);
}

/// Bytes in a block of size class `c`: 16, 32, 64, then four steps per power of two
/// (80, 96, 112, 128, 160, ...), so a block wastes at most a quarter of its size. All are
/// multiples of 16, so every block stays 16-byte aligned.
constexpr std::uint64_t class_size(unsigned c) noexcept {
  if (c < 3) return kMinBlock << c;
  const unsigned j = c - 3, k = 6 + j / 4, sub = j % 4 + 1;
  return (std::uint64_t{1} << k) + sub * (std::uint64_t{1} << (k - 2));
}
static_assert(class_size(3) == 80 && class_size(6) == 128 && class_size(7) == 160);
static_assert(class_size(kClasses - 1) > (std::uint64_t{1} << 33));

/// A view of an arena mapped in this process: bounds-checked access by offset.
class Arena {
 public:
  Arena() noexcept = default;
  Arena(std::byte* base, std::uint64_t size, std::string_view owner) noexcept
      : base_(base), size_(size), owner_(owner) {}

  //!Effects: lays out a fresh (zero-filled) arena of `size` bytes. Throws: InvalidArgument.
  static void format(std::byte* base, std::uint64_t size) {
    if (size < kMinArena)
      fail<InvalidArgument>("a manager needs at least {} bytes of capacity, got {}", kMinArena,
                            size);
    auto* h = reinterpret_cast<ArenaHeader*>(base);
    h->version = kArenaVersion;
    h->header_size = sizeof(ArenaHeader);
    h->size = size;
    h->log_off = (sizeof(ArenaHeader) + 63) / 64 * 64;
    h->log_cap = std::clamp<std::uint64_t>(size / 16, 64 * 1024, 16u << 20) / 64 * 64;
    h->heap_start = h->log_off + h->log_cap;
    h->bump = h->heap_start;
    new (&h->lock) LockState();  // a free lock is not all zeros (zeros are a truncation's mark)
    h->magic = kArenaMagic;
  }

  //!Effects: checks the header of an arena created by another process. Throws: CorruptedError.
  void validate() const {
    const auto* h = header();
    if (size_ < sizeof(ArenaHeader) || h->magic != kArenaMagic || h->version != kArenaVersion ||
        h->header_size != sizeof(ArenaHeader))
      fail<CorruptedError>("manager '{}': not a manager arena of this mpp version", owner_);
    if (h->size != size_ || h->log_off < sizeof(ArenaHeader) || h->log_cap > size_ ||
        h->log_off > size_ - h->log_cap || h->heap_start != h->log_off + h->log_cap ||
        h->heap_start > size_)
      fail<CorruptedError>("manager '{}': arena layout does not fit its {} bytes", owner_, size_);
  }

  ArenaHeader* header() const noexcept { return reinterpret_cast<ArenaHeader*>(base_); }
  std::byte* base() const noexcept { return base_; }
  std::uint64_t size() const noexcept { return size_; }
  std::string_view owner() const noexcept { return owner_; }

  /// True if [off, off + n) lies inside the arena.
  bool in_bounds(std::uint64_t off, std::uint64_t n) const noexcept {
    return off <= size_ && n <= size_ - off;
  }
  //!Returns: a pointer to [off, off + n) after a bounds check. Throws: CorruptedError.
  std::byte* at(std::uint64_t off, std::uint64_t n) const {
    if (off == 0 || !in_bounds(off, n))
      fail<CorruptedError>("manager '{}': offset {} (+{} bytes) is outside its {} bytes", owner_,
                           off, n, size_);
    return base_ + off;
  }
  template <class T>
  T* obj(std::uint64_t off) const {
    if (off % alignof(T) != 0)
      fail<CorruptedError>("manager '{}': misaligned offset {}", owner_, off);
    return reinterpret_cast<T*>(at(off, sizeof(T)));
  }
  template <class T>
  T* array(std::uint64_t off, std::uint64_t count) const {
    if (count > size_ / sizeof(T))
      fail<CorruptedError>("manager '{}': {} elements cannot fit", owner_, count);
    if (off % alignof(T) != 0)
      fail<CorruptedError>("manager '{}': misaligned offset {}", owner_, off);
    return reinterpret_cast<T*>(at(off, count * sizeof(T)));
  }
  std::uint64_t offset_of(const void* p) const noexcept {
    return static_cast<std::uint64_t>(static_cast<const std::byte*>(p) - base_);
  }

  //!Returns: the user length recorded in the block whose data starts at `p` (bounds-checked
  //! against the block's size class). Throws: CorruptedError.
  std::uint32_t block_len(std::uint64_t p) const {
    if (p < kBlockHeader) fail<CorruptedError>("manager '{}': bad block offset {}", owner_, p);
    const std::byte* h = at(p - kBlockHeader, kBlockHeader);
    std::uint32_t cls, len;
    std::memcpy(&cls, h, 4);
    len = racy_load(reinterpret_cast<const std::uint32_t*>(h + 4));
    if (cls >= kClasses || class_size(cls) - kBlockHeader < len ||
        !in_bounds(p - kBlockHeader, class_size(cls)))
      fail<CorruptedError>("manager '{}': corrupted block header at {}", owner_, p - kBlockHeader);
    return len;
  }
  /// The user bytes of a block (bounds-checked).
  std::span<const std::byte> block_bytes(std::uint64_t p) const {
    const std::uint32_t len = block_len(p);
    return {at(p, len), len};
  }

  //!Effects: takes the write lock (replaying a dead writer's undo log first). Throws:
  //! TimeoutError after `deadline`, CorruptedError if the log is invalid.
  void lock(const Deadline& deadline, std::string_view what) {
    // LockState spins briefly before it sleeps. An extra spin here was measured to lower the
    // 2-process set rate (the waiter's polling steals the lock's line from the holder).
    const LockResult r = header()->lock.acquire(deadline);
    if (r == LockResult::timeout)
      fail<TimeoutError>("manager '{}': timed out waiting for the lock to {}; another process "
                         "holds it",
                         owner_, what);
    if (r == LockResult::owner_died ||
        header()->log_used.load(std::memory_order_acquire) != 0 ||
        header()->seq_off.load(std::memory_order_acquire) != 0) {
      try {
        recover();
      } catch (...) {
        header()->lock.release();
        throw;
      }
    }
  }
  /// Releases the write lock.
  void unlock() noexcept { header()->lock.release(); }

  //!Effects: undoes the interrupted transaction of a dead writer (idempotent: a recoverer that
  //! dies too leaves the same log for the next one). Called with the lock held.
  void recover() {
    auto* h = header();
    const std::uint64_t used = h->log_used.load(std::memory_order_acquire);
    if (used != 0) {
      if (used > h->log_cap)
        fail<CorruptedError>("manager '{}': undo log length {} exceeds its {} bytes", owner_, used,
                             h->log_cap);
      replay(used);
      std::atomic_signal_fence(std::memory_order_seq_cst);
      h->log_used.store(0, std::memory_order_release);
    }
    finish_seq();
  }

  /// Replays `used` bytes of undo log, newest entry first.
  void replay(std::uint64_t used) {
    auto* h = header();
    std::vector<std::uint64_t> entries;
    std::uint64_t pos = 0;
    while (pos < used) {
      if (used - pos < sizeof(UndoEntry))
        fail<CorruptedError>("manager '{}': truncated undo log entry", owner_);
      UndoEntry e;
      std::memcpy(&e, base_ + h->log_off + pos, sizeof e);
      const std::uint64_t padded = (e.size + 7) / 8 * 8;
      if (e.size > h->log_cap || padded > used - pos - sizeof e || !loggable(e.off, e.size))
        fail<CorruptedError>("manager '{}': invalid undo log entry ({} bytes at {})", owner_,
                             e.size, e.off);
      entries.push_back(pos);
      pos += sizeof e + padded;
    }
    for (auto it = entries.rbegin(); it != entries.rend(); ++it) {
      UndoEntry e;
      std::memcpy(&e, base_ + h->log_off + *it, sizeof e);
      std::memcpy(base_ + e.off, base_ + h->log_off + *it + sizeof e, e.size);
      // A recoverer killed here leaves the log in place: the next one replays it all again.
      MPP_CRASH_POINT("manager.recover.replay");
    }
  }

  /// Makes the sequence word of an interrupted writer even again (never its old value).
  void finish_seq() {
    auto* h = header();
    const std::uint64_t so = h->seq_off.load(std::memory_order_acquire);
    if (so == 0) return;
    if (so % 8 == 0 && so >= h->heap_start && in_bounds(so, 8)) {
      auto* seq = reinterpret_cast<std::atomic<std::uint64_t>*>(base_ + so);
      const std::uint64_t s = seq->load(std::memory_order_relaxed);
      if (s & 1) seq->store(s + 1, std::memory_order_release);
    }
    h->seq_off.store(0, std::memory_order_release);
  }

  /// True if [off, off + n) is memory a transaction may change (and the log may restore).
  bool loggable(std::uint64_t off, std::uint64_t n) const noexcept {
    const auto* h = header();
    constexpr std::uint64_t lo = offsetof(ArenaHeader, bump);
    if (off >= lo && off <= sizeof(ArenaHeader) && n <= sizeof(ArenaHeader) - off) return true;
    return off >= h->heap_start && in_bounds(off, n);
  }

 private:
  std::byte* base_ = nullptr;
  std::uint64_t size_ = 0;
  std::string_view owner_;
};

/// Size class of a block holding `n` user bytes.
inline unsigned size_class(std::uint64_t n) noexcept {
  const std::uint64_t total = n + kBlockHeader;
  if (total <= 64) return total <= 16 ? 0 : total <= 32 ? 1 : 2;
  // 2^k < total <= 2^(k+1): steps of 2^(k-2) above 2^k.
  const unsigned k = static_cast<unsigned>(std::bit_width(total - 1)) - 1;
  const std::uint64_t base = std::uint64_t{1} << k, step = base >> 2;
  const std::uint64_t sub = (total - base + step - 1) / step;  // 1..4
  return 3 + (k - 6) * 4 + static_cast<unsigned>(sub - 1);
}

/// One mutation: holds the lock, logs old bytes, allocates and frees. Destroying an uncommitted
/// transaction rolls it back (so an exception leaves the arena as before).
class Tx {
 public:
  //!Effects: takes the lock (recovering a dead writer's work) and, when `seq` is not null, makes
  //! that sequence word odd so that optimistic readers of the container retry.
  Tx(Arena& a, const Deadline& deadline, std::string_view what,
     std::atomic<std::uint64_t>* seq = nullptr)
      : a_(a), h_(a.header()) {
    a_.lock(deadline, what);
    log_base_ = h_->log_off;
    if (seq != nullptr) begin_seq(seq);
  }
  Tx(const Tx&) = delete;
  Tx& operator=(const Tx&) = delete;
  ~Tx() {
    if (!done_) {
      try {
        rollback();
      } catch (...) {  // corrupted log: leave it for the next acquirer's recover()
      }
      a_.unlock();
    }
  }

  /// Makes a container's sequence word odd for the rest of this transaction (one per Tx).
  void begin_seq(std::atomic<std::uint64_t>* seq) {
    seq_ = seq;
    h_->seq_off.store(a_.offset_of(seq), std::memory_order_relaxed);
    std::atomic_signal_fence(std::memory_order_seq_cst);
    seq->store(seq->load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    // Readers must see the odd value before any change below (pairs with their acquire fence).
    std::atomic_thread_fence(std::memory_order_release);
  }

  //!Effects: saves the current bytes of [p, p + n) in the undo log. Call before changing them.
  //! Throws: ArenaFull when the log is full (the transaction then rolls back).
  void log(const void* p, std::uint64_t n) {
    const std::uint64_t off = a_.offset_of(p);
    if (!a_.loggable(off, n))
      fail<CorruptedError>("manager '{}': write outside the arena at {}", a_.owner(), off);
    const std::uint64_t padded = (n + 7) / 8 * 8;
    const std::uint64_t need = sizeof(UndoEntry) + padded;
    if (need > h_->log_cap - used_)
      fail<ArenaFull>("manager '{}': this mutation changes more than the {} bytes of undo log "
                      "allow; split it into smaller ones",
                      a_.owner(), h_->log_cap);
    std::byte* dst = a_.base() + log_base_ + used_;
    const UndoEntry e{off, n};
    std::memcpy(dst, &e, sizeof e);
    std::memcpy(dst + sizeof e, p, n);
    used_ += need;
    // Entry before length, length before the target changes (compiler order is enough: a killed
    // process's retired stores all reach memory, in program order on x86).
    h_->log_used.store(used_, std::memory_order_release);
    std::atomic_signal_fence(std::memory_order_seq_cst);
  }
  /// log() a word only once per transaction (root fields, allocator heads).
  void log_once(const void* p, std::uint64_t n) {
    for (std::size_t i = 0; i < once_n_; ++i)
      if (once_small_[i] == p) return;
    for (const void* q : once_)
      if (q == p) return;
    if (once_n_ < once_small_.size())
      once_small_[once_n_++] = p;
    else
      once_.push_back(p);
    log(p, n);
  }
  /// Logs then stores a trivially copyable value.
  template <class T>
  void put(T* p, const T& v) {
    log(p, sizeof(T));
    std::memcpy(static_cast<void*>(p), &v, sizeof(T));
  }
  /// put() logging each address at most once.
  template <class T>
  void put_once(T* p, const T& v) {
    log_once(p, sizeof(T));
    std::memcpy(static_cast<void*>(p), &v, sizeof(T));
  }

  //!Returns: the offset of a block with room for `n` user bytes (its length field set to `n`);
  //! its contents may be written without logging. Throws: ArenaFull.
  std::uint64_t alloc(std::uint64_t n) {
    const unsigned c = n > 0xffff'ff00ull ? kClasses : size_class(n);
    if (c >= kClasses || class_size(c) > a_.size())
      fail<ArenaFull>("manager '{}': an item of {} bytes is too large", a_.owner(), n);
    const std::uint64_t bs = class_size(c);
    std::uint64_t b = h_->free_head[c];
    if (b != 0) {
      if (b < h_->heap_start || b % kMinBlock != 0 || !a_.in_bounds(b, bs))
        fail<CorruptedError>("manager '{}': free list {} points outside the heap", a_.owner(), c);
      std::uint64_t next;
      std::memcpy(&next, a_.base() + b + kBlockHeader, 8);
      // The caller overwrites the link word and the length: save both.
      log(a_.base() + b, kBlockHeader + 8);
      put_once(&h_->free_head[c], next);
    } else {
      const std::uint64_t top = h_->bump;
      if (top > a_.size() || bs > a_.size() - top)
        fail<ArenaFull>("manager '{}' is full: {} bytes more do not fit in its capacity of {} "
                        "bytes; create it with a larger ManagerOptions::capacity",
                        a_.owner(), bs, a_.size());
      if (top + bs > h_->populated) populate(top + bs);
      b = top;
      put_once(&h_->bump, top + bs);
      const std::uint32_t cls = c;
      std::memcpy(a_.base() + b, &cls, 4);
    }
    const std::uint32_t len = static_cast<std::uint32_t>(n);
    std::memcpy(a_.base() + b + 4, &len, 4);
    MPP_CRASH_POINT("manager.alloc.after");
    return b + kBlockHeader;
  }

  //!Effects: frees the block at user offset `p` when the transaction commits. Deferred so that a
  //! block live at the start of the transaction is never reused (and written unlogged) by it.
  void free(std::uint64_t p) {
    if (p != 0) freed_.push_back(p);
  }

  //!Effects: returns the block at user offset `p` to its free list now (logged).
  void free_now(std::uint64_t p) {
    if (p == 0) return;
    a_.block_len(p);  // validates the header
    const std::uint64_t b = p - kBlockHeader;
    std::uint32_t c;
    std::memcpy(&c, a_.base() + b, 4);
    if (b < h_->heap_start)
      fail<CorruptedError>("manager '{}': freeing a block outside the heap", a_.owner());
    put(reinterpret_cast<std::uint64_t*>(a_.base() + p), h_->free_head[c]);
    put_once(&h_->free_head[c], b);
  }

  /// The arena.
  Arena& arena() const noexcept { return a_; }

  //!Effects: allocates the pages up to `end` (and a chunk beyond) now.
  //!Throws: ArenaFull when the system has no memory left for them.
  void populate(std::uint64_t end) {
    const std::uint64_t from = std::max(h_->populated, h_->heap_start);
    const std::uint64_t to =
        std::min(a_.size(), (end + kPopulateChunk - 1) / kPopulateChunk * kPopulateChunk);
    if (to <= from) return;
    if (const int err = os::populate_write(a_.base() + from, to - from); err != 0)
      fail<ArenaFull>("manager '{}': the system has no memory left for {} more bytes (is "
                      "/dev/shm full?); free memory or remove unused objects",
                      a_.owner(), to - from);
    h_->populated = to;  // a hint: a rollback leaves it, the pages are just ready sooner
  }

  //!Effects: makes the transaction's changes permanent (one store), ends the container's
  //! odd sequence and releases the lock.
  //! Throws: ArenaFull if the deferred frees overflow the log (then nothing was committed).
  void commit() {
    for (std::uint64_t p : freed_) free_now(p);
    freed_.clear();
    MPP_CRASH_POINT("manager.tx.before_commit");
    std::atomic_signal_fence(std::memory_order_seq_cst);
    h_->log_used.store(0, std::memory_order_release);  // the commit point
    MPP_CRASH_POINT("manager.tx.after_commit");
    end_seq();
    done_ = true;
    a_.unlock();
  }

  //!Effects: undoes every logged change (newest first); the lock stays held until destruction.
  void rollback() {
    if (used_ != 0) a_.replay(used_);
    std::atomic_signal_fence(std::memory_order_seq_cst);
    h_->log_used.store(0, std::memory_order_release);
    used_ = 0;
    once_n_ = 0;
    once_.clear();
    freed_.clear();
    end_seq();
  }

 private:
  void end_seq() noexcept {
    if (seq_ == nullptr) return;
    std::atomic_thread_fence(std::memory_order_release);
    seq_->store(seq_->load(std::memory_order_relaxed) + 1, std::memory_order_release);
    std::atomic_signal_fence(std::memory_order_seq_cst);
    h_->seq_off.store(0, std::memory_order_release);
    seq_ = nullptr;
  }

  Arena& a_;
  ArenaHeader* h_;
  std::uint64_t log_base_ = 0;
  std::uint64_t used_ = 0;
  std::array<const void*, 16> once_small_{};
  std::size_t once_n_ = 0;
  std::vector<const void*> once_;
  std::vector<std::uint64_t> freed_;
  std::atomic<std::uint64_t>* seq_ = nullptr;
  bool done_ = false;
};

/// How many optimistic attempts a reader makes before it takes the lock.
inline constexpr int kOptimisticAttempts = 4;
/// How long (iterations) a reader waits for an odd sequence word to become even per attempt.
inline constexpr int kSeqSpin = 4000;

//!Effects: runs `f()` (which only reads) without the lock, validated by the sequence word `seq`;
//! after kOptimisticAttempts failures runs it under the lock. An exception thrown by `f` while a
//! writer was active (CorruptedError from a torn read) is retried; with a stable sequence it is
//! real and propagates.
template <class F>
auto seq_read(Arena& a, const std::atomic<std::uint64_t>& seq, const Deadline& deadline,
              std::string_view what, F&& f) -> decltype(f()) {
  for (int attempt = 0; attempt < kOptimisticAttempts; ++attempt) {
    std::uint64_t s1 = seq.load(std::memory_order_acquire);
    for (int i = 0; (s1 & 1) && i < kSeqSpin; ++i) {
      os::cpu_relax();
      s1 = seq.load(std::memory_order_acquire);
    }
    if (s1 & 1) break;  // a writer is slow or dead: the lock path waits for (or repairs) it
    try {
      auto r = f();
      std::atomic_thread_fence(std::memory_order_acquire);
      if (seq.load(std::memory_order_relaxed) == s1) return r;
    } catch (...) {  // CorruptedError, or whatever a user codec throws on torn bytes
      std::atomic_thread_fence(std::memory_order_acquire);
      if (seq.load(std::memory_order_relaxed) == s1) throw;
    }
  }
  a.lock(deadline, what);
  struct Unlock {
    Arena& a;
    ~Unlock() { a.unlock(); }
  } unlock{a};
  return f();
}

}  // namespace mpp::detail::shm
