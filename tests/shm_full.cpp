// A full /dev/shm: creating any kind of object raises NoSpaceError and leaves nothing behind, and
// nothing succeeds into memory that only this process sees. Each case runs in a forked child
// with a private mount namespace and a small tmpfs over /dev/shm (Linux, root or CAP_SYS_ADMIN);
// where that is not permitted the case prints kSkipMarker and CTest reports the test skipped.
#include <mpp/detail/config.hpp>

#if defined(__linux__)

#  include <fcntl.h>
#  include <sched.h>
#  include <sys/mman.h>
#  include <sys/mount.h>
#  include <sys/stat.h>
#  include <unistd.h>

#  include <cerrno>
#  include <cstring>
#  include <mpp/array.hpp>
#  include <mpp/manager.hpp>
#  include <mpp/pipe.hpp>
#  include <mpp/pool.hpp>
#  include <mpp/queue.hpp>
#  include <mpp/shared_memory.hpp>
#  include <mpp/sync.hpp>
#  include <mpp/value.hpp>
#  include <stdexcept>
#  include <string>
#  include <vector>

#  include "helpers.hpp"

using namespace std::chrono_literals;
using mpp_test::fork_child;
using mpp_test::unique_name;
using mpp_test::wait_child;

namespace {

/// Printed when the mount namespace cannot be set up; tests/CMakeLists.txt turns it into "skipped".
constexpr const char* kSkipMarker = "MPP-TEST-SKIPPED:";
constexpr int kCannotMount = 77;
constexpr const char* kFiller = "filler";  // not an mpp name: only the test's own bytes

std::runtime_error failure(int line, const std::string& what) {
  return std::runtime_error(fmt::format("shm_full.cpp:{}: {}", line, what));
}
#  define EXPECT(cond)                                         \
    do {                                                       \
      if (!(cond)) throw failure(__LINE__, "expected " #cond); \
    } while (0)

// In a forked child: a private mount namespace whose /dev/shm is a fresh tmpfs of `size`, then
// fn(). Returns fn's result, or kCannotMount if this process may not do that.
template <class F>
int with_small_shm(const char* size, F&& fn) {
  if (::unshare(CLONE_NEWNS) != 0) {
    fmt::print(stderr, "unshare(CLONE_NEWNS): {}\n", std::strerror(errno));
    return kCannotMount;
  }
  // Private first: the tmpfs must not appear in the namespace we came from.
  if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0 ||
      ::mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV,
              fmt::format("size={},mode=1777", size).c_str()) != 0) {
    fmt::print(stderr, "mount tmpfs over /dev/shm: {}\n", std::strerror(errno));
    return kCannotMount;
  }
  // The library caches a descriptor of /dev/shm: point it at the new one.
  mpp::detail::os::posix_detail::shm_dir(true);
  return fn();
}

// Runs `fn` in a child inside a small /dev/shm; returns false (after printing the skip marker)
// when the namespace is not permitted here.
template <class F>
bool run_in_small_shm(const char* size, F&& fn) {
  const int rc = wait_child(fork_child([&] { return with_small_shm(size, fn); }));
  if (rc == kCannotMount) {
    fmt::print(
        "{} no private mount namespace with a tmpfs over /dev/shm here (needs root or "
        "CAP_SYS_ADMIN)\n",
        kSkipMarker);
    return false;
  }
  CHECK(rc == 0);
  return true;
}

// Fills /dev/shm with a file of its own until ENOSPC; returns its descriptor.
int fill_shm() {
  const int fd =
      ::open((std::string("/dev/shm/") + kFiller).c_str(), O_RDWR | O_CREAT | O_TRUNC, 0600);
  EXPECT(fd >= 0);
  std::vector<char> chunk(64 * 1024, 'x');
  std::size_t n = chunk.size();
  for (;;) {
    const ssize_t w = ::write(fd, chunk.data(), n);
    if (w > 0) continue;
    if (w < 0 && errno == EINTR) continue;
    EXPECT(errno == ENOSPC);
    if (n == 1) break;
    n = n > 4096 ? 4096 : 1;  // the last bytes a page at a time, then byte by byte
  }
  return fd;
}

