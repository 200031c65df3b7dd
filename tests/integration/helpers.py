"""Shared helpers for the tcpfault integration tests: the proxy process, small TCP servers,
socket reading with deadlines, and process inspection.

Only the Python standard library is used. Everything listens on loopback with port 0.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import re
import resource
import selectors
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Optional

HERE = Path(__file__).resolve().parent
SOURCE_DIR = Path(os.environ.get("TCPFAULT_SOURCE_DIR") or HERE.parents[1])
BIN = Path(os.environ.get("TCPFAULT_BIN") or (HERE.parents[1] / "build" / "tcpfault"))

LOOPBACK = "127.0.0.1"
MiB = 1 << 20
KiB = 1 << 10


# --------------------------------------------------------------------------------------------
# addresses


def parse_addr(addr: str) -> tuple[str, int]:
    """'127.0.0.1:4321' or '[::1]:4321' -> (host, port)."""
    m = re.fullmatch(r"\[([^\]]+)\]:(\d+)|([^:\[\]]+):(\d+)", addr)
    if not m:
        raise ValueError(f"not a host:port address: {addr!r}")
    if m.group(1) is not None:
        return m.group(1), int(m.group(2))
    return m.group(3), int(m.group(4))


def free_port(host: str = LOOPBACK) -> int:
    """A port nothing listens on right now (bound then released)."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def ipv6_loopback_available() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def raise_nofile_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# --------------------------------------------------------------------------------------------
# the proxy process


