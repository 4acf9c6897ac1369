// mpp::codec: round trips for every supported family of types, and clean rejection of
// truncated or corrupted buffers.
#include <mpp/codec.hpp>

#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <unordered_map>
#include <variant>
#include <vector>

#include "helpers.hpp"

namespace {

struct Point {  // trivially copyable: raw bytes
  int x;
  double y;
  bool operator==(const Point&) const = default;
};

struct Person {  // user type through cereal
  std::string name;
  std::vector<int> scores;
  std::optional<std::string> email;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(name, scores, email);
  }
  bool operator==(const Person&) const = default;
};

struct Celsius {  // user specialisation
  double degrees;
  bool operator==(const Celsius&) const = default;
};

struct NotEncodable {
  NotEncodable(const NotEncodable&) {}  // not trivially copyable, no serialize()
};

template <class T>
void check_round_trip(const T& v) {
  const mpp::Bytes b = mpp::encode(v);
  CHECK(mpp::decode<T>(b) == v);
  // Every strict prefix is truncated data: CorruptedError, never garbage or a crash.
  for (std::size_t n = 0; n < b.size(); ++n) {
    INFO("prefix of " << n << " of " << b.size() << " bytes");
    CHECK_THROWS_AS(mpp::decode<T>(std::span(b.data(), n)), mpp::CorruptedError);
  }
  // A trailing byte is rejected too.
  mpp::Bytes longer = b;
  longer.push_back(std::byte{0});
  CHECK_THROWS_AS(mpp::decode<T>(longer), mpp::CorruptedError);
}

}  // namespace

template <>
struct mpp::codec<Celsius> {
  static void encode(const Celsius& c, Bytes& out) { codec<double>::encode(c.degrees + 1000, out); }
  static Celsius decode(std::span<const std::byte> in) {
    return {codec<double>::decode(in) - 1000};
  }
};

static_assert(mpp::Encodable<int>);
static_assert(mpp::Encodable<Point>);
static_assert(mpp::Encodable<Person>);
static_assert(mpp::Encodable<Celsius>);
static_assert(mpp::Encodable<std::map<std::string, std::vector<Person>>>);
static_assert(!mpp::Encodable<NotEncodable>);
static_assert(!mpp::Encodable<int*>);

TEST_CASE("Codec: round trips", "[codec]") {
  check_round_trip(42);
  check_round_trip(3.5);
  check_round_trip(true);
  check_round_trip(Point{1, 2.5});
  check_round_trip(std::string("héllo→\0x", 11));
  check_round_trip(std::string());
  check_round_trip(std::vector<int>{1, 2, 3});
  check_round_trip(std::vector<std::string>{"a", "", "ccc"});
  check_round_trip(std::map<std::string, int>{{"a", 1}, {"b", 2}});
  check_round_trip(std::unordered_map<int, std::string>{{1, "x"}, {2, "yy"}});
  check_round_trip(std::optional<std::string>("v"));
  check_round_trip(std::optional<std::string>());
  check_round_trip(std::variant<int, std::string>(std::string("alt")));
  check_round_trip(std::tuple<int, std::string, double>(1, "t", 2.0));
  check_round_trip(std::pair<std::string, int>("p", 7));
  check_round_trip(Person{"Ada", {90, 95}, "ada@example.org"});
  CHECK(mpp::decode<Celsius>(mpp::encode(Celsius{21.5})) == Celsius{21.5});
  CHECK(mpp::detail::codec_kind<Celsius>() == "user");
}

TEST_CASE("Codec: rejects corrupted buffers", "[codec]") {
  // A bool byte that is neither 0 nor 1.
  CHECK_THROWS_AS(mpp::decode<bool>(mpp::Bytes{std::byte{2}}), mpp::CorruptedError);
  // A string whose length prefix claims 2^60 bytes must not try to allocate them.
  mpp::Bytes huge = mpp::encode(std::string("abc"));
  const std::uint64_t len = std::uint64_t{1} << 60;
  std::memcpy(huge.data(), &len, sizeof len);
  CHECK_THROWS_AS(mpp::decode<std::string>(huge), mpp::CorruptedError);
  // A variant index out of range.
  mpp::Bytes v = mpp::encode(std::variant<int, std::string>(5));
  v[0] = std::byte{9};
  CHECK_THROWS_AS((mpp::decode<std::variant<int, std::string>>(v)), mpp::CorruptedError);
  // Raw types demand the exact size.
  CHECK_THROWS_AS(mpp::decode<Point>(mpp::Bytes(3)), mpp::CorruptedError);
}

#if defined(MPP_OS_POSIX)
TEST_CASE("Codec: data crosses processes", "[codec]") {
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  const Person ada{"Ada", {1, 2, 3}, std::nullopt};
  const pid_t child = mpp_test::fork_child([&] {
    const mpp::Bytes b = mpp::encode(ada);
    const std::uint64_t n = b.size();
    (void)!::write(fds[1], &n, sizeof n);
    (void)!::write(fds[1], b.data(), n);
    return 0;
  });
  std::uint64_t n = 0;
  REQUIRE(::read(fds[0], &n, sizeof n) == sizeof n);
  mpp::Bytes b(n);
  REQUIRE(::read(fds[0], b.data(), n) == static_cast<ssize_t>(n));
  CHECK(mpp::decode<Person>(b) == ada);
  CHECK(mpp_test::wait_child(child) == 0);
  ::close(fds[0]);
  ::close(fds[1]);
}
#endif
