// mpp — detail::BlockHandle, one process's use of a SharedMemory block: the part both
// implementations share, and the choice between them.
//
// Every implementation provides the same class detail::BlockHandle: create(name, size, track),
// open(name, track, wait), name(), data(), size(), track(), record(), check_mapping(),
// check_size(what), leave_name(), unlink(), unlink_name(name), note_use() and live_users();
// destroying the last handle of a process applies the `track` rule (gh-82300: never remove a
// block that another live process uses) and notes in the record when that removed the name.
// - shared_block_posix.hpp: a headerless object whose users are kernel-kept user locks
//   (os::take_user_lock), where the OS contract has them;
// - shared_block_segment.hpp: a Segment of Kind::shared_memory whose attach table counts the
//   users, everywhere else (Windows).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "../errors.hpp"
#include "../segment.hpp"
#include "os.hpp"

namespace mpp::detail {

/// What every copy of a SharedMemory or ShareableList handle knows, open or closed (Python keeps
/// name and size after close()), shared with the handle's BlockHandle.
struct BlockRecord {
  std::string name;        ///< the block's name
  std::uint64_t size = 0;  ///< its size at creation
  bool track = true;       ///< the handle's track flag
  /// Set when the BlockHandle's destructor removed the name by the track rule, i.e. at the
  /// close() of the last copy in the last process: the next unlink() through a closed copy is
  /// that removal (Python's close() then unlink() succeeds once; a second unlink() raises).
  std::atomic<bool> removed_at_close{false};
};

//!Effects: checks `size` for a new block `name` and calls `make(n)` with `name`, or with a fresh
//! "mpp.anon.<pid>.<hex>" name when `name` is empty (again with another one if it was taken).
//!Returns: what `make` returns. Throws: InvalidArgument (size 0 or too large), what `make` throws.
template <class Make>
auto create_block(std::string_view name, std::uint64_t size, Make make) {
  if (size == 0)
    fail<InvalidArgument>("cannot create shared memory '{}' of size 0: the size must be positive",
                          name.empty() ? std::string_view("(anonymous)") : name);
  if (size > (std::uint64_t{1} << 46))
    fail<InvalidArgument>("cannot create shared memory '{}': {} bytes is too large", name, size);
  for (;;) {
    const std::string anon =
        name.empty() ? fmt::format("mpp.anon.{}.{:016x}", os::current_pid(), os::random_u64()) : "";
    try {
      return make(name.empty() ? std::string_view(anon) : name);
    } catch (const ExistsError&) {
      if (!name.empty()) throw;  // an anonymous name taken: 2^-64 odds, try another
    }
  }
}

}  // namespace mpp::detail

#if defined(MPP_OS_POSIX)
#  include "shared_block_posix.hpp"
#else
#  include "shared_block_segment.hpp"
#endif
