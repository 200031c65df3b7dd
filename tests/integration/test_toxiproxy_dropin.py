"""Toxiproxy drop-in behaviour (issue #15, docs/toxiproxy.md): what code written against
Toxiproxy's clients notices, checked on real sockets through tcpfault's Toxiproxy API.

Each test names the Toxiproxy behaviour it holds tcpfault to; Toxiproxy's own source
(api.go, proxy.go, toxics/*.go) is the reference.
"""

from __future__ import annotations

import http.client
import json
import re
import select
import socket
import threading
import time

import pytest

from admin_helpers import Admin, parse_prometheus
from helpers import LOOPBACK, connect, free_port, parse_addr, read_outcome, recv_exact
from test_toxiproxy import api_port, toxiproxy_yaml


class KeepAlive:
    """One HTTP/1.1 connection for many calls, as Toxiproxy's clients keep theirs."""

    def __init__(self, port: int):
        self.conn = http.client.HTTPConnection(LOOPBACK, port, timeout=10)

    def call(self, method: str, path: str, body=None) -> tuple[int, dict, bytes]:
        data = json.dumps(body).encode() if body is not None else None
        self.conn.request(method, path, body=data,
                          headers={"Content-Type": "application/json"} if data else {})
        r = self.conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()

    def close(self) -> None:
        self.conn.close()


def start_api(tcpfault, extra: str = ""):
    p = tcpfault.from_config(toxiproxy_yaml(toxiproxy_extra=extra), listening=0)
    return p, Admin(api_port(p))


def create(api: Admin, name: str, upstream: str, listen: str = "127.0.0.1:0", **extra) -> dict:
    r = api.post("/proxies", {"name": name, "listen": listen, "upstream": upstream, **extra})
    assert r.status == 201, r
    return r.json()


def refused(addr: tuple[str, int]) -> bool:
    try:
        connect(addr, timeout=2).close()
        return False
    except ConnectionRefusedError:
        return True


# ---------------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_disable_enable_back_to_back_never_refuses_after_the_answer(tcpfault, servers):
    """Toxiproxy binds before it answers: a connect right after `enabled: true` (or /reset)
    never meets a closed port, and one right after `enabled: false` always does."""
    echo = servers.echo()
    p, api = start_api(tcpfault)
    addr = parse_addr(create(api, "flip", echo.addr)["listen"])
    http_conn = KeepAlive(api.port)
    refused_after_enable = accepted_after_disable = 0
    try:
        for i in range(1000):
            status, _, _ = http_conn.call("POST", "/proxies/flip", {"enabled": False})
            assert status == 200
            if i % 10 == 0:  # the down side, sampled: it costs a second connect per round
                accepted_after_disable += not refused(addr)
            if i % 4 == 3:
                status, _, _ = http_conn.call("POST", "/reset")
                assert status == 204
            else:
                status, _, body = http_conn.call("PATCH", "/proxies/flip", {"enabled": True})
                assert status == 200 and json.loads(body)["enabled"] is True
            try:
                connect(addr, timeout=2).close()
            except ConnectionRefusedError:
                refused_after_enable += 1
    finally:
        http_conn.close()
    assert refused_after_enable == 0, f"{refused_after_enable} of 1000 connects refused"
    assert accepted_after_disable == 0, f"{accepted_after_disable} connects got through a disable"
    s = connect(addr)
    s.sendall(b"still proxying")
    assert recv_exact(s, 14) == b"still proxying"
    s.close()


def test_request_id_header(tcpfault, servers):
    """hlog.RequestIDHandler: every routed response has X-Toxiproxy-Request-Id, new each time;
    gorilla/mux's 404 and 405 skip the middlewares."""
    p, api = start_api(tcpfault)
    create(api, "r", servers.echo().addr)
    ids = []
    for method, path, body in [("GET", "/version", None), ("GET", "/proxies", None),
                               ("GET", "/proxies/r", None), ("GET", "/proxies/nope", None),
                               ("POST", "/proxies/r/toxics", {"type": "noop"}),
                               ("GET", "/proxies/r/toxics", None), ("POST", "/reset", None),
                               ("GET", "/metrics", None), ("POST", "/proxies", "{")]:
        r = api.request(method, path, body=body)
        rid = r.headers.get("x-toxiproxy-request-id")
        assert rid is not None and re.fullmatch(r"[0-9a-v]{20}", rid), (method, path, r.headers)
        ids.append(rid)
    assert len(set(ids)) == len(ids)
    assert "x-toxiproxy-request-id" not in api.get("/nope").headers
    assert "x-toxiproxy-request-id" not in api.request("PUT", "/proxies").headers


