// mpp — Queue<T>, SimpleQueue<T>, JoinableQueue<T>: Python's multiprocessing queues over a
// lock-free, crash-safe multi-producer multi-consumer ring in shared memory (the engine is
// detail/queue_ops.hpp; how it works: docs/design/queue.md).
//
// Differences from Python, all in the caller's favour:
// - put() returns once the item is in shared memory: there is no feeder thread, so a process may
//   exit (or be killed) with items it put still queued and nobody deadlocks; join_thread() and
//   cancel_join_thread() exist and do nothing.
// - SIGKILL of any producer or consumer at any instruction: every put() that returned is delivered
//   exactly once; an interrupted put() at most once; an interrupted get() gives its item back; the
//   queue stays usable and nobody waits forever.
// - qsize() is exact whenever no put/get is in flight (Python's is approximate).
// Items of any Encodable type; up to 20 bytes live in the slot, up to 2 KiB in the slot's cell
// (cells fitted to the type for one trivially copyable type), larger ones (up to
// QueueOptions::max_item_size) in the slot's own region of a sparse item area.
#pragma once

#include <fmt/format.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>

#include "codec.hpp"
#include "detail/name_codec.hpp"
#include "detail/queue_ops.hpp"
#include "errors.hpp"
#include "segment.hpp"
#include "timeout.hpp"

namespace mpp {

/// Options of a queue (all optional).
struct QueueOptions {
  /// Largest encoded item in bytes; 0 picks a size from the capacity (at most 16 MiB per slot,
  /// 8 GiB of sparse address space per queue; memory is used only where items are written).
  std::size_t max_item_size = 0;
  /// Slots reserved for an unbounded queue (maxsize <= 0): how many items it can hold at once.
  std::uint64_t unbounded_capacity = std::uint64_t{1} << 20;
  /// Keep the name when the creating handle goes away.
  bool persistent = false;
  /// How long open() waits for a queue that is still being created.
  std::chrono::milliseconds init_timeout{5000};

  /// The options of the queue's named segment.
  NamedOptions named() const noexcept { return NamedOptions{persistent, init_timeout}; }
};

/// Python's multiprocessing.Queue: a multi-producer multi-consumer FIFO (per producer) that
/// survives any of its users being killed. Copies share the queue; forked children inherit it.
template <class T>
class Queue : protected detail::mpmc::BasicQueue<T, Kind::queue> {
  using Base = detail::mpmc::BasicQueue<T, Kind::queue>;

 public:
  /// The element type.
  using value_type = T;

  //!Effects: an anonymous queue holding at most `maxsize` items (<= 0: unbounded, i.e.
  //! opts.unbounded_capacity slots of a sparse segment). Throws: InvalidArgument, OSError.
  explicit Queue(long maxsize = 0, const QueueOptions& opts = {})
      : Base(Base::make({}, maxsize, opts, 0)) {}
  //!Effects: creates the named queue. Throws: ExistsError if the name is taken, InvalidArgument.
  static Queue create(std::string_view name, long maxsize = 0, const QueueOptions& opts = {}) {
    return Queue(Base::make(name, maxsize, opts, 1));
  }
  //!Effects: opens the named queue. Throws: NotFoundError, TypeMismatchError (other element type
  //! or kind), CorruptedError, PermissionError.
  static Queue open(std::string_view name, const QueueOptions& opts = {}) {
    return Queue(Base::attach(name, opts));
  }
  //!Effects: opens the named queue, creating it (with `maxsize`) if it does not exist.
  static Queue open_or_create(std::string_view name, long maxsize = 0,
                              const QueueOptions& opts = {}) {
    return Queue(Base::make(name, maxsize, opts, 2));
  }

