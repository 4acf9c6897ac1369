// mpp — detail::BlockHandle as a headerless object whose users are kernel-kept user locks: the
// SharedMemory block where the OS contract has them (POSIX). Included by shared_block.hpp, which
// says what every implementation provides.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

#include "../errors.hpp"
#include "../segment.hpp"
#include "fork_hooks.hpp"
#include "os.hpp"
#include "shared_block.hpp"
#include "tracker.hpp"

namespace mpp::detail {

/// One process's use of a SharedMemory block, shared by every copy of the handle in this
/// process; destroying it applies the `track` rule (gh-82300: never remove a block that another
/// live process uses).
///
/// The block is headerless. The object holds exactly the requested bytes, so creating and
/// attaching make the system calls of a bare shm_open + ftruncate (or fstat) + mmap, with a user
/// lock in place of the close, and any program can attach to it (Python's SharedMemory, say).
/// Every handle is a user through an OFD lock on its own descriptor (os::take_user_lock), which
/// the kernel drops when the process dies; nothing in the block is touched to count users. The
/// mode tells it from an mpp object with a header (os::kModeHeadered) and, with os::kModeKeep,
/// that it outlives its users (track=false, for `mpp gc`). A forked child becomes a user the
/// first time it uses an inherited handle (note_use()).
class BlockHandle final : public ForkHook {
  struct Tag {};

 public:
  BlockHandle(Tag, std::string_view name, bool track)
      : name_(name), track_(track), record_(std::make_shared<BlockRecord>()) {
    record_->name = name_;
    record_->track = track;
  }
  BlockHandle(const BlockHandle&) = delete;
  BlockHandle& operator=(const BlockHandle&) = delete;

  //!Effects: creates the block `name` (empty: a fresh "mpp.anon.<pid>.<hex>" name) of `size`
  //! zeroed bytes, all backed by memory now, this handle its first user.
  //!Throws: InvalidArgument (bad name, size 0 or too large), ExistsError, NoSpaceError (/dev/shm
  //! has no room for `size` bytes; nothing is left behind), OSError.
  static std::shared_ptr<BlockHandle> create(std::string_view name, std::uint64_t size,
                                             bool track) {
    return create_block(name, size, [&](std::string_view n) { return make(n, size, track); });
  }

  //!Effects: attaches to the existing block `name`, waiting up to `wait` for a creator that has
  //! not sized it yet. Throws: InvalidArgument, NotFoundError, PermissionError (another user's
  //! object, group/world access, or a directory squatting the name),
  //! TypeMismatchError (an mpp object of another kind), CorruptedError (left empty by a creator
  //! that died), TimeoutError, OSError.
  static std::shared_ptr<BlockHandle> open(
      std::string_view name, bool track, std::chrono::milliseconds wait = std::chrono::seconds(5)) {
    validate_name(name);
    auto b = std::make_shared<BlockHandle>(Tag{}, name, track);
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
        fail<CorruptedError>(
            "'{}' is empty and no process holds it: its creator died before "
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
    return b;
  }

  //!Effects: with track, removes the name if no other live process uses it (gh-82300). Our own
  //! mark is dropped *before* looking at the others: of two processes leaving at the same time,
  //! at least one sees the other gone, so the name is not leaked.
  ~BlockHandle() {
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
      if (others_using(name_, 1) == 0 && os::shm_remove(name_)) {  // one query: any lock held?
        tracker::untrack_block(name_);
        record_->removed_at_close.store(true, std::memory_order_release);
      }
    } catch (...) {  // best effort in a destructor; `mpp gc` removes what is left
    }
  }

  /// The block's name.
  const std::string& name() const noexcept { return name_; }
  /// The block's bytes.
  std::byte* data() const noexcept { return base_; }
  /// The size requested at creation (the object's size, which is exactly that).
  std::uint64_t size() const noexcept { return size_; }
  /// Whether this handle applies the track rule when it goes away.
  bool track() const noexcept { return track_; }
  /// Name, size and fate of the block, which every copy of the public handle keeps.
  const std::shared_ptr<BlockRecord>& record() const noexcept { return record_; }

