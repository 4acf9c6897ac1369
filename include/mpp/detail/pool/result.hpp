// mpp — Pool internals: a submitted unit of work as the supervisor sees it (Job), and the shared
// state behind an AsyncResult or a Future (ResultState), with the waiters of futures::wait and
// as_completed that its completion wakes.
#pragma once

#include <algorithm>
#include <condition_variable>
#include <cstddef>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string_view>
#include <utility>
#include <vector>

namespace mpp::detail::pool {

/// The result type that stands for a void function's result inside the pool (Python's None).
struct Unit {};

/// A submitted unit of work (map chunk, apply call) seen by the supervisor.
struct Job {
  virtual ~Job() = default;
  /// Delivers chunk `index`'s result bytes. Runs in the supervisor thread.
  virtual void deliver(std::size_t index, std::string_view payload) = 0;
  /// Fails chunk `index`. Runs in the supervisor thread.
  virtual void fail_chunk(std::size_t index, std::exception_ptr e) = 0;
};

/// What futures::wait or as_completed sleeps on: the results it watches push their index into
/// `finished` when they complete (Python's _Waiter).
struct Waiter {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::size_t> finished;  ///< indices completed and not yet taken by the waiter
  //!Effects: records that the result numbered `index` completed and wakes the waiter.
  void notify(std::size_t index) {
    {
      std::lock_guard g(mu);
      finished.push_back(index);
    }
    cv.notify_all();
  }
};

/// The part of a result's state that does not depend on its type: completion, the exception,
/// and who to tell (a Future viewed as an AnyFuture sees only this).
struct ResultBase {
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  bool finishing = false;
  std::exception_ptr error;
  std::vector<std::function<void()>> on_done;  ///< run after completion (Future callbacks)
  std::vector<std::pair<std::shared_ptr<Waiter>, std::size_t>> waiters;  ///< woken on completion

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
  //!Effects: has `w` told `index` when the result completes. Returns: false (and registers
  //! nothing) if it already has.
  bool add_waiter(const std::shared_ptr<Waiter>& w, std::size_t index) {
    std::lock_guard g(mu);
    if (done) return false;
    waiters.emplace_back(w, index);
    return true;
  }
  //!Effects: forgets `w` (the wait is over).
  void remove_waiter(const Waiter* w) {
    std::lock_guard g(mu);
    std::erase_if(waiters, [&](const auto& p) { return p.first.get() == w; });
  }

 protected:
  //!Effects: marks the result done (the value, if any, is set by the caller under `mu`), wakes
  //! the threads and waiters, then runs the on_done functions.
  template <class SetValue>
  void complete(std::exception_ptr e, SetValue&& set_value) {
    std::vector<std::function<void()>> after;
    {
      std::lock_guard g(mu);
      set_value();
      error = e;
      done = true;
      after.swap(on_done);
      // Under `mu`, so a waiter either registered before this (and is told) or sees done.
      for (auto& [w, index] : waiters) w->notify(index);
      waiters.clear();
    }
    cv.notify_all();
    for (auto& f : after) {
      try {
        f();
      } catch (...) {
      }
    }
  }
};

/// Shared state of an AsyncResult or a Future.
template <class R>
struct ResultState : ResultBase {
  std::optional<R> value;
  std::function<void(const R&)> callback;
  std::function<void(std::exception_ptr)> error_callback;

  //!Effects: completes the result (once): runs the callback, then wakes waiters, then runs the
  //! on_done functions.
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
    complete(e, [&] { value = std::move(v); });
  }
};

}  // namespace mpp::detail::pool
