"""Churn soak (issue #12): 1,000 concurrent clients with checked transfers while a controller
adds, replaces, enables, disables and deletes random rules of every fault type with random
triggers, restarts the proxy over the API and reloads the file (SIGHUP and POST /api/reload).

SOAK_CHURN_SECONDS (default 300) is the length of the churn; CI runs the default, the ASan
pass of tests/run-all.sh a shorter one, and a longer run by hand takes a larger value.
SOAK_CHURN_CLIENTS (default 1000) clients are kept open at once; SOAK_CHURN_SEED picks the
rules, sizes and timings; SOAK_CHURN_REPORT=path also writes the figures as JSON;
SOAK_CHURN_FAULTS=a,b,... (by hand) narrows the churn to some fault types.

Checked:
- /healthz, probed every 250 ms from a separate process, answers 200 within 100 ms for the
  whole run, and an 8-byte echo through a second proxy, `canary`, comes back each time (with
  `workers: 2` a loop other than the admin API's may freeze). Five probes in a row
  unanswered (about 5 s) stop the run as frozen, reporting when, the rules in force, the
  controller's last calls and, with gdb installed, the stack;
- every transfer is byte-identical (the upstream echoes; each received byte is compared with
  the byte sent at that offset) or fails cleanly: EOF, RST, ECONNREFUSED, or the client's own
  deadline (20 s). Only clients from 127.0.0.2 may see holes: the rules that drop data and may
  resume afterwards (`stall` with `mode: drop`, `idle` with `action: drop`) match only them;
- every admin API call of the controller gets its documented status;
- every fault type fired at least once;
- afterwards, with the rules gone, every session ends (those left behind by endless stalls are
  counted, reported and reaped with an API restart, as in test_soak.py), descriptors return to
  the baseline (+2) and RSS to within 64 MiB of it, and 50 echo transfers through the proxy
  are byte-identical. On an ASan build RSS stays at its peak (the quarantine keeps 256 MiB of
  freed memory, the allocator keeps its pages), so it gets 256 MiB plus the most the clients'
  payloads can hold queued (250 MiB) on top: measured +380 MiB for 60 s of churn, +392 MiB for
  120 s (it levels off; LeakSanitizer at exit is the leak check there). ASan clients also pause
  longer (2..12 s instead of 0.5..5 s): the same 1,000 at once, fewer new connections a second;
  and /healthz gets 500 ms there instead of 100 ms (a Debug+ASan build is 3-5x slower; a
  freeze still stops the run).

The clients run on one selector loop, the echo server in a child process (one selector loop),
so the load costs about one core of the two a CI box has; the load generators run at a lower
CPU priority than the proxy and the probe.
"""

from __future__ import annotations

import collections
import errno
import heapq
import json
import os
import random
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Optional

import pytest

from admin_helpers import Admin, admin_port
from freeze_helpers import (HealthProbe, cpu_seconds, is_asan_build, kill_on_failure,
                            lower_thread_priority, metric_by, stack_dump, thread_states)
from helpers import HERE, KiB, connect, raise_nofile_limit, recv_exact

SECONDS = float(os.environ.get("SOAK_CHURN_SECONDS", "300"))
CLIENTS = int(os.environ.get("SOAK_CHURN_CLIENTS", "1000"))
SEED = int(os.environ.get("SOAK_CHURN_SEED", "20261207"))
CLIENT_DEADLINE = 20.0  # s: a transfer still open this long after its connect ends as "timeout"
MAX_PAYLOAD = 128 * KiB
LAUNCH_RATE = 1500  # connection attempts per second at most
REFUSED_BACKOFF = 0.05  # s without new attempts after a refused one (the listener is closed)
RETRY_WAIT = (0.2, 1.0)  # s a client waits after a failed transfer before its next one
PROBE_INTERVAL = 0.25
HEALTH_BOUND = 0.100
# ASan (Debug, 3-5x slower) gets 5x the bound: a freeze still fails the run there, the 100 ms
# is held on the normal build.
HEALTH_BOUND_ASAN = 0.500
MAX_RULES = 14
FROZEN_PROBES = 5  # consecutive unanswered probes that stop the run as frozen
PAUSE = (0.5, 5.0)  # s: each transfer stops once for this long (uniform)
# An ASan build is several times slower: the same 1,000 clients pause longer, so the rate of
# new connections (what costs the proxy CPU) drops to what it can serve.
PAUSE_ASAN = (2.0, 12.0)
RSS_SLACK_MIB = 64  # as test_soak.py: allocator retention after the load
# As test_soak.py, plus: an ASan build keeps freed memory in its quarantine (256 MiB) and its
# allocator does not give pages back, so RSS stays at the peak the load reached: up to both
# directions of every client's payload queued at once (latency, bandwidth, slice, holds).
RSS_SLACK_ASAN_MIB = 64 + 256 + 2 * CLIENTS * MAX_PAYLOAD // (1 << 20)
BANNER = b"421 Too many connections\r\n"  # what `cap` with `over: banner` sends
LOSSY_SOURCE = "127.0.0.2"  # clients that rules dropping data may hit
SOURCES = [f"127.0.1.{i}" for i in range(1, 9)]  # the other clients (spreads ephemeral ports)
ALL_FAULT_TYPES = ["reset", "close", "stall", "latency", "bandwidth", "slice", "clamp", "cap",
                   "refuse", "idle", "restart", "slow_close"]
