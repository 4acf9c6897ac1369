// SharedMemory and ShareableList: Python's semantics across forked and unrelated processes, the
// requested size (cpython#101623), the track rule (gh-82300), byte-exact strings and bytes
// (cpython#106939, #96779), and validation of what another process wrote.
#include <mpp/process.hpp>
#include <mpp/queue.hpp>
#include <mpp/shared_memory.hpp>
#include <mpp/shared_memory_manager.hpp>

#if defined(MPP_OS_POSIX)
#  include <fcntl.h>
#  include <signal.h>
#  include <sys/mman.h>
#  include <sys/stat.h>
#  include <unistd.h>
#  include <mpp/detail/registry.hpp>
#endif

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "helpers.hpp"

using mpp::Bytes;
using mpp::None;
using mpp::ShareableItem;
using mpp::ShareableList;
using mpp::SharedMemory;
using mpp_test::unique_name;
using namespace std::chrono_literals;

namespace {

bool shm_exists(const std::string& name) {
#if defined(MPP_OS_POSIX)
  struct stat st {};
  return ::stat(("/dev/shm/" + name).c_str(), &st) == 0;
#else  // Windows: a mapping's name exists while a handle to it is open
  try {
    (void)mpp::detail::os::shm_open_existing(name);
    return true;
  } catch (const mpp::NotFoundError&) {
    return false;
  }
#endif
}

Bytes bytes_of(std::string_view s) {
  const auto* p = reinterpret_cast<const std::byte*>(s.data());
  return Bytes(p, p + s.size());
}

}  // namespace

#if defined(MPP_OS_POSIX)  // forks, or needs POSIX unlink semantics
TEST_CASE("SharedMemory: create, write, attach from a forked child, read back", "[shared_memory]") {
  SharedMemory shm(unique_name("shm"), true, 100);
  CHECK(shm.size() == 100);  // what was asked for, not a page (cpython#101623)
  CHECK(shm.buf().size() == 100);
  for (std::size_t i = 0; i < 100; ++i) CHECK(shm.buf()[i] == std::byte{0});
  shm.buf()[0] = std::byte{42};
  const std::string name = shm.name();
  const pid_t child = mpp_test::fork_child([&] {
    SharedMemory other(name);  // attach by name, like SharedMemory(name=...)
    if (other.size() != 100 || other.buf()[0] != std::byte{42}) return 2;
    other.buf()[99] = std::byte{7};
    // The inherited handle works as well.
    shm.buf()[1] = std::byte{8};
    return 0;
  });
  CHECK(mpp_test::wait_child(child) == 0);
  CHECK(shm.buf()[99] == std::byte{7});
  CHECK(shm.buf()[1] == std::byte{8});
  CHECK(shm_exists(name));  // the child's leaving did not remove it: we still use it (gh-82300)
}
#endif  // MPP_OS_POSIX

TEST_CASE("[.] helper: SharedMemory in an unrelated process", "[.][shm-child]") {
  const char* name = std::getenv("MPP_TEST_OBJECT");
  if (name == nullptr) return;  // only meaningful when run_unrelated() starts it
  SharedMemory shm(name);
  REQUIRE(shm.size() == 3);
  REQUIRE(shm.buf()[0] == std::byte{'a'});
  shm.buf()[2] = std::byte{'z'};
}

TEST_CASE("SharedMemory: an unrelated process attaches by name", "[shared_memory]") {
  auto shm = SharedMemory::create(unique_name("unrel"), 3);
  shm.buf()[0] = std::byte{'a'};
  CHECK(mpp_test::run_unrelated("[shm-child]", shm.name()) == 0);
  CHECK(shm.buf()[2] == std::byte{'z'});
  CHECK(shm_exists(shm.name()));
}

#if defined(MPP_OS_POSIX)  // forks, or needs POSIX unlink semantics
TEST_CASE("SharedMemory: anonymous, close, unlink, errors", "[shared_memory]") {
  SharedMemory anon(64);
  CHECK(anon.name().rfind("mpp.anon.", 0) == 0);
  CHECK(anon.size() == 64);
  const std::string name = anon.name();
  {
    SharedMemory copy = anon;  // copies share one mapping
    copy.buf()[5] = std::byte{5};
    copy.close();
    CHECK_THROWS_AS(copy.buf(), mpp::ValueError);
    CHECK_FALSE(copy.is_open());
  }
  CHECK(anon.buf()[5] == std::byte{5});
  anon.unlink();
  CHECK_FALSE(shm_exists(name));
  CHECK_THROWS_AS(anon.unlink(), mpp::NotFoundError);  // Python: FileNotFoundError
  CHECK_THROWS_AS(SharedMemory(name), mpp::NotFoundError);
  CHECK(anon.buf()[5] == std::byte{5});  // the mapping outlives the name

  CHECK_THROWS_AS(SharedMemory(unique_name("zero"), true, 0), mpp::InvalidArgument);
  CHECK_THROWS_AS(SharedMemory("no-prefix", true, 8), mpp::InvalidArgument);
  CHECK_THROWS_AS(SharedMemory::open(unique_name("absent")), mpp::NotFoundError);
  const auto taken = unique_name("taken");
  SharedMemory first(taken, true, 8);
  CHECK_THROWS_AS(SharedMemory(taken, true, 8), mpp::ExistsError);
}

TEST_CASE("SharedMemory: kinds, a block is no other mpp object and no other object is a block",
          "[shared_memory]") {
  // An mpp object with a header is marked from its shm_open on: never attached as a block.
  const auto seg_name = unique_name("kind.seg");
  auto seg = mpp::detail::Segment::create(
      seg_name, {mpp::Kind::test, mpp::type_info<std::uint64_t>(), 64, 0});
  try {
    SharedMemory wrong(seg_name);
    FAIL("an mpp object with a header was attached as a SharedMemory");
  } catch (const mpp::TypeMismatchError& e) {
    CHECK(std::string(e.what()).find("is a test, not a SharedMemory") != std::string::npos);
  }
  // A block opened as an object with a header.
  SharedMemory block(unique_name("kind.block"), true, 4096);
  CHECK_THROWS_AS(
      mpp::detail::Segment::open(block.name(), mpp::Kind::test, mpp::type_info<std::uint64_t>()),
      mpp::TypeMismatchError);
  // A block that holds something else is not a ShareableList; a zeroed one that nobody else
  // holds is not one either (nobody is filling it).
  const auto zeroed = unique_name("kind.zeroed");
  SharedMemory(zeroed, true, 4096, /*track=*/false).close();
  CHECK_THROWS_AS(ShareableList::open(zeroed), mpp::CorruptedError);
  CHECK(mpp::unlink(zeroed));
  block.buf()[0] = std::byte{1};
  CHECK_THROWS_AS(ShareableList::open(block.name()), mpp::TypeMismatchError);
  SharedMemory tiny(unique_name("kind.tiny"), true, 3);
  CHECK_THROWS_AS(ShareableList::open(tiny.name()), mpp::TypeMismatchError);
  // As in Python, a ShareableList lives in a SharedMemory block, which opens as one.
  const auto list_name = unique_name("list");
  auto sl = ShareableList::create(list_name, {std::int64_t{1}});
  SharedMemory under(list_name);
  CHECK(under.size() ==
        sizeof(mpp::detail::ShareableListHeader) + sizeof(mpp::detail::SlotDesc) + 8);
}

