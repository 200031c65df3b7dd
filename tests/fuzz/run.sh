#!/usr/bin/env bash
# Builds the libFuzzer harnesses (build-fuzz/, clang, ASan+UBSan) and runs each for a bounded
# time. Prints every harness's final stats (executions, corpus, peak RSS) and exits 1 if any
# harness crashed, hung, ran out of memory or broke an invariant; crash inputs are kept in
# build-fuzz/artifacts/<harness>-crash-*, -timeout-*, -oom-*. Exit 2: cannot build.
#
#   bash tests/fuzz/run.sh                      # every harness, 60 s each
#   FUZZ_SECONDS=300 bash tests/fuzz/run.sh     # longer
#   FUZZ_TARGETS="fuzz_http fuzz_ftp" FUZZ_JOBS=2 bash tests/fuzz/run.sh
#   build-fuzz/tests/fuzz/fuzz_http build-fuzz/artifacts/fuzz_http-crash-...   # replay one
#
# Environment:
#   FUZZ_SECONDS   time per harness (default 60); total wall time is about
#                  ceil(targets / FUZZ_JOBS) * FUZZ_SECONDS plus the build
#   FUZZ_TARGETS   which harnesses (default: all five)
#   FUZZ_JOBS      harnesses run at once (default 1)
#   FUZZ_BUILD_DIR build tree (default build-fuzz)
#   FUZZ_WERROR    passed as TCPFAULT_WERROR (default OFF: clang 14 warns about project code
#                  that GCC accepts; the harnesses themselves always build with -Werror)
#
# Needs clang with libFuzzer: on Debian 12 `apt-get install -y clang libclang-rt-14-dev`
# (plus the project's build dependencies: bash docker/install-deps.sh build).
#
# The growing corpus of each harness is kept in build-fuzz/corpus/<harness> between runs; the
# checked-in seeds (tests/fuzz/corpus/<harness>, and examples/ for fuzz_config) are read-only.
set -uo pipefail
cd "$(dirname "$0")/../.."
root="$(pwd)"

