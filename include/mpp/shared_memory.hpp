// mpp — SharedMemory and ShareableList (Python's multiprocessing.shared_memory).
// SharedMemory is a named block of raw bytes (on POSIX exactly those bytes, with no header, so
// Python can attach to it); size() is exactly the size asked for (cpython#101623) and, with
// track=true, the name is removed when the last process using the block lets go, never while
// another live process is still attached (gh-82300). ShareableList, which lives in such a block,
// is a fixed-length list of int64 / double / bool / string / bytes / None slots that keeps
// strings and bytes byte-exact: trailing NULs and multi-byte UTF-8 survive (cpython#106939,
// #96779).
#pragma once

#include <atomic>
#include <chrono>
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

/// One process's use of a SharedMemory block, shared by every copy of the handle in this
/// process; destroying it applies the `track` rule (gh-82300: never remove a block that another
/// live process uses).
///
/// POSIX: the block is headerless. The object holds exactly the requested bytes, so creating and
/// attaching make the system calls of a bare shm_open + ftruncate (or fstat) + mmap, with a user
/// lock in place of the close, and any program can attach to it (Python's SharedMemory, say).
/// Every handle is a user through an OFD lock on its own descriptor (os::take_user_lock), which
/// the kernel drops when the process dies; nothing in the block is touched to count users. The
/// mode tells it from an mpp object with a header (os::kModeHeadered) and, with os::kModeKeep,
/// that it outlives its users (track=false, for `mpp gc`). A forked child becomes a user the
/// first time it uses an inherited handle (note_use()).
/// Windows: a Segment of Kind::shared_memory whose attach table counts the users.
class BlockHandle final : public ForkHook {
  struct Tag {};

 public:
  BlockHandle(Tag, std::string_view name, bool track) : name_(name), track_(track) {}
  BlockHandle(const BlockHandle&) = delete;
  BlockHandle& operator=(const BlockHandle&) = delete;

  //!Effects: creates the block `name` (empty: a fresh "mpp.anon.<pid>.<hex>" name) of `size`
  //! zeroed bytes, all backed by memory now, this handle its first user.
  //!Throws: InvalidArgument (bad name, size 0 or too large), ExistsError, NoSpaceError (/dev/shm
  //! has no room for `size` bytes; nothing is left behind), OSError.
  static std::shared_ptr<BlockHandle> create(std::string_view name, std::uint64_t size, bool track) {
    if (size == 0)
      fail<InvalidArgument>("cannot create shared memory '{}' of size 0: the size must be positive",
                            name.empty() ? std::string_view("(anonymous)") : name);
    if (size > (std::uint64_t{1} << 46))
      fail<InvalidArgument>("cannot create shared memory '{}': {} bytes is too large", name, size);
    for (;;) {
      const std::string anon =
          name.empty() ? fmt::format("mpp.anon.{}.{:016x}", os::current_pid(), os::random_u64()) : "";
      try {
        return make(name.empty() ? std::string_view(anon) : name, size, track);
      } catch (const ExistsError&) {
        if (!name.empty()) throw;  // an anonymous name taken: 2^-64 odds, try another
      }
    }
  }

