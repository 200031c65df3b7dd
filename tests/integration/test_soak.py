"""Soak under faults: thousands of echo connections of random sizes through one proxy while
its fault rules (reset, close, stall, latency, slice, idle, cap, restart) are switched on and
off over the admin API and the proxy is restarted through the API.

Bounded and loopback-only: SOAK_SECONDS (default 45) is the whole run; SOAK_CONNECTIONS
(default 2000) clients, up to ~500 at once, driven by one selector loop (not a thread each).
SOAK_SEED picks the sizes and pauses; SOAK_REPORT=path also writes the figures as JSON.

Checked:
- the proxy never crashes (and stops cleanly on SIGTERM at teardown, conftest);
- every connection ends: by EOF, by RST, by ECONNREFUSED during a restart's downtime, or by
  the client's own deadline, and a deadline is only accepted where the proxy reports the
  connection under the `stall-forever` rule (a stall without end is what that rule is);
- every byte a client receives is the matching byte of what it sent (the upstream echoes),
  i.e. what arrives is always a correct prefix: 0 bytes corrupted;
- afterwards the proxy's open descriptors return to their baseline (+2), its RSS to within
  RSS_SLACK_MIB of the baseline, and tcpfault_connections_active to 0.
The figures (connections, outcomes, bytes, faults per rule from /metrics, fd/RSS before and
after) are printed at the end of the test.
"""

from __future__ import annotations

import errno
import json
import os
import random
import selectors
import socket
import threading
import time
from typing import Optional

import pytest

from admin_helpers import Admin, admin_port, admin_yaml
from helpers import KiB, MiB, connect, raise_nofile_limit, recv_exact

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "45"))
TOTAL = int(os.environ.get("SOAK_CONNECTIONS", "2000"))
SEED = int(os.environ.get("SOAK_SEED", "1234"))
MAX_CONCURRENT = 500
CLIENT_DEADLINE = 15.0  # a connection still open this long after connecting "timed out"
MAX_PAYLOAD = 256 * KiB
DRAIN = CLIENT_DEADLINE + 2  # launches stop this long before the end
# Allowed RSS growth over the baseline after the load: allocator retention after ~500
# concurrent connections (measured +2 MiB); an ASan build keeps freed memory in its
# quarantine (256 MiB by default; measured +42 MiB), so it gets that much more.
RSS_SLACK_MIB = 64
RSS_SLACK_ASAN_MIB = 64 + 256
CAP_MAX = 150

# Every rule starts disabled; the toggler switches them. `existing` stays at its default
# (true), so a rule switched on also hits the connections already open.
RULES = {
    "reset": "{name: reset, enabled: false, match: {probability: 0.3}, "
             "when: {direction: downstream, after_bytes: 16KiB}, fault: {type: reset, to: both}}",
    "close": "{name: close, enabled: false, match: {probability: 0.3}, "
             "when: {direction: downstream, after_bytes: 4KiB}, "
             "fault: {type: close, to: client, then: reset}}",
    "stall": "{name: stall, enabled: false, match: {probability: 0.3}, when: {after_bytes: 1KiB}, "
             "fault: {type: stall, direction: both, duration: 1500ms, mode: hold, then: resume}}",
    "stall-forever": "{name: stall-forever, enabled: false, match: {probability: 0.05}, "
                     "fault: {type: stall, direction: downstream, mode: drop}}",
    "latency": "{name: latency, enabled: false, "
               "fault: {type: latency, delay: 20ms, jitter: 20ms, direction: both}}",
    "slice": "{name: slice, enabled: false, match: {probability: 0.5}, "
             "fault: {type: slice, size: 1-4KiB, direction: downstream}}",
    "idle": "{name: idle, enabled: false, fault: {type: idle, timeout: 400ms, action: reset}}",
    "cap": f"{{name: cap, enabled: false, fault: {{type: cap, max: {CAP_MAX}, over: reset}}}}",
    "restart": "{name: restart, enabled: false, fault: {type: restart, downtime: 200ms}}",
}


# --------------------------------------------------------------------------------------------
# the admin-API toggler


