// mpp — Python's multiprocessing.connection over sockets: Listener and Client (Unix sockets,
// Linux's abstract namespace, TCP over IPv4/IPv6), their Connections, connection::Pipe, wait()
// over connections, listeners, process sentinels and descriptors, and descriptor passing
// (Python's reduction.send_handle / recv_handle).
//
// Wire-compatible with CPython: the same framing and the same mutual HMAC authentication, so a
// Python `multiprocessing.connection.Client(address, authkey=k)` talks to an mpp Listener with
// send_bytes/recv_bytes, and an mpp Client to a Python Listener. HMAC and random bytes come from
// OpenSSL's libcrypto: a program that includes this header links it (CMake: mpp::connection).
// Not included by mpp/mpp.hpp, so that other programs need no crypto library. docs/connection.md
// lists what matches Python and what differs; the sockets are POSIX-only for now.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "detail/config.hpp"

#if !defined(MPP_OS_POSIX)
#  error \
      "mpp/connection.hpp: socket connections are not supported on Windows yet (named pipes are planned; see docs/connection.md)"
#endif

#include "codec.hpp"
#include "detail/connection/protocol.hpp"
#include "detail/connection/stream.hpp"
#include "errors.hpp"
#include "process.hpp"
#include "timeout.hpp"

namespace mpp::connection {

/// Address families (Python's 'AF_UNIX', 'AF_INET', 'AF_INET6'; 'AF_PIPE' is not supported yet).
enum class Family {
  af_unix,   ///< Unix-domain stream socket: a path, or "\0name" in Linux's abstract namespace
  af_inet,   ///< TCP over IPv4
  af_inet6,  ///< TCP over IPv6
};

/// Where a Listener listens or a Client connects: a Unix socket path (Python's str address) or a
/// host and port (Python's (host, port) tuple).
struct Address {
  /// Unix sockets: the path ("\0name": Linux's abstract namespace); TCP: the host name or number.
  std::string host;
  /// The TCP port; empty for a Unix socket.
  std::optional<std::uint16_t> port;

  /// No address: a Listener picks one (a fresh path, or localhost with a free port).
  Address() = default;
  /// A Unix socket path.
  Address(std::string path) : host(std::move(path)) {}  // NOLINT(google-explicit-constructor)
  /// A Unix socket path.
  Address(const char* path) : host(path) {}  // NOLINT(google-explicit-constructor)
  /// A TCP address (Python's (host, port)).
  Address(std::string h, std::uint16_t p) : host(std::move(h)), port(p) {}
  /// Whether no address was given.
  bool empty() const noexcept { return host.empty() && !port; }
  /// The family this address implies (Python's address_type): a port means TCP, IPv6 when the
  /// host contains ':'.
  Family family() const noexcept {
    if (!port) return Family::af_unix;
    return host.find(':') != std::string::npos ? Family::af_inet6 : Family::af_inet;
  }
  /// The address as text: the path ('@' for the abstract namespace's leading NUL), host:port.
  std::string str() const {
    if (!port) return !host.empty() && host[0] == '\0' ? "@" + host.substr(1) : host;
    return host.find(':') != std::string::npos ? fmt::format("[{}]:{}", host, *port)
                                               : fmt::format("{}:{}", host, *port);
  }
  /// Equal addresses.
  friend bool operator==(const Address&, const Address&) = default;
};

/// The key of the HMAC handshake (Python's authkey argument).
class Authkey {
 public:
  /// The calling process's authkey (mpp::current_process().authkey()), read when used.
  Authkey() = default;
  /// An explicit key.
  Authkey(Bytes key) : key_(std::move(key)) {}  // NOLINT(google-explicit-constructor)
  /// An explicit key given as characters (Python's b"secret").
  Authkey(std::string_view key)  // NOLINT(google-explicit-constructor)
      : key_(Bytes(reinterpret_cast<const std::byte*>(key.data()),
                   reinterpret_cast<const std::byte*>(key.data()) + key.size())) {}
  /// An explicit key given as characters.
  Authkey(const char* key) : Authkey(std::string_view(key)) {}  // NOLINT
  /// An explicit key given as characters.
  Authkey(const std::string& key) : Authkey(std::string_view(key)) {}  // NOLINT
  /// No authentication at all (Python's authkey=None): only for trusted networks.
  static Authkey none() {
    Authkey a;
    a.none_ = true;
    return a;
  }
  /// Whether the connection is authenticated.
  bool enabled() const noexcept { return !none_; }
  /// The key to use (the current process's when none was given).
  Bytes key() const { return key_ ? *key_ : current_process().authkey(); }

