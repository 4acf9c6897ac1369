// Pool: map/imap/starmap/apply across real worker processes, exceptions, timeouts, recycling,
// and workers killed mid-task (WorkerLostError or retry, never a hang).
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
#include <mpp/futures.hpp>
#include <mpp/pool.hpp>
#include <mpp/value.hpp>

#include <cstdio>
#include <cstdlib>

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
int worker_ppid(int) { return static_cast<int>(::getppid()); }
// Sleeps `ms`; returns {worker pid, start, end} (steady clock ns, the same in every process).
std::vector<std::int64_t> timed_sleep(int ms) {
  const auto now = [] {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
  };
  const std::int64_t start = now();
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  return {::getpid(), start, now()};
}

// For pools whose workers are spawned (a new run of this program): functions are registered by
// name, and state the workers share is opened by a name passed in the environment.
std::vector<int> ones(const std::string& s) { return std::vector<int>(s.size(), 1); }
int sleep_ms(int ms) {
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  return ms;
}
int not_registered(int x) { return x; }
int g_marker = 0;  // set by the initializer in each worker
void set_marker(int v) { g_marker = v; }
int read_marker(int) { return g_marker; }
constexpr const char* kKillsEnv = "MPP_TEST_POOL_KILLS";
int die_once_on_seven_named(int x) {
  if (x == 7) {
    auto kills = mpp::RawValue<int>::open(std::getenv(kKillsEnv));
    if (kills.fetch_add(1) == 0) ::kill(::getpid(), SIGKILL);
  }
  return x + 1;
}
const auto twice = [](int x) { return 2 * x; };
// A void function whose effect is seen: it adds x to the RawValue named by this variable.
constexpr const char* kSumEnv = "MPP_TEST_POOL_SUM";
void add_to_sum(int x) {
  if (x == 3) throw std::invalid_argument("void three");
  mpp::RawValue<int>::open(std::getenv(kSumEnv)).fetch_add(x);
}

// Initializers that fail; each run is counted in a RawValue named by this variable (spawned
// workers inherit the environment, forked ones too).
constexpr const char* kInitRunsEnv = "MPP_TEST_POOL_INIT_RUNS";
void count_init_run() {
  if (const char* n = std::getenv(kInitRunsEnv)) mpp::RawValue<int>::open(n).fetch_add(1);
}
void failing_init(int code) {
  count_init_run();
  throw std::runtime_error(fmt::format("init boom {}", code));
}
// Fails in the first worker only (a flaky initializer).
void flaky_init(int) {
  if (const char* n = std::getenv(kInitRunsEnv))
    if (mpp::RawValue<int>::open(n).fetch_add(1) == 0) throw std::runtime_error("flaky init");
}
void dying_init(int) {
  count_init_run();
  ::kill(::getpid(), SIGKILL);
}

/// Failed expectations of a scenario run in a child process, reported on stderr.
struct Expect {
  int failed = 0;
  void operator()(bool ok, std::string_view what) {
    if (!ok) {
      fmt::print(stderr, "scenario check failed: {}\n", what);
      ++failed;
    }
  }
};

/// Whether `e` is a BrokenProcessPool naming `text`, with a nested `Cause` naming it too.
template <class Cause>
bool broken_by(std::exception_ptr e, std::string_view text) {
  if (!e) return false;  // no exception at all
  try {
    std::rethrow_exception(e);
  } catch (const mpp::BrokenProcessPool& b) {
    if (std::string_view(b.what()).find(text) == std::string_view::npos) return false;
    try {
      std::rethrow_if_nested(b);
    } catch (const Cause& c) {
      return std::string_view(c.what()).find(text) != std::string_view::npos;
    } catch (...) {
      return false;
    }
    return false;  // nothing nested
  } catch (...) {
    return false;
  }
}

template <class F>
std::exception_ptr error_of(F&& call) {
  try {
    call();
  } catch (...) {
    return std::current_exception();
  }
  return nullptr;
}

/// Names this process has in /dev/shm (the pool's queues, status array and arena).
std::set<std::string> my_shm_names() {
  std::set<std::string> out;
  const std::string prefix = fmt::format("mpp.anon.{}.", ::getpid());
  if (DIR* d = ::opendir("/dev/shm")) {
    while (const dirent* e = ::readdir(d))
      if (std::string_view(e->d_name).starts_with(prefix)) out.insert(e->d_name);
    ::closedir(d);
  }
  return out;
}

mpp::PoolOptions with_method(mpp::StartMethod m, int processes = 2) {
  mpp::PoolOptions o;
  o.processes = processes;
  o.start_method = m;
  return o;
}

}  // namespace

