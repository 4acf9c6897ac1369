// mpp — Pool internals: the wire format between the supervisor and its workers, and the body of
// a worker process. The protocol (task window, status array, shared arena) is described in
// docs/design/pool.md.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <exception>
#include <optional>
#include <string>
#include <string_view>

#include "../../array.hpp"
#include "../../errors.hpp"
#include "../../process.hpp"
#include "../../queue.hpp"
#include "invoke.hpp"

namespace mpp::detail::pool {

/// Wire format of a task: header + callable bytes + argument bytes.
struct TaskHeader {
  std::uint64_t seq;          ///< supervisor's task number (0: "stop")
  std::uint32_t invoker;      ///< index into invokers() (raw: into raw_invokers())
  std::uint32_t fn_size;      ///< bytes of the callable that follow the header
  std::uint32_t raw = 0;      ///< 1: raw map chunk (input bytes, results as bytes)
  std::uint32_t region = 0;   ///< k + 1: the input is in this worker's arena region k; 0: inline
  std::uint64_t in_size = 0;  ///< bytes of input in the region (inline raw: result bytes expected)
  std::uint64_t out_off = 0;  ///< where the results go in the region (0: over the input)
};
/// Wire format of a result: header + payload (result bytes, or an encoded (type, message)).
struct ResultHeader {
  std::uint64_t seq;
  std::uint32_t ok;  ///< 1: payload is the result; 0: payload is an encoded error
  std::uint32_t worker;
  std::uint32_t region = 0;    ///< k + 1: the result bytes are in arena region k; 0: inline
  std::uint32_t gen = 0;       ///< the worker's incarnation (a region is only its own's)
  std::uint64_t out_size = 0;  ///< result bytes in the region
};

inline constexpr std::size_t kMaxMessage = std::size_t{64} << 20;  // per task or result (encoded)
inline constexpr unsigned kWindow = 2;  // chunks assigned to a worker at once (one runs, one waits)
// Raw map chunks travel through a shared arena inherited by the (forked) workers instead of the
// queues: worker i owns regions [i * kWindow, (i + 1) * kWindow), one per task it may hold; a
// region holds the input at 0 and the results over it (when they are no larger) or at
// out_offset(input bytes). Memory is committed only where chunks were written.
inline constexpr std::size_t kRegion = std::size_t{16} << 20;
inline constexpr std::size_t out_offset(std::size_t in) { return (in + 63) / 64 * 64; }
// A region's pages are allocated and mapped (one madvise, not a fault per page) the first time
// a chunk needs them, in steps of this much; none is left to fault in (a full /dev/shm must
// fail the chunk, not back its pages with memory only one process sees).
inline constexpr std::size_t kWarmStep = std::size_t{64} << 10;
inline constexpr std::size_t warm_size(std::size_t need) {
  return need == 0 ? 0 : std::min(kRegion, (need + kWarmStep - 1) / kWarmStep * kWarmStep);
}

/// The message of a task: its header, then the callable's bytes, then the arguments.
inline std::string task_message(const TaskHeader& h, std::string_view fn, std::string_view args) {
  std::string m(sizeof h, '\0');
  std::memcpy(m.data(), &h, sizeof h);
  m.append(fn);
  m.append(args);
  return m;
}

/// The message of a result: its header, then the payload.
inline std::string result_message(const ResultHeader& r, std::string_view payload) {
  std::string out(sizeof r, '\0');
  std::memcpy(out.data(), &r, sizeof r);
  out.append(payload);
  return out;
}

/// What a worker needs; travels to the worker as its Process arguments.
struct WorkerConfig {
  std::string tasks;    ///< name of this worker's task queue
  std::string results;  ///< name of the shared result queue
  std::string status;   ///< name of the status array: [2i] = running task seq, [2i+1] = start ns
  std::uint32_t index = 0;
  std::uint32_t gen = 0;  ///< incarnation of worker `index` (echoed in results)
  std::uint32_t maxtasks = 0;
  std::int32_t init_invoker = -1;  ///< initializer (or -1)
  std::string init_fn, init_args;
  std::int32_t parent_pid = 0;
  std::uint32_t parent_tag = 0;
  std::string arena_name;      ///< name of the shared arena (spawned workers open it)
  std::byte* arena = nullptr;  ///< the shared arena (mapped before the fork), or null
  std::size_t arena_size = 0;
  // The parent's handles, inherited by the forked worker (saves opening them by name).
  std::optional<Queue<std::string>> tasks_q, results_q;
  std::optional<RawArray<std::uint64_t>> status_a;
  /// What a spawned worker receives: names and numbers (it opens the objects by name).
  template <class Ar>
  void serialize(Ar& ar) {
    ar(tasks, results, status, index, gen, maxtasks, init_invoker, init_fn, init_args, parent_pid,
       parent_tag, arena_name);
  }
};

/// Steady-clock nanoseconds (a task's start time in the status array).
inline std::int64_t now_ns() noexcept {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

/// The running-task word of a worker that is running the pool's initializer: a worker that dies
/// with it set died in the initializer, which breaks the pool (see Pool).
inline constexpr std::uint64_t kInitializing = ~std::uint64_t{0};
/// The seq of a result that reports the initializer's exception (no task has seq 0).
inline constexpr std::uint64_t kInitFailed = 0;

/// Puts a result; a full result queue is waited on only while the parent lives (nobody else
/// reads it). Returns: false when the parent died first.
inline bool put_result(Queue<std::string>& results, const std::string& m,
                       const ProcessRef& parent) {
  using namespace std::chrono_literals;
  for (;;) {
    try {
      results.put(m, true, 0.1s);
      return true;
    } catch (const queue::Full&) {
      if (!parent.alive()) return false;
    }
  }
}

/// A worker process's view of the pool: its queues, its status words and its arena regions.
class WorkerLoop {
 public:
  explicit WorkerLoop(const WorkerConfig& c)
      : c_(c),
        tasks_(c.tasks_q ? *c.tasks_q : Queue<std::string>::open(c.tasks)),
        results_(c.results_q ? *c.results_q : Queue<std::string>::open(c.results)),
        status_(c.status_a ? *c.status_a : RawArray<std::uint64_t>::open(c.status)),
        parent_{c.parent_pid, c.parent_tag} {
    if (2 * c.index + 1 >= status_.size())
      fail<CorruptedError>("pool worker {}: status array too small", c.index);
  }

  //!Effects: runs the initializer, then tasks until told to stop, maxtasks is reached or the
  //! parent is gone.
  void run() {
    if (c_.init_invoker >= 0) run_initializer();
    for (std::uint32_t done = 0; c_.maxtasks == 0 || done < c_.maxtasks; ++done) {
      const std::optional<std::string> m = next_task();
      if (!m) return;  // stop, or orphaned
      TaskHeader h;
      std::memcpy(&h, m->data(), sizeof h);
      std::byte* region = map_region(h);
      const std::string_view body(m->data() + sizeof h, m->size() - sizeof h);
      started().store(static_cast<std::uint64_t>(now_ns()), std::memory_order_relaxed);
      running().store(h.seq, std::memory_order_release);
      ResultHeader r{h.seq, 1, c_.index};
      r.gen = c_.gen;
      const std::string payload = run_task(h, body, region, r);
      if (!put_result(results_, result_message(r, payload), parent_)) return;  // orphaned
      running().store(0, std::memory_order_release);
    }
  }

 private:
  std::atomic_ref<std::uint64_t> running() {
    return std::atomic_ref<std::uint64_t>(status_[2 * c_.index]);
  }
  std::atomic_ref<std::uint64_t> started() {
    return std::atomic_ref<std::uint64_t>(status_[2 * c_.index + 1]);
  }

  // An exception is reported to the supervisor (which breaks the pool), then ends this worker
  // as an escaped exception does (printed with the worker's name, exit code 1).
  void run_initializer() {
    auto& table = invokers().fns;
    if (static_cast<std::size_t>(c_.init_invoker) >= table.size())
      fail<CorruptedError>("pool initializer: unknown invoker {}", c_.init_invoker);
    running().store(kInitializing, std::memory_order_release);
    std::string type, what;
    std::exception_ptr error;
    try {
      table[static_cast<std::size_t>(c_.init_invoker)](c_.init_fn, c_.init_args);
    } catch (const ExitRequest&) {
      throw;
    } catch (const std::exception& e) {
      type = os::current_exception_type_name();
      what = e.what();
      error = std::current_exception();
    } catch (...) {
      type = os::current_exception_type_name();
      what = "unknown exception";
      error = std::current_exception();
    }
    if (error) {
      ResultHeader r{kInitFailed, 0, c_.index};
      r.gen = c_.gen;
      (void)put_result(results_, result_message(r, error_payload(type, what)), parent_);
      std::rethrow_exception(error);
    }
    running().store(0, std::memory_order_release);
  }

  //!Returns: the next well-formed task, or nullopt for "stop" and for an orphaned worker.
  std::optional<std::string> next_task() {
    using namespace std::chrono_literals;
    std::optional<std::string> m;
    while (!m) {
      try {
        m = tasks_.get(true, 0.1s);
      } catch (const queue::Empty&) {
        if (!parent_.alive()) return std::nullopt;  // orphaned: nobody will read our results
      }
    }
    if (m->size() < sizeof(TaskHeader))
      fail<CorruptedError>("pool task of {} bytes is shorter than its header", m->size());
    TaskHeader h;
    std::memcpy(&h, m->data(), sizeof h);
    if (h.seq == 0) return std::nullopt;  // stop
    const std::size_t tables = h.raw ? raw_invokers().fns.size() : invokers().fns.size();
    if (h.invoker >= tables || h.fn_size > m->size() - sizeof h || h.region > kWindow)
      fail<CorruptedError>("pool task {} is malformed", h.seq);
    return m;
  }

  //!Returns: the arena region holding the task's input (null: the input is inline), its pages
  //! mapped in this process (the parent allocated them).
  std::byte* map_region(const TaskHeader& h) {
    if (h.region == 0) return nullptr;
    const std::size_t at = (std::size_t{c_.index} * kWindow + (h.region - 1)) * kRegion;
    if (c_.arena == nullptr || at + kRegion > c_.arena_size || h.in_size > kRegion ||
        h.out_off > kRegion)
      fail<CorruptedError>("pool task {}: region {} ({} bytes) is outside the arena", h.seq,
                           h.region, h.in_size);
    std::byte* region = c_.arena + at;
    const std::size_t need = warm_size(
        static_cast<std::size_t>(std::max<std::uint64_t>(h.in_size, h.out_off + h.in_size)));
    if (warm_[h.region - 1] < need) {
      (void)os::populate_write(region, need);
      warm_[h.region - 1] = need;
    }
    return region;
  }

  //!Returns: the result payload of task `h` (or its encoded exception, with `r.ok` cleared);
  //! sets `r.region` and `r.out_size` when the results were written to the arena.
  std::string run_task(const TaskHeader& h, std::string_view body, std::byte* region,
                       ResultHeader& r) {
    std::string payload;
    try {
      if (h.raw && region != nullptr)
        run_raw_in_region(h, body, region, r);
      else if (h.raw)
        payload = run_raw_inline(h, body);
      else
        payload = invokers().fns[h.invoker](body.substr(0, h.fn_size), body.substr(h.fn_size));
      if (payload.size() + sizeof r > kMaxMessage) {
        payload = error_payload("mpp::ValueError",
                                fmt::format("the result is {} bytes encoded; the limit is {} "
                                            "(use a smaller chunksize)",
                                            payload.size(), kMaxMessage));
        r.ok = 0;
      }
    } catch (const ExitRequest&) {
      throw;
    } catch (const std::exception& e) {
      r.ok = 0;
      payload = error_payload(os::current_exception_type_name(), e.what());
    } catch (...) {
      r.ok = 0;
      payload = error_payload(os::current_exception_type_name(), "unknown exception");
    }
    return payload;
  }

  // A raw chunk in an arena region: the results go over the input or behind it.
  static void run_raw_in_region(const TaskHeader& h, std::string_view body, std::byte* region,
                                ResultHeader& r) {
    const std::uint64_t off = h.out_off;
    if (off > kRegion || (off != 0 && off < h.in_size))
      fail<CorruptedError>("pool task {}: results at {} after {} input bytes", h.seq, off,
                           h.in_size);
    r.out_size = raw_invokers().fns[h.invoker](body.substr(0, h.fn_size), region,
                                               static_cast<std::size_t>(h.in_size), region + off,
                                               kRegion - off);
    r.region = h.region;
  }

  // An inline raw chunk (too big for a region): in_size carries the result bytes expected.
  static std::string run_raw_inline(const TaskHeader& h, std::string_view body) {
    const std::string_view in = body.substr(h.fn_size);
    if (h.in_size > kMaxMessage - sizeof(ResultHeader))
      fail<CorruptedError>("pool task {}: {} result bytes expected", h.seq, h.in_size);
    std::string payload(static_cast<std::size_t>(h.in_size), '\0');
    payload.resize(raw_invokers().fns[h.invoker](
        body.substr(0, h.fn_size), reinterpret_cast<const std::byte*>(in.data()), in.size(),
        reinterpret_cast<std::byte*>(payload.data()), payload.size()));
    return payload;
  }

  const WorkerConfig& c_;
  Queue<std::string> tasks_;
  Queue<std::string> results_;
  RawArray<std::uint64_t> status_;
  const ProcessRef parent_;
  std::array<std::size_t, kWindow> warm_{};  // bytes of each of our regions mapped in here
};

/// The body of a worker process.
inline void worker_main(const WorkerConfig& c) {
  os::default_termination_signals();  // terminate() must end a worker, whatever the parent caught
  WorkerLoop(c).run();
}

/// A worker that opens the pool's queues, status array and arena by name (one spawned, or forked
/// by a fork pool's zygote).
inline void worker_main_by_name(WorkerConfig c) {
  std::optional<Segment> arena;
  if (!c.arena_name.empty()) {
    arena.emplace(Segment::open(c.arena_name, Kind::pool, TypeInfo::none()));
    c.arena = arena->payload();
    c.arena_size = static_cast<std::size_t>(arena->payload_size());
  }
  worker_main(c);
}

/// The body of a worker started with spawn or forkserver: it finds callables by registered name
/// and opens the pool's objects by name.
inline void spawned_worker_main(WorkerConfig c) {
  named_callables() = true;
  worker_main_by_name(std::move(c));
}

/// Registers the spawned worker's body (identically in every run of the program). A class
/// template, instantiated by the pool's submitting templates (check_callable), so that a program
/// that includes pool.hpp without giving a pool work does not compile the worker (benchmarks
/// row compile.empty_main).
template <class = void>
struct SpawnedWorker {
  /// True once registered (before main, in every program that submits work to a pool).
  static inline const bool registered = register_function("mpp.pool.worker", &spawned_worker_main);
};

}  // namespace mpp::detail::pool
