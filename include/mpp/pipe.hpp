// mpp — Pipe and Connection (Python's multiprocessing.Pipe / connection.Connection).
//
// A Pipe is one segment holding one SPSC byte ring per direction (detail/ring.hpp) and, per end,
// a small table of the processes that hold it. Sending into a non-full ring while the reader is
// awake and receiving from a non-empty ring are plain shared-memory operations: no system call,
// no fence beyond the release store that publishes a frame. Messages of any size are streamed
// through the fixed ring as a chain of frames; the reader delivers only complete messages.
//
// Liveness of an end: an end is *dead* once it has been held and no live process holds it.
// A process holds an end from creation (or open) until it closes it or dies; a forked child holds
// every end its parent held open at the moment of fork() (a pthread_atfork hook reserves a slot
// for the child in the parent before the fork, so the parent may close its copy right away, and
// the child takes the slot over before fork() returns there). close() removes only the calling
// process. recv() on an end whose peer is dead raises EOFError once the messages already sent
// are drained; send() to a dead peer raises BrokenPipeError. Both are noticed within about
// 0.2 s even while blocked, because sleepers wake every 100 ms to check the peer's holders.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "codec.hpp"
#include "detail/fork_hooks.hpp"
#include "detail/liveness.hpp"
#include "detail/ring.hpp"
#include "detail/wait.hpp"
#include "errors.hpp"
#include "segment.hpp"

namespace mpp {

/// Options of a new Pipe.
struct PipeOptions {
  /// Bytes of ring per direction: a power of two from 4 KiB to 4 GiB. Messages of any size pass
  /// through it; a larger ring only lets the writer run further ahead of the reader.
  std::size_t capacity = 256 * 1024;
  /// How many times a blocked send/recv/poll of the ends made here polls before it sleeps
  /// (inherited by forked children). Waking a sleeper costs ~25 µs on the other core, so a
  /// brief spin pays off for chatty peers; 0 sleeps at once and uses the least CPU.
  int spin_iterations = detail::kSpinIterations;
};

/// recv_bytes_into() was given a buffer too small for the next message (Python's
/// multiprocessing.BufferTooShort). The message is not consumed: receive it again with a larger
/// buffer or with recv_bytes().
class BufferTooShort : public ProcessError {
 public:
  //!Effects: records how many bytes the message needs.
  BufferTooShort(const std::string& what, std::size_t needed)
      : ProcessError(what), needed_(needed) {}
  /// Size of the message that did not fit.
  std::size_t needed() const noexcept { return needed_; }

 private:
  std::size_t needed_;
};

namespace detail {
namespace pipe_layout {

/// Processes that may hold one end at the same time (the creator, its forked children, ...).
/// Entries are handed out from 0 up (EndShared::used): a pipe with few holders touches one page
/// of the table.
inline constexpr std::uint32_t kMaxHolders = 4096;
/// Marks a holder entry reserved at fork() for a child that has not taken it over yet: the
/// parent's packed ProcessRef with this bit set in the pid half (pids are below 2^22).
inline constexpr std::uint64_t kPendingBit = 0x80000000ull;
inline constexpr std::uint32_t kLayoutVersion = 2;
inline constexpr std::uint32_t kNoSlot = ~std::uint32_t{0};

/// The shared state of one end.
struct EndShared {
  std::atomic<std::uint64_t> holders[kMaxHolders];         ///< packed ProcessRefs, 0 = free
  alignas(kCacheLine) std::atomic<std::uint32_t> claimed;  ///< 1 once some process held it
  std::atomic<std::uint32_t> dead;  ///< 1 once held and then left by every holder (sticky)
  /// Entries of `holders` ever handed out (a high-water mark): scans stop here. Clamped to
  /// kMaxHolders wherever it is read.
  std::atomic<std::uint32_t> used;

  /// Entries that may be in use.
  std::uint32_t used_entries() const noexcept {
    return std::min(used.load(std::memory_order_seq_cst), kMaxHolders);
  }
};

/// The first bytes of a pipe's payload; the rings follow.
struct Header {
  std::uint64_t capacity;  ///< bytes per ring
  std::uint32_t duplex;    ///< 1: two rings, 0: one (read by end 0, written by end 1)
  std::uint32_t layout;    ///< kLayoutVersion
  alignas(kCacheLine) EndShared ends[2];
};
static_assert(std::is_standard_layout_v<Header> && sizeof(Header) % kCacheLine == 0);

/// Offset of ring `i` in the payload. Ring i is read by end i and written by end 1 - i.
constexpr std::uint64_t ring_offset(unsigned i, std::uint64_t capacity) noexcept {
  return sizeof(Header) + i * (sizeof(ring::Control) + capacity);
}
/// Payload bytes of a pipe.
constexpr std::uint64_t payload_size(std::uint64_t capacity, bool duplex) noexcept {
  return ring_offset(duplex ? 2 : 1, capacity);
}

inline bool holder_alive(std::uint64_t w) noexcept {
  if (w == 0) return false;
  // A pending entry lives as long as the parent that made it (its child takes it over at once).
  return ProcessRef::unpack(w & ~kPendingBit).alive();
}

}  // namespace pipe_layout

/// One process's use of one end of a pipe, shared by every copy of a Connection in this process.
class PipeEnd final : public ForkHook {
 public:
  //!Effects: uses end `end` of the pipe in `seg`; this process already holds holder slot `slot`.
  PipeEnd(std::shared_ptr<Segment> seg, unsigned end, std::uint32_t slot,
          int spin = kSpinIterations)
      : seg_(std::move(seg)), end_(end), spin_(spin < 0 ? 0 : spin), slot_(slot) {
    std::byte* base = seg_->payload();
    h_ = reinterpret_cast<pipe_layout::Header*>(base);
    cap_ = h_->capacity;
    duplex_ = h_->duplex != 0;
    readable_ = end_ == 0 || duplex_;
    writable_ = end_ == 1 || duplex_;
    if (readable_) in_ = view(end_);
    if (writable_) out_ = view(1 - end_);
    send_ok_ = writable_;
    recv_ok_ = readable_;
    register_fork_hook(this);
  }
  PipeEnd(const PipeEnd&) = delete;
  PipeEnd& operator=(const PipeEnd&) = delete;
  ~PipeEnd() { close(); }

  const std::string& name() const noexcept { return seg_->name(); }
  bool closed() const noexcept { return closed_; }
  bool readable() const noexcept { return readable_; }
  bool writable() const noexcept { return writable_; }

  // ---- sending ---------------------------------------------------------------------------

  //!Effects: sends the N bytes at `p` as one value frame: the fast path of Connection<T>::send.
  template <std::size_t N>
  void send_raw(const void* p, const Deadline* deadline = nullptr) {
    constexpr std::uint64_t need = ring::frame_size(N);
    if (!send_ok_ || need - ring::kHeader > out_.max_frame) [[unlikely]] {
      send_slow(p, N, deadline);
      return;
    }
    ring::Control* c = out_.ctl;
    const std::uint64_t w = c->write_idx.load(std::memory_order_relaxed);  // ours: never stale
    if (((w & 3) | c->data.gone.load(std::memory_order_relaxed)) != 0 || w < wseen_ ||
        w - rcache_ > out_.capacity - need) [[unlikely]] {  // full, or indices out of range
      send_slow(p, N, deadline);
      return;
    }
    const std::uint32_t hdr = ring::header(static_cast<std::uint32_t>(N), ring::kKindValue);
    const std::uint64_t off = w & out_.mask;  // 4-aligned, so the header never wraps
    std::memcpy(out_.data + off, &hdr, ring::kHeader);
    const std::uint64_t poff = (off + ring::kHeader) & out_.mask;
    if (N <= 64 && poff + N <= out_.capacity) [[likely]]
      std::memcpy(out_.data + poff, p, N);
    else
      out_.put(w + ring::kHeader, p, N);  // the C library's memcpy for larger values
    MPP_CRASH_POINT("pipe.send.frame_filled");
    publish(w + need);
  }