def test_disabled_proxy_echoes_listen_as_given(tcpfault, servers):
    """Toxiproxy resolves `listen` only when the proxy starts: created disabled, it shows what
    was given; once started, the real address (kept while it is down again)."""
    p, api = start_api(tcpfault)
    port = free_port()
    given = f"localhost:{port}"
    made = create(api, "lazy", servers.echo().addr, listen=given, enabled=False)
    assert made["listen"] == given and made["enabled"] is False
    assert api.get("/proxies/lazy").json()["listen"] == given
    assert api.get("/proxies").json()["lazy"]["listen"] == given
    assert refused((LOOPBACK, port))
    up = api.post("/proxies/lazy", {"enabled": True}).json()
    assert up["listen"] == f"127.0.0.1:{port}" and up["enabled"] is True
    connect((LOOPBACK, port)).close()
    down = api.post("/proxies/lazy", {"enabled": False}).json()
    assert down["listen"] == f"127.0.0.1:{port}"


def test_port_in_use_is_toxiproxys_500(tcpfault, servers):
    p, api = start_api(tcpfault)
    with socket.socket() as squatter:
        squatter.bind((LOOPBACK, 0))
        squatter.listen(1)
        port = squatter.getsockname()[1]
        for listen in (f"127.0.0.1:{port}", f"localhost:{port}"):
            r = api.post("/proxies", {"name": "busy", "listen": listen,
                                      "upstream": servers.echo().addr})
            assert r.status == 500
            assert r.json() == {"error": f"listen tcp 127.0.0.1:{port}: bind: address already "
                                         "in use", "status": 500}
    assert api.get("/proxies").json() == {}


def test_populate_keeps_what_came_before_a_failing_entry(tcpfault, servers):
    """Toxiproxy's PopulateJson: the first entry that cannot start stops the call; the proxies
    made before it stay, and come back with the error."""
    p, api = start_api(tcpfault)
    echo = servers.echo()
    with socket.socket() as squatter:
        squatter.bind((LOOPBACK, 0))
        squatter.listen(1)
        taken = squatter.getsockname()[1]
        r = api.post("/populate", [
            {"name": "first", "listen": "127.0.0.1:0", "upstream": echo.addr},
            {"name": "second", "listen": f"127.0.0.1:{taken}", "upstream": echo.addr},
            {"name": "third", "listen": "127.0.0.1:0", "upstream": echo.addr},
        ])
    assert r.status == 500, r
    body = r.json()
    assert list(body) == ["error", "status", "proxies"]
    assert body["error"] == f"listen tcp 127.0.0.1:{taken}: bind: address already in use"
    assert [x["name"] for x in body["proxies"]] == ["first"]
    assert set(api.get("/proxies").json()) == {"first"}
    s = connect(parse_addr(body["proxies"][0]["listen"]))
    s.sendall(b"made")
    assert recv_exact(s, 4) == b"made"
    s.close()


def test_dead_upstream_is_accept_then_fin(tcpfault):
    """Toxiproxy accepts the client, fails to dial the upstream, and closes: the client sees
    EOF (FIN), never a reset, so connect() itself succeeds. (tcpfault's own proxies keep their
    default on_upstream_error: reset.)"""
    p, api = start_api(tcpfault)
    dead = f"127.0.0.1:{free_port()}"
    addr = parse_addr(create(api, "dead", dead)["listen"])
    for _ in range(20):
        s = connect(addr)
        outcome, data, _ = read_outcome(s, 5)
        s.close()
        assert (outcome, data) == ("eof", b"")


@pytest.mark.timeout(30)
def test_timeout_toxic_is_an_inactivity_timeout(tcpfault, servers):
    """toxics/timeout.go restarts its timer on every chunk it drops: a client that trickles
    bytes is never cut, and once it falls silent the connection closes `timeout` later."""
    srv = servers.tcp()
    p, api = start_api(tcpfault)
    addr = parse_addr(create(api, "trickle", srv.addr)["listen"])
    r = api.post("/proxies/trickle/toxics", {"type": "timeout", "stream": "upstream",
                                             "attributes": {"timeout": 400}})
    assert r.status == 200, r
    c = connect(addr)
    up = srv.wait_accepted(1)
    try:
        # 1.6 s of one byte every 100 ms: four times the timeout, and never 400 ms of silence.
        t_end = time.monotonic() + 1.6
        while True:
            c.sendall(b".")
            last = time.monotonic()
            readable, _, _ = select.select([c], [], [], 0.1)
            assert not readable, "the connection was closed while the client kept sending"
            if last >= t_end:
                break
        up.settimeout(0.1)
        with pytest.raises(socket.timeout):  # the dropped bytes never reached the server
            up.recv(10)
        outcome, data, _ = read_outcome(c, 5)
        waited = time.monotonic() - last
        assert outcome in ("eof", "reset") and data == b""
        assert 0.3 <= waited <= 1.5, f"closed {waited:.2f}s after the last byte, timeout 400ms"
    finally:
        c.close()
        up.close()


