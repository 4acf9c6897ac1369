// Kernel IPC peers: pipe(2), UNIX socketpair, POSIX message queues, raw shm_open + mmap, fork.
//
// Throughput: the producer makes one write() per message (message semantics, as a channel built
// on a pipe would); the consumer reads whatever is available (up to 64 KiB, or straight into the
// message buffer for messages of 64 KiB and more) and reassembles messages. That is the best a
// pipe-based channel can do, so it is the fair bar for mpp's Pipe.
#include <fcntl.h>
#include <mqueue.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <memory>

#include "../common.hpp"
#include "queue_load.hpp"

namespace {

using bench::Options;
using bench::Shared;
using bench::Spans;
using bench::StartLine;

// ---------------------------------------------------------------------------------------------
// Messages: sequence number in the first and last 8 bytes, a fixed pattern in between; the
// consumer checks the stamps of every message and the pattern of every 64th.

inline unsigned char pattern(std::size_t i) { return static_cast<unsigned char>(i * 7 + 1); }

struct Message {
  std::unique_ptr<unsigned char[]> bytes;
  std::size_t size;
  explicit Message(std::size_t n) : bytes(new unsigned char[n]), size(n) {
    for (std::size_t i = 0; i < n; ++i) bytes[i] = pattern(i);
  }
  void stamp(std::uint64_t seq) {
    std::memcpy(bytes.get(), &seq, 8);
    std::memcpy(bytes.get() + size - 8, &seq, 8);
  }
  [[nodiscard]] bool valid(std::uint64_t seq) const {
    std::uint64_t a, b;
    std::memcpy(&a, bytes.get(), 8);
    std::memcpy(&b, bytes.get() + size - 8, 8);
    if (a != seq || b != seq) return false;
    if (seq % 64 == 0)
      for (std::size_t i = 8; i + 8 < size; ++i)
        if (bytes[i] != pattern(i)) return false;
    return true;
  }
};

void write_all(int fd, const unsigned char* p, std::size_t n) {
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) bench::sys_fail("write");
    p += w;
    n -= static_cast<std::size_t>(w);
  }
}

void read_all(int fd, unsigned char* p, std::size_t n) {
  while (n > 0) {
    ssize_t r = ::read(fd, p, n);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) bench::sys_fail("read");
    if (r == 0) bench::fail("read: unexpected end of stream");
    p += r;
    n -= static_cast<std::size_t>(r);
  }
}

// ---------------------------------------------------------------------------------------------
// pipe(2) and socketpair: the same code over two kinds of file descriptor pair.

enum class Fds { pipe, socketpair };

/// fds[0] is read by the consumer, fds[1] written by the producer.
void make_fds(Fds kind, int fds[2]) {
  if (kind == Fds::pipe) {
    if (::pipe(fds) != 0) bench::sys_fail("pipe");
  } else if (::socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0) {
    bench::sys_fail("socketpair");
  }
}

double fd_throughput(Fds kind, std::size_t size, std::int64_t n, bool bytes_per_s) {
  int fds[2];
  make_fds(kind, fds);
  Shared<StartLine> start;
  Shared<Spans> span;
  std::vector<pid_t> kids;
  kids.push_back(bench::spawn(0, [&] {
    ::close(fds[0]);
    Message m(size);
    start->wait();
    for (std::int64_t i = 0; i < n; ++i) {
      m.stamp(static_cast<std::uint64_t>(i));
      write_all(fds[1], m.bytes.get(), size);
    }
  }));
  kids.push_back(bench::spawn(1, [&] {
    ::close(fds[1]);
    Message m(size);
    constexpr std::size_t kChunk = 64 << 10;
    std::unique_ptr<unsigned char[]> chunk(new unsigned char[kChunk]);
    start->wait();
    span->start[0] = bench::now_ns();
    std::size_t fill = 0;  // bytes of the current message received so far
    std::uint64_t seq = 0;
    auto complete = [&] {
      if (!m.valid(seq++)) bench::fail("fd: wrong message");
      fill = 0;
    };
    while (seq < static_cast<std::uint64_t>(n)) {
      if (size >= kChunk) {  // big messages: no intermediate copy
        read_all(fds[0], m.bytes.get(), size);
        complete();
        continue;
      }
      ssize_t r = ::read(fds[0], chunk.get(), kChunk);
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) bench::sys_fail("read");
      if (r == 0) bench::fail("fd: unexpected end of stream");
      for (std::size_t off = 0; off < static_cast<std::size_t>(r);) {
        std::size_t take = std::min(size - fill, static_cast<std::size_t>(r) - off);
        std::memcpy(m.bytes.get() + fill, chunk.get() + off, take);
        fill += take;
        off += take;
        if (fill == size) complete();
      }
    }
    span->end[0] = bench::now_ns();
  }));
  ::close(fds[0]);
  ::close(fds[1]);
  start->release(2);
  bench::join(kids);
  double msgs_per_s = static_cast<double>(n) / span->elapsed_s(1);
  return bytes_per_s ? msgs_per_s * static_cast<double>(size) * 1e-9 : msgs_per_s;
}

