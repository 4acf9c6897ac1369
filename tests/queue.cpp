// Queue, SimpleQueue, JoinableQueue: Python's semantics (Empty/Full, timeouts, qsize, close,
// task_done/join) across real processes, named queues opened by an unrelated (exec'd) process,
// many producers and consumers with checksums, and SIGKILL of producers and consumers at every
// crash point and at random moments (Jepsen-style lost/duplicated counts), and threads of one
// process taking the exclusive producer role from each other ([tsan]: run under ThreadSanitizer).
//
// The tests that fork or SIGKILL are POSIX-only; the rest, and the spawn tests (named queues
// shared with spawned processes), also run on Windows (under wine in the Windows lane).
//
// Compiled with the crash-point hook (crash_points.hpp): children armed for a point SIGKILL
// themselves there.
#include "crash_points.hpp"

#include <mpp/process.hpp>
#include <mpp/queue.hpp>
#include <mpp/sync.hpp>
#include <mpp/value.hpp>

#if defined(MPP_OS_POSIX)
#  include <fcntl.h>
#  include <sys/mman.h>
#  include <unistd.h>
#  include <mpp/detail/registry.hpp>
#endif

#include <array>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <map>
#include <random>
#include <set>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "helpers.hpp"

using namespace std::chrono_literals;
using mpp_test::unique_name;
#if defined(MPP_OS_POSIX)
using mpp_test::fork_child;
using mpp_test::wait_child;
#endif

