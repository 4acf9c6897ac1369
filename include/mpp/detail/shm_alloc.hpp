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
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <new>
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
inline constexpr std::uint64_t kBlockHeader = 8;   ///< {u32 class, u32 user length}
inline constexpr std::uint32_t kMaxObjects = 256;  ///< named containers per manager
inline constexpr std::size_t kObjectNameCapacity = 56;
inline constexpr std::uint64_t kMinArena = std::uint64_t{1} << 20;
/// The heap's pages are allocated ahead of the bump pointer in chunks of this size: one system
/// call instead of a page fault per page, and a full /dev/shm is an error, not a SIGBUS.
inline constexpr std::uint64_t kPopulateChunk = std::uint64_t{2} << 20;
/// Undo log backed when a manager is created (the smallest log, and more than most transactions
/// write); a transaction that reaches beyond has the rest backed first, in steps of this size.
inline constexpr std::uint64_t kLogReserve = std::uint64_t{64} << 10;

/// Thrown (inside a transaction, which then rolls back) when the arena has no room left; users
/// catch it as the public mpp::MemoryError.
class ArenaFull : public MemoryError {
 public:
  using MemoryError::MemoryError;
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
  std::uint64_t size;     ///< bytes in the arena
  std::uint64_t log_off;  ///< undo log region
  std::uint64_t log_cap;
  std::uint64_t heap_start;                                 ///< first block
  alignas(kCacheLine) LockState lock;                       ///< serialises writers (robust)
  alignas(kCacheLine) std::atomic<std::uint64_t> log_used;  ///< bytes of undo log; 0 = committed
  std::atomic<std::uint64_t> seq_off;  ///< the sequence word the current writer made odd
  std::uint64_t populated;  ///< heap pages below this offset were allocated ahead (a hint)
  // ---- everything from here on is changed only inside transactions (logged) ----
  std::uint64_t bump;       ///< next never-used byte of the heap
  std::uint64_t next_auto;  ///< counter for anonymous container names
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

/// Identities of the arenas whose write lock the calling thread holds (see Arena::lock).
inline std::vector<std::uint64_t>& held_locks() {
  thread_local std::vector<std::uint64_t> held;
  return held;
}

/// A view of an arena mapped in this process: bounds-checked access by offset. The layout words
/// (log region, heap start) are read from shared memory once, by validate(), and used from this
/// process's copy ever after: a peer that rewrites them cannot move our writes.
class Arena {
 public:
  Arena() noexcept = default;
  //!Effects: a view of the arena at `base` (`size` bytes) of the manager `owner`. `file_end`:
  //! where the arena ends in its shared-memory object (0: unknown), to tell a truncation from
  //! other damage; `id`: an identity shared by every mapping of this arena (0: none).
  Arena(std::byte* base, std::uint64_t size, std::string_view owner, std::uint64_t file_end = 0,
        std::uint64_t id = 0) noexcept
      : base_(base), size_(size), owner_(owner), file_end_(file_end), id_(id) {}

  //!Effects: lays out a fresh (zero-filled) arena of `size` bytes. Throws: InvalidArgument.
  static void format(std::byte* base, std::uint64_t size) {
    if (size < kMinArena)
      fail<InvalidArgument>("a manager needs at least {} bytes of capacity, got {}", kMinArena,
                            size);
    auto* h = reinterpret_cast<ArenaHeader*>(base);
    h->version = kArenaVersion;
    h->header_size = sizeof(ArenaHeader);
    h->size = size;
    h->log_off = log_offset();
    h->log_cap = std::clamp<std::uint64_t>(size / 16, 64 * 1024, 16u << 20) / 64 * 64;
    h->heap_start = h->log_off + h->log_cap;
    h->bump = h->heap_start;
    new (&h->lock) LockState();  // a free lock is not all zeros (zeros are a truncation's mark)
    h->magic = kArenaMagic;
  }

