// ProcessPoolExecutor and Future across real worker processes.
#include <mpp/futures.hpp>
#include <mpp/value.hpp>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>

#include <atomic>
#include <stdexcept>
#include <string>
#include <numeric>
#include <thread>
#include <vector>

#include "helpers.hpp"

using namespace std::chrono_literals;

namespace {
int cube(int x) { return x * x * x; }
int sleepy(int ms) {
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  return ms;
}
int suicide(int) {
  ::kill(::getpid(), SIGKILL);
  return 0;
}
int plus_one(int x) { return x + 1; }
int reject(int x) { throw std::out_of_range("x=" + std::to_string(x)); }
int unregistered(int x) { return x; }

mpp::ExecutorOptions with_method(mpp::StartMethod m) {
  mpp::ExecutorOptions o;
  o.max_workers = 2;
  o.start_method = m;
  return o;
}

// An initializer that always throws; its runs are counted in the RawValue this variable names.
constexpr const char* kInitRunsEnv = "MPP_TEST_FUTURES_INIT_RUNS";
void failing_init(int code) {
  if (const char* n = std::getenv(kInitRunsEnv)) mpp::RawValue<int>::open(n).fetch_add(1);
  throw std::invalid_argument("bad init " + std::to_string(code));
}

/// Whether `call` raises BrokenProcessPool naming "bad init <code>" (and std::invalid_argument),
/// with the initializer's std::invalid_argument nested in it.
template <class F>
bool raises_broken(F&& call, int code) {
  const std::string text = "bad init " + std::to_string(code);
  try {
    call();
  } catch (const mpp::BrokenProcessPool& b) {
    const std::string_view what = b.what();
    if (what.find(text) == what.npos || what.find("std::invalid_argument") == what.npos) {
      fmt::print(stderr, "unexpected message: {}\n", what);
      return false;
    }
    try {
      std::rethrow_if_nested(b);
    } catch (const std::invalid_argument& cause) {
      return cause.what() == text;
    } catch (...) {
      return false;
    }
    return false;
  } catch (const std::exception& e) {
    fmt::print(stderr, "unexpected exception: {}\n", e.what());
    return false;
  }
  return false;
}
}  // namespace

MPP_REGISTER(cube);
MPP_REGISTER(sleepy);
MPP_REGISTER(suicide);
MPP_REGISTER(plus_one);
MPP_REGISTER(reject);
MPP_REGISTER(failing_init);

TEST_CASE("Executor: submit returns futures with results and exceptions", "[futures]") {
  mpp::ProcessPoolExecutor ex(2);
  auto f = ex.submit(cube, 3);
  CHECK(f.result(30s) == 27);
  CHECK(f.done());
  CHECK_FALSE(f.cancelled());
  CHECK(f.exception() == nullptr);
  auto bad = ex.submit([](int x) -> int { throw std::out_of_range("x=" + std::to_string(x)); }, 5);
  CHECK_THROWS_AS(bad.result(30s), std::out_of_range);
  CHECK(bad.exception() != nullptr);
  auto slow = ex.submit(sleepy, 1000);
  CHECK_THROWS_AS(slow.result(10ms), mpp::TimeoutError);
  CHECK(slow.result() == 1000);
  auto v = ex.submit([] {});  // void calls complete too
  v.result(30s);
}

TEST_CASE("Executor: map, done callbacks and cancel", "[futures]") {
  mpp::ProcessPoolExecutor ex(2);
  std::vector<int> in(50);
  std::iota(in.begin(), in.end(), 0);
  const std::vector<int> out = ex.map(cube, in, 60s, 5);
  for (std::size_t i = 0; i < in.size(); ++i) CHECK(out[i] == cube(in[i]));

  std::atomic<int> called{0};
  auto f = ex.submit(cube, 2);
  f.add_done_callback([&](const mpp::Future<int>& d) { called += d.result(); });
  f.result(30s);
  for (int i = 0; i < 1000 && called == 0; ++i) std::this_thread::sleep_for(1ms);
  CHECK(called == 8);
  f.add_done_callback([&](const mpp::Future<int>&) { called += 1; });  // already done: at once
  CHECK(called == 9);

  // Two long calls occupy the workers' windows; a later one can still be cancelled.
  std::vector<mpp::Future<int>> busy;
  for (int i = 0; i < 4; ++i) busy.push_back(ex.submit(sleepy, 300));
  auto queued = ex.submit(sleepy, 1);
  CHECK(queued.cancel());
  CHECK(queued.cancelled());
  CHECK(queued.done());
  CHECK_THROWS_AS(queued.result(), mpp::CancelledError);
  for (auto& b : busy) CHECK(b.result(60s) == 300);
  CHECK_FALSE(busy[0].cancel());  // already done
}

