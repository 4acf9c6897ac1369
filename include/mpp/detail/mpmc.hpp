// mpp — the crash-safe multi-producer multi-consumer slot ring behind Queue, SimpleQueue and
// JoinableQueue (Core). Each slot's state word goes EMPTY -> WRITING -> FULL -> READING -> EMPTY
// of the next lap by compare-and-swap, naming the process that holds it, so a slot left by a dead
// process is repaired with one CAS; a lone producer or consumer becomes exclusive and works with
// plain stores. Items live in the slot, in its cell, or in its region of a sparse area.
// The full protocol, for readers of this file: docs/design/queue.md.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include "../errors.hpp"
#include "../segment.hpp"
#include "config.hpp"
#include "cpu.hpp"
#include "fork_hooks.hpp"
#include "liveness.hpp"
#include "os.hpp"
#include "wait.hpp"

namespace mpp::detail::mpmc {

using u64 = std::uint64_t;
using i64 = std::int64_t;

inline constexpr u64 kEmpty = 0, kWriting = 1, kFull = 2, kReading = 3, kPhaseMask = 3;
inline constexpr u64 kWaiter = 4;  ///< someone sleeps until this state changes
inline constexpr int kOwnerShift = 3;
/// owner = participant index (kIndexBits) + generation (9 bits).
inline constexpr int kIndexBits = 12;
inline constexpr u64 kOwnerMask = (u64{1} << (kIndexBits + 9)) - 1;
inline constexpr int kLapShift = kOwnerShift + kIndexBits + 9;
inline constexpr u64 kLapMask = (u64{1} << (64 - kLapShift)) - 1;  // 40 bits
/// Processes that can use one queue at the same time (one participant entry each).
inline constexpr std::uint32_t kMaxParticipants = 1u << kIndexBits;
inline constexpr std::uint32_t kGenMask = 511;
inline constexpr std::size_t kInline = 20;    // bytes stored in the slot itself
inline constexpr std::size_t kMedium = 2048;  // largest cell (bytes per slot)
inline constexpr std::uint64_t kSlotsPerPage = 4096 / 32;
inline constexpr std::uint64_t kSmallScan = 4096;  // queues this small are always scanned whole
inline constexpr std::uint64_t kHintSlack = 1024;  // how far head/tail hints may lag
inline constexpr std::uint32_t kBigFlag = 0x80000000u;  // len: the bytes are in the slot's region
inline constexpr std::uint32_t kMedFlag = 0x40000000u;  // len: the bytes are in the slot's cell
inline constexpr std::uint32_t kLenMask = 0x3fffffffu;
inline constexpr std::uint64_t kMaxItemLimit = kLenMask;
inline constexpr u64 kMagic = 0x3465756575717070ull;  // "ppqueue4"
/// Roles, indexing Header::excl and Participant::inside / busy.
inline constexpr int kProducer = 0, kConsumer = 1;
/// Threads of one process with their own Participant::busy word per role.
inline constexpr int kBusySlots = 3;

constexpr u64 make_state(u64 lap, u64 phase, u64 owner) noexcept {
  return ((lap & kLapMask) << kLapShift) | ((owner & kOwnerMask) << kOwnerShift) | phase;
}
constexpr u64 phase_of(u64 s) noexcept { return s & kPhaseMask; }
constexpr u64 lap_of(u64 s) noexcept { return s >> kLapShift; }
constexpr std::uint32_t owner_of(u64 s) noexcept {
  return static_cast<std::uint32_t>((s >> kOwnerShift) & kOwnerMask);
}
/// a - b for 40-bit laps, sign-extended (laps wrap after 2^40).
constexpr i64 lap_diff(u64 a, u64 b) noexcept {
  return static_cast<i64>(((a - b) & kLapMask) << kLapShift) >> kLapShift;
}

/// One slot: 32 bytes, two per cache line.
struct Slot {
  std::atomic<u64> state;
  std::uint32_t len;  ///< bytes of the item | kMedFlag (in the slot's cell) | kBigFlag (region)
  std::byte data[kInline];
};
static_assert(sizeof(Slot) == 32 && std::is_standard_layout_v<Slot>);

/// A process using the queue (all its handles of the queue share one Core, hence one entry).
/// `who` is its packed ProcessRef (0: free); `gen` changes whenever the entry changes hands, so
/// an owner field naming a previous holder is recognised as dead. The table of them follows the
/// fill marks (Layout::parts_offset) and is used from entry 0 up, to Header::parts_used.
struct alignas(kCacheLine) Participant {
  std::atomic<u64> who;
  std::atomic<std::uint32_t> gen;
  std::atomic<i64> held;  ///< JoinableQueue: items got and not yet task_done() by this process
  /// Per role: 1 while this process's exclusive thread runs an exclusive operation.
  std::atomic<std::uint32_t> inside[2];
  /// Per role: one word for each of this process's first kBusySlots threads that play it, odd
  /// while the thread is in a general (compare-and-swap) operation, +2 per operation (written
  /// by that thread only, with plain stores); further threads share the count busy_more
  /// (changed with locked instructions).
  std::atomic<std::uint32_t> busy[2][kBusySlots];
  std::atomic<std::uint32_t> busy_more[2];
};
static_assert(sizeof(Participant) == kCacheLine);

/// Queue flags stored in the header.
inline constexpr std::uint32_t kUnbounded = 1;

/// The start of the payload. Immutable configuration first, then each hot word on its own line.
struct Header {
  u64 magic;
  u64 capacity;   ///< slots
  i64 maxsize;    ///< as given by the creator (<= 0: unbounded)
  u64 max_item;   ///< bytes per slot region
  u64 cell_size;  ///< bytes per slot cell (a multiple of kCacheLine, at most kMedium)
  u64 slots_offset;
  u64 regions_offset;
  u64 payload_size;
  u64 parts_offset;  ///< the participant table (kMaxParticipants entries)
  std::uint32_t flags;
  alignas(kCacheLine) std::atomic<u64> tail;  ///< hint: next position to put
  alignas(kCacheLine) std::atomic<u64> head;  ///< hint: next position to get
  alignas(kCacheLine) WaitPoint not_empty;
  alignas(kCacheLine) WaitPoint not_full;
  alignas(kCacheLine) std::atomic<i64> unfinished;  ///< JoinableQueue: put() minus task_done()
  WaitPoint all_done;
  std::atomic<u64> rescued;        ///< items given back by dead readers (ever)
  std::atomic<u64> rescued_taken;  ///< of those, taken again (a hint: may lag after a crash)
  /// Per role: the token of the participant whose one thread is the only producer (consumer)
  /// and claims slots with plain stores; 0: everyone claims with compare-and-swap.
  alignas(kCacheLine) std::atomic<u64> excl[2];
  /// Participant entries ever handed out (a high-water mark, raised by CAS after the entry's
  /// page is allocated): scans stop here. Clamped to kMaxParticipants wherever it is read.
  alignas(kCacheLine) std::atomic<std::uint32_t> parts_used;
};
static_assert(std::is_standard_layout_v<Header>);

/// True if `n` is a valid cell size.
constexpr bool valid_cell_size(u64 n) noexcept {
  return n >= kCacheLine && n <= kMedium && n % kCacheLine == 0;
}

/// Layout of a queue of `capacity` slots with `cell`-byte cells and `max_item`-byte regions.
struct Layout {
  u64 slots_offset, filled_offset, parts_offset, medium_offset, regions_offset, region_stride,
      payload_size;
  static Layout of(u64 capacity, u64 max_item, u64 cell) {
    Layout l{};
    l.slots_offset = align_up(sizeof(Header), kCacheLine);
    // Per slot: how much of its cell / region the kernel has allocated (see ensure_backed()).
    l.filled_offset = align_up(l.slots_offset + capacity * sizeof(Slot), kCacheLine);
    // Allocated a page at a time as processes arrive (Core::claim_participant()).
    l.parts_offset = align_up(l.filled_offset + capacity * sizeof(std::uint32_t), 4096);
    l.medium_offset = align_up(l.parts_offset + kMaxParticipants * sizeof(Participant), 4096);
    l.regions_offset = align_up(l.medium_offset + capacity * cell, 4096);
    // One cache line more than whole pages: region i starts at a different cache set than i-1.
    l.region_stride = align_up(max_item, 4096) + kCacheLine;
    l.payload_size = l.regions_offset + capacity * l.region_stride;
    return l;
  }
};

/// Result of one attempt.
enum class Status { ok, empty, full, busy };

class Core;

/// This process's Cores, by queue (name + instance): every handle of one queue in one process
/// shares one Core, hence one mapping and one participant entry. The lock is held across
/// fork(); a forked child keeps the entries (its Cores register anew on first use there).
class CoreCache final : public ForkHook {
 public:
  std::mutex mutex;
  std::map<std::pair<std::string, std::uint64_t>, std::weak_ptr<Core>> cores;
  std::size_t sweep_at = 16;  // sweep expired entries when the map reaches this size

