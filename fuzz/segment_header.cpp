// Fuzz target: arbitrary bytes as a segment. The bytes become the content of a named shared-memory
// object that Segment::open() must either accept (consistent header) or reject with an mpp::Error
// — never crash, hang or read out of bounds; the registry parser (mpp ls / gc) must describe the
// same bytes without trusting any of them.
#include <mpp/detail/registry.hpp>
#include <mpp/segment.hpp>

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>
#include <string>

namespace {

const std::string& object_name() {
  static const std::string name = "mpp.fuzz." + std::to_string(::getpid()) + ".segment";
  return name;
}

bool write_object(const std::uint8_t* data, std::size_t size) {
  const std::string path = "/" + object_name();
  ::shm_unlink(path.c_str());
  // Marked as an object with a header, as Segment::create marks it.
  const int fd =
      ::shm_open(path.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600 | mpp::detail::os::kModeHeadered);
  if (fd < 0) return false;
  bool ok = ::ftruncate(fd, static_cast<off_t>(size)) == 0;
  std::size_t done = 0;
  while (ok && done < size) {
    const ssize_t n = ::pwrite(fd, data + done, size - done, static_cast<off_t>(done));
    ok = n > 0;
    if (ok) done += static_cast<std::size_t>(n);
  }
  ::close(fd);
  return ok;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  namespace reg = mpp::detail::registry;
  if (size > (1u << 16)) return 0;  // headers are ~1.5 KiB; bigger inputs only slow the search
  const auto bytes = std::as_bytes(std::span(data, size));

  // 1. The registry's parser, straight from memory, with both honest and lying file sizes.
  for (std::uint64_t file_size : {std::uint64_t{size}, std::uint64_t{size} * 2 + 1}) {
    const auto info = reg::parse_header("mpp.fuzz", bytes, file_size);
    (void)reg::gc_verdict(info, 0, {}, [](const mpp::detail::ProcessRef&) { return false; });
    (void)reg::gc_verdict(info, 0, {}, [](const mpp::detail::ProcessRef&) { return true; });
  }

  // 2. The real thing: a named object holding these bytes, opened by Segment and by the tool.
  if (!write_object(data, size)) return 0;
  mpp::detail::SegmentOptions opts;
  opts.init_timeout = std::chrono::milliseconds(0);  // a "building" header must not stall us
  for (auto kind : {mpp::Kind::test, mpp::Kind::queue}) {
    try {
      auto s =
          mpp::detail::Segment::open(object_name(), kind, mpp::type_info<std::uint64_t>(), opts);
      // Accepted: the promised payload must be inside the mapping.
      auto* p = s.payload();
      for (std::uint64_t i = 0; i < s.payload_size(); i += 64)
        (void)*reinterpret_cast<volatile std::byte*>(p + i);
      (void)s.live_users();
    } catch (const mpp::Error&) {
    }
  }
  (void)reg::inspect(object_name());
  ::shm_unlink(("/" + object_name()).c_str());
  return 0;
}