 private:
  std::optional<Bytes> key_;
  bool none_ = false;
};

/// Options of Listener and Client beyond Python's arguments.
struct ConnectionOptions {
  /// Accept the HMAC-MD5 handshake of Python 3.11 and older (MD5 is weak: only on trusted
  /// networks, until those peers are upgraded).
  bool legacy_md5 = false;
  /// How long the handshake may take before the peer is dropped with AuthenticationError (a peer
  /// that stalls cannot block accept() or Client for longer).
  std::chrono::duration<double> handshake_timeout{20.0};
  /// How long Client may wait for the connection to be established.
  std::chrono::duration<double> connect_timeout{20.0};
};

template <class T>
class Connection;
namespace detail_connection {
struct Access;
}

/// A socket connection (Python's multiprocessing.connection.Connection from a Listener, Client or
/// connection::Pipe). `Connection<T>` carries values of T through mpp's codec; `Connection<>`
/// (the default) carries values of any codec type, checked at recv<U>(); send_bytes/recv_bytes
/// carry raw messages and are what a Python peer reads and writes. Copies share the socket;
/// closing one closes all copies in this process; a forked child has its own copy of the socket.
template <class T = void>
class Connection {
  static constexpr bool kUntyped = std::is_void_v<T>;
  struct NoElement {};
  using Elem = std::conditional_t<kUntyped, NoElement, T>;

 public:
  /// A connection that is already closed (assign a real one to it).
  Connection() = default;
  /// The untyped view of the same socket (for send_handle, wait and recv_bytes of any kind).
  operator Connection<>() const requires(!kUntyped) {  // NOLINT(google-explicit-constructor)
    return Connection<>(s_);
  }

  //!Effects: sends `v` as one message (Python's send(obj)), encoded with mpp::codec<T>, waiting
  //! for room at most `timeout`. Throws: BrokenPipeError (the other end is closed), TimeoutError
  //! (the connection is then closed: a half-sent message cannot be taken back), OSError (closed
  //! or receive-only end, or a failed system call).
  void send(const Elem& v, Timeout timeout = std::nullopt) requires(!kUntyped) {
    auto& s = stream();
    s.check(true);
    s.scratch.clear();
    codec<Elem>::encode(v, s.scratch);
    detail::connection::StreamIO io{s, detail::connection::deadline_of(timeout)};
    detail::connection::send_frame(io, s.scratch);
  }

  //!Effects: sends `v` of any codec type U, tagged with U's fingerprint and name so that recv<U>()
  //! can check it (Connection<> only). Throws: as send(const T&).
  template <class U>
  requires(kUntyped) void send(const U& v, Timeout timeout = std::nullopt) {
    static_assert(Encodable<U>,
                  "mpp: this type cannot cross processes: make it trivially copyable, give it a "
                  "cereal serialize() member, or specialise mpp::codec<T>");
    auto& s = stream();
    s.check(true);
    constexpr TypeInfo ti = type_info<U>();
    const auto n = static_cast<std::uint32_t>(std::min<std::size_t>(ti.name.size(), 120));
    std::array<std::byte, 12 + 120> tag{};
    std::memcpy(tag.data(), &ti.fingerprint, 8);
    std::memcpy(tag.data() + 8, &n, 4);
    std::memcpy(tag.data() + 12, ti.name.data(), n);
    s.scratch.clear();
    codec<U>::encode(v, s.scratch);
    detail::connection::StreamIO io{s, detail::connection::deadline_of(timeout)};
    detail::connection::send_frame(io, s.scratch, std::span(tag.data(), 12 + std::size_t{n}));
  }

