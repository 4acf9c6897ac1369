// mpp — NamedOptions: what every named shared object (lock, event, value, queue, manager...)
// shares about its name.
#pragma once

#include "detail/config.hpp"

#include <chrono>

namespace mpp {

/// The options every named object takes when it is created or opened by name
/// (`mpp::Lock::create(name, opts)`, `mpp::SharedMemory(name, ...)`...). QueueOptions,
/// SharedOptions and ManagerOptions carry the same two fields under the same names.
struct NamedOptions {
  /// Keep the name when the creator's handle goes away (remove it with `mpp::unlink(name)` or
  /// `mpp gc`). By default a name lives as long as some handle to it does.
  bool persistent = false;
  /// How long open() waits for an object whose creator is still initialising it.
  std::chrono::milliseconds init_timeout{5000};
};

}  // namespace mpp
