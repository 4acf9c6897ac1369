// mpp handles cross processes anywhere Python passes a queue, lock, value or proxy: as arguments
// of Process, Pool and ProcessPoolExecutor calls and initializers, inside tuples, pairs, vectors,
// optionals and user structs, and as items of queues, pipes and Manager containers, under fork,
// spawn and forkserver. Each receiving process opens the same object by name.
#include <chrono>
#include <cstdint>
#include <mpp/array.hpp>
#include <mpp/futures.hpp>
#include <mpp/manager.hpp>
#include <mpp/pipe.hpp>
#include <mpp/pool.hpp>
#include <mpp/process.hpp>
#include <mpp/queue.hpp>
#include <mpp/shared_memory.hpp>
#include <mpp/sync.hpp>
#include <mpp/value.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "helpers.hpp"

using namespace std::chrono_literals;
using mpp::StartMethod;

namespace {

/// A user type with serialize() whose fields include handles.
struct Job {
  int id = 0;
  std::string label;
  mpp::Event done;
  std::optional<mpp::Barrier> meet;  // no default constructor: optional inside a struct
  template <class A>
  void serialize(A& ar) {
    ar(id, label, done, meet);
  }
};

using Dict = mpp::SharedDict<std::string, int>;

/// Every kind of handle, in one value.
using Everything =
    std::tuple<mpp::Queue<int>, mpp::SimpleQueue<int>, mpp::JoinableQueue<int>, mpp::Value<int>,
               mpp::Array<int>, mpp::Lock, mpp::RLock, mpp::Semaphore, mpp::BoundedSemaphore,
               mpp::Condition, mpp::Event, mpp::Barrier, mpp::SharedMemory, mpp::ShareableList,
               mpp::Connection<int>, Dict, mpp::SharedList<int>, mpp::Namespace>;

// ---- compile time: Encodable<T> holds exactly for what encode accepts --------------------------

template <class T>
constexpr bool round_trips() {
  // Instantiates encode and decode (a failure is a build error, not a false here).
  (void)&mpp::encode<T>;
  (void)&mpp::decode<T>;
  return mpp::Encodable<T>;
}
static_assert(round_trips<mpp::Queue<int>>() && round_trips<mpp::SimpleQueue<int>>() &&
              round_trips<mpp::JoinableQueue<int>>() && round_trips<mpp::Value<int>>() &&
              round_trips<mpp::Array<int>>() && round_trips<mpp::Lock>() &&
              round_trips<mpp::RLock>() && round_trips<mpp::Semaphore>() &&
              round_trips<mpp::BoundedSemaphore>() && round_trips<mpp::Condition>() &&
              round_trips<mpp::Event>() && round_trips<mpp::Barrier>() &&
              round_trips<mpp::SharedMemory>() && round_trips<mpp::ShareableList>() &&
              round_trips<mpp::Connection<int>>() && round_trips<Dict>() &&
              round_trips<mpp::SharedList<int>>() && round_trips<mpp::Namespace>() &&
              round_trips<mpp::Manager>());
static_assert(round_trips<std::vector<mpp::Queue<int>>>());
static_assert(round_trips<std::vector<std::tuple<std::string, Dict>>>());
static_assert(round_trips<std::tuple<std::string, Dict>>());
static_assert(round_trips<std::pair<mpp::Lock, mpp::Array<double>>>());
static_assert(round_trips<std::optional<mpp::Lock>>());
static_assert(round_trips<std::optional<mpp::Barrier>>());
static_assert(round_trips<std::map<std::string, mpp::Queue<int>>>());
static_assert(round_trips<std::variant<int, mpp::Event, std::string>>());
static_assert(round_trips<std::array<mpp::Semaphore, 2>>());
static_assert(round_trips<std::deque<std::optional<mpp::SharedList<int>>>>());
static_assert(round_trips<Job>());
static_assert(round_trips<Everything>());
static_assert(round_trips<std::vector<Everything>>());
static_assert(round_trips<mpp::Queue<std::vector<mpp::Queue<int>>>>());
// A struct whose handle member has no default constructor cannot be default-constructed to be
// loaded into: not Encodable (hold it in std::optional, as Job does).
struct HoldsBarrier {
  mpp::Barrier b;
  template <class A>
  void serialize(A& ar) {
    ar(b);
  }
};
static_assert(!mpp::Encodable<HoldsBarrier>);
static_assert(!mpp::Encodable<std::vector<mpp::Queue<int>*>>);
static_assert(!mpp::Encodable<std::tuple<mpp::Lock, int*>>);

// ---- what the children run --------------------------------------------------------------------

[[noreturn]] void fail_child(const char* what) { throw std::runtime_error(what); }
void expect(bool ok, const char* what) {
  if (!ok) fail_child(what);
}

/// Puts its index on each queue.
void fill_queues(std::vector<mpp::Queue<int>> qs) {
  for (std::size_t i = 0; i < qs.size(); ++i) qs[i].put(static_cast<int>(i) + 100);
}
/// Exits 0 if `lock` is the parent's (held there, so not free here); 1 if it is free.
void probe_lock(std::optional<mpp::Lock> lock, std::optional<mpp::Lock> none) {
  expect(lock.has_value() && !none.has_value(), "the optionals did not arrive as sent");
  expect(!lock->acquire(false), "the lock is free here: not the parent's lock");
}
/// Waits for the other party of the job's barrier, then sets its event.
void run_job(Job job) {
  expect(job.id == 7 && job.label == "seven", "the job's fields did not arrive");
  expect(job.meet.has_value(), "the job's barrier did not arrive");
  job.meet->wait(30s);
  job.done.set();
}
/// Uses every handle of `all[0]` so the parent can see that each is the object it sent.
void use_everything(std::vector<Everything> all) {
  expect(all.size() == 1, "one value was sent");
  auto& [q, sq, jq, value, array, lock, rlock, sem, bsem, cond, event, barrier, shm, slist, conn,
         dict, list, ns] = all[0];
  q.put(1);
  sq.put(2);
  jq.put(3);
  value.set(4);
  array[0] = 5;
  expect(!lock.acquire(false), "the parent holds the lock");
  expect(!rlock.acquire(false), "the parent holds the rlock");
  expect(!cond.acquire(false), "the parent holds the condition's lock");
  sem.release();
  bsem.release();
  shm.buf()[0] = std::byte{6};
  slist.set(0, std::int64_t{7});
  conn.send(8);
  dict.set("nine", 9);
  list.append(10);
  ns.set("eleven", 11);
  barrier.wait(30s);  // the parent waits on it too
  event.set();
}
/// Takes a Value off `q` and stores `x` in it.
void take_value(mpp::Queue<mpp::Value<int>> q, int x) { q.get(true, 30s).set(x); }
/// Receives a Queue from `c` and puts `x` on it.
void take_queue_from_pipe(mpp::Connection<mpp::Queue<int>> c, int x) { c.recv(30s).put(x); }
/// Puts `x` on the first Queue of the manager list `l`.
void take_queue_from_list(mpp::SharedList<mpp::Queue<int>> l, int x) { l.get(0).put(x); }

// Pool and executor tasks.
int merge(std::string key, Dict d) {
  d.set(key, static_cast<int>(key.size()));
  return static_cast<int>(key.size());
}
int store(std::string path, mpp::Value<int> v) {
  v.set(static_cast<int>(path.size()));
  return v.value();
}
void count_start(mpp::Value<int> started) { (void)started.fetch_add(1); }
int read_started(int) { return 0; }
int put_n(mpp::Queue<int> q, int n) {
  for (int i = 0; i < n; ++i) q.put(i);
  return n;
}

}  // namespace

