// mpp — ProcessPoolExecutor and Future (Python's concurrent.futures), on top of mpp::Pool: the same
// workers, queues and lost-worker handling (a killed worker fails its future with WorkerLostError
// instead of breaking the whole executor as Python's BrokenProcessPool does). A failed
// initializer does break it, as in Python: see ProcessPoolExecutor. futures::wait and
// as_completed watch futures of any result type and any executor (AnyFuture).
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdlib>
#include <deque>
#include <exception>
#include <functional>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <optional>
#include <ranges>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "detail/pool/future_state.hpp"
#include "errors.hpp"
#include "pool.hpp"
#include "timeout.hpp"

namespace mpp {

/// Options of a ProcessPoolExecutor (Python's max_workers and max_tasks_per_child). As in Python,
/// an omitted (nullopt) field takes its default and an explicit value below 1 is refused with
/// ValueError when the executor is made.
struct ExecutorOptions {
  std::optional<int> max_workers{};  ///< nullopt: cpu_count()
  /// A worker is replaced after this many tasks (nullopt: never). As in Python, it refuses the
  /// fork start method (ValueError) and makes an omitted start_method spawn.
  std::optional<int> max_tasks_per_child{};
  Timeout task_timeout{};  ///< per call: the worker is killed and the future fails
  unsigned retries = 0;    ///< re-runs of a call whose worker died
  /// How workers start (Python's mp_context=get_context(method)); nullopt: get_start_method().
  /// spawn and forkserver run registered functions only (see PoolOptions::start_method).
  std::optional<StartMethod> start_method{};
};

class ProcessPoolExecutor;
class AnyFuture;

namespace detail::futures {
struct Access {
  template <class F>
  static std::shared_ptr<pool::ResultBase> core(const F& f) {
    return f.core();
  }
};
}  // namespace detail::futures

/// The eventual result of a submitted call (Python's concurrent.futures.Future). `R` is void for
/// a function returning void: result() then only waits and rethrows.
template <class R>
class Future {
 public:
  //!Returns: the call's result, waiting at most `timeout` (nullopt: forever).
  //!Throws: TimeoutError if not done in time, CancelledError if cancelled, else the call's
  //! exception: what the task threw (std:: and mpp types as themselves, with a RemoteError
  //! nested that names the worker's pid and the function; other types as RemoteError),
  //! SystemExit for mpp::exit(n) in the task, WorkerLostError, TimeoutError of a task timeout,
  //! or what encoding an argument threw.
  R result(Timeout timeout = std::nullopt) const {
    wait_done(timeout);
    std::lock_guard g(s_->result->mu);
    if (s_->result->error) std::rethrow_exception(s_->result->error);
    if constexpr (!std::is_void_v<R>) return *s_->result->value;
  }
  //!Returns: the call's exception (nullptr if it succeeded), waiting at most `timeout`.
  //!Throws: TimeoutError, CancelledError.
  std::exception_ptr exception(Timeout timeout = std::nullopt) const {
    wait_done(timeout);
    if (cancelled()) std::rethrow_exception(s_->result->error);
    std::lock_guard g(s_->result->mu);
    return s_->result->error;
  }
  /// True when the call finished, failed or was cancelled.
  bool done() const {
    std::lock_guard g(s_->result->mu);
    return s_->result->done;
  }
  /// True when the call was cancelled (cancel(), or shutdown(cancel_futures=true)).
  bool cancelled() const {
    if (s_->cancelled.load()) return true;
    std::lock_guard g(s_->result->mu);
    if (!s_->result->done || !s_->result->error) return false;
    try {
      std::rethrow_exception(s_->result->error);
    } catch (const CancelledError&) {
      return true;
    } catch (...) {
      return false;
    }
  }
  /// True while a worker runs the call.
  bool running() const {
    return !done() && s_->sched != nullptr && s_->sched->is_running(s_->job.get());
  }
  //!Effects: cancels the call if no worker has started it. Returns: true if it is now cancelled.
  bool cancel() {
    if (cancelled()) return true;
    if (done() || s_->sched == nullptr || !s_->sched->cancel_pending(s_->job.get())) return false;
    s_->cancelled = true;
    s_->result->finish(std::nullopt,
                       std::make_exception_ptr(CancelledError("the future was cancelled")));
    return true;
  }
  //!Effects: calls `fn(*this)` when the future is done (at once if it already is); callbacks of
  //! calls completed by a worker run in the executor's supervisor thread.
  void add_done_callback(std::function<void(const Future&)> fn) {
    Future self = *this;
    s_->result->when_done([self, fn = std::move(fn)] { fn(self); });
  }
  /// True when both are the same call (copies of one Future).
  friend bool operator==(const Future& a, const Future& b) noexcept { return a.s_ == b.s_; }

