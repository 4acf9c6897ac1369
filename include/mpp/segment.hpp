// mpp — named shared-memory segments with a validated header.
// Every shareable object lives in a Segment: a header (magic, layout version, kind, element type
// fingerprint, sizes, creator, init state) followed by the object's payload, then its attach
// table (one entry per process using it, shared by that process's handles).
// Creating is exclusive, opening validates every header field against the mapped size, and a
// half-built segment is waited for (bounded) unless its creator is known to have died.
#pragma once

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>

#include "codec.hpp"
#include "detail/fork_hooks.hpp"
#include "detail/liveness.hpp"
#include "detail/os.hpp"
#include "detail/wait.hpp"
#include "errors.hpp"
#include "options.hpp"

namespace mpp {

/// What a segment holds; stored in its header and checked by open().
enum class Kind : std::uint32_t {
  shared_memory = 1,
  lock,
  rlock,
  semaphore,
  bounded_semaphore,
  event,
  condition,
  barrier,
  value,
  array,
  pipe,
  queue,
  simple_queue,
  joinable_queue,
  manager,
  shareable_list,
  pool,
  process,
  test = 1000,
};

/// Human-readable name of a Kind (for messages and the `mpp ls` tool).
constexpr std::string_view kind_name(Kind k) noexcept {
  switch (k) {
    case Kind::shared_memory:
      return "SharedMemory";
    case Kind::lock:
      return "Lock";
    case Kind::rlock:
      return "RLock";
    case Kind::semaphore:
      return "Semaphore";
    case Kind::bounded_semaphore:
      return "BoundedSemaphore";
    case Kind::event:
      return "Event";
    case Kind::condition:
      return "Condition";
    case Kind::barrier:
      return "Barrier";
    case Kind::value:
      return "Value";
    case Kind::array:
      return "Array";
    case Kind::pipe:
      return "Pipe";
    case Kind::queue:
      return "Queue";
    case Kind::simple_queue:
      return "SimpleQueue";
    case Kind::joinable_queue:
      return "JoinableQueue";
    case Kind::manager:
      return "Manager";
    case Kind::shareable_list:
      return "ShareableList";
    case Kind::pool:
      return "Pool";
    case Kind::process:
      return "Process";
    case Kind::test:
      return "test";
  }
  return "unknown";
}

/// Longest accepted object name (portable across the backends' limits).
inline constexpr std::size_t kMaxNameLength = 100;

//!Effects: checks that `name` is a valid mpp object name: starts with "mpp.", at most
//! kMaxNameLength characters, only ASCII letters, digits, '.', '_' and '-'.
//!Throws: InvalidArgument naming the broken rule.
inline void validate_name(std::string_view name) {
  if (name.substr(0, 4) != "mpp.")
    detail::fail<InvalidArgument>("invalid object name '{}': names must start with \"mpp.\"", name);
  if (name.size() <= 4)
    detail::fail<InvalidArgument>("invalid object name '{}': nothing after the \"mpp.\" prefix",
                                  name);
  if (name.size() > kMaxNameLength)
    detail::fail<InvalidArgument>("invalid object name '{}...': {} characters, the limit is {}",
                                  name.substr(0, 20), name.size(), kMaxNameLength);
  for (char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '-';
    if (!ok)
      detail::fail<InvalidArgument>(
          "invalid object name '{}': character {:?} is not allowed (use letters, digits, '.', "
          "'_' and '-')",
          name, c);
  }
}

//!Effects: removes the name of the object `name`; processes that have it open keep using it.
//!Returns: false if there was no such object. Throws: InvalidArgument for a bad name.
inline bool unlink(std::string_view name) {
  validate_name(name);
  return detail::os::shm_remove(name);
}

namespace detail {

inline constexpr std::uint64_t kSegmentMagic = 0x316765737070'6d00ull;  // "\0mppseg1"
inline constexpr std::uint32_t kLayoutVersion = 2;
/// Entries in an attach table: the most processes that can use one object at the same time
/// (every handle of one object in one process shares one entry).
inline constexpr std::uint32_t kMaxAttach = 4096;
inline constexpr std::size_t kTypeNameCapacity = 128;
inline constexpr std::uint32_t kInitBuilding = 0;  // a fresh (zero-filled) segment
inline constexpr std::uint32_t kInitReady = 1;
/// SegmentHeader::flags: the object is meant to outlive its users (`mpp gc` keeps it).
inline constexpr std::uint32_t kSegmentPersistent = 1;

/// One entry of a segment's attach table: the packed ProcessRef of a process using the object,
/// 0 when free. Claimed, released and reaped (when its holder died) by CAS on the whole word.
/// The table follows the payload (SegmentHeader::attach_offset) and is used from entry 0 up:
/// only its first SegmentHeader::attach_used entries are ever read or written, so an object
/// with few users touches one page of it (tmpfs allocates the rest only if it is reached).
using AttachSlot = std::atomic<std::uint64_t>;
static_assert(AttachSlot::is_always_lock_free);

/// The first bytes of every segment. Standard layout, offsets only, no pointers.
struct SegmentHeader {
  std::atomic<std::uint32_t> init_state;  ///< kInitBuilding until the creator publishes
  std::uint32_t layout_version;
  std::uint64_t magic;
  std::uint32_t kind;
  std::uint32_t header_size;  ///< sizeof(SegmentHeader) of the creator
  std::uint64_t type_fingerprint;
  char type_name[kTypeNameCapacity];  ///< NUL-terminated
  std::uint64_t total_size;           ///< bytes in the segment
  std::uint64_t payload_offset;       ///< from the start of the segment, cache-line aligned
  std::uint64_t payload_size;
  std::uint64_t capacity;              ///< kind-specific (elements, slots, ...)
  std::atomic<std::uint64_t> creator;  ///< packed ProcessRef, written before anything else
  std::uint64_t created_unix_ms;
  WaitPoint init_wait;               ///< openers sleep here while init_state is kInitBuilding
  std::atomic<std::uint32_t> flags;  ///< kSegmentPersistent, ...
  /// Attach-table entries ever handed out (a high-water mark, raised by CAS after the entry's
  /// page is allocated): scans stop here. Clamped to attach_capacity wherever it is read.
  std::atomic<std::uint32_t> attach_used;
  std::uint64_t attach_offset;    ///< from the start of the segment, after the payload
  std::uint32_t attach_capacity;  ///< entries in the attach table
  std::uint32_t reserved;
  /// Random, written at creation: tells this object from an earlier one of the same name (this
  /// process's handles of one object share one attach entry, found by name and instance).
  std::uint64_t instance;
};
static_assert(std::is_standard_layout_v<SegmentHeader>);
static_assert(sizeof(SegmentHeader) <= 4 * kCacheLine, "the header grew past its cache lines");

/// Offset of the attach table of a segment whose payload ends at `payload_end`.
constexpr std::uint64_t attach_table_offset(std::uint64_t payload_end) noexcept {
  return (payload_end + kCacheLine - 1) / kCacheLine * kCacheLine;
}

namespace segment_detail {
/// This process's attach entries, one per object (name + instance), each counting the handles
/// that share it. The lock is held across fork() and the child starts with no entries: a
/// child claims an entry of its own when it uses an object.
class AttachRegistry final : public ForkHook {
 public:
  struct Entry {
    os::pid_type pid = 0;
    std::uint32_t index = 0;
    std::uint64_t handles = 0;
  };
  std::mutex mutex;
  std::map<std::pair<std::string, std::uint64_t>, Entry> entries;