MPP_REGISTER(fill_queues);
MPP_REGISTER(probe_lock);
MPP_REGISTER(run_job);
MPP_REGISTER(use_everything);
MPP_REGISTER(take_value);
MPP_REGISTER(take_queue_from_pipe);
MPP_REGISTER(take_queue_from_list);
MPP_REGISTER(merge);
MPP_REGISTER(store);
MPP_REGISTER(count_start);
MPP_REGISTER(read_started);
MPP_REGISTER(put_n);

namespace {

/// The start methods this platform has.
std::vector<StartMethod> methods() {
  if constexpr (mpp::detail::os::kCanFork)
    return {StartMethod::fork, StartMethod::spawn, StartMethod::forkserver};
  else
    return {StartMethod::spawn};
}

/// What run_with() returns for a child that was still running at its limit (a hang).
constexpr int kHung = -1000;

/// Starts f(args...) with `m`, runs `meanwhile` in the parent, joins (bounded) and returns the
/// exit code.
template <class F, class G, class... A>
int run_with(StartMethod m, F f, G&& meanwhile, A&&... args) {
  auto p = mpp::get_context(m).process(f, std::forward<A>(args)...);
  p.start();
  meanwhile();
  if (!p.join(120s)) {
    p.kill();
    p.join();
    return kHung;
  }
  return *p.exitcode();
}
template <class F, class... A>
int run(StartMethod m, F f, A&&... args) {
  return run_with(
      m, f, [] {}, std::forward<A>(args)...);
}

mpp::PoolOptions pool_with(StartMethod m) {
  mpp::PoolOptions o;
  o.processes = 2;
  o.start_method = m;
  return o;
}

}  // namespace