class Toggler:
    """Walks the rules on a fixed rota (each on for 3 steps, ~3 on at a time) and restarts the
    proxy over the API every few steps. In the last third of the run nothing restarts the
    proxy, so connections under `stall-forever` stay stalled until their clients give up.
    Holds `lock` during each call, so the client driver can look at the proxy's connection
    list without a restart racing it."""

    def __init__(self, api: Admin, step: float, steps: int, on_cap_enabled):
        self.api = api
        self.step = step
        self.quiet_from = 2 * steps // 3
        self.on_cap_enabled = on_cap_enabled
        self.lock = threading.Lock()
        self.calls = 0
        self.api_restarts = 0
        self.errors: list[str] = []
        self.enabled: set[str] = set()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True, name="toggler")

    def call(self, method: str, path: str, body=None) -> None:
        with self.lock:
            try:
                r = self.api.request(method, path, body=body, timeout=10)
                ok = r.status == 200
                detail = repr(r)
            except OSError as e:
                ok, detail = False, f"{type(e).__name__}: {e}"
        self.calls += 1
        if not ok:
            self.errors.append(f"{method} {path}: {detail}")

    def switch(self, rule: str, on: bool) -> None:
        if not on and rule not in self.enabled:
            return
        self.call("POST", f"/api/proxies/main/rules/{rule}/{'enable' if on else 'disable'}")
        (self.enabled.add if on else self.enabled.discard)(rule)
        if on and rule == "cap":
            self.on_cap_enabled()

    def _run(self) -> None:
        names = list(RULES)
        k = 0
        while not self._stop.wait(self.step):
            late = k >= self.quiet_from
            if not (late and names[k % len(names)] == "restart"):
                self.switch(names[k % len(names)], True)
            if k >= 3:
                self.switch(names[(k - 3) % len(names)], False)
            if k % 5 == 4 and not late:
                body = {"downtime": "100ms"} if k % 10 == 9 else None
                self.call("POST", "/api/proxies/main/restart", body)
                self.api_restarts += 1
            k += 1

    def start(self) -> None:
        self._t.start()

    def stop(self) -> None:
        self._stop.set()
        self._t.join(15)
        assert not self._t.is_alive(), "toggler stuck on an admin API call"
        for rule in list(self.enabled):
            self.switch(rule, False)


# --------------------------------------------------------------------------------------------
# the client driver


class Conn:
    __slots__ = ("sock", "off", "size", "sent", "recvd", "pause_at", "pause_for", "resume_at",
                 "started", "connected", "shut", "send_failed", "port", "mask")

    def __init__(self, sock, off, size, pause_at, pause_for, now):
        self.sock = sock
        self.off = off  # payload = POOL[off : off + size]
        self.size = size
        self.sent = 0
        self.recvd = 0
        self.pause_at = pause_at  # pause once after sending this many bytes (None: never)
        self.pause_for = pause_for
        self.resume_at = 0.0
        self.started = now
        self.connected = False
        self.shut = False
        self.send_failed = False
        self.port = 0
        self.mask = 0


