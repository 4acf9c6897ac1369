// mpp — Queue<T>, SimpleQueue<T>, JoinableQueue<T>: Python's multiprocessing queues over a
// lock-free, crash-safe multi-producer multi-consumer ring in shared memory (detail/mpmc.hpp).
//
// Differences from Python, all in the caller's favour:
// - put() returns once the item is in shared memory: there is no feeder thread, so a process may
//   exit (or be killed) with items it put still queued and nobody deadlocks; join_thread() and
//   cancel_join_thread() exist and do nothing.
// - SIGKILL of any producer or consumer at any instruction: every put() that returned is delivered
//   exactly once; an interrupted put() at most once; an interrupted get() gives its item back; the
//   queue stays usable and nobody waits forever.
// - qsize() is exact whenever no put/get is in flight (Python's is approximate).
// Items of any Encodable type; up to 20 bytes live in the slot, up to 2 KiB in the slot's cell
// (cells fitted to the type for one trivially copyable type), larger ones (up to
// QueueOptions::max_item_size) in the slot's own region of a sparse item area.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>

#include "codec.hpp"
#include "detail/mpmc.hpp"
#include "detail/wait.hpp"
#include "errors.hpp"
#include "segment.hpp"

namespace mpp {

/// Options of a queue (all optional).
struct QueueOptions {
  /// Largest encoded item in bytes; 0 picks a size from the capacity (at most 16 MiB per slot,
  /// 8 GiB of sparse address space per queue; memory is used only where items are written).
  std::size_t max_item_size = 0;
  /// Slots reserved for an unbounded queue (maxsize <= 0): how many items it can hold at once.
  std::uint64_t unbounded_capacity = std::uint64_t{1} << 20;
  /// Keep the name when the creating handle goes away.
  bool persistent = false;
  /// How long open() waits for a queue that is still being created.
  std::chrono::milliseconds init_timeout{5000};
};

namespace detail::mpmc {

inline std::uint64_t default_max_item(std::uint64_t capacity) {
  const std::uint64_t budget = std::uint64_t{8} << 30;
  return std::clamp<std::uint64_t>(budget / capacity, 64 * 1024, 16u << 20);
}

/// Spin, then yield; checks the liveness of the slot's owner about every millisecond.
class Backoff {
 public:
  //!Returns: true when it is time for a (costly) liveness check.
  bool pause() {
    ++n_;
    if (n_ < 64) {
      os::cpu_relax();
      return false;
    }
    os::yield();
    return n_ % 512 == 0;
  }

