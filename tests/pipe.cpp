// Pipe and Connection: typed and untyped messages, one-way and duplex, streaming of messages far
// larger than the ring, EOF / BrokenPipe when the other end is closed or its process died (also
// while blocked), fork liveness, named pipes between unrelated processes — across real processes.
// The tests that fork or SIGKILL are POSIX-only; the rest, and the spawn tests (named pipes to
// spawned processes), also run on Windows (under wine in the Windows lane).
// Compiled with the crash-point hook (crash_points.hpp): children armed for a point SIGKILL
// themselves there.
#include "crash_points.hpp"

#include <mpp/detail/config.hpp>
#if defined(MPP_OS_POSIX)
#  include <signal.h>
#  include <sys/wait.h>
#  include <unistd.h>
#endif

#include <cstdint>
#include <initializer_list>
#include <mpp/pipe.hpp>
#include <mpp/process.hpp>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "helpers.hpp"

using namespace std::chrono_literals;
using mpp_test::seconds_since;
using mpp_test::unique_name;
#if defined(MPP_OS_POSIX)
using mpp_test::fork_child;
using mpp_test::wait_child;
#endif

namespace {

/// Bytes whose value depends on the position and a seed, so any misplaced byte is noticed.
std::vector<std::byte> pattern(std::size_t n, std::uint32_t seed) {
  std::vector<std::byte> v(n);
  std::uint32_t x = seed * 2654435761u + 1;
  for (std::size_t i = 0; i < n; ++i) {
    x = x * 1664525u + 1013904223u;
    v[i] = static_cast<std::byte>(x >> 24);
  }
  return v;
}

struct Point {
  double x, y;
  int tag;
};

struct Record {
  std::string name;
  std::vector<int> values;
  template <class A>
  void serialize(A& ar) {
    ar(name, values);
  }
  bool operator==(const Record&) const = default;
};

/// A trivially copyable type with its own codec (tenths of a degree as an int64): the pipe must
/// use it, not copy the bytes.
struct Celsius {
  double v;
};

}  // namespace

template <>
struct mpp::codec<Celsius> {
  static void encode(const Celsius& c, Bytes& out) {
    const auto tenths = static_cast<std::int64_t>(c.v * 10);
    const auto* p = reinterpret_cast<const std::byte*>(&tenths);
    out.insert(out.end(), p, p + 8);
  }
  static Celsius decode(std::span<const std::byte> in) {
    std::int64_t tenths = 0;
    if (in.size() != 8) throw mpp::CorruptedError("bad Celsius");
    std::memcpy(&tenths, in.data(), 8);
    return Celsius{static_cast<double>(tenths) / 10};
  }
};

TEST_CASE("Pipe: a user codec for a trivially copyable type is used", "[pipe]") {
  auto ab_pipe = mpp::Pipe<Celsius>();
  auto& a = ab_pipe.first;
  auto& b = ab_pipe.second;
  a.send(Celsius{21.5});
  a.send(Celsius{-3.25});
  REQUIRE(b.recv().v == 21.5);
  const auto enc = b.recv_bytes();
  std::int64_t tenths = 0;
  REQUIRE(enc.size() == 8);
  std::memcpy(&tenths, enc.data(), 8);
  REQUIRE(tenths == -32);
}

TEST_CASE("Pipe: send and recv in one process, both directions", "[pipe]") {
  auto ab_pipe = mpp::Pipe<int>();
  auto& a = ab_pipe.first;
  auto& b = ab_pipe.second;
  REQUIRE(a.readable());
  REQUIRE(a.writable());
  a.send(1);
  b.send(2);
  REQUIRE(b.recv() == 1);
  REQUIRE(a.recv() == 2);
  REQUIRE_FALSE(a.poll());
  b.send(3);
  REQUIRE(a.poll());
  REQUIRE(a.poll(0.5s));
  REQUIRE(a.recv() == 3);
}

TEST_CASE("Pipe: Hello, world (the Python program)", "[pipe]") {
  auto rw_pipe = mpp::Pipe<std::string>();
  auto& r = rw_pipe.first;
  auto& w = rw_pipe.second;
  w.send("Hello, world");
  REQUIRE(r.recv() == "Hello, world");
}

TEST_CASE("Pipe: one-way pipe, first end receives, second end sends", "[pipe]") {
  auto rw_pipe = mpp::Pipe<Point>(false);
  auto& r = rw_pipe.first;
  auto& w = rw_pipe.second;
  REQUIRE(r.readable());
  REQUIRE_FALSE(r.writable());
  REQUIRE(w.writable());
  REQUIRE_FALSE(w.readable());
  REQUIRE_THROWS_AS(r.send(Point{}), mpp::OSError);
  REQUIRE_THROWS_AS(w.recv(), mpp::OSError);
  REQUIRE_THROWS_AS(w.poll(), mpp::OSError);
  w.send(Point{1.5, -2.5, 7});
  const Point p = r.recv();
  REQUIRE(p.x == 1.5);
  REQUIRE(p.y == -2.5);
  REQUIRE(p.tag == 7);
}

#if defined(MPP_OS_POSIX)
TEST_CASE("Pipe: values of cereal types, empty and large", "[pipe]") {
  auto ab_pipe = mpp::Pipe<Record>(true, {.capacity = 4096});
  auto& a = ab_pipe.first;
  auto& b = ab_pipe.second;
  const Record small{"x", {}};
  Record big{"big", {}};
  for (int i = 0; i < 100000; ++i) big.values.push_back(i * 3);
  a.send(small);
  a.send(Record{});
  const pid_t pid = fork_child([&, b = b] {
    mpp::Connection<Record> c = b;
    for (int i = 0; i < 3; ++i) c.send(c.recv());
    return 0;
  });
  a.send(big);
  REQUIRE(a.recv() == small);
  REQUIRE(a.recv() == Record{});
  REQUIRE(a.recv() == big);
  REQUIRE(wait_child(pid) == 0);
}
#endif  // MPP_OS_POSIX

