// The object registry (detail/registry.hpp) and the `mpp` tool: ls shows live objects with their
// kind and element type, gc removes exactly the objects whose every registered user is dead
// (never one with a live user, forked non-creators included), --dry-run removes nothing, and
// hostile files (truncated, corrupt, planted links) are described without being trusted.
#include <mpp/detail/registry.hpp>
#include <mpp/queue.hpp>
#include <mpp/segment.hpp>
#include <mpp/shared_memory.hpp>
#include <mpp/version.hpp>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>

#include <cstdio>
#include <cstring>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "helpers.hpp"

using namespace std::chrono_literals;
using mpp::detail::Segment;
using mpp::detail::SegmentSpec;
namespace reg = mpp::detail::registry;

namespace {

bool shm_exists(const std::string& name) {
  struct stat st {};
  return ::lstat(("/dev/shm/" + name).c_str(), &st) == 0;
}

std::optional<reg::ObjectInfo> find(const std::vector<reg::ObjectInfo>& all,
                                    const std::string& name) {
  for (const auto& o : all)
    if (o.name == name) return o;
  return std::nullopt;
}

const reg::GcEntry* find(const std::vector<reg::GcEntry>& all, const std::string& name) {
  for (const auto& e : all)
    if (e.info.name == name) return &e;
  return nullptr;
}

/// A child process that runs `setup` (which opens/creates something), reports readiness, then
/// sleeps until killed.
struct Holder {
  pid_t pid = -1;
  template <class F>
  explicit Holder(F&& setup) {
    int p[2];
    REQUIRE(::pipe(p) == 0);
    pid = mpp_test::fork_child([&] {
      ::close(p[0]);
      auto keep = setup();
      char c = 1;
      (void)!::write(p[1], &c, 1);
      for (;;) ::pause();
      return 0;
    });
    ::close(p[1]);
    char c = 0;
    REQUIRE(::read(p[0], &c, 1) == 1);
    ::close(p[0]);
  }
  void kill() {
    ::kill(pid, SIGKILL);
    CHECK(mpp_test::wait_child(pid) == -SIGKILL);
  }
};

SegmentSpec queue_spec() { return SegmentSpec{mpp::Kind::queue, mpp::type_info<int>(), 512, 16}; }

/// A test-local prefix, so gc never judges another test's objects.
std::string prefix_of(const std::string& name) { return name.substr(0, name.rfind('.') + 1); }

std::string run_tool(const std::string& args, int* status = nullptr) {
#ifdef MPP_TOOL_PATH
  std::string out;
  FILE* f = ::popen((std::string(MPP_TOOL_PATH) + " " + args + " 2>&1").c_str(), "r");
  REQUIRE(f != nullptr);
  char buf[4096];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) out.append(buf, n);
  const int st = ::pclose(f);
  if (status != nullptr) *status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return out;
#else
  (void)args;
  (void)status;
  return {};
#endif
}

}  // namespace

TEST_CASE("mpp tool: ls shows a live object with its kind, element type, creator and users",
          "[tools]") {
  const auto name = mpp_test::unique_name("ls.q");
  auto seg = Segment::create(name, queue_spec());
  const auto o = find(reg::scan(prefix_of(name)), name);
  REQUIRE(o.has_value());
  CHECK(o->state == reg::State::ready);
  CHECK(o->kind_label == "Queue");
  CHECK(o->type_name == "int");
  CHECK(o->capacity == 16);
  CHECK(o->payload_size == 512);
  CHECK(o->creator.pid == ::getpid());
  CHECK(o->stat.owned_by_us);
  CHECK(reg::live_users(*o).size() == 1);
  CHECK_FALSE(reg::gc_verdict(*o, mpp::detail::os::unix_time_ms()).remove);
}

TEST_CASE("mpp tool: ls shows a queue's depth", "[tools]") {
  const auto name = mpp_test::unique_name("ls.depth");
  auto q = mpp::Queue<int>::create(name, 8);
  for (int i = 0; i < 3; ++i) q.put(i);
  auto o = find(reg::scan(prefix_of(name)), name);
  REQUIRE(o.has_value());
  CHECK(o->kind_label == "Queue");
  CHECK(reg::queue_depth(*o) == std::optional<std::uint64_t>(3));
  (void)q.get();
  o = find(reg::scan(prefix_of(name)), name);
  CHECK(reg::queue_depth(*o) == std::optional<std::uint64_t>(2));
  // Not a queue, or implausible hints: no depth.
  auto seg = Segment::create(name + "x", queue_spec());  // a "Queue" segment without a queue inside
  o = find(reg::scan(prefix_of(name)), name + "x");
  REQUIRE(o.has_value());
  CHECK_FALSE(reg::queue_depth(*o).has_value());
#ifdef MPP_TOOL_PATH
  CHECK(run_tool("ls --prefix " + name).find(" 2  ready") != std::string::npos);
#endif
}

