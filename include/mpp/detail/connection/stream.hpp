// mpp — one end of a socket connection (the state behind mpp::connection::Connection): the owned
// descriptor, a message kept for the next receive (after TypeMismatchError or BufferTooShort),
// and the IO adaptor the protocol reads and writes through.
#pragma once

#include <chrono>
#include <cstddef>
#include <optional>
#include <string>
#include <utility>

#include "../../codec.hpp"
#include "../../errors.hpp"
#include "../../timeout.hpp"
#include "../config.hpp"
#include "../os.hpp"
#include "protocol.hpp"

#include "../os/posix/socket.hpp"  // POSIX only for now: connection.hpp stops Windows builds

namespace mpp::detail::connection {

/// The deadline of a Python-style timeout for the socket calls (nullopt: never).
inline os::socket_deadline deadline_of(const Timeout& t) {
  if (!t) return std::nullopt;
  return std::chrono::steady_clock::now() +
         std::chrono::duration_cast<std::chrono::steady_clock::duration>(*t);
}

/// One process's end of a socket connection; copies of a Connection share it.
struct Stream {
  os::Fd fd;                  ///< the connected socket
  std::string what;           ///< "connection to '<address>'" for messages
  bool readable = true;       ///< may receive
  bool writable = true;       ///< may send
  bool unix_socket = false;   ///< a Unix-domain socket (descriptors can pass)
  std::optional<Bytes> kept;  ///< a message received but not yet delivered
  Bytes scratch;              ///< encoding buffer of send()

  Stream(os::Fd f, std::string w, bool local)
      : fd(std::move(f)), what(std::move(w)), unix_socket(local) {}

  bool closed() const noexcept { return !fd.valid(); }
  void close() noexcept {
    fd.reset();
    kept.reset();
  }
  int check(bool for_send) const {
    if (!fd.valid())
      throw OSError(
          fmt::format("{} on {}: the connection is closed", for_send ? "send" : "recv", what));
    if (for_send && !writable)
      throw OSError(fmt::format("send on {}: this end is receive-only", what));
    if (!for_send && !readable)
      throw OSError(fmt::format("recv on {}: this end is send-only", what));
    return fd.get();
  }
};

/// The protocol's IO over a Stream, bounded by one deadline.
struct StreamIO {
  Stream& s;
  os::socket_deadline until;

  void read_exact(std::byte* p, std::size_t n, bool message_start) {
    std::size_t got = 0;
    while (got < n) {
      const auto r = os::read_some(s.fd.get(), p + got, n - got, until, s.what);
      if (r < 0) {
        if (message_start && got == 0)
          throw TimeoutError(fmt::format("recv on {}: nothing arrived in time", s.what));
        s.close();  // the stream is out of step: no later receive could find a message start
        throw TimeoutError(fmt::format(
            "recv on {}: the message did not arrive completely in time; the connection is closed",
            s.what));
      }
      if (r == 0) {
        if (message_start && got == 0)
          throw EOFError(fmt::format("recv on {}: the other end is closed", s.what));
        s.close();
        throw OSError(fmt::format("recv on {}: got end of file during a message", s.what), 0);
      }
      got += static_cast<std::size_t>(r);
    }
  }
  void write_all(const std::byte* p, std::size_t n) {
    if (!os::write_all(s.fd.get(), p, n, until, s.what)) {
      s.close();
      throw TimeoutError(fmt::format(
          "send on {}: the message could not be sent in time; the connection is closed", s.what));
    }
  }
};

//!Effects: makes sure a whole message is in `s.kept`, waiting until `until`.
//!Throws: TimeoutError, EOFError, OSError, CorruptedError.
inline Bytes& next_message(Stream& s, const os::socket_deadline& until) {
  if (s.kept) return *s.kept;
  s.check(false);
  StreamIO io{s, until};
  if (until && !os::wait_socket_readable(s.fd.get(), until))
    throw TimeoutError(fmt::format("recv on {}: nothing arrived in time", s.what));
  std::uint64_t n = 0;
  try {
    n = read_length(io);
  } catch (const CorruptedError& e) {
    s.close();
    throw CorruptedError(fmt::format("recv on {}: {}; the connection is closed", s.what, e.what()));
  }
  Bytes b;
  read_body(io, n, b);
  s.kept = std::move(b);
  return *s.kept;
}

}  // namespace mpp::detail::connection
