"""Freeze detection for the issue #12 tests (test_freeze_*.py, test_soak_churn.py).

A frozen event loop does not crash and does not log: it simply stops answering. The one
observable that covers every way it can freeze is the admin server, which runs on the primary
event loop: `HealthProbe` asks `GET /healthz` every `interval` seconds with its own short
timeout and records the latency of each answer; a test runs its bad case while the probe runs
and then asserts the worst latency (`assert_responsive`), reporting the samples on failure.

The probe runs in a child process (a few lines of Python, started by a reader thread here), not
in a thread of the test: the tests drive hundreds of sockets from Python, and a probe sharing
their interpreter lock would measure the test's own scheduling instead of the proxy's. As root,
the probe also asks for a slightly higher CPU priority (nice -5) and load generators can lower
theirs (`lower_thread_priority`), so on a busy 2-core box a late answer means a late proxy.

Also here: the CPU time of a process (a spinning timer shows as 100 % CPU), a guard that
SIGKILLs a proxy left frozen by a failing test (so the conftest teardown, which SIGTERMs it,
does not hang or turn an expected failure into an error), and small HTTP/metrics helpers.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Iterable, Optional

from admin_helpers import Admin
from helpers import LOOPBACK, parse_addr

# Runs in the child: one round per interval (not catching up after a slow one), a line per
# probe on stdout: "<kind> <monotonic start> <latency s> <status>", kind H for /healthz, C for
# the canary echo. Status "ok" only for a complete "HTTP/1.x 200" answer (H) or the 8 bytes
# echoed back (C).
_PROBE_SRC = r"""
import os, re, socket, sys, time
host, port = sys.argv[1], int(sys.argv[2])
interval, timeout = float(sys.argv[3]), float(sys.argv[4])
canary = (sys.argv[5], int(sys.argv[6])) if len(sys.argv) > 6 else None
if os.geteuid() == 0:
    try:
        os.nice(-5)
    except OSError:
        pass
req = ("GET /healthz HTTP/1.1\r\nHost: %s:%d\r\nConnection: close\r\n\r\n" % (host, port)).encode()
def exchange(addr, payload, done):
    t0 = time.monotonic()
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        s.connect(addr)
        s.sendall(payload)
        buf = b""
        while not done(buf):
            left = timeout - (time.monotonic() - t0)
            if left <= 0:
                return t0, "timeout", buf
            s.settimeout(left)
            chunk = s.recv(4096)
            if not chunk:
                return t0, "eof", buf
            buf += chunk
        return t0, "ok", buf
    except socket.timeout:
        return t0, "timeout", b""
    except OSError as e:
        return t0, "error:" + (e.strerror or str(e)).replace(" ", "_"), b""
    finally:
        s.close()
def http_done(buf):
    head, sep, body = buf.partition(b"\r\n\r\n")
    m = re.search(rb"(?im)^content-length:\s*(\d+)", head) if sep else None
    return bool(m) and len(body) >= int(m.group(1))
def healthz():
    t0, st, buf = exchange((host, port), req, http_done)
    if st in ("ok", "eof") and not re.match(rb"HTTP/1\.[01] 200 ", buf):
        st = "bad-answer:" + repr(buf[:60]).replace(" ", "_")
    elif st == "eof":
        st = "ok"  # answered and closed (Connection: close) without a Content-Length
    return t0, st
def echo():
    t0, st, buf = exchange(canary, b"canary!\n", lambda b: len(b) >= 8)
    if st == "ok" and buf[:8] != b"canary!\n":
        st = "bad-echo"
    return t0, st
nxt = time.monotonic()
while True:
    t0, st = healthz()
    print("H %.6f %.6f %s" % (t0, time.monotonic() - t0, st), flush=True)
    if canary:
        t0, st = echo()
        print("C %.6f %.6f %s" % (t0, time.monotonic() - t0, st), flush=True)
    nxt += interval
    now = time.monotonic()
    if nxt < now:
        nxt = now
    time.sleep(nxt - now)
