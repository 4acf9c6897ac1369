// Array<T> / RawArray<T>: Python's semantics across forked and unrelated processes (the
// square_list program of texts/003), slices, the embedded lock, atomic elements, and validation
// of the element count read back from the segment.
#include <mpp/array.hpp>
#include <mpp/process.hpp>

#if defined(MPP_OS_POSIX)  // the tests that fork (the rest also runs under wine)
#  include <fcntl.h>
#  include <signal.h>
#  include <sys/mman.h>
#  include <sys/stat.h>
#  include <unistd.h>
#endif

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <list>
#include <mutex>
#include <numeric>
#include <string>
#include <vector>

#include "helpers.hpp"

// White-box checks reach a handle's raw state and segment through the internal accessor.
using Access = mpp::detail::HandleAccess;

using mpp::Array;
using mpp::RawArray;
using mpp::Value;
using mpp_test::corrupted;
using mpp_test::unique_name;

namespace {

[[maybe_unused]] void square_list(const std::vector<int>& numlist, Array<int> result,
                                  Value<int> square_sum) {
  for (std::size_t idx = 0; idx < numlist.size(); ++idx) result[idx] = numlist[idx] * numlist[idx];
  square_sum = std::accumulate(result.begin(), result.end(), 0);
}

}  // namespace