MPP_REGISTER(square);
MPP_REGISTER(fail_on_three);
MPP_REGISTER(die_always_on_seven);
MPP_REGISTER(worker_pid);
MPP_REGISTER(worker_ppid);
MPP_REGISTER(timed_sleep);
MPP_REGISTER(ones);
MPP_REGISTER(sleep_ms);
MPP_REGISTER(set_marker);
MPP_REGISTER(read_marker);
MPP_REGISTER(die_once_on_seven_named);
MPP_REGISTER_AS("twice", twice);
MPP_REGISTER(failing_init);
MPP_REGISTER(dying_init);
MPP_REGISTER(flaky_init);
MPP_REGISTER(add_to_sum);

TEST_CASE("Pool: map, starmap and apply compute in worker processes", "[pool]") {
  mpp::Pool pool(2);
  CHECK(pool.processes() == 2);
  CHECK(pool.map(square, std::vector<int>{1, 2, 3, 4}) == std::vector<int>{1, 4, 9, 16});
  CHECK(pool.map(square, std::vector<int>{}).empty());
  int k = 10;  // captures that are trivially copyable travel with the lambda
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

TEST_CASE("Pool: a million items map to the same results", "[pool]") {
  std::vector<std::int64_t> in(1'000'000);
  std::iota(in.begin(), in.end(), 0);
  mpp::Pool pool(2);
  const auto out = pool.map([](std::int64_t x) { return 3 * x + 1; }, in);
  REQUIRE(out.size() == in.size());
  bool all = true;
  for (std::size_t i = 0; i < in.size(); ++i) all = all && out[i] == 3 * in[i] + 1;
  CHECK(all);
}

TEST_CASE("Pool: apply_async, map_async and callbacks", "[pool]") {
  mpp::Pool pool(2);
  auto r = pool.apply_async(square, 9);
  CHECK(r.get(30s) == 81);
  CHECK(r.ready());
  CHECK(r.successful());

  std::atomic<int> got{0};
  std::atomic<bool> err{false};
  auto c = pool.apply_async(
      square, mpp::args(5), [&](const int& v) { got = v; },
      [&](std::exception_ptr) { err = true; });
  CHECK(c.get() == 25);
  CHECK(got == 25);
  auto e = pool.apply_async(
      fail_on_three, mpp::args(3), [&](const int&) {}, [&](std::exception_ptr) { err = true; });
  CHECK(e.wait(30s));
  CHECK(err);
  CHECK_FALSE(e.successful());

  std::vector<int> seen;
  auto m = pool.map_async(square, std::vector<int>{1, 2, 3}, std::nullopt,
                          [&](const std::vector<int>& v) { seen = v; });
  CHECK(m.get() == std::vector<int>{1, 4, 9});
  CHECK(seen == std::vector<int>{1, 4, 9});

  // get(timeout) on a slow task: TimeoutError; successful() before ready: ValueError.
  auto slow = pool.apply_async(
      [](int ms) {
        std::this_thread::sleep_for(std::chrono::milliseconds(ms));
        return ms;
      },
      1500);
  CHECK_THROWS_AS(slow.get(50ms), mpp::TimeoutError);
  CHECK_THROWS_AS(slow.successful(), mpp::ValueError);
  CHECK(slow.get() == 1500);
}

TEST_CASE("Pool: imap keeps order, imap_unordered keeps everything", "[pool]") {
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
  CHECK_THROWS_AS(
      [&] {
        for (int v : it) before.push_back(v);
      }(),
      std::invalid_argument);
  CHECK(before == std::vector<int>{1, 2});
}

/// A std:: exception comes back as itself, another one as RemoteError with its type and message.
static void check_typed_exceptions(mpp::Pool& pool) {
  CHECK_THROWS_AS(pool.map(fail_on_three, std::vector<int>{1, 2, 3}), std::invalid_argument);
  try {
    pool.apply(fail_on_three, 4);
    FAIL("no exception");
  } catch (const mpp::RemoteError& e) {
    CHECK(e.type_name().find("CustomError") != std::string::npos);
    CHECK(e.remote_message() == "custom failure");
  }
}

TEST_CASE("Pool: worker exceptions come back typed", "[pool]") {
  mpp::Pool pool(2);
  check_typed_exceptions(pool);
  // The pool still works afterwards.
  CHECK(pool.apply(square, 6) == 36);
}

TEST_CASE("Pool: initializer and maxtasksperchild", "[pool]") {
  mpp::RawValue<int> initialised(0);
  g_initialised = &initialised;
  mpp::PoolOptions o;
  o.processes = 2;
  o.maxtasksperchild = 2;
  mpp::Pool pool(
      o, [](int add) { g_initialised->fetch_add(add); }, 1);
  const auto pids = pool.map(worker_pid, std::vector<int>(12, 0), 1);
  // 12 tasks, at most 2 per worker process: at least 6 different workers ran them.
  CHECK(std::set<int>(pids.begin(), pids.end()).size() >= 6);
  pool.close();
  pool.join();
  CHECK(initialised.value() >= 6);  // every worker ran the initializer
}

TEST_CASE("Pool: a worker retiring at maxtasksperchild does not make its tasks run twice",
          "[pool]") {
  mpp::RawValue<int> runs(0);
  g_kills = &runs;  // counts executions here
  mpp::PoolOptions o;
  o.processes = 2;
  o.maxtasksperchild = 1;
  mpp::Pool pool(o);
  std::vector<int> in(24);
  std::iota(in.begin(), in.end(), 0);
  const auto out = pool.map([](int x) { return g_kills->fetch_add(1) >= 0 ? x : -1; }, in, 1);
  CHECK(out == in);
  CHECK(runs.value() == 24);
}

TEST_CASE("Pool: close, join and terminate", "[pool]") {
  mpp::Pool pool(2);
  auto pending = pool.apply_async(
      [](int ms) {
        std::this_thread::sleep_for(std::chrono::milliseconds(ms));
        return 1;
      },
      200);
  CHECK_THROWS_AS(pool.join(), mpp::ValueError);
  pool.close();
  CHECK_THROWS_AS(pool.apply(square, 1), mpp::ValueError);
  pool.join();  // queued work finishes first
  CHECK(pending.get() == 1);

  mpp::Pool p2(2);
  auto never = p2.apply_async(
      [](int s) {
        std::this_thread::sleep_for(std::chrono::seconds(s));
        return s;
      },
      60);
  std::this_thread::sleep_for(100ms);
  const auto t0 = std::chrono::steady_clock::now();
  p2.terminate();
  CHECK(mpp_test::seconds_since(t0) < 20.0);
  CHECK_THROWS_AS(never.get(), mpp::ProcessError);
}

TEST_CASE("Pool: a task over its timeout fails and the pool carries on", "[pool]") {
  mpp::PoolOptions o;
  o.processes = 2;
  o.task_timeout = 500ms;
  mpp::Pool pool(o);
  auto slow = pool.apply_async(
      [](int s) {
        std::this_thread::sleep_for(std::chrono::seconds(s));
        return s;
      },
      60);
  CHECK_THROWS_AS(slow.get(30s), mpp::TimeoutError);
  CHECK(pool.map(square, std::vector<int>{1, 2, 3}) == std::vector<int>{1, 4, 9});
}

TEST_CASE("Pool: a killed worker fails its task with WorkerLostError, never a hang",
          "[pool][kill]") {
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
  CHECK_THROWS_AS(
      [&] {
        for (int v : pool.imap(die_always_on_seven, in)) (void)v;
      }(),
      mpp::WorkerLostError);
  CHECK(pool.map(square, std::vector<int>{2, 3}) == std::vector<int>{4, 9});
  CHECK(pool.processes() == 2);
}

TEST_CASE("Pool: with retries, a task whose worker died is run again", "[pool][kill]") {
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

TEST_CASE("Pool: workers SIGKILLed from outside at random moments", "[pool][kill]") {
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
      const auto got = r.get(60s);
      CHECK(got == in);  // the kill may have landed between tasks
    } catch (const mpp::WorkerLostError&) {
    }
  }
  CHECK(pool.map(square, std::vector<int>{5}) == std::vector<int>{25});
}

