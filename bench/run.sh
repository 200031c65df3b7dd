#!/usr/bin/env bash
# tcpfault benchmark: tcpfault vs no proxy vs socat vs haproxy, on 127.0.0.1.
#
#   bench/run.sh                 full run (3 rounds, well under 10 minutes)
#   QUICK=1 bench/run.sh         quick run (~2-3 minutes)
#
# See bench/README.md for what is measured and the caveats. Exit status: 0 ok,
# 1 setup failure (missing tool, build, startup), 2 usage, 3 a measurement
# failed, a short connection failed or a proxy died (the table is still printed).
# Knobs (env vars):
#   QUICK=1          shorter runs: iperf3 -t 3, short connections 2 s, 5000 round trips, 0.2 s pauses
#   ROUNDS=N         alternating rounds (default 3); medians are reported
#   CONFIGS="..."    which configurations, default "direct tcpfault socat haproxy"
#   TCPFAULT_BIN=... use this binary instead of building build-bench/tcpfault
#   BUILD_DIR=...    where tcpfault (Release) and the C tools are built (default build-bench)
#   IPERF_T=S SC_D=S PP_N=N   iperf3 seconds, short-connection seconds, ping-pong round trips
#   ECHO_THREADS=N   echo server threads (default 1)
#   PIN_SERIAL=0     do not pin the serial tests (1-client short connections, ping-pong) to
#                    one CPU (default: pinned to PIN_CPU=0; see README)
#   SC_CLOSE=server|client|rst   who closes a short connection first (default server; README)
#   INSTALL=1        apt-get install missing iperf3/socat/haproxy instead of stopping
#   RESULTS_DIR=...  where raw results, logs and table.md go (default: a new /tmp dir)
#   MAX_SECONDS=N    hard time limit for the measuring part (default 900, QUICK 360)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
QUICK=${QUICK:-0}
ROUNDS=${ROUNDS:-3}
CONFIGS=${CONFIGS:-direct tcpfault socat haproxy}
BUILD_DIR=${BUILD_DIR:-$ROOT/build-bench}
TCPFAULT_BIN=${TCPFAULT_BIN:-}
TCPFAULT_BUILT=0
ECHO_THREADS=${ECHO_THREADS:-1}
PIN_SERIAL=${PIN_SERIAL:-1}
PIN_CPU=${PIN_CPU:-0}
SC_CLOSE=${SC_CLOSE:-server}
case $SC_CLOSE in
    server | client | rst) ;;
    *) echo "run.sh: SC_CLOSE must be server, client or rst" >&2; exit 2 ;;
esac
INSTALL=${INSTALL:-0}
if [[ $QUICK == 1 ]]; then
    IPERF_T=${IPERF_T:-3} SC_D=${SC_D:-2} PP_N=${PP_N:-5000} SETTLE=${SETTLE:-0.2} MAX_SECONDS=${MAX_SECONDS:-360}
else
    IPERF_T=${IPERF_T:-5} SC_D=${SC_D:-3} PP_N=${PP_N:-20000} SETTLE=${SETTLE:-0.5} MAX_SECONDS=${MAX_SECONDS:-900}
fi
PROXIES=()
for c in $CONFIGS; do
    case $c in
        direct) ;;
        tcpfault | socat | haproxy) PROXIES+=("$c") ;;
        *) echo "run.sh: unknown configuration '$c' in CONFIGS (known: direct tcpfault socat haproxy)" >&2; exit 2 ;;
    esac
done

log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
has_config() { [[ " $CONFIGS " == *" $1 "* ]]; }