namespace {

#if defined(MPP_OS_POSIX)
/// An array of T in anonymous shared memory (parent and forked children see the same bytes).
template <class T>
class SharedArray {
 public:
  explicit SharedArray(std::size_t n) : n_(n) {
    void* p = ::mmap(nullptr, bytes(), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    REQUIRE(p != MAP_FAILED);
    p_ = static_cast<T*>(p);
    for (std::size_t i = 0; i < n; ++i) new (p_ + i) T{};
  }
  ~SharedArray() { ::munmap(p_, bytes()); }
  SharedArray(const SharedArray&) = delete;
  SharedArray& operator=(const SharedArray&) = delete;
  T& operator[](std::size_t i) const { return p_[i]; }
  std::size_t size() const { return n_; }

 private:
  std::size_t bytes() const { return n_ * sizeof(T) + 1; }
  T* p_;
  std::size_t n_;
};

#endif  // MPP_OS_POSIX

bool shm_exists(const std::string& name) {
#if defined(MPP_OS_POSIX)
  return ::access(("/dev/shm/" + name).c_str(), F_OK) == 0;
#else  // Windows: a mapping's name exists while a handle to it is open
  try {
    (void)mpp::detail::os::shm_open_existing(name);
    return true;
  } catch (const mpp::NotFoundError&) {
    return false;
  }
#endif
}

struct Big {
  std::uint64_t seq;
  char pad[200];
};

[[maybe_unused]] std::uint64_t tag(std::uint64_t producer, std::uint64_t seq) {
  return producer << 40 | seq;
}
/// Whether `v` = tag(p, i) comes from a known producer (p < last.size()) and after the last
/// value seen from p (last[p], -1 at first); records it.
[[maybe_unused]] bool in_order(std::span<std::int64_t> last, std::uint64_t v) {
  const auto p = static_cast<std::size_t>(v >> 40);
  const auto i = static_cast<std::int64_t>(v & ((std::uint64_t{1} << 40) - 1));
  const bool ok = p < last.size() && i > last[p];
  if (p < last.size()) last[p] = i;
  return ok;
}

/// An item whose decoding (which runs while the consumer still holds the slot, before the get
/// commits) reports the value to a hook: the kill test's "delivered before commit" log.
struct Tracked {
  std::uint64_t v = 0;
  std::string pad;
};
void (*g_on_decode)(std::uint64_t) = nullptr;

}  // namespace

template <>
struct mpp::codec<Tracked> {
  static void encode(const Tracked& t, Bytes& out) {
    const auto* p = reinterpret_cast<const std::byte*>(&t.v);
    out.insert(out.end(), p, p + 8);
    const auto* q = reinterpret_cast<const std::byte*>(t.pad.data());
    out.insert(out.end(), q, q + t.pad.size());
  }
  static Tracked decode(std::span<const std::byte> in) {
    if (in.size() < 8) detail::fail<CorruptedError>("Tracked: {} bytes", in.size());
    Tracked t;
    std::memcpy(&t.v, in.data(), 8);
    t.pad.assign(reinterpret_cast<const char*>(in.data()) + 8, in.size() - 8);
    if (g_on_decode != nullptr) g_on_decode(t.v);
    return t;
  }
};

// ---- single-process semantics -------------------------------------------------------------------

TEST_CASE("Queue: FIFO, qsize, empty, full", "[queue]") {
  mpp::Queue<int> q(3);
  CHECK(q.maxsize() == 3);
  CHECK(q.empty());
  CHECK_FALSE(q.full());
  q.put(1);
  q.put(2);
  CHECK(q.qsize() == 2);
  q.put(3);
  CHECK(q.full());
  CHECK(q.qsize() == 3);
  CHECK(q.get() == 1);
  q.put(4);
  CHECK(q.get() == 2);
  CHECK(q.get() == 3);
  CHECK(q.get() == 4);
  CHECK(q.empty());
  // Many laps around a capacity that is not a power of two.
  for (int i = 0; i < 1000; ++i) {
    q.put(i);
    q.put(-i);
    CHECK(q.get() == i);
    CHECK(q.get() == -i);
  }
  CHECK(q.qsize() == 0);
}

TEST_CASE("Queue: Empty and Full, with and without timeouts", "[queue]") {
  mpp::Queue<int> q(2);
  CHECK_THROWS_AS(q.get_nowait(), mpp::queue::Empty);
  CHECK_THROWS_AS(q.get(false), mpp::queue::Empty);
  auto t0 = std::chrono::steady_clock::now();
  CHECK_THROWS_AS(q.get(true, 50ms), mpp::queue::Empty);
  CHECK(mpp_test::seconds_since(t0) >= 0.04);
  q.put_nowait(1);
  q.put(2, true, 10ms);
  CHECK_THROWS_AS(q.put_nowait(3), mpp::queue::Full);
  t0 = std::chrono::steady_clock::now();
  CHECK_THROWS_AS(q.put(3, true, 50ms), mpp::queue::Full);
  CHECK(mpp_test::seconds_since(t0) >= 0.04);
  try {
    q.put_nowait(3);
  } catch (const mpp::queue::Full& e) {
    CHECK(std::string(e.what()).find(q.name()) != std::string::npos);
  }
  CHECK(q.get_nowait() == 1);
  CHECK(q.get(true, 1s) == 2);
  // Empty/Full are mpp::Error like every mpp exception.
  CHECK_THROWS_AS(q.get_nowait(), mpp::Error);
}

TEST_CASE("Queue: try_put and try_get never throw Empty or Full", "[queue]") {
  mpp::Queue<std::uint64_t> q(2);
  CHECK_FALSE(q.try_get().has_value());
  CHECK(q.try_put(7));
  CHECK(q.try_put(8));
  CHECK_FALSE(q.try_put(9));
  CHECK(q.try_get() == std::optional<std::uint64_t>(7));
  CHECK(q.try_get() == std::optional<std::uint64_t>(8));
  CHECK_FALSE(q.try_get().has_value());
}

TEST_CASE("Queue: variable-size items of any codec type", "[queue]") {
  mpp::Queue<std::string> s(4);
  s.put("");
  s.put("short");
  s.put(std::string(100000, 'x'));
  s.put("tail");
  CHECK(s.get().empty());
  CHECK(s.get() == "short");
  CHECK(s.get() == std::string(100000, 'x'));
  CHECK(s.get() == "tail");

  mpp::Queue<std::vector<int>> v(8);
  for (int i = 0; i < 100; ++i) {
    v.put(std::vector<int>(static_cast<std::size_t>(i * 37), i));
    const auto got = v.get();
    REQUIRE(got.size() == static_cast<std::size_t>(i * 37));
    if (!got.empty()) CHECK((got.front() == i && got.back() == i));
  }

  mpp::Queue<Big> b(2);
  Big x{};
  x.seq = 42;
  std::memset(x.pad, 'p', sizeof x.pad);
  b.put(x);
  const Big y = b.get();
  CHECK(y.seq == 42);
  CHECK(std::memcmp(x.pad, y.pad, sizeof x.pad) == 0);

  mpp::Queue<std::map<std::string, std::vector<double>>> m(1);
  m.put({{"a", {1.5, 2.5}}, {"b", {}}});
  const auto mm = m.get();
  CHECK(mm.at("a").size() == 2);
  CHECK(mm.at("b").empty());
}

TEST_CASE("Queue: an item larger than max_item_size is a ValueError", "[queue]") {
  mpp::QueueOptions o;
  o.max_item_size = 1024;
  mpp::Queue<std::string> q(2, o);
  q.put(std::string(1000, 'a'));
  CHECK_THROWS_AS(q.put(std::string(5000, 'a')), mpp::ValueError);
  CHECK(q.qsize() == 1);
  CHECK(q.get().size() == 1000);
  CHECK_THROWS_AS(mpp::Queue<int>(-1, mpp::QueueOptions{4, 0}), mpp::InvalidArgument);
}

TEST_CASE("Queue: close, join_thread and cancel_join_thread", "[queue]") {
  mpp::Queue<int> q(4);
  q.put(1);
  q.cancel_join_thread();
  q.join_thread();
  auto copy = q;
  q.close();
  CHECK_THROWS_AS(q.put(2), mpp::ValueError);
  CHECK_THROWS_AS(copy.get(), mpp::ValueError);
  // Another process is not affected by this process's close().
}

namespace {
/// Python's test_closed_queue_put_get_exceptions and test_closed_queue_empty_exceptions for one
/// queue type: after close(), put/get raise ValueError and empty()/qsize()/full() OSError, each
/// saying "is closed" and naming the queue. Returns what failed, or "" if all held.
template <class Q>
std::string closed_queue_errors(Q q) {
  const std::string name = q.name();
  if (q.closed()) return "closed() before close()";
  q.put(7);  // used before it is closed, as in Python's test
  q.close();
  q.close();  // closing twice does not fail (Python's test_close)
  if (!q.closed()) return "closed() after close()";
  auto says_closed = [&](const std::exception& e) {
    const std::string w = e.what();
    return w.find("is closed") != std::string::npos && w.find(name) != std::string::npos;
  };
  auto expect = [&]<class E>(const char* what, auto&& call) -> std::string {
    try {
      call();
    } catch (const E& e) {
      return says_closed(e) ? "" : std::string(what) + ": message '" + e.what() + "'";
    } catch (const std::exception& e) {
      return std::string(what) + ": wrong exception: " + e.what();
    }
    return std::string(what) + ": no exception";
  };
  std::string r;
  if constexpr (requires { q.put(1, true, std::nullopt); }) {
    r += expect.template operator()<mpp::ValueError>("put", [&] { q.put(1); });
    r += expect.template operator()<mpp::ValueError>("get", [&] { (void)q.get(); });
    r += expect.template operator()<mpp::OSError>("qsize", [&] { (void)q.qsize(); });
    r += expect.template operator()<mpp::OSError>("full", [&] { (void)q.full(); });
  } else {
    r += expect.template operator()<mpp::ValueError>("put", [&] { q.put(1); });
    r += expect.template operator()<mpp::ValueError>("get", [&] { (void)q.get(); });
  }
  r += expect.template operator()<mpp::OSError>("empty", [&] { (void)q.empty(); });
  return r;
}

/// Runs closed_queue_errors on its own handles of the three queues (received as arguments), each
/// of which it puts 7 into first, and replies with the result; the sender's handles stay open.
void close_received_queues(mpp::Queue<int> q, mpp::JoinableQueue<int> j, mpp::SimpleQueue<int> s,
                           mpp::Queue<std::string> reply) {
  reply.put(closed_queue_errors(q) + closed_queue_errors(j) + closed_queue_errors(s));
}

/// Python's _TestSimpleQueue._test_empty: waits for the go, then puts empty() twice.
void put_empty_twice(mpp::SimpleQueue<bool> q, mpp::Event child_can_start,
                     mpp::Event parent_can_continue) {
  if (!child_can_start.wait(60s)) return;
  q.put(q.empty());
  q.put(q.empty());
  parent_can_continue.set();
}

/// The start methods a test runs its child with: fork (POSIX) and spawn.
std::vector<mpp::StartMethod> fork_and_spawn() {
#if defined(MPP_OS_POSIX)
  return {mpp::StartMethod::fork, mpp::StartMethod::spawn};
#else
  return {mpp::StartMethod::spawn};
#endif
}

/// Puts 1 and 5 (the items of Python's test_qsize) for the parent to count.
void put_one_and_five(mpp::Queue<int> q) {
  q.put(1);
  q.put(5);
}
}  // namespace
MPP_REGISTER(close_received_queues);
MPP_REGISTER(put_empty_twice);
MPP_REGISTER(put_one_and_five);

TEST_CASE(
    "Queue: after close(), empty/qsize/full raise OSError and put/get ValueError, "
    "'is closed'",
    "[queue]") {
  CHECK(closed_queue_errors(mpp::Queue<int>(4)).empty());
  CHECK(closed_queue_errors(mpp::Queue<int>()).empty());
  CHECK(closed_queue_errors(mpp::JoinableQueue<int>(4)).empty());
  CHECK(closed_queue_errors(mpp::SimpleQueue<int>()).empty());
  // Copies share the closed state in this process, as Python's one object does.
  mpp::Queue<int> q(2);
  auto copy = q;
  q.close();
  CHECK(copy.closed());
  CHECK_THROWS_AS(copy.empty(), mpp::OSError);
  CHECK_THROWS_AS(copy.try_put(1), mpp::ValueError);
  CHECK(fmt::format("{}", copy) == fmt::format("<Queue name='{}' maxsize=2 closed>", q.name()));
}

TEST_CASE("Queue: close() in a spawned process closes only that process's queues",
          "[queue][spawn]") {
  mpp::Queue<int> q(4);
  mpp::JoinableQueue<int> j;
  mpp::SimpleQueue<int> s;
  mpp::Queue<std::string> reply;
  auto p = mpp::get_context(mpp::StartMethod::spawn).process(close_received_queues, q, j, s, reply);
  p.start();
  CHECK(reply.get(true, 60s) == "");
  CHECK(p.join(60s));
  CHECK(p.exitcode() == 0);
  CHECK_FALSE(q.closed());
  CHECK_FALSE(s.closed());
  CHECK(q.qsize() == 1);  // what the child put before closing
  CHECK(q.get(true, 10s) == 7);
  CHECK(j.qsize() == 1);
  CHECK(j.get(true, 10s) == 7);
  j.task_done();
  CHECK(j.join(10s));
  CHECK(s.get(true, 10s) == 7);
  CHECK(s.empty());
  CHECK(q.empty());
}

#if defined(MPP_OS_POSIX)
TEST_CASE("Queue: close() in a forked child closes only the child's queues", "[queue]") {
  mpp::Queue<int> q(4);
  mpp::JoinableQueue<int> j;
  mpp::SimpleQueue<int> s;
  mpp::Queue<std::string> reply;
  const pid_t child = fork_child([&] {
    reply.put(closed_queue_errors(q) + closed_queue_errors(j) + closed_queue_errors(s));
    return 0;
  });
  CHECK(reply.get(true, 60s) == "");
  CHECK(wait_child(child) == 0);
  CHECK_FALSE(q.closed());
  CHECK_FALSE(j.closed());
  CHECK(q.qsize() == 1);
  CHECK_FALSE(q.full());
  CHECK(j.get(true, 10s) == 7);  // the child's put reached the parent before its close()
  CHECK(s.get(true, 10s) == 7);
}
#endif  // MPP_OS_POSIX

TEST_CASE("Queue: qsize counts what another process put (Python's test_qsize)", "[queue][spawn]") {
  mpp::Queue<int> q;
  CHECK(q.qsize() == 0);
  q.put(1);
  CHECK(q.qsize() == 1);
  q.put(5);
  CHECK(q.qsize() == 2);
  (void)q.get();
  CHECK(q.qsize() == 1);
  (void)q.get();
  CHECK(q.qsize() == 0);
  for (const auto method : fork_and_spawn()) {
    INFO("start method " << mpp::start_method_name(method));
    auto p = mpp::get_context(method).process(put_one_and_five, q);
    p.start();
    CHECK(p.join(60s));
    CHECK(p.exitcode() == 0);
    CHECK(q.qsize() == 2);
    CHECK_FALSE(q.empty());
    CHECK(q.get(true, 10s) == 1);
    CHECK(q.qsize() == 1);
    CHECK(q.get(true, 10s) == 5);
    CHECK(q.qsize() == 0);
    CHECK(q.empty());
  }
}

TEST_CASE("SimpleQueue: empty() seen from another process (Python's test_empty)",
          "[queue][spawn]") {
  for (const auto method : fork_and_spawn()) {
    INFO("start method " << mpp::start_method_name(method));
    mpp::SimpleQueue<bool> q;
    mpp::Event child_can_start, parent_can_continue;
    auto p =
        mpp::get_context(method).process(put_empty_twice, q, child_can_start, parent_can_continue);
    p.start();
    CHECK(q.empty());
    child_can_start.set();
    CHECK(parent_can_continue.wait(60s));
    CHECK_FALSE(q.empty());
    CHECK(q.get() == true);
    CHECK(q.get() == false);
    CHECK(q.empty());
    CHECK(p.join(60s));
    CHECK(p.exitcode() == 0);
  }
}

TEST_CASE("Queue: fmt::format gives a Python-like repr of each queue kind", "[queue]") {
  const auto name = unique_name("qrepr");
  auto q = mpp::Queue<int>::create(name, 8);
  CHECK(fmt::format("{}", q) == fmt::format("<Queue name='{}' maxsize=8>", name));
  mpp::JoinableQueue<int> j;
  CHECK(fmt::format("{}", j) == fmt::format("<JoinableQueue name='{}' maxsize=0>", j.name()));
  mpp::SimpleQueue<int> s;
  CHECK(fmt::format("{}", s) == fmt::format("<SimpleQueue name='{}'>", s.name()));
  s.close();
  CHECK(fmt::format("{}", s) == fmt::format("<SimpleQueue name='{}' closed>", s.name()));
  CHECK(q.repr() == fmt::format("{}", q));
}

// ---- across processes
// ----------------------------------------------------------------------------

#if defined(MPP_OS_POSIX)
TEST_CASE("Queue: producer and consumer in different processes block on each other", "[queue]") {
  mpp::Queue<std::uint64_t> q(4);
  mpp::Queue<std::string> back(2);
  constexpr std::uint64_t n = 20000;
  const pid_t child = fork_child([&] {
    std::uint64_t sum = 0;
    for (std::uint64_t i = 0; i < n; ++i) {
      const auto v = q.get();
      if (v != i) return 2;  // FIFO
      sum += v;
    }
    back.put(std::to_string(sum));
    return 0;
  });
  for (std::uint64_t i = 0; i < n; ++i) q.put(i);
  CHECK(back.get(true, 30s) == std::to_string(n * (n - 1) / 2));
  CHECK(wait_child(child) == 0);
  CHECK(q.empty());
}

TEST_CASE("Queue: a consumer that waits is woken by a later put", "[queue]") {
  mpp::Queue<int> q(1);
  const pid_t child = fork_child([&] {
    std::this_thread::sleep_for(150ms);  // the parent is asleep in get() by now
    q.put(5);
    std::this_thread::sleep_for(150ms);
    q.put(6);  // blocks until the parent takes 5
    q.put(7);
    return 0;
  });
  CHECK(q.get(true, 10s) == 5);
  CHECK(q.get(true, 10s) == 6);
  CHECK(q.get(true, 10s) == 7);
  CHECK(wait_child(child) == 0);
}
#endif  // MPP_OS_POSIX

TEST_CASE("Queue: named queue opened by an unrelated process", "[queue]") {
  const auto name = unique_name("q");
  const auto reply = unique_name("r");
  auto q = mpp::Queue<int>::create(name, 8);
  auto r = mpp::Queue<std::string>::create(reply, 1);
  CHECK(shm_exists(name));
  CHECK_THROWS_AS(mpp::Queue<int>::create(name, 8), mpp::ExistsError);
  CHECK_THROWS_AS(mpp::Queue<double>::open(name), mpp::TypeMismatchError);
  CHECK_THROWS_AS(mpp::JoinableQueue<int>::open(name), mpp::TypeMismatchError);
  CHECK_THROWS_AS(mpp::Queue<int>::open(unique_name("none")), mpp::NotFoundError);
  for (int i = 1; i <= 3; ++i) q.put(i * 10);
  // A fresh program (this test binary run again) that only knows the names.
  CHECK(mpp_test::run_unrelated("[.queue_child]", name + " " + reply) == 0);
  CHECK(r.get(true, 30s) == "60");
  CHECK(q.get(true, 5s) == 99);
  auto again = mpp::Queue<int>::open_or_create(name, 1);  // exists: opened, maxsize unchanged
  CHECK(again.maxsize() == 8);
}

namespace {
/// The queue header of the named queue `name` of element type T (a mapping of its segment).
template <class T>
struct HeaderView {
  explicit HeaderView(const std::string& name)
      : seg(mpp::detail::Segment::open(name, mpp::Kind::queue, mpp::type_info<T>())),
        h(reinterpret_cast<mpp::detail::mpmc::Header*>(seg.payload())) {}
  mpp::detail::Segment seg;
  mpp::detail::mpmc::Header* h;
};
}  // namespace

TEST_CASE("Queue: cell sizes follow the element type; open checks them", "[queue]") {
  using Big = std::array<char, 1000>;
  const auto n8 = unique_name("q8"), ns = unique_name("qs"), nb = unique_name("qb");
  auto q8 = mpp::Queue<std::uint64_t>::create(n8, 8);
  auto qs = mpp::Queue<std::string>::create(ns, 8);
  auto qb = mpp::Queue<Big>::create(nb, 8);
  {
    HeaderView<std::uint64_t> v8(n8);
    HeaderView<std::string> vs(ns);
    HeaderView<Big> vb(nb);
    CHECK(v8.h->cell_size == 64);    // unused: the items live in the slots
    CHECK(vs.h->cell_size == 2048);  // any encoded size up to 2 KiB
    CHECK(vb.h->cell_size == 1024);  // 1000 bytes rounded up to a cache line
  }
  // Items cross processes in every layout, and wrap around the ring.
  const auto produce = [&](int i) {
    Big x{};
    x[0] = static_cast<char>(i);
    x[999] = static_cast<char>(i + 1);
    q8.put(static_cast<std::uint64_t>(i) * std::uint64_t{0x0101010101010101});
    qs.put(std::string(static_cast<std::size_t>(i * 50), 'x'));
    qb.put(x);
  };
  const auto consume = [&](int i) {
    CHECK(q8.get(true, 10s) == static_cast<std::uint64_t>(i) * std::uint64_t{0x0101010101010101});
    CHECK(qs.get(true, 10s).size() == static_cast<std::size_t>(i * 50));
    const Big b = qb.get(true, 10s);
    CHECK(b[0] == static_cast<char>(i));
    CHECK(b[999] == static_cast<char>(i + 1));
  };
#if defined(MPP_OS_POSIX)
  const pid_t child = fork_child([&] {
    for (int i = 0; i < 40; ++i) produce(i);
    return 0;
  });
  for (int i = 0; i < 40; ++i) consume(i);
  CHECK(wait_child(child) == 0);
#else
  for (int i = 0; i < 40; ++i) {
    produce(i);
    consume(i);
  }
#endif
  CHECK(q8.qsize() == 0);
  // A header whose layout does not match its element type (or no valid layout) is refused.
  {
    HeaderView<Big> vb(nb);
    vb.h->cell_size = 2048;
    CHECK_THROWS_AS(mpp::Queue<Big>::open(nb), mpp::CorruptedError);
    vb.h->cell_size = 1000;
    CHECK_THROWS_AS(mpp::Queue<Big>::open(nb), mpp::CorruptedError);
    vb.h->cell_size = 1024;
    CHECK_NOTHROW(mpp::Queue<Big>::open(nb));
  }
}

TEST_CASE("Queue: a queue handle crosses processes as its name", "[queue]") {
  mpp::Queue<int> q(4);
  mpp::Queue<mpp::Queue<int>> handles(2);
  handles.put(q);
  auto again = handles.get();
  CHECK(again.name() == q.name());
  again.put(5);
  CHECK(q.get() == 5);
  const auto bytes = mpp::encode(mpp::JoinableQueue<int>::create(unique_name("j"), 1));
  CHECK_THROWS_AS(mpp::decode<mpp::JoinableQueue<int>>(bytes), mpp::NotFoundError);  // gone
}

TEST_CASE("Queue: queue child, opens queues by name", "[.queue_child]") {
  const char* env = std::getenv("MPP_TEST_OBJECT");
  if (env == nullptr) return;
  const std::string both(env);
  const auto space = both.find(' ');
  auto q = mpp::Queue<int>::open(both.substr(0, space));
  auto r = mpp::Queue<std::string>::open(both.substr(space + 1));
  int sum = 0;
  for (int i = 0; i < 3; ++i) sum += q.get(true, 10s);
  q.put(99);
  r.put(std::to_string(sum));
}

#if defined(MPP_OS_POSIX)
TEST_CASE("Queue: a process may exit with items it put still queued", "[queue]") {
  // Python's "joining processes that use queues" deadlock: here put() has already written the
  // item to shared memory, so the child exits at once and the parent reads after joining it.
  mpp::Queue<std::string> q;
  const pid_t child = fork_child([&] {
    for (int i = 0; i < 1000; ++i) q.put(std::string(500, static_cast<char>('a' + i % 26)));
    return 0;
  });
  CHECK(wait_child(child) == 0);
  CHECK(q.qsize() == 1000);
  for (int i = 0; i < 1000; ++i) CHECK(q.get_nowait()[0] == static_cast<char>('a' + i % 26));
}
#endif  // MPP_OS_POSIX

TEST_CASE("Queue: unbounded (maxsize <= 0)", "[queue]") {
  mpp::Queue<std::uint64_t> q;
  CHECK(q.maxsize() == 0);
  for (std::uint64_t i = 0; i < 200000; ++i) q.put_nowait(i);
  CHECK(q.qsize() == 200000);
  CHECK_FALSE(q.full());
  for (std::uint64_t i = 0; i < 150000; ++i) REQUIRE(q.get_nowait() == i);
  CHECK(q.qsize() == 50000);
  for (std::uint64_t i = 150000; i < 200000; ++i) REQUIRE(q.get_nowait() == i);
  CHECK(q.empty());
  CHECK_FALSE(q.try_get().has_value());
  // When the reserved slots run out, a clear error instead of a hang.
  mpp::QueueOptions small;
  small.unbounded_capacity = 16;
  mpp::Queue<int> s(-1, small);
  int put = 0;
  try {
    for (; put < 100; ++put) s.put(put);
  } catch (const mpp::queue::Full& e) {
    CHECK(std::string(e.what()).find("unbounded_capacity") != std::string::npos);
  }
  CHECK(put >= 14);
  CHECK(put < 100);
}

#if defined(MPP_OS_POSIX)
namespace {
/// A Queue<std::uint64_t> whose header the tests may read (which process holds a role).
class PeekQueue : public mpp::Queue<std::uint64_t> {
 public:
  using mpp::Queue<std::uint64_t>::Queue;
  /// Header::excl of `role` (0: no exclusive holder).
  std::uint64_t holder(int role) const { return core_->header().excl[role].load(); }
};
constexpr int kProducerRole = mpp::detail::mpmc::kProducer;
constexpr int kConsumerRole = mpp::detail::mpmc::kConsumer;
/// Whether this system has the asymmetric fence the exclusive roles need (not on Windows).
bool exclusive_roles_supported() { return mpp::detail::os::membarrier_register(); }
}  // namespace

TEST_CASE("Queue: a lone producer and consumer go exclusive; others take the roles back",
          "[queue]") {
  PeekQueue q(64);
  constexpr std::uint64_t kStop = ~std::uint64_t{0};
  SharedArray<std::atomic<std::uint64_t>> sum(2), got(2);  // per consumer
  SharedArray<std::atomic<int>> phase(1), fifo_errors(1);
  auto consume = [&](std::size_t me) {
    std::int64_t last[2] = {-1, -1};
    for (;;) {
      const std::uint64_t v = q.get(true, 60s);
      if (v == kStop) return;
      if (!in_order(last, v)) fifo_errors[0].fetch_add(1);
      sum[me] += v;
      got[me] += 1;
    }
  };
  // Producer A alone, then idle while it still holds the role, then again alongside B.
  const pid_t a = fork_child([&] {
    std::uint64_t i = 0;
    for (; i < 20000; ++i) q.put(tag(0, i));
    phase[0] = 1;
    while (phase[0].load() != 2) std::this_thread::sleep_for(1ms);
    for (; i < 60000; ++i) q.put(tag(0, i));
    return 0;
  });
  const pid_t consumer = fork_child([&] {
    consume(0);
    return 0;
  });
  while (phase[0].load() != 1) std::this_thread::sleep_for(1ms);
  while (q.qsize() != 0) std::this_thread::sleep_for(1ms);
  if (exclusive_roles_supported()) {
    CHECK(q.holder(kProducerRole) != 0);
    CHECK(q.holder(kConsumerRole) != 0);
  }
  // B puts while A holds the role and sleeps: B must take it back, not wait for A.
  const pid_t b = fork_child([&] {
    for (std::uint64_t i = 0; i < 100; ++i) q.put(tag(1, i), true, 10s);
    phase[0] = 2;  // now A and B put together, and a second consumer takes part
    for (std::uint64_t i = 100; i < 40000; ++i) q.put(tag(1, i));
    return 0;
  });
  const pid_t consumer2 = fork_child([&] {
    consume(1);
    return 0;
  });
  CHECK(wait_child(a) == 0);
  CHECK(wait_child(b) == 0);
  q.put(kStop);
  q.put(kStop);
  CHECK(wait_child(consumer) == 0);
  CHECK(wait_child(consumer2) == 0);
  std::uint64_t want = 0;
  for (std::uint64_t i = 0; i < 60000; ++i) want += tag(0, i);
  for (std::uint64_t i = 0; i < 40000; ++i) want += tag(1, i);
  CHECK(got[0].load() + got[1].load() == 100000u);
  CHECK(sum[0].load() + sum[1].load() == want);
  CHECK(fifo_errors[0].load() == 0);
  CHECK(q.qsize() == 0);
}

TEST_CASE("Queue: exclusive producer and consumer wake each other's sleepers", "[queue]") {
  PeekQueue q(16);
  constexpr std::uint64_t kHandoffs = 40;
  SharedArray<std::atomic<std::uint64_t>> done(2);  // [0] gets by the parent, [1] puts by the child
  auto await = [](const std::atomic<std::uint64_t>& n, std::uint64_t want) {
    const auto give_up = std::chrono::steady_clock::now() + 30s;
    while (n.load() < want && std::chrono::steady_clock::now() < give_up) std::this_thread::yield();
    return n.load() >= want;
  };
  const pid_t child = fork_child([&] {
    for (std::uint64_t i = 0; i < 20000; ++i) q.put(i);  // become the exclusive producer
    // Lock step: each put comes 5 ms after the parent went to sleep in get().
    for (std::uint64_t i = 0; i < kHandoffs; ++i) {
      if (!await(done[0], i)) return 2;
      std::this_thread::sleep_for(5ms);
      q.put(i);
    }
    if (!await(done[0], kHandoffs)) return 2;
    for (std::uint64_t i = 0; i < 16 + kHandoffs; ++i) {  // from the 17th on, put() sleeps
      q.put(i);
      done[1] += 1;
    }
    return 0;
  });
  for (std::uint64_t i = 0; i < 20000; ++i) REQUIRE(q.get() == i);  // the exclusive consumer
  if (exclusive_roles_supported()) {
    CHECK(q.holder(kProducerRole) != 0);
    CHECK(q.holder(kConsumerRole) != 0);
  }
  const auto t0 = std::chrono::steady_clock::now();
  for (std::uint64_t i = 0; i < kHandoffs; ++i) {
    REQUIRE(q.get(true, 10s) == i);
    done[0] += 1;
  }
  REQUIRE(await(done[1], 16));  // the queue is full; the child sleeps in put()
  for (std::uint64_t i = 0; i < 16 + kHandoffs; ++i) {
    if (i < kHandoffs) {
      std::this_thread::sleep_for(5ms);
      REQUIRE(q.get(true, 10s) == i);
      REQUIRE(await(done[1], 17 + i));  // the get woke the child, which put one more
    } else {
      REQUIRE(q.get(true, 10s) == i);
    }
  }
  const auto spent = std::chrono::steady_clock::now() - t0;
  CHECK(wait_child(child) == 0);
  // 80 hand-offs of ~5 ms: about 0.4 s. Missed wake-ups would cost a 100 ms poll interval each
  // (80 x 0.1 s = 8 s); the bound leaves room for a loaded machine.
  CHECK(spent < 7s);
}

TEST_CASE("Queue: Queue between threads; a second producer thread takes the role back (tsan)",
          "[queue][tsan]") {
  PeekQueue q(64);
  constexpr std::uint64_t kStop = ~std::uint64_t{0}, kA = 20000, kB = 10000;
  std::atomic<int> phase{0};
  std::atomic<bool> a_was_exclusive{false};
  std::uint64_t sum = 0, got = 0;  // the consumer thread's, read after it joined
  int fifo_errors = 0;
  std::thread consumer([&] {
    std::int64_t last[2] = {-1, -1};
    for (;;) {
      const std::uint64_t v = q.get(true, 60s);
      if (v == kStop) return;
      if (!in_order(last, v)) ++fifo_errors;
      sum += v;
      ++got;
    }
  });
  // A puts alone (and goes exclusive), then goes on while B puts too (B revokes A's role).
  std::thread a([&] {
    std::uint64_t i = 0;
    for (; i < kA / 2; ++i) q.put(tag(0, i));
    a_was_exclusive = q.holder(kProducerRole) != 0;
    phase = 1;
    for (; i < kA; ++i) q.put(tag(0, i));
  });
  while (phase.load() != 1) std::this_thread::yield();
  std::thread b([&] {
    for (std::uint64_t i = 0; i < kB; ++i) q.put(tag(1, i));
  });
  a.join();
  b.join();
  q.put(kStop);
  consumer.join();
  if (exclusive_roles_supported()) CHECK(a_was_exclusive.load());
  std::uint64_t want = 0;
  for (std::uint64_t i = 0; i < kA; ++i) want += tag(0, i);
  for (std::uint64_t i = 0; i < kB; ++i) want += tag(1, i);
  CHECK(got == kA + kB);
  CHECK(sum == want);
  CHECK(fifo_errors == 0);
  CHECK(q.qsize() == 0);
}

TEST_CASE("Queue: qsize under concurrency", "[queue]") {
  mpp::Queue<int> q(100000);
  SharedArray<std::atomic<int>> go(1);
  std::vector<pid_t> kids;
  for (int p = 0; p < 3; ++p)
    kids.push_back(fork_child([&] {
      while (go[0].load() == 0) std::this_thread::yield();
      for (int i = 0; i < 5000; ++i) q.put(i);
      return 0;
    }));
  go[0] = 1;
  std::size_t last = 0;
  for (int i = 0; i < 50; ++i) {
    const auto n = q.qsize();
    CHECK(n >= last);  // only producers run: it never shrinks
    CHECK(n <= 15000);
    last = n;
  }
  for (auto k : kids) CHECK(wait_child(k) == 0);
  CHECK(q.qsize() == 15000);
  for (int i = 0; i < 15000; ++i) q.get_nowait();
  CHECK(q.qsize() == 0);
  CHECK(q.empty());
}

namespace {
// P producers put `each` tagged items; C consumers get until they see P stop markers in total;
// checks per-producer FIFO in every consumer, sums and counts.
void mpmc_run(int producers, int consumers, std::uint64_t each, long maxsize) {
  mpp::Queue<std::uint64_t> q(maxsize);
  constexpr std::uint64_t kStop = ~std::uint64_t{0};
  struct Result {
    std::atomic<std::uint64_t> count, sum, stops;
    std::atomic<int> fifo_errors;
  };
  SharedArray<Result> res(1);
  std::vector<pid_t> kids;
  for (int c = 0; c < consumers; ++c)
    kids.push_back(fork_child([&] {
      std::vector<std::int64_t> last(static_cast<std::size_t>(producers), -1);
      std::uint64_t count = 0, sum = 0;
      for (;;) {
        const auto v = q.get(true, 60s);
        if (v == kStop) {
          if (res[0].stops.fetch_add(1) + 1 >= static_cast<std::uint64_t>(producers)) {
            for (int i = 1; i < consumers; ++i) q.put(kStop);  // release the others
          }
          break;
        }
        if (!in_order(last, v)) res[0].fifo_errors.fetch_add(1);
        ++count;
        sum += v;
      }
      res[0].count += count;
      res[0].sum += sum;
      return 0;
    }));
  for (int p = 0; p < producers; ++p)
    kids.push_back(fork_child([&, p] {
      for (std::uint64_t i = 0; i < each; ++i) q.put(tag(static_cast<std::uint64_t>(p), i));
      q.put(kStop);
      return 0;
    }));
  for (auto k : kids) CHECK(wait_child(k) == 0);
  std::uint64_t want = 0;
  for (int p = 0; p < producers; ++p)
    for (std::uint64_t i = 0; i < each; ++i) want += tag(static_cast<std::uint64_t>(p), i);
  CHECK(res[0].count.load() == each * static_cast<std::uint64_t>(producers));
  CHECK(res[0].sum.load() == want);
  CHECK(res[0].fifo_errors.load() == 0);
  // Leftover stop markers (consumers that had already ended) may remain; nothing else.
  while (auto v = q.try_get()) CHECK(*v == kStop);
}
}  // namespace

TEST_CASE("Queue: 4 producers / 4 consumers with checksums and per-producer FIFO", "[queue]") {
  mpmc_run(4, 4, 25000, 1024);
  mpmc_run(4, 4, 5000, 7);  // tiny queue: constant full/empty waits
  mpmc_run(2, 3, 5000, 0);  // unbounded
}

TEST_CASE("Queue: 4P/4C x 10^6 items with checksums", "[queue][stress]") {
  mpmc_run(4, 4, 250000, 1024);
}
#endif  // MPP_OS_POSIX

TEST_CASE("SimpleQueue: put, get, empty, close", "[queue]") {
  mpp::SimpleQueue<std::string> q;
  CHECK(q.empty());
#if defined(MPP_OS_POSIX)
  const pid_t child = fork_child([&] {
    q.put("from child");
    return 0;
  });
  CHECK(q.get() == "from child");
  CHECK(wait_child(child) == 0);
#else
  q.put("from this process");
  CHECK(q.get() == "from this process");
#endif
  CHECK(q.empty());
  const auto name = unique_name("sq");
  auto n = mpp::SimpleQueue<int>::create(name);
  auto m = mpp::SimpleQueue<int>::open(name);
  n.put(3);
  CHECK(m.get() == 3);
  CHECK_THROWS_AS(mpp::Queue<int>::open(name), mpp::TypeMismatchError);
  n.close();
  CHECK_THROWS_AS(n.put(1), mpp::ValueError);
}

TEST_CASE("JoinableQueue: task_done, join and ValueError", "[queue]") {
  mpp::JoinableQueue<int> q(8);
  CHECK_THROWS_AS(q.task_done(), mpp::ValueError);
  CHECK(q.join(0s));  // nothing put: done at once
  q.put(1);
  q.put(2);
  CHECK_FALSE(q.join(20ms));
  CHECK(q.get() == 1);
  q.task_done();
  CHECK_FALSE(q.join(20ms));
  CHECK(q.get() == 2);
  CHECK_FALSE(q.join(20ms));  // got but not done: still unfinished
  q.task_done();
  CHECK(q.join(1s));
  q.join();
  CHECK_THROWS_AS(q.task_done(), mpp::ValueError);
}

#if defined(MPP_OS_POSIX)
TEST_CASE("JoinableQueue: a worker pool across processes", "[queue]") {
  mpp::JoinableQueue<int> tasks;
  mpp::Queue<long> results;
  std::vector<pid_t> kids;
  for (int w = 0; w < 3; ++w)
    kids.push_back(fork_child([&] {
      for (;;) {
        const int t = tasks.get();
        if (t < 0) {
          tasks.task_done();
          return 0;
        }
        results.put(static_cast<long>(t) * t);
        tasks.task_done();
      }
    }));
  for (int i = 0; i < 300; ++i) tasks.put(i);
  tasks.join();  // every task done
  CHECK(results.qsize() == 300);
  long sum = 0;
  for (int i = 0; i < 300; ++i) sum += results.get();
  CHECK(sum == 299L * 300 * 599 / 6);
  for (int w = 0; w < 3; ++w) tasks.put(-1);
  tasks.join();
  for (auto k : kids) CHECK(wait_child(k) == 0);
}
#endif  // MPP_OS_POSIX

// ---- spawned processes (portable: these also run on Windows)
// -------------------------------------

namespace {
/// Opens the named queues `in` and `out` and sends the `n` items it gets from `in` back on `out`.
void echo_items(std::string in, std::string out, int n) {
  auto from = mpp::Queue<std::string>::open(in);
  auto to = mpp::Queue<std::string>::open(out);
  for (int i = 0; i < n; ++i) to.put(from.get(true, 60s));
}
/// Squares the tasks it gets, until a negative one, calling task_done() for each.
void square_tasks(mpp::JoinableQueue<int> tasks, mpp::Queue<long> results) {
  for (;;) {
    const int t = tasks.get(true, 60s);
    if (t >= 0) results.put(static_cast<long>(t) * t);
    tasks.task_done();
    if (t < 0) return;
  }
}
}  // namespace
MPP_REGISTER(echo_items);
MPP_REGISTER(square_tasks);

TEST_CASE("Queue: a spawned process gets from a named queue and replies", "[queue][spawn]") {
  const auto in_name = unique_name("q.in");
  const auto out_name = unique_name("q.out");
  // Default queues: unbounded, with the default sparse item area (tens of GiB of address space
  // of which only the pages written are used, on Windows as on Linux).
  auto in = mpp::Queue<std::string>::create(in_name);
  auto out = mpp::Queue<std::string>::create(out_name);
  std::vector<std::string> items;
  // inline, cell, region
  for (std::size_t n :
       std::initializer_list<std::size_t>{0, 1, 12, 13, 900, 2040, 2041, 50000, 65528})
    items.push_back(std::string(n, static_cast<char>('a' + n % 26)));
  for (int i = 0; i < 300; ++i)
    items.push_back(std::to_string(i) + std::string(static_cast<std::size_t>(i) * 7, 'x'));
  for (const auto& it : items) in.put(it);
  auto p = mpp::get_context(mpp::StartMethod::spawn)
               .process(echo_items, in_name, out_name, static_cast<int>(items.size()));
  p.start();
  for (const auto& it : items) REQUIRE(out.get(true, 60s) == it);
  CHECK(p.join(60s));
  CHECK(p.exitcode() == 0);
  CHECK(in.empty());
  CHECK(out.empty());
}

TEST_CASE("JoinableQueue: spawned workers, task_done and join", "[queue][spawn]") {
  mpp::JoinableQueue<int> tasks;
  mpp::Queue<long> results;
  std::vector<mpp::Process> workers;
  for (int w = 0; w < 2; ++w)
    workers.push_back(
        mpp::get_context(mpp::StartMethod::spawn).process(square_tasks, tasks, results));
  for (auto& w : workers) w.start();
  for (int i = 0; i < 200; ++i) tasks.put(i);
  CHECK(tasks.join(60s));  // every task done
  long sum = 0;
  for (int i = 0; i < 200; ++i) sum += results.get(true, 10s);
  CHECK(sum == 199L * 200 * 399 / 6);
  for (std::size_t w = 0; w < workers.size(); ++w) tasks.put(-1);
  CHECK(tasks.join(60s));
  for (auto& w : workers) {
    CHECK(w.join(60s));
    CHECK(w.exitcode() == 0);
  }
}

// ---- kill tests
// -----------------------------------------------------------------------------------
#if defined(MPP_OS_POSIX)

namespace {
struct PointCase {
  const char* point;
  bool put_side;
  bool delivered;  // is the interrupted operation's item in the queue afterwards?
};
}  // namespace

namespace {
/// SIGKILL at every crash point on a Queue<T>: items in the slot, in cells (fitted to a raw T) or
/// in regions; `item(i)` makes the i-th item, `tag(v)` recovers i. The queue stays usable, nobody
/// hangs, and an interrupted put/get delivers its item at most once.
template <class T, class Make, class Tag>
void kill_at_every_point(Make item, Tag tag) {
  const PointCase cases[] = {
      {"queue.put.claimed", true, false},  {"queue.put.written", true, false},
      {"queue.put.published", true, true}, {"queue.get.claimed", false, true},
      {"queue.get.read", false, true},     {"queue.get.committed", false, false},
  };
  for (const long maxsize : {4L, 0L}) {
    for (const auto& c : cases) {
      INFO("point " << c.point << ", maxsize " << maxsize << ", " << sizeof(T) << "-byte items");
      mpp::Queue<T> q(maxsize);
      q.put(item(0));
      q.put(item(1));
      const pid_t child = fork_child([&] {
        mpp_test::crash_points::arm(c.point, 1);
        if (c.put_side)
          q.put(item(2));
        else
          (void)q.get();
        return 0;
      });
      REQUIRE(wait_child(child) == -SIGKILL);
      q.put(item(3), true, 10s);
      std::multiset<int> seen;
      while (auto v = q.try_get()) seen.insert(tag(*v));
      if (c.put_side) {
        CHECK(seen.count(0) == 1);
        CHECK(seen.count(1) == 1);
        CHECK(seen.count(2) == (c.delivered ? 1u : 0u));
      } else {
        CHECK(seen.count(0) == (c.delivered ? 1u : 0u));  // given back, not duplicated
        CHECK(seen.count(1) == 1);
      }
      CHECK(seen.count(3) == 1);
      CHECK(q.qsize() == 0);
      for (int i = 0; i < 20; ++i) {
        q.put(item(i));
        CHECK(tag(q.get(true, 10s)) == i);
      }
    }
  }
}
}  // namespace

TEST_CASE("Queue: SIGKILL at every crash point of put and get", "[queue][kill]") {
  for (const std::size_t n : {std::size_t{4}, std::size_t{3000}}) {  // inline and region items
    kill_at_every_point<std::string>(
        [n](int i) { return std::string(n, static_cast<char>('a' + i)); },
        [](const std::string& s) { return s.empty() ? -1 : s[0] - 'a'; });
  }
}

TEST_CASE("Queue: SIGKILL at crash points with raw items in fitted cells", "[queue][kill]") {
  kill_at_every_point<std::uint64_t>([](int i) { return static_cast<std::uint64_t>(i) << 40; },
                                     [](std::uint64_t v) { return static_cast<int>(v >> 40); });
  using Big = std::array<char, 1000>;
  kill_at_every_point<Big>(
      [](int i) {
        Big b{};
        b.fill(static_cast<char>(i));
        return b;
      },
      [](const Big& b) { return b[0] == b[999] ? static_cast<int>(b[0]) : -1; });
}

TEST_CASE("Queue: SIGKILL of an exclusive producer or consumer at every crash point",
          "[queue][kill]") {
  const PointCase cases[] = {
      {"queue.put.claimed", true, false},  {"queue.put.written", true, false},
      {"queue.put.published", true, true}, {"queue.get.claimed", false, true},
      {"queue.get.read", false, true},     {"queue.get.committed", false, false},
  };
  for (const auto& c : cases) {
    INFO("point " << c.point);
    PeekQueue q(8);
    const std::uint64_t item0 = 1000001, item1 = 1000002, item2 = 1000003, item3 = 1000004;
    const pid_t child = fork_child([&] {
      for (std::uint64_t i = 0; i < 3000; ++i) {  // alone: it becomes both exclusive roles
        q.put(i);
        if (q.get() != i) return 2;
      }
      q.put(item0);
      q.put(item1);
      mpp_test::crash_points::arm(c.point, 1);
      if (c.put_side)
        q.put(item2);
      else
        (void)q.get();
      return 0;
    });
    REQUIRE(wait_child(child) == -SIGKILL);
    if (exclusive_roles_supported()) {  // it died holding the role it was killed in
      CHECK(q.holder(c.put_side ? kProducerRole : kConsumerRole) != 0);
    }
    q.put(item3, true, 10s);  // takes the producer role back from the dead holder
    std::multiset<std::uint64_t> seen;
    while (auto v = q.try_get()) seen.insert(*v);
    if (c.put_side) {
      CHECK(seen.count(item0) == 1);
      CHECK(seen.count(item1) == 1);
      CHECK(seen.count(item2) == (c.delivered ? 1u : 0u));
    } else {
      CHECK(seen.count(item0) == (c.delivered ? 1u : 0u));  // given back, not duplicated
      CHECK(seen.count(item1) == 1);
    }
    CHECK(seen.count(item3) == 1);
    CHECK(seen.size() ==
          3u + (c.put_side && c.delivered ? 1u : 0u) - (!c.put_side && !c.delivered ? 1u : 0u));
    CHECK(q.qsize() == 0);
    for (std::uint64_t i = 0; i < 20; ++i) {
      q.put(i);
      CHECK(q.get(true, 10s) == i);
    }
  }
}

TEST_CASE("Queue: a waiting consumer is not stuck behind a killed producer", "[queue][kill]") {
  mpp::Queue<int> q(2);
  const pid_t child = fork_child([&] {
    mpp_test::crash_points::arm("queue.put.written", 1);
    q.put(1);
    return 0;
  });
  REQUIRE(wait_child(child) == -SIGKILL);
  const pid_t child2 = fork_child([&] {
    std::this_thread::sleep_for(100ms);
    q.put(2);
    return 0;
  });
  CHECK(q.get(true, 20s) == 2);  // the dead put is skipped, the later one delivered
  CHECK(wait_child(child2) == 0);
}

namespace {
/// Two logs of what consumers got: `pre` is written while decoding (before the get commits),
/// `post` after get() returned.
struct KillLogs {
  static constexpr std::size_t kLog = 200000;
  SharedArray<std::atomic<std::uint64_t>> pre{kLog}, post{kLog}, n{2};
  void add(int which, std::uint64_t x) const {
    auto& arr = which == 0 ? pre : post;
    const auto at = n[static_cast<std::size_t>(which)].fetch_add(1);
    if (at < kLog) arr[at].store(x + 1);
  }
  std::map<std::uint64_t, int> count(int which) const {
    auto& arr = which == 0 ? pre : post;
    std::map<std::uint64_t, int> times;
    const auto total = std::min<std::uint64_t>(n[static_cast<std::size_t>(which)].load(), kLog);
    for (std::uint64_t i = 0; i < total; ++i)  // 0: its consumer died before writing
      if (const auto x = arr[i].load(); x != 0) ++times[x - 1];
    return times;
  }
};
const KillLogs* g_logs = nullptr;
}  // namespace

TEST_CASE("Queue: SIGKILL random producers and consumers mid-traffic", "[queue][kill]") {
  for (const bool big : {false, true}) {
    INFO((big ? "1 KiB items" : "8-byte items"));
    constexpr int kProducers = 3, kConsumers = 3, kMaxIds = 64;
    constexpr std::uint64_t kEach = 4000;
    mpp::Queue<Tracked> q(16);
    // acked[id]: how many puts of producer id returned.
    SharedArray<std::atomic<std::uint64_t>> acked(kMaxIds);
    SharedArray<std::atomic<int>> stop(1);
    KillLogs logs;
    g_logs = &logs;
    g_on_decode = [](std::uint64_t v) { g_logs->add(0, v); };
    auto producer = [&](int id) {
      return fork_child([&, id] {
        for (std::uint64_t i = 0; i < kEach; ++i) {
          q.put(Tracked{tag(static_cast<std::uint64_t>(id), i), std::string(big ? 1016 : 0, 'p')});
          acked[static_cast<std::size_t>(id)].store(i + 1);
        }
        return 0;
      });
    };
    auto consumer = [&] {
      return fork_child([&] {
        for (;;) {
          auto v = q.try_get();
          if (!v) {
            if (stop[0].load()) return 0;
            std::this_thread::yield();
            continue;
          }
          logs.add(1, v->v);
        }
      });
    };
    std::vector<pid_t> prods, cons;
    int next_id = 0;
    for (int i = 0; i < kProducers; ++i) prods.push_back(producer(next_id++));
    for (int i = 0; i < kConsumers; ++i) cons.push_back(consumer());
    std::mt19937 rng(12345 + (big ? 1 : 0));
    int killed_consumers = 0, killed_producers = 0;
    for (int round = 0; round < 24 && next_id < kMaxIds; ++round) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5 + rng() % 15));
      const bool kill_consumer = rng() % 2 == 0;
      auto& group = kill_consumer ? cons : prods;
      const std::size_t victim = rng() % group.size();
      ::kill(group[victim], SIGKILL);
      wait_child(group[victim]);
      if (kill_consumer) {
        ++killed_consumers;
        group[victim] = consumer();
      } else {
        ++killed_producers;
        group[victim] = producer(next_id++);
      }
    }
    for (auto p : prods) CHECK(wait_child(p) == 0);
    stop[0] = 1;
    for (auto c : cons) CHECK(wait_child(c) == 0);
    while (auto v = q.try_get()) logs.add(1, v->v);  // anything left (there should be nothing)
    g_on_decode = nullptr;
    REQUIRE(logs.n[0].load() < KillLogs::kLog);
    // Jepsen's total-queue check, on both logs: every acknowledged put delivered exactly once
    // (lost / duplicated); an unacknowledged one (a killed producer's interrupted put) at most
    // once. A consumer killed inside get() after decoding but before its commit shows up in the
    // pre-commit log although its item is delivered again (a "duplicate" there); one killed after
    // the commit but before logging the returned item shows up as "lost" in the post log. Each
    // is at most one item per killed consumer; neither log may be wrong the other way.
    long lost[2] = {0, 0}, dup[2] = {0, 0}, unacked_twice = 0, unknown = 0;
    for (int which = 0; which < 2; ++which) {
      const auto times = logs.count(which);
      for (int id = 0; id < next_id; ++id) {
        const std::uint64_t a = acked[static_cast<std::size_t>(id)].load();
        for (std::uint64_t s = 0; s < a; ++s) {
          const auto it = times.find(tag(static_cast<std::uint64_t>(id), s));
          const int n = it == times.end() ? 0 : it->second;
          if (n == 0) ++lost[which];
          if (n > 1) dup[which] += n - 1;
        }
        const auto it = times.find(tag(static_cast<std::uint64_t>(id), a));
        if (which == 1 && it != times.end() && it->second > 1) ++unacked_twice;
      }
      for (auto& [v, n] : times) {
        const auto id = v >> 40, s = v & ((std::uint64_t{1} << 40) - 1);
        if (id >= static_cast<std::uint64_t>(next_id) || s > acked[id].load()) ++unknown;
      }
    }
    WARN((big ? "1 KiB" : "8 B") << " items: killed " << killed_producers << " producers and "
                                 << killed_consumers << " consumers; delivered " << logs.n[1].load()
                                 << "; pre-commit log: lost " << lost[0] << ", duplicated "
                                 << dup[0] << "; returned log: lost " << lost[1] << ", duplicated "
                                 << dup[1]);
    CHECK(lost[0] == 0);
    CHECK(dup[0] <= killed_consumers);
    CHECK(dup[1] == 0);
    CHECK(lost[1] <= killed_consumers);
    CHECK(unacked_twice == 0);
    CHECK(unknown == 0);
    CHECK(q.qsize() == 0);
  }
}