  void before_fork() noexcept override { mutex.lock(); }
  void after_fork_parent() noexcept override { mutex.unlock(); }
  void after_fork_child() noexcept override {
    entries.clear();
    mutex.unlock();
  }
};
inline AttachRegistry& attach_registry() { return process_singleton<AttachRegistry>(); }
}  // namespace segment_detail

namespace tracker {  // the crash tracker (detail/tracker.hpp, included at the end of this file)
inline void track(std::string_view name, const SegmentHeader& h) noexcept;
inline void untrack(std::string_view name, const SegmentHeader& h) noexcept;
}  // namespace tracker

/// How to build a new segment.
struct SegmentSpec {
  Kind kind;                         ///< what the object is
  TypeInfo type = TypeInfo::none();  ///< element type (checked by open)
  std::uint64_t payload_size = 0;    ///< bytes after the header
  std::uint64_t capacity = 0;        ///< kind-specific, stored for tools and validation
  /// The object touches only part of its payload and commits each part with os::commit() (or
  /// os::populate_write()) before first use: Windows then reserves the rest instead of charging
  /// it in full (POSIX shared memory is sparse anyway).
  bool sparse = false;
  /// Bytes of the payload backed by memory at creation (POSIX: fallocate on the object), so that
  /// a full /dev/shm is a NoSpaceError from create() instead of a page that cannot be allocated
  /// at its first touch. All of it by default. An object that uses its payload lazily (a queue's
  /// slots, a manager's heap) reserves only what its init touches and backs the rest with
  /// os::populate_write() before first use; a page it touches without that is reported by
  /// os::check_mapping() (NoSpaceError).
  std::uint64_t reserve = UINT64_MAX;
};

/// Options common to create/open.
/// Internal name of the public NamedOptions.
using SegmentOptions = NamedOptions;

/// Initialises the payload of a new segment (runs before anyone else can use it).
using PayloadInit = std::function<void(std::byte* payload, std::uint64_t size)>;

constexpr std::uint64_t align_up(std::uint64_t v, std::uint64_t a) noexcept {
  return (v + a - 1) / a * a;
}

//!Effects: refuses an object that another user owns, that group or others may access, or that
//! is not a regular shared-memory object. Throws: PermissionError.
inline void check_access(const os::FileInfo& info, std::string_view name) {
  if (!info.owned_by_us)
    fail<PermissionError>(
        "'{}' belongs to another user; refusing to share it (someone may be "
        "squatting the name): choose another name",
        name);
  if (!info.private_mode)
    fail<PermissionError>(
        "'{}' is accessible to group or others (mpp creates objects with mode "
        "0600); refusing it: remove it with mpp::unlink(\"{}\")",
        name, name);
  if (!info.regular) fail<PermissionError>("'{}' is not a shared-memory object", name);
}

/// A mapped, validated segment. Move-only. The handle that created the segment removes its name
/// on destruction (unless persistent), but only in the process that created it: a forked copy
/// never unlinks. Mappings stay valid until every handle in every process is gone.
class Segment {
 public:
  Segment() noexcept = default;
  Segment(Segment&& o) noexcept { swap(o); }
  Segment& operator=(Segment&& o) noexcept {
    if (this != &o) {
      Segment tmp(std::move(o));
      swap(tmp);
    }
    return *this;
  }
  Segment(const Segment&) = delete;
  Segment& operator=(const Segment&) = delete;
  ~Segment() { close(); }

