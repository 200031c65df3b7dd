"""Fault `close`: FIN to both sides after what was already forwarded; then the target's next
bytes are answered with RST (then: reset) or silently dropped (then: discard)."""

import socket
import time

import pytest

from fault_helpers import (
    Capture,
    Recorder,
    pattern,
    send_outcome,
    sender_handler,
    start_proxy,
)
from helpers import KiB, MiB, connect, read_outcome, reset_close

GREETING = b"hello BYE\r\n"
CLOSE_AFTER_BYE = ("{name: c, when: {direction: downstream, data: \"BYE\\r\\n\"}, "
                   "fault: {type: close, to: client, then: %s}}")


def _sends_until_error(c: socket.socket, seconds: float) -> list[tuple[float, str]]:
    """Sends a few bytes every 20 ms until one fails or `seconds` pass; returns the outcomes."""
    out = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        r = send_outcome(c, b"more\r\n")
        out.append((time.monotonic() - t0, r))
        if r != "ok":
            break
        time.sleep(0.02)  # pacing the client's writes, not synchronisation
    return out


@pytest.mark.timeout(30)
def test_close_then_reset_client_sees_eof_then_write_fails(tcpfault, servers, sockets):
    rec = Recorder(servers, greeting=GREETING)
    proxy = start_proxy(tcpfault, rec.addr, [CLOSE_AFTER_BYE % "reset"])
    for i in range(3):
        c = connect(proxy.addr())
        sockets.append(c)
        outcome, data, _ = read_outcome(c, timeout=5)
        assert (outcome, data) == ("eof", GREETING), (
            f"connection {i + 1}: expected the greeting then EOF, got {outcome} with {data!r}")
        # FIN to both sides: the server sees EOF as well.
        r = rec.wait_end(i + 1, timeout=5)
        assert r.end == "eof", f"connection {i + 1}: server saw {r.end}, expected EOF (FIN)"
        sends = _sends_until_error(c, 3.0)
        assert sends[-1][1] in ("EPIPE", "ECONNRESET"), (
            f"connection {i + 1}: the client's writes after the close kept succeeding for 3s "
            f"(expected RST from the proxy, then EPIPE/ECONNRESET): {sends[-3:]}")
        assert all(r == "ok" for _, r in sends[:-1])
        assert bytes(rec.record(i + 1).data) == b"", (
            "client bytes after the close reached the server")


class CaptureLost(Exception):
    """tcpdump did not record packets that certainly crossed lo (kernel drops)."""


def _saw_syn(pkts: list[dict], cport: int) -> bool:
    return any(p["src_port"] == cport and p["flags"] == "S" for p in pkts)


def _with_capture(proxy, tmp_path, scenario, attempts: int = 3):
    """Runs scenario(capture) with a fresh capture on the proxy port; retries when the capture
    lost packets; skips if tcpdump cannot capture at all."""
    why = Capture.available()
    if why:
        pytest.skip(why)
    lost = []
    for i in range(attempts):
        cap = Capture(proxy.addr()[1], tmp_path / f"cap{i}.pcap")
        why = cap.start()
        if why:
            pytest.skip(why)
        try:
            return scenario(cap)
        except CaptureLost as e:
            lost.append(f"{e} ({cap.stats()})")
        finally:
            cap.stop()
    pytest.skip("tcpdump kept losing packets on lo: " + "; ".join(lost))