 private:
  friend class ProcessPoolExecutor;
  friend struct detail::futures::Access;
  using Stored = detail::pool::stored_t<R>;
  explicit Future(std::shared_ptr<detail::futures::State<Stored>> s) : s_(std::move(s)) {}
  std::shared_ptr<detail::pool::ResultBase> core() const { return s_->result; }
  void wait_done(const Timeout& timeout) const {
    std::unique_lock g(s_->result->mu);
    auto ready = [&] { return s_->result->done; };
    if (!timeout)
      s_->result->cv.wait(g, ready);
    else if (!s_->result->cv.wait_for(g, *timeout, ready))
      detail::fail<TimeoutError>("the future is not done after {} s", timeout->count());
  }
  std::shared_ptr<detail::futures::State<Stored>> s_;
};

/// A view of a Future (or a Pool's AsyncResult) of any result type, for watching futures of
/// different types or executors together with futures::wait and as_completed. Copies view the
/// same call; the result itself is read through the typed Future.
class AnyFuture {
 public:
  /// Views `f`.
  template <class R>
  AnyFuture(const Future<R>& f)  // NOLINT(google-explicit-constructor): a view of `f`
      : s_(detail::futures::Access::core(f)) {}
  /// Views the AsyncResult `r` of a Pool call.
  template <class R>
  AnyFuture(const AsyncResult<R>& r)  // NOLINT(google-explicit-constructor)
      : s_(r.s_) {}
  /// True when the call finished, failed or was cancelled.
  bool done() const {
    std::lock_guard g(s_->mu);
    return s_->done;
  }
  /// True when the call was cancelled.
  bool cancelled() const {
    std::lock_guard g(s_->mu);
    if (!s_->done || !s_->error) return false;
    try {
      std::rethrow_exception(s_->error);
    } catch (const CancelledError&) {
      return true;
    } catch (...) {
      return false;
    }
  }
  //!Returns: the call's exception (nullptr if it succeeded), waiting at most `timeout`.
  //!Throws: TimeoutError if not done in time, CancelledError if cancelled.
  std::exception_ptr exception(Timeout timeout = std::nullopt) const {
    std::unique_lock g(s_->mu);
    auto ready = [&] { return s_->done; };
    if (!timeout)
      s_->cv.wait(g, ready);
    else if (!s_->cv.wait_for(g, *timeout, ready))
      detail::fail<TimeoutError>("the future is not done after {} s", timeout->count());
    g.unlock();
    if (cancelled()) std::rethrow_exception(s_->error);
    return s_->error;
  }
  /// True when both view the same call.
  friend bool operator==(const AnyFuture& a, const AnyFuture& b) noexcept { return a.s_ == b.s_; }

