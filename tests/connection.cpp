// mpp::connection: Listener/Client across forked and spawned processes over Unix paths, Linux's
// abstract namespace, IPv4 and IPv6; the HMAC handshake (wrong key, garbage, stalls); framing;
// wait() over connections, listeners, process sentinels and descriptors; descriptor passing.
// Python interoperability: tests/connection_python.cpp. Ported from CPython's
// _TestListenerClient, _TestListener, TestWait, _TestConnection.test_fd_transfer.
#include <mpp/connection.hpp>
#include <mpp/process.hpp>

#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstddef>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "helpers.hpp"

namespace conn = mpp::connection;
using namespace std::chrono_literals;
using mpp_test::fork_child;
using mpp_test::seconds_since;
using mpp_test::wait_child;

namespace {

std::string fresh_path() { return "/tmp/" + mpp_test::unique_name("sock"); }
std::string fresh_abstract() { return std::string(1, '\0') + mpp_test::unique_name("abstract"); }

std::string text_of(const mpp::Bytes& b) {
  return std::string(reinterpret_cast<const char*>(b.data()), b.size());
}

/// The client side of the echo conversation, run in a child: receives n, sends n strings and a
/// raw message, then echoes values back doubled until EOF.
int echo_client(const conn::Address& address, const conn::Authkey& key) {
  auto c = conn::Client(address, std::nullopt, key);
  const int n = c.recv<int>(30s);
  for (int i = 0; i < n; ++i) c.send(std::string("message ") + std::to_string(i));
  c.send_bytes("raw bytes");
  try {
    for (;;) c.send(2 * c.recv<int>(30s));
  } catch (const mpp::EOFError&) {
  }
  return 0;
}

void echo_server(conn::Listener& l) {
  auto c = l.accept(30s);
  c.send(5);
  for (int i = 0; i < 5; ++i) REQUIRE(c.recv<std::string>(30s) == "message " + std::to_string(i));
  REQUIRE(text_of(c.recv_bytes(std::nullopt, 30s)) == "raw bytes");
  for (int i = 0; i < 20; ++i) {
    c.send(i);
    REQUIRE(c.recv<int>(30s) == 2 * i);
  }
  c.close();
}

// ---- spawned children ----------------------------------------------------------------------

/// Connects to `address` with the authkey this process inherited and runs echo_client.
void spawn_echo_client(std::string address) { (void)echo_client(conn::Address(address), {}); }
/// Connects to TCP `host`:`port` with key `key` and runs echo_client.
void spawn_tcp_client(std::string host, int port, std::string key) {
  (void)echo_client(conn::Address(host, static_cast<std::uint16_t>(port)), key);
}
/// Receives a descriptor over a connection to `address` and writes `text` through it.
void spawn_fd_writer(std::string address, std::string text) {
  auto c = conn::Client(conn::Address(address));
  const int fd = conn::recv_handle(c, 30s);
  const bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  ::close(fd);
  c.send(std::string(ok ? "written" : "write failed"));
  (void)c.recv_bytes(std::nullopt, 30s);  // until the parent has read the answer and closes
}

template <class F, class... Args>
mpp::Process spawn(F&& f, Args&&... args) {
  return mpp::get_context(mpp::StartMethod::spawn)
      .process(std::forward<F>(f), std::forward<Args>(args)...);
}

}  // namespace
MPP_REGISTER(spawn_echo_client);
MPP_REGISTER(spawn_tcp_client);
MPP_REGISTER(spawn_fd_writer);

// ---- Listener and Client ---------------------------------------------------------------------

