"""Fault `reset`: RST to the client, the server or both; byte-exact `after_bytes`; flush."""

import threading

import pytest

from fault_helpers import (
    Recorder,
    first_mismatch,
    pattern,
    sender_handler,
    start_proxy,
)
from helpers import KiB, MiB, connect, read_outcome

THRESHOLD = 700 * KiB  # 716,800


@pytest.mark.timeout(60)
def test_reset_after_exactly_700KiB_downstream_20_times(tcpfault, servers, sockets):
    """The client reads exactly 716,800 bytes (the right ones) then ECONNRESET, never EOF,
    never a byte more or less, on each of 20 connections."""
    srv = servers.tcp(sender_handler(2 * MiB))
    proxy = start_proxy(tcpfault, srv.addr, [
        "{name: r700, when: {direction: downstream, after_bytes: 700KiB}, "
        "fault: {type: reset, to: client}}"])
    want = pattern(THRESHOLD)
    for i in range(20):
        mark = proxy.mark()
        c = connect(proxy.addr())
        sockets.append(c)
        outcome, data, took = read_outcome(c, timeout=15)
        assert outcome == "reset", (
            f"connection {i + 1}: expected ECONNRESET after {THRESHOLD} bytes, got {outcome} "
            f"after {len(data)} bytes ({took:.2f}s)")
        assert len(data) == THRESHOLD, (
            f"connection {i + 1}: received {len(data)} bytes before the RST, expected exactly "
            f"{THRESHOLD}")
        assert data == want, (
            f"connection {i + 1}: data differs at byte {first_mismatch(data, want)}")
        rec = proxy.wait_for_log("fault injected", since=mark, rule="r700", timeout=5)[0]
        assert rec["fault"] == "reset", rec
        c.close()
    assert len(proxy.find_logs("fault injected", rule="r700")) == 20


@pytest.mark.timeout(30)
def test_fault_log_shows_bytes_forwarded_at_the_fault(tcpfault, servers, sockets):
    """The "fault injected" line reports the bytes each way so far: for a reset after exactly
    700KiB downstream that is 716,800 down (what the client received) and 0 up."""
    srv = servers.tcp(sender_handler(2 * MiB))
    proxy = start_proxy(tcpfault, srv.addr, [
        "{name: r700, when: {direction: downstream, after_bytes: 700KiB}, "
        "fault: {type: reset, to: client}}"])
    for i in range(3):
        mark = proxy.mark()
        c = connect(proxy.addr())
        sockets.append(c)
        outcome, data, _ = read_outcome(c, timeout=15)
        assert (outcome, len(data)) == ("reset", THRESHOLD)
        rec = proxy.wait_for_log("fault injected", since=mark, rule="r700", timeout=5)[0]
        assert rec["client"] == "%s:%d" % c.getsockname(), rec
        assert (rec["bytes_up"], rec["bytes_down"]) == (0, THRESHOLD), (
            f"connection {i + 1}: the fault log shows bytes_up={rec['bytes_up']} "
            f"bytes_down={rec['bytes_down']}, expected 0 and {THRESHOLD} (the bytes forwarded "
            f"when the fault acted): {rec}")

    # Upstream, with a data trigger: "STOR x\r\n" in one write; 5 bytes are forwarded.
    srec = Recorder(servers)
    proxy2 = start_proxy(tcpfault, srec.addr, [
        "{name: stor, when: {data: \"STOR \"}, fault: {type: reset}}"])
    c = connect(proxy2.addr())
    sockets.append(c)
    c.sendall(b"STOR x\r\n")
    assert read_outcome(c, timeout=5)[0] == "reset"
    assert bytes(srec.wait_end(1, timeout=5).data) == b"STOR "
    rec = proxy2.wait_for_log("fault injected", rule="stor", timeout=5)[0]
    assert (rec["bytes_up"], rec["bytes_down"]) == (5, 0), (
        f"the fault log shows bytes_up={rec['bytes_up']} bytes_down={rec['bytes_down']}, "
        f"expected 5 (b'STOR ' forwarded) and 0: {rec}")