  //!Effects: puts `item`. With block=true waits while the queue is full (at most `timeout`
  //! seconds when given); with block=false does not wait (timeout is ignored).
  //!Throws: queue::Full if the queue stayed full; ValueError if closed or the item is too large.
  void put(const T& item, bool block = true, Timeout timeout = std::nullopt) {
    Base::put(item, block, timeout);
  }
  //!Returns: the oldest item. With block=true waits for one (at most `timeout` seconds when
  //! given). Throws: queue::Empty if none came; ValueError if closed; CorruptedError if the
  //! bytes in shared memory do not decode (the bad item is dropped).
  T get(bool block = true, Timeout timeout = std::nullopt) { return Base::get(block, timeout); }
  /// put(item, false): throws queue::Full at once if full.
  void put_nowait(const T& item) { Base::put(item, false, std::nullopt); }
  /// get(false): throws queue::Empty at once if empty.
  T get_nowait() { return Base::get(false, std::nullopt); }
  //!Effects: puts `item` if there is room now. Returns: false when full (never throws Full).
  [[nodiscard]] bool try_put(const T& item) { return Base::try_put(item); }
  //!Returns: the oldest item, or nullopt when empty (never throws Empty).
  [[nodiscard]] std::optional<T> try_get() { return Base::try_get(); }

  //!Returns: the number of items in the queue, exact when no put/get is in flight (first repairs
  //! slots left by dead processes). Costs a scan of the slots.
  //!Throws: OSError ("is closed") after close() in this process.
  std::size_t qsize() const { return Base::qsize(); }
  /// True if the queue holds no item (same exactness as qsize()). Throws: OSError after close().
  bool empty() const { return Base::qsize("empty") == 0; }
  /// True if a bounded queue holds maxsize items (always false when unbounded). Throws: OSError
  /// after close().
  bool full() const { return Base::full(); }
  /// maxsize as given at creation (<= 0: unbounded).
  long maxsize() const noexcept { return Base::maxsize(); }

  //!Effects: this process will use the queue no more: later put/get through any handle of it in
  //! this process throw ValueError, and empty(), qsize() and full() OSError, as in Python. Items
  //! already put stay queued (nothing to flush).
  void close() noexcept { Base::close(); }
  /// True after close() in this process (Python's Queue._closed).
  bool closed() const noexcept { return Base::closed(); }
  /// No-op: there is no feeder thread; put() has already written the item to shared memory.
  void join_thread() noexcept {}
  /// No-op: there is no feeder thread, so exiting never waits for queued items.
  void cancel_join_thread() noexcept {}

  /// The queue's name (random "mpp.anon...." for anonymous queues).
  const std::string& name() const noexcept { return Base::name(); }
  //!Effects: removes the name now; processes that have the queue keep using it.
  //!Returns: false if the name was already gone.
  bool unlink() { return Base::unlink(); }

  /// Python-like repr, also what fmt::format("{}", q) gives:
  /// `<Queue name='mpp.anon.4242.1f' maxsize=8>`, ending in " closed>" after close().
  std::string repr() const { return Base::repr("Queue", true); }

 private:
  explicit Queue(std::shared_ptr<detail::mpmc::Core> c) : Base(std::move(c)) {}
};

/// Python's multiprocessing.SimpleQueue: an unbounded queue with put, get, empty and close.
/// Copies share the queue; forked children inherit it.
template <class T>
class SimpleQueue : protected detail::mpmc::BasicQueue<T, Kind::simple_queue> {
  using Base = detail::mpmc::BasicQueue<T, Kind::simple_queue>;

 public:
  /// The element type.
  using value_type = T;

  //!Effects: an anonymous unbounded queue.
  explicit SimpleQueue(const QueueOptions& opts = {}) : Base(Base::make({}, 0, opts, 0)) {}
  /// Creates the named queue (ExistsError if taken).
  static SimpleQueue create(std::string_view name, const QueueOptions& opts = {}) {
    return SimpleQueue(Base::make(name, 0, opts, 1));
  }
  /// Opens the named queue (NotFoundError, TypeMismatchError).
  static SimpleQueue open(std::string_view name, const QueueOptions& opts = {}) {
    return SimpleQueue(Base::attach(name, opts));
  }
  /// Opens the named queue or creates it.
  static SimpleQueue open_or_create(std::string_view name, const QueueOptions& opts = {}) {
    return SimpleQueue(Base::make(name, 0, opts, 2));
  }

