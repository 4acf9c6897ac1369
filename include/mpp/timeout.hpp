// mpp — Timeout: how long a blocking call may wait, written as Python writes it.
#pragma once

#include "detail/config.hpp"

#include <chrono>
#include <optional>
#include <type_traits>

namespace mpp {

/// How long a blocking call may wait, as Python's `timeout=` argument: seconds (`get(0.1)`,
/// `join(2.5)`), any `std::chrono` duration (`get(100ms)`), or nothing (the default,
/// `std::nullopt`): wait without a time limit — though never on a dead peer, which every blocking
/// call detects. A zero or negative timeout checks once and does not wait.
class Timeout {
 public:
  /// The span of a timeout, in seconds.
  using duration = std::chrono::duration<double>;

  /// No time limit (Python's `timeout=None`).
  constexpr Timeout() noexcept = default;
  /// No time limit (Python's `timeout=None`).
  constexpr Timeout(std::nullopt_t) noexcept {}  // NOLINT(google-explicit-constructor)
  /// A limit of `seconds` seconds (Python's `timeout=0.1`).
  template <class Seconds>
  requires(std::is_arithmetic_v<Seconds> && !std::is_same_v<Seconds, bool>) constexpr Timeout(
      Seconds seconds) noexcept  // NOLINT(google-explicit-constructor)
      : value_(static_cast<double>(seconds)) {}
  /// A limit given as a `std::chrono` duration.
  template <class Rep, class Period>
  constexpr Timeout(std::chrono::duration<Rep, Period> d) noexcept  // NOLINT
      : value_(std::chrono::duration_cast<duration>(d)) {}
  /// A limit when `d` holds one, none otherwise.
  template <class Rep, class Period>
  constexpr Timeout(const std::optional<std::chrono::duration<Rep, Period>>& d) noexcept  // NOLINT
      : value_(d ? std::optional<duration>(std::chrono::duration_cast<duration>(*d))
                 : std::nullopt) {}

  /// True when there is a time limit.
  constexpr bool has_value() const noexcept { return value_.has_value(); }
  /// True when there is a time limit.
  constexpr explicit operator bool() const noexcept { return has_value(); }
  /// The limit (only when has_value()).
  constexpr const duration& operator*() const noexcept { return *value_; }
  /// The limit (only when has_value()).
  constexpr const duration* operator->() const noexcept { return &*value_; }
  /// The limit in seconds, or `fallback` when there is none.
  constexpr double seconds_or(double fallback) const noexcept {
    return value_ ? value_->count() : fallback;
  }
  /// The limit as an optional duration.
  constexpr const std::optional<duration>& as_optional() const noexcept { return value_; }

  /// Two timeouts are equal when both have no limit or both have the same limit.
  friend constexpr bool operator==(const Timeout&, const Timeout&) = default;

 private:
  std::optional<duration> value_;
};

}  // namespace mpp