  // The slow path of send_raw (full ring, closed, sleeping or gone reader), out of line so that
  // send() inlines.
  [[gnu::noinline]] void send_slow(const void* p, std::size_t n, const Deadline* deadline) {
    write_message(ring::kKindValue, {}, {static_cast<const std::byte*>(p), n},
                  deadline != nullptr ? *deadline : Deadline::never());
  }

  //!Effects: sends one message of kind `kind` made of `head` then `body`, as one frame or as a
  //! chain of frames; blocks while the ring is full, until `deadline`. Throws: ValueError
  //! (closed / read-only), BrokenPipeError (the other end is closed or its process died),
  //! TimeoutError (no room in time: nothing was sent, or — for a message longer than a frame —
  //! its first part was and the receiver will skip it), CorruptedError.
  void write_message(std::uint32_t kind, std::span<const std::byte> head,
                     std::span<const std::byte> body,
                     const Deadline& deadline = Deadline::never()) {
    check_open("send");
    os::check_mapping(h_);  // CorruptedError if a peer truncated the segment under us
    if (!writable_)
      fail<ValueError>(
          "send on pipe '{}': this end is read-only (Pipe(duplex=false) gives a "
          "receive-only first end and a send-only second end)",
          name());
    if (out_.ctl->data.gone.load(std::memory_order_acquire) != 0) broken_pipe();
    const std::uint64_t total = head.size() + body.size();
    std::array<std::byte, 8> prefix{};
    std::memcpy(prefix.data(), &total, 8);
    Cursor cur;
    if (total <= out_.max_frame) {
      cur.add(head).add(body);
      write_frame(static_cast<std::uint32_t>(total), kind, cur, deadline);
      return;
    }
    // [u64 total][head][body] cut into frames of at most max_frame bytes.
    cur.add(prefix).add(head).add(body);
    std::uint64_t left = total + 8;
    bool first = true;
    while (left > 0) {
      const std::uint64_t len = std::min(left, out_.max_frame);
      left -= len;
      std::uint32_t flags = kind | (first ? ring::kLong : ring::kCont);
      if (left > 0) flags |= ring::kMore;
      write_frame(static_cast<std::uint32_t>(len), flags, cur, deadline);
      if (left > 0) MPP_CRASH_POINT("pipe.send.mid_message");
      first = false;
    }
  }

  // ---- receiving -------------------------------------------------------------------------

  /// A complete message, not consumed yet (valid until consume() or the next peek).
  struct Message {
    std::uint32_t kind;
    std::span<const std::byte> bytes;
    bool direct;  ///< assembled into the caller's buffer (and already consumed from the ring)
  };

  //!Effects: the fast path of Connection<T>::recv for a raw T of N bytes: when the next frame
  //! is a complete N-byte value, copies it to `out` and consumes it. Returns: false otherwise.
  template <std::size_t N>
  bool try_recv_raw(void* out) noexcept {
    if (!recv_ok_ || have_msg_ || assembling_) return false;
    ring::Control* c = in_.ctl;
    const std::uint64_t r = c->read_idx.load(std::memory_order_relaxed);
    if (r < rseen_) [[unlikely]] return false;  // went backwards: peek reports the corruption
    constexpr std::uint64_t need = ring::frame_size(N);
    if (wcache_ - r < need || wcache_ - r > in_.capacity || (r & 3) != 0) {
      const std::uint64_t w = c->write_idx.load(std::memory_order_acquire);
      if (w < wcache_) return false;  // went backwards: the slow path reports the corruption
      wcache_ = w;
      if (wcache_ - r < need || wcache_ - r > in_.capacity || (r & 3) != 0) return false;
    }
    const std::uint64_t off = r & in_.mask;
    std::uint32_t hdr;
    std::memcpy(&hdr, in_.data + off, ring::kHeader);
    if (hdr != ring::header(static_cast<std::uint32_t>(N), ring::kKindValue)) return false;
    const std::uint64_t poff = (off + ring::kHeader) & in_.mask;
    if (N <= 64 && poff + N <= in_.capacity) [[likely]]
      std::memcpy(out, in_.data + poff, N);
    else
      in_.get(r + ring::kHeader, out, N);  // the C library's memcpy for larger values
    MPP_CRASH_POINT("pipe.recv.copied");
    consume_ring(r + need);
    return true;
  }

  //!Returns: the next complete message, without consuming it; nullopt if `deadline` passed.
  //! A message longer than a frame is assembled into `direct` when it fits there (kinds value
  //! and bytes), otherwise into a buffer of this end.
  //!Throws: EOFError (the writer is gone and nothing complete is left; a partial message is
  //! discarded), ValueError (closed / write-only), CorruptedError.
  std::optional<Message> peek(const Deadline& deadline, std::span<std::byte> direct = {}) {
    check_readable("recv");
    if (have_msg_) return Message{msg_kind_, {msg_.data(), msg_size_}, false};
    os::check_mapping(h_);  // CorruptedError if a peer truncated the segment under us
    struct Guard {  // a partial message assembled in the caller's buffer moves to ours
      PipeEnd& e;
      ~Guard() {
        if (e.assembling_ && e.asm_direct_) {
          try {
            e.msg_.assign(e.asm_dst_, e.asm_dst_ + e.asm_got_);
          } catch (...) {  // out of memory: the message is lost, never delivered torn
            e.assembling_ = false;
          }
          e.asm_dst_ = nullptr;
          e.asm_direct_ = false;
        }
      }
    } guard{*this};
    for (;;) {
      const std::uint64_t r = read_index();
      const std::uint64_t avail = wait_data(r, deadline);
      if (avail == 0) return std::nullopt;
      std::uint32_t hdr;
      std::memcpy(&hdr, in_.data + (r & in_.mask), ring::kHeader);
      const std::uint32_t len = hdr & 0xffffff;
      const std::uint32_t flags = hdr >> 24;
      const std::uint32_t kind = flags & ring::kKindMask;
      const std::uint64_t fsize = ring::frame_size(len);
      if ((flags & ~ring::kKnownFlags) != 0 || kind < ring::kKindValue ||
          kind > ring::kKindTagged || len > in_.max_frame || fsize > avail)
        corrupted(fmt::format("invalid frame header (length {}, flags {:#x}, {} bytes available)",
                              len, flags, avail));
      const std::uint64_t payload = r + ring::kHeader;
      if ((flags & ring::kCont) == 0) {
        assembling_ = false;  // a message left unfinished by a writer that died: never delivered
        if ((flags & (ring::kMore | ring::kLong)) == 0) {
          const std::uint64_t off = payload & in_.mask;
          if (off + len <= in_.capacity) {
            view_consume_ = r + fsize;
            return Message{kind, {in_.data + off, len}, false};
          }
          msg_.resize(len);
          in_.get(payload, msg_.data(), len);
          consume_ring(r + fsize);
          return complete(kind, len);
        }
        if ((flags & ring::kLong) == 0 || (flags & ring::kMore) == 0 || len < 8)
          corrupted(fmt::format("invalid first frame (length {}, flags {:#x})", len, flags));
        std::uint64_t total;
        in_.get(payload, &total, 8);
        if (total + 8 <= len || total > ring::kMaxMessage)
          corrupted(fmt::format("invalid message length {}", total));
        asm_kind_ = kind;
        asm_total_ = total;
        asm_got_ = 0;
        if (kind != ring::kKindTagged && total <= direct.size()) {
          asm_dst_ = direct.data();
          asm_direct_ = true;
        } else {
          // The declared total comes from the writer: reserve at most kReserveLimit up front
          // and grow with the data that actually arrives, so a hostile total cannot make this
          // process allocate memory that no frame fills.
          msg_.clear();
          msg_.reserve(std::min<std::uint64_t>(total, kReserveLimit));
          asm_dst_ = nullptr;
          asm_direct_ = false;
        }
        assembling_ = true;
        append(payload + 8, len - 8);
        consume_ring(r + fsize);
        MPP_CRASH_POINT("pipe.recv.mid_message");
        continue;
      }
      if (!assembling_ || kind != asm_kind_) {  // the rest of a message we do not have: skip
        consume_ring(r + fsize);
        continue;
      }
      if (len > asm_total_ - asm_got_ ||
          ((flags & ring::kMore) == 0 && asm_got_ + len != asm_total_))
        corrupted(fmt::format("frames of a {}-byte message do not add up", asm_total_));
      append(payload, len);
      consume_ring(r + fsize);
      if ((flags & ring::kMore) != 0) {
        MPP_CRASH_POINT("pipe.recv.mid_message");
        continue;
      }
      assembling_ = false;
      if (asm_direct_) return Message{kind, {asm_dst_, asm_total_}, true};
      return complete(kind, asm_total_);
    }
  }

