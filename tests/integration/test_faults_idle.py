"""Fault `idle`: after `timeout` with no bytes either way, reset (RST on the next bytes, both
sides), drop (everything discarded) or close (FIN both ways at the timeout)."""

import socket
import time

import pytest

from fault_helpers import Recorder, echo_reply, log_time, send_outcome, start_proxy
from helpers import connect, read_outcome, recv_exact


def _echo_ok(c, msg=b"a"):
    c.sendall(msg)
    assert recv_exact(c, len(msg), timeout=5) == msg


@pytest.mark.timeout(30)
def test_idle_reset_client_writes_after_silence(tcpfault, servers, sockets):
    rec = Recorder(servers, reply=echo_reply)
    proxy = start_proxy(tcpfault, rec.addr, [
        "{name: nat, fault: {type: idle, timeout: 500ms, action: reset}}"])
    c = connect(proxy.addr())
    sockets.append(c)
    _echo_ok(c)
    time.sleep(0.6)  # the silence the idle timeout needs
    rec_idle = proxy.wait_for_log("idle timeout", timeout=2)[0]
    fired = proxy.find_logs("fault injected", rule="nat")[0]
    gap = log_time(rec_idle) - log_time(fired)
    assert 0.49 <= gap < 0.7, f"idle timeout logged {gap:.3f}s after the fault started"
    assert rec.record(1).end is None, "the server side ended at the timeout (reset waits for bytes)"
    send_outcome(c, b"late")
    outcome, data, _ = read_outcome(c, timeout=5)
    assert (outcome, data) == ("reset", b""), (
        f"client's read after its late write: expected ECONNRESET, got {outcome} {data!r}")
    r = rec.wait_end(1, timeout=5)
    assert r.end == "reset", f"server saw {r.end}, expected RST"
    assert bytes(r.data) == b"a", (
        f"bytes after the idle timeout reached the server: {bytes(r.data)!r}")


@pytest.mark.timeout(30)
def test_idle_reset_server_writes_after_silence(tcpfault, servers, sockets):
    """The next bytes from the server side trigger the RST on both sides as well."""
    rec = Recorder(servers, reply=echo_reply)
    proxy = start_proxy(tcpfault, rec.addr, [
        "{name: nat, fault: {type: idle, timeout: 500ms}}"])  # action: reset is the default
    c = connect(proxy.addr())
    sockets.append(c)
    _echo_ok(c)
    time.sleep(0.6)  # the silence the idle timeout needs
    proxy.wait_for_log("idle timeout", timeout=2)
    assert send_outcome(rec.conn(1), b"late") == "ok"
    r = rec.wait_end(1, timeout=5)
    assert r.end == "reset", f"server saw {r.end}, expected RST after its late write"
    outcome, data, _ = read_outcome(c, timeout=5)
    assert (outcome, data) == ("reset", b""), f"client: expected RST, got {outcome} {data!r}"


@pytest.mark.timeout(30)
def test_idle_activity_keeps_connection(tcpfault, servers, sockets):
    """Bytes every 200ms (each way) for 1.5s: never idle for 500ms, so nothing happens."""
    rec = Recorder(servers, reply=echo_reply)
    proxy = start_proxy(tcpfault, rec.addr, [
        "{name: nat, fault: {type: idle, timeout: 500ms}}"])
    c = connect(proxy.addr())
    sockets.append(c)
    t0 = time.monotonic()
    i = 0
    while time.monotonic() - t0 < 1.5:
        _echo_ok(c, b"%d" % (i % 10))
        i += 1
        time.sleep(0.2)  # pacing of the traffic
    assert not proxy.find_logs("idle timeout"), "idle timeout on a busy connection"
    _echo_ok(c, b"still")


@pytest.mark.timeout(30)
def test_idle_close_fin_at_timeout(tcpfault, servers, sockets):
    rec = Recorder(servers, reply=echo_reply)
    proxy = start_proxy(tcpfault, rec.addr, [
        "{name: nat, fault: {type: idle, timeout: 500ms, action: close}}"])
    c = connect(proxy.addr())
    sockets.append(c)
    _echo_ok(c)
    outcome, data, took = read_outcome(c, timeout=5)
    assert (outcome, data) == ("eof", b""), f"client: expected EOF, got {outcome} {data!r}"
    assert 0.45 <= took < 0.8, f"EOF {took:.3f}s after the last bytes, expected ~0.5s"
    r = rec.wait_end(1, timeout=5)
    assert r.end == "eof", f"server saw {r.end}, expected EOF"


@pytest.mark.timeout(30)
def test_idle_drop_discards_everything(tcpfault, servers, sockets):
    rec = Recorder(servers, reply=echo_reply)
    proxy = start_proxy(tcpfault, rec.addr, [
        "{name: nat, fault: {type: idle, timeout: 500ms, action: drop}}"])
    c = connect(proxy.addr())
    sockets.append(c)
    _echo_ok(c)
    time.sleep(0.6)  # the silence the idle timeout needs
    proxy.wait_for_log("idle timeout", timeout=2)
    c.sendall(b"lost")
    assert send_outcome(rec.conn(1), b"gone") == "ok"
    outcome, data, _ = read_outcome(c, timeout=0.7)
    assert (outcome, data) == ("timeout", b""), (
        f"client after the idle drop: expected nothing, got {outcome} {data!r}")
    assert bytes(rec.record(1).data) == b"a", (
        f"client bytes after the idle drop reached the server: {bytes(rec.record(1).data)!r}")
    assert rec.record(1).end is None, "the server side ended (drop must stay silent)"
    # A FIN is a segment like any other: the blackhole swallows it, neither side is told.
    c.shutdown(socket.SHUT_WR)
    proxy.wait_for_log("client eof", timeout=5)  # the proxy has read it
    outcome, data, _ = read_outcome(c, timeout=0.7)
    assert (outcome, data) == ("timeout", b""), (
        f"client after its FIN under the idle drop: expected nothing, got {outcome} {data!r}")
    assert send_outcome(rec.conn(1), b"still here") == "ok"
    assert rec.record(1).end is None, "the client's FIN reached the server through the drop"
