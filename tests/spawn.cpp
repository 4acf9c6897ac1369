// Portable tests of mpp::Process with the spawn start method (the only one on Windows): they run
// on Linux and, cross-compiled with mingw-w64, under wine. Exit codes as Python reports them on
// each platform, terminate/kill, join with a timeout, sentinels, arguments through the codec
// (large ones too), shared values passed by name, parent_process() in the child, and the errors
// for unregistered functions and start methods the platform lacks; what a spawned child inherits
// as in Python (start method, daemon flag, authkey) and its own atexit handlers.
#include <chrono>
#include <mpp/array.hpp>
#include <mpp/futures.hpp>
#include <mpp/pool.hpp>
#include <mpp/process.hpp>
#include <mpp/queue.hpp>
#include <mpp/sync.hpp>
#include <mpp/value.hpp>
#include <numeric>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "helpers.hpp"

using namespace std::chrono_literals;
using mpp::StartMethod;

namespace {

void do_nothing() {}
void exit_with(int code) { mpp::exit(code); }
void exit_sum(int a, int b) { mpp::exit(a + b); }
void throw_runtime_error(std::string message) { throw std::runtime_error(message); }
void sleep_seconds(double s) { std::this_thread::sleep_for(std::chrono::duration<double>(s)); }
/// Exits with 0 if `s` holds `n` copies of 'x' (a large argument arrived whole).
void check_big(std::string s, std::size_t n) {
  mpp::exit(s.size() == n && s.find_first_not_of('x') == std::string::npos ? 0 : 1);
}
/// Stores `x` into a shared value that travelled as its name.
void store_value(mpp::Value<int> v, int x) { v.set(x); }
/// Exits with 0 if this child sees its parent (pid `parent`) and its own name `name`.
void check_family(int parent, std::string name) {
  auto p = mpp::parent_process();
  const bool ok = p && p->pid() == parent && p->is_alive() &&
                  mpp::current_process().name() == name &&
                  mpp::current_process().pid() == static_cast<int>(mpp::detail::os::current_pid());
  mpp::exit(ok ? 0 : 1);
}
const auto exit_42 = [] { mpp::exit(42); };
/// Exits with a code made of what this spawned child knows: +1 if its default start method is
/// "spawn", +2 if its authkey is `key`, +4 if a Process it creates takes its daemon flag; an
/// mpp::atexit handler then adds 100 to `out` (set to the code first).
void spawn_facts(mpp::Bytes key, mpp::Value<int> out) {
  mpp::Process next{do_nothing};
  const int code = (mpp::get_start_method() == "spawn" ? 1 : 0) +
                   (mpp::current_process().authkey() == key ? 2 : 0) +
                   (next.daemon() == mpp::current_process().daemon() ? 4 : 0);
  out.set(code);
  mpp::atexit([out]() mutable { out.set(out.load() + 100); });
  mpp::exit(code);
}
/// Puts `n` numbers starting at `first` on `q`, then adds 1 to `counter` under `lock` `n` times
/// and records its own id in `slots[id]`.
void produce(mpp::Queue<int> q, int first, int n, mpp::Lock lock, mpp::Value<int> counter,
             mpp::Array<int> slots, int id) {
  for (int i = 0; i < n; ++i) q.put(first + i);
  for (int i = 0; i < n; ++i) {
    mpp::Guard g(lock);
    counter.set(counter.load() + 1);
  }
  slots[static_cast<std::size_t>(id)] = id + 100;
}
/// Takes `lock`, says so through `held`, and sleeps holding it (until killed).
void hold_lock(mpp::Lock lock, mpp::Value<int> held) {
  lock.acquire();
  held.set(1);
  std::this_thread::sleep_for(std::chrono::seconds(60));
}
/// Blocks in get() on an empty queue (until killed).
void take_forever(mpp::Queue<int> q, mpp::Value<int> started) {
  started.set(1);
  (void)q.get();
}
/// Takes `n` numbers off `q` and puts their sum on `out`.
void consume(mpp::Queue<int> q, int n, mpp::Queue<long long> out) {
  long long sum = 0;
  for (int i = 0; i < n; ++i) sum += q.get();
  out.put(sum);
}

}  // namespace

