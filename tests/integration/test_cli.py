"""Command line, exit codes, logs, signals (SIGTERM/SIGINT graceful stop, SIGHUP reload)."""

import hashlib
import random
import re
import signal
import socket
import time

import pytest

from helpers import (
    LOOPBACK,
    SOURCE_DIR,
    KiB,
    MiB,
    connect,
    free_port,
    read_outcome,
    recv_exact,
    recv_until_eof,
    run_tcpfault,
)

# ---------------------------------------------------------------------------------------------
# plain command line


@pytest.mark.timeout(20)
def test_version():
    r = run_tcpfault(["--version"])
    assert r.returncode == 0, r.stderr
    m = re.fullmatch(r"tcpfault (\d+\.\d+\.\d+)\n?", r.stdout)
    assert m, f"--version printed {r.stdout!r}, expected 'tcpfault X.Y.Z'"
    cmake = (SOURCE_DIR / "CMakeLists.txt")
    if cmake.is_file():
        pm = re.search(r"project\(tcpfault\s+VERSION\s+(\d+\.\d+\.\d+)", cmake.read_text())
        if pm:
            assert m.group(1) == pm.group(1), "--version differs from the CMake project version"


@pytest.mark.timeout(20)
def test_help():
    r = run_tcpfault(["--help"])
    assert r.returncode == 0, r.stderr
    for word in ("--check", "-c", "-l", "-u", "--admin", "--version"):
        assert word in r.stdout, f"--help output does not mention {word}:\n{r.stdout}"


@pytest.mark.timeout(20)
@pytest.mark.parametrize("args", [
    ["--no-such-flag"],
    ["-l", "127.0.0.1:0"],              # -l without -u
    ["--log-format", "xml", "--version"],
    ["-c"],                             # missing value
], ids=["unknown-flag", "l-without-u", "bad-log-format", "missing-value"])
def test_usage_errors_exit_2(args):
    r = run_tcpfault(args)
    assert r.returncode == 2, f"{args}: exit {r.returncode}, expected 2; stderr: {r.stderr}"
    assert r.stderr.strip(), f"{args}: a usage error must say what is wrong on stderr"


@pytest.mark.timeout(20)
def test_unknown_flag_is_named():
    r = run_tcpfault(["--no-such-flag"])
    assert r.returncode == 2
    assert "--no-such-flag" in r.stderr


VALID = """\
admin:
  listen: "off"
log:
  level: info
  format: json
shutdown_grace: 2s
proxies:
  - name: main
    listen: 127.0.0.1:0
    upstream: 127.0.0.1:9
    connect_timeout: 1s
    on_upstream_error: close
  - name: second
    listen: "[::1]:0"
    upstream: localhost:9
"""


@pytest.mark.timeout(20)
def test_check_valid_file(tmp_path):
    (tmp_path / "good.yaml").write_text(VALID)
    r = run_tcpfault(["--check", "-c", "good.yaml"], cwd=tmp_path)
    assert r.returncode == 0, f"--check on a valid file: exit {r.returncode}; stderr: {r.stderr}"
    assert "good.yaml:" not in r.stderr, r.stderr


BAD_FILES = {
    # name: (text, line, col, word the message must contain)
    "proxy-key": ("""\
admin:
  listen: "off"
proxies:
  - name: main
    listen: 127.0.0.1:0
    upstream: 127.0.0.1:9
    bogus_key: 1
""", 7, 5, "bogus_key"),
    "top-key": ("""\
admin:
  listen: "off"
bogus_top: 1
proxies: []
""", 3, 1, "bogus_top"),
    "fault-key": ("""\
admin:
  listen: "off"
proxies:
  - name: main
    listen: 127.0.0.1:0
    upstream: 127.0.0.1:9
    rules:
      - name: r1
        fault:
          type: reset
          tu: client
""", 11, 11, "tu"),
}


