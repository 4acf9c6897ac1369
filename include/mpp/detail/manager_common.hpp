// mpp — what the Manager's typed containers share (manager.hpp declares them): the mapping every
// handle holds, scratch encoding, item decoding with a useful error for a vanished handle, Python
// index and slice arithmetic, and Python-like reprs of items.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "../codec.hpp"
#include "../errors.hpp"
#include "../segment.hpp"
#include "../timeout.hpp"
#include "manager_containers.hpp"
#include "shm_alloc.hpp"

namespace mpp::detail {

using shm::ByteSpan;

/// What a named container of a manager is.
enum class ObjectKind : std::uint32_t { dict = 1, list = 2, ns = 3, object = 4 };

inline const char* object_kind_name(std::uint32_t k) noexcept {
  switch (k) {
    case 1:
      return "dict";
    case 2:
      return "list";
    case 3:
      return "Namespace";
    case 4:
      return "object";
  }
  return "unknown";
}

/// A manager mapping shared by every handle made from it.
struct ManagerCore {
  std::shared_ptr<Segment> seg;
  shm::Arena arena;
  Timeout timeout;

  Deadline deadline() const noexcept { return Deadline::from(timeout); }
  const std::string& name() const noexcept { return seg->name(); }
};

/// One container of a manager: the shared mapping, its root block and its name.
struct ObjectRef {
  std::shared_ptr<ManagerCore> core;
  std::uint64_t root = 0;
  std::string name;

  shm::Arena& arena() const noexcept { return core->arena; }
  Deadline deadline() const noexcept { return core->deadline(); }
  const std::string& manager() const noexcept { return core->name(); }
};

/// Per-thread scratch buffers for encoding keys and values (no allocation per call).
inline Bytes& scratch(int i) {
  thread_local Bytes buf[2];
  return buf[i];
}

template <class T>
ByteSpan encode_into(const T& v, Bytes& out) {
  if constexpr (RawEncodable<T> && requires { codec<T>::kind; }) {
    if constexpr (codec<T>::kind == std::string_view("raw")) {  // the bytes of v, no insert()
      out.resize(sizeof(T));
      std::memcpy(out.data(), std::addressof(v), sizeof(T));
      return {out.data(), out.size()};
    }
  }
  out.clear();
  codec<T>::encode(v, out);
  return {out.data(), out.size()};
}

/// The key's hash as the dict's index uses it.
inline std::uint64_t hash_of(ByteSpan key) noexcept {
  return shm::hash_bytes(key.data(), key.size());
}

/// True if the two byte strings are equal (how list items compare).
inline bool same_bytes(ByteSpan a, ByteSpan b) noexcept {
  return a.size() == b.size() && (b.empty() || std::memcmp(a.data(), b.data(), b.size()) == 0);
}

template <class K>
std::string key_text(const K& k) {
  if constexpr (fmt::is_formattable<K>::value)
    return fmt::format(" {}", k);
  else
    return {};
}

//!Returns: the item decoded from `bytes`. Throws: what the codec throws; a NotFoundError (an item
//! that is a handle whose object is gone) names the item by `where()` and says how to keep it.
template <class T, class Where>
T decode_item(ByteSpan bytes, Where&& where) {
  try {
    return mpp::decode<T>(bytes);
  } catch (const NotFoundError& e) {
    throw NotFoundError(fmt::format(
        "{} is a handle to an object that no longer exists ({}). The handle that created it was "
        "destroyed, which removed its name: keep that handle alive as long as the container "
        "refers to it, or create the object named with the persistent option (e.g. "
        "Queue<T>::create(name, {{.persistent = true}}))",
        where(), e.what()));
  }
}

/// Frees blocks unlinked by a committed clear(), in bounded transactions (a crash in between
/// only leaks the rest).
inline void free_blocks(shm::Arena& a, const Deadline& dl, const std::vector<std::uint64_t>& v) {
  constexpr std::size_t kChunk = 50'000;
  for (std::size_t i = 0; i < v.size(); i += kChunk) {
    shm::Tx tx(a, dl, "free cleared items");
    for (std::size_t j = i; j < std::min(v.size(), i + kChunk); ++j) tx.free_now(v[j]);
    tx.commit();
  }
}

/// Python's range [a, b) of list.index(x, a, b) clamped to a list of `n` items.
inline std::pair<std::int64_t, std::int64_t> clamp_range(std::int64_t a, std::int64_t b,
                                                         std::int64_t n) {
  if (a < 0) a = std::max<std::int64_t>(0, a + n);
  if (b < 0) b = std::max<std::int64_t>(0, b + n);
  return {std::min(a, n), std::min(b, n)};
}

/// Python's slice.indices() followed by range().
inline std::vector<std::int64_t> slice_indices(std::int64_t start, std::int64_t stop,
                                               std::int64_t step, std::uint64_t size) {
  const auto n = static_cast<std::int64_t>(size);
  auto adjust = [&](std::int64_t v, std::int64_t lo, std::int64_t hi) {
    if (v < 0) v = std::max(v + n, lo);
    return std::min(v, hi);
  };
  std::vector<std::int64_t> out;
  if (step > 0) {
    const std::int64_t a = adjust(start, 0, n), b = adjust(stop, 0, n);
    for (std::int64_t i = a; i < b; i += step) out.push_back(i);
  } else {
    const std::int64_t a = adjust(start, -1, n - 1), b = adjust(stop, -1, n - 1);
    for (std::int64_t i = a; i > b; i += step) out.push_back(i);
  }
  return out;
}

/// What a value is stored as: a string literal or C string is a std::string, as in Python.
template <class T>
using stored_t =
    std::conditional_t<(std::is_array_v<T> ||
                        std::is_pointer_v<T>)&&std::is_convertible_v<const T&, std::string_view>,
                       std::string, T>;

/// Python's repr() of an item, as far as C++ knows it: strings quoted, bools True/False, what
/// fmt can format as fmt formats it, anything else by its type name.
template <class T>
std::string repr(const T& v) {
  if constexpr (std::is_same_v<T, bool>) {
    return v ? "True" : "False";
  } else if constexpr (std::is_convertible_v<const T&, std::string_view>) {
    const std::string_view s(v);
    std::string out = "'";
    for (char c : s) {
      if (c == '\'' || c == '\\') out += '\\';
      out += c;
    }
    return out + "'";
  } else if constexpr (fmt::is_formattable<T>::value) {
    return fmt::format("{}", v);
  } else {
    return fmt::format("<{}>", type_info<T>().name);
  }
}

/// Bounds the nesting of reprs of containers of containers (a list that holds itself).
class ReprDepth {
 public:
  ReprDepth() noexcept { ++depth(); }
  ~ReprDepth() { --depth(); }
  ReprDepth(const ReprDepth&) = delete;
  ReprDepth& operator=(const ReprDepth&) = delete;
  /// True when this repr is nested too deep to show its items.
  bool too_deep() const noexcept { return depth() > 8; }

