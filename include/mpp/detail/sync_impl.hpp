// mpp — the out-of-line members of sync.hpp's classes (included at its end, after the classes):
// RLock's release, Condition's wait, the Barrier's action and creation, and the reprs behind
// fmt::format.
#pragma once

#include <fmt/core.h>

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <type_traits>
#include <variant>

#include "../sync.hpp"
#include "sync_repr.hpp"

namespace mpp {

inline void RLock::release_impl(bool repaired) {
  auto& st = *h_.state;
  if (repaired && died_ && st.depth() == 1) st.mark_repaired();  // still held: we may write
  if (!st.release())
    detail::fail<ValueError>("release() of re-entrant lock '{}' which this thread does not own",
                             h_.name());
}

inline bool Condition::wait(Timeout timeout) {
  const auto deadline = detail::Deadline::from(timeout);
  auto& cond = h_.state->cond;
  if (auto* l = std::get_if<Lock>(&lock_)) {
    if (l->state().cut()) (void)l->acquire(false);  // throws CorruptedError naming it
    if (!l->state().held_by_this_process())
      detail::fail<ValueError>("wait() on condition '{}' without holding its lock", h_.name());
    // The re-acquire tells a dead holder through previous_owner_died(), as acquire() does.
    return cond.wait(
        deadline, [&] { l->release(); },
        [&] { l->record(l->state().acquire(detail::Deadline::never(), l->name())); },
        [&] { return l->state().cut(); }, h_.name());
  }
  auto& r = std::get<RLock>(lock_);
  if (r.state().cut()) (void)r.acquire(false);  // throws CorruptedError naming it
  if (!r.is_owned())
    detail::fail<ValueError>("wait() on condition '{}' without holding its lock", h_.name());
  std::uint32_t depth = 0;
  return cond.wait(
      deadline, [&] { depth = r.state().release_all(); },
      [&] {
        const auto res = r.state().acquire_restore(depth, detail::Deadline::never(), r.name());
        r.died_ = res == detail::LockResult::owner_died;
      },
      [&] { return r.state().cut(); }, h_.name());
}

template <class Pred>
bool Condition::wait_for(Pred&& pred, Timeout timeout) {
  const auto deadline = detail::Deadline::from(timeout);
  bool result = pred();
  bool died = false;
  while (!result) {
    const auto left = deadline.remaining();
    if (left && left->count() <= 0) break;
    wait(left ? Timeout(*left) : Timeout{});
    died = died || previous_owner_died();
    result = pred();
  }
  if (died) std::visit([](auto& l) { l.died_ = true; }, lock_);
  return result;
}

inline void Condition::check_owned(const char* what) const {
  std::visit(
      [](const auto& l) {
        if (l.state().cut()) (void)const_cast<std::decay_t<decltype(l)>&>(l).acquire(false);
      },
      lock_);  // a truncated lock: CorruptedError naming it, not "not holding it"
  const bool owned = std::visit(
      [](const auto& l) {
        if constexpr (std::is_same_v<std::decay_t<decltype(l)>, Lock>)
          return l.state().held_by_this_process();
        else
          return l.is_owned();
      },
      lock_);
  if (!owned)
    detail::fail<ValueError>("{}() on condition '{}' without holding its lock", what, h_.name());
}

template <class D>
BarrierAction::BarrierAction(D fn, int) {
  if constexpr (std::is_pointer_v<D> || std::is_same_v<D, std::function<void()>>)
    if (fn == nullptr) return;  // a null pointer or an empty function: no action
  name_ = detail::barrier_action_name(fn);
  fn_ = std::move(fn);
}

inline std::function<void(void*)> Barrier::maker(std::uint32_t parties, const Action& action,
                                                 Timeout timeout) {
  if (parties == 0 || parties > detail::kMaxBarrierParties)
    detail::fail<InvalidArgument>("a Barrier needs 1..{} parties, not {}",
                                  detail::kMaxBarrierParties, parties);
  using K = detail::BarrierActionKind;
  const K kind = !action ? K::none : action.registered_name() ? K::registered : K::local;
  return [parties, kind, timeout, name = action.registered_name().value_or("")](void* p) {
    new (p) detail::BarrierState(detail::BarrierConfig{parties, timeout, kind, name});
  };
}

inline void Barrier::run_action() const {
  if (action_) return action_();
  const auto kind = h_.state->action_kind(name());
  if (kind == detail::BarrierActionKind::registered)
    detail::run_registered_barrier_action(h_.state->action_name(), name());
  else if (kind == detail::BarrierActionKind::local)
    detail::fail<InvalidArgument>(
        "barrier '{}': this party arrived last but cannot run the barrier's action, a callable "
        "that is not registered and that only the creating handle (and its forked copies) "
        "holds; register the action with MPP_REGISTER so that every process can run it",
        name());
}

inline void Barrier::check_crossing(const Barrier& b) {
  if (b.h_.state->action_kind(b.name()) == detail::BarrierActionKind::local)
    detail::fail<InvalidArgument>(
        "barrier '{}' cannot cross to another process: its action is a callable that is not "
        "registered; register it with MPP_REGISTER (a function or a capture-less lambda) so "
        "that the receiver can run it",
        b.name());
}

namespace detail {
/// Found by argument-dependent lookup from ReprFormatter, so that value.hpp and array.hpp can add
/// repr() overloads after it.
struct ReprTag {};

/// Python-like reprs of the handles (see detail/sync_repr.hpp).
inline std::string repr(const Lock& l, ReprTag) {
  return lock_repr(l.name(), HandleAccess::state(l));
}
inline std::string repr(const RLock& l, ReprTag) {
  return rlock_repr(l.name(), HandleAccess::state(l));
}
inline std::string repr(const Semaphore& s, ReprTag) {
  return semaphore_repr(s.name(), HandleAccess::state(s));
}
inline std::string repr(const BoundedSemaphore& s, ReprTag) {
  return semaphore_repr(s.name(), HandleAccess::state(s));
}
inline std::string repr(const Event& e, ReprTag) {
  return event_repr(e.name(), HandleAccess::state(e));
}
inline std::string repr(const Condition& c, ReprTag) {
  const std::string lock =
      std::visit([](const auto& l) { return repr(l, ReprTag{}); }, HandleAccess::lock_of(c));
  return condition_repr(lock, HandleAccess::state(c).cond);
}
inline std::string repr(const Barrier& b, ReprTag) {
  return barrier_repr(b.name(), HandleAccess::state(b));
}

/// fmt::formatter of a handle with a detail::repr(h, ReprTag) overload: writes the repr (format
/// specs of a string apply, e.g. "{:>60}").
template <class H>
struct ReprFormatter : fmt::formatter<std::string_view> {
  /// Writes repr(h).
  template <class Ctx>
  auto format(const H& h, Ctx& ctx) const {
    return fmt::formatter<std::string_view>::format(repr(h, ReprTag{}), ctx);
  }
};
}  // namespace detail

}  // namespace mpp
