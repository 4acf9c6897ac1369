// mpp — Process: run a callable in a child process, like Python's multiprocessing.Process
// (DESIGN.md section 6). Three start methods: fork (copy of the parent), spawn (re-executes the
// program, whose main() calls mpp::bootstrap first) and forkserver (a single-threaded server,
// itself a re-executed copy of the program, forks the children). spawn and forkserver run
// functions registered by name (MPP_REGISTER / mpp::register_function); their arguments travel
// through mpp::codec. Exit codes follow Python: 0, mpp::exit(n), 1 for an escaped exception,
// -N for signal N. Every system call lives behind detail::os.
#pragma once

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <typeindex>
#include <utility>
#include <vector>

#include "codec.hpp"
#include "detail/liveness.hpp"
#include "detail/os.hpp"
#include "detail/wait.hpp"
#include "errors.hpp"

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
    case StartMethod::fork: return "fork";
    case StartMethod::spawn: return "spawn";
    case StartMethod::forkserver: return "forkserver";
  }
  return "unknown";
}

//!Returns: the StartMethod called `name`. Throws: ValueError for an unknown name.
inline StartMethod parse_start_method(std::string_view name) {
  for (auto m : {StartMethod::fork, StartMethod::spawn, StartMethod::forkserver})
    if (start_method_name(m) == name) return m;
  detail::fail<ValueError>("cannot find context for '{}': the start methods are 'fork', 'spawn' "
                           "and 'forkserver'",
                           name);
}

/// Options of a Process (Python's keyword arguments name= and daemon=).
struct ProcessOptions {
  std::string name{};                         ///< empty: "Process-N" as Python names them
  std::optional<bool> daemon{};               ///< terminated when the parent exits (default false)
  std::optional<StartMethod> start_method{};  ///< empty: the method of get_start_method() at start()
};

