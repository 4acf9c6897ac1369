// Tests of mpp::Manager, SharedDict, SharedList and Namespace across real processes, including
// writers SIGKILLed at random moments and at every crash point of the storage layer. The tests
// that fork or SIGKILL are POSIX-only; the rest, and the spawn tests (a named manager shared with
// spawned processes, spawned writers terminated at random), also run on Windows (under wine).
//
// Compiled with the crash-point hook (crash_points.hpp): children armed for a point SIGKILL
// themselves there.
#include "crash_points.hpp"

#include <mpp/manager.hpp>
#include <mpp/process.hpp>

#if defined(MPP_OS_POSIX)
#  include <fcntl.h>
#  include <poll.h>
#  include <signal.h>
#  include <sys/mman.h>
#  include <sys/stat.h>
#  include <unistd.h>
#endif

#include <chrono>
#include <cstring>
#include <limits>
#include <map>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <variant>
#include <vector>

#include "helpers.hpp"

using namespace std::chrono_literals;
using mpp_test::unique_name;
#if defined(MPP_OS_POSIX)
using mpp_test::fork_child;
using mpp_test::tolerate;
using mpp_test::wait_child;
#endif

namespace {

struct Person {
  std::string name;
  int score = 0;
  template <class A>
  void serialize(A& a) {
    a(name, score);
  }
  bool operator==(const Person&) const = default;
};

mpp::ManagerOptions small(std::uint64_t cap = 64u << 20) {
  mpp::ManagerOptions o;
  o.capacity = cap;
  return o;
}

}  // namespace

TEST_CASE("Manager: dict, every method in one process", "[manager]") {
  mpp::Manager m(small());
  auto d = m.dict<std::string, int>("d");
  CHECK(d.size() == 0);
  CHECK(d.empty());
  CHECK_FALSE(d.get("a").has_value());
  CHECK(d.get("a", 7) == 7);
  CHECK_THROWS_AS(d.at("a"), mpp::KeyError);
  CHECK_THROWS_AS(static_cast<int>(d["a"]), mpp::KeyError);
  d.set("a", 1);
  d["b"] = 2;
  d["b"] += 5;
  d["c"] -= 3;  // missing: starts from 0
  CHECK(d.at("a") == 1);
  CHECK(static_cast<int>(d["b"]) == 7);
  CHECK(d["c"].value() == -3);
  CHECK(d.contains("a"));
  CHECK_FALSE(d.contains("z"));
  CHECK(d.setdefault("a", 100) == 1);
  CHECK(d.setdefault("e", 5) == 5);
  CHECK(d.keys() == std::vector<std::string>{"a", "b", "c", "e"});
  CHECK(d.values() == std::vector<int>{1, 7, -3, 5});
  CHECK(d.pop("c") == -3);
  CHECK(d.pop("c", 42) == 42);
  CHECK_THROWS_AS(d.pop("c"), mpp::KeyError);
  CHECK(d.erase("a"));
  CHECK_FALSE(d.erase("a"));
  d.update({{"x", 10}, {"y", 20}});
  std::map<std::string, int> more{{"z", 30}, {"b", 8}};
  d.update(more);
  CHECK(d.to_map() ==
        std::map<std::string, int>{{"b", 8}, {"e", 5}, {"x", 10}, {"y", 20}, {"z", 30}});
  auto items = d.items();
  REQUIRE(items.size() == 5);
  CHECK(items.front() == std::pair<std::string, int>{"b", 8});  // insertion order kept
  CHECK(d.popitem() == std::pair<std::string, int>{"z", 30});   // last inserted first
  CHECK(d.update_with("x", [](int v) { return v * 3; }) == 30);
  CHECK(d.update_with(
            "new", [](int v) { return v + 1; }, 41) == 42);
  CHECK(d.at("new") == 42);
  CHECK_THROWS_AS(d.update_with("x", [](int) -> int { throw std::runtime_error("no"); }),
                  std::runtime_error);
  CHECK(d.at("x") == 30);  // unchanged by the throwing update
  d.clear();
  CHECK(d.size() == 0);
  CHECK_THROWS_AS(d.popitem(), mpp::KeyError);
  for (int i = 0; i < 5000; ++i) d.set(fmt::format("k{}", i), i);
  for (int i = 0; i < 5000; i += 2) CHECK(d.erase(fmt::format("k{}", i)));
  CHECK(d.size() == 2500);
  for (int i = 1; i < 5000; i += 2) REQUIRE(d.at(fmt::format("k{}", i)) == i);
  d.set("k1", 123456789);
  CHECK(d.at("k1") == 123456789);
}

TEST_CASE("Manager: dict, keys and values of any codec type", "[manager]") {
  mpp::Manager m(small());
  auto d = m.dict<std::vector<int>, Person>("people");
  d.set({1, 2}, Person{"ann", 3});
  d.set({}, Person{"bob", 4});
  d.set({1, 2}, Person{"a much longer name than before", 5});  // value grows: reallocated
  CHECK(d.at({1, 2}) == Person{"a much longer name than before", 5});
  CHECK(d.at({}) == Person{"bob", 4});
  auto e = m.dict<int, std::string>("ints");
  for (int i = 0; i < 100; ++i) e[i] = std::string(static_cast<std::size_t>(i), 'x');
  for (int i = 0; i < 100; ++i) CHECK(e.at(i).size() == static_cast<std::size_t>(i));
}

TEST_CASE("Manager: list, every method in one process", "[manager]") {
  mpp::Manager m(small());
  auto l = m.list<int>("l");
  CHECK(l.size() == 0);
  CHECK_THROWS_AS(l.pop(), mpp::IndexError);
  for (int i = 0; i < 10; ++i) l.append(i);
  l.extend(std::vector<int>{10, 11});
  l.extend({12});
  CHECK(l.size() == 13);
  CHECK(l.get(0) == 0);
  CHECK(l.get(-1) == 12);
  CHECK(static_cast<int>(l[3]) == 3);
  CHECK_THROWS_AS(l.get(13), mpp::IndexError);
  CHECK_THROWS_AS(l.get(-14), mpp::IndexError);
  l[3] = 33;
  CHECK(l[3].value() == 33);
  l.insert(0, -1);
  l.insert(-1, 99);     // before the last, as Python
  l.insert(1000, 100);  // clamped to the end
  CHECK(l.to_vector() == std::vector<int>{-1, 0, 1, 2, 33, 4, 5, 6, 7, 8, 9, 10, 11, 99, 12, 100});
  CHECK(l.pop() == 100);
  CHECK(l.pop(0) == -1);
  CHECK(l.pop(-2) == 99);
  l.remove(33);
  CHECK_THROWS_AS(l.remove(33), mpp::ValueError);
  CHECK(l.index(5) == 4);
  CHECK_THROWS_AS(l.index(33), mpp::ValueError);
  l.append(5);
  CHECK(l.count(5) == 2);
  CHECK(l.index(5, 5) == 12);
  CHECK(l.slice(1, 4) == std::vector<int>{1, 2, 4});
  CHECK(l.slice(-3, 100) == std::vector<int>{11, 12, 5});
  CHECK(l.slice(100, -100, -4) == std::vector<int>{5, 9, 5, 0});
  l.reverse();
  CHECK(l.to_vector() == std::vector<int>{5, 12, 11, 10, 9, 8, 7, 6, 5, 4, 2, 1, 0});
  l.sort();
  CHECK(l.to_vector() == std::vector<int>{0, 1, 2, 4, 5, 5, 6, 7, 8, 9, 10, 11, 12});
  l.sort(std::less<>{}, true);
  CHECK(l.to_vector() == std::vector<int>{12, 11, 10, 9, 8, 7, 6, 5, 5, 4, 2, 1, 0});
  l.erase(0, 13, 2);  // del l[::2]
  CHECK(l.to_vector() == std::vector<int>{11, 9, 7, 5, 4, 1});
  l.clear();
  CHECK(l.empty());
  l.append(1);
  CHECK(l.to_vector() == std::vector<int>{1});
  for (int i = 0; i < 3000; ++i) l.insert(0, i);  // growth with shifting
  CHECK(l.size() == 3001);
  CHECK(l.get(0) == 2999);
  CHECK(l.get(-1) == 1);
}