@pytest.mark.timeout(40)
def test_close_then_reset_fin_before_rst_on_the_wire(tcpfault, servers, sockets, tmp_path):
    rec = Recorder(servers, greeting=GREETING)
    proxy = start_proxy(tcpfault, rec.addr, [CLOSE_AFTER_BYE % "reset"])
    port = proxy.addr()[1]

    def scenario(cap):
        c = connect(proxy.addr())
        sockets.append(c)
        cport = c.getsockname()[1]
        outcome, data, _ = read_outcome(c, timeout=5)
        assert (outcome, data) == ("eof", GREETING)
        sends = _sends_until_error(c, 3.0)
        assert sends[-1][1] in ("EPIPE", "ECONNRESET"), sends
        # Let tcpdump write the RST out before it is stopped.
        allp = cap.wait_for(lambda ps: any(p["src_port"] == port and p["dst_port"] == cport
                                           and "R" in p["flags"] for p in ps))
        if not _saw_syn(allp, cport):
            raise CaptureLost("the client's SYN is missing")
        return [p for p in allp if p["src_port"] == port and p["dst_port"] == cport]

    pkts = _with_capture(proxy, tmp_path, scenario)
    fin = next((i for i, p in enumerate(pkts) if "F" in p["flags"]), None)
    rst = next((i for i, p in enumerate(pkts) if "R" in p["flags"]), None)
    text = "\n".join(p["line"] for p in pkts)
    assert fin is not None, f"no FIN from the proxy port {port} to the client:\n{text}"
    assert rst is not None, f"no RST from the proxy port {port} to the client:\n{text}"
    assert fin < rst, f"the RST came before the FIN:\n{text}"


@pytest.mark.timeout(40)
def test_close_then_discard_client_half_open(tcpfault, servers, sockets, tmp_path):
    """then: discard: EOF, and the client's writes keep succeeding (no RST) for 0.5s+."""
    rec = Recorder(servers, greeting=GREETING)
    proxy = start_proxy(tcpfault, rec.addr, [CLOSE_AFTER_BYE % "discard"])
    c = connect(proxy.addr())
    sockets.append(c)
    outcome, data, _ = read_outcome(c, timeout=5)
    assert (outcome, data) == ("eof", GREETING)
    r = rec.wait_end(1, timeout=5)
    assert r.end == "eof", f"server saw {r.end}, expected EOF (FIN)"
    t0 = time.monotonic()
    results = []
    while time.monotonic() - t0 < 0.8:
        results.append(send_outcome(c, b"x" * 100))
        time.sleep(0.02)  # pacing
    assert all(r == "ok" for r in results), f"a write failed after the discard close: {results}"
    # No RST arrived: a read still says EOF instead of raising ECONNRESET.
    c.setblocking(False)
    try:
        assert c.recv(100) == b""
    except ConnectionResetError:
        pytest.fail("the client got a RST although the close fault says then: discard")
    assert bytes(rec.record(1).data) == b"", "client bytes after the close reached the server"


@pytest.mark.timeout(40)
def test_close_then_discard_no_rst_on_the_wire(tcpfault, servers, sockets, tmp_path):
    rec = Recorder(servers, greeting=GREETING)
    proxy = start_proxy(tcpfault, rec.addr, [CLOSE_AFTER_BYE % "discard"])
    port = proxy.addr()[1]

    def scenario(cap):
        c = connect(proxy.addr())
        sockets.append(c)
        cport = c.getsockname()[1]
        outcome, data, _ = read_outcome(c, timeout=5)
        assert (outcome, data) == ("eof", GREETING)
        for _ in range(10):
            assert send_outcome(c, b"x" * 100) == "ok"
            time.sleep(0.02)  # pacing
        pkts = cap.wait_for(lambda ps: sum(p["src_port"] == cport and "length 100" in p["line"]
                                           for p in ps) >= 10)
        if not _saw_syn(pkts, cport) or not any(p["src_port"] == cport and "length 100" in
                                                p["line"] for p in pkts):
            raise CaptureLost("the client's packets are missing")
        # No RST from the proxy within another 0.5s.
        pkts = cap.wait_for(lambda ps: any(p["src_port"] == port and "R" in p["flags"]
                                           for p in ps), timeout=0.5)
        return [p["line"] for p in pkts if p["src_port"] == port and "R" in p["flags"]]

    rsts = _with_capture(proxy, tmp_path, scenario)
    assert not rsts, "RST from the proxy with then: discard:\n" + "\n".join(rsts)