TEST_CASE("SharedMemory: track, the last process to leave removes the name, never an earlier one",
          "[shared_memory]") {
  const auto name = unique_name("track");
  int to_child[2], to_parent[2];
  REQUIRE(::pipe(to_child) == 0);
  REQUIRE(::pipe(to_parent) == 0);
  auto creator = std::make_optional<SharedMemory>(name, true, 16);
  const pid_t child = mpp_test::fork_child([&] {
    creator.reset();  // drop the inherited copy: this process only uses its own attachment
    {
      SharedMemory mine(name);
      char c = 1;
      if (::write(to_parent[1], &c, 1) != 1) return 2;
      if (::read(to_child[0], &c, 1) != 1) return 3;  // the creator has let go now
      if (mine.buf()[0] != std::byte{9}) return 4;
    }  // last user: removes the name
    return shm_exists(name) ? 5 : 0;
  });
  char c = 0;
  REQUIRE(::read(to_parent[0], &c, 1) == 1);
  creator->buf()[0] = std::byte{9};
  creator.reset();  // the creator leaves first; the child is attached, so the name stays
  CHECK(shm_exists(name));
  REQUIRE(::write(to_child[1], &c, 1) == 1);
  CHECK(mpp_test::wait_child(child) == 0);
  CHECK_FALSE(shm_exists(name));
  for (int fd : {to_child[0], to_child[1], to_parent[0], to_parent[1]}) ::close(fd);
}

TEST_CASE(
    "SharedMemory: track, an attacher that exits does not remove a block the creator uses "
    "(gh-82300)",
    "[shared_memory]") {
  SharedMemory shm(unique_name("gh82300"), true, 8);
  const std::string name = shm.name();
  for (int round = 0; round < 2; ++round) {
    const pid_t child = mpp_test::fork_child([&] {
      SharedMemory other(name);  // track=true, like Python's default
      other.buf()[0] = std::byte{1};
      return 0;
    });
    CHECK(mpp_test::wait_child(child) == 0);
    CHECK(shm_exists(name));
    CHECK_NOTHROW(SharedMemory(name));
  }
  shm.close();  // the last user: the name goes
  CHECK_FALSE(shm_exists(name));
}

TEST_CASE("SharedMemory: track=false keeps the name until unlink; a dead user does not count",
          "[shared_memory]") {
  const auto name = unique_name("untracked");
  { SharedMemory shm(name, true, 8, /*track=*/false); }
  CHECK(shm_exists(name));
  {
    SharedMemory again(name);  // tracked attacher of an untracked block: the last user removes it
    const pid_t child = mpp_test::fork_child([&] {
      SharedMemory other(name);
      ::_exit(0);  // dies attached, without cleanup
      return 0;
    });
    CHECK(mpp_test::wait_child(child) == 0);
  }
  CHECK_FALSE(shm_exists(name));
}

#  if defined(MPP_OS_POSIX)
// On POSIX a handle counts as a user through a lock the kernel keeps: no pid table to go stale,
// no page of the mapping touched to attach.

TEST_CASE(
    "SharedMemory: users, attachers count until they leave or die; a creator that left does not",
    "[shared_memory][kill]") {
  const auto name = unique_name("users");
  auto creator = std::make_optional<SharedMemory>(name, true, 64);
  CHECK(creator->live_users() == 1);
  int ready[2], go[2];
  REQUIRE(::pipe(ready) == 0);
  REQUIRE(::pipe(go) == 0);
  std::vector<pid_t> kids;
  for (int i = 0; i < 3; ++i)
    kids.push_back(mpp_test::fork_child([&] {  // the inherited `creator` stays unused here
      SharedMemory mine(name);
      char c = 1;
      if (::write(ready[1], &c, 1) != 1 || ::read(go[0], &c, 1) != 1) return 2;
      return mine.buf()[0] == std::byte{5} ? 0 : 3;
    }));
  char c = 0;
  for (int i = 0; i < 3; ++i) REQUIRE(::read(ready[0], &c, 1) == 1);
  CHECK(creator->live_users() == 4);
  ::kill(kids[0], SIGKILL);
  CHECK(mpp_test::wait_child(kids[0]) == -SIGKILL);
  CHECK(creator->live_users() == 3);  // the kernel dropped the dead one's lock
  creator->buf()[0] = std::byte{5};
  creator.reset();  // the creator leaves first: two users remain, the name stays
  REQUIRE(shm_exists(name));
  {
    SharedMemory probe(name);
    CHECK(probe.live_users() == 3);  // the two children and the probe, not the creator
    for (int i = 0; i < 2; ++i) REQUIRE(::write(go[1], &c, 1) == 1);
    for (std::size_t i = 1; i < 3; ++i) CHECK(mpp_test::wait_child(kids[i]) == 0);
    CHECK(shm_exists(name));  // the probe still uses it
    CHECK(probe.live_users() == 1);
  }
  CHECK_FALSE(shm_exists(name));  // the probe was the last user
  for (int fd : {ready[0], ready[1], go[0], go[1]}) ::close(fd);
}

