// mpp's Process on the process.start workload, measured like the peers (kernel.cpp fork_us,
// python_peers.py process_start_us): start a child that does nothing, join it, check its exit code.
#include <mpp/process.hpp>

#include "../common.hpp"

namespace {

void noop() {}

double process_start_us(std::int64_t n) {
  const std::int64_t t0 = bench::now_ns();
  for (std::int64_t i = 0; i < n; ++i) {
    mpp::Process p{noop};
    p.start();
    p.join();
    bench::check(p.exitcode() == 0, "child failed");
  }
  return static_cast<double>(bench::now_ns() - t0) * 1e-3 / static_cast<double>(n);
}

}  // namespace

int main(int argc, char** argv) {
  mpp::bootstrap(argc, argv);
  const bench::Options opt = bench::parse_args(argc, argv);
  bench::run(opt, {"process.start", "mpp", "µs", false},
             [&] { return process_start_us(opt.n(500, 100)); });
}
