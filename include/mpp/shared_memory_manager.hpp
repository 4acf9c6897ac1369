// mpp — SharedMemoryManager (Python's multiprocessing.managers.SharedMemoryManager): a scope that
// creates SharedMemory blocks and ShareableLists and removes them all when it ends.
//
// Unlike Python's, there is no server process: the manager is an object of the process that
// creates it, which keeps a handle of every block it made (so a block lives while the manager
// does, even when every other handle is closed) and unlinks them at shutdown(). A block given to
// other processes (as a Process argument, through a queue, or by name) is removed at the
// manager's end all the same: those processes keep their mappings, but nobody can attach any
// more, as after Python's shutdown().
#pragma once

#include <cstddef>
#include <initializer_list>
#include <mutex>
#include <string>
#include <vector>

#include "detail/os.hpp"
#include "errors.hpp"
#include "shared_memory.hpp"

namespace mpp {

/// Python's SharedMemoryManager as an RAII scope: `smm.SharedMemory(size)` and
/// `smm.ShareableList(items)` create anonymous blocks, and shutdown() (or the destructor)
/// unlinks every one of them, whoever still uses them. Thread-safe. Not copyable: a forked
/// child's copy of it removes nothing (the process that constructed it owns the blocks).
class SharedMemoryManager {
 public:
  //!Effects: an empty manager owned by this process (Python's SharedMemoryManager() followed by
  //! start(): there is no server to start).
  SharedMemoryManager() : owner_(detail::os::current_pid()) {}
  /// Not copyable: one manager removes its blocks once.
  SharedMemoryManager(const SharedMemoryManager&) = delete;
  /// Not copyable.
  SharedMemoryManager& operator=(const SharedMemoryManager&) = delete;
  /// shutdown().
  ~SharedMemoryManager() { shutdown(); }

  /// No-op, for Python-shaped code: the manager is ready once constructed.
  void start() noexcept {}

  //!Returns: a new anonymous SharedMemory of `size` zeroed bytes, which lives until shutdown().
  //!Throws: ValueError after shutdown(), ProcessError in a process other than the manager's,
  //! and what SharedMemory(size) throws.
  mpp::SharedMemory SharedMemory(std::size_t size) {
    std::lock_guard lock(mutex_);
    check_usable("SharedMemory");
    mpp::SharedMemory m(size);
    blocks_.push_back(m);
    return m;
  }

  //!Returns: a new anonymous ShareableList holding `items`, which lives until shutdown().
  //!Throws: as SharedMemory(size).
  mpp::ShareableList ShareableList(const std::vector<ShareableItem>& items) {
    std::lock_guard lock(mutex_);
    check_usable("ShareableList");
    mpp::ShareableList l(items);
    lists_.push_back(l);
    return l;
  }
  /// ShareableList(items) from a braced list: `smm.ShareableList({1, "a", None{}})`.
  mpp::ShareableList ShareableList(std::initializer_list<ShareableItem> items) {
    return ShareableList(std::vector<ShareableItem>(items));
  }

  /// Names of the blocks it made, until shutdown() (Python's server-side list_segments).
  std::vector<std::string> names() const {
    std::lock_guard lock(mutex_);
    std::vector<std::string> out;
    for (const auto& m : blocks_) out.push_back(m.name());
    for (const auto& l : lists_) out.push_back(l.name());
    return out;
  }

  //!Effects: unlinks every block it made (processes using one keep their mapping; a name that is
  //! gone already is skipped) and drops its own handles; later SharedMemory() / ShareableList()
  //! calls throw ValueError. Idempotent. In a process other than the manager's (a forked
  //! child's copy) it only drops the handles.
  void shutdown() noexcept {
    std::lock_guard lock(mutex_);
    const bool owner = owner_ == detail::os::current_pid();
    auto remove = [owner](auto& handle) {
      if (owner) {
        try {
          handle.unlink();
        } catch (...) {  // gone already (NotFoundError), or not ours to judge: nothing to do
        }
      }
      handle.close();
    };
    for (auto& m : blocks_) remove(m);
    for (auto& l : lists_) remove(l);
    blocks_.clear();
    lists_.clear();
    shut_ = true;
  }

 private:
  void check_usable(const char* what) const {
    if (shut_)
      detail::fail<ValueError>(
          "SharedMemoryManager::{}(): the manager is shut down; create another "
          "SharedMemoryManager",
          what);
    if (owner_ != detail::os::current_pid())
      detail::fail<ProcessError>(
          "SharedMemoryManager::{}() in process {}: the manager belongs to process {}, which "
          "removes its blocks; create a SharedMemoryManager in this process",
          what, detail::os::current_pid(), owner_);
  }

  detail::os::pid_type owner_;
  mutable std::mutex mutex_;
  bool shut_ = false;
  std::vector<mpp::SharedMemory> blocks_;
  std::vector<mpp::ShareableList> lists_;
};

}  // namespace mpp