  //!Effects: nothing while the block is intact (one load).
  //!Throws: CorruptedError naming the block if a page of it vanished under this process (another
  //! process truncated it: what was read there was zeros, what was written there is lost),
  //! NoSpaceError if a page could not be allocated (/dev/shm full).
  void check_mapping() const { os::check_mapping(base_); }

  //!Effects: check_mapping(), and a look at the object's size (one fstat), so a truncation is
  //! seen before any page of it is touched. Throws: CorruptedError naming the block if it is
  //! smaller than mapped.
  void check_size(std::string_view what) const {
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
      fail<CorruptedError>(
          "SharedMemory '{}' shrank from {} to {} bytes while this process had "
          "it mapped (another process truncated it), seen at {}; the missing "
          "part reads as zeros and nothing written there reaches other "
          "processes: close it and create it again",
          name_, size_, now, what);
  }

  /// This handle never removes the name (an opener that found no object of its kind there).
  void leave_name() noexcept { track_ = false; }

  //!Effects: removes the name now; this handle will not try again.
  //!Throws: NotFoundError if the name was gone already (Python's FileNotFoundError).
  void unlink() {
    unlinked_ = true;
    unlink_name(name_);
  }

  //!Effects: removes the block `name`, as unlink() does, without a handle (a closed one's).
  //!Throws: NotFoundError if there is no such name.
  static void unlink_name(const std::string& name) {
    tracker::untrack_block(name);
    if (!os::shm_remove(name))
      fail<NotFoundError>(
          "unlink() of SharedMemory '{}': no such block; it was unlinked already (by another "
          "handle or process, or by the track rule once no process used it): unlink once across "
          "all handles, as in Python",
          name);
  }

  //!Effects: a forked child that uses an inherited handle becomes a user of its own (once,
  //! whichever of its threads comes first). Throws: OSError if the kernel refuses the lock.
  void note_use() {
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
  }

  /// Handles using the block now, this one included (if it is a user); dead ones do not count.
  std::uint32_t live_users() {
    std::lock_guard<std::mutex> lock(use_mutex_);
    if (!user_here()) return others_using(name_);
    if (!fd_.valid()) return 1;          // a forked child that found the name removed: only itself
    return 1 + count_locks(fd_, name_);  // through our own descriptor: every lock but ours
  }

  // No thread is inside note_use() or live_users() while the address space is copied, and the
  // child's copy of the descriptor, which would keep the parent's lock after the parent let go,
  // is closed.
  void before_fork() noexcept override { use_mutex_.lock(); }
  void after_fork_parent() noexcept override { use_mutex_.unlock(); }
  void after_fork_child() noexcept override {
    fd_.reset();
    use_mutex_.unlock();
  }

 private:
  static std::shared_ptr<BlockHandle> make(std::string_view name, std::uint64_t size, bool track) {
    validate_name(name);
    auto b = std::make_shared<BlockHandle>(Tag{}, name, track);
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
    return b;
  }

  void map(std::uint64_t size) {
    base_ = static_cast<std::byte*>(os::map(fd_, size, name_));
    size_ = size;
    record_->size = size;
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
    fail<TypeMismatchError>(
        "'{}' is an mpp object of another kind (its header is not written "
        "yet), not a SharedMemory",
        name);
  }

  std::string name_;
  bool track_ = true;
  bool unlinked_ = false;
  std::shared_ptr<BlockRecord> record_;
  std::byte* base_ = nullptr;
  std::uint64_t size_ = 0;
  std::uint32_t guard_ = os::kNoGuard;  // base_'s entry in the SIGBUS guard
  // Set before user_pid_ names this process, fixed afterwards (until a fork).
  os::Fd fd_;                              // this handle's descriptor, holding its user lock
  std::uint32_t slot_ = 0;                 // which lock
  std::atomic<os::pid_type> user_pid_{0};  // the process in which it is a user (not a forked child)
  std::mutex use_mutex_;                   // serialises note_use()'s slow path and live_users()
};

}  // namespace mpp::detail
