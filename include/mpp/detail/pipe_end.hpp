// mpp — detail::PipeEnd: one process's use of one end of a Pipe (the engine behind
// Connection<T>), and the shared layout of a pipe's segment (detail::pipe_layout).
// How the rings, frames and holder tables work: docs/design/pipe.md.
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
#include <type_traits>
#include <utility>
#include <vector>

#include "../codec.hpp"
#include "../errors.hpp"
#include "../segment.hpp"
#include "fork_hooks.hpp"
#include "liveness.hpp"
#include "ring.hpp"
#include "wait.hpp"

namespace mpp {

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
  //! chain of frames; blocks while the ring is full, until `deadline`. Throws: OSError
  //! (closed / read-only), BrokenPipeError (the other end is closed or its process died),
  //! TimeoutError (no room in time: nothing was sent, or — for a message longer than a frame —
  //! its first part was and the receiver will skip it), CorruptedError.
  void write_message(std::uint32_t kind, std::span<const std::byte> head,
                     std::span<const std::byte> body,
                     const Deadline& deadline = Deadline::never()) {
    check_open("send");
    os::check_mapping(h_);  // CorruptedError if a peer truncated the segment under us
    if (!writable_)
      fail<OSError>(
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
    if (r < rseen_) [[unlikely]]
      return false;  // went backwards: peek reports the corruption
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
  //! discarded), OSError (closed / write-only), CorruptedError.
  std::optional<Message> peek(const Deadline& deadline, std::span<std::byte> direct = {}) {
    check_readable("recv");
    if (have_msg_) return Message{msg_kind_, {msg_.data(), msg_size_}, false};
    os::check_mapping(h_);  // CorruptedError if a peer truncated the segment under us
    DirectSpill spill{*this};
    for (;;) {
      const std::uint64_t r = read_index();
      const std::uint64_t avail = wait_data(r, deadline);
      if (avail == 0) return std::nullopt;
      const Frame f = frame_at(r, avail);
      std::optional<Message> m =
          (f.flags & ring::kCont) == 0 ? first_frame(f, r, direct) : next_frame(f, r);
      if (m) return m;
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
    // Slots reserved for children at fork(): wait until they took them over, and free the ones
    // whose child never started (fork failed, or killed before its first step). One deadline for
    // all of them: a child of a loaded machine (100 forked at once under ASan) may need seconds
    // for its first step, and a slot freed too early would end a live holder's hold.
    const std::uint64_t mine = ProcessRef::self().pack();
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    for (std::uint32_t s : pending_) {
      while (es.holders[s].load(std::memory_order_acquire) == (mine | pipe_layout::kPendingBit) &&
             std::chrono::steady_clock::now() < deadline)
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
  //!Returns: the slot and the word it holds. Throws: OSError (closed), Error (no free slot).
  std::pair<std::uint32_t, std::uint64_t> reserve_for_transfer() {
    check_open("passing a connection");
    const std::uint64_t word = ProcessRef::self().pack() | pipe_layout::kPendingBit;
    const std::uint32_t s = claim_slot(end_, word);
    if (s == pipe_layout::kNoSlot)
      fail<Error>("pipe '{}': {} processes already hold this end", name(),
                  pipe_layout::kMaxHolders);
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
      fail<CorruptedError>("pipe '{}': an encoded connection names end {} and slot {}", seg->name(),
                           end, slot);
    auto* h = reinterpret_cast<pipe_layout::Header*>(seg->payload());
    std::uint64_t expect = word;
    if (!h->ends[end].holders[slot].compare_exchange_strong(expect, ProcessRef::self().pack(),
                                                            std::memory_order_seq_cst))
      fail<ValueError>(
          "pipe '{}': the connection was closed by the process that sent it before "
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
    if (closed_) fail<OSError>("{} on pipe '{}': this connection is closed", op, name());
  }
  void check_readable(const char* op) const {
    check_open(op);
    if (!readable_)
      fail<OSError>(
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

  // ---- the steps of peek() ----------------------------------------------------------------

  // A frame header, checked.
  struct Frame {
    std::uint32_t len;    // payload bytes
    std::uint32_t flags;  // ring::kMore, kLong, kCont and the kind
    std::uint32_t kind;
    std::uint64_t size;  // header + payload, padded
  };

  // A partial message assembled in the caller's buffer moves to ours when peek() leaves (by a
  // timeout or an exception), since the caller's buffer is gone by the next peek().
  struct DirectSpill {
    PipeEnd& e;
    ~DirectSpill() {
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
  };

  // Reads and validates the header of the frame at `r`, of which `avail` bytes are written.
  Frame frame_at(std::uint64_t r, std::uint64_t avail) const {
    std::uint32_t hdr;
    std::memcpy(&hdr, in_.data + (r & in_.mask), ring::kHeader);
    Frame f;
    f.len = hdr & 0xffffff;
    f.flags = hdr >> 24;
    f.kind = f.flags & ring::kKindMask;
    f.size = ring::frame_size(f.len);
    if ((f.flags & ~ring::kKnownFlags) != 0 || f.kind < ring::kKindValue ||
        f.kind > ring::kKindTagged || f.len > in_.max_frame || f.size > avail)
      corrupted(fmt::format("invalid frame header (length {}, flags {:#x}, {} bytes available)",
                            f.len, f.flags, avail));
    return f;
  }

  // The first frame of a message at `r`. Returns: the message if it is the whole of it; nullopt
  // once a longer message has started assembling (into `direct` when it fits there).
  std::optional<Message> first_frame(const Frame& f, std::uint64_t r, std::span<std::byte> direct) {
    const std::uint64_t payload = r + ring::kHeader;
    assembling_ = false;  // a message left unfinished by a writer that died: never delivered
    if ((f.flags & (ring::kMore | ring::kLong)) == 0) {
      const std::uint64_t off = payload & in_.mask;
      if (off + f.len <= in_.capacity) {
        view_consume_ = r + f.size;
        return Message{f.kind, {in_.data + off, f.len}, false};
      }
      msg_.resize(f.len);
      in_.get(payload, msg_.data(), f.len);
      consume_ring(r + f.size);
      return complete(f.kind, f.len);
    }
    if ((f.flags & ring::kLong) == 0 || (f.flags & ring::kMore) == 0 || f.len < 8)
      corrupted(fmt::format("invalid first frame (length {}, flags {:#x})", f.len, f.flags));
    std::uint64_t total;
    in_.get(payload, &total, 8);
    if (total + 8 <= f.len || total > ring::kMaxMessage)
      corrupted(fmt::format("invalid message length {}", total));
    start_assembly(f.kind, total, direct);
    append(payload + 8, f.len - 8);
    consume_ring(r + f.size);
    MPP_CRASH_POINT("pipe.recv.mid_message");
    return std::nullopt;
  }

  void start_assembly(std::uint32_t kind, std::uint64_t total, std::span<std::byte> direct) {
    asm_kind_ = kind;
    asm_total_ = total;
    asm_got_ = 0;
    if (kind != ring::kKindTagged && total <= direct.size()) {
      asm_dst_ = direct.data();
      asm_direct_ = true;
    } else {
      // The declared total comes from the writer: reserve at most kReserveLimit up front and
      // grow with the data that actually arrives, so a hostile total cannot make this process
      // allocate memory that no frame fills.
      msg_.clear();
      msg_.reserve(std::min<std::uint64_t>(total, kReserveLimit));
      asm_dst_ = nullptr;
      asm_direct_ = false;
    }
    assembling_ = true;
  }

  // A continuation frame at `r`. Returns: the message once its last frame is in; nullopt while
  // more are to come, or when the frame belongs to a message we do not have (it is skipped).
  std::optional<Message> next_frame(const Frame& f, std::uint64_t r) {
    if (!assembling_ || f.kind != asm_kind_) {
      consume_ring(r + f.size);
      return std::nullopt;
    }
    if (f.len > asm_total_ - asm_got_ ||
        ((f.flags & ring::kMore) == 0 && asm_got_ + f.len != asm_total_))
      corrupted(fmt::format("frames of a {}-byte message do not add up", asm_total_));
    append(r + ring::kHeader, f.len);
    consume_ring(r + f.size);
    if ((f.flags & ring::kMore) != 0) {
      MPP_CRASH_POINT("pipe.recv.mid_message");
      return std::nullopt;
    }
    assembling_ = false;
    if (asm_direct_) return Message{f.kind, {asm_dst_, asm_total_}, true};
    return complete(f.kind, asm_total_);
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
      corrupted(
          fmt::format("indices out of range (write {}, read {}, last read seen {}, "
                      "capacity {})",
                      w, r, rcache_, cap_));
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
      corrupted(
          fmt::format("indices out of range (write {}, read {}, last write seen {}, "
                      "capacity {})",
                      w, r, wcache_, cap_));
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

}  // namespace mpp
