// mpp — SharedMemory and ShareableList (Python's multiprocessing.shared_memory).
// SharedMemory is a block of raw bytes in a named segment; size() is exactly the size asked for
// (cpython#101623) and, with track=true, the name is removed when the last process using the
// block lets go, never while another live process is still attached (gh-82300). ShareableList is
// a fixed-length list of int64 / double / bool / string / bytes / None slots that keeps strings
// and bytes byte-exact: trailing NULs and multi-byte UTF-8 survive (cpython#106939, #96779).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "codec.hpp"
#include "detail/fork_hooks.hpp"
#include "errors.hpp"
#include "segment.hpp"

namespace mpp {

namespace detail {

/// Segment options of SharedMemory and ShareableList: created and opened without touching the
/// mapping (POSIX), kept (persistent) when untracked so that `mpp gc` keeps it as unlink() would.
inline SegmentOptions tracked_options(bool track) {
  SegmentOptions o;
  o.persistent = !track;
  o.untouched = true;
  return o;
}

/// One process's mapping of a SharedMemory / ShareableList segment, shared by every copy of the
/// handle in this process; destroying it applies the `track` rule. It counts as a user of the
/// segment. POSIX: the creating handle through the header (its creator, alive, and no
/// kSegmentCreatorLeft flag), every other one through a user lock, which the kernel drops when
/// the process dies; neither touches the mapping. Windows: the attach table.
struct TrackedSegment final : ForkHook {
  Segment seg;
  bool track = true;
  bool unlinked = false;

  //!Effects: takes over `s` (created or opened with tracked_options()) and counts this handle as
  //! a user. Throws: OSError if the kernel refuses the user lock.
  TrackedSegment(Segment s, bool t) : seg(std::move(s)), track(t) {
    seg.set_persistent(true);  // the rule below decides, not Segment's creator-unlinks rule
#if defined(MPP_OS_POSIX)
    user_fd_ = seg.take_descriptor();
    if (seg.is_creator())
      user_pid_.store(os::current_pid(), std::memory_order_release);  // counted by its header
    else
      lock_user();
    register_fork_hook(this);
#endif
  }
  TrackedSegment(const TrackedSegment&) = delete;
  TrackedSegment& operator=(const TrackedSegment&) = delete;

  //!Effects: with track, removes the name if no other live process uses it (gh-82300). Our own
  //! mark is dropped *before* looking at the others: of two processes leaving at the same time,
  //! at least one sees the other gone, so the name is not leaked.
  ~TrackedSegment() {
#if defined(MPP_OS_POSIX)
    unregister_fork_hook(this);
    if (!user_here()) return;  // a forked child that never used it: not a user
    try {
      if (locked_)
        os::release_user_lock(user_fd_, slot_);  // a forked child may hold the descriptor too
      else
        set_creator_left(user_fd_, seg.name());
      user_fd_.reset();
      if (!track || unlinked || !seg.valid()) return;
      const std::string name = seg.name();
      seg.close();
      if (others_using(name) == 0) os::shm_remove(name);
    } catch (...) {  // best effort in a destructor; `mpp gc` removes what is left
    }
#else
    if (!track || unlinked || !seg.valid()) return;
    try {
      const std::uint32_t me = seg.attach_index();
      std::uint64_t mine = ProcessRef::self().pack();
      seg.header().attach[me].compare_exchange_strong(mine, 0, std::memory_order_seq_cst);
      if (seg.live_users() == 0) seg.unlink();
    } catch (...) {  // best effort in a destructor; `mpp gc` removes what is left
    }
#endif
  }

  //!Effects: a forked child that uses an inherited handle becomes a user of its own (once,
  //! whichever of its threads comes first).
  void note_use() {
#if defined(MPP_OS_POSIX)
    if (user_here()) return;
    std::lock_guard<std::mutex> lock(use_mutex_);
    if (user_here()) return;
    try {
      user_fd_ = os::shm_open_existing(seg.name());
    } catch (const NotFoundError&) {  // removed: nobody can attach any more, nothing to mark
      locked_ = true;
      user_pid_.store(os::current_pid(), std::memory_order_release);
      return;
    }
    lock_user();
#else
    seg.attach_index();
#endif
  }

