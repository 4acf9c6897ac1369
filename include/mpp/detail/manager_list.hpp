// mpp — SharedList's implementation (declared in manager.hpp, which includes this file).
#pragma once

namespace mpp {

template <class T>
template <class X>
auto SharedList<T>::Proxy::operator[](X&& x) const
    -> decltype(std::declval<T&>()[std::forward<X>(x)]) {
  return detail::Nest::at(value(), std::forward<X>(x));
}

template <class T>
bool SharedList<T>::iterator::load() const {
  if (cur_) return true;
  Bytes b;
  const bool found = l_->read("iterate", [&] {
    const auto items = l_->core().items();
    if (pos_ >= items.size()) return false;
    const detail::ByteSpan item = l_->arena().block_bytes(items[pos_]);
    b.assign(item.begin(), item.end());
    return true;
  });
  if (!found) return false;
  cur_.emplace(l_->decode(b, pos_));  // outside the read: decoding a handle opens its manager
  return true;
}

template <class T>
auto SharedList<T>::iterator::operator*() const -> reference {
  if (!load())
    detail::fail<IndexError>(
        "list '{}' of manager '{}' has no item {} (it shrank during the iteration, or the "
        "iteration is at its end)",
        l_->ref_.name, l_->ref_.manager(), pos_);
  return *cur_;
}

template <class T>
void SharedList<T>::append(const T& v) {
  const detail::ByteSpan b = detail::encode_into(v, detail::scratch(1));
  detail::shm::Tx tx(arena(), ref_.deadline(), "append", &root()->seq);
  Core c = core();
  c.push_back(tx, c.make_item(tx, b));
  tx.commit();
}

template <class T>
template <class Range>
void SharedList<T>::extend(const Range& items) {
  constexpr std::size_t kBatch = 65'536;
  auto it = std::begin(items);
  const auto end = std::end(items);
  Bytes buf;
  while (it != end) {
    detail::shm::Tx tx(arena(), ref_.deadline(), "extend", &root()->seq);
    Core c = core();
    for (std::size_t n = 0; n < kBatch && it != end; ++n, ++it)
      c.push_back(tx, c.make_item(tx, detail::encode_into(static_cast<const T&>(*it), buf)));
    tx.commit();
  }
}

template <class T>
void SharedList<T>::insert(std::int64_t i, const T& v) {
  const detail::ByteSpan b = detail::encode_into(v, detail::scratch(1));
  detail::shm::Tx tx(arena(), ref_.deadline(), "insert", &root()->seq);
  Core c = core();
  const auto n = static_cast<std::int64_t>(c.size());
  if (i < 0) i = std::max<std::int64_t>(0, i + n);
  if (i > n) i = n;
  c.insert(tx, static_cast<std::uint64_t>(i), c.make_item(tx, b));
  tx.commit();
}

template <class T>
T SharedList<T>::pop(std::int64_t i) {
  Bytes v;
  std::uint64_t at = 0;
  {
    detail::shm::Tx tx(arena(), ref_.deadline(), "pop", &root()->seq);
    Core c = core();
    at = normalize(i, c.size(), "pop");
    // Copied under the lock, decoded after it (decoding a handle opens the manager).
    const detail::ByteSpan b = c.item(at);
    v.assign(b.begin(), b.end());
    c.erase(tx, at);
    tx.commit();
  }
  return decode(v, at);
}

template <class T>
void SharedList<T>::remove(const T& v) {
  Bytes b = mpp::encode(v);
  detail::shm::Tx tx(arena(), ref_.deadline(), "remove", &root()->seq);
  Core c = core();
  const auto items = c.items();
  for (std::uint64_t i = 0; i < items.size(); ++i) {
    if (detail::same_bytes(arena().block_bytes(items[i]), b)) {
      c.erase(tx, i);
      tx.commit();
      return;
    }
  }
  detail::fail<ValueError>("remove(x): x not in list '{}' of manager '{}'", ref_.name,
                           ref_.manager());
}

template <class T>
std::size_t SharedList<T>::index(const T& v, std::int64_t start, std::int64_t stop) const {
  const Bytes b = mpp::encode(v);
  const auto r = read("index", [&]() -> std::int64_t {
    const auto items = core().items();
    const auto n = static_cast<std::int64_t>(items.size());
    const auto [lo, hi] = detail::clamp_range(start, stop, n);
    for (std::int64_t i = lo; i < hi; ++i)
      if (detail::same_bytes(arena().block_bytes(items[static_cast<std::size_t>(i)]), b)) return i;
    return -1;
  });
  if (r < 0)
    detail::fail<ValueError>("index(x): x not in list '{}' of manager '{}'", ref_.name,
                             ref_.manager());
  return static_cast<std::size_t>(r);
}

template <class T>
std::size_t SharedList<T>::count(const T& v) const {
  const Bytes b = mpp::encode(v);
  return read("count", [&] {
    std::size_t n = 0;
    for (std::uint64_t off : core().items()) n += detail::same_bytes(arena().block_bytes(off), b);
    return n;
  });
}

template <class T>
template <class Compare>
void SharedList<T>::sort(Compare comp, bool reverse) {
  detail::shm::Tx tx(arena(), ref_.deadline(), "sort", &root()->seq);
  Core c = core();
  const auto items = c.items();
  std::vector<std::pair<T, std::uint64_t>> v;
  v.reserve(items.size());
  for (std::uint64_t i = 0; i < items.size(); ++i)
    v.emplace_back(decode(arena().block_bytes(items[i]), i), items[i]);
  std::stable_sort(v.begin(), v.end(), [&](const auto& a, const auto& b) {
    return reverse ? comp(b.first, a.first) : comp(a.first, b.first);
  });
  std::vector<std::uint64_t> order;
  order.reserve(v.size());
  for (auto& p : v) order.push_back(p.second);
  c.reorder(tx, order);
  tx.commit();
}

template <class T>
void SharedList<T>::reverse() {
  detail::shm::Tx tx(arena(), ref_.deadline(), "reverse", &root()->seq);
  Core c = core();
  const auto items = c.items();
  std::vector<std::uint64_t> order(items.rbegin(), items.rend());
  c.reorder(tx, order);
  tx.commit();
}

template <class T>
T SharedList<T>::get(std::int64_t i) const {
  std::uint64_t n = 0;
  auto v = read("get", [&]() -> std::optional<T> {
    const auto items = core().items();
    n = items.size();
    const std::int64_t j = i < 0 ? i + static_cast<std::int64_t>(n) : i;
    if (j < 0 || static_cast<std::uint64_t>(j) >= n) return std::nullopt;
    const auto at = static_cast<std::uint64_t>(j);
    return decode(arena().block_bytes(items[at]), at);
  });
  if (!v) normalize(i, n, "index");  // throws IndexError
  return std::move(*v);
}

template <class T>
void SharedList<T>::set(std::int64_t i, const T& v) {
  const detail::ByteSpan b = detail::encode_into(v, detail::scratch(1));
  detail::shm::Tx tx(arena(), ref_.deadline(), "assign", &root()->seq);
  Core c = core();
  const std::uint64_t at = normalize(i, c.size(), "assignment");
  c.assign(tx, at, c.make_item(tx, b));
  tx.commit();
}

template <class T>
std::vector<T> SharedList<T>::slice(std::int64_t start, std::int64_t stop,
                                    std::int64_t step) const {
  if (step == 0) detail::fail<ValueError>("slice step cannot be zero");
  return read("slice", [&] {
    const auto items = core().items();
    std::vector<T> out;
    for (std::int64_t i : detail::slice_indices(start, stop, step, items.size())) {
      const auto at = static_cast<std::uint64_t>(i);
      out.push_back(decode(arena().block_bytes(items[at]), at));
    }
    return out;
  });
}

template <class T>
void SharedList<T>::erase(std::int64_t start, std::int64_t stop, std::int64_t step) {
  if (step == 0) detail::fail<ValueError>("slice step cannot be zero");
  detail::shm::Tx tx(arena(), ref_.deadline(), "delete a slice", &root()->seq);
  Core c = core();
  const auto items = c.items();
  std::vector<bool> drop(items.size());
  for (std::int64_t i : detail::slice_indices(start, stop, step, items.size()))
    drop[static_cast<std::size_t>(i)] = true;
  std::vector<std::uint64_t> keep;
  for (std::uint64_t i = 0; i < items.size(); ++i) {
    if (drop[i])
      tx.free(items[i]);
    else
      keep.push_back(items[i]);
  }
  c.reorder(tx, keep);
  tx.commit();
}

template <class T>
std::size_t SharedList<T>::size() const {
  return read("size", [&] { return static_cast<std::size_t>(core().size()); });
}

template <class T>
void SharedList<T>::clear() {
  std::vector<std::uint64_t> blocks;
  {
    detail::shm::Tx tx(arena(), ref_.deadline(), "clear", &root()->seq);
    Core c = core();
    const auto items = c.items();
    blocks.assign(items.begin(), items.end());
    tx.put_once(&c.root()->size, std::uint64_t{0});
    tx.commit();
  }
  detail::free_blocks(arena(), ref_.deadline(), blocks);
}

template <class T>
std::vector<T> SharedList<T>::to_vector() const {
  return read("to_vector", [&] {
    std::vector<T> out;
    const auto items = core().items();
    for (std::uint64_t i = 0; i < items.size(); ++i)
      out.push_back(decode(arena().block_bytes(items[i]), i));
    return out;
  });
}

template <class T>
SharedList<T>& SharedList<T>::operator*=(std::int64_t n) {
  if (n <= 0) {
    clear();
    return *this;
  }
  detail::shm::Tx tx(arena(), ref_.deadline(), "repeat", &root()->seq);
  Core c = core();
  const auto span = c.items();
  const std::vector<std::uint64_t> items(span.begin(), span.end());
  for (std::int64_t r = 1; r < n; ++r)
    for (std::uint64_t off : items) c.push_back(tx, c.make_item(tx, arena().block_bytes(off)));
  tx.commit();
  return *this;
}

template <class T>
std::vector<T> SharedList<T>::operator*(std::int64_t n) const {
  const auto once = to_vector();
  std::vector<T> out;
  for (std::int64_t r = 0; r < n; ++r) out.insert(out.end(), once.begin(), once.end());
  return out;
}

template <class T>
std::string SharedList<T>::repr() const {
  const detail::ReprDepth depth;
  if (depth.too_deep()) return fmt::format("<SharedList '{}' [...]>", ref_.name);
  std::string out = fmt::format("<SharedList '{}' [", ref_.name);
  const char* sep = "";
  for (const T& v : to_vector()) {
    out += sep + detail::repr(v);
    sep = ", ";
  }
  return out + "]>";
}

template <class T>
T SharedList<T>::decode(detail::ByteSpan b, std::uint64_t i) const {
  return detail::decode_item<T>(b, [&] {
    return fmt::format("item {} of list '{}' of manager '{}'", i, ref_.name, ref_.manager());
  });
}

template <class T>
std::uint64_t SharedList<T>::normalize(std::int64_t i, std::uint64_t size, const char* what) const {
  const auto n = static_cast<std::int64_t>(size);
  const std::int64_t j = i < 0 ? i + n : i;
  if (j < 0 || j >= n)
    detail::fail<IndexError>(
        "list {} index {} out of range for list '{}' of manager '{}' ({} items)", what, i,
        ref_.name, ref_.manager(), n);
  return static_cast<std::uint64_t>(j);
}

}  // namespace mpp
