#!/usr/bin/env bash
# tcpfault benchmark: tcpfault (plain, with 20 and 200 idle rules, with a 0 ms latency rule,
# with workers: 2) vs no proxy vs socat vs haproxy (plain and with splice-auto) vs Toxiproxy
# (when TOXIPROXY names its server binary), on 127.0.0.1.
#
#   bench/run.sh                 full run (3 rounds, about 10 minutes)
#   QUICK=1 bench/run.sh         quick run (~2 minutes)
#
# See bench/README.md for what is measured and the caveats. Exit status: 0 ok,
# 1 setup failure (missing tool, build, startup), 2 usage, 3 a measurement
# failed, a short connection failed or a proxy died (the table is still printed).
# Knobs (env vars):
#   QUICK=1          shorter runs: 2 rounds, iperf3 -t 1, short connections 1 s, 3000 round
#                    trips, 0.1 s pauses, 2000 idle connections
#   ROUNDS=N         alternating rounds (default 3); medians are reported
#   CONFIGS="..."    which configurations, default "direct tcpfault tcpfault+20rules
#                    tcpfault+200rules tcpfault+lat0 tcpfault-w2 socat haproxy haproxy-splice
#                    toxiproxy"; tcpfault+<N>rules, tcpfault-w<N> and tcpfault-wauto work for any N
#   TOXIPROXY=...    the toxiproxy-server binary (Toxiproxy is not packaged: without it the
#                    toxiproxy configuration is skipped, with a note in the log and the table)
#   TCPFAULT_BIN=... use this binary instead of building build-bench/tcpfault
#   BUILD_DIR=...    where tcpfault (Release) and the C tools are built (default build-bench)
#   IPERF_T=S SC_D=S PP_N=N   iperf3 seconds, short-connection seconds, ping-pong round trips
#   ECHO_THREADS=N   echo server threads (default 1)
#   PIN_SERIAL=0     do not pin the serial tests (1-client short connections, ping-pong) to
#                    one CPU (default: pinned to PIN_CPU=0; see README)
#   SC_CLOSE=server|client|rst   who closes a short connection first (default server; README)
#   INSTALL=1        apt-get install missing iperf3/socat/haproxy instead of stopping
#   RESULTS_DIR=...  where raw results, logs and table.md go (default: a new /tmp dir)
#   MAX_SECONDS=N    hard time limit for the measuring part (default 1200, QUICK 360)
#   RSS_N=N          idle connections held open for the memory-per-connection row
#                    (default 10000, QUICK 2000; lowered to fit the fd hard limit, see README)
#   RSS_DEADLINE=S   seconds allowed to open them (default 60); RSS=0 skips that phase
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
QUICK=${QUICK:-0}
CONFIGS=${CONFIGS:-direct tcpfault tcpfault+20rules tcpfault+200rules tcpfault+lat0 tcpfault-w2 socat haproxy haproxy-splice toxiproxy}
TOXIPROXY=${TOXIPROXY:-}
TOXIPROXY_NOTE=""
if [[ " $CONFIGS " == *" toxiproxy "* ]]; then
    if [[ -z $TOXIPROXY ]]; then
        TOXIPROXY_NOTE="Toxiproxy: not run (it is not packaged; give TOXIPROXY=/path/to/toxiproxy-server)"
    elif [[ ! -x $TOXIPROXY ]]; then
        TOXIPROXY_NOTE="Toxiproxy: not run (TOXIPROXY=$TOXIPROXY is not an executable file)"
    fi
    if [[ -n $TOXIPROXY_NOTE ]]; then
        CONFIGS=$(tr ' ' '\n' <<<"$CONFIGS" | grep -vx toxiproxy | paste -sd' ' -)
        printf '[bench %s] %s\n' "$(date +%T)" "$TOXIPROXY_NOTE" >&2
    fi
fi
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
    ROUNDS=${ROUNDS:-2} IPERF_T=${IPERF_T:-1} SC_D=${SC_D:-1} PP_N=${PP_N:-3000} SETTLE=${SETTLE:-0.1}
    MAX_SECONDS=${MAX_SECONDS:-360} RSS_N=${RSS_N:-2000}
