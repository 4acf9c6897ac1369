// mpp — POSIX backend, the SIGBUS guard: a mapped object that shrank under this process, or
// a page tmpfs could not allocate, becomes an mpp exception instead of a crash.
#pragma once

#include "../../config.hpp"

#if !defined(MPP_OS_POSIX)
#  error "mpp: detail/os/posix/sigbus.hpp included on a non-POSIX platform"
#endif

#include <signal.h>
#include <sys/mman.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "shm.hpp"

namespace mpp::detail::os {

// A process that has a segment mapped gets SIGBUS from the kernel when it touches a page that is
// no longer backed by the object: another process (buggy or hostile, same user) shrank it with
// ftruncate, or tmpfs could not allocate the page (/dev/shm full). mpp must not die of that.
// Segment registers every mapping in a fixed table of atomics (lock-free, async-signal-safe).
// A process-wide SIGBUS handler, installed once at the first registration, recognises faults
// inside registered mappings, maps private zero pages over the mapping from the faulting page to
// its end (mmap MAP_FIXED: the access completes, and no later access to those pages faults), and
// marks the mapping faulted, noting whether /dev/shm was full at that moment. check_mapping() —
// called by every wait loop before it sleeps and by the slow paths of the operations — then
// throws CorruptedError naming the object, or NoSpaceError when /dev/shm was full and the object
// still has its size (creation reserves an object's pages, so this is a lazily used object's
// page, or another program's sparse object). Faults outside registered mappings go to the
// handler that was installed before ours (a sanitizer's, or the default action: the process dies
// of SIGBUS as it would without mpp).
// fork(): the child inherits the mappings at the same addresses, the table and the handler, so
// it is protected too; exec() drops all three together.
// Windows needs none of this: a section cannot be shrunk while it is mapped, so
// win32/sigbus.hpp has no-op twins of these functions.

namespace guard_detail {
/// Mappings this process can protect at once (more are mapped unprotected).
inline constexpr std::size_t kMaxGuarded = 4096;
inline constexpr std::size_t kNameCapacity = 112;
/// Free bytes in /dev/shm below which a fault counts as "no space" (tmpfs counts free pages per
/// CPU in batches, so "full" is not exactly 0).
inline constexpr std::uint64_t kLowSpace = std::uint64_t{4} << 20;

struct Table {
  std::atomic<std::uintptr_t> begin[kMaxGuarded];   ///< start of a mapping; 0: entry free
  std::atomic<std::uintptr_t> end[kMaxGuarded];     ///< one past its end; 0 while (un)registering
  std::atomic<std::uint32_t> faulted[kMaxGuarded];  ///< 1 once the handler repaired a fault in it
  /// 1 if /dev/shm was (nearly) full when the handler repaired that fault
  std::atomic<std::uint32_t> low_space[kMaxGuarded];
  char names[kMaxGuarded][kNameCapacity];  ///< for messages only (not read by the handler)
  std::atomic<std::size_t> used;           ///< entries at or above this index were never claimed
  std::atomic<std::size_t> free_hint;      ///< where guard_mapping() starts looking (a hint only)
  std::atomic<std::uint32_t> faults;       ///< registered mappings with faulted == 1
  std::atomic<int> installed;  ///< 0: handler not installed, 1: installing, 2: installed
  std::uintptr_t page;         ///< page size, read by the handler
  struct sigaction previous;   ///< the SIGBUS disposition before ours
};
inline constinit Table table{};

// Passes a fault that is not ours on to the disposition that was there before us.
inline void chain(int sig, siginfo_t* info, void* ctx) noexcept {
  const struct sigaction& prev = table.previous;
  if ((prev.sa_flags & SA_SIGINFO) != 0) {
    if (prev.sa_sigaction != nullptr) prev.sa_sigaction(sig, info, ctx);
    return;
  }
  const bool sent = info == nullptr || info->si_code <= 0;  // kill()/sigqueue(), not a fault
  if (prev.sa_handler == SIG_IGN && sent) return;
  if (prev.sa_handler != SIG_IGN && prev.sa_handler != SIG_DFL) {
    prev.sa_handler(sig);
    return;
  }
  // The default action (a fault cannot be ignored): die of SIGBUS as without mpp.
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  ::sigemptyset(&dfl.sa_mask);
  ::sigaction(SIGBUS, &dfl, nullptr);
  if (sent) ::raise(sig);  // delivered when the handler returns; a fault simply happens again
}

inline void on_sigbus(int sig, siginfo_t* info, void* ctx) noexcept {
  const int saved_errno = errno;
  if (info != nullptr && info->si_code == BUS_ADRERR) {
    const auto a = reinterpret_cast<std::uintptr_t>(info->si_addr);
    const std::size_t n = table.used.load(std::memory_order_acquire);
    for (std::size_t i = 0; i < n; ++i) {
      const std::uintptr_t e = table.end[i].load(std::memory_order_acquire);
      const std::uintptr_t b = table.begin[i].load(std::memory_order_relaxed);
      if (e == 0 || b == 0 || a < b || a >= e) continue;
      // Every page from the faulting one on is past the object's end now: replace them all.
      const std::uintptr_t from = a & ~(table.page - 1);
      const std::uintptr_t to = (e + table.page - 1) & ~(table.page - 1);
      const long r = ::syscall(SYS_mmap, from, to - from, PROT_READ | PROT_WRITE,
                               MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
      if (r == -1) break;  // cannot repair (out of memory): let the fault take its course
      // Remember whether tmpfs was out of space at the time: with the object still its full
      // size afterwards, that (and not a truncation) is why the page could not be had.
      struct statfs fs {};
      if (::syscall(SYS_statfs, kShmDirectory, &fs) == 0 &&
          static_cast<std::uint64_t>(fs.f_bavail) * static_cast<std::uint64_t>(fs.f_bsize) <
              kLowSpace)
        table.low_space[i].store(1, std::memory_order_relaxed);
      if (table.faulted[i].exchange(1, std::memory_order_acq_rel) == 0)
        table.faults.fetch_add(1, std::memory_order_release);
      errno = saved_errno;
      return;
    }
  }
  chain(sig, info, ctx);
  errno = saved_errno;
}

// Installs on_sigbus once per process (the disposition survives fork, not exec).
inline void install() noexcept {
  if (table.installed.load(std::memory_order_acquire) == 2) return;
  int expect = 0;
  if (!table.installed.compare_exchange_strong(expect, 1, std::memory_order_acq_rel)) {
    while (table.installed.load(std::memory_order_acquire) != 2) ::sched_yield();
    return;
  }
  table.page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
  // Record the previous disposition before ours can run, so the handler never chains to garbage.
  ::sigaction(SIGBUS, nullptr, &table.previous);
  if ((table.previous.sa_flags & SA_SIGINFO) != 0 && table.previous.sa_sigaction == &on_sigbus) {
    table.previous = {};  // already ours (a second copy of this code): never chain to ourselves
    table.previous.sa_handler = SIG_DFL;
  }
  struct sigaction sa {};
  sa.sa_sigaction = &on_sigbus;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
  ::sigemptyset(&sa.sa_mask);
  ::sigaction(SIGBUS, &sa, nullptr);
  table.installed.store(2, std::memory_order_release);
}
}  // namespace guard_detail

/// What guard_mapping() returns when it protected nothing.
inline constexpr std::uint32_t kNoGuard = 0xffffffffu;

//!Effects: protects the mapping [p, p + size) of the object `name` against SIGBUS (see above).
//! Silently leaves it unprotected if this process already guards kMaxGuarded mappings.
//!Returns: the entry to give unguard_mapping(), or kNoGuard.
inline std::uint32_t guard_mapping(void* p, std::uint64_t size, std::string_view name) noexcept {
  auto& t = guard_detail::table;
  const auto b = reinterpret_cast<std::uintptr_t>(p);
  if (b == 0 || size == 0) return kNoGuard;
  guard_detail::install();
  // From the hint on, then the entries before it: no scan over every live mapping when many
  // are registered (the hint points past the last entry claimed, or at the last one freed).
  const std::size_t start = t.free_hint.load(std::memory_order_relaxed) % guard_detail::kMaxGuarded;
  for (std::size_t k = 0; k < guard_detail::kMaxGuarded; ++k) {
    const std::size_t i = (start + k) % guard_detail::kMaxGuarded;
    std::uintptr_t expect = 0;
    if (t.begin[i].load(std::memory_order_relaxed) != 0 ||
        !t.begin[i].compare_exchange_strong(expect, b, std::memory_order_acq_rel))
      continue;
    t.faulted[i].store(0, std::memory_order_relaxed);
    t.low_space[i].store(0, std::memory_order_relaxed);
    const std::size_t n = std::min(name.size(), guard_detail::kNameCapacity - 1);
    std::memcpy(t.names[i], name.data(), n);
    t.names[i][n] = '\0';
    std::size_t used = t.used.load(std::memory_order_relaxed);
    while (used < i + 1 && !t.used.compare_exchange_weak(used, i + 1, std::memory_order_acq_rel)) {
    }
    t.end[i].store(b + size, std::memory_order_release);  // the handler may use it from now on
    t.free_hint.store(i + 1, std::memory_order_relaxed);
    return static_cast<std::uint32_t>(i);
  }
  return kNoGuard;
}

//!Effects: stops protecting the mapping that starts at `p`, registered as entry `guard` (call
//! before unmapping it); nothing for kNoGuard.
inline void unguard_mapping(void* p, std::uint32_t guard) noexcept {
  auto& t = guard_detail::table;
  const auto b = reinterpret_cast<std::uintptr_t>(p);
  const std::size_t i = guard;
  if (b == 0 || i >= guard_detail::kMaxGuarded || t.begin[i].load(std::memory_order_acquire) != b ||
      t.end[i].load(std::memory_order_relaxed) == 0)
    return;
  t.end[i].store(0, std::memory_order_release);
  if (t.faulted[i].exchange(0, std::memory_order_acq_rel) != 0)
    t.faults.fetch_sub(1, std::memory_order_relaxed);
  t.begin[i].store(0, std::memory_order_release);
  t.free_hint.store(i, std::memory_order_relaxed);
}

//!Returns: true if `addr` lies in a guarded mapping whose object shrank under this process.
inline bool mapping_faulted(const void* addr) noexcept {
  auto& t = guard_detail::table;
  if (t.faults.load(std::memory_order_acquire) == 0) [[likely]]
    return false;
  const auto a = reinterpret_cast<std::uintptr_t>(addr);
  const std::size_t n = t.used.load(std::memory_order_acquire);
  for (std::size_t i = 0; i < n; ++i) {
    const std::uintptr_t e = t.end[i].load(std::memory_order_acquire);
    const std::uintptr_t b = t.begin[i].load(std::memory_order_relaxed);
    if (e != 0 && a >= b && a < e) return t.faulted[i].load(std::memory_order_acquire) != 0;
  }
  return false;
}

//!Effects: nothing while the mapping holding `addr` is intact (one load when no mapping of this
//! process ever faulted).
//!Throws: if a page of it could not be touched: NoSpaceError naming the object when the object
//! still has its full size (tmpfs could not allocate the page: /dev/shm is full), CorruptedError
//! when it shrank under us (another process truncated it) or its name is gone (cannot tell).
inline void check_mapping(const void* addr) {
  if (!mapping_faulted(addr)) [[likely]]
    return;
  auto& t = guard_detail::table;
  const auto a = reinterpret_cast<std::uintptr_t>(addr);
  std::string name = "?";
  std::uint64_t length = 0;
  bool low_space = false;
  for (std::size_t i = 0; i < t.used.load(std::memory_order_acquire); ++i) {
    const std::uintptr_t e = t.end[i].load(std::memory_order_acquire);
    const std::uintptr_t b = t.begin[i].load(std::memory_order_relaxed);
    if (e != 0 && a >= b && a < e) {
      name.assign(t.names[i], ::strnlen(t.names[i], guard_detail::kNameCapacity));
      length = e - b;
      low_space = t.low_space[i].load(std::memory_order_relaxed) != 0;
      break;
    }
  }
  // A page past the end of a shrunk object and a page tmpfs could not allocate fault alike. A
  // mapping covers exactly its object, so a fault while /dev/shm was full in an object that
  // still has all its bytes was the latter; anything else is taken for a truncation (one that
  // was undone by growing the object again included).
  if (const ShmStat st = shm_lstat(name);
      low_space && st.exists && st.regular && length != 0 && st.size >= length) {
    const auto free = shm_free_bytes();
    throw NoSpaceError(
        fmt::format("{} is full: a page of '{}' could not be allocated ({} free), so what this "
                    "process wrote there since reads as zeros here and did not reach other "
                    "processes: close this handle, free space with `mpp gc` or enlarge {}, and "
                    "recreate the object",
                    kShmDirectory, name,
                    free ? fmt::format("{} bytes", *free) : std::string("? bytes"), kShmDirectory),
        ENOSPC);
  }
  fail<CorruptedError>(
      "'{}' shrank while this process had it mapped (another process truncated it, or /dev/shm "
      "ran out of memory); the missing part reads as zeros here and nothing written to it "
      "reaches other processes: close this handle and recreate the object",
      name);
}

}  // namespace mpp::detail::os