  //!Effects: creates the segment `name` exclusively (mode 0600), backs its header and
  //! spec.reserve bytes of payload with memory, runs `init` on the zeroed payload, then
  //! publishes it. Throws: InvalidArgument (bad name), ExistsError, NoSpaceError (/dev/shm has no
  //! room for it: nothing is left behind), OSError; an exception from `init` removes the
  //! half-built segment and propagates.
  static Segment create(std::string_view name, const SegmentSpec& spec,
                        const PayloadInit& init = {}, const SegmentOptions& opts = {}) {
    validate_name(name);
    const std::uint64_t offset = align_up(sizeof(SegmentHeader), kCacheLine);
    if (spec.payload_size > (std::uint64_t{1} << 46))
      fail<InvalidArgument>("cannot create '{}': a payload of {} bytes is too large", name,
                            spec.payload_size);
    const std::uint64_t table = attach_table_offset(offset + spec.payload_size);
    const std::uint64_t total = table + std::uint64_t{kMaxAttach} * sizeof(AttachSlot);
    // The attach table is backed a page at a time as processes arrive (attach_self()).
    const std::uint64_t reserve = offset + std::min(spec.reserve, spec.payload_size);
    os::Fd fd = spec.sparse ? os::shm_create_sparse(name, total, reserve)
                            : os::shm_create(name, total, reserve);
    Segment s;
    s.name_ = std::string(name);
    s.size_ = total;
    try {
      s.base_ = static_cast<std::byte*>(os::map(fd, total, name));
      // A peer's ftruncate: CorruptedError, not SIGBUS.
      s.guard_ = os::guard_mapping(s.base_, total, name);
      if (const int err = spec.sparse ? os::commit(s.base_, offset) : 0; err != 0) {
        if (err == ENOMEM) os::fail_no_space(name, offset);
        throw OSError(fmt::format("cannot create '{}': no memory for its header", name), err);
      }
    } catch (...) {
      os::shm_remove(name);
      throw;
    }
    s.creator_pid_ = os::current_pid();
    s.persistent_ = opts.persistent;
    s.payload_size_ = spec.payload_size;
    s.payload_offset_ = offset;
    s.capacity_ = spec.capacity;
    s.attach_offset_ = table;
    s.attach_cap_ = kMaxAttach;
    s.instance_ = os::random_u64();
    fill_header(*s.header_ptr(), spec, total, offset, opts.persistent);
    s.header_ptr()->attach_offset = table;
    s.header_ptr()->attach_capacity = kMaxAttach;
    s.header_ptr()->instance = s.instance_;
    tracker::track(name, *s.header_ptr());  // removed if this program dies before it does
    try {
      if (init) init(s.base_ + offset, spec.payload_size);
      // A page init touched beyond the reservation that tmpfs could not allocate: the object
      // would exist in this process only.
      os::check_mapping(s.base_);
    } catch (...) {
      os::shm_remove(name);
      tracker::untrack(name, *s.header_ptr());
      s.creator_pid_ = 0;  // nothing left to unlink
      throw;
    }
    s.keep(std::move(fd));
    auto* h = s.header_ptr();
    h->init_state.store(kInitReady, std::memory_order_release);  // publishes all of the above
    h->init_wait.notify_all();
    s.attach_self();
    return s;
  }

