// How a failure comes back from a Pool or ProcessPoolExecutor task, across real worker processes
// (fork and spawn): the exception as itself with where it was raised nested in it (Python's
// RemoteTraceback as __cause__), mpp::exit in a task, an argument that cannot be encoded, an
// input range that fails under imap, and an executor still running at program exit.
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>
#include <mpp/futures.hpp>
#include <mpp/pool.hpp>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "helpers.hpp"

using namespace std::chrono_literals;

namespace {

int pid_of(int) { return static_cast<int>(::getpid()); }
int raise_key_error(int x) { throw mpp::KeyError(fmt::format("no key {}", x)); }
int raise_corrupted(int) { throw mpp::CorruptedError("bad bytes"); }
int raise_runtime(int x) { throw std::runtime_error("boom " + std::to_string(x)); }
int raise_os_error(int) { throw mpp::OSError("open(/nowhere) failed", 2); }
int raise_on_five(int x) {
  if (x == 5) throw std::invalid_argument("five");
  return x;
}
struct CustomError : std::exception {
  const char* what() const noexcept override { return "custom"; }
};
int raise_custom(int) { throw CustomError(); }
int exit_with(int code) { mpp::exit(code); }
int square(int x) { return x * x; }

/// Encodes, except for the value "poison" (its encoding throws, as an unpicklable object does).
struct Fragile {
  std::string s;
  template <class Ar>
  void serialize(Ar& ar) {
    if (s == "poison") throw std::invalid_argument("the value 'poison' cannot be encoded");
    ar(s);
  }
};
int length_of(Fragile f) { return static_cast<int>(f.s.size()); }

}  // namespace

MPP_REGISTER(pid_of);
MPP_REGISTER(raise_key_error);
MPP_REGISTER(raise_corrupted);
MPP_REGISTER(raise_runtime);
MPP_REGISTER(raise_os_error);
MPP_REGISTER(raise_on_five);
MPP_REGISTER(raise_custom);
MPP_REGISTER(exit_with);
MPP_REGISTER(square);
MPP_REGISTER(length_of);

namespace {

constexpr mpp::StartMethod kMethods[] = {mpp::StartMethod::fork, mpp::StartMethod::spawn};

/// Whether `call` raises E with what() `message`, with a RemoteError nested in it that names
/// `type`, `function` and the worker `pid`; a mismatch is printed.
template <class E, class F>
bool raises_remote(F&& call, const std::string& type, const std::string& message,
                   const std::string& function, int pid) {
  try {
    call();
  } catch (const E& e) {
    if (e.what() != message) {
      fmt::print(stderr, "what() is '{}', not '{}'\n", e.what(), message);
      return false;
    }
    try {
      std::rethrow_if_nested(e);
      fmt::print(stderr, "no remote context is nested in '{}'\n", e.what());
    } catch (const mpp::RemoteError& r) {
      const std::string text = r.what();
      const bool ok = r.type_name() == type && r.remote_message() == message &&
                      r.function().find(function) != std::string::npos && r.pid() == pid &&
                      text.find(function) != text.npos &&
                      text.find(std::to_string(pid)) != text.npos;
      if (!ok)
        fmt::print(stderr, "remote context: type {} function {} pid {} (expected {} {} {}): {}\n",
                   r.type_name(), r.function(), r.pid(), type, function, pid, text);
      return ok;
    }
    return false;
  } catch (const std::exception& e) {
    fmt::print(stderr, "unexpected exception {}: {}\n", mpp::detail::os::demangle(typeid(e).name()),
               e.what());
  }
  return false;
}

mpp::PoolOptions one_worker(mpp::StartMethod m) {
  mpp::PoolOptions o;
  o.processes = 1;
  o.start_method = m;
  return o;
}
mpp::ExecutorOptions one_executor_worker(mpp::StartMethod m) {
  mpp::ExecutorOptions o;
  o.max_workers = 1;
  o.start_method = m;
  return o;
}

}  // namespace

