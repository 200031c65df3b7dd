"""Issue #12: an upstream name that does not resolve, under load, must not starve the process.

Name resolution is made SLOW, not fast-failing: tcpfault runs in its own mount namespace
(`unshare -m`, root only) where /etc/resolv.conf names a DNS server that receives every query
and never answers (a UDP socket of this test on 127.53.x.y:53, with `options timeout:10
attempts:3`, so one lookup takes over a minute) and /etc/nsswitch.conf is `hosts: files dns`
(localhost still resolves at once from /etc/hosts). Then, under 200 concurrent clients of a
proxy whose upstream is a name under `.invalid`:

- each client gets a clean failure (EOF or RST) within the proxy's connect_timeout (+1 s),
  counted in `tcpfault_upstream_errors_total` as `dns`, not `timeout`;
- `tcpfault_connections_active` is back to 0 soon (3 s) after the clients left;
- a *different* proxy of the same process, whose upstream is `localhost:PORT`, keeps relaying
  new connections within its connect_timeout the whole time (lookups of one proxy must not
  queue the other's behind them);
- /healthz answers in < 50 ms throughout;
- with lookups still pending, SIGTERM ends the process within shutdown_grace + 1 s.

Without root (no `unshare -m`) the test is skipped; as root (CI) it fails instead of skipping
if the setup does not work.
"""

from __future__ import annotations

import errno
import os
import random
import selectors
import shutil
import socket
import subprocess
import threading
import time

import pytest

from admin_helpers import Admin, admin_port
from freeze_helpers import kill_on_failure, metric_by, probing, sigterm_and_time
from helpers import ProxyProcess, connect, recv_exact

CONNECT_TIMEOUT = 2.0
SHUTDOWN_GRACE = 2.0
CLIENTS = 200
BOUND = 0.050


class SilentDns:
    """A DNS 'server' that reads every query and never answers."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for _ in range(20):
            self.addr = f"127.53.{random.randrange(1, 255)}.{random.randrange(1, 255)}"
            try:
                self.sock.bind((self.addr, 53))
                break
            except OSError as e:
                last = e
        else:
            raise last
        self.queries = 0
        self._stop = False
        self._t = threading.Thread(target=self._run, daemon=True, name="silent-dns")
        self._t.start()

    def _run(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                self.sock.recvfrom(4096)
                self.queries += 1
            except socket.timeout:
                continue
            except OSError:
                return

    def close(self) -> None:
        self._stop = True
        self._t.join(2)
        self.sock.close()


def slow_dns_prefix(tmp_path, dns: SilentDns) -> list[str]:
    """The command prefix that runs tcpfault with the silent resolver (or skips / fails)."""
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {dns.addr}\noptions timeout:10 attempts:3\n")
    nss = tmp_path / "nsswitch.conf"
    nss.write_text("hosts: files dns\n")
    script = ('mount --bind "$1" /etc/resolv.conf && mount --bind "$2" /etc/nsswitch.conf '
              '&& shift 2 && exec "$@"')
    prefix = ["unshare", "-m", "--", "sh", "-c", script, "sh", str(resolv), str(nss)]
    return prefix


def require_slow_dns(prefix: list[str], dns: SilentDns) -> None:
    """Checks the setup with getent: a lookup under the prefix must hang (and reach our
    silent server) while localhost resolves at once."""
    why = None
    if shutil.which("unshare") is None or shutil.which("getent") is None:
        why = "unshare and getent are needed"
    else:
        r = subprocess.run(prefix + ["getent", "ahosts", "localhost"], capture_output=True,
                           text=True, timeout=10)
        if r.returncode != 0 or "127.0.0.1" not in r.stdout:
            why = f"unshare -m with bind-mounted resolv.conf failed: {r.returncode} {r.stderr}"
        else:
            q0 = dns.queries
            g = subprocess.Popen(prefix + ["getent", "ahosts", "nowhere.invalid"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                g.wait(1.5)
                why = f"a lookup through the silent resolver ended at once (exit {g.returncode})"
            except subprocess.TimeoutExpired:
                g.kill()
                g.wait()
                if dns.queries == q0:
                    why = "the lookup hangs but never reached the silent DNS server"
    if why is None:
        return
    if os.geteuid() == 0:
        pytest.fail(f"slow-DNS setup failed as root (CI must not skip this test): {why}")
    pytest.skip(f"needs root for unshare -m and a DNS server on port 53: {why}")


def config(echo_port: int) -> str:
    return f"""admin: {{listen: 127.0.0.1:0}}