TEST_CASE("Connection: a forked Client talks to a Listener on every family", "[connection]") {
  const std::vector<std::pair<conn::Address, conn::Family>> cases = {
      {fresh_path(), conn::Family::af_unix},
      {fresh_abstract(), conn::Family::af_unix},
      {conn::Address("127.0.0.1", 0), conn::Family::af_inet},
      {conn::Address("::1", 0), conn::Family::af_inet6},
  };
  for (const auto& [address, family] : cases) {
    conn::Listener l(address, family, 5, "sesame");
    INFO("listening on " << l.address().str());
    REQUIRE(l.family() == family);
    if (family != conn::Family::af_unix) {
      REQUIRE(l.address().port);
      REQUIRE(*l.address().port != 0);  // port 0: the one the system chose
    } else {
      REQUIRE(l.address() == address);
    }
    REQUIRE_FALSE(l.last_accepted());
    const conn::Address bound = l.address();
    const pid_t pid = fork_child([&] { return echo_client(bound, "sesame"); });
    echo_server(l);
    REQUIRE(wait_child(pid) == 0);
    REQUIRE(l.last_accepted());
    if (family != conn::Family::af_unix) REQUIRE(l.last_accepted()->port);
    const std::string path = l.address().host;
    l.close();
    REQUIRE(l.closed());
    if (family == conn::Family::af_unix && path[0] != '\0')
      REQUIRE(::access(path.c_str(), F_OK) != 0);  // the socket file went with the Listener
  }
}

TEST_CASE("Connection: a spawned Client authenticates with the inherited authkey", "[connection]") {
  conn::Listener l;  // a fresh path, authkey current_process().authkey()
  auto p = spawn(spawn_echo_client, l.address().host);
  p.start();
  echo_server(l);
  REQUIRE(p.join(60s));
  REQUIRE(p.exitcode() == 0);
}

TEST_CASE("Connection: a spawned Client over TCP with an explicit key", "[connection]") {
  conn::Listener l(conn::Address("127.0.0.1", 0), std::nullopt, 1, "tcp key");
  auto p = spawn(spawn_tcp_client, std::string("127.0.0.1"), static_cast<int>(*l.address().port),
                 std::string("tcp key"));
  p.start();
  echo_server(l);
  REQUIRE(p.join(60s));
  REQUIRE(p.exitcode() == 0);
}

TEST_CASE("Connection: several clients in turn, backlog honoured", "[connection]") {
  conn::Listener l(fresh_path(), std::nullopt, 4, "k");
  std::vector<pid_t> pids;
  for (int i = 0; i < 4; ++i)
    pids.push_back(fork_child([&, i] {
      auto c = conn::Client(l.address(), std::nullopt, "k");
      c.send(i);
      return c.recv<int>(30s) == i + 100 ? 0 : 1;
    }));
  std::set<int> seen;
  for (int i = 0; i < 4; ++i) {
    auto c = l.accept(30s);
    const int v = c.recv<int>(30s);
    seen.insert(v);
    c.send(v + 100);
  }
  REQUIRE(seen == std::set<int>{0, 1, 2, 3});
  for (pid_t pid : pids) REQUIRE(wait_child(pid) == 0);
}

TEST_CASE("Connection: accept waits at most its timeout", "[connection]") {
  conn::Listener l(fresh_path(), std::nullopt, 1, "k");
  const auto t0 = std::chrono::steady_clock::now();
  REQUIRE_THROWS_AS(l.accept(0.2), mpp::TimeoutError);
  REQUIRE(seconds_since(t0) < 10);
  l.close();
  REQUIRE_THROWS_AS(l.accept(0.2), mpp::OSError);
}

TEST_CASE("Connection: Client to an address nobody listens on fails", "[connection]") {
  REQUIRE_THROWS_AS(conn::Client(fresh_path()), mpp::OSError);
  REQUIRE_THROWS_AS(conn::Client(conn::Address("127.0.0.1", 1)), mpp::OSError);
  REQUIRE_THROWS_AS(conn::Listener(conn::Address("x", 1), conn::Family::af_unix),
                    mpp::InvalidArgument);
  REQUIRE_THROWS_AS(conn::Listener(std::string(200, 'x')), mpp::InvalidArgument);
}

// ---- authentication ------------------------------------------------------------------------

TEST_CASE("Connection: a wrong key is AuthenticationError on both sides", "[connection]") {
  for (const bool client_wrong : {true, false}) {
    conn::Listener l(fresh_path(), std::nullopt, 1, client_wrong ? "right" : "other");
    const auto t0 = std::chrono::steady_clock::now();
    const pid_t pid = fork_child([&] {
      try {
        (void)conn::Client(l.address(), std::nullopt, "right2");
      } catch (const mpp::AuthenticationError&) {
        return 0;
      }
      return 1;
    });
    REQUIRE_THROWS_AS(l.accept(30s), mpp::AuthenticationError);
    REQUIRE(wait_child(pid) == 0);
    REQUIRE(seconds_since(t0) < 15);
  }
}

