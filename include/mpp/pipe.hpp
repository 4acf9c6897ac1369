// mpp — Pipe and Connection (Python's multiprocessing.Pipe / connection.Connection).
//
// A Pipe is a shared-memory segment with one byte ring per direction: sending into a non-full
// ring and receiving from a non-empty one make no system call. Messages of any size stream
// through the fixed ring; the reader delivers only complete messages.
//
// Liveness of an end: an end is *dead* once it has been held and no live process holds it. A
// process holds an end from creation (or open) until it closes it or dies; a forked child holds
// every end its parent held open at fork(); close() removes only the calling process. recv() on
// an end whose peer is dead raises EOFError once the messages already sent are drained; send() to
// a dead peer raises BrokenPipeError. Both are noticed within about 0.2 s even while blocked.
// How it works: docs/design/pipe.md (the engine is detail/pipe_end.hpp).
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
#include "detail/name_codec.hpp"
#include "detail/pipe_end.hpp"
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

namespace detail {
template <class T>
struct PipeEndName;  // how a Connection crosses processes (codec<Connection<T>>)
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

  //!Effects: sends `v` (Python's send(obj)); blocks only while the ring is full and the reader
  //! lives. Messages of any size are accepted; large ones stream through the ring.
  //!Throws: BrokenPipeError (the other end is closed or its process died), TimeoutError (a
  //! message longer than a frame that times out half-sent is skipped by the receiver),
  //! OSError (closed or receive-only end), CorruptedError.
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
  //! OSError (closed or send-only end), CorruptedError.
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
  //! is kept: receive it as its type), EOFError, TimeoutError, OSError, CorruptedError.
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
  //! std::nullopt: wait forever). Throws: OSError (closed or send-only end).
  bool poll(Timeout timeout = std::chrono::duration<double>(0)) {
    return end().poll(detail::Deadline::from(timeout));
  }

  //!Effects: sends `size` bytes of `buf` from `offset` (all the rest by default) as one message
  //! (Python's send_bytes(buffer, offset, size)); waits for room at most `timeout`.
  //!Throws: ValueError (offset/size outside the buffer), OSError (closed or receive-only end),
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
  //! EOFError, TimeoutError, OSError (closed or send-only end), CorruptedError.
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
  //! ValueError (offset past the buffer), OSError (closed or send-only end), EOFError,
  //! TimeoutError, CorruptedError.
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
    if (!e_) detail::fail<OSError>("use of a default-constructed (closed) Connection");
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

  // Wraps one process's use of a pipe end (made by Pipe).
  explicit Connection(std::shared_ptr<detail::PipeEnd> end) : e_(std::move(end)) {}

  template <class>
  friend class Pipe;
  friend struct detail::PipeEndName<T>;
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
  friend struct detail::PipeEndName<T>;
  // The receiving side of codec<Connection<T>>: opens the pipe by name and takes over the slot.
  static Connection<T> adopt(std::string_view name, unsigned end, std::uint32_t slot,
                             std::uint64_t word) {
    auto seg = std::make_shared<detail::Segment>(detail::Segment::open(name, Kind::pipe, type()));
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
namespace detail {
/// How a Connection is named for codec<Connection<T>>: pipe name, end, reserved slot, the slot's
/// reservation word; reopening adopts the reserved slot.
template <class T>
struct PipeEndName {
  using name_type = std::tuple<std::string, std::uint32_t, std::uint32_t, std::uint64_t>;
  //!Effects: reserves a holder slot for the receiver.
  //!Throws: OSError (closed connection), Error (no free holder slot).
  static name_type name_of(const Connection<T>& c) {
    auto& e = c.end();
    const auto [slot, word] = e.reserve_for_transfer();
    return name_type{e.name(), e.end_index(), slot, word};
  }
  //!Returns: this process's copy of the end. Throws: NotFoundError, TypeMismatchError,
  //! CorruptedError, ValueError (the sender closed it before it arrived).
  static Connection<T> open(const name_type& n) {
    const auto& [name, end, slot, word] = n;
    return Pipe<T>::adopt(name, end, slot, word);
  }
};
}  // namespace detail

template <class T>
struct codec<Connection<T>> : detail::NameCodec<Connection<T>, detail::PipeEndName<T>> {};

}  // namespace mpp