double fd_rtt_us(Fds kind, std::int64_t n) {
  int there[2], back[2];
  make_fds(kind, there);
  make_fds(kind, back);
  Shared<StartLine> start;
  Shared<Spans> span;
  std::vector<pid_t> kids;
  kids.push_back(bench::spawn(0, [&] {
    start->wait();
    span->start[0] = bench::now_ns();
    for (std::uint64_t i = 0; i < static_cast<std::uint64_t>(n); ++i) {
      std::uint64_t echo;
      write_all(there[1], reinterpret_cast<unsigned char*>(&i), 8);
      read_all(back[0], reinterpret_cast<unsigned char*>(&echo), 8);
      if (echo != i) bench::fail("fd RT: wrong echo");
    }
    span->end[0] = bench::now_ns();
  }));
  kids.push_back(bench::spawn(1, [&] {
    start->wait();
    for (std::int64_t i = 0; i < n; ++i) {
      unsigned char v[8];
      read_all(there[0], v, 8);
      write_all(back[1], v, 8);
    }
  }));
  for (int fd : {there[0], there[1], back[0], back[1]}) ::close(fd);
  start->release(2);
  bench::join(kids);
  return span->elapsed_s(1) / static_cast<double>(n) * 1e6;
}

// ---------------------------------------------------------------------------------------------
// POSIX message queues.

/// Open a fresh queue and unlink its name at once (the descriptors survive fork). The default
/// msg_max is 10 without CAP_SYS_RESOURCE; if the kernel refuses 10, halve until it accepts.
mqd_t open_mq(long msgsize, long& maxmsg) {
  std::string name = "/" + bench::unique_name("mq");
  for (maxmsg = 10; maxmsg >= 1; maxmsg /= 2) {
    mq_attr attr{};
    attr.mq_maxmsg = maxmsg;
    attr.mq_msgsize = msgsize;
    mqd_t q = ::mq_open(name.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600, &attr);
    if (q != static_cast<mqd_t>(-1)) {
      ::mq_unlink(name.c_str());
      return q;
    }
    if (errno != EINVAL) bench::sys_fail("mq_open");
    std::fprintf(stderr, "mq_open: maxmsg %ld refused (EINVAL), trying %ld\n", maxmsg, maxmsg / 2);
  }
  bench::fail("mq_open: no maxmsg accepted");
}

long mq_capacity(long msgsize) {
  long maxmsg;
  ::mq_close(open_mq(msgsize, maxmsg));
  return maxmsg;
}

/// A Channel (see queue_load.hpp) over a POSIX message queue; its name is already unlinked.
class PosixMq {
 public:
  explicit PosixMq(std::size_t msgsize) : q_(open_mq(static_cast<long>(msgsize), maxmsg_)) {}
  ~PosixMq() { ::mq_close(q_); }
  PosixMq(const PosixMq&) = delete;
  PosixMq& operator=(const PosixMq&) = delete;

  void send(const void* msg, std::size_t size) {
    while (::mq_send(q_, static_cast<const char*>(msg), size, 0) != 0)
      if (errno != EINTR) bench::sys_fail("mq_send");
  }
  std::size_t recv(void* msg, std::size_t capacity) {
    ssize_t r;
    while ((r = ::mq_receive(q_, static_cast<char*>(msg), capacity, nullptr)) < 0)
      if (errno != EINTR) bench::sys_fail("mq_receive");
    return static_cast<std::size_t>(r);
  }

 private:
  long maxmsg_ = 0;
  mqd_t q_;
};

// ---------------------------------------------------------------------------------------------
// Raw named shared memory and process creation: what mpp's SharedMemory and Process build on.

constexpr std::size_t kShmSize = 1 << 20;

