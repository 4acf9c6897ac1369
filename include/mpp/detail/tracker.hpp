// mpp — the crash tracker: removes the objects of a program that died abnormally (SIGKILL,
// SIGTERM, abort, an uncaught exception), as Python's resource tracker does, with nothing for
// the user to run. POSIX only: on Windows a named object vanishes with its last handle.
//
// Design (CPython's Lib/multiprocessing/resource_tracker.py, adapted):
// - One tracker per program, started with the first object the program creates. The program
//   keeps one end of a packet socket; every object it creates is sent as REGISTER (name and
//   identity: creator ProcessRef and creation time, or the inode of a headerless block), every
//   name it removes as UNREGISTER. Forked children inherit the connection and share the tracker
//   (their objects are registered under their own ProcessRef); spawned programs, which do not
//   inherit it, start their own.
// - End of file on the socket means that the program and every forked child still holding the
//   connection are gone. From then on the tracker judges what is still registered every 100 ms
//   (every 500 ms after the first seconds): it forgets a name that is gone, re-created by
//   someone else (identity differs) or persistent (SegmentOptions::persistent,
//   kSegmentPersistent; os::kModeKeep for an untracked SharedMemory), keeps one that a live
//   process still uses — the creator, a live holder of an attach slot or of a user lock, or a
//   live process that has it mapped (a forked grandchild using an inherited handle) — and
//   removes the rest. It exits when nothing is left to watch.
// - How it starts: posix_spawn of /proc/self/exe with MPP_TRACKER_FD in its environment. A
//   constructor of this header (priority 101: before the program's own static initialisers and
//   before main, so no mpp::bootstrap call is needed) sees the variable, forks once — the
//   spawned process exits and the program reaps it, so the tracker is nobody's child and never a
//   zombie — and serves. Why not fork the program itself: forking a multi-threaded program leaves
//   the locks of its other threads (malloc's, a sanitizer's allocator) held forever in the child,
//   and runs the program's fork handlers (a Pipe end would count the tracker as its holder). A
//   fresh exec has one thread, a fresh sanitizer runtime and no inherited state; posix_spawn runs
//   no fork handlers and copies no address space. The tracker's stdin/stdout/stderr are
//   /dev/null and it holds no other descriptor of the program (so a test runner waiting for its
//   output is not kept waiting), in a session of its own (Ctrl-C in a terminal does not reach
//   it).
// - Costs: starting takes one exec of the program (milliseconds) at the first object created;
//   afterwards creating or removing an object sends one message (a few microseconds). Fast paths
//   are untouched. A full socket or a dead tracker never blocks the program for more than a
//   second; the object is then simply left to `mpp gc`.
// - MPP_NO_TRACKER=1 in the environment (read when a tracker would be started) disables it, for
//   debugging what a crash leaves behind. Where mpp is compiled into a shared library (a plugin)
//   rather than the executable, re-executing the executable would not run this code: no tracker
//   is started there, and leftovers are `mpp gc`'s, as before.
// The tracker judges objects as `mpp gc` does (detail/registry.hpp: creator word, attach table,
// user locks, then the processes that have it mapped) but reads only what it needs: it lives
// below the registry (segment.hpp includes it), and removes nothing more than gc would.
#pragma once

#include <cstdint>
#include <string_view>

#include "../segment.hpp"

#if defined(MPP_OS_POSIX)
#  include <algorithm>
#  include <chrono>
#  include <cstdlib>
#  include <cstring>
#  include <map>
#  include <mutex>
#  include <string>
#  include <vector>

#  include "fork_hooks.hpp"
#  include "liveness.hpp"
#  include "os.hpp"
#endif