TEST_CASE("Pipe: recv timeout, poll, closed connections", "[pipe]") {
  auto ab_pipe = mpp::Pipe<int>();
  auto& a = ab_pipe.first;
  auto& b = ab_pipe.second;
  const auto t0 = std::chrono::steady_clock::now();
  REQUIRE_THROWS_AS(a.recv(0.05s), mpp::TimeoutError);
  REQUIRE(seconds_since(t0) >= 0.04);
  REQUIRE_FALSE(a.poll(0.01s));
  a.close();
  REQUIRE(a.closed());
  a.close();  // idempotent
  REQUIRE_THROWS_AS(a.send(1), mpp::OSError);
  REQUIRE_THROWS_AS(a.recv(), mpp::OSError);
  // b's peer is closed: send raises BrokenPipeError, recv EOFError.
  REQUIRE_THROWS_AS(b.send(1), mpp::BrokenPipeError);
  REQUIRE_THROWS_AS(b.recv(), mpp::EOFError);
  mpp::Connection<int> none;
  REQUIRE(none.closed());
  REQUIRE_THROWS_AS(none.recv(), mpp::OSError);
}

TEST_CASE("Pipe: send with a timeout on a full ring; a half-sent long message is skipped",
          "[pipe]") {
  auto rw_pipe = mpp::Pipe<std::uint64_t>(false, {.capacity = 4096});
  auto& r = rw_pipe.first;
  auto& w = rw_pipe.second;
  std::uint64_t sent = 0;
  REQUIRE_THROWS_AS(([&] {
                      for (;;) w.send(sent++, 0.05s);
                    }()),
                    mpp::TimeoutError);
  --sent;  // the last one timed out: not sent
  for (std::uint64_t i = 0; i < sent; ++i) REQUIRE(r.recv() == i);
  // A message four times the ring: its first part fits, then the timeout strikes.
  REQUIRE_THROWS_AS(w.send_bytes(pattern(16384, 1), 0, std::nullopt, 0.05s), mpp::TimeoutError);
  REQUIRE_THROWS_AS(r.recv_bytes(std::nullopt, 0.05s), mpp::TimeoutError);  // nothing complete
  w.send(99);
  REQUIRE(r.recv() == 99);
}

TEST_CASE("Pipe: send_bytes, recv_bytes, recv_bytes_into, BufferTooShort keeps the message",
          "[pipe]") {
  auto ab_pipe = mpp::Pipe<int>(true, {.capacity = 4096});
  auto& a = ab_pipe.first;
  auto& b = ab_pipe.second;
  const auto data = pattern(1000, 1);
  a.send_bytes(data, 100, 50);
  a.send_bytes(std::string_view("hello"));
  a.send_bytes(std::span<const std::byte>{});
  REQUIRE_THROWS_AS(a.send_bytes(data, 1001), mpp::ValueError);
  REQUIRE_THROWS_AS(a.send_bytes(data, 900, 101), mpp::ValueError);
  REQUIRE_THROWS_AS(b.recv_bytes(49), mpp::OSError);  // kept
  auto got = b.recv_bytes(50);
  REQUIRE(got == std::vector<std::byte>(data.begin() + 100, data.begin() + 150));
  std::array<std::byte, 8> small{};
  try {
    b.recv_bytes_into(small, 4);
    FAIL("expected BufferTooShort");
  } catch (const mpp::BufferTooShort& e) {
    REQUIRE(e.needed() == 5);
  }
  REQUIRE(b.recv_bytes_into(small, 3) == 5);
  REQUIRE(std::memcmp(small.data() + 3, "hello", 5) == 0);
  REQUIRE(b.recv_bytes().empty());
  // A value message is not bytes for recv(), and a bytes message is not a value.
  a.send_bytes(std::string_view("abcd"));
  REQUIRE_THROWS_AS(b.recv(), mpp::TypeMismatchError);
  REQUIRE(b.recv_bytes().size() == 4);
  a.send(77);
  const auto enc = b.recv_bytes();  // the value's encoding, as Python gives the pickle
  REQUIRE(mpp::decode<int>(enc) == 77);
#if defined(MPP_OS_POSIX)
  // Large messages into a caller's buffer, and a too-small buffer for a streamed one.
  const auto big = pattern(50000, 2);
  const pid_t pid = fork_child([&, a = a] {
    mpp::Connection<int> c = a;
    c.send_bytes(big);
    c.send_bytes(big);
    return 0;
  });
  std::vector<std::byte> into(60000);
  REQUIRE(b.recv_bytes_into(into, 10) == big.size());
  REQUIRE(std::equal(big.begin(), big.end(), into.begin() + 10));
  std::vector<std::byte> tiny(100);
  REQUIRE_THROWS_AS(b.recv_bytes_into(tiny), mpp::BufferTooShort);
  REQUIRE(b.recv_bytes() == big);
  REQUIRE(wait_child(pid) == 0);
#endif  // MPP_OS_POSIX
}

TEST_CASE(
    "Pipe: untyped Connection<>: any codec type, TypeMismatchError names both, keeps the message",
    "[pipe]") {
  auto ab_pipe = mpp::Pipe<>();
  auto& a = ab_pipe.first;
  auto& b = ab_pipe.second;
  a.send(42);
  a.send(std::string("text"));
  a.send(Record{"r", {1, 2, 3}});
  try {
    (void)b.recv<std::string>();
    FAIL("expected TypeMismatchError");
  } catch (const mpp::TypeMismatchError& e) {
    const std::string what = e.what();
    REQUIRE(what.find("int") != std::string::npos);
    REQUIRE(what.find("string") != std::string::npos);
  }
  REQUIRE(b.recv<int>() == 42);
  REQUIRE_THROWS_AS(b.recv<double>(), mpp::TypeMismatchError);
  REQUIRE(b.recv<std::string>() == "text");
  REQUIRE(b.recv<Record>() == Record{"r", {1, 2, 3}});
#if defined(MPP_OS_POSIX)
  // Across processes, with a message larger than the ring.
  auto cd_pipe = mpp::Pipe<>(true, {.capacity = 4096});
  auto& c = cd_pipe.first;
  auto& d = cd_pipe.second;
  const pid_t pid = fork_child([&, d = d] {
    mpp::Connection<> x = d;
    x.send(std::vector<int>(20000, 5));
    x.send(3.5);
    return x.recv<int>() == 9 ? 0 : 1;
  });
  REQUIRE_THROWS_AS(c.recv<std::vector<double>>(), mpp::TypeMismatchError);  // streamed, kept
  REQUIRE(c.recv<std::vector<int>>() == std::vector<int>(20000, 5));
  REQUIRE(c.recv<double>() == 3.5);
  c.send(9);
  REQUIRE(wait_child(pid) == 0);
  REQUIRE_THROWS_AS(mpp::Pipe<int>::open(c.name()), mpp::Error);  // anonymous: no name left
#endif                                                            // MPP_OS_POSIX
}

