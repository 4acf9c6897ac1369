// mpp — Pool internals: the scheduler a Pool owns. It starts the workers, keeps the pending and
// in-flight tasks, and runs the supervisor thread that hands tasks to workers, delivers results,
// replaces lost workers and enforces task timeouts. The algorithm is described in
// docs/design/pool.md.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <deque>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "../../array.hpp"
#include "../../errors.hpp"
#include "../../process.hpp"
#include "../../queue.hpp"
#include "invoke.hpp"
#include "result.hpp"
#include "worker.hpp"
#include "zygote.hpp"

namespace mpp::detail::pool {

/// What a Scheduler is started with (the public PoolOptions, without the public type).
struct SchedulerOptions {
  int processes = 0;
  unsigned maxtasksperchild = 0;
  Timeout task_timeout{};
  unsigned retries = 0;
  StartMethod method = StartMethod::fork;
  /// Workers start when work needs them and idle ones are reused (Python's ProcessPoolExecutor
  /// with spawn or forkserver); otherwise all start with the pool.
  bool on_demand = false;
  /// What the user made, as messages name it ("Pool", "ProcessPoolExecutor").
  const char* owner = "Pool";
  /// The message of a call after close() (Python's wording differs between Pool and executor).
  const char* closed_message = "Pool not running: it was closed or terminated";
};

/// The input of a raw map: owned (map_async) or borrowed from the caller (map, which waits and
/// sets `gone` under the scheduler's lock before returning). Read only by the dispatcher.
struct RawSource {
  const std::byte* data = nullptr;
  bool gone = false;
  std::vector<std::byte> owned;
};

/// A worker process: a child of the pool's process, or a worker its zygote forked (watched
/// through the zygote, which reaps it).
class WorkerProc {
 public:
  explicit WorkerProc(Process p) : direct_(std::move(p)) {}
#if defined(MPP_OS_POSIX)
  WorkerProc(Zygote& z, os::pid_type pid) : zygote_(&z), pid_(pid) {}
#endif

  std::optional<int> pid() const { return direct_ ? direct_->pid() : std::optional<int>(pid_); }
  std::optional<int> exitcode() {
    if (direct_) return direct_->exitcode();
#if defined(MPP_OS_POSIX)
    return zygote_->exit_code(pid_);
#else
    return std::nullopt;
#endif
  }
  bool is_alive() { return direct_ ? direct_->is_alive() : !exitcode().has_value(); }
  void terminate() { direct_ ? direct_->terminate() : signal(os::kSigTerm); }
  void kill() { direct_ ? direct_->kill() : signal(os::kSigKill); }
  //!Returns: whether it ended within `timeout` (nullopt: waits until it does).
  bool join(Timeout timeout = std::nullopt) {
    if (direct_) return direct_->join(timeout);
#if defined(MPP_OS_POSIX)
    for (;;) {  // unbounded only when asked, and after a kill
      const auto step = timeout ? std::chrono::duration_cast<std::chrono::nanoseconds>(*timeout)
                                : std::chrono::nanoseconds(std::chrono::seconds(1));
      if (zygote_->wait(pid_, step)) return true;
      if (timeout) return false;
    }
#else
    return true;
#endif
  }

 private:
  // Only while the zygote has not reported its end: the zygote reaps it first, so its pid is not
  // reused before the report arrives.
  void signal(int sig) {
    if (!exitcode()) (void)os::send_signal(pid_, sig);
  }

  std::optional<Process> direct_;
#if defined(MPP_OS_POSIX)
  Zygote* zygote_ = nullptr;
#endif
  os::pid_type pid_ = 0;
};

/// The workers of a Pool and the supervisor thread that feeds them.
class Scheduler {
 public:
  /// The most worker processes a pool can have.
  static constexpr int kMaxProcesses = static_cast<int>(mpmc::kMaxParticipants) - 1;

  Scheduler() = default;
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;
  ~Scheduler() { terminate(); }

  //!Effects: starts the workers (each first runs initializer `init_invoker`, if >= 0) and the
  //! supervisor thread. Throws: ValueError, ProcessError.
  void start(const SchedulerOptions& opts, std::int32_t init_invoker, std::string init_fn,
             std::string init_args) {
    opts_ = opts;
    if (opts.method == StartMethod::fork && !os::kCanFork)
      fail<ValueError>(
          "this platform has no 'fork' start method: make the Pool with "
          "PoolOptions::start_method = StartMethod::spawn and registered "
          "functions");
    const int n = opts.processes > 0 ? opts.processes : std::max(1, cpu_count());
    // The workers and this process all use the shared result queue and status array.
    if (n > kMaxProcesses)
      fail<ValueError>(
          "a {} of {} processes: at most {} (every worker and the pool's "
          "own process use its shared queue, which admits {} processes)",
          opts.owner, n, kMaxProcesses, mpmc::kMaxParticipants);
    make_shared_objects(static_cast<std::size_t>(n));
    config_.maxtasks = opts.maxtasksperchild;
    config_.init_invoker = init_invoker;
    config_.init_fn = std::move(init_fn);
    config_.init_args = std::move(init_args);
#if defined(MPP_OS_POSIX)
    // Forked now, in the thread making the pool, before the supervisor thread exists.
    if (opts.method == StartMethod::fork) zygote_.emplace(static_cast<int>(++pool_counter()));
#endif
    if (!opts.on_demand) start_workers();
    supervisor_ = std::thread([this] { supervise(); });
  }