 private:
  friend struct detail::futures::Access;
  std::shared_ptr<detail::pool::ResultBase> core() const { return s_; }
  std::shared_ptr<detail::pool::ResultBase> s_;
};

namespace detail::futures {
template <class Fut>
std::vector<Fut> unique(std::vector<Fut> fs) {
  std::vector<Fut> out;
  for (auto& f : fs)
    if (std::find(out.begin(), out.end(), f) == out.end()) out.push_back(std::move(f));
  return out;
}
template <class Fut>
std::vector<std::shared_ptr<detail::pool::ResultBase>> cores(const std::vector<Fut>& fs) {
  std::vector<std::shared_ptr<detail::pool::ResultBase>> out;
  out.reserve(fs.size());
  for (const auto& f : fs) out.push_back(Access::core(f));
  return out;
}
}  // namespace detail::futures

/// Python's concurrent.futures module functions: wait() and as_completed().
namespace futures {

/// When futures::wait returns (Python's FIRST_COMPLETED, FIRST_EXCEPTION, ALL_COMPLETED).
enum class ReturnWhen {
  first_completed,  ///< as soon as any future is done (or cancelled)
  first_exception,  ///< as soon as any future fails (not by cancellation), else when all are done
  all_completed,    ///< when every future is done
};
/// Python's FIRST_COMPLETED.
inline constexpr ReturnWhen FIRST_COMPLETED = ReturnWhen::first_completed;
/// Python's FIRST_EXCEPTION.
inline constexpr ReturnWhen FIRST_EXCEPTION = ReturnWhen::first_exception;
/// Python's ALL_COMPLETED.
inline constexpr ReturnWhen ALL_COMPLETED = ReturnWhen::all_completed;

/// What wait() returns (Python's DoneAndNotDoneFutures): the futures done when it returned, and
/// the others, each in the order given (duplicates once).
template <class Fut>
struct DoneAndNotDone {
  std::vector<Fut> done;      ///< finished, failed or cancelled
  std::vector<Fut> not_done;  ///< still pending or running
};

//!Effects: waits until `return_when` holds for the futures `fs` (Future<R> or AnyFuture, of any
//! executors) or `timeout` passes (measured from the call); sleeps until a future completes
//! rather than polling. Returns: {done, not_done}; a timeout is not an error.
template <std::ranges::input_range Fs, class Fut = std::ranges::range_value_t<Fs>>
DoneAndNotDone<Fut> wait(const Fs& fs, Timeout timeout = std::nullopt,
                         ReturnWhen return_when = ALL_COMPLETED) {
  auto list =
      detail::futures::unique(std::vector<Fut>(std::ranges::begin(fs), std::ranges::end(fs)));
  const auto deadline = detail::futures::deadline_of(timeout);
  std::vector<std::size_t> ready;
  detail::futures::Registration reg(detail::futures::cores(list), ready);
  std::vector<bool> is_done(list.size(), false);
  std::size_t ndone = 0;
  bool failure = false;
  auto satisfied = [&] {
    switch (return_when) {
      case ReturnWhen::first_completed:
        return ndone > 0 || list.empty();
      case ReturnWhen::first_exception:
        return failure || ndone == list.size();
      case ReturnWhen::all_completed:
        break;
    }
    return ndone == list.size();
  };
  for (;;) {
    for (std::size_t i : ready) {
      if (is_done[i]) continue;
      is_done[i] = true;
      ++ndone;
      failure = failure || detail::futures::failed(reg.at(i));
    }
    if (satisfied()) break;
    ready = reg.next(deadline);
    if (ready.empty()) break;  // timed out
  }
  DoneAndNotDone<Fut> out;
  for (std::size_t i = 0; i < list.size(); ++i)
    (is_done[i] ? out.done : out.not_done).push_back(std::move(list[i]));
  return out;
}
//!Returns: wait() over futures of different result types, e.g. `wait({f1, f2}, 5.0)`.
inline DoneAndNotDone<AnyFuture> wait(std::initializer_list<AnyFuture> fs,
                                      Timeout timeout = std::nullopt,
                                      ReturnWhen return_when = ALL_COMPLETED) {
  return wait(std::vector<AnyFuture>(fs), timeout, return_when);
}

/// The input range as_completed() returns: yields each future once as it completes (those done
/// already first). Not copyable; iterate it where it was made.
template <class Fut>
class AsCompleted {
 public:
  /// Input iterator over the futures.
  class iterator {
   public:
    using value_type = Fut;                  ///< Future<R> or AnyFuture
    using difference_type = std::ptrdiff_t;  ///< required of an iterator
    /// A singular iterator.
    iterator() = default;
    /// The future that completed.
    const Fut& operator*() const { return r_->current(); }
    /// Waits for the next future to complete. Throws: TimeoutError past the deadline.
    iterator& operator++() {
      r_->advance();
      return *this;
    }
    /// Advances, as ++it.
    void operator++(int) { ++*this; }
    /// True once every future has been yielded.
    friend bool operator==(const iterator& it, std::default_sentinel_t) { return it.at_end(); }