  /// Where the undo log starts (after the header).
  static constexpr std::uint64_t log_offset() noexcept {
    return (sizeof(ArenaHeader) + 63) / 64 * 64;
  }
  /// Bytes a manager's segment backs at creation: the header and the first kLogReserve of the
  /// undo log (every log is at least that large).
  static constexpr std::uint64_t reserved_bytes() noexcept { return log_offset() + kLogReserve; }

  //!Effects: has the kernel back the undo log's first `end` bytes (and up to a kLogReserve step
  //! beyond) before a transaction writes them, so a full /dev/shm is an error here rather than
  //! a write that faults into memory only this process sees. Caller holds the write lock.
  //!Throws: NoSpaceError; CorruptedError if the segment was truncated under us.
  void back_log(std::uint64_t end) {
    if (end <= log_backed_) return;
    const std::uint64_t to =
        std::min(log_cap_, (end + kLogReserve - 1) / kLogReserve * kLogReserve);
    if (const int err = os::populate_write(base_ + log_off_ + log_backed_, to - log_backed_);
        err != 0) {
      if (truncated()) shrank();
      if (err == EFAULT || err == ENOMEM || err == ENOSPC)
        os::fail_no_space(owner_, to - log_backed_,
                          " (the manager's undo log for this mutation); or make smaller changes "
                          "per operation");
      throw OSError(fmt::format("manager '{}': cannot back {} bytes of its undo log: {} (errno {})",
                                owner_, to - log_backed_, std::strerror(err), err),
                    err);
    }
    log_backed_ = to;
  }

  //!Effects: checks the header of an arena created by another process and keeps its layout.
  //!Throws: CorruptedError.
  void validate() {
    if (size_ < sizeof(ArenaHeader))
      fail<CorruptedError>("manager '{}': not a manager arena of this mpp version", owner_);
    const auto* h = header();
    const std::uint64_t magic = racy_load(&h->magic), size = racy_load(&h->size),
                        log_off = racy_load(&h->log_off), log_cap = racy_load(&h->log_cap),
                        heap_start = racy_load(&h->heap_start);
    if (magic != kArenaMagic || racy_load(&h->version) != kArenaVersion ||
        racy_load(&h->header_size) != sizeof(ArenaHeader))
      corrupted("not a manager arena of this mpp version");
    if (size != size_ || log_off < sizeof(ArenaHeader) || log_off % 64 != 0 || log_cap % 64 != 0 ||
        log_cap > size_ || log_off > size_ - log_cap || heap_start != log_off + log_cap ||
        heap_start > size_)
      corrupted(fmt::format("arena layout does not fit its {} bytes", size_));
    log_off_ = log_off;
    log_cap_ = log_cap;
    heap_start_ = heap_start;
    log_backed_ = std::min(log_cap, kLogReserve);  // reserved by its creator (see reserved_bytes)
  }

  ArenaHeader* header() const noexcept { return reinterpret_cast<ArenaHeader*>(base_); }
  std::byte* base() const noexcept { return base_; }
  std::uint64_t size() const noexcept { return size_; }
  std::string_view owner() const noexcept { return owner_; }
  std::uint64_t log_off() const noexcept { return log_off_; }
  std::uint64_t log_cap() const noexcept { return log_cap_; }
  std::uint64_t heap_start() const noexcept { return heap_start_; }

