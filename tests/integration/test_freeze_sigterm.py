"""Issue #12: SIGTERM always ends the process within `shutdown_grace` + 1 s.

Each case leaves sessions stuck in one of the faults of #12 (or in a fault that never ends by
itself), with their clients still connected, then sends SIGTERM to a proxy with
`shutdown_grace: 1s`: the process must exit 0 within 2 s, whatever its sessions are doing (a
frozen loop never reads the signal; a session that cannot close keeps the loop alive). The
unresolvable upstream (lookups blocked in the resolver) is covered in test_freeze_dns.py.
"""

from __future__ import annotations

import select
import socket
import time

import pytest

from admin_helpers import Admin, admin_port, admin_yaml
from fault_helpers import pattern
from freeze_helpers import (close_all, kill_on_failure, sigterm_and_time, toxiproxy_api_port,
                            wait_until)
from helpers import KiB, connect, free_port, parse_addr, recv_exact

GRACE = 1.0


def proxy(tcpfault, upstream: str, rules: list[str], extra: str = ""):
    p = tcpfault.from_config(admin_yaml(
        [{"name": "main", "upstream": upstream, "rules": rules, "extra": extra}],
        top_extra=f"shutdown_grace: {int(GRACE * 1000)}ms"))
    return p, Admin(admin_port(p))


def sender_server(servers):
    """Answers `SEND <n>\\n` with n pattern bytes (blocks while the proxy does not read)."""
    def handler(conn):
        with conn:
            line = b""
            while not line.endswith(b"\n"):
                chunk = conn.recv(100)
                if not chunk:
                    return
                line += chunk
            n, sent = int(line.split()[1]), 0
            try:
                while sent < n:
                    k = min(64 * KiB, n - sent)
                    conn.sendall(pattern(k, sent))
                    sent += k
            except OSError:
                return
    return servers.tcp(handler)


def fired(p, rule: str, count: int = 1, timeout: float = 5.0) -> None:
    p.wait_for_log("fault injected", rule=rule, count=count, timeout=timeout)


# Each scenario starts a proxy, leaves sessions stuck and returns (process, sockets to close).

def slice_non_reader(tcpfault, servers, delay: str = "delay: 1ms, "):
    p, _ = proxy(tcpfault, sender_server(servers).addr, [
        f"{{name: chop, fault: {{type: slice, size: 1-16, {delay}direction: downstream}}}}"])
    c = socket.socket()
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    c.settimeout(5)
    c.connect(p.addr("main"))
    c.sendall(b"SEND 20000000\n")
    fired(p, "chop")
    time.sleep(0.5)  # lets the downstream fill the client's buffer
    return p, [c]


def close_plus(timer_rule: str):
    def scenario(tcpfault, servers):
        p, _ = proxy(tcpfault, servers.echo().addr,
                     [timer_rule, "{name: cut, fault: {type: close, to: server}}"])
        cs = [connect(p.addr("main")) for _ in range(5)]
        fired(p, "cut", count=5)
        time.sleep(0.8)  # past the timer rule's due time (500 ms at most)
        return p, cs
    return scenario


def line_regex(tcpfault, servers):
    p, _ = proxy(tcpfault, servers.echo().addr, [
        '{name: re, when: {direction: upstream, line: "(a+)+b"}, fault: {type: reset}}'])
    c = connect(p.addr("main"))
    c.sendall(b"a" * 4000 + b"\n")
    time.sleep(0.5)  # the line is being matched
    return p, [c]


def held_after_bytes(tcpfault, servers):
    p, _ = proxy(tcpfault, servers.echo().addr, [
        "{name: late, when: {direction: upstream, after_bytes: 1KiB, after: 60s}, "
        "fault: {type: reset}}"])
    c = connect(p.addr("main"))
    c.sendall(pattern(1024 + 100))
    recv_exact(c, 1024, timeout=5)
    return p, [c]


def endless_stall(mode: str):
    def scenario(tcpfault, servers):
        p, _ = proxy(tcpfault, servers.echo().addr, [
            f"{{name: st, fault: {{type: stall, direction: both, mode: {mode}}}}}"])
        cs = [connect(p.addr("main")) for _ in range(5)]
        for c in cs:
            c.sendall(pattern(64 * KiB))
        fired(p, "st", count=5)
        return p, cs
    return scenario


def idle_drop(tcpfault, servers):
    p, _ = proxy(tcpfault, servers.echo().addr, [
        "{name: nat, fault: {type: idle, timeout: 200ms, action: drop}}"])
    c = connect(p.addr("main"))
    p.wait_for_log("idle timeout", timeout=5)
    c.sendall(b"into the void")
    return p, [c]


def cap_hold(tcpfault, servers):
    p, api = proxy(tcpfault, servers.echo().addr, [
        "{name: one, fault: {type: cap, max: 1, over: hold}}"])
    cs = [connect(p.addr("main")) for _ in range(4)]
    # Which one is admitted is the order the proxy accepted them in, which with two loops need
    # not be the order they connected in: each asks, only the admitted one is answered.
    for c in cs:
        c.sendall(b"x")
    ready, _, _ = select.select(cs, [], [], 10)
    assert len(ready) == 1, f"{len(ready)} of 4 clients answered, expected the admitted one"
    recv_exact(ready[0], 1)
    wait_until(lambda: api.scrape().value("tcpfault_connections_active", proxy="main") == 4,
               5, "4 sessions (1 admitted, 3 held)")
    return p, cs


