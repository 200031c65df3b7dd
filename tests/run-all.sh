#!/usr/bin/env bash
# Installs what the tests need, builds tcpfault and runs every test (unit + integration),
# on the normal build; builds the Docker image with podman from a local mmdebstrap base and runs
# it from its own filesystem (tests/image/check-image.py, ~3-4 min on a fresh machine;
# SKIP_IMAGE=1 skips it); the integration tests again with every config on two event loops
# (`workers: 2`; SKIP_WORKERS=1 skips); the libFuzzer harnesses for FUZZ_SECONDS each
# (default 60; SKIP_FUZZ=1 skips them); then the whole suite again on an ASan+UBSan build
# (SKIP_ASAN=1). SKIP_NODE=1 skips the test that installs Toxiproxy's Node client from npm.
# This is the README's test command and what CI runs.
#
# The two builds use the README's "Building by hand" commands verbatim, so a documented
# command cannot rot: tests/integration/test_docs.py checks that the lines below match it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash docker/install-deps.sh test
# Integration tests open ~2,000 sockets at once.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
# The README's commands carry no -j: cmake --build takes the parallelism from here.
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"

run_tests() {  # build-dir, ctest args...
    local dir="$1"
    shift
    (cd "$dir" && ctest --output-on-failure --timeout 600 "$@")
}

cmake -S . -B build -G Ninja && cmake --build build
run_tests build
if [ "${SKIP_IMAGE:-0}" != "1" ]; then
    echo "=== the Docker image: build (podman, local Debian base) and run it from its filesystem ==="
    /usr/bin/python3 tests/image/check-image.py
fi
if [ "${SKIP_WORKERS:-0}" != "1" ]; then
    echo "=== integration tests with every config on two event loops (workers: 2) ==="
    # The 5-minute churn soak ran in the pass above; here a minute of it, on two loops.
    TCPFAULT_TEST_WORKERS=2 SOAK_CHURN_SECONDS="${WORKERS_SOAK_CHURN_SECONDS:-60}" \
        run_tests build -R '^integration\.'
fi
if [ "${SKIP_FUZZ:-0}" != "1" ]; then
    echo "=== libFuzzer harnesses, ${FUZZ_SECONDS:-60}s each ==="
    FUZZ_SECONDS="${FUZZ_SECONDS:-60}" bash tests/fuzz/run.sh
fi
if [ "${SKIP_ASAN:-0}" != "1" ]; then
    echo "=== again with AddressSanitizer + UndefinedBehaviorSanitizer ==="
    cmake -S . -B build-asan -G Ninja -DTCPFAULT_SANITIZE=ON && cmake --build build-asan
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
        SOAK_CHURN_SECONDS="${ASAN_SOAK_CHURN_SECONDS:-60}" run_tests build-asan
fi