namespace detail {

/// Thrown by mpp::exit() inside a process target; not a std::exception, so `catch (const
/// std::exception&)` in user code lets it through (like Python's SystemExit).
struct ExitRequest {
  int code;
};

/// True on the thread that runs a Process target.
inline thread_local bool tl_in_target = false;

// ---- callables that can be re-created in another program ------------------------------------

template <class... Ps>
struct ParamList {};

template <class M>
struct member_call_traits {};
#define MPP_DETAIL_MEMBER_TRAITS(quals)                   \
  template <class R, class C, class... Ps>                \
  struct member_call_traits<R (C::*)(Ps...) quals> {      \
    using params = ParamList<std::decay_t<Ps>...>;        \
  };
MPP_DETAIL_MEMBER_TRAITS()
MPP_DETAIL_MEMBER_TRAITS(const)
MPP_DETAIL_MEMBER_TRAITS(noexcept)
MPP_DETAIL_MEMBER_TRAITS(const noexcept)
#undef MPP_DETAIL_MEMBER_TRAITS

/// The parameter types of a callable that another program can re-create from a name: a function
/// pointer, or a class without state (a capture-less lambda) with a single operator().
template <class F>
struct callable_traits {};
template <class R, class... Ps>
struct callable_traits<R (*)(Ps...)> {
  using params = ParamList<std::decay_t<Ps>...>;
};
template <class R, class... Ps>
struct callable_traits<R (*)(Ps...) noexcept> {
  using params = ParamList<std::decay_t<Ps>...>;
};
template <class F>
  requires(std::is_class_v<F> && std::is_empty_v<F> && std::is_default_constructible_v<F> &&
           requires { &F::operator(); })
struct callable_traits<F> : member_call_traits<decltype(&F::operator())> {};

template <class P>
struct all_encodable;
template <class... Ps>
struct all_encodable<ParamList<Ps...>> : std::bool_constant<(Encodable<Ps> && ...)> {};

/// A callable whose name can stand for it in another program (see register_function).
template <class F>
concept Transportable = requires { typename callable_traits<F>::params; } &&
                        all_encodable<typename callable_traits<F>::params>::value;

/// Key under which a transportable callable is found: its type and, for a function pointer, its
/// address (addresses differ between programs, so only names travel).
using FunctionKey = std::pair<std::type_index, std::uintptr_t>;
template <class F>
FunctionKey function_key(const F& f) noexcept {
  if constexpr (std::is_pointer_v<F>)
    return {std::type_index(typeid(F)), reinterpret_cast<std::uintptr_t>(f)};
  else
    return {std::type_index(typeid(F)), 0};
}

template <class... Ps>
constexpr std::uint64_t signature_of(ParamList<Ps...>) noexcept {
  std::uint64_t h = fnv1a("mpp.signature");
  ((h = (h ^ type_info<Ps>().fingerprint) * 1099511628211ull), ...);
  return h;
}

inline void append_u32(std::string& out, std::uint32_t v) {
  char b[4];
  std::memcpy(b, &v, 4);
  out.append(b, 4);
}

/// Encodes each argument as a length-prefixed mpp::encode() buffer.
template <class... Ps, class... As>
std::string encode_args(ParamList<Ps...>, const As&... as) {
  std::string out;
  auto one = [&out]<class P>(const P& p) {
    const Bytes b = mpp::encode<P>(p);
    append_u32(out, static_cast<std::uint32_t>(b.size()));
    out.append(reinterpret_cast<const char*>(b.data()), b.size());
  };
  (one(Ps(as)), ...);
  (void)one;
  return out;
}

/// Reads the next length-prefixed argument of `in` at `pos`. Throws: CorruptedError.
inline std::span<const std::byte> next_arg(std::span<const std::byte> in, std::size_t& pos) {
  std::uint32_t n = 0;
  if (in.size() - pos < 4)
    fail<CorruptedError>("process arguments are truncated at byte {} of {}", pos, in.size());
  std::memcpy(&n, in.data() + pos, 4);
  pos += 4;
  if (n > in.size() - pos)
    fail<CorruptedError>("a process argument claims {} bytes but only {} are left", n,
                         in.size() - pos);
  auto r = in.subspan(pos, n);
  pos += n;
  return r;
}

template <class... Ps>
std::tuple<Ps...> decode_args(ParamList<Ps...>, std::span<const std::byte> in) {
  std::size_t pos = 0;
  std::tuple<Ps...> t{mpp::decode<Ps>(next_arg(in, pos))...};  // braces: left to right
  if (pos != in.size())
    fail<CorruptedError>("{} trailing bytes after the process arguments", in.size() - pos);
  return t;
}

/// Calls f with the values of tuple t, moved when f accepts rvalues.
template <class F, class Tuple>
void call_with(F& f, Tuple& t) {
  std::apply(
      [&f](auto&... a) {
        if constexpr (std::is_invocable_v<F&, decltype(std::move(a))...>)
          std::invoke(f, std::move(a)...);
        else
          std::invoke(f, a...);
      },
      t);
}

/// A function registered for spawn and forkserver.
struct RegisteredFunction {
  std::string name;
  std::uint64_t signature = 0;
  std::function<void(std::span<const std::byte>)> invoke;  ///< decodes the arguments and calls
};

/// Name ↔ function table, filled by MPP_REGISTER at static initialisation or by
/// register_function before bootstrap, identically in the parent and the re-executed child.
class FunctionRegistry {
 public:
  bool add(RegisteredFunction fn, FunctionKey key) {
    std::lock_guard lock(mutex_);
    if (auto it = by_name_.find(fn.name); it != by_name_.end()) {
      auto k = by_key_.find(key);
      if (k != by_key_.end() && k->second == fn.name) return true;  // same function again
      fail<InvalidArgument>("a different function is already registered as '{}'; register it "
                            "under another name",
                            fn.name);
    }
    by_key_.emplace(key, fn.name);
    std::string name = fn.name;
    by_name_.emplace(std::move(name), std::move(fn));
    return true;
  }
  std::optional<std::string> name_of(const FunctionKey& key) const {
    std::lock_guard lock(mutex_);
    auto it = by_key_.find(key);
    return it == by_key_.end() ? std::nullopt : std::optional(it->second);
  }
  //!Returns: the key (type and, for a function pointer, address in this program) of the function
  //! registered as `name`, or nullopt (lets a pool worker run a registered function by name).
  std::optional<FunctionKey> key_of(const std::string& name) const {
    std::lock_guard lock(mutex_);
    for (const auto& [key, n] : by_key_)
      if (n == name) return key;
    return std::nullopt;
  }
  const RegisteredFunction* find(const std::string& name) const {
    std::lock_guard lock(mutex_);
    auto it = by_name_.find(name);
    return it == by_name_.end() ? nullptr : &it->second;  // entries are never removed
  }