#if defined(MPP_OS_POSIX)
TEST_CASE("Pipe: fork, parent and child talk both ways; ordering of 10^6 messages", "[pipe]") {
  auto ab_pipe = mpp::Pipe<std::uint64_t>();
  auto& a = ab_pipe.first;
  auto& b = ab_pipe.second;
  constexpr std::uint64_t kN = 1'000'000;
  const pid_t pid = fork_child([&] {
    a.close();  // Python's idiom: each side closes the end it does not use
    std::uint64_t sum = 0;
    for (std::uint64_t i = 0; i < kN; ++i) {
      const std::uint64_t v = b.recv();
      if (v != i) {
        fmt::print(stderr, "message {} arrived as {}\n", i, v);
        return 1;
      }
      sum += v;
    }
    b.send(sum);
    return 0;
  });
  b.close();
  for (std::uint64_t i = 0; i < kN; ++i) a.send(i);
  REQUIRE(a.recv() == kN * (kN - 1) / 2);
  REQUIRE(wait_child(pid) == 0);
  REQUIRE_THROWS_AS(a.recv(), mpp::EOFError);  // the child, the last holder of b, exited
}

TEST_CASE("Pipe: small values of odd sizes wrap around a small ring", "[pipe]") {
  struct Three {
    unsigned char b[3];
  };
  auto rw_pipe = mpp::Pipe<Three>(false, {.capacity = 4096});
  auto& r = rw_pipe.first;
  auto& w = rw_pipe.second;
  auto r8w8_pipe = mpp::Pipe<std::uint64_t>(false, {.capacity = 4096});
  auto& r8 = r8w8_pipe.first;
  auto& w8 = r8w8_pipe.second;
  const pid_t pid = fork_child([&] {
    for (int i = 0; i < 100000; ++i) {
      w.send(Three{{static_cast<unsigned char>(i), static_cast<unsigned char>(i >> 8), 7}});
      w8.send(static_cast<std::uint64_t>(i) * std::uint64_t{0x0101010101010101});
    }
    return 0;
  });
  int bad = 0;
  for (int i = 0; i < 100000; ++i) {
    const Three t = r.recv();
    if (t.b[0] != static_cast<unsigned char>(i) || t.b[1] != static_cast<unsigned char>(i >> 8) ||
        t.b[2] != 7 ||
        r8.recv() != static_cast<std::uint64_t>(i) * std::uint64_t{0x0101010101010101})
      ++bad;
  }
  REQUIRE(bad == 0);
  REQUIRE(wait_child(pid) == 0);
}

TEST_CASE("Pipe: mixed message sizes around the ring size", "[pipe]") {
  constexpr std::size_t kCap = 4096;
  auto rw_pipe = mpp::Pipe<int>(false, {.capacity = kCap});
  auto& r = rw_pipe.first;
  auto& w = rw_pipe.second;
  std::mt19937 rng(7);
  std::vector<std::size_t> sizes;
  for (std::size_t s : std::initializer_list<std::size_t>{0, 1, 7, 8, 9, 1016, 1024, 1025, 2040,
                                                          4088, 4096, 4097, 12289})
    sizes.push_back(s);
  for (int i = 0; i < 300; ++i) sizes.push_back(rng() % (3 * kCap));
  const pid_t pid = fork_child([&] {
    r.close();
    for (std::size_t i = 0; i < sizes.size(); ++i)
      w.send_bytes(pattern(sizes[i], static_cast<std::uint32_t>(i)));
    return 0;
  });
  w.close();
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    const auto got = r.recv_bytes();
    INFO("message " << i << " of " << sizes[i] << " bytes");
    REQUIRE(got == pattern(sizes[i], static_cast<std::uint32_t>(i)));
  }
  REQUIRE_THROWS_AS(r.recv_bytes(), mpp::EOFError);
  REQUIRE(wait_child(pid) == 0);
}

namespace {
// Sends one message of `size` bytes through a 256 KiB ring from a child; checks every byte.
void stream_one(std::size_t size) {
  const std::size_t kSize = size;
  auto rw_pipe = mpp::Pipe<int>(false);
  auto& r = rw_pipe.first;
  auto& w = rw_pipe.second;
  const pid_t pid = fork_child([&] {
    std::vector<std::byte> big(kSize);
    for (std::size_t i = 0; i < kSize; i += 8) {
      const std::uint64_t v = i * 0x9E3779B97F4A7C15ull;
      std::memcpy(big.data() + i, &v, 8);
    }
    w.send_bytes(big);
    w.send(1);
    return 0;
  });
  w.close();
  const auto got = r.recv_bytes();
  REQUIRE(got.size() == kSize);
  bool ok = true;
  for (std::size_t i = 0; i < kSize && ok; i += 8) {
    std::uint64_t v;
    std::memcpy(&v, got.data() + i, 8);
    ok = v == i * 0x9E3779B97F4A7C15ull;
  }
  REQUIRE(ok);
  REQUIRE(r.recv() == 1);
  REQUIRE(wait_child(pid) == 0);
}
}  // namespace

TEST_CASE("Pipe: a 32 MiB message through a 256 KiB ring", "[pipe]") {
  stream_one(std::size_t{32} << 20);
}

TEST_CASE("Pipe: a 256 MiB message through a 256 KiB ring", "[pipe][stress]") {
  stream_one(std::size_t{256} << 20);
}

