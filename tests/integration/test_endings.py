"""The close kinds on the wire, on both sides of the proxy (docs/faults.md, "Endings").

A 32 MiB upload or download runs through the proxy; after exactly 700 KiB of the data
direction a rule ends the connection with a named ending for one side (client or server) and
`fin` for the other. Checked, 20 times in a row for every kind, side and direction:
- the side the fault does not target receives exactly the bytes forwarded to it (700 KiB of an
  upload reach the server; the 16-byte request of a download reaches the server), then a FIN,
  and its own further writes are taken and dropped: never a RST;
- the targeted side sees its kind: `fin` and `fin_then_discard` EOF after every forwarded byte
  (its writes keep succeeding), `fin_then_reset` EOF first and then EPIPE/ECONNRESET on its
  writes, `reset` every forwarded byte then ECONNRESET, `reset_now` ECONNRESET (bytes not yet
  sent are lost).
Plus the 10053 sequence against a client that writes continuously: it reads EOF before any
ECONNRESET, in every repetition.
"""

from __future__ import annotations

import errno
import socket
import threading
import time

import pytest

from fault_helpers import Capture, pattern, start_proxy
from helpers import KiB, MiB, connect

TOTAL = 32 * MiB
N = 700 * KiB
REQUEST = b"GET /32MiB HTTP\n"  # 16 bytes
REPEAT = 20
KINDS = ["fin", "fin_then_discard", "fin_then_reset", "reset", "reset_now"]
BLOCK = pattern(256 * KiB)


def _err(e: OSError) -> str:
    if isinstance(e, ConnectionResetError):
        return "ECONNRESET"
    if isinstance(e, BrokenPipeError):
        return "EPIPE"
    return errno.errorcode.get(e.errno, str(e)) if e.errno else type(e).__name__


def _send_all(sock: socket.socket, total: int) -> tuple[str, int]:
    """Sends `total` bytes; ('ok', total) or (error name, bytes the kernel took)."""
    sent = 0
    try:
        while sent < total:
            sent += sock.send(BLOCK[:min(len(BLOCK), total - sent)])
        return "ok", sent
    except OSError as e:
        return _err(e), sent


def _read_all(sock: socket.socket) -> tuple[str, int]:
    """Reads until EOF or an error: ('eof' | error name | 'timeout', bytes read)."""
    got = 0
    try:
        while True:
            b = sock.recv(256 * KiB)
            if not b:
                return "eof", got
            got += len(b)
    except socket.timeout:
        return "timeout", got
    except OSError as e:
        return _err(e), got


class Server:
    """Each connection either sinks an upload (reads until the end) or serves a download
    (reads the 16-byte request, sends TOTAL, then reads until the end). Records per
    connection: bytes received, how the sending ended, how the reading ended."""

    def __init__(self, servers, mode: str):
        self.mode = mode
        self.cond = threading.Condition()
        self.done: list[dict] = []
        self.srv = servers.tcp(self._handle)
        self.addr = self.srv.addr

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(20)
        out = {"received": 0, "send": None, "end": None}
        try:
            if self.mode == "download":
                req = b""
                while len(req) < len(REQUEST):
                    b = conn.recv(len(REQUEST) - len(req))
                    if not b:
                        break
                    req += b
                out["received"] = len(req)
                out["send"], _ = _send_all(conn, TOTAL)
            end, got = _read_all(conn)
            out["end"] = end
            out["received"] += got
        finally:
            conn.close()
            with self.cond:
                self.done.append(out)
                self.cond.notify_all()

    def wait(self, n: int, timeout: float = 20) -> dict:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.done) >= n, timeout), (
                f"server connection #{n} did not end within {timeout}s")
            return self.done[n - 1]


def _rule(direction: str, target: str, kind: str) -> str:
    client = kind if target == "client" else "fin"
    server = kind if target == "server" else "fin"
    return (f"{{name: end, when: {{direction: {direction}, after_bytes: {N}}}, "
            f"fault: {{type: close, client: {client}, server: {server}}}}}")


def _run_upload(addr) -> dict:
    c = connect(addr)
    c.settimeout(20)
    res = {}
    writer = threading.Thread(target=lambda: res.update(zip(("send", "sent"),
                                                            _send_all(c, TOTAL))))
    writer.start()
    res["end"], res["received"] = _read_all(c)
    writer.join(30)
    assert not writer.is_alive(), "the client's sender hung"
    c.close()
    return res


