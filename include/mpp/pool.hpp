// mpp — Pool: a pool of worker processes fed through mpp queues (Python's multiprocessing.Pool),
// that never hangs on a lost worker (cpython#96062): a worker that dies is replaced and the task it
// was running fails with WorkerLostError (or is retried); a task over its timeout kills its worker
// and fails with TimeoutError; everything else carries on.
//
// Callables and arguments cross to the workers as data: a function pointer, a capture-less lambda
// or a functor whose captures are trivially copyable or Encodable. With the spawn and forkserver
// start methods (PoolOptions::start_method) a worker is a new run of the program and runs only
// functions registered with MPP_REGISTER; others are refused with InvalidArgument on submission.
// How the scheduler, the workers and the shared arena work: docs/design/pool.md.
#pragma once

#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <ranges>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "detail/pool/future_state.hpp"
#include "detail/pool/invoke.hpp"
#include "detail/pool/jobs.hpp"
#include "detail/pool/result.hpp"
#include "detail/pool/scheduler.hpp"
#include "detail/pool/worker.hpp"
#include "errors.hpp"
#include "process.hpp"
#include "timeout.hpp"

namespace mpp {

/// Options of a Pool beyond Python's positional arguments.
///
/// As in Python, an omitted (nullopt) field takes its default and an explicit bad value is refused
/// with ValueError when the pool is made: `processes` and `maxtasksperchild` must be >= 1.
struct PoolOptions {
  std::optional<int> processes{};  ///< number of workers; nullopt: cpu_count()
  /// A worker is replaced after this many tasks (nullopt: never).
  std::optional<int> maxtasksperchild{};
  Timeout task_timeout{};  ///< per task (chunk): the worker is killed, the task fails
  unsigned retries = 0;    ///< re-runs of a task whose worker died before failing it
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

/// A chunksize argument: nullopt is Python's None (the call's default); an explicit value below 1
/// is refused with ValueError, as Python refuses it.
using Chunksize = std::optional<std::ptrdiff_t>;

/// What map()/starmap() of a function returning R give: std::vector<R>, or nothing (void) for a
/// void function.
template <class R>
using MapResult = detail::pool::map_value_t<R>;
/// The callback of an asynchronous call whose result is T: `void(const T&)` (`void()` when T is
/// void), run in the pool's thread when the call completes.
template <class T>
using ResultCallback = detail::pool::callback_t<T>;
/// True when `F` can cross to a worker: a function pointer, a capture-less lambda, or a
/// functor whose captures are trivially copyable or Encodable.
template <class F>
concept PoolCallable = detail::pool::Callable<F>;

class AnyFuture;

/// Result of an asynchronous pool call (Python's AsyncResult). `R` is void for a function
/// returning void (and for map() of one): get() then only waits and rethrows.
template <class R>
class AsyncResult {
 public:
  //!Returns: the result, waiting for it. Throws: the task's exception (std:: and mpp types as
  //! themselves with a RemoteError nested that says where, other types as RemoteError;
  //! SystemExit for mpp::exit(n) in the task), WorkerLostError, TimeoutError for a task over its
  //! timeout.
  R get() { return get(std::nullopt); }
  //!Returns: the result, waiting at most `timeout` seconds. Throws: TimeoutError if not ready.
  R get(Timeout timeout) {
    if (!wait(timeout))
      detail::fail<TimeoutError>("the result is not ready after {} s", timeout->count());
    std::lock_guard g(s_->mu);
    if (s_->error) std::rethrow_exception(s_->error);
    if constexpr (!std::is_void_v<R>) return *s_->value;
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
  friend class AnyFuture;
  using Stored = detail::pool::stored_t<R>;
  explicit AsyncResult(std::shared_ptr<detail::pool::ResultState<Stored>> s) : s_(std::move(s)) {}
  // get() for a result nobody else sees (Pool::map): moves the value out instead of copying it.
  R take() {
    wait(std::nullopt);
    std::lock_guard g(s_->mu);
    if (s_->error) std::rethrow_exception(s_->error);
    if constexpr (!std::is_void_v<R>) return std::move(*s_->value);
  }
  std::shared_ptr<detail::pool::ResultState<Stored>> s_;
};

template <class R>
class IMapResult;
class ProcessPoolExecutor;

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
  static constexpr int kMaxProcesses = detail::pool::Scheduler::kMaxProcesses;

