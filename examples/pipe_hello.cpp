// Streaming data through a Pipe, in C++:
//
//   from multiprocessing import Pipe
//   r, w = Pipe()
//   w.send("Hello, world")
//   r.recv()                      # 'Hello, world'
//
// and the same message sent from a child process, which closes the end it does not use, as in
// Python; once the child has exited, recv raises EOFError.
#include <fmt/format.h>

#include <string>

#include <mpp/pipe.hpp>
#include <mpp/process.hpp>

void greet(mpp::Connection<std::string> r, mpp::Connection<std::string> w) {
  r.close();
  w.send("Hello, world");
}
MPP_REGISTER(greet);  // so the spawn start method (the only one on Windows) can run it too

int main(int argc, char** argv) {
  mpp::bootstrap(argc, argv);  // like Python's freeze_support()

  auto [r, w] = mpp::Pipe<std::string>();
  w.send("Hello, world");
  const std::string first = r.recv();
  fmt::print("{}\n", first);  // Hello, world

  // Across processes, with a one-way pipe: r can only receive, w can only send.
  auto [rx, tx] = mpp::Pipe<std::string>(/*duplex=*/false);
  mpp::Process p(greet, rx, tx);
  p.start();
  tx.close();  // the child holds the write end now
  const std::string second = rx.recv();
  fmt::print("{}\n", second);  // Hello, world
  p.join();
  bool eof = false;
  try {
    rx.recv();
  } catch (const mpp::EOFError&) {
    eof = true;  // every holder of the write end has closed it or exited
  }
  fmt::print("EOFError after the child exited: {}\n", eof);
  return first == "Hello, world" && second == "Hello, world" && eof && p.exitcode() == 0 ? 0 : 1;
}