  //!Effects: consumes the message returned by the last peek().
  void consume() noexcept {
    if (have_msg_) {
      have_msg_ = false;
    } else if (view_consume_ != 0) {
      const std::uint64_t to = view_consume_;
      view_consume_ = 0;
      consume_ring(to);
    }
  }

  /// The local buffer holding the current message (for recv_bytes to move it out).
  Bytes take_buffer() {
    Bytes out = std::move(msg_);
    out.resize(msg_size_);
    msg_ = Bytes{};
    have_msg_ = false;
    return out;
  }
  bool message_in_buffer() const noexcept { return have_msg_; }

  //!Returns: true when a frame (or a complete message) is waiting, or the writer is gone (so
  //! recv would not block); false if `deadline` passed first.
  bool poll(const Deadline& deadline) {
    check_readable("poll");
    if (have_msg_) return true;
    os::check_mapping(h_);
    const std::uint64_t r = read_index();
    auto ready = [&] { return refresh_avail(r) >= ring::kHeader || writer_gone(); };
    if (ready()) return true;
    if (deadline.expired()) {
      check_writer();
      return ready();
    }
    return ring::wait(
        in_.ctl->data, ready, deadline, [&] { check_writer(); }, spin_);
  }

  //!Effects: this process stops holding the end; when no live process holds it any more, the
  //! peer is told (its recv raises EOFError, its send BrokenPipeError). Idempotent.
  void close() noexcept {
    if (closed_) return;
    closed_ = true;
    send_ok_ = recv_ok_ = false;
    unregister_fork_hook(this);
    auto& es = h_->ends[end_];
    // Slots reserved for children at fork(): wait (bounded) until they took them over, and
    // free the ones whose child never started (fork failed, or killed before its first step).
    const std::uint64_t mine = ProcessRef::self().pack();
    for (std::uint32_t s : pending_) {
      const auto t0 = std::chrono::steady_clock::now();
      while (es.holders[s].load(std::memory_order_acquire) == (mine | pipe_layout::kPendingBit) &&
             std::chrono::steady_clock::now() - t0 < std::chrono::seconds(1))
        os::sleep_for(std::chrono::microseconds(50));
      std::uint64_t expect = mine | pipe_layout::kPendingBit;
      es.holders[s].compare_exchange_strong(expect, 0, std::memory_order_seq_cst);
    }
    pending_.clear();
    if (slot_ < pipe_layout::kMaxHolders) {
      std::uint64_t expect = mine;
      es.holders[slot_].compare_exchange_strong(expect, 0, std::memory_order_seq_cst);
    }
    slot_ = pipe_layout::kNoSlot;
    MPP_CRASH_POINT("pipe.close.released");
    // Of two holders leaving together, at least one sees the other gone (both seq_cst).
    if (!has_live_holder(end_)) mark_dead(end_);
  }

  // ---- fork ------------------------------------------------------------------------------

  void before_fork() noexcept override {
    fork_slot_ = pipe_layout::kNoSlot;
    if (closed_) return;
    fork_word_ = ProcessRef::self().pack() | pipe_layout::kPendingBit;
    fork_slot_ = claim_slot(end_, fork_word_);
  }
  void after_fork_parent() noexcept override {
    // Forget reservations that earlier children have taken over, so a long-lived parent that
    // forks many children keeps a short list.
    std::erase_if(pending_, [&](std::uint32_t s) {
      return h_->ends[end_].holders[s].load(std::memory_order_relaxed) != fork_word_;
    });
    if (fork_slot_ != pipe_layout::kNoSlot) {
      try {
        pending_.push_back(fork_slot_);
      } catch (...) {  // out of memory: the entry stays until this process dies
      }
    }
    fork_slot_ = pipe_layout::kNoSlot;
  }
  void after_fork_child() noexcept override {
    pending_.clear();
    last_scan_ = {};
    if (closed_) return;
    const std::uint64_t me = ProcessRef::self().pack();
    std::uint64_t expect = fork_word_;
    if (fork_slot_ != pipe_layout::kNoSlot &&
        h_->ends[end_].holders[fork_slot_].compare_exchange_strong(expect, me,
                                                                   std::memory_order_seq_cst))
      slot_ = fork_slot_;
    else
      slot_ = claim_slot(end_, me);
    fork_slot_ = pipe_layout::kNoSlot;
  }

  // ---- passing an end to another process by name (codec<Connection<T>>) ------------------

  //!Effects: reserves a holder slot of this end for a process that will open it from an encoded
  //! Connection, as before_fork() does for a child: the end stays held (no EOF for the peer)
  //! until that process takes the slot over, and close() frees the slot if it never does.
  //!Returns: the slot and the word it holds. Throws: ValueError (closed), Error (no free slot).
  std::pair<std::uint32_t, std::uint64_t> reserve_for_transfer() {
    check_open("passing a connection");
    const std::uint64_t word = ProcessRef::self().pack() | pipe_layout::kPendingBit;
    const std::uint32_t s = claim_slot(end_, word);
    if (s == pipe_layout::kNoSlot)
      fail<Error>("pipe '{}': {} processes already hold this end", name(), pipe_layout::kMaxHolders);
    pending_.push_back(s);
    return {s, word};
  }