  //!Effects: attaches to the existing block `name`, waiting up to `wait` for a creator that has
  //! not sized it yet. Throws: InvalidArgument, NotFoundError, PermissionError (another user's
  //! object, group/world access, or a directory squatting the name),
  //! TypeMismatchError (an mpp object of another kind), CorruptedError (left empty by a creator
  //! that died), TimeoutError, OSError.
  static std::shared_ptr<BlockHandle> open(std::string_view name, bool track,
                                           std::chrono::milliseconds wait = std::chrono::seconds(5)) {
    validate_name(name);
    auto b = std::make_shared<BlockHandle>(Tag{}, name, track);
#if defined(MPP_OS_POSIX)
    b->fd_ = os::shm_open_existing(name);
    auto info = os::file_info(b->fd_, name);
    check_access(info, name);
    if (info.headered) wrong_kind(b->fd_, name);
    b->slot_ = take_lock(b->fd_, name);  // marked before anything is believed, as create() is
    const auto deadline = Deadline::after(wait);
    while (info.size == 0) {  // its creator is between shm_open and ftruncate, or died there
      // The creator takes its lock right after shm_open: empty, a second old and unlocked, the
      // block was abandoned.
      if (os::unix_time_ms() - info.mtime_unix_ms > 1000 && count_locks(b->fd_, name, 1) == 0)
        fail<CorruptedError>("'{}' is empty and no process holds it: its creator died before "
                             "sizing it; remove it with mpp::unlink(\"{}\")",
                             name, name);
      if (deadline.expired())
        fail<TimeoutError>("'{}' is still empty after {} ms: its creator has not sized it yet",
                           name, wait.count());
      os::sleep_for(std::chrono::microseconds(200));
      info = os::file_info(b->fd_, name);
    }
    b->map(info.size);
    b->become_user();
#else
    SegmentOptions o;
    o.init_timeout = wait;
    b->seg_ = Segment::open(name, Kind::shared_memory, TypeInfo::none(), o);
    b->seg_.set_persistent(true);  // the track rule decides, not Segment's creator-unlinks rule
#endif
    return b;
  }

  //!Effects: with track, removes the name if no other live process uses it (gh-82300). Our own
  //! mark is dropped *before* looking at the others: of two processes leaving at the same time,
  //! at least one sees the other gone, so the name is not leaked.
  ~BlockHandle() {
#if defined(MPP_OS_POSIX)
    unregister_fork_hook(this);
    const bool user = user_here();  // false in a forked child that never used it
    if (user && fd_.valid()) os::release_user_lock(fd_, slot_);  // for a forked child's copies too
    fd_.reset();
    if (base_ != nullptr) {
      os::unguard_mapping(base_, guard_);
      os::unmap(base_, size_);
    }
    if (!user || !track_ || unlinked_) return;
    try {
      if (others_using(name_, 1) == 0 && os::shm_remove(name_))  // one query: is any lock held?
        tracker::untrack_block(name_);
    } catch (...) {  // best effort in a destructor; `mpp gc` removes what is left
    }
#else
    if (!track_ || unlinked_ || !seg_.valid()) return;
    try {
      seg_.detach();  // frees this process's entry unless another of its handles keeps it
      if (seg_.live_users() == 0) seg_.unlink();
    } catch (...) {  // best effort in a destructor; `mpp gc` removes what is left
    }
#endif
  }

  /// The block's name.
  const std::string& name() const noexcept { return name_; }
  /// The block's bytes.
  std::byte* data() const noexcept {
#if defined(MPP_OS_POSIX)
    return base_;
#else
    return seg_.payload();
#endif
  }
  /// The size requested at creation (POSIX: the object's size, which is exactly that).
  std::uint64_t size() const noexcept {
#if defined(MPP_OS_POSIX)
    return size_;
#else
    return seg_.payload_size();
#endif
  }
  /// Whether this handle applies the track rule when it goes away.
  bool track() const noexcept { return track_; }

  //!Effects: nothing while the block is intact (one load on POSIX).
  //!Throws: CorruptedError naming the block if a page of it vanished under this process (another
  //! process truncated it: what was read there was zeros, what was written there is lost),
  //! NoSpaceError if a page could not be allocated (/dev/shm full).
  void check_mapping() const {
#if defined(MPP_OS_POSIX)
    os::check_mapping(base_);
#endif
  }