TEST_CASE("EOF after draining: the writer closes, exits, or its copies close one by one",
          "[pipe]") {
  auto rw_pipe = mpp::Pipe<int>(false);
  auto& r = rw_pipe.first;
  auto& w = rw_pipe.second;
  const pid_t pid = fork_child([&] {
    for (int i = 0; i < 5; ++i) w.send(i);
    w.close();
    return 0;
  });
  // The parent still holds w: no EOF until it closes its copy too.
  REQUIRE(wait_child(pid) == 0);
  for (int i = 0; i < 5; ++i) REQUIRE(r.recv() == i);
  REQUIRE_FALSE(r.poll(0.05s));
  w.close();
  REQUIRE(r.poll());
  REQUIRE_THROWS_AS(r.recv(), mpp::EOFError);
  REQUIRE_THROWS_AS(r.recv(), mpp::EOFError);  // and again
}

TEST_CASE("Pipe: the parent closes its copy right after fork; the child still holds the end",
          "[pipe]") {
  for (int round = 0; round < 5; ++round) {
    auto rw_pipe = mpp::Pipe<int>(false);
    auto& r = rw_pipe.first;
    auto& w = rw_pipe.second;
    const pid_t pid = fork_child([&] {
      ::usleep(2000);  // let the parent close its copy first
      w.send(round);
      return 0;
    });
    w.close();  // the child was registered as a holder at fork(): no EOF yet
    REQUIRE(r.recv() == round);
    REQUIRE_THROWS_AS(r.recv(), mpp::EOFError);
    REQUIRE(wait_child(pid) == 0);
  }
}

TEST_CASE("Pipe: grandchildren hold inherited ends too", "[pipe]") {
  auto rw_pipe = mpp::Pipe<int>(false);
  auto& r = rw_pipe.first;
  auto& w = rw_pipe.second;
  const pid_t pid = fork_child([&] {
    r.close();
    const pid_t grandchild = fork_child([&] {
      ::usleep(20000);
      w.send(2);
      return 0;
    });
    w.close();
    return wait_child(grandchild);
  });
  w.close();
  REQUIRE(r.recv() == 2);
  REQUIRE_THROWS_AS(r.recv(), mpp::EOFError);
  REQUIRE(wait_child(pid) == 0);
}

TEST_CASE("Pipe: a blocked recv raises EOFError within 1 s when the writer closes", "[pipe]") {
  auto rw_pipe = mpp::Pipe<int>(false);
  auto& r = rw_pipe.first;
  auto& w = rw_pipe.second;
  const pid_t pid = fork_child([&] {
    w.close();
    const auto t0 = std::chrono::steady_clock::now();
    try {
      (void)r.recv();
    } catch (const mpp::EOFError&) {
      return seconds_since(t0) < 5.0 ? 0 : 2;  // generous: the bound is about 0.2 s
    }
    return 1;
  });
  r.close();
  ::usleep(100000);  // the child is asleep in recv by now
  w.close();
  REQUIRE(wait_child(pid) == 0);
}

TEST_CASE("Pipe: send to a closed reader raises BrokenPipeError, also when blocked on a full ring",
          "[pipe]") {
  auto rw_pipe = mpp::Pipe<std::uint64_t>(false, {.capacity = 4096});
  auto& r = rw_pipe.first;
  auto& w = rw_pipe.second;
  const pid_t pid = fork_child([&] {
    r.close();
    const auto t0 = std::chrono::steady_clock::now();
    try {
      for (std::uint64_t i = 0;; ++i) w.send(i);  // fills the ring, then blocks
    } catch (const mpp::BrokenPipeError&) {
      return seconds_since(t0) < 5.0 ? 0 : 2;
    }
  });
  w.close();
  ::usleep(100000);
  r.close();
  REQUIRE(wait_child(pid) == 0);
}

TEST_CASE("Pipe: named pipe, unrelated processes connect by name", "[pipe]") {
  const auto name = unique_name("pipe");
  // The child is forked before the pipe exists, so it inherits nothing: it opens by name.
  const pid_t pid = fork_child([&] {
    std::optional<mpp::Connection<std::string>> c;
    for (int i = 0; i < 5000 && !c; ++i) {
      try {
        c = mpp::Pipe<std::string>::open(name);
      } catch (const mpp::NotFoundError&) {
        ::usleep(1000);
      }
    }
    if (!c) return 3;
    const std::string q = c->recv();
    c->send(q + " world");
    return c->recv() == "bye" ? 0 : 1;
  });
  auto server = mpp::Pipe<std::string>::create(name);
  REQUIRE_THROWS_AS(mpp::Pipe<std::string>::create(name), mpp::ExistsError);
  REQUIRE_THROWS_AS(mpp::Pipe<int>::open(name), mpp::TypeMismatchError);
  server.send("hello");
  REQUIRE(server.recv() == "hello world");
  server.send("bye");
  REQUIRE(wait_child(pid) == 0);
  REQUIRE_THROWS_AS(server.recv(), mpp::EOFError);                          // the client exited
  REQUIRE_THROWS_AS(mpp::Pipe<std::string>::open(name), mpp::ExistsError);  // one client only
}

TEST_CASE("Pipe: named one-way pipe: the creator receives, the opener sends", "[pipe]") {
  const auto name = unique_name("oneway");
  auto r = mpp::Pipe<int>::create(name, false);
  REQUIRE(r.readable());
  REQUIRE_FALSE(r.writable());
  REQUIRE_FALSE(r.poll(0.02s));  // nobody connected yet: not EOF, just nothing
  const pid_t pid = fork_child([&] {
    r.close();
    auto w = mpp::Pipe<int>::open(name);
    if (w.readable() || !w.writable()) return 2;
    for (int i = 0; i < 1000; ++i) w.send(i);
    return 0;
  });
  for (int i = 0; i < 1000; ++i) REQUIRE(r.recv() == i);
  REQUIRE(wait_child(pid) == 0);
  REQUIRE_THROWS_AS(r.recv(), mpp::EOFError);
}

#endif  // MPP_OS_POSIX

TEST_CASE("Pipe: invalid capacity", "[pipe]") {
  REQUIRE_THROWS_AS(mpp::Pipe<int>(true, {.capacity = 1000}), mpp::InvalidArgument);
  REQUIRE_THROWS_AS(mpp::Pipe<int>(true, {.capacity = 2048}), mpp::InvalidArgument);
}