class Driver:
    """One selector loop for every client. Payloads are slices of a random pool, so the check
    of each received chunk is one memoryview comparison."""

    def __init__(self, addr, api: Admin, toggler: Toggler, rng: random.Random):
        self.addr = addr
        self.api = api
        self.toggler = toggler
        self.rng = rng
        self.pool = memoryview(rng.randbytes(MAX_PAYLOAD * 4))
        self.sel = selectors.DefaultSelector()
        self.conns: dict[int, Conn] = {}
        self.launched = 0
        self.burst = 0
        self.outcomes: dict[str, int] = {}
        self.corrupt: list[str] = []
        self.hangs: list[str] = []
        self.timeouts_attributed = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self.max_concurrent = 0
        self.lifetimes: list[float] = []

    # -- launching

    def request_burst(self, n: int) -> None:
        self.burst += n

    def launch(self, now: float) -> None:
        r = self.rng
        size = 0 if r.random() < 0.1 else min(MAX_PAYLOAD, int(2 ** r.uniform(0, 18)))
        off = r.randrange(0, len(self.pool) - size + 1)
        pause_at = pause_for = None
        if size and r.random() < 0.25:  # a client that stops to think mid-stream
            pause_at, pause_for = r.randrange(0, size), r.uniform(0.3, 1.2)
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        c = Conn(s, off, size, pause_at, pause_for, now)
        self.launched += 1
        err = s.connect_ex(self.addr)
        if err not in (0, errno.EINPROGRESS):
            self.finish(c, "refused" if err == errno.ECONNREFUSED else errno.errorcode[err], now,
                        registered=False)
            return
        self.conns[s.fileno()] = c
        c.mask = selectors.EVENT_WRITE
        self.sel.register(s, c.mask, c)
        self.max_concurrent = max(self.max_concurrent, len(self.conns))

    # -- ending

    def finish(self, c: Conn, outcome: str, now: float, registered: bool = True) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        self.lifetimes.append(now - c.started)
        if registered:
            self.sel.unregister(c.sock)
            del self.conns[c.sock.fileno()]
        c.sock.close()

    def on_readable(self, c: Conn, now: float) -> None:
        try:
            data = c.sock.recv(65536)
        except ConnectionResetError:
            return self.finish(c, "reset", now)
        except BlockingIOError:
            return
        except OSError as e:
            return self.finish(c, errno.errorcode.get(e.errno, str(e)), now)
        if not data:
            complete = c.recvd == c.size and c.sent == c.size
            return self.finish(c, "complete" if complete else "eof_early", now)
        n = len(data)
        if c.recvd + n > c.sent:
            self.corrupt.append(f"port {c.port}: received {c.recvd + n} bytes, sent {c.sent}")
        elif data != self.pool[c.off + c.recvd: c.off + c.recvd + n]:
            self.corrupt.append(f"port {c.port}: bytes {c.recvd}..{c.recvd + n} differ from "
                                f"what was sent")
        c.recvd += n
        self.bytes_received += n

    def on_writable(self, c: Conn, now: float) -> None:
        if not c.connected:
            err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                kind = {errno.ECONNREFUSED: "refused", errno.ECONNRESET: "reset"}
                return self.finish(c, kind.get(err, errno.errorcode.get(err, str(err))), now)
            c.connected = True
            c.port = c.sock.getsockname()[1]
        if c.sent < c.size and not c.send_failed and now >= c.resume_at:
            end = c.size
            if c.pause_at is not None and c.sent <= c.pause_at:
                end = c.pause_at
            if end > c.sent:
                try:
                    n = c.sock.send(self.pool[c.off + c.sent: c.off + min(end, c.sent + 65536)])
                    c.sent += n
                    self.bytes_sent += n
                except BlockingIOError:
                    pass
                except OSError:
                    c.send_failed = True  # reset or closed under us: read what is left
            if c.pause_at is not None and c.sent == c.pause_at:
                c.pause_at = None
                c.resume_at = now + c.pause_for
        if (c.sent == c.size or c.send_failed) and not c.shut:
            c.shut = True
            try:
                c.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def update_mask(self, c: Conn, now: float) -> None:
        want_write = not c.connected or (not c.shut and now >= c.resume_at)
        mask = (selectors.EVENT_READ if c.connected else 0) | \
               (selectors.EVENT_WRITE if want_write else 0)
        if mask == 0:
            mask = selectors.EVENT_READ
        if mask != c.mask:
            c.mask = mask
            self.sel.modify(c.sock, mask, c)

    # -- deadlines

    def expire(self, now: float) -> None:
        late = [c for c in self.conns.values() if now - c.started > CLIENT_DEADLINE]
        if not late:
            return
        with self.toggler.lock:  # no restart between the last look and the connection list
            still = []
            for c in late:
                self.drain_pending(c, now)
                if c.sock.fileno() in self.conns and self.conns[c.sock.fileno()] is c:
                    still.append(c)
            if not still:
                return
            listing = {}
            try:
                for s in self.api.connections("main"):
                    listing[s["client"]] = s
            except (OSError, AssertionError) as e:
                self.hangs.append(f"cannot list connections to attribute timeouts: {e}")
        for c in still:
            s = listing.get(f"127.0.0.1:{c.port}")
            if s is not None and "stall-forever" in s.get("rules", []):
                self.timeouts_attributed += 1
            else:
                self.hangs.append(
                    f"port {c.port}: open {now - c.started:.1f}s, size {c.size}, sent {c.sent}, "
                    f"received {c.recvd}, connected {c.connected}, shut {c.shut}; proxy side: "
                    f"{json.dumps(s) if s else 'not listed'}")
            self.finish(c, "timeout", now)

    def drain_pending(self, c: Conn, now: float) -> None:
        """Whatever already arrived (bytes, EOF, RST) counts before the deadline verdict."""
        for _ in range(64):
            if c.sock.fileno() not in self.conns:
                return
            try:
                data = c.sock.recv(65536, socket.MSG_PEEK)
            except BlockingIOError:
                return
            except OSError:
                self.on_readable(c, now)
                return
            self.on_readable(c, now)
            if not data:
                return

    # -- the loop

    def run(self, window: float, hard_stop: float) -> None:
        t0 = time.monotonic()
        last_expire = t0
        while True:
            now = time.monotonic()
            elapsed = now - t0
            # Launch at a steady rate across the window, plus bursts (when `cap` goes on).
            due = min(TOTAL, int(TOTAL * min(1.0, elapsed / window)) + 1)
            while self.launched < TOTAL and len(self.conns) < MAX_CONCURRENT and (
                    self.launched < due or self.burst > 0):
                if self.launched >= due:
                    self.burst -= 1
                self.launch(now)
            if self.launched >= TOTAL:
                self.burst = 0
            if self.launched >= TOTAL and not self.conns:
                return
            if now > hard_stop:
                raise AssertionError(f"driver still has {len(self.conns)} connections at the "
                                     f"hard stop")
            for key, ev in self.sel.select(timeout=0.02):
                c = key.data
                if ev & selectors.EVENT_WRITE:
                    self.on_writable(c, now)
                if ev & selectors.EVENT_READ and c.sock.fileno() in self.conns:
                    self.on_readable(c, now)
            now = time.monotonic()
            for c in list(self.conns.values()):
                self.update_mask(c, now)
            if now - last_expire > 0.2:
                last_expire = now
                self.expire(now)


