#!/usr/bin/env bash
# Formats the C++ sources with the repository's .clang-format; with --check, changes nothing and
# fails listing the files that are not formatted (CI runs it that way).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v clang-format >/dev/null || { echo "format.sh: clang-format is not installed" >&2; exit 2; }
mapfile -t files < <(git ls-files '*.hpp' '*.cpp')
if [[ "${1:-}" == "--check" ]]; then
  bad=()
  for f in "${files[@]}"; do
    clang-format --dry-run --Werror "$f" >/dev/null 2>&1 || bad+=("$f")
  done
  if ((${#bad[@]})); then
    echo "not formatted (run scripts/format.sh):"; printf '  %s\n' "${bad[@]}"; exit 1
  fi
  echo "format: ${#files[@]} files formatted"
else
  clang-format -i "${files[@]}"
fi
