// mpp — Process: run a callable in a child process, like Python's multiprocessing.Process.
// Three start methods: fork (copy of the parent), spawn (re-executes the program, whose main()
// calls mpp::bootstrap first) and forkserver (a single-threaded server, itself a re-executed copy
// of the program, forks the children). spawn and forkserver run functions registered by name
// (MPP_REGISTER / mpp::register_function); their arguments travel through mpp::codec. Exit codes
// follow Python: 0, mpp::exit(n), 1 for an escaped exception, -N for signal N.
//
// The machinery lives in detail/: function_registry.hpp (what can run by name), launch.hpp (the
// shared state, fork and spawn, waiting and reaping) and forkserver.hpp (the fork server).
#pragma once

#include <fmt/format.h>

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "codec.hpp"
#include "detail/os.hpp"
#include "errors.hpp"
#include "timeout.hpp"

namespace mpp {

/// How a child process is created (Python's start methods).
enum class StartMethod {
  fork,        ///< the child is a copy of the parent and runs any callable (POSIX default)
  spawn,       ///< the program is re-executed and runs a registered function
  forkserver,  ///< a single-threaded server process forks children that run registered functions
};

/// Python's name of a start method ("fork", "spawn", "forkserver").
constexpr std::string_view start_method_name(StartMethod m) noexcept {
  switch (m) {
    case StartMethod::fork:
      return "fork";
    case StartMethod::spawn:
      return "spawn";
    case StartMethod::forkserver:
      return "forkserver";
  }
  return "unknown";
}

//!Returns: the StartMethod called `name`. Throws: ValueError for an unknown name.
inline StartMethod parse_start_method(std::string_view name) {
  for (auto m : {StartMethod::fork, StartMethod::spawn, StartMethod::forkserver})
    if (start_method_name(m) == name) return m;
  detail::fail<ValueError>(
      "cannot find context for '{}': the start methods are 'fork', 'spawn' "
      "and 'forkserver'",
      name);
}

/// Options of a Process (Python's keyword arguments name= and daemon=).
struct ProcessOptions {
  std::string name{};  ///< empty: "Process-N" as Python names them
  /// terminated when the parent exits; empty: the creating process's own flag (false in the main
  /// process), as Python's Process inherits its creator's daemon setting
  std::optional<bool> daemon{};
  std::optional<StartMethod> start_method{};  ///< empty: get_start_method() at start()
};

}  // namespace mpp

// The machinery below the API; it uses StartMethod and ProcessOptions, declared above.
#include "detail/forkserver.hpp"
#include "detail/function_registry.hpp"
#include "detail/launch.hpp"

namespace mpp {

class Process;
/// The Process object of the calling process (Python's current_process()).
inline Process current_process();

//!Effects: ends the calling process target with exit code `code` (Python's sys.exit(n) in a
//! child): inside a Process target it unwinds the target's stack, then the child exits with
//! `code`; elsewhere in a child it flushes stdio and exits at once; in the main process it calls
//! std::exit(code).
[[noreturn]] inline void exit(int code) {
  if (detail::tl_in_target) throw detail::ExitRequest{code};
  if (!detail::globals().is_main) detail::os::exit_process(code);
  std::fflush(nullptr);
  std::exit(code);
}

/// A child process running a callable (Python's multiprocessing.Process). Copies share the same
/// process; a Process that is destroyed while its child runs leaves the child running (it is
/// still joined at exit, as in Python).
class Process {
 public:
  /// The handle type of sentinel(): a file descriptor on POSIX, a HANDLE on Windows.
  using native_handle = detail::os::native_handle;

  //!Effects: prepares a process that will run `f(args...)` (copies of them); nothing runs until
  //! start(). With the fork method any callable works; spawn and forkserver need a registered
  //! function (MPP_REGISTER) whose parameters are Encodable.
  template <class F, class... Args>
  requires(std::is_invocable_v<std::decay_t<F>&, std::decay_t<Args>&&...> ||
           std::is_invocable_v<std::decay_t<F>&,
                               std::decay_t<Args>&...>) explicit Process(F&& f, Args&&... args)
      : Process(ProcessOptions{}, std::forward<F>(f), std::forward<Args>(args)...) {}

