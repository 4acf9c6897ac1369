// mpp — a progress display for long work: items done / total, rate and ETA on stderr, redrawn in
// place on a terminal and written as plain lines (at most one per interval) otherwise; what
// Python users get by wrapping imap_unordered in tqdm, without a dependency:
//
//   for (int r : mpp::progress(pool.imap_unordered(f, xs), xs.size())) use(r);
//
// It wraps any input range (Pool::imap / imap_unordered, ProcessPoolExecutor::map,
// futures::as_completed, a plain container) and counts an item as done when the loop moves past
// it; mpp::Progress is the counter itself, for work counted by hand.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdio>
#include <iterator>
#include <optional>
#include <ranges>
#include <string>
#include <type_traits>
#include <utility>

#include <fmt/core.h>

#include "detail/os.hpp"

namespace mpp {

/// How a progress display looks and where it goes.
struct ProgressOptions {
  std::string desc;            ///< printed before the counts, as "desc: " (empty: nothing)
  bool enabled = true;         ///< false: the display writes nothing
  std::FILE* stream = stderr;  ///< where the display goes
  std::optional<bool>
      terminal;  ///< redraw in place with a carriage return (nullopt: when `stream` is a terminal)
  /// Least seconds between two redraws (nullopt: 0.1 on a terminal, 10 for plain lines). The
  /// first and the last state are always shown.
  std::optional<double> interval;
};

namespace detail::progress {
/// `secs` as m:ss, or h:mm:ss from an hour on.
inline std::string clock(double secs) {
  const auto s = static_cast<long long>(std::max(0.0, secs) + 0.5);
  if (s >= 3600) return fmt::format("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60);
  return fmt::format("{}:{:02}", s / 60, s % 60);
}
/// A rate of `per_sec` items a second: "12.5 it/s", or "4.00 s/it" when slower than one.
inline std::string rate(double per_sec) {
  if (per_sec <= 0) return "? it/s";
  if (per_sec < 1) return fmt::format("{:.2f} s/it", 1 / per_sec);
  return fmt::format("{:.1f} it/s", per_sec);
}
}  // namespace detail::progress

/// A progress display: a count of items done out of an optional total, shown with the rate and
/// the estimated time left (items done / total [percent] rate, elapsed, ETA). Not thread-safe:
/// update it from one thread.
class Progress {
 public:
  using Clock = std::chrono::steady_clock;  ///< the clock of rates and intervals

  //!Effects: shows the display at 0 (unless disabled); `total` nullopt: unknown (no percentage
  //! or ETA).
  explicit Progress(std::optional<std::size_t> total = std::nullopt, ProgressOptions o = {})
      : o_(std::move(o)), total_(total), start_(Clock::now()), last_(start_) {
    if (!o_.enabled || o_.stream == nullptr) {
      closed_ = true;
      return;
    }
    tty_ = o_.terminal ? *o_.terminal : detail::os::is_terminal(o_.stream);
    interval_ = o_.interval ? std::max(0.0, *o_.interval) : (tty_ ? 0.1 : 10.0);
    draw(start_);
  }
  /// Not copyable: one display.
  Progress(const Progress&) = delete;
  /// Not copyable.
  Progress& operator=(const Progress&) = delete;
  /// Shows the final state (close()).
  ~Progress() { close(); }

  //!Effects: counts `n` more items done; redraws if the interval has passed since the last.
  void update(std::size_t n = 1) {
    done_ += n;
    if (closed_) return;
    const auto now = Clock::now();
    if (std::chrono::duration<double>(now - last_).count() >= interval_) draw(now);
  }
  //!Effects: shows the final state unless shown already (on a terminal, ends its line); later
  //! updates only count.
  void close() {
    if (closed_) return;
    closed_ = true;
    if (done_ != drawn_) draw(Clock::now());  // the last state, unless shown already
    if (tty_) {
      std::fputc('\n', o_.stream);
      std::fflush(o_.stream);
    }
  }
  /// Items counted so far.
  std::size_t count() const noexcept { return done_; }
  /// The total given (nullopt: unknown).
  std::optional<std::size_t> total() const noexcept { return total_; }
  //!Returns: the display's text for the current state (what the next redraw shows).
  std::string text() const { return line(Clock::now()); }