TEST_CASE("mpp tool: gc removes an object whose creator and users were all killed", "[tools]") {
  const auto name = mpp_test::unique_name("gc.dead");
  Holder creator([&] {
    auto s = Segment::create(name, queue_spec());
    return s;
  });
  Holder user1([&] { return Segment::open(name, mpp::Kind::queue, mpp::type_info<int>()); });
  Holder user2([&] { return Segment::open(name, mpp::Kind::queue, mpp::type_info<int>()); });
  auto before = find(reg::scan(prefix_of(name)), name);
  REQUIRE(before.has_value());
  CHECK(reg::live_users(*before).size() == 3);
  CHECK_FALSE(reg::gc_verdict(*before, mpp::detail::os::unix_time_ms()).remove);

  creator.kill();
  user1.kill();
  // One user left: kept, and the verdict names it.
  auto e = reg::gc(false, {}, prefix_of(name));
  REQUIRE(find(e, name) != nullptr);
  CHECK_FALSE(find(e, name)->removed);
  CHECK(find(e, name)->verdict.reason.find(std::to_string(user2.pid)) != std::string::npos);
  CHECK(shm_exists(name));

  user2.kill();
  // --dry-run: would remove, removes nothing.
  e = reg::gc(true, {}, prefix_of(name));
  REQUIRE(find(e, name) != nullptr);
  CHECK(find(e, name)->verdict.remove);
  CHECK_FALSE(find(e, name)->removed);
  CHECK(shm_exists(name));
  // For real.
  e = reg::gc(false, {}, prefix_of(name));
  REQUIRE(find(e, name) != nullptr);
  CHECK(find(e, name)->removed);
  CHECK_FALSE(shm_exists(name));
}

TEST_CASE(
    "mpp tool: gc keeps a persistent object whose users are gone, unless --include-persistent",
    "[tools]") {
  // Created persistent, an untracked SharedMemory (kept until unlink(), as in Python) and a
  // tracked one (removed by its last user, so garbage once they all died); then the creator dies.
  const auto kept = mpp_test::unique_name("persist");
  const auto untracked = mpp_test::unique_name("persist");
  const auto tracked = mpp_test::unique_name("persist");
  Holder creator([&] {
    mpp::NamedOptions o;
    o.persistent = true;
    auto a = std::make_shared<Segment>(Segment::create(kept, queue_spec(), {}, o));
    auto b = std::make_shared<mpp::SharedMemory>(untracked, true, 64, /*track=*/false);
    auto c = std::make_shared<mpp::SharedMemory>(tracked, true, 64, /*track=*/true);
    return std::make_tuple(a, b, c);
  });
  creator.kill();
  CHECK(reg::inspect(kept).persistent);
  CHECK(reg::inspect(untracked).persistent);
  CHECK_FALSE(reg::inspect(tracked).persistent);
  CHECK(run_tool("ls --prefix " + prefix_of(kept)).find("ready persistent") != std::string::npos);
  for (const auto& name : {kept, untracked}) {
    auto e = reg::gc(false, {}, prefix_of(name));
    REQUIRE(find(e, name) != nullptr);
    CHECK_FALSE(find(e, name)->removed);
    CHECK(find(e, name)->verdict.reason.find("persistent") != std::string::npos);
    CHECK(shm_exists(name));
  }
  auto e = reg::gc(false, {}, prefix_of(tracked));
  REQUIRE(find(e, tracked) != nullptr);
  CHECK(find(e, tracked)->removed);
  // Asked explicitly: the persistent ones go too (a dry run first removes nothing).
  int status = 0;
  CHECK(run_tool("gc --dry-run --include-persistent --prefix " + prefix_of(kept), &status)
            .find("would remove " + kept) != std::string::npos);
  CHECK(shm_exists(kept));
  reg::GcPolicy all;
  all.include_persistent = true;
  for (const auto& name : {kept, untracked}) {
    e = reg::gc(false, all, prefix_of(name));
    REQUIRE(find(e, name) != nullptr);
    CHECK(find(e, name)->removed);
    CHECK_FALSE(shm_exists(name));
  }
}