class ProxyProcess:
    """A running tcpfault. stdout and stderr are drained continuously by background threads
    (so the proxy never blocks on a full pipe); stderr lines are parsed as JSON when they can
    be and kept in order, so tests can wait for log events with a deadline."""

    def __init__(self, args: list[str], cwd: Optional[Path] = None, desc: str = "",
                 prefix: Optional[list[str]] = None):
        # prefix: a command that execs tcpfault in the end (e.g. unshare), so the pid is still
        # tcpfault's own.
        self.args = [str(a) for a in (prefix or [])] + [str(BIN)] + [str(a) for a in args]
        self.desc = desc or " ".join(str(a) for a in args)
        self._cond = threading.Condition()
        self.lines: list[str] = []  # raw stderr lines
        self.records: list[dict] = []  # one per stderr line; {"_raw": line} when not JSON
        self.stdout_chunks: list[bytes] = []
        self.proc = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=str(cwd) if cwd else None,
        )
        self.pid = self.proc.pid
        self._t_err = threading.Thread(target=self._drain_stderr, daemon=True)
        self._t_out = threading.Thread(target=self._drain_stdout, daemon=True)
        self._t_err.start()
        self._t_out.start()
        self.listen_addrs: dict[str, tuple[str, int]] = {}
        self.exit_time: Optional[float] = None
        # Set once the test signals the process or waits for its exit: an exit before that
        # is a crash, reported at teardown.
        self.exit_expected = False

    # -- draining

    def _drain_stderr(self) -> None:
        for raw in iter(self.proc.stderr.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict):
                    rec = {"_raw": line}
            except ValueError:
                rec = {"_raw": line}
            with self._cond:
                self.lines.append(line)
                self.records.append(rec)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def _drain_stdout(self) -> None:
        for chunk in iter(lambda: self.proc.stdout.read1(65536), b""):
            with self._cond:
                self.stdout_chunks.append(chunk)

    # -- inspection

    def stderr_text(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def stdout_text(self) -> str:
        with self._cond:
            return b"".join(self.stdout_chunks).decode("utf-8", "replace")

    def running(self) -> bool:
        return self.proc.poll() is None

    def mark(self) -> int:
        """Index of the next stderr record: pass it as `since` to only see later events."""
        with self._cond:
            return len(self.records)

    def find_logs(self, msg: str, since: int = 0, **fields) -> list[dict]:
        with self._cond:
            return [r for r in self.records[since:] if _rec_matches(r, msg, fields)]

    def wait_for_log(self, msg: str, timeout: float = 5.0, since: int = 0, count: int = 1,
                     **fields) -> list[dict]:
        """Waits until `count` JSON log records with this msg (and these field values) appeared
        at index >= since. Raises AssertionError (with the captured stderr) on timeout or exit."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [r for r in self.records[since:] if _rec_matches(r, msg, fields)]
                if len(found) >= count:
                    return found
                exited = self.proc.poll() is not None and not self._t_err.is_alive()
                left = deadline - time.monotonic()
                if exited or left <= 0:
                    why = f"exited with {self.proc.returncode}" if exited else f"{timeout}s passed"
                    raise AssertionError(
                        f"tcpfault: expected {count} log line(s) msg={msg!r} {fields or ''} "
                        f"but {why}; stderr so far:\n{_indent(self.stderr_text_locked())}")
                self._cond.wait(min(left, 0.2))

    def stderr_text_locked(self) -> str:
        return "\n".join(self.lines)

    def wait_listening(self, count: int = 1, timeout: float = 10.0) -> dict[str, tuple[str, int]]:
        recs = self.wait_for_log("listening", timeout=timeout, count=count)
        for r in recs:
            assert "proxy" in r and "addr" in r, f"listening line without proxy/addr: {r}"
            host, port = parse_addr(r["addr"])
            assert port != 0, f"listening line shows port 0 instead of the real port: {r}"
            self.listen_addrs[r["proxy"]] = (host, port)
        return self.listen_addrs

    def addr(self, name: str = "main") -> tuple[str, int]:
        return self.listen_addrs[name]

    def rss_kib(self) -> int:
        return read_rss_kib(self.pid)

    def fd_count(self) -> int:
        return count_fds(self.pid)

    def wait_fds_at_most(self, n: int, timeout: float = 5.0) -> int:
        """Polls the proxy's open file descriptors until there are at most n (connections
        closed on both sides must release their sockets). Returns the last count."""
        deadline = time.monotonic() + timeout
        while True:
            cur = self.fd_count()
            if cur <= n:
                return cur
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"tcpfault still has {cur} open file descriptors {timeout}s after all "
                    f"connections ended, expected at most {n} (leaked sockets?)")
            time.sleep(0.05)  # no event to wait for: the count is polled

    # -- stopping

    def signal(self, sig: int) -> None:
        if sig != signal.SIGHUP:
            self.exit_expected = True
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        """Waits for exit; returns the exit code or raises AssertionError on timeout."""
        self.exit_expected = True
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"tcpfault did not exit within {timeout}s; stderr:\n{_indent(self.stderr_text())}")
        if self.exit_time is None:
            self.exit_time = time.monotonic()
        self._t_err.join(2)
        self._t_out.join(2)
        return rc

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        self.exit_expected = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        self._t_err.join(2)
        self._t_out.join(2)
        for f in (self.proc.stdout, self.proc.stderr):
            try:
                f.close()
            except Exception:
                pass


def _rec_matches(rec: dict, msg: str, fields: dict) -> bool:
    if rec.get("msg") != msg:
        return False
    return all(rec.get(k) == v for k, v in fields.items())


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines()) or "    (empty)"


def run_tcpfault(args: Iterable[str], timeout: float = 10.0, cwd: Optional[Path] = None
                 ) -> subprocess.CompletedProcess:
    """Runs tcpfault to completion (for --version, --check, ...)."""
    return subprocess.run([str(BIN)] + [str(a) for a in args], stdin=subprocess.DEVNULL,
                          capture_output=True, timeout=timeout, cwd=str(cwd) if cwd else None,
                          text=True)


def proxy_yaml(proxies: list[dict], **top) -> str:
    """A config file text: admin off, JSON logs, the given proxies (dicts of scalar values)."""
    out = ['admin: {listen: "off"}', "log: {format: json, level: info}"]
    for k, v in top.items():
        out.append(f"{k}: {v}")
    out.append("proxies:")
    for p in proxies:
        first = True
        for k, v in p.items():
            out.append(f"  {'- ' if first else '  '}{k}: {_yaml_scalar(v)}")
            first = False
    return "\n".join(out) + "\n"


def _yaml_scalar(v) -> str:
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid YAML double-quoted scalar
    return str(v)


# --------------------------------------------------------------------------------------------
# process inspection


def count_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def read_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


# --------------------------------------------------------------------------------------------
# servers


class TcpServer:
    """Threaded TCP server: accepts in a thread and runs handler(conn) in a thread per
    connection. Accepted sockets are also put in `accepted` (counted) for tests that want to
    drive them themselves (handler=None)."""

    def __init__(self, handler: Optional[Callable[[socket.socket], None]] = None,
                 host: str = LOOPBACK, backlog: int = 1024):
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(fam, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(backlog)
        self.host = host
        self.port = self.sock.getsockname()[1]
        self.handler = handler
        self._lock = threading.Condition()
        self.accepted: list[socket.socket] = []
        self.errors: list[BaseException] = []
        self._closed = False
        self._threads: list[threading.Thread] = []
        self._t = threading.Thread(target=self._accept_loop, daemon=True)
        self._t.start()

    @property
    def addr(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                if self._closed:
                    conn.close()
                    return
                self.accepted.append(conn)
                self._lock.notify_all()
            if self.handler is not None:
                t = threading.Thread(target=self._run, args=(conn,), daemon=True)
                self._threads.append(t)
                t.start()

    def _run(self, conn: socket.socket) -> None:
        try:
            self.handler(conn)
        except BaseException as e:  # recorded for the test to assert on
            with self._lock:
                self.errors.append(e)

    def count(self) -> int:
        with self._lock:
            return len(self.accepted)

    def wait_accepted(self, n: int = 1, timeout: float = 5.0) -> socket.socket:
        """Waits until n connections were accepted; returns the n-th."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self.accepted) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"server {self.addr}: {len(self.accepted)} connection(s) accepted "
                        f"within {timeout}s, expected {n}")
                self._lock.wait(left)
            return self.accepted[n - 1]

    def join_handlers(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for t in list(self._threads):
            t.join(max(0.0, deadline - time.monotonic()))
            assert not t.is_alive(), f"server {self.addr}: a handler is still running"

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conns = list(self.accepted)
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self._t.join(2)
        for c in conns:
            # shutdown first: close() alone leaves the kernel socket alive (no FIN) while a
            # handler thread is blocked in recv() on it.
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                c.close()
            except OSError:
                pass


def echo_handler(conn: socket.socket) -> None:
    """Echo until EOF, then close."""
    with conn:
        while True:
            data = conn.recv(65536)
            if not data:
                return
            conn.sendall(data)


class SelectorEchoServer:
    """Echo server on one selector thread, for many concurrent connections. Echoes with
    backpressure (stops reading a connection whose pending output is large); on EOF from the
    peer it flushes and closes. Tracks how many connections are open at once."""

    HIGH_WATER = 256 * KiB

    def __init__(self, host: str = LOOPBACK, backlog: int = 4096):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(backlog)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.addr = f"{host}:{self.port}"
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.sock, selectors.EVENT_READ, None)
        self._cond = threading.Condition()
        self.accepted = 0
        self.open = 0
        self.max_open = 0
        self.errors: list[str] = []
        self._stop = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self.sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()

    def _loop(self) -> None:
        conns: dict[socket.socket, dict] = {}
        while not self._stop:
            for key, ev in self.sel.select(timeout=0.5):
                if key.data == "wake":
                    return self._shutdown(conns)
                if key.data is None:  # listener
                    while True:
                        try:
                            c, _ = self.sock.accept()
                        except BlockingIOError:
                            break
                        except OSError as e:
                            self.errors.append(f"accept: {e}")
                            break
                        c.setblocking(False)
                        st = {"out": bytearray(), "eof": False, "reading": True}
                        conns[c] = st
                        self.sel.register(c, selectors.EVENT_READ, st)
                        with self._cond:
                            self.accepted += 1
                            self.open += 1
                            self.max_open = max(self.max_open, self.open)
                            self._cond.notify_all()
                    continue
                c, st = key.fileobj, key.data
                try:
                    if ev & selectors.EVENT_READ and st["reading"]:
                        data = c.recv(65536)
                        if data:
                            st["out"] += data
                        else:
                            st["eof"] = True
                    if st["out"]:  # try to flush whenever something is pending
                        try:
                            n = c.send(st["out"])
                            del st["out"][:n]
                        except BlockingIOError:
                            pass
                except OSError as e:
                    self.errors.append(f"conn: {e}")
                    self._drop(conns, c)
                    continue
                if st["eof"] and not st["out"]:
                    self._drop(conns, c)
                    continue
                st["reading"] = not st["eof"] and len(st["out"]) < self.HIGH_WATER
                mask = (selectors.EVENT_READ if st["reading"] else 0) | (
                    selectors.EVENT_WRITE if st["out"] else 0)
                self.sel.modify(c, mask, st)

    def _drop(self, conns, c) -> None:
        self.sel.unregister(c)
        c.close()
        del conns[c]
        with self._cond:
            self.open -= 1
            self._cond.notify_all()

    def _shutdown(self, conns) -> None:
        for c in list(conns):
            self._drop(conns, c)

    def wait_open(self, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.open < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"echo server: {self.open} connections open at once within {timeout}s "
                        f"(accepted {self.accepted}), expected {n}")
                self._cond.wait(left)

    def close(self) -> None:
        self._stop = True
        self._wake_w.send(b"x")
        self._t.join(5)
        self.sel.close()
        self.sock.close()
        self._wake_r.close()
        self._wake_w.close()