TEST_CASE("Connection: the listener keeps serving after a failed handshake", "[connection]") {
  conn::Listener l(fresh_path(), std::nullopt, 2, "key");
  const pid_t bad = fork_child([&] {
    try {
      (void)conn::Client(l.address(), std::nullopt, "not the key");
    } catch (const mpp::AuthenticationError&) {
      return 0;
    }
    return 1;
  });
  REQUIRE_THROWS_AS(l.accept(30s), mpp::AuthenticationError);
  REQUIRE(wait_child(bad) == 0);
  const pid_t good = fork_child([&] { return echo_client(l.address(), "key"); });
  echo_server(l);
  REQUIRE(wait_child(good) == 0);
}

TEST_CASE("Connection: garbage and stalls during the handshake are bounded", "[connection]") {
  conn::ConnectionOptions fast;
  fast.handshake_timeout = std::chrono::duration<double>(0.5);
  conn::Listener l(fresh_path(), std::nullopt, 4, "key", fast);
  // What a hostile peer writes before authenticating: a 1 GiB length, the 8-byte form claiming
  // 2^62 bytes, a negative length, plain text, a truncated challenge answer, nothing at all.
  const std::vector<std::string> attacks = {
      std::string("\x40\x00\x00\x00", 4),
      std::string("\xff\xff\xff\xff\x40\x00\x00\x00\x00\x00\x00\x00", 12),
      std::string("\x80\x00\x00\x05hello", 9),
      "GET / HTTP/1.1\r\nHost: x\r\n\r\n",
      std::string("\x00\x00\x00\x20{sha256}short", 17),
      "",
  };
  for (const auto& attack : attacks) {
    const pid_t pid = fork_child([&] {
      auto raw = conn::Client(l.address(), std::nullopt, conn::Authkey::none());
      if (!attack.empty()) (void)::write(raw.fileno(), attack.data(), attack.size());
      std::this_thread::sleep_for(60s);  // stall: the listener must give up on its own
      return 0;
    });
    const auto t0 = std::chrono::steady_clock::now();
    REQUIRE_THROWS_AS(l.accept(30s), mpp::AuthenticationError);
    REQUIRE(seconds_since(t0) < 20);  // the handshake timeout, not the peer, ended it
    ::kill(pid, SIGKILL);
    (void)wait_child(pid);
  }
  // Still serving.
  const pid_t good = fork_child([&] { return echo_client(l.address(), "key"); });
  echo_server(l);
  REQUIRE(wait_child(good) == 0);
}

TEST_CASE("Connection: a client stalls against a silent listener within its bound",
          "[connection]") {
  conn::Listener raw(fresh_path(), std::nullopt, 1, conn::Authkey::none());
  conn::ConnectionOptions fast;
  fast.handshake_timeout = std::chrono::duration<double>(0.5);
  const auto t0 = std::chrono::steady_clock::now();
  REQUIRE_THROWS_AS(conn::Client(raw.address(), std::nullopt, "key", fast),
                    mpp::AuthenticationError);
  REQUIRE(seconds_since(t0) < 10);
}

TEST_CASE("Connection: Authkey::none() skips authentication on both sides", "[connection]") {
  conn::Listener l(fresh_abstract(), std::nullopt, 1, conn::Authkey::none());
  const pid_t pid = fork_child([&] { return echo_client(l.address(), conn::Authkey::none()); });
  echo_server(l);
  REQUIRE(wait_child(pid) == 0);
}

// ---- messages ------------------------------------------------------------------------------

