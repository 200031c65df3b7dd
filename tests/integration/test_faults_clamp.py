"""Fault `clamp`: small socket buffers, window clamp, MSS, short reads; data still intact."""

import hashlib
import re
import socket
import subprocess
import threading

import pytest

from fault_helpers import Recorder, echo_reply, pattern, ss_skmem, start_proxy
from helpers import KiB, MiB, connect, recv_exact

# Linux doubles SO_SNDBUF/SO_RCVBUF and enforces minimums (SOCK_MIN_SNDBUF ~4.6 KiB).
SLACK = 4608


def _clamps(proxy, since: int = 0) -> dict:
    """{(side, option): record} of the "clamp applied" lines."""
    return {(r["side"], r["option"]): r for r in proxy.find_logs("clamp applied", since=since)}


def _echo(c: socket.socket, n: int, timeout: float) -> None:
    body = pattern(n, offset=21)
    err = []

    def up():
        try:
            c.sendall(body)
        except OSError as e:
            err.append(e)

    t = threading.Thread(target=up, daemon=True)
    t.start()
    got = recv_exact(c, len(body), timeout=timeout)
    t.join(10)
    assert not err, err
    assert hashlib.sha256(got).digest() == hashlib.sha256(body).digest(), "echo damaged"


def _download_server(servers, n: int) -> Recorder:
    """A server that answers "GET\n" with n pattern bytes."""
    return Recorder(servers, reply=lambda conn, r, b: conn.sendall(pattern(n))
                    if bytes(r.data) == b"GET\n" else None)


@pytest.mark.timeout(60)
def test_clamp_client_buffers_logged_in_ss_and_4MiB_download(tcpfault, servers, sockets):
    n = 4 * MiB
    rec = _download_server(servers, n)
    proxy = start_proxy(tcpfault, rec.addr, [
        "{name: cc, fault: {type: clamp, side: client, sndbuf: 4KiB, rcvbuf: 4KiB, "
        "window: 2KiB}}"])
    c = connect(proxy.addr())
    sockets.append(c)
    proxy.wait_for_log("clamp applied", count=3, timeout=5)
    got = _clamps(proxy)
    assert set(got) == {("client", "sndbuf"), ("client", "rcvbuf"), ("client", "window")}, (
        f"unexpected clamp lines: {list(got)}")
    for opt in ("sndbuf", "rcvbuf"):
        r = got[("client", opt)]
        assert r["requested"] == 4 * KiB, r
        assert 4 * KiB <= r["effective"] < 4 * 4 * KiB + SLACK, (
            f"client {opt}: effective {r['effective']} for a request of 4096: {r}")
    w = got[("client", "window")]
    assert w["requested"] == 2 * KiB and 0 < w["effective"] <= 2 * KiB, (
        f"window clamp: effective {w['effective']} for a request of 2048: {w}")

    # ss shows the small buffers on the proxy's client-side socket.
    sk = ss_skmem(proxy.addr()[1], c.getsockname()[1])
    assert sk is not None, "ss did not show the proxy's client-side socket"
    assert sk.get("rb") == got[("client", "rcvbuf")]["effective"], (
        f"ss skmem rb={sk.get('rb')}, the log says rcvbuf {got[('client', 'rcvbuf')]}: {sk}")
    assert sk.get("tb") == got[("client", "sndbuf")]["effective"], (
        f"ss skmem tb={sk.get('tb')}, the log says sndbuf {got[('client', 'sndbuf')]}: {sk}")

    # A 4 MiB download through the clamped socket still arrives byte-identical.
    c.sendall(b"GET\n")
    data = recv_exact(c, n, timeout=30)
    assert hashlib.sha256(data).digest() == hashlib.sha256(pattern(n)).digest(), "damaged"


