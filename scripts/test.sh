#!/usr/bin/env bash
# The full test suite: installs missing dependencies, then configures, builds and tests one
# CMake workflow preset (default: dev; also asan, tsan, release).  Usage: scripts/test.sh [preset]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
preset="${1:-dev}"
cmake --workflow --preset "$preset"
