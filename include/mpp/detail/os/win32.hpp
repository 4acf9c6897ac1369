// mpp — Win32 backend: named file mappings (session-local, current user only), named-semaphore
// wait/wake, process liveness by handle and creation time. Provides the OS contract (README.md in
// this directory) topic by topic, as posix.hpp does; topics that only the POSIX tools and crash
// tracker use (listing, user locks, the tracker's process) have no Windows counterpart yet.
#pragma once

#include "../config.hpp"

#if !defined(MPP_OS_WINDOWS)
#  error "mpp: detail/os/win32.hpp included on a non-Windows platform"
#endif

#include "win32/common.hpp"    // pid_type, throw_errno, Fd, kernel names, random_u64
#include "win32/liveness.hpp"  // current_pid, process creation times
#include "win32/process.hpp"   // spawn, waiting, termination, pipes, environment
#include "win32/shm.hpp"       // named file mappings, views, committing a sparse view
#include "win32/sigbus.hpp"    // no-op mapping guard (a mapped section cannot shrink)
#include "win32/wait.hpp"      // named-semaphore wait/wake, sleeping
