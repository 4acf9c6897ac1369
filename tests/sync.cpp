// Synchronisation primitives across real processes: Lock, RLock, Semaphore, BoundedSemaphore,
// Event, Condition, Barrier; dead holders ([kill]); the algorithms under threads ([tsan]).
#include <mpp/sync.hpp>

#include <atomic>
#include <chrono>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "helpers.hpp"

using namespace std::chrono_literals;
using mpp_test::fork_child;
using mpp_test::seconds_since;
using mpp_test::unique_name;
using mpp_test::wait_child;
using Clock = std::chrono::steady_clock;

namespace {

/// A counter in a shared anonymous mapping (inherited by fork), for tests only.
struct SharedCounters {
  SharedCounters() {
    void* p = ::mmap(nullptr, sizeof(Data), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                     -1, 0);
    REQUIRE(p != MAP_FAILED);
    d = new (p) Data();
  }
  ~SharedCounters() { ::munmap(d, sizeof(Data)); }
  struct Data {
    std::int64_t plain = 0;  // protected by the lock under test
    std::atomic<int> flag{0};
    std::atomic<int> inside{0};
    std::atomic<std::int64_t> value{0};
  };
  Data* d;
};

/// Spins (sleeping a little) until `pred` holds; fails the test after `limit`.
template <class P>
void await(P&& pred, std::chrono::milliseconds limit = 10s) {
  const auto t0 = Clock::now();
  while (!pred()) {
    REQUIRE(Clock::now() - t0 < limit);
    std::this_thread::sleep_for(1ms);
  }
}

}  // namespace

// ---- Lock ---------------------------------------------------------------------------------

TEST_CASE("Lock: acquire, release, try, misuse", "[sync][lock]") {
  mpp::Lock l;
  CHECK_FALSE(l.locked());
  CHECK(l.acquire());
  CHECK(l.locked());
  CHECK_FALSE(l.previous_owner_died());
  CHECK_FALSE(l.acquire(false));
  const auto t0 = Clock::now();
  CHECK_FALSE(l.acquire(true, 50ms));
  CHECK(seconds_since(t0) >= 0.04);
  CHECK_FALSE(l.try_lock_for(10ms));
  CHECK_FALSE(l.try_lock_until(Clock::now() + 10ms));
  l.release();
  CHECK_THROWS_AS(l.release(), mpp::ValueError);
  {
    std::lock_guard<mpp::Lock> g(l);
    CHECK(l.locked());
  }
  {
    std::unique_lock<mpp::Lock> g(l, 20ms);
    CHECK(g.owns_lock());
  }
  {
    auto g = l.guard();
    CHECK_FALSE(g.previous_owner_died());
    CHECK(l.locked());
  }
  CHECK_FALSE(l.locked());
  // Zero-filled memory is a valid unlocked state.
  alignas(16) unsigned char raw[sizeof(mpp::detail::LockState)] = {};
  auto* st = reinterpret_cast<mpp::detail::LockState*>(raw);
  CHECK_FALSE(st->locked());
  CHECK(st->try_acquire());
  CHECK(st->release());
  CHECK_FALSE(st->release());
}

TEST_CASE("Lock: mutual exclusion across processes", "[sync][lock]") {
  mpp::Lock l;
  SharedCounters c;
  constexpr int kEach = 20000;
  std::vector<pid_t> kids;
  for (int k = 0; k < 3; ++k)
    kids.push_back(fork_child([&] {
      for (int i = 0; i < kEach; ++i) {
        std::lock_guard<mpp::Lock> g(l);
        c.d->plain = c.d->plain + 1;
      }
      return 0;
    }));
  for (pid_t p : kids) CHECK(wait_child(p) == 0);
  CHECK(c.d->plain == 3 * kEach);
}

TEST_CASE("Lock: named create/open/open_or_create, released by another process", "[sync][lock]") {
  const auto name = unique_name("lock");
  auto a = mpp::Lock::create(name);
  CHECK(a.name() == name);
  CHECK_THROWS_AS(mpp::Lock::create(name), mpp::ExistsError);
  CHECK_THROWS_AS(mpp::RLock::open(name), mpp::TypeMismatchError);
  a.acquire();
  const pid_t child = fork_child([&] {
    auto b = mpp::Lock::open(name);
    if (!b.locked()) return 2;
    if (b.acquire(true, 50ms)) return 3;
    b.release();  // Python's Lock may be released by another process
    return 0;
  });
  CHECK(wait_child(child) == 0);
  CHECK_FALSE(a.locked());
  auto c = mpp::Lock::open_or_create(name);
  CHECK(c.acquire(false));
  c.release();
  CHECK_THROWS_AS(mpp::Lock::open(unique_name("missing")), mpp::NotFoundError);
}

TEST_CASE("Lock: a waiter sleeps and is woken by the release", "[sync][lock]") {
  mpp::Lock l;
  SharedCounters c;
  l.acquire();
  const pid_t child = fork_child([&] {
    c.d->flag = 1;
    if (!l.acquire(true, 20s)) return 2;
    const int seen = c.d->inside.load();
    l.release();
    return seen == 1 ? 0 : 3;
  });
  await([&] { return c.d->flag.load() == 1; });
  std::this_thread::sleep_for(50ms);  // let it sleep
  c.d->inside = 1;
  l.release();
  CHECK(wait_child(child) == 0);
}

TEST_CASE("Lock::view keeps the owner's segment alive", "[sync][lock]") {
  mpp::Lock v = [] {
    mpp::Lock base;
    return mpp::Lock::view(base.segment(), &base.state());
  }();
  CHECK(v.acquire());
  CHECK(v.locked());
  v.release();
  CHECK_THROWS_AS(mpp::Lock::view(nullptr, nullptr), mpp::InvalidArgument);
}