# --------------------------------------------------------------------------------------------


def echo_round(addr, payload: bytes) -> None:
    s = connect(addr, timeout=5)
    try:
        s.sendall(payload)
        assert recv_exact(s, len(payload), timeout=10) == payload
    finally:
        s.close()


def is_asan_build(pid: int) -> bool:
    with open(f"/proc/{pid}/maps") as f:
        if "libasan" in f.read():
            return True
    with open(f"/proc/{pid}/exe", "rb") as f:  # clang links the runtime statically
        return b"AddressSanitizer" in f.read()


def wait_only_stalled_left(api: Admin, timeout: float) -> int:
    """Waits until every session the proxy still has is one under `stall-forever` (and the
    gauge agrees); returns how many there are."""
    deadline = time.monotonic() + timeout
    while True:
        conns = api.connections("main")
        others = [c for c in conns if "stall-forever" not in c.get("rules", [])]
        active = api.scrape().value("tcpfault_connections_active", proxy="main")
        if not others and active == len(conns):
            return len(conns)
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(others)} sessions not under stall-forever still open "
                                 f"{timeout}s after every client ended (gauge {active}): "
                                 f"{json.dumps(others[:5])}")
        time.sleep(0.1)  # polled: closes are observed through the API only


def faults_by_rule(api: Admin) -> dict[str, float]:
    m = api.scrape()
    return {labels["rule"]: v for labels, v in m.samples("tcpfault_faults_total")
            if labels.get("proxy") == "main"}


