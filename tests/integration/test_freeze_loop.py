"""Issue #12: one connection must never keep the event loop from returning to I/O.

Each test runs one of the bad cases of #12 against a real proxy with its admin API on, while a
probe asks `GET /healthz` every 100 ms (freeze_helpers.HealthProbe): every answer must come in
under 50 ms. The probe also echoes 8 bytes through a second proxy, `canary`, on a new
connection each time: with `workers: 2` (the suite's second pass) the bad session may sit on
the loop that does not serve the admin API. A loop that re-arms a 0 ms timer, a timer left
due on a closing session or a backtracking regex shows as probes timing out (and, for the
spinning timers, as ~100 % CPU).
Afterwards the connection must still work or end cleanly, and its session must be released
(`tcpfault_connections_active` 0, file descriptors back to the baseline).
"""

from __future__ import annotations

import socket
import time

import pytest

from admin_helpers import Admin, admin_port, admin_yaml
from fault_helpers import pattern
from freeze_helpers import CpuMeter, kill_on_failure, probing
from helpers import KiB, connect, read_outcome, recv_exact

BOUND = 0.050  # s: the slowest /healthz answer allowed while a bad case runs
WINDOW = 3.0  # s: how long each bad case runs under the probe


def start(tcpfault, servers, upstream: str, rules: list[str]):
    """A proxy `main` with these rules, a proxy `canary` without rules (to an echo server, for
    the probe's data-path check) and the admin API; returns (process, Admin, baseline fd
    count)."""
    canary = servers.echo()
    p = tcpfault.from_config(admin_yaml([{"name": "main", "upstream": upstream, "rules": rules},
                                         {"name": "canary", "upstream": canary.addr}]),
                             listening=2)
    api = Admin(admin_port(p))
    assert api.get("/healthz").status == 200
    return p, api, p.fd_count()


def freeze_probe(p):
    """The freeze probe: /healthz every 100 ms, and an echo through `canary`."""
    return probing(admin_port(p), canary=p.addr("canary"))


def released(p, api: Admin, fds: int, timeout: float = 5.0) -> None:
    """The proxy has no session left and is back to its baseline descriptors."""
    api.wait_metric("tcpfault_connections_active", 0, timeout=timeout, proxy="main")
    p.wait_fds_at_most(fds, timeout=timeout)


def pattern_server(servers):
    """Upstream that reads a request line `SEND <n>` and answers with n pattern bytes
    (blocking in sendall while the proxy does not read; unblocked at teardown)."""
    def handler(conn: socket.socket) -> None:
        with conn:
            line = b""
            while not line.endswith(b"\n"):
                chunk = conn.recv(100)
                if not chunk:
                    return
                line += chunk
            n = int(line.split()[1])
            sent = 0
            try:
                while sent < n:
                    k = min(64 * KiB, n - sent)
                    conn.sendall(pattern(k, sent))
                    sent += k
            except OSError:
                return  # the proxy closed its side: the client went away
    return servers.tcp(handler)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("delay", ["delay: 1ms, ", ""], ids=["delay-1ms", "no-delay"])
def test_slice_toward_a_client_that_does_not_read_keeps_the_loop_free(tcpfault, servers, delay):
    """`slice {size: 1-16, delay: 1ms, direction: downstream}` (and the same without a delay,
    where each piece is due at once) toward a client with a 4 KiB receive buffer that asks for
    20 MB and does not read: the pump must wait for the socket to drain (not spin a 0 ms
    timer), so /healthz answers in < 50 ms and the proxy idles; once the client reads, the
    bytes arrive intact; once it leaves, its session is released."""
    srv = pattern_server(servers)
    p, api, fds = start(tcpfault, servers, srv.addr, [
        f"{{name: chop, fault: {{type: slice, size: 1-16, {delay}direction: downstream}}}}"])
    with kill_on_failure(p):
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        c.settimeout(5)
        c.connect(p.addr("main"))
        try:
            with freeze_probe(p) as probe:
                probe.wait_samples(3)
                cpu = CpuMeter(p.pid)
                c.sendall(b"SEND 20000000\n")
                probe.mark("request sent, client not reading")
                probe.watch(WINDOW)
                share = cpu.share()
            probe.assert_responsive(BOUND, "slice wrote toward a client that did not read")
            assert share < 0.5, (f"tcpfault used {share:.0%} of a CPU while its only client "
                                 f"did not read (a timer spinning instead of waiting for "
                                 f"the socket)")
            got = recv_exact(c, 8 * KiB, timeout=20)  # at most 1-16 bytes a millisecond: ~1 s
            assert got == pattern(8 * KiB), "the sliced stream is not the server's bytes"
        finally:
            c.close()
        released(p, api, fds)


