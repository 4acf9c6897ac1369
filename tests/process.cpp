// Tests of mpp::Process under the three start methods (fork, spawn, forkserver): exit codes,
// join with timeout, terminate/kill, names and reprs, current/parent process, daemon children,
// active_children, errors for unregistered functions and programs without bootstrap; what a
// child inherits as in Python: its start method, daemon flag and authkey, its own atexit
// handlers, and no stray descriptors under spawn and forkserver.
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <mpp/detail/fork_hooks.hpp>
#include <mpp/process.hpp>
#include <mpp/value.hpp>
#include <sstream>
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
void sleep_seconds(double s) {
  ::signal(SIGTERM, SIG_DFL);  // a forked child inherits Catch's handler, which reports a failure
  std::this_thread::sleep_for(std::chrono::duration<double>(s));
}

void write_file(const std::string& path, const std::string& text) {
  std::ofstream(path + ".tmp") << text;
  std::rename((path + ".tmp").c_str(), path.c_str());
}
bool file_exists(const std::string& path) { return ::access(path.c_str(), F_OK) == 0; }

/// Waits (generously) until `path` exists, then removes it.
void wait_for_file(const std::string& path) {
  for (int i = 0; i < 6000 && !file_exists(path); ++i) std::this_thread::sleep_for(5ms);
  ::unlink(path.c_str());
}

/// Like sleep_seconds, but creates `ready` once SIGTERM has its default action again, so a test
/// can terminate it without Catch's inherited handler reporting a failure from the child.
void sleep_ready(double s, std::string ready) {
  ::signal(SIGTERM, SIG_DFL);
  write_file(ready, "ready");
  std::this_thread::sleep_for(std::chrono::duration<double>(s));
}
std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}
/// Writes what the child knows about itself:
/// name|pid|parent pid|parent name|daemon|repr|parent alive|parent joined|parent sentinel valid.
void describe_self(std::string path) {
  auto me = mpp::current_process();
  auto parent = mpp::parent_process();
  write_file(path, fmt::format("{}|{}|{}|{}|{}|{}|{}|{}|{}", me.name(), *me.pid(),
                               parent ? *parent->pid() : 0, parent ? parent->name() : "none",
                               me.daemon() ? 1 : 0, me, parent && parent->is_alive() ? 1 : 0,
                               parent && parent->join(0.01s) ? 1 : 0,
                               parent && parent->sentinel() >= 0 ? 1 : 0));
}

/// Exits with 0 if `s` holds `n` copies of 'x' (a large argument arrived whole).
void check_big(std::string s, std::size_t n) {
  mpp::exit(s.size() == n && s.find_first_not_of('x') == std::string::npos ? 0 : 1);
}

/// Stores `x` into a shared value that travelled as its name (spawn, forkserver) or was inherited.
void store_value(mpp::Value<int> v, int x) { v.set(x); }

/// Sleeps for `s` seconds, then creates `marker`.
void sleep_then_mark(double s, std::string marker) {
  sleep_seconds(s);
  write_file(marker, "done");
}

/// Starts a daemon sleeper and a non-daemon child that finishes after a short sleep, writes their
/// pids to `path`, and returns: its exit must terminate the first and join the second.
void parent_of_daemon(int method, std::string path, std::string marker) {
  const auto m = static_cast<StartMethod>(method);
  mpp::Process daemon{{.daemon = true, .start_method = m}, sleep_ready, 60.0, path + ".ready"};
  mpp::Process worker{{.start_method = m}, sleep_then_mark, 0.3, marker};
  daemon.start();
  worker.start();
  wait_for_file(path + ".ready");
  write_file(path, fmt::format("{} {}", *daemon.pid(), *worker.pid()));
}

/// Starts a child (of the same start method) and reports its name through the exit code check.
void start_grandchild(int method, std::string path) {
  mpp::Process p{{.start_method = static_cast<StartMethod>(method)}, describe_self, path};
  p.start();
  p.join();
  mpp::exit(*p.exitcode() == 0 ? 0 : 3);
}

/// Writes the child's default start method and whether set_start_method without force refuses
/// ("<method>|locked"), as CPython's _bootstrap forces the context of the child.
void report_start_method(std::string path) {
  bool locked = false;
  try {
    mpp::set_start_method(StartMethod::fork);
  } catch (const mpp::ProcessError&) {
    locked = true;
  }
  write_file(path, fmt::format("{}|{}", mpp::get_start_method(), locked ? "locked" : "free"));
}