  //!Returns: the next value (Python's recv()), waiting at most `timeout` (default: forever).
  //!Throws: EOFError (the other end is closed), TimeoutError (nothing arrived; or the message
  //! arrived only in part, and the connection is closed), OSError (closed or send-only end),
  //! CorruptedError and codec errors (a message that does not decode is dropped), OSError.
  Elem recv(Timeout timeout = std::nullopt) requires(!kUntyped) {
    auto& s = stream();
    Bytes& m = detail::connection::next_message(s, detail::connection::deadline_of(timeout));
    Bytes b = std::move(m);
    s.kept.reset();
    return codec<Elem>::decode(b);
  }

  //!Returns: the next value, which must be a U (Connection<> only); waits at most `timeout`.
  //!Throws: TypeMismatchError naming both types (the message is kept: receive it as its type or
  //! with recv_bytes), and as recv().
  template <class U>
  requires(kUntyped) U recv(Timeout timeout = std::nullopt) {
    static_assert(Encodable<U>, "mpp: recv<U>() needs a type with an mpp::codec");
    auto& s = stream();
    Bytes& m = detail::connection::next_message(s, detail::connection::deadline_of(timeout));
    std::uint64_t fp = 0;
    std::uint32_t n = 0;
    if (m.size() >= 12) {
      std::memcpy(&fp, m.data(), 8);
      std::memcpy(&n, m.data() + 8, 4);
    }
    if (m.size() < 12 || n > 120 || m.size() < 12 + std::size_t{n})
      detail::fail<TypeMismatchError>(
          "recv<{}> on {}: the next message has no type tag (it was sent with send_bytes or by "
          "a Python peer); receive it with recv_bytes (the message is kept)",
          type_info<U>().name, s.what);
    if (fp != type_info<U>().fingerprint)
      detail::fail<TypeMismatchError>(
          "recv<{}> on {}: the next message is a '{}'; receive it as that type (the message is "
          "kept)",
          type_info<U>().name, s.what,
          detail::connection::excerpt(std::span<const std::byte>(m).subspan(12, n)));
    Bytes b = std::move(m);
    s.kept.reset();
    return codec<U>::decode(std::span<const std::byte>(b).subspan(12 + std::size_t{n}));
  }

  //!Effects: sends `size` bytes of `buf` from `offset` (all the rest by default) as one message
  //! (Python's send_bytes(buffer, offset, size)); the 8-byte length form is used past 2 GiB - 1.
  //!Throws: ValueError (offset/size outside the buffer), OSError (closed or receive-only end),
  //! BrokenPipeError, TimeoutError (the connection is then closed), OSError.
  void send_bytes(std::span<const std::byte> buf, std::size_t offset = 0,
                  std::optional<std::size_t> size = std::nullopt, Timeout timeout = std::nullopt) {
    auto& s = stream();
    s.check(true);
    if (offset > buf.size())
      detail::fail<ValueError>("send_bytes on {}: offset {} is past the {}-byte buffer", s.what,
                               offset, buf.size());
    const std::size_t n = size.value_or(buf.size() - offset);
    if (n > buf.size() - offset)
      detail::fail<ValueError>("send_bytes on {}: offset {} + size {} is past the {}-byte buffer",
                               s.what, offset, n, buf.size());
    detail::connection::StreamIO io{s, detail::connection::deadline_of(timeout)};
    detail::connection::send_frame(io, buf.subspan(offset, n));
  }
  /// send_bytes of the characters of `text` (from `offset`, `size` of them).
  void send_bytes(std::string_view text, std::size_t offset = 0,
                  std::optional<std::size_t> size = std::nullopt, Timeout timeout = std::nullopt) {
    send_bytes(std::as_bytes(std::span(text.data(), text.size())), offset, size, timeout);
  }