   private:
    friend class AsCompleted;
    explicit iterator(AsCompleted* r) : r_(r) {}
    bool at_end() const { return r_->over(); }
    AsCompleted* r_ = nullptr;
  };

  /// Not copyable: it is registered on each future until destroyed.
  AsCompleted(const AsCompleted&) = delete;
  /// Not copyable.
  AsCompleted& operator=(const AsCompleted&) = delete;
  /// Moves the iteration (before it starts: iterators refer to the range they came from), so
  /// that a wrapper such as mpp::progress can keep it.
  AsCompleted(AsCompleted&&) = default;
  /// Number of distinct futures it yields.
  std::size_t size() const noexcept { return fs_.size(); }
  /// Starts the iteration (yields a future done already, or waits for one).
  iterator begin() {
    if (!started_) {
      started_ = true;
      advance();
    }
    return iterator(this);
  }
  /// End of the futures.
  std::default_sentinel_t end() const noexcept { return {}; }
  //!Effects: registers on the futures `fs` (what as_completed(fs, timeout) makes); `timeout` is
  //! measured from now.
  AsCompleted(std::vector<Fut> fs, Timeout timeout)
      : fs_(detail::futures::unique(std::move(fs))),
        deadline_(detail::futures::deadline_of(timeout)),
        reg_(detail::futures::cores(fs_), first_) {
    queue_.assign(first_.begin(), first_.end());
  }

 private:
  const Fut& current() const { return fs_[current_]; }
  bool over() const noexcept { return over_; }
  void advance() {
    while (queue_.empty()) {
      if (yielded_ == fs_.size()) {
        over_ = true;
        return;
      }
      if (deadline_ && detail::futures::Clock::now() >= *deadline_) break;
      for (std::size_t i : reg_.next(deadline_)) queue_.push_back(i);
    }
    if (queue_.empty()) {
      over_ = true;
      detail::fail<TimeoutError>("{} (of {}) futures unfinished", fs_.size() - yielded_,
                                 fs_.size());
    }
    current_ = queue_.front();
    queue_.pop_front();
    ++yielded_;
  }

