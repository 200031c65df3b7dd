"""Hostile input: what an attacker, a broken client or a fat-fingered operator can send to
tcpfault's admin HTTP server and its config loader, while real traffic goes through the proxy.

For the admin server (admin.listen 127.0.0.1:0, port read from the "admin listening" log
line): malformed and binary requests, bad request lines, oversized heads (431) and bodies
(413), a slow-drip client and a crowd of idle ones (408 at the 10 s header timeout, which is
not configurable), invalid UTF-8, NUL bytes, absurd nesting and alias bombs in rule bodies,
unknown paths (404) and methods (405). Throughout, a background client keeps echoing random
bytes through the proxy and checks every byte; at teardown the proxy must stop cleanly on
SIGTERM (conftest) with no sanitizer report.

For config files: alias bombs ("billion laughs"), deep nesting, oversized and binary files:
`tcpfault --check -c FILE` must exit 2 with a FILE:LINE:COL (or FILE:) diagnostic, in under
5 s and under 200 MiB of RSS (measured per child with os.wait4).

Regressions for bugs found by this work (RELIABILITY.md section 4): a body or config file
made of a stray "," (yaml-cpp 0.7's LoadAll looped forever allocating, jbeder/yaml-cpp#1040)
and sizes/durations that overflowed into small values.
"""

from __future__ import annotations

import json
import os
import random
import re
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Optional

import pytest

from admin_helpers import Admin, admin_port, admin_yaml, raw_http
from helpers import BIN, LOOPBACK, KiB, MiB, connect, raise_nofile_limit, recv_exact

HEADER_TIMEOUT = 10.0  # HttpServer::Limits::header_timeout_ms (not configurable)
ADMIN_MAX_CONNECTIONS = 256  # HttpServer::Limits::max_connections


# --------------------------------------------------------------------------------------------
# a data-path client that never stops checking


class EchoProbe:
    """Echoes random payloads (1 B .. 256 KiB) through the proxy in a loop on its own thread,
    one connection per round, and records every round that does not come back byte-exact."""

    def __init__(self, addr: tuple[str, int], seed: int = 1):
        self.addr = addr
        self.rng = random.Random(seed)
        self.ok = 0
        self.bytes = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True, name="echo-probe")

    def __enter__(self) -> "EchoProbe":
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.is_set():
            n = int(2 ** self.rng.uniform(0, 18))
            payload = self.rng.randbytes(n)
            try:
                s = connect(self.addr, timeout=5)
                try:
                    sender = threading.Thread(target=s.sendall, args=(payload,), daemon=True)
                    sender.start()
                    got = recv_exact(s, n, timeout=10)
                    sender.join(5)
                finally:
                    s.close()
            except (OSError, AssertionError) as e:
                self.failures.append(f"round {self.ok + len(self.failures) + 1} ({n} B): "
                                     f"{type(e).__name__}: {e}")
                continue
            if got != payload:
                self.failures.append(f"round {self.ok + 1}: {n} bytes came back different")
            else:
                self.ok += 1
                self.bytes += n

    def stop(self, min_rounds: int = 3) -> None:
        deadline = time.monotonic() + 10
        while self.ok < min_rounds and not self.failures and time.monotonic() < deadline:
            time.sleep(0.02)  # a short test: let the probe finish a few rounds first
        self._stop.set()
        self._t.join(15)
        assert not self._t.is_alive(), "echo probe stuck"
        assert not self.failures, ("the data path failed while the admin server was under "
                                   "attack:\n" + "\n".join(self.failures[:10]))
        assert self.ok >= min_rounds, f"only {self.ok} echo rounds completed"


@pytest.fixture
def target(tcpfault, servers):
    """tcpfault with one proxy ("main") in front of an echo server, admin on 127.0.0.1:0.
    Returns (process, Admin, echo probe)."""
    raise_nofile_limit()
    echo = servers.selector_echo()
    p = tcpfault.from_config(admin_yaml([{"name": "main", "upstream": echo.addr}]))
    api = Admin(admin_port(p))
    with EchoProbe(p.addr("main")) as probe:
        yield p, api, probe