std::string g_c_atexit_marker;  // where c_atexit_handler writes (set by the child)
void c_atexit_handler() { write_file(g_c_atexit_marker, "c"); }

/// Registers an mpp::atexit handler (writes `path`.mpp) and a std::atexit one (writes `path`.c),
/// then ends: `how` 0 returns, 1 calls mpp::exit(3), 2 throws.
void register_exit_handlers(std::string path, int how) {
  g_c_atexit_marker = path + ".c";
  std::atexit(&c_atexit_handler);
  mpp::atexit([path] { write_file(path + ".mpp", "mpp"); });
  mpp::atexit([path] {  // runs first (last registered): the later one still runs after a throw
    if (file_exists(path + ".mpp")) write_file(path + ".order", "wrong");
    throw std::runtime_error("an atexit handler that throws (expected in this test)");
  });
  if (how == 1) mpp::exit(3);
  if (how == 2) throw std::runtime_error("boom (expected in this test)");
}

/// Exits with 1 if a descriptor of this process is open on `path`, else 0.
void find_descriptor(std::string path) {
  DIR* d = ::opendir("/proc/self/fd");
  if (d == nullptr) mpp::exit(2);
  int found = 0;
  while (const dirent* e = ::readdir(d)) {
    char target[4096];
    const std::string link = std::string("/proc/self/fd/") + e->d_name;
    const ssize_t n = ::readlink(link.c_str(), target, sizeof target - 1);
    if (n > 0 && std::string(target, static_cast<std::size_t>(n)) == path) found = 1;
  }
  ::closedir(d);
  mpp::exit(found);
}

/// Exits with a code that says what Processes created here inherit: +1 if a Process made without
/// a daemon option is daemonic, +2 if one made with daemon=false is, +4 if starting the first
/// fails (a daemonic process may not have children), +8 if this process is daemonic.
void daemon_flags() {
  mpp::Process inherited{do_nothing};
  mpp::Process explicit_false{{.daemon = false}, do_nothing};
  int code = (inherited.daemon() ? 1 : 0) + (explicit_false.daemon() ? 2 : 0) +
             (mpp::current_process().daemon() ? 8 : 0);
  try {
    inherited.start();
    inherited.join();
  } catch (const mpp::ProcessError&) {
    code += 4;
  }
  mpp::exit(code);
}

/// Exits with 0 if this child's authkey is `expected` and a Process it creates takes it too.
void check_authkey(mpp::Bytes expected) {
  mpp::Process next{do_nothing};
  mpp::exit(mpp::current_process().authkey() == expected && next.authkey() == expected ? 0 : 1);
}

}  // namespace

MPP_REGISTER(report_start_method);
MPP_REGISTER(register_exit_handlers);
MPP_REGISTER(find_descriptor);
MPP_REGISTER(daemon_flags);
MPP_REGISTER(check_authkey);
MPP_REGISTER(do_nothing);
MPP_REGISTER(exit_with);
MPP_REGISTER(exit_sum);
MPP_REGISTER(throw_runtime_error);
MPP_REGISTER(sleep_seconds);
MPP_REGISTER(sleep_ready);
MPP_REGISTER(describe_self);
MPP_REGISTER(sleep_then_mark);
MPP_REGISTER(parent_of_daemon);
MPP_REGISTER(start_grandchild);
MPP_REGISTER(store_value);
MPP_REGISTER(check_big);
namespace {
const auto exit_42 = [] { mpp::exit(42); };
}
MPP_REGISTER_AS("exit_42", exit_42);

namespace {

std::string temp_path(std::string_view tag) {
  static int n = 0;
  return fmt::format("/tmp/mpp-test-process-{}-{}-{}", ::getpid(), ++n, tag);
}

/// Redirects this process's stderr (fd 2) to a file until finish().
class CaptureStderr {
 public:
  CaptureStderr() : path_(temp_path("stderr")) {
    std::fflush(stderr);
    const int fd = ::open(path_.c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0600);
    saved_ = ::dup(2);
    ::dup2(fd, 2);
    ::close(fd);
  }
  std::string finish() {
    std::fflush(stderr);
    ::dup2(saved_, 2);
    ::close(saved_);
    std::string text = read_file(path_);
    ::unlink(path_.c_str());
    return text;
  }

