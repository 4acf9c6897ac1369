// mpp — raw, in-segment states of the synchronisation primitives. Each is a standard-layout
// struct that lives in shared memory, valid once constructed (`new (p) State()`).
// The public handles in sync.hpp wrap them; Value, Queue and the Manager embed them in their own
// segments.
//
// Robust lock algorithm: the owner word holds the owner's identity (0 = free), a "contended" bit
// and a constant "live" bit. Acquire is a CAS free -> me (no system call); a waiter that finds the
// lock held sets the contended bit and sleeps at once (no spinning on the lock's line: a spinning
// waiter keeps pulling it away from a holder that re-takes the lock in a loop; benchmarks row
// lock.contended.2proc); release is an exchange to free that wakes one sleeper only when the bit
// was set. This is glibc's mutex protocol: where wake-ups are exact (a futex, os::kExactWake) the
// waiter sleeps on the owner word itself; where they are kept (Win32 semaphores) it sleeps on a
// WaitPoint that counts its sleepers. One departure: a waiter that is woken and finds the lock
// taken again (the holder re-takes it in a loop) spins blindly, once per acquire, for about the
// cost of a wake-up before it queues again (backoff_spin()); queueing at once makes every release
// of that holder a wake system call. At least every kPollInterval a sleeper checks whether the
// owner still lives; if not, it takes the lock over by CAS from the dead owner's exact word and
// reports LockResult::owner_died so the caller can repair the data.
//
// Truncation: another process may shrink a segment under its users (ftruncate). Pages past the
// new end fault (the SIGBUS guard of detail/os maps private zero pages there), and the rest of
// the page that holds the new end reads as zeros, with no fault at all. So every state here keeps
// a constant non-zero mark in its *last* bytes (the lock word's live bit sits in its most
// significant byte; Semaphore and Event keep theirs in the top bit of their last word; Condition
// and Barrier end with a kLiveMark word): a cut that reaches into a state always clears its mark,
// since it zeroes everything from some byte to the end. No operation accepts a state whose mark is
// gone: a lock word without its live bit is never acquired (the CAS expects the live bit) and
// never left free (a release that finds it cut puts it back, so a vanished lock is not brought
// back to life, not even in one process's private zero page), and the caller gets
// CorruptedError naming the object. The check is part of the CAS or one load of the same line:
// no system call on any fast path.
#pragma once

#include <algorithm>
#include <atomic>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>
#include <type_traits>

#include "../errors.hpp"
#include "liveness.hpp"
#include "wait.hpp"

