// A producer/consumer stream through a Pipe, in the shape of the Python idiom:
//
//   def producer(conn):
//       for item in items:
//           conn.send(item)
//       conn.close()
//
//   def consumer(conn):
//       while True:
//           try:
//               item = conn.recv()
//           except EOFError:
//               break
//           ...
//
//   r, w = Pipe(duplex=False)
//   p = Process(target=producer, args=(w,)); c = Process(target=consumer, args=(r, results))
//   p.start(); w.close(); c.start(); r.close(); p.join(); c.join()
//
// The producer sends records and one message far larger than the pipe's ring (it streams
// through); the consumer stops at EOFError, when the producer has closed its end and the
// parent has closed its copy. The consumer reports back through a second pipe.
#include <fmt/format.h>

#include <cstdint>
#include <numeric>
#include <string>
#include <vector>

#include <mpp/pipe.hpp>
#include <mpp/process.hpp>

struct Reading {
  std::string sensor;
  std::vector<double> samples;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(sensor, samples);
  }
};

void producer(mpp::Connection<Reading> conn) {
  for (int i = 0; i < 1000; ++i)
    conn.send(Reading{fmt::format("sensor-{}", i % 4), std::vector<double>(16, i)});
  // 8 MiB in one message, through a 256 KiB ring.
  conn.send(Reading{"bulk", std::vector<double>(1 << 20, 0.5)});
  conn.close();
}

void consumer(mpp::Connection<Reading> conn, mpp::Connection<std::uint64_t> report) {
  std::uint64_t items = 0, samples = 0;
  for (;;) {
    try {
      const Reading item = conn.recv();
      ++items;
      samples += item.samples.size();
    } catch (const mpp::EOFError&) {
      break;  // the producer closed its end: nothing more will come
    }
  }
  report.send(items);
  report.send(samples);
}

// Registered, so that the spawn start method (the only one on Windows) can run them too.
MPP_REGISTER(producer);
MPP_REGISTER(consumer);

int main(int argc, char** argv) {
  mpp::bootstrap(argc, argv);

  auto [r, w] = mpp::Pipe<Reading>(/*duplex=*/false);
  auto [results, report] = mpp::Pipe<std::uint64_t>(/*duplex=*/false);
  mpp::Process p(producer, w);
  mpp::Process c(consumer, r, report);
  p.start();
  // As with file descriptors, a forked child holds every end its parent holds at fork(): close
  // w before starting the consumer, or the consumer itself would keep the stream open.
  w.close();
  c.start();
  r.close();
  report.close();
  const std::uint64_t items = results.recv(), samples = results.recv();
  p.join();
  c.join();
  fmt::print("consumer received {} items with {} samples\n", items, samples);
  const std::uint64_t want = 1000 * 16 + (1 << 20);
  return items == 1001 && samples == want && p.exitcode() == 0 && c.exitcode() == 0 ? 0 : 1;
}