TEST_CASE("Connection: bytes, recv_bytes_into, maxlength and large messages", "[connection]") {
  auto pipe_ab = conn::Pipe();  // (clang 14 cannot capture structured bindings)
  auto& a = pipe_ab.first;
  auto& b = pipe_ab.second;
  std::vector<std::byte> big(3 << 20);
  for (std::size_t i = 0; i < big.size(); ++i) big[i] = std::byte(i * 7);
  const pid_t pid = fork_child([&] {
    a.close();
    b.send_bytes(big);
    b.send_bytes("0123456789", 2, 5);
    b.send_bytes("");
    b.send_bytes("too long for the buffer");
    b.send_bytes("x");
    return 0;  // what is sent stays readable after this end closes
  });
  b.close();
  REQUIRE(a.recv_bytes(std::nullopt, 30s) == big);
  std::array<std::byte, 16> buf{};
  REQUIRE(a.recv_bytes_into(buf, 3, 30s) == 5);
  REQUIRE(std::string(reinterpret_cast<const char*>(buf.data() + 3), 5) == "23456");
  REQUIRE(a.recv_bytes_into(buf, 0, 30s) == 0);
  try {
    (void)a.recv_bytes_into(buf, 0, 30s);
    FAIL("expected BufferTooShort");
  } catch (const mpp::BufferTooShort& e) {
    REQUIRE(e.needed() == 23);
  }
  REQUIRE(a.poll());  // the message is kept
  REQUIRE(text_of(a.recv_bytes()) == "too long for the buffer");
  REQUIRE_THROWS_AS(a.recv_bytes(0, 30s), mpp::OSError);  // as Python: the connection closes
  REQUIRE(a.closed());
  REQUIRE(wait_child(pid) == 0);
}

TEST_CASE("Connection: typed connections and type mismatches keep the message", "[connection]") {
  auto pipe_ab = conn::Pipe();
  auto& a = pipe_ab.first;
  auto& b = pipe_ab.second;
  a.send(std::vector<int>{1, 2, 3});
  a.send_bytes("plain");
  REQUIRE_THROWS_AS(b.recv<int>(1s), mpp::TypeMismatchError);
  REQUIRE(b.poll());
  REQUIRE(b.recv<std::vector<int>>(1s) == std::vector<int>{1, 2, 3});
  REQUIRE_THROWS_AS(b.recv<std::string>(1s), mpp::TypeMismatchError);
  REQUIRE(text_of(b.recv_bytes()) == "plain");

  auto pipe_rw = conn::Pipe<std::string>(false);
  auto& r = pipe_rw.first;
  auto& w = pipe_rw.second;
  REQUIRE_THROWS_AS(r.send("x"), mpp::OSError);
  REQUIRE_THROWS_AS(w.recv(), mpp::OSError);
  const pid_t pid = fork_child([&] {
    for (int i = 0; i < 100; ++i) w.send("value " + std::to_string(i));
    return 0;
  });
  w.close();
  for (int i = 0; i < 100; ++i) REQUIRE(r.recv(30s) == "value " + std::to_string(i));
  REQUIRE(wait_child(pid) == 0);
  REQUIRE_THROWS_AS(r.recv(30s), mpp::EOFError);
  REQUIRE_THROWS_AS(r.recv(0.1), mpp::EOFError);
}

TEST_CASE("Connection: recv and poll time out without losing the stream", "[connection]") {
  auto pipe_ab = conn::Pipe<int>();
  auto& a = pipe_ab.first;
  auto& b = pipe_ab.second;
  REQUIRE_FALSE(a.poll());
  REQUIRE_FALSE(a.poll(0.05));
  REQUIRE_THROWS_AS(a.recv(0.05), mpp::TimeoutError);
  b.send(42);
  REQUIRE(a.poll(1.0));
  REQUIRE(a.recv(1.0) == 42);
  b.close();
  REQUIRE(a.poll(1.0));  // EOF: recv would not block
  REQUIRE_THROWS_AS(a.recv(), mpp::EOFError);
  a.close();
  REQUIRE_THROWS_AS(a.recv(), mpp::OSError);
  REQUIRE_THROWS_AS(a.fileno(), mpp::OSError);
  REQUIRE_THROWS_AS(b.send(1), mpp::OSError);
}

TEST_CASE("Connection: send to a closed peer is BrokenPipeError, not SIGPIPE", "[connection]") {
  auto pipe_ab = conn::Pipe();
  auto& a = pipe_ab.first;
  auto& b = pipe_ab.second;
  b.close();
  std::vector<std::byte> chunk(1 << 20);
  REQUIRE_THROWS_AS(
      [&] {
        for (int i = 0; i < 64; ++i) a.send_bytes(chunk);
      }(),
      mpp::BrokenPipeError);
}