# By hand, SOAK_CHURN_FAULTS=latency,stall,... narrows the churn to some types (to find which
# combination freezes); CI always runs every type.
FAULT_TYPES = [t for t in os.environ.get("SOAK_CHURN_FAULTS", ",".join(ALL_FAULT_TYPES)).split(",")
               if t]
assert set(FAULT_TYPES) <= set(ALL_FAULT_TYPES), f"SOAK_CHURN_FAULTS: unknown {FAULT_TYPES}"

# --------------------------------------------------------------------------------------------
# random rules


class RuleGen:
    """Random valid rules of every type, as dicts (sent as JSON to the API, written as YAML
    flow mappings to the file). Proxy-wide faults get bounded windows so the proxy is not
    refused or restarted for most of the run."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.n = 0

    def name(self) -> str:
        self.n += 1
        return f"r{self.n}"

    def ms(self, lo: int, hi: int) -> str:
        return f"{self.rng.randint(lo, hi)}ms"

    def fault(self, kind: str) -> tuple[dict, bool]:
        """(fault mapping, lossy): lossy faults may drop bytes and then resume."""
        r = self.rng
        if kind == "reset":
            return {"type": "reset", "to": r.choice(["client", "server", "both"]),
                    "flush": r.random() < 0.7}, False
        if kind == "close":
            return {"type": "close", "to": r.choice(["client", "server", "both"]),
                    "then": r.choice(["reset", "discard"])}, False
        if kind == "stall":
            f = {"type": "stall", "direction": r.choice(["upstream", "downstream", "both"]),
                 "mode": r.choice(["hold", "drop"])}
            if r.random() < 0.7:
                f["duration"] = self.ms(50, 3000)
                f["then"] = r.choice(["resume", "reset", "close"])
            elif r.random() < 0.5:
                f["then"] = "resume"
            return f, f["mode"] == "drop"
        if kind == "latency":
            f = {"type": "latency", "delay": self.ms(1, 200),
                 "direction": r.choice(["upstream", "downstream", "both"])}
            if r.random() < 0.5:
                f["jitter"] = self.ms(0, 50)
            return f, False
        if kind == "bandwidth":
            return {"type": "bandwidth", "rate": f"{r.choice([16, 64, 256, 1024])}KiB/s",
                    "direction": r.choice(["upstream", "downstream", "both"])}, False
        if kind == "slice":
            f = {"type": "slice", "size": r.choice(["1", "1-16", "16-256", "1-4KiB"]),
                 "direction": r.choice(["upstream", "downstream", "both"])}
            if r.random() < 0.7:
                f["delay"] = r.choice(["0ms", "1ms", "2ms", "5ms"])
            return f, False
        if kind == "clamp":
            f = {"type": "clamp", "side": r.choice(["client", "server", "both"])}
            opts = {"sndbuf": ["4KiB", "16KiB"], "rcvbuf": ["4KiB", "16KiB"],
                    "window": ["2KiB", "8KiB"], "mss": [536, 1200], "read_size": [64, 1024]}
            for k in r.sample(list(opts), r.randint(1, 3)):
                f[k] = r.choice(opts[k])
            return f, False
        if kind == "cap":
            f = {"type": "cap", "max": r.choice([5, 20, 50, 200]),
                 "over": r.choice(["reset", "close", "banner", "hold"])}
            if f["over"] == "banner":
                f["banner"] = BANNER.decode()
            return f, False
        if kind == "refuse":
            return {"type": "refuse"}, False
        if kind == "idle":
            f = {"type": "idle", "timeout": self.ms(100, 2000),
                 "action": r.choice(["reset", "drop", "close"])}
            return f, f["action"] == "drop"
        if kind == "restart":
            return {"type": "restart", "downtime": self.ms(0, 300)}, False
        assert kind == "slow_close"
        return {"type": "slow_close", "delay": self.ms(50, 2000),
                "direction": r.choice(["upstream", "downstream", "both"])}, False

    def when(self) -> Optional[dict]:
        r = self.rng
        w: dict = {}
        if r.random() < 0.5:
            w["direction"] = r.choice(["upstream", "downstream"])
        if r.random() < 0.4:
            w["after_bytes"] = r.choice([0, 1, 100, 1024, "4KiB", "16KiB", "64KiB"])
        if r.random() < 0.3:
            w["after"] = self.ms(0, 1500)
        pick = r.random()
        if pick < 0.15:
            w["data"] = r.choice(["Z", "ab", "q"])
        elif pick < 0.3:
            w["line"] = r.choice(["^A", "Z$", "[0-9][0-9]", "x.*y", "^[a-f]+"])
        if r.random() < 0.1:
            w["next_byte"] = True
        # after_bytes: 0 on its own is refused (it would mean "at accept"): with nothing else,
        # it becomes 1.
        if w.get("after_bytes") == 0 and not {"data", "line", "after", "next_byte"} & set(w):
            w["after_bytes"] = 1
        conds = {"data", "line", "after_bytes", "after", "next_byte"}
        return w if conds & set(w) else None

    def match(self, kind: str, lossy: bool) -> Optional[dict]:
        r = self.rng
        m: dict = {}
        proxy_wide = kind in ("refuse", "restart")
        if proxy_wide:
            every = r.randint(2000, 6000)
            m["schedule"] = {"every": f"{every}ms",
                             "for": f"{r.randint(50, 400 if kind == 'refuse' else 100)}ms"}
            if r.random() < 0.3:
                m["schedule"]["offset"] = self.ms(0, 1000)
            if r.random() < 0.3:
                m["limit"] = r.randint(1, 5)
            return m
        if r.random() < 0.6:
            m["probability"] = round(r.uniform(0.05, 1.0), 2)
        if r.random() < 0.2:
            m["limit"] = r.randint(1, 200)
        if r.random() < 0.2:
            every = r.randint(1000, 5000)
            m["schedule"] = {"every": f"{every}ms", "for": f"{r.randint(100, every)}ms"}
        if r.random() < 0.15:
            k = r.choice(["every", "nth", "first"])
            m["connections"] = {k: r.randint(1, 50) if k != "first" else r.randint(10, 5000)}
        if r.random() < 0.3:
            m["existing"] = r.random() < 0.5
        if lossy:
            m["clients"] = [f"{LOSSY_SOURCE}/32"]
        elif r.random() < 0.15:
            m["clients"] = [r.choice(["127.0.1.0/29", "127.0.1.4/30", "127.0.0.0/8",
                                      "::1/128"])]
        return m or None

    def rule(self, name: Optional[str] = None, kind: Optional[str] = None) -> dict:
        """A random rule; of the given kind (then enabled) or of any kind."""
        chosen = kind or self.rng.choice(FAULT_TYPES)
        fault, lossy = self.fault(chosen)
        rule: dict = {"name": name or self.name()}
        if kind is None and self.rng.random() < 0.2:
            rule["enabled"] = False
        m = self.match(chosen, lossy)
        if m:
            rule["match"] = m
        if chosen not in ("cap", "refuse", "restart"):
            w = self.when()
            if w:
                rule["when"] = w
        rule["fault"] = fault
        return rule


def config_yaml(rules: list[dict], seed: int, level: str = "warn") -> str:
    """The soak's file. Logs at `warn` once running (a line per injected fault would be
    hundreds of thousands of lines); the first start logs at `info` for the listening lines."""
    out = ["admin: {listen: 127.0.0.1:0}", f"log: {{format: json, level: {level}}}",
           f"seed: {seed}", "shutdown_grace: 2s", "proxies:",
           '  - {name: canary, listen: 127.0.0.1:0, upstream: "{canary_upstream}"}',
           "  - name: main", "    listen: 127.0.0.1:0", '    upstream: "{upstream}"',
           "    connect_timeout: 5s"]
    if rules:
        out.append("    rules:")
        out += [f"      - {json.dumps(r)}" for r in rules]
    else:
        out.append("    rules: []")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------
# the controller


class Frozen(Exception):
    pass


class Controller:
    """Churns rules over the admin API from a thread: add (POST), replace (PUT), enable,
    disable, delete, API restarts, reloads of a rewritten file by POST /api/reload and by
    SIGHUP. Keeps a model of the rules to pick valid calls; records every call whose status
    is not the documented one. Every few seconds it scrapes /metrics for the fault types that
    fired."""

    def __init__(self, api: Admin, proc, write_file, rng: random.Random, initial: list[dict]):
        self.api = api
        self.proc = proc
        self.write_file = write_file
        self.rng = rng
        self.gen = RuleGen(rng)
        self.gen.n = 1000
        self.rules: dict[str, dict] = {r["name"]: r for r in initial}
        self.errors: list[str] = []
        self.calls = collections.Counter()
        self.recent: collections.deque = collections.deque(maxlen=30)
        self.fired_types: set[str] = set()
        self.stop_event = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True, name="controller")

    def call(self, what: str, method: str, path: str, body=None, ok=(200,)) -> Optional[int]:
        self.calls[what] += 1
        self.recent.append(f"{time.strftime('%H:%M:%S')} {method} {path} "
                           f"{json.dumps(body)[:200] if body is not None else ''}")
        try:
            r = self.api.request(method, path, body=body, timeout=5)
        except OSError as e:
            self.errors.append(f"{method} {path}: {type(e).__name__}: {e}")
            return None
        if r.status not in ok:
            self.errors.append(f"{method} {path} {json.dumps(body) if body else ''}: {r}")
        return r.status

    def _run(self) -> None:
        lower_thread_priority(3)
        last_scrape = 0.0
        while not self.stop_event.wait(self.rng.uniform(0.05, 0.3)):
            try:
                self.step()
                if time.monotonic() - last_scrape > 3:
                    last_scrape = time.monotonic()
                    self.scrape_fired()
            except Exception as e:  # recorded: the test fails on it
                self.errors.append(f"controller: {type(e).__name__}: {e}")

    def step(self) -> None:
        r = self.rng
        names = list(self.rules)
        x = r.random()
        base = "/api/proxies/main/rules"
        if (x < 0.25 or not names) and len(names) < MAX_RULES:
            rule = self.gen.rule(kind=self.unfired_kind())
            if self.call("add", "POST", base, rule, ok=(201,)) == 201:
                self.rules[rule["name"]] = rule
        elif x < 0.45:
            name = r.choice(names)
            rule = self.gen.rule(name=name, kind=self.unfired_kind())
            if self.call("replace", "PUT", f"{base}/{name}", rule) == 200:
                self.rules[name] = rule
        elif x < 0.62:
            name = r.choice(names)
            self.call("enable", "POST", f"{base}/{name}/enable")
        elif x < 0.79:
            name = r.choice(names)
            self.call("disable", "POST", f"{base}/{name}/disable")
        elif x < 0.955 or len(names) >= MAX_RULES:
            name = r.choice(names)
            if self.call("delete", "DELETE", f"{base}/{name}", ok=(200, 204)) in (200, 204):
                del self.rules[name]
        elif x < 0.97:
            body = {"downtime": f"{r.randint(0, 300)}ms"} if r.random() < 0.5 else None
            self.call("api_restart", "POST", "/api/proxies/main/restart", body)
        else:
            rules = [self.gen.rule(kind=self.unfired_kind()) for _ in range(r.randint(0, 4))]
            self.write_file(rules)
            if r.random() < 0.5:
                if self.call("reload_api", "POST", "/api/reload") == 200:
                    self.rules = {x["name"]: x for x in rules}
            else:
                self.reload_sighup(rules)

    def unfired_kind(self) -> Optional[str]:
        """Half the time, a fault type not seen firing yet (as far as the last scrape knows):
        in a minute of churn, a rule whose window comes every few seconds (restart, refuse) can
        otherwise be deleted or replaced before it ever fires, and the test must see every type
        fire. None: any type."""
        missing = sorted(set(FAULT_TYPES) - self.fired_types)
        return self.rng.choice(missing) if missing and self.rng.random() < 0.5 else None

    def reload_sighup(self, rules: list[dict]) -> None:
        self.calls["reload_sighup"] += 1
        self.recent.append(f"{time.strftime('%H:%M:%S')} SIGHUP")
        before = self.reloads_ok()
        self.proc.signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while self.reloads_ok() <= before:
            if time.monotonic() > deadline:
                self.errors.append("SIGHUP: no successful reload counted within 5 s")
                return
            time.sleep(0.05)  # polled: the counter is how a reload is observed
        self.rules = {x["name"]: x for x in rules}

    def reloads_ok(self) -> float:
        return metric_by(self.api, "tcpfault_config_reloads_total", "result").get("ok", 0.0)

    def scrape_fired(self) -> None:
        m = self.api.scrape()
        for labels, v in m.samples("tcpfault_faults_total"):
            if v > 0:
                self.fired_types.add(labels.get("fault"))

    def start(self) -> None:
        self.t.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.t.join(20)
        assert not self.t.is_alive(), "controller stuck on an admin API call"


# --------------------------------------------------------------------------------------------
# the clients


class Conn:
    __slots__ = ("sock", "fd", "off", "size", "sent", "recvd", "started", "connected", "shut",
                 "send_failed", "lossy", "pause_at", "resume_at", "mask", "port", "banner")


class Driver:
    """`target` clients on one selector loop, each running transfers one after another (one
    connection each); a client whose transfer failed waits 0.2..1 s before its next one. Each
    transfer sends a random slice of a random pool (0..128 KiB, pausing once mid-way, 0.5..5 s),
    half-closes, and reads the echo to EOF, comparing every received byte with the byte sent at
    that offset."""

    def __init__(self, addr, rng: random.Random, target: int, probe: Optional[HealthProbe],
                 pause: tuple[float, float] = PAUSE):
        self.addr = addr
        self.pause = pause
        self.rng = rng
        self.target = target
        self.probe = probe
        self.pool = memoryview(rng.randbytes(MAX_PAYLOAD * 8))
        self.sel = selectors.DefaultSelector()
        self.conns: dict[int, Conn] = {}
        self.deadlines: list = []  # (time, fd, conn)
        self.resumes: list = []  # (time, fd, conn)
        self.outcomes: collections.Counter = collections.Counter()
        self.corrupt: list[str] = []
        self.launched = 0
        self.bytes_checked = 0
        self.max_open = 0
        self.frozen_at: Optional[float] = None
        self.backoff_until = 0.0
        self.cooldowns: list[float] = []  # when each client whose transfer failed retries

    # -- connections

    def launch(self, now: float) -> None:
        r = self.rng
        c = Conn()
        c.size = 0 if r.random() < 0.05 else min(MAX_PAYLOAD, int(2 ** r.uniform(0, 17)))
        c.off = r.randrange(0, len(self.pool) - c.size + 1)
        c.sent = c.recvd = 0
        c.started = now
        c.connected = c.shut = c.send_failed = c.banner = False
        c.lossy = r.random() < 0.15
        # Every transfer but the empty ones stops once to think (a client, not a benchmark):
        # 1,000 transfers stay open at once for a few hundred new connections a second.
        c.pause_at = r.randrange(0, c.size) if c.size else None
        c.resume_at = 0.0
        c.port = 0
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        c.sock = s
        self.launched += 1
        try:
            s.bind((LOSSY_SOURCE if c.lossy else r.choice(SOURCES), 0))
        except OSError as e:
            s.close()
            self.outcomes[f"client bind: {errno.errorcode.get(e.errno, e)}"] += 1
            return
        err = s.connect_ex(self.addr)
        if err not in (0, errno.EINPROGRESS):
            refused = err == errno.ECONNREFUSED
            self.outcomes["refused" if refused else f"connect {errno.errorcode.get(err, err)}"] += 1
            if refused:
                self.backoff_until = now + REFUSED_BACKOFF
            heapq.heappush(self.cooldowns, now + r.uniform(*RETRY_WAIT))
            s.close()
            return
        c.fd = s.fileno()
        c.mask = selectors.EVENT_WRITE
        self.conns[c.fd] = c
        self.sel.register(s, c.mask, c)
        heapq.heappush(self.deadlines, (now + CLIENT_DEADLINE, c.fd, id(c), c))
        self.max_open = max(self.max_open, len(self.conns))

    def finish(self, c: Conn, outcome: str) -> None:
        self.outcomes[outcome] += 1
        now = time.monotonic()
        if outcome == "refused":
            self.backoff_until = now + REFUSED_BACKOFF
        if outcome != "complete":  # a client whose transfer failed waits before it retries
            heapq.heappush(self.cooldowns, now + self.rng.uniform(*RETRY_WAIT))
        self.sel.unregister(c.sock)
        del self.conns[c.fd]
        c.sock.close()

    def on_read(self, c: Conn) -> bool:
        """Reads once; False if there was nothing to read."""
        try:
            data = c.sock.recv(65536)
        except BlockingIOError:
            return False
        except ConnectionResetError:
            self.finish(c, "reset")
            return True
        except OSError as e:
            self.finish(c, errno.errorcode.get(e.errno, str(e)))
            return True
        if not data:
            if c.banner:
                self.finish(c, "banner" if c.recvd == len(BANNER) else "banner_cut")
                return True
            done = c.recvd == c.size and c.sent == c.size
            self.finish(c, "complete" if done else "eof_early")
            return True
        n = len(data)
        if c.banner or (c.recvd == 0 and BANNER.startswith(data[:len(BANNER)])
                        and data != self.pool[c.off: c.off + n]):
            # `cap` with `over: banner` answers with its banner, then closes.
            c.banner = True
            if data != BANNER[c.recvd: c.recvd + n]:
                self.corrupt.append(f"{c.port}: bytes {c.recvd}..{c.recvd + n} are neither "
                                    f"what was sent nor the cap banner: {bytes(data[:40])!r}")
            c.recvd += n
            return True
        if c.recvd + n > c.sent:
            self.corrupt.append(f"{c.port}: received {c.recvd + n} bytes, sent {c.sent}")
        elif not c.lossy and data != self.pool[c.off + c.recvd: c.off + c.recvd + n]:
            self.corrupt.append(f"{c.port}: bytes {c.recvd}..{c.recvd + n} of {c.size} differ "
                                f"from what was sent")
        else:
            self.bytes_checked += n
        c.recvd += n
        return True

    def on_write(self, c: Conn, now: float) -> None:
        if not c.connected:
            err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                name = {errno.ECONNREFUSED: "refused", errno.ECONNRESET: "reset"}
                return self.finish(c, name.get(err, errno.errorcode.get(err, str(err))))
            c.connected = True
            c.port = c.sock.getsockname()[1]
        if c.sent < c.size and not c.send_failed and now >= c.resume_at:
            end = c.pause_at if c.pause_at is not None and c.sent < c.pause_at else c.size
            try:
                k = c.sock.send(self.pool[c.off + c.sent: c.off + min(end, c.sent + 65536)])
                c.sent += k
            except BlockingIOError:
                pass
            except OSError:
                c.send_failed = True  # reset or closed under us: read what is left
            if c.pause_at is not None and c.sent == c.pause_at:
                c.pause_at = None
                c.resume_at = now + self.rng.uniform(*self.pause)
                heapq.heappush(self.resumes, (c.resume_at, c.fd, id(c), c))
        if (c.sent == c.size or c.send_failed) and not c.shut:
            c.shut = True
            try:
                c.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def set_mask(self, c: Conn, now: float) -> None:
        want_write = not c.connected or (not c.shut and now >= c.resume_at)
        mask = (selectors.EVENT_READ if c.connected else 0) | \
               (selectors.EVENT_WRITE if want_write else 0)
        if mask != c.mask:
            c.mask = mask
            self.sel.modify(c.sock, mask, c)

    def live(self, c: Conn) -> bool:
        return self.conns.get(c.fd) is c

    def expire(self, now: float) -> None:
        while self.deadlines and self.deadlines[0][0] <= now:
            _, _, _, c = heapq.heappop(self.deadlines)
            if not self.live(c):
                continue
            for _ in range(64):  # whatever already arrived (bytes, EOF, RST) counts first
                if not self.live(c) or not self.on_read(c):
                    break
            if self.live(c):
                self.finish(c, "timeout")
        while self.resumes and self.resumes[0][0] <= now:
            _, _, _, c = heapq.heappop(self.resumes)
            if self.live(c):
                self.set_mask(c, now)

    # -- the loop

    def run(self, until: float, launching: bool = True) -> None:
        """Runs until `until`; with launching, keeps `target` transfers open; then returns
        (remaining transfers keep running in the next call). Raises Frozen when the probe
        sees /healthz time out."""
        last_launch = time.monotonic()
        last_check = last_launch
        budget = 0.0
        while True:
            now = time.monotonic()
            if now >= until or (not launching and not self.conns):
                return
            if launching:
                budget = min(LAUNCH_RATE * 0.05, budget + (now - last_launch) * LAUNCH_RATE)
                last_launch = now
                while self.cooldowns and self.cooldowns[0] <= now:
                    heapq.heappop(self.cooldowns)
                while len(self.conns) + len(self.cooldowns) < self.target and budget >= 1 and \
                        now >= self.backoff_until:
                    budget -= 1
                    self.launch(now)
            for key, ev in self.sel.select(timeout=0.02):
                c = key.data
                if ev & selectors.EVENT_WRITE:
                    self.on_write(c, now)
                if ev & selectors.EVENT_READ and self.live(c):
                    self.on_read(c)
                if self.live(c):
                    self.set_mask(c, now)
            now = time.monotonic()
            self.expire(now)
            if self.probe is not None and now - last_check > 0.5:
                last_check = now
                self.check_probe()

    def check_probe(self) -> None:
        """Five probes in a row unanswered (about 5 s) is a freeze: the run stops there. A
        shorter stall is left to the final verdict (it breaks the 100 ms bound anyway)."""
        with self.probe._lock:
            tails = [self.probe.samples[-FROZEN_PROBES:],
                     self.probe.canary_samples[-FROZEN_PROBES:]]
        for tail in tails:
            if len(tail) == FROZEN_PROBES and all(st != "ok" for _, _, st in tail):
                self.frozen_at = time.monotonic() - FROZEN_PROBES * self.probe.timeout
                raise Frozen(f"/healthz or the canary failed: {tail}")

    def close_all(self) -> None:
        for c in list(self.conns.values()):
            self.finish(c, "abandoned")
        self.sel.close()


# --------------------------------------------------------------------------------------------

ECHO_SRC = r"""
import os, sys
sys.path.insert(0, sys.argv[1])
try:
    os.nice(5)
