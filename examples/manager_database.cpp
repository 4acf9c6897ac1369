// Sharing data through a Manager (Python's "Method 2: sharing data using a server process"):
// one process appends a (name, score) record to the shared `database` list, another prints
// every record and sees it. mpp keeps the list in shared memory, so there is no server process.
//
//   def get_data(data_list):
//       for data in data_list:
//           print("Name: %s \nScore: %d\n" % (data[0], data[1]))
//   def append_data(new_data, data_list):
//       data_list.append(new_data)
//       print("New data appended!\n")
//   with multiprocessing.Manager() as manager:
//       database = manager.list([('Maura', 70), ('Alexis', 79), ('Pete', 96)])
//       new_data = ('Leroy', 87)
//       p1 = multiprocessing.Process(target=append_data, args=(new_data, database))
//       p2 = multiprocessing.Process(target=get_data, args=(database,))
//       p1.start(); p1.join()
//       p2.start(); p2.join()
//       print("Data available to the Manager: ", database)
#include <mpp/manager.hpp>
#include <mpp/process.hpp>

#include <fmt/core.h>

#include <string>
#include <utility>

using Record = std::pair<std::string, int>;
using Database = mpp::SharedList<Record>;

void get_data(Database data_list) {
  for (const auto& [name, score] : data_list.to_vector())
    fmt::print("Name: {} \nScore: {}\n\n", name, score);
  std::fflush(stdout);
}

void append_data(Record new_data, Database data_list) {
  data_list.append(new_data);
  fmt::print("New data appended!\n\n");
  std::fflush(stdout);
}

// Registered, so that the spawn start method (the only one on Windows) can run them too.
MPP_REGISTER(get_data);
MPP_REGISTER(append_data);

int main(int argc, char** argv) {
  mpp::bootstrap(argc, argv);  // like Python's freeze_support(): spawned children start here
  mpp::Manager manager;
  auto database = manager.list<Record>("database");
  database.extend({{"Maura", 70}, {"Alexis", 79}, {"Pete", 96}});
  const Record new_data{"Leroy", 87};

  mpp::Process p1(append_data, new_data, database);
  mpp::Process p2(get_data, database);
  // p1 is joined before p2 starts so that the output does not depend on scheduling.
  p1.start();
  p1.join();
  p2.start();
  p2.join();

  fmt::print("Data available to the Manager:  [");
  const auto all = database.to_vector();
  for (std::size_t i = 0; i < all.size(); ++i)
    fmt::print("{}('{}', {})", i ? ", " : "", all[i].first, all[i].second);
  fmt::print("]\n");
  return all.size() == 4 && all.back() == new_data ? 0 : 1;
}