TEST_CASE("Namespace: attributes of any codec type", "[manager]") {
  mpp::Manager m(small());
  auto ns = m.Namespace("cfg");
  ns.set("x", 1);
  ns.set("name", std::string("mpp"));
  ns.set("v", std::vector<double>{1.5, 2.5});
  CHECK(ns.get<int>("x") == 1);
  CHECK(ns.get<std::string>("name") == "mpp");
  CHECK(ns.get<std::vector<double>>("v") == std::vector<double>{1.5, 2.5});
  CHECK_THROWS_AS(ns.get<int>("missing"), mpp::KeyError);
  CHECK(ns.get<int>("missing", 9) == 9);
  CHECK_THROWS_AS(ns.get<double>("x"), mpp::TypeMismatchError);
  ns.set("x", 2.0);  // an attribute may change type, as in Python
  CHECK(ns.get<double>("x") == 2.0);
  CHECK(ns.contains("name"));
  CHECK(ns.names() == std::vector<std::string>{"x", "name", "v"});
  CHECK(ns.erase("name"));
  CHECK_FALSE(ns.contains("name"));
}

TEST_CASE("Manager: names, kinds and types are checked", "[manager]") {
  const auto name = unique_name("mgr");
  auto m = mpp::Manager::create(name, small());
  CHECK(m.name() == name);
  CHECK_THROWS_AS(mpp::Manager::create(name), mpp::ExistsError);
  CHECK_THROWS_AS(mpp::Manager::open(unique_name("none")), mpp::NotFoundError);
  m.dict<std::string, int>("d").set("a", 1);
  CHECK_THROWS_AS((m.dict<std::string, double>("d")), mpp::TypeMismatchError);
  CHECK_THROWS_AS(m.list<int>("d"), mpp::TypeMismatchError);
  CHECK_THROWS_AS(m.list<int>("bad/name"), mpp::InvalidArgument);
  CHECK_THROWS_AS(m.list<int>(""), mpp::InvalidArgument);
  auto a = m.dict<int, int>();
  auto b = m.dict<int, int>();
  CHECK(a.name() != b.name());
  auto again = mpp::Manager::open_or_create(name);
  CHECK(again.dict<std::string, int>("d").at("a") == 1);
}

#if defined(MPP_OS_POSIX)
TEST_CASE("Manager: dict, list and Namespace across forked processes", "[manager]") {
  mpp::Manager m(small());
  auto d = m.dict<std::string, int>();
  auto l = m.list<std::string>();
  auto ns = m.Namespace();
  const pid_t child = fork_child([&] {
    d.set("from_child", 1);
    l.append("hello");
    ns.set("ready", true);
    return 0;
  });
  REQUIRE(wait_child(child) == 0);
  CHECK(d.at("from_child") == 1);
  CHECK(l.to_vector() == std::vector<std::string>{"hello"});
  CHECK(ns.get<bool>("ready"));

  // Concurrent atomic increments and appends from two children.
  constexpr int kN = 2000;
  std::vector<pid_t> kids;
  for (int k = 0; k < 2; ++k)
    kids.push_back(fork_child([&, k] {
      for (int i = 0; i < kN; ++i) {
        d["counter"] += 1;
        l.append(std::to_string(k));
        d.set(fmt::format("c{}.{}", k, i), i);
      }
      return 0;
    }));
  for (pid_t p : kids) REQUIRE(wait_child(p) == 0);
  CHECK(d.at("counter") == 2 * kN);
  CHECK(l.size() == 1 + 2 * kN);
  CHECK(l.count("0") == kN);
  CHECK(d.size() == 2 + 2 * kN);
}

TEST_CASE("Manager: an unrelated process opens the manager by name", "[manager]") {
  const auto name = unique_name("mgr");
  auto m = mpp::Manager::create(name, small());
  auto d = m.dict<std::string, std::vector<int>>("data");
  d.set("v", {1, 2, 3});
  const pid_t child = fork_child([&] {
    auto m2 = mpp::Manager::open(name);  // does not use the inherited handle
    auto d2 = m2.dict<std::string, std::vector<int>>("data");
    if (d2.at("v") != std::vector<int>{1, 2, 3}) return 2;
    d2.set("w", {4});
    m2.list<int>("made_by_child").append(7);
    return 0;
  });
  REQUIRE(wait_child(child) == 0);
  CHECK(d.at("w") == std::vector<int>{4});
  CHECK(m.list<int>("made_by_child").to_vector() == std::vector<int>{7});
}

TEST_CASE("Manager: readers run concurrently with a writer and see consistent snapshots",
          "[manager]") {
  mpp::Manager m(small());
  auto d = m.dict<int, std::string>();
  auto l = m.list<int>();
  // Invariant kept by every mutation: all values of d are equal strings; l holds 0..n-1.
  d.update(std::vector<std::pair<int, std::string>>{{0, "a"}, {1, "a"}, {2, "a"}});
  const pid_t writer = fork_child([&] {
    for (int i = 0; i < 3000; ++i) {
      const std::string v(static_cast<std::size_t>(i % 50), static_cast<char>('a' + i % 26));
      d.update(std::vector<std::pair<int, std::string>>{{0, v}, {1, v}, {2, v}});
      l.append(i);
    }
    return 0;
  });
  int bad = 0;
  for (int i = 0; i < 3000; ++i) {
    auto vals = d.values();
    if (vals.size() != 3 || vals[0] != vals[1] || vals[1] != vals[2]) ++bad;
    auto v = l.to_vector();
    for (std::size_t j = 0; j < v.size(); ++j)
      if (v[j] != static_cast<int>(j)) ++bad;
  }
  REQUIRE(wait_child(writer) == 0);
  CHECK(bad == 0);
  CHECK(l.size() == 3000);
}
#endif  // MPP_OS_POSIX

TEST_CASE("Manager: a full manager throws and leaves the container unchanged", "[manager]") {
  mpp::Manager m(small(1u << 20));
  auto d = m.dict<int, std::string>();
  const std::string big(4000, 'x');
  int n = 0;
  try {
    for (;; ++n) d.set(n, big);
  } catch (const mpp::MemoryError& e) {
    CHECK(std::string(e.what()).find("full") != std::string::npos);
  }
  CHECK(n > 10);
  CHECK(d.size() == static_cast<std::size_t>(n));
  CHECK_FALSE(d.contains(n));
  for (int i = 0; i < n; ++i) REQUIRE(d.at(i) == big);
  CHECK(d.pop(0) == big);  // still usable; the freed block is reused
  d.set(n, big);
  CHECK(d.at(n) == big);
}

// ---- crash consistency ------------------------------------------------------------------------

namespace {

// A workload whose every mutation keeps checkable invariants:
//  - dict "g": keys g0..g7 always hold the same value (set together by one update());
//  - dict "v": each value is a string of its key's length times a letter (resized often), keys
//    come and go (set / pop / popitem / setdefault / update_with);
//  - list "l": items come in equal pairs (extend by 2, erase a pair slice, sort, reverse keep it);
//  - Namespace "ns": attribute "a" == "b" as far as set by one... (single attributes only).
int mutate_forever(mpp::Manager m, unsigned seed, long iterations) {
  auto g = m.dict<std::string, std::string>("g");
  auto v = m.dict<int, std::string>("v");
  auto l = m.list<std::int64_t>("l");
  auto ns = m.Namespace("ns");
  std::mt19937 rng(seed);
  for (long it = 0; it < iterations; ++it) {
    const int op = static_cast<int>(rng() % 12);
    const int k = static_cast<int>(rng() % 64);
    const std::string val(static_cast<std::size_t>(k), static_cast<char>('a' + rng() % 26));
    switch (op) {
      case 0: {
        std::vector<std::pair<std::string, std::string>> all;
        const std::string x(rng() % 40, static_cast<char>('a' + rng() % 26));
        for (int i = 0; i < 8; ++i) all.emplace_back("g" + std::to_string(i), x);
        g.update(all);
        break;
      }
      case 1:
        v.set(k, val);
        break;
      case 2:
        v.pop(k, "");
        break;
      case 3:
        try {
          if (v.size() > 40) v.popitem();
        } catch (const mpp::KeyError&) {  // the other writer emptied it in between
        }
        break;
      case 4:
        v.setdefault(k, val);
        break;
      case 5:
        v.update_with(k, [&](const std::string&) { return val; });
        break;
      case 6: {
        const auto x = static_cast<std::int64_t>(rng() % 1000);
        l.extend(std::vector<std::int64_t>{x, x});
        break;
      }
      case 7:
        if (l.size() > 100) l.erase(0, 2);
        break;
      case 8:
        if (rng() % 8 == 0) l.sort();
        break;
      case 9:
        if (rng() % 8 == 0) l.reverse();
        break;
      case 10:
        ns.set("x", std::to_string(k));
        break;
      case 11:
        if (rng() % 50 == 0) {
          v.clear();
          if (l.size() > 400) l.clear();
        }
        break;
    }
  }
  return 0;
}

// Checks every invariant and that every container is still usable.
void check_consistent(mpp::Manager m) {
  auto g = m.dict<std::string, std::string>("g");
  auto gv = g.values();
  if (!gv.empty()) {
    REQUIRE(gv.size() == 8);
    for (auto& x : gv) REQUIRE(x == gv[0]);
  }
  auto v = m.dict<int, std::string>("v");
  auto items = v.items();
  REQUIRE(items.size() == v.size());
  for (auto& [k, s] : items) {
    REQUIRE(s.size() == static_cast<std::size_t>(k));
    if (!s.empty()) REQUIRE(s == std::string(s.size(), s[0]));
    REQUIRE(v.at(k) == s);  // the index finds every entry
  }
  auto l = m.list<std::int64_t>("l");
  auto lv = l.to_vector();
  REQUIRE(lv.size() % 2 == 0);
  std::map<std::int64_t, int> counts;
  for (auto x : lv) ++counts[x];
  for (auto& [x, c] : counts) REQUIRE(c % 2 == 0);
  auto ns = m.Namespace("ns");
  if (ns.contains("x")) (void)ns.get<std::string>("x");
  // Usable by everyone: each container accepts new mutations.
  v.set(1000, "probe");
  REQUIRE(v.pop(1000) == "probe");
  l.extend(std::vector<std::int64_t>{-1, -1});
  g.update(std::vector<std::pair<std::string, std::string>>{});
}

}  // namespace

