// mpp's side of the lock.* workloads (benchmarks/workloads.py): mpp::Lock, robust against a dead
// holder, measured exactly as peers/boost_ipc.cpp measures interprocess_mutex and a robust
// pthread mutex: the lock lives in shared memory, ++x under it.
#include <mpp/sync.hpp>

#include <mutex>

#include "../common.hpp"

namespace {

using bench::Shared;
using bench::Spans;
using bench::StartLine;

struct Counter {
  alignas(bench::kCacheLine) std::int64_t x = 0;
};

/// ns per lock+unlock pair, one process, nobody else around.
double lock_uncontended_ns(std::int64_t n) {
  mpp::Lock l;
  Shared<Counter> g;
  std::int64_t t0 = bench::now_ns();
  for (std::int64_t i = 0; i < n; ++i) {
    l.lock();
    ++g->x;
    bench::escape(&g->x);
    l.unlock();
  }
  std::int64_t t1 = bench::now_ns();
  bench::check(g->x == n, "lock: lost increment");
  return static_cast<double>(t1 - t0) / static_cast<double>(n);
}

/// Total lock;++x;unlock per second from two processes on cores 0 and 1.
double lock_contended_ops(std::int64_t n_each) {
  mpp::Lock l;
  Shared<Counter> g;
  Shared<StartLine> start;
  Shared<Spans> span;
  std::vector<pid_t> kids;
  for (int k = 0; k < 2; ++k)
    kids.push_back(bench::spawn(k, [&, k] {
      start->wait();
      span->start[k] = bench::now_ns();
      for (std::int64_t i = 0; i < n_each; ++i) {
        l.lock();
        ++g->x;
        l.unlock();
      }
      span->end[k] = bench::now_ns();
    }));
  start->release(2);
  bench::join(kids);
  bench::check(g->x == 2 * n_each, "lock: lost increment");
  return static_cast<double>(2 * n_each) / span->elapsed_s(2);
}

}  // namespace

int main(int argc, char** argv) {
  const bench::Options opt = bench::parse_args(argc, argv);
  bench::run(opt, {"lock.uncontended", "mpp", "ns", false},
             [&] { return lock_uncontended_ns(opt.n(20'000'000, 3'000'000)); });
  bench::run(opt, {"lock.contended.2proc", "mpp", "ops/s", true},
             [&] { return lock_contended_ops(opt.n(4'000'000, 600'000)); });
}