def raw_until_eof(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Sends raw bytes to the admin port and returns everything until the server closes."""
    s = connect((LOOPBACK, port), timeout=timeout)
    buf = b""
    deadline = time.monotonic() + timeout
    try:
        s.sendall(data)
        while time.monotonic() < deadline:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = s.recv(65536)
            if not chunk:
                return buf
            buf += chunk
    except ConnectionResetError:
        return buf  # closed with a reset: also an end
    except socket.timeout:
        pass
    finally:
        s.close()
    raise AssertionError(f"admin server did not close within {timeout}s: {buf[:300]!r}")


def status_of(raw: bytes) -> int:
    m = re.match(rb"HTTP/1\.[01] (\d{3}) ", raw)
    assert m, f"no status line: {raw[:200]!r}"
    return int(m.group(1))


def error_body(raw: bytes) -> dict:
    """The JSON error object of a raw response (lenient on the body's UTF-8, see the strict
    test below)."""
    body = raw.partition(b"\r\n\r\n")[2]
    obj = json.loads(body.decode("utf-8", "replace"))
    assert isinstance(obj, dict) and isinstance(obj.get("error"), str) and obj["error"], \
        f"not an {{\"error\": ...}} body: {body[:300]!r}"
    return obj


def alive(p, api: Admin) -> None:
    assert p.running(), f"tcpfault died; stderr:\n{p.stderr_text()[-3000:]}"
    r = api.get("/healthz", timeout=5)
    assert r.status == 200 and r.body == b"ok\n", r


# --------------------------------------------------------------------------------------------
# malformed HTTP

_BINARY = bytes(random.Random(7).randbytes(4096)).replace(b"\n", b"")

MALFORMED = [
    # (id, raw request, expected status or set of acceptable statuses)
    ("garbage", b"\x00\xff garbage\r\n\r\n", 400),
    ("binary-then-blank-line", _BINARY[:1000] + b"\r\n\r\n", 400),
    ("binary-no-newline-20KiB", (_BINARY * 5)[:20 * KiB], 431),
    ("method-only", b"GET\r\n\r\n", 400),
    ("no-version", b"GET /healthz\r\n\r\n", 400),
    ("space-in-target", b"GET /a b HTTP/1.1\r\n\r\n", 400),
    ("method-not-token", b"G(T /healthz HTTP/1.1\r\n\r\n", 400),
    ("bad-percent", b"GET /api/%zz HTTP/1.1\r\n\r\n", 400),
    ("percent-nul", b"GET /api/%00 HTTP/1.1\r\n\r\n", 400),
    ("fragment", b"GET /healthz#x HTTP/1.1\r\n\r\n", 400),
    ("http-9.9", b"GET / HTTP/9.9\r\n\r\n", 505),
    ("http2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
    ("header-no-colon", b"GET /healthz HTTP/1.1\r\nHost x\r\n\r\n", 400),
    ("space-before-colon", b"GET /healthz HTTP/1.1\r\nHost : x\r\n\r\n", 400),
    ("obs-fold", b"GET /healthz HTTP/1.1\r\nX: a\r\n  b\r\n\r\n", 400),
    ("nul-in-header", b"GET /healthz HTTP/1.1\r\nX: a\x00b\r\n\r\n", 400),
    ("bare-cr", b"GET /healthz HTTP/1.1\rX: y\r\n\r\n", 400),
    ("duplicate-host", b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ("negative-length", b"POST /api/reload HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
    ("conflicting-lengths",
     b"POST /api/reload HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400),
    ("length-overflow",
     b"POST /api/reload HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n", {400, 413}),
    ("length-and-chunked", b"POST /api/reload HTTP/1.1\r\nContent-Length: 1\r\n"
                           b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("te-gzip", b"POST /api/reload HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    ("bad-chunk-size", b"POST /api/reload HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                       b"zz\r\n", 400),
    ("chunk-size-overflow", b"POST /api/reload HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                            b"ffffffffffffffffffff\r\n", 413),
    # oversized heads: one huge header, thousands of small ones, a huge request line
    ("header-20KiB", b"GET /healthz HTTP/1.1\r\nX: " + b"a" * (20 * KiB) + b"\r\n\r\n", 431),
    ("5000-headers", b"GET /healthz HTTP/1.1\r\n" + b"a: b\r\n" * 5000 + b"\r\n", 431),
    ("request-line-20KiB", b"GET /" + b"a" * (20 * KiB) + b" HTTP/1.1\r\n\r\n", 431),
    ("blank-lines-20KiB", b"\r\n" * (10 * KiB) + b"GET /healthz HTTP/1.1\r\n\r\n", 431),
    # oversized bodies: declared (answered from the head alone) and chunked
    ("content-length-2MiB", b"POST /api/proxies/main/rules HTTP/1.1\r\n"
                            b"Content-Length: 2097152\r\n\r\n", 413),
    ("content-length-huge", b"POST /api/proxies/main/rules HTTP/1.1\r\n"
                            b"Content-Length: 18446744073709551615\r\n\r\n", 413),
    ("chunked-over-1MiB", b"POST /api/proxies/main/rules HTTP/1.1\r\n"
                          b"Transfer-Encoding: chunked\r\n\r\n100000\r\n" + b"x" * 0x100000 +
                          b"\r\n1\r\nx\r\n0\r\n\r\n", 413),
    ("trailers-20KiB", b"POST /api/reload HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                       b"0\r\n" + b"t: v\r\n" * 4000 + b"\r\n", 431),
]


@pytest.mark.timeout(60)
def test_malformed_requests_get_4xx_and_never_disturb_the_proxy(target):
    p, api, probe = target
    port = api.port
    wrong = []
    for name, data, want in MALFORMED:
        t0 = time.monotonic()
        status, raw = raw_http(port, data, timeout=5)
        took = time.monotonic() - t0
        if status not in (want if isinstance(want, set) else {want}):
            wrong.append(f"{name}: expected {want}, got {status}: {raw[:200]!r}")
            continue
        error_body(raw)
        assert b"connection: close" in raw.lower().partition(b"\r\n\r\n")[0], \
            f"{name}: an error response must close the connection: {raw[:200]!r}"
        assert took < 3, f"{name}: the {want} took {took:.1f}s"
    assert not wrong, "\n".join(wrong)

    # A valid request followed by garbage on the same connection: 200 for the first, then 400.
    raw = raw_until_eof(port, b"GET /healthz HTTP/1.1\r\n\r\nGARBAGE\r\n\r\n")
    assert re.findall(rb"HTTP/1\.1 (\d{3})", raw) == [b"200", b"400"], raw[:400]

    # A client that streams a 2 MiB body anyway gets its 413 and a closed connection.
    s = connect((LOOPBACK, port), timeout=5)
    try:
        s.sendall(b"POST /api/proxies/main/rules HTTP/1.1\r\nContent-Length: 2097152\r\n\r\n")
        try:
            s.sendall(b"{" * (2 * MiB))
        except (BrokenPipeError, ConnectionResetError):
            pass
        head = s.recv(4096)
        assert head.startswith(b"HTTP/1.1 413 "), head[:200]
    except ConnectionResetError:
        pass  # the RST for unread bytes may overtake the 413: also a bounded outcome
    finally:
        s.close()
    alive(p, api)
    assert api.proxy("main")["rules"] == [], "a rejected request changed the rules"


UNKNOWN = [
    ("POST", "/", 405), ("GET", "/nope.js", 404), ("GET", "/status.js/x", 404),
    ("GET", "/nope", 404), ("GET", "/api", 404), ("GET", "/api/nope", 404),
    ("GET", "/api/proxies/nope", 404), ("GET", "/api/proxies/main/nope", 404),
    ("GET", "/api/proxies/main/rules/nope", 404),
    ("POST", "/api/proxies/main/rules/nope/enable", 404),
    ("POST", "/api/proxies/nope/restart", 404), ("GET", "/api/proxies/main/rules/a/b/c", 404),
    ("GET", "/api/proxies/" + "a" * 4000, 404), ("GET", "/api/proxies/%ff%fe", 404),
    ("GET", "/../../etc/passwd", 404), ("GET", "/api/proxies/main/../../healthz", 404),
    ("DELETE", "/healthz", 405), ("POST", "/metrics", 405), ("PUT", "/api/proxies", 405),
    ("GET", "/api/reload", 405), ("GET", "/api/proxies/main/restart", 405),
    ("BREW", "/api/proxies", 405),
]


@pytest.mark.timeout(60)
def test_unknown_paths_and_methods(target):
    p, api, probe = target
    wrong = []
    for method, path, want in UNKNOWN:
        status, raw = raw_http(api.port, f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n"
                                         f"Connection: close\r\n\r\n".encode(), timeout=5)
        if status != want:
            wrong.append(f"{method} {path[:60]}: expected {want}, got {status}: {raw[:200]!r}")
        else:
            error_body(raw)
    assert not wrong, "\n".join(wrong)
    alive(p, api)


# --------------------------------------------------------------------------------------------
# hostile rule bodies

def _laughs(levels: int = 9, width: int = 10) -> bytes:
    """A billion-laughs rule body: width**levels CIDRs if aliases were expanded."""
    lines = ["a0: &a0 [" + ", ".join(["10.0.0.0/8"] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    lines += ["name: laughs", f"match: {{clients: *a{levels - 1}}}", "fault: {type: reset}"]
    return ("\n".join(lines) + "\n").encode()


def _inline_laughs(levels: int = 9, width: int = 10) -> bytes:
    """The same bomb where the loader walks it: every level inside match.clients."""
    inner = "&l0 [" + ", ".join(["10.0.0.0/8"] * width) + "]"
    for i in range(1, levels):
        inner = f"&l{i} [{inner}" + f", *l{i - 1}" * (width - 1) + "]"
    return ('{"name": "laughs2", "match": {"clients": ' + inner + '}, '
            '"fault": {"type": "reset"}}').encode()


BAD_BODIES = [
    ("utf8-in-name", b'{"name": "\xff\xfe", "fault": {"type": "reset"}}'),
    ("utf8-in-type", b'{"name": "ok", "fault": {"type": "\xc3\x28"}}'),
    ("utf8-overlong", b'{"name": "\xc0\xafx", "fault": {"type": "reset"}}'),
    ("utf8-surrogate", b'{"name": "\xed\xa0\x80", "fault": {"type": "reset"}}'),
    ("utf8-in-key", b'{"n\xffme": "x", "fault": {"type": "reset"}}'),
    ("utf8-in-yaml", b"name: x\xff\nfault: {type: reset}\n"),
    ("nul-in-name", b'{"name": "a\x00b", "fault": {"type": "reset"}}'),
    ("nul-bytes", b"\x00" * 1000),
    ("binary", bytes(random.Random(3).randbytes(8192))),
    ("utf16-bom", "\ufeff{\"name\": \"x\"}".encode("utf-16")),
    ("deep-[", b"[" * 100_000),
    ("deep-{", b"{" * 100_000),
    ("deep-{a:", b"{a: " * 50_000 + b"1" + b"}" * 50_000),
    ("deep-block-seq", b"- " * 100_000 + b"x"),
    ("deep-json-valid", b"[" * 5000 + b"]" * 5000),
    ("deep-in-match", b'{"name": "d", "match": ' + b"[" * 50_000 + b"]" * 50_000 +
                      b', "fault": {"type": "reset"}}'),
    ("billion-laughs", _laughs()),
    ("billion-laughs-inline", _inline_laughs()),
    ("alias-to-nothing", b"name: *nope\nfault: {type: reset}\n"),
    ("recursive-anchor", b"&a [*a]"),
    ("huge-scalar", b'{"name": "' + b"a" * (900 * KiB) + b'", "fault": {"type": "reset"}}'),
    ("huge-regex", b'{"name": "rx", "when": {"line": "' + b"a" * 100_000 + b'"}, '
                   b'"fault": {"type": "reset"}}'),
    ("regex-syntax", b'{"name": "rx", "when": {"line": "(((("}, "fault": {"type": "reset"}}'),
    ("regex-brace-bomb", b'{"name": "rx", "when": {"line": "((a{1000}){1000}){1000}"}, '
                         b'"fault": {"type": "reset"}}'),
    ("many-errors", b"{" + b", ".join(b'"k%d": 1' % i for i in range(20_000)) + b"}"),
    ("many-documents", b"---\nname: a\n" * 5000),
    ("not-an-object", b'"just a string"'),
    ("json-array", b'[{"name": "a", "fault": {"type": "reset"}}]'),
    ("duplicate-keys", b'{"name": "a", "name": "b", "fault": {"type": "reset"}}'),
    ("numbers", b'{"name": 1e999999, "fault": {"type": "cap", "max": 1e999999}}'),
    ("size-overflow", b'{"name": "o", "when": {"after_bytes": "99999999999999999999999TiB"}, '
                      b'"fault": {"type": "reset"}}'),
    ("duration-overflow", b'{"name": "o", "when": {"after": "999999999999h"}, '
                          b'"fault": {"type": "reset"}}'),
    ("env-in-body", b'{"name": "${HOME}", "fault": {"type": "reset"}}'),
    ("stray-comma", b","),
    ("stray-comma-lines", b"\n,\n\n"),
    ("comma-then-text", b",a"),
    ("trailing-comma", b'{"name": "c", "fault": {"type": "reset"}},'),
    ("second-document-comma", b"name: c\nfault: {type: reset}\n---\n,\n"),
    ("size-wraps-to-1TiB", b'{"name": "o", "when": {"after_bytes": '
                           b'"309485009821345068724782.056TiB"}, "fault": {"type": "reset"}}'),
    ("duration-wraps-to-1us", b'{"name": "o", "when": {"after": '
                              b'"295383999063314638423068.235617854628h"}, '
                              b'"fault": {"type": "reset"}}'),
]


@pytest.mark.timeout(90)
def test_hostile_rule_bodies_get_400_fast(target):
    p, api, probe = target
    wrong = []
    for name, body in BAD_BODIES:
        for method, path in (("POST", "/api/proxies/main/rules"),
                             ("PUT", "/api/proxies/main/rules/x"),
                             ("POST", "/api/proxies/main/restart")):
            if path.endswith("/restart") and not name.startswith(("deep", "billion", "utf8",
                                                                   "binary", "nul", "recursive")):
                continue  # restart bodies are tiny objects; the rest adds nothing there
            head = (f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
            t0 = time.monotonic()
            status, raw = raw_http(api.port, head.encode() + body, timeout=10)
            took = time.monotonic() - t0
            # PUT of a rule that does not exist: the body is validated first (400), or 404.
            ok = {400} if method == "POST" else {400, 404}
            if status not in ok:
                wrong.append(f"{name} {method} {path}: expected {sorted(ok)}, got {status}: "
                             f"{raw[:300]!r}")
                continue
            error_body(raw)
            if took > 2:
                wrong.append(f"{name} {method} {path}: took {took:.1f}s")
        assert p.running(), f"tcpfault died on body {name!r}; stderr:\n{p.stderr_text()[-3000:]}"
    assert not wrong, "\n".join(wrong)
    alive(p, api)
    assert api.proxy("main")["rules"] == [], "a rejected body added a rule"
    # The restart bodies were all rejected: no connection was reset by them (the echo probe
    # would have failed) and the proxy still works.
    rule = {"name": "ok", "fault": {"type": "latency", "delay": "1ms"}}
    assert api.post("/api/proxies/main/rules", rule).status == 201


@pytest.mark.timeout(30)
def test_error_bodies_are_valid_utf8_json(target):
    p, api, probe = target
    rule = b'{"name": "\xff\xfe", "fault": {"type": "reset"}}'
    for data in (b"GET /api/proxies/%ff%fe HTTP/1.1\r\nConnection: close\r\n\r\n",
                 b"POST /api/proxies/main/rules HTTP/1.1\r\nConnection: close\r\n"
                 b"Content-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(rule) + rule):
        _, raw = raw_http(api.port, data, timeout=5)
        body = raw.partition(b"\r\n\r\n")[2]
        json.loads(body.decode("utf-8"))  # strict: raises on invalid UTF-8


@pytest.mark.timeout(30)
def test_one_hostile_rule_body_does_not_balloon_memory(target):
    p, api, probe = target
    before = p.rss_kib()
    body = b"[" * (MiB - 1024)
    head = (f"POST /api/proxies/main/rules HTTP/1.1\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    status, raw = raw_http(api.port, head + body, timeout=10)
    assert status == 400, raw[:300]
    grown = (p.rss_kib() - before) / 1024
    assert grown < 64, f"the proxy's RSS grew by {grown:.0f} MiB for one request"


# --------------------------------------------------------------------------------------------
# slow clients


def _drip(port: int, data: bytes, interval: float, result: dict) -> None:
    """Sends one byte every `interval` until the server answers or closes; records when."""
    s = connect((LOOPBACK, port), timeout=30)
    t0 = time.monotonic()
    s.settimeout(interval)
    buf = b""
    try:
        for i in range(len(data)):
            try:
                s.send(data[i:i + 1])
            except OSError as e:
                result["send_error"] = f"{type(e).__name__} after {i} bytes"
                break
            try:
                chunk = s.recv(4096)
            except socket.timeout:
                continue
            buf += chunk
            if not chunk or buf:
                break
        s.settimeout(max(0.1, HEADER_TIMEOUT + 3 - (time.monotonic() - t0)))
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
    except OSError as e:
        result["error"] = f"{type(e).__name__}: {e}"
    finally:
        result["seconds"] = time.monotonic() - t0
        result["raw"] = buf
        s.close()


@pytest.mark.timeout(60)
def test_slow_drip_and_idle_crowd_are_cut_off_while_the_proxy_keeps_serving(target):
    """One client drips a request a byte every 200 ms; 150 more (from another address, as
    one address may hold only 64 admin connections: its oldest unfinished ones would give way)
    open a connection and send half a request line. The header timeout (10 s, fixed) answers
    each with 408 and closes; meanwhile the admin API answers other clients and the data path
    keeps echoing."""
    p, api, probe = target
    port = api.port
    request = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Pad: " + b"p" * 200 + b"\r\n\r\n"
    drip: dict = {}
    t = threading.Thread(target=_drip, args=(port, request, 0.2, drip), daemon=True)
    t.start()
    crowd = []
    for _ in range(150):
        s = socket.socket()
        s.settimeout(5)
        s.bind(("127.0.0.2", 0))  # Linux routes all of 127.0.0.0/8 to lo
        s.connect((LOOPBACK, port))
        s.sendall(b"GET /api/prox")
        crowd.append(s)
    started = time.monotonic()
    try:
        # While they hang on: other clients are served promptly.
        served = 0
        while time.monotonic() - started < HEADER_TIMEOUT - 2:
            t0 = time.monotonic()
            r = api.get("/api/proxies", timeout=5)
            assert r.status == 200, r
            assert time.monotonic() - t0 < 1.0, "admin API slow while idle clients hang on"
            served += 1
            time.sleep(0.25)  # pacing the foreground requests, not synchronisation
        assert served >= 20
        assert p.running()

        # Then every one of them is cut off at the header timeout.
        t.join(HEADER_TIMEOUT + 5)
        assert not t.is_alive(), "slow-drip client still connected"
        assert drip["seconds"] < HEADER_TIMEOUT + 2.5, drip
        assert status_of(drip["raw"]) == 408, drip
        for s in crowd:
            s.settimeout(max(0.1, started + HEADER_TIMEOUT + 3 - time.monotonic()))
            raw = b""
            try:
                while True:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    raw += chunk
            except ConnectionResetError:
                pass
            except socket.timeout:
                raise AssertionError(f"idle admin client not closed {HEADER_TIMEOUT + 3}s "
                                     f"after connecting (got {raw[:100]!r})")
            assert raw == b"" or status_of(raw) == 408, raw[:200]
    finally:
        for s in crowd:
            s.close()
    alive(p, api)


@pytest.mark.timeout(60)
def test_admin_connection_flood_is_bounded_and_recovers(target):
    """More idle connections than the admin server keeps (64 per client address, 256 in all):
    the oldest are closed at once to admit the newest instead of exhausting descriptors, the data path is unaffected, and the admin API
    serves again as soon as the flood goes away."""
    p, api, probe = target
    port = api.port
    fds_before = p.fd_count()
    flood = []
    closed_at_once = 0
    for _ in range(ADMIN_MAX_CONNECTIONS + 100):
        s = connect((LOOPBACK, port), timeout=5)
        flood.append(s)
    time.sleep(0.5)  # let the server accept them all; nothing to wait on from here
    for s in flood:
        s.settimeout(0.01)
        try:
            if s.recv(1) == b"":
                closed_at_once += 1
        except socket.timeout:
            pass
        except ConnectionResetError:
            closed_at_once += 1
    assert closed_at_once >= 90, f"only {closed_at_once} of the excess connections were closed"
    assert p.fd_count() <= fds_before + ADMIN_MAX_CONNECTIONS + 20, "admin server holds too many fds"
    # Data path unaffected meanwhile: a fresh echo round while the flood holds.
    s = connect(p.addr("main"))
    s.sendall(b"still here")
    assert recv_exact(s, 10) == b"still here"
    s.close()
    for s in flood:
        s.close()
    deadline = time.monotonic() + 5
    while True:
        try:
            if api.get("/healthz", timeout=2).status == 200:
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, "admin API did not recover after the flood"
        time.sleep(0.05)  # polled: the server frees slots as it sees the closes
    p.wait_fds_at_most(fds_before + 2, timeout=5)
    alive(p, api)


# --------------------------------------------------------------------------------------------
# hostile config files: tcpfault --check


def _check(path: Path, timeout: float = 30) -> tuple[int, str, float, int]:
    """Runs `tcpfault --check -c path`; returns (exit code, output, seconds, max RSS KiB).
    The peak RSS comes from GNU time when installed; otherwise from polling VmHWM (the
    child's own rusage would include the pre-exec copy of this Python process)."""
    time_bin = "/usr/bin/time"
    use_time = os.access(time_bin, os.X_OK)
    rss_file = path.with_suffix(".rss")
    argv = [str(BIN), "--check", "-c", str(path)]
    if use_time:
        argv = [time_bin, "-f", "%M", "-o", str(rss_file)] + argv
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    out_chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: out_chunks.append(proc.stdout.read()), daemon=True)
    reader.start()
    hwm = 0
    while proc.poll() is None:
        if time.monotonic() - t0 > timeout:
            proc.kill()
            proc.wait()
            raise AssertionError(f"tcpfault --check {path.name} still running after {timeout}s")
        if not use_time:
            try:
                with open(f"/proc/{proc.pid}/status") as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            hwm = max(hwm, int(line.split()[1]))
            except (OSError, ValueError):
                pass
        time.sleep(0.002)  # polling the child: its exit and (without GNU time) its peak RSS
    seconds = time.monotonic() - t0
    reader.join(5)
    proc.stdout.close()
    out = b"".join(out_chunks).decode("utf-8", "replace")
    if use_time:
        hwm = int(rss_file.read_text().strip().splitlines()[-1])
        # GNU time reports a non-zero exit as a first line "Command exited with ...".
    return proc.returncode, out, seconds, hwm


def _proxy_head() -> str:
    return "proxies:\n  - name: p\n    listen: 127.0.0.1:0\n    upstream: 127.0.0.1:9\n"


def _cfg_laughs_top() -> bytes:
    lines = ["a0: &a0 [" + ", ".join(["x"] * 10) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
    return ("\n".join(lines) + "\n" + _proxy_head()).encode()


def _cfg_laughs_proxies() -> bytes:
    """Aliases where the loader walks them: 5000 copies of a proxy with 200 copies of a rule
    carrying a 1000-character regex (a million regex compilations if nothing bounded it)."""
    rx = "^(" + "|".join(f"C{i:03d}" for i in range(199)) + ")"
    rules = "[&r {name: r0, when: {line: '" + rx[:1000] + "'}, fault: {type: reset}}" + \
            ", *r" * 200 + "]"
    return ("proxies:\n  - &p {name: a, listen: '127.0.0.1:0', upstream: 'h:1', rules: " +
            rules + "}\n" + "  - *p\n" * 5000).encode()


def _cfg_laughs_clients() -> bytes:
    inner = "&l0 [" + ", ".join(["10.0.0.0/8"] * 10) + "]"
    for i in range(1, 9):
        inner = f"&l{i} [{inner}" + f", *l{i - 1}" * 9 + "]"
    return (_proxy_head() + "    rules:\n      - name: r\n        match: {clients: " + inner +
            "}\n        fault: {type: reset}\n").encode()


CONFIGS = [
    # (id, file content, a substring the diagnostics must contain)
    ("billion-laughs-unused", _cfg_laughs_top, "unknown key"),
    ("billion-laughs-in-proxies", _cfg_laughs_proxies, "duplicate"),
    ("billion-laughs-in-clients", _cfg_laughs_clients, "clients"),
    ("deep-flow-seq", lambda: b"proxies: " + b"[" * 100_000 + b"]" * 100_000 + b"\n",
     "invalid YAML"),
    ("deep-flow-map", lambda: b"proxies: " + b"{a: " * 50_000 + b"1" + b"}" * 50_000 + b"\n",
     "invalid YAML"),
    pytest.param("deep-unclosed", lambda: b"[" * 1_000_000, "invalid YAML", id="deep-unclosed"),
    ("deep-block-seq", lambda: b"- " * 100_000 + b"x\n", "invalid YAML"),
    ("deep-block-map", lambda: "".join(" " * i + f"k{i}:\n" for i in range(2500)).encode(),
     "invalid YAML"),
    ("over-4MiB", lambda: b"# " + b"x" * (5 * MiB) + b"\n", "too large"),
    ("invalid-utf8", lambda: _proxy_head().replace("name: p", 'name: "\xff"').encode("latin-1"),
     "name"),
    ("nul-bytes", lambda: _proxy_head().encode() + b"\x00" * 100, "invalid YAML"),
    ("binary", lambda: bytes(random.Random(5).randbytes(64 * KiB)), "environment variable"),
    ("binary-no-dollar", lambda: bytes(random.Random(5).randbytes(64 * KiB)).replace(b"$", b""),
     ""),
    ("many-errors", lambda: ("proxies:\n" + "".join(
        f"  - {{name: p{i}, listen: 'x', upstream: '${{NOPE{i}}}'}}\n"
        for i in range(40_000))).encode(), "too many errors"),
    ("many-unset-vars", lambda: ("x: " + "${U}" * 200_000 + "\n").encode(), "not set"),
    ("huge-regex", lambda: (_proxy_head() + "    rules:\n      - name: r\n        when: {line: '" +
                            "a" * 100_000 + "'}\n        fault: {type: reset}\n").encode(),
     "too long"),
    ("two-documents", lambda: _proxy_head().encode() + b"---\n" + _proxy_head().encode(),
     "expected one YAML document"),
    ("many-documents", lambda: b"---\n" * 1_000_000, "expected one YAML document"),
    ("stray-comma", lambda: b",", "invalid YAML"),
    ("comma-after-config", lambda: _proxy_head().encode() + b",\n", "invalid YAML"),
    ("size-overflow", lambda: (_proxy_head() + "    rules:\n      - name: r\n        when: "
                               "{after_bytes: 309485009821345068724782.056TiB}\n        fault: "
                               "{type: reset}\n").encode(), "too large"),
]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name,make,expect", [
    c if isinstance(c, type(pytest.param(None))) else pytest.param(*c, id=c[0]) for c in CONFIGS])
def test_check_rejects_hostile_config_in_bounded_time_and_memory(tmp_path, name, make, expect):
    path = tmp_path / f"{name}.yaml"
    path.write_bytes(make())
    rc, out, seconds, rss_kib = _check(path)
    assert rc == 2, f"exit code {rc} (expected 2); output:\n{out[:2000]}"
    assert seconds < 5, f"--check took {seconds:.2f}s"
    assert rss_kib < 200 * 1024, f"--check used {rss_kib / 1024:.0f} MiB"
    first = out.splitlines()[0] if out else ""
    assert first.startswith(f"{path}:") or first.startswith(f"{path.name}:"), \
        f"first line is not a FILE:LINE:COL diagnostic: {first[:300]!r}"
    assert expect in out, f"expected {expect!r} in the diagnostics:\n{out[:2000]}"
    assert len(out) < 64 * KiB, f"{len(out)} bytes of diagnostics"