  void before_fork() noexcept override { mutex.lock(); }
  void after_fork_parent() noexcept override { mutex.unlock(); }
  void after_fork_child() noexcept override { mutex.unlock(); }

  static CoreCache& get() { return process_singleton<CoreCache>(); }
};

/// The byte-level queue shared by the typed front ends. Thread-safe; one per process and mapping
/// (handles share it through a shared_ptr).
class Core {
 public:
  //!Effects: creates the segment (named, or anonymous when `name` is empty) with `cell`-byte
  //! cells; open_or_create checks an existing queue's cells against `cell`.
  static std::shared_ptr<Core> create(std::string_view name, Kind kind, const TypeInfo& type,
                                      i64 maxsize, u64 max_item, u64 unbounded_capacity,
                                      const SegmentOptions& opts, bool open_existing_ok,
                                      bool anonymous, u64 cell) {
    const bool unbounded = maxsize <= 0;
    const u64 cap = unbounded ? unbounded_capacity : static_cast<u64>(maxsize);
    check_create_args(cap, max_item, cell);
    const Layout l = Layout::of(cap, max_item, cell);
    auto init = [&](std::byte* p, std::uint64_t) {
      init_header(p, name, l, cap, maxsize, max_item, cell);
    };
    const SegmentSpec spec = segment_spec(kind, type, cap, l);
    Segment seg;
    bool created = true;
    if (anonymous) {
      seg = Segment::create_anonymous(spec, init);
    } else if (open_existing_ok) {
      std::tie(seg, created) = Segment::open_or_create(name, spec, init, opts);
    } else {
      seg = Segment::create(name, spec, init, opts);
    }
    if (opts.persistent) seg.set_persistent(true);
    if (!created) return share(std::move(seg), cell);
    return share_as_creator(std::move(seg), cell);
  }

  //!Effects: opens the existing queue `name`, whose cells must be `cell` bytes.
  //!Throws: what Segment::open throws, CorruptedError.
  static std::shared_ptr<Core> open(std::string_view name, Kind kind, const TypeInfo& type,
                                    const SegmentOptions& opts, u64 cell) {
    return share(Segment::open(name, kind, type, opts), cell);
  }

  explicit Core(Segment seg) : seg_(std::move(seg)) {
    if (seg_.payload_size() < sizeof(Header))
      fail<CorruptedError>("queue '{}': payload of {} bytes is smaller than its header",
                           seg_.name(), seg_.payload_size());
    h_ = reinterpret_cast<Header*>(seg_.payload());
    // Read every configuration word once and check it against the mapping.
    const u64 magic = h_->magic, cap = h_->capacity, max_item = h_->max_item;
    const u64 cell = h_->cell_size;
    const u64 so = h_->slots_offset, ro = h_->regions_offset;
    if (magic != kMagic || cap == 0 || cap > (u64{1} << 30) || max_item < kInline ||
        max_item > kMaxItemLimit || cap != seg_.capacity() || !valid_cell_size(cell))
      fail<CorruptedError>(
          "queue '{}' has an invalid header (capacity {}, max item {}, cell {} bytes)", seg_.name(),
          cap, max_item, cell);
    const Layout l = Layout::of(cap, max_item, cell);
    if (so != l.slots_offset || ro != l.regions_offset || h_->parts_offset != l.parts_offset ||
        l.payload_size > seg_.payload_size())
      fail<CorruptedError>("queue '{}': its layout does not fit its {} bytes", seg_.name(),
                           seg_.payload_size());
    cap_ = cap;
    max_item_ = max_item;
    cell_ = cell;
    maxsize_ = h_->maxsize;
    unbounded_ = (h_->flags & kUnbounded) != 0;
    pow2_ = (cap & (cap - 1)) == 0;
    mask_ = cap - 1;
    shift_ = 0;
    while ((u64{1} << shift_) < cap) ++shift_;
    slots_ = reinterpret_cast<Slot*>(seg_.payload() + so);
    regions_ = seg_.payload() + ro;
    medium_ = seg_.payload() + l.medium_offset;
    filled_ = reinterpret_cast<std::uint32_t*>(seg_.payload() + l.filled_offset);
    parts_ = reinterpret_cast<Participant*>(seg_.payload() + l.parts_offset);
    stride_ = l.region_stride;
  }

  Core(const Core&) = delete;
  Core& operator=(const Core&) = delete;

  ~Core() {
    if (reg_pid_.load(std::memory_order_relaxed) == os::current_pid()) {
      for (int role = 0; role < 2; ++role) {
        u64 tok = token();
        if (holder_[role].load(std::memory_order_relaxed) != nullptr)
          h_->excl[role].compare_exchange_strong(tok, 0, std::memory_order_acq_rel);
      }
      u64 me = self_.pack();
      parts_[reg_idx_].who.compare_exchange_strong(me, 0, std::memory_order_acq_rel);
    }
  }

  Segment& segment() noexcept { return seg_; }
  const std::string& name() const noexcept { return seg_.name(); }
  u64 capacity() const noexcept { return cap_; }
  i64 maxsize() const noexcept { return maxsize_; }
  bool unbounded() const noexcept { return unbounded_; }
  u64 max_item() const noexcept { return max_item_; }
  /// Bytes per cell (items up to this size that do not fit in the slot live in its cell).
  u64 cell_size() const noexcept { return cell_; }
  Header& header() const noexcept { return *h_; }
  std::atomic<bool>& closed() noexcept { return closed_; }