// ---- spawned processes (portable: these also run on Windows) ---------------------------------

namespace {
/// Opens the named pipe `name` and sends back each of the `n` messages it receives.
void pipe_echo(std::string name, int n) {
  auto c = mpp::Pipe<std::string>::open(name);
  for (int i = 0; i < n; ++i) c.send(c.recv(60s));
}
/// Opens the named one-way pipe `name` (its sending end) and sends 0 .. n-1.
void pipe_count(std::string name, int n) {
  auto w = mpp::Pipe<int>::open(name);
  for (int i = 0; i < n; ++i) w.send(i);
}
/// Opens the named pipe `name`, says hello, then blocks in recv() (until it is killed).
void pipe_hang(std::string name) {
  auto c = mpp::Pipe<int>::open(name);
  c.send(1);
  (void)c.recv();
}
/// Python's `def f(conn): conn.send(...); conn.close()` with the connection as an argument.
void greet(mpp::Connection<std::string> c, int n) {
  for (int i = 0; i < n; ++i) c.send("hello " + std::to_string(i));
  c.close();
}
/// Receives ints on `c` and sends each one back doubled until EOF.
void doubler(mpp::Connection<int> c) {
  try {
    for (;;) c.send(2 * c.recv(60s));
  } catch (const mpp::EOFError&) {
  }
}
template <class F, class... Args>
mpp::Process spawn(F&& f, Args&&... args) {
  return mpp::get_context(mpp::StartMethod::spawn)
      .process(std::forward<F>(f), std::forward<Args>(args)...);
}
}  // namespace
MPP_REGISTER(pipe_echo);
MPP_REGISTER(pipe_count);
MPP_REGISTER(pipe_hang);
MPP_REGISTER(greet);
MPP_REGISTER(doubler);

TEST_CASE("Pipe: named pipe, a spawned process connects by name and echoes", "[pipe][spawn]") {
  const auto name = unique_name("pipe.echo");
  auto server = mpp::Pipe<std::string>::create(name, true, {.capacity = 4096});
  std::vector<std::string> msgs{"", "hello", std::string(4000, 'r'), std::string(300000, 's')};
  for (int i = 0; i < 200; ++i)
    msgs.push_back(std::to_string(i) + std::string(static_cast<std::size_t>(i) * 13, '.'));
  auto p = spawn(pipe_echo, name, static_cast<int>(msgs.size()));
  p.start();
  for (const auto& m : msgs) {  // one at a time: a streamed message needs the peer reading
    server.send(m);
    REQUIRE(server.recv(60s) == m);
  }
  CHECK(p.join(60s));
  CHECK(p.exitcode() == 0);
  CHECK_THROWS_AS(server.recv(10s), mpp::EOFError);  // the spawned end is gone with its process
}

TEST_CASE("Pipe: named one-way pipe: a spawned sender blocks on a full ring and is woken",
          "[pipe][spawn]") {
  const auto name = unique_name("pipe.count");
  auto r = mpp::Pipe<int>::create(name, false, {.capacity = 4096});
  constexpr int n = 20000;
  auto p = spawn(pipe_count, name, n);
  p.start();
  for (int i = 0; i < n; ++i) REQUIRE(r.recv(60s) == i);
  CHECK(p.join(60s));
  CHECK(p.exitcode() == 0);
  CHECK_THROWS_AS(r.recv(10s), mpp::EOFError);
}

TEST_CASE("Pipe: spawn, a Connection passed as an argument, as Python's Process(args=(conn,))",
          "[pipe][spawn]") {
  SECTION("the parent closes its copy right after start(), as Python programs do") {
    auto parentchild_pipe = mpp::Pipe<std::string>();
    auto& parent = parentchild_pipe.first;
    auto& child = parentchild_pipe.second;
    auto p = spawn(greet, child, 3);
    p.start();
    child.close();
    for (int i = 0; i < 3; ++i) CHECK(parent.recv(60s) == "hello " + std::to_string(i));
    CHECK_THROWS_AS(parent.recv(60s), mpp::EOFError);  // the child closed the only copy left
    CHECK(p.join(60s));
    CHECK(p.exitcode() == 0);
  }
  SECTION("both ways: the child answers until the parent closes its end") {
    auto ab_pipe = mpp::Pipe<int>();
    auto& a = ab_pipe.first;
    auto& b = ab_pipe.second;
    auto p = spawn(doubler, b);
    p.start();
    b.close();
    long long sum = 0;
    for (int i = 1; i <= 100; ++i) {
      a.send(i);
      sum += a.recv(60s);
    }
    CHECK(sum == 2 * 5050);
    a.close();  // the doubler sees EOF and returns
    CHECK(p.join(60s));
    CHECK(p.exitcode() == 0);
  }
  SECTION("a closed connection cannot be passed") {
    auto ab_pipe = mpp::Pipe<int>();
    auto& b = ab_pipe.second;
    b.close();
    mpp::Bytes out;
    CHECK_THROWS_AS(mpp::codec<mpp::Connection<int>>::encode(b, out), mpp::OSError);
  }
  SECTION("an encoded connection whose sender closed it first is refused clearly") {
    auto ab_pipe = mpp::Pipe<int>();
    auto& a = ab_pipe.first;
    auto& b = ab_pipe.second;
    mpp::Bytes wire;
    mpp::codec<mpp::Connection<int>>::encode(b, wire);
    b.close();  // nobody took the reserved slot: it is freed (after up to 1 s)
    CHECK_THROWS_AS(mpp::codec<mpp::Connection<int>>::decode(wire), mpp::ValueError);
    CHECK_THROWS_AS(a.recv(10s), mpp::EOFError);
  }
}

TEST_CASE("Pipe: named pipe, a blocked recv raises EOFError when the spawned peer is killed",
          "[pipe][spawn][kill]") {
  const auto name = unique_name("pipe.hang");
  auto c = mpp::Pipe<int>::create(name);
  auto p = spawn(pipe_hang, name);
  p.start();
  REQUIRE(c.recv(60s) == 1);
  p.kill();
  const auto t0 = std::chrono::steady_clock::now();
  CHECK_THROWS_AS(c.recv(30s), mpp::EOFError);
  CHECK(seconds_since(t0) < 20.0);  // noticed by the periodic liveness check, not the timeout
  CHECK(p.join(30s));
  CHECK_THROWS_AS(c.send(2), mpp::BrokenPipeError);
}

