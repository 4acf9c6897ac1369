// mpp — the engine of Queue, SimpleQueue and JoinableQueue: the typed put/get operations over
// the lock-free ring of detail/mpmc.hpp (Ops), the waiting policy around them (Backoff,
// poll_briefly, sleep_on) and BasicQueue, the handle the public classes forward to.
// How the ring works: docs/design/queue.md.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include "../codec.hpp"
#include "../errors.hpp"
#include "../segment.hpp"
#include "../timeout.hpp"
#include "mpmc.hpp"
#include "wait.hpp"

namespace mpp::detail::mpmc {

/// The largest item of a queue of `capacity` slots when QueueOptions::max_item_size is 0: 8 GiB
/// of sparse address space shared by the slots, between 64 KiB and 16 MiB each.
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
//! producer and a consumer streaming through them (benchmarks row queue.8B.2p2c.throughput on a
//! machine with fewer cores than processes). Never called with a slot held.
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
  //! round trip per item (benchmarks row queue.1KiB.1p1c.throughput).
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
        cpu::copy_cell(c.cell(idx), std::addressof(item), sizeof(T));
      });
    } else if constexpr (kRaw) {
      check_size(c, sizeof(T));
      return put_bytes(c, joinable, block, deadline, [&](Slot& sl, std::uint64_t idx) {
        c.ensure_backed(idx, false, sizeof(T));
        sl.len = static_cast<std::uint32_t>(sizeof(T)) | kBigFlag;
        std::memcpy(c.region(idx), std::addressof(item), sizeof(T));
      });
    } else {
      Bytes local;  // once the thread's scratch buffer is destroyed (see scratch())
      Bytes* const scratch_buf = scratch();
      Bytes& buf = scratch_buf != nullptr ? *scratch_buf : local;
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
          cpu::copy_cell(c.cell(idx), buf.data(), n);
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
        cpu::copy_cell(static_cast<void*>(std::addressof(out)), p, sizeof(T));
      else if constexpr (kDirect)
        std::memcpy(static_cast<void*>(std::addressof(out)), p, sizeof(T));
      else
        out = codec<T>::decode(std::span<const std::byte>(p, n));
    });
  }

  //!Effects: puts `item` through the exclusive producer's path (Core::put_exclusive) if this
  //! thread holds that role and the slot at the tail is free. Returns: false (nothing done)
  //! otherwise. Small and apart from put() on purpose: inlined into put() with the general
  //! path's code around it, the same operations run much slower (benchmarks row
  //! queue.8B.1p1c.throughput).
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
        cpu::copy_cell(c.cell(idx), std::addressof(item), sizeof(T));
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
          cpu::copy_cell(static_cast<void*>(std::addressof(out)), c.cell(idx), sizeof(T));
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

  // The encoding buffer of this thread, reused across puts; null once destroyed: the main
  // thread's thread_locals are destroyed before the static destructors and atexit handlers
  // run, which may still put (a Pool at namespace scope wakes its supervisor through a queue).
  struct Scratch {
    Bytes buf;
    Scratch() = default;
    Scratch(const Scratch&) = delete;
    Scratch& operator=(const Scratch&) = delete;
    ~Scratch() { gone() = true; }
    static bool& gone() noexcept {  // trivially destructible: readable until the thread ends
      thread_local bool g = false;
      return g;
    }
  };
  static Bytes* scratch() {
    if (Scratch::gone()) return nullptr;
    thread_local Scratch s;
    return &s.buf;
  }

  static void check_size(Core& c, std::size_t n) {
    if (n > c.max_item())
      fail<ValueError>(
          "item of {} bytes is larger than queue '{}' allows ({} bytes); create the "
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
        fail<queue::Full>(
            "unbounded queue '{}' holds {} items, all the slots reserved for it; "
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
          [&] { return sl.state.load(std::memory_order_acquire) != seen || c.rescued_pending(); },
          deadline, [&] { c.recover_all(true); });
      if (!ready) return false;
    }
  }
};

/// The engine of Queue, SimpleQueue and JoinableQueue (their protected base): a handle on the
/// queue's Core. The public classes document the members and forward to these.
template <class T, Kind K>
class BasicQueue {
  static_assert(Encodable<T>,
                "mpp: a queue's element type must cross processes: make it trivially copyable, "
                "give it a cereal serialize() member, or specialise mpp::codec<T>");

 public:
  using value_type = T;

  void put(const T& item, bool block, const Timeout& timeout) {
    if constexpr (!kJoinable) {
      if (Ops<T>::put_fast(*core_, item)) return;
    }
    put_general(item, block, timeout);
  }

  T get(bool block, const Timeout& timeout) {
    if constexpr (std::is_default_constructible_v<T>) {
      return get_in_place(block, timeout);
    } else {
      if (auto v = Ops<T>::get(*core_, kJoinable, block, deadline_of(block, timeout)))
        return std::move(*v);
      fail_empty(block, timeout);
    }
  }

