// Boost.Interprocess peers (header-only) and a raw robust process-shared pthread mutex:
//   boost    message_queue (capacity 1024), interprocess_mutex, managed_shared_memory map<int,int>
//            under a named_mutex
//   pthread  PTHREAD_PROCESS_SHARED + PTHREAD_MUTEX_ROBUST mutex: what a robust Lock builds on
#include <pthread.h>

#include <boost/interprocess/allocators/allocator.hpp>
#include <boost/interprocess/containers/map.hpp>
#include <boost/interprocess/ipc/message_queue.hpp>
#include <boost/interprocess/managed_shared_memory.hpp>
#include <boost/interprocess/sync/interprocess_mutex.hpp>
#include <boost/interprocess/sync/named_mutex.hpp>
#include <boost/interprocess/sync/scoped_lock.hpp>

#include "../common.hpp"
#include "queue_load.hpp"

namespace {

namespace bip = boost::interprocess;
using bench::Options;
using bench::Shared;
using bench::Spans;
using bench::StartLine;

// ---------------------------------------------------------------------------------------------
// message_queue

/// A Channel (see queue_load.hpp) over a fresh message_queue; removed again on destruction.
class BoostMq {
 public:
  BoostMq(std::size_t msgsize, std::size_t capacity)
      : name_(bench::unique_name("bmq")),
        tag_("shm:/" + name_),
        q_((bench::remember_name(tag_), bip::create_only), name_.c_str(), capacity, msgsize) {}
  ~BoostMq() {
    bip::message_queue::remove(name_.c_str());
    bench::forget_name(tag_);
  }
  BoostMq(const BoostMq&) = delete;
  BoostMq& operator=(const BoostMq&) = delete;

  void send(const void* msg, std::size_t size) { q_.send(msg, size, 0); }
  std::size_t recv(void* msg, std::size_t capacity) {
    std::size_t got = 0;
    unsigned prio = 0;
    q_.receive(msg, capacity, got, prio);
    return got;
  }

 private:
  std::string name_, tag_;
  bip::message_queue q_;
};

constexpr std::size_t kQueueCapacity = 1024;

// ---------------------------------------------------------------------------------------------
// Mutexes

/// A robust, process-shared pthread mutex. A dead owner hands the next locker EOWNERDEAD; it
/// marks the mutex consistent and goes on (nobody dies here, so that would be a bug to report).
class RobustMutex {
 public:
  RobustMutex() {
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    if (pthread_mutex_init(&m_, &a) != 0) bench::fail("pthread_mutex_init");
    pthread_mutexattr_destroy(&a);
  }
  ~RobustMutex() { pthread_mutex_destroy(&m_); }
  void lock() {
    int rc = pthread_mutex_lock(&m_);
    if (rc == EOWNERDEAD) {
      pthread_mutex_consistent(&m_);
      bench::fail("robust mutex: owner died");
    }
    if (rc != 0) bench::fail("pthread_mutex_lock");
  }
  void unlock() { pthread_mutex_unlock(&m_); }

 private:
  pthread_mutex_t m_;
};

template <class Mutex>
struct Guarded {
  Mutex m;
  alignas(bench::kCacheLine) std::int64_t x = 0;
};

/// ns per lock+unlock pair, one process, nobody else around.
template <class Mutex>
double lock_uncontended_ns(std::int64_t n) {
  Shared<Guarded<Mutex>> g;  // in shared memory, as it would be for real use
  std::int64_t t0 = bench::now_ns();
  for (std::int64_t i = 0; i < n; ++i) {
    g->m.lock();
    ++g->x;
    bench::escape(&g->x);
    g->m.unlock();
  }
  std::int64_t t1 = bench::now_ns();
  bench::check(g->x == n, "lock: lost increment");
  return static_cast<double>(t1 - t0) / static_cast<double>(n);
}

/// Total lock;++x;unlock per second from two processes on cores 0 and 1.
template <class Mutex>
double lock_contended_ops(std::int64_t n_each) {
  Shared<Guarded<Mutex>> g;
  Shared<StartLine> start;
  Shared<Spans> span;
  std::vector<pid_t> kids;
  for (int k = 0; k < 2; ++k)
    kids.push_back(bench::spawn(k, [&, k] {
      start->wait();
      span->start[k] = bench::now_ns();
      for (std::int64_t i = 0; i < n_each; ++i) {
        g->m.lock();
        ++g->x;
        g->m.unlock();
      }
      span->end[k] = bench::now_ns();
    }));
  start->release(2);
  bench::join(kids);
  bench::check(g->x == 2 * n_each, "lock: lost increment");
  return static_cast<double>(2 * n_each) / span->elapsed_s(2);
}

// ---------------------------------------------------------------------------------------------
// map<int,int> in a managed segment under a named_mutex: the Boost way to share a dict.

using Alloc =
    bip::allocator<std::pair<const int, int>, bip::managed_shared_memory::segment_manager>;
using Map = bip::map<int, int, std::less<int>, Alloc>;

class SharedMap {
 public:
  SharedMap()
      : seg_name_(bench::unique_name("bseg")),
        mtx_name_(bench::unique_name("bmtx")),
        seg_((bench::remember_name("shm:/" + seg_name_), bip::create_only), seg_name_.c_str(),
             64 << 20),
        mtx_((bench::remember_name("sem:/" + mtx_name_), bip::create_only), mtx_name_.c_str()),
        map_(seg_.construct<Map>("map")(std::less<int>(), Alloc(seg_.get_segment_manager()))) {}
  ~SharedMap() {
    bip::shared_memory_object::remove(seg_name_.c_str());
    bip::named_mutex::remove(mtx_name_.c_str());
    bench::forget_name("shm:/" + seg_name_);
    bench::forget_name("sem:/" + mtx_name_);
  }
  SharedMap(const SharedMap&) = delete;
  SharedMap& operator=(const SharedMap&) = delete;