  /// Number of worker processes.
  std::size_t processes() const noexcept { return workers_.size(); }
  /// How the workers are started.
  StartMethod method() const noexcept { return opts_.method; }
  /// What crosses to a worker for callable `f` (see wire_for).
  template <class F>
  std::string wire(const F& f) const {
    return wire_for(opts_.method, f);
  }

  //!Effects: queues one task per chunk of `job`, numbered from `first_index`.
  //!Throws: the pool's BrokenProcessPool; ValueError when closed or a chunk is too big.
  void enqueue(std::shared_ptr<Job> job, std::uint32_t invoker, std::string fn,
               std::vector<std::string> chunks, std::size_t first_index = 0) {
    auto shared_fn = std::make_shared<const std::string>(std::move(fn));
    std::lock_guard g(mu_);
    check_running_locked();
    for (std::size_t i = 0; i < chunks.size(); ++i) {
      Task t;
      t.seq = ++next_seq_;
      t.job = job;
      t.index = first_index + i;
      t.invoker = invoker;
      t.fn = shared_fn;
      t.args = std::move(chunks[i]);
      if (t.args.size() + shared_fn->size() + sizeof(TaskHeader) > kMaxMessage)
        fail<ValueError>(
            "a task of {} bytes exceeds the pool's {} byte limit; use a "
            "smaller chunksize",
            t.args.size(), kMaxMessage);
      pending_.push_back(std::move(t));
    }
    wake_supervisor();
  }

  //!Effects: queues raw map chunks of `chunk` items (`in` / `out` bytes each) over `count` items
  //! of `src`. Throws: as enqueue().
  void enqueue_raw(std::shared_ptr<Job> job, std::uint32_t invoker, std::string fn,
                   std::shared_ptr<RawSource> src, std::size_t count, std::size_t chunk,
                   std::size_t in, std::size_t out) {
    auto shared_fn = std::make_shared<const std::string>(std::move(fn));
    const std::size_t biggest = std::min(chunk, count) * std::max(in, out);
    if (biggest + shared_fn->size() + sizeof(TaskHeader) + sizeof(ResultHeader) > kMaxMessage)
      fail<ValueError>(
          "a task of {} bytes exceeds the pool's {} byte limit; use a "
          "smaller chunksize",
          biggest, kMaxMessage);
    std::lock_guard g(mu_);
    check_running_locked();
    for (std::size_t b = 0, i = 0; b < count; b += chunk, ++i) {
      const std::size_t n = std::min(chunk, count - b);
      Task t;
      t.seq = ++next_seq_;
      t.job = job;
      t.index = i;
      t.invoker = invoker;
      t.fn = shared_fn;
      t.raw = true;
      t.src = src;
      t.src_off = b * in;
      t.args_size = n * in;
      t.out_bytes = n * out;
      t.in_place = out <= in;
      pending_.push_back(std::move(t));
    }
    wake_supervisor();
  }

  //!Effects: the borrowed input of a map() that is returning may no longer be read.
  void release_source(RawSource& src) {
    std::lock_guard g(mu_);
    src.gone = true;
  }

  //!Effects: removes the tasks of `job` that no worker has been given yet.
  //!Returns: true when none of its tasks had been given out (so it will never run).
  bool cancel_pending(const Job* job) {
    std::lock_guard g(mu_);
    for (const auto& [seq, t] : inflight_)
      if (t.job.get() == job) return false;
    const auto before = pending_.size();
    std::erase_if(pending_, [&](const Task& t) { return t.job.get() == job; });
    return pending_.size() != before;
  }

  //!Effects: fails every task no worker has been given yet with CancelledError.
  void cancel_all_pending() {
    std::deque<Task> cancelled;
    {
      std::lock_guard g(mu_);
      cancelled.swap(pending_);
    }
    for (auto& t : cancelled)
      t.job->fail_chunk(t.index, std::make_exception_ptr(
                                     CancelledError("cancelled by shutdown(cancel_futures=true)")));
  }

  //!Throws: the pool's BrokenProcessPool once it is broken.
  void check_broken() {
    std::lock_guard g(mu_);
    if (broken_) std::rethrow_exception(broken_);
  }

