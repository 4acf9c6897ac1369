// mpp — POSIX backend, stream sockets for mpp::connection: Unix-domain (paths and Linux's abstract
// namespace) and TCP over IPv4/IPv6; bounded accept/connect/read/write; descriptor passing
// (SCM_RIGHTS). Every call retries on EINTR (a handled signal loses no data) and every blocking
// call takes a deadline.
#pragma once

#include "../../config.hpp"

#if !defined(MPP_OS_POSIX)
#  error "mpp: detail/os/posix/socket.hpp included on a non-POSIX platform"
#endif

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>

#include <chrono>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common.hpp"
#include "process.hpp"  // socket_pair

namespace mpp::detail::os {

/// The descriptor type of a socket.
using socket_handle = int;

/// The address families of a stream socket.
enum class SocketFamily { local, ipv4, ipv6 };

/// A resolved socket address.
struct SockAddr {
  sockaddr_storage storage{};  ///< the address bytes
  socklen_t length = 0;        ///< how many of them are used
  /// The family of the address.
  SocketFamily family() const noexcept {
    return storage.ss_family == AF_UNIX   ? SocketFamily::local
           : storage.ss_family == AF_INET ? SocketFamily::ipv4
                                          : SocketFamily::ipv6;
  }
};

namespace socket_detail {
inline int poll_ms(const std::optional<std::chrono::steady_clock::time_point>& until) noexcept {
  if (!until) return -1;
  const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                      *until - std::chrono::steady_clock::now())
                      .count();
  if (ns <= 0) return 0;
  const auto ms = (ns + 999'999) / 1'000'000;  // round up: never wake before the deadline
  return ms > INT_MAX ? INT_MAX : static_cast<int>(ms);
}
inline int family_constant(SocketFamily f) noexcept {
  return f == SocketFamily::local ? AF_UNIX : f == SocketFamily::ipv4 ? AF_INET : AF_INET6;
}
}  // namespace socket_detail

/// A point in time a blocking socket call gives up at (nullopt: never).
using socket_deadline = std::optional<std::chrono::steady_clock::time_point>;

//!Returns: the Unix-domain address of `path` ("\0name": Linux's abstract namespace).
//!Throws: InvalidArgument (empty or too long).
inline SockAddr unix_address(const std::string& path) {
  SockAddr a;
  auto* un = reinterpret_cast<sockaddr_un*>(&a.storage);
  un->sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(un->sun_path))
    throw InvalidArgument(fmt::format("Unix socket address '{}' must have 1 to {} bytes", path,
                                      sizeof(un->sun_path) - 1));
  std::memcpy(un->sun_path, path.data(), path.size());
  a.length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() +
                                    (path[0] == '\0' ? 0 : 1));
  return a;
}

//!Returns: the TCP address of `host`:`port` in family `f` (ipv4 or ipv6); names are resolved.
//!Throws: OSError (unknown host).
inline SockAddr inet_address(SocketFamily f, const std::string& host, std::uint16_t port) {
  addrinfo hints{};
  hints.ai_family = socket_detail::family_constant(f);
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  const std::string service = std::to_string(port);
  const int rc =
      ::getaddrinfo(host.empty() ? nullptr : host.c_str(), service.c_str(), &hints, &res);
  if (rc != 0 || res == nullptr)
    throw OSError(fmt::format("cannot resolve '{}' ({}): {}", host,
                              f == SocketFamily::ipv4 ? "IPv4" : "IPv6", ::gai_strerror(rc)),
                  rc);
  SockAddr a;
  std::memcpy(&a.storage, res->ai_addr, res->ai_addrlen);
  a.length = res->ai_addrlen;
  ::freeaddrinfo(res);
  return a;
}

//!Returns: the path of a Unix address, or the numeric host and port of an inet address.
inline std::pair<std::string, int> address_parts(const SockAddr& a) {
  if (a.storage.ss_family == AF_UNIX) {
    const auto* un = reinterpret_cast<const sockaddr_un*>(&a.storage);
    const std::size_t off = offsetof(sockaddr_un, sun_path);
    if (a.length <= off) return {std::string(), -1};
    std::size_t n = a.length - off;
    if (un->sun_path[0] != '\0') n = ::strnlen(un->sun_path, n);
    return {std::string(un->sun_path, n), -1};
  }
  char host[NI_MAXHOST] = {};
  char serv[NI_MAXSERV] = {};
  ::getnameinfo(reinterpret_cast<const sockaddr*>(&a.storage), a.length, host, sizeof host, serv,
                sizeof serv, NI_NUMERICHOST | NI_NUMERICSERV);
  return {host, std::atoi(serv)};
}

