// The registry and its garbage collector under crashes (POSIX): processes are SIGKILLed while they
// create, attach to and release named objects; afterwards no survivor may hang, live users are
// counted exactly, stale names are provably stale (`mpp gc` reclaims them) and /dev/shm ends up
// clean. Also checks the crash-point driver itself. Tags: [registry]; those that kill, [kill].
//
// Environment knobs: MPP_KILL_REPS=N (repetitions of the random-kill scenarios), MPP_CRASH_AT
// (see crash_points.hpp).
#include "crash_points.hpp"

// ---- creator dies during init -------------------------------------------------------------------

TEST_CASE(
    "Registry: creator killed during init: openers fail fast, gc reclaims, the name is reusable",
    "[registry][kill]") {
  const auto name = mpp_test::unique_name("crash.init");
  kt::Signal building;
  const pid_t creator = mpp_test::fork_child([&] {
    Segment::create(name, kt::spec_of(), [&](std::byte* p, std::uint64_t) {
      p[0] = std::byte{1};  // half of the initialisation...
      building.post();
      for (;;) ::pause();  // ...and never the rest
    });
    return 0;
  });
  building.wait();
  kt::kill_and_reap(creator);

  // Openers in other processes (plain open and open_or_create) error out well within the bound.
  mpp::NamedOptions patient;
  patient.init_timeout = 30s;
  for (int variant = 0; variant < 2; ++variant) {
    const pid_t opener = mpp_test::fork_child([&] {
      const auto t0 = std::chrono::steady_clock::now();
      try {
        if (variant == 0)
          kt::open_test(name, patient);
        else
          Segment::open_or_create(name, kt::spec_of(), {}, patient);
        return 2;  // accepted a half-built object
      } catch (const mpp::CorruptedError& e) {
        if (std::string(e.what()).find("died while initialising") == std::string::npos) return 3;
      }
      return mpp_test::seconds_since(t0) < 20.0 ? 0 : 4;
    });
    CHECK(mpp_test::wait_child(opener) == 0);
  }

  // The registry sees a half-built object whose creator is dead; gc removes it.
  auto e = reg::gc(false, {}, name);
  REQUIRE(e.size() == 1);
  CHECK(e[0].info.state == reg::State::building);
  CHECK(e[0].removed);
  CHECK_FALSE(kt::shm_exists(name));
  // The name works again.
  auto fresh = Segment::create(name, kt::spec_of());
  CHECK(kt::open_test(name).payload_size() == 4096);
}

// ---- everybody crashes, everybody restarts ------------------------------------------------------

TEST_CASE("Registry: all participants crash, then restart with the same names",
          "[registry][kill]") {
  const auto base = mpp_test::unique_name("crash.restart") + ".";
  const std::vector<std::string> names{base + "jobs", base + "results", base + "state"};
  std::vector<pid_t> all;
  kt::Signal ready;
  // Generation 1: one creator per name, two users of every name, each writing as it goes.
  for (const auto& n : names)
    all.push_back(kt::holder(ready, [&] { return Segment::create(n, kt::spec_of()); }));
  ready.wait(static_cast<int>(names.size()));
  for (int u = 0; u < 2; ++u) {
    all.push_back(kt::holder(ready, [&] {
      std::vector<Segment> segs;
      for (const auto& n : names) {
        segs.push_back(kt::open_test(n));
        segs.back().payload()[u] = std::byte{0x55};
      }
      return segs;
    }));
  }
  ready.wait(2);
  for (pid_t p : all) kt::kill_and_reap(p);
  // Every name is left behind: that is what a crash does.
  CHECK(kt::names_with(base).size() == names.size());

  // Generation 2 finds the stale names: create refuses them, gc proves them stale and removes them.
  for (const auto& n : names) CHECK_THROWS_AS(Segment::create(n, kt::spec_of()), mpp::ExistsError);
  int removed = 0;
  for (const auto& e : reg::gc(false, {}, base)) removed += e.removed;
  CHECK(removed == static_cast<int>(names.size()));
  CHECK(kt::names_with(base).empty());

  // Restart: the same roles under the same names, this time finishing normally.
  std::vector<pid_t> gen2;
  kt::Signal made;
  kt::Signal done;
  for (const auto& n : names) {
    gen2.push_back(mpp_test::fork_child([&] {
      auto s = Segment::create(n, kt::spec_of());
      made.post();
      done.wait();  // keep it until the user is finished
      return s.payload()[0] == std::byte{0x77} ? 0 : 5;
    }));
  }
  made.wait(static_cast<int>(names.size()));
  const pid_t user = mpp_test::fork_child([&] {
    for (const auto& n : names) {
      auto s = kt::open_test(n);
      if (s.live_users() != 2) return 6;  // the creator and me; the dead generation is not counted
      s.payload()[0] = std::byte{0x77};
    }
    return 0;
  });
  CHECK(mpp_test::wait_child(user) == 0);
  for (std::size_t i = 0; i < names.size(); ++i) done.post();
  for (pid_t p : gen2) CHECK(mpp_test::wait_child(p) == 0);
  CHECK(kt::names_with(base).empty());  // /dev/shm is clean
}

// ---- unrelated users come and go ----------------------------------------------------------------

