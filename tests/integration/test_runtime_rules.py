"""Rules that appear at runtime (here through a SIGHUP reload) hit connections already open,
unless `existing: false`; rules already in force do not fire twice."""

from __future__ import annotations

import os
import signal
import socket
import time

import pytest

from admin_helpers import start_with_admin
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


def _round_trip(s: socket.socket) -> float:
    t0 = time.monotonic()
    s.sendall(b"?")
    assert recv_exact(s, 1, timeout=5) == b"?"
    return time.monotonic() - t0


@pytest.mark.timeout(120)
def test_rule_changed_again_and_again_leaves_nothing_on_open_connections(tcpfault, servers,
                                                                          sockets, monkeypatch):
    """A rule switched off and on over the API 150 times, and replaced (PUT) 50 times, while
    connections are open: the process does not grow with the count, and each open connection
    lists it once and still gets it. Each change is a new snapshot of the proxy's rules;
    an open connection used to keep a rule set for every one, holding the whole snapshot's
    compiled rules (here a 100 KB `data` literal of another rule: about 1 MB a change), and to
    list the rule once per change."""
    # An ASan build keeps what is freed in a quarantine (256 MiB), which RSS would count.
    monkeypatch.setenv("ASAN_OPTIONS", os.environ.get("ASAN_OPTIONS", "") + ":quarantine_size_mb=4")
    echo = servers.echo()
    big = "{name: big, when: {data: \"%s\"}, fault: {type: reset}}" % ("x" * 100_000)
    p, api = start_with_admin(tcpfault, [{
        "name": "p", "upstream": echo.addr,
        "rules": [big, "{name: slow, fault: {type: latency, delay: 250ms}}"]}])
    conns = [connect(p.addr("p")) for _ in range(5)]
    sockets.extend(conns)
    for c in conns:
        assert _round_trip(c) >= 0.24
    ids = [c["id"] for c in api.connections("p")]
    assert len(ids) == 5
    rss0 = p.rss_kib()
    for i in range(150):
        api.ok_json("POST", "/api/proxies/p/rules/slow/disable")
        api.ok_json("POST", "/api/proxies/p/rules/slow/enable")
    for i in range(50):
        api.ok_json("PUT", "/api/proxies/p/rules/slow",
                    {"name": "slow", "fault": {"type": "latency", "delay": f"{250 + i}ms"}})
    grew_mib = (p.rss_kib() - rss0) / 1024
    assert grew_mib < 40, f"the process grew by {grew_mib:.0f} MiB over 350 rule changes"
    for cid in ids:
        rules = api.ok_json("GET", f"/api/proxies/p/connections/{cid}")["rules"]
        assert sorted(rules) == ["big", "slow"], f"connection {cid} lists {len(rules)} rules"
    for c in conns:
        assert _round_trip(c) >= 0.29  # the last one: 299 ms (the replaced ones are lifted)
    api.ok_json("POST", "/api/proxies/p/rules/slow/disable")
    for cid in ids:
        assert api.ok_json("GET", f"/api/proxies/p/connections/{cid}")["rules"] == ["big"]
    for c in conns:
        assert _round_trip(c) < 0.2