//!Returns: a listening socket bound to `a`. Throws: OSError (address in use, ...).
inline Fd listen_socket(const SockAddr& a, int backlog, const std::string& what) {
  Fd s{::socket(a.storage.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0)};
  if (!s.valid()) throw_errno("socket", what, errno);
  if (a.storage.ss_family != AF_UNIX) {
    const int one = 1;
    ::setsockopt(s.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);  // as Python on POSIX
  }
  if (::bind(s.get(), reinterpret_cast<const sockaddr*>(&a.storage), a.length) != 0)
    throw_errno("bind", what, errno);
  if (::listen(s.get(), backlog) != 0) throw_errno("listen", what, errno);
  return s;
}

//!Returns: the address socket `fd` is bound to.
inline SockAddr local_address(int fd) {
  SockAddr a;
  a.length = sizeof a.storage;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&a.storage), &a.length) != 0)
    throw_errno("getsockname", std::to_string(fd), errno);
  return a;
}

//!Effects: waits until `fd` has one of `events` or `until` passes (EINTR-safe).
//!Returns: true when ready. Throws: OSError.
inline bool wait_socket(int fd, short events, const socket_deadline& until) {
  for (;;) {
    pollfd p{fd, events, 0};
    const int r = ::poll(&p, 1, socket_detail::poll_ms(until));
    if (r > 0) return true;
    if (r == 0 && until && std::chrono::steady_clock::now() >= *until) return false;
    if (r < 0 && errno != EINTR) throw_errno("poll", std::to_string(fd), errno);
  }
}

//!Returns: true when `fd` became readable (or hung up) before `until`.
inline bool wait_socket_readable(int fd, const socket_deadline& until) {
  return wait_socket(fd, POLLIN, until);
}

//!Effects: accepts a connection on listening socket `fd`, waiting until `until`.
//!Returns: the connected socket and the peer's address, or nullopt on timeout. Throws: OSError.
inline std::optional<std::pair<Fd, SockAddr>> accept_socket(int fd, const socket_deadline& until,
                                                            const std::string& what) {
  for (;;) {
    if (!wait_socket(fd, POLLIN, until)) return std::nullopt;
    SockAddr peer;
    peer.length = sizeof peer.storage;
    const int c = ::accept4(fd, reinterpret_cast<sockaddr*>(&peer.storage), &peer.length,
                            SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (c >= 0) {
      Fd conn{c};
      const int flags = ::fcntl(c, F_GETFL);
      ::fcntl(c, F_SETFL, flags & ~O_NONBLOCK);
      if (peer.storage.ss_family != AF_UNIX) {
        const int one = 1;
        ::setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      }
      return std::pair{std::move(conn), peer};
    }
    if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK || errno == ECONNABORTED)
      continue;
    throw_errno("accept", what, errno);
  }
}

