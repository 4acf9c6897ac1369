// Why processes need shared state (the classic first example of sharing data between processes),
// in C++:
//
//   result = []
//   def square(num_list):
//       global result
//       for num in num_list:
//           result.append(num * num)
//       print('Child process result:', result)
//
//   num_list = [1, 2, 3, 4]
//   p1 = multiprocessing.Process(target=square, args=(num_list, ))
//   p1.start()
//   p1.join()
//   print('Main process result:', result)
//
// Output:
//   Child process result: [1, 4, 9, 16]
//   Main process result: []
//
// Every process has its own memory: the child appends to its own copy of the global list, and
// the parent's list stays empty. Sharing needs the next primitives (Value, Array, Queue, Manager).
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <mpp/process.hpp>
#include <vector>

std::vector<int> result;  // a global of the program, like Python's module-level list

void square(std::vector<int> num_list) {
  for (int num : num_list) result.push_back(num * num);
  fmt::print("Child process result: {}\n", result);
}
MPP_REGISTER(square);  // so that the spawn and forkserver start methods can run it as well

int main(int argc, char** argv) {
  mpp::bootstrap(argc, argv);  // like Python's freeze_support(): a spawned child stops here

  const std::vector<int> num_list{1, 2, 3, 4};
  // Same result with every start method this platform has (fork, spawn and forkserver on Linux;
  // spawn only on Windows, as in Python).
  for (auto method : mpp::get_all_start_methods()) {
    auto p1 = mpp::get_context(method).process(square, num_list);
    p1.start();
    p1.join();
    fmt::print("Main process result: {} ({}, {})\n", result, method, p1);
    if (p1.exitcode() != 0 || !result.empty()) return 1;
  }
  return 0;
}