 private:
  unsigned n_ = 0;
};

#ifndef MPP_QUEUE_POLL_SPINS
#  define MPP_QUEUE_POLL_SPINS 128
#endif
#ifndef MPP_QUEUE_POLL_YIELDS
#  define MPP_QUEUE_POLL_YIELDS 32
#endif
inline constexpr int kPollSpins = MPP_QUEUE_POLL_SPINS;
inline constexpr int kPollYields = MPP_QUEUE_POLL_YIELDS;

/// Polls `changed()` briefly, first spinning, then yielding the core (a producer and a consumer
/// often share a core: spinning would only delay the peer we wait for).
/// Returns: true as soon as changed() is true, false if it stayed false.
template <class Changed>
bool poll_briefly(Changed&& changed) {
  for (int i = 0; i < kPollSpins; ++i) {
    if (changed()) return true;
    os::cpu_relax();
  }
  for (int i = 0; i < kPollYields; ++i) {
    if (changed()) return true;
    os::yield();
  }
  return changed();
}

/// How many slot races a thread may lose to its own role before it yields its core once.
inline constexpr int kLostRacesPerYield = 16;

//!Effects: after a successful put or get, yields the core if this thread keeps losing slot
//! races to processes of its own role. When there are more processes than cores, the
//! winner of such a race usually shares no core with us but our core-mate is of the other role:
//! letting it run turns two producers (or consumers) fighting over the same cache lines into a
//! producer and a consumer streaming through them (8 B 2P/2C on 2 cores: 3.4M -> 21M items/s
//! in the VM's slow mode). Never called with a slot held.
inline void yield_if_contended() noexcept {
  int& lost = Core::lost_races();
  if (lost < kLostRacesPerYield) return;
  lost = 0;
  os::yield();
}

/// WaitPoint::wait without its spin phase (poll_briefly() ran already): announce, re-check,
/// sleep; wake at least every kPollInterval to run `check()`. `notifier` is Header::excl of the
/// role that wakes this wait point: while it has an exclusive holder, whose plain stores have no
/// fence, a membarrier_all() orders the announcement before the re-check.
/// Returns: true when ready() became true, false when `deadline` passed first.
template <class Ready, class Check>
bool sleep_on(WaitPoint& wp, const std::atomic<std::uint64_t>& notifier, Ready&& ready,
              const Deadline& deadline, Check&& check) {
  for (;;) {
    wp.sleepers.fetch_add(1, std::memory_order_seq_cst);
    if (notifier.load(std::memory_order_seq_cst) != 0) os::membarrier_all();
    const std::uint32_t s = wp.seq.load(std::memory_order_seq_cst);
    if (ready()) {
      wp.sleepers.fetch_sub(1, std::memory_order_relaxed);
      return true;
    }
    std::optional<std::chrono::nanoseconds> slice = kPollInterval;
    if (const auto left = deadline.remaining(); left && *left < *slice) slice = left;
    os::wait_on_address(wp.seq, s, slice);
    wp.sleepers.fetch_sub(1, std::memory_order_relaxed);
    if (ready()) return true;
    check();
    if (deadline.expired()) return ready();
  }
}

/// The typed operations shared by Queue, SimpleQueue and JoinableQueue.
template <class T>
class Ops {
 public:
  static constexpr bool kRaw = codec_kind<T>() == std::string_view("raw");
  /// Bytes per cell: an encoded item (of any size up to kMedium), or one fixed-size raw T
  /// rounded up to a cache line (so that consecutive 1 KiB items use consecutive 1 KiB).
  static constexpr std::uint64_t kCellSize =
      kRaw ? align_up(std::min<std::uint64_t>(sizeof(T), kMedium), kCacheLine) : kMedium;

  //!Effects: puts `item`; blocks (until `deadline`) while full. Returns: false if it timed out.
  //! An item outside the slot has its length written into the slot before its bytes are copied,
  //! while the claim has just made the slot's cache line this core's: written after the copy, it
  //! would take the line back from a consumer polling the slot meanwhile, one more cross-core
  //! round trip per item (queue.1KiB.1p1c: +10–12%, median of paired runs).
  static bool put(Core& c, const T& item, bool joinable, bool block, const Deadline& deadline) {
    check_open(c);
    if constexpr (kRaw && sizeof(T) <= kInline) {
      return put_bytes(c, joinable, block, deadline, [&](Slot& sl, std::uint64_t) {
        sl.len = sizeof(T);
        std::memcpy(sl.data, std::addressof(item), sizeof(T));
      });
    } else if constexpr (kRaw && sizeof(T) <= kMedium) {
      return put_bytes(c, joinable, block, deadline, [&](Slot& sl, std::uint64_t idx) {
        c.ensure_backed(idx, true, sizeof(T));
        sl.len = static_cast<std::uint32_t>(sizeof(T)) | kMedFlag;
        c.prefetch_next_cell(idx, sizeof(T));
        copy_cell(c.cell(idx), std::addressof(item), sizeof(T));
      });
    } else if constexpr (kRaw) {
      check_size(c, sizeof(T));
      return put_bytes(c, joinable, block, deadline, [&](Slot& sl, std::uint64_t idx) {
        c.ensure_backed(idx, false, sizeof(T));
        sl.len = static_cast<std::uint32_t>(sizeof(T)) | kBigFlag;
        std::memcpy(c.region(idx), std::addressof(item), sizeof(T));
      });
    } else {
      Bytes& buf = scratch();
      buf.clear();
      codec<T>::encode(item, buf);
      check_size(c, buf.size());
      return put_bytes(c, joinable, block, deadline, [&](Slot& sl, std::uint64_t idx) {
        const auto n = static_cast<std::uint32_t>(buf.size());
        if (n <= kInline) {
          if (n != 0) std::memcpy(sl.data, buf.data(), n);
          sl.len = n;
        } else if (n <= c.cell_size()) {
          c.ensure_backed(idx, true, n);
          sl.len = n | kMedFlag;
          c.prefetch_next_cell(idx, n);
          copy_cell(c.cell(idx), buf.data(), n);
        } else {
          c.ensure_backed(idx, false, n);
          sl.len = n | kBigFlag;
          std::memcpy(c.region(idx), buf.data(), n);
        }
      });
    }
  }

