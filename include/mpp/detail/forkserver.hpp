// mpp — the fork server: a single-threaded copy of the program, started once by the first
// 'forkserver' start(), that forks a child per request so that children never inherit the
// threads or locks of the parent. The client side (ensure_forkserver, launch_forkserver), the
// server's loop (ForkServer), what happens at exit of the process that started it, and the
// dispatch of a re-executed program to its role (spawn child or fork server).
#pragma once

#include <fmt/core.h>

#include <chrono>
#include <cstddef>
#include <cstdlib>
#include <exception>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../codec.hpp"
#include "../errors.hpp"
#include "launch.hpp"
#include "os.hpp"
#include "wait.hpp"

namespace mpp::detail {

// ---- the server -------------------------------------------------------------------------------

/// The fork server's state: the control socket on which each client passes one channel per
/// request, and the children forked so far, each reported on its channel when it ends.
class ForkServer {
 public:
  /// Takes ownership of the control socket `fd` (inherited from the client that started us).
  explicit ForkServer(os::native_handle fd) : control_{fd} { os::set_inheritable(fd, false); }

  //!Effects: says ready, then forks a child per request and reports its pid and exit code,
  //! until every client has closed the control socket.
  void run() {
    const char ready = 'R';
    os::send_all(control_, std::as_bytes(std::span(&ready, 1)));
    std::vector<os::native_handle> handles;
    for (;;) {
      handles.assign(1, control_.get());
      for (auto& c : children_) handles.push_back(c.handle.get());
      const int i = os::wait_any_readable(handles, std::nullopt);
      if (i > 0)
        child_ended(static_cast<std::size_t>(i - 1));
      else if (i == 0 && !take_request())
        return;  // every client is gone
    }
  }

 private:
  struct Child {
    os::pid_type pid;
    os::Fd handle;   ///< becomes readable when the child ends
    os::Fd channel;  ///< to the client that asked for it
  };

  /// Children_[index]'s handle is readable: reap it and send its exit code to its client.
  void child_ended(std::size_t index) {
    auto it = children_.begin() + static_cast<std::ptrdiff_t>(index);
    std::optional<int> code;
    try {
      code = os::poll_process(it->pid);
    } catch (const OSError&) {
      code = 255;  // reaped behind our back
    }
    if (!code) return;
    try {
      write_record(it->channel, 'X', *code);
    } catch (const Error&) {  // the parent went away: nobody to tell
    }
    children_.erase(it);
  }

  //!Effects: receives one channel from the control socket and serves its request.
  //!Returns: false at end of file (every client is gone).
  bool take_request() {
    os::Fd channel;
    std::byte buf[16];
    if (os::recv_with_handle(control_, buf, channel) == 0) return false;
    if (channel.valid()) serve(std::move(channel));
    return true;
  }

  /// Reads the request on `channel`, forks the child and answers 'P' with its pid (or 'E').
  void serve(os::Fd channel) {
    LaunchRequest req;
    const RegisteredFunction* fn = nullptr;
    os::pid_type pid = 0;
    try {
      auto frame = read_frame(channel);
      if (!frame) return;
      req = mpp::decode<LaunchRequest>(*frame);
      std::string error;
      fn = lookup_for_child(req, error);
      if (fn == nullptr) {
        write_record(channel, 'E', 0, error);
        return;
      }
      pid = os::fork_process();
    } catch (const std::exception& e) {
      try {
        write_record(channel, 'E', 0,
                     fmt::format("the fork server could not start it: {}", e.what()));
      } catch (const std::exception&) {
      }
      return;
    }
    if (pid == 0) run_forked(std::move(channel), req, *fn);
    try {
      write_record(channel, 'P', pid);
    } catch (const Error&) {
    }
    children_.push_back(Child{pid, os::open_process(pid), std::move(channel)});
  }

  /// In the forked child: drop the server's sockets, then run the target and exit.
  [[noreturn]] void run_forked(os::Fd channel, const LaunchRequest& req,
                               const RegisteredFunction& fn) noexcept {
    control_.reset();
    channel.reset();
    for (auto& c : children_) {
      c.handle.reset();
      c.channel.reset();
    }
    os::ignore_interrupts(false);
    run_child(req, [&] { fn.invoke(std::as_bytes(std::span(req.args))); });
  }

  os::Fd control_;
  std::vector<Child> children_;
};

/// The fork server program: serves until its clients are gone, then exits.
[[noreturn]] inline void forkserver_main(os::native_handle fd) noexcept {
  try {
    os::ignore_interrupts(true);  // a Ctrl-C meant for the clients must not kill the server
    ForkServer server{fd};
    server.run();
  } catch (const std::exception& e) {
    fmt::print(stderr, "mpp: the fork server failed: {}\n", e.what());
    os::exit_process(1);
  }
  os::exit_process(0);
}

// ---- the client -------------------------------------------------------------------------------

/// Starts the fork server if this process has none (caller holds g.server_mutex).
inline void ensure_forkserver(Globals& g) {
  if (g.server_control.valid()) return;
  require_bootstrap(StartMethod::forkserver);
  auto [mine, theirs] = os::socket_pair(/*packets=*/true);
  const os::pid_type pid = spawn_role("forkserver", "--mpp-forkserver", theirs);
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
    fail<ProcessError>(
        "the fork server (pid {}, running {}) exited with code {} before it "
        "called mpp::bootstrap(argc, argv): call it first thing in main()",
        pid, executable_path(), code);
  }
  g.server_control = std::move(mine);
  g.server_handle = std::move(handle);
  g.server_pid = pid;
  g.server_owner = os::current_pid();
}