MPP_REGISTER(do_nothing);
MPP_REGISTER(exit_with);
MPP_REGISTER(exit_sum);
MPP_REGISTER(throw_runtime_error);
MPP_REGISTER(sleep_seconds);
MPP_REGISTER(check_big);
MPP_REGISTER(store_value);
MPP_REGISTER(check_family);
MPP_REGISTER_AS("exit_42", exit_42);
MPP_REGISTER(spawn_facts);
MPP_REGISTER(produce);
MPP_REGISTER(hold_lock);
MPP_REGISTER(take_forever);
MPP_REGISTER(consume);

namespace {

template <class F, class... Args>
mpp::Process spawn(F&& f, Args&&... args) {
  return mpp::get_context(StartMethod::spawn)
      .process(std::forward<F>(f), std::forward<Args>(args)...);
}

#if defined(MPP_OS_WINDOWS)
// CPython on Windows: terminate() and kill() both call TerminateProcess(h, 0x10000), and an exit
// code of 0x10000 reads as -SIGTERM (multiprocessing/popen_spawn_win32.py).
constexpr int kTerminated = -15;
constexpr int kKilled = -15;
#else
constexpr int kTerminated = -15;  // -SIGTERM
constexpr int kKilled = -9;       // -SIGKILL
#endif

}  // namespace

TEST_CASE("Spawn: exit codes follow Python (return, exit(n), exception, registered lambda)",
          "[spawn]") {
  auto ok = spawn(do_nothing);
  ok.start();
  ok.join();
  CHECK(ok.exitcode() == 0);

  auto sum = spawn(exit_sum, 20, 22);
  sum.start();
  sum.join();
  CHECK(sum.exitcode() == 42);

  auto seven = spawn(exit_with, 7);
  seven.start();
  CHECK(seven.join(60s));
  CHECK(seven.exitcode() == 7);

  auto boom = spawn(throw_runtime_error, std::string("boom (expected in this test)"));
  boom.start();
  boom.join();
  CHECK(boom.exitcode() == 1);

  auto lambda = spawn(exit_42);
  lambda.start();
  lambda.join();
  CHECK(lambda.exitcode() == 42);
}

TEST_CASE("Spawn: terminate and kill, with Python's exit codes", "[spawn]") {
  auto term = spawn(sleep_seconds, 60.0);
  term.start();
  CHECK(term.is_alive());
  term.terminate();
  CHECK(term.join(30s));
  CHECK(term.exitcode() == kTerminated);
  CHECK(fmt::format("{}", term).find("exitcode=-SIGTERM") != std::string::npos);

  auto killed = spawn(sleep_seconds, 60.0);
  killed.start();
  killed.kill();
  CHECK(killed.join(30s));
  CHECK(killed.exitcode() == kKilled);
  killed.kill();  // after it ended: nothing happens
  CHECK(killed.exitcode() == kKilled);
  killed.close();
  CHECK_THROWS_AS(killed.is_alive(), mpp::ValueError);
}

TEST_CASE("Spawn: join with a timeout, is_alive, sentinel, active_children", "[spawn]") {
  auto p = spawn(sleep_seconds, 60.0);
  CHECK_FALSE(p.is_alive());
  CHECK(p.pid() == std::nullopt);
  p.start();
  CHECK(p.pid().has_value());
  CHECK(p.is_alive());
  const auto t0 = std::chrono::steady_clock::now();
  CHECK_FALSE(p.join(0.2s));
  CHECK(mpp_test::seconds_since(t0) >= 0.15);
  CHECK(p.exitcode() == std::nullopt);
  CHECK_FALSE(mpp::detail::os::wait_readable(p.sentinel(), 10ms));
  CHECK(mpp::active_children().size() == 1);
  CHECK_THROWS_AS(p.close(), mpp::ValueError);  // still running
  p.terminate();
  CHECK(mpp::detail::os::wait_readable(p.sentinel(), 30s));
  p.join();
  CHECK_FALSE(p.is_alive());
  CHECK(mpp::active_children().empty());
  CHECK_THROWS_AS(p.start(), mpp::ProcessError);
}

TEST_CASE("Spawn: arguments, large ones and shared values by name reach the child", "[spawn]") {
  const std::size_t n = 3u << 20;  // far more than a pipe buffer
  auto big = spawn(check_big, std::string(n, 'x'), n);
  big.start();
  big.join();
  CHECK(big.exitcode() == 0);

  const std::string name = mpp_test::unique_name("spawn.value");
  {
    auto v = mpp::Value<int>::create(name, 0);
    auto p = spawn(store_value, v, 1234);
    p.start();
    p.join();
    CHECK(p.exitcode() == 0);
    CHECK(v.value() == 1234);
  }
  mpp::unlink(name);

  auto family =
      mpp::Process({.name = "worker-7", .start_method = StartMethod::spawn}, check_family,
                   static_cast<int>(mpp::detail::os::current_pid()), std::string("worker-7"));
  family.start();
  family.join();
  CHECK(family.exitcode() == 0);
}

