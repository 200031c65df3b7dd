"""RST passes through as RST; an unreachable or silent upstream is answered as configured."""

import errno
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from admin_helpers import start_with_admin
from helpers import (
    LOOPBACK,
    MiB,
    connect,
    free_port,
    read_outcome,
    recv_exact,
    reset_close,
)

ROUNDS = 4


def _ping_pong(c: socket.socket, s: socket.socket) -> None:
    """Makes sure the connection is relayed end to end before a test breaks it."""
    c.sendall(b"ping")
    assert recv_exact(s, 4, timeout=5) == b"ping"
    s.sendall(b"pong")
    assert recv_exact(c, 4, timeout=5) == b"pong"


@pytest.mark.timeout(30)
def test_server_reset_reaches_client_as_reset(tcpfault, servers, sockets):
    srv = servers.tcp()
    proxy = tcpfault.quick(srv.addr)
    fds_idle = proxy.fd_count()
    for i in range(ROUNDS):
        c = connect(proxy.addr())
        sockets.append(c)
        s = srv.wait_accepted(i + 1, timeout=5)
        _ping_pong(c, s)
        reset_close(s)
        outcome, data, took = read_outcome(c, timeout=5)
        assert outcome == "reset", (
            f"round {i}: client read after the server's RST: expected ECONNRESET, got {outcome}"
            f" (data {data[:40]!r}) after {took:.2f}s")
        assert data == b""
    proxy.wait_fds_at_most(fds_idle)


@pytest.mark.timeout(30)
def test_client_reset_reaches_server_as_reset(tcpfault, servers, sockets):
    srv = servers.tcp()
    proxy = tcpfault.quick(srv.addr)
    fds_idle = proxy.fd_count()
    for i in range(ROUNDS):
        c = connect(proxy.addr())
        s = srv.wait_accepted(i + 1, timeout=5)
        sockets.append(s)
        _ping_pong(c, s)
        reset_close(c)
        outcome, data, took = read_outcome(s, timeout=5)
        assert outcome == "reset", (
            f"round {i}: server read after the client's RST: expected ECONNRESET, got {outcome}"
            f" (data {data[:40]!r}) after {took:.2f}s")
        assert data == b""
    proxy.wait_fds_at_most(fds_idle)


@pytest.mark.timeout(30)
def test_server_reset_after_data_client_gets_reset(tcpfault, servers, sockets):
    """Bytes sent before the RST are delivered; then the client's read fails with ECONNRESET
    and its next write fails too."""
    srv = servers.tcp()
    proxy = tcpfault.quick(srv.addr)
    fds_idle = proxy.fd_count()
    for i in range(ROUNDS):
        c = connect(proxy.addr())
        sockets.append(c)
        s = srv.wait_accepted(i + 1, timeout=5)
        _ping_pong(c, s)
        c.sendall(b"x" * 10_000)
        assert len(recv_exact(s, 10_000, timeout=5)) == 10_000
        s.sendall(b"z" * 65_536)
        assert recv_exact(c, 65_536, timeout=5) == b"z" * 65_536
        reset_close(s)
        outcome, data, _ = read_outcome(c, timeout=5)
        assert outcome == "reset", f"round {i}: expected ECONNRESET, got {outcome} {data[:40]!r}"
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            c.send(b"y" * 1000)
    proxy.wait_fds_at_most(fds_idle)


# Enough rounds that the proxy reads the bytes and the RST in one go in many of them (the RST
# leaves the sender within microseconds of the bytes).
RST_BEHIND_ROUNDS = 20


