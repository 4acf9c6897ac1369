// mpp — how a Process starts and ends, below the API of process.hpp: the state shared by the
// Process handles of one process, this process's view of itself and its children (Globals), the
// launch request and the framed records that travel over sockets, the child side (become the
// child, run the target, exit with Python's exit code), the parent side (poll, wait, signal,
// reap) and the fork and spawn launchers. The fork server lives in forkserver.hpp.
// Included by process.hpp once StartMethod and ProcessOptions are declared.
#pragma once

#include <fmt/core.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include "../codec.hpp"
#include "../errors.hpp"
#include "function_registry.hpp"
#include "liveness.hpp"
#include "os.hpp"
#include "wait.hpp"

#if defined(MPP_OS_POSIX)
#  include <spawn.h>
#  include <unistd.h>
#endif

namespace mpp::detail {

/// Thrown by mpp::exit() inside a process target; not a std::exception, so `catch (const
/// std::exception&)` in user code lets it through (like Python's SystemExit).
struct ExitRequest {
  int code;
};

/// True on the thread that runs a Process target.
inline thread_local bool tl_in_target = false;

// ---- what a child needs to know ---------------------------------------------------------------

/// Everything a spawned or forkserver child receives (and what a forked child is told).
struct LaunchRequest {
  std::string function;
  std::uint64_t signature = 0;
  std::string args;
  std::string name;
  std::vector<std::int32_t> identity;
  bool daemon = false;
  std::int32_t parent_pid = 0;
  std::uint32_t parent_start_tag = 0;
  std::string parent_name;
  std::uint8_t method = 0;  ///< the StartMethod that starts the child (its default afterwards)
  Bytes authkey;
  template <class A>
  void serialize(A& ar) {
    ar(function, signature, args, name, identity, daemon, parent_pid, parent_start_tag, parent_name,
       method, authkey);
  }
};

/// The function name and encoded arguments of a target, for spawn and forkserver.
struct LaunchSpec {
  std::string function;
  std::uint64_t signature = 0;
  std::string args;
};

/// A callable with its arguments, run once in the child.
struct Target {
  virtual ~Target() = default;
  /// Runs the callable (fork: in the copy of the parent).
  virtual void run() = 0;
  //!Returns: the registered name and encoded arguments. Throws: ProcessError if the callable is
  //! not registered or cannot be re-created in another program.
  virtual LaunchSpec launch_spec(StartMethod m) const = 0;
};

/// The Target of Process(f, args...): decayed copies of the callable and of its arguments.
template <class F, class... As>
struct BoundTarget final : Target {
  template <class G, class... Bs>
  explicit BoundTarget(G&& g, Bs&&... bs) : f(std::forward<G>(g)), args(std::forward<Bs>(bs)...) {}
  void run() override { call_with(f, args); }
  LaunchSpec launch_spec(StartMethod m) const override {
    if constexpr (Transportable<F>) {
      using Params = typename callable_traits<F>::params;
      const auto name = function_registry().name_of(function_key(f));
      if (!name)
        fail<ProcessError>(
            "the '{}' start method runs the target in a new program, so the function must be "
            "registered there by name: add MPP_REGISTER(your_function) at namespace scope (or "
            "call mpp::register_function(\"name\", fn) before mpp::bootstrap), or use the "
            "'fork' start method",
            start_method_name(m));
      return spec(Params{}, *name);
    } else {
      fail<ProcessError>(
          "the '{}' start method runs the target in a new program, which cannot re-create this "
          "callable ({}): use a registered plain function or capture-less lambda whose parameters "
          "are Encodable, or the 'fork' start method",
          start_method_name(m), type_name<F>());
    }
  }

  F f;
  std::tuple<As...> args;

