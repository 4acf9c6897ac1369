// mpp — selects the operating-system backend (see detail/config.hpp). What every backend
// provides, topic by topic, is in detail/os/README.md.
#pragma once

#include "config.hpp"

#if defined(MPP_OS_POSIX)
#  include "os/posix.hpp"
#elif defined(MPP_OS_WINDOWS)
#  include "os/win32.hpp"
#else
#  error "mpp: unsupported platform"
#endif