  void set(int k, int v) {
    bip::scoped_lock<bip::named_mutex> lock(mtx_);
    (*map_)[k] = v;
  }
  [[nodiscard]] int get(int k) {
    bip::scoped_lock<bip::named_mutex> lock(mtx_);
    auto it = map_->find(k);
    return it == map_->end() ? -1 : it->second;
  }
  [[nodiscard]] std::size_t size() const { return map_->size(); }

 private:
  std::string seg_name_, mtx_name_;
  bip::managed_shared_memory seg_;
  bip::named_mutex mtx_;
  Map* map_;
};

int value_of(int k) { return k * 3 + 1; }

/// ops/s of `procs` processes (the caller itself when procs == 1, else children on cores 0 and
/// 1) doing n_each sets of new keys, or gets of keys set beforehand, each under the lock.
double map_ops(bool set, int procs, std::int64_t n_each) {
  SharedMap m;
  const std::int64_t keys = procs * n_each;
  if (!set)
    for (int k = 0; k < keys; ++k) m.set(k, value_of(k));
  auto work = [&](int id) {
    for (std::int64_t i = 0; i < n_each; ++i) {
      int k = static_cast<int>(i * procs + id);  // disjoint keys per process
      if (set) {
        m.set(k, value_of(k));
      } else if (m.get(k) != value_of(k)) {
        bench::fail("map: wrong value");
      }
    }
  };
  double elapsed;
  if (procs == 1) {
    std::int64_t t0 = bench::now_ns();
    work(0);
    elapsed = bench::seconds(bench::now_ns() - t0);
  } else {
    Shared<StartLine> start;
    Shared<Spans> span;
    std::vector<pid_t> kids;
    for (int k = 0; k < procs; ++k)
      kids.push_back(bench::spawn(k, [&, k] {
        start->wait();
        span->start[k] = bench::now_ns();
        work(k);
        span->end[k] = bench::now_ns();
      }));
    start->release(procs);
    bench::join(kids);
    elapsed = span->elapsed_s(procs);
  }
  bench::check(m.size() == static_cast<std::size_t>(keys), "map: wrong size");
  for (int k = 0; k < keys; k += 97) bench::check(m.get(k) == value_of(k), "map: wrong value");
  return static_cast<double>(keys) / elapsed;
}

}  // namespace

int main(int argc, char** argv) {
  const Options opt = bench::parse_args(argc, argv);
  const std::string cap = "capacity " + std::to_string(kQueueCapacity);

  bench::run(
      opt, {"queue.8B.1p1c.throughput", "boost", "msg/s", true},
      [&] {
        BoostMq q(8, kQueueCapacity);
        return peers::queue_throughput(q, 8, 1, 1, opt.n(1'000'000, 150'000));
      },
      cap);
  bench::run(
      opt, {"queue.1KiB.1p1c.throughput", "boost", "msg/s", true},
      [&] {
        BoostMq q(1024, kQueueCapacity);
        return peers::queue_throughput(q, 1024, 1, 1, opt.n(1'000'000, 150'000));
      },
      cap);
  bench::run(
      opt, {"queue.8B.2p2c.throughput", "boost", "msg/s", true},
      [&] {
        BoostMq q(8, kQueueCapacity);
        return peers::queue_throughput(q, 8, 2, 2, opt.n(1'000'000, 150'000));
      },
      cap);
  bench::run(
      opt, {"queue.8B.rtt", "boost", "µs", false},
      [&] {
        BoostMq there(8, kQueueCapacity), back(8, kQueueCapacity);
        return peers::echo_rtt_us(there, back, opt.n(4'000, 600));
      },
      cap);

  bench::run(opt, {"lock.uncontended", "boost", "ns", false}, [&] {
    return lock_uncontended_ns<bip::interprocess_mutex>(opt.n(20'000'000, 3'000'000));
  });
  bench::run(opt, {"lock.uncontended", "pthread", "ns", false},
             [&] { return lock_uncontended_ns<RobustMutex>(opt.n(20'000'000, 3'000'000)); });
  bench::run(opt, {"lock.contended.2proc", "boost", "ops/s", true}, [&] {
    return lock_contended_ops<bip::interprocess_mutex>(opt.n(4'000'000, 600'000));
  });
  bench::run(opt, {"lock.contended.2proc", "pthread", "ops/s", true},
             [&] { return lock_contended_ops<RobustMutex>(opt.n(4'000'000, 600'000)); });

  for (int procs : {1, 2}) {
    const std::string p = std::to_string(procs) + "proc";
    const std::string set = "dict.set." + p, get = "dict.get." + p;
    bench::run(opt, {set.c_str(), "boost", "ops/s", true},
               [&] { return map_ops(true, procs, opt.n(200'000, 40'000) / procs); });
    bench::run(opt, {get.c_str(), "boost", "ops/s", true},
               [&] { return map_ops(false, procs, opt.n(200'000, 40'000)); });
  }
}