SLICE_BYTES = 400_000
SLICE_SIZE = 100
SLICE_DELAY_US = 10


def _sliced_transfer(api: Admin, blob_addr: str, name: str, delay_us: int,
                     deadline: float) -> float:
    addr = parse_addr(create(api, name, blob_addr)["listen"])
    r = api.post(f"/proxies/{name}/toxics", {
        "type": "slicer",
        "attributes": {"average_size": SLICE_SIZE, "size_variation": 0, "delay": delay_us}})
    assert r.status == 200, r
    s = connect(addr)
    t0 = time.monotonic()
    got = 0
    try:
        while True:
            left = t0 + deadline - time.monotonic()
            if left <= 0:
                return float("inf")
            s.settimeout(left)
            try:
                chunk = s.recv(1 << 16)
            except socket.timeout:
                return float("inf")
            if not chunk:
                break
            got += len(chunk)
    finally:
        s.close()
    assert got == SLICE_BYTES
    return time.monotonic() - t0


def test_slicer_microsecond_delay_is_paced_within_20_percent(tcpfault, servers):
    """A slicer with delay 10 µs sends SLICE_BYTES/SLICE_SIZE slices 10 µs apart: the transfer
    takes the ideal pacing time (slices x delay) within 20%, plus at most what the same slices
    cost with no delay. Rounding each delay up to 1 ms (libuv's timer unit) makes it 100x
    slower."""
    def blob(conn):
        with conn:
            conn.sendall(b"x" * SLICE_BYTES)

    srv = servers.tcp(blob)
    p, api = start_api(tcpfault)
    slices = SLICE_BYTES // SLICE_SIZE
    ideal = slices * SLICE_DELAY_US / 1e6  # 40 ms
    base = _sliced_transfer(api, srv.addr, "slices0", 0, deadline=10)
    # Stop waiting well before a 1 ms-per-slice run would end (4 s): it has failed by then.
    took = _sliced_transfer(api, srv.addr, "slices10", SLICE_DELAY_US,
                            deadline=base + ideal * 1.2 + 0.3)
    assert ideal * 0.8 <= took <= ideal * 1.2 + base, (
        f"{slices} slices {SLICE_DELAY_US}us apart took {took * 1000:.0f} ms "
        f"({base * 1000:.0f} ms with no delay); ideal pacing {ideal * 1000:.0f} ms")


def test_metrics_on_the_toxiproxy_port(tcpfault, servers):
    """Toxiproxy serves Prometheus /metrics on its API port; with -proxy-metrics (here
    toxiproxy.proxy_metrics) its byte counters, labelled direction, listener, proxy, upstream."""
    echo = servers.echo()
    p, api = start_api(tcpfault, "proxy_metrics: true, runtime_metrics: true")
    made = create(api, "Shop.Cache", echo.addr)
    s = connect(parse_addr(made["listen"]))
    s.sendall(b"x" * 1000)
    assert recv_exact(s, 1000) == b"x" * 1000
    s.close()
    r = api.get("/metrics")
    assert r.status == 200 and r.headers["content-type"].startswith("text/plain")
    m = parse_prometheus(r.text)
    labels = {"listener": made["listen"], "proxy": "Shop.Cache", "upstream": echo.addr}
    for name in ("toxiproxy_proxy_received_bytes_total", "toxiproxy_proxy_sent_bytes_total"):
        for direction in ("upstream", "downstream"):
            assert m.need(name, direction=direction, **labels) == 1000
    assert m.need("process_open_fds") > 0
    # tcpfault's own series are there too (the admin API may be off).
    assert m.need("tcpfault_connections_total", proxy="shop-cache") == 1


