// mpp's connection::wait on the wait.* workloads (Python's peer: peers/python_peers.py):
//   wait.rtt         8-byte ping-pong over a duplex connection::Pipe (a Unix socket pair), sides
//                    on cores 0 and 1; before each receive a side blocks in
//                    connection::wait({its end, 99 idle connections}, 10 s)
//   wait.rtt.single  the same ping-pong with a plain blocking recv: the wake-up wait.rtt is read
//                    against (one sleep and wake-up in the kernel per hop, no multiplexing)
// Messages are raw (send_bytes / recv_bytes_into of the 8-byte sequence number), as the Python
// peer's, so the rows time the wake-up and the socket, not a codec or pickle. Every echo is
// checked, and so is wait()'s answer (only the live end is ready).
// Built only with the target mpp::connection (OpenSSL's libcrypto, which connection.hpp links).
#include <cstdint>
#include <mpp/connection.hpp>
#include <span>
#include <utility>
#include <vector>

#include "../common.hpp"

namespace {

namespace conn = mpp::connection;
using bench::Options;
using bench::Shared;
using bench::Spans;
using bench::StartLine;

constexpr std::size_t kIdle = 99;  // idle connections next to the live one in every wait
constexpr double kWaitBoundS = 10.0;

/// Blocks in connection::wait over `objects` (the live end first); fails unless exactly the live
/// end is ready.
void wait_for_first(const std::vector<conn::Waitable>& objects) {
  const auto ready = conn::wait(std::span<const conn::Waitable>(objects), kWaitBoundS);
  if (ready.empty()) bench::fail("mpp wait RT: nothing became ready within 10 s");
  if (ready.size() != 1 || ready[0] != 0) bench::fail("mpp wait RT: an idle connection was ready");
}

/// The live end `end` followed by the receiving ends of the idle pipes.
std::vector<conn::Waitable> waitables(
    const conn::Connection<>& end,
    const std::vector<std::pair<conn::Connection<>, conn::Connection<>>>& idle) {
  std::vector<conn::Waitable> objects;
  objects.reserve(1 + idle.size());
  objects.emplace_back(end);
  for (const auto& p : idle) objects.emplace_back(p.first);
  return objects;
}

double rtt_us(std::int64_t n, bool use_wait) {
  auto ends = conn::Pipe<>();  // not a structured binding: the lambdas capture it
  auto& a = ends.first;
  auto& b = ends.second;
  // Both ends of every idle pipe stay open in both processes, so none reads as closed (ready).
  std::vector<std::pair<conn::Connection<>, conn::Connection<>>> idle;
  if (use_wait)
    for (std::size_t i = 0; i < kIdle; ++i) idle.push_back(conn::Pipe<>());
  Shared<StartLine> start;
  Shared<Spans> span;
  std::vector<pid_t> kids;
  kids.push_back(bench::spawn(0, [&] {
    b.close();
    const auto objects = waitables(a, idle);
    start->wait();
    span->start[0] = bench::now_ns();
    for (std::uint64_t i = 0; i < static_cast<std::uint64_t>(n); ++i) {
      std::uint64_t echo = ~i;
      a.send_bytes(std::as_bytes(std::span(&i, 1)));
      if (use_wait) wait_for_first(objects);
      if (a.recv_bytes_into(std::as_writable_bytes(std::span(&echo, 1))) != 8 || echo != i)
        bench::fail("mpp wait RT: wrong echo");
    }
    span->end[0] = bench::now_ns();
  }));
  kids.push_back(bench::spawn(1, [&] {
    a.close();
    const auto objects = waitables(b, idle);
    start->wait();
    std::uint64_t msg = 0;
    const auto buf = std::as_writable_bytes(std::span(&msg, 1));
    for (std::int64_t i = 0; i < n; ++i) {
      if (use_wait) wait_for_first(objects);
      if (b.recv_bytes_into(buf) != 8) bench::fail("mpp wait RT: wrong message size");
      b.send_bytes(std::as_bytes(buf));
    }
  }));
  start->release(2);
  bench::join(kids);
  return span->elapsed_s(1) / static_cast<double>(n) * 1e6;
}

}  // namespace

int main(int argc, char** argv) {
  const Options opt = bench::parse_args(argc, argv);
  bench::run(
      opt, {"wait.rtt", "mpp", "µs", false}, [&] { return rtt_us(opt.n(20'000, 3'000), true); },
      "connection::Pipe, send_bytes/recv_bytes_into; wait({end, 99 idle connections}) first");
  bench::run(
      opt, {"wait.rtt.single", "mpp", "µs", false},
      [&] { return rtt_us(opt.n(20'000, 3'000), false); },
      "connection::Pipe, send_bytes/recv_bytes_into; no wait");
}