TEST_CASE("Connection: the frame header uses the 8-byte form past 2 GiB - 1", "[connection]") {
  namespace pc = mpp::detail::connection;
  std::array<std::byte, 12> h{};
  REQUIRE(pc::encode_header(0x7fffffff, h) == 4);
  REQUIRE(h[0] == std::byte{0x7f});
  REQUIRE(h[3] == std::byte{0xff});
  REQUIRE(pc::encode_header(0x80000000ull, h) == 12);
  for (int i = 0; i < 4; ++i) REQUIRE(h[static_cast<std::size_t>(i)] == std::byte{0xff});
  REQUIRE(h[7] == std::byte{0});
  REQUIRE(h[8] == std::byte{0x80});
  REQUIRE(h[11] == std::byte{0});
  // And a peer's 8-byte header is read back.
  auto pipe_ab = conn::Pipe();
  auto& a = pipe_ab.first;
  auto& b = pipe_ab.second;
  const std::string wire(
      "\xff\xff\xff\xff\x00\x00\x00\x00\x00\x00\x00\x03"
      "abc",
      15);
  REQUIRE(::write(b.fileno(), wire.data(), wire.size()) == 15);
  REQUIRE(text_of(a.recv_bytes(std::nullopt, 5s)) == "abc");
  // A negative length other than -1 is garbage: CorruptedError, and the stream is closed.
  REQUIRE(::write(b.fileno(), "\x80\x00\x00\x01x", 5) == 5);
  REQUIRE_THROWS_AS(a.recv_bytes(std::nullopt, 5s), mpp::CorruptedError);
  REQUIRE(a.closed());
}

// ---- wait ----------------------------------------------------------------------------------

TEST_CASE("Connection: wait over 4 children x 10 messages with random delays", "[connection]") {
  // CPython's TestWait.test_wait with process sentinels mixed in.
  std::vector<conn::Connection<int>> readers;
  std::vector<mpp::Process> procs;
  for (int c = 0; c < 4; ++c) {
    auto pipe_rw = conn::Pipe<int>(false);
    auto& r = pipe_rw.first;
    auto& w = pipe_rw.second;
    mpp::Process p(
        {.start_method = mpp::StartMethod::fork},
        [](conn::Connection<int> out, int id) {
          std::mt19937 rng(static_cast<unsigned>(id) * 7919u + static_cast<unsigned>(::getpid()));
          std::uniform_int_distribution<int> delay(0, 30);
          for (int i = 0; i < 10; ++i) {
            std::this_thread::sleep_for(std::chrono::milliseconds(delay(rng)));
            out.send(id * 100 + i);
          }
          out.close();
        },
        w, c);
    p.start();
    w.close();
    readers.push_back(r);
    procs.push_back(std::move(p));
  }
  std::vector<std::vector<int>> got(4);
  std::set<std::size_t> open_readers{0, 1, 2, 3}, running{0, 1, 2, 3};
  const auto t0 = std::chrono::steady_clock::now();
  while (!open_readers.empty() || !running.empty()) {
    REQUIRE(seconds_since(t0) < 60);
    std::vector<conn::Waitable> objects;
    std::vector<std::pair<bool, std::size_t>> what;  // (is a reader, index)
    for (std::size_t i : open_readers) {
      objects.emplace_back(readers[i]);
      what.emplace_back(true, i);
    }
    for (std::size_t i : running) {
      objects.emplace_back(procs[i]);
      what.emplace_back(false, i);
    }
    const auto ready = conn::wait(objects, 30.0);
    REQUIRE_FALSE(ready.empty());
    for (std::size_t k : ready) {
      const auto [is_reader, i] = what[k];
      if (is_reader) {
        try {
          got[i].push_back(readers[i].recv(5s));
        } catch (const mpp::EOFError&) {
          open_readers.erase(i);
        }
      } else {
        REQUIRE(procs[i].join(5s));
        running.erase(i);
      }
    }
  }
  for (int c = 0; c < 4; ++c) {
    REQUIRE(got[static_cast<std::size_t>(c)].size() == 10);
    for (int i = 0; i < 10; ++i)
      REQUIRE(got[static_cast<std::size_t>(c)][static_cast<std::size_t>(i)] == c * 100 + i);
    REQUIRE(procs[static_cast<std::size_t>(c)].exitcode() == 0);
  }
}

