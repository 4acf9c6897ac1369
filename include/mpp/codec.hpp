// mpp — how a T becomes bytes and back: the C++ stand-in for pickle.
// Trivially copyable types are copied as bytes; standard containers, strings, optional, variant,
// tuples and user types with serialize() go through cereal with a bounds-checked binary archive;
// users may specialise mpp::codec<T>, as every mpp handle does (it crosses as its name). A type
// with a codec of its own is an element of the cereal-encoded types too (a vector of queues, an
// optional lock, a struct holding an event), and decoding builds such an element from its
// encoding rather than default-constructing it first (a default Queue would be a new queue).
// Only data crosses processes, never code. Decoding checks every length against the buffer and
// throws CorruptedError instead of over-reading.
#pragma once

#include "detail/config.hpp"  // first: "mpp needs C++20" before any other error

#include <array>
#include <cereal/cereal.hpp>
#include <cereal/types/array.hpp>
#include <cereal/types/chrono.hpp>
#include <cereal/types/deque.hpp>
#include <cereal/types/list.hpp>
#include <cereal/types/map.hpp>
#include <cereal/types/optional.hpp>
#include <cereal/types/set.hpp>
#include <cereal/types/string.hpp>
#include <cereal/types/tuple.hpp>
#include <cereal/types/unordered_map.hpp>
#include <cereal/types/unordered_set.hpp>
#include <cereal/types/utility.hpp>
#include <cereal/types/variant.hpp>
#include <cereal/types/vector.hpp>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <list>
#include <map>
#include <new>
#include <optional>
#include <set>
#include <span>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <variant>
#include <vector>

#include "errors.hpp"

namespace mpp {

/// A growable byte buffer: what codec<T>::encode appends to.
using Bytes = std::vector<std::byte>;

template <class T>
struct codec;

namespace detail {

/// Output archive for cereal that appends to a Bytes buffer.
class CodecOutputArchive
    : public cereal::OutputArchive<CodecOutputArchive, cereal::AllowEmptyClassElision> {
 public:
  explicit CodecOutputArchive(Bytes& out) : OutputArchive(this), out_(out) {}
  void saveBinary(const void* data, std::size_t size) {
    const auto* p = static_cast<const std::byte*>(data);
    out_.insert(out_.end(), p, p + size);
  }
  /// The buffer written to (a nested codec<T>::encode appends to it directly).
  Bytes& buffer() noexcept { return out_; }

 private:
  Bytes& out_;
};

/// Input archive for cereal that reads from a byte span and never reads past its end; every size
/// prefix is checked against the bytes left, so a corrupted length cannot cause a huge allocation.
class CodecInputArchive
    : public cereal::InputArchive<CodecInputArchive, cereal::AllowEmptyClassElision> {
 public:
  explicit CodecInputArchive(std::span<const std::byte> in) : InputArchive(this), in_(in) {}
  void loadBinary(void* data, std::size_t size) {
    if (size > in_.size() - pos_)
      fail<CorruptedError>("encoded data is truncated: needed {} more bytes at offset {}, have {}",
                           size, pos_, in_.size() - pos_);
    if (size != 0) std::memcpy(data, in_.data() + pos_, size);
    pos_ += size;
  }
  /// Bytes not consumed yet.
  std::size_t remaining() const noexcept { return in_.size() - pos_; }
  //!Returns: the next `size` bytes, consumed. Throws: CorruptedError if fewer are left.
  std::span<const std::byte> take(std::size_t size) {
    if (size > in_.size() - pos_)
      fail<CorruptedError>("encoded data is truncated: needed {} more bytes at offset {}, have {}",
                           size, pos_, in_.size() - pos_);
    const auto r = in_.subspan(pos_, size);
    pos_ += size;
    return r;
  }

 private:
  std::span<const std::byte> in_;
  std::size_t pos_ = 0;
};

template <class T>
inline std::enable_if_t<std::is_arithmetic_v<T>> CEREAL_SAVE_FUNCTION_NAME(CodecOutputArchive& ar,
                                                                           const T& t) {
  ar.saveBinary(std::addressof(t), sizeof(t));
}
template <class T>
inline std::enable_if_t<std::is_arithmetic_v<T>> CEREAL_LOAD_FUNCTION_NAME(CodecInputArchive& ar,
                                                                           T& t) {
  if constexpr (std::is_same_v<T, bool>) {
    std::uint8_t b = 0;  // only 0 and 1 are bools; any other byte is corruption, not UB
    ar.loadBinary(&b, 1);
    if (b > 1) fail<CorruptedError>("encoded bool has the invalid value {}", b);
    t = b != 0;
  } else {
    ar.loadBinary(std::addressof(t), sizeof(t));
  }
}
template <class Archive, class T>
inline CEREAL_ARCHIVE_RESTRICT(CodecInputArchive, CodecOutputArchive)
    CEREAL_SERIALIZE_FUNCTION_NAME(Archive& ar, cereal::NameValuePair<T>& t) {
  ar(t.value);
}
template <class T>
inline void CEREAL_SAVE_FUNCTION_NAME(CodecOutputArchive& ar, const cereal::SizeTag<T>& t) {
  ar(t.size);
}
template <class T>
inline void CEREAL_LOAD_FUNCTION_NAME(CodecInputArchive& ar, cereal::SizeTag<T>& t) {
  ar(t.size);
  // Every element takes at least one byte except in exotic empty types: a count larger than the
  // bytes left can only come from corruption.
  if (static_cast<std::uint64_t>(t.size) > ar.remaining())
    fail<CorruptedError>("encoded length {} exceeds the {} bytes left",
                         static_cast<std::uint64_t>(t.size), ar.remaining());
}
template <class T>
inline void CEREAL_SAVE_FUNCTION_NAME(CodecOutputArchive& ar, const cereal::BinaryData<T>& bd) {
  ar.saveBinary(bd.data, static_cast<std::size_t>(bd.size));
}
template <class T>
inline void CEREAL_LOAD_FUNCTION_NAME(CodecInputArchive& ar, cereal::BinaryData<T>& bd) {
  ar.loadBinary(bd.data, static_cast<std::size_t>(bd.size));
}

}  // namespace detail
}  // namespace mpp