def _run_download(addr) -> dict:
    c = connect(addr)
    c.settimeout(20)
    c.sendall(REQUEST)
    res = {}
    res["end"], res["received"] = _read_all(c)
    res["send"] = "ok"
    if res["end"] == "eof":
        # Writes after EOF tell a half-open peer from one that answers with RST.
        for _ in range(40):
            try:
                c.send(b"x" * 1024)
            except OSError as e:
                res["send"] = _err(e)
                break
            time.sleep(0.0025)  # pacing writes until the RST comes back, not synchronisation
    c.close()
    return res


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("target", ["client", "server"])
@pytest.mark.parametrize("direction", ["upload", "download"])
@pytest.mark.timeout(600)
def test_ending_both_sides(tcpfault, servers, direction, target, kind):
    srv = Server(servers, direction)
    data_dir = "upstream" if direction == "upload" else "downstream"
    proxy = start_proxy(tcpfault, srv.addr, [_rule(data_dir, target, kind)])
    for i in range(1, REPEAT + 1):
        where = f"{direction}, {target} gets {kind}, run {i}"
        cli = _run_upload(proxy.addr()) if direction == "upload" else _run_download(proxy.addr())
        s = srv.wait(i)
        # What reached the server: exactly what was forwarded, unless its own ending is an
        # abrupt reset (bytes not yet sent are discarded by the RST).
        forwarded = N if direction == "upload" else len(REQUEST)
        if target == "server" and kind == "reset_now":
            assert s["received"] <= forwarded, (where, s)
        else:
            assert s["received"] == forwarded, (where, s)
        # What reached the client in a download, likewise.
        if direction == "download":
            if target == "client" and kind == "reset_now":
                assert cli["received"] <= N, (where, cli)
            else:
                assert cli["received"] == N, (where, cli)
        # How each side saw the end.
        for side, obs in (("client", cli), ("server", s)):
            k = kind if side == target else "fin"
            if k in ("fin", "fin_then_discard"):
                assert obs["end"] == "eof", (where, side, obs)
                assert obs["send"] in (None, "ok"), (where, side, obs)
            elif k == "fin_then_reset":
                assert obs["end"] == "eof", (where, side, obs)  # EOF before any reset
                if side == "client" or direction == "download":
                    assert obs["send"] in ("EPIPE", "ECONNRESET"), (where, side, obs)
            else:
                # The RST is reported once, to whichever call looks first: the reader, or a
                # writer in another thread (after which the reader sees 0).
                assert obs["end"] == "ECONNRESET" or obs["send"] in ("EPIPE", "ECONNRESET"), (
                    where, side, obs)


@pytest.mark.timeout(300)
def test_close_then_reset_fin_before_rst_while_client_writes(tcpfault, servers, tmp_path):
    """`close {to: client, then: reset}` while the client writes as fast as it can, 20 runs:
    on the wire the proxy's FIN to the client comes before its RST in every run, and the
    client's blocked reader returns EOF (0), not ECONNRESET: 10053, never 10054. The server
    gets exactly the 700 KiB forwarded, then FIN."""
    reason = Capture.available()
    if reason:
        pytest.skip(reason)
    srv = Server(servers, "upload")
    proxy = start_proxy(tcpfault, srv.addr, [
        f"{{name: c, when: {{direction: upstream, after_bytes: {N}}}, "
        f"fault: {{type: close, to: client, then: reset}}}}"])
    port = proxy.addr()[1]
    for i in range(1, REPEAT + 1):
        cap = Capture(port, tmp_path / f"run{i}.pcap")
        why = cap.start()
        if why:
            pytest.skip(why)
        try:
            c = connect(proxy.addr())
            cport = c.getsockname()[1]
            cli = {}
            c.settimeout(20)
            writer = threading.Thread(target=lambda: cli.update(zip(("send", "sent"),
                                                                    _send_all(c, TOTAL))))
            writer.start()
            cli["end"], cli["received"] = _read_all(c)
            writer.join(30)
            c.close()

            def to_client(ps):
                return [p for p in ps if p["src_port"] == port and p["dst_port"] == cport]
            pkts = to_client(cap.wait_for(lambda ps: any("R" in p["flags"]
                                                         for p in to_client(ps))))
        finally:
            cap.stop()
        assert cli["end"] == "eof", f"run {i}: the client read {cli['end']} instead of EOF: {cli}"
        assert cli["send"] in ("EPIPE", "ECONNRESET"), f"run {i}: {cli}"
        fin = next((k for k, p in enumerate(pkts) if "F" in p["flags"]), None)
        rst = next((k for k, p in enumerate(pkts) if "R" in p["flags"]), None)
        text = "\n".join(p["line"] for p in pkts[-10:])
        assert fin is not None and rst is not None and fin < rst, (
            f"run {i}: expected FIN then RST from the proxy to the client:\n{text}")
        s = srv.wait(i)
        assert (s["received"], s["end"]) == (N, "eof"), f"run {i}: server saw {s}"