  //!Effects: check_mapping(), and a look at the object's size (one fstat on POSIX; nothing on
  //! Windows, where a mapped section cannot shrink), so a truncation is seen before any page of
  //! it is touched. Throws: CorruptedError naming the block if it is smaller than mapped.
  void check_size(std::string_view what) const {
#if defined(MPP_OS_POSIX)
    check_mapping();
    std::uint64_t now;
    if (user_here() && fd_.valid()) {  // fixed once this process is a user
      now = os::file_info(fd_, name_).size;
    } else {  // a forked child that has not used it: through the name, if it is still there
      const auto st = os::shm_lstat(name_);
      if (!st.exists) return;
      now = st.size;
    }
    if (now < size_)
      fail<CorruptedError>("SharedMemory '{}' shrank from {} to {} bytes while this process had "
                           "it mapped (another process truncated it), seen at {}; the missing "
                           "part reads as zeros and nothing written there reaches other "
                           "processes: close it and create it again",
                           name_, size_, now, what);
#else
    (void)what;
#endif
  }

  /// This handle never removes the name (an opener that found no object of its kind there).
  void leave_name() noexcept { track_ = false; }

  //!Effects: removes the name now; this handle will not try again. Returns: false if it was gone.
  bool unlink() {
    unlinked_ = true;
#if defined(MPP_OS_POSIX)
    tracker::untrack_block(name_);
    return os::shm_remove(name_);
#else
    return seg_.unlink();
#endif
  }

  //!Effects: a forked child that uses an inherited handle becomes a user of its own (once,
  //! whichever of its threads comes first). Throws: OSError if the kernel refuses the lock.
  void note_use() {
#if defined(MPP_OS_POSIX)
    if (user_here()) return;
    std::lock_guard<std::mutex> lock(use_mutex_);
    if (user_here()) return;
    try {
      fd_ = os::shm_open_existing(name_);
    } catch (const NotFoundError&) {  // removed: nobody can attach any more, nothing to mark
      user_pid_.store(os::current_pid(), std::memory_order_release);
      return;
    }
    slot_ = take_lock(fd_, name_);
    user_pid_.store(os::current_pid(), std::memory_order_release);
#else
    seg_.attach_index();
#endif
  }

  /// Handles using the block now, this one included (if it is a user); dead ones do not count.
  std::uint32_t live_users() {
#if defined(MPP_OS_POSIX)
    std::lock_guard<std::mutex> lock(use_mutex_);
    if (!user_here()) return others_using(name_);
    if (!fd_.valid()) return 1;  // a forked child that found the name removed: only itself
    return 1 + count_locks(fd_, name_);  // through our own descriptor: every lock but ours
#else
    return seg_.live_users();
#endif
  }

#if defined(MPP_OS_POSIX)
  // No thread is inside note_use() or live_users() while the address space is copied, and the
  // child's copy of the descriptor, which would keep the parent's lock after the parent let go,
  // is closed.
  void before_fork() noexcept override { use_mutex_.lock(); }
  void after_fork_parent() noexcept override { use_mutex_.unlock(); }
  void after_fork_child() noexcept override {
    fd_.reset();
    use_mutex_.unlock();
  }
#else  // never registered: Windows has no fork
  void before_fork() noexcept override {}
  void after_fork_parent() noexcept override {}
  void after_fork_child() noexcept override {}
#endif

 private:
  static std::shared_ptr<BlockHandle> make(std::string_view name, std::uint64_t size, bool track) {
    validate_name(name);
    auto b = std::make_shared<BlockHandle>(Tag{}, name, track);
#if defined(MPP_OS_POSIX)
    b->fd_ = os::shm_create_empty(name, track ? 0 : os::kModeKeep);
    try {
      // The lock comes before the size: an opener that sees a size sees the creator as a user.
      b->slot_ = take_lock(b->fd_, name);
      os::shm_set_size(b->fd_, name, size);
      b->map(size);
      tracker::track_block(name, os::shm_fstat(b->fd_, name).inode);
    } catch (...) {
      try {
        os::shm_remove(name);
      } catch (...) {  // the original error matters more
      }
      throw;
    }
    b->become_user();
#else
    SegmentOptions o;
    o.persistent = !track;  // recorded for `mpp gc`
    b->seg_ = Segment::create(name, SegmentSpec{Kind::shared_memory, TypeInfo::none(), size, size},
                              {}, o);
    b->seg_.set_persistent(true);  // the track rule decides, not Segment's creator-unlinks rule
#endif
    return b;
  }

#if defined(MPP_OS_POSIX)
  void map(std::uint64_t size) {
    base_ = static_cast<std::byte*>(os::map(fd_, size, name_));
    size_ = size;
    guard_ = os::guard_mapping(base_, size, name_);  // a peer's ftruncate: CorruptedError
  }

