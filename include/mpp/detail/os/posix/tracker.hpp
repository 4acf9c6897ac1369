// mpp — POSIX backend, the crash tracker's process: starting the tracker (a re-executed copy
// of the program) and the packet socket it is told about objects through (see detail/tracker.hpp).
#pragma once

#include "../../config.hpp"

#if !defined(MPP_OS_POSIX)
#  error "mpp: detail/os/posix/tracker.hpp included on a non-POSIX platform"
#endif

#include <fcntl.h>
#include <link.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <utility>
#include <vector>

#include "common.hpp"

namespace mpp::detail::os {

/// The environment variable that turns a re-executed copy of the program into a tracker (the
/// number of its connection descriptor); set only in the tracker's own environment.
inline constexpr const char* kTrackerEnv = "MPP_TRACKER_FD";
/// The descriptor number the tracker's connection has in the tracker.
inline constexpr int kTrackerFd = 3;
/// The tracker's argv[0] and process name (as `ps` shows it).
inline constexpr const char* kTrackerName = "mpp-tracker";

//!Effects: starts this program again (/proc/self/exe) as a tracker: `conn` becomes its
//! descriptor kTrackerFd, stdin/stdout/stderr are /dev/null and every other descriptor is closed
//! (the program's pipes, a test runner's output), in a session of its own (a terminal's Ctrl-C
//! or hang-up does not reach it), with no signal blocked. posix_spawn does not fork the caller's
//! threads or run its fork handlers, so this is safe in a multi-threaded program.
//!Returns: the pid of the started process, or -1 with errno set.
inline pid_type spawn_tracker(int conn) noexcept {
  posix_spawn_file_actions_t fa;
  posix_spawnattr_t attr;
  if (::posix_spawn_file_actions_init(&fa) != 0) return -1;
  if (::posix_spawnattr_init(&attr) != 0) {
    ::posix_spawn_file_actions_destroy(&fa);
    return -1;
  }
  ::posix_spawn_file_actions_adddup2(&fa, conn, kTrackerFd);  // clears close-on-exec
  ::posix_spawn_file_actions_addclosefrom_np(&fa, kTrackerFd + 1);
  for (int std_fd = 0; std_fd < 3; ++std_fd)
    ::posix_spawn_file_actions_addopen(&fa, std_fd, "/dev/null", O_RDWR, 0);
  sigset_t none, defaults;
  ::sigemptyset(&none);
  ::sigemptyset(&defaults);
  for (int sig : {SIGTERM, SIGPIPE, SIGCHLD}) ::sigaddset(&defaults, sig);
  ::posix_spawnattr_setsigmask(&attr, &none);
  ::posix_spawnattr_setsigdefault(&attr, &defaults);
  ::posix_spawnattr_setflags(&attr,
                             POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  std::vector<char*> envp;
  char fd_entry[32];
  std::snprintf(fd_entry, sizeof fd_entry, "%s=%d", kTrackerEnv, kTrackerFd);
  envp.push_back(fd_entry);
  const std::size_t key_len = std::strlen(kTrackerEnv);
  for (char** e = environ; e != nullptr && *e != nullptr; ++e)
    if (std::strncmp(*e, kTrackerEnv, key_len) != 0 || (*e)[key_len] != '=') envp.push_back(*e);
  envp.push_back(nullptr);
  char* argv[] = {const_cast<char*>(kTrackerName), nullptr};
  pid_t pid = -1;
  const int rc = ::posix_spawn(&pid, "/proc/self/exe", &fa, &attr, argv, envp.data());
  ::posix_spawn_file_actions_destroy(&fa);
  ::posix_spawnattr_destroy(&attr);
  if (rc != 0) {
    errno = rc;
    return -1;
  }
  return static_cast<pid_type>(pid);
}

//!Returns: whether `code` lies in the program's executable itself, not in a shared library: only
//! then does re-executing /proc/self/exe run that code (a plugin's host program may do anything
//! when started without arguments).
inline bool in_main_executable(const void* code) noexcept {
  struct Query {
    std::uintptr_t addr;
    bool found;
  } q{reinterpret_cast<std::uintptr_t>(code), false};
  ::dl_iterate_phdr(
      [](struct dl_phdr_info* info, std::size_t, void* data) -> int {
        auto* query = static_cast<Query*>(data);
        for (int i = 0; i < info->dlpi_phnum; ++i) {
          const auto& ph = info->dlpi_phdr[i];
          if (ph.p_type != PT_LOAD) continue;
          const std::uintptr_t begin = info->dlpi_addr + ph.p_vaddr;
          if (query->addr >= begin && query->addr < begin + ph.p_memsz) query->found = true;
        }
        return 1;  // the first object reported is the executable: stop there
      },
      &q);
  return q.found;
}

//!Effects: in the started copy, before any of the program's own static initialisers: forks, the
//! parent (the process spawn_tracker started) exits at once so that the program reaps it, and
//! the child — an orphan that init (or the nearest subreaper) adopts and reaps — carries on as
//! the tracker, with no working directory of note and SIGINT/SIGHUP ignored. Returns only in the
//! child; false if it cannot fork (then the caller exits).
inline bool become_tracker() noexcept {
  const pid_t pid = ::fork();
  if (pid < 0) return false;
  if (pid > 0) ::_exit(0);
  (void)!::chdir("/");
  ::signal(SIGINT, SIG_IGN);
  ::signal(SIGHUP, SIG_IGN);
  ::signal(SIGPIPE, SIG_IGN);
  (void)::prctl(PR_SET_NAME, kTrackerName, 0, 0, 0);
  return true;
}

//!Returns: whether this process was started by spawn_tracker(): its environment names `fd`
//! and `fd` is a packet socket.
inline bool is_tracker_connection(int fd) noexcept {
  const char* v = ::getenv(kTrackerEnv);
  if (v == nullptr || std::strtol(v, nullptr, 10) != fd) return false;
  int type = 0;
  socklen_t len = sizeof type;
  return ::getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0 && type == SOCK_SEQPACKET;
}

//!Returns: a connected pair of packet sockets (close-on-exec; each send is one whole message),
//! both invalid if the system refuses.
inline std::pair<Fd, Fd> packet_pair() noexcept {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) return {};
  // Far from the low numbers a program closes, dup2s over or hands to its children.
  for (int& s : sv) {
    if (const int high = ::fcntl(s, F_DUPFD_CLOEXEC, 700); high >= 0) {
      ::close(s);
      s = high;
    }
  }
  return {Fd{sv[0]}, Fd{sv[1]}};
}

//!Effects: sends one message over packet socket `fd` without raising SIGPIPE, waiting at most
//! `bound` for room in the socket's buffer.
//!Returns: 0, or the errno (EAGAIN after the bound; EPIPE/ECONNRESET: the peer is gone).
inline int send_packet(int fd, const void* data, std::size_t n,
                       std::chrono::milliseconds bound) noexcept {
  const auto until = std::chrono::steady_clock::now() + bound;
  for (;;) {
    if (::send(fd, data, n, MSG_NOSIGNAL | MSG_DONTWAIT) >= 0) return 0;
    const int err = errno;
    if (err == EINTR) continue;
    if (err != EAGAIN && err != EWOULDBLOCK) return err;
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        until - std::chrono::steady_clock::now());
    if (left.count() <= 0) return EAGAIN;
    struct pollfd p {
      fd, POLLOUT, 0
    };
    (void)::poll(&p, 1, static_cast<int>(left.count()) + 1);
  }
}