  /// As above, with a name, daemon flag or start method (`Process p{{.name = "w"}, f, x}`).
  template <class F, class... Args>
  requires(std::is_invocable_v<std::decay_t<F>&, std::decay_t<Args>&&...> ||
           std::is_invocable_v<std::decay_t<F>&, std::decay_t<Args>&...>)
      Process(ProcessOptions options, F&& f, Args&&... args)
      : s_(detail::new_child_state(std::move(options))) {
    s_->target = std::make_unique<detail::BoundTarget<std::decay_t<F>, std::decay_t<Args>...>>(
        std::forward<F>(f), std::forward<Args>(args)...);
  }

  //!Effects: starts the child with the process's start method (Python's start()).
  //!Throws: ProcessError if already started, closed, not created by this process, when a daemon
  //! tries to have children, or when the child cannot be created (the message says why: an
  //! unregistered function, a program that does not call mpp::bootstrap, ...).
  void start();

  //!Effects: waits until the process ends (Python's join()).
  //!Throws: ProcessError if it was not started or is not a child of this process.
  void join() { (void)join(std::nullopt); }

  //!Effects: waits until the process ends or `timeout` elapses (nullopt: forever).
  //!Returns: true if the process has ended (exitcode() is then set).
  bool join(Timeout timeout) {
    check_joinable("join");
    auto code = detail::wait_exit(*s_, detail::Deadline::from(timeout));
    if (code && s_->role != detail::Role::parent) detail::forget_child(s_);
    return code.has_value();
  }

  /// Whether the process runs (Python's is_alive(); reaps it when it has ended).
  bool is_alive() const {
    check_open();
    if (s_->role == detail::Role::current) return true;
    if (s_->role == detail::Role::parent) return !detail::poll_exit(*s_).has_value();
    if (!s_->started) return false;
    check_child("is_alive");
    if (detail::poll_exit(*s_)) {
      detail::forget_child(s_);
      return false;
    }
    return true;
  }

  /// The process id, or nullopt before start() (Python's pid; ident is the same).
  std::optional<int> pid() const {
    check_open();
    if (s_->role == detail::Role::current) return detail::os::current_pid();
    if (!s_->started) return std::nullopt;
    return s_->pid.load();
  }
  /// Same as pid() (Python's ident).
  std::optional<int> ident() const { return pid(); }

  /// The exit code once the process has ended, else nullopt: 0, the mpp::exit() value, 1 for an
  /// escaped exception, -N for signal N (Python's exitcode).
  std::optional<int> exitcode() const {
    check_open();
    if (s_->role != detail::Role::child || !s_->started) return std::nullopt;
    return detail::poll_exit(*s_);
  }

  //!Effects: sends SIGTERM to the child (Python's terminate()); nothing if it has ended.
  void terminate() { signal(detail::os::kSigTerm, "terminate"); }
  //!Effects: sends SIGKILL to the child (Python's kill()); nothing if it has ended.
  void kill() { signal(detail::os::kSigKill, "kill"); }

  //!Effects: releases the process's resources (its sentinel); afterwards most methods throw
  //! ValueError (Python's close()). Throws: ValueError if the process still runs.
  void close();

  /// The process's name (Python's name).
  const std::string& name() const noexcept { return s_->name; }
  /// Renames the process.
  void name(std::string n) { s_->name = std::move(n); }
  /// Whether the process is daemonic (terminated when its parent exits).
  bool daemon() const noexcept { return s_->daemon; }
  //!Effects: sets the daemon flag. Throws: ProcessError after start().
  void daemon(bool d) {
    if (s_->started) detail::fail<ProcessError>("process has already started");
    s_->daemon = d;
  }
  /// The authentication key (Python's authkey): 32 random bytes in the main process; a Process
  /// takes its creator's key when it is constructed, and its child starts with it under every
  /// start method. Connection authentication uses current_process().authkey().
  const Bytes& authkey() const noexcept { return s_->authkey; }
  //!Effects: sets the authentication key: of a process not started yet (its child gets it), or of
  //! current_process() (Processes constructed afterwards take it).
  //!Throws: ProcessError for a started child or the parent process (the key would be unused).
  void authkey(Bytes key) {
    if (s_->role == detail::Role::parent || (s_->role == detail::Role::child && s_->started))
      detail::fail<ProcessError>("the authkey of a started process cannot change");
    auto& g = detail::globals();
    std::lock_guard lock(g.mutex);  // new_child_state reads current_process()'s key
    s_->authkey = std::move(key);
  }
  /// The start method used (or to be used) by this process.
  StartMethod start_method() const {
    return s_->started ? s_->method : s_->requested_method.value_or(default_method());
  }