 private:
  template <class... Ps>
  LaunchSpec spec(ParamList<Ps...> p, const std::string& name) const {
    if constexpr (sizeof...(Ps) == sizeof...(As)) {
      if constexpr ((std::is_constructible_v<Ps, const As&> && ...)) {
        return std::apply(
            [&](const As&... a) {
              return LaunchSpec{name, signature_of(p), encode_args(p, a...)};
            },
            args);
      }
    }
    fail<ProcessError>("the arguments given to '{}' do not convert to its parameter types", name);
  }
};

// ---- the state of a process, and of this program ---------------------------------------------

/// How long start() waits for a re-executed program to reach mpp::bootstrap.
inline constexpr std::chrono::seconds kBootstrapTimeout{60};

struct ProcessState;

/// This process's view of itself and its children (Python's _current_process, _children, ...).
struct Globals {
  std::mutex mutex;  ///< guards everything below
  bool is_main = true;
  std::vector<std::int32_t> identity;  ///< empty in the main process
  int counter = 0;                     ///< children created so far (for "Process-N")
  std::shared_ptr<ProcessState> self;  ///< what current_process() returns
  std::shared_ptr<ProcessState> parent;
  std::vector<std::shared_ptr<ProcessState>> children;  ///< started, not yet reaped
  bool exit_handler_installed = false;
  std::optional<StartMethod> default_method;
  bool bootstrap_called = false;
  std::string argv0;
  std::string executable;  ///< set_executable(); empty: this program
  /// mpp::atexit handlers of this process (a forked child starts with none).
  std::vector<std::function<void()>> exit_functions;
  bool exit_functions_hooked = false;  ///< the std::atexit trampoline is registered
  // forkserver client
  std::mutex server_mutex;
  os::Fd server_control;
  os::pid_type server_pid = 0;
  os::Fd server_handle;  ///< becomes readable when the server ends (invalid if none could open)
  os::pid_type server_owner = 0;  ///< the process that started the server (and reaps it)
  /// How long start() waits for a live fork server to take a request and answer; a detail-level
  /// knob so tests can stop a server without waiting the full bootstrap bound.
  std::chrono::nanoseconds server_timeout{kBootstrapTimeout};
};

inline Globals& globals();

/// ProcessState::exitcode before the process is reaped (no exit code or -signal is INT_MIN).
inline constexpr int kNoExitCode = INT_MIN;
/// Tells a re-executed program its role and socket: "spawn:<fd>" or "forkserver:<fd>".
inline constexpr const char* kBootstrapEnv = "MPP_BOOTSTRAP";
/// Largest launch request accepted (a corrupted length must not allocate gigabytes).
inline constexpr std::uint32_t kMaxFrame = 1u << 30;

/// What a ProcessState stands for: a child we create, the calling process, or its parent.
enum class Role { child, current, parent };

/// The state shared by every Process handle of one process.
struct ProcessState {
  Role role = Role::child;
  std::string name;
  bool daemon = false;
  std::optional<StartMethod> requested_method;
  std::unique_ptr<Target> target;
  std::vector<std::int32_t> identity;
  Bytes authkey;                 ///< Python's authkey: inherited from the creating process
  os::pid_type creator_pid = 0;  ///< Python's _parent_pid: the process that made this object
  // once started (or, for the parent role, once known)
  bool started = false;
  bool closed = false;
  StartMethod method = StartMethod::fork;
  std::atomic<os::pid_type> pid{0};
  std::uint32_t start_tag = 0;  ///< parent role: identifies the parent across pid reuse
  os::Fd sentinel;              ///< pidfd (fork, spawn, parent) or status channel (forkserver)
  std::atomic<int> exitcode{kNoExitCode};
  std::mutex reap_mutex;  ///< serialises reaping and signalling
};

// ---- small framed messages over sockets ------------------------------------------------------

/// Writes one length-prefixed frame. Throws: TimeoutError, BrokenPipeError, OSError.
inline void write_frame(const os::Fd& s, std::span<const std::byte> data,
                        std::optional<std::chrono::nanoseconds> timeout = std::nullopt) {
  std::string head;
  append_u32(head, static_cast<std::uint32_t>(data.size()));
  const auto deadline = Deadline::from(timeout);
  os::send_all(s, std::as_bytes(std::span(head)), deadline.remaining());
  os::send_all(s, data, deadline.remaining());
}

/// Reads one frame. Returns: nullopt at end of file. Throws: CorruptedError, EOFError.
inline std::optional<Bytes> read_frame(const os::Fd& s) {
  std::uint32_t n = 0;
  if (!os::recv_exact(s, std::as_writable_bytes(std::span(&n, 1)))) return std::nullopt;
  if (n > kMaxFrame)
    fail<CorruptedError>("a process launch request claims {} bytes (limit {})", n, kMaxFrame);
  Bytes b(n);
  if (!os::recv_exact(s, b)) fail<EOFError>("the other process closed the socket mid-request");
  return b;
}

/// A status record: 'A' (bootstrapped), 'P' (started, value = pid), 'X' (ended, value = exit
/// code), 'E' (failed, message), 'R' (forkserver ready).
struct Record {
  char tag = 0;
  std::int32_t value = 0;
  std::string message;
};

/// Writes one status record (see Record).
inline void write_record(const os::Fd& s, char tag, std::int32_t value,
                         std::string_view message = {}) {
  std::string out(1, tag);
  out.append(3, '\0');
  char v[4];
  std::memcpy(v, &value, 4);
  out.append(v, 4);
  append_u32(out, static_cast<std::uint32_t>(message.size()));
  out.append(message);
  os::send_all(s, std::as_bytes(std::span(out)));
}

/// Reads one record. Returns: nullopt at end of file. Throws: CorruptedError, EOFError.
inline std::optional<Record> read_record(const os::Fd& s) {
  std::byte head[12];
  if (!os::recv_exact(s, head)) return std::nullopt;
  Record r;
  r.tag = static_cast<char>(head[0]);
  std::uint32_t len = 0;
  std::memcpy(&r.value, head + 4, 4);
  std::memcpy(&len, head + 8, 4);
  if (std::string_view("APXER").find(r.tag) == std::string_view::npos || len > 65536)
    fail<CorruptedError>("invalid process status record (tag {}, length {})",
                         static_cast<int>(r.tag), len);
  r.message.resize(len);
  if (len != 0 && !os::recv_exact(s, std::as_writable_bytes(std::span(r.message))))
    fail<EOFError>("the other process closed the socket mid-record");
  return r;
}

// ---- the child side -------------------------------------------------------------------------

inline void shutdown_children() noexcept;  // run_child joins the child's own children

/// Makes this (new) process the child described by `info`: name, identity, parent; no children.
inline void become_child(const LaunchRequest& info) {
  auto& g = globals();
  g.is_main = false;
  g.identity = info.identity;
  g.counter = 0;
  g.children.clear();
  g.exit_handler_installed = false;
  g.exit_functions.clear();  // a forked child does not run its parent's (Python's atexit._clear())
  // As CPython's _bootstrap forces the context: the child's default is the method that started it.
  g.default_method = static_cast<StartMethod>(info.method);
  auto self = std::make_shared<ProcessState>();
  self->role = Role::current;
  self->name = info.name;
  self->daemon = info.daemon;
  self->authkey = info.authkey;
  self->identity = info.identity;
  self->creator_pid = info.parent_pid;
  self->started = true;
  g.self = std::move(self);
  g.parent.reset();
  if (info.parent_pid != 0) {
    auto parent = std::make_shared<ProcessState>();
    parent->role = Role::parent;
    parent->name = info.parent_name;
    parent->started = true;
    parent->pid.store(info.parent_pid);
    parent->start_tag = info.parent_start_tag;  // its sentinel is opened when first needed
    g.parent = std::move(parent);
  }
}

//!Effects: runs this process's mpp::atexit handlers once, last registered first; a handler that
//! throws is reported on stderr and the others still run.
inline void run_exit_functions() noexcept {
  auto& g = globals();
  for (;;) {
    std::function<void()> fn;
    {
      std::lock_guard lock(g.mutex);
      if (g.exit_functions.empty()) return;
      fn = std::move(g.exit_functions.back());
      g.exit_functions.pop_back();
    }
    try {
      fn();
    } catch (const std::exception& e) {
      fmt::print(stderr, "mpp: an atexit handler failed: {}\n", e.what());
    } catch (...) {
      fmt::print(stderr, "mpp: an atexit handler failed with an exception of type {}\n",
                 os::current_exception_type_name());
    }
  }
}

/// Runs `body` as the process target and ends the process with Python's exit code.
template <class Body>
[[noreturn]] void run_child(const LaunchRequest& info, Body&& body) noexcept {
  int code = 0;
  try {
    become_child(info);
    tl_in_target = true;
    body();
  } catch (const ExitRequest& e) {
    code = e.code;
  } catch (const std::exception& e) {
    std::fflush(stdout);
    fmt::print(stderr, "Process {}:\n{}: {}\n", info.name, os::demangle(typeid(e).name()),
               e.what());
    code = 1;
  } catch (...) {
    std::fflush(stdout);
    fmt::print(stderr, "Process {}:\nan exception of type {} escaped the target\n", info.name,
               os::current_exception_type_name());
    code = 1;
  }
  tl_in_target = false;
  shutdown_children();  // like Python's util._exit_function() in the child
  run_exit_functions();
  // A spawned program's C atexit list is its own (as a fork server's child's, whose server did
  // nothing before serving): leave through std::exit, as a spawned Python child leaves through
  // sys.exit. A forked child's list is its parent's: those handlers must not run twice.
  if (static_cast<StartMethod>(info.method) != StartMethod::fork) {
    std::fflush(nullptr);
    std::exit(code);
  }
  os::exit_process(code);
}

/// The request that makes a new process the child `s` (everything but the function to run).
inline LaunchRequest describe_child(const ProcessState& s) {
  auto& g = globals();
  LaunchRequest r;
  r.name = s.name;
  r.identity = s.identity;
  r.daemon = s.daemon;
  r.method = static_cast<std::uint8_t>(s.method);
  r.authkey = s.authkey;
  const auto me = ProcessRef::self();
  r.parent_pid = me.pid;
  r.parent_start_tag = me.start_tag;
  r.parent_name = g.self ? g.self->name : "MainProcess";
  return r;
}

/// The function registered as `req.function` with the expected signature, or the error text.
inline const RegisteredFunction* lookup_for_child(const LaunchRequest& req, std::string& error) {
  const RegisteredFunction* fn = function_registry().find(req.function);
  if (fn == nullptr) {
    error = fmt::format(
        "function '{}' is not registered in the new program: register it at namespace scope with "
        "MPP_REGISTER, or call mpp::register_function before mpp::bootstrap(argc, argv) in main",
        req.function);
  } else if (fn->signature != req.signature) {
    error = fmt::format("function '{}' is registered with other parameter types in the new program",
                        req.function);
    fn = nullptr;
  }
  return fn;
}

/// Spawned child: read the request, acknowledge, run, exit.
[[noreturn]] inline void spawn_main(os::native_handle fd) noexcept {
  LaunchRequest req;
  const RegisteredFunction* fn = nullptr;
  try {
    os::Fd sock{fd};
    os::set_inheritable(fd, false);
    auto frame = read_frame(sock);
    if (!frame) os::exit_process(1);  // the parent gave up on us
    req = mpp::decode<LaunchRequest>(*frame);
    std::string error;
    fn = lookup_for_child(req, error);
    if (fn == nullptr) {
      write_record(sock, 'E', 0, error);
      os::exit_process(1);
    }
    write_record(sock, 'A', 0);
  } catch (const std::exception& e) {
    fmt::print(stderr, "mpp: spawned child cannot read its launch request: {}\n", e.what());
    os::exit_process(1);
  }
  run_child(req, [&] { fn->invoke(std::as_bytes(std::span(req.args))); });
}

// ---- the parent side ------------------------------------------------------------------------

//!Returns: the exit code if the process has ended (reaping it), nullopt while it runs.
inline std::optional<int> poll_exit(ProcessState& s) {
  if (const int c = s.exitcode.load(std::memory_order_acquire); c != kNoExitCode) return c;
  std::lock_guard lock(s.reap_mutex);
  if (const int c = s.exitcode.load(std::memory_order_acquire); c != kNoExitCode) return c;
  std::optional<int> code;
  if (s.role == Role::parent) {
    if (!ProcessRef{s.pid.load(), s.start_tag}.alive()) code = 0;  // its status is not ours to know
    if (code) return code;  // never stored: a parent has no exit code for us
    return std::nullopt;
  }
  if (s.method == StartMethod::forkserver) {
    if (!os::wait_readable(s.sentinel.get(), std::chrono::nanoseconds{0})) return std::nullopt;
    auto r = read_record(s.sentinel);
    code = (r && r->tag == 'X') ? r->value : 255;  // 255: the server died (as Python reports)
  } else {
    try {
      code = os::poll_process(s.pid.load());
    } catch (const OSError&) {
      code = 255;  // reaped behind our back (waitpid(-1) or SIGCHLD ignored)
    }
  }
  if (code) s.exitcode.store(*code, std::memory_order_release);
  return code;
}

/// Opens the sentinel on first use: a pidfd of a direct child (or of the parent, checking that it
/// is still the same process). A forkserver child's sentinel is its status channel, open already.
inline void ensure_sentinel(ProcessState& s) {
  std::lock_guard lock(s.reap_mutex);
  if (s.sentinel.valid() || s.role == Role::current || s.pid.load() == 0) return;
  if (s.role == Role::parent) {
    os::Fd h = os::open_process(s.pid.load());
    if (h.valid() && ProcessRef{s.pid.load(), s.start_tag}.alive()) s.sentinel = std::move(h);
    return;
  }
  // Not reaped yet (we hold reap_mutex), so the pid is still this child's, zombie or not.
  if (s.exitcode.load() == kNoExitCode) s.sentinel = os::open_process(s.pid.load());
  if (!s.sentinel.valid()) s.sentinel = os::ready_handle();
}

//!Effects: waits until the process ends or `deadline` passes. Returns: its exit code, or nullopt.
inline std::optional<int> wait_exit(ProcessState& s, const Deadline& deadline) {
  if (s.role == Role::child && s.method != StartMethod::forkserver && deadline.infinite()) {
    // The common join(): block in the kernel without opening a handle; reap under the lock.
    // If it is not our child any more (reaped behind our back), poll_exit records 255.
    for (;;) {
      if (auto c = poll_exit(s)) return c;
      os::wait_process_exit(s.pid.load());
    }
  }
  ensure_sentinel(s);
  for (;;) {
    if (auto c = poll_exit(s)) return c;
    if (s.role == Role::parent && !s.sentinel.valid()) {  // no handle: poll liveness
      if (deadline.expired()) return std::nullopt;
      auto slice = std::chrono::nanoseconds(kPollInterval);
      if (auto left = deadline.remaining(); left && *left < slice) slice = *left;
      os::sleep_for(slice);
      continue;
    }
    if (!os::wait_readable(s.sentinel.get(), deadline.remaining())) return poll_exit(s);
    if (s.role == Role::parent) return 0;
  }
}

/// Drops `s` from this process's children (it has been reaped).
inline void forget_child(const std::shared_ptr<ProcessState>& s) {
  auto& g = globals();
  std::lock_guard lock(g.mutex);
  std::erase(g.children, s);
}

/// Python's _cleanup(): forget children that have ended.
inline void reap_children() {
  auto& g = globals();
  std::vector<std::shared_ptr<ProcessState>> snapshot;
  {
    std::lock_guard lock(g.mutex);
    snapshot = g.children;
  }
  for (auto& c : snapshot)
    if (poll_exit(*c)) forget_child(c);
}

/// Sends `sig` to child `s` unless it has been reaped (its pid may be another process's then).
inline void signal_child(ProcessState& s, int sig) {
  std::lock_guard lock(s.reap_mutex);
  if (s.exitcode.load() != kNoExitCode) return;  // reaped: the pid may belong to someone else now
  if (s.method == StartMethod::forkserver &&
      os::wait_readable(s.sentinel.get(), std::chrono::nanoseconds{0}))
    return;  // its exit status is already waiting for us
  os::send_signal(s.pid.load(), sig);
}

/// Python's _exit_function(): terminate daemonic children, then join every child.
inline void shutdown_children() noexcept {
  try {
    auto& g = globals();
    std::vector<std::shared_ptr<ProcessState>> snapshot;
    {
      std::lock_guard lock(g.mutex);
      snapshot = g.children;
    }
    for (auto& c : snapshot)
      if (c->daemon) signal_child(*c, os::kSigTerm);
    for (auto& c : snapshot) {
      wait_exit(*c, Deadline::never());
      forget_child(c);
    }
  } catch (const std::exception& e) {
    fmt::print(stderr, "mpp: while joining child processes at exit: {}\n", e.what());
  }
}

/// The program that spawn and forkserver run: set_executable()'s, else this one.
inline const std::string& executable_path() {
  auto& g = globals();
  static const std::string self = os::self_executable();
  return g.executable.empty() ? self : g.executable;
}

/// The argv of a re-executed program; `marker` only shows its role in ps.
inline std::vector<std::string> child_argv(const char* marker) {
  auto& g = globals();
  return {g.argv0.empty() ? executable_path() : g.argv0, marker};
}

//!Effects: starts the program that spawn and forkserver run with `marker` in its argv and
//! kBootstrapEnv set to "<role>:<handle>", where <handle> is `sock` as the new program sees it.
//! On Linux (glibc 2.34 or later) the new program inherits stdio and `sock` only, as Python's
//! spawn (close_fds=True): the socket becomes descriptor 3 and every descriptor above is closed
//! before exec, whether or not it is close-on-exec. Elsewhere what the OS layer's spawn_program
//! passes (on Windows: the handles marked inheritable). Returns: the pid. Throws: OSError.
inline os::pid_type spawn_role(std::string_view role, const char* marker, const os::Fd& sock) {
#if defined(MPP_OS_POSIX) && defined(__GLIBC__) && \
    (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
  constexpr int kChildFd = 3;
  const std::string env = fmt::format("{}={}:{}", kBootstrapEnv, role, kChildFd);
  const std::vector<std::string> argv = child_argv(marker);
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  std::vector<char*> envp{const_cast<char*>(env.c_str())};
  const std::string_view key = kBootstrapEnv;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    const std::string_view entry(*e);
    if (entry.substr(0, entry.find('=')) != key) envp.push_back(*e);
  }
  envp.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  ::posix_spawn_file_actions_init(&actions);
  // dup2(fd, fd) clears FD_CLOEXEC in the child only (glibc >= 2.29).
  int rc = ::posix_spawn_file_actions_adddup2(&actions, sock.get(), kChildFd);
  if (rc == 0) rc = ::posix_spawn_file_actions_addclosefrom_np(&actions, kChildFd + 1);
  pid_t pid = 0;
  const std::string& path = executable_path();
  if (rc == 0) rc = ::posix_spawn(&pid, path.c_str(), &actions, nullptr, args.data(), envp.data());
  ::posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) os::throw_errno("posix_spawn", path, rc);
  return static_cast<os::pid_type>(pid);
#else
  const os::native_handle inherit[] = {sock.get()};
  const std::string env =
      fmt::format("{}={}:{}", kBootstrapEnv, role, os::handle_to_text(sock.get()));
  return os::spawn_program(executable_path(), child_argv(marker), {env}, inherit);
#endif
}

