"""Hot reload under traffic (docs/cli.md#signals, docs/admin-api.md): 50 connections stream
seeded random data through an echo server while the file is reloaded 20 times, valid and
invalid alternately, through both SIGHUP and POST /api/reload. No connection of the unchanged
proxy drops, no byte is corrupted, and every reload is answered, logged and counted."""

from __future__ import annotations

import random
import re
import signal
import socket
import threading
import time

import pytest

from admin_helpers import admin_port, Admin
from helpers import connect, read_outcome, recv_exact, run_threads

N_CONNS = 50  # through `main`: its listener stays; its one rule (matching nothing) changes
N_SIDE = 5  # through `side`, whose rules change with every valid reload
N_RELOADS = 20
ROUNDS_BETWEEN_RELOADS = 3  # every connection echoes this many more chunks between reloads


def config(echo_addr: str, step: int, valid: bool) -> str:
    """Valid configs differ from step to step: the delay of a latency rule on `main` that
    matches no connection, and a harmless rule added to / removed from `side`. Invalid ones
    are a YAML syntax error or an unknown key, alternately."""
    side_rules = (f"[{{name: extra-{step}, fault: {{type: latency, delay: 1ms}}}}]"
                  if step % 4 == 0 else "[]")
    text = f"""admin: {{listen: 127.0.0.1:0}}
log: {{format: json, level: info}}
proxies:
  - name: main
    listen: 127.0.0.1:0
    upstream: "{echo_addr}"
    rules:
      - {{name: never, match: {{connections: {{nth: 999999}}}}, fault: {{type: latency, delay: {10 + step}ms}}}}
  - name: side
    listen: 127.0.0.1:0
    upstream: "{echo_addr}"
    rules: {side_rules}
"""
    if valid:
        return text
    if step % 4 == 1:
        return text.replace("rules: " + side_rules, "rules: [{name: broken, fault: {type: reset}")
    return text.replace("    upstream: \"" + echo_addr + "\"\n    rules:\n",
                        "    upstream: \"" + echo_addr + "\"\n    bogus_key: 1\n    rules:\n", 1)


def side_rules_expected(step: int) -> list:
    return [f"extra-{step}"] if step % 4 == 0 else []


