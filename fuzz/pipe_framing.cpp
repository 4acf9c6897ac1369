// Fuzz target: the Pipe's message framing as a hostile writer sees it. The input becomes the
// bytes of a pipe's ring (frame headers, lengths, flags, payloads, the "long message" totals) and
// optionally an arbitrary write index; the reading end must return messages, or throw an
// mpp::Error (CorruptedError, TimeoutError, TypeMismatchError, EOFError...) — never crash, read out
// of bounds, allocate without bound or loop forever.
//   input[0]: bits 0-1 pick the reader (0: recv_bytes, 1: Pipe<std::string>::recv,
//             2: Pipe<>::recv<int>, 3: Pipe<>::recv<std::string>); bit 7: input[1..8] is the
//             write index (otherwise the number of ring bytes given).
//   the rest: the ring's first bytes (at most its 4 KiB capacity).
#include <mpp/pipe.hpp>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

namespace {

constexpr std::size_t kCapacity = 4096;

const std::string& pipe_name() {
  static const std::string name = "mpp.fuzz." + std::to_string(::getpid()) + ".pipe";
  return name;
}

// Writes the ring of end 0 of the named pipe behind its back (what a hostile peer can do).
bool inject(const std::uint8_t* bytes, std::size_t n, bool explicit_index,
            std::uint64_t write_idx) {
  const int fd = ::shm_open(("/" + pipe_name()).c_str(), O_RDWR, 0);
  if (fd < 0) return false;
  struct stat st {};
  ::fstat(fd, &st);
  void* p = ::mmap(nullptr, static_cast<std::size_t>(st.st_size), PROT_READ | PROT_WRITE,
                   MAP_SHARED, fd, 0);
  ::close(fd);
  if (p == MAP_FAILED) return false;
  auto* base = static_cast<std::byte*>(p);
  const auto* seg = reinterpret_cast<const mpp::detail::SegmentHeader*>(base);
  std::byte* ring =
      base + seg->payload_offset + mpp::detail::pipe_layout::ring_offset(0, kCapacity);
  auto* ctl = reinterpret_cast<mpp::detail::ring::Control*>(ring);
  std::memcpy(ring + sizeof(mpp::detail::ring::Control), bytes, n);
  ctl->write_idx.store(explicit_index ? write_idx : n, std::memory_order_release);
  ::munmap(p, static_cast<std::size_t>(st.st_size));
  return true;
}

template <class Conn, class Recv>
void drain(Conn& c, Recv&& recv) {
  for (int i = 0; i < 8; ++i) {
    try {
      recv(c);
    } catch (const mpp::Error&) {
      return;
#if defined(MPP_FUZZ_IGNORE_BAD_ALLOC)
    } catch (const std::bad_alloc&) {  // known finding fuzz/known/pipe_framing.*: look past it
      return;
#endif
    }
  }
}

template <class T, class Recv>
void run(const std::uint8_t* data, std::size_t size, Recv&& recv) {
  ::shm_unlink(("/" + pipe_name()).c_str());  // a previous run that crashed
  mpp::PipeOptions opts;
  opts.capacity = kCapacity;
  opts.spin_iterations = 0;
  auto reader = mpp::Pipe<T>::create(pipe_name(), false, opts);
  const bool explicit_index = (data[0] & 0x80) != 0 && size >= 9;
  std::uint64_t idx = 0;
  if (explicit_index) std::memcpy(&idx, data + 1, 8);
  const std::size_t skip = explicit_index ? 9 : 1;
  const std::size_t n = std::min(size - skip, kCapacity);
  if (!inject(data + skip, n, explicit_index, idx)) return;
  drain(reader, recv);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace std::chrono_literals;
  if (size < 1) return 0;
  const mpp::Timeout now = 0s;
  switch (data[0] & 3) {
    case 0:
      run<std::string>(data, size, [&](auto& c) { (void)c.recv_bytes(std::nullopt, now); });
      break;
    case 1:
      run<std::string>(data, size, [&](auto& c) { (void)c.recv(now); });
      break;
    case 2:
      run<void>(data, size, [&](auto& c) { (void)c.template recv<int>(now); });
      break;
    case 3:
      run<void>(data, size, [&](auto& c) { (void)c.template recv<std::string>(now); });
      break;
  }
  return 0;
}