TEST_CASE("Handles: a vector of queues is a Process argument", "[handles]") {
  for (const StartMethod m : methods()) {
    CAPTURE(mpp::start_method_name(m));
    std::vector<mpp::Queue<int>> qs(3);
    CHECK(run(m, fill_queues, qs) == 0);
    for (std::size_t i = 0; i < qs.size(); ++i)
      CHECK(qs[i].get(true, 10s) == static_cast<int>(i) + 100);
  }
}

TEST_CASE("Handles: an optional lock is a Process argument", "[handles]") {
  for (const StartMethod m : methods()) {
    CAPTURE(mpp::start_method_name(m));
    mpp::Lock lock;
    REQUIRE(lock.acquire());
    CHECK(run(m, probe_lock, std::optional<mpp::Lock>(lock), std::optional<mpp::Lock>()) == 0);
    lock.release();
  }
}

TEST_CASE("Handles: a user struct holding an event and a barrier is a Process argument",
          "[handles]") {
  for (const StartMethod m : methods()) {
    CAPTURE(mpp::start_method_name(m));
    Job job{7, "seven", mpp::Event(), mpp::Barrier(2)};
    auto meet = *job.meet;
    mpp::Event done = job.done;
    CHECK(run_with(
              m, run_job, [&] { meet.wait(30s); }, job) == 0);
    CHECK(done.wait(10s));
  }
}

TEST_CASE("Handles: every kind of handle crosses inside a vector of tuples", "[handles]") {
  for (const StartMethod m : methods()) {
    CAPTURE(mpp::start_method_name(m));
    mpp::Manager manager;
    auto [mine, theirs] = mpp::Pipe<int>();
    Everything all{mpp::Queue<int>(),
                   mpp::SimpleQueue<int>(),
                   mpp::JoinableQueue<int>(),
                   mpp::Value<int>(0),
                   mpp::Array<int>(1),
                   mpp::Lock(),
                   mpp::RLock(),
                   mpp::Semaphore(0),
                   mpp::BoundedSemaphore(1),
                   mpp::Condition(),
                   mpp::Event(),
                   mpp::Barrier(2),
                   mpp::SharedMemory(16),
                   mpp::ShareableList{std::int64_t{0}},
                   theirs,
                   manager.dict<std::string, int>(),
                   manager.list<int>(),
                   manager.Namespace()};
    auto& [q, sq, jq, value, array, lock, rlock, sem, bsem, cond, event, barrier, shm, slist, conn,
           dict, list, ns] = all;
    REQUIRE(lock.acquire());
    REQUIRE(rlock.acquire());
    REQUIRE(cond.acquire());
    REQUIRE(bsem.acquire());
    auto& b = barrier;
    CHECK(run_with(
              m, use_everything, [&] { b.wait(30s); }, std::vector<Everything>{all}) == 0);
    lock.release();
    rlock.release();
    cond.release();
    CHECK(q.get(true, 10s) == 1);
    CHECK(sq.get(true, 10s) == 2);
    CHECK(jq.get(true, 10s) == 3);
    jq.task_done();
    CHECK(value.value() == 4);
    CHECK(array[0] == 5);
    CHECK(sem.acquire(true, 10s));
    CHECK(bsem.acquire(true, 10s));
    CHECK(event.wait(10s));
    CHECK(shm.buf()[0] == std::byte{6});
    CHECK(std::get<std::int64_t>(slist.get(0)) == 7);
    CHECK(mine.recv(10s) == 8);
    CHECK(dict.get("nine") == 9);
    CHECK(list.to_vector() == std::vector<int>{10});
    CHECK(ns.get<int>("eleven") == 11);
  }
}