  //!Effects: puts `item` (never blocks; queue::Full only when the reserved slots run out).
  //!Throws: queue::Full, ValueError if closed or the item is too large.
  void put(const T& item) { Base::put(item, true, std::nullopt); }
  //!Returns: the oldest item. With block=true waits for one (at most `timeout` seconds when
  //! given). Throws: queue::Empty if none came; ValueError if closed; CorruptedError if the
  //! bytes in shared memory do not decode (the bad item is dropped).
  T get(bool block = true, Timeout timeout = std::nullopt) { return Base::get(block, timeout); }
  /// True if the queue holds no item (exact when no put/get is in flight). Throws: OSError
  /// ("is closed") after close() in this process, as in Python.
  bool empty() const { return Base::qsize("empty") == 0; }
  //!Effects: Python's SimpleQueue.close(): this process will use the queue no more: later
  //! put/get through any handle of it in this process throw ValueError, empty() OSError. Items
  //! already put stay queued.
  void close() noexcept { Base::close(); }
  /// True after close() in this process.
  bool closed() const noexcept { return Base::closed(); }
  /// The queue's name (random "mpp.anon...." for anonymous queues).
  const std::string& name() const noexcept { return Base::name(); }
  //!Effects: removes the name now; processes that have the queue keep using it.
  //!Returns: false if the name was already gone.
  bool unlink() { return Base::unlink(); }

  /// Python-like repr, also what fmt::format("{}", q) gives:
  /// `<SimpleQueue name='mpp.anon.4242.1f'>`, ending in " closed>" after close().
  std::string repr() const { return Base::repr("SimpleQueue", false); }

 private:
  explicit SimpleQueue(std::shared_ptr<detail::mpmc::Core> c) : Base(std::move(c)) {}
};

/// Python's multiprocessing.JoinableQueue: a Queue whose consumers call task_done() for every
/// item, and join() waits until every item put has been processed.
///
/// A consumer killed after get() and before task_done() is *accounted as lost*: join() stops
/// waiting for it once the queue holds no item and no live process holds an un-done item (each
/// process's count of items got minus task_done() calls is kept in its participant entry).
/// A consumer killed inside get(), before it returned, gives the item back instead (it is
/// delivered again). task_done() is expected in the process that got the item.
template <class T>
class JoinableQueue : protected detail::mpmc::BasicQueue<T, Kind::joinable_queue> {
  using Base = detail::mpmc::BasicQueue<T, Kind::joinable_queue>;

 public:
  /// The element type.
  using value_type = T;

  //!Effects: an anonymous queue holding at most `maxsize` items (<= 0: unbounded).
  explicit JoinableQueue(long maxsize = 0, const QueueOptions& opts = {})
      : Base(Base::make({}, maxsize, opts, 0)) {}
  /// Creates the named queue (ExistsError if taken).
  static JoinableQueue create(std::string_view name, long maxsize = 0,
                              const QueueOptions& opts = {}) {
    return JoinableQueue(Base::make(name, maxsize, opts, 1));
  }
  /// Opens the named queue (NotFoundError, TypeMismatchError).
  static JoinableQueue open(std::string_view name, const QueueOptions& opts = {}) {
    return JoinableQueue(Base::attach(name, opts));
  }
  /// Opens the named queue or creates it.
  static JoinableQueue open_or_create(std::string_view name, long maxsize = 0,
                                      const QueueOptions& opts = {}) {
    return JoinableQueue(Base::make(name, maxsize, opts, 2));
  }

  //!Effects: puts `item`, counting it as unfinished until a task_done(). With block=true waits
  //! while the queue is full (at most `timeout` seconds when given); with block=false does not
  //! wait. Throws: queue::Full if the queue stayed full; ValueError if closed or too large.
  void put(const T& item, bool block = true, Timeout timeout = std::nullopt) {
    Base::put(item, block, timeout);
  }
  //!Returns: the oldest item, which this process then holds until its task_done(). With
  //! block=true waits for one (at most `timeout` seconds when given). Throws: queue::Empty if
  //! none came; ValueError if closed; CorruptedError if the bytes do not decode (item dropped).
  T get(bool block = true, Timeout timeout = std::nullopt) { return Base::get(block, timeout); }
  /// put(item, false): throws queue::Full at once if full.
  void put_nowait(const T& item) { Base::put(item, false, std::nullopt); }
  /// get(false): throws queue::Empty at once if empty.
  T get_nowait() { return Base::get(false, std::nullopt); }
  //!Effects: puts `item` if there is room now. Returns: false when full (never throws Full).
  [[nodiscard]] bool try_put(const T& item) { return Base::try_put(item); }
  //!Returns: the oldest item, or nullopt when empty (never throws Empty).
  [[nodiscard]] std::optional<T> try_get() { return Base::try_get(); }

