// mpp::connection against CPython's multiprocessing.connection, both directions: a Python Client
// to an mpp Listener and an mpp Client to a Python Listener (Python 3.12 or 3.13: the "{sha256}"
// handshake), and the legacy HMAC-MD5 handshake of Python 3.11, accepted only with opt-in. A case
// whose interpreter is missing prints the skip marker: CTest reports this file skipped, never
// passed (its own file, so that the marker does not hide the cases of tests/connection.cpp).
#include <mpp/connection.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "helpers.hpp"

namespace conn = mpp::connection;
using namespace std::chrono_literals;
using mpp_test::fork_child;
using mpp_test::wait_child;

namespace {

/// Printed when an interpreter is missing; tests/CMakeLists.txt turns it into "skipped".
constexpr const char* kSkipMarker = "MPP-TEST-SKIPPED:";

/// A shell command prefix running Python `minor` ("3.12"), or nullopt when it is not installed:
/// the plain name first, then pyenv's newest installed version of that series.
std::optional<std::string> find_python(const std::string& minor) {
  const std::string check =
      " -c 'import sys; sys.exit(0 if \"%d.%d\" % sys.version_info[:2] == \"" + minor +
      "\" else 1)' >/dev/null 2>&1";
  const std::vector<std::string> candidates = {
      "python" + minor,
      "PYENV_VERSION=$(pyenv versions --bare 2>/dev/null | grep -E '^" + minor +
          "(\\.|$)' | tail -n1) python" + minor,
  };
  for (const auto& c : candidates)
    if (std::system((c + check).c_str()) == 0) return c;
  return std::nullopt;
}

/// The first of `minors` installed, or nullopt after printing the skip marker.
std::optional<std::string> python_or_skip(std::initializer_list<const char*> minors) {
  for (const char* m : minors)
    if (auto p = find_python(m)) return p;
  std::string list;
  for (const char* m : minors) list += std::string(list.empty() ? "" : " or ") + m;
  fmt::print("{} Python {} is not installed\n", kSkipMarker, list);
  std::fflush(stdout);
  return std::nullopt;
}

std::string write_script(const std::string& body) {
  const std::string path = "/tmp/" + mpp_test::unique_name("py") + ".py";
  std::ofstream(path) << body;
  return path;
}

/// Runs `python script args...` in a child process; returns its pid (collect with wait_child).
pid_t run_python(const std::string& python, const std::string& script, const std::string& args) {
  const std::string cmd = python + " " + script + " " + args;
  return fork_child([cmd] {
    const int rc = std::system(cmd.c_str());
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : 1;
  });
}

std::string text_of(const mpp::Bytes& b) {
  return std::string(reinterpret_cast<const char*>(b.data()), b.size());
}

/// Waits until the Unix socket `path` exists (a Python Listener bound it).
bool wait_for_path(const std::string& path) {
  for (int i = 0; i < 3000; ++i) {
    struct stat st {};
    if (::stat(path.c_str(), &st) == 0) return true;
    std::this_thread::sleep_for(10ms);
  }
  return false;
}

constexpr const char* kPythonClient = R"(
import sys
from multiprocessing.connection import Client
address = sys.argv[1] if len(sys.argv) == 3 else (sys.argv[1], int(sys.argv[2]))
c = Client(address, authkey=sys.argv[-1].encode())
c.send_bytes(b'hello from python')
assert c.recv_bytes() == b'HELLO FROM PYTHON'
big = c.recv_bytes()
assert big == bytes(range(256)) * 4096, len(big)
c.send_bytes(big[::-1])
c.close()
)";

constexpr const char* kPythonListener = R"(
import sys
from multiprocessing.connection import Listener
with Listener(sys.argv[1], authkey=sys.argv[2].encode()) as l:
    c = l.accept()
    m = c.recv_bytes()
    c.send_bytes(m.upper())
    c.send_bytes(bytes(range(256)) * 4096)
    assert c.recv_bytes() == (bytes(range(256)) * 4096)[::-1]
    c.close()
)";

mpp::Bytes big_message() {
  mpp::Bytes b(256 * 4096);
  for (std::size_t i = 0; i < b.size(); ++i) b[i] = std::byte(i & 0xff);
  return b;
}

/// The mpp side of the conversation kPythonClient / kPythonListener expect.
void converse_as_server(conn::Connection<>& c) {
  REQUIRE(text_of(c.recv_bytes(std::nullopt, 60s)) == "hello from python");
  c.send_bytes("HELLO FROM PYTHON");
  c.send_bytes(big_message());
  auto back = c.recv_bytes(std::nullopt, 60s);
  auto expected = big_message();
  std::reverse(expected.begin(), expected.end());
  REQUIRE(back == expected);
}
void converse_as_client(conn::Connection<>& c) {
  c.send_bytes("hello from python");
  REQUIRE(text_of(c.recv_bytes(std::nullopt, 60s)) == "HELLO FROM PYTHON");
  auto big = c.recv_bytes(std::nullopt, 60s);
  REQUIRE(big == big_message());
  std::reverse(big.begin(), big.end());
  c.send_bytes(big);
}

}  // namespace

