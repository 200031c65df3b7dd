"""`workers: N`: one event loop per thread, each with its own SO_REUSEPORT listener. The kernel
spreads connections over the loops; everything a user counts on must still hold across them:
bytes unchanged, per-proxy connection ordinals and `limit`, cap slots (FIFO hand-over between
loops), rules added over the API and restarts acting on every loop before the call returns,
and `refuse` closing every listener."""

from __future__ import annotations

import hashlib
import os
import random
import socket
import time

import pytest

from admin_helpers import start_with_admin
from helpers import connect, read_outcome, recv_exact, run_threads

KiB = 1024


def start_two_loops(tcpfault, upstream: str, rules: list[str] = ()):
    """tcpfault with `workers: 2`, the admin API and one proxy "p"; (process, api, address)."""
    proxy = {"name": "p", "upstream": upstream, "rules": list(rules)}
    p, api = start_with_admin(tcpfault, [proxy], top_extra="workers: 2")
    p.wait_for_log("workers started", workers=2)
    return p, api, p.addr("p")


def echo_ok(s: socket.socket, payload: bytes = b"ping", timeout: float = 5.0) -> None:
    s.sendall(payload)
    assert recv_exact(s, len(payload), timeout=timeout) == payload


def outcome_of_one_exchange(addr) -> str:
    """Connect, send, read: 'echo', 'reset', 'refused', 'eof' or 'timeout'."""
    try:
        s = connect(addr)
    except ConnectionRefusedError:
        return "refused"
    except ConnectionResetError:
        return "reset"
    with s:
        try:
            s.sendall(b"hello")
        except (ConnectionResetError, BrokenPipeError):
            return "reset"
        outcome, data, _ = read_outcome_until(s, 5, b"hello")
        return "echo" if data == b"hello" else outcome


def read_outcome_until(s: socket.socket, timeout: float, want: bytes):
    """Like read_outcome, but returns as soon as `want` has arrived."""
    s.settimeout(timeout)
    buf = b""
    try:
        while len(buf) < len(want):
            chunk = s.recv(64 * KiB)
            if not chunk:
                return "eof", buf, 0
            buf += chunk
    except ConnectionResetError:
        return "reset", buf, 0
    except socket.timeout:
        return "timeout", buf, 0
    return "data", buf, 0


