// mpp — Win32 backend, waiting and waking: a named semaphore per 32-bit word in shared memory,
// spinning and sleeping. Asymmetric fences across processes do not exist here.
#pragma once

#include "../../config.hpp"

#if !defined(MPP_OS_WINDOWS)
#  error "mpp: detail/os/win32/wait.hpp included on a non-Windows platform"
#endif

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>

#include "common.hpp"
#include "shm.hpp"

namespace mpp::detail::os {

// WaitOnAddress does not work across processes, so each word gets a named semaphore keyed by the
// object's name and the word's offset in it. Callers (WaitPoint) count sleepers, so wake is only
// called when someone sleeps and the fast path never enters the kernel.

namespace win32_detail {
/// The named semaphore sleepers on `word` wait on: one per (object, offset).
inline HANDLE semaphore_for(const void* word) {
  auto& r = registry();
  std::lock_guard<std::mutex> g(r.mu);
  const auto addr = reinterpret_cast<std::uintptr_t>(word);
  std::string key;
  for (const auto& m : r.mappings) {
    if (addr >= m.base && addr < m.base + m.size) {
      key = fmt::format("{}.w{}", m.name, addr - m.base);
      break;
    }
  }
  if (key.empty()) key = fmt::format("mpp.w.p{}.{:x}", ::GetCurrentProcessId(), addr);
  if (auto it = r.semaphores.find(key); it != r.semaphores.end()) return it->second;
  OwnerOnly sa;
  HANDLE h = ::CreateSemaphoreW(sa.get(), 0, LONG_MAX, kernel_name(key).c_str());
  if (h == nullptr) throw_errno("CreateSemaphore", key, ::GetLastError());
  r.semaphores.emplace(key, h);
  return h;
}
}  // namespace win32_detail

//!Effects: sleeps while `word == expected`, at most `timeout` (forever when nullopt). Spurious
//! wake-ups are possible. Returns: false only when the timeout elapsed.
inline bool wait_on_address(const std::atomic<std::uint32_t>& word, std::uint32_t expected,
                            std::optional<std::chrono::nanoseconds> timeout) {
  HANDLE sem = win32_detail::semaphore_for(&word);
  if (word.load(std::memory_order_seq_cst) != expected) return true;
  DWORD ms = INFINITE;
  if (timeout) {
    const auto n = timeout->count() < 0 ? 0 : timeout->count();
    ms = static_cast<DWORD>(std::min<long long>((n + 999'999) / 1'000'000, INFINITE - 1));
  }
  return ::WaitForSingleObject(sem, ms) != WAIT_TIMEOUT;
}

/// False: a wake-up is a semaphore release, kept until someone waits, so wakers must count their
/// sleepers and never wake more (see sync_state.hpp).
inline constexpr bool kExactWake = false;

/// Wakes up to `count` sleepers on `word` (pass the number of sleepers, not INT_MAX: a semaphore
/// keeps unused releases).
inline void wake_address(const std::atomic<std::uint32_t>& word, int count) noexcept {
  if (count <= 0) return;
  try {
    ::ReleaseSemaphore(win32_detail::semaphore_for(&word), count, nullptr);
  } catch (...) {  // no semaphore: sleepers wake at their next poll (at most kPollInterval)
  }
}

/// Tells the CPU we are spinning.
inline void cpu_relax() noexcept { YieldProcessor(); }

/// Gives the CPU to another runnable thread.
inline void yield() noexcept { ::SwitchToThread(); }

/// Sleeps for `d`.
inline void sleep_for(std::chrono::nanoseconds d) noexcept {
  if (d.count() <= 0) return;
  ::Sleep(static_cast<DWORD>((d.count() + 999'999) / 1'000'000));
}

/// Asymmetric fences across processes do not exist on Windows (FlushProcessWriteBuffers covers
/// one process): the queue's exclusive fast paths stay off there.
inline bool membarrier_register() noexcept { return false; }
/// See membarrier_register(); never called when it returned false.
inline bool membarrier_all() noexcept { return false; }

}  // namespace mpp::detail::os
