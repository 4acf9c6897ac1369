// Array<T> / RawArray<T>: Python's semantics across forked and unrelated processes (the
// square_list program of texts/003), slices, the embedded lock, atomic elements, and validation
// of the element count read back from the segment.
#include <mpp/array.hpp>

#if defined(MPP_OS_POSIX)  // the tests that fork (the rest also runs under wine)
#  include <unistd.h>
#endif

#include <cstdlib>
#include <list>
#include <mutex>
#include <numeric>
#include <vector>

#include "helpers.hpp"

using mpp::Array;
using mpp::RawArray;
using mpp::Value;
using mpp_test::unique_name;

namespace {

[[maybe_unused]] void square_list(const std::vector<int>& numlist, Array<int> result, Value<int> square_sum) {
  for (std::size_t idx = 0; idx < numlist.size(); ++idx) result[idx] = numlist[idx] * numlist[idx];
  square_sum = std::accumulate(result.begin(), result.end(), 0);
}

}  // namespace

#if defined(MPP_OS_POSIX)
TEST_CASE("square_list: a child fills Array<int>(4) and Value<int>", "[array]") {
  Array<int> result(4);  // Python: multiprocessing.Array('i', 4)
  Value<int> square_sum;  // Python: multiprocessing.Value('i')
  CHECK(result.to_vector() == std::vector<int>{0, 0, 0, 0});
  const std::vector<int> num_list{1, 2, 3, 4};
  const pid_t p = mpp_test::fork_child([&] {
    square_list(num_list, result, square_sum);
    return 0;
  });
  CHECK(mpp_test::wait_child(p) == 0);
  CHECK(result.to_vector() == std::vector<int>{1, 4, 9, 16});
  CHECK(square_sum.value() == 30);
}

#endif  // MPP_OS_POSIX

TEST_CASE("construction, indexing, iteration, span", "[array]") {
  Array<double> a{1.5, 2.5, 3.5};
  CHECK(a.size() == 3);
  CHECK(len(a) == 3);
  CHECK(a[1] == 2.5);
  CHECK(a.at(-1) == 3.5);
  CHECK_THROWS_AS(a.at(3), mpp::IndexError);
  CHECK_THROWS_AS(a.at(-4), mpp::IndexError);
  double sum = 0;
  for (double x : a) sum += x;
  CHECK(sum == 7.5);
  std::span<double> s = a;
  s[0] = 10;
  CHECK(a.span()[0] == 10);
  CHECK(reinterpret_cast<std::uintptr_t>(a.data()) % alignof(double) == 0);

  const std::list<int> l{7, 8, 9};
  Array<long> from_range(l);
  CHECK(from_range.to_vector() == std::vector<long>{7, 8, 9});
  Array<int> empty(std::size_t{0});
  CHECK(empty.empty());
  CHECK(empty.to_vector().empty());
  CHECK(empty.begin() == empty.end());
}

TEST_CASE("slices follow Python", "[array]") {
  Array<int> a{0, 1, 2, 3, 4, 5};
  using V = std::vector<int>;
  CHECK(a.slice(1, 3) == V{1, 2});
  CHECK(a.slice(-2, std::nullopt) == V{4, 5});
  CHECK(a.slice(std::nullopt, std::nullopt, 2) == V{0, 2, 4});
  CHECK(a.slice(std::nullopt, std::nullopt, -1) == V{5, 4, 3, 2, 1, 0});
  CHECK(a.slice(4, 1, -2) == V{4, 2});
  CHECK(a.slice(10, 20) == V{});
  CHECK(a.slice(-100, 2) == V{0, 1});
  CHECK(a.slice(3, 1) == V{});
  CHECK_THROWS_AS(a.slice(0, 1, 0), mpp::ValueError);
  a.set_slice(1, 3, {10, 20});
  CHECK(a.to_vector() == V{0, 10, 20, 3, 4, 5});
  a.set_slice(-1, std::nullopt, std::vector<int>{50});
  CHECK(a[5] == 50);
  CHECK_THROWS_AS(a.set_slice(0, 2, {1, 2, 3}), mpp::ValueError);
}