TEST_CASE(
    "SharedMemory: users, a forked child counts once it uses the inherited handle, not before",
    "[shared_memory]") {
  const auto name = unique_name("inherit");
  auto shm = std::make_optional<SharedMemory>(name, true, 8);
  int ready[2], go[2];
  REQUIRE(::pipe(ready) == 0);
  REQUIRE(::pipe(go) == 0);
  const pid_t idle = mpp_test::fork_child([&] {  // never touches its copy of the handle
    char c;
    return ::read(go[0], &c, 1) == 1 ? 0 : 2;
  });
  const pid_t busy = mpp_test::fork_child([&] {
    shm->buf()[0] = std::byte{7};  // the inherited handle: this child is a user now
    char c = 1;
    if (::write(ready[1], &c, 1) != 1 || ::read(go[0], &c, 1) != 1) return 2;
    shm.reset();  // the last user: removes the name
    return shm_exists(name) ? 3 : 0;
  });
  char c = 0;
  REQUIRE(::read(ready[0], &c, 1) == 1);
  CHECK(shm->live_users() == 2);  // the creator and the busy child; the idle one does not count
  CHECK(shm->buf()[0] == std::byte{7});
  shm.reset();  // the creator leaves while the busy child uses the block
  CHECK(shm_exists(name));
  REQUIRE(::write(go[1], &c, 1) == 1);
  // Whichever child read the byte, both finish: give the other one its byte too.
  REQUIRE(::write(go[1], &c, 1) == 1);
  CHECK(mpp_test::wait_child(busy) == 0);
  CHECK(mpp_test::wait_child(idle) == 0);
  CHECK_FALSE(shm_exists(name));
  for (int fd : {ready[0], ready[1], go[0], go[1]}) ::close(fd);
}

TEST_CASE(
    "SharedMemory: users, threads of a forked child that first use the inherited handle at once "
    "make "
    "one user",
    "[shared_memory]") {
  SharedMemory shm(unique_name("threads"), true, 64);
  const pid_t child = mpp_test::fork_child([&] {
    std::atomic<bool> go{false};
    std::vector<std::thread> threads;
    for (int t = 0; t < 8; ++t)
      threads.emplace_back([&, t] {
        while (!go.load()) std::this_thread::yield();
        shm.buf()[static_cast<std::size_t>(t)] = std::byte{1};
      });
    go.store(true);
    for (auto& th : threads) th.join();
    return shm.live_users() == 2 ? 0 : 10 + static_cast<int>(shm.live_users());
  });
  CHECK(mpp_test::wait_child(child) == 0);
  CHECK(shm.live_users() == 1);  // the child's lock went with it
  for (std::size_t t = 0; t < 8; ++t) CHECK(shm.buf()[t] == std::byte{1});
}

TEST_CASE("SharedMemory: users, an unused inherited attachment does not keep the name",
          "[shared_memory]") {
  SharedMemory creator(unique_name("inherit2"), true, 8);
  const std::string name = creator.name();
  auto attached = std::make_optional<SharedMemory>(name);
  creator.close();  // the creating handle leaves; `attached` is the only user
  int go[2];
  REQUIRE(::pipe(go) == 0);
  const pid_t idle = mpp_test::fork_child([&] {  // inherits `attached`, never uses it
    char c;
    return ::read(go[0], &c, 1) == 1 ? 0 : 2;
  });
  attached.reset();  // the last user leaves while the idle child still holds the copy
  CHECK_FALSE(shm_exists(name));
  char c = 0;
  REQUIRE(::write(go[1], &c, 1) == 1);
  CHECK(mpp_test::wait_child(idle) == 0);
  for (int fd : go) ::close(fd);
}

TEST_CASE(
    "SharedMemory: attaching while the creator is still sizing the block: found whole or not at "
    "all",
    "[shared_memory]") {
  // The creator takes its user lock, then sizes the file: an opener in between sees an empty
  // file and waits; it never reports corruption, and never sees another size.
  const std::string base = unique_name("race");
  constexpr int kRounds = 200;
  int go[2];
  REQUIRE(::pipe(go) == 0);
  const pid_t creator = mpp_test::fork_child([&] {
    ::close(go[1]);  // a parent that fails or dies ends our reads (EOF) instead of blocking them
    char c;
    if (::read(go[0], &c, 1) != 1) return 2;
    std::vector<SharedMemory> made;
    for (int i = 0; i < kRounds; ++i) {
      made.emplace_back(base + "." + std::to_string(i), true, 4096 + i);
      made.back().buf()[0] = std::byte{1};
    }
    return ::read(go[0], &c, 1) == 1 ? 0 : 3;  // keep them until the opener is done
  });
  char c = 0;
  REQUIRE(::write(go[1], &c, 1) == 1);
  int opened = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < kRounds; ++i) {
    const std::string name = base + "." + std::to_string(i);
    for (;;) {
      if (mpp_test::seconds_since(t0) > 60) FAIL("block " << i << " never appeared");
      try {
        SharedMemory shm(name);
        CHECK(shm.size() == static_cast<std::size_t>(4096 + i));
        ++opened;
        break;
      } catch (const mpp::NotFoundError&) {  // not created yet
      }
    }
  }
  CHECK(opened == kRounds);
  REQUIRE(::write(go[1], &c, 1) == 1);
  CHECK(mpp_test::wait_child(creator) == 0);
  for (int fd : go) ::close(fd);
}

