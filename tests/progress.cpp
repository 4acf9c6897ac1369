// mpp::progress around pool work: what a child process writes to its stderr (a file, so not a
// terminal) while it iterates Pool::imap_unordered, ProcessPoolExecutor::map and as_completed
// with a progress display.
#include <fcntl.h>
#include <unistd.h>
#include <mpp/futures.hpp>
#include <mpp/pool.hpp>
#include <mpp/progress.hpp>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include "helpers.hpp"

using namespace std::chrono_literals;

namespace {

int square(int x) { return x * x; }

/// The start method the child cases use (MPP_TEST_OBJECT: "fork" or "spawn").
mpp::StartMethod child_method() {
  const char* m = std::getenv("MPP_TEST_OBJECT");
  return m != nullptr && std::string(m) == "spawn" ? mpp::StartMethod::spawn
                                                   : mpp::StartMethod::fork;
}

/// What a run of this test program on the hidden case `spec` wrote to stderr, and its exit code.
struct Captured {
  int code = -1;
  std::string err;
};
Captured run_captured(const char* spec, const char* method) {
  char path[] = "/tmp/mpp_progress_XXXXXX";
  const int fd = ::mkstemp(path);
  REQUIRE(fd >= 0);
  Captured c;
  c.code = mpp_test::run_bounded(120s, [&] {
    ::setenv("MPP_TEST_OBJECT", method, 1);
    const int null = ::open("/dev/null", O_WRONLY);
    if (::dup2(fd, 2) < 0 || null < 0 || ::dup2(null, 1) < 0) return 126;
    char self[] = "/proc/self/exe";
    char* argv[] = {self, const_cast<char*>(spec), nullptr};
    ::execv(self, argv);
    return 127;
  });
  ::close(fd);
  std::ifstream in(path, std::ios::binary);
  c.err.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  ::unlink(path);
  return c;
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string l; std::getline(in, l);) out.push_back(l);
  return out;
}

bool starts_with(const std::string& s, const std::string& prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}

std::vector<int> inputs(int n) {
  std::vector<int> xs(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) xs[static_cast<std::size_t>(i)] = i;
  return xs;
}

mpp::PoolOptions pool_options() {
  mpp::PoolOptions o;
  o.processes = 2;
  o.start_method = child_method();
  return o;
}

}  // namespace

MPP_REGISTER(square);

// ---- the child cases: each exits 1 when its own results are wrong -----------------------------

TEST_CASE("[.] helper: progress around imap_unordered, a line per item", "[.][progress-every]") {
  mpp::Pool pool(pool_options());
  const auto xs = inputs(20);
  mpp::ProgressOptions o;
  o.desc = "squares";
  o.interval = 0;
  long sum = 0;
  for (int r : mpp::progress(pool.imap_unordered(square, xs), xs.size(), o)) sum += r;
  REQUIRE(sum == 2470);
}

TEST_CASE("[.] helper: progress with the default interval", "[.][progress-default]") {
  mpp::Pool pool(pool_options());
  const auto xs = inputs(20);
  mpp::ProgressOptions o;
  o.desc = "squares";
  long sum = 0;
  for (int r : mpp::progress(pool.imap(square, xs), xs.size(), o)) sum += r;
  REQUIRE(sum == 2470);
}

TEST_CASE("[.] helper: progress disabled", "[.][progress-off]") {
  mpp::Pool pool(pool_options());
  const auto xs = inputs(20);
  mpp::ProgressOptions o;
  o.enabled = false;
  o.interval = 0;
  long sum = 0;
  for (int r : mpp::progress(pool.imap_unordered(square, xs), xs.size(), o)) sum += r;
  REQUIRE(sum == 2470);
}

TEST_CASE("[.] helper: progress redrawn in place", "[.][progress-tty]") {
  mpp::Pool pool(pool_options());
  const auto xs = inputs(5);
  mpp::ProgressOptions o;
  o.terminal = true;  // as on a terminal, though stderr is a file here
  o.interval = 0;
  long sum = 0;
  for (int r : mpp::progress(pool.imap(square, xs), xs.size(), o)) sum += r;
  REQUIRE(sum == 30);
}

TEST_CASE("[.] helper: progress around an executor's map and as_completed",
          "[.][progress-executor]") {
  mpp::ExecutorOptions eo;
  eo.max_workers = 2;
  eo.start_method = child_method();
  mpp::ProcessPoolExecutor ex(eo);
  mpp::ProgressOptions o;
  o.interval = 0;
  o.desc = "map";
  long sum = 0;
  for (int r : mpp::progress(ex.map(square, inputs(6)), std::nullopt, o)) sum += r;  // sized
  REQUIRE(sum == 55);
  std::vector<mpp::Future<int>> fs;
  for (int i = 0; i < 4; ++i) fs.push_back(ex.submit(square, i));
  o.desc = "futures";
  sum = 0;
  for (const auto& f : mpp::progress(mpp::futures::as_completed(fs), std::nullopt, o))
    sum += f.result();
  REQUIRE(sum == 14);
  // Left early: the display shows how far it got.
  o.desc = "early";
  for (int r : mpp::progress(ex.map(square, inputs(6)), std::nullopt, o))
    if (r == 4) break;
}