  //!Effects: starts `processes` workers (nullopt: cpu_count()).
  //!Throws: ValueError if `processes` < 1 (Python's "Number of processes must be at least 1"),
  //! ProcessError.
  explicit Pool(std::optional<int> processes = std::nullopt) : Pool(PoolOptions{processes}) {}
  //!Effects: starts the workers described by `opts`.
  explicit Pool(const PoolOptions& opts) { start(opts, -1, {}, {}); }
  //!Effects: starts the workers; each runs `initializer(initargs...)` first (Python's
  //! initializer); if it fails the pool is broken (BrokenProcessPool, see the class comment).
  template <class F, class... A>
  requires PoolCallable<std::decay_t<F>> Pool(const PoolOptions& opts, F&& initializer,
                                              A&&... initargs)
      : Pool(detail::pool::OwnerName{}, opts, std::forward<F>(initializer),
             std::forward<A>(initargs)...) {}

  /// Not copyable: a Pool owns its worker processes.
  Pool(const Pool&) = delete;
  /// Not copyable.
  Pool& operator=(const Pool&) = delete;
  /// Terminates the workers (Python's Pool.__exit__).
  ~Pool() { terminate(); }

  /// Number of worker processes.
  int processes() const noexcept { return static_cast<int>(sched_.processes()); }
  /// How the workers are started (PoolOptions::start_method, else get_start_method() at creation).
  StartMethod start_method() const noexcept { return sched_.method(); }

  //!Returns: [f(x) for x in range], in order (nothing for a void `f`: it waits and rethrows); the
  //! work is split into chunks of `chunksize` items (nullopt: Python's choice, len / (4 *
  //! processes) rounded up). Throws: ValueError if `chunksize` < 1; the first task's exception.
  template <class F, class Range>
  auto map(F f, const Range& range, Chunksize chunksize = std::nullopt);
  //!Returns: an AsyncResult of map(); `callback` / `error_callback` run in the pool's thread.
  template <class F, class Range, class A = std::ranges::range_value_t<Range>,
            class R = std::invoke_result_t<const F&, const A&>>
  AsyncResult<MapResult<R>> map_async(
      F f, const Range& range, Chunksize chunksize = std::nullopt,
      std::type_identity_t<ResultCallback<MapResult<R>>> callback = {},
      std::function<void(std::exception_ptr)> error_callback = {});

  //!Returns: [f(*t) for t in range] (Python's starmap), range elements being tuples or pairs.
  template <class F, class Range>
  auto starmap(F f, const Range& range, Chunksize chunksize = std::nullopt) {
    return starmap_async(f, range, chunksize).get();
  }
  //!Returns: an AsyncResult of starmap().
  template <class F, class Range, class T = std::ranges::range_value_t<Range>,
            class R = decltype(std::apply(std::declval<const F&>(), std::declval<const T&>()))>
  AsyncResult<MapResult<R>> starmap_async(
      F f, const Range& range, Chunksize chunksize = std::nullopt,
      std::type_identity_t<ResultCallback<MapResult<R>>> callback = {},
      std::function<void(std::exception_ptr)> error_callback = {});

  //!Returns: f(args...) computed by a worker (Python's apply).
  template <class F, class... A>
  auto apply(F f, A&&... a) {
    return apply_async(f, std::forward<A>(a)...).get();
  }
  //!Returns: an AsyncResult of f(args...) (Python's apply_async without callbacks).
  template <class F, class... A>
  requires(!detail::pool::first_is_args_v<A...>) auto apply_async(F f, A&&... a) {
    return apply_async(f, mpp::args(std::forward<A>(a)...), {}, {});
  }
  //!Returns: an AsyncResult of f(args...) (AsyncResult<void> for a void `f`); `callback(result)`
  //! (`callback()` for a void `f`) or `error_callback(exception)` runs in the pool's thread when
  //! it completes (Python's apply_async(func, args, callback=...)). An argument that cannot be
  //! encoded fails the result (and runs `error_callback`) rather than this call, as in Python.
  template <class F, class... A, class R = std::invoke_result_t<const F&, const A&...>>
  AsyncResult<R> apply_async(F f, Args<A...> a, std::type_identity_t<ResultCallback<R>> callback,
                             std::function<void(std::exception_ptr)> error_callback = {});