#if defined(MPP_OS_POSIX)
TEST_CASE("Manager: writers SIGKILLed at random moments leave every container before or after",
          "[manager][kill]") {
  mpp::Manager m(small());
  std::mt19937 rng(1234);
  for (int round = 0; round < 12; ++round) {
    std::vector<pid_t> kids;
    for (int w = 0; w < 2; ++w)
      kids.push_back(fork_child([&, w] {
        return mutate_forever(m, static_cast<unsigned>(rng()) + static_cast<unsigned>(w), 1L << 40);
      }));
    std::this_thread::sleep_for(std::chrono::microseconds(2000 + rng() % 30000));
    for (pid_t p : kids) ::kill(p, SIGKILL);
    for (pid_t p : kids) CHECK(wait_child(p) == -SIGKILL);
    check_consistent(m);
  }
}

TEST_CASE("Manager: a writer killed at each crash point leaves every container before or after",
          "[manager][kill]") {
  mpp::Manager m(small());
  REQUIRE(wait_child(fork_child([&] { return mutate_forever(m, 1, 3000); })) == 0);
  // Which crash points does the workload pass?
  std::set<std::string> points;
  mpp_test::crash_points::collect_into(&points);
  mutate_forever(m, 2, 3000);
  mpp_test::crash_points::collect_into(nullptr);
  CHECK(points.count("manager.tx.before_commit") == 1);
  CHECK(points.count("manager.dict.set.after_index") == 1);
  CHECK(points.size() >= 8);
  for (const auto& p : points) {
    for (long hit : {1L, 7L, 50L}) {
      const pid_t child = fork_child([&] {
        mpp_test::crash_points::arm(p, hit);
        return mutate_forever(m, static_cast<unsigned>(hit) * 31 + 5, 5000);
      });
      const int rc = wait_child(child);
      INFO("crash point " << p << " hit " << hit);
      CHECK((rc == -SIGKILL || rc == 0));
      check_consistent(m);
    }
  }
}

#endif  // MPP_OS_POSIX

TEST_CASE("Manager: holds 10^6 string->int entries", "[manager][stress]") {
  mpp::Manager m;  // default capacity (sparse)
  auto d = m.dict<std::string, int>();
  constexpr int kN = 1'000'000;
  for (int i = 0; i < kN; ++i) d.set("key-" + std::to_string(i), i);
  CHECK(d.size() == static_cast<std::size_t>(kN));
  for (int i = 0; i < kN; i += 997) REQUIRE(d.at("key-" + std::to_string(i)) == i);
  auto keys = d.keys();
  CHECK(keys.size() == static_cast<std::size_t>(kN));
  CHECK(keys[12345] == "key-12345");
}

#if defined(MPP_OS_POSIX)
TEST_CASE("Manager: synchronisation objects and handles cross processes by name", "[manager]") {
  mpp::Manager m(small());
  auto d = m.dict<std::string, int>("d");
  auto l = m.list<int>("l");
  auto ns = m.Namespace("ns");
  auto v = m.Value<int>(5);
  auto lock = m.Lock();
  auto q = m.Queue<std::string>();
  auto e = m.Event();
  // Encoded like Python pickles proxies: by name; decoding opens the same objects.
  const auto bd = mpp::encode(d), bl = mpp::encode(l), bn = mpp::encode(ns), bm = mpp::encode(m);
  const pid_t child = fork_child([&] {
    auto d2 = mpp::decode<mpp::SharedDict<std::string, int>>(bd);
    auto l2 = mpp::decode<mpp::SharedList<int>>(bl);
    auto n2 = mpp::decode<mpp::Namespace>(bn);
    auto m2 = mpp::decode<mpp::Manager>(bm);
    d2.set("x", 1);
    l2.append(2);
    n2.set("y", 3);
    m2.dict<std::string, int>("d")["x"] += 10;
    {
      std::lock_guard<mpp::Lock> g(lock);
      v.set(v.value() + 1);
    }
    q.put("hi");
    e.set();
    return 0;
  });
  REQUIRE(wait_child(child) == 0);
  CHECK(d.at("x") == 11);
  CHECK(l.to_vector() == std::vector<int>{2});
  CHECK(ns.get<int>("y") == 3);
  CHECK(v.value() == 6);
  CHECK(q.get() == "hi");
  CHECK(e.is_set());
}

#endif  // MPP_OS_POSIX

TEST_CASE("Manager: corrupted shared memory is a CorruptedError, never a wild access",
          "[manager]") {
  const auto name = unique_name("mgr");
  auto m = mpp::Manager::create(name, small());
  auto d = m.dict<std::string, int>("d");
  auto l = m.list<int>("l");
  d.set("a", 1);
  l.append(1);
  // A hostile or buggy peer scribbles over the roots of both containers.
  auto seg = mpp::detail::Segment::open(name, mpp::Kind::manager, mpp::TypeInfo::none());
  mpp::detail::shm::Arena arena(seg.payload(), seg.payload_size(), seg.name());
  auto* h = arena.header();
  REQUIRE(h->dir_count == 2);
  auto* dr = arena.obj<mpp::detail::shm::DictRoot>(h->dir[0].root);
  auto* lr = arena.obj<mpp::detail::shm::ListRoot>(h->dir[1].root);
  const auto saved_d = dr->index_off;
  const auto saved_l = lr->arr_off;
  dr->index_off = ~std::uint64_t{0} - 64;
  lr->arr_off = seg.payload_size() - 8;
  CHECK_THROWS_AS(d.get("a"), mpp::CorruptedError);
  CHECK_THROWS_AS(d.set("b", 2), mpp::CorruptedError);
  CHECK_THROWS_AS(l.get(0), mpp::CorruptedError);
  CHECK_THROWS_AS(l.append(2), mpp::CorruptedError);
  dr->index_off = saved_d;
  lr->arr_off = saved_l;
  lr->size = 1u << 30;  // more items than the array holds
  CHECK_THROWS_AS(l.to_vector(), mpp::CorruptedError);
  CHECK_THROWS_AS(l.pop(), mpp::CorruptedError);
  lr->size = 1;
  CHECK(d.at("a") == 1);  // repaired by hand: everything works again
  CHECK(l.to_vector() == std::vector<int>{1});
}

#if defined(MPP_OS_POSIX)
TEST_CASE("Manager: a recoverer killed while replaying the undo log leaves it for the next one",
          "[manager][kill]") {
  mpp::Manager m(small());
  auto d = m.dict<int, std::string>("v");
  auto l = m.list<std::int64_t>("l");
  d.update(std::vector<std::pair<int, std::string>>{{1, "a"}, {2, "bb"}});
  l.extend({7, 7});
  // 1. A writer dies just before committing a big mutation (a long undo log).
  const pid_t writer = fork_child([&] {
    mpp_test::crash_points::arm("manager.tx.before_commit", 1);
    std::vector<std::pair<int, std::string>> many;
    for (int i = 0; i < 500; ++i)
      many.emplace_back(i, std::string(static_cast<std::size_t>(i % 64), 'z'));
    d.update(many);
    return 0;
  });
  REQUIRE(wait_child(writer) == -SIGKILL);
  // 2. Two recoverers in a row die half-way through the replay.
  for (long hit : {3L, 40L}) {
    const pid_t rec = fork_child([&] {
      mpp_test::crash_points::arm("manager.recover.replay", hit);
      d.set(1000, "x");
      return 0;
    });
    REQUIRE(wait_child(rec) == -SIGKILL);
  }
  // 3. The next user finishes the recovery: the dict is exactly as before the update.
  CHECK(d.items() == std::vector<std::pair<int, std::string>>{{1, "a"}, {2, "bb"}});
  CHECK(l.to_vector() == std::vector<std::int64_t>{7, 7});
  d.set(3, "ccc");
  CHECK(d.size() == 3);
}