/// Forks a creator that runs `make()` (which creates the object `name` and returns its handle),
/// then forks a grandchild that runs `use(handle)` and stays alive; kills the creator. We become
/// the orphan's new parent (subreaper), so that we can reap it whatever init does with orphans.
/// Returns: the grandchild's pid.
template <class Make, class Use>
pid_t orphaned_user(Make make, Use use) {
  REQUIRE(::prctl(PR_SET_CHILD_SUBREAPER, 1) == 0);
  int p[2];
  REQUIRE(::pipe(p) == 0);
  const pid_t creator = mpp_test::fork_child([&] {
    auto handle = make();
    if (::fork() == 0) {
      use(handle);
      const pid_t me = ::getpid();
      (void)!::write(p[1], &me, sizeof me);
      for (;;) ::pause();
    }
    for (;;) ::pause();
    return 0;
  });
  pid_t user = 0;
  REQUIRE(::read(p[0], &user, sizeof user) == sizeof user);
  ::close(p[0]);
  ::close(p[1]);
  ::kill(creator, SIGKILL);
  CHECK(mpp_test::wait_child(creator) == -SIGKILL);
  return user;
}

TEST_CASE("mpp tool: gc keeps an object used by a live forked child that is not the creator",
          "[tools]") {
  const auto name = mpp_test::unique_name("gc.fork");
  // The creator forks a child that uses the inherited handle (claiming its own attach slot), then
  // the creator is killed: the child alone keeps the object alive.
  const pid_t user = orphaned_user([&] { return Segment::create(name, queue_spec()); },
                                   [](Segment& s) { (void)s.attach_index(); });

  auto e = reg::gc(false, {}, prefix_of(name));
  REQUIRE(find(e, name) != nullptr);
  CHECK_FALSE(find(e, name)->verdict.remove);
  CHECK(shm_exists(name));
  const auto o = find(reg::scan(prefix_of(name)), name);
  REQUIRE(o.has_value());
  const auto live = reg::live_users(*o);
  CHECK(live.size() == 1);
  CHECK((!live.empty() && live[0].pid == user));

  // The grandchild was reparented to us: kill and reap it.
  ::kill(user, SIGKILL);
  CHECK(mpp_test::wait_child(user) == -SIGKILL);
  e = reg::gc(false, {}, prefix_of(name));
  REQUIRE(find(e, name) != nullptr);
  CHECK(find(e, name)->removed);
  CHECK_FALSE(shm_exists(name));
}

TEST_CASE("mpp tool: gc keeps a queue that a live forked child uses without an attach slot",
          "[tools]") {
  // As above, but through a Queue handle: the child registers with the queue, not in the
  // segment's attach table. gc still sees that it has the object mapped.
  const auto name = mpp_test::unique_name("gc.forkq");
  const pid_t user = orphaned_user([&] { return mpp::Queue<int>::create(name, 4); },
                                   [](mpp::Queue<int>& q) {
                                     q.put(1);
                                     (void)q.get();
                                   });

  const auto o = find(reg::scan(prefix_of(name)), name);
  REQUIRE(o.has_value());
  CHECK(reg::live_users(*o).empty());  // nobody registered is alive ...
  auto e = reg::gc(false, {}, prefix_of(name));
  REQUIRE(find(e, name) != nullptr);
  CHECK_FALSE(find(e, name)->removed);  // ... but the child has it mapped
  CHECK(find(e, name)->verdict.reason.find(fmt::format("pid {}", user)) != std::string::npos);
  CHECK(shm_exists(name));

  ::kill(user, SIGKILL);
  CHECK(mpp_test::wait_child(user) == -SIGKILL);
  e = reg::gc(false, {}, prefix_of(name));
  REQUIRE(find(e, name) != nullptr);
  CHECK(find(e, name)->removed);
  CHECK_FALSE(shm_exists(name));
}

