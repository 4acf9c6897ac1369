// ProcessPoolExecutor and Future across real worker processes.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
#include <mpp/futures.hpp>
#include <mpp/value.hpp>

#include <cstdlib>

#include <algorithm>
#include <atomic>
#include <initializer_list>
#include <numeric>
#include <stdexcept>
#include <string>
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
int pow_int(int x, int y) {
  int r = 1;
  for (int i = 0; i < y; ++i) r *= x;
  return r;
}
// Python's divmod(a, b)[0], raising on b == 0 as ZeroDivisionError does.
int divide(int a, int b) {
  if (b == 0) throw std::domain_error("division by zero");
  return a / b;
}
std::string spell(int x) { return "n" + std::to_string(x); }
int sleep_then_raise(int ms) {
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  throw std::runtime_error("this is an exception");
}
void do_nothing(int) {}
void void_reject(int x) { throw std::invalid_argument("void x=" + std::to_string(x)); }

double since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

/// Whether `f` is among `fs`.
template <class Fut, class G>
bool has(const std::vector<Fut>& fs, const G& f) {
  return std::find(fs.begin(), fs.end(), Fut(f)) != fs.end();
}

/// A future of `ex` that is cancelled: queued behind `busy` calls of both workers.
mpp::Future<int> cancelled_future(mpp::ProcessPoolExecutor& ex,
                                  std::vector<mpp::Future<int>>& busy) {
  for (int i = 0; i < 4; ++i) busy.push_back(ex.submit(sleepy, 400));
  auto f = ex.submit(sleepy, 1);
  REQUIRE(f.cancel());
  return f;
}

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
MPP_REGISTER(pow_int);
MPP_REGISTER(divide);
MPP_REGISTER(spell);
MPP_REGISTER(sleep_then_raise);
MPP_REGISTER(do_nothing);
MPP_REGISTER(void_reject);

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

TEST_CASE(
    "Executor: an executor whose initializer throws is broken: futures fail, submit raises, "
    "shutdown "
    "returns",
    "[futures][spawn]") {
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
        expect(raises_broken(
                   [&] {
                     (void)ex.map(cube, std::vector<int>{1, 2}, 30s);
                   },
                   3),
               "map() after the break raises BrokenProcessPool");
        ex.shutdown(true);  // returns
      }
      expect(runs.value() >= 1 && runs.value() <= 2, "the initializer ran at most once per worker");
      {  // the destructor (shutdown(wait=true)) of a broken executor returns too
        mpp::ProcessPoolExecutor ex(with_method(m), failing_init, 4);
        expect(raises_broken([&] { (void)ex.submit(cube, 2).result(30s); }, 4), "the future fails");
      }
      expect(runs.value() <= 4, "no initializer runs after the break");
      ::unsetenv(kInitRunsEnv);
      return failed;
    });
    CHECK(rc == 0);
  }
}

// ---- futures::wait and as_completed (CPython's test_wait.py and test_as_completed.py) ----------

TEST_CASE("Executor: wait on a duplicated future returns it once (bpo-20369)", "[futures]") {
  mpp::ProcessPoolExecutor ex(2);
  auto f = ex.submit(pow_int, 1, 2);
  auto [done, not_done] =
      mpp::futures::wait(std::vector{f, f}, std::nullopt, mpp::futures::ALL_COMPLETED);
  CHECK(done.size() == 1);
  CHECK(done[0] == f);
  CHECK(not_done.empty());
}