// Leaves `bytes` of /dev/shm free by shrinking the filler.
void leave_free(int filler, std::uint64_t bytes) {
  struct stat st {};
  EXPECT(::fstat(filler, &st) == 0);
  EXPECT(static_cast<std::uint64_t>(st.st_size) > bytes);
  EXPECT(::ftruncate(filler, static_cast<off_t>(st.st_size - static_cast<off_t>(bytes))) == 0);
}

// Nothing half-created is left: not the name tried (if any), no anonymous object of ours.
void expect_nothing_left(const std::string& name) {
  EXPECT(name.empty() || !mpp::detail::os::shm_lstat(name).exists);
  EXPECT(mpp::detail::os::shm_list(fmt::format("mpp.anon.{}.", ::getpid())).empty());
}

// `create` must raise NoSpaceError saying /dev/shm is full, naming the object, and leave nothing.
template <class F>
void expect_no_space(int line, const std::string& name, F&& create) {
  try {
    create();
  } catch (const mpp::NoSpaceError& e) {
    const std::string msg = e.what();
    if (msg.find("/dev/shm is full") == std::string::npos || e.code() != ENOSPC ||
        (!name.empty() && msg.find(name) == std::string::npos))
      throw failure(line, "NoSpaceError with an unexpected message: " + msg);
    expect_nothing_left(name);
    return;
  } catch (const std::exception& e) {
    throw failure(line, fmt::format("expected NoSpaceError for '{}', got: {}", name, e.what()));
  }
  throw failure(line, fmt::format("creating '{}' on a full /dev/shm succeeded", name));
}

double add_one(double x) { return x + 1; }

}  // namespace

MPP_REGISTER(add_one);

TEST_CASE("Full /dev/shm: creating any kind raises NoSpaceError and leaves nothing", "[shm_full]") {
  run_in_small_shm("8m", [] {
    const int filler = fill_shm();
    expect_no_space(__LINE__, "mpp.full.lock", [] { mpp::Lock::create("mpp.full.lock"); });
    expect_no_space(__LINE__, "", [] { mpp::Lock l; });
    expect_no_space(__LINE__, "mpp.full.value",
                    [] { mpp::Value<int>::create("mpp.full.value", 7); });
    expect_no_space(__LINE__, "mpp.full.array",
                    [] { mpp::Array<double>::create("mpp.full.array", 16); });
    expect_no_space(__LINE__, "mpp.full.shm",
                    [] { mpp::SharedMemory::create("mpp.full.shm", 16); });
    expect_no_space(__LINE__, "mpp.full.shm2",
                    [] { mpp::SharedMemory("mpp.full.shm2", true, 100); });
    expect_no_space(__LINE__, "", [] { mpp::SharedMemory anon(4096); });
    expect_no_space(__LINE__, "mpp.full.list", [] {
      mpp::ShareableList::create("mpp.full.list", {std::int64_t{1}, std::string("x")});
    });
    expect_no_space(__LINE__, "mpp.full.pipe",
                    [] { (void)mpp::Pipe<int>::create("mpp.full.pipe"); });
    expect_no_space(__LINE__, "", [] { mpp::Pipe<int> p; });
    expect_no_space(__LINE__, "mpp.full.queue", [] { mpp::Queue<int>::create("mpp.full.queue"); });
    expect_no_space(__LINE__, "mpp.full.queue2",
                    [] { mpp::Queue<int>::open_or_create("mpp.full.queue2", 4); });
    expect_no_space(__LINE__, "", [] { mpp::Queue<int> q; });
    expect_no_space(__LINE__, "mpp.full.manager", [] { mpp::Manager::create("mpp.full.manager"); });
    // The anonymous forms ("mpp.anon.<pid>.*") are refused and removed alike.
    expect_no_space(__LINE__, "", [] { mpp::Value<int> v(7); });
    expect_no_space(__LINE__, "", [] { mpp::Array<double> a(16); });
    expect_no_space(__LINE__, "", [] { mpp::ShareableList l{std::int64_t{1}}; });
    expect_no_space(__LINE__, "", [] { mpp::Manager m; });
    // Once there is room again, the same names work across processes.
    leave_free(filler, 1 << 20);
    auto v = mpp::Value<int>::create("mpp.full.value", 7);
    const int child = wait_child(fork_child([] {
      auto o = mpp::Value<int>::open("mpp.full.value");
      EXPECT(o.value() == 7);
      o.set(8);
      return 0;
    }));
    EXPECT(child == 0);
    EXPECT(v.value() == 8);
    return 0;
  });
}

