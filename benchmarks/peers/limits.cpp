// Hardware limits: what no inter-process primitive can beat on this machine.
//   memcpy.*            single-core memcpy bandwidth
//   ring                a bare SPSC ring in shared memory (1024 slots, cached indices), busy-spin
//   cacheline           one cache line bounced between two cores (RT), contended fetch_add
//   futex               FUTEX_WAIT/FUTEX_WAKE ping-pong: the cost of sleeping and being woken
// The ring, cacheline and futex rows are shown on the pipe.* and queue.* workloads too, so that
// mpp's Pipe and Queue are read against the ceiling as well as against the other systems.
#include <linux/futex.h>
#include <sys/syscall.h>

#include <memory>

#include "../common.hpp"

namespace {

using bench::kCacheLine;
using bench::Options;
using bench::Shared;
using bench::Spans;
using bench::StartLine;

// ---------------------------------------------------------------------------------------------
// memcpy

double memcpy_gbs(std::size_t block, double min_s) {
  // Source and destination both of `block` bytes: 64 KiB stays in L2, 1 MiB in L2/L3, 64 MiB
  // goes to DRAM. Touch both first so page faults are not timed.
  std::unique_ptr<char[]> src(new char[block]), dst(new char[block]);
  for (std::size_t i = 0; i < block; ++i) src[i] = static_cast<char>(i * 131);
  std::memset(dst.get(), 0, block);
  std::memcpy(dst.get(), src.get(), block);
  std::int64_t copies = 0, t0 = bench::now_ns(), t1;
  do {
    src[copies % block] ^= 1;  // a different source each time, so no copy can be skipped
    std::memcpy(dst.get(), src.get(), block);
    bench::escape(dst.get());
    ++copies;
    t1 = bench::now_ns();
  } while (bench::seconds(t1 - t0) < min_s);
  bench::check(std::memcmp(dst.get(), src.get(), block) == 0, "memcpy: destination differs");
  return static_cast<double>(block) * static_cast<double>(copies) / bench::seconds(t1 - t0) * 1e-9;
}

// ---------------------------------------------------------------------------------------------
// Bare SPSC ring: the floor under any shared-memory pipe or queue.

constexpr std::size_t kSlots = 1024;

template <std::size_t kMsg>
struct Ring {
  // The producer publishes a slot with a release store to tail, which pairs with the consumer's
  // acquire load of tail; the consumer frees a slot with a release store to head, which pairs
  // with the producer's acquire load of head. Each index has its own cache line.
  alignas(kCacheLine) std::atomic<std::uint64_t> tail{0};
  alignas(kCacheLine) std::atomic<std::uint64_t> head{0};
  alignas(kCacheLine) unsigned char slot[kSlots][kMsg];
};

template <std::size_t kMsg>
class Producer {
 public:
  explicit Producer(Ring<kMsg>& r) : r_(r) {}
  void push(const void* msg) {
    // Reload the consumer's index only when the cached one says the ring is full.
    while (tail_ - head_cache_ == kSlots) {
      head_cache_ = r_.head.load(std::memory_order_acquire);
      if (tail_ - head_cache_ == kSlots) bench::cpu_relax();
    }
    std::memcpy(r_.slot[tail_ % kSlots], msg, kMsg);
    r_.tail.store(++tail_, std::memory_order_release);
  }

 private:
  Ring<kMsg>& r_;
  std::uint64_t tail_ = 0, head_cache_ = 0;
};

template <std::size_t kMsg>
class Consumer {
 public:
  explicit Consumer(Ring<kMsg>& r) : r_(r) {}
  void pop(void* msg) {
    while (head_ == tail_cache_) {
      tail_cache_ = r_.tail.load(std::memory_order_acquire);
      if (head_ == tail_cache_) bench::cpu_relax();
    }
    std::memcpy(msg, r_.slot[head_ % kSlots], kMsg);
    r_.head.store(++head_, std::memory_order_release);
  }

