// mpp — the object registry behind the `mpp ls / gc / inspect` tool and the crash-safety tests:
// reads segment headers *defensively* (a copy of the bytes, never a mapping; every field checked
// before it is believed) and decides, from the creator word, the attach table and the user locks,
// whether an object still has a live user. SharedMemory blocks (POSIX) have no header: what is
// known of them comes from their mode and their user locks. No system calls here: the file
// system is reached through detail/os (shm_list, shm_open_readonly, read_at, shm_lstat,
// count_user_locks), liveness through ProcessRef.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../segment.hpp"
#include "../shared_memory.hpp"
#include "liveness.hpp"
#include "mpmc.hpp"
#include "os.hpp"

namespace mpp::detail::registry {

/// How far an object's header can be believed.
enum class State {
  ready,      ///< published, every header field consistent with the file
  building,   ///< its creator has not published it yet (or died before it did)
  empty,      ///< smaller than a header: created but never sized (or truncated by a hostile peer)
  truncated,  ///< published header, but the file is not the size the header records
  corrupt,    ///< published, but the header is inconsistent (bad magic, version, sizes, ...)
  foreign,    ///< not a regular shared-memory object we may read (a link, another user's, ...)
};

/// Short name of a State ("ready", "building", ...).
constexpr std::string_view state_name(State s) noexcept {
  switch (s) {
    case State::ready:
      return "ready";
    case State::building:
      return "building";
    case State::empty:
      return "empty";
    case State::truncated:
      return "truncated";
    case State::corrupt:
      return "corrupt";
    case State::foreign:
      return "foreign";
  }
  return "?";
}

/// One attach-table entry that is in use.
struct Attacher {
  std::uint32_t slot;  ///< index in the attach table
  ProcessRef who;      ///< the process that claimed it
};

/// Everything the registry knows about one named object. Fields that could not be read keep
/// their zero value; `problem` says why the object is not `ready`.
struct ObjectInfo {
  std::string name;  ///< e.g. "mpp.jobs"
  State state = State::foreign;
  std::string problem;           ///< empty when ready
  os::ShmStat stat;              ///< file-system view (owner, mode, size, mtime)
  bool header_readable = false;  ///< the file holds a whole header (creator and attach table)
  std::uint32_t init_state = 0;
  std::uint32_t layout_version = 0;
  std::uint64_t magic = 0;
  std::uint32_t kind = 0;  ///< raw Kind value
  std::string kind_label;  ///< kind_name(), or "unknown(N)"
  std::uint32_t header_size = 0;
  std::uint64_t type_fingerprint = 0;
  std::string type_name;  ///< sanitised (printable ASCII only, at most kTypeNameCapacity-1)
  std::uint64_t total_size = 0;
  std::uint64_t payload_offset = 0;
  std::uint64_t payload_size = 0;
  std::uint64_t capacity = 0;
  std::uint64_t created_unix_ms = 0;
  ProcessRef creator;       ///< pid 0 when not written yet
  bool persistent = false;  ///< its creator asked to keep it after its users are gone
  /// A headerless SharedMemory block (not marked os::kModeHeadered; POSIX): its users are its
  /// lock_users, `persistent` is os::kModeKeep, and no creator is recorded.
  bool block = false;
  /// Users marked by a user lock (SharedMemory and ShareableList handles); live by construction.
  std::uint32_t lock_users = 0;
  std::uint64_t attach_offset = 0;    ///< where the attach table starts (after the payload)
  std::uint32_t attach_capacity = 0;  ///< entries in it
  std::uint32_t attach_used = 0;      ///< entries ever handed out (as recorded; maybe a lie)
  std::vector<Attacher> attachers;    ///< non-empty attach entries
  /// A copy of the first bytes of the payload (kind-specific state such as a queue's indices),
  /// for ready/truncated objects; untrusted like everything else.
  std::vector<std::byte> payload_head;
};

/// Bytes of payload that inspect() copies: enough for a queue's head and tail hints.
inline constexpr std::size_t kPayloadPeek = offsetof(mpmc::Header, head) + sizeof(std::uint64_t);

namespace registry_detail {
template <class T>
T field(std::span<const std::byte> b, std::size_t offset) noexcept {
  T v{};
  if (offset <= b.size() && sizeof(T) <= b.size() - offset)
    std::memcpy(&v, b.data() + offset, sizeof(T));
  return v;
}
inline std::string printable(const char* p, std::size_t n) {
  std::string s;
  for (std::size_t i = 0; i < n && p[i] != '\0'; ++i) {
    const unsigned char c = static_cast<unsigned char>(p[i]);
    s.push_back(c >= 0x20 && c < 0x7f ? static_cast<char>(c) : '?');
  }
  return s;
}
}  // namespace registry_detail

//!Returns: where the used part of `o`'s attach table lies in the file ({offset, bytes}), or
//! nullopt if the header's numbers do not describe a table inside it after the payload.
inline std::optional<std::pair<std::uint64_t, std::uint64_t>> attach_span(const ObjectInfo& o) {
  const std::uint64_t off = o.attach_offset, cap = o.attach_capacity;
  const std::uint64_t payload_end = o.payload_offset + o.payload_size;
  if (o.payload_offset > o.total_size || o.payload_size > o.total_size - o.payload_offset ||
      off < payload_end || off % alignof(AttachSlot) != 0 || off > o.total_size || cap == 0 ||
      cap > kMaxAttach || cap > (o.total_size - off) / sizeof(AttachSlot))
    return std::nullopt;
  return std::pair{off, std::min<std::uint64_t>(o.attach_used, cap) * sizeof(AttachSlot)};
}

//!Effects: fills o.attachers from `table`, a copy of the used part of the attach table.
inline void parse_attachers(ObjectInfo& o, std::span<const std::byte> table) {
  o.attachers.clear();
  const std::size_t n = table.size() / sizeof(AttachSlot);
  for (std::size_t i = 0; i < n; ++i) {
    const auto w = registry_detail::field<std::uint64_t>(table, i * sizeof(AttachSlot));
    if (w != 0) o.attachers.push_back({static_cast<std::uint32_t>(i), ProcessRef::unpack(w)});
  }
}

namespace registry_detail {
//!Effects: copies every header field of `bytes` (at least a header long) into `o`, and the attach
//! table when `bytes` holds it. Returns: whether the type name is terminated.
inline bool read_header_fields(ObjectInfo& o, std::span<const std::byte> bytes) {
  using H = SegmentHeader;
  o.header_readable = true;
  o.init_state = field<std::uint32_t>(bytes, offsetof(H, init_state));
  o.layout_version = field<std::uint32_t>(bytes, offsetof(H, layout_version));
  o.magic = field<std::uint64_t>(bytes, offsetof(H, magic));
  o.kind = field<std::uint32_t>(bytes, offsetof(H, kind));
  {
    const auto label = kind_name(static_cast<Kind>(o.kind));
    o.kind_label = label == "unknown" ? fmt::format("unknown({})", o.kind) : std::string(label);
  }
  o.header_size = field<std::uint32_t>(bytes, offsetof(H, header_size));
  o.type_fingerprint = field<std::uint64_t>(bytes, offsetof(H, type_fingerprint));
  const char* tn = reinterpret_cast<const char*>(bytes.data() + offsetof(H, type_name));
  const bool tn_terminated = std::memchr(tn, '\0', kTypeNameCapacity) != nullptr;
  o.type_name = printable(tn, kTypeNameCapacity - 1);
  o.total_size = field<std::uint64_t>(bytes, offsetof(H, total_size));
  o.payload_offset = field<std::uint64_t>(bytes, offsetof(H, payload_offset));
  o.payload_size = field<std::uint64_t>(bytes, offsetof(H, payload_size));
  o.capacity = field<std::uint64_t>(bytes, offsetof(H, capacity));
  o.created_unix_ms = field<std::uint64_t>(bytes, offsetof(H, created_unix_ms));
  o.creator = ProcessRef::unpack(field<std::uint64_t>(bytes, offsetof(H, creator)));
  const auto flags = field<std::uint32_t>(bytes, offsetof(H, flags));
  o.persistent = (flags & kSegmentPersistent) != 0;
  o.attach_offset = field<std::uint64_t>(bytes, offsetof(H, attach_offset));
  o.attach_capacity = field<std::uint32_t>(bytes, offsetof(H, attach_capacity));
  o.attach_used = field<std::uint32_t>(bytes, offsetof(H, attach_used));
  // `bytes` may be the whole object (a fuzzer's input): then the table is read from it too.
  if (const auto span = attach_span(o);
      span && span->first <= bytes.size() && span->second <= bytes.size() - span->first)
    parse_attachers(o, bytes.subspan(static_cast<std::size_t>(span->first),
                                     static_cast<std::size_t>(span->second)));
  return tn_terminated;
}

//!Returns: the first inconsistency of a published header's fields in `o`, or an empty string.
inline std::string header_problem(const ObjectInfo& o, bool type_name_terminated) {
  using H = SegmentHeader;
  if (o.init_state != kInitReady) return fmt::format("invalid init state {}", o.init_state);
  if (o.magic != kSegmentMagic)
    return fmt::format("bad magic {:#018x}: not an mpp object", o.magic);
  if (o.layout_version != kLayoutVersion)
    return fmt::format("layout version {} (this tool reads {})", o.layout_version, kLayoutVersion);
  if (o.header_size != sizeof(H))
    return fmt::format("header size {} (expected {})", o.header_size, sizeof(H));
  if (!type_name_terminated) return "type name not terminated";
  if (o.payload_offset < sizeof(H) || o.payload_offset % kCacheLine != 0 ||
      o.payload_offset > o.total_size || o.payload_size > o.total_size - o.payload_offset)
    return fmt::format("payload [{}, +{}) does not fit in {} bytes", o.payload_offset,
                       o.payload_size, o.total_size);
  if (o.creator.pid <= 0) return fmt::format("invalid creator pid {}", o.creator.pid);
  if (!attach_span(o))
    return fmt::format("attach table [{}, {} entries) does not fit after the payload in {} bytes",
                       o.attach_offset, o.attach_capacity, o.total_size);
  return {};
}
}  // namespace registry_detail

//!Returns: what the first bytes of an object say about it. `bytes` is a copy of (at most) the
//! header — it may be shorter than a header, or hold any values at all; `file_size` is the size
//! of the object as the file system reports it. Never reads outside `bytes`, never throws
//! anything but std::bad_alloc.
inline ObjectInfo parse_header(std::string_view name, std::span<const std::byte> bytes,
                               std::uint64_t file_size) {
  ObjectInfo o;
  o.name = std::string(name);
  o.stat.size = file_size;
  if (bytes.size() < sizeof(SegmentHeader)) {
    o.state = State::empty;
    o.problem = fmt::format("{} bytes, smaller than an mpp header ({} bytes)", file_size,
                            sizeof(SegmentHeader));
    return o;
  }
  const bool tn_terminated = registry_detail::read_header_fields(o, bytes);
  if (o.init_state == kInitBuilding) {
    o.state = State::building;
    o.problem = o.creator.pid == 0 ? "being created (creator not recorded yet)"
                                   : fmt::format("being initialised by pid {}", o.creator.pid);
    return o;
  }
  o.problem = registry_detail::header_problem(o, tn_terminated);
  if (!o.problem.empty()) {
    o.state = State::corrupt;
  } else if (o.total_size != file_size) {
    o.state = State::truncated;
    o.problem = fmt::format("header says {} bytes, the file has {}", o.total_size, file_size);
  } else {
    o.state = State::ready;
  }
  return o;
}

//!Returns: what is known of the headerless block `name` (open as `fd`, status `st`): a
//! ShareableList if its first bytes say so, else a SharedMemory; never `building` (an empty
//! block is `empty`).
inline ObjectInfo inspect_block(std::string_view name, const os::Fd& fd, const os::ShmStat& st) {
  ObjectInfo o;
  o.name = std::string(name);
  o.stat = st;
  o.block = true;
  o.persistent = (st.mode & os::kModeKeep) != 0;
  o.lock_users = os::count_user_locks(fd).value_or(0);
  o.total_size = o.payload_size = o.capacity = st.size;
  std::uint64_t magic = 0;
  const bool list =
      os::read_at(fd, 0, &magic, sizeof magic) == sizeof magic && magic == kShareableListMagic;
  o.kind = static_cast<std::uint32_t>(list ? Kind::shareable_list : Kind::shared_memory);
  o.kind_label = std::string(kind_name(static_cast<Kind>(o.kind)));
  o.state = st.size == 0 ? State::empty : State::ready;
  if (st.size == 0) o.problem = "an empty block (its creator has not sized it yet, or died first)";
  if (!st.owned_by_us) {
    o.problem =
        fmt::format("owned by uid {}{}{}", st.uid, o.problem.empty() ? "" : "; ", o.problem);
    o.state = State::foreign;
  }
  return o;
}

//!Effects: reads the object `name` without attaching to it, mapping it or following a link.
//!Returns: its ObjectInfo (state foreign with a problem if it cannot be read). Never throws on
//! hostile content; a concurrent truncation only yields a shorter copy.
inline ObjectInfo inspect(std::string_view name) {
  const os::ShmStat ls = os::shm_lstat(name);
  auto foreign = [&](std::string why) {
    ObjectInfo o;
    o.name = std::string(name);
    o.stat = ls;
    o.state = State::foreign;
    o.problem = std::move(why);
    return o;
  };
  if (!ls.exists) return foreign("no such object");
  if (ls.symlink) return foreign("a symbolic link (planted? mpp never creates links)");
  if (!ls.regular) return foreign("not a regular shared-memory object");
  int err = 0;
  os::Fd fd = os::shm_open_readonly(name, err);
  if (fd.get() < 0) return foreign(fmt::format("cannot open: {}", std::strerror(err)));
  os::ShmStat st;
  try {
    st = os::shm_fstat(fd, name);
  } catch (const Error& e) {
    return foreign(e.what());
  }
  if (!st.regular) return foreign("not a regular shared-memory object");
  if ((st.mode & os::kModeHeadered) == 0) return inspect_block(name, fd, st);
  std::vector<std::byte> buf(sizeof(SegmentHeader));
  buf.resize(os::read_at(fd, 0, buf.data(), buf.size()));
  ObjectInfo o = parse_header(name, buf, st.size);
  o.stat = st;
  // The entries ever handed out (the rest are free and may be pages never allocated).
  if (const auto span = o.header_readable ? attach_span(o) : std::nullopt;
      span && span->second > 0 && span->first + span->second <= st.size) {
    std::vector<std::byte> table(static_cast<std::size_t>(span->second));
    table.resize(os::read_at(fd, span->first, table.data(), table.size()));
    parse_attachers(o, table);
  }
  // Should the kernel not tell, gc still keeps an object that a live process has mapped.
  o.lock_users = os::count_user_locks(fd).value_or(0);
  if ((o.state == State::ready || o.state == State::truncated) && o.payload_size >= kPayloadPeek) {
    o.payload_head.resize(kPayloadPeek);
    o.payload_head.resize(os::read_at(fd, o.payload_offset, o.payload_head.data(), kPayloadPeek));
  }
  if (!st.owned_by_us) {
    o.problem =
        fmt::format("owned by uid {}{}{}", st.uid, o.problem.empty() ? "" : "; ", o.problem);
    o.state = State::foreign;
  }
  return o;
}

//!Returns: every object whose name starts with "mpp.", inspected.
inline std::vector<ObjectInfo> scan(std::string_view prefix = "mpp.") {
  std::vector<ObjectInfo> out;
  for (const auto& n : os::shm_list(prefix)) out.push_back(inspect(n));
  return out;
}

//!Returns: the number of items in a queue (Queue, SimpleQueue, JoinableQueue) as its tail and
//! head hints say — exact when no put/get is in flight and no process died inside one — or
//! nullopt when `o` is not a queue or the hints are not plausible.
inline std::optional<std::uint64_t> queue_depth(const ObjectInfo& o) {
  const auto k = static_cast<Kind>(o.kind);
  if (k != Kind::queue && k != Kind::simple_queue && k != Kind::joinable_queue) return std::nullopt;
  const std::span<const std::byte> b = o.payload_head;
  using registry_detail::field;
  if (b.size() < kPayloadPeek ||
      field<std::uint64_t>(b, offsetof(mpmc::Header, magic)) != mpmc::kMagic)
    return std::nullopt;
  const auto cap = field<std::uint64_t>(b, offsetof(mpmc::Header, capacity));
  const auto tail = field<std::uint64_t>(b, offsetof(mpmc::Header, tail));
  const auto head = field<std::uint64_t>(b, offsetof(mpmc::Header, head));
  if (tail < head || tail - head > cap) return std::nullopt;
  return tail - head;
}

/// Tells whether a process is alive (injectable for tests and fuzzing).
using AliveFn = std::function<bool(const ProcessRef&)>;

/// The default liveness test: pid + start time (ProcessRef::alive).
inline bool process_alive(const ProcessRef& p) { return p.alive(); }

//!Returns: the live registered users of `o`: its creator and its attach-table holders, each
//! process counted once. Users marked by a user lock are counted in o.lock_users instead (the
//! kernel does not say which processes hold them).
inline std::vector<ProcessRef> live_users(const ObjectInfo& o,
                                          const AliveFn& alive = process_alive) {
  std::vector<ProcessRef> live;
  auto add = [&](const ProcessRef& p) {
    if (p.pid <= 0) return;
    for (const auto& q : live)
      if (q == p) return;
    if (alive(p)) live.push_back(p);
  };
  if (o.header_readable) {
    add(o.creator);
    for (const auto& a : o.attachers) add(a.who);
  }
  return live;
}

/// gc's decision about one object.
struct Verdict {
  bool remove = false;  ///< true: garbage, no registered user can still be using it
  std::string reason;   ///< why (for the tool's output)
  /// Kept only for the grace period: no creator is recorded yet, so none can be judged dead
  /// from the object. gc() removes it anyway when no live process has it open or mapped (its
  /// creator holds a descriptor from the moment the name exists: it died).
  bool grace = false;
};

/// How careful gc is.
struct GcPolicy {
  /// An object with no recorded creator (between shm_open and the creator's first write) is left
  /// alone until its last modification is this old.
  std::int64_t grace_ms = 10'000;
  /// Also judge objects whose header is inconsistent (their attach table is then only a hint).
  bool include_corrupt = false;
  /// Also remove persistent objects (created with `persistent`, or an untracked SharedMemory)
  /// whose users are all dead; by default they are kept, as their creator asked.
  bool include_persistent = false;
};

//!Returns: whether gc may remove `o`: only when it is ours, a regular object, and every user it
//! registered (creator + attach table) is dead; a header too short or too fresh to name its
//! creator is kept until the grace period passed; a published persistent object is kept unless
//! policy.include_persistent. Never removes an object with a live user.
inline Verdict gc_verdict(const ObjectInfo& o, std::int64_t now_unix_ms,
                          const GcPolicy& policy = {}, const AliveFn& alive = process_alive) {
  if (o.state == State::foreign) return {false, "kept: " + o.problem};
  if (o.state == State::corrupt && !policy.include_corrupt)
    return {false, fmt::format("kept: corrupt header ({}); remove it with `mpp rm {}` if you are "
                               "sure nobody uses it",
                               o.problem, o.name)};
  if (o.lock_users > 0)
    return {false, fmt::format("kept: {} user{} hold{} a user lock", o.lock_users,
                               o.lock_users == 1 ? "" : "s", o.lock_users == 1 ? "s" : "")};
  const auto live = live_users(o, alive);
  if (!live.empty()) {
    std::string pids;
    for (const auto& p : live) pids += fmt::format("{}{}", pids.empty() ? "" : ",", p.pid);
    return {false, fmt::format("kept: {} live user{} (pid {})", live.size(),
                               live.size() == 1 ? "" : "s", pids)};
  }
  if (o.block) {
    if (o.persistent && !policy.include_persistent)
      return {false, fmt::format("kept: persistent (an untracked SharedMemory, kept until "
                                 "unlinked); remove it with `mpp rm {}` (or `mpp gc "
                                 "--include-persistent`)",
                                 o.name)};
    // A creator takes its user lock before it sizes the block: only an empty one may still
    // have a creator that holds no lock yet.
    if (o.state == State::empty) {
      const std::int64_t age = now_unix_ms - o.stat.mtime_unix_ms;
      if (age < policy.grace_ms)
        return {false,
                fmt::format("kept: empty and only {} ms old (grace {} ms)", age, policy.grace_ms),
                true};
      return {true, fmt::format("empty after {} s: abandoned while being created", age / 1000)};
    }
    return {true, "no process holds it: its users closed it or died"};
  }
  const bool creator_known = o.header_readable && o.creator.pid > 0;
  if (!creator_known) {
    const std::int64_t age = now_unix_ms - o.stat.mtime_unix_ms;
    if (age < policy.grace_ms)
      return {false,
              fmt::format("kept: no creator recorded yet and only {} ms old (grace {} ms)", age,
                          policy.grace_ms),
              true};
    return {true, fmt::format("no creator recorded after {} s: abandoned while being created",
                              age / 1000)};
  }
  if (o.state == State::building)
    return {true,
            fmt::format("half-built: creator pid {} died while initialising it", o.creator.pid)};
  if (o.persistent && !policy.include_persistent)
    return {false, fmt::format("kept: persistent, its users are gone but its creator asked to keep "
                               "it; remove it with `mpp rm {}` (or `mpp gc --include-persistent`)",
                               o.name)};
  return {true, fmt::format("creator pid {} and all {} attached users are dead", o.creator.pid,
                            o.attachers.size())};
}

/// What gc did (or, with dry_run, would do) to one object.
struct GcEntry {
  ObjectInfo info;       ///< the object as last inspected
  Verdict verdict;       ///< the decision
  bool removed = false;  ///< the name was removed by this call
  std::string error;     ///< why removal failed, if it did
};

//!Effects: judges every object whose name starts with `prefix` and, unless `dry_run`, removes
//! the garbage. A candidate that a live process still has mapped is kept even though no live
//! process is registered in it (a forked child using an inherited Queue, Pipe, Value, ...
//! handle need not take an attach slot). An object kept only for the grace period (no creator
//! recorded yet) is garbage at once when no live process has it open or mapped: its creator
//! provably died while creating it, so an immediate restart can create the name again. Each
//! candidate is inspected a second time right before removal and kept if that changes the
//! verdict or the object behind the name (a process attaching after the first look, or the
//! name recreated).
//!Returns: one entry per object, in name order.
inline std::vector<GcEntry> gc(bool dry_run, const GcPolicy& policy = {},
                               std::string_view prefix = "mpp.",
                               const AliveFn& alive = process_alive) {
  std::vector<GcEntry> out;
  std::optional<std::vector<os::ShmMapper>> mappers;  // read once, when there is a candidate
  std::optional<std::vector<os::ShmMapper>> openers;  // read once, when an object is in grace
  // Whether a live process has the object with inode `inode` open (a creator building it).
  auto opened = [&](std::uint64_t inode) {
    if (!openers) openers = os::shm_openers();
    return std::any_of(openers->begin(), openers->end(), [&](const os::ShmMapper& m) {
      return m.inode == inode && ProcessRef{m.pid, 0}.alive();
    });
  };
  const auto dead_creator = [](const ObjectInfo& o) {
    return Verdict{true, o.block ? "empty, and no process has it open: its creator died before "
                                   "sizing it"
                                 : "no creator recorded, and no process has it open: its creator "
                                   "died while creating it"};
  };
  for (auto& info : scan(prefix)) {
    GcEntry e;
    e.verdict = gc_verdict(info, os::unix_time_ms(), policy, alive);
    e.info = std::move(info);
    bool grace = false;
    if (e.verdict.grace && !opened(e.info.stat.inode)) {
      e.verdict = dead_creator(e.info);
      grace = true;
    }
    if (e.verdict.remove) {
      if (!mappers) mappers = os::shm_mappers();
      for (const auto& m : *mappers) {
        if (m.inode != e.info.stat.inode || !ProcessRef{m.pid, 0}.alive()) continue;
        e.verdict = {false, fmt::format("kept: pid {} still has it mapped without being registered "
                                        "in it (a forked child using an inherited handle?)",
                                        m.pid)};
        break;
      }
    }
    if (e.verdict.remove && !dry_run) {
      ObjectInfo again = inspect(e.info.name);
      Verdict v2 = gc_verdict(again, os::unix_time_ms(), policy, alive);
      if (grace && v2.grace && again.stat.inode == e.info.stat.inode) v2 = dead_creator(again);
      if (!v2.remove || again.stat.inode != e.info.stat.inode) {
        e.verdict = {false, "kept: changed while being collected (" + v2.reason + ")"};
      } else {
        try {
          e.removed = os::shm_remove(e.info.name);
        } catch (const Error& err) {
          e.error = err.what();
        }
      }
    }
    out.push_back(std::move(e));
  }
  return out;
}

}  // namespace mpp::detail::registry
