// mpp — the registry of functions that spawn and forkserver children run by name: which callables
// another program can re-create (function pointers and capture-less lambdas with Encodable
// parameters), how their arguments are encoded, and the name <-> function table that
// MPP_REGISTER / mpp::register_function fill identically in the parent and the re-executed child.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <typeindex>
#include <utility>
#include <vector>

#include "../codec.hpp"
#include "../errors.hpp"

namespace mpp::detail {

/// A list of parameter types (decayed), as a tag.
template <class... Ps>
struct ParamList {};

/// The parameters of a member function pointer (the operator() of a lambda).
template <class M>
struct member_call_traits {};
#define MPP_DETAIL_MEMBER_TRAITS(quals)              \
  template <class R, class C, class... Ps>           \
  struct member_call_traits<R (C::*)(Ps...) quals> { \
    using params = ParamList<std::decay_t<Ps>...>;   \
  };
MPP_DETAIL_MEMBER_TRAITS()
MPP_DETAIL_MEMBER_TRAITS(const)
MPP_DETAIL_MEMBER_TRAITS(noexcept)
MPP_DETAIL_MEMBER_TRAITS(const noexcept)
#undef MPP_DETAIL_MEMBER_TRAITS

/// The parameter types of a callable that another program can re-create from a name: a function
/// pointer, or a class without state (a capture-less lambda) with a single operator().
template <class F>
struct callable_traits {};
template <class R, class... Ps>
struct callable_traits<R (*)(Ps...)> {
  using params = ParamList<std::decay_t<Ps>...>;
};
template <class R, class... Ps>
struct callable_traits<R (*)(Ps...) noexcept> {
  using params = ParamList<std::decay_t<Ps>...>;
};
template <class F>
requires(std::is_class_v<F>&& std::is_empty_v<F>&& std::is_default_constructible_v<F>&& requires {
  &F::operator();
}) struct callable_traits<F> : member_call_traits<decltype(&F::operator())> {
};

template <class P>
struct all_encodable;
template <class... Ps>
struct all_encodable<ParamList<Ps...>> : std::bool_constant<(Encodable<Ps> && ...)> {};

/// A callable whose name can stand for it in another program (see register_function).
template <class F>
concept Transportable = requires {
  typename callable_traits<F>::params;
}
&&all_encodable<typename callable_traits<F>::params>::value;

/// Key under which a transportable callable is found: its type and, for a function pointer, its
/// address (addresses differ between programs, so only names travel).
using FunctionKey = std::pair<std::type_index, std::uintptr_t>;
template <class F>
FunctionKey function_key(const F& f) noexcept {
  if constexpr (std::is_pointer_v<F>)
    return {std::type_index(typeid(F)), reinterpret_cast<std::uintptr_t>(f)};
  else
    return {std::type_index(typeid(F)), 0};
}

/// A fingerprint of the parameter types, so a child refuses a function registered with others.
template <class... Ps>
constexpr std::uint64_t signature_of(ParamList<Ps...>) noexcept {
  std::uint64_t h = fnv1a("mpp.signature");
  ((h = (h ^ type_info<Ps>().fingerprint) * 1099511628211ull), ...);
  return h;
}

/// Appends `v` in native byte order (both ends run the same program on the same machine).
inline void append_u32(std::string& out, std::uint32_t v) {
  char b[4];
  std::memcpy(b, &v, 4);
  out.append(b, 4);
}

/// Encodes each argument as a length-prefixed mpp::encode() buffer.
template <class... Ps, class... As>
std::string encode_args(ParamList<Ps...>, const As&... as) {
  std::string out;
  auto one = [&out]<class P>(const P& p) {
    const Bytes b = mpp::encode<P>(p);
    append_u32(out, static_cast<std::uint32_t>(b.size()));
    out.append(reinterpret_cast<const char*>(b.data()), b.size());
  };
  (one(Ps(as)), ...);
  (void)one;
  return out;
}

/// Reads the next length-prefixed argument of `in` at `pos`. Throws: CorruptedError.
inline std::span<const std::byte> next_arg(std::span<const std::byte> in, std::size_t& pos) {
  std::uint32_t n = 0;
  if (in.size() - pos < 4)
    fail<CorruptedError>("process arguments are truncated at byte {} of {}", pos, in.size());
  std::memcpy(&n, in.data() + pos, 4);
  pos += 4;
  if (n > in.size() - pos)
    fail<CorruptedError>("a process argument claims {} bytes but only {} are left", n,
                         in.size() - pos);
  auto r = in.subspan(pos, n);
  pos += n;
  return r;
}

/// Decodes what encode_args wrote. Throws: CorruptedError, or the codec's error.
template <class... Ps>
std::tuple<Ps...> decode_args(ParamList<Ps...>, std::span<const std::byte> in) {
  std::size_t pos = 0;
  std::tuple<Ps...> t{mpp::decode<Ps>(next_arg(in, pos))...};  // braces: left to right
  if (pos != in.size())
    fail<CorruptedError>("{} trailing bytes after the process arguments", in.size() - pos);
  return t;
}

/// Calls f with the values of tuple t, moved when f accepts rvalues.
template <class F, class Tuple>
void call_with(F& f, Tuple& t) {
  std::apply(
      [&f](auto&... a) {
        if constexpr (std::is_invocable_v<F&, decltype(std::move(a))...>)
          std::invoke(f, std::move(a)...);
        else
          std::invoke(f, a...);
      },
      t);
}

/// A function registered for spawn and forkserver.
struct RegisteredFunction {
  std::string name;
  std::uint64_t signature = 0;
  std::function<void(std::span<const std::byte>)> invoke;  ///< decodes the arguments and calls
};

/// Name ↔ function table, filled by MPP_REGISTER at static initialisation or by
/// register_function before bootstrap, identically in the parent and the re-executed child.
class FunctionRegistry {
 public:
  //!Effects: adds `fn` under `key`; the same function under the same name again is a no-op.
  //!Returns: true. Throws: InvalidArgument if another function already has this name.
  bool add(RegisteredFunction fn, FunctionKey key) {
    std::lock_guard lock(mutex_);
    if (auto it = by_name_.find(fn.name); it != by_name_.end()) {
      auto k = find_key(key);
      if (k != by_key_.end() && k->second == fn.name) return true;  // same function again
      fail<InvalidArgument>(
          "a different function is already registered as '{}'; register it "
          "under another name",
          fn.name);
    }
    if (find_key(key) == by_key_.end()) by_key_.emplace_back(key, fn.name);
    std::string name = fn.name;
    by_name_.emplace(std::move(name), std::move(fn));
    return true;
  }
  /// The name the function `key` is registered under, or nullopt.
  std::optional<std::string> name_of(const FunctionKey& key) const {
    std::lock_guard lock(mutex_);
    auto it = find_key(key);
    return it == by_key_.end() ? std::nullopt : std::optional(it->second);
  }
  //!Returns: the key (type and, for a function pointer, address in this program) of the function
  //! registered as `name`, or nullopt (lets a pool worker run a registered function by name).
  std::optional<FunctionKey> key_of(const std::string& name) const {
    std::lock_guard lock(mutex_);
    for (const auto& [key, n] : by_key_)
      if (n == name) return key;
    return std::nullopt;
  }
  /// The function registered as `name`, or nullptr.
  const RegisteredFunction* find(const std::string& name) const {
    std::lock_guard lock(mutex_);
    auto it = by_name_.find(name);
    return it == by_name_.end() ? nullptr : &it->second;  // entries are never removed
  }

