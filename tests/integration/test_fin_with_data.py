"""A FIN right behind the last bytes of a read leaves with them, in one segment.

A server that writes its last reply and closes (HTTP/1.0, an FTP data connection, SMTP's QUIT)
often puts both into one segment. The proxy passes them on the same way instead of sending the
bytes and then a bare FIN: two packets fewer per connection, which is most of what a short
connection costs on loopback. Nothing a peer reads changes: the same bytes, then EOF. A fault
that fires right after those bytes still acts at once, with the bytes already on their way.
"""

import socket
import threading

import pytest

from fault_helpers import Capture, first_mismatch, pattern, start_proxy
from helpers import connect, read_outcome, recv_exact, recv_until_eof

REQUEST = 300
REPLY = 1000
ROUNDS = 20


def _corked_reply_server(servers, got: dict, lock: threading.Lock):
    """Reads REQUEST bytes, then writes REPLY bytes and its FIN as one segment (TCP_CORK until
    the shutdown), then reads to EOF. Records what it read per connection (by peer port)."""

    def handler(conn: socket.socket) -> None:
        with conn:
            port = conn.getpeername()[1]
            req = recv_exact(conn, REQUEST)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
            conn.sendall(pattern(REPLY, offset=7))
            conn.shutdown(socket.SHUT_WR)
            rest = recv_until_eof(conn)
            with lock:
                got[port] = req + rest

    return servers.tcp(handler)


def _fin_segments(pkts: list[dict], src: int, dst: int) -> list[str]:
    return [p["line"] for p in pkts
            if p["src_port"] == src and p["dst_port"] == dst and "F" in p["flags"]]


def _capture(tmp_path, port: int, name: str) -> Capture:
    why = Capture.available()
    if why:
        pytest.skip(why)
    cap = Capture(port, tmp_path / name)
    why = cap.start()
    if why:
        pytest.skip(why)
    return cap


@pytest.mark.timeout(60)
def test_servers_last_reply_and_fin_reach_the_client_in_one_segment(tcpfault, servers,
                                                                    sockets, tmp_path):
    got, lock = {}, threading.Lock()
    srv = _corked_reply_server(servers, got, lock)
    proxy = tcpfault.quick(srv.addr)
    port = proxy.addr()[1]
    cap = _capture(tmp_path, port, "down.pcap")
    client_ports = []
    try:
        for i in range(ROUNDS):
            c = connect(proxy.addr())
            sockets.append(c)
            client_ports.append(c.getsockname()[1])
            c.sendall(pattern(REQUEST))
            outcome, data, _ = read_outcome(c, timeout=5)
            assert outcome == "eof", f"connection {i + 1}: {outcome} after {len(data)} bytes"
            want = pattern(REPLY, offset=7)
            assert data == want, (
                f"connection {i + 1}: the client got {len(data)} bytes, first difference at "
                f"{first_mismatch(data, want)}")
            c.close()
        last = client_ports[-1]
        pkts = cap.wait_for(lambda ps: bool(_fin_segments(ps, last, port)))
    finally:
        cap.stop()

    # Both sides exact: the server read each request, then the client's FIN.
    srv.join_handlers(timeout=10)
    assert not srv.errors, srv.errors
    assert len(got) == ROUNDS and all(v == pattern(REQUEST) for v in got.values()), got.keys()

    for i, cport in enumerate(client_ports):
        fins = _fin_segments(pkts, port, cport)
        assert len(fins) == 1, f"connection {i + 1}: FIN segments to the client: {fins}"
        assert f"length {REPLY}" in fins[0], (
            f"connection {i + 1}: the FIN did not carry the reply's {REPLY} bytes: {fins[0]}")


@pytest.mark.timeout(60)
def test_clients_request_and_fin_reach_the_server_in_one_segment(tcpfault, servers, sockets,
                                                                  tmp_path):
    """The same upstream: a client that corks its request and half-closes."""
    got, lock = {}, threading.Lock()

    def handler(conn: socket.socket) -> None:
        with conn:
            port = conn.getpeername()[1]
            req = recv_until_eof(conn)
            with lock:
                got[port] = req
            conn.sendall(pattern(REPLY, offset=3))

    srv = servers.tcp(handler)
    proxy = tcpfault.quick(srv.addr)
    cap = _capture(tmp_path, srv.port, "up.pcap")
    try:
        for i in range(ROUNDS):
            c = connect(proxy.addr())
            sockets.append(c)
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
            c.sendall(pattern(REQUEST, offset=i))
            c.shutdown(socket.SHUT_WR)
            outcome, data, _ = read_outcome(c, timeout=5)
            assert (outcome, data) == ("eof", pattern(REPLY, offset=3)), (
                f"connection {i + 1}: {outcome} after {len(data)} bytes")
            c.close()
        srv.join_handlers(timeout=10)
        assert not srv.errors, srv.errors
        pkts = cap.wait_for(lambda ps: len([p for p in ps if p["dst_port"] == srv.port
                                            and "F" in p["flags"]]) >= ROUNDS)
    finally:
        cap.stop()

    assert sorted(got.values()) == sorted(pattern(REQUEST, offset=i) for i in range(ROUNDS))
    fins = [p["line"] for p in pkts if p["dst_port"] == srv.port and "F" in p["flags"]]
    assert len(fins) == ROUNDS, f"FIN segments to the server: {fins}"
    bare = [f for f in fins if f"length {REQUEST}" not in f]
    assert not bare, f"FINs that did not carry the request's {REQUEST} bytes: {bare}"


@pytest.mark.timeout(60)
def test_a_fault_right_after_the_last_bytes_still_acts_at_once(tcpfault, servers, sockets):
    """A reset that fires after exactly the reply's bytes, which the FIN follows in the same
    read: the client gets the whole reply, then ECONNRESET, never EOF. And at once: bytes
    held back for a FIN that did not follow would leave only with the kernel's probe timer
    (200 ms and more), and the RST waits for them to be acknowledged."""
    got, lock = {}, threading.Lock()
    srv = _corked_reply_server(servers, got, lock)
    proxy = start_proxy(tcpfault, srv.addr, [
        f"{{name: at-end, when: {{direction: downstream, after_bytes: {REPLY}}}, "
        "fault: {type: reset, to: client}}"])
    want = pattern(REPLY, offset=7)
    took_s = []
    for i in range(ROUNDS):
        c = connect(proxy.addr())
        sockets.append(c)
        c.sendall(pattern(REQUEST))
        outcome, data, took = read_outcome(c, timeout=10)
        assert (outcome, len(data)) == ("reset", REPLY), (
            f"connection {i + 1}: {outcome} after {len(data)} bytes ({took:.2f}s)")
        assert data == want
        took_s.append(took)
        c.close()
    took_s.sort()
    # The median, so one connection slowed by a busy machine does not decide.
    assert took_s[ROUNDS // 2] < 0.1, f"request to RST took (s): {took_s}"
