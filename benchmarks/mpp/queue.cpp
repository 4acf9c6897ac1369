// mpp's side of the queue.* workloads (benchmarks/workloads.py): mpp::Queue driven by the same
// load as Boost message_queue and POSIX mq (peers/queue_load.hpp), 1024 slots like the other
// user-space queues. 8-byte messages are Queue<std::uint64_t> (stored in the slot), 1 KiB
// messages Queue<std::array<char, 1024>> (stored in the slot's cell).
#include <mpp/queue.hpp>

#include <array>

#include "../common.hpp"
#include "../peers/queue_load.hpp"

namespace {

constexpr long kCapacity = 1024;

/// A queue_load Channel over mpp::Queue<Msg>; Msg is a trivially copyable message of its size.
template <std::size_t Size>
class MppChannel {
 public:
  using Msg = std::conditional_t<Size == 8, std::uint64_t, std::array<char, Size>>;
  MppChannel() : q_(kCapacity) {}
  void send(const void* msg, std::size_t size) {
    if (size != Size) bench::fail("mpp queue: wrong message size");
    if constexpr (alignof(Msg) == 1) {
      q_.put(*static_cast<const Msg*>(msg));  // the bytes as they are, as the peers send them
    } else {
      Msg m;
      std::memcpy(&m, msg, Size);
      q_.put(m);
    }
  }
  std::size_t recv(void* msg, std::size_t capacity) {
    if (capacity < Size) bench::fail("mpp queue: buffer too small");
    const Msg m = q_.get();
    std::memcpy(msg, &m, Size);
    return Size;
  }

 private:
  mpp::Queue<Msg> q_;
};

}  // namespace

int main(int argc, char** argv) {
  const bench::Options opt = bench::parse_args(argc, argv);
  const std::string note = "capacity " + std::to_string(kCapacity);

  bench::run(
      opt, {"queue.8B.1p1c.throughput", "mpp", "msg/s", true},
      [&] {
        MppChannel<8> q;
        return peers::queue_throughput(q, 8, 1, 1, opt.n(4'000'000, 600'000));
      },
      note);
  bench::run(
      opt, {"queue.1KiB.1p1c.throughput", "mpp", "msg/s", true},
      [&] {
        MppChannel<1024> q;
        return peers::queue_throughput(q, 1024, 1, 1, opt.n(2'000'000, 300'000));
      },
      note);
  bench::run(
      opt, {"queue.8B.2p2c.throughput", "mpp", "msg/s", true},
      [&] {
        MppChannel<8> q;
        return peers::queue_throughput(q, 8, 2, 2, opt.n(4'000'000, 600'000));
      },
      note);
  bench::run(
      opt, {"queue.8B.rtt", "mpp", "µs", false},
      [&] {
        MppChannel<8> there, back;
        return peers::echo_rtt_us(there, back, opt.n(20'000, 4'000));
      },
      note);
}