class Progress:
    def __init__(self, n: int):
        self.cond = threading.Condition()
        self.rounds = [0] * n
        self.failed: list[str] = []

    def bump(self, i: int) -> None:
        with self.cond:
            self.rounds[i] += 1
            self.cond.notify_all()

    def fail(self, msg: str) -> None:
        with self.cond:
            self.failed.append(msg)
            self.cond.notify_all()

    def snapshot(self) -> list:
        with self.cond:
            return list(self.rounds)

    def wait_all_past(self, base: list, more: int, timeout: float) -> None:
        """Waits until every connection completed `more` rounds after `base` (or one failed)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                assert not self.failed, f"a connection failed: {self.failed[0]}"
                behind = [i for i, r in enumerate(self.rounds) if r < base[i] + more]
                if not behind:
                    return
                left = deadline - time.monotonic()
                assert left > 0, f"connections {behind[:10]} made no progress in {timeout}s"
                self.cond.wait(left)


def stream_worker(i: int, s: socket.socket, stop: threading.Event, prog: Progress):
    """Echoes random chunks (seeded per connection) in lock step, verifying every byte, until
    told to stop; then half-closes and expects a clean EOF. Returns bytes sent."""
    rng = random.Random(1000 + i)
    sent = 0
    try:
        while not stop.is_set():
            n = rng.randint(1, 48 * 1024)
            data = rng.randbytes(n)
            s.sendall(data)
            got = recv_exact(s, n, timeout=10)
            if got != data:
                j = next(k for k in range(n) if got[k] != data[k])
                raise AssertionError(f"conn {i}: byte {sent + j} of the stream corrupted")
            sent += n
            prog.bump(i)
        s.shutdown(socket.SHUT_WR)
        s.settimeout(10)
        rest = s.recv(1)
        assert rest == b"", f"conn {i}: {rest!r} after the last echo instead of EOF"
    except BaseException as e:
        prog.fail(f"conn {i} after {sent} bytes: {type(e).__name__}: {e}")
        raise
    return sent


@pytest.mark.timeout(60)
def test_reload_under_traffic_keeps_connections_and_bytes(tcpfault, servers):
    echo = servers.selector_echo()
    p = tcpfault.from_config(config(echo.addr, 0, True), listening=2)
    api = Admin(admin_port(p))
    main_addr = p.addr("main")
    main_listen = api.proxy("main")["listen"]

    socks = [connect(main_addr, timeout=10) for _ in range(N_CONNS)]
    socks += [connect(p.addr("side"), timeout=10) for _ in range(N_SIDE)]
    n_all = N_CONNS + N_SIDE
    stop = threading.Event()
    prog = Progress(n_all)
    results: dict = {}
    runner_error: list = []

    def run():
        try:
            results.update(run_threads(
                [(f"conn{i}", (lambda i=i: stream_worker(i, socks[i], stop, prog)))
                 for i in range(n_all)], timeout=50))
        except BaseException as e:
            runner_error.append(e)

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    try:
        echo.wait_open(n_all, timeout=10)
        prog.wait_all_past([0] * n_all, ROUNDS_BETWEEN_RELOADS, timeout=15)
        assert api.proxy("main")["active_connections"] == N_CONNS
        assert api.proxy("side")["active_connections"] == N_SIDE

        t0 = time.monotonic()
        ok = err = 0
        for step in range(1, N_RELOADS + 1):
            valid = step % 2 == 0
            via_api = step % 4 in (0, 1)  # both kinds of reload go through both paths
            path = tcpfault.write_config(config(echo.addr, step, valid), name=p.config_path.name)
            base = prog.snapshot()
            mark = p.mark()
            if via_api:
                r = api.post("/api/reload")
                if valid:
                    assert r.status == 200 and r.json() == {"reloaded": True}, f"step {step}: {r}"
                else:
                    assert r.status == 400, f"step {step}: invalid file accepted: {r}"
                    msg = r.json()["error"]
                    assert re.match(r"^reload failed, running config kept: .*" +
                                    re.escape(path.name) + r":\d+:\d+: ", msg), msg
            else:
                p.signal(signal.SIGHUP)
            rec = p.wait_for_log("reloaded" if valid else "reload failed", since=mark,
                                 timeout=5)[0]
            if not valid:
                assert path.name in rec.get("error", ""), rec
            assert not p.find_logs("reload failed" if valid else "reloaded", since=mark), \
                f"step {step}: wrong reload outcome logged"
            ok += valid
            err += not valid
            # The running config is the last valid one.
            last_valid = step if valid else step - 1
            side = api.proxy("side")
            assert [r["name"] for r in side["rules"]] == side_rules_expected(last_valid), \
                f"step {step}: side rules {side}"
            assert side["active_connections"] == N_SIDE, f"step {step}: {side}"
            main = api.proxy("main")
            assert main["listen"] == main_listen, main
            assert [r["name"] for r in main["rules"]] == ["never"], main
            assert main["active_connections"] == N_CONNS, f"step {step}: {main}"
            # traffic flows on every connection between reloads
            prog.wait_all_past(base, ROUNDS_BETWEEN_RELOADS, timeout=15)
        reload_time = time.monotonic() - t0
        assert (ok, err) == (N_RELOADS // 2, N_RELOADS // 2)
    finally:
        stop.set()
        runner.join(40)
    assert not runner.is_alive(), "streaming threads did not finish"
    assert not runner_error, f"{runner_error[0]}"
    assert not prog.failed, prog.failed[0]
    assert len(results) == n_all
    total = sum(results[f"conn{i}"] for i in range(N_CONNS))
    total_side = sum(results[f"conn{i}"] for i in range(N_CONNS, n_all))
    for s in socks:
        s.close()

    m = api.wait_metric("tcpfault_connections_active", 0, proxy="main", timeout=10)
    assert m.need("tcpfault_config_reloads_total", result="ok") == N_RELOADS // 2
    assert m.need("tcpfault_config_reloads_total", result="error") == N_RELOADS // 2
    assert m.need("tcpfault_connections_total", proxy="main") == N_CONNS, "a client reconnected?"
    assert m.need("tcpfault_bytes_total", proxy="main", direction="upstream") == total
    assert m.need("tcpfault_bytes_total", proxy="main", direction="downstream") == total
    assert m.need("tcpfault_faults_total", proxy="main", rule="never", fault="latency") == 0
    m = api.wait_metric("tcpfault_connections_active", 0, proxy="side", timeout=10)
    assert m.need("tcpfault_connections_total", proxy="side") == N_SIDE
    assert m.need("tcpfault_bytes_total", proxy="side", direction="upstream") == total_side
    assert m.need("tcpfault_bytes_total", proxy="side", direction="downstream") == total_side
    for reason in ("cap", "refuse", "upstream_error", "accept_error"):
        assert m.need("tcpfault_connections_rejected_total", proxy="main", reason=reason) == 0
    assert len(p.find_logs("reloaded")) == N_RELOADS // 2
    assert len(p.find_logs("reload failed")) == N_RELOADS // 2
    # neither listener was re-bound by a reload
    assert len(p.find_logs("listening", proxy="main")) == 1
    assert len(p.find_logs("listening", proxy="side")) == 1
    assert echo.errors == []
    assert reload_time < 30, f"20 reloads took {reload_time:.1f}s"


def _moving_config(echo_addr: str, listen: str, rules: str, name: str = "p") -> str:
    return f"""admin: {{listen: 127.0.0.1:0}}