TEST_CASE("Full /dev/shm: a block larger than the free space is refused, not half-backed",
          "[shm_full]") {
  run_in_small_shm("8m", [] {
    const int filler = fill_shm();
    leave_free(filler, 1 << 20);
    // Without the reservation these succeeded and lost every write beyond the first MiB.
    expect_no_space(__LINE__, "mpp.big.shm",
                    [] { mpp::SharedMemory::create("mpp.big.shm", 4 << 20); });
    expect_no_space(__LINE__, "mpp.big.array",
                    [] { mpp::Array<double>::create("mpp.big.array", 512 * 1024); });
    expect_no_space(__LINE__, "mpp.big.pipe", [] {
      mpp::PipeOptions o;
      o.capacity = 4 << 20;
      (void)mpp::Pipe<int>::create("mpp.big.pipe", true, o);
    });
    // One that fits is backed in full: every byte written in one process is seen in another.
    auto shm = mpp::SharedMemory::create("mpp.fits.shm", 512 * 1024);
    const int child = wait_child(fork_child([] {
      auto s = mpp::SharedMemory::open("mpp.fits.shm");
      for (auto& b : s.buf()) b = std::byte{0x5a};
      return 0;
    }));
    EXPECT(child == 0);
    for (auto b : shm.buf()) EXPECT(b == std::byte{0x5a});
    return 0;
  });
}

TEST_CASE("Full /dev/shm: a queue put that cannot be backed says /dev/shm is full", "[shm_full]") {
  run_in_small_shm("8m", [] {
    const int filler = fill_shm();
    leave_free(filler, 1 << 20);
    mpp::QueueOptions o;
    o.max_item_size = 512 * 1024;
    auto q = mpp::Queue<std::string>::create("mpp.full.q", 16, o);
    const std::string item(300 * 1024, 'q');
    int put = 0;
    try {
      for (; put < 16; ++put) q.put(item, true, 1s);
      throw failure(__LINE__, "16 items of 300 KiB fitted in 1 MiB");
    } catch (const mpp::NoSpaceError& e) {
      const std::string msg = e.what();
      EXPECT(msg.find("/dev/shm is full") != std::string::npos);
      EXPECT(msg.find("mpp.full.q") != std::string::npos);
    }
    EXPECT(put >= 1);
    // What was put before the error reaches another process whole.
    const int child = wait_child(fork_child([&] {
      auto c = mpp::Queue<std::string>::open("mpp.full.q", o);
      for (int i = 0; i < put; ++i) EXPECT(c.get(true, 5s) == item);
      return 0;
    }));
    EXPECT(child == 0);
    return 0;
  });
}

TEST_CASE("Full /dev/shm: writing a page of another program's sparse block is NoSpaceError",
          "[shm_full]") {
  run_in_small_shm("8m", [] {
    // Created as Python's SharedMemory does (shm_open + ftruncate, no pages yet), then /dev/shm
    // fills up: the first write to an unbacked page cannot be kept.
    const int fd = ::shm_open("/mpp.sparse.block", O_RDWR | O_CREAT | O_EXCL, 0600);
    EXPECT(fd >= 0);
    EXPECT(::ftruncate(fd, 1 << 20) == 0);
    ::close(fd);
    fill_shm();
    auto shm = mpp::SharedMemory::open("mpp.sparse.block");
    auto buf = shm.buf();
    buf[4096 * 3] = std::byte{1};  // faults: the SIGBUS guard keeps the process alive
    try {
      (void)shm.buf();
      throw failure(__LINE__, "buf() after a write into an unbacked page did not throw");
    } catch (const mpp::NoSpaceError& e) {
      EXPECT(std::string(e.what()).find("mpp.sparse.block") != std::string::npos);
    }
    return 0;
  });
}