  //!Effects: throws the CorruptedError for damage `what` found in this arena; a segment that
  //! shrank under this process is reported as such (its vanished pages read as zeros here).
  [[noreturn]] void corrupted(std::string_view what) const {
    if (os::mapping_faulted(base_)) shrank();
    fail<CorruptedError>(
        "manager '{}': {}: another process wrote invalid data into its shared "
        "memory, so its contents cannot be trusted; stop using it, remove it "
        "(mpp rm {}) and create it again",
        owner_, what, owner_);
  }
  //!Effects: throws the CorruptedError for a segment that another process truncated.
  [[noreturn]] void shrank() const {
    fail<CorruptedError>(
        "manager '{}' shrank while this process used it: another process "
        "truncated its shared memory (or /dev/shm ran out), so the missing part "
        "reads as zeros here and nothing written to it reaches other processes; "
        "stop using it, remove it (mpp rm {}) and create it again",
        owner_, owner_);
  }
  /// Throws the "shrank" CorruptedError if a page of this mapping vanished (one load otherwise).
  void check_mapped() const {
    if (os::mapping_faulted(base_)) [[unlikely]]
      shrank();
  }
  /// True if the shared-memory object now ends before this arena (another process truncated it).
  bool truncated() const { return file_end_ != 0 && os::shm_shrunk(owner_, file_end_); }

  /// True if [off, off + n) lies inside the arena.
  bool in_bounds(std::uint64_t off, std::uint64_t n) const noexcept {
    return off <= size_ && n <= size_ - off;
  }
  //!Returns: a pointer to [off, off + n) after a bounds check. Throws: CorruptedError.
  std::byte* at(std::uint64_t off, std::uint64_t n) const {
    if (off == 0 || !in_bounds(off, n))
      corrupted(fmt::format("offset {} (+{} bytes) is outside its {} bytes", off, n, size_));
    return base_ + off;
  }
  template <class T>
  T* obj(std::uint64_t off) const {
    if (off % alignof(T) != 0) corrupted(fmt::format("misaligned offset {}", off));
    return reinterpret_cast<T*>(at(off, sizeof(T)));
  }
  /// obj() of a block of the heap (never the header or the undo log).
  template <class T>
  T* heap_obj(std::uint64_t off) const {
    if (off < heap_start_) corrupted(fmt::format("offset {} is outside the heap", off));
    return obj<T>(off);
  }
  template <class T>
  T* array(std::uint64_t off, std::uint64_t count) const {
    if (count > size_ / sizeof(T)) corrupted(fmt::format("{} elements cannot fit", count));
    if (off % alignof(T) != 0) corrupted(fmt::format("misaligned offset {}", off));
    return reinterpret_cast<T*>(at(off, count * sizeof(T)));
  }
  std::uint64_t offset_of(const void* p) const noexcept {
    return static_cast<std::uint64_t>(static_cast<const std::byte*>(p) - base_);
  }

  /// A block's header, read once: {size class, user length}.
  struct BlockHead {
    std::uint32_t cls;
    std::uint32_t len;
  };
  //!Returns: the header of the block whose data starts at `p`, checked: the block lies in the
  //! heap and its length fits its size class. Throws: CorruptedError.
  BlockHead block_head(std::uint64_t p) const {
    if (p < heap_start_ + kBlockHeader || (p - kBlockHeader) % kMinBlock != 0)
      corrupted(fmt::format("bad block offset {}", p));
    const std::byte* h = at(p - kBlockHeader, kBlockHeader);
    const BlockHead b{racy_load(reinterpret_cast<const std::uint32_t*>(h)),
                      racy_load(reinterpret_cast<const std::uint32_t*>(h + 4))};
    if (b.cls >= kClasses || class_size(b.cls) - kBlockHeader < b.len ||
        !in_bounds(p - kBlockHeader, class_size(b.cls)))
      corrupted(fmt::format("corrupted block header at {}", p - kBlockHeader));
    return b;
  }
  //!Returns: the user length recorded in the block whose data starts at `p` (bounds-checked
  //! against the block's size class). Throws: CorruptedError.
  std::uint32_t block_len(std::uint64_t p) const { return block_head(p).len; }
  /// The user bytes of a block (bounds-checked).
  std::span<const std::byte> block_bytes(std::uint64_t p) const {
    const std::uint32_t len = block_len(p);
    return {base_ + p, len};
  }

