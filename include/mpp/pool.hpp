// mpp — Pool: a pool of worker processes fed through mpp queues (Python's multiprocessing.Pool),
// that never hangs on a lost worker (cpython#96062): a worker that dies is replaced and the task it
// was running fails with WorkerLostError (or is retried); a task over its timeout kills its worker
// and fails with TimeoutError; everything else carries on.
//
// How it works: each worker has its own small task queue and all share one result queue. A
// supervisor thread in the parent assigns at most kWindow chunks to each worker, so it always knows
// which tasks a worker holds; a worker records the task it is running in a shared status array.
// When a worker dies, the task it was running fails (or is retried) and the tasks it had not
// started go back to the pending list; its replacement gets a fresh queue, so nothing is run twice.
// Callables and arguments cross as data: the callable's bytes (a trivially copyable functor, a
// function pointer — meaningful because workers are forked from this program) and the encoded
// arguments; the worker finds the code to run by the index of a registered invoker.
// Start methods: with spawn or forkserver (PoolOptions::start_method) a worker is a new run of
// the same program, so invoker indices (assigned at static initialisation) still match, but
// addresses do not: the callable crosses as the name it was registered under (MPP_REGISTER), the
// worker looks it up in the same registry as spawn Process targets and checks its type, and
// opens the queues, status array and arena by their names. Unregistered callables are refused
// with InvalidArgument when the task is submitted. Forked workers use none of this.
// Fast path: map() over trivially copyable items with trivially copyable results (kRawItem) skips
// the codec and the queues' payload copies. Each worker owns kWindow regions of a shared arena
// (inherited by fork): the supervisor copies a chunk straight from the caller's range into a free
// region, the queue carries only a header, the worker writes the results over the input (or
// behind it) and the supervisor copies them straight into the output vector. Region pages are
// allocated with one populate call on first use; a result is accepted only from the worker
// incarnation that was given the region, with its expected size.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cerrno>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <deque>
#include <exception>
#include <functional>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "array.hpp"
#include "codec.hpp"
#include "errors.hpp"
#include "process.hpp"
#include "queue.hpp"

