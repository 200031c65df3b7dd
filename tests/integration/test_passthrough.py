"""Pass-through fidelity: bytes unchanged and in order, both directions at once, many
connections at once, IPv6 listener."""

import random
import re
import selectors
import socket
import time

import pytest

from helpers import (
    MiB,
    connect,
    ipv6_loopback_available,
    raise_nofile_limit,
    recv_exact,
    recv_stream_slowly,
    recv_until_eof,
    run_threads,
    send_stream,
)


@pytest.mark.timeout(90)
def test_64mib_each_way_at_once_with_slow_readers(tcpfault, servers, sockets):
    size = 64 * MiB
    srv = servers.tcp()  # accepted sockets are driven here
    proxy = tcpfault.quick(srv.addr)

    client = connect(proxy.addr())
    sockets.append(client)
    server = srv.wait_accepted(1, timeout=5)
    sockets.append(server)
    client.settimeout(60)
    server.settimeout(60)

    res = run_threads([
        ("client->server send", lambda: send_stream(client, size, seed=1)),
        ("server->client send", lambda: send_stream(server, size, seed=2)),
        ("server recv", lambda: recv_stream_slowly(server, seed=3, timeout=60)),
        ("client recv", lambda: recv_stream_slowly(client, seed=4, timeout=60)),
    ], timeout=75)

    up_n, up_sha = res["server recv"]
    down_n, down_sha = res["client recv"]
    assert up_n == size, f"server received {up_n} bytes, client sent {size}"
    assert down_n == size, f"client received {down_n} bytes, server sent {size}"
    assert up_sha == res["client->server send"], "client->server bytes differ (sha256)"
    assert down_sha == res["server->client send"], "server->client bytes differ (sha256)"
    assert srv.count() == 1


@pytest.mark.timeout(120)
def test_1000_concurrent_connections_echo(tcpfault, servers):
    n_conns = 1000
    limit = raise_nofile_limit()  # before starting the proxy, which inherits it
    if limit < 2 * n_conns + 200:
        pytest.skip(f"RLIMIT_NOFILE hard limit {limit} is too low for {n_conns} connections")

    echo = servers.selector_echo()
    proxy = tcpfault.quick(echo.addr)
    addr = proxy.addr()
    fds_idle = proxy.fd_count()

    rng = random.Random(1000)
    payloads = []
    for i in range(n_conns):
        body = rng.randbytes(rng.randint(10_000, 50_000))
        payloads.append(b"conn-%04d:" % i + body)  # distinct per connection

    conns: list[socket.socket] = []
    sel = selectors.DefaultSelector()
    try:
        # Open all of them first.
        for i in range(n_conns):
            s = connect(addr, timeout=10)
            s.setblocking(False)
            conns.append(s)
        # All 1000 must be relayed at the same time: the upstream sees 1000 open connections
        # before any byte is sent.
        echo.wait_open(n_conns, timeout=30)
        assert echo.accepted == n_conns, f"upstream accepted {echo.accepted}, expected {n_conns}"

        state = []
        for i, s in enumerate(conns):
            st = {"i": i, "sent": 0, "recv": bytearray(), "done": False, "wr_shut": False}
            state.append(st)
            sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE, st)

        remaining = n_conns
        deadline = time.monotonic() + 60
        while remaining:
            left = deadline - time.monotonic()
            if left <= 0:
                unfinished = [st["i"] for st in state if not st["done"]]
                raise AssertionError(
                    f"{len(unfinished)} connections unfinished after 60s, e.g. "
                    f"{[(i, state[i]['sent'], len(state[i]['recv'])) for i in unfinished[:5]]}")
            for key, ev in sel.select(timeout=min(left, 1.0)):
                s, st = key.fileobj, key.data
                payload = payloads[st["i"]]
                if ev & selectors.EVENT_WRITE and not st["wr_shut"]:
                    try:
                        st["sent"] += s.send(payload[st["sent"]:st["sent"] + 65536])
                    except BlockingIOError:
                        pass
                    if st["sent"] == len(payload):
                        s.shutdown(socket.SHUT_WR)
                        st["wr_shut"] = True
                        sel.modify(s, selectors.EVENT_READ, st)
                if ev & selectors.EVENT_READ:
                    try:
                        data = s.recv(65536)
                    except BlockingIOError:
                        continue
                    if data:
                        st["recv"] += data
                        assert len(st["recv"]) <= len(payload), \
                            f"conn {st['i']}: more bytes echoed than sent"
                    else:
                        assert st["wr_shut"], f"conn {st['i']}: EOF before the request was sent"
                        assert st["recv"] == payload, (
                            f"conn {st['i']}: echo differs: got {len(st['recv'])} bytes, "
                            f"sent {len(payload)}; first difference at "
                            f"{next((k for k, (a, b) in enumerate(zip(st['recv'], payload)) if a != b), min(len(st['recv']), len(payload)))}")
                        st["done"] = True
                        sel.unregister(s)
                        remaining -= 1
        assert all(st["done"] and st["recv"] == payloads[st["i"]] for st in state)
        assert echo.max_open >= n_conns
        assert not echo.errors, f"echo server errors: {echo.errors[:5]}"
        for s in conns:
            s.close()
        # Every relayed connection ended on both sides: the proxy holds no socket for them.
        proxy.wait_fds_at_most(fds_idle, timeout=10)
    finally:
        sel.close()
        for s in conns:
            s.close()


@pytest.mark.timeout(30)
def test_ipv6_listener_to_ipv4_upstream(tcpfault, servers, sockets):
    if not ipv6_loopback_available():
        pytest.skip("IPv6 loopback ::1 is not available on this machine")
    echo = servers.echo()
    proxy = tcpfault.quick(echo.addr, listen="[::1]:0")
    rec = proxy.find_logs("listening", proxy="main")[0]
    assert re.fullmatch(r"\[::1\]:\d+", rec["addr"]), \
        f"IPv6 listen address should be logged as [::1]:PORT, got {rec['addr']!r}"

    host, port = proxy.addr()
    assert host == "::1"
    c = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    sockets.append(c)
    c.settimeout(5)
    c.connect(("::1", port))
    payload = random.Random(6).randbytes(1 * MiB)
    res = run_threads([
        ("send", lambda: (c.sendall(payload), c.shutdown(socket.SHUT_WR))),
        ("recv", lambda: recv_until_eof(c, timeout=15)),
    ], timeout=20)
    assert res["recv"] == payload
    assert echo.count() == 1
    # A second connection on the same IPv6 listener.
    c2 = connect(("::1", port))
    sockets.append(c2)
    c2.sendall(b"ping")
    assert recv_exact(c2, 4, timeout=5) == b"ping"