TEST_CASE("Manager: readers see only committed states while writers are SIGKILLed",
          "[manager][kill]") {
  mpp::Manager m(small());
  auto g = m.dict<std::string, std::string>("g");
  g.update(std::vector<std::pair<std::string, std::string>>{{"a", ""}, {"b", ""}, {"c", ""}});
  mpp::Value<int> stop(0);
  // The reader checks the invariant (a == b == c) continuously while writers die.
  const pid_t reader = fork_child([&] {
    long bad = 0, reads = 0;
    while (stop.value() == 0) {
      auto v = g.values();
      ++reads;
      if (v.size() != 3 || v[0] != v[1] || v[1] != v[2]) ++bad;
    }
    return bad == 0 && reads > 0 ? 0 : 3;
  });
  std::mt19937 rng(7);
  for (int round = 0; round < 8; ++round) {
    const pid_t w = fork_child([&] {
      std::mt19937 r(static_cast<unsigned>(round));
      for (;;) {
        const std::string x(r() % 100, static_cast<char>('a' + r() % 26));
        g.update(std::vector<std::pair<std::string, std::string>>{{"a", x}, {"b", x}, {"c", x}});
      }
      return 0;
    });
    std::this_thread::sleep_for(std::chrono::microseconds(1000 + rng() % 20000));
    ::kill(w, SIGKILL);
    CHECK(wait_child(w) == -SIGKILL);
  }
  stop.set(1);
  CHECK(wait_child(reader) == 0);
  auto v = g.values();
  REQUIRE(v.size() == 3);
  CHECK((v[0] == v[1] && v[1] == v[2]));
}

#endif  // MPP_OS_POSIX

namespace {
// Runs in a re-executed program (spawn): it knows the containers only by their encoded names.
void spawned_writer(mpp::SharedDict<std::string, int> d, mpp::SharedList<std::string> l,
                    mpp::Namespace ns) {
  d["spawned"] += d.at("base");
  l.append("from a spawned process");
  ns.set("done", true);
}
MPP_REGISTER(spawned_writer);
}  // namespace

TEST_CASE("Manager: a spawned (re-executed) process uses containers passed by name", "[manager]") {
  mpp::Manager m(small());
  auto d = m.dict<std::string, int>("d");
  auto l = m.list<std::string>("l");
  auto ns = m.Namespace("ns");
  d.set("base", 41);
  d.set("spawned", 1);
  mpp::Process p({.start_method = mpp::StartMethod::spawn}, spawned_writer, d, l, ns);
  p.start();
  p.join();
  REQUIRE(p.exitcode() == 0);
  CHECK(d.at("spawned") == 42);
  CHECK(l.to_vector() == std::vector<std::string>{"from a spawned process"});
  CHECK(ns.get<bool>("done"));
}

namespace {
/// Opens the manager `name` and, `n` times, adds 1 to d["counter"] and appends `id` to list "l".
void count_in_manager(std::string name, int id, int n) {
  auto m = mpp::Manager::open(name);
  auto d = m.dict<std::string, int>("d");
  auto l = m.list<int>("l");
  for (int i = 0; i < n; ++i) {
    d["counter"] += 1;
    l.append(id);
  }
  d.set(fmt::format("done.{}", id), n);
}
/// Says it started (Namespace "started"), then runs mutate_forever() until it is terminated.
void mutate_spawned(mpp::Manager m, unsigned seed) {
  m.Namespace("started").set(std::to_string(seed), true);
  mutate_forever(m, seed, std::numeric_limits<long>::max());
}
MPP_REGISTER(count_in_manager);
MPP_REGISTER(mutate_spawned);
}  // namespace

TEST_CASE("Manager: a named manager shared with spawned processes: atomic updates from both",
          "[manager][spawn]") {
  const auto name = unique_name("mgr.spawn");
  auto m = mpp::Manager::create(name, small());
  auto d = m.dict<std::string, int>("d");
  auto l = m.list<int>("l");
  constexpr int kN = 500;
  std::vector<mpp::Process> ps;
  for (int id = 0; id < 2; ++id)
    ps.push_back(
        mpp::Process({.start_method = mpp::StartMethod::spawn}, count_in_manager, name, id, kN));
  for (auto& p : ps) p.start();
  for (auto& p : ps) {
    CHECK(p.join(120s));
    CHECK(p.exitcode() == 0);
  }
  CHECK(d.at("counter") == 2 * kN);
  CHECK(d.at("done.0") == kN);
  CHECK(d.at("done.1") == kN);
  CHECK(l.size() == 2 * kN);
  CHECK(l.count(0) == kN);
  CHECK(l.count(1) == kN);
}

TEST_CASE(
    "Manager: spawned writers terminated at random moments leave every container before or after",
    "[manager][spawn][kill]") {
  mpp::Manager m(small());
  std::mt19937 rng(4321);
  for (int round = 0; round < 4; ++round) {
    std::vector<mpp::Process> ps;
    std::vector<std::string> seeds;
    for (int w = 0; w < 2; ++w) {
      const auto seed = static_cast<unsigned>(rng());
      seeds.push_back(std::to_string(seed));
      ps.push_back(
          mpp::Process({.start_method = mpp::StartMethod::spawn}, mutate_spawned, m, seed));
    }
    for (auto& p : ps) p.start();
    auto started = m.Namespace("started");
    for (int i = 0; i < 6000 && !(started.contains(seeds[0]) && started.contains(seeds[1])); ++i)
      std::this_thread::sleep_for(5ms);
    std::this_thread::sleep_for(std::chrono::milliseconds(5 + rng() % 60));
    for (auto& p : ps) CHECK(p.is_alive());  // still mutating when killed
    for (auto& p : ps) p.kill();
    for (auto& p : ps) CHECK(p.join(60s));
    check_consistent(m);
  }
}