  std::vector<Fut> fs_;
  std::optional<detail::futures::Clock::time_point> deadline_;
  std::vector<std::size_t> first_;  // done before the call, in the order given
  detail::futures::Registration reg_;
  std::deque<std::size_t> queue_;
  std::size_t current_ = 0, yielded_ = 0;
  bool started_ = false, over_ = false;
};

//!Returns: an input range yielding each of the futures `fs` once as it completes (Python's
//! as_completed); `timeout` is measured from this call. Iterating throws TimeoutError saying
//! "N (of M) futures unfinished" once it passes. Sleeps until a future completes, no polling.
template <std::ranges::input_range Fs, class Fut = std::ranges::range_value_t<Fs>>
AsCompleted<Fut> as_completed(const Fs& fs, Timeout timeout = std::nullopt) {
  return AsCompleted<Fut>(std::vector<Fut>(std::ranges::begin(fs), std::ranges::end(fs)), timeout);
}
//!Returns: as_completed() over futures of different result types.
inline AsCompleted<AnyFuture> as_completed(std::initializer_list<AnyFuture> fs,
                                           Timeout timeout = std::nullopt) {
  return AsCompleted<AnyFuture>(std::vector<AnyFuture>(fs), timeout);
}

}  // namespace futures
namespace detail::futures {
/// How many of `Args` (the arguments of Executor::map after the callable) are leading ranges.
template <class... Args>
constexpr std::size_t leading_ranges() {
  constexpr bool is_range[] = {std::ranges::input_range<std::remove_cvref_t<Args>>..., false};
  std::size_t n = 0;
  while (is_range[n]) ++n;
  return n;
}
}  // namespace detail::futures

/// The input range ProcessPoolExecutor::map returns (Python's generator of Executor.map): yields
/// the calls' results in order as they come. Every call is submitted when map() is called;
/// iterating raises a call's exception when it reaches that call (the results before it are
/// delivered), and TimeoutError once map's timeout (measured from the call of map) passes; the
/// calls not yet started are then cancelled, as they are when the range is destroyed early.
/// Copies share one iteration; the executor must outlive it.
template <class R>
class ExecutorMap {
  struct Impl;

 public:
  /// Input iterator over the results.
  class iterator {
   public:
    using iterator_category = std::input_iterator_tag;  ///< a single pass
    using value_type = R;                               ///< the result type
    using difference_type = std::ptrdiff_t;             ///< required of an iterator
    using pointer = const R*;                           ///< what operator-> would give
    using reference = const R&;                         ///< what operator* gives
    /// The end iterator (as end() gives).
    iterator() = default;
    /// The current result.
    const R& operator*() const { return *p_->current; }
    /// Advances (waits for the next result; throws the call's exception or TimeoutError).
    iterator& operator++() {
      p_->advance();
      return *this;
    }
    /// Advances, as ++it.
    void operator++(int) { ++*this; }
    /// True when both are at the end (every result consumed, or the iteration failed), or
    /// neither is: a common range, for algorithms such as std::accumulate.
    friend bool operator==(const iterator& a, const iterator& b) {
      return a.at_end() == b.at_end();
    }

   private:
    friend class ExecutorMap;
    explicit iterator(Impl* p) : p_(p) {}
    bool at_end() const { return p_ == nullptr || p_->over; }
    Impl* p_ = nullptr;
  };

  /// Starts the iteration (waits for the first result).
  iterator begin() const {
    if (!p_->started) {
      p_->started = true;
      p_->advance();
    }
    return iterator(p_.get());
  }
  /// End of the results.
  iterator end() const noexcept { return {}; }
  /// Number of calls (the length of the shortest input range).
  std::size_t size() const noexcept { return p_->calls; }
  /// Collects the results not yet consumed (Python's `list(executor.map(...))`).
  operator std::vector<R>() const {  // NOLINT(google-explicit-constructor)
    std::vector<R> out;
    for (auto it = begin(); it != end(); ++it) out.push_back(*it);
    return out;
  }

 private:
  friend class ProcessPoolExecutor;
  struct Impl {
    std::shared_ptr<detail::pool::IMapState<R>> st;
    std::size_t chunks = 0, calls = 0, next_chunk = 0, buf_pos = 0;
    std::optional<detail::futures::Clock::time_point> deadline;
    std::function<void()> cancel;  // removes the calls not yet started
    std::vector<R> buf;
    std::optional<R> current;
    bool started = false, over = false;