// ---- the tests ----------------------------------------------------------------------------------

TEST_CASE("Progress: plain lines when not a terminal, one per item with a zero interval",
          "[progress][spawn]") {
  for (const char* m : {"fork", "spawn"}) {
    INFO("start method " << m);
    const Captured c = run_captured("[progress-every]", m);
    REQUIRE(c.code == 0);
    CHECK(c.err.find('\r') == std::string::npos);
    const auto lines = lines_of(c.err);
    REQUIRE(lines.size() == 21);  // 0, 1, ..., 20 items done
    for (std::size_t i = 0; i < lines.size(); ++i) {
      INFO(lines[i]);
      CHECK(starts_with(lines[i], fmt::format("squares: {}/20 [", i)));
      CHECK(lines[i].find("elapsed") != std::string::npos);
      if (i < 20) CHECK(lines[i].find("ETA") != std::string::npos);
    }
    CHECK(lines.back().find("[100%]") != std::string::npos);
    CHECK(lines.back().find("it/s") != std::string::npos);
  }
}

TEST_CASE("Progress: with the default interval a short run shows its first and last state",
          "[progress]") {
  const Captured c = run_captured("[progress-default]", "fork");
  REQUIRE(c.code == 0);
  const auto lines = lines_of(c.err);
  REQUIRE(lines.size() == 2);  // a run far shorter than the 10 s interval of plain lines
  CHECK(starts_with(lines[0], "squares: 0/20 [  0%]"));
  CHECK(starts_with(lines[1], "squares: 20/20 [100%]"));
}

TEST_CASE("Progress: a disabled display writes nothing", "[progress]") {
  const Captured c = run_captured("[progress-off]", "fork");
  REQUIRE(c.code == 0);
  CHECK(c.err.empty());
}

TEST_CASE("Progress: on a terminal the line is redrawn in place and ended once", "[progress]") {
  const Captured c = run_captured("[progress-tty]", "fork");
  REQUIRE(c.code == 0);
  CHECK(std::count(c.err.begin(), c.err.end(), '\r') == 6);  // 0, 1, ..., 5 items done
  CHECK(std::count(c.err.begin(), c.err.end(), '\n') == 1);
  REQUIRE(!c.err.empty());
  CHECK(c.err.back() == '\n');
  CHECK(c.err.find("\r5/5 [100%]") != std::string::npos);
}

TEST_CASE("Progress: around an executor's map and as_completed, sized from the range",
          "[progress][spawn]") {
  for (const char* m : {"fork", "spawn"}) {
    INFO("start method " << m);
    const Captured c = run_captured("[progress-executor]", m);
    REQUIRE(c.code == 0);
    const auto lines = lines_of(c.err);
    std::vector<std::string> map, futures, early;
    for (const auto& l : lines) {
      if (starts_with(l, "map: ")) map.push_back(l);
      if (starts_with(l, "futures: ")) futures.push_back(l);
      if (starts_with(l, "early: ")) early.push_back(l);
    }
    REQUIRE(map.size() == 7);
    CHECK(starts_with(map.back(), "map: 6/6 [100%]"));
    REQUIRE(futures.size() == 5);
    CHECK(starts_with(futures.back(), "futures: 4/4 [100%]"));
    REQUIRE(!early.empty());
    CHECK(starts_with(early.back(), "early: 2/6 ["));  // left at the third result
  }
}

TEST_CASE("Progress: counts by hand and formats rate and ETA", "[progress]") {
  std::FILE* f = std::tmpfile();
  REQUIRE(f != nullptr);
  {
    mpp::ProgressOptions o;
    o.stream = f;
    o.interval = 1e9;  // only the first and the last state
    mpp::Progress p(std::nullopt, o);
    p.update(3);
    p.update();
    CHECK(p.count() == 4);
    CHECK(starts_with(p.text(), "4 ["));
  }
  std::rewind(f);
  std::string text;
  for (int ch = std::fgetc(f); ch != EOF; ch = std::fgetc(f)) text.push_back(static_cast<char>(ch));
  std::fclose(f);
  const auto lines = lines_of(text);
  REQUIRE(lines.size() == 2);  // the first state, and the last at close
  CHECK(starts_with(lines[0], "0 ["));
  CHECK(starts_with(lines[1], "4 ["));
  CHECK(mpp::detail::progress::clock(3725) == "1:02:05");
  CHECK(mpp::detail::progress::clock(65) == "1:05");
  CHECK(mpp::detail::progress::rate(0.25) == "4.00 s/it");
  CHECK(mpp::detail::progress::rate(12.5) == "12.5 it/s");
}