CEREAL_REGISTER_ARCHIVE(mpp::detail::CodecOutputArchive)
CEREAL_REGISTER_ARCHIVE(mpp::detail::CodecInputArchive)
CEREAL_SETUP_ARCHIVE_TRAITS(mpp::detail::CodecInputArchive, mpp::detail::CodecOutputArchive)

namespace mpp {

namespace detail {
/// Base of the codecs mpp gives every type that has no codec of its own (raw bytes, cereal).
struct BuiltinCodec {};

/// codec<T> is a specialisation with encode and decode, not mpp's built-in codec.
template <class T>
concept SpecialisedCodec = !std::is_base_of_v<BuiltinCodec, codec<T>> &&
                           requires(const T& v, Bytes& out, std::span<const std::byte> in) {
  codec<T>::encode(v, out);
  { codec<T>::decode(in) } -> std::same_as<T>;
};
/// T has cereal serialization written for it (a serialize() or save() member, a serialize()).
template <class T>
concept CerealWritten = cereal::traits::has_member_serialize<T, CodecOutputArchive>::value ||
    cereal::traits::has_member_save<T, CodecOutputArchive>::value ||
    cereal::traits::has_non_member_serialize<T, CodecOutputArchive>::value;
/// Class types with a codec of their own: every mpp handle (it crosses as its name) and the
/// user's specialisations. Inside a cereal-encoded value they cross through that codec, so a
/// vector of queues is a vector of names. A type that has cereal serialization as well keeps it
/// there (cereal refuses a type with two ways to save it).
template <class T>
concept OwnCodec = std::is_class_v<T> && SpecialisedCodec<T> && !CerealWritten<T>;

/// Standard wrappers of a type with its own codec: not copied as bytes even when trivially
/// copyable (std::optional<T> of a trivially copyable T is), or T's codec would be bypassed.
template <class T>
struct wraps_own_codec : std::false_type {};
template <class T>
concept WrapsOwnCodec = wraps_own_codec<T>::value;
template <class... Ts>
concept AnyOwnCodec = ((OwnCodec<Ts> || WrapsOwnCodec<Ts>) || ...);
template <class T>
struct wraps_own_codec<std::optional<T>> : std::bool_constant<AnyOwnCodec<T>> {};
template <class T, std::size_t N>
struct wraps_own_codec<std::array<T, N>> : std::bool_constant<AnyOwnCodec<T>> {};
template <class... Ts>
struct wraps_own_codec<std::variant<Ts...>> : std::bool_constant<AnyOwnCodec<Ts...>> {};
template <class A, class B>
struct wraps_own_codec<std::pair<A, B>> : std::bool_constant<AnyOwnCodec<A, B>> {};
template <class... Ts>
struct wraps_own_codec<std::tuple<Ts...>> : std::bool_constant<AnyOwnCodec<Ts...>> {};

/// Types copied as raw bytes: trivially copyable and not a pointer (a pointer means nothing in
/// another process) nor a C array (no function returns one; a std::array crosses).
template <class T>
concept RawEncodable = std::is_trivially_copyable_v<T> && !std::is_pointer_v<T> &&
                       !std::is_member_pointer_v<T> && !std::is_array_v<T> && !WrapsOwnCodec<T>;

/// Types that decoding builds from their encoding instead of default-constructing them and
/// loading into them: those with their own codec (a default-constructed Queue would be a new
/// queue; a Barrier has no default) and the tuples, pairs, arrays, optionals and variants of them.
template <class T>
struct built_on_load : std::bool_constant<OwnCodec<T>> {};
template <class T>
concept BuiltOnLoad = built_on_load<T>::value;
template <class... Ts>
concept AnyBuiltOnLoad = (BuiltOnLoad<Ts> || ...);
template <class... Ts>
struct built_on_load<std::tuple<Ts...>> : std::bool_constant<AnyBuiltOnLoad<Ts...>> {};
template <class A, class B>
struct built_on_load<std::pair<A, B>> : std::bool_constant<AnyBuiltOnLoad<A, B>> {};
template <class T, std::size_t N>
struct built_on_load<std::array<T, N>> : std::bool_constant<BuiltOnLoad<T>> {};
template <class T>
struct built_on_load<std::optional<T>> : std::bool_constant<BuiltOnLoad<T>> {};
template <class... Ts>
struct built_on_load<std::variant<Ts...>> : std::bool_constant<AnyBuiltOnLoad<Ts...>> {};

/// Whether the elements of a standard container, optional, variant, pair or tuple T can go through
/// cereal too: cereal accepts std::vector<X> for any X and fails deep inside its headers when X
/// cannot be saved, where this check lets mpp::encode's static_assert name the type instead.
/// True for every other type (cereal's own check decides).
template <class T>
struct cereal_elements_encodable : std::true_type {};
/// Types that decoding can make: default-constructed and loaded, or built from their encoding.
template <class T>
concept Makeable = std::is_default_constructible_v<T> || BuiltOnLoad<T>;
/// Types that cereal can save and load through our archives, elements included, and that decoding
/// can make.
template <class T>
concept CerealEncodable = cereal::traits::is_output_serializable<T, CodecOutputArchive>::value &&
                          cereal::traits::is_input_serializable<T, CodecInputArchive>::value &&
                          Makeable<T> && !std::is_pointer_v<T> &&
                          cereal_elements_encodable<T>::value;

template <class... Ts>
inline constexpr bool all_cereal_encodable = (CerealEncodable<Ts> && ...);
template <class T, class A>
struct cereal_elements_encodable<std::vector<T, A>> : std::bool_constant<CerealEncodable<T>> {};
template <class T, class A>
struct cereal_elements_encodable<std::deque<T, A>> : std::bool_constant<CerealEncodable<T>> {};
template <class T, class A>
struct cereal_elements_encodable<std::list<T, A>> : std::bool_constant<CerealEncodable<T>> {};
template <class T, std::size_t N>
struct cereal_elements_encodable<std::array<T, N>> : std::bool_constant<CerealEncodable<T>> {};
template <class K, class C, class A>
struct cereal_elements_encodable<std::set<K, C, A>> : std::bool_constant<CerealEncodable<K>> {};
template <class K, class C, class A>
struct cereal_elements_encodable<std::multiset<K, C, A>> : std::bool_constant<CerealEncodable<K>> {
};
template <class K, class H, class E, class A>
struct cereal_elements_encodable<std::unordered_set<K, H, E, A>>
    : std::bool_constant<CerealEncodable<K>> {};
template <class K, class H, class E, class A>
struct cereal_elements_encodable<std::unordered_multiset<K, H, E, A>>
    : std::bool_constant<CerealEncodable<K>> {};
template <class K, class V, class C, class A>
struct cereal_elements_encodable<std::map<K, V, C, A>>
    : std::bool_constant<all_cereal_encodable<K, V>> {};
template <class K, class V, class C, class A>
struct cereal_elements_encodable<std::multimap<K, V, C, A>>
    : std::bool_constant<all_cereal_encodable<K, V>> {};
template <class K, class V, class H, class E, class A>
struct cereal_elements_encodable<std::unordered_map<K, V, H, E, A>>
    : std::bool_constant<all_cereal_encodable<K, V>> {};
template <class K, class V, class H, class E, class A>
struct cereal_elements_encodable<std::unordered_multimap<K, V, H, E, A>>
    : std::bool_constant<all_cereal_encodable<K, V>> {};
template <class T>
struct cereal_elements_encodable<std::optional<T>> : std::bool_constant<CerealEncodable<T>> {};
template <class A, class B>
struct cereal_elements_encodable<std::pair<A, B>> : std::bool_constant<all_cereal_encodable<A, B>> {
};
template <class... Ts>
struct cereal_elements_encodable<std::tuple<Ts...>>
    : std::bool_constant<all_cereal_encodable<Ts...>> {};
template <class... Ts>
struct cereal_elements_encodable<std::variant<Ts...>>
    : std::bool_constant<all_cereal_encodable<Ts...>> {};

// ---- a value with its own codec inside a cereal archive: its encoding, length first ----------

/// Appends `v`'s own encoding to `ar`, its length first.
template <class T>
void save_own(CodecOutputArchive& ar, const T& v) {
  Bytes& out = ar.buffer();
  const std::size_t at = out.size();
  out.resize(at + sizeof(std::uint64_t));  // the length, written once the encoding is there
  codec<T>::encode(v, out);
  const auto n = static_cast<std::uint64_t>(out.size() - at - sizeof(std::uint64_t));
  std::memcpy(out.data() + at, &n, sizeof n);
}
template <class T>
requires OwnCodec<T>
void CEREAL_SAVE_FUNCTION_NAME(CodecOutputArchive& ar, const T& v) { save_own(ar, v); }
/// The value the overload above saved, made by its codec.
template <class T>
T load_own(CodecInputArchive& ar) {
  std::uint64_t n = 0;
  ar.loadBinary(&n, sizeof n);
  if (n > ar.remaining())
    fail<CorruptedError>("an encoded value claims {} bytes but only {} are left", n,
                         ar.remaining());
  return codec<T>::decode(ar.take(static_cast<std::size_t>(n)));
}
template <class T>
requires OwnCodec<T> && std::is_move_assignable_v<T>
void CEREAL_LOAD_FUNCTION_NAME(CodecInputArchive& ar, T& v) { v = load_own<T>(ar); }
// The same for a class template with a mapped_type (SharedDict): cereal's save and load of any
// such template would otherwise tie with the two above, and a tie is no serialization at all.
template <template <class...> class M, class... As>
requires OwnCodec<M<As...>>
void CEREAL_SAVE_FUNCTION_NAME(CodecOutputArchive& ar, const M<As...>& v) { save_own(ar, v); }
template <template <class...> class M, class... As>
requires OwnCodec<M<As...>> && std::is_move_assignable_v<M<As...>>
void CEREAL_LOAD_FUNCTION_NAME(CodecInputArchive& ar, M<As...>& v) { v = load_own<M<As...>>(ar); }

// ---- decoding builds what has no (meaningful) default ------------------------------------------

template <class T>
T load_value(CodecInputArchive& ar);

/// build<T>::from(ar) makes a BuiltOnLoad T from the fields cereal saved for it, in their order.
template <class T>
struct build;
template <class... Ts>
struct build<std::tuple<Ts...>> {
  static std::tuple<Ts...> from(CodecInputArchive& ar) {
    return std::tuple<Ts...>{load_value<Ts>(ar)...};  // braces: left to right
  }
};
template <class A, class B>
struct build<std::pair<A, B>> {
  static std::pair<A, B> from(CodecInputArchive& ar) {
    return std::pair<A, B>{load_value<A>(ar), load_value<B>(ar)};
  }
};
template <class T, std::size_t N>
struct build<std::array<T, N>> {
  static std::array<T, N> from(CodecInputArchive& ar) {
    return from(ar, std::make_index_sequence<N>{});
  }
  template <std::size_t... I>
  static std::array<T, N> from([[maybe_unused]] CodecInputArchive& ar, std::index_sequence<I...>) {
    return {{(static_cast<void>(I), load_value<T>(ar))...}};
  }
};
template <class T>
struct build<std::optional<T>> {
  static std::optional<T> from(CodecInputArchive& ar) {
    bool nullopt = true;
    ar(nullopt);
    if (nullopt) return std::nullopt;
    return std::optional<T>(std::in_place, load_value<T>(ar));
  }
};
template <class... Ts>
struct build<std::variant<Ts...>> {
  using V = std::variant<Ts...>;
  template <std::size_t I>
  static V alternative(CodecInputArchive& ar) {
    return V(std::in_place_index<I>, load_value<std::variant_alternative_t<I, V>>(ar));
  }
  template <std::size_t... I>
  static V at(std::size_t index, CodecInputArchive& ar, std::index_sequence<I...>) {
    static constexpr V (*alternatives[])(CodecInputArchive&) = {&alternative<I>...};
    return alternatives[index](ar);
  }
  static V from(CodecInputArchive& ar) {
    std::int32_t index = -1;
    ar(index);
    if (index < 0 || static_cast<std::size_t>(index) >= sizeof...(Ts))
      fail<CorruptedError>("encoded variant index {} is not one of its {} alternatives", index,
                           sizeof...(Ts));
    return at(static_cast<std::size_t>(index), ar, std::index_sequence_for<Ts...>{});
  }
};

//!Returns: the next T of `ar`: made by its own codec, built field by field, or default-constructed
//! and loaded by cereal (plain data, user types with serialize()).
template <class T>
T load_value(CodecInputArchive& ar) {
  if constexpr (OwnCodec<T>) {
    return load_own<T>(ar);
  } else if constexpr (BuiltOnLoad<T>) {
    return build<T>::from(ar);
  } else {
    T v{};
    ar(v);
    return v;
  }
}

/// Containers of BuiltOnLoad elements: cereal's own loads would default-construct each element
/// first; these read the same bytes (cereal's size tag, then the elements) and build them.
inline std::size_t load_count(CodecInputArchive& ar) {
  cereal::size_type n = 0;
  ar(cereal::make_size_tag(n));  // checked against the bytes left
  return static_cast<std::size_t>(n);
}
template <class C, class T>
void load_sequence(CodecInputArchive& ar, C& c) {
  const std::size_t n = load_count(ar);
  c.clear();
  if constexpr (requires { c.reserve(n); }) c.reserve(n);
  for (std::size_t i = 0; i < n; ++i) c.push_back(load_value<T>(ar));
}
template <class C, class K>
void load_set(CodecInputArchive& ar, C& c) {
  const std::size_t n = load_count(ar);
  c.clear();
  for (std::size_t i = 0; i < n; ++i) c.emplace_hint(c.end(), load_value<K>(ar));
}
template <class C, class K, class V>
void load_map(CodecInputArchive& ar, C& c) {
  const std::size_t n = load_count(ar);
  c.clear();
  for (std::size_t i = 0; i < n; ++i) {
    K k = load_value<K>(ar);  // the key is saved first
    V v = load_value<V>(ar);
    c.emplace_hint(c.end(), std::move(k), std::move(v));
  }
}
template <class T, class A>
requires BuiltOnLoad<T>
void CEREAL_LOAD_FUNCTION_NAME(CodecInputArchive& ar, std::vector<T, A>& c) {
  load_sequence<std::vector<T, A>, T>(ar, c);
}
template <class T, class A>
requires BuiltOnLoad<T>
void CEREAL_LOAD_FUNCTION_NAME(CodecInputArchive& ar, std::deque<T, A>& c) {
  load_sequence<std::deque<T, A>, T>(ar, c);
}
template <class T, class A>
requires BuiltOnLoad<T>
void CEREAL_LOAD_FUNCTION_NAME(CodecInputArchive& ar, std::list<T, A>& c) {
  load_sequence<std::list<T, A>, T>(ar, c);
}
template <class K, class C, class A>
requires BuiltOnLoad<K>
void CEREAL_LOAD_FUNCTION_NAME(CodecInputArchive& ar, std::set<K, C, A>& c) {
  load_set<std::set<K, C, A>, K>(ar, c);
}
template <class K, class C, class A>
requires BuiltOnLoad<K>
void CEREAL_LOAD_FUNCTION_NAME(CodecInputArchive& ar, std::multiset<K, C, A>& c) {
  load_set<std::multiset<K, C, A>, K>(ar, c);
}
template <class K, class H, class E, class A>
requires BuiltOnLoad<K>
void CEREAL_LOAD_FUNCTION_NAME(CodecInputArchive& ar, std::unordered_set<K, H, E, A>& c) {
  load_set<std::unordered_set<K, H, E, A>, K>(ar, c);
}
template <class K, class H, class E, class A>
requires BuiltOnLoad<K>
void CEREAL_LOAD_FUNCTION_NAME(CodecInputArchive& ar, std::unordered_multiset<K, H, E, A>& c) {
  load_set<std::unordered_multiset<K, H, E, A>, K>(ar, c);
}
template <class K, class V, class C, class A>
requires AnyBuiltOnLoad<K, V>
void CEREAL_LOAD_FUNCTION_NAME(CodecInputArchive& ar, std::map<K, V, C, A>& c) {
  load_map<std::map<K, V, C, A>, K, V>(ar, c);
}
template <class K, class V, class C, class A>
requires AnyBuiltOnLoad<K, V>
void CEREAL_LOAD_FUNCTION_NAME(CodecInputArchive& ar, std::multimap<K, V, C, A>& c) {
  load_map<std::multimap<K, V, C, A>, K, V>(ar, c);
}
template <class K, class V, class H, class E, class A>
requires AnyBuiltOnLoad<K, V>
void CEREAL_LOAD_FUNCTION_NAME(CodecInputArchive& ar, std::unordered_map<K, V, H, E, A>& c) {
  load_map<std::unordered_map<K, V, H, E, A>, K, V>(ar, c);
}
template <class K, class V, class H, class E, class A>
requires AnyBuiltOnLoad<K, V>
void CEREAL_LOAD_FUNCTION_NAME(CodecInputArchive& ar, std::unordered_multimap<K, V, H, E, A>& c) {
  load_map<std::unordered_multimap<K, V, H, E, A>, K, V>(ar, c);
}
/// An optional or variant member of a user type (loaded in place): built, then moved in.
template <class T>
requires BuiltOnLoad<T>
void CEREAL_LOAD_FUNCTION_NAME(CodecInputArchive& ar, std::optional<T>& o) {
  o = build<std::optional<T>>::from(ar);
}
template <class... Ts>
requires AnyBuiltOnLoad<Ts...>
void CEREAL_LOAD_FUNCTION_NAME(CodecInputArchive& ar, std::variant<Ts...>& v) {
  v = build<std::variant<Ts...>>::from(ar);
}

/// mpp's codec of a T that has no codec of its own: raw bytes, cereal, or nothing (void,
/// functions, C arrays, abstract classes: Encodable is false).
template <class T>
struct builtin_codec : BuiltinCodec {};

/// Trivially copyable T: the bytes of the object.
template <class T>
requires RawEncodable<T>
struct builtin_codec<T> : BuiltinCodec {
  /// Name of the encoding (part of the type fingerprint).
  static constexpr std::string_view kind = "raw";
  /// Appends the bytes of `v` to `out`.
  static void encode(const T& v, Bytes& out) {
    // resize + memcpy, not insert: g++ 12 -O3 reports a false -Wstringop-overflow on insert.
    const std::size_t at = out.size();
    out.resize(at + sizeof(T));
    std::memcpy(out.data() + at, std::addressof(v), sizeof(T));
  }
  //!Returns: the T stored in `in`. Throws: CorruptedError if `in` is not exactly sizeof(T) bytes.
  static T decode(std::span<const std::byte> in) {
    if (in.size() != sizeof(T))
      detail::fail<CorruptedError>("a raw-encoded value must be {} bytes, got {}", sizeof(T),
                                   in.size());
    if constexpr (std::is_same_v<T, bool>) {
      if (static_cast<unsigned char>(in[0]) > 1)
        detail::fail<CorruptedError>("encoded bool has the invalid value {}",
                                     static_cast<unsigned>(in[0]));
    }
    alignas(T) std::byte storage[sizeof(T)];
    std::memcpy(storage, in.data(), sizeof(T));  // implicitly creates the T (P0593)
    return *std::launder(reinterpret_cast<T*>(storage));
  }
};

/// Other object types: a bounds-checked cereal binary archive, for the types cereal can serialise
/// (std containers, strings, optional, variant, user types with serialize(), and elements of them
/// with their own codec). The members are templates so that their constraint is checked when they
/// are called, not when codec<T> is instantiated: telling whether a type has a codec of its own
/// (which instantiates codec<T>) must not need cereal's verdict on it, which asks that question.
template <class T>
requires(!RawEncodable<T> && std::is_object_v<T> && !std::is_array_v<T> &&
         !std::is_abstract_v<T>) struct builtin_codec<T> : BuiltinCodec {
  /// Name of the encoding (part of the type fingerprint).
  static constexpr std::string_view kind = "cereal";
  /// Appends the encoding of `v` to `out`.
  template <class U = T>
  requires CerealEncodable<U>
  static void encode(const std::type_identity_t<T>& v, Bytes& out) {
    CodecOutputArchive ar(out);
    ar(v);
  }
  //!Returns: the T encoded in `in`, which must be consumed exactly.
  //!Throws: CorruptedError for a truncated, oversized or malformed buffer; what the codec of an
  //! element throws (NotFoundError for a handle whose object is gone).
  template <class U = T>
  requires CerealEncodable<U>
  static T decode(std::span<const std::byte> in) {
    try {
      CodecInputArchive ar(in);
      T v = load_value<T>(ar);
      if (ar.remaining() != 0)
        fail<CorruptedError>("{} trailing bytes after an encoded value", ar.remaining());
      return v;
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {  // cereal::Exception, length_error, bad_alloc
      fail<CorruptedError>("cannot decode a value from {} bytes: {}", in.size(), e.what());
    }
  }
};
}  // namespace detail

/// The codec of T: how a T becomes bytes and back. By default mpp's own: the bytes of a
/// trivially copyable T, cereal for the standard containers, strings, optional, variant, tuples
/// and types with serialize(); no members (T cannot cross processes) for other types. Specialise
/// it for your own types with `static void encode(const T&, Bytes&)` and `static T decode(span)`;
/// a specialised codec is used wherever T is nested too (a vector of T, a member of a struct).
template <class T>
struct codec : detail::builtin_codec<T> {};

/// Types that can cross processes through mpp::codec.
template <class T>
concept Encodable = requires(const T& v, Bytes& out, std::span<const std::byte> in) {
  codec<T>::encode(v, out);
  { codec<T>::decode(in) } -> std::same_as<T>;
};

/// The message of every "cannot cross processes" static_assert; the compiler shows the type (T)
/// in the instantiation context printed above it.
#define MPP_DETAIL_NOT_ENCODABLE                                                             \
  "mpp: this type (T above) cannot cross processes: it is not trivially copyable (or is a "  \
  "pointer or C array), cereal cannot save it or one of its elements (or cannot make it: "   \
  "no default constructor), and mpp::codec<T> is not specialised for it. Make it trivially " \
  "copyable, give it a cereal serialize() member, or specialise mpp::codec<T>"

/// Encodes `v` into a new buffer.
template <class T>
Bytes encode(const T& v) {
  static_assert(Encodable<T>, MPP_DETAIL_NOT_ENCODABLE);
  Bytes out;
  if constexpr (Encodable<T>) codec<T>::encode(v, out);  // one error, the static_assert's
  return out;
}

/// Decodes a T from `in`. Throws: CorruptedError.
template <class T>
T decode(std::span<const std::byte> in) {
  static_assert(Encodable<T>, MPP_DETAIL_NOT_ENCODABLE);
  if constexpr (Encodable<T>)
    return codec<T>::decode(in);
  else
    std::abort();  // not reached: the static_assert above fails the build
}

namespace detail {
/// Checks one parameter of a function that crosses processes; on failure the compiler prints
/// "[with Index = i; Param = X]": the parameter's position, counted from 0, and its type.
template <std::size_t Index, class Param>
constexpr bool parameter_encodable() {
  static_assert(Encodable<Param>,
                "mpp: parameter number Index (from 0; see \"with Index = ...; Param = ...\" above) "
                "of the function cannot cross processes: make its type trivially copyable, give "
                "it a cereal serialize() member, or specialise mpp::codec<Param>");
  return Encodable<Param>;
}
template <class... Params, std::size_t... Index>
constexpr bool parameters_encodable(std::index_sequence<Index...>) {
  return (parameter_encodable<Index, Params>() && ...);
}
/// True if every one of Params is Encodable; otherwise one static_assert per parameter that is
/// not, naming its position and type (for Process/Pool to call on a callable's parameter list).
template <class... Params>
constexpr bool parameters_encodable() {
  return parameters_encodable<Params...>(std::index_sequence_for<Params...>{});
}
}  // namespace detail

namespace detail {

/// The compiler's name for T ("int", "std::vector<int>", ...), for fingerprints and messages.
template <class T>
constexpr std::string_view type_name() noexcept {
  constexpr std::string_view f = MPP_PRETTY_FUNCTION;
#if defined(_MSC_VER) && !defined(__clang__)
  constexpr std::string_view open = "type_name<", close = ">(void)";
  constexpr auto b = f.find(open) + open.size();
  return f.substr(b, f.rfind(close) - b);
#else
  // GCC: "... [with T = int; std::string_view = ...]"; Clang: "... [T = int]"
  constexpr std::string_view open = "T = ";
  constexpr auto b = f.find(open) + open.size();
  constexpr auto semi = f.find(';', b);
  constexpr auto e = semi == std::string_view::npos ? f.rfind(']') : semi;
  return f.substr(b, e - b);
#endif
}

constexpr std::uint64_t fnv1a(std::string_view s, std::uint64_t h = 14695981039346656037ull) {
  for (char c : s) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
  return h;
}

template <class T>
constexpr std::string_view codec_kind() noexcept {
  if constexpr (requires { codec<T>::kind; })
    return codec<T>::kind;
  else
    return "user";
}

}  // namespace detail

/// Identity of an element type in shared memory: a fingerprint of its name, size, alignment and
/// codec, and its name for error messages.
struct TypeInfo {
  std::uint64_t fingerprint;  ///< hash checked when an object is opened
  std::string_view name;      ///< type name shown in TypeMismatchError

  /// The TypeInfo of objects without an element type (locks, events, raw memory).
  static constexpr TypeInfo none() noexcept { return {0, "none"}; }
};

/// The TypeInfo of T.
template <class T>
constexpr TypeInfo type_info() noexcept {
  constexpr std::string_view name = detail::type_name<T>();
  std::uint64_t h = detail::fnv1a(name);
  h = detail::fnv1a(detail::codec_kind<T>(), h);
  h = (h ^ sizeof(T)) * 1099511628211ull;
  h = (h ^ alignof(T)) * 1099511628211ull;
  return {h == 0 ? 1 : h, name};
}

}  // namespace mpp