  //!Returns: the oldest item, or nullopt if none came before `deadline` (or at once, !block).
  static std::optional<T> get(Core& c, bool joinable, bool block, const Deadline& deadline) {
    std::optional<T> out;
    get_with(c, joinable, block, deadline, [&](const std::byte* p, std::uint64_t n) {
      if constexpr (kDirect) {
        alignas(T) std::byte tmp[sizeof(T)];
        std::memcpy(tmp, p, sizeof(T));
        out.emplace(*std::launder(reinterpret_cast<T*>(tmp)));
      } else {
        out.emplace(codec<T>::decode(std::span<const std::byte>(p, n)));
      }
    });
    return out;
  }

  //!Effects: like get(), but stores the item in `out` (one copy for trivially copyable T).
  //!Returns: false if no item came before `deadline`.
  static bool get_into(Core& c, T& out, bool joinable, bool block, const Deadline& deadline) {
    return get_with(c, joinable, block, deadline, [&](const std::byte* p, std::uint64_t n) {
      if constexpr (kDirect && sizeof(T) > kInline && sizeof(T) <= kMedium)
        copy_cell(static_cast<void*>(std::addressof(out)), p, sizeof(T));
      else if constexpr (kDirect)
        std::memcpy(static_cast<void*>(std::addressof(out)), p, sizeof(T));
      else
        out = codec<T>::decode(std::span<const std::byte>(p, n));
    });
  }

  //!Effects: puts `item` through the exclusive producer's path (Core::put_exclusive) if this
  //! thread holds that role and the slot at the tail is free. Returns: false (nothing done)
  //! otherwise. Small and apart from put() on purpose: reached through put(), with the general
  //! path's code around it, the same operations ran at half the rate (1P/1C 8 B items).
  static bool put_fast(Core& c, const T& item) {
    if constexpr (!kFast) {
      return false;
    } else if constexpr (sizeof(T) <= kInline) {
      auto write = [&](Slot& sl, std::uint64_t) {
        sl.len = sizeof(T);
        std::memcpy(sl.data, std::addressof(item), sizeof(T));
      };
      return !c.closed().load(std::memory_order_relaxed) && c.put_exclusive(write);
    } else {
      auto write = [&](Slot& sl, std::uint64_t idx) {
        c.ensure_backed(idx, true, sizeof(T));
        sl.len = static_cast<std::uint32_t>(sizeof(T)) | kMedFlag;
        c.prefetch_next_cell(idx, sizeof(T));
        copy_cell(c.cell(idx), std::addressof(item), sizeof(T));
      };
      return !c.closed().load(std::memory_order_relaxed) && c.put_exclusive(write);
    }
  }

  //!Effects: gets the oldest item into `out` through the exclusive consumer's path if this
  //! thread holds that role and the item is there. Returns: false (nothing done) otherwise.
  //! Throws: CorruptedError if the item's length is not this type's (the item is dropped).
  static bool get_fast(Core& c, T& out) {
    if constexpr (!kFast) {
      return false;
    } else {
      constexpr std::uint32_t want =
          sizeof(T) <= kInline ? sizeof(T) : static_cast<std::uint32_t>(sizeof(T)) | kMedFlag;
      std::uint32_t found = want;
      auto read = [&](Slot& sl, std::uint64_t idx) {
        found = sl.len;
        if (found != want) return;
        if constexpr (sizeof(T) <= kInline)
          std::memcpy(static_cast<void*>(std::addressof(out)), sl.data, sizeof(T));
        else
          copy_cell(static_cast<void*>(std::addressof(out)), c.cell(idx), sizeof(T));
      };
      if (c.closed().load(std::memory_order_relaxed) || !c.get_exclusive(read)) return false;
      if (found != want)
        fail<CorruptedError>("queue '{}': an item has {} bytes, {} expected", c.name(),
                             found & kLenMask, sizeof(T));
      return true;
    }
  }

  static void check_open(Core& c) {
    if (c.closed().load(std::memory_order_relaxed))
      fail<ValueError>("queue '{}' is closed in this process (close() was called)", c.name());
    os::check_mapping(&c.header());  // CorruptedError if a peer truncated the segment under us
  }

