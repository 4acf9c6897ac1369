// Boost.Interprocess and mpp share blocks by name (POSIX): a boost::interprocess::
// shared_memory_object and an mpp::SharedMemory opened with the same name ("mpp.x" is
// /dev/shm/mpp.x for both) see each other's bytes. mpp's rules hold for blocks Boost creates:
// the name starts with "mpp." and the block is private to its owner (mode 0600; Boost's default
// 0644 is refused with PermissionError, as any object others may read).
#include <mpp/errors.hpp>
#include <mpp/shared_memory.hpp>

#include <boost/interprocess/mapped_region.hpp>
#include <boost/interprocess/permissions.hpp>
#include <boost/interprocess/shared_memory_object.hpp>

#include <cstring>
#include <string>

#include "helpers.hpp"

namespace bip = boost::interprocess;
using mpp::SharedMemory;
using mpp_test::unique_name;

namespace {

/// A Boost block of `size` bytes created with `mode`, removed at the end of the scope.
struct BoostBlock {
  std::string name;
  bip::shared_memory_object shm;
  bip::mapped_region region;

  BoostBlock(std::string n, std::size_t size, unsigned mode)
      : name(std::move(n)),
        shm(bip::create_only, name.c_str(), bip::read_write,
            bip::permissions(static_cast<int>(mode))) {
    shm.truncate(static_cast<bip::offset_t>(size));
    region = bip::mapped_region(shm, bip::read_write);
  }
  ~BoostBlock() { bip::shared_memory_object::remove(name.c_str()); }
  char* data() { return static_cast<char*>(region.get_address()); }
};

}  // namespace

TEST_CASE("Boost interop: mpp opens a block Boost created with mode 0600", "[boost_interop]") {
  BoostBlock b(unique_name("boost"), 64, 0600);
  std::memcpy(b.data(), "from boost", 11);

  auto m = SharedMemory::open(b.name, /*track=*/false);
  REQUIRE(m.size() == 64);
  CHECK(std::memcmp(m.buf().data(), "from boost", 11) == 0);
  std::memcpy(m.buf().data(), "from mpp!!", 11);
  CHECK(std::memcmp(b.data(), "from mpp!!", 11) == 0);
}

TEST_CASE("Boost interop: Boost opens a block mpp created", "[boost_interop]") {
  const auto name = unique_name("mpp");
  auto m = SharedMemory::create(name, 100);
  std::memcpy(m.buf().data(), "mpp bytes", 10);

  bip::shared_memory_object shm(bip::open_only, name.c_str(), bip::read_write);
  bip::offset_t size = 0;
  REQUIRE(shm.get_size(size));
  CHECK(size == 100);
  bip::mapped_region region(shm, bip::read_write);
  auto* p = static_cast<char*>(region.get_address());
  CHECK(std::memcmp(p, "mpp bytes", 10) == 0);
  std::memcpy(p, "boost wrote", 12);
  CHECK(std::memcmp(m.buf().data(), "boost wrote", 12) == 0);
}

TEST_CASE("Boost interop: a Boost block others may read (Boost's default 0644) is refused",
          "[boost_interop]") {
  BoostBlock b(unique_name("open"), 16, 0644);
  CHECK_THROWS_AS(SharedMemory::open(b.name, /*track=*/false), mpp::PermissionError);
}

TEST_CASE("Boost interop: a Boost block without the mpp. prefix cannot be named by mpp",
          "[boost_interop]") {
  // Boost shm_open()s "/name"; mpp only takes names that start with "mpp.".
  CHECK_THROWS_AS(SharedMemory::open("boost_block", /*track=*/false), mpp::InvalidArgument);
}