// ---- spawn and forkserver pools: workers are new runs of this program -----------------------

TEST_CASE("Pool: spawn and forkserver pools run registered functions", "[pool][spawn]") {
  const auto before = my_shm_names();
  for (auto m : {mpp::StartMethod::spawn, mpp::StartMethod::forkserver}) {
    INFO("start method " << mpp::start_method_name(m));
    {
      mpp::Pool pool(with_method(m));
      CHECK(pool.start_method() == m);
      std::vector<int> in(1000);
      std::iota(in.begin(), in.end(), 0);
      const auto out = pool.map(square, in);  // the raw path, through the arena opened by name
      bool all = out.size() == in.size();
      for (std::size_t i = 0; all && i < in.size(); ++i) all = out[i] == in[i] * in[i];
      CHECK(all);
      std::vector<int> big(300'000);  // regions of several MiB, allocated in one call
      for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<int>(i % 1000);
      const auto big_out = pool.map(square, big);
      all = big_out.size() == big.size();
      for (std::size_t i = 0; all && i < big.size(); ++i) all = big_out[i] == big[i] * big[i];
      CHECK(all);
      CHECK(pool.map(twice, std::vector<int>{1, 2, 3}, 1) == std::vector<int>{2, 4, 6});
      CHECK(pool.map(ones, std::vector<std::string>{"ab", "", "xyz"}) ==
            std::vector<std::vector<int>>{{1, 1}, {}, {1, 1, 1}});
      CHECK(pool.apply_async(square, 9).get(30s) == 81);
      std::vector<int> order;
      for (int v : pool.imap(square, std::vector<int>{1, 2, 3})) order.push_back(v);
      CHECK(order == std::vector<int>{1, 4, 9});
      for (int p : pool.map(worker_pid, std::vector<int>(4, 0), 1)) CHECK(p != ::getpid());
      // Exceptions come back typed.
      check_typed_exceptions(pool);
      // Only registered functions: anything else is refused before it is sent.
      CHECK_THROWS_AS(pool.map(not_registered, std::vector<int>{1}), mpp::InvalidArgument);
      CHECK_THROWS_AS(pool.apply([](int x) { return x; }, 1), mpp::InvalidArgument);
      int k = 3;
      try {
        pool.map([k](int x) { return x * k; }, std::vector<int>{1});
        FAIL("no exception");
      } catch (const mpp::InvalidArgument& e) {
        CHECK(std::string(e.what()).find("MPP_REGISTER") != std::string::npos);
      }
      CHECK(pool.apply(square, 7) == 49);  // still serving
      pool.close();
      pool.join();
    }
    CHECK(my_shm_names() == before);  // queues, status array and arena are unlinked
  }
}

TEST_CASE("Pool: spawn pools, initializer, maxtasksperchild and task timeout", "[pool][spawn]") {
  auto o = with_method(mpp::StartMethod::spawn);
  o.maxtasksperchild = 2;
  {
    mpp::Pool pool(o, set_marker, 42);
    const auto marks = pool.map(read_marker, std::vector<int>(8, 0), 1);
    CHECK(marks == std::vector<int>(8, 42));  // every worker (replacements too) ran it
    const auto pids = pool.map(worker_pid, std::vector<int>(8, 0), 1);
    CHECK(std::set<int>(pids.begin(), pids.end()).size() >= 4);
  }
  auto t = with_method(mpp::StartMethod::forkserver);
  t.task_timeout = 500ms;
  mpp::Pool pool(t);
  CHECK_THROWS_AS(pool.apply_async(sleep_ms, 60000).get(30s), mpp::TimeoutError);
  CHECK(pool.map(square, std::vector<int>{1, 2, 3}) == std::vector<int>{1, 4, 9});
  // An unregistered initializer is refused at once.
  CHECK_THROWS_AS(mpp::Pool(with_method(mpp::StartMethod::spawn), not_registered, 1),
                  mpp::InvalidArgument);
}

TEST_CASE("Pool: a spawn pool whose workers cannot start fails cleanly", "[pool][spawn]") {
  const auto before = my_shm_names();
  mpp::set_executable("/nonexistent/mpp-test-program");
  try {
    mpp::Pool pool(with_method(mpp::StartMethod::spawn));
    FAIL("no exception");
  } catch (const mpp::Error& e) {
    INFO(e.what());
    CHECK(std::string(e.what()).find("mpp-test-program") != std::string::npos);
  }
  mpp::set_executable("");
  CHECK(my_shm_names() == before);
  CHECK(mpp::active_children().empty());
}

TEST_CASE("Pool: spawn and forkserver pools: a killed worker fails its task, never a hang",
          "[pool][spawn][kill]") {
  for (auto m : {mpp::StartMethod::spawn, mpp::StartMethod::forkserver}) {
    INFO("start method " << mpp::start_method_name(m));
    mpp::Pool pool(with_method(m));
    std::vector<int> in(20);
    std::iota(in.begin(), in.end(), 0);
    const auto t0 = std::chrono::steady_clock::now();
    CHECK_THROWS_AS(pool.map(die_always_on_seven, in, 2), mpp::WorkerLostError);
    CHECK_THROWS_AS(pool.apply_async(die_always_on_seven, 7).get(30s), mpp::WorkerLostError);
    CHECK(mpp_test::seconds_since(t0) < 30.0);
    // Killed from outside while busy: the map completes (the kill landed between tasks, or its
    // task failed).
    const int victim = pool.apply(worker_pid, 0);
    auto r = pool.map_async(sleep_ms, std::vector<int>(40, 5), 2);
    std::this_thread::sleep_for(30ms);
    ::kill(victim, SIGKILL);
    try {
      const auto got = r.get(60s);
      CHECK(got == std::vector<int>(40, 5));
    } catch (const mpp::WorkerLostError&) {
    }
    CHECK(pool.map(square, std::vector<int>{2, 3}) == std::vector<int>{4, 9});
  }
  // With retries, the task runs again in a new worker.
  mpp::RawValue<int> kills(0);
  ::setenv(kKillsEnv, kills.name().c_str(), 1);  // spawned workers inherit the environment
  auto o = with_method(mpp::StartMethod::spawn);
  o.retries = 1;
  mpp::Pool pool(o);
  std::vector<int> in(20), expect;
  std::iota(in.begin(), in.end(), 0);
  for (int x : in) expect.push_back(x + 1);
  CHECK(pool.map(die_once_on_seven_named, in, 3) == expect);
  CHECK(kills.value() >= 1);
  ::unsetenv(kKillsEnv);
}

// ---- a failing initializer breaks the pool (Python's BrokenProcessPool) ----------------------

TEST_CASE(
    "Pool: a Pool whose initializer throws is broken: calls fail, nothing respawns, nothing hangs",
    "[pool][spawn]") {
  for (auto m : {mpp::StartMethod::fork, mpp::StartMethod::spawn}) {
    INFO("start method " << mpp::start_method_name(m));
    const int rc = mpp_test::run_bounded(60s, [m] {
      Expect expect;
      mpp::RawValue<int> runs(0);
      ::setenv(kInitRunsEnv, runs.name().c_str(), 1);
      {
        mpp::Pool pool(with_method(m, 2), failing_init, 7);
        // Submitted before the break is seen: get() raises; after: apply_async() does.
        const auto e = error_of([&] { (void)pool.apply_async(square, 3).get(30s); });
        expect(broken_by<std::runtime_error>(e, "init boom 7"),
               "get() raises BrokenProcessPool nesting the initializer's runtime_error");
        try {
          std::rethrow_exception(e);
        } catch (const std::exception& b) {
          expect(std::string_view(b.what()).find("std::runtime_error") != std::string::npos,
                 "the message names the initializer's exception type");
        }
        // Later calls raise it at once: apply, map (raw and encoded), imap.
        expect(broken_by<std::runtime_error>(error_of([&] { (void)pool.apply(square, 1); }),
                                             "init boom 7"),
               "apply() after the break raises BrokenProcessPool");
        expect(broken_by<std::runtime_error>(error_of([&] {
                                               (void)pool.map(square, std::vector<int>{1, 2});
                                             }),
                                             "init boom 7"),
               "map() after the break raises BrokenProcessPool");
        expect(broken_by<std::runtime_error>(
                   error_of([&] { (void)pool.map(ones, std::vector<std::string>{"a"}); }),
                   "init boom 7"),
               "map() of encoded items after the break raises BrokenProcessPool");
        expect(broken_by<std::runtime_error>(error_of([&] {
                                               for (int v : pool.imap(square, std::vector<int>{1}))
                                                 (void)v;
                                             }),
                                             "init boom 7"),
               "imap() after the break raises BrokenProcessPool");
        std::this_thread::sleep_for(300ms);  // time for (wrong) respawns to show
        expect(
            runs.value() >= 1 && runs.value() <= 2,
            fmt::format("the initializer ran once per worker, not again ({} runs)", runs.value()));
        pool.close();
        pool.join();  // returns
      }
      // The destructor of a broken pool that was not closed returns too.
      { mpp::Pool pool(with_method(m, 2), failing_init, 8); }
      expect(runs.value() <= 4, fmt::format("{} initializer runs in all", runs.value()));
      ::unsetenv(kInitRunsEnv);
      return expect.failed;
    });
    CHECK(rc == 0);
  }
}

TEST_CASE("Pool: a Pool whose initializer kills its worker is broken too", "[pool][kill]") {
  const int rc = mpp_test::run_bounded(60s, [] {
    Expect expect;
    mpp::RawValue<int> runs(0);
    ::setenv(kInitRunsEnv, runs.name().c_str(), 1);
    mpp::Pool pool(with_method(mpp::StartMethod::fork, 2), dying_init, 0);
    const auto e = error_of([&] { (void)pool.apply_async(square, 3).get(30s); });
    expect(broken_by<mpp::WorkerLostError>(e, "initializer"),
           "get() raises BrokenProcessPool nesting a WorkerLostError");
    expect(broken_by<mpp::WorkerLostError>(error_of([&] { (void)pool.apply(square, 1); }),
                                           "initializer"),
           "apply() after the break raises BrokenProcessPool");
    std::this_thread::sleep_for(300ms);
    expect(runs.value() >= 1 && runs.value() <= 2,
           fmt::format("the initializer ran at most once per worker ({} runs)", runs.value()));
    pool.terminate();
    ::unsetenv(kInitRunsEnv);
    return expect.failed;
  });
  CHECK(rc == 0);
}

TEST_CASE("Pool: one failure of a flaky initializer breaks the pool; no worker is retried",
          "[pool]") {
  const int rc = mpp_test::run_bounded(60s, [] {
    Expect expect;
    mpp::RawValue<int> runs(0);
    ::setenv(kInitRunsEnv, runs.name().c_str(), 1);
    mpp::Pool pool(with_method(mpp::StartMethod::fork, 1), flaky_init, 0);
    expect(broken_by<std::runtime_error>(
               error_of([&] { (void)pool.apply_async(square, 3).get(30s); }), "flaky init"),
           "the call fails with BrokenProcessPool although a new worker would initialise");
    expect(
        broken_by<std::runtime_error>(error_of([&] { (void)pool.apply(square, 2); }), "flaky init"),
        "later calls raise it too");
    std::this_thread::sleep_for(200ms);
    expect(runs.value() == 1, fmt::format("one initializer run ({})", runs.value()));
    ::unsetenv(kInitRunsEnv);
    return expect.failed;
  });
  CHECK(rc == 0);
}

// ---- many workers (each is a user of the pool's shared queues, status array and arena) ----------

namespace {
// map(square) over n items on `pool`, one item per task: every result is checked.
bool squares_right(mpp::Pool& pool, int n) {
  std::vector<int> in(static_cast<std::size_t>(n));
  std::iota(in.begin(), in.end(), 0);
  const auto out = pool.map(square, in, 1);
  bool all = out.size() == in.size();
  for (std::size_t i = 0; all && i < in.size(); ++i) all = out[i] == in[i] * in[i];
  return all;
}
}  // namespace

TEST_CASE("Pool: Pool(200): more workers than the old 128 users per object", "[pool][users]") {
  const auto before = my_shm_names();
  {
    mpp::Pool pool(200);
    REQUIRE(pool.processes() == 200);
    CHECK(squares_right(pool, 1000));
    const auto pids = pool.map(worker_pid, std::vector<int>(400, 0), 1);
    CHECK(std::set<int>(pids.begin(), pids.end()).size() > 1);
    pool.close();
    pool.join();
  }
  CHECK(my_shm_names() == before);
}

TEST_CASE("Pool: a Pool larger than its queues admit is refused at once", "[pool][users]") {
  CHECK_THROWS_AS(mpp::Pool(mpp::Pool::kMaxProcesses + 1), mpp::ValueError);
  CHECK(mpp::active_children().empty());
}

TEST_CASE("Pool: Pool(1024): a trivial map over 2048 items with every result right",
          "[pool][users][stress]") {
  const auto t0 = std::chrono::steady_clock::now();
  {
    mpp::Pool pool(1024);
    REQUIRE(pool.processes() == 1024);
    CHECK(squares_right(pool, 2048));
    pool.close();
    pool.join();
  }
  WARN("Pool(1024): " << mpp_test::seconds_since(t0) << " s");
}

TEST_CASE("Pool: spawn Pool(200): every worker starts and serves", "[pool][users][spawn]") {
  // A worker that fails reports it on stderr (and is replaced): catch what the workers print.
  const std::string path = fmt::format("/tmp/mpp-test-{}-stderr", ::getpid());
  std::fflush(stderr);
  const int saved = ::dup(2);
  const int fd = ::open(path.c_str(), O_CREAT | O_TRUNC | O_WRONLY, 0600);
  REQUIRE(fd >= 0);
  ::dup2(fd, 2);
  ::close(fd);
  bool right = false;
  {
    mpp::Pool pool(with_method(mpp::StartMethod::spawn, 200));
    right = pool.processes() == 200 && squares_right(pool, 1000);
    pool.close();
    pool.join();
  }
  std::fflush(stderr);
  ::dup2(saved, 2);
  ::close(saved);
  std::string printed;
  if (std::FILE* f = std::fopen(path.c_str(), "r")) {
    char buf[4096];
    for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0;) printed.append(buf, n);
    std::fclose(f);
  }
  std::remove(path.c_str());
  INFO(printed.substr(0, 2000));
  CHECK(right);
  CHECK(printed.find("PoolWorker") == std::string::npos);  // no worker died
}