TEST_CASE("JoinableQueue: a consumer killed before task_done does not hang join", "[queue][kill]") {
  mpp::JoinableQueue<int> q(8);
  for (int i = 0; i < 5; ++i) q.put(i);
  SharedArray<std::atomic<int>> got(1);
  const pid_t victim = fork_child([&] {
    (void)q.get();
    got[0] = 1;
    for (int i = 0; i < 600; ++i) std::this_thread::sleep_for(100ms);  // never calls task_done
    return 0;
  });
  while (got[0].load() == 0) std::this_thread::yield();
  const pid_t worker = fork_child([&] {
    for (int i = 0; i < 4; ++i) {
      (void)q.get(true, 10s);
      q.task_done();
    }
    return 0;
  });
  CHECK(wait_child(worker) == 0);
  CHECK_FALSE(q.join(100ms));  // the victim still lives and holds an item
  ::kill(victim, SIGKILL);
  wait_child(victim);
  CHECK(q.join(20s));  // its item is accounted as lost
  // Still usable afterwards.
  q.put(9);
  CHECK(q.get() == 9);
  q.task_done();
  CHECK(q.join(20s));
}

TEST_CASE("JoinableQueue: killed inside put or get, join still returns", "[queue][kill]") {
  const char* points[] = {"queue.put.claimed",   "queue.put.counted",      "queue.put.written",
                          "queue.put.published", "queue.get.claimed",      "queue.get.read",
                          "queue.get.committed", "queue.task_done.counted"};
  for (const char* point : points) {
    INFO("point " << point);
    mpp::JoinableQueue<int> q(4);
    q.put(1);
    const bool put_side = std::strncmp(point, "queue.put", 9) == 0;
    const pid_t child = fork_child([&] {
      mpp_test::crash_points::arm(point, 1);
      if (put_side) {
        q.put(2);
      } else {
        (void)q.get();
        q.task_done();
      }
      return 0;
    });
    REQUIRE(wait_child(child) == -SIGKILL);
    // A surviving consumer processes whatever is (still or again) in the queue.
    while (auto v = q.try_get()) q.task_done();
    CHECK(q.join(20s));
  }
}