TEST_CASE("Executor: wait FIRST_COMPLETED returns when one future is done, without polling",
          "[futures]") {
  mpp::ProcessPoolExecutor ex(2);
  auto quick = ex.submit(sleepy, 100);
  auto slow = ex.submit(sleepy, 3000);
  const auto t0 = std::chrono::steady_clock::now();
  auto [done, not_done] =
      mpp::futures::wait(std::vector{quick, slow}, 30.0, mpp::futures::FIRST_COMPLETED);
  CHECK(since(t0) < 2.0);
  REQUIRE(done.size() == 1);
  CHECK(done[0] == quick);
  REQUIRE(not_done.size() == 1);
  CHECK(not_done[0] == slow);
  // Some already done (one cancelled, one successful): they are returned at once.
  std::vector<mpp::Future<int>> busy;
  auto cancelled = cancelled_future(ex, busy);
  auto r =
      mpp::futures::wait(std::vector{cancelled, quick, slow}, 30.0, mpp::futures::FIRST_COMPLETED);
  CHECK(r.done.size() == 2);
  CHECK(has(r.done, cancelled));
  CHECK(has(r.done, quick));
}

TEST_CASE("Executor: wait FIRST_EXCEPTION returns at the first failure; cancellation is none",
          "[futures]") {
  mpp::ProcessPoolExecutor ex(3);
  auto ok = ex.submit(pow_int, 21, 1);
  auto raises = ex.submit(sleep_then_raise, 300);
  auto slow = ex.submit(sleepy, 4000);
  const auto t0 = std::chrono::steady_clock::now();
  auto [done, not_done] =
      mpp::futures::wait(std::vector{ok, raises, slow}, 30.0, mpp::futures::FIRST_EXCEPTION);
  CHECK(since(t0) < 3.0);
  CHECK(done.size() == 2);
  CHECK(has(done, ok));
  CHECK(has(done, raises));
  CHECK(not_done == std::vector{slow});
  // A future that failed already: returned at once.
  auto r = mpp::futures::wait(std::vector{raises, slow}, 30.0, mpp::futures::FIRST_EXCEPTION);
  CHECK(r.done == std::vector{raises});
  CHECK(r.not_done == std::vector{slow});
  // Only successes and a cancellation: it waits for all of them.
  std::vector<mpp::Future<int>> busy;
  auto cancelled = cancelled_future(ex, busy);
  auto quick = ex.submit(sleepy, 50);
  auto all = mpp::futures::wait(std::vector{cancelled, quick, busy[0]}, 30.0,
                                mpp::futures::FIRST_EXCEPTION);
  CHECK(all.done.size() == 3);
  CHECK(all.not_done.empty());
}

TEST_CASE("Executor: wait ALL_COMPLETED and wait with a timeout", "[futures]") {
  mpp::ProcessPoolExecutor ex(2);
  std::vector<mpp::Future<int>> fs;
  for (int i = 0; i < 6; ++i) fs.push_back(ex.submit(pow_int, i, 2));
  fs.push_back(ex.submit(sleep_then_raise, 50));
  auto [done, not_done] = mpp::futures::wait(fs);
  CHECK(done.size() == fs.size());
  CHECK(not_done.empty());
  for (auto& f : fs) CHECK(f.done());
  // Timeout: what is done then is returned, the rest is not done; no exception.
  auto quick = ex.submit(sleepy, 10);
  auto slow = ex.submit(sleepy, 3000);
  const auto t0 = std::chrono::steady_clock::now();
  auto r = mpp::futures::wait(std::vector{quick, slow}, 0.8);
  const double took = since(t0);
  CHECK(took >= 0.7);
  CHECK(took < 2.5);
  CHECK(r.done == std::vector{quick});
  CHECK(r.not_done == std::vector{slow});
}

TEST_CASE("Executor: wait and as_completed over futures of different types and executors",
          "[futures]") {
  mpp::ProcessPoolExecutor a(1), b(1);
  mpp::Pool pool(1);
  mpp::Future<int> n = a.submit(sleepy, 300);
  mpp::Future<std::string> s = b.submit(spell, 7);
  mpp::Future<void> v = b.submit(do_nothing, 1);
  mpp::AsyncResult<int> r = pool.apply_async(cube, 2);
  auto [done, not_done] = mpp::futures::wait({n, s, v, r}, 30.0);
  CHECK(done.size() == 4);
  CHECK(not_done.empty());
  CHECK(s.result() == "n7");

  auto late = a.submit(sleepy, 400);
  auto early = b.submit(spell, 1);
  std::vector<mpp::AnyFuture> order;
  for (const mpp::AnyFuture& f : mpp::futures::as_completed({late, early}, 30.0))
    order.push_back(f);
  REQUIRE(order.size() == 2);
  CHECK(order[0] == mpp::AnyFuture(early));
  CHECK(order[1] == mpp::AnyFuture(late));
}