@pytest.mark.timeout(20)
@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_check_invalid_file_reports_position(tmp_path, case):
    text, line, col, word = BAD_FILES[case]
    (tmp_path / "bad.yaml").write_text(text)
    r = run_tcpfault(["--check", "-c", "bad.yaml"], cwd=tmp_path)
    assert r.returncode == 2, f"--check on an invalid file: exit {r.returncode}; {r.stderr}"
    m = re.search(r"^bad\.yaml:(\d+):(\d+): (.*)$", r.stderr, re.M)
    assert m, f"no 'bad.yaml:LINE:COL: message' line in stderr:\n{r.stderr}"
    assert (int(m.group(1)), int(m.group(2))) == (line, col), \
        f"error reported at {m.group(1)}:{m.group(2)}, expected {line}:{col}: {m.group(0)}"
    assert word in m.group(3), f"message does not name {word!r}: {m.group(0)}"


@pytest.mark.timeout(20)
def test_check_missing_file(tmp_path):
    r = run_tcpfault(["--check", "-c", "nope.yaml"], cwd=tmp_path)
    assert r.returncode == 2, f"exit {r.returncode}; {r.stderr}"
    # A file-level error has no position to show: no fake "nope.yaml:0:0:".
    assert r.stderr.splitlines() == [
        "nope.yaml: cannot read file: No such file or directory", "1 error"], r.stderr


@pytest.mark.timeout(20)
def test_check_unreadable_directory_has_no_fake_position(tmp_path):
    r = run_tcpfault(["--check", "-c", str(tmp_path)])
    assert r.returncode == 2, f"exit {r.returncode}; {r.stderr}"
    assert r.stderr.startswith(f"{tmp_path}: cannot read file: Is a directory\n"), r.stderr
    assert ":0:0:" not in r.stderr, r.stderr


@pytest.mark.timeout(20)
def test_check_counts_with_plurals(tmp_path):
    one = "admin: {listen: \"off\"}\nproxies:\n  - {name: a, listen: 127.0.0.1:0, upstream: x:1}\n"
    two = one + "  - {name: b, listen: 127.0.0.1:0, upstream: x:1}\n"
    for text, expected in ((one, "ok (1 proxy)"), (two, "ok (2 proxies)")):
        (tmp_path / "c.yaml").write_text(text)
        r = run_tcpfault(["--check", "-c", "c.yaml"], cwd=tmp_path)
        assert r.returncode == 0 and r.stdout == f"c.yaml: {expected}\n", (r.stdout, r.stderr)
        assert r.stderr == "", r.stderr
    for bad, expected in (("bogus: 1\n", "1 error"), ("bogus: 1\nworse: 2\n", "2 errors")):
        (tmp_path / "c.yaml").write_text(bad)
        r = run_tcpfault(["--check", "-c", "c.yaml"], cwd=tmp_path)
        assert r.returncode == 2 and r.stderr.splitlines()[-1] == expected, r.stderr


NO_PROXIES_WARNING = ("warning: no proxies defined: nothing is forwarded until proxies are "
                      "created over the Toxiproxy API (toxiproxy.listen or --toxiproxy-api)")


@pytest.mark.timeout(20)
@pytest.mark.parametrize("text", ["", "# nothing yet\n", "proxies: []\n",
                                  "admin: {listen: \"off\"}\ntoxiproxy: {listen: 127.0.0.1:0}\n"
                                  "proxies: []\n"],
                         ids=["empty", "comment", "empty-list", "toxiproxy-style"])
def test_check_accepts_a_config_without_proxies_with_a_warning(tmp_path, text):
    (tmp_path / "t.yaml").write_text(text)
    r = run_tcpfault(["--check", "-c", "t.yaml"], cwd=tmp_path)
    assert r.returncode == 0, f"exit {r.returncode}; {r.stderr}"
    assert r.stdout == "t.yaml: ok (0 proxies)\n", r.stdout
    assert r.stderr == f"t.yaml: {NO_PROXIES_WARNING}\n", r.stderr


@pytest.mark.timeout(20)
def test_start_without_proxies_logs_the_warning_and_runs(tcpfault):
    p = tcpfault.from_config('admin: {listen: "off"}\nlog: {format: json}\nproxies: []\n',
                             listening=0)
    started = p.wait_for_log("started", timeout=10)[0]
    assert started.get("proxies") == 0, started
    warnings = p.find_logs("config warning")
    assert len(warnings) == 1 and warnings[0].get("level") == "warn", warnings
    assert "warning: " + warnings[0]["warning"] == NO_PROXIES_WARNING, warnings[0]
    assert warnings[0]["file"].endswith(".yaml"), warnings[0]
    assert p.stop(10) == 0


