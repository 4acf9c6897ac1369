// mpp — the in-segment state of a Barrier: its parties, generation and waiters, and what every
// process needs to complete it — the default timeout and the action's registered name — stored
// as data, so a spawn or forkserver child that arrives last times out and runs the action as the
// creator would.
#pragma once

#include <algorithm>
#include <atomic>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>

#include "../errors.hpp"
#include "../timeout.hpp"
#include "function_registry.hpp"
#include "liveness.hpp"
#include "sync_state.hpp"
#include "wait.hpp"

namespace mpp::detail {

/// Most parties a Barrier can have (each waiting party is tracked by its ProcessRef; a barrier
/// touches the pages of its first `parties` entries only).
inline constexpr std::uint32_t kMaxBarrierParties = 4096;
/// Longest registered name a Barrier's action may have.
inline constexpr std::size_t kMaxBarrierActionName = 120;

/// What a Barrier runs when it trips.
enum class BarrierActionKind : std::uint32_t {
  none = 0,        ///< no action
  registered = 1,  ///< a registered function, run by name in whichever process arrives last
  local = 2,       ///< a callable only the creating handle (and its forked copies) holds
};

/// How a Barrier is made: the data every process reads from its shared memory.
struct BarrierConfig {
  std::uint32_t parties = 1;  ///< 1..kMaxBarrierParties (the handle checks)
  Timeout timeout;            ///< the default of wait()
  BarrierActionKind action = BarrierActionKind::none;
  std::string_view action_name;  ///< the registered name (BarrierActionKind::registered)
};

/// Python's Barrier. Waiting parties are recorded by ProcessRef, so a party that dies while the
/// others wait breaks the barrier (BrokenBarrierError in every waiter) instead of hanging them.
/// Valid after `new (p) BarrierState(config)`; zero-filled memory is not (no parties). Every
/// operation checks `live` (last) after taking the lock and after each sleep, so a truncated
/// barrier raises CorruptedError instead of releasing its waiters on a zeroed generation.
struct BarrierState {
  LockState lock;  ///< guards the atomics below (robust: a party may die holding it)
  WaitPoint wp;    ///< waiters sleep here until the generation changes or the barrier breaks
  std::atomic<std::uint32_t> parties{0};
  std::atomic<std::uint32_t> count{0};       ///< parties waiting in this generation
  std::atomic<std::uint32_t> generation{0};  ///< bumped when the barrier trips or is reset
  std::atomic<std::uint32_t> broken{0};      ///< 1 after abort(), a timeout or a dead party
  std::atomic<std::uint64_t> reset_mask{0};  ///< bit g % 64: generation g ended by reset()
  // Written once by the constructor, before any other process sees the barrier.
  std::uint64_t timeout_bits_ = kNoTimeout;  ///< a double's bits, or kNoTimeout
  std::uint32_t action_kind_ = 0;            ///< a BarrierActionKind
  std::uint32_t action_len_ = 0;             ///< bytes of action_name_ in use
  char action_name_[kMaxBarrierActionName]{};
  /// ProcessRef by arrival index, through waiting(i). No initializer: the segment is zero-filled,
  /// and writing all of it would allocate every page for a barrier of a few parties.
  std::uint64_t waiting_[kMaxBarrierParties];
  std::atomic<std::uint64_t> live{sync_impl::kLiveMark};  ///< cleared by a truncation (see top)

  /// The timeout_bits_ of a barrier without a default timeout (a NaN no Timeout produces).
  static constexpr std::uint64_t kNoTimeout = ~std::uint64_t{0};

  BarrierState() noexcept = default;
  /// A barrier as `c` says (the handle checked the party count and the action's name).
  explicit BarrierState(const BarrierConfig& c) noexcept
      : parties(c.parties),
        timeout_bits_(c.timeout ? std::bit_cast<std::uint64_t>(c.timeout->count()) : kNoTimeout),
        action_kind_(static_cast<std::uint32_t>(c.action)),
        action_len_(
            static_cast<std::uint32_t>(std::min(c.action_name.size(), sizeof action_name_))) {
    std::memcpy(action_name_, c.action_name.data(), action_len_);
  }