log: {{format: json, level: debug}}
proxies:
  - name: {name}
    listen: {listen}
    upstream: "{echo_addr}"
    rules: {rules}
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("change", ["re-bound", "removed"])
def test_reload_that_moves_or_removes_a_proxy_lifts_its_rules_from_open_connections(
        tcpfault, servers, sockets, change):
    """Connections held by an endless stall and by a cap (`over: hold`) when a reload moves
    the proxy to another address, or removes it: its open connections follow the new file as
    a running proxy's do. The stall the file no longer has is lifted (the held bytes come
    through), the held client is let through, and until they end the moved proxy's
    connections are listed, reachable and counted under its name. Before, they kept the old
    rules forever, out of sight of the API and of tcpfault_connections_active."""
    echo = servers.echo()
    rules = ("[{name: one-at-a-time, fault: {type: cap, max: 1, over: hold}},"
             " {name: freeze, fault: {type: stall, direction: both}}]")
    p = tcpfault.from_config(_moving_config(echo.addr, "127.0.0.1:0", rules))
    api = Admin(admin_port(p))
    first = connect(p.addr("p"))
    sockets.append(first)
    p.wait_for_log("fault injected", rule="freeze", timeout=5)
    held = connect(p.addr("p"))
    sockets.append(held)
    api.wait_metric("tcpfault_connections_active", 2, proxy="p")
    first.sendall(b"frozen")
    held.sendall(b"waiting")
    first.settimeout(0.3)
    with pytest.raises(socket.timeout):
        first.recv(6)
    if change == "re-bound":
        new = _moving_config(echo.addr, "127.0.0.2:0", "[]")
    else:
        new = _moving_config(echo.addr, "127.0.0.1:0", "[]", name="other")
    tcpfault.write_config(new, name=p.config_path.name)
    assert api.ok_json("POST", "/api/reload") == {"reloaded": True}
    assert recv_exact(first, 6, timeout=5) == b"frozen"
    assert recv_exact(held, 7, timeout=5) == b"waiting"
    if change == "re-bound":
        ids = sorted(c["id"] for c in api.connections("p"))
        assert len(ids) == 2, f"the moved proxy lists {ids}"
        assert api.ok_json("GET", "/api/proxies/p")["active_connections"] == 2
        api.wait_metric("tcpfault_connections_active", 2, proxy="p")
        page = api.ok_json("GET", "/api/proxies/p/connections?limit=1")
        assert [c["id"] for c in page] == ids[:1]
        # Reachable: DELETE resets the first one.
        api.ok_json("DELETE", f"/api/proxies/p/connections/{ids[0]}")
        outcome, _, _ = read_outcome(first, timeout=5)
        assert outcome == "reset"
        api.wait_metric("tcpfault_connections_active", 1, proxy="p")
    held.close()
    first.close()
    if change == "re-bound":
        api.wait_metric("tcpfault_connections_active", 0, proxy="p")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("then", ["reload", "api-delete", "api-restart"])
def test_moved_proxys_old_connections_follow_later_changes(tcpfault, servers, sockets, then):
    """A reload moves the proxy and keeps its endless stall; a later change drops the stall
    (a second reload, or DELETE of the rule over the API), or restarts the proxy over the API:
    the connection from before the move follows it as the proxy's own do (its held bytes come
    through; the restart resets it)."""
    echo = servers.echo()
    stall = "[{name: freeze, fault: {type: stall, direction: both}}]"
    p = tcpfault.from_config(_moving_config(echo.addr, "127.0.0.1:0", stall))
    api = Admin(admin_port(p))
    old = connect(p.addr("p"))
    sockets.append(old)
    p.wait_for_log("fault injected", rule="freeze", timeout=5)
    old.sendall(b"frozen")
    tcpfault.write_config(_moving_config(echo.addr, "127.0.0.2:0", stall),
                          name=p.config_path.name)
    assert api.ok_json("POST", "/api/reload") == {"reloaded": True}
    old.settimeout(0.5)
    with pytest.raises(socket.timeout):
        old.recv(6)  # still stalled: the moved proxy kept the rule
    if then == "reload":
        tcpfault.write_config(_moving_config(echo.addr, "127.0.0.2:0", "[]"),
                              name=p.config_path.name)
        assert api.ok_json("POST", "/api/reload") == {"reloaded": True}
    elif then == "api-delete":
        assert api.ok_json("DELETE", "/api/proxies/p/rules/freeze") == {"deleted": "freeze"}
    else:
        assert api.ok_json("POST", "/api/proxies/p/restart")["reset"] == 1
        outcome, _, _ = read_outcome(old, timeout=5)
        assert outcome == "reset"
        return
    assert recv_exact(old, 6, timeout=5) == b"frozen"