// ---- RLock --------------------------------------------------------------------------------

TEST_CASE("RLock: recursion, ownership, misuse", "[sync][rlock]") {
  mpp::RLock r;
  CHECK_THROWS_AS(r.release(), mpp::ValueError);
  CHECK(r.acquire());
  CHECK(r.acquire());
  CHECK(r.acquire(false));
  CHECK(r.depth() == 3);
  CHECK(r.is_owned());
  {
    std::lock_guard<mpp::RLock> g(r);
    CHECK(r.depth() == 4);
  }
  // Another thread of this process does not own it.
  std::thread t([&] {
    CHECK_FALSE(r.is_owned());
    CHECK_FALSE(r.acquire(false));
    CHECK_FALSE(r.acquire(true, 20ms));
    CHECK_THROWS_AS(r.release(), mpp::ValueError);
  });
  t.join();
  // Neither does another process.
  const pid_t child = fork_child([&] {
    if (r.is_owned() || !r.locked()) return 2;
    if (r.acquire(true, 50ms)) return 3;
    try {
      r.release();
      return 4;
    } catch (const mpp::ValueError&) {
    }
    return 0;
  });
  CHECK(wait_child(child) == 0);
  r.release();
  r.release();
  CHECK(r.locked());
  r.release();
  CHECK_FALSE(r.locked());
  CHECK(r.depth() == 0);
}

TEST_CASE("RLock: mutual exclusion across processes and threads", "[sync][rlock]") {
  auto r = mpp::RLock::create(unique_name("rlock"));
  SharedCounters c;
  constexpr int kEach = 10000;
  auto work = [&] {
    for (int i = 0; i < kEach; ++i) {
      std::lock_guard<mpp::RLock> g1(r);
      std::lock_guard<mpp::RLock> g2(r);
      c.d->plain = c.d->plain + 1;
    }
  };
  const pid_t child = fork_child([&] {
    auto mine = mpp::RLock::open(r.name());
    for (int i = 0; i < kEach; ++i) {
      std::lock_guard<mpp::RLock> g(mine);
      c.d->plain = c.d->plain + 1;
    }
    return 0;
  });
  std::thread t(work);
  work();
  t.join();
  CHECK(wait_child(child) == 0);
  CHECK(c.d->plain == 3 * kEach);
}

// ---- dead holders -------------------------------------------------------------------------

namespace {

/// Kills `pid` with SIGKILL and reaps it.
void kill_child(pid_t pid) {
  ::kill(pid, SIGKILL);
  CHECK(wait_child(pid) == -SIGKILL);
}

/// A child that holds `l` forever: the parent kills it while it holds the lock, then acquires.
template <class L>
void holder_dies(L& l) {
  SharedCounters c;
  const pid_t child = fork_child([&] {
    l.acquire();
    c.d->flag = 1;
    for (;;) std::this_thread::sleep_for(1s);
    return 0;
  });
  await([&] { return c.d->flag.load() == 1; });
  CHECK(l.locked());
  kill_child(child);
  const auto t0 = Clock::now();
  REQUIRE(l.acquire(true, 10s));
  const double waited = seconds_since(t0);
  CHECK(l.previous_owner_died());
  INFO("took over after " << waited << " s");
  CHECK(waited < 5.0);  // the requirement is 1 s; the margin absorbs a loaded CI machine
  l.release();
  REQUIRE(l.acquire());
  CHECK_FALSE(l.previous_owner_died());
  l.release();
}

/// 50 rounds: a child loops acquire / mark / unmark / release and is killed at a random time;
/// the parent must get the lock, and is told the owner died whenever the child was inside.
template <class L>
void random_kills(L& l) {
  std::mt19937 rng(1234);
  for (int round = 0; round < 50; ++round) {
    SharedCounters c;
    const pid_t child = fork_child([&] {
      for (std::uint64_t i = 0;; ++i) {
        l.acquire();
        c.d->inside = 1;
        c.d->flag = 1;
        if (i % 64 == 0) std::this_thread::sleep_for(50us);
        c.d->inside = 0;
        l.release();
      }
      return 0;
    });
    await([&] { return c.d->flag.load() == 1; });
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % 3000));
    kill_child(child);
    REQUIRE(l.acquire(true, 10s));
    if (c.d->inside.load() == 1) CHECK(l.previous_owner_died());
    if (!l.previous_owner_died()) CHECK(c.d->inside.load() == 0);
    c.d->inside = 0;
    l.release();
  }
}

}  // namespace

TEST_CASE("Lock: a holder killed while holding it", "[sync][lock][kill]") {
  mpp::Lock l;
  holder_dies(l);
  auto named = mpp::Lock::create(unique_name("killlock"));
  holder_dies(named);
}

TEST_CASE("Lock: holder killed at random points, 50 rounds", "[sync][lock][kill]") {
  mpp::Lock l;
  random_kills(l);
}

TEST_CASE("RLock: a holder killed while holding it (recursively)", "[sync][rlock][kill]") {
  mpp::RLock r;
  SharedCounters c;
  const pid_t child = fork_child([&] {
    r.acquire();
    r.acquire();
    c.d->flag = 1;
    for (;;) std::this_thread::sleep_for(1s);
    return 0;
  });
  await([&] { return c.d->flag.load() == 1; });
  kill_child(child);
  REQUIRE(r.acquire(true, 10s));
  CHECK(r.previous_owner_died());
  CHECK(r.depth() == 1);
  r.release();
  CHECK_FALSE(r.locked());
}

TEST_CASE("RLock: holder killed at random points, 50 rounds", "[sync][rlock][kill]") {
  mpp::RLock r;
  random_kills(r);
}