namespace mpp::detail {

/// Outcome of a lock acquisition.
enum class LockResult {
  acquired,    ///< the lock is now held by the caller
  owner_died,  ///< held by the caller, and its previous holder died while holding it
  timeout,     ///< the deadline passed; the lock is not held
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

/// Bit of a lock's owner word that a waiter sets before it sleeps: the release that sees it wakes
/// one sleeper (glibc's "contended" state). A process that takes a free lock by CAS free -> me
/// leaves it clear, so while one process re-takes a lock the others sleep on, its releases make no
/// system call.
inline constexpr std::uint64_t kContended = std::uint64_t{1} << 63;
/// Bit set in every valid owner word, free or held: a word without it was zeroed by a truncation
/// (or scribbled on), and nobody may acquire or release it. It lives in the word's most
/// significant byte, the last one in memory on the (little-endian) machines mpp runs on, so a cut
/// that ends anywhere inside the word clears it.
inline constexpr std::uint64_t kLive = std::uint64_t{1} << 62;
/// The owner word of a free lock.
inline constexpr std::uint64_t kFree = kLive;

/// The owner word of the process whose packed ProcessRef is `packed`: its pid (below 2^30: Linux
/// pid_max <= 2^22, Win32 process ids below 2^26) in the high half next to the two flags, so that
/// the half a futex sleeps on holds the pid and the flags, and the start tag in the low half.
constexpr std::uint64_t owner_word(std::uint64_t packed) noexcept {
  return std::rotl(packed, 32) | kLive;
}
/// The calling process's owner word.
inline std::uint64_t self_word() noexcept { return owner_word(ProcessRef::self().pack()); }

/// The holder's identity in an owner word without its flags (0: free).
constexpr std::uint64_t holder(std::uint64_t word) noexcept { return word & ~(kContended | kLive); }
/// The holder of an owner word as a ProcessRef.
constexpr ProcessRef holder_ref(std::uint64_t word) noexcept {
  return ProcessRef::unpack(std::rotr(holder(word), 32));
}
/// True when `word` is a valid owner word (free or held), i.e. not cut.
constexpr bool live(std::uint64_t word) noexcept { return (word & kLive) != 0; }

/// A constant that Condition and Barrier keep in their last 8 bytes (see the top of this file).
inline constexpr std::uint64_t kLiveMark = 0xd1e5a11fe0b1e55dull;

//!Throws: CorruptedError for the object `name` (or "a lock" when empty) whose `what` at `addr`
//! lost its live mark: its segment was truncated (or overwritten) under us.
[[noreturn]] inline void state_cut(const void* addr, std::string_view what, std::string_view name,
                                   std::uint64_t seen) {
  os::check_mapping(addr);  // the guard names the object when this process faulted on it
  fail<CorruptedError>(
      "'{}': the {} reads {:#x}, which is not a valid state: another process "
      "truncated (or overwrote) the segment that holds it, and its state is "
      "gone; nobody can use it any more: recreate the object",
      name.empty() ? std::string_view("?") : name, what, seen);
}

/// The object name `n` stands for: a string (view) itself, or a callable returning one, so that
/// the fast paths need not compute a name they only use in an error message.
template <class N>
std::string_view name_of(const N& n) {
  if constexpr (std::is_invocable_v<const N&>)
    return std::string_view(n());
  else
    return std::string_view(n);
}

//!Throws: CorruptedError (see state_cut) for the lock word `owner` that reads `w`.
[[noreturn]] inline void lock_cut(const std::atomic<std::uint64_t>& owner, std::uint64_t w,
                                  std::string_view name) {
  state_cut(&owner, "lock word", name, w);
}

/// The 32-bit half of an owner word that holds the pid and the flags: the futex word of the lock
/// where wake-ups are exact (os::kExactWake).
inline const std::atomic<std::uint32_t>& low_word(const std::atomic<std::uint64_t>& w) noexcept {
  static_assert(sizeof(std::atomic<std::uint64_t>) == 8 && sizeof(std::atomic<std::uint32_t>) == 4);
  const auto* p =
      reinterpret_cast<const std::byte*>(&w) + (std::endian::native == std::endian::little ? 4 : 0);
  return *reinterpret_cast<const std::atomic<std::uint32_t>*>(p);
}
/// The value of low_word() in the owner word `w`.
constexpr std::uint32_t low_half(std::uint64_t w) noexcept {
  return static_cast<std::uint32_t>(w >> 32);
}

//!Effects: for a waiter that gives up (timeout) after a release may have woken it instead of
//! another sleeper: makes sure the next release wakes someone (marks a held lock contended), or
//! wakes one sleeper now if the lock is free.
inline void wake_one_after_timeout(std::atomic<std::uint64_t>& owner, WaitPoint& wp) noexcept {
  if constexpr (os::kExactWake) {
    std::uint64_t w = owner.load(std::memory_order_relaxed);
    while (live(w) && holder(w) != 0 && (w & kContended) == 0 &&
           !owner.compare_exchange_weak(w, w | kContended, std::memory_order_relaxed)) {
    }
    if (w == kFree) os::wake_address(low_word(owner), 1);
  } else {
    if (wp.sleepers.load(std::memory_order_seq_cst) != 0) wp.notify_one();
  }
}

//!Effects: if the holder recorded in `owner` is dead, replaces exactly that word by `me` (keeping
//! the contended bit, so the sleepers are still woken by our release).
//!Returns: true if the caller took the lock over. Throws: CorruptedError if the word was cut.
inline bool take_over_if_dead(std::atomic<std::uint64_t>& owner, std::uint64_t me,
                              std::string_view name) {
  std::uint64_t w = owner.load(std::memory_order_acquire);
  if (!live(w)) lock_cut(owner, w, name);
  // Free (the caller's CAS takes it) or held by another of our threads: nothing to repair.
  if (holder(w) == 0 || holder(w) == holder(me) || holder_ref(w).alive()) return false;
  // Only the exact dead word is replaced: if someone else repaired it first, the CAS fails.
  return owner.compare_exchange_strong(w, me | (w & kContended), std::memory_order_acquire,
                                       std::memory_order_relaxed);
}

inline LockResult robust_wait(std::atomic<std::uint64_t>& owner, WaitPoint& wp, std::uint64_t me,
                              const Deadline& deadline, std::string_view name);

/// One round of backoff_spin(), and how many rounds it makes: about one wake-up of a sleeping
/// process on this kind of machine (~25 us), after which sleeping costs less than spinning.
inline constexpr std::chrono::microseconds kBackoffRound{4};
inline constexpr int kBackoffRounds = 4;

//!Effects: for a waiter that was woken and found the lock taken again: spins without touching
//! the lock's line (so the holder keeps it) for kBackoffRound, then tries to take the lock,
//! kBackoffRounds times or until `deadline`. A take marks the lock contended: others may sleep.
//! Two processes re-taking one lock gain throughput over queueing at once (benchmarks row
//! lock.contended.2proc).
//!Returns: true if the lock was taken.
inline bool backoff_spin(std::atomic<std::uint64_t>& owner, std::uint64_t me,
                         const Deadline& deadline) noexcept {
  for (int round = 0; round < kBackoffRounds; ++round) {
    const auto until = Deadline::clock::now() + kBackoffRound;
    while (Deadline::clock::now() < until) os::cpu_relax();
    std::uint64_t w = kFree;
    if (owner.compare_exchange_strong(w, me | kContended, std::memory_order_acquire,
                                      std::memory_order_relaxed))
      return true;
    if (deadline.expired()) return false;
  }
  return false;
}

//!Effects: the robust acquire loop shared by LockState and RLockState: CAS free -> me (an owner
//! word, see owner_word()) on `owner`, sleeping with the contended bit set (see the top of this
//! file); at least every kPollInterval, a dead holder's exact word is replaced by `me`.
//!Throws: CorruptedError naming `name` (see name_of) if the word lost its live bit.
template <class N>
LockResult robust_acquire(std::atomic<std::uint64_t>& owner, WaitPoint& wp, std::uint64_t me,
                          const Deadline& deadline, const N& name) {
  std::uint64_t w = kFree;
  if (owner.compare_exchange_strong(w, me, std::memory_order_acquire, std::memory_order_relaxed))
    return LockResult::acquired;
  return robust_wait(owner, wp, me, deadline, name_of(name));
}

/// The state of one robust_wait(): the lock, the caller, and what the sleeps so far have seen.
class RobustWaiter {
 public:
  RobustWaiter(std::atomic<std::uint64_t>& owner, WaitPoint& wp, std::uint64_t me,
               const Deadline& deadline, std::string_view name) noexcept
      : owner_(owner),
        wp_(wp),
        me_(me),
        deadline_(deadline),
        name_(name),
        last_check_(deadline.infinite() ? Deadline::clock::time_point{} : Deadline::clock::now()) {}