#if defined(MPP_OS_POSIX)

// ---- peers killed with SIGKILL ----------------------------------------------------------------

TEST_CASE("Pipe: writer SIGKILLed while the reader is blocked: EOFError within 1 s",
          "[pipe][kill]") {
  auto rw_pipe = mpp::Pipe<int>(false);
  auto& r = rw_pipe.first;
  auto& w = rw_pipe.second;
  const pid_t pid = fork_child([&] {
    r.close();
    w.send(1);
    ::pause();
    return 0;
  });
  w.close();
  REQUIRE(r.recv() == 1);
  const pid_t killer = fork_child([&] {
    ::usleep(100000);
    ::kill(pid, SIGKILL);
    return 0;
  });
  const auto t0 = std::chrono::steady_clock::now();
  REQUIRE_THROWS_AS(r.recv(), mpp::EOFError);
  REQUIRE(seconds_since(t0) < 5.0);  // generous: detection takes about 0.2 s
  REQUIRE(wait_child(killer) == 0);
  REQUIRE(wait_child(pid) == -SIGKILL);
}

TEST_CASE(
    "Pipe: reader SIGKILLed while the writer is blocked on a full ring: BrokenPipeError within 1 s",
    "[pipe][kill]") {
  auto rw_pipe = mpp::Pipe<std::uint64_t>(false, {.capacity = 4096});
  auto& r = rw_pipe.first;
  auto& w = rw_pipe.second;
  const pid_t pid = fork_child([&] {
    w.close();
    ::pause();
    return 0;
  });
  r.close();
  const pid_t killer = fork_child([&] {
    ::usleep(100000);
    ::kill(pid, SIGKILL);
    return 0;
  });
  const auto t0 = std::chrono::steady_clock::now();
  REQUIRE_THROWS_AS(([&] {
                      for (std::uint64_t i = 0;; ++i) w.send(i);
                    }()),
                    mpp::BrokenPipeError);
  REQUIRE(seconds_since(t0) < 5.0);
  REQUIRE(wait_child(killer) == 0);
  REQUIRE(wait_child(pid) == -SIGKILL);
}

TEST_CASE("Pipe: send to a reader that died while waiting raises BrokenPipeError", "[pipe][kill]") {
  auto rw_pipe = mpp::Pipe<int>(false);
  auto& r = rw_pipe.first;
  auto& w = rw_pipe.second;
  const pid_t pid = fork_child([&] {
    w.close();
    (void)r.recv();  // asleep here when killed
    return 0;
  });
  r.close();
  ::usleep(100000);
  ::kill(pid, SIGKILL);
  REQUIRE(wait_child(pid) == -SIGKILL);
  const auto t0 = std::chrono::steady_clock::now();
  bool broken = false;
  while (!broken && seconds_since(t0) < 5.0) {
    try {
      w.send(1);
      ::usleep(1000);
    } catch (const mpp::BrokenPipeError&) {
      broken = true;
    }
  }
  REQUIRE(broken);
}

TEST_CASE(
    "Pipe: writer SIGKILLed in the middle of a streamed message: EOFError, never a partial message",
    "[pipe][kill]") {
  for (int round = 0; round < 6; ++round) {
    auto rw_pipe = mpp::Pipe<int>(false, {.capacity = 1 << 16});
    auto& r = rw_pipe.first;
    auto& w = rw_pipe.second;
    const std::size_t size = std::size_t{8} << 20;
    const pid_t pid = fork_child([&] {
      r.close();
      w.send(0);
      w.send_bytes(pattern(size, 9));  // blocks on the full ring until killed
      return 0;
    });
    w.close();
    REQUIRE(r.recv() == 0);
    const pid_t killer = fork_child([&] {
      ::usleep(static_cast<useconds_t>(20000 + 15000 * round));
      ::kill(pid, SIGKILL);
      return 0;
    });
    // Even rounds start reading after the kill (the writer is blocked on the full ring, so the
    // kill lands mid-message). Odd rounds read while the writer runs: the kill lands while this
    // recv assembles, or after the message completed — then it must be whole.
    if (round % 2 == 0) {
      REQUIRE(wait_child(killer) == 0);
      REQUIRE_THROWS_AS(r.recv_bytes(), mpp::EOFError);
    } else {
      try {
        const auto got = r.recv_bytes();
        REQUIRE(got == pattern(size, 9));
        REQUIRE_THROWS_AS(r.recv_bytes(), mpp::EOFError);
      } catch (const mpp::EOFError&) {
      }
      REQUIRE(wait_child(killer) == 0);
    }
    const int status = wait_child(pid);
    REQUIRE((status == -SIGKILL || (round % 2 == 1 && status == 0)));
  }
}

TEST_CASE("Pipe: a forked child SIGKILLed mid-message while the parent still holds the writer end",
          "[pipe][kill]") {
  auto rw_pipe = mpp::Pipe<int>(false, {.capacity = 1 << 16});
  auto& r = rw_pipe.first;
  auto& w = rw_pipe.second;
  const pid_t pid = fork_child([&] {
    w.send_bytes(pattern(std::size_t{4} << 20, 3));
    return 0;
  });
  ::usleep(50000);
  ::kill(pid, SIGKILL);
  REQUIRE(wait_child(pid) == -SIGKILL);
  // The abandoned frames are skipped: the next complete message is delivered, never a torn one.
  const pid_t drain = fork_child([&] {
    w.close();
    const auto got = r.recv_bytes();
    return got == pattern(100, 4) ? 0 : 1;
  });
  r.close();
  w.send_bytes(pattern(100, 4));
  w.close();
  REQUIRE(wait_child(drain) == 0);
}