  /// Handles using the segment now, this one included (if it is a user); dead ones do not count.
  std::uint32_t live_users() {
#if defined(MPP_OS_POSIX)
    std::lock_guard<std::mutex> lock(use_mutex_);
    if (!user_here() || !user_fd_.valid()) return others_using(seg.name());
    // Through our own descriptor the kernel reports every lock but ours.
    return 1 + count_locks(user_fd_, seg.name()) + (locked_ ? creator_using(user_fd_) : 0);
#else
    return seg.live_users();
#endif
  }

  // POSIX only (registered only there): no thread is inside note_use() or live_users() while
  // the address space is copied, and the child's copy of the descriptor, which would keep the
  // parent's lock after the parent let go, is closed.
  void before_fork() noexcept override {
#if defined(MPP_OS_POSIX)
    use_mutex_.lock();
#endif
  }
  void after_fork_parent() noexcept override {
#if defined(MPP_OS_POSIX)
    use_mutex_.unlock();
#endif
  }
  void after_fork_child() noexcept override {
#if defined(MPP_OS_POSIX)
    user_fd_.reset();
    use_mutex_.unlock();
#endif
  }

#if defined(MPP_OS_POSIX)
 private:
  void lock_user() {
    const auto pid = os::current_pid();
    // Distinct first guesses for this process's handles and for other processes.
    static std::atomic<std::uint32_t> handles{0};
    const std::uint32_t hint = (static_cast<std::uint32_t>(pid) * 2654435761u >> 12) +
                               handles.fetch_add(1, std::memory_order_relaxed);
    if (const int err = os::take_user_lock(user_fd_, hint, slot_); err != 0)
      throw OSError(fmt::format("'{}': cannot mark this process as a user (fcntl F_OFD_SETLK: "
                                "{}); close some handles",
                                seg.name(), std::strerror(err)),
                    err);
    locked_ = true;
    user_pid_.store(pid, std::memory_order_release);
  }

  // Whether this handle is a user in this process (false in a forked child until note_use()).
  bool user_here() const noexcept {
    return user_pid_.load(std::memory_order_acquire) == os::current_pid();
  }

  static std::uint32_t count_locks(const os::Fd& fd, const std::string& name) {
    const auto n = os::count_user_locks(fd);
    if (!n)
      throw OSError(fmt::format("'{}': cannot count its users (fcntl F_OFD_GETLK: {})", name,
                                std::strerror(errno)),
                    errno);
    return *n;
  }

  // 1 if the segment's creating handle is still in use (its process lives and has not left).
  static std::uint32_t creator_using(const os::Fd& fd) {
    SegmentHeader h{};
    if (os::read_at(fd, 0, &h, sizeof h) != sizeof h) return 0;
    if ((h.flags.load(std::memory_order_relaxed) & kSegmentCreatorLeft) != 0) return 0;
    return ProcessRef::unpack(h.creator.load(std::memory_order_relaxed)).alive() ? 1 : 0;
  }

  static void set_creator_left(const os::Fd& fd, const std::string& name) {
    std::uint32_t flags = 0;
    constexpr std::size_t at = offsetof(SegmentHeader, flags);
    if (os::read_at(fd, at, &flags, sizeof flags) != sizeof flags) return;
    flags |= kSegmentCreatorLeft;
    if (const int err = os::write_at(fd, at, &flags, sizeof flags); err != 0)
      throw OSError(fmt::format("'{}': cannot record that its creator left", name), err);
  }

  // Users of `name`, seen through a new descriptor (0 if the name is gone).
  static std::uint32_t others_using(const std::string& name) {
    os::Fd fd;
    try {
      fd = os::shm_open_existing(name);
    } catch (const NotFoundError&) {
      return 0;
    }
    return count_locks(fd, name) + creator_using(fd);
  }