  //!Effects: takes the write lock (replaying a dead writer's undo log first). Throws:
  //! TimeoutError after `deadline`, CorruptedError if the header or the log is invalid or the
  //! segment shrank.
  void lock(const Deadline& deadline, std::string_view what) {
    // LockState spins briefly before it sleeps. An extra spin here was measured to lower the
    // 2-process set rate (the waiter's polling steals the lock's line from the holder).
    const LockResult r = header()->lock.acquire(deadline);
    if (r == LockResult::timeout)
      fail<TimeoutError>(
          "manager '{}': timed out waiting for the lock to {}; another process "
          "holds it",
          owner_, what);
    try {
      check_header();
      // A dead holder may have left a half-done transaction: its undo log restores the state
      // before it, so the owner-died state is fully handled here and not passed on.
      if (r == LockResult::owner_died || header()->log_used.load(std::memory_order_acquire) != 0 ||
          header()->seq_off.load(std::memory_order_acquire) != 0)
        recover();
      if (id_ != 0) held_locks().push_back(id_);
    } catch (...) {
      header()->lock.release();
      throw;
    }
  }
  /// Releases the write lock.
  void unlock() noexcept {
    if (id_ != 0) {
      auto& held = held_locks();
      for (auto it = held.rbegin(); it != held.rend(); ++it)
        if (*it == id_) {
          held.erase(std::next(it).base());
          break;
        }
    }
    header()->lock.release();
  }
  /// True if the calling thread holds this arena's lock (through any mapping of it).
  bool held_by_this_thread() const {
    if (id_ == 0) return false;
    const auto& held = held_locks();
    return std::find(held.begin(), held.end(), id_) != held.end();
  }

  //!Effects: throws CorruptedError unless the layout words still read as validate() found them
  //! (a truncated segment reads as zeros; a hostile peer may rewrite them). A few loads of one
  //! cache line that only validate() and this read, so it stays shared in every cache.
  void check_header() const {
    check_mapped();
    const auto* h = header();
    if (racy_load(&h->magic) != kArenaMagic || racy_load(&h->size) != size_ ||
        racy_load(&h->log_off) != log_off_ || racy_load(&h->log_cap) != log_cap_ ||
        racy_load(&h->heap_start) != heap_start_) {
      if (truncated()) shrank();
      corrupted("its header was overwritten");
    }
  }

  //!Effects: undoes the interrupted transaction of a dead writer (idempotent: a recoverer that
  //! dies too leaves the same log for the next one). Called with the lock held.
  void recover() {
    auto* h = header();
    const std::uint64_t used = h->log_used.load(std::memory_order_acquire);
    if (used != 0) {
      if (used > log_cap_)
        corrupted(fmt::format("undo log length {} exceeds its {} bytes", used, log_cap_));
      replay(used);
      std::atomic_signal_fence(std::memory_order_seq_cst);
      h->log_used.store(0, std::memory_order_release);
    }
    finish_seq();
  }

  /// Replays `used` (<= log_cap()) bytes of undo log, newest entry first. Each entry is read
  /// once, checked, and restored from that copy (a peer writing the log meanwhile cannot move it).
  void replay(std::uint64_t used) {
    struct Saved {
      std::uint64_t pos, off, size;
    };
    std::vector<Saved> entries;
    std::uint64_t pos = 0;
    while (pos < used) {
      if (used - pos < sizeof(UndoEntry)) corrupted("truncated undo log entry");
      UndoEntry e;
      std::memcpy(&e, base_ + log_off_ + pos, sizeof e);
      const std::uint64_t padded = (e.size + 7) / 8 * 8;
      if (e.size > log_cap_ || padded > used - pos - sizeof e || !loggable(e.off, e.size))
        corrupted(fmt::format("invalid undo log entry ({} bytes at {})", e.size, e.off));
      entries.push_back({pos, e.off, e.size});
      pos += sizeof e + padded;
    }
    for (auto it = entries.rbegin(); it != entries.rend(); ++it) {
      std::memcpy(base_ + it->off, base_ + log_off_ + it->pos + sizeof(UndoEntry), it->size);
      // A recoverer killed here leaves the log in place: the next one replays it all again.
      MPP_CRASH_POINT("manager.recover.replay");
    }
  }