//!Returns: a socket connected to `a`, or throws OSError (refused, no such path, timed out). A
//! Unix listener whose backlog is full is retried every 10 ms until `until`.
inline Fd connect_socket(const SockAddr& a, const socket_deadline& until, const std::string& what) {
  for (;;) {
    Fd s{::socket(a.storage.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0)};
    if (!s.valid()) throw_errno("socket", what, errno);
    if (::connect(s.get(), reinterpret_cast<const sockaddr*>(&a.storage), a.length) != 0) {
      if (errno == EAGAIN && a.storage.ss_family == AF_UNIX) {
        if (until && std::chrono::steady_clock::now() >= *until)
          throw OSError(fmt::format("connect('{}'): the listener's backlog stayed full", what),
                        EAGAIN);
        struct timespec ts {
          0, 10'000'000
        };
        ::nanosleep(&ts, nullptr);
        continue;
      }
      if (errno != EINPROGRESS && errno != EINTR) throw_errno("connect", what, errno);
      if (!wait_socket(s.get(), POLLOUT, until))
        throw OSError(fmt::format("connect('{}') did not complete in time", what), ETIMEDOUT);
      int err = 0;
      socklen_t len = sizeof err;
      ::getsockopt(s.get(), SOL_SOCKET, SO_ERROR, &err, &len);
      if (err != 0) throw_errno("connect", what, err);
    }
    const int flags = ::fcntl(s.get(), F_GETFL);
    ::fcntl(s.get(), F_SETFL, flags & ~O_NONBLOCK);
    if (a.storage.ss_family != AF_UNIX) {
      const int one = 1;
      ::setsockopt(s.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    return s;
  }
}

//!Effects: reads up to `n` bytes into `p`, waiting for data until `until`.
//!Returns: the count read (0: end of file), or -1 on timeout. Throws: OSError.
inline std::ptrdiff_t read_some(int fd, std::byte* p, std::size_t n, const socket_deadline& until,
                                const std::string& what) {
  for (;;) {
    if (until && !wait_socket(fd, POLLIN, until)) return -1;
    const ssize_t r = ::recv(fd, p, n, 0);
    if (r >= 0) return r;
    if (errno == EINTR || errno == EAGAIN) continue;
    if (errno == ECONNRESET) return 0;  // the peer went away: end of file, as Python reads it
    throw_errno("recv", what, errno);
  }
}

//!Effects: writes all `n` bytes of `p` until `until`. Returns: false on timeout (some may be
//! sent). Throws: BrokenPipeError (the peer closed), OSError.
inline bool write_all(int fd, const std::byte* p, std::size_t n, const socket_deadline& until,
                      const std::string& what) {
  while (n > 0) {
    if (until && !wait_socket(fd, POLLOUT, until)) return false;
    const ssize_t r = ::send(fd, p, n, MSG_NOSIGNAL);
    if (r >= 0) {
      p += r;
      n -= static_cast<std::size_t>(r);
      continue;
    }
    if (errno == EINTR || errno == EAGAIN) continue;
    if (errno == EPIPE || errno == ECONNRESET)
      throw BrokenPipeError(fmt::format("send on {}: the other end is closed", what));
    throw_errno("send", what, errno);
  }
  return true;
}

//!Returns: the positions of the descriptors among `fds` that are readable (or hung up), waiting
//! until one is or `until` passes. EINTR-safe: a handled signal resumes the wait. Throws: OSError.
inline std::vector<std::size_t> readable_among(std::span<const int> fds,
                                               const socket_deadline& until) {
  std::vector<pollfd> ps(fds.size());
  for (std::size_t i = 0; i < fds.size(); ++i) ps[i] = pollfd{fds[i], POLLIN, 0};
  std::vector<std::size_t> ready;
  for (;;) {
    const int r = ::poll(ps.data(), ps.size(), socket_detail::poll_ms(until));
    if (r > 0) {
      for (std::size_t i = 0; i < ps.size(); ++i)
        if (ps[i].revents != 0) ready.push_back(i);
      return ready;
    }
    if (r == 0 && (!until || std::chrono::steady_clock::now() >= *until)) return ready;
    if (r < 0 && errno != EINTR) throw_errno("poll", "", errno);
  }
}

//!Effects: sends descriptor `handle` over Unix socket `fd` as Python's reduction.sendfds does (one
//! byte, the count, with SCM_RIGHTS). Throws: BrokenPipeError, OSError.
inline void send_descriptor(int fd, int handle, const std::string& what) {
  std::byte count{1};
  iovec iov{&count, 1};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  std::memcpy(CMSG_DATA(c), &handle, sizeof(int));
  for (;;) {
    if (::sendmsg(fd, &msg, MSG_NOSIGNAL) == 1) return;
    if (errno == EINTR || errno == EAGAIN) continue;
    if (errno == EPIPE || errno == ECONNRESET)
      throw BrokenPipeError(fmt::format("send_handle on {}: the other end is closed", what));
    if (errno == EBADF) throw_errno("send_handle: descriptor", std::to_string(handle), errno);
    throw_errno("sendmsg", what, errno);
  }
}

//!Returns: the descriptor the peer sent with send_descriptor (close-on-exec), or nullopt on
//! timeout. Throws: EOFError (the peer closed), OSError (EBADMSG: a byte arrived without a
//! descriptor: the peer sent something else; the connection's stream is no longer in step).
inline std::optional<int> recv_descriptor(int fd, const socket_deadline& until,
                                          const std::string& what) {
  for (;;) {
    if (until && !wait_socket(fd, POLLIN, until)) return std::nullopt;
    std::byte count{};
    iovec iov{&count, 1};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 4)] = {};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    const ssize_t r = ::recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
    if (r < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      throw_errno("recvmsg", what, errno);
    }
    std::vector<int> got;
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      const std::size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (std::size_t i = 0; i < n; ++i) {
        int h = -1;
        std::memcpy(&h, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
        got.push_back(h);
      }
    }
    if (r == 0 && got.empty())
      throw EOFError(fmt::format("recv_handle on {}: the other end is closed", what));
    if (got.size() == 1 && (msg.msg_flags & MSG_CTRUNC) == 0) return got[0];
    for (int h : got) ::close(h);
    throw OSError(fmt::format("recv_handle on {}: expected one descriptor, received {} (a message "
                              "that is not a handle: the peer must send with send_handle); the "
                              "connection is out of step, close it",
                              what, got.size()),
                  EBADMSG);
  }
}

//!Effects: removes the socket file `path` (a Listener's, when it closes); ignores errors.
inline void unlink_path(const std::string& path) noexcept { ::unlink(path.c_str()); }

}  // namespace mpp::detail::os