 private:
  mutable std::mutex mutex_;
  std::map<std::string, RegisteredFunction> by_name_;
  std::map<FunctionKey, std::string> by_key_;
};

inline FunctionRegistry& function_registry() {
  static FunctionRegistry r;
  return r;
}

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
  template <class A>
  void serialize(A& ar) {
    ar(function, signature, args, name, identity, daemon, parent_pid, parent_start_tag,
       parent_name);
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
            [&](const As&... a) { return LaunchSpec{name, signature_of(p), encode_args(p, a...)}; },
            args);
      }
    }
    fail<ProcessError>("the arguments given to '{}' do not convert to its parameter types", name);
  }
};

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
  // forkserver client
  std::mutex server_mutex;
  os::Fd server_control;
  os::pid_type server_pid = 0;
  os::pid_type server_owner = 0;  ///< the process that started the server (and reaps it)
  /// How long start() waits for a live fork server to take a request and answer; a detail-level
  /// knob so tests can stop a server without waiting the full bootstrap bound.
  std::chrono::nanoseconds server_timeout{kBootstrapTimeout};
};

inline Globals& globals();

inline constexpr int kNoExitCode = INT_MIN;
inline constexpr const char* kBootstrapEnv = "MPP_BOOTSTRAP";
/// Largest launch request accepted (a corrupted length must not allocate gigabytes).
inline constexpr std::uint32_t kMaxFrame = 1u << 30;

enum class Role { child, current, parent };

