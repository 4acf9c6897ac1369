// mpp — POSIX backend, processes: fork and exec (posix_spawn), pidfds, waiting and reaping,
// signals, CPU affinity, the environment, and the local sockets between a parent and a child.
#pragma once

#include "../../config.hpp"

#if !defined(MPP_OS_POSIX)
#  error "mpp: detail/os/posix/process.hpp included on a non-POSIX platform"
#endif

#include <cxxabi.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <typeinfo>
#include <utility>
#include <vector>

#include "common.hpp"

namespace mpp::detail::os {

//!Effects: registers process-wide handlers run around fork(): `prepare` in the parent just
//! before, `parent` in the parent and `child` in the new child just after (pthread_atfork).
//! Win32 has no fork; its backend makes this a no-op.
inline void at_fork(void (*prepare)(), void (*parent)(), void (*child)()) noexcept {
  ::pthread_atfork(prepare, parent, child);
}

/// A waitable OS handle: becomes readable when what it watches has ended (an fd on POSIX).
using native_handle = int;
/// The value of a native_handle that refers to nothing.
inline constexpr native_handle kNoHandle = -1;
/// Whether this platform can fork (the fork and forkserver start methods).
inline constexpr bool kCanFork = true;
/// Signal numbers used by Process::terminate() and Process::kill().
inline constexpr int kSigTerm = SIGTERM;
inline constexpr int kSigKill = SIGKILL;

namespace posix_detail {
inline int poll_timeout_ms(std::optional<std::chrono::nanoseconds> left) noexcept {
  if (!left) return -1;
  const auto ns = left->count();
  if (ns <= 0) return 0;
  const auto ms = (ns + 999'999) / 1'000'000;  // round up: never wake before the deadline
  return ms > INT_MAX ? INT_MAX : static_cast<int>(ms);
}
}  // namespace posix_detail

//!Returns: a Python-style exit code from a waitpid() status: the exit status, or -N for signal N.
inline int exit_code_from_status(int status) noexcept {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return -WTERMSIG(status);
  return 255;
}

//!Returns: the text form of descriptor `h` for a child's environment (it keeps the same number).
inline std::string handle_to_text(native_handle h) { return std::to_string(h); }

//!Returns: the descriptor written by handle_to_text, or nullopt if `text` is not one.
inline std::optional<native_handle> handle_from_text(const std::string& text) {
  if (text.empty() || text.size() > 10 || text.find_first_not_of("0123456789") != std::string::npos)
    return std::nullopt;
  const long v = std::strtol(text.c_str(), nullptr, 10);
  if (v < 0 || v >= INT_MAX) return std::nullopt;
  return static_cast<native_handle>(v);
}

//!Returns: "SIGTERM" for 15 and so on (Python's names in Process reprs); "" if unknown.
inline std::string signal_name(int signum) {
  const char* abbrev = ::sigabbrev_np(signum);
  return abbrev != nullptr ? std::string("SIG") + abbrev : std::string();
}

//!Effects: forks the calling process (only the calling thread continues in the child).
//!Returns: 0 in the child, the child's pid in the parent. Throws: OSError.
inline pid_type fork_process() {
  const pid_t pid = ::fork();
  if (pid < 0) throw_errno("fork", "", errno);
  return static_cast<pid_type>(pid);
}

//!Effects: flushes C stdio and ends the process at once with `code`: no atexit handlers and no
//! static destructors, so a child never runs its parent's clean-up a second time.
[[noreturn]] inline void exit_process(int code) noexcept {
  std::fflush(nullptr);
  ::_exit(code);
}

//!Returns: a handle that becomes readable when process `pid` ends (a pidfd), or an invalid Fd if
//! the process is already gone (it may still be a zombie to reap).
inline Fd open_process(pid_type pid) noexcept {
  const long fd = ::syscall(SYS_pidfd_open, static_cast<pid_t>(pid), 0);
  return fd < 0 ? Fd{} : Fd{static_cast<int>(fd)};  // pidfds are always close-on-exec
}

//!Effects: reaps child `pid` if it has ended (never blocks).
//!Returns: its Python-style exit code, or nullopt while it runs.
//!Throws: OSError (ECHILD when it is not our child or was reaped already).
inline std::optional<int> poll_process(pid_type pid) {
  int status = 0;
  for (;;) {
    const pid_t r = ::waitpid(static_cast<pid_t>(pid), &status, WNOHANG);
    if (r == 0) return std::nullopt;
    if (r > 0) return exit_code_from_status(status);
    if (errno != EINTR) throw_errno("waitpid", std::to_string(pid), errno);
  }
}

//!Effects: blocks until child `pid` has ended, without reaping it (poll_process does that).
//!Returns: false if it is not (or no longer) our child. Throws: OSError.
inline bool wait_process_exit(pid_type pid) {
  siginfo_t info{};
  for (;;) {
    if (::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOWAIT) == 0) return true;
    if (errno == ECHILD) return false;
    if (errno != EINTR) throw_errno("waitid", std::to_string(pid), errno);
  }
}

//!Returns: a handle that is readable at once (the sentinel of a process already reaped).
inline Fd ready_handle() {
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) throw_errno("pipe2", "", errno);
  ::close(p[1]);  // end of file: always readable
  return Fd{p[0]};
}