"""


class HealthProbe:
    """Probes http://host:port/healthz every `interval` s, each probe bounded by `timeout` s.
    Use as a context manager (or start()/stop()); `samples` is a list of
    (seconds since start, latency s, status).

    With `canary` (the address of a proxy whose upstream echoes), each round also sends 8 bytes
    through that proxy on a new connection and waits for them (`canary_samples`): with
    `workers: N` the admin API answers from the first event loop only, and the kernel spreads
    new connections over every loop, so a frozen worker loop shows there."""

    def __init__(self, port: int, interval: float = 0.1, timeout: float = 1.0,
                 host: str = LOOPBACK, canary: Optional[tuple[str, int]] = None):
        self.port = port
        self.host = host
        self.interval = interval
        self.timeout = timeout
        self.canary = canary
        self.samples: list[tuple[float, float, str]] = []
        self.canary_samples: list[tuple[float, float, str]] = []
        self._lock = threading.Lock()
        self._proc: Optional[subprocess.Popen] = None
        self._reader: Optional[threading.Thread] = None
        self._t0 = 0.0
        self._marks: list[tuple[float, str]] = []

    def start(self) -> "HealthProbe":
        self._t0 = time.monotonic()
        args = [sys.executable, "-c", _PROBE_SRC, self.host, str(self.port), str(self.interval),
                str(self.timeout)]
        if self.canary is not None:
            args += [self.canary[0], str(self.canary[1])]
        self._proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE)
        self._reader = threading.Thread(target=self._read, daemon=True, name="healthz-probe")
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for raw in iter(self._proc.stdout.readline, b""):
            parts = raw.decode("ascii", "replace").split()
            if len(parts) != 4:
                continue
            sample = (float(parts[1]) - self._t0, float(parts[2]), parts[3])
            with self._lock:
                (self.samples if parts[0] == "H" else self.canary_samples).append(sample)

    def mark(self, what: str) -> None:
        """Notes an event of the test on the probe's timeline (shown in failure reports)."""
        with self._lock:
            self._marks.append((time.monotonic() - self._t0, what))

    def wait_samples(self, n: int, timeout: float = 10.0) -> None:
        """Waits until at least n probes have answered or timed out."""
        deadline = time.monotonic() + timeout
        while self.count() < n:
            assert time.monotonic() < deadline, (
                f"healthz probe: {self.count()} samples within {timeout}s, expected {n} "
                f"(probe process exit code {self._proc.poll() if self._proc else None})")
            time.sleep(self.interval / 4)  # samples arrive from the reader thread

    def watch(self, seconds: float) -> None:
        """Lets the probe run for a measurement window while the bad case goes on (a window of
        time is what is measured here, so this is a sleep, not a synchronisation)."""
        time.sleep(seconds)

    def count(self) -> int:
        with self._lock:
            return len(self.samples)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        if self._reader is not None:
            self._reader.join(5)
        if self._proc is not None:
            for f in (self._proc.stdout, self._proc.stderr):
                if f is not None:
                    f.close()

    def __enter__(self) -> "HealthProbe":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- verdicts

    def max_latency(self) -> float:
        with self._lock:
            return max((lat for _, lat, _ in self.samples), default=float("inf"))

    def report(self, bound: Optional[float] = None, worst: int = 15,
               canary_bound: Optional[float] = None) -> str:
        with self._lock:
            marks = list(self._marks)
        lines = [self._summary("healthz", self.samples, bound, worst)]
        if self.canary is not None:
            lines.append(self._summary("canary echo", self.canary_samples, canary_bound, worst))
        if marks:
            lines.append("test events: " + ", ".join(f"t={t:.2f}s {w}" for t, w in marks))
        return "\n".join(lines)

    def _summary(self, what: str, samples_ref: list, bound: Optional[float], worst: int) -> str:
        with self._lock:
            samples = list(samples_ref)
        if not samples:
            return f"no {what} samples at all"
        lats = sorted(lat for _, lat, _ in samples)
        bad = [s for s in samples if s[2] != "ok" or (bound is not None and s[1] >= bound)]
        pct = lambda q: lats[min(len(lats) - 1, int(q * len(lats)))]  # noqa: E731
        lines = [f"{len(samples)} {what} probes every {self.interval * 1000:.0f} ms (timeout "
                 f"{self.timeout:.1f} s): p50 {pct(0.5) * 1000:.1f} ms, p99 "
                 f"{pct(0.99) * 1000:.1f} ms, max {lats[-1] * 1000:.1f} ms; "
                 f"{len(bad)} late or failed"
                 + (f" (bound {bound * 1000:.0f} ms)" if bound else "")]
        if bad:
            lines.append(f"late/failed {what} probes from t={bad[0][0]:.2f}s to "
                         f"t={bad[-1][0]:.2f}s; the worst:")
            for t, lat, st in sorted(bad, key=lambda s: -s[1])[:worst]:
                lines.append(f"  t={t:7.2f}s  {lat * 1000:8.1f} ms  {st}")
        return "\n".join(lines)

    def assert_responsive(self, bound: float, what: str, min_samples: int = 5,
                          canary_bound: float = 0.5) -> None:
        """Every /healthz probe answered 200 in less than `bound` seconds, and there were at
        least `min_samples` of them (a probe that never ran proves nothing). With a canary,
        every echo through it came back within `canary_bound` (looser: it includes the test's
        own echo server; it is there to catch a frozen worker loop, which never answers)."""
        with self._lock:
            samples = list(self.samples)
            canary = list(self.canary_samples)
        ok = (len(samples) >= min_samples
              and all(st == "ok" and lat < bound for _, lat, st in samples))
        if self.canary is not None:
            ok = ok and len(canary) >= min_samples and all(
                st == "ok" and lat < canary_bound for _, lat, st in canary)
        assert ok, (f"tcpfault's /healthz (or its data path) was not answered within "
                    f"{bound * 1000:.0f} ms while {what}\n"
                    f"{self.report(bound, canary_bound=canary_bound)}")


@contextlib.contextmanager
def probing(port: int, interval: float = 0.1, timeout: float = 1.0,
            canary: Optional[tuple[str, int]] = None):
    probe = HealthProbe(port, interval=interval, timeout=timeout, canary=canary)
    probe.start()
    try:
        yield probe
    finally:
        probe.stop()


