// mpp — the exception hierarchy. Every exception derives from mpp::Error;
// messages say what happened, to which named object, and what to do.
#pragma once

#include "detail/config.hpp"

#include <fmt/core.h>

#include <cerrno>
#include <cstddef>
#include <stdexcept>
#include <string>
#include <utility>

namespace mpp {

/// Base of every exception thrown by mpp.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// A blocking call did not complete within its timeout.
class TimeoutError : public Error {
 public:
  using Error::Error;
};

namespace queue {
/// Raised by get(block=false) or get(timeout) on an empty queue (Python's queue.Empty).
class Empty : public Error {
 public:
  using Error::Error;
};
/// Raised by put(block=false) or put(timeout) on a full queue (Python's queue.Full).
class Full : public Error {
 public:
  using Error::Error;
};
}  // namespace queue

/// Python's OSError: an OS call failed (the message names the call, the object and errno's
/// text), or an OS-level object was misused (a closed or one-way Connection, a closed queue's
/// empty()/qsize()/full()). Base of ExistsError, NotFoundError, PermissionError,
/// BrokenPipeError and NoSpaceError, as in Python.
class OSError : public Error {
 public:
  //!Effects: records the errno-style code next to the message (0: none, as Python's
  //! OSError("...").errno is None).
  explicit OSError(const std::string& what, int code = 0) : Error(what), code_(code) {}
  /// The system error code (errno on POSIX, GetLastError() on Windows; 0 when there is none).
  int code() const noexcept { return code_; }

 private:
  int code_;
};

/// Python's ValueError: a call that is invalid in the object's current state
/// (task_done() called too often, release() of an unowned lock, use after close()), or an
/// argument of the right type with a wrong value (InvalidArgument).
class ValueError : public Error {
 public:
  using Error::Error;
};

/// Python's LookupError: the base of KeyError and IndexError.
class LookupError : public Error {
 public:
  using Error::Error;
};

/// Nothing left to receive: the other end is closed or its process died.
class EOFError : public Error {
 public:
  using Error::Error;
};

/// Sending to a peer that closed its end or died (Python's BrokenPipeError, an OSError).
class BrokenPipeError : public OSError {
 public:
  //!Effects: an OSError whose code is EPIPE, as Python's.
  explicit BrokenPipeError(const std::string& what, int code = EPIPE) : OSError(what, code) {}
};

/// Misuse of a Process (start twice, join before start, ...) or a failure to create one.
class ProcessError : public Error {
 public:
  using Error::Error;
};

/// recv_bytes_into() was given a buffer too small for the next message (Python's
/// multiprocessing.BufferTooShort). The message is not consumed: receive it again with a larger
/// buffer or with recv_bytes().
class BufferTooShort : public ProcessError {
 public:
  //!Effects: records how many bytes the message needs.
  BufferTooShort(const std::string& what, std::size_t needed)
      : ProcessError(what), needed_(needed) {}
  /// Size of the message that did not fit.
  std::size_t needed() const noexcept { return needed_; }

 private:
  std::size_t needed_;
};

/// A connection's authentication failed (Python's multiprocessing.AuthenticationError): a wrong
/// authkey, a peer that does not speak the handshake, or one that stalled in it.
class AuthenticationError : public ProcessError {
 public:
  using ProcessError::ProcessError;
};

/// A pool worker died while running a task.
class WorkerLostError : public Error {
 public:
  using Error::Error;
};

/// A Pool or ProcessPoolExecutor can run nothing more because its initializer failed in a worker
/// (threw, or the worker died while running it); every pending and later call fails with it
/// (Python's concurrent.futures.process.BrokenProcessPool). When the initializer threw, the
/// message names the exception's type and message, and the exception is nested in this one
/// (std::rethrow_if_nested gives it back, as the pool would have thrown it: a std:: type or a
/// RemoteError).
class BrokenProcessPool : public Error {
 public:
  using Error::Error;
};

/// An exception raised in another process; carries its type name and message and, for one raised
/// by a pool task, where it was raised: the worker's pid and the task's function (Python's
/// RemoteTraceback). A task's exception of a std:: or mpp type comes back as that type with a
/// RemoteError nested in it (`std::rethrow_if_nested(e)` throws the RemoteError, as Python's
/// exception has the RemoteTraceback as its __cause__); an exception of another type comes back
/// as a RemoteError itself.
class RemoteError : public Error {
 public:
  //!Effects: records the remote exception's type name and message.
  RemoteError(std::string type_name, std::string message)
      : Error(fmt::format("{}: {}", type_name, message)),
        type_name_(std::move(type_name)),
        message_(std::move(message)) {}
  //!Effects: records the remote exception's type name and message, and that a pool task running
  //! `function` in process `pid` raised it.
  RemoteError(std::string type_name, std::string message, long long pid, std::string function)
      : Error(
            fmt::format("{}: {} (raised by {} in process {})", type_name, message, function, pid)),
        type_name_(std::move(type_name)),
        message_(std::move(message)),
        function_(std::move(function)),
        pid_(pid) {}
  /// Demangled type name of the exception thrown in the other process.
  const std::string& type_name() const noexcept { return type_name_; }
  /// what() of the exception thrown in the other process.
  const std::string& remote_message() const noexcept { return message_; }
  /// The function the pool task ran: its registered name, else its type (empty: not a task).
  const std::string& function() const noexcept { return function_; }
  /// The id of the process that raised it (0: not known).
  long long pid() const noexcept { return pid_; }

