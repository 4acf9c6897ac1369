// The quick start of the README: processes sharing a Value and an Array, then a Pool.
//
//   total, halves = Value('i', 0), Array('d', 4)
//   def work(i):
//       halves[i] = i / 2
//       with total.get_lock(): total.value += i
//   procs = [Process(target=work, args=(i,)) for i in range(4)]
//   ...
//   with Pool(2) as pool: print(total.value, halves[:], pool.map(square, [1, 2, 3]))
#include <fmt/ranges.h>
#include <mpp/mpp.hpp>

#include <vector>

int square(int x) { return x * x; }
void work(int i, mpp::Value<int> total, mpp::Array<double> halves) {
  halves.at(i) = i / 2.0;
  total.with_lock([&](int& t) { t += i; });
}
// Registered by name, so spawned processes (the only kind on Windows) can run them too.
MPP_REGISTER(square);
MPP_REGISTER(work);

int main(int argc, char** argv) {
  mpp::bootstrap(argc, argv);  // like Python's freeze_support(): spawned children start here
  mpp::Value<int> total{0};    // one int in shared memory, with a robust lock
  mpp::Array<double> halves(4);
  std::vector<mpp::Process> procs;
  for (int i = 0; i < 4; ++i) procs.emplace_back(work, i, total, halves);
  for (auto& p : procs) p.start();
  for (auto& p : procs) p.join();
  mpp::Pool pool(2);
  fmt::print("total={} halves={} squares={}\n", total.value(), halves.to_vector(),
             pool.map(square, std::vector{1, 2, 3}));
  return total.value() == 6 ? 0 : 1;
}
