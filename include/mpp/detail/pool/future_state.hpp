// mpp — Pool internals: the shared state of a Future (its result, and what cancel() and
// running() ask the scheduler about).
#pragma once

#include <atomic>
#include <memory>

#include "result.hpp"
#include "scheduler.hpp"

namespace mpp::detail::futures {

/// What a Future and its copies share.
template <class R>
struct State {
  std::shared_ptr<pool::ResultState<R>> result;
  std::shared_ptr<pool::Job> job;
  // Valid while the executor lives (futures that outlive it are done).
  pool::Scheduler* sched = nullptr;
  std::atomic<bool> cancelled{false};
};

}  // namespace mpp::detail::futures
