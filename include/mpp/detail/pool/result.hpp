// mpp — Pool internals: a submitted unit of work as the supervisor sees it (Job), and the shared
// state behind an AsyncResult or a Future (ResultState).
#pragma once

#include <condition_variable>
#include <cstddef>
#include <exception>
#include <functional>
#include <mutex>
#include <optional>
#include <string_view>
#include <utility>
#include <vector>

namespace mpp::detail::pool {

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

}  // namespace mpp::detail::pool