 private:
  // Trivially copyable T copied straight out of shared memory (bool goes through its codec,
  // which rejects bytes other than 0 and 1).
  static constexpr bool kDirect = kRaw && !std::is_same_v<std::remove_cv_t<T>, bool>;
  // Items put_fast / get_fast handle: such a T of a fixed size, in the slot or in its cell.
  static constexpr bool kFast = kDirect && sizeof(T) <= kMedium;

  // Runs `take(bytes, n)` on the oldest item's bytes (validated) while the slot is held.
  template <class Take>
  static bool get_with(Core& c, bool joinable, bool block, const Deadline& deadline, Take&& take) {
    check_open(c);
    auto read = [&](Slot& sl, std::uint64_t idx) {
      const std::uint32_t raw = sl.len;  // read once, then check
      const std::uint32_t where = raw & (kBigFlag | kMedFlag);
      const std::uint64_t n = raw & kLenMask;
      const std::uint64_t limit = where == 0          ? kInline
                                  : where == kMedFlag ? c.cell_size()
                                  : where == kBigFlag ? c.max_item()
                                                      : 0;
      if (n > limit || where == (kBigFlag | kMedFlag))
        fail<CorruptedError>("queue '{}': an item claims {} bytes (slot {} holds at most {})",
                             c.name(), n, idx, limit);
      if (kDirect && n != sizeof(T))
        fail<CorruptedError>("queue '{}': an item has {} bytes, {} expected", c.name(), n,
                             sizeof(T));
      take(where == 0 ? sl.data : where == kMedFlag ? c.cell(idx) : c.region(idx), n);
    };
    return get_bytes(c, joinable, block, deadline, read);
  }

  static Bytes& scratch() {
    thread_local Bytes buf;
    return buf;
  }

  static void check_size(Core& c, std::size_t n) {
    if (n > c.max_item())
      fail<ValueError>("item of {} bytes is larger than queue '{}' allows ({} bytes); create the "
                       "queue with a larger QueueOptions::max_item_size",
                       n, c.name(), c.max_item());
  }

  template <class Write>
  static bool put_bytes(Core& c, bool joinable, bool block, const Deadline& deadline,
                        Write&& write) {
    if (!joinable && c.put_exclusive(write)) return true;
    SharedRole role(c, kProducer, !joinable, deadline);
    if (!role.entered()) return false;
    Backoff backoff;
    for (;;) {
      std::uint64_t seen = 0, pos = 0;
      const Status st = c.put_once(write, joinable, seen, pos);
      if (st == Status::ok) {
        role.succeeded();
        yield_if_contended();
        return true;
      }
      Slot& sl = c.slot_at(pos);
      if (st == Status::busy) {  // the previous lap is being read (or written) right now
        if (!block || backoff.pause()) {
          if (c.recover(sl, seen)) continue;
          if (!block) return false;
        }
        if (deadline.expired()) return false;
        continue;
      }
      // Full.
      if (c.unbounded() && c.count() + 1 >= c.capacity())
        fail<queue::Full>("unbounded queue '{}' holds {} items, all the slots reserved for it; "
                          "create it with a larger QueueOptions::unbounded_capacity",
                          c.name(), c.capacity());
      if (!block) return false;
      // Resume only once the consumers are a batch of slots ahead (or, after a while, as soon as
      // this slot frees): writing right behind a reader would bounce every cache line between
      // the two cores once per item.
      const std::uint64_t batch = std::min<std::uint64_t>(c.capacity() / 8, 64);
      if (batch > 1) {
        Slot& ahead = c.slot_at(pos + batch);
        std::uint64_t ahead_idx, ahead_lap;
        c.split(pos + batch, ahead_idx, ahead_lap);
        if (poll_briefly([&] {
              return lap_diff(lap_of(ahead.state.load(std::memory_order_acquire)), ahead_lap) >= 0;
            }))
          continue;
      }
      if (poll_briefly([&] { return sl.state.load(std::memory_order_acquire) != seen; })) continue;
      if (!Core::mark_waiter(sl, seen)) continue;
      const bool ready = sleep_on(
          c.header().not_full, c.header().excl[kConsumer],
          [&] { return sl.state.load(std::memory_order_acquire) != seen; }, deadline,
          [&] { c.recover_all(true); });
      if (!ready) return false;
    }
  }

