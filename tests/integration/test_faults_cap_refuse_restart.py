"""Proxy-wide faults: cap (concurrent connections), refuse (listener closed on a schedule),
restart (every connection reset, connects refused for the downtime)."""

import socket
import time

import pytest

from admin_helpers import start_with_admin
from fault_helpers import Recorder, echo_reply, start_proxy, try_connect
from helpers import connect, read_outcome, recv_exact, recv_until_eof

BANNER = b"421 Too many connections\r\n"


def _echo_ok(c: socket.socket, msg: bytes = b"hi") -> None:
    c.sendall(msg)
    assert recv_exact(c, len(msg), timeout=5) == msg


def _wait_no_echo(c: socket.socket, seconds: float) -> None:
    outcome, data, _ = read_outcome(c, timeout=seconds)
    assert (outcome, data) == ("timeout", b""), (
        f"a held connection got {outcome} with {data!r} while the cap was full")


@pytest.mark.timeout(30)
def test_cap_banner(tcpfault, servers, sockets):
    rec = Recorder(servers, reply=echo_reply, close_on_eof=True)
    proxy = start_proxy(tcpfault, rec.addr, [
        "{name: cap, fault: {type: cap, max: 2, over: banner, "
        "banner: \"421 Too many connections\\r\\n\"}}"])
    c1, c2 = connect(proxy.addr()), connect(proxy.addr())
    sockets += [c1, c2]
    _echo_ok(c1)
    _echo_ok(c2)
    fds_two = proxy.fd_count()
    for i in range(3):
        c3 = connect(proxy.addr())
        sockets.append(c3)
        data = recv_until_eof(c3, timeout=5)
        assert data == BANNER, f"over-cap client {i + 1} read {data!r}, expected the banner+EOF"
    assert rec.srv.count() == 2, "an over-cap connection reached the upstream"
    proxy.wait_for_log("fault injected", rule="cap", fault="cap", count=3)
    # One of the two leaves: its slot frees and a new client is served.
    c1.close()
    proxy.wait_fds_at_most(fds_two - 2, timeout=5)
    c4 = connect(proxy.addr())
    sockets.append(c4)
    _echo_ok(c4, b"served")
    _echo_ok(c2)
    # Full again: the next one gets the banner.
    c5 = connect(proxy.addr())
    sockets.append(c5)
    assert recv_until_eof(c5, timeout=5) == BANNER


@pytest.mark.timeout(30)
def test_cap_hold_fifo(tcpfault, servers, sockets):
    """over: hold: over-cap clients are accepted but not connected upstream; each freed slot
    admits the longest-waiting one, whose pending bytes then go through."""
    rec = Recorder(servers, reply=echo_reply, close_on_eof=True)
    proxy = start_proxy(tcpfault, rec.addr, [
        "{name: cap, fault: {type: cap, max: 2, over: hold}}"])
    c1, c2 = connect(proxy.addr()), connect(proxy.addr())
    sockets += [c1, c2]
    _echo_ok(c1)
    _echo_ok(c2)
    c3 = connect(proxy.addr())
    sockets.append(c3)
    c3.sendall(b"third")
    proxy.wait_for_log("fault injected", rule="cap", count=1)
    c4 = connect(proxy.addr())
    sockets.append(c4)
    c4.sendall(b"fourth")
    proxy.wait_for_log("fault injected", rule="cap", count=2)
    _wait_no_echo(c3, 0.5)
    _wait_no_echo(c4, 0.1)
    assert rec.srv.count() == 2, "a held connection reached the upstream"
    c1.close()
    assert recv_exact(c3, 5, timeout=5) == b"third", "the first held client was not admitted"
    _wait_no_echo(c4, 0.3)
    assert rec.srv.count() == 3
    c2.close()
    assert recv_exact(c4, 6, timeout=5) == b"fourth"
    _echo_ok(c3)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("change", [None, "rule-added-while-held"])
def test_cap_hold_then_the_rules_after_it(tcpfault, servers, sockets, change):
    """A client a `cap` held gets the rules after the cap once admitted, matched with what was
    known at accept (its ordinal here): its "boom" is answered with the RST of the rule for the
    second connection, not echoed. Also when the rules changed while it waited (its accept-time
    rule before the cap is of the old config, the rule after it of the new one)."""
    echo = servers.echo()
    proxy, api = start_with_admin(tcpfault, [
        {"name": "main", "upstream": echo.addr,
         "rules": ["{name: before, when: {direction: downstream, data: never-sent}, "
                   "fault: {type: reset}}",
                   "{name: cap, fault: {type: cap, max: 1, over: hold}}",
                   "{name: second, match: {connections: {nth: 2}}, "
                   "when: {direction: upstream, data: boom}, fault: {type: reset, to: client}}"]}])
    c1 = connect(proxy.addr("main"))
    sockets.append(c1)
    _echo_ok(c1, b"boom")  # the first connection: not the rule's
    c2 = connect(proxy.addr("main"))
    sockets.append(c2)
    proxy.wait_for_log("fault injected", rule="cap", count=1)
    _wait_no_echo(c2, 0.2)
    if change:
        api.ok_json("POST", "/api/proxies/main/rules",
                    {"name": "unrelated", "match": {"connections": {"nth": 99}},
                     "fault": {"type": "close"}}, status=201)
    c1.close()
    c2.sendall(b"boom")
    outcome, data, _ = read_outcome(c2, timeout=5)
    assert (outcome, data) == ("reset", b""), (
        f"the held client, once admitted, read {data!r} then {outcome}: the rule after the cap"
        " was not applied")
    proxy.wait_for_log("fault injected", rule="second", count=1)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("change", ["delete", "disable", "raise-max"])