  //!Returns: true while a worker holds a task of `job`.
  bool is_running(const Job* job) {
    std::lock_guard g(mu_);
    for (const auto& [seq, t] : inflight_)
      if (t.job.get() == job) return true;
    return false;
  }

  //!Effects: no more work may be queued; the workers stop once the queued work is done.
  void close() {
    std::lock_guard g(mu_);
    closed_ = true;
    wake_supervisor();
  }

  //!Effects: stops the workers at once; unfinished tasks fail with ProcessError.
  void terminate() {
    {
      std::lock_guard g(mu_);
      if (terminated_) return;
      closed_ = true;
      terminated_ = true;
      wake_supervisor();
    }
    if (supervisor_.joinable()) supervisor_.join();
  }

  //!Effects: waits for the supervisor to finish. Throws: ValueError unless closed.
  void join() {
    {
      std::lock_guard g(mu_);
      if (!closed_) fail<ValueError>("Pool.join() needs close() or terminate() first");
    }
    if (supervisor_.joinable()) supervisor_.join();
  }

 private:
  struct Task {
    std::uint64_t seq = 0;
    std::shared_ptr<Job> job;
    std::size_t index = 0;
    std::uint32_t invoker = 0;
    std::shared_ptr<const std::string> fn;
    std::string args;
    unsigned attempts = 0;
    bool raw = false;                // a raw map chunk (raw_invokers(); args and results are bytes)
    std::size_t out_bytes = 0;       // raw: the result bytes expected
    bool in_place = false;           // raw: results no larger than the input: written over it
    std::shared_ptr<RawSource> src;  // raw: the input bytes are src->data[src_off, +args_size)
    std::size_t src_off = 0, args_size = 0;
  };
  struct WorkerSlot {
    std::optional<WorkerProc> proc;
    std::optional<Queue<std::string>> tasks;
    std::array<std::uint64_t, kWindow> region{};  // task seq using arena region k
    std::deque<std::uint64_t> assigned;           // in the order the worker will run them
    unsigned dispatched = 0;                      // tasks given to this incarnation
    bool stopping = false;
    bool respawn = false;   // its replacement failed to start: try again
    std::uint32_t gen = 0;  // incarnation (worker_counter_ at its spawn)
  };
  using Unplaced = std::vector<std::pair<Task, std::exception_ptr>>;

  std::string broken_advice() const {
    return fmt::format(
        "the {0} is broken: its pending and later calls fail with "
        "BrokenProcessPool and no worker is started again (make a new {0} once "
        "the initializer is fixed)",
        opts_.owner);
  }

  // ---- starting ------------------------------------------------------------------------------

  void check_running_locked() const {
    if (broken_) std::rethrow_exception(broken_);
    if (closed_) fail<ValueError>("{}", opts_.closed_message);
  }

  // The result queue, status array and arena that every worker shares.
  void make_shared_objects(std::size_t n) {
    QueueOptions qo;
    qo.max_item_size = kMaxMessage;
    results_.emplace(static_cast<long>(4 * n + 8), qo);
    status_.emplace(2 * n);
    SegmentSpec arena_spec{Kind::pool, TypeInfo::none(),
                           static_cast<std::uint64_t>(n) * kWindow * kRegion,
                           static_cast<std::uint64_t>(n)};
    arena_spec.reserve = 0;  // 32 MiB a worker, populated as chunks are written
    arena_ = std::make_shared<Segment>(Segment::create_anonymous(arena_spec));
    arena_warm_.assign(n * kWindow, 0);
    config_.arena = arena_->payload();
    config_.arena_size = n * kWindow * kRegion;
    config_.results = results_->name();
    config_.status = status_->name();
    const auto me = ProcessRef::self();
    config_.parent_pid = me.pid;
    config_.parent_tag = me.start_tag;
    config_.arena_name = arena_->name();
    workers_.resize(n);
  }

  void start_workers() {
    try {
      for (std::size_t i = 0; i < workers_.size(); ++i) spawn_worker(i, false);
    } catch (...) {  // e.g. spawn without mpp::bootstrap: stop the workers already started
      for (auto& w : workers_) {
        if (!w.proc || !w.proc->pid()) continue;  // not started
        try {
          w.proc->kill();
          w.proc->join(Timeout(5.0));
        } catch (const std::exception&) {  // keep the start failure as the error
        }
      }
      throw;
    }
  }

