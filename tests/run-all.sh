#!/usr/bin/env bash
# Installs what the tests need, builds tcpfault and runs every test (unit + integration).
# This is the README's test command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash docker/install-deps.sh test
build="${BUILD_DIR:-build}"
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build "$build" -j"$(nproc)"
# Integration tests open ~2,000 sockets at once.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cd "$build"
ctest --output-on-failure --timeout 600 "$@"
