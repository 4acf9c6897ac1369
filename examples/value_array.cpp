// Sharing data using shared memory (Value and Array), in C++:
//
//   def square_list(numlist, result, square_sum):
//       for idx, num in enumerate(numlist):
//           result[idx] = num * num
//       square_sum.value = sum(result)
//
//   result = multiprocessing.Array('i', 4)
//   square_sum = multiprocessing.Value('i')
//   p = multiprocessing.Process(target=square_list, args=(num_list, result, square_sum))
//   p.start(); p.join()
//   list(result)      # [1, 4, 9, 16]
//   square_sum.value  # 30
//
// The child writes into the parent's Array and Value; the parent sees the results. Also shown:
// Value("b", 129) wrapping to -127 and the lock Python's Value carries.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cstdint>
#include <numeric>
#include <vector>

#include <mpp/array.hpp>
#include <mpp/process.hpp>
#include <mpp/value.hpp>

void square_list(std::vector<int> numlist, mpp::Array<int> result, mpp::Value<int> square_sum) {
  for (std::size_t idx = 0; idx < numlist.size(); ++idx) result[idx] = numlist[idx] * numlist[idx];
  square_sum = std::accumulate(result.begin(), result.end(), 0);
}
MPP_REGISTER(square_list);  // so the spawn and forkserver start methods can find it too

void add_many(mpp::Value<std::int64_t> counter, int n) {
  for (int i = 0; i < n; ++i) counter.with_lock([](std::int64_t& c) { ++c; });
}
MPP_REGISTER(add_many);

int main(int argc, char** argv) {
  mpp::bootstrap(argc, argv);  // like Python's freeze_support(): needed by spawn

  mpp::Array<int> result(4);   // multiprocessing.Array('i', 4): four zeros
  mpp::Value<int> square_sum;  // multiprocessing.Value('i'): zero
  const std::vector<int> num_list{1, 2, 3, 4};

  mpp::Process p(square_list, num_list, result, square_sum);
  p.start();
  p.join();

  fmt::print("{}\n", result.to_vector());  // [1, 4, 9, 16]
  fmt::print("{}\n", square_sum.value());  // 30

  // Value("b", 129).value == -127: a signed byte wraps around in both languages.
  mpp::Value<std::int8_t> b(static_cast<std::int8_t>(129));
  fmt::print("{}\n", b.value());  // -127

  // Four processes, each adding 1000 under the Value's lock: nothing is lost.
  mpp::Value<std::int64_t> counter;
  std::vector<mpp::Process> procs;
  for (int i = 0; i < 4; ++i) procs.emplace_back(add_many, counter, 1000);
  for (auto& q : procs) q.start();
  for (auto& q : procs) q.join();
  fmt::print("{}\n", counter.value());  // 4000

  const bool ok = result.to_vector() == std::vector<int>{1, 4, 9, 16} && square_sum.value() == 30 &&
                  b.value() == -127 && counter.value() == 4000 && p.exitcode() == 0;
  return ok ? 0 : 1;
}