@pytest.mark.timeout(20)
@pytest.mark.parametrize("args,flag,detail", [
    (["-l", "127.0.0.1:0", "-u", "db.example"], "-u", '"db.example" (missing :port)'),
    (["-l", "127.0.0.1:0", "-u", "db.example:0"], "-u",
     "(port 0 is only valid for listen addresses)"),
    (["-l", "127.0.0.1:99999", "-u", "a:1"], "-l", "(port must be 0-65535)"),
    (["--listen", "::1:80", "--upstream", "a:1"], "-l", "IPv6 addresses need brackets"),
    (["-l", "127.0.0.1:0", "-u", "a:1", "--admin", "nope"], "--admin", '"nope"'),
    (["-c", "x.yaml", "--toxiproxy-api", "8474"], "--toxiproxy-api", '"8474"'),
], ids=["u-no-port", "u-port-0", "l-port-range", "l-v6-brackets", "admin", "toxiproxy-api"])
def test_bad_address_flags_name_the_flag(args, flag, detail):
    r = run_tcpfault(args)
    assert r.returncode == 2, f"{args}: exit {r.returncode}; {r.stderr}"
    first = r.stderr.splitlines()[0]
    assert first.startswith(f"tcpfault: {flag}: expected host:port"), r.stderr
    assert detail in first, r.stderr
    assert "command line" not in r.stderr and ":0:0" not in r.stderr, r.stderr


@pytest.mark.timeout(20)
def test_run_with_invalid_file_exits_2(tcpfault, tmp_path):
    text, line, col, word = BAD_FILES["proxy-key"]
    (tmp_path / "bad.yaml").write_text(text)
    p = tcpfault.spawn(["-c", "bad.yaml"], cwd=tmp_path)
    rc = p.wait(10)
    err = p.stderr_text()
    assert rc == 2, f"running with an invalid file: exit {rc}, expected 2; stderr:\n{err}"
    assert f"bad.yaml:{line}:{col}:" in err, err


@pytest.mark.timeout(20)
def test_run_with_missing_file_exits_2(tcpfault, tmp_path):
    p = tcpfault.spawn(["-c", "missing.yaml"], cwd=tmp_path)
    rc = p.wait(10)
    err = p.stderr_text()
    assert rc == 2, f"running with a missing file: exit {rc}, expected 2; stderr:\n{err}"
    assert "missing.yaml" in err, err