@pytest.mark.timeout(30)
def test_reset_without_flush_is_a_reset(tcpfault, servers, sockets):
    srv = servers.tcp(sender_handler(2 * MiB))
    proxy = start_proxy(tcpfault, srv.addr, [
        "{name: r, when: {direction: downstream, after_bytes: 700KiB}, "
        "fault: {type: reset, to: client, flush: false}}"])
    for i in range(5):
        try:
            c = connect(proxy.addr())
        except ConnectionResetError:
            # 700 KiB and the RST can all arrive before a loaded client's (non-blocking)
            # connect checks its completion: the reset was seen, by connect() itself.
            continue
        sockets.append(c)
        outcome, data, took = read_outcome(c, timeout=15)
        assert outcome == "reset", (
            f"connection {i + 1}: expected ECONNRESET, got {outcome} after {len(data)} bytes")
        assert len(data) <= THRESHOLD, f"{len(data)} bytes arrived, more than the threshold"
        assert data == pattern(len(data))


@pytest.mark.timeout(30)
def test_reset_at_connect_reaches_both_sides_before_any_byte(tcpfault, servers, sockets):
    """No `when`: the fault acts once the upstream connection exists, before any byte moves:
    the server's greeting never reaches the client; both sides get RST (to: both default)."""
    rec = Recorder(servers, greeting=b"220 hello\r\n")
    proxy = start_proxy(tcpfault, rec.addr, ["{name: r, fault: {type: reset}}"])
    for i in range(3):
        try:
            c = connect(proxy.addr())
        except ConnectionResetError:
            # The RST can beat the (non-blocking) connect's completion check.
            outcome, data = "reset", b""
        else:
            sockets.append(c)
            outcome, data, _ = read_outcome(c, timeout=5)
        assert (outcome, data) == ("reset", b""), (
            f"connection {i + 1}: client expected an immediate RST with no data, got "
            f"{outcome} with {data!r}")
        r = rec.wait_end(i + 1, timeout=5)
        assert r.end == "reset", f"connection {i + 1}: the server saw {r.end}, expected a RST"
        assert bytes(r.data) == b""


@pytest.mark.timeout(30)
def test_reset_to_server_after_exact_upstream_bytes(tcpfault, servers, sockets):
    """`when: {after_bytes: 100KiB}` (direction upstream by default), reset to the server: the
    server receives exactly 102,400 bytes then RST; nothing more."""
    n = 100 * KiB
    rec = Recorder(servers)
    proxy = start_proxy(tcpfault, rec.addr, [
        "{name: r, when: {after_bytes: 100KiB}, fault: {type: reset, to: server}}"])
    for i in range(3):
        c = connect(proxy.addr())
        sockets.append(c)

        def upload():
            try:
                c.settimeout(10)
                c.sendall(pattern(MiB))  # one large write: the threshold falls inside a read
            except OSError:
                pass  # the proxy stops reading the client once the fault has acted

        t = threading.Thread(target=upload, daemon=True)
        t.start()
        r = rec.wait_end(i + 1, timeout=10)
        assert r.end == "reset", f"connection {i + 1}: the server saw {r.end}, expected a RST"
        got = bytes(r.data)
        assert len(got) == n, f"connection {i + 1}: server received {len(got)} bytes, want {n}"
        assert got == pattern(n)
        c.close()
        t.join(10)


@pytest.mark.timeout(30)
def test_reset_to_both_after_exact_downstream_bytes(tcpfault, servers, sockets):
    """to: both: the client gets exactly the threshold then RST and the server gets RST too."""
    n = 64 * KiB + 7
    rec = Recorder(servers, greeting=pattern(512 * KiB))
    proxy = start_proxy(tcpfault, rec.addr, [
        f"{{name: r, when: {{direction: downstream, after_bytes: {n}}}, fault: {{type: reset}}}}"])
    c = connect(proxy.addr())
    sockets.append(c)
    outcome, data, _ = read_outcome(c, timeout=10)
    assert outcome == "reset" and len(data) == n, (
        f"client: expected {n} bytes then RST, got {outcome} after {len(data)}")
    assert data == pattern(n)
    r = rec.wait_end(1, timeout=10)
    assert r.end == "reset", f"server saw {r.end}, expected a RST"
