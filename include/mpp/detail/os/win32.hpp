// mpp — Win32 backend: named file mappings (session-local, current user only), named-semaphore
// wait/wake, process liveness by handle and creation time. Together with posix.hpp, the only file
// that makes system calls. Mirrors posix.hpp function by function.
#pragma once

#include "../config.hpp"

#if !defined(MPP_OS_WINDOWS)
#  error "mpp: detail/os/win32.hpp included on a non-Windows platform"
#endif

#ifndef NOMINMAX
#  define NOMINMAX
#endif
#ifndef WIN32_LEAN_AND_MEAN
#  define WIN32_LEAN_AND_MEAN
#endif
#include <windows.h>
// windows.h first
#include <bcrypt.h>
#include <sddl.h>

#include <atomic>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../../errors.hpp"

namespace mpp::detail::os {

/// Process id type shared with the POSIX backend (both fit in 32 bits).
using pid_type = std::int32_t;

inline std::string last_error_text(DWORD err) {
  char* buf = nullptr;
  const DWORD n = ::FormatMessageA(
      FORMAT_MESSAGE_ALLOCATE_BUFFER | FORMAT_MESSAGE_FROM_SYSTEM | FORMAT_MESSAGE_IGNORE_INSERTS,
      nullptr, err, 0, reinterpret_cast<char*>(&buf), 0, nullptr);
  std::string s = n ? std::string(buf, n) : fmt::format("error {}", err);
  if (buf) ::LocalFree(buf);
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
  return s;
}

//!Throws: OSError naming the call, the object and the Win32 error text.
[[noreturn]] inline void throw_errno(const char* call, std::string_view object, DWORD err) {
  throw OSError(fmt::format("{}('{}') failed: {} (error {})", call, object, last_error_text(err),
                            err),
                static_cast<int>(err));
}

/// Owning kernel handle (CloseHandle on destruction); the Win32 counterpart of a POSIX fd.
class Fd {
 public:
  Fd() noexcept = default;
  explicit Fd(HANDLE h) noexcept : h_(h) {}
  Fd(Fd&& o) noexcept : h_(o.release()) {}
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) {
      reset();
      h_ = o.release();
    }
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { reset(); }
  /// The raw handle (nullptr if none).
  HANDLE get() const noexcept { return h_; }
  /// Gives up ownership and returns the handle.
  HANDLE release() noexcept { return std::exchange(h_, nullptr); }
  /// Closes the handle if one is held.
  void reset() noexcept {
    if (h_ != nullptr && h_ != INVALID_HANDLE_VALUE) ::CloseHandle(h_);
    h_ = nullptr;
  }

 private:
  HANDLE h_ = nullptr;
};

inline std::wstring widen(std::string_view s) {
  return std::wstring(s.begin(), s.end());  // names are validated ASCII
}

/// "Local\<name>": the session-local kernel namespace.
inline std::wstring kernel_name(std::string_view name) { return L"Local\\" + widen(name); }

namespace win32_detail {

/// The current user's SID as a string (for the owner-only DACL) and as a SID (for owner checks).
struct UserSid {
  std::vector<unsigned char> sid;
  std::wstring text;
};
inline const UserSid& user_sid() {
  static const UserSid u = [] {
    UserSid r;
    HANDLE token = nullptr;
    if (!::OpenProcessToken(::GetCurrentProcess(), TOKEN_QUERY, &token))
      throw_errno("OpenProcessToken", "", ::GetLastError());
    DWORD len = 0;
    ::GetTokenInformation(token, TokenUser, nullptr, 0, &len);
    std::vector<unsigned char> buf(len);
    if (!::GetTokenInformation(token, TokenUser, buf.data(), len, &len)) {
      const DWORD err = ::GetLastError();
      ::CloseHandle(token);
      throw_errno("GetTokenInformation", "", err);
    }
    ::CloseHandle(token);
    PSID sid = reinterpret_cast<TOKEN_USER*>(buf.data())->User.Sid;
    r.sid.assign(static_cast<unsigned char*>(sid),
                 static_cast<unsigned char*>(sid) + ::GetLengthSid(sid));
    LPWSTR s = nullptr;
    if (::ConvertSidToStringSidW(sid, &s)) {
      r.text = s;
      ::LocalFree(s);
    }
    return r;
  }();
  return u;
}

/// Security attributes granting access to the current user only (the analogue of mode 0600).
class OwnerOnly {
 public:
  OwnerOnly() {
    const std::wstring sddl = L"D:P(A;;GA;;;" + user_sid().text + L")";
    if (!::ConvertStringSecurityDescriptorToSecurityDescriptorW(sddl.c_str(), SDDL_REVISION_1,
                                                                &sd_, nullptr))
      throw_errno("ConvertStringSecurityDescriptorToSecurityDescriptor", "", ::GetLastError());
    sa_.nLength = sizeof sa_;
    sa_.lpSecurityDescriptor = sd_;
    sa_.bInheritHandle = FALSE;
  }
  ~OwnerOnly() { ::LocalFree(sd_); }
  OwnerOnly(const OwnerOnly&) = delete;
  OwnerOnly& operator=(const OwnerOnly&) = delete;
  SECURITY_ATTRIBUTES* get() noexcept { return &sa_; }

