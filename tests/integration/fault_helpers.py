"""Extra helpers for the fault-engine integration tests (test_faults_*.py).

Builds on helpers.py / conftest.py (which belong to another suite and are not changed here):
a config builder with debug JSON logs and YAML flow-mapping rules, servers that send a known
pattern or record what they receive, timing helpers and a tcpdump wrapper.
"""

from __future__ import annotations

import errno
import re
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Optional

from helpers import KiB, TcpServer

# --------------------------------------------------------------------------------------------
# configuration


def fault_yaml(upstream: str, rules: list[str], seed: Optional[int] = None, name: str = "main",
               proxy_extra: str = "", top_extra: str = "") -> str:
    """A config with one proxy listening on 127.0.0.1:0, debug JSON logs, admin off.
    Each rule is a YAML flow mapping, e.g. '{name: r, fault: {type: reset}}'."""
    out = ['admin: {listen: "off"}', "log: {format: json, level: debug}"]
    if seed is not None:
        out.append(f"seed: {seed}")
    if top_extra:
        out.append(top_extra)
    out += ["proxies:", f"  - name: {name}", "    listen: 127.0.0.1:0",
            f'    upstream: "{upstream}"']
    if proxy_extra:
        out += ["    " + line for line in proxy_extra.splitlines()]
    if rules:
        out.append("    rules:")
        out += [f"      - {r}" for r in rules]
    else:
        out.append("    rules: []")
    return "\n".join(out) + "\n"


def start_proxy(tcpfault, upstream: str, rules: list[str], seed: Optional[int] = None, **kw):
    """Starts tcpfault (the conftest fixture) with fault_yaml(...) and waits until it listens."""
    return tcpfault.from_config(fault_yaml(upstream, rules, seed=seed, **kw))


# --------------------------------------------------------------------------------------------
# data

_PATTERN_UNIT = bytes(range(251))  # 251 is prime: a shifted copy never matches by accident


def pattern(n: int, offset: int = 0) -> bytes:
    """n bytes of a fixed non-repeating-per-KiB pattern starting at stream offset `offset`."""
    start = offset % 251
    reps = (start + n) // 251 + 1
    return (_PATTERN_UNIT * reps)[start:start + n]


def first_mismatch(got: bytes, want: bytes) -> int:
    """Index of the first differing byte (or len of the shorter one), -1 if equal."""
    if got == want:
        return -1
    for i in range(0, min(len(got), len(want)), 4096):
        if got[i:i + 4096] != want[i:i + 4096]:
            for j in range(i, min(i + 4096, len(got), len(want))):
                if got[j] != want[j]:
                    return j
    return min(len(got), len(want))


# --------------------------------------------------------------------------------------------
# servers


def sender_handler(total: int, chunk: int = 64 * KiB, then: str = "wait",
                   timeout: float = 20.0) -> Callable[[socket.socket], None]:
    """A handler that sends `total` pattern bytes, then either waits for the peer to end the
    connection ('wait') or closes ('close'). Socket errors (the proxy resets it) end it."""

    def handler(conn: socket.socket) -> None:
        conn.settimeout(timeout)
        try:
            data = pattern(total)
            view = memoryview(data)
            while view:
                n = conn.send(view[:chunk])
                view = view[n:]
            if then == "wait":
                while conn.recv(65536):
                    pass
        except OSError:
            pass
        finally:
            conn.close()

    return handler


class ConnRecord:
    def __init__(self):
        self.data = bytearray()
        self.end: Optional[str] = None  # 'eof' | 'reset' | other errno name
        self.end_time: Optional[float] = None
        self.chunks: list[tuple[float, int]] = []  # (monotonic time, size)


