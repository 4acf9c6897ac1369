// mpp — Pool internals: how a callable and its arguments cross to a worker process as data.
// A task names the code to run by the index of a registered invoker (FnTable, identical in every
// run of the program since entries are added at static initialisation) and carries the callable
// as its bytes (forked workers) or as its registered name (spawned and forkserver workers).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
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

/// Rebuilds the callable from its bytes (in a spawned worker: from its registered name); `fn`
/// receives it (functors need not be default constructible).
template <class F, class Fn>
decltype(auto) with_callable(std::string_view bytes, Fn&& fn) {
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
        return fn(f);
      } else {
        F f{};
        return fn(f);
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
    return fn(*std::launder(reinterpret_cast<F*>(storage)));
  } else {
    F f = decode<F>(std::as_bytes(std::span(bytes.data(), bytes.size())));
    return fn(f);
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

/// Rethrows a worker's exception: std:: types as themselves, others as RemoteError.
[[noreturn]] inline void throw_remote(const std::string& type, const std::string& message) {
  if (type == "std::runtime_error") throw std::runtime_error(message);
  if (type == "std::logic_error") throw std::logic_error(message);
  if (type == "std::invalid_argument") throw std::invalid_argument(message);
  if (type == "std::out_of_range") throw std::out_of_range(message);
  if (type == "std::domain_error") throw std::domain_error(message);
  if (type == "std::length_error") throw std::length_error(message);
  if (type == "std::range_error") throw std::range_error(message);
  if (type == "std::overflow_error") throw std::overflow_error(message);
  if (type == "std::underflow_error") throw std::underflow_error(message);
  throw RemoteError(type, message);
}

/// The encoded (type, message) of an exception, as a failed result carries it.
inline std::string error_payload(const std::string& type, const std::string& message) {
  return to_wire(std::pair<std::string, std::string>(type, message));
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
