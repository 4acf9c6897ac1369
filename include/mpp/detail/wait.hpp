// mpp — the one wait/wake mechanism every blocking primitive uses:
// spin briefly, then sleep on a 32-bit sequence word in shared memory, counting sleepers so that a
// notify without sleepers never enters the kernel, and waking at least every kPollInterval so the
// caller can check that the peers it waits for are still alive.
#pragma once

#include <atomic>
#include <chrono>
#include <climits>
#include <cstdint>
#include <optional>

#include "../timeout.hpp"
#include "os.hpp"

namespace mpp {

namespace detail {

/// How often a sleeper wakes to check the liveness of the peers it waits on.
inline constexpr std::chrono::milliseconds kPollInterval{100};
/// How many times a waiter polls before it sleeps (a few µs: less than one wake-up costs).
inline constexpr int kSpinIterations = 2000;

/// A point in time after which a blocking call gives up; "never" when there is no timeout.
class Deadline {
 public:
  using clock = std::chrono::steady_clock;
  /// A deadline that never expires.
  static Deadline never() noexcept { return Deadline{}; }
  /// A deadline `d` from now (negative durations expire immediately).
  template <class Rep, class Period>
  static Deadline after(std::chrono::duration<Rep, Period> d) noexcept {
    Deadline r;
    r.infinite_ = false;
    r.at_ = clock::now() + std::chrono::duration_cast<clock::duration>(d);
    return r;
  }
  /// The deadline of a Python-style timeout (nullopt = never).
  static Deadline from(const Timeout& t) noexcept { return t ? after(*t) : never(); }
  /// True when this deadline has no end.
  bool infinite() const noexcept { return infinite_; }
  /// True when the deadline has passed.
  bool expired() const noexcept { return !infinite_ && clock::now() >= at_; }
  /// Time left (zero if expired), or nullopt when infinite.
  std::optional<std::chrono::nanoseconds> remaining() const noexcept {
    if (infinite_) return std::nullopt;
    const auto left = at_ - clock::now();
    return left.count() > 0 ? std::chrono::duration_cast<std::chrono::nanoseconds>(left)
                            : std::chrono::nanoseconds{0};
  }

 private:
  Deadline() noexcept = default;
  bool infinite_ = true;
  clock::time_point at_{};
};

/// A shared-memory rendezvous point: sleepers wait for a condition, notifiers wake them.
/// Standard layout, lives inside a segment. Zero-initialised memory is a valid state.
struct WaitPoint {
  std::atomic<std::uint32_t> seq{0};       ///< bumped by every notify that finds sleepers
  std::atomic<std::uint32_t> sleepers{0};  ///< processes between "announce" and "wake up"

  //!Effects: wakes every sleeper. Costs a fence and a load when nobody sleeps.
  //! The caller's state change must precede this call (it is ordered by the fence here).
  void notify_all() noexcept { notify(INT_MAX); }
  //!Effects: wakes at most one sleeper (others keep sleeping until their next poll).
  void notify_one() noexcept { notify(1); }

  //!Effects: returns as soon as `ready()` is true; spins briefly, then sleeps on `seq`, waking at
  //! least every kPollInterval to call `check()` (which may throw, e.g. when a peer died).
  //!Returns: true when ready() became true, false when `deadline` passed first.
  template <class Ready, class Check>
  bool wait(Ready&& ready, const Deadline& deadline, Check&& check) {
    for (int i = 0; i < kSpinIterations; ++i) {
      if (ready()) return true;
      os::cpu_relax();
    }
    for (;;) {
      // Announce, then re-check: a notifier either sees us counted (and bumps seq, so the futex
      // returns at once) or made its change visible before our re-check (Dekker via seq_cst).
      sleepers.fetch_add(1, std::memory_order_seq_cst);
      const std::uint32_t s = seq.load(std::memory_order_seq_cst);
      if (ready()) {
        sleepers.fetch_sub(1, std::memory_order_relaxed);
        return true;
      }
      std::optional<std::chrono::nanoseconds> slice = kPollInterval;
      if (const auto left = deadline.remaining(); left && *left < *slice) slice = left;
      if (os::mapping_faulted(this)) [[unlikely]] {  // a peer truncated the segment under us
        sleepers.fetch_sub(1, std::memory_order_relaxed);
        os::check_mapping(this);  // throws CorruptedError
      }
      os::wait_on_address(seq, s, slice);
      sleepers.fetch_sub(1, std::memory_order_relaxed);
      if (ready()) return true;
      check();
      if (deadline.expired()) return ready();
    }
  }

  /// wait() without a liveness check.
  template <class Ready>
  bool wait(Ready&& ready, const Deadline& deadline) {
    return wait(static_cast<Ready&&>(ready), deadline, [] {});
  }

 private:
  void notify(int count) noexcept {
    std::atomic_thread_fence(std::memory_order_seq_cst);
    const std::uint32_t n = sleepers.load(std::memory_order_relaxed);
    if (n == 0) return;
    seq.fetch_add(1, std::memory_order_seq_cst);
    // Never more than the sleepers: a semaphore-based backend (Win32) keeps surplus wake-ups.
    os::wake_address(seq, n < static_cast<std::uint32_t>(count) ? static_cast<int>(n) : count);
  }
};
static_assert(sizeof(WaitPoint) == 8 && std::is_standard_layout_v<WaitPoint>);

}  // namespace detail
}  // namespace mpp
