// mpp — Pool internals: the zygote of a fork pool. Replacement workers must not be forked from
// the pool's own process once its supervisor thread runs (a fork copies the locks other threads
// hold, cpython#84559), so the pool forks one single-threaded zygote when it is made, in the
// thread that makes it, and the zygote forks each replacement on request. The protocol is
// described in docs/design/pool.md.
#pragma once

#include "../config.hpp"

#if defined(MPP_OS_POSIX)

#  include <chrono>
#  include <cstdint>
#  include <map>
#  include <optional>
#  include <string>
#  include <utility>
#  include <vector>

#  include "../../codec.hpp"
#  include "../../errors.hpp"
#  include "../../process.hpp"
#  include "../launch.hpp"
#  include "../liveness.hpp"
#  include "../os.hpp"
#  include "worker.hpp"

namespace mpp::detail::pool {

/// What the zygote is asked for: a worker with this name and configuration.
struct ZygoteRequest {
  std::string name;
  WorkerConfig config;
  template <class Ar>
  void serialize(Ar& ar) {
    ar(name, config);
  }
};

/// The zygote's side: forks a worker per request, answers 'P' with its pid, and reports 'X'
/// (value: pid, message: exit code) when one ends; exits at end of file (the pool stopped or its
/// process died) or when the pool's process is gone.
class ZygoteLoop {
 public:
  ZygoteLoop(os::Fd sock, LaunchRequest base, ProcessRef pool)
      : sock_(std::move(sock)), base_(std::move(base)), pool_(pool) {}

  void run() {
    using namespace std::chrono_literals;
    std::vector<os::native_handle> handles;
    for (;;) {
      handles.assign(1, sock_.get());
      for (auto& c : children_) handles.push_back(c.second.get());
      const int i = os::wait_any_readable(handles, std::chrono::nanoseconds(100ms));
      reap();
      if (!pool_.alive()) return;  // orphaned: the workers see it too and stop
      if (i == 0 && !serve()) return;
    }
  }

 private:
  // Reports every worker that ended (its pidfd is readable, or it can no longer be watched).
  void reap() {
    for (auto it = children_.begin(); it != children_.end();) {
      std::optional<int> code;
      try {
        code = os::poll_process(it->first);
      } catch (const OSError&) {
        code = 255;
      }
      if (!code) {
        ++it;
        continue;
      }
      try {
        write_record(sock_, 'X', it->first, std::to_string(*code));
      } catch (const Error&) {  // the pool is gone: nobody to tell
      }
      it = children_.erase(it);
    }
  }

  //!Returns: false at end of file or an empty request ("stop").
  bool serve() {
    const std::optional<Bytes> frame = read_frame(sock_);
    if (!frame || frame->empty()) return false;
    ZygoteRequest req;
    os::pid_type pid = 0;
    try {
      req = mpp::decode<ZygoteRequest>(*frame);
      pid = os::fork_process();
    } catch (const std::exception& e) {
      write_record(sock_, 'E', 0, e.what());
      return true;
    }
    if (pid == 0) run_worker(req);
    write_record(sock_, 'P', pid);
    children_.emplace(pid, os::open_process(pid));
    return true;
  }

  [[noreturn]] void run_worker(const ZygoteRequest& req) noexcept {
    sock_.reset();
    for (auto& c : children_) c.second.reset();
    LaunchRequest info = base_;
    info.name = req.name;
    // Callables cross as bytes (the worker is a copy of the program); the pool's objects are
    // opened by name, as the zygote was forked before this worker's task queue existed.
    run_child(info, [&] { worker_main_by_name(req.config); });
  }

  os::Fd sock_;
  LaunchRequest base_;
  ProcessRef pool_;
  std::map<os::pid_type, os::Fd> children_;  // pid -> pidfd
};

/// The pool's side of its zygote: asks for workers and collects their exit codes. Used by the
/// supervisor thread only.
class Zygote {
 public:
  //!Effects: forks the zygote (call it in the thread that makes the pool, before any other).
  explicit Zygote(int pool_number) {
    auto [mine, theirs] = os::socket_pair();
    LaunchRequest base;
    base.daemon = true;
    base.method = static_cast<std::uint8_t>(StartMethod::fork);
    const auto me = ProcessRef::self();
    base.parent_pid = me.pid;
    base.parent_start_tag = me.start_tag;
    {
      auto& g = globals();
      std::lock_guard lock(g.mutex);
      base.parent_name = g.self ? g.self->name : "MainProcess";
      if (g.self) base.authkey = g.self->authkey;
    }
    const os::native_handle ours = mine.get();
    ProcessOptions po;
    po.name = fmt::format("PoolZygote-{}", pool_number);
    po.daemon = true;
    po.start_method = StartMethod::fork;
    auto shared = std::make_shared<os::Fd>(std::move(theirs));
    proc_.emplace(po, [shared, ours, base, me] {
      os::Fd(ours).reset();  // only the pool holds its end: its death is our end of file
      ZygoteLoop(std::move(*shared), base, me).run();
    });
    proc_->start();
    shared->reset();
    sock_ = std::move(mine);
  }
  Zygote(const Zygote&) = delete;
  Zygote& operator=(const Zygote&) = delete;
  ~Zygote() { stop(); }

