// Named segments: create/open, validation, permissions, lifetime, creator death, liveness,
// wait/wake — across real processes.
#include <mpp/segment.hpp>
#include <mpp/value.hpp>

#if defined(MPP_OS_POSIX)
#  include <fcntl.h>
#  include <sys/mman.h>
#  include <sys/stat.h>
#  include <mpp/detail/registry.hpp>
#endif

#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "helpers.hpp"

using namespace std::chrono_literals;
using mpp::detail::Segment;
using mpp::detail::SegmentHeader;
using mpp::detail::SegmentSpec;
using mpp_test::unique_name;

namespace {

SegmentSpec spec_of(std::uint64_t bytes = 64) {
  return SegmentSpec{mpp::Kind::test, mpp::type_info<std::uint64_t>(), bytes, 7};
}

#if defined(MPP_OS_POSIX)
mode_t shm_mode(const std::string& name) {
  struct stat st {};
  REQUIRE(::stat(("/dev/shm/" + name).c_str(), &st) == 0);
  return st.st_mode & 0777;
}

bool shm_exists(const std::string& name) {
  struct stat st {};
  return ::stat(("/dev/shm/" + name).c_str(), &st) == 0;
}
#endif

}  // namespace

TEST_CASE("Segment: create, open, exists and not found", "[segment]") {
  const auto name = unique_name("basic");
  {
    auto seg = Segment::create(name, spec_of(), [](std::byte* p, std::uint64_t n) {
      REQUIRE(n == 64);
      std::memset(p, 0xAB, n);
    });
    CHECK(seg.is_creator());
    CHECK(seg.payload_size() == 64);
    CHECK(seg.capacity() == 7);
    CHECK(reinterpret_cast<std::uintptr_t>(seg.payload()) % 64 == 0);
    CHECK_THROWS_AS(Segment::create(name, spec_of()), mpp::ExistsError);

    // A second handle (here: same process) sees the initialised payload.
    {
      auto other = Segment::open(name, mpp::Kind::test, mpp::type_info<std::uint64_t>());
      CHECK_FALSE(other.is_creator());
      CHECK(other.payload()[63] == std::byte{0xAB});
      CHECK(seg.live_users() == 1);  // one process: its handles share one attach entry
    }
#if defined(MPP_OS_POSIX)
    // An unrelated process opens it by name and sees the initialised payload.
    const pid_t child = mpp_test::fork_child([&] {
      auto s = Segment::open(name, mpp::Kind::test, mpp::type_info<std::uint64_t>());
      if (s.payload_size() != 64 || s.is_creator()) return 2;
      for (std::uint64_t i = 0; i < 64; ++i)
        if (s.payload()[i] != std::byte{0xAB}) return 3;
      s.payload()[0] = std::byte{0x11};
      return 0;
    });
    CHECK(mpp_test::wait_child(child) == 0);
    CHECK(seg.payload()[0] == std::byte{0x11});
#endif
  }
  // The creator's handle removed the name (on Windows: the last handle did).
  CHECK_THROWS_AS(Segment::open(name, mpp::Kind::test, mpp::type_info<std::uint64_t>()),
                  mpp::NotFoundError);
}

TEST_CASE("Segment: open checks the kind and the element type and names both", "[segment]") {
  const auto name = unique_name("types");
  auto seg = Segment::create(name, spec_of());
  try {
    Segment::open(name, mpp::Kind::test, mpp::type_info<double>());
    FAIL("opened a uint64 segment as double");
  } catch (const mpp::TypeMismatchError& e) {
    const std::string what = e.what();
    // The element type as the compiler spells it: "long unsigned int" (g++), "unsigned long"
    // (clang).
    CHECK(what.find("unsigned") != std::string::npos);
    CHECK(what.find("long") != std::string::npos);
    CHECK(what.find("double") != std::string::npos);
  }
  CHECK_THROWS_AS(Segment::open(name, mpp::Kind::queue, mpp::type_info<std::uint64_t>()),
                  mpp::TypeMismatchError);
  CHECK(mpp::type_info<int>().fingerprint != mpp::type_info<unsigned>().fingerprint);
  CHECK(mpp::type_info<std::string>().fingerprint == mpp::type_info<std::string>().fingerprint);
}

