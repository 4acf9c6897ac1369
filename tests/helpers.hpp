// Helpers shared by the tests: unique object names (so `ctest -j` works) and child processes
// for tests of the layers below mpp::Process.
#pragma once

#include <fmt/format.h>
#include <mpp/detail/config.hpp>
#include <mpp/detail/os.hpp>
#include <mpp/errors.hpp>

#if defined(MPP_OS_POSIX)
#  include <signal.h>
#  include <sys/wait.h>
#  include <unistd.h>
#  include <cerrno>
#endif

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <string_view>
#include <thread>
#include <typeinfo>
#include <utility>

#include "catch.hpp"

namespace mpp_test {

/// A name no other test (or test process) uses: "mpp.test.<pid>.<n>.<tag>".
inline std::string unique_name(std::string_view tag) {
  static std::atomic<int> counter{0};
  return fmt::format("mpp.test.{}.{}.{}", mpp::detail::os::current_pid(), counter.fetch_add(1),
                     tag);
}

/// Seconds elapsed since `t0` on the steady clock.
/// The integer value of environment variable `name` (a test knob such as MPP_KILL_REPS), or
/// `fallback` when it is unset or empty.
inline long env_long(const char* name, long fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::atol(v) : fallback;
}

inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

#if defined(MPP_OS_POSIX)

/// Runs `fn` in a forked child whose exit status is fn's return value (1 on an exception).
/// Returns the child's pid; collect it with wait_child().
template <class F>
pid_t fork_child(F&& fn) {
  std::fflush(nullptr);  // or the child would print the parent's buffered output again
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    int rc = 1;
    try {
      rc = fn();
    } catch (const std::exception& e) {
      fmt::print(stderr, "child {} failed: {}\n", ::getpid(), e.what());
    }
    std::fflush(nullptr);
    ::_exit(rc);
  }
  return pid;
}

/// Waits for a child; returns its exit code, or -signal if a signal killed it.
inline int wait_child(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return -1000;
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return -WTERMSIG(status);
  return -1000;
}

/// What run_bounded() returns for a child that was still running at its limit (a hang).
inline constexpr int kHung = -1000;

/// Runs `fn` in a forked child that must finish within `limit`: a regression that hangs fails
/// (the child is SIGKILLed, kHung returned) instead of blocking the suite. Returns the child's
/// exit code, or -signal.
template <class Rep, class Period, class F>
int run_bounded(std::chrono::duration<Rep, Period> limit, F&& fn) {
  const pid_t pid = fork_child(std::forward<F>(fn));
  const auto until = std::chrono::steady_clock::now() + limit;
  for (;;) {
    int status = 0;
    const pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
    if (r < 0 && errno != EINTR) return -2000;
    if (std::chrono::steady_clock::now() > until) {
      ::kill(pid, SIGKILL);
      (void)wait_child(pid);
      return kHung;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

/// Runs this test executable again (an unrelated process: exec, not fork) on the hidden test
/// case `spec`, passing `name` in the environment variable MPP_TEST_OBJECT. Returns its exit code.
inline int run_unrelated(const char* spec, const std::string& name) {
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::setenv("MPP_TEST_OBJECT", name.c_str(), 1);
    char self[] = "/proc/self/exe";
    char* argv[] = {self, const_cast<char*>(spec), nullptr};
    ::execv(self, argv);
    ::_exit(127);
  }
  return wait_child(pid);
}

#else  // Windows: no fork; run_unrelated re-executes the test program through the os backend

/// Runs this test executable again (an unrelated process) on the hidden test case `spec`,
/// passing `name` in the environment variable MPP_TEST_OBJECT. Returns its exit code.
inline int run_unrelated(const char* spec, const std::string& name) {
  namespace os = mpp::detail::os;
  std::fflush(nullptr);
  const std::string self = os::self_executable();
  const auto pid = os::spawn_program(self, {self, spec}, {"MPP_TEST_OBJECT=" + name}, {});
  while (!os::wait_process_exit(pid)) {
  }
  return os::poll_process(pid).value_or(-1000);
}

#endif  // MPP_OS_POSIX

/// True if `op` raises E; anything else it raises is printed (and false), as is raising nothing.
template <class E, class F>
bool raises(F&& op) {
  try {
    op();
  } catch (const E&) {
    return true;
  } catch (const std::exception& e) {
    fmt::print(stderr, "expected {}, got: {}\n", typeid(E).name(), e.what());
    return false;
  }
  return false;
}

/// True if `op` raises mpp::CorruptedError (see raises()).
template <class F>
bool corrupted(F&& op) {
  return raises<mpp::CorruptedError>(std::forward<F>(op));
}

/// Calls `op`, treating an mpp::Error as an accepted outcome (on a corrupted object); other
/// exceptions escape.
template <class F>
void tolerate(F&& op) {
  try {
    op();
  } catch (const mpp::Error&) {
  }
}

}  // namespace mpp_test