TEST_CASE("Executor: shutdown waits, cancels on request, and refuses new work", "[futures]") {
  mpp::ProcessPoolExecutor ex(2);
  std::vector<mpp::Future<int>> fs;
  for (int i = 0; i < 8; ++i) fs.push_back(ex.submit(sleepy, 100));
  ex.shutdown(true, true);
  int done = 0, cancelled = 0;
  for (auto& f : fs) {
    CHECK(f.done());
    if (f.cancelled())
      ++cancelled;
    else if (f.result() == 100)
      ++done;
  }
  CHECK(done + cancelled == 8);
  CHECK(cancelled >= 1);
  CHECK_THROWS_WITH(ex.submit(cube, 1), "cannot schedule new futures after shutdown");
}

TEST_CASE("Executor: a killed worker fails only its future", "[futures][kill]") {
  mpp::ProcessPoolExecutor ex(2);
  auto lost = ex.submit(suicide, 0);
  CHECK_THROWS_AS(lost.result(60s), mpp::WorkerLostError);
  CHECK(ex.submit(cube, 4).result(60s) == 64);  // the executor is not broken
}

TEST_CASE("Executor: spawn and forkserver executors run registered functions", "[futures][spawn]") {
  for (auto m : {mpp::StartMethod::spawn, mpp::StartMethod::forkserver}) {
    INFO("start method " << mpp::start_method_name(m));
    mpp::ProcessPoolExecutor ex(with_method(m));
    CHECK(ex.submit(cube, 3).result(30s) == 27);
    std::vector<int> in(100);
    std::iota(in.begin(), in.end(), 0);
    const auto out = ex.map(plus_one, in, 60s);
    CHECK(out.size() == in.size());
    CHECK(std::accumulate(out.begin(), out.end(), 0) == 100 * 101 / 2);
    CHECK_THROWS_AS(ex.submit(reject, 5).result(30s), std::out_of_range);
    CHECK_THROWS_AS(ex.submit(unregistered, 1), mpp::InvalidArgument);
    CHECK_THROWS_AS(ex.submit([](int x) { return x; }, 1), mpp::InvalidArgument);
    ex.shutdown();
  }
}

TEST_CASE("Executor: spawn and forkserver executors: a killed worker fails only its future",
          "[futures][spawn][kill]") {
  for (auto m : {mpp::StartMethod::spawn, mpp::StartMethod::forkserver}) {
    INFO("start method " << mpp::start_method_name(m));
    mpp::ProcessPoolExecutor ex(with_method(m));
    auto lost = ex.submit(suicide, 0);
    CHECK_THROWS_AS(lost.result(60s), mpp::WorkerLostError);
    CHECK(ex.submit(cube, 4).result(60s) == 64);
  }
}

TEST_CASE("Executor: an executor whose initializer throws is broken: futures fail, submit raises, shutdown "
          "returns", "[futures][spawn]") {
  for (auto m : {mpp::StartMethod::fork, mpp::StartMethod::spawn}) {
    INFO("start method " << mpp::start_method_name(m));
    const int rc = mpp_test::run_bounded(60s, [m] {
          int failed = 0;
          auto expect = [&](bool ok, const char* what) {
            if (!ok) fmt::print(stderr, "scenario check failed: {}\n", what), ++failed;
          };
          mpp::RawValue<int> runs(0);
          ::setenv(kInitRunsEnv, runs.name().c_str(), 1);
          {
            mpp::ProcessPoolExecutor ex(with_method(m), failing_init, 3);
            // Submitted before the break is seen: the future fails; after: submit() raises.
            for (int i = 0; i < 4; ++i)
              expect(raises_broken([&] { (void)ex.submit(cube, i).result(30s); }, 3),
                     "a pending future fails with BrokenProcessPool");
            expect(raises_broken([&] { (void)ex.submit(cube, 1); }, 3),
                   "submit() after the break raises BrokenProcessPool");
            expect(raises_broken([&] { (void)ex.map(cube, std::vector<int>{1, 2}, 30s); }, 3),
                   "map() after the break raises BrokenProcessPool");
            ex.shutdown(true);  // returns
          }
          expect(runs.value() >= 1 && runs.value() <= 2,
                 "the initializer ran at most once per worker");
          {  // the destructor (shutdown(wait=true)) of a broken executor returns too
            mpp::ProcessPoolExecutor ex(with_method(m), failing_init, 4);
            expect(raises_broken([&] { (void)ex.submit(cube, 2).result(30s); }, 4),
                   "the future fails");
          }
          expect(runs.value() <= 4, "no initializer runs after the break");
          ::unsetenv(kInitRunsEnv);
          return failed;
        });
    CHECK(rc == 0);
  }
}