# ---------------------------------------------------------------- processes
# Every long-running process is started with setsid, so it leads its own
# process group; cleanup kills exactly those groups (socat's per-connection
# children included) and nothing else on the machine.
PIDS=()
WATCHDOG=""
TMP=""
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n $WATCHDOG ]]; then kill -TERM -- "-$WATCHDOG" 2>/dev/null || true; fi
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    done
    local deadline=$((SECONDS + 5))
    for pid in "${PIDS[@]}"; do
        while kill -0 -- "-$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
        kill -KILL -- "-$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    [[ -n $TMP ]] && rm -rf "$TMP"
    if ((${#PIDS[@]})); then log "stopped ${#PIDS[@]} background process group(s)"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

# start_bg NAME CMD...: run CMD in the background in its own session, output to
# $LOGS/NAME.log; sets BG_PID.
start_bg() {
    local name=$1
    shift
    setsid "$@" >"$LOGS/$name.log" 2>&1 </dev/null &
    BG_PID=$!
    PIDS+=("$BG_PID")
    # setsid only forks when its caller leads a process group (job control on);
    # then $! would be a short-lived wrapper. Make sure we track the real thing.
    local pgid
    pgid=$(ps -o pgid= -p "$BG_PID" | tr -d ' ' || true)
    if [[ -n $pgid && $pgid != "$BG_PID" ]]; then
        sleep 0.2
        pgid=$(ps -o pgid= -p "$BG_PID" | tr -d ' ' || true)
        [[ -z $pgid || $pgid == "$BG_PID" ]] || die "cannot start $name in its own process group (run the script without job control)"
    fi
}

# wait_listen NAME PID PORT: wait until something listens on 127.0.0.1:PORT.
wait_listen() {
    local name=$1 pid=$2 port=$3 i
    for ((i = 0; i < 200; i++)); do
        kill -0 "$pid" 2>/dev/null || { tail -n 20 "$LOGS/$name.log" >&2; die "$name exited during startup (log: $LOGS/$name.log)"; }
        if ss -Hltn "sport = :$port" 2>/dev/null | grep -q .; then return 0; fi
        sleep 0.05
    done
    tail -n 20 "$LOGS/$name.log" >&2
    die "$name is not listening on 127.0.0.1:$port after 10 s"
}

# wait_tcpfault NAME PID PORT: wait for tcpfault's JSON "listening" log line.
wait_tcpfault() {
    local name=$1 pid=$2 port=$3 i
    for ((i = 0; i < 200; i++)); do
        kill -0 "$pid" 2>/dev/null || { tail -n 20 "$LOGS/$name.log" >&2; die "tcpfault ($name) exited during startup (log: $LOGS/$name.log)"; }
        if grep '"msg":"listening"' "$LOGS/$name.log" 2>/dev/null | grep -q "\"127.0.0.1:$port\""; then return 0; fi
        sleep 0.05
    done
    tail -n 20 "$LOGS/$name.log" >&2
    die "tcpfault ($name) did not log \"listening\" on 127.0.0.1:$port after 10 s"
}

# ---------------------------------------------------------------- tools
need=(cc python3 taskset ss setsid timeout ps)
has_config socat && need+=(socat)
has_config haproxy && need+=(haproxy)
need+=(iperf3)
if has_config tcpfault && [[ -z $TCPFAULT_BIN ]]; then need+=(cmake ninja); fi
missing=()
for t in "${need[@]}"; do command -v "$t" >/dev/null || missing+=("$t"); done
if ((${#missing[@]})); then
    pkgs=()
    for t in "${missing[@]}"; do
        case $t in
            iperf3 | socat | haproxy) pkgs+=("$t") ;;
            cc) pkgs+=(gcc) ;;
            ninja) pkgs+=(ninja-build) ;;
            ss) pkgs+=(iproute2) ;;
            taskset | setsid) pkgs+=(util-linux) ;;
            ps) pkgs+=(procps) ;;
            *) pkgs+=("$t") ;;
        esac
    done
    if [[ $INSTALL == 1 ]]; then
        log "installing: ${pkgs[*]}"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y "${pkgs[@]}"
    else
        log "missing tools: ${missing[*]}"
        log "install them with:  apt-get install -y ${pkgs[*]}"
        log "(the peers alone: apt-get install -y iperf3 socat haproxy), or rerun with INSTALL=1"
        exit 1
    fi
fi

# ---------------------------------------------------------------- build
RESULTS_DIR=${RESULTS_DIR:-$(mktemp -d /tmp/tcpfault-bench.XXXXXX)}
mkdir -p "$RESULTS_DIR"
LOGS=$RESULTS_DIR/logs
mkdir -p "$LOGS"
TMP=$(mktemp -d /tmp/tcpfault-bench-cfg.XXXXXX)
: >"$RESULTS_DIR/raw.tsv"
: >"$RESULTS_DIR/rss.tsv"

if has_config tcpfault && [[ -z $TCPFAULT_BIN ]]; then
    log "building tcpfault (Release) in $BUILD_DIR"
    if ! { cmake -S "$ROOT" -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release &&
        ninja -C "$BUILD_DIR" tcpfault; } >"$LOGS/build.log" 2>&1; then
        tail -n 30 "$LOGS/build.log" >&2
        die "tcpfault does not build (log: $LOGS/build.log); run the peers only with CONFIGS=\"direct socat haproxy\""
    fi
    TCPFAULT_BIN=$BUILD_DIR/tcpfault
    TCPFAULT_BUILT=1
