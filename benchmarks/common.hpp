// benchmarks/common.hpp: the little every benchmark program shares (peers and mpp alike).
//
// Protocol (see benchmarks/README.md): a program takes `[--quick] [--reps N] [FILTER]` and prints
// one JSON object per line and per repetition on stdout:
//   {"workload":"pipe.8B.throughput","system":"pipe","value":1.2e6,"unit":"msg/s","higher_is_better":true}
// A failed benchmark prints {"workload":...,"system":...,"error":"..."} instead, so the harness
// shows "failed" rather than a number. Diagnostics go to stderr.
//
// Nothing here includes mpp: the peers must not depend on the library they are compared with.
#pragma once

#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <initializer_list>
#include <new>
#include <optional>
#include <regex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

namespace bench {

inline constexpr std::size_t kCacheLine = 64;

// ---------------------------------------------------------------------------------------------
// Options

struct Options {
  bool quick = false;
  int reps = 7;  // --quick: 5
  std::optional<std::regex> filter;

  /// Pick a size: the full-run one, or the smaller --quick one.
  [[nodiscard]] std::int64_t n(std::int64_t full, std::int64_t quick_n) const {
    return quick ? quick_n : full;
  }
  [[nodiscard]] bool selected(std::string_view workload) const {
    return !filter || std::regex_search(workload.begin(), workload.end(), *filter);
  }
};

inline Options parse_args(int argc, char** argv) {
  Options o;
  bool reps_given = false;
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    if (a == "--quick") {
      o.quick = true;
    } else if (a == "--reps" && i + 1 < argc) {
      o.reps = std::atoi(argv[++i]);
      reps_given = true;
    } else if (!a.empty() && a[0] != '-') {
      o.filter.emplace(argv[i]);
    } else {
      std::fprintf(stderr, "usage: %s [--quick] [--reps N] [FILTER]\n", argv[0]);
      std::exit(2);
    }
  }
  if (o.quick && !reps_given) o.reps = 5;
  if (o.reps < 1) o.reps = 1;
  return o;
}

// ---------------------------------------------------------------------------------------------
// Time

/// CLOCK_MONOTONIC in ns: one clock for all processes, so a child's timestamps compare with
/// another child's.
inline std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
inline double seconds(std::int64_t ns) { return static_cast<double>(ns) * 1e-9; }

/// Keep the optimiser from dropping work whose result is otherwise unused.
template <class T>
inline void escape(T* p) {
  asm volatile("" : : "g"(p) : "memory");
}
inline void cpu_relax() { __builtin_ia32_pause(); }

// ---------------------------------------------------------------------------------------------
// Failure handling. A benchmark must never hang and never report a number it did not verify.

[[noreturn]] inline void fail(const std::string& what) { throw std::runtime_error(what); }
inline void check(bool ok, const char* what) {
  if (!ok) fail(what);
}
/// Throw errno's message for a failed system call.
[[noreturn]] inline void sys_fail(const char* call) {
  throw std::system_error(errno, std::generic_category(), call);
}

namespace detail {
inline constexpr int kMaxChildren = 64;
inline constexpr int kMaxNames = 16;
inline pid_t g_children[kMaxChildren];
inline std::atomic<int> g_nchildren{0};
inline char g_names[kMaxNames][64];  // "shm:/name" or "sem:/name", removed if we die
inline char g_timeout_line[512];     // the error line to print when the watchdog fires

inline void kill_children() {
  int n = g_nchildren.load();
  for (int i = 0; i < n; ++i)
    if (g_children[i] > 0) ::kill(g_children[i], SIGKILL);
}
/// After a failure: make sure no child of this run outlives it, and reap them.
inline void reap_children() {
  kill_children();
  int n = g_nchildren.load();
  for (int i = 0; i < n; ++i) {
    int status;
    while (::waitpid(g_children[i], &status, 0) < 0 && errno == EINTR) {
    }
  }
  g_nchildren = 0;
}
inline void remove_names() {
  for (auto& n : g_names) {
    if (std::strncmp(n, "shm:", 4) == 0) ::shm_unlink(n + 4);
    if (std::strncmp(n, "sem:", 4) == 0) {
      // sem_unlink is not async-signal-safe on paper; on glibc it is unlink() of /dev/shm/sem.X.
      char path[96];
      std::snprintf(path, sizeof path, "/dev/shm/sem.%s", n + 5);
      ::unlink(path);
    }
  }
}
inline void on_alarm(int) {
  kill_children();
  remove_names();
  ssize_t ignored = ::write(1, g_timeout_line, std::strlen(g_timeout_line));
  (void)ignored;
  _exit(3);
}
}  // namespace detail