TEST_CASE("Spawn: errors for unregistered functions and missing start methods", "[spawn]") {
  auto p = spawn([] { mpp::exit(43); });  // an unnamed lambda cannot be re-executed
  CHECK_THROWS_AS(p.start(), mpp::ProcessError);
  CHECK(p.pid() == std::nullopt);
  CHECK(mpp::cpu_count() >= 1);
  const auto methods = mpp::get_all_start_methods();
  CHECK(std::find(methods.begin(), methods.end(), "spawn") != methods.end());
  if constexpr (!mpp::detail::os::kCanFork) {
    CHECK(methods.size() == 1);
    CHECK(mpp::Process::default_method() == StartMethod::spawn);
    auto f = mpp::get_context(StartMethod::fork).process(do_nothing);
    CHECK_THROWS_AS(f.start(), mpp::ProcessError);
    auto fs = mpp::get_context(StartMethod::forkserver).process(do_nothing);
    CHECK_THROWS_AS(fs.start(), mpp::ProcessError);
  }
}

TEST_CASE("Spawn: queues, a lock, a value and an array shared with spawned workers", "[spawn]") {
  constexpr int kPer = 2000;
  const mpp::QueueOptions small{.max_item_size = 256};
  mpp::Queue<int> q(64, small);  // bounded: producers block while the consumer is behind
  mpp::Queue<long long> result(4, small);
  mpp::Lock lock;
  mpp::Value<int> counter{0};
  mpp::Array<int> slots(2);
  auto a = spawn(produce, q, 0, kPer, lock, counter, slots, 0);
  auto b = spawn(produce, q, kPer, kPer, lock, counter, slots, 1);
  auto c = spawn(consume, q, 2 * kPer, result);
  for (auto* p : {&a, &b, &c}) p->start();
  for (auto* p : {&a, &b, &c}) {
    CHECK(p->join(120s));
    CHECK(p->exitcode() == 0);
  }
  const long long n = 2 * kPer;
  CHECK(result.get(true, 10s) == n * (n - 1) / 2);
  CHECK(counter.value() == 2 * kPer);
  CHECK(slots.to_vector() == std::vector<int>{100, 101});
}

TEST_CASE("Spawn: a killed lock holder is reported; a killed getter leaves the queue usable",
          "[spawn][kill]") {
  mpp::Lock lock;
  mpp::Value<int> held{0};
  auto holder = spawn(hold_lock, lock, held);
  holder.start();
  for (int i = 0; i < 12000 && held.load() == 0; ++i) std::this_thread::sleep_for(5ms);
  REQUIRE(held.load() == 1);
  holder.kill();
  CHECK(holder.join(30s));
  CHECK(holder.exitcode() == kKilled);
  REQUIRE(lock.acquire(true, 30s));
  CHECK(lock.previous_owner_died());
  lock.release();

  const mpp::QueueOptions small{.max_item_size = 256};
  mpp::Queue<int> q(8, small);
  mpp::Value<int> started{0};
  auto getter = spawn(take_forever, q, started);
  getter.start();
  for (int i = 0; i < 12000 && started.load() == 0; ++i) std::this_thread::sleep_for(5ms);
  std::this_thread::sleep_for(50ms);  // most likely asleep in get() now
  getter.terminate();
  CHECK(getter.join(30s));
  CHECK(getter.exitcode() == kTerminated);
  q.put(7);
  CHECK(q.get(true, 10s) == 7);
}

// ---- Pool with spawned workers (the only kind on Windows)
// ----------------------------------------

namespace {
int square(int x) { return x * x; }
int fail_on_three(int x) {
  if (x == 3) throw std::invalid_argument("three is not allowed");
  return x;
}
int worker_pid(int) { return static_cast<int>(mpp::detail::os::current_pid()); }
int g_marker = 0;  // set by the initializer in each worker
void set_marker(int v) { g_marker = v; }
int read_marker(int) { return g_marker; }
/// Ends its worker abruptly (no clean-up, as a crash or a kill would) when it sees 7.
int die_on_seven(int x) {
  if (x == 7) std::_Exit(9);
  return x + 1;
}
mpp::PoolOptions spawn_pool(int processes = 2) {
  mpp::PoolOptions o;
  o.processes = processes;
  o.start_method = StartMethod::spawn;
  return o;
}
}  // namespace
MPP_REGISTER(square);
MPP_REGISTER(fail_on_three);
MPP_REGISTER(worker_pid);
MPP_REGISTER(set_marker);
MPP_REGISTER(read_marker);
MPP_REGISTER(die_on_seven);