  //!Effects: glibc's protocol: sleeps on the owner word itself (its low half: the holder's pid
  //! and the contended bit). Whoever takes the lock after sleeping marks it contended, since
  //! others may still sleep; a release that finds the mark wakes one sleeper.
  LockResult wait_on_owner_word() {
    for (;;) {
      std::uint64_t w = owner_.load(std::memory_order_relaxed);
      if (w == kFree) {
        if (owner_.compare_exchange_strong(w, me_ | kContended, std::memory_order_acquire,
                                           std::memory_order_relaxed))
          return LockResult::acquired;
        continue;
      }
      if (!live(w)) lock_cut(owner_, w, name_);
      if (spin_after_lost_race()) return LockResult::acquired;
      bool woken = true;
      if (mark_contended(w, std::memory_order_relaxed))
        woken = os::wait_on_address(low_word(owner_), low_half(w | kContended), slice());
      lost_race_ = woken;
      if (const auto r = poll(woken)) return *r;
    }
  }

  //!Effects: for wake-ups that are kept when nobody sleeps (Win32 semaphores): counts the
  //! sleepers in the WaitPoint and sleeps on its sequence, so a release wakes only counted ones.
  LockResult wait_counted() {
    for (;;) {
      // Count ourselves, then look: a release either sees us counted (and bumps seq, so the wait
      // returns at once) or freed the lock before our load (Dekker via seq_cst, as in WaitPoint).
      wp_.sleepers.fetch_add(1, std::memory_order_seq_cst);
      const std::uint32_t seq = wp_.seq.load(std::memory_order_seq_cst);
      std::uint64_t w = owner_.load(std::memory_order_seq_cst);
      if (!live(w)) {
        uncount();
        lock_cut(owner_, w, name_);
      }
      if (w == kFree) {
        if (take_free_counted(w)) return LockResult::acquired;
        continue;
      }
      if (lost_race_ && !spun_) {  // spin uncounted: a release need not wake us
        uncount();
        if (spin_after_lost_race()) return LockResult::acquired;
        continue;
      }
      bool woken = true;
      if (mark_contended(w, std::memory_order_seq_cst))
        woken = os::wait_on_address(wp_.seq, seq, slice());
      uncount();
      lost_race_ = woken;
      if (const auto r = poll(woken)) return *r;
    }
  }

 private:
  /// Without a deadline the clock is read only after a sleep that timed out (a dead holder
  /// releases nothing, so its waiters time out) and every kClocklessWakes wake-ups: a read per
  /// wake-up costs contended throughput (benchmarks row lock.contended.2proc).
  static constexpr std::uint32_t kClocklessWakes = 64;

  /// One sleep: until woken, at most a poll interval, at most until the deadline.
  std::optional<std::chrono::nanoseconds> slice() const {
    const auto left = deadline_.remaining();
    return left && *left < kPollInterval ? *left : std::chrono::nanoseconds(kPollInterval);
  }

  //!Effects: after each sleep (`woken`: not timed out), at least every poll interval and at the
  //! deadline: takes over from a dead holder or gives up.
  //!Returns: the result, or nullopt to sleep again.
  std::optional<LockResult> poll(bool woken) {
    if (woken && deadline_.infinite() && ++wakes_ % kClocklessWakes != 0) return std::nullopt;
    const auto now = Deadline::clock::now();
    if (now - last_check_ < kPollInterval && !deadline_.expired()) return std::nullopt;
    last_check_ = now;
    if (take_over_if_dead(owner_, me_, name_)) return LockResult::owner_died;
    if (!deadline_.expired()) return std::nullopt;
    // We may have been the sleeper a release woke: pass the wake-up on before leaving.
    wake_one_after_timeout(owner_, wp_);
    return LockResult::timeout;
  }

  /// After a wake-up (not a timeout) that finds the lock held: spins once per acquire.
  bool spin_after_lost_race() {
    if (!lost_race_ || spun_) return false;
    spun_ = true;
    return backoff_spin(owner_, me_, deadline_);
  }

  /// True when the held word `w` is (now) marked contended, so that its release wakes a sleeper.
  bool mark_contended(std::uint64_t& w, std::memory_order success) {
    return (w & kContended) != 0 ||
           owner_.compare_exchange_strong(w, w | kContended, success, std::memory_order_relaxed);
  }

