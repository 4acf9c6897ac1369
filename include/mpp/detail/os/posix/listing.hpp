// mpp — POSIX backend, listing: the names of /dev/shm and the processes that map or hold
// its objects (for `mpp ls`, `mpp gc` and the crash tracker).
#pragma once

#include "../../config.hpp"

#if !defined(MPP_OS_POSIX)
#  error "mpp: detail/os/posix/listing.hpp included on a non-POSIX platform"
#endif

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "shm.hpp"

namespace mpp::detail::os {

//!Returns: the names of the shared-memory objects starting with `prefix`, sorted (empty if the
//! directory cannot be read). Entries of any type are listed, planted links included.
inline std::vector<std::string> shm_list(std::string_view prefix) {
  std::vector<std::string> names;
  DIR* d = ::opendir(kShmDirectory);
  if (d == nullptr) return names;
  while (const struct dirent* e = ::readdir(d)) {
    const std::string_view n(e->d_name);
    if (n.substr(0, prefix.size()) == prefix) names.emplace_back(n);
  }
  ::closedir(d);
  std::sort(names.begin(), names.end());
  return names;
}

/// A process that has a shared-memory object mapped.
struct ShmMapper {
  std::uint64_t inode;  ///< the object (st_ino under kShmDirectory)
  pid_type pid;         ///< the process mapping it
};

//!Returns: every (object, process) pair where a process this user may inspect has an object of
//! kShmDirectory mapped, from /proc/<pid>/maps — whether or not the process registered itself
//! in the object's attach table (a forked child using an inherited handle may not have). Linux
//! only; empty if /proc cannot be read.
inline std::vector<ShmMapper> shm_mappers() {
  std::vector<ShmMapper> out;
  DIR* proc = ::opendir("/proc");
  if (proc == nullptr) return out;
  const std::string dir = std::string(kShmDirectory) + "/";
  std::vector<char> line(4096);
  while (const struct dirent* e = ::readdir(proc)) {
    char* end = nullptr;
    const long pid = std::strtol(e->d_name, &end, 10);
    if (pid <= 0 || end == e->d_name || *end != '\0') continue;
    const std::string path = "/proc/" + std::string(e->d_name) + "/maps";
    std::FILE* f = std::fopen(path.c_str(), "re");
    if (f == nullptr) continue;  // gone, or another user's
    std::uint64_t last = 0;
    while (std::fgets(line.data(), static_cast<int>(line.size()), f) != nullptr) {
      // "start-end perms offset dev inode   path"
      unsigned long long inode = 0;
      int at = 0;
      if (std::sscanf(line.data(), "%*s %*s %*s %*s %llu %n", &inode, &at) != 1 || inode == 0)
        continue;
      if (std::strncmp(line.data() + at, dir.c_str(), dir.size()) != 0 || inode == last) continue;
      last = inode;  // a mapping often spans several consecutive lines
      out.push_back({static_cast<std::uint64_t>(inode), static_cast<pid_type>(pid)});
    }
    std::fclose(f);
  }
  ::closedir(proc);
  return out;
}

//!Returns: every (object, process) pair where a process this user may inspect holds a
//! descriptor of an object of kShmDirectory, from /proc/<pid>/fd (the caller included).
//! A creator holds one from the moment its shm_open makes the name until it has mapped the
//! object, so an object nobody has open or mapped has no creator still building it. Linux only;
//! empty if /proc cannot be read.
inline std::vector<ShmMapper> shm_openers() {
  std::vector<ShmMapper> out;
  DIR* proc = ::opendir("/proc");
  if (proc == nullptr) return out;
  const std::string dir = std::string(kShmDirectory) + "/";
  while (const struct dirent* e = ::readdir(proc)) {
    char* end = nullptr;
    const long pid = std::strtol(e->d_name, &end, 10);
    if (pid <= 0 || end == e->d_name || *end != '\0') continue;
    const std::string fds = "/proc/" + std::string(e->d_name) + "/fd";
    DIR* d = ::opendir(fds.c_str());
    if (d == nullptr) continue;  // gone, or another user's
    while (const struct dirent* f = ::readdir(d)) {
      if (f->d_name[0] == '.') continue;
      const std::string link = fds + "/" + f->d_name;
      char target[PATH_MAX];
      const ssize_t n = ::readlink(link.c_str(), target, sizeof target - 1);
      if (n <= 0 || static_cast<std::size_t>(n) < dir.size() ||
          std::strncmp(target, dir.c_str(), dir.size()) != 0)
        continue;
      struct stat st {};
      if (::stat(link.c_str(), &st) == 0)
        out.push_back({static_cast<std::uint64_t>(st.st_ino), static_cast<pid_type>(pid)});
    }
    ::closedir(d);
  }
  ::closedir(proc);
  return out;
}

}  // namespace mpp::detail::os