  //!Effects: this process takes over holder slot `slot` of end `end` of the pipe in `seg`,
  //! reserved for it by reserve_for_transfer() in the sending process (`word`).
  //!Returns: the end. Throws: CorruptedError (bad end or slot), ValueError (the sender closed the
  //! end, or died, before this process took it over).
  static std::shared_ptr<PipeEnd> adopt(std::shared_ptr<Segment> seg, unsigned end,
                                        std::uint32_t slot, std::uint64_t word) {
    if (end > 1 || slot >= pipe_layout::kMaxHolders || (word & pipe_layout::kPendingBit) == 0)
      fail<CorruptedError>("pipe '{}': an encoded connection names end {} and slot {}",
                           seg->name(), end, slot);
    auto* h = reinterpret_cast<pipe_layout::Header*>(seg->payload());
    std::uint64_t expect = word;
    if (!h->ends[end].holders[slot].compare_exchange_strong(
            expect, ProcessRef::self().pack(), std::memory_order_seq_cst))
      fail<ValueError>("pipe '{}': the connection was closed by the process that sent it before "
                       "this process opened it (keep it open until the receiver has started)",
                       seg->name());
    return std::make_shared<PipeEnd>(std::move(seg), end, slot);
  }
  /// Which end this is (0: the first of Pipe(), 1: the second).
  unsigned end_index() const noexcept { return end_; }

  // ---- helpers shared with Connection ----------------------------------------------------

  [[noreturn]] void corrupted(const std::string& what) const {
    fail<CorruptedError>("pipe '{}': {}; the pipe was overwritten by a buggy or hostile process",
                         name(), what);
  }
  void check_open(const char* op) const {
    if (closed_) fail<ValueError>("{} on pipe '{}': this connection is closed", op, name());
  }
  void check_readable(const char* op) const {
    check_open(op);
    if (!readable_)
      fail<ValueError>(
          "{} on pipe '{}': this end is send-only (Pipe(duplex=false) gives a "
          "receive-only first end and a send-only second end)",
          op, name());
  }

  /// Scratch buffer for encoding (kept to reuse its capacity).
  Bytes& scratch() noexcept { return scratch_; }

  //!Effects: claims end `end` of the pipe in `seg` for this process (open of a named pipe).
  //!Returns: the holder slot. Throws: ExistsError if the end was already taken.
  static std::uint32_t claim_end(Segment& seg, unsigned end) {
    auto* h = reinterpret_cast<pipe_layout::Header*>(seg.payload());
    auto& es = h->ends[end];
    const std::uint64_t me = ProcessRef::self().pack();
    // Hold a slot before the end counts as claimed, so it never looks claimed-but-unheld.
    const std::uint32_t slot = claim_slot_in(es, me);
    if (slot == pipe_layout::kNoSlot)
      fail<Error>("pipe '{}': {} processes already hold this end", seg.name(),
                  pipe_layout::kMaxHolders);
    std::uint32_t expect = 0;
    if (!es.claimed.compare_exchange_strong(expect, 1, std::memory_order_seq_cst)) {
      std::uint64_t w = me;
      es.holders[slot].compare_exchange_strong(w, 0);
      fail<ExistsError>(
          "pipe '{}' is already connected: another process opened it; a named "
          "pipe connects its creator with one opener",
          seg.name());
    }
    return slot;
  }

 private:
  // Gathers up to three byte ranges and copies them out in order.
  struct Cursor {
    std::array<std::span<const std::byte>, 3> parts{};
    std::size_t n = 0, i = 0, off = 0;
    Cursor& add(std::span<const std::byte> s) {
      if (!s.empty()) parts[n++] = s;
      return *this;
    }
    void copy_to(const ring::View& v, std::uint64_t pos, std::uint64_t len) {
      while (len > 0) {
        const auto& p = parts[i];
        const std::uint64_t k = std::min<std::uint64_t>(len, p.size() - off);
        v.put(pos, p.data() + off, k);
        pos += k;
        len -= k;
        off += k;
        if (off == p.size()) {
          ++i;
          off = 0;
        }
      }
    }
  };

  ring::View view(unsigned i) const noexcept {
    ring::View v;
    std::byte* at = seg_->payload() + pipe_layout::ring_offset(i, cap_);
    v.ctl = reinterpret_cast<ring::Control*>(at);
    v.data = at + sizeof(ring::Control);
    v.capacity = cap_;
    v.mask = cap_ - 1;
    v.max_frame = ring::max_frame(cap_);
    return v;
  }

  // Copies `len` bytes of the ring at `pos` to the end of the message being assembled.
  void append(std::uint64_t pos, std::uint64_t len) {
    if (asm_direct_) {
      in_.get(pos, asm_dst_ + asm_got_, len);
    } else {
      msg_.resize(asm_got_ + len);  // geometric growth: amortised O(1) per byte
      in_.get(pos, msg_.data() + asm_got_, len);
    }
    asm_got_ += len;
  }

  std::optional<Message> complete(std::uint32_t kind, std::uint64_t size) {
    have_msg_ = true;
    msg_kind_ = kind;
    msg_size_ = size;
    return Message{kind, {msg_.data(), size}, false};
  }

  void write_frame(std::uint32_t len, std::uint32_t flags, Cursor& cur, const Deadline& deadline) {
    ring::Control* c = out_.ctl;
    const std::uint64_t need = ring::frame_size(len);
    const std::uint64_t w = c->write_idx.load(std::memory_order_relaxed);
    if ((w & 3) != 0) corrupted(fmt::format("write index {} is not frame-aligned", w));
    if (w < wseen_) corrupted(fmt::format("the write index went back from {} to {}", wseen_, w));
    wait_space(w, need, deadline);
    cur.copy_to(out_, w + ring::kHeader, len);
    MPP_CRASH_POINT("pipe.send.payload_copied");
    const std::uint32_t hdr = ring::header(len, flags);
    std::memcpy(out_.data + (w & out_.mask), &hdr, ring::kHeader);
    MPP_CRASH_POINT("pipe.send.frame_filled");
    publish(w + need);
  }

  void publish(std::uint64_t to) {
    ring::Control* c = out_.ctl;
    c->write_idx.store(to, std::memory_order_release);  // pairs with the reader's acquire load
    wseen_ = to;
    MPP_CRASH_POINT("pipe.send.published");
    if (ring::wake_sleeper(c->data)) [[unlikely]] {
      // A sleeper that died leaves its mark: look at the reader's end now and then. A dead
      // reader is reported by the *next* send (this message may well have been received).
      check_reader();
    }
    if (--send_countdown_ == 0) [[unlikely]] {
      send_countdown_ = kSendCheckPeriod;
      check_reader();
    }
  }

  void consume_ring(std::uint64_t to) noexcept {
    ring::Control* c = in_.ctl;
    c->read_idx.store(to, std::memory_order_release);  // pairs with the writer's acquire load
    rseen_ = to;
    MPP_CRASH_POINT("pipe.recv.consumed");
    ring::wake_sleeper(c->space);
  }

  // The indices of a ring only grow (64 bits never wrap). Each end remembers the largest value it
  // saw of each (wseen_/rseen_: its own stores, wcache_/rcache_: its peer's) and reports a
  // smaller one as corruption: a peer that zeroed or rewrote a ring's control block (a
  // truncation that keeps it in the file's last page zeroes it without any SIGBUS) must not turn
  // into an empty ring that waits forever or into messages delivered twice.

  /// The read index of in_, checked against the last one this end stored.
  std::uint64_t read_index() const {
    const std::uint64_t r = in_.ctl->read_idx.load(std::memory_order_relaxed);
    if (r < rseen_) corrupted(fmt::format("the read index went back from {} to {}", rseen_, r));
    return r;
  }