  //!Effects: waits until `parties` processes/threads have called wait(); the last one runs
  //! `action` first (if it throws, the barrier breaks and the exception propagates).
  //!Returns: this caller's arrival index, 0..parties-1.
  //!Throws: BrokenBarrierError (broken, reset, aborted, timed out or a waiting party died),
  //! CorruptedError if the shared fields are out of range or the segment was truncated.
  template <class Action>
  std::uint32_t wait(const Deadline& deadline, Action&& action, std::string_view name) {
    const Arrival a = arrive(name);
    if (a.index + 1 == a.parties)
      trip(a, action, name);
    else
      await_trip(a, deadline, name);
    return a.index;
  }

  /// Breaks the barrier: current and future waiters get BrokenBarrierError until reset().
  /// Throws: CorruptedError naming `name` if the barrier's segment was truncated.
  void abort(std::string_view name = {}) {
    lock_internal(name);
    break_locked();
    release_and_wake();
  }
  /// Returns the barrier to its initial state; parties waiting now get BrokenBarrierError.
  /// Throws: CorruptedError naming `name` if the barrier's segment was truncated.
  void reset(std::string_view name = {}) {
    // A holder that died inside the critical section needs no repair here: reset() rewrites
    // every field the lock protects.
    (void)lock.acquire(Deadline::never(), name);
    if (live.load(std::memory_order_acquire) != sync_impl::kLiveMark) {
      lock.release();
      check_live(name);
    }
    const std::uint32_t gen = generation.load(std::memory_order_relaxed);
    reset_mask.fetch_or(std::uint64_t{1} << (gen % 64), std::memory_order_relaxed);
    clear_arrivals(std::min(parties.load(std::memory_order_relaxed), kMaxBarrierParties));
    broken.store(0, std::memory_order_relaxed);
    start_generation(gen + 1);
    release_and_wake();
  }
  /// Parties waiting now (0 when broken).
  std::uint32_t n_waiting() const noexcept {
    return broken.load(std::memory_order_relaxed) != 0 ? 0 : count.load(std::memory_order_relaxed);
  }
  /// True if the barrier is broken.
  bool is_broken() const noexcept { return broken.load(std::memory_order_relaxed) != 0; }

  /// The default timeout of wait(), as the creator gave it.
  Timeout default_timeout() const noexcept {
    if (timeout_bits_ == kNoTimeout) return {};
    return Timeout(std::bit_cast<double>(timeout_bits_));
  }
  //!Returns: what the barrier runs when it trips. Throws: CorruptedError if the stored kind or
  //! name length is out of range.
  BarrierActionKind action_kind(std::string_view name) const {
    if (action_kind_ > static_cast<std::uint32_t>(BarrierActionKind::local) ||
        action_len_ > sizeof action_name_)
      fail<CorruptedError>("barrier '{}': invalid action record (kind {}, {} bytes)", name,
                           action_kind_, action_len_);
    return static_cast<BarrierActionKind>(action_kind_);
  }
  /// The registered name of the action (empty unless action_kind() is registered).
  std::string_view action_name() const noexcept {
    return {action_name_, std::min<std::size_t>(action_len_, sizeof action_name_)};
  }

  /// Throws: CorruptedError naming `name` if a truncation cleared `live`.
  void check_live(std::string_view name) const {
    const std::uint64_t v = live.load(std::memory_order_acquire);
    if (v != sync_impl::kLiveMark) sync_impl::state_cut(&live, "barrier's state", name, v);
  }
  //!Returns: the number of parties. Throws: CorruptedError if out of range.
  std::uint32_t checked_parties(std::string_view name) const {
    const std::uint32_t n = parties.load(std::memory_order_relaxed);
    if (n == 0 || n > kMaxBarrierParties)
      fail<CorruptedError>("barrier '{}': {} parties stored (valid: 1..{})", name, n,
                           kMaxBarrierParties);
    return n;
  }

 private:
  // One party's place in one generation.
  struct Arrival {
    std::uint32_t generation;
    std::uint32_t index;
    std::uint32_t parties;
  };