  // Set before user_pid_ names this process, fixed afterwards (until a fork).
  os::Fd user_fd_;        // this handle's descriptor (holding its user lock, if locked_)
  bool locked_ = false;   // a user through a lock, not as the creator
  std::uint32_t slot_ = 0;  // which lock
  std::atomic<os::pid_type> user_pid_{0};  // the process in which it is a user (not a forked child)
  std::mutex use_mutex_;  // serialises note_use()'s slow path and live_users()
#endif
};

}  // namespace detail

/// Python's SharedMemory: a block of shared bytes with a name.
class SharedMemory {
 public:
  //!Effects: Python's SharedMemory(name, create, size, track): creates the block `name` of
  //! `size` zeroed bytes when `create`, otherwise attaches to the existing block `name` (size is
  //! then ignored). With `track`, the name is removed when the last handle of the last attached
  //! process goes away; without it, only unlink() removes it.
  //!Throws: InvalidArgument (bad name, create with size 0), ExistsError, NotFoundError,
  //! TypeMismatchError (the name is another kind of object), CorruptedError, OSError.
  SharedMemory(std::string_view name, bool create = false, std::size_t size = 0, bool track = true)
      : SharedMemory(create ? make(name, size, track) : attach(name, track)) {}

  //!Effects: creates an anonymous block of `size` zeroed bytes (a fresh "mpp.anon.*" name, as
  //! Python's SharedMemory(create=True, size=n)); forked children inherit it, and other
  //! processes can attach by name() while it lives.
  explicit SharedMemory(std::size_t size, bool track = true) : SharedMemory(make({}, size, track)) {}

  /// Creates the block `name` of `size` zeroed bytes (ExistsError if taken).
  static SharedMemory create(std::string_view name, std::size_t size, bool track = true) {
    return make(name, size, track);
  }
  /// Attaches to the existing block `name` (NotFoundError if absent).
  static SharedMemory open(std::string_view name, bool track = true) { return attach(name, track); }

  /// The bytes of the block: exactly size() of them. Throws: ValueError after close().
  std::span<std::byte> buf() const {
    auto& s = state("buf");
    s.note_use();  // a forked child using an inherited handle counts as a user
    return {s.seg.payload(), static_cast<std::size_t>(s.seg.payload_size())};
  }
  /// The block's name (pass it to SharedMemory(name) in another process).
  const std::string& name() const { return state("name").seg.name(); }
  /// The size requested at creation (not rounded up to pages: cpython#101623).
  std::size_t size() const { return static_cast<std::size_t>(state("size").seg.payload_size()); }
  /// Whether this handle applies the track rule when it goes away.
  bool track() const { return state("track").track; }
  /// False after close().
  bool is_open() const noexcept { return state_ != nullptr; }

  //!Effects: Python's close(): this handle stops using the block (other copies of the handle
  //! and other processes are unaffected); buf() then throws. Idempotent.
  void close() noexcept { state_.reset(); }

  //!Effects: Python's unlink(): removes the name now, whoever else still uses it; mappings keep
  //! working, but no process can attach any more. Throws: ValueError after close().
  //!Returns: false if the name was already gone.
  bool unlink() {
    auto& s = state("unlink");
    s.unlinked = true;
    return s.seg.unlink();
  }

  /// Handles using the block now, in any process, this one included (a killed process's are not
  /// counted; a forked child's inherited handle counts once the child uses it).
  std::uint32_t live_users() const { return state("live_users").live_users(); }

 private:
  explicit SharedMemory(std::shared_ptr<detail::TrackedSegment> s) noexcept : state_(std::move(s)) {}

  static SharedMemory make(std::string_view name, std::size_t size, bool track) {
    if (size == 0)
      detail::fail<InvalidArgument>(
          "cannot create shared memory '{}' of size 0: the size must be positive",
          name.empty() ? std::string_view("(anonymous)") : name);
    const detail::SegmentSpec spec{Kind::shared_memory, TypeInfo::none(), size, size};
    const auto opts = detail::tracked_options(track);
    detail::Segment seg = name.empty() ? detail::Segment::create_anonymous(spec, {}, opts)
                                       : detail::Segment::create(name, spec, {}, opts);
    return SharedMemory(std::make_shared<detail::TrackedSegment>(std::move(seg), track));
  }

