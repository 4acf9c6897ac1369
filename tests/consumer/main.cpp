// A tiny mpp user: shares a value with a forked child through a named segment.
#include <sys/wait.h>
#include <unistd.h>
#include <mpp/mpp.hpp>

#include <cstdio>
#include <cstring>

int main() {
  const auto name = fmt::format("mpp.consumer.{}", ::getpid());
  auto seg =
      mpp::detail::Segment::create(name, {mpp::Kind::test, mpp::type_info<int>(), sizeof(int)});
  const pid_t pid = ::fork();
  if (pid == 0) {
    auto s = mpp::detail::Segment::open(name, mpp::Kind::test, mpp::type_info<int>());
    const int v = 42;
    std::memcpy(s.payload(), &v, sizeof v);
    ::_exit(0);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  int v = 0;
  std::memcpy(&v, seg.payload(), sizeof v);
  std::printf("consumer: child wrote %d\n", v);
  return v == 42 ? 0 : 1;
}