TEST_CASE("Handles: a handle is an item of a queue, a pipe and a manager list", "[handles]") {
  for (const StartMethod m : methods()) {
    CAPTURE(mpp::start_method_name(m));
    mpp::Queue<mpp::Value<int>> values;
    mpp::Value<int> v(0);
    values.put(v);
    CHECK(run(m, take_value, values, 41) == 0);
    CHECK(v.value() == 41);

    mpp::Queue<int> out;
    auto [mine, theirs] = mpp::Pipe<mpp::Queue<int>>();
    mine.send(out);
    CHECK(run(m, take_queue_from_pipe, theirs, 42) == 0);
    CHECK(out.get(true, 10s) == 42);

    mpp::Manager manager;
    auto list = manager.list<mpp::Queue<int>>();
    list.append(out);
    CHECK(run(m, take_queue_from_list, list, 43) == 0);
    CHECK(out.get(true, 10s) == 43);

    // Nested inside an item: a queue of vectors of queues.
    mpp::Queue<std::vector<mpp::Queue<int>>> nested;
    nested.put(std::vector<mpp::Queue<int>>{out, out});
    auto got = nested.get(true, 10s);
    REQUIRE(got.size() == 2);
    got[1].put(44);
    CHECK(out.get(true, 10s) == 44);
  }
}

TEST_CASE("Handles: Pool starmap, apply_async and initializer take handles", "[handles][pool]") {
  for (const StartMethod m : methods()) {
    CAPTURE(mpp::start_method_name(m));
    mpp::Manager manager;
    auto d = manager.dict<std::string, int>();
    mpp::Value<int> started(0);
    {
      mpp::Pool pool(pool_with(m), count_start, started);
      const std::vector<std::tuple<std::string, Dict>> work{{"a", d}, {"bb", d}, {"ccc", d}};
      CHECK(pool.starmap(merge, work) == std::vector<int>{1, 2, 3});
      CHECK(d.to_map() == std::map<std::string, int>{{"a", 1}, {"bb", 2}, {"ccc", 3}});

      mpp::Value<int> v(0);
      CHECK(pool.apply_async(store, std::string("/tmp/x"), v).get(60s) == 6);
      CHECK(v.value() == 6);
      CHECK(pool.apply_async(merge, std::string("dddd"), d).get(60s) == 4);
      CHECK(d.get("dddd") == 4);
      // Both workers ran the initializer before taking tasks.
      (void)pool.map(read_started, std::vector<int>(8, 0), 1);
      pool.close();
      pool.join();
    }
    CHECK(started.value() >= 2);
  }
}

TEST_CASE("Handles: ProcessPoolExecutor submit takes a queue", "[handles][pool]") {
  for (const StartMethod m : methods()) {
    CAPTURE(mpp::start_method_name(m));
    mpp::ExecutorOptions o;
    o.max_workers = 2;
    o.start_method = m;
    mpp::ProcessPoolExecutor ex(o);
    mpp::Queue<int> q;
    CHECK(ex.submit(put_n, q, 3).result(60s) == 3);
    for (int i = 0; i < 3; ++i) CHECK(q.get(true, 10s) == i);
    ex.shutdown();
  }
}

TEST_CASE("Handles: a nested handle decodes to the same object in this process", "[handles]") {
  mpp::Queue<int> a, b;
  const auto bytes = mpp::encode(std::vector<mpp::Queue<int>>{a, b});
  auto back = mpp::decode<std::vector<mpp::Queue<int>>>(bytes);
  REQUIRE(back.size() == 2);
  CHECK(back[0].name() == a.name());
  back[1].put(5);
  CHECK(b.get(true, 10s) == 5);
  // A truncated encoding is CorruptedError, never a half-built vector.
  for (std::size_t n = 0; n < bytes.size(); ++n)
    CHECK_THROWS_AS(mpp::decode<std::vector<mpp::Queue<int>>>(std::span(bytes.data(), n)),
                    mpp::CorruptedError);
  // A handle whose object is gone: NotFoundError from the nested codec, as at top level.
  mpp::Bytes gone;
  {
    mpp::Queue<int> temp;
    gone = mpp::encode(std::optional<mpp::Queue<int>>(temp));
  }
  CHECK_THROWS_AS(mpp::decode<std::optional<mpp::Queue<int>>>(gone), mpp::NotFoundError);
}
