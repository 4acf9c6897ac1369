// mpp — Win32 backend, process identity and liveness: this process's id, and a process's
// creation time (with the pid, it names a process even when pids are reused).
#pragma once

#include "../../config.hpp"

#if !defined(MPP_OS_WINDOWS)
#  error "mpp: detail/os/win32/liveness.hpp included on a non-Windows platform"
#endif

#include <cstdint>
#include <optional>

#include "common.hpp"

namespace mpp::detail::os {

/// This process's id.
inline pid_type current_pid() noexcept { return static_cast<pid_type>(::GetCurrentProcessId()); }

inline std::uint64_t creation_time(HANDLE process) noexcept {
  FILETIME created, exited, kernel, user;
  if (!::GetProcessTimes(process, &created, &exited, &kernel, &user)) return 0;
  return (std::uint64_t{created.dwHighDateTime} << 32) | created.dwLowDateTime;
}

//!Returns: the creation time of process `pid` if it is still running; nullopt otherwise.
inline std::optional<std::uint64_t> process_start_time(pid_type pid) noexcept {
  if (pid <= 0) return std::nullopt;
  HANDLE h = ::OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION | SYNCHRONIZE, FALSE,
                           static_cast<DWORD>(pid));
  if (h == nullptr) return std::nullopt;
  const bool running = ::WaitForSingleObject(h, 0) == WAIT_TIMEOUT;
  const std::uint64_t t = creation_time(h);
  ::CloseHandle(h);
  if (!running) return std::nullopt;
  return t;
}

/// Creation time of this process.
inline std::uint64_t current_start_time() noexcept {
  static const std::uint64_t t = creation_time(::GetCurrentProcess());
  return t;
}

}  // namespace mpp::detail::os
