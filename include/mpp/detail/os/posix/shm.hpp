// mpp — POSIX backend, named shared memory and files: creating, opening, sizing, mapping,
// removing and inspecting the objects of /dev/shm, and the memory of a mapping (populate,
// commit, discard).
#pragma once

#include "../../config.hpp"

#if !defined(MPP_OS_POSIX)
#  error "mpp: detail/os/posix/shm.hpp included on a non-POSIX platform"
#endif

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>

#include "common.hpp"

namespace mpp::detail::os {

/// Whether a segment must keep its OS handle open while mapped (a mapping keeps a POSIX
/// shared-memory object alive by itself).
inline constexpr bool kKeepHandleWhileMapped = false;

inline std::string shm_path(std::string_view name) { return "/" + std::string(name); }

/// Where named shared-memory objects appear in the file system (Linux: tmpfs on /dev/shm).
inline constexpr const char* kShmDirectory = "/dev/shm";

//!Returns: whether `uid` is this process's effective user id. The id is read once per process
//! (attaching stays free of that system call) and again only when `uid` differs from that
//! reading, so a process that changed its effective uid since still accepts objects of its first
//! identity.
inline bool is_effective_uid(uid_t uid) noexcept {
  static const uid_t first = ::geteuid();
  return uid == first || uid == ::geteuid();
}

/// Mode bit of an object that starts with an mpp header (every mpp object but a SharedMemory
/// block): set atomically by shm_open, so an opener tells a header still being written from a
/// headerless block, without reading it. Not touched by umask, ftruncate or chmod.
inline constexpr unsigned kModeHeadered = S_ISVTX;
/// Mode bit of a headerless block that outlives its users (an untracked SharedMemory): `mpp gc`
/// keeps it. Kept by ftruncate and chmod as long as the group is the creator's own.
inline constexpr unsigned kModeKeep = S_ISGID;

namespace posix_detail {
// /dev/shm as an O_PATH descriptor, opened once per process: opening an object by name from it
// walks one path component instead of four, a visible part of the cost of an attach. It is
// moved to a high number so that a program that closes or reuses low descriptors does not meet
// it; one that closed it anyway gets EBADF or ENOTDIR, and the directory is opened again.
inline std::atomic<int> g_shm_dir{-1};

inline int shm_dir(bool reopen = false) noexcept {
  int d = g_shm_dir.load(std::memory_order_acquire);
  if (d >= 0 && !reopen) return d;
  int fresh = ::open(kShmDirectory, O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (fresh < 0) return -1;
  if (const int high = ::fcntl(fresh, F_DUPFD_CLOEXEC, 900); high >= 0) {
    ::close(fresh);
    fresh = high;
  }
  if (g_shm_dir.compare_exchange_strong(d, fresh, std::memory_order_acq_rel)) return fresh;
  ::close(fresh);  // another thread was first: use its descriptor
  return d;
}
}  // namespace posix_detail

//!Effects: shm_open(name) on Linux's /dev/shm: openat(2) from the cached directory descriptor,
//! or shm_open(3) if there is none. `name` must not contain '/' (EINVAL, as shm_open).
//!Returns: the descriptor, or -1 with errno set.
inline int shm_open_name(std::string_view name, int flags, mode_t mode) noexcept {
  char path[NAME_MAX + 2];
  if (name.empty() || name.size() > NAME_MAX || name.find('/') != std::string_view::npos) {
    errno = name.size() > NAME_MAX ? ENAMETOOLONG : EINVAL;
    return -1;
  }
  const int dir = posix_detail::shm_dir();
  if (dir < 0) {
    path[0] = '/';
    std::memcpy(path + 1, name.data(), name.size());
    path[name.size() + 1] = '\0';
    return ::shm_open(path, flags, mode);
  }
  std::memcpy(path, name.data(), name.size());
  path[name.size()] = '\0';
  int fd = ::openat(dir, path, flags, mode);
  if (fd < 0 && (errno == EBADF || errno == ENOTDIR)) {  // the program closed or replaced it
    const int again = posix_detail::shm_dir(true);
    if (again >= 0) fd = ::openat(again, path, flags, mode);
  }
  return fd;
}

//!Effects: creates the shared-memory object `name` exclusively and empty, mode 0600 plus
//! `mark` (kModeHeadered, kModeKeep or 0); an umask can only narrow the 0600, and
//! shm_open_existing() repairs a narrowed mode of our own object.
//!Throws: ExistsError if the name is taken, OSError otherwise.
inline Fd shm_create_empty(std::string_view name, unsigned mark) {
  // O_NOFOLLOW: a planted symlink never wins.
  Fd fd(shm_open_name(name, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                      static_cast<mode_t>(0600 | mark)));
  if (fd.get() < 0) {
    const int err = errno;
    if (err == EEXIST)
      fail<ExistsError>(
          "'{}' already exists; open it with open(), pick another name, or remove "
          "a stale one with mpp::unlink(\"{}\")",
          name, name);
    throw_errno("shm_open(create)", name, err);
  }
  return fd;
}

//!Returns: the bytes an unprivileged process may still allocate in /dev/shm (statvfs), or
//! nullopt if the file system cannot tell.
inline std::optional<std::uint64_t> shm_free_bytes() noexcept {
  struct statvfs v {};
  if (::statvfs(kShmDirectory, &v) != 0) return std::nullopt;
  return static_cast<std::uint64_t>(v.f_bavail) * static_cast<std::uint64_t>(v.f_frsize);
}

//!Throws: NoSpaceError saying that /dev/shm has no room for `needed` more bytes of `name`, how
//! much it has, and what to do (`advice` is appended to that).
[[noreturn]] inline void fail_no_space(std::string_view name, std::uint64_t needed,
                                       std::string_view advice = {}) {
  const auto free = shm_free_bytes();
  throw NoSpaceError(
      fmt::format("{} is full: {} bytes needed for '{}', {} free; free space with `mpp gc` or "
                  "enlarge {}{}",
                  kShmDirectory, needed, name, free ? fmt::format("{}", *free) : std::string("?"),
                  kShmDirectory, advice),
      ENOSPC);
}

namespace posix_detail {
// fallocate(2) on tmpfs allocates the pages now (and undoes its partial work on failure), so a
// full /dev/shm is ENOSPC here rather than a SIGBUS at the first touch. Returns: 0 or errno;
// EOPNOTSUPP where the file system cannot reserve (then the pages are allocated on first touch).
inline int fallocate_retry(int fd, int mode, std::uint64_t len) noexcept {
  for (;;) {
    if (::fallocate(fd, mode, 0, static_cast<off_t>(len)) == 0) return 0;
    if (errno != EINTR) return errno;
  }
}
}  // namespace posix_detail

//!Effects: sizes the new object `name` (open as `fd`) to `size` bytes, of which the first
//! `reserve` are backed by memory now (a full /dev/shm is an error here, not a fault at the first
//! touch); the rest is allocated as it is touched. With everything reserved, the object's size
//! changes once, when all of it is backed. On failure removes the name.
//!Throws: NoSpaceError (/dev/shm full), OSError.
inline void shm_set_size(const Fd& fd, std::string_view name, std::uint64_t size,
                         std::uint64_t reserve = UINT64_MAX) {
  reserve = std::min(reserve, size);
  int err =
      reserve == size && size != 0 ? posix_detail::fallocate_retry(fd.get(), 0, size) : EOPNOTSUPP;
  const char* call = "fallocate";
  if (err == EOPNOTSUPP || err == ENOSYS) {  // sparse by request, or no fallocate: size it
    call = "ftruncate";
    int rc;
    do rc = ::ftruncate(fd.get(), static_cast<off_t>(size));
    while (rc != 0 && errno == EINTR);
    err = rc == 0 ? 0 : errno;
    if (err == 0 && reserve != 0 && reserve != size) {
      call = "fallocate";
      err = posix_detail::fallocate_retry(fd.get(), FALLOC_FL_KEEP_SIZE, reserve);
      if (err == EOPNOTSUPP || err == ENOSYS) err = 0;
    }
  }
  if (err == 0) return;
  ::shm_unlink(shm_path(name).c_str());
  if (err == ENOSPC || err == ENOMEM) fail_no_space(name, reserve);
  throw_errno(call, name, err);
}

//!Effects: creates the object `name` of an mpp header and payload, `size` bytes, exclusively
//! (see shm_create_empty; marked kModeHeadered), the first `reserve` bytes backed now (see
//! shm_set_size). Throws: ExistsError, NoSpaceError, OSError.
inline Fd shm_create(std::string_view name, std::uint64_t size,
                     std::uint64_t reserve = UINT64_MAX) {
  Fd fd = shm_create_empty(name, kModeHeadered);
  shm_set_size(fd, name, size, reserve);
  return fd;
}

//!Effects: opens the existing shared-memory object `name` read-write.
//!Throws: NotFoundError if it does not exist, PermissionError if access is denied or it is a link.
inline Fd shm_open_existing(std::string_view name) {
  Fd fd(shm_open_name(name, O_RDWR | O_NOFOLLOW | O_CLOEXEC, 0));
  if (fd.get() < 0 && errno == EACCES) {
    // Our own private object whose creator's umask took owner bits away: give them back.
    const std::string file = std::string(kShmDirectory) + shm_path(name);
    struct stat st {};
    if (::lstat(file.c_str(), &st) == 0 && S_ISREG(st.st_mode) && (st.st_mode & 077) == 0 &&
        is_effective_uid(st.st_uid) && ::chmod(file.c_str(), (st.st_mode & 07000) | 0600) == 0)
      fd = Fd(shm_open_name(name, O_RDWR | O_NOFOLLOW | O_CLOEXEC, 0));
    else
      errno = EACCES;
  }
  if (fd.get() < 0) {
    const int err = errno;
    if (err == ENOENT)
      fail<NotFoundError>(
          "no mpp object named '{}'; create it first (create/open_or_create) "
          "or check the name",
          name);
    if (err == EACCES || err == ELOOP || err == EPERM)
      fail<PermissionError>(
          "'{}' exists but cannot be opened by this user ({}); it belongs to "
          "someone else or is a link: choose another name",
          name, std::strerror(err));
    if (err == EISDIR)  // a directory squatting the name (only a file system user can make one)
      fail<PermissionError>(
          "'{}' is a directory, not a shared-memory object; refusing it: "
          "choose another name, or remove the directory {}/{}",
          name, kShmDirectory, name);
    throw_errno("shm_open", name, err);
  }
  return fd;
}

//!Effects: removes the name `name`; existing mappings stay valid. Returns: false if it did not
//!exist. Throws: PermissionError if the name is a directory, OSError.
inline bool shm_remove(std::string_view name) {
  const std::string path = shm_path(name);
  if (::shm_unlink(path.c_str()) == 0) return true;
  if (errno == ENOENT) return false;
  if (errno == EISDIR)  // a directory squatting the name
    fail<PermissionError>(
        "'{}' is a directory, not a shared-memory object; refusing to remove "
        "it: remove it with rmdir {}/{} if it is yours",
        name, kShmDirectory, name);
  throw_errno("shm_unlink", name, errno);
}

/// What fstat says about an open shared-memory object.
struct FileInfo {
  std::uint64_t size;          ///< current size in bytes
  bool owned_by_us;            ///< owner is this process's effective user
  bool private_mode;           ///< no group/other permission bits
  bool regular;                ///< a regular shared-memory object, not a device or directory
  bool headered;               ///< marked kModeHeadered: an mpp object that starts with a header
  std::int64_t mtime_unix_ms;  ///< last size change or write (creation, for a new object)
};

inline FileInfo file_info(const Fd& fd, std::string_view name) {
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) throw_errno("fstat", name, errno);
  return FileInfo{
      static_cast<std::uint64_t>(st.st_size),
      is_effective_uid(st.st_uid),
      (st.st_mode & 077) == 0,
      S_ISREG(st.st_mode),
      (st.st_mode & kModeHeadered) != 0,
      static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1000 + st.st_mtim.tv_nsec / 1000000};
}

//!Effects: maps `size` bytes of `fd` shared and read-write. Throws: OSError.
inline void* map(const Fd& fd, std::uint64_t size, std::string_view name) {
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
  if (p == MAP_FAILED) throw_errno("mmap", name, errno);
  return p;
}

/// Unmaps a region returned by map().
inline void unmap(void* p, std::uint64_t size) noexcept {
  if (p != nullptr) ::munmap(p, size);
}

/// Size of a memory page.
inline std::size_t page_size() noexcept {
  return static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
}

/// What the file system says about a name (links are not followed).
struct ShmStat {
  bool exists = false;             ///< the name is present
  bool regular = false;            ///< a regular shared-memory object
  bool symlink = false;            ///< a symbolic link (never an object mpp created)
  bool owned_by_us = false;        ///< owner is this process's effective user
  std::uint32_t uid = 0;           ///< owner
  std::uint32_t mode = 0;          ///< permission bits
  std::uint64_t size = 0;          ///< bytes
  std::uint64_t inode = 0;         ///< identity of the object behind the name
  std::int64_t mtime_unix_ms = 0;  ///< last size change or write
};

namespace posix_detail {
inline ShmStat to_shm_stat(const struct stat& st) {
  ShmStat r;
  r.exists = true;
  r.regular = S_ISREG(st.st_mode);
  r.symlink = S_ISLNK(st.st_mode);
  r.owned_by_us = st.st_uid == ::geteuid();
  r.uid = static_cast<std::uint32_t>(st.st_uid);
  r.mode = static_cast<std::uint32_t>(st.st_mode & 07777);
  r.size = static_cast<std::uint64_t>(st.st_size);
  r.inode = static_cast<std::uint64_t>(st.st_ino);
  r.mtime_unix_ms =
      static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1000 + st.st_mtim.tv_nsec / 1000000;
  return r;
}
}  // namespace posix_detail

//!Returns: the status of the name `name` without following links (exists=false if absent).
inline ShmStat shm_lstat(std::string_view name) {
  struct stat st {};
  const std::string path = std::string(kShmDirectory) + "/" + std::string(name);
  if (::lstat(path.c_str(), &st) != 0) return ShmStat{};
  return posix_detail::to_shm_stat(st);
}

//!Returns: true if the object `name` still exists and is now smaller than `size` bytes (another
//! process truncated it under our mapping).
inline bool shm_shrunk(std::string_view name, std::uint64_t size) {
  const ShmStat st = shm_lstat(name);
  return st.exists && st.size < size;
}

/// The status of an open object.
inline ShmStat shm_fstat(const Fd& fd, std::string_view name) {
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) throw_errno("fstat", name, errno);
  return posix_detail::to_shm_stat(st);
}

