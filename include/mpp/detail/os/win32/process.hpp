// mpp — Win32 backend, processes: spawn (CreateProcessW), waiting and reaping, termination,
// CPU affinity, the environment, and the duplex pipes between a parent and a child.
#pragma once

#include "../../config.hpp"

#if !defined(MPP_OS_WINDOWS)
#  error "mpp: detail/os/win32/process.hpp included on a non-Windows platform"
#endif

#include <io.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cwchar>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <typeinfo>
#include <utility>
#include <vector>

#if defined(__GNUC__) || defined(__clang__)
#  include <cxxabi.h>
#endif

#include "common.hpp"

namespace mpp::detail::os {

// Windows has no fork: spawn is the only start method (kCanFork = false; the fork-only functions
// throw). A child is a CreateProcessW of this program; its launch request travels over a duplex
// named pipe whose client handle the child inherits (its value is passed in the environment).
// native_handle is a HANDLE: a process handle (waitable) or a pipe end (readable when data or end
// of file is there; polled with PeekNamedPipe). Exit codes follow CPython's popen_spawn_win32:
// terminate() and kill() both call TerminateProcess(h, 0x10000), reported as -SIGTERM (-15).

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
    if (c == L'"')
      out.append(backslashes * 2 + 1, L'\\');
    else
      out.append(backslashes, L'\\');
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
std::optional<DWORD> overlapped_io(HANDLE h, Start start,
                                   std::optional<std::chrono::nanoseconds> timeout, DWORD& err) {
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
    case 2:
      return "SIGINT";
    case 4:
      return "SIGILL";
    case 8:
      return "SIGFPE";
    case 11:
      return "SIGSEGV";
    case 15:
      return "SIGTERM";
    case 21:
      return "SIGBREAK";
    case 22:
      return "SIGABRT";
    default:
      return {};
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
  const auto until =
      timeout ? std::optional(std::chrono::steady_clock::now() + *timeout) : std::nullopt;
  for (int round = 0;; ++round) {
    DWORD avail = 0;
    if (!::PeekNamedPipe(h, nullptr, 0, nullptr, &avail, nullptr)) return true;  // hung up
    if (avail > 0) return true;
    if (until && std::chrono::steady_clock::now() >= *until) return false;
    if (round < 50)
      ::SwitchToThread();
    else
      ::Sleep(1);
  }
}

//!Effects: waits until one of `hs` is signalled or readable or `timeout` elapses.
//!Returns: the index of a ready handle, or -1 on timeout. Throws: OSError.
inline int wait_any_readable(std::span<const native_handle> hs,
                             std::optional<std::chrono::nanoseconds> timeout) {
  const auto until =
      timeout ? std::optional(std::chrono::steady_clock::now() + *timeout) : std::nullopt;
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
  if (h.get() == nullptr)
    h = Fd{::OpenProcess(PROCESS_TERMINATE | SYNCHRONIZE, FALSE, static_cast<DWORD>(pid))};
  if (h.get() == nullptr) return false;
  if (::TerminateProcess(h.get(), win32_detail::kTerminateCode)) return true;
  const DWORD err = ::GetLastError();
  if (::WaitForSingleObject(h.get(), 0) == WAIT_OBJECT_0) return true;  // it had ended already
  throw_errno("TerminateProcess", std::to_string(pid), err);
}

//!Returns: whether the C stream `f` writes to a console (a progress display redraws in place).
inline bool is_terminal(std::FILE* f) noexcept {
  return f != nullptr && ::_isatty(::_fileno(f)) != 0;
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
        overridden =
            overridden || ::CompareStringOrdinal(k.data(), static_cast<int>(k.size()), key.data(),
                                                 static_cast<int>(key.size()), TRUE) == CSTR_EQUAL;
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
  const auto until =
      timeout ? std::optional(std::chrono::steady_clock::now() + *timeout) : std::nullopt;
  std::size_t done = 0;
  while (done < data.size()) {
    std::optional<std::chrono::nanoseconds> left;
    if (until)
      left = std::chrono::duration_cast<std::chrono::nanoseconds>(*until -
                                                                  std::chrono::steady_clock::now());
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

/// Nothing to restore on Windows (no inherited signal handlers); mirrors the POSIX backend.
inline void default_termination_signals() noexcept {}

/// Windows has no fork(): nothing to register (mirrors the POSIX backend's at_fork).
inline void at_fork(void (*)(), void (*)(), void (*)()) noexcept {}

}  // namespace mpp::detail::os