  void become_user() {
    user_pid_.store(os::current_pid(), std::memory_order_release);
    register_fork_hook(this);
  }

  static std::uint32_t take_lock(const os::Fd& fd, std::string_view name) {
    // Distinct first guesses for this process's handles and for other processes.
    static std::atomic<std::uint32_t> handles{0};
    const std::uint32_t hint = (static_cast<std::uint32_t>(os::current_pid()) * 2654435761u >> 12) +
                               handles.fetch_add(1, std::memory_order_relaxed);
    std::uint32_t slot = 0;
    if (const int err = os::take_user_lock(fd, hint, slot); err != 0)
      throw OSError(fmt::format("'{}': cannot mark this process as a user (fcntl F_OFD_SETLK: "
                                "{}); close some handles",
                                name, std::strerror(err)),
                    err);
    return slot;
  }

  // Whether this handle is a user in this process (false in a forked child until note_use()).
  bool user_here() const noexcept {
    return user_pid_.load(std::memory_order_acquire) == os::current_pid();
  }

  // Other handles' locks on fd's object, counted up to `limit`.
  static std::uint32_t count_locks(const os::Fd& fd, std::string_view name,
                                   std::uint32_t limit = os::kUserLockSlots) {
    const auto n = os::count_user_locks(fd, limit);
    if (!n)
      throw OSError(fmt::format("'{}': cannot count its users (fcntl F_OFD_GETLK: {})", name,
                                std::strerror(errno)),
                    errno);
    return *n;
  }

  // Users of `name` (counted up to `limit`), seen through a new descriptor (0 if the name is gone).
  static std::uint32_t others_using(const std::string& name,
                                    std::uint32_t limit = os::kUserLockSlots) {
    os::Fd fd;
    try {
      fd = os::shm_open_existing(name);
    } catch (const NotFoundError&) {
      return 0;
    }
    return count_locks(fd, name, limit);
  }

  // An mpp object with a header opened as a block: says which kind it is, if its header says.
  [[noreturn]] static void wrong_kind(const os::Fd& fd, std::string_view name) {
    SegmentHeader h{};
    const bool whole = os::read_at(fd, 0, &h, sizeof h) == sizeof h;
    if (whole && h.magic == kSegmentMagic)
      fail<TypeMismatchError>("'{}' is a {}, not a SharedMemory", name,
                              kind_name(static_cast<Kind>(h.kind)));
    fail<TypeMismatchError>("'{}' is an mpp object of another kind (its header is not written "
                            "yet), not a SharedMemory",
                            name);
  }
#endif

  std::string name_;
  bool track_ = true;
  bool unlinked_ = false;
#if defined(MPP_OS_POSIX)
  std::byte* base_ = nullptr;
  std::uint64_t size_ = 0;
  std::uint32_t guard_ = os::kNoGuard;  // base_'s entry in the SIGBUS guard
  // Set before user_pid_ names this process, fixed afterwards (until a fork).
  os::Fd fd_;               // this handle's descriptor, holding its user lock
  std::uint32_t slot_ = 0;  // which lock
  std::atomic<os::pid_type> user_pid_{0};  // the process in which it is a user (not a forked child)
  std::mutex use_mutex_;  // serialises note_use()'s slow path and live_users()
#else
  Segment seg_;
#endif
};

}  // namespace detail

