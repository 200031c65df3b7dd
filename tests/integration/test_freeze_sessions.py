"""Issue #12: sessions that never end, and a proxy that connects to itself.

- Toxiproxy `bandwidth {rate: 0}` (a hold stall) on the upstream stream: clients that
  disconnect must not leave their sessions behind once the toxic is gone (deleted, or every
  toxic removed by `POST /reset`): file descriptors back to the baseline and
  `tcpfault_connections_active` 0.
- A proxy whose upstream is its own listen address is refused by `--check` (exit 2, with a
  message), by a reload over the admin API and by the Toxiproxy API (4xx); a listen address
  that only covers the upstream (0.0.0.0:P vs 127.0.0.1:P) is refused too or, if it runs, one
  client connection does not turn into a loop that eats every descriptor.

Every test also probes /healthz every 100 ms: each answer in under 50 ms.
"""

from __future__ import annotations

import json
import socket
import time

import pytest

from admin_helpers import Admin, admin_port
from fault_helpers import pattern
from freeze_helpers import kill_on_failure, probing, toxiproxy_api_port
from helpers import (LOOPBACK, connect, free_port, parse_addr, recv_exact, reset_close,
                     run_tcpfault)

BOUND = 0.050


def toxiproxy_config(tcpfault, servers):
    """tcpfault with the admin API and `--toxiproxy-api 127.0.0.1:0`; its one file proxy is
    `canary`, to an echo server, for the freeze probe's data-path check. Returns (process,
    admin client, Toxiproxy API client)."""
    path = tcpfault.write_config(
        "admin: {listen: 127.0.0.1:0}\nlog: {format: json, level: info}\nproxies:\n"
        f"  - {{name: canary, listen: 127.0.0.1:0, upstream: \"{servers.echo().addr}\"}}\n")
    p = tcpfault.spawn(["-c", str(path), "--toxiproxy-api", "127.0.0.1:0"])
    p.config_path = path
    p.wait_listening(1)
    admin = Admin(admin_port(p))
    toxi = Admin(toxiproxy_api_port(p))
    return p, admin, toxi


def freeze_probe(p):
    """/healthz every 100 ms, and an echo through the `canary` proxy."""
    return probing(admin_port(p), canary=p.addr("canary"))


def echo_round(addr, payload: bytes, timeout: float = 5.0) -> None:
    s = connect(addr, timeout=timeout)
    try:
        s.sendall(payload)
        assert recv_exact(s, len(payload), timeout=timeout) == payload
    finally:
        s.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("lift", ["delete-toxic", "reset"])
def test_bandwidth_zero_sessions_are_released_once_the_toxic_is_gone(tcpfault, servers, lift):
    """50 clients send 8 KiB each through a Toxiproxy proxy whose upstream stream has
    `bandwidth {rate: 0}` (nothing moves), then disconnect, half of them with FIN, half with
    RST. Once the toxic is deleted (or `POST /reset` removes every toxic), every one of those
    sessions must end: descriptors back to the baseline and connections_active 0 within 5 s,
    while /healthz keeps answering in < 50 ms; the proxy then relays a new echo intact."""
    echo = servers.selector_echo()
    p, admin, toxi = toxiproxy_config(tcpfault, servers)
    with kill_on_failure(p):
        r = toxi.post("/proxies", {"name": "bw", "listen": "127.0.0.1:0", "upstream": echo.addr})
        assert r.status == 201, r
        addr = parse_addr(r.json()["listen"])
        echo_round(addr, b"warm-up")
        admin.wait_metric("tcpfault_connections_active", 0, timeout=5, proxy="bw")
        fds = p.fd_count()
        r = toxi.post("/proxies/bw/toxics", {"name": "zero", "type": "bandwidth",
                                             "stream": "upstream", "attributes": {"rate": 0}})
        assert r.status == 200, r

        clients = []
        for i in range(50):
            c = connect(addr)
            c.sendall(pattern(8 * 1024, i))
            clients.append(c)
        # The toxic is in force: nothing comes back.
        clients[0].settimeout(0.3)
        with pytest.raises(socket.timeout):
            got = clients[0].recv(100)
            pytest.fail(f"bytes came back through a rate-0 upstream stream: {got!r}")
        admin.wait_metric("tcpfault_connections_active", 50, timeout=5, proxy="bw")
        for i, c in enumerate(clients):
            if i % 2:
                reset_close(c)
            else:
                c.close()

        with freeze_probe(p) as probe:
            probe.wait_samples(3)
            if lift == "reset":
                assert toxi.post("/reset").status == 204
            else:
                assert toxi.delete("/proxies/bw/toxics/zero").status == 204
            probe.mark(f"toxic lifted ({lift})")
            left = None
            try:
                admin.wait_metric("tcpfault_connections_active", 0, timeout=5, proxy="bw")
                p.wait_fds_at_most(fds, timeout=5)
            except AssertionError as e:
                left = e
            probe.wait_samples(5)  # the release can be quicker than five probes
        probe.assert_responsive(BOUND, "sessions held by a rate-0 toxic were released")
        if left is not None:
            conns = admin.connections("bw")
            raise AssertionError(f"{left}\n{len(conns)} sessions left 5 s after their clients "
                                 f"disconnected and the toxic was lifted ({lift}); "
                                 f"{p.fd_count()} fds (baseline {fds}); first: "
                                 f"{json.dumps(conns[:3])}")
        echo_round(addr, b"after " + lift.encode())