# --------------------------------------------------------------------------------------------
# client-side helpers


def connect(addr: tuple[str, int], timeout: float = 5.0) -> socket.socket:
    host, port = addr
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect((host, port))
    return s


def recv_exact(sock: socket.socket, n: int, timeout: float = 10.0) -> bytes:
    """Exactly n bytes, or AssertionError on EOF / deadline (errors propagate)."""
    deadline = time.monotonic() + timeout
    buf = bytearray()
    while len(buf) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"got {len(buf)} of {n} bytes within {timeout}s")
        sock.settimeout(left)
        try:
            chunk = sock.recv(min(n - len(buf), 1 << 20))
        except socket.timeout:
            continue
        if not chunk:
            raise AssertionError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def recv_until_eof(sock: socket.socket, timeout: float = 10.0, limit: int = 1 << 30) -> bytes:
    """Everything up to EOF; AssertionError on deadline; socket errors propagate."""
    deadline = time.monotonic() + timeout
    buf = bytearray()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no EOF within {timeout}s (got {len(buf)} bytes)")
        sock.settimeout(left)
        try:
            chunk = sock.recv(1 << 20)
        except socket.timeout:
            continue
        if not chunk:
            return bytes(buf)
        buf += chunk
        assert len(buf) <= limit, f"more than {limit} bytes before EOF"