TEST_CASE(
    "SharedMemory: an opener waits for a block that is not sized yet; an abandoned empty one is an "
    "error",
    "[shared_memory]") {
  // What a creator leaves between its user lock and ftruncate, built here by hand: sized 100 ms
  // after the opener started.
  namespace os = mpp::detail::os;
  const std::string late = unique_name("late");
  os::Fd creator(::shm_open(("/" + late).c_str(), O_RDWR | O_CREAT | O_EXCL, 0600));
  REQUIRE(creator.valid());
  std::uint32_t slot = 0;
  REQUIRE(os::take_user_lock(creator, 7, slot) == 0);
  const pid_t sizer = mpp_test::fork_child([&] {
    ::usleep(100'000);
    return ::ftruncate(creator.get(), 100) == 0 ? 0 : 2;
  });
  const auto t0 = std::chrono::steady_clock::now();
  {
    SharedMemory opened(late);  // waits for the size instead of calling the block corrupt
    CHECK(opened.size() == 100);
    CHECK(mpp_test::seconds_since(t0) > 0.05);
  }
  CHECK(mpp_test::wait_child(sizer) == 0);
  creator.reset();
  mpp::unlink(late);

  // Nobody holds an empty block: its creator died before sizing it.
  const std::string abandoned = unique_name("abandoned");
  os::Fd dead(::shm_open(("/" + abandoned).c_str(), O_RDWR | O_CREAT | O_EXCL, 0600));
  REQUIRE(dead.valid());
  try {
    SharedMemory never(abandoned);
    FAIL("an empty block that nobody holds was attached");
  } catch (const mpp::CorruptedError& e) {
    CHECK(std::string(e.what()).find("mpp::unlink") != std::string::npos);
  }
  mpp::unlink(abandoned);
}

TEST_CASE("SharedMemory: Python's SharedMemory attaches to an mpp block, and mpp to Python's",
          "[shared_memory]") {
  if (std::system("python3 -c 'import multiprocessing.shared_memory' >/dev/null 2>&1") != 0) {
    WARN("python3 with multiprocessing.shared_memory is not installed; skipped");
    return;
  }
  SharedMemory mine(unique_name("py"), true, 100);
  std::memcpy(mine.buf().data(), "hello", 5);
  const std::string theirs = mine.name() + ".py";
  // Python before 3.13 registers an attached block with its resource tracker, which would remove
  // it at exit (gh-82300): unregister it, as Python's own documentation advises.
  const std::string script =
      "import sys\n"
      "from multiprocessing import shared_memory, resource_tracker\n"
      "a = shared_memory.SharedMemory(name=sys.argv[1])\n"
      "resource_tracker.unregister(a._name, 'shared_memory')\n"
      "assert a.size == 100, a.size\n"
      "assert bytes(a.buf[:5]) == b'hello'\n"
      "a.buf[5:10] = b'world'\n"
      "a.close()\n"
      "b = shared_memory.SharedMemory(name=sys.argv[2], create=True, size=10)\n"
      "resource_tracker.unregister(b._name, 'shared_memory')\n"
      "b.buf[:3] = b'abc'\n"
      "b.close()\n";
  const std::string path = "/tmp/" + unique_name("py") + ".py";
  {
    FILE* f = std::fopen(path.c_str(), "w");
    REQUIRE(f != nullptr);
    std::fputs(script.c_str(), f);
    std::fclose(f);
  }
  CHECK(std::system(("python3 " + path + " " + mine.name() + " " + theirs).c_str()) == 0);
  std::remove(path.c_str());
  CHECK(std::memcmp(mine.buf().data(), "helloworld", 10) == 0);
  SharedMemory py(theirs);
  CHECK(py.size() == 10);
  CHECK(std::memcmp(py.buf().data(), "abc", 3) == 0);
}

TEST_CASE(
    "SharedMemory: users, many handles (the attach table held 128), a dead creator, gc's view",
    "[shared_memory]") {
  const auto name = unique_name("many");
  const pid_t maker = mpp_test::fork_child([&] {
    SharedMemory shm(name, true, 16);
    shm.buf()[3] = std::byte{3};
    ::_exit(0);  // dies without leaving: its name stays
    return 0;
  });
  REQUIRE(mpp_test::wait_child(maker) == 0);
  REQUIRE(shm_exists(name));
  {
    std::vector<SharedMemory> handles;
    for (int i = 0; i < 200; ++i) handles.emplace_back(name);
    CHECK(handles.front().live_users() == 200);  // the dead creator is not counted
    CHECK(handles.back().buf()[3] == std::byte{3});
    const auto o = mpp::detail::registry::inspect(name);
    CHECK(o.lock_users == 200);
    CHECK_FALSE(mpp::detail::registry::gc_verdict(o, mpp::detail::os::unix_time_ms()).remove);
    handles.erase(handles.begin() + 1, handles.end());
    CHECK(handles.front().live_users() == 1);
  }
  CHECK_FALSE(shm_exists(name));  // the last handle removed it
}
#  endif  // MPP_OS_POSIX

TEST_CASE("ShareableList: every kind round-trips byte-exact", "[shared_memory][shareable_list]") {
  const std::vector<ShareableItem> items = {std::int64_t{-5},
                                            3.25,
                                            true,
                                            false,
                                            None{},
                                            std::string("a\0\0", 3),
                                            std::string("\0", 1),
                                            std::string("héllo→"),
                                            bytes_of(std::string_view("\0\0", 2)),
                                            std::string(),
                                            Bytes{},
                                            std::int64_t{INT64_MIN}};
  ShareableList sl(items);
  REQUIRE(sl.size() == items.size());
  CHECK(sl.to_vector() == items);
  CHECK(std::get<std::string>(sl.get(5)).size() == 3);
  CHECK(std::get<std::string>(sl[7].get()) == "héllo→");
  CHECK(std::get<Bytes>(sl.get(8)).size() == 2);
  CHECK(sl.get(-1) == ShareableItem{std::int64_t{INT64_MIN}});
  CHECK(sl.capacity(7) == 16);  // "héllo→" is 9 bytes: Python's 8 * (n / 8 + 1), in bytes
  CHECK(sl.count(None{}) == 1);
  CHECK(sl.index(ShareableItem{true}) == 2);
  CHECK_THROWS_AS(sl.index(ShareableItem{std::string("absent")}), mpp::ValueError);

  // Across processes, by name and through the inherited handle.
  const std::string name = sl.name();
  const pid_t child = mpp_test::fork_child([&] {
    auto other = ShareableList::open(name);
    if (other.to_vector() != items) return 2;
    other[0] = std::int64_t{99};
    other[5] = std::string("b\0", 2);
    sl[8] = bytes_of(std::string_view("\0x\0", 3));
    return 0;
  });
  CHECK(mpp_test::wait_child(child) == 0);
  CHECK(sl.get(0) == ShareableItem{std::int64_t{99}});
  CHECK(sl.get(5) == ShareableItem{std::string("b\0", 2)});
  CHECK(sl.get(8) == ShareableItem{bytes_of(std::string_view("\0x\0", 3))});
}
#endif  // MPP_OS_POSIX

TEST_CASE("ShareableList: fixed slots, Python's errors", "[shared_memory][shareable_list]") {
  auto sl = ShareableList::create(unique_name("slots"), {std::int64_t{1}, std::string("abc")});
  sl[0] = "12345678";  // a scalar slot holds any value of up to 8 bytes, as in Python
  CHECK(sl[0] == "12345678");
  CHECK_THROWS_AS(sl[0] = "123456789", mpp::ValueError);
  sl[1] = 2.5;  // kinds may change
  CHECK(sl.get(1) == ShareableItem{2.5});
  CHECK_THROWS_AS(sl[1] = std::string(9, 'x'), mpp::ValueError);  // "abc" reserved 8 bytes
  CHECK(sl.get(1) == ShareableItem{2.5});                         // unchanged after the error
  sl[1] = None{};
  CHECK(sl.get(1) == ShareableItem{None{}});
  CHECK_THROWS_AS(sl.get(2), mpp::IndexError);
  CHECK_THROWS_AS(sl.get(-3), mpp::IndexError);
  ShareableList empty(std::vector<ShareableItem>{});
  CHECK(empty.size() == 0);
  CHECK(empty.to_vector().empty());
}

TEST_CASE("[.] helper: ShareableList in an unrelated process", "[.][list-child]") {
  const char* name = std::getenv("MPP_TEST_OBJECT");
  if (name == nullptr) return;  // only meaningful when run_unrelated() starts it
  auto sl = ShareableList::open(name);
  REQUIRE(sl.get(0) == ShareableItem{std::string("héllo→")});
  sl[1] = bytes_of(std::string_view("\0\0", 2));
}

TEST_CASE("ShareableList: an unrelated process attaches by name",
          "[shared_memory][shareable_list]") {
  auto sl = ShareableList::create(unique_name("unrel-list"), {std::string("héllo→"), None{}});
  CHECK(mpp_test::run_unrelated("[list-child]", sl.name()) == 0);
  CHECK(sl.get(1) == ShareableItem{bytes_of(std::string_view("\0\0", 2))});
}

TEST_CASE("ShareableList: corrupted tables are errors, not reads out of bounds",
          "[shared_memory][shareable_list]") {
  auto sl = ShareableList::create(unique_name("corrupt"), {std::string("abc"), std::int64_t{1}});
  // The block behind the list, as a hostile peer sees it.
  SharedMemory raw(sl.name());
  auto* payload = raw.buf().data();
  auto* table =
      reinterpret_cast<mpp::detail::SlotDesc*>(payload + sizeof(mpp::detail::ShareableListHeader));
  SECTION("a length beyond the slot") {
    table[0].tag = (std::uint64_t{100} << 32) | 4;
    CHECK_THROWS_AS(sl.get(0), mpp::CorruptedError);
  }
  SECTION("a slot outside the data area") {
    table[1].offset = 1 << 20;
    CHECK_THROWS_AS(sl.get(1), mpp::CorruptedError);
    CHECK_THROWS_AS(sl[1] = std::int64_t{2}, mpp::CorruptedError);
  }
  SECTION("an unknown kind and a bad bool") {
    table[0].tag = 77;
    CHECK_THROWS_AS(sl.get(0), mpp::CorruptedError);
    table[1].tag = 3;  // bool
    std::memset(
        payload + sizeof(mpp::detail::ShareableListHeader) + 2 * sizeof(mpp::detail::SlotDesc) + 8,
        5, 1);
    CHECK_THROWS_AS(sl.get(1), mpp::CorruptedError);
  }
  SECTION("a slot count that does not fit") {
    reinterpret_cast<mpp::detail::ShareableListHeader*>(payload)->count = 1000;
    CHECK_THROWS_AS(ShareableList::open(sl.name()), mpp::CorruptedError);
  }
}

TEST_CASE("SharedMemory: and ShareableList cross processes as their names (codec)",
          "[shared_memory]") {
  static_assert(mpp::Encodable<SharedMemory> && mpp::Encodable<ShareableList>);
  SharedMemory shm(8);
  auto other = mpp::decode<SharedMemory>(mpp::encode(shm));
  other.buf()[3] = std::byte{3};
  CHECK(shm.buf()[3] == std::byte{3});
  ShareableList sl{std::int64_t{1}};
  auto sl2 = mpp::decode<ShareableList>(mpp::encode(sl));
  sl2[0] = 2.0;
  CHECK(sl.get(0) == ShareableItem{2.0});
}

#if defined(MPP_OS_POSIX)
TEST_CASE("SharedMemory: blocks created, attached and closed from several threads at once (tsan)",
          "[shared_memory][tsan]") {
  // The threads race on the first open of the /dev/shm descriptor, on the SIGBUS guard's table
  // and on the fork-hook registry; every block must read back what was written and be gone after.
  const int old_dir = mpp::detail::os::posix_detail::g_shm_dir.exchange(-1);
  if (old_dir >= 0) ::close(old_dir);
  constexpr int kThreads = 4, kEach = 100;
  const std::string base = unique_name("threads");
  std::atomic<int> bad{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) {
        const std::string name = base + "." + std::to_string(t) + "." + std::to_string(i);
        SharedMemory made(name, true, 4096);
        const auto at = static_cast<std::size_t>(i);
        made.buf()[at] = static_cast<std::byte>(t + 1);
        SharedMemory seen(name);
        if (seen.buf()[at] != static_cast<std::byte>(t + 1) || seen.live_users() != 2) ++bad;
      }
    });
  for (auto& th : threads) th.join();
  CHECK(bad.load() == 0);
  for (int t = 0; t < kThreads; ++t)
    for (int i = 0; i < kEach; i += 33)
      CHECK_FALSE(
          mpp::detail::os::shm_lstat(base + "." + std::to_string(t) + "." + std::to_string(i))
              .exists);
}
#endif  // MPP_OS_POSIX