    ~Impl() {
      if (!over && cancel) cancel();
    }
    void stop() {
      over = true;
      if (cancel) cancel();
      cancel = nullptr;
    }
    void advance() {
      if (buf_pos < buf.size()) {
        current = std::move(buf[buf_pos++]);
        return;
      }
      if (next_chunk == chunks) {
        over = true;
        return;
      }
      std::unique_lock g(st->mu);
      auto here = [&] {
        return st->ready.count(next_chunk) != 0 || st->errors.count(next_chunk) != 0;
      };
      if (!deadline) {
        st->cv.wait(g, here);
      } else if (!st->cv.wait_until(g, *deadline, here)) {
        g.unlock();
        stop();
        detail::fail<TimeoutError>(
            "executor map: result {} (of {}) is not there by the deadline "
            "the timeout set",
            next_chunk, chunks);
      }
      if (auto e = st->errors.find(next_chunk); e != st->errors.end()) {
        const auto error = e->second;
        g.unlock();
        stop();
        std::rethrow_exception(error);
      }
      auto it = st->ready.find(next_chunk);
      buf = std::move(it->second);
      st->ready.erase(it);
      g.unlock();
      ++next_chunk;
      buf_pos = 0;
      advance();
    }
  };
  explicit ExecutorMap(std::shared_ptr<Impl> p) : p_(std::move(p)) {}
  std::shared_ptr<Impl> p_;
};

/// A pool of worker processes running submitted calls (Python's ProcessPoolExecutor).
///
/// A failed initializer breaks the executor, as in Python: when it throws in any worker (or a
/// worker dies while running it), the workers are stopped and none is started again, the pending
/// and running futures fail with BrokenProcessPool (its message names the initializer's
/// exception, which is nested in it), submit() and map() raise it from then on, and shutdown()
/// and the destructor return at once. One failure is enough, even if other workers initialised.
class ProcessPoolExecutor {
 public:
  //!Effects: starts `max_workers` workers (nullopt: cpu_count()).
  //!Throws: ValueError if `max_workers` < 1 (Python's "max_workers must be greater than 0").
  explicit ProcessPoolExecutor(std::optional<int> max_workers = std::nullopt)
      : ProcessPoolExecutor(ExecutorOptions{max_workers}) {}
  //!Effects: starts the workers described by `o`. Throws: ValueError for a field below 1.
  explicit ProcessPoolExecutor(const ExecutorOptions& o) : pool_(kOwner, pool_options(o)) {
    enroll();
  }
  //!Effects: starts the workers; each runs `initializer(initargs...)` first; if it fails the
  //! executor is broken (BrokenProcessPool, see the class comment).
  template <class F, class... A>
  ProcessPoolExecutor(const ExecutorOptions& o, F&& initializer, A&&... initargs)
      : pool_(kOwner, pool_options(o), std::forward<F>(initializer), std::forward<A>(initargs)...) {
    enroll();
  }
  /// Not copyable: an executor owns its worker processes.
  ProcessPoolExecutor(const ProcessPoolExecutor&) = delete;
  /// Not copyable.
  ProcessPoolExecutor& operator=(const ProcessPoolExecutor&) = delete;
  /// shutdown(wait=true), like leaving Python's `with ProcessPoolExecutor() as ex:` block. An
  /// executor still alive when the program exits (one at namespace scope, say) is shut down the
  /// same way first, before the workers of the program's children are terminated: its submitted
  /// calls finish, as Python's exit waits for an executor's work.
  ~ProcessPoolExecutor() {
    withdraw();
    try {
      shutdown(true);
    } catch (...) {
    }
  }