 private:
  // A list searched with type_index's ==, not a map ordered by its <: mingw's libstdc++ orders a
  // type with internal linkage against other types inconsistently, which lost registrations.
  using KeyList = std::vector<std::pair<FunctionKey, std::string>>;
  KeyList::const_iterator find_key(const FunctionKey& key) const {
    return std::find_if(by_key_.begin(), by_key_.end(),
                        [&](const auto& entry) { return entry.first == key; });
  }

  mutable std::mutex mutex_;
  std::map<std::string, RegisteredFunction> by_name_;
  KeyList by_key_;
};

/// The registry of this program (filled before main, or before mpp::bootstrap).
inline FunctionRegistry& function_registry() {
  static FunctionRegistry r;
  return r;
}

//!Effects: registers transportable `fn` under `name`: the entry decodes the arguments and calls
//! it. Returns: true. Throws: InvalidArgument if another function already has this name.
template <Transportable F>
bool register_transportable(std::string_view name, F fn) {
  using Params = typename callable_traits<F>::params;
  RegisteredFunction r;
  r.name = std::string(name);
  r.signature = signature_of(Params{});
  r.invoke = [fn](std::span<const std::byte> in) mutable {
    auto args = decode_args(Params{}, in);
    call_with(fn, args);
  };
  return function_registry().add(std::move(r), function_key(fn));
}

}  // namespace mpp::detail