/// Throws: ProcessError unless mpp::bootstrap ran here (or the child would not find its role).
inline void require_bootstrap(StartMethod m) {
  if (!globals().bootstrap_called)
    fail<ProcessError>(
        "the '{}' start method re-executes this program, whose main() must call "
        "mpp::bootstrap(argc, argv) first (like Python's freeze_support()); it "
        "has not been called in this process",
        start_method_name(m));
}

/// Waits for the first record from a re-executed program (or its end).
inline std::optional<Record> await_record(const os::Fd& s, const char* what) {
  if (!os::wait_readable(s.get(), std::chrono::nanoseconds(kBootstrapTimeout)))
    fail<ProcessError>(
        "{} did not reach mpp::bootstrap(argc, argv) within {} s: call it first "
        "thing in main()",
        what, kBootstrapTimeout.count());
  return read_record(s);
}

/// Starts `s` as a fork of this process.
inline void launch_fork(ProcessState& s) {
  auto& g = globals();
  const LaunchRequest info = describe_child(s);
  os::pid_type pid;
  {
    // Held across fork so the child's copy of the children list is consistent.
    std::lock_guard lock(g.mutex);
    pid = os::fork_process();
    if (pid == 0) {
      g.mutex.unlock();  // the child's copy (default mutexes do not check their owner)
      new (&g.server_mutex) std::mutex();
      run_child(info, [&] { s.target->run(); });
    }
  }
  s.pid.store(pid);  // the sentinel (a pidfd) is opened when first needed
}

