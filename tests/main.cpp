// Test runner shared by every test executable.
#define CATCH_CONFIG_RUNNER  // Catch2 v2: we provide main(); ignored by v3
#include "catch.hpp"

int main(int argc, char** argv) { return Catch::Session().run(argc, argv); }
