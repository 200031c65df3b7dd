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

# Runs in the child: one probe per interval (not catching up after a slow one), a line per
# probe on stdout: "<monotonic start> <latency s> <status>". Status "ok" only for a complete
# "HTTP/1.x 200" answer.
_PROBE_SRC = r"""
import os, re, socket, sys, time
host, port = sys.argv[1], int(sys.argv[2])
interval, timeout = float(sys.argv[3]), float(sys.argv[4])
if os.geteuid() == 0:
    try:
        os.nice(-5)
    except OSError:
        pass
req = ("GET /healthz HTTP/1.1\r\nHost: %s:%d\r\nConnection: close\r\n\r\n" % (host, port)).encode()
def probe():
    t0 = time.monotonic()
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        s.connect((host, port))
        s.sendall(req)
        buf = b""
        while True:
            left = timeout - (time.monotonic() - t0)
            if left <= 0:
                return t0, "timeout"
            s.settimeout(left)
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
            head, sep, body = buf.partition(b"\r\n\r\n")
            if sep:
                m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                if m and len(body) >= int(m.group(1)):
                    break
        if not re.match(rb"HTTP/1\.[01] 200 ", buf):
            return t0, "bad-answer:" + repr(buf[:60]).replace(" ", "_")
        return t0, "ok"
    except socket.timeout:
        return t0, "timeout"
    except OSError as e:
        return t0, "error:" + (e.strerror or str(e)).replace(" ", "_")
    finally:
        s.close()
nxt = time.monotonic()
while True:
    t0, status = probe()
    print("%.6f %.6f %s" % (t0, time.monotonic() - t0, status), flush=True)
    nxt += interval
    now = time.monotonic()
    if nxt < now:
        nxt = now
    time.sleep(nxt - now)
"""


class HealthProbe:
    """Probes http://host:port/healthz every `interval` s, each probe bounded by `timeout` s.
    Use as a context manager (or start()/stop()); `samples` is a list of
    (seconds since start, latency s, status)."""

    def __init__(self, port: int, interval: float = 0.1, timeout: float = 1.0,
                 host: str = LOOPBACK):
        self.port = port
        self.host = host
        self.interval = interval
        self.timeout = timeout
        self.samples: list[tuple[float, float, str]] = []
        self._lock = threading.Lock()
        self._proc: Optional[subprocess.Popen] = None
        self._reader: Optional[threading.Thread] = None
        self._t0 = 0.0
        self._marks: list[tuple[float, str]] = []

    def start(self) -> "HealthProbe":
        self._t0 = time.monotonic()
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _PROBE_SRC, self.host, str(self.port), str(self.interval),
             str(self.timeout)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._reader = threading.Thread(target=self._read, daemon=True, name="healthz-probe")
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for raw in iter(self._proc.stdout.readline, b""):
            parts = raw.decode("ascii", "replace").split()
            if len(parts) != 3:
                continue
            with self._lock:
                self.samples.append((float(parts[0]) - self._t0, float(parts[1]), parts[2]))

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

    def report(self, bound: Optional[float] = None, worst: int = 15) -> str:
        with self._lock:
            samples = list(self.samples)
            marks = list(self._marks)
        if not samples:
            return "no healthz samples at all"
        lats = sorted(lat for _, lat, _ in samples)
        bad = [s for s in samples if s[2] != "ok" or (bound is not None and s[1] >= bound)]
        pct = lambda q: lats[min(len(lats) - 1, int(q * len(lats)))]  # noqa: E731
        lines = [f"{len(samples)} healthz probes every {self.interval * 1000:.0f} ms (timeout "
                 f"{self.timeout:.1f} s): p50 {pct(0.5) * 1000:.1f} ms, p99 "
                 f"{pct(0.99) * 1000:.1f} ms, max {lats[-1] * 1000:.1f} ms; "
                 f"{len(bad)} late or failed" + (f" (bound {bound * 1000:.0f} ms)" if bound else "")]
        if bad:
            first, last = bad[0][0], bad[-1][0]
            lines.append(f"late/failed probes from t={first:.2f}s to t={last:.2f}s; the worst:")
            for t, lat, st in sorted(bad, key=lambda s: -s[1])[:worst]:
                lines.append(f"  t={t:7.2f}s  {lat * 1000:8.1f} ms  {st}")
        if marks:
            lines.append("test events: " + ", ".join(f"t={t:.2f}s {w}" for t, w in marks))
        return "\n".join(lines)

    def assert_responsive(self, bound: float, what: str, min_samples: int = 5) -> None:
        """Every probe answered 200 in less than `bound` seconds, and there were at least
        `min_samples` of them (a probe that never ran proves nothing)."""
        with self._lock:
            samples = list(self.samples)
        ok = (len(samples) >= min_samples
              and all(st == "ok" and lat < bound for _, lat, st in samples))
        assert ok, (f"tcpfault's /healthz was not answered (200) within {bound * 1000:.0f} ms "
                    f"while {what}\n{self.report(bound)}")


@contextlib.contextmanager
def probing(port: int, interval: float = 0.1, timeout: float = 1.0):
    probe = HealthProbe(port, interval=interval, timeout=timeout)
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
        for p in procs:
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