 private:
  std::string path_;
  int saved_ = -1;
};

StartMethod any_method() {
  return GENERATE(StartMethod::fork, StartMethod::spawn, StartMethod::forkserver);
}

template <class F, class... Args>
mpp::Process make(StartMethod m, F&& f, Args&&... args) {
  return mpp::get_context(m).process(std::forward<F>(f), std::forward<Args>(args)...);
}

}  // namespace

TEST_CASE("Process: exit codes follow Python: return, exit(n), exception, SIGTERM, SIGKILL",
          "[process]") {
  const StartMethod m = any_method();
  CAPTURE(mpp::start_method_name(m));

  auto ok = make(m, do_nothing);
  ok.start();
  ok.join();
  CHECK(ok.exitcode() == 0);

  auto seven = make(m, exit_with, 7);
  seven.start();
  seven.join();
  CHECK(seven.exitcode() == 7);

  auto sum = make(m, exit_sum, 20, 22);  // arguments arrive (through the codec for spawn)
  sum.start();
  sum.join();
  CHECK(sum.exitcode() == 42);

  std::optional<CaptureStderr> capture;
  if (m != StartMethod::forkserver) capture.emplace();  // the server writes to its own stderr
  auto boom = make(m, throw_runtime_error, std::string("boom at line 1"));
  boom.start();
  boom.join();
  CHECK(boom.exitcode() == 1);
  if (capture) {
    const std::string err = capture->finish();
    CHECK(err.find("Process " + boom.name()) != std::string::npos);
    CHECK(err.find("std::runtime_error: boom at line 1") != std::string::npos);
  }

  const std::string ready = temp_path("ready");
  auto term = make(m, sleep_ready, 30.0, ready);
  term.start();
  wait_for_file(ready);
  term.terminate();
  term.join();
  CHECK(term.exitcode() == -SIGTERM);
  CHECK(fmt::format("{}", term).find("exitcode=-SIGTERM") != std::string::npos);

  auto killed = make(m, sleep_seconds, 30.0);
  killed.start();
  killed.kill();
  CHECK(killed.join(20s));
  CHECK(killed.exitcode() == -SIGKILL);
  killed.kill();  // after it ended: nothing happens
  CHECK(killed.exitcode() == -SIGKILL);
}

TEST_CASE("Process: registered capture-less lambdas run under every start method", "[process]") {
  const StartMethod m = any_method();
  CAPTURE(mpp::start_method_name(m));
  auto registered = make(m, exit_42);
  registered.start();
  registered.join();
  CHECK(registered.exitcode() == 42);
  // Another lambda type has no name: only fork can run it.
  auto p = make(m, [] { mpp::exit(43); });
  if (m == StartMethod::fork) {
    p.start();
    p.join();
    CHECK(p.exitcode() == 43);
  } else {
    CHECK_THROWS_AS(p.start(), mpp::ProcessError);
    CHECK(p.pid() == std::nullopt);
  }
}

TEST_CASE("Process: join with a timeout on a sleeping child; is_alive; sentinel", "[process]") {
  const StartMethod m = any_method();
  CAPTURE(mpp::start_method_name(m));
  auto p = make(m, sleep_seconds, 30.0);
  CHECK_FALSE(p.is_alive());
  CHECK(p.pid() == std::nullopt);
  CHECK(p.exitcode() == std::nullopt);
  CHECK_THROWS_AS(p.sentinel(), mpp::ValueError);
  CHECK_THROWS_AS(p.join(), mpp::ProcessError);
  p.start();
  REQUIRE(p.pid().has_value());
  CHECK(*p.pid() > 0);
  CHECK(p.ident() == p.pid());
  const auto t0 = std::chrono::steady_clock::now();
  CHECK_FALSE(p.join(0.2s));
  CHECK(mpp_test::seconds_since(t0) >= 0.19);
  CHECK(mpp_test::seconds_since(t0) < 20);
  CHECK(p.is_alive());
  CHECK(p.exitcode() == std::nullopt);
  struct pollfd pfd {
    p.sentinel(), POLLIN, 0
  };
  CHECK(::poll(&pfd, 1, 0) == 0);  // not readable while it runs
  CHECK_THROWS_AS(p.close(), mpp::ValueError);
  CHECK_THROWS_AS(p.start(), mpp::ProcessError);
  CHECK_THROWS_AS(p.daemon(true), mpp::ProcessError);
  p.terminate();
  CHECK(::poll(&pfd, 1, 20000) == 1);  // readable once it ended
  CHECK(p.join(20s));
  CHECK_FALSE(p.is_alive());
  CHECK(p.join(0s));  // joining again is fine
  p.close();
  CHECK_THROWS_AS(p.pid(), mpp::ValueError);
  CHECK_THROWS_AS(p.is_alive(), mpp::ValueError);
  CHECK(fmt::format("{}", p).find("closed") != std::string::npos);
}