  std::uint64_t free_space(std::uint64_t w) {
    const std::uint64_t r = out_.ctl->read_idx.load(std::memory_order_acquire);
    if (r < rcache_ || w - r > cap_)
      corrupted(fmt::format("indices out of range (write {}, read {}, last read seen {}, "
                            "capacity {})", w, r, rcache_, cap_));
    rcache_ = r;
    return cap_ - (w - rcache_);
  }

  void wait_space(std::uint64_t w, std::uint64_t need, const Deadline& deadline) {
    if (cap_ - (w - rcache_) >= need && w - rcache_ <= cap_) {
      if (out_.ctl->data.gone.load(std::memory_order_acquire) != 0) broken_pipe();
      return;
    }
    auto ready = [&] {
      return free_space(w) >= need || out_.ctl->data.gone.load(std::memory_order_acquire) != 0;
    };
    const bool ok = ring::wait(
        out_.ctl->space, ready, deadline, [&] { check_reader(); }, spin_);
    if (out_.ctl->data.gone.load(std::memory_order_acquire) != 0) broken_pipe();
    if (!ok)
      fail<TimeoutError>(
          "send on pipe '{}': the ring stayed full until the timeout (the reader "
          "is alive but not receiving)",
          name());
  }

  std::uint64_t refresh_avail(std::uint64_t r) {
    const std::uint64_t w = in_.ctl->write_idx.load(std::memory_order_acquire);
    if (w < wcache_ || w - r > cap_ || (r & 3) != 0)
      corrupted(fmt::format("indices out of range (write {}, read {}, last write seen {}, "
                            "capacity {})", w, r, wcache_, cap_));
    wcache_ = w;
    return wcache_ - r;
  }

  // Returns the bytes available at `r` (at least a header), 0 on timeout; throws EOFError when
  // the writer is gone and the ring is empty.
  std::uint64_t wait_data(std::uint64_t r, const Deadline& deadline) {
    std::uint64_t avail = wcache_ - r;
    if (avail >= ring::kHeader && avail <= cap_ && (r & 3) == 0) return avail;
    avail = refresh_avail(r);
    if (avail < ring::kHeader) {
      auto ready = [&] { return (avail = refresh_avail(r)) >= ring::kHeader || writer_gone(); };
      if (!ring::wait(
              in_.ctl->data, ready, deadline, [&] { check_writer(); }, spin_))
        return 0;
      avail = refresh_avail(r);  // everything sent before the writer left is visible now
      if (avail < ring::kHeader) {
        if (avail != 0) corrupted(fmt::format("{} stray bytes at the end of the ring", avail));
        assembling_ = false;  // never deliver a message whose writer died before finishing it
        fail<EOFError>(
            "recv on pipe '{}': the other end was closed or its process died, and "
            "no message is left",
            name());
      }
    }
    return avail;
  }

  bool writer_gone() const noexcept {
    return in_.ctl->space.gone.load(std::memory_order_acquire) != 0;
  }

  [[noreturn]] void broken_pipe() const {
    fail<BrokenPipeError>(
        "send on pipe '{}': the other end was closed or its process died; "
        "nobody will receive this message",
        name());
  }

  bool scan_due() noexcept {
    const auto now = std::chrono::steady_clock::now();
    if (now - last_scan_ < kScanInterval) return false;
    last_scan_ = now;
    return true;
  }
  // Looks at the peer's holders (at most every kScanInterval); marks the peer dead if none lives.
  void check_writer() {
    if (!writer_gone() && scan_due() && !has_live_holder(1 - end_)) mark_dead(1 - end_);
  }
  void check_reader() {
    if (scan_due() && out_.ctl->data.gone.load(std::memory_order_acquire) == 0 &&
        !has_live_holder(1 - end_))
      mark_dead(1 - end_);
  }

  bool has_live_holder(unsigned e) const noexcept {
    const auto& es = h_->ends[e];
    if (es.dead.load(std::memory_order_acquire) != 0) return false;
    if (es.claimed.load(std::memory_order_seq_cst) == 0) return true;  // not connected yet
    const std::uint32_t used = es.used_entries();
    for (std::uint32_t i = 0; i < used; ++i)
      if (pipe_layout::holder_alive(es.holders[i].load(std::memory_order_seq_cst))) return true;
    return false;
  }

  bool ring_exists(unsigned i) const noexcept { return i == 0 || duplex_; }

  // End `e` is gone: raise the flags its peer looks at and wake the peer wherever it sleeps.
  // Every step is idempotent and none is skipped because `dead` was already set: a process
  // killed half-way through (after `dead`, before the ring flags) leaves the rest to the next
  // one that finds the end gone, or the peer would wait for flags that never come.
  void mark_dead(unsigned e) noexcept {
    auto& es = h_->ends[e];
    es.dead.store(1, std::memory_order_seq_cst);
    MPP_CRASH_POINT("pipe.mark_dead.flagged");
    if (ring_exists(e)) {  // e read ring e: its writer must stop
      const ring::View v = view(e);
      if (v.ctl->data.gone.exchange(1, std::memory_order_seq_cst) == 0)
        ring::ring_bell(v.ctl->space);
    }
    MPP_CRASH_POINT("pipe.mark_dead.half_told");
    if (ring_exists(1 - e)) {  // e wrote ring 1 - e: its reader sees EOF once drained
      const ring::View v = view(1 - e);
      if (v.ctl->space.gone.exchange(1, std::memory_order_seq_cst) == 0)
        ring::ring_bell(v.ctl->data);
    }
  }

  // A free entry below the high-water mark, else the next one above it, else (all handed out)
  // the entry of a holder that died.
  static std::uint32_t claim_slot_in(pipe_layout::EndShared& es, std::uint64_t word) noexcept {
    for (;;) {
      const std::uint32_t used = es.used_entries();
      for (std::uint32_t i = 0; i < used; ++i) {
        std::uint64_t w = es.holders[i].load(std::memory_order_acquire);
        if (w == 0 && es.holders[i].compare_exchange_strong(w, word, std::memory_order_seq_cst))
          return i;
      }
      if (used < pipe_layout::kMaxHolders) {
        std::uint32_t expect = used;
        if (es.used.compare_exchange_strong(expect, used + 1, std::memory_order_seq_cst)) {
          std::uint64_t w = 0;
          if (es.holders[used].compare_exchange_strong(w, word, std::memory_order_seq_cst))
            return used;
        }
        continue;  // another process took it: look again
      }
      // Reuse entries of dead holders (the CAS fails if it changed hands).
      for (std::uint32_t i = 0; i < used; ++i) {
        std::uint64_t w = es.holders[i].load(std::memory_order_acquire);
        if (w != 0 && !pipe_layout::holder_alive(w) &&
            es.holders[i].compare_exchange_strong(w, word, std::memory_order_seq_cst))
          return i;
      }
      return pipe_layout::kNoSlot;
    }
  }
  std::uint32_t claim_slot(unsigned e, std::uint64_t word) noexcept {
    return claim_slot_in(h_->ends[e], word);
  }

  static constexpr std::chrono::milliseconds kScanInterval{20};
  static constexpr std::uint64_t kReserveLimit = std::uint64_t{16} << 20;
  static constexpr std::uint32_t kSendCheckPeriod = 4096;