TEST_CASE("Executor: as_completed yields each future once as it finishes", "[futures]") {
  // One executor each: a worker given two calls runs them one after the other.
  mpp::ProcessPoolExecutor a(1), b(1), c(1);
  auto f3 = a.submit(sleepy, 600);
  auto f1 = b.submit(sleepy, 50);
  auto f2 = c.submit(sleepy, 300);
  std::vector<int> seen;
  for (const auto& f : mpp::futures::as_completed(std::vector{f3, f1, f2, f1}))
    seen.push_back(f.result());
  CHECK(seen == std::vector{50, 300, 600});  // the duplicate once
  // Done before the call: yielded at once, even with a zero timeout.
  std::size_t n = 0;
  for (const auto& f : mpp::futures::as_completed(std::vector{f1, f2}, 0.0)) {
    CHECK(f.done());
    ++n;
  }
  CHECK(n == 2);
}

TEST_CASE("Executor: as_completed raises TimeoutError naming the unfinished futures", "[futures]") {
  mpp::ProcessPoolExecutor ex(2), other(1);
  std::vector<mpp::Future<int>> busy;
  auto cancelled = cancelled_future(ex, busy);  // busy[0..3] take 0.4 s and more
  auto success = other.submit(pow_int, 2, 3);
  REQUIRE(success.result(30s) == 8);
  std::vector<mpp::Future<int>> seen;
  try {
    for (const auto& f :
         mpp::futures::as_completed(std::vector{cancelled, busy[0], busy[2], success}, 0.0))
      seen.push_back(f);
    FAIL("no TimeoutError");
  } catch (const mpp::TimeoutError& e) {
    CHECK(std::string(e.what()) == "2 (of 4) futures unfinished");
  }
  CHECK(seen.size() == 2);
  CHECK(has(seen, cancelled));
  CHECK(has(seen, success));
  // A timeout is measured from the call, not per future.
  const auto t0 = std::chrono::steady_clock::now();
  auto slow = ex.submit(sleepy, 3000);
  CHECK_THROWS_WITH(
      [&] {
        for (const auto& f : mpp::futures::as_completed(std::vector{slow}, 0.3)) (void)f;
      }(),
      "1 (of 1) futures unfinished");
  CHECK(since(t0) < 2.5);
}

TEST_CASE("Executor: wait and as_completed with spawn and forkserver workers", "[futures][spawn]") {
  for (auto m : {mpp::StartMethod::spawn, mpp::StartMethod::forkserver}) {
    INFO("start method " << mpp::start_method_name(m));
    mpp::ProcessPoolExecutor ex(with_method(m));
    auto quick = ex.submit(sleepy, 50);
    auto slow = ex.submit(sleepy, 1500);
    auto r = mpp::futures::wait(std::vector{slow, quick}, 30.0, mpp::futures::FIRST_COMPLETED);
    CHECK(r.done == std::vector{quick});
    auto bad = ex.submit(sleep_then_raise, 10);
    auto e =
        mpp::futures::wait({bad, slow, ex.submit(spell, 3)}, 30.0, mpp::futures::FIRST_EXCEPTION);
    CHECK(has(e.done, bad));
    mpp::ProcessPoolExecutor other(with_method(m));
    auto later = ex.submit(sleepy, 600);
    auto sooner = other.submit(sleepy, 50);
    std::vector<int> order;
    for (const auto& f : mpp::futures::as_completed(std::vector{later, sooner}, 30.0))
      order.push_back(f.result());
    CHECK(order == std::vector{50, 600});
  }
}

// ---- Executor.map (CPython's test_map, test_map_exception, test_map_timeout) ----------------