#if defined(MPP_OS_POSIX)
namespace {

/// A one-shot "go" from the parent to a forked child (a pipe).
struct Go {
  int fd[2]{-1, -1};
  Go() { REQUIRE(::pipe(fd) == 0); }
  ~Go() {
    ::close(fd[0]);
    ::close(fd[1]);
  }
  void post() const {
    const char c = 1;
    REQUIRE(::write(fd[1], &c, 1) == 1);
  }
  bool wait() const {  // false after 30 s without a post
    pollfd p{fd[0], POLLIN, 0};
    if (::poll(&p, 1, 30000) != 1) return false;
    char c;
    return ::read(fd[0], &c, 1) == 1;
  }
};

/// The arena of the manager `name`, mapped behind the library's back (as a hostile peer would).
struct RawArena {
  std::byte* file = nullptr;
  std::size_t file_size = 0;
  std::byte* base = nullptr;  ///< the arena (payload) start
  explicit RawArena(const std::string& name) {
    const int fd = ::shm_open(("/" + name).c_str(), O_RDWR, 0);
    REQUIRE(fd >= 0);
    struct stat st {};
    REQUIRE(::fstat(fd, &st) == 0);
    file_size = static_cast<std::size_t>(st.st_size);
    void* p = ::mmap(nullptr, file_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    ::close(fd);
    REQUIRE(p != MAP_FAILED);
    file = static_cast<std::byte*>(p);
    base = file + reinterpret_cast<const mpp::detail::SegmentHeader*>(file)->payload_offset;
  }
  ~RawArena() { ::munmap(file, file_size); }
  mpp::detail::shm::ArenaHeader* header() const {
    return reinterpret_cast<mpp::detail::shm::ArenaHeader*>(base);
  }
  std::uint64_t payload_offset() const { return static_cast<std::uint64_t>(base - file); }
  void write(std::uint64_t off, std::uint64_t v) const {
    if (payload_offset() + off + 8 <= file_size) std::memcpy(base + off, &v, 8);
  }
  std::uint64_t read(std::uint64_t off) const {
    std::uint64_t v = 0;
    if (payload_offset() + off + 8 <= file_size) std::memcpy(&v, base + off, 8);
    return v;
  }
};

/// Exit codes of a victim process.
enum VictimRc { kOk = 0, kForeign = 3, kNoError = 4, kWrongError = 5, kNoGo = 6 };

}  // namespace

TEST_CASE("Manager: eight zero bytes over the arena's bump word: CorruptedError, not SIGSEGV",
          "[manager]") {
  const auto name = unique_name("mgr.bump");
  auto m = mpp::Manager::create(name, small(16u << 20));
  auto d = m.dict<std::string, int>("d");
  auto l = m.list<std::string>("l");
  for (int i = 0; i < 4; ++i) {
    d.set(fmt::format("k{}", i), i);
    l.append(std::string(40, 'x'));
  }
  RawArena raw(name);
  raw.write(offsetof(mpp::detail::shm::ArenaHeader, bump), 0);
  const int rc = mpp_test::run_bounded(20s, [&]() -> int {
    int corrupted = 0;
    for (int i = 0; i < 2; ++i) {
      try {
        d.set(fmt::format("new{}", i), i);
        l.append(std::string(300, 'y'));
      } catch (const mpp::CorruptedError& e) {
        corrupted += std::string_view(e.what()).find(name) != std::string_view::npos;
      }
    }
    return corrupted == 2 ? kOk : kWrongError;
  });
  CHECK(rc == kOk);
  CHECK(d.at("k3") == 3);  // reads do not need the allocator
}

TEST_CASE("Manager: hostile peer scribbles over a live manager: errors, never a crash or a hang",
          "[manager][kill][hostile]") {
  namespace shm = mpp::detail::shm;
  const long rounds = [] {
    const char* e = std::getenv("MPP_HOSTILE_ROUNDS");
    return e != nullptr ? std::atol(e) : 240L;
  }();
  const std::uint64_t seed0 = [] {
    const char* e = std::getenv("MPP_HOSTILE_SEED");
    return e != nullptr ? std::strtoull(e, nullptr, 10) : 20281ull;
  }();
  int errors_seen = 0;
  for (long round = 0; round < rounds; ++round) {
    const std::uint64_t seed = seed0 + static_cast<std::uint64_t>(round);
    INFO("round " << round << "; reproduce with MPP_HOSTILE_SEED=" << seed
                  << " MPP_HOSTILE_ROUNDS=1");
    const auto name = unique_name("mgr.hostile");
    mpp::ManagerOptions o = small(1u << 20);
    o.timeout = 200ms;  // a scribbled lock word may name a live holder
    auto m = mpp::Manager::create(name, o);
    auto d = m.dict<std::string, int>("d");
    auto l = m.list<std::string>("l");
    auto ns = m.Namespace("ns");
    for (int i = 0; i < 24; ++i) {
      d.set(fmt::format("key{}", i), i);
      l.append(std::string(static_cast<std::size_t>(1 + i * 7), static_cast<char>('a' + i % 26)));
    }
    for (int i = 0; i < 6; ++i) {  // fill some free lists
      d.erase(fmt::format("key{}", i * 3));
      l.pop(0);
    }
    ns.set("x", 1.5);

    // Where to scribble: the header's hot words, the allocator, the undo log, the directory,
    // the containers' roots and tables, anywhere in the used heap.
    RawArena raw(name);
    const auto* h = raw.header();
    const std::uint64_t log_off = h->log_off, heap = h->heap_start, top = h->bump;
    std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges{
        {0, offsetof(shm::ArenaHeader, free_head)},
        {offsetof(shm::ArenaHeader, bump), offsetof(shm::ArenaHeader, bump) + 8},
        {offsetof(shm::ArenaHeader, log_used), offsetof(shm::ArenaHeader, log_used) + 16},
        {offsetof(shm::ArenaHeader, free_head), offsetof(shm::ArenaHeader, dir_count)},
        {offsetof(shm::ArenaHeader, dir_count),
         offsetof(shm::ArenaHeader, dir) + 3 * sizeof(shm::DirEntry)},
        {log_off, log_off + 512},
        {heap, top}};
    for (int i = 0; i < 3; ++i) {
      const std::uint64_t root = h->dir[i].root;
      ranges.push_back({root, root + 64});
      for (std::uint64_t f = 2; f < 8; ++f)  // the blocks the root's offset fields point to
        if (const std::uint64_t t = raw.read(root + 8 * f); t >= heap && t < top)
          ranges.push_back({t, std::min(top, t + 256)});
    }
    std::mt19937_64 rng(seed);
    const int writes = 1 + static_cast<int>(rng() % 6);
    for (int w = 0; w < writes; ++w) {
      const auto& [b, e] = ranges[rng() % ranges.size()];
      const std::uint64_t off = (b + rng() % std::max<std::uint64_t>(1, e - b)) & ~std::uint64_t{7};
      std::uint64_t v = rng();
      switch (rng() % 7) {
        case 0:
          v = 0;
          break;
        case 1:
          v %= 64;
          break;  // a plausible small index or length
        case 2:
          v = ~std::uint64_t{0} - (v % 4);
          break;  // -1 and friends
        case 3:
          v &= 0xffffffff;
          break;
        case 4:
          v = heap + (v % (top - heap + 4096)) / 16 * 16 + 8;
          break;  // a plausible block
        case 5:
          v = v % (raw.file_size * 2);
          break;  // near the arena's size
        default:
          break;
      }
      raw.write(off, v);
    }
    if (rng() % 4 == 0) {  // a forged undo log: the next writer "recovers" from it
      raw.write(log_off, rng() % (top + 4096));
      raw.write(log_off + 8, rng() % 64);
      raw.write(offsetof(shm::ArenaHeader, log_used), 16 + 8 * (rng() % 10));
    }

    // The victim opened the manager before the scribbling (inherited handles), so open-time
    // validation cannot protect it; it also opens it afresh.
    const int rc = mpp_test::run_bounded(20s, [&]() -> int {
      int errors = 0;
      auto count = [&](auto&& op) {
        try {
          op();
        } catch (const mpp::Error&) {
          ++errors;
        }
      };
      try {
        for (int i = 0; i < 3; ++i) {
          count([&] { d.set(fmt::format("new{}.{}", i, seed), i); });
          count([&] { (void)d.get("key4"); });
          count([&] { (void)d.pop("key7", -1); });
          count([&] { (void)d.popitem(); });
          count([&] { (void)d.setdefault("key10", 5); });
          count([&] { d.update_with("key11", [](int x) { return x + 1; }); });
          count([&] { (void)d.items(); });
          count([&] { l.append(std::string(static_cast<std::size_t>(i * 90), 'n')); });
          count([&] { l.insert(1, "ins"); });
          count([&] { (void)l.pop(); });
          count([&] { (void)l.get(2); });
          count([&] { l.set(0, std::string(100, 's')); });
          count([&] { (void)l.to_vector(); });
          count([&] { l.sort(); });
          count([&] { l.erase(0, 2); });
          count([&] { ns.set("x", i); });
          count([&] { (void)ns.get<int>("x"); });
          count([&] { (void)m.list<int>(fmt::format("fresh{}", i)); });
        }
        count([&] { d.clear(); });
        count([&] { l.clear(); });
        count([&] {
          auto m2 = mpp::Manager::open(name, o);
          auto d2 = m2.dict<std::string, int>("d");
          d2.set("reopened", 1);
          (void)d2.keys();
        });
      } catch (const std::exception& e) {
        fmt::print(stderr, "victim: foreign exception {}\n", e.what());
        return kForeign;
      }
      return errors > 0 ? 1 : kOk;  // 1: some operation raised an mpp::Error
    });
    INFO("victim exit status " << rc << " (0/1: survived, negative: killed by that signal)");
    CHECK((rc == kOk || rc == 1));
    errors_seen += rc == 1;
  }
  CHECK(errors_seen > rounds / 4);  // the scribbles did damage that was detected
}

TEST_CASE(
    "Manager: containers of containers: pop/popitem/setdefault and locked reads do not deadlock",
    "[manager][kill]") {
  const auto name = unique_name("mgr.nested");
  auto m = mpp::Manager::create(name, small());
  auto outer = m.list<mpp::SharedList<int>>("outer");
  auto d = m.dict<std::string, mpp::SharedList<int>>("d");
  for (int i = 0; i < 4; ++i) {
    auto in = m.list<int>(fmt::format("in{}", i));
    in.append(i);
    outer.append(in);
    d.set(fmt::format("k{}", i), in);
  }
  auto first = [](const mpp::SharedList<int>& l) { return l.get(0); };
  // Each operation in a child of its own, which must finish: a deadlock is killed and fails.
  CHECK(mpp_test::run_bounded(20s, [&] { return first(outer.pop()) == 3 ? 0 : 2; }) == 0);
  CHECK(mpp_test::run_bounded(20s, [&] { return first(outer.pop(0)) == 0 ? 0 : 2; }) == 0);
  CHECK(mpp_test::run_bounded(20s, [&] {
          auto [k, v] = d.popitem();
          return k == "k3" && first(v) == 3 ? 0 : 2;
        }) == 0);
  CHECK(mpp_test::run_bounded(20s, [&] { return first(d.pop("k1")) == 1 ? 0 : 2; }) == 0);
  CHECK(mpp_test::run_bounded(
            20s, [&] { return first(d.setdefault("k2", m.list<int>("in0"))) == 2 ? 0 : 2; }) == 0);
  // Other operations that decode under the lock: update_with, sort, and a read that falls back
  // to the lock because a writer died with the dict's sequence word odd.
  CHECK(mpp_test::run_bounded(20s, [&] {
          auto v = d.update_with(
              "k0", [](mpp::SharedList<int> l) { return l; }, m.list<int>("in1"));
          return first(v) == 0 ? 0 : 2;
        }) == 0);
  CHECK(mpp_test::run_bounded(20s, [&] {
          outer.sort([](const auto& a, const auto& b) { return a.name() > b.name(); });
          return first(outer.get(0)) == 2 ? 0 : 2;
        }) == 0);
  REQUIRE(wait_child(fork_child([&] {
            mpp_test::crash_points::arm("manager.dict.set.after_entry", 1);
            d.set("dies", m.list<int>("in3"));
            return 0;
          })) == -SIGKILL);
  CHECK(mpp_test::run_bounded(20s, [&] { return first(d.at("k0")) == 0 ? 0 : 2; }) == 0);
  CHECK(d.size() == 2);
  CHECK(outer.size() == 2);
  CHECK_FALSE(d.contains("dies"));
}

TEST_CASE("Manager: a manager truncated under a live user reports that it shrank",
          "[manager][kill]") {
  for (const bool to_zero : {true, false}) {
    INFO((to_zero ? "truncated to 0 bytes" : "truncated inside the heap"));
    const auto name = unique_name("mgr.trunc");
    auto m = mpp::Manager::create(name, small(4u << 20));
    auto d = m.dict<int, std::string>("d");
    auto l = m.list<std::string>("l");
    for (int i = 0; i < 300; ++i) {
      d.set(i, std::string(100, 'v'));
      l.append(std::string(100, 'l'));
    }
    std::uint64_t cut = 0;
    if (!to_zero) {
      RawArena raw(name);
      cut = raw.payload_offset() + raw.header()->heap_start + 8192;  // header and log intact
    }
    Go ready, go;
    const pid_t victim = fork_child([&]() -> int {
      if (d.at(7).size() != 100 || l.size() != 300) return 2;  // in use before the cut
      ready.post();
      if (!go.wait()) return kNoGo;
      int shrank = 0;
      auto expect = [&](auto&& op) {
        try {
          op();
        } catch (const mpp::CorruptedError& e) {
          const std::string_view w = e.what();
          if (w.find("shrank") != w.npos && w.find(name) != w.npos)
            ++shrank;
          else
            fmt::print(stderr, "victim: {}\n", w);
        }
      };
      expect([&] { d.set(1000, "new"); });
      expect([&] { (void)d.get(250); });
      expect([&] { l.append("more"); });
      expect([&] { (void)l.to_vector(); });
      return shrank == 4 ? kOk : kWrongError;
    });
    REQUIRE(ready.wait());
    {  // The hostile process: cut the object under everyone's feet.
      const pid_t cutter = fork_child([&] {
        const int fd = ::shm_open(("/" + name).c_str(), O_RDWR, 0);
        return fd >= 0 && ::ftruncate(fd, static_cast<off_t>(cut)) == 0 ? 0 : 1;
      });
      REQUIRE(wait_child(cutter) == 0);
    }
    go.post();
    CHECK(wait_child(victim) == kOk);
  }
}
#endif  // MPP_OS_POSIX

#if defined(MPP_OS_POSIX)
// ---- crash points of dict/list mutations, checked against a model
// --------------------------------

using mpp::detail::Segment;

namespace {
// A fixed script of Manager mutations, applied both to shared containers and to a model.
struct MgrOp {
  enum Kind { set, pop, append, insert, pop_at, set_at } kind;
  std::string key;
  int value;
  std::int64_t index;
};
std::vector<MgrOp> manager_script() {
  std::vector<MgrOp> ops{
      {MgrOp::set, "a", 1, 0},   {MgrOp::append, "", 1, 0}, {MgrOp::set, "b", 2, 0},
      {MgrOp::append, "", 2, 0}, {MgrOp::set, "a", 3, 0},   {MgrOp::insert, "", 0, 0},
      {MgrOp::pop, "b", 0, 0},   {MgrOp::pop_at, "", 0, 0}, {MgrOp::set_at, "", 9, 1}};
  for (int j = 0; j < 40; ++j) {  // enough to make both containers grow
    ops.push_back({MgrOp::set, fmt::format("k{}", j), j, 0});
    ops.push_back({MgrOp::append, "", 100 + j, 0});
  }
  for (int j = 0; j < 6; ++j) {
    ops.push_back({MgrOp::pop, fmt::format("k{}", j * 3), 0, 0});
    ops.push_back({MgrOp::pop_at, "", 0, 2});
    ops.push_back({MgrOp::insert, "", -j, 1});
  }
  return ops;
}
template <class D, class L>
void apply_op(const MgrOp& op, D& d, L& l) {
  switch (op.kind) {
    case MgrOp::set:
      d.set(op.key, op.value);
      break;
    case MgrOp::pop:
      d.pop(op.key);
      break;
    case MgrOp::append:
      l.append(op.value);
      break;
    case MgrOp::insert:
      l.insert(op.index, op.value);
      break;
    case MgrOp::pop_at:
      l.pop(op.index);
      break;
    case MgrOp::set_at:
      l.set(op.index, op.value);
      break;
  }
}
struct ModelDict {
  std::map<std::string, int> m;
  void set(const std::string& k, int v) { m[k] = v; }
  void pop(const std::string& k) { m.erase(k); }
};
struct ModelList {
  std::vector<int> v;
  void append(int x) { v.push_back(x); }
  void insert(std::int64_t i, int x) { v.insert(v.begin() + i, x); }
  void pop(std::int64_t i) { v.erase(v.begin() + i); }
  void set(std::int64_t i, int x) { v[static_cast<std::size_t>(i)] = x; }
};
std::pair<std::map<std::string, int>, std::vector<int>> model_after(std::size_t n) {
  ModelDict d;
  ModelList l;
  const auto ops = manager_script();
  for (std::size_t i = 0; i < n && i < ops.size(); ++i) apply_op(ops[i], d, l);
  return {d.m, l.v};
}
}  // namespace

TEST_CASE("Manager: crash points in dict/list mutations: each one is all or nothing",
          "[manager][kill]") {
  struct MLedger {
    std::atomic<std::uint64_t> done;
  };
  auto lseg = Segment::create_anonymous(kt::spec_of(sizeof(MLedger)));
  auto* L = reinterpret_cast<MLedger*>(lseg.payload());
  const auto ops = manager_script();
  mpp::ManagerOptions mo;
  mo.capacity = std::uint64_t{1} << 24;
  std::optional<mpp::Manager> m;
  auto reset = [&] {
    m.emplace(mo);
    L->done.store(0);
  };
  auto work = [&] {
    auto d = m->dict<std::string, int>("d");
    auto l = m->list<int>("l");
    for (const auto& op : ops) {
      apply_op(op, d, l);
      L->done.fetch_add(1);
    }
    return 0;
  };
  reset();
  const auto points = mpp_test::crash_points::discover(work);
  fmt::print("manager crash points: {}\n", fmt::join(points, ", "));
  CHECK(points.size() >= 4);
  for (const auto& p : points) {
    for (long hit : {1L, 2L, 5L, 30L}) {
      reset();
      const bool died = mpp_test::crash_points::run_until(p, hit, work);
      if (!died) continue;  // this point is passed fewer times
      auto d = m->dict<std::string, int>("d");
      auto l = m->list<int>("l");
      std::map<std::string, int> dm;
      for (auto& [k, v] : d.items()) dm[k] = v;
      const std::vector<int> lv = l.to_vector();
      const auto n = L->done.load();
      const auto before = model_after(n), after = model_after(n + 1);
      INFO("killed at " << p << " #" << hit << " during op " << n);
      CHECK(((dm == before.first && lv == before.second) ||
             (dm == after.first && lv == after.second)));
      // The manager keeps working for a new process.
      const pid_t next = mpp_test::fork_child([&] {
        auto d2 = m->dict<std::string, int>("d");
        auto l2 = m->list<int>("l");
        d2.set("after", 1);
        l2.append(777);
        return d2.get("after", 0) == 1 && l2.to_vector().back() == 777 ? 0 : 1;
      });
      CHECK(mpp_test::wait_child(next) == 0);
    }
  }
  m.reset();
}
#endif  // MPP_OS_POSIX

// ---- Python's _TestContainers (Lib/test/_test_multiprocessing.py), across processes ----

namespace {

/// The start methods a test runs its children with: fork (POSIX) and spawn.
std::vector<mpp::StartMethod> start_methods() {
#if defined(MPP_OS_POSIX)
  return {mpp::StartMethod::fork, mpp::StartMethod::spawn};
#else
  return {mpp::StartMethod::spawn};
#endif
}

/// Runs fn(args...) in a child started with `sm` and checks that it succeeded.
template <class F, class... A>
void run_child(mpp::StartMethod sm, F fn, A... args) {
  mpp::Process p({.start_method = sm}, fn, args...);
  p.start();
  REQUIRE(p.join(120s));
  REQUIRE(p.exitcode() == 0);
}

/// A check inside a child: a failure throws, so the child exits non-zero.
void expect(bool ok, const char* what) {
  if (!ok) throw std::runtime_error(fmt::format("expectation failed: {}", what));
}

using Item = std::variant<int, std::string, mpp::SharedList<int>>;
using Dict = mpp::SharedDict<std::string, int>;

// test_namespace: attributes set with string literals, one deleted, one hidden from the repr.
void child_namespace(mpp::Namespace n) {
  n.set("name", "Bob");
  n.set("job", "Builder");
  n.set("_hidden", "hidden");
  expect(n.get<std::string>("name") == "Bob" && n.get<std::string>("job") == "Builder", "get");
  expect(n.erase("job"), "del n.job");
}

// A list of variants, one of them a list: read and changed through the variant. The list comes
// by name: with mingw, a function whose parameter type names std::variant<..., SharedList<int>>
// is not found by the spawn function registry (its std::type_index does not order consistently).
void child_variants(mpp::Manager m, std::string name) {
  auto l = m.list<Item>(name);
  expect(std::get<int>(l.get(0)) == 1, "int item");
  expect(std::get<std::string>(l.get(1)) == "two", "string item");
  auto inner = std::get<mpp::SharedList<int>>(l.get(2));
  inner.append(3);
  l.append(Item{std::string("from the child")});
}

// test_list / test_list_proxy_in_list: chains, negative indices, +=, *=.
void child_lists(mpp::SharedList<mpp::SharedList<int>> outer, mpp::SharedList<int> b) {
  outer[0][-1] = 55;
  expect(outer[1]->pop() == 2, "outer[1].pop()");
  b *= 2;
  b += std::vector<int>{5, 6};
  b += {7};
}

// test_dict_proxy_nested: writes through d[k][k2] and l[i][k].
void child_nested_dicts(mpp::SharedDict<std::string, Dict> d, mpp::SharedList<Dict> l) {
  d["supplies"]["blankets"] = 5;
  d["supplies"]["water"] = 7;
  expect(static_cast<int>(d["supplies"]["water"]) == 7, "d['supplies']['water']");
  l[0]["marmots"] = 1;
  d["supplies"]["feed"] += 1;
}

// test_nested_queue: a queue kept in a list and in a dict.
void child_nested_queue(mpp::SharedList<mpp::Queue<int>> a,
                        mpp::SharedDict<int, mpp::Queue<int>> b) {
  a[0]->put(123);
  b[0]->put(456);
}

// test_list_iter / test_dict_iter: a live iteration in the child sees the parent's list.
void child_iterate(mpp::SharedList<int> a, mpp::SharedDict<int, std::string> d,
                   mpp::SharedList<int> out) {
  std::vector<int> seen;
  for (int x : a) seen.push_back(x);
  expect(seen == std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, "list iteration");
  std::vector<int> keys;
  for (const auto& [k, v] : d) {
    expect(v == std::string(1, static_cast<char>(k)), "dict item");
    keys.push_back(k);
  }
  expect(keys == std::vector<int>{65, 66, 67, 68, 69}, "dict iteration");
  auto it = d.begin();
  d.clear();
  try {
    (void)*it;
    return;  // no error: out stays empty and the parent fails
  } catch (const mpp::RuntimeError&) {
    out.append(1);
  }
}

// test_dict: the child fills the dict.
void child_fill_dict(mpp::SharedDict<int, std::string> d) {
  for (int i = 65; i < 70; ++i) d[i] = std::string(1, static_cast<char>(i));
}

MPP_REGISTER(child_fill_dict);
MPP_REGISTER(child_namespace);
MPP_REGISTER(child_variants);
MPP_REGISTER(child_lists);
MPP_REGISTER(child_nested_dicts);
MPP_REGISTER(child_nested_queue);
MPP_REGISTER(child_iterate);

}  // namespace

TEST_CASE("Manager: Python-shaped calls compile: string literals, braced lists, variants",
          "[manager][spawn]") {
  for (auto sm : start_methods()) {
    CAPTURE(mpp::start_method_name(sm));
    mpp::Manager m(small());
    auto ns = m.Namespace();
    run_child(sm, child_namespace, ns);
    CHECK(ns.get<std::string>("name") == "Bob");
    CHECK(ns.get("job", "nobody") == "nobody");
    CHECK(ns.names() == std::vector<std::string>{"name", "_hidden"});
    CHECK(fmt::format("{}", ns) == "Namespace(name='Bob')");  // Python's test_namespace

    auto arr = m.Array<int>({0, 1});
    CHECK(arr.size() == 2);
    CHECK(arr[1] == 1);

    auto inner = m.list<int>({1, 2});
    auto l = m.list<Item>();
    l.append(1);
    l.append(std::string("two"));
    l.append(inner);
    run_child(sm, child_variants, m, l.name());
    CHECK(inner.to_vector() == std::vector<int>{1, 2, 3});
    REQUIRE(l.size() == 4);
    CHECK(std::get<std::string>(l.get(-1)) == "from the child");
    CHECK(std::get<mpp::SharedList<int>>(l.get(2)).name() == inner.name());
  }
}

TEST_CASE("Manager: a dict filled by a child reads back in the parent (test_dict)",
          "[manager][spawn]") {
  for (auto sm : start_methods()) {
    CAPTURE(mpp::start_method_name(sm));
    mpp::Manager m(small());
    auto d = m.dict<int, std::string>();
    run_child(sm, child_fill_dict, d);
    CHECK(d.to_map() ==
          std::map<int, std::string>{{65, "A"}, {66, "B"}, {67, "C"}, {68, "D"}, {69, "E"}});
    CHECK(d.keys() == std::vector<int>{65, 66, 67, 68, 69});
    CHECK(d.values() == std::vector<std::string>{"A", "B", "C", "D", "E"});
    CHECK(d.items().back() == std::pair<int, std::string>{69, "E"});
    CHECK(
        fmt::format("{}", d) ==
        fmt::format("<SharedDict '{}' {{65: 'A', 66: 'B', 67: 'C', 68: 'D', 69: 'E'}}>", d.name()));
  }
}

TEST_CASE("Manager: nested lists read and write through chains, += and * as in Python",
          "[manager][spawn]") {
  for (auto sm : start_methods()) {
    CAPTURE(mpp::start_method_name(sm));
    mpp::Manager m(small());
    // test_list
    auto a = m.list<int>({0, 1, 2, 3, 4, 5, 6, 7, 8, 9});
    CHECK(a.slice(0, std::numeric_limits<std::int64_t>::max()) == a.to_vector());
    auto b = m.list<int>();
    b.extend(std::vector<int>{0, 1, 2, 3, 4});
    CHECK(b[2].value() == 2);
    CHECK(b.slice(2, 10) == std::vector<int>{2, 3, 4});
    CHECK(b * 2 == std::vector<int>{0, 1, 2, 3, 4, 0, 1, 2, 3, 4});
    CHECK(b + std::vector<int>{5, 6} == std::vector<int>{0, 1, 2, 3, 4, 5, 6});
    auto e = m.list<mpp::SharedList<int>>({a, b});
    a.append(10);
    CHECK(e[0]->to_vector() == std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10});
    // test_list_proxy_in_list
    auto outer = m.list<mpp::SharedList<int>>(
        {m.list<int>({0, 1, 2}), m.list<int>({0, 1, 2}), m.list<int>({0, 1, 2})});
    run_child(sm, child_lists, outer, b);
    CHECK(outer[0]->to_vector() == std::vector<int>{0, 1, 55});
    CHECK(outer[1]->size() == 2);
    CHECK(outer[2]->to_vector() == std::vector<int>{0, 1, 2});
    CHECK(static_cast<int>(outer[0][-1]) == 55);
    CHECK_THROWS_AS(outer[0][3] = 1, mpp::IndexError);
    CHECK(b.to_vector() == std::vector<int>{0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6, 7});
    b *= 0;
    CHECK(b.empty());
    auto self = m.list<mpp::SharedList<int>>();  // a list of lists formats its items
    auto s2 = m.list<int>();
    self.append(s2);
    CHECK(fmt::format("{}", self) ==
          fmt::format("<SharedList '{}' [<SharedList '{}' []>]>", self.name(), s2.name()));
  }
}

