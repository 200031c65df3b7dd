"""A slow reader slows the writer (TCP backpressure) instead of growing the proxy's memory."""

import hashlib
import os
import threading
import time

import pytest

from fault_helpers import start_proxy
from helpers import KiB, MiB, connect

TOTAL = 256 * MiB
RSS_GROWTH_LIMIT_KIB = 16 * 1024


class Pusher(threading.Thread):
    """Sends TOTAL random bytes on a socket, counting progress and hashing what it sent."""

    def __init__(self, sock):
        super().__init__(daemon=True)
        self.sock = sock
        self.sent = 0
        self.sha = hashlib.sha256()
        self.error = None
        self.done = threading.Event()

    def run(self):
        try:
            chunk_size = 1 * MiB
            left = TOTAL
            while left:
                data = os.urandom(min(chunk_size, left))
                self.sha.update(data)
                view = memoryview(data)
                while view:
                    n = self.sock.send(view[:64 * KiB])
                    self.sent += n
                    view = view[n:]
                left -= len(data)
            self.sock.close()
        except BaseException as e:
            self.error = e
        finally:
            self.done.set()


def wait_until_stalled(pusher: Pusher, sample, quiet: float = 0.5, timeout: float = 30.0) -> int:
    """Samples the sender's byte counter until it stays unchanged for `quiet` seconds; calls
    sample() at every step (to watch the proxy's memory meanwhile)."""
    deadline = time.monotonic() + timeout
    last = pusher.sent
    last_change = time.monotonic()
    while True:
        if pusher.done.wait(0.05):
            raise AssertionError(
                f"the server finished sending {pusher.sent} bytes to a client that reads nothing"
                f" (error: {pusher.error!r}): the proxy did not apply backpressure")
        sample()
        now = time.monotonic()
        cur = pusher.sent
        if cur != last:
            last, last_change = cur, now
        elif now - last_change >= quiet:
            return cur
        assert now < deadline, f"the server's sends never stalled within {timeout}s ({cur} sent)"


@pytest.mark.timeout(90)
def test_slow_client_blocks_server_with_bounded_memory(tcpfault, servers, sockets):
    srv = servers.tcp()
    proxy = tcpfault.quick(srv.addr)

    client = connect(proxy.addr())
    sockets.append(client)
    server = srv.wait_accepted(1, timeout=5)
    # A round trip first, so the connection is fully set up when the baseline is taken.
    client.sendall(b"go")
    assert server.recv(2) == b"go"
    rss_before = proxy.rss_kib()

    pusher = Pusher(server)
    pusher.start()
    rss_max = [rss_before]

    def sample():
        rss_max[0] = max(rss_max[0], proxy.rss_kib())

    stalled_at = wait_until_stalled(pusher, sample)
    sample()
    rss_blocked = rss_max[0]
    growth = rss_blocked - rss_before

    print(f"stalled at {stalled_at} bytes; RSS {rss_before} -> {rss_blocked} KiB")
    assert stalled_at < TOTAL, "the server was never blocked"
    assert growth < RSS_GROWTH_LIMIT_KIB, (
        f"proxy RSS grew by {growth} KiB ({rss_before} -> {rss_blocked} KiB) while the client "
        f"was not reading and the server had sent {stalled_at} bytes; limit "
        f"{RSS_GROWTH_LIMIT_KIB} KiB")

    # Now the client reads everything: all bytes arrive, unchanged.
    sha = hashlib.sha256()
    got = 0
    buf = bytearray(1 * MiB)
    view = memoryview(buf)
    deadline = time.monotonic() + 45
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"client read only {got} of {TOTAL} bytes within 45s"
        client.settimeout(left)
        n = client.recv_into(view)
        if n == 0:
            break
        sha.update(view[:n])
        got += n
    assert pusher.done.wait(5), "server did not finish sending"
    assert pusher.error is None, f"server send failed: {pusher.error!r}"
    assert got == TOTAL, f"client received {got} bytes, server sent {TOTAL}"
    assert sha.hexdigest() == pusher.sha.hexdigest(), "bytes differ (sha256)"
    rss_after = proxy.rss_kib()
    assert rss_after - rss_before < RSS_GROWTH_LIMIT_KIB, \
        f"proxy RSS after the transfer: {rss_before} -> {rss_after} KiB"


@pytest.mark.timeout(90)
@pytest.mark.parametrize("rules", [
    ["{name: crumbs, fault: {type: slice, size: 1, direction: downstream}}"],
    ["{name: sips, fault: {type: clamp, side: server, read_size: 1}}",
     "{name: later, fault: {type: latency, delay: 1h, direction: downstream}}"],
], ids=["slice-1-byte", "read-1-byte-delayed"])
def test_tiny_pieces_to_a_client_that_reads_nothing_are_bounded_too(tcpfault, servers, sockets,
                                                                     rules, monkeypatch):
    """A stream cut into 1-byte writes (slice), or read 1 byte at a time and held (clamp
    read_size 1 behind a latency): what waits costs more than its bytes, a write request or a
    held entry per byte. Flow control counts that cost, so memory stays bounded as for bytes
    (it counted bytes only: 256 KiB of 1-byte writes was about 80 MB, of 1-byte held reads
    about 19 MB, per connection)."""
    # An ASan build keeps what is freed in a quarantine (256 MiB), which RSS would count.
    monkeypatch.setenv("ASAN_OPTIONS", os.environ.get("ASAN_OPTIONS", "") + ":quarantine_size_mb=4")
    srv = servers.tcp()
    proxy = start_proxy(tcpfault, srv.addr, rules)
    clients = []
    for i in range(4):
        c = connect(proxy.addr())
        sockets.append(c)
        clients.append((c, srv.wait_accepted(i + 1, timeout=5)))
    rss_before = proxy.rss_kib()
    rss_max = [rss_before]

    def sample():
        rss_max[0] = max(rss_max[0], proxy.rss_kib())

    pushers = [Pusher(server) for _, server in clients]
    for pu in pushers:
        pu.start()
    for pu in pushers:
        stalled_at = wait_until_stalled(pu, sample)
        assert stalled_at < TOTAL
    sample()
    growth = rss_max[0] - rss_before
    print(f"RSS {rss_before} -> {rss_max[0]} KiB")
    # Measured 1-3 MiB (about 12 MiB on an ASan build, whose redzones make each request
    # bigger); counting bytes only, it was 76-280 MiB.
    limit_kib = 32 * 1024
    assert growth < limit_kib, (
        f"proxy RSS grew by {growth} KiB with 4 clients reading nothing; limit {limit_kib} KiB")