TEST_CASE(
    "SharedMemory: an empty name is refused as by every other kind; the anonymous form is separate",
    "[shared_memory]") {
  // Python: SharedMemory(name=None, create=True) is anonymous; a name, when given, is a name.
  CHECK_THROWS_AS(SharedMemory("", true, 16), mpp::InvalidArgument);
  CHECK_THROWS_AS(SharedMemory::create("", 16), mpp::InvalidArgument);
  CHECK_THROWS_AS(SharedMemory(""), mpp::InvalidArgument);
  CHECK_THROWS_AS(ShareableList::create("", {std::int64_t{1}}), mpp::InvalidArgument);
  SharedMemory anon(16);  // the anonymous forms still work
  CHECK(anon.name().rfind("mpp.anon.", 0) == 0);
  ShareableList list{std::int64_t{1}};
  CHECK(list.name().rfind("mpp.anon.", 0) == 0);
}

TEST_CASE("SharedMemory: ShareableList out of range is mpp::IndexError, also for references",
          "[shared_memory][shareable_list]") {
  ShareableList sl{std::int64_t{1}, 2.5};
  CHECK_THROWS_AS(sl[2], mpp::IndexError);
  CHECK_THROWS_AS(sl[-3], mpp::IndexError);
  CHECK_THROWS_AS(sl.set(5, None{}), mpp::IndexError);
  CHECK_THROWS_AS(sl.capacity(2), mpp::IndexError);
  CHECK_THROWS_WITH(sl.get(9), Catch::Matchers::Contains(sl.name()));
  CHECK(sl.get(-1) == ShareableItem{2.5});
}

#if defined(MPP_OS_POSIX)
namespace {
// A peer (same user) that truncates the object `name` to `size` bytes; returns its exit code.
int truncate_from_another_process(const std::string& name, off_t size) {
  return mpp_test::wait_child(mpp_test::fork_child([&] {
    const int fd = ::shm_open(("/" + name).c_str(), O_RDWR, 0);
    return fd >= 0 && ::ftruncate(fd, size) == 0 ? 0 : 1;
  }));
}
}  // namespace

