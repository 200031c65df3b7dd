"""The admin HTTP API (docs/admin-api.md): every call with its status and body shape, every error
status, the bearer token, and what runtime rule changes do to real connections."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time

import pytest

from admin_helpers import Admin, admin_port, raw_http, response_json, start_with_admin
from helpers import connect, read_outcome, recv_exact

RULE_KEYS = {"name", "fault", "enabled", "active", "fired"}
PROXY_KEYS = {"name", "listen", "upstream", "protocol", "active_connections",
              "connections_total", "bytes_upstream", "bytes_downstream", "rules"}
CONN_KEYS = {"id", "client", "age_seconds", "bytes_upstream", "bytes_downstream", "worker",
             "rules", "state", "faults", "blackholed"}


def is_error(r, status: int, contains: str = "") -> None:
    assert r.status == status, f"expected {status}, got {r}"
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers
    body = r.json()
    assert isinstance(body, dict) and set(body) == {"error"} and isinstance(body["error"], str) \
        and body["error"], f"error body should be {{\"error\": \"...\"}}: {body}"
    assert contains in body["error"], f"{contains!r} not in {body['error']!r}"


def echo_ok(s: socket.socket, payload: bytes = b"ping", timeout: float = 3.0) -> None:
    s.sendall(payload)
    assert recv_exact(s, len(payload), timeout=timeout) == payload


def wait_idle(api: Admin, proxy: str, timeout: float = 5.0) -> None:
    """Waits until the proxy has no open connection (a client's close reaches it a moment
    later; until then a rule enabled at runtime would also hit that connection)."""
    deadline = time.monotonic() + timeout
    while True:
        n = api.proxy(proxy)["active_connections"]
        if n == 0:
            return
        assert time.monotonic() < deadline, f"{proxy}: {n} connections still open"
        time.sleep(0.02)  # polled: the API is the only view of it


def reset_seen(addr, timeout: float = 3.0) -> str:
    """Connects, sends a few bytes, reads: returns the outcome ('reset' expected)."""
    try:
        s = connect(addr)
    except ConnectionRefusedError:
        return "refused"
    except ConnectionResetError:
        return "reset"  # the RST came before connect() returned (non-blocking connect)
    with s:
        try:
            s.sendall(b"hello")
        except (ConnectionResetError, BrokenPipeError):
            return "reset"
        return read_outcome(s, timeout)[0]


# --------------------------------------------------------------------------------------------
# plain GETs


@pytest.mark.timeout(20)
def test_healthz_metrics_and_proxy_listing(tcpfault, servers):
    echo = servers.echo()
    p, api = start_with_admin(tcpfault, [
        {"name": "web", "upstream": echo.addr,
         "rules": ["{name: lat, fault: {type: latency, delay: 1ms}}",
                   "{name: off, enabled: false, fault: {type: reset}}"]},
        {"name": "db", "upstream": "127.0.0.1:1"},
    ])

    r = api.get("/healthz")
    assert r.status == 200 and r.body == b"ok\n", r
    assert r.headers["content-type"].startswith("text/plain"), r.headers
    r = api.request("HEAD", "/healthz")
    assert r.status == 200 and r.body == b"", r

    r = api.get("/metrics")
    assert r.status == 200, r
    assert r.headers["content-type"].startswith("text/plain"), r.headers
    assert "version=0.0.4" in r.headers["content-type"], r.headers
    assert b"# TYPE tcpfault_connections_total counter" in r.body

    lst = api.ok_json("GET", "/api/proxies")
    assert isinstance(lst, list) and [x["name"] for x in lst] == ["web", "db"], lst
    for x in lst:
        assert set(x) == PROXY_KEYS, x
        assert x["protocol"] == "tcp" and x["active_connections"] == 0, x
        host, port = p.addr(x["name"])
        assert x["listen"] == f"{host}:{port}", f"listen should show the real port: {x}"
    web, db = lst
    assert web["upstream"] == echo.addr and db["upstream"] == "127.0.0.1:1"
    assert db["rules"] == []
    assert web["rules"] == [
        {"name": "lat", "fault": "latency", "enabled": True, "active": True, "fired": 0},
        {"name": "off", "fault": "reset", "enabled": False, "active": False, "fired": 0},
    ]
    assert api.proxy("web") == web
    assert api.ok_json("GET", "/api/proxies/web/rules") == web["rules"]
    assert api.ok_json("GET", "/api/proxies/web/rules/off") == web["rules"][1]

    # A connection makes the latency rule fire and shows in active_connections.
    with connect(p.addr("web")) as s:
        echo_ok(s)
        web = api.proxy("web")
        assert web["active_connections"] == 1, web
        assert web["rules"][0]["fired"] == 1, web

    is_error(api.get("/api/proxies/nope"), 404, "nope")
    is_error(api.get("/api/proxies/nope/connections"), 404)
    is_error(api.get("/api/proxies/web/rules/nope"), 404, "nope")


@pytest.mark.timeout(20)
def test_connections_listing_shows_open_connection_with_bytes(tcpfault, servers):
    echo = servers.echo()
    p, api = start_with_admin(tcpfault, [{
        "name": "p", "upstream": echo.addr,
        "rules": ["{name: slow, fault: {type: latency, delay: 1ms}}",
                  "{name: never, match: {connections: {nth: 999999}}, "
                  "fault: {type: reset}}"]}])
    assert api.connections("p") == []

    s = connect(p.addr("p"))
    try:
        up = b"u" * 1000
        s.sendall(up)
        assert recv_exact(s, 1000) == up
        s.sendall(b"x" * 234)
        assert recv_exact(s, 234) == b"x" * 234
        conns = api.connections("p")
        assert len(conns) == 1, conns
        c = conns[0]
        assert set(c) == CONN_KEYS, c
        assert isinstance(c["id"], int)
        host, port = s.getsockname()
        assert c["client"] == f"{host}:{port}", c
        assert c["bytes_upstream"] == 1234 and c["bytes_downstream"] == 1234, c
        assert isinstance(c["age_seconds"], (int, float)) and 0 <= c["age_seconds"] < 10, c
        assert c["rules"] == ["slow"], c
        assert c["blackholed"] is False, c

        # a second connection is listed too, with its own id and counters
        with connect(p.addr("p")) as s2:
            echo_ok(s2, b"ab")
            conns = api.connections("p")
            assert len(conns) == 2, conns
            assert len({x["id"] for x in conns}) == 2, conns
            other = [x for x in conns if x["id"] != c["id"]][0]
            assert other["bytes_upstream"] == 2 and other["bytes_downstream"] == 2, other
            assert other["age_seconds"] <= [x for x in conns if x["id"] == c["id"]][0][
                "age_seconds"], conns
    finally:
        s.close()
    deadline = time.monotonic() + 5
    while api.connections("p"):
        assert time.monotonic() < deadline, f"closed connections still listed: " \
                                            f"{api.connections('p')}"
        time.sleep(0.05)  # polled: the API is the only view of it


# --------------------------------------------------------------------------------------------
# rules: add / get / replace / delete / enable / disable


@pytest.mark.timeout(20)
def test_rule_crud_statuses_and_shapes(tcpfault, servers):
    echo = servers.echo()
    p, api = start_with_admin(tcpfault, [{"name": "p", "upstream": echo.addr}])

    # add (JSON)
    body = {"name": "r1", "fault": {"type": "latency", "delay": "5ms"}}
    got = api.ok_json("POST", "/api/proxies/p/rules", body, status=201)
    assert got == {"name": "r1", "fault": "latency", "enabled": True, "active": True,
                   "fired": 0}, got
    # add (YAML)
    got = api.ok_json("POST", "/api/proxies/p/rules",
                      "name: r2\nenabled: false\nfault: {type: reset, to: client}\n", status=201)
    assert got == {"name": "r2", "fault": "reset", "enabled": False, "active": False,
                   "fired": 0}, got
    assert [r["name"] for r in api.proxy("p")["rules"]] == ["r1", "r2"]

    # duplicate -> 409, nothing changed
    is_error(api.post("/api/proxies/p/rules", {"name": "r1", "fault": {"type": "reset"}}),
             409, "r1")
    assert api.ok_json("GET", "/api/proxies/p/rules/r1")["fault"] == "latency"

    # invalid bodies -> 400 with the loader's message
    r = api.post("/api/proxies/p/rules", '{"name": "bad", "fault": {"type": "rst"}}')
    is_error(r, 400)
    msg = r.json()["error"]
    assert re.match(r'^request body:1:\d+: unknown fault type "rst" \(expected one of: '
                    r'reset, close, ', msg), msg
    is_error(api.post("/api/proxies/p/rules", {"name": "bad", "fault": {"type": "reset"},
                                               "bogus": 1}), 400, "bogus")
    is_error(api.post("/api/proxies/p/rules", "{not json: ["), 400)
    is_error(api.post("/api/proxies/p/rules", ""), 400)
    is_error(api.post("/api/proxies/p/rules", {"name": "Bad Name!", "fault": {"type": "reset"}}),
             400)
    # match.channel is for ftp proxies only
    is_error(api.post("/api/proxies/p/rules", {"name": "ch", "match": {"channel": "data"},
                                               "fault": {"type": "reset"}}), 400, "channel")
    # unknown proxy
    is_error(api.post("/api/proxies/nope/rules", {"name": "x", "fault": {"type": "reset"}}),
             404, "nope")
    assert [r["name"] for r in api.proxy("p")["rules"]] == ["r1", "r2"]

    # replace
    got = api.ok_json("PUT", "/api/proxies/p/rules/r1",
                      {"name": "r1", "fault": {"type": "close"}})
    assert got == {"name": "r1", "fault": "close", "enabled": True, "active": True,
                   "fired": 0}, got
    is_error(api.put("/api/proxies/p/rules/r1", {"name": "other", "fault": {"type": "reset"}}),
             400, "other")
    is_error(api.put("/api/proxies/p/rules/zz", {"name": "zz", "fault": {"type": "reset"}}),
             404, "zz")
    is_error(api.put("/api/proxies/p/rules/r1", '{"name": "r1", "fault": {"type": "rst"}}'),
             400, "unknown fault type")
    is_error(api.put("/api/proxies/nope/rules/r1", {"name": "r1", "fault": {"type": "reset"}}),
             404, "nope")
    assert api.ok_json("GET", "/api/proxies/p/rules/r1")["fault"] == "close"

    # enable / disable
    got = api.ok_json("POST", "/api/proxies/p/rules/r2/enable")
    assert got == {"name": "r2", "fault": "reset", "enabled": True, "active": True,
                   "fired": 0}, got
    got = api.ok_json("POST", "/api/proxies/p/rules/r2/disable")
    assert got["enabled"] is False and got["active"] is False, got
    assert api.proxy("p")["rules"][1]["enabled"] is False
    is_error(api.post("/api/proxies/p/rules/zz/enable"), 404, "zz")
    is_error(api.post("/api/proxies/p/rules/zz/disable"), 404, "zz")

    # delete
    assert api.ok_json("DELETE", "/api/proxies/p/rules/r1") == {"deleted": "r1"}
    is_error(api.delete("/api/proxies/p/rules/r1"), 404, "r1")
    is_error(api.get("/api/proxies/p/rules/r1"), 404)
    assert [r["name"] for r in api.proxy("p")["rules"]] == ["r2"]
    # the name is free again
    api.ok_json("POST", "/api/proxies/p/rules", {"name": "r1", "fault": {"type": "reset"}},
                status=201)


@pytest.mark.timeout(20)
def test_wrong_method_405_and_unknown_path_404(tcpfault, servers):
    echo = servers.echo()
    p, api = start_with_admin(tcpfault, [{
        "name": "p", "upstream": echo.addr,
        "rules": ["{name: r, enabled: false, fault: {type: reset}}"]}])
    for method, path in [
        ("POST", "/healthz"), ("DELETE", "/healthz"), ("POST", "/metrics"),
        ("PUT", "/api/proxies"), ("POST", "/api/proxies"), ("DELETE", "/api/proxies/p"),
        ("POST", "/api/proxies/p/connections"), ("GET", "/api/reload"),
        ("PUT", "/api/reload"), ("GET", "/api/proxies/p/restart"),
        ("DELETE", "/api/proxies/p/rules"), ("PATCH", "/api/proxies/p/rules/r"),
        ("POST", "/api/proxies/p/rules/r"), ("GET", "/api/proxies/p/rules/r/enable"),
        ("DELETE", "/api/proxies/p/rules/r/disable"), ("POST", "/"), ("DELETE", "/status.js"),
    ]:
        r = api.request(method, path)
        assert r.status == 405, f"{method} {path}: expected 405, got {r}"
        is_error(r, 405)
    for path in ["/nope", "/nope.css", "/status.js/x", "/api", "/api/nope", "/api/proxies/p/nope",
                 "/api/proxies/p/rules/r/nope", "/api/proxies/p/rules/r/enable/x",
                 "/metrics/x", "/healthz/x"]:
        r = api.get(path)
        assert r.status == 404, f"GET {path}: expected 404, got {r}"
        is_error(r, 404)
    # nothing of that changed the rule
    assert api.proxy("p")["rules"] == [
        {"name": "r", "fault": "reset", "enabled": False, "active": False, "fired": 0}]


# --------------------------------------------------------------------------------------------
# HTTP-level errors


@pytest.mark.timeout(20)
def test_body_too_large_413(tcpfault, servers):
    echo = servers.echo()
    p, api = start_with_admin(tcpfault, [{"name": "p", "upstream": echo.addr}])

    # Over 1 MiB announced: 413 without reading the body.
    head = (b"POST /api/proxies/p/rules HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1048577\r\n\r\n")
    status, raw = raw_http(api.port, head)
    assert status == 413, raw[:300]
    assert "error" in response_json(raw)

    # Over 1 MiB actually sent, with a real client.
    big = b'{"name": "big", "fault": {"type": "reset"}, "x": "' + b"a" * (1 << 20) + b'"}'
    try:
        r = api.post("/api/proxies/p/rules", big)
        assert r.status == 413, r
    except (BrokenPipeError, ConnectionResetError):
        # The server may answer before the client finished sending; read it raw instead.
        status, raw = raw_http(api.port, head.replace(b"1048577", str(len(big)).encode()) + big)
        assert status == 413, raw[:300]

    # Chunked bodies are bounded too.
    chunk = b"a" * 65536
    chunked = b"".join(b"%x\r\n" % len(chunk) + chunk + b"\r\n" for _ in range(17)) + b"0\r\n\r\n"
    status, raw = raw_http(api.port, b"POST /api/proxies/p/rules HTTP/1.1\r\nHost: localhost\r\n"
                                     b"Transfer-Encoding: chunked\r\n\r\n" + chunked)
    assert status == 413, raw[:300]

    # Exactly 1 MiB is accepted as a body (and then judged as a rule: a YAML comment is not).
    body = b"#" + b"x" * ((1 << 20) - 1)
    r = api.post("/api/proxies/p/rules", body)
    assert r.status == 400, r
    assert api.proxy("p")["rules"] == []
    # and the server still serves
    assert api.get("/healthz").status == 200


@pytest.mark.timeout(20)
def test_header_too_large_431_and_malformed_400(tcpfault, servers):
    echo = servers.echo()
    p, api = start_with_admin(tcpfault, [{"name": "p", "upstream": echo.addr}])

    status, raw = raw_http(api.port, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Big: " +
                           b"a" * (17 * 1024) + b"\r\n\r\n")
    assert status == 431, raw[:300]
    # just under the limit is fine
    status, raw = raw_http(api.port, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Big: " +
                           b"a" * (15 * 1024) + b"\r\nConnection: close\r\n\r\n")
    assert status == 200, raw[:300]

    for bad in [b"GARBAGE\r\n\r\n",
                b"GET /healthz HTTP/1.1 extra\r\n\r\n",
                b"GET /healthz HTTP/1.1\r\nno colon here\r\n\r\n",
                b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nContent-Length: abc\r\n\r\n",
                b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"]:
        status, raw = raw_http(api.port, bad)
        assert status == 400, f"{bad!r} -> {raw[:300]!r}"

    # a real client still gets answers after all that
    assert api.get("/healthz").status == 200
    assert p.running()


# --------------------------------------------------------------------------------------------
# token


@pytest.mark.timeout(20)
def test_bearer_token(tcpfault, servers):
    echo = servers.echo()
    token = "s3cr3t-t0ken"
    p, api = start_with_admin(tcpfault, [{"name": "p", "upstream": echo.addr}], token=token)
    rule = {"name": "r", "fault": {"type": "reset"}}

    calls = [("POST", "/api/proxies/p/rules", rule),
             ("PUT", "/api/proxies/p/rules/r", rule),
             ("DELETE", "/api/proxies/p/rules/r", None),
             ("POST", "/api/proxies/p/rules/r/enable", None),
             ("POST", "/api/proxies/p/rules/r/disable", None),
             ("POST", "/api/proxies/p/restart", None),
             ("POST", "/api/reload", None)]
    for method, path, body in calls:
        for auth in (None, "wrong", token + "x", token[:-1]):
            r = api.request(method, path, body=body, auth=auth)
            assert r.status == 401, f"{method} {path} with token {auth!r}: {r}"
            is_error(r, 401)
        # a non-Bearer scheme does not count
        r = api.request(method, path, body=body, auth=None,
                        headers={"Authorization": f"Basic {token}"})
        assert r.status == 401, f"{method} {path} with Basic: {r}"
    assert api.proxy("p")["rules"] == [], "a 401 call changed the rules"

    # GETs, /metrics and /healthz need no token
    for path in ["/healthz", "/metrics", "/api/proxies", "/api/proxies/p",
                 "/api/proxies/p/connections", "/api/proxies/p/rules"]:
        r = api.get(path, auth=None)
        assert r.status == 200, f"GET {path} without token: {r}"

    # with the right token
    assert api.request("POST", "/api/proxies/p/rules", rule, auth=token).status == 201
    r = api.request("POST", "/api/proxies/p/rules/r/disable", auth=token)
    assert r.status == 200 and r.json()["enabled"] is False, r
    r = api.request("PUT", "/api/proxies/p/rules/r", {**rule, "enabled": False}, auth=token)
    assert r.status == 200, r
    r = api.request("POST", "/api/proxies/p/restart", auth=token)
    assert r.status == 200 and r.json() == {"reset": 0, "downtime": "0s"}, r
    r = api.request("DELETE", "/api/proxies/p/rules/r", auth=token)
    assert r.status == 200 and r.json() == {"deleted": "r"}, r
    r = api.request("POST", "/api/reload", auth=token)
    assert r.status == 200 and r.json() == {"reloaded": True}, r
    # an unknown proxy still needs the token first
    assert api.request("POST", "/api/proxies/nope/rules", rule, auth=None).status == 401
    assert api.request("POST", "/api/proxies/nope/rules", rule, auth=token).status == 404


# --------------------------------------------------------------------------------------------
# runtime rules on real connections


@pytest.mark.timeout(20)
def test_added_stall_rule_stalls_an_already_open_connection(tcpfault, servers, sockets):
    echo = servers.echo()
    p, api = start_with_admin(tcpfault, [{"name": "p", "upstream": echo.addr}])
    a = connect(p.addr("p"))
    sockets.append(a)
    echo_ok(a, b"before")

    mark = p.mark()
    got = api.ok_json("POST", "/api/proxies/p/rules",
                      {"name": "hold", "fault": {"type": "stall", "direction": "both"}},
                      status=201)
    assert got["name"] == "hold" and got["fault"] == "stall", got
    p.wait_for_log("fault injected", since=mark, timeout=5, rule="hold")

    a.sendall(b"after")
    a.settimeout(0.8)
    with pytest.raises(socket.timeout):
        data = a.recv(100)
        raise AssertionError(f"echo came back through a stalled connection: {data!r}")
    conns = api.connections("p")
    assert len(conns) == 1 and "hold" in conns[0]["rules"], conns
    assert api.proxy("p")["rules"][0]["fired"] >= 1


@pytest.mark.timeout(20)
def test_enable_disable_switches_reset_on_new_connections(tcpfault, servers):
    echo = servers.echo()
    p, api = start_with_admin(tcpfault, [{
        "name": "p", "upstream": echo.addr,
        "rules": ["{name: rst, enabled: false, fault: {type: reset}}"]}])
    addr = p.addr("p")

    with connect(addr) as s:
        echo_ok(s)
    wait_idle(api, "p")
    r = api.ok_json("POST", "/api/proxies/p/rules/rst/enable")
    assert r["enabled"] is True and r["active"] is True, r
    assert reset_seen(addr) == "reset"
    assert reset_seen(addr) == "reset"
    wait_idle(api, "p")
    r = api.ok_json("POST", "/api/proxies/p/rules/rst/disable")
    assert r["enabled"] is False and r["active"] is False and r["fired"] == 2, r
    with connect(addr) as s:
        echo_ok(s)
        echo_ok(s, b"again")
    wait_idle(api, "p")
    r = api.ok_json("POST", "/api/proxies/p/rules/rst/enable")
    assert reset_seen(addr) == "reset"
    assert api.proxy("p")["rules"][0]["fired"] == 3


@pytest.mark.timeout(20)
def test_put_replaces_latency_rule_by_reset_rule(tcpfault, servers, sockets):
    echo = servers.echo()
    p, api = start_with_admin(tcpfault, [{
        "name": "p", "upstream": echo.addr,
        "rules": ["{name: r, fault: {type: latency, delay: 300ms, direction: downstream}}"]}])
    addr = p.addr("p")

    old = connect(addr)
    sockets.append(old)
    t0 = time.monotonic()
    echo_ok(old, b"slow")
    assert time.monotonic() - t0 >= 0.28, "latency rule did not delay the echo"

    mark = p.mark()
    got = api.ok_json("PUT", "/api/proxies/p/rules/r", {"name": "r", "fault": {"type": "reset"}})
    # (`fired` is not checked: the new rule may already have fired on the open connection)
    assert {k: got[k] for k in ("name", "fault", "enabled", "active")} == {
        "name": "r", "fault": "reset", "enabled": True, "active": True}, got
    assert [(x["name"], x["fault"]) for x in api.proxy("p")["rules"]] == [("r", "reset")]
    # a replaced rule applies to connections already open too: the old one gets the RST
    p.wait_for_log("fault injected", since=mark, timeout=5, rule="r", fault="reset")
    assert read_outcome(old, 3)[0] == "reset"
    # and to new ones
    assert reset_seen(addr) == "reset"


@pytest.mark.timeout(20)
def test_restart_resets_open_connections_and_refuses_for_downtime(tcpfault, servers):
    echo = servers.echo()
    p, api = start_with_admin(tcpfault, [{"name": "p", "upstream": echo.addr}])
    addr = p.addr("p")
    clients = [connect(addr) for _ in range(3)]
    try:
        for i, c in enumerate(clients):
            echo_ok(c, b"c%d" % i)
        assert api.proxy("p")["active_connections"] == 3

        mark = p.mark()
        t0 = time.monotonic()
        got = api.ok_json("POST", "/api/proxies/p/restart", {"downtime": "1s"})
        assert got == {"reset": 3, "downtime": "1s"}, got
        for c in clients:
            with pytest.raises(ConnectionResetError):
                c.settimeout(3)
                c.recv(100)
        with pytest.raises(ConnectionRefusedError):
            connect(addr).close()
        # the listener comes back once the downtime is over
        p.wait_for_log("listener re-opened", since=mark, timeout=4, proxy="p")
        back = time.monotonic() - t0
        assert 0.9 <= back <= 1.8, f"listener back after {back:.2f}s, expected ~1s"
        with connect(addr) as s:
            echo_ok(s, b"back")
    finally:
        for c in clients:
            c.close()
    wait_idle(api, "p")

    # empty body: no downtime
    with connect(addr) as s:
        echo_ok(s)
        got = api.ok_json("POST", "/api/proxies/p/restart")
        assert got == {"reset": 1, "downtime": "0s"}, got
        assert read_outcome(s, 3)[0] == "reset"
    with connect(addr) as s:
        echo_ok(s)

    # bad bodies
    is_error(api.post("/api/proxies/p/restart", {"downtime": "soon"}), 400, "downtime")
    is_error(api.post("/api/proxies/p/restart", {"later": "1s"}), 400, "later")
    is_error(api.post("/api/proxies/p/restart", "[1, 2]"), 400)
    is_error(api.post("/api/proxies/p/restart", "{bad json"), 400)
    is_error(api.post("/api/proxies/nope/restart"), 404, "nope")


@pytest.mark.timeout(20)
def test_reload_call(tcpfault, servers):
    echo = servers.echo()
    p, api = start_with_admin(tcpfault, [{"name": "p", "upstream": echo.addr}])
    assert api.ok_json("POST", "/api/reload") == {"reloaded": True}
    p.wait_for_log("reloaded")

    text = p.config_path.read_text().replace("rules: []", "rules: [{name: x, fault: {type: rst}}]")
    tcpfault.write_config(text, name=p.config_path.name)
    r = api.post("/api/reload")
    is_error(r, 400)
    msg = r.json()["error"]
    assert re.match(r"^reload failed, running config kept: .*" + re.escape(p.config_path.name) +
                    r':\d+:\d+: unknown fault type "rst"', msg), msg
    p.wait_for_log("reload failed")
    assert api.proxy("p")["rules"] == []

    # -l/-u mode has no file: reload is refused
    q = tcpfault.spawn(["-l", "127.0.0.1:0", "-u", echo.addr, "--log-format", "json",
                        "--admin", "127.0.0.1:0"])
    q.wait_listening(1)
    r = Admin(admin_port(q)).post("/api/reload")
    is_error(r, 400, "reload failed")


@pytest.mark.timeout(20)
def test_runtime_rule_when_counts_from_connection_start_and_removal_cancels(tcpfault, servers,
                                                                           sockets):
    echo = servers.echo()
    p, api = start_with_admin(tcpfault, [{"name": "p", "upstream": echo.addr}])
    addr = p.addr("p")
    passed, pending, disabled = (connect(addr) for _ in range(3))
    sockets += [passed, pending, disabled]
    echo_ok(passed, b"a" * 100)  # 100 bytes each way before the rules exist
    echo_ok(pending, b"b" * 10)
    echo_ok(disabled, b"c" * 10)

    # after_bytes 50 counted from the connection's start: `passed` is over it -> RST at once
    mark = p.mark()
    r = api.post("/api/proxies/p/rules", {"name": "cut", "when": {"direction": "upstream",
                                                                  "after_bytes": 50},
                                          "fault": {"type": "reset"}})
    assert r.status == 201, r
    p.wait_for_log("fault injected", since=mark, rule="cut")
    assert read_outcome(passed, 3)[0] == "reset"
    assert len(p.find_logs("fault injected", since=mark)) == 1, "fired on a connection under " \
                                                                "the threshold"
    # the two others are still under it; deleting / disabling the rule cancels their trigger
    assert api.ok_json("POST", "/api/proxies/p/rules/cut/disable")["enabled"] is False
    echo_ok(disabled, b"C" * 200)
    assert api.ok_json("DELETE", "/api/proxies/p/rules/cut") == {"deleted": "cut"}
    echo_ok(pending, b"B" * 200)
    echo_ok(disabled, b"D" * 200)
    assert not p.find_logs("fault injected", since=mark, rule="cut")[1:], \
        "a disabled/deleted rule's pending trigger fired"


@pytest.mark.timeout(30)
def test_readme_curl_calls(tcpfault, servers, tmp_path):
    """The README's "Driving it from test code" commands, with curl as written there (bodies
    with -H 'Content-Type: application/json'; curl -d alone sends a form type, refused)."""
    curl = shutil.which("curl")
    if curl is None:
        pytest.fail("curl not found: install Debian's package `curl`", pytrace=False)
    echo = servers.echo()
    p, api = start_with_admin(tcpfault, [{
        "name": "web", "upstream": echo.addr,
        "rules": ["{name: slow, fault: {type: latency, delay: 1ms}}"]}])
    a = api.base

    def run(*args) -> tuple[int, object]:
        out = subprocess.run([curl, "-s", "-w", "\n%{http_code}", *args], capture_output=True,
                             timeout=10, check=True).stdout.decode()
        body, _, code = out.rpartition("\n")
        return int(code), (json.loads(body) if body.strip() else None)

    code, body = run(f"{a}/api/proxies")
    assert code == 200 and body[0]["name"] == "web" and body[0]["rules"][0]["name"] == "slow"
    with connect(p.addr("web")) as s:
        echo_ok(s)
        code, body = run(f"{a}/api/proxies/web/connections")
        assert code == 200 and len(body) == 1 and body[0]["bytes_upstream"] == 4, body
    rule = ('{"name": "cut-download",\n     "when": {"direction": "downstream", '
            '"after_bytes": "700KiB"},\n     "fault": {"type": "reset", "to": "client"}}')
    j = "Content-Type: application/json"
    # Without the header curl says application/x-www-form-urlencoded, which a web page can
    # send to any site: refused, and nothing is added.
    code, body = run("-X", "POST", f"{a}/api/proxies/web/rules", "-d", rule)
    assert code == 415 and "application/json" in body["error"], body
    assert [r["name"] for r in api.proxy("web")["rules"]] == ["slow"]
    code, body = run("-X", "POST", f"{a}/api/proxies/web/rules", "-H", j, "-d", rule)
    assert code == 201 and body["name"] == "cut-download", body
    code, body = run("-X", "POST", f"{a}/api/proxies/web/rules", "-H", j, "-d", rule)
    assert code == 409 and "error" in body, body
    code, body = run("-X", "DELETE", f"{a}/api/proxies/web/rules/cut-download")
    assert code == 200 and body == {"deleted": "cut-download"}, body
    code, body = run("-X", "POST", f"{a}/api/proxies/web/rules/slow/disable")
    assert code == 200 and body["enabled"] is False, body
    code, body = run("-X", "POST", f"{a}/api/proxies/web/rules/slow/enable")
    assert code == 200 and body["enabled"] is True, body
    code, body = run("-X", "PUT", f"{a}/api/proxies/web/rules/slow", "-H", j, "-d",
                     '{"name": "slow", "fault": {"type": "latency", "delay": "1s"}}')
    assert code == 200 and body["fault"] == "latency", body
    wait_idle(api, "web")
    code, body = run("-X", "POST", f"{a}/api/proxies/web/restart", "-H", j, "-d",
                     '{"downtime": "2s"}')
    assert code == 200 and body == {"reset": 0, "downtime": "2s"}, body
    code, body = run("-X", "POST", f"{a}/api/reload")
    assert code == 200 and body == {"reloaded": True}, body
    out = subprocess.run([curl, "-s", "-w", "\n%{http_code}", f"{a}/metrics"],
                         capture_output=True, timeout=10, check=True).stdout.decode()
    text, _, code = out.rpartition("\n")
    assert code == "200", out[-300:]
    assert 'tcpfault_faults_total{fault="latency",proxy="web",rule="slow"} ' in text, text[:3000]
