# Dependencies of mpp: installed packages first (find_package); only when one is missing, a
# download through FetchContent (for users with internet; our own machines never download).
# The library needs fmt, cereal and threads (and librt on Linux); MPP_DEPENDENCIES_FROM_PACKAGES
# stays TRUE when those came from packages, which is what the install rules need.
include(FetchContent)
find_package(Threads REQUIRED)

set(MPP_DEPENDENCIES_FROM_PACKAGES TRUE)

# Cross builds (cmake/toolchains/mingw-w64.cmake) take the header-only dependencies from a staged
# directory of links instead of find_package, and use fmt header-only.
if(MPP_HEADER_DEPS_DIR)
  foreach(dep Boost::headers cereal::cereal Catch2::Catch2 fmt::fmt-header-only)
    add_library(${dep} INTERFACE IMPORTED)
    set_target_properties(${dep} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${MPP_HEADER_DEPS_DIR}")
  endforeach()
  set_target_properties(fmt::fmt-header-only PROPERTIES INTERFACE_COMPILE_DEFINITIONS FMT_HEADER_ONLY=1)
  set(MPP_FMT_HEADER_ONLY ON)
  set(MPP_DEPENDENCIES_FROM_PACKAGES FALSE)
  return()
endif()

# Boost is not a dependency of the library: only the benchmarks' peer needs it (tests/
# boost_interop.cpp looks it up on its own and is skipped without it).
if(MPP_BUILD_BENCHMARKS)
  find_package(Boost 1.74 QUIET CONFIG)
  if(NOT TARGET Boost::headers)
    message(STATUS "mpp: Boost >= 1.74 not installed; fetching Boost headers for the benchmarks")
    set(BOOST_INCLUDE_LIBRARIES interprocess)
    FetchContent_Declare(Boost
      URL https://github.com/boostorg/boost/releases/download/boost-1.84.0/boost-1.84.0.tar.xz
      DOWNLOAD_EXTRACT_TIMESTAMP ON)
    FetchContent_MakeAvailable(Boost)
    if(NOT TARGET Boost::headers)
      add_library(Boost::headers ALIAS boost_headers)
    endif()
  endif()
endif()

# OpenSSL's libcrypto: only for the optional target mpp::connection (mpp/connection.hpp's HMAC).
if(NOT WIN32)
  find_package(OpenSSL QUIET COMPONENTS Crypto)
  if(NOT TARGET OpenSSL::Crypto)
    message(STATUS "mpp: OpenSSL not found; mpp::connection (mpp/connection.hpp) is not available "
                   "(Debian: libssl-dev)")
  endif()
endif()

find_package(fmt 9 QUIET CONFIG)
if(NOT TARGET fmt::fmt)
  message(STATUS "mpp: fmt not installed; fetching fmt 10.2.1")
  set(MPP_DEPENDENCIES_FROM_PACKAGES FALSE)
  FetchContent_Declare(fmt GIT_REPOSITORY https://github.com/fmtlib/fmt.git GIT_TAG 10.2.1)
  FetchContent_MakeAvailable(fmt)
endif()

find_package(cereal QUIET CONFIG)
if(NOT TARGET cereal::cereal)
  message(STATUS "mpp: cereal not installed; fetching cereal 1.3.2")
  set(MPP_DEPENDENCIES_FROM_PACKAGES FALSE)
  set(JUST_INSTALL_CEREAL ON CACHE BOOL "" FORCE)
  FetchContent_Declare(cereal GIT_REPOSITORY https://github.com/USCiLab/cereal.git GIT_TAG v1.3.2)
  FetchContent_MakeAvailable(cereal)
  if(NOT TARGET cereal::cereal)
    add_library(cereal::cereal ALIAS cereal)
  endif()
endif()