  static SharedMemory attach(std::string_view name, bool track) {
    auto seg = detail::Segment::open(name, Kind::shared_memory, TypeInfo::none(),
                                     detail::tracked_options(track));
    return SharedMemory(std::make_shared<detail::TrackedSegment>(std::move(seg), track));
  }

  detail::TrackedSegment& state(const char* what) const {
    if (!state_) detail::fail<ValueError>("SharedMemory::{}() on a closed handle", what);
    return *state_;
  }

  std::shared_ptr<detail::TrackedSegment> state_;
};

/// Python's None in a ShareableList.
using None = std::monostate;

/// One element of a ShareableList: None, int (64-bit), float, bool, str (UTF-8) or bytes.
using ShareableItem = std::variant<None, std::int64_t, double, bool, std::string, Bytes>;

namespace detail {

enum class SlotKind : std::uint8_t { none = 0, int64, float64, boolean, str, bytes };

/// Start of a ShareableList payload; then `count` SlotDesc, then the data area.
struct ShareableListHeader {
  std::uint64_t count;
  std::uint64_t data_size;
};
/// A slot: where its bytes live (fixed at creation) and what it holds now.
struct SlotDesc {
  std::uint64_t offset;    ///< from the start of the data area
  std::uint64_t capacity;  ///< bytes reserved (8 for scalars, like Python)
  std::uint64_t tag;       ///< kind in the low 8 bits, byte length in the high 32; atomic_ref
};
static_assert(std::is_standard_layout_v<SlotDesc> && sizeof(SlotDesc) == 24);
static_assert(std::atomic_ref<std::uint64_t>::is_always_lock_free);

constexpr std::uint64_t kSlotAlignment = 8;  // Python's ShareableList._alignment

/// Bytes a new slot reserves for `item`: 8 for scalars; for str/bytes Python's rule
/// 8 * (len / 8 + 1), counted in encoded bytes (Python counts characters: cpython#96779).
inline std::uint64_t slot_capacity(const ShareableItem& item) {
  if (const auto* s = std::get_if<std::string>(&item))
    return kSlotAlignment * (s->size() / kSlotAlignment + 1);
  if (const auto* b = std::get_if<Bytes>(&item))
    return kSlotAlignment * (b->size() / kSlotAlignment + 1);
  return kSlotAlignment;
}

}  // namespace detail

/// Python's ShareableList: a fixed-length list in shared memory whose slots hold int64, double,
/// bool, string, bytes or None. A slot reserves its space at creation (8 bytes for scalars,
/// 8 * (n / 8 + 1) for a string or bytes of n bytes); assigning anything that needs more is a
/// ValueError, as in Python. Unlike Python, strings and bytes keep trailing NULs and multi-byte
/// UTF-8 exactly. Like Python, there is no lock: guard concurrent writers with a Lock.
class ShareableList {
 public:
  using value_type = ShareableItem;

  //!Effects: creates an anonymous list holding `items` (fresh "mpp.anon.*" name).
  ShareableList(std::initializer_list<ShareableItem> items, bool track = true)
      : ShareableList(make({}, std::vector<ShareableItem>(items), track)) {}
  /// As above, from a vector.
  explicit ShareableList(const std::vector<ShareableItem>& items, bool track = true)
      : ShareableList(make({}, items, track)) {}

  /// Creates the list `name` holding `items` (ExistsError if taken).
  static ShareableList create(std::string_view name, const std::vector<ShareableItem>& items,
                              bool track = true) {
    return make(name, items, track);
  }
  //!Effects: attaches to the existing list `name` (Python: ShareableList(name=...)).
  //!Throws: NotFoundError, TypeMismatchError, CorruptedError (a slot table that does not fit).
  static ShareableList open(std::string_view name, bool track = true) {
    auto seg = detail::Segment::open(name, Kind::shareable_list, TypeInfo::none(),
                                     detail::tracked_options(track));
    ShareableList l(std::make_shared<detail::TrackedSegment>(std::move(seg), track));
    l.validate();
    return l;
  }

