// mpp's Manager dict and list on the dict.* / list.* workloads, measured like the peers
// (boost_ipc.cpp map_ops: map<int,int> under a named_mutex; python_peers.py manager_ops):
// keys 0..n-1 with value k*3+1; one process is the caller itself, two processes are children
// pinned to cores 0 and 1 working on disjoint keys, released together, total rate =
// ops / (last end - first start); every value is checked.
#include <mpp/manager.hpp>

#include <vector>

#include "../common.hpp"

namespace {

using bench::Shared;
using bench::Spans;
using bench::StartLine;

int value_of(int k) { return k * 3 + 1; }

/// ops/s of `procs` processes doing n_each sets of new keys, or gets of keys set beforehand.
double dict_ops(bool set, int procs, std::int64_t n_each) {
  mpp::Manager m;
  auto d = m.dict<int, int>("bench");
  const std::int64_t keys = procs * n_each;
  if (!set)
    for (int k = 0; k < keys; ++k) d.set(k, value_of(k));
  auto work = [&](int id) {
    for (std::int64_t i = 0; i < n_each; ++i) {
      const int k = static_cast<int>(i * procs + id);  // disjoint keys per process
      if (set) {
        d.set(k, value_of(k));
      } else if (d.get(k, -1) != value_of(k)) {
        bench::fail("dict: wrong value");
      }
    }
  };
  double elapsed;
  if (procs == 1) {
    const std::int64_t t0 = bench::now_ns();
    work(0);
    elapsed = bench::seconds(bench::now_ns() - t0);
  } else {
    Shared<StartLine> start;
    Shared<Spans> span;
    std::vector<pid_t> kids;
    for (int k = 0; k < procs; ++k)
      kids.push_back(bench::spawn(k, [&, k] {
        start->wait();
        span->start[k] = bench::now_ns();
        work(k);
        span->end[k] = bench::now_ns();
      }));
    start->release(procs);
    bench::join(kids);
    elapsed = span->elapsed_s(procs);
  }
  bench::check(d.size() == static_cast<std::size_t>(keys), "dict: wrong size");
  for (int k = 0; k < keys; k += 97) bench::check(d.get(k, -1) == value_of(k), "dict: wrong value");
  return static_cast<double>(keys) / elapsed;
}

/// ops/s of one process appending 0..n-1 to a list.
double list_append(std::int64_t n) {
  mpp::Manager m;
  auto l = m.list<std::int64_t>("bench");
  const std::int64_t t0 = bench::now_ns();
  for (std::int64_t i = 0; i < n; ++i) l.append(i);
  const double elapsed = bench::seconds(bench::now_ns() - t0);
  const auto v = l.to_vector();
  bench::check(v.size() == static_cast<std::size_t>(n), "list: wrong size");
  for (std::int64_t i = 0; i < n; ++i)
    if (v[static_cast<std::size_t>(i)] != i) bench::fail("list: wrong item");
  return static_cast<double>(n) / elapsed;
}

}  // namespace

int main(int argc, char** argv) {
  const bench::Options opt = bench::parse_args(argc, argv);
  for (int procs : {1, 2}) {
    const std::string p = std::to_string(procs) + "proc";
    const std::string set = "dict.set." + p, get = "dict.get." + p;
    bench::run(
        opt, {set.c_str(), "mpp", "ops/s", true},
        [&] { return dict_ops(true, procs, opt.n(200'000, 40'000) / procs); },
        "SharedDict<int,int>: d.set(k, v)");
    bench::run(
        opt, {get.c_str(), "mpp", "ops/s", true},
        [&] { return dict_ops(false, procs, opt.n(200'000, 40'000)); },
        "SharedDict<int,int>: d.get(k, -1), no lock (seqlock-validated)");
  }
  bench::run(
      opt, {"list.append.1proc", "mpp", "ops/s", true},
      [&] { return list_append(opt.n(200'000, 40'000)); }, "SharedList<int64>: l.append(i)");
}