 private:
  Ring<kMsg>& r_;
  std::uint64_t head_ = 0, tail_cache_ = 0;
};

/// A message of kMsg bytes carries its sequence number in its first and last 8 bytes and a fixed
/// pattern in between; the consumer checks the stamps always and the pattern every 1024th time.
template <std::size_t kMsg>
struct Message {
  static_assert(kMsg % 8 == 0 && kMsg >= 8);
  unsigned char bytes[kMsg];
  Message() {
    for (std::size_t i = 0; i < kMsg; ++i) bytes[i] = static_cast<unsigned char>(i * 7 + 1);
  }
  void stamp(std::uint64_t seq) {
    std::memcpy(bytes, &seq, 8);
    if constexpr (kMsg > 8) std::memcpy(bytes + kMsg - 8, &seq, 8);
  }
  [[nodiscard]] bool valid(std::uint64_t seq) const {
    std::uint64_t a, b = seq;
    std::memcpy(&a, bytes, 8);
    if constexpr (kMsg > 8) std::memcpy(&b, bytes + kMsg - 8, 8);
    if (a != seq || b != seq) return false;
    if (kMsg > 16 && seq % 1024 == 0)
      for (std::size_t i = 8; i < kMsg - 8; ++i)
        if (bytes[i] != static_cast<unsigned char>(i * 7 + 1)) return false;
    return true;
  }
};

template <std::size_t kMsg>
double ring_throughput(std::int64_t n) {
  Shared<Ring<kMsg>> ring;
  Shared<StartLine> start;
  Shared<Spans> span;
  std::vector<pid_t> kids;
  kids.push_back(bench::spawn(0, [&] {
    Producer<kMsg> p(*ring);
    Message<kMsg> m;
    start->wait();
    for (std::int64_t i = 0; i < n; ++i) {
      m.stamp(static_cast<std::uint64_t>(i));
      p.push(m.bytes);
    }
  }));
  kids.push_back(bench::spawn(1, [&] {
    Consumer<kMsg> c(*ring);
    Message<kMsg> m;
    start->wait();
    span->start[0] = bench::now_ns();
    for (std::int64_t i = 0; i < n; ++i) {
      c.pop(m.bytes);
      if (!m.valid(static_cast<std::uint64_t>(i))) bench::fail("ring: wrong message");
    }
    span->end[0] = bench::now_ns();
  }));
  start->release(2);
  bench::join(kids);
  return static_cast<double>(n) / span->elapsed_s(1);
}

double ring_rtt_us(std::int64_t n) {
  Shared<Ring<8>> ping, pong;
  Shared<StartLine> start;
  Shared<Spans> span;
  std::vector<pid_t> kids;
  kids.push_back(bench::spawn(0, [&] {
    Producer<8> out(*ping);
    Consumer<8> in(*pong);
    start->wait();
    span->start[0] = bench::now_ns();
    for (std::uint64_t i = 0; i < static_cast<std::uint64_t>(n); ++i) {
      std::uint64_t back;
      out.push(&i);
      in.pop(&back);
      if (back != i) bench::fail("ring RT: wrong echo");
    }
    span->end[0] = bench::now_ns();
  }));
  kids.push_back(bench::spawn(1, [&] {
    Consumer<8> in(*ping);
    Producer<8> out(*pong);
    start->wait();
    for (std::int64_t i = 0; i < n; ++i) {
      std::uint64_t v;
      in.pop(&v);
      out.push(&v);
    }
  }));
  start->release(2);
  bench::join(kids);
  return span->elapsed_s(1) / static_cast<double>(n) * 1e6;
}

// ---------------------------------------------------------------------------------------------
// One cache line between two cores.

struct Line {
  alignas(kCacheLine) std::atomic<std::uint64_t> word{0};
  char pad[kCacheLine - sizeof(std::atomic<std::uint64_t>)];
};

double cacheline_rtt_us(std::int64_t n) {
  // Side A writes odd values and waits for the next even one; side B answers. A value that is
  // neither ours nor the expected answer means the protocol broke.
  Shared<Line> line;
  Shared<StartLine> start;
  Shared<Spans> span;
  std::vector<pid_t> kids;
  kids.push_back(bench::spawn(0, [&] {
    start->wait();
    span->start[0] = bench::now_ns();
    for (std::uint64_t i = 1; i <= static_cast<std::uint64_t>(n); ++i) {
      line->word.store(2 * i - 1, std::memory_order_release);
      std::uint64_t v;
      while ((v = line->word.load(std::memory_order_acquire)) != 2 * i) {
        if (v != 2 * i - 1) bench::fail("cacheline: unexpected value");
        bench::cpu_relax();
      }
    }
    span->end[0] = bench::now_ns();
  }));
  kids.push_back(bench::spawn(1, [&] {
    start->wait();
    for (std::uint64_t i = 1; i <= static_cast<std::uint64_t>(n); ++i) {
      while (line->word.load(std::memory_order_acquire) != 2 * i - 1) bench::cpu_relax();
      line->word.store(2 * i, std::memory_order_release);
    }
  }));
  start->release(2);
  bench::join(kids);
  return span->elapsed_s(1) / static_cast<double>(n) * 1e6;
}

double fetch_add_ops(std::int64_t n_each) {
  Shared<Line> line;
  Shared<StartLine> start;
  Shared<Spans> span;
  std::vector<pid_t> kids;
  for (int k = 0; k < 2; ++k)
    kids.push_back(bench::spawn(k, [&, k] {
      start->wait();
      span->start[k] = bench::now_ns();
      for (std::int64_t i = 0; i < n_each; ++i) line->word.fetch_add(1, std::memory_order_relaxed);
      span->end[k] = bench::now_ns();
    }));
  start->release(2);
  bench::join(kids);
  bench::check(line->word.load() == static_cast<std::uint64_t>(2 * n_each), "fetch_add: lost add");
  return static_cast<double>(2 * n_each) / span->elapsed_s(2);
}

// ---------------------------------------------------------------------------------------------
// futex: sleep and be woken, nothing else.

long futex(std::atomic<std::uint32_t>* w, int op, std::uint32_t v) {
  // Not FUTEX_PRIVATE_FLAG: the word is shared between processes.
  return ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(w), op, v, nullptr, nullptr, 0);
}