  /// This process's owner id (registering in the participant table on first use after fork).
  std::uint32_t owner() {
    if (reg_pid_.load(std::memory_order_acquire) == os::current_pid()) return owner_;
    return register_slow();
  }
  /// This process's participant entry (after owner()).
  Participant& me() noexcept { return parts_[reg_idx_]; }
  /// Participant entries ever handed out (scans stop here).
  std::uint32_t parts_used() const noexcept {
    return std::min(h_->parts_used.load(std::memory_order_acquire), kMaxParticipants);
  }
  /// The participant entries ever handed out (free ones have `who` 0).
  std::span<const Participant> participants() const noexcept { return {parts_, parts_used()}; }

  void split(u64 pos, u64& idx, u64& lap) const noexcept {
    if (pow2_) {
      idx = pos & mask_;
      lap = pos >> shift_;
    } else {
      lap = pos / cap_;
      idx = pos - lap * cap_;
    }
  }
  Slot& slot(u64 idx) const noexcept { return slots_[idx]; }
  std::byte* region(u64 idx) const noexcept { return regions_ + idx * stride_; }
  std::byte* cell(u64 idx) const noexcept { return medium_ + idx * cell_; }
  //!Effects: asks the CPU to fetch, for writing, the first `n` bytes of the cell after slot
  //! idx's. A producer calls it while it fills slot idx's cell: the next put's copy then finds
  //! its lines here instead of taking them from the consumer's core one by one, behind the next
  //! claim's compare-and-swap (benchmarks row queue.1KiB.1p1c.throughput). Never faults.
  void prefetch_next_cell(u64 idx, u64 n) const noexcept {
    if (++idx == cap_) idx = 0;
    cpu::prefetch_for_write(cell(idx), std::min(n, cell_));
  }

  //!Effects: makes sure the kernel has allocated the first `n` bytes of slot idx's cell
  //! (`in_cell`) or region, so that a full /dev/shm is an error here, not a SIGBUS in memcpy.
  //! Called by the slot's owner only (WRITING). Throws: OSError when memory ran out.
  void ensure_backed(u64 idx, bool in_cell, std::size_t n) {
    constexpr std::uint32_t kCellDone = 0x80000000u;
    std::uint32_t& f = filled_[idx];
    const std::uint32_t have = f;
    if (in_cell ? (have & kCellDone) != 0 : (have & ~kCellDone) >= n) return;
    populate(in_cell ? cell(idx) : region(idx), in_cell ? cell_ : n, "an item");
    f = in_cell ? (have | kCellDone) : ((have & kCellDone) | static_cast<std::uint32_t>(n));
  }

  // ---- one attempt to put -------------------------------------------------------------------
  //!Effects: claims the next free position and calls write(slot, idx) in it, then publishes.
  //!Returns: ok; full (the slot holds an unread item of the previous lap) or busy (it is being
  //! read or written) with that state in `seen` and the position in `pos`.
  template <class Write>
  Status put_once(Write&& write, bool joinable, u64& seen, u64& pos) {
    const u64 me = owner();
    u64 t = h_->tail.load(std::memory_order_relaxed);
    for (int guard = 0;; ++guard) {
      u64 idx, lap;
      split(t, idx, lap);
      Slot& sl = slots_[idx];
      u64 s = sl.state.load(std::memory_order_acquire);
      const i64 d = lap_diff(lap_of(s), lap);
      if (d == 0) {
        if (phase_of(s) == kEmpty) {
          // First use of a page of slots: have it allocated now (a clear error if memory ran
          // out). Nobody writes the page's later slots before this one is claimed.
          if (lap == 0 && idx % kSlotsPerPage == 0 &&
              first_use_checked_.load(std::memory_order_relaxed) <= idx) {
            populate(&sl, std::min<u64>(kSlotsPerPage, cap_ - idx) * sizeof(Slot), "its slots");
            populate(filled_ + idx, std::min<u64>(kSlotsPerPage, cap_ - idx) * 4, "its slots");
            first_use_checked_.store(idx + 1, std::memory_order_relaxed);
          }
          if (sl.state.compare_exchange_strong(s, make_state(lap, kWriting, me),
                                               std::memory_order_acquire,
                                               std::memory_order_relaxed)) {
            h_->tail.store(t + 1, std::memory_order_relaxed);
            MPP_CRASH_POINT("queue.put.claimed");
            if (joinable) h_->unfinished.fetch_add(1, std::memory_order_seq_cst);
            MPP_CRASH_POINT("queue.put.counted");
            try {
              write(sl, idx);
            } catch (...) {  // nothing was published: drop the slot as a dead put would
              if (joinable) h_->unfinished.fetch_sub(1, std::memory_order_seq_cst);
              sl.state.store(make_state(lap + 1, kEmpty, 0), std::memory_order_release);
              if (s & kWaiter) h_->not_empty.notify_all();
              throw;
            }
            MPP_CRASH_POINT("queue.put.written");
            sl.state.store(make_state(lap, kFull, 0), std::memory_order_release);
            MPP_CRASH_POINT("queue.put.published");
            if (s & kWaiter) h_->not_empty.notify_all();
            return Status::ok;
          }
          ++lost_races();
          continue;  // lost the race for this slot (or a waiter bit appeared): look again
        }
        ++lost_races();
        ++t;  // claimed by another producer
      } else if (d > 0) {
        ++t;  // stale hint
      } else if (d == -1 && phase_of(s) != kEmpty) {
        seen = s;
        pos = t;
        return phase_of(s) == kFull ? Status::full : Status::busy;
      } else {
        fail<CorruptedError>("queue '{}': slot {} is at lap {} while the tail is at lap {}", name(),
                             idx, lap_of(s), lap & kLapMask);
      }
      if (guard > (1 << 20)) fail<CorruptedError>("queue '{}': cannot find the tail", name());
    }
  }

  // ---- one attempt to get -------------------------------------------------------------------
  //!Effects: claims the oldest item, calls read(slot, idx) (which copies it out), and frees the
  //! slot, even when read throws. Returns: ok; empty (seen = the EMPTY state at the head);
  //! busy (the head item is still being written, or the previous lap is being read).
  template <class Read>
  Status get_once(Read&& read, bool joinable, u64& seen, u64& pos) {
    const u64 me = owner();
    u64 h = h_->head.load(std::memory_order_relaxed);
    for (int guard = 0;; ++guard) {
      u64 idx, lap;
      split(h, idx, lap);
      Slot& sl = slots_[idx];
      u64 s = sl.state.load(std::memory_order_acquire);
      const i64 d = lap_diff(lap_of(s), lap);
      const u64 ph = phase_of(s);
      if (d == 0) {
        if (ph == kFull) {
          if (claim_read(sl, s, lap, me, joinable)) {
            h_->head.store(h + 1, std::memory_order_relaxed);
            consume(sl, idx, lap, s, read, joinable);
            return Status::ok;
          }
          ++lost_races();
          continue;
        }
        if (ph == kReading) {
          ++lost_races();
          ++h;
        } else {
          seen = s;
          pos = h;
          return ph == kEmpty ? Status::empty : Status::busy;
        }
      } else if (d > 0) {
        ++h;
      } else if (d == -1) {
        if (ph == kFull) {  // an item given back by a dead reader: take it, leave the head
          if (claim_read(sl, s, lap - 1, me, joinable)) {
            h_->rescued_taken.fetch_add(1, std::memory_order_acq_rel);
            consume(sl, idx, lap - 1, s, read, joinable);
            return Status::ok;
          }
          continue;
        }
        seen = s;
        pos = h;
        return ph == kEmpty ? Status::empty : Status::busy;
      } else {
        fail<CorruptedError>("queue '{}': slot {} is at lap {} while the head is at lap {}", name(),
                             idx, lap_of(s), lap & kLapMask);
      }
      if (guard > (1 << 20)) fail<CorruptedError>("queue '{}': cannot find the head", name());
    }
  }

