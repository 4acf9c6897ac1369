// mpp — the wire protocol of multiprocessing.connection, independent of the transport so that the
// fuzz target can drive it from memory:
//  - framing: a 4-byte big-endian signed length, or -1 followed by an 8-byte big-endian length for
//    messages over 2 GiB - 1 (CPython's Connection._send_bytes / _recv_bytes);
//  - the mutual HMAC challenge of deliver_challenge / answer_challenge (Python >= 3.12: a
//    "{digest}" prefix; Python <= 3.11: bare 20-byte challenges and raw HMAC-MD5 answers, accepted
//    only when the caller opts in).
// An IO is any type with
//   void read_exact(std::byte* p, std::size_t n, bool message_start);  // EOFError / OSError /
//   TimeoutError void write_all(const std::byte* p, std::size_t n);
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "../../codec.hpp"
#include "../../errors.hpp"
#include "crypto.hpp"

namespace mpp::detail::connection {

inline constexpr std::string_view kChallenge = "#CHALLENGE#";
inline constexpr std::string_view kWelcome = "#WELCOME#";
inline constexpr std::string_view kFailure = "#FAILURE#";
/// Random bytes of a challenge after its "{digest}" prefix (Python's MESSAGE_LENGTH).
inline constexpr std::size_t kMessageLength = 40;
/// Length of a Python <= 3.11 challenge (no prefix) and of a raw HMAC-MD5 answer.
inline constexpr std::size_t kLegacyChallengeLength = 20;
inline constexpr std::size_t kMd5Length = 16;
/// Handshake messages longer than this are rejected unread (Python's recv_bytes(256)).
inline constexpr std::size_t kHandshakeMax = 256;
/// Largest length the 4-byte header carries.
inline constexpr std::uint64_t kShortMax = 0x7fffffff;

inline std::span<const std::byte> as_bytes(std::string_view s) noexcept {
  return std::as_bytes(std::span(s.data(), s.size()));
}
inline std::string_view as_text(std::span<const std::byte> b) noexcept {
  return {reinterpret_cast<const char*>(b.data()), b.size()};
}
/// A printable excerpt of a peer's bytes for error messages.
inline std::string excerpt(std::span<const std::byte> b) {
  std::string s;
  for (std::size_t i = 0; i < b.size() && i < 48; ++i) {
    const auto c = std::to_integer<unsigned char>(b[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\')
      s += static_cast<char>(c);
    else
      s += fmt::format("\\x{:02x}", c);
  }
  if (b.size() > 48) s += "...";
  return s;
}

/// The header of a message of `n` bytes; returns how many bytes of `h` it uses (4 or 12).
inline std::size_t encode_header(std::uint64_t n, std::array<std::byte, 12>& h) noexcept {
  if (n <= kShortMax) {
    for (int i = 0; i < 4; ++i) h[static_cast<std::size_t>(i)] = std::byte(n >> (24 - 8 * i));
    return 4;
  }
  for (std::size_t i = 0; i < 4; ++i) h[i] = std::byte{0xff};
  for (int i = 0; i < 8; ++i) h[static_cast<std::size_t>(4 + i)] = std::byte(n >> (56 - 8 * i));
  return 12;
}

//!Effects: writes one message: its header and `body` (one write when small, as Python does to
//! keep Nagle's algorithm out of the way).
template <class IO>
void send_frame(IO& io, std::span<const std::byte> body, std::span<const std::byte> head = {}) {
  std::array<std::byte, 12> h{};
  const std::size_t hn = encode_header(head.size() + body.size(), h);
  if (head.size() + body.size() <= 16384) {
    std::array<std::byte, 12 + 16384> buf;
    std::memcpy(buf.data(), h.data(), hn);
    if (!head.empty()) std::memcpy(buf.data() + hn, head.data(), head.size());
    if (!body.empty()) std::memcpy(buf.data() + hn + head.size(), body.data(), body.size());
    io.write_all(buf.data(), hn + head.size() + body.size());
    return;
  }
  io.write_all(h.data(), hn);
  if (!head.empty()) io.write_all(head.data(), head.size());
  io.write_all(body.data(), body.size());
}

//!Returns: the length in the next header. Throws: EOFError (clean end of file before it),
//! CorruptedError (a negative length other than the -1 marker), what IO throws.
template <class IO>
std::uint64_t read_length(IO& io) {
  std::array<std::byte, 8> b{};
  io.read_exact(b.data(), 4, true);
  std::uint32_t v = 0;
  for (std::size_t i = 0; i < 4; ++i) v = (v << 8) | std::to_integer<std::uint32_t>(b[i]);
  if (v <= kShortMax) return v;
  if (v != 0xffffffffu)
    throw CorruptedError(
        fmt::format("invalid message length {} (a negative 32-bit length other "
                    "than the -1 marker): the peer does not speak this protocol",
                    static_cast<std::int32_t>(v)));
  io.read_exact(b.data(), 8, false);
  std::uint64_t n = 0;
  for (std::size_t i = 0; i < 8; ++i) n = (n << 8) | std::to_integer<std::uint64_t>(b[i]);
  return n;
}

//!Effects: reads a body of `n` bytes into `out` (replacing it), growing the buffer only as the
//! bytes arrive: a lying header cannot make it allocate more than about twice what was sent.
template <class IO>
void read_body(IO& io, std::uint64_t n, Bytes& out) {
  out.clear();
  std::size_t got = 0;
  while (got < n) {
    const std::uint64_t step =
        std::min<std::uint64_t>(n - got, std::max<std::size_t>(std::size_t{1} << 16, got));
    out.resize(got + static_cast<std::size_t>(step));
    io.read_exact(out.data() + got, static_cast<std::size_t>(step), false);
    got += static_cast<std::size_t>(step);
  }
}

//!Returns: the next handshake message (at most kHandshakeMax bytes). Throws: AuthenticationError
//! for a longer one (not read), what IO throws.
template <class IO>
Bytes recv_handshake(IO& io, std::string_view step) {
  const std::uint64_t n = read_length(io);
  if (n > kHandshakeMax)
    throw AuthenticationError(fmt::format(
        "{}: the peer sent a {}-byte message, more than the {} a handshake message may have: it "
        "does not speak the multiprocessing.connection protocol",
        step, n, kHandshakeMax));
  Bytes b;
  read_body(io, n, b);
  return b;
}

/// A digest named in a "{digest}" prefix, and the payload after it.
struct Prefixed {
  Digest digest;                       ///< the digest
  std::span<const std::byte> payload;  ///< the bytes after the prefix
};

//!Returns: the digest named by the "{name}" prefix of `m`, or nullopt if it has none or an
//! unknown one (Python's _get_digest_name_and_payload without the legacy case).
inline std::optional<Prefixed> parse_prefix(std::span<const std::byte> m) {
  const std::string_view s = as_text(m);
  if (s.empty() || s[0] != '{') return std::nullopt;
  const std::size_t close = s.find('}', 1);
  if (close == std::string_view::npos || close > 10) return std::nullopt;
  const std::string_view name = s.substr(1, close - 1);
  for (Digest d : {Digest::md5, Digest::sha256, Digest::sha384, Digest::sha3_256, Digest::sha3_384})
    if (digest_name(d) == name) return Prefixed{d, m.subspan(close + 1)};
  return std::nullopt;
}

inline constexpr std::string_view kLegacyHint =
    "Python 3.11 and older speak only this handshake (HMAC-MD5, a weak digest): upgrade the peer "
    "to Python 3.12 or later, or accept it with ConnectionOptions{.legacy_md5 = true}";

//!Effects: the serving side's half (Python's deliver_challenge): sends a "{sha256}" challenge,
//! checks the answer, replies #WELCOME# or #FAILURE#.
//!Throws: AuthenticationError (wrong key, a legacy answer without opt-in, protocol error).
template <class IO>
void deliver_challenge(IO& io, std::span<const std::byte> key, bool legacy_md5) {
  std::array<std::byte, 8 + kMessageLength> message{};
  std::memcpy(message.data(), "{sha256}", 8);
  random_bytes(std::span(message).subspan(8));
  send_frame(io, message, as_bytes(kChallenge));
  const Bytes response = recv_handshake(io, "authentication (checking the peer's answer)");
  std::string problem;
  if (response.size() == kMd5Length || response.size() == kLegacyChallengeLength) {
    if (!legacy_md5)
      problem =
          fmt::format("the peer answered with the legacy HMAC-MD5 handshake. {}", kLegacyHint);
    else if (!equal_constant_time(hmac(Digest::md5, key, message).view(), response))
      problem = "the HMAC-MD5 digest received was wrong: the peer uses another authkey";
  } else if (const auto p = parse_prefix(response); !p) {
    problem = fmt::format(
        "the answer '{}' has no known {{digest}} prefix: the peer does not speak the "
        "multiprocessing.connection handshake",
        excerpt(response));
  } else if (p->digest == Digest::md5 && !legacy_md5) {
    problem = fmt::format("the peer answered with HMAC-MD5. {}", kLegacyHint);
  } else {
    const Mac expected = hmac(p->digest, key, message);
    if (!equal_constant_time(expected.view(), p->payload))
      problem = "the digest received was wrong: the peer uses another authkey";
  }
  if (!problem.empty()) {
    try {
      send_frame(io, as_bytes(kFailure));
    } catch (const Error&) {  // the peer may be gone already; the failure is what matters
    }
    throw AuthenticationError("authentication failed: " + problem);
  }
  send_frame(io, as_bytes(kWelcome));
}

//!Effects: the connecting side's half (Python's answer_challenge): answers the peer's challenge
//! and waits for #WELCOME#.
//!Throws: AuthenticationError (rejected, a legacy challenge without opt-in, protocol error).
template <class IO>
void answer_challenge(IO& io, std::span<const std::byte> key, bool legacy_md5) {
  const Bytes m = recv_handshake(io, "authentication (waiting for the challenge)");
  if (m.size() < kChallenge.size() || as_text(m).substr(0, kChallenge.size()) != kChallenge)
    throw AuthenticationError(fmt::format(
        "authentication failed: protocol error, expected a challenge, received '{}'", excerpt(m)));
  const auto message = std::span<const std::byte>(m).subspan(kChallenge.size());
  if (message.size() < kLegacyChallengeLength)
    throw AuthenticationError(
        fmt::format("authentication failed: challenge too short ({} bytes)", message.size()));
  Bytes answer;
  if (message.size() == kLegacyChallengeLength || message.size() == kMd5Length) {
    if (!legacy_md5)
      throw AuthenticationError(
          fmt::format("authentication failed: the listener sent the legacy HMAC-MD5 challenge. {}",
                      kLegacyHint));
    const Mac mac = hmac(Digest::md5, key, message);
    answer.assign(mac.view().begin(), mac.view().end());
  } else {
    const auto p = parse_prefix(message);
    if (!p)
      throw AuthenticationError(
          fmt::format("authentication failed: the challenge '{}' has no known {{digest}} prefix",
                      excerpt(message)));
    if (p->digest == Digest::md5 && !legacy_md5)
      throw AuthenticationError(
          fmt::format("authentication failed: the listener asks for HMAC-MD5. {}", kLegacyHint));
    const auto name = fmt::format("{{{}}}", digest_name(p->digest));
    const Mac mac = hmac(p->digest, key, message);
    answer.resize(name.size() + mac.size);
    std::memcpy(answer.data(), name.data(), name.size());
    std::memcpy(answer.data() + name.size(), mac.bytes.data(), mac.size);
  }
  send_frame(io, answer);
  const Bytes welcome = recv_handshake(io, "authentication (waiting for the verdict)");
  if (as_text(welcome) != kWelcome)
    throw AuthenticationError(
        as_text(welcome) == kFailure
            ? std::string("authentication failed: the digest sent was rejected: the listener uses "
                          "another authkey")
            : fmt::format("authentication failed: expected #WELCOME#, received '{}'",
                          excerpt(welcome)));
}

}  // namespace mpp::detail::connection