/// Remember a named object ("shm:/x" for shm_open names, "sem:/x" for sem_open names) so that a
/// watchdog exit still removes it. Call forget_name() once it is removed normally.
inline void remember_name(const std::string& tagged) {
  for (auto& n : detail::g_names)
    if (n[0] == 0) {
      std::snprintf(n, sizeof n, "%s", tagged.c_str());
      return;
    }
}
inline void forget_name(const std::string& tagged) {
  for (auto& n : detail::g_names)
    if (tagged == n) n[0] = 0;
}
/// A name unique to this process and call, for named kernel objects.
inline std::string unique_name(std::string_view what) {
  static int counter = 0;
  return "mppbench." + std::string(what) + "." + std::to_string(::getpid()) + "." +
         std::to_string(++counter);
}

// ---------------------------------------------------------------------------------------------
// Processes

inline int cores() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) != 0) return 1;
  return CPU_COUNT(&set);
}

/// Pin the calling process to core `i mod cores`; with one core there is nothing to pin.
/// Two-process benchmarks pass 0 and 1, so the sides run on different cores.
inline void pin(int i) {
  int n = cores();
  if (n < 2) return;
  cpu_set_t all;
  sched_getaffinity(0, sizeof all, &all);
  int want = i % n;
  int seen = 0;
  for (std::size_t c = 0; c < CPU_SETSIZE; ++c) {
    if (!CPU_ISSET(c, &all)) continue;
    if (seen++ == want) {
      cpu_set_t one;
      CPU_ZERO(&one);
      CPU_SET(c, &one);
      sched_setaffinity(0, sizeof one, &one);
      return;
    }
  }
}

/// Fork a child that is pinned to core `core` (or unpinned if core < 0), dies with its parent,
/// runs `body` and exits 0, or 1 after printing what it threw.
template <class F>
pid_t spawn(int core, F&& body) {
  std::fflush(nullptr);  // no duplicated stdio buffers in the child
  pid_t parent = ::getpid();
  pid_t pid = ::fork();
  if (pid < 0) sys_fail("fork");
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) _exit(1);  // the parent died before prctl
    ::alarm(0);
    detail::g_nchildren = 0;
    if (core >= 0) pin(core);
    int rc = 0;
    try {
      body();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "child %d: %s\n", ::getpid(), e.what());
      rc = 1;
    }
    std::fflush(nullptr);
    _exit(rc);
  }
  int i = detail::g_nchildren.load();
  if (i < detail::kMaxChildren) {
    detail::g_children[i] = pid;
    detail::g_nchildren = i + 1;
  }
  return pid;
}

/// Wait for every child; throw if any did not exit 0 (its data check failed or it crashed).
/// The first failure kills the others at once, so a dead consumer cannot leave a producer blocked.
inline void join(std::vector<pid_t>& pids) {
  std::string bad;
  std::size_t left = pids.size();
  while (left > 0) {
    int status = 0;
    pid_t r = ::waitpid(-1, &status, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) sys_fail("waitpid");
    auto it = std::find(pids.begin(), pids.end(), r);
    if (it == pids.end()) continue;  // not one of this run's children
    *it = -1;
    --left;
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) continue;
    bad += " child " + std::to_string(r) +
           (WIFSIGNALED(status) ? " killed by signal " + std::to_string(WTERMSIG(status))
                                : " exited " + std::to_string(WEXITSTATUS(status)));
    for (pid_t p : pids)
      if (p > 0) ::kill(p, SIGKILL);
  }
  pids.clear();
  detail::g_nchildren = 0;
  if (!bad.empty()) fail("child failure:" + bad);
}

/// A T placed in an anonymous MAP_SHARED mapping before fork, so parent and children share it.
template <class T>
class Shared {
 public:
  template <class... A>
  explicit Shared(A&&... args) {
    void* p = ::mmap(nullptr, sizeof(T), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) sys_fail("mmap");
    p_ = new (p) T(std::forward<A>(args)...);
  }
  ~Shared() {
    p_->~T();
    ::munmap(p_, sizeof(T));
  }
  Shared(const Shared&) = delete;
  Shared& operator=(const Shared&) = delete;
  T* operator->() const { return p_; }
  T& operator*() const { return *p_; }
  T* get() const { return p_; }

