// mpp — Pool internals: how a callable and its arguments cross to a worker process as data.
// A task names the code to run by the index of a registered invoker (FnTable, identical in every
// run of the program since entries are added at static initialisation) and carries the callable
// as its bytes (forked workers) or as its registered name (spawned and forkserver workers).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <new>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <typeindex>
#include <utility>
#include <vector>

#include "../../codec.hpp"
#include "../../errors.hpp"
#include "../../process.hpp"
#include "result.hpp"

namespace mpp {

template <class... A>
struct Args;

namespace detail::pool {

/// Callables a worker can run: their bytes are all that crosses (workers are forked from this
/// program, so a function pointer means the same code there). Spawned and forkserver workers are
/// another run of the program: there a callable crosses as the name it was registered under.
template <class F>
concept Callable = std::is_trivially_copyable_v<F> ||(Encodable<F> && !std::is_pointer_v<F>);

/// True in a worker started with spawn or forkserver: callables arrive as registered names.
inline bool& named_callables() noexcept {
  static bool named = false;
  return named;
}

//!Returns: the name `f` was registered under, for a worker started with `m` (spawn, forkserver).
//!Throws: InvalidArgument when `f` is not a registered function or capture-less lambda.
template <class F>
std::string registered_name(const F& f, StartMethod m) {
  if constexpr (Transportable<F>) {
    if (auto name = function_registry().name_of(function_key(f))) return *name;
    fail<InvalidArgument>(
        "a Pool whose workers start with '{}' runs tasks in a new run of the program, which finds "
        "functions by their registered name, and this {} is not registered: add "
        "MPP_REGISTER(your_function) at namespace scope (or call mpp::register_function(\"name\", "
        "fn) before mpp::bootstrap), or use a Pool with the 'fork' start method",
        start_method_name(m), std::is_pointer_v<F> ? "function" : "lambda");
  } else {
    fail<InvalidArgument>(
        "a Pool whose workers start with '{}' runs tasks in a new run of the program, which "
        "cannot re-create this callable ({}): use a plain function or capture-less lambda whose "
        "parameters are Encodable, registered with MPP_REGISTER, or a Pool with the 'fork' start "
        "method",
        start_method_name(m), type_name<F>());
  }
}

/// The bytes of `f` that cross to a forked worker (its object bytes, or its encoding).
template <class F>
std::string callable_bytes(const F& f) {
  if constexpr (std::is_trivially_copyable_v<F>) {
    return std::string(reinterpret_cast<const char*>(std::addressof(f)), sizeof(F));
  } else {
    const Bytes b = encode(f);
    return std::string(reinterpret_cast<const char*>(b.data()), b.size());
  }
}

/// The task a worker thread is running, for the context of its exception (RemoteError): how to
/// name its function from the callable's bytes, computed only when the task fails.
struct TaskContext {
  std::string (*describe)(std::string_view fn) = nullptr;
  std::string_view fn;  ///< the callable's bytes (valid while the task runs)
};
inline TaskContext& current_task() noexcept {
  static thread_local TaskContext t;
  return t;
}

//!Returns: the name of the task function `F` whose bytes are `bytes`: its registered name, else
//! its type.
template <class F>
std::string describe_callable(std::string_view bytes) {
  if (named_callables()) return std::string(bytes);
  if constexpr (Transportable<F>) {
    std::optional<std::string> name;
    if constexpr (std::is_pointer_v<F>) {
      if (bytes.size() == sizeof(F)) {
        F f;
        std::memcpy(static_cast<void*>(&f), bytes.data(), sizeof(F));
        name = function_registry().name_of(function_key(f));
      }
    } else {
      name = function_registry().name_of(FunctionKey{std::type_index(typeid(F)), 0});
    }
    if (name) return *name;
  }
  return std::string(type_name<F>());
}

//!Effects: calls `fn(f)`; mpp::exit(n) inside it becomes SystemExit (the call fails with the code,
//! the worker carries on, as Python's executor reports a task's SystemExit).
template <class F, class Fn>
decltype(auto) call_task(Fn& fn, F& f) {
  try {
    return fn(f);
  } catch (const ExitRequest& e) {
    throw SystemExit(fmt::format("the task called mpp::exit({})", e.code), e.code);
  }
}

/// Rebuilds the callable from its bytes (in a spawned worker: from its registered name); `fn`
/// receives it (functors need not be default constructible).
template <class F, class Fn>
decltype(auto) with_callable(std::string_view bytes, Fn&& fn) {
  current_task() = TaskContext{&describe_callable<F>, bytes};
  if constexpr (Transportable<F>) {
    if (named_callables()) {
      const auto key = function_registry().key_of(std::string(bytes));
      if (!key || key->first != std::type_index(typeid(F)))
        fail<InvalidArgument>(
            "pool task: '{}' is not registered in this program as a {}; "
            "register it with MPP_REGISTER",
            bytes, type_name<F>());
      if constexpr (std::is_pointer_v<F>) {
        F f = reinterpret_cast<F>(key->second);
        return call_task(fn, f);
      } else {
        F f{};
        return call_task(fn, f);
      }
    }
  } else {
    if (named_callables())
      fail<InvalidArgument>("pool task: a {} cannot run in a spawned worker", type_name<F>());
  }
  if constexpr (std::is_trivially_copyable_v<F>) {
    if (bytes.size() != sizeof(F))
      fail<CorruptedError>("pool task: callable of {} bytes, expected {}", bytes.size(), sizeof(F));
    alignas(F) unsigned char storage[sizeof(F)];
    std::memcpy(storage, bytes.data(), sizeof(F));
    return call_task(fn, *std::launder(reinterpret_cast<F*>(storage)));
  } else {
    F f = decode<F>(std::as_bytes(std::span(bytes.data(), bytes.size())));
    return call_task(fn, f);
  }
}

/// Encoding helpers: a task's and a result's payloads travel as strings of encoded bytes.
inline std::span<const std::byte> as_span(std::string_view s) {
  return std::as_bytes(std::span(s.data(), s.size()));
}
template <class T>
std::string to_wire(const T& v) {
  const Bytes b = encode(v);
  return std::string(reinterpret_cast<const char*>(b.data()), b.size());
}
template <class T>
T from_wire(std::string_view s) {
  return decode<T>(as_span(s));
}

/// Runs a task in a worker: (callable bytes, argument bytes) -> result bytes.
using InvokeFn = std::string (*)(std::string_view fn, std::string_view args);

/// Functions of one signature that workers may run, in registration order (identical in forked
/// workers): a task names its function by index here, so only data crosses processes.
template <class Fn>
struct FnTable {
  std::vector<Fn> fns;
  std::uint32_t add(Fn f) {
    fns.push_back(f);
    return static_cast<std::uint32_t>(fns.size() - 1);
  }
  static FnTable& get() {
    static FnTable t;
    return t;
  }
};
inline FnTable<InvokeFn>& invokers() { return FnTable<InvokeFn>::get(); }

/// One entry per (shape, callable, argument) combination, registered at static initialisation.
template <auto Fn>
struct Registered {
  static inline const std::uint32_t id = FnTable<decltype(Fn)>::get().add(Fn);
};

template <class F, class A>
using map_result_t = std::invoke_result_t<const F&, const A&>;

/// How a result of type `R` is kept inside the pool: Unit stands for void.
template <class R>
using stored_t = std::conditional_t<std::is_void_v<R>, Unit, R>;
/// What map() of a function returning `R` gives: the results, or nothing for a void function.
template <class R>
using map_value_t =
    std::conditional_t<std::is_void_v<R> || std::is_same_v<R, Unit>, void, std::vector<R>>;
template <class T>
struct callback_of {
  using type = std::function<void(const T&)>;
};
template <>
struct callback_of<void> {
  using type = std::function<void()>;
};
/// The callback of a call whose public result is `T` (it takes nothing for void).
template <class T>
using callback_t = typename callback_of<T>::type;
/// `cb` as the pool's result state calls it (with Unit for void).
template <class T>
std::function<void(const stored_t<T>&)> stored_callback(callback_t<T> cb) {
  if constexpr (std::is_void_v<T>) {
    if (!cb) return {};
    return [cb = std::move(cb)](const Unit&) { cb(); };
  } else {
    return cb;
  }
}

/// A chunksize argument: nullopt gives `fallback`; below 1 is refused as Python refuses it.
inline std::size_t chunksize_or(std::optional<std::ptrdiff_t> c, std::size_t fallback) {
  if (!c) return fallback;
  if (*c < 1) fail<ValueError>("chunksize must be at least 1, not {}", *c);
  return static_cast<std::size_t>(*c);
}

/// How a pool names what the user made, in its messages (a Pool, or the executor over one).
struct OwnerName {
  const char* name = "Pool";
  const char* closed_message = "Pool not running: it was closed or terminated";
  bool executor = false;  ///< a ProcessPoolExecutor: its lifecycle rules apply (see Pool::start)
};

/// Element types that cross as their bytes (no cereal): trivially copyable with the built-in raw
/// codec (bool excluded: its codec rejects bytes other than 0 and 1).
template <class T>
inline constexpr bool kRawItem =
    std::is_trivially_copyable_v<T>&& std::is_default_constructible_v<T> &&
    !std::is_reference_v<T> && detail::codec_kind<T>() == std::string_view("raw") &&
    !std::is_same_v<std::remove_cv_t<T>, bool>;
template <>
inline constexpr bool kRawItem<void> = false;

/// Runs a map chunk of raw items in a worker: (callable bytes, input bytes, output area) ->
/// bytes of results written.
using RawFn = std::size_t (*)(std::string_view fn, const std::byte* in, std::size_t n,
                              std::byte* out, std::size_t cap);
inline FnTable<RawFn>& raw_invokers() { return FnTable<RawFn>::get(); }

// map of raw items: reads the input bytes, writes the result bytes (no intermediate vectors).
template <class F, class A>
std::size_t run_raw_chunk(std::string_view fn, const std::byte* in, std::size_t n, std::byte* out,
                          std::size_t cap) {
  using R = map_result_t<F, A>;
  if (n % sizeof(A) != 0)
    fail<CorruptedError>("pool task: {} input bytes are not a whole number of {}-byte items", n,
                         sizeof(A));
  const std::size_t count = n / sizeof(A);
  if (count > cap / sizeof(R))
    fail<CorruptedError>("pool task: {} results do not fit in {} bytes", count, cap);
  return with_callable<F>(fn, [&](F& f) {
    for (std::size_t i = 0; i < count; ++i) {
      A a;
      std::memcpy(static_cast<void*>(&a), in + i * sizeof(A), sizeof(A));
      const R r = std::invoke(f, a);
      std::memcpy(out + i * sizeof(R), static_cast<const void*>(&r), sizeof(R));
    }
    return count * sizeof(R);
  });
}

// map / imap: f applied to each element of a chunk.
template <class F, class A>
std::string run_map_chunk(std::string_view fn, std::string_view args) {
  return with_callable<F>(fn, [&](F& f) {
    const auto items = from_wire<std::vector<A>>(args);
    if constexpr (std::is_void_v<map_result_t<F, A>>) {  // nothing comes back but success
      for (const auto& a : items) std::invoke(f, a);
      return std::string();
    } else {
      std::vector<map_result_t<F, A>> out;
      out.reserve(items.size());
      for (const auto& a : items) out.push_back(std::invoke(f, a));
      return to_wire(out);
    }
  });
}

// starmap: f applied to each tuple of a chunk, unpacked.
template <class F, class Tuple>
std::string run_star_chunk(std::string_view fn, std::string_view args) {
  return with_callable<F>(fn, [&](F& f) {
    const auto items = from_wire<std::vector<Tuple>>(args);
    using R = decltype(std::apply(f, items.front()));
    if constexpr (std::is_void_v<R>) {
      for (const auto& t : items) std::apply(f, t);
      return std::string();
    } else {
      std::vector<R> out;
      out.reserve(items.size());
      for (const auto& t : items) out.push_back(std::apply(f, t));
      return to_wire(out);
    }
  });
}

// apply: f(args...) once; initializer: the same, returning nothing.
template <class F, class Tuple>
std::string run_apply(std::string_view fn, std::string_view args) {
  return with_callable<F>(fn, [&](F& f) {
    auto t = from_wire<Tuple>(args);
    using R = decltype(std::apply(f, t));
    if constexpr (std::is_void_v<R>) {
      std::apply(f, t);
      return std::string();
    } else {
      return to_wire(std::apply(f, t));
    }
  });
}

/// A task's exception as it crosses from the worker to the pool: its type and message, and where
/// it was raised. `code` is OSError::code(), SystemExit::code() or BufferTooShort::needed().
struct RemoteFailure {
  std::string type;
  std::string message;
  std::string function;  ///< the task's function (see describe_callable)
  std::int64_t pid = 0;  ///< the worker's
  std::int64_t code = 0;
  template <class Ar>
  void serialize(Ar& ar) {
    ar(type, message, function, pid, code);
  }
};

//!Returns: the number an exception of a type that carries one (OSError, SystemExit,
//! BufferTooShort) carries: of the exception being handled, if any.
inline std::int64_t current_exception_code() noexcept {
  const std::exception_ptr e = std::current_exception();
  if (!e) return 0;
  try {
    std::rethrow_exception(e);
  } catch (const OSError& x) {
    return x.code();
  } catch (const SystemExit& x) {
    return x.code();
  } catch (const BufferTooShort& x) {
    return static_cast<std::int64_t>(x.needed());
  } catch (...) {
  }
  return 0;
}

/// The encoded RemoteFailure of an exception of type `type` raised by the task this thread runs
/// (called inside the handler: a code the exception carries is kept).
inline std::string error_payload(const std::string& type, const std::string& message) {
  RemoteFailure f{
      type, message, {}, static_cast<std::int64_t>(os::current_pid()), current_exception_code()};
  const TaskContext& t = current_task();
  if (t.describe != nullptr) {
    try {
      f.function = t.describe(t.fn);
    } catch (const std::exception&) {  // the error is what matters: keep it without the name
    }
  }
  return to_wire(f);
}

//!Returns: the RemoteFailure a worker sent (one that cannot be read becomes a CorruptedError).
inline RemoteFailure read_failure(std::string_view payload) {
  try {
    return from_wire<RemoteFailure>(payload);
  } catch (const std::exception& e) {
    return {
        "mpp::CorruptedError", fmt::format("an unreadable error report ({})", e.what()), {}, 0, 0};
  }
}

/// Throws E (made of `args...`) with the RemoteError of `f` nested in it.
template <class E, class... A>
[[noreturn]] void throw_nested_remote(const RemoteFailure& f, A&&... args) {
  try {
    throw RemoteError(f.type, f.message, static_cast<long long>(f.pid), f.function);
  } catch (const RemoteError&) {
    std::throw_with_nested(E(std::forward<A>(args)...));
  }
}

/// Rethrows a worker's exception as itself: a std:: or mpp exception as its type (same what())
/// with a RemoteError nested in it, which says where it was raised; another one as RemoteError.
[[noreturn]] inline void throw_remote(const RemoteFailure& f) {
  const std::string& t = f.type;
  const std::string& m = f.message;
  const int code = static_cast<int>(f.code);
  if (t == "std::runtime_error") throw_nested_remote<std::runtime_error>(f, m);
  if (t == "std::logic_error") throw_nested_remote<std::logic_error>(f, m);
  if (t == "std::invalid_argument") throw_nested_remote<std::invalid_argument>(f, m);
  if (t == "std::out_of_range") throw_nested_remote<std::out_of_range>(f, m);
  if (t == "std::domain_error") throw_nested_remote<std::domain_error>(f, m);
  if (t == "std::length_error") throw_nested_remote<std::length_error>(f, m);
  if (t == "std::range_error") throw_nested_remote<std::range_error>(f, m);
  if (t == "std::overflow_error") throw_nested_remote<std::overflow_error>(f, m);
  if (t == "std::underflow_error") throw_nested_remote<std::underflow_error>(f, m);
  if (t == "std::bad_alloc") throw_nested_remote<std::bad_alloc>(f);
  if (t.starts_with("mpp::")) {
    const std::string_view n = std::string_view(t).substr(5);
    if (n == "Error") throw_nested_remote<Error>(f, m);
    if (n == "TimeoutError") throw_nested_remote<TimeoutError>(f, m);
    if (n == "queue::Empty") throw_nested_remote<queue::Empty>(f, m);
    if (n == "queue::Full") throw_nested_remote<queue::Full>(f, m);
    if (n == "EOFError") throw_nested_remote<EOFError>(f, m);
    if (n == "BrokenPipeError") throw_nested_remote<BrokenPipeError>(f, m);
    if (n == "ProcessError") throw_nested_remote<ProcessError>(f, m);
    if (n == "BufferTooShort")
      throw_nested_remote<BufferTooShort>(f, m, static_cast<std::size_t>(f.code));
    if (n == "WorkerLostError") throw_nested_remote<WorkerLostError>(f, m);
    if (n == "BrokenProcessPool") throw_nested_remote<BrokenProcessPool>(f, m);
    if (n == "NotFoundError") throw_nested_remote<NotFoundError>(f, m);
    if (n == "ExistsError") throw_nested_remote<ExistsError>(f, m);
    if (n == "TypeMismatchError") throw_nested_remote<TypeMismatchError>(f, m);
    if (n == "CorruptedError") throw_nested_remote<CorruptedError>(f, m);
    if (n == "InvalidArgument") throw_nested_remote<InvalidArgument>(f, m);
    if (n == "PermissionError") throw_nested_remote<PermissionError>(f, m);
    if (n == "ValueError") throw_nested_remote<ValueError>(f, m);
    if (n == "CancelledError") throw_nested_remote<CancelledError>(f, m);
    if (n == "BrokenBarrierError") throw_nested_remote<BrokenBarrierError>(f, m);
    if (n == "KeyError") throw_nested_remote<KeyError>(f, m);
    if (n == "IndexError") throw_nested_remote<IndexError>(f, m);
    if (n == "OwnerDiedError") throw_nested_remote<OwnerDiedError>(f, m);
    if (n == "OSError") throw_nested_remote<OSError>(f, m, code);
    if (n == "NoSpaceError") throw_nested_remote<NoSpaceError>(f, m, code);
    if (n == "MemoryError") throw_nested_remote<MemoryError>(f, m);
    if (n == "SystemExit") throw_nested_remote<SystemExit>(f, m, code);
  }
  throw RemoteError(f.type, f.message, static_cast<long long>(f.pid), f.function);
}

//!Returns: the exception of the failed task whose encoded RemoteFailure is `payload`.
inline std::exception_ptr remote_exception(std::string_view payload) {
  try {
    throw_remote(read_failure(payload));
  } catch (...) {
    return std::current_exception();
  }
}

template <class>
struct SpawnedWorker;

/// Refuses, at compile time, a callable that cannot cross to a worker; registers the body of
/// spawned workers in every program that gives a pool work.
template <class F>
void check_callable() {
  static_assert(Callable<F>,
                "mpp::Pool: the callable must be a function pointer, a capture-less lambda, or "
                "a lambda/functor whose captures are trivially copyable or that is Encodable");
  // Dependent on F (so resolved at instantiation), yet always SpawnedWorker<void>: registered once.
  (void)SpawnedWorker<std::conditional_t<sizeof(F) != 0, void, F>>::registered;
}

/// The start method of a pool that asked for `requested` (nullopt: get_start_method()).
inline StartMethod method_of(std::optional<StartMethod> requested) {
  return requested ? *requested : Process::default_method();
}

/// What crosses to a worker for callable `f`: its bytes (fork), or its registered name.
template <class F>
std::string wire_for(StartMethod m, const F& f) {
  return m == StartMethod::fork ? callable_bytes(f) : registered_name(f, m);
}

template <class T>
inline constexpr bool is_args_v = false;
template <class... A>
inline constexpr bool is_args_v<Args<A...>> = true;
/// True when the first of `A...` is an mpp::Args pack (apply_async with callbacks).
template <class... A>
inline constexpr bool first_is_args_v =
    sizeof...(A) != 0 && is_args_v<std::decay_t<std::tuple_element_t<0, std::tuple<A..., void>>>>;

}  // namespace detail::pool
}  // namespace mpp