  //!Effects: takes the free word `w` while counted as a sleeper, keeping the chain of wake-ups
  //! going (if others sleep, our release must wake one of them); uncounts.
  bool take_free_counted(std::uint64_t& w) {
    const bool others = wp_.sleepers.load(std::memory_order_seq_cst) > 1;
    const bool got = owner_.compare_exchange_strong(
        w, me_ | (others ? kContended : 0), std::memory_order_acquire, std::memory_order_relaxed);
    uncount();
    return got;
  }

  void uncount() noexcept { wp_.sleepers.fetch_sub(1, std::memory_order_relaxed); }

  std::atomic<std::uint64_t>& owner_;
  WaitPoint& wp_;
  const std::uint64_t me_;
  const Deadline& deadline_;
  const std::string_view name_;
  std::uint32_t wakes_ = 0;
  Deadline::clock::time_point last_check_;
  bool lost_race_ = false;  ///< the last sleep was woken, yet the lock was taken again
  bool spun_ = false;       ///< backoff_spin() already ran in this acquire
};

//!Effects: robust_acquire() after its first CAS failed.
inline LockResult robust_wait(std::atomic<std::uint64_t>& owner, WaitPoint& wp, std::uint64_t me,
                              const Deadline& deadline, std::string_view name) {
  if (deadline.expired())  // non-blocking: no sleep; only repair a dead holder
    return take_over_if_dead(owner, me, name) ? LockResult::owner_died : LockResult::timeout;
  RobustWaiter waiter(owner, wp, me, deadline, name);
  if constexpr (os::kExactWake)
    return waiter.wait_on_owner_word();
  else
    return waiter.wait_counted();
}

//!Effects: releases `owner` (exchange to free) and wakes one sleeper if a waiter marked the lock
//! contended. A word that had lost its live bit (cut) is put back as it was: left free, the
//! vanished lock would go on working (in a private zero page: for this process only) and
//! nobody would be told. In the instant it read free, one acquirer may have taken it alone; the
//! put-back then cuts it under that holder, whose release puts it back in turn.
//!Returns: the previous owner word (holder() 0: the lock was not held; !live(): it was cut).
inline std::uint64_t robust_release(std::atomic<std::uint64_t>& owner, WaitPoint& wp) noexcept {
  // The seq_cst exchange pairs with the waiter's seq_cst "sleepers++; load owner" (see above).
  // An exchange, not a load and a CAS, which is slower for an uncontended lock (benchmarks row
  // lock.uncontended).
  const std::uint64_t prev = owner.exchange(kFree, std::memory_order_seq_cst);
  if (!live(prev)) [[unlikely]] {
    owner.store(prev, std::memory_order_seq_cst);
    return prev;
  }
  if ((prev & kContended) != 0) {
    if constexpr (os::kExactWake)
      os::wake_address(low_word(owner), 1);
    else
      wp.notify_one();
  }
  return prev;
}

}  // namespace sync_impl

/// A robust, non-recursive, process-shared lock (Python's multiprocessing.Lock) in shared memory.
/// Valid after `new (p) LockState()` (free); zero-filled memory is not a lock (it reads as one
/// a truncation cut: see the top of this file). 16 bytes, the owner word last.
/// Not owned by a thread: like Python's Lock, any process or thread may release it.
/// No "not yet repaired" mark is kept here: whoever acquires a lock whose holder died is told
/// (owner_died), and if it dies before repairing, the next acquirer takes over from it and is
/// told in turn. RLockState keeps such a mark for Value and Array (see there).
struct LockState {
  WaitPoint wp;  ///< where waiters sleep if wake-ups are not exact (Win32); else unused
  std::atomic<std::uint64_t> owner{sync_impl::kFree};  ///< owner word: holder, flags, live bit

  //!Effects: acquires the lock, waiting until `deadline`; takes it over if its holder died.
  //! Uncontended: one CAS, no system call.
  //!Returns: acquired, owner_died (acquired; the previous holder died holding it) or timeout.
  //!Throws: CorruptedError naming `name` (a string, or a callable returning one, called only
  //! then) if the lock's segment was truncated under it.
  template <class N = std::string_view>
  LockResult acquire(const Deadline& deadline, const N& name = {}) {
    return sync_impl::robust_acquire(owner, wp, sync_impl::self_word(), deadline, name);
  }
  /// Acquires the lock if it is free (one CAS; never takes over from a dead holder, never
  /// acquires a cut lock).
  bool try_acquire() noexcept {
    std::uint64_t e = sync_impl::kFree;
    return owner.compare_exchange_strong(e, sync_impl::self_word(), std::memory_order_acquire,
                                         std::memory_order_relaxed);
  }
  //!Effects: releases the lock and wakes one waiter if any sleeps. No system call otherwise.
  //! A cut lock (see cut()) is left alone: nothing is left to release, and every acquirer gets
  //! CorruptedError.
  //!Returns: false if the lock was not held (the caller decides whether that is an error).
  bool release() noexcept {
    const std::uint64_t prev = sync_impl::robust_release(owner, wp);
    return !sync_impl::live(prev) || sync_impl::holder(prev) != 0;
  }
  /// True while someone holds the lock.
  bool locked() const noexcept {
    return sync_impl::holder(owner.load(std::memory_order_relaxed)) != 0;
  }
  /// True if the holder is this process (any of its threads).
  bool held_by_this_process() const noexcept {
    return sync_impl::holder(owner.load(std::memory_order_relaxed)) ==
           sync_impl::holder(sync_impl::self_word());
  }
  /// True if the lock's word lost its live bit: its segment was truncated (or overwritten).
  bool cut() const noexcept { return !sync_impl::live(owner.load(std::memory_order_relaxed)); }
};
static_assert(std::is_standard_layout_v<LockState> && sizeof(LockState) == 16);
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);