// ---- users: many processes per queue, one entry per process
// --------------------------------------

namespace {
// The queue's participant high-water mark, read from its file as `mpp inspect` reads headers.
std::uint32_t parts_used(const std::string& name) {
  const auto o = mpp::detail::registry::inspect(name);
  const int fd = ::shm_open(("/" + name).c_str(), O_RDONLY, 0);
  REQUIRE(fd >= 0);
  std::uint32_t n = 0;
  const auto at =
      static_cast<off_t>(o.payload_offset + offsetof(mpp::detail::mpmc::Header, parts_used));
  REQUIRE(::pread(fd, &n, sizeof n, at) == static_cast<ssize_t>(sizeof n));
  ::close(fd);
  return n;
}
}  // namespace

TEST_CASE(
    "Queue: users, 200 handles of one queue in one process share one entry; others still get in",
    "[queue][users]") {
  namespace reg = mpp::detail::registry;
  const auto name = unique_name("users.q");
  auto q = mpp::Queue<int>::create(name, 1000);
  {
    std::vector<mpp::Queue<int>> handles;
    for (int i = 0; i < 200; ++i) {
      handles.push_back(mpp::Queue<int>::open(name));
      handles.back().put(i);
    }
    CHECK(reg::inspect(name).attachers.size() == 1);
    CHECK(parts_used(name) == 1);
    // Another process opens the queue by name and uses it.
    const pid_t child = fork_child([&] {
      auto mine = mpp::Queue<int>::open(name);
      const int v = mine.get(true, 10s);
      mine.put(v);
      mine.put(1000);
      return reg::inspect(name).attachers.size() == 2 ? 0 : 3;
    });
    CHECK(wait_child(child) == 0);
    CHECK(parts_used(name) == 2);
    std::multiset<int> got;
    for (int i = 0; i < 201; ++i)
      got.insert(handles[static_cast<std::size_t>(i % 200)].get(true, 10s));
    std::multiset<int> want{1000};
    for (int i = 0; i < 200; ++i) want.insert(i);
    CHECK(got == want);
  }
  // The creator's handle outlived the opened ones: the name is still there, and goes with it.
  CHECK(reg::inspect(name).attachers.size() >= 1);
  auto again = mpp::Queue<int>::open(name);
  again.put(5);
  CHECK(q.get() == 5);
}