TEST_CASE("mpp tool: gc removes a half-built object only once its creator died", "[tools]") {
  const auto name = mpp_test::unique_name("gc.half");
  int p[2];
  REQUIRE(::pipe(p) == 0);
  const pid_t creator = mpp_test::fork_child([&] {
    Segment::create(name, queue_spec(), [&](std::byte*, std::uint64_t) {
      char c = 1;
      (void)!::write(p[1], &c, 1);
      for (;;) ::pause();  // never publishes
    });
    return 0;
  });
  char c;
  REQUIRE(::read(p[0], &c, 1) == 1);
  ::close(p[0]);
  ::close(p[1]);
  auto o = find(reg::scan(prefix_of(name)), name);
  REQUIRE(o.has_value());
  CHECK(o->state == reg::State::building);
  CHECK(o->creator.pid == creator);
  CHECK_FALSE(reg::gc_verdict(*o, mpp::detail::os::unix_time_ms()).remove);

  ::kill(creator, SIGKILL);
  CHECK(mpp_test::wait_child(creator) == -SIGKILL);
  auto e = reg::gc(false, {}, prefix_of(name));
  REQUIRE(find(e, name) != nullptr);
  CHECK(find(e, name)->removed);
  CHECK(find(e, name)->verdict.reason.find("half-built") != std::string::npos);
  CHECK_FALSE(shm_exists(name));
}

TEST_CASE("mpp tool: an object with no recorded creator is kept during the grace period",
          "[tools]") {
  // What a creator leaves between shm_open and its first write: an empty, then a zeroed file
  // (marked as an object with a header from its shm_open on).
  const auto name = mpp_test::unique_name("gc.empty");
  const int fd = ::shm_open(("/" + name).c_str(), O_RDWR | O_CREAT | O_EXCL,
                            0600 | mpp::detail::os::kModeHeadered);
  REQUIRE(fd >= 0);
  for (off_t size : {off_t{0}, off_t{sizeof(mpp::detail::SegmentHeader) + 64}}) {
    REQUIRE(::ftruncate(fd, size) == 0);
    auto o = find(reg::scan(prefix_of(name)), name);
    REQUIRE(o.has_value());
    CHECK(o->state == (size == 0 ? reg::State::empty : reg::State::building));
    const auto now = mpp::detail::os::unix_time_ms();
    CHECK_FALSE(reg::gc_verdict(*o, now).remove);        // fresh: kept
    CHECK(reg::gc_verdict(*o, now + 3'600'000).remove);  // an hour later: abandoned
    reg::GcPolicy no_grace;
    no_grace.grace_ms = 0;
    CHECK(reg::gc_verdict(*o, now + 1, no_grace).remove);
  }
  ::close(fd);
  reg::GcPolicy no_grace;
  no_grace.grace_ms = 0;
  std::this_thread::sleep_for(5ms);
  auto e = reg::gc(false, no_grace, prefix_of(name));
  REQUIRE(find(e, name) != nullptr);
  CHECK(find(e, name)->removed);
  CHECK_FALSE(shm_exists(name));
}

TEST_CASE(
    "mpp tool: gc right after a crash during creation: a creator provably dead needs no grace",
    "[tools]") {
  // What a creator killed between shm_open and its first header write leaves: an empty object
  // (a block, or one marked as having a header), or a zeroed header. An immediate restart must
  // be able to create the name again after `mpp gc`, without waiting out the grace period.
  struct Case {
    unsigned mark;
    off_t size;
  };
  const Case cases[] = {
      {mpp::detail::os::kModeHeadered, 0},
      {mpp::detail::os::kModeHeadered, off_t{sizeof(mpp::detail::SegmentHeader) + 64}},
      {0, 0}};
  for (const Case& c : cases) {
    const auto name = mpp_test::unique_name("gc.crashed");
    int p[2];
    REQUIRE(::pipe(p) == 0);
    const pid_t creator = mpp_test::fork_child([&] {
      const int fd = ::shm_open(("/" + name).c_str(), O_RDWR | O_CREAT | O_EXCL, 0600 | c.mark);
      if (fd < 0 || ::ftruncate(fd, c.size) != 0) return 1;
      char ready = 1;
      (void)!::write(p[1], &ready, 1);
      for (;;) ::pause();  // killed before it writes its identity
      return 0;
    });
    ::close(p[1]);
    char ready = 0;
    REQUIRE(::read(p[0], &ready, 1) == 1);
    ::close(p[0]);
    // Its creator holds it open: kept.
    auto e = reg::gc(false, {}, prefix_of(name));
    REQUIRE(find(e, name) != nullptr);
    CHECK_FALSE(find(e, name)->removed);
    CHECK(shm_exists(name));

    ::kill(creator, SIGKILL);
    CHECK(mpp_test::wait_child(creator) == -SIGKILL);
    e = reg::gc(false, {}, prefix_of(name));
    REQUIRE(find(e, name) != nullptr);
    CHECK(find(e, name)->removed);
    CHECK(find(e, name)->verdict.reason.find("died") != std::string::npos);
    CHECK_FALSE(shm_exists(name));
    if (c.mark != 0) {
      auto again = Segment::create(name, queue_spec());  // the restart
      CHECK(again.valid());
    } else {
      mpp::SharedMemory again = mpp::SharedMemory::create(name, 64);
      CHECK(again.size() == 64);
    }
  }
}

