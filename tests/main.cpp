// Test runner shared by every test executable. It calls mpp::bootstrap first, so any test
// executable can be re-executed as a spawn child or as the fork server of mpp::Process.
#define CATCH_CONFIG_RUNNER  // Catch2 v2: we provide main(); ignored by v3
#include "catch.hpp"

#include <mpp/process.hpp>

int main(int argc, char** argv) {
  mpp::bootstrap(argc, argv);
  return Catch::Session().run(argc, argv);
}
