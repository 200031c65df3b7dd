#!/usr/bin/env bash
# The build stage of docker/Dockerfile as a script, so the same steps can run in the image and
# on a plain Debian 12 host (CI builds the image itself: tests/image/check-image.py):
#   install build deps -> configure (Release, Ninja) -> build the tcpfault target only -> strip
#   -> print ldd (and fail if a library is not found).
#
#   bash docker/build-steps.sh OUT_DIR [SOURCE_DIR]
#
# OUT_DIR receives tcpfault (stripped) and ldd.txt; the CMake build tree is OUT_DIR/build (or
# $BUILD_DIR). SOURCE_DIR defaults to the repository this script is in. Needs root or sudo only
# if a build package is missing (docker/install-deps.sh build).
set -euo pipefail
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    echo "usage: $0 OUT_DIR [SOURCE_DIR]" >&2
    exit 2
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$(mkdir -p "$1" && cd "$1" && pwd)"
src="$(cd "${2:-$here/..}" && pwd)"
build="${BUILD_DIR:-$out/build}"

echo "=== build-steps: dependencies"
bash "$src/docker/install-deps.sh" build

echo "=== build-steps: configure $src -> $build (Release, Ninja)"
# Tests are not run from this build, so the interpreter the test targets would use is given
# instead of searched for: the build image has no python3 and CMakeLists.txt requires one.
cmake -S "$src" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DTEST_PYTHON=/usr/bin/python3

echo "=== build-steps: build target tcpfault"
cmake --build "$build" --target tcpfault -j"$(nproc)"

echo "=== build-steps: strip -> $out/tcpfault"
strip --strip-all -o "$out/tcpfault" "$build/tcpfault"
"$out/tcpfault" --version

echo "=== build-steps: shared libraries (ldd $out/tcpfault)"
ldd "$out/tcpfault" | tee "$out/ldd.txt"
if grep -q "not found" "$out/ldd.txt"; then
    echo "build-steps: a shared library is missing" >&2
    exit 1
fi