TEST_CASE("Pool errors: a task's exception comes back as itself with its origin nested",
          "[pool_errors][spawn]") {
  for (auto m : kMethods) {
    INFO("start method " << mpp::start_method_name(m));
    mpp::Pool pool(one_worker(m));
    const int worker = pool.apply(pid_of, 0);
    REQUIRE(worker != ::getpid());
    CHECK(raises_remote<mpp::KeyError>([&] { pool.apply(raise_key_error, 7); }, "mpp::KeyError",
                                       "no key 7", "raise_key_error", worker));
    CHECK(raises_remote<mpp::CorruptedError>([&] { pool.apply(raise_corrupted, 1); },
                                             "mpp::CorruptedError", "bad bytes", "raise_corrupted",
                                             worker));
    CHECK(raises_remote<std::runtime_error>([&] { pool.apply(raise_runtime, 3); },
                                            "std::runtime_error", "boom 3", "raise_runtime",
                                            worker));
    // map (chunks of raw items) and imap report the same context.
    CHECK(raises_remote<std::invalid_argument>(
        [&] {
          (void)pool.map(raise_on_five, std::vector<int>{1, 2, 3, 4, 5, 6});
        },
        "std::invalid_argument", "five", "raise_on_five", worker));
    CHECK(raises_remote<std::invalid_argument>(
        [&] {
          for (int v : pool.imap(raise_on_five, std::vector<int>{4, 5, 6})) (void)v;
        },
        "std::invalid_argument", "five", "raise_on_five", worker));
    // A type that carries a number keeps it.
    try {
      pool.apply(raise_os_error, 0);
      FAIL("no exception");
    } catch (const mpp::OSError& e) {
      CHECK(e.code() == 2);
      CHECK(std::string(e.what()) == "open(/nowhere) failed");
    }
    // Another type comes back as RemoteError itself, with the same context.
    try {
      pool.apply(raise_custom, 0);
      FAIL("no exception");
    } catch (const mpp::RemoteError& e) {
      CHECK(e.type_name().find("CustomError") != std::string::npos);
      CHECK(e.remote_message() == "custom");
      CHECK(e.function() == "raise_custom");
      CHECK(e.pid() == worker);
    }
    CHECK(pool.apply(pid_of, 0) == worker);  // the worker carried on
  }
}

TEST_CASE("Pool errors: an executor's future fails with the task's exception and its origin",
          "[pool_errors][spawn]") {
  for (auto m : kMethods) {
    INFO("start method " << mpp::start_method_name(m));
    mpp::ProcessPoolExecutor ex(one_executor_worker(m));
    const int worker = ex.submit(pid_of, 0).result(60s);
    auto f = ex.submit(raise_key_error, 9);
    CHECK(raises_remote<mpp::KeyError>([&] { (void)f.result(60s); }, "mpp::KeyError", "no key 9",
                                       "raise_key_error", worker));
    // exception() gives the same exception.
    CHECK(raises_remote<mpp::KeyError>([&] { std::rethrow_exception(f.exception()); },
                                       "mpp::KeyError", "no key 9", "raise_key_error", worker));
    CHECK(raises_remote<std::runtime_error>(
        [&] {
          for (int v : ex.map(raise_runtime, std::vector<int>{4})) (void)v;
        },
        "std::runtime_error", "boom 4", "raise_runtime", worker));
  }
}

TEST_CASE("Pool errors: a forked worker names an unregistered lambda by its type",
          "[pool_errors]") {
  mpp::Pool pool(one_worker(mpp::StartMethod::fork));
  const int worker = pool.apply(pid_of, 0);
  auto lambda = [](int x) -> int { throw std::out_of_range("lambda " + std::to_string(x)); };
  CHECK(raises_remote<std::out_of_range>([&] { pool.apply(lambda, 2); }, "std::out_of_range",
                                         "lambda 2", "lambda", worker));
}

TEST_CASE("Pool errors: mpp::exit in a task fails its call with SystemExit and its code",
          "[pool_errors][spawn]") {
  for (auto m : kMethods) {
    INFO("start method " << mpp::start_method_name(m));
    {
      mpp::ProcessPoolExecutor ex(one_executor_worker(m));
      const int worker = ex.submit(pid_of, 0).result(60s);
      auto f = ex.submit(exit_with, 3);
      try {
        (void)f.result(60s);
        FAIL("no exception");
      } catch (const mpp::SystemExit& e) {
        CHECK(e.code() == 3);
        CHECK(raises_remote<mpp::SystemExit>([&] { throw; }, "mpp::SystemExit", e.what(),
                                             "exit_with", worker));
      }
      // Not a lost worker: the same worker runs the next call.
      CHECK(ex.submit(pid_of, 0).result(60s) == worker);
    }
    mpp::Pool pool(one_worker(m));
    try {
      pool.apply(exit_with, 0);
      FAIL("no exception");
    } catch (const mpp::SystemExit& e) {
      CHECK(e.code() == 0);
    }
    CHECK(pool.apply(square, 5) == 25);
  }
}