  //!Effects: creates an object with a fresh random name "mpp.anon.<pid>.<hex>". Forked children
  //! inherit the mapping; spawned processes can open it by name while the creator keeps it.
  static Segment create_anonymous(const SegmentSpec& spec, const PayloadInit& init = {},
                                  const SegmentOptions& opts = {}) {
    for (;;) {
      const auto name = fmt::format("mpp.anon.{}.{:016x}", os::current_pid(), os::random_u64());
      try {
        return create(name, spec, init, opts);
      } catch (const ExistsError&) {  // 2^-64 odds; try another name
      }
    }
  }

  //!Effects: opens the existing object `name`, checking owner, permissions, header, kind and
  //! element type; waits up to opts.init_timeout for a creator that is still initialising.
  //!Throws: NotFoundError, PermissionError (other owner, group/world access, or a directory
  //! squatting the name), TypeMismatchError (another kind or element type), CorruptedError (bad
  //! header or creator died during initialisation), TimeoutError (still being built after the
  //! timeout).
  static Segment open(std::string_view name, Kind kind, const TypeInfo& type,
                      const SegmentOptions& opts = {}) {
    validate_name(name);
    os::Fd fd = os::shm_open_existing(name);
    const auto deadline = Deadline::after(opts.init_timeout);
    auto info = os::file_info(fd, name);
    check_access(info, name);
    if (!info.headered)  // marked at shm_open, so even a header not yet written is known
      fail<TypeMismatchError>(
          "'{}' is a SharedMemory block (or another program's object), not "
          "a {}: open it with mpp::SharedMemory",
          name, kind_name(kind));
    // A creator between shm_open and sizing (fallocate, which sets the size once all of it is
    // backed, or ftruncate) leaves an empty object for a moment.
    while (info.size < sizeof(SegmentHeader)) {
      if (deadline.expired())
        fail<TimeoutError>(
            "'{}' is still smaller than an mpp header after {} ms; its creator "
            "probably died while creating it: remove it with mpp::unlink(\"{}\")",
            name, opts.init_timeout.count(), name);
      os::sleep_for(std::chrono::microseconds(200));
      info = os::file_info(fd, name);
    }
    Segment s;
    s.name_ = std::string(name);
    s.size_ = info.size;
    s.base_ = static_cast<std::byte*>(os::map(fd, info.size, name));
    // A peer's ftruncate: CorruptedError, not SIGBUS.
    s.guard_ = os::guard_mapping(s.base_, info.size, name);
    auto* h = s.header_ptr();
    const bool ready = h->init_wait.wait(
        [&] { return h->init_state.load(std::memory_order_acquire) == kInitReady; }, deadline,
        [&] { s.check_creator_alive(); });
    if (!ready)
      fail<TimeoutError>("'{}' is still being initialised by pid {} after {} ms; try again later",
                         name, ProcessRef::unpack(h->creator.load()).pid,
                         opts.init_timeout.count());
    // info.size is final: a creator sets the size once (ftruncate) before anyone sees a header.
    s.keep(std::move(fd));
    s.validate(*h, kind, type, info.size);
    s.attach_self();
    return s;
  }