def read_outcome(sock: socket.socket, timeout: float) -> tuple[str, bytes, float]:
    """Reads until EOF, error or deadline. Returns (outcome, data, seconds) where outcome is
    'eof', 'reset', 'timeout' or the name of another OSError."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    buf = bytearray()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return "timeout", bytes(buf), time.monotonic() - t0
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        except ConnectionResetError:
            return "reset", bytes(buf), time.monotonic() - t0
        except OSError as e:
            return errno.errorcode.get(e.errno, str(e)), bytes(buf), time.monotonic() - t0
        if not chunk:
            return "eof", bytes(buf), time.monotonic() - t0
        buf += chunk


def set_linger_reset(sock: socket.socket) -> None:
    """close() after this sends RST instead of FIN."""
    import struct
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def reset_close(sock: socket.socket) -> None:
    set_linger_reset(sock)
    sock.close()


class Stream:
    """A reproducible byte stream made of random chunks, hashed as it is produced."""

    def __init__(self, total: int, seed: int, chunk: int = MiB):
        self.total = total
        self.rng = random.Random(seed)
        self.chunk = chunk
        self.sha = hashlib.sha256()

    def chunks(self):
        left = self.total
        while left > 0:
            n = min(self.chunk, left)
            data = self.rng.randbytes(n)
            self.sha.update(data)
            left -= n
            yield data


def send_stream(sock: socket.socket, total: int, seed: int, progress: Optional[list] = None,
                piece_max: int = 256 * KiB, shut_wr: bool = True) -> str:
    """Sends `total` random bytes in pieces of random sizes; returns their sha256 hex."""
    rng = random.Random(seed ^ 0x5EED)
    st = Stream(total, seed)
    for data in st.chunks():
        view = memoryview(data)
        while view:
            n = rng.randint(1, piece_max)
            sock.sendall(view[:n])
            if progress is not None:
                progress[0] += len(view[:n])
            view = view[n:]
    if shut_wr:
        sock.shutdown(socket.SHUT_WR)
    return st.sha.hexdigest()


def recv_stream_slowly(sock: socket.socket, seed: int, timeout: float, max_read: int = 64 * KiB,
                       pause_every: int = 64) -> tuple[int, str]:
    """Reads to EOF in random-size small reads with occasional short pauses.
    Returns (bytes, sha256 hex)."""
    rng = random.Random(seed)
    sha = hashlib.sha256()
    total = 0
    deadline = time.monotonic() + timeout
    buf = bytearray(max_read)
    view = memoryview(buf)
    # Set once: another thread may be sending on the same socket.
    sock.settimeout(timeout)
    while True:
        if time.monotonic() > deadline:
            raise AssertionError(f"no EOF within {timeout}s after {total} bytes")
        n = sock.recv_into(view[: rng.randint(1, max_read)])
        if n == 0:
            return total, sha.hexdigest()
        sha.update(view[:n])
        total += n
        if rng.randrange(pause_every) == 0:
            time.sleep(rng.uniform(0.0005, 0.003))  # a slow consumer, not synchronisation


def run_threads(targets: list[tuple[str, Callable[[], object]]], timeout: float) -> dict:
    """Runs each callable in a thread; returns {name: result}; re-raises the first failure
    (with the thread name) and fails if a thread is still running at the deadline."""
    results: dict = {}
    errors: list[tuple[str, BaseException]] = []

    def wrap(name, fn):
        try:
            results[name] = fn()
        except BaseException as e:
            errors.append((name, e))

    threads = [threading.Thread(target=wrap, args=(n, f), daemon=True, name=n)
               for n, f in targets]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
        if errors:
            break
    if errors:
        name, e = errors[0]
        raise AssertionError(f"{name}: {type(e).__name__}: {e}") from e
    stuck = [t.name for t in threads if t.is_alive()]
    assert not stuck, f"threads still running after {timeout}s: {stuck}"
    return results
