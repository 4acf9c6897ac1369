// mpp — Pool internals: the jobs behind each kind of call (apply, map in chunks, map of raw
// items, imap) and the functions that split a call into tasks for the Scheduler.
#pragma once

#include <algorithm>
#include <condition_variable>
#include <cstddef>
#include <cstring>
#include <deque>
#include <exception>
#include <functional>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <ranges>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "../../errors.hpp"
#include "invoke.hpp"
#include "result.hpp"
#include "scheduler.hpp"

namespace mpp::detail::pool {

/// Python's default chunksize: len / (4 * workers) rounded up, at least 1.
inline std::size_t default_chunksize(std::size_t items, std::size_t workers) {
  const std::size_t parts = 4 * workers;
  const std::size_t c = items / parts + (items % parts != 0 ? 1 : 0);
  return c == 0 ? 1 : c;
}

/// A result state with its callbacks set.
template <class R>
std::shared_ptr<ResultState<R>> make_state(std::function<void(const R&)> cb,
                                           std::function<void(std::exception_ptr)> ecb) {
  auto state = std::make_shared<ResultState<R>>();
  state->callback = std::move(cb);
  state->error_callback = std::move(ecb);
  return state;
}

/// apply: one task, its result decoded (Unit for a void function).
template <class R, class Void>
struct ApplyJob final : Job {
  std::shared_ptr<ResultState<R>> s;
  void deliver(std::size_t, std::string_view p) override {
    std::optional<R> v;
    std::exception_ptr e;
    try {
      if constexpr (std::is_same_v<R, Void>)
        v = Void{};
      else
        v = from_wire<R>(p);
    } catch (...) {
      e = std::current_exception();
    }
    s->finish(std::move(v), e);
  }
  void fail_chunk(std::size_t, std::exception_ptr e) override { s->finish(std::nullopt, e); }
};

/// What a map of results `R` completes with: the results, or Unit for a void function (R = Unit).
template <class R>
using map_out_t = std::conditional_t<std::is_same_v<R, Unit>, Unit, std::vector<R>>;

/// map / starmap: encoded chunks, concatenated in order once all are in (for a void function the
/// chunks carry nothing: the map is done when every chunk succeeded).
template <class R>
struct MapJob final : Job {
  static constexpr bool kVoid = std::is_same_v<R, Unit>;
  std::shared_ptr<ResultState<map_out_t<R>>> s;
  std::vector<std::vector<R>> parts;
  std::size_t left = 0;
  bool failed = false;
  void deliver(std::size_t i, std::string_view p) override {
    if (failed) return;
    if constexpr (!kVoid) {
      try {
        parts.at(i) = from_wire<std::vector<R>>(p);
      } catch (...) {
        return fail_chunk(i, std::current_exception());
      }
    }
    if (--left == 0) {
      if constexpr (kVoid) {
        s->finish(Unit{}, nullptr);
      } else {
        std::vector<R> all;
        for (auto& part : parts) std::move(part.begin(), part.end(), std::back_inserter(all));
        s->finish(std::move(all), nullptr);
      }
    }
  }
  void fail_chunk(std::size_t, std::exception_ptr e) override {
    failed = true;  // Python's map reports the first failure
    s->finish(std::nullopt, e);
  }
};

/// map of raw items: each chunk's result bytes are copied straight into the output vector.
template <class R>
struct RawMapJob final : Job {
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
      return fail_chunk(
          i, std::make_exception_ptr(CorruptedError(fmt::format(
                 "pool map chunk {}: {} result bytes, {} expected", i, p.size(), n * sizeof(R)))));
    std::memcpy(static_cast<void*>(all.data() + b), p.data(), p.size());
    if (--left == 0) s->finish(std::move(all), nullptr);
  }
  void fail_chunk(std::size_t, std::exception_ptr e) override {
    failed = true;  // Python's map reports the first failure
    s->finish(std::nullopt, e);
  }
};

