// The crash-point hook of the test suite. A test file that includes this header (once per test
// executable, first: before any mpp header) is compiled with MPP_CRASH_POINTS, so every
// MPP_CRASH_POINT(name) in the library calls mpp::detail::crash_point() below, which SIGKILLs the
// process when it is armed for that point. Only forked children arm it (never on Windows).
//
//   MPP_CRASH_AT=point[:n]  any process of the binary SIGKILLs itself at the n-th (default 1st)
//                           pass through `point` — for reproducing one crash point by hand.
#pragma once

#define MPP_CRASH_POINTS 1
#include <mpp/detail/config.hpp>

#include "helpers.hpp"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <set>
#include <string>
#include <vector>

#if defined(MPP_OS_POSIX)
#  include <fcntl.h>
#  include <poll.h>
#  include <signal.h>
#  include <sys/mman.h>
#  include <sys/stat.h>
#  include <unistd.h>

#  include <algorithm>
#  include <chrono>
#  include <csignal>
#  include <map>

#  include <mpp/detail/registry.hpp>
#  include <mpp/segment.hpp>
#endif

namespace mpp_test::crash_points {

/// Process-local state (each forked child arms its own copy).
struct State {
  char target[96] = {};                   ///< point to die at; empty: none
  long countdown = 0;                     ///< die at this pass (1 = the first)
  int record_fd = -1;                     ///< >= 0: write each new point name passed, '\n'-ended
  std::set<std::string>* seen = nullptr;  ///< non-null: collect the names of the points passed
  char recorded[32][96] = {};
  int nrecorded = 0;
};

inline State& state() noexcept {
  static State s = [] {
    State st;
    if (const char* env = std::getenv("MPP_CRASH_AT")) {
      const std::string v(env);
      const auto colon = v.find(':');
      st.countdown = colon == std::string::npos ? 1 : std::atol(v.c_str() + colon + 1);
      std::snprintf(st.target, sizeof st.target, "%s", v.substr(0, colon).c_str());
    }
    return st;
  }();
  return s;
}

/// Arms this process to SIGKILL itself at the `hit`-th pass through point `name`.
inline void arm(const std::string& name, long hit = 1) noexcept {
  auto& s = state();
  std::snprintf(s.target, sizeof s.target, "%s", name.c_str());
  s.countdown = hit;
}

/// Makes this process write the name of each crash point it passes (once) to `fd`.
inline void record_to(int fd) noexcept { state().record_fd = fd; }

/// Collects the names of the crash points this process passes into `*names` (nullptr: stop).
inline void collect_into(std::set<std::string>* names) noexcept { state().seen = names; }

#if defined(MPP_OS_POSIX)
/// Runs `workload` in a forked child that records the crash points it passes; returns their names.
template <class F>
std::vector<std::string> discover(F&& workload) {
  int p[2];
  REQUIRE(::pipe(p) == 0);
  const pid_t child = mpp_test::fork_child([&] {
    ::close(p[0]);
    record_to(p[1]);
    return workload();
  });
  ::close(p[1]);
  std::string all;
  char buf[512];
  ssize_t n;
  while ((n = ::read(p[0], buf, sizeof buf)) > 0) all.append(buf, static_cast<std::size_t>(n));
  ::close(p[0]);
  CHECK(mpp_test::wait_child(child) == 0);
  std::vector<std::string> names;
  for (std::size_t b = 0, e; (e = all.find('\n', b)) != std::string::npos; b = e + 1)
    names.push_back(all.substr(b, e - b));
  return names;
}

/// Runs `workload` in a forked child armed to die at the `hit`-th pass through `point`.
/// Returns: true if it died there (SIGKILL), false if it finished without reaching that hit.
template <class F>
bool run_until(const std::string& point, long hit, F&& workload) {
  const pid_t child = mpp_test::fork_child([&] {
    arm(point, hit);
    return workload();
  });
  const int rc = mpp_test::wait_child(child);
  INFO("crash point " << point << " hit " << hit << ": child status " << rc);
  CHECK((rc == -SIGKILL || rc == 0));
  return rc == -SIGKILL;
}
#endif

}  // namespace mpp_test::crash_points