# --------------------------------------------------------------------------------------------
# a proxy connected to itself


def self_loop_yaml(listen: str, upstream: str, admin: str = "127.0.0.1:0",
                   canary: str = "") -> str:
    """A proxy `loop` relaying to itself, and optionally a proxy `canary` to `canary`."""
    text = (f"admin: {{listen: {admin}}}\nlog: {{format: json, level: info}}\nproxies:\n"
            f"  - name: loop\n    listen: {listen}\n    upstream: \"{upstream}\"\n")
    if canary:
        text += f"  - {{name: canary, listen: 127.0.0.1:0, upstream: \"{canary}\"}}\n"
    return text


SELF_LOOPS = {
    "same-address": ("127.0.0.1:{p}", "127.0.0.1:{p}"),
    "wildcard-listen": ("0.0.0.0:{p}", "127.0.0.1:{p}"),
    "localhost-upstream": ("127.0.0.1:{p}", "localhost:{p}"),
    # Written so the config check (which compares addresses as written) cannot see it: the
    # runtime check, on the resolved address, must.
    "mapped-upstream": ("0.0.0.0:{p}", "[::ffff:127.0.0.1]:{p}"),
}


def test_check_refuses_a_proxy_whose_upstream_is_itself(tcpfault):
    """`--check` on a proxy relaying to its own listen address: exit 2 and a message naming
    the file, the line and the problem (the upstream is the proxy itself)."""
    port = free_port()
    listen, upstream = (x.format(p=port) for x in SELF_LOOPS["same-address"])
    path = tcpfault.write_config(self_loop_yaml(listen, upstream))
    r = run_tcpfault(["--check", "-c", str(path)])
    out = r.stdout + r.stderr
    assert r.returncode == 2, f"--check exit {r.returncode}, expected 2; output:\n{out}"
    assert path.name in out and ("itself" in out or "own listen" in out or "loop" in out), (
        f"--check output does not say the upstream is the proxy itself:\n{out}")