else
    ROUNDS=${ROUNDS:-3} IPERF_T=${IPERF_T:-5} SC_D=${SC_D:-3} PP_N=${PP_N:-20000} SETTLE=${SETTLE:-0.5}
    MAX_SECONDS=${MAX_SECONDS:-1200} RSS_N=${RSS_N:-10000}
fi
RSS=${RSS:-1}
RSS_DEADLINE=${RSS_DEADLINE:-60}
PROXIES=()
for c in $CONFIGS; do
    case $c in
        direct) ;;
        tcpfault | socat | haproxy | haproxy-splice | toxiproxy | tcpfault+lat0) PROXIES+=("$c") ;;
        *)
            if [[ $c =~ ^tcpfault\+[1-9][0-9]*rules$ || $c =~ ^tcpfault-w([1-9][0-9]*|auto)$ ]]; then
                PROXIES+=("$c")
            else
                echo "run.sh: unknown configuration '$c' in CONFIGS (known: direct tcpfault" \
                    "tcpfault+<N>rules tcpfault+lat0 tcpfault-w<N> tcpfault-wauto socat haproxy" \
                    "haproxy-splice toxiproxy)" >&2
                exit 2
            fi
            ;;
    esac
done
[[ $RSS_N =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: RSS_N must be a positive integer" >&2; exit 2; }

log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
has_config() { [[ " $CONFIGS " == *" $1 "* ]]; }
# kind_of CFG: the program behind a configuration (tcpfault+20rules -> tcpfault).
kind_of() {
    case $1 in
        tcpfault*) echo tcpfault ;;
        haproxy*) echo haproxy ;;
        *) echo "$1" ;;
    esac
}
has_kind() {
    local c
    for c in $CONFIGS; do [[ $(kind_of "$c") == "$1" ]] && return 0; done
    return 1
}

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
        while group_alive "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
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

# group_alive PGID: some process of that group is still running (zombies, e.g.
# socat children orphaned by the kill and not yet reaped, do not count).
group_alive() {
    ps -e -o pgid=,stat= | awk -v g="$1" '$1 == g && $2 !~ /^Z/ {found = 1} END {exit !found}'
}

# stop_group PID: stop one process group started by start_bg (TERM, then KILL
# after 5 s) and forget it, so cleanup never signals a recycled process group id.
stop_group() {
    local pid=$1 q deadline=$((SECONDS + 5))
    kill -TERM -- "-$pid" 2>/dev/null || true
    while group_alive "$pid" && ((SECONDS < deadline)); do sleep 0.05; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    local keep=()
    for q in "${PIDS[@]}"; do [[ $q == "$pid" ]] || keep+=("$q"); done
    PIDS=("${keep[@]}")
}

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
# Returns 1 (after logging why) if it does not within 10 s or PID exits.
wait_listen() {
    local name=$1 pid=$2 port=$3 i
    for ((i = 0; i < 200; i++)); do
        kill -0 "$pid" 2>/dev/null || { tail -n 20 "$LOGS/$name.log" >&2; log "ERROR: $name exited during startup (log: $LOGS/$name.log)"; return 1; }
        if ss -Hltn "sport = :$port" 2>/dev/null | grep -q .; then return 0; fi
        sleep 0.05
    done
    tail -n 20 "$LOGS/$name.log" >&2
    log "ERROR: $name is not listening on 127.0.0.1:$port after 10 s"
    return 1
}

# wait_tcpfault NAME PID PORT: wait for tcpfault's JSON "listening" log line.
wait_tcpfault() {
    local name=$1 pid=$2 port=$3 i
    for ((i = 0; i < 200; i++)); do
        kill -0 "$pid" 2>/dev/null || { tail -n 20 "$LOGS/$name.log" >&2; log "ERROR: tcpfault ($name) exited during startup (log: $LOGS/$name.log)"; return 1; }
        if grep '"msg":"listening"' "$LOGS/$name.log" 2>/dev/null | grep -q "\"127.0.0.1:$port\""; then return 0; fi
        sleep 0.05
    done
    tail -n 20 "$LOGS/$name.log" >&2
    log "ERROR: tcpfault ($name) did not log \"listening\" on 127.0.0.1:$port after 10 s"
    return 1
}