TEST_CASE("Executor: map over several ranges stops at the shortest, lazily and in order",
          "[futures]") {
  mpp::ProcessPoolExecutor ex(2);
  std::vector<int> xs(10), ys(10);
  std::iota(xs.begin(), xs.end(), 0);
  std::iota(ys.begin(), ys.end(), 0);
  for (std::ptrdiff_t chunk : {1, 3}) {
    std::vector<int> got = ex.map(pow_int, xs, ys, std::nullopt, chunk);
    std::vector<int> want;
    for (int i = 0; i < 10; ++i) want.push_back(pow_int(i, i));
    CHECK(got == want);
  }
  const auto shortest = ex.map(pow_int, xs, std::vector<int>{2, 2, 2});
  CHECK(shortest.size() == 3);
  CHECK(std::vector<int>(shortest) == std::vector<int>{0, 1, 4});
  std::vector<std::string> words;
  for (const auto& w : ex.map(spell, std::vector<int>{4, 5})) words.push_back(w);
  CHECK(words == std::vector<std::string>{"n4", "n5"});
  CHECK(std::vector<int>(ex.map(cube, std::vector<int>{})).empty());
}

TEST_CASE("Executor: map delivers results before a failing call, then raises its exception",
          "[futures]") {
  mpp::ProcessPoolExecutor ex(2);
  auto r = ex.map(divide, std::vector<int>{1, 6, 1, 1}, std::vector<int>{2, 3, 0, 5});
  auto it = r.begin();
  CHECK(*it == 0);
  ++it;
  CHECK(*it == 2);
  CHECK_THROWS_AS(++it, std::domain_error);
  CHECK(it == r.end());
}

TEST_CASE("Executor: map's timeout is measured from the call of map", "[futures]") {
  mpp::ProcessPoolExecutor ex(2);
  const auto t0 = std::chrono::steady_clock::now();
  auto r = ex.map(sleepy, std::vector<int>{0, 0, 4000}, 0.5);
  std::this_thread::sleep_for(300ms);  // counts against the timeout
  std::vector<int> got;
  CHECK_THROWS_AS(
      [&] {
        for (int x : r) got.push_back(x);
      }(),
      mpp::TimeoutError);
  CHECK(got == std::vector<int>{0, 0});
  const double took = since(t0);
  CHECK(took >= 0.45);
  CHECK(took < 2.5);
}

TEST_CASE("Executor: map with spawn and forkserver workers", "[futures][spawn]") {
  for (auto m : {mpp::StartMethod::spawn, mpp::StartMethod::forkserver}) {
    INFO("start method " << mpp::start_method_name(m));
    mpp::ProcessPoolExecutor ex(with_method(m));
    const std::vector<int> got =
        ex.map(pow_int, std::vector<int>{2, 3, 4}, std::vector<int>{3, 2, 1, 0}, 60s, 2);
    CHECK(got == std::vector<int>{8, 9, 4});
    auto r = ex.map(divide, std::vector<int>{4, 1}, std::vector<int>{2, 0});
    auto it = r.begin();
    CHECK(*it == 2);
    CHECK_THROWS_AS(++it, std::domain_error);
  }
}

// ---- void functions ---------------------------------------------------------------------------

TEST_CASE("Executor: a void function gives a Future<void> that rethrows", "[futures]") {
  mpp::ProcessPoolExecutor ex(2);
  mpp::Future<void> ok = ex.submit(do_nothing, 1);
  static_assert(std::is_void_v<decltype(ok.result())>);
  ok.result(30s);
  CHECK(ok.exception() == nullptr);
  mpp::Future<void> bad = ex.submit(void_reject, 4);
  CHECK_THROWS_WITH(bad.result(30s), "void x=4");
  CHECK_THROWS_AS(bad.result(), std::invalid_argument);
  int called = 0;
  bad.add_done_callback([&](const mpp::Future<void>& f) { called += f.done() ? 1 : 0; });
  CHECK(called == 1);
}