fi
if has_config tcpfault; then
    [[ -x $TCPFAULT_BIN ]] || die "no tcpfault binary at $TCPFAULT_BIN"
fi
mkdir -p "$BUILD_DIR/bench"
for tool in shortconn echo_server; do
    cc -O2 -Wall -Wextra -pthread -o "$BUILD_DIR/bench/$tool" "$HERE/$tool.c" ||
        die "cannot compile bench/$tool.c"
done
SHORTCONN=$BUILD_DIR/bench/shortconn

# ---------------------------------------------------------------- start everything
ALL_CPUS=$(taskset -cp $$ | sed 's/.*: *//')
nports=$((2 + 2 * ${#PROXIES[@]}))
# Free ports below the ephemeral range, so the connection-heavy tests' own
# client ports never collide with a listener.
read -r -a ports <<<"$(python3 - "$nports" <<'EOF'
import random, socket, sys
n, got = int(sys.argv[1]), []
cands = list(range(20000, 32000))
random.shuffle(cands)
for p in cands:
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
        got.append(p)
    except OSError:
        pass
    finally:
        s.close()
    if len(got) == n:
        break
print(" ".join(map(str, got)))
EOF
)"
((${#ports[@]} == nports)) || die "could not find $nports free ports"

declare -A PORT PID_OF
PORT[direct,iperf]=${ports[0]}
PORT[direct,echo]=${ports[1]}
i=2
for p in "${PROXIES[@]}"; do
    PORT[$p,iperf]=${ports[$i]}
    PORT[$p,echo]=${ports[$((i + 1))]}
    i=$((i + 2))
done

start_bg iperf3-server iperf3 -s -B 127.0.0.1 -p "${PORT[direct,iperf]}"
PID_OF[direct,iperf]=$BG_PID
start_bg echo-server "$BUILD_DIR/bench/echo_server" 127.0.0.1 "${PORT[direct,echo]}" "$ECHO_THREADS"
PID_OF[direct,echo]=$BG_PID
wait_listen iperf3-server "${PID_OF[direct,iperf]}" "${PORT[direct,iperf]}"
wait_listen echo-server "${PID_OF[direct,echo]}" "${PORT[direct,echo]}"

for p in "${PROXIES[@]}"; do
    for t in iperf echo; do
        lp=${PORT[$p,$t]}
        up=${PORT[direct,$t]}
        name=$p-$t
        case $p in
            tcpfault)
                start_bg "$name" "$TCPFAULT_BIN" -l "127.0.0.1:$lp" -u "127.0.0.1:$up" --admin off --log-format json
                PID_OF[$p,$t]=$BG_PID
                wait_tcpfault "$name" "$BG_PID" "$lp"
                ;;
            socat)
                # backlog=4096: socat's default listen backlog is 5, which drops
                # SYNs under the 8-client short-connection test.
                start_bg "$name" socat "TCP-LISTEN:$lp,bind=127.0.0.1,fork,reuseaddr,backlog=4096" "TCP:127.0.0.1:$up"
                PID_OF[$p,$t]=$BG_PID
                wait_listen "$name" "$BG_PID" "$lp"
                ;;
            haproxy)
                # haproxy defaults otherwise: nbthread = one thread per usable CPU.
                cat >"$TMP/$name.cfg" <<EOF
global
    maxconn 8000
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    maxconn 8000
listen bench
    bind 127.0.0.1:$lp
    server upstream 127.0.0.1:$up
EOF
                haproxy -c -q -f "$TMP/$name.cfg" || die "haproxy rejects $TMP/$name.cfg"
                start_bg "$name" haproxy -db -f "$TMP/$name.cfg"
                PID_OF[$p,$t]=$BG_PID
                wait_listen "$name" "$BG_PID" "$lp"
                ;;
        esac
    done
done
log "listening: $(for k in "${!PORT[@]}"; do printf '%s=%s ' "$k" "${PORT[$k]}"; done)"

# Hard time limit for the measuring part (the build above is not counted).
setsid bash -c "sleep $MAX_SECONDS; kill -TERM $$" >/dev/null 2>&1 </dev/null &
WATCHDOG=$!

# ---------------------------------------------------------------- measures
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$RESULTS_DIR/raw.tsv"; }

# alive CFG TARGET: the process behind this configuration is still running.
alive() { kill -0 "${PID_OF[$1,$2]:-${PID_OF[direct,$2]}}" 2>/dev/null; }

# iperf_run ROUND CFG STREAMS MEASURE
iperf_run() {
    local r=$1 cfg=$2 streams=$3 m=$4 out bps
    local port=${PORT[$cfg,iperf]}
    out=$(timeout --foreground -k 3 $((IPERF_T + 20)) iperf3 -c 127.0.0.1 -p "$port" -t "$IPERF_T" -P "$streams" -J 2>>"$LOGS/clients.log") || true
    bps=$(python3 -c '
import json, sys
try:
    d = json.loads(sys.stdin.read())
    print(d["end"]["sum_received"]["bits_per_second"])
except Exception:
    print("NA")' <<<"$out")
    if [[ $bps == NA ]]; then
        log "  $m $cfg: iperf3 failed: $(python3 -c 'import json,sys
try: print(json.loads(sys.stdin.read()).get("error","?"))
except Exception: print("no JSON output")' <<<"$out")"
        alive "$cfg" iperf || log "  $cfg (iperf) process is gone: see $LOGS/$cfg-iperf.log"
    else
        log "  $m $cfg: $(python3 -c "print(f'{$bps/1e9:.2f}')") Gbit/s"
    fi
    record "$r" "$cfg" "$m" "$bps"
}

# Serial tests (one request in flight: 1-client short connections, ping-pong)
# run with everything on the path pinned to PIN_CPU: the echo server and the
# proxy instance under test (all threads), and the client (PIN_CMD). On this
# VM a wakeup on the other vCPU costs ~60 us, and whether the scheduler puts
# the peers on the same CPU changes from run to run, so unpinned results are
# bimodal (see README).
PIN_CMD=()
path_pids() {
    echo "${PID_OF[direct,echo]}"
    if [[ $1 != direct ]]; then echo "${PID_OF[$1,echo]}"; fi
}
pin_path() {
    local pid
    PIN_CMD=()
    [[ $PIN_SERIAL == 1 ]] || return 0
    PIN_CMD=(taskset -c "$PIN_CPU")
    for pid in $(path_pids "$1"); do
        taskset -a -p -c "$PIN_CPU" "$pid" >/dev/null 2>&1 || log "  cannot pin pid $pid (exited?)"
    done
}
unpin_path() {
    local pid
    [[ $PIN_SERIAL == 1 ]] || return 0
    for pid in $(path_pids "$1"); do taskset -a -p -c "$ALL_CPUS" "$pid" >/dev/null 2>&1 || true; done
}

# sc_run ROUND CFG CLIENTS MEASURE (pinned when CLIENTS is 1)
sc_run() {
    local r=$1 cfg=$2 clients=$3 m=$4 out rate errs
    local port=${PORT[$cfg,echo]}
    local mode=$SC_CLOSE-close
    [[ $SC_CLOSE == rst ]] && mode=rst
    PIN_CMD=()
    if ((clients == 1)); then pin_path "$cfg"; fi
    out=$(timeout --foreground -k 3 $((${SC_D%.*} + 30)) "${PIN_CMD[@]}" "$SHORTCONN" conn 127.0.0.1 "$port" "$clients" "$SC_D" "$mode" 2>>"$LOGS/clients.log") || true
    if ((clients == 1)); then unpin_path "$cfg"; fi
    rate=$(sed -n 's/.*conns_per_sec=\([0-9.]*\).*/\1/p' <<<"$out")
    errs=$(sed -n 's/.*errors=\([0-9]*\).*/\1/p' <<<"$out")
    [[ -n $rate ]] || { rate=NA; errs=NA; }
    log "  $m $cfg: $rate conn/s, errors=$errs"
    record "$r" "$cfg" "$m" "$rate"
    record "$r" "$cfg" sc_err "$errs"
}

# pp_run ROUND CFG: ping-pong through CFG (pinned).
pp_run() {
    local r=$1 cfg=$2 out p50 p99
    local port=${PORT[$cfg,echo]}
    pin_path "$cfg"
    out=$(timeout --foreground -k 3 120 "${PIN_CMD[@]}" "$SHORTCONN" pingpong 127.0.0.1 "$port" "$PP_N" 2>>"$LOGS/clients.log") || true
    unpin_path "$cfg"
    p50=$(sed -n 's/.*p50_us=\([0-9.]*\).*/\1/p' <<<"$out")
    p99=$(sed -n 's/.*p99_us=\([0-9.]*\).*/\1/p' <<<"$out")
    [[ -n $p50 ]] || { p50=NA; p99=NA; }
    log "  ping-pong $cfg: p50=$p50 us p99=$p99 us"
    record "$r" "$cfg" pp50 "$p50"
    record "$r" "$cfg" pp99 "$p99"
}

read -r -a cfgs <<<"$CONFIGS"
ncfg=${#cfgs[@]}
log "results: $RESULTS_DIR; $ROUNDS rounds over: ${cfgs[*]} (iperf3 -t $IPERF_T, short conns ${SC_D}s, $PP_N round trips)"
t_start=$SECONDS
for ((r = 1; r <= ROUNDS; r++)); do
    # Rotate the starting configuration each round so that no configuration
    # always runs right after the same neighbour (TIME_WAIT load, CPU state).
    order=()
    for ((k = 0; k < ncfg; k++)); do order+=("${cfgs[$(((k + r - 1) % ncfg))]}"); done
    log "round $r/$ROUNDS: ${order[*]}"
    for m in iperf1 iperf4 sc1 sc8 pp; do
        for cfg in "${order[@]}"; do
            case $m in
                iperf1) iperf_run "$r" "$cfg" 1 iperf1 ;;
                iperf4) iperf_run "$r" "$cfg" 4 iperf4 ;;
                sc1) sc_run "$r" "$cfg" 1 sc1 ;;
                sc8) sc_run "$r" "$cfg" 8 sc8 ;;
                pp) pp_run "$r" "$cfg" ;;
            esac
            sleep "$SETTLE"
        done
    done