TEST_CASE("Process: names, reprs, current_process and parent_process", "[process]") {
  const StartMethod m = any_method();
  CAPTURE(mpp::start_method_name(m));
  const std::string path = temp_path("describe");
  mpp::Process p{{.name = "worker-A", .daemon = true, .start_method = m}, describe_self, path};
  CHECK(p.name() == "worker-A");
  CHECK(p.daemon());
  CHECK(p.start_method() == m);
  const std::string initial = fmt::format("{}", p);
  CHECK(initial == fmt::format("<Process name='worker-A' parent={} initial daemon>", ::getpid()));
  p.start();
  p.join();
  REQUIRE(p.exitcode() == 0);
  const std::string child = read_file(path);
  ::unlink(path.c_str());
  CHECK(child == fmt::format("worker-A|{}|{}|MainProcess|1|<Process name='worker-A' parent={} "
                             "started daemon>|1|0|1",
                             *p.pid(), ::getpid(), ::getpid()));
  CHECK(fmt::format("{}", p) == fmt::format("<Process name='worker-A' pid={} parent={} stopped "
                                            "exitcode=0 daemon>",
                                            *p.pid(), ::getpid()));

  // Default names count up like Python's: Process-N, and Process-N:M in a child.
  auto q = make(m, start_grandchild, static_cast<int>(m), path);
  CHECK(q.name().rfind("Process-", 0) == 0);
  q.start();
  q.join();
  CHECK(q.exitcode() == 0);
  const std::string grandchild = read_file(path);
  ::unlink(path.c_str());
  CHECK(grandchild.rfind(q.name() + ":1|", 0) == 0);
  CHECK(grandchild.find(fmt::format("|{}|{}|", *q.pid(), q.name())) != std::string::npos);

  CHECK(mpp::current_process().name() == "MainProcess");
  CHECK(mpp::current_process().pid() == ::getpid());
  CHECK(mpp::current_process().is_alive());
  CHECK(fmt::format("{}", mpp::current_process()) ==
        "<_MainProcess name='MainProcess' parent=None started>");
  CHECK_FALSE(mpp::parent_process().has_value());
  CHECK_THROWS_AS(mpp::current_process().join(), mpp::ProcessError);
}

TEST_CASE("Process: daemon children are terminated and others joined when their parent exits",
          "[process]") {
  const StartMethod m = any_method();
  CAPTURE(mpp::start_method_name(m));
  const std::string pids = temp_path("pids"), marker = temp_path("marker");
  auto p = make(m, parent_of_daemon, static_cast<int>(m), pids, marker);
  const auto t0 = std::chrono::steady_clock::now();
  p.start();
  REQUIRE(p.join(30s));
  CHECK(p.exitcode() == 0);
  CHECK(mpp_test::seconds_since(t0) < 30);  // the daemon (60 s) did not hold it up
  CHECK(file_exists(marker));               // the non-daemon child was joined before it exited
  int daemon_pid = 0, worker_pid = 0;
  std::istringstream(read_file(pids)) >> daemon_pid >> worker_pid;
  REQUIRE(daemon_pid > 0);
  // The daemon got SIGTERM; give a forkserver child's reaper a moment.
  bool gone = false;
  for (int i = 0; i < 200 && !gone; ++i) {
    gone = !mpp::detail::ProcessRef{daemon_pid, 0}.alive();
    if (!gone) std::this_thread::sleep_for(10ms);
  }
  CHECK(gone);
  ::unlink(pids.c_str());
  ::unlink(marker.c_str());
}