  std::shared_ptr<Segment> seg_;
  pipe_layout::Header* h_ = nullptr;
  unsigned end_;
  std::uint64_t cap_ = 0;
  bool duplex_ = true, readable_ = false, writable_ = false, closed_ = false;
  bool send_ok_ = false, recv_ok_ = false;  // writable_/readable_ and not closed_
  ring::View in_, out_;                     // the ring this end reads, the ring it writes
  std::uint64_t wcache_ = 0;                // last write index seen on in_
  std::uint64_t rcache_ = 0;                // last read index seen on out_
  std::uint64_t wseen_ = 0;                 // last write index this end stored on out_
  std::uint64_t rseen_ = 0;                 // last read index this end stored on in_
  std::uint32_t send_countdown_ = kSendCheckPeriod;
  int spin_ = kSpinIterations;
  std::chrono::steady_clock::time_point last_scan_{};
  // Holding the end.
  std::uint32_t slot_;
  std::uint32_t fork_slot_ = pipe_layout::kNoSlot;
  std::uint64_t fork_word_ = 0;
  std::vector<std::uint32_t> pending_;
  // Receiving.
  Bytes msg_;
  bool have_msg_ = false;
  std::uint32_t msg_kind_ = 0;
  std::uint64_t msg_size_ = 0;
  std::uint64_t view_consume_ = 0;
  bool assembling_ = false, asm_direct_ = false;
  std::uint32_t asm_kind_ = 0;
  std::uint64_t asm_total_ = 0, asm_got_ = 0;
  std::byte* asm_dst_ = nullptr;
  Bytes scratch_;
};

/// The element type recorded for an untyped pipe (Connection<>).
inline constexpr TypeInfo kUntypedPipe{fnv1a("mpp::Connection<> (any codec type)"),
                                       "any (Connection<>)"};

/// Head of an untyped message: {u64 fingerprint, u32 name length, name}.
template <class U>
std::span<const std::byte> tag_of(std::array<std::byte, 8 + 4 + 120>& buf) noexcept {
  constexpr TypeInfo ti = type_info<U>();
  const auto n = static_cast<std::uint32_t>(std::min<std::size_t>(ti.name.size(), 120));
  std::memcpy(buf.data(), &ti.fingerprint, 8);
  std::memcpy(buf.data() + 8, &n, 4);
  std::memcpy(buf.data() + 12, ti.name.data(), n);
  return {buf.data(), 12 + std::size_t{n}};
}

}  // namespace detail

/// One end of a Pipe (Python's multiprocessing.connection.Connection). `Connection<T>` carries
/// values of T; `Connection<>` carries values of any codec type, checked at recv<U>(). Copies
/// share the end (closing one closes all copies in this process); destroying the last copy
/// closes it. Use each end from one process at a time, as in Python.
template <class T = void>
class Connection {
  static constexpr bool kUntyped = std::is_void_v<T>;
  struct NoElement {};
  using Elem = std::conditional_t<kUntyped, NoElement, T>;
  // Values whose codec is the built-in raw one go straight between the object and the ring.
  static constexpr bool kRaw = !kUntyped && detail::codec_kind<Elem>() == "raw";

 public:
  /// A connection that is already closed (assign a real one to it).
  Connection() = default;
  /// Wraps one process's use of a pipe end (used by Pipe).
  explicit Connection(std::shared_ptr<detail::PipeEnd> end) : e_(std::move(end)) {}

  //!Effects: sends `v` (Python's send(obj)); blocks only while the ring is full and the reader
  //! lives. Messages of any size are accepted; large ones stream through the ring.
  //!Throws: BrokenPipeError (the other end is closed or its process died), TimeoutError (a
  //! message longer than a frame that times out half-sent is skipped by the receiver),
  //! ValueError (closed or receive-only end), CorruptedError.
  void send(const Elem& v) requires(!kUntyped) {
    if constexpr (kRaw) {
      end().template send_raw<sizeof(Elem)>(std::addressof(v));
    } else {
      send_encoded(v, detail::Deadline::never());
    }
  }
  /// send(v) waiting for room at most `timeout` (TimeoutError).
  void send(const Elem& v, Timeout timeout) requires(!kUntyped) {
    const auto deadline = detail::Deadline::from(timeout);
    if constexpr (kRaw) {
      end().template send_raw<sizeof(Elem)>(std::addressof(v), &deadline);
    } else {
      send_encoded(v, deadline);
    }
  }

  //!Effects: sends `v` of any codec type U, tagged with U's fingerprint and name so that
  //! recv<U>() can check it. Throws: as send(const T&).
  template <class U>
  requires(kUntyped) void send(const U& v, Timeout timeout = std::nullopt) {
    static_assert(Encodable<U>,
                  "mpp: this type cannot cross processes: make it trivially copyable, give it a "
                  "cereal serialize() member, or specialise mpp::codec<T>");
    auto& e = end();
    std::array<std::byte, 8 + 4 + 120> tag;
    const auto head = detail::tag_of<U>(tag);
    Bytes& b = e.scratch();
    b.clear();
    codec<U>::encode(v, b);
    e.write_message(detail::ring::kKindTagged, head, b, detail::Deadline::from(timeout));
  }

  //!Returns: the next value (Python's recv()), waiting at most `timeout` (default: forever).
  //!Throws: EOFError (nothing left and the other end is closed or its process died),
  //! TimeoutError, TypeMismatchError (the next message was sent with send_bytes; it is kept),
  //! ValueError (closed or send-only end), CorruptedError.
  Elem recv(Timeout timeout = std::nullopt) requires(!kUntyped) {
    if constexpr (kRaw && std::is_default_constructible_v<Elem> && !std::is_same_v<Elem, bool>) {
      Elem v;  // the raw codec is a byte copy: copy the frame into the result directly
      if (e_ && e_->template try_recv_raw<sizeof(Elem)>(std::addressof(v))) return v;
    } else if constexpr (kRaw && sizeof(Elem) <= 4096) {
      alignas(Elem) std::byte buf[sizeof(Elem)];
      if (e_ && e_->template try_recv_raw<sizeof(Elem)>(buf))
        return codec<Elem>::decode({buf, sizeof(Elem)});
    }
    return recv_slow(timeout);
  }

  //!Returns: the next value, which must be a U (Connection<> only); waits at most `timeout`.
  //!Throws: TypeMismatchError naming both types when the next message is not a U (the message
  //! is kept: receive it as its type), EOFError, TimeoutError, ValueError, CorruptedError.
  template <class U>
  requires(kUntyped) U recv(Timeout timeout = std::nullopt) {
    static_assert(Encodable<U>, "mpp: recv<U>() needs a type with an mpp::codec");
    auto& e = end();
    auto m = e.peek(detail::Deadline::from(timeout));
    if (!m) timed_out(timeout);
    if (m->kind != detail::ring::kKindTagged)
      detail::fail<TypeMismatchError>(
          "recv<{}> on pipe '{}': the next message was sent with send_bytes; receive it with "
          "recv_bytes (the message is kept)",
          type_info<U>().name, e.name());
    const auto bytes = m->bytes;
    std::uint64_t fp = 0;
    std::uint32_t n = 0;
    if (bytes.size() < 12) e.corrupted("an untyped message without its type tag");
    std::memcpy(&fp, bytes.data(), 8);
    std::memcpy(&n, bytes.data() + 8, 4);
    if (n > 120 || bytes.size() < 12 + std::size_t{n}) e.corrupted("an invalid type tag");
    if (fp != type_info<U>().fingerprint) {
      std::string sent(reinterpret_cast<const char*>(bytes.data() + 12), n);
      for (char& c : sent)
        if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7f) c = '?';
      detail::fail<TypeMismatchError>(
          "recv<{}> on pipe '{}': the next message is a '{}'; receive it as that type (the "
          "message is kept)",
          type_info<U>().name, e.name(), sent);
    }
    return decode_and_consume<U>(e, bytes.subspan(12 + std::size_t{n}));
  }

