"""Fault `stall`: hold (backpressure, nothing lost) or drop (blackhole) for a duration, then
resume, reset or close."""

import hashlib
import socket
import struct
import threading
import time

import pytest

from admin_helpers import start_with_admin
from fault_helpers import Recorder, echo_reply, pattern, start_proxy
from helpers import KiB, MiB, connect, read_outcome, recv_exact, reset_close

REC = 16  # bytes per record: 8-byte sequence number + 8-byte send time (ns)


def _seq_server(total_records: int):
    """Handler: sends `total_records` numbered, timestamped records in 4 KiB writes, then
    closes (FIN)."""

    def handler(conn: socket.socket) -> None:
        conn.settimeout(20)
        try:
            per = 4 * KiB // REC
            for start in range(0, total_records, per):
                n = min(per, total_records - start)
                t = time.monotonic_ns()
                conn.sendall(b"".join(struct.pack(">QQ", start + i, t) for i in range(n)))
        except OSError:
            pass
        finally:
            conn.close()

    return handler


def _read_timed(c: socket.socket, timeout: float) -> list[tuple[float, bytes]]:
    """Everything to EOF as (arrival time, bytes) per recv."""
    out = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"no EOF within {timeout}s ({sum(len(b) for _, b in out)} bytes)"
        c.settimeout(left)
        b = c.recv(65536)
        if not b:
            return out
        out.append((time.monotonic(), b))


@pytest.mark.timeout(30)
def test_stall_hold_then_resume_loses_nothing(tcpfault, servers, sockets):
    """A downstream stall (hold, 1s, then resume) after exactly 64KiB: the client receives
    exactly 64KiB, then nothing for >= 1s, then the rest; every record arrives, in order."""
    records = 32 * KiB  # 512 KiB
    srv = servers.tcp(_seq_server(records))
    proxy = start_proxy(tcpfault, srv.addr, [
        "{name: s, when: {direction: downstream, after_bytes: 64KiB}, "
        "fault: {type: stall, direction: downstream, duration: 1s, mode: hold, then: resume}}"])
    c = connect(proxy.addr())
    sockets.append(c)
    pieces = _read_timed(c, timeout=15)
    data = b"".join(b for _, b in pieces)
    assert len(data) == records * REC, f"received {len(data)} bytes, expected {records * REC}"
    seqs = [struct.unpack_from(">Q", data, i)[0] for i in range(0, len(data), REC)]
    assert seqs == list(range(records)), "records lost, duplicated or out of order"
    gaps = [(pieces[i + 1][0] - pieces[i][0], i + 1) for i in range(len(pieces) - 1)]
    gap, at = max(gaps)
    before = sum(len(b) for _, b in pieces[:at])
    # 1s measured at the proxy; the client sees the last byte before it slightly late.
    assert 0.97 <= gap < 1.6, f"longest gap between reads {gap:.3f}s, expected a 1s stall"
    assert before == 64 * KiB, (
        f"{before} bytes arrived before the stall, expected exactly {64 * KiB} (after_bytes)")
    proxy.wait_for_log("fault injected", rule="s", fault="stall")


@pytest.mark.timeout(30)
def test_stall_hold_upstream_checksum(tcpfault, servers, sockets):
    """An upstream hold stall (both directions by default) of 1s at connect: a 2 MiB upload
    sent meanwhile is delivered complete and intact after the stall."""
    rec = Recorder(servers)
    proxy = start_proxy(tcpfault, rec.addr, [
        "{name: s, fault: {type: stall, duration: 1s}}"])
    c = connect(proxy.addr())
    sockets.append(c)
    t0 = time.monotonic()
    body = pattern(2 * MiB, offset=17)

    def upload():
        c.sendall(body)
        c.shutdown(socket.SHUT_WR)

    t = threading.Thread(target=upload, daemon=True)
    t.start()
    r = rec.wait_end(1, timeout=15)
    t.join(5)
    got = bytes(r.data)
    assert r.end == "eof"
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(body).hexdigest(), (
        f"upload damaged: {len(got)} of {len(body)} bytes")
    first = r.chunks[0][0] - t0
    assert first >= 0.95, f"the first byte reached the server {first:.3f}s after connect (stall 1s)"