  //!Returns: an input range over f(x) for x in range, in order, computed lazily with a bounded
  //! number of chunks in flight (Python's imap). A named `range` is read lazily and must outlive
  //! the iteration; a temporary one is kept by the result. An exception from reading `range`
  //! is raised by the iteration after the results of the items before the failing chunk, as in
  //! Python. Throws: ValueError if `chunksize` < 1.
  template <class F, class Range>
  auto imap(F f, Range&& range, Chunksize chunksize = 1);
  //!Returns: as imap(), but in completion order (Python's imap_unordered).
  template <class F, class Range>
  auto imap_unordered(F f, Range&& range, Chunksize chunksize = 1);

  //!Effects: no more work may be submitted; workers exit once the queued work is done.
  void close() { sched_.close(); }
  //!Effects: stops the workers at once (SIGTERM); unfinished calls fail with ProcessError.
  void terminate() { sched_.terminate(); }
  //!Effects: waits for the workers to exit (Python's join()). Throws: ValueError unless close()
  //! or terminate() was called first.
  void join() { sched_.join(); }

 private:
  friend class ProcessPoolExecutor;

  // A pool made by `owner` (ProcessPoolExecutor names itself in messages).
  Pool(detail::pool::OwnerName owner, const PoolOptions& opts) { start(opts, -1, {}, {}, owner); }
  template <class F, class... A>
  Pool(detail::pool::OwnerName owner, const PoolOptions& opts, F&& initializer, A&&... initargs);

  // The start method of a pool made by `owner`. An executor with max_tasks_per_child refuses
  // fork and defaults to spawn, as Python's ProcessPoolExecutor does.
  static StartMethod method_for(const PoolOptions& opts, detail::pool::OwnerName owner) {
    if (owner.executor && opts.maxtasksperchild) {
      if (!opts.start_method) return StartMethod::spawn;
      if (*opts.start_method == StartMethod::fork)
        detail::fail<ValueError>(
            "max_tasks_per_child is incompatible with the 'fork' start method: make the {} with "
            "start_method = StartMethod::spawn or forkserver (or omit start_method: spawn is "
            "then used)",
            owner.name);
    }
    return detail::pool::method_of(opts.start_method);
  }

  void start(const PoolOptions& opts, std::int32_t init_invoker, std::string init_fn,
             std::string init_args, detail::pool::OwnerName owner = {}) {
    if (opts.processes && *opts.processes < 1)
      detail::fail<ValueError>("Number of processes must be at least 1, not {}", *opts.processes);
    if (opts.maxtasksperchild && *opts.maxtasksperchild < 1)
      detail::fail<ValueError>("maxtasksperchild must be a positive number or omitted, not {}",
                               *opts.maxtasksperchild);
    detail::pool::SchedulerOptions so;
    so.processes = opts.processes.value_or(0);
    so.maxtasksperchild = static_cast<unsigned>(opts.maxtasksperchild.value_or(0));
    so.task_timeout = opts.task_timeout;
    so.retries = opts.retries;
    so.method = method_for(opts, owner);
    // Python's executor starts spawned workers as calls need them and reuses idle ones; forked
    // ones (and a Pool's) all start at once, while the program is as the user made the pool.
    so.on_demand = owner.executor && so.method != StartMethod::fork;
    so.owner = owner.name;
    so.closed_message = owner.closed_message;
    sched_.start(so, init_invoker, std::move(init_fn), std::move(init_args));
  }

  detail::pool::Scheduler sched_;  // the workers and the supervisor thread
};

/// The input range returned by Pool::imap / imap_unordered: yields results as they are ready,
/// submitting new chunks as old ones are consumed (at most 2 × processes chunks in flight).
template <class R>
class IMapResult {
 public:
  /// Input iterator over the results.
  class iterator {
   public:
    using value_type = R;                    ///< the result type
    using difference_type = std::ptrdiff_t;  ///< required of an iterator
    /// A singular iterator.
    iterator() = default;
    /// The current result.
    const R& operator*() const { return r_->current_; }
    /// Advances (waits for the next result; throws the task's exception).
    iterator& operator++() {
      r_->advance();
      return *this;
    }
    /// Advances, as ++it.
    void operator++(int) { ++*this; }
    /// True once every result has been consumed.
    friend bool operator==(const iterator& it, std::default_sentinel_t) {
      return it.r_->finished();
    }

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
  using State = detail::pool::IMapState<R>;
  // Submits chunk `index` for the job; returns false once the input is exhausted.
  using Submit = std::function<bool(std::shared_ptr<detail::pool::Job>, std::size_t)>;
  IMapResult(bool ordered, std::size_t window, Submit submit)
      : st_(std::make_shared<State>()), window_(window), submit_(std::move(submit)) {
    st_->ordered = ordered;
  }
  void top_up();
  void advance();