# ---------------------------------------------------------------- tools
need=(cc python3 taskset ss setsid timeout ps awk)
has_config socat && need+=(socat)
has_kind haproxy && need+=(haproxy)
need+=(iperf3)
if has_kind tcpfault && [[ -z $TCPFAULT_BIN ]]; then need+=(cmake ninja); fi
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
            awk) pkgs+=(mawk) ;;
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
CFG_DIR=$RESULTS_DIR/configs
mkdir -p "$CFG_DIR"
TMP=$(mktemp -d /tmp/tcpfault-bench-cfg.XXXXXX)
: >"$RESULTS_DIR/raw.tsv"
: >"$RESULTS_DIR/rss.tsv"
: >"$RESULTS_DIR/idle.tsv"
: >"$RESULTS_DIR/info.md"

if has_kind tcpfault && [[ -z $TCPFAULT_BIN ]]; then
    log "building tcpfault (Release) in $BUILD_DIR"
    if ! { cmake -S "$ROOT" -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release &&
        ninja -C "$BUILD_DIR" tcpfault; } >"$LOGS/build.log" 2>&1; then
        tail -n 30 "$LOGS/build.log" >&2
        die "tcpfault does not build (log: $LOGS/build.log); run the peers only with CONFIGS=\"direct socat haproxy\""
    fi
    TCPFAULT_BIN=$BUILD_DIR/tcpfault
    TCPFAULT_BUILT=1
fi
if has_kind tcpfault; then
    [[ -x $TCPFAULT_BIN ]] || die "no tcpfault binary at $TCPFAULT_BIN"
fi
mkdir -p "$BUILD_DIR/bench"
for tool in shortconn echo_server idleconn; do
    cc -O2 -Wall -Wextra -pthread -o "$BUILD_DIR/bench/$tool" "$HERE/$tool.c" ||
        die "cannot compile bench/$tool.c"
done
SHORTCONN=$BUILD_DIR/bench/shortconn
IDLECONN=$BUILD_DIR/bench/idleconn
PROCTOOL=(python3 "$HERE/proctool.py")

# File descriptors: the idle-connection phase holds RSS_N connections, and a
# proxy holds 2 sockets for each (client side + upstream side). Raise the soft
# limit (inherited by everything started below) as far as needed and allowed;
# without CAP_SYS_RESOURCE the hard limit is the ceiling.
fd_hard=$(ulimit -Hn)
[[ $fd_hard == unlimited ]] && fd_hard=$(cat /proc/sys/fs/nr_open)
fd_want=$((2 * RSS_N + 1024))
((fd_want < fd_hard)) || fd_want=$fd_hard
if (($(ulimit -n) < fd_want)); then
    ulimit -n "$fd_want" 2>/dev/null || log "cannot raise ulimit -n to $fd_want; it stays $(ulimit -n)"
fi
FD_LIMIT=$(ulimit -n)
# 100 descriptors of slack for the proxy's own (listeners, epoll, pipes, logs).
RSS_N_MAX=$(((FD_LIMIT - 100) / 2))
RSS_N_USED=$RSS_N
if ((RSS_N_USED > RSS_N_MAX)); then
    RSS_N_USED=$RSS_N_MAX
    log "idle connections: RSS_N=$RSS_N asked, $RSS_N_USED used: ulimit -n is $FD_LIMIT (hard limit $(ulimit -Hn)) and a proxy holds 2 fds per connection"
fi