 private:
  static int& depth() noexcept {
    thread_local int d = 0;
    return d;
  }
};

/// How a Namespace formats an attribute it knows only by its type fingerprint: one entry per
/// type that this program sets or gets as an attribute.
using ReprFn = std::string (*)(ByteSpan);
inline std::map<std::uint64_t, ReprFn>& repr_table() {
  static std::map<std::uint64_t, ReprFn> t;
  return t;
}
inline std::mutex& repr_mutex() {
  static std::mutex m;
  return m;
}
template <class T>
bool register_repr() {
  const std::scoped_lock lock(repr_mutex());
  repr_table().emplace(type_info<T>().fingerprint,
                       [](ByteSpan b) { return repr(mpp::decode<T>(b)); });
  return true;
}
/// Registered at start-up for every T that the program uses as a Namespace attribute.
template <class T>
inline const bool repr_registered = register_repr<T>();

//!Returns: the repr of an attribute stored with fingerprint `fp`, or a placeholder for a type
//! this program never uses.
inline std::string repr_of(std::uint64_t fp, ByteSpan b) {
  ReprFn f = nullptr;
  {
    const std::scoped_lock lock(repr_mutex());
    if (auto it = repr_table().find(fp); it != repr_table().end()) f = it->second;
  }
  return f != nullptr ? f(b) : fmt::format("<{} bytes>", b.size());
}

}  // namespace mpp::detail

namespace mpp::detail {
/// How c[a][b] reaches item b of the container handle stored at c[a]: the handle is kept alive
/// by the proxy it returns.
struct Nest {
  template <class H, class X>
  static auto at(H h, X&& x) {
    auto p = std::make_shared<H>(std::move(h));
    return p->kept(p, std::forward<X>(x));
  }
};
}  // namespace mpp::detail