/// Forgets a fork server that died (caller holds g.server_mutex); the next start() starts another.
inline void drop_forkserver(Globals& g) noexcept {
  g.server_control.reset();
  if (g.server_pid != 0 && g.server_owner == os::current_pid()) {
    try {
      os::Fd h =
          g.server_handle.valid() ? std::move(g.server_handle) : os::open_process(g.server_pid);
      reap_failed(g.server_pid, h);
    } catch (const std::exception&) {
    }
  }
  g.server_handle.reset();
  g.server_pid = 0;
}

/// Passes `channel` to the fork server, starting one if this process has none; a server that died
/// since the last start() is replaced once (nothing was sent to it).
inline void send_to_forkserver(Globals& g, const os::Fd& channel, const std::string& name) {
  std::lock_guard lock(g.server_mutex);
  const char f = 'F';
  for (int attempt = 0;; ++attempt) {
    ensure_forkserver(g);
    try {
      os::send_with_handle(g.server_control, std::as_bytes(std::span(&f, 1)), channel.get());
      return;
    } catch (const Error& e) {
      drop_forkserver(g);  // it died since the last start(): nothing was sent, start another
      if (attempt == 1)
        fail<ProcessError>("cannot reach the fork server to start {}: {}", name, e.what());
    }
  }
}

//!Effects: sends the request on `mine` and waits for the server's first answer.
//!Returns: the answer, or nullopt when the server died before it took the request (it is dropped).
//!Throws: ProcessError when the server does not answer within g.server_timeout (it is killed) or
//! closes the connection (it is dropped); either way the next start() starts a new one.
inline std::optional<Record> forkserver_answer(Globals& g, const os::Fd& mine, const Bytes& payload,
                                               const std::string& name) {
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
    fail<ProcessError>(
        "the fork server (pid {}) did not start {} within {} s (is it stopped or "
        "stuck?); it has been killed and the next start() starts a new one",
        server, name, std::chrono::duration<double>(g.server_timeout).count());
  }
  if (!r) {
    std::lock_guard lock(g.server_mutex);
    // A server killed while this request was on its way: the kernel releases a dead process's
    // descriptors in no fixed order, so the previous child's channel can report the death while
    // the control socket still accepts a request. A server that is gone started nothing:
    // replace it and send the request again.
    const bool died = g.server_handle.valid() &&
                      os::wait_readable(g.server_handle.get(), std::chrono::seconds(2));
    drop_forkserver(g);
    if (died) return std::nullopt;
    fail<ProcessError>(
        "the fork server closed the connection without starting {}; it has been "
        "dropped and the next start() starts a new one",
        name);
  }
  return *r;
}

/// Starts `s` through the fork server; its sentinel is the channel the exit code arrives on.
inline void launch_forkserver(ProcessState& s) {
  auto& g = globals();
  const Bytes payload = mpp::encode(launch_request(s, StartMethod::forkserver));
  os::Fd mine;
  std::optional<Record> answer;
  for (int attempt = 0; !answer; ++attempt) {
    if (attempt == 2) fail<ProcessError>("the fork server died twice while starting {}", s.name);
    auto [ours, theirs] = os::socket_pair();
    send_to_forkserver(g, theirs, s.name);
    theirs.reset();
    answer = forkserver_answer(g, ours, payload, s.name);
    mine = std::move(ours);
  }
  const Record& r = *answer;
  if (r.tag == 'E') fail<ProcessError>("cannot start {} with 'forkserver': {}", s.name, r.message);
  if (r.tag != 'P' || r.value <= 0)
    fail<CorruptedError>("the fork server sent an invalid answer (tag {}, value {})",
                         static_cast<int>(r.tag), r.value);
  s.pid.store(r.value);
  s.sentinel = std::move(mine);
}

// ---- at exit ----------------------------------------------------------------------------------

/// Stops the fork server this process started: end of file on its control socket, SIGKILL if it
/// lingers.
inline void stop_forkserver(Globals& g) noexcept {
  std::lock_guard lock(g.server_mutex);
  if (g.server_pid == 0 || g.server_owner != os::current_pid()) return;
  g.server_control.reset();  // the server exits when it sees end of file
  try {
    auto h = os::open_process(g.server_pid);
    if (!h.valid() || !os::wait_readable(h.get(), std::chrono::seconds(2)))
      os::send_signal(g.server_pid, os::kSigKill);
    os::wait_readable(h.get(), std::chrono::seconds(2));
    os::poll_process(g.server_pid);
  } catch (const std::exception&) {
  }
  g.server_handle.reset();
  g.server_pid = 0;
}

/// Python's atexit handler: join the children (terminating daemons), then stop the fork server.
inline void exit_handler() noexcept {
  shutdown_children();
  stop_forkserver(globals());
}

/// Installs exit_handler once per process (caller holds globals().mutex).
inline void install_exit_handler() {
  auto& g = globals();
  if (!g.exit_handler_installed) {
    std::atexit(&exit_handler);
    g.exit_handler_installed = true;
  }
}

// ---- a re-executed program --------------------------------------------------------------------

//!Effects: runs the role that kBootstrapEnv gives this program ("spawn:<fd>" or
//! "forkserver:<fd>") and exits; an invalid value is reported and exits with code 1.
[[noreturn]] inline void run_bootstrap_role(const std::string& role) {
  const auto colon = role.find(':');
  std::optional<os::native_handle> fd;
  if (colon != std::string::npos) fd = os::handle_from_text(role.substr(colon + 1));
  const std::string_view kind = std::string_view(role).substr(0, colon);
  if (fd && kind == "spawn") spawn_main(*fd);
  if (fd && kind == "forkserver") forkserver_main(*fd);
  fmt::print(stderr, "mpp: invalid {}='{}' in the environment; exiting\n", kBootstrapEnv, role);
  os::exit_process(1);
}

}  // namespace mpp::detail
