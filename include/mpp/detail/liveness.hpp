// mpp — process identity that survives pid reuse: a pid together with a tag of its start time,
// packed into one 64-bit word so that shared "owner" fields can be claimed and released by CAS.
#pragma once

#include <cstdint>

#include "os.hpp"

namespace mpp::detail {

/// Identifies one process for its whole life: {pid, low 32 bits of its start time}. A recycled
/// pid has another start time, so a dead process is never mistaken for a live one.
struct ProcessRef {
  os::pid_type pid = 0;         ///< 0 means "nobody"
  std::uint32_t start_tag = 0;  ///< 0 means "unknown" (only the pid is compared)

  /// The calling process.
  static ProcessRef self() noexcept {
    return {os::current_pid(), static_cast<std::uint32_t>(os::current_start_time())};
  }

  //!Returns: true if this process still runs (zombies count as dead). The calling process is
  //! answered from its cached identity, without reading the system's process table.
  bool alive() const noexcept {
    if (pid <= 0) return false;
    if (pid == os::current_pid())
      return start_tag == 0 || start_tag == static_cast<std::uint32_t>(os::current_start_time());
    const auto st = os::process_start_time(pid);
    return st.has_value() && (start_tag == 0 || static_cast<std::uint32_t>(*st) == start_tag);
  }

  /// One word for an atomic owner field: 0 is "nobody".
  constexpr std::uint64_t pack() const noexcept {
    return (std::uint64_t{start_tag} << 32) | static_cast<std::uint32_t>(pid);
  }
  /// Inverse of pack().
  static constexpr ProcessRef unpack(std::uint64_t w) noexcept {
    return {static_cast<os::pid_type>(static_cast<std::uint32_t>(w)),
            static_cast<std::uint32_t>(w >> 32)};
  }
  friend constexpr bool operator==(const ProcessRef&, const ProcessRef&) = default;
};

}  // namespace mpp::detail