TEST_CASE(
    "Registry: an unrelated process attaches and exits (or dies): the creator keeps its object",
    "[registry][kill]") {
  const auto name = mpp_test::unique_name("crash.visitor");
  auto seg = Segment::create(name, kt::spec_of());
  auto* counter = reinterpret_cast<std::atomic<std::uint64_t>*>(seg.payload());
  // A polite visitor: opens, writes, closes, exits.
  const pid_t polite = mpp_test::fork_child([&] {
    auto s = kt::open_test(name);
    reinterpret_cast<std::atomic<std::uint64_t>*>(s.payload())->fetch_add(1);
    return 0;
  });
  CHECK(mpp_test::wait_child(polite) == 0);
  // A rude one: opens, writes, gets killed holding its handle.
  kt::Signal ready;
  const pid_t rude = kt::holder(ready, [&] {
    auto s = kt::open_test(name);
    reinterpret_cast<std::atomic<std::uint64_t>*>(s.payload())->fetch_add(1);
    return s;
  });
  ready.wait();
  CHECK(seg.live_users() == 2);
  kt::kill_and_reap(rude);

  CHECK(kt::shm_exists(name));
  CHECK(seg.live_users() == 1);
  CHECK(counter->load() == 2);
  // Still fully usable by new processes, and gc leaves it alone (its creator lives).
  for (const auto& e : reg::gc(false, {}, name)) CHECK_FALSE(e.removed);
  const pid_t later = mpp_test::fork_child([&] {
    auto s = kt::open_test(name);
    return reinterpret_cast<std::atomic<std::uint64_t>*>(s.payload())->load() == 2 ? 0 : 1;
  });
  CHECK(mpp_test::wait_child(later) == 0);
  seg.close();
  CHECK_FALSE(kt::shm_exists(name));
}

// ---- reference counting under crashes -----------------------------------------------------------

TEST_CASE(
    "Registry: refcount under crashes: 8 attach, 4 killed, live_users counts exactly the live ones",
    "[registry][kill]") {
  const auto name = mpp_test::unique_name("crash.refcount");
  auto seg = Segment::create(name, kt::spec_of());
  kt::Signal ready, release;
  std::vector<pid_t> users;
  for (int i = 0; i < 8; ++i) {
    users.push_back(mpp_test::fork_child([&] {
      auto s = kt::open_test(name);
      ready.post();
      char c;
      return ::read(release.fd[0], &c, 1) == 1 ? 0 : 1;  // close normally when told
    }));
  }
  ready.wait(8);
  CHECK(seg.live_users() == 9);
  for (std::size_t i = 0; i < 8; i += 2) kt::kill_and_reap(users[i]);  // 4 crash
  CHECK(seg.live_users() == 5);
  auto o = reg::inspect(name);
  CHECK(o.attachers.size() == 9);         // dead holders still occupy their slots...
  CHECK(reg::live_users(o).size() == 5);  // ...but are not counted
  // A second handle in this process shares the process's entry: it is not counted again.
  {
    auto newcomer = kt::open_test(name);
    CHECK(newcomer.attach_index() == seg.attach_index());
    CHECK(seg.live_users() == 5);
  }
  for (int i = 0; i < 4; ++i) release.post();
  for (std::size_t i = 1; i < 8; i += 2) CHECK(mpp_test::wait_child(users[i]) == 0);
  CHECK(seg.live_users() == 1);
  // The survivors' clean exits freed their slots; the dead ones' are reaped by gc's reasoning.
  o = reg::inspect(name);
  CHECK(reg::live_users(o).size() == 1);
  CHECK_FALSE(reg::gc_verdict(o, mpp::detail::os::unix_time_ms()).remove);
  seg.close();
  CHECK_FALSE(kt::shm_exists(name));
}

// ---- crash points
// ----------------------------------------------------------------------------------

namespace {
// A toy two-step mutation with an undo log, instrumented like the library's: it checks the driver
// itself (every point is found, each kill lands where asked, recovery sees each intermediate
// state).
struct Toy {
  std::int64_t a, b, log_a, log_b;
  std::uint32_t log_valid;
};
void toy_transfer(Toy* t, std::int64_t amount) {
  t->log_a = t->a;
  t->log_b = t->b;
  MPP_CRASH_POINT("toy.logged");
  t->log_valid = 1;
  MPP_CRASH_POINT("toy.log_published");
  t->a -= amount;
  MPP_CRASH_POINT("toy.half_applied");
  t->b += amount;
  MPP_CRASH_POINT("toy.before_commit");
  t->log_valid = 0;
  MPP_CRASH_POINT("toy.after_commit");
}
void toy_recover(Toy* t) {
  if (t->log_valid == 1) {
    t->a = t->log_a;
    t->b = t->log_b;
    t->log_valid = 0;
  }
}
}  // namespace

TEST_CASE("Crash points: the driver: finds every point and kills at each in turn",
          "[registry][kill]") {
  auto seg = Segment::create_anonymous(kt::spec_of(sizeof(Toy)));
  auto* t = reinterpret_cast<Toy*>(seg.payload());
  auto workload = [&] {
    for (int i = 0; i < 3; ++i) toy_transfer(t, 10);
    return 0;
  };
  t->a = 1000;
  t->b = 0;
  const auto points = mpp_test::crash_points::discover(workload);
  CHECK(points == std::vector<std::string>{"toy.logged", "toy.log_published", "toy.half_applied",
                                           "toy.before_commit", "toy.after_commit"});
  int kills = 0;
  for (const auto& p : points) {
    for (long hit : {1L, 3L, 4L}) {
      t->a = 1000;
      t->b = 0;
      t->log_valid = 0;
      const bool died = mpp_test::crash_points::run_until(p, hit, workload);
      CHECK(died == (hit <= 3));
      kills += died;
      toy_recover(t);  // what the next user of the object does
      CHECK(t->a + t->b == 1000);
      CHECK(t->b % 10 == 0);
    }
  }
  CHECK(kills == 10);
}