TEST_CASE("Connection (Python 3.12+): a Python Client talks to an mpp Listener", "[connection]") {
  const auto python = python_or_skip({"3.12", "3.13"});
  if (!python) return;
  const std::string script = write_script(kPythonClient);
  SECTION("over a Unix socket") {
    conn::Listener l("/tmp/" + mpp_test::unique_name("pyl"), std::nullopt, 1, "py secret");
    const pid_t pid = run_python(*python, script, l.address().host + " 'py secret'");
    auto c = l.accept(60s);
    converse_as_server(c);
    REQUIRE(wait_child(pid) == 0);
  }
  SECTION("over TCP") {
    conn::Listener l(conn::Address("127.0.0.1", 0), std::nullopt, 1, "py secret");
    const pid_t pid =
        run_python(*python, script, fmt::format("127.0.0.1 {} 'py secret'", *l.address().port));
    auto c = l.accept(60s);
    converse_as_server(c);
    REQUIRE(wait_child(pid) == 0);
  }
  SECTION("with a wrong key both sides fail") {
    conn::Listener l("/tmp/" + mpp_test::unique_name("pyl"), std::nullopt, 1, "py secret");
    const pid_t pid = run_python(*python, script, l.address().host + " 'other'");
    REQUIRE_THROWS_AS(l.accept(60s), mpp::AuthenticationError);
    REQUIRE(wait_child(pid) != 0);  // Python raised AuthenticationError
  }
  ::unlink(script.c_str());
}

TEST_CASE("Connection (Python 3.12+): an mpp Client talks to a Python Listener", "[connection]") {
  const auto python = python_or_skip({"3.12", "3.13"});
  if (!python) return;
  const std::string script = write_script(kPythonListener);
  const std::string path = "/tmp/" + mpp_test::unique_name("pyl");
  const pid_t pid = run_python(*python, script, path + " 'py secret'");
  REQUIRE(wait_for_path(path));
  auto c = conn::Client(path, std::nullopt, "py secret");
  converse_as_client(c);
  c.close();
  REQUIRE(wait_child(pid) == 0);
  ::unlink(script.c_str());
}

constexpr const char* kPythonHandleWriter = R"(
import os, sys
from multiprocessing.connection import Client
from multiprocessing.reduction import recv_handle
c = Client(sys.argv[1], authkey=sys.argv[2].encode())
fd = recv_handle(c)
os.write(fd, b'written by python')
os.close(fd)
c.send_bytes(b'done')
)";

TEST_CASE("Connection (Python 3.12+): a descriptor passes to a Python process", "[connection]") {
  const auto python = python_or_skip({"3.12", "3.13"});
  if (!python) return;
  const std::string script = write_script(kPythonHandleWriter);
  const std::string file = "/tmp/" + mpp_test::unique_name("pyfd") + ".txt";
  const int fd = ::open(file.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  REQUIRE(fd >= 0);
  conn::Listener l("/tmp/" + mpp_test::unique_name("pyl"), std::nullopt, 1, "py secret");
  const pid_t pid = run_python(*python, script, l.address().host + " 'py secret'");
  auto c = l.accept(60s);
  conn::send_handle(c, fd, pid);
  REQUIRE(text_of(c.recv_bytes(std::nullopt, 60s)) == "done");
  REQUIRE(wait_child(pid) == 0);
  char buf[64] = {};
  REQUIRE(::pread(fd, buf, sizeof buf, 0) == 17);
  REQUIRE(std::string(buf, 17) == "written by python");
  ::close(fd);
  ::unlink(file.c_str());
  ::unlink(script.c_str());
}

TEST_CASE("Connection (Python 3.11): the legacy HMAC-MD5 handshake needs the opt-in",
          "[connection]") {
  const auto python = python_or_skip({"3.11"});
  if (!python) return;
  const std::string client = write_script(kPythonClient);
  const std::string listener = write_script(kPythonListener);
  conn::ConnectionOptions legacy;
  legacy.legacy_md5 = true;
  SECTION("a default Listener refuses a Python 3.11 Client and says why") {
    conn::Listener l("/tmp/" + mpp_test::unique_name("pyl"), std::nullopt, 1, "k");
    const pid_t pid = run_python(*python, client, l.address().host + " k");
    try {
      (void)l.accept(60s);
      FAIL("expected AuthenticationError");
    } catch (const mpp::AuthenticationError& e) {
      const std::string what = e.what();
      INFO(what);
      REQUIRE(what.find("HMAC-MD5") != std::string::npos);
      REQUIRE(what.find("legacy_md5") != std::string::npos);
    }
    REQUIRE(wait_child(pid) != 0);
  }
  SECTION("an opted-in Listener serves a Python 3.11 Client") {
    conn::Listener l("/tmp/" + mpp_test::unique_name("pyl"), std::nullopt, 1, "k", legacy);
    const pid_t pid = run_python(*python, client, l.address().host + " k");
    auto c = l.accept(60s);
    converse_as_server(c);
    REQUIRE(wait_child(pid) == 0);
  }
  SECTION("an mpp Client refuses a Python 3.11 Listener unless opted in") {
    const std::string path = "/tmp/" + mpp_test::unique_name("pyl");
    const pid_t pid = run_python(*python, listener, path + " k");
    REQUIRE(wait_for_path(path));
    REQUIRE_THROWS_AS(conn::Client(path, std::nullopt, "k"), mpp::AuthenticationError);
    REQUIRE(wait_child(pid) != 0);
    ::unlink(path.c_str());
  }
  SECTION("an opted-in mpp Client talks to a Python 3.11 Listener") {
    const std::string path = "/tmp/" + mpp_test::unique_name("pyl");
    const pid_t pid = run_python(*python, listener, path + " k");
    REQUIRE(wait_for_path(path));
    auto c = conn::Client(path, std::nullopt, "k", legacy);
    converse_as_client(c);
    c.close();
    REQUIRE(wait_child(pid) == 0);
  }
  ::unlink(client.c_str());
  ::unlink(listener.c_str());
}