@pytest.mark.timeout(30)
def test_close_after_exact_downstream_bytes(tcpfault, servers, sockets):
    """close after after_bytes: the client receives exactly the threshold, then EOF."""
    n = 300 * KiB
    srv = servers.tcp(sender_handler(MiB))
    proxy = start_proxy(tcpfault, srv.addr, [
        "{name: c, when: {direction: downstream, after_bytes: 300KiB}, "
        "fault: {type: close, to: client}}"])
    for i in range(5):
        c = connect(proxy.addr())
        sockets.append(c)
        outcome, data, _ = read_outcome(c, timeout=10)
        assert (outcome, len(data)) == ("eof", n), (
            f"connection {i + 1}: expected exactly {n} bytes then EOF, got {outcome} after "
            f"{len(data)}")
        assert data == pattern(n)


@pytest.mark.timeout(30)
def test_close_to_server_then_reset_server_write_fails(tcpfault, servers, sockets):
    """to: server: both sides get FIN; the server's further writes are answered with RST."""
    rec = Recorder(servers)
    proxy = start_proxy(tcpfault, rec.addr, [
        "{name: c, when: {data: \"QUIT\\r\\n\"}, fault: {type: close, to: server}}"])
    c = connect(proxy.addr())
    sockets.append(c)
    c.sendall(b"QUIT\r\n")
    r = rec.wait_end(1, timeout=5)
    assert (r.end, bytes(r.data)) == ("eof", b"QUIT\r\n"), (
        f"server: expected QUIT then EOF, got {r.end} with {bytes(r.data)!r}")
    outcome, data, _ = read_outcome(c, timeout=5)
    assert (outcome, data) == ("eof", b""), f"client: expected EOF, got {outcome} {data!r}"
    s = rec.conn(1)
    sends = _sends_until_error(s, 3.0)
    assert sends[-1][1] in ("EPIPE", "ECONNRESET"), (
        f"the server's writes after the close kept succeeding: {sends[-3:]}")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("shape", [
    "{name: later, fault: {type: latency, delay: 3500ms, direction: downstream}}",
    "{name: later, fault: {type: slice, size: 500, delay: 3500ms, direction: downstream}}",
], ids=["latency", "slice"])
@pytest.mark.parametrize("end", ["close-server", "server-reset"])
def test_bytes_a_stage_holds_past_3s_still_leave_on_their_schedule(tcpfault, servers, sockets,
                                                                   shape, end):
    """The connection ends (a `close {to: server}` after the server's 1,000 bytes, or the
    server's own RST) while a latency or slice stage holds those bytes for 3.5 s. They count as
    forwarded and leave on the stage's schedule; the client reads all 1,000, then EOF (it is
    the side the close does not target) or ECONNRESET (the server's RST passed on). The 3 s
    bound for a peer that takes nothing counts from when the bytes are due, not from the end:
    it dropped them at 3 s, and the client read 0 (or 500) bytes, then a clean EOF."""
    rules = [shape]
    if end == "close-server":
        rules.append("{name: end, when: {direction: downstream, after_bytes: 1000},"
                     " fault: {type: close, to: server}}")
    srv = servers.tcp()
    proxy = start_proxy(tcpfault, srv.addr, rules)
    c = connect(proxy.addr())
    sockets.append(c)
    s = srv.wait_accepted(1, timeout=5)
    data = pattern(1000)
    t0 = time.monotonic()
    s.sendall(data)
    if end == "server-reset":
        reset_close(s)  # behind the bytes, which loopback has delivered by now
    outcome, got, _ = read_outcome(c, timeout=10)
    took = time.monotonic() - t0
    expected = "eof" if end == "close-server" else "reset"
    assert (outcome, len(got)) == (expected, 1000), (
        f"the client read {len(got)} of 1000 bytes, then {outcome} after {took:.2f}s")
    assert got == data
    assert took >= 3.4, f"the bytes left after {took:.2f}s, before the stage's 3.5 s"
