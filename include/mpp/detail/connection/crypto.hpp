// mpp — HMAC and random bytes for the connection handshake, from a maintained crypto library:
// OpenSSL's libcrypto on POSIX, BCrypt on Windows. Only programs that include
// mpp/connection.hpp link it (CMake target mpp::connection).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include "../../codec.hpp"
#include "../../errors.hpp"
#include "../config.hpp"

#if defined(MPP_OS_WINDOWS)
#  include <windows.h>
// windows.h first
#  include <bcrypt.h>
#else
#  include <openssl/evp.h>
#  include <openssl/hmac.h>
#  include <openssl/rand.h>
#endif

namespace mpp::detail::connection {

/// The digests Python's handshake names in its "{digest}" prefix.
enum class Digest { md5, sha256, sha384, sha3_256, sha3_384 };

/// The name of a digest as Python writes it in the prefix.
constexpr std::string_view digest_name(Digest d) noexcept {
  switch (d) {
    case Digest::md5:
      return "md5";
    case Digest::sha256:
      return "sha256";
    case Digest::sha384:
      return "sha384";
    case Digest::sha3_256:
      return "sha3_256";
    case Digest::sha3_384:
      return "sha3_384";
  }
  return "?";
}

/// The largest MAC any digest gives (sha384: 48 bytes).
inline constexpr std::size_t kMaxMac = 64;

/// A MAC and its length.
struct Mac {
  std::array<std::byte, kMaxMac> bytes{};  ///< the MAC
  std::size_t size = 0;                    ///< how many bytes of it are used
  /// The used bytes.
  std::span<const std::byte> view() const noexcept { return {bytes.data(), size}; }
};

//!Returns: HMAC-`d` of `message` under `key`. Throws: AuthenticationError when the crypto library
//! lacks the digest (FIPS mode without MD5, Windows without SHA-3).
inline Mac hmac(Digest d, std::span<const std::byte> key, std::span<const std::byte> message) {
  Mac m;
#if defined(MPP_OS_WINDOWS)
  LPCWSTR alg = d == Digest::md5      ? BCRYPT_MD5_ALGORITHM
                : d == Digest::sha256 ? BCRYPT_SHA256_ALGORITHM
                : d == Digest::sha384 ? BCRYPT_SHA384_ALGORITHM
                                      : nullptr;
  BCRYPT_ALG_HANDLE a = nullptr;
  if (alg == nullptr ||
      BCryptOpenAlgorithmProvider(&a, alg, nullptr, BCRYPT_ALG_HANDLE_HMAC_FLAG) != 0)
    throw AuthenticationError(fmt::format("HMAC-{} is not available here", digest_name(d)));
  BCRYPT_HASH_HANDLE h = nullptr;
  DWORD len = 0, got = 0;
  bool ok = BCryptGetProperty(a, BCRYPT_HASH_LENGTH, reinterpret_cast<PUCHAR>(&len), sizeof len,
                              &got, 0) == 0 &&
            len <= kMaxMac &&
            BCryptCreateHash(a, &h, nullptr, 0,
                             reinterpret_cast<PUCHAR>(const_cast<std::byte*>(key.data())),
                             static_cast<ULONG>(key.size()), 0) == 0;
  ok = ok &&
       BCryptHashData(h, reinterpret_cast<PUCHAR>(const_cast<std::byte*>(message.data())),
                      static_cast<ULONG>(message.size()), 0) == 0 &&
       BCryptFinishHash(h, reinterpret_cast<PUCHAR>(m.bytes.data()), len, 0) == 0;
  if (h != nullptr) BCryptDestroyHash(h);
  BCryptCloseAlgorithmProvider(a, 0);
  if (!ok) throw AuthenticationError(fmt::format("HMAC-{} failed", digest_name(d)));
  m.size = len;
#else
  const EVP_MD* md = d == Digest::md5        ? EVP_md5()
                     : d == Digest::sha256   ? EVP_sha256()
                     : d == Digest::sha384   ? EVP_sha384()
                     : d == Digest::sha3_256 ? EVP_sha3_256()
                                             : EVP_sha3_384();
  unsigned int len = 0;
  static const unsigned char empty = 0;  // HMAC() wants a non-null key even when it is empty
  if (md == nullptr ||
      HMAC(md, key.empty() ? &empty : reinterpret_cast<const unsigned char*>(key.data()),
           static_cast<int>(key.size()), reinterpret_cast<const unsigned char*>(message.data()),
           message.size(), reinterpret_cast<unsigned char*>(m.bytes.data()), &len) == nullptr ||
      len > kMaxMac)
    throw AuthenticationError(fmt::format("HMAC-{} is not available here", digest_name(d)));
  m.size = len;
#endif
  return m;
}

//!Effects: fills `out` with cryptographically random bytes. Throws: OSError.
inline void random_bytes(std::span<std::byte> out) {
#if defined(MPP_OS_WINDOWS)
  if (BCryptGenRandom(nullptr, reinterpret_cast<PUCHAR>(out.data()), static_cast<ULONG>(out.size()),
                      BCRYPT_USE_SYSTEM_PREFERRED_RNG) != 0)
    throw OSError("BCryptGenRandom failed", 0);
#else
  if (RAND_bytes(reinterpret_cast<unsigned char*>(out.data()), static_cast<int>(out.size())) != 1)
    throw OSError("RAND_bytes failed (OpenSSL's random generator is not seeded)", 0);
#endif
}

//!Returns: whether `a` and `b` are equal, in time independent of where they differ.
inline bool equal_constant_time(std::span<const std::byte> a,
                                std::span<const std::byte> b) noexcept {
  if (a.size() != b.size()) return false;
  unsigned diff = 0;
  for (std::size_t i = 0; i < a.size(); ++i)
    diff |= static_cast<unsigned>(std::to_integer<unsigned>(a[i] ^ b[i]));
  return diff == 0;
}

}  // namespace mpp::detail::connection
