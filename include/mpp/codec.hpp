// mpp — how a T becomes bytes and back: the C++ stand-in for pickle.
// Trivially copyable types are copied as bytes; standard containers, strings, optional, variant,
// tuples and user types with serialize() go through cereal with a bounds-checked binary archive;
// users may specialise mpp::codec<T>. Only data crosses processes, never code. Decoding checks
// every length against the buffer and throws CorruptedError instead of over-reading.
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
/// Types copied as raw bytes: trivially copyable and not a pointer (a pointer means nothing in
/// another process).
template <class T>
concept RawEncodable =
    std::is_trivially_copyable_v<T> && !std::is_pointer_v<T> && !std::is_member_pointer_v<T>;
/// Whether the elements of a standard container, optional, variant, pair or tuple T can go through
/// cereal too: cereal accepts std::vector<X> for any X and fails deep inside its headers when X
/// cannot be saved, where this check lets mpp::encode's static_assert name the type instead.
/// True for every other type (cereal's own check decides).
template <class T>
struct cereal_elements_encodable : std::true_type {};
/// Types that cereal can save and load through our archives, elements included.
template <class T>
concept CerealEncodable = cereal::traits::is_output_serializable<T, CodecOutputArchive>::value &&
                          cereal::traits::is_input_serializable<T, CodecInputArchive>::value &&
                          std::is_default_constructible_v<T> && !std::is_pointer_v<T> &&
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
template <class K, class H, class E, class A>
struct cereal_elements_encodable<std::unordered_set<K, H, E, A>>
    : std::bool_constant<CerealEncodable<K>> {};
template <class K, class V, class C, class A>
struct cereal_elements_encodable<std::map<K, V, C, A>>
    : std::bool_constant<all_cereal_encodable<K, V>> {};
template <class K, class V, class H, class E, class A>
struct cereal_elements_encodable<std::unordered_map<K, V, H, E, A>>
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
}  // namespace detail

/// The codec of T. The primary template is empty (T cannot cross processes); specialise it for
/// your own types with `static void encode(const T&, Bytes&)` and `static T decode(span)`.
template <class T>
struct codec {};

/// Trivially copyable T: the bytes of the object.
template <class T>
requires detail::RawEncodable<T>
struct codec<T> {
  /// Name of the encoding (part of the type fingerprint).
  static constexpr std::string_view kind = "raw";
  /// Appends the bytes of `v` to `out`.
  static void encode(const T& v, Bytes& out) {
    const auto* p = reinterpret_cast<const std::byte*>(std::addressof(v));
    out.insert(out.end(), p, p + sizeof(T));
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

/// Other types cereal can serialise (std containers, strings, optional, variant, user types with
/// serialize()): a bounds-checked cereal binary archive.
template <class T>
requires(!detail::RawEncodable<T> && detail::CerealEncodable<T>) struct codec<T> {
  /// Name of the encoding (part of the type fingerprint).
  static constexpr std::string_view kind = "cereal";
  /// Appends the encoding of `v` to `out`.
  static void encode(const T& v, Bytes& out) {
    detail::CodecOutputArchive ar(out);
    ar(v);
  }
  //!Returns: the T encoded in `in`, which must be consumed exactly.
  //!Throws: CorruptedError for a truncated, oversized or malformed buffer.
  static T decode(std::span<const std::byte> in) {
    T v{};
    try {
      detail::CodecInputArchive ar(in);
      ar(v);
      if (ar.remaining() != 0)
        detail::fail<CorruptedError>("{} trailing bytes after an encoded value", ar.remaining());
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {  // cereal::Exception, length_error, bad_alloc
      detail::fail<CorruptedError>("cannot decode a value from {} bytes: {}", in.size(), e.what());
    }
    return v;
  }
};

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
  "pointer), cereal cannot save it or one of its elements, and mpp::codec<T> is not "        \
  "specialised for it. Make it trivially copyable, give it a cereal serialize() member, or " \
  "specialise mpp::codec<T>"

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
