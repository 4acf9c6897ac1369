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
#include <cerrno>
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
  /// Whether a handle is held.
  bool valid() const noexcept { return h_ != nullptr && h_ != INVALID_HANDLE_VALUE; }
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
  bool headered;       ///< always true: every object starts with an mpp header on Windows
  std::int64_t mtime_unix_ms;  ///< not known: 0
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

/// False: a wake-up is a semaphore release, kept until someone waits, so wakers must count their
/// sleepers and never wake more (see sync_state.hpp).
inline constexpr bool kExactWake = false;

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

/// Asymmetric fences across processes do not exist on Windows (FlushProcessWriteBuffers covers
/// one process): the queue's exclusive fast paths stay off there.
inline bool membarrier_register() noexcept { return false; }
/// See membarrier_register(); never called when it returned false.
inline bool membarrier_all() noexcept { return false; }

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

// ==== processes (owner: Windows lane): spawn, wait, terminate, affinity, pipes ================
// Windows has no fork: spawn is the only start method (kCanFork = false; the fork-only functions
// throw). A child is a CreateProcessW of this program; its launch request travels over a duplex
// named pipe whose client handle the child inherits (its value is passed in the environment).
// native_handle is a HANDLE: a process handle (waitable) or a pipe end (readable when data or end
// of file is there; polled with PeekNamedPipe). Exit codes follow CPython's popen_spawn_win32:
// terminate() and kill() both call TerminateProcess(h, 0x10000), reported as -SIGTERM (-15).
}  // namespace mpp::detail::os

#include <cstdio>
#include <cstdlib>
#include <span>
#include <typeinfo>
#if defined(__GNUC__) || defined(__clang__)
#  include <cxxabi.h>
#endif