done
log "measured in $((SECONDS - t_start)) s"

# ---------------------------------------------------------------- RSS + report
for p in "${PROXIES[@]}"; do
    for t in iperf echo; do
        pid=${PID_OF[$p,$t]}
        if [[ -r /proc/$pid/status ]]; then
            rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo '?')
            hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo '?')
            printf '%s\t%s\t%s\t%s\t%s\n' "$p" "$t" "$pid" "$rss" "$hwm" >>"$RESULTS_DIR/rss.tsv"
        else
            log "$p ($t) is no longer running: see $LOGS/$p-$t.log"
            printf '%s\t%s\t%s\t%s\t%s\n' "$p" "$t" "$pid" "exited" "exited" >>"$RESULTS_DIR/rss.tsv"
        fi
    done
done

{
    echo "# tcpfault benchmark — $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "- machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'), kernel $(uname -r)"
    if has_config tcpfault; then
        head=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')
        if [[ $TCPFAULT_BUILT == 1 ]]; then
            src="built (Release) by this run from the work tree at HEAD $head, plus any uncommitted edits"
        else
            src="binary given as TCPFAULT_BIN=$TCPFAULT_BIN, file dated $(date -u -r "$TCPFAULT_BIN" '+%Y-%m-%d %H:%M UTC'); work tree HEAD during the run: $head"
        fi
        echo "- tcpfault: $("$TCPFAULT_BIN" --version 2>/dev/null || echo '?'), $src"
    else
        echo "- tcpfault: not run"
    fi
    peers="$(iperf3 --version | head -n1 | cut -d' ' -f1-2)"
    if has_config socat; then peers+="; $(socat -V | sed -n 's/^socat version \([^ ]*\).*/socat \1/p')"; fi
    if has_config haproxy; then peers+="; $(haproxy -v | head -n1 | cut -d' ' -f1-3)"; fi
    echo "- peers: $peers"
    echo "- parameters: QUICK=$QUICK rounds=$ROUNDS iperf3 -t $IPERF_T, short connections ${SC_D}s," \
        "ping-pong $PP_N round trips, serial tests pinned to CPU $PIN_CPU: $([[ $PIN_SERIAL == 1 ]] && echo yes || echo no)," \
        "echo server threads=$ECHO_THREADS, short connections closed first by: $SC_CLOSE"
    echo
    python3 "$HERE/report.py" "$RESULTS_DIR"
} >"$RESULTS_DIR/table.md"
echo
cat "$RESULTS_DIR/table.md"
echo
log "raw data, logs and table.md: $RESULTS_DIR"

# Exit 3 if anything went wrong during the measures, so a broken run is not
# mistaken for a result.
problems=$(awk -F'\t' '$4 == "NA" {na++} $3 == "sc_err" && $4 + 0 > 0 {err += $4}
    END {if (na) printf "%d failed measurement(s) ", na; if (err) printf "%d short-connection error(s)", err}' "$RESULTS_DIR/raw.tsv")
if grep -q exited "$RESULTS_DIR/rss.tsv"; then problems+=" a proxy process exited"; fi
if [[ -n $problems ]]; then
    log "WARNING: $problems (see $LOGS)"
    exit 3
fi