TEST_CASE("Pipe: users, an end held by 100 forked children stays held until the last one leaves",
          "[pipe][users]") {
  constexpr int kKids = 100, kKilled = 64;  // 64 entries per end used to be the limit
  auto ab_pipe = mpp::Pipe<int>();
  auto& a = ab_pipe.first;
  auto& b = ab_pipe.second;
  int go[2];
  REQUIRE(::pipe(go) == 0);
  std::vector<pid_t> kids;
  for (int i = 0; i < kKids; ++i) {
    kids.push_back(fork_child([&, i] {
      ::close(go[1]);
      char c;
      if (::read(go[0], &c, 1) != 1) return 2;
      b.send(i);
      return 0;
    }));
  }
  b.close();  // the children hold it now
  for (int i = 0; i < kKilled; ++i) {
    ::kill(kids[static_cast<std::size_t>(i)], SIGKILL);
    CHECK(wait_child(kids[static_cast<std::size_t>(i)]) == -SIGKILL);
  }
  // The survivors still hold the end: nothing to read, and no EOF before their messages.
  CHECK_FALSE(a.poll(300ms));
  const std::vector<char> bytes(kKids - kKilled, 1);
  REQUIRE(::write(go[1], bytes.data(), bytes.size()) == static_cast<ssize_t>(bytes.size()));
  std::set<int> got;
  for (int i = kKilled; i < kKids; ++i) got.insert(a.recv());
  CHECK(got.size() == static_cast<std::size_t>(kKids - kKilled));
  CHECK(*got.begin() == kKilled);
  for (int i = kKilled; i < kKids; ++i) CHECK(wait_child(kids[static_cast<std::size_t>(i)]) == 0);
  CHECK_THROWS_AS(a.recv(), mpp::EOFError);  // the last holder left
  ::close(go[0]);
  ::close(go[1]);
}
#endif  // MPP_OS_POSIX

#if defined(MPP_OS_POSIX)
// ---- whole messages under SIGKILL and at every crash point -------------------------------------

TEST_CASE("Pipe: writer SIGKILLed mid-message: the reader gets only whole messages, then EOFError",
          "[pipe][kill]") {
  const long reps =
      std::max(1L, std::atol(std::getenv("MPP_KILL_REPS") ? std::getenv("MPP_KILL_REPS") : "10"));
  std::mt19937_64 rng(std::random_device{}());
  auto message = [](std::uint64_t seq, std::size_t n) {
    std::string m = fmt::format("{}:{}:", seq, n);
    m.resize(m.size() + n, static_cast<char>('a' + seq % 26));
    return m;
  };
  for (long rep = 0; rep < reps; ++rep) {
    mpp::PipeOptions po;
    po.capacity = 16384;  // messages of up to 40 KB span several frames and wrap the ring
    mpp::Pipe<std::string> p(false, po);
    auto& reader = p.first;
    auto& writer = p.second;
    const std::uint64_t seed = rng();
    const pid_t child = mpp_test::fork_child([&] {
      reader.close();
      std::mt19937_64 r(seed);
      for (std::uint64_t seq = 0;; ++seq) writer.send(message(seq, r() % 40000));
      return 0;
    });
    writer.close();  // the child holds the only writer now
    std::uint64_t got = 0;
    bool eof = false;
    std::thread killer([&, delay = std::getenv("MPP_PIPE_KILL_NOW") ? 0 : rng() % 30000] {
      std::this_thread::sleep_for(std::chrono::microseconds(delay));
      ::kill(child, SIGKILL);
    });
    try {
      for (;;) {
        const std::string m = reader.recv(30s);
        // Whole and in order: "<seq>:<n>:" then n copies of one letter.
        const auto a = m.find(':'), b = m.find(':', a + 1);
        REQUIRE(b != std::string::npos);
        CHECK(std::stoull(m.substr(0, a)) == got);
        const std::size_t n = std::stoull(m.substr(a + 1, b - a - 1));
        CHECK(m.size() == b + 1 + n);
        CHECK(m.find_first_not_of(static_cast<char>('a' + got % 26), b + 1) == std::string::npos);
        ++got;
      }
    } catch (const mpp::EOFError&) {
      eof = true;
    }
    killer.join();
    CHECK(mpp_test::wait_child(child) == -SIGKILL);
    CHECK(eof);
    INFO("rep " << rep << ": " << got << " whole messages before EOF");
  }
}

// ---- crash points in pipe send/recv/close
// ---------------------------------------------------------

namespace {
constexpr std::uint64_t kPipeMsgs = 16;

/// Message i of the bytes script: "<i>:" padded with one letter to a size that cycles through a
/// small frame, a large frame, a chain of 3 frames and a chain of 9 frames that wraps the ring.
std::string pipe_msg(std::uint64_t i) {
  static constexpr std::size_t kSizes[] = {5, 300, 2500, 9000, 40};
  std::string m = fmt::format("{}:", i);
  m.resize(kSizes[i % 5], static_cast<char>('a' + i % 26));
  return m;
}
bool same_bytes(const mpp::Bytes& b, std::size_t n, const std::string& want) {
  return n == want.size() && std::memcmp(b.data(), want.data(), n) == 0;
}

/// Forks `fn` armed to die at the `hit`-th pass through `point` (none if empty), or recording
/// the points it passes to `record_fd` (if >= 0).
template <class F>
pid_t fork_armed(const std::string& point, long hit, int record_fd, F&& fn) {
  return mpp_test::fork_child([&] {
    if (record_fd >= 0) mpp_test::crash_points::record_to(record_fd);
    if (!point.empty()) mpp_test::crash_points::arm(point, hit);
    return fn();
  });
}

std::vector<std::string> read_points(int fd) {
  std::string all;
  char buf[512];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof buf)) > 0) all.append(buf, static_cast<std::size_t>(n));
  std::vector<std::string> names;
  for (std::size_t b = 0, e; (e = all.find('\n', b)) != std::string::npos; b = e + 1)
    names.push_back(all.substr(b, e - b));
  return names;
}