/// Reaps a re-executed child that failed to start (killing it if it lingers).
inline int reap_failed(os::pid_type pid, const os::Fd& handle) noexcept {
  try {
    if (!handle.valid() || !os::wait_readable(handle.get(), std::chrono::seconds(5))) {
      os::send_signal(pid, os::kSigKill);
      if (handle.valid()) os::wait_readable(handle.get(), std::chrono::seconds(5));
    }
    return os::poll_process(pid).value_or(255);
  } catch (const std::exception&) {
    return 255;
  }
}

/// The full request of `s`: describe_child plus the registered function and its arguments.
inline LaunchRequest launch_request(const ProcessState& s, StartMethod m) {
  LaunchRequest req = describe_child(s);
  LaunchSpec spec = s.target->launch_spec(m);
  req.function = std::move(spec.function);
  req.signature = spec.signature;
  req.args = std::move(spec.args);
  return req;
}

/// Starts `s` by re-executing the program and handing it the request over a socket.
inline void launch_spawn(ProcessState& s) {
  require_bootstrap(StartMethod::spawn);
  const Bytes payload = mpp::encode(launch_request(s, StartMethod::spawn));
  auto [mine, theirs] = os::socket_pair();
  const os::pid_type pid = spawn_role("spawn", "--mpp-spawn", theirs);
  theirs.reset();
  os::Fd handle = os::open_process(pid);
  std::optional<Record> r;
  try {
    try {
      write_frame(mine, payload, kBootstrapTimeout);
    } catch (const BrokenPipeError&) {  // it is gone already; the missing answer says why
    } catch (const TimeoutError&) {
      fail<ProcessError>(
          "the spawned child (pid {}, running {}) did not read its launch "
          "request within {} s: does its main() call mpp::bootstrap(argc, argv) "
          "first?",
          pid, executable_path(), kBootstrapTimeout.count());
    }
    r = await_record(mine, fmt::format("the spawned child (pid {})", pid).c_str());
  } catch (...) {
    reap_failed(pid, handle);
    throw;
  }
  if (!r || r->tag != 'A') {
    const int code = reap_failed(pid, handle);
    if (r && r->tag == 'E')
      fail<ProcessError>("cannot start {} with 'spawn': {}", s.name, r->message);
    fail<ProcessError>(
        "the spawned child (pid {}, running {}) exited with code {} before it "
        "called mpp::bootstrap(argc, argv): call it first thing in main()",
        pid, executable_path(), code);
  }
  s.pid.store(pid);
  s.sentinel = std::move(handle);
}