 private:
  std::string type_name_;
  std::string message_;
  std::string function_;
  long long pid_ = 0;
};

/// A pool task called mpp::exit(code) (Python's SystemExit raised in a ProcessPoolExecutor task):
/// its call fails with this exception, which carries the code; the worker carries on.
class SystemExit : public Error {
 public:
  //!Effects: records the exit code next to the message.
  SystemExit(const std::string& what, int code) : Error(what), code_(code) {}
  /// The code the task passed to mpp::exit.
  int code() const noexcept { return code_; }

 private:
  int code_;
};

/// open() of a name that does not exist, unlink() of a name already removed (Python's
/// FileNotFoundError, an OSError).
class NotFoundError : public OSError {
 public:
  //!Effects: an OSError whose code is ENOENT, as Python's.
  explicit NotFoundError(const std::string& what, int code = ENOENT) : OSError(what, code) {}
};

/// create() of a name that is already taken (Python's FileExistsError, an OSError).
class ExistsError : public OSError {
 public:
  //!Effects: an OSError whose code is EEXIST, as Python's.
  explicit ExistsError(const std::string& what, int code = EEXIST) : OSError(what, code) {}
};

/// An object was opened as another kind or element type than it was created with.
class TypeMismatchError : public Error {
 public:
  using Error::Error;
};

/// Shared memory or an encoded buffer failed validation (written by a buggy or hostile peer).
class CorruptedError : public Error {
 public:
  using Error::Error;
};

/// An argument is invalid (bad name, size, option); the message names the rule. A ValueError,
/// as Python raises for such arguments.
class InvalidArgument : public ValueError {
 public:
  using ValueError::ValueError;
};

/// The object exists but belongs to another user or is accessible to others (mode not 0600)
/// (Python's PermissionError, an OSError).
class PermissionError : public OSError {
 public:
  //!Effects: an OSError whose code is EACCES, as Python's.
  explicit PermissionError(const std::string& what, int code = EACCES) : OSError(what, code) {}
};

/// A cancelled Future's result was asked for (Python's concurrent.futures.CancelledError).
class CancelledError : public Error {
 public:
  using Error::Error;
};

/// A Barrier was broken (aborted, reset while waiting, a party died or timed out).
class BrokenBarrierError : public Error {
 public:
  using Error::Error;
};

/// An attribute or key that does not exist (Python's AttributeError / KeyError; a
/// LookupError).
class KeyError : public LookupError {
 public:
  using LookupError::LookupError;
};

/// An index out of range (Python's IndexError): Array::at, ShareableList, SharedList. A
/// LookupError, as KeyError is (catch LookupError for both, as in Python).
class IndexError : public LookupError {
 public:
  using LookupError::LookupError;
};

/// Python's RuntimeError: an operation that cannot go on in the object's current state, such
/// as a SharedDict iteration whose dict changed size meanwhile.
class RuntimeError : public Error {
 public:
  using Error::Error;
};

/// A process died while it held the lock that protects some shared data, which may therefore be
/// half-written. Raised by operations that would otherwise return that data as if it were
/// whole; the message names the object and how to repair it.
class OwnerDiedError : public Error {
 public:
  using Error::Error;
};

/// The backing store of shared memory is full (ENOSPC: /dev/shm on Linux); the message says how
/// many bytes were needed and how many are free.
class NoSpaceError : public OSError {
 public:
  using OSError::OSError;
};

/// Python's MemoryError: an object of fixed capacity has no room left for a request (a Manager
/// whose capacity its containers fill, an item larger than that capacity, a mutation larger than
/// its undo log). The mutation is rolled back: the containers are as before it. The message
/// names the manager and the bytes needed; free items or create it with a larger capacity.
class MemoryError : public Error {
 public:
  using Error::Error;
};

namespace detail {
/// Throws E with a message formatted by fmt.
template <class E, class... Args>
[[noreturn]] void fail(fmt::format_string<Args...> f, Args&&... args) {
  throw E(fmt::format(f, std::forward<Args>(args)...));
}
}  // namespace detail

}  // namespace mpp
