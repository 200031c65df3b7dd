"""slow_close (Toxiproxy's toxic): the FIN is passed on `delay` after it arrived; the bytes
before it are not delayed."""

from __future__ import annotations

import time

import pytest

from helpers import connect, read_outcome


def config(upstream: str, delay: str) -> str:
    return f"""admin: {{listen: "off"}}
log: {{format: json, level: info}}
proxies:
  - name: p
    listen: 127.0.0.1:0
    upstream: {upstream}
    rules:
      - name: sc
        fault: {{type: slow_close, delay: {delay}, direction: downstream}}
"""


@pytest.mark.timeout(20)
def test_slow_close_delays_the_fin_not_the_bytes(tcpfault, servers, sockets):
    sent = {}

    def handler(conn):
        conn.sendall(b"hello")
        sent["fin_at"] = time.monotonic()
        conn.close()

    srv = servers.tcp(handler)
    p = tcpfault.from_config(config(srv.addr, "600ms"))
    c = connect(p.addr("p"))
    sockets.append(c)
    c.settimeout(5)
    first = c.recv(5)
    got_bytes = time.monotonic()
    assert first == b"hello"
    outcome, rest, _ = read_outcome(c, timeout=5)
    eof_at = time.monotonic()
    assert (outcome, rest) == ("eof", b"")
    assert got_bytes - sent["fin_at"] < 0.3, "the bytes before the FIN were delayed"
    held = eof_at - sent["fin_at"]
    assert 0.55 <= held < 1.2, f"FIN passed {held:.3f}s after the server's, expected ~0.6s"
