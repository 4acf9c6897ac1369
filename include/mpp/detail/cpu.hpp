// mpp — the few CPU-specific instructions of the queue's hot path, each behind a portable
// fallback: other CPUs, MSVC (no GNU inline assembly or builtins) and sanitized builds (which do
// not see into inline assembly) get the plain equivalent.
#pragma once

#include <cstddef>
#include <cstring>

#include "config.hpp"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#  define MPP_CPU_X86_64_GNU 1
#  include <cpuid.h>
#elif defined(_MSC_VER) && (defined(_M_X64) || defined(_M_IX86))
#  define MPP_CPU_X86_MSVC 1
#  include <xmmintrin.h>
#endif

namespace mpp::detail::cpu {

//!Effects: copies `n` bytes from `src` to `dst` (std::memcpy semantics), for an item's copy into
//! or out of a queue cell. On x86-64 with GCC or Clang this is one `rep movsb`, which moves whole
//! cache lines between two cores faster than the vector loop memcpy runs for cell sizes
//! (benchmarks row queue.1KiB.1p1c.throughput; on a single core it is slower); elsewhere memcpy.
inline void copy_cell(void* dst, const void* src, std::size_t n) noexcept {
#if defined(MPP_CPU_X86_64_GNU) && !defined(MPP_SANITIZED)
  asm volatile("rep movsb" : "+D"(dst), "+S"(src), "+c"(n) : : "memory");
#else
  std::memcpy(dst, src, n);
#endif
}

#if defined(MPP_CPU_X86_64_GNU)
/// True if the CPU has PREFETCHW (CPUID 0x80000001 ECX bit 8): every AMD64 CPU, Intel's since
/// Broadwell.
inline const bool has_prefetchw = [] {
  unsigned a = 0, b = 0, c = 0, d = 0;
  return __get_cpuid(0x80000001u, &a, &b, &c, &d) != 0 && (c & (1u << 8)) != 0;
}();
#endif

//!Effects: asks the CPU to fetch the `n` bytes at `p` (whole cache lines) for writing. On x86-64
//! with GCC or Clang, PREFETCHW where the CPU has it: it takes each line exclusive at once
//! instead of shared first and exclusive at the store (GCC's __builtin_prefetch(p, 1) emits it
//! only with -mprfchw; benchmarks row queue.1KiB.1p1c.throughput). A read prefetch elsewhere
//! (MSVC on x86: _mm_prefetch), nothing where there is none. Never faults.
inline void prefetch_for_write(const std::byte* p, std::size_t n) noexcept {
#if defined(MPP_CPU_X86_64_GNU)
  if (has_prefetchw) {
    for (std::size_t off = 0; off < n; off += kCacheLine)
      asm volatile("prefetchw %0" : : "m"(p[off]));
    return;
  }
  for (std::size_t off = 0; off < n; off += kCacheLine) __builtin_prefetch(p + off, 1);
#elif defined(__GNUC__) || defined(__clang__)
  for (std::size_t off = 0; off < n; off += kCacheLine) __builtin_prefetch(p + off, 1);
#elif defined(MPP_CPU_X86_MSVC)
  for (std::size_t off = 0; off < n; off += kCacheLine)
    _mm_prefetch(reinterpret_cast<const char*>(p + off), _MM_HINT_T0);
#else
  (void)p;
  (void)n;
#endif
}

}  // namespace mpp::detail::cpu