log: {{format: json, level: info}}
shutdown_grace: {int(SHUTDOWN_GRACE * 1000)}ms
proxies:
  - name: nowhere
    listen: 127.0.0.1:0
    upstream: "nowhere.invalid:80"
    connect_timeout: {int(CONNECT_TIMEOUT * 1000)}ms
  - name: local
    listen: 127.0.0.1:0
    upstream: "localhost:{echo_port}"
    connect_timeout: {int(CONNECT_TIMEOUT * 1000)}ms
"""


class Crowd:
    """n clients connected at once (one selector, no thread each), each waiting for its
    connection to end; records (outcome, seconds after connecting) per client."""

    def __init__(self, addr, n: int):
        self.sel = selectors.DefaultSelector()
        self.socks = []
        self.t0 = time.monotonic()
        self.ends: dict[int, tuple[str, float]] = {}
        for i in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            err = s.connect_ex(addr)
            assert err in (0, errno.EINPROGRESS), f"connect: {errno.errorcode.get(err, err)}"
            self.socks.append(s)
            self.sel.register(s, selectors.EVENT_READ, i)

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.ends) < len(self.socks):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            for key, _ in self.sel.select(min(left, 0.1)):
                i = key.data
                try:
                    data = key.fileobj.recv(4096)
                    outcome = "eof" if not data else "data"
                except ConnectionResetError:
                    outcome = "reset"
                except BlockingIOError:
                    continue
                except OSError as e:
                    outcome = errno.errorcode.get(e.errno, str(e))
                self.ends[i] = (outcome, time.monotonic() - self.t0)
                self.sel.unregister(key.fileobj)

    def summary(self) -> dict:
        out: dict = {}
        for outcome, _ in self.ends.values():
            out[outcome] = out.get(outcome, 0) + 1
        out["still open"] = len(self.socks) - len(self.ends)
        return out

    def close(self) -> None:
        for s in self.socks:
            s.close()
        self.sel.close()


def local_rounds(addr, stop: threading.Event, results: list) -> None:
    """Echo rounds through the `local` proxy until stopped: (ok, seconds, error) each."""
    i = 0
    while not stop.is_set():
        t0 = time.monotonic()
        try:
            s = connect(addr, timeout=CONNECT_TIMEOUT + 1)
            try:
                msg = b"local %d" % i
                s.sendall(msg)
                recv_exact(s, len(msg), timeout=CONNECT_TIMEOUT + 1)
            finally:
                s.close()
            results.append((True, time.monotonic() - t0, ""))
        except (OSError, AssertionError) as e:
            results.append((False, time.monotonic() - t0, f"{type(e).__name__}: {e}"))
        i += 1
        stop.wait(0.2)


# raises=AssertionError: a slow-DNS setup that does not work as root fails with pytest.fail,
# which must show as a failure even while the mark is on.
@pytest.mark.timeout(120)
def test_unresolvable_upstream_under_load_does_not_starve_the_process(tcpfault, servers,
                                                                     tmp_path):
    dns = SilentDns()
    try:
        prefix = slow_dns_prefix(tmp_path, dns)
        require_slow_dns(prefix, dns)
        echo = servers.echo()
        path = tcpfault.write_config(config(echo.port))
        p = ProxyProcess(["-c", str(path)], prefix=prefix)
        tcpfault.procs.append(p)
        with kill_on_failure(p):
            run(p, dns)
    finally:
        dns.close()


def run(p: ProxyProcess, dns: SilentDns) -> None:
    p.wait_listening(2)
    api = Admin(admin_port(p))
    nowhere, local = p.addr("nowhere"), p.addr("local")
    problems: list[str] = []
    results: list = []
    stop = threading.Event()
    with probing(api.port) as probe:
        probe.wait_samples(3)
        before = metric_by(api, "tcpfault_upstream_errors_total", "error", proxy="nowhere")
        q0 = dns.queries

        # 200 clients of the unresolvable proxy, and the other proxy used meanwhile.
        crowd = Crowd(nowhere, CLIENTS)
        probe.mark(f"{CLIENTS} clients of nowhere.invalid connected")
        t = threading.Thread(target=local_rounds, args=(local, stop, results), daemon=True)
        t.start()
        try:
            crowd.wait(CONNECT_TIMEOUT + 3)
            deadline = time.monotonic() + 3 * (CONNECT_TIMEOUT + 1)
            while len(results) < 3 and time.monotonic() < deadline:
                time.sleep(0.05)  # at least 3 rounds through `local`, however long they take
        finally:
            stop.set()
            t.join(CONNECT_TIMEOUT * 3)
            crowd.close()
        probe.mark("clients closed")
        late = [(o, round(s, 2)) for o, s in crowd.ends.values()
                if o not in ("eof", "reset") or s > CONNECT_TIMEOUT + 1]
        summary = crowd.summary()
        if summary["still open"] or late:
            problems.append(f"clients of the unresolvable proxy: {summary}; "
                            f"{len(late)} not ended cleanly within connect_timeout + 1 s "
                            f"(first: {late[:5]})")
        if dns.queries == q0:
            problems.append("the silent DNS server saw no query: the lookups did not happen")
        bad_local = [r for r in results if not r[0] or r[1] > CONNECT_TIMEOUT]
        if not results or bad_local:
            problems.append(f"the `local` proxy (upstream localhost) failed or was slower than "
                            f"its connect_timeout in {len(bad_local)} of {len(results)} echo "
                            f"rounds while the other proxy's lookups hung: {bad_local[:3]}")

        deadline = time.monotonic() + 3
        active = None
        while time.monotonic() < deadline:
            active = api.scrape().value("tcpfault_connections_active", proxy="nowhere")
            if active == 0:
                break
            time.sleep(0.1)  # polled: the gauge is the observable
        if active != 0:
            problems.append(f"tcpfault_connections_active{{proxy=nowhere}} is {active} 3 s "
                            f"after every client left")
        after = metric_by(api, "tcpfault_upstream_errors_total", "error", proxy="nowhere")
        grown = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        if grown.get("dns", 0) < CLIENTS - summary["still open"] or grown.get("timeout", 0):
            problems.append(f"upstream errors counted for {CLIENTS} unresolvable connections: "
                            f"{grown} (expected every one as dns, none as timeout)")

        # Lookups pending again (the process may still have some from above), then SIGTERM.
        total = api.scrape().value("tcpfault_connections_total", proxy="nowhere")
        crowd = Crowd(nowhere, CLIENTS)
        try:
            api.wait_metric("tcpfault_connections_total", total + CLIENTS, timeout=5,
                            proxy="nowhere")
            probe.mark("SIGTERM with lookups pending")
            probe.stop()
            try:
                sigterm_and_time(p, SHUTDOWN_GRACE + 1)
            except AssertionError as e:
                problems.append(str(e).split("; stderr")[0])
        finally:
            crowd.close()
    try:
        probe.assert_responsive(BOUND, f"{CLIENTS} lookups of an unresolvable name were pending")
    except AssertionError as e:
        problems.append(str(e))
    assert not problems, "\n".join(problems)