  // `replacement`: a fork pool's worker is then forked by the zygote, never by this process
  // (the supervisor thread runs here).
  void spawn_worker(std::size_t i, bool replacement) {
    WorkerSlot& w = workers_[i];
    QueueOptions qo;
    qo.max_item_size = kMaxMessage;
    w.tasks.emplace(static_cast<long>(kWindow + 1), qo);
    w.assigned.clear();
    w.region.fill(0);
    w.dispatched = 0;
    w.stopping = false;
    WorkerConfig c = config_;
    c.tasks = w.tasks->name();
    c.index = static_cast<std::uint32_t>(i);
    w.gen = c.gen = ++worker_counter_;
    running_word(i).store(0);
    ProcessOptions po;
    po.name = fmt::format("PoolWorker-{}", worker_counter_);
    po.daemon = true;
    po.start_method = opts_.method;
#if defined(MPP_OS_POSIX)
    if (replacement && zygote_) {  // it opens the objects by name (see ZygoteLoop)
      c.arena = nullptr;
      w.proc.emplace(*zygote_, zygote_->fork_worker(po.name, c));
      return;
    }
#else
    (void)replacement;
#endif
    if (opts_.method == StartMethod::fork) {
      c.tasks_q = *w.tasks;  // workers are forked: they inherit these mappings
      c.results_q = *results_;
      c.status_a = *status_;
      Process p(po, [c] { worker_main(c); });
      p.start();
      w.proc.emplace(std::move(p));
    } else {  // a new run of the program: it opens everything by name (see spawned_worker_main)
      c.arena = nullptr;
      Process p(po, &spawned_worker_main, std::move(c));
      p.start();
      w.proc.emplace(std::move(p));
    }
  }

  static unsigned& pool_counter() {
    static unsigned n = 0;  // pools made by this process (names the zygotes)
    return n;
  }

  std::atomic_ref<std::uint64_t> running_word(std::size_t i) {
    return std::atomic_ref<std::uint64_t>((*status_)[2 * i]);
  }
  std::atomic_ref<std::uint64_t> started_word(std::size_t i) {
    return std::atomic_ref<std::uint64_t>((*status_)[2 * i + 1]);
  }
  std::byte* region_at(std::size_t worker, std::size_t k) const {
    return arena_->payload() + (worker * kWindow + k) * kRegion;
  }

  // The supervisor sleeps in the result queue; an empty message wakes it to dispatch new work.
  void wake_supervisor() {
    if (results_) (void)results_->try_put(std::string());
  }

  // ---- the supervisor thread -----------------------------------------------------------------

  void supervise() {
    using namespace std::chrono_literals;
    for (;;) {
      bool stop_now = false, drained = false;
      Unplaced unplaced;
      std::vector<std::size_t> to_start;
      {
        std::unique_lock g(mu_);
        if (terminated_) stop_now = true;
        if (!stop_now && !broken_) dispatch_locked(unplaced, to_start);
        drained = closed_ && pending_.empty() && inflight_.empty();
      }
      // Failed outside mu_: a job's failure may run user callbacks.
      for (auto& [t, e] : unplaced) t.job->fail_chunk(t.index, e);
      if (stop_now) return shutdown(true);
      if (drained) return shutdown(false);
      for (std::size_t i : to_start) start_on_demand(i);
      if (!to_start.empty()) continue;  // hand the work to them at once
      poll_results(20ms);
      check_workers();
    }
  }

  //!Effects: hands pending tasks out on demand: an idle worker first takes a pending task, else
  //! a task queued behind another worker's running one (stolen back); a second task is queued
  //! to a worker only while every worker is busy (the prefetch that keeps tiny tasks flowing,
  //! benchmarks row pool.map.1e6). With on-demand workers, slots to start go to `to_start`
  //! instead of prefetching. A task that cannot be placed because /dev/shm is full is moved to
  //! `unplaced` with its NoSpaceError (only that call fails).
  void dispatch_locked(Unplaced& unplaced, std::vector<std::size_t>& to_start) {
    // 1. Every idle worker takes one task.
    for (std::size_t i = 0; i < workers_.size() && has_pending_locked(); ++i)
      if (can_take(i) && workers_[i].assigned.empty())
        (void)send_task(i, pending_.front(), unplaced);
    // 2. Nothing pending and a worker idle: a task waiting behind a running one moves to it.
    if (!has_pending_locked()) return rebalance_locked(unplaced);
    // 3. Every worker is busy: start a worker rather than queue behind a running task.
    if (opts_.on_demand) {
      std::size_t want = pending_.size();
      for (std::size_t i = 0; i < workers_.size() && want > 0; ++i)
        if (!workers_[i].proc && !workers_[i].respawn) {
          to_start.push_back(i);
          --want;
        }
      if (!to_start.empty()) return;
    }
    // 4. Still busy: queue one more task to each worker, so none waits for a round trip.
    for (std::size_t i = 0; i < workers_.size() && has_pending_locked(); ++i)
      while (has_pending_locked() && can_take(i) && workers_[i].assigned.size() < kWindow)
        if (!send_task(i, pending_.front(), unplaced)) break;
  }