TEST_CASE("Process: the exit handler terminates daemons and joins children at std::exit",
          "[process]") {
  const std::string marker = temp_path("marker");
  const pid_t pid = mpp_test::fork_child([&] {
    mpp::Process daemon{{.daemon = true}, sleep_ready, 60.0, marker + ".ready"};
    mpp::Process worker{sleep_then_mark, 0.3, marker};
    daemon.start();
    worker.start();
    wait_for_file(marker + ".ready");
    std::exit(0);  // runs atexit handlers, like the end of main
    return 0;
  });
  const auto t0 = std::chrono::steady_clock::now();
  CHECK(mpp_test::wait_child(pid) == 0);
  CHECK(mpp_test::seconds_since(t0) < 30);
  CHECK(file_exists(marker));
  ::unlink(marker.c_str());
}

TEST_CASE("Process: active_children lists running children and reaps finished ones", "[process]") {
  const StartMethod m = any_method();
  CAPTURE(mpp::start_method_name(m));
  CHECK(mpp::active_children().empty());
  auto quick = make(m, do_nothing);
  auto slow = make(m, sleep_seconds, 30.0);
  quick.start();
  slow.start();
  std::vector<mpp::Process> running;
  for (int i = 0; i < 2000; ++i) {
    running = mpp::active_children();
    if (running.size() == 1) break;
    std::this_thread::sleep_for(5ms);
  }
  REQUIRE(running.size() == 1);
  CHECK(running[0] == slow);
  CHECK(quick.exitcode() == 0);  // reaped by active_children, status kept
  slow.kill();
  slow.join();
  CHECK(mpp::active_children().empty());
}

TEST_CASE("Process: a multi-threaded parent starts processes (fork server, spawn, fork)",
          "[process]") {
  std::atomic<bool> stop{false};
  std::vector<std::thread> busy;
  for (int i = 0; i < 2; ++i)
    busy.emplace_back([&] {
      while (!stop.load()) std::this_thread::sleep_for(1ms);
    });
  std::atomic<int> failures{0};
  std::vector<std::thread> starters;
  for (int t = 0; t < 3; ++t)
    starters.emplace_back([&, t] {
      for (int i = 0; i < 3; ++i) {
        // forkserver is the method meant for this; spawn (posix_spawn) and fork work as well.
        const StartMethod m = i == 0   ? StartMethod::forkserver
                              : i == 1 ? StartMethod::spawn
                                       : StartMethod::fork;
        auto p = make(m, exit_sum, t, i);
        p.start();
        p.join();
        if (p.exitcode() != t + i) failures.fetch_add(1);
      }
    });
  for (auto& s : starters) s.join();
  stop = true;
  for (auto& b : busy) b.join();
  CHECK(failures.load() == 0);
}

TEST_CASE("Process: fork runs any callable on a copy of the parent", "[process]") {
  static std::vector<int> result;  // a global of the parent: the child changes its own copy
  std::vector<int> numbers{1, 2, 3, 4};
  mpp::Process p{[numbers] {
    for (int n : numbers) result.push_back(n * n);
    mpp::exit(static_cast<int>(result.size()));
  }};
  CHECK(p.start_method() == StartMethod::fork);
  p.start();
  p.join();
  CHECK(p.exitcode() == 4);
  CHECK(result.empty());
}

TEST_CASE("Process: spawn and forkserver need registered functions and a bootstrapped program",
          "[process]") {
  const StartMethod m = GENERATE(StartMethod::spawn, StartMethod::forkserver);
  CAPTURE(mpp::start_method_name(m));
  int captured = 3;
  auto capturing = make(m, [captured] { mpp::exit(captured); });
  CHECK_THROWS_WITH(capturing.start(), Catch::Contains("cannot re-create this callable"));

  // Registered only now, after bootstrap: the parent knows the name, the new program does not.
  static auto late = +[](int n) { mpp::exit(n); };
  mpp::register_function("late_registration", late);
  auto p = make(m, late, 5);
  CHECK_THROWS_WITH(p.start(), Catch::Contains("not registered in the new program"));
  CHECK_FALSE(p.is_alive());
  CHECK(mpp::active_children().empty());

  auto unregistered = make(
      m, +[] {});
  CHECK_THROWS_WITH(unregistered.start(), Catch::Contains("MPP_REGISTER"));
}

TEST_CASE("Process: a spawned program that never calls bootstrap is reported", "[process]") {
  mpp::set_executable("/bin/true");  // exits at once without reading its launch request
  auto p = make(StartMethod::spawn, do_nothing);
  CHECK_THROWS_WITH(p.start(), Catch::Contains("before it called mpp::bootstrap"));
  mpp::set_executable("");
  CHECK(mpp::active_children().empty());
  auto again = make(StartMethod::spawn, do_nothing);
  again.start();
  again.join();
  CHECK(again.exitcode() == 0);
}