  /// Number of slots (fixed).
  std::size_t size() const { return count_; }
  /// The list's name.
  const std::string& name() const { return state("name").seg.name(); }

  //!Returns: the item in slot `i`. Throws: std::out_of_range (IndexError), CorruptedError.
  //! Negative indices count from the end, as in Python.
  ShareableItem get(std::ptrdiff_t i) const {
    auto& d = desc(i);
    const std::uint64_t tag = std::atomic_ref<std::uint64_t>(d.tag).load(std::memory_order_acquire);
    const auto kind = static_cast<detail::SlotKind>(tag & 0xff);
    const std::uint64_t len = tag >> 32;
    const std::byte* p = data(d);
    const std::uint64_t cap = d.capacity;
    auto need = [&](std::uint64_t n) {
      if (n > cap) corrupt(i, "its value needs more bytes than the slot holds");
    };
    switch (kind) {
      case detail::SlotKind::none: return None{};
      case detail::SlotKind::int64: {
        need(8);
        std::int64_t v;
        std::memcpy(&v, p, 8);
        return v;
      }
      case detail::SlotKind::float64: {
        need(8);
        double v;
        std::memcpy(&v, p, 8);
        return v;
      }
      case detail::SlotKind::boolean: {
        need(1);
        const auto b = static_cast<unsigned char>(p[0]);
        if (b > 1) corrupt(i, "a bool that is neither 0 nor 1");
        return b == 1;
      }
      case detail::SlotKind::str: {
        need(len);
        return std::string(reinterpret_cast<const char*>(p), static_cast<std::size_t>(len));
      }
      case detail::SlotKind::bytes: {
        need(len);
        return Bytes(p, p + len);
      }
    }
    corrupt(i, "an unknown element kind");
  }

  //!Effects: stores `v` in slot `i` (the slot may change kind, as in Python).
  //!Throws: std::out_of_range, ValueError if `v` needs more bytes than the slot reserved.
  void set(std::ptrdiff_t i, const ShareableItem& v) {
    auto& d = desc(i);
    std::byte* p = data(d);
    const std::uint64_t cap = d.capacity;
    std::uint64_t len = 0;
    detail::SlotKind kind = detail::SlotKind::none;
    auto put = [&](const void* src, std::uint64_t n, detail::SlotKind k) {
      if (n > cap)
        detail::fail<ValueError>(
            "ShareableList '{}': item {} has room for {} bytes, the new value needs {} (a slot's "
            "size is fixed when the list is created)",
            name(), i, cap, n);
      if (n != 0) std::memcpy(p, src, static_cast<std::size_t>(n));
      len = n;
      kind = k;
    };
    std::visit(
        [&](const auto& x) {
          using X = std::decay_t<decltype(x)>;
          if constexpr (std::is_same_v<X, None>) {
            kind = detail::SlotKind::none;
          } else if constexpr (std::is_same_v<X, std::int64_t>) {
            put(&x, 8, detail::SlotKind::int64);
          } else if constexpr (std::is_same_v<X, double>) {
            put(&x, 8, detail::SlotKind::float64);
          } else if constexpr (std::is_same_v<X, bool>) {
            const unsigned char b = x ? 1 : 0;
            put(&b, 1, detail::SlotKind::boolean);
          } else if constexpr (std::is_same_v<X, std::string>) {
            put(x.data(), x.size(), detail::SlotKind::str);
          } else {
            put(x.data(), x.size(), detail::SlotKind::bytes);
          }
        },
        v);
    // Data first, then the tag (release): a reader that sees the new tag sees its bytes.
    std::atomic_ref<std::uint64_t>(d.tag).store(
        (len << 32) | static_cast<std::uint64_t>(kind), std::memory_order_release);
  }

