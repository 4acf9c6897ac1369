// mpp — detail::BlockHandle as a Segment of Kind::shared_memory whose attach table counts the
// users: the SharedMemory block where the OS contract has no kernel-kept user locks (Windows).
// Included by shared_block.hpp, which says what every implementation provides.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "../segment.hpp"
#include "shared_block.hpp"

namespace mpp::detail {

/// One process's use of a SharedMemory block, shared by every copy of the handle in this
/// process; destroying it applies the `track` rule (gh-82300: never remove a block that another
/// live process uses). The block is a Segment of Kind::shared_memory; its attach table counts
/// the users.
class BlockHandle final {
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
  //!Throws: InvalidArgument (bad name, size 0 or too large), ExistsError, NoSpaceError (no
  //! memory left for `size` bytes; nothing is left behind), OSError.
  static std::shared_ptr<BlockHandle> create(std::string_view name, std::uint64_t size,
                                             bool track) {
    return create_block(name, size, [&](std::string_view n) { return make(n, size, track); });
  }

  //!Effects: attaches to the existing block `name`, waiting up to `wait` for a creator that has
  //! not initialised it yet. Throws: InvalidArgument, NotFoundError, PermissionError,
  //! TypeMismatchError (an mpp object of another kind), CorruptedError, TimeoutError, OSError.
  static std::shared_ptr<BlockHandle> open(
      std::string_view name, bool track, std::chrono::milliseconds wait = std::chrono::seconds(5)) {
    validate_name(name);
    auto b = std::make_shared<BlockHandle>(Tag{}, name, track);
    SegmentOptions o;
    o.init_timeout = wait;
    b->seg_ = Segment::open(name, Kind::shared_memory, TypeInfo::none(), o);
    b->seg_.set_persistent(true);  // the track rule decides, not Segment's creator-unlinks rule
    b->record_->size = b->seg_.payload_size();
    return b;
  }

  //!Effects: with track, removes the name if no other live process uses it (gh-82300). Our own
  //! entry is dropped *before* looking at the others: of two processes leaving at the same time,
  //! at least one sees the other gone, so the name is not leaked.
  ~BlockHandle() {
    if (!track_ || unlinked_ || !seg_.valid()) return;
    try {
      seg_.detach();  // frees this process's entry unless another of its handles keeps it
      if (seg_.live_users() == 0) seg_.unlink();
    } catch (...) {  // best effort in a destructor; `mpp gc` removes what is left
    }
  }

  /// The block's name.
  const std::string& name() const noexcept { return name_; }
  /// The block's bytes.
  std::byte* data() const noexcept { return seg_.payload(); }
  /// The size requested at creation.
  std::uint64_t size() const noexcept { return seg_.payload_size(); }
  /// Whether this handle applies the track rule when it goes away.
  bool track() const noexcept { return track_; }
  /// Name, size and fate of the block, which every copy of the public handle keeps.
  const std::shared_ptr<BlockRecord>& record() const noexcept { return record_; }

  /// Nothing to check: a mapped section cannot shrink or lose pages (os::check_mapping is a no-op).
  void check_mapping() const {}

  /// Nothing to check, as check_mapping() (os::shm_shrunk is always false here).
  void check_size(std::string_view) const {}

  /// This handle never removes the name (an opener that found no object of its kind there).
  void leave_name() noexcept { track_ = false; }

  //!Effects: nothing but that the track rule no longer applies: a Windows mapping's name goes
  //! with its last handle and cannot be removed before (Python's unlink() does nothing here).
  void unlink() {
    unlinked_ = true;
    (void)seg_.unlink();  // the handle's part of it; the OS keeps the name while it is open
  }

  /// Nothing, as unlink().
  static void unlink_name(const std::string&) noexcept {}

  /// Makes sure this process has its entry in the attach table.
  void note_use() { seg_.attach_index(); }

  /// Handles using the block now, this one included; dead ones do not count.
  std::uint32_t live_users() { return seg_.live_users(); }

 private:
  static std::shared_ptr<BlockHandle> make(std::string_view name, std::uint64_t size, bool track) {
    validate_name(name);
    auto b = std::make_shared<BlockHandle>(Tag{}, name, track);
    SegmentOptions o;
    o.persistent = !track;  // recorded for `mpp gc`
    b->seg_ = Segment::create(name, SegmentSpec{Kind::shared_memory, TypeInfo::none(), size, size},
                              {}, o);
    b->seg_.set_persistent(true);  // the track rule decides, not Segment's creator-unlinks rule
    b->record_->size = size;
    return b;
  }

  std::string name_;
  bool track_ = true;
  bool unlinked_ = false;
  std::shared_ptr<BlockRecord> record_;
  Segment seg_;
};

}  // namespace mpp::detail