TEST_CASE("Process: start methods, contexts and cpu_count", "[process]") {
  CHECK(mpp::get_start_method() == "fork");
  CHECK(mpp::get_all_start_methods().size() == 3);
  CHECK(mpp::get_context().get_start_method() == "fork");
  CHECK(mpp::get_context("spawn").get_start_method() == "spawn");
  CHECK(mpp::get_context(StartMethod::forkserver).start_method() == StartMethod::forkserver);
  CHECK_THROWS_AS(mpp::get_context("threads"), mpp::ValueError);
  CHECK_THROWS_AS(mpp::set_start_method("threads"), mpp::ValueError);
  mpp::set_start_method("spawn");
  CHECK_THROWS_AS(mpp::set_start_method("forkserver"), mpp::ProcessError);
  CHECK(mpp::get_start_method() == "spawn");
  mpp::Process p{exit_with, 9};
  CHECK(p.start_method() == StartMethod::spawn);
  p.start();
  p.join();
  CHECK(p.exitcode() == 9);
  mpp::set_start_method(StartMethod::fork, /*force=*/true);
  CHECK(mpp::get_start_method() == "fork");

  const int n = mpp::cpu_count();
  CHECK(n >= 1);
  CHECK(n <= static_cast<int>(std::thread::hardware_concurrency()));
}

TEST_CASE("Process: a Process destroyed while running is still reaped and joined", "[process]") {
  const StartMethod m = any_method();
  CAPTURE(mpp::start_method_name(m));
  {
    auto p = make(m, sleep_seconds, 0.05);
    p.start();
  }
  std::vector<mpp::Process> left = mpp::active_children();
  REQUIRE(left.size() <= 1);
  for (auto& c : left) c.join();
  CHECK(mpp::active_children().empty());
}

TEST_CASE("Process: mpp handles are passed to children (as names under spawn and forkserver)",
          "[process]") {
  const StartMethod m = any_method();
  CAPTURE(mpp::start_method_name(m));
  mpp::Value<int> v{0};
  auto p = make(m, store_value, v, 17);
  p.start();
  p.join();
  CHECK(p.exitcode() == 0);
  CHECK(v.value() == 17);
}

TEST_CASE("Process: a fork server that died is replaced by the next start()", "[process]") {
  auto first = make(StartMethod::forkserver, sleep_seconds, 30.0);
  first.start();
  const int server = mpp::detail::globals().server_pid;
  REQUIRE(server > 0);
  ::kill(server, SIGKILL);
  // Its status channel closes: reported as 255, as Python does when the server is gone.
  CHECK(first.join(20s));
  CHECK(first.exitcode() == 255);
  ::kill(*first.pid(), SIGKILL);  // the orphan still runs; end it
  auto second = make(StartMethod::forkserver, exit_with, 4);
  second.start();
  second.join();
  CHECK(second.exitcode() == 4);
  CHECK(mpp::detail::globals().server_pid != server);
}

TEST_CASE("Process: a stopped fork server makes start() fail within its bound, not hang",
          "[process]") {
  auto& g = mpp::detail::globals();
  auto first = make(StartMethod::forkserver, do_nothing);
  first.start();  // make sure a server runs
  first.join();
  const int server = g.server_pid;
  REQUIRE(server > 0);
  REQUIRE(::kill(server, SIGSTOP) == 0);
  const auto saved = g.server_timeout;
  g.server_timeout = 500ms;
  auto second = make(StartMethod::forkserver, do_nothing);
  std::string message;
  try {
    second.start();
  } catch (const mpp::ProcessError& e) {
    message = e.what();
  }
  CHECK_THAT(message, Catch::Contains("fork server") && Catch::Contains("stopped or stuck"));
  g.server_timeout = saved;
  CHECK(!mpp::detail::ProcessRef{server, 0}.alive());  // killed, not left stopped
  // The next start() uses a new server.
  auto third = make(StartMethod::forkserver, exit_with, 3);
  third.start();
  third.join();
  CHECK(third.exitcode() == 3);
  CHECK(g.server_pid != server);
}