#if defined(MPP_OS_POSIX)
/// Fixtures of the kill tests: test segments, names in /dev/shm, "ready" signals from children,
/// children that hold an object until they are killed.
namespace mpp_test::kill {
using mpp::detail::Segment;
using mpp::detail::SegmentSpec;

inline SegmentSpec spec_of(std::uint64_t bytes = 4096) {
  return SegmentSpec{mpp::Kind::test, mpp::type_info<std::uint64_t>(), bytes, 1};
}
inline Segment open_test(const std::string& name, const mpp::NamedOptions& o = {}) {
  return Segment::open(name, mpp::Kind::test, mpp::type_info<std::uint64_t>(), o);
}

inline bool shm_exists(const std::string& name) {
  struct stat st {};
  return ::lstat(("/dev/shm/" + name).c_str(), &st) == 0;
}

inline std::vector<std::string> names_with(const std::string& prefix) {
  return mpp::detail::os::shm_list(prefix);
}

/// A pipe used to hear "ready" from children.
struct Signal {
  int fd[2]{-1, -1};
  Signal() { REQUIRE(::pipe(fd) == 0); }
  ~Signal() {
    ::close(fd[0]);
    ::close(fd[1]);
  }
  void post() const {
    char c = 1;
    (void)!::write(fd[1], &c, 1);
  }
  /// Waits for `n` posts; fails the test after 60 s (a child that died before posting).
  void wait(int n = 1) const {
    for (int i = 0; i < n; ++i) {
      pollfd p{fd[0], POLLIN, 0};
      int rc;
      while ((rc = ::poll(&p, 1, 60000)) < 0 && errno == EINTR) {
      }
      REQUIRE(rc == 1);  // 0: nothing posted within 60 s
      char c;
      REQUIRE(::read(fd[0], &c, 1) == 1);
    }
  }
};

/// Forks a child that runs `setup`, keeps its result alive, posts `ready` and sleeps until killed.
template <class F>
pid_t holder(const Signal& ready, F&& setup) {
  return mpp_test::fork_child([&] {
    auto keep = setup();
    ready.post();
    for (;;) ::pause();
    return 0;
  });
}

inline void kill_and_reap(pid_t pid) {
  ::kill(pid, SIGKILL);
  CHECK(mpp_test::wait_child(pid) == -SIGKILL);
}

}  // namespace mpp_test::kill
namespace kt = mpp_test::kill;

// The vocabulary of the kill and hostile-peer suites.
using namespace std::chrono_literals;
using mpp::detail::ProcessRef;
using mpp::detail::Segment;
using mpp::detail::SegmentSpec;
using mpp_test::tolerate;
namespace reg = mpp::detail::registry;

// Children of a test binary must not inherit (and print again) the parent's buffered output.
static const bool stdout_unbuffered = [] {
  std::setvbuf(stdout, nullptr, _IONBF, 0);
  return true;
}();
#endif

namespace mpp::detail {
void crash_point(const char* name) noexcept {
  auto& s = mpp_test::crash_points::state();
  if (s.seen != nullptr) s.seen->insert(name);
#if defined(MPP_OS_POSIX)
  if (s.record_fd >= 0) {
    bool known = false;
    for (int i = 0; i < s.nrecorded && !known; ++i) known = std::strcmp(s.recorded[i], name) == 0;
    if (!known && s.nrecorded < 32) {
      std::snprintf(s.recorded[s.nrecorded++], sizeof s.recorded[0], "%s", name);
      const std::string line = std::string(name) + "\n";
      (void)!::write(s.record_fd, line.data(), line.size());
    }
  }
#endif
  if (s.target[0] != '\0' && std::strcmp(s.target, name) == 0 && --s.countdown == 0) {
#if defined(MPP_OS_POSIX)
    ::kill(::getpid(), SIGKILL);
#else
    std::_Exit(137);  // never armed on Windows (no fork)
#endif
  }
}
}  // namespace mpp::detail
