// mpp — POSIX (Linux) backend: named shared memory, futex wait/wake, process liveness.
// Together with win32.hpp, the only file that makes system calls. Everything here is a thin,
// EINTR-safe wrapper that throws mpp exceptions with the failing call and object in the message.
#pragma once

#include "../config.hpp"

#if !defined(MPP_OS_POSIX)
#  error "mpp: detail/os/posix.hpp included on a non-POSIX platform"
#endif

#include <fcntl.h>
#include <linux/futex.h>
#include <linux/membarrier.h>
#include <pthread.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "../../errors.hpp"

namespace mpp::detail::os {

/// Process id type shared with the Win32 backend (both fit in 32 bits).
using pid_type = std::int32_t;

//!Throws: OSError naming the call, the object and errno's text (or a more specific mpp error).
[[noreturn]] inline void throw_errno(const char* call, std::string_view object, int err) {
  throw OSError(fmt::format("{}('{}') failed: {} (errno {}){}", call, object, std::strerror(err),
                            err,
                            err == EMFILE || err == ENFILE
                                ? "; every open SharedMemory and ShareableList handle holds a "
                                  "file descriptor: close handles you no longer need, or raise "
                                  "the limit (ulimit -n)"
                                : ""),
                err);
}

/// Owning file descriptor (close on destruction).
class Fd {
 public:
  Fd() noexcept = default;
  explicit Fd(int fd) noexcept : fd_(fd) {}
  Fd(Fd&& o) noexcept : fd_(o.release()) {}
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) {
      reset();
      fd_ = o.release();
    }
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { reset(); }
  /// The raw descriptor (-1 if none).
  int get() const noexcept { return fd_; }
  /// Whether a descriptor is held.
  bool valid() const noexcept { return fd_ >= 0; }
  /// Gives up ownership and returns the descriptor.
  int release() noexcept { return std::exchange(fd_, -1); }
  /// Closes the descriptor if one is held.
  void reset() noexcept {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

// ---- named shared memory ------------------------------------------------------------------

/// Whether a segment must keep its OS handle open while mapped (a mapping keeps a POSIX shared-memory object alive by itself).
inline constexpr bool kKeepHandleWhileMapped = false;

inline std::string shm_path(std::string_view name) { return "/" + std::string(name); }

/// Where named shared-memory objects appear in the file system (Linux: tmpfs on /dev/shm).
inline constexpr const char* kShmDirectory = "/dev/shm";

//!Returns: whether `uid` is this process's effective user id. The id is read once per process
//! (a system call costs 1–2 µs in a VM) and again only when `uid` differs from that reading, so
//! a process that changed its effective uid since still accepts objects of its first identity.
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
// walks one path component instead of four (0.3-0.4 µs of a 10 µs attach here). It is moved to a
// high number so that a program that closes or reuses low descriptors does not meet it; one that
// closed it anyway gets EBADF or ENOTDIR, and the directory is opened again.
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
      fail<ExistsError>("'{}' already exists; open it with open(), pick another name, or remove "
                         "a stale one with mpp::unlink(\"{}\")",
                         name, name);
    throw_errno("shm_open(create)", name, err);
  }
  return fd;
}

//!Returns: the bytes an unprivileged process may still allocate in /dev/shm (statvfs), or
//! nullopt if the file system cannot tell.
inline std::optional<std::uint64_t> shm_free_bytes() noexcept {
  struct statvfs v{};
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
  int err = reserve == size && size != 0 ? posix_detail::fallocate_retry(fd.get(), 0, size)
                                         : EOPNOTSUPP;
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
    struct stat st{};
    if (::lstat(file.c_str(), &st) == 0 && S_ISREG(st.st_mode) && (st.st_mode & 077) == 0 &&
        is_effective_uid(st.st_uid) && ::chmod(file.c_str(), (st.st_mode & 07000) | 0600) == 0)
      fd = Fd(shm_open_name(name, O_RDWR | O_NOFOLLOW | O_CLOEXEC, 0));
    else
      errno = EACCES;
  }
  if (fd.get() < 0) {
    const int err = errno;
    if (err == ENOENT)
      fail<NotFoundError>("no mpp object named '{}'; create it first (create/open_or_create) "
                           "or check the name",
                           name);
    if (err == EACCES || err == ELOOP || err == EPERM)
      fail<PermissionError>("'{}' exists but cannot be opened by this user ({}); it belongs to "
                             "someone else or is a link: choose another name",
                             name, std::strerror(err));
    if (err == EISDIR)  // a directory squatting the name (only a file system user can make one)
      fail<PermissionError>("'{}' is a directory, not a shared-memory object; refusing it: "
                             "choose another name, or remove the directory {}/{}",
                             name, kShmDirectory, name);
    throw_errno("shm_open", name, err);
  }
  return fd;
}

//!Effects: removes the name `name`; existing mappings stay valid. Returns: false if it did not exist.
//!Throws: PermissionError if the name is a directory, OSError.
inline bool shm_remove(std::string_view name) {
  const std::string path = shm_path(name);
  if (::shm_unlink(path.c_str()) == 0) return true;
  if (errno == ENOENT) return false;
  if (errno == EISDIR)  // a directory squatting the name
    fail<PermissionError>("'{}' is a directory, not a shared-memory object; refusing to remove "
                           "it: remove it with rmdir {}/{} if it is yours",
                           name, kShmDirectory, name);
  throw_errno("shm_unlink", name, errno);
}

/// What fstat says about an open shared-memory object.
struct FileInfo {
  std::uint64_t size;   ///< current size in bytes
  bool owned_by_us;     ///< owner is this process's effective user
  bool private_mode;    ///< no group/other permission bits
  bool regular;         ///< a regular shared-memory object, not a device or directory
  bool headered;        ///< marked kModeHeadered: an mpp object that starts with a header
  std::int64_t mtime_unix_ms;  ///< last size change or write (creation, for a new object)
};