# --------------------------------------------------------------------------------------------
# process helpers


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU share of a process over an interval: a loop spinning on a timer shows as ~1.0."""

    def __init__(self, pid: int):
        self.pid = pid
        self.cpu0 = cpu_seconds(pid)
        self.t0 = time.monotonic()

    def share(self) -> float:
        return (cpu_seconds(self.pid) - self.cpu0) / max(1e-6, time.monotonic() - self.t0)


def is_asan_build(pid: int) -> bool:
    """Whether the process runs AddressSanitizer (as test_soak.py detects it)."""
    with open(f"/proc/{pid}/maps") as f:
        if "libasan" in f.read():
            return True
    with open(f"/proc/{pid}/exe", "rb") as f:  # clang links the runtime statically
        return b"AddressSanitizer" in f.read()


def thread_states(pid: int) -> str:
    """One word per thread: its name, state (R running, S sleeping...) and CPU seconds."""
    out = []
    tck = os.sysconf("SC_CLK_TCK")
    for tid in sorted(os.listdir(f"/proc/{pid}/task"), key=int):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                head, rest = f.read().rsplit(")", 1)
            fields = rest.split()
            name = head.split("(", 1)[1]
            out.append(f"{name}:{fields[0]}:{(int(fields[11]) + int(fields[12])) / tck:.1f}s")
        except OSError:
            continue
    return " ".join(out)


def stack_dump(pid: int, timeout: float = 30.0) -> str:
    """Every thread's backtrace with gdb, when gdb is installed (a diagnostic for a frozen
    process; empty otherwise)."""
    import shutil
    if shutil.which("gdb") is None:
        return ""
    try:
        r = subprocess.run(["gdb", "-p", str(pid), "-batch", "-nx", "-ex", "set pagination off",
                            "-ex", "thread apply all bt 25"], capture_output=True, text=True,
                           timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return "(gdb timed out)"
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith(("#", "Thread"))]
    return "\n".join(lines[:200])


def lower_thread_priority(nice: int = 5) -> None:
    """Lowers the priority of the calling thread only (Linux: a thread is a task), for load
    generators sharing 2 cores with the proxy and the probe."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except OSError:
        pass


@contextlib.contextmanager
def kill_on_failure(*procs):
    """If the body fails (an assertion, a pytest-timeout), SIGKILLs the given proxies: a frozen
    proxy ignores SIGTERM, and the conftest teardown would otherwise spend 10 s on it and report
    an error on top of the (expected) failure. A passing body leaves them to the teardown."""
    try:
        yield
    except BaseException:
        # A list is read at failure time (the factory's list of every process it started).
        flat = [x for p in procs for x in (p if isinstance(p, list) else [p])]
        for p in flat:
            if p is not None:
                p.exit_expected = True
                p.kill()
        raise


def sigterm_and_time(p, limit: float) -> float:
    """Sends SIGTERM and waits up to `limit` s for the exit; returns the seconds it took.
    Raises AssertionError (and SIGKILLs the process) if it is still running then."""
    p.exit_expected = True
    t0 = time.monotonic()
    p.proc.send_signal(signal.SIGTERM)
    try:
        rc = p.proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        cpu = cpu_seconds(p.pid)
        p.kill()
        raise AssertionError(
            f"tcpfault still running {limit:.1f}s after SIGTERM (CPU time so far {cpu:.1f}s); "
            f"stderr tail:\n{p.stderr_text()[-3000:]}")
    took = time.monotonic() - t0
    assert rc == 0, f"tcpfault exited with {rc} on SIGTERM; stderr:\n{p.stderr_text()[-3000:]}"
    return took


def toxiproxy_api_port(proc, timeout: float = 10.0) -> int:
    """The Toxiproxy API's port from its 'toxiproxy api listening' log line."""
    rec = proc.wait_for_log("toxiproxy api listening", timeout=timeout)[0]
    host, port = parse_addr(rec["addr"])
    assert host == LOOPBACK and port != 0, f"unexpected Toxiproxy API address in {rec}"
    return port


# --------------------------------------------------------------------------------------------
# metrics


def metric_sum(api: Admin, name: str, **labels) -> float:
    """Sum of every sample of `name` whose labels include `labels`."""
    m = api.scrape()
    return sum(v for lb, v in m.samples(name) if all(lb.get(k) == x for k, x in labels.items()))


def metric_by(api: Admin, name: str, key: str, **labels) -> dict:
    """{label value of `key`: value} for the samples of `name` matching `labels`."""
    m = api.scrape()
    out: dict = {}
    for lb, v in m.samples(name):
        if all(lb.get(k) == x for k, x in labels.items()):
            out[lb.get(key)] = out.get(lb.get(key), 0.0) + v
    return out


def wait_until(pred, timeout: float, what: str, interval: float = 0.05):
    """Polls pred() until it returns something truthy; AssertionError naming `what` (and the
    last value) after `timeout` s. For states only observable by asking (fd counts, gauges)."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = pred()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})")
        time.sleep(interval)


def close_all(socks: Iterable) -> None:
    for s in socks:
        try:
            s.close()
        except OSError:
            pass
