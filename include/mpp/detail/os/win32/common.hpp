// mpp — Win32 backend, common ground: the process id type, the Win32 error exception, an
// owning handle, kernel object names, the owner-only security attributes, random bits.
#pragma once

#include "../../config.hpp"

#if !defined(MPP_OS_WINDOWS)
#  error "mpp: detail/os/win32/common.hpp included on a non-Windows platform"
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

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../../../errors.hpp"

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
  throw OSError(
      fmt::format("{}('{}') failed: {} (error {})", call, object, last_error_text(err), err),
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
    if (!::ConvertStringSecurityDescriptorToSecurityDescriptorW(sddl.c_str(), SDDL_REVISION_1, &sd_,
                                                                nullptr))
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
}  // namespace win32_detail

/// 64 random bits from the system generator (for anonymous names).
inline std::uint64_t random_u64() {
  std::uint64_t v = 0;
  if (::BCryptGenRandom(nullptr, reinterpret_cast<PUCHAR>(&v), sizeof v,
                        BCRYPT_USE_SYSTEM_PREFERRED_RNG) != 0)
    throw_errno("BCryptGenRandom", "", ::GetLastError());
  return v;
}

}  // namespace mpp::detail::os
