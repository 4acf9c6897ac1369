// The crash tracker (detail/tracker.hpp): a program that dies abnormally — SIGKILL, SIGTERM,
// abort(), an uncaught exception — leaves none of its objects in /dev/shm once no live process
// uses them, with nothing for the user to run; a persistent object stays; an object that a live
// forked grandchild or a spawned program still uses stays until that process exits; the tracker
// is nobody's child, holds none of its program's descriptors and exits after it; MPP_NO_TRACKER=1
// turns it off. The crashing programs are spawned (a program of their own, with their own
// tracker), and each test polls /dev/shm with a bounded deadline.
#include <mpp/detail/registry.hpp>
#include <mpp/mpp.hpp>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "helpers.hpp"

#if defined(MPP_OS_POSIX)

#  include <dirent.h>
#  include <signal.h>
#  include <sys/stat.h>
#  include <sys/syscall.h>
#  include <unistd.h>

#  include <algorithm>
#  include <cstdio>
#  include <cstdlib>
#  include <fstream>
#  include <iterator>
#  include <sstream>
#  include <stdexcept>

using namespace std::chrono_literals;

namespace {

enum How { kKill, kTerm, kAbort, kUncaught };

int square(int x) { return x * x; }

void throw_uncaught() noexcept(false) { throw std::runtime_error("nobody catches this"); }

/// A program that creates one object of each kind (named ones under `prefix`, anonymous ones
/// "mpp.anon.<pid>.*"), reports them ready, then dies the way `how` says.
void crash_program(std::string prefix, int how, mpp::Event ready) {
  mpp::Lock lock;
  auto named_lock = mpp::Lock::create(prefix + "lock");
  mpp::Value<int> value(1);
  auto named_value = mpp::Value<int>::create(prefix + "value", 2);
  auto keep = mpp::Value<int>::create(prefix + "keep", 3, {.persistent = true});
  mpp::Queue<int> queue;
  queue.put(1);
  auto named_queue = mpp::Queue<std::string>::create(prefix + "queue");
  named_queue.put("pending");
  auto [left, right] = mpp::Pipe<int>();
  left.send(7);
  mpp::Manager manager;
  auto dict = manager.dict<std::string, int>();
  dict.set("a", 1);
  auto block = mpp::SharedMemory::create(prefix + "shm", 4096);
  mpp::PoolOptions po;
  po.processes = 2;
  po.start_method = mpp::StartMethod::fork;
  mpp::Pool pool(po);
  if (pool.map(square, std::vector<int>{1, 2, 3}) != std::vector<int>{1, 4, 9}) return;
  ready.set();
  switch (how) {
    case kAbort:
      std::abort();
    case kUncaught:
      std::thread(throw_uncaught).join();
      break;  // std::terminate
    default:
      break;
  }
  for (;;) ::pause();
}
MPP_REGISTER(crash_program);

/// A program that creates `prefix`held, forks a grandchild that keeps using it (after closing
/// every descriptor it inherited, the tracker's connection included, as a daemon does), and
/// waits to be killed.
void hold_program(std::string prefix, mpp::Event ready) {
  auto held = mpp::Value<int>::create(prefix + "held", 5);
  std::fflush(nullptr);
  const pid_t g = ::fork();
  if (g == 0) {
    ::syscall(SYS_close_range, 3u, ~0u, 0u);
    for (;;) {
      held.set(held.value() + 1);  // uses the inherited mapping
      ::pause();
    }
  }
  ready.set();
  for (;;) ::pause();
}
MPP_REGISTER(hold_program);

/// A program that opens the object `name` (it takes an attach slot), says so, and waits.
void open_and_wait(std::string name, mpp::Event ready) {
  auto v = mpp::Value<int>::open(name);
  ready.set();
  for (;;) ::pause();
}
MPP_REGISTER(open_and_wait);

/// A program that creates `prefix`shared, spawns a program that opens it (and then sets
/// `ready`), and waits to be killed.
void share_program(std::string prefix, mpp::Event ready) {
  auto shared = mpp::Value<int>::create(prefix + "shared", 5);
  auto user =
      mpp::get_context(mpp::StartMethod::spawn).process(open_and_wait, prefix + "shared", ready);
  user.start();
  for (;;) ::pause();
}
MPP_REGISTER(share_program);

/// A program that creates an object (which starts its tracker) and waits to be killed.
void create_and_wait(mpp::Event ready) {
  mpp::Lock lock;
  ready.set();
  for (;;) ::pause();
}
MPP_REGISTER(create_and_wait);

std::vector<std::string> shm_names() {
  std::vector<std::string> out;
  if (DIR* d = ::opendir("/dev/shm")) {
    while (const dirent* e = ::readdir(d)) out.emplace_back(e->d_name);
    ::closedir(d);
  }
  std::sort(out.begin(), out.end());
  return out;
}

bool shm_exists(const std::string& name) {
  struct stat st {};
  return ::lstat(("/dev/shm/" + name).c_str(), &st) == 0;
}

/// The direct children of `pid` (a Pool's workers, a forked grandchild).
std::vector<int> children_of(int pid) {
  std::vector<int> out;
  const std::string task = "/proc/" + std::to_string(pid) + "/task";
  if (DIR* d = ::opendir(task.c_str())) {
    while (const dirent* e = ::readdir(d)) {
      if (e->d_name[0] == '.') continue;
      std::ifstream f(task + "/" + e->d_name + "/children");
      int c;
      while (f >> c) out.push_back(c);
    }
    ::closedir(d);
  }
  return out;
}

/// The names in /dev/shm that belong to the program `family` (pids) ran under `prefix`.
std::vector<std::string> names_of(const std::string& prefix, const std::vector<int>& family) {
  std::vector<std::string> out;
  for (const auto& n : shm_names()) {
    bool mine = n.rfind(prefix, 0) == 0;
    for (int p : family) mine = mine || n.rfind("mpp.anon." + std::to_string(p) + ".", 0) == 0;
    if (mine) out.push_back(n);
  }
  return out;
}

/// Polls until `done()` holds or `bound` passes; returns done().
template <class F>
bool eventually(F&& done, std::chrono::milliseconds bound = 5s) {
  const auto until = std::chrono::steady_clock::now() + bound;
  while (!done() && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(20ms);
  return done();
}

bool process_gone(int pid) {
  return !mpp::detail::ProcessRef{pid, 0}.alive();  // a zombie counts as gone
}

}  // namespace

TEST_CASE(
    "Tracker: a program that dies abnormally leaves none of its objects, but its persistent ones",
    "[tracker][kill]") {
  const How how = GENERATE(kKill, kTerm, kAbort, kUncaught);
  const char* const labels[] = {"SIGKILL", "SIGTERM", "abort", "uncaught exception"};
  INFO("the program dies by " << labels[how]);
  const auto prefix = mpp_test::unique_name("trk") + ".";
  mpp::Event ready;
  auto p =
      mpp::get_context(mpp::StartMethod::spawn).process(crash_program, prefix, int(how), ready);
  p.start();
  REQUIRE(ready.wait(60s));
  const int pid = *p.pid();
  std::vector<int> family = children_of(pid);
  family.push_back(pid);
  const auto before = names_of(prefix, family);
  INFO("its objects: " << before.size());
  CHECK(before.size() >= 12);  // Lock, Value, Queue, Pipe, Manager, SharedMemory, Pool, named ones
  CHECK(std::find(before.begin(), before.end(), prefix + "keep") != before.end());

  if (how == kKill) p.kill();
  if (how == kTerm) p.terminate();
  REQUIRE(p.join(60s));
  const int expected[] = {-SIGKILL, -SIGTERM, -SIGABRT, -SIGABRT};
  CHECK(p.exitcode() == expected[how]);

  const std::vector<std::string> only_keep{prefix + "keep"};
  CHECK(eventually([&] { return names_of(prefix, family) == only_keep; }));
  CHECK(names_of(prefix, family) == only_keep);
  CHECK(mpp::unlink(prefix + "keep"));
}

TEST_CASE("Tracker: the tracker keeps an object that a live forked grandchild uses until it exits",
          "[tracker][kill]") {
  const auto prefix = mpp_test::unique_name("trk") + ".";
  const auto held = prefix + "held";
  mpp::Event ready;
  auto p = mpp::get_context(mpp::StartMethod::spawn).process(hold_program, prefix, ready);
  p.start();
  REQUIRE(ready.wait(60s));
  const auto grandchildren = children_of(*p.pid());
  REQUIRE(grandchildren.size() == 1);
  const int grandchild = grandchildren[0];
  p.kill();
  REQUIRE(p.join(60s));
  // The tracker has seen its program end (it sweeps every 100 ms): the grandchild still maps it.
  std::this_thread::sleep_for(1500ms);
  CHECK(shm_exists(held));
  CHECK(::kill(grandchild, SIGKILL) == 0);
  CHECK(eventually([&] { return process_gone(grandchild); }));
  CHECK(eventually([&] { return !shm_exists(held); }));
  if (shm_exists(held)) mpp::unlink(held);
}

TEST_CASE(
    "Tracker: the tracker keeps an object that a live spawned program has open until it exits",
    "[tracker][kill]") {
  const auto prefix = mpp_test::unique_name("trk") + ".";
  const auto shared = prefix + "shared";
  mpp::Event ready;
  auto p = mpp::get_context(mpp::StartMethod::spawn).process(share_program, prefix, ready);
  p.start();
  REQUIRE(ready.wait(60s));
  const auto users = children_of(*p.pid());
  REQUIRE(users.size() == 1);
  p.kill();
  REQUIRE(p.join(60s));
  std::this_thread::sleep_for(1500ms);  // the tracker has seen its program end
  CHECK(shm_exists(shared));            // the spawned user holds an attach slot
  CHECK(::kill(users[0], SIGKILL) == 0);
  CHECK(eventually([&] { return process_gone(users[0]); }));
  CHECK(eventually([&] { return !shm_exists(shared); }));
  if (shm_exists(shared)) mpp::unlink(shared);
}

TEST_CASE(
    "Tracker: the tracker is nobody's child, holds nothing of its program's, and exits after it",
    "[tracker][kill]") {
  // Its environment is its program's: a mark set for the spawned program finds its tracker.
  const auto mark = mpp_test::unique_name("mark");
  ::setenv("MPP_TEST_TRACKER_MARK", mark.c_str(), 1);
  mpp::Event ready;
  auto p = mpp::get_context(mpp::StartMethod::spawn).process(create_and_wait, ready);
  p.start();
  ::unsetenv("MPP_TEST_TRACKER_MARK");
  REQUIRE(ready.wait(60s));
  int tracker = 0;
  if (DIR* proc = ::opendir("/proc")) {
    while (const dirent* e = ::readdir(proc)) {
      const int pid = std::atoi(e->d_name);
      std::ifstream comm("/proc/" + std::to_string(pid) + "/comm"),
          env("/proc/" + std::to_string(pid) + "/environ");
      std::string c, all((std::istreambuf_iterator<char>(env)), std::istreambuf_iterator<char>());
      std::getline(comm, c);
      if (pid > 0 && c == "mpp-tracker" &&
          all.find("MPP_TEST_TRACKER_MARK=" + mark + '\0') != std::string::npos)
        tracker = pid;
    }
    ::closedir(proc);
  }
  REQUIRE(tracker > 0);
  std::ifstream stat("/proc/" + std::to_string(tracker) + "/stat");
  std::string line;
  std::getline(stat, line);
  std::istringstream fields(line.substr(line.rfind(')') + 2));
  char state;
  int ppid, pgrp, session;
  fields >> state >> ppid >> pgrp >> session;
  CHECK(ppid != *p.pid());  // its first process exited and was reaped: it was adopted
  CHECK(ppid != ::getpid());
  CHECK(session != ::getsid(0));  // a session of its own: a terminal's Ctrl-C does not reach it
  std::vector<std::string> fds;
  const std::string fd_dir = "/proc/" + std::to_string(tracker) + "/fd";
  if (DIR* d = ::opendir(fd_dir.c_str())) {
    while (const dirent* e = ::readdir(d)) {
      if (e->d_name[0] == '.') continue;
      char target[4096];
      const ssize_t n = ::readlink((fd_dir + "/" + e->d_name).c_str(), target, sizeof target - 1);
      fds.push_back(std::string(e->d_name) + "=" + std::string(target, n > 0 ? std::size_t(n) : 0));
    }
    ::closedir(d);
  }
  std::sort(fds.begin(), fds.end());
  std::string listed;
  for (const auto& f : fds) listed += f + " ";
  INFO("its descriptors: " << listed);
  REQUIRE(fds.size() == 4);  // stdin, stdout, stderr on /dev/null, its connection: nothing else
  CHECK(fds[0] == "0=/dev/null");
  CHECK(fds[1] == "1=/dev/null");
  CHECK(fds[2] == "2=/dev/null");
  CHECK(fds[3].rfind("3=socket:", 0) == 0);
  p.kill();
  REQUIRE(p.join(60s));
  CHECK(eventually([&] { return process_gone(tracker); }));
}

TEST_CASE("Tracker: MPP_NO_TRACKER=1 leaves a crashed program's objects to mpp gc",
          "[tracker][kill]") {
  const auto prefix = mpp_test::unique_name("trk") + ".";
  mpp::Event ready;
  ::setenv("MPP_NO_TRACKER", "1", 1);  // inherited by the spawned program
  auto p = mpp::get_context(mpp::StartMethod::spawn).process(hold_program, prefix, ready);
  p.start();
  ::unsetenv("MPP_NO_TRACKER");
  REQUIRE(ready.wait(60s));
  const auto grandchildren = children_of(*p.pid());
  REQUIRE(grandchildren.size() == 1);
  CHECK(::kill(grandchildren[0], SIGKILL) == 0);
  p.kill();
  REQUIRE(p.join(60s));
  CHECK(eventually([&] { return process_gone(grandchildren[0]); }));
  std::this_thread::sleep_for(1s);
  CHECK(shm_exists(prefix + "held"));
  const auto collected = mpp::detail::registry::gc(false, {}, prefix);
  REQUIRE(collected.size() == 1);
  CHECK(collected[0].removed);
  CHECK_FALSE(shm_exists(prefix + "held"));
}

#endif  // MPP_OS_POSIX