/// The RLockState this thread last took fresh (depth 1) and has not acquired or released since,
/// and the pid that took it: releasing exactly that lock needs no read of its (contended) line.
struct FreshTake {
  const void* lock = nullptr;
  os::pid_type pid = 0;
};
/// This thread's FreshTake.
inline FreshTake& fresh_take() noexcept {
  static thread_local FreshTake f;
  return f;
}

/// A robust re-entrant lock (Python's RLock): owned by one thread of one process, which may
/// acquire it again; it is free once released as many times as acquired. Valid after
/// `new (p) RLockState()`; the owner word comes last (see the top of this file).
///
/// "Owner died, not yet repaired": the data an RLock protects (a Value's or an Array's elements)
/// may be half-written when a holder dies. The acquirer that takes the lock over sets `died`,
/// which stays in shared memory until a holder that was told declares the data repaired
/// (mark_repaired()). Until then every fresh acquisition (depth 1) returns owner_died, whoever
/// makes it, so no internal acquisition can swallow the news: Value::value() raises
/// OwnerDiedError, RLock::acquire() reports previous_owner_died().
struct RLockState {
  /// The value of `died` while a dead holder's data waits for repair.
  static constexpr std::uint32_t kDiedMark = 1;

  std::atomic<std::uint64_t> thread{0};  ///< thread_tag() of the owning thread (0 while changing)
  std::atomic<std::uint32_t> count{0};   ///< recursion depth; written by the owner only
  std::atomic<std::uint32_t> died{0};    ///< kDiedMark: a holder died, data not yet repaired
  WaitPoint wp;  ///< where waiters sleep if wake-ups are not exact (Win32); else unused
  std::atomic<std::uint64_t> owner{sync_impl::kFree};  ///< owner word of the owning process

  /// True if the calling thread owns the lock.
  bool is_owned() const noexcept {
    // Only the owning thread ever writes its own tag, so a stale read can never show ours.
    return sync_impl::holder(owner.load(std::memory_order_relaxed)) ==
               sync_impl::holder(sync_impl::self_word()) &&
           thread.load(std::memory_order_relaxed) == thread_tag();
  }
  //!Effects: acquires (or re-enters) the lock, waiting until `deadline`; takes it over from a
  //! dead holder. Returns: acquired, owner_died (a fresh take while the data waits for repair:
  //! taken over now, or earlier and not repaired since) or timeout.
  //!Throws: CorruptedError naming `name` (see LockState::acquire) if the lock's segment was
  //! truncated under it.
  template <class N = std::string_view>
  LockResult acquire(const Deadline& deadline, const N& name = {}) {
    return acquire_with_count(deadline, 0, name);
  }
  /// Acquires or re-enters the lock if that needs no waiting (never takes over from a dead
  /// holder). Does not tell about a dead holder: use acquire() with an expired deadline for that.
  bool try_acquire() noexcept { return take_or_reenter(0) != Take::none; }
  //!Effects: undoes one acquire; frees the lock (waking a waiter) when the count reaches zero.
  //! A cut lock (see cut()) is left alone: nothing is left to release.
  //!Returns: false if the calling thread does not own the lock (nothing changes).
  bool release() noexcept {
    FreshTake& f = fresh_take();
    const bool fresh = f.lock == this && f.pid == os::current_pid();
    f.lock = nullptr;
    if (fresh) {  // taken by this thread at depth 1 and untouched since: owned, count 1
      free_owned();
      return true;
    }
    if (cut()) return true;
    if (!is_owned()) return false;
    const std::uint32_t c = count.load(std::memory_order_relaxed);
    if (c > 1)
      count.store(c - 1, std::memory_order_relaxed);
    else
      free_owned();
    return true;
  }
  /// Recursion depth if the calling thread owns the lock, else 0.
  std::uint32_t depth() const noexcept {
    return is_owned() ? count.load(std::memory_order_relaxed) : 0;
  }
  //!Effects: frees the lock whatever the recursion depth (for Condition::wait).
  //!Returns: the depth to give back to acquire_restore(), or 0 if the caller did not own it.
  std::uint32_t release_all() noexcept {
    fresh_take().lock = nullptr;
    if (!is_owned()) return 0;
    const std::uint32_t c = count.load(std::memory_order_relaxed);
    free_owned();
    return c == 0 ? 1 : c;
  }
  /// Re-acquires after release_all() with the saved depth (results as acquire()).
  template <class N = std::string_view>
  LockResult acquire_restore(std::uint32_t depth, const Deadline& deadline, const N& name = {}) {
    return acquire_with_count(deadline, depth, name);
  }
  /// True while someone holds the lock.
  bool locked() const noexcept {
    return sync_impl::holder(owner.load(std::memory_order_relaxed)) != 0;
  }
  /// True if a holder died and no holder declared the data repaired since (see the class).
  bool unrepaired() const noexcept { return died.load(std::memory_order_relaxed) != 0; }
  /// (Holder only.) Declares the protected data repaired: clears the owner-died mark.
  void mark_repaired() noexcept {
    if (died.load(std::memory_order_relaxed) != 0) died.store(0, std::memory_order_relaxed);
  }
  /// True if the lock's word lost its live bit: its segment was truncated (or overwritten).
  bool cut() const noexcept { return !sync_impl::live(owner.load(std::memory_order_relaxed)); }