  //!Returns: the next message as bytes (Python's recv_bytes(maxlength)), waiting at most
  //! `timeout`. Throws: OSError if it is longer than `maxlength` (as Python, the connection is
  //! then closed; also a closed or send-only end), EOFError, TimeoutError.
  Bytes recv_bytes(std::optional<std::size_t> maxlength = std::nullopt,
                   Timeout timeout = std::nullopt) {
    auto& s = stream();
    if (!s.kept && maxlength) {  // check the header before reading a body that is too long
      s.check(false);
      const auto until = detail::connection::deadline_of(timeout);
      if (until && !detail::os::wait_socket_readable(s.fd.get(), until))
        detail::fail<TimeoutError>("recv_bytes on {}: nothing arrived in time", s.what);
      detail::connection::StreamIO io{s, until};
      const std::uint64_t n = read_length_or_close(io);
      if (n > *maxlength) bad_length(s, n, *maxlength);
      Bytes b;
      detail::connection::read_body(io, n, b);
      return b;
    }
    Bytes& m = detail::connection::next_message(s, detail::connection::deadline_of(timeout));
    if (maxlength && m.size() > *maxlength) bad_length(s, m.size(), *maxlength);
    Bytes b = std::move(m);
    s.kept.reset();
    return b;
  }

  //!Effects: receives the next message into `buf` from `offset` (Python's
  //! recv_bytes_into(buffer, offset)). Returns: the message's size in bytes.
  //!Throws: BufferTooShort (the message is kept: receive it again with a larger buffer or with
  //! recv_bytes), ValueError (offset past the buffer), OSError (closed or send-only end), EOFError,
  //! TimeoutError, OSError.
  std::size_t recv_bytes_into(std::span<std::byte> buf, std::size_t offset = 0,
                              Timeout timeout = std::nullopt) {
    auto& s = stream();
    if (offset > buf.size())
      detail::fail<ValueError>("recv_bytes_into on {}: offset {} is past the {}-byte buffer",
                               s.what, offset, buf.size());
    const auto dst = buf.subspan(offset);
    if (!s.kept) {  // straight into the caller's buffer when it fits
      s.check(false);
      const auto until = detail::connection::deadline_of(timeout);
      if (until && !detail::os::wait_socket_readable(s.fd.get(), until))
        detail::fail<TimeoutError>("recv_bytes_into on {}: nothing arrived in time", s.what);
      detail::connection::StreamIO io{s, until};
      const std::uint64_t n = read_length_or_close(io);
      if (n <= dst.size()) {
        if (n > 0) io.read_exact(dst.data(), static_cast<std::size_t>(n), false);
        return static_cast<std::size_t>(n);
      }
      Bytes b;
      detail::connection::read_body(io, n, b);
      s.kept = std::move(b);
    }
    const std::size_t n = s.kept->size();
    if (n > dst.size())
      throw BufferTooShort(fmt::format("recv_bytes_into on {}: the next message has {} bytes, the "
                                       "buffer has room for {} (the message is kept)",
                                       s.what, n, dst.size()),
                           n);
    if (n > 0) std::memcpy(dst.data(), s.kept->data(), n);
    s.kept.reset();
    return n;
  }

  //!Returns: whether there is something to receive, or the other end is closed, so that recv
  //! would not block (Python's poll(timeout)); waits at most `timeout` (default 0: do not wait;
  //! std::nullopt: forever). Throws: OSError (closed or send-only end).
  bool poll(Timeout timeout = std::chrono::duration<double>(0)) const {
    auto& s = stream();
    if (s.kept) return true;
    s.check(false);
    return detail::os::wait_socket_readable(s.fd.get(), detail::connection::deadline_of(timeout));
  }

