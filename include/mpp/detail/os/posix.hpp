// mpp — POSIX (Linux) backend: every topic of the OS contract (see README.md in this directory).
// Together with win32.hpp, the only code that makes system calls. Everything in posix/ is a thin,
// EINTR-safe wrapper that throws mpp exceptions with the failing call and object in the message.
#pragma once

#include "../config.hpp"

#if !defined(MPP_OS_POSIX)
#  error "mpp: detail/os/posix.hpp included on a non-POSIX platform"
#endif

#include "posix/common.hpp"    // pid_type, throw_errno, Fd, random_u64, unix_time_ms
#include "posix/listing.hpp"   // names of /dev/shm, processes that map or hold them
#include "posix/liveness.hpp"  // current_pid, process start times, user locks
#include "posix/process.hpp"   // fork, spawn, pidfds, signals, sockets, environment
#include "posix/shm.hpp"       // named shared memory and files, mapping, memory of a mapping
#include "posix/sigbus.hpp"    // the SIGBUS guard of mapped objects
#include "posix/tracker.hpp"   // the crash tracker's process and packet socket
#include "posix/wait.hpp"      // futex wait/wake, sleeping, membarrier
