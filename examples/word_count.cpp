// Word count over many documents with Pool.imap_unordered and a progress display, as Python users
// write it with tqdm:
//
//   from collections import Counter
//   from multiprocessing import Pool
//   from tqdm import tqdm
//   def count_words(doc): return Counter(doc.split())
//   with Pool(2) as pool:
//       total = Counter()
//       for c in tqdm(pool.imap_unordered(count_words, docs, chunksize=16), total=len(docs)):
//           total.update(c)
//   print(total.most_common(5))
//
// The progress display goes to stderr: redrawn in place on a terminal, a plain line every few
// seconds otherwise (a log, CTest). The documents are generated, so the counts are known.
#include <fmt/core.h>
#include <mpp/mpp.hpp>
#include <mpp/pool.hpp>
#include <mpp/progress.hpp>

#include <algorithm>
#include <cstdint>
#include <map>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

using Counts = std::map<std::string, long>;

Counts count_words(std::string doc) {
  Counts c;
  std::istringstream in(doc);
  for (std::string w; in >> w;) ++c[w];
  return c;
}
// Registered, so that spawned workers (the only kind on Windows) can run it too.
MPP_REGISTER(count_words);

// Document i: 50 words, word k of it being kWords[(i + k * k) % 7].
std::string document(std::size_t i) {
  static const char* const kWords[] = {"the", "pool", "maps", "work", "over", "many", "processes"};
  std::string doc;
  for (std::size_t k = 0; k < 50; ++k) {
    doc += kWords[(i + k * k) % 7];
    doc += ' ';
  }
  return doc;
}

int main(int argc, char** argv) {
  mpp::bootstrap(argc, argv);
  std::vector<std::string> docs;
  for (std::size_t i = 0; i < 2000; ++i) docs.push_back(document(i));

  mpp::Pool pool(2);
  Counts total;
  mpp::ProgressOptions shown;
  shown.desc = "documents";
  for (const Counts& c :
       mpp::progress(pool.imap_unordered(count_words, docs, 16), docs.size(), shown))
    for (const auto& [word, n] : c) total[word] += n;
  pool.close();
  pool.join();

  std::vector<std::pair<std::string, long>> ranked(total.begin(), total.end());
  std::stable_sort(ranked.begin(), ranked.end(),
                   [](const auto& a, const auto& b) { return a.second > b.second; });
  long words = 0;
  for (const auto& [word, n] : ranked) words += n;
  for (std::size_t i = 0; i < std::min<std::size_t>(5, ranked.size()); ++i)
    fmt::print("{:>10} {}\n", ranked[i].first, ranked[i].second);
  fmt::print("{} words in {} documents\n", words, docs.size());
  return words == 2000 * 50 ? 0 : 1;
}
