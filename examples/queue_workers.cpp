// Queue methods: a JoinableQueue feeds a pool of
// worker processes; each calls task_done() per task and the main process join()s the queue.
// In Python:
//
//   from multiprocessing import JoinableQueue, Process, Queue
//   def worker(tasks, results):
//       while True:
//           n = tasks.get()
//           if n is None:
//               tasks.task_done()
//               break
//           results.put((n, n * n))
//           tasks.task_done()
//   tasks, results = JoinableQueue(), Queue()
//   workers = [Process(target=worker, args=(tasks, results)) for _ in range(4)]
//   for w in workers: w.start()
//   for n in range(100): tasks.put(n)
//   tasks.join()                               # every task done
//   print(results.qsize(), sum(r for _, r in (results.get() for _ in range(100))))
//   for w in workers: tasks.put(None)
//   tasks.join(); [w.join() for w in workers]
//
// Unlike Python, a worker killed between get() and task_done() does not make join() hang: its
// task is accounted as lost once no live process holds it.
#include <fmt/format.h>

#include <optional>
#include <utility>
#include <vector>

#include <mpp/process.hpp>
#include <mpp/queue.hpp>

void worker(mpp::JoinableQueue<std::optional<int>> tasks,
            mpp::Queue<std::pair<int, long>> results) {
  for (;;) {
    const std::optional<int> n = tasks.get();
    if (!n) {
      tasks.task_done();
      break;
    }
    results.put({*n, static_cast<long>(*n) * *n});
    tasks.task_done();
  }
}
MPP_REGISTER(worker);  // so the spawn start method (the only one on Windows) can run it too

int main(int argc, char** argv) {
  mpp::bootstrap(argc, argv);

  mpp::JoinableQueue<std::optional<int>> tasks;
  mpp::Queue<std::pair<int, long>> results;
  std::vector<mpp::Process> workers;
  for (int i = 0; i < 4; ++i) workers.emplace_back(worker, tasks, results);
  for (auto& w : workers) w.start();
  for (int n = 0; n < 100; ++n) tasks.put(n);
  tasks.join();  // returns once every task has been marked done
  const std::size_t done = results.qsize();
  long sum = 0;
  for (int i = 0; i < 100; ++i) sum += results.get().second;
  fmt::print("{} results, sum of squares {}\n", done, sum);  // 100 results, sum of squares 328350
  for (std::size_t i = 0; i < workers.size(); ++i) tasks.put(std::nullopt);
  tasks.join();
  bool ok = done == 100 && sum == 328350;
  for (auto& w : workers) {
    w.join();
    ok = ok && w.exitcode() == 0;
  }
  return ok ? 0 : 1;
}