  //!Effects: records the caller as the next arrival of the current generation. Returns with
  //! the barrier's lock held when the caller is the last party (trip() releases it).
  //!Throws: BrokenBarrierError if the barrier is broken; CorruptedError.
  Arrival arrive(std::string_view name) {
    const std::uint32_t n = checked_parties(name);
    lock_internal(name);
    if (broken.load(std::memory_order_relaxed) != 0) {
      lock.release();
      fail<BrokenBarrierError>("barrier '{}' is broken; reset() it before waiting again", name);
    }
    const Arrival a{generation.load(std::memory_order_relaxed),
                    count.load(std::memory_order_relaxed), n};
    if (a.index >= n) {
      lock.release();
      fail<CorruptedError>("barrier '{}': {} parties waiting but only {} expected", name, a.index,
                           n);
    }
    waiting(a.index).store(ProcessRef::self().pack(), std::memory_order_relaxed);
    count.store(a.index + 1, std::memory_order_release);
    if (a.index + 1 != n) lock.release();
    return a;
  }

  //!Effects: (lock held) runs the action and releases every waiter into the next generation.
  //!Throws: BrokenBarrierError if an arrived party died; what the action throws (either way the
  //! barrier is broken and the lock released).
  template <class Action>
  void trip(const Arrival& a, Action& action, std::string_view name) {
    // A party that arrived and then died would pass this trip and leave the survivors waiting
    // for it at the next one: break the barrier now instead, so they are told.
    if (const auto dead = dead_party(a.index)) {
      break_locked();
      release_and_wake();
      fail<BrokenBarrierError>(
          "barrier '{}': party pid {} died after arriving; the barrier is "
          "now broken",
          name, *dead);
    }
    try {
      action();
    } catch (...) {
      break_locked();
      release_and_wake();
      throw;
    }
    clear_arrivals(a.parties);
    start_generation(a.generation + 1);
    release_and_wake();
  }

  //!Effects: sleeps until the generation of `a` ends; a timeout breaks the barrier (as in
  //! Python). Throws: BrokenBarrierError unless the generation tripped; CorruptedError.
  void await_trip(const Arrival& a, const Deadline& deadline, std::string_view name) {
    const bool done = wp.wait(
        [&] {
          return generation.load(std::memory_order_acquire) != a.generation ||
                 broken.load(std::memory_order_acquire) != 0 ||
                 live.load(std::memory_order_acquire) != sync_impl::kLiveMark;
        },
        deadline, [&] { break_if_party_died(a.generation, a.index, name); });
    check_live(name);  // a zeroed generation is no trip
    if (!done) {
      break_generation(a.generation, name);
      if (generation.load(std::memory_order_acquire) == a.generation)
        fail<BrokenBarrierError>(
            "barrier '{}': timed out waiting for {} parties; the barrier is "
            "now broken",
            name, a.parties);
    }
    if (generation.load(std::memory_order_acquire) == a.generation)
      fail<BrokenBarrierError>(
          "barrier '{}' is broken (aborted, timed out, or a waiting party "
          "died); reset() it to use it again",
          name);
    if ((reset_mask.load(std::memory_order_acquire) >> (a.generation % 64)) & 1)
      fail<BrokenBarrierError>("barrier '{}' was reset while waiting", name);
  }

