// mpp — what every synchronisation handle of sync.hpp is made of: a mapped segment holding the
// primitive's raw state (detail/sync_state.hpp), the four ways to make one (anonymous, create,
// open, open_or_create) and views of a state embedded in another object, written once; and how
// a handle crosses processes as its name.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include "../errors.hpp"
#include "../options.hpp"
#include "../segment.hpp"
#include "../timeout.hpp"
#include "sync_state.hpp"

namespace mpp::detail {

/// Converts a std::chrono duration into a Python-style Timeout.
template <class Rep, class Period>
Timeout to_timeout(std::chrono::duration<Rep, Period> d) noexcept {
  return std::chrono::duration<double>(d);
}

/// The deadline of acquire(block, timeout): non-blocking means "already expired".
inline Deadline acquire_deadline(bool block, const Timeout& timeout) noexcept {
  if (!block) return Deadline::after(std::chrono::nanoseconds(0));
  return Deadline::from(timeout);
}

/// A mapped segment holding a `State` at the start of its payload.
template <class State>
struct SyncHandle {
  std::shared_ptr<Segment> seg;
  State* state = nullptr;

  //!Effects: creates the named segment `name` and constructs the state with `make(void*)` in
  //! its payload.
  template <class Make>
  static SyncHandle create(Kind kind, std::string_view name, Make&& make,
                           const NamedOptions& opts) {
    const SegmentSpec spec{kind, type_info<State>(), sizeof(State), 0};
    auto init = [&](std::byte* p, std::uint64_t) { make(static_cast<void*>(p)); };
    return wrap(Segment::create(name, spec, init, opts));
  }
  /// As create(), with a fresh anonymous name (inherited by forked children).
  template <class Make>
  static SyncHandle create_anonymous(Kind kind, Make&& make) {
    const SegmentSpec spec{kind, type_info<State>(), sizeof(State), 0};
    auto init = [&](std::byte* p, std::uint64_t) { make(static_cast<void*>(p)); };
    return wrap(Segment::create_anonymous(spec, init));
  }
  /// Opens the named segment and checks that it holds a `State`.
  static SyncHandle open(Kind kind, std::string_view name, const NamedOptions& opts) {
    return wrap(Segment::open(name, kind, type_info<State>(), opts));
  }
  template <class Make>
  static SyncHandle open_or_create(Kind kind, std::string_view name, Make&& make,
                                   const NamedOptions& opts) {
    const SegmentSpec spec{kind, type_info<State>(), sizeof(State), 0};
    auto init = [&](std::byte* p, std::uint64_t) { make(static_cast<void*>(p)); };
    return wrap(Segment::open_or_create(name, spec, init, opts).first);
  }
  static SyncHandle wrap(Segment s) {
    if (s.payload_size() < sizeof(State))
      fail<CorruptedError>("'{}': payload of {} bytes cannot hold a {} of {} bytes", s.name(),
                           s.payload_size(), type_name<State>(), sizeof(State));
    SyncHandle h;
    h.seg = std::make_shared<Segment>(std::move(s));
    h.state = reinterpret_cast<State*>(h.seg->payload());
    return h;
  }
  const std::string& name() const noexcept {
    static const std::string none;
    return seg ? seg->name() : none;
  }
};

/// The name of a handle's object, looked up only when an error message needs it (not on the
/// fast path of an acquire).
template <class H>
struct LazyName {
  const H* h;
  std::string_view operator()() const noexcept { return h->name(); }
};

/// mpp's own access to a handle's raw state and segment (synchronisation objects, Value, Array),
/// and to handles over a state embedded in another object (Value::get_lock(), a named
/// Condition's own RLock). Not part of the public API: the handles keep these members protected.
struct HandleAccess {
  /// The raw in-segment state of `h`.
  template <class H>
  static auto& state(const H& h) noexcept {
    return h.state();
  }
  /// The segment that holds `h`'s state (kept mapped by `h`).
  template <class H>
  static const std::shared_ptr<Segment>& segment(const H& h) noexcept {
    return h.segment();
  }
  /// The lock of a Condition `c` (a std::variant of Lock and RLock).
  template <class C>
  static const auto& lock_of(const C& c) noexcept {
    return c.lock_;
  }
  /// The shared block (segment, header, elements, lock) behind a Value or Array `h`.
  template <class H>
  static auto& block(const H& h) noexcept {
    return h.b_;
  }
  //!Returns: an H over `state`, embedded in `owner`'s segment (kept mapped by the handle and its
  //! copies). Throws: InvalidArgument on a null state.
  template <class H, class State>
  static H view(std::shared_ptr<Segment> owner, State* state) {
    return H::view(std::move(owner), state);
  }
};

/// What every synchronisation handle shares: a mapped `State` of kind `K`, its name, and the four
/// ways to make one (anonymous, create, open, open_or_create) plus views, written once here.
/// `Derived` constructs from (Handle, extra...) and befriends this class.
template <class Derived, class State, Kind K>
class SyncObject {
 public:
  /// The object's name ("mpp.anon..." when anonymous; for a lock embedded in another object, such
  /// as Value::get_lock(), the name of that object).
  const std::string& name() const noexcept { return h_.name(); }

