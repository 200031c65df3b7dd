"""`when` triggers (data, line, after_bytes, after) and `match` selectors (connections,
probability + seed, limit)."""

import socket
import time

import pytest

from fault_helpers import Recorder, echo_reply, pattern, start_proxy
from helpers import connect, read_outcome, recv_exact


@pytest.mark.timeout(30)
def test_data_trigger_across_reads(tcpfault, servers, sockets):
    """data "STOR " split over two writes: the matched bytes are forwarded, then the reset
    acts: the server has exactly "STOR " and nothing after."""
    rec = Recorder(servers)
    proxy = start_proxy(tcpfault, rec.addr, [
        "{name: stor, when: {data: \"STOR \"}, fault: {type: reset}}"])
    c = connect(proxy.addr())
    sockets.append(c)
    c.sendall(b"ST")
    rec.wait_data(1, b"ST")  # the proxy forwarded the first part: the match spans two reads
    assert not proxy.find_logs("fault injected")
    c.sendall(b"OR x\r\n")
    outcome, data, _ = read_outcome(c, timeout=5)
    assert (outcome, data) == ("reset", b""), f"client: expected RST, got {outcome} {data!r}"
    f = proxy.wait_for_log("fault injected", rule="stor", timeout=5)[0]
    assert f["fault"] == "reset", f
    r = rec.wait_end(1, timeout=5)
    assert r.end == "reset", f"server saw {r.end}, expected RST"
    assert bytes(r.data) == b"STOR ", f"server received {bytes(r.data)!r}, expected b'STOR '"


@pytest.mark.timeout(30)
def test_line_trigger_fires_on_matching_line_only(tcpfault, servers, sockets):
    rec = Recorder(servers)
    proxy = start_proxy(tcpfault, rec.addr, [
        "{name: rcpt, when: {line: \"^RCPT TO:\"}, fault: {type: reset}}"])
    c = connect(proxy.addr())
    sockets.append(c)
    first = b"MAIL FROM:<a>\r\nXRCPT TO:<b>\r\n"
    c.sendall(first)
    rec.wait_data(1, first)
    assert not proxy.find_logs("fault injected"), "fired on a line that does not match ^RCPT TO:"
    c.sendall(b"RCPT TO:<c>\r\nDATA\r\n")
    outcome, data, _ = read_outcome(c, timeout=5)
    assert (outcome, data) == ("reset", b""), f"client: expected RST, got {outcome} {data!r}"
    r = rec.wait_end(1, timeout=5)
    assert r.end == "reset"
    assert bytes(r.data) == first + b"RCPT TO:<c>\r\n", (
        f"server received {bytes(r.data)!r}: expected everything up to the end of the "
        f"matching line, nothing after")
    proxy.wait_for_log("fault injected", rule="rcpt", timeout=5)
    assert len(proxy.find_logs("fault injected")) == 1


@pytest.mark.timeout(30)
def test_line_trigger_line_split_across_writes(tcpfault, servers, sockets):
    rec = Recorder(servers)
    proxy = start_proxy(tcpfault, rec.addr, [
        "{name: rcpt, when: {line: \"^RCPT TO:\"}, fault: {type: reset}}"])
    c = connect(proxy.addr())
    sockets.append(c)
    c.sendall(b"RC")
    rec.wait_data(1, b"RC")
    c.sendall(b"PT TO:<c>")
    rec.wait_data(1, b"RCPT TO:<c>")
    assert not proxy.find_logs("fault injected"), "fired before the line was complete"
    c.sendall(b"\r\nNEXT\r\n")
    outcome, _, _ = read_outcome(c, timeout=5)
    assert outcome == "reset"
    r = rec.wait_end(1, timeout=5)
    assert bytes(r.data) == b"RCPT TO:<c>\r\n", f"server received {bytes(r.data)!r}"


