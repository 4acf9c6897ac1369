// mpp — the single-producer / single-consumer byte ring under a Pipe: per direction, the
// writer's and the reader's byte indices and two bells to sleep on, then the data as frames of a
// 4-byte {length, flags} header and a padded payload. A frame is published by a release store of
// the write index; a side enters the kernel to wake the other only when it announced that it
// sleeps. The protocol, for readers of this file: docs/design/pipe.md.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "config.hpp"
#include "liveness.hpp"
#include "os.hpp"
#include "wait.hpp"

namespace mpp::detail::ring {

/// Bytes of a frame header: the payload length in the low 24 bits, the flags in the high 8.
inline constexpr std::uint32_t kHeader = 4;
/// Frame flags: the low two bits are the message kind.
inline constexpr std::uint32_t kKindMask = 0x3;
inline constexpr std::uint32_t kKindValue = 1;   ///< a value of the pipe's element type
inline constexpr std::uint32_t kKindBytes = 2;   ///< send_bytes()
inline constexpr std::uint32_t kKindTagged = 3;  ///< untyped pipe: {fingerprint, name} + value
inline constexpr std::uint32_t kMore = 0x4;      ///< another frame of this message follows
inline constexpr std::uint32_t kCont = 0x8;      ///< continues the message of the previous frame
inline constexpr std::uint32_t kLong =
    0x10;  ///< first frame of several: payload starts with the u64 total
inline constexpr std::uint32_t kKnownFlags = kKindMask | kMore | kCont | kLong;

/// Smallest and largest ring (bytes per direction).
inline constexpr std::uint64_t kMinCapacity = 4096;
inline constexpr std::uint64_t kMaxCapacity = std::uint64_t{1} << 32;
/// Largest message a reader accepts (its length is read from shared memory).
inline constexpr std::uint64_t kMaxMessage = std::uint64_t{1} << 40;
/// How many times a sleeper re-checks after announcing itself, before it enters the kernel (see
/// the header comment): longer than a publisher's store buffer takes to drain.
inline constexpr int kAnnounceSpin = 256;

/// Bytes of payload per frame for a ring of `capacity` bytes: a quarter of the ring, so the
/// writer can fill frames while the reader drains earlier ones.
constexpr std::uint64_t max_frame(std::uint64_t capacity) noexcept {
  return std::min<std::uint64_t>(capacity / 4, std::uint64_t{1} << 20);  // < 2^24: fits the header
}
/// Bytes a frame with `len` payload bytes occupies.
constexpr std::uint64_t frame_size(std::uint64_t len) noexcept {
  return kHeader + ((len + 3) & ~std::uint64_t{3});
}

/// Where one side sleeps. `sleeper` is read by the other side after every publish, so it lives
/// on its own line with nothing that changes often.
struct Bell {
  std::atomic<std::uint32_t> seq;   ///< futex word, bumped by a waker that saw a sleeper
  std::atomic<std::uint32_t> gone;  ///< 1 once the end that sleeps on this bell is closed or dead
  std::atomic<std::uint64_t> sleeper;  ///< packed ProcessRef of the sleeper, 0 if none
  char pad[kCacheLine - 16];
};
static_assert(sizeof(Bell) == kCacheLine && std::is_standard_layout_v<Bell>);
static_assert(std::atomic<std::uint64_t>::is_always_lock_free &&
              std::atomic<std::uint32_t>::is_always_lock_free);

/// The control block of one direction; `capacity` data bytes follow it.
struct Control {
  alignas(kCacheLine) std::atomic<std::uint64_t> write_idx;  ///< stored by the writer only
  alignas(kCacheLine) std::atomic<std::uint64_t> read_idx;   ///< stored by the reader only
  /// The reader sleeps here; gone = the reader's end is gone. The writer loads `sleeper` and
  /// `gone` on every send: one line that changes only when the reader sleeps or goes.
  alignas(kCacheLine) Bell data;
  /// The writer sleeps here; gone = the writer's end is gone (read by the reader when empty).
  alignas(kCacheLine) Bell space;
};
static_assert(sizeof(Control) == 4 * kCacheLine && std::is_standard_layout_v<Control>);

/// memcpy, kept out of line on purpose: with a size known at compile time compilers expand it
/// into `rep movs`, which is slow on the ring's 4-byte-aligned payloads; the C library's copy is
/// fast at any alignment.
[[gnu::noinline]] inline void copy_bytes(void* dst, const void* src, std::size_t n) noexcept {
  std::memcpy(dst, src, n);
}

/// One process's view of one direction (pointers into its mapping).
struct View {
  Control* ctl = nullptr;
  std::byte* data = nullptr;
  std::uint64_t capacity = 0;  // power of two
  std::uint64_t mask = 0;
  std::uint64_t max_frame = 0;