  //!Returns: a handle that becomes readable when the process ends (Python's sentinel), for
  //! poll()/select() loops. Owned by the Process (valid until close()).
  //!Throws: ValueError before start() or after close().
  native_handle sentinel() const {
    check_open();
    if (!s_->started || s_->role == detail::Role::current)
      detail::fail<ValueError>("process not started");
    detail::ensure_sentinel(*s_);
    return s_->sentinel.get();
  }

  //!Returns: Python's repr, e.g. "<Process name='Process-1' pid=4242 parent=4241 started>".
  std::string repr() const { return detail::process_repr(*s_); }

  /// True when both handles refer to the same process object.
  friend bool operator==(const Process& a, const Process& b) noexcept { return a.s_ == b.s_; }

  /// The default start method (set_start_method, else fork where available).
  static StartMethod default_method() {
    auto& g = detail::globals();
    std::lock_guard lock(g.mutex);
    return g.default_method.value_or(detail::os::kCanFork ? StartMethod::fork : StartMethod::spawn);
  }

 private:
  explicit Process(std::shared_ptr<detail::ProcessState> s) noexcept : s_(std::move(s)) {}
  friend Process current_process();
  friend std::optional<Process> parent_process();
  friend std::vector<Process> active_children();

  void check_open() const {
    if (s_->closed) detail::fail<ValueError>("process object is closed");
  }
  void check_child(const char* what) const {
    if (s_->creator_pid != detail::os::current_pid())
      detail::fail<ProcessError>("can only {} a child process (this one was created by pid {})",
                                 what, s_->creator_pid);
  }
  void check_joinable(const char* what) const {
    check_open();
    if (s_->role == detail::Role::current)
      detail::fail<ProcessError>("cannot {} the current process", what);
    if (s_->role == detail::Role::parent) return;
    check_child(what);
    if (!s_->started) detail::fail<ProcessError>("can only {} a started process", what);
  }
  void check_startable() const;
  void signal(int sig, const char* what) {
    check_joinable(what);
    if (s_->role != detail::Role::child)
      detail::fail<ProcessError>("can only {} a child process", what);
    detail::signal_child(*s_, sig);
  }

