// mpp — platform and compiler detection. The only place that decides which backend is used; the
// backends themselves live in detail/os/posix.hpp and detail/os/win32.hpp. Every public header
// includes it first, so the language check below is the first error a wrong -std shows.
#pragma once

// MSVC reports 199711L in __cplusplus unless /Zc:__cplusplus is given; _MSVC_LANG is reliable.
#if defined(_MSVC_LANG) && _MSVC_LANG > __cplusplus
#  define MPP_CPLUSPLUS _MSVC_LANG
#else
#  define MPP_CPLUSPLUS __cplusplus
#endif
#if MPP_CPLUSPLUS < 202002L
#  error "mpp needs C++20: compile with -std=c++20 (GCC, Clang) or /std:c++20 (MSVC)"
#endif

#include <cstddef>

#if defined(_WIN32)
#  define MPP_OS_WINDOWS 1
#elif defined(__linux__)
#  define MPP_OS_POSIX 1
#  define MPP_OS_LINUX 1
#elif defined(__APPLE__) || defined(__FreeBSD__)
#  define MPP_OS_POSIX 1
#  error "mpp: the POSIX backend needs a futex-like wait; only Linux is implemented so far"
#else
#  error "mpp: unsupported platform"
#endif

#if defined(_MSC_VER) && !defined(__clang__)
#  define MPP_PRETTY_FUNCTION __FUNCSIG__
#elif defined(__GNUC__) || defined(__clang__)
#  define MPP_PRETTY_FUNCTION __PRETTY_FUNCTION__
#else
#  error "mpp: unsupported compiler (need __PRETTY_FUNCTION__ or __FUNCSIG__)"
#endif

//! MPP_SANITIZED: defined when AddressSanitizer or ThreadSanitizer instruments this build (they do
//! not see into inline assembly, so hand-written copies fall back to memcpy).
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#  define MPP_SANITIZED 1
#elif defined(__has_feature)
#  if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#    define MPP_SANITIZED 1
#  endif
#endif

//! MPP_CRASH_POINT(name): a place inside a multi-step shared-memory mutation where a test build
//! (compiled with MPP_CRASH_POINTS defined to a function) may kill the process. Empty otherwise.
#if defined(MPP_CRASH_POINTS)
namespace mpp::detail {
void crash_point(const char* name) noexcept;  // provided by the crash-point test driver
}
#  define MPP_CRASH_POINT(name) ::mpp::detail::crash_point(name)
#else
#  define MPP_CRASH_POINT(name) ((void)0)
#endif

namespace mpp::detail {
/// Size of a cache line; indices written by different processes live on different lines.
inline constexpr std::size_t kCacheLine = 64;
}  // namespace mpp::detail