struct ProcessState {
  Role role = Role::child;
  std::string name;
  bool daemon = false;
  std::optional<StartMethod> requested_method;
  std::unique_ptr<Target> target;
  std::vector<std::int32_t> identity;
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

inline void shutdown_children() noexcept;

/// Makes this (new) process the child described by `info`: name, identity, parent; no children.
inline void become_child(const LaunchRequest& info) {
  auto& g = globals();
  g.is_main = false;
  g.identity = info.identity;
  g.counter = 0;
  g.children.clear();
  g.exit_handler_installed = false;
  auto self = std::make_shared<ProcessState>();
  self->role = Role::current;
  self->name = info.name;
  self->daemon = info.daemon;
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
  os::exit_process(code);
}

inline LaunchRequest describe_child(const ProcessState& s) {
  auto& g = globals();
  LaunchRequest r;
  r.name = s.name;
  r.identity = s.identity;
  r.daemon = s.daemon;
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

/// The fork server's loop: fork a child per request, report its pid and exit code.
[[noreturn]] inline void forkserver_main(os::native_handle fd) noexcept {
  struct Child {
    os::pid_type pid;
    os::Fd handle;
    os::Fd channel;
  };
  std::vector<Child> children;
  try {
    os::ignore_interrupts(true);
    os::Fd control{fd};
    os::set_inheritable(fd, false);
    const char ready = 'R';
    os::send_all(control, std::as_bytes(std::span(&ready, 1)));
    std::vector<os::native_handle> handles;
    for (;;) {
      handles.assign(1, control.get());
      for (auto& c : children) handles.push_back(c.handle.get());
      const int i = os::wait_any_readable(handles, std::nullopt);
      if (i > 0) {  // a child ended
        auto it = children.begin() + (i - 1);
        std::optional<int> code;
        try {
          code = os::poll_process(it->pid);
        } catch (const OSError&) {
          code = 255;  // reaped behind our back
        }
        if (!code) continue;
        try {
          write_record(it->channel, 'X', *code);
        } catch (const Error&) {  // the parent went away: nobody to tell
        }
        children.erase(it);
        continue;
      }
      if (i != 0) continue;
      os::Fd channel;
      std::byte buf[16];
      if (os::recv_with_handle(control, buf, channel) == 0) break;  // every client is gone
      if (!channel.valid()) continue;
      LaunchRequest req;
      const RegisteredFunction* fn = nullptr;
      os::pid_type pid = 0;
      try {
        auto frame = read_frame(channel);
        if (!frame) continue;
        req = mpp::decode<LaunchRequest>(*frame);
        std::string error;
        fn = lookup_for_child(req, error);
        if (fn == nullptr) {
          write_record(channel, 'E', 0, error);
          continue;
        }
        pid = os::fork_process();
      } catch (const std::exception& e) {
        try {
          write_record(channel, 'E', 0, fmt::format("the fork server could not start it: {}", e.what()));
        } catch (const std::exception&) {
        }
        continue;
      }
      if (pid == 0) {
        control.reset();
        channel.reset();
        for (auto& c : children) {
          c.handle.reset();
          c.channel.reset();
        }
        os::ignore_interrupts(false);
        run_child(req, [&] { fn->invoke(std::as_bytes(std::span(req.args))); });
      }
      try {
        write_record(channel, 'P', pid);
      } catch (const Error&) {
      }
      children.push_back(Child{pid, os::open_process(pid), std::move(channel)});
    }
  } catch (const std::exception& e) {
    fmt::print(stderr, "mpp: the fork server failed: {}\n", e.what());
    os::exit_process(1);
  }
  os::exit_process(0);
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

inline void exit_handler() noexcept {
  shutdown_children();
  auto& g = globals();
  std::lock_guard lock(g.server_mutex);
  if (g.server_pid != 0 && g.server_owner == os::current_pid()) {
    g.server_control.reset();  // the server exits when it sees end of file
    try {
      auto h = os::open_process(g.server_pid);
      if (!h.valid() || !os::wait_readable(h.get(), std::chrono::seconds(2)))
        os::send_signal(g.server_pid, os::kSigKill);
      os::wait_readable(h.get(), std::chrono::seconds(2));
      os::poll_process(g.server_pid);
    } catch (const std::exception&) {
    }
    g.server_pid = 0;
  }
}

inline void install_exit_handler() {
  auto& g = globals();  // caller holds g.mutex
  if (!g.exit_handler_installed) {
    std::atexit(&exit_handler);
    g.exit_handler_installed = true;
  }
}

inline const std::string& executable_path() {
  auto& g = globals();
  static const std::string self = os::self_executable();
  return g.executable.empty() ? self : g.executable;
}

inline std::vector<std::string> child_argv(const char* marker) {
  auto& g = globals();
  return {g.argv0.empty() ? executable_path() : g.argv0, marker};
}

inline void require_bootstrap(StartMethod m) {
  if (!globals().bootstrap_called)
    fail<ProcessError>("the '{}' start method re-executes this program, whose main() must call "
                       "mpp::bootstrap(argc, argv) first (like Python's freeze_support()); it "
                       "has not been called in this process",
                       start_method_name(m));
}

/// Waits for the first record from a re-executed program (or its end).
inline std::optional<Record> await_record(const os::Fd& s, const char* what) {
  if (!os::wait_readable(s.get(), std::chrono::nanoseconds(kBootstrapTimeout)))
    fail<ProcessError>("{} did not reach mpp::bootstrap(argc, argv) within {} s: call it first "
                       "thing in main()",
                       what, kBootstrapTimeout.count());
  return read_record(s);
}

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

inline LaunchRequest launch_request(const ProcessState& s, StartMethod m) {
  LaunchRequest req = describe_child(s);
  LaunchSpec spec = s.target->launch_spec(m);
  req.function = std::move(spec.function);
  req.signature = spec.signature;
  req.args = std::move(spec.args);
  return req;
}

inline void launch_spawn(ProcessState& s) {
  require_bootstrap(StartMethod::spawn);
  const Bytes payload = mpp::encode(launch_request(s, StartMethod::spawn));
  auto [mine, theirs] = os::socket_pair();
  const os::native_handle inherit[] = {theirs.get()};
  const os::pid_type pid =
      os::spawn_program(executable_path(), child_argv("--mpp-spawn"),
                        {fmt::format("{}=spawn:{}", kBootstrapEnv, os::handle_to_text(theirs.get()))}, inherit);
  theirs.reset();
  os::Fd handle = os::open_process(pid);
  std::optional<Record> r;
  try {
    try {
      write_frame(mine, payload, kBootstrapTimeout);
    } catch (const BrokenPipeError&) {  // it is gone already; the missing answer says why
    } catch (const TimeoutError&) {
      fail<ProcessError>("the spawned child (pid {}, running {}) did not read its launch "
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
    fail<ProcessError>("the spawned child (pid {}, running {}) exited with code {} before it "
                       "called mpp::bootstrap(argc, argv): call it first thing in main()",
                       pid, executable_path(), code);
  }
  s.pid.store(pid);
  s.sentinel = std::move(handle);
}

/// Starts the fork server if this process has none (caller holds g.server_mutex).
inline void ensure_forkserver(Globals& g) {
  if (g.server_control.valid()) return;
  require_bootstrap(StartMethod::forkserver);
  auto [mine, theirs] = os::socket_pair(/*packets=*/true);
  const os::native_handle inherit[] = {theirs.get()};
  const os::pid_type pid =
      os::spawn_program(executable_path(), child_argv("--mpp-forkserver"),
                        {fmt::format("{}=forkserver:{}", kBootstrapEnv, os::handle_to_text(theirs.get()))}, inherit);
  theirs.reset();
  os::Fd handle = os::open_process(pid);
  bool ready = false;
  try {
    if (os::wait_readable(mine.get(), std::chrono::nanoseconds(kBootstrapTimeout))) {
      std::byte c[1];
      ready = os::recv_exact(mine, c) && c[0] == std::byte{'R'};
    }
  } catch (const std::exception&) {
  }
  if (!ready) {
    const int code = reap_failed(pid, handle);
    fail<ProcessError>("the fork server (pid {}, running {}) exited with code {} before it "
                       "called mpp::bootstrap(argc, argv): call it first thing in main()",
                       pid, executable_path(), code);
  }
  g.server_control = std::move(mine);
  g.server_pid = pid;
  g.server_owner = os::current_pid();
}

/// Forgets a fork server that died (caller holds g.server_mutex); the next start() starts another.
inline void drop_forkserver(Globals& g) noexcept {
  g.server_control.reset();
  if (g.server_pid != 0 && g.server_owner == os::current_pid()) {
    try {
      os::Fd h = os::open_process(g.server_pid);
      reap_failed(g.server_pid, h);
    } catch (const std::exception&) {
    }
  }
  g.server_pid = 0;
}

inline void launch_forkserver(ProcessState& s) {
  auto& g = globals();
  const Bytes payload = mpp::encode(launch_request(s, StartMethod::forkserver));
  auto [mine, theirs] = os::socket_pair();
  {
    std::lock_guard lock(g.server_mutex);
    const char f = 'F';
    for (int attempt = 0;; ++attempt) {
      ensure_forkserver(g);
      try {
        os::send_with_handle(g.server_control, std::as_bytes(std::span(&f, 1)), theirs.get());
        break;
      } catch (const Error& e) {
        drop_forkserver(g);  // it died since the last start(): nothing was sent, start another
        if (attempt == 1)
          fail<ProcessError>("cannot reach the fork server to start {}: {}", s.name, e.what());
      }
    }
  }
  theirs.reset();
  std::optional<Record> r;
  bool timed_out = false;
  try {
    // Bounded: a stopped or stuck server keeps its socket open, so only its death ends an
    // unbounded wait.
    const auto deadline = Deadline::after(g.server_timeout);
    write_frame(mine, payload, deadline.remaining());
    if (os::wait_readable(mine.get(), deadline.remaining()))
      r = read_record(mine);
    else
      timed_out = true;
  } catch (const TimeoutError&) {
    timed_out = true;
  } catch (const Error&) {
    r.reset();
  }
  if (timed_out) {
    std::lock_guard lock(g.server_mutex);
    const os::pid_type server = g.server_pid;
    // It is alive but not answering: kill it rather than let drop_forkserver wait for an exit.
    if (server != 0 && g.server_owner == os::current_pid()) os::send_signal(server, os::kSigKill);
    drop_forkserver(g);
    fail<ProcessError>("the fork server (pid {}) did not start {} within {} s (is it stopped or "
                       "stuck?); it has been killed and the next start() starts a new one",
                       server, s.name, std::chrono::duration<double>(g.server_timeout).count());
  }
  if (!r) {
    std::lock_guard lock(g.server_mutex);
    drop_forkserver(g);
    fail<ProcessError>("the fork server closed the connection without starting {}; it has been "
                       "dropped and the next start() starts a new one",
                       s.name);
  }
  if (r->tag == 'E') fail<ProcessError>("cannot start {} with 'forkserver': {}", s.name, r->message);
  if (r->tag != 'P' || r->value <= 0)
    fail<CorruptedError>("the fork server sent an invalid answer (tag {}, value {})",
                         static_cast<int>(r->tag), r->value);
  s.pid.store(r->value);
  s.sentinel = std::move(mine);
}

inline std::shared_ptr<ProcessState> make_main_state() {
  auto s = std::make_shared<ProcessState>();
  s->role = Role::current;
  s->name = "MainProcess";
  s->started = true;
  return s;
}

inline Globals& globals() {
  static Globals* g = [] {
    auto* p = new Globals;  // never destroyed: used by the exit handler and by children
    p->self = make_main_state();
    return p;
  }();
  return *g;
}

inline std::shared_ptr<ProcessState> new_child_state(ProcessOptions opts) {
  auto& g = globals();
  auto s = std::make_shared<ProcessState>();
  {
    std::lock_guard lock(g.mutex);
    s->identity = g.identity;
    s->identity.push_back(++g.counter);
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
  s->daemon = opts.daemon.value_or(false);
  s->requested_method = opts.start_method;
  s->creator_pid = os::current_pid();
  return s;
}

}  // namespace detail

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
             std::is_invocable_v<std::decay_t<F>&, std::decay_t<Args>&...>)
  explicit Process(F&& f, Args&&... args) : Process(ProcessOptions{}, std::forward<F>(f), std::forward<Args>(args)...) {}

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
  void start() {
    check_open();
    auto& s = *s_;
    auto& g = detail::globals();
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
      case StartMethod::spawn: detail::launch_spawn(s); break;
      case StartMethod::forkserver: detail::launch_forkserver(s); break;
    }
    s.started = true;
    s.target.reset();  // as Python drops _target: the parent no longer needs it
    std::lock_guard lock(g.mutex);
    g.children.push_back(s_);
    detail::install_exit_handler();
  }

  //!Effects: waits until the process ends (Python's join()).
  //!Throws: ProcessError if it was not started or is not a child of this process.
  void join() { (void)join(std::nullopt); }

  //!Effects: waits until the process ends or `timeout` elapses (nullopt: forever).
  //!Returns: true if the process has ended (exitcode() is then set).
  bool join(Timeout timeout) {
    check_joinable("join");
    if (s_->role == detail::Role::parent)
      return detail::wait_exit(*s_, detail::Deadline::from(timeout)).has_value();
    auto code = detail::wait_exit(*s_, detail::Deadline::from(timeout));
    if (code) detail::forget_child(s_);
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
  void close() {
    if (s_->closed || s_->role == detail::Role::current) return;  // Python: a no-op for itself
    if (s_->role == detail::Role::child && s_->started) {
      if (!detail::poll_exit(*s_))
        detail::fail<ValueError>("Cannot close a process while it is still running. You should "
                                 "first call join() or terminate().");
      detail::forget_child(s_);
      std::lock_guard lock(s_->reap_mutex);
      s_->sentinel.reset();
    }
    s_->target.reset();
    s_->closed = true;
  }

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
  /// The start method used (or to be used) by this process.
  StartMethod start_method() const { return s_->started ? s_->method : s_->requested_method.value_or(default_method()); }

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
  std::string repr() const {
    const auto& s = *s_;
    const char* type = s.role == detail::Role::child     ? "Process"
                       : s.role == detail::Role::parent  ? "_ParentProcess"
                       : detail::globals().is_main        ? "_MainProcess"
                                                          : "Process";
    std::string status;
    std::optional<int> code;
    if (s.role == detail::Role::current) status = "started";
    else if (s.closed) status = "closed";
    else if (s.role == detail::Role::parent) status = is_alive() ? "started" : "stopped";
    else if (s.creator_pid != detail::os::current_pid()) status = "unknown";
    else if (!s.started) status = "initial";
    else status = (code = detail::poll_exit(*s_)) ? "stopped" : "started";
    std::string out = fmt::format("<{} name='{}'", type, s.name);
    if (s.role != detail::Role::current && s.started && !s.closed)
      out += fmt::format(" pid={}", s.pid.load());
    const bool has_parent = s.role == detail::Role::child ||
                            (s.role == detail::Role::current && !detail::globals().is_main);
    out += has_parent ? fmt::format(" parent={}", s.creator_pid) : std::string(" parent=None");
    out += " " + status;
    if (code) {
      const std::string sig = *code < 0 ? detail::os::signal_name(-*code) : std::string();
      out += sig.empty() ? fmt::format(" exitcode={}", *code) : fmt::format(" exitcode=-{}", sig);
    }
    if (s.daemon) out += " daemon";
    return out + ">";
  }

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
  if constexpr (detail::os::kCanFork) return {"fork", "spawn", "forkserver"};
  else return {"spawn"};
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
  using Params = typename detail::callable_traits<F>::params;
  detail::RegisteredFunction r;
  r.name = std::string(name);
  r.signature = detail::signature_of(Params{});
  r.invoke = [fn](std::span<const std::byte> in) mutable {
    auto args = detail::decode_args(Params{}, in);
    detail::call_with(fn, args);
  };
  return detail::function_registry().add(std::move(r), detail::function_key(fn));
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
  const auto colon = role->find(':');
  std::optional<detail::os::native_handle> fd;
  if (colon != std::string::npos) fd = detail::os::handle_from_text(role->substr(colon + 1));
  const std::string_view kind = std::string_view(*role).substr(0, colon);
  if (fd && kind == "spawn") detail::spawn_main(*fd);
  if (fd && kind == "forkserver") detail::forkserver_main(*fd);
  fmt::print(stderr, "mpp: invalid {}='{}' in the environment; exiting\n", detail::kBootstrapEnv,
             *role);
  detail::os::exit_process(1);
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

/// Formats a Process as Python's repr: <Process name='Process-1' pid=4242 parent=4241 started>.
template <>
struct fmt::formatter<mpp::Process> : fmt::formatter<std::string_view> {
  template <class Ctx>
  auto format(const mpp::Process& p, Ctx& ctx) const {
    return fmt::formatter<std::string_view>::format(p.repr(), ctx);
  }
};