 private:
  void send_encoded(const Elem& v, const detail::Deadline& deadline) requires(!kUntyped) {
    auto& e = end();
    Bytes& b = e.scratch();
    b.clear();
    codec<Elem>::encode(v, b);
    e.write_message(detail::ring::kKindValue, {}, b, deadline);
  }

  // Everything but the fast path of recv(): kept out of line so that recv() inlines.
  [[gnu::noinline]] Elem recv_slow(Timeout timeout) requires(!kUntyped) {
    auto& e = end();
    auto m = e.peek(detail::Deadline::from(timeout));
    if (!m) timed_out(timeout);
    if (m->kind != detail::ring::kKindValue)
      detail::fail<TypeMismatchError>(
          "recv on pipe '{}': the next message was sent with send_bytes, not as a '{}'; receive "
          "it with recv_bytes (the message is kept)",
          e.name(), type_info<Elem>().name);
    return decode_and_consume<Elem>(e, m->bytes);
  }

 public:
  //!Returns: whether there is something to receive (or the other end is gone, so recv would not
  //! block), waiting at most `timeout` (Python's poll(timeout); default 0: do not wait;
  //! std::nullopt: wait forever). Throws: ValueError (closed or send-only end).
  bool poll(Timeout timeout = std::chrono::duration<double>(0)) {
    return end().poll(detail::Deadline::from(timeout));
  }

  //!Effects: sends `size` bytes of `buf` from `offset` (all the rest by default) as one message
  //! (Python's send_bytes(buffer, offset, size)); waits for room at most `timeout`.
  //!Throws: ValueError (offset/size outside the buffer, closed or receive-only end),
  //! BrokenPipeError, TimeoutError (as send), CorruptedError.
  void send_bytes(std::span<const std::byte> buf, std::size_t offset = 0,
                  std::optional<std::size_t> size = std::nullopt, Timeout timeout = std::nullopt) {
    auto& e = end();
    if (offset > buf.size())
      detail::fail<ValueError>("send_bytes on pipe '{}': offset {} is past the {}-byte buffer",
                               e.name(), offset, buf.size());
    const std::size_t n = size.value_or(buf.size() - offset);
    if (n > buf.size() - offset)
      detail::fail<ValueError>(
          "send_bytes on pipe '{}': offset {} + size {} is past the {}-byte "
          "buffer",
          e.name(), offset, n, buf.size());
    e.write_message(detail::ring::kKindBytes, {}, buf.subspan(offset, n),
                    detail::Deadline::from(timeout));
  }
  /// send_bytes of the characters of `s`.
  void send_bytes(std::string_view s) { send_bytes(std::as_bytes(std::span(s.data(), s.size()))); }

  //!Returns: the next message as bytes (Python's recv_bytes(maxlength)); for a value message,
  //! its encoding. Throws: OSError if it is longer than `maxlength` (the message is kept),
  //! EOFError, TimeoutError, ValueError, CorruptedError.
  Bytes recv_bytes(std::optional<std::size_t> maxlength = std::nullopt,
                   Timeout timeout = std::nullopt) {
    auto& e = end();
    auto m = e.peek(detail::Deadline::from(timeout));
    if (!m) timed_out(timeout);
    const auto body = payload_of(e, *m);
    if (maxlength && body.size() > *maxlength)
      throw OSError(fmt::format("recv_bytes on pipe '{}': the next message has {} bytes, more "
                                "than maxlength {} (the message is kept)",
                                e.name(), body.size(), *maxlength),
                    0);
    if (e.message_in_buffer() && m->kind != detail::ring::kKindTagged) return e.take_buffer();
    Bytes out(body.begin(), body.end());
    e.consume();
    return out;
  }

  //!Effects: receives the next message into `buf` from `offset` (Python's
  //! recv_bytes_into(buffer, offset)); large messages are assembled there directly.
  //!Returns: the message's size in bytes. Throws: BufferTooShort (the message is kept),
  //! ValueError (offset past the buffer, closed or send-only end), EOFError, TimeoutError,
  //! CorruptedError.
  std::size_t recv_bytes_into(std::span<std::byte> buf, std::size_t offset = 0,
                              Timeout timeout = std::nullopt) {
    auto& e = end();
    if (offset > buf.size())
      detail::fail<ValueError>("recv_bytes_into on pipe '{}': offset {} is past the {}-byte buffer",
                               e.name(), offset, buf.size());
    const auto dst = buf.subspan(offset);
    auto m = e.peek(detail::Deadline::from(timeout), dst);
    if (!m) timed_out(timeout);
    if (m->direct) return m->bytes.size();
    const auto body = payload_of(e, *m);
    if (body.size() > dst.size())
      throw BufferTooShort(fmt::format("recv_bytes_into on pipe '{}': the next message has {} "
                                       "bytes, the buffer has room for {} (the message is kept)",
                                       e.name(), body.size(), dst.size()),
                           body.size());
    if (!body.empty()) std::memcpy(dst.data(), body.data(), body.size());
    e.consume();
    return body.size();
  }

  //!Effects: this process stops using the end (Python's close()); once no process holds it,
  //! the other end's recv raises EOFError (after draining) and its send BrokenPipeError.
  void close() noexcept {
    if (e_) e_->close();
  }
  /// True after close() (or for a default-constructed Connection).
  bool closed() const noexcept { return !e_ || e_->closed(); }
  /// True if this end can receive.
  bool readable() const noexcept { return e_ && e_->readable(); }
  /// True if this end can send.
  bool writable() const noexcept { return e_ && e_->writable(); }
  /// The name of the pipe's segment.
  std::string name() const { return e_ ? e_->name() : std::string(); }

 private:
  detail::PipeEnd& end() const {
    if (!e_) detail::fail<ValueError>("use of a default-constructed (closed) Connection");
    return *e_;
  }

  [[noreturn]] void timed_out(const Timeout& t) const {
    detail::fail<TimeoutError>("recv on pipe '{}': nothing arrived within {} s", e_->name(),
                               t ? t->count() : 0.0);
  }

  // The message's bytes without an untyped message's tag.
  static std::span<const std::byte> payload_of(detail::PipeEnd& e,
                                               const detail::PipeEnd::Message& m) {
    if (m.kind != detail::ring::kKindTagged) return m.bytes;
    std::uint32_t n = 0;
    if (m.bytes.size() < 12) e.corrupted("an untyped message without its type tag");
    std::memcpy(&n, m.bytes.data() + 8, 4);
    if (n > 120 || m.bytes.size() < 12 + std::size_t{n}) e.corrupted("an invalid type tag");
    return m.bytes.subspan(12 + std::size_t{n});
  }

  template <class U>
  static U decode_and_consume(detail::PipeEnd& e, std::span<const std::byte> bytes) {
    try {
      U v = codec<U>::decode(bytes);
      e.consume();
      return v;
    } catch (...) {
      e.consume();  // a message that cannot be decoded is dropped, not retried forever
      throw;
    }
  }

  friend struct codec<Connection<T>>;
  std::shared_ptr<detail::PipeEnd> e_;
};