  //!Effects: takes an item that a dead reader gave back and that now sits behind the head.
  //!Returns: true if one was taken (and read).
  template <class Read>
  bool get_rescued(Read&& read, bool joinable) {
    if (!rescued_pending()) return false;
    const u64 me = owner();
    const u64 head = h_->head.load(std::memory_order_relaxed);
    const u64 limit = scan_limit();
    for (u64 i = 0; i < limit; ++i) {
      Slot& sl = slots_[i];
      u64 s = sl.state.load(std::memory_order_acquire);
      if (phase_of(s) != kFull) continue;
      // Position of this item: is it behind the head?
      u64 hidx, hlap;
      split(head, hidx, hlap);
      const i64 d = lap_diff(lap_of(s), hlap);
      const bool behind = d < 0 || (d == 0 && i < hidx);
      if (!behind) continue;
      if (claim_read(sl, s, lap_of(s), me, joinable)) {
        h_->rescued_taken.fetch_add(1, std::memory_order_acq_rel);
        consume(sl, i, lap_of(s), s, read, joinable);
        return true;
      }
    }
    return false;
  }

  // ---- exclusive operations -------------------------------------------------------------------
  //!Effects: if this thread is the exclusive producer and the slot at the tail is free, calls
  //! write(slot, idx), publishes the slot and advances the tail, all with plain stores: with no
  //! other producer there is nothing to claim it from, and a put killed before the publish leaves
  //! the slot EMPTY (the next put writes it again), as a dead WRITING would be repaired to.
  //! Returns: false (nothing done) otherwise: use the general path.
  //! (Its polling loop is repeated in get_exclusive on purpose: shared as a helper, GCC 12 does
  //! not inline it and forced inline it slows larger items; benchmarks rows
  //! queue.8B.1p1c.throughput and queue.1KiB.1p1c.throughput.)
  template <class Write>
  bool put_exclusive(Write& write) {
    u64 t, idx, lap, s;
    for (int spin = 0;; ++spin) {
      if (!begin_exclusive(kProducer)) return false;
      t = h_->tail.load(std::memory_order_relaxed);
      split(t, idx, lap);
      s = slots_[idx].state.load(std::memory_order_acquire);
      if ((s & ~kWaiter) == make_state(lap, kEmpty, 0)) break;
      end_exclusive(kProducer);
      if (spin == kExclusivePutSpins) return false;
      os::cpu_relax();
    }
    Slot& sl = slots_[idx];
    // The first use of a page of slots goes through put_once, which has it allocated.
    if (lap == 0 && idx % kSlotsPerPage == 0 &&
        first_use_checked_.load(std::memory_order_relaxed) <= idx) {
      end_exclusive(kProducer);
      return false;
    }
    MPP_CRASH_POINT("queue.put.claimed");
    try {
      write(sl, idx);
    } catch (...) {  // nothing was published
      end_exclusive(kProducer);
      throw;
    }
    MPP_CRASH_POINT("queue.put.written");
    sl.state.store(make_state(lap, kFull, 0), std::memory_order_release);
    h_->tail.store(t + 1, std::memory_order_relaxed);
    end_exclusive(kProducer);
    MPP_CRASH_POINT("queue.put.published");
    // A sleeper's WAITER bit may have been overwritten by the publish: its count is not.
    if ((s & kWaiter) != 0 || h_->not_empty.sleepers.load(std::memory_order_relaxed) != 0)
      h_->not_empty.notify_all();
    return true;
  }

  //!Effects: if this thread is the exclusive consumer and the item at the head is there, calls
  //! read(slot, idx), then frees the slot and advances the head (even when read throws), with
  //! plain stores: a get killed before the free leaves the item FULL at the head, taken by the
  //! next get, as a dead READING would be repaired to. Returns: false (nothing done) otherwise.
  template <class Read>
  bool get_exclusive(Read& read) {
    u64 h, idx, lap, s;
    for (int spin = 0;; ++spin) {
      if (!begin_exclusive(kConsumer)) return false;
      h = h_->head.load(std::memory_order_relaxed);
      split(h, idx, lap);
      s = slots_[idx].state.load(std::memory_order_acquire);
      if ((s & ~kWaiter) == make_state(lap, kFull, 0)) break;
      end_exclusive(kConsumer);
      if (spin == kExclusiveGetSpins) return false;
      os::cpu_relax();
    }
    Slot& sl = slots_[idx];
    MPP_CRASH_POINT("queue.get.claimed");
    struct Commit {
      Core* self;
      Slot& sl;
      u64 head, lap, from;
      ~Commit() {
        MPP_CRASH_POINT("queue.get.read");
        sl.state.store(make_state(lap + 1, kEmpty, 0), std::memory_order_release);
        self->h_->head.store(head + 1, std::memory_order_relaxed);
        self->end_exclusive(kConsumer);
        MPP_CRASH_POINT("queue.get.committed");
        if ((from & kWaiter) != 0 ||
            self->h_->not_full.sleepers.load(std::memory_order_relaxed) != 0)
          self->h_->not_full.notify_all();
      }
    } commit{this, sl, h, lap, s};
    read(sl, idx);
    return true;
  }

  // ---- exclusive roles (see the top of this file) ---------------------------------------------
  static constexpr std::uint32_t kAcquireAfter = 256, kAcquireAfterMax = 1u << 20;
  /// How long an exclusive operation polls its slot before it takes the general path: a
  /// producer not at all (the general path waits until the consumers are a batch of slots
  /// ahead, instead of writing right behind them), a consumer briefly.
  static constexpr int kExclusivePutSpins = 0, kExclusiveGetSpins = 128;

  /// An address unique to the calling thread within this process.
  static const void* thread_tag() noexcept {
    thread_local const char tag = 0;
    return &tag;
  }
  /// This participant's value in Header::excl (never 0); valid after owner().
  u64 token() const noexcept { return (u64{1} << 32) | owner_; }
  /// Header::excl: the holder in it is being revoked; the role is free once excl reads 0.
  static constexpr u64 kRevoking = u64{1} << 33;