TEST_CASE("SharedMemory: a directory squatting a block's name is a PermissionError",
          "[shared_memory]") {
  const auto name = unique_name("dir");
  REQUIRE(mpp_test::wait_child(mpp_test::fork_child(
              [&] { return ::mkdir(("/dev/shm/" + name).c_str(), 0700) == 0 ? 0 : 1; })) == 0);
  CHECK_THROWS_AS(SharedMemory(name), mpp::PermissionError);
  CHECK_THROWS_AS(SharedMemory::open(name), mpp::PermissionError);
  CHECK_THROWS_AS(ShareableList::open(name), mpp::PermissionError);
  CHECK_THROWS_AS(SharedMemory(name, true, 16), mpp::ExistsError);  // the name is taken
  CHECK_THROWS_AS(mpp::unlink(name), mpp::PermissionError);
  CHECK(::rmdir(("/dev/shm/" + name).c_str()) == 0);
}

TEST_CASE(
    "SharedMemory: a truncated SharedMemory is CorruptedError naming it, before and after a touch",
    "[shared_memory]") {
  for (const off_t cut : {off_t{0}, off_t{5000}}) {
    INFO("truncated to " << cut << " bytes");
    const auto name = unique_name("cut");
    SharedMemory shm(name, true, 64 * 1024);
    std::memset(shm.buf().data(), 0x11, shm.buf().size());
    const auto buf = shm.buf();  // raw memory, held across the truncation
    SharedMemory other = SharedMemory::open(name);
    REQUIRE(truncate_from_another_process(name, cut) == 0);
    // Seen at the API points before any vanished page is touched ...
    CHECK_THROWS_AS(shm.size(), mpp::CorruptedError);
    CHECK_THROWS_WITH(shm.buf(),
                      Catch::Matchers::Contains(name) && Catch::Matchers::Contains("shrank"));
    CHECK_THROWS_AS(other.live_users(), mpp::CorruptedError);
    // ... by a forked child using an inherited handle ...
    CHECK(mpp_test::wait_child(mpp_test::fork_child([&] {
            try {
              (void)shm.buf();
            } catch (const mpp::CorruptedError&) {
              return 0;
            }
            return 1;
          })) == 0);
    // ... and after a touch of a vanished page, which reads zeros instead of killing us.
    CHECK(buf[60000] == std::byte{0});
    CHECK_THROWS_AS(shm.size(), mpp::CorruptedError);
    shm.close();
    other.close();
    CHECK_FALSE(shm_exists(name));  // the last user left: the track rule removed it
  }
}

TEST_CASE(
    "SharedMemory: a truncated ShareableList: items on vanished pages are CorruptedError, not None",
    "[shared_memory][shareable_list]") {
  std::vector<ShareableItem> items(2000, ShareableItem{std::int64_t{7}});
  auto sl = ShareableList::create(unique_name("cutlist"), items);
  CHECK(sl.get(1999) == ShareableItem{std::int64_t{7}});
  // The table is 2000 * 24 bytes: cut in the middle of it.
  REQUIRE(truncate_from_another_process(sl.name(), 8192) == 0);
  CHECK_THROWS_AS(sl.get(1999), mpp::CorruptedError);  // its descriptor's page is gone
  CHECK_THROWS_AS(sl[1999] = std::int64_t{1}, mpp::CorruptedError);
  CHECK_THROWS_AS(sl.get(0), mpp::CorruptedError);  // the block is known to be damaged now
  CHECK_THROWS_AS(ShareableList::open(sl.name()), mpp::CorruptedError);
  sl.unlink();
}
#endif  // MPP_OS_POSIX

// ---- Python's cleanup order, attach-or-create, repr, SharedMemoryManager ----------------------

namespace {
#if defined(MPP_OS_POSIX)
constexpr bool kPosixUnlink = true;  // unlink() removes the name; Windows: the last handle does
#else
constexpr bool kPosixUnlink = false;
#endif

/// Python's usual consumer: attach, read, close, then unlink (the creator has closed already).
/// Replies "ok" or what went wrong.
void attach_close_unlink(std::string name, mpp::Queue<std::string> reply) {
  std::string r = "ok";
  try {
    SharedMemory shm(name);
    if (shm.buf()[0] != std::byte{9}) r = "wrong byte";
    shm.close();
    shm.unlink();
  } catch (const std::exception& e) {
    r = e.what();
  }
  reply.put(r);
}

/// Attaches with open_or_create(name, size), writes byte 1, replies with what it saw at byte 0.
void open_or_create_child(std::string name, std::size_t size, mpp::Queue<std::string> reply) {
  try {
    auto shm = SharedMemory::open_or_create(name, size);
    shm.buf()[1] = std::byte{11};
    reply.put(std::to_string(static_cast<int>(shm.buf()[0])));
  } catch (const mpp::ValueError& e) {
    reply.put(std::string("ValueError: ") + e.what());
  }
}

/// Uses a manager's block and list, tells the parent, waits until the manager has shut down and
/// checks that its mappings still work while the names are gone.
void use_managed(std::string block, ShareableList list, mpp::Queue<std::string> to_parent,
                 mpp::Queue<std::string> from_parent) {
  SharedMemory shm(block);
  shm.buf()[0] = std::byte{42};
  list[0] = std::int64_t{42};
  to_parent.put("used");
  if (from_parent.get(true, 60s) != "shut down") return;
  std::string r = "ok";
  if (shm.buf()[0] != std::byte{42} || list.get(0) != ShareableItem{std::int64_t{42}})
    r = "mapping lost";
  if (kPosixUnlink) {
    try {
      SharedMemory again(block);
      r = "block still attachable";
    } catch (const mpp::NotFoundError&) {
    }
    try {
      (void)ShareableList::open(list.name());
      r = "list still attachable";
    } catch (const mpp::NotFoundError&) {
    }
  }
  to_parent.put(r);
}
}  // namespace
MPP_REGISTER(attach_close_unlink);
MPP_REGISTER(open_or_create_child);
MPP_REGISTER(use_managed);