def test_cap_lifted_admits_the_held_clients(tcpfault, servers, sockets, change):
    """A cap that is deleted or switched off over the API admits every client it holds at
    once; one whose max is raised admits as many as now fit, in arrival order. The client
    holding the only slot stays open throughout."""
    echo = servers.echo()
    p, api = start_with_admin(tcpfault, [
        {"name": "main", "upstream": echo.addr,
         "rules": ["{name: cap, fault: {type: cap, max: 1, over: hold}}"]}])
    first = connect(p.addr("main"))
    sockets.append(first)
    _echo_ok(first)
    held = []
    for i in range(3):
        c = connect(p.addr("main"))
        sockets.append(c)
        c.sendall(b"held-%d" % i)
        p.wait_for_log("fault injected", rule="cap", count=i + 1)
        held.append(c)
    _wait_no_echo(held[0], 0.2)
    if change == "delete":
        api.ok_json("DELETE", "/api/proxies/main/rules/cap")
        admitted = 3
    elif change == "disable":
        api.ok_json("POST", "/api/proxies/main/rules/cap/disable")
        admitted = 3
    else:
        api.ok_json("PUT", "/api/proxies/main/rules/cap",
                    {"name": "cap", "fault": {"type": "cap", "max": 3, "over": "hold"}})
        admitted = 2  # 3 slots: the first client's and two more
    for i in range(admitted):
        assert recv_exact(held[i], 6, timeout=5) == b"held-%d" % i, f"held client {i}"
    for c in held[admitted:]:
        _wait_no_echo(c, 0.3)
    _echo_ok(first)
    if change == "raise-max":
        first.close()  # a slot frees: the last held client goes in
        assert recv_exact(held[2], 6, timeout=5) == b"held-2"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("over,expect", [("reset", "reset"), ("close", "eof")])
def test_cap_over_reset_or_close(tcpfault, servers, sockets, over, expect):
    rec = Recorder(servers, reply=echo_reply, close_on_eof=True)
    proxy = start_proxy(tcpfault, rec.addr, [
        f"{{name: cap, fault: {{type: cap, max: 1, over: {over}}}}}"])
    c1 = connect(proxy.addr())
    sockets.append(c1)
    _echo_ok(c1)
    for i in range(3):
        try:
            c = connect(proxy.addr())
        except ConnectionResetError:
            # The RST can beat the (non-blocking) connect's completion check.
            outcome, data = "reset", b""
        else:
            sockets.append(c)
            outcome, data, _ = read_outcome(c, timeout=5)
        assert (outcome, data) == (expect, b""), (
            f"over-cap client {i + 1} with over: {over}: got {outcome} {data!r}")
    assert rec.srv.count() == 1
    _echo_ok(c1)


@pytest.mark.timeout(30)
def test_refuse_schedule_windows(tcpfault, servers):
    """schedule {every: 2s, for: 1s}: connecting every ~50ms for 5s sees both refused and
    accepted connects; a full refused window lasts about 1s."""
    rec = Recorder(servers)
    proxy = start_proxy(tcpfault, rec.addr, [
        "{name: down, match: {schedule: {every: 2s, for: 1s, offset: 0s}}, "
        "fault: {type: refuse}}"])
    addr = proxy.addr()
    t0 = time.monotonic()
    attempts = []  # (time, outcome)
    while time.monotonic() - t0 < 5.0:
        outcome, s = try_connect(addr, timeout=1.0)
        if s is not None:
            s.close()
        attempts.append((time.monotonic(), outcome))
        time.sleep(0.05)  # pacing of the probes
    kinds = {o for _, o in attempts}
    assert kinds <= {"ok", "refused", "ECONNRESET"}, f"unexpected connect outcomes: {kinds}"
    # A connect that lands in the accept queue as the listener closes is reset with it: only
    # acceptable right before a refused window.
    for i, (t, o) in enumerate(attempts):
        if o == "ECONNRESET":
            assert i + 1 < len(attempts) and attempts[i + 1][1] == "refused", (
                f"connect reset outside a refuse window at {t - t0:.2f}s")
    assert "ok" in kinds and "refused" in kinds, f"outcomes seen: {kinds}"
    # Runs of consecutive refusals; only runs with an accepted connect on both sides count.
    runs = []
    cur = None
    for i, (t, o) in enumerate(attempts):
        if o == "refused":
            if cur is None:
                cur = [i, i]
            cur[1] = i
        elif cur is not None:
            runs.append(cur)
            cur = None
    full = [(attempts[a][0], attempts[b][0]) for a, b in runs if a > 0]
    assert full, ("no complete refused window within 5s: "
                  f"{[(round(t - t0, 2), o) for t, o in attempts]}")
    for first, last in full:
        span = last - first
        assert 0.8 <= span <= 1.2, (
            f"a refused window spanned {span:.2f}s (first to last refused), expected ~1s")
    assert proxy.find_logs("listener re-opened"), "no 'listener re-opened' log line"
    fired = proxy.find_logs("fault injected", rule="down", fault="refuse")
    assert len(fired) >= 2, f"refuse fired {len(fired)} times in 5s (windows at 0s, 2s, 4s)"


