// The examples of Python's multiprocessing.shared_memory documentation, in C++:
//
//   shm_a = shared_memory.SharedMemory(create=True, size=10)
//   buffer = shm_a.buf
//   buffer[:4] = bytearray([22, 33, 44, 55])
//   a = shared_memory.ShareableList(['howdy', b'HoWdY', -273.154, 100, None, True, 42])
//   # another process attaches to both by name and changes them
//   a[2] = -78.5
//   a[2] = 'dry ice'   # changing data types is supported as well
//   a[2] = 'larger than previously allocated storage space'   # ValueError
//
// The block and the list cross to the child as their names (as Python pickles them), so this
// runs with every start method. The block holds exactly its 10 bytes and nothing else: a Python
// process could attach to it as SharedMemory(name=shm_a.name()) too.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cstdint>
#include <string>
#include <variant>
#include <vector>

#include <mpp/process.hpp>
#include <mpp/shared_memory.hpp>

void worker(mpp::SharedMemory shm, mpp::ShareableList list) {
  for (std::byte& b : shm.buf().first(4)) b = static_cast<std::byte>(std::to_integer<int>(b) + 1);
  list[2] = -78.5;
  list[2] = std::string("dry ice");  // the slot changes kind, as in Python
}
MPP_REGISTER(worker);  // so the spawn and forkserver start methods can find it too

int main(int argc, char** argv) {
  mpp::bootstrap(argc, argv);  // like Python's freeze_support(): needed by spawn

  mpp::SharedMemory shm_a(10);  // SharedMemory(create=True, size=10): an anonymous name
  const int init[] = {22, 33, 44, 55};
  for (std::size_t i = 0; i < 4; ++i) shm_a.buf()[i] = static_cast<std::byte>(init[i]);

  const std::string howdy = "HoWdY";
  mpp::ShareableList a{std::string("howdy"),
                       mpp::Bytes(reinterpret_cast<const std::byte*>(howdy.data()),
                                  reinterpret_cast<const std::byte*>(howdy.data()) + howdy.size()),
                       -273.154,
                       std::int64_t{100},
                       mpp::None{},
                       true,
                       std::int64_t{42}};

  mpp::Process p(worker, shm_a, a);
  p.start();
  p.join();

  std::vector<int> first4;
  for (std::byte b : shm_a.buf().first(4)) first4.push_back(std::to_integer<int>(b));
  fmt::print("{} bytes, first four: {}\n", shm_a.size(), first4);  // 10 bytes, [23, 34, 45, 56]
  const auto slot2 = a[2].get();
  const auto* text = std::get_if<std::string>(&slot2);
  fmt::print("a[2] = {}\n", text != nullptr ? *text : "?");  // dry ice

  bool refused = false;
  try {
    a[2] = std::string("larger than previously allocated storage space");
  } catch (const mpp::ValueError& e) {  // a slot's room is fixed when the list is created
    refused = true;
    fmt::print("ValueError: {}\n", e.what());
  }

  const bool ok = first4 == std::vector<int>{23, 34, 45, 56} && text != nullptr &&
                  *text == "dry ice" && refused &&
                  a.get(6) == mpp::ShareableItem{std::int64_t{42}} && p.exitcode() == 0;
  return ok ? 0 : 1;
}