// ---- void functions and argument checks ------------------------------------------------------

TEST_CASE("Pool: void functions give AsyncResult<void> and map returns nothing; errors propagate",
          "[pool][spawn]") {
  for (auto m : {mpp::StartMethod::fork, mpp::StartMethod::spawn}) {
    INFO("start method " << mpp::start_method_name(m));
    mpp::RawValue<int> sum(0);
    ::setenv(kSumEnv, sum.name().c_str(), 1);
    {
      mpp::Pool pool(with_method(m));
      mpp::AsyncResult<void> r = pool.apply_async(add_to_sum, 5);
      static_assert(std::is_void_v<decltype(r.get())>);
      r.get(60s);
      CHECK(r.successful());
      CHECK(sum.value() == 5);
      pool.apply(add_to_sum, 1);
      CHECK(sum.value() == 6);
      CHECK_THROWS_WITH(pool.apply_async(add_to_sum, 3).get(60s), "void three");
      static_assert(std::is_void_v<decltype(pool.map(add_to_sum, std::vector<int>{}))>);
      pool.map(add_to_sum, std::vector<int>{1, 2, 4}, 1);
      CHECK(sum.value() == 13);
      CHECK_THROWS_AS(pool.map(add_to_sum, std::vector<int>{1, 3, 4}), std::invalid_argument);
      std::atomic<bool> called{false};
      mpp::AsyncResult<void> m2 =
          pool.map_async(add_to_sum, std::vector<int>{10, 20}, 1, [&] { called = true; });
      m2.get(60s);
      CHECK(called);
      std::atomic<bool> applied{false}, failed{false};
      auto c = pool.apply_async(
          add_to_sum, mpp::args(3), [&] { applied = true; },
          [&](std::exception_ptr) { failed = true; });
      CHECK_THROWS_AS(c.get(60s), std::invalid_argument);
      CHECK(failed);
      CHECK_FALSE(applied);
      pool.starmap(add_to_sum, std::vector<std::tuple<int>>{{100}});
      CHECK(sum.value() >= 143);  // 13 + 30 + 100, plus what the failed map added before its 3
    }
    ::unsetenv(kSumEnv);
  }
}