@pytest.mark.timeout(30)
def test_stall_drop_upstream_then_resume(tcpfault, servers, sockets):
    """stall drop upstream for 1s (fired by "GO\\n"): messages the client sends during the
    stall never arrive; messages sent after it all do, in order."""
    rec = Recorder(servers)
    proxy = start_proxy(tcpfault, rec.addr, [
        "{name: s, when: {data: \"GO\\n\"}, "
        "fault: {type: stall, direction: upstream, duration: 1s, mode: drop, then: resume}}"])
    c = connect(proxy.addr())
    sockets.append(c)
    t_go = time.monotonic()
    c.sendall(b"GO\n")
    rec.wait_data(1, b"GO\n")
    proxy.wait_for_log("fault injected", rule="s", timeout=5)
    t_seen = time.monotonic()
    # The stall started at some point in [t_go, t_seen] and ends 1s later.
    sent = []  # (time, message)
    i = 0
    while time.monotonic() < t_seen + 1.6:
        msg = b"m%04d\n" % i
        c.sendall(msg)
        sent.append((time.monotonic(), msg))
        i += 1
        time.sleep(0.03)  # pacing: one message every ~30ms
    last = sent[-1][1]
    rec.wait(1, lambda r: bytes(r.data).endswith(last), 5, f"the last message {last!r}")
    got = bytes(rec.record(1).data)[3:]
    lines = [l + b"\n" for l in got.split(b"\n") if l]
    # Surely inside the stall: after it was seen to start, before its earliest possible end.
    during = [m for t, m in sent if t_seen < t < t_go + 1.0 - 0.05]
    # Surely after it: past its latest possible end.
    after = [m for t, m in sent if t > t_seen + 1.0 + 0.1]
    assert during and after
    leaked = [m for m in during if m in lines]
    assert not leaked, f"messages sent during the drop stall reached the server: {leaked}"
    assert lines == [m for _, m in sent][-len(lines):], (
        f"the server did not receive an in-order suffix of the messages: {lines}")
    missing = [m for m in after if m not in lines]
    assert not missing, f"messages sent after the stall did not arrive: {missing}"


@pytest.mark.timeout(30)
def test_stall_forever_client_read_blocks(tcpfault, servers, sockets):
    """No duration: nothing arrives (the client's read times out); the connection stays up."""
    rec = Recorder(servers, greeting=b"220 hi\r\n")
    proxy = start_proxy(tcpfault, rec.addr, ["{name: s, fault: {type: stall}}"])
    fds = proxy.fd_count()
    c = connect(proxy.addr())
    sockets.append(c)
    c.sendall(b"HELO x\r\n")
    outcome, data, took = read_outcome(c, timeout=1.0)
    assert (outcome, data) == ("timeout", b""), f"expected nothing for 1s, got {outcome} {data!r}"
    assert bytes(rec.record(1).data) == b"", "upstream bytes passed a stalled connection"
    assert rec.record(1).end is None, "the server side ended during a stall"
    _close_both_and_wait_reaped(proxy, fds, c, rec.conn(1))


@pytest.mark.timeout(30)
def test_stall_then_reset(tcpfault, servers, sockets):
    """stall 500ms then reset: nothing moves, then both sides get RST at ~500ms."""
    rec = Recorder(servers, greeting=b"220 hi\r\n")
    proxy = start_proxy(tcpfault, rec.addr, [
        "{name: s, fault: {type: stall, duration: 500ms, then: reset}}"])
    c = connect(proxy.addr())
    sockets.append(c)
    t0 = time.monotonic()
    c.sendall(b"HELO x\r\n")
    outcome, data, took = read_outcome(c, timeout=5)
    assert (outcome, data) == ("reset", b""), f"client: expected RST, got {outcome} {data!r}"
    assert 0.45 <= time.monotonic() - t0 < 1.0, f"RST after {time.monotonic() - t0:.3f}s"
    r = rec.wait_end(1, timeout=5)
    assert r.end == "reset", f"server saw {r.end}, expected RST"
    assert bytes(r.data) == b"", "bytes passed the stall"


@pytest.mark.timeout(30)
def test_stall_then_close(tcpfault, servers, sockets):
    """stall 500ms (downstream) then close: the client reads EOF at ~500ms, no data."""
    rec = Recorder(servers, greeting=b"220 hi\r\n")
    proxy = start_proxy(tcpfault, rec.addr, [
        "{name: s, fault: {type: stall, direction: downstream, duration: 500ms, then: close}}"])
    c = connect(proxy.addr())
    sockets.append(c)
    outcome, data, took = read_outcome(c, timeout=5)
    assert (outcome, data) == ("eof", b""), f"client: expected EOF, got {outcome} {data!r}"
    assert 0.45 <= took < 1.0, f"EOF after {took:.3f}s, expected ~0.5s"
    r = rec.wait_end(1, timeout=5)
    assert r.end == "eof", f"server saw {r.end}, expected EOF"