  template <class Read>
  static bool get_bytes(Core& c, bool joinable, bool block, const Deadline& deadline, Read& read) {
    if (!joinable && c.get_exclusive(read)) return true;
    SharedRole role(c, kConsumer, !joinable, deadline);
    if (!role.entered()) return false;
    Backoff backoff;
    for (;;) {
      std::uint64_t seen = 0, pos = 0;
      const Status st = c.get_once(read, joinable, seen, pos);
      if (st == Status::ok) {
        role.succeeded();
        yield_if_contended();
        return true;
      }
      if (c.get_rescued(read, joinable)) return true;
      Slot& sl = c.slot_at(pos);
      if (st == Status::busy) {  // the item at the head is still being written
        if (!block || backoff.pause()) {
          if (c.recover(sl, seen)) continue;
          if (!block) return false;
        }
        if (deadline.expired()) return false;
        continue;
      }
      // Empty. A reader that died may have left an item behind the head: look for one.
      if (!block) {
        if (c.recover_all(true) > 0) continue;
        return false;
      }
      if (poll_briefly([&] { return sl.state.load(std::memory_order_acquire) != seen; })) continue;
      if (deadline.expired()) return false;
      if (!Core::mark_waiter(sl, seen)) continue;
      if (c.recover_all(true) > 0) continue;
      const bool ready = sleep_on(
          c.header().not_empty, c.header().excl[kProducer],
          [&] {
            return sl.state.load(std::memory_order_acquire) != seen || c.rescued_pending();
          },
          deadline, [&] { c.recover_all(true); });
      if (!ready) return false;
    }
  }
};

/// Everything common to the three queue kinds.
template <class T, Kind K>
class BasicQueue {
  static_assert(Encodable<T>,
                "mpp: a queue's element type must cross processes: make it trivially copyable, "
                "give it a cereal serialize() member, or specialise mpp::codec<T>");

 public:
  using value_type = T;

  //!Effects: puts `item`. With block=true waits while the queue is full (at most `timeout`
  //! seconds when given); with block=false does not wait (timeout is ignored).
  //!Throws: queue::Full if the queue stayed full; ValueError if closed or the item is too large.
  void put(const T& item, bool block = true, Timeout timeout = std::nullopt) {
    if constexpr (!kJoinable) {
      if (Ops<T>::put_fast(*core_, item)) return;
    }
    put_general(item, block, timeout);
  }

  //!Returns: the oldest item. With block=true waits for one (at most `timeout` seconds when
  //! given). Throws: queue::Empty if none came; ValueError if closed; CorruptedError if the
  //! bytes in shared memory do not decode (the bad item is dropped).
  T get(bool block = true, Timeout timeout = std::nullopt) {
    if constexpr (std::is_default_constructible_v<T>) {
      return get_in_place(block, timeout);
    } else {
      if (auto v = Ops<T>::get(*core_, kJoinable, block, deadline_of(block, timeout)))
        return std::move(*v);
      fail_empty(block, timeout);
    }
  }

  /// put(item, false): throws queue::Full at once if full.
  void put_nowait(const T& item) { put(item, false); }
  /// get(false): throws queue::Empty at once if empty.
  T get_nowait() { return get(false); }

  //!Effects: puts `item` if there is room now. Returns: false when full (never throws Full).
  [[nodiscard]] bool try_put(const T& item) {
    return Ops<T>::put(*core_, item, kJoinable, false, Deadline::after(std::chrono::seconds(0)));
  }
  //!Returns: the oldest item, or nullopt when empty (never throws Empty).
  [[nodiscard]] std::optional<T> try_get() {
    return Ops<T>::get(*core_, kJoinable, false, Deadline::after(std::chrono::seconds(0)));
  }

  //!Returns: the number of items in the queue, exact when no put/get is in flight (first repairs
  //! slots left by dead processes). Costs a scan of the slots.
  std::size_t qsize() const {
    core_->recover_all(true);
    return core_->count();
  }
  /// True if the queue holds no item (same exactness as qsize()).
  bool empty() const { return qsize() == 0; }
  /// True if a bounded queue holds maxsize items (always false when unbounded).
  bool full() const {
    return !core_->unbounded() && qsize() >= static_cast<std::size_t>(core_->maxsize());
  }