  //!Effects: opens `name` if it exists, otherwise creates it as create() does. Safe against
  //! concurrent callers: exactly one creates, the others open the published object.
  //!Returns: the segment and whether this call created it.
  static std::pair<Segment, bool> open_or_create(std::string_view name, const SegmentSpec& spec,
                                                 const PayloadInit& init = {},
                                                 const SegmentOptions& opts = {}) {
    for (int attempt = 0;; ++attempt) {
      try {
        return {create(name, spec, init, opts), true};
      } catch (const ExistsError&) {
      }
      try {
        return {open(name, spec.kind, spec.type, opts), false};
      } catch (const NotFoundError&) {
        if (attempt >= 100) throw;  // removed between our create and open: race again
      }
    }
  }

  /// True when this handle maps a segment.
  bool valid() const noexcept { return base_ != nullptr; }
  /// The object's name.
  const std::string& name() const noexcept { return name_; }
  /// Start of the payload (cache-line aligned).
  std::byte* payload() const noexcept { return base_ + payload_offset_; }
  /// Bytes in the payload (validated against the mapping).
  std::uint64_t payload_size() const noexcept { return payload_size_; }
  /// The kind-specific capacity recorded at creation.
  std::uint64_t capacity() const noexcept { return capacity_; }
  /// The header (for tools; its atomics may change under you).
  SegmentHeader& header() const noexcept { return *header_ptr(); }
  /// Random at creation: tells this object from an earlier one of the same name.
  std::uint64_t instance() const noexcept { return instance_; }
  /// True if this process created the segment through this handle.
  bool is_creator() const noexcept {
    return creator_pid_ != 0 && creator_pid_ == os::current_pid();
  }
  /// Keep (true) or remove (false) the name when the creating handle is destroyed.
  void set_persistent(bool p) noexcept { persistent_ = p; }
  //!Effects: records in the shared header whether the object is meant to outlive its users
  //! (create() records NamedOptions::persistent): `mpp gc` keeps a persistent object after its
  //! users are gone, and removes one that is not.
  void mark_persistent(bool keep) noexcept {
    if (base_ == nullptr) return;
    if (keep)
      header_ptr()->flags.fetch_or(kSegmentPersistent, std::memory_order_relaxed);
    else
      header_ptr()->flags.fetch_and(~kSegmentPersistent, std::memory_order_relaxed);
  }

  //!Effects: does to the name now what close() would do (the creator's handle removes it unless
  //! persistent), and this handle is no longer the creator; the mapping stays. For an object
  //! whose creating handle is shared with handles opened later in the same process.
  void release_name() noexcept {
    if (is_creator() && !persistent_) {
      try {
        os::shm_remove(name_);
      } catch (...) {  // best effort in a destructor; `mpp gc` removes what is left
      }
    }
    creator_pid_ = 0;
  }

  //!Effects: removes the name now (processes that have it mapped keep working); the creator's
  //! handle will not try again. Returns: false if the name was already gone.
  bool unlink() {
    creator_pid_ = 0;
    if (base_ != nullptr) tracker::untrack(name_, *header_ptr());
    return os::shm_remove(name_);
  }

  //!Returns: this process's index in the attach table, claiming an entry if this handle has
  //! none in this process (e.g. a forked child using an inherited handle); the handles of one
  //! object in one process share one entry. Throws: Error if all entries hold live users,
  //! NoSpaceError if the entry's page cannot be allocated.
  std::uint32_t attach_index() {
    if (attach_pid_ != os::current_pid()) attach_self();
    return attach_idx_;
  }