 private:
  enum class Take { none, fresh, reentered };
  /// Frees the lock, which the calling thread owns.
  void free_owned() noexcept {
    // `count` means something only while owned: the next acquire sets it.
    thread.store(0, std::memory_order_relaxed);  // before the release that publishes it
    sync_impl::robust_release(owner, wp);
  }
  //!Effects: takes the lock if it is free (with recursion depth `depth`, or 1 if 0), or, when
  //! `depth` is 0, re-enters it if the calling thread owns it. Returns: what happened.
  Take take_or_reenter(std::uint32_t depth) noexcept {
    // The CAS comes first: reading the owner word first would fetch a contended line shared,
    // then pay a second transfer to own it.
    const std::uint64_t me = sync_impl::self_word();
    std::uint64_t e = sync_impl::kFree;
    if (owner.compare_exchange_strong(e, me, std::memory_order_acquire,
                                      std::memory_order_relaxed)) {
      took(depth);
      return Take::fresh;
    }
    fresh_take().lock = nullptr;
    // Only the owning thread ever writes its own tag, so a stale read can never show ours.
    if (depth != 0 || sync_impl::holder(e) != sync_impl::holder(me) ||
        thread.load(std::memory_order_relaxed) != thread_tag())
      return Take::none;
    count.store(count.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    return Take::reentered;
  }
  /// Records a take of the free lock by this thread, with recursion depth `depth` (0 means 1).
  void took(std::uint32_t depth) noexcept {
    thread.store(thread_tag(), std::memory_order_relaxed);
    count.store(depth == 0 ? 1 : depth, std::memory_order_relaxed);
    FreshTake& f = fresh_take();
    f.lock = depth <= 1 ? this : nullptr;
    f.pid = os::current_pid();
  }
  /// The result of a fresh take: owner_died while the mark is set.
  LockResult fresh_result() const noexcept {
    return died.load(std::memory_order_relaxed) != 0 ? LockResult::owner_died
                                                     : LockResult::acquired;
  }
  template <class N>
  LockResult acquire_with_count(const Deadline& deadline, std::uint32_t depth, const N& name) {
    switch (take_or_reenter(depth)) {
      case Take::fresh:
        return fresh_result();
      case Take::reentered:
        return LockResult::acquired;
      case Take::none:
        break;
    }
    const LockResult r = sync_impl::robust_wait(owner, wp, sync_impl::self_word(), deadline,
                                                sync_impl::name_of(name));
    if (r == LockResult::timeout) return r;
    took(depth);
    // Set while holding: a taker that dies before this line is taken over in turn.
    if (r == LockResult::owner_died) died.store(kDiedMark, std::memory_order_relaxed);
    return fresh_result();
  }
};
static_assert(std::is_standard_layout_v<RLockState> && sizeof(RLockState) == 32);

/// A counting semaphore (Python's Semaphore / BoundedSemaphore). No owner, as in Python: a unit
/// taken by a process that dies is not given back (a dead acquirer lowers the value for good;
/// size the count or use a Lock when a death must be recovered). Valid once constructed; the
/// value word, last, carries the live bit (see the top of this file).
struct SemaphoreState {
  /// Largest value a semaphore can hold (Python's SEM_VALUE_MAX on Linux).
  static constexpr std::uint32_t kValueMax = 0x7fffffff;
  /// Bit of `value` set in every valid state (a cut clears it).
  static constexpr std::uint32_t kLive = 0x80000000u;

  WaitPoint wp;                             ///< sleepers waiting for value > 0
  std::uint32_t max_value{0};               ///< BoundedSemaphore's bound; 0 = unbounded. Read-only.
  std::atomic<std::uint32_t> value{kLive};  ///< kLive | units available

  SemaphoreState() noexcept = default;
  /// A semaphore holding `initial` units, bounded by `bound` (0: unbounded).
  SemaphoreState(std::uint32_t initial, std::uint32_t bound) noexcept
      : max_value(bound), value(kLive | initial) {}