@pytest.mark.timeout(30)
def test_data_then_after_bytes_counts_from_the_match(tcpfault, servers, sockets):
    rec = Recorder(servers)
    proxy = start_proxy(tcpfault, rec.addr, [
        "{name: r, when: {data: \"GO\", after_bytes: 100}, fault: {type: reset, to: server}}"])
    c = connect(proxy.addr())
    sockets.append(c)
    body = b"xxGO" + pattern(1000)
    c.sendall(body)  # one write: the match and the threshold fall inside one read
    r = rec.wait_end(1, timeout=5)
    assert r.end == "reset"
    assert bytes(r.data) == body[:104], (
        f"server received {len(r.data)} bytes, expected 104 (through the match + 100)")


@pytest.mark.timeout(30)
def test_after_time_trigger(tcpfault, servers, sockets):
    rec = Recorder(servers, reply=echo_reply)
    proxy = start_proxy(tcpfault, rec.addr, [
        "{name: r, when: {after: 300ms}, fault: {type: reset, to: client}}"])
    t0 = time.monotonic()
    c = connect(proxy.addr())
    sockets.append(c)
    c.sendall(b"hi")
    assert recv_exact(c, 2, timeout=5) == b"hi"  # bytes flow before the time is up
    outcome, data, _ = read_outcome(c, timeout=5)
    took = time.monotonic() - t0
    assert (outcome, data) == ("reset", b""), f"expected RST, got {outcome} {data!r}"
    assert 0.28 <= took < 0.6, f"reset {took:.3f}s after connect, expected ~0.3s"


def _probe(addr) -> str:
    """'reset' if the connection is reset before any byte moves, 'ok' if an echo works."""
    try:
        c = connect(addr)
    except ConnectionResetError:
        return "reset"
    try:
        try:
            c.sendall(b"ping")
        except (ConnectionResetError, BrokenPipeError):
            return "reset"
        outcome, data, _ = read_outcome_until(c, b"ping", timeout=5)
        return outcome
    finally:
        c.close()


def read_outcome_until(c: socket.socket, want: bytes, timeout: float):
    buf = b""
    deadline = time.monotonic() + timeout
    while len(buf) < len(want):
        c.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            b = c.recv(100)
        except ConnectionResetError:
            return "reset", buf, 0
        except socket.timeout:
            return "timeout", buf, 0
        if not b:
            return "eof", buf, 0
        buf += b
    assert buf == want
    return "ok", buf, 0


@pytest.mark.timeout(30)
@pytest.mark.parametrize("sel,expected", [
    ("{every: 3}", {3, 6, 9}),
    ("{nth: 4}", {4}),
    ("{first: 2}", {1, 2}),
])
def test_connections_selector(tcpfault, servers, sel, expected):
    rec = Recorder(servers, reply=echo_reply, close_on_eof=True)
    proxy = start_proxy(tcpfault, rec.addr, [
        f"{{name: r, match: {{connections: {sel}}}, fault: {{type: reset}}}}"])
    got = {}
    for i in range(1, 10):
        got[i] = _probe(proxy.addr())
    assert set(got.values()) <= {"ok", "reset"}, got
    reset = {i for i, o in got.items() if o == "reset"}
    assert reset == expected, (
        f"connections: {sel}: reset {sorted(reset)}, expected {sorted(expected)}")


def _run_probability(tcpfault, servers, rec) -> set:
    proxy = start_proxy(tcpfault, rec.addr, [
        "{name: coin, match: {probability: 0.5}, fault: {type: reset}}"], seed=42)
    out = {i for i in range(1, 21) if _probe(proxy.addr()) == "reset"}
    proxy.stop()
    return out


@pytest.mark.timeout(30)
def test_probability_with_seed_is_reproducible(tcpfault, servers):
    rec = Recorder(servers, reply=echo_reply, close_on_eof=True)
    first = _run_probability(tcpfault, servers, rec)
    second = _run_probability(tcpfault, servers, rec)
    assert 0 < len(first) < 20, f"probability 0.5 reset {len(first)} of 20 connections"
    assert first == second, (
        f"same seed, different connections reset: {sorted(first)} vs {sorted(second)}")


