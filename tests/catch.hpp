// The one Catch2 include of the test suite: Debian ships Catch2 v2.13 (catch2/catch.hpp); with
// Catch2 v3 installed the same tests build against catch2/catch_all.hpp.
#pragma once

#if __has_include(<catch2/catch_all.hpp>)
#  include <catch2/catch_all.hpp>
#else
#  include <catch2/catch.hpp>
#endif