  /// Makes the sequence word of an interrupted writer even again (never its old value).
  void finish_seq() {
    auto* h = header();
    const std::uint64_t so = h->seq_off.load(std::memory_order_acquire);
    if (so == 0) return;
    if (so % 8 == 0 && so >= heap_start_ && in_bounds(so, 8)) {
      auto* seq = reinterpret_cast<std::atomic<std::uint64_t>*>(base_ + so);
      const std::uint64_t s = seq->load(std::memory_order_relaxed);
      if (s & 1) seq->store(s + 1, std::memory_order_release);
    }
    h->seq_off.store(0, std::memory_order_release);
  }

  /// True if [off, off + n) is memory a transaction may change (and the log may restore).
  bool loggable(std::uint64_t off, std::uint64_t n) const noexcept {
    constexpr std::uint64_t lo = offsetof(ArenaHeader, bump);
    if (off >= lo && off <= sizeof(ArenaHeader) && n <= sizeof(ArenaHeader) - off) return true;
    return off >= heap_start_ && in_bounds(off, n);
  }

 private:
  std::byte* base_ = nullptr;
  std::uint64_t size_ = 0;
  std::string_view owner_;
  std::uint64_t file_end_ = 0;
  std::uint64_t id_ = 0;
  // The layout, as validate() read and checked it (never re-read from shared memory).
  std::uint64_t log_off_ = 0;
  std::uint64_t log_cap_ = 0;
  std::uint64_t heap_start_ = 0;
  std::uint64_t log_backed_ = 0;  ///< undo log bytes known to be backed (see back_log)
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
/// transaction rolls it back (so an exception leaves the arena as before). Every word it reads
/// from shared memory is read once into a local, checked, and only the local is used.
class Tx {
 public:
  //!Effects: takes the lock (recovering a dead writer's work) and, when `seq` is not null, makes
  //! that sequence word odd so that optimistic readers of the container retry.
  Tx(Arena& a, const Deadline& deadline, std::string_view what,
     std::atomic<std::uint64_t>* seq = nullptr)
      : a_(a), h_(a.header()) {
    a_.lock(deadline, what);
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
  //! Throws: ArenaFull when the log is full, NoSpaceError when /dev/shm cannot back it (the
  //! transaction then rolls back).
  void log(const void* p, std::uint64_t n) {
    const std::uint64_t off = a_.offset_of(p);
    if (!a_.loggable(off, n)) a_.corrupted(fmt::format("write outside the arena at {}", off));
    const std::uint64_t padded = (n + 7) / 8 * 8;
    const std::uint64_t need = sizeof(UndoEntry) + padded;
    // The log's place and size are this process's validated copies, never re-read.
    if (need > a_.log_cap() - used_)
      fail<ArenaFull>(
          "manager '{}': this mutation changes more than the {} bytes of undo log "
          "allow; split it into smaller ones",
          a_.owner(), a_.log_cap());
    a_.back_log(used_ + need);
    std::byte* dst = a_.base() + a_.log_off() + used_;
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

  //!Returns: the next never-used byte of the heap, checked (16-aligned, inside the heap).
  //!Throws: CorruptedError.
  std::uint64_t top() const {
    const std::uint64_t t = racy_load(&h_->bump);
    if (t < a_.heap_start() || t > a_.size() || t % kMinBlock != 0)
      a_.corrupted(fmt::format("its allocator's top {} is outside the heap", t));
    return t;
  }

  //!Returns: the offset of a block with room for `n` user bytes (its length field set to `n`);
  //! its contents may be written without logging. Throws: ArenaFull, CorruptedError.
  std::uint64_t alloc(std::uint64_t n) {
    const unsigned c = n > 0xffff'ff00ull ? kClasses : size_class(n);
    if (c >= kClasses || class_size(c) > a_.size())
      fail<ArenaFull>("manager '{}': an item of {} bytes is too large", a_.owner(), n);
    const std::uint64_t bs = class_size(c);
    const std::uint64_t t = top();
    std::uint64_t b = racy_load(&h_->free_head[c]);
    if (b != 0) {
      // A free block was handed out before, so it lies below the top.
      if (b < a_.heap_start() || b % kMinBlock != 0 || b > t || bs > t - b)
        a_.corrupted(fmt::format("free list {} points outside the heap", c));
      if (racy_load(reinterpret_cast<const std::uint32_t*>(a_.base() + b)) != c)
        a_.corrupted(fmt::format("a block of free list {} has another size class", c));
      const std::uint64_t next =
          racy_load(reinterpret_cast<const std::uint64_t*>(a_.base() + b + kBlockHeader));
      // The caller overwrites the link word and the length: save both.
      log(a_.base() + b, kBlockHeader + 8);
      put_once(&h_->free_head[c], next);
    } else {
      if (bs > a_.size() - t)
        fail<ArenaFull>(
            "manager '{}' is full: {} bytes more do not fit in its capacity of {} "
            "bytes; create it with a larger ManagerOptions::capacity",
            a_.owner(), bs, a_.size());
      if (t + bs > racy_load(&h_->populated)) populate(t + bs);
      b = t;
      put_once(&h_->bump, t + bs);
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
  //!Throws: CorruptedError if `p` is not a block below the heap's top.
  void free_now(std::uint64_t p) {
    if (p == 0) return;
    const Arena::BlockHead bh = a_.block_head(p);  // validates the header (read once)
    const std::uint64_t b = p - kBlockHeader;
    if (b >= top() || class_size(bh.cls) > top() - b)
      a_.corrupted(fmt::format("freeing a block at {} above the heap's top", b));
    put(reinterpret_cast<std::uint64_t*>(a_.base() + p), racy_load(&h_->free_head[bh.cls]));
    put_once(&h_->free_head[bh.cls], b);
  }

  /// The arena.
  Arena& arena() const noexcept { return a_; }

  //!Effects: allocates the pages up to `end` (and a chunk beyond) now.
  //!Throws: NoSpaceError when /dev/shm has no room left for them (ArenaFull is for a full
  //! capacity); CorruptedError when the segment was truncated under us.
  void populate(std::uint64_t end) {
    const std::uint64_t from = std::max(racy_load(&h_->populated), a_.heap_start());
    const std::uint64_t to =
        std::min(a_.size(), (end + kPopulateChunk - 1) / kPopulateChunk * kPopulateChunk);
    if (to <= from) return;
    if (const int err = os::populate_write(a_.base() + from, to - from); err != 0) {
      if (a_.truncated()) a_.shrank();
      if (err == EFAULT || err == ENOMEM || err == ENOSPC)
        os::fail_no_space(a_.owner(), to - from, "; or remove unused containers and objects");
      throw OSError(
          fmt::format("manager '{}': cannot back {} more bytes of its heap: {} (errno {})",
                      a_.owner(), to - from, std::strerror(err), err),
          err);
    }
    h_->populated = to;  // a hint: a rollback leaves it, the pages are just ready sooner
  }

  //!Effects: makes the transaction's changes permanent (one store), ends the container's
  //! odd sequence and releases the lock.
  //! Throws: ArenaFull if the deferred frees overflow the log, CorruptedError if the segment
  //! shrank under this process (then nothing was committed).
  void commit() {
    for (std::uint64_t p : freed_) free_now(p);
    freed_.clear();
    // Writes to pages a truncation removed went to this process's private zero pages, and a
    // cut that zeroed the header in place freed the lock under us: commit neither.
    a_.check_header();
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
      if (seq.load(std::memory_order_relaxed) == s1) {
        a.check_mapped();  // what it read may have been zeros where pages vanished
        return r;
      }
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
  auto r = f();
  a.check_mapped();
  return r;
}

}  // namespace mpp::detail::shm