  /// The process that holds attach entry `i` (pid 0 if free); `i` is bounds-checked.
  ProcessRef attached(std::uint32_t i) const {
    if (i >= attach_cap_)
      fail<CorruptedError>("'{}': attach index {} out of range (max {})", name_, i, attach_cap_);
    if (i >= attach_used()) return {};  // never handed out (and its page maybe never touched)
    return ProcessRef::unpack(table()[i].load(std::memory_order_acquire));
  }

  /// Number of attach entries held by live processes (dead holders are not counted): the
  /// processes using the object, each counted once.
  std::uint32_t live_users() const noexcept {
    std::uint32_t n = 0;
    const std::uint32_t used = attach_used();
    for (std::uint32_t i = 0; i < used; ++i)
      if (ProcessRef::unpack(table()[i].load(std::memory_order_acquire)).alive()) ++n;
    return n;
  }

  /// Attach-table entries ever handed out (scans stop here), at most its capacity.
  std::uint32_t attach_used() const noexcept {
    return std::min(header_ptr()->attach_used.load(std::memory_order_acquire), attach_cap_);
  }

  //!Effects: this handle stops counting as a use of the object by this process; the process's
  //! attach entry is freed when no other handle of the object in it remains. Idempotent.
  void detach() noexcept {
    if (base_ != nullptr && attach_pid_ == os::current_pid()) release_slot();
  }

  //!Effects: detaches from the segment and unmaps it; the creator's handle also removes the name
  //! (unless persistent). Idempotent.
  void close() noexcept {
    if (base_ == nullptr) return;
    detach();
    if (is_creator() && !persistent_) {
      tracker::untrack(name_, *header_ptr());
      try {
        os::shm_remove(name_);
      } catch (...) {  // best effort in a destructor; `mpp gc` removes what is left
      }
    }
    os::unguard_mapping(base_, guard_);
    guard_ = os::kNoGuard;
    os::unmap(base_, size_);
    fd_.reset();
    base_ = nullptr;
    size_ = 0;
  }

 private:
  SegmentHeader* header_ptr() const noexcept { return reinterpret_cast<SegmentHeader*>(base_); }
  AttachSlot* table() const noexcept {
    return reinterpret_cast<AttachSlot*>(base_ + attach_offset_);
  }

  // Every field of a new header but init_state; the creator's identity first, so that an
  // opener can tell "still building" from "creator died".
  static void fill_header(SegmentHeader& h, const SegmentSpec& spec, std::uint64_t total,
                          std::uint64_t offset, bool persistent) {
    h.creator.store(ProcessRef::self().pack(), std::memory_order_release);
    h.layout_version = kLayoutVersion;
    h.kind = static_cast<std::uint32_t>(spec.kind);
    h.header_size = sizeof(SegmentHeader);
    h.type_fingerprint = spec.type.fingerprint;
    const auto n = std::min(spec.type.name.size(), kTypeNameCapacity - 1);
    std::memcpy(h.type_name, spec.type.name.data(), n);
    h.type_name[n] = '\0';
    h.total_size = total;
    h.payload_offset = offset;
    h.payload_size = spec.payload_size;
    h.capacity = spec.capacity;
    h.created_unix_ms =
        static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                       std::chrono::system_clock::now().time_since_epoch())
                                       .count());
    h.flags.store(persistent ? kSegmentPersistent : 0, std::memory_order_relaxed);
    h.magic = kSegmentMagic;
  }

  // Windows removes a mapping's name with its last handle, so the handle lives as long as we do;
  // on POSIX the mapping alone keeps the object and the descriptor is closed at once.
  void keep(os::Fd fd) noexcept {
    if constexpr (os::kKeepHandleWhileMapped) fd_ = std::move(fd);
  }

  void check_creator_alive() const {
    const auto* h = header_ptr();
    const auto creator = ProcessRef::unpack(h->creator.load(std::memory_order_acquire));
    if (h->init_state.load(std::memory_order_acquire) != kInitReady && creator.pid != 0 &&
        !creator.alive())
      fail<CorruptedError>(
          "the creator of '{}' (pid {}) died while initialising it; "
          "remove the stale object with mpp::unlink(\"{}\")",
          name_, creator.pid, name_);
  }