/// imap / imap_unordered: chunk results kept until the iterator consumes them.
template <class R>
struct IMapState final : Job {
  std::mutex mu;
  std::condition_variable cv;
  std::map<std::size_t, std::vector<R>> ready;  // chunk index -> results
  std::deque<std::vector<R>> unordered;
  std::map<std::size_t, std::exception_ptr> errors;  // chunk index -> its exception
  bool ordered = true;
  void deliver(std::size_t i, std::string_view p) override {
    std::vector<R> v;
    try {
      v = from_wire<std::vector<R>>(p);
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

/// Submits f(values...) as one task. Returns: its result state and job (for cancellation).
template <class R, class Void, class F, class Tuple>
std::pair<std::shared_ptr<ResultState<R>>, std::shared_ptr<Job>> submit_apply(
    Scheduler& sched, const F& f, const Tuple& values, std::function<void(const R&)> callback,
    std::function<void(std::exception_ptr)> error_callback) {
  auto state = make_state<R>(std::move(callback), std::move(error_callback));
  auto job = std::make_shared<ApplyJob<R, Void>>();
  job->s = state;
  const auto id = Registered<&run_apply<F, Tuple>>::id;
  sched.enqueue(job, id, sched.wire(f), {to_wire(values)});
  return {state, job};
}

/// Submits `items` in encoded chunks of `chunksize` (0: default_chunksize) to `invoker`.
template <class R, class T>
std::shared_ptr<ResultState<map_out_t<R>>> submit_chunks(
    Scheduler& sched, std::uint32_t invoker, std::string fn, std::vector<T> items,
    std::size_t chunksize, std::function<void(const map_out_t<R>&)> cb,
    std::function<void(std::exception_ptr)> ecb) {
  if (chunksize == 0) chunksize = default_chunksize(items.size(), sched.processes());
  auto state = make_state<map_out_t<R>>(std::move(cb), std::move(ecb));
  auto job = std::make_shared<MapJob<R>>();
  job->s = state;
  std::vector<std::string> chunks;
  for (std::size_t b = 0; b < items.size(); b += chunksize) {
    const auto begin = items.begin() + static_cast<std::ptrdiff_t>(b);
    const auto end =
        items.begin() + static_cast<std::ptrdiff_t>(std::min(items.size(), b + chunksize));
    chunks.push_back(
        to_wire(std::vector<T>(std::make_move_iterator(begin), std::make_move_iterator(end))));
  }
  if constexpr (!MapJob<R>::kVoid) job->parts.resize(chunks.size());
  job->left = chunks.size();
  if (chunks.empty()) {
    state->finish(map_out_t<R>{}, nullptr);
    return state;
  }
  sched.enqueue(job, invoker, std::move(fn), std::move(chunks));
  return state;
}

/// The input of map_async over raw items: one copy of `range`, owned by the tasks.
template <class A, class Range>
std::shared_ptr<RawSource> copy_raw_source(const Range& range, std::size_t& count) {
  auto src = std::make_shared<RawSource>();
  count = 0;
  if constexpr (std::ranges::contiguous_range<const Range&> &&
                std::ranges::sized_range<const Range&>) {
    count = std::ranges::size(range);
    src->owned.resize(count * sizeof(A));
    if (count != 0)
      std::memcpy(src->owned.data(), static_cast<const void*>(std::ranges::data(range)),
                  count * sizeof(A));
  } else {
    for (const A& a : range) {
      if (src->owned.size() < (count + 1) * sizeof(A))
        src->owned.resize(std::max<std::size_t>(64, 2 * src->owned.size()));
      std::memcpy(src->owned.data() + count * sizeof(A), static_cast<const void*>(&a), sizeof(A));
      ++count;
    }
  }
  src->data = src->owned.data();
  return src;
}

/// Submits a map of `count` raw items of `src`: chunks are the items' bytes, results are written
/// straight into the output vector.
template <class R, class A>
std::shared_ptr<ResultState<std::vector<R>>> submit_raw(
    Scheduler& sched, std::uint32_t invoker, std::string fn, std::shared_ptr<RawSource> src,
    std::size_t count, std::size_t chunksize, std::function<void(const std::vector<R>&)> cb,
    std::function<void(std::exception_ptr)> ecb) {
  if (chunksize == 0) chunksize = default_chunksize(count, sched.processes());
  auto state = make_state<std::vector<R>>(std::move(cb), std::move(ecb));
  auto job = std::make_shared<RawMapJob<R>>();
  job->s = state;
  job->chunksize = chunksize;
  if (count == 0) {
    state->finish(std::vector<R>{}, nullptr);
    return state;
  }
  job->left = count / chunksize + (count % chunksize != 0 ? 1 : 0);
  // The workers start on the first chunks while this thread allocates the output.
  std::unique_lock sizing(job->sizing);
  RawSource* source = src.get();
  sched.enqueue_raw(job, invoker, std::move(fn), std::move(src), count, chunksize, sizeof(A),
                    sizeof(R));
  try {
    // Allocate the output's pages in one call rather than a fault per page.
    job->all.reserve(count);
    if (count * sizeof(R) >= kWarmStep) {
      os::discard_private(job->all.data(), count * sizeof(R));
      (void)os::populate_write(job->all.data(), count * sizeof(R));
    }
    job->all.resize(count);
  } catch (...) {  // out of memory: the chunks fail (no room for them); stop reading the input
    sched.release_source(*source);
    throw;
  }
  return state;
}

}  // namespace mpp::detail::pool
