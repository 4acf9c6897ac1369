// Fuzz target: the codec decoder. The first byte picks a type, the rest is decoded as that type;
// decoding must either produce a value whose re-encoding decodes to the same encoding again, or
// throw mpp::CorruptedError — never crash, over-read or allocate without bound.
#include <mpp/codec.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <tuple>
#include <variant>
#include <vector>

namespace {

struct Point {
  int x = 0;
  double y = 0;
  std::string label;
  template <class A>
  void serialize(A& ar) {
    ar(x, y, label);
  }
};

template <class T>
void check(std::span<const std::byte> in) {
  T v;
  try {
    v = mpp::decode<T>(in);
  } catch (const mpp::CorruptedError&) {
    return;
  }
  const auto once = mpp::encode(v);
  const auto twice = mpp::encode(mpp::decode<T>(once));  // must not throw: we just encoded it
  if (once != twice) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const auto in = std::as_bytes(std::span(data + 1, size - 1));
  switch (data[0] % 12) {
    case 0:
      check<int>(in);
      break;
    case 1:
      check<bool>(in);
      break;
    case 2:
      check<std::string>(in);
      break;
    case 3:
      check<std::vector<int>>(in);
      break;
    case 4:
      check<std::map<std::string, int>>(in);
      break;
    case 5:
      check<std::optional<std::string>>(in);
      break;
    case 6:
      check<std::variant<int, std::string, double>>(in);
      break;
    case 7:
      check<std::tuple<int, std::string, bool>>(in);
      break;
    case 8:
      check<std::vector<std::vector<std::string>>>(in);
      break;
    case 9:
      check<Point>(in);
      break;
    case 10:
      check<std::set<long>>(in);
      break;
    case 11:
      check<std::pair<std::string, std::vector<double>>>(in);
      break;
  }
  return 0;
}