  void swap(Segment& o) noexcept {
    std::swap(name_, o.name_);
    std::swap(base_, o.base_);
    std::swap(guard_, o.guard_);
    std::swap(size_, o.size_);
    std::swap(payload_size_, o.payload_size_);
    std::swap(payload_offset_, o.payload_offset_);
    std::swap(capacity_, o.capacity_);
    std::swap(creator_pid_, o.creator_pid_);
    std::swap(persistent_, o.persistent_);
    std::swap(attach_idx_, o.attach_idx_);
    std::swap(attach_pid_, o.attach_pid_);
    std::swap(attach_offset_, o.attach_offset_);
    std::swap(attach_cap_, o.attach_cap_);
    std::swap(instance_, o.instance_);
    std::swap(fd_, o.fd_);
  }

  // Every field is read once into a local and checked before anything trusts it.
  void validate(const SegmentHeader& h, Kind kind, const TypeInfo& type, std::uint64_t file_size) {
    if (h.magic != kSegmentMagic)
      fail<CorruptedError>("'{}' is not an mpp object (bad magic); remove it if it is stale",
                           name_);
    if (h.layout_version != kLayoutVersion)
      fail<CorruptedError>(
          "'{}' has layout version {}, this build of mpp reads version {}; open "
          "it with the same mpp version that created it",
          name_, h.layout_version, kLayoutVersion);
    if (h.header_size != sizeof(SegmentHeader))
      fail<CorruptedError>("'{}': header size {} does not match {}", name_, h.header_size,
                           sizeof(SegmentHeader));
    char stored_name[kTypeNameCapacity];
    std::memcpy(stored_name, h.type_name, kTypeNameCapacity);
    if (std::memchr(stored_name, '\0', kTypeNameCapacity) == nullptr)
      fail<CorruptedError>("'{}': the stored type name is not terminated", name_);
    const auto stored_kind = static_cast<Kind>(h.kind);
    if (stored_kind != kind)
      fail<TypeMismatchError>("'{}' is a {} (kind {}), not a {}", name_, kind_name(stored_kind),
                              h.kind, kind_name(kind));
    if (h.type_fingerprint != type.fingerprint)
      fail<TypeMismatchError>("'{}' holds elements of type '{}', opened as '{}'", name_,
                              stored_name, type.name);
    const std::uint64_t total = h.total_size, off = h.payload_offset, psize = h.payload_size;
    // Windows reports the section size rounded up to a page; anything beyond that is corruption.
    if (total > file_size || total > size_ || align_up(total, os::page_size()) < file_size)
      fail<CorruptedError>("'{}': header says {} bytes but the segment has {}", name_, total,
                           file_size);
    if (off < sizeof(SegmentHeader) || off % kCacheLine != 0 || off > total || psize > total - off)
      fail<CorruptedError>("'{}': payload [{}, +{}) does not fit in {} bytes", name_, off, psize,
                           total);
    if (ProcessRef::unpack(h.creator.load(std::memory_order_relaxed)).pid <= 0)
      fail<CorruptedError>("'{}': invalid creator pid", name_);
    const std::uint64_t table = h.attach_offset;
    const std::uint32_t cap = h.attach_capacity;
    if (table < off + psize || table % alignof(AttachSlot) != 0 || table > total || cap == 0 ||
        cap > kMaxAttach || cap > (total - table) / sizeof(AttachSlot))
      fail<CorruptedError>(
          "'{}': attach table [{}, {} entries) does not fit after the payload "
          "in {} bytes",
          name_, table, cap, total);
    payload_size_ = psize;
    payload_offset_ = off;  // validated once; the shared copy may be overwritten later
    capacity_ = h.capacity;
    attach_offset_ = table;
    attach_cap_ = cap;
    instance_ = h.instance;
  }

  // Gives this handle this process's attach entry of the object: the entry the process's other
  // handles share, or a newly claimed one.
  void attach_self() {
    auto& reg = segment_detail::attach_registry();
    const auto pid = os::current_pid();
    std::lock_guard<std::mutex> lock(reg.mutex);
    auto [it, fresh] = reg.entries.try_emplace({name_, instance_});
    auto& e = it->second;
    if (!fresh && e.pid == pid && e.handles > 0) {
      ++e.handles;
    } else {
      try {
        e.index = claim_entry();
      } catch (...) {
        reg.entries.erase(it);
        throw;
      }
      e.pid = pid;
      e.handles = 1;
    }
    attach_idx_ = e.index;
    attach_pid_ = pid;
  }

