// The queue workloads, written once for every message-queue peer (POSIX mq, Boost message_queue).
// A Channel is anything with
//   void send(const void* msg, std::size_t size);          // blocks while full
//   std::size_t recv(void* msg, std::size_t capacity);     // blocks while empty
// created before fork and usable from the children (inherited descriptor or mapping).
#pragma once

#include "../common.hpp"

namespace peers {

/// A queue message starts with one 64-bit word (so it fits the 8-byte messages), padded to the
/// message size: bit 63 = stop, bits 56..62 = producer, bits 0..55 = that producer's sequence
/// number. After its data each producer sends one stop, which ends one consumer; with as many
/// producers as consumers every consumer ends after all data. Each consumer sees every
/// producer's messages in order (the queue is FIFO), so per-producer sequence numbers only rise.
inline constexpr std::uint64_t kStop = 1ull << 63;
inline constexpr std::uint64_t kSeqMask = (1ull << 56) - 1;

/// Messages per second through `q`: `producers` processes send n messages in total, `consumers`
/// processes receive and check them; the time runs from the start line to the last consumer's
/// last message. Process i is pinned to core i mod cores.
template <class Channel>
double queue_throughput(Channel& q, std::size_t size, int producers, int consumers,
                        std::int64_t n) {
  bench::check(producers == consumers, "queue load: one stop per producer needs P == C");
  bench::check(size >= 8, "queue load: messages of at least 8 bytes");
  bench::Shared<bench::StartLine> start;
  bench::Shared<bench::Spans> span;
  struct Totals {
    std::atomic<std::int64_t> received{0};
    std::atomic<std::uint64_t> seq_sum{0};
  };
  bench::Shared<Totals> totals;
  const std::int64_t each = n / producers;
  std::vector<pid_t> kids;
  for (int p = 0; p < producers; ++p)
    kids.push_back(bench::spawn(p, [&, p] {
      std::vector<char> buf(size, 'x');
      start->wait();
      for (std::int64_t i = 0; i <= each; ++i) {
        std::uint64_t m = static_cast<std::uint64_t>(p) << 56 | static_cast<std::uint64_t>(i);
        if (i == each) m |= kStop;
        std::memcpy(buf.data(), &m, sizeof m);
        q.send(buf.data(), size);
      }
    }));
  for (int c = 0; c < consumers; ++c)
    kids.push_back(bench::spawn(producers + c, [&, c] {
      std::vector<char> buf(size);
      std::vector<std::int64_t> last(static_cast<std::size_t>(producers), -1);
      std::int64_t got = 0;
      std::uint64_t sum = 0;
      start->wait();
      span->start[c] = bench::now_ns();
      for (;;) {
        if (q.recv(buf.data(), size) != size) bench::fail("queue load: wrong message size");
        std::uint64_t m;
        std::memcpy(&m, buf.data(), sizeof m);
        if (m & kStop) break;
        const auto producer = static_cast<std::size_t>((m & ~kStop) >> 56);
        const auto seq = static_cast<std::int64_t>(m & kSeqMask);
        if (producer >= last.size() || seq <= last[producer])
          bench::fail("queue load: out of order");
        last[producer] = seq;
        ++got;
        sum += static_cast<std::uint64_t>(seq);
      }
      span->end[c] = bench::now_ns();
      totals->received += got;
      totals->seq_sum += sum;
    }));
  start->release(producers + consumers);
  bench::join(kids);
  const auto e = static_cast<std::uint64_t>(each);
  bench::check(totals->received == each * producers &&
                   totals->seq_sum == e * (e - 1) / 2 * static_cast<std::uint64_t>(producers),
               "queue load: messages lost or duplicated");
  return static_cast<double>(each * producers) / span->elapsed_s(consumers);
}

/// Mean round trip in µs of an 8-byte message sent through `there` and echoed through `back`,
/// the two sides pinned to cores 0 and 1.
template <class Channel>
double echo_rtt_us(Channel& there, Channel& back, std::int64_t n) {
  bench::Shared<bench::StartLine> start;
  bench::Shared<bench::Spans> span;
  std::vector<pid_t> kids;
  kids.push_back(bench::spawn(0, [&] {
    start->wait();
    span->start[0] = bench::now_ns();
    for (std::uint64_t i = 0; i < static_cast<std::uint64_t>(n); ++i) {
      std::uint64_t echo = ~i;
      there.send(&i, 8);
      if (back.recv(&echo, 8) != 8 || echo != i) bench::fail("echo: wrong answer");
    }
    span->end[0] = bench::now_ns();
  }));
  kids.push_back(bench::spawn(1, [&] {
    start->wait();
    for (std::int64_t i = 0; i < n; ++i) {
      char v[8];
      if (there.recv(v, 8) != 8) bench::fail("echo: wrong message size");
      back.send(v, 8);
    }
  }));
  start->release(2);
  bench::join(kids);
  return span->elapsed_s(1) / static_cast<double>(n) * 1e6;
}

}  // namespace peers