@pytest.mark.timeout(int(SOAK_SECONDS) + 90)
def test_soak_under_toggled_faults(tcpfault, servers, capsys):
    raise_nofile_limit()
    rng = random.Random(SEED)
    echo = servers.selector_echo()
    cfg = admin_yaml([{"name": "main", "upstream": echo.addr, "rules": list(RULES.values())}],
                     top_extra="seed: 42")
    p = tcpfault.from_config(cfg)
    api = Admin(admin_port(p))
    addr = p.addr("main")

    # Warm up (buffer pools, allocator arenas), then take the baseline.
    for i in range(50):
        echo_round(addr, rng.randbytes(64 * KiB))
    time.sleep(0.2)  # let the proxy close the warm-up connections before counting
    fds_before, rss_before = p.fd_count(), p.rss_kib()
    faults_before = faults_by_rule(api)

    t_start = time.monotonic()
    window = max(5.0, SOAK_SECONDS - DRAIN)
    driver: Optional[Driver] = None
    step = max(0.3, window / 30)
    toggler = Toggler(api, step=step, steps=int(window / step),
                      on_cap_enabled=lambda: driver.request_burst(MAX_CONCURRENT))
    driver = Driver(addr, api, toggler, rng)
    toggler.start()
    try:
        stopper = threading.Timer(window, toggler.stop)
        stopper.start()
        driver.run(window, hard_stop=t_start + window + CLIENT_DEADLINE + 10)
        stopper.join(20)
    finally:
        if toggler._t.is_alive():
            toggler.stop()
    load_seconds = time.monotonic() - t_start
    assert p.running(), f"tcpfault died during the soak; stderr:\n{p.stderr_text()[-4000:]}"

    # Back to rest. Sessions under `stall-forever` outlive their clients (open bug, see
    # test_endless_stall_session_is_reaped_once_both_peers_closed): wait until nothing else is
    # left, count them, reap them with an API restart; then nothing may be left at all.
    leaked_stalled = wait_only_stalled_left(api, timeout=15)
    if leaked_stalled:
        assert api.post("/api/proxies/main/restart").status == 200
    api.wait_metric("tcpfault_connections_active", 0, timeout=15, proxy="main")
    fds_after = p.wait_fds_at_most(fds_before + 2, timeout=10)
    rss_after = p.rss_kib()
    for i in range(20):  # still a faithful proxy
        echo_round(addr, rng.randbytes(rng.randrange(1, 256 * KiB)))
    faults = {k: v - faults_before.get(k, 0) for k, v in faults_by_rule(api).items()}
    m = api.scrape()
    total_conns = m.value("tcpfault_connections_total", proxy="main")

    figures = {
        "seconds": round(load_seconds, 1),
        "connections": driver.launched,
        "max_concurrent": driver.max_concurrent,
        "proxy_connections_total": total_conns,
        "outcomes": dict(sorted(driver.outcomes.items())),
        "bytes_sent": driver.bytes_sent,
        "bytes_received": driver.bytes_received,
        "bytes_corrupted": len(driver.corrupt),
        "hangs": len(driver.hangs),
        "timeouts_under_stall_forever": driver.timeouts_attributed,
        "stalled_sessions_left_after_clients_closed": leaked_stalled,
        "crashes": 0 if p.running() else 1,
        "faults_injected": {k: int(v) for k, v in sorted(faults.items())},
        "admin_calls": toggler.calls,
        "api_restarts": toggler.api_restarts,
        "fds_before": fds_before, "fds_after": fds_after,
        "rss_kib_before": rss_before, "rss_kib_after": rss_after,
        "rss_slack_mib": RSS_SLACK_ASAN_MIB if is_asan_build(p.pid) else RSS_SLACK_MIB,
    }
    with capsys.disabled():
        print("\nsoak figures: " + json.dumps(figures, indent=1))
    if os.environ.get("SOAK_REPORT"):
        with open(os.environ["SOAK_REPORT"], "w") as f:
            json.dump(figures, f, indent=1)

    assert not toggler.errors, "admin API calls failed:\n" + "\n".join(toggler.errors[:10])
    assert not driver.corrupt, "bytes corrupted:\n" + "\n".join(driver.corrupt[:10])
    assert not driver.hangs, "connections that never ended:\n" + "\n".join(driver.hangs[:10])
    assert driver.launched == TOTAL and sum(driver.outcomes.values()) == TOTAL
    assert driver.max_concurrent >= min(TOTAL, MAX_CONCURRENT) // 2, figures
    slack = RSS_SLACK_ASAN_MIB if is_asan_build(p.pid) else RSS_SLACK_MIB
    assert rss_after <= rss_before + slack * 1024, \
        f"RSS {rss_before} KiB -> {rss_after} KiB after the soak (allowed +{slack} MiB)"
    # Every rule was exercised (cap is switched on with a burst of connections behind it).
    assert all(faults.get(r, 0) > 0 for r in RULES), f"rules that never fired: {faults}"
    assert driver.outcomes.get("complete", 0) > TOTAL // 4, figures


@pytest.mark.timeout(30)
@pytest.mark.parametrize("mode", ["drop", "hold"])
def test_endless_stall_session_is_reaped_once_both_peers_closed(tcpfault, servers, mode):
    echo = servers.echo()
    rule = f"{{name: sf, fault: {{type: stall, direction: both, mode: {mode}}}}}"
    p = tcpfault.from_config(admin_yaml([{"name": "main", "upstream": echo.addr,
                                          "rules": [rule]}]))
    api = Admin(admin_port(p))
    fds = p.fd_count()
    s = connect(p.addr("main"))
    s.sendall(b"x" * 5000)
    s.shutdown(socket.SHUT_WR)  # the client gives up: FIN ...
    time.sleep(0.5)  # (a client's own timeout, shortened)
    s.close()  # ... and close
    echo.close()  # the server side goes away too
    api.wait_metric("tcpfault_connections_active", 0, timeout=3, proxy="main")
    p.wait_fds_at_most(fds, timeout=3)