inline FileInfo file_info(const Fd& fd, std::string_view name) {
  struct stat st{};
  if (::fstat(fd.get(), &st) != 0) throw_errno("fstat", name, errno);
  return FileInfo{static_cast<std::uint64_t>(st.st_size), is_effective_uid(st.st_uid),
                  (st.st_mode & 077) == 0, S_ISREG(st.st_mode), (st.st_mode & kModeHeadered) != 0,
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
inline std::size_t page_size() noexcept { return static_cast<std::size_t>(::sysconf(_SC_PAGESIZE)); }

// ---- wait / wake on a 32-bit word in shared memory (futex) ----------------------------------

static_assert(sizeof(std::atomic<std::uint32_t>) == sizeof(std::uint32_t) &&
                  std::atomic<std::uint32_t>::is_always_lock_free,
              "futex needs a plain 32-bit atomic");

//!Effects: sleeps while `word == expected`, at most `timeout` (forever when nullopt). Spurious
//! wake-ups are possible. Returns: false only when the timeout elapsed.
inline bool wait_on_address(const std::atomic<std::uint32_t>& word, std::uint32_t expected,
                            std::optional<std::chrono::nanoseconds> timeout) noexcept {
  struct timespec ts{};
  if (timeout) {
    const auto ns = timeout->count() < 0 ? 0 : timeout->count();
    ts.tv_sec = static_cast<time_t>(ns / 1'000'000'000);
    ts.tv_nsec = static_cast<long>(ns % 1'000'000'000);
  }
  // Not FUTEX_PRIVATE_FLAG: the word is shared between processes.
  const long rc = ::syscall(SYS_futex, const_cast<std::atomic<std::uint32_t>*>(&word), FUTEX_WAIT,
                            expected, timeout ? &ts : nullptr, nullptr, 0);
  return !(rc == -1 && errno == ETIMEDOUT);
}

/// True: a wake-up with nobody asleep is lost, not kept (a futex), so a lock may wake on every
/// contended release without counting its sleepers (see sync_state.hpp).
inline constexpr bool kExactWake = true;

/// Wakes up to `count` sleepers on `word` (INT_MAX for all).
inline void wake_address(const std::atomic<std::uint32_t>& word, int count) noexcept {
  ::syscall(SYS_futex, const_cast<std::atomic<std::uint32_t>*>(&word), FUTEX_WAKE, count, nullptr,
            nullptr, 0);
}

/// Tells the CPU we are spinning (pause on x86), sparing the sibling hyper-thread.
inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

/// Gives the CPU to another runnable thread.
inline void yield() noexcept { ::sched_yield(); }

/// Sleeps for `d` (EINTR-safe).
inline void sleep_for(std::chrono::nanoseconds d) noexcept {
  if (d.count() <= 0) return;
  struct timespec ts{static_cast<time_t>(d.count() / 1'000'000'000),
                     static_cast<long>(d.count() % 1'000'000'000)};
  while (::nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

// ---- process identity and liveness ---------------------------------------------------------

namespace posix_detail {
struct SelfCache {
  std::atomic<pid_type> pid{0};
  std::atomic<std::uint64_t> start_time{0};
  std::atomic<bool> start_known{false};
};
inline SelfCache& self_cache() noexcept {
  static SelfCache c;
  return c;
}
inline void forget_self() noexcept {  // runs in every forked child
  self_cache().pid.store(0, std::memory_order_relaxed);
  self_cache().start_known.store(false, std::memory_order_relaxed);
}
}  // namespace posix_detail

/// This process's id. Cached (getpid() is a system call in current glibc) and reset in a forked
/// child by a pthread_atfork handler, so lock fast paths stay free of system calls.
inline pid_type current_pid() noexcept {
  auto& c = posix_detail::self_cache();
  pid_type pid = c.pid.load(std::memory_order_relaxed);
  if (pid == 0) {
    static const bool registered = (::pthread_atfork(nullptr, nullptr, &posix_detail::forget_self), true);
    (void)registered;
    pid = static_cast<pid_type>(::getpid());
    c.pid.store(pid, std::memory_order_relaxed);
  }
  return pid;
}

// Asymmetric fences (membarrier(2)): a thread that calls membarrier_all() knows that every thread
// of every registered process has executed a full memory barrier meanwhile, so those threads'
// fast paths can order a store before a load with no fence of their own (Dekker with one cheap
// side). Used by the queue's exclusive producer and consumer (detail/mpmc.hpp).
namespace posix_detail {
inline long membarrier(int cmd) noexcept { return ::syscall(__NR_membarrier, cmd, 0, 0); }
}  // namespace posix_detail

//!Effects: registers this process for membarrier_all() (again in a forked child: the
//! registration belongs to the address space).
//!Returns: true if membarrier_all() will order this process's threads.
inline bool membarrier_register() noexcept {
  static const bool supported = [] {
    const long cmds = posix_detail::membarrier(MEMBARRIER_CMD_QUERY);
    return cmds >= 0 && (cmds & MEMBARRIER_CMD_GLOBAL_EXPEDITED) != 0 &&
           (cmds & MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED) != 0;
  }();
  static std::atomic<pid_type> registered{0};
  if (!supported) return false;
  const pid_type pid = current_pid();
  if (registered.load(std::memory_order_acquire) == pid) return true;
  if (posix_detail::membarrier(MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED) != 0) return false;
  registered.store(pid, std::memory_order_release);
  return true;
}

//!Effects: returns only after every running thread of every process registered with
//! membarrier_register() has executed a full memory barrier (a few microseconds: IPIs).
//!Returns: false if the system refused (the caller must not rely on the barrier then).
inline bool membarrier_all() noexcept {
  if (posix_detail::membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED) == 0) return true;
  return posix_detail::membarrier(MEMBARRIER_CMD_GLOBAL) == 0;  // slower, no registration
}

/// This thread's kernel id (unique per thread within the system).
inline std::uint64_t current_thread_id() noexcept {
  return static_cast<std::uint64_t>(::syscall(SYS_gettid));
}

//!Returns: the start time of process `pid` (clock ticks since boot) when it exists and is not a
//! zombie; nullopt otherwise. With the pid this identifies a process even when pids are reused.
inline std::optional<std::uint64_t> process_start_time(pid_type pid) noexcept {
  if (pid <= 0) return std::nullopt;
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/stat", static_cast<int>(pid));
  std::FILE* f = std::fopen(path, "re");
  if (f == nullptr) return std::nullopt;
  char buf[1024];
  const std::size_t n = std::fread(buf, 1, sizeof buf - 1, f);
  std::fclose(f);
  buf[n] = '\0';
  // The command name may contain spaces and parentheses: fields start after the last ')'.
  const char* p = std::strrchr(buf, ')');
  if (p == nullptr) return std::nullopt;
  ++p;
  char state = 0;
  int field = 2;  // p points just after field 2 (comm)
  std::uint64_t value = 0;
  while (*p != '\0') {
    while (*p == ' ') ++p;
    if (*p == '\0') break;
    ++field;
    if (field == 3) state = *p;
    if (field == 22) {
      value = std::strtoull(p, nullptr, 10);
      break;
    }
    while (*p != ' ' && *p != '\0') ++p;
  }
  if (field != 22 || state == 'Z' || state == 'X' || state == 'x') return std::nullopt;
  return value;
}

/// Start time of this process (see process_start_time); cached, recomputed after fork.
inline std::uint64_t current_start_time() noexcept {
  auto& c = posix_detail::self_cache();
  if (!c.start_known.load(std::memory_order_acquire)) {
    c.start_time.store(process_start_time(current_pid()).value_or(0), std::memory_order_relaxed);
    c.start_known.store(true, std::memory_order_release);
  }
  return c.start_time.load(std::memory_order_relaxed);
}

/// 64 random bits from the kernel (for anonymous names).
inline std::uint64_t random_u64() {
  std::uint64_t v = 0;
  ssize_t n;
  do n = ::getrandom(&v, sizeof v, 0);
  while (n < 0 && errno == EINTR);
  if (n != static_cast<ssize_t>(sizeof v)) throw_errno("getrandom", "", errno);
  return v;
}

// ==== registry tooling (mpp ls / gc / inspect; owner: crash-safety suite) ====================
}  // namespace mpp::detail::os

#include <dirent.h>

#include <algorithm>
#include <cstdlib>
#include <vector>

namespace mpp::detail::os {

//!Returns: the names of the shared-memory objects starting with `prefix`, sorted (empty if the
//! directory cannot be read). Entries of any type are listed, planted links included.
inline std::vector<std::string> shm_list(std::string_view prefix) {
  std::vector<std::string> names;
  DIR* d = ::opendir(kShmDirectory);
  if (d == nullptr) return names;
  while (const struct dirent* e = ::readdir(d)) {
    const std::string_view n(e->d_name);
    if (n.substr(0, prefix.size()) == prefix) names.emplace_back(n);
  }
  ::closedir(d);
  std::sort(names.begin(), names.end());
  return names;
}

/// What the file system says about a name (links are not followed).
struct ShmStat {
  bool exists = false;       ///< the name is present
  bool regular = false;      ///< a regular shared-memory object
  bool symlink = false;      ///< a symbolic link (never an object mpp created)
  bool owned_by_us = false;  ///< owner is this process's effective user
  std::uint32_t uid = 0;     ///< owner
  std::uint32_t mode = 0;    ///< permission bits
  std::uint64_t size = 0;    ///< bytes
  std::uint64_t inode = 0;   ///< identity of the object behind the name
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
  r.mtime_unix_ms = static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1000 + st.st_mtim.tv_nsec / 1000000;
  return r;
}
}  // namespace posix_detail

//!Returns: the status of the name `name` without following links (exists=false if absent).
inline ShmStat shm_lstat(std::string_view name) {
  struct stat st{};
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
  struct stat st{};
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

//!Effects: copies `n` bytes from `buf` to `offset` of `fd` (no mapping is touched).
//!Returns: 0, or the errno of the failure (ENOSPC when /dev/shm is full).
inline int write_at(const Fd& fd, std::uint64_t offset, const void* buf, std::size_t n) noexcept {
  std::size_t done = 0;
  while (done < n) {
    const ssize_t r = ::pwrite(fd.get(), static_cast<const char*>(buf) + done, n - done,
                               static_cast<off_t>(offset + done));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return r < 0 ? errno : EIO;
    done += static_cast<std::size_t>(r);
  }
  return 0;
}

// ---- user locks: which processes use an object, kept by the kernel --------------------------
// A user holds a write lock on one byte of a range far past the end of any object, taken with
// F_OFD_SETLK on its own open file description: the kernel drops it when that description is
// closed, including when the process dies, so a crashed user never stays counted and nothing in
// the mapping is touched (attaching then costs no page fault).

inline constexpr std::uint64_t kUserLockBase = std::uint64_t{1} << 60;
inline constexpr std::uint32_t kUserLockSlots = 4096;

namespace posix_detail {
inline struct flock user_lock_range(short type, std::uint64_t first, std::uint64_t count) noexcept {
  struct flock l{};
  l.l_type = type;
  l.l_whence = SEEK_SET;
  l.l_start = static_cast<off_t>(kUserLockBase + first);
  l.l_len = static_cast<off_t>(count);
  return l;
}
}  // namespace posix_detail

//!Effects: takes a free user-lock byte of fd's object, trying `hint` first; stores it in `slot`.
//!Returns: 0, or the errno of the failure (EAGAIN: all kUserLockSlots are taken).
inline int take_user_lock(const Fd& fd, std::uint32_t hint, std::uint32_t& slot) noexcept {
  for (std::uint32_t i = 0; i < kUserLockSlots; ++i) {
    slot = (hint + i) % kUserLockSlots;
    struct flock l = posix_detail::user_lock_range(F_WRLCK, slot, 1);
    if (::fcntl(fd.get(), F_OFD_SETLK, &l) == 0) return 0;
    if (errno != EAGAIN && errno != EACCES && errno != EINTR) return errno;
  }
  return EAGAIN;
}

//!Effects: releases the user lock `slot` of fd's open file description, also for the copies
//! of the descriptor that a forked child still holds (closing ours would leave it to them).
inline void release_user_lock(const Fd& fd, std::uint32_t slot) noexcept {
  struct flock l = posix_detail::user_lock_range(F_UNLCK, slot, 1);
  (void)::fcntl(fd.get(), F_OFD_SETLK, &l);
}

//!Returns: the user locks held on fd's object through open file descriptions other than fd's
//! (so not counting fd's own), or nullopt if the kernel cannot tell. The kernel reports one
//! conflicting lock per query, not necessarily the lowest, so both sides of it are searched:
//! 2n + 1 queries for n locks. The count stops at `limit` (1: one query says whether any is held).
inline std::optional<std::uint32_t> count_user_locks(const Fd& fd,
                                                     std::uint32_t limit = kUserLockSlots) noexcept {
  std::uint32_t n = 0;
  // Ranges [first, end) still to search. The larger side of each split waits on the stack and
  // the smaller one is searched first, so the stack never holds more than log2(slots) + 1.
  std::uint32_t stack[32][2];
  int top = 0;
  stack[top][0] = 0;
  stack[top++][1] = kUserLockSlots;
  while (top > 0) {
    std::uint32_t first = stack[--top][0], end = stack[top][1];
    while (first < end) {
      struct flock l = posix_detail::user_lock_range(F_WRLCK, first, end - first);
      if (::fcntl(fd.get(), F_OFD_GETLK, &l) != 0) return std::nullopt;
      if (l.l_type == F_UNLCK) break;
      const std::uint64_t at = static_cast<std::uint64_t>(l.l_start) - kUserLockBase;
      if (at < first || at >= end || top == 32) return std::nullopt;  // not one of ours
      if (++n >= limit) return n;
      const auto slot = static_cast<std::uint32_t>(at);
      const bool left_smaller = slot - first < end - (slot + 1);
      stack[top][0] = left_smaller ? slot + 1 : first;
      stack[top++][1] = left_smaller ? end : slot;
      if (left_smaller)
        end = slot;
      else
        first = slot + 1;
    }
  }
  return n;
}

/// Milliseconds since the Unix epoch (wall clock).
inline std::int64_t unix_time_ms() noexcept {
  struct timespec ts{};
  ::clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}
/// A process that has a shared-memory object mapped.
struct ShmMapper {
  std::uint64_t inode;  ///< the object (st_ino under kShmDirectory)
  pid_type pid;         ///< the process mapping it
};

//!Returns: every (object, process) pair where a process this user may inspect has an object of
//! kShmDirectory mapped, from /proc/<pid>/maps — whether or not the process registered itself
//! in the object's attach table (a forked child using an inherited handle may not have). Linux
//! only; empty if /proc cannot be read.
inline std::vector<ShmMapper> shm_mappers() {
  std::vector<ShmMapper> out;
  DIR* proc = ::opendir("/proc");
  if (proc == nullptr) return out;
  const std::string dir = std::string(kShmDirectory) + "/";
  std::vector<char> line(4096);
  while (const struct dirent* e = ::readdir(proc)) {
    char* end = nullptr;
    const long pid = std::strtol(e->d_name, &end, 10);
    if (pid <= 0 || end == e->d_name || *end != '\0') continue;
    const std::string path = "/proc/" + std::string(e->d_name) + "/maps";
    std::FILE* f = std::fopen(path.c_str(), "re");
    if (f == nullptr) continue;  // gone, or another user's
    std::uint64_t last = 0;
    while (std::fgets(line.data(), static_cast<int>(line.size()), f) != nullptr) {
      // "start-end perms offset dev inode   path"
      unsigned long long inode = 0;
      int at = 0;
      if (std::sscanf(line.data(), "%*s %*s %*s %*s %llu %n", &inode, &at) != 1 || inode == 0)
        continue;
      if (std::strncmp(line.data() + at, dir.c_str(), dir.size()) != 0 || inode == last) continue;
      last = inode;  // a mapping often spans several consecutive lines
      out.push_back({static_cast<std::uint64_t>(inode), static_cast<pid_type>(pid)});
    }
    std::fclose(f);
  }
  ::closedir(proc);
  return out;
}
// ==== end registry tooling ====================================================================

// ==== fork hooks (owner: pipe) ================================================================
//!Effects: registers process-wide handlers run around fork(): `prepare` in the parent just
//! before, `parent` in the parent and `child` in the new child just after (pthread_atfork).
//! Win32 has no fork; its backend makes this a no-op.
inline void at_fork(void (*prepare)(), void (*parent)(), void (*child)()) noexcept {
  ::pthread_atfork(prepare, parent, child);
}
// ==== end fork hooks ==========================================================================

// ==== processes (owner: Process): fork/exec, wait, signals, affinity, sockets ================
}  // namespace mpp::detail::os

#include <cxxabi.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include <cstdlib>
#include <memory>
#include <span>
#include <typeinfo>
#include <vector>

namespace mpp::detail::os {

/// A waitable OS handle: becomes readable when what it watches has ended (an fd on POSIX).
using native_handle = int;
/// The value of a native_handle that refers to nothing.
inline constexpr native_handle kNoHandle = -1;
/// Whether this platform can fork (the fork and forkserver start methods).
inline constexpr bool kCanFork = true;
/// Signal numbers used by Process::terminate() and Process::kill().
inline constexpr int kSigTerm = SIGTERM;
inline constexpr int kSigKill = SIGKILL;

namespace posix_detail {
inline int poll_timeout_ms(std::optional<std::chrono::nanoseconds> left) noexcept {
  if (!left) return -1;
  const auto ns = left->count();
  if (ns <= 0) return 0;
  const auto ms = (ns + 999'999) / 1'000'000;  // round up: never wake before the deadline
  return ms > INT_MAX ? INT_MAX : static_cast<int>(ms);
}
}  // namespace posix_detail

//!Returns: a Python-style exit code from a waitpid() status: the exit status, or -N for signal N.
inline int exit_code_from_status(int status) noexcept {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return -WTERMSIG(status);
  return 255;
}

//!Returns: the text form of descriptor `h` for a child's environment (it keeps the same number).
inline std::string handle_to_text(native_handle h) { return std::to_string(h); }

//!Returns: the descriptor written by handle_to_text, or nullopt if `text` is not one.
inline std::optional<native_handle> handle_from_text(const std::string& text) {
  if (text.empty() || text.size() > 10 || text.find_first_not_of("0123456789") != std::string::npos)
    return std::nullopt;
  const long v = std::strtol(text.c_str(), nullptr, 10);
  if (v < 0 || v >= INT_MAX) return std::nullopt;
  return static_cast<native_handle>(v);
}

//!Returns: "SIGTERM" for 15 and so on (Python's names in Process reprs); "" if unknown.
inline std::string signal_name(int signum) {
  const char* abbrev = ::sigabbrev_np(signum);
  return abbrev != nullptr ? std::string("SIG") + abbrev : std::string();
}

//!Effects: forks the calling process (only the calling thread continues in the child).
//!Returns: 0 in the child, the child's pid in the parent. Throws: OSError.
inline pid_type fork_process() {
  const pid_t pid = ::fork();
  if (pid < 0) throw_errno("fork", "", errno);
  return static_cast<pid_type>(pid);
}

//!Effects: flushes C stdio and ends the process at once with `code`: no atexit handlers and no
//! static destructors, so a child never runs its parent's clean-up a second time.
[[noreturn]] inline void exit_process(int code) noexcept {
  std::fflush(nullptr);
  ::_exit(code);
}

//!Returns: a handle that becomes readable when process `pid` ends (a pidfd), or an invalid Fd if
//! the process is already gone (it may still be a zombie to reap).
inline Fd open_process(pid_type pid) noexcept {
  const long fd = ::syscall(SYS_pidfd_open, static_cast<pid_t>(pid), 0);
  return fd < 0 ? Fd{} : Fd{static_cast<int>(fd)};  // pidfds are always close-on-exec
}

//!Effects: reaps child `pid` if it has ended (never blocks).
//!Returns: its Python-style exit code, or nullopt while it runs.
//!Throws: OSError (ECHILD when it is not our child or was reaped already).
inline std::optional<int> poll_process(pid_type pid) {
  int status = 0;
  for (;;) {
    const pid_t r = ::waitpid(static_cast<pid_t>(pid), &status, WNOHANG);
    if (r == 0) return std::nullopt;
    if (r > 0) return exit_code_from_status(status);
    if (errno != EINTR) throw_errno("waitpid", std::to_string(pid), errno);
  }
}

//!Effects: blocks until child `pid` has ended, without reaping it (poll_process does that).
//!Returns: false if it is not (or no longer) our child. Throws: OSError.
inline bool wait_process_exit(pid_type pid) {
  siginfo_t info{};
  for (;;) {
    if (::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOWAIT) == 0) return true;
    if (errno == ECHILD) return false;
    if (errno != EINTR) throw_errno("waitid", std::to_string(pid), errno);
  }
}

//!Returns: a handle that is readable at once (the sentinel of a process already reaped).
inline Fd ready_handle() {
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) throw_errno("pipe2", "", errno);
  ::close(p[1]);  // end of file: always readable
  return Fd{p[0]};
}

//!Effects: waits until `h` is readable or `timeout` elapses (forever when nullopt), EINTR-safe.
//!Returns: true if readable (or hung up). Throws: OSError.
inline bool wait_readable(native_handle h, std::optional<std::chrono::nanoseconds> timeout) {
  const auto until = timeout ? std::optional(std::chrono::steady_clock::now() + *timeout) : std::nullopt;
  for (;;) {
    struct pollfd p{h, POLLIN, 0};
    std::optional<std::chrono::nanoseconds> left;
    if (until) left = std::chrono::duration_cast<std::chrono::nanoseconds>(*until - std::chrono::steady_clock::now());
    const int r = ::poll(&p, 1, posix_detail::poll_timeout_ms(left));
    if (r > 0) return true;
    if (r == 0) {
      if (!until || std::chrono::steady_clock::now() >= *until) return false;
      continue;
    }
    if (errno != EINTR) throw_errno("poll", std::to_string(h), errno);
  }
}

//!Effects: waits until one of `hs` is readable or `timeout` elapses (forever when nullopt).
//!Returns: the index of a readable handle, or -1 on timeout. Throws: OSError.
inline int wait_any_readable(std::span<const native_handle> hs,
                             std::optional<std::chrono::nanoseconds> timeout) {
  std::vector<struct pollfd> ps(hs.size());
  for (std::size_t i = 0; i < hs.size(); ++i) ps[i] = {hs[i], POLLIN, 0};
  const auto until = timeout ? std::optional(std::chrono::steady_clock::now() + *timeout) : std::nullopt;
  for (;;) {
    std::optional<std::chrono::nanoseconds> left;
    if (until) left = std::chrono::duration_cast<std::chrono::nanoseconds>(*until - std::chrono::steady_clock::now());
    const int r = ::poll(ps.data(), ps.size(), posix_detail::poll_timeout_ms(left));
    if (r > 0) {
      for (std::size_t i = 0; i < ps.size(); ++i)
        if (ps[i].revents != 0) return static_cast<int>(i);
    }
    if (r == 0 && (!until || std::chrono::steady_clock::now() >= *until)) return -1;
    if (r < 0 && errno != EINTR) throw_errno("poll", "", errno);
  }
}

//!Effects: sends signal `sig` to process `pid`. Returns: false if no such process. Throws: OSError.
inline bool send_signal(pid_type pid, int sig) {
  if (::kill(static_cast<pid_t>(pid), sig) == 0) return true;
  if (errno == ESRCH) return false;
  throw_errno("kill", std::to_string(pid), errno);
}

//!Returns: the number of CPUs this process may run on (its affinity mask), at least 1.
inline int cpu_count() noexcept {
  for (int n = 1024; n <= (1 << 20); n *= 2) {
    cpu_set_t* set = CPU_ALLOC(n);
    if (set == nullptr) break;
    const std::size_t size = CPU_ALLOC_SIZE(n);
    CPU_ZERO_S(size, set);
    if (::sched_getaffinity(0, size, set) == 0) {
      const int count = CPU_COUNT_S(size, set);
      CPU_FREE(set);
      return count > 0 ? count : 1;
    }
    CPU_FREE(set);
    if (errno != EINVAL) break;
  }
  const long n = ::sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? static_cast<int>(n) : 1;
}

/// The path that re-executes the running program (Linux: the /proc/self/exe magic link).
inline std::string self_executable() { return "/proc/self/exe"; }

//!Effects: starts `path` with arguments `argv` and this process's environment plus `env`
//! ("KEY=value" entries, overriding). The handles in `inherit` stay open in the child under the
//! same numbers; nothing else leaks (every mpp handle is close-on-exec). Safe in a multi-threaded
//! process (posix_spawn, no fork of the caller's threads). Returns: the child's pid. Throws: OSError.
inline pid_type spawn_program(const std::string& path, const std::vector<std::string>& argv,
                              const std::vector<std::string>& env,
                              std::span<const native_handle> inherit) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  std::vector<char*> envp;
  for (const auto& e : env) envp.push_back(const_cast<char*>(e.c_str()));
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    const std::string_view entry(*e);
    const std::string_view key = entry.substr(0, entry.find('='));
    bool overridden = false;
    for (const auto& mine : env)
      overridden = overridden || std::string_view(mine).substr(0, mine.find('=')) == key;
    if (!overridden) envp.push_back(*e);
  }
  envp.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  ::posix_spawn_file_actions_init(&actions);
  // dup2(fd, fd) clears FD_CLOEXEC in the child only (glibc >= 2.29; POSIX.1-2024).
  for (const native_handle h : inherit) ::posix_spawn_file_actions_adddup2(&actions, h, h);
  pid_t pid = 0;
  const int rc = ::posix_spawn(&pid, path.c_str(), &actions, nullptr, args.data(), envp.data());
  ::posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) throw_errno("posix_spawn", path, rc);
  return static_cast<pid_type>(pid);
}

//!Returns: the value of environment variable `name`, or nullopt.
inline std::optional<std::string> get_env(const char* name) {
  const char* v = ::getenv(name);
  return v != nullptr ? std::optional<std::string>(v) : std::nullopt;
}

/// Removes environment variable `name` (call only while no other thread reads the environment).
inline void unset_env(const char* name) noexcept { ::unsetenv(name); }

//!Returns: a connected pair of local sockets (close-on-exec): a byte stream, or a packet socket
//! that keeps message boundaries when `packets`. Throws: OSError.
inline std::pair<Fd, Fd> socket_pair(bool packets = false) {
  int sv[2];
  if (::socketpair(AF_UNIX, (packets ? SOCK_SEQPACKET : SOCK_STREAM) | SOCK_CLOEXEC, 0, sv) != 0)
    throw_errno("socketpair", "", errno);
  return {Fd{sv[0]}, Fd{sv[1]}};
}

//!Effects: writes all of `data` to socket `s` (no SIGPIPE), within `timeout` if one is given.
//!Throws: BrokenPipeError if the peer is gone, TimeoutError, OSError otherwise.
inline void send_all(const Fd& s, std::span<const std::byte> data,
                     std::optional<std::chrono::nanoseconds> timeout = std::nullopt) {
  const auto until = timeout ? std::optional(std::chrono::steady_clock::now() + *timeout) : std::nullopt;
  std::size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = ::send(s.get(), data.data() + done, data.size() - done,
                             MSG_NOSIGNAL | (until ? MSG_DONTWAIT : 0));
    if (n >= 0) {
      done += static_cast<std::size_t>(n);
      continue;
    }
    if (errno == EINTR) continue;
    if (until && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      const auto left = std::chrono::duration_cast<std::chrono::nanoseconds>(*until - std::chrono::steady_clock::now());
      struct pollfd p{s.get(), POLLOUT, 0};
      if (left.count() <= 0 || ::poll(&p, 1, posix_detail::poll_timeout_ms(left)) == 0)
        fail<TimeoutError>("the other process did not read {} bytes within the timeout",
                           data.size() - done);
      continue;
    }
    if (errno == EPIPE || errno == ECONNRESET)
      fail<BrokenPipeError>("the other process closed its end of the socket (it exited)");
    throw_errno("send", "", errno);
  }
}

//!Effects: reads exactly `buf.size()` bytes from socket `s`.
//!Returns: false on end of file before the first byte. Throws: EOFError on end of file mid-way.
inline bool recv_exact(const Fd& s, std::span<std::byte> buf) {
  std::size_t done = 0;
  while (done < buf.size()) {
    const ssize_t n = ::recv(s.get(), buf.data() + done, buf.size() - done, 0);
    if (n > 0) {
      done += static_cast<std::size_t>(n);
      continue;
    }
    if (n == 0 || errno == ECONNRESET) {
      if (done == 0) return false;
      fail<EOFError>("the other process closed the socket after {} of {} bytes", done, buf.size());
    }
    if (errno != EINTR) throw_errno("recv", "", errno);
  }
  return true;
}

//!Effects: sends one message `msg` over packet socket `s` together with a duplicate of `h`.
//!Throws: BrokenPipeError if the peer is gone, OSError otherwise.
inline void send_with_handle(const Fd& s, std::span<const std::byte> msg, native_handle h) {
  struct iovec iov{const_cast<std::byte*>(msg.data()), msg.size()};
  alignas(struct cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  struct msghdr m{};
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  m.msg_control = control;
  m.msg_controllen = sizeof control;
  struct cmsghdr* c = CMSG_FIRSTHDR(&m);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  std::memcpy(CMSG_DATA(c), &h, sizeof(int));
  for (;;) {
    if (::sendmsg(s.get(), &m, MSG_NOSIGNAL) >= 0) return;
    if (errno == EINTR) continue;
    if (errno == EPIPE || errno == ECONNRESET)
      fail<BrokenPipeError>("the other process closed its end of the socket (it exited)");
    throw_errno("sendmsg", "", errno);
  }
}

//!Effects: receives one message into `buf` from packet socket `s`, and the handle sent with it
//! into `h` (close-on-exec; left invalid when none came).
//!Returns: the message size; 0 at end of file. Throws: OSError.
inline std::size_t recv_with_handle(const Fd& s, std::span<std::byte> buf, Fd& h) {
  struct iovec iov{buf.data(), buf.size()};
  alignas(struct cmsghdr) char control[CMSG_SPACE(sizeof(int) * 4)] = {};
  struct msghdr m{};
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  m.msg_control = control;
  m.msg_controllen = sizeof control;
  ssize_t n;
  do n = ::recvmsg(s.get(), &m, MSG_CMSG_CLOEXEC);
  while (n < 0 && errno == EINTR);
  if (n < 0) throw_errno("recvmsg", "", errno);
  for (struct cmsghdr* c = CMSG_FIRSTHDR(&m); c != nullptr; c = CMSG_NXTHDR(&m, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (std::size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      if (h.get() < 0) h = Fd{fd};
      else ::close(fd);  // more than we asked for: a confused or hostile peer
    }
  }
  return static_cast<std::size_t>(n);
}

/// Marks handle `h` close-on-exec (or inheritable when `inherit`).
inline void set_inheritable(native_handle h, bool inherit) noexcept {
  const int flags = ::fcntl(h, F_GETFD);
  if (flags >= 0) ::fcntl(h, F_SETFD, inherit ? (flags & ~FD_CLOEXEC) : (flags | FD_CLOEXEC));
}

/// Ignores (or restores) the terminal's interrupt signal: a fork server must survive Ctrl-C.
inline void ignore_interrupts(bool ignore) noexcept {
  ::signal(SIGINT, ignore ? SIG_IGN : SIG_DFL);
}

//!Returns: the readable form of a compiler-mangled type name.
inline std::string demangle(const char* mangled) {
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> p(abi::__cxa_demangle(mangled, nullptr, nullptr, &status),
                                           std::free);
  return status == 0 && p ? std::string(p.get()) : std::string(mangled);
}

//!Returns: the type name of the exception being handled (inside a catch block), or "unknown".
inline std::string current_exception_type_name() {
  const std::type_info* t = abi::__cxa_current_exception_type();
  return t != nullptr ? demangle(t->name()) : std::string("unknown");
}
// ==== end processes ============================================================================

// ==== pool workers (owner: Pool) ==============================================================
/// Restores the default action of the termination signals (SIGTERM, SIGINT, SIGHUP) in a forked
/// worker, so handlers inherited from the parent (a test framework's, say) do not run there.
inline void default_termination_signals() noexcept {
  for (int sig : {SIGTERM, SIGINT, SIGHUP}) ::signal(sig, SIG_DFL);
}

//!Effects: gives back the whole pages inside [p, p + n) of this process's private memory (a
//! freshly reserved, not yet written buffer) so that writing them takes fresh zero pages. A
//! heap page shared copy-on-write with forked workers would otherwise be copied on its first
//! write, with a TLB shoot-down to the other cores each time (measured up to 3x slower).
inline void discard_private(void* p, std::size_t n) noexcept {
  const auto page = static_cast<std::uintptr_t>(page_size());
  const auto begin = (reinterpret_cast<std::uintptr_t>(p) + page - 1) / page * page;
  const auto end = (reinterpret_cast<std::uintptr_t>(p) + n) / page * page;
  if (end > begin) (void)::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}
// ==== end pool workers ========================================================================

// ==== queue memory (owner: Queue) ==============================================================

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
// ==== end queue memory ==========================================================================

// ==== sparse segments (owner: Windows lane; mirrors win32.hpp) =================================
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
// ==== end sparse segments =======================================================================

// ==== mapping guard (owner: crash-safety suite) ================================================
// A process that has a segment mapped gets SIGBUS from the kernel when it touches a page that is
// no longer backed by the object: another process (buggy or hostile, same user) shrank it with
// ftruncate, or tmpfs could not allocate the page (/dev/shm full). mpp must not die of that.
// Segment registers every mapping in a fixed table of atomics (lock-free, async-signal-safe).
// A process-wide SIGBUS handler, installed once at the first registration, recognises faults
// inside registered mappings, maps private zero pages over the mapping from the faulting page to
// its end (mmap MAP_FIXED: the access completes, and no later access to those pages faults), and
// marks the mapping faulted, noting whether /dev/shm was full at that moment. check_mapping() —
// called by every wait loop before it sleeps and by the slow paths of the operations — then
// throws CorruptedError naming the object, or NoSpaceError when /dev/shm was full and the object
// still has its size (creation reserves an object's pages, so this is a lazily used object's
// page, or another program's sparse object). Faults outside registered mappings go to the
// handler that was installed before ours (a sanitizer's, or the default action: the process dies
// of SIGBUS as it would without mpp).
// fork(): the child inherits the mappings at the same addresses, the table and the handler, so
// it is protected too; exec() drops all three together.
// Windows needs none of this: a section cannot be shrunk while it is mapped, so win32.hpp has
// no-op twins of these functions.
}  // namespace mpp::detail::os

#include <signal.h>

namespace mpp::detail::os {

namespace guard_detail {
/// Mappings this process can protect at once (more are mapped unprotected).
inline constexpr std::size_t kMaxGuarded = 4096;
inline constexpr std::size_t kNameCapacity = 112;
/// Free bytes in /dev/shm below which a fault counts as "no space" (tmpfs counts free pages per
/// CPU in batches, so "full" is not exactly 0).
inline constexpr std::uint64_t kLowSpace = std::uint64_t{4} << 20;

struct Table {
  std::atomic<std::uintptr_t> begin[kMaxGuarded];  ///< start of a mapping; 0: entry free
  std::atomic<std::uintptr_t> end[kMaxGuarded];    ///< one past its end; 0 while (un)registering
  std::atomic<std::uint32_t> faulted[kMaxGuarded];  ///< 1 once the handler repaired a fault in it
  /// 1 if /dev/shm was (nearly) full when the handler repaired that fault
  std::atomic<std::uint32_t> low_space[kMaxGuarded];
  char names[kMaxGuarded][kNameCapacity];            ///< for messages only (not read by the handler)
  std::atomic<std::size_t> used;       ///< entries at or above this index were never claimed
  std::atomic<std::size_t> free_hint;  ///< where guard_mapping() starts looking (a hint only)
  std::atomic<std::uint32_t> faults;   ///< registered mappings with faulted == 1
  std::atomic<int> installed;          ///< 0: handler not installed, 1: installing, 2: installed
  std::uintptr_t page;                 ///< page size, read by the handler
  struct sigaction previous;           ///< the SIGBUS disposition before ours
};
inline constinit Table table{};

// Passes a fault that is not ours on to the disposition that was there before us.
inline void chain(int sig, siginfo_t* info, void* ctx) noexcept {
  const struct sigaction& prev = table.previous;
  if ((prev.sa_flags & SA_SIGINFO) != 0) {
    if (prev.sa_sigaction != nullptr) prev.sa_sigaction(sig, info, ctx);
    return;
  }
  const bool sent = info == nullptr || info->si_code <= 0;  // kill()/sigqueue(), not a fault
  if (prev.sa_handler == SIG_IGN && sent) return;
  if (prev.sa_handler != SIG_IGN && prev.sa_handler != SIG_DFL) {
    prev.sa_handler(sig);
    return;
  }
  // The default action (a fault cannot be ignored): die of SIGBUS as without mpp.
  struct sigaction dfl{};
  dfl.sa_handler = SIG_DFL;
  ::sigemptyset(&dfl.sa_mask);
  ::sigaction(SIGBUS, &dfl, nullptr);
  if (sent) ::raise(sig);  // delivered when the handler returns; a fault simply happens again
}

inline void on_sigbus(int sig, siginfo_t* info, void* ctx) noexcept {
  const int saved_errno = errno;
  if (info != nullptr && info->si_code == BUS_ADRERR) {
    const auto a = reinterpret_cast<std::uintptr_t>(info->si_addr);
    const std::size_t n = table.used.load(std::memory_order_acquire);
    for (std::size_t i = 0; i < n; ++i) {
      const std::uintptr_t e = table.end[i].load(std::memory_order_acquire);
      const std::uintptr_t b = table.begin[i].load(std::memory_order_relaxed);
      if (e == 0 || b == 0 || a < b || a >= e) continue;
      // Every page from the faulting one on is past the object's end now: replace them all.
      const std::uintptr_t from = a & ~(table.page - 1);
      const std::uintptr_t to = (e + table.page - 1) & ~(table.page - 1);
      const long r = ::syscall(SYS_mmap, from, to - from, PROT_READ | PROT_WRITE,
                               MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
      if (r == -1) break;  // cannot repair (out of memory): let the fault take its course
      // Remember whether tmpfs was out of space at the time: with the object still its full
      // size afterwards, that (and not a truncation) is why the page could not be had.
      struct statfs fs{};
      if (::syscall(SYS_statfs, kShmDirectory, &fs) == 0 &&
          static_cast<std::uint64_t>(fs.f_bavail) * static_cast<std::uint64_t>(fs.f_bsize) <
              kLowSpace)
        table.low_space[i].store(1, std::memory_order_relaxed);
      if (table.faulted[i].exchange(1, std::memory_order_acq_rel) == 0)
        table.faults.fetch_add(1, std::memory_order_release);
      errno = saved_errno;
      return;
    }
  }
  chain(sig, info, ctx);
  errno = saved_errno;
}

// Installs on_sigbus once per process (the disposition survives fork, not exec).
inline void install() noexcept {
  if (table.installed.load(std::memory_order_acquire) == 2) return;
  int expect = 0;
  if (!table.installed.compare_exchange_strong(expect, 1, std::memory_order_acq_rel)) {
    while (table.installed.load(std::memory_order_acquire) != 2) ::sched_yield();
    return;
  }
  table.page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
  // Record the previous disposition before ours can run, so the handler never chains to garbage.
  ::sigaction(SIGBUS, nullptr, &table.previous);
  if ((table.previous.sa_flags & SA_SIGINFO) != 0 && table.previous.sa_sigaction == &on_sigbus) {
    table.previous = {};  // already ours (a second copy of this code): never chain to ourselves
    table.previous.sa_handler = SIG_DFL;
  }
  struct sigaction sa{};
  sa.sa_sigaction = &on_sigbus;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
  ::sigemptyset(&sa.sa_mask);
  ::sigaction(SIGBUS, &sa, nullptr);
  table.installed.store(2, std::memory_order_release);
}
}  // namespace guard_detail

/// What guard_mapping() returns when it protected nothing.
inline constexpr std::uint32_t kNoGuard = 0xffffffffu;

//!Effects: protects the mapping [p, p + size) of the object `name` against SIGBUS (see above).
//! Silently leaves it unprotected if this process already guards kMaxGuarded mappings.
//!Returns: the entry to give unguard_mapping(), or kNoGuard.
inline std::uint32_t guard_mapping(void* p, std::uint64_t size, std::string_view name) noexcept {
  auto& t = guard_detail::table;
  const auto b = reinterpret_cast<std::uintptr_t>(p);
  if (b == 0 || size == 0) return kNoGuard;
  guard_detail::install();
  // From the hint on, then the entries before it: no scan over every live mapping when many
  // are registered (the hint points past the last entry claimed, or at the last one freed).
  const std::size_t start = t.free_hint.load(std::memory_order_relaxed) % guard_detail::kMaxGuarded;
  for (std::size_t k = 0; k < guard_detail::kMaxGuarded; ++k) {
    const std::size_t i = (start + k) % guard_detail::kMaxGuarded;
    std::uintptr_t expect = 0;
    if (t.begin[i].load(std::memory_order_relaxed) != 0 ||
        !t.begin[i].compare_exchange_strong(expect, b, std::memory_order_acq_rel))
      continue;
    t.faulted[i].store(0, std::memory_order_relaxed);
    t.low_space[i].store(0, std::memory_order_relaxed);
    const std::size_t n = std::min(name.size(), guard_detail::kNameCapacity - 1);
    std::memcpy(t.names[i], name.data(), n);
    t.names[i][n] = '\0';
    std::size_t used = t.used.load(std::memory_order_relaxed);
    while (used < i + 1 &&
           !t.used.compare_exchange_weak(used, i + 1, std::memory_order_acq_rel)) {
    }
    t.end[i].store(b + size, std::memory_order_release);  // the handler may use it from now on
    t.free_hint.store(i + 1, std::memory_order_relaxed);
    return static_cast<std::uint32_t>(i);
  }
  return kNoGuard;
}

//!Effects: stops protecting the mapping that starts at `p`, registered as entry `guard` (call
//! before unmapping it); nothing for kNoGuard.
inline void unguard_mapping(void* p, std::uint32_t guard) noexcept {
  auto& t = guard_detail::table;
  const auto b = reinterpret_cast<std::uintptr_t>(p);
  const std::size_t i = guard;
  if (b == 0 || i >= guard_detail::kMaxGuarded || t.begin[i].load(std::memory_order_acquire) != b ||
      t.end[i].load(std::memory_order_relaxed) == 0)
    return;
  t.end[i].store(0, std::memory_order_release);
  if (t.faulted[i].exchange(0, std::memory_order_acq_rel) != 0)
    t.faults.fetch_sub(1, std::memory_order_relaxed);
  t.begin[i].store(0, std::memory_order_release);
  t.free_hint.store(i, std::memory_order_relaxed);
}

//!Returns: true if `addr` lies in a guarded mapping whose object shrank under this process.
inline bool mapping_faulted(const void* addr) noexcept {
  auto& t = guard_detail::table;
  if (t.faults.load(std::memory_order_acquire) == 0) [[likely]]
    return false;
  const auto a = reinterpret_cast<std::uintptr_t>(addr);
  const std::size_t n = t.used.load(std::memory_order_acquire);
  for (std::size_t i = 0; i < n; ++i) {
    const std::uintptr_t e = t.end[i].load(std::memory_order_acquire);
    const std::uintptr_t b = t.begin[i].load(std::memory_order_relaxed);
    if (e != 0 && a >= b && a < e) return t.faulted[i].load(std::memory_order_acquire) != 0;
  }
  return false;
}

//!Effects: nothing while the mapping holding `addr` is intact (one load when no mapping of this
//! process ever faulted).
//!Throws: if a page of it could not be touched: NoSpaceError naming the object when the object
//! still has its full size (tmpfs could not allocate the page: /dev/shm is full), CorruptedError
//! when it shrank under us (another process truncated it) or its name is gone (cannot tell).
inline void check_mapping(const void* addr) {
  if (!mapping_faulted(addr)) [[likely]]
    return;
  auto& t = guard_detail::table;
  const auto a = reinterpret_cast<std::uintptr_t>(addr);
  std::string name = "?";
  std::uint64_t length = 0;
  bool low_space = false;
  for (std::size_t i = 0; i < t.used.load(std::memory_order_acquire); ++i) {
    const std::uintptr_t e = t.end[i].load(std::memory_order_acquire);
    const std::uintptr_t b = t.begin[i].load(std::memory_order_relaxed);
    if (e != 0 && a >= b && a < e) {
      name.assign(t.names[i], ::strnlen(t.names[i], guard_detail::kNameCapacity));
      length = e - b;
      low_space = t.low_space[i].load(std::memory_order_relaxed) != 0;
      break;
    }
  }
  // A page past the end of a shrunk object and a page tmpfs could not allocate fault alike. A
  // mapping covers exactly its object, so a fault while /dev/shm was full in an object that
  // still has all its bytes was the latter; anything else is taken for a truncation (one that
  // was undone by growing the object again included).
  if (const ShmStat st = shm_lstat(name); low_space && st.exists && st.regular && length != 0 &&
                                          st.size >= length) {
    const auto free = shm_free_bytes();
    throw NoSpaceError(
        fmt::format("{} is full: a page of '{}' could not be allocated ({} free), so what this "
                    "process wrote there since reads as zeros here and did not reach other "
                    "processes: close this handle, free space with `mpp gc` or enlarge {}, and "
                    "recreate the object",
                    kShmDirectory, name,
                    free ? fmt::format("{} bytes", *free) : std::string("? bytes"),
                    kShmDirectory),
        ENOSPC);
  }
  fail<CorruptedError>(
      "'{}' shrank while this process had it mapped (another process truncated it, or /dev/shm "
      "ran out of memory); the missing part reads as zeros here and nothing written to it "
      "reaches other processes: close this handle and recreate the object",
      name);
}
// ==== end mapping guard =========================================================================

}  // namespace mpp::detail::os

// ==== crash tracker (owner: tracker; see detail/tracker.hpp) ====================================
#include <link.h>
#include <sys/prctl.h>

namespace mpp::detail::os {

/// The environment variable that turns a re-executed copy of the program into a tracker (the
/// number of its connection descriptor); set only in the tracker's own environment.
inline constexpr const char* kTrackerEnv = "MPP_TRACKER_FD";
/// The descriptor number the tracker's connection has in the tracker.
inline constexpr int kTrackerFd = 3;
/// The tracker's argv[0] and process name (as `ps` shows it).
inline constexpr const char* kTrackerName = "mpp-tracker";

//!Effects: starts this program again (/proc/self/exe) as a tracker: `conn` becomes its
//! descriptor kTrackerFd, stdin/stdout/stderr are /dev/null and every other descriptor is closed
//! (the program's pipes, a test runner's output), in a session of its own (a terminal's Ctrl-C
//! or hang-up does not reach it), with no signal blocked. posix_spawn does not fork the caller's
//! threads or run its fork handlers, so this is safe in a multi-threaded program.
//!Returns: the pid of the started process, or -1 with errno set.
inline pid_type spawn_tracker(int conn) noexcept {
  posix_spawn_file_actions_t fa;
  posix_spawnattr_t attr;
  if (::posix_spawn_file_actions_init(&fa) != 0) return -1;
  if (::posix_spawnattr_init(&attr) != 0) {
    ::posix_spawn_file_actions_destroy(&fa);
    return -1;
  }
  ::posix_spawn_file_actions_adddup2(&fa, conn, kTrackerFd);  // clears close-on-exec
  ::posix_spawn_file_actions_addclosefrom_np(&fa, kTrackerFd + 1);
  for (int std_fd = 0; std_fd < 3; ++std_fd)
    ::posix_spawn_file_actions_addopen(&fa, std_fd, "/dev/null", O_RDWR, 0);
  sigset_t none, defaults;
  ::sigemptyset(&none);
  ::sigemptyset(&defaults);
  for (int sig : {SIGTERM, SIGPIPE, SIGCHLD}) ::sigaddset(&defaults, sig);
  ::posix_spawnattr_setsigmask(&attr, &none);
  ::posix_spawnattr_setsigdefault(&attr, &defaults);
  ::posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  std::vector<char*> envp;
  char fd_entry[32];
  std::snprintf(fd_entry, sizeof fd_entry, "%s=%d", kTrackerEnv, kTrackerFd);
  envp.push_back(fd_entry);
  const std::size_t key_len = std::strlen(kTrackerEnv);
  for (char** e = environ; e != nullptr && *e != nullptr; ++e)
    if (std::strncmp(*e, kTrackerEnv, key_len) != 0 || (*e)[key_len] != '=') envp.push_back(*e);
  envp.push_back(nullptr);
  char* argv[] = {const_cast<char*>(kTrackerName), nullptr};
  pid_t pid = -1;
  const int rc = ::posix_spawn(&pid, "/proc/self/exe", &fa, &attr, argv, envp.data());
  ::posix_spawn_file_actions_destroy(&fa);
  ::posix_spawnattr_destroy(&attr);
  if (rc != 0) {
    errno = rc;
    return -1;
  }
  return static_cast<pid_type>(pid);
}

//!Returns: whether `code` lies in the program's executable itself, not in a shared library: only
//! then does re-executing /proc/self/exe run that code (a plugin's host program may do anything
//! when started without arguments).
inline bool in_main_executable(const void* code) noexcept {
  struct Query {
    std::uintptr_t addr;
    bool found;
  } q{reinterpret_cast<std::uintptr_t>(code), false};
  ::dl_iterate_phdr(
      [](struct dl_phdr_info* info, std::size_t, void* data) -> int {
        auto* q = static_cast<Query*>(data);
        for (int i = 0; i < info->dlpi_phnum; ++i) {
          const auto& ph = info->dlpi_phdr[i];
          if (ph.p_type != PT_LOAD) continue;
          const std::uintptr_t begin = info->dlpi_addr + ph.p_vaddr;
          if (q->addr >= begin && q->addr < begin + ph.p_memsz) q->found = true;
        }
        return 1;  // the first object reported is the executable: stop there
      },
      &q);
  return q.found;
}

//!Effects: in the started copy, before any of the program's own static initialisers: forks, the
//! parent (the process spawn_tracker started) exits at once so that the program reaps it, and
//! the child — an orphan that init (or the nearest subreaper) adopts and reaps — carries on as
//! the tracker, with no working directory of note and SIGINT/SIGHUP ignored. Returns only in the
//! child; false if it cannot fork (then the caller exits).
inline bool become_tracker() noexcept {
  const pid_t pid = ::fork();
  if (pid < 0) return false;
  if (pid > 0) ::_exit(0);
  (void)!::chdir("/");
  ::signal(SIGINT, SIG_IGN);
  ::signal(SIGHUP, SIG_IGN);
  ::signal(SIGPIPE, SIG_IGN);
  (void)::prctl(PR_SET_NAME, kTrackerName, 0, 0, 0);
  return true;
}

//!Returns: whether this process was started by spawn_tracker(): its environment names `fd`
//! and `fd` is a packet socket.
inline bool is_tracker_connection(int fd) noexcept {
  const char* v = ::getenv(kTrackerEnv);
  if (v == nullptr || std::strtol(v, nullptr, 10) != fd) return false;
  int type = 0;
  socklen_t len = sizeof type;
  return ::getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0 && type == SOCK_SEQPACKET;
}

/// Closes descriptor `fd` (for one that no Fd owns).
inline void close_fd(int fd) noexcept { ::close(fd); }

//!Returns: a connected pair of packet sockets (close-on-exec; each send is one whole message),
//! both invalid if the system refuses.
inline std::pair<Fd, Fd> packet_pair() noexcept {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) return {};
  // Far from the low numbers a program closes, dup2s over or hands to its children.
  for (int& s : sv) {
    if (const int high = ::fcntl(s, F_DUPFD_CLOEXEC, 700); high >= 0) {
      ::close(s);
      s = high;
    }
  }
  return {Fd{sv[0]}, Fd{sv[1]}};
}

//!Returns: the identity (device and inode) of descriptor `fd`, or {0, 0} if it is not open.
inline std::pair<std::uint64_t, std::uint64_t> fd_identity(int fd) noexcept {
  struct stat st{};
  if (fd < 0 || ::fstat(fd, &st) != 0) return {0, 0};
  return {static_cast<std::uint64_t>(st.st_dev), static_cast<std::uint64_t>(st.st_ino)};
}

//!Effects: sends one message over packet socket `fd` without raising SIGPIPE, waiting at most
//! `bound` for room in the socket's buffer.
//!Returns: 0, or the errno (EAGAIN after the bound; EPIPE/ECONNRESET: the peer is gone).
inline int send_packet(int fd, const void* data, std::size_t n, std::chrono::milliseconds bound) noexcept {
  const auto until = std::chrono::steady_clock::now() + bound;
  for (;;) {
    if (::send(fd, data, n, MSG_NOSIGNAL | MSG_DONTWAIT) >= 0) return 0;
    const int err = errno;
    if (err == EINTR) continue;
    if (err != EAGAIN && err != EWOULDBLOCK) return err;
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - std::chrono::steady_clock::now());
    if (left.count() <= 0) return EAGAIN;
    struct pollfd p{fd, POLLOUT, 0};
    (void)::poll(&p, 1, static_cast<int>(left.count()) + 1);
  }
}

//!Effects: receives one message from packet socket `fd` into `buf`, waiting at most `timeout`
//! (forever when negative; not at all when zero).
//!Returns: its size, 0 at end of file, -1 on timeout or error, -2 if `timeout` is zero and no
//! message is there.
inline long recv_packet(int fd, void* buf, std::size_t n, std::chrono::milliseconds timeout) noexcept {
  if (timeout.count() == 0) {
    for (;;) {
      const ssize_t got = ::recv(fd, buf, n, MSG_DONTWAIT);
      if (got >= 0) return static_cast<long>(got);
      if (errno == EAGAIN || errno == EWOULDBLOCK) return -2;
      if (errno != EINTR) return -1;
    }
  }
  const auto until = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    if (timeout.count() > 0) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - std::chrono::steady_clock::now());
      struct pollfd p{fd, POLLIN, 0};
      const int r = ::poll(&p, 1, left.count() > 0 ? static_cast<int>(left.count()) + 1 : 0);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) return -1;
    }
    const ssize_t got = ::recv(fd, buf, n, 0);
    if (got >= 0) return static_cast<long>(got);
    if (errno != EINTR) return -1;
  }
}