/// Python's Pipe(duplex): a pair of connected Connection<T>; `auto [a, b] = mpp::Pipe<T>();`.
/// With duplex=false, `first` can only receive and `second` can only send. `Pipe<>` carries any
/// codec type (Connection<>). Named pipes connect unrelated processes: create(name) returns the
/// creator's end (the first), open(name) the other end.
template <class T = void>
class Pipe : public std::pair<Connection<T>, Connection<T>> {
  static_assert(std::is_void_v<T> || Encodable<T>,
                "mpp::Pipe<T>: T cannot cross processes: make it trivially copyable, give it a "
                "cereal serialize() member, or specialise mpp::codec<T>");
  using Base = std::pair<Connection<T>, Connection<T>>;

 public:
  //!Effects: creates an anonymous pipe (Python's Pipe(duplex)); forked children inherit both
  //! ends. Throws: InvalidArgument (bad capacity), OSError.
  explicit Pipe(bool duplex = true, const PipeOptions& opts = {})
      : Base(make_anonymous(duplex, opts)) {}

  //!Effects: creates the named pipe `name` and returns its first end (receive-only when
  //! duplex=false); another process connects with open(name). The name is removed when the
  //! creator's last handle goes away. Throws: InvalidArgument, ExistsError, OSError.
  static Connection<T> create(std::string_view name, bool duplex = true,
                              const PipeOptions& opts = {}) {
    check(opts);
    auto seg = std::make_shared<detail::Segment>(
        detail::Segment::create(name, spec(duplex, opts), init(duplex, opts, false)));
    return Connection<T>(
        std::make_shared<detail::PipeEnd>(std::move(seg), 0, 0, opts.spin_iterations));
  }

  //!Effects: connects to the named pipe `name` created by another process and returns its
  //! second end (send-only when the pipe is one-way).
  //!Throws: NotFoundError, ExistsError (another process already connected), TypeMismatchError
  //! (another element type or not a pipe), CorruptedError, TimeoutError, OSError.
  static Connection<T> open(std::string_view name, const NamedOptions& opts = {}) {
    auto seg =
        std::make_shared<detail::Segment>(detail::Segment::open(name, Kind::pipe, type(), opts));
    validate(*seg);
    const std::uint32_t slot = detail::PipeEnd::claim_end(*seg, 1);
    return Connection<T>(std::make_shared<detail::PipeEnd>(std::move(seg), 1, slot));
  }

 private:
  static constexpr TypeInfo type() noexcept {
    if constexpr (std::is_void_v<T>)
      return detail::kUntypedPipe;
    else
      return type_info<T>();
  }
  static void check(const PipeOptions& opts) {
    const std::uint64_t c = opts.capacity;
    if (c < detail::ring::kMinCapacity || c > detail::ring::kMaxCapacity || (c & (c - 1)) != 0)
      detail::fail<InvalidArgument>("Pipe capacity {} must be a power of two from {} to {} bytes",
                                    c, detail::ring::kMinCapacity, detail::ring::kMaxCapacity);
  }
  static detail::SegmentSpec spec(bool duplex, const PipeOptions& opts) {
    return detail::SegmentSpec{Kind::pipe, type(),
                               detail::pipe_layout::payload_size(opts.capacity, duplex),
                               opts.capacity};
  }
  // Both ends (anonymous) or the first (named) are held by the creator from the start.
  static detail::PayloadInit init(bool duplex, const PipeOptions& opts, bool both) {
    return [=](std::byte* p, std::uint64_t) {
      auto* h = reinterpret_cast<detail::pipe_layout::Header*>(p);
      h->capacity = opts.capacity;
      h->duplex = duplex ? 1 : 0;
      h->layout = detail::pipe_layout::kLayoutVersion;
      const std::uint64_t me = detail::ProcessRef::self().pack();
      for (unsigned e = 0; e < (both ? 2u : 1u); ++e) {
        h->ends[e].holders[0].store(me, std::memory_order_relaxed);
        h->ends[e].used.store(1, std::memory_order_relaxed);
        h->ends[e].claimed.store(1, std::memory_order_relaxed);
      }
    };
  }
  static void validate(detail::Segment& seg) {
    if (seg.payload_size() < sizeof(detail::pipe_layout::Header))
      detail::fail<CorruptedError>("pipe '{}': payload of {} bytes is too small", seg.name(),
                                   seg.payload_size());
    const auto* h = reinterpret_cast<const detail::pipe_layout::Header*>(seg.payload());
    const std::uint64_t c = h->capacity;
    const std::uint32_t duplex = h->duplex, layout = h->layout;
    if (layout != detail::pipe_layout::kLayoutVersion || duplex > 1 ||
        c < detail::ring::kMinCapacity || c > detail::ring::kMaxCapacity || (c & (c - 1)) != 0 ||
        seg.payload_size() != detail::pipe_layout::payload_size(c, duplex != 0))
      detail::fail<CorruptedError>(
          "pipe '{}': invalid header (layout {}, duplex {}, capacity {}, "
          "payload {} bytes)",
          seg.name(), layout, duplex, c, seg.payload_size());
  }
  friend struct codec<Connection<T>>;
  // The receiving side of codec<Connection<T>>: opens the pipe by name and takes over the slot.
  static Connection<T> adopt(std::string_view name, unsigned end, std::uint32_t slot,
                             std::uint64_t word) {
    auto seg =
        std::make_shared<detail::Segment>(detail::Segment::open(name, Kind::pipe, type()));
    validate(*seg);
    return Connection<T>(detail::PipeEnd::adopt(std::move(seg), end, slot, word));
  }
  static Base make_anonymous(bool duplex, const PipeOptions& opts) {
    check(opts);
    auto seg = std::make_shared<detail::Segment>(
        detail::Segment::create_anonymous(spec(duplex, opts), init(duplex, opts, true)));
    // The name stays while this process holds the pipe, so that an end can be passed to a
    // spawned process (codec<Connection<T>>); forked children inherit the mapping.
    return Base(Connection<T>(std::make_shared<detail::PipeEnd>(seg, 0, 0, opts.spin_iterations)),
                Connection<T>(std::make_shared<detail::PipeEnd>(seg, 1, 0, opts.spin_iterations)));
  }
};

/// A Connection crosses to another process (a spawned Process's argument, a queue item) as the
/// pipe's name, its end and a holder slot reserved for the receiver, as Python pickles a
/// Connection by duplicating its descriptor: the receiver then holds the end too. The sender may
/// close its copy once the receiver has started (close() waits up to 1 s for the take-over).
template <class T>
struct codec<Connection<T>> {
  /// Name of the encoding (part of the type fingerprint).
  static constexpr std::string_view kind = "handle";
  /// What crosses: pipe name, end, reserved slot, the slot's reservation word.
  using Wire = std::tuple<std::string, std::uint32_t, std::uint32_t, std::uint64_t>;
  //!Effects: appends the pipe's name, the end and a slot reserved for the receiver.
  //!Throws: ValueError (closed connection), Error (no free holder slot).
  static void encode(const Connection<T>& c, Bytes& out) {
    auto& e = c.end();
    const auto [slot, word] = e.reserve_for_transfer();
    codec<Wire>::encode(Wire{e.name(), e.end_index(), slot, word}, out);
  }
  //!Returns: this process's copy of the end. Throws: NotFoundError, TypeMismatchError,
  //! CorruptedError, ValueError (the sender closed it before it arrived).
  static Connection<T> decode(std::span<const std::byte> in) {
    const auto [name, end, slot, word] = codec<Wire>::decode(in);
    return Pipe<T>::adopt(name, end, slot, word);
  }
};

}  // namespace mpp
