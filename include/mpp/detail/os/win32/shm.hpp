// mpp — Win32 backend, named shared memory: session-local file mappings of the current user,
// their views, and the memory of a view (SEC_RESERVE sections committed on demand).
#pragma once

#include "../../config.hpp"

#if !defined(MPP_OS_WINDOWS)
#  error "mpp: detail/os/win32/shm.hpp included on a non-Windows platform"
#endif

#include <cerrno>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common.hpp"

namespace mpp::detail::os {

namespace win32_detail {
/// Mapped views of this process, so a wait on an address can be keyed by (object name, offset).
struct Mapping {
  std::uintptr_t base;
  std::uint64_t size;
  std::string name;
};
struct Registry {
  std::mutex mu;
  std::vector<Mapping> mappings;
  std::map<std::string, HANDLE> semaphores;  // key -> named semaphore (kept for the process life)
};
inline Registry& registry() {
  static Registry* r = new Registry;  // never destroyed: waits may run during static destruction
  return *r;
}

using NtQuerySectionFn = LONG(NTAPI*)(HANDLE, int, PVOID, ULONG, PULONG);
struct SectionBasicInformation {
  PVOID base;
  ULONG attributes;
  LARGE_INTEGER size;
};
}  // namespace win32_detail

/// Whether a segment must keep its OS handle open while mapped (a mapping's name lives only as long
/// as a handle to it).
inline constexpr bool kKeepHandleWhileMapped = true;

namespace win32_detail {
/// CreateFileMapping of `size` pagefile-backed bytes named `name`, with `section` SEC_COMMIT
/// (charged in full now) or SEC_RESERVE (pages are committed by commit() before first use).
inline Fd create_mapping(std::string_view name, std::uint64_t size, DWORD section) {
  OwnerOnly sa;
  Fd h(::CreateFileMappingW(INVALID_HANDLE_VALUE, sa.get(), PAGE_READWRITE | section,
                            static_cast<DWORD>(size >> 32), static_cast<DWORD>(size),
                            kernel_name(name).c_str()));
  const DWORD err = ::GetLastError();
  if (h.get() == nullptr) {
    if (err == ERROR_ACCESS_DENIED)
      fail<ExistsError>("'{}' already exists and belongs to someone else; pick another name", name);
    throw_errno("CreateFileMapping", name, err);
  }
  if (err == ERROR_ALREADY_EXISTS)
    fail<ExistsError>("'{}' already exists; open it with open() or pick another name", name);
  return h;
}
}  // namespace win32_detail

//!Effects: creates the named file mapping `name` (session-local, current user only) of `size`
//! bytes, committed in full (so `reserve`, the bytes POSIX backs now, is all of it here).
//! Throws: ExistsError if the name is taken, OSError otherwise.
inline Fd shm_create(std::string_view name, std::uint64_t size,
                     std::uint64_t reserve = UINT64_MAX) {
  (void)reserve;
  return win32_detail::create_mapping(name, size, SEC_COMMIT);
}

//!Returns: nullopt: a section is charged to the commit limit, not to a file system.
inline std::optional<std::uint64_t> shm_free_bytes() noexcept { return std::nullopt; }

//!Throws: NoSpaceError saying that the system has no memory left for `needed` more bytes of
//! `name` (the twin of the POSIX "/dev/shm is full" error).
[[noreturn]] inline void fail_no_space(std::string_view name, std::uint64_t needed,
                                       std::string_view advice = {}) {
  throw NoSpaceError(fmt::format("out of memory: {} bytes needed for '{}' (the system commit "
                                 "limit is reached); free memory or enlarge the page file{}",
                                 needed, name, advice),
                     ENOMEM);
}

//!Effects: opens the existing named file mapping `name`.
//!Throws: NotFoundError if it does not exist, PermissionError if access is denied.
inline Fd shm_open_existing(std::string_view name) {
  // FILE_MAP_ALL_ACCESS includes SECTION_QUERY, which file_info() needs.
  Fd h(::OpenFileMappingW(FILE_MAP_ALL_ACCESS, FALSE, kernel_name(name).c_str()));
  if (h.get() == nullptr) {
    const DWORD err = ::GetLastError();
    if (err == ERROR_FILE_NOT_FOUND)
      fail<NotFoundError>(
          "no mpp object named '{}'; create it first (create/open_or_create) "
          "or check the name",
          name);
    if (err == ERROR_ACCESS_DENIED)
      fail<PermissionError>("'{}' exists but belongs to another user; choose another name", name);
    throw_errno("OpenFileMapping", name, err);
  }
  return h;
}

//!Effects: Windows removes a mapping's name when its last handle and view are gone, so there is
//! nothing to remove explicitly. Returns: false.
inline bool shm_remove(std::string_view) { return false; }

/// What the kernel says about an open mapping.
struct FileInfo {
  std::uint64_t size;          ///< size of the section in bytes
  bool owned_by_us;            ///< created by this user (owner-only DACL)
  bool private_mode;           ///< no access for other users
  bool regular;                ///< always true for a file mapping
  bool headered;               ///< always true: every object starts with an mpp header on Windows
  std::int64_t mtime_unix_ms;  ///< not known: 0
};

inline FileInfo file_info(const Fd& h, std::string_view name) {
  static const auto query =
      reinterpret_cast<win32_detail::NtQuerySectionFn>(reinterpret_cast<void*>(
          ::GetProcAddress(::GetModuleHandleW(L"ntdll.dll"), "NtQuerySection")));
  win32_detail::SectionBasicInformation info{};
  const LONG status = query == nullptr ? -1 : query(h.get(), 0, &info, sizeof info, nullptr);
  if (status < 0)
    throw OSError(fmt::format("NtQuerySection('{}') failed with status {:#x}", name,
                              static_cast<unsigned long>(status)),
                  static_cast<int>(status));
  // The session-local namespace and the owner-only DACL given at creation keep other users out;
  // OpenFileMapping already failed with ERROR_ACCESS_DENIED for objects we may not use.
  return FileInfo{static_cast<std::uint64_t>(info.size.QuadPart), true, true, true, true, 0};
}

//!Effects: maps `size` bytes of the mapping read-write and remembers the view for wait keys.
inline void* map(const Fd& h, std::uint64_t size, std::string_view name) {
  void* p = ::MapViewOfFile(h.get(), FILE_MAP_READ | FILE_MAP_WRITE, 0, 0, size);
  if (p == nullptr) throw_errno("MapViewOfFile", name, ::GetLastError());
  auto& r = win32_detail::registry();
  std::lock_guard<std::mutex> g(r.mu);
  r.mappings.push_back({reinterpret_cast<std::uintptr_t>(p), size, std::string(name)});
  return p;
}

/// Unmaps a view returned by map().
inline void unmap(void* p, std::uint64_t) noexcept {
  if (p == nullptr) return;
  {
    auto& r = win32_detail::registry();
    std::lock_guard<std::mutex> g(r.mu);
    for (auto it = r.mappings.begin(); it != r.mappings.end(); ++it)
      if (it->base == reinterpret_cast<std::uintptr_t>(p)) {
        r.mappings.erase(it);
        break;
      }
  }
  ::UnmapViewOfFile(p);
}

/// Size of a memory page.
inline std::size_t page_size() noexcept {
  SYSTEM_INFO si;
  ::GetSystemInfo(&si);
  return si.dwPageSize;
}

// A queue's item area or a manager's heap is mostly never touched. A SEC_COMMIT mapping would be
// charged against the commit limit in full (GiBs), so these are SEC_RESERVE mappings: a view
// starts out reserved, and commit() commits pages of the section before they are first touched.
// A commit through one view is a commit of the section: every process's view sees those pages.
// Touching a page nobody committed is an access violation (where Linux would read zeros).

//!Effects: creates the named file mapping `name` of `size` bytes as shm_create() does, but only
//! reserved (SEC_RESERVE): nothing is charged until commit() (the caller commits what POSIX
//! reserves, `reserve` bytes, itself). Throws: as shm_create().
inline Fd shm_create_sparse(std::string_view name, std::uint64_t size, std::uint64_t reserve) {
  (void)reserve;
  return win32_detail::create_mapping(name, size, SEC_RESERVE);
}

//!Effects: commits the still-reserved pages of [p, p + n) (VirtualAlloc MEM_COMMIT on the view),
//! so they can be used by every process that maps the section. Pages committed already (all of a
//! SEC_COMMIT view) are left as they are. Returns: 0, or ENOMEM when the commit limit is reached
//! (EFAULT if the range is not part of a mapped view).
inline int commit(void* p, std::size_t n) noexcept {
  if (n == 0) return 0;
  auto* at = static_cast<char*>(p);
  char* const end = at + n;
  while (at < end) {
    MEMORY_BASIC_INFORMATION mbi{};
    if (::VirtualQuery(at, &mbi, sizeof mbi) == 0) return EFAULT;
    char* const region_end = static_cast<char*>(mbi.BaseAddress) + mbi.RegionSize;
    char* const stop = region_end < end ? region_end : end;
    if (mbi.State == MEM_RESERVE) {
      if (::VirtualAlloc(at, static_cast<SIZE_T>(stop - at), MEM_COMMIT, PAGE_READWRITE) ==
          nullptr) {
        const DWORD err = ::GetLastError();
        return err == ERROR_COMMITMENT_LIMIT || err == ERROR_NOT_ENOUGH_MEMORY ||
                       err == ERROR_OUTOFMEMORY || err == ERROR_COMMITMENT_MINIMUM
                   ? ENOMEM
                   : EFAULT;
      }
    } else if (mbi.State != MEM_COMMIT) {
      return EFAULT;
    }
    at = stop;
  }
  return 0;
}

/// Whether a sparse segment's pages must be committed (commit()) before they are touched.
inline constexpr bool kSparseNeedsCommit = true;

//!Returns: whether every page of [p, p + n) is committed (VirtualQuery), i.e. can be touched.
inline bool committed(const void* p, std::size_t n) noexcept {
  const auto* at = static_cast<const char*>(p);
  const char* const end = at + n;
  while (at < end) {
    MEMORY_BASIC_INFORMATION mbi{};
    if (::VirtualQuery(at, &mbi, sizeof mbi) == 0 || mbi.State != MEM_COMMIT) return false;
    at = static_cast<const char*>(mbi.BaseAddress) + mbi.RegionSize;
  }
  return true;
}

//!Returns: false: a section cannot shrink while it is mapped.
inline bool shm_shrunk(std::string_view name, std::uint64_t size) {
  (void)name;
  (void)size;
  return false;
}

//!Effects: none: without fork() no page is shared copy-on-write with a worker.
inline void discard_private(void* p, std::size_t n) noexcept {
  (void)p;
  (void)n;
}

//!Effects: commits the pages of [p, p + n) that are still reserved (see commit()), so running
//! out of memory is an error code here instead of an access violation later.
//!Returns: 0, or the errno value commit() returns.
inline int populate_write(void* p, std::size_t n) noexcept { return commit(p, n); }

}  // namespace mpp::detail::os
