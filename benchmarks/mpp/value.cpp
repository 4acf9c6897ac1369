// mpp's Value<int64_t> on the value.* workloads, measured like the peers: two processes pinned
// to cores 0 and 1, released together, total rate = 2n / (last end - first start), and the
// final value checked (python_peers.py value_locked_increment; limits.cpp fetch_add_ops).
#include <mpp/value.hpp>

#include <mutex>
#include <vector>

#include "../common.hpp"

namespace {

using bench::Shared;
using bench::Spans;
using bench::StartLine;

/// `body(v)` does one increment; runs n_each of them in each of 2 pinned processes.
template <class Body>
double two_proc_ops(std::int64_t n_each, Body body) {
  mpp::Value<std::int64_t> v(0);
  Shared<StartLine> start;
  Shared<Spans> span;
  std::vector<pid_t> kids;
  for (int k = 0; k < 2; ++k)
    kids.push_back(bench::spawn(k, [&, k] {
      start->wait();
      span->start[k] = bench::now_ns();
      for (std::int64_t i = 0; i < n_each; ++i) body(v);
      span->end[k] = bench::now_ns();
    }));
  start->release(2);
  bench::join(kids);
  bench::check(v.value() == 2 * n_each, "value: lost increment");
  return static_cast<double>(2 * n_each) / span->elapsed_s(2);
}

}  // namespace

int main(int argc, char** argv) {
  const bench::Options opt = bench::parse_args(argc, argv);
  const std::int64_t n = opt.n(3'000'000, 500'000);
  // Python: `with v.get_lock(): v.value += 1`.
  bench::run(
      opt, {"value.locked_increment.2proc", "mpp", "ops/s", true},
      [&] {
        return two_proc_ops(n, [](mpp::Value<std::int64_t>& v) {
          std::lock_guard<mpp::RLock> g(v.get_lock());
          v.get_obj() += 1;
        });
      },
      "std::lock_guard(v.get_lock()); v.get_obj() += 1");
  bench::run(opt, {"value.fetch_add.2proc", "mpp", "ops/s", true}, [&] {
    return two_proc_ops(
        n, [](mpp::Value<std::int64_t>& v) { v.fetch_add(1, std::memory_order_relaxed); });
  });
}