TEST_CASE("Spawn: a Pool of spawned workers maps, imaps and applies registered functions",
          "[spawn][pool]") {
  mpp::Pool pool(spawn_pool());
  std::vector<int> in(10000);
  std::iota(in.begin(), in.end(), 0);
  const auto out = pool.map(square, in);
  bool all = out.size() == in.size();
  for (std::size_t i = 0; all && i < in.size(); ++i) all = out[i] == in[i] * in[i];
  CHECK(all);
  CHECK(pool.apply_async(square, 9).get(60s) == 81);
  std::vector<int> order;
  for (int v : pool.imap(square, std::vector<int>{1, 2, 3})) order.push_back(v);
  CHECK(order == std::vector<int>{1, 4, 9});
  for (int p : pool.map(worker_pid, std::vector<int>(4, 0), 1))
    CHECK(p != static_cast<int>(mpp::detail::os::current_pid()));
  CHECK_THROWS_AS(pool.map(fail_on_three, std::vector<int>{1, 2, 3}), std::invalid_argument);
  CHECK(pool.apply(square, 7) == 49);  // still serving
  pool.close();
  pool.join();
}

TEST_CASE("Spawn: Pool initializer and maxtasksperchild with spawned workers", "[spawn][pool]") {
  auto o = spawn_pool();
  o.maxtasksperchild = 2;
  mpp::Pool pool(o, set_marker, 42);
  CHECK(pool.map(read_marker, std::vector<int>(8, 0), 1) == std::vector<int>(8, 42));
  const auto pids = pool.map(worker_pid, std::vector<int>(8, 0), 1);
  CHECK(std::set<int>(pids.begin(), pids.end()).size() >= 4);  // workers were replaced
}

TEST_CASE("Spawn: a spawned Pool worker that dies fails its task, never a hang",
          "[spawn][pool][kill]") {
  mpp::Pool pool(spawn_pool());
  std::vector<int> in(20);
  std::iota(in.begin(), in.end(), 0);
  const auto t0 = std::chrono::steady_clock::now();
  CHECK_THROWS_AS(pool.map(die_on_seven, in, 2), mpp::WorkerLostError);
  CHECK_THROWS_AS(pool.apply_async(die_on_seven, 7).get(60s), mpp::WorkerLostError);
  CHECK(mpp_test::seconds_since(t0) < 60.0);
  CHECK(pool.map(square, std::vector<int>{2, 3}) == std::vector<int>{4, 9});  // replaced
}

TEST_CASE("Spawn: a ProcessPoolExecutor of spawned workers returns futures", "[spawn][pool]") {
  mpp::ExecutorOptions o;
  o.max_workers = 2;
  o.start_method = StartMethod::spawn;
  mpp::ProcessPoolExecutor ex(o);
  auto f = ex.submit(square, 12);
  CHECK(f.result(60s) == 144);
  CHECK(f.done());
  std::vector<int> in(100);
  std::iota(in.begin(), in.end(), 0);
  const auto out = ex.map(square, in, 60s);
  CHECK(out.size() == in.size());
  CHECK(std::accumulate(out.begin(), out.end(), 0) == 99 * 100 * 199 / 6);
  CHECK_THROWS_AS(ex.submit(fail_on_three, 3).result(60s), std::invalid_argument);
  ex.shutdown();
}

TEST_CASE(
    "Spawn: a spawned child knows its start method, inherits authkey and daemon flag, and "
    "runs its atexit handlers",
    "[spawn]") {
  const std::string name = mpp_test::unique_name("spawn.facts");
  {
    auto out = mpp::Value<int>::create(name, 0);
    for (const bool daemon : {false, true}) {
      CAPTURE(daemon);
      out.set(0);
      auto p = mpp::Process({.daemon = daemon, .start_method = StartMethod::spawn}, spawn_facts,
                            mpp::current_process().authkey(), out);
      p.start();
      p.join();
      CHECK(p.exitcode() == 7);
      CHECK(out.load() == 107);
    }
  }
  mpp::unlink(name);
}