  //!Returns: whether a task is pending, after dropping the raw chunks nobody wants any more
  //! (their map() returned, failed).
  bool has_pending_locked() {
    while (!pending_.empty() && pending_.front().raw && pending_.front().src->gone)
      pending_.pop_front();
    return !pending_.empty();
  }

  //!Returns: whether worker `i` may be given another task now.
  bool can_take(std::size_t i) const {
    const WorkerSlot& w = workers_[i];
    return w.tasks && !w.stopping &&
           (opts_.maxtasksperchild == 0 || w.dispatched < opts_.maxtasksperchild);
  }

  //!Effects: gives each idle worker a task queued behind another worker's running one, while
  //! there are such tasks (one pass over the workers: pools have up to kMaxProcesses).
  void rebalance_locked(Unplaced& unplaced) {
    std::size_t victim = 0;
    for (std::size_t i = 0; i < workers_.size(); ++i) {
      if (!can_take(i) || !workers_[i].assigned.empty()) continue;
      bool got = false;
      for (; victim < workers_.size() && !got; ++victim)
        got = victim != i && workers_[victim].assigned.size() >= 2 && steal_locked(victim);
      if (!got) return;
      (void)send_task(i, pending_.front(), unplaced);
    }
  }

  //!Effects: takes back a task that worker `j` holds but has not started (it is still in the
  //! worker's queue, so either the worker or this thread gets it) and puts it first in line.
  //!Returns: whether one was taken.
  bool steal_locked(std::size_t j) {
    WorkerSlot& w = workers_[j];
    if (!w.tasks) return false;
    std::optional<std::string> m;
    try {
      m = w.tasks->try_get();
    } catch (const std::exception&) {  // leave it to its worker
      return false;
    }
    if (!m) return false;  // the worker took it meanwhile
    TaskHeader h{};
    if (m->size() >= sizeof h) std::memcpy(&h, m->data(), sizeof h);
    std::erase(w.assigned, h.seq);
    for (auto& r : w.region)
      if (r == h.seq) r = 0;
    if (w.dispatched > 0) --w.dispatched;  // it did not run it: it may take another
    auto it = inflight_.find(h.seq);
    if (it == inflight_.end()) return false;
    pending_.push_front(std::move(it->second));
    inflight_.erase(it);
    return true;
  }

  //!Effects: gives the front pending task `t` to worker `i`, or moves it to `unplaced`.
  //!Returns: false when the worker's queue is full (the task stays pending).
  bool send_task(std::size_t i, Task& t, Unplaced& unplaced) {
    WorkerSlot& w = workers_[i];
    TaskHeader h{t.seq, t.invoker, static_cast<std::uint32_t>(t.fn->size())};
    std::string_view args = t.args;
    std::size_t k = w.region.size();
    if (t.raw) {
      args = std::string_view(reinterpret_cast<const char*>(t.src->data) + t.src_off, t.args_size);
      h.raw = 1;
      h.in_size = t.out_bytes;  // inline: the result bytes expected
      h.out_off = t.in_place ? 0 : out_offset(t.args_size);
      std::exception_ptr no_space;
      k = free_region(i, t, h.out_off, no_space);
      if (no_space) {
        unplaced.emplace_back(std::move(t), no_space);
        pending_.pop_front();
        return true;
      }
      if (k < w.region.size()) {  // the input goes to region k, only the header to the queue
        std::memcpy(region_at(i, k), args.data(), args.size());
        h.region = static_cast<std::uint32_t>(k + 1);
        h.in_size = t.args_size;
        args = {};
      }
    }
    try {
      if (!w.tasks->try_put(task_message(h, *t.fn, args))) return false;
    } catch (const NoSpaceError&) {  // the task queue cannot back this message
      unplaced.emplace_back(std::move(t), std::current_exception());
      pending_.pop_front();
      return true;
    }
    if (k < w.region.size()) w.region[k] = t.seq;
    w.assigned.push_back(t.seq);
    ++w.dispatched;
    const std::uint64_t seq = t.seq;
    inflight_.emplace(seq, std::move(t));
    pending_.pop_front();
    return true;
  }