@pytest.mark.timeout(60)
@pytest.mark.parametrize("who_resets", ["server", "client"])
@pytest.mark.parametrize("when", ["first-read", "after-6-exchanges"])
def test_reset_right_behind_bytes_is_passed_on_as_reset(tcpfault, servers, sockets, who_resets,
                                                         when):
    """A peer that sends its last bytes and aborts at once (a server that answers and closes
    with unread input, a client that gives up): the other peer reads exactly those bytes, then
    ECONNRESET, never EOF. The bytes and the RST often reach the proxy together; read after a
    short read, the RST is only a hang-up (libuv reports it as EOF) or the error of the peek
    that looks for a FIN. "first-read" is that peek's case; after 6 exchanges it no longer
    looks, and the hang-up is told apart by the socket's error."""
    srv = servers.tcp()
    proxy = tcpfault.quick(srv.addr)
    fds_idle = proxy.fd_count()
    last = b"last words before the reset " * 40  # 1,120 bytes
    for i in range(RST_BEHIND_ROUNDS):
        c = connect(proxy.addr())
        s = srv.wait_accepted(i + 1, timeout=5)
        sender, receiver = (s, c) if who_resets == "server" else (c, s)
        sockets.append(receiver)
        if when == "after-6-exchanges":
            for _ in range(6):
                _ping_pong(c, s)
        # Without NODELAY, Nagle would hold the bytes behind the unacknowledged last pong and
        # the abortive close would discard them, proxy or not.
        sender.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sender.sendall(last)
        reset_close(sender)
        outcome, data, took = read_outcome(receiver, timeout=5)
        assert (outcome, len(data)) == ("reset", len(last)), (
            f"round {i}: the {'client' if who_resets == 'server' else 'server'} read"
            f" {len(data)} of {len(last)} bytes, then {outcome} after {took:.2f}s")
        assert data == last
        receiver.close()
    proxy.wait_fds_at_most(fds_idle)


@pytest.mark.timeout(60)
def test_fin_then_reset_right_behind_bytes_reads_as_eof(tcpfault, servers, sockets):
    """A server that sends its last bytes and its FIN, then aborts: a reader meets the FIN
    first, directly as through the proxy (bytes, then EOF), also late in a connection, where
    the proxy tells libuv's made-up EOF apart by the socket's error (EPIPE there, not
    ECONNRESET)."""
    srv = servers.tcp()
    last = b"bye " * 100

    def exchange_and_abort(c, s):
        for _ in range(6):
            _ping_pong(c, s)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(last)
        s.shutdown(socket.SHUT_WR)
        reset_close(s)

    host, port = srv.addr.rsplit(":", 1)
    c = connect((host, int(port)))
    sockets.append(c)
    exchange_and_abort(c, srv.wait_accepted(1, timeout=5))
    outcome, data, _ = read_outcome(c, timeout=5)
    assert (outcome, data) == ("eof", last), f"direct: {len(data)} bytes, then {outcome}"
    proxy = tcpfault.quick(srv.addr)
    for i in range(RST_BEHIND_ROUNDS):
        c = connect(proxy.addr())
        sockets.append(c)
        exchange_and_abort(c, srv.wait_accepted(i + 2, timeout=5))
        outcome, data, took = read_outcome(c, timeout=5)
        assert (outcome, data) == ("eof", last), (
            f"round {i}: the client read {len(data)} bytes, then {outcome} after {took:.2f}s")


# A server in a process of its own: accepts, sends BANNER (hex, may be empty), its FIN if
# asked, then resets.
_RESET_AT_ACCEPT_SERVER = r"""
import os, socket, struct, sys
os.sched_setaffinity(0, {0})
banner = bytes.fromhex(sys.argv[1])
fin_first = sys.argv[2] == "fin"
ls = socket.socket()
ls.bind(("127.0.0.1", 0))
ls.listen(64)
print(ls.getsockname()[1], flush=True)
while True:
    s, _ = ls.accept()
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if banner:
        s.sendall(banner)
    if fin_first:
        s.shutdown(socket.SHUT_WR)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
"""