  /// Reads and writes one slot: `sl[i] = "x"`, `ShareableItem v = sl[i]`.
  class Reference {
   public:
    /// The item now in the slot.
    operator ShareableItem() const { return list_->get(i_); }
    /// The item now in the slot.
    ShareableItem get() const { return list_->get(i_); }
    /// Stores `v` in the slot (see ShareableList::set).
    Reference& operator=(const ShareableItem& v) {
      list_->set(i_, v);
      return *this;
    }
    /// Compares the item in the slot with `v`.
    friend bool operator==(const Reference& r, const ShareableItem& v) { return r.list_->get(r.i_) == v; }

   private:
    friend class ShareableList;
    Reference(ShareableList* l, std::ptrdiff_t i) : list_(l), i_(i) {}
    ShareableList* list_;
    std::ptrdiff_t i_;
  };
  /// Slot `i` (negative counts from the end); bounds-checked (std::out_of_range).
  Reference operator[](std::ptrdiff_t i) {
    (void)desc(i);
    return Reference(this, i);
  }
  /// The item in slot `i`.
  ShareableItem operator[](std::ptrdiff_t i) const { return get(i); }

  /// Every item, in order.
  std::vector<ShareableItem> to_vector() const {
    std::vector<ShareableItem> out;
    out.reserve(count_);
    for (std::size_t i = 0; i < count_; ++i) out.push_back(get(static_cast<std::ptrdiff_t>(i)));
    return out;
  }
  /// Python's count(value): how many slots hold `v`.
  std::size_t count(const ShareableItem& v) const {
    std::size_t n = 0;
    for (std::size_t i = 0; i < count_; ++i) n += get(static_cast<std::ptrdiff_t>(i)) == v;
    return n;
  }
  /// Python's index(value): the first slot holding `v`. Throws: ValueError if none does.
  std::size_t index(const ShareableItem& v) const {
    for (std::size_t i = 0; i < count_; ++i)
      if (get(static_cast<std::ptrdiff_t>(i)) == v) return i;
    detail::fail<ValueError>("ShareableList '{}': the value is not in the list", name());
  }
  /// Bytes reserved by slot `i` (the most a string or bytes value stored there may take).
  std::size_t capacity(std::ptrdiff_t i) const { return static_cast<std::size_t>(desc(i).capacity); }

  /// Stops using the list in this handle (see SharedMemory::close).
  void close() noexcept {
    state_.reset();
    count_ = 0;
  }
  /// Removes the name now (see SharedMemory::unlink). Returns: false if it was already gone.
  bool unlink() {
    auto& s = state("unlink");
    s.unlinked = true;
    return s.seg.unlink();
  }

 private:
  explicit ShareableList(std::shared_ptr<detail::TrackedSegment> s) noexcept : state_(std::move(s)) {}

  static ShareableList make(std::string_view name, const std::vector<ShareableItem>& items,
                            bool track) {
    using namespace detail;
    const std::uint64_t n = items.size();
    std::uint64_t data_size = 0;
    for (const auto& it : items) data_size += slot_capacity(it);
    const std::uint64_t table = sizeof(ShareableListHeader) + n * sizeof(SlotDesc);
    const SegmentSpec spec{Kind::shareable_list, TypeInfo::none(), table + data_size, n};
    PayloadInit init = [&](std::byte* p, std::uint64_t) {
      auto* h = reinterpret_cast<ShareableListHeader*>(p);
      h->count = n;
      h->data_size = data_size;
      auto* d = reinterpret_cast<SlotDesc*>(p + sizeof(ShareableListHeader));
      std::uint64_t off = 0;
      for (std::uint64_t i = 0; i < n; ++i) {
        d[i].offset = off;
        d[i].capacity = slot_capacity(items[i]);
        d[i].tag = 0;
        off += d[i].capacity;
      }
    };
    const auto opts = tracked_options(track);
    Segment seg = name.empty() ? Segment::create_anonymous(spec, init, opts)
                               : Segment::create(name, spec, init, opts);
    ShareableList l(std::make_shared<TrackedSegment>(std::move(seg), track));
    l.validate();
    for (std::uint64_t i = 0; i < n; ++i) l.set(static_cast<std::ptrdiff_t>(i), items[i]);
    return l;
  }