TEST_CASE("Pool: bad arguments are refused with ValueError, omitted ones take defaults", "[pool]") {
  CHECK_THROWS_AS(mpp::Pool(0), mpp::ValueError);
  CHECK_THROWS_AS(mpp::Pool(-1), mpp::ValueError);
  mpp::PoolOptions o;
  o.processes = 0;
  CHECK_THROWS_AS(mpp::Pool(o), mpp::ValueError);
  o.processes = 1;
  o.maxtasksperchild = 0;
  CHECK_THROWS_AS(mpp::Pool(o), mpp::ValueError);
  o.maxtasksperchild = -1;  // used to wrap to 4294967295
  CHECK_THROWS_AS(mpp::Pool(o), mpp::ValueError);
  mpp::Pool pool;  // cpu_count() workers
  CHECK(pool.processes() == std::max(1, mpp::cpu_count()));
  const std::vector<int> in{1, 2, 3};
  CHECK_THROWS_AS(pool.map(square, in, 0), mpp::ValueError);
  CHECK_THROWS_AS(pool.map(square, in, -1), mpp::ValueError);
  CHECK_THROWS_AS(pool.map_async(square, in, 0), mpp::ValueError);
  CHECK_THROWS_AS(pool.starmap(square, std::vector<std::tuple<int>>{{1}}, 0), mpp::ValueError);
  CHECK_THROWS_AS(pool.imap(square, in, 0), mpp::ValueError);
  CHECK_THROWS_AS(pool.imap_unordered(square, in, -2), mpp::ValueError);
  CHECK(pool.map(square, in) == std::vector<int>{1, 4, 9});  // omitted: Python's chunksize
  CHECK(pool.map(square, in, std::nullopt) == std::vector<int>{1, 4, 9});
}

