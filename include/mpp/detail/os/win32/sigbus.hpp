// mpp — Win32 backend, the mapping guard: nothing to guard, the no-op twins of posix/sigbus.hpp.
#pragma once

#include "../../config.hpp"

#if !defined(MPP_OS_WINDOWS)
#  error "mpp: detail/os/win32/sigbus.hpp included on a non-Windows platform"
#endif

#include <cstdint>
#include <string_view>

#include "common.hpp"

namespace mpp::detail::os {

// Nothing to guard: Windows refuses to shrink a section while any view of it is mapped, so a
// mapped segment can never lose pages under us (POSIX needs a SIGBUS handler for that).
/// What guard_mapping() returns when it protected nothing (always, on Windows).
inline constexpr std::uint32_t kNoGuard = 0xffffffffu;
/// No-op on Windows (see above). Returns: kNoGuard.
inline std::uint32_t guard_mapping(void*, std::uint64_t, std::string_view) noexcept {
  return kNoGuard;
}
/// No-op on Windows (see above).
inline void unguard_mapping(void*, std::uint32_t) noexcept {}
/// Always false on Windows (see above).
inline bool mapping_faulted(const void*) noexcept { return false; }
/// No-op on Windows (see above).
inline void check_mapping(const void*) {}

}  // namespace mpp::detail::os
