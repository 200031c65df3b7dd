"""Toxiproxy compatibility (docs/toxiproxy.md): Toxiproxy's own Node client, the npm package
toxiproxy-node-client, runs tests/toxiproxy/test.js against tcpfault's Toxiproxy API; plus the
API's proxies and toxics seen from tcpfault's side (admin API, metrics, config-file proxies).

The client is installed once with `npm install --no-audit --no-fund` into a cache directory
outside the work tree: $TCPFAULT_NODE_CACHE, default ~/.cache/tcpfault/toxiproxy-node (keyed by
tests/toxiproxy/package.json). Without node and npm, or with SKIP_NODE=1, the node test is
skipped.
"""

from __future__ import annotations

import fcntl
import socket
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from admin_helpers import Admin, admin_port
from helpers import LOOPBACK, SOURCE_DIR, connect, parse_addr, recv_exact

NODE_TEST_DIR = SOURCE_DIR / "tests" / "toxiproxy"
API_LOG = "toxiproxy api listening"  # the log line with the Toxiproxy API's address


def toxiproxy_yaml(proxies: str = "[]", toxiproxy_listen: str = "127.0.0.1:0",
                   admin: str = "127.0.0.1:0", toxiproxy_extra: str = "") -> str:
    out = [f"admin: {{listen: {admin}}}", "log: {format: json, level: info}"]
    if toxiproxy_listen:
        extra = f", {toxiproxy_extra}" if toxiproxy_extra else ""
        out.append(f"toxiproxy: {{listen: {toxiproxy_listen}{extra}}}")
    out.append(f"proxies: {proxies}" if proxies.startswith("[") else "proxies:\n" + proxies)
    return "\n".join(out) + "\n"


def api_port(proc, timeout: float = 10.0) -> int:
    rec = proc.wait_for_log(API_LOG, timeout=timeout)[0]
    host, port = parse_addr(rec["addr"])
    assert host == LOOPBACK and port != 0, f"unexpected Toxiproxy API address in {rec}"
    return port


def _node_modules() -> Path:
    """node_modules with toxiproxy-node-client, installed on first use."""
    if os.environ.get("SKIP_NODE") == "1":
        pytest.skip("SKIP_NODE=1: Toxiproxy's Node client (installed from npm) not run")
    npm = shutil.which("npm")
    if shutil.which("node") is None or npm is None:
        pytest.skip("node and npm are needed to run Toxiproxy's Node client")
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    cache = Path(os.environ.get("TCPFAULT_NODE_CACHE") or default / "tcpfault" / "toxiproxy-node")
    cache.mkdir(parents=True, exist_ok=True)
    pkg = (NODE_TEST_DIR / "package.json").read_text()
    marker = cache / "node_modules" / "toxiproxy-node-client" / "package.json"
    with open(cache / ".lock", "w") as lock:  # parallel test runs share the cache
        fcntl.flock(lock, fcntl.LOCK_EX)
        current = cache / "package.json"
        if not marker.is_file() or not current.is_file() or current.read_text() != pkg:
            current.write_text(pkg)
            r = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--no-package-lock"],
                               cwd=cache, capture_output=True, text=True, timeout=600,
                               stdin=subprocess.DEVNULL)
            if r.returncode != 0 or not marker.is_file():
                current.unlink(missing_ok=True)
                pytest.fail(f"npm install of toxiproxy-node-client failed (exit {r.returncode}):\n"
                            f"{r.stdout}\n{r.stderr}", pytrace=False)
    return cache / "node_modules"


