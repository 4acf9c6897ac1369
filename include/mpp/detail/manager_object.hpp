// mpp — Namespace's and SharedObject's implementation (declared in manager.hpp, which includes
// this file). A Namespace value is {u64 type fingerprint, encoded value}; a SharedObject is a
// list of exactly one item, the encoded object.
#pragma once

namespace mpp {

template <class T>
void Namespace::set(std::string_view attr, const T& v) {
  using S = detail::stored_t<T>;
  if constexpr (!std::is_same_v<S, T>) {
    set<S>(attr, S(v));
  } else {
    (void)detail::repr_registered<T>;
    const detail::ByteSpan key = detail::encode_into(std::string(attr), detail::scratch(0));
    Bytes& val = detail::scratch(1);
    val.clear();
    const std::uint64_t fp = type_info<T>().fingerprint;
    val.resize(8);
    std::memcpy(val.data(), &fp, 8);
    codec<T>::encode(v, val);
    detail::shm::Tx tx(arena(), ref_.deadline(), "set an attribute", &root()->seq);
    core().set(tx, key, detail::hash_of(key), val);
    tx.commit();
  }
}

template <class T>
T Namespace::get(std::string_view attr) const {
  auto v = try_get<T>(attr);
  if (!v)
    detail::fail<KeyError>("Namespace '{}' of manager '{}' has no attribute '{}'", ref_.name,
                           ref_.manager(), attr);
  return std::move(*v);
}

inline bool Namespace::contains(std::string_view attr) const {
  const detail::ByteSpan key = detail::encode_into(std::string(attr), detail::scratch(0));
  const std::uint64_t h = detail::hash_of(key);
  return read([&] { return core().find(key, h).has_value(); });
}

inline bool Namespace::erase(std::string_view attr) {
  const detail::ByteSpan key = detail::encode_into(std::string(attr), detail::scratch(0));
  const std::uint64_t h = detail::hash_of(key);
  detail::shm::Tx tx(arena(), ref_.deadline(), "delete an attribute", &root()->seq);
  auto hit = core().find(key, h);
  if (!hit) return false;
  core().erase(tx, *hit);
  tx.commit();
  return true;
}

inline std::vector<std::string> Namespace::names() const {
  return read([&] {
    std::vector<std::string> out;
    core().for_each(
        [&](detail::ByteSpan k, detail::ByteSpan) { out.push_back(mpp::decode<std::string>(k)); });
    return out;
  });
}

inline std::string Namespace::repr() const {
  // Copied under the read, formatted after it (formatting a handle opens its manager).
  auto attrs = read([&] {
    std::vector<std::pair<std::string, Bytes>> out;
    core().for_each([&](detail::ByteSpan k, detail::ByteSpan v) {
      out.emplace_back(mpp::decode<std::string>(k), Bytes(v.begin(), v.end()));
    });
    return out;
  });
  std::string out = "Namespace(";
  const char* sep = "";
  for (const auto& [attr, v] : attrs) {
    if (attr.starts_with('_')) continue;
    if (v.size() < 8) detail::shm::torn(arena(), "Namespace attribute");
    std::uint64_t fp = 0;
    std::memcpy(&fp, v.data(), 8);
    out += fmt::format("{}{}={}", sep, attr, detail::repr_of(fp, detail::ByteSpan(v).subspan(8)));
    sep = ", ";
  }
  return out + ")";
}

template <class T>
std::optional<T> Namespace::try_get(std::string_view attr) const {
  (void)detail::repr_registered<T>;
  const detail::ByteSpan key = detail::encode_into(std::string(attr), detail::scratch(0));
  const std::uint64_t h = detail::hash_of(key);
  std::uint64_t stored = 0;
  auto v = read([&]() -> std::optional<T> {
    stored = 0;
    auto hit = core().find(key, h);
    if (!hit) return std::nullopt;
    if (hit->value.size() < 8) detail::shm::torn(arena(), "Namespace attribute");
    std::memcpy(&stored, hit->value.data(), 8);
    if (stored != type_info<T>().fingerprint) return std::nullopt;
    return detail::decode_item<T>(hit->value.subspan(8), [&] {
      return fmt::format("attribute '{}' of Namespace '{}' of manager '{}'", attr, ref_.name,
                         ref_.manager());
    });
  });
  if (!v && stored != 0 && stored != type_info<T>().fingerprint)
    detail::fail<TypeMismatchError>(
        "attribute '{}' of Namespace '{}' (manager '{}') holds another type than '{}'", attr,
        ref_.name, ref_.manager(), type_info<T>().name);
  return v;
}

template <class T>
template <class F, class... A>
std::decay_t<std::invoke_result_t<F, T&, A...>> SharedObject<T>::call(F&& fn, A&&... args) {
  using R = std::decay_t<std::invoke_result_t<F, T&, A...>>;
  detail::shm::Tx tx(arena(), ref_.deadline(), "call a method", &core().root()->seq);
  Core c = core();
  const detail::ByteSpan before = bytes();
  T obj = detail::decode_item<T>(before, [&] {
    return fmt::format("object '{}' of manager '{}'", ref_.name, ref_.manager());
  });
  // Stored back only if the call changed it: a const method costs no write.
  auto store = [&] {
    const detail::ByteSpan after = detail::encode_into(obj, detail::scratch(1));
    if (!detail::same_bytes(before, after)) c.assign(tx, 0, c.make_item(tx, after));
    tx.commit();
  };
  if constexpr (std::is_void_v<R>) {
    std::invoke(std::forward<F>(fn), obj, std::forward<A>(args)...);
    store();
  } else {
    R r = std::invoke(std::forward<F>(fn), obj, std::forward<A>(args)...);
    store();
    return r;
  }
}

template <class T>
T SharedObject<T>::get() const {
  return detail::shm::seq_read(arena(), core().root()->seq, ref_.deadline(), "get", [&] {
    return detail::decode_item<T>(bytes(), [&] {
      return fmt::format("object '{}' of manager '{}'", ref_.name, ref_.manager());
    });
  });
}

template <class T>
void SharedObject<T>::set(const T& v) {
  const detail::ByteSpan b = detail::encode_into(v, detail::scratch(1));
  detail::shm::Tx tx(arena(), ref_.deadline(), "set an object", &core().root()->seq);
  Core c = core();
  c.assign(tx, 0, c.make_item(tx, b));
  tx.commit();
}

template <class T>
std::string SharedObject<T>::repr() const {
  if constexpr (fmt::is_formattable<T>::value)
    return fmt::format("<SharedObject '{}' {}>", ref_.name, detail::repr(get()));
  else
    return fmt::format("<SharedObject '{}' of type {}>", ref_.name, type_info<T>().name);
}

template <class T>
detail::ByteSpan SharedObject<T>::bytes() const {
  const Core c = core();
  if (c.size() != 1) detail::shm::torn(arena(), "object");
  return c.item(0);
}

}  // namespace mpp