@pytest.mark.timeout(60)
def test_apis_refuse_a_proxy_whose_upstream_is_itself(tcpfault, servers):
    """The same self-relay offered at run time: a file reload over the admin API
    (`POST /api/reload`) answers 400 and keeps the running config; the Toxiproxy API refuses
    to create such a proxy, and to update an existing proxy's upstream to its own listen
    address, with a 4xx; nothing was created and the running proxies still relay."""
    echo = servers.echo()
    p, admin, toxi = toxiproxy_config(tcpfault, servers)
    problems = []
    with kill_on_failure(p):
        with freeze_probe(p) as probe:
            port = free_port()
            r = toxi.post("/proxies", {"name": "loop", "listen": f"127.0.0.1:{port}",
                                       "upstream": f"127.0.0.1:{port}"})
            if not 400 <= r.status < 500:
                problems.append(f"Toxiproxy API created a self-relay: {r}")
                toxi.delete("/proxies/loop")

            r = toxi.post("/proxies", {"name": "ok", "listen": "127.0.0.1:0",
                                       "upstream": echo.addr})
            assert r.status == 201, r
            listen = r.json()["listen"]
            r = toxi.post("/proxies/ok", {"upstream": listen})
            if not 400 <= r.status < 500:
                problems.append(f"Toxiproxy API pointed a proxy at itself: {r}")
                toxi.post("/proxies/ok", {"upstream": echo.addr})
            assert toxi.get("/proxies/ok").json()["upstream"] == echo.addr
            echo_round(parse_addr(listen), b"still relaying")

            # The admin API: a reload of a file that now holds a self-relay.
            port2 = free_port()
            canary_up = next(x for x in admin.get("/api/proxies").json()
                             if x["name"] == "canary")["upstream"]
            p.config_path.write_text(self_loop_yaml(f"127.0.0.1:{port2}", f"127.0.0.1:{port2}",
                                                    canary=canary_up))
            r = admin.post("/api/reload")
            if r.status != 400 or admin.get("/api/proxies/loop").status != 404:
                problems.append(f"a reload of a file with a self-relaying proxy answered {r}")
            probe.wait_samples(5)
        probe.assert_responsive(BOUND, "self-relaying proxies were offered to the APIs")
        assert not problems, "\n".join(problems)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", ["wildcard-listen", "localhost-upstream", "mapped-upstream"])
def test_a_self_relay_that_gets_through_does_not_eat_every_descriptor(tcpfault, servers,
                                                                      case):
    """A self-relay the static check may not see (a wildcard listen address that covers the
    upstream, or a name that resolves to it): either tcpfault refuses to start it (exit 2 with
    a message) or, running, one client connection does not become a chain of connections to
    itself: the proxy's descriptors stay within baseline + 20 for 3 s, the client ends (EOF or
    RST), /healthz answers in < 50 ms, and the descriptors return to the baseline."""
    port = free_port()
    listen, upstream = (x.format(p=port) for x in SELF_LOOPS[case])
    path = tcpfault.write_config(self_loop_yaml(listen, upstream, canary=servers.echo().addr))
    p = tcpfault.spawn(["-c", str(path)])
    with kill_on_failure(p):
        deadline = time.monotonic() + 10
        while not p.find_logs("admin listening"):
            if not p.running():
                rc = p.wait(5)
                assert rc == 2, f"tcpfault refused the self-relay with exit {rc}, expected 2"
                assert "itself" in p.stderr_text() or "loop" in p.stderr_text(), p.stderr_text()
                return
            assert time.monotonic() < deadline, "tcpfault neither started nor exited"
            time.sleep(0.02)  # waiting for one of two outcomes: a log line or an exit
        p.wait_listening(2)
        api = Admin(admin_port(p))
        fds = p.fd_count()
        with freeze_probe(p) as probe:
            probe.wait_samples(3)
            outcome = None
            try:
                c = socket.create_connection((LOOPBACK, port), timeout=5)
                probe.mark("one client connected")
                c.sendall(b"hello")
            except (ConnectionResetError, BrokenPipeError):
                # The proxy's RST can beat connect()'s return (or the first send): with a second
                # loop the connection is accepted and refused on the other CPU meanwhile.
                outcome = "reset"
            peak = fds
            t_end = time.monotonic() + 3
            while time.monotonic() < t_end and p.running():
                peak = max(peak, p.fd_count())
                time.sleep(0.01)  # sampling the descriptor count: nothing to await
            if outcome is None:
                c.settimeout(2)
                try:
                    end = c.recv(100)
                    outcome = "eof" if end == b"" else f"data {end!r}"
                except socket.timeout:
                    outcome = "still open"
                except ConnectionResetError:
                    outcome = "reset"
                c.close()
        probe.assert_responsive(BOUND, "a client connected to a self-relaying proxy")
        assert peak <= fds + 20, (f"one client connection grew tcpfault's descriptors from "
                                  f"{fds} to {peak}: the proxy connects to itself over and over")
        assert outcome in ("eof", "reset"), f"client outcome: {outcome}"
        api.wait_metric("tcpfault_connections_active", 0, timeout=5, proxy="loop")
        p.wait_fds_at_most(fds, timeout=5)

