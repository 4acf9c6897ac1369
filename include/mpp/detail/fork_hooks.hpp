// mpp — a process-local registry of objects that must act around fork(): a Pipe end registers
// itself so that a forked child becomes a holder of every end it inherits *before* the parent
// can close its own copy (see pipe.hpp, "Liveness of an end"). The registry lock is taken in
// the prepare handler, so no end is added or removed while the address space is copied.
#pragma once

#include <cstddef>
#include <mutex>
#include <vector>

#include "os.hpp"

namespace mpp::detail {

class ForkHook;
inline void register_fork_hook(ForkHook* h);
inline void unregister_fork_hook(ForkHook* h) noexcept;

/// Something that must act around fork(). The handlers run with the registry locked: they must
/// not register or unregister hooks, and must not throw. Not copyable (it is registered by
/// address).
class ForkHook {
 public:
  /// In the parent, just before the address space is copied.
  virtual void before_fork() noexcept = 0;
  /// In the parent, just after fork() (whether or not it succeeded).
  virtual void after_fork_parent() noexcept = 0;
  /// In the new child, before fork() returns there.
  virtual void after_fork_child() noexcept = 0;

 protected:
  ForkHook() = default;
  ForkHook(const ForkHook&) = delete;
  ForkHook& operator=(const ForkHook&) = delete;
  ~ForkHook() = default;

 private:
  friend void register_fork_hook(ForkHook* h);
  friend void unregister_fork_hook(ForkHook* h) noexcept;
  static constexpr std::size_t kUnregistered = ~std::size_t{0};
  std::size_t fork_slot_ = kUnregistered;  // its index in the registry (under the registry lock)
};

namespace fork_hooks_detail {
struct Registry {
  std::mutex mutex;
  std::vector<ForkHook*> hooks;
};
// Never destroyed: hooks may unregister from static destructors after main returns.
inline Registry& registry() noexcept {
  static Registry* r = new Registry;
  return *r;
}
inline void prepare() noexcept {
  auto& r = registry();
  r.mutex.lock();
  for (ForkHook* h : r.hooks) h->before_fork();
}
inline void parent() noexcept {
  auto& r = registry();
  for (ForkHook* h : r.hooks) h->after_fork_parent();
  r.mutex.unlock();
}
inline void child() noexcept {
  auto& r = registry();
  for (ForkHook* h : r.hooks) h->after_fork_child();
  r.mutex.unlock();  // locked by this (copied) thread in prepare()
}
}  // namespace fork_hooks_detail

//!Effects: `h` takes part in every later fork() of this process until unregistered.
inline void register_fork_hook(ForkHook* h) {
  static const bool installed = [] {
    // The pid cache's own child handler must run before ours (handlers run in registration
    // order), so that ProcessRef::self() in our child handler names the child.
    (void)os::current_pid();
    os::at_fork(&fork_hooks_detail::prepare, &fork_hooks_detail::parent, &fork_hooks_detail::child);
    return true;
  }();
  (void)installed;
  auto& r = fork_hooks_detail::registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  if (h->fork_slot_ != ForkHook::kUnregistered) return;
  r.hooks.push_back(h);
  h->fork_slot_ = r.hooks.size() - 1;
}

//!Effects: `h` no longer takes part in fork(); O(1) (the last hook takes its place). Idempotent.
inline void unregister_fork_hook(ForkHook* h) noexcept {
  auto& r = fork_hooks_detail::registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  const std::size_t i = h->fork_slot_;
  if (i >= r.hooks.size() || r.hooks[i] != h) return;
  r.hooks[i] = r.hooks.back();
  r.hooks[i]->fork_slot_ = i;
  r.hooks.pop_back();
  h->fork_slot_ = ForkHook::kUnregistered;
}

/// This process's one T (a ForkHook), created and registered on first use and never destroyed:
/// objects that use it may go away in static destructors after main returns.
template <class T>
T& process_singleton() {
  static T* const instance = [] {
    auto* t = new T;
    register_fork_hook(t);
    return t;
  }();
  return *instance;
}

}  // namespace mpp::detail