  //!Effects: this process will use the queue no more: later put/get through any handle of it in
  //! this process throw ValueError. Items already put stay queued (nothing to flush).
  void close() noexcept { core_->closed().store(true, std::memory_order_relaxed); }
  /// No-op: there is no feeder thread; put() has already written the item to shared memory.
  void join_thread() noexcept {}
  /// No-op: there is no feeder thread, so exiting never waits for queued items.
  void cancel_join_thread() noexcept {}

  /// maxsize as given at creation (<= 0: unbounded).
  long maxsize() const noexcept { return static_cast<long>(core_->maxsize()); }
  /// The queue's name (random "mpp.anon...." for anonymous queues).
  const std::string& name() const noexcept { return core_->name(); }
  //!Effects: removes the name now; processes that have the queue keep using it.
  //!Returns: false if the name was already gone.
  bool unlink() { return core_->segment().unlink(); }

 protected:
  static constexpr bool kJoinable = K == Kind::joinable_queue;

  BasicQueue() = default;
  explicit BasicQueue(std::shared_ptr<Core> c) : core_(std::move(c)) {}

  static std::shared_ptr<Core> make(std::string_view name, long maxsize, const QueueOptions& o,
                                    int mode) {  // 0 anonymous, 1 create, 2 open_or_create
    const std::uint64_t cap =
        maxsize <= 0 ? o.unbounded_capacity : static_cast<std::uint64_t>(maxsize);
    const std::uint64_t item =
        o.max_item_size != 0 ? o.max_item_size : default_max_item(cap == 0 ? 1 : cap);
    SegmentOptions so;
    so.persistent = o.persistent;
    so.init_timeout = o.init_timeout;
    return Core::create(name, K, type_info<T>(), maxsize, item, o.unbounded_capacity, so,
                        mode == 2, mode == 0, Ops<T>::kCellSize);
  }
  static std::shared_ptr<Core> attach(std::string_view name, const QueueOptions& o) {
    SegmentOptions so;
    so.init_timeout = o.init_timeout;
    return Core::open(name, K, type_info<T>(), so, Ops<T>::kCellSize);
  }
  // put() and get() past their exclusive fast paths, kept out of line: every store the inlined
  // fast path saves leaves room in the store buffer for one more item's slot writes waiting for
  // their cache line (1P/1C 8 B: a fast path that called put_general's body ran at 0.45x).
  [[gnu::noinline]] void put_general(const T& item, bool block, const Timeout& timeout) {
    if (!Ops<T>::put(*core_, item, kJoinable, block, deadline_of(block, timeout)))
      fail<queue::Full>("queue '{}' is full ({} items){}", core_->name(), core_->capacity(),
                        waited(block, timeout));
  }
  [[gnu::noinline]] void get_general(T& v, bool block, const Timeout& timeout) {
    if (!Ops<T>::get_into(*core_, v, kJoinable, block, deadline_of(block, timeout)))
      fail_empty(block, timeout);
  }
  // get() of a default-constructible T, filled in place: one copy out of shared memory. A
  // function of its own because GCC 12 does not elide the copy of a returned variable that is
  // declared in an inner block (here, of get()'s `if constexpr`): 1 KiB items were copied twice.
  T get_in_place(bool block, const Timeout& timeout) {
    T v;
    if constexpr (!kJoinable) {
      if (Ops<T>::get_fast(*core_, v)) return v;
    }
    get_general(v, block, timeout);
    return v;
  }
  [[noreturn]] void fail_empty(bool block, const Timeout& timeout) const {
    fail<queue::Empty>("queue '{}' is empty{}", core_->name(), waited(block, timeout));
  }
  // The end of a Full / Empty message: how long the call waited, when it was given a timeout.
  static std::string waited(bool block, const Timeout& timeout) {
    return block && timeout ? fmt::format(" after waiting {} s", timeout->count()) : std::string();
  }

  static Deadline deadline_of(bool block, const Timeout& t) {
    return block ? Deadline::from(t) : Deadline::after(std::chrono::seconds(0));
  }