// ---- scheduling and worker lifecycle ----------------------------------------------------------

TEST_CASE("Pool: a short task never waits behind a long one while a worker is idle",
          "[pool][spawn]") {
  for (auto m : {mpp::StartMethod::fork, mpp::StartMethod::spawn}) {
    INFO("start method " << mpp::start_method_name(m));
    mpp::Pool pool(with_method(m));
    // Both workers up and idle (each of the two tasks goes to an idle worker).
    const auto up = pool.map(timed_sleep, std::vector<int>{50, 50}, 1);
    REQUIRE(up[0][0] != up[1][0]);
    auto long_task = pool.apply_async(timed_sleep, 300);
    auto short_task = pool.apply_async(timed_sleep, 50);
    auto middle_task = pool.apply_async(timed_sleep, 150);
    const auto l = long_task.get(30s), s = short_task.get(30s), mid = middle_task.get(30s);
    CHECK(s[0] != l[0]);    // the two workers run the first two tasks
    CHECK(s[2] < l[2]);     // the short task finishes while the long one runs
    CHECK(mid[0] == s[0]);  // the third runs on the worker the short task freed...
    CHECK(mid[1] >= s[2]);
    CHECK(mid[1] < l[2]);  // ...at once, not queued behind the long task
  }
}

TEST_CASE("Pool: a map of tiny tasks still gives every worker work (prefetch while all are busy)",
          "[pool]") {
  mpp::Pool pool(2);
  std::vector<int> in(2000);
  std::iota(in.begin(), in.end(), 0);
  const auto pids = pool.map(worker_pid, in, 1);
  CHECK(pids.size() == in.size());
  CHECK(std::set<int>(pids.begin(), pids.end()).size() == 2);
  std::vector<std::int64_t> big(100'000);
  std::iota(big.begin(), big.end(), 0);
  const auto sq = pool.map([](std::int64_t x) { return x * x; }, big);
  bool all = sq.size() == big.size();
  for (std::size_t i = 0; all && i < big.size(); ++i) all = sq[i] == big[i] * big[i];
  CHECK(all);
}

TEST_CASE("Executor: spawn and forkserver workers start on demand and idle ones are reused",
          "[pool][spawn]") {
  for (auto m : {mpp::StartMethod::spawn, mpp::StartMethod::forkserver}) {
    INFO("start method " << mpp::start_method_name(m));
    mpp::ExecutorOptions o;
    o.max_workers = 4;
    o.start_method = m;
    mpp::ProcessPoolExecutor ex(o);
    CHECK(mpp::active_children().empty());  // nothing started before a call needs it
    std::set<int> pids;
    for (int i = 0; i < 3; ++i) pids.insert(ex.submit(worker_pid, 0).result(30s));
    CHECK(pids.size() == 1);  // one worker served the three sequential calls
    CHECK(mpp::active_children().size() == 1);
    // Concurrent calls start more workers, up to max_workers.
    std::vector<mpp::Future<std::vector<std::int64_t>>> fs;
    for (int i = 0; i < 4; ++i) fs.push_back(ex.submit(timed_sleep, 300));
    std::set<std::int64_t> busy;
    for (auto& f : fs) busy.insert(f.result(30s)[0]);
    CHECK(busy.size() >= 2);
    CHECK(mpp::active_children().size() <= 4);
  }
  // Fork workers all start with the executor (Python: no on-demand start with fork).
  mpp::ExecutorOptions f;
  f.max_workers = 2;
  f.start_method = mpp::StartMethod::fork;
  mpp::ProcessPoolExecutor forked(f);
  CHECK(mpp::active_children().size() == 3);  // and the zygote that forks replacements
  CHECK(forked.submit(square, 3).result(30s) == 9);
}

TEST_CASE("Executor: max_tasks_per_child refuses fork, defaults to spawn and recycles workers",
          "[pool][spawn]") {
  mpp::ExecutorOptions o;
  o.max_workers = 1;
  o.max_tasks_per_child = 3;
  o.start_method = mpp::StartMethod::fork;
  try {
    mpp::ProcessPoolExecutor ex(o);
    FAIL("no exception");
  } catch (const mpp::ValueError& e) {
    CHECK(std::string(e.what()).find("fork") != std::string::npos);
  }
  // No start method: spawn (a spawned worker does not see what this process set before).
  o.start_method = std::nullopt;
  g_marker = 7;
  {
    mpp::ProcessPoolExecutor ex(o);
    CHECK(ex.submit(read_marker, 0).result(30s) == 0);
  }
  g_marker = 0;
  // Python's test_max_tasks_per_child: the worker is reused until its third call, then replaced.
  for (auto m : {mpp::StartMethod::spawn, mpp::StartMethod::forkserver}) {
    INFO("start method " << mpp::start_method_name(m));
    o.start_method = m;
    mpp::ProcessPoolExecutor ex(o);
    const int first = ex.submit(worker_pid, 0).result(30s);
    CHECK(ex.submit(worker_pid, 0).result(30s) == first);
    CHECK(ex.submit(worker_pid, 0).result(30s) == first);
    CHECK(ex.submit(worker_pid, 0).result(30s) != first);
  }
  // Python's test_max_tasks_early_shutdown: every call completes though workers retire.
  o.max_workers = 3;
  o.max_tasks_per_child = 1;
  o.start_method = std::nullopt;
  std::vector<mpp::Future<int>> fs;
  {
    mpp::ProcessPoolExecutor ex(o);
    for (int i = 0; i < 6; ++i) fs.push_back(ex.submit(square, i));
    ex.shutdown();
  }
  for (int i = 0; i < 6; ++i) CHECK(fs[static_cast<std::size_t>(i)].result(30s) == i * i);
}

TEST_CASE("Pool: a fork pool's replacement workers are forked by its zygote, not by the pool",
          "[pool]") {
  auto o = with_method(mpp::StartMethod::fork);
  o.maxtasksperchild = 1;
  int zygote = 0;
  {
    mpp::Pool pool(o);
    const auto ppids = pool.map(worker_ppid, std::vector<int>(20, 0), 1);
    int from_pool = 0;
    std::set<int> others;
    for (int p : ppids) {
      if (p == ::getpid())
        ++from_pool;
      else
        others.insert(p);
    }
    CHECK(from_pool <= 2);        // the two workers started with the pool
    REQUIRE(others.size() == 1);  // one process forked all 18 or more replacements...
    zygote = *others.begin();
    std::set<int> children;
    for (auto& c : mpp::active_children()) children.insert(c.pid().value_or(0));
    CHECK(children.count(zygote) == 1);  // ...a child of the pool's process
    std::vector<int> in(20);
    std::iota(in.begin(), in.end(), 0);
    std::vector<int> want(in.size());
    for (std::size_t i = 0; i < in.size(); ++i) want[i] = in[i] * in[i];
    CHECK(pool.map(square, in, 1) == want);  // replacements serve
    CHECK(pool.apply(worker_ppid, 0) == zygote);
  }
  CHECK_FALSE(mpp::detail::ProcessRef{zygote, 0}.alive());  // it ended with the pool
}

TEST_CASE("Pool: the zygote of a fork pool ends when the pool's process dies", "[pool][kill]") {
  mpp::RawValue<int> zygote(0);
  const int rc = mpp_test::run_bounded(60s, [&zygote] {
    auto o = with_method(mpp::StartMethod::fork);
    o.maxtasksperchild = 1;
    mpp::Pool pool(o);
    for (int p : pool.map(worker_ppid, std::vector<int>(6, 0), 1))
      if (p != ::getpid()) zygote.store(p);
    ::kill(::getpid(), SIGKILL);  // no destructor, no atexit handler
    return 0;
  });
  CHECK(rc == -SIGKILL);
  REQUIRE(zygote.value() != 0);
  const auto t0 = std::chrono::steady_clock::now();
  while (mpp::detail::ProcessRef{zygote.value(), 0}.alive() &&
         std::chrono::steady_clock::now() - t0 < 10s)
    std::this_thread::sleep_for(10ms);
  CHECK_FALSE(mpp::detail::ProcessRef{zygote.value(), 0}.alive());
}