/// Python's SharedMemory: a block of shared bytes with a name.
///
/// Creation backs every byte with memory (POSIX: fallocate on /dev/shm), so a full /dev/shm is a
/// NoSpaceError from the constructor, never a block that exists in this process only. buf() is
/// raw memory that mpp cannot watch, so damage done by another process is reported at the calls
/// mpp controls: buf(), size() and live_users() raise CorruptedError naming the block when it is
/// smaller than this process mapped it (another process truncated it; one fstat), or when this
/// process touched a page that had vanished (it read zeros, and what it wrote there reached no
/// one; the touch itself never kills the process), and NoSpaceError when a page of a block
/// created sparse by another program could not be allocated. A truncation undone by growing the
/// block again before anyone touched the cut part only zeroes bytes, as any writer may.
class SharedMemory {
 public:
  //!Effects: Python's SharedMemory(name, create, size, track): creates the block `name` of
  //! `size` zeroed bytes when `create`, otherwise attaches to the existing block `name` (size is
  //! then ignored). With `track`, the name is removed when the last handle of the last attached
  //! process goes away; without it, only unlink() removes it. On POSIX the object holds exactly
  //! `size` bytes and nothing else, so other programs (Python's SharedMemory) can attach to it
  //! and it can attach to theirs.
  //! An empty name is refused as by every other kind (InvalidArgument): the anonymous block of
  //! Python's SharedMemory(create=True, size=n) is SharedMemory(n).
  //!Throws: InvalidArgument (bad or empty name, create with size 0), ExistsError, NotFoundError,
  //! TypeMismatchError (the name is another kind of object), NoSpaceError (/dev/shm has no room
  //! for `size` bytes), PermissionError (another user's object, or a directory, by that name),
  //! CorruptedError, OSError.
  SharedMemory(std::string_view name, bool create = false, std::size_t size = 0, bool track = true)
      : state_(create ? detail::BlockHandle::create(named(name), size, track)
                      : detail::BlockHandle::open(name, track)) {}

  //!Effects: creates an anonymous block of `size` zeroed bytes (a fresh "mpp.anon.*" name, as
  //! Python's SharedMemory(create=True, size=n)); forked children inherit it, and other
  //! processes can attach by name() while it lives.
  explicit SharedMemory(std::size_t size, bool track = true)
      : state_(detail::BlockHandle::create({}, size, track)) {}

  /// Creates the block `name` of `size` zeroed bytes (ExistsError if taken; InvalidArgument for
  /// an empty name, NoSpaceError if /dev/shm has no room for it).
  static SharedMemory create(std::string_view name, std::size_t size, bool track = true) {
    return SharedMemory(detail::BlockHandle::create(named(name), size, track));
  }
  /// Attaches to the existing block `name` (NotFoundError if absent).
  static SharedMemory open(std::string_view name, bool track = true) {
    return SharedMemory(detail::BlockHandle::open(name, track));
  }

  //!Returns: the bytes of the block: exactly size() of them.
  //!Throws: ValueError after close(); CorruptedError naming the block if it shrank under this
  //! process (another process truncated it), NoSpaceError if a page of it could not be allocated.
  //! These are checked here (one fstat on POSIX) and by size(), live_users() and every
  //! ShareableList operation, the points mpp controls: the span itself is raw memory, so a
  //! truncation between two buf() calls shows as zeros in the vanished part (never a crash) and
  //! is reported at the next of these calls.
  std::span<std::byte> buf() const {
    auto& s = state("buf");
    s.note_use();  // a forked child using an inherited handle counts as a user
    s.check_size("buf()");
    return {s.data(), static_cast<std::size_t>(s.size())};
  }
  /// The block's name (pass it to SharedMemory(name) in another process).
  const std::string& name() const { return state("name").name(); }
  //!Returns: the size requested at creation (not rounded up to pages: cpython#101623).
  //!Throws: ValueError after close(); CorruptedError, NoSpaceError as buf().
  std::size_t size() const {
    auto& s = state("size");
    s.check_size("size()");
    return static_cast<std::size_t>(s.size());
  }
  /// Whether this handle applies the track rule when it goes away.
  bool track() const { return state("track").track(); }
  /// False after close().
  bool is_open() const noexcept { return state_ != nullptr; }