  //!Returns: a free arena region of worker `i` whose pages are allocated for raw chunk `t`, or
  //! kWindow when the chunk goes through the queue. Sets `no_space` when /dev/shm is full.
  std::size_t free_region(std::size_t i, const Task& t, std::size_t out_off,
                          std::exception_ptr& no_space) {
    WorkerSlot& w = workers_[i];
    if (!arena_ || t.args_size > kRegion || out_off + t.out_bytes > kRegion) return kWindow;
    std::size_t k = 0;
    while (k < w.region.size() && w.region[k] != 0) ++k;
    if (k == w.region.size()) return kWindow;
    // First use of this much of the region: have its pages allocated now, in one call, so a
    // full /dev/shm fails this chunk here rather than faulting the pages into memory only this
    // process sees.
    std::size_t& warm = arena_warm_[i * kWindow + k];
    const std::size_t need = warm_size(std::max<std::size_t>(t.args_size, out_off + t.out_bytes));
    if (warm >= need) return k;
    const int err = os::populate_write(region_at(i, k), need);
    if (err == 0) {
      warm = need;
      return k;
    }
    if (err != EFAULT && err != ENOMEM && err != ENOSPC)
      return kWindow;  // not a lack of memory: the chunk goes through the queue
    try {
      os::fail_no_space(arena_->name(), need - warm,
                        fmt::format("; or use a smaller chunksize (this chunk of a Pool's "
                                    "map has {} bytes of arguments)",
                                    t.args_size));
    } catch (const NoSpaceError&) {
      no_space = std::current_exception();
    }
    return kWindow;
  }

  void poll_results(std::chrono::milliseconds wait) {
    std::optional<std::string> m;
    try {
      m = results_->get(true, std::chrono::duration<double>(wait));
    } catch (const queue::Empty&) {
      return;
    }
    for (; m; m = results_->try_get()) handle_result(*m);
  }

  void handle_result(const std::string& m) {
    if (m.size() < sizeof(ResultHeader)) return;  // a wake-up (or malformed: cannot be attributed)
    ResultHeader h;
    std::memcpy(&h, m.data(), sizeof h);
    std::string_view payload(m.data() + sizeof h, m.size() - sizeof h);
    if (h.seq == kInitFailed) {
      if (h.ok == 0) initializer_failed(h.worker, payload);
      return;
    }
    Task t;
    std::uint64_t* region = nullptr;  // the worker's region slot to free once delivered
    if (!take_inflight(h, t, region)) return;
    if (h.ok && h.region != 0 && !result_in_region(h, t, region, payload)) return;
    if (h.ok) {
      t.job->deliver(t.index, payload);
      if (region != nullptr) *region = 0;  // only this thread dispatches: safe to reuse now
    } else {
      if (region != nullptr) *region = 0;
      t.job->fail_chunk(t.index, remote_exception(payload));
    }
  }

  //!Effects: moves the task result `h` answers out of the in-flight set into `t`, and points
  //! `region` at the arena slot it used. Returns: false when the result is stale.
  bool take_inflight(const ResultHeader& h, Task& t, std::uint64_t*& region) {
    std::lock_guard g(mu_);
    // Results left in a region by an earlier incarnation of the worker (it exited or was
    // replaced before we read them): the region may hold other data now. The task was
    // requeued or failed when that worker went away.
    if (h.region != 0 && (h.worker >= workers_.size() || workers_[h.worker].gen != h.gen))
      return false;
    auto it = inflight_.find(h.seq);
    if (it == inflight_.end()) return false;  // already failed (timeout, lost worker)
    t = std::move(it->second);
    inflight_.erase(it);
    if (h.worker < workers_.size()) {
      auto& a = workers_[h.worker].assigned;
      a.erase(std::remove(a.begin(), a.end(), h.seq), a.end());
      for (auto& r : workers_[h.worker].region)
        if (r == h.seq) region = &r;
    }
    return true;
  }

  //!Effects: points `payload` at the results a worker left in the arena: only the region its
  //! task was given, and only the expected size. Returns: false (the task failed) otherwise.
  bool result_in_region(const ResultHeader& h, Task& t, std::uint64_t* region,
                        std::string_view& payload) {
    const std::size_t k = h.region - 1;
    const std::size_t off = t.in_place ? 0 : out_offset(t.args_size);
    if (!t.raw || region == nullptr || k >= kWindow || region != &workers_[h.worker].region[k] ||
        h.out_size != t.out_bytes || off + t.out_bytes > kRegion) {
      if (region != nullptr) *region = 0;
      t.job->fail_chunk(t.index, std::make_exception_ptr(CorruptedError(fmt::format(
                                     "pool task {}: a malformed result (region {}, {} bytes)",
                                     h.seq, h.region, h.out_size))));
      return false;
    }
    payload =
        std::string_view(reinterpret_cast<const char*>(region_at(h.worker, k)) + off, t.out_bytes);
    return true;
  }

  void check_workers() {
    for (std::size_t i = 0; i < workers_.size(); ++i) {
      WorkerSlot& w = workers_[i];
      if (!w.proc) {
        if (w.respawn && opts_.on_demand)
          w.respawn = false;  // one poll later, the next dispatch that needs it tries again
        else if (w.respawn)
          replace(i, 0);
        continue;
      }
      if (timed_out(i)) continue;
      if (!w.proc->is_alive()) worker_exited(i);
    }
  }