TEST_CASE("Executor: void functions with spawn and forkserver workers", "[futures][spawn]") {
  for (auto m : {mpp::StartMethod::spawn, mpp::StartMethod::forkserver}) {
    INFO("start method " << mpp::start_method_name(m));
    mpp::ProcessPoolExecutor ex(with_method(m));
    ex.submit(do_nothing, 1).result(60s);
    CHECK_THROWS_AS(ex.submit(void_reject, 2).result(60s), std::invalid_argument);
  }
}

// ---- arguments and shutdown -------------------------------------------------------------------

TEST_CASE("Executor: bad arguments are refused with ValueError, omitted ones take defaults",
          "[futures]") {
  CHECK_THROWS_AS(mpp::ProcessPoolExecutor(0), mpp::ValueError);
  CHECK_THROWS_AS(mpp::ProcessPoolExecutor(-1), mpp::ValueError);
  mpp::ExecutorOptions o;
  o.max_tasks_per_child = 0;
  CHECK_THROWS_AS(mpp::ProcessPoolExecutor(o), mpp::ValueError);
  o.max_tasks_per_child = -1;
  CHECK_THROWS_AS(mpp::ProcessPoolExecutor(o), mpp::ValueError);
  mpp::ProcessPoolExecutor ex;  // cpu_count() workers
  CHECK(ex.submit(cube, 2).result(30s) == 8);
  CHECK_THROWS_AS(ex.map(cube, std::vector<int>{1}, std::nullopt, 0), mpp::ValueError);
  CHECK_THROWS_AS(ex.map(cube, std::vector<int>{1}, std::nullopt, -1), mpp::ValueError);
  o.max_tasks_per_child = 1;
  o.max_workers = 1;
  mpp::ProcessPoolExecutor recycled(o);
  CHECK(recycled.submit(cube, 3).result(30s) == 27);
  CHECK(recycled.submit(cube, 4).result(30s) == 64);
}

TEST_CASE(
    "Executor: shutdown(cancel_futures) cancels only calls not started; submit and map "
    "after shutdown raise",
    "[futures][spawn]") {
  for (auto m : {mpp::StartMethod::fork, mpp::StartMethod::spawn}) {
    INFO("start method " << mpp::start_method_name(m));
    mpp::ProcessPoolExecutor ex(with_method(m));
    std::vector<mpp::Future<int>> started;
    for (int i = 0; i < 2; ++i) started.push_back(ex.submit(sleepy, 500));
    for (int i = 0; i < 1000 && !(started[0].running() && started[1].running()); ++i)
      std::this_thread::sleep_for(10ms);
    REQUIRE(started[0].running());
    REQUIRE(started[1].running());
    std::vector<mpp::Future<int>> queued;
    for (int i = 0; i < 8; ++i) queued.push_back(ex.submit(sleepy, 200));
    ex.shutdown(true, true);
    for (auto& f : started) CHECK(f.result() == 500);  // started calls finish
    int cancelled = 0;
    for (auto& f : queued) {
      CHECK(f.done());
      if (f.cancelled())
        ++cancelled;
      else
        CHECK(f.result() == 200);
    }
    CHECK(cancelled >= 4);
    CHECK_THROWS_WITH(ex.submit(cube, 1), "cannot schedule new futures after shutdown");
    CHECK_THROWS_WITH(ex.map(cube, std::vector<int>{1}),
                      "cannot schedule new futures after shutdown");
  }
}

TEST_CASE("Executor: a broken executor's messages name the executor", "[futures]") {
  const int rc = mpp_test::run_bounded(60s, [] {
    mpp::ProcessPoolExecutor ex(with_method(mpp::StartMethod::fork), failing_init, 9);
    try {
      (void)ex.submit(cube, 1).result(30s);
    } catch (const mpp::BrokenProcessPool& e) {
      const std::string what = e.what();
      return what.find("ProcessPoolExecutor") != what.npos ? 0 : 1;
    } catch (...) {
    }
    return 2;
  });
  CHECK(rc == 0);
}
