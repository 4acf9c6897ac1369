// mpp — how a Manager and its containers cross processes (as names, see detail/name_codec.hpp)
// and how fmt prints them (manager.hpp includes this file).
#pragma once

#include <variant>

namespace mpp {

/// A Manager crosses processes as its name (as Python pickles a manager's address).
template <>
struct codec<Manager> : detail::NameCodec<Manager> {};

namespace detail {
/// How a manager container crosses processes: as (manager name, container name); the receiver
/// opens the manager, then the container with `Open`.
template <class H, class Open>
struct ContainerName {
  using name_type = std::pair<std::string, std::string>;
  static name_type name_of(const H& h) { return {h.manager_name(), h.name()}; }
  static H open(const name_type& n) {
    auto mgr = Manager::open(n.first);
    return Open{}(mgr, n.second);
  }
};
template <class K, class V>
struct OpenDict {
  SharedDict<K, V> operator()(Manager& m, const std::string& c) const { return m.dict<K, V>(c); }
};
template <class T>
struct OpenList {
  SharedList<T> operator()(Manager& m, const std::string& c) const { return m.list<T>(c); }
};
struct OpenNamespace {
  ::mpp::Namespace operator()(Manager& m, const std::string& c) const { return m.Namespace(c); }
};
template <class T>
struct OpenObject {
  SharedObject<T> operator()(Manager& m, const std::string& c) const {
    // Opening never creates here (the sender's object exists), so T need not be default
    // constructible unless it is.
    if constexpr (std::is_default_constructible_v<T>)
      return m.object<T>(c);
    else
      static_assert(std::is_default_constructible_v<T>,
                    "a SharedObject<T> crosses processes only for a default-constructible T");
  }
};
}  // namespace detail

/// A SharedDict crosses processes as (manager name, dict name): the receiver opens it.
template <class K, class V>
struct codec<SharedDict<K, V>>
    : detail::NameCodec<SharedDict<K, V>,
                        detail::ContainerName<SharedDict<K, V>, detail::OpenDict<K, V>>> {};
/// A SharedList crosses processes as (manager name, list name): the receiver opens it.
template <class T>
struct codec<SharedList<T>>
    : detail::NameCodec<SharedList<T>, detail::ContainerName<SharedList<T>, detail::OpenList<T>>> {
};
/// A Namespace crosses processes as (manager name, Namespace name): the receiver opens it.
template <>
struct codec<Namespace>
    : detail::NameCodec<Namespace, detail::ContainerName<Namespace, detail::OpenNamespace>> {};
/// A SharedObject crosses processes as (manager name, object name): the receiver opens it.
template <class T>
struct codec<SharedObject<T>>
    : detail::NameCodec<SharedObject<T>,
                        detail::ContainerName<SharedObject<T>, detail::OpenObject<T>>> {};

namespace detail {
/// True for the Manager and its container handles.
template <class T>
struct is_manager_handle : std::false_type {};
template <>
struct is_manager_handle<Manager> : std::true_type {};
template <>
struct is_manager_handle<Namespace> : std::true_type {};
template <class K, class V>
struct is_manager_handle<SharedDict<K, V>> : std::true_type {};
template <class T>
struct is_manager_handle<SharedList<T>> : std::true_type {};
template <class T>
struct is_manager_handle<SharedObject<T>> : std::true_type {};
}  // namespace detail

/// A variant with a manager handle among its alternatives (a list of
/// std::variant<int, std::string, SharedList<int>>, as a Python list mixes values and proxies):
/// the alternative's index, then the alternative through its own codec.
template <class... Ts>
requires((detail::is_manager_handle<Ts>::value || ...) &&
         (Encodable<Ts> && ...)) struct codec<std::variant<Ts...>> {
  /// Name of the encoding (part of the type fingerprint).
  static constexpr std::string_view kind = "variant";
  /// Appends the index (4 bytes) and the encoding of the held alternative.
  static void encode(const std::variant<Ts...>& v, Bytes& out) {
    const auto i = static_cast<std::uint32_t>(v.index());
    const auto* p = reinterpret_cast<const std::byte*>(&i);
    out.insert(out.end(), p, p + sizeof i);
    std::visit([&](const auto& x) { codec<std::decay_t<decltype(x)>>::encode(x, out); }, v);
  }
  //!Returns: the variant encoded in `in`. Throws: CorruptedError for a bad index or length, and
  //! what the alternative's codec throws.
  static std::variant<Ts...> decode(std::span<const std::byte> in) {
    std::uint32_t i = 0;
    if (in.size() < sizeof i)
      detail::fail<CorruptedError>("an encoded variant needs 4 bytes, got {}", in.size());
    std::memcpy(&i, in.data(), sizeof i);
    return decode_at<0>(i, in.subspan(sizeof i));
  }

 private:
  template <std::size_t I>
  static std::variant<Ts...> decode_at(std::uint32_t i, std::span<const std::byte> in) {
    if constexpr (I < sizeof...(Ts)) {
      using Alt = std::variant_alternative_t<I, std::variant<Ts...>>;
      if (i == I) return std::variant<Ts...>(std::in_place_index<I>, codec<Alt>::decode(in));
      return decode_at<I + 1>(i, in);
    } else {
      detail::fail<CorruptedError>("encoded variant index {} is not below {}", i, sizeof...(Ts));
    }
  }
};

}  // namespace mpp

namespace fmt {
/// Formats a SharedDict as Python's repr of a dict, with its name: `<SharedDict 'd' {'a': 1}>`.
template <class K, class V>
struct formatter<mpp::SharedDict<K, V>> : formatter<std::string_view> {
  /// Writes `d.repr()`.
  template <class Ctx>
  auto format(const mpp::SharedDict<K, V>& d, Ctx& ctx) const {
    return formatter<std::string_view>::format(d.repr(), ctx);
  }
};
/// Formats a SharedList as Python's repr of a list, with its name: `<SharedList 'l' [1, 2]>`.
template <class T>
struct formatter<mpp::SharedList<T>> : formatter<std::string_view> {
  /// Writes `l.repr()`.
  template <class Ctx>
  auto format(const mpp::SharedList<T>& l, Ctx& ctx) const {
    return formatter<std::string_view>::format(l.repr(), ctx);
  }
};
/// Formats a Namespace as Python does: `Namespace(a=1, b='x')`.
template <>
struct formatter<mpp::Namespace> : formatter<std::string_view> {
  /// Writes `ns.repr()`.
  template <class Ctx>
  auto format(const mpp::Namespace& ns, Ctx& ctx) const {
    return formatter<std::string_view>::format(ns.repr(), ctx);
  }
};
/// Formats a SharedObject: `<SharedObject 'acct' of type Account>`.
template <class T>
struct formatter<mpp::SharedObject<T>> : formatter<std::string_view> {
  /// Writes `o.repr()`.
  template <class Ctx>
  auto format(const mpp::SharedObject<T>& o, Ctx& ctx) const {
    return formatter<std::string_view>::format(o.repr(), ctx);
  }
};
}  // namespace fmt
