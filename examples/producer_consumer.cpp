// Queue vs Pipe: use a Queue for capacity-limiting streaming
// between processes, the producer/consumer pattern. In Python:
//
//   from multiprocessing import Process, Queue
//   def producer(q, n):
//       for i in range(n):
//           q.put(f"item {i}")          # blocks while the queue holds 10 items
//       q.put(None)                     # sentinel: no more data
//   def consumer(q, done):
//       count = 0
//       while (item := q.get()) is not None:
//           count += 1
//       done.put(count)
//   q, done = Queue(10), Queue()
//   p, c = Process(target=producer, args=(q, 1000)), Process(target=consumer, args=(q, done))
//   p.start(); c.start()
//   print(done.get()); p.join(); c.join()
//
// Queues cross into the children as their names (fork, spawn or forkserver alike).
#include <fmt/format.h>

#include <optional>
#include <string>

#include <mpp/process.hpp>
#include <mpp/queue.hpp>

using Item = std::optional<std::string>;  // std::nullopt plays Python's None

void producer(mpp::Queue<Item> q, int n) {
  for (int i = 0; i < n; ++i) q.put(fmt::format("item {}", i));  // blocks while 10 are queued
  q.put(std::nullopt);
}

void consumer(mpp::Queue<Item> q, mpp::Queue<long> done) {
  long count = 0;
  while (const Item item = q.get()) {
    if (*item != fmt::format("item {}", count)) break;  // one producer: FIFO
    ++count;
  }
  done.put(count);
}

// Registered, so that the spawn start method (the only one on Windows) can run them too.
MPP_REGISTER(producer);
MPP_REGISTER(consumer);

int main(int argc, char** argv) {
  mpp::bootstrap(argc, argv);  // like Python's freeze_support()

  mpp::Queue<Item> q(10);  // at most 10 items in flight: the producer waits for the consumer
  mpp::Queue<long> done;
  mpp::Process p(producer, q, 1000);
  mpp::Process c(consumer, q, done);
  p.start();
  c.start();
  const long received = done.get();
  p.join();
  c.join();
  fmt::print("consumer received {} items; queue now holds {}\n", received, q.qsize());
  return received == 1000 && q.empty() && p.exitcode() == 0 && c.exitcode() == 0 ? 0 : 1;
}
