"""The admin surface under hostile and careless clients (issue 12), on real sockets:

- bounded work and connection limits: 20,000 pipelined requests whose responses are never
  read (on both HTTP APIs), 300 slowloris connections and 10,000 idle connections at once do
  not slow a well-behaved client's /healthz past 50 ms, fail none of its calls, and leave the
  proxy's memory and descriptors bounded; the per-address and global limits evict the
  connections the header says;
- browser protections: a cross-site POST (text/plain, form, body-less) is refused and changes
  nothing; a loopback-bound API refuses a foreign Host (DNS rebinding), on the Toxiproxy API
  too; a non-loopback admin API without a token warns at start;
- a value of 70,000 characters is quoted short in diagnostics (--check and API errors).

The attackers run in a separate process (admin_attack.py) from their own loopback addresses
(Linux routes all of 127.0.0.0/8 to lo), the well-behaved client here from 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import select
import socket
import subprocess
import sys
import threading
import time

import pytest

from admin_helpers import Admin, admin_port, admin_yaml, raw_http, response_json
from helpers import BIN, HERE, LOOPBACK, connect, parse_addr, raise_nofile_limit, recv_exact

MiB_KIB = 1024
PER_CLIENT = 64  # HttpServer::Limits::max_connections_per_client
MAX_CONNECTIONS = 256  # HttpServer::Limits::max_connections


def toxiproxy_port(p, timeout: float = 10.0) -> int:
    rec = p.wait_for_log("toxiproxy api listening", timeout=timeout)[0]
    return parse_addr(rec["addr"])[1]


def healthz(port: int, timeout: float = 2.0, path: bytes = b"/healthz") -> float:
    """One GET on a new connection, as curl does; returns the seconds until the server's
    close. Raises on anything but a complete 200."""
    t0 = time.perf_counter()
    s = socket.create_connection((LOOPBACK, port), timeout=timeout)
    try:
        s.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        buf = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
    finally:
        s.close()
    took = time.perf_counter() - t0
    assert buf.startswith(b"HTTP/1.1 200 "), buf[:200]
    return took


def connect_from(source: str, port: int, timeout: float = 5.0) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.bind((source, 0))
    s.connect((LOOPBACK, port))
    return s


def ask(s: socket.socket, path: bytes = b"/healthz") -> bytes:
    """A keep-alive GET on an open connection; the raw response (Content-Length framed)."""
    s.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: localhost\r\n\r\n")
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        assert chunk, f"closed before the response: {buf!r}"
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    n = int(re.search(rb"(?im)^content-length:\s*(\d+)", head).group(1))
    if len(body) < n:
        body += recv_exact(s, n - len(body), timeout=5)
    return head + b"\r\n\r\n" + body


def closed_by_server(socks: list[socket.socket], expect: int, timeout: float = 5.0
                     ) -> set[int]:
    """Indexes of the sockets the server closed, waiting until at least `expect` are."""
    closed: set[int] = set()
    deadline = time.monotonic() + timeout
    while len(closed) < expect and time.monotonic() < deadline:
        live = [s for i, s in enumerate(socks) if i not in closed]
        ready, _, _ = select.select(live, [], [], max(0.0, deadline - time.monotonic()))
        for s in ready:
            try:
                data = s.recv(4096)
            except (ConnectionResetError, socket.timeout):
                data = b""
            if not data:
                closed.add(socks.index(s))
    return closed


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def is_asan_build(pid: int) -> bool:
    with open(f"/proc/{pid}/maps") as f:
        return "libasan" in f.read()


def vm_hwm_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1))


# --------------------------------------------------------------------------------------------
# bounded work and connection limits


@pytest.mark.timeout(180)
def test_hostile_clients_do_not_starve_a_well_behaved_one(tcpfault, servers):
    limit = raise_nofile_limit()  # tcpfault and the attacker inherit it
    if limit < 12000:
        pytest.skip(f"needs 12000 file descriptors (RLIMIT_NOFILE hard limit is {limit})")
    echo = servers.selector_echo()
    p = tcpfault.from_config(admin_yaml([{"name": "main", "upstream": echo.addr}],
                                        top_extra="toxiproxy: {listen: 127.0.0.1:0}"))
    port = admin_port(p)
    tport = toxiproxy_port(p)
    api = Admin(port)
    # The same probes before the attack, for comparison: this machine's own noise.
    baseline = []
    for _ in range(50):
        baseline.append(healthz(port))
        time.sleep(0.02)  # pacing, as below
    rss_before = p.rss_kib()
    fds_before = p.fd_count()
    cpu0, wall0 = cpu_seconds(p.pid), time.monotonic()

    attack = {"admin": port, "toxiproxy": tport, "pipelined": 20000, "slowloris": 300,
              "idle": 10000, "idle_sources": 40, "seconds": 90}
    attacker = subprocess.Popen([sys.executable, str(HERE / "admin_attack.py"),
                                 json.dumps(attack)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    reports: list[dict] = []
    reader = threading.Thread(
        target=lambda: [reports.append(json.loads(line)) for line in attacker.stdout],
        daemon=True)
    reader.start()

    latencies: list[float] = []
    toxi_latencies: list[float] = []
    failures: list[str] = []
    calls = 0
    try:
        # Probe while the attack ramps up and for 4 s after the last idle connection was
        # attempted (the slowloris and the pipeliners keep going all along).
        ramped_at = None
        started = time.monotonic()
        while ramped_at is None or time.monotonic() - ramped_at < 4.0:
            assert time.monotonic() - started < 60, f"attacker never ramped up: {reports}"
            assert attacker.poll() is None, f"attacker exited: {reports}"
            if ramped_at is None and any(r.get("ramped") for r in reports):
                ramped_at = time.monotonic()
            calls += 1
            try:
                latencies.append(healthz(port))
                if calls % 4 == 0:
                    toxi_latencies.append(healthz(tport, path=b"/version"))
                if calls % 10 == 0:  # a state change and back, with the usual client
                    rule = {"name": f"r{calls}", "fault": {"type": "latency", "delay": "1ms"}}
                    r = api.post("/api/proxies/main/rules", rule)
                    assert r.status == 201, r
                    r = api.delete(f"/api/proxies/main/rules/r{calls}")
                    assert r.status == 200, r
                if calls % 10 == 5:  # and the data path
                    with connect(p.addr("main")) as s:
                        s.sendall(b"x" * 65536)
                        assert recv_exact(s, 65536, timeout=5) == b"x" * 65536
            except (OSError, AssertionError) as e:
                failures.append(f"call {calls}: {type(e).__name__}: {e}")
            time.sleep(0.02)  # pacing the well-behaved client, not synchronisation
        rss_during = p.rss_kib()
        cpu1, wall1 = cpu_seconds(p.pid), time.monotonic()
        fds_during = p.fd_count()
    finally:
        attacker.stdin.close()
        attacker.wait(30)
        reader.join(5)
    done = next((r for r in reports if r.get("done")), {})
    hwm = vm_hwm_kib(p.pid)

    def ms(xs: list[float], q: float) -> float:
        if not xs:
            return float("inf")
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000

    summary = (f"/healthz under attack, {len(latencies)} probes: median {ms(latencies, .5):.1f} "
               f"ms, p95 {ms(latencies, .95):.1f} ms, max {ms(latencies, 1):.1f} ms (before the "
               f"attack: median {ms(baseline, .5):.1f}, p95 {ms(baseline, .95):.1f}, max "
               f"{ms(baseline, 1):.1f}); Toxiproxy /version p95 {ms(toxi_latencies, .95):.1f} ms, "
               f"max {ms(toxi_latencies, 1):.1f} ms; RSS {rss_before} -> {rss_during} KiB (peak "
               f"{hwm}); fds {fds_before} -> {fds_during}; tcpfault CPU {cpu1 - cpu0:.1f} s in "
               f"{wall1 - wall0:.1f} s; attacker {done}")
    print(summary)
    assert not failures, f"{len(failures)} failed calls:\n" + "\n".join(failures[:20])
    # The attack was real: everything was sent, connected, and the server had to evict.
    assert done.get("pipelined_sent") == 2 * 20000 * len(
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"), summary
    assert done.get("idle_connected", 0) >= 9900, summary
    assert done.get("idle_closed_by_server", 0) >= 9000, summary
    assert done.get("slowloris_reopened", 0) >= 100, summary
    assert p.find_logs("HTTP API connection limit reached: closing idle and slow connections "
                       "to admit new ones"), "no eviction warning"
    # Under 50 ms, allowing for a shared 2-core machine's scheduling noise (a probe without
    # any attack can take 60 ms there): 95 % of the probes, and none near the stall.
    # An ASan build is several times slower and keeps freed memory in its quarantine (256 MiB
    # by default): there the bounds are looser; the point of that pass is memory safety.
    asan = is_asan_build(p.pid)
    p95_ms, max_ms, slack_mib = (500, 3000, 32 + 256) if asan else (50, 500, 32)
    assert ms(latencies, .95) < p95_ms and ms(latencies, 1) < max_ms, summary
    assert ms(toxi_latencies, .95) < p95_ms and ms(toxi_latencies, 1) < max_ms, summary
    assert rss_during - rss_before < slack_mib * MiB_KIB, summary
    assert hwm - rss_before < (slack_mib + 16) * MiB_KIB, summary
    # Both APIs hold at most their limits (admin 256, Toxiproxy: the 2 pipeliners + probes).
    assert fds_during <= fds_before + MAX_CONNECTIONS + 16, summary

    # Afterwards (the attacker's sockets closed with its process): every connection is
    # released, and the API answers as before.
    p.wait_fds_at_most(fds_before, timeout=10)
    assert healthz(port) < max_ms / 1000
    assert api.get("/api/proxies").status == 200


@pytest.mark.timeout(60)
def test_one_address_holds_at_most_64_and_gives_up_its_oldest(tcpfault, servers):
    echo = servers.echo()
    p = tcpfault.from_config(admin_yaml([{"name": "main", "upstream": echo.addr}]))
    port = admin_port(p)
    crowd = []
    try:
        for _ in range(PER_CLIENT):
            crowd.append(connect_from("127.0.0.5", port))
        # Make the first ten answered, idle keep-alive connections: they go first, oldest
        # first, before connections that have not sent anything yet.
        for s in crowd[:10]:
            assert ask(s).startswith(b"HTTP/1.1 200 ")
        late = [connect_from("127.0.0.5", port) for _ in range(6)]
        for s in late:  # each one answered: it was admitted, so its victim is gone
            assert ask(s).startswith(b"HTTP/1.1 200 ")
        crowd += late
        closed = closed_by_server(crowd, 6)
        assert closed == set(range(6)), f"closed: {sorted(closed)}"
        # The 64 others are all still served; another address is not affected at all.
        for i, s in enumerate(crowd):
            if i not in closed:
                assert ask(s).startswith(b"HTTP/1.1 200 "), i
        assert healthz(port) < 0.5
    finally:
        for s in crowd:
            s.close()


@pytest.mark.timeout(60)
def test_over_256_the_busiest_address_gives_way(tcpfault, servers):
    raise_nofile_limit()
    echo = servers.echo()
    p = tcpfault.from_config(admin_yaml([{"name": "main", "upstream": echo.addr}]))
    port = admin_port(p)
    held: list[socket.socket] = []
    groups = ["127.0.0.11", "127.0.0.12", "127.0.0.13", "127.0.0.14"]
    try:
        for g in groups:  # 4 x 64 = 256: full
            for _ in range(PER_CLIENT):
                held.append(connect_from(g, port))
        for s in held:  # all admitted, all answered: none was evicted yet
            assert ask(s).startswith(b"HTTP/1.1 200 ")
        # Ten from another address: each takes the place of one from the busiest address.
        newcomers = [connect_from("127.0.0.20", port) for _ in range(10)]
        for s in newcomers:
            assert ask(s).startswith(b"HTTP/1.1 200 ")
        closed = closed_by_server(held, 10)
        assert len(closed) == 10, f"closed: {sorted(closed)}"
        per_group = [sum(1 for i in closed if i // PER_CLIENT == k) for k in range(4)]
        # The busiest address gives way each time, so the losses spread 3-3-2-2 or so.
        assert max(per_group) - min(per_group) <= 1, per_group
        # Longest-idle first within each address.
        for k in range(4):
            lost = sorted(i for i in closed if i // PER_CLIENT == k)
            assert lost == list(range(k * PER_CLIENT, k * PER_CLIENT + len(lost))), lost
        # The rest, and the newcomers, are served.
        for i, s in enumerate(held):
            if i not in closed:
                assert ask(s).startswith(b"HTTP/1.1 200 "), i
        for s in newcomers:
            assert ask(s).startswith(b"HTTP/1.1 200 ")
        assert p.fd_count() < MAX_CONNECTIONS + 40
    finally:
        for s in held:
            s.close()


# --------------------------------------------------------------------------------------------
# browser protections

CHROME_UA = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
             "Chrome/120.0.0.0 Safari/537.36")


def browser_post(port: int, path: str, body: bytes, headers: dict) -> tuple[int, bytes]:
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n"
    for k, v in headers.items():
        head += f"{k}: {v}\r\n"
    head += f"Content-Length: {len(body)}\r\n\r\n"
    return raw_http(port, head.encode() + body)


@pytest.mark.timeout(60)
def test_cross_site_browser_requests_are_refused_and_change_nothing(tcpfault, servers):
    echo = servers.echo()
    p = tcpfault.from_config(admin_yaml([{
        "name": "main", "upstream": echo.addr,
        "rules": ["{name: off, enabled: false, fault: {type: reset}}"]}]))
    port = admin_port(p)
    api = Admin(port)
    rule = json.dumps({"name": "csrf", "fault": {"type": "reset", "to": "client"}}).encode()

    def rules() -> dict:
        return {r["name"]: r["enabled"] for r in api.proxy("main")["rules"]}

    # The attack of issue 12: a page on another site posts a reset rule as text/plain, which
    # a browser sends without asking the server first. What Chrome sends for
    # fetch(url, {method: "POST", mode: "no-cors", body}):
    status, raw = browser_post(port, "/api/proxies/main/rules", rule, {
        "Origin": "http://evil.example:8000", "Sec-Fetch-Site": "cross-site",
        "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "empty", "User-Agent": CHROME_UA,
        "Content-Type": "text/plain;charset=UTF-8"})
    assert status == 403, raw[:400]
    assert "Sec-Fetch-Site: cross-site" in response_json(raw)["error"]
    # A form with enctype=text/plain from a browser without Sec-Fetch-* headers.
    status, raw = browser_post(port, "/api/proxies/main/rules", rule, {
        "Origin": "http://evil.example", "User-Agent": CHROME_UA, "Content-Type": "text/plain"})
    assert status == 403, raw[:400]
    assert 'Origin "http://evil.example" does not match Host' in response_json(raw)["error"]
    # Without Origin either (stripped by a proxy or an extension): the type gives it away.
    for ctype in ("text/plain", "application/x-www-form-urlencoded",
                  "multipart/form-data; boundary=x"):
        status, raw = browser_post(port, "/api/proxies/main/rules", rule,
                                   {"Content-Type": ctype})
        assert status == 415, raw[:400]
        assert "application/json or application/yaml" in response_json(raw)["error"]
    # A body-less cross-site POST: a form posting to .../enable.
    status, raw = browser_post(port, "/api/proxies/main/rules/off/enable", b"", {
        "Origin": "null", "Content-Type": "application/x-www-form-urlencoded"})
    assert status == 403, raw[:400]
    status, raw = browser_post(port, "/api/proxies/main/rules/off/enable", b"", {
        "Origin": "http://localhost:3000", "Sec-Fetch-Site": "same-site"})
    assert status == 403, raw[:400]
    status, raw = browser_post(port, "/api/proxies/main/restart", b"", {
        "Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"})
    assert status == 403, raw[:400]
    assert rules() == {"off": False}, "a refused request changed the rules"
    assert p.find_logs("admin API refused a request"), "refusals are not logged"

    # The same calls from curl or a client library go through.
    status, raw = browser_post(port, "/api/proxies/main/rules", rule,
                               {"Content-Type": "application/json"})
    assert status == 201, raw[:400]
    status, raw = browser_post(port, "/api/proxies/main/rules/off/enable", b"", {})
    assert status == 200, raw[:400]
    assert rules() == {"off": True, "csrf": True}


@pytest.mark.timeout(60)
def test_loopback_apis_refuse_a_foreign_host(tcpfault, servers):
    echo = servers.echo()
    p = tcpfault.from_config(admin_yaml([{"name": "main", "upstream": echo.addr}],
                                        top_extra="toxiproxy: {listen: 127.0.0.1:0}"))
    port = admin_port(p)
    tport = toxiproxy_port(p)
    api = Admin(port)

    def raw(prt: int, method: str, path: str, host: str, extra: str = "",
            body: bytes = b"") -> tuple[int, bytes]:
        head = (f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{extra}"
                f"Content-Length: {len(body)}\r\n\r\n")
        return raw_http(prt, head.encode() + body)

    # DNS rebinding: a page on rebind.example, whose name now points at 127.0.0.1, is
    # same-origin with the API as far as the browser knows; only the Host gives it away.
    for method, path in (("GET", "/api/proxies"), ("GET", "/metrics"), ("GET", "/healthz")):
        status, data = raw(port, method, path, f"rebind.example:{port}")
        assert status == 403, data[:300]
        assert "DNS rebinding" in response_json(data)["error"]
    rule = b'{"name": "rebound", "fault": {"type": "reset"}}'
    status, data = raw(port, "POST", "/api/proxies/main/rules", f"rebind.example:{port}",
                       f"Origin: http://rebind.example:{port}\r\nSec-Fetch-Site: same-origin\r\n"
                       "Content-Type: application/json\r\n", rule)
    assert status == 403, data[:300]
    assert api.proxy("main")["rules"] == []
    # The names a local client uses all pass.
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "localhost",
                 f"tcpfault.localhost:{port}"):
        status, data = raw(port, "GET", "/healthz", host)
        assert status == 200, (host, data[:300])

    # The Toxiproxy API on 127.0.0.1 too, with Toxiproxy's error shape.
    status, data = raw(tport, "GET", "/proxies", f"rebind.example:{tport}")
    assert status == 403, data[:300]
    err = response_json(data)
    assert err["status"] == 403 and "DNS rebinding" in err["error"], err
    relay = b'{"name": "relay", "listen": "127.0.0.1:0", "upstream": "169.254.169.254:80"}'
    status, data = raw(tport, "POST", "/proxies", f"localhost:{tport}",
                       "Origin: http://evil.example\r\nSec-Fetch-Site: cross-site\r\n"
                       "Content-Type: text/plain\r\n", relay)
    assert status == 403, data[:300]
    status, data = raw(tport, "GET", "/proxies", f"localhost:{tport}")
    assert status == 200 and "relay" not in response_json(data), data[:300]
    # Toxiproxy's own documentation posts with curl -d (a form type): still accepted there.
    ok = b'{"name": "plain", "listen": "127.0.0.1:0", "upstream": "' + \
        f"{echo.addr}".encode() + b'"}'
    status, data = raw(tport, "POST", "/proxies", f"localhost:{tport}",
                       "Content-Type: application/x-www-form-urlencoded\r\n", ok)
    assert status == 201, data[:300]


def _admin_on_any_address(tcpfault, token=None):
    p = tcpfault.from_config(
        admin_yaml([{"name": "main", "upstream": "127.0.0.1:9"}], token=token)
        .replace("listen: 127.0.0.1:0\n", "listen: 0.0.0.0:0\n", 1))
    rec = p.wait_for_log("admin listening")[0]
    host, port = parse_addr(rec["addr"])
    assert host == "0.0.0.0", rec
    return p, port


SECURITY_WARNING = ("SECURITY: the admin API is reachable from other hosts and has no token")


@pytest.mark.timeout(30)
def test_an_exposed_admin_api_without_a_token_warns_at_start(tcpfault):
    p, port = _admin_on_any_address(tcpfault)
    p.wait_for_log("started")
    warns = [r for r in p.records if str(r.get("msg", "")).startswith(SECURITY_WARNING)]
    assert len(warns) == 1 and warns[0]["level"] == "warn", p.stderr_text()[-2000:]
    assert "admin.token" in warns[0]["msg"] and warns[0]["addr"] == f"0.0.0.0:{port}"
    # Not bound to loopback: the API cannot know its names, so any Host is served ...
    status, data = raw_http(port, b"GET /healthz HTTP/1.1\r\nHost: tcpfault.internal:9474\r\n"
                                  b"Connection: close\r\n\r\n")
    assert status == 200, data[:300]
    # ... and the browser rules still hold.
    status, data = raw_http(port, b"POST /api/reload HTTP/1.1\r\nHost: tcpfault.internal\r\n"
                                  b"Origin: http://evil.example\r\nConnection: close\r\n"
                                  b"Content-Length: 0\r\n\r\n")
    assert status == 403, data[:300]

    # With a token, or on loopback: no warning.
    q, _ = _admin_on_any_address(tcpfault, token="s3cret")
    q.wait_for_log("started")
    assert not [r for r in q.records if str(r.get("msg", "")).startswith(SECURITY_WARNING)]
    r = tcpfault.from_config(admin_yaml([{"name": "main", "upstream": "127.0.0.1:9"}]))
    r.wait_for_log("started")
    assert not [x for x in r.records if str(x.get("msg", "")).startswith(SECURITY_WARNING)]


# --------------------------------------------------------------------------------------------
# diagnostics


@pytest.mark.timeout(60)
def test_a_70000_character_value_is_quoted_short(tcpfault, servers, tmp_path):
    big = "9" * 70000
    cfg = tmp_path / "big.yaml"
    cfg.write_text("proxies:\n  - name: p\n    listen: 127.0.0.1:0\n    upstream: 127.0.0.1:9\n"
                   f"    rules:\n      - name: r\n        fault: {{type: latency, delay: {big}x}}\n")
    out = subprocess.run([str(BIN), "--check", "-c", str(cfg)], capture_output=True, timeout=30)
    text = (out.stdout + out.stderr).decode()
    assert out.returncode == 2, text[:500]
    assert "fault.delay: expected a duration" in text and "(70001 bytes)" in text, text[:500]
    longest = max(len(line) for line in text.splitlines())
    assert longest < 300, f"a diagnostic line of {longest} characters"

    # The same message in an API error.
    echo = servers.echo()
    p = tcpfault.from_config(admin_yaml([{"name": "main", "upstream": echo.addr}]))
    api = Admin(admin_port(p))
    r = api.post("/api/proxies/main/rules", {"name": "r", "fault": {"type": "latency",
                                                                     "delay": big + "x"}})
    assert r.status == 400, r
    assert len(r.body) < 400 and "(70001 bytes)" in r.json()["error"], r