@pytest.mark.timeout(20)
def test_bind_conflict_exits_1_naming_address(tcpfault):
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        holder.bind((LOOPBACK, 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        p = tcpfault.spawn(["-l", f"{LOOPBACK}:{port}", "-u", f"{LOOPBACK}:9",
                            "--log-format", "json", "--admin", "off"])
        rc = p.wait(10)
        err = p.stderr_text()
        assert rc == 1, f"bind conflict: exit {rc}, expected 1; stderr:\n{err}"
        assert f"{LOOPBACK}:{port}" in err, f"stderr does not name the address:\n{err}"
        assert "address already in use" in err.lower(), f"stderr lacks the OS error:\n{err}"
    finally:
        holder.close()


@pytest.mark.timeout(20)
def test_bind_conflict_on_second_proxy_of_a_file(tcpfault, servers):
    echo = servers.echo()
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        holder.bind((LOOPBACK, 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        p = tcpfault.from_proxies([
            {"name": "ok", "listen": f"{LOOPBACK}:0", "upstream": echo.addr},
            {"name": "taken", "listen": f"{LOOPBACK}:{port}", "upstream": echo.addr},
        ], listening=0)
        rc = p.wait(10)
        err = p.stderr_text()
        assert rc == 1, f"bind conflict: exit {rc}, expected 1; stderr:\n{err}"
        assert f"{LOOPBACK}:{port}" in err, f"stderr does not name the address:\n{err}"
        assert "address already in use" in err.lower(), err
    finally:
        holder.close()


# ---------------------------------------------------------------------------------------------
# logs


@pytest.mark.timeout(20)
def test_listening_lines_per_proxy(tcpfault, servers, sockets):
    a = servers.tcp(lambda c: (c.sendall(b"A"), c.recv(1), c.close()))
    b = servers.tcp(lambda c: (c.sendall(b"B"), c.recv(1), c.close()))
    p = tcpfault.from_proxies([
        {"name": "pa", "listen": f"{LOOPBACK}:0", "upstream": a.addr},
        {"name": "pb", "listen": f"{LOOPBACK}:0", "upstream": b.addr},
    ])
    recs = p.find_logs("listening")
    assert sorted(r["proxy"] for r in recs) == ["pa", "pb"], recs
    for r in recs:
        assert r.get("level") == "info", r
        assert isinstance(r.get("ts"), str) and r["ts"], r
        assert re.fullmatch(r"127\.0\.0\.1:\d+", r["addr"]), r
    assert p.addr("pa") != p.addr("pb")
    for name, tag in (("pa", b"A"), ("pb", b"B")):
        c = connect(p.addr(name))
        sockets.append(c)
        assert recv_exact(c, 1, timeout=5) == tag, f"proxy {name} reached the wrong upstream"


# ---------------------------------------------------------------------------------------------
# SIGTERM / SIGINT


@pytest.mark.timeout(20)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signal_without_connections(tcpfault, servers, sig):
    echo = servers.echo()
    p = tcpfault.quick(echo.addr)
    m = p.mark()
    t0 = time.monotonic()
    p.signal(sig)
    rc = p.wait(5)
    took = time.monotonic() - t0
    assert rc == 0, f"exit code {rc} after {sig.name}"
    assert took < 1.5, f"with no open connection the proxy took {took:.2f}s to stop"
    assert p.find_logs("shutting down", since=m), "no 'shutting down' log line"
    assert p.find_logs("stopped", since=m), "no 'stopped' log line"


def _connect_refused_within(addr, timeout: float) -> bool:
    """True once a connect to addr is refused (polling up to timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            s = connect(addr, timeout=1)
        except ConnectionRefusedError:
            return True
        else:
            s.close()
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


@pytest.mark.timeout(30)
def test_sigterm_lets_transfer_finish(tcpfault, servers, sockets):
    size = 4 * MiB
    piece = 128 * KiB
    payload = random.Random(31).randbytes(size)
    trailer = random.Random(32).randbytes(64 * KiB)
    received_trailer = []

    def handler(conn):
        with conn:
            for off in range(0, size, piece):
                conn.sendall(payload[off:off + piece])
                time.sleep(0.05)  # pacing: the transfer lasts ~1.6s, across the SIGTERM
            conn.shutdown(socket.SHUT_WR)
            received_trailer.append(recv_until_eof(conn, timeout=10))

    srv = servers.tcp(handler)
    p = tcpfault.quick(srv.addr)  # default shutdown_grace: 5s
    addr = p.addr()
    c = connect(addr)
    sockets.append(c)
    first = recv_exact(c, piece, timeout=5)

    m = p.mark()
    t_sig = time.monotonic()
    p.signal(signal.SIGTERM)
    p.wait_for_log("shutting down", timeout=5, since=m)

    # Stops accepting: new connects are refused.
    assert _connect_refused_within(addr, 0.5), "new connections still accepted after SIGTERM"
    assert p.running(), "the proxy exited while a connection was transferring"

    rest = recv_until_eof(c, timeout=10)
    t_done = time.monotonic()
    got = first + rest
    assert len(got) == size, f"client received {len(got)} of {size} bytes after SIGTERM"
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
    assert t_done - t_sig > 1.0, "test invalid: the transfer did not span the shutdown"

    # The other direction still works during the grace period.
    c.sendall(trailer)
    c.shutdown(socket.SHUT_WR)
    srv.join_handlers(10)
    assert received_trailer == [trailer], "the server did not receive the client's last bytes"
    c.close()
    t_closed = time.monotonic()

    rc = p.wait(max(0.5, t_sig + 5 + 1.5 - time.monotonic()))
    assert rc == 0, f"exit code {rc}"
    assert p.exit_time - t_closed < 1.5, (
        f"the proxy exited {p.exit_time - t_closed:.2f}s after its last connection finished; "
        f"it should exit once open connections are done")
    assert p.find_logs("stopped", since=m), "no 'stopped' log line"


@pytest.mark.timeout(20)
def test_sigterm_with_idle_connection_waits_grace_then_exits(tcpfault, servers, sockets):
    srv = servers.tcp()
    p = tcpfault.from_proxies(
        [{"name": "main", "listen": f"{LOOPBACK}:0", "upstream": srv.addr}],
        shutdown_grace="1s")
    c = connect(p.addr())
    sockets.append(c)
    s = srv.wait_accepted(1, timeout=5)
    sockets.append(s)
    c.sendall(b"ping")
    assert recv_exact(s, 4, timeout=5) == b"ping"

    m = p.mark()
    t0 = time.monotonic()
    p.signal(signal.SIGTERM)
    p.wait_for_log("shutting down", timeout=2, since=m)
    # Within the grace period the open connection is still relayed.
    s.sendall(b"pong")
    assert recv_exact(c, 4, timeout=2) == b"pong"

    rc = p.wait(4)
    took = p.exit_time - t0
    assert rc == 0, f"exit code {rc}"
    assert 0.9 <= took <= 2.0, f"exited {took:.2f}s after SIGTERM; shutdown_grace is 1s"
    # The connection was closed when the grace ran out.
    outcome, _, _ = read_outcome(c, timeout=2)
    assert outcome in ("eof", "reset"), f"client connection after exit: {outcome}"


# ---------------------------------------------------------------------------------------------
# SIGHUP reload


def _tagged_echo(tag: bytes):
    def handler(conn):
        with conn:
            conn.sendall(tag)
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                conn.sendall(data)
    return handler


def _echo_ok(c: socket.socket, what: bytes) -> None:
    c.sendall(what)
    assert recv_exact(c, len(what), timeout=5) == what


@pytest.mark.timeout(40)
def test_sighup_reload(tcpfault, servers, sockets):
    x = servers.tcp(_tagged_echo(b"X"))
    y = servers.tcp(_tagged_echo(b"Y"))
    port = free_port()
    listen = f"{LOOPBACK}:{port}"

    def cfg(upstream_line: str) -> str:
        return ('admin: {listen: "off"}\nlog: {format: json}\nproxies:\n'
                f'  - name: a\n    listen: "{listen}"\n{upstream_line}\n')

    path = tcpfault.write_config(cfg(f'    upstream: "{x.addr}"'), name="reload.yaml")
    p = tcpfault.from_config(None, path=path, listening=0)
    p.wait_listening(1)
    assert p.addr("a") == (LOOPBACK, port)

    c1 = connect((LOOPBACK, port))
    sockets.append(c1)
    assert recv_exact(c1, 1) == b"X"
    _echo_ok(c1, b"one")

    # 1. A broken file: reload fails, the old config keeps running.
    tcpfault.write_config(cfg(f'    upstream: "{y.addr}"\n    bogus_reload_key: 1'),
                          name="reload.yaml")
    m = p.mark()
    p.signal(signal.SIGHUP)
    rec = p.wait_for_log("reload failed", timeout=5, since=m)[0]
    assert rec.get("error"), f"'reload failed' without an error field: {rec}"
    assert "bogus_reload_key" in rec["error"], f"the error does not name the bad key: {rec}"
    assert not p.find_logs("reloaded", since=m)
    assert p.running()
    c2 = connect((LOOPBACK, port))
    sockets.append(c2)
    assert recv_exact(c2, 1) == b"X", "after a failed reload new connections must reach X"
    _echo_ok(c2, b"two")
    _echo_ok(c1, b"one again")

    # 2. A good file pointing the proxy at Y.
    tcpfault.write_config(cfg(f'    upstream: "{y.addr}"'), name="reload.yaml")
    m = p.mark()
    p.signal(signal.SIGHUP)
    p.wait_for_log("reloaded", timeout=5, since=m)
    assert not p.find_logs("reload failed", since=m)
    c3 = connect((LOOPBACK, port))
    sockets.append(c3)
    assert recv_exact(c3, 1) == b"Y", "after the reload new connections must reach Y"
    _echo_ok(c3, b"three")
    assert y.count() == 1 and x.count() == 2

    # Connections opened before the reload keep working, still to X.
    _echo_ok(c1, b"one, after reload")
    _echo_ok(c2, b"two, after reload")

    for c in (c1, c2, c3):
        c.close()
    assert p.stop(10) == 0
