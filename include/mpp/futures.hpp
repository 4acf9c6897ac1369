// mpp — ProcessPoolExecutor and Future (Python's concurrent.futures), on top of mpp::Pool: the same
// workers, queues and lost-worker handling (a killed worker fails its future with WorkerLostError
// instead of breaking the whole executor as Python's BrokenProcessPool does). A failed
// initializer does break it, as in Python: see ProcessPoolExecutor.
#pragma once

#include <chrono>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <ranges>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "errors.hpp"
#include "pool.hpp"
#include "timeout.hpp"
#include "detail/pool/future_state.hpp"

namespace mpp {

/// Options of a ProcessPoolExecutor (Python's max_workers and max_tasks_per_child).
struct ExecutorOptions {
  int max_workers = 0;               ///< <= 0: cpu_count()
  unsigned max_tasks_per_child = 0;  ///< a worker is replaced after this many tasks (0: never)
  Timeout task_timeout{};            ///< per call: the worker is killed and the future fails
  unsigned retries = 0;              ///< re-runs of a call whose worker died
  /// How workers start (Python's mp_context=get_context(method)); nullopt: get_start_method().
  /// spawn and forkserver run registered functions only (see PoolOptions::start_method).
  std::optional<StartMethod> start_method{};
};

class ProcessPoolExecutor;

/// The eventual result of a submitted call (Python's concurrent.futures.Future).
template <class R>
class Future {
 public:
  //!Returns: the call's result, waiting at most `timeout` (nullopt: forever).
  //!Throws: TimeoutError if not done in time, CancelledError if cancelled, else the call's
  //! exception (RemoteError, WorkerLostError, TimeoutError of a task timeout, std:: types).
  R result(Timeout timeout = std::nullopt) const {
    wait_done(timeout);
    std::lock_guard g(s_->result->mu);
    if (s_->result->error) std::rethrow_exception(s_->result->error);
    return *s_->result->value;
  }
  //!Returns: the call's exception (nullptr if it succeeded), waiting at most `timeout`.
  //!Throws: TimeoutError, CancelledError.
  std::exception_ptr exception(Timeout timeout = std::nullopt) const {
    wait_done(timeout);
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

 private:
  friend class ProcessPoolExecutor;
  explicit Future(std::shared_ptr<detail::futures::State<R>> s) : s_(std::move(s)) {}
  void wait_done(const Timeout& timeout) const {
    std::unique_lock g(s_->result->mu);
    auto ready = [&] { return s_->result->done; };
    if (!timeout)
      s_->result->cv.wait(g, ready);
    else if (!s_->result->cv.wait_for(g, *timeout, ready))
      detail::fail<TimeoutError>("the future is not done after {} s", timeout->count());
  }
  std::shared_ptr<detail::futures::State<R>> s_;
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
  //!Effects: starts `max_workers` workers (<= 0: cpu_count()).
  explicit ProcessPoolExecutor(int max_workers = 0)
      : ProcessPoolExecutor(ExecutorOptions{max_workers}) {}
  //!Effects: starts the workers described by `o`.
  explicit ProcessPoolExecutor(const ExecutorOptions& o) : pool_(pool_options(o)) {}
  //!Effects: starts the workers; each runs `initializer(initargs...)` first; if it fails the
  //! executor is broken (BrokenProcessPool, see the class comment).
  template <class F, class... A>
  ProcessPoolExecutor(const ExecutorOptions& o, F&& initializer, A&&... initargs)
      : pool_(pool_options(o), std::forward<F>(initializer), std::forward<A>(initargs)...) {}
  /// Not copyable: an executor owns its worker processes.
  ProcessPoolExecutor(const ProcessPoolExecutor&) = delete;
  /// Not copyable.
  ProcessPoolExecutor& operator=(const ProcessPoolExecutor&) = delete;
  /// shutdown(wait=true), like leaving Python's `with ProcessPoolExecutor() as ex:` block.
  ~ProcessPoolExecutor() {
    try {
      shutdown(true);
    } catch (...) {
    }
  }

  //!Returns: a Future of f(args...). Throws: BrokenProcessPool once the initializer failed,
  //! ValueError after shutdown().
  template <class F, class... A,
            class R0 = std::invoke_result_t<const F&, const std::decay_t<A>&...>,
            class R = std::conditional_t<std::is_void_v<R0>, Unit, R0>>
  Future<R> submit(F f, A&&... a) {
    detail::pool::check_callable<F>();
    auto s = std::make_shared<detail::futures::State<R>>();
    auto [state, job] = detail::pool::submit_apply<R, Unit>(
        pool_.sched_, f, std::tuple<std::decay_t<A>...>(std::forward<A>(a)...), {}, {});
    s->result = std::move(state);
    s->job = std::move(job);
    s->sched = &pool_.sched_;
    return Future<R>(std::move(s));
  }

  //!Returns: [f(x) for x in range] (Python's Executor.map, collected), in chunks of `chunksize`.
  //!Throws: TimeoutError if the results are not all there `timeout` after the call; the first
  //! call's exception otherwise.
  template <class F, class Range>
  auto map(F f, const Range& range, Timeout timeout = std::nullopt, std::size_t chunksize = 1) {
    return pool_.map_async(f, range, chunksize).get(timeout);
  }

  //!Effects: no more submissions; with `wait`, returns once every pending call has finished and
  //! the workers have exited; with `cancel_futures`, calls not yet started are cancelled first.
  void shutdown(bool wait = true, bool cancel_futures = false) {
    if (cancel_futures) pool_.sched_.cancel_all_pending();
    pool_.close();
    if (wait) pool_.join();
  }

 private:
  static PoolOptions pool_options(const ExecutorOptions& o) {
    PoolOptions p;
    p.processes = o.max_workers;
    p.maxtasksperchild = o.max_tasks_per_child;
    p.task_timeout = o.task_timeout;
    p.retries = o.retries;
    p.start_method = o.start_method;
    return p;
  }
  Pool pool_;
};

}  // namespace mpp
