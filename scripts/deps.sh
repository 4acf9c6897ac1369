#!/usr/bin/env bash
# Installs mpp's build dependencies from Debian/Ubuntu packages when they are missing (idempotent).
# Works as root or through sudo.  Usage: scripts/deps.sh [--windows] [--plots]
set -euo pipefail
# libboost-dev: only the benchmarks' peer and tests/boost_interop.cpp; clang: the CI's clang lane.
pkgs=(g++ clang clang-format cmake make libboost-dev libfmt-dev libcereal-dev catch2 libbenchmark-dev python3)
# libssl-dev: OpenSSL's libcrypto for mpp/connection.hpp's HMAC handshake (target mpp::connection).
pkgs+=(libssl-dev)
if [[ "${1:-}" == "--windows" ]]; then pkgs+=(g++-mingw-w64-x86-64 wine64); fi
pkgs+=(doxygen)  # the API reference: cmake -DMPP_BUILD_DOCS=ON, target docs
# Only for the optional picture of scripts/bench_table.py --svg; CI does not need it.
if [[ " $* " == *" --plots "* ]]; then pkgs+=(python3-matplotlib); fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"
  echo "mpp: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
