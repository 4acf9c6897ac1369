// mpp — raw, in-segment states of the synchronisation primitives (DESIGN.md section 4). Each is a
// standard-layout struct that lives in shared memory; zero-filled memory is a valid, unlocked /
// unset / empty state (so a segment's zeroed payload needs no construction). The public handles
// in sync.hpp wrap them; Value, Queue and the Manager embed them in their own segments.
//
// Robust lock algorithm: the owner word holds the owner's packed ProcessRef (0 = free). Acquire is
// a CAS 0 -> me (no system call); release is an exchange to 0 followed by a wake only when someone
// sleeps. A waiter sleeps on a WaitPoint and, at least every kPollInterval, checks whether the
// owner still lives; if not, it takes the lock over by CAS from the dead owner's exact word and
// reports LockResult::owner_died so the caller can repair the protected data.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "liveness.hpp"
#include "wait.hpp"

namespace mpp::detail {

/// Outcome of a lock acquisition.
enum class LockResult {
  acquired,     ///< the lock is now held by the caller
  owner_died,   ///< held by the caller, and its previous holder died while holding it
  timeout,      ///< the deadline passed; the lock is not held
};

/// True when `r` means the caller now holds the lock.
constexpr bool holds(LockResult r) noexcept { return r != LockResult::timeout; }

/// An identity of the calling thread, unique among the live threads of this process, obtained
/// without a system call (the address of a thread-local). Combined with the process's ProcessRef.
inline std::uint64_t thread_tag() noexcept {
  static thread_local char tag;
  return reinterpret_cast<std::uintptr_t>(&tag);
}

namespace sync_impl {

//!Effects: the robust acquire loop shared by LockState and RLockState: CAS 0 -> me on `owner`,
//! spinning then sleeping on `wp`; every poll, a dead owner's exact word is replaced by `me`.
inline LockResult robust_acquire(std::atomic<std::uint64_t>& owner, WaitPoint& wp,
                                 std::uint64_t me, const Deadline& deadline) {
  std::uint64_t expected = 0;
  if (owner.compare_exchange_strong(expected, me, std::memory_order_acquire,
                                    std::memory_order_relaxed))
    return LockResult::acquired;
  bool took_over = false;
  // Test before CAS: spinning on loads keeps the line shared until the holder lets go.
  auto ready = [&] {
    if (took_over) return true;
    std::uint64_t e = owner.load(std::memory_order_relaxed);
    return e == 0 && owner.compare_exchange_strong(e, me, std::memory_order_acquire,
                                                   std::memory_order_relaxed);
  };
  auto check = [&] {
    std::uint64_t w = owner.load(std::memory_order_acquire);
    if (w == 0 || w == me) return;  // free (ready() takes it) or held by another of our threads
    if (ProcessRef::unpack(w).alive()) return;
    // Only the exact dead word is replaced: if someone else repaired it first, the CAS fails.
    if (owner.compare_exchange_strong(w, me, std::memory_order_acquire, std::memory_order_relaxed))
      took_over = true;
  };
  if (!wp.wait(ready, deadline, check)) {
    // Last chance for a caller whose deadline had already passed (non-blocking acquire).
    check();
    if (!took_over) return LockResult::timeout;
  }
  return took_over ? LockResult::owner_died : LockResult::acquired;
}

//!Effects: releases `owner` (exchange to 0) and wakes one sleeper if there is one.
//!Returns: the previous owner word (0: the lock was not held).
inline std::uint64_t robust_release(std::atomic<std::uint64_t>& owner, WaitPoint& wp) noexcept {
  // seq_cst exchange and seq_cst load pair with the waiter's seq_cst "sleepers++; re-check owner"
  // (WaitPoint::wait): either it sees the lock free or we see it counted. No fence needed on x86.
  const std::uint64_t prev = owner.exchange(0, std::memory_order_seq_cst);
  if (wp.sleepers.load(std::memory_order_seq_cst) != 0) wp.notify_one();
  return prev;
}

}  // namespace sync_impl

/// A robust, non-recursive, process-shared lock (Python's multiprocessing.Lock) in shared memory.
/// Zero-filled memory is a valid unlocked state, as is `new (p) LockState()`. 16 bytes.
/// Not owned by a thread: like Python's Lock, any process or thread may release it.
struct LockState {
  std::atomic<std::uint64_t> owner{0};  ///< packed ProcessRef of the holder, 0 when free
  WaitPoint wp;                          ///< sleepers waiting for `owner` to become 0