TEST_CASE("[.] helper: Array in an unrelated process", "[.][array-child]") {
  const char* name = std::getenv("MPP_TEST_OBJECT");
  if (name == nullptr) return;  // only meaningful when run_unrelated() starts it
  auto a = Array<std::int16_t>::open(name);
  REQUIRE(a.size() == 5);
  REQUIRE(a[4] == 4);
  a.with_lock([](std::span<std::int16_t> s) {
    for (auto& x : s) x = static_cast<std::int16_t>(x * 2);
  });
}

TEST_CASE("named: create, open by an unrelated process, size and type checked", "[array]") {
  const auto name = unique_name("arr");
  auto a = Array<std::int16_t>::create(name, {0, 1, 2, 3, 4});
  CHECK(mpp_test::run_unrelated("[array-child]", name) == 0);
  CHECK(a.to_vector() == std::vector<std::int16_t>{0, 2, 4, 6, 8});
  CHECK_THROWS_AS(Array<std::int32_t>::open(name), mpp::TypeMismatchError);
  CHECK_THROWS_AS(Value<std::int16_t>::open(name), mpp::TypeMismatchError);  // an Array, not a Value
  CHECK(Array<std::int16_t>::open_or_create(name, 100).size() == 5);
  CHECK(RawArray<std::int16_t>::open(name)[1] == 2);
  auto fresh = Array<std::int16_t>::open_or_create(unique_name("arr2"), 3);
  CHECK(fresh.size() == 3);
}

#if defined(MPP_OS_POSIX)
TEST_CASE("lock: 4 processes x 100 000 increments of two elements", "[array]") {
  Array<std::int64_t> a(2);
  constexpr int kEach = 100'000;
  std::vector<pid_t> kids;
  for (int k = 0; k < 4; ++k)
    kids.push_back(mpp_test::fork_child([&] {
      for (int i = 0; i < kEach; ++i) {
        if (i % 2 == 0) {
          std::lock_guard<mpp::RLock> g(a.get_lock());
          ++a[0];
        } else {
          a.with_lock([](std::span<std::int64_t> s) { ++s[0]; });
        }
        a.atomic(1).fetch_add(1);
      }
      return 0;
    }));
  for (pid_t k : kids) CHECK(mpp_test::wait_child(k) == 0);
  CHECK(a[0] == 4 * kEach);
  CHECK(a[1] == 4 * kEach);
}

#endif  // MPP_OS_POSIX

TEST_CASE("RawArray and lock=false have no lock", "[array]") {
  RawArray<char> r{'a', 'b'};
  CHECK_FALSE(r.has_lock());
  CHECK(r.to_vector() == std::vector<char>{'a', 'b'});
  Array<int> a(3, {.lock = false});
  CHECK_THROWS_AS(a.get_lock(), mpp::ValueError);
  const auto name = unique_name("raw");
  auto named = RawArray<float>::create(name, 2);
  CHECK(Array<float>::open(name).has_lock() == false);
}

TEST_CASE("a corrupted element count is an error, not an out-of-bounds read", "[array]") {
  const auto name = unique_name("corrupt");
  auto a = Array<int>::create(name, 10);
  auto* h = reinterpret_cast<mpp::detail::BlockHeader*>(a.segment()->payload());
  SECTION("larger than the mapping") {
    h->count = std::uint64_t{1} << 40;
    CHECK_THROWS_AS(Array<int>::open(name), mpp::CorruptedError);
  }
  SECTION("different from the segment's capacity") {
    h->count = 5;
    CHECK_THROWS_AS(Array<int>::open(name), mpp::CorruptedError);
  }
  SECTION("the opened size stays the validated one") {
    auto b = Array<int>::open(name);
    h->count = 1'000'000;  // a hostile write after opening
    CHECK(b.size() == 10);
    CHECK_THROWS_AS(b.at(10), mpp::IndexError);
  }
}

TEST_CASE("an Array crosses processes as its name (codec)", "[array]") {
  static_assert(mpp::Encodable<Array<int>> && mpp::Encodable<RawArray<int>>);
  Array<int> a{1, 2, 3};
  auto b = mpp::decode<Array<int>>(mpp::encode(a));
  b[0] = 10;
  CHECK(a[0] == 10);
  CHECK(b.size() == 3);
  CHECK(mpp::decode<RawArray<int>>(mpp::encode(a)).to_vector() == std::vector<int>{10, 2, 3});
}