// ---- creating and showing the state of a Process ----------------------------------------------

/// What current_process() is in the main process.
inline std::shared_ptr<ProcessState> make_main_state() {
  auto s = std::make_shared<ProcessState>();
  s->role = Role::current;
  s->name = "MainProcess";
  s->started = true;
  s->authkey.resize(32);  // Python's os.urandom(32)
  for (std::size_t i = 0; i < s->authkey.size(); i += 8) {
    const std::uint64_t r = os::random_u64();
    std::memcpy(s->authkey.data() + i, &r, 8);
  }
  return s;
}

/// This process's Globals, created on first use.
inline Globals& globals() {
  static Globals* g = [] {
    auto* p = new Globals;  // never destroyed: used by the exit handler and by children
    p->self = make_main_state();
    return p;
  }();
  return *g;
}

/// The state of a new, not yet started child: identity, "Process-N" name, options.
inline std::shared_ptr<ProcessState> new_child_state(ProcessOptions opts) {
  auto& g = globals();
  auto s = std::make_shared<ProcessState>();
  bool daemonic = false;
  {
    std::lock_guard lock(g.mutex);
    s->identity = g.identity;
    s->identity.push_back(++g.counter);
    daemonic = g.self->daemon;  // Python copies its _config: daemon and authkey
    s->authkey = g.self->authkey;
  }
  if (opts.name.empty()) {
    std::string n = "Process-";
    for (std::size_t i = 0; i < s->identity.size(); ++i) {
      if (i != 0) n += ':';
      n += std::to_string(s->identity[i]);
    }
    s->name = std::move(n);
  } else {
    s->name = std::move(opts.name);
  }
  s->daemon = opts.daemon.value_or(daemonic);
  s->requested_method = opts.start_method;
  s->creator_pid = os::current_pid();
  return s;
}

