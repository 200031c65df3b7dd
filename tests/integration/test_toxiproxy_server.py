"""`tcpfault toxiproxy-server`: Toxiproxy's server command line (cmd/server/server.go) driven
through the real binary, as compose files and CI scripts run it (toxiproxy-cli is not
packaged: the HTTP API is driven the way it drives it); the image's stand-in command line
(docker/Dockerfile.toxiproxy) run without Docker; and the Toxiproxy API's security keys.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from admin_helpers import Admin, parse_prometheus
from helpers import (BIN, LOOPBACK, SOURCE_DIR, connect, free_port, parse_addr, recv_exact,
                     run_tcpfault)
from test_toxiproxy import API_LOG, api_port, toxiproxy_yaml

DOCKERFILE = SOURCE_DIR / "docker" / "Dockerfile.toxiproxy"


def server_api(proc, timeout: float = 10.0) -> Admin:
    rec = proc.wait_for_log(API_LOG, timeout=timeout)[0]
    return Admin(parse_addr(rec["addr"])[1])


def write_json(tmp_path: Path, name: str, value) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(value))
    return path


def test_server_flags_config_file_toxics_and_metrics(tcpfault, servers, tmp_path):
    """-host -port -config -seed -proxy-metrics, the Go way (one or two dashes, = or a space);
    the proxies of -config are made before the API answers, with their toxics."""
    echo = servers.echo()
    cfg = write_json(tmp_path, "toxiproxy.json", [
        {"name": "redis", "listen": "127.0.0.1:0", "upstream": echo.addr,
         "toxics": [{"type": "latency", "attributes": {"latency": 300}},
                    {"name": "up", "type": "slow_close", "stream": "upstream"}]},
        {"name": "spare", "listen": "127.0.0.1:0", "upstream": echo.addr, "enabled": False},
    ])
    p = tcpfault.spawn(["toxiproxy-server", "-host", "127.0.0.1", "--port=0", "-config",
                        str(cfg), "-seed=42", "-proxy-metrics", "--log-format=json"])
    api = server_api(p)
    assert api.get("/version").json() == {"version": "2.12.0"}
    proxies = api.get("/proxies").json()
    assert set(proxies) == {"redis", "spare"}
    assert [t["name"] for t in proxies["redis"]["toxics"]] == ["up", "latency_downstream"]
    assert proxies["spare"]["enabled"] is False

    s = connect(parse_addr(proxies["redis"]["listen"]))
    t0 = time.monotonic()
    s.sendall(b"ping")
    assert recv_exact(s, 4) == b"ping"
    assert time.monotonic() - t0 >= 0.28, "the -config file's latency toxic is not applied"
    s.close()

    m = parse_prometheus(api.get("/metrics").text)
    assert m.need("toxiproxy_proxy_received_bytes_total", direction="upstream", proxy="redis",
                  listener=proxies["redis"]["listen"], upstream=echo.addr) == 4
    # No admin API unless asked for: only the Toxiproxy port.
    assert not p.find_logs("admin listening")


def test_server_name_version_and_help(tmp_path):
    link = tmp_path / "toxiproxy-server"
    link.symlink_to(BIN)
    for argv in ([str(link), "-version"], [str(BIN), "toxiproxy-server", "--version"]):
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        assert r.returncode == 0, r
        assert re.fullmatch(r"toxiproxy-server version 2\.12\.0 \(tcpfault [0-9.]+\)\n", r.stdout)
    r = subprocess.run([str(link), "-help"], capture_output=True, text=True, timeout=10)
    assert r.returncode == 0 and "-proxy-metrics" in r.stdout and "-config FILE" in r.stdout


@pytest.mark.parametrize("args,message", [
    (["-bogus"], "flag provided but not defined: -bogus"),
    (["-port", "http"], "invalid value \"http\" for flag -port"),
    (["-host"], "flag needs an argument: -host"),
])
def test_server_usage_errors_exit_2(args, message):
    r = run_tcpfault(["toxiproxy-server", *args])
    assert r.returncode == 2, r
    assert message in r.stderr and "usage: tcpfault toxiproxy-server" in r.stderr


def test_server_bad_config_file_exits_2(tmp_path):
    bad = tmp_path / "bad.json"
    for text, message in [
        ("[{\"name\": \"x\"}]", "missing required field: upstream at proxy 1"),
        ("{\"oops\"", "parse error"),
        ("[{\"name\":\"x\",\"upstream\":\"a:1\",\"toxics\":[{\"type\":\"nope\"}]}]",
         "invalid toxic type at proxy 1"),
    ]:
        bad.write_text(text)
        r = run_tcpfault(["toxiproxy-server", "-port", "0", "-config", str(bad)])
        assert r.returncode == 2, (text, r)
        assert message in r.stderr and str(bad) in r.stderr
    r = run_tcpfault(["toxiproxy-server", "-port", "0", "-config", str(tmp_path / "none.json")])
    assert r.returncode == 2 and "cannot read file" in r.stderr


def test_server_config_entry_that_cannot_start_exits_1(tmp_path):
    with socket.socket() as squatter:
        squatter.bind((LOOPBACK, 0))
        squatter.listen(1)
        taken = squatter.getsockname()[1]
        cfg = write_json(tmp_path, "c.json", [{"name": "x", "listen": f"127.0.0.1:{taken}",
                                               "upstream": "127.0.0.1:1"}])
        r = run_tcpfault(["toxiproxy-server", "-port", "0", "-config", str(cfg)])
    assert r.returncode == 1, r
    assert f"listen tcp 127.0.0.1:{taken}: bind: address already in use" in r.stderr


def _exec_form(text: str, keyword: str) -> list[str]:
    m = re.search(rf"(?m)^{keyword}\s+(\[.*\])\s*$", text)
    assert m, f"{DOCKERFILE.name}: no exec-form {keyword}"
    return json.loads(m.group(1))


def test_image_stand_in_command_line(tcpfault, servers, tmp_path):
    """docker/Dockerfile.toxiproxy's ENTRYPOINT + CMD (what `docker run IMAGE` runs, and what
    Testcontainers' Toxiproxy module runs) behave as `toxiproxy-server -host 0.0.0.0` on 8474,
    with the admin API on loopback for the image's healthcheck. Run here without Docker: the
    entrypoint's /toxiproxy is a link to the binary, and -port/-admin are moved off the fixed
    ports (Go flags: the last one wins)."""
    text = DOCKERFILE.read_text()
    entry, cmd = _exec_form(text, "ENTRYPOINT"), _exec_form(text, "CMD")
    assert cmd == ["-host=0.0.0.0"]
    assert re.search(r"(?m)^EXPOSE\s+8474\b", text)
    assert "ln -s /usr/local/bin/tcpfault /toxiproxy" in text
    assert entry[0] == "/toxiproxy"
    link = tmp_path / "toxiproxy"
    link.symlink_to(BIN)
    # A compose file's `command:` replaces CMD: Toxiproxy's flags after the entrypoint's.
    cfg = write_json(tmp_path, "config.json", [{"name": "db", "listen": "0.0.0.0:0",
                                                "upstream": servers.echo().addr}])
    admin_port = free_port()
    args = [str(link), *entry[1:], *cmd, f"-config={cfg}", "-port=0",
            f"-admin=127.0.0.1:{admin_port}", "-log-format=json"]
    log = tmp_path / "stand-in.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=err)
    try:
        rec = wait_log(proc, log, API_LOG)
        host, port = parse_addr(rec["addr"])
        assert host == "0.0.0.0"
        wait_log(proc, log, "the Toxiproxy API has no authentication and is reachable from "
                            "other hosts")
        api = Admin(port)
        assert api.get("/version").status == 200
        assert set(api.get("/proxies").json()) == {"db"}
        assert Admin(admin_port).get("/healthz").status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0, log.read_text()


def wait_log(proc, path: Path, msg: str, timeout: float = 10.0) -> dict:
    """The first JSON log record with this msg in the file, waiting for it."""
    deadline = time.monotonic() + timeout
    while True:
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("msg") == msg:
                return rec
        assert proc.poll() is None, f"exited with {proc.returncode}:\n{path.read_text()}"
        assert time.monotonic() < deadline, f"no {msg!r} within {timeout}s:\n{path.read_text()}"
        time.sleep(0.05)  # a file has no readiness to wait on


# ---------------------------------------------------------------------------------------------
# security keys


def test_token_without_allow_unauthenticated_refuses_to_start(tcpfault, tmp_path):
    path = tcpfault.write_config("admin: {listen: 127.0.0.1:0, token: s3cret}\n"
                                 "toxiproxy: {listen: 127.0.0.1:0}\nproxies: []\n")
    r = run_tcpfault(["-c", str(path)])
    assert r.returncode == 2, r
    assert "toxiproxy.allow_unauthenticated: true" in r.stderr and f"{path}:2:1" in r.stderr
    r = run_tcpfault(["--check", "-c", str(path)])
    assert r.returncode == 2 and "allow_unauthenticated" in r.stderr
    # Turned on by the flag: the same refusal.
    flag = tcpfault.write_config("admin: {listen: 127.0.0.1:0, token: s3cret}\nproxies: []\n")
    r = run_tcpfault(["-c", str(flag), "--toxiproxy-api", "127.0.0.1:0"])
    assert r.returncode == 2, r
    assert "--toxiproxy-api" in r.stderr and "allow_unauthenticated" in r.stderr
    # Opted out: it runs, and the admin API still wants its token.
    ok = tcpfault.from_config(
        "admin: {listen: 127.0.0.1:0, token: s3cret}\nlog: {format: json}\n"
        "toxiproxy: {listen: 127.0.0.1:0, allow_unauthenticated: true}\nproxies: []\n",
        listening=0)
    assert Admin(api_port(ok)).get("/proxies").json() == {}


def test_relay_to_the_metadata_address_is_refused(tcpfault, servers):
    """With toxiproxy.allow_upstream, a proxy relaying to 169.254.169.254:80 (the cloud
    metadata address) is refused with a 403, whichever call asks for it; with allow_listen, a
    listener on every interface likewise."""
    echo = servers.echo()
    p = tcpfault.from_config(toxiproxy_yaml(
        toxiproxy_extra="allow_upstream: [127.0.0.0/8], allow_listen: [127.0.0.1]"), listening=0)
    api = Admin(api_port(p))
    meta = {"name": "meta", "listen": "127.0.0.1:0", "upstream": "169.254.169.254:80"}
    r = api.post("/proxies", meta)
    assert r.status == 403, r
    assert r.json()["error"].startswith("upstream 169.254.169.254:80 is not allowed by "
                                        "toxiproxy.allow_upstream")
    assert api.post("/populate", [meta]).status == 403
    assert api.post("/proxies", {**meta, "upstream": echo.addr,
                                 "listen": "0.0.0.0:0"}).status == 403
    assert api.get("/proxies").json() == {}
    r = api.post("/proxies", {**meta, "upstream": echo.addr})
    assert r.status == 201
    assert api.post("/proxies/meta", {"upstream": "169.254.169.254:80"}).status == 403
    assert api.get("/proxies/meta").json()["upstream"] == echo.addr


def test_config_file_proxies_are_read_only_by_default(tcpfault, servers):
    echo = servers.echo()
    file_proxy = f"  - name: fromfile\n    listen: 127.0.0.1:0\n    upstream: \"{echo.addr}\"\n"
    p = tcpfault.from_config(toxiproxy_yaml(proxies=file_proxy), listening=1)
    api = Admin(api_port(p))
    assert api.get("/proxies/fromfile").status == 200
    for method, path, body in [("POST", "/proxies/fromfile", {"enabled": False}),
                               ("POST", "/proxies/fromfile/toxics", {"type": "timeout"}),
                               ("DELETE", "/proxies/fromfile", None)]:
        r = api.request(method, path, body=body)
        assert r.status == 403, (method, path, r)
        assert "toxiproxy.manage_config_proxies" in r.json()["error"]
    assert api.post("/reset").status == 204
    s = connect(p.addr("fromfile"))
    s.sendall(b"untouched")
    assert recv_exact(s, 9) == b"untouched"
    s.close()