@pytest.mark.timeout(120)
@pytest.mark.parametrize("toxic", [
    {"type": "timeout", "stream": "upstream", "attributes": {"timeout": 0}},
    {"type": "bandwidth", "attributes": {"rate": 0}},
    {"type": "bandwidth", "attributes": {"rate": 1}},
    {"type": "latency", "attributes": {"latency": 60000}},
], ids=["stalled-drop", "stalled-hold", "throttled", "delayed"])
def test_removing_a_toxic_under_load_returns_promptly(tcpfault, servers, toxic):
    """Toxiproxy's RemoveToxic waits for every link to hand its toxic back, which hangs API
    calls under load (its most-reported problem). Here a toxic is rules: removing it with 200
    connections stalled or throttled answers at once, and the API stays responsive."""
    def blob(conn):
        # The whole blob, then FIN, then read to the client's end: closing with its request
        # unread would answer it with a RST.
        with conn:
            try:
                conn.sendall(b"y" * 200_000)
                conn.shutdown(socket.SHUT_WR)
                while conn.recv(4096):
                    pass
            except OSError:
                pass

    srv = servers.tcp(blob)
    p, api = start_api(tcpfault)
    addr = parse_addr(create(api, "busy", srv.addr)["listen"])
    r = api.post("/proxies/busy/toxics", toxic)
    assert r.status == 200, r
    clients = []
    try:
        for _ in range(200):
            c = connect(addr)
            c.sendall(b"request")
            clients.append(c)
        srv.wait_accepted(200, timeout=20)
        time.sleep(0.2)  # let the toxic take hold of the streams (nothing to await)
        name = r.json()["name"]
        t0 = time.monotonic()
        d = api.delete(f"/proxies/busy/toxics/{name}")
        took = time.monotonic() - t0
        assert d.status == 204, d
        assert took < 0.5, f"DELETE took {took:.3f}s with 200 connections under the toxic"
        t0 = time.monotonic()
        assert api.get("/proxies/busy").json()["toxics"] == []
        assert api.post("/reset").status == 204
        assert time.monotonic() - t0 < 0.5
        # A new connection is unaffected.
        fresh = connect(addr)
        fresh.sendall(b"request")
        assert len(recv_exact(fresh, 200_000, timeout=10)) == 200_000
        fresh.shutdown(socket.SHUT_WR)
        fresh.close()
        t0 = time.monotonic()
        assert api.delete("/proxies/busy").status == 204
        assert time.monotonic() - t0 < 0.5
    finally:
        for c in clients:
            c.close()


def test_removing_a_toxic_frees_open_connections(tcpfault, servers):
    """Toxiproxy takes a removed toxic out of every link: an open connection throttled by
    bandwidth 1 KB/s gets the rest of its transfer at full speed."""
    def blob(conn):
        with conn:
            conn.sendall(b"z" * 100_000)

    srv = servers.tcp(blob)
    p, api = start_api(tcpfault)
    addr = parse_addr(create(api, "slow", srv.addr)["listen"])
    assert api.post("/proxies/slow/toxics", {"type": "bandwidth", "name": "bw",
                                             "attributes": {"rate": 1}}).status == 200
    c = connect(addr)
    first = c.recv(100)
    assert first
    assert api.delete("/proxies/slow/toxics/bw").status == 204
    assert len(first) + len(recv_exact(c, 100_000 - len(first), timeout=3)) == 100_000
    c.close()


def test_a_proxy_that_would_connect_to_itself_is_refused(tcpfault):
    """A proxy whose upstream is its own listen address, directly or through another proxy, is
    a 400 (each connection would open another until no descriptor is left); nothing starts."""
    p, api = start_api(tcpfault)
    port, other = free_port(), free_port()
    r = api.post("/proxies", {"name": "self", "listen": f"127.0.0.1:{port}",
                              "upstream": f"localhost:{port}"})
    assert r.status == 400 and "own listen address" in r.json()["error"], r
    create(api, "a", f"127.0.0.1:{other}", listen=f"127.0.0.1:{port}")
    r = api.post("/proxies", {"name": "b", "listen": f"0.0.0.0:{other}",
                              "upstream": f"127.0.0.1:{port}"})
    assert r.status == 400 and "leads back to this proxy" in r.json()["error"], r
    assert [x for x in api.get("/proxies").json()] == ["a"]
    # Moving a's upstream onto its own port is refused the same way, and a keeps working.
    r = api.post("/proxies/a", {"upstream": f"127.0.0.1:{port}"})
    assert r.status == 400, r
    assert api.get("/proxies/a").json()["upstream"] == f"127.0.0.1:{other}"
