#!/usr/bin/env bash
# Longer fuzzing run: builds the libFuzzer targets with clang into build/fuzz and fuzzes each one
# for SECONDS (default 300) seconds, starting from the checked-in corpus fuzz/corpus/<target>/.
# New interesting inputs go to build/fuzz/fuzz/corpus-<target>/; crashes to build/fuzz/fuzz/.
#   fuzz/run.sh [SECONDS] [TARGET...]        e.g. fuzz/run.sh 3600 codec
#   MERGE=1 fuzz/run.sh 600                  also minimise the new inputs into fuzz/corpus/<target>/
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-300}"
shift || true
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(segment_header codec pipe_framing connection_handshake)
CXX="${CXX:-clang++}" cmake -S . -B build/fuzz -DCMAKE_BUILD_TYPE=Debug -DMPP_BUILD_FUZZERS=ON \
  -DMPP_BUILD_BENCHMARKS=OFF -DMPP_BUILD_EXAMPLES=OFF >/dev/null
for t in "${targets[@]}"; do
  cmake --build build/fuzz --target "fuzz_$t" -j"$(nproc)"
  work="build/fuzz/fuzz/corpus-$t"
  mkdir -p "$work"
  echo "== fuzzing $t for ${seconds}s =="
  (cd build/fuzz/fuzz && "./fuzz_$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
     -print_final_stats=1 "corpus-$t" "../../../fuzz/corpus/$t")
  if [[ "${MERGE:-0}" == 1 ]]; then
    "build/fuzz/fuzz/fuzz_$t" -merge=1 "fuzz/corpus/$t" "$work"
  fi
done
leftover=$(ls /dev/shm | grep -E '^mpp\.fuzz\.' || true)
if [[ -n "$leftover" ]]; then echo "removing fuzz leftovers: $leftover"; (cd /dev/shm && rm -f $leftover); fi