  //!Effects: marks one item got from the queue as processed; wakes join() when none are left.
  //!Throws: ValueError if called more times than items were put.
  void task_done() { Base::task_done(); }
  //!Effects: waits until every item put has been processed (task_done()), or accounted as lost
  //! because the process holding it died.
  void join() { (void)Base::join_until(detail::Deadline::never()); }
  //!Effects: join() for at most `timeout` seconds. Returns: false if it timed out.
  [[nodiscard]] bool join(Timeout timeout) {
    return Base::join_until(detail::Deadline::from(timeout));
  }

  //!Returns: the number of items in the queue, exact when no put/get is in flight (first repairs
  //! slots left by dead processes). Costs a scan of the slots.
  //!Throws: OSError ("is closed") after close() in this process.
  std::size_t qsize() const { return Base::qsize(); }
  /// True if the queue holds no item (same exactness as qsize()). Throws: OSError after close().
  bool empty() const { return Base::qsize("empty") == 0; }
  /// True if a bounded queue holds maxsize items (always false when unbounded). Throws: OSError
  /// after close().
  bool full() const { return Base::full(); }
  /// maxsize as given at creation (<= 0: unbounded).
  long maxsize() const noexcept { return Base::maxsize(); }

  //!Effects: this process will use the queue no more: later put/get through any handle of it in
  //! this process throw ValueError, and empty(), qsize() and full() OSError, as in Python. Items
  //! already put stay queued (nothing to flush).
  void close() noexcept { Base::close(); }
  /// True after close() in this process (Python's Queue._closed).
  bool closed() const noexcept { return Base::closed(); }
  /// No-op: there is no feeder thread; put() has already written the item to shared memory.
  void join_thread() noexcept {}
  /// No-op: there is no feeder thread, so exiting never waits for queued items.
  void cancel_join_thread() noexcept {}

  /// The queue's name (random "mpp.anon...." for anonymous queues).
  const std::string& name() const noexcept { return Base::name(); }
  //!Effects: removes the name now; processes that have the queue keep using it.
  //!Returns: false if the name was already gone.
  bool unlink() { return Base::unlink(); }

  /// Python-like repr, also what fmt::format("{}", q) gives:
  /// `<JoinableQueue name='mpp.anon.4242.1f' maxsize=8>`, ending in " closed>" after close().
  std::string repr() const { return Base::repr("JoinableQueue", true); }

 private:
  explicit JoinableQueue(std::shared_ptr<detail::mpmc::Core> c) : Base(std::move(c)) {}
};

/// A Queue<T> crosses processes as its name (as Python pickles it); the receiver opens it.
template <class T>
struct codec<Queue<T>> : detail::NameCodec<Queue<T>> {};
/// A SimpleQueue<T> crosses processes as its name.
template <class T>
struct codec<SimpleQueue<T>> : detail::NameCodec<SimpleQueue<T>> {};
/// A JoinableQueue<T> crosses processes as its name.
template <class T>
struct codec<JoinableQueue<T>> : detail::NameCodec<JoinableQueue<T>> {};

}  // namespace mpp

namespace fmt {
/// Formats a Queue as its repr(): `<Queue name='...' maxsize=8>`.
template <class T>
struct formatter<mpp::Queue<T>> : formatter<std::string_view> {
  /// Writes `q.repr()`.
  template <class Ctx>
  auto format(const mpp::Queue<T>& q, Ctx& ctx) const {
    return formatter<std::string_view>::format(q.repr(), ctx);
  }
};
/// Formats a SimpleQueue as its repr(): `<SimpleQueue name='...'>`.
template <class T>
struct formatter<mpp::SimpleQueue<T>> : formatter<std::string_view> {
  /// Writes `q.repr()`.
  template <class Ctx>
  auto format(const mpp::SimpleQueue<T>& q, Ctx& ctx) const {
    return formatter<std::string_view>::format(q.repr(), ctx);
  }
};
/// Formats a JoinableQueue as its repr(): `<JoinableQueue name='...' maxsize=0>`.
template <class T>
struct formatter<mpp::JoinableQueue<T>> : formatter<std::string_view> {
  /// Writes `q.repr()`.
  template <class Ctx>
  auto format(const mpp::JoinableQueue<T>& q, Ctx& ctx) const {
    return formatter<std::string_view>::format(q.repr(), ctx);
  }
};
}  // namespace fmt