TEST_CASE("Queue: users, the creating handle removes the name even while opened handles remain",
          "[queue][users]") {
  const auto name = unique_name("users.qname");
  auto opened = [&] {
    auto q = mpp::Queue<int>::create(name, 4);
    auto o = mpp::Queue<int>::open(name);
    o.put(7);
    return o;
  }();
  CHECK_THROWS_AS(mpp::Queue<int>::open(name), mpp::NotFoundError);
  CHECK(opened.get() == 7);  // the mapping lives on
}

TEST_CASE("Queue: users, 300 processes use one Queue, Lock and Value at the same time",
          "[queue][users]") {
  namespace reg = mpp::detail::registry;
  constexpr int kProcs = 300;
  const auto base = unique_name("users.many");
  auto q = mpp::Queue<int>::create(base + ".q", kProcs + 10);
  auto lock = mpp::Lock::create(base + ".l");
  auto v = mpp::Value<int>::create(base + ".v", 0);
  int go[2], ready[2];
  REQUIRE(::pipe(go) == 0);
  REQUIRE(::pipe(ready) == 0);
  std::vector<pid_t> kids;
  for (int i = 0; i < kProcs; ++i) {
    kids.push_back(fork_child([&, i] {
      ::close(go[1]);
      auto cq = mpp::Queue<int>::open(base + ".q");
      auto cl = mpp::Lock::open(base + ".l");
      auto cv = mpp::Value<int>::open(base + ".v");
      if (!cl.acquire(true, 20s)) return 2;
      cv.set(cv.value() + 1);
      cl.release();
      cq.put(i, true, 20s);
      const char c = 1;
      if (::write(ready[1], &c, 1) != 1) return 3;
      char x;
      (void)::read(go[0], &x, 1);  // returns at EOF, when the parent closes its end
      return 0;
    }));
  }
  ::close(ready[1]);
  int n = 0;
  char c;
  while (n < kProcs && ::read(ready[0], &c, 1) == 1) ++n;
  CHECK(n == kProcs);
  // Every child is alive and registered, each once, next to the parent.
  for (const char* suffix : {".q", ".l", ".v"}) {
    INFO(suffix);
    CHECK(reg::live_users(reg::inspect(base + suffix)).size() ==
          static_cast<std::size_t>(kProcs + 1));
  }
  CHECK(parts_used(base + ".q") == kProcs);  // the parent never used its queue handle
  ::close(go[1]);
  int failed = 0;
  for (pid_t k : kids) failed += wait_child(k) != 0;
  ::close(go[0]);
  ::close(ready[0]);
  CHECK(failed == 0);
  std::set<int> got;
  while (auto x = q.try_get()) got.insert(*x);
  CHECK(got.size() == static_cast<std::size_t>(kProcs));
  CHECK(v.value() == kProcs);
}
#endif  // MPP_OS_POSIX