except OSError:
    pass
from helpers import SelectorEchoServer
s = SelectorEchoServer(backlog=4096)
print(s.port, flush=True)
sys.stdin.read()
s.close()
"""


class EchoProcess:
    """helpers.SelectorEchoServer in a child process (its own interpreter and core)."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", ECHO_SRC, str(HERE)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        line = self.proc.stdout.readline()
        assert line.strip().isdigit(), f"echo server did not start: {line!r}"
        self.addr = f"127.0.0.1:{int(line)}"

    def close(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait(5)
        self.proc.stdout.close()


def echo_round(addr, payload: bytes) -> None:
    s = connect(addr, timeout=5)
    try:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        assert recv_exact(s, len(payload), timeout=10) == payload
        s.settimeout(5)
        assert s.recv(1) == b"", "more bytes than were sent"
    finally:
        s.close()


def freeze_diagnostics(p, driver: Driver, ctl: Controller, t0: float) -> str:
    cpu0 = cpu_seconds(p.pid)
    time.sleep(1.0)  # measuring CPU over an interval
    cpu = cpu_seconds(p.pid) - cpu0
    stacks = stack_dump(p.pid)
    return (f"frozen {driver.frozen_at - t0:.1f}s into the churn: tcpfault used {cpu:.2f} s of "
            f"CPU in the next second, has {p.fd_count()} fds open, {len(driver.conns)} client "
            f"transfers open; threads: {thread_states(p.pid)}; rules in force (the "
            f"controller's model): {json.dumps(list(ctl.rules.values()))}\n"
            "last controller calls:\n  " + "\n  ".join(ctl.recent)
            + ("\ncontroller errors:\n  " + "\n  ".join(ctl.errors[:10]) if ctl.errors else "")
            + (f"\nstacks:\n{stacks}" if stacks else ""))


@pytest.mark.timeout(int(SECONDS) + 240)
def test_soak_with_rule_churn(tcpfault, capsys):
    """The churn soak described at the top of this file."""
    raise_nofile_limit()
    rng = random.Random(SEED)
    echo = EchoProcess()
    # The canary gets an echo server of its own: a miss then says the proxy did not answer,
    # not that the load's echo server was busy.
    canary_echo = EchoProcess()
    try:
        run_soak(tcpfault, rng, echo, canary_echo, capsys)
    finally:
        echo.close()
        canary_echo.close()


def run_soak(tcpfault, rng: random.Random, echo: EchoProcess, canary_echo: EchoProcess,
             capsys) -> None:
    gen = RuleGen(rng)
    initial = [gen.rule() for _ in range(4)]

    def write_file(rules: list[dict], level: str = "warn"):
        return tcpfault.write_config(
            config_yaml(rules, SEED, level).replace("{upstream}", echo.addr)
            .replace("{canary_upstream}", canary_echo.addr), name="churn.yaml")

    # Start with no rule in force (the baseline), the file's rules come with the first reload.
    path = write_file([], level="info")
    p = tcpfault.from_config(None, path=path, listening=2)
    api = Admin(admin_port(p))
    addr = p.addr("main")
    asan = is_asan_build(p.pid)
    with kill_on_failure(p):
        lower_thread_priority(5)
        # Warm-up at full concurrency, no rules: buffers and allocator arenas as the load needs.
        warm = Driver(addr, rng, CLIENTS, None, PAUSE_ASAN if asan else PAUSE)
        warm.run(time.monotonic() + 8)
        warm.run(time.monotonic() + CLIENT_DEADLINE + 5, launching=False)
        assert not warm.corrupt and not warm.conns, (warm.corrupt[:3], len(warm.conns))
        assert warm.outcomes["complete"] == sum(warm.outcomes.values()), warm.outcomes
        warm.close_all()
        api.wait_metric("tcpfault_connections_active", 0, timeout=10, proxy="main")
        time.sleep(0.5)  # the last admin connections close
        fds_before, rss_before = p.fd_count(), p.rss_kib()

        write_file(initial)
        assert api.post("/api/reload").status == 200
        ctl = Controller(api, p, write_file, random.Random(SEED + 1), initial)
        probe = HealthProbe(api.port, interval=PROBE_INTERVAL, timeout=1.0,
                            canary=p.addr("canary")).start()
        driver = Driver(addr, rng, CLIENTS, probe, PAUSE_ASAN if asan else PAUSE)
        t0 = time.monotonic()
        frozen = None
        try:
            probe.wait_samples(2)
            ctl.start()
            try:
                driver.run(t0 + SECONDS)
            except Frozen:
                frozen = freeze_diagnostics(p, driver, ctl, t0)
            finally:
                ctl.stop_event.set()
            if frozen is None:
                ctl.stop()
                ctl.scrape_fired()  # what fired since the controller's last scrape counts too
                probe.mark("churn over")
                # The end: no rules (the file, reloaded), clients run to their end.
                write_file([])
                status = api.post("/api/reload").status
                assert status == 200, f"final reload: {status}"
                try:
                    driver.run(time.monotonic() + CLIENT_DEADLINE + 5, launching=False)
                except Frozen:
                    frozen = freeze_diagnostics(p, driver, ctl, t0)
        finally:
            probe.stop()
            driver.close_all()
        churn_seconds = time.monotonic() - t0
        if frozen is not None:
            pytest.fail(f"{frozen}\n{probe.report(HEALTH_BOUND, canary_bound=probe.timeout)}"
                        f"\nclient outcomes so far: "
                        f"{dict(driver.outcomes)}", pytrace=False)

        # Sessions left behind once every client is gone (endless stalls), reaped by a restart.
        deadline = time.monotonic() + 15
        left = None
        while time.monotonic() < deadline:
            left = api.scrape().value("tcpfault_connections_active", proxy="main")
            if left == 0:
                break
            time.sleep(0.2)  # polled: the gauge is the observable
        leftover = api.connections("main") if left else []
        if left:
            assert api.post("/api/proxies/main/restart").status == 200
        api.wait_metric("tcpfault_connections_active", 0, timeout=10, proxy="main")
        fds_after = p.wait_fds_at_most(fds_before + 2, timeout=15)
        rss_after = p.rss_kib()
        if os.environ.get("SOAK_PAUSE_AT_END"):  # by hand: look at the idle process
            print(f"\nsoak over; tcpfault pid {p.pid}, RSS {rss_after} KiB; pausing", flush=True)
            time.sleep(float(os.environ["SOAK_PAUSE_AT_END"]))
        final_refused = 0
        final_errors = []
        deadline = time.monotonic() + 5  # a listener closed by refuse re-opens on the next tick
        for i in range(50):
            try:
                echo_round(addr, rng.randbytes(rng.randrange(1, MAX_PAYLOAD)))
            except ConnectionRefusedError:
                final_refused += 1
                if time.monotonic() > deadline:
                    final_errors.append("refused 5 s after the rules were gone")
                    break
                time.sleep(0.05)  # polled: re-opening is observed only by connecting
            except (OSError, AssertionError) as e:
                final_errors.append(f"{type(e).__name__}: {e}")
        ctl.scrape_fired()
        slack = RSS_SLACK_ASAN_MIB if asan else RSS_SLACK_MIB
        figures = {
            "churn_seconds": round(churn_seconds, 1),
            "clients_at_once": CLIENTS,
            "max_open": driver.max_open,
            "transfers": driver.launched,
            "outcomes": dict(driver.outcomes.most_common()),
            "bytes_checked": driver.bytes_checked,
            "corrupt": len(driver.corrupt),
            "corrupt_first": driver.corrupt[:5],
            "controller_calls": dict(ctl.calls),
            "controller_errors": len(ctl.errors),
            "fault_types_fired": sorted(t for t in ctl.fired_types if t),
            "healthz": probe.report(HEALTH_BOUND_ASAN if asan else HEALTH_BOUND).splitlines()[0],
            "healthz_max_ms": round(probe.max_latency() * 1000, 1),
            "sessions_left_after_clients": int(left or 0),
            "final_echo_refused": final_refused,
            "fds_before": fds_before, "fds_after": fds_after,
            "rss_kib_before": rss_before, "rss_kib_after": rss_after, "rss_slack_mib": slack,
            "asan": asan,
        }
        with capsys.disabled():
            print("\nchurn soak figures: " + json.dumps(figures, indent=1))
            if leftover:
                print(f"sessions left after their clients (first 5): {json.dumps(leftover[:5])}")
        if os.environ.get("SOAK_CHURN_REPORT"):
            with open(os.environ["SOAK_CHURN_REPORT"], "w") as f:
                json.dump(figures, f, indent=1)

        problems = []
        if final_errors:
            problems.append(f"echo transfers after the soak, with no rules, failed: "
                            f"{final_errors[:5]}")
        if ctl.errors:
            problems.append("admin API calls failed:\n  " + "\n  ".join(ctl.errors[:10]))
        if driver.corrupt:
            problems.append("bytes corrupted:\n  " + "\n  ".join(driver.corrupt[:10]))
        try:
            # The canary's echo is its own, but the machine is busy with the load: an answer
            # within the probe's timeout is required.
            probe.assert_responsive(HEALTH_BOUND_ASAN if asan else HEALTH_BOUND,
                                    "rules churned under 1,000 clients",
                                    canary_bound=probe.timeout)
        except AssertionError as e:
            problems.append(str(e))
        unclean = {k: v for k, v in driver.outcomes.items()
                   if k not in ("complete", "eof_early", "reset", "refused", "timeout",
                                "banner", "banner_cut", "EPIPE", "ECONNABORTED")}
        if unclean:
            problems.append(f"transfers that ended neither intact nor cleanly: {unclean}")
        if driver.outcomes["complete"] < driver.launched // 10:
            problems.append(f"fewer than 10 % of the transfers completed: {dict(driver.outcomes)}")
        if driver.max_open < CLIENTS * 9 // 10:
            problems.append(f"only {driver.max_open} clients open at once, expected {CLIENTS}")
        missing = set(FAULT_TYPES) - ctl.fired_types
        if missing:
            problems.append(f"fault types that never fired: {sorted(missing)}")
        if rss_after > rss_before + slack * 1024:
            problems.append(f"RSS {rss_before} KiB -> {rss_after} KiB (allowed +{slack} MiB)")
        assert not problems, "\n".join(problems)