TEST_CASE("Connection: wait with a negative or zero timeout returns at once", "[connection]") {
  auto pipe_ab = conn::Pipe();
  auto& a = pipe_ab.first;
  auto& b = pipe_ab.second;
  const auto t0 = std::chrono::steady_clock::now();
  REQUIRE(conn::wait({a}, -1).empty());
  REQUIRE(conn::wait({a}, 0).empty());
  REQUIRE(seconds_since(t0) < 1);
  REQUIRE(conn::wait({a, b}, 0.05).empty());
  b.send_bytes("x");
  REQUIRE(conn::wait({a, b}, -1) == std::vector<std::size_t>{0});
}

TEST_CASE("Connection: wait on a listener, a raw descriptor and a kept message", "[connection]") {
  conn::Listener l(fresh_path(), std::nullopt, 1, "k");
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  REQUIRE(conn::wait({l, fds[0]}, 0.05).empty());
  const pid_t pid = fork_child([&] {
    auto c = conn::Client(l.address(), std::nullopt, "k");
    c.send(7);
    (void)c.recv_bytes(std::nullopt, 30s);
    return 0;
  });
  REQUIRE(conn::wait({l, fds[0]}, 30.0) == std::vector<std::size_t>{0});
  auto c = l.accept(30s);
  REQUIRE(::write(fds[1], "!", 1) == 1);
  REQUIRE(conn::wait({c, fds[0]}, 30.0).size() >= 1);
  REQUIRE(c.poll(30.0));
  REQUIRE_THROWS_AS(c.recv<std::string>(), mpp::TypeMismatchError);
  REQUIRE(conn::wait({c}, 0) == std::vector<std::size_t>{0});  // the kept message is ready
  REQUIRE(c.recv<int>() == 7);
  c.send_bytes("bye");
  REQUIRE(wait_child(pid) == 0);
  ::close(fds[0]);
  ::close(fds[1]);
}

// ---- descriptor passing --------------------------------------------------------------------

namespace {
/// A temporary file open read-write at a descriptor above 256; returns {fd, path}.
std::pair<int, std::string> high_temp_file() {
  std::string path = "/tmp/" + mpp_test::unique_name("fd") + ".txt";
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  REQUIRE(fd >= 0);
  const int high = ::fcntl(fd, F_DUPFD_CLOEXEC, 300);
  REQUIRE(high >= 300);
  ::close(fd);
  return {high, path};
}
std::string file_text(int fd) {
  char buf[256] = {};
  const ssize_t n = ::pread(fd, buf, sizeof buf, 0);
  return n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : std::string();
}
}  // namespace

TEST_CASE("Connection: a descriptor passes into a forked child that writes through it",
          "[connection]") {
  auto [fd, path] = high_temp_file();
  auto pipe_ab = conn::Pipe();
  auto& a = pipe_ab.first;
  auto& b = pipe_ab.second;
  const pid_t pid = fork_child([&] {
    a.close();
    const int got = conn::recv_handle(b, 30s);
    const std::string text = "written by the forked child";
    const bool ok = ::write(got, text.data(), text.size()) == static_cast<ssize_t>(text.size());
    ::close(got);
    b.send(ok);
    return 0;
  });
  conn::send_handle(a, fd, pid);
  REQUIRE(a.recv<bool>(30s));
  REQUIRE(wait_child(pid) == 0);
  REQUIRE(file_text(fd) == "written by the forked child");
  ::close(fd);
  ::unlink(path.c_str());
}

TEST_CASE("Connection: a descriptor passes into a spawned child over a Listener", "[connection]") {
  auto [fd, path] = high_temp_file();
  conn::Listener l;
  auto p = spawn(spawn_fd_writer, l.address().host, std::string("written by the spawned child"));
  p.start();
  auto c = l.accept(60s);
  conn::send_handle(c, fd, p.pid().value_or(0));
  REQUIRE(c.recv<std::string>(60s) == "written");
  c.send_bytes("done");
  REQUIRE(p.join(60s));
  REQUIRE(p.exitcode() == 0);
  REQUIRE(file_text(fd) == "written by the spawned child");
  ::close(fd);
  ::unlink(path.c_str());
}

