"""Faults that shape a live stream: latency, bandwidth, slice."""

import re
import socket
import struct
import threading
import time

import pytest

from fault_helpers import (
    Capture,
    Recorder,
    echo_reply,
    median,
    pattern,
    recv_pieces,
    sender_handler,
    start_proxy,
)
from helpers import KiB, MiB, connect, recv_exact, recv_until_eof


def _rtts(addr, rounds: int) -> list[float]:
    c = connect(addr)
    try:
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.sendall(b"w")  # warm-up (connection set-up, first-packet effects)
        assert recv_exact(c, 1, timeout=5) == b"w"
        out = []
        for i in range(rounds):
            b = bytes([65 + i % 26])
            t = time.monotonic()
            c.sendall(b)
            assert recv_exact(c, 1, timeout=5) == b
            out.append(time.monotonic() - t)
        return out
    finally:
        c.close()


@pytest.mark.timeout(40)
def test_latency_200ms_downstream_round_trip(tcpfault, servers):
    rec = Recorder(servers, reply=echo_reply)
    plain = start_proxy(tcpfault, rec.addr, [])
    slow = start_proxy(tcpfault, rec.addr, [
        "{name: lat, fault: {type: latency, delay: 200ms, direction: downstream}}"])
    base = median(_rtts(plain.addr(), 15))
    delayed = _rtts(slow.addr(), 15)
    grown = median(delayed) - base
    assert 0.200 <= grown < 0.260, (
        f"p50 round trip grew by {grown * 1000:.1f}ms (base {base * 1000:.2f}ms), expected "
        f"200..260ms; samples {[round(x * 1000) for x in delayed]}")
    assert min(delayed) >= 0.200, f"a round trip took only {min(delayed) * 1000:.1f}ms"


@pytest.mark.timeout(40)
def test_latency_upstream_direction(tcpfault, servers, sockets):
    """direction: upstream delays client->server bytes by the delay."""
    rec = Recorder(servers)
    proxy = start_proxy(tcpfault, rec.addr, [
        "{name: lat, fault: {type: latency, delay: 300ms, direction: upstream}}"])
    c = connect(proxy.addr())
    sockets.append(c)
    rec.conn(1)  # connected through to the server before timing
    t = time.monotonic()
    c.sendall(b"hello")
    r = rec.wait_data(1, b"hello", timeout=5)
    took = r.chunks[0][0] - t
    assert 0.3 <= took < 0.4, f"upstream bytes arrived after {took * 1000:.0f}ms, expected ~300"


@pytest.mark.timeout(40)
def test_latency_with_jitter_keeps_order(tcpfault, servers, sockets):
    """Jitter larger than the gap between chunks must not reorder them."""
    n = 150

    def handler(conn):
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            for i in range(n):
                conn.sendall(struct.pack(">I", i))
                time.sleep(0.002)  # separate chunks at the proxy
        finally:
            conn.close()

    srv = servers.tcp(handler)
    proxy = start_proxy(tcpfault, srv.addr, [
        "{name: lat, fault: {type: latency, delay: 50ms, jitter: 40ms}}"])
    c = connect(proxy.addr())
    sockets.append(c)
    data = recv_until_eof(c, timeout=15)
    seq = [struct.unpack_from(">I", data, i)[0] for i in range(0, len(data), 4)]
    assert seq == list(range(n)), "latency with jitter reordered or lost chunks"


@pytest.mark.timeout(40)
def test_bandwidth_1MiB_per_s_download_of_4MiB_takes_4s(tcpfault, servers, sockets):
    total = 4 * MiB
    srv = servers.tcp(sender_handler(total, then="close"))
    proxy = start_proxy(tcpfault, srv.addr, [
        "{name: bw, fault: {type: bandwidth, rate: 1MiB/s}}"])
    t0 = time.monotonic()
    c = connect(proxy.addr())
    sockets.append(c)
    data = recv_until_eof(c, timeout=20)
    took = time.monotonic() - t0
    assert len(data) == total and data == pattern(total), "download damaged"
    assert 3.4 <= took <= 4.6, f"4 MiB at 1MiB/s took {took:.2f}s, expected 4s +-15%"


@pytest.mark.timeout(40)
def test_bandwidth_upstream_512KiB_per_s(tcpfault, servers, sockets):
    total = MiB
    rec = Recorder(servers)
    proxy = start_proxy(tcpfault, rec.addr, [
        "{name: bw, fault: {type: bandwidth, rate: 512KiB/s, direction: upstream}}"])
    c = connect(proxy.addr())
    sockets.append(c)
    body = pattern(total, offset=3)
    t0 = time.monotonic()

    def upload():
        c.sendall(body)
        c.shutdown(socket.SHUT_WR)

    t = threading.Thread(target=upload, daemon=True)
    t.start()
    r = rec.wait_end(1, timeout=20)
    took = r.end_time - t0
    t.join(5)
    assert bytes(r.data) == body, "upload damaged"
    assert 1.7 <= took <= 2.3, f"1 MiB at 512KiB/s took {took:.2f}s, expected 2s +-15%"


