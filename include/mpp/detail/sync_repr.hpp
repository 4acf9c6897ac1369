// mpp — Python-like reprs of the synchronisation primitives (what fmt::format("{}", x) writes),
// read from their shared states without taking a lock, so formatting never blocks or throws:
// a truncated state shows as such instead of raising CorruptedError.
#pragma once

#include <fmt/core.h>

#include <atomic>
#include <cstdint>
#include <string>
#include <string_view>

#include "sync_barrier.hpp"
#include "sync_state.hpp"

namespace mpp::detail {

/// Python's `True` / `False`.
constexpr std::string_view py_bool(bool b) noexcept { return b ? "True" : "False"; }

/// The owner in an owner word as Python shows it: None when free, else the holder's pid.
inline std::string owner_repr(std::uint64_t word) {
  if (!sync_impl::live(word)) return "'<truncated>'";
  if (sync_impl::holder(word) == 0) return "None";
  return std::to_string(sync_impl::holder_ref(word).pid);
}

/// `<Lock(name='...', owner=None)>` (Python: `<Lock(owner=None)>`; mpp names the owner by pid).
inline std::string lock_repr(std::string_view name, const LockState& s) {
  return fmt::format("<Lock(name='{}', owner={})>", name,
                     owner_repr(s.owner.load(std::memory_order_relaxed)));
}

/// `<RLock(name='...', owner=None, count=0)>` (Python: `<RLock(None, 0)>`).
inline std::string rlock_repr(std::string_view name, const RLockState& s) {
  const std::uint64_t w = s.owner.load(std::memory_order_relaxed);
  const bool held = sync_impl::live(w) && sync_impl::holder(w) != 0;
  return fmt::format("<RLock(name='{}', owner={}, count={})>", name, owner_repr(w),
                     held ? s.count.load(std::memory_order_relaxed) : 0u);
}

/// `<Semaphore(name='...', value=2)>`, or `<BoundedSemaphore(name='...', value=2, maxvalue=3)>`
/// (Python: `<Semaphore(value=2)>`, `<BoundedSemaphore(value=2, maxvalue=3)>`).
inline std::string semaphore_repr(std::string_view name, const SemaphoreState& s) {
  const std::uint32_t v = s.value.load(std::memory_order_relaxed);
  if ((v & SemaphoreState::kLive) == 0)
    return fmt::format("<{}Semaphore(name='{}', truncated)>", s.max_value != 0 ? "Bounded" : "",
                       name);
  const std::uint32_t units = v & ~SemaphoreState::kLive;
  if (s.max_value != 0)
    return fmt::format("<BoundedSemaphore(name='{}', value={}, maxvalue={})>", name, units,
                       s.max_value);
  return fmt::format("<Semaphore(name='{}', value={})>", name, units);
}

/// `<Event(name='...', set=False)>`.
inline std::string event_repr(std::string_view name, const EventState& s) {
  const std::uint32_t v = s.flag.load(std::memory_order_relaxed);
  if ((v & EventState::kLive) == 0) return fmt::format("<Event(name='{}', truncated)>", name);
  return fmt::format("<Event(name='{}', set={})>", name, py_bool((v & EventState::kSet) != 0));
}

/// `<Condition(<RLock(...)>, 0)>`: the lock's repr and the number of waiters, as Python's.
inline std::string condition_repr(std::string_view lock, const ConditionState& s) {
  return fmt::format("<Condition({}, {})>", lock, s.waiting.load(std::memory_order_relaxed));
}

/// `<Barrier(name='...', parties=3, waiting=1, broken=False)>` (Python's threading.Barrier
/// shows `waiters=1/3`).
inline std::string barrier_repr(std::string_view name, const BarrierState& s) {
  if (s.live.load(std::memory_order_relaxed) != sync_impl::kLiveMark)
    return fmt::format("<Barrier(name='{}', truncated)>", name);
  return fmt::format("<Barrier(name='{}', parties={}, waiting={}, broken={})>", name,
                     s.parties.load(std::memory_order_relaxed), s.n_waiting(),
                     py_bool(s.is_broken()));
}

}  // namespace mpp::detail