def slow_close_long(tcpfault, servers):
    srv = servers.tcp()
    p, _ = proxy(tcpfault, srv.addr, [
        "{name: sc, fault: {type: slow_close, delay: 60s, direction: downstream}}"])
    c = connect(p.addr("main"))
    s = srv.wait_accepted(1)
    s.close()  # the server's FIN is held for 60 s
    fired(p, "sc")
    return p, [c]


def toxiproxy_rate_zero(tcpfault, servers):
    echo = servers.selector_echo()
    path = tcpfault.write_config(f"admin: {{listen: 127.0.0.1:0}}\n"
                                 f"log: {{format: json, level: info}}\n"
                                 f"shutdown_grace: {int(GRACE * 1000)}ms\nproxies: []\n")
    p = tcpfault.spawn(["-c", str(path), "--toxiproxy-api", "127.0.0.1:0"])
    toxi = Admin(toxiproxy_api_port(p))
    r = toxi.post("/proxies", {"name": "bw", "listen": "127.0.0.1:0", "upstream": echo.addr})
    assert r.status == 201, r
    addr = parse_addr(r.json()["listen"])
    r = toxi.post("/proxies/bw/toxics", {"type": "bandwidth", "stream": "upstream",
                                         "attributes": {"rate": 0}})
    assert r.status == 200, r
    cs = [connect(addr) for _ in range(10)]
    for c in cs:
        c.sendall(pattern(8 * KiB))
    for c in cs[5:]:
        c.close()  # half of them gone: their sessions stay behind
    wait_until(lambda: Admin(admin_port(p)).scrape().value(
        "tcpfault_connections_active", proxy="bw") == 10, 5, "10 sessions under rate 0")
    return p, cs[:5]


def self_relay(tcpfault, servers):
    port = free_port()
    path = tcpfault.write_config(
        f"admin: {{listen: 127.0.0.1:0}}\nlog: {{format: json, level: info}}\n"
        f"shutdown_grace: {int(GRACE * 1000)}ms\nproxies:\n  - name: loop\n"
        f"    listen: 0.0.0.0:{port}\n    upstream: \"[::ffff:127.0.0.1]:{port}\"\n")
    p = tcpfault.spawn(["-c", str(path)])
    deadline = time.monotonic() + 10
    while not p.find_logs("admin listening"):
        if not p.running():
            return p, []  # refused at start: nothing to stop
        assert time.monotonic() < deadline, "tcpfault neither started nor exited"
        time.sleep(0.02)  # one of two outcomes: a log line or an exit
    try:
        c = socket.create_connection(("127.0.0.1", port), timeout=5)
        c.sendall(b"hello")
    except ConnectionResetError:
        return p, []  # the self-connection was refused before connect() returned
    time.sleep(1.0)  # lets a loop, if there is one, grow
    return p, [c]


_FREEZES = "a frozen loop ignores SIGTERM"
SCENARIOS = {
    "slice-toward-non-reader": (slice_non_reader, _FREEZES),
    "slice-no-delay-toward-non-reader": (lambda t, s: slice_non_reader(t, s, ""), _FREEZES),
    "close-plus-latency-after": (close_plus(
        "{name: slow, when: {after: 500ms}, fault: {type: latency, delay: 50ms}}"), _FREEZES),
    "close-plus-stall-duration": (close_plus(
        "{name: stop, fault: {type: stall, direction: both, duration: 300ms}}"), _FREEZES),
    "close-plus-idle": (close_plus("{name: nat, fault: {type: idle, timeout: 300ms}}"),
                        _FREEZES),
    "backtracking-line-regex": (line_regex, _FREEZES),
    "held-after-bytes": (held_after_bytes, None),
    "endless-stall-hold": (endless_stall("hold"), None),
    "endless-stall-drop": (endless_stall("drop"), None),
    "idle-drop": (idle_drop, None),
    "cap-hold": (cap_hold, None),
    "slow-close-60s": (slow_close_long, None),
    "toxiproxy-rate-zero": (toxiproxy_rate_zero, None),
    "self-relay": (self_relay, None),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", [
    pytest.param(name, id=name) for name in SCENARIOS])
def test_sigterm_ends_the_process_within_the_grace_period(tcpfault, servers, case):
    """Sessions stuck in the given fault, clients still connected: SIGTERM ends the process
    with exit code 0 within shutdown_grace (1 s) + 1 s."""
    scenario, _ = SCENARIOS[case]
    p, socks = None, []
    try:
        with kill_on_failure(tcpfault.procs):
            p, socks = scenario(tcpfault, servers)
            if not p.running():
                return  # refused at start (self-relay): nothing to stop
            took = sigterm_and_time(p, GRACE + 1.0)
            assert took <= GRACE + 1.0
    finally:
        close_all(socks)