# --------------------------------------------------------------------------------------------
# Several stalls on one connection, and what a blackhole does with FIN and RST.

def _close_both_and_wait_reaped(proxy, fds: int, *socks: socket.socket) -> None:
    """Closes the client and server sockets and waits until the proxy has released the
    session's sockets: a session under an endless stall is reaped once both peers are gone.
    (Also keeps the reap from racing the fixture's SIGTERM at teardown.)"""
    for s in socks:
        try:
            s.shutdown(socket.SHUT_RDWR)  # wakes a handler thread blocked in recv()
        except OSError:
            pass
        s.close()
    proxy.wait_fds_at_most(fds, timeout=5)


FOREVER = "{name: forever, fault: {type: stall, direction: both, mode: hold}}"
BRIEF = ("{name: brief, fault: {type: stall, direction: both, duration: 500ms, "
         "then: resume}}")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("order", ["endless-first", "brief-first"])
def test_stall_endless_rule_holds_after_a_brief_one_resumes(tcpfault, servers, sockets, order):
    """Two stall rules on one connection: the brief one's resume (at 500ms) does not lift the
    endless one. Nothing is echoed for 1.5s, and the server receives nothing."""
    rec = Recorder(servers, reply=echo_reply)
    rules = [FOREVER, BRIEF] if order == "endless-first" else [BRIEF, FOREVER]
    proxy = start_proxy(tcpfault, rec.addr, rules)
    fds = proxy.fd_count()
    c = connect(proxy.addr())
    sockets.append(c)
    c.sendall(b"ping\n")
    outcome, data, took = read_outcome(c, timeout=1.5)
    assert (outcome, data) == ("timeout", b""), (
        f"expected nothing for 1.5s under the endless stall, got {outcome} {data!r} "
        f"after {took:.3f}s")
    # The brief stall did end meanwhile (its end is logged), so the window covered it.
    proxy.wait_for_log("stall ended", rule="brief", timeout=1)
    assert bytes(rec.record(1).data) == b"", "bytes reached the server through the stall"
    assert rec.record(1).end is None, "the server side ended during the stall"
    _close_both_and_wait_reaped(proxy, fds, c, rec.conn(1))


def _assert_server_saw_nothing(srv_sock: socket.socket) -> None:
    """The server-side socket has neither data nor a FIN/RST waiting (non-blocking peek)."""
    srv_sock.setblocking(False)
    try:
        got = srv_sock.recv(65536, socket.MSG_PEEK)
    except BlockingIOError:
        return
    except ConnectionResetError:
        raise AssertionError("the server was reset through a blackholing stall")
    finally:
        srv_sock.setblocking(True)
    what = "a FIN (EOF)" if got == b"" else f"data {got[:60]!r}"
    raise AssertionError(f"the server received {what} through a blackholing stall")


@pytest.mark.timeout(30)
def test_stall_drop_both_swallows_client_fin_and_is_reaped(tcpfault, servers, sockets):
    """`stall mode: drop` (endless, both): a client's data and half-close (FIN) reach nobody:
    the client reads neither data nor EOF while the server is open, the server sees nothing.
    Once both peers have closed, the session is reaped all the same."""
    srv = servers.tcp()  # no handler: the server side stays open until the test closes it
    rule = "{name: bh, fault: {type: stall, direction: both, mode: drop}}"
    p, api = start_with_admin(tcpfault, [{"name": "main", "upstream": srv.addr,
                                          "rules": [rule]}], level="debug")
    c = connect(p.addr("main"))
    sockets.append(c)
    server_side = srv.wait_accepted(1)
    p.wait_for_log("fault injected", rule="bh", timeout=5)
    c.sendall(b"x" * 5000)
    c.shutdown(socket.SHUT_WR)
    server_side.sendall(b"reply that is dropped\n")
    p.wait_for_log("client eof", timeout=5)  # the proxy has read the client's FIN
    outcome, data, took = read_outcome(c, timeout=1.0)
    assert (outcome, data) == ("timeout", b""), (
        f"client: expected nothing (no data, no EOF) while the server is open, got {outcome} "
        f"{data!r} after {took:.3f}s")
    _assert_server_saw_nothing(server_side)
    assert api.scrape().value("tcpfault_connections_active", proxy="main") == 1
    # Both peers go away: the session must not outlive them.
    c.close()
    server_side.close()
    api.wait_metric("tcpfault_connections_active", 0, timeout=5, proxy="main")
    assert api.connections("main") == []