  /// Copies `n` bytes to ring position `pos` (wrapping).
  void put(std::uint64_t pos, const void* src, std::uint64_t n) const noexcept {
    const std::uint64_t off = pos & mask;
    const std::uint64_t first = std::min(n, capacity - off);
    copy_bytes(data + off, src, first);
    if (n > first) copy_bytes(data, static_cast<const std::byte*>(src) + first, n - first);
  }
  /// Copies `n` bytes from ring position `pos` (wrapping).
  void get(std::uint64_t pos, void* dst, std::uint64_t n) const noexcept {
    const std::uint64_t off = pos & mask;
    const std::uint64_t first = std::min(n, capacity - off);
    copy_bytes(dst, data + off, first);
    if (n > first) copy_bytes(static_cast<std::byte*>(dst) + first, data, n - first);
  }
};

/// Packs a frame header.
constexpr std::uint32_t header(std::uint32_t len, std::uint32_t flags) noexcept {
  return len | (flags << 24);
}

//!Effects: wakes the sleeper on `b` (a system call). One: a bell has one announced sleeper, and
//! a semaphore-based backend (Win32) would keep surplus wake-ups as spurious ones for later.
inline void ring_bell(Bell& b) noexcept {
  b.seq.fetch_add(1, std::memory_order_seq_cst);
  os::wake_address(b.seq, 1);
}

//!Effects: after a publish, wakes the other side if it announced that it sleeps on `b`. The
//! announcement is taken (exchanged for 0), so a sleeper costs one wake-up, not one per message
//! sent while it is waking up. Returns: true if it woke someone.
inline bool wake_sleeper(Bell& b) noexcept {
  if (b.sleeper.load(std::memory_order_relaxed) == 0) [[likely]]
    return false;
  if (b.sleeper.exchange(0, std::memory_order_seq_cst) == 0) return false;
  ring_bell(b);
  return true;
}

//!Effects: returns when `ready()` is true: spins `spin` times, then announces itself in
//! `b.sleeper` and sleeps on `b.seq` at most kPollInterval at a time, calling `check()` (which
//! may throw) before the first sleep and after every wake-up.
//!Returns: false if `deadline` passed first.
template <class Ready, class Check>
bool wait(Bell& b, Ready&& ready, const Deadline& deadline, Check&& check, int spin) {
  for (int i = 0; i < spin; ++i) {
    if (ready()) return true;
    os::cpu_relax();
  }
  check();
  struct Clear {
    Bell& b;
    ~Clear() { b.sleeper.store(0, std::memory_order_relaxed); }
  } clear{b};
  const std::uint64_t me = ProcessRef::self().pack();
  bool announced = false;
  for (;;) {
    if (!announced) {
      b.sleeper.store(me, std::memory_order_seq_cst);
      announced = true;
      MPP_CRASH_POINT("pipe.wait.announced");
      for (int i = 0; i < kAnnounceSpin; ++i) {  // outlast a publisher that missed the announcement
        if (ready()) return true;
        os::cpu_relax();
      }
    }
    const std::uint32_t s = b.seq.load(std::memory_order_seq_cst);
    if (ready()) return true;
    if (deadline.expired()) return false;
    std::optional<std::chrono::nanoseconds> d = kPollInterval;
    if (const auto left = deadline.remaining(); left && *left < *d) d = left;
    os::check_mapping(&b);  // CorruptedError if a peer truncated the segment under us
    os::wait_on_address(b.seq, s, d);
    // A waker took the announcement: announce again if we must wait on.
    if (b.sleeper.load(std::memory_order_relaxed) != me) announced = false;
    if (ready()) return true;
    check();
  }
}

}  // namespace mpp::detail::ring