//!Effects: opens `name` read-only, never following a link and never creating anything.
//!Returns: the descriptor, or an invalid Fd (get() < 0) with `err` set to errno.
inline Fd shm_open_readonly(std::string_view name, int& err) noexcept {
  Fd fd(shm_open_name(name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK, 0));
  err = fd.get() < 0 ? errno : 0;
  return fd;
}

//!Effects: copies up to `n` bytes at `offset` of `fd` into `buf` (no mapping, so a concurrent
//! truncation cannot raise SIGBUS). Returns: the bytes copied (fewer at end of file; 0 on error).
inline std::size_t read_at(const Fd& fd, std::uint64_t offset, void* buf, std::size_t n) noexcept {
  std::size_t done = 0;
  while (done < n) {
    const ssize_t r = ::pread(fd.get(), static_cast<char*>(buf) + done, n - done,
                              static_cast<off_t>(offset + done));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    done += static_cast<std::size_t>(r);
  }
  return done;
}

//!Effects: gives back the whole pages inside [p, p + n) of this process's private memory (a
//! freshly reserved, not yet written buffer) so that writing them takes fresh zero pages. A
//! heap page shared copy-on-write with forked workers would otherwise be copied on its first
//! write, with a TLB shoot-down to the other cores each time.
inline void discard_private(void* p, std::size_t n) noexcept {
  const auto page = static_cast<std::uintptr_t>(page_size());
  const auto begin = (reinterpret_cast<std::uintptr_t>(p) + page - 1) / page * page;
  const auto end = (reinterpret_cast<std::uintptr_t>(p) + n) / page * page;
  if (end > begin) (void)::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

//!Effects: makes the kernel allocate (and map writable) the pages of [p, p + n) of a shared
//! mapping now, so running out of memory is an error code here instead of a SIGBUS later.
//!Returns: 0, or the errno (ENOMEM/EFAULT: the file system behind the mapping is full).
inline int populate_write(void* p, std::size_t n) noexcept {
#if defined(MADV_POPULATE_WRITE)
  if (n == 0) return 0;
  const auto page = static_cast<std::uintptr_t>(page_size());
  const auto begin = reinterpret_cast<std::uintptr_t>(p) / page * page;
  const auto end = (reinterpret_cast<std::uintptr_t>(p) + n + page - 1) / page * page;
  for (;;) {
    if (::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_POPULATE_WRITE) == 0) return 0;
    const int err = errno;
    if (err == EINTR || err == EAGAIN) continue;
    return err == EINVAL ? 0 : err;  // EINVAL: a kernel before 5.14; fall back to faulting
  }
#else
  (void)p;
  (void)n;
  return 0;
#endif
}

//!Effects: creates the shared-memory object `name` as shm_create() does, for an object that
//! touches only part of its `size` bytes (a queue's item area, a manager's heap). POSIX shared
//! memory is sparse already: a page is allocated when it is first touched.
//! The first `reserve` bytes are backed now (see shm_set_size).
inline Fd shm_create_sparse(std::string_view name, std::uint64_t size, std::uint64_t reserve) {
  return shm_create(name, size, reserve);
}

//!Effects: makes [p, p + n) of a sparse segment usable before it is first touched. Nothing to do
//! on POSIX (populate_write() allocates ahead where a full /dev/shm must be an error).
//!Returns: 0 (the Win32 backend returns an errno value when the memory ran out).
inline int commit(void* p, std::size_t n) noexcept {
  (void)p;
  (void)n;
  return 0;
}

/// Whether a sparse segment's pages must be committed (commit()) before they are touched.
inline constexpr bool kSparseNeedsCommit = false;

//!Returns: whether [p, p + n) of a mapping can be touched now: always on POSIX.
inline bool committed(const void* p, std::size_t n) noexcept {
  (void)p;
  (void)n;
  return true;
}

}  // namespace mpp::detail::os