//!Effects: waits until `h` is readable or `timeout` elapses (forever when nullopt), EINTR-safe.
//!Returns: true if readable (or hung up). Throws: OSError.
inline bool wait_readable(native_handle h, std::optional<std::chrono::nanoseconds> timeout) {
  const auto until =
      timeout ? std::optional(std::chrono::steady_clock::now() + *timeout) : std::nullopt;
  for (;;) {
    struct pollfd p {
      h, POLLIN, 0
    };
    std::optional<std::chrono::nanoseconds> left;
    if (until)
      left = std::chrono::duration_cast<std::chrono::nanoseconds>(*until -
                                                                  std::chrono::steady_clock::now());
    const int r = ::poll(&p, 1, posix_detail::poll_timeout_ms(left));
    if (r > 0) return true;
    if (r == 0) {
      if (!until || std::chrono::steady_clock::now() >= *until) return false;
      continue;
    }
    if (errno != EINTR) throw_errno("poll", std::to_string(h), errno);
  }
}

//!Effects: waits until one of `hs` is readable or `timeout` elapses (forever when nullopt).
//!Returns: the index of a readable handle, or -1 on timeout. Throws: OSError.
inline int wait_any_readable(std::span<const native_handle> hs,
                             std::optional<std::chrono::nanoseconds> timeout) {
  std::vector<struct pollfd> ps(hs.size());
  for (std::size_t i = 0; i < hs.size(); ++i) ps[i] = {hs[i], POLLIN, 0};
  const auto until =
      timeout ? std::optional(std::chrono::steady_clock::now() + *timeout) : std::nullopt;
  for (;;) {
    std::optional<std::chrono::nanoseconds> left;
    if (until)
      left = std::chrono::duration_cast<std::chrono::nanoseconds>(*until -
                                                                  std::chrono::steady_clock::now());
    const int r = ::poll(ps.data(), ps.size(), posix_detail::poll_timeout_ms(left));
    if (r > 0) {
      for (std::size_t i = 0; i < ps.size(); ++i)
        if (ps[i].revents != 0) return static_cast<int>(i);
    }
    if (r == 0 && (!until || std::chrono::steady_clock::now() >= *until)) return -1;
    if (r < 0 && errno != EINTR) throw_errno("poll", "", errno);
  }
}

//!Effects: sends signal `sig` to process `pid`. Returns: false if no such process. Throws: OSError.
inline bool send_signal(pid_type pid, int sig) {
  if (::kill(static_cast<pid_t>(pid), sig) == 0) return true;
  if (errno == ESRCH) return false;
  throw_errno("kill", std::to_string(pid), errno);
}

//!Returns: whether the C stream `f` writes to a terminal (a progress display redraws in place).
inline bool is_terminal(std::FILE* f) noexcept {
  return f != nullptr && ::isatty(::fileno(f)) == 1;
}

//!Returns: the number of CPUs this process may run on (its affinity mask), at least 1.
inline int cpu_count() noexcept {
  for (std::size_t n = 1024; n <= (std::size_t{1} << 20); n *= 2) {
    cpu_set_t* set = CPU_ALLOC(n);
    if (set == nullptr) break;
    const std::size_t size = CPU_ALLOC_SIZE(n);
    CPU_ZERO_S(size, set);
    if (::sched_getaffinity(0, size, set) == 0) {
      const int count = CPU_COUNT_S(size, set);
      CPU_FREE(set);
      return count > 0 ? count : 1;
    }
    CPU_FREE(set);
    if (errno != EINVAL) break;
  }
  const long n = ::sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? static_cast<int>(n) : 1;
}