//!Effects: reaps child `pid` (waits for it: the tracker's first process exits at once).
inline void reap(pid_type pid) noexcept {
  int status = 0;
  while (::waitpid(static_cast<pid_t>(pid), &status, 0) < 0 && errno == EINTR) {
  }
}

//!Returns: every (object, process) pair where a process this user may inspect holds a
//! descriptor of an object of kShmDirectory, from /proc/<pid>/fd (the caller included).
//! A creator holds one from the moment its shm_open makes the name until it has mapped the
//! object, so an object nobody has open or mapped has no creator still building it. Linux only;
//! empty if /proc cannot be read.
inline std::vector<ShmMapper> shm_openers() {
  std::vector<ShmMapper> out;
  DIR* proc = ::opendir("/proc");
  if (proc == nullptr) return out;
  const std::string dir = std::string(kShmDirectory) + "/";
  while (const struct dirent* e = ::readdir(proc)) {
    char* end = nullptr;
    const long pid = std::strtol(e->d_name, &end, 10);
    if (pid <= 0 || end == e->d_name || *end != '\0') continue;
    const std::string fds = "/proc/" + std::string(e->d_name) + "/fd";
    DIR* d = ::opendir(fds.c_str());
    if (d == nullptr) continue;  // gone, or another user's
    while (const struct dirent* f = ::readdir(d)) {
      if (f->d_name[0] == '.') continue;
      const std::string link = fds + "/" + f->d_name;
      char target[PATH_MAX];
      const ssize_t n = ::readlink(link.c_str(), target, sizeof target - 1);
      if (n <= 0 || static_cast<std::size_t>(n) < dir.size() ||
          std::strncmp(target, dir.c_str(), dir.size()) != 0)
        continue;
      struct stat st{};
      if (::stat(link.c_str(), &st) == 0)
        out.push_back({static_cast<std::uint64_t>(st.st_ino), static_cast<pid_type>(pid)});
    }
    ::closedir(d);
  }
  ::closedir(proc);
  return out;
}

}  // namespace mpp::detail::os
// ==== end crash tracker ==========================================================================
