// mpp — POSIX backend, process identity and liveness: this process's id and start time, any
// process's start time, and user locks (OFD locks that the kernel drops when a user dies).
#pragma once

#include "../../config.hpp"

#if !defined(MPP_OS_POSIX)
#  error "mpp: detail/os/posix/liveness.hpp included on a non-POSIX platform"
#endif

#include <fcntl.h>
#include <pthread.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>

#include "common.hpp"

namespace mpp::detail::os {

namespace posix_detail {
struct SelfCache {
  std::atomic<pid_type> pid{0};
  std::atomic<std::uint64_t> start_time{0};
  std::atomic<bool> start_known{false};
};
inline SelfCache& self_cache() noexcept {
  static SelfCache c;
  return c;
}
inline void forget_self() noexcept {  // runs in every forked child
  self_cache().pid.store(0, std::memory_order_relaxed);
  self_cache().start_known.store(false, std::memory_order_relaxed);
}
}  // namespace posix_detail

/// This process's id. Cached (getpid() is a system call in current glibc) and reset in a forked
/// child by a pthread_atfork handler, so lock fast paths stay free of system calls.
inline pid_type current_pid() noexcept {
  auto& c = posix_detail::self_cache();
  pid_type pid = c.pid.load(std::memory_order_relaxed);
  if (pid == 0) {
    static const bool registered =
        (::pthread_atfork(nullptr, nullptr, &posix_detail::forget_self), true);
    (void)registered;
    pid = static_cast<pid_type>(::getpid());
    c.pid.store(pid, std::memory_order_relaxed);
  }
  return pid;
}

//!Returns: the start time of process `pid` (clock ticks since boot) when it exists and is not a
//! zombie; nullopt otherwise. With the pid this identifies a process even when pids are reused.
inline std::optional<std::uint64_t> process_start_time(pid_type pid) noexcept {
  if (pid <= 0) return std::nullopt;
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/stat", static_cast<int>(pid));
  std::FILE* f = std::fopen(path, "re");
  if (f == nullptr) return std::nullopt;
  char buf[1024];
  const std::size_t n = std::fread(buf, 1, sizeof buf - 1, f);
  std::fclose(f);
  buf[n] = '\0';
  // The command name may contain spaces and parentheses: fields start after the last ')'.
  const char* p = std::strrchr(buf, ')');
  if (p == nullptr) return std::nullopt;
  ++p;
  char state = 0;
  int field = 2;  // p points just after field 2 (comm)
  std::uint64_t value = 0;
  while (*p != '\0') {
    while (*p == ' ') ++p;
    if (*p == '\0') break;
    ++field;
    if (field == 3) state = *p;
    if (field == 22) {
      value = std::strtoull(p, nullptr, 10);
      break;
    }
    while (*p != ' ' && *p != '\0') ++p;
  }
  if (field != 22 || state == 'Z' || state == 'X' || state == 'x') return std::nullopt;
  return value;
}

/// Start time of this process (see process_start_time); cached, recomputed after fork.
inline std::uint64_t current_start_time() noexcept {
  auto& c = posix_detail::self_cache();
  if (!c.start_known.load(std::memory_order_acquire)) {
    c.start_time.store(process_start_time(current_pid()).value_or(0), std::memory_order_relaxed);
    c.start_known.store(true, std::memory_order_release);
  }
  return c.start_time.load(std::memory_order_relaxed);
}

// A user holds a write lock on one byte of a range far past the end of any object, taken with
// F_OFD_SETLK on its own open file description: the kernel drops it when that description is
// closed, including when the process dies, so a crashed user never stays counted and nothing in
// the mapping is touched (attaching then costs no page fault).

inline constexpr std::uint64_t kUserLockBase = std::uint64_t{1} << 60;
inline constexpr std::uint32_t kUserLockSlots = 4096;

namespace posix_detail {
inline struct flock user_lock_range(short type, std::uint64_t first, std::uint64_t count) noexcept {
  struct flock l {};
  l.l_type = type;
  l.l_whence = SEEK_SET;
  l.l_start = static_cast<off_t>(kUserLockBase + first);
  l.l_len = static_cast<off_t>(count);
  return l;
}
}  // namespace posix_detail

//!Effects: takes a free user-lock byte of fd's object, trying `hint` first; stores it in `slot`.
//!Returns: 0, or the errno of the failure (EAGAIN: all kUserLockSlots are taken).
inline int take_user_lock(const Fd& fd, std::uint32_t hint, std::uint32_t& slot) noexcept {
  for (std::uint32_t i = 0; i < kUserLockSlots; ++i) {
    slot = (hint + i) % kUserLockSlots;
    struct flock l = posix_detail::user_lock_range(F_WRLCK, slot, 1);
    if (::fcntl(fd.get(), F_OFD_SETLK, &l) == 0) return 0;
    if (errno != EAGAIN && errno != EACCES && errno != EINTR) return errno;
  }
  return EAGAIN;
}

//!Effects: releases the user lock `slot` of fd's open file description, also for the copies
//! of the descriptor that a forked child still holds (closing ours would leave it to them).
inline void release_user_lock(const Fd& fd, std::uint32_t slot) noexcept {
  struct flock l = posix_detail::user_lock_range(F_UNLCK, slot, 1);
  (void)::fcntl(fd.get(), F_OFD_SETLK, &l);
}

//!Returns: the user locks held on fd's object through open file descriptions other than fd's
//! (so not counting fd's own), or nullopt if the kernel cannot tell. The kernel reports one
//! conflicting lock per query, not necessarily the lowest, so both sides of it are searched:
//! 2n + 1 queries for n locks. The count stops at `limit` (1: one query says whether any is held).
inline std::optional<std::uint32_t> count_user_locks(
    const Fd& fd, std::uint32_t limit = kUserLockSlots) noexcept {
  std::uint32_t n = 0;
  // Ranges [first, end) still to search. The larger side of each split waits on the stack and
  // the smaller one is searched first, so the stack never holds more than log2(slots) + 1.
  std::uint32_t stack[32][2];
  int top = 0;
  stack[top][0] = 0;
  stack[top++][1] = kUserLockSlots;
  while (top > 0) {
    std::uint32_t first = stack[--top][0], end = stack[top][1];
    while (first < end) {
      struct flock l = posix_detail::user_lock_range(F_WRLCK, first, end - first);
      if (::fcntl(fd.get(), F_OFD_GETLK, &l) != 0) return std::nullopt;
      if (l.l_type == F_UNLCK) break;
      const std::uint64_t at = static_cast<std::uint64_t>(l.l_start) - kUserLockBase;
      if (at < first || at >= end || top == 32) return std::nullopt;  // not one of ours
      if (++n >= limit) return n;
      const auto slot = static_cast<std::uint32_t>(at);
      const bool left_smaller = slot - first < end - (slot + 1);
      stack[top][0] = left_smaller ? slot + 1 : first;
      stack[top++][1] = left_smaller ? end : slot;
      if (left_smaller)
        end = slot;
      else
        first = slot + 1;
    }
  }
  return n;
}

}  // namespace mpp::detail::os
