#!/usr/bin/env bash
# Installs missing dependencies, builds the quick-start example and runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cmake -S . -B build/demo -DCMAKE_BUILD_TYPE=Release -DMPP_BUILD_TESTS=OFF -DMPP_BUILD_BENCHMARKS=OFF >/dev/null
cmake --build build/demo --target quickstart -j "$(nproc)"
./build/demo/examples/quickstart