namespace mpp::detail::tracker {

#if defined(MPP_OS_POSIX)

namespace tracker_detail {

enum : std::uint8_t { kRegister = 1, kUnregister = 2, kReady = 3, kWatch = 4 };

/// One message: fixed fields, then the name (not terminated).
struct Wire {
  std::uint8_t op;
  std::uint8_t block;  ///< a headerless SharedMemory block (identity: its inode)
  std::uint16_t name_size;
  std::uint32_t reserved;
  std::uint64_t creator;  ///< packed ProcessRef of the creator
  std::uint64_t stamp;    ///< created_unix_ms of a segment, inode of a block; 0: any (unregister)
  char name[kMaxNameLength];
};

/// This process's side: the connection (inherited by forked children), guarded against fork.
struct Client final : ForkHook {
  std::mutex mutex;
  os::Fd fd;
  std::pair<std::uint64_t, std::uint64_t> identity{0, 0};  // of fd, to notice it was closed
  bool disabled = false;  // MPP_NO_TRACKER, or a start failed: leave objects to `mpp gc`
  // No thread is inside start() or send() while the address space is copied.
  void before_fork() noexcept override { mutex.lock(); }
  void after_fork_parent() noexcept override { mutex.unlock(); }
  void after_fork_child() noexcept override { mutex.unlock(); }
};

inline Client& client() { return process_singleton<Client>(); }

// Whether this process is a tracker (it never starts one of its own).
inline bool& serving() noexcept {
  static bool s = false;
  return s;
}

// The process this program started as (recorded before main; a forked child inherits it): the
// objects of a forked child that starts its own tracker are kept while the program's first
// process lives, as if the child had shared that process's tracker.
inline ProcessRef& program_root() noexcept {
  static ProcessRef r;
  return r;
}

inline bool connected(Client& c) noexcept {
  return c.fd.valid() && os::fd_identity(c.fd.get()) == c.identity;
}

inline bool start_here() noexcept;

// Starts a tracker and waits (bounded) until it says it runs. False: none (stay disabled).
inline bool start(Client& c) {
  if (const auto off = os::get_env("MPP_NO_TRACKER"); off && !off->empty() && *off != "0")
    return false;
  if (!start_here()) return false;  // mpp is in a shared library: the executable is not ours
  auto [ours, theirs] = os::packet_pair();
  if (!ours.valid()) return false;
  const os::pid_type pid = os::spawn_tracker(theirs.get());
  theirs.reset();  // from now on only the tracker holds its end: end of file means it is gone
  if (pid < 0) return false;
  // Any program the link names starts; only one built with mpp answers. 10 s: an exec of a
  // sanitized binary on a loaded machine.
  Wire hello{};
  const long n = os::recv_packet(ours.get(), &hello, sizeof hello, std::chrono::seconds(10));
  const bool ok = n > 0 && hello.op == kReady;
  if (!ok) (void)os::send_signal(pid, os::kSigKill);
  os::reap(pid);  // its first process exits as soon as the tracker is forked
  if (!ok) return false;
  c.identity = os::fd_identity(ours.get());
  c.fd = std::move(ours);
  const ProcessRef root = program_root();
  if (root.pid > 0 && root.pid != os::current_pid()) {
    Wire w{};
    w.op = kWatch;
    w.creator = root.pack();
    (void)os::send_packet(c.fd.get(), &w, offsetof(Wire, name), std::chrono::seconds(1));
  }
  return true;
}

inline void post(const Wire& w, bool start_if_needed) noexcept {
  if (serving()) return;
  try {
    Client& c = client();
    std::lock_guard<std::mutex> lock(c.mutex);
    if (c.disabled) return;
    const std::size_t size = offsetof(Wire, name) + w.name_size;
    for (int attempt = 0; attempt < 2; ++attempt) {
      if (!connected(c)) {
        (void)c.fd.release();  // closed or replaced by the program: not ours to close any more
        if (!start_if_needed) return;
        if (!start(c)) {
          c.disabled = true;
          return;
        }
      }
      const int err = os::send_packet(c.fd.get(), &w, size, std::chrono::seconds(1));
      if (err == 0 || err == EAGAIN) return;  // EAGAIN: a stuck tracker; `mpp gc` remains
      c.fd.reset();  // the tracker died (killed by hand?): start another for what comes next
    }
  } catch (...) {  // no memory, no mutex, a failed kill: tracking is best effort
  }
}

inline Wire make(std::uint8_t op, std::string_view name, bool block, std::uint64_t creator,
                 std::uint64_t stamp) noexcept {
  Wire w{};
  w.op = op;
  w.block = block ? 1 : 0;
  w.name_size = static_cast<std::uint16_t>(std::min(name.size(), sizeof w.name));
  w.creator = creator;
  w.stamp = stamp;
  std::memcpy(w.name, name.data(), w.name_size);
  return w;
}

}  // namespace tracker_detail

//!Effects: registers the segment `name` just created by this process (its header names the
//! creator and the creation time) with this program's tracker, starting the tracker first if
//! there is none. Never throws, never blocks for long; without a tracker, nothing.
inline void track(std::string_view name, const SegmentHeader& h) noexcept {
  using namespace tracker_detail;
  post(make(kRegister, name, false, h.creator.load(std::memory_order_relaxed), h.created_unix_ms),
       true);
}

//!Effects: the segment `name` (header `h`) was removed through this process: its tracker forgets
//!it.
inline void untrack(std::string_view name, const SegmentHeader& h) noexcept {
  using namespace tracker_detail;
  post(make(kUnregister, name, false, h.creator.load(std::memory_order_relaxed), h.created_unix_ms),
       false);
}

//!Effects: registers the headerless block `name` (inode `inode`) just created by this process.
inline void track_block(std::string_view name, std::uint64_t inode) noexcept {
  using namespace tracker_detail;
  post(make(kRegister, name, true, ProcessRef::self().pack(), inode), true);
}

//!Effects: the block `name` created by this process was removed: its tracker forgets it.
inline void untrack_block(std::string_view name) noexcept {
  using namespace tracker_detail;
  post(make(kUnregister, name, true, ProcessRef::self().pack(), 0), false);
}

namespace tracker_detail {

/// What the tracker remembers of one registered object.
struct Entry {
  bool block = false;
  ProcessRef creator;
  std::uint64_t stamp = 0;
};

enum class Judgement { keep, forget, candidate };

template <class T>
T field(const std::byte* b, std::size_t offset) noexcept {
  T v{};
  std::memcpy(&v, b + offset, sizeof(T));
  return v;
}

// Whether `name` is still the object registered as `e` and nothing but a mapping can still use
// it (candidate); `inode` receives its inode. Reads a copy, never maps or attaches.
inline Judgement judge(const std::string& name, const Entry& e, std::uint64_t& inode) {
  const os::ShmStat ls = os::shm_lstat(name);
  if (!ls.exists || !ls.regular || ls.symlink || !ls.owned_by_us) return Judgement::forget;
  int err = 0;
  os::Fd fd = os::shm_open_readonly(name, err);
  if (!fd.valid()) return err == ENOENT ? Judgement::forget : Judgement::keep;
  const os::ShmStat st = os::shm_fstat(fd, name);
  inode = st.inode;
  const bool headered = (st.mode & os::kModeHeadered) != 0;
  if (e.block) {
    if (headered || st.inode != e.stamp) return Judgement::forget;  // someone else's now
    if ((st.mode & os::kModeKeep) != 0) return Judgement::forget;   // untracked: kept
  } else {
    using H = SegmentHeader;
    if (!headered) return Judgement::forget;
    std::vector<std::byte> h(sizeof(H));
    if (os::read_at(fd, 0, h.data(), h.size()) != h.size()) return Judgement::forget;
    const auto creator = ProcessRef::unpack(field<std::uint64_t>(h.data(), offsetof(H, creator)));
    if (creator != e.creator ||
        field<std::uint64_t>(h.data(), offsetof(H, created_unix_ms)) != e.stamp)
      return Judgement::forget;  // re-created by someone else
    if ((field<std::uint32_t>(h.data(), offsetof(H, flags)) & kSegmentPersistent) != 0)
      return Judgement::forget;  // its creator asked to keep it
    if (creator.alive()) return Judgement::keep;
    // The attach table's entries in use; a table that does not fit the file is not ours to judge.
    const std::uint32_t used =
        std::min(field<std::uint32_t>(h.data(), offsetof(H, attach_used)), kMaxAttach);
    const auto table = field<std::uint64_t>(h.data(), offsetof(H, attach_offset));
    if (table < sizeof(H) || table > st.size || (st.size - table) / sizeof(AttachSlot) < used)
      return Judgement::forget;
    std::vector<std::byte> slots(std::size_t{used} * sizeof(AttachSlot));
    if (os::read_at(fd, table, slots.data(), slots.size()) != slots.size())
      return Judgement::forget;
    for (std::uint32_t i = 0; i < used; ++i)
      if (ProcessRef::unpack(field<std::uint64_t>(slots.data(), i * sizeof(AttachSlot))).alive())
        return Judgement::keep;
  }
  const auto locks = os::count_user_locks(fd, 1);
  if (!locks || *locks > 0) return Judgement::keep;  // a live user (or the kernel cannot tell)
  return Judgement::candidate;
}

// One pass over what is still registered once the program is gone: removes every object that
// no live process uses. Returns: whether something is left to watch.
inline bool sweep(std::map<std::string, Entry>& entries) {
  std::vector<std::pair<std::string, std::uint64_t>> candidates;
  for (auto it = entries.begin(); it != entries.end();) {
    std::uint64_t inode = 0;
    Judgement j = Judgement::keep;
    try {
      j = judge(it->first, it->second, inode);
    } catch (...) {  // an fstat that failed: look again next time
    }
    if (j == Judgement::forget) {
      it = entries.erase(it);
      continue;
    }
    if (j == Judgement::candidate) candidates.emplace_back(it->first, inode);
    ++it;
  }
  if (candidates.empty()) return !entries.empty();
  const auto mappers = os::shm_mappers();  // one read of /proc for all candidates
  for (const auto& [name, inode] : candidates) {
    const bool mapped =
        std::any_of(mappers.begin(), mappers.end(), [&, ino = inode](const auto& m) {
          return m.inode == ino && ProcessRef{m.pid, 0}.alive();
        });
    if (mapped) continue;  // e.g. a forked grandchild using an inherited handle
    // The name may have been removed and re-created since it was judged: only that inode goes.
    if (os::shm_lstat(name).inode == inode) {
      try {
        os::shm_remove(name);
      } catch (...) {
      }
    }
    entries.erase(name);
  }
  return !entries.empty();
}

/// What the tracker has been told: the objects to remove once unused, and the processes whose
/// end must be awaited too.
struct Registry {
  std::map<std::string, Entry> entries;
  std::vector<ProcessRef> watched;
};

//!Effects: applies one received packet of `n` bytes to `r`; ignores one that is not a message
//! of ours or names no valid object.
inline void apply(const Wire& w, long n, Registry& r) {
  if (static_cast<std::size_t>(n) < offsetof(Wire, name) || w.name_size > sizeof w.name ||
      static_cast<std::size_t>(n) != offsetof(Wire, name) + w.name_size)
    return;
  if (w.op == kWatch) {
    r.watched.push_back(ProcessRef::unpack(w.creator));
    return;
  }
  std::string name(w.name, w.name_size);
  try {
    validate_name(name);
  } catch (const Error&) {
    return;
  }
  const Entry e{w.block != 0, ProcessRef::unpack(w.creator), w.stamp};
  if (w.op == kRegister) {
    r.entries[std::move(name)] = e;
  } else if (w.op == kUnregister) {
    const auto it = r.entries.find(name);
    if (it != r.entries.end() && it->second.creator == e.creator &&
        (e.stamp == 0 || e.stamp == it->second.stamp))
      r.entries.erase(it);
  }
}

//!Effects: receives messages on `fd` into `r` until end of file (the program and its forked
//! children are gone).
inline void collect(int fd, Registry& r) {
  bool busy = false;  // the last look found messages
  for (;;) {
    Wire w{};
    long n = os::recv_packet(fd, &w, sizeof w, std::chrono::milliseconds(0));
    if (n == -2 && busy) {
      // A burst (objects created and destroyed in a loop): let it accumulate for a moment,
      // since a sender whose receiver sleeps here wakes nobody, while one that finds the
      // receiver blocked pays for waking it on every message.
      busy = false;
      os::sleep_for(std::chrono::milliseconds(1));
      continue;
    }
    if (n == -2) n = os::recv_packet(fd, &w, sizeof w, std::chrono::milliseconds(-1));
    if (n <= 0) return;
    busy = true;
    apply(w, n, r);
  }
}

//!Effects: removes what `r` still holds as its last users go: first waits while a watched
//! process lives (a forked child's tracker: the program's first process keeps the child's
//! objects too), then sweeps until nothing is left.
inline void clean_up(Registry& r) {
  while (!r.entries.empty() && std::any_of(r.watched.begin(), r.watched.end(),
                                           [](const ProcessRef& p) { return p.alive(); }))
    os::sleep_for(std::chrono::milliseconds(100));
  const auto eof = std::chrono::steady_clock::now();
  while (sweep(r.entries)) {
    // Prompt while the program's last users are likely to exit, then at a gentler pace.
    const bool early = std::chrono::steady_clock::now() - eof < std::chrono::seconds(5);
    os::sleep_for(early ? std::chrono::milliseconds(100) : std::chrono::milliseconds(500));
  }
}

// The tracker's life: collect registrations until end of file, then sweep until nothing is left.
[[noreturn]] inline void serve(int fd) noexcept {
  serving() = true;
  try {
    Registry r;
    Wire ready{};
    ready.op = kReady;
    (void)os::send_packet(fd, &ready, offsetof(Wire, name), std::chrono::seconds(1));
    collect(fd, r);
    os::close_fd(fd);
    clean_up(r);
  } catch (...) {  // out of memory: nothing sensible is left to do
  }
  os::exit_process(0);
}

// Runs in every program built with mpp, before its static initialisers (see the top of this
// file): records the program's first process, and serves in a copy started by spawn_tracker()
// (glibc passes main's arguments to constructors: argv[0] is "mpp-tracker" there).
[[gnu::constructor(101)]] [[maybe_unused]] static void tracker_entry(int argc, char** argv,
                                                                     char**) noexcept {
  if (program_root().pid != 0) return;  // another translation unit's copy ran first
  if (argc >= 1 && argv != nullptr && argv[0] != nullptr &&
      std::strcmp(argv[0], os::kTrackerName) == 0 && os::is_tracker_connection(os::kTrackerFd)) {
    serving() = true;
    if (!os::become_tracker()) os::exit_process(1);
    serve(os::kTrackerFd);
  }
  program_root() = ProcessRef::self();
}

// Whether the code of this header (and so tracker_entry) is in the executable itself.
inline bool start_here() noexcept {
  return os::in_main_executable(reinterpret_cast<const void*>(&start_here));
}

}  // namespace tracker_detail

#else  // Windows: a named object vanishes with its last handle; nothing is ever left behind

inline void track(std::string_view, const SegmentHeader&) noexcept {}
inline void untrack(std::string_view, const SegmentHeader&) noexcept {}
inline void track_block(std::string_view, std::uint64_t) noexcept {}
inline void untrack_block(std::string_view) noexcept {}

#endif

}  // namespace mpp::detail::tracker