  //!Effects: closes the socket in this process (Python's close()); the other end's recv raises
  //! EOFError once every process holding this end closed it.
  void close() noexcept {
    if (s_) s_->close();
  }
  /// True after close() (or for a default-constructed Connection).
  bool closed() const noexcept { return !s_ || s_->closed(); }
  /// True if this end can receive.
  bool readable() const noexcept { return s_ && s_->readable; }
  /// True if this end can send.
  bool writable() const noexcept { return s_ && s_->writable; }
  //!Returns: the socket's descriptor (Python's fileno()): readable when recv would not block
  //! (except for a message kept by TypeMismatchError or BufferTooShort: use poll() or wait()).
  //!Throws: OSError (closed).
  int fileno() const {
    auto& s = stream();
    if (s.closed()) detail::fail<OSError>("fileno on {}: the connection is closed", s.what);
    return s.fd.get();
  }

 private:
  template <class>
  friend class Connection;
  friend struct detail_connection::Access;

  explicit Connection(std::shared_ptr<detail::connection::Stream> s) : s_(std::move(s)) {}

  detail::connection::Stream& stream() const {
    if (!s_) detail::fail<OSError>("use of a default-constructed (closed) Connection");
    return *s_;
  }
  static std::uint64_t read_length_or_close(detail::connection::StreamIO& io) {
    try {
      return detail::connection::read_length(io);
    } catch (const CorruptedError& e) {
      io.s.close();
      throw CorruptedError(
          fmt::format("recv on {}: {}; the connection is closed", io.s.what, e.what()));
    }
  }
  [[noreturn]] static void bad_length(detail::connection::Stream& s, std::uint64_t n,
                                      std::size_t max) {
    s.close();  // Python's _bad_message_length: the stream cannot skip the message
    throw OSError(fmt::format("recv_bytes on {}: bad message length: {} bytes, more than maxlength "
                              "{}; the connection is closed",
                              s.what, n, max),
                  EMSGSIZE);
  }