TEST_CASE("Full /dev/shm: a Pool map whose chunks cannot be backed fails with NoSpaceError",
          "[shm_full]") {
  run_in_small_shm("16m", [] {
    mpp::Pool pool(1);
    // One-item chunks go round the task and result queues' rings, backing all their cells: the
    // messages then fit, and only the arena needs new pages.
    EXPECT(pool.map(add_one, std::vector<double>(64, 1.0), 1) == std::vector<double>(64, 2.0));
    const int filler = fill_shm();
    leave_free(filler, 256 * 1024);
    // 1 MiB of arguments in one chunk: more arena than /dev/shm has free.
    const std::vector<double> big(128 * 1024, 1.0);
    try {
      const auto out = pool.map(add_one, big, big.size());
      EXPECT(out.size() == big.size());
      for (double x : out)
        if (x != 2.0) throw failure(__LINE__, fmt::format("a result of {} arrived as {}", 2.0, x));
      throw failure(__LINE__, "a 1 MiB chunk fitted in 256 KiB");
    } catch (const mpp::NoSpaceError& e) {
      const std::string msg = e.what();
      EXPECT(msg.find("/dev/shm is full") != std::string::npos);
      EXPECT(msg.find("Pool's map") != std::string::npos);
    }
    // The pool survives: with room again, a map works.
    leave_free(filler, 4 << 20);
    const auto out = pool.map(add_one, big, big.size());
    for (double x : out) EXPECT(x == 2.0);
    return 0;
  });
}

TEST_CASE("Full /dev/shm: a Manager's undo log and heap say NoSpaceError, naming it",
          "[shm_full]") {
  run_in_small_shm("16m", [] {
    mpp::ManagerOptions o;
    o.capacity = 8 << 20;  // a 512 KiB undo log; the heap is backed 2 MiB at a time
    auto m = mpp::Manager::create("mpp.full.mgr", o);
    auto l = m.list<std::int64_t>("l");
    for (std::int64_t b = 0; b < 20000; b += 1000) {  // small transactions: little undo log
      std::vector<std::int64_t> items(1000);
      for (std::int64_t i = 0; i < 1000; ++i) items[static_cast<std::size_t>(i)] = b + i;
      l.extend(items);
    }
    const int filler = fill_shm();
    // insert(0) logs the 160 KiB of the item array it shifts: more undo log than creation
    // backed (and more than any transaction so far wrote).
    try {
      l.insert(0, -1);
      throw failure(__LINE__, "insert(0) logged 160 KiB of undo log on a full /dev/shm");
    } catch (const mpp::NoSpaceError& e) {
      const std::string msg = e.what();
      EXPECT(msg.find("/dev/shm is full") != std::string::npos);
      EXPECT(msg.find("mpp.full.mgr") != std::string::npos);
    }
    // Rolled back; every process sees the list unchanged.
    const int unchanged = wait_child(fork_child([] {
      auto c = mpp::Manager::open("mpp.full.mgr").list<std::int64_t>("l");
      EXPECT(c.size() == 20000 && c.get(0) == 0 && c.get(19999) == 19999);
      return 0;
    }));
    EXPECT(unchanged == 0);
    // A heap that must grow past its backed pages: NoSpaceError, not ArenaFull.
    auto d = m.dict<std::string, std::string>("d");
    try {
      d.set("big", std::string(3 << 20, 'x'));
      throw failure(__LINE__, "3 MiB more heap fitted on a full /dev/shm");
    } catch (const mpp::NoSpaceError& e) {
      EXPECT(std::string(e.what()).find("mpp.full.mgr") != std::string::npos);
    }
    // With room again both work, and another process sees them.
    leave_free(filler, 8 << 20);
    l.insert(0, -1);
    d.set("big", std::string(3 << 20, 'x'));
    const int seen = wait_child(fork_child([] {
      auto c = mpp::Manager::open("mpp.full.mgr");
      auto cl = c.list<std::int64_t>("l");
      EXPECT(cl.size() == 20001 && cl.get(0) == -1 && cl.get(20000) == 19999);
      EXPECT((c.dict<std::string, std::string>("d").get("big").value_or("").size() == (3u << 20)));
      return 0;
    }));
    EXPECT(seen == 0);
    return 0;
  });
}

#endif  // __linux__