/// Drives one pipe path (`T` with `send_one(conn, i)` / `recv_one(conn, i)` -> whole and equal)
/// through every crash point its sender and its receiver pass: a one-way pipe with a 4 KiB ring,
/// the child sends (or receives) the kPipeMsgs-message script and closes its end; the parent
/// does the other side. Killing the sender at a point must leave the parent receiving whole
/// messages in order, then EOFError; killing the receiver must make the parent's send raise
/// BrokenPipeError at the latest when the ring is full. Timeouts (10 s) turn hangs into failures.
template <class T, class Send, class Recv>
void pipe_crash_points(const char* path, Send send_one, Recv recv_one) {
  mpp::PipeOptions po;
  po.capacity = 4096;  // max frame 1 KiB: the bytes script streams and wraps
  std::optional<mpp::Pipe<T>> p;
  auto sender = [&] {
    p->first.close();
    for (std::uint64_t i = 0; i < kPipeMsgs; ++i) send_one(p->second, i);
    p->second.close();
    return 0;
  };
  auto receiver = [&] {
    p->second.close();
    for (std::uint64_t i = 0; i < kPipeMsgs; ++i)
      if (!recv_one(p->first, i)) return 3;
    p->first.close();
    return 0;
  };
  // Parent side of "the sender dies": returns how many whole messages arrived before EOFError.
  auto receive_all = [&](std::string& outcome) {
    p->second.close();
    std::uint64_t got = 0;
    try {
      for (;; ++got) {
        if (got > kPipeMsgs) {
          outcome = "more messages than were sent";
          return got;
        }
        if (!recv_one(p->first, got)) {
          outcome = fmt::format("message {} is torn or out of order", got);
          return got;
        }
      }
    } catch (const mpp::EOFError&) {
      outcome = "EOFError";
    } catch (const std::exception& e) {
      outcome = e.what();
    }
    return got;
  };
  // Parent side of "the receiver dies": returns how many sends returned before BrokenPipeError.
  auto send_all = [&](std::string& outcome) {
    p->first.close();
    std::uint64_t sent = 0;
    try {
      for (; sent < kPipeMsgs + 4096; ++sent) send_one(p->second, sent);
      outcome = "no BrokenPipeError";
    } catch (const mpp::BrokenPipeError&) {
      outcome = "BrokenPipeError";
    } catch (const std::exception& e) {
      outcome = e.what();
    }
    return sent;
  };

  // Discovery: one clean run per role, the child reporting the points it passes.
  std::vector<std::string> send_points, recv_points;
  for (int role = 0; role < 2; ++role) {
    p.emplace(false, po);
    int rec[2];
    REQUIRE(::pipe(rec) == 0);
    const pid_t child =
        fork_armed("", 0, rec[1], [&] { return role == 0 ? sender() : receiver(); });
    ::close(rec[1]);
    std::string outcome;
    const auto n = role == 0 ? receive_all(outcome) : send_all(outcome);
    CHECK(outcome == (role == 0 ? "EOFError" : "BrokenPipeError"));
    CHECK(n >= kPipeMsgs);
    (role == 0 ? send_points : recv_points) = read_points(rec[0]);
    ::close(rec[0]);
    CHECK(mpp_test::wait_child(child) == 0);
  }
  fmt::print("pipe ({}) crash points: sender {}; receiver {}\n", path, fmt::join(send_points, ", "),
             fmt::join(recv_points, ", "));
  CHECK(send_points.size() >= 3);
  CHECK(recv_points.size() >= 2);

  int kills = 0;
  double slowest = 0;
  for (int role = 0; role < 2; ++role) {
    for (const auto& point : role == 0 ? send_points : recv_points) {
      for (long hit : {1L, 2L, 7L}) {
        p.emplace(false, po);
        const pid_t child =
            fork_armed(point, hit, -1, [&] { return role == 0 ? sender() : receiver(); });
        const auto t0 = std::chrono::steady_clock::now();
        std::string outcome;
        const auto n = role == 0 ? receive_all(outcome) : send_all(outcome);
        slowest = std::max(slowest, mpp_test::seconds_since(t0));
        const int rc = mpp_test::wait_child(child);
        INFO(path << ": " << (role == 0 ? "sender" : "receiver") << " armed at " << point << " #"
                  << hit << ", child status " << rc << ", parent " << outcome << " after " << n);
        CHECK((rc == -SIGKILL || rc == 0));
        kills += rc == -SIGKILL;
        if (role == 0) {
          CHECK(outcome == "EOFError");  // whole messages in order (checked), then EOF
          if (rc == 0) CHECK(n == kPipeMsgs);
        } else {
          CHECK(outcome == "BrokenPipeError");
          CHECK(n >= (rc == 0 ? kPipeMsgs : 0));
          CHECK(n <= kPipeMsgs + 4096 / 12 + 1);  // at the latest once the ring is full
        }
      }
    }
  }
  fmt::print("pipe ({}): {} kills, slowest run {:.2f} s\n", path, kills, slowest);
  CHECK(kills >= 6);
  p.reset();
}
}  // namespace

TEST_CASE("Pipe: crash points in send/recv/close: whole messages then EOFError, or BrokenPipeError",
          "[pipe][kill]") {
  using namespace std::chrono_literals;
  SECTION("raw values (the inline fast paths)") {
    constexpr std::uint64_t kMul = 0x9E3779B97F4A7C15ull;
    pipe_crash_points<std::uint64_t>(
        "raw", [](auto& c, std::uint64_t i) { c.send(i * kMul, 10s); },
        [](auto& c, std::uint64_t i) { return c.recv(10s) == i * kMul; });
  }
  SECTION("bytes (frames, chains of frames, direct assembly)") {
    pipe_crash_points<void>(
        "bytes",
        [](auto& c, std::uint64_t i) {
          const std::string m = pipe_msg(i);
          c.send_bytes(std::as_bytes(std::span(m.data(), m.size())), 0, std::nullopt, 10s);
        },
        [](auto& c, std::uint64_t i) {
          const std::string want = pipe_msg(i);
          if (i % 2 == 0) {
            const mpp::Bytes b = c.recv_bytes(std::nullopt, 10s);
            return same_bytes(b, b.size(), want);
          }
          mpp::Bytes buf(16384);  // large messages are assembled here directly
          const std::size_t n = c.recv_bytes_into(buf, 0, 10s);
          return same_bytes(buf, n, want);
        });
  }
}
#endif  // MPP_OS_POSIX
