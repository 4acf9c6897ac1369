// mpp's Pool on the pool.* workloads, measured like python_peers.py (pool_map, pool_startup_ms):
// map(x + 1) over 10^6 ints with the default chunksize on a started Pool(2), and the time to make
// a Pool(2), map 2 items, close and join it; and ProcessPoolExecutor(2).map(x + 1) over 10^4 ints
// (executor_map: Executor.map's default chunksize of 1, executor started).
#include <mpp/futures.hpp>
#include <mpp/pool.hpp>

#include <numeric>
#include <vector>

#include "../common.hpp"

namespace {

std::int64_t plus_one(std::int64_t x) { return x + 1; }

double pool_map(std::int64_t n) {
  mpp::Pool pool(2);
  (void)pool.map(plus_one, std::vector<std::int64_t>{0, 1, 2, 3});  // workers up before the clock
  std::vector<std::int64_t> in(static_cast<std::size_t>(n));
  std::iota(in.begin(), in.end(), 0);
  const std::int64_t t0 = bench::now_ns();
  const auto out = pool.map(plus_one, in);
  const double secs = static_cast<double>(bench::now_ns() - t0) * 1e-9;
  bench::check(out.size() == in.size() &&
                   std::accumulate(out.begin(), out.end(), std::int64_t{0}) == n * (n + 1) / 2,
               "wrong results");
  return static_cast<double>(n) / secs;
}

double pool_startup_ms() {
  const std::int64_t t0 = bench::now_ns();
  mpp::Pool pool(2);
  const auto out = pool.map(plus_one, std::vector<std::int64_t>{1, 2});
  pool.close();
  pool.join();
  const double ms = static_cast<double>(bench::now_ns() - t0) * 1e-6;
  bench::check(out == std::vector<std::int64_t>{2, 3}, "wrong results");
  return ms;
}

double executor_map(std::int64_t n) {
  mpp::ProcessPoolExecutor ex(2);
  // Workers up before the clock (map is lazy: collect it).
  (void)std::vector<std::int64_t>(ex.map(plus_one, std::vector<std::int64_t>{0, 1, 2, 3}));
  std::vector<std::int64_t> in(static_cast<std::size_t>(n));
  std::iota(in.begin(), in.end(), 0);
  const std::int64_t t0 = bench::now_ns();
  const std::vector<std::int64_t> out = ex.map(plus_one, in);  // collected: map is lazy
  const double secs = static_cast<double>(bench::now_ns() - t0) * 1e-9;
  bench::check(out.size() == in.size() &&
                   std::accumulate(out.begin(), out.end(), std::int64_t{0}) == n * (n + 1) / 2,
               "wrong results");
  return static_cast<double>(n) / secs;
}

}  // namespace

int main(int argc, char** argv) {
  mpp::bootstrap(argc, argv);
  const bench::Options opt = bench::parse_args(argc, argv);
  bench::run(opt, {"pool.map.1e6", "mpp", "items/s", true},
             [&] { return pool_map(opt.n(1'000'000, 100'000)); });
  bench::run(opt, {"pool.startup", "mpp", "ms", false}, [&] { return pool_startup_ms(); });
  bench::run(opt, {"futures.map.1e4", "mpp", "items/s", true},
             [&] { return executor_map(opt.n(10'000, 2'000)); });
}