#if defined(MPP_OS_POSIX)
TEST_CASE("Array: square_list, a child fills Array<int>(4) and Value<int>", "[array]") {
  Array<int> result(4);   // Python: multiprocessing.Array('i', 4)
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

TEST_CASE("Array: construction, indexing, iteration, span", "[array]") {
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
  std::span<double> s(a);  // an Array is a contiguous range of its shared elements
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

TEST_CASE("Array: slices follow Python", "[array]") {
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

TEST_CASE("Array: named, create, open by an unrelated process, size and type checked", "[array]") {
  const auto name = unique_name("arr");
  auto a = Array<std::int16_t>::create(name, {0, 1, 2, 3, 4});
  CHECK(mpp_test::run_unrelated("[array-child]", name) == 0);
  CHECK(a.to_vector() == std::vector<std::int16_t>{0, 2, 4, 6, 8});
  CHECK_THROWS_AS(Array<std::int32_t>::open(name), mpp::TypeMismatchError);
  CHECK_THROWS_AS(Value<std::int16_t>::open(name),
                  mpp::TypeMismatchError);  // an Array, not a Value
  CHECK(Array<std::int16_t>::open_or_create(name, 100).size() == 5);
  CHECK(RawArray<std::int16_t>::open(name)[1] == 2);
  auto fresh = Array<std::int16_t>::open_or_create(unique_name("arr2"), 3);
  CHECK(fresh.size() == 3);
}

#if defined(MPP_OS_POSIX)
TEST_CASE("Array: lock, 4 processes x 100 000 increments of two elements", "[array]") {
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

TEST_CASE("Array: RawArray and lock=false have no lock", "[array]") {
  RawArray<char> r{'a', 'b'};
  CHECK_FALSE(r.has_lock());
  CHECK(r.to_vector() == std::vector<char>{'a', 'b'});
  Array<int> a(3, {.lock = false});
  CHECK_THROWS_AS(a.get_lock(), mpp::ValueError);
  const auto name = unique_name("raw");
  auto named = RawArray<float>::create(name, 2);
  CHECK(Array<float>::open(name).has_lock() == false);
}

TEST_CASE("Array: a corrupted element count is an error, not an out-of-bounds read", "[array]") {
  const auto name = unique_name("corrupt");
  auto a = Array<int>::create(name, 10);
  auto* h = reinterpret_cast<mpp::detail::BlockHeader*>(Access::segment(a)->payload());
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

TEST_CASE("Array: at() out of range raises mpp::IndexError naming the array, index and size",
          "[array]") {
  auto a = Array<int>::create(unique_name("idx"), 4);
  for (const std::ptrdiff_t i : {std::ptrdiff_t{4}, std::ptrdiff_t{-5}, std::ptrdiff_t{1} << 40}) {
    try {
      (void)a.at(i);
      FAIL("no exception for index " << i);
    } catch (const mpp::IndexError& e) {
      const std::string m = e.what();
      CHECK(m.find(a.name()) != std::string::npos);
      CHECK(m.find(std::to_string(i)) != std::string::npos);
      CHECK(m.find("size 4") != std::string::npos);
    }
  }
  CHECK_THROWS_AS(a.at(4), mpp::LookupError);  // as in Python (not a KeyError)
  CHECK_NOTHROW(a.at(-4));
#if defined(MPP_OS_POSIX)
  // The same in another process that opened it by name (its size read back and validated).
  const pid_t p = mpp_test::fork_child([&] {
    auto b = Array<int>::open(a.name());
    try {
      (void)b.at(4);
    } catch (const mpp::IndexError&) {
      return 0;
    }
    return 2;
  });
  CHECK(mpp_test::wait_child(p) == 0);
#endif
}

#if defined(MPP_OS_POSIX)
TEST_CASE(
    "Array: a holder killed half-way through updating the elements: with_lock(fn(span)) raises "
    "OwnerDiedError until repaired",
    "[array][kill]") {
  auto a = Array<std::int64_t>::create(unique_name("torn"), 10);
  const pid_t k = mpp_test::fork_child([&] {
    a.with_lock([](std::span<std::int64_t> s) {
      for (std::size_t i = 0; i < s.size() / 2; ++i) s[i] = 9;  // half of them
      ::raise(SIGKILL);
    });
    return 3;
  });
  REQUIRE(mpp_test::wait_child(k) == -SIGKILL);
  auto raises = [&](auto&& fn) {
    try {
      fn();
    } catch (const mpp::OwnerDiedError& e) {
      return std::string(e.what()).find(a.name()) != std::string::npos;
    }
    return false;
  };
  CHECK(raises([&] { a.with_lock([](std::span<std::int64_t>) {}); }));
  CHECK(raises([&] { a.with_lock([](std::span<std::int64_t>) {}); }));  // the mark stays
  const pid_t other = mpp_test::fork_child([&] {
    auto b = Array<std::int64_t>::open(a.name());
    return raises([&] { b.with_lock([](std::span<std::int64_t>) {}); }) ? 0 : 4;
  });
  CHECK(mpp_test::wait_child(other) == 0);
  SECTION("with_lock(fn(span, bool)) is told and repairs") {
    bool told = false;
    a.with_lock([&](std::span<std::int64_t> s, bool died) {
      told = died;
      std::fill(s.begin(), s.end(), 9);
    });
    CHECK(told);
    a.with_lock([&](std::span<std::int64_t> s, bool died) {
      told = died;
      CHECK(s[9] == 9);
    });
    CHECK_FALSE(told);
  }
  SECTION("get_lock()'s acquirer sees previous_owner_died(); its release repairs") {
    auto& lock = a.get_lock();
    REQUIRE(lock.acquire(true, std::chrono::seconds(10)));
    CHECK(lock.previous_owner_died());
    std::fill(a.begin(), a.end(), 9);
    lock.release();
    CHECK_NOTHROW(a.with_lock([](std::span<std::int64_t>) {}));
    REQUIRE(lock.acquire());
    CHECK_FALSE(lock.previous_owner_died());
    lock.release();
  }
  CHECK(a.to_vector() == std::vector<std::int64_t>(10, 9));
}

TEST_CASE("Array: an Array truncated under its users: CorruptedError, never zeros",
          "[array][truncate]") {
  constexpr std::size_t kN = 3000;  // 12 KB of elements: several pages
  for (int cut = 0; cut < 3; ++cut) {
    INFO("cut " << cut << " (0: to 0 bytes; 1: half-way through the data; 2: the last byte)");
    auto a = Array<int>::create(unique_name("cut.a"), std::vector<int>(kN, 5));
    const auto& h = Access::segment(a)->header();
    const off_t size = cut == 0   ? 0
                       : cut == 1 ? static_cast<off_t>(h.payload_offset + h.payload_size / 2 + 3)
                                  : static_cast<off_t>(h.payload_offset + h.payload_size - 1);
    int pipes[2][2];
    REQUIRE(::pipe(pipes[0]) == 0);
    REQUIRE(::pipe(pipes[1]) == 0);
    const pid_t user = mpp_test::fork_child([&] {
      ::alarm(30);
      auto b = Array<int>::open(a.name());
      if (b.to_vector() != std::vector<int>(kN, 5)) return 2;  // touched before the cut
      char c = 1;
      if (::write(pipes[0][1], &c, 1) != 1 || ::read(pipes[1][0], &c, 1) != 1) return 3;
      int bad = 0;
      bad += !corrupted([&] { (void)b.to_vector(); });
      bad += !corrupted([&] { (void)b.slice(0, 10); });
      bad += !corrupted([&] { b.set_slice(0, 2, {1, 2}); });
      bad += !corrupted([&] { b.with_lock([](std::span<int>, bool) {}); });
      return bad == 0 ? 0 : 10 + bad;
    });
    char c = 0;
    REQUIRE(::read(pipes[0][0], &c, 1) == 1);
    {
      const int fd = ::shm_open(("/" + a.name()).c_str(), O_RDWR, 0);
      REQUIRE(fd >= 0);
      REQUIRE(::ftruncate(fd, size) == 0);
      ::close(fd);
    }
    REQUIRE(::write(pipes[1][1], &c, 1) == 1);
    CHECK(mpp_test::wait_child(user) == 0);
    CHECK_THROWS_AS(a.to_vector(), mpp::CorruptedError);  // the creator too
    for (auto& p : pipes) {
      ::close(p[0]);
      ::close(p[1]);
    }
  }
}
#endif  // MPP_OS_POSIX

TEST_CASE("Array: an Array crosses processes as its name (codec)", "[array]") {
  static_assert(mpp::Encodable<Array<int>> && mpp::Encodable<RawArray<int>>);
  Array<int> a{1, 2, 3};
  auto b = mpp::decode<Array<int>>(mpp::encode(a));
  b[0] = 10;
  CHECK(a[0] == 10);
  CHECK(b.size() == 3);
  CHECK(mpp::decode<RawArray<int>>(mpp::encode(a)).to_vector() == std::vector<int>{10, 2, 3});
}

// ---- a caller's lock (Python's lock= argument) ---------------------------------------------

namespace {

template <class A>
concept HasGetLock = requires(A& a) {
  a.get_lock();
};

/// Adds 1 to every element of `arr` `rounds` times, holding the array's lock (an RLock that
/// `v` shares) around each whole pass; exits 2 if `v` and arr[0] ever differ under the lock.
void add_under_shared_lock(Array<int> arr, Value<int> v, int rounds) {
  for (int r = 0; r < rounds; ++r) {
    std::lock_guard g(arr.get_lock());
    if (v.value() != arr[0]) mpp::exit(2);
    for (auto& x : arr) x += 1;
    v.set(v.value() + 1);
  }
}
MPP_REGISTER(add_under_shared_lock);

}  // namespace

TEST_CASE("Array: get_lock() and get_obj() with a caller's lock (test_getobj_getlock_obj)",
          "[array]") {
  Array<int> arr1(10);
  CHECK(arr1.get_lock().name() == arr1.name());  // its own RLock
  mpp::Lock lock;
  Array<int> arr3({1, 2, 3}, lock);
  CHECK(arr3.get_lock<mpp::Lock>().name() == lock.name());
  CHECK_THROWS_AS(arr3.get_lock(), mpp::ValueError);  // a Lock, not an RLock
  CHECK(arr3.to_vector() == std::vector<int>{1, 2, 3});
  Array<int> arr4(10, mpp::SharedOptions{.lock = false});
  CHECK_FALSE(arr4.has_lock());
  CHECK_THROWS_AS(arr4.get_lock(), mpp::ValueError);
  static_assert(!HasGetLock<RawArray<int>> && HasGetLock<Array<int>>);
  const auto name = unique_name("array.supplied");
  auto named = Array<int>::create(name, 4, lock);
  CHECK_THROWS_AS(Array<int>::open(name).get_lock<mpp::Lock>(), mpp::ValueError);
  CHECK(Array<int>::open(name, lock).get_lock<mpp::Lock>().name() == lock.name());
}

TEST_CASE("Array: an Array and a Value share a caller's RLock in a spawned child", "[array]") {
  mpp::RLock lock;
  Array<int> arr(8, lock);
  Value<int> v(0, lock);
  constexpr int kRounds = 500;
  auto p =
      mpp::get_context(mpp::StartMethod::spawn).process(add_under_shared_lock, arr, v, kRounds);
  p.start();
  for (int r = 0; r < kRounds; ++r) {
    std::lock_guard g(v.get_lock());
    REQUIRE(v.value() == arr[0]);
    for (auto& x : arr) x += 1;
    v.set(v.value() + 1);
  }
  REQUIRE(p.join(60.0));
  CHECK(p.exitcode() == 0);
  CHECK(v.value() == 2 * kRounds);
  CHECK(arr.to_vector() == std::vector<int>(8, 2 * kRounds));
}

TEST_CASE("Array: fmt::format gives a Python-like repr", "[array][repr]") {
  Array<int> a{1, 2, 3};
  CHECK(fmt::format("{}", a) ==
        fmt::format("<Array<int>(name='{}', size=3, [1, 2, 3])>", a.name()));
  RawArray<int> big(20);
  CHECK(fmt::format("{}", big) ==
        fmt::format("<RawArray<int>(name='{}', size=20, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, "
                    "0, 0, 0, ...])>",
                    big.name()));
}