# ---------------------------------------------------------------- start everything
ALL_CPUS=$(taskset -cp $$ | sed 's/.*: *//')
# Per proxy: the iperf3 and echo instances, the idle-phase instance and its upstream, and an
# API port for each of the three instances (Toxiproxy is configured over HTTP).
nports=$((2 + 7 * ${#PROXIES[@]}))
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
    # A dedicated proxy instance and idle upstream for the memory-per-connection phase.
    PORT[$p,idle]=${ports[$((i + 2))]}
    PORT[$p,idleup]=${ports[$((i + 3))]}
    PORT[$p,api-iperf]=${ports[$((i + 4))]}
    PORT[$p,api-echo]=${ports[$((i + 5))]}
    PORT[$p,api-idle]=${ports[$((i + 6))]}
    i=$((i + 7))
done

# tcpfault_yaml CFG LISTEN_PORT UPSTREAM_PORT: the configuration file of a
# tcpfault variant. The proxy part is what `-l/-u` builds internally.
tcpfault_yaml() {
    local cfg=$1 lp=$2 up=$3 i n nclients ndata dir
    if [[ $cfg =~ ^tcpfault-w([0-9]+|auto)$ ]]; then echo "workers: ${BASH_REMATCH[1]}"; fi
    cat <<EOF
proxies:
  - name: main
    listen: '127.0.0.1:$lp'
    upstream: '127.0.0.1:$up'
EOF
    if [[ $cfg =~ ^tcpfault\+([0-9]+)rules$ ]]; then
        # Rules that are evaluated but never fire, one in five of each kind of false
        # condition: client networks that exclude 127.0.0.1 (checked at accept), a
        # connection ordinal never reached, a byte count never reached (counted per
        # chunk), a time never reached (a timer per connection) and a marker never sent
        # (the matcher scans every byte of that stream; alternately client->server and
        # server->client).
        n=${BASH_REMATCH[1]}
        local cidrs=('[10.0.0.0/8]' '[192.168.0.0/16, 172.16.0.0/12]' '["::1/128"]' '[100.64.0.0/10, "fd00::/8"]')
        local dirs=(upstream downstream)
        echo "    rules:"
        for ((i = 1; i <= n; i++)); do
            dir=${dirs[$(((i / 5) % 2))]}
            case $((i % 5)) in
            1) printf '      - name: other-clients-%d\n        match: {clients: %s}\n        fault: {type: reset}\n' \
                "$i" "${cidrs[$(((i / 5) % ${#cidrs[@]}))]}" ;;
            2) printf '      - name: far-ordinal-%d\n        match: {connections: {nth: %d}}\n        fault: {type: reset}\n' "$i" "$((1000000000 + i))" ;;
            3) printf '      - name: far-bytes-%d\n        when: {direction: %s, after_bytes: 1TiB}\n        fault: {type: reset}\n' "$i" "$dir" ;;
            4) printf '      - name: far-time-%d\n        when: {after: 24h}\n        fault: {type: reset}\n' "$i" ;;
            0) printf '      - name: never-sent-%d\n        when: {direction: %s, data: "never-sent-marker-%d"}\n        fault: {type: reset, to: client}\n' "$i" "$dir" "$i" ;;
            esac
        done
    elif [[ $cfg == tcpfault+lat0 ]]; then
        # Both directions, so the bulk (client->server) data goes through it too.
        cat <<EOF
    rules:
      - name: latency-zero
        fault: {type: latency, delay: 0ms, direction: both}
EOF
    fi
}

# start_proxy CFG NAME LISTEN_PORT UPSTREAM_PORT MAXCONN: start one proxy
# instance and wait until it listens; sets BG_PID. Returns 1 on failure.
# MAXCONN only matters to haproxy.
start_proxy() {
    local cfg=$1 name=$2 lp=$3 up=$4 maxconn=$5
    case $cfg in
        tcpfault)
            start_bg "$name" "$TCPFAULT_BIN" -l "127.0.0.1:$lp" -u "127.0.0.1:$up" --admin off --log-format json
            wait_tcpfault "$name" "$BG_PID" "$lp"
            ;;
        tcpfault*)
            tcpfault_yaml "$cfg" "$lp" "$up" >"$CFG_DIR/$name.yaml"
            if ! "$TCPFAULT_BIN" --check -c "$CFG_DIR/$name.yaml" >"$LOGS/$name.check.log" 2>&1; then
                cat "$LOGS/$name.check.log" >&2
                log "ERROR: tcpfault rejects $CFG_DIR/$name.yaml"
                return 1
            fi
            start_bg "$name" "$TCPFAULT_BIN" -c "$CFG_DIR/$name.yaml" --admin off --log-format json
            wait_tcpfault "$name" "$BG_PID" "$lp"
            ;;
        socat)
            # backlog=4096: socat's default listen backlog is 5, which drops
            # SYNs under the 8-client short-connection test.
            start_bg "$name" socat "TCP-LISTEN:$lp,bind=127.0.0.1,fork,reuseaddr,backlog=4096" "TCP:127.0.0.1:$up"
            wait_listen "$name" "$BG_PID" "$lp"
            ;;
        haproxy | haproxy-splice)
            # haproxy defaults otherwise: no nbthread, so one thread per usable CPU.
            # splice-auto: haproxy moves bytes socket -> pipe -> socket with splice(2) when it
            # sees a stream worth it (no copy through user space). Its pipes count against the
            # fd limit (maxpipes defaults to maxconn/4, which with the idle phase's maxconn
            # does not fit in 20,000 descriptors); 64 pipes are plenty for 4 bulk streams.
            local splice_global="" splice_defaults=""
            if [[ $cfg == haproxy-splice ]]; then
                # The idle phase (maxconn near the fd limit) moves 1 byte per connection.
                splice_global="    maxpipes $((maxconn > 8000 ? 8 : 64))"
                splice_defaults="    option splice-auto"
            fi
            cat >"$CFG_DIR/$name.cfg" <<EOF
