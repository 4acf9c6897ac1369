// Fuzz target: mpp::connection's wire protocol as a hostile peer sees it. The input is the byte
// stream the peer sends; the code under test must return or throw an mpp::Error — never crash,
// read out of bounds, allocate without bound (a length header is not trusted) or loop forever.
//   input[0]: bits 0-1 pick the code (0: the serving side's handshake, deliver_challenge then
//             answer_challenge; 1: the connecting side's, answer then deliver; 2-3: framing:
//             messages read one after another); bit 2: legacy HMAC-MD5 accepted.
//   the rest: the peer's bytes.
#include <mpp/detail/connection/protocol.hpp>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

namespace {

// The peer's bytes, served in order; what we write is discarded.
struct MemoryIO {
  const std::byte* p;
  std::size_t left;
  void read_exact(std::byte* out, std::size_t n, bool message_start) {
    if (left == 0 && message_start) throw mpp::EOFError("end of input");
    if (n > left) throw mpp::OSError("got end of file during a message", 0);
    std::memcpy(out, p, n);
    p += n;
    left -= n;
  }
  void write_all(const std::byte*, std::size_t) {}
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const unsigned mode = data[0] & 3u;
  const bool legacy = (data[0] & 4u) != 0;
  MemoryIO io{reinterpret_cast<const std::byte*>(data + 1), size - 1};
  static const char key_text[] = "fuzz key";
  const auto key = std::as_bytes(std::span(key_text, sizeof key_text - 1));
  namespace pc = mpp::detail::connection;
  try {
    if (mode == 0) {
      pc::deliver_challenge(io, key, legacy);
      pc::answer_challenge(io, key, legacy);
    } else if (mode == 1) {
      pc::answer_challenge(io, key, legacy);
      pc::deliver_challenge(io, key, legacy);
    } else {
      mpp::Bytes body;
      for (int i = 0; i < 64; ++i) {
        const std::uint64_t n = pc::read_length(io);
        pc::read_body(io, n, body);
      }
    }
  } catch (const mpp::Error&) {
  }
  return 0;
}