TEST_CASE("SharedMemory: Python's close() then unlink() works; a second unlink() is NotFoundError",
          "[shared_memory]") {
  SECTION("the last handle closes (the track rule removed the name), then unlinks") {
    SharedMemory shm(64);
    const std::string name = shm.name();
    shm.close();
    shm.close();                // idempotent, as in Python
    CHECK(shm.name() == name);  // kept after close(), as Python's
    CHECK(shm.size() == 64);
    CHECK_THROWS_AS(shm.buf(), mpp::ValueError);
    CHECK_NOTHROW(shm.unlink());
    CHECK_FALSE(shm_exists(name));
    if (kPosixUnlink) {
      CHECK_THROWS_AS(shm.unlink(), mpp::NotFoundError);
      CHECK_THROWS_AS(shm.unlink(), mpp::OSError);  // Python's FileNotFoundError is an OSError
    }
  }
  SECTION("track=false: close() keeps the name, unlink() removes it") {
    SharedMemory shm(unique_name("cu"), true, 16, /*track=*/false);
    const std::string name = shm.name();
    shm.close();
    CHECK(shm_exists(name) == kPosixUnlink);  // Windows: the name goes with the last handle
    CHECK_NOTHROW(shm.unlink());
    CHECK_FALSE(shm_exists(name));
    if (kPosixUnlink) CHECK_THROWS_AS(shm.unlink(), mpp::NotFoundError);
  }
  SECTION("unlink() then close(), the other order") {
    SharedMemory shm(16);
    const std::string name = shm.name();
    shm.unlink();
    CHECK(shm.buf().size() == 16);  // the mapping outlives the name
    shm.close();
    if (kPosixUnlink) {
      CHECK_FALSE(shm_exists(name));
      CHECK_THROWS_AS(shm.unlink(), mpp::NotFoundError);
    }
  }
  SECTION("ShareableList: close() then unlink(), twice") {
    ShareableList sl{std::int64_t{1}, std::string("two")};
    const std::string name = sl.name();
    sl.close();
    CHECK(sl.name() == name);
    CHECK_NOTHROW(sl.unlink());
    CHECK_FALSE(shm_exists(name));
    if (kPosixUnlink) CHECK_THROWS_AS(sl.unlink(), mpp::NotFoundError);
  }
}

#if defined(MPP_OS_POSIX)
TEST_CASE("SharedMemory: a block can be unlinked only once (Python's test_shared_memory_basics)",
          "[shared_memory]") {
  const auto name = unique_name("dup");
  SharedMemory uno(name, true, 5000);
  CHECK(uno.size() == 5000);
  SharedMemory duo(name);
  duo.unlink();  // the first shm_unlink
  duo.close();
  uno.close();
  CHECK_THROWS_AS(uno.unlink(), mpp::NotFoundError);  // a second one is bad
}
#endif  // MPP_OS_POSIX

TEST_CASE(
    "SharedMemory: a spawned consumer closes then unlinks; the creator's unlink is "
    "NotFoundError",
    "[shared_memory][spawn]") {
  auto shm = SharedMemory::create(unique_name("consumer"), 32);
  shm.buf()[0] = std::byte{9};
  mpp::Queue<std::string> reply;
  auto p =
      mpp::get_context(mpp::StartMethod::spawn).process(attach_close_unlink, shm.name(), reply);
  p.start();
  CHECK(reply.get(true, 60s) == "ok");
  CHECK(p.join(60s));
  CHECK(p.exitcode() == 0);
  CHECK(shm.buf()[0] == std::byte{9});  // still mapped here
  if (kPosixUnlink) {
    CHECK_FALSE(shm_exists(shm.name()));
    CHECK_THROWS_AS(shm.unlink(), mpp::NotFoundError);
    shm.close();
    CHECK_THROWS_AS(shm.unlink(), mpp::NotFoundError);
  }
}

#if defined(MPP_OS_POSIX)
TEST_CASE(
    "SharedMemory: a forked child unlinks, the parent's close() then unlink() is "
    "NotFoundError",
    "[shared_memory]") {
  SharedMemory shm(unique_name("forkunlink"), true, 32);
  const pid_t child = mpp_test::fork_child([&] {
    shm.buf()[3] = std::byte{3};
    shm.close();
    shm.unlink();  // the parent still has it mapped: removed by this unlink, not the track rule
    try {
      shm.unlink();
      return 2;
    } catch (const mpp::NotFoundError&) {
    }
    return 0;
  });
  CHECK(mpp_test::wait_child(child) == 0);
  CHECK(shm.buf()[3] == std::byte{3});
  CHECK_FALSE(shm_exists(shm.name()));
  shm.close();
  CHECK_THROWS_AS(shm.unlink(), mpp::NotFoundError);
}
#endif  // MPP_OS_POSIX

TEST_CASE("SharedMemory: open_or_create creates once, attaches after, refuses another size",
          "[shared_memory][spawn]") {
  const auto name = unique_name("ooc");
  auto shm = SharedMemory::open_or_create(name, 64);  // creates
  CHECK(shm.size() == 64);
  shm.buf()[0] = std::byte{5};
  auto same = SharedMemory::open_or_create(name, 64);  // attaches
  CHECK(same.buf()[0] == std::byte{5});
  try {
    (void)SharedMemory::open_or_create(name, 65);
    FAIL("a size mismatch must throw");
  } catch (const mpp::ValueError& e) {
    CHECK(std::string(e.what()).find(name) != std::string::npos);
    CHECK(std::string(e.what()).find("64") != std::string::npos);
  }
  CHECK(shm_exists(name));  // the refused attach did not remove it
  CHECK_THROWS_AS(SharedMemory::open_or_create(name, 0), mpp::InvalidArgument);
  CHECK_THROWS_AS(SharedMemory::open_or_create("", 8), mpp::InvalidArgument);

  mpp::Queue<std::string> reply;
  auto ctx = mpp::get_context(mpp::StartMethod::spawn);
  auto p = ctx.process(open_or_create_child, name, std::size_t{64}, reply);
  p.start();
  CHECK(reply.get(true, 60s) == "5");
  CHECK(p.join(60s));
  CHECK(shm.buf()[1] == std::byte{11});
  auto q = ctx.process(open_or_create_child, name, std::size_t{128}, reply);
  q.start();
  CHECK(reply.get(true, 60s).rfind("ValueError: ", 0) == 0);
  CHECK(q.join(60s));

  const auto fresh = unique_name("ooc.child");  // the child creates it
  auto r = ctx.process(open_or_create_child, fresh, std::size_t{16}, reply);
  r.start();
  CHECK(reply.get(true, 60s) == "0");
  CHECK(r.join(60s));
  CHECK(r.exitcode() == 0);
}

#if defined(MPP_OS_POSIX)
TEST_CASE("SharedMemory: open_or_create racing in forked children: one block for all",
          "[shared_memory]") {
  const auto name = unique_name("oocrace");
  std::vector<pid_t> kids;
  for (int i = 0; i < 6; ++i)
    kids.push_back(mpp_test::fork_child([&, i] {
      auto shm = SharedMemory::open_or_create(name, 8, /*track=*/false);
      shm.buf()[static_cast<std::size_t>(i)] = std::byte{1};
      return 0;
    }));
  for (auto k : kids) CHECK(mpp_test::wait_child(k) == 0);
  SharedMemory shm(name);
  for (std::size_t i = 0; i < 6; ++i) CHECK(shm.buf()[i] == std::byte{1});
  shm.unlink();
}
#endif  // MPP_OS_POSIX