seconds="${FUZZ_SECONDS:-60}"
targets="${FUZZ_TARGETS:-fuzz_config fuzz_units fuzz_ftp fuzz_trigger fuzz_http}"
jobs="${FUZZ_JOBS:-1}"
build="${FUZZ_BUILD_DIR:-build-fuzz}"
case "$build" in /*) ;; *) build="$root/$build" ;; esac
artifacts="$build/artifacts"
logs="$build/fuzz-logs"

for tool in clang clang++ cmake ninja; do
    if ! command -v "$tool" >/dev/null; then
        echo "run.sh: $tool not found; on Debian 12: apt-get install -y clang libclang-rt-14-dev" \
             "cmake ninja-build (and bash docker/install-deps.sh build)" >&2
        exit 2
    fi
done

echo "=== configure + build ($build)"
mkdir -p "$build"
if ! cmake -S "$root" -B "$build" -G Ninja -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
        -DTCPFAULT_FUZZ=ON -DCMAKE_BUILD_TYPE=Debug -DTCPFAULT_WERROR="${FUZZ_WERROR:-OFF}" \
        >"$build/configure.log" 2>&1; then
    cat "$build/configure.log" >&2
    exit 2
fi
# shellcheck disable=SC2086
if ! cmake --build "$build" --target $targets -j"$(nproc)"; then
    echo "run.sh: build failed" >&2
    exit 2
fi
mkdir -p "$artifacts" "$logs"

# Per harness: the largest input worth generating, and extra seed directories.
max_len() {
    case "$1" in
        fuzz_config) echo 16384 ;;
        fuzz_units) echo 256 ;;
        fuzz_ftp) echo 16384 ;;
        fuzz_trigger) echo 2300 ;;
        fuzz_http) echo 8192 ;;
        *) echo 4096 ;;
    esac
}
extra_seeds() {
    if [ "$1" = fuzz_config ]; then
        echo "$root/examples"
        [ -d "$root/examples/recipes" ] && echo "$root/examples/recipes"
    fi
    return 0
}

run_one() {  # harness -> writes $logs/<harness>.log, returns libFuzzer's exit code
    local t="$1"
    local bin="$build/tests/fuzz/$t"
    local corpus="$build/corpus/$t"
    mkdir -p "$corpus"
    local seeds=("$root/tests/fuzz/corpus/$t")
    local d
    while read -r d; do [ -n "$d" ] && seeds+=("$d"); done < <(extra_seeds "$t")
    # -timeout: one input taking longer is a hang (reported, saved as timeout-*).
    # The outer `timeout` is a hard stop for what libFuzzer cannot bound itself (an OOM report
    # walking a huge heap); it kills the whole process group.
    timeout -s KILL $((seconds + 120)) "$bin" "$corpus" "${seeds[@]}" \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=2048 \
        -max_len="$(max_len "$t")" -print_final_stats=1 -artifact_prefix="$artifacts/$t-" \
        >"$logs/$t.log" 2>&1
}

summary() {  # harness rc
    local t="$1" rc="$2" log="$logs/$t.log"
    local execs runs_line rss cov
    execs="$(grep -a 'stat::number_of_executed_units' "$log" | tail -1 | awk '{print $2}')"
    rss="$(grep -a 'stat::peak_rss_mb' "$log" | tail -1 | awk '{print $2}')"
    runs_line="$(grep -a '^Done [0-9]* runs' "$log" | tail -1)"
    cov="$(grep -aE '^#[0-9]+' "$log" | tail -1 | grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[0-9a-zA-Z]+' || true)"
    # No final stats (killed by the outer timeout): the last "#N ..." status line still says
    # how many inputs ran.
    if [ -z "$execs" ]; then
        execs="$(grep -aoE '^#[0-9]+' "$log" | tail -1 | tr -d '#')"
        [ -n "$execs" ] && execs="$execs+"
    fi
    local verdict=OK
    local found
    found="$(ls "$artifacts/$t-"* 2>/dev/null | head -5 || true)"
    if [ "$rc" != 0 ] || [ -n "$found" ]; then verdict=FAILED; fi
    printf '%-13s %-6s execs=%s (%s) peak_rss_mb=%s %s\n' "$t" "$verdict" "${execs:-?}" \
        "${runs_line:-no final stats: killed?}" "${rss:-?}" "$cov"
    if [ "$verdict" = FAILED ]; then
        echo "    exit code $rc; log: $log"
        grep -aE 'SUMMARY|INVARIANT FAILED|ERROR: (libFuzzer|AddressSanitizer|UndefinedBehavior)|runtime error' \
            "$log" | head -5 | sed 's/^/    /'
        [ -n "$found" ] && echo "$found" | sed 's/^/    artifact: /'
    fi
    [ "$verdict" = OK ]
}

# Artifacts from earlier runs would be reported again: keep them, but out of the way.
if ls "$artifacts"/* >/dev/null 2>&1; then
    old="$artifacts/previous-$(date +%Y%m%d-%H%M%S)"
    mkdir -p "$old"
    find "$artifacts" -maxdepth 1 -type f -exec mv {} "$old"/ \;
fi

echo "=== fuzzing: $targets (${seconds}s each, $jobs at a time)"
running=0
for t in $targets; do
    if [ "$running" -ge "$jobs" ]; then
        wait -n || true
        running=$((running - 1))
    fi
    ( run_one "$t"; echo $? >"$logs/$t.rc" ) &
    running=$((running + 1))
done
wait

failed=0
echo "=== results"
for t in $targets; do
    rc="$(cat "$logs/$t.rc" 2>/dev/null || echo 99)"
    summary "$t" "$rc" || failed=1
done
if [ "$failed" != 0 ]; then
    echo "run.sh: at least one harness failed (inputs in $artifacts; replay: $build/tests/fuzz/<harness> <file>)"
    exit 1
fi
echo "run.sh: all harnesses ran ${seconds}s without a finding"