@pytest.mark.timeout(60)
def test_slice_size_1_leaves_in_1_byte_segments(tcpfault, servers, sockets, tmp_path):
    """With no delay, a 1 KiB message sent in one write leaves the proxy as 1,024 TCP segments
    of one byte each (a capture on lo): pieces are never merged by the proxy's kernel (Nagle,
    autocorking), whatever the reader does with them."""
    reason = Capture.available()
    if reason:
        pytest.skip(reason)
    msg = pattern(KiB, offset=5)
    rec = Recorder(servers, reply=lambda conn, r, b: conn.sendall(msg))
    proxy = start_proxy(tcpfault, rec.addr, [
        "{name: sl, fault: {type: slice, size: 1, direction: downstream}}"])
    for i in range(3):
        cap = Capture(proxy.addr()[1], tmp_path / f"slice{i}.pcap")
        why = cap.start()
        if why:
            pytest.skip(why)
        try:
            c = connect(proxy.addr())
            sockets.append(c)
            c.sendall(b"?")
            got = recv_exact(c, KiB, timeout=10)
            assert got == msg

            def data_segments(pkts):
                return [p for p in pkts if p["src_port"] == proxy.addr()[1]
                        and re.search(r"length [1-9]", p["line"])]
            pkts = cap.wait_for(lambda p: len(data_segments(p)) >= KiB, timeout=5)
        finally:
            cap.stop()
        sizes = [int(re.search(r"length (\d+)", p["line"]).group(1)) for p in data_segments(pkts)]
        assert len(sizes) == KiB and set(sizes) == {1}, (
            f"connection {i + 1}: {len(sizes)} data segments toward the client, sizes "
            f"{sorted(set(sizes))} (expected {KiB} segments of 1 byte)")


@pytest.mark.timeout(30)
def test_slice_size_1_with_delay_many_reads(tcpfault, servers, sockets):
    """With 1ms between 1-byte pieces, a prompt reader sees the pieces apart: a 200-byte
    message sent in one write arrives in >= 150 recv calls."""
    n = 200
    msg = pattern(n, offset=5)
    rec = Recorder(servers, reply=lambda conn, r, b: conn.sendall(msg))
    proxy = start_proxy(tcpfault, rec.addr, [
        "{name: sl, fault: {type: slice, size: 1, delay: 1ms, direction: downstream}}"])
    for i in range(3):
        c = connect(proxy.addr())
        sockets.append(c)
        c.sendall(b"?")
        pieces = recv_pieces(c, n, timeout=10)
        assert b"".join(b for _, b in pieces) == msg
        assert len(pieces) >= 150, (
            f"connection {i + 1}: {n} bytes arrived in {len(pieces)} reads, expected >= 150 "
            f"(sizes {[len(b) for _, b in pieces][:40]}...)")


@pytest.mark.timeout(30)
def test_slice_range_with_delay(tcpfault, servers, sockets):
    """size 1-16 with 50ms between pieces: every read is 1..16 bytes, and the pieces are
    spaced by the delay."""
    n = 128
    msg = pattern(n, offset=9)
    srv = servers.tcp(lambda conn: (conn.sendall(msg), time.sleep(5), conn.close()))
    proxy = start_proxy(tcpfault, srv.addr, [
        "{name: sl, fault: {type: slice, size: \"1-16\", delay: 50ms, direction: downstream}}"])
    c = connect(proxy.addr())
    sockets.append(c)
    pieces = recv_pieces(c, n, timeout=15)
    assert b"".join(b for _, b in pieces) == msg
    sizes = [len(b) for _, b in pieces]
    assert max(sizes) <= 16, f"a read returned more than 16 bytes: {sizes}"
    assert len(pieces) >= n // 16
    span = pieces[-1][0] - pieces[0][0]
    assert span >= (len(pieces) - 1) * 0.05 * 0.9, (
        f"{len(pieces)} pieces within {span:.3f}s: not 50ms apart")


@pytest.mark.timeout(30)
def test_slice_both_directions_intact(tcpfault, servers, sockets):
    """Slicing both ways (default direction) keeps the bytes intact: a 64 KiB echo."""
    rec = Recorder(servers, reply=echo_reply)
    proxy = start_proxy(tcpfault, rec.addr, ["{name: sl, fault: {type: slice, size: \"1-64\"}}"])
    c = connect(proxy.addr())
    sockets.append(c)
    body = pattern(64 * KiB, offset=11)
    t = threading.Thread(target=c.sendall, args=(body,), daemon=True)
    t.start()
    assert recv_exact(c, len(body), timeout=20) == body
    t.join(5)
    assert bytes(rec.record(1).data) == body