/// The path that re-executes the running program (Linux: the /proc/self/exe magic link).
inline std::string self_executable() { return "/proc/self/exe"; }

//!Effects: starts `path` with arguments `argv` and this process's environment plus `env`
//! ("KEY=value" entries, overriding). The handles in `inherit` stay open in the child under the
//! same numbers; nothing else leaks (every mpp handle is close-on-exec). Safe in a multi-threaded
//! process (posix_spawn, no fork of the caller's threads). Returns: the child's pid. Throws:
//! OSError.
inline pid_type spawn_program(const std::string& path, const std::vector<std::string>& argv,
                              const std::vector<std::string>& env,
                              std::span<const native_handle> inherit) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  std::vector<char*> envp;
  for (const auto& e : env) envp.push_back(const_cast<char*>(e.c_str()));
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    const std::string_view entry(*e);
    const std::string_view key = entry.substr(0, entry.find('='));
    bool overridden = false;
    for (const auto& mine : env)
      overridden = overridden || std::string_view(mine).substr(0, mine.find('=')) == key;
    if (!overridden) envp.push_back(*e);
  }
  envp.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  ::posix_spawn_file_actions_init(&actions);
  // dup2(fd, fd) clears FD_CLOEXEC in the child only (glibc >= 2.29; POSIX.1-2024).
  for (const native_handle h : inherit) ::posix_spawn_file_actions_adddup2(&actions, h, h);
  pid_t pid = 0;
  const int rc = ::posix_spawn(&pid, path.c_str(), &actions, nullptr, args.data(), envp.data());
  ::posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) throw_errno("posix_spawn", path, rc);
  return static_cast<pid_type>(pid);
}

//!Returns: the value of environment variable `name`, or nullopt.
inline std::optional<std::string> get_env(const char* name) {
  const char* v = ::getenv(name);
  return v != nullptr ? std::optional<std::string>(v) : std::nullopt;
}

/// Removes environment variable `name` (call only while no other thread reads the environment).
inline void unset_env(const char* name) noexcept { ::unsetenv(name); }

//!Returns: a connected pair of local sockets (close-on-exec): a byte stream, or a packet socket
//! that keeps message boundaries when `packets`. Throws: OSError.
inline std::pair<Fd, Fd> socket_pair(bool packets = false) {
  int sv[2];
  if (::socketpair(AF_UNIX, (packets ? SOCK_SEQPACKET : SOCK_STREAM) | SOCK_CLOEXEC, 0, sv) != 0)
    throw_errno("socketpair", "", errno);
  return {Fd{sv[0]}, Fd{sv[1]}};
}

//!Effects: writes all of `data` to socket `s` (no SIGPIPE), within `timeout` if one is given.
//!Throws: BrokenPipeError if the peer is gone, TimeoutError, OSError otherwise.
inline void send_all(const Fd& s, std::span<const std::byte> data,
                     std::optional<std::chrono::nanoseconds> timeout = std::nullopt) {
  const bool bounded = timeout.has_value();
  const auto until =
      std::chrono::steady_clock::now() + timeout.value_or(std::chrono::nanoseconds::zero());
  std::size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = ::send(s.get(), data.data() + done, data.size() - done,
                             MSG_NOSIGNAL | (bounded ? MSG_DONTWAIT : 0));
    if (n >= 0) {
      done += static_cast<std::size_t>(n);
      continue;
    }
    if (errno == EINTR) continue;
    if (bounded && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      const auto left = std::chrono::duration_cast<std::chrono::nanoseconds>(
          until - std::chrono::steady_clock::now());
      struct pollfd p {
        s.get(), POLLOUT, 0
      };
      if (left.count() <= 0 || ::poll(&p, 1, posix_detail::poll_timeout_ms(left)) == 0)
        fail<TimeoutError>("the other process did not read {} bytes within the timeout",
                           data.size() - done);
      continue;
    }
    if (errno == EPIPE || errno == ECONNRESET)
      fail<BrokenPipeError>("the other process closed its end of the socket (it exited)");
    throw_errno("send", "", errno);
  }
}

