// mpp — POSIX backend, waiting and waking: futex wait/wake on a 32-bit word in shared memory,
// spinning, sleeping, and asymmetric fences across processes (membarrier).
#pragma once

#include "../../config.hpp"

#if !defined(MPP_OS_POSIX)
#  error "mpp: detail/os/posix/wait.hpp included on a non-POSIX platform"
#endif

#include <linux/futex.h>
#include <linux/membarrier.h>
#include <sched.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <optional>

#include "liveness.hpp"

namespace mpp::detail::os {

static_assert(sizeof(std::atomic<std::uint32_t>) == sizeof(std::uint32_t) &&
                  std::atomic<std::uint32_t>::is_always_lock_free,
              "futex needs a plain 32-bit atomic");

//!Effects: sleeps while `word == expected`, at most `timeout` (forever when nullopt). Spurious
//! wake-ups are possible. Returns: false only when the timeout elapsed.
inline bool wait_on_address(const std::atomic<std::uint32_t>& word, std::uint32_t expected,
                            std::optional<std::chrono::nanoseconds> timeout) noexcept {
  struct timespec ts {};
  if (timeout) {
    const auto ns = timeout->count() < 0 ? 0 : timeout->count();
    ts.tv_sec = static_cast<time_t>(ns / 1'000'000'000);
    ts.tv_nsec = static_cast<long>(ns % 1'000'000'000);
  }
  // Not FUTEX_PRIVATE_FLAG: the word is shared between processes.
  const long rc = ::syscall(SYS_futex, const_cast<std::atomic<std::uint32_t>*>(&word), FUTEX_WAIT,
                            expected, timeout ? &ts : nullptr, nullptr, 0);
  return !(rc == -1 && errno == ETIMEDOUT);
}

/// True: a wake-up with nobody asleep is lost, not kept (a futex), so a lock may wake on every
/// contended release without counting its sleepers (see sync_state.hpp).
inline constexpr bool kExactWake = true;

/// Wakes up to `count` sleepers on `word` (INT_MAX for all).
inline void wake_address(const std::atomic<std::uint32_t>& word, int count) noexcept {
  ::syscall(SYS_futex, const_cast<std::atomic<std::uint32_t>*>(&word), FUTEX_WAKE, count, nullptr,
            nullptr, 0);
}

/// Tells the CPU we are spinning (pause on x86), sparing the sibling hyper-thread.
inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

/// Gives the CPU to another runnable thread.
inline void yield() noexcept { ::sched_yield(); }

/// Sleeps for `d` (EINTR-safe).
inline void sleep_for(std::chrono::nanoseconds d) noexcept {
  if (d.count() <= 0) return;
  struct timespec ts {
    static_cast<time_t>(d.count() / 1'000'000'000), static_cast<long>(d.count() % 1'000'000'000)
  };
  while (::nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

// Asymmetric fences (membarrier(2)): a thread that calls membarrier_all() knows that every thread
// of every registered process has executed a full memory barrier meanwhile, so those threads'
// fast paths can order a store before a load with no fence of their own (Dekker with one cheap
// side). Used by the queue's exclusive producer and consumer (detail/mpmc.hpp).
namespace posix_detail {
inline long membarrier(int cmd) noexcept { return ::syscall(__NR_membarrier, cmd, 0, 0); }
}  // namespace posix_detail

//!Effects: registers this process for membarrier_all() (again in a forked child: the
//! registration belongs to the address space).
//!Returns: true if membarrier_all() will order this process's threads.
inline bool membarrier_register() noexcept {
  static const bool supported = [] {
    const long cmds = posix_detail::membarrier(MEMBARRIER_CMD_QUERY);
    return cmds >= 0 && (cmds & MEMBARRIER_CMD_GLOBAL_EXPEDITED) != 0 &&
           (cmds & MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED) != 0;
  }();
  static std::atomic<pid_type> registered{0};
  if (!supported) return false;
  const pid_type pid = current_pid();
  if (registered.load(std::memory_order_acquire) == pid) return true;
  if (posix_detail::membarrier(MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED) != 0) return false;
  registered.store(pid, std::memory_order_release);
  return true;
}

//!Effects: returns only after every running thread of every process registered with
//! membarrier_register() has executed a full memory barrier (a few microseconds: IPIs).
//!Returns: false if the system refused (the caller must not rely on the barrier then).
inline bool membarrier_all() noexcept {
  if (posix_detail::membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED) == 0) return true;
  return posix_detail::membarrier(MEMBARRIER_CMD_GLOBAL) == 0;  // slower, no registration
}

}  // namespace mpp::detail::os