def _connect_direct_to_server_that_resets(server: subprocess.Popen, addr: tuple[str, int],
                                         request: bytes = b"") -> socket.socket:
    """Direct, the server's RST can beat the client's own connect(): a non-blocking connect()
    returns before the handshake is taken in, and a server that runs first resets the connection
    before the client looks (connect() then fails with ECONNRESET; most tries on a busy machine
    here). Any client of that server meets that. The control wants what a client whose connect()
    returned reads next, so the server is stopped while the client connects: the kernel
    completes the handshake on its own, and the server accepts and resets once it runs again.
    A `request` is sent in that window too, as the kernel takes it whatever the server does."""
    server.send_signal(signal.SIGSTOP)
    try:
        c = connect(addr)
        c.sendall(request)
        return c
    finally:
        server.send_signal(signal.SIGCONT)


def _lowest_priority_on_cpu0(pid: int) -> None:
    """Every thread of pid runs on CPU 0 only, and only when nothing else there wants to."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(tid), {0})
        os.sched_setscheduler(int(tid), os.SCHED_IDLE, os.sched_param(0))


@pytest.mark.timeout(60)
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 CPUs to order the race")
@pytest.mark.parametrize("banner,fin,expected", [
    (b"421 too busy, bye\r\n", False, "reset"),
    (b"", False, "reset"),
    (b"421 too busy, bye\r\n", True, "eof"),
], ids=["banner-rst", "rst", "banner-fin-rst"])
def test_server_that_resets_at_accept(tcpfault, sockets, banner, fin, expected):
    """A server that answers (or not) and resets as soon as it accepts, as an overloaded one
    does. Direct, a client connects, reads the banner, then ECONNRESET (EOF when the server's
    FIN came before its RST); through the proxy the same, also when the RST reaches the proxy
    before it has seen its connection made: its connect then reports ECONNRESET (EPIPE after
    a FIN), for a connection that was made and reset, not a failed one (no upstream error
    either). To make the RST win that race every time, the proxy runs on CPU 0 at the lowest
    priority, next to the server: the server, woken by the handshake the proxy's connect()
    completes, runs first."""
    srv = subprocess.Popen([sys.executable, "-c", _RESET_AT_ACCEPT_SERVER, banner.hex(),
                            "fin" if fin else "rst"], stdout=subprocess.PIPE)
    try:
        port = int(srv.stdout.readline())
        direct = _connect_direct_to_server_that_resets(srv, (LOOPBACK, port))
        sockets.append(direct)
        outcome, data, _ = read_outcome(direct, timeout=5)
        assert (outcome, data) == (expected, banner), f"direct: {data!r}, then {outcome}"
        p, api = start_with_admin(tcpfault, [{"name": "main", "upstream": f"127.0.0.1:{port}"}],
                                  level="debug")
        _lowest_priority_on_cpu0(p.proc.pid)
        os.sched_setaffinity(0, {1})  # this thread, the client, stays out of the way
        try:
            for i in range(RST_BEHIND_ROUNDS):
                c = connect(p.addr("main"))
                sockets.append(c)
                outcome, data, took = read_outcome(c, timeout=5)
                assert (outcome, data) == (expected, banner), (
                    f"round {i}: the client read {data!r}, then {outcome} after {took:.2f}s")
        finally:
            os.sched_setaffinity(0, range(os.cpu_count() or 1))
        early = len(p.find_logs("server reset before the connection was seen made"))
        assert early > 0, "no RST beat the connect callback: the test did not test that path"
        print(f"{early} of {RST_BEHIND_ROUNDS} resets reached the proxy before its connect callback")
        m = api.scrape()
        for err in ("reset", "other"):
            assert m.value("tcpfault_upstream_errors_total", proxy="main", error=err) == 0
    finally:
        srv.kill()
        srv.wait()


@pytest.mark.timeout(60)
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 CPUs to order the race")
def test_client_that_resets_before_it_is_accepted(tcpfault, servers, sockets):
    """A client that sends its request and gives up (RST) before the proxy has even accepted
    it: the server reads the request, then ECONNRESET, as it would directly (checked first).
    The proxy runs on CPU 0 at the lowest priority and the client sends and resets from CPU 0,
    so the proxy accepts only after the RST has arrived."""
    srv = servers.tcp()
    request = b"GET / HTTP/1.0\r\n\r\n"

    def send_and_reset(addr):
        os.sched_setaffinity(0, {0})
        try:
            c = connect(addr)
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            c.sendall(request)
            reset_close(c)
        finally:
            os.sched_setaffinity(0, range(os.cpu_count() or 1))

    direct = srv.addr.rsplit(":", 1)
    send_and_reset((direct[0], int(direct[1])))
    s = srv.wait_accepted(1, timeout=5)
    sockets.append(s)
    outcome, data, _ = read_outcome(s, timeout=5)
    assert (outcome, data) == ("reset", request), f"direct: {data!r}, then {outcome}"
    p, _ = start_with_admin(tcpfault, [{"name": "main", "upstream": srv.addr}])
    _lowest_priority_on_cpu0(p.proc.pid)
    for i in range(RST_BEHIND_ROUNDS):
        send_and_reset(p.addr("main"))
        s = srv.wait_accepted(i + 2, timeout=5)
        sockets.append(s)
        outcome, data, took = read_outcome(s, timeout=5)
        assert (outcome, data) == ("reset", request), (
            f"round {i}: the server read {data!r}, then {outcome} after {took:.2f}s")


@pytest.mark.timeout(60)
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 CPUs to order the race")
@pytest.mark.parametrize("fin,expected", [(False, "reset"), (True, "eof")],
                         ids=["banner-rst", "banner-fin-rst"])
def test_server_that_resets_at_accept_keeps_its_banner_whatever_the_client_sends(
        tcpfault, sockets, fin, expected):
    """As above, with a long banner the proxy reads 16 bytes at a time (clamp read_size) and a
    client that sends its request at once. Direct, the client reads the whole banner then
    ECONNRESET (EOF after the server's FIN). Through the proxy, the client's request must not
    be written to the server's dead socket while banner bytes wait: that write's error would
    end the connection there and cut the banner short (about 1 KiB of 8 KiB arrived)."""
    banner = bytes(random.Random(7).getrandbits(8) for _ in range(8192))
    request = b"HELO client\r\n"
    srv = subprocess.Popen([sys.executable, "-c", _RESET_AT_ACCEPT_SERVER, banner.hex(),
                            "fin" if fin else "rst"], stdout=subprocess.PIPE)
    try:
        port = int(srv.stdout.readline())
        direct = _connect_direct_to_server_that_resets(srv, (LOOPBACK, port), request)
        sockets.append(direct)
        outcome, data, _ = read_outcome(direct, timeout=5)
        assert (outcome, data) == (expected, banner), f"direct: {len(data)} bytes, then {outcome}"
        p, api = start_with_admin(tcpfault, [{
            "name": "main", "upstream": f"127.0.0.1:{port}",
            "rules": ["{name: short-reads, fault: {type: clamp, side: server, read_size: 16}}"]}],
            level="debug")
        _lowest_priority_on_cpu0(p.proc.pid)
        os.sched_setaffinity(0, {1})
        try:
            for i in range(RST_BEHIND_ROUNDS):
                c = connect(p.addr("main"))
                sockets.append(c)
                c.sendall(request)
                outcome, data, took = read_outcome(c, timeout=5)
                assert (outcome, len(data)) == (expected, len(banner)), (
                    f"round {i}: the client read {len(data)} bytes, then {outcome} after"
                    f" {took:.2f}s")
                assert data == banner
        finally:
            os.sched_setaffinity(0, range(os.cpu_count() or 1))
        early = len(p.find_logs("server reset before the connection was seen made"))
        assert early > 0, "no RST beat the connect callback: the test did not test that path"
        # Every connection ends once its client has gone, as a direct one does. (After a FIN,
        # a session whose connect saw no error may have written the request before the RST
        # came; it then waits, half-closed, for the client, which keeps its socket open here.)
        for c in sockets:
            c.close()
        api.wait_metric("tcpfault_connections_active", 0, timeout=5, proxy="main")
    finally:
        srv.kill()
        srv.wait()


class Streamer(threading.Thread):
    """Sends on a socket until a send fails; records the error and when it happened."""

    def __init__(self, sock):
        super().__init__(daemon=True)
        self.sock = sock
        self.sent = 0
        self.error = None
        self.failed_at = None
        self.done = threading.Event()

    def run(self):
        block = b"s" * 65536
        try:
            self.sock.settimeout(20)
            while True:
                self.sent += self.sock.send(block)
        except OSError as e:
            self.error = e
            self.failed_at = time.monotonic()
        finally:
            self.done.set()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("who_resets", ["client", "server"])
def test_reset_while_other_side_streams(tcpfault, servers, sockets, who_resets):
    """One side streams into the proxy while the other side, which is not reading, resets:
    the proxy must not keep waiting to flush its queued bytes; the streaming side's sends
    fail (ECONNRESET/EPIPE) promptly."""
    srv = servers.tcp()
    proxy = tcpfault.quick(srv.addr)
    fds_idle = proxy.fd_count()
    for i in range(2):
        c = connect(proxy.addr())
        s = srv.wait_accepted(i + 1, timeout=5)
        _ping_pong(c, s)
        streaming, resetting = (s, c) if who_resets == "client" else (c, s)
        sockets.append(streaming)
        st = Streamer(streaming)
        st.start()
        # Let data pile up in the proxy (the resetting side does not read).
        deadline = time.monotonic() + 5
        while st.sent < 4 * MiB and not st.done.is_set() and time.monotonic() < deadline:
            time.sleep(0.01)  # polling a counter
        assert not st.done.is_set(), f"round {i}: streaming failed early: {st.error!r}"
        t_reset = time.monotonic()
        reset_close(resetting)
        assert st.done.wait(5), (
            f"round {i}: the {who_resets} reset, but the other side could still send 5s later "
            f"({st.sent} bytes sent in total)")
        assert isinstance(st.error, (ConnectionResetError, BrokenPipeError)), \
            f"round {i}: streaming side's send failed with {st.error!r}"
        assert st.failed_at - t_reset < 2.0
    proxy.wait_fds_at_most(fds_idle)


def _down_port() -> int:
    return free_port(LOOPBACK)


def _connect_and_read(addr, sockets, timeout: float = 5.0) -> tuple[str, bytes]:
    """Connects, reads until EOF/error, closes. The proxy may answer so fast that the RST
    arrives before the client's connect() returned; that is a reset as well."""
    try:
        c = connect(addr)
    except ConnectionResetError:
        return "reset", b""
    sockets.append(c)
    outcome, data, _ = read_outcome(c, timeout=timeout)
    c.close()  # the client is done: the proxy need not linger on its half of the connection
    return outcome, data


@pytest.mark.timeout(30)
def test_upstream_refused_default_resets_client(tcpfault, sockets):
    proxy = tcpfault.quick(f"{LOOPBACK}:{_down_port()}")
    fds_idle = proxy.fd_count()
    for i in range(ROUNDS):
        t0 = time.monotonic()
        outcome, data = _connect_and_read(proxy.addr(), sockets)
        took = time.monotonic() - t0
        assert outcome == "reset", \
            f"round {i}: upstream refused: client expected ECONNRESET, got {outcome} {data[:40]!r}"
        assert took < 2.0, f"round {i}: RST took {took:.2f}s, expected < 2s"
    assert proxy.running(), "the proxy must survive an unreachable upstream"
    proxy.wait_fds_at_most(fds_idle)


@pytest.mark.timeout(30)
def test_upstream_refused_reset_configured_explicitly(tcpfault, sockets):
    proxy = tcpfault.from_proxies([{
        "name": "main", "listen": f"{LOOPBACK}:0", "upstream": f"{LOOPBACK}:{_down_port()}",
        "on_upstream_error": "reset"}])
    t0 = time.monotonic()
    outcome, data = _connect_and_read(proxy.addr(), sockets)
    took = time.monotonic() - t0
    assert outcome == "reset", f"expected ECONNRESET, got {outcome} {data[:40]!r}"
    assert took < 2.0


@pytest.mark.timeout(30)
def test_upstream_refused_close_gives_client_eof(tcpfault, sockets):
    proxy = tcpfault.from_proxies([{
        "name": "main", "listen": f"{LOOPBACK}:0", "upstream": f"{LOOPBACK}:{_down_port()}",
        "on_upstream_error": "close"}])
    fds_idle = proxy.fd_count()
    for i in range(ROUNDS):
        t0 = time.monotonic()
        outcome, data = _connect_and_read(proxy.addr(), sockets)
        took = time.monotonic() - t0
        assert (outcome, data) == ("eof", b""), \
            f"round {i}: on_upstream_error close: client expected EOF, got {outcome} {data[:40]!r}"
        assert took < 2.0, f"round {i}: EOF took {took:.2f}s, expected < 2s"
    proxy.wait_fds_at_most(fds_idle)


class Blackhole:
    """A listener with a full accept queue that never accepts: further SYNs are dropped, so
    connecting to it hangs (like a firewall that drops packets)."""

    def __init__(self):
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.bind((LOOPBACK, 0))
        self.lsock.listen(0)
        self.port = self.lsock.getsockname()[1]
        self.fillers: list[socket.socket] = []

    def fill(self) -> bool:
        """Connects directly until a connect does not complete within 300ms."""
        for _ in range(8):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            self.fillers.append(s)
            rc = s.connect_ex((LOOPBACK, self.port))
            if rc not in (0, errno.EINPROGRESS):
                return False
            if rc == errno.EINPROGRESS:
                import select
                _, w, _ = select.select([], [s], [], 0.3)
                if not w:
                    return True  # this connect hangs: the queue is full, SYNs are dropped
                if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0:
                    return False
        return False

    def close(self):
        for s in self.fillers:
            s.close()
        self.lsock.close()


@pytest.fixture
def blackhole():
    b = Blackhole()
    yield b
    b.close()


@pytest.mark.timeout(30)
def test_upstream_connect_timeout_resets_client(tcpfault, sockets, blackhole):
    if not blackhole.fill():
        pytest.skip("the kernel completes connects to a full listen(0) queue: no blackhole")
    proxy = tcpfault.from_proxies([{
        "name": "main", "listen": f"{LOOPBACK}:0", "upstream": f"{LOOPBACK}:{blackhole.port}",
        "connect_timeout": "1s"}])
    t0 = time.monotonic()
    outcome, data = _connect_and_read(proxy.addr(), sockets)
    took = time.monotonic() - t0
    assert outcome == "reset", f"connect timeout: client expected ECONNRESET, got {outcome}" \
                               f" {data[:40]!r} after {took:.2f}s"
    assert 0.9 <= took <= 2.0, f"answered after {took:.2f}s, expected connect_timeout 1s (+1s)"


@pytest.mark.timeout(30)
def test_upstream_connect_timeout_close_gives_eof(tcpfault, sockets, blackhole):
    if not blackhole.fill():
        pytest.skip("the kernel completes connects to a full listen(0) queue: no blackhole")
    proxy = tcpfault.from_proxies([{
        "name": "main", "listen": f"{LOOPBACK}:0", "upstream": f"{LOOPBACK}:{blackhole.port}",
        "connect_timeout": "1s", "on_upstream_error": "close"}])
    t0 = time.monotonic()
    outcome, data = _connect_and_read(proxy.addr(), sockets)
    took = time.monotonic() - t0
    assert (outcome, data) == ("eof", b""), \
        f"connect timeout with close: client expected EOF, got {outcome} after {took:.2f}s"
    assert 0.9 <= took <= 2.0, f"answered after {took:.2f}s, expected connect_timeout 1s (+1s)"