@pytest.mark.timeout(30)
def test_stall_drop_both_swallows_client_rst_and_is_reaped(tcpfault, servers, sockets):
    """A RST is a segment like any other: under an endless drop stall it does not reach the
    server (which stays open, seeing nothing); the session is reaped once the server closes."""
    srv = servers.tcp()
    rule = "{name: bh, fault: {type: stall, direction: both, mode: drop}}"
    p, api = start_with_admin(tcpfault, [{"name": "main", "upstream": srv.addr,
                                          "rules": [rule]}], level="debug")
    c = connect(p.addr("main"))
    server_side = srv.wait_accepted(1)
    p.wait_for_log("fault injected", rule="bh", timeout=5)
    c.sendall(b"hello\n")
    # The RST comes after the proxy has read (and dropped) the data, so it is read on its own.
    api.wait_metric("tcpfault_bytes_total", 6, timeout=5, proxy="main", direction="upstream")
    reset_close(c)
    p.wait_for_log("client reset held by stage", timeout=5)  # the proxy has read the RST
    assert not p.find_logs("peer reset"), "the client's RST was passed on"
    _assert_server_saw_nothing(server_side)
    assert api.scrape().value("tcpfault_connections_active", proxy="main") == 1
    server_side.close()
    api.wait_metric("tcpfault_connections_active", 0, timeout=5, proxy="main")


@pytest.mark.timeout(30)
def test_stall_drop_upstream_keeps_downstream_after_client_fin(tcpfault, servers, sockets):
    """`stall mode: drop, direction: upstream` (endless): the client's FIN is swallowed like its
    data, and the downstream keeps flowing (half-close): the server's reply and then its FIN
    reach the client."""
    srv = servers.tcp()
    p = start_proxy(tcpfault, srv.addr, [
        "{name: bh, fault: {type: stall, direction: upstream, mode: drop}}"])
    fds = p.fd_count()
    c = connect(p.addr())
    sockets.append(c)
    server_side = srv.wait_accepted(1)
    p.wait_for_log("fault injected", rule="bh", timeout=5)
    c.sendall(b"request\n")
    c.shutdown(socket.SHUT_WR)
    p.wait_for_log("client eof", timeout=5)  # the proxy has read the client's FIN
    outcome, data, _ = read_outcome(c, timeout=0.5)
    assert (outcome, data) == ("timeout", b""), f"client: got {outcome} {data!r}, expected nothing"
    server_side.sendall(b"reply\n")
    assert recv_exact(c, 6, timeout=5) == b"reply\n"
    _assert_server_saw_nothing(server_side)
    server_side.shutdown(socket.SHUT_WR)
    outcome, data, _ = read_outcome(c, timeout=5)
    assert (outcome, data) == ("eof", b""), f"client: expected the server's FIN, got {outcome}"
    _close_both_and_wait_reaped(p, fds, c, server_side)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("mode", ["drop", "hold"])
def test_stall_resume_releases_the_held_fin(tcpfault, servers, sockets, mode):
    """A client that sends data and FIN during a 500ms stall (both directions) then resume:
    nothing reaches either side during the stall; at its end the server gets the FIN (after
    the data with hold; without it with drop, which discarded it), and the connection works
    on as a half-closed one: the server's reply and its FIN reach the client."""
    srv = servers.tcp()
    p = start_proxy(tcpfault, srv.addr, [
        f"{{name: s, fault: {{type: stall, direction: both, duration: 500ms, mode: {mode}, "
        f"then: resume}}}}"])
    t0 = time.monotonic()  # the stall starts after the connection is made
    c = connect(p.addr())
    sockets.append(c)
    server_side = srv.wait_accepted(1)
    p.wait_for_log("fault injected", rule="s", timeout=5)
    c.sendall(b"during the stall\n")
    c.shutdown(socket.SHUT_WR)
    server_side.settimeout(5)
    got = bytearray()
    while True:
        b = server_side.recv(65536)
        if not b:
            break
        got += b
    took = time.monotonic() - t0
    assert took >= 0.45, f"the client's FIN reached the server {took:.3f}s after it was sent"
    assert bytes(got) == (b"during the stall\n" if mode == "hold" else b""), (
        f"server received {bytes(got)!r} before the FIN")
    p.wait_for_log("stall ended", rule="s", timeout=1)
    server_side.sendall(b"reply\n")
    server_side.shutdown(socket.SHUT_WR)
    outcome, data, _ = read_outcome(c, timeout=5)
    assert (outcome, data) == ("eof", b"reply\n"), f"client: got {outcome} {data!r}"
    server_side.close()