  bool try_put(const T& item) {
    return Ops<T>::put(*core_, item, kJoinable, false, Deadline::after(std::chrono::seconds(0)));
  }
  std::optional<T> try_get() {
    return Ops<T>::get(*core_, kJoinable, false, Deadline::after(std::chrono::seconds(0)));
  }

  // Exact when no put/get is in flight: first repairs slots left by dead processes. `op` names
  // the public call for the message when the queue is closed.
  std::size_t qsize(const char* op = "qsize") const {
    check_not_closed(op);
    core_->recover_all(true);
    return core_->count();
  }
  bool full() const {
    check_not_closed("full");
    return !core_->unbounded() && qsize("full") >= static_cast<std::size_t>(core_->maxsize());
  }
  void close() noexcept { core_->closed().store(true, std::memory_order_relaxed); }
  bool closed() const noexcept { return core_->closed().load(std::memory_order_relaxed); }
  // Python's repr-like text: <Queue name='...' maxsize=3>, " closed" once closed here.
  std::string repr(std::string_view kind, bool with_maxsize) const {
    std::string out = fmt::format("<{} name='{}'", kind, name());
    if (with_maxsize) out += fmt::format(" maxsize={}", maxsize());
    if (closed()) out += " closed";
    out += '>';
    return out;
  }
  long maxsize() const noexcept { return static_cast<long>(core_->maxsize()); }
  const std::string& name() const noexcept { return core_->name(); }
  bool unlink() { return core_->segment().unlink(); }

  // JoinableQueue::task_done.
  void task_done() {
    Core& c = *core_;
    c.owner();
    auto& h = c.header();
    std::int64_t v = h.unfinished.load(std::memory_order_acquire);
    do {
      if (v <= 0) fail<ValueError>("task_done() called too many times on queue '{}'", c.name());
    } while (!h.unfinished.compare_exchange_weak(v, v - 1, std::memory_order_seq_cst));
    MPP_CRASH_POINT("queue.task_done.counted");
    c.me().held.fetch_sub(1, std::memory_order_seq_cst);
    if (v == 1) h.all_done.notify_all();
  }

  // JoinableQueue::join. Returns: false if `deadline` passed first.
  bool join_until(const Deadline& deadline) {
    Core& c = *core_;
    auto& h = c.header();
    for (;;) {
      if (all_done(c)) return true;
      if (deadline.expired()) return false;
      auto slice = Deadline::after(kPollInterval);
      if (const auto left = deadline.remaining(); left && *left < kPollInterval)
        slice = Deadline::after(*left);
      h.all_done.wait([&] { return h.unfinished.load(std::memory_order_acquire) <= 0; }, slice);
    }
  }

 protected:
  static constexpr bool kJoinable = K == Kind::joinable_queue;

  // empty(), qsize() and full() of a closed queue: OSError, as Python's empty() raises once its
  // reader is closed.
  void check_not_closed(const char* op) const {
    if (closed())
      fail<OSError>(
          "{}() on queue '{}': the queue is closed in this process (close() was called); "
          "ask before close(), or from a process that has not closed it",
          op, name());
  }

  BasicQueue() = default;
  explicit BasicQueue(std::shared_ptr<Core> c) : core_(std::move(c)) {}

  // `Options` is QueueOptions (a parameter so that this header need not define it).
  template <class Options>
  static std::shared_ptr<Core> make(std::string_view name, long maxsize, const Options& o,
                                    int mode) {  // 0 anonymous, 1 create, 2 open_or_create
    const std::uint64_t cap =
        maxsize <= 0 ? o.unbounded_capacity : static_cast<std::uint64_t>(maxsize);
    const std::uint64_t item =
        o.max_item_size != 0 ? o.max_item_size : default_max_item(cap == 0 ? 1 : cap);
    return Core::create(name, K, type_info<T>(), maxsize, item, o.unbounded_capacity, o.named(),
                        mode == 2, mode == 0, Ops<T>::kCellSize);
  }
  template <class Options>
  static std::shared_ptr<Core> attach(std::string_view name, const Options& o) {
    return Core::open(name, K, type_info<T>(), o.named(), Ops<T>::kCellSize);
  }

  std::shared_ptr<Core> core_;

 private:
  // put() and get() past their exclusive fast paths, kept out of line: every store the inlined
  // fast path saves leaves room in the store buffer for one more item's slot writes waiting for
  // their cache line (benchmarks row queue.8B.1p1c.throughput drops by half with put_general
  // inlined).
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

  // All done, or the rest belongs to dead processes: nothing queued or in flight and no live
  // process holds an item it has not marked done.
  static bool all_done(Core& c) {
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
      if (n != 0 && ProcessRef::unpack(who).alive()) held += n;
    }
    return held <= 0;
  }
};

}  // namespace mpp::detail::mpmc
