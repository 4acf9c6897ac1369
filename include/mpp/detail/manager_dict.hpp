// mpp — SharedDict's implementation (declared in manager.hpp, which includes this file).
#pragma once

namespace mpp {

template <class K, class V>
template <class X>
auto SharedDict<K, V>::Proxy::operator[](X&& x) const
    -> decltype(std::declval<V&>()[std::forward<X>(x)]) {
  return detail::Nest::at(value(), std::forward<X>(x));
}

template <class K, class V>
bool SharedDict<K, V>::iterator::load() const {
  if (cur_) return true;
  enum class Found { item, end, changed };
  Bytes key, val;
  const Found f = d_->read("iterate", [&] {
    const detail::shm::DictView v = d_->core().view();
    if (v.count != count_) return Found::changed;
    for (std::uint64_t e = pos_; e < v.used; ++e) {
      const std::uint64_t kv = detail::shm::racy_load(&v.ent[e].kv);
      if (kv == 0) continue;
      auto [k, value] = d_->core().split(kv);
      key.assign(k.begin(), k.end());
      val.assign(value.begin(), value.end());
      pos_ = e;
      return Found::item;
    }
    pos_ = v.used;
    return Found::end;
  });
  if (f == Found::changed)
    detail::fail<RuntimeError>(
        "dict '{}' of manager '{}' changed size during iteration ({} items when it began); "
        "iterate over a snapshot (items()) to change the dict meanwhile",
        d_->ref_.name, d_->ref_.manager(), count_);
  if (f == Found::end) return false;
  // Decoded outside the read: decoding a handle opens its manager.
  cur_.emplace(d_->template decode<K>(key, "a key"), d_->template decode<V>(val, "a value"));
  return true;
}

template <class K, class V>
auto SharedDict<K, V>::iterator::operator*() const -> reference {
  if (!load())
    detail::fail<IndexError>("dereferenced the end of an iteration over dict '{}' of manager '{}'",
                             d_->ref_.name, d_->ref_.manager());
  return *cur_;
}

template <class K, class V>
auto SharedDict<K, V>::iterator::operator++() -> iterator& {
  if (load()) ++pos_;
  cur_.reset();
  return *this;
}

template <class K, class V>
std::optional<V> SharedDict<K, V>::get(const K& k) const {
  const detail::ByteSpan key = detail::encode_into(k, detail::scratch(0));
  const std::uint64_t h = detail::hash_of(key);
  return read("get", [&]() -> std::optional<V> {
    auto hit = core().find(key, h);
    if (!hit) return std::nullopt;
    return decode<V>(hit->value, "a value");
  });
}

template <class K, class V>
void SharedDict<K, V>::set(const K& k, const V& v) {
  const detail::ByteSpan key = detail::encode_into(k, detail::scratch(0));
  const detail::ByteSpan val = detail::encode_into(v, detail::scratch(1));
  detail::shm::Tx tx(arena(), ref_.deadline(), "set an item", &root()->seq);
  core().set(tx, key, detail::hash_of(key), val);
  tx.commit();
}

template <class K, class V>
bool SharedDict<K, V>::contains(const K& k) const {
  const detail::ByteSpan key = detail::encode_into(k, detail::scratch(0));
  const std::uint64_t h = detail::hash_of(key);
  return read("contains", [&] { return core().find(key, h).has_value(); });
}

template <class K, class V>
V SharedDict<K, V>::setdefault(const K& k, const V& def) {
  Bytes key = mpp::encode(k);
  const std::uint64_t h = detail::hash_of(key);
  Bytes found;
  {
    detail::shm::Tx tx(arena(), ref_.deadline(), "setdefault", &root()->seq);
    if (auto hit = core().find(key, h)) {
      // Decoded after the lock is released: decoding a container handle opens the manager.
      found.assign(hit->value.begin(), hit->value.end());
      tx.commit();
    } else {
      const detail::ByteSpan val = detail::encode_into(def, detail::scratch(1));
      core().insert_new(tx, key, h, val);
      tx.commit();
      return def;
    }
  }
  return decode<V>(found, "a value");
}

template <class K, class V>
std::pair<K, V> SharedDict<K, V>::popitem() {
  Bytes k, v;
  {
    detail::shm::Tx tx(arena(), ref_.deadline(), "popitem", &root()->seq);
    auto hit = core().last();
    if (!hit)
      detail::fail<KeyError>("popitem(): dict '{}' of manager '{}' is empty", ref_.name,
                             ref_.manager());
    // Copied under the lock, decoded after it (decoding a handle opens the manager).
    k.assign(hit->key.begin(), hit->key.end());
    v.assign(hit->value.begin(), hit->value.end());
    core().erase(tx, *hit);
    tx.commit();
  }
  return {decode<K>(k, "a key"), decode<V>(v, "a value")};
}

template <class K, class V>
template <class Range>
void SharedDict<K, V>::update(const Range& items) {
  constexpr std::size_t kBatch = 65'536;
  auto it = std::begin(items);
  const auto end = std::end(items);
  Bytes key, val;
  while (it != end) {
    detail::shm::Tx tx(arena(), ref_.deadline(), "update", &root()->seq);
    for (std::size_t n = 0; n < kBatch && it != end; ++n, ++it) {
      const auto& [k, v] = *it;
      detail::encode_into(static_cast<const K&>(k), key);
      detail::encode_into(static_cast<const V&>(v), val);
      core().set(tx, key, detail::hash_of(key), val);
    }
    tx.commit();
  }
}

template <class K, class V>
template <class F>
V SharedDict<K, V>::update_with(const K& k, F&& fn, const V& def) {
  Bytes key = mpp::encode(k);
  const std::uint64_t h = detail::hash_of(key);
  detail::shm::Tx tx(arena(), ref_.deadline(), "update_with", &root()->seq);
  auto hit = core().find(key, h);
  V nv = std::invoke(fn, hit ? decode<V>(hit->value, "a value") : def);
  Bytes val = mpp::encode(nv);
  if (hit)
    core().replace(tx, *hit, val);
  else
    core().insert_new(tx, key, h, val);
  tx.commit();
  return nv;
}

template <class K, class V>
std::size_t SharedDict<K, V>::size() const {
  return read("size", [&] { return static_cast<std::size_t>(core().size()); });
}

template <class K, class V>
void SharedDict<K, V>::clear() {
  std::vector<std::uint64_t> blocks;
  {
    detail::shm::Tx tx(arena(), ref_.deadline(), "clear", &root()->seq);
    blocks = core().clear(tx);
    tx.commit();
  }
  detail::free_blocks(arena(), ref_.deadline(), blocks);
}

template <class K, class V>
std::vector<K> SharedDict<K, V>::keys() const {
  return read("keys", [&] {
    std::vector<K> out;
    core().for_each(
        [&](detail::ByteSpan k, detail::ByteSpan) { out.push_back(decode<K>(k, "a key")); });
    return out;
  });
}

template <class K, class V>
std::vector<V> SharedDict<K, V>::values() const {
  return read("values", [&] {
    std::vector<V> out;
    core().for_each(
        [&](detail::ByteSpan, detail::ByteSpan v) { out.push_back(decode<V>(v, "a value")); });
    return out;
  });
}

template <class K, class V>
std::vector<std::pair<K, V>> SharedDict<K, V>::items() const {
  return read("items", [&] {
    std::vector<std::pair<K, V>> out;
    core().for_each([&](detail::ByteSpan k, detail::ByteSpan v) {
      out.emplace_back(decode<K>(k, "a key"), decode<V>(v, "a value"));
    });
    return out;
  });
}

template <class K, class V>
std::string SharedDict<K, V>::repr() const {
  const detail::ReprDepth depth;
  if (depth.too_deep()) return fmt::format("<SharedDict '{}' {{...}}>", ref_.name);
  std::string out = fmt::format("<SharedDict '{}' {{", ref_.name);
  const char* sep = "";
  for (const auto& [k, v] : items()) {
    out += fmt::format("{}{}: {}", sep, detail::repr(k), detail::repr(v));
    sep = ", ";
  }
  return out + "}>";
}

template <class K, class V>
template <class T>
T SharedDict<K, V>::decode(detail::ByteSpan b, std::string_view what) const {
  return detail::decode_item<T>(b, [&] {
    return fmt::format("{} of dict '{}' of manager '{}'", what, ref_.name, ref_.manager());
  });
}

template <class K, class V>
std::optional<V> SharedDict<K, V>::take(const K& k) {
  const detail::ByteSpan key = detail::encode_into(k, detail::scratch(0));
  const std::uint64_t h = detail::hash_of(key);
  Bytes v;
  {
    detail::shm::Tx tx(arena(), ref_.deadline(), "pop", &root()->seq);
    auto hit = core().find(key, h);
    if (!hit) return std::nullopt;  // ~Tx releases the lock (nothing was logged)
    // Copied under the lock, decoded after it (decoding a handle opens the manager).
    v.assign(hit->value.begin(), hit->value.end());
    core().erase(tx, *hit);
    tx.commit();
  }
  return decode<V>(v, "a value");
}

template <class K, class V>
void SharedDict<K, V>::missing(const K& k) const {
  detail::fail<KeyError>("key{} not found in dict '{}' of manager '{}'", detail::key_text(k),
                         ref_.name, ref_.manager());
}

}  // namespace mpp