namespace mpp::detail::os {

/// A waitable OS handle (a HANDLE on Windows): a process handle or a pipe end.
using native_handle = HANDLE;
/// The value of a native_handle that refers to nothing.
inline constexpr native_handle kNoHandle = nullptr;
/// Whether this platform can fork (the fork and forkserver start methods): not on Windows.
inline constexpr bool kCanFork = false;
/// The "signals" Process::terminate() and Process::kill() send; both end in TerminateProcess.
inline constexpr int kSigTerm = 15;
inline constexpr int kSigKill = 9;

namespace win32_detail {
/// The exit code CPython's Popen passes to TerminateProcess (reported as -SIGTERM).
inline constexpr DWORD kTerminateCode = 0x10000;

inline std::string narrow(const std::wstring& w) {
  if (w.empty()) return {};
  const int n = ::WideCharToMultiByte(CP_UTF8, 0, w.data(), static_cast<int>(w.size()), nullptr, 0,
                                      nullptr, nullptr);
  std::string out(static_cast<std::size_t>(n), '\0');
  ::WideCharToMultiByte(CP_UTF8, 0, w.data(), static_cast<int>(w.size()), out.data(), n, nullptr,
                        nullptr);
  return out;
}
inline std::wstring wide(std::string_view s) {
  if (s.empty()) return {};
  const int n = ::MultiByteToWideChar(CP_UTF8, 0, s.data(), static_cast<int>(s.size()), nullptr, 0);
  std::wstring out(static_cast<std::size_t>(n), L'\0');
  ::MultiByteToWideChar(CP_UTF8, 0, s.data(), static_cast<int>(s.size()), out.data(), n);
  return out;
}

/// Process handles of the children this process started, by pid, until they are reaped (the
/// counterpart of the kernel's zombie: the pid cannot be reused while we hold the handle).
struct Children {
  std::mutex mu;
  std::map<pid_type, HANDLE> handles;
  std::mutex spawn_mu;  ///< one CreateProcess at a time: only its own handles are inheritable
};
inline Children& children() {
  static Children* c = new Children;  // never destroyed (used by exit handlers)
  return *c;
}

/// A duplicate of child `pid`'s handle (caller closes it), or nullptr if it is not our child.
inline HANDLE child_handle(pid_type pid) {
  auto& c = children();
  std::lock_guard<std::mutex> g(c.mu);
  auto it = c.handles.find(pid);
  if (it == c.handles.end()) return nullptr;
  HANDLE dup = nullptr;
  if (!::DuplicateHandle(::GetCurrentProcess(), it->second, ::GetCurrentProcess(), &dup, 0, FALSE,
                         DUPLICATE_SAME_ACCESS))
    throw_errno("DuplicateHandle", std::to_string(pid), ::GetLastError());
  return dup;
}

inline bool is_pipe(HANDLE h) noexcept { return ::GetFileType(h) == FILE_TYPE_PIPE; }

/// Python's exit code from a Windows process exit code.
inline int exit_code(DWORD code) noexcept {
  if (code == kTerminateCode) return -kSigTerm;
  return static_cast<int>(code);
}

/// Quotes one argument for CommandLineToArgvW / the C runtime's argv parser.
inline std::wstring quote_arg(const std::wstring& a) {
  if (!a.empty() && a.find_first_of(L" \t\n\v\"") == std::wstring::npos) return a;
  std::wstring out = L"\"";
  std::size_t backslashes = 0;
  for (wchar_t c : a) {
    if (c == L'\\') {
      ++backslashes;
      continue;
    }
    if (c == L'"') out.append(backslashes * 2 + 1, L'\\');
    else out.append(backslashes, L'\\');
    backslashes = 0;
    out.push_back(c);
  }
  out.append(backslashes * 2, L'\\');
  out.push_back(L'"');
  return out;
}

/// An event for one overlapped operation.
struct Overlapped {
  OVERLAPPED ov{};
  Overlapped() {
    ov.hEvent = ::CreateEventW(nullptr, TRUE, FALSE, nullptr);
    if (ov.hEvent == nullptr) throw_errno("CreateEvent", "", ::GetLastError());
  }
  ~Overlapped() { ::CloseHandle(ov.hEvent); }
  Overlapped(const Overlapped&) = delete;
  Overlapped& operator=(const Overlapped&) = delete;
};

inline DWORD timeout_ms(std::optional<std::chrono::nanoseconds> left) noexcept {
  if (!left) return INFINITE;
  const auto ns = left->count();
  if (ns <= 0) return 0;
  const auto ms = (ns + 999'999) / 1'000'000;  // round up: never wake before the deadline
  return ms >= INFINITE ? INFINITE - 1 : static_cast<DWORD>(ms);
}

/// Runs one overlapped ReadFile/WriteFile on `h`, waiting at most `timeout`. Returns: the bytes
/// transferred, or nullopt on timeout (the operation is cancelled). Sets `err` on failure.
template <class Start>
std::optional<DWORD> overlapped_io(HANDLE h, Start start, std::optional<std::chrono::nanoseconds> timeout,
                                   DWORD& err) {
  Overlapped o;
  err = 0;
  DWORD n = 0;
  if (!start(&o.ov, &n)) {
    err = ::GetLastError();
    if (err != ERROR_IO_PENDING) return DWORD{0};
    err = 0;
    if (::WaitForSingleObject(o.ov.hEvent, timeout_ms(timeout)) == WAIT_TIMEOUT) {
      ::CancelIoEx(h, &o.ov);
      if (::GetOverlappedResult(h, &o.ov, &n, TRUE)) return n;  // completed meanwhile
      return std::nullopt;
    }
  }
  if (!::GetOverlappedResult(h, &o.ov, &n, TRUE)) err = ::GetLastError();
  return n;
}
}  // namespace win32_detail

//!Returns: the text form of handle `h` for a child's environment (it inherits the same value).
inline std::string handle_to_text(native_handle h) {
  return std::to_string(reinterpret_cast<std::uintptr_t>(h));
}

//!Returns: the handle written by handle_to_text, or nullopt if `text` is not one.
inline std::optional<native_handle> handle_from_text(const std::string& text) {
  if (text.empty() || text.size() > 20) return std::nullopt;
  std::uintptr_t v = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + static_cast<std::uintptr_t>(c - '0');
  }
  if (v == 0) return std::nullopt;
  return reinterpret_cast<native_handle>(v);
}

//!Returns: "SIGTERM" for 15 and so on (the signal names of Windows' C runtime); "" if unknown.
inline std::string signal_name(int signum) {
  switch (signum) {
    case 2: return "SIGINT";
    case 4: return "SIGILL";
    case 8: return "SIGFPE";
    case 11: return "SIGSEGV";
    case 15: return "SIGTERM";
    case 21: return "SIGBREAK";
    case 22: return "SIGABRT";
    default: return {};
  }
}

//!Throws: ProcessError: Windows cannot fork (use the spawn start method).
[[noreturn]] inline pid_type fork_process() {
  fail<ProcessError>("the 'fork' start method is not available on Windows: use 'spawn'");
}

//!Effects: flushes C stdio and ends the process at once with `code`: no atexit handlers and no
//! static destructors, so a child never runs its parent's clean-up a second time.
[[noreturn]] inline void exit_process(int code) noexcept {
  std::fflush(nullptr);
  std::_Exit(code);
}

//!Returns: a handle that is signalled when process `pid` ends (a duplicate of our child's handle,
//! else OpenProcess), or an invalid Fd if the process is gone.
inline Fd open_process(pid_type pid) noexcept {
  try {
    if (HANDLE h = win32_detail::child_handle(pid)) return Fd{h};
  } catch (...) {
  }
  return Fd{::OpenProcess(SYNCHRONIZE | PROCESS_QUERY_LIMITED_INFORMATION, FALSE,
                          static_cast<DWORD>(pid))};
}

//!Effects: reaps child `pid` (closes our handle to it) if it has ended (never blocks).
//!Returns: its Python-style exit code, or nullopt while it runs.
//!Throws: OSError when it is not our child or was reaped already.
inline std::optional<int> poll_process(pid_type pid) {
  auto& c = win32_detail::children();
  std::lock_guard<std::mutex> g(c.mu);
  auto it = c.handles.find(pid);
  if (it == c.handles.end())
    throw OSError(fmt::format("process {} is not a child of this process (or was reaped)", pid),
                  static_cast<int>(ERROR_INVALID_PARAMETER));
  if (::WaitForSingleObject(it->second, 0) != WAIT_OBJECT_0) return std::nullopt;
  DWORD code = 0;
  if (!::GetExitCodeProcess(it->second, &code)) code = 255;
  ::CloseHandle(it->second);
  c.handles.erase(it);
  return win32_detail::exit_code(code);
}

//!Effects: blocks until child `pid` has ended, without reaping it (poll_process does that).
//!Returns: false if it is not (or no longer) our child. Throws: OSError.
inline bool wait_process_exit(pid_type pid) {
  Fd h(win32_detail::child_handle(pid));
  if (h.get() == nullptr) return false;
  ::WaitForSingleObject(h.get(), INFINITE);
  return true;
}

//!Returns: a handle that is signalled at once (the sentinel of a process already reaped).
inline Fd ready_handle() {
  HANDLE e = ::CreateEventW(nullptr, TRUE, TRUE, nullptr);
  if (e == nullptr) throw_errno("CreateEvent", "", ::GetLastError());
  return Fd{e};
}

//!Effects: waits until `h` is signalled (a process handle) or readable (a pipe: data or end of
//! file) or `timeout` elapses (forever when nullopt).
//!Returns: true if signalled/readable (or hung up). Throws: OSError.
inline bool wait_readable(native_handle h, std::optional<std::chrono::nanoseconds> timeout) {
  if (!win32_detail::is_pipe(h)) {
    const DWORD r = ::WaitForSingleObject(h, win32_detail::timeout_ms(timeout));
    if (r == WAIT_FAILED) throw_errno("WaitForSingleObject", "", ::GetLastError());
    return r != WAIT_TIMEOUT;
  }
  const auto until = timeout ? std::optional(std::chrono::steady_clock::now() + *timeout) : std::nullopt;
  for (int round = 0;; ++round) {
    DWORD avail = 0;
    if (!::PeekNamedPipe(h, nullptr, 0, nullptr, &avail, nullptr)) return true;  // hung up
    if (avail > 0) return true;
    if (until && std::chrono::steady_clock::now() >= *until) return false;
    if (round < 50) ::SwitchToThread();
    else ::Sleep(1);
  }
}

//!Effects: waits until one of `hs` is signalled or readable or `timeout` elapses.
//!Returns: the index of a ready handle, or -1 on timeout. Throws: OSError.
inline int wait_any_readable(std::span<const native_handle> hs,
                             std::optional<std::chrono::nanoseconds> timeout) {
  const auto until = timeout ? std::optional(std::chrono::steady_clock::now() + *timeout) : std::nullopt;
  for (;;) {
    for (std::size_t i = 0; i < hs.size(); ++i)
      if (wait_readable(hs[i], std::chrono::nanoseconds{0})) return static_cast<int>(i);
    if (until && std::chrono::steady_clock::now() >= *until) return -1;
    ::Sleep(1);
  }
}

//!Effects: ends process `pid` with TerminateProcess(h, 0x10000) whatever `sig` is (as CPython's
//! terminate() and kill() on Windows; the exit code reads -SIGTERM).
//!Returns: false if no such process. Throws: OSError.
inline bool send_signal(pid_type pid, int /*sig*/) {
  Fd h(win32_detail::child_handle(pid));
  if (h.get() == nullptr) h = Fd{::OpenProcess(PROCESS_TERMINATE | SYNCHRONIZE, FALSE,
                                                static_cast<DWORD>(pid))};
  if (h.get() == nullptr) return false;
  if (::TerminateProcess(h.get(), win32_detail::kTerminateCode)) return true;
  const DWORD err = ::GetLastError();
  if (::WaitForSingleObject(h.get(), 0) == WAIT_OBJECT_0) return true;  // it had ended already
  throw_errno("TerminateProcess", std::to_string(pid), err);
}

//!Returns: the number of CPUs this process may run on (its affinity mask), at least 1.
inline int cpu_count() noexcept {
  DWORD_PTR mine = 0, system = 0;
  if (::GetProcessAffinityMask(::GetCurrentProcess(), &mine, &system) && mine != 0) {
    int n = 0;
    for (; mine != 0; mine &= mine - 1) ++n;
    return n;
  }
  SYSTEM_INFO si;
  ::GetSystemInfo(&si);
  return si.dwNumberOfProcessors > 0 ? static_cast<int>(si.dwNumberOfProcessors) : 1;
}

/// The path of the running program (GetModuleFileNameW), UTF-8.
inline std::string self_executable() {
  std::wstring buf(MAX_PATH, L'\0');
  for (;;) {
    const DWORD n = ::GetModuleFileNameW(nullptr, buf.data(), static_cast<DWORD>(buf.size()));
    if (n == 0) throw_errno("GetModuleFileName", "", ::GetLastError());
    if (n < buf.size()) {
      buf.resize(n);
      return win32_detail::narrow(buf);
    }
    buf.resize(buf.size() * 2);
  }
}

//!Effects: starts `path` (CreateProcessW) with arguments `argv` and this process's environment
//! plus `env` ("KEY=value" entries, overriding). Only the handles in `inherit` are inherited (they
//! are made inheritable just for this call, one spawn at a time); the child shares our console
//! and standard handles. Returns: the child's pid (its handle is kept until poll_process reaps
//! it). Throws: OSError.
inline pid_type spawn_program(const std::string& path, const std::vector<std::string>& argv,
                              const std::vector<std::string>& env,
                              std::span<const native_handle> inherit) {
  using win32_detail::wide;
  std::wstring cmd;
  for (const auto& a : argv) {
    if (!cmd.empty()) cmd.push_back(L' ');
    cmd += win32_detail::quote_arg(wide(a));
  }
  // The environment block: our variables minus the overridden ones, then `env`.
  std::wstring block;
  if (wchar_t* strings = ::GetEnvironmentStringsW()) {
    for (const wchar_t* e = strings; *e != L'\0'; e += std::wcslen(e) + 1) {
      const std::wstring_view entry(e);
      const auto eq = entry.find(L'=', 1);  // "=C:=C:\\dir" entries start with '='
      const std::wstring_view key = entry.substr(0, eq);
      bool overridden = false;
      for (const auto& mine : env) {
        const std::wstring k = wide(std::string_view(mine).substr(0, mine.find('=')));
        overridden = overridden || ::CompareStringOrdinal(k.data(), static_cast<int>(k.size()),
                                                          key.data(), static_cast<int>(key.size()),
                                                          TRUE) == CSTR_EQUAL;
      }
      if (!overridden) {
        block.append(entry);
        block.push_back(L'\0');
      }
    }
    ::FreeEnvironmentStringsW(strings);
  }
  for (const auto& e : env) {
    block += wide(e);
    block.push_back(L'\0');
  }
  block.push_back(L'\0');
  STARTUPINFOW si{};
  si.cb = sizeof si;
  PROCESS_INFORMATION pi{};
  const std::wstring app = wide(path);
  auto& c = win32_detail::children();
  {
    std::lock_guard<std::mutex> g(c.spawn_mu);
    for (const native_handle h : inherit)
      ::SetHandleInformation(h, HANDLE_FLAG_INHERIT, HANDLE_FLAG_INHERIT);
    const BOOL ok = ::CreateProcessW(app.c_str(), cmd.data(), nullptr, nullptr, TRUE,
                                     CREATE_UNICODE_ENVIRONMENT, block.data(), nullptr, &si, &pi);
    const DWORD err = ::GetLastError();
    for (const native_handle h : inherit) ::SetHandleInformation(h, HANDLE_FLAG_INHERIT, 0);
    if (!ok) throw_errno("CreateProcess", path, err);
  }
  ::CloseHandle(pi.hThread);
  const auto pid = static_cast<pid_type>(pi.dwProcessId);
  std::lock_guard<std::mutex> g(c.mu);
  c.handles[pid] = pi.hProcess;
  return pid;
}

//!Returns: the value of environment variable `name`, or nullopt.
inline std::optional<std::string> get_env(const char* name) {
  const DWORD n = ::GetEnvironmentVariableA(name, nullptr, 0);
  if (n == 0) return std::nullopt;
  std::string v(n, '\0');
  const DWORD m = ::GetEnvironmentVariableA(name, v.data(), n);
  v.resize(m < n ? m : 0);
  return v;
}

/// Removes environment variable `name` (from the process and the C runtime's copy).
inline void unset_env(const char* name) noexcept {
  ::SetEnvironmentVariableA(name, nullptr);
  ::_putenv_s(name, "");
}

//!Returns: a connected pair of duplex pipe ends (a named pipe in byte mode, current user only,
//! not inheritable, overlapped I/O). `packets` (message boundaries) is not supported on Windows
//! (only the fork server, which Windows lacks, asks for it). Throws: OSError.
inline std::pair<Fd, Fd> socket_pair(bool packets = false) {
  if (packets) fail<ProcessError>("packet socket pairs are not available on Windows");
  const std::wstring name = L"\\\\.\\pipe\\mpp." + std::to_wstring(::GetCurrentProcessId()) + L"." +
                            std::to_wstring(random_u64());
  win32_detail::OwnerOnly sa;
  Fd server(::CreateNamedPipeW(
      name.c_str(), PIPE_ACCESS_DUPLEX | FILE_FLAG_FIRST_PIPE_INSTANCE | FILE_FLAG_OVERLAPPED,
      PIPE_TYPE_BYTE | PIPE_READMODE_BYTE | PIPE_WAIT | PIPE_REJECT_REMOTE_CLIENTS, 1, 1 << 16,
      1 << 16, 0, sa.get()));
  if (server.get() == INVALID_HANDLE_VALUE) {
    server.release();
    throw_errno("CreateNamedPipe", win32_detail::narrow(name), ::GetLastError());
  }
  Fd client(::CreateFileW(name.c_str(), GENERIC_READ | GENERIC_WRITE, 0, nullptr, OPEN_EXISTING,
                          FILE_FLAG_OVERLAPPED, nullptr));
  if (client.get() == INVALID_HANDLE_VALUE) {
    client.release();
    throw_errno("CreateFile", win32_detail::narrow(name), ::GetLastError());
  }
  win32_detail::Overlapped o;
  if (!::ConnectNamedPipe(server.get(), &o.ov)) {
    const DWORD err = ::GetLastError();
    if (err == ERROR_IO_PENDING) {
      DWORD n = 0;
      if (!::GetOverlappedResult(server.get(), &o.ov, &n, TRUE))
        throw_errno("ConnectNamedPipe", win32_detail::narrow(name), ::GetLastError());
    } else if (err != ERROR_PIPE_CONNECTED) {
      throw_errno("ConnectNamedPipe", win32_detail::narrow(name), err);
    }
  }
  return {std::move(server), std::move(client)};
}

//!Effects: writes all of `data` to pipe end `s`, within `timeout` if one is given.
//!Throws: BrokenPipeError if the peer is gone, TimeoutError, OSError otherwise.
inline void send_all(const Fd& s, std::span<const std::byte> data,
                     std::optional<std::chrono::nanoseconds> timeout = std::nullopt) {
  const auto until = timeout ? std::optional(std::chrono::steady_clock::now() + *timeout) : std::nullopt;
  std::size_t done = 0;
  while (done < data.size()) {
    std::optional<std::chrono::nanoseconds> left;
    if (until) left = std::chrono::duration_cast<std::chrono::nanoseconds>(*until - std::chrono::steady_clock::now());
    const DWORD chunk = static_cast<DWORD>(std::min<std::size_t>(data.size() - done, 1u << 20));
    DWORD err = 0;
    const auto n = win32_detail::overlapped_io(
        s.get(),
        [&](OVERLAPPED* ov, DWORD* written) {
          return ::WriteFile(s.get(), data.data() + done, chunk, written, ov) != 0;
        },
        left, err);
    if (!n)
      fail<TimeoutError>("the other process did not read {} bytes within the timeout",
                         data.size() - done);
    if (err == ERROR_BROKEN_PIPE || err == ERROR_NO_DATA || err == ERROR_PIPE_NOT_CONNECTED)
      fail<BrokenPipeError>("the other process closed its end of the pipe (it exited)");
    if (err != 0) throw_errno("WriteFile", "", err);
    done += *n;
  }
}

//!Effects: reads exactly `buf.size()` bytes from pipe end `s`.
//!Returns: false on end of file before the first byte. Throws: EOFError on end of file mid-way.
inline bool recv_exact(const Fd& s, std::span<std::byte> buf) {
  std::size_t done = 0;
  while (done < buf.size()) {
    const DWORD chunk = static_cast<DWORD>(std::min<std::size_t>(buf.size() - done, 1u << 20));
    DWORD err = 0;
    const auto n = win32_detail::overlapped_io(
        s.get(),
        [&](OVERLAPPED* ov, DWORD* got) {
          return ::ReadFile(s.get(), buf.data() + done, chunk, got, ov) != 0;
        },
        std::nullopt, err);
    if (err == ERROR_BROKEN_PIPE || err == ERROR_PIPE_NOT_CONNECTED || (err == 0 && n && *n == 0)) {
      if (done == 0) return false;
      fail<EOFError>("the other process closed the pipe after {} of {} bytes", done, buf.size());
    }
    if (err != 0 && err != ERROR_MORE_DATA) throw_errno("ReadFile", "", err);
    done += n ? *n : 0;
  }
  return true;
}

//!Throws: ProcessError: passing handles over a pipe is only used by the fork server.
inline void send_with_handle(const Fd&, std::span<const std::byte>, native_handle) {
  fail<ProcessError>("the 'forkserver' start method is not available on Windows: use 'spawn'");
}

//!Throws: ProcessError: passing handles over a pipe is only used by the fork server.
inline std::size_t recv_with_handle(const Fd&, std::span<std::byte>, Fd&) {
  fail<ProcessError>("the 'forkserver' start method is not available on Windows: use 'spawn'");
}

/// Makes handle `h` inheritable by children created with handle inheritance, or not.
inline void set_inheritable(native_handle h, bool inherit) noexcept {
  ::SetHandleInformation(h, HANDLE_FLAG_INHERIT, inherit ? HANDLE_FLAG_INHERIT : 0);
}

/// Ignores (or restores) Ctrl-C for this process.
inline void ignore_interrupts(bool ignore) noexcept { ::SetConsoleCtrlHandler(nullptr, ignore); }

//!Returns: the readable form of a compiler-mangled type name (MSVC's names are readable already).
inline std::string demangle(const char* mangled) {
#if defined(__GNUC__) || defined(__clang__)
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> p(abi::__cxa_demangle(mangled, nullptr, nullptr, &status),
                                           std::free);
  return status == 0 && p ? std::string(p.get()) : std::string(mangled);
#else
  return std::string(mangled);
#endif
}

//!Returns: the type name of the exception being handled (inside a catch block), or "unknown".
inline std::string current_exception_type_name() {
#if defined(__GNUC__) || defined(__clang__)
  const std::type_info* t = abi::__cxa_current_exception_type();
  return t != nullptr ? demangle(t->name()) : std::string("unknown");
#else
  return std::string("unknown");
#endif
}
// ==== end processes ============================================================================

// ==== sparse segments (owner: Windows lane; mirrors posix.hpp) =================================
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
      if (::VirtualAlloc(at, static_cast<SIZE_T>(stop - at), MEM_COMMIT, PAGE_READWRITE) == nullptr) {
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
// ==== end sparse segments =======================================================================

//!Returns: false: a section cannot shrink while it is mapped.
inline bool shm_shrunk(std::string_view name, std::uint64_t size) {
  (void)name;
  (void)size;
  return false;
}

// ==== pool workers (mirrors posix.hpp) =========================================================
//!Effects: none: without fork() no page is shared copy-on-write with a worker.
inline void discard_private(void* p, std::size_t n) noexcept {
  (void)p;
  (void)n;
}
// ==== end pool workers ==========================================================================

// ==== queue memory (mirrors posix.hpp) =========================================================
//!Effects: commits the pages of [p, p + n) that are still reserved (see commit()), so running
//! out of memory is an error code here instead of an access violation later.
//!Returns: 0, or the errno value commit() returns.
inline int populate_write(void* p, std::size_t n) noexcept { return commit(p, n); }
// ==== end queue memory ==========================================================================

// ==== mapping guard (owner: crash-safety suite; mirrors posix.hpp) ==============================
// Nothing to guard: Windows refuses to shrink a section while any view of it is mapped, so a
// mapped segment can never lose pages under us (POSIX needs a SIGBUS handler for that).
/// What guard_mapping() returns when it protected nothing (always, on Windows).
inline constexpr std::uint32_t kNoGuard = 0xffffffffu;
/// No-op on Windows (see above). Returns: kNoGuard.
inline std::uint32_t guard_mapping(void*, std::uint64_t, std::string_view) noexcept {
  return kNoGuard;
}
/// No-op on Windows (see above).
inline void unguard_mapping(void*, std::uint32_t) noexcept {}
/// Always false on Windows (see above).
inline bool mapping_faulted(const void*) noexcept { return false; }
/// No-op on Windows (see above).
inline void check_mapping(const void*) {}
// ==== end mapping guard =========================================================================

}  // namespace mpp::detail::os