  //!Effects: Python's close(): this handle stops using the block (other copies of the handle
  //! and other processes are unaffected); buf() then throws. Idempotent.
  void close() noexcept { state_.reset(); }

  //!Effects: Python's unlink(): removes the name now, whoever else still uses it; mappings keep
  //! working, but no process can attach any more. Throws: ValueError after close().
  //!Returns: false if the name was already gone.
  bool unlink() { return state("unlink").unlink(); }

  /// Handles using the block now, in any process, this one included (a killed process's are not
  /// counted; a forked child's inherited handle counts once the child uses it).
  std::uint32_t live_users() const {
    auto& s = state("live_users");
    s.check_size("live_users()");
    return s.live_users();
  }

 private:
  explicit SharedMemory(std::shared_ptr<detail::BlockHandle> s) noexcept : state_(std::move(s)) {}

  // A name given as a name must be one: "" would otherwise mean an anonymous block.
  static std::string_view named(std::string_view name) {
    if (name.empty())
      detail::fail<InvalidArgument>("invalid object name '': names must start with \"mpp.\" "
                                    "(for an anonymous block, use SharedMemory(size))");
    return name;
  }

  detail::BlockHandle& state(const char* what) const {
    if (!state_) detail::fail<ValueError>("SharedMemory::{}() on a closed handle", what);
    return *state_;
  }

  std::shared_ptr<detail::BlockHandle> state_;
};

/// Python's None in a ShareableList.
using None = std::monostate;

/// One element of a ShareableList: None, int (64-bit), float, bool, str (UTF-8) or bytes.
using ShareableItem = std::variant<None, std::int64_t, double, bool, std::string, Bytes>;

namespace detail {

enum class SlotKind : std::uint8_t { none = 0, int64, float64, boolean, str, bytes };

/// ShareableListHeader::magic ("mpplist1"), stored last by the creator (release).
inline constexpr std::uint64_t kShareableListMagic = 0x317473696c70706dull;

/// Start of a ShareableList's block; then `count` SlotDesc, then the data area.
struct ShareableListHeader {
  std::uint64_t magic;  ///< kShareableListMagic once the list is filled; 0 before; atomic_ref
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
/// UTF-8 exactly. Like Python, there is no lock: guard concurrent writers with a Lock. It lives in
/// a SharedMemory block (as in Python), which a SharedMemory may open by the list's name. Every
/// operation reports a block that shrank under it (CorruptedError naming it), never returning
/// the zeros of a vanished page as None or storing into memory no one else sees.
class ShareableList {
 public:
  using value_type = ShareableItem;

  //!Effects: creates an anonymous list holding `items` (fresh "mpp.anon.*" name).
  ShareableList(std::initializer_list<ShareableItem> items, bool track = true)
      : ShareableList(make({}, std::vector<ShareableItem>(items), track)) {}
  /// As above, from a vector.
  explicit ShareableList(const std::vector<ShareableItem>& items, bool track = true)
      : ShareableList(make({}, items, track)) {}

  /// Creates the list `name` holding `items` (ExistsError if taken, InvalidArgument for an
  /// empty name: the anonymous form is ShareableList(items), NoSpaceError if /dev/shm is full).
  static ShareableList create(std::string_view name, const std::vector<ShareableItem>& items,
                              bool track = true) {
    if (name.empty())
      detail::fail<InvalidArgument>("invalid object name '': names must start with \"mpp.\" "
                                    "(for an anonymous list, use ShareableList(items))");
    return make(name, items, track);
  }
  //!Effects: attaches to the existing list `name` (Python: ShareableList(name=...)).
  //! Waits up to 5 s for a creator that is still filling it.
  //!Throws: NotFoundError, TypeMismatchError (a block that holds no list), CorruptedError (a slot
  //! table that does not fit, or a creator that died while filling it), TimeoutError.
  static ShareableList open(std::string_view name, bool track = true) {
    ShareableList l(detail::BlockHandle::open(name, track));
    try {
      l.wait_filled(std::chrono::seconds(5));
      l.validate();
      l.state_->check_size("open");
    } catch (...) {
      l.state_->leave_name();  // not a list: not ours to remove
      throw;
    }
    return l;
  }