  //!Effects: kills worker `i` if its task ran over the timeout, failing the task with
  //! TimeoutError and replacing the worker. Returns: whether it did.
  bool timed_out(std::size_t i) {
    const std::uint64_t running = running_word(i).load(std::memory_order_acquire);
    if (!opts_.task_timeout || running == 0 || running == kInitializing) return false;
    const auto started = static_cast<std::int64_t>(started_word(i).load(std::memory_order_relaxed));
    const double secs = static_cast<double>(now_ns() - started) / 1e9;
    if (secs <= opts_.task_timeout->count()) return false;
    WorkerSlot& w = workers_[i];
    w.proc->kill();
    w.proc->join(Timeout(5.0));
    fail_task(running, std::make_exception_ptr(TimeoutError(
                           fmt::format("the task ran for more than {} s; its worker was replaced",
                                       opts_.task_timeout->count()))));
    replace(i, running);
    return true;
  }

  // Worker `i` exited: after maxtasksperchild (normal), or died (killed, crashed).
  void worker_exited(std::size_t i) {
    WorkerSlot& w = workers_[i];
    // Read now that it is gone: it may have left the initializer or started a task since the
    // timeout check.
    const std::uint64_t running = running_word(i).load(std::memory_order_acquire);
    // Results it queued before it went are read first, so their tasks are delivered rather than
    // run again.
    for (auto m = results_->try_get(); m; m = results_->try_get()) handle_result(*m);
    if (!w.proc) return;  // its report of a failed initializer broke the pool
    const int code = w.proc->exitcode().value_or(-1);
    if (running == kInitializing) {  // died without a report: killed, crashed
      std::exception_ptr e;
      try {
        try {
          fail<WorkerLostError>("pool worker {} died (exit code {}) while running the initializer",
                                i, code);
        } catch (...) {
          std::throw_with_nested(BrokenProcessPool(fmt::format(
              "pool worker {} died (exit code {}) while running the {}'s initializer; {}", i, code,
              opts_.owner, broken_advice())));
        }
      } catch (...) {
        e = std::current_exception();
      }
      break_pool(e);
      return;
    }
    if (running != 0) retry_or_fail(i, running, code);
    replace(i, running);
  }

  // The task a dead worker was running runs again if it has retries left, else fails.
  void retry_or_fail(std::size_t i, std::uint64_t running, int code) {
    std::unique_lock g(mu_);
    auto it = inflight_.find(running);
    if (it != inflight_.end() && it->second.attempts < opts_.retries) {
      ++it->second.attempts;
      pending_.push_front(std::move(it->second));
      inflight_.erase(it);
      return;
    }
    g.unlock();
    fail_task(running, std::make_exception_ptr(WorkerLostError(fmt::format(
                           "pool worker {} died (exit code {}) while running a task", i, code))));
  }

  void fail_task(std::uint64_t seq, std::exception_ptr e) {
    Task t;
    {
      std::lock_guard g(mu_);
      auto it = inflight_.find(seq);
      if (it == inflight_.end()) return;
      t = std::move(it->second);
      inflight_.erase(it);
    }
    t.job->fail_chunk(t.index, e);
  }

  // The worker is gone: tasks it held but had not started go back to the front of the queue;
  // a fresh worker (with a fresh task queue, so nothing is delivered twice) takes its place.
  void replace(std::size_t i, std::uint64_t running) {
    std::unique_lock g(mu_);
    WorkerSlot& w = workers_[i];
    for (auto it = w.assigned.rbegin(); it != w.assigned.rend(); ++it) {
      if (*it == running) continue;
      auto f = inflight_.find(*it);
      if (f == inflight_.end()) continue;
      pending_.push_front(std::move(f->second));
      inflight_.erase(f);
    }
    w.assigned.clear();
    w.region.fill(0);
    w.proc.reset();
    w.tasks.reset();
    w.respawn = false;
    // On demand, the next dispatch starts a worker when work is waiting.
    if (terminated_ || broken_ || opts_.on_demand) return;
    g.unlock();
    try_spawn(i);
  }

  //!Effects: starts worker `i` for work that is waiting (on-demand pools).
  void start_on_demand(std::size_t i) {
    {
      std::lock_guard g(mu_);
      if (terminated_ || broken_) return;
    }
    try_spawn(i);
  }

  //!Effects: starts worker `i`; when it cannot start, retries later, and fails the pending work
  //! if no worker is left to run it.
  void try_spawn(std::size_t i) {
    WorkerSlot& w = workers_[i];
    try {
      spawn_worker(i, true);
    } catch (const std::exception& e) {  // e.g. a spawned program that cannot start
      w.proc.reset();
      w.tasks.reset();
      w.respawn = true;  // check_workers() tries again
      bool any = false;
      for (auto& o : workers_) any = any || o.proc.has_value();
      if (!any) fail_pending_no_worker(e);
    }
  }

