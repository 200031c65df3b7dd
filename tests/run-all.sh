#!/usr/bin/env bash
# Installs what the tests need, builds tcpfault and runs every test (unit + integration),
# on the normal build; the integration tests again with every config on two event loops
# (`workers: 2`; SKIP_WORKERS=1 skips); the libFuzzer harnesses for FUZZ_SECONDS each
# (default 60; SKIP_FUZZ=1 skips them); then the whole suite again on an ASan+UBSan build
# (SKIP_ASAN=1).
# This is the README's test command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash docker/install-deps.sh test
# Integration tests open ~2,000 sockets at once.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
jobs="$(nproc)"

run_suite() {  # build-dir, extra cmake args...
    local dir="$1"
    shift
    cmake -S . -B "$dir" -G Ninja "$@"
    cmake --build "$dir" -j"$jobs"
    (cd "$dir" && ctest --output-on-failure --timeout 600)
}

run_suite "${BUILD_DIR:-build}" -DCMAKE_BUILD_TYPE=RelWithDebInfo
if [ "${SKIP_WORKERS:-0}" != "1" ]; then
    echo "=== integration tests with every config on two event loops (workers: 2) ==="
    (cd "${BUILD_DIR:-build}" && TCPFAULT_TEST_WORKERS=2 ctest --output-on-failure \
        --timeout 600 -R '^integration\.')
fi
if [ "${SKIP_FUZZ:-0}" != "1" ]; then
    echo "=== libFuzzer harnesses, ${FUZZ_SECONDS:-60}s each ==="
    FUZZ_SECONDS="${FUZZ_SECONDS:-60}" bash tests/fuzz/run.sh
fi
if [ "${SKIP_ASAN:-0}" != "1" ]; then
    echo "=== again with AddressSanitizer + UndefinedBehaviorSanitizer ==="
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
        SOAK_CHURN_SECONDS="${ASAN_SOAK_CHURN_SECONDS:-60}" \
        run_suite "${ASAN_BUILD_DIR:-build-asan}" -DCMAKE_BUILD_TYPE=Debug -DTCPFAULT_SANITIZE=ON
fi