global
    maxconn $maxconn
$splice_global
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    maxconn $maxconn
$splice_defaults
listen bench
    bind 127.0.0.1:$lp
    server upstream 127.0.0.1:$up
EOF
            if ! haproxy -c -q -f "$CFG_DIR/$name.cfg" >"$LOGS/$name.check.log" 2>&1; then
                cat "$LOGS/$name.check.log" >&2
                log "ERROR: haproxy rejects $CFG_DIR/$name.cfg"
                return 1
            fi
            start_bg "$name" haproxy -db -f "$CFG_DIR/$name.cfg"
            wait_listen "$name" "$BG_PID" "$lp"
            ;;
        toxiproxy)
            # One toxiproxy-server per instance, on its own API port, with one proxy and no
            # toxics: what a Toxiproxy user runs when no fault is on.
            local api=${PORT[$cfg,api-${name##*-}]}
            start_bg "$name" "$TOXIPROXY" -host 127.0.0.1 -port "$api"
            wait_listen "$name" "$BG_PID" "$api" || return 1
            if ! python3 - "$api" "$lp" "$up" >>"$LOGS/$name.api.log" 2>&1 <<'PYEOF'; then
import json, sys, urllib.request
api, lp, up = sys.argv[1:]
body = json.dumps({"name": "bench", "listen": f"127.0.0.1:{lp}",
                   "upstream": f"127.0.0.1:{up}", "enabled": True}).encode()
req = urllib.request.Request(f"http://127.0.0.1:{api}/proxies", data=body,
                             headers={"Content-Type": "application/json"}, method="POST")
with urllib.request.urlopen(req, timeout=10) as r:
    print("created proxy:", r.status, r.read().decode())
PYEOF
                tail -n 5 "$LOGS/$name.api.log" >&2
                log "ERROR: could not create the Toxiproxy proxy of $name"
                return 1
            fi
            wait_listen "$name" "$BG_PID" "$lp"
            ;;
        *)
            log "ERROR: no way to start $cfg"
            return 1
            ;;
    esac
}

start_bg iperf3-server iperf3 -s -B 127.0.0.1 -p "${PORT[direct,iperf]}"
PID_OF[direct,iperf]=$BG_PID
start_bg echo-server "$BUILD_DIR/bench/echo_server" 127.0.0.1 "${PORT[direct,echo]}" "$ECHO_THREADS"
PID_OF[direct,echo]=$BG_PID
wait_listen iperf3-server "${PID_OF[direct,iperf]}" "${PORT[direct,iperf]}" || die "iperf3 -s did not start"
wait_listen echo-server "${PID_OF[direct,echo]}" "${PORT[direct,echo]}" || die "echo_server did not start"

for p in "${PROXIES[@]}"; do
    for t in iperf echo; do
        start_proxy "$p" "$p-$t" "${PORT[$p,$t]}" "${PORT[direct,$t]}" 8000 || die "cannot start $p ($t)"
        PID_OF[$p,$t]=$BG_PID
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

# cpu_of PID: CPU seconds of PID and its descendants (threads included; see proctool.py).
cpu_of() { "${PROCTOOL[@]}" cpu "$1" 2>/dev/null || echo NA; }

# settle_tree PID: wait (at most 3 s) until PID has no child processes left, so
# that the CPU time of socat's per-connection children has been handed to the
# parent (cutime/cstime) before it is read.
settle_tree() {
    local i
    for ((i = 0; i < 60; i++)); do
        [[ $("${PROCTOOL[@]}" nprocs "$1" 2>/dev/null) == 1 ]] && return 0
        sleep 0.05
    done
    return 1
}

# iperf_run ROUND CFG STREAMS MEASURE: throughput, and for a proxy the CPU
# seconds it used per GB (10^9 bytes) the iperf3 server received.
iperf_run() {
    local r=$1 cfg=$2 streams=$3 m=$4 out bps bytes pid="" cpu0=NA cpu1=NA cpg=NA
    local port=${PORT[$cfg,iperf]}
    if [[ $cfg != direct ]]; then
        pid=${PID_OF[$cfg,iperf]}
        settle_tree "$pid" || true
        cpu0=$(cpu_of "$pid")
    fi
    out=$(timeout --foreground -k 3 $((IPERF_T + 20)) iperf3 -c 127.0.0.1 -p "$port" -t "$IPERF_T" -P "$streams" -J 2>>"$LOGS/clients.log") || true
    read -r bps bytes < <(python3 -c '
import json, sys
try:
    d = json.loads(sys.stdin.read())
    s = d["end"]["sum_received"]
    print(s["bits_per_second"], s["bytes"])
except Exception:
    print("NA NA")' <<<"$out")
    if [[ -n $pid ]]; then
        settle_tree "$pid" || log "  $cfg (iperf) still has child processes 3 s after the run"
        cpu1=$(cpu_of "$pid")
        cpg=$(python3 -c '
import sys
c0, c1, b = sys.argv[1:]
try:
    print(f"{(float(c1) - float(c0)) / (float(b) / 1e9):.4f}" if float(b) > 0 else "NA")
except ValueError:
    print("NA")' "$cpu0" "$cpu1" "$bytes")
    fi
    if [[ $bps == NA ]]; then
        log "  $m $cfg: iperf3 failed: $(python3 -c 'import json,sys
try: print(json.loads(sys.stdin.read()).get("error","?"))
except Exception: print("no JSON output")' <<<"$out")"
        alive "$cfg" iperf || log "  $cfg (iperf) process is gone: see $LOGS/$cfg-iperf.log"
    else
        log "  $m $cfg: $(python3 -c "print(f'{$bps/1e9:.2f}')") Gbit/s$([[ -n $pid ]] && echo ", proxy CPU $cpg s/GB")"
    fi
    record "$r" "$cfg" "$m" "$bps"
    if [[ -n $pid ]]; then record "$r" "$cfg" "cpu$streams" "$cpg"; fi
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
log "results: $RESULTS_DIR; $ROUNDS rounds over: ${cfgs[*]} (iperf3 -t $IPERF_T, short conns ${SC_D}s, $PP_N round trips, $RSS_N_USED idle connections)"
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

# ---------------------------------------------------------------- idle connections
# For each proxy: a fresh instance in front of its own idle echo server. Warm
# it up with a few connections, read its memory, open RSS_N_USED connections
# (each does one 1-byte round trip, then stays idle), read its memory again,
# and report (after - before) / connections. Everything of this phase is
# stopped before the next proxy's turn.
idle_record() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$RESULTS_DIR/idle.tsv"; }
idle_run() {
    local cfg=$1 n=$RSS_N_USED
    local lp=${PORT[$cfg,idle]} up=${PORT[$cfg,idleup]} up_pid px ic line ok=0 failed=NA
    local warm=$((n < 100 ? n : 100)) nb rb pb na=NA ra pa per=NA basis=NA deadline
    log "idle connections through $cfg: $n"
    start_bg "idle-upstream-$cfg" "$BUILD_DIR/bench/echo_server" 127.0.0.1 "$up" 1
    up_pid=$BG_PID
    if ! wait_listen "idle-upstream-$cfg" "$up_pid" "$up"; then
        stop_group "$up_pid"
        record 1 "$cfg" rss_idle NA
        idle_record "$cfg" "$n" 0 NA NA NA NA NA NA NA NA
        return
    fi
    if ! start_proxy "$cfg" "$cfg-idle" "$lp" "$up" $((n + 10)); then
        stop_group "$BG_PID"
        stop_group "$up_pid"
        record 1 "$cfg" rss_idle NA
        idle_record "$cfg" "$n" 0 NA NA NA NA NA NA NA NA
        return
    fi
    px=$BG_PID
    # Warm-up: first-use allocations (thread pools, buffer pools) are not per connection.
    timeout -k 3 40 "$IDLECONN" 127.0.0.1 "$lp" "$warm" 30 0 >>"$LOGS/idle-$cfg-warmup.log" 2>&1 || true
    settle_tree "$px" || true
    sleep 0.3
    read -r nb rb pb <<<"$("${PROCTOOL[@]}" mem "$px" 2>/dev/null || echo NA NA NA)"
    start_bg "idleconn-$cfg" "$IDLECONN" 127.0.0.1 "$lp" "$n" "$RSS_DEADLINE" $((RSS_DEADLINE + 60))
    ic=$BG_PID
    deadline=$((SECONDS + RSS_DEADLINE + 10))
    while ! grep -q '^ready' "$LOGS/idleconn-$cfg.log" 2>/dev/null && kill -0 "$ic" 2>/dev/null && ((SECONDS < deadline)); do
        sleep 0.1
    done
    line=$(grep -m1 '^ready' "$LOGS/idleconn-$cfg.log" 2>/dev/null || true)
    if [[ -n $line ]]; then
        ok=$(sed -n 's/.*ok=\([0-9]*\).*/\1/p' <<<"$line")
        failed=$(sed -n 's/.*failed=\([0-9]*\).*/\1/p' <<<"$line")
        sleep 0.5 # let the proxy finish whatever the last round trips started
        read -r na ra pa <<<"$("${PROCTOOL[@]}" mem "$px" 2>/dev/null || echo NA NA NA)"
        if [[ $na == NA || $nb == NA ]]; then
            log "  $cfg: the proxy process is gone (see $LOGS/$cfg-idle.log)"
        elif ((ok > 0)); then
            # One process: its VmRSS. A tree of processes (socat): summed Pss.
            if ((na == 1)); then
                basis=rss
                per=$(((ra - rb) * 1024 / ok))
            else
                basis=pss
                per=$(((pa - pb) * 1024 / ok))
            fi
        fi
        log "  $cfg: $ok connections held (failed: $failed) in $(sed -n 's/.*elapsed_s=\([0-9.]*\).*/\1/p' <<<"$line") s;" \
            "processes ${nb:-?} -> ${na:-?}, VmRSS ${rb:-?} -> ${ra:-?} KiB, Pss ${pb:-?} -> ${pa:-?} KiB: $per bytes per connection ($basis)"
        if [[ $failed != 0 ]]; then
            log "  $cfg: $failed idle connection(s) failed: $(grep -v '^ready' "$LOGS/idleconn-$cfg.log" | tail -n 3 | tr '\n' ' ')"
            per=NA
        fi
    else
        log "  $cfg: idleconn did not report within $((RSS_DEADLINE + 10)) s (log: $LOGS/idleconn-$cfg.log)"
    fi
    record 1 "$cfg" rss_idle "$per"
    idle_record "$cfg" "$n" "$ok" "$failed" "${na:-NA}" "${rb:-NA}" "${ra:-NA}" "${pb:-NA}" "${pa:-NA}" "$basis" "$per"
    stop_group "$ic"
    stop_group "$px"
    stop_group "$up_pid"
}

if [[ $RSS == 1 ]]; then
    t_idle=$SECONDS
    for p in "${PROXIES[@]}"; do idle_run "$p"; done
    log "idle-connection phase took $((SECONDS - t_idle)) s"
fi

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

# describe_configs: one line per configuration on how it ran (thread counts and
# listening sockets read from the running main instances).
describe_configs() {
    local p pid lp threads socks said
    for p in "${PROXIES[@]}"; do
        pid=${PID_OF[$p,iperf]}
        lp=${PORT[$p,iperf]}
        threads=$("${PROCTOOL[@]}" threads "$pid" 2>/dev/null || echo '?')
        socks=$( (ss -Hltn "sport = :$lp" 2>/dev/null || true) | wc -l)
        case $p in
            tcpfault)
                echo "- tcpfault: \`tcpfault -l 127.0.0.1:P -u 127.0.0.1:Q --admin off --log-format json\`: no rules, default workers (1); threads: $threads, listening sockets on its port: $socks"
                ;;
            tcpfault+*rules)
                local n=${p#tcpfault+}
                n=${n%rules}
                echo "- $p: the same proxy from a file (\`-c\`, see \`configs/\`) with $n rules that never fire, one in five of each:" \
                    "\`match: {clients: [...]}\` excluding 127.0.0.1, \`match: {connections: {nth: 1000000000+K}}\`," \
                    "\`when: {after_bytes: 1TiB}\`, \`when: {after: 24h}\` and \`when: {data: \"never-sent-marker-K\"}\`" \
                    "(the byte rules alternately on the upstream and downstream stream); reset faults"
                ;;
            tcpfault+lat0)
                echo "- $p: the same proxy from a file with one \`latency\` rule on every connection: \`delay: 0ms, direction: both\`"
                ;;
            tcpfault-w*)
                # What tcpfault itself said about workers (e.g. "workers is ignored" while
                # the setting was not implemented yet).
                said=$( (grep -i worker "$LOGS/$p-iperf.log" 2>/dev/null || true) |
                    sed -n 's/.*"level":"\([a-z]*\)","msg":"\([^"]*\)".*/"\2" (\1)/p' | head -n 3 | paste -sd ';' - || true)
                echo "- $p: the same proxy from a file with \`workers: ${p#tcpfault-w}\`; threads: $threads," \
                    "listening sockets on its port: $socks; tcpfault logged about workers: ${said:-nothing}"
                ;;
            socat)
                echo "- socat: \`socat TCP-LISTEN:P,bind=127.0.0.1,fork,reuseaddr,backlog=4096 TCP:127.0.0.1:Q\`: one forked process per connection"
                ;;
            haproxy)
                echo "- haproxy: \`mode tcp\`, \`maxconn 8000\`, no \`nbthread\`, so haproxy's default nbthread:" \
                    "one thread per usable CPU (usable CPUs: $(taskset -cp "$pid" 2>/dev/null | sed 's/.*: *//' || true)); threads: $threads"
                ;;
            haproxy-splice)
                echo "- haproxy-splice: the same with \`option splice-auto\` (socket -> pipe -> socket with splice(2)" \
                    "when haproxy finds it worth it) and \`maxpipes 64\` (8 in the idle phase); threads: $threads"
                ;;
            toxiproxy)
                echo "- toxiproxy: \`$TOXIPROXY -host 127.0.0.1 -port A\` and one proxy created with" \
                    "\`POST /proxies\`, no toxics; $("$TOXIPROXY" -version 2>&1 | head -n 1 || true); threads: $threads"
                ;;
        esac
    done
}