  //!Effects: takes a unit if one is available (no system call).
  //!Throws: CorruptedError naming `name` if the semaphore's segment was truncated under it.
  template <class N = std::string_view>
  bool try_acquire(const N& name = {}) {
    std::uint32_t v = value.load(std::memory_order_relaxed);
    for (;;) {
      if ((v & kLive) == 0)
        sync_impl::state_cut(&value, "semaphore's value", sync_impl::name_of(name), v);
      if (v == kLive) return false;
      if (value.compare_exchange_weak(v, v - 1, std::memory_order_acquire,
                                      std::memory_order_relaxed))
        return true;
    }
  }
  //!Effects: takes a unit, waiting until `deadline`. Returns: false on timeout.
  //!Throws: CorruptedError (see try_acquire).
  template <class N = std::string_view>
  bool acquire(const Deadline& deadline, const N& name = {}) {
    if (try_acquire(name)) return true;
    return wp.wait([&] { return try_acquire(name); }, deadline);
  }
  //!Effects: adds `n` units and wakes as many sleepers.
  //!Returns: false, changing nothing, if that would exceed the bound (or kValueMax).
  //!Throws: CorruptedError (see try_acquire).
  template <class N = std::string_view>
  bool release(std::uint32_t n = 1, const N& name = {}) {
    const std::uint32_t limit = max_value != 0 ? max_value : kValueMax;
    std::uint32_t v = value.load(std::memory_order_relaxed);
    do {
      if ((v & kLive) == 0)
        sync_impl::state_cut(&value, "semaphore's value", sync_impl::name_of(name), v);
      const std::uint32_t units = v & ~kLive;
      if (units > limit || n > limit - units) return false;
    } while (!value.compare_exchange_weak(v, v + n, std::memory_order_seq_cst,
                                          std::memory_order_relaxed));
    // seq_cst CAS, then seq_cst load: pairs with the sleeper's "sleepers++; re-check value".
    if (wp.sleepers.load(std::memory_order_seq_cst) != 0) {
      if (n == 1)
        wp.notify_one();
      else
        wp.notify_all();
    }
    return true;
  }
  //!Returns: the units available now. Throws: CorruptedError (see try_acquire).
  std::uint32_t get_value(std::string_view name = {}) const {
    const std::uint32_t v = value.load(std::memory_order_relaxed);
    if ((v & kLive) == 0) sync_impl::state_cut(&value, "semaphore's value", name, v);
    return v & ~kLive;
  }
};
static_assert(std::is_standard_layout_v<SemaphoreState> && sizeof(SemaphoreState) == 16);

/// Python's Event: a flag that waiters sleep on. Valid once constructed (clear); the flag word,
/// last, carries the live bit (see the top of this file).
struct EventState {
  /// Bit of `flag` set in every valid state (a cut clears it).
  static constexpr std::uint32_t kLive = 0x80000000u;
  /// Bit of `flag` set while the event is set.
  static constexpr std::uint32_t kSet = 1;

  WaitPoint wp;  ///< sleepers waiting for the flag
  std::uint32_t reserved_{0};
  std::atomic<std::uint32_t> flag{kLive};  ///< kLive | kSet when set

  //!Effects: sets the flag and wakes every waiter. Throws: CorruptedError if the event's segment
  //! was truncated under it (a set that nobody would see).
  template <class N = std::string_view>
  void set(const N& name = {}) {
    // fetch_or cannot bring a cut word back: the live bit stays clear for everyone.
    const std::uint32_t prev = flag.fetch_or(kSet, std::memory_order_seq_cst);
    if ((prev & kLive) == 0)
      sync_impl::state_cut(&flag, "event's flag", sync_impl::name_of(name), prev);
    wp.notify_all();
  }
  /// Clears the flag. Throws: CorruptedError (see set()).
  void clear(std::string_view name = {}) {
    const std::uint32_t prev = flag.fetch_and(~kSet, std::memory_order_seq_cst);
    if ((prev & kLive) == 0) sync_impl::state_cut(&flag, "event's flag", name, prev);
  }
  /// True if the flag is set. Throws: CorruptedError (see set()).
  template <class N = std::string_view>
  bool is_set(const N& name = {}) const {
    const std::uint32_t v = flag.load(std::memory_order_acquire);
    if ((v & kLive) == 0) sync_impl::state_cut(&flag, "event's flag", sync_impl::name_of(name), v);
    return (v & kSet) != 0;
  }
  //!Effects: waits until the flag is set or `deadline` passes. Returns: the flag.
  //!Throws: CorruptedError (see set()).
  bool wait(const Deadline& deadline, std::string_view name = {}) {
    return wp.wait([&] { return is_set(name); }, deadline);
  }
};
static_assert(std::is_standard_layout_v<EventState> && sizeof(EventState) == 16);

/// Most threads (of all processes) that may wait on one Condition at the same time.
inline constexpr std::uint32_t kConditionSlots = 64;

/// One waiter of a Condition. Claimed and freed under the condition's lock.
struct ConditionSlot {
  static constexpr std::uint32_t kFree = 0, kWaiting = 1, kNotified = 2;
  std::atomic<std::uint64_t> owner{0};   ///< packed ProcessRef of the waiter, 0 when free
  std::atomic<std::uint64_t> ticket{0};  ///< arrival order (notify wakes the oldest first)
  std::atomic<std::uint32_t> state{0};   ///< kFree, kWaiting or kNotified
  std::uint32_t reserved_{0};
  WaitPoint wp;  ///< this waiter sleeps here, so a notify wakes exactly the waiters it chose
};
static_assert(std::is_standard_layout_v<ConditionSlot> && sizeof(ConditionSlot) == 32);

/// Python's Condition, over a lock the caller supplies (a LockState or RLockState anywhere).
/// Every field changes only under that lock; a waiter reads its own slot's state while asleep.
/// Exact: notify(n) wakes the n oldest waiters. A waiter that died (killed while waiting) is
/// skipped by notify when it matters (fewer notifications than waiters) and its slot is reaped
/// when the table is full. Valid once constructed (no waiters); ends with `live` (see the top of
/// this file), checked before the table is trusted.
struct ConditionState {
  std::atomic<std::uint64_t> next_ticket{0};
  std::atomic<std::uint32_t> waiting{0};  ///< slots in state kWaiting
  std::uint32_t reserved_{0};
  ConditionSlot slots[kConditionSlots];
  std::atomic<std::uint64_t> live{sync_impl::kLiveMark};  ///< cleared by a truncation