@pytest.mark.timeout(30)
def test_restart_resets_open_connections_and_refuses_for_downtime(tcpfault, servers, sockets):
    rec = Recorder(servers, reply=echo_reply, close_on_eof=True)
    proxy = start_proxy(tcpfault, rec.addr, [
        "{name: crash, match: {schedule: {every: 30s, for: 1s, offset: 1500ms}}, "
        "fault: {type: restart, downtime: 1s}}"])
    clients = [connect(proxy.addr()) for _ in range(3)]
    sockets += clients
    for c in clients:
        _echo_ok(c)
    assert not proxy.find_logs("restart"), "the restart fired before its window (1.5s)"
    proxy.wait_for_log("restart", timeout=5)
    t_restart = time.monotonic()
    # New connects are refused for ~1s, then work (probed first: the downtime is short).
    attempts = []
    while True:
        outcome, s = try_connect(proxy.addr(), timeout=1.0)
        now = time.monotonic()
        attempts.append((round(now - t_restart, 3), outcome))
        if s is not None:
            sockets.append(s)
        if (outcome in ("ok", "ECONNRESET") and now - t_restart < 0.1
                and not any(o == "refused" for _, o in attempts)):
            # The "restart" line is logged just before the listener closes: a probe right
            # after it can still get in (and be reset with the listener's queue). Not yet
            # the downtime; probe again.
            continue
        if outcome == "ok":
            break
        assert outcome == "refused", f"connect during the downtime: {outcome}"
        assert now - t_restart < 3.0, "still refused 3s after the restart (downtime 1s)"
        time.sleep(0.02)  # pacing of the probes
    refused = [t for t, o in attempts if o == "refused"]
    assert refused, f"no connect was refused after the restart: {attempts}"
    up_after = attempts[-1][0]
    assert 0.85 <= up_after <= 1.3, (
        f"connects worked again {up_after:.2f}s after the restart, expected ~1s: {attempts}")
    _echo_ok(s, b"back")
    proxy.wait_for_log("listener re-opened", timeout=1)
    # The clients open at the restart were reset, and so were their server sides.
    for i, c in enumerate(clients):
        outcome, data, _ = read_outcome(c, timeout=5)
        assert (outcome, data) == ("reset", b""), (
            f"open client {i + 1}: expected ECONNRESET at the restart, got {outcome} {data!r}")
    for i in range(3):
        assert rec.wait_end(i + 1, timeout=5).end == "reset", f"server side {i + 1} not reset"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("then", ["fin", "reset"])
def test_cap_banner_then(tcpfault, servers, sockets, then):
    """cap over: banner, then: fin (default) reads and drops what the turned-away client still
    sends, so it never gets a RST; then: reset answers its next segment with RST after the
    banner and FIN (a server that closes at once). 10 runs each."""
    held = []
    srv = servers.tcp(lambda conn: (held.append(conn), conn.recv(1)))
    proxy = start_proxy(tcpfault, srv.addr, [
        f"{{name: cap, fault: {{type: cap, max: 1, over: banner, "
        f"banner: \"421 Too many\\r\\n\", then: {then}}}}}"])
    first = connect(proxy.addr())
    sockets.append(first)
    srv.wait_accepted(1, timeout=5)
    for i in range(10):
        c = connect(proxy.addr())
        sockets.append(c)
        outcome, data, _ = read_outcome(c, timeout=5)
        assert (outcome, data) == ("eof", b"421 Too many\r\n"), (i, outcome, data)
        results = []
        for _ in range(40):
            try:
                c.send(b"QUIT\r\n")
                results.append("ok")
            except OSError as e:
                results.append(type(e).__name__)
                break
            time.sleep(0.005)  # pacing the client's writes, not synchronisation
        if then == "reset":
            assert results[-1] in ("BrokenPipeError", "ConnectionResetError"), (i, results)
        else:
            assert all(r == "ok" for r in results), (i, results)