def run_node_client(port: int) -> None:
    modules = _node_modules()
    env = dict(os.environ, TOXIPROXY_URL=f"http://{LOOPBACK}:{port}", NODE_PATH=str(modules))
    r = subprocess.run(["node", "--test", "--test-reporter=spec", "test.js"], cwd=NODE_TEST_DIR,
                       env=env, capture_output=True, text=True, timeout=300,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, f"toxiproxy-node-client test failed:\n{r.stdout}\n{r.stderr}"


def test_node_client_against_toxiproxy_listen(tcpfault):
    """`toxiproxy: {listen: ...}` with `proxies: []`: the client creates everything."""
    p = tcpfault.from_config(toxiproxy_yaml(), listening=0)
    run_node_client(api_port(p))


def test_node_client_against_cli_flag(tcpfault):
    """`--toxiproxy-api ADDR` turns the API on without a toxiproxy section."""
    path = tcpfault.write_config(toxiproxy_yaml(toxiproxy_listen="", admin='"off"'))
    p = tcpfault.spawn(["-c", str(path), "--toxiproxy-api", "127.0.0.1:0"])
    port = api_port(p)
    api = Admin(port)
    v = api.get("/version")
    assert v.status == 200, v
    assert v.json()["version"].split(".")[0] == "2"
    run_node_client(port)


def test_toxiproxy_proxies_are_tcpfault_proxies(tcpfault, servers):
    """Proxies and toxics made over the Toxiproxy API are ordinary proxies and rules: in the
    admin API and the metrics. Config-file proxies are in the Toxiproxy API; with
    manage_config_proxies it may take them down, and /reset re-enables them but keeps their
    own rules."""
    echo = servers.echo()
    file_proxy = (f"  - name: fromfile\n    listen: 127.0.0.1:0\n    upstream: \"{echo.addr}\"\n"
                  f"    rules:\n      - {{name: own, enabled: false, fault: {{type: reset}}}}\n")
    p = tcpfault.from_config(toxiproxy_yaml(proxies=file_proxy,
                                            toxiproxy_extra="manage_config_proxies: true"),
                             listening=1)
    admin = Admin(admin_port(p))
    toxi = Admin(api_port(p))

    r = toxi.post("/proxies", {"name": "Shop.Cache", "listen": "127.0.0.1:0",
                               "upstream": echo.addr})
    assert r.status == 201, r
    created = r.json()
    assert list(created) == ["name", "listen", "upstream", "enabled", "toxics"]
    assert created["name"] == "Shop.Cache" and created["enabled"] is True
    r = toxi.post("/proxies/Shop.Cache/toxics",
                  {"type": "latency", "attributes": {"latency": 200, "jitter": 0}})
    assert r.status == 200, r
    assert r.json() == {"attributes": {"latency": 200, "jitter": 0}, "name": "latency_downstream",
                        "type": "latency", "stream": "downstream", "toxicity": 1}

    # Through the proxy: the latency shows.
    addr = parse_addr(created["listen"])
    s = connect(addr)
    t0 = time.monotonic()
    s.sendall(b"ping")
    assert recv_exact(s, 4) == b"ping"
    assert time.monotonic() - t0 >= 0.18
    s.close()

    # tcpfault's side: a proxy named shop-cache with the rule.
    mine = admin.proxy("shop-cache")
    assert mine["listen"] == created["listen"]
    rules = {r["name"]: r for r in mine["rules"]}
    assert rules["latency_downstream"]["fault"] == "latency"
    assert rules["latency_downstream"]["fired"] >= 1
    m = admin.wait_metric("tcpfault_connections_total", 1.0, proxy="shop-cache")
    assert m.need("tcpfault_faults_total", proxy="shop-cache", rule="latency_downstream",
                  fault="latency") >= 1

    # The file proxy in the Toxiproxy API, down and up again through /reset.
    listed = toxi.get("/proxies").json()
    assert set(listed) >= {"fromfile", "Shop.Cache"}
    assert listed["fromfile"]["toxics"] == []
    assert toxi.post("/proxies/fromfile", {"enabled": False}).json()["enabled"] is False
    down = {r["name"]: r for r in admin.proxy("fromfile")["rules"]}
    assert down["toxiproxy-disabled"]["fault"] == "refuse"
    assert down["toxiproxy-disabled"]["enabled"] is True
    file_addr = p.addr("fromfile")
    with pytest.raises(ConnectionRefusedError):
        connect(file_addr).close()
    assert toxi.post("/reset").status == 204
    after = {r["name"]: r for r in admin.proxy("fromfile")["rules"]}
    assert "own" in after and after["toxiproxy-disabled"]["enabled"] is False
    assert "latency_downstream" not in {r["name"] for r in admin.proxy("shop-cache")["rules"]}
    s = connect(file_addr)  # listening again before /reset answered
    s.sendall(b"back")
    assert recv_exact(s, 4) == b"back"
    s.close()

    # Deleting over the Toxiproxy API removes the tcpfault proxy.
    assert toxi.delete("/proxies/Shop.Cache").status == 204
    assert admin.get("/api/proxies/shop-cache").status == 404
    with pytest.raises(ConnectionRefusedError):
        connect(addr).close()


def test_proxies_made_and_deleted_per_test_leave_metrics_bounded(tcpfault, servers):
    """A test suite that makes a uniquely named proxy per test and deletes it after
    (docs/metrics.md): each deleted proxy's counters stay for scrapes after the deletion, until
    100 proxies deleted later push them out, oldest first; /metrics does not grow with every
    test. A name made again continues its counts."""
    echo = servers.echo()
    p = tcpfault.from_config(toxiproxy_yaml(), listening=0)
    admin = Admin(admin_port(p))
    toxi = Admin(api_port(p))

    def make_use_delete(name: str) -> None:
        r = toxi.post("/proxies", {"name": name, "listen": "127.0.0.1:0",
                                   "upstream": echo.addr})
        assert r.status == 201, r
        s = connect(parse_addr(r.json()["listen"]))
        s.sendall(b"ping")
        assert recv_exact(s, 4) == b"ping"
        s.close()
        admin.wait_metric("tcpfault_connections_active", 0, proxy=name)
        assert toxi.delete(f"/proxies/{name}").status == 204

    # Proxies that could not be made (their port is taken) are gone as well, the oldest here.
    with socket.socket() as squatter:
        squatter.bind((LOOPBACK, 0))
        squatter.listen(1)
        for i in range(5):
            r = toxi.post("/proxies", {"name": f"failed-{i}",
                                       "listen": f"127.0.0.1:{squatter.getsockname()[1]}",
                                       "upstream": echo.addr})
            assert r.status == 500, r
    for i in range(120):
        make_use_delete(f"test-{i}")
    m = admin.scrape()
    # A deleted proxy's servers go once idle, asynchronously: the newest may still be held,
    # which keeps them, never more than the bound in all.
    kept = {labels["proxy"] for labels, _ in m.samples("tcpfault_connections_total")}
    assert len(kept) == 100, sorted(kept)
    assert kept == {f"test-{i}" for i in range(20, 120)}
    assert m.need("tcpfault_connections_total", proxy="test-119") == 1
    assert m.need("tcpfault_connection_duration_seconds_count", proxy="test-119") == 1
    assert m.value("tcpfault_bytes_total", proxy="test-0", direction="upstream") is None
    assert len(m.samples("tcpfault_connections_rejected_total")) == 100 * 4
    # The admin API's per-connection fault series (rule "@api") go with the proxy too.
    assert {labels["proxy"] for labels, _ in m.samples("tcpfault_faults_total")} == kept
    # Made again under a kept name: its counts go on.
    make_use_delete("test-50")
    assert admin.scrape().need("tcpfault_connections_total", proxy="test-50") == 2


def test_error_bodies(tcpfault):
    p = tcpfault.from_config(toxiproxy_yaml(), listening=0)
    toxi = Admin(api_port(p))
    r = toxi.get("/proxies/nope")
    assert (r.status, r.json()) == (404, {"error": "proxy not found", "status": 404})
    r = toxi.post("/proxies", "{")
    assert r.status == 400 and r.json()["status"] == 400
    assert r.json()["error"].startswith("bad request body: parse error at line 1, column 2")
    r = toxi.post("/proxies", {"name": "x"})
    assert r.json() == {"error": "missing required field: upstream", "status": 400}
    r = toxi.get("/nope")
    assert r.status == 404 and r.text == "404 page not found\n"
    assert toxi.request("PUT", "/proxies").status == 405
    r = toxi.get("/proxies", headers={"User-Agent": "Mozilla/5.0"})
    assert r.status == 403
    assert toxi.get("/proxies").json() == {}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("stream", ["downstream", "upstream"])
def test_timeout_toxic_drops_data_but_passes_the_close(tcpfault, servers, stream):
    """Toxiproxy's `timeout` toxic (timeout 0: forever) drops the stream's data, but when the
    side that sends on that stream closes, the close goes through, as in Toxiproxy, where a
    YAML `stall` (drop) swallows it (tests/integration/test_faults_stall.py)."""
    srv = servers.tcp()
    p = tcpfault.from_config(toxiproxy_yaml(), listening=0)
    toxi = Admin(api_port(p))
    r = toxi.post("/proxies", {"name": "t", "listen": "127.0.0.1:0", "upstream": srv.addr})
    assert r.status == 201, r
    r = toxi.post("/proxies/t/toxics", {"type": "timeout", "stream": stream,
                                        "attributes": {"timeout": 0}})
    assert r.status == 200, r
    c = connect(parse_addr(toxi.get("/proxies/t").json()["listen"]))
    s = srv.wait_accepted(1)
    try:
        sender, receiver = (s, c) if stream == "downstream" else (c, s)
        sender.sendall(b"dropped")
        sender.shutdown(socket.SHUT_WR)
        receiver.settimeout(5)
        t0 = time.monotonic()
        got = receiver.recv(100)
        assert got == b"", f"the {stream} stream delivered {got!r}; expected EOF, data dropped"
        assert time.monotonic() - t0 < 3, "the close came only after a long wait"
        # The other stream is untouched.
        receiver.sendall(b"back")
        assert recv_exact(sender, 4, timeout=5) == b"back"
    finally:
        c.close()
        s.close()
