// Pool.map of square over a list, with an initializer and maxtasksperchild
// (multiprocessing.Pool([processes[, initializer[, initargs[, maxtasksperchild]]]]) and
// map(func, iterable[, chunksize])):
//
//   def square(x): return x * x
//   def init(tag): print("worker", os.getpid(), "starts:", tag)
//   with Pool(2, init, ("hello",), maxtasksperchild=4) as pool:
//       print(pool.map(square, range(10)))
//       print(pool.apply_async(square, (12,)).get(timeout=5))
//       for y in pool.imap(square, range(5)): print(y, end=" ")
#include <fmt/ranges.h>
#include <mpp/mpp.hpp>
#include <mpp/pool.hpp>

#include <numeric>
#include <vector>

int square(int x) { return x * x; }
void init(int tag) {
  fmt::print("worker {} starts: {}\n", *mpp::current_process().pid(), tag);
  std::fflush(stdout);
}
// Registered, so that spawned workers (the only kind on Windows) can run them too.
MPP_REGISTER(square);
MPP_REGISTER(init);

int main(int argc, char** argv) {
  mpp::bootstrap(argc, argv);
  std::vector<int> xs(10);
  std::iota(xs.begin(), xs.end(), 0);

  mpp::PoolOptions opts;
  opts.processes = 2;
  opts.maxtasksperchild = 4;
  mpp::Pool pool(opts, init, 42);
  fmt::print("{}\n", pool.map(square, xs));
  fmt::print("{}\n", pool.apply_async(square, 12).get(std::chrono::seconds(5)));
  for (int y : pool.imap(square, std::vector<int>{0, 1, 2, 3, 4})) fmt::print("{} ", y);
  fmt::print("\n");
  pool.close();
  pool.join();
}