  std::shared_ptr<Core> core_;
};

}  // namespace detail::mpmc

/// Python's multiprocessing.Queue: a multi-producer multi-consumer FIFO (per producer) that
/// survives any of its users being killed. Copies share the queue; forked children inherit it.
template <class T>
class Queue : public detail::mpmc::BasicQueue<T, Kind::queue> {
  using Base = detail::mpmc::BasicQueue<T, Kind::queue>;

 public:
  //!Effects: an anonymous queue holding at most `maxsize` items (<= 0: unbounded, i.e.
  //! opts.unbounded_capacity slots of a sparse segment). Throws: InvalidArgument, OSError.
  explicit Queue(long maxsize = 0, const QueueOptions& opts = {})
      : Base(Base::make({}, maxsize, opts, 0)) {}
  //!Effects: creates the named queue. Throws: ExistsError if the name is taken, InvalidArgument.
  static Queue create(std::string_view name, long maxsize = 0, const QueueOptions& opts = {}) {
    return Queue(Base::make(name, maxsize, opts, 1));
  }
  //!Effects: opens the named queue. Throws: NotFoundError, TypeMismatchError (other element type
  //! or kind), CorruptedError, PermissionError.
  static Queue open(std::string_view name, const QueueOptions& opts = {}) {
    return Queue(Base::attach(name, opts));
  }
  //!Effects: opens the named queue, creating it (with `maxsize`) if it does not exist.
  static Queue open_or_create(std::string_view name, long maxsize = 0,
                              const QueueOptions& opts = {}) {
    return Queue(Base::make(name, maxsize, opts, 2));
  }

 private:
  explicit Queue(std::shared_ptr<detail::mpmc::Core> c) : Base(std::move(c)) {}
};

/// Python's multiprocessing.SimpleQueue: an unbounded queue with put, get, empty and close.
template <class T>
class SimpleQueue : private detail::mpmc::BasicQueue<T, Kind::simple_queue> {
  using Base = detail::mpmc::BasicQueue<T, Kind::simple_queue>;

 public:
  using typename Base::value_type;
  //!Effects: an anonymous unbounded queue.
  explicit SimpleQueue(const QueueOptions& opts = {}) : Base(Base::make({}, 0, opts, 0)) {}
  /// Creates the named queue (ExistsError if taken).
  static SimpleQueue create(std::string_view name, const QueueOptions& opts = {}) {
    return SimpleQueue(Base::make(name, 0, opts, 1));
  }
  /// Opens the named queue (NotFoundError, TypeMismatchError).
  static SimpleQueue open(std::string_view name, const QueueOptions& opts = {}) {
    return SimpleQueue(Base::attach(name, opts));
  }
  /// Opens the named queue or creates it.
  static SimpleQueue open_or_create(std::string_view name, const QueueOptions& opts = {}) {
    return SimpleQueue(Base::make(name, 0, opts, 2));
  }
  //!Effects: puts `item` (never blocks; queue::Full only when the reserved slots run out).
  void put(const T& item) { Base::put(item); }
  using Base::close;
  using Base::empty;
  using Base::get;
  using Base::name;
  using Base::unlink;

 private:
  explicit SimpleQueue(std::shared_ptr<detail::mpmc::Core> c) : Base(std::move(c)) {}
};

/// Python's multiprocessing.JoinableQueue: a Queue whose consumers call task_done() for every
/// item, and join() waits until every item put has been processed.
///
/// A consumer killed after get() and before task_done() is *accounted as lost*: join() stops
/// waiting for it once the queue holds no item and no live process holds an un-done item (each
/// process's count of items got minus task_done() calls is kept in its participant entry).
/// A consumer killed inside get(), before it returned, gives the item back instead (it is
/// delivered again). task_done() is expected in the process that got the item.
template <class T>
class JoinableQueue : public detail::mpmc::BasicQueue<T, Kind::joinable_queue> {
  using Base = detail::mpmc::BasicQueue<T, Kind::joinable_queue>;
  using Core = detail::mpmc::Core;