  //!Effects: acquires the lock, waiting until `deadline`; takes it over if its holder died.
  //! Uncontended: one CAS, no system call.
  //!Returns: acquired, owner_died (acquired; the previous holder died holding it) or timeout.
  LockResult acquire(const Deadline& deadline) {
    return sync_impl::robust_acquire(owner, wp, ProcessRef::self().pack(), deadline);
  }
  /// Acquires the lock if it is free (one CAS; never takes over from a dead holder).
  bool try_acquire() noexcept {
    std::uint64_t e = 0;
    return owner.compare_exchange_strong(e, ProcessRef::self().pack(), std::memory_order_acquire,
                                         std::memory_order_relaxed);
  }
  //!Effects: releases the lock and wakes one waiter if any sleeps. No system call otherwise.
  //!Returns: false if the lock was not held (the caller decides whether that is an error).
  bool release() noexcept { return sync_impl::robust_release(owner, wp) != 0; }
  /// True while someone holds the lock.
  bool locked() const noexcept { return owner.load(std::memory_order_relaxed) != 0; }
  /// True if the holder is this process (any of its threads).
  bool held_by_this_process() const noexcept {
    return owner.load(std::memory_order_relaxed) == ProcessRef::self().pack();
  }
};
static_assert(std::is_standard_layout_v<LockState> && sizeof(LockState) == 16);
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);

/// A robust re-entrant lock (Python's RLock): owned by one thread of one process, which may
/// acquire it again; it is free once released as many times as acquired. Zero-filled is valid.
struct RLockState {
  std::atomic<std::uint64_t> owner{0};   ///< packed ProcessRef of the owning process, 0 when free
  std::atomic<std::uint64_t> thread{0};  ///< thread_tag() of the owning thread (0 while changing)
  std::atomic<std::uint32_t> count{0};   ///< recursion depth; written by the owner only
  std::uint32_t reserved_{0};
  WaitPoint wp;  ///< sleepers waiting for `owner` to become 0

  /// True if the calling thread owns the lock.
  bool is_owned() const noexcept {
    // Only the owning thread ever writes its own tag, so a stale read can never show ours.
    return owner.load(std::memory_order_relaxed) == ProcessRef::self().pack() &&
           thread.load(std::memory_order_relaxed) == thread_tag();
  }
  //!Effects: acquires (or re-enters) the lock, waiting until `deadline`; takes it over from a
  //! dead holder. Returns: acquired, owner_died or timeout.
  LockResult acquire(const Deadline& deadline) { return acquire_with_count(deadline, 0); }
  /// Acquires or re-enters the lock if that needs no waiting.
  bool try_acquire() noexcept {
    if (reenter()) return true;
    std::uint64_t e = 0;
    if (!owner.compare_exchange_strong(e, ProcessRef::self().pack(), std::memory_order_acquire,
                                       std::memory_order_relaxed))
      return false;
    thread.store(thread_tag(), std::memory_order_relaxed);
    count.store(1, std::memory_order_relaxed);
    return true;
  }
  //!Effects: undoes one acquire; frees the lock (waking a waiter) when the count reaches zero.
  //!Returns: false if the calling thread does not own the lock (nothing changes).
  bool release() noexcept {
    if (!is_owned()) return false;
    const std::uint32_t c = count.load(std::memory_order_relaxed);
    if (c > 1) {
      count.store(c - 1, std::memory_order_relaxed);
      return true;
    }
    release_all();
    return true;
  }
  /// Recursion depth if the calling thread owns the lock, else 0.
  std::uint32_t depth() const noexcept {
    return is_owned() ? count.load(std::memory_order_relaxed) : 0;
  }
  //!Effects: frees the lock whatever the recursion depth (for Condition::wait).
  //!Returns: the depth to give back to acquire_restore(), or 0 if the caller did not own it.
  std::uint32_t release_all() noexcept {
    if (!is_owned()) return 0;
    const std::uint32_t c = count.load(std::memory_order_relaxed);
    count.store(0, std::memory_order_relaxed);
    thread.store(0, std::memory_order_relaxed);  // before the release that publishes it
    sync_impl::robust_release(owner, wp);
    return c == 0 ? 1 : c;
  }
  /// Re-acquires after release_all() with the saved depth.
  LockResult acquire_restore(std::uint32_t depth, const Deadline& deadline) {
    return acquire_with_count(deadline, depth);
  }
  /// True while someone holds the lock.
  bool locked() const noexcept { return owner.load(std::memory_order_relaxed) != 0; }

 private:
  bool reenter() noexcept {
    if (!is_owned()) return false;
    count.store(count.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    return true;
  }
  LockResult acquire_with_count(const Deadline& deadline, std::uint32_t depth) {
    if (depth == 0 && reenter()) return LockResult::acquired;
    const LockResult r =
        sync_impl::robust_acquire(owner, wp, ProcessRef::self().pack(), deadline);
    if (r == LockResult::timeout) return r;
    thread.store(thread_tag(), std::memory_order_relaxed);
    count.store(depth == 0 ? 1 : depth, std::memory_order_relaxed);
    return r;
  }
};
static_assert(std::is_standard_layout_v<RLockState> && sizeof(RLockState) == 32);

}  // namespace mpp::detail
