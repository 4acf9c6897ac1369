// mpp's Pipe on the pipe.* workloads (see peers/limits.cpp and peers/kernel.cpp for the peers):
//   pipe.8B.throughput    Pipe<uint64_t>(duplex=false), send/recv, producer core 0 -> consumer core
//   1 pipe.1KiB.throughput  Pipe<Msg<1024>> (a trivially copyable 1 KiB struct), send/recv
//   pipe.1MiB.throughput  send_bytes of 1 MiB / recv_bytes_into a 1 MiB buffer, in GB/s
//   pipe.8B.rtt           one duplex Pipe<uint64_t>: ping, echo, 8 bytes each way (busy phase)
//   pipe.8B.rtt.blocked   the same with spin_iterations = 0, started with the echo side asleep:
//                         every hop sleeps and is woken, read against the futex ping-pong
// Throughput is timed at the consumer; every message is checked (sequence stamps).
#include <array>
#include <cstring>
#include <mpp/pipe.hpp>
#include <vector>

#include "../common.hpp"

namespace {

using bench::Options;
using bench::Shared;
using bench::Spans;
using bench::StartLine;

/// kMsg bytes: the sequence number in the first and last 8 bytes and a fixed pattern between
/// (as peers/limits.cpp's Message), checked at the consumer.
template <std::size_t kMsg>
struct Msg {
  unsigned char bytes[kMsg];
};

template <std::size_t kMsg>
void fill(Msg<kMsg>& m) {
  for (std::size_t i = 0; i < kMsg; ++i) m.bytes[i] = static_cast<unsigned char>(i * 7 + 1);
}
template <std::size_t kMsg>
void stamp(Msg<kMsg>& m, std::uint64_t seq) {
  std::memcpy(m.bytes, &seq, 8);
  std::memcpy(m.bytes + kMsg - 8, &seq, 8);
}
template <std::size_t kMsg>
bool valid(const Msg<kMsg>& m, std::uint64_t seq) {
  std::uint64_t a, b;
  std::memcpy(&a, m.bytes, 8);
  std::memcpy(&b, m.bytes + kMsg - 8, 8);
  if (a != seq || b != seq) return false;
  if (seq % 1024 == 0)
    for (std::size_t i = 8; i < kMsg - 8; ++i)
      if (m.bytes[i] != static_cast<unsigned char>(i * 7 + 1)) return false;
  return true;
}

double throughput_8b(std::int64_t n) {
  auto [r, w] = mpp::Pipe<std::uint64_t>(false);
  Shared<StartLine> start;
  Shared<Spans> span;
  std::vector<pid_t> kids;
  kids.push_back(bench::spawn(0, [&] {
    r.close();
    start->wait();
    for (std::int64_t i = 0; i < n; ++i) w.send(static_cast<std::uint64_t>(i));
  }));
  kids.push_back(bench::spawn(1, [&] {
    w.close();
    start->wait();
    span->start[0] = bench::now_ns();
    for (std::int64_t i = 0; i < n; ++i)
      if (r.recv() != static_cast<std::uint64_t>(i)) bench::fail("mpp pipe: wrong message");
    span->end[0] = bench::now_ns();
  }));
  start->release(2);
  bench::join(kids);
  return static_cast<double>(n) / span->elapsed_s(1);
}

double throughput_1k(std::int64_t n) {
  using M = Msg<1024>;
  auto [r, w] = mpp::Pipe<M>(false);
  Shared<StartLine> start;
  Shared<Spans> span;
  std::vector<pid_t> kids;
  kids.push_back(bench::spawn(0, [&] {
    r.close();
    M m;
    fill(m);
    start->wait();
    for (std::int64_t i = 0; i < n; ++i) {
      stamp(m, static_cast<std::uint64_t>(i));
      w.send(m);
    }
  }));
  kids.push_back(bench::spawn(1, [&] {
    w.close();
    start->wait();
    span->start[0] = bench::now_ns();
    for (std::int64_t i = 0; i < n; ++i) {
      const M m = r.recv();
      if (!valid(m, static_cast<std::uint64_t>(i))) bench::fail("mpp pipe: wrong 1 KiB message");
    }
    span->end[0] = bench::now_ns();
  }));
  start->release(2);
  bench::join(kids);
  return static_cast<double>(n) / span->elapsed_s(1);
}

double throughput_1m(std::int64_t n) {
  constexpr std::size_t kSize = 1 << 20;
  auto [r, w] = mpp::Pipe<int>(false);
  Shared<StartLine> start;
  Shared<Spans> span;
  std::vector<pid_t> kids;
  kids.push_back(bench::spawn(0, [&] {
    r.close();
    std::vector<std::byte> buf(kSize);
    for (std::size_t i = 0; i < kSize; ++i) buf[i] = static_cast<std::byte>(i * 7 + 1);
    start->wait();
    for (std::int64_t i = 0; i < n; ++i) {
      std::memcpy(buf.data(), &i, 8);
      std::memcpy(buf.data() + kSize - 8, &i, 8);
      w.send_bytes(buf);
    }
  }));
  kids.push_back(bench::spawn(1, [&] {
    w.close();
    std::vector<std::byte> buf(kSize);
    start->wait();
    span->start[0] = bench::now_ns();
    for (std::int64_t i = 0; i < n; ++i) {
      if (r.recv_bytes_into(buf) != kSize) bench::fail("mpp pipe: wrong 1 MiB size");
      std::int64_t a, b;
      std::memcpy(&a, buf.data(), 8);
      std::memcpy(&b, buf.data() + kSize - 8, 8);
      if (a != i || b != i || buf[12345] != static_cast<std::byte>(12345 * 7 + 1))
        bench::fail("mpp pipe: wrong 1 MiB message");
    }
    span->end[0] = bench::now_ns();
  }));
  start->release(2);
  bench::join(kids);
  return static_cast<double>(n) * kSize / span->elapsed_s(1) * 1e-9;
}

// With `blocked`, the echo side is asleep when the first ping arrives; as each hop's wake-up
// (>= 4 µs) outlasts the brief re-check after a side announces that it sleeps, every later hop
// finds its receiver asleep too: the steady state of a ping-pong between blocked processes.
double rtt_us(std::int64_t n, int spin, bool blocked) {
  mpp::PipeOptions opts;
  opts.spin_iterations = spin;
  auto [a, b] = mpp::Pipe<std::uint64_t>(true, opts);
  Shared<StartLine> start;
  Shared<Spans> span;
  std::vector<pid_t> kids;
  kids.push_back(bench::spawn(0, [&] {
    b.close();
    start->wait();
    if (blocked) ::usleep(2000);  // let the echo side fall asleep
    span->start[0] = bench::now_ns();
    for (std::uint64_t i = 0; i < static_cast<std::uint64_t>(n); ++i) {
      a.send(i);
      if (a.recv() != i) bench::fail("mpp pipe RT: wrong echo");
    }
    span->end[0] = bench::now_ns();
  }));
  kids.push_back(bench::spawn(1, [&] {
    a.close();
    start->wait();
    for (std::int64_t i = 0; i < n; ++i) b.send(b.recv());
  }));
  start->release(2);
  bench::join(kids);
  return span->elapsed_s(1) / static_cast<double>(n) * 1e6;
}

}  // namespace

int main(int argc, char** argv) {
  const Options opt = bench::parse_args(argc, argv);
  bench::run(opt, {"pipe.8B.throughput", "mpp", "msg/s", true},
             [&] { return throughput_8b(opt.n(40'000'000, 5'000'000)); });
  bench::run(opt, {"pipe.1KiB.throughput", "mpp", "msg/s", true},
             [&] { return throughput_1k(opt.n(5'000'000, 600'000)); });
  bench::run(opt, {"pipe.1MiB.throughput", "mpp", "GB/s", true},
             [&] { return throughput_1m(opt.n(5'000, 600)); });
  bench::run(opt, {"pipe.8B.rtt", "mpp", "µs", false},
             [&] { return rtt_us(opt.n(500'000, 50'000), mpp::detail::kSpinIterations, false); });
  bench::run(
      opt, {"pipe.8B.rtt.blocked", "mpp", "µs", false},
      [&] { return rtt_us(opt.n(4'000, 600), 0, true); },
      "spin_iterations = 0, echo side asleep at the start: every hop wakes a sleeper");
}