 private:
  PSECURITY_DESCRIPTOR sd_ = nullptr;
  SECURITY_ATTRIBUTES sa_{};
};

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

/// The named semaphore sleepers on `word` wait on: one per (object, offset).
inline HANDLE semaphore_for(const void* word) {
  auto& r = registry();
  std::lock_guard<std::mutex> g(r.mu);
  const auto addr = reinterpret_cast<std::uintptr_t>(word);
  std::string key;
  for (const auto& m : r.mappings) {
    if (addr >= m.base && addr < m.base + m.size) {
      key = fmt::format("{}.w{}", m.name, addr - m.base);
      break;
    }
  }
  if (key.empty()) key = fmt::format("mpp.w.p{}.{:x}", ::GetCurrentProcessId(), addr);
  if (auto it = r.semaphores.find(key); it != r.semaphores.end()) return it->second;
  OwnerOnly sa;
  HANDLE h = ::CreateSemaphoreW(sa.get(), 0, LONG_MAX, kernel_name(key).c_str());
  if (h == nullptr) throw_errno("CreateSemaphore", key, ::GetLastError());
  r.semaphores.emplace(key, h);
  return h;
}

using NtQuerySectionFn = LONG(NTAPI*)(HANDLE, int, PVOID, ULONG, PULONG);
struct SectionBasicInformation {
  PVOID base;
  ULONG attributes;
  LARGE_INTEGER size;
};

}  // namespace win32_detail

// ---- named shared memory ------------------------------------------------------------------

/// Whether a segment must keep its OS handle open while mapped (a mapping's name lives only as long as a handle to it).
inline constexpr bool kKeepHandleWhileMapped = true;

