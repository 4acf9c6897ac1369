// mpp's Pool on the pool.* workloads, measured like python_peers.py (pool_map, pool_startup_ms):
// map(x + 1) over 10^6 ints with the default chunksize on a started Pool(2), and the time to make
// a Pool(2), map 2 items, close and join it; and ProcessPoolExecutor(2).map(x + 1) over 10^4 ints
// (executor_map: Executor.map's default chunksize of 1, executor started); the latency of
// futures::wait(FIRST_COMPLETED) next to a long call; and the makespan and mean latency of three
// calls of mixed durations on Pool(2) (pool_mixed).
#include <mpp/futures.hpp>
#include <mpp/pool.hpp>

#include <algorithm>
#include <array>
#include <chrono>
#include <mutex>
#include <numeric>
#include <thread>
#include <vector>

#include "../common.hpp"

namespace {

std::int64_t plus_one(std::int64_t x) { return x + 1; }
int sleep_ms(int ms) {
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  return ms;
}
int same(int x) { return x; }

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

double first_completed_us(int k) {
  mpp::ProcessPoolExecutor ex(2);
  (void)std::vector<std::int64_t>(ex.map(plus_one, std::vector<std::int64_t>{0, 1, 2, 3}));
  auto sleeper = ex.submit(sleep_ms, 1000);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // the sleeper is running
  double total = 0;
  for (int i = 0; i < k; ++i) {
    const std::int64_t t0 = bench::now_ns();
    auto f = ex.submit(same, 2);
    const auto r =
        mpp::futures::wait(std::vector{sleeper, f}, std::nullopt, mpp::futures::FIRST_COMPLETED);
    total += static_cast<double>(bench::now_ns() - t0);
    bench::check(r.done.size() == 1 && r.done[0] == f && f.result() == 2, "wrong first completed");
  }
  (void)sleeper.result();
  return total / k * 1e-3;
}

enum class Mixed { makespan, latency };

double pool_mixed(Mixed metric) {
  mpp::Pool pool(2);
  (void)pool.map(plus_one, std::vector<std::int64_t>{0, 1, 2, 3});  // workers up before the clock
  std::mutex mu;
  std::vector<std::int64_t> done;
  const std::int64_t t0 = bench::now_ns();
  std::vector<mpp::AsyncResult<int>> rs;
  for (int ms : {300, 50, 150})
    rs.push_back(pool.apply_async(sleep_ms, mpp::args(ms), [&](const int&) {
      std::lock_guard g(mu);
      done.push_back(bench::now_ns() - t0);
    }));
  for (auto& r : rs) (void)r.get();
  pool.close();
  pool.join();  // every callback has run
  bench::check(done.size() == 3, "wrong results");
  if (metric == Mixed::makespan)
    return static_cast<double>(*std::max_element(done.begin(), done.end())) * 1e-6;
  return static_cast<double>(std::accumulate(done.begin(), done.end(), std::int64_t{0})) / 3 * 1e-6;
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
  bench::run(opt, {"futures.wait.first_completed", "mpp", "µs", false},
             [&] { return first_completed_us(100); });
  bench::run(opt, {"pool.mixed.makespan", "mpp", "ms", false},
             [&] { return pool_mixed(Mixed::makespan); });
  bench::run(opt, {"pool.mixed.latency", "mpp", "ms", false},
             [&] { return pool_mixed(Mixed::latency); });
}