  //!Effects: (caller holds the lock) registers as a waiter, calls `unlock()`, sleeps until
  //! notified or `deadline` (or until `lock_cut()` says the lock was truncated: nobody could
  //! notify then), then calls `relock()` (which must re-acquire without a deadline).
  //!Returns: true if notified. Throws: Error if kConditionSlots threads already wait;
  //! CorruptedError naming `name` (after relock()) if the condition's segment was truncated.
  template <class Unlock, class Relock, class LockCut>
  bool wait(const Deadline& deadline, Unlock&& unlock, Relock&& relock, LockCut&& lock_cut,
            std::string_view name = {}) {
    check_live(name);
    ConditionSlot& s = slots[claim()];
    unlock();
    s.wp.wait(
        [&] {
          return s.state.load(std::memory_order_acquire) == ConditionSlot::kNotified ||
                 live.load(std::memory_order_acquire) != sync_impl::kLiveMark || lock_cut();
        },
        deadline);
    relock();
    check_live(name);  // the lock is held again, as every wait() returns
    const bool notified = s.state.load(std::memory_order_relaxed) == ConditionSlot::kNotified;
    if (!notified) dec_waiting();
    s.state.store(ConditionSlot::kFree, std::memory_order_relaxed);
    s.owner.store(0, std::memory_order_relaxed);
    return notified;
  }

  //!Effects: (caller holds the lock) wakes up to `n` waiters, oldest first.
  //!Returns: how many were woken. Throws: CorruptedError (see wait()).
  std::uint32_t notify(std::uint32_t n, std::string_view name = {}) {
    check_live(name);
    std::uint32_t woken = 0;
    const std::uint64_t self_pid = static_cast<std::uint32_t>(ProcessRef::self().pid);
    while (woken < n) {
      const std::uint32_t w = waiting.load(std::memory_order_relaxed);
      if (w == 0) break;
      ConditionSlot* oldest = nullptr;
      for (auto& s : slots)
        if (s.state.load(std::memory_order_relaxed) == ConditionSlot::kWaiting &&
            (oldest == nullptr || s.ticket.load(std::memory_order_relaxed) <
                                      oldest->ticket.load(std::memory_order_relaxed)))
          oldest = &s;
      if (oldest == nullptr) {  // the count drifted (a peer died mid-update): repair it
        waiting.store(0, std::memory_order_relaxed);
        break;
      }
      // Choosing among more waiters than notifications: do not waste one on a dead waiter.
      const std::uint64_t owner = oldest->owner.load(std::memory_order_relaxed);
      if (n - woken < w && (owner & 0xffffffffu) != self_pid &&
          !ProcessRef::unpack(owner).alive()) {
        oldest->state.store(ConditionSlot::kFree, std::memory_order_relaxed);
        oldest->owner.store(0, std::memory_order_relaxed);
        dec_waiting();
        continue;
      }
      oldest->state.store(ConditionSlot::kNotified, std::memory_order_seq_cst);
      dec_waiting();
      // seq_cst store, then seq_cst load: pairs with the sleeper's "sleepers++; re-check".
      if (oldest->wp.sleepers.load(std::memory_order_seq_cst) != 0) oldest->wp.notify_one();
      ++woken;
    }
    return woken;
  }

  /// Waiters registered now (including any that died while waiting).
  std::uint32_t n_waiting() const noexcept { return waiting.load(std::memory_order_relaxed); }
  /// Throws: CorruptedError naming `name` if a truncation cleared `live`.
  void check_live(std::string_view name) const {
    const std::uint64_t v = live.load(std::memory_order_acquire);
    if (v != sync_impl::kLiveMark) sync_impl::state_cut(&live, "condition's waiter table", name, v);
  }

 private:
  void dec_waiting() noexcept {
    const std::uint32_t w = waiting.load(std::memory_order_relaxed);
    waiting.store(w == 0 ? 0 : w - 1, std::memory_order_relaxed);
  }
  std::uint32_t claim() {
    const std::uint64_t me = ProcessRef::self().pack();
    for (int pass = 0; pass < 2; ++pass) {
      for (std::uint32_t i = 0; i < kConditionSlots; ++i) {
        ConditionSlot& s = slots[i];
        const std::uint64_t owner = s.owner.load(std::memory_order_relaxed);
        if (owner != 0) {
          // Second pass: reap the slot of a waiter that died.
          if (pass == 0 || owner == me || ProcessRef::unpack(owner).alive()) continue;
          if (s.state.load(std::memory_order_relaxed) == ConditionSlot::kWaiting) dec_waiting();
        }
        s.owner.store(me, std::memory_order_relaxed);
        s.ticket.store(next_ticket.load(std::memory_order_relaxed), std::memory_order_relaxed);
        next_ticket.store(next_ticket.load(std::memory_order_relaxed) + 1,
                          std::memory_order_relaxed);
        s.state.store(ConditionSlot::kWaiting, std::memory_order_relaxed);
        waiting.store(waiting.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
        return i;
      }
    }
    fail<Error>("more than {} threads wait on one Condition at once; that is mpp's limit",
                kConditionSlots);
  }
};
static_assert(std::is_standard_layout_v<ConditionState>);

}  // namespace mpp::detail