  /// Number of slots (fixed).
  std::size_t size() const { return count_; }
  /// The list's name.
  const std::string& name() const { return state("name").name(); }

  //!Returns: the item in slot `i`. Negative indices count from the end, as in Python.
  //!Throws: IndexError, CorruptedError (a slot that does not fit, or a block that shrank under
  //! this process: see SharedMemory::buf()), NoSpaceError.
  ShareableItem get(std::ptrdiff_t i) const {
    ShareableItem v = read(i);
    // A page that vanished under us read as zeros: say so rather than return them.
    state_->check_mapping();
    return v;
  }

  //!Effects: stores `v` in slot `i` (the slot may change kind, as in Python).
  //!Throws: IndexError, ValueError if `v` needs more bytes than the slot reserved,
  //! CorruptedError if the block shrank under this process (the value did not reach the others),
  //! NoSpaceError.
  void set(std::ptrdiff_t i, const ShareableItem& v) {
    auto& d = desc(i);
    std::byte* p = data(d);
    const std::uint64_t cap = d.capacity;
    std::uint64_t len = 0;
    detail::SlotKind kind = detail::SlotKind::none;
    auto put = [&](const void* src, std::uint64_t n, detail::SlotKind k) {
      if (n > cap) {
        state_->check_mapping();  // a capacity read from a vanished page is no ValueError
        detail::fail<ValueError>(
            "ShareableList '{}': item {} has room for {} bytes, the new value needs {} (a slot's "
            "size is fixed when the list is created)",
            name(), i, cap, n);
      }
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
    // A page that vanished under us took the value into private memory: say so.
    state_->check_mapping();
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
  /// Slot `i` (negative counts from the end); bounds-checked (IndexError).
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
  std::size_t capacity(std::ptrdiff_t i) const {
    const std::uint64_t cap = desc(i).capacity;
    state_->check_mapping();  // not a 0 read from a vanished page
    return static_cast<std::size_t>(cap);
  }

  /// Stops using the list in this handle (see SharedMemory::close).
  void close() noexcept {
    state_.reset();
    count_ = 0;
  }
  /// Removes the name now (see SharedMemory::unlink). Returns: false if it was already gone.
  bool unlink() { return state("unlink").unlink(); }

 private:
  explicit ShareableList(std::shared_ptr<detail::BlockHandle> s) noexcept : state_(std::move(s)) {}

  // get() before its check that the pages read were still the block's.
  ShareableItem read(std::ptrdiff_t i) const {
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

  static ShareableList make(std::string_view name, const std::vector<ShareableItem>& items,
                            bool track) {
    using namespace detail;
    const std::uint64_t n = items.size();
    std::uint64_t data_size = 0;
    for (const auto& it : items) data_size += slot_capacity(it);
    const std::uint64_t table = sizeof(ShareableListHeader) + n * sizeof(SlotDesc);
    ShareableList l(BlockHandle::create(name, table + data_size, track));
    std::byte* p = l.state_->data();
    auto* h = reinterpret_cast<ShareableListHeader*>(p);
    h->count = n;
    h->data_size = data_size;
    auto* d = reinterpret_cast<SlotDesc*>(p + sizeof(ShareableListHeader));
    std::uint64_t off = 0;
    for (std::uint64_t i = 0; i < n; ++i) {
      d[i].offset = off;
      d[i].capacity = slot_capacity(items[i]);
      off += d[i].capacity;
    }
    l.validate();
    for (std::uint64_t i = 0; i < n; ++i) l.set(static_cast<std::ptrdiff_t>(i), items[i]);
    // Published last: an opener that sees the magic sees the whole table and every item.
    std::atomic_ref<std::uint64_t>(h->magic).store(kShareableListMagic, std::memory_order_release);
    return l;
  }

  // An opener waits for the creator's magic; a block that never gets one is not a list.
  void wait_filled(std::chrono::milliseconds wait) {
    using namespace detail;
    auto& b = state("open");
    if (b.size() < sizeof(ShareableListHeader))
      fail<TypeMismatchError>("'{}' is a SharedMemory block of {} bytes, not a ShareableList",
                              b.name(), b.size());
    std::atomic_ref<std::uint64_t> magic(reinterpret_cast<ShareableListHeader*>(b.data())->magic);
    const auto deadline = Deadline::after(wait);
    for (;;) {
      const std::uint64_t m = magic.load(std::memory_order_acquire);
      b.check_size("open");  // a zero read from a vanished page is no "not filled yet"
      if (m == kShareableListMagic) return;
      if (m != 0)
        fail<TypeMismatchError>("'{}' is a SharedMemory block that holds no ShareableList",
                                b.name());
      if (b.live_users() <= 1)
        fail<CorruptedError>("'{}' holds no ShareableList and nobody else has it open: a zeroed "
                             "SharedMemory, or a list whose creator died while filling it",
                             b.name());
      if (deadline.expired())
        fail<TimeoutError>("'{}' is still not a filled ShareableList after {} ms (its creator "
                           "is slow, or it is a zeroed SharedMemory)",
                           b.name(), wait.count());
      os::sleep_for(std::chrono::microseconds(200));
    }
  }

  // The slot table is checked once here; every access re-checks its slot, since another process
  // may overwrite the table at any time.
  void validate() {
    using namespace detail;
    auto& b = state("open");
    const std::uint64_t psize = b.size();
    if (psize < sizeof(ShareableListHeader)) corrupt(-1, "the block is smaller than its header");
    const auto* h = reinterpret_cast<const ShareableListHeader*>(b.data());
    const std::uint64_t n = h->count;
    if (n > (psize - sizeof(ShareableListHeader)) / sizeof(SlotDesc))
      corrupt(-1, "its slot count does not fit the block");
    table_ = reinterpret_cast<SlotDesc*>(b.data() + sizeof(ShareableListHeader));
    data_ = b.data() + sizeof(ShareableListHeader) + n * sizeof(SlotDesc);
    data_size_ = psize - sizeof(ShareableListHeader) - n * sizeof(SlotDesc);
    count_ = static_cast<std::size_t>(n);
  }

  detail::SlotDesc& desc(std::ptrdiff_t i) const {
    state("item access").note_use();  // a forked child using the list counts as a user
    const auto n = static_cast<std::ptrdiff_t>(count_);
    const std::ptrdiff_t j = i < 0 ? i + n : i;
    if (j < 0 || j >= n)
      detail::fail<IndexError>("ShareableList '{}': index {} out of range (size {})", name(), i, n);
    return table_[j];
  }

  std::byte* data(const detail::SlotDesc& d) const {
    const std::uint64_t off = d.offset, cap = d.capacity;
    if (off > data_size_ || cap > data_size_ - off)
      corrupt(&d - table_, "its slot lies outside the segment");
    return data_ + off;
  }

  [[noreturn]] void corrupt(std::ptrdiff_t i, std::string_view what) const {
    if (state_) state_->check_mapping();  // zeros from a vanished page: say that instead
    detail::fail<CorruptedError>("ShareableList '{}': item {} is corrupted: {}",
                                 state_ ? state_->name() : std::string("?"), i, what);
  }

  detail::BlockHandle& state(const char* what) const {
    if (!state_) detail::fail<ValueError>("ShareableList: {} on a closed handle", what);
    return *state_;
  }

  std::shared_ptr<detail::BlockHandle> state_;
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