TEST_CASE("Manager: nested dicts read and write through chains (test_dict_proxy_nested)",
          "[manager][spawn]") {
  for (auto sm : start_methods()) {
    CAPTURE(mpp::start_method_name(sm));
    mpp::Manager m(small());
    auto pets = m.dict<std::string, int>({{"ferrets", 2}, {"hamsters", 4}});
    auto supplies = m.dict<std::string, int>({{"water", 10}, {"feed", 3}});
    auto d = m.dict<std::string, Dict>({{"pets", pets}, {"supplies", supplies}});
    CHECK(static_cast<int>(d["supplies"]["water"]) == 10);
    auto l = m.list<Dict>({pets, supplies});
    run_child(sm, child_nested_dicts, d, l);
    CHECK(supplies.at("blankets") == 5);
    CHECK(supplies.at("water") == 7);
    CHECK(supplies.at("feed") == 4);
    CHECK(pets.at("marmots") == 1);
    CHECK(static_cast<int>(l[0]["marmots"]) == 1);
    CHECK_THROWS_AS(static_cast<int>(d["pets"]["dogs"]), mpp::KeyError);
    CHECK_THROWS_AS(d["nothing"]["water"] = 1, mpp::KeyError);
    d.clear();
    CHECK(d.size() == 0);
    CHECK(supplies.at("water") == 7);  // the inner dicts live on
    CHECK(pets.at("hamsters") == 4);
    CHECK(fmt::format("{}", pets) ==
          fmt::format("<SharedDict '{}' {{'ferrets': 2, 'hamsters': 4, 'marmots': 1}}>",
                      pets.name()));
    CHECK(fmt::format("{}", m.list<int>({1, 2})).ends_with(" [1, 2]>"));
  }
}