{
    echo "# tcpfault benchmark — $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "- machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'), kernel $(uname -r)"
    if has_kind tcpfault; then
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
    peers="$(iperf3 --version | sed -n 1p | cut -d' ' -f1-2)"
    if has_config socat; then peers+="; $(socat -V | sed -n 's/^socat version \([^ ]*\).*/socat \1/p')"; fi
    if has_kind haproxy; then peers+="; $(haproxy -v | sed -n 1p | cut -d' ' -f1-3)"; fi
    if has_config toxiproxy; then peers+="; $("$TOXIPROXY" -version 2>&1 | head -n 1)"; fi
    echo "- peers: $peers"
    echo "- parameters: QUICK=$QUICK rounds=$ROUNDS iperf3 -t $IPERF_T, short connections ${SC_D}s," \
        "ping-pong $PP_N round trips, serial tests pinned to CPU $PIN_CPU: $([[ $PIN_SERIAL == 1 ]] && echo yes || echo no)," \
        "echo server threads=$ECHO_THREADS, short connections closed first by: $SC_CLOSE"
    if [[ $RSS == 1 ]]; then
        echo "- idle connections: $RSS_N_USED per proxy (RSS_N=$RSS_N; ulimit -n $FD_LIMIT, hard limit $(ulimit -Hn), 2 fds per proxied connection)"
    fi
    describe_configs
    if [[ -n $TOXIPROXY_NOTE ]]; then echo "- $TOXIPROXY_NOTE"; fi
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