TEST_CASE("Segment: bad names are rejected with the rule", "[segment]") {
  auto msg = [](std::string_view n) {
    try {
      mpp::validate_name(n);
    } catch (const mpp::InvalidArgument& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  CHECK(msg("mpp.ok-name_1.x") == "accepted");
  CHECK(msg("queue").find("must start with") != std::string::npos);
  CHECK(msg("mpp.").find("nothing after") != std::string::npos);
  CHECK(msg("mpp.a/b").find("not allowed") != std::string::npos);
  CHECK(msg("mpp.a b").find("not allowed") != std::string::npos);
  CHECK(msg("mpp." + std::string(200, 'x')).find("limit is") != std::string::npos);
  CHECK_THROWS_AS(Segment::create("nope", spec_of()), mpp::InvalidArgument);
  CHECK_THROWS_AS(Segment::open("mpp.../x", mpp::Kind::test, mpp::TypeInfo::none()),
                  mpp::InvalidArgument);
}

TEST_CASE("Segment: sparse segment, pages are committed before use and seen by every view",
          "[segment]") {
  namespace os = mpp::detail::os;
  const auto name = unique_name("sparse");
  constexpr std::uint64_t size = std::uint64_t{1} << 30;  // reserved, not charged (Windows)
  auto spec = spec_of(size);
  spec.sparse = true;
  auto s = Segment::create(name, spec);
  std::byte* mid = s.payload() + size / 2;
  if constexpr (os::kSparseNeedsCommit) CHECK_FALSE(os::committed(mid, 4096));
  REQUIRE(os::commit(mid, 10000) == 0);
  CHECK(os::committed(mid, 10000));
  std::memset(mid, 0x5a, 10000);
  auto t = Segment::open(name, mpp::Kind::test, mpp::type_info<std::uint64_t>());
  std::byte* mid2 = t.payload() + size / 2;
  CHECK(os::committed(mid2, 10000));  // a commit is a commit of the section: every view
  CHECK(mid2[0] == std::byte{0x5a});
  CHECK(mid2[9999] == std::byte{0x5a});
  REQUIRE(os::commit(mid2, 10000) == 0);  // committing again keeps the bytes
  CHECK(mid[5000] == std::byte{0x5a});
  if constexpr (os::kSparseNeedsCommit)  // the rest stays reserved
    CHECK_FALSE(os::committed(t.payload() + size - 4096, 4096));
}

#if defined(MPP_OS_POSIX)
TEST_CASE("Segment: segments are private whatever the umask, and openable by their user",
          "[segment]") {
  // Root opens any file whatever its mode: run the objects' user as nobody then.
  const pid_t runner = mpp_test::fork_child([&] {
    if (::geteuid() == 0 && (::setegid(65534) != 0 || ::seteuid(65534) != 0)) return 10;
    for (mode_t mask : {mode_t{0}, mode_t{077}, mode_t{0277}, mode_t{0377}}) {
      const mode_t old = ::umask(mask);
      const auto name = unique_name("perm");
      auto seg = Segment::create(name, spec_of());
      ::umask(old);
      if ((shm_mode(name) & 077) != 0) return 1;  // never more than 0600 (and no fchmod)
      // An umask that took owner bits away is repaired by the first process that opens it.
      const pid_t opener = mpp_test::fork_child([&] {
        auto s = Segment::open(name, mpp::Kind::test, mpp::type_info<std::uint64_t>());
        return s.payload_size() == seg.payload_size() ? 0 : 1;
      });
      if (mpp_test::wait_child(opener) != 0) return 2;
      if (shm_mode(name) != 0600) return 3;
    }
    return 0;
  });
  CHECK(mpp_test::wait_child(runner) == 0);
}

TEST_CASE(
    "Segment: objects open by name even after the program closed or replaced mpp's descriptors",
    "[segment]") {
  // Objects are opened from a cached /dev/shm directory descriptor; a program that closes every
  // descriptor (as daemons do), or puts a file in its place, must not break opening by name.
  const auto name = unique_name("dirfd");
  auto seg = Segment::create(name, spec_of());
  const pid_t child = mpp_test::fork_child([&] {
    const int dir = mpp::detail::os::posix_detail::g_shm_dir.load();
    if (dir < 0) return 1;  // create() went through it
    ::close(dir);
    if (Segment::open(name, mpp::Kind::test, mpp::type_info<std::uint64_t>()).payload_size() !=
        seg.payload_size())
      return 2;
    const int dir2 = mpp::detail::os::posix_detail::g_shm_dir.load();
    const int file = ::open("/proc/self/status", O_RDONLY);  // a non-directory in its place
    if (dir2 < 0 || file < 0 || ::dup2(file, dir2) != dir2) return 3;
    if (Segment::open(name, mpp::Kind::test, mpp::type_info<std::uint64_t>()).payload_size() !=
        seg.payload_size())
      return 4;
    try {
      Segment::open(name + "x", mpp::Kind::test, mpp::type_info<std::uint64_t>());
      return 5;
    } catch (const mpp::NotFoundError&) {
      return 0;
    }
  });
  CHECK(mpp_test::wait_child(child) == 0);
}

TEST_CASE("Segment: a segment with group/world access is refused", "[segment]") {
  const auto name = unique_name("squat");
  // Someone pre-creates the name with mode 0666 and a plausible size.
  const int fd = ::shm_open(("/" + name).c_str(), O_RDWR | O_CREAT | O_EXCL, 0666);
  REQUIRE(fd >= 0);
  ::fchmod(fd, 0666);
  REQUIRE(::ftruncate(fd, 65536) == 0);
  ::close(fd);
  CHECK_THROWS_AS(Segment::open(name, mpp::Kind::test, mpp::type_info<std::uint64_t>()),
                  mpp::PermissionError);
  CHECK_THROWS_AS(Segment::open_or_create(name, spec_of()), mpp::PermissionError);
  CHECK_THROWS_AS(Segment::create(name, spec_of()), mpp::ExistsError);
  CHECK(mpp::unlink(name));
  CHECK_FALSE(mpp::unlink(name));
}

TEST_CASE("Segment: a directory squatting a name is a PermissionError for every kind",
          "[segment]") {
  const auto name = unique_name("dir");
  // Another process (same user) plants a directory where the object would be.
  REQUIRE(mpp_test::wait_child(mpp_test::fork_child(
              [&] { return ::mkdir(("/dev/shm/" + name).c_str(), 0700) == 0 ? 0 : 1; })) == 0);
  for (const auto kind : {mpp::Kind::test, mpp::Kind::lock, mpp::Kind::value, mpp::Kind::queue,
                          mpp::Kind::pipe, mpp::Kind::manager}) {
    INFO(mpp::kind_name(kind));
    CHECK_THROWS_AS(Segment::open(name, kind, mpp::type_info<std::uint64_t>()),
                    mpp::PermissionError);
    CHECK_THROWS_WITH(Segment::open(name, kind, mpp::type_info<std::uint64_t>()),
                      Catch::Matchers::Contains("directory"));
    auto spec = spec_of();
    spec.kind = kind;
    CHECK_THROWS_AS(Segment::open_or_create(name, spec), mpp::PermissionError);
    CHECK_THROWS_AS(Segment::create(name, spec), mpp::ExistsError);  // the name is taken
  }
  CHECK_THROWS_AS(mpp::unlink(name), mpp::PermissionError);
  CHECK(::rmdir(("/dev/shm/" + name).c_str()) == 0);
}

TEST_CASE("Segment: a creator killed during init is reported, not waited on", "[segment]") {
  const auto name = unique_name("initkill");
  int ready[2];
  REQUIRE(::pipe(ready) == 0);
  const pid_t child = mpp_test::fork_child([&] {
    Segment::create(name, spec_of(), [&](std::byte*, std::uint64_t) {
      char c = 1;
      (void)!::write(ready[1], &c, 1);
      for (;;) ::pause();  // never finishes initialising
    });
    return 0;
  });
  char c;
  REQUIRE(::read(ready[0], &c, 1) == 1);

  // Still alive: a short open times out.
  mpp::NamedOptions quick;
  quick.init_timeout = 200ms;
  CHECK_THROWS_AS(Segment::open(name, mpp::Kind::test, mpp::type_info<std::uint64_t>(), quick),
                  mpp::TimeoutError);

  // Killed: the opener learns it within a poll interval, long before the (60 s) timeout.
  std::thread killer([&] {
    std::this_thread::sleep_for(100ms);
    ::kill(child, SIGKILL);
    mpp_test::wait_child(child);
  });
  mpp::NamedOptions patient;
  patient.init_timeout = 60s;
  const auto t0 = std::chrono::steady_clock::now();
  try {
    Segment::open(name, mpp::Kind::test, mpp::type_info<std::uint64_t>(), patient);
    FAIL("opened a half-built segment");
  } catch (const mpp::CorruptedError& e) {
    CHECK(std::string(e.what()).find("died while initialising") != std::string::npos);
  }
  CHECK(mpp_test::seconds_since(t0) < 5.0);
  killer.join();
  ::close(ready[0]);
  ::close(ready[1]);
  CHECK(mpp::unlink(name));
}

TEST_CASE("Segment: every corrupted header byte is rejected cleanly", "[segment]") {
  const auto name = unique_name("fuzzhdr");
  auto seg = Segment::create(name, spec_of(256));
  // A second, raw mapping plays the hostile peer.
  const int fd = ::shm_open(("/" + name).c_str(), O_RDWR, 0);
  REQUIRE(fd >= 0);
  struct stat st {};
  REQUIRE(::fstat(fd, &st) == 0);
  auto* raw = static_cast<unsigned char*>(::mmap(nullptr, static_cast<std::size_t>(st.st_size),
                                                 PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
  REQUIRE(raw != MAP_FAILED);
  mpp::NamedOptions opts;
  opts.init_timeout = 5ms;
  std::mt19937 rng(42);
  int rejected = 0, accepted = 0;
  // Every header field (the attach table after the payload only holds owner words).
  const std::size_t checked = sizeof(SegmentHeader);
  for (std::size_t i = 0; i < checked; ++i) {
    for (unsigned char v :
         {static_cast<unsigned char>(raw[i] ^ 0xFF), static_cast<unsigned char>(rng())}) {
      const unsigned char saved = raw[i];
      if (v == saved) continue;
      raw[i] = v;
      try {
        auto s = Segment::open(name, mpp::Kind::test, mpp::type_info<std::uint64_t>(), opts);
        // Accepted: only harmless fields may change (creation time, capacity, wait counters,
        // the tail of the type name after its NUL, the creator's start tag).
        REQUIRE(s.payload_size() == 256);
        ++accepted;
      } catch (const mpp::Error&) {
        ++rejected;
      }
      raw[i] = saved;
    }
  }
  CHECK(rejected > 0);
  CHECK(accepted > 0);
  // A truncated segment is rejected too.
  REQUIRE(::ftruncate(fd, static_cast<off_t>(sizeof(SegmentHeader) + 100)) == 0);
  CHECK_THROWS_AS(Segment::open(name, mpp::Kind::test, mpp::type_info<std::uint64_t>(), opts),
                  mpp::CorruptedError);
  REQUIRE(::ftruncate(fd, 100) == 0);
  CHECK_THROWS_AS(Segment::open(name, mpp::Kind::test, mpp::type_info<std::uint64_t>(), opts),
                  mpp::TimeoutError);
  ::munmap(raw, static_cast<std::size_t>(st.st_size));
  ::close(fd);
}

TEST_CASE("Segment: lifetime, creator unlinks, persistent keeps, mappings outlive the name",
          "[segment]") {
  const auto name = unique_name("life");
  {
    auto seg = Segment::create(name, spec_of());
    auto other = Segment::open(name, mpp::Kind::test, mpp::type_info<std::uint64_t>());
    CHECK(seg.unlink());
    CHECK_FALSE(shm_exists(name));
    // Both mappings still work after the name is gone, in this and in a forked process.
    const pid_t child = mpp_test::fork_child([&] {
      other.payload()[3] = std::byte{42};
      return 0;
    });
    CHECK(mpp_test::wait_child(child) == 0);
    CHECK(seg.payload()[3] == std::byte{42});
  }
  const auto kept = unique_name("persist");
  {
    mpp::NamedOptions o;
    o.persistent = true;
    auto seg = Segment::create(kept, spec_of(), {}, o);
  }
  CHECK(shm_exists(kept));
  CHECK(mpp::unlink(kept));
  // A forked copy of the creator's handle never unlinks.
  const auto inherited = unique_name("inherit");
  auto seg = Segment::create(inherited, spec_of());
  const pid_t child = mpp_test::fork_child([&] {
    Segment copy(std::move(seg));
    copy.close();
    return 0;
  });
  CHECK(mpp_test::wait_child(child) == 0);
  CHECK(shm_exists(inherited));
}

TEST_CASE("Segment: anonymous segments are inherited by forked children", "[segment]") {
  auto seg = Segment::create_anonymous(spec_of());
  CHECK(seg.name().rfind("mpp.anon.", 0) == 0);
  const pid_t child = mpp_test::fork_child([&] {
    seg.payload()[0] = std::byte{7};
    return 0;
  });
  CHECK(mpp_test::wait_child(child) == 0);
  CHECK(seg.payload()[0] == std::byte{7});
}

TEST_CASE("Segment: open_or_create, exactly one of many racing processes creates", "[segment]") {
  const auto name = unique_name("race");
  constexpr int kProcs = 6;
  std::vector<pid_t> kids;
  for (int i = 0; i < kProcs; ++i) {
    kids.push_back(mpp_test::fork_child([&] {
      auto [s, created] = Segment::open_or_create(name, spec_of(), [](std::byte* p, std::uint64_t) {
        std::this_thread::sleep_for(20ms);  // widen the window where others must wait
        p[0] = std::byte{99};
      });
      if (s.payload()[0] != std::byte{99}) return 50;
      s.set_persistent(true);
      return created ? 10 : 20;
    }));
  }
  int creators = 0, openers = 0;
  for (pid_t k : kids) {
    const int rc = mpp_test::wait_child(k);
    creators += rc == 10;
    openers += rc == 20;
  }
  CHECK(creators == 1);
  CHECK(openers == kProcs - 1);
  CHECK(mpp::unlink(name));
}

TEST_CASE("Segment: the attach table counts live users and reaps dead ones", "[segment]") {
  const auto name = unique_name("attach");
  auto seg = Segment::create(name, spec_of());
  CHECK(seg.live_users() == 1);
  int go[2];
  REQUIRE(::pipe(go) == 0);
  const pid_t child = mpp_test::fork_child([&] {
    auto s = Segment::open(name, mpp::Kind::test, mpp::type_info<std::uint64_t>());
    char c = 1;
    (void)!::write(go[1], &c, 1);
    for (;;) ::pause();
    return 0;
  });
  char c;
  REQUIRE(::read(go[0], &c, 1) == 1);
  CHECK(seg.live_users() == 2);
  ::kill(child, SIGKILL);
  CHECK(mpp_test::wait_child(child) == -SIGKILL);
  CHECK(seg.live_users() == 1);
  ::close(go[0]);
  ::close(go[1]);
}

TEST_CASE("Segment: process liveness is not fooled by pid reuse or zombies", "[segment]") {
  using mpp::detail::ProcessRef;
  const ProcessRef me = ProcessRef::self();
  CHECK(me.alive());
  CHECK(ProcessRef::unpack(me.pack()) == me);
  // Same pid, another start time: the process that had this pid is gone.
  CHECK_FALSE(ProcessRef{me.pid, me.start_tag + 1}.alive());
  CHECK_FALSE(ProcessRef{}.alive());
  // A forked child answers for itself from its own identity, not its parent's cached one.
  const pid_t checker = mpp_test::fork_child([me] {
    const ProcessRef self = ProcessRef::self();
    const bool ok = self.pid != me.pid && self.alive() && me.alive() &&
                    !ProcessRef{self.pid, self.start_tag + 1}.alive();
    return ok ? 0 : 1;
  });
  CHECK(mpp_test::wait_child(checker) == 0);
  const pid_t child = mpp_test::fork_child([] {
    for (;;) ::pause();
    return 0;
  });
  const ProcessRef kid{
      child, static_cast<std::uint32_t>(mpp::detail::os::process_start_time(child).value_or(0))};
  CHECK(kid.alive());
  ::kill(child, SIGKILL);
  // Killed but not reaped (a zombie): already dead.
  for (int i = 0; i < 1000 && kid.alive(); ++i) std::this_thread::sleep_for(1ms);
  CHECK_FALSE(kid.alive());
  mpp_test::wait_child(child);
  CHECK_FALSE(kid.alive());
}

TEST_CASE("Segment: WaitPoint wakes a sleeper in another process and honours timeouts",
          "[segment]") {
  struct Shared {
    mpp::detail::WaitPoint wp;
    std::atomic<std::uint32_t> flag;
  };
  auto seg = Segment::create_anonymous(spec_of(sizeof(Shared)));
  auto* sh = reinterpret_cast<Shared*>(seg.payload());
  // Timeout with nobody notifying.
  const auto t0 = std::chrono::steady_clock::now();
  CHECK_FALSE(
      sh->wp.wait([&] { return sh->flag.load() != 0; }, mpp::detail::Deadline::after(150ms)));
  CHECK(mpp_test::seconds_since(t0) >= 0.14);
  // A child sleeps until the parent sets the flag.
  const pid_t child = mpp_test::fork_child([&] {
    const bool ok =
        sh->wp.wait([&] { return sh->flag.load() == 1; }, mpp::detail::Deadline::after(30s));
    sh->flag.store(2);
    sh->wp.notify_all();
    return ok ? 0 : 1;
  });
  std::this_thread::sleep_for(50ms);
  sh->flag.store(1);
  sh->wp.notify_all();
  CHECK(sh->wp.wait([&] { return sh->flag.load() == 2; }, mpp::detail::Deadline::after(30s)));
  CHECK(mpp_test::wait_child(child) == 0);
  // The liveness check runs while sleeping and may abort the wait.
  int checks = 0;
  CHECK_THROWS_AS(sh->wp.wait([] { return false; }, mpp::detail::Deadline::never(),
                              [&] {
                                if (++checks == 2) throw mpp::EOFError("peer died");
                              }),
                  mpp::EOFError);
}
#endif  // MPP_OS_POSIX

// ---- users: many per object, one entry per process (read through the POSIX registry) -------
#if defined(MPP_OS_POSIX)

TEST_CASE("Segment: users, 5000 handles of one Value in one process share one attach entry",
          "[segment][users]") {
  namespace reg = mpp::detail::registry;
  const auto name = unique_name("users.value");
  auto v = mpp::Value<int>::create(name, 0);
  {
    std::vector<mpp::Value<int>> handles;
    handles.reserve(5000);
    for (int i = 0; i < 5000; ++i) handles.push_back(mpp::Value<int>::open(name));
    for (auto& h : handles) h.set(h.value() + 1);
    CHECK(v.value() == 5000);
    auto o = reg::inspect(name);
    CHECK(o.attachers.size() == 1);  // the creator's handle and the 5000 opened ones
    CHECK(o.attach_used == 1);
    // A forked child that opens the object takes an entry of its own (it does not count on the
    // parent's, which it inherited), shared by its handles; they going away do not free the
    // parent's entry.
    const pid_t child = mpp_test::fork_child([&] {
      handles[17].set(handles[17].value() + 1);
      auto mine = mpp::Value<int>::open(name);
      {
        auto again = mpp::Value<int>::open(name);
        again.set(again.value() + 1);
        const auto seen = reg::inspect(name);
        if (seen.attachers.size() != 2) return 10 + static_cast<int>(seen.attachers.size());
      }
      const auto seen = reg::inspect(name);  // `mine` keeps the child's entry
      return seen.attachers.size() == 2 ? 0 : 20 + static_cast<int>(seen.attachers.size());
    });
    CHECK(mpp_test::wait_child(child) == 0);
    CHECK(v.value() == 5002);
    o = reg::inspect(name);
    CHECK(reg::live_users(o).size() == 1);
  }
  // The 5000 handles are gone; the creator's handle still holds this process's entry.
  const auto o = reg::inspect(name);
  REQUIRE(o.attachers.size() >= 1);
  CHECK(o.attachers[0].who == mpp::detail::ProcessRef::self());
  CHECK(reg::live_users(o).size() == 1);
}

TEST_CASE(
    "Segment: users, the last handle of a process frees its entry; other processes keep theirs",
    "[segment][users]") {
  namespace reg = mpp::detail::registry;
  const auto name = unique_name("users.release");
  auto seg = Segment::create(name, spec_of());
  seg.set_persistent(true);  // so that the name outlives the creator's handle below
  {
    auto a = Segment::open(name, mpp::Kind::test, mpp::type_info<std::uint64_t>());
    auto b = Segment::open(name, mpp::Kind::test, mpp::type_info<std::uint64_t>());
    CHECK(a.attach_index() == seg.attach_index());
    CHECK(b.attach_index() == seg.attach_index());
    seg.close();  // the other two handles keep the entry
    CHECK(a.live_users() == 1);
    a.close();
    CHECK(b.live_users() == 1);
  }
  // All three closed: the entry is free again.
  const auto o = reg::inspect(name);
  CHECK(o.attachers.empty());
  CHECK(o.attach_used == 1);
  CHECK(mpp::unlink(name));
}
#endif  // MPP_OS_POSIX