TEST_CASE("SharedMemory: fmt::format gives Python's repr for SharedMemory and ShareableList",
          "[shared_memory]") {
  const auto name = unique_name("repr");
  auto shm = SharedMemory::create(name, 4096);
  CHECK(fmt::format("{}", shm) == fmt::format("SharedMemory('{}', size=4096)", name));
  shm.close();
  CHECK(fmt::format("{}", shm) == fmt::format("SharedMemory('{}', size=4096)", name));

  const auto lname = unique_name("reprl");
  auto sl = ShareableList::create(
      lname, {std::int64_t{-3}, 2.5, 1.0, true, false, None{}, std::string("it's"),
              std::string("a\\b"), bytes_of(std::string_view("\0a'", 3))});
  CHECK(fmt::format("{}", sl) ==
        fmt::format("ShareableList([-3, 2.5, 1.0, True, False, None, \"it's\", 'a\\\\b', "
                    "b\"\\x00a'\"], name='{}')",
                    lname));
  CHECK(sl.repr() == fmt::format("{}", sl));
  sl.close();
  CHECK(fmt::format("{}", sl) == fmt::format("<ShareableList name='{}' closed>", lname));
}

TEST_CASE("SharedMemoryManager: removes its blocks at its end, also those spawned processes use",
          "[shared_memory][spawn]") {
  mpp::Queue<std::string> to_parent, from_parent;
  std::string block, list;
  std::optional<mpp::Process> p;
  {
    mpp::SharedMemoryManager smm;
    smm.start();  // Python-shaped code: a no-op
    auto shm = smm.SharedMemory(128);
    auto sl = smm.ShareableList({std::int64_t{1}, std::string("abc")});
    block = shm.name();
    list = sl.name();
    CHECK(shm.size() == 128);
    CHECK(smm.names() == std::vector<std::string>{block, list});
    shm.close();  // the manager keeps the block until its end, whoever closes
    sl.close();
    CHECK(shm_exists(block));
    p.emplace(mpp::get_context(mpp::StartMethod::spawn)
                  .process(use_managed, block, ShareableList::open(list), to_parent, from_parent));
    p->start();
    REQUIRE(to_parent.get(true, 60s) == "used");
    SharedMemory mine(block);
    CHECK(mine.buf()[0] == std::byte{42});
    CHECK(ShareableList::open(list).get(0) == ShareableItem{std::int64_t{42}});
  }  // the manager ends: both names are removed while the child still uses the blocks
  if (kPosixUnlink) {
    CHECK_FALSE(shm_exists(block));
    CHECK_FALSE(shm_exists(list));
  }
  from_parent.put("shut down");
  CHECK(to_parent.get(true, 60s) == "ok");
  CHECK(p->join(60s));
  CHECK(p->exitcode() == 0);
  p.reset();  // its arguments (Windows: a block lives while a handle does)
  CHECK_FALSE(shm_exists(block));
  CHECK_FALSE(shm_exists(list));
}

TEST_CASE("SharedMemoryManager: Python's test_shared_memory_SharedMemoryManager_basics",
          "[shared_memory]") {
  std::string held;
  {
    mpp::SharedMemoryManager smm1;
    std::vector<ShareableList> lol;
    for (std::int64_t i = 5; i < 10; ++i) {
      std::vector<ShareableItem> items;
      for (std::int64_t k = 0; k < i; ++k) items.emplace_back(k);
      lol.push_back(smm1.ShareableList(items));
    }
    std::vector<SharedMemory> lom;
    for (std::size_t j = 32; j < 128; j += 16) lom.push_back(smm1.SharedMemory(j));
    auto doppelganger_list0 = ShareableList::open(lol[0].name());
    CHECK(doppelganger_list0.size() == 5);
    SharedMemory doppelganger_shm0(lom[0].name());
    CHECK(doppelganger_shm0.buf().size() >= 32);
    held = lom[0].name();
    CHECK(smm1.names().size() == 11);
    smm1.shutdown();
    if (kPosixUnlink) CHECK_THROWS_AS(SharedMemory(held), mpp::NotFoundError);
  }
  {
    mpp::SharedMemoryManager smm2;
    auto sl = smm2.ShareableList({std::string("h"), std::string("o"), std::string("w")});
    auto shm = smm2.SharedMemory(128);
    held = sl.name();
  }
  if (kPosixUnlink) CHECK_THROWS_AS(ShareableList::open(held), mpp::NotFoundError);
  CHECK_FALSE(shm_exists(held));
}

TEST_CASE("SharedMemoryManager: shutdown() is idempotent; creating after it is a ValueError",
          "[shared_memory]") {
  mpp::SharedMemoryManager smm;
  auto a = smm.SharedMemory(8);
  auto b = smm.SharedMemory(8);
  const std::string an = a.name(), bn = b.name();
  a.close();
  a.unlink();  // removed by the user first: the manager skips it
  smm.shutdown();
  smm.shutdown();
  CHECK(smm.names().empty());
  CHECK(b.buf().size() == 8);  // a user's handle keeps its mapping
  if (kPosixUnlink) {
    CHECK_FALSE(shm_exists(bn));
    CHECK_THROWS_AS(b.unlink(), mpp::NotFoundError);
  }
  CHECK_THROWS_AS(smm.SharedMemory(8), mpp::ValueError);
  CHECK_THROWS_AS(smm.ShareableList({None{}}), mpp::ValueError);
}

#if defined(MPP_OS_POSIX)
TEST_CASE("SharedMemoryManager: forked children use its blocks; only the owner removes them",
          "[shared_memory]") {
  auto smm = std::make_unique<mpp::SharedMemoryManager>();
  auto shm = smm->SharedMemory(64);
  auto sl = smm->ShareableList({std::int64_t{0}});
  const pid_t child = mpp_test::fork_child([&] {
    shm.buf()[7] = std::byte{7};
    sl[0] = std::int64_t{7};
    try {
      (void)smm->SharedMemory(8);  // not this process's manager
      return 2;
    } catch (const mpp::ProcessError&) {
    }
    smm->shutdown();  // a copy's shutdown removes nothing
    return 0;
  });
  CHECK(mpp_test::wait_child(child) == 0);
  CHECK(shm_exists(shm.name()));
  CHECK(shm.buf()[7] == std::byte{7});
  CHECK(sl.get(0) == ShareableItem{std::int64_t{7}});
  smm.reset();
  CHECK_FALSE(shm_exists(shm.name()));
  CHECK_FALSE(shm_exists(sl.name()));
}
#endif  // MPP_OS_POSIX