  std::shared_ptr<State> st_;
  std::size_t window_;
  Submit submit_;
  std::vector<R> buf_;
  std::size_t buf_pos_ = 0;
  std::size_t submitted_ = 0, consumed_chunks_ = 0;
  bool exhausted_ = false, started_ = false, done_ = false;
  std::exception_ptr input_error_;  // reading the input failed after the submitted chunks
  R current_{};
};

// ---- member definitions ----------------------------------------------------------------------

template <class F, class... A>
Pool::Pool(detail::pool::OwnerName owner, const PoolOptions& opts, F&& initializer,
           A&&... initargs) {
  using Fn = std::decay_t<F>;
  using Tuple = std::tuple<std::decay_t<A>...>;
  const auto id =
      static_cast<std::int32_t>(detail::pool::Registered<&detail::pool::run_apply<Fn, Tuple>>::id);
  const StartMethod method = method_for(opts, owner);
  start(opts, id, detail::pool::wire_for(method, Fn(initializer)),
        detail::pool::to_wire(Tuple(std::forward<A>(initargs)...)), owner);
}

template <class F, class Range>
auto Pool::map(F f, const Range& range, Chunksize chunksize_arg) {
  using A = std::ranges::range_value_t<Range>;
  using R = detail::pool::map_result_t<F, A>;
  const std::size_t chunksize = detail::pool::chunksize_or(chunksize_arg, 0);
  if constexpr (detail::pool::kRawItem<A> && detail::pool::kRawItem<R> &&
                std::ranges::contiguous_range<const Range&> &&
                std::ranges::sized_range<const Range&>) {
    // The chunks are copied to the workers straight from `range`, which outlives this call.
    detail::pool::check_callable<F>();
    auto src = std::make_shared<detail::pool::RawSource>();
    src->data = reinterpret_cast<const std::byte*>(std::ranges::data(range));
    auto r = AsyncResult<std::vector<R>>(detail::pool::submit_raw<R, A>(
        sched_, detail::pool::Registered<&detail::pool::run_raw_chunk<F, A>>::id, sched_.wire(f),
        src, std::ranges::size(range), chunksize, {}, {}));
    try {
      auto v = r.take();
      sched_.release_source(*src);
      return v;
    } catch (...) {
      sched_.release_source(*src);
      throw;
    }
  } else {
    return map_async(f, range, chunksize_arg).take();
  }
}

template <class F, class Range, class A, class R>
AsyncResult<MapResult<R>> Pool::map_async(
    F f, const Range& range, Chunksize chunksize_arg,
    std::type_identity_t<ResultCallback<MapResult<R>>> callback_arg,
    std::function<void(std::exception_ptr)> error_callback) {
  detail::pool::check_callable<F>();
  const std::size_t chunksize = detail::pool::chunksize_or(chunksize_arg, 0);
  auto callback =
      detail::pool::stored_callback<detail::pool::map_value_t<R>>(std::move(callback_arg));
  if constexpr (detail::pool::kRawItem<A> && detail::pool::kRawItem<R>) {
    const auto id = detail::pool::Registered<&detail::pool::run_raw_chunk<F, A>>::id;
    std::size_t count = 0;
    auto src = detail::pool::copy_raw_source<A>(range, count);
    return AsyncResult<std::vector<R>>(
        detail::pool::submit_raw<R, A>(sched_, id, sched_.wire(f), std::move(src), count, chunksize,
                                       std::move(callback), std::move(error_callback)));
  } else {
    std::vector<A> items(std::ranges::begin(range), std::ranges::end(range));
    const auto id = detail::pool::Registered<&detail::pool::run_map_chunk<F, A>>::id;
    return AsyncResult<MapResult<R>>(detail::pool::submit_chunks<detail::pool::stored_t<R>>(
        sched_, id, sched_.wire(f), std::move(items), chunksize, std::move(callback),
        std::move(error_callback)));
  }
}

template <class F, class Range, class T, class R>
AsyncResult<MapResult<R>> Pool::starmap_async(
    F f, const Range& range, Chunksize chunksize,
    std::type_identity_t<ResultCallback<MapResult<R>>> callback,
    std::function<void(std::exception_ptr)> error_callback) {
  detail::pool::check_callable<F>();
  const std::size_t chunk = detail::pool::chunksize_or(chunksize, 0);
  std::vector<T> items(std::ranges::begin(range), std::ranges::end(range));
  const auto id = detail::pool::Registered<&detail::pool::run_star_chunk<F, T>>::id;
  return AsyncResult<MapResult<R>>(detail::pool::submit_chunks<detail::pool::stored_t<R>>(
      sched_, id, sched_.wire(f), std::move(items), chunk,
      detail::pool::stored_callback<detail::pool::map_value_t<R>>(std::move(callback)),
      std::move(error_callback)));
}

template <class F, class... A, class R>
AsyncResult<R> Pool::apply_async(F f, Args<A...> a,
                                 std::type_identity_t<ResultCallback<R>> callback,
                                 std::function<void(std::exception_ptr)> error_callback) {
  detail::pool::check_callable<F>();
  using S = detail::pool::stored_t<R>;
  auto [state, job] = detail::futures::submit_call<S>(
      sched_, f, a.values, detail::pool::stored_callback<R>(std::move(callback)),
      std::move(error_callback));
  return AsyncResult<R>(state);
}

template <class F, class Range>
auto Pool::imap(F f, Range&& range, Chunksize chunksize_arg) {
  detail::pool::check_callable<F>();
  using A = std::ranges::range_value_t<Range>;
  using R = detail::pool::map_result_t<F, A>;
  static_assert(!std::is_void_v<R>, "mpp::Pool::imap of a void function: use map or apply_async");
  const std::size_t chunksize = detail::pool::chunksize_or(chunksize_arg, 1);
  const auto id = detail::pool::Registered<&detail::pool::run_map_chunk<F, A>>::id;
  // A temporary range is kept alive by the result; a named one is only referenced (lazily read).
  using Stored = std::conditional_t<std::is_lvalue_reference_v<Range>, Range, std::decay_t<Range>>;
  struct Source {
    Stored range;
    decltype(std::ranges::begin(std::declval<Stored&>())) it;
  };
  auto src = std::make_shared<Source>(Source{std::forward<Range>(range), {}});
  src->it = std::ranges::begin(src->range);
  auto submit = [this, id, src, fn = sched_.wire(f), chunksize](
                    std::shared_ptr<detail::pool::Job> job, std::size_t index) {
    std::vector<A> chunk;
    for (; src->it != std::ranges::end(src->range) && chunk.size() < chunksize; ++src->it)
      chunk.push_back(*src->it);
    if (chunk.empty()) return false;
    sched_.enqueue(job, id, fn, {detail::pool::to_wire(chunk)}, index);
    return true;
  };
  return IMapResult<R>(true, 2 * sched_.processes(), std::move(submit));
}

template <class F, class Range>
auto Pool::imap_unordered(F f, Range&& range, Chunksize chunksize) {
  auto r = imap(f, std::forward<Range>(range), chunksize);
  r.st_->ordered = false;
  return r;
}

template <class R>
void IMapResult<R>::top_up() {
  while (!exhausted_ && submitted_ - consumed_chunks_ < window_) {
    bool more = false;
    try {
      more = submit_(st_, submitted_);
    } catch (...) {
      // Reading the input failed: as in Python's task handler, the error takes the failing
      // chunk's place, after the results of the chunks already submitted.
      input_error_ = std::current_exception();
    }
    if (!more) {
      exhausted_ = true;
      break;
    }
    ++submitted_;
  }
}

template <class R>
void IMapResult<R>::advance() {
  if (buf_pos_ < buf_.size()) {
    current_ = std::move(buf_[buf_pos_++]);
    return;
  }
  top_up();
  if (consumed_chunks_ == submitted_ && exhausted_) {
    done_ = true;
    if (input_error_) std::rethrow_exception(std::exchange(input_error_, nullptr));
    return;
  }
  std::unique_lock g(st_->mu);
  // Ordered: wait for the next chunk's result or error. Unordered: any result, else any error.
  st_->cv.wait(g, [&] {
    return st_->ordered ? st_->ready.count(consumed_chunks_) || st_->errors.count(consumed_chunks_)
                        : !st_->unordered.empty() || !st_->errors.empty();
  });
  const bool have =
      st_->ordered ? st_->ready.count(consumed_chunks_) != 0 : !st_->unordered.empty();
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

}  // namespace mpp
