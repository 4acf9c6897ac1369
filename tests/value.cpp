// Value<T> / RawValue<T>: Python's semantics across forked and unrelated processes, the embedded
// robust lock (400 000 increments from 4 processes; a dead holder is reported), atomic operations
// without a lock, typed opening, validation of what another process wrote.
#include <mpp/array.hpp>
#include <mpp/process.hpp>
#include <mpp/value.hpp>

#if defined(MPP_OS_POSIX)  // the tests that fork (the rest also runs under wine)
#  include <fcntl.h>
#  include <signal.h>
#  include <sys/mman.h>
#  include <sys/stat.h>
#  include <unistd.h>
#endif

#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <span>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "helpers.hpp"

// White-box checks reach a handle's raw state and segment through the internal accessor.
using Access = mpp::detail::HandleAccess;

using mpp::RawValue;
using mpp::Value;
using mpp_test::corrupted;
using mpp_test::unique_name;

namespace {

struct Point {
  double x, y, z;  // 24 bytes: not lock-free, so value() and set() go through the lock
  friend bool operator==(const Point&, const Point&) = default;
};

#if defined(MPP_OS_POSIX)
template <class F>
std::vector<pid_t> fork_n(int n, F fn) {
  std::vector<pid_t> kids;
  for (int i = 0; i < n; ++i) kids.push_back(mpp_test::fork_child([&fn, i] { return fn(i); }));
  return kids;
}
#endif  // MPP_OS_POSIX

}  // namespace

#if defined(MPP_OS_POSIX)
TEST_CASE("Value: value, set, operator= across a forked child", "[value]") {
  Value<int> v;  // Python: Value('i'), zero
  CHECK(v.value() == 0);
  v = 7;
  CHECK(v.value() == 7);
  CHECK(v.has_lock());
  CHECK(v.name().rfind("mpp.anon.", 0) == 0);
  const pid_t child = mpp_test::fork_child([v]() mutable {
    if (v.value() != 7) return 2;
    v.set(30);
    return 0;
  });
  CHECK(mpp_test::wait_child(child) == 0);
  CHECK(v.value() == 30);
}
#endif  // MPP_OS_POSIX

TEST_CASE("Value: Value<int8_t> wraps around like Value('b', 129)", "[value]") {
  Value<std::int8_t> v(static_cast<std::int8_t>(129));
  CHECK(v.value() == -127);
}

TEST_CASE("[.] helper: Value in an unrelated process", "[.][value-child]") {
  const char* name = std::getenv("MPP_TEST_OBJECT");
  if (name == nullptr) return;  // only meaningful when run_unrelated() starts it
  auto v = Value<double>::open(name);
  REQUIRE(v.value() == 1.5);
  v.with_lock([](double& d) { d *= 4; });
}

TEST_CASE("Value: named, create, open by an unrelated process, types checked", "[value]") {
  const auto name = unique_name("val");
  auto v = Value<double>::create(name, 1.5);
  CHECK(mpp_test::run_unrelated("[value-child]", name) == 0);
  CHECK(v.value() == 6.0);
  CHECK_THROWS_AS(Value<double>::create(name), mpp::ExistsError);
  CHECK_THROWS_AS(Value<int>::open(name), mpp::TypeMismatchError);
  CHECK_THROWS_AS(Value<double>::open(unique_name("absent")), mpp::NotFoundError);
  auto again = Value<double>::open_or_create(name, 99.0);  // exists: opened, not reset
  CHECK(again.value() == 6.0);
  auto raw = RawValue<double>::open(name);  // a RawValue view ignores the lock
  CHECK(raw.value() == 6.0);
  CHECK_FALSE(raw.has_lock());
}

#if defined(MPP_OS_POSIX)
TEST_CASE("Value: get_lock around read-modify-write: 4 processes x 100 000 increments", "[value]") {
  Value<std::int64_t> v;
  constexpr int kEach = 100'000;
  auto kids = fork_n(4, [&](int) {
    for (int i = 0; i < kEach; ++i) {
      std::lock_guard<mpp::RLock> g(v.get_lock());
      v.set(v.value() + 1);  // Python: with v.get_lock(): v.value += 1
    }
    return 0;
  });
  for (pid_t k : kids) CHECK(mpp_test::wait_child(k) == 0);
  CHECK(v.value() == 4 * kEach);
}