 public:
  //!Effects: an anonymous queue holding at most `maxsize` items (<= 0: unbounded).
  explicit JoinableQueue(long maxsize = 0, const QueueOptions& opts = {})
      : Base(Base::make({}, maxsize, opts, 0)) {}
  /// Creates the named queue (ExistsError if taken).
  static JoinableQueue create(std::string_view name, long maxsize = 0,
                              const QueueOptions& opts = {}) {
    return JoinableQueue(Base::make(name, maxsize, opts, 1));
  }
  /// Opens the named queue (NotFoundError, TypeMismatchError).
  static JoinableQueue open(std::string_view name, const QueueOptions& opts = {}) {
    return JoinableQueue(Base::attach(name, opts));
  }
  /// Opens the named queue or creates it.
  static JoinableQueue open_or_create(std::string_view name, long maxsize = 0,
                                      const QueueOptions& opts = {}) {
    return JoinableQueue(Base::make(name, maxsize, opts, 2));
  }

  //!Effects: marks one item got from the queue as processed; wakes join() when none are left.
  //!Throws: ValueError if called more times than items were put.
  void task_done() {
    Core& c = *this->core_;
    c.owner();
    auto& h = c.header();
    std::int64_t v = h.unfinished.load(std::memory_order_acquire);
    do {
      if (v <= 0)
        detail::fail<ValueError>("task_done() called too many times on queue '{}'", c.name());
    } while (!h.unfinished.compare_exchange_weak(v, v - 1, std::memory_order_seq_cst));
    MPP_CRASH_POINT("queue.task_done.counted");
    c.me().held.fetch_sub(1, std::memory_order_seq_cst);
    if (v == 1) h.all_done.notify_all();
  }

  //!Effects: waits until every item put has been processed (task_done()), or accounted as lost
  //! because the process holding it died.
  void join() { (void)join_until(detail::Deadline::never()); }

  //!Effects: join() for at most `timeout` seconds. Returns: false if it timed out.
  [[nodiscard]] bool join(Timeout timeout) { return join_until(detail::Deadline::from(timeout)); }

 private:
  explicit JoinableQueue(std::shared_ptr<Core> c) : Base(std::move(c)) {}

  bool join_until(const detail::Deadline& deadline) {
    Core& c = *this->core_;
    auto& h = c.header();
    for (;;) {
      if (done(c)) return true;
      if (deadline.expired()) return false;
      auto slice = detail::Deadline::after(detail::kPollInterval);
      if (const auto left = deadline.remaining(); left && *left < detail::kPollInterval)
        slice = detail::Deadline::after(*left);
      h.all_done.wait([&] { return h.unfinished.load(std::memory_order_acquire) <= 0; }, slice);
    }
  }

  // All done, or the rest belongs to dead processes: nothing queued or in flight and no live
  // process holds an item it has not marked done.
  static bool done(Core& c) {
    auto& h = c.header();
    if (h.unfinished.load(std::memory_order_seq_cst) <= 0) return true;
    c.recover_all();
    bool busy = false;
    if (c.count(&busy, true) != 0 || busy) return false;
    std::atomic_thread_fence(std::memory_order_seq_cst);
    std::int64_t held = 0;
    for (auto& p : c.participants()) {
      const auto who = p.who.load(std::memory_order_seq_cst);
      if (who == 0) continue;
      const std::int64_t n = p.held.load(std::memory_order_seq_cst);
      if (n != 0 && detail::ProcessRef::unpack(who).alive()) held += n;
    }
    return held <= 0;
  }
};

namespace detail::mpmc {
/// How a queue handle crosses processes: as its name (as Python pickles it); the receiver opens it.
template <class Q>
struct QueueCodec {
  /// Name of the encoding (part of the type fingerprint).
  static constexpr std::string_view kind = "handle";
  /// Appends the queue's name.
  static void encode(const Q& q, Bytes& out) { codec<std::string>::encode(q.name(), out); }
  //!Returns: the queue opened by name. Throws: CorruptedError, NotFoundError, TypeMismatchError.
  static Q decode(std::span<const std::byte> in) { return Q::open(codec<std::string>::decode(in)); }
};
}  // namespace detail::mpmc

/// A Queue<T> crosses processes as its name.
template <class T>
struct codec<Queue<T>> : detail::mpmc::QueueCodec<Queue<T>> {};
/// A SimpleQueue<T> crosses processes as its name.
template <class T>
struct codec<SimpleQueue<T>> : detail::mpmc::QueueCodec<SimpleQueue<T>> {};
/// A JoinableQueue<T> crosses processes as its name.
template <class T>
struct codec<JoinableQueue<T>> : detail::mpmc::QueueCodec<JoinableQueue<T>> {};

}  // namespace mpp
