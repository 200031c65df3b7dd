"""Rules that appear at runtime (here through a SIGHUP reload) hit connections already open,
unless `existing: false`; rules already in force do not fire twice."""

from __future__ import annotations

import signal
import socket

import pytest

from helpers import connect, recv_exact


def config(echo_addr: str, rules: str = "") -> str:
    return f"""admin: {{listen: "off"}}
log: {{format: json, level: info}}
proxies:
  - name: p
    listen: 127.0.0.1:0
    upstream: {echo_addr}
    rules:
{rules or "      []"}
"""


STALL = """      - name: stall-all
        match: {existing: EXISTING}
        fault: {type: stall, direction: both}
"""


def echo_round(s: socket.socket, payload: bytes, timeout: float) -> bytes:
    s.sendall(payload)
    s.settimeout(timeout)
    try:
        return s.recv(len(payload))
    except socket.timeout:
        return b""


@pytest.mark.timeout(30)
def test_reload_adds_stall_that_hits_an_open_connection(tcpfault, servers, sockets):
    echo = servers.echo()
    p = tcpfault.from_config(config(echo.addr))
    a = connect(p.addr("p"))
    sockets.append(a)
    a.sendall(b"ping")
    assert recv_exact(a, 4, timeout=3) == b"ping"

    mark = len(p.records)
    tcpfault.write_config(config(echo.addr, STALL.replace("EXISTING", "true")),
                          name=p.config_path.name)
    p.signal(signal.SIGHUP)
    p.wait_for_log("reloaded", since=mark, timeout=5)
    p.wait_for_log("fault injected", since=mark, timeout=5, rule="stall-all")
    assert echo_round(a, b"held", timeout=0.7) == b"", "open connection was not stalled"

    b = connect(p.addr("p"))
    sockets.append(b)
    assert echo_round(b, b"new!", timeout=0.7) == b"", "new connection was not stalled"

    # Reloading the same file again must not apply the rule a second time.
    mark = len(p.records)
    p.signal(signal.SIGHUP)
    p.wait_for_log("reloaded", since=mark, timeout=5)
    assert not [r for r in p.records[mark:] if r.get("msg") == "fault injected"]


@pytest.mark.timeout(30)
def test_existing_false_spares_open_connections(tcpfault, servers, sockets):
    echo = servers.echo()
    p = tcpfault.from_config(config(echo.addr))
    a = connect(p.addr("p"))
    sockets.append(a)
    assert echo_round(a, b"one", timeout=3) == b"one"

    mark = len(p.records)
    tcpfault.write_config(config(echo.addr, STALL.replace("EXISTING", "false")),
                          name=p.config_path.name)
    p.signal(signal.SIGHUP)
    p.wait_for_log("reloaded", since=mark, timeout=5)
    assert echo_round(a, b"two", timeout=3) == b"two", "open connection was affected"

    b = connect(p.addr("p"))
    sockets.append(b)
    assert echo_round(b, b"new", timeout=0.7) == b"", "new connection was not stalled"