TEST_CASE("Value: with_lock and fetch_add: 4 processes x 100 000 increments each", "[value]") {
  Value<std::int64_t> locked, atomic;
  constexpr int kEach = 100'000;
  auto kids = fork_n(4, [&](int) {
    for (int i = 0; i < kEach; ++i) {
      locked.with_lock([](std::int64_t& x) { ++x; });
      atomic.fetch_add(1);
    }
    return 0;
  });
  for (pid_t k : kids) CHECK(mpp_test::wait_child(k) == 0);
  CHECK(locked.value() == 4 * kEach);
  CHECK(atomic.load() == 4 * kEach);
}

TEST_CASE("Value: atomic operations without a lock", "[value]") {
  RawValue<std::uint32_t> v(5);
  CHECK_FALSE(v.has_lock());
  CHECK(v.fetch_add(3) == 5);
  CHECK(v.fetch_sub(1) == 8);
  CHECK(v.exchange(100) == 7);
  std::uint32_t expected = 1;
  CHECK_FALSE(v.compare_exchange(expected, 2));
  CHECK(expected == 100);
  CHECK(v.compare_exchange(expected, 2));
  CHECK(v.fetch_or(0x10) == 2);
  CHECK(v.fetch_and(0x10) == 0x12);
  CHECK(v.fetch_xor(0x11) == 0x10);
  CHECK(v.load() == 0x01);
  v.store(9);
  CHECK(v.value() == 9);
  Value<double> d(1.0);
  CHECK(d.fetch_add(0.5) == 1.0);
  CHECK(d.value() == 1.5);
  Value<bool> b(false);
  bool e = false;
  CHECK(b.compare_exchange(e, true));
  CHECK(b.value());
  // 4 processes x 1000 compare_exchange loops on a double: no update is lost.
  Value<double> sum(0.0, {.lock = false});
  auto kids = fork_n(4, [&](int) {
    for (int i = 0; i < 1000; ++i) {
      double cur = sum.load();
      while (!sum.compare_exchange(cur, cur + 1.0)) {
      }
    }
    return 0;
  });
  for (pid_t k : kids) CHECK(mpp_test::wait_child(k) == 0);
  CHECK(sum.value() == 4000.0);
}
#endif  // MPP_OS_POSIX

TEST_CASE("Value: lock=false and RawValue have no lock", "[value]") {
  Value<int> v(3, {.lock = false});
  CHECK_FALSE(v.has_lock());
  CHECK_THROWS_AS(v.get_lock(), mpp::ValueError);
  CHECK_THROWS_AS(v.with_lock([](int&) {}), mpp::ValueError);
  CHECK(v.value() == 3);
  RawValue<Point> p(Point{1, 2, 3});
  CHECK(p.value() == Point{1, 2, 3});
  p = Point{4, 5, 6};
  CHECK(p.get_obj().y == 5);
}