//!Effects: creates the named file mapping `name` (session-local, current user only) of `size`
//! bytes. Throws: ExistsError if the name is taken, OSError otherwise.
inline Fd shm_create(std::string_view name, std::uint64_t size) {
  win32_detail::OwnerOnly sa;
  Fd h(::CreateFileMappingW(INVALID_HANDLE_VALUE, sa.get(), PAGE_READWRITE,
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

//!Effects: opens the existing named file mapping `name`.
//!Throws: NotFoundError if it does not exist, PermissionError if access is denied.
inline Fd shm_open_existing(std::string_view name) {
  // FILE_MAP_ALL_ACCESS includes SECTION_QUERY, which file_info() needs.
  Fd h(::OpenFileMappingW(FILE_MAP_ALL_ACCESS, FALSE, kernel_name(name).c_str()));
  if (h.get() == nullptr) {
    const DWORD err = ::GetLastError();
    if (err == ERROR_FILE_NOT_FOUND)
      fail<NotFoundError>("no mpp object named '{}'; create it first (create/open_or_create) "
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
  std::uint64_t size;  ///< size of the section in bytes
  bool owned_by_us;    ///< created by this user (owner-only DACL)
  bool private_mode;   ///< no access for other users
  bool regular;        ///< always true for a file mapping
};

inline FileInfo file_info(const Fd& h, std::string_view name) {
  static const auto query = reinterpret_cast<win32_detail::NtQuerySectionFn>(
      reinterpret_cast<void*>(::GetProcAddress(::GetModuleHandleW(L"ntdll.dll"), "NtQuerySection")));
  win32_detail::SectionBasicInformation info{};
  const LONG status = query == nullptr ? -1 : query(h.get(), 0, &info, sizeof info, nullptr);
  if (status < 0)
    throw OSError(fmt::format("NtQuerySection('{}') failed with status {:#x}", name,
                              static_cast<unsigned long>(status)),
                  static_cast<int>(status));
  // The session-local namespace and the owner-only DACL given at creation keep other users out;
  // OpenFileMapping already failed with ERROR_ACCESS_DENIED for objects we may not use.
  return FileInfo{static_cast<std::uint64_t>(info.size.QuadPart), true, true, true};
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

// ---- wait / wake on a 32-bit word in shared memory (named semaphores) -------------------------
// WaitOnAddress does not work across processes, so each word gets a named semaphore keyed by the
// object's name and the word's offset in it. Callers (WaitPoint) count sleepers, so wake is only
// called when someone sleeps and the fast path never enters the kernel.

//!Effects: sleeps while `word == expected`, at most `timeout` (forever when nullopt). Spurious
//! wake-ups are possible. Returns: false only when the timeout elapsed.
inline bool wait_on_address(const std::atomic<std::uint32_t>& word, std::uint32_t expected,
                            std::optional<std::chrono::nanoseconds> timeout) {
  HANDLE sem = win32_detail::semaphore_for(&word);
  if (word.load(std::memory_order_seq_cst) != expected) return true;
  DWORD ms = INFINITE;
  if (timeout) {
    const auto n = timeout->count() < 0 ? 0 : timeout->count();
    ms = static_cast<DWORD>(std::min<long long>((n + 999'999) / 1'000'000, INFINITE - 1));
  }
  return ::WaitForSingleObject(sem, ms) != WAIT_TIMEOUT;
}

/// Wakes up to `count` sleepers on `word` (pass the number of sleepers, not INT_MAX: a semaphore
/// keeps unused releases).
inline void wake_address(const std::atomic<std::uint32_t>& word, int count) noexcept {
  if (count <= 0) return;
  try {
    ::ReleaseSemaphore(win32_detail::semaphore_for(&word), count, nullptr);
  } catch (...) {  // no semaphore: sleepers wake at their next poll (at most kPollInterval)
  }
}

/// Tells the CPU we are spinning.
inline void cpu_relax() noexcept { YieldProcessor(); }

/// Gives the CPU to another runnable thread.
inline void yield() noexcept { ::SwitchToThread(); }

/// Sleeps for `d`.
inline void sleep_for(std::chrono::nanoseconds d) noexcept {
  if (d.count() <= 0) return;
  ::Sleep(static_cast<DWORD>((d.count() + 999'999) / 1'000'000));
}

// ---- process identity and liveness ---------------------------------------------------------

/// This process's id.
inline pid_type current_pid() noexcept { return static_cast<pid_type>(::GetCurrentProcessId()); }

/// This thread's id.
inline std::uint64_t current_thread_id() noexcept { return ::GetCurrentThreadId(); }

inline std::uint64_t creation_time(HANDLE process) noexcept {
  FILETIME created, exited, kernel, user;
  if (!::GetProcessTimes(process, &created, &exited, &kernel, &user)) return 0;
  return (std::uint64_t{created.dwHighDateTime} << 32) | created.dwLowDateTime;
}

//!Returns: the creation time of process `pid` if it is still running; nullopt otherwise.
inline std::optional<std::uint64_t> process_start_time(pid_type pid) noexcept {
  if (pid <= 0) return std::nullopt;
  HANDLE h = ::OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION | SYNCHRONIZE, FALSE,
                           static_cast<DWORD>(pid));
  if (h == nullptr) return std::nullopt;
  const bool running = ::WaitForSingleObject(h, 0) == WAIT_TIMEOUT;
  const std::uint64_t t = creation_time(h);
  ::CloseHandle(h);
  if (!running) return std::nullopt;
  return t;
}

/// Creation time of this process.
inline std::uint64_t current_start_time() noexcept {
  static const std::uint64_t t = creation_time(::GetCurrentProcess());
  return t;
}

/// 64 random bits from the system generator (for anonymous names).
inline std::uint64_t random_u64() {
  std::uint64_t v = 0;
  if (::BCryptGenRandom(nullptr, reinterpret_cast<PUCHAR>(&v), sizeof v,
                        BCRYPT_USE_SYSTEM_PREFERRED_RNG) != 0)
    throw_errno("BCryptGenRandom", "", ::GetLastError());
  return v;
}

/// Nothing to restore on Windows (no inherited signal handlers); mirrors the POSIX backend.
inline void default_termination_signals() noexcept {}

// ==== fork hooks (owner: pipe) ================================================================
/// Windows has no fork(): nothing to register (mirrors the POSIX backend's at_fork).
inline void at_fork(void (*)(), void (*)(), void (*)()) noexcept {}
// ==== end fork hooks ==========================================================================

}  // namespace mpp::detail::os