TEST_CASE("Manager: a queue kept in a list and a dict (test_nested_queue)", "[manager][spawn]") {
  for (auto sm : start_methods()) {
    CAPTURE(mpp::start_method_name(sm));
    mpp::Manager m(small());
    mpp::Queue<int> q1, q2;  // kept alive by the test while the containers refer to them
    auto a = m.list<mpp::Queue<int>>();
    a.append(q1);
    auto b = m.dict<int, mpp::Queue<int>>();
    b[0] = q2;
    run_child(sm, child_nested_queue, a, b);
    CHECK(a[0]->get(true, 5s) == 123);
    CHECK(b[0]->get(true, 5s) == 456);
  }
}

TEST_CASE("Manager: a temporary handle stored in a container: the error says how to keep it",
          "[manager]") {
  mpp::Manager m(small());
  auto a = m.list<mpp::Queue<int>>();
  a.append(m.Queue<int>());  // the queue's creating handle dies at the end of this statement
  try {
    (void)a.get(0);
    FAIL("the queue should be gone");
  } catch (const mpp::NotFoundError& e) {
    const std::string what = e.what();
    CHECK(what.find(fmt::format("item 0 of list '{}'", a.name())) != std::string::npos);
    CHECK(what.find("handle that created it was destroyed") != std::string::npos);
    CHECK(what.find("persistent") != std::string::npos);
  }
}