 private:
  T* p_;
};

/// Start line for the processes of one run: each child calls wait(), the parent calls
/// release(n) once all n are ready, so setup (open, attach, first page faults) is not timed.
struct StartLine {
  alignas(kCacheLine) std::atomic<int> ready{0};
  alignas(kCacheLine) std::atomic<int> go{0};

  void wait() {
    ready.fetch_add(1);
    while (go.load(std::memory_order_acquire) == 0) sched_yield();
  }
  void release(int n) {
    while (ready.load() < n) sched_yield();
    go.store(1, std::memory_order_release);
  }
};

/// Per-process start/end timestamps written by children; total rate = ops / (last end - first
/// start), i.e. every process's work counts and the slowest one sets the time.
struct Spans {
  static constexpr int kMax = 8;
  std::int64_t start[kMax]{};
  std::int64_t end[kMax]{};
  [[nodiscard]] double elapsed_s(int n) const {
    std::int64_t lo = start[0], hi = end[0];
    for (int i = 1; i < n; ++i) {
      lo = std::min(lo, start[i]);
      hi = std::max(hi, end[i]);
    }
    return seconds(hi - lo);
  }
};

// ---------------------------------------------------------------------------------------------
// Running and reporting

struct Spec {
  const char* workload;  // shared across systems, from benchmarks/workloads.py
  const char* system;
  const char* unit;
  bool higher_is_better;
};

inline void print_value(const Spec& s, double v, const std::string& note = {}) {
  std::printf(
      "{\"workload\":\"%s\",\"system\":\"%s\",\"value\":%.6g,\"unit\":\"%s\","
      "\"higher_is_better\":%s%s%s%s}\n",
      s.workload, s.system, v, s.unit, s.higher_is_better ? "true" : "false",
      note.empty() ? "" : ",\"note\":\"", note.c_str(), note.empty() ? "" : "\"");
  std::fflush(stdout);
}

inline std::string json_escape(std::string_view in) {
  std::string out;
  for (char c : in) {
    if (c == '"' || c == '\\') out += '\\';
    out += (c == '\n' || c == '\t') ? ' ' : c;
  }
  return out;
}

inline void print_error(const Spec& s, std::string_view what) {
  std::printf("{\"workload\":\"%s\",\"system\":\"%s\",\"error\":\"%s\"}\n", s.workload, s.system,
              json_escape(what).c_str());
  std::fflush(stdout);
}

/// Seconds one repetition may take before the watchdog kills it (and the program).
inline constexpr unsigned kRepTimeoutS = 30;

/// Run `measure` (returns the value in the specs' unit) opt.reps times if the filter selects any of
/// `specs`, printing a result line per repetition and selected spec. Several specs mean one
/// measurement shown on several workloads (a limit that bounds both pipe.* and queue.*).
/// A repetition that throws ends this benchmark with an error line; one that hangs is killed by
/// the watchdog, which ends the program.
template <class F>
void run(const Options& opt, std::initializer_list<Spec> specs, F&& measure,
         const std::string& note = {}) {
  std::vector<Spec> chosen;
  for (const Spec& s : specs)
    if (opt.selected(s.workload)) chosen.push_back(s);
  if (chosen.empty()) return;
  const Spec& first = chosen.front();
  std::snprintf(detail::g_timeout_line, sizeof detail::g_timeout_line,
                "{\"workload\":\"%s\",\"system\":\"%s\",\"error\":\"timed out after %u s\"}\n",
                first.workload, first.system, kRepTimeoutS);
  static bool handler_installed = false;
  if (!handler_installed) {
    struct sigaction sa {};
    sa.sa_handler = detail::on_alarm;
    sigaction(SIGALRM, &sa, nullptr);
    handler_installed = true;
  }
  for (int r = 0; r < opt.reps; ++r) {
    ::alarm(kRepTimeoutS);
    try {
      double v = measure();
      ::alarm(0);
      for (const Spec& s : chosen) print_value(s, v, note);
    } catch (const std::exception& e) {
      ::alarm(0);
      detail::reap_children();
      std::fprintf(stderr, "%s/%s: %s\n", first.workload, first.system, e.what());
      for (const Spec& s : chosen) print_error(s, e.what());
      return;
    }
  }
}

template <class F>
void run(const Options& opt, const Spec& spec, F&& measure, const std::string& note = {}) {
  run(opt, {spec}, std::forward<F>(measure), note);
}

}  // namespace bench
