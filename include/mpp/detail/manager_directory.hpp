// mpp — Manager's implementation (declared in manager.hpp, which includes this file): the
// segment's arena and the directory of named containers.
#pragma once

namespace mpp {

inline Manager::Manager(detail::Segment seg, const ManagerOptions& opts)
    : core_(std::make_shared<detail::ManagerCore>()) {
  core_->seg = std::make_shared<detail::Segment>(std::move(seg));
  const detail::Segment& s = *core_->seg;
  const auto* file = reinterpret_cast<const std::byte*>(&s.header());
  const auto file_end = static_cast<std::uint64_t>(s.payload() - file) + s.payload_size();
  // Every mapping of this segment computes the same identity (its creator and creation time):
  // how a thread that holds the lock recognises the manager when a decode reopens it.
  const std::uint64_t id = detail::shm::fmix64(s.header().creator.load(std::memory_order_relaxed) ^
                                               detail::shm::fmix64(s.header().created_unix_ms)) |
                           1;
  core_->arena = detail::shm::Arena(s.payload(), s.payload_size(), s.name(), file_end, id);
  core_->timeout = opts.timeout;
  core_->arena.validate();
}

inline detail::SegmentSpec Manager::spec(const ManagerOptions& opts) {
  detail::SegmentSpec s{Kind::manager, TypeInfo::none(), opts.capacity, 0};
  // Backed at creation: the arena header and the first part of the undo log; the rest of the
  // log and the heap are populated as they are reached (1 GiB by default).
  s.reserve = std::min(opts.capacity, detail::shm::Arena::reserved_bytes());
  return s;
}

template <class K, class V>
SharedDict<K, V> Manager::dict(std::string_view name) {
  const std::uint64_t type =
      (type_info<K>().fingerprint * 1099511628211ull) ^ type_info<V>().fingerprint;
  return SharedDict<K, V>(open_container(name, detail::ObjectKind::dict, type, [](auto& tx) {
    return detail::shm::DictCore::create(tx);
  }));
}

template <class T>
SharedList<T> Manager::list(std::string_view name) {
  return SharedList<T>(open_container(name, detail::ObjectKind::list, type_info<T>().fingerprint,
                                      [](auto& tx) { return detail::shm::ListCore::create(tx); }));
}

inline ::mpp::Namespace Manager::Namespace(std::string_view name) {
  return ::mpp::Namespace(open_container(name, detail::ObjectKind::ns, 0x6e616d65ull, [](auto& tx) {
    return detail::shm::DictCore::create(tx);
  }));
}

template <class T>
SharedObject<T> Manager::object(std::string_view name, const T& init) {
  const Bytes b = mpp::encode(init);
  return SharedObject<T>(
      open_container(name, detail::ObjectKind::object, type_info<T>().fingerprint, [&](auto& tx) {
        const std::uint64_t root = detail::shm::ListCore::create(tx);
        detail::shm::ListCore c(&tx.arena(), root);
        c.push_back(tx, c.make_item(tx, b));
        return root;
      }));
}

inline std::string Manager::auto_name(std::string_view kind) {
  auto& a = core_->arena;
  detail::shm::Tx tx(a, core_->deadline(), "name a container");
  const std::uint64_t n = a.header()->next_auto;
  tx.put(&a.header()->next_auto, n + 1);
  tx.commit();
  return fmt::format("{}#{}", kind, n);
}

namespace detail {
/// Throws InvalidArgument unless `name` can name a manager's container.
inline void check_container_name(std::string_view name) {
  if (name.empty() || name.size() >= shm::kObjectNameCapacity)
    fail<InvalidArgument>("container name '{}' must have 1 to {} characters", name,
                          shm::kObjectNameCapacity - 1);
  for (char c : name)
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
          c == '_' || c == '-' || c == '#'))
      fail<InvalidArgument>(
          "container name '{}': character {:?} is not allowed (use letters, digits, '.', '_' "
          "and '-')",
          name, c);
}
}  // namespace detail

template <class Make>
detail::ObjectRef Manager::open_container(std::string_view name, detail::ObjectKind kind,
                                          std::uint64_t type, Make&& make) {
  detail::check_container_name(name);
  auto& a = core_->arena;
  auto* h = a.header();
  if (a.held_by_this_thread()) {
    // A decode under this manager's lock (a container of containers read, sorted or updated)
    // reopens it: the directory cannot change while we hold the lock, so look it up directly.
    if (auto root = find_container(name, kind, type))
      return detail::ObjectRef{core_, *root, std::string(name)};
    detail::fail<Error>(
        "manager '{}': cannot create container '{}' while this thread holds the manager's lock "
        "(inside update_with(), call() or a decode); create it first",
        this->name(), name);
  }
  detail::shm::Tx tx(a, core_->deadline(), "create a container");
  if (auto root = find_container(name, kind, type)) {
    tx.commit();
    return detail::ObjectRef{core_, *root, std::string(name)};
  }
  const std::uint64_t n = detail::shm::racy_load(&h->dir_count);
  if (n >= detail::shm::kMaxObjects)
    detail::fail<Error>("manager '{}' already holds {} containers, the limit; reuse existing ones",
                        this->name(), detail::shm::kMaxObjects);
  const std::uint64_t root = make(tx);
  detail::shm::DirEntry de{};
  std::memcpy(de.name, name.data(), name.size());
  de.kind = static_cast<std::uint32_t>(kind);
  de.type = type;
  de.root = root;
  tx.put(&h->dir[n], de);
  tx.put(&h->dir_count, n + 1);
  tx.commit();
  return detail::ObjectRef{core_, root, std::string(name)};
}

// The root of container `name` if it exists (called with the lock held). Throws:
// TypeMismatchError for another kind or type, CorruptedError for a damaged directory.
inline std::optional<std::uint64_t> Manager::find_container(std::string_view name,
                                                            detail::ObjectKind kind,
                                                            std::uint64_t type) const {
  auto& a = core_->arena;
  const auto* h = a.header();
  const std::uint64_t n = detail::shm::racy_load(&h->dir_count);
  if (n > detail::shm::kMaxObjects) a.corrupted(fmt::format("directory count {} is invalid", n));
  for (std::uint64_t i = 0; i < n; ++i) {
    detail::shm::DirEntry e;  // one copy, checked and used (a peer may write the directory)
    std::memcpy(static_cast<void*>(&e), &h->dir[i], sizeof e);
    if (std::memchr(e.name, '\0', sizeof e.name) == nullptr)
      a.corrupted("unterminated container name");
    if (std::string_view(e.name) != name) continue;
    if (e.kind != static_cast<std::uint32_t>(kind))
      detail::fail<TypeMismatchError>("'{}' in manager '{}' is a {}, not a {}", name, this->name(),
                                      detail::object_kind_name(e.kind),
                                      detail::object_kind_name(static_cast<std::uint32_t>(kind)));
    if (e.type != type)
      detail::fail<TypeMismatchError>(
          "{} '{}' in manager '{}' was created with other element types",
          detail::object_kind_name(e.kind), name, this->name());
    return e.root;
  }
  return std::nullopt;
}

}  // namespace mpp
