// mpp's SharedMemory on the shm.* workloads: create / attach a 1 MiB named block, timed like
// peers/kernel.cpp's shm_us (mean µs per call; each block written through the creating handle
// and read back through the attaching one, outside the timed region).
#include <mpp/shared_memory.hpp>

#include <optional>
#include <string>
#include <vector>

#include "../common.hpp"

namespace {

constexpr std::size_t kShmSize = 1 << 20;

double shm_us(bool create, int n) {
  std::vector<std::string> names;
  for (int i = 0; i < n; ++i) {
    names.push_back("mpp." + bench::unique_name("shm"));
    bench::remember_name("shm:/" + names.back());
  }
  std::vector<std::optional<mpp::SharedMemory>> made(static_cast<std::size_t>(n));
  std::int64_t timed = 0;
  for (int i = 0; i < n; ++i) {
    const std::int64_t t0 = bench::now_ns();
    made[i].emplace(names[i], true, kShmSize);
    timed += bench::now_ns() - t0;
    made[i]->buf()[i % 1000] = static_cast<std::byte>(i % 251);
  }
  if (!create) {
    timed = 0;
    for (int i = 0; i < n; ++i) {
      const std::int64_t t0 = bench::now_ns();
      mpp::SharedMemory a(names[i]);
      timed += bench::now_ns() - t0;
      const bool ok = a.size() == kShmSize && a.buf()[i % 1000] == static_cast<std::byte>(i % 251);
      bench::check(ok, "shm attach: wrong contents");
    }
  }
  for (int i = 0; i < n; ++i) {
    made[i].reset();  // the last user: removes the name
    bench::forget_name("shm:/" + names[i]);
  }
  return static_cast<double>(timed) / n / 1e3;
}

}  // namespace

int main(int argc, char** argv) {
  const bench::Options opt = bench::parse_args(argc, argv);
  bench::run(opt, {"shm.create.1MiB", "mpp", "µs", false},
             [&] { return shm_us(true, static_cast<int>(opt.n(500, 100))); });
  bench::run(opt, {"shm.attach.1MiB", "mpp", "µs", false},
             [&] { return shm_us(false, static_cast<int>(opt.n(500, 100))); });
}