TEST_CASE("Queue: get and put take a timeout in plain seconds", "[queue]") {
  mpp::Queue<int> q(1);
  CHECK_THROWS_AS(q.get(true, 0.02), mpp::queue::Empty);
  q.put(1, true, 0.02);
  CHECK_THROWS_AS(q.put(2, true, 0.02), mpp::queue::Full);
  CHECK(q.get(true, 0.5) == 1);
}

#if defined(MPP_OS_POSIX)
// ---- Jepsen-style total-queue checks: random kills, crash points, double crashes
// -----------------

using mpp::detail::Segment;

namespace {

constexpr int kRoles =
    64;  // producers and consumers ever started in one run, replacements included

/// What the participants write down, in shared memory, so the parent can judge the run.
struct Ledger {
  std::atomic<std::uint64_t> attempted[kRoles];  ///< producer id -> seq+1 of the put in progress
  std::atomic<std::uint64_t> acked[kRoles];  ///< producer id -> seq+1 of the last put that returned
  std::atomic<std::uint32_t> consumer_busy[kRoles];  ///< consumer id -> inside get()/recording
  std::atomic<std::uint32_t> quotas_done;            ///< producer quotas completed
  std::atomic<std::uint64_t> progress;               ///< puts that returned, all producers
  std::atomic<std::uint64_t> nreceived;
  std::atomic<std::uint64_t> received[1];  ///< really `log_capacity` entries
};

constexpr std::uint64_t item_of(int producer, std::uint64_t seq) {
  return (static_cast<std::uint64_t>(producer + 1) << 40) | seq;
}

struct KillRun {
  std::uint64_t acked = 0, received = 0, lost = 0, duplicated = 0, unexpected = 0;
  std::uint64_t in_flight_delivered = 0, holes = 0;
  int killed_consumers = 0, killed_producers = 0;
  int busy_consumers_killed = 0;  ///< killed between starting a get and writing its item down
  /// Acked items missing beyond what killed busy consumers explain (each may take one item along:
  /// get() returned to it, so the queue delivered it, but it died before writing it down).
  std::uint64_t unexplained_lost() const {
    const auto missing = lost;  // an item lost in a log hole is counted here too
    const auto excused = static_cast<std::uint64_t>(busy_consumers_killed);
    return missing > excused ? missing - excused : 0;
  }
  bool finished = true;
};

/// One repetition: 4 producers and 4 consumers move `total` sequence-numbered items through a
/// bounded queue; when a random fraction of the puts returned, one random participant is
/// SIGKILLed and replaced. Afterwards every put that returned must have been received exactly
/// once, an interrupted put at most once, nothing else may appear, and nobody may block.
KillRun kill_run(std::uint64_t total, std::mt19937_64& rng) {
  constexpr int kProducers = 4, kConsumers = 4;
  std::fflush(nullptr);  // children must not inherit (and print again) our buffered output
  const std::uint64_t log_capacity = total + 1024;
  auto ledger_seg =
      Segment::create_anonymous(kt::spec_of(sizeof(Ledger) + log_capacity * sizeof(std::uint64_t)));
  auto* L = new (ledger_seg.payload()) Ledger{};
  mpp::Queue<std::uint64_t> q(256);

  auto producer = [&](int id, std::uint64_t from, std::uint64_t count) {
    return mpp_test::fork_child([&, id, from, count] {
      for (std::uint64_t s = from; s < from + count; ++s) {
        L->attempted[id].store(s + 1);
        q.put(item_of(id, s));
        L->acked[id].store(s + 1);
        L->progress.fetch_add(1);
      }
      L->quotas_done.fetch_add(1);
      return 0;
    });
  };
  auto consumer = [&](int id) {
    return mpp_test::fork_child([&, id] {
      int idle = 0;
      for (;;) {
        L->consumer_busy[id].store(1);
        if (auto v = q.try_get()) {
          const auto i = L->nreceived.fetch_add(1);
          if (i < log_capacity) L->received[i].store(*v);
          L->consumer_busy[id].store(0);
          idle = 0;
          continue;
        }
        try {
          const auto v = q.get(true, 20ms);  // still "busy": get() may return and we die here
          const auto i = L->nreceived.fetch_add(1);
          if (i < log_capacity) L->received[i].store(v);
          L->consumer_busy[id].store(0);
          idle = 0;
        } catch (const mpp::queue::Empty&) {
          L->consumer_busy[id].store(0);
          if (L->quotas_done.load() >= kProducers && ++idle >= 3) return 0;
        }
      }
    });
  };

  struct Role {
    pid_t pid;
    bool producer;
    int id;
    std::uint64_t from, count;
  };
  std::vector<Role> roles;
  int next_producer = 0, next_consumer = 0;
  const std::uint64_t quota = total / kProducers;
  for (int i = 0; i < kProducers; ++i, ++next_producer)
    roles.push_back({producer(next_producer, 0, quota), true, next_producer, 0, quota});
  for (int i = 0; i < kConsumers; ++i, ++next_consumer)
    roles.push_back({consumer(next_consumer), false, next_consumer, 0, 0});

  KillRun r;
  // The random moment: once a random fraction of the puts returned (plus a random few µs).
  const auto when = static_cast<std::uint64_t>(
      std::uniform_real_distribution<double>(0.02, 0.9)(rng) * static_cast<double>(total));
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (L->progress.load() < when && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  std::this_thread::sleep_for(std::chrono::microseconds(rng() % 500));
  {
    auto& victim = roles[rng() % roles.size()];
    ::kill(victim.pid, SIGKILL);
    const int rc = mpp_test::wait_child(victim.pid);
    if (rc != -SIGKILL) {
      CHECK(rc == 0);  // it had already finished its work: nothing was killed
      victim.pid = 0;
    } else if (victim.producer) {
      ++r.killed_producers;
      // The replacement finishes the quota; the put in flight (if any) is not retried.
      const std::uint64_t done = L->acked[victim.id].load();
      const std::uint64_t inflight = L->attempted[victim.id].load() > done ? 1 : 0;
      const std::uint64_t left = victim.from + victim.count - done - inflight;
      const int id = next_producer++;
      victim = {producer(id, 0, left), true, id, 0, left};
    } else {
      ++r.killed_consumers;
      r.busy_consumers_killed += L->consumer_busy[victim.id].load() != 0;
      const int id = next_consumer++;
      victim = {consumer(id), false, id, 0, 0};
    }
  }
  // Everybody finishes, or the run counts as blocked.
  for (auto& role : roles) {
    if (role.pid == 0) continue;  // reaped above
    int status = 0;
    pid_t got = 0;
    while ((got = ::waitpid(role.pid, &status, WNOHANG)) == 0 &&
           std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    if (got == 0) {
      r.finished = false;
      ::kill(role.pid, SIGKILL);
      mpp_test::wait_child(role.pid);
    } else {
      CHECK((WIFEXITED(status) && WEXITSTATUS(status) == 0));
    }
  }

  // The total-queue check.
  std::vector<std::vector<std::uint32_t>> seen(static_cast<std::size_t>(next_producer));
  for (int p = 0; p < next_producer; ++p) {
    seen[static_cast<std::size_t>(p)].assign(L->attempted[p].load() + 1, 0);
    r.acked += L->acked[p].load();
  }
  const std::uint64_t n = std::min<std::uint64_t>(L->nreceived.load(), log_capacity);
  r.received = n;
  for (std::uint64_t i = 0; i < n; ++i) {
    const std::uint64_t v = L->received[i].load();
    if (v == 0) {
      ++r.holes;  // a consumer killed between taking a log entry and filling it
      continue;
    }
    const auto p = static_cast<std::int64_t>(v >> 40) - 1;
    const std::uint64_t seq = v & ((std::uint64_t{1} << 40) - 1);
    if (p < 0 || p >= next_producer || seq >= L->attempted[p].load()) {
      ++r.unexpected;
      continue;
    }
    if (++seen[static_cast<std::size_t>(p)][seq] > 1) ++r.duplicated;
  }
  for (int p = 0; p < next_producer; ++p) {
    const auto acked = L->acked[p].load();
    for (std::uint64_t s = 0; s < acked; ++s)
      if (seen[static_cast<std::size_t>(p)][s] == 0) ++r.lost;
    if (L->attempted[p].load() > acked && seen[static_cast<std::size_t>(p)][acked] == 1)
      ++r.in_flight_delivered;
  }

  // The queue keeps working for newcomers.
  const pid_t newcomer = mpp_test::fork_child([&] {
    for (std::uint64_t i = 0; i < 100; ++i) q.put(i);
    return 0;
  });
  CHECK(mpp_test::wait_child(newcomer) == 0);
  const pid_t drainer = mpp_test::fork_child([&] {
    for (std::uint64_t i = 0; i < 100; ++i)
      if (q.get(true, 10s) != i) return 1;
    return q.empty() ? 0 : 2;
  });
  CHECK(mpp_test::wait_child(drainer) == 0);
  return r;
}

}  // namespace

TEST_CASE("Queue: random SIGKILL during traffic: every returned put arrives exactly once",
          "[queue][kill]") {
  // CI: 2 repetitions of 10^5 puts. Full run: MPP_KILL_REPS=200 ./test_crash "[queue]"
  const long reps = mpp_test::env_long("MPP_KILL_REPS", 2);
  const auto total = static_cast<std::uint64_t>(mpp_test::env_long("MPP_KILL_PUTS", 100000));
  std::mt19937_64 rng(
      static_cast<std::uint64_t>(mpp_test::env_long("MPP_KILL_SEED", std::random_device{}())));
  KillRun sum;
  for (long rep = 0; rep < reps; ++rep) {
    const KillRun r = kill_run(total, rng);
    fmt::print(
        "kill run {}/{}: killed {} producer(s) {} consumer(s): acked {}, received {}, lost {}, "
        "duplicated {}, unexpected {}, in-flight put delivered {}, log holes {}, missing items "
        "explained by the killed consumer {}{}\n",
        rep + 1, reps, r.killed_producers, r.killed_consumers, r.acked, r.received,
        r.unexplained_lost(), r.duplicated, r.unexpected, r.in_flight_delivered, r.holes,
        r.lost - r.unexplained_lost(), r.finished ? "" : ", BLOCKED");
    std::fflush(stdout);  // before the next fork copies the buffer
    CHECK(r.finished);
    CHECK(r.duplicated == 0);
    CHECK(r.unexpected == 0);
    // A consumer killed between get() returning and writing the item down takes it to its grave:
    // that is a delivery, not a loss, and can happen only to the killed consumer's one item.
    CHECK(r.unexplained_lost() == 0);
    sum.lost += r.unexplained_lost();
    sum.duplicated += r.duplicated;
    sum.unexpected += r.unexpected;
    sum.acked += r.acked;
    sum.in_flight_delivered += r.in_flight_delivered;
    if (r.unexplained_lost() + r.duplicated + r.unexpected != 0 || !r.finished) break;
  }
  fmt::print(
      "kill runs total: acked {}, lost {}, duplicated {}, unexpected {}, in-flight puts "
      "delivered {}\n",
      sum.acked, sum.lost, sum.duplicated, sum.unexpected, sum.in_flight_delivered);
  std::fflush(stdout);
}

TEST_CASE("Queue: crash points in put/get: nothing lost, nothing doubled, the queue keeps working",
          "[queue][kill]") {
  constexpr std::uint64_t kItems = 12;
  struct QLedger {
    std::atomic<std::uint64_t> attempted, acked, got_n;
    std::atomic<std::uint64_t> got[kItems];
  };
  auto lseg = Segment::create_anonymous(kt::spec_of(sizeof(QLedger)));
  auto* L = reinterpret_cast<QLedger*>(lseg.payload());
  std::optional<mpp::Queue<std::uint64_t>> q;
  auto reset = [&](bool filled) {
    q.emplace(64);
    new (L) QLedger{};
    if (filled)
      for (std::uint64_t i = 0; i < kItems; ++i) q->put(i);
  };
  auto produce = [&] {
    for (std::uint64_t i = 0; i < kItems; ++i) {
      L->attempted.store(i + 1);
      q->put(i);
      L->acked.store(i + 1);
    }
    return 0;
  };
  auto consume = [&] {
    for (std::uint64_t i = 0; i < kItems; ++i) {
      const auto v = q->get(true, 10s);
      L->got[L->got_n.load()].store(v);
      L->got_n.fetch_add(1);
    }
    return 0;
  };
  // Drains what is left (this process is a new participant) and checks the queue still works.
  auto drain = [&] {
    std::vector<std::uint64_t> rest;
    while (auto v = q->try_get()) rest.push_back(*v);
    q->put(4242);
    CHECK(q->get(true, 10s) == 4242);
    CHECK(q->empty());
    return rest;
  };

  reset(false);
  const auto put_points = mpp_test::crash_points::discover(produce);
  reset(true);
  const auto get_points = mpp_test::crash_points::discover(consume);
  fmt::print("queue crash points: put {}; get {}\n", fmt::join(put_points, ", "),
             fmt::join(get_points, ", "));
  CHECK(put_points.size() >= 2);
  CHECK(get_points.size() >= 2);

  for (const auto& p : put_points) {
    for (long hit : {1L, 2L, 7L, 12L}) {
      reset(false);
      CHECK(mpp_test::crash_points::run_until(p, hit, produce));
      const auto got = drain();
      const auto acked = L->acked.load(), attempted = L->attempted.load();
      INFO("killed at " << p << " #" << hit << ": acked " << acked << ", attempted " << attempted);
      // Every put that returned arrives once, in order; the interrupted one at most once.
      REQUIRE(got.size() >= acked);
      REQUIRE(got.size() <= attempted);
      for (std::uint64_t i = 0; i < got.size(); ++i) CHECK(got[i] == i);
    }
  }
  for (const auto& p : get_points) {
    for (long hit : {1L, 2L, 7L, 12L}) {
      reset(true);
      CHECK(mpp_test::crash_points::run_until(p, hit, consume));
      const auto rest = drain();
      std::vector<std::uint32_t> seen(kItems, 0);
      for (std::uint64_t i = 0; i < L->got_n.load(); ++i) ++seen[L->got[i].load()];
      for (auto v : rest) {
        REQUIRE(v < kItems);
        ++seen[v];
      }
      std::uint64_t missing = 0;
      for (auto c : seen) {
        CHECK(c <= 1);  // never delivered twice
        missing += c == 0;
      }
      // A get killed before its commit gives the item back; after it, the dead process had it.
      const bool after_commit = p.find("committed") != std::string::npos;
      INFO("killed at " << p << " #" << hit);
      CHECK(missing == (after_commit ? 1u : 0u));
    }
  }
  q.reset();
}

TEST_CASE(
    "Queue: double crash: the process rescuing a dead consumer's item dies too; nothing is lost",
    "[queue][kill]") {
  constexpr std::uint64_t kItems = 8;
  for (const char* first : {"queue.get.claimed", "queue.get.read"}) {
    mpp::Queue<std::uint64_t> q(16);
    for (std::uint64_t i = 0; i < kItems; ++i) q.put(i);
    // 1. A consumer dies holding a slot in the READING state (before its commit).
    CHECK(mpp_test::crash_points::run_until(first, 3, [&] {
      for (;;) (void)q.get(true, 10s);
      return 0;
    }));
    // 2. The next process finds the dead reader's slot and dies in the middle of rescuing it.
    const bool died = mpp_test::crash_points::run_until("queue.recover.counted", 1, [&] {
      (void)q.qsize();  // repairs dead owners' slots
      while (q.try_get()) {
      }
      return 0;
    });
    INFO("first crash at " << first);
    CHECK(died);
    // 3. A third process gets everything the dead ones did not commit: items 2..7, once each.
    std::vector<std::uint64_t> rest;
    while (auto v = q.try_get()) rest.push_back(*v);
    std::sort(rest.begin(), rest.end());
    CHECK(rest == std::vector<std::uint64_t>{2, 3, 4, 5, 6, 7});
    q.put(99);
    CHECK(q.get(true, 10s) == 99);
  }
}
#endif  // MPP_OS_POSIX