  //!Returns: a Future of f(args...) (Future<void> for a void `f`). An argument that cannot be
  //! encoded (its codec throws, or the call exceeds the 64 MiB task limit) fails the future with
  //! that exception, as Python puts the pickling error on the future; the executor carries on.
  //!Throws: BrokenProcessPool once the initializer failed; mpp::Error (Python's RuntimeError)
  //! "cannot schedule new futures after shutdown" after shutdown(); InvalidArgument for a
  //! callable a spawn or forkserver worker cannot find (not registered).
  template <class F, class... A,
            class R = std::invoke_result_t<const F&, const std::decay_t<A>&...>>
  Future<R> submit(F f, A&&... a) {
    detail::pool::check_callable<F>();
    check_open();
    using S = detail::pool::stored_t<R>;
    auto s = std::make_shared<detail::futures::State<S>>();
    auto [state, job] = detail::futures::submit_call<S>(
        pool_.sched_, f, std::tuple<std::decay_t<A>...>(std::forward<A>(a)...));
    s->result = std::move(state);
    s->job = std::move(job);
    s->sched = &pool_.sched_;
    return Future<R>(std::move(s));
  }

  //!Returns: a lazy range over f(x, y, ...) for x, y, ... taken together from `ranges` (Python's
  //! Executor.map(fn, *iterables, timeout, chunksize): it stops at the shortest range), in order;
  //! see ExecutorMap. Called as map(f, r1, r2, ..., timeout = nullopt, chunksize = 1): the
  //! arguments after the ranges are the timeout (from this call) and the calls per task.
  //!Throws: ValueError if chunksize < 1; as submit() after shutdown or once broken.
  template <class F, class... Args>
  auto map(F f, Args&&... args) {
    constexpr std::size_t kRanges = detail::futures::leading_ranges<Args...>();
    static_assert(kRanges >= 1 && sizeof...(Args) - kRanges <= 2,
                  "mpp::ProcessPoolExecutor::map(f, ranges..., timeout, chunksize)");
    auto all = std::forward_as_tuple(args...);
    Timeout timeout = std::nullopt;
    Chunksize chunksize = 1;
    if constexpr (sizeof...(Args) > kRanges) timeout = Timeout(std::get<kRanges>(all));
    if constexpr (sizeof...(Args) > kRanges + 1) chunksize = std::get<kRanges + 1>(all);
    return [&]<std::size_t... I>(std::index_sequence<I...>) {
      return map_ranges(f, timeout, chunksize, std::get<I>(all)...);
    }
    (std::make_index_sequence<kRanges>{});
  }

  //!Effects: no more submissions; with `wait`, returns once every pending call has finished and
  //! the workers have exited; with `cancel_futures`, the calls no worker has started are
  //! cancelled first (the started ones finish).
  void shutdown(bool wait = true, bool cancel_futures = false) {
    shutdown_ = true;
    if (cancel_futures) pool_.sched_.cancel_all_pending();
    pool_.close();
    if (wait) pool_.join();
  }

 private:
  static constexpr detail::pool::OwnerName kOwner{
      "ProcessPoolExecutor", "cannot schedule new futures after shutdown", true};

  // The executors alive in this process, which the program's exit shuts down (Python's
  // _python_exit) before mpp's exit handler terminates the children: left to that handler, a
  // running call's worker would be killed. Never destroyed: the hook may run after statics are.
  struct Live {
    std::mutex mu;
    std::vector<ProcessPoolExecutor*> executors;
    bool hooked = false;
  };
  static Live& live() {
    static Live* l = new Live;
    return *l;
  }
  // Runs at exit, before mpp's exit handler (std::atexit runs the last registered first).
  static void drain_at_exit() noexcept {
    Live& l = live();
    std::lock_guard g(l.mu);
    for (ProcessPoolExecutor* e : l.executors) {
      if (e->owner_pid_ != detail::os::current_pid()) continue;  // a forked copy: not ours
      try {
        e->shutdown(true);
      } catch (...) {  // exiting: nothing to report it to
      }
    }
  }
  void enroll() {
    Live& l = live();
    std::lock_guard g(l.mu);
    if (!l.hooked) {
      {  // installed first, so that ours runs before it
        std::lock_guard gl(detail::globals().mutex);
        detail::install_exit_handler();
      }
      std::atexit(&drain_at_exit);
      l.hooked = true;
    }
    l.executors.push_back(this);
  }
  void withdraw() noexcept {
    Live& l = live();
    std::lock_guard g(l.mu);
    std::erase(l.executors, this);
  }

