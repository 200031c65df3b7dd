"""Several rules on one connection: shaping and a terminal fault together."""

import time

import pytest

from fault_helpers import Recorder, first_mismatch, pattern, start_proxy
from helpers import MiB, connect, read_outcome


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