CLOSE_PLUS_TIMER = {
    "latency-after-500ms": "{name: slow, when: {after: 500ms}, "
                           "fault: {type: latency, delay: 50ms, direction: both}}",
    "stall-with-duration": "{name: stop, fault: {type: stall, direction: both, duration: 300ms}}",
    "idle": "{name: nat, fault: {type: idle, timeout: 300ms}}",
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("timer_rule,order", [
    pytest.param(t, o, id=f"{t}-{o}")
    for t in CLOSE_PLUS_TIMER for o in ("timer-rule-first", "close-first")])
def test_close_to_server_plus_a_timer_rule_keeps_the_loop_free(tcpfault, servers, timer_rule,
                                                               order):
    """`close {to: server}` at accept and a timer-driven rule (latency after 500 ms, a stall
    with a duration, idle) on the same connections, in either rule order (the timer armed
    before the close, or after it): no timer stays due on a closing session. /healthz answers
    in < 50 ms, the proxy idles, every client, which keeps its socket open after the close,
    sees EOF or RST (never silence), and every session is released once the clients leave."""
    echo = servers.echo()
    rules = ["{name: cut, fault: {type: close, to: server}}", CLOSE_PLUS_TIMER[timer_rule]]
    if order == "timer-rule-first":
        rules.reverse()
    p, api, fds = start(tcpfault, servers, echo.addr, rules)
    with kill_on_failure(p):
        clients = []
        try:
            with freeze_probe(p) as probe:
                probe.wait_samples(3)
                cpu = CpuMeter(p.pid)
                for i in range(20):  # some close before their timer is due, some after
                    c = connect(p.addr("main"))
                    clients.append(c)
                    try:
                        c.sendall(b"hello %d\n" % i)
                    except OSError:
                        pass  # already reset: a clean end as well
                    time.sleep(0.05)  # spreads the accepts across the timers' periods
                probe.mark("20 clients connected")
                outcomes = [read_outcome(c, timeout=WINDOW)[0] for c in clients[:1]]
                probe.watch(WINDOW)
                share = cpu.share()
                outcomes += [read_outcome(c, timeout=0.2)[0] for c in clients[1:]]
            probe.assert_responsive(BOUND, f"sessions ran close {{to: server}} + {timer_rule}")
            assert share < 0.5, (f"tcpfault used {share:.0%} of a CPU with 20 closed or idle "
                                 f"sessions (a timer due forever)")
            assert set(outcomes) <= {"eof", "reset"}, (
                f"client outcomes {outcomes}: the server side was closed, so each client must "
                f"see EOF or RST")
        finally:
            for c in clients:
                c.close()
        released(p, api, fds)


@pytest.mark.timeout(60)
def test_backtracking_line_regex_keeps_the_loop_free(tcpfault, servers):
    """`when.line: "(a+)+b"` (valid RE2 syntax, linear there) and one 4,000-byte client line of
    'a's: matching takes linear time, so /healthz answers in < 50 ms, the line (which does not
    match) is forwarded and echoed back intact, and the session is released."""
    echo = servers.echo()
    p, api, fds = start(tcpfault, servers, echo.addr, [
        '{name: re, when: {direction: upstream, line: "(a+)+b"}, fault: {type: reset}}'])
    with kill_on_failure(p):
        line = b"a" * 4000 + b"\n"
        c = connect(p.addr("main"))
        try:
            with freeze_probe(p) as probe:
                probe.wait_samples(3)
                c.sendall(line)
                probe.mark("4000-byte line sent")
                probe.watch(1.5)
            probe.assert_responsive(BOUND, "a 4,000-byte line was matched against (a+)+b")
            assert recv_exact(c, len(line), timeout=5) == line
            # A matching line still fires the rule: the regex is really in force.
            c.sendall(b"aaab\n")
            outcome, _, _ = read_outcome(c, timeout=5)
            assert outcome == "reset", f"'aaab' matches (a+)+b: expected RST, got {outcome}"
        finally:
            c.close()
        released(p, api, fds)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["disable", "delete"])
def test_switching_off_a_rule_releases_a_held_stream_at_once(tcpfault, servers, how):
    """A rule with `after_bytes: 1KiB` and `after: 30s` holds the stream at exactly 1 KiB until
    the time passes. Disabling (or deleting) the rule over the API stops its pending trigger,
    so the held bytes must flow right away (within 1 s of the call), not 30 s later, and the
    fault never fires."""
    echo = servers.echo()
    p, api, fds = start(tcpfault, servers, echo.addr, [
        "{name: late, when: {direction: upstream, after_bytes: 1KiB, after: 30s}, "
        "fault: {type: reset, to: both}}"])
    with kill_on_failure(p):
        data = pattern(1024 + 100)
        c = connect(p.addr("main"))
        try:
            with freeze_probe(p) as probe:
                c.sendall(data)
                assert recv_exact(c, 1024, timeout=5) == data[:1024]
                c.settimeout(0.5)
                with pytest.raises(socket.timeout):  # held at the threshold (the precondition)
                    extra = c.recv(100)
                    pytest.fail(f"bytes past after_bytes were forwarded at once: {extra!r}")
                if how == "disable":
                    r = api.post("/api/proxies/main/rules/late/disable")
                else:
                    r = api.delete("/api/proxies/main/rules/late")
                assert r.status in (200, 204), r
                t0 = time.monotonic()
                probe.mark(f"rule {how}d")
                rest = recv_exact(c, 100, timeout=5)
                took = time.monotonic() - t0
                probe.wait_samples(5)
            probe.assert_responsive(BOUND, "a held stream was released")
            assert rest == data[1024:]
            assert took < 1.0, f"the held bytes arrived {took:.2f}s after the rule was {how}d"
            c.sendall(b"more")
            assert recv_exact(c, 4, timeout=5) == b"more"
            assert not p.find_logs("fault injected", rule="late"), "the switched-off rule fired"
        finally:
            c.close()
        released(p, api, fds)