double futex_rtt_us(std::int64_t n) {
  // Same protocol as the cache line, but each side sleeps in FUTEX_WAIT instead of spinning and
  // the writer always calls FUTEX_WAKE: every hop is one wake-up of a sleeping process.
  Shared<Line> mem;  // a 32-bit word at the start of its own line
  auto* word = reinterpret_cast<std::atomic<std::uint32_t>*>(&mem->word);
  Shared<StartLine> start;
  Shared<Spans> span;
  auto await = [word](std::uint32_t want) {
    std::uint32_t v;
    while ((v = word->load(std::memory_order_acquire)) != want) futex(word, FUTEX_WAIT, v);
  };
  std::vector<pid_t> kids;
  kids.push_back(bench::spawn(0, [&] {
    start->wait();
    span->start[0] = bench::now_ns();
    for (std::uint32_t i = 1; i <= static_cast<std::uint32_t>(n); ++i) {
      word->store(2 * i - 1, std::memory_order_release);
      futex(word, FUTEX_WAKE, 1);
      await(2 * i);
    }
    span->end[0] = bench::now_ns();
  }));
  kids.push_back(bench::spawn(1, [&] {
    start->wait();
    for (std::uint32_t i = 1; i <= static_cast<std::uint32_t>(n); ++i) {
      await(2 * i - 1);
      word->store(2 * i, std::memory_order_release);
      futex(word, FUTEX_WAKE, 1);
    }
  }));
  start->release(2);
  bench::join(kids);
  return span->elapsed_s(1) / static_cast<double>(n) * 1e6;
}

}  // namespace

int main(int argc, char** argv) {
  const Options opt = bench::parse_args(argc, argv);
  const double copy_s = opt.quick ? 0.03 : 0.15;

  bench::run(opt, {"memcpy.64KiB", "memcpy", "GB/s", true},
             [&] { return memcpy_gbs(64 << 10, copy_s); });
  bench::run(opt, {"memcpy.1MiB", "memcpy", "GB/s", true},
             [&] { return memcpy_gbs(1 << 20, copy_s); });
  bench::run(opt, {"memcpy.64MiB", "memcpy", "GB/s", true},
             [&] { return memcpy_gbs(64 << 20, copy_s); });

  bench::run(opt,
             {{"pipe.8B.throughput", "ring", "msg/s", true},
              {"queue.8B.1p1c.throughput", "ring", "msg/s", true}},
             [&] { return ring_throughput<8>(opt.n(40'000'000, 5'000'000)); });
  bench::run(opt,
             {{"pipe.1KiB.throughput", "ring", "msg/s", true},
              {"queue.1KiB.1p1c.throughput", "ring", "msg/s", true}},
             [&] { return ring_throughput<1024>(opt.n(5'000'000, 600'000)); });
  bench::run(opt, {{"pipe.8B.rtt", "ring", "µs", false}, {"queue.8B.rtt", "ring", "µs", false}},
             [&] { return ring_rtt_us(opt.n(500'000, 50'000)); });

  bench::run(
      opt, {{"pipe.8B.rtt", "cacheline", "µs", false}, {"queue.8B.rtt", "cacheline", "µs", false}},
      [&] { return cacheline_rtt_us(opt.n(500'000, 50'000)); });
  bench::run(opt, {"value.fetch_add.2proc", "cacheline", "ops/s", true},
             [&] { return fetch_add_ops(opt.n(20'000'000, 3'000'000)); });

  bench::run(opt,
             {{"pipe.8B.rtt", "futex", "µs", false},
              {"pipe.8B.rtt.blocked", "futex", "µs", false},
              {"queue.8B.rtt", "futex", "µs", false}},
             [&] { return futex_rtt_us(opt.n(4'000, 600)); });
}
