// The exception hierarchy follows Python's, so that a port of `except OSError:`,
// `except ValueError:` or `except LookupError:` catches what Python's would: the type relations,
// and real errors raised by mpp objects (also in other processes) caught as their Python base.
#include <mpp/array.hpp>
#include <mpp/errors.hpp>
#include <mpp/pipe.hpp>
#include <mpp/process.hpp>
#include <mpp/queue.hpp>
#include <mpp/segment.hpp>
#include <mpp/shared_memory.hpp>

#include <cerrno>
#include <string>
#include <type_traits>

#include "helpers.hpp"

using namespace std::chrono_literals;
using mpp_test::unique_name;

// Python: FileExistsError, FileNotFoundError, PermissionError, BrokenPipeError < OSError.
static_assert(std::is_base_of_v<mpp::OSError, mpp::ExistsError>);
static_assert(std::is_base_of_v<mpp::OSError, mpp::NotFoundError>);
static_assert(std::is_base_of_v<mpp::OSError, mpp::PermissionError>);
static_assert(std::is_base_of_v<mpp::OSError, mpp::BrokenPipeError>);
static_assert(std::is_base_of_v<mpp::OSError, mpp::NoSpaceError>);
// ValueError; KeyError and IndexError are LookupErrors, neither is the other.
static_assert(std::is_base_of_v<mpp::ValueError, mpp::InvalidArgument>);
static_assert(std::is_base_of_v<mpp::LookupError, mpp::KeyError>);
static_assert(std::is_base_of_v<mpp::LookupError, mpp::IndexError>);
static_assert(!std::is_base_of_v<mpp::KeyError, mpp::IndexError>);
static_assert(!std::is_base_of_v<mpp::IndexError, mpp::KeyError>);
// BufferTooShort is a ProcessError, as multiprocessing's.
static_assert(std::is_base_of_v<mpp::ProcessError, mpp::BufferTooShort>);
// Branches that are apart in Python are apart here.
static_assert(!std::is_base_of_v<mpp::OSError, mpp::ValueError>);
static_assert(!std::is_base_of_v<mpp::ValueError, mpp::OSError>);
static_assert(!std::is_base_of_v<mpp::OSError, mpp::EOFError>);
static_assert(!std::is_base_of_v<mpp::LookupError, mpp::ValueError>);
// mpp::Error stays the root of every one.
static_assert(std::is_base_of_v<mpp::Error, mpp::OSError>);
static_assert(std::is_base_of_v<mpp::Error, mpp::ValueError>);
static_assert(std::is_base_of_v<mpp::Error, mpp::LookupError>);
static_assert(std::is_base_of_v<mpp::Error, mpp::ExistsError>);
static_assert(std::is_base_of_v<mpp::Error, mpp::IndexError>);
static_assert(std::is_base_of_v<mpp::Error, mpp::queue::Empty>);

namespace {
/// In another process: an out-of-range Array index and a missing name, each caught as its Python
/// base class; returns what was not.
std::string python_bases_in_child(std::string missing) {
  std::string r;
  try {
    mpp::Array<int> a(3);
    (void)a.at(3);
    r += "no IndexError;";
  } catch (const mpp::LookupError&) {
  }
  try {
    (void)mpp::SharedMemory::open(missing);
    r += "no NotFoundError;";
  } catch (const mpp::OSError& e) {
    if (e.code() != ENOENT) r += "errno is not ENOENT;";
  }
  try {
    (void)mpp::SharedMemory("bad name", true, 8);
    r += "no InvalidArgument;";
  } catch (const mpp::ValueError&) {
  }
  return r;
}
void report_python_bases(std::string missing, mpp::Queue<std::string> reply) {
  reply.put(python_bases_in_child(std::move(missing)));
}
}  // namespace
MPP_REGISTER(report_python_bases);