  std::shared_ptr<detail::connection::Stream> s_;
};

namespace detail_connection {
// Reaches the stream behind a Connection for the free functions and classes of this header.
struct Access {
  template <class T>
  static Connection<T> make(std::shared_ptr<detail::connection::Stream> s) {
    return Connection<T>(std::move(s));
  }
  template <class T>
  static detail::connection::Stream& stream(const Connection<T>& c) {
    return c.stream();
  }
  template <class T>
  static const detail::connection::Stream* get(const Connection<T>& c) noexcept {
    return c.s_.get();
  }
};

inline detail::os::SockAddr resolve(const Address& a, Family f) {
  if (f == Family::af_unix) {
    if (a.port)
      detail::fail<InvalidArgument>("address {} has a port: it is not a Unix socket path", a.str());
    return detail::os::unix_address(a.host);
  }
  if (!a.port)
    detail::fail<InvalidArgument>("address '{}' has no port: a TCP address is a host and a port",
                                  a.str());
  return detail::os::inet_address(
      f == Family::af_inet ? detail::os::SocketFamily::ipv4 : detail::os::SocketFamily::ipv6,
      a.host, *a.port);
}
inline Address address_of(const detail::os::SockAddr& sa) {
  auto [host, port] = detail::os::address_parts(sa);
  if (port < 0) return Address(host);
  return Address(host, static_cast<std::uint16_t>(port));
}
inline void authenticate(detail::connection::Stream& s, const Authkey& authkey,
                         const ConnectionOptions& opts, bool serving) {
  if (!authkey.enabled()) return;
  const Bytes key = authkey.key();
  detail::connection::StreamIO io{s, detail::connection::deadline_of(opts.handshake_timeout)};
  try {
    if (serving) {
      detail::connection::deliver_challenge(io, key, opts.legacy_md5);
      detail::connection::answer_challenge(io, key, opts.legacy_md5);
    } else {
      detail::connection::answer_challenge(io, key, opts.legacy_md5);
      detail::connection::deliver_challenge(io, key, opts.legacy_md5);
    }
  } catch (const AuthenticationError& e) {
    s.close();
    throw AuthenticationError(fmt::format("{}: {}", s.what, e.what()));
  } catch (const Error& e) {  // EOF, timeout, reset, garbage lengths: no authenticated peer
    s.close();
    throw AuthenticationError(fmt::format(
        "{}: authentication failed within the {} s handshake: {} (does the peer use the same "
        "authkey and speak the multiprocessing.connection protocol?)",
        s.what, opts.handshake_timeout.count(), e.what()));
  }
}
}  // namespace detail_connection

/// A bound socket accepting connections (Python's multiprocessing.connection.Listener). Moves,
/// does not copy. A Unix socket path is removed when the creating process closes the Listener.
class Listener {
 public:
  //!Effects: binds and listens on `address` (empty: a fresh path in the temporary directory, or
  //! localhost with a free port for TCP) with the given `family` (default: the address's own,
  //! Python's address_type) and `backlog`. Connections are authenticated with `authkey` (default:
  //! current_process().authkey(); Authkey::none() for none).
  //!Throws: InvalidArgument (an address that does not fit the family), OSError (in use, ...).
  explicit Listener(Address address = {}, std::optional<Family> family = std::nullopt,
                    int backlog = 1, Authkey authkey = {}, ConnectionOptions options = {})
      : authkey_(std::move(authkey)), options_(options), owner_(detail::os::current_pid()) {
    family_ = family.value_or(address.empty() ? Family::af_unix : address.family());
    if (address.empty()) {
      if (family_ == Family::af_unix)
        address = Address(fmt::format("/tmp/mpp-listener-{}-{:016x}", detail::os::current_pid(),
                                      detail::os::random_u64()));
      else
        address = Address(family_ == Family::af_inet ? "127.0.0.1" : "::1", 0);
    }
    const auto sa = detail_connection::resolve(address, family_);
    fd_ = detail::os::listen_socket(sa, backlog, address.str());
    address_ = family_ == Family::af_unix
                   ? address
                   : detail_connection::address_of(detail::os::local_address(fd_.get()));
    if (family_ == Family::af_unix && !address_.host.empty() && address_.host[0] != '\0')
      unlink_ = true;
  }
  /// Takes over `o`'s socket (`o` is left closed).
  Listener(Listener&& o) noexcept = default;
  /// Closes this listener, then takes over `o`'s socket.
  Listener& operator=(Listener&& o) noexcept {
    if (this != &o) {
      close();
      fd_ = std::move(o.fd_);
      address_ = std::move(o.address_);
      family_ = o.family_;
      last_ = std::move(o.last_);
      authkey_ = std::move(o.authkey_);
      options_ = o.options_;
      unlink_ = std::exchange(o.unlink_, false);
      owner_ = o.owner_;
    }
    return *this;
  }
  /// Closes the listener (close()).
  ~Listener() { close(); }

  //!Returns: the next connection, authenticated (Python's accept()), waiting for a client at
  //! most `timeout` (default: forever); the handshake itself is bounded by
  //! ConnectionOptions::handshake_timeout. `Connection<T>` receives values of T.
  //!Throws: TimeoutError (no client came), AuthenticationError (wrong key, a peer that sent
  //! garbage or stalled: that peer is dropped, the Listener keeps listening), OSError (closed).
  template <class T = void>
  Connection<T> accept(Timeout timeout = std::nullopt) {
    if (!fd_.valid())
      throw OSError(fmt::format("accept on listener {}: the listener is closed", address_.str()),
                    EBADF);
    auto got = detail::os::accept_socket(fd_.get(), detail::connection::deadline_of(timeout),
                                         address_.str());
    if (!got)
      detail::fail<TimeoutError>("accept on listener {}: no client connected within {} s",
                                 address_.str(), timeout.seconds_or(0));
    last_ = detail_connection::address_of(got->second);
    auto s = std::make_shared<detail::connection::Stream>(
        std::move(got->first), fmt::format("connection accepted by '{}'", address_.str()),
        family_ == Family::af_unix);
    detail_connection::authenticate(*s, authkey_, options_, true);
    return detail_connection::Access::make<T>(std::move(s));
  }