//!Effects: receives one message from packet socket `fd` into `buf`, waiting at most `timeout`
//! (forever when negative; not at all when zero).
//!Returns: its size, 0 at end of file, -1 on timeout or error, -2 if `timeout` is zero and no
//! message is there.
inline long recv_packet(int fd, void* buf, std::size_t n,
                        std::chrono::milliseconds timeout) noexcept {
  if (timeout.count() == 0) {
    for (;;) {
      const ssize_t got = ::recv(fd, buf, n, MSG_DONTWAIT);
      if (got >= 0) return static_cast<long>(got);
      if (errno == EAGAIN || errno == EWOULDBLOCK) return -2;
      if (errno != EINTR) return -1;
    }
  }
  const auto until = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    if (timeout.count() > 0) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          until - std::chrono::steady_clock::now());
      struct pollfd p {
        fd, POLLIN, 0
      };
      const int r = ::poll(&p, 1, left.count() > 0 ? static_cast<int>(left.count()) + 1 : 0);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) return -1;
    }
    const ssize_t got = ::recv(fd, buf, n, 0);
    if (got >= 0) return static_cast<long>(got);
    if (errno != EINTR) return -1;
  }
}

//!Effects: reaps child `pid` (waits for it: the tracker's first process exits at once).
inline void reap(pid_type pid) noexcept {
  int status = 0;
  while (::waitpid(static_cast<pid_t>(pid), &status, 0) < 0 && errno == EINTR) {
  }
}

}  // namespace mpp::detail::os