  // The slot table is checked once here; every access re-checks its slot, since another process
  // may overwrite the table at any time.
  void validate() {
    using namespace detail;
    auto& seg = state("open").seg;
    const std::uint64_t psize = seg.payload_size();
    if (psize < sizeof(ShareableListHeader)) corrupt(-1, "the payload is smaller than its header");
    const auto* h = reinterpret_cast<const ShareableListHeader*>(seg.payload());
    const std::uint64_t n = h->count;
    if (n != seg.capacity() || n > (psize - sizeof(ShareableListHeader)) / sizeof(SlotDesc))
      corrupt(-1, "its slot count does not fit the segment");
    table_ = reinterpret_cast<SlotDesc*>(seg.payload() + sizeof(ShareableListHeader));
    data_ = seg.payload() + sizeof(ShareableListHeader) + n * sizeof(SlotDesc);
    data_size_ = psize - sizeof(ShareableListHeader) - n * sizeof(SlotDesc);
    count_ = static_cast<std::size_t>(n);
  }

  detail::SlotDesc& desc(std::ptrdiff_t i) const {
    state("item access").note_use();  // a forked child using the list counts as a user
    const auto n = static_cast<std::ptrdiff_t>(count_);
    const std::ptrdiff_t j = i < 0 ? i + n : i;
    if (j < 0 || j >= n)
      throw std::out_of_range(
          fmt::format("ShareableList '{}': index {} out of range (size {})", name(), i, n));
    return table_[j];
  }

  std::byte* data(const detail::SlotDesc& d) const {
    const std::uint64_t off = d.offset, cap = d.capacity;
    if (off > data_size_ || cap > data_size_ - off)
      corrupt(&d - table_, "its slot lies outside the segment");
    return data_ + off;
  }

  [[noreturn]] void corrupt(std::ptrdiff_t i, std::string_view what) const {
    detail::fail<CorruptedError>("ShareableList '{}': item {} is corrupted: {}",
                                 state_ ? state_->seg.name() : std::string("?"), i, what);
  }

  detail::TrackedSegment& state(const char* what) const {
    if (!state_) detail::fail<ValueError>("ShareableList: {} on a closed handle", what);
    return *state_;
  }

  std::shared_ptr<detail::TrackedSegment> state_;
  detail::SlotDesc* table_ = nullptr;
  std::byte* data_ = nullptr;
  std::uint64_t data_size_ = 0;
  std::size_t count_ = 0;
};

/// A SharedMemory crosses processes as its name (as Python pickles it): the receiver opens it.
template <>
struct codec<SharedMemory> {
  /// Name of the encoding (part of the type fingerprint).
  static constexpr std::string_view kind = "handle";
  /// Appends the object's name.
  static void encode(const SharedMemory& v, Bytes& out) { codec<std::string>::encode(v.name(), out); }
  //!Returns: the object opened by name. Throws: CorruptedError, NotFoundError, TypeMismatchError.
  static SharedMemory decode(std::span<const std::byte> in) {
    return SharedMemory::open(codec<std::string>::decode(in));
  }
};

/// A ShareableList crosses processes as its name (as Python pickles it): the receiver opens it.
template <>
struct codec<ShareableList> {
  /// Name of the encoding (part of the type fingerprint).
  static constexpr std::string_view kind = "handle";
  /// Appends the object's name.
  static void encode(const ShareableList& v, Bytes& out) { codec<std::string>::encode(v.name(), out); }
  //!Returns: the object opened by name. Throws: CorruptedError, NotFoundError, TypeMismatchError.
  static ShareableList decode(std::span<const std::byte> in) {
    return ShareableList::open(codec<std::string>::decode(in));
  }
};

}  // namespace mpp