@pytest.mark.timeout(30)
def test_limit_caps_injections(tcpfault, servers):
    rec = Recorder(servers, reply=echo_reply, close_on_eof=True)
    proxy = start_proxy(tcpfault, rec.addr, [
        "{name: r, match: {limit: 2}, fault: {type: reset}}"])
    got = [_probe(proxy.addr()) for _ in range(5)]
    assert got == ["reset", "reset", "ok", "ok", "ok"], got
    proxy.wait_for_log("fault injected", rule="r", count=2, timeout=5)
    assert len(proxy.find_logs("fault injected", rule="r")) == 2


@pytest.mark.timeout(30)
@pytest.mark.parametrize("mark_at,order", [(3000, ["mark", "bytes"]), (7000, ["bytes", "mark"])])
def test_several_triggers_in_one_chunk_fire_in_stream_order(tcpfault, servers, sockets,
                                                            mark_at, order):
    """Three rules watch the same stream and the client's bytes arrive together. The proxy
    feeds the triggers speculatively and rolls them back to the earliest event: each rule
    fires once, in stream order, at its own byte position, and none is lost or counts twice.
    (Latency faults, so the stream goes on after each.)"""
    rec = Recorder(servers)
    proxy = start_proxy(tcpfault, rec.addr, [
        "{name: bytes, when: {after_bytes: 5000}, "
        "fault: {type: latency, delay: 1ms, direction: upstream}}",
        "{name: mark, when: {data: MARK}, "
        "fault: {type: latency, delay: 1ms, direction: upstream}}",
        "{name: line, when: {line: '^never'}, fault: {type: reset}}"])
    payload = bytearray(b"x" * 10_000)
    payload[mark_at:mark_at + 4] = b"MARK"
    c = connect(proxy.addr())
    sockets.append(c)
    c.sendall(payload)
    rec.wait_data(1, bytes(payload))
    proxy.wait_for_log("fault injected", count=2, timeout=5)
    fired = [(x["rule"], x["bytes_up"]) for x in proxy.find_logs("fault injected")]
    at = {"mark": mark_at + 4, "bytes": 5000}
    assert fired == [(name, at[name]) for name in order], f"rules fired (rule, bytes): {fired}"


@pytest.mark.timeout(30)
def test_next_byte_resets_on_the_first_command_unforwarded(tcpfault, servers, sockets):
    """`next_byte` (Toxiproxy's reset_peer timing): the greeting is delivered, the client's
    first command is answered with RST, and the server never sees a byte of it. 20 runs."""
    rec = Recorder(servers, greeting=b"220 ready\r\n")
    proxy = start_proxy(tcpfault, rec.addr, [
        "{name: first, when: {direction: upstream, next_byte: true}, "
        "fault: {type: reset, flush: false}}"])
    for i in range(1, 21):
        c = connect(proxy.addr())
        sockets.append(c)
        assert recv_exact(c, 11, timeout=5) == b"220 ready\r\n"
        c.sendall(b"EHLO x\r\n")
        outcome, data, _ = read_outcome(c, timeout=5)
        assert (outcome, data) == ("reset", b""), f"run {i}: {outcome} {data!r}"
        r = rec.wait_end(i, timeout=5)
        assert bytes(r.data) == b"", f"run {i}: the server saw {bytes(r.data)!r}"