  void check_open() {
    pool_.sched_.check_broken();
    if (shutdown_) detail::fail<Error>("cannot schedule new futures after shutdown");
  }

  template <class F, class... Rs>
  auto map_ranges(const F& f, const Timeout& timeout, Chunksize chunksize_arg, const Rs&... rs) {
    using Tuple = std::tuple<std::ranges::range_value_t<Rs>...>;
    using R = std::invoke_result_t<const F&, const std::ranges::range_value_t<Rs>&...>;
    static_assert(!std::is_void_v<R>,
                  "mpp::ProcessPoolExecutor::map of a void function: use "
                  "submit");
    detail::pool::check_callable<F>();
    using Impl = typename ExecutorMap<R>::Impl;
    auto p = std::make_shared<Impl>();
    p->deadline = detail::futures::deadline_of(timeout);
    const std::size_t chunksize = detail::pool::chunksize_or(chunksize_arg, 1);
    check_open();
    std::vector<Tuple> items;
    {
      auto its = std::make_tuple(std::ranges::begin(rs)...);
      auto ends = std::make_tuple(std::ranges::end(rs)...);
      auto any_end = [&]<std::size_t... I>(std::index_sequence<I...>) {
        return ((std::get<I>(its) == std::get<I>(ends)) || ...);
      };
      auto take = [&]<std::size_t... I>(std::index_sequence<I...>) {
        items.emplace_back(*std::get<I>(its)...);
        (++std::get<I>(its), ...);
      };
      while (!any_end(std::index_sequence_for<Rs...>{})) take(std::index_sequence_for<Rs...>{});
    }
    p->calls = items.size();
    std::vector<std::string> chunks;
    for (std::size_t b = 0; b < items.size(); b += chunksize) {
      const auto first = items.begin() + static_cast<std::ptrdiff_t>(b);
      const auto last =
          items.begin() + static_cast<std::ptrdiff_t>(std::min(items.size(), b + chunksize));
      chunks.push_back(detail::pool::to_wire(
          std::vector<Tuple>(std::make_move_iterator(first), std::make_move_iterator(last))));
    }
    p->chunks = chunks.size();
    p->st = std::make_shared<detail::pool::IMapState<R>>();
    if (!chunks.empty()) {
      const auto id = detail::pool::Registered<&detail::pool::run_star_chunk<F, Tuple>>::id;
      pool_.sched_.enqueue(p->st, id, pool_.sched_.wire(f), std::move(chunks));
      std::weak_ptr<void> alive = alive_;
      p->cancel = [alive, sched = &pool_.sched_, job = p->st.get()] {
        if (auto a = alive.lock()) (void)sched->cancel_pending(job);
      };
    }
    return ExecutorMap<R>(std::move(p));
  }

  static PoolOptions pool_options(const ExecutorOptions& o) {
    if (o.max_workers && *o.max_workers < 1)
      detail::fail<ValueError>("max_workers must be greater than 0, not {}", *o.max_workers);
    if (o.max_tasks_per_child && *o.max_tasks_per_child < 1)
      detail::fail<ValueError>("max_tasks_per_child must be >= 1, not {}", *o.max_tasks_per_child);
    PoolOptions p;
    p.processes = o.max_workers;
    p.maxtasksperchild = o.max_tasks_per_child;
    p.task_timeout = o.task_timeout;
    p.retries = o.retries;
    p.start_method = o.start_method;
    return p;
  }
  Pool pool_;
  std::atomic<bool> shutdown_{false};
  detail::os::pid_type owner_pid_ = detail::os::current_pid();
  // Expires with the executor: an ExecutorMap that outlives it no longer cancels through it.
  std::shared_ptr<int> alive_ = std::make_shared<int>(0);
};

}  // namespace mpp
