// Pool: map/imap/starmap/apply across real worker processes, exceptions, timeouts, recycling,
// and workers killed mid-task (WorkerLostError or retry, never a hang).
#include <mpp/pool.hpp>
#include <mpp/value.hpp>
#include <signal.h>
#include <unistd.h>

#include <numeric>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "helpers.hpp"

using namespace std::chrono_literals;

namespace {

int square(int x) { return x * x; }

struct CustomError : std::exception {
  const char* what() const noexcept override { return "custom failure"; }
};

int fail_on_three(int x) {
  if (x == 3) throw std::invalid_argument("three is not allowed");
  if (x == 4) throw CustomError();
  return x;
}

// Set before a Pool is created, so forked workers share it.
mpp::RawValue<int>* g_kills = nullptr;
mpp::RawValue<int>* g_initialised = nullptr;

// Kills its own worker the first time it sees 7.
int die_once_on_seven(int x) {
  if (x == 7 && g_kills->fetch_add(1) == 0) ::kill(::getpid(), SIGKILL);
  return x + 1;
}

int die_always_on_seven(int x) {
  if (x == 7) ::kill(::getpid(), SIGKILL);
  return x + 1;
}

int worker_pid(int) { return static_cast<int>(::getpid()); }

}  // namespace

TEST_CASE("map, starmap and apply compute in worker processes", "[pool]") {
  mpp::Pool pool(2);
  CHECK(pool.processes() == 2);
  CHECK(pool.map(square, std::vector<int>{1, 2, 3, 4}) == std::vector<int>{1, 4, 9, 16});
  CHECK(pool.map(square, std::vector<int>{}).empty());
  const int k = 10;  // captures that are trivially copyable travel with the lambda
  CHECK(pool.map([k](int x) { return x * k; }, std::vector<int>{1, 2}, 1) ==
        std::vector<int>{10, 20});
  // Strings in, vectors out.
  const auto lens = pool.map([](const std::string& s) { return std::vector<int>(s.size(), 1); },
                             std::vector<std::string>{"ab", "", "xyz"});
  CHECK(lens == std::vector<std::vector<int>>{{1, 1}, {}, {1, 1, 1}});
  const std::vector<std::pair<int, int>> pairs{{1, 2}, {3, 4}, {5, 6}};
  CHECK(pool.starmap([](int a, int b) { return a * b; }, pairs) == std::vector<int>{2, 12, 30});
  CHECK(pool.apply([](int a, int b) { return a + b; }, 2, 3) == 5);
  // The work really ran in other processes.
  const auto pids = pool.map(worker_pid, std::vector<int>(16, 0), 1);
  for (int p : pids) CHECK(p != ::getpid());
  pool.close();
  pool.join();
}

TEST_CASE("a million items map to the same results", "[pool]") {
  std::vector<std::int64_t> in(1'000'000);
  std::iota(in.begin(), in.end(), 0);
  mpp::Pool pool(2);
  const auto out = pool.map([](std::int64_t x) { return 3 * x + 1; }, in);
  REQUIRE(out.size() == in.size());
  bool all = true;
  for (std::size_t i = 0; i < in.size(); ++i) all = all && out[i] == 3 * in[i] + 1;
  CHECK(all);
}

TEST_CASE("apply_async, map_async and callbacks", "[pool]") {
  mpp::Pool pool(2);
  auto r = pool.apply_async(square, 9);
  CHECK(r.get(30s) == 81);
  CHECK(r.ready());
  CHECK(r.successful());

  std::atomic<int> got{0};
  std::atomic<bool> err{false};
  auto c = pool.apply_async(square, mpp::args(5), [&](const int& v) { got = v; },
                            [&](std::exception_ptr) { err = true; });
  CHECK(c.get() == 25);
  CHECK(got == 25);
  auto e = pool.apply_async(fail_on_three, mpp::args(3), [&](const int&) {},
                            [&](std::exception_ptr) { err = true; });
  CHECK(e.wait(30s));
  CHECK(err);
  CHECK_FALSE(e.successful());

  std::vector<int> seen;
  auto m = pool.map_async(square, std::vector<int>{1, 2, 3}, 0,
                          [&](const std::vector<int>& v) { seen = v; });
  CHECK(m.get() == std::vector<int>{1, 4, 9});
  CHECK(seen == std::vector<int>{1, 4, 9});

  // get(timeout) on a slow task: TimeoutError; successful() before ready: ValueError.
  auto slow = pool.apply_async([](int ms) {
    std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    return ms;
  }, 1500);
  CHECK_THROWS_AS(slow.get(50ms), mpp::TimeoutError);
  CHECK_THROWS_AS(slow.successful(), mpp::ValueError);
  CHECK(slow.get() == 1500);
}

TEST_CASE("imap keeps order, imap_unordered keeps everything", "[pool]") {
  mpp::Pool pool(2);
  std::vector<int> in(100);
  std::iota(in.begin(), in.end(), 0);
  std::vector<int> ordered;
  for (int v : pool.imap(square, in, 7)) ordered.push_back(v);
  std::vector<int> expect;
  for (int x : in) expect.push_back(x * x);
  CHECK(ordered == expect);
  std::multiset<int> unordered;
  for (int v : pool.imap_unordered(square, std::vector<int>(in), 3)) unordered.insert(v);
  CHECK(unordered == std::multiset<int>(expect.begin(), expect.end()));
  // An exception surfaces when its result is reached.
  auto it = pool.imap(fail_on_three, std::vector<int>{1, 2, 3});
  std::vector<int> before;
  CHECK_THROWS_AS([&] { for (int v : it) before.push_back(v); }(), std::invalid_argument);
  CHECK(before == std::vector<int>{1, 2});
}

