// mpp::codec: round trips for every supported family of types, a codec of one's own used wherever
// the type is nested, Encodable true exactly when encode compiles, and clean rejection of
// truncated or corrupted buffers.
#include <mpp/codec.hpp>

#include <array>
#include <deque>
#include <list>
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

struct NoSerialize {  // not trivially copyable, no serialize(), no codec
  std::string s;
};

struct Both {  // serialize() and a codec of its own: nested, cereal's way wins (no ambiguity)
  int x = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(x);
  }
  bool operator==(const Both&) const = default;
};

const auto kCapturing = [s = std::string("x")] { return s.size(); };

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

template <>
struct mpp::codec<Both> {
  static void encode(const Both& b, Bytes& out) { codec<int>::encode(b.x, out); }
  static Both decode(std::span<const std::byte> in) { return {codec<int>::decode(in)}; }
};

namespace {
/// True if T is Encodable, after instantiating encode<T> and decode<T> (a type that is Encodable
/// but does not encode fails the build here).
template <class... Ts>
constexpr bool encodes() {
  ((void)&mpp::encode<Ts>, ...);
  ((void)&mpp::decode<Ts>, ...);
  return (mpp::Encodable<Ts> && ...);
}
}  // namespace

static_assert(encodes<int, bool, Point, std::array<int, 3>, Person, Celsius, std::string,
                      std::map<std::string, std::vector<Person>>, std::vector<Celsius>,
                      std::optional<Celsius>, std::tuple<int, Celsius, std::string>,
                      std::pair<Celsius, Person>, std::array<Celsius, 2>,
                      std::map<std::string, Celsius>, std::deque<std::optional<Celsius>>,
                      std::list<Celsius>, std::variant<int, Celsius>, std::vector<Both>, Both>());
// Not Encodable: encode<T> would stop at its static_assert.
static_assert(!mpp::Encodable<int*>);
static_assert(!mpp::Encodable<const char*>);
static_assert(!mpp::Encodable<int Point::*>);
static_assert(!mpp::Encodable<char[4]>);  // a C array: no function returns one
static_assert(!mpp::Encodable<void>);
static_assert(!mpp::Encodable<NotEncodable>);
static_assert(!mpp::Encodable<NoSerialize>);
static_assert(!mpp::Encodable<decltype(kCapturing)>);  // a lambda holding a std::string
static_assert(!mpp::Encodable<std::vector<NoSerialize>>);
static_assert(!mpp::Encodable<std::vector<int*>>);
static_assert(!mpp::Encodable<std::optional<NotEncodable>>);
static_assert(!mpp::Encodable<std::tuple<int, NoSerialize>>);
static_assert(!mpp::Encodable<std::pair<Celsius, int*>>);
static_assert(!mpp::Encodable<std::map<std::string, NoSerialize>>);
static_assert(!mpp::Encodable<std::variant<int, NoSerialize>>);

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

TEST_CASE("Codec: a codec of one's own is used wherever the type is nested", "[codec]") {
  check_round_trip(std::vector<Celsius>{{1.5}, {-40}, {100}});
  check_round_trip(std::optional<Celsius>(Celsius{21.5}));
  check_round_trip(std::optional<Celsius>());
  check_round_trip(std::tuple<int, Celsius, std::string>(1, {2.5}, "t"));
  check_round_trip(std::pair<Celsius, Person>({3}, Person{"Bo", {1}, std::nullopt}));
  check_round_trip(std::array<Celsius, 2>{Celsius{4}, Celsius{5}});
  check_round_trip(std::map<std::string, Celsius>{{"a", {6}}, {"b", {7}}});
  check_round_trip(std::deque<std::optional<Celsius>>{Celsius{8}, std::nullopt});
  check_round_trip(std::list<Celsius>{{9}, {10}});
  check_round_trip(std::variant<int, Celsius>(Celsius{11}));
  check_round_trip(std::vector<std::vector<Celsius>>{{{12}}, {}, {{13}, {14}}});
  // Nested, the value's own encoding follows its length: false (not nullopt), 8, 21.5 + 1000.
  const mpp::Bytes b = mpp::encode(std::optional<Celsius>(Celsius{21.5}));
  REQUIRE(b.size() == 1 + 8 + 8);
  std::uint64_t n = 0;
  double d = 0;
  std::memcpy(&n, b.data() + 1, 8);
  std::memcpy(&d, b.data() + 9, 8);
  CHECK(n == 8);
  CHECK(d == 1021.5);
  // A type with serialize() as well is saved by cereal when nested (its codec at top level).
  check_round_trip(std::vector<Both>{{1}, {2}});
  // A length that claims more than is left, and a variant index out of range.
  mpp::Bytes longer = b;
  const std::uint64_t huge = std::uint64_t{1} << 60;
  std::memcpy(longer.data() + 1, &huge, 8);
  CHECK_THROWS_AS(mpp::decode<std::optional<Celsius>>(longer), mpp::CorruptedError);
  mpp::Bytes v = mpp::encode(std::variant<int, Celsius>(Celsius{1}));
  v[0] = std::byte{7};
  CHECK_THROWS_AS((mpp::decode<std::variant<int, Celsius>>(v)), mpp::CorruptedError);
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