#if defined(MPP_OS_POSIX)
TEST_CASE("Value: a non-lock-free T: value() and set() take the lock, with_lock returns",
          "[value]") {
  Value<Point> p(Point{1, 2, 3});
  static_assert(!Value<Point>::is_lock_free);
  CHECK(p.value() == Point{1, 2, 3});
  // Concurrent writers of whole Points under the lock; readers never see a torn Point.
  const pid_t writer = mpp_test::fork_child([p]() mutable {
    for (int i = 0; i < 20'000; ++i) p.set(Point{double(i), double(i), double(i)});
    return 0;
  });
  int torn = 0;
  for (int i = 0; i < 20'000; ++i) {
    const Point q = p.value();
    torn += !(q.x == q.y && q.y == q.z) && !(q == Point{1, 2, 3});
  }
  CHECK(mpp_test::wait_child(writer) == 0);
  CHECK(torn == 0);
  // Holding the lock in this process, value()/set() do not deadlock.
  {
    std::lock_guard<mpp::RLock> g(p.get_lock());
    p.set(Point{7, 7, 7});
    CHECK(p.value() == Point{7, 7, 7});
  }
  const double s = p.with_lock([](Point& q) { return q.x + q.y + q.z; });
  CHECK(s == 21);
}
#endif  // MPP_OS_POSIX

TEST_CASE(
    "Value: with_lock, re-entrant in the holding thread, timeout in another, exceptions release",
    "[value]") {
  Value<int> v(1);
  CHECK_THROWS_AS(v.with_lock([](int&) { throw std::runtime_error("x"); }), std::runtime_error);
  CHECK_FALSE(v.get_lock().locked());
  v.get_lock().acquire();
  v.get_lock().acquire();  // re-entrant, as Python's Value lock (an RLock)
  CHECK(v.get_lock().depth() == 2);
  CHECK(v.with_lock(std::chrono::milliseconds(20), [](int& x) { return x; }) == 1);
  v.set(v.value() + 1);  // value()/set() take the lock too: re-entered, no deadlock
  bool timed_out = false;
  std::thread other([&] {
    try {
      v.with_lock(std::chrono::milliseconds(20), [](int&) {});
    } catch (const mpp::TimeoutError&) {
      timed_out = true;
    }
  });
  other.join();
  CHECK(timed_out);
  v.get_lock().release();
  CHECK(v.get_lock().locked());
  v.get_lock().release();
  CHECK_FALSE(v.get_lock().locked());
  CHECK_THROWS_AS(v.get_lock().release(), mpp::ValueError);
  CHECK(v.with_lock(std::chrono::seconds(5), [](int& x) { return ++x; }) == 3);
}

#if defined(MPP_OS_POSIX)
TEST_CASE("Value: a holder killed with the lock: the next acquirer proceeds and is told",
          "[value][kill]") {
  Value<int> v(0);
  int ready[2];
  REQUIRE(::pipe(ready) == 0);
  const pid_t holder = mpp_test::fork_child([&] {
    v.get_lock().acquire();
    v.get_obj() = 41;  // half-way through an update
    char c = 1;
    if (::write(ready[1], &c, 1) != 1) return 2;
    ::pause();  // killed while holding the lock
    return 0;
  });
  char c = 0;
  REQUIRE(::read(ready[0], &c, 1) == 1);
  REQUIRE(::kill(holder, SIGKILL) == 0);
  CHECK(mpp_test::wait_child(holder) == -SIGKILL);
  SECTION("with_lock is told through its second argument") {
    bool told = false;
    v.with_lock([&](int& x, bool previous_owner_died) {
      told = previous_owner_died;
      x = 42;  // repair
    });
    CHECK(told);
    bool again = true;
    v.with_lock([&](int&, bool died) { again = died; });
    CHECK_FALSE(again);
  }
  SECTION("get_lock().acquire() is told through previous_owner_died()") {
    auto& lock = v.get_lock();
    CHECK(lock.acquire(true, std::chrono::seconds(10)));
    CHECK(lock.previous_owner_died());
    lock.release();
  }
  CHECK(v.value() >= 41);
  ::close(ready[0]);
  ::close(ready[1]);
}

namespace {
/// 40 bytes: not lock-free, so value() and set() take the lock, and a write can be torn.
struct Record {
  std::int64_t f[5];
  friend bool operator==(const Record&, const Record&) = default;
};
constexpr Record kOld{{1, 1, 1, 1, 1}};
constexpr Record kNew{{7, 7, 7, 7, 7}};

/// Whether `fn` raises OwnerDiedError whose message names `name`.
template <class F>
bool raises_owner_died(F&& fn, const std::string& name) {
  try {
    fn();
  } catch (const mpp::OwnerDiedError& e) {
    return std::string(e.what()).find(name) != std::string::npos;
  }
  return false;
}

/// A child that dies of SIGKILL inside with_lock, half-way through writing kNew over `v`.
pid_t kill_half_way(Value<Record>& v) {
  return mpp_test::fork_child([&] {
    v.with_lock([](Record& r) {
      r.f[0] = kNew.f[0];
      r.f[1] = kNew.f[1];  // two of five fields written: torn
      ::raise(SIGKILL);
    });
    return 3;
  });
}
}  // namespace

TEST_CASE(
    "Value: a holder killed half-way through a 40-byte write: value() raises OwnerDiedError until "
    "repaired",
    "[value][kill]") {
  auto v = Value<Record>::create(unique_name("torn"), kOld);
  REQUIRE(mpp_test::wait_child(kill_half_way(v)) == -SIGKILL);
  // Every process is told, and the mark stays until a told holder repairs: never torn data.
  CHECK(raises_owner_died([&] { (void)v.value(); }, v.name()));
  CHECK(raises_owner_died([&] { (void)v.value(); }, v.name()));
  CHECK(raises_owner_died([&] { v.with_lock([](Record&) {}); }, v.name()));
  const pid_t other = mpp_test::fork_child([&] {
    auto w = Value<Record>::open(v.name());
    return raises_owner_died([&] { (void)w.value(); }, v.name()) ? 0 : 4;
  });
  CHECK(mpp_test::wait_child(other) == 0);
  SECTION("with_lock(fn(T&, bool)) is told, and its normal return repairs") {
    // A told fn that throws has not repaired: the mark stays.
    CHECK_THROWS_AS(v.with_lock([](Record&, bool died) {
      if (died) throw std::runtime_error("not now");
    }),
                    std::runtime_error);
    CHECK_THROWS_AS(v.value(), mpp::OwnerDiedError);
    bool told = false;
    v.with_lock([&](Record& r, bool died) {
      told = died;
      r = kNew;
    });
    CHECK(told);
    CHECK(v.value() == kNew);
    v.with_lock([&](Record&, bool died) { told = died; });
    CHECK_FALSE(told);
  }
  SECTION("get_lock()'s acquirer sees previous_owner_died(); its release repairs") {
    auto& lock = v.get_lock();
    {
      // Left by an exception, a guard keeps the mark.
      try {
        auto g = lock.guard();
        CHECK(g.previous_owner_died());
        throw std::runtime_error("repair interrupted");
      } catch (const std::runtime_error&) {
      }
    }
    CHECK_THROWS_AS(v.value(), mpp::OwnerDiedError);
    REQUIRE(lock.acquire(true, std::chrono::seconds(10)));
    CHECK(lock.previous_owner_died());
    v.get_obj() = kNew;
    lock.release();
    CHECK(v.value() == kNew);
    REQUIRE(lock.acquire());
    CHECK_FALSE(lock.previous_owner_died());
    lock.release();
  }
  SECTION("set() writes a whole value, which repairs") {
    const pid_t setter = mpp_test::fork_child([&] {
      auto w = Value<Record>::open(v.name());
      w.set(kNew);
      return w.value() == kNew ? 0 : 5;
    });
    CHECK(mpp_test::wait_child(setter) == 0);
    CHECK(v.value() == kNew);
    bool told = true;
    v.with_lock([&](Record&, bool died) { told = died; });
    CHECK_FALSE(told);
  }
}

namespace {
/// Shrinks the object `name` to `size` bytes, as a hostile process (same user) would.
void shrink(const std::string& name, off_t size) {
  const int fd = ::shm_open(("/" + name).c_str(), O_RDWR, 0);
  REQUIRE(fd >= 0);
  REQUIRE(::ftruncate(fd, size) == 0);
  ::close(fd);
}
/// Cut `cut` of a Value's segment: 0 bytes (every page faults), where the data starts, or the
/// payload's last byte (both zero bytes in place, no fault).
off_t value_cut(const std::shared_ptr<mpp::detail::Segment>& seg, std::size_t data_at, int cut) {
  const auto& h = seg->header();
  if (cut == 0) return 0;
  if (cut == 1) return static_cast<off_t>(h.payload_offset + data_at);
  return static_cast<off_t>(h.payload_offset + h.payload_size - 1);
}
}  // namespace

TEST_CASE("Value: a Value truncated under its users: CorruptedError, never zeros",
          "[value][truncate]") {
  for (int cut = 0; cut < 3; ++cut) {
    INFO("cut " << cut << " (0: to 0 bytes; 1: to the data's start; 2: the payload's last byte)");
    auto v = Value<std::int64_t>::create(unique_name("cut.v"), 42);
    auto r = Value<Record>::create(unique_name("cut.r"), kOld);
    int pipes[2][2];
    REQUIRE(::pipe(pipes[0]) == 0);
    REQUIRE(::pipe(pipes[1]) == 0);
    const pid_t user = mpp_test::fork_child([&] {
      ::alarm(30);
      auto w = Value<std::int64_t>::open(v.name());
      auto q = Value<Record>::open(r.name());
      if (w.value() != 42 || !(q.value() == kOld)) return 2;  // touched before the cut
      char c = 1;
      if (::write(pipes[0][1], &c, 1) != 1 || ::read(pipes[1][0], &c, 1) != 1) return 3;
      int bad = 0;
      bad += !corrupted([&] { (void)w.value(); });
      bad += !corrupted([&] { (void)w.load(); });
      bad += !corrupted([&] { w.store(1); });
      bad += !corrupted([&] { (void)w.fetch_add(1); });
      bad += !corrupted([&] { w.set(3); });
      bad += !corrupted([&] { (void)q.value(); });
      bad += !corrupted([&] { q.set(kNew); });
      bad += !corrupted([&] { q.with_lock([](Record&, bool) {}); });
      return bad == 0 ? 0 : 10 + bad;
    });
    char c = 0;
    REQUIRE(::read(pipes[0][0], &c, 1) == 1);
    shrink(v.name(),
           value_cut(Access::segment(v), mpp::detail::block_data_offset<std::int64_t>(), cut));
    shrink(r.name(), value_cut(Access::segment(r), mpp::detail::block_data_offset<Record>(), cut));
    REQUIRE(::write(pipes[1][1], &c, 1) == 1);
    CHECK(mpp_test::wait_child(user) == 0);
    CHECK(corrupted([&] { (void)v.value(); }));  // the creator too
    CHECK(corrupted([&] { (void)r.value(); }));
    CHECK_THROWS_AS(Value<std::int64_t>::open(v.name()), mpp::Error);  // and a new opener
    for (auto& p : pipes) {
      ::close(p[0]);
      ::close(p[1]);
    }
  }
}
#endif  // MPP_OS_POSIX

TEST_CASE("Value: a corrupted header is an error, not an out-of-bounds read", "[value]") {
  const auto name = unique_name("corrupt");
  auto v = Value<int>::create(name, 5);
  auto* h = reinterpret_cast<mpp::detail::BlockHeader*>(Access::segment(v)->payload());
  SECTION("element count") {
    h->count = 1'000'000;
    CHECK_THROWS_AS(Value<int>::open(name), mpp::CorruptedError);
  }
  SECTION("flags") {
    h->flags = 0x80;
    CHECK_THROWS_AS(Value<int>::open(name), mpp::CorruptedError);
  }
  SECTION("element size") {
    h->elem_size = 8;
    CHECK_THROWS_AS(Value<int>::open(name), mpp::CorruptedError);
  }
}

#if defined(MPP_OS_POSIX)
TEST_CASE("Value: a Value crosses processes as its name (codec)", "[value]") {
  static_assert(mpp::Encodable<Value<int>> && mpp::Encodable<RawValue<int>>);
  Value<int> v(5);
  const mpp::Bytes b = mpp::encode(v);
  const pid_t child = mpp_test::fork_child([&] {
    auto w = mpp::decode<Value<int>>(b);  // opened by name, like an unpickled Python Value
    w.with_lock([](int& x) { x += 1; });
    return 0;
  });
  CHECK(mpp_test::wait_child(child) == 0);
  CHECK(v.value() == 6);
  CHECK(mpp::decode<RawValue<int>>(mpp::encode(v)).value() == 6);
  CHECK_THROWS_AS(mpp::decode<Value<double>>(b), mpp::TypeMismatchError);
}

TEST_CASE("Value: workers killed at random while incrementing under the lock: nobody hangs",
          "[value][kill]") {
  Value<std::int64_t> v;
  constexpr int kEach = 200'000;
  for (int round = 0; round < 3; ++round) {
    v = 0;
    std::vector<pid_t> kids = fork_n(4, [&](int) {
      // The bool form: a worker accepts a killed worker's count (an increment is never torn).
      for (int i = 0; i < kEach; ++i) v.with_lock([](std::int64_t& x, bool) { ++x; });
      return 0;
    });
    // Kill two of them at some point of their run (possibly while holding the lock).
    ::usleep(static_cast<useconds_t>(2000 + 3000 * round));
    ::kill(kids[0], SIGKILL);
    ::usleep(1000);
    ::kill(kids[2], SIGKILL);
    int survivors_ok = 0;
    for (std::size_t k = 0; k < kids.size(); ++k) {
      const int rc = mpp_test::wait_child(kids[k]);
      if (k == 1 || k == 3)
        survivors_ok += rc == 0;
      else
        CHECK((rc == 0 || rc == -SIGKILL));
    }
    CHECK(survivors_ok == 2);
    const std::int64_t total =
        v.with_lock(std::chrono::seconds(10), [](std::int64_t& x, bool) { return x; });
    CHECK(total >= 2 * kEach);
    CHECK(total <= 4 * kEach);
  }
}
#endif  // MPP_OS_POSIX

// ---- a caller's lock (Python's lock= argument), across fork, spawn and forkserver ------------

namespace {

using mpp::StartMethod;

std::vector<StartMethod> start_methods() {
#if defined(MPP_OS_POSIX)
  return {StartMethod::fork, StartMethod::spawn, StartMethod::forkserver};
#else
  return {StartMethod::spawn};
#endif
}

constexpr int kLockedRounds = 2000;

template <class V>
concept HasGetLock = requires(V& v) {
  v.get_lock();
};

/// Increments `a` and `b`, which share one caller's RLock, under that lock; exits 2 if it ever
/// sees them differ while holding it, 3 if the lock that arrived is not `lock_name`.
void increment_pair(Value<int> a, Value<int> b, std::string lock_name) {
  if (a.get_lock().name() != lock_name || b.get_lock().name() != lock_name) mpp::exit(3);
  for (int i = 0; i < kLockedRounds; ++i) {
    std::lock_guard g(a.get_lock());
    if (a.value() != b.value()) mpp::exit(2);
    a.set(a.value() + 1);
    std::this_thread::yield();
    b.set(b.value() + 1);
  }
}
MPP_REGISTER(increment_pair);

/// A Value<Point> and an Array<int> synchronised by one caller's (non-recursive) Lock.
void increment_with_lock(Value<Point> p, mpp::Array<int> arr) {
  for (int i = 0; i < kLockedRounds; ++i) {
    {
      std::lock_guard g(p.get_lock<mpp::Lock>());
      Point q = p.value();  // this process holds the Lock: value() does not take it again
      q.x += 1;
      p.set(q);
      arr[0] += 1;
    }
    p.with_lock([](Point& q) { q.y += 1; });  // takes the Lock itself
    arr.with_lock([](std::span<int> s) { s[1] += 1; });
  }
}
MPP_REGISTER(increment_with_lock);

}  // namespace

TEST_CASE("Value: get_lock() returns the caller's Lock or RLock (test_getobj_getlock)", "[value]") {
  Value<int> val1(5);
  CHECK(val1.has_lock());
  CHECK(val1.get_lock().name() == val1.name());  // its own RLock, embedded in its segment
  CHECK(val1.get_obj() == 5);
  mpp::Lock lock;
  Value<int> val3(5, lock);
  CHECK(val3.has_lock());
  CHECK(val3.get_lock<mpp::Lock>().name() == lock.name());  // the very lock it was given
  CHECK_THROWS_AS(val3.get_lock(), mpp::ValueError);        // a Lock, not an RLock
  CHECK(val3.get_obj() == 5);
  Value<int> val4(5, mpp::SharedOptions{.lock = false});
  CHECK_FALSE(val4.has_lock());
  CHECK_THROWS_AS(val4.get_lock(), mpp::ValueError);
  static_assert(!HasGetLock<RawValue<int>> && HasGetLock<Value<int>>);  // RawValue: no lock
  // The caller's lock is not embedded: a lock given to two Values locks both.
  mpp::RLock shared;
  Value<int> a(1, shared), b(2, shared);
  {
    std::lock_guard g(a.get_lock());
    CHECK(b.get_lock().is_owned());
    CHECK(shared.depth() == 1);
  }
  CHECK_FALSE(shared.locked());
}

TEST_CASE("Value: a caller's lock is shared by several Values in children of every start method",
          "[value]") {
  for (const StartMethod m : start_methods()) {
    CAPTURE(mpp::start_method_name(m));
    mpp::RLock lock;
    Value<int> a(0, lock), b(0, lock);
    std::vector<mpp::Process> kids;
    for (int k = 0; k < 2; ++k) {
      kids.push_back(mpp::get_context(m).process(increment_pair, a, b, lock.name()));
      kids.back().start();
    }
    for (auto& k : kids) {
      REQUIRE(k.join(60.0));
      CHECK(k.exitcode() == 0);
    }
    CHECK(a.value() == 2 * kLockedRounds);
    CHECK(b.value() == 2 * kLockedRounds);
  }
}

TEST_CASE("Value: a Value and an Array synchronised by one caller's Lock in children", "[value]") {
  for (const StartMethod m : start_methods()) {
    CAPTURE(mpp::start_method_name(m));
    mpp::Lock lock;
    Value<Point> p(Point{0, 0, 0}, lock);
    mpp::Array<int> arr(2, lock);
    CHECK(arr.get_lock<mpp::Lock>().name() == lock.name());
    std::vector<mpp::Process> kids;
    for (int k = 0; k < 2; ++k) {
      kids.push_back(mpp::get_context(m).process(increment_with_lock, p, arr));
      kids.back().start();
    }
    for (auto& k : kids) {
      REQUIRE(k.join(60.0));
      CHECK(k.exitcode() == 0);
    }
    CHECK(p.value() == Point{2.0 * kLockedRounds, 2.0 * kLockedRounds, 0});
    CHECK(arr[0] == 2 * kLockedRounds);
    CHECK(arr[1] == 2 * kLockedRounds);
  }
}

TEST_CASE("Value: opened by name, a Value made with a caller's lock needs that lock", "[value]") {
  const auto name = unique_name("value.supplied");
  mpp::Lock lock;
  auto v = Value<Point>::create(name, Point{1, 2, 3}, lock);
  auto bare = Value<Point>::open(name);
  CHECK_FALSE(bare.has_lock());
  try {
    (void)bare.get_lock<mpp::Lock>();
    FAIL("get_lock() without the lock");
  } catch (const mpp::ValueError& e) {
    CHECK(std::string(e.what()).find("open(name, lock)") != std::string::npos);
  }
  auto with = Value<Point>::open(name, lock);
  CHECK(with.get_lock<mpp::Lock>().name() == lock.name());
  CHECK(with.value() == Point{1, 2, 3});
  // A Value with its own lock refuses another one: every process must lock the same.
  const auto own = unique_name("value.own");
  auto o = Value<int>::create(own, 1);
  CHECK_THROWS_AS(Value<int>::open(own, lock), mpp::InvalidArgument);
  // The lock crosses with the Value; a lock embedded in another object cannot cross by itself.
  auto back = mpp::decode<Value<Point>>(mpp::encode(v));
  CHECK(back.get_lock<mpp::Lock>().name() == lock.name());
  Value<int> owner(0);
  Value<int> borrower(0, owner.get_lock());
  CHECK(borrower.get_lock().name() == owner.name());
  CHECK_THROWS_AS(mpp::encode(borrower), mpp::InvalidArgument);
}

TEST_CASE("Value: fmt::format gives a Python-like repr", "[value][repr]") {
  Value<int> v(42);
  CHECK(fmt::format("{}", v) == fmt::format("<Value<int>(name='{}', 42)>", v.name()));
  Value<bool> flag(true);
  CHECK(fmt::format("{}", flag) == fmt::format("<Value<bool>(name='{}', True)>", flag.name()));
  RawValue<double> d(1.5);
  CHECK(fmt::format("{}", d) == fmt::format("<RawValue<double>(name='{}', 1.5)>", d.name()));
  Value<Point> p(Point{1, 2, 3});  // no formatter for Point: its size
  CHECK(fmt::format("{}", p).find("(name='" + p.name() + "', <24 bytes>)>") != std::string::npos);
}