TEST_CASE("Pool errors: an argument that cannot be encoded fails its future, not submit",
          "[pool_errors][spawn]") {
  for (auto m : kMethods) {
    INFO("start method " << mpp::start_method_name(m));
    mpp::ProcessPoolExecutor ex(one_executor_worker(m));
    std::optional<mpp::Future<int>> bad;
    REQUIRE_NOTHROW(bad.emplace(ex.submit(length_of, Fragile{"poison"})));
    CHECK(bad->done());
    CHECK_THROWS_WITH(bad->result(60s), "the value 'poison' cannot be encoded");
    CHECK_THROWS_AS(bad->result(60s), std::invalid_argument);
    CHECK(bad->exception() != nullptr);
    // The executor is not broken.
    CHECK(ex.submit(length_of, Fragile{"fine"}).result(60s) == 4);
    CHECK(ex.submit(square, 6).result(60s) == 36);
    // A Pool's apply_async too: the result fails and its error_callback runs.
    mpp::Pool pool(one_worker(m));
    std::atomic<int> errors{0};
    auto r = pool.apply_async(length_of, mpp::args(Fragile{"poison"}), {},
                              [&](std::exception_ptr) { ++errors; });
    CHECK_THROWS_AS(r.get(60s), std::invalid_argument);
    CHECK(errors == 1);
    CHECK(pool.apply(length_of, Fragile{"ok"}) == 2);
  }
}

// ---- imap over an input that fails (CPython's test_imap_handle_iterable_exception) -----------

namespace {
struct SayWhenError : std::runtime_error {
  SayWhenError() : std::runtime_error("Somebody said when") {}
};
/// CPython's exception_throwing_generator(total, when): 0, 1, ... total - 1, raising SayWhenError
/// in place of item `when` (at once for -1).
struct ThrowingRange {
  int total = 0, when = -1;
  struct iterator {
    using value_type = int;
    using difference_type = std::ptrdiff_t;
    int i = 0, when = -1;
    int operator*() const {
      if (when == -1 || i == when) throw SayWhenError();
      return i;
    }
    iterator& operator++() {
      ++i;
      return *this;
    }
    iterator operator++(int) {
      auto old = *this;
      ++i;
      return old;
    }
    bool operator==(const iterator& o) const { return i == o.i; }
  };
  iterator begin() const { return {0, when}; }
  iterator end() const { return {total, when}; }
};
static_assert(std::ranges::input_range<ThrowingRange>);

/// Reads `n` (>= 1) results of `it` (an imap range's iterator at its first), then expects
/// SayWhenError from the next step.
template <class It>
bool next_n_then_error(It& it, int n) {
  for (int i = 0; i < n; ++i) {
    if (*it != i * i) {
      fmt::print(stderr, "result {} is {}\n", i, *it);
      return false;
    }
    if (i + 1 == n) break;
    try {
      ++it;
    } catch (const std::exception& e) {
      fmt::print(stderr, "after {} results: {}\n", i + 1, e.what());
      return false;
    }
  }
  try {
    ++it;
  } catch (const SayWhenError&) {
    return true;
  }
  return false;
}
}  // namespace