//!Returns: Python's repr of the process `s`, e.g.
//! "<Process name='Process-1' pid=4242 parent=4241 started>" (reaps it if it has ended).
inline std::string process_repr(ProcessState& s) {
  const bool is_main = globals().is_main;
  const char* type = s.role == Role::child    ? "Process"
                     : s.role == Role::parent ? "_ParentProcess"
                     : is_main                ? "_MainProcess"
                                              : "Process";
  std::string status;
  std::optional<int> code;
  if (s.role == Role::current)
    status = "started";
  else if (s.closed)
    status = "closed";
  else if (s.role == Role::parent)
    status = poll_exit(s) ? "stopped" : "started";
  else if (s.creator_pid != os::current_pid())
    status = "unknown";
  else if (!s.started)
    status = "initial";
  else
    status = (code = poll_exit(s)) ? "stopped" : "started";
  std::string out = fmt::format("<{} name='{}'", type, s.name);
  if (s.role != Role::current && s.started && !s.closed)
    out += fmt::format(" pid={}", s.pid.load());
  const bool has_parent = s.role == Role::child || (s.role == Role::current && !is_main);
  out += has_parent ? fmt::format(" parent={}", s.creator_pid) : std::string(" parent=None");
  out += " " + status;
  if (code) {
    const std::string sig = *code < 0 ? os::signal_name(-*code) : std::string();
    out += sig.empty() ? fmt::format(" exitcode={}", *code) : fmt::format(" exitcode=-{}", sig);
  }
  if (s.daemon) out += " daemon";
  return out + ">";
}

}  // namespace mpp::detail