 protected:
  using Handle = SyncHandle<State>;
  explicit SyncObject(Handle h) : h_(std::move(h)) {}

  template <class Make>
  static Handle anonymous(Make&& make) {
    return Handle::create_anonymous(K, make);
  }
  template <class Make, class... Extra>
  static Derived created(std::string_view name, Make&& make, const NamedOptions& opts,
                         Extra&&... extra) {
    return Derived(Handle::create(K, name, make, opts), std::forward<Extra>(extra)...);
  }
  template <class... Extra>
  static Derived opened(std::string_view name, const NamedOptions& opts, Extra&&... extra) {
    return Derived(Handle::open(K, name, opts), std::forward<Extra>(extra)...);
  }
  template <class Make, class... Extra>
  static Derived opened_or_created(std::string_view name, Make&& make, const NamedOptions& opts,
                                   Extra&&... extra) {
    return Derived(Handle::open_or_create(K, name, make, opts), std::forward<Extra>(extra)...);
  }
  // A handle over a state embedded in `owner`'s segment.
  static Derived view(std::shared_ptr<Segment> owner, State* state) {
    if (state == nullptr) fail<InvalidArgument>("{}::view: null state", kind_name(K));
    Handle h;
    h.seg = std::move(owner);
    h.state = state;
    return Derived(std::move(h));
  }
  State& state() const noexcept { return *h_.state; }
  const std::shared_ptr<Segment>& segment() const noexcept { return h_.seg; }

  Handle h_;

  friend struct HandleAccess;
};

/// How a synchronisation handle crosses processes: as its name, checked to be the name of the
/// object itself (not of another object that embeds its state); opened again by decode, as
/// Python pickles a multiprocessing lock for a child. A Barrier crosses with its action only
/// when that is a registered function (its name is in the barrier's shared memory).
template <class H, Kind K>
struct SyncName {
  using name_type = std::string;
  //!Returns: the name under which `h` can be re-opened in another process.
  //!Throws: InvalidArgument for a handle over a state embedded in another object (or a
  //! Condition over a supplied lock): encode the object that owns it instead.
  static const std::string& name_of(const H& h) {
    bool standalone = true;
    if constexpr (requires { h.uses_own_lock(); }) standalone = h.uses_own_lock();
    if constexpr (requires { H::check_crossing(h); }) H::check_crossing(h);
    const auto& seg = HandleAccess::segment(h);
    if (!standalone || !seg || static_cast<Kind>(seg->header().kind) != K ||
        reinterpret_cast<const std::byte*>(&HandleAccess::state(h)) != seg->payload())
      fail<InvalidArgument>(
          "this {} is part of '{}' (or uses a supplied lock) and cannot cross "
          "processes by itself; pass the object that owns it",
          kind_name(K), seg ? seg->name() : std::string("?"));
    return seg->name();
  }
  static H open(const std::string& name) { return H::open(name); }
};
}  // namespace mpp::detail