  //!Effects: stops listening (Python's close()); a Unix socket path is removed (by the process
  //! that created the Listener only: a forked child's copy leaves it).
  void close() noexcept {
    if (!fd_.valid()) return;
    fd_.reset();
    if (unlink_ && owner_ == detail::os::current_pid()) detail::os::unlink_path(address_.host);
    unlink_ = false;
  }
  /// True after close().
  bool closed() const noexcept { return !fd_.valid(); }
  /// The bound address (Python's address): for TCP with port 0, the port chosen.
  const Address& address() const noexcept { return address_; }
  /// The address of the last accepted client (Python's last_accepted; an empty path for an
  /// unnamed Unix client), or nullopt before the first accept.
  const std::optional<Address>& last_accepted() const noexcept { return last_; }
  /// The family of the socket.
  Family family() const noexcept { return family_; }
  /// The listening socket's descriptor: readable when accept() would not wait for a client.
  int fileno() const {
    if (!fd_.valid())
      detail::fail<OSError>("fileno on listener {}: the listener is closed", address_.str());
    return fd_.get();
  }

 private:
  detail::os::Fd fd_;
  Address address_;
  Family family_ = Family::af_unix;
  std::optional<Address> last_;
  Authkey authkey_;
  ConnectionOptions options_;
  bool unlink_ = false;
  detail::os::pid_type owner_ = 0;
};

//!Returns: a connection to the Listener at `address` (Python's Client()), authenticated with
//! `authkey` (default: current_process().authkey(); Authkey::none() for none).
//!Throws: OSError (nobody listens there, refused, timed out), AuthenticationError (rejected,
//! wrong key, a legacy peer without opt-in), InvalidArgument.
template <class T = void>
Connection<T> Client(const Address& address, std::optional<Family> family = std::nullopt,
                     Authkey authkey = {}, const ConnectionOptions& options = {}) {
  const Family f = family.value_or(address.family());
  const auto sa = detail_connection::resolve(address, f);
  auto fd = detail::os::connect_socket(sa, detail::connection::deadline_of(options.connect_timeout),
                                       address.str());
  auto s = std::make_shared<detail::connection::Stream>(
      std::move(fd), fmt::format("connection to '{}'", address.str()), f == Family::af_unix);
  detail_connection::authenticate(*s, authkey, options, false);
  return detail_connection::Access::make<T>(std::move(s));
}

//!Returns: a connected pair of socket Connections (Python's connection.Pipe() on POSIX: a Unix
//! socket pair); with duplex=false the first can only receive and the second only send. Forked
//! children inherit both; descriptors pass over them (send_handle).
template <class T = void>
std::pair<Connection<T>, Connection<T>> Pipe(bool duplex = true) {
  auto [a, b] = detail::os::socket_pair();
  auto sa = std::make_shared<detail::connection::Stream>(std::move(a), "socket pipe end 0", true);
  auto sb = std::make_shared<detail::connection::Stream>(std::move(b), "socket pipe end 1", true);
  if (!duplex) {
    sa->writable = false;
    sb->readable = false;
  }
  return {detail_connection::Access::make<T>(std::move(sa)),
          detail_connection::Access::make<T>(std::move(sb))};
}

/// Something wait() can wait on: a Connection (ready: recv would not block), a Listener (a client
/// is waiting), a Process (it ended: its sentinel), or a raw descriptor (readable).
class Waitable {
 public:
  /// A connection: ready when recv would not block (a message, or the other end closed).
  template <class T>
  Waitable(const Connection<T>& c)
      : fd_(c.fileno()), s_(detail_connection::Access::get(c)) {}  // NOLINT
  /// A listener: ready when a client is waiting to be accepted.
  Waitable(const Listener& l) : fd_(l.fileno()) {}  // NOLINT(google-explicit-constructor)
  /// A process: ready when it has ended (its sentinel).
  Waitable(const Process& p) : fd_(p.sentinel()) {}  // NOLINT(google-explicit-constructor)
  /// A raw descriptor: ready when readable (or hung up).
  Waitable(int fd) : fd_(fd) {}  // NOLINT(google-explicit-constructor)
  /// The descriptor waited on.
  int fileno() const noexcept { return fd_; }