TEST_CASE("Errors: ExistsError, NotFoundError, PermissionError are OSErrors with Python's errno",
          "[errors]") {
  const auto name = unique_name("err");
  auto shm = mpp::SharedMemory::create(name, 8);
  try {
    (void)mpp::SharedMemory::create(name, 8);
    FAIL("create of a taken name must throw");
  } catch (const mpp::OSError& e) {  // Python: except OSError catches FileExistsError
    CHECK(dynamic_cast<const mpp::ExistsError*>(&e) != nullptr);
    CHECK(e.code() == EEXIST);
    CHECK(std::string(e.what()).find(name) != std::string::npos);
  }
  try {
    (void)mpp::Queue<int>::open(unique_name("absent"));
    FAIL("open of a missing name must throw");
  } catch (const mpp::OSError& e) {
    CHECK(dynamic_cast<const mpp::NotFoundError*>(&e) != nullptr);
    CHECK(e.code() == ENOENT);
  }
  CHECK(mpp::PermissionError("x").code() == EACCES);
  CHECK(mpp::BrokenPipeError("x").code() == EPIPE);
  CHECK(mpp::OSError("x").code() == 0);  // Python's OSError("x").errno is None
}

TEST_CASE("Errors: a closed or one-way Connection is an OSError; a peer gone BrokenPipeError",
          "[errors]") {
  auto one_way = mpp::Pipe<int>(false);
  CHECK_THROWS_AS(one_way.first.send(1), mpp::OSError);  // receive-only end
  CHECK_THROWS_AS(one_way.second.recv(), mpp::OSError);  // send-only end
  auto ab = mpp::Pipe<int>();
  ab.first.close();
  CHECK_THROWS_AS(ab.first.send(1), mpp::OSError);
  CHECK_THROWS_AS(ab.first.recv(), mpp::OSError);
  CHECK_THROWS_AS(ab.second.send(1), mpp::OSError);  // BrokenPipeError: the peer is closed
  CHECK_THROWS_AS(ab.second.send(1), mpp::BrokenPipeError);
  CHECK_THROWS_AS(ab.second.recv(), mpp::EOFError);  // not an OSError, as in Python
}

TEST_CASE("Errors: InvalidArgument is a ValueError; IndexError and KeyError are LookupErrors",
          "[errors]") {
  CHECK_THROWS_AS(mpp::SharedMemory(unique_name("zero"), true, 0), mpp::ValueError);
  CHECK_THROWS_AS(mpp::Queue<int>(-1, mpp::QueueOptions{4, 0}), mpp::ValueError);
  mpp::Array<int> a(2);
  CHECK_THROWS_AS(a.at(2), mpp::LookupError);
  try {
    (void)a.at(5);
  } catch (const mpp::KeyError&) {
    FAIL("an IndexError is not a KeyError, as in Python");
  } catch (const mpp::IndexError&) {
  }
  mpp::ShareableList sl{std::int64_t{1}};
  CHECK_THROWS_AS(sl.get(1), mpp::LookupError);
  // A closed queue: put/get ValueError, empty() OSError, as in Python.
  mpp::Queue<int> q;
  q.close();
  CHECK_THROWS_AS(q.put(1), mpp::ValueError);
  CHECK_THROWS_AS(q.empty(), mpp::OSError);
}

TEST_CASE("Errors: Python's bases catch mpp's errors in forked and spawned processes",
          "[errors][spawn]") {
  const auto missing = unique_name("missing");
  mpp::Queue<std::string> reply;
  std::vector<mpp::StartMethod> methods{mpp::StartMethod::spawn};
#if defined(MPP_OS_POSIX)
  methods.push_back(mpp::StartMethod::fork);
#endif
  for (const auto m : methods) {
    INFO("start method " << mpp::start_method_name(m));
    auto p = mpp::get_context(m).process(report_python_bases, missing, reply);
    p.start();
    CHECK(reply.get(true, 60s) == "");
    CHECK(p.join(60s));
    CHECK(p.exitcode() == 0);
  }
}