  std::shared_ptr<detail::ProcessState> s_;
};

inline Process current_process() { return Process(detail::globals().self); }

/// The parent of the calling process, or nullopt in the main process (Python's parent_process()).
inline std::optional<Process> parent_process() {
  auto& g = detail::globals();
  std::lock_guard lock(g.mutex);
  if (!g.parent) return std::nullopt;
  return Process(g.parent);
}

//!Returns: the children of this process that still run; reaps (forgets) those that have ended
//! (Python's active_children()).
inline std::vector<Process> active_children() {
  detail::reap_children();
  auto& g = detail::globals();
  std::lock_guard lock(g.mutex);
  std::vector<Process> out;
  for (auto& c : g.children) out.push_back(Process(c));
  return out;
}

//!Effects: registers `fn` to run when this process exits normally (Python's atexit.register):
//! the main process at std::exit or the return from main; a child started by mpp when its target
//! returns, calls mpp::exit or lets an exception escape, after its own children are joined.
//! Handlers run once, last registered first; a handler that throws is reported on stderr. A
//! forked child starts with none of its parent's (Python clears atexit in a forked child). Not run
//! when a signal ends the process, nor by mpp::exit outside the target.
//! std::atexit handlers a child registers itself also run under spawn and forkserver (the child
//! leaves through std::exit), never under fork, whose C atexit list is its parent's: use
//! mpp::atexit where a handler must run in a forked child.
inline void atexit(std::function<void()> fn) {
  auto& g = detail::globals();
  std::lock_guard lock(g.mutex);
  g.exit_functions.push_back(std::move(fn));
  if (!g.exit_functions_hooked) {
    std::atexit([] { detail::run_exit_functions(); });
    g.exit_functions_hooked = true;
  }
}

/// The number of CPUs this process may use (its affinity mask; at least 1).
inline int cpu_count() noexcept { return detail::os::cpu_count(); }

//!Effects: sets the default start method. Throws: ValueError for an unknown name;
//! ProcessError if a method was already set and `force` is false (as Python).
inline void set_start_method(StartMethod method, bool force = false) {
  auto& g = detail::globals();
  std::lock_guard lock(g.mutex);
  if (g.default_method && !force) detail::fail<ProcessError>("context has already been set");
  g.default_method = method;
}
/// As above, by name ("fork", "spawn", "forkserver").
inline void set_start_method(std::string_view method, bool force = false) {
  set_start_method(parse_start_method(method), force);
}

/// The name of the default start method ("fork" unless set_start_method chose another).
inline std::string_view get_start_method() { return start_method_name(Process::default_method()); }

/// The start methods this platform supports.
inline std::vector<std::string_view> get_all_start_methods() {
  if constexpr (detail::os::kCanFork)
    return {"fork", "spawn", "forkserver"};
  else
    return {"spawn"};
}

/// Sets the program that spawn and forkserver run (default: this program; Python's
/// set_executable()). It must call mpp::bootstrap(argc, argv) first thing in main.
inline void set_executable(std::string path) {
  auto& g = detail::globals();
  std::lock_guard lock(g.mutex);
  g.executable = std::move(path);
}

/// A start method bound to Process creation (Python's context objects).
class Context {
 public:
  /// A context for `method`; nullopt follows the default start method.
  explicit Context(std::optional<StartMethod> method = std::nullopt) noexcept : method_(method) {}
  /// The start method of this context.
  StartMethod start_method() const { return method_ ? *method_ : Process::default_method(); }
  /// Python's ctx.get_start_method().
  std::string_view get_start_method() const { return start_method_name(start_method()); }
  /// A Process using this context's start method (Python's ctx.Process(...)).
  template <class F, class... Args>
  Process process(F&& f, Args&&... args) const {
    return process(ProcessOptions{}, std::forward<F>(f), std::forward<Args>(args)...);
  }
  /// As above, with options (their start method is replaced by the context's).
  template <class F, class... Args>
  Process process(ProcessOptions options, F&& f, Args&&... args) const {
    options.start_method = start_method();
    return Process(std::move(options), std::forward<F>(f), std::forward<Args>(args)...);
  }