def wait_active(api, proxy: str, n: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        got = api.proxy(proxy)["active_connections"]
        if got == n:
            return
        assert time.monotonic() < deadline, f"{proxy}: {got} connections open, expected {n}"
        time.sleep(0.02)  # polled: the API is the only view of it


def open_spread(api, addr, proxy: str, want: int = 24, limit: int = 200) -> list:
    """Opens echo-verified connections until both loops hold some (the kernel picks the loop
    by a hash of the client port, so a handful is almost always enough)."""
    conns = []
    while len(conns) < limit:
        c = connect(addr)
        conns.append(c)
        echo_ok(c, b"hi")
        if len(conns) >= want:
            workers = {x["worker"] for x in api.connections(proxy)}
            if workers == {0, 1}:
                return conns
    raise AssertionError(f"{len(conns)} connections all landed on one loop: {workers}")


@pytest.mark.timeout(60)
def test_streams_spread_over_two_loops_with_bytes_intact(tcpfault, servers):
    echo = servers.echo()
    p, api, addr = start_two_loops(tcpfault, echo.addr)
    n, size = 32, 256 * KiB
    conns = [connect(addr) for _ in range(n)]
    try:
        for c in conns:
            echo_ok(c, b"x")
        listed = api.connections("p")
        assert len(listed) == n, listed
        workers = {c["worker"] for c in listed}
        assert workers == {0, 1}, f"{n} connections, loops used: {workers}"

        def exchange(i: int) -> None:
            data = random.Random(i).randbytes(size)
            s = conns[i]
            got = bytearray()

            def reader():
                while len(got) < size:
                    s.settimeout(20)
                    chunk = s.recv(64 * KiB)
                    assert chunk, f"connection {i}: EOF after {len(got)} bytes"
                    got.extend(chunk)

            run_threads([(f"read{i}", reader), (f"write{i}", lambda: s.sendall(data))],
                        timeout=30)
            assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest(), \
                f"connection {i}: bytes changed"

        run_threads([(f"c{i}", lambda i=i: exchange(i)) for i in range(n)], timeout=45)
    finally:
        for c in conns:
            c.close()
    wait_active(api, "p", 0)
    m = api.wait_metric("tcpfault_bytes_total", float(n * (size + 1)), proxy="p",
                        direction="upstream")
    assert m.need("tcpfault_bytes_total", proxy="p", direction="downstream") == n * (size + 1)
    assert m.need("tcpfault_connections_total", proxy="p") == n
    assert m.need("tcpfault_connections_active", proxy="p") == 0


@pytest.mark.timeout(60)
def test_connection_ordinals_and_limit_count_across_loops(tcpfault, servers):
    echo = servers.echo()
    p, api = start_with_admin(tcpfault, [
        {"name": "every", "upstream": echo.addr,
         "rules": ["{name: third, match: {connections: {every: 3}}, fault: {type: reset}}"]},
        {"name": "limited", "upstream": echo.addr,
         "rules": ["{name: four, match: {limit: 4}, fault: {type: reset}}"]},
    ], top_extra="workers: 2")
    got = [outcome_of_one_exchange(p.addr("every")) for _ in range(30)]
    want = ["reset" if (i + 1) % 3 == 0 else "echo" for i in range(30)]
    assert got == want, f"every 3rd connection over two loops:\n got {got}\nwant {want}"

    got = [outcome_of_one_exchange(p.addr("limited")) for _ in range(12)]
    assert got == ["reset"] * 4 + ["echo"] * 8, got
    rule = api.proxy("limited")["rules"][0]
    assert rule["fired"] == 4 and rule["active"] is False, rule
    m = api.scrape()
    assert m.need("tcpfault_faults_total", proxy="limited", rule="four", fault="reset") == 4
    assert m.need("tcpfault_faults_total", proxy="every", rule="third", fault="reset") == 10


@pytest.mark.timeout(60)
def test_cap_slots_are_shared_and_handed_over_fifo_between_loops(tcpfault, servers):
    echo = servers.echo()
    p, api, addr = start_two_loops(tcpfault, echo.addr,
                                   ["{name: cap, fault: {type: cap, max: 2, over: hold}}"])
    holders = [connect(addr), connect(addr)]
    waiters = []
    try:
        for h in holders:
            echo_ok(h)
        # Held clients, each queued before the next connects, so their order is known.
        for i in range(6):
            w = connect(addr)
            waiters.append(w)
            w.sendall(b"w%d" % i)
            p.wait_for_log("fault injected", rule="cap", count=i + 1)
        listed = api.connections("p")
        assert len(listed) == 8, listed
        loops = {c["worker"] for c in listed}
        assert echo.count() == 2, "a held client reached the server"
        # Every freed slot goes to the longest-waiting client, whichever loop holds it.
        for i, w in enumerate(waiters):
            (holders[i] if i < 2 else waiters[i - 2]).close()
            assert recv_exact(w, 2, timeout=5) == b"w%d" % i, f"waiter {i} not admitted"
            for later in waiters[i + 1:]:
                later.setblocking(False)
                try:
                    data = later.recv(16)
                except BlockingIOError:
                    data = None
                later.setblocking(True)
                assert data is None, f"a later waiter got {data!r} before waiter {i}"
        assert echo.count() == 8
    finally:
        for s in holders + waiters:
            s.close()
    print("loops holding the 8 clients:", loops)


@pytest.mark.timeout(60)
def test_runtime_rule_and_restart_act_on_every_loop_before_the_call_returns(tcpfault, servers):
    echo = servers.echo()
    p, api, addr = start_two_loops(tcpfault, echo.addr)
    conns = open_spread(api, addr, "p")
    try:
        api.ok_json("POST", "/api/proxies/p/rules",
                    {"name": "cut", "when": {"data": "go"}, "fault": {"type": "reset"}},
                    status=201)
        # The call has returned: the rule is in force on both loops' open connections.
        for i, c in enumerate(conns):
            c.sendall(b"go")
            outcome, _, _ = read_outcome(c, 5)
            assert outcome == "reset", f"connection {i}: {outcome}"
    finally:
        for c in conns:
            c.close()
    api.ok_json("DELETE", "/api/proxies/p/rules/cut")
    wait_active(api, "p", 0)

    conns = open_spread(api, addr, "p")
    try:
        n = len(conns)
        got = api.ok_json("POST", "/api/proxies/p/restart", {"downtime": "1500ms"})
        assert got == {"reset": n, "downtime": "1500ms"}, got
        for i, c in enumerate(conns):
            assert read_outcome(c, 5)[0] == "reset", f"connection {i} not reset by restart"
        # Every loop's listener is closed: no connect gets through during the downtime.
        refused = [outcome_of_one_exchange(addr) for _ in range(16)]
        assert refused == ["refused"] * 16, refused
        p.wait_for_log("listener re-opened", timeout=5, proxy="p")
        back = [outcome_of_one_exchange(addr) for _ in range(16)]
        assert back == ["echo"] * 16, back
    finally:
        for c in conns:
            c.close()


@pytest.mark.timeout(60)
def test_refuse_closes_and_reopens_every_listener(tcpfault, servers):
    echo = servers.echo()
    p, api, addr = start_two_loops(tcpfault, echo.addr,
                                   ["{name: down, enabled: false, fault: {type: refuse}}"])
    assert [outcome_of_one_exchange(addr) for _ in range(8)] == ["echo"] * 8
    api.ok_json("POST", "/api/proxies/p/rules/down/enable")
    got = [outcome_of_one_exchange(addr) for _ in range(24)]
    assert got == ["refused"] * 24, got
    api.ok_json("POST", "/api/proxies/p/rules/down/disable")
    got = [outcome_of_one_exchange(addr) for _ in range(24)]
    assert got == ["echo"] * 24, got


@pytest.mark.timeout(30)
def test_workers_auto_is_one_loop_per_core(tcpfault, servers):
    echo = servers.echo()
    p, _ = start_with_admin(tcpfault, [{"name": "p", "upstream": echo.addr}],
                            top_extra="workers: auto")
    if (os.cpu_count() or 1) > 1:
        p.wait_for_log("workers started", workers=os.cpu_count())
    assert outcome_of_one_exchange(p.addr("p")) == "echo"