//!Effects: reads exactly `buf.size()` bytes from socket `s`.
//!Returns: false on end of file before the first byte. Throws: EOFError on end of file mid-way.
inline bool recv_exact(const Fd& s, std::span<std::byte> buf) {
  std::size_t done = 0;
  while (done < buf.size()) {
    const ssize_t n = ::recv(s.get(), buf.data() + done, buf.size() - done, 0);
    if (n > 0) {
      done += static_cast<std::size_t>(n);
      continue;
    }
    if (n == 0 || errno == ECONNRESET) {
      if (done == 0) return false;
      fail<EOFError>("the other process closed the socket after {} of {} bytes", done, buf.size());
    }
    if (errno != EINTR) throw_errno("recv", "", errno);
  }
  return true;
}

//!Effects: sends one message `msg` over packet socket `s` together with a duplicate of `h`.
//!Throws: BrokenPipeError if the peer is gone, OSError otherwise.
inline void send_with_handle(const Fd& s, std::span<const std::byte> msg, native_handle h) {
  struct iovec iov {
    const_cast<std::byte*>(msg.data()), msg.size()
  };
  alignas(struct cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  struct msghdr m {};
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  m.msg_control = control;
  m.msg_controllen = sizeof control;
  struct cmsghdr* c = CMSG_FIRSTHDR(&m);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  std::memcpy(CMSG_DATA(c), &h, sizeof(int));
  for (;;) {
    if (::sendmsg(s.get(), &m, MSG_NOSIGNAL) >= 0) return;
    if (errno == EINTR) continue;
    if (errno == EPIPE || errno == ECONNRESET)
      fail<BrokenPipeError>("the other process closed its end of the socket (it exited)");
    throw_errno("sendmsg", "", errno);
  }
}

//!Effects: receives one message into `buf` from packet socket `s`, and the handle sent with it
//! into `h` (close-on-exec; left invalid when none came).
//!Returns: the message size; 0 at end of file. Throws: OSError.
inline std::size_t recv_with_handle(const Fd& s, std::span<std::byte> buf, Fd& h) {
  struct iovec iov {
    buf.data(), buf.size()
  };
  alignas(struct cmsghdr) char control[CMSG_SPACE(sizeof(int) * 4)] = {};
  struct msghdr m {};
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  m.msg_control = control;
  m.msg_controllen = sizeof control;
  ssize_t n;
  do n = ::recvmsg(s.get(), &m, MSG_CMSG_CLOEXEC);
  while (n < 0 && errno == EINTR);
  if (n < 0) throw_errno("recvmsg", "", errno);
  for (struct cmsghdr* c = CMSG_FIRSTHDR(&m); c != nullptr; c = CMSG_NXTHDR(&m, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (std::size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      if (h.get() < 0)
        h = Fd{fd};
      else
        ::close(fd);  // more than we asked for: a confused or hostile peer
    }
  }
  return static_cast<std::size_t>(n);
}

/// Marks handle `h` close-on-exec (or inheritable when `inherit`).
inline void set_inheritable(native_handle h, bool inherit) noexcept {
  const int flags = ::fcntl(h, F_GETFD);
  if (flags >= 0) ::fcntl(h, F_SETFD, inherit ? (flags & ~FD_CLOEXEC) : (flags | FD_CLOEXEC));
}

/// Ignores (or restores) the terminal's interrupt signal: a fork server must survive Ctrl-C.
inline void ignore_interrupts(bool ignore) noexcept {
  ::signal(SIGINT, ignore ? SIG_IGN : SIG_DFL);
}

//!Returns: the readable form of a compiler-mangled type name.
inline std::string demangle(const char* mangled) {
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> p(abi::__cxa_demangle(mangled, nullptr, nullptr, &status),
                                           std::free);
  return status == 0 && p ? std::string(p.get()) : std::string(mangled);
}

//!Returns: the type name of the exception being handled (inside a catch block), or "unknown".
inline std::string current_exception_type_name() {
  const std::type_info* t = abi::__cxa_current_exception_type();
  return t != nullptr ? demangle(t->name()) : std::string("unknown");
}

/// Restores the default action of the termination signals (SIGTERM, SIGINT, SIGHUP) in a forked
/// worker, so handlers inherited from the parent (a test framework's, say) do not run there.
inline void default_termination_signals() noexcept {
  for (int sig : {SIGTERM, SIGINT, SIGHUP}) ::signal(sig, SIG_DFL);
}

}  // namespace mpp::detail::os
