// mpp — Pool internals: the shared state of a Future (its result, and what cancel() and
// running() ask the scheduler about), and the waiting behind futures::wait and as_completed.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "../../errors.hpp"
#include "../../timeout.hpp"
#include "invoke.hpp"
#include "jobs.hpp"
#include "result.hpp"
#include "scheduler.hpp"
#include "worker.hpp"

namespace mpp::detail::futures {

/// What a Future and its copies share.
template <class S>
struct State {
  std::shared_ptr<pool::ResultState<S>> result;
  std::shared_ptr<pool::Job> job;
  // Valid while the executor lives (futures that outlive it are done).
  pool::Scheduler* sched = nullptr;
  std::atomic<bool> cancelled{false};
};

/// Submits f(values...) as one task (Unit for a void function). An argument that cannot be
/// encoded, or whose task would exceed the message limit, fails the returned state instead of
/// the call (Python puts the pickling error on the future); the executor carries on.
/// Returns: the result state and the job (for cancellation).
template <class R, class F, class Tuple>
std::pair<std::shared_ptr<pool::ResultState<R>>, std::shared_ptr<pool::Job>> submit_call(
    pool::Scheduler& sched, const F& f, const Tuple& values,
    std::function<void(const R&)> callback = {},
    std::function<void(std::exception_ptr)> error_callback = {}) {
  auto state = pool::make_state<R>(std::move(callback), std::move(error_callback));
  auto job = std::make_shared<pool::ApplyJob<R, pool::Unit>>();
  job->s = state;
  std::string fn = sched.wire(f);  // an unregistered function is refused here, at once
  std::string args;
  try {
    args = pool::to_wire(values);
    if (args.size() + fn.size() + sizeof(pool::TaskHeader) > pool::kMaxMessage)
      fail<ValueError>(
          "the arguments of this call are {} bytes encoded; a task is limited to {}: pass the "
          "data through shared memory (mpp::SharedMemory) or a file instead",
          args.size(), pool::kMaxMessage);
  } catch (...) {
    state->finish(std::nullopt, std::current_exception());
    return {state, job};
  }
  const auto id = pool::Registered<&pool::run_apply<F, Tuple>>::id;
  sched.enqueue(job, id, std::move(fn), {std::move(args)});
  return {state, job};
}

/// The untyped result state behind a Future, an AnyFuture or an AsyncResult (see Access).
struct Access;

using Clock = std::chrono::steady_clock;

/// The moment `timeout` after now (nullopt: never).
inline std::optional<Clock::time_point> deadline_of(const Timeout& timeout) {
  if (!timeout) return std::nullopt;
  // Clamped so that a huge timeout does not overflow the clock.
  const double secs = std::min(timeout->count(), 1e9);
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(
                            std::chrono::duration<double>(std::max(secs, 0.0)));
}

/// True when `r` (done) failed with an exception other than cancellation.
inline bool failed(pool::ResultBase& r) {
  std::lock_guard g(r.mu);
  if (!r.done || !r.error) return false;
  try {
    std::rethrow_exception(r.error);
  } catch (const CancelledError&) {
    return false;
  } catch (...) {
    return true;
  }
}

/// A Waiter registered on a set of results, removed again when the wait ends.
class Registration {
 public:
  //!Effects: registers on each of `rs`; `already` receives the indices of those done before.
  Registration(std::vector<std::shared_ptr<pool::ResultBase>> rs, std::vector<std::size_t>& already)
      : rs_(std::move(rs)), w_(std::make_shared<pool::Waiter>()) {
    for (std::size_t i = 0; i < rs_.size(); ++i)
      if (!rs_[i]->add_waiter(w_, i)) already.push_back(i);
  }
  Registration(const Registration&) = delete;
  Registration& operator=(const Registration&) = delete;
  //!Effects: takes over `o`'s registration (the results keep telling the same Waiter).
  Registration(Registration&& o) noexcept : rs_(std::exchange(o.rs_, {})), w_(std::move(o.w_)) {}
  Registration& operator=(Registration&&) = delete;
  ~Registration() {
    for (auto& r : rs_) r->remove_waiter(w_.get());
  }
  //!Effects: sleeps until some result completes or `deadline` passes.
  //!Returns: the indices of the results completed since the last call (empty: timed out).
  std::vector<std::size_t> next(const std::optional<Clock::time_point>& deadline) {
    std::unique_lock g(w_->mu);
    auto any = [&] { return !w_->finished.empty(); };
    if (!deadline)
      w_->cv.wait(g, any);
    else
      (void)w_->cv.wait_until(g, *deadline, any);
    std::vector<std::size_t> out;
    out.swap(w_->finished);
    return out;
  }
  /// The result numbered `i`.
  pool::ResultBase& at(std::size_t i) const { return *rs_[i]; }
  /// How many results it watches.
  std::size_t size() const noexcept { return rs_.size(); }

 private:
  std::vector<std::shared_ptr<pool::ResultBase>> rs_;
  std::shared_ptr<pool::Waiter> w_;
};

}  // namespace mpp::detail::futures