/// Mean µs of shm_open + ftruncate + mmap (create) or shm_open + fstat + mmap (attach) of 1 MiB;
/// each segment is written through the first mapping and read back through the second.
double shm_us(bool create, int n) {
  std::vector<std::string> names;
  for (int i = 0; i < n; ++i) {
    names.push_back("/" + bench::unique_name("shm"));
    bench::remember_name("shm:" + names.back());
  }
  std::vector<void*> made(static_cast<std::size_t>(n));
  std::int64_t timed = 0;
  for (int i = 0; i < n; ++i) {
    std::int64_t t0 = bench::now_ns();
    int fd = ::shm_open(names[i].c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
    if (fd < 0) bench::sys_fail("shm_open");
    if (::ftruncate(fd, kShmSize) != 0) bench::sys_fail("ftruncate");
    void* p = ::mmap(nullptr, kShmSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) bench::sys_fail("mmap");
    ::close(fd);
    timed += bench::now_ns() - t0;
    static_cast<int*>(p)[i % 1000] = i;
    made[i] = p;
  }
  if (!create) {
    timed = 0;
    for (int i = 0; i < n; ++i) {
      std::int64_t t0 = bench::now_ns();
      int fd = ::shm_open(names[i].c_str(), O_RDWR, 0);
      if (fd < 0) bench::sys_fail("shm_open");
      struct stat st;
      if (::fstat(fd, &st) != 0) bench::sys_fail("fstat");
      void* p = ::mmap(nullptr, static_cast<std::size_t>(st.st_size), PROT_READ | PROT_WRITE,
                       MAP_SHARED, fd, 0);
      if (p == MAP_FAILED) bench::sys_fail("mmap");
      ::close(fd);
      timed += bench::now_ns() - t0;
      bool ok =
          static_cast<std::size_t>(st.st_size) == kShmSize && static_cast<int*>(p)[i % 1000] == i;
      ::munmap(p, kShmSize);
      bench::check(ok, "shm attach: wrong contents");
    }
  }
  for (int i = 0; i < n; ++i) {
    ::munmap(made[i], kShmSize);
    ::shm_unlink(names[i].c_str());
    bench::forget_name("shm:" + names[i]);
  }
  return static_cast<double>(timed) * 1e-3 / n;
}

double fork_us(int n) {
  std::int64_t t0 = bench::now_ns();
  for (int i = 0; i < n; ++i) {
    pid_t pid = ::fork();
    if (pid < 0) bench::sys_fail("fork");
    if (pid == 0) _exit(7);
    int status;
    while (::waitpid(pid, &status, 0) < 0)
      if (errno != EINTR) bench::sys_fail("waitpid");
    bench::check(WIFEXITED(status) && WEXITSTATUS(status) == 7, "fork: wrong exit status");
  }
  return static_cast<double>(bench::now_ns() - t0) * 1e-3 / n;
}

}  // namespace

int main(int argc, char** argv) {
  const Options opt = bench::parse_args(argc, argv);
  struct Peer {
    Fds kind;
    const char* system;
  };
  for (Peer p : {Peer{Fds::pipe, "pipe"}, Peer{Fds::socketpair, "socketpair"}}) {
    bench::run(opt, {"pipe.8B.throughput", p.system, "msg/s", true},
               [&] { return fd_throughput(p.kind, 8, opt.n(1'000'000, 150'000), false); });
    bench::run(opt, {"pipe.1KiB.throughput", p.system, "msg/s", true},
               [&] { return fd_throughput(p.kind, 1024, opt.n(400'000, 60'000), false); });
    bench::run(opt, {"pipe.1MiB.throughput", p.system, "GB/s", true},
               [&] { return fd_throughput(p.kind, 1 << 20, opt.n(400, 60), true); });
    bench::run(opt, {"pipe.8B.rtt", p.system, "µs", false},
               [&] { return fd_rtt_us(p.kind, opt.n(4'000, 600)); });
  }

  {
    std::string cap;  // the capacity every mq row used, shown as a note
    try {
      cap = "maxmsg " + std::to_string(mq_capacity(1024));
    } catch (const std::exception& e) {
      cap = e.what();  // the runs below fail the same way and say so
    }
    bench::run(
        opt, {"queue.8B.1p1c.throughput", "posix_mq", "msg/s", true},
        [&] {
          PosixMq q(8);
          return peers::queue_throughput(q, 8, 1, 1, opt.n(200'000, 60'000));
        },
        cap);
    bench::run(
        opt, {"queue.1KiB.1p1c.throughput", "posix_mq", "msg/s", true},
        [&] {
          PosixMq q(1024);
          return peers::queue_throughput(q, 1024, 1, 1, opt.n(200'000, 60'000));
        },
        cap);
    bench::run(
        opt, {"queue.8B.2p2c.throughput", "posix_mq", "msg/s", true},
        [&] {
          PosixMq q(8);
          return peers::queue_throughput(q, 8, 2, 2, opt.n(400'000, 60'000));
        },
        cap);
    bench::run(
        opt, {"queue.8B.rtt", "posix_mq", "µs", false},
        [&] {
          PosixMq a(8), b(8);
          return peers::echo_rtt_us(a, b, opt.n(4'000, 600));
        },
        cap);
  }

  bench::run(opt, {"shm.create.1MiB", "posix", "µs", false},
             [&] { return shm_us(true, static_cast<int>(opt.n(500, 100))); });
  bench::run(opt, {"shm.attach.1MiB", "posix", "µs", false},
             [&] { return shm_us(false, static_cast<int>(opt.n(500, 100))); });
  bench::run(opt, {"process.start", "posix", "µs", false},
             [&] { return fork_us(static_cast<int>(opt.n(500, 100))); });
}
