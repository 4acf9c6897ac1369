// mpp — command-line registry of named mpp objects:
//   mpp ls                 list every mpp.* object (kind, element type, size, creator, users)
//   mpp gc [--dry-run]     remove objects whose every registered user is dead
//   mpp inspect NAME       print one object's header, attach table and gc verdict
//   mpp rm NAME            remove one name unconditionally (like mpp::unlink)
//   mpp --version          print the mpp version (MPP_VERSION_STRING)
// Objects are read through detail/registry.hpp: copied, never mapped or attached to, and every
// header field is checked before it is shown or believed.
#include <mpp/detail/registry.hpp>
#include <mpp/version.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <string_view>
#include <vector>

namespace {

namespace reg = mpp::detail::registry;

constexpr std::string_view kUsage =
    "usage: mpp ls [--prefix P]\n"
    "       mpp gc [--dry-run] [--grace SECONDS] [--include-corrupt] [--include-persistent]\n"
    "              [--prefix P]\n"
    "       mpp inspect NAME\n"
    "       mpp rm NAME\n"
    "       mpp --version\n"
    "\n"
    "ls       lists named mpp objects (/dev/shm/mpp.*): kind, element type, size, creator pid,\n"
    "         live users / registered users, queue depth, state.\n"
    "gc       removes objects whose creator and attached processes are all dead (pid + start\n"
    "         time), including half-built ones whose creator died; never one with a live user.\n"
    "         One too new to name its creator is removed when no live process has it open or\n"
    "         mapped (its creator died), else kept for --grace seconds (default 10).\n"
    "         Persistent objects (created with persistent = true, untracked SharedMemory) are\n"
    "         kept unless --include-persistent. --dry-run only prints what would be removed.\n"
    "inspect  prints one object's header fields, attach table and gc verdict.\n"
    "rm       removes a name regardless of its users (mapped views keep working).\n";

std::string size_text(std::uint64_t n) {
  if (n < 10 * 1024) return fmt::format("{}", n);
  if (n < 10 * 1024 * 1024) return fmt::format("{}K", n / 1024);
  return fmt::format("{}M", n / (1024 * 1024));
}

std::string fit(const std::string& s, std::size_t width) {
  return s.size() <= width ? s : s.substr(0, width - 1) + "~";
}

std::string users_text(const reg::ObjectInfo& o) {
  if (o.block) return fmt::format("{}/{}", o.lock_users, o.lock_users);  // locks: all live
  if (!o.header_readable) return "-";
  // live / registered: the creator counts (as live_users() counts it) if not in the table.
  std::size_t registered = o.attachers.size();
  const bool creator_in_table = std::any_of(o.attachers.begin(), o.attachers.end(),
                                            [&](const auto& a) { return a.who == o.creator; });
  if (o.creator.pid > 0 && !creator_in_table) ++registered;
  return fmt::format("{}/{}", reg::live_users(o).size(), registered);
}

int cmd_ls(std::string_view prefix) {
  const auto objects = reg::scan(prefix);
  fmt::print("{:<40} {:<14} {:<24} {:>8} {:>8} {:>6} {:>6}  {}\n", "NAME", "KIND", "TYPE", "SIZE",
             "CREATOR", "USERS", "DEPTH", "STATE");
  for (const auto& o : objects) {
    const bool h = o.header_readable || o.block;
    const auto depth = reg::queue_depth(o);
    fmt::print(
        "{:<40} {:<14} {:<24} {:>8} {:>8} {:>6} {:>6}  {}{}{}\n", o.name,
        h ? fit(o.kind_label, 14) : "-", h ? fit(o.type_name, 24) : "-", size_text(o.stat.size),
        h && o.creator.pid > 0 ? fmt::format("{}", o.creator.pid) : "-", users_text(o),
        depth ? fmt::format("{}", *depth) : "-",
        fmt::format("{}{}", reg::state_name(o.state), h && o.persistent ? " persistent" : ""),
        o.problem.empty() ? "" : ": ", o.problem);
  }
  return 0;
}

int cmd_gc(bool dry_run, const reg::GcPolicy& policy, std::string_view prefix) {
  int failures = 0, removed = 0, would = 0;
  for (const auto& e : reg::gc(dry_run, policy, prefix)) {
    if (e.verdict.remove && dry_run) {
      ++would;
      fmt::print("would remove {}: {}\n", e.info.name, e.verdict.reason);
    } else if (e.removed) {
      ++removed;
      fmt::print("removed {}: {}\n", e.info.name, e.verdict.reason);
    } else if (!e.error.empty()) {
      ++failures;
      fmt::print(stderr, "mpp gc: cannot remove {}: {}\n", e.info.name, e.error);
    } else {
      fmt::print("{} {}\n", e.info.name, e.verdict.reason);
    }
  }
  if (dry_run)
    fmt::print("{} object(s) would be removed (dry run: nothing was removed)\n", would);
  else
    fmt::print("{} object(s) removed\n", removed);
  return failures == 0 ? 0 : 1;
}

int cmd_inspect(std::string_view name) {
  const auto o = reg::inspect(name);
  if (o.state == reg::State::foreign && !o.stat.exists) {
    fmt::print(stderr, "mpp inspect: no object named '{}' (see `mpp ls`)\n", name);
    return 1;
  }
  fmt::print("name:            {}\n", o.name);
  fmt::print("state:           {}{}{}\n", reg::state_name(o.state), o.problem.empty() ? "" : " — ",
             o.problem);
  fmt::print("file:            {} bytes, uid {}, mode {:04o}\n", o.stat.size, o.stat.uid,
             o.stat.mode);
  if (o.block) {
    fmt::print("kind:            {} (a headerless block: {} bytes of data and nothing else)\n",
               o.kind_label, o.total_size);
    fmt::print("persistent:      {}\n",
               o.persistent ? "yes (untracked: kept until unlinked)" : "no");
    fmt::print("user locks:      {} (one per live handle)\n", o.lock_users);
  }
  if (o.header_readable) {
    fmt::print("kind:            {} ({})\n", o.kind_label, o.kind);
    fmt::print("element type:    {} (fingerprint {:#018x})\n", o.type_name, o.type_fingerprint);
    fmt::print("layout:          magic {:#018x}, version {}, header {} bytes, init state {}\n",
               o.magic, o.layout_version, o.header_size, o.init_state);
    fmt::print("sizes:           total {}, payload at {} size {}, capacity {}\n", o.total_size,
               o.payload_offset, o.payload_size, o.capacity);
    fmt::print("created:         unix ms {}\n", o.created_unix_ms);
    fmt::print("persistent:      {}\n",
               o.persistent ? "yes (gc keeps it when its users are gone)" : "no");
    fmt::print("creator:         pid {} (start tag {:#x}) {}\n", o.creator.pid, o.creator.start_tag,
               o.creator.pid > 0 ? (reg::process_alive(o.creator) ? "alive" : "dead") : "-");
    if (const auto depth = reg::queue_depth(o))
      fmt::print("queue depth:     {} (from the head/tail hints)\n", *depth);
    fmt::print("attach table:    {} entr{} in use ({} of {} ever handed out; one per process)\n",
               o.attachers.size(), o.attachers.size() == 1 ? "y" : "ies",
               std::min(o.attach_used, o.attach_capacity), o.attach_capacity);
    for (const auto& a : o.attachers)
      fmt::print("  [{:4}] pid {:>8} start tag {:#010x} {}\n", a.slot, a.who.pid, a.who.start_tag,
                 reg::process_alive(a.who) ? "alive" : "dead");
  }
  const auto v = reg::gc_verdict(o, mpp::detail::os::unix_time_ms());
  fmt::print("gc:              {}{}\n", v.remove ? "would remove (" + v.reason + ")" : v.reason,
             v.grace ? "; removed at once if no live process has it open (its creator died)" : "");
  return 0;
}

int cmd_rm(std::string_view name) {
  if (name.substr(0, 4) != "mpp.") {
    fmt::print(stderr, "mpp rm: '{}' is not an mpp name (they start with \"mpp.\")\n", name);
    return 2;
  }
  if (name.find('/') != std::string_view::npos) {
    fmt::print(stderr, "mpp rm: invalid name '{}'\n", name);
    return 2;
  }
  // Not mpp::unlink: a corrupt or planted name may not be a valid mpp name.
  if (!mpp::detail::os::shm_remove(name)) {
    fmt::print(stderr, "mpp rm: no object named '{}'\n", name);
    return 1;
  }
  fmt::print("removed {}\n", name);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string_view> args(argv + 1, argv + argc);
  auto usage = [] {
    fmt::print(stderr, "{}", kUsage);
    return 2;
  };
  if (args.empty()) return usage();
  try {
    const auto cmd = args[0];
    if (cmd == "-h" || cmd == "--help" || cmd == "help") {
      fmt::print("{}", kUsage);
      return 0;
    }
    if (cmd == "--version" || cmd == "version") {
      fmt::print("mpp {}\n", MPP_VERSION_STRING);
      return 0;
    }
    std::string prefix = "mpp.";
    bool dry_run = false;
    reg::GcPolicy policy;
    std::vector<std::string_view> positional;
    for (std::size_t i = 1; i < args.size(); ++i) {
      const auto a = args[i];
      if (a == "--dry-run" || a == "-n") {
        dry_run = true;
      } else if (a == "--include-corrupt") {
        policy.include_corrupt = true;
      } else if (a == "--include-persistent") {
        policy.include_persistent = true;
      } else if ((a == "--grace" || a == "--prefix") && i + 1 < args.size()) {
        const std::string v(args[++i]);
        if (a == "--prefix") {
          if (v.substr(0, 4) != "mpp.") return usage();
          prefix = v;
        } else {
          char* end = nullptr;
          const double s = std::strtod(v.c_str(), &end);
          if (end == v.c_str() || *end != '\0' || s < 0) return usage();
          policy.grace_ms = static_cast<std::int64_t>(s * 1000);
        }
      } else if (!a.empty() && a[0] == '-') {
        return usage();
      } else {
        positional.push_back(a);
      }
    }
    if (cmd == "ls" && positional.empty()) return cmd_ls(prefix);
    if (cmd == "gc" && positional.empty()) return cmd_gc(dry_run, policy, prefix);
    if (cmd == "inspect" && positional.size() == 1) return cmd_inspect(positional[0]);
    if (cmd == "rm" && positional.size() == 1) return cmd_rm(positional[0]);
    return usage();
  } catch (const std::exception& e) {
    fmt::print(stderr, "mpp: {}\n", e.what());
    return 1;
  }
}