  //!Returns: true if the calling thread holds `role` and may now run one exclusive operation,
  //! which it ends with end_exclusive(role). Frees the role locally when it was revoked.
  bool begin_exclusive(int role) {
    if (holder_[role].load(std::memory_order_relaxed) != thread_tag()) return false;
    if (reg_pid_.load(std::memory_order_relaxed) != os::current_pid()) {  // a forked child
      holder_[role].store(nullptr, std::memory_order_relaxed);
      return false;
    }
    std::atomic<std::uint32_t>& inside = me().inside[role];
    inside.store(1, std::memory_order_relaxed);
    // The store above is ordered before the load below by the revoker's membarrier_all().
    std::atomic_signal_fence(std::memory_order_seq_cst);
    if (h_->excl[role].load(std::memory_order_relaxed) == token()) return true;
    inside.store(0, std::memory_order_relaxed);
    holder_[role].store(nullptr, std::memory_order_relaxed);
    back_off(role);
    return false;
  }
  void end_exclusive(int role) noexcept { me().inside[role].store(0, std::memory_order_release); }

  //!Effects: starts a general operation of `role`: marks this thread busy in it (`slot`: its
  //! Participant::busy word, or -1) and takes the role back from an exclusive holder other than
  //! this thread: marks it revoking, then waits until the holder is outside its operation, and
  //! frees the role. Pair with leave_shared().
  //!Returns: false (not entered) if `deadline` passed while a live holder stayed inside its
  //! operation (it was stopped or preempted there).
  bool enter_shared(int role, const Deadline& deadline, int& slot) {
    owner();
    slot = busy_slot(role);
    if (slot >= 0) {
      std::atomic<std::uint32_t>& b = me().busy[role][slot];
      b.store(b.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
      // Ordered before the load of excl below by the acquirer's membarrier_all().
      std::atomic_signal_fence(std::memory_order_seq_cst);
    } else {
      me().busy_more[role].fetch_add(1, std::memory_order_seq_cst);
    }
    std::atomic<u64>& excl = h_->excl[role];
    u64 e = excl.load(std::memory_order_relaxed);
    for (;;) {
      if (e == 0 || (e == token() && holder_[role].load(std::memory_order_relaxed) == thread_tag()))
        return true;
      if ((e & kRevoking) != 0) break;
      if (excl.compare_exchange_weak(e, e | kRevoking, std::memory_order_seq_cst)) {
        e |= kRevoking;
        break;
      }
    }
    // Everyone who finds the role being revoked completes the revocation (so a revoker that
    // dies midway blocks nobody): the barrier, then the holder outside its operation.
    if (!os::membarrier_all()) {
      unbusy(role, slot);
      fail<Error>(
          "queue '{}': cannot take the {} role from its exclusive holder: membarrier(2) "
          "failed in this process but worked in the holder's (a seccomp filter?)",
          name(), role == kProducer ? "producer" : "consumer");
    }
    const auto holder = static_cast<std::uint32_t>(e);
    // An index never handed out names no process: nobody to wait for.
    const std::uint32_t holder_idx = holder & (kMaxParticipants - 1);
    const std::atomic<std::uint32_t>* inside =
        holder_idx < parts_used() ? &parts_[holder_idx].inside[role] : nullptr;
    for (unsigned i = 1; inside != nullptr && inside->load(std::memory_order_acquire) != 0; ++i) {
      if (i < 64) {
        os::cpu_relax();
        continue;
      }
      const bool expired = deadline.expired();
      if (expired || i % 4096 == 64) {
        if (!owner_alive(holder)) break;  // it died inside: recovery repairs its slot
        if (expired) {
          unbusy(role, slot);
          return false;
        }
      }
      os::yield();
    }
    excl.compare_exchange_strong(e, 0, std::memory_order_seq_cst);
    return true;
  }
  //!Effects: ends a general operation; after `succeeded` ones, may make this thread the
  //! exclusive holder of `role` (never for a JoinableQueue: `may_acquire` false).
  void leave_shared(int role, int slot, bool succeeded, bool may_acquire) noexcept {
    unbusy(role, slot);
    if (succeeded && may_acquire) maybe_acquire(role);
  }

  // ---- recovery -----------------------------------------------------------------------------
  //!Returns: true if the participant `owner` (index + generation) is alive.
  bool owner_alive(std::uint32_t owner) const {
    const std::uint32_t idx = owner & (kMaxParticipants - 1), gen = owner >> kIndexBits;
    if (idx >= parts_used()) return false;  // never handed out: no process had it
    const Participant& p = parts_[idx];
    if ((p.gen.load(std::memory_order_acquire) & kGenMask) != gen) return false;
    const u64 who = p.who.load(std::memory_order_acquire);
    if (who == 0) return false;
    if (who == self_.pack() && reg_pid_.load(std::memory_order_relaxed) == os::current_pid())
      return true;
    return ProcessRef::unpack(who).alive();
  }

  //!Effects: if `s` (read from `sl`) is WRITING or READING by a dead participant, repairs it:
  //! WRITING -> EMPTY of the next lap (tombstone), READING -> FULL (delivered again).
  //!Returns: true if this call repaired it.
  bool recover(Slot& sl, u64 s) {
    const u64 ph = phase_of(s);
    if (ph != kWriting && ph != kReading) return false;
    if (owner_alive(owner_of(s))) return false;
    return repair(sl, s);
  }

  //!Effects: repairs every slot held by a dead participant. With `throttle`, a large queue is
  //! scanned at most every kPollInterval / 2 by this process (the scan reads every slot).
  //!Returns: how many were repaired.
  std::size_t recover_all(bool throttle = false) {
    if (throttle && cap_ > kSmallScan) {
      const i64 now = std::chrono::duration_cast<std::chrono::nanoseconds>(
                          std::chrono::steady_clock::now().time_since_epoch())
                          .count();
      const i64 last = last_scan_ns_.load(std::memory_order_relaxed);
      if (now - last < std::chrono::nanoseconds(kPollInterval).count() / 2) return 0;
      last_scan_ns_.store(now, std::memory_order_relaxed);
    }
    const std::uint32_t used = parts_used();
    // By participant index (used: never handed out); allocated at the first slot in flight.
    std::vector<std::int8_t> alive;  // 0 unknown, 1 alive, -1 dead
    std::vector<std::uint32_t> gens;
    std::size_t n = 0;
    const u64 limit = scan_limit();
    for (u64 i = 0; i < limit; ++i) {
      Slot& sl = slots_[i];
      const u64 s = sl.state.load(std::memory_order_acquire);
      const u64 ph = phase_of(s);
      if (ph != kWriting && ph != kReading) continue;
      if (alive.empty()) {
        alive.assign(used + 1, 0);
        gens.assign(used + 1, 0);
      }
      const std::uint32_t o = owner_of(s);
      const std::uint32_t idx = std::min(o & (kMaxParticipants - 1), used);
      if (alive[idx] == 0 || gens[idx] != o) {
        alive[idx] = owner_alive(o) ? 1 : -1;
        gens[idx] = o;
      }
      if (alive[idx] < 0 && repair(sl, s)) ++n;
    }
    return n;
  }

  //!Returns: the number of items in the queue (FULL slots): exact when nothing is in flight.
  //! A large queue is scanned only around its head and tail (where items can be) unless
  //! `full_scan` or an item given back by a dead reader may sit elsewhere.
  std::size_t count(bool* any_busy_out = nullptr, bool full_scan = false) const {
    std::size_t n = 0;
    bool busy = false;
    auto visit = [&](u64 i) {
      const u64 ph = phase_of(slots_[i].state.load(std::memory_order_acquire));
      if (ph == kFull)
        ++n;
      else if (ph != kEmpty)
        busy = true;
    };
    if (full_scan || cap_ <= kSmallScan || rescued_pending()) {
      const u64 limit = scan_limit();
      for (u64 i = 0; i < limit; ++i) visit(i);
    } else {
      // Hints lag the truth by at most the number of operations in flight.
      const u64 head = h_->head.load(std::memory_order_acquire);
      const u64 tail = h_->tail.load(std::memory_order_acquire);
      const u64 lo = head > kHintSlack ? head - kHintSlack : 0;
      const u64 hi = std::min(std::max(tail, lo) + kHintSlack, lo + cap_);
      for (u64 p = lo; p < hi; ++p) {
        u64 idx, lap;
        split(p, idx, lap);
        visit(idx);
      }
    }
    if (any_busy_out) *any_busy_out = busy;
    return n;
  }

  //!Effects: sets the WAITER bit on `s` in `sl`. Returns: false (with `s` reloaded) if the state
  //! changed meanwhile.
  static bool mark_waiter(Slot& sl, u64& s) {
    if (s & kWaiter) return true;
    const u64 want = s | kWaiter;
    if (!sl.state.compare_exchange_strong(s, want, std::memory_order_acq_rel,
                                          std::memory_order_acquire))
      return false;
    s = want;
    return true;
  }

  /// Items a dead reader gave back that nobody has taken yet (a hint).
  bool rescued_pending() const noexcept {
    return h_->rescued.load(std::memory_order_acquire) !=
           h_->rescued_taken.load(std::memory_order_acquire);
  }

  /// Slot races this thread lost to processes of its own role (a producer to a producer, a
  /// consumer to a consumer) since the queue front end last reset the count.
  static int& lost_races() noexcept {
    thread_local int n = 0;
    return n;
  }

  Slot& slot_at(u64 pos) const noexcept {
    u64 idx, lap;
    split(pos, idx, lap);
    return slots_[idx];
  }

 private:
  // The queue's cells must be `cell` bytes: the size this element type was created with.
  static std::shared_ptr<Core> checked(std::shared_ptr<Core> c, u64 cell) {
    if (c->cell_ != cell)
      fail<CorruptedError>(
          "queue '{}' has cells of {} bytes where its element type needs {} "
          "(created by another mpp version?); recreate it",
          c->name(), c->cell_, cell);
    return c;
  }

  // This thread's Participant::busy word for `role`: found, or claimed on first use; -1 when
  // kBusySlots other threads of this process have them (this one then counts in busy_more).
  int busy_slot(int role) noexcept {
    const void* tag = thread_tag();
    for (int i = 0; i < kBusySlots; ++i)
      if (busy_tag_[role][i].load(std::memory_order_relaxed) == tag) return i;
    for (int i = 0; i < kBusySlots; ++i) {
      const void* none = nullptr;
      if (busy_tag_[role][i].compare_exchange_strong(none, tag, std::memory_order_relaxed))
        return i;
    }
    return -1;
  }
  // Ends what enter_shared's announcement began (the release orders the operation first).
  void unbusy(int role, int slot) noexcept {
    if (slot < 0) {
      me().busy_more[role].fetch_sub(1, std::memory_order_seq_cst);
      return;
    }
    std::atomic<std::uint32_t>& b = me().busy[role][slot];
    b.store(b.load(std::memory_order_relaxed) + 1, std::memory_order_release);
  }
  // True if any thread (of any process) is in a general operation of `role`.
  bool anyone_busy(int role) const noexcept {
    for (const Participant& p : participants()) {
      if (p.busy_more[role].load(std::memory_order_acquire) != 0) return true;
      for (const auto& b : p.busy[role])
        if ((b.load(std::memory_order_acquire) & 1) != 0) return true;
    }
    return false;
  }

  // Counts this thread's successful general operations of `role`; after acquire_after_ of them,
  // tries to become the exclusive holder if no other process plays the role: none is in an
  // operation of it now, and none ended one since the previous try. Then takes excl if free,
  // runs membarrier_all() (so that a thread that marked itself busy before it read excl is seen)
  // and gives the role back at once if any thread is busy in it after all.
  void maybe_acquire(int role) noexcept {
    thread_local std::uint32_t streak[2] = {0, 0};
    if (++streak[role] < acquire_after_[role].load(std::memory_order_relaxed)) return;
    streak[role] = 0;
    if (h_->excl[role].load(std::memory_order_relaxed) != 0 || !os::membarrier_register()) return;
    u64 others = 0;
    const std::uint32_t used = parts_used();
    for (std::uint32_t i = 0; i < used; ++i) {
      if (i == reg_idx_) continue;
      const Participant& p = parts_[i];
      if (p.busy_more[role].load(std::memory_order_relaxed) != 0) return;
      for (const auto& b : p.busy[role]) {
        const std::uint32_t v = b.load(std::memory_order_relaxed);
        if ((v & 1) != 0) return;
        others += v / 2;
      }
    }
    if (others_ended_[role].exchange(others, std::memory_order_relaxed) != others) return;
    u64 expected = 0;
    const u64 tok = token();
    if (!h_->excl[role].compare_exchange_strong(expected, tok, std::memory_order_seq_cst)) return;
    if (!os::membarrier_all() || anyone_busy(role)) {
      expected = tok;
      h_->excl[role].compare_exchange_strong(expected, 0, std::memory_order_seq_cst);
      back_off(role);
      return;
    }
    holder_[role].store(thread_tag(), std::memory_order_relaxed);
  }

  // Another thread plays `role` too: try to become its exclusive holder half as often.
  void back_off(int role) noexcept {
    const std::uint32_t after = acquire_after_[role].load(std::memory_order_relaxed);
    acquire_after_[role].store(std::min(after * 2, kAcquireAfterMax), std::memory_order_relaxed);
  }

  bool claim_read(Slot& sl, u64& s, u64 lap, u64 me, bool joinable) {
    if (joinable) me_held().fetch_add(1, std::memory_order_seq_cst);
    if (sl.state.compare_exchange_strong(s, make_state(lap, kReading, me),
                                         std::memory_order_acquire, std::memory_order_relaxed))
      return true;
    if (joinable) me_held().fetch_sub(1, std::memory_order_seq_cst);
    return false;
  }

  template <class Read>
  void consume(Slot& sl, u64 idx, u64 lap, u64 claimed_from, Read& read, bool joinable) {
    MPP_CRASH_POINT("queue.get.claimed");
    struct Commit {
      Core* self;
      Slot& sl;
      u64 lap, from;
      bool joinable;
      bool ok = false;
      ~Commit() {
        MPP_CRASH_POINT("queue.get.read");
        sl.state.store(make_state(lap + 1, kEmpty, 0), std::memory_order_release);
        MPP_CRASH_POINT("queue.get.committed");
        if (!ok && joinable) {  // the item could not be decoded: it is gone, nothing to do
          self->me_held().fetch_sub(1, std::memory_order_seq_cst);
          self->h_->unfinished.fetch_sub(1, std::memory_order_seq_cst);
        }
        if (from & kWaiter) self->h_->not_full.notify_all();
      }
    } commit{this, sl, lap, claimed_from, joinable};
    read(sl, idx);
    commit.ok = true;
  }

  void populate(void* p, std::size_t n, const char* what) {
    const int err = os::populate_write(p, n);
    if (err == 0) return;
    const auto end = static_cast<std::uint64_t>(static_cast<std::byte*>(p) + n -
                                                reinterpret_cast<std::byte*>(&seg_.header()));
    if (os::shm_shrunk(name(), end))
      fail<CorruptedError>(
          "queue '{}' was truncated by another process: it no longer holds "
          "the {} bytes this item needs; remove it (mpp rm) and create it again",
          name(), end);
    // EFAULT (POSIX: the page fault failed) or ENOMEM (Windows: the commit limit) with the
    // object whole: no memory to back the pages.
    if (err == EFAULT || err == ENOMEM || err == ENOSPC)
      os::fail_no_space(name(), n, "; or use smaller items or a bounded queue");
    throw OSError(fmt::format("queue '{}': out of shared memory while allocating {} ({} bytes): "
                              "{} (errno {}); /dev/shm is full: free memory there, or use "
                              "smaller items or a bounded queue",
                              name(), what, n, std::strerror(err), err),
                  err);
  }

  bool repair(Slot& sl, u64 s) {
    const u64 ph = phase_of(s), lap = lap_of(s);
    u64 expected = s;
    if (ph == kWriting) {
      if (!sl.state.compare_exchange_strong(expected, make_state(lap + 1, kEmpty, 0),
                                            std::memory_order_acq_rel))
        return false;
    } else {
      // Count first: a recoverer killed in between leaves a harmless "maybe rescued" hint,
      // never an item that consumers do not know to look for behind the head.
      h_->rescued.fetch_add(1, std::memory_order_acq_rel);
      MPP_CRASH_POINT("queue.recover.counted");
      if (!sl.state.compare_exchange_strong(expected, make_state(lap, kFull, 0),
                                            std::memory_order_acq_rel)) {
        h_->rescued_taken.fetch_add(1, std::memory_order_acq_rel);
        return false;
      }
    }
    h_->not_empty.notify_all();
    h_->not_full.notify_all();
    h_->all_done.notify_all();
    return true;
  }

  std::atomic<i64>& me_held() noexcept { return parts_[reg_idx_].held; }

  // Slots that may be in use: all of them once the ring has wrapped.
  u64 scan_limit() const noexcept {
    const u64 t = h_->tail.load(std::memory_order_relaxed) + kMaxParticipants;
    return t < cap_ ? t : cap_;
  }

  std::uint32_t register_slow() {
    std::lock_guard<std::mutex> lock(reg_mutex_);
    const auto pid = os::current_pid();
    if (reg_pid_.load(std::memory_order_relaxed) == pid) return owner_;
    self_ = ProcessRef::self();
    const std::uint32_t i = claim_participant(self_.pack());
    Participant& p = parts_[i];
    p.held.store(0, std::memory_order_relaxed);
    for (int r = 0; r < 2; ++r) {
      p.inside[r].store(0, std::memory_order_relaxed);
      p.busy_more[r].store(0, std::memory_order_relaxed);
      for (auto& b : p.busy[r]) b.store(0, std::memory_order_relaxed);
    }
    const std::uint32_t g = p.gen.fetch_add(1, std::memory_order_acq_rel) + 1;
    reg_idx_ = i;
    owner_ = i | ((g & kGenMask) << kIndexBits);
    reg_pid_.store(pid, std::memory_order_release);
    return owner_;
  }

  // Claims a free participant entry below the high-water mark, else the next one above it
  // (allocating its page first: a full /dev/shm is an error here, and scans never read a page
  // that is not there), else, with the table full, the entry of a dead process.
  std::uint32_t claim_participant(u64 me) {
    constexpr std::uint32_t kPerPage = 4096 / sizeof(Participant);
    for (;;) {
      const std::uint32_t used = parts_used();
      for (std::uint32_t i = 0; i < used; ++i) {
        u64 w = parts_[i].who.load(std::memory_order_acquire);
        if (w == 0 && parts_[i].who.compare_exchange_strong(w, me, std::memory_order_acq_rel))
          return i;
      }
      if (used < kMaxParticipants) {
        if (used % kPerPage == 0)
          populate(parts_ + used, std::min(kPerPage, kMaxParticipants - used) * sizeof(Participant),
                   "an entry of its participant table");
        std::uint32_t expect = used;
        if (h_->parts_used.compare_exchange_strong(expect, used + 1, std::memory_order_acq_rel)) {
          u64 w = 0;
          if (parts_[used].who.compare_exchange_strong(w, me, std::memory_order_acq_rel))
            return used;
        }
        continue;  // another process took it: look again
      }
      // Full: reuse the entry of a process that died (the CAS fails if it changed hands).
      for (std::uint32_t i = 0; i < used; ++i) {
        u64 w = parts_[i].who.load(std::memory_order_acquire);
        if (w != 0 && !ProcessRef::unpack(w).alive() &&
            parts_[i].who.compare_exchange_strong(w, me, std::memory_order_acq_rel))
          return i;
      }
      fail<Error>("queue '{}' already has {} live processes using it; no room for another", name(),
                  kMaxParticipants);
    }
  }

  // The configuration words of the header still say what this Core read when it was made.
  void recheck() const {
    const Header& h = *h_;
    if (h.magic != kMagic || h.capacity != cap_ || h.max_item != max_item_ ||
        h.cell_size != cell_ || h.slots_offset != Layout::of(cap_, max_item_, cell_).slots_offset ||
        h.regions_offset != static_cast<u64>(regions_ - seg_.payload()) ||
        h.parts_offset != static_cast<u64>(reinterpret_cast<std::byte*>(parts_) - seg_.payload()))
      fail<CorruptedError>(
          "queue '{}' has an invalid header (capacity {}, max item {}, cell {} bytes): it was "
          "overwritten since this process opened it",
          name(), static_cast<u64>(h.capacity), static_cast<u64>(h.max_item),
          static_cast<u64>(h.cell_size));
  }

  //!Throws: InvalidArgument for a capacity, largest item or cell size out of range.
  static void check_create_args(u64 cap, u64 max_item, u64 cell) {
    if (cap == 0 || cap > (u64{1} << 30))
      fail<InvalidArgument>("queue capacity {} is out of range (1 .. 2^30 slots)", cap);
    if (max_item < kInline || max_item > kMaxItemLimit)
      fail<InvalidArgument>("max_item_size {} is out of range ({} .. {} bytes)", max_item, kInline,
                            kMaxItemLimit);
    if (!valid_cell_size(cell)) fail<InvalidArgument>("queue cell size {} is invalid", cell);
  }

  /// The segment of a new queue: sparse, its cells and regions committed by ensure_backed().
  static SegmentSpec segment_spec(Kind kind, const TypeInfo& type, u64 cap, const Layout& l) {
    SegmentSpec spec{kind, type, l.payload_size, cap};
    spec.sparse = true;
    // POSIX backs the header now (a full /dev/shm is a NoSpaceError from create), and the slots
    // a scan may read before a put reached them: the whole table of a small queue (scanned
    // whole), the first two pages of a larger one's (the 32 MiB table of an unbounded queue is
    // populated a page at a time as the ring reaches it). Participant pages are backed as
    // processes arrive.
    spec.reserve =
        cap <= kSmallScan ? l.parts_offset : l.slots_offset + 2 * kSlotsPerPage * sizeof(Slot);
    return spec;
  }

  //!Effects: commits the header, slots and fill marks of a new queue at `p` (any process may
  //! read any slot when it scans; participant entries are allocated as processes arrive) and
  //! writes its header. Throws: NoSpaceError, OSError.
  static void init_header(std::byte* p, std::string_view name, const Layout& l, u64 cap,
                          i64 maxsize, u64 max_item, u64 cell) {
    if (const int err = os::commit(p, l.parts_offset); err != 0) {
      if (err == ENOMEM)
        os::fail_no_space(name.empty() ? "(anonymous queue)" : name, l.parts_offset);
      throw OSError(fmt::format("cannot create a queue of {} slots: no memory for them", cap), err);
    }
    auto* h = new (p) Header{};
    h->capacity = cap;
    h->maxsize = maxsize;
    h->max_item = max_item;
    h->cell_size = cell;
    h->slots_offset = l.slots_offset;
    h->regions_offset = l.regions_offset;
    h->payload_size = l.payload_size;
    h->parts_offset = l.parts_offset;
    h->flags = maxsize <= 0 ? kUnbounded : 0;
    h->magic = kMagic;  // slots are zero: EMPTY at lap 0
  }

  //!Returns: the Core of a queue this handle created: the creating handle (and its copies)
  //! removes the name when it goes; handles opened later in this process share the Core and
  //! keep the mapping.
  static std::shared_ptr<Core> share_as_creator(Segment seg, u64 cell) {
    struct Creation {
      explicit Creation(std::shared_ptr<Core> c) noexcept : core(std::move(c)) {}
      Creation(const Creation&) = delete;
      Creation& operator=(const Creation&) = delete;
      ~Creation() { core->seg_.release_name(); }
      std::shared_ptr<Core> core;
    };
    auto creation = std::make_shared<Creation>(share(std::move(seg), cell));
    Core* core = creation->core.get();
    return std::shared_ptr<Core>(std::move(creation), core);
  }

  // The Core of the queue in `seg` for this process: the one its other handles of the queue
  // use, or a new one (remembered for the next). No other lock is taken under the cache's:
  // fork() takes the cache's and the attach registry's in their registration order.
  static std::shared_ptr<Core> share(Segment seg, u64 cell) {
    CoreCache& cache = CoreCache::get();
    const std::pair<std::string, std::uint64_t> key{seg.name(), seg.instance()};
    std::shared_ptr<Core> core;
    {
      std::lock_guard<std::mutex> lock(cache.mutex);
      if (const auto it = cache.cores.find(key); it != cache.cores.end()) core = it->second.lock();
    }
    if (!core) {
      auto fresh = std::make_shared<Core>(std::move(seg));
      {
        std::lock_guard<std::mutex> lock(cache.mutex);
        std::weak_ptr<Core>& slot = cache.cores[key];
        core = slot.lock();
        if (!core) {
          slot = fresh;
          core = fresh;
          if (cache.cores.size() >= cache.sweep_at) {
            std::erase_if(cache.cores, [](const auto& kv) { return kv.second.expired(); });
            cache.sweep_at = 2 * cache.cores.size() + 16;
          }
        }
      }
      if (core == fresh) return checked(std::move(core), cell);
    }  // else another handle's Core: `seg` (or `fresh`) goes, this process keeps its entry
    core->recheck();  // opening checks the header, even when the Core is already here
    {
      // Opening registers this process as a user (a forked child may share a Core it
      // inherited).
      std::lock_guard<std::mutex> lock(core->reg_mutex_);
      (void)core->seg_.attach_index();
    }
    return checked(std::move(core), cell);
  }

  Segment seg_;
  Header* h_ = nullptr;
  Slot* slots_ = nullptr;
  std::byte* regions_ = nullptr;
  std::byte* medium_ = nullptr;
  std::uint32_t* filled_ = nullptr;
  Participant* parts_ = nullptr;
  u64 cap_ = 0, max_item_ = 0, cell_ = kMedium, mask_ = 0, stride_ = 0;
  i64 maxsize_ = 0;
  unsigned shift_ = 0;
  bool pow2_ = false, unbounded_ = false;
  std::mutex reg_mutex_;
  std::atomic<os::pid_type> reg_pid_{0};
  std::uint32_t reg_idx_ = 0;
  std::uint32_t owner_ = 0;
  ProcessRef self_{};
  std::atomic<bool> closed_{false};
  std::atomic<u64> first_use_checked_{0};
  std::atomic<i64> last_scan_ns_{0};      // this process's hint (another may have done it)
  std::atomic<const void*> holder_[2]{};  // per role: thread_tag() of this process's holder
  // Per role: successful general operations a thread makes before it tries to become the
  // exclusive one; doubled each time this process's holder is revoked (2P/2C do not churn).
  std::atomic<std::uint32_t> acquire_after_[2]{kAcquireAfter, kAcquireAfter};
  std::atomic<u64> others_ended_[2]{};  // per role: other processes' ended operations, last try
  std::atomic<const void*> busy_tag_[2][kBusySlots]{};  // which thread has which busy word
};

/// One general operation of a role (Core::enter_shared / leave_shared), as a scope.
class SharedRole {
 public:
  //!Effects: enters (see Core::enter_shared); `may_acquire`: success may make this thread the
  //! role's exclusive holder.
  SharedRole(Core& c, int role, bool may_acquire, const Deadline& deadline)
      : c_(c),
        role_(role),
        may_acquire_(may_acquire),
        entered_(c.enter_shared(role, deadline, slot_)) {}
  ~SharedRole() {
    if (entered_) c_.leave_shared(role_, slot_, ok_, may_acquire_);
  }
  SharedRole(const SharedRole&) = delete;
  SharedRole& operator=(const SharedRole&) = delete;
  /// False if the deadline passed before the role could be taken from its holder.
  bool entered() const noexcept { return entered_; }
  /// The operation succeeded.
  void succeeded() noexcept { ok_ = true; }

 private:
  Core& c_;
  int role_;
  int slot_ = -1;
  bool may_acquire_;
  bool entered_;
  bool ok_ = false;
};

}  // namespace mpp::detail::mpmc