TEST_CASE("Pool errors: imap yields the results before a failing input item, then its error",
          "[pool_errors][spawn]") {
  for (auto m : kMethods) {
    INFO("start method " << mpp::start_method_name(m));
    mpp::PoolOptions o;
    o.processes = 2;
    o.start_method = m;
    mpp::Pool pool(o);
    // At the very first item, twice (re-entrant).
    for (int k = 0; k < 2; ++k) {
      auto r = pool.imap(square, ThrowingRange{1, -1}, 1);
      CHECK_THROWS_AS(r.begin(), SayWhenError);
    }
    {
      auto r = pool.imap(square, ThrowingRange{10, 3}, 1);
      auto it = r.begin();
      CHECK(next_n_then_error(it, 3));
    }
    // The error is seen at the start of the failing chunk's results.
    {
      auto r = pool.imap(square, ThrowingRange{20, 7}, 2);
      auto it = r.begin();
      CHECK(next_n_then_error(it, 6));
    }
    {
      auto r = pool.imap(square, ThrowingRange{20, 7}, 4);
      auto it = r.begin();
      CHECK(next_n_then_error(it, 4));
    }
    // imap_unordered: every result of the items before the failing one, then the error.
    {
      std::vector<int> got;
      auto r = pool.imap_unordered(square, ThrowingRange{10, 3}, 1);
      CHECK_THROWS_AS(
          [&] {
            for (int v : r) got.push_back(v);
          }(),
          SayWhenError);
      std::sort(got.begin(), got.end());
      CHECK(got == std::vector<int>{0, 1, 4});
    }
    CHECK(pool.map(square, std::vector<int>{1, 2, 3}) == std::vector<int>{1, 4, 9});
  }
}

// ---- program exit with an executor or a pool still running -----------------------------------

namespace {
void slow_print(int ms) {
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  fmt::print("task finished after {} ms\n", ms);
  std::fflush(stdout);
}

/// The start method a child case uses (MPP_TEST_OBJECT: "fork" or "spawn").
mpp::StartMethod child_method() {
  const char* m = std::getenv("MPP_TEST_OBJECT");
  return m != nullptr && std::string(m) == "spawn" ? mpp::StartMethod::spawn
                                                   : mpp::StartMethod::fork;
}

// At namespace scope, as in a program that keeps one executor (or pool) for its whole run.
std::optional<mpp::ProcessPoolExecutor> g_executor;
std::optional<mpp::Pool> g_pool;

/// Runs this test program on the hidden case `spec` with start method `method`; returns its exit
/// code and what it wrote to stdout.
std::pair<int, std::string> run_child_program(const char* spec, const char* method) {
  char path[] = "/tmp/mpp_pool_errors_XXXXXX";
  const int fd = ::mkstemp(path);
  REQUIRE(fd >= 0);
  const int code = mpp_test::run_bounded(60s, [&] {
    ::setenv("MPP_TEST_OBJECT", method, 1);
    if (::dup2(fd, 1) < 0) return 126;
    char self[] = "/proc/self/exe";
    char* argv[] = {self, const_cast<char*>(spec), nullptr};
    ::execv(self, argv);
    return 127;
  });
  ::close(fd);
  std::ifstream in(path, std::ios::binary);
  std::string out((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ::unlink(path);
  return {code, out};
}
}  // namespace

MPP_REGISTER(slow_print);

TEST_CASE("[.] helper: the program exits while its executor runs a call", "[.][exit-executor]") {
  g_executor.emplace(one_executor_worker(child_method()));
  auto running = g_executor->submit(slow_print, 500);
  (void)g_executor->submit(slow_print, 10);  // queued behind it: finishes too
  const auto t0 = std::chrono::steady_clock::now();
  while (!running.running() && !running.done() && mpp_test::seconds_since(t0) < 30)
    std::this_thread::sleep_for(1ms);
  REQUIRE(running.running());  // the program exits while a worker runs the call
}

TEST_CASE("[.] helper: the program exits while its pool runs a task", "[.][exit-pool]") {
  mpp::PoolOptions o = one_worker(child_method());
  g_pool.emplace(o);
  (void)g_pool->apply_async(slow_print, 30000);
}

TEST_CASE("Pool errors: at program exit a namespace-scope executor's calls finish",
          "[pool_errors][spawn]") {
  for (const char* m : {"fork", "spawn"}) {
    INFO("start method " << m);
    const auto run = run_child_program("[exit-executor]", m);
    CHECK(run.first == 0);
    CHECK(run.second.find("task finished after 500 ms") != std::string::npos);
    CHECK(run.second.find("task finished after 10 ms") != std::string::npos);
  }
}

TEST_CASE("Pool errors: at program exit a running pool is terminated and the program exits 0",
          "[pool_errors][spawn]") {
  for (const char* m : {"fork", "spawn"}) {
    INFO("start method " << m);
    const auto run = run_child_program("[exit-pool]", m);
    CHECK(run.first == 0);                                         // not mpp_test::kHung: no hang
    CHECK(run.second.find("task finished") == std::string::npos);  // terminated, as in Python
  }
}