namespace mpp {

/// Options of a Pool beyond Python's positional arguments.
struct PoolOptions {
  int processes = 0;                  ///< number of workers; <= 0: cpu_count()
  unsigned maxtasksperchild = 0;      ///< a worker is replaced after this many tasks (0: never)
  Timeout task_timeout{};             ///< per task (chunk): the worker is killed, the task fails
  unsigned retries = 0;               ///< re-runs of a task whose worker died before failing it
  /// How workers start (Python's get_context(method).Pool()); nullopt: get_start_method(). With
  /// spawn or forkserver, workers attach to the pool's queues by name and run only registered
  /// functions (MPP_REGISTER), as spawn Process targets.
  std::optional<StartMethod> start_method{};
};

/// Packs the arguments of apply_async(f, mpp::args(a, b), callback, error_callback).
template <class... A>
struct Args {
  std::tuple<A...> values;  ///< the arguments, by value
};
/// Makes an Args pack (Python's `args=(a, b)`).
template <class... A>
Args<std::decay_t<A>...> args(A&&... a) {
  return {std::tuple<std::decay_t<A>...>(std::forward<A>(a)...)};
}

namespace detail::pool {

/// Callables a worker can run: their bytes are all that crosses (workers are forked from this
/// program, so a function pointer means the same code there). Spawned and forkserver workers are
/// another run of the program: there a callable crosses as the name it was registered under.
template <class F>
concept Callable = std::is_trivially_copyable_v<F> || (Encodable<F> && !std::is_pointer_v<F>);

/// True in a worker started with spawn or forkserver: callables arrive as registered names.
inline bool& named_callables() noexcept {
  static bool named = false;
  return named;
}

//!Returns: the name `f` was registered under, for a worker started with `m` (spawn, forkserver).
//!Throws: InvalidArgument when `f` is not a registered function or capture-less lambda.
template <class F>
std::string registered_name(const F& f, StartMethod m) {
  if constexpr (Transportable<F>) {
    if (auto name = function_registry().name_of(function_key(f))) return *name;
    fail<InvalidArgument>(
        "a Pool whose workers start with '{}' runs tasks in a new run of the program, which finds "
        "functions by their registered name, and this {} is not registered: add "
        "MPP_REGISTER(your_function) at namespace scope (or call mpp::register_function(\"name\", "
        "fn) before mpp::bootstrap), or use a Pool with the 'fork' start method",
        start_method_name(m), std::is_pointer_v<F> ? "function" : "lambda");
  } else {
    fail<InvalidArgument>(
        "a Pool whose workers start with '{}' runs tasks in a new run of the program, which "
        "cannot re-create this callable ({}): use a plain function or capture-less lambda whose "
        "parameters are Encodable, registered with MPP_REGISTER, or a Pool with the 'fork' start "
        "method",
        start_method_name(m), type_name<F>());
  }
}

template <class F>
std::string callable_bytes(const F& f) {
  if constexpr (std::is_trivially_copyable_v<F>) {
    return std::string(reinterpret_cast<const char*>(std::addressof(f)), sizeof(F));
  } else {
    const Bytes b = encode(f);
    return std::string(reinterpret_cast<const char*>(b.data()), b.size());
  }
}

/// Rebuilds the callable from its bytes (in a spawned worker: from its registered name); `fn`
/// receives it (functors need not be default constructible).
template <class F, class Fn>
decltype(auto) with_callable(std::string_view bytes, Fn&& fn) {
  if constexpr (Transportable<F>) {
    if (named_callables()) {
      const auto key = function_registry().key_of(std::string(bytes));
      if (!key || key->first != std::type_index(typeid(F)))
        fail<InvalidArgument>("pool task: '{}' is not registered in this program as a {}; "
                              "register it with MPP_REGISTER",
                              bytes, type_name<F>());
      if constexpr (std::is_pointer_v<F>) {
        F f = reinterpret_cast<F>(key->second);
        return fn(f);
      } else {
        F f{};
        return fn(f);
      }
    }
  } else {
    if (named_callables())
      fail<InvalidArgument>("pool task: a {} cannot run in a spawned worker", type_name<F>());
  }
  if constexpr (std::is_trivially_copyable_v<F>) {
    if (bytes.size() != sizeof(F))
      fail<CorruptedError>("pool task: callable of {} bytes, expected {}", bytes.size(), sizeof(F));
    alignas(F) unsigned char storage[sizeof(F)];
    std::memcpy(storage, bytes.data(), sizeof(F));
    return fn(*std::launder(reinterpret_cast<F*>(storage)));
  } else {
    F f = decode<F>(std::as_bytes(std::span(bytes.data(), bytes.size())));
    return fn(f);
  }
}

inline std::span<const std::byte> as_span(std::string_view s) {
  return std::as_bytes(std::span(s.data(), s.size()));
}
template <class T>
std::string to_wire(const T& v) {
  const Bytes b = encode(v);
  return std::string(reinterpret_cast<const char*>(b.data()), b.size());
}
template <class T>
T from_wire(std::string_view s) {
  return decode<T>(as_span(s));
}

/// Runs a task in a worker: (callable bytes, argument bytes) -> result bytes.
using InvokeFn = std::string (*)(std::string_view fn, std::string_view args);

/// Functions of one signature that workers may run, in registration order (identical in forked
/// workers): a task names its function by index here, so only data crosses processes.
template <class Fn>
struct FnTable {
  std::vector<Fn> fns;
  std::uint32_t add(Fn f) {
    fns.push_back(f);
    return static_cast<std::uint32_t>(fns.size() - 1);
  }
  static FnTable& get() {
    static FnTable t;
    return t;
  }
};
inline FnTable<InvokeFn>& invokers() { return FnTable<InvokeFn>::get(); }

/// One entry per (shape, callable, argument) combination, registered at static initialisation.
template <auto Fn>
struct Registered {
  static inline const std::uint32_t id = FnTable<decltype(Fn)>::get().add(Fn);
};

template <class F, class A>
using map_result_t = std::invoke_result_t<const F&, const A&>;

/// Element types that cross as their bytes (no cereal): trivially copyable with the built-in raw
/// codec (bool excluded: its codec rejects bytes other than 0 and 1).
template <class T>
inline constexpr bool kRawItem = std::is_trivially_copyable_v<T> &&
                                 std::is_default_constructible_v<T> && !std::is_reference_v<T> &&
                                 detail::codec_kind<T>() == std::string_view("raw") &&
                                 !std::is_same_v<std::remove_cv_t<T>, bool>;

/// Runs a map chunk of raw items in a worker: (callable bytes, input bytes, output area) ->
/// bytes of results written.
using RawFn = std::size_t (*)(std::string_view fn, const std::byte* in, std::size_t n,
                              std::byte* out, std::size_t cap);
inline FnTable<RawFn>& raw_invokers() { return FnTable<RawFn>::get(); }

// map of raw items: reads the input bytes, writes the result bytes (no intermediate vectors).
template <class F, class A>
std::size_t run_raw_chunk(std::string_view fn, const std::byte* in, std::size_t n, std::byte* out,
                          std::size_t cap) {
  using R = map_result_t<F, A>;
  if (n % sizeof(A) != 0)
    fail<CorruptedError>("pool task: {} input bytes are not a whole number of {}-byte items", n,
                         sizeof(A));
  const std::size_t count = n / sizeof(A);
  if (count > cap / sizeof(R))
    fail<CorruptedError>("pool task: {} results do not fit in {} bytes", count, cap);
  return with_callable<F>(fn, [&](F& f) {
    for (std::size_t i = 0; i < count; ++i) {
      A a;
      std::memcpy(static_cast<void*>(&a), in + i * sizeof(A), sizeof(A));
      const R r = std::invoke(f, a);
      std::memcpy(out + i * sizeof(R), static_cast<const void*>(&r), sizeof(R));
    }
    return count * sizeof(R);
  });
}

// map / imap: f applied to each element of a chunk.
template <class F, class A>
std::string run_map_chunk(std::string_view fn, std::string_view args) {
  return with_callable<F>(fn, [&](F& f) {
    const auto items = from_wire<std::vector<A>>(args);
    std::vector<map_result_t<F, A>> out;
    out.reserve(items.size());
    for (const auto& a : items) out.push_back(std::invoke(f, a));
    return to_wire(out);
  });
}

// starmap: f applied to each tuple of a chunk, unpacked.
template <class F, class Tuple>
std::string run_star_chunk(std::string_view fn, std::string_view args) {
  return with_callable<F>(fn, [&](F& f) {
    const auto items = from_wire<std::vector<Tuple>>(args);
    using R = decltype(std::apply(f, items.front()));
    std::vector<R> out;
    out.reserve(items.size());
    for (const auto& t : items) out.push_back(std::apply(f, t));
    return to_wire(out);
  });
}

// apply: f(args...) once; initializer: the same, returning nothing.
template <class F, class Tuple>
std::string run_apply(std::string_view fn, std::string_view args) {
  return with_callable<F>(fn, [&](F& f) {
    auto t = from_wire<Tuple>(args);
    using R = decltype(std::apply(f, t));
    if constexpr (std::is_void_v<R>) {
      std::apply(f, t);
      return std::string();
    } else {
      return to_wire(std::apply(f, t));
    }
  });
}

/// Wire format of a task: header + callable bytes + argument bytes.
struct TaskHeader {
  std::uint64_t seq;      ///< supervisor's task number (0: "stop")
  std::uint32_t invoker;  ///< index into invokers() (raw: into raw_invokers())
  std::uint32_t fn_size;  ///< bytes of the callable that follow the header
  std::uint32_t raw = 0;     ///< 1: raw map chunk (input bytes, results as bytes)
  std::uint32_t region = 0;  ///< k + 1: the input is in this worker's arena region k; 0: inline
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

inline std::string task_message(const TaskHeader& h, std::string_view fn, std::string_view args) {
  std::string m(sizeof h, '\0');
  std::memcpy(m.data(), &h, sizeof h);
  m.append(fn);
  m.append(args);
  return m;
}

/// What a worker needs; travels to the worker as its Process arguments.
struct WorkerConfig {
  std::string tasks;      ///< name of this worker's task queue
  std::string results;    ///< name of the shared result queue
  std::string status;     ///< name of the status array: [2i] = running task seq, [2i+1] = start ns
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

inline std::int64_t now_ns() noexcept {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

inline std::string error_payload(const std::string& type, const std::string& message) {
  return to_wire(std::pair<std::string, std::string>(type, message));
}

/// The running-task word of a worker that is running the pool's initializer: a worker that dies
/// with it set died in the initializer, which breaks the pool (see Pool).
inline constexpr std::uint64_t kInitializing = ~std::uint64_t{0};
/// The seq of a result that reports the initializer's exception (no task has seq 0).
inline constexpr std::uint64_t kInitFailed = 0;

/// Puts a result; a full result queue is waited on only while the parent lives (nobody else
/// reads it). Returns: false when the parent died first.
inline bool put_result(Queue<std::string>& results, const std::string& m, const ProcessRef& parent) {
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

/// The body of a worker process.
inline void worker_main(const WorkerConfig& c) {
  using namespace std::chrono_literals;
  os::default_termination_signals();  // terminate() must end a worker, whatever the parent caught
  auto tasks = c.tasks_q ? *c.tasks_q : Queue<std::string>::open(c.tasks);
  auto results = c.results_q ? *c.results_q : Queue<std::string>::open(c.results);
  auto status = c.status_a ? *c.status_a : RawArray<std::uint64_t>::open(c.status);
  const ProcessRef parent{c.parent_pid, c.parent_tag};
  if (2 * c.index + 1 >= status.size())
    fail<CorruptedError>("pool worker {}: status array too small", c.index);
  std::atomic_ref<std::uint64_t> running(status[2 * c.index]);
  std::atomic_ref<std::uint64_t> started(status[2 * c.index + 1]);
  auto& table = invokers().fns;
  auto& raw_table = raw_invokers().fns;
  std::array<std::size_t, kWindow> warm{};  // bytes of each of our regions mapped in here
  if (c.init_invoker >= 0) {
    if (static_cast<std::size_t>(c.init_invoker) >= table.size())
      fail<CorruptedError>("pool initializer: unknown invoker {}", c.init_invoker);
    // An exception is reported to the supervisor (which breaks the pool), then ends this worker
    // as an escaped exception does (printed with the worker's name, exit code 1).
    running.store(kInitializing, std::memory_order_release);
    std::string type, what;
    std::exception_ptr error;
    try {
      table[static_cast<std::size_t>(c.init_invoker)](c.init_fn, c.init_args);
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
      ResultHeader r{kInitFailed, 0, c.index};
      r.gen = c.gen;
      std::string out(sizeof r, '\0');
      std::memcpy(out.data(), &r, sizeof r);
      out.append(error_payload(type, what));
      (void)put_result(results, out, parent);
      std::rethrow_exception(error);
    }
    running.store(0, std::memory_order_release);
  }
  for (std::uint32_t done = 0; c.maxtasks == 0 || done < c.maxtasks;) {
    std::optional<std::string> m;
    try {
      m = tasks.get(true, 0.1s);
    } catch (const queue::Empty&) {
      if (!parent.alive()) return;  // orphaned: nobody will read our results
      continue;
    }
    if (m->size() < sizeof(TaskHeader))
      fail<CorruptedError>("pool task of {} bytes is shorter than its header", m->size());
    TaskHeader h;
    std::memcpy(&h, m->data(), sizeof h);
    if (h.seq == 0) return;  // stop
    if (h.invoker >= (h.raw ? raw_table.size() : table.size()) ||
        h.fn_size > m->size() - sizeof h || h.region > kWindow)
      fail<CorruptedError>("pool task {} is malformed", h.seq);
    std::byte* region = nullptr;
    if (h.region != 0) {
      const std::size_t at = (std::size_t{c.index} * kWindow + (h.region - 1)) * kRegion;
      if (c.arena == nullptr || at + kRegion > c.arena_size || h.in_size > kRegion ||
          h.out_off > kRegion)
        fail<CorruptedError>("pool task {}: region {} ({} bytes) is outside the arena", h.seq,
                             h.region, h.in_size);
      region = c.arena + at;
      // Map the region's pages in this process at once (the parent allocated them).
      const std::size_t need = warm_size(static_cast<std::size_t>(
          std::max<std::uint64_t>(h.in_size, h.out_off + h.in_size)));
      if (warm[h.region - 1] < need) {
        // The parent backed every page this task touches; this only maps them here.
        (void)os::populate_write(region, need);
        warm[h.region - 1] = need;
      }
    }
    const std::string_view body(m->data() + sizeof h, m->size() - sizeof h);
    started.store(static_cast<std::uint64_t>(now_ns()), std::memory_order_relaxed);
    running.store(h.seq, std::memory_order_release);
    ResultHeader r{h.seq, 1, c.index};
    r.gen = c.gen;
    std::string payload;
    try {
      if (h.raw && region != nullptr) {
        const std::uint64_t off = h.out_off;
        if (off > kRegion || (off != 0 && off < h.in_size))
          fail<CorruptedError>("pool task {}: results at {} after {} input bytes", h.seq, off,
                               h.in_size);
        r.out_size = raw_table[h.invoker](body.substr(0, h.fn_size), region,
                                          static_cast<std::size_t>(h.in_size), region + off,
                                          kRegion - off);
        r.region = h.region;
      } else if (h.raw) {
        const std::string_view in = body.substr(h.fn_size);
        // Inline raw chunk (too big for a region): in_size carries the result bytes expected.
        if (h.in_size > kMaxMessage - sizeof r)
          fail<CorruptedError>("pool task {}: {} result bytes expected", h.seq, h.in_size);
        payload.resize(static_cast<std::size_t>(h.in_size));
        payload.resize(raw_table[h.invoker](body.substr(0, h.fn_size),
                                            reinterpret_cast<const std::byte*>(in.data()),
                                            in.size(), reinterpret_cast<std::byte*>(payload.data()),
                                            payload.size()));
      } else {
        payload = table[h.invoker](body.substr(0, h.fn_size), body.substr(h.fn_size));
      }
      if (payload.size() + sizeof r > kMaxMessage)
        payload = error_payload("mpp::ValueError",
                                fmt::format("the result is {} bytes encoded; the limit is {} "
                                            "(use a smaller chunksize)",
                                            payload.size(), kMaxMessage)),
        r.ok = 0;
    } catch (const ExitRequest&) {
      throw;
    } catch (const std::exception& e) {
      r.ok = 0;
      payload = error_payload(os::current_exception_type_name(), e.what());
    } catch (...) {
      r.ok = 0;
      payload = error_payload(os::current_exception_type_name(), "unknown exception");
    }
    std::string out(sizeof r, '\0');
    std::memcpy(out.data(), &r, sizeof r);
    out.append(payload);
    if (!put_result(results, out, parent)) return;  // orphaned
    running.store(0, std::memory_order_release);
    ++done;
  }
}

/// The body of a worker started with spawn or forkserver: it finds callables by registered name
/// and opens the pool's queues, status array and arena by name.
inline void spawned_worker_main(WorkerConfig c) {
  named_callables() = true;
  std::optional<Segment> arena;
  if (!c.arena_name.empty()) {
    arena.emplace(Segment::open(c.arena_name, Kind::pool, TypeInfo::none()));
    c.arena = arena->payload();
    c.arena_size = static_cast<std::size_t>(arena->payload_size());
  }
  worker_main(c);
}

/// Registers the spawned worker's body (identically in every run of the program).
inline const bool kSpawnedWorkerRegistered =
    register_function("mpp.pool.worker", &spawned_worker_main);

/// Rethrows a worker's exception: std:: types as themselves, others as RemoteError.
[[noreturn]] inline void throw_remote(const std::string& type, const std::string& message) {
  if (type == "std::runtime_error") throw std::runtime_error(message);
  if (type == "std::logic_error") throw std::logic_error(message);
  if (type == "std::invalid_argument") throw std::invalid_argument(message);
  if (type == "std::out_of_range") throw std::out_of_range(message);
  if (type == "std::domain_error") throw std::domain_error(message);
  if (type == "std::length_error") throw std::length_error(message);
  if (type == "std::range_error") throw std::range_error(message);
  if (type == "std::overflow_error") throw std::overflow_error(message);
  if (type == "std::underflow_error") throw std::underflow_error(message);
  throw RemoteError(type, message);
}

/// A submitted unit of work (map chunk, apply call) seen by the supervisor.
struct Job {
  virtual ~Job() = default;
  /// Delivers chunk `index`'s result bytes. Runs in the supervisor thread.
  virtual void deliver(std::size_t index, std::string_view payload) = 0;
  /// Fails chunk `index`. Runs in the supervisor thread.
  virtual void fail_chunk(std::size_t index, std::exception_ptr e) = 0;
};

/// Shared state of an AsyncResult.
template <class R>
struct ResultState {
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  bool finishing = false;
  std::optional<R> value;
  std::exception_ptr error;
  std::function<void(const R&)> callback;
  std::function<void(std::exception_ptr)> error_callback;
  std::vector<std::function<void()>> on_done;  ///< run after completion (Future callbacks)

  void finish(std::optional<R> v, std::exception_ptr e) {
    {
      std::lock_guard g(mu);
      if (done || finishing) return;
      finishing = true;
    }
    // Callbacks run in the supervisor thread before the result is ready, as in Python (where they
    // run in the result-handler thread before get() returns).
    try {
      if (e) {
        if (error_callback) error_callback(e);
      } else if (callback) {
        callback(*v);
      }
    } catch (...) {  // a throwing callback must not kill the supervisor
    }
    std::vector<std::function<void()>> after;
    {
      std::lock_guard g(mu);
      value = std::move(v);
      error = e;
      done = true;
      after.swap(on_done);
    }
    cv.notify_all();
    for (auto& f : after) {
      try {
        f();
      } catch (...) {
      }
    }
  }

  //!Effects: runs `f` once the result is ready (at once, in this thread, if it already is).
  void when_done(std::function<void()> f) {
    {
      std::lock_guard g(mu);
      if (!done) {
        on_done.push_back(std::move(f));
        return;
      }
    }
    f();
  }
};

struct Unit {};  ///< the result type of apply() of a void function

template <class T>
inline constexpr bool is_args_v = false;
template <class... A>
inline constexpr bool is_args_v<Args<A...>> = true;
/// True when the first of `A...` is an mpp::Args pack (apply_async with callbacks).
template <class... A>
inline constexpr bool first_is_args_v = sizeof...(A) != 0 && is_args_v<std::decay_t<std::tuple_element_t<0, std::tuple<A..., void>>>>;

}  // namespace detail::pool

/// Result of an asynchronous pool call (Python's AsyncResult).
template <class R>
class AsyncResult {
 public:
  //!Returns: the result, waiting for it. Throws: the task's exception (RemoteError,
  //! WorkerLostError, TimeoutError for a task over its timeout, or a std:: exception).
  R get() { return get(std::nullopt); }
  //!Returns: the result, waiting at most `timeout` seconds. Throws: TimeoutError if not ready.
  R get(Timeout timeout) {
    if (!wait(timeout))
      detail::fail<TimeoutError>("the result is not ready after {} s", timeout->count());
    std::lock_guard g(s_->mu);
    if (s_->error) std::rethrow_exception(s_->error);
    return *s_->value;
  }
  //!Effects: waits until the result is ready or `timeout` passes. Returns: ready().
  bool wait(Timeout timeout = std::nullopt) {
    std::unique_lock g(s_->mu);
    if (!timeout) {
      s_->cv.wait(g, [&] { return s_->done; });
      return true;
    }
    return s_->cv.wait_for(g, *timeout, [&] { return s_->done; });
  }
  /// Whether the call has completed.
  bool ready() const {
    std::lock_guard g(s_->mu);
    return s_->done;
  }
  //!Returns: whether the call completed without an exception. Throws: ValueError if not ready.
  bool successful() const {
    std::lock_guard g(s_->mu);
    if (!s_->done) detail::fail<ValueError>("the result is not ready; wait() for it first");
    return !s_->error;
  }

 private:
  friend class Pool;
  explicit AsyncResult(std::shared_ptr<detail::pool::ResultState<R>> s) : s_(std::move(s)) {}
  // get() for a result nobody else sees (Pool::map): moves the value out instead of copying it.
  R take() {
    wait(std::nullopt);
    std::lock_guard g(s_->mu);
    if (s_->error) std::rethrow_exception(s_->error);
    return std::move(*s_->value);
  }
  std::shared_ptr<detail::pool::ResultState<R>> s_;
};

template <class R>
class IMapResult;
class ProcessPoolExecutor;
template <class R>
class Future;

/// A pool of worker processes (Python's multiprocessing.Pool). Workers are forked; tasks and
/// results travel through mpp queues. The destructor terminates the workers (like leaving
/// Python's `with Pool() as p:` block); call close() and join() first to let queued work finish.
///
/// A failed initializer breaks the pool, as in Python's concurrent.futures (Python's Pool
/// instead starts workers again for ever and its calls never complete): when the initializer
/// throws in any worker, or a worker dies while running it, the pool stops every worker, starts
/// none again, fails its pending and running calls with BrokenProcessPool (which names the
/// initializer's exception and nests it), and every later call raises it; close(), join(),
/// terminate() and the destructor return at once. The rule holds for a flaky initializer too
/// (one failure breaks the pool even if other workers initialised), because a worker that
/// cannot be relied on to initialise would otherwise be retried without end; results already
/// delivered stay valid.
class Pool {
 public:
  /// The most worker processes a Pool can have.
  static constexpr int kMaxProcesses = static_cast<int>(detail::mpmc::kMaxParticipants) - 1;

  //!Effects: starts `processes` workers (<= 0: cpu_count()). Throws: ProcessError, ValueError.
  explicit Pool(int processes = 0) : Pool(PoolOptions{processes}) {}

  //!Effects: starts the workers described by `opts`.
  explicit Pool(const PoolOptions& opts) { start(opts, -1, {}, {}); }

  //!Effects: starts the workers; each runs `initializer(initargs...)` first (Python's
  //! initializer); if it fails the pool is broken (BrokenProcessPool, see the class comment).
  template <class F, class... A>
    requires detail::pool::Callable<std::decay_t<F>>
  Pool(const PoolOptions& opts, F&& initializer, A&&... initargs) {
    using Fn = std::decay_t<F>;
    using Tuple = std::tuple<std::decay_t<A>...>;
    const auto id = static_cast<std::int32_t>(
        detail::pool::Registered<&detail::pool::run_apply<Fn, Tuple>>::id);
    start(opts, id, wire_for(method_of(opts), Fn(initializer)),
          detail::pool::to_wire(Tuple(std::forward<A>(initargs)...)));
  }

  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;
  /// Terminates the workers (Python's Pool.__exit__).
  ~Pool() { terminate(); }

  /// Number of worker processes.
  int processes() const noexcept { return static_cast<int>(workers_.size()); }
  /// How the workers are started (PoolOptions::start_method, else get_start_method() at creation).
  StartMethod start_method() const noexcept { return method_; }

  //!Returns: [f(x) for x in range], in order; the work is split into chunks of `chunksize` items
  //! (0: Python's choice, len / (4 * processes) rounded up). Throws: the first task's exception.
  template <class F, class Range>
  auto map(F f, const Range& range, std::size_t chunksize = 0) {
    using A = std::ranges::range_value_t<Range>;
    using R = detail::pool::map_result_t<F, A>;
    if constexpr (detail::pool::kRawItem<A> && detail::pool::kRawItem<R> &&
                  std::ranges::contiguous_range<const Range&> &&
                  std::ranges::sized_range<const Range&>) {
      // The chunks are copied to the workers straight from `range`, which outlives this call.
      check_callable<F>();
      auto src = std::make_shared<RawSource>();
      src->data = reinterpret_cast<const std::byte*>(std::ranges::data(range));
      auto r = submit_raw<R, A>(
          detail::pool::Registered<&detail::pool::run_raw_chunk<F, A>>::id,
          wire(f), src, std::ranges::size(range), chunksize, {}, {});
      try {
        auto v = r.take();
        release_source(*src);
        return v;
      } catch (...) {
        release_source(*src);
        throw;
      }
    } else {
      return map_async(f, range, chunksize).take();
    }
  }

  //!Returns: an AsyncResult of map(); `callback` / `error_callback` run in the pool's thread.
  template <class F, class Range, class A = std::ranges::range_value_t<Range>,
            class R = detail::pool::map_result_t<F, A>>
  AsyncResult<std::vector<R>> map_async(
      F f, const Range& range, std::size_t chunksize = 0,
      std::type_identity_t<std::function<void(const std::vector<R>&)>> callback = {},
      std::function<void(std::exception_ptr)> error_callback = {}) {
    check_callable<F>();
    if constexpr (detail::pool::kRawItem<A> && detail::pool::kRawItem<R>) {
      const auto id = detail::pool::Registered<&detail::pool::run_raw_chunk<F, A>>::id;
      auto src = std::make_shared<RawSource>();
      std::size_t count = 0;
      if constexpr (std::ranges::contiguous_range<const Range&> &&
                    std::ranges::sized_range<const Range&>) {  // one copy, owned by the tasks
        count = std::ranges::size(range);
        src->owned.resize(count * sizeof(A));
        if (count != 0)
          std::memcpy(src->owned.data(), static_cast<const void*>(std::ranges::data(range)),
                      count * sizeof(A));
      } else {
        for (const A& a : range) {
          if (src->owned.size() < (count + 1) * sizeof(A))
            src->owned.resize(std::max<std::size_t>(64, 2 * src->owned.size()));
          std::memcpy(src->owned.data() + count * sizeof(A), static_cast<const void*>(&a),
                      sizeof(A));
          ++count;
        }
      }
      src->data = src->owned.data();
      return submit_raw<R, A>(id, wire(f), std::move(src), count,
                              chunksize, std::move(callback), std::move(error_callback));
    } else {
      std::vector<A> items(std::ranges::begin(range), std::ranges::end(range));
      const auto id = detail::pool::Registered<&detail::pool::run_map_chunk<F, A>>::id;
      return submit_chunks<R>(id, wire(f), std::move(items), chunksize,
                              std::move(callback), std::move(error_callback));
    }
  }

  //!Returns: [f(*t) for t in range] (Python's starmap), range elements being tuples or pairs.
  template <class F, class Range>
  auto starmap(F f, const Range& range, std::size_t chunksize = 0) {
    return starmap_async(f, range, chunksize).get();
  }

  //!Returns: an AsyncResult of starmap().
  template <class F, class Range, class T = std::ranges::range_value_t<Range>,
            class R = decltype(std::apply(std::declval<const F&>(), std::declval<const T&>()))>
  AsyncResult<std::vector<R>> starmap_async(
      F f, const Range& range, std::size_t chunksize = 0,
      std::type_identity_t<std::function<void(const std::vector<R>&)>> callback = {},
      std::function<void(std::exception_ptr)> error_callback = {}) {
    check_callable<F>();
    std::vector<T> items(std::ranges::begin(range), std::ranges::end(range));
    const auto id = detail::pool::Registered<&detail::pool::run_star_chunk<F, T>>::id;
    return submit_chunks<R>(id, wire(f), std::move(items), chunksize,
                            std::move(callback), std::move(error_callback));
  }

  //!Returns: f(args...) computed by a worker (Python's apply).
  template <class F, class... A>
  auto apply(F f, A&&... a) {
    return apply_async(f, std::forward<A>(a)...).get();
  }

  //!Returns: an AsyncResult of f(args...) (Python's apply_async without callbacks).
  template <class F, class... A>
    requires(!detail::pool::first_is_args_v<A...>)
  auto apply_async(F f, A&&... a) {
    return apply_async(f, mpp::args(std::forward<A>(a)...), {}, {});
  }

  //!Returns: an AsyncResult of f(args...); `callback(result)` or `error_callback(exception)` runs
  //! in the pool's thread when it completes (Python's apply_async(func, args, callback=...)).
  template <class F, class... A,
            class R0 = std::invoke_result_t<const F&, const A&...>,
            class R = std::conditional_t<std::is_void_v<R0>, detail::pool::Unit, R0>>
  AsyncResult<R> apply_async(F f, Args<A...> a,
                             std::type_identity_t<std::function<void(const R&)>> callback,
                             std::function<void(std::exception_ptr)> error_callback = {}) {
    check_callable<F>();
    auto [state, job] = submit_apply<R>(f, std::move(a.values), std::move(callback),
                                        std::move(error_callback));
    return AsyncResult<R>(state);
  }

  //!Returns: an input range over f(x) for x in range, in order, computed lazily with a bounded
  //! number of chunks in flight (Python's imap). A named `range` is read lazily and must outlive
  //! the iteration; a temporary one is kept by the result.
  template <class F, class Range>
  auto imap(F f, Range&& range, std::size_t chunksize = 1);
  //!Returns: as imap(), but in completion order (Python's imap_unordered).
  template <class F, class Range>
  auto imap_unordered(F f, Range&& range, std::size_t chunksize = 1);

  //!Effects: no more work may be submitted; workers exit once the queued work is done.
  void close() {
    std::lock_guard g(mu_);
    closed_ = true;
    wake_supervisor();
  }

  //!Effects: stops the workers at once (SIGTERM); unfinished calls fail with ProcessError.
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

  //!Effects: waits for the workers to exit (Python's join()). Throws: ValueError unless close()
  //! or terminate() was called first.
  void join() {
    {
      std::lock_guard g(mu_);
      if (!closed_) detail::fail<ValueError>("Pool.join() needs close() or terminate() first");
    }
    if (supervisor_.joinable()) supervisor_.join();
  }

 private:
  template <class R>
  friend class IMapResult;
  friend class ProcessPoolExecutor;
  template <class R>
  friend class Future;

  // The input of a raw map: owned (map_async) or borrowed from the caller (map, which waits and
  // sets `gone` under mu_ before returning). Read only by dispatch_locked(), under mu_.
  struct RawSource {
    const std::byte* data = nullptr;
    bool gone = false;
    std::vector<std::byte> owned;
  };
  struct Task {
    std::uint64_t seq = 0;
    std::shared_ptr<detail::pool::Job> job;
    std::size_t index = 0;
    std::uint32_t invoker = 0;
    std::shared_ptr<const std::string> fn;
    std::string args;
    unsigned attempts = 0;
    bool raw = false;           // a raw map chunk (raw_invokers(); args and results are bytes)
    std::size_t out_bytes = 0;  // raw: the result bytes expected
    bool in_place = false;      // raw: results no larger than the input: written over it
    std::shared_ptr<RawSource> src;  // raw: the input bytes are src->data[src_off, +args_size)
    std::size_t src_off = 0, args_size = 0;
  };
  struct Worker {
    std::optional<Process> proc;
    std::optional<Queue<std::string>> tasks;
    std::array<std::uint64_t, detail::pool::kWindow> region{};  // task seq using arena region k
    std::deque<std::uint64_t> assigned;  // in the order the worker will run them
    unsigned dispatched = 0;             // tasks given to this incarnation
    bool stopping = false;
    bool respawn = false;                // its replacement failed to start: try again
    std::uint32_t gen = 0;               // incarnation (worker_counter_ at its spawn)
  };

  template <class R, class F, class Tuple>
  std::pair<std::shared_ptr<detail::pool::ResultState<R>>, std::shared_ptr<detail::pool::Job>>
  submit_apply(F f, Tuple values, std::function<void(const R&)> callback,
               std::function<void(std::exception_ptr)> error_callback) {
    using namespace detail::pool;
    auto state = std::make_shared<ResultState<R>>();
    state->callback = std::move(callback);
    state->error_callback = std::move(error_callback);
    struct One final : Job {
      std::shared_ptr<ResultState<R>> s;
      void deliver(std::size_t, std::string_view p) override {
        std::optional<R> v;
        std::exception_ptr e;
        try {
          if constexpr (std::is_same_v<R, Unit>)
            v = Unit{};
          else
            v = from_wire<R>(p);
        } catch (...) {
          e = std::current_exception();
        }
        s->finish(std::move(v), e);
      }
      void fail_chunk(std::size_t, std::exception_ptr e) override { s->finish(std::nullopt, e); }
    };
    auto job = std::make_shared<One>();
    job->s = state;
    const auto id = Registered<&run_apply<F, Tuple>>::id;
    enqueue(job, id, wire(f), {to_wire(values)});
    return {state, job};
  }

  //!Effects: removes the tasks of `job` that no worker has been given yet.
  //!Returns: true when none of its tasks had been given out (so it will never run).
  bool cancel_pending(const detail::pool::Job* job) {
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
      t.job->fail_chunk(t.index, std::make_exception_ptr(CancelledError(
                                     "cancelled by shutdown(cancel_futures=true)")));
  }

  //!Returns: true while a worker holds a task of `job`.
  bool is_running(const detail::pool::Job* job) {
    std::lock_guard g(mu_);
    for (const auto& [seq, t] : inflight_)
      if (t.job.get() == job) return true;
    return false;
  }

  template <class F>
  static constexpr void check_callable() {
    static_assert(detail::pool::Callable<F>,
                  "mpp::Pool: the callable must be a function pointer, a capture-less lambda, or "
                  "a lambda/functor whose captures are trivially copyable or that is Encodable");
  }

  static StartMethod method_of(const PoolOptions& opts) {
    return opts.start_method ? *opts.start_method : Process::default_method();
  }
  // What crosses to a worker for callable `f`: its bytes (fork), or its registered name.
  template <class F>
  static std::string wire_for(StartMethod m, const F& f) {
    return m == StartMethod::fork ? detail::pool::callable_bytes(f)
                                  : detail::pool::registered_name(f, m);
  }
  template <class F>
  std::string wire(const F& f) const {
    return wire_for(method_, f);
  }

  void start(const PoolOptions& opts, std::int32_t init_invoker, std::string init_fn,
             std::string init_args) {
    method_ = method_of(opts);
    if (method_ == StartMethod::fork && !detail::os::kCanFork)
      detail::fail<ValueError>("this platform has no 'fork' start method: make the Pool with "
                               "PoolOptions::start_method = StartMethod::spawn and registered "
                               "functions");
    opts_ = opts;
    const int n = opts.processes > 0 ? opts.processes : std::max(1, cpu_count());
    // The workers and this process all use the shared result queue and status array.
    if (n > kMaxProcesses)
      detail::fail<ValueError>("a Pool of {} processes: at most {} (every worker and the pool's "
                               "own process use its shared queue, which admits {} processes)",
                               n, kMaxProcesses, detail::mpmc::kMaxParticipants);
    QueueOptions qo;
    qo.max_item_size = detail::pool::kMaxMessage;
    results_.emplace(static_cast<long>(4 * n + 8), qo);
    status_.emplace(static_cast<std::size_t>(2 * n));
    detail::SegmentSpec arena_spec{
        Kind::pool, TypeInfo::none(),
        static_cast<std::uint64_t>(n) * detail::pool::kWindow * detail::pool::kRegion,
        static_cast<std::uint64_t>(n)};
    arena_spec.reserve = 0;  // 32 MiB a worker, populated as chunks are written
    arena_ = std::make_shared<detail::Segment>(detail::Segment::create_anonymous(arena_spec));
    arena_warm_.assign(static_cast<std::size_t>(n) * detail::pool::kWindow, 0);
    config_.arena = arena_->payload();
    config_.arena_size = static_cast<std::size_t>(n) * detail::pool::kWindow * detail::pool::kRegion;
    config_.results = results_->name();
    config_.status = status_->name();
    config_.maxtasks = opts.maxtasksperchild;
    config_.init_invoker = init_invoker;
    config_.init_fn = std::move(init_fn);
    config_.init_args = std::move(init_args);
    const auto me = detail::ProcessRef::self();
    config_.parent_pid = me.pid;
    config_.parent_tag = me.start_tag;
    config_.arena_name = arena_->name();
    workers_.resize(static_cast<std::size_t>(n));
    try {
      for (std::size_t i = 0; i < workers_.size(); ++i) spawn_worker(i);
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
    supervisor_ = std::thread([this] { supervise(); });
  }

  void spawn_worker(std::size_t i) {
    Worker& w = workers_[i];
    QueueOptions qo;
    qo.max_item_size = detail::pool::kMaxMessage;
    w.tasks.emplace(static_cast<long>(detail::pool::kWindow + 1), qo);
    w.assigned.clear();
    w.region.fill(0);
    w.dispatched = 0;
    w.stopping = false;
    detail::pool::WorkerConfig c = config_;
    c.tasks = w.tasks->name();
    c.index = static_cast<std::uint32_t>(i);
    w.gen = c.gen = ++worker_counter_;
    std::atomic_ref<std::uint64_t>((*status_)[2 * i]).store(0);
    ProcessOptions po;
    po.name = fmt::format("PoolWorker-{}", worker_counter_);
    po.daemon = true;
    po.start_method = method_;
    if (method_ == StartMethod::fork) {
      c.tasks_q = *w.tasks;  // workers are forked: they inherit these mappings
      c.results_q = *results_;
      c.status_a = *status_;
      w.proc.emplace(po, [c] { detail::pool::worker_main(c); });
    } else {  // a new run of the program: it opens everything by name (see spawned_worker_main)
      c.arena = nullptr;
      w.proc.emplace(po, &detail::pool::spawned_worker_main, std::move(c));
    }
    w.proc->start();
  }

  static std::size_t default_chunksize(std::size_t items, std::size_t workers) {
    const std::size_t parts = 4 * workers;
    const std::size_t c = items / parts + (items % parts != 0 ? 1 : 0);
    return c == 0 ? 1 : c;
  }

  // map of raw items: chunks are the items' bytes, results are written straight into the output.
  template <class R, class A>
  AsyncResult<std::vector<R>> submit_raw(std::uint32_t invoker, std::string fn,
                                         std::shared_ptr<RawSource> src, std::size_t count,
                                         std::size_t chunksize,
                                         std::function<void(const std::vector<R>&)> cb,
                                         std::function<void(std::exception_ptr)> ecb) {
    using namespace detail::pool;
    if (chunksize == 0) chunksize = default_chunksize(count, workers_.size());
    auto state = std::make_shared<ResultState<std::vector<R>>>();
    state->callback = std::move(cb);
    state->error_callback = std::move(ecb);
    struct RawChunks final : Job {
      std::shared_ptr<ResultState<std::vector<R>>> s;
      std::vector<R> all;
      std::mutex sizing;  // held by the submitter while it allocates `all`
      std::size_t chunksize = 1, left = 0;
      bool failed = false;
      void deliver(std::size_t i, std::string_view p) override {
        if (failed) return;
        { std::lock_guard g(sizing); }  // `all` is allocated
        const std::size_t b = i * chunksize;
        const std::size_t n = b < all.size() ? std::min(chunksize, all.size() - b) : 0;
        if (n == 0 || p.size() != n * sizeof(R))
          return fail_chunk(i, std::make_exception_ptr(CorruptedError(fmt::format(
                                   "pool map chunk {}: {} result bytes, {} expected", i, p.size(),
                                   n * sizeof(R)))));
        std::memcpy(static_cast<void*>(all.data() + b), p.data(), p.size());
        if (--left == 0) s->finish(std::move(all), nullptr);
      }
      void fail_chunk(std::size_t, std::exception_ptr e) override {
        failed = true;  // Python's map reports the first failure
        s->finish(std::nullopt, e);
      }
    };
    auto job = std::make_shared<RawChunks>();
    job->s = state;
    job->chunksize = chunksize;
    if (count == 0) {
      state->finish(std::vector<R>{}, nullptr);
      return AsyncResult<std::vector<R>>(state);
    }
    // Allocate the output's pages in one call rather than a fault per page.
    job->left = count / chunksize + (count % chunksize != 0 ? 1 : 0);
    // The workers start on the first chunks while this thread allocates the output.
    std::unique_lock sizing(job->sizing);
    RawSource* source = src.get();
    enqueue_raw(job, invoker, std::move(fn), std::move(src), count, chunksize, sizeof(A),
                sizeof(R));
    try {
      job->all.reserve(count);
      if (count * sizeof(R) >= kWarmStep) {
        detail::os::discard_private(job->all.data(), count * sizeof(R));
        (void)detail::os::populate_write(job->all.data(), count * sizeof(R));
      }
      job->all.resize(count);
    } catch (...) {  // out of memory: the chunks fail (no room for them); stop reading the input
      release_source(*source);
      throw;
    }
    return AsyncResult<std::vector<R>>(state);
  }

  template <class R, class T>
  AsyncResult<std::vector<R>> submit_chunks(std::uint32_t invoker, std::string fn,
                                            std::vector<T> items, std::size_t chunksize,
                                            std::function<void(const std::vector<R>&)> cb,
                                            std::function<void(std::exception_ptr)> ecb) {
    using namespace detail::pool;
    if (chunksize == 0) {
      const std::size_t parts = 4 * workers_.size();
      chunksize = items.size() / parts + (items.size() % parts != 0 ? 1 : 0);
      if (chunksize == 0) chunksize = 1;
    }
    auto state = std::make_shared<ResultState<std::vector<R>>>();
    state->callback = std::move(cb);
    state->error_callback = std::move(ecb);
    struct Chunks final : Job {
      std::shared_ptr<ResultState<std::vector<R>>> s;
      std::vector<std::vector<R>> parts;
      std::size_t left = 0;
      bool failed = false;
      void deliver(std::size_t i, std::string_view p) override {
        if (failed) return;
        try {
          parts.at(i) = from_wire<std::vector<R>>(p);
        } catch (...) {
          return fail_chunk(i, std::current_exception());
        }
        if (--left == 0) {
          std::vector<R> all;
          for (auto& part : parts) std::move(part.begin(), part.end(), std::back_inserter(all));
          s->finish(std::move(all), nullptr);
        }
      }
      void fail_chunk(std::size_t, std::exception_ptr e) override {
        failed = true;  // Python's map reports the first failure
        s->finish(std::nullopt, e);
      }
    };
    auto job = std::make_shared<Chunks>();
    job->s = state;
    std::vector<std::string> chunks;
    for (std::size_t b = 0; b < items.size(); b += chunksize) {
      const auto e = std::min(items.size(), b + chunksize);
      chunks.push_back(to_wire(std::vector<T>(std::make_move_iterator(items.begin() + b),
                                              std::make_move_iterator(items.begin() + e))));
    }
    job->parts.resize(chunks.size());
    job->left = chunks.size();
    if (chunks.empty()) {
      state->finish(std::vector<R>{}, nullptr);
      return AsyncResult<std::vector<R>>(state);
    }
    enqueue(job, invoker, std::move(fn), std::move(chunks));
    return AsyncResult<std::vector<R>>(state);
  }

  void enqueue(std::shared_ptr<detail::pool::Job> job, std::uint32_t invoker, std::string fn,
               std::vector<std::string> chunks, std::size_t first_index = 0) {
    auto shared_fn = std::make_shared<const std::string>(std::move(fn));
    std::lock_guard g(mu_);
    if (broken_) std::rethrow_exception(broken_);
    if (closed_) detail::fail<ValueError>("Pool not running: it was closed or terminated");
    for (std::size_t i = 0; i < chunks.size(); ++i) {
      Task t;
      t.seq = ++next_seq_;
      t.job = job;
      t.index = first_index + i;
      t.invoker = invoker;
      t.fn = shared_fn;
      t.args = std::move(chunks[i]);
      if (t.args.size() + shared_fn->size() + sizeof(detail::pool::TaskHeader) >
          detail::pool::kMaxMessage)
        detail::fail<ValueError>("a task of {} bytes exceeds the pool's {} byte limit; use a "
                                 "smaller chunksize",
                                 t.args.size(), detail::pool::kMaxMessage);
      pending_.push_back(std::move(t));
    }
    wake_supervisor();
  }

  // Raw map chunks of `chunk` items (`in` / `out` bytes each) over `count` items of `src`.
  void enqueue_raw(std::shared_ptr<detail::pool::Job> job, std::uint32_t invoker, std::string fn,
                   std::shared_ptr<RawSource> src, std::size_t count, std::size_t chunk,
                   std::size_t in, std::size_t out) {
    auto shared_fn = std::make_shared<const std::string>(std::move(fn));
    const std::size_t biggest = std::min(chunk, count) * std::max(in, out);
    if (biggest + shared_fn->size() + sizeof(detail::pool::TaskHeader) +
            sizeof(detail::pool::ResultHeader) >
        detail::pool::kMaxMessage)
      detail::fail<ValueError>("a task of {} bytes exceeds the pool's {} byte limit; use a "
                               "smaller chunksize",
                               biggest, detail::pool::kMaxMessage);
    std::lock_guard g(mu_);
    if (broken_) std::rethrow_exception(broken_);
    if (closed_) detail::fail<ValueError>("Pool not running: it was closed or terminated");
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

  // The supervisor sleeps in the result queue; an empty message wakes it to dispatch new work.
  void wake_supervisor() {
    if (results_) (void)results_->try_put(std::string());
  }

  // ---- the supervisor thread ----------------------------------------------------------------

  void supervise() {
    using namespace std::chrono_literals;
    for (;;) {
      bool stop_now = false, drained = false;
      std::vector<std::pair<Task, std::exception_ptr>> unplaced;
      {
        std::unique_lock g(mu_);
        if (terminated_) stop_now = true;
        dispatch_locked(unplaced);
        drained = closed_ && pending_.empty() && inflight_.empty();
      }
      // Failed outside mu_: a job's failure may run user callbacks.
      for (auto& [t, e] : unplaced) t.job->fail_chunk(t.index, e);
      if (stop_now) return shutdown(true);
      if (drained) return shutdown(false);
      poll_results(20ms);
      check_workers();
    }
  }

  //!Effects: hands pending tasks to workers with room; a task that cannot be placed because
  //! /dev/shm is full is moved to `unplaced` with its NoSpaceError (only that call fails).
  void dispatch_locked(std::vector<std::pair<Task, std::exception_ptr>>& unplaced) {
    for (std::size_t i = 0; i < workers_.size() && !pending_.empty(); ++i) {
      Worker& w = workers_[i];
      if (!w.tasks) continue;  // its replacement failed to start (see replace())
      while (!pending_.empty() && w.assigned.size() < detail::pool::kWindow && !w.stopping &&
             (opts_.maxtasksperchild == 0 || w.dispatched < opts_.maxtasksperchild)) {
        Task& t = pending_.front();
        detail::pool::TaskHeader h{t.seq, t.invoker, static_cast<std::uint32_t>(t.fn->size())};
        std::string_view args = t.args;
        std::size_t k = w.region.size();
        if (t.raw) {
          using detail::pool::kRegion;
          if (t.src->gone) {  // its map() returned (failed): nobody wants this chunk any more
            pending_.pop_front();
            continue;
          }
          args = std::string_view(reinterpret_cast<const char*>(t.src->data) + t.src_off,
                                  t.args_size);
          h.raw = 1;
          h.in_size = t.out_bytes;  // inline: the result bytes expected
          h.out_off = t.in_place ? 0 : detail::pool::out_offset(t.args_size);
          if (arena_ && t.args_size <= kRegion && h.out_off + t.out_bytes <= kRegion) {
            k = 0;
            while (k < w.region.size() && w.region[k] != 0) ++k;
            if (k < w.region.size()) {
              // First use of this much of the region: have its pages allocated now, in one
              // call, so a full /dev/shm fails this chunk here rather than faulting the pages
              // into memory only this process sees.
              std::size_t& warm = arena_warm_[i * detail::pool::kWindow + k];
              const std::size_t need = detail::pool::warm_size(
                  std::max<std::size_t>(t.args_size, h.out_off + t.out_bytes));
              if (warm < need) {
                const int err = detail::os::populate_write(
                    arena_->payload() + (i * detail::pool::kWindow + k) * kRegion, need);
                if (err == 0) {
                  warm = need;
                } else if (err == EFAULT || err == ENOMEM || err == ENOSPC) {
                  std::exception_ptr e;
                  try {
                    detail::os::fail_no_space(
                        arena_->name(), need - warm,
                        fmt::format("; or use a smaller chunksize (this chunk of a Pool's "
                                    "map has {} bytes of arguments)",
                                    t.args_size));
                  } catch (const NoSpaceError&) {
                    e = std::current_exception();
                  }
                  unplaced.emplace_back(std::move(t), e);
                  pending_.pop_front();
                  continue;
                } else {
                  k = w.region.size();  // not a lack of memory: the chunk goes through the queue
                }
              }
            }
          }
          if (k < w.region.size()) {  // the input goes to region k, only the header to the queue
            std::memcpy(arena_->payload() + (i * detail::pool::kWindow + k) * kRegion,
                        args.data(), args.size());
            h.region = static_cast<std::uint32_t>(k + 1);
            h.in_size = t.args_size;
            args = {};
          }
        }
        try {
          if (!w.tasks->try_put(detail::pool::task_message(h, *t.fn, args))) break;
        } catch (const NoSpaceError&) {  // the task queue cannot back this message
          unplaced.emplace_back(std::move(t), std::current_exception());
          pending_.pop_front();
          continue;
        }
        if (k < w.region.size()) w.region[k] = t.seq;
        w.assigned.push_back(t.seq);
        ++w.dispatched;
        const std::uint64_t seq = t.seq;
        inflight_.emplace(seq, std::move(t));
        pending_.pop_front();
      }
    }
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
    using namespace detail::pool;
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
    {
      std::lock_guard g(mu_);
      // Results left in a region by an earlier incarnation of the worker (it exited or was
      // replaced before we read them): the region may hold other data now. The task was
      // requeued or failed when that worker went away.
      if (h.region != 0 && (h.worker >= workers_.size() || workers_[h.worker].gen != h.gen))
        return;
      auto it = inflight_.find(h.seq);
      if (it == inflight_.end()) return;  // already failed (timeout, lost worker)
      t = std::move(it->second);
      inflight_.erase(it);
      if (h.worker < workers_.size()) {
        auto& a = workers_[h.worker].assigned;
        a.erase(std::remove(a.begin(), a.end(), h.seq), a.end());
        for (auto& r : workers_[h.worker].region)
          if (r == h.seq) region = &r;
      }
    }
    if (h.ok && h.region != 0) {
      // Results in the arena: only the region this task was given, and only its expected size.
      const std::size_t k = h.region - 1;
      const std::size_t off = t.in_place ? 0 : out_offset(t.args_size);
      if (!t.raw || region == nullptr || k >= kWindow ||
          region != &workers_[h.worker].region[k] || h.out_size != t.out_bytes ||
          off + t.out_bytes > kRegion) {
        if (region != nullptr) *region = 0;
        t.job->fail_chunk(t.index, std::make_exception_ptr(CorruptedError(fmt::format(
                                       "pool task {}: a malformed result (region {}, {} bytes)",
                                       h.seq, h.region, h.out_size))));
        return;
      }
      payload = std::string_view(reinterpret_cast<const char*>(arena_->payload()) +
                                     (h.worker * kWindow + k) * kRegion + off,
                                 t.out_bytes);
    }
    if (h.ok) {
      t.job->deliver(t.index, payload);
      if (region != nullptr) *region = 0;  // only this thread dispatches: safe to reuse now
    } else {
      if (region != nullptr) *region = 0;
      std::exception_ptr e;
      try {
        const auto err = from_wire<std::pair<std::string, std::string>>(payload);
        throw_remote(err.first, err.second);
      } catch (...) {
        e = std::current_exception();
      }
      t.job->fail_chunk(t.index, e);
    }
  }

  void check_workers() {
    for (std::size_t i = 0; i < workers_.size(); ++i) {
      Worker& w = workers_[i];
      if (!w.proc) {
        if (w.respawn) replace(i, 0);
        continue;
      }
      std::uint64_t running =
          std::atomic_ref<std::uint64_t>((*status_)[2 * i]).load(std::memory_order_acquire);
      if (opts_.task_timeout && running != 0 && running != detail::pool::kInitializing) {
        const auto started = static_cast<std::int64_t>(
            std::atomic_ref<std::uint64_t>((*status_)[2 * i + 1]).load(std::memory_order_relaxed));
        const double secs = static_cast<double>(detail::pool::now_ns() - started) / 1e9;
        if (secs > opts_.task_timeout->count()) {
          w.proc->kill();
          w.proc->join(Timeout(5.0));
          fail_task(running, std::make_exception_ptr(TimeoutError(fmt::format(
                                 "the task ran for more than {} s; its worker was replaced",
                                 opts_.task_timeout->count()))));
          replace(i, running);
          continue;
        }
      }
      if (w.proc->is_alive()) continue;
      // Read again now that it is gone: it may have left the initializer or started a task
      // since the first read.
      running = std::atomic_ref<std::uint64_t>((*status_)[2 * i]).load(std::memory_order_acquire);
      // Exited: after maxtasksperchild (normal), or died (killed, crashed). Results it queued
      // before it went are read first, so their tasks are delivered rather than run again.
      for (auto m = results_->try_get(); m; m = results_->try_get()) handle_result(*m);
      if (!w.proc) continue;  // its report of a failed initializer broke the pool
      const int code = w.proc->exitcode().value_or(-1);
      if (running == detail::pool::kInitializing) {  // died without a report: killed, crashed
        std::exception_ptr e;
        try {
          try {
            detail::fail<WorkerLostError>(
                "pool worker {} died (exit code {}) while running the initializer", i, code);
          } catch (...) {
            std::throw_with_nested(BrokenProcessPool(fmt::format(
                "pool worker {} died (exit code {}) while running the pool's initializer; {}", i,
                code, kBrokenAdvice)));
          }
        } catch (...) {
          e = std::current_exception();
        }
        break_pool(e);
        continue;
      }
      if (running != 0) {
        std::unique_lock g(mu_);
        auto it = inflight_.find(running);
        if (it != inflight_.end() && it->second.attempts < opts_.retries) {
          ++it->second.attempts;
          pending_.push_front(std::move(it->second));
          inflight_.erase(it);
        } else {
          g.unlock();
          fail_task(running, std::make_exception_ptr(WorkerLostError(fmt::format(
                                 "pool worker {} died (exit code {}) while running a task", i,
                                 code))));
        }
      }
      replace(i, running);
    }
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
    Worker& w = workers_[i];
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
    if (terminated_ || broken_) return;
    g.unlock();
    try {
      spawn_worker(i);
    } catch (const std::exception& e) {  // e.g. a spawned program that cannot start
      w.proc.reset();
      w.tasks.reset();
      w.respawn = true;  // check_workers() tries again
      bool any = false;
      for (auto& o : workers_) any = any || o.proc.has_value();
      if (!any) {  // nobody can run the queued work: fail it rather than leave it waiting
        std::deque<Task> lost;
        {
          std::lock_guard g2(mu_);
          lost.swap(pending_);
        }
        for (auto& t : lost)
          t.job->fail_chunk(t.index, std::make_exception_ptr(ProcessError(fmt::format(
                                         "no pool worker could be started: {}", e.what()))));
      }
    }
  }

  static constexpr const char* kBrokenAdvice =
      "the pool is broken: its pending and later calls fail with BrokenProcessPool and no worker "
      "is started again (make a new pool once the initializer is fixed)";

  // A worker reported that the initializer threw: the pool is broken, with that exception nested
  // in the BrokenProcessPool.
  void initializer_failed(std::uint32_t worker, std::string_view payload) {
    using namespace detail::pool;
    std::pair<std::string, std::string> err;
    try {
      err = from_wire<std::pair<std::string, std::string>>(payload);
    } catch (const std::exception& e) {  // malformed: still a failed initializer
      err = {"mpp::CorruptedError", fmt::format("an unreadable report ({})", e.what())};
    }
    std::exception_ptr broken;
    try {
      try {
        throw_remote(err.first, err.second);
      } catch (...) {
        std::throw_with_nested(BrokenProcessPool(fmt::format(
            "the pool's initializer raised {}: {} (in pool worker {}); {}", err.first, err.second,
            worker, kBrokenAdvice)));
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
      for (auto& [seq, t] : inflight_) left.push_back(std::move(t));
      for (auto& t : pending_) left.push_back(std::move(t));
      inflight_.clear();
      pending_.clear();
    }
    kill_workers();
    for (auto& w : workers_) {
      w.proc.reset();
      w.tasks.reset();
      w.assigned.clear();
      w.region.fill(0);
      w.respawn = false;
    }
    for (auto& t : left) t.job->fail_chunk(t.index, e);
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
    using namespace std::chrono_literals;
    for (std::size_t i = 0; i < workers_.size(); ++i) {
      Worker& w = workers_[i];
      if (!w.proc) continue;
      if (terminate) {
        w.proc->terminate();
      } else {
        const detail::pool::TaskHeader stop{0, 0, 0};
        (void)w.tasks->try_put(detail::pool::task_message(stop, {}, {}));
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
      for (auto& [seq, t] : inflight_) left.push_back(std::move(t));
      for (auto& t : pending_) left.push_back(std::move(t));
      inflight_.clear();
      pending_.clear();
    }
    for (auto& t : left)
      t.job->fail_chunk(t.index, std::make_exception_ptr(ProcessError(
                                     "the pool was terminated before this task completed")));
  }

  PoolOptions opts_;
  StartMethod method_ = StartMethod::fork;
  detail::pool::WorkerConfig config_;
  std::optional<Queue<std::string>> results_;
  std::optional<RawArray<std::uint64_t>> status_;
  std::shared_ptr<detail::Segment> arena_;  // raw map chunks (see kRegion); inherited by workers
  std::vector<std::size_t> arena_warm_;     // per region: bytes allocated (see warm_size)
  std::vector<Worker> workers_;
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

/// The input range returned by Pool::imap / imap_unordered: yields results as they are ready,
/// submitting new chunks as old ones are consumed (at most 2 × processes chunks in flight).
template <class R>
class IMapResult {
  struct State : detail::pool::Job {
    std::mutex mu;
    std::condition_variable cv;
    std::map<std::size_t, std::vector<R>> ready;  // chunk index -> results
    std::deque<std::vector<R>> unordered;
    std::map<std::size_t, std::exception_ptr> errors;  // chunk index -> its exception
    bool ordered = true;
    void deliver(std::size_t i, std::string_view p) override {
      std::vector<R> v;
      try {
        v = detail::pool::from_wire<std::vector<R>>(p);
      } catch (...) {
        return fail_chunk(i, std::current_exception());
      }
      {
        std::lock_guard g(mu);
        if (ordered)
          ready.emplace(i, std::move(v));
        else
          unordered.push_back(std::move(v));
      }
      cv.notify_all();
    }
    void fail_chunk(std::size_t i, std::exception_ptr e) override {
      {
        std::lock_guard g(mu);
        errors.emplace(i, e);
      }
      cv.notify_all();
    }
  };

 public:
  /// Input iterator over the results.
  class iterator {
   public:
    using value_type = R;
    using difference_type = std::ptrdiff_t;
    iterator() = default;
    /// The current result.
    const R& operator*() const { return r_->current_; }
    /// Advances (waits for the next result; throws the task's exception).
    iterator& operator++() {
      r_->advance();
      return *this;
    }
    void operator++(int) { ++*this; }
    friend bool operator==(const iterator& it, std::default_sentinel_t) { return it.r_->finished(); }

   private:
    friend class IMapResult;
    explicit iterator(IMapResult* r) : r_(r) {}
    IMapResult* r_ = nullptr;
  };

  /// Starts the iteration (waits for the first result).
  iterator begin() {
    if (!started_) {
      started_ = true;
      advance();
    }
    return iterator(this);
  }
  /// End of the results.
  std::default_sentinel_t end() const noexcept { return {}; }
  /// True once every result has been consumed.
  bool finished() const noexcept { return done_; }

 private:
  friend class Pool;
  using Submit = std::function<bool(std::shared_ptr<detail::pool::Job>, std::size_t)>;
  IMapResult(bool ordered, std::size_t window, Submit submit)
      : st_(std::make_shared<State>()), window_(window), submit_(std::move(submit)) {
    st_->ordered = ordered;
  }

  void top_up() {
    while (!exhausted_ && submitted_ - consumed_chunks_ < window_) {
      if (!submit_(st_, submitted_)) {
        exhausted_ = true;
        break;
      }
      ++submitted_;
    }
  }

  void advance() {
    if (buf_pos_ < buf_.size()) {
      current_ = std::move(buf_[buf_pos_++]);
      return;
    }
    top_up();
    if (consumed_chunks_ == submitted_ && exhausted_) {
      done_ = true;
      return;
    }
    std::unique_lock g(st_->mu);
    // Ordered: wait for the next chunk's result or error. Unordered: any result, else any error.
    st_->cv.wait(g, [&] {
      return st_->ordered ? st_->ready.count(consumed_chunks_) || st_->errors.count(consumed_chunks_)
                          : !st_->unordered.empty() || !st_->errors.empty();
    });
    const bool have = st_->ordered ? st_->ready.count(consumed_chunks_) != 0
                                   : !st_->unordered.empty();
    if (!have) {
      done_ = true;
      std::rethrow_exception(st_->errors.begin()->second);
    }
    if (st_->ordered) {
      auto it = st_->ready.find(consumed_chunks_);
      buf_ = std::move(it->second);
      st_->ready.erase(it);
    } else {
      buf_ = std::move(st_->unordered.front());
      st_->unordered.pop_front();
    }
    g.unlock();
    ++consumed_chunks_;
    buf_pos_ = 0;
    advance();  // an empty chunk cannot happen; this also tops up the window
  }

  std::shared_ptr<State> st_;
  std::size_t window_;
  Submit submit_;
  std::vector<R> buf_;
  std::size_t buf_pos_ = 0;
  std::size_t submitted_ = 0, consumed_chunks_ = 0;
  bool exhausted_ = false, started_ = false, done_ = false;
  R current_{};
};

template <class F, class Range>
auto Pool::imap(F f, Range&& range, std::size_t chunksize) {
  check_callable<F>();
  using A = std::ranges::range_value_t<Range>;
  using R = detail::pool::map_result_t<F, A>;
  if (chunksize == 0) chunksize = 1;
  const auto id = detail::pool::Registered<&detail::pool::run_map_chunk<F, A>>::id;
  // A temporary range is kept alive by the result; a named one is only referenced (lazily read).
  using Stored = std::conditional_t<std::is_lvalue_reference_v<Range>, Range, std::decay_t<Range>>;
  struct Source {
    Stored range;
    decltype(std::ranges::begin(std::declval<Stored&>())) it;
  };
  auto src = std::make_shared<Source>(Source{std::forward<Range>(range), {}});
  src->it = std::ranges::begin(src->range);
  auto fn = wire(f);
  return IMapResult<R>(true, 2 * workers_.size(),
                       [this, id, src, fn, chunksize](std::shared_ptr<detail::pool::Job> job,
                                                      std::size_t index) {
                         std::vector<A> chunk;
                         for (; src->it != std::ranges::end(src->range) && chunk.size() < chunksize;
                              ++src->it)
                           chunk.push_back(*src->it);
                         if (chunk.empty()) return false;
                         enqueue(job, id, fn, {detail::pool::to_wire(chunk)}, index);
                         return true;
                       });
}

template <class F, class Range>
auto Pool::imap_unordered(F f, Range&& range, std::size_t chunksize) {
  auto r = imap(f, std::forward<Range>(range), chunksize);
  r.st_->ordered = false;
  return r;
}

}  // namespace mpp