 private:
  std::optional<StartMethod> method_;
};

/// The context of a start method (Python's get_context(method)); no argument: the default.
inline Context get_context() noexcept { return Context{}; }
/// As above, for `method`.
inline Context get_context(StartMethod method) noexcept { return Context{method}; }
//!Returns: the context called `method`. Throws: ValueError for an unknown name.
inline Context get_context(std::string_view method) { return Context{parse_start_method(method)}; }

//!Effects: registers `fn` (a function pointer, or a capture-less lambda) under `name`, so that
//! spawn and forkserver can run it in the re-executed program. Call it identically in every run
//! of the program before mpp::bootstrap (or use MPP_REGISTER at namespace scope).
//!Returns: true (so it can initialise a static). Throws: InvalidArgument if another function
//! already has this name.
template <class F>
bool register_function(std::string_view name, F fn) {
  static_assert(detail::Transportable<F>,
                "mpp::register_function needs a function pointer or a capture-less lambda whose "
                "parameter types are Encodable");
  return detail::register_transportable(name, fn);
}

//!Effects: call first thing in main (Python's freeze_support()): when this program was started
//! by mpp as a spawn child or as the fork server, it runs that role and exits; otherwise it
//! returns at once and records argv[0] for the children.
inline void bootstrap(int argc, const char* const* argv) {
  auto& g = detail::globals();
  {
    std::lock_guard lock(g.mutex);
    g.bootstrap_called = true;
    if (argc > 0 && argv != nullptr && argv[0] != nullptr) g.argv0 = argv[0];
  }
  const auto role = detail::os::get_env(detail::kBootstrapEnv);
  if (!role) return;
  detail::os::unset_env(detail::kBootstrapEnv);
  detail::run_bootstrap_role(*role);
}

// ---- Process members defined out of line --------------------------------------------------------

inline void Process::start() {
  check_startable();
  auto& s = *s_;
  const StartMethod m = s.requested_method ? *s.requested_method : default_method();
  detail::reap_children();
  std::fflush(nullptr);  // or a forked child would print the parent's buffered output again
  s.method = m;
  switch (m) {
    case StartMethod::fork:
      if constexpr (!detail::os::kCanFork)
        detail::fail<ProcessError>("the 'fork' start method is not available on this platform");
      detail::launch_fork(s);
      break;
    case StartMethod::spawn:
      detail::launch_spawn(s);
      break;
    case StartMethod::forkserver:
      detail::launch_forkserver(s);
      break;
  }
  s.started = true;
  s.target.reset();  // as Python drops _target: the parent no longer needs it
  auto& g = detail::globals();
  std::lock_guard lock(g.mutex);
  g.children.push_back(s_);
  detail::install_exit_handler();
}

inline void Process::check_startable() const {
  check_open();
  const auto& s = *s_;
  const auto& g = detail::globals();
  if (s.role != detail::Role::child || s.started)
    detail::fail<ProcessError>("cannot start a process twice ({})", s.name);
  if (s.creator_pid != detail::os::current_pid())
    detail::fail<ProcessError>("can only start a process object created by the current process");
  if (g.self && g.self->daemon)
    detail::fail<ProcessError>("daemonic processes are not allowed to have children");
  if (detail::os::get_env(detail::kBootstrapEnv))
    detail::fail<ProcessError>(
        "this program was started by mpp to run a function, but its main() did not call "
        "mpp::bootstrap(argc, argv) before starting processes: call it first thing in main()");
}

inline void Process::close() {
  if (s_->closed || s_->role == detail::Role::current) return;  // Python: a no-op for itself
  if (s_->role == detail::Role::child && s_->started) {
    if (!detail::poll_exit(*s_))
      detail::fail<ValueError>(
          "Cannot close a process while it is still running. You should "
          "first call join() or terminate().");
    detail::forget_child(s_);
    std::lock_guard lock(s_->reap_mutex);
    s_->sentinel.reset();
  }
  s_->target.reset();
  s_->closed = true;
}

}  // namespace mpp

#define MPP_DETAIL_CONCAT2(a, b) a##b
#define MPP_DETAIL_CONCAT(a, b) MPP_DETAIL_CONCAT2(a, b)
//! MPP_REGISTER(fn): registers function `fn` under the name "fn" for spawn and forkserver; use at
//! namespace scope (it defines a static initialised before main).
#define MPP_REGISTER(fn) MPP_REGISTER_AS(#fn, fn)
//! MPP_REGISTER_AS("name", fn): registers `fn` (a function or capture-less lambda) under "name".
#define MPP_REGISTER_AS(name, fn)                                                      \
  [[maybe_unused]] static const bool MPP_DETAIL_CONCAT(mpp_registered_, __COUNTER__) = \
      ::mpp::register_function(name, fn)

namespace fmt {
/// Formats a Process as Python's repr: `<Process name='Process-1' pid=4242 parent=4241 started>`.
template <>
struct formatter<mpp::Process> : formatter<std::string_view> {
  /// Writes `p.repr()`.
  template <class Ctx>
  auto format(const mpp::Process& p, Ctx& ctx) const {
    return formatter<std::string_view>::format(p.repr(), ctx);
  }
};
}  // namespace fmt