class Recorder:
    """A server that records everything each connection sends, and how it ended.
    `reply` (optional) is called with (conn, record, new bytes) on every read; `greeting` is
    sent on accept; with close_on_eof the server closes its socket when the peer's FIN (or an
    error) ends the connection, otherwise it stays open for the test to use."""

    def __init__(self, servers, reply: Optional[Callable] = None, greeting: bytes = b"",
                 close_on_eof: bool = False):
        self._cond = threading.Condition()
        self.greeting = greeting
        self.close_on_eof = close_on_eof
        self._recs: dict[int, ConnRecord] = {}  # id(socket) -> record
        self.reply = reply
        self.srv: TcpServer = servers.tcp(self._handler)
        self.addr = self.srv.addr

    def _handler(self, conn: socket.socket) -> None:
        rec = self._rec(conn)
        conn.settimeout(60)
        try:
            if self.greeting:
                try:
                    conn.sendall(self.greeting)
                except ConnectionResetError:
                    end = "reset"  # the RST arrived before/while greeting
                    return
                except OSError as e:
                    end = errno.errorcode.get(e.errno, str(e))
                    return
            while True:
                try:
                    b = conn.recv(65536)
                except ConnectionResetError:
                    end = "reset"
                    break
                except OSError as e:
                    end = errno.errorcode.get(e.errno, str(e))
                    break
                if not b:
                    end = "eof"
                    break
                with self._cond:
                    rec.data += b
                    rec.chunks.append((time.monotonic(), len(b)))
                    self._cond.notify_all()
                if self.reply is not None:
                    try:
                        self.reply(conn, rec, b)
                    except OSError:
                        pass
        finally:
            if self.close_on_eof:
                conn.close()
            with self._cond:
                rec.end = end if "end" in locals() else "error"
                rec.end_time = time.monotonic()
                self._cond.notify_all()

    def _rec(self, conn: socket.socket) -> ConnRecord:
        with self._cond:
            return self._recs.setdefault(id(conn), ConnRecord())

    def conn(self, n: int, timeout: float = 5.0) -> socket.socket:
        """The n-th accepted server-side socket (1-based)."""
        return self.srv.wait_accepted(n, timeout=timeout)

    def record(self, n: int, timeout: float = 5.0) -> ConnRecord:
        return self._rec(self.conn(n, timeout))

    def wait(self, n: int, pred: Callable[[ConnRecord], bool], timeout: float, what: str
             ) -> ConnRecord:
        rec = self.record(n, timeout)
        deadline = time.monotonic() + timeout
        with self._cond:
            while not pred(rec):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"server connection #{n}: {what} not seen within {timeout}s "
                        f"(received {len(rec.data)} bytes: {bytes(rec.data[-80:])!r}, "
                        f"end={rec.end})")
                self._cond.wait(min(left, 0.2))
            return rec

    def wait_data(self, n: int, data: bytes, timeout: float = 5.0) -> ConnRecord:
        """Waits until connection n received at least len(data) bytes and they equal data."""
        rec = self.wait(n, lambda r: len(r.data) >= len(data) or r.end is not None, timeout,
                        f"{data[:60]!r}")
        with self._cond:
            got = bytes(rec.data)
        assert got[:len(data)] == data and len(got) >= len(data), (
            f"server connection #{n}: expected to receive {data[:80]!r}, got {got[:200]!r} "
            f"(end={rec.end})")
        return rec

    def wait_end(self, n: int, timeout: float = 5.0) -> ConnRecord:
        return self.wait(n, lambda r: r.end is not None, timeout, "the end of the connection")

    def snapshot(self, n: int) -> bytes:
        rec = self.record(n)
        with self._cond:
            return bytes(rec.data)


def echo_reply(conn: socket.socket, rec: ConnRecord, data: bytes) -> None:
    conn.sendall(data)


# --------------------------------------------------------------------------------------------
# clients


def try_connect(addr: tuple[str, int], timeout: float = 2.0) -> tuple[str, Optional[socket.socket]]:
    """('ok', socket) | ('refused', None) | (errno name, None)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(addr)
        return "ok", s
    except ConnectionRefusedError:
        s.close()
        return "refused", None
    except OSError as e:
        s.close()
        return errno.errorcode.get(e.errno, str(e)) if e.errno else type(e).__name__, None


def recv_pieces(sock: socket.socket, n: int, timeout: float, quickack: bool = True
                ) -> list[tuple[float, bytes]]:
    """Reads exactly n bytes as fast as possible (non-blocking socket + selector), returning
    every recv's (monotonic time, bytes). With quickack, TCP_QUICKACK is set again after each
    read so the sender is never waiting for a delayed ACK. AssertionError on EOF/deadline."""
    sock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    if quickack:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
    out: list[tuple[float, bytes]] = []
    got = 0
    deadline = time.monotonic() + timeout
    try:
        while got < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"got {got} of {n} bytes within {timeout}s")
            if not sel.select(left):
                continue
            try:
                b = sock.recv(n - got)
            except BlockingIOError:
                continue
            if not b:
                raise AssertionError(f"EOF after {got} of {n} bytes")
            out.append((time.monotonic(), b))
            if quickack:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
            got += len(b)
    finally:
        sel.close()
        sock.setblocking(True)
    return out


def wait_until(pred: Callable[[], bool], timeout: float, what: str, poll: float = 0.01) -> None:
    """Polls pred (for states that have no event to wait on)."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        time.sleep(poll)