TEST_CASE("Connection: recv_handle on a message without a descriptor is an error, not a hang",
          "[connection]") {
  auto pipe_ab = conn::Pipe();
  auto& a = pipe_ab.first;
  auto& b = pipe_ab.second;
  a.send_bytes("not a descriptor");
  const auto t0 = std::chrono::steady_clock::now();
  REQUIRE_THROWS_AS(conn::recv_handle(b, 5s), mpp::OSError);
  REQUIRE_THROWS_AS(conn::recv_handle(b, 0.1), mpp::OSError);  // still bytes, still no descriptor
  REQUIRE(seconds_since(t0) < 5);
  auto pipe_cd = conn::Pipe();
  auto& c = pipe_cd.first;
  auto& d = pipe_cd.second;
  REQUIRE_THROWS_AS(conn::recv_handle(d, 0.1), mpp::TimeoutError);
  c.close();
  REQUIRE_THROWS_AS(conn::recv_handle(d, 5s), mpp::EOFError);
  REQUIRE_THROWS_AS(conn::send_handle(d, 12345), mpp::OSError);  // not an open descriptor
  conn::Listener tcp(conn::Address("127.0.0.1", 0), std::nullopt, 1, conn::Authkey::none());
  auto t = conn::Client(tcp.address(), std::nullopt, conn::Authkey::none());
  REQUIRE_THROWS_AS(conn::send_handle(t, 0), mpp::OSError);
}

// ---- signals and idle waiting ---------------------------------------------------------------

namespace {
volatile sig_atomic_t g_signals = 0;
void count_signal(int) { g_signals = g_signals + 1; }
}  // namespace

TEST_CASE("Connection: handled signals interrupt neither accept, wait, recv nor a large send",
          "[connection]") {
  // CPython's TestIgnoreEINTR, with a handler installed without SA_RESTART.
  struct sigaction sa {};
  struct sigaction old {};
  sa.sa_handler = count_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;
  REQUIRE(::sigaction(SIGUSR1, &sa, &old) == 0);
  g_signals = 0;
  conn::Listener l(fresh_path(), std::nullopt, 1, "k");
  const pid_t parent = ::getpid();
  std::vector<std::byte> big(8 << 20, std::byte{0x5a});
  const pid_t pid = fork_child([&] {
    auto pester = [&] {
      for (int i = 0; i < 5; ++i) {
        ::kill(parent, SIGUSR1);
        std::this_thread::sleep_for(20ms);
      }
    };
    pester();  // during accept
    auto c = conn::Client(l.address(), std::nullopt, "k");
    pester();  // during wait and recv
    c.send_bytes(big);
    (void)c.recv_bytes(std::nullopt, 30s);  // the parent sends a large message back
    return 0;
  });
  auto c = l.accept(30s);
  REQUIRE(conn::wait({c}, 30.0).size() == 1);
  REQUIRE(c.recv_bytes(std::nullopt, 30s) == big);
  std::thread pest([&] {
    for (int i = 0; i < 5; ++i) {
      ::kill(parent, SIGUSR1);
      std::this_thread::sleep_for(10ms);
    }
  });
  c.send_bytes(big);  // 8 MiB: many partial writes, some interrupted
  pest.join();
  REQUIRE(wait_child(pid) == 0);
  REQUIRE(g_signals > 0);  // (signals sent close together may merge)
  ::sigaction(SIGUSR1, &old, nullptr);
}

TEST_CASE("Connection: waiting on 100 idle connections uses no CPU", "[connection]") {
  std::vector<std::pair<conn::Connection<>, conn::Connection<>>> pipes;
  std::vector<conn::Waitable> objects;
  for (int i = 0; i < 100; ++i) pipes.push_back(conn::Pipe());
  for (auto& p : pipes) objects.emplace_back(p.first);
  auto cpu = [] {
    struct rusage u {};
    ::getrusage(RUSAGE_SELF, &u);
    return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
           static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
  };
  const double before = cpu();
  REQUIRE(conn::wait(objects, 1.0).empty());
  const double used = cpu() - before;
  INFO("CPU seconds used while waiting 1 s: " << used);
  REQUIRE(used < 0.1);  // a busy poll would use the whole second
  pipes[42].second.send_bytes("wake");
  REQUIRE(conn::wait(objects, 30.0) == std::vector<std::size_t>{42});
}