TEST_CASE("SharedMemory blocks: an empty one waits out the grace, a sized one needs a user",
          "[tools]") {
  // A block's creator takes its user lock before it sizes the block, so only an empty block can
  // have a creator that holds no lock yet.
  const auto name = mpp_test::unique_name("gc.block");
  const int fd = ::shm_open(("/" + name).c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
  REQUIRE(fd >= 0);
  auto o = find(reg::scan(prefix_of(name)), name);
  REQUIRE(o.has_value());
  CHECK(o->block);
  CHECK(o->state == reg::State::empty);
  const auto now = mpp::detail::os::unix_time_ms();
  CHECK_FALSE(reg::gc_verdict(*o, now).remove);
  CHECK(reg::gc_verdict(*o, now + 3'600'000).remove);
  REQUIRE(::ftruncate(fd, 4096) == 0);
  o = find(reg::scan(prefix_of(name)), name);
  CHECK(o->state == reg::State::ready);
  CHECK(o->kind_label == "SharedMemory");
  CHECK(o->total_size == 4096);
  CHECK(reg::gc_verdict(*o, now).remove);  // sized, and nobody holds it
  {
    mpp::SharedMemory user(name);
    o = find(reg::scan(prefix_of(name)), name);
    CHECK(o->lock_users == 1);
    CHECK_FALSE(reg::gc_verdict(*o, now).remove);
    CHECK(run_tool("ls --prefix " + prefix_of(name)).find("SharedMemory") != std::string::npos);
    CHECK(run_tool("inspect " + name).find("user locks:      1") != std::string::npos);
    ::close(fd);
  }
  CHECK_FALSE(shm_exists(name));  // the tracked handle was its last user
  mpp::ShareableList list = mpp::ShareableList::create(name, {std::int64_t{7}});
  o = find(reg::scan(prefix_of(name)), name);
  CHECK(o->kind_label == "ShareableList");
  CHECK(o->lock_users == 1);
}

TEST_CASE(
    "mpp tool: hostile files, corrupt headers, links and truncation are described, not trusted",
    "[tools]") {
  const auto name = mpp_test::unique_name("hostile.seg");
  auto seg = Segment::create(name, queue_spec());
  seg.set_persistent(true);
  const int fd = ::shm_open(("/" + name).c_str(), O_RDWR, 0);
  REQUIRE(fd >= 0);
  auto* h = &seg.header();

  // Garbage in every length/offset field: ls reports "corrupt", gc keeps it unless asked.
  h->payload_offset = ~std::uint64_t{0} - 7;
  auto o = find(reg::scan(prefix_of(name)), name);
  REQUIRE(o.has_value());
  CHECK(o->state == reg::State::corrupt);
  CHECK(o->problem.find("payload") != std::string::npos);
  h->payload_offset = 4096;
  h->magic = 0x1234;
  o = find(reg::scan(prefix_of(name)), name);
  CHECK(o->state == reg::State::corrupt);
  CHECK(o->problem.find("magic") != std::string::npos);
  // A type name without terminator and with control bytes is shown sanitised, never over-read.
  std::memset(h->type_name, '\x07', sizeof h->type_name);
  o = find(reg::scan(prefix_of(name)), name);
  CHECK(o->type_name == std::string(mpp::detail::kTypeNameCapacity - 1, '?'));
  CHECK_FALSE(reg::gc_verdict(*o, mpp::detail::os::unix_time_ms()).remove);

  // Truncated below a header: "empty", no creator to believe.
  REQUIRE(::ftruncate(fd, 100) == 0);
  o = find(reg::scan(prefix_of(name)), name);
  CHECK(o->state == reg::State::empty);
  CHECK_FALSE(o->header_readable);
  // Give the mapping its pages back (zero-filled) before our handle touches its attach slot.
  REQUIRE(::ftruncate(
              fd, static_cast<off_t>(mpp::detail::align_up(sizeof(mpp::detail::SegmentHeader), 64) +
                                     512)) == 0);
  ::close(fd);

  // A planted link: "foreign", never followed, never collected.
  const auto link = mpp_test::unique_name("hostile.link");
  REQUIRE(::symlink(("/dev/shm/" + name).c_str(), ("/dev/shm/" + link).c_str()) == 0);
  o = find(reg::scan(prefix_of(link)), link);
  REQUIRE(o.has_value());
  CHECK(o->state == reg::State::foreign);
  CHECK(o->problem.find("link") != std::string::npos);
  auto e = reg::gc(false, {}, prefix_of(link));
  REQUIRE(find(e, link) != nullptr);
  CHECK_FALSE(find(e, link)->removed);
  CHECK(shm_exists(link));
  CHECK(::unlink(("/dev/shm/" + link).c_str()) == 0);
  CHECK(seg.unlink());
}

TEST_CASE("mpp tool: the mpp binary: ls, inspect, gc --dry-run and gc", "[tools]") {
#ifndef MPP_TOOL_PATH
  SUCCEED("built without the mpp tool (MPP_BUILD_TOOLS=OFF)");
#else
  const auto prefix = mpp_test::unique_name("bin") + ".";
  const auto live = prefix + "live", dead = prefix + "dead";
  auto seg = Segment::create(live, SegmentSpec{mpp::Kind::value, mpp::type_info<double>(), 64, 1});
  Holder creator([&] { return Segment::create(dead, queue_spec()); });
  creator.kill();

  int status = -1;
  auto out = run_tool("ls --prefix " + prefix, &status);
  CHECK(status == 0);
  CHECK(out.find("NAME") != std::string::npos);
  CHECK(out.find(live) != std::string::npos);
  CHECK(out.find("Value") != std::string::npos);
  CHECK(out.find("double") != std::string::npos);
  CHECK(out.find(std::to_string(::getpid())) != std::string::npos);
  CHECK(out.find(dead) != std::string::npos);
  CHECK(out.find("Queue") != std::string::npos);

  out = run_tool("inspect " + live, &status);
  CHECK(status == 0);
  CHECK(out.find("kind:            Value") != std::string::npos);
  CHECK(out.find("alive") != std::string::npos);
  out = run_tool("inspect " + prefix + "nonexistent", &status);
  CHECK(status == 1);

  out = run_tool("gc --dry-run --prefix " + prefix, &status);
  CHECK(status == 0);
  CHECK(out.find("would remove " + dead) != std::string::npos);
  CHECK(out.find("would remove " + live) == std::string::npos);
  CHECK(shm_exists(dead));
  CHECK(shm_exists(live));

  out = run_tool("gc --prefix " + prefix, &status);
  CHECK(status == 0);
  CHECK(out.find("removed " + dead) != std::string::npos);
  CHECK_FALSE(shm_exists(dead));
  CHECK(shm_exists(live));

  CHECK(run_tool("frobnicate", &status).find("usage") != std::string::npos);
  CHECK(status == 2);
#endif
}

TEST_CASE("the mpp binary: --version prints MPP_VERSION_STRING, which matches the macros",
          "[tools]") {
  CHECK(std::string(MPP_VERSION_STRING) ==
        fmt::format("{}.{}.{}", MPP_VERSION_MAJOR, MPP_VERSION_MINOR, MPP_VERSION_PATCH));
#ifdef MPP_VERSION_FROM_CMAKE  // project(mpp VERSION ...), which CMakeLists.txt reads from the
                               // header
  CHECK(std::string(MPP_VERSION_STRING) == MPP_VERSION_FROM_CMAKE);
#endif
#ifndef MPP_TOOL_PATH
  SUCCEED("built without the mpp tool (MPP_BUILD_TOOLS=OFF)");
#else
  int status = -1;
  CHECK(run_tool("--version", &status) == fmt::format("mpp {}\n", MPP_VERSION_STRING));
  CHECK(status == 0);
#endif
}