TEST_CASE("Process: the fork server exits when the process that started it dies", "[process]") {
  const std::string path = temp_path("server");
  const pid_t pid = mpp_test::fork_child([&] {
    mpp::detail::globals().server_control.reset();  // start a server of our own
    auto p = make(StartMethod::forkserver, do_nothing);
    p.start();
    p.join();
    write_file(path, std::to_string(mpp::detail::globals().server_pid));
    ::raise(SIGKILL);  // no clean-up: the server must notice by itself
    return 0;
  });
  CHECK(mpp_test::wait_child(pid) == -SIGKILL);
  const int server = std::atoi(read_file(path).c_str());
  ::unlink(path.c_str());
  REQUIRE(server > 0);
  bool gone = false;
  for (int i = 0; i < 2000 && !gone; ++i) {
    gone = !mpp::detail::ProcessRef{server, 0}.alive();
    if (!gone) std::this_thread::sleep_for(5ms);
  }
  CHECK(gone);
}

TEST_CASE("Process: large arguments reach the child whole", "[process]") {
  const StartMethod m = any_method();
  CAPTURE(mpp::start_method_name(m));
  const std::size_t n = 3 << 20;  // larger than a socket buffer
  auto p = make(m, check_big, std::string(n, 'x'), n);
  p.start();
  p.join();
  CHECK(p.exitcode() == 0);
}

namespace {
// Counts the fork() callbacks it receives; the child reports its counts in its exit status.
struct CountingHook final : mpp::detail::ForkHook {
  int before = 0, parent = 0, child = 0;
  void before_fork() noexcept override { ++before; }
  void after_fork_parent() noexcept override { ++parent; }
  void after_fork_child() noexcept override { ++child; }
};
}  // namespace

TEST_CASE("Process: fork hooks, every registered hook runs, an unregistered one does not",
          "[process]") {
  // Removal moves the last hook into the freed place: the moved hook must still be called and
  // still be removable, whatever the order of removals.
  std::vector<CountingHook> hooks(5);
  for (auto& h : hooks) mpp::detail::register_fork_hook(&h);
  mpp::detail::register_fork_hook(&hooks[0]);    // twice: still one registration
  mpp::detail::unregister_fork_hook(&hooks[1]);  // hooks[4] takes its place
  mpp::detail::unregister_fork_hook(&hooks[1]);  // idempotent
  const pid_t pid = mpp_test::fork_child([&] {
    int mask = 0;
    for (int i = 0; i < 5; ++i) mask |= (hooks[static_cast<std::size_t>(i)].child == 1) << i;
    return mask;
  });
  CHECK(mpp_test::wait_child(pid) == 0b11101);
  for (int i : {0, 2, 3, 4}) {
    CHECK(hooks[static_cast<std::size_t>(i)].before == 1);
    CHECK(hooks[static_cast<std::size_t>(i)].parent == 1);
  }
  CHECK(hooks[1].before == 0);
  mpp::detail::unregister_fork_hook(&hooks[4]);  // the one that moved
  mpp::detail::unregister_fork_hook(&hooks[0]);
  const pid_t pid2 = mpp_test::fork_child([] { return 0; });
  CHECK(mpp_test::wait_child(pid2) == 0);
  CHECK(hooks[4].before == 1);
  CHECK(hooks[0].before == 1);
  CHECK(hooks[2].before == 2);
  CHECK(hooks[3].before == 2);
  for (int i : {2, 3}) mpp::detail::unregister_fork_hook(&hooks[static_cast<std::size_t>(i)]);
}

TEST_CASE("Process: join takes a timeout in plain seconds", "[process]") {
  mpp::Process p([] { std::this_thread::sleep_for(std::chrono::seconds(30)); });
  p.start();
  CHECK_FALSE(p.join(0.05));
  CHECK(p.is_alive());
  p.terminate();
  CHECK(p.join(5.0));
}

TEST_CASE("Process: a child's default start method is the one that started it", "[process]") {
  const StartMethod m = any_method();
  CAPTURE(mpp::start_method_name(m));
  const std::string path = temp_path("method");
  auto p = make(m, report_start_method, path);
  p.start();
  p.join();
  REQUIRE(p.exitcode() == 0);
  // As CPython forces the context in _bootstrap: set_start_method without force then refuses.
  CHECK(read_file(path) == fmt::format("{}|locked", mpp::start_method_name(m)));
  ::unlink(path.c_str());
}