  // Nobody can run the queued work: fail it rather than leave it waiting.
  void fail_pending_no_worker(const std::exception& why) {
    std::deque<Task> lost;
    {
      std::lock_guard g(mu_);
      lost.swap(pending_);
    }
    for (auto& t : lost)
      t.job->fail_chunk(t.index, std::make_exception_ptr(ProcessError(fmt::format(
                                     "no pool worker could be started: {}", why.what()))));
  }

  // A worker reported that the initializer threw: the pool is broken, with that exception nested
  // in the BrokenProcessPool.
  void initializer_failed(std::uint32_t worker, std::string_view payload) {
    const RemoteFailure err = read_failure(payload);  // malformed: still a failed initializer
    std::exception_ptr broken;
    try {
      try {
        throw_remote(err);
      } catch (...) {
        std::throw_with_nested(BrokenProcessPool(
            fmt::format("the {}'s initializer raised {}: {} (in pool worker {}); {}", opts_.owner,
                        err.type, err.message, worker, broken_advice())));
      }
    } catch (...) {
      broken = std::current_exception();
    }
    break_pool(broken);
  }

  // Python's terminate_broken(): every pending and running call fails with `e`, the workers are
  // killed and none is started again; later calls raise `e`. Runs in the supervisor thread.
  void break_pool(std::exception_ptr e) {
    std::deque<Task> left;
    {
      std::lock_guard g(mu_);
      if (broken_) return;
      broken_ = e;
      left = take_all_tasks_locked();
    }
    kill_workers();
    stop_zygote();  // no worker is started again
    for (auto& w : workers_) {
      w.proc.reset();
      w.tasks.reset();
      w.assigned.clear();
      w.region.fill(0);
      w.respawn = false;
    }
    for (auto& t : left) t.job->fail_chunk(t.index, e);
  }

  std::deque<Task> take_all_tasks_locked() {
    std::deque<Task> left;
    for (auto& [seq, t] : inflight_) left.push_back(std::move(t));
    for (auto& t : pending_) left.push_back(std::move(t));
    inflight_.clear();
    pending_.clear();
    return left;
  }

  // SIGKILL, not SIGTERM: nothing a worker of a broken pool holds needs its cleanup, and a
  // worker forked a moment ago may still run the SIGTERM handler it inherited from this program.
  void kill_workers() {
    for (auto& w : workers_) {
      if (!w.proc) continue;
      try {
        w.proc->kill();
      } catch (const std::exception&) {  // already reaped
      }
    }
    for (auto& w : workers_) {
      if (!w.proc) continue;
      try {
        (void)w.proc->join(Timeout(5.0));
      } catch (const std::exception&) {
      }
    }
  }

  void shutdown(bool terminate) {
    for (auto& w : workers_) {
      if (!w.proc) continue;
      if (terminate) {
        w.proc->terminate();
      } else {
        const TaskHeader stop{0, 0, 0};
        (void)w.tasks->try_put(task_message(stop, {}, {}));
      }
    }
    for (auto& w : workers_) {
      if (!w.proc) continue;
      if (!w.proc->join(Timeout(terminate ? 1.0 : 10.0))) {
        w.proc->kill();
        w.proc->join();
      }
    }
    std::deque<Task> left;
    {
      std::lock_guard g(mu_);
      left = take_all_tasks_locked();
    }
    stop_zygote();
    for (auto& t : left)
      t.job->fail_chunk(t.index, std::make_exception_ptr(ProcessError(
                                     "the pool was terminated before this task completed")));
  }

  void stop_zygote() noexcept {
#if defined(MPP_OS_POSIX)
    if (zygote_) zygote_->stop();
#endif
  }

  SchedulerOptions opts_;
  WorkerConfig config_;
#if defined(MPP_OS_POSIX)
  std::optional<Zygote> zygote_;  // forks a fork pool's replacement workers
#endif
  std::optional<Queue<std::string>> results_;
  std::optional<RawArray<std::uint64_t>> status_;
  std::shared_ptr<Segment> arena_;       // raw map chunks (see kRegion); inherited by workers
  std::vector<std::size_t> arena_warm_;  // per region: bytes allocated (see warm_size)
  std::vector<WorkerSlot> workers_;
  std::thread supervisor_;
  std::mutex mu_;
  std::deque<Task> pending_;
  std::map<std::uint64_t, Task> inflight_;
  std::uint64_t next_seq_ = 0;
  unsigned worker_counter_ = 0;
  bool closed_ = false;
  bool terminated_ = false;
  std::exception_ptr broken_;  // set once, by break_pool(): every later call raises it
};

}  // namespace mpp::detail::pool