@pytest.mark.timeout(60)
def test_clamp_client_buffers_upload_intact(tcpfault, servers, sockets):
    """An upload into the clamped (8 KiB) receive buffer: intact. (Small: on loopback every
    window-limited segment waits for the sender's ~200ms probe timer.)"""
    rec = Recorder(servers)
    proxy = start_proxy(tcpfault, rec.addr, [
        "{name: cc, fault: {type: clamp, side: client, sndbuf: 4KiB, rcvbuf: 4KiB, "
        "window: 2KiB}}"])
    c = connect(proxy.addr())
    sockets.append(c)
    body = pattern(128 * KiB, offset=1)
    c.sendall(body)
    c.shutdown(socket.SHUT_WR)
    r = rec.wait_end(1, timeout=30)
    assert (r.end, bytes(r.data) == body) == ("eof", True), (
        f"upload: {len(r.data)} of {len(body)} bytes, end {r.end}")


@pytest.mark.timeout(60)
def test_clamp_server_mss(tcpfault, servers, sockets):
    """mss: 536 on the server side: the log's effective value and the proxy's upstream socket
    (ss -ti mss:N) are <= 536."""
    rec = Recorder(servers, reply=echo_reply)
    proxy = start_proxy(tcpfault, rec.addr, [
        "{name: cs, fault: {type: clamp, side: server, mss: 536}}"])
    c = connect(proxy.addr())
    sockets.append(c)
    c.sendall(b"x" * 10000)
    assert recv_exact(c, 10000, timeout=5) == b"x" * 10000
    m = proxy.wait_for_log("clamp applied", option="mss", timeout=5)[0]
    assert m["side"] == "server" and m["requested"] == 536, m
    s = rec.conn(1)
    out = subprocess.run(["ss", "-tni", "state", "established",
                          f"( sport = :{s.getpeername()[1]} and dport = :{s.getsockname()[1]} )"],
                         capture_output=True, text=True, timeout=5).stdout
    ss_mss = re.search(r"\bmss:(\d+)", out)
    assert ss_mss, f"ss output without mss: {out}"
    assert 0 < m["effective"] <= 536 and int(ss_mss.group(1)) <= 536, (
        f"server-side MSS clamp has no effect: log effective={m['effective']}, ss on the "
        f"proxy's upstream socket mss:{ss_mss.group(1)} (requested 536)")
    assert not proxy.find_logs("clamp applied", side="client"), "clamp applied to the client side"


@pytest.mark.timeout(60)
def test_clamp_both_sides_echo_intact(tcpfault, servers, sockets):
    """side: both (default) with every option: an echo completes byte-identical and every
    option is logged for both sides (mss only for the server side)."""
    rec = Recorder(servers, reply=echo_reply)
    proxy = start_proxy(tcpfault, rec.addr, [
        "{name: cb, fault: {type: clamp, sndbuf: 4KiB, rcvbuf: 4KiB, window: 2KiB, "
        "mss: 536, read_size: 512}}"])
    c = connect(proxy.addr())
    sockets.append(c)
    _echo(c, 128 * KiB, timeout=40)
    got = _clamps(proxy)
    for side in ("client", "server"):
        for opt in ("sndbuf", "rcvbuf", "window"):
            assert (side, opt) in got, f"no clamp line for {side} {opt}: {list(got)}"
    assert ("server", "mss") in got
    assert ("client", "mss") not in got, "mss applied on the client side (server side only)"


@pytest.mark.timeout(60)
def test_clamp_read_size_transfer_intact(tcpfault, servers, sockets):
    """read_size: 100 on both sides: a 1 MiB echo is intact (the server's reads may merge the
    proxy's 100-byte writes, so only correctness is asserted)."""
    rec = Recorder(servers, reply=echo_reply)
    proxy = start_proxy(tcpfault, rec.addr, [
        "{name: rs, fault: {type: clamp, read_size: 100}}"])
    c = connect(proxy.addr())
    sockets.append(c)
    body = pattern(MiB, offset=2)
    t = threading.Thread(target=c.sendall, args=(body,), daemon=True)
    t.start()
    got = recv_exact(c, len(body), timeout=30)
    t.join(10)
    assert got == body
    assert bytes(rec.record(1).data) == body
    proxy.wait_for_log("fault injected", rule="rs", fault="clamp")