TEST_CASE("Process: atexit handlers the child registers run at its normal exit", "[process]") {
  const StartMethod m = any_method();
  const int how = GENERATE(0, 1, 2);  // return, mpp::exit(3), an escaped exception
  CAPTURE(mpp::start_method_name(m), how);
  const std::string path = temp_path("atexit");
  auto p = make(m, register_exit_handlers, path, how);
  CaptureStderr err;
  p.start();
  p.join();
  const std::string text = err.finish();
  CHECK(p.exitcode() == (how == 0 ? 0 : how == 1 ? 3 : 1));
  CHECK(read_file(path + ".mpp") == "mpp");   // mpp::atexit: under every start method
  CHECK_FALSE(file_exists(path + ".order"));  // last registered first
  if (m != StartMethod::forkserver)           // a fork server's child writes to the server's stderr
    CHECK(text.find("an atexit handler failed: an atexit handler that throws") !=
          std::string::npos);
  // std::atexit: the child leaves through std::exit under spawn and forkserver, whose C atexit
  // list is the child program's own; a forked child's list is its parent's, so it never runs.
  CHECK(file_exists(path + ".c") == (m != StartMethod::fork));
  for (const char* ext : {".mpp", ".c", ".order"}) ::unlink((path + ext).c_str());
}

TEST_CASE("Process: the parent's atexit handlers do not run in its children", "[process]") {
  const std::string marker = temp_path("parent-atexit");
  const pid_t pid = mpp_test::fork_child([&] {
    mpp::atexit([marker] { write_file(marker, fmt::format("{}", ::getpid())); });
    for (StartMethod m : {StartMethod::fork, StartMethod::spawn, StartMethod::forkserver}) {
      auto p = make(m, do_nothing);
      p.start();
      p.join();
      if (p.exitcode() != 0 || file_exists(marker)) return 10 + static_cast<int>(m);
    }
    std::exit(0);  // the end of main: this process's own handler runs
    return 0;
  });
  CHECK(mpp_test::wait_child(pid) == 0);
  CHECK(read_file(marker) == std::to_string(pid));
  ::unlink(marker.c_str());
}

TEST_CASE("Process: inheritable descriptors do not leak into spawn and forkserver children",
          "[process]") {
  const StartMethod m = any_method();
  CAPTURE(mpp::start_method_name(m));
  const std::string path = temp_path("leak");
  const int fd = ::open(path.c_str(), O_CREAT | O_RDWR, 0600);  // no O_CLOEXEC: inheritable
  REQUIRE(fd >= 0);
  // A fork server started while the descriptor is open must not keep it either.
  if (m == StartMethod::forkserver) mpp::detail::stop_forkserver(mpp::detail::globals());
  auto p = make(m, find_descriptor, path);
  p.start();
  p.join();
  // Python's fork children inherit every descriptor; spawn and forkserver children get stdio and
  // what mpp passes.
  CHECK(p.exitcode() == (m == StartMethod::fork ? 1 : 0));
  ::close(fd);
  ::unlink(path.c_str());
}

TEST_CASE("Process: a process created by a daemonic process is daemonic unless set", "[process]") {
  const StartMethod m = any_method();
  CAPTURE(mpp::start_method_name(m));
  mpp::Process plain{{.start_method = m}, daemon_flags};
  CHECK_FALSE(plain.daemon());
  plain.start();
  plain.join();
  CHECK(plain.exitcode() == 0);
  mpp::Process daemonic{{.daemon = true, .start_method = m}, daemon_flags};
  daemonic.start();
  daemonic.join();
  CHECK(daemonic.exitcode() == 1 + 4 + 8);
}

TEST_CASE("Process: authkey is 32 random bytes, inherited by children, settable before start",
          "[process]") {
  const mpp::Bytes main_key = mpp::current_process().authkey();
  CHECK(main_key.size() == 32);
  CHECK(std::count(main_key.begin(), main_key.end(), std::byte{0}) < 8);
  const StartMethod m = any_method();
  CAPTURE(mpp::start_method_name(m));
  auto p = make(m, check_authkey, main_key);
  CHECK(p.authkey() == main_key);
  p.start();
  p.join();
  CHECK(p.exitcode() == 0);
  CHECK_THROWS_AS(p.authkey(mpp::Bytes(32, std::byte{1})), mpp::ProcessError);

  const mpp::Bytes other(16, std::byte{0x5a});
  auto q = make(m, check_authkey, other);
  q.authkey(other);
  q.start();
  q.join();
  CHECK(q.exitcode() == 0);
  CHECK(mpp::current_process().authkey() == main_key);
}