TEST_CASE("Manager: live iteration over a list and a dict; a dict resized meanwhile throws",
          "[manager][spawn]") {
  for (auto sm : start_methods()) {
    CAPTURE(mpp::start_method_name(sm));
    mpp::Manager m(small());
    auto a = m.list<int>({0, 1, 2, 3, 4, 5, 6, 7, 8, 9});
    auto d = m.dict<int, std::string>();
    for (int i = 65; i < 70; ++i) d[i] = std::string(1, static_cast<char>(i));
    auto out = m.list<int>();
    run_child(sm, child_iterate, a, d, out);
    CHECK(out.to_vector() == std::vector<int>{1});
    // test_list_iter: a change made during the iteration is seen; an exhausted one stays so.
    auto it = a.begin();
    a[0] = 100;
    CHECK(*it == 100);
    std::vector<int> seen;
    for (; it != a.end(); ++it) seen.push_back(*it);
    CHECK(seen.size() == 10);
    CHECK(it == a.end());
    // Values changed during a dict iteration are fine (Python too); a resize is not.
    d[1] = "x";
    int n = 0;
    for (const auto& kv : d) {
      d[kv.first] = kv.second + "!";
      ++n;
    }
    CHECK(n == 1);
    d[2] = "y";
    auto di = d.begin();
    d[3] = "z";
    CHECK_THROWS_AS(++di, mpp::RuntimeError);
  }
}

// Named namespace, not anonymous: with mingw the spawn function registry does not find a
// function whose parameter type is local to the file (its std::type_index orders inconsistently).
namespace manager_test {

/// A user type kept in a manager (Python: BaseManager.register("Account", Account)).
struct Account {
  long balance = 0;
  int deposits = 0;
  std::vector<std::string> log;
  long deposit(long amount) {
    balance += amount;
    ++deposits;
    return balance;
  }
  void note(const std::string& s) { log.push_back(s); }
  long get_balance() const { return balance; }
  template <class A>
  void serialize(A& a) {
    a(balance, deposits, log);
  }
};

/// Deposits 1, `n` times, into the shared account.
void deposit_many(mpp::SharedObject<Account> acct, int n) {
  for (int i = 0; i < n; ++i) acct.call(&Account::deposit, 1L);
  acct.call(&Account::note, std::string("done"));
}
MPP_REGISTER(deposit_many);

}  // namespace manager_test
using manager_test::Account;
using manager_test::deposit_many;

TEST_CASE("Manager: a user type's methods run atomically; 4 processes deposit the exact total",
          "[manager][spawn]") {
  for (auto sm : start_methods()) {
    CAPTURE(mpp::start_method_name(sm));
    mpp::Manager m(small());
    auto acct = m.object<Account>("acct", Account{100, 0, {}});
    CHECK(acct.call(&Account::deposit, 10L) == 110);
    CHECK(acct.call(&Account::get_balance) == 110);
    CHECK(acct.call([](Account& a, int k) { return a.balance * k; }, 2) == 220);
    // A method that throws changes nothing.
    CHECK_THROWS_AS(acct.call([](Account& a) {
      a.balance = -1;
      throw std::runtime_error("refused");
    }),
                    std::runtime_error);
    CHECK(acct.get().balance == 110);
    CHECK(m.object<Account>("acct").get().balance == 110);  // opens, does not reset
    CHECK_THROWS_AS(m.list<int>("acct"), mpp::TypeMismatchError);
    CHECK_THROWS_AS(m.object<int>("acct"), mpp::TypeMismatchError);
    constexpr int kProcs = 4, kN = 300;
    std::vector<mpp::Process> ps;
    for (int i = 0; i < kProcs; ++i)
      ps.push_back(mpp::Process({.start_method = sm}, deposit_many, acct, kN));
    for (auto& p : ps) p.start();
    for (auto& p : ps) {
      REQUIRE(p.join(120s));
      CHECK(p.exitcode() == 0);
    }
    const Account a = acct.get();
    CHECK(a.balance == 110 + kProcs * kN);
    CHECK(a.deposits == 1 + kProcs * kN);
    CHECK(a.log == std::vector<std::string>(kProcs, "done"));
    acct.set(Account{});
    CHECK(acct.get().balance == 0);
    CHECK(fmt::format("{}", acct).find("SharedObject 'acct'") != std::string::npos);
  }
}

#if defined(MPP_OS_POSIX)
TEST_CASE("Manager: a user object's method killed at random moments leaves it before or after",
          "[manager][kill]") {
  mpp::Manager m(small());
  auto acct = m.object<Account>("acct");
  std::mt19937 rng(11);
  for (int round = 0; round < 20; ++round) {
    const pid_t w = fork_child([&] {
      for (;;) {
        acct.call(&Account::deposit, 3L);
        acct.call(&Account::note, std::string(static_cast<std::size_t>(rng() % 64), 'x'));
      }
      return 0;
    });
    std::this_thread::sleep_for(std::chrono::microseconds(500 + rng() % 5000));
    ::kill(w, SIGKILL);
    CHECK(wait_child(w) == -SIGKILL);
    const Account a = acct.get();  // the next reader or writer repairs a half-done call
    REQUIRE(a.balance == 3L * a.deposits);
    // Each killed child may leave one deposit without its note, never a half of either.
    REQUIRE(a.log.size() <= static_cast<std::size_t>(a.deposits));
    REQUIRE(a.log.size() + static_cast<std::size_t>(round) + 1 >=
            static_cast<std::size_t>(a.deposits));
    for (const auto& s : a.log) REQUIRE(s.find_first_not_of('x') == std::string::npos);
  }
  acct.call(&Account::deposit, 3L);
  const Account a = acct.get();
  CHECK(a.balance == 3L * a.deposits);
}
#endif  // MPP_OS_POSIX