  // Entry i (< kMaxBarrierParties) of waiting_.
  std::atomic_ref<std::uint64_t> waiting(std::uint32_t i) noexcept {
    return std::atomic_ref<std::uint64_t>(waiting_[i]);
  }
  std::atomic_ref<std::uint64_t> waiting(std::uint32_t i) const noexcept {  // for loads only
    return std::atomic_ref<std::uint64_t>(const_cast<std::uint64_t&>(waiting_[i]));
  }
  void clear_arrivals(std::uint32_t n) noexcept {
    for (std::uint32_t i = 0; i < n; ++i) waiting(i).store(0, std::memory_order_relaxed);
    count.store(0, std::memory_order_relaxed);
  }
  void start_generation(std::uint32_t g) noexcept {
    reset_mask.fetch_and(~(std::uint64_t{1} << (g % 64)), std::memory_order_relaxed);
    generation.store(g, std::memory_order_release);
  }
  void break_locked() noexcept { broken.store(1, std::memory_order_release); }
  void release_and_wake() noexcept {
    lock.release();
    wp.notify_all();
  }
  // A party that died inside the barrier's own critical section leaves it broken (that is how
  // the death reaches the parties: BrokenBarrierError). A truncated barrier is not trusted.
  void lock_internal(std::string_view name) {
    const LockResult r = lock.acquire(Deadline::never(), name);
    if (live.load(std::memory_order_acquire) != sync_impl::kLiveMark) {
      lock.release();
      check_live(name);
    }
    if (r == LockResult::owner_died) break_locked();
  }
  void break_generation(std::uint32_t gen, std::string_view name) {
    lock_internal(name);
    if (generation.load(std::memory_order_relaxed) == gen) break_locked();
    release_and_wake();
  }
  //!Returns: the pid of a dead party among the first `c` arrivals, if any (this process's
  //! threads are skipped without a system call).
  std::optional<std::int64_t> dead_party(std::uint32_t c) const noexcept {
    c = std::min(c, kMaxBarrierParties);
    const std::uint64_t me = ProcessRef::self().pack();
    for (std::uint32_t i = 0; i < c; ++i) {
      const std::uint64_t w = waiting(i).load(std::memory_order_relaxed);
      if (w == 0 || w == me) continue;
      const ProcessRef p = ProcessRef::unpack(w);
      if (!p.alive()) return p.pid;
    }
    return std::nullopt;
  }
  // A waiter looks at the party that arrived after it (the last arrival at the first): each
  // arrived party is watched by another, and in a ring of parties neither all alive nor all
  // dead some live one watches a dead one. One liveness check per waiter and poll, not one per
  // party (hundreds of waiters each reading every party's liveness swamped the machine).
  void break_if_party_died(std::uint32_t gen, std::uint32_t index, std::string_view name) {
    check_live(name);
    const std::uint32_t c = std::min(count.load(std::memory_order_acquire), kMaxBarrierParties);
    if (c < 2) return;
    const std::uint32_t next = (index + 1) % c;
    const std::uint64_t w = waiting(next).load(std::memory_order_relaxed);
    if (w == 0 || w == ProcessRef::self().pack()) return;
    if (!ProcessRef::unpack(w).alive()) break_generation(gen, name);
  }
};
static_assert(std::is_standard_layout_v<BarrierState>);

/// True for a callable that can be a registered Barrier action: a function pointer or a
/// capture-less lambda without parameters.
template <class F>
concept RegistrableBarrierAction =
    Transportable<F> && std::is_same_v<typename callable_traits<F>::params, ParamList<>>;

//!Returns: the name `fn` is registered under (MPP_REGISTER / register_function), or nullopt.
//!Throws: InvalidArgument if that name is too long to be stored in a barrier.
template <class F>
std::optional<std::string> barrier_action_name(const F& fn) {
  std::optional<std::string> name;
  if constexpr (RegistrableBarrierAction<F>) name = function_registry().name_of(function_key(fn));
  if (name && name->size() > kMaxBarrierActionName)
    fail<InvalidArgument>(
        "a Barrier action's registered name '{}' has {} bytes (at most {}); "
        "register it under a shorter name",
        *name, name->size(), kMaxBarrierActionName);
  return name;
}

//!Effects: runs the registered function `action`, the action of barrier `barrier`, in this
//! process. Throws: InvalidArgument if this process has no function registered under that name
//! (or one with parameters); what the action throws.
inline void run_registered_barrier_action(std::string_view action, std::string_view barrier) {
  const RegisteredFunction* f = function_registry().find(std::string(action));
  if (f == nullptr)
    fail<InvalidArgument>(
        "barrier '{}': its action '{}' is not registered in this process; "
        "register it with MPP_REGISTER at namespace scope, so that every "
        "process of the program has it",
        barrier, action);
  if (f->signature != signature_of(ParamList<>{}))
    fail<InvalidArgument>(
        "barrier '{}': the function registered as '{}' in this process takes "
        "parameters; a barrier action takes none",
        barrier, action);
  f->invoke({});
}

}  // namespace mpp::detail