def send_outcome(sock: socket.socket, data: bytes) -> str:
    """'ok' or the error name of one send."""
    try:
        sock.send(data)
        return "ok"
    except BrokenPipeError:
        return "EPIPE"
    except ConnectionResetError:
        return "ECONNRESET"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e))


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def log_time(rec: dict) -> float:
    """The ts field of a log record ("2026-11-24T05:05:19.272Z") as seconds of the day
    (only differences between records are meaningful)."""
    m = re.search(r"T(\d\d):(\d\d):(\d\d(?:\.\d+)?)", rec["ts"])
    assert m, f"log record without a parsable ts: {rec}"
    return int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))


# --------------------------------------------------------------------------------------------
# ss / proc


def ss_skmem(local_port: int, peer_port: int) -> Optional[dict[str, int]]:
    """skmem fields (rb, tb, ...) of the socket 127.0.0.1:local_port <-> 127.0.0.1:peer_port
    as shown by `ss -tmni`, or None if not found."""
    out = subprocess.run(["ss", "-tmni", "state", "established", f"( sport = :{local_port} and "
                          f"dport = :{peer_port} )"], capture_output=True, text=True,
                         timeout=5).stdout
    m = re.search(r"skmem:\(([^)]*)\)", out)
    if not m:
        return None
    fields = {}
    for part in m.group(1).split(","):
        mm = re.fullmatch(r"([a-z_]+?)(\d+)", part.strip())
        if mm:
            fields[mm.group(1)] = int(mm.group(2))
    return fields


# --------------------------------------------------------------------------------------------
# tcpdump


class Capture:
    """tcpdump on lo for one port, writing a pcap file. start() returns once tcpdump printed
    "listening on"; stop() sends SIGINT and waits; packets() decodes the file."""

    def __init__(self, port: int, path: Path):
        self.port = port
        self.path = path
        self.proc: Optional[subprocess.Popen] = None
        self._err: list[str] = []
        self._listening = threading.Event()

    @staticmethod
    def available() -> Optional[str]:
        """None if tcpdump can be used, else the reason it cannot."""
        if shutil.which("tcpdump") is None:
            return "tcpdump is not installed"
        return None

    def start(self, timeout: float = 10.0) -> Optional[str]:
        """Starts the capture; returns None, or why it cannot capture."""
        self.proc = subprocess.Popen(
            # --immediate-mode: without it libpcap hands packets over in blocks (up to a
            # second late) and those still in the ring are lost at SIGINT.
            # -B/-s: a big ring and headers only, so heavy loopback traffic from other
            # processes does not make the kernel drop our packets.
            ["tcpdump", "-i", "lo", "--immediate-mode", "-B", "65536", "-s", "256",
             "-w", str(self.path), "-U", f"tcp port {self.port}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

        def drain():
            for raw in iter(self.proc.stderr.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip()
                self._err.append(line)
                if "listening on" in line:
                    self._listening.set()
            self._listening.set()  # exited: wake the waiter

        threading.Thread(target=drain, daemon=True).start()
        self._listening.wait(timeout)
        if self.proc.poll() is not None or not any("listening on" in l for l in self._err):
            self.stop()
            return "tcpdump cannot capture on lo: " + " | ".join(self._err)[-300:]
        return None

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def wait_for(self, pred: Callable[[list[dict]], bool], timeout: float = 3.0) -> list[dict]:
        """Re-reads the (packet-buffered) file until pred(packets) holds or the deadline;
        returns the last packets read."""
        deadline = time.monotonic() + timeout
        while True:
            pkts = self.packets()
            if pred(pkts) or time.monotonic() >= deadline:
                return pkts
            time.sleep(0.05)  # the capture file has no event to wait on

    def stats(self) -> str:
        return " | ".join(self._err)

    def packets(self) -> list[dict]:
        """[{src_port, dst_port, flags, line}] in capture order."""
        out = subprocess.run(["tcpdump", "-r", str(self.path), "-nn"], capture_output=True,
                             text=True, timeout=10).stdout
        pkts = []
        for line in out.splitlines():
            m = re.search(r"IP6? \S+\.(\d+) > \S+\.(\d+): Flags \[([^\]]*)\]", line)
            if m:
                pkts.append({"src_port": int(m.group(1)), "dst_port": int(m.group(2)),
                             "flags": m.group(3), "line": line})
        return pkts
