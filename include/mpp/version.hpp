// mpp — the library's version. CMakeLists.txt reads project(mpp VERSION ...) from these macros, so
// this header is the one place the version is written.
#pragma once

#include "detail/config.hpp"

/// Major version: incremented for incompatible API changes.
#define MPP_VERSION_MAJOR 0
/// Minor version: incremented for added functionality.
#define MPP_VERSION_MINOR 1
/// Patch version: incremented for fixes.
#define MPP_VERSION_PATCH 0

/// Stringizes a macro argument after expansion (for MPP_VERSION_STRING).
#define MPP_DETAIL_STR(x) MPP_DETAIL_STR2(x)
/// Stringizes its argument as written.
#define MPP_DETAIL_STR2(x) #x
/// The version as "MAJOR.MINOR.PATCH".
#define MPP_VERSION_STRING          \
  MPP_DETAIL_STR(MPP_VERSION_MAJOR) \
  "." MPP_DETAIL_STR(MPP_VERSION_MINOR) "." MPP_DETAIL_STR(MPP_VERSION_PATCH)
/// The version as one number, MAJOR * 10000 + MINOR * 100 + PATCH, for #if comparisons.
#define MPP_VERSION (MPP_VERSION_MAJOR * 10000 + MPP_VERSION_MINOR * 100 + MPP_VERSION_PATCH)
