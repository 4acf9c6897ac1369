// mpp — POSIX backend, common ground: the process id type, the errno exception, an owning
// file descriptor, and small helpers every other topic of the backend uses.
#pragma once

#include "../../config.hpp"

#if !defined(MPP_OS_POSIX)
#  error "mpp: detail/os/posix/common.hpp included on a non-POSIX platform"
#endif

#include <fcntl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <utility>

#include "../../../errors.hpp"

namespace mpp::detail::os {

/// Process id type shared with the Win32 backend (both fit in 32 bits).
using pid_type = std::int32_t;

//!Throws: OSError naming the call, the object and errno's text (or a more specific mpp error).
[[noreturn]] inline void throw_errno(const char* call, std::string_view object, int err) {
  throw OSError(
      fmt::format("{}('{}') failed: {} (errno {}){}", call, object, std::strerror(err), err,
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

/// Closes descriptor `fd` (for one that no Fd owns).
inline void close_fd(int fd) noexcept { ::close(fd); }

//!Returns: the identity (device and inode) of descriptor `fd`, or {0, 0} if it is not open.
inline std::pair<std::uint64_t, std::uint64_t> fd_identity(int fd) noexcept {
  struct stat st {};
  if (fd < 0 || ::fstat(fd, &st) != 0) return {0, 0};
  return {static_cast<std::uint64_t>(st.st_dev), static_cast<std::uint64_t>(st.st_ino)};
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

/// Milliseconds since the Unix epoch (wall clock).
inline std::int64_t unix_time_ms() noexcept {
  struct timespec ts {};
  ::clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

}  // namespace mpp::detail::os