TEST_CASE("worker exceptions come back typed", "[pool]") {
  mpp::Pool pool(2);
  CHECK_THROWS_AS(pool.map(fail_on_three, std::vector<int>{1, 2, 3}), std::invalid_argument);
  try {
    pool.apply(fail_on_three, 4);
    FAIL("no exception");
  } catch (const mpp::RemoteError& e) {
    CHECK(e.type_name().find("CustomError") != std::string::npos);
    CHECK(e.remote_message() == "custom failure");
  }
  // The pool still works afterwards.
  CHECK(pool.apply(square, 6) == 36);
}

TEST_CASE("initializer and maxtasksperchild", "[pool]") {
  mpp::RawValue<int> initialised(0);
  g_initialised = &initialised;
  mpp::PoolOptions o;
  o.processes = 2;
  o.maxtasksperchild = 2;
  mpp::Pool pool(o, [](int add) { g_initialised->fetch_add(add); }, 1);
  const auto pids = pool.map(worker_pid, std::vector<int>(12, 0), 1);
  // 12 tasks, at most 2 per worker process: at least 6 different workers ran them.
  CHECK(std::set<int>(pids.begin(), pids.end()).size() >= 6);
  pool.close();
  pool.join();
  CHECK(initialised.value() >= 6);  // every worker ran the initializer
}

TEST_CASE("close, join and terminate", "[pool]") {
  mpp::Pool pool(2);
  auto pending = pool.apply_async([](int ms) {
    std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    return 1;
  }, 200);
  CHECK_THROWS_AS(pool.join(), mpp::ValueError);
  pool.close();
  CHECK_THROWS_AS(pool.apply(square, 1), mpp::ValueError);
  pool.join();  // queued work finishes first
  CHECK(pending.get() == 1);

  mpp::Pool p2(2);
  auto never = p2.apply_async([](int s) {
    std::this_thread::sleep_for(std::chrono::seconds(s));
    return s;
  }, 60);
  std::this_thread::sleep_for(100ms);
  const auto t0 = std::chrono::steady_clock::now();
  p2.terminate();
  CHECK(mpp_test::seconds_since(t0) < 20.0);
  CHECK_THROWS_AS(never.get(), mpp::ProcessError);
}

TEST_CASE("a task over its timeout fails and the pool carries on", "[pool]") {
  mpp::PoolOptions o;
  o.processes = 2;
  o.task_timeout = 500ms;
  mpp::Pool pool(o);
  auto slow = pool.apply_async([](int s) {
    std::this_thread::sleep_for(std::chrono::seconds(s));
    return s;
  }, 60);
  CHECK_THROWS_AS(slow.get(30s), mpp::TimeoutError);
  CHECK(pool.map(square, std::vector<int>{1, 2, 3}) == std::vector<int>{1, 4, 9});
}

TEST_CASE("a killed worker fails its task with WorkerLostError, never a hang", "[pool][kill]") {
  mpp::RawValue<int> kills(0);
  g_kills = &kills;
  mpp::Pool pool(2);
  std::vector<int> in(20);
  std::iota(in.begin(), in.end(), 0);
  const auto t0 = std::chrono::steady_clock::now();
  CHECK_THROWS_AS(pool.map(die_always_on_seven, in, 2), mpp::WorkerLostError);
  CHECK(mpp_test::seconds_since(t0) < 30.0);
  // apply_async and imap see it too, and the replaced workers keep serving.
  CHECK_THROWS_AS(pool.apply_async(die_always_on_seven, 7).get(30s), mpp::WorkerLostError);
  CHECK_THROWS_AS([&] { for (int v : pool.imap(die_always_on_seven, in)) (void)v; }(),
                  mpp::WorkerLostError);
  CHECK(pool.map(square, std::vector<int>{2, 3}) == std::vector<int>{4, 9});
  CHECK(pool.processes() == 2);
}

TEST_CASE("with retries, a task whose worker died is run again", "[pool][kill]") {
  mpp::RawValue<int> kills(0);
  g_kills = &kills;
  mpp::PoolOptions o;
  o.processes = 2;
  o.retries = 1;
  mpp::Pool pool(o);
  std::vector<int> in(20);
  std::iota(in.begin(), in.end(), 0);
  const auto out = pool.map(die_once_on_seven, in, 3);
  std::vector<int> expect;
  for (int x : in) expect.push_back(x + 1);
  CHECK(out == expect);
  CHECK(kills.value() >= 1);
}

TEST_CASE("workers SIGKILLed from outside at random moments", "[pool][kill]") {
  mpp::Pool pool(2);
  std::vector<int> in(400);
  std::iota(in.begin(), in.end(), 0);
  for (int round = 0; round < 5; ++round) {
    auto r = pool.map_async(
        [](int x) {
          std::this_thread::sleep_for(std::chrono::microseconds(500));
          return x;
        },
        in, 10);
    const int victim = pool.apply(worker_pid, 0);
    std::this_thread::sleep_for(std::chrono::milliseconds(10 + 30 * round));
    ::kill(victim, SIGKILL);
    try {
      CHECK(r.get(60s) == in);  // the kill may have landed between tasks
    } catch (const mpp::WorkerLostError&) {
    }
  }
  CHECK(pool.map(square, std::vector<int>{5}) == std::vector<int>{25});
}