 private:
  friend std::vector<std::size_t> wait(std::span<const Waitable>, Timeout);
  int fd_;
  const detail::connection::Stream* s_ = nullptr;
};

//!Returns: the positions in `objects` of those that are ready (Python's connection.wait, which
//! returns the objects), waiting until one is or `timeout` passes (default: forever; zero or
//! negative: check once, as Python). Sleeps in poll(): no CPU while nothing happens; a handled
//! signal resumes the wait. Throws: OSError.
inline std::vector<std::size_t> wait(std::span<const Waitable> objects,
                                     Timeout timeout = std::nullopt) {
  std::vector<std::size_t> ready;
  for (std::size_t i = 0; i < objects.size(); ++i)
    if (objects[i].s_ != nullptr && objects[i].s_->kept) ready.push_back(i);
  if (!ready.empty()) return ready;
  std::vector<int> fds(objects.size());
  for (std::size_t i = 0; i < objects.size(); ++i) fds[i] = objects[i].fd_;
  ready = detail::os::readable_among(fds, detail::connection::deadline_of(timeout));
  return ready;
}
/// wait() over a braced list: `wait({a, b, listener, process}, 1.0)`.
inline std::vector<std::size_t> wait(std::initializer_list<Waitable> objects,
                                     Timeout timeout = std::nullopt) {
  return wait(std::span<const Waitable>(objects.begin(), objects.size()), timeout);
}

//!Effects: sends descriptor `handle` over Unix-socket connection `conn` (Python's
//! reduction.send_handle; `destination_pid` is unused on POSIX, as in Python). The receiver gets
//! its own descriptor for the same open file; this process keeps `handle`.
//!Throws: OSError (closed, receive-only or TCP connection), BrokenPipeError, OSError (EBADF:
//! `handle` is not open).
inline void send_handle(const Connection<>& conn, int handle, std::int64_t destination_pid = 0) {
  (void)destination_pid;
  auto& s = detail_connection::Access::stream(conn);
  s.check(true);
  if (!s.unix_socket)
    detail::fail<OSError>("send_handle on {}: descriptors pass only over Unix sockets", s.what);
  detail::os::send_descriptor(s.fd.get(), handle, s.what);
}

//!Returns: a descriptor sent with send_handle (Python's reduction.recv_handle), close-on-exec and
//! owned by the caller; waits at most `timeout`.
//!Throws: OSError (EBADMSG: what arrived carries no descriptor: a message sent with send or
//! send_bytes; the connection is then out of step: close it; also a closed end or a TCP
//! connection), EOFError, TimeoutError.
inline int recv_handle(const Connection<>& conn, Timeout timeout = std::nullopt) {
  auto& s = detail_connection::Access::stream(conn);
  s.check(false);
  if (!s.unix_socket)
    detail::fail<OSError>("recv_handle on {}: descriptors pass only over Unix sockets", s.what);
  if (s.kept)
    throw OSError(fmt::format("recv_handle on {}: a message is waiting, not a descriptor", s.what),
                  EBADMSG);
  const auto h =
      detail::os::recv_descriptor(s.fd.get(), detail::connection::deadline_of(timeout), s.what);
  if (!h) detail::fail<TimeoutError>("recv_handle on {}: no descriptor arrived in time", s.what);
  return *h;
}

}  // namespace mpp::connection