  // Claims a free entry below the high-water mark, else the next one above it (allocating its
  // page first, so that a full /dev/shm is an error here and scans never read a page that is
  // not there), else, with the table full, the entry of a dead process.
  std::uint32_t claim_entry() {
    const std::uint64_t me = ProcessRef::self().pack();
    auto* h = header_ptr();
    AttachSlot* t = table();
    for (;;) {
      const std::uint32_t used = attach_used();
      for (std::uint32_t i = 0; i < used; ++i) {
        std::uint64_t w = t[i].load(std::memory_order_acquire);
        if (w == 0 && t[i].compare_exchange_strong(w, me, std::memory_order_acq_rel)) return i;
      }
      if (used < attach_cap_) {
        const std::uint64_t at = attach_offset_ + std::uint64_t{used} * sizeof(AttachSlot);
        if (used == 0 || at % os::page_size() == 0) {
          if (const int err = os::populate_write(base_ + at, sizeof(AttachSlot)); err != 0)
            throw NoSpaceError(fmt::format("cannot use '{}': no memory for entry {} of its "
                                           "attach table ({}); free space in /dev/shm (`mpp gc`) "
                                           "or enlarge it",
                                           name_, used, std::strerror(err)),
                               err);
        }
        std::uint32_t expect = used;
        if (h->attach_used.compare_exchange_strong(expect, used + 1, std::memory_order_acq_rel)) {
          std::uint64_t w = 0;
          if (t[used].compare_exchange_strong(w, me, std::memory_order_acq_rel)) return used;
        }
        continue;  // another process took it: look again
      }
      // Full: reuse the entry of a process that died (the CAS fails if it changed hands).
      for (std::uint32_t i = 0; i < used; ++i) {
        std::uint64_t w = t[i].load(std::memory_order_acquire);
        if (w != 0 && !ProcessRef::unpack(w).alive() &&
            t[i].compare_exchange_strong(w, me, std::memory_order_acq_rel))
          return i;
      }
      fail<Error>("'{}' already has {} live processes using it; end some of them", name_,
                  attach_cap_);
    }
  }

  // This handle lets go of the process's entry; the last handle of the process frees it.
  void release_slot() noexcept {
    auto& reg = segment_detail::attach_registry();
    {
      std::lock_guard<std::mutex> lock(reg.mutex);
      const auto it = reg.entries.find({name_, instance_});
      if (it != reg.entries.end() && it->second.pid == attach_pid_ && --it->second.handles == 0) {
        const std::uint32_t i = it->second.index;
        reg.entries.erase(it);
        std::uint64_t me = ProcessRef::self().pack();
        if (i < attach_cap_) table()[i].compare_exchange_strong(me, 0, std::memory_order_acq_rel);
      }
    }
    attach_pid_ = 0;
  }

  std::string name_;
  std::byte* base_ = nullptr;
  std::uint32_t guard_ = os::kNoGuard;  // base_'s entry in the SIGBUS guard
  std::uint64_t size_ = 0;
  std::uint64_t payload_size_ = 0;
  std::uint64_t payload_offset_ = 0;
  std::uint64_t capacity_ = 0;
  os::pid_type creator_pid_ = 0;  // the process whose handle created it (0: not ours to unlink)
  bool persistent_ = false;
  std::uint32_t attach_idx_ = kMaxAttach;
  os::pid_type attach_pid_ = 0;      // the process in which attach_idx_ counts this handle
  std::uint64_t attach_offset_ = 0;  // validated once (the shared copy may change)
  std::uint32_t attach_cap_ = 0;
  std::uint64_t instance_ = 0;
  os::Fd fd_;  // held only where the OS needs it (kKeepHandleWhileMapped)
};

}  // namespace detail
}  // namespace mpp

#include "detail/tracker.hpp"  // after Segment: the tracker reads segment headers
