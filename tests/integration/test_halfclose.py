"""Half-close passes through: a FIN is forwarded after the bytes before it, and the other
direction keeps flowing."""

import random
import socket

import pytest

from helpers import MiB, connect, read_outcome, recv_until_eof, run_threads


@pytest.mark.timeout(30)
def test_client_half_closes_first(tcpfault, servers, sockets):
    srv = servers.tcp()
    proxy = tcpfault.quick(srv.addr)
    fds_idle = proxy.fd_count()
    # Large enough that the FIN must wait behind bytes queued in the proxy.
    request = random.Random(21).randbytes(4 * MiB)
    reply = random.Random(22).randbytes(1 * MiB)

    for round_ in range(3):
        c = connect(proxy.addr())
        sockets.append(c)
        s = srv.wait_accepted(round_ + 1, timeout=5)
        sockets.append(s)

        def send_request():
            c.sendall(request)
            c.shutdown(socket.SHUT_WR)

        # The server must see the whole request and then EOF (the client's FIN, forwarded
        # after the bytes before it) while the client is still waiting for the reply.
        res = run_threads([("client request", send_request),
                           ("server read", lambda: recv_until_eof(s, timeout=10))], timeout=15)
        got = res["server read"]
        assert len(got) == len(request), f"server got {len(got)} bytes, expected {len(request)}"
        assert got == request

        # The other direction still flows after the FIN.
        def serve():
            s.sendall(reply)
            s.shutdown(socket.SHUT_WR)

        res = run_threads([("server reply", serve),
                           ("client read", lambda: recv_until_eof(c, timeout=10))], timeout=15)
        assert len(res["client read"]) == len(reply)
        assert res["client read"] == reply
        s.close()
        c.close()
    proxy.wait_fds_at_most(fds_idle)


@pytest.mark.timeout(30)
def test_server_half_closes_first(tcpfault, servers, sockets):
    srv = servers.tcp()
    proxy = tcpfault.quick(srv.addr)
    fds_idle = proxy.fd_count()
    greeting = b"220 hello, I will not send anything else\r\n"
    upload = random.Random(23).randbytes(1 * MiB)

    for round_ in range(3):
        c = connect(proxy.addr())
        sockets.append(c)
        s = srv.wait_accepted(round_ + 1, timeout=5)
        sockets.append(s)

        s.sendall(greeting)
        s.shutdown(socket.SHUT_WR)

        # The client gets the greeting and then EOF.
        got = recv_until_eof(c, timeout=5)
        assert got == greeting

        # After having seen EOF, the client keeps sending; the server receives all of it.
        def upload_all():
            c.sendall(upload)
            c.shutdown(socket.SHUT_WR)

        res = run_threads([("client upload", upload_all),
                           ("server read", lambda: recv_until_eof(s, timeout=10))], timeout=15)
        assert len(res["server read"]) == len(upload)
        assert res["server read"] == upload

        # Both halves closed: the server closes, the client sees an orderly end (no RST).
        s.close()
        outcome, data, _ = read_outcome(c, timeout=5)
        assert (outcome, data) == ("eof", b""), f"client after full close: {outcome} {data[:50]!r}"
        c.close()
    proxy.wait_fds_at_most(fds_idle)