@pytest.mark.timeout(30)
def test_next_byte_after_a_match_holds_the_next_byte(tcpfault, servers, sockets):
    """`data` + `next_byte`: the matched bytes pass; the fault acts when the next byte arrives,
    even in a later write, and that byte is not forwarded."""
    rec = Recorder(servers)
    proxy = start_proxy(tcpfault, rec.addr, [
        "{name: n, when: {data: \"QUIT\\r\\n\", next_byte: true}, fault: {type: reset}}"])
    c = connect(proxy.addr())
    sockets.append(c)
    c.sendall(b"QUIT\r\n")
    rec.wait_data(1, b"QUIT\r\n")
    assert not proxy.find_logs("fault injected"), "fired before any byte followed the match"
    c.sendall(b"X")
    outcome, _, _ = read_outcome(c, timeout=5)
    assert outcome == "reset"
    r = rec.wait_end(1, timeout=5)
    assert bytes(r.data) == b"QUIT\r\n", f"server received {bytes(r.data)!r}"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transfer", ["upload", "download"])
def test_direction_both_fires_on_whichever_direction_carries_the_bytes(
        tcpfault, servers, sockets, transfer):
    """`direction: both` with after_bytes: one rule covers an upload and a download; the fault
    acts after exactly N bytes of the direction that carried them (counted per direction)."""
    n = 100_000
    if transfer == "upload":
        rec = Recorder(servers)
    else:
        rec = Recorder(servers, reply=lambda conn, r, b: conn.sendall(pattern(300_000)))
    proxy = start_proxy(tcpfault, rec.addr, [
        f"{{name: b, when: {{direction: both, after_bytes: {n}}}, "
        f"fault: {{type: reset, to: both}}}}"])
    c = connect(proxy.addr())
    sockets.append(c)
    if transfer == "upload":
        try:
            c.sendall(pattern(300_000))
        except OSError:
            pass
        r = rec.wait_end(1, timeout=10)
        assert len(r.data) == n, f"the server received {len(r.data)} bytes, expected {n}"
    else:
        c.sendall(b"?")  # 1 byte upstream: far from the threshold
        outcome, data, _ = read_outcome(c, timeout=10)
        assert outcome == "reset" and len(data) == n, (outcome, len(data))
    f = proxy.wait_for_log("fault injected", rule="b", timeout=5)[0]
    assert (f["bytes_up"], f["bytes_down"]) == ((n, 0) if transfer == "upload" else (1, n)), f


@pytest.mark.timeout(60)
@pytest.mark.parametrize("similar", [True, False])
def test_many_data_rules_one_stream_fire_at_their_own_literals(tcpfault, servers, sockets,
                                                               similar):
    """40 `data` rules on one stream, found in one pass (similar literals share a SIMD
    fingerprint; unrelated ones go through the Teddy filter): those whose literal the client
    sends fire once each, in stream order, just past their literal, also when the literal
    straddles two reads or overlaps another; the others never fire. (Latency faults, so the
    stream goes on after each.)"""
    rec = Recorder(servers)
    names = [f"marker-{k:02d}" if similar else f"{chr(65 + k % 26)}{k}-{'xyz'[k % 3]}q"
             for k in range(40)]
    proxy = start_proxy(tcpfault, rec.addr, [
        f"{{name: r{k}, when: {{data: \"{lit}\"}}, "
        f"fault: {{type: latency, delay: 1ms, direction: upstream}}}}"
        for k, lit in enumerate(names)])
    sent = [7, 31, 2, 19]  # the literals the client sends, in this order
    payload = bytearray(b"." * 200_000)
    at = {}
    for j, k in enumerate(sent):
        pos = 30_000 + j * 40_000
        payload[pos:pos + len(names[k])] = names[k].encode()
        at[f"r{k}"] = pos + len(names[k])
    c = connect(proxy.addr())
    sockets.append(c)
    # The second literal straddles two writes.
    cut = 70_000 + 3
    c.sendall(bytes(payload[:cut]))
    rec.wait_data(1, bytes(payload[:cut]))
    c.sendall(bytes(payload[cut:]))
    rec.wait_data(1, bytes(payload))
    proxy.wait_for_log("fault injected", count=len(sent), timeout=10)
    fired = [(x["rule"], x["bytes_up"]) for x in proxy.find_logs("fault injected")]
    assert fired == [(f"r{k}", at[f"r{k}"]) for k in sent], f"rules fired (rule, bytes): {fired}"
