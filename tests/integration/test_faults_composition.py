"""Several rules on one connection: shaping and a terminal fault together."""

import socket
import time

import pytest

from fault_helpers import Recorder, echo_reply, first_mismatch, pattern, start_proxy
from helpers import MiB, connect, read_outcome, recv_exact, run_threads


def _download_server(servers, n: int) -> Recorder:
    return Recorder(servers, reply=lambda conn, r, b: conn.sendall(pattern(n))
                    if bytes(r.data) == b"GET\n" else None)


@pytest.mark.timeout(40)
def test_latency_plus_reset_after_1MiB(tcpfault, servers, sockets):
    """latency 100ms downstream + reset after exactly 1 MiB downstream: the first byte arrives
    >= 100ms after the request, the client gets exactly 1 MiB, then RST."""
    rec = _download_server(servers, 2 * MiB)
    proxy = start_proxy(tcpfault, rec.addr, [
        "{name: slow, fault: {type: latency, delay: 100ms, direction: downstream}}",
        "{name: cut, when: {direction: downstream, after_bytes: 1MiB}, "
        "fault: {type: reset, to: client}}"])
    for i in range(3):
        c = connect(proxy.addr())
        sockets.append(c)
        t0 = time.monotonic()
        c.sendall(b"GET\n")
        c.settimeout(5)
        first = c.recv(1)
        t_first = time.monotonic() - t0
        assert first == pattern(1), f"connection {i + 1}: first byte {first!r}"
        assert t_first >= 0.1, f"connection {i + 1}: first byte after {t_first * 1000:.0f}ms"
        outcome, data, _ = read_outcome(c, timeout=15)
        data = first + data
        assert outcome == "reset", f"connection {i + 1}: expected RST, got {outcome}"
        assert len(data) == MiB, (
            f"connection {i + 1}: received {len(data)} bytes before the RST, expected exactly "
            f"{MiB}")
        assert data == pattern(MiB), f"data differs at {first_mismatch(data, pattern(MiB))}"


@pytest.mark.timeout(40)
def test_bandwidth_plus_close_after_bytes(tcpfault, servers, sockets):
    """bandwidth 1MiB/s + close after 512KiB: exactly 512 KiB arrive (taking ~0.5s), then
    EOF."""
    n = 512 * 1024
    rec = _download_server(servers, 2 * MiB)
    proxy = start_proxy(tcpfault, rec.addr, [
        "{name: bw, fault: {type: bandwidth, rate: 1MiB/s}}",
        "{name: cut, when: {direction: downstream, after_bytes: 512KiB}, "
        "fault: {type: close, to: client}}"])
    c = connect(proxy.addr())
    sockets.append(c)
    c.sendall(b"GET\n")
    outcome, data, took = read_outcome(c, timeout=15)
    assert (outcome, len(data)) == ("eof", n), (
        f"expected exactly {n} bytes then EOF, got {outcome} after {len(data)}")
    assert data == pattern(n)
    assert 0.35 <= took <= 0.75, f"512 KiB at 1MiB/s took {took:.2f}s"


@pytest.mark.timeout(120)
def test_shaping_that_starts_inside_a_read_keeps_32MiB_exact_both_ways(tcpfault, servers,
                                                                          sockets):
    """A latency stage holds big reads by taking over their buffers (no copy); a rule that
    adds one after exactly 700,001 bytes cuts a read in two: the head goes out at once, the
    tail is queued from inside the same buffer. 32 MiB up through an echo server and back:
    the server gets exactly the 32 MiB sent and the client exactly the 32 MiB echoed, in 5
    connections in a row."""
    n = 32 * MiB
    data = pattern(n)
    rec = Recorder(servers, reply=echo_reply)
    proxy = start_proxy(tcpfault, rec.addr, [
        "{name: down, fault: {type: latency, delay: 0ms, direction: downstream}}",
        "{name: later, when: {direction: upstream, after_bytes: 700001}, "
        "fault: {type: latency, delay: 1ms, direction: both}}"])
    for i in range(5):
        c = connect(proxy.addr())
        sockets.append(c)

        def send(c=c) -> None:
            c.sendall(data)
            c.shutdown(socket.SHUT_WR)

        got = run_threads([(f"send #{i + 1}", send),
                           (f"receive #{i + 1}", lambda c=c: recv_exact(c, n, timeout=60))],
                          timeout=70)[f"receive #{i + 1}"]
        server_got = rec.wait_end(i + 1, timeout=10).data
        assert len(server_got) == n and server_got == data, (
            f"connection {i + 1}: the server got {len(server_got)} bytes, first difference at "
            f"{first_mismatch(bytes(server_got), data)}")
        assert got == data, (
            f"connection {i + 1}: the client got back data that differs at "
            f"{first_mismatch(got, data)}")
        c.close()