 private:
  std::string line(Clock::time_point now) const {
    const double elapsed = std::chrono::duration<double>(now - start_).count();
    const double per_sec = elapsed > 0 ? static_cast<double>(done_) / elapsed : 0.0;
    std::string out = o_.desc.empty() ? std::string() : o_.desc + ": ";
    if (total_) {
      const double frac =
          *total_ == 0 ? 1.0
                       : std::min(1.0, static_cast<double>(done_) / static_cast<double>(*total_));
      out += fmt::format("{}/{} [{:3.0f}%] {}, {} elapsed", done_, *total_, 100 * frac,
                         detail::progress::rate(per_sec), detail::progress::clock(elapsed));
      if (done_ < *total_)
        out +=
            per_sec > 0
                ? ", ETA " + detail::progress::clock(static_cast<double>(*total_ - done_) / per_sec)
                : std::string(", ETA ?");
    } else {
      out += fmt::format("{} [{}, {} elapsed]", done_, detail::progress::rate(per_sec),
                         detail::progress::clock(elapsed));
    }
    return out;
  }
  void draw(Clock::time_point now) {
    last_ = now;
    drawn_ = done_;
    std::string text = line(now);
    if (tty_) {
      // Spaces over what is left of a longer previous line; no escape codes (plain consoles).
      const std::size_t width = text.size();
      if (width < width_) text.append(width_ - width, ' ');
      width_ = width;
      fmt::print(o_.stream, "\r{}", text);
    } else {
      fmt::print(o_.stream, "{}\n", text);
    }
    std::fflush(o_.stream);
  }

  ProgressOptions o_;
  std::optional<std::size_t> total_;
  Clock::time_point start_, last_;
  std::size_t done_ = 0, drawn_ = 0, width_ = 0;
  double interval_ = 0;
  bool tty_ = false, closed_ = false;
};

/// The range progress() returns: the items of the wrapped range, counted on a Progress as the
/// loop moves past each; the display closes when the range ends or this is destroyed (a loop
/// left early, or by an exception, shows how far it got). Iterate it once.
template <class Range>
class ProgressRange {
  using Inner = std::ranges::iterator_t<Range>;
  using InnerEnd = std::ranges::sentinel_t<Range>;

 public:
  /// The end of the items.
  struct sentinel {
    InnerEnd end;  ///< the wrapped range's end
  };
  /// Input iterator over the items.
  class iterator {
   public:
    using value_type = std::ranges::range_value_t<Range>;  ///< the wrapped range's
    using difference_type = std::ptrdiff_t;                ///< required of an iterator
    /// A singular iterator.
    iterator() = default;
    /// The current item.
    decltype(auto) operator*() const { return *it_; }
    /// Counts the current item done and moves to the next (which may wait for it).
    iterator& operator++() {
      p_->update(1);
      ++it_;
      return *this;
    }
    /// Advances, as ++it.
    void operator++(int) { ++*this; }
    /// True at the end of the items (the display then shows its final state).
    friend bool operator==(const iterator& it, const sentinel& s) {
      const bool end = it.it_ == s.end;
      if (end) it.p_->close();
      return end;
    }

   private:
    friend class ProgressRange;
    iterator(Inner it, Progress* p) : it_(std::move(it)), p_(p) {}
    Inner it_{};
    Progress* p_ = nullptr;
  };

  //!Effects: wraps `r` (moved in, or referred to when `Range` is an lvalue reference); the display
  //! appears when begin() is first called.
  ProgressRange(Range&& r, std::optional<std::size_t> total, ProgressOptions o)
      : r_(std::forward<Range>(r)), total_(total), o_(std::move(o)) {}

  /// Shows the display and starts the iteration (which may wait for the first item).
  iterator begin() {
    if (!p_) p_.emplace(total_, o_);
    return iterator(std::ranges::begin(r_), &*p_);
  }
  /// The end of the items.
  sentinel end() { return {std::ranges::end(r_)}; }
  /// The display (items counted so far), once begin() was called.
  const std::optional<Progress>& display() const noexcept { return p_; }

 private:
  Range r_;
  std::optional<std::size_t> total_;
  ProgressOptions o_;
  std::optional<Progress> p_;
};

//!Returns: `range` with a progress display (on stderr unless `o.stream` says otherwise):
//! `for (auto& r : mpp::progress(pool.imap_unordered(f, xs), xs.size()))`. `total` nullopt:
//! the range's size when it has one, else unknown. A temporary range is kept by the result, a
//! named one referred to.
template <std::ranges::input_range Range>
ProgressRange<Range> progress(Range&& range, std::optional<std::size_t> total = std::nullopt,
                              ProgressOptions o = {}) {
  if (!total) {
    if constexpr (std::ranges::sized_range<Range>)
      total = static_cast<std::size_t>(std::ranges::size(range));
  }
  return ProgressRange<Range>(std::forward<Range>(range), total, std::move(o));
}

}  // namespace mpp
