// mpp — the one codec of a handle that crosses processes as its name (as Python pickles a
// multiprocessing lock, value or manager proxy): encode writes the name, decode opens it. Being a
// codec of its own, it also serves where the handle is nested (codec.hpp's OwnCodec): in a
// tuple, a vector, an optional or a user struct, as a Pool argument or a queue item.
#pragma once

#include <span>
#include <string>
#include <string_view>

#include "../codec.hpp"

namespace mpp::detail {

/// How a handle `H` is named and reopened. The default is `h.name()` and `H::open(name)`;
/// a handle that needs more (a kind check, or a manager container's two names) provides its own
/// policy with the same three members.
template <class H>
struct OpenByName {
  /// What crosses: the object's name.
  using name_type = std::string;
  /// The name under which another process reopens `h`.
  static decltype(auto) name_of(const H& h) { return h.name(); }
  /// `h` reopened in this process.
  static H open(const std::string& name) { return H::open(name); }
};

/// codec<H> for a handle that crosses as its name: the receiver opens the same object.
template <class H, class Policy = OpenByName<H>>
struct NameCodec {
  /// Name of the encoding (part of the type fingerprint).
  static constexpr std::string_view kind = "handle";
  /// Appends the object's name. Throws: what Policy::name_of throws (e.g. for a view of a state
  /// embedded in another object).
  static void encode(const H& h, Bytes& out) {
    codec<typename Policy::name_type>::encode(Policy::name_of(h), out);
  }
  //!Returns: the object opened by name. Throws: CorruptedError, NotFoundError, TypeMismatchError.
  static H decode(std::span<const std::byte> in) {
    return Policy::open(codec<typename Policy::name_type>::decode(in));
  }
};

}  // namespace mpp::detail