  //!Returns: the zygote's pid.
  os::pid_type pid() const { return static_cast<os::pid_type>(proc_->pid().value_or(0)); }

  //!Returns: the pid of a new worker `name` running `c`. Throws: ProcessError.
  os::pid_type fork_worker(const std::string& name, const WorkerConfig& c) {
    using namespace std::chrono_literals;
    if (!sock_.valid()) gone("it was stopped");
    try {
      write_frame(sock_, mpp::encode(ZygoteRequest{name, c}), std::chrono::nanoseconds(10s));
      const auto deadline = std::chrono::steady_clock::now() + 10s;
      for (;;) {
        const auto left = deadline - std::chrono::steady_clock::now();
        if (left <= 0s || !os::wait_readable(sock_.get(), left)) gone("it did not answer in 10 s");
        const std::optional<Record> r = read_record(sock_);
        if (!r) gone("it exited");
        if (r->tag == 'X') {
          exited_[r->value] = std::stoi(r->message);
        } else if (r->tag == 'P' && r->value > 0) {
          return r->value;
        } else {
          fail<ProcessError>("the pool's zygote (pid {}) could not fork a worker: {}", pid(),
                             r->message);
        }
      }
    } catch (const ProcessError&) {
      throw;
    } catch (const std::exception& e) {
      gone(e.what());
    }
  }

  //!Returns: the exit code of worker `pid` once it ended (reaped by the zygote); for a worker
  //! whose zygote is gone, -1 once it no longer runs.
  std::optional<int> exit_code(os::pid_type worker) {
    pump();
    if (auto it = exited_.find(worker); it != exited_.end()) return it->second;
    if (!sock_.valid() && !ProcessRef{worker, 0}.alive()) return -1;
    return std::nullopt;
  }

  //!Effects: waits up to `timeout` for worker `pid` to end. Returns: whether it did.
  bool wait(os::pid_type worker, std::chrono::nanoseconds timeout) {
    using namespace std::chrono_literals;
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      if (exit_code(worker)) return true;
      const auto left = deadline - std::chrono::steady_clock::now();
      if (left <= 0s) return false;
      if (sock_.valid())
        (void)os::wait_readable(sock_.get(), std::min<std::chrono::nanoseconds>(left, 20ms));
      else
        std::this_thread::sleep_for(std::min<std::chrono::nanoseconds>(left, 10ms));
    }
  }

  //!Effects: the zygote exits (asked to: processes forked from the pool's process hold the socket
  //! too, so its end of file may never come), killed if it lingers.
  void stop() noexcept {
    if (sock_.valid()) {
      try {
        write_frame(sock_, Bytes{}, std::chrono::nanoseconds(std::chrono::seconds(1)));
      } catch (const std::exception&) {  // gone already
      }
    }
    sock_.reset();
    if (!proc_) return;
    try {
      if (!proc_->join(Timeout(2.0))) {
        proc_->kill();
        (void)proc_->join(Timeout(5.0));
      }
    } catch (const std::exception&) {
    }
    proc_.reset();
  }

 private:
  // Reads the exit reports that arrived.
  void pump() {
    while (sock_.valid() && os::wait_readable(sock_.get(), std::chrono::nanoseconds{0})) {
      std::optional<Record> r;
      try {
        r = read_record(sock_);
      } catch (const std::exception&) {
      }
      if (!r) {  // the zygote died: its workers are watched by pid from now on
        sock_.reset();
        return;
      }
      if (r->tag == 'X') exited_[r->value] = std::stoi(r->message);
    }
  }

  [[noreturn]] void gone(std::string_view why) {
    fail<ProcessError>("the pool's zygote process (pid {}) cannot fork a replacement worker: {}",
                       pid(), why);
  }

  std::optional<Process> proc_;
  os::Fd sock_;
  std::map<os::pid_type, int> exited_;  // workers the zygote reaped: their exit codes
};

}  // namespace mpp::detail::pool

#endif  // MPP_OS_POSIX
