"""The FTP recipes of examples/recipes/ with real servers (vsftpd, pyftpdlib) and real clients
(curl, lftp, Python's ftplib): each test copies a recipe, fills in its ${...} addresses and
tunables, runs a client through it and checks what the client reports (exit status, message,
exception) and what the server stored.

Uploads that must fail use vsftpd: it reads every byte the proxy forwarded before the RST and
answers 426 on the control connection, so "what the server stored" is exact. (pyftpdlib takes a
RST on the data connection for an ordinary end of file and answers 226.)
"""

from __future__ import annotations

import ftplib
import hashlib
import os
import re
import socket
import subprocess
import time

import pytest

from recipe_helpers import (CURL, KiB, MiB, Background, PyFtpd, Vsftpd, free_port,
                            lftp_script, logs, make_file, missing_tools, run, sha256_file,
                            start_recipe, wait_stable_size)

pytestmark = pytest.mark.skipif(
    bool(missing_tools("curl", "lftp", "vsftpd")),
    reason=f"needs curl, lftp and vsftpd (apt-get install curl lftp vsftpd python3-pyftpdlib); "
           f"missing: {missing_tools('curl', 'lftp', 'vsftpd')}")

RESET_REPLY = "Connection reset by peer"


@pytest.fixture
def vsftpd(tmp_path):
    s = Vsftpd(tmp_path)
    yield s
    s.stop()


def fault_logs(p, rule: str, count: int) -> list[dict]:
    return logs(p, "fault injected", count, rule=rule)


def prefix_of(path, data: bytes) -> bool:
    got = path.read_bytes()
    return got == data[:len(got)]


# --------------------------------------------------------------------------------------------
# ftp-upload-reset-700k.yaml


RESET_AT = 700 * KiB  # the recipe's default RESET_AFTER


def start_upload_reset(tcpfault, monkeypatch, server_port: int):
    p = start_recipe(tcpfault, monkeypatch, "ftp-upload-reset-700k.yaml",
                     {"LISTEN": "127.0.0.1:0", "UPSTREAM": f"127.0.0.1:{server_port}"},
                     log_level="debug")
    p.port = p.addr("ftp")[1]
    return p


CURL_UPLOAD_MODES = {
    "epsv": [],
    "pasv": ["--disable-epsv"],
    "port": ["-P", "127.0.0.1", "--disable-eprt"],
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", list(CURL_UPLOAD_MODES))
def test_ftp_upload_reset_700k_curl(tcpfault, monkeypatch, vsftpd, tmp_path, mode):
    """curl -T of 2 MiB: the data connection is reset after exactly 700 KiB, the control
    connection stays up. curl fails either while sending (55, the RST) or after sending
    everything into the socket buffers (18, vsftpd's "426" arrives on the control
    connection); vsftpd keeps exactly the 716800 bytes the proxy forwarded."""
    p = start_upload_reset(tcpfault, monkeypatch, vsftpd.port)
    src = tmp_path / "up.bin"
    make_file(src, 2 * MiB, seed=21)
    data = src.read_bytes()
    r = run(CURL + ["-m", "20"] + CURL_UPLOAD_MODES[mode]
            + ["-T", src, f"ftp://127.0.0.1:{p.port}/upload/u.bin"], 30)
    assert r.rc in (18, 55), f"curl should fail with 55 (send failure) or 18 (426): {r}"
    # In active mode curl 7.88 prints a stale "sa_addr inet_ntop() failed with errno 97"
    # from its error buffer instead of the real cause (also without any proxy): only the
    # exit code counts there.
    if mode == "port":
        pass
    elif r.rc == 55:
        assert re.search(r"curl: \(55\) Send failure: (Connection reset by peer|Broken pipe)",
                         r.err), r
    else:
        assert "curl: (18) server did not report OK, got 426" in r.err, r
    stored = vsftpd.upload / "u.bin"
    size = wait_stable_size(stored, 5)
    assert size == RESET_AT, (
        f"vsftpd stored {size} bytes, expected exactly {RESET_AT} (the proxy forwards exactly "
        f"after_bytes on the data connection, flushed before the RST)\n{vsftpd.log()}")
    assert prefix_of(stored, data), "the stored bytes are not the start of the upload"
    assert re.search(r"FAIL UPLOAD: .*u\.bin\", 716800 bytes", vsftpd.log()), vsftpd.log()
    faults = fault_logs(p, "reset-upload-700k", 1)
    assert len(faults) == 1, f"expected one reset (the data connection only): {faults}"
    assert faults[0]["bytes_up"] == RESET_AT, faults[0]


@pytest.mark.timeout(60)
def test_ftp_upload_reset_700k_ftplib_control_survives(tcpfault, monkeypatch, vsftpd,
                                                       tmp_path):
    """Python's ftplib: storbinary fails (the RST while sending, or the 426 reply after the
    data went into buffers); the control connection is still usable afterwards and reports
    the partial file's size."""
    p = start_upload_reset(tcpfault, monkeypatch, vsftpd.port)
    src = tmp_path / "up.bin"
    make_file(src, 2 * MiB, seed=22)
    ftp = ftplib.FTP()
    ftp.connect("127.0.0.1", p.port, timeout=10)
    try:
        ftp.login()
        with pytest.raises((ConnectionResetError, BrokenPipeError, ftplib.error_temp)) as ei:
            with open(src, "rb") as f:
                ftp.storbinary("STOR upload/f.bin", f)
        if isinstance(ei.value, ftplib.error_temp):
            assert str(ei.value).startswith("426"), ei.value
        else:
            # The RST reached storbinary's sendall; vsftpd's verdict is still due on the
            # control connection.
            with pytest.raises(ftplib.error_temp, match=r"^426"):
                ftp.getresp()
        # Same control connection: still alive, and it sees what the server kept.
        assert ftp.voidcmd("NOOP").startswith("200")
        ftp.voidcmd("TYPE I")
        assert ftp.size("upload/f.bin") == RESET_AT
        ftp.quit()
    finally:
        ftp.close()
    stored = vsftpd.upload / "f.bin"
    assert wait_stable_size(stored, 5) == RESET_AT
    assert prefix_of(stored, src.read_bytes())
    assert [r["bytes_up"] for r in fault_logs(p, "reset-upload-700k", 1)] == [RESET_AT]


# --------------------------------------------------------------------------------------------
# server-crash-restart-flapping.yaml


def log_seconds(rec: dict) -> float:
    m = re.search(r"T(\d\d):(\d\d):(\d\d(?:\.\d+)?)", rec["ts"])
    assert m, rec
    return int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))


@pytest.mark.timeout(60)
def test_server_crash_restart_flapping(tcpfault, monkeypatch, tmp_path):
    """Crash at 1.5 s, then every 2.5 s, 1 s of downtime each: a download in progress (a
    server sending at 512 KiB/s) is reset (curl 56), connects during the downtime are refused
    (curl 7, Python ConnectionRefusedError), after the downtime everything works again, and
    it happens again one period later."""
    srv = PyFtpd(tmp_path, rate=512 * KiB)
    slow = None
    try:
        make_file(srv.root / "big.bin", 2 * MiB, seed=23)
        sha = make_file(srv.root / "small.bin", 32 * KiB, seed=29)
        port = free_port()  # a fixed port, as a real service has
        p = start_recipe(tcpfault, monkeypatch, "server-crash-restart-flapping.yaml",
                         {"LISTEN": f"127.0.0.1:{port}", "UPSTREAM": f"127.0.0.1:{srv.port}",
                          "CRASH_EVERY": "2500ms", "CRASH_FIRST": "1500ms", "DOWNTIME": "1s"})
        base = f"ftp://127.0.0.1:{port}/"
        slow = Background(CURL + ["-o", tmp_path / "slow.bin", base + "big.bin"], 20)
        crash1 = p.wait_for_log("restart", timeout=5)[0]
        # During the downtime: refused.
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        r = run(CURL + ["-o", tmp_path / "refused.bin", base + "small.bin"], 10)
        assert r.rc == 7 and "curl: (7) Failed to connect to 127.0.0.1" in r.err, r
        assert crash1["open_connections"] == 2, (
            f"the download's control and data connections were open at the crash: {crash1}")
        # The transfer in progress was reset (curl first reads what was already buffered).
        res = slow.result()
        assert res.rc == 56 and f"curl: (56) Recv failure: {RESET_REPLY}" in res.err, res
        got = (tmp_path / "slow.bin").stat().st_size
        assert 0 < got < 2 * MiB, f"the interrupted download has {got} bytes"
        # After the downtime: back.
        p.wait_for_log("listener re-opened", timeout=5)
        out = tmp_path / "after.bin"
        r = run(CURL + ["-o", out, base + "small.bin"], 10)
        assert r.rc == 0, f"download after the restart failed: {r}"
        assert sha256_file(out) == sha
        # ...and it crashes again one period later.
        crash2 = p.wait_for_log("restart", timeout=5, count=2)[1]
        gap = log_seconds(crash2) - log_seconds(crash1)
        assert 2.3 <= gap <= 2.8, f"crashes {gap:.3f}s apart, expected CRASH_EVERY=2.5s"
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:
        if slow is not None:
            slow.kill()
        srv.stop()


# --------------------------------------------------------------------------------------------
# firewall-idle-timeout.yaml (FTP proxy)


def start_idle(tcpfault, monkeypatch, ftp_port: int, timeout: str = "1s"):
    p = start_recipe(tcpfault, monkeypatch, "firewall-idle-timeout.yaml",
                     {"FTP_LISTEN": "127.0.0.1:0", "FTP_UPSTREAM": f"127.0.0.1:{ftp_port}",
                      "SMTP_LISTEN": "127.0.0.1:0", "SMTP_UPSTREAM": "127.0.0.1:9",
                      "IDLE_TIMEOUT": timeout},
                     listening=2, log_level="debug")
    p.port = p.addr("ftp")[1]
    return p


@pytest.mark.timeout(60)
def test_firewall_idle_timeout_ftp_control_during_long_download(tcpfault, monkeypatch,
                                                                tmp_path):
    """A 2 s download (a server sending at 1 MiB/s) keeps the data connection busy while the
    control connection is idle for longer than the 1 s idle timeout: the final "226" is
    answered with a RST. curl and ftplib report a reset although the whole file arrived;
    lftp notices the file is complete and exits 0."""
    srv = PyFtpd(tmp_path, rate=1 * MiB)
    try:
        sha = make_file(srv.root / "big.bin", 2 * MiB, seed=24)
        p = start_idle(tcpfault, monkeypatch, srv.port)

        out = tmp_path / "curl.bin"
        r = run(CURL + ["-m", "20", "-o", out, f"ftp://127.0.0.1:{p.port}/big.bin"], 30)
        assert r.rc == 56 and f"curl: (56) Recv failure: {RESET_REPLY}" in r.err, r
        assert sha256_file(out) == sha, "curl: the data connection was not idle: complete file"

        out = tmp_path / "ftplib.bin"
        ftp = ftplib.FTP()
        ftp.connect("127.0.0.1", p.port, timeout=10)
        try:
            ftp.login()
            with open(out, "wb") as f:
                with pytest.raises(ConnectionResetError):
                    ftp.retrbinary("RETR big.bin", f.write)
        finally:
            ftp.close()
        assert sha256_file(out) == sha

        out = tmp_path / "lftp.bin"
        r = run(lftp_script(p.port, f"get big.bin -o {out}"), 30)
        assert r.rc == 0, f"lftp: {r}"
        assert sha256_file(out) == sha

        # The control connections timed out; the data connections were not reset (complete
        # files above).
        logs(p, "idle timeout", 3, proxy="ftp")
    finally:
        srv.stop()


@pytest.mark.timeout(60)
def test_firewall_idle_timeout_releases_finished_connections(tcpfault, monkeypatch, vsftpd,
                                                            tmp_path):
    """A download the client reads slowly: vsftpd sends the whole file and closes the data
    connection at once (its FIN is passed on), the client finishes reading and closes after
    the idle timeout. Both peers of the data connection (and then of the control
    connection) have closed: the proxy must not keep those sessions open."""
    sha = make_file(vsftpd.root / "small.bin", 256 * KiB, seed=25)
    os.chmod(vsftpd.root / "small.bin", 0o644)
    p = start_idle(tcpfault, monkeypatch, vsftpd.port)
    baseline = p.fd_count()
    h = hashlib.sha256()
    first = [True]

    def slow_reader(block: bytes) -> None:
        if first[0]:
            first[0] = False
            time.sleep(1.5)  # a slow consumer: longer than IDLE_TIMEOUT
        h.update(block)

    ftp = ftplib.FTP()
    ftp.connect("127.0.0.1", p.port, timeout=10)
    try:
        ftp.login()
        resp = ftp.retrbinary("RETR small.bin", slow_reader)
        assert resp.startswith("226"), resp  # arrived before the control connection idled
    finally:
        ftp.close()  # no QUIT: just FIN, after the idle timeout
    assert h.hexdigest() == sha
    # The data connection is closed by both peers (vsftpd first, before the timeout; the
    # client after it); the client closed the control connection too. Expected: the proxy
    # ends both sessions (passing the FIN or resetting the server side) and releases their
    # sockets.
    deadline = time.monotonic() + 3
    while p.fd_count() > baseline and time.monotonic() < deadline:
        time.sleep(0.05)  # no event to wait for: the count is polled
    left = p.fd_count()
    if left > baseline:
        try:
            ss = subprocess.run(["ss", "-tanp"], capture_output=True, text=True).stdout
        except OSError as e:  # no iproute2
            ss = f"(ss: {e})"
        mine = [l for l in ss.splitlines() if f"pid={p.pid}," in l and "LISTEN" not in l]
        raise AssertionError(
            f"3 s after the client closed everything, tcpfault still holds {left - baseline} "
            f"socket(s) of these sessions (toward vsftpd's control port {vsftpd.port} and "
            f"its data port); its sockets:\n" + "\n".join(mine))


# --------------------------------------------------------------------------------------------
# too-many-users-421.yaml (FTP proxy)


@pytest.mark.timeout(60)
def test_too_many_users_421_ftp(tcpfault, monkeypatch, tmp_path):
    """MAX_FTP_USERS=2: two logged-in sessions (transferring: data connections do not count),
    a third client gets "421 Too many users" and a close: curl exits 28 (curl 7.88 maps an
    FTP 421 to "Timeout was reached"), lftp exits 1 quoting the 421, ftplib raises
    error_temp. When a session ends, the next client gets in."""
    srv = PyFtpd(tmp_path)
    held: list[ftplib.FTP] = []
    try:
        sha = make_file(srv.root / "f.bin", 512 * KiB, seed=26)
        p = start_recipe(tcpfault, monkeypatch, "too-many-users-421.yaml",
                         {"FTP_LISTEN": "127.0.0.1:0", "FTP_UPSTREAM": f"127.0.0.1:{srv.port}",
                          "SMTP_LISTEN": "127.0.0.1:0", "SMTP_UPSTREAM": "127.0.0.1:9",
                          "MAX_FTP_USERS": "2"}, listening=2)
        port = p.addr("ftp")[1]
        for _ in range(2):
            f = ftplib.FTP()
            f.connect("127.0.0.1", port, timeout=10)
            f.login()
            held.append(f)
        # Both sessions can transfer (passive and active): their data connections are not
        # sessions for the cap (match: channel: control).
        for f, passive in zip(held, (True, False)):
            f.set_pasv(passive)
            h = hashlib.sha256()
            assert f.retrbinary("RETR f.bin", h.update).startswith("226")
            assert h.hexdigest() == sha

        r = run(CURL + ["-v", "-o", tmp_path / "x.bin", f"ftp://127.0.0.1:{port}/f.bin"], 10)
        assert r.rc == 28 and "< 421 Too many users, please try again later." in r.err, r
        assert "curl: (28)" in r.err, r
        r = run(lftp_script(port, "ls"), 10)
        assert r.rc == 1 and "421 Too many users, please try again later." in r.err, r
        f = ftplib.FTP()
        with pytest.raises(ftplib.error_temp, match=r"^421 Too many users"):
            f.connect("127.0.0.1", port, timeout=10)
        f.close()
        assert len(fault_logs(p, "max-users", 3)) == 3

        held.pop().quit()
        # The slot frees once the proxy saw the session end.
        out = tmp_path / "ok.bin"
        deadline = time.monotonic() + 3
        while True:
            r = run(CURL + ["-o", out, f"ftp://127.0.0.1:{port}/f.bin"], 10)
            if r.rc == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.05)  # the proxy learns of the QUIT's close asynchronously
        assert r.rc == 0, f"a slot should be free after one session quit: {r}"
        assert sha256_file(out) == sha
    finally:
        for f in held:
            f.close()
        srv.stop()


# --------------------------------------------------------------------------------------------
# slow-link-large-upload-timeout.yaml


RATE = 256 * KiB


def start_slow_link(tcpfault, monkeypatch, server_port: int):
    p = start_recipe(tcpfault, monkeypatch, "slow-link-large-upload-timeout.yaml",
                     {"LISTEN": "127.0.0.1:0", "UPSTREAM": f"127.0.0.1:{server_port}",
                      "RATE": "256KiB/s"})
    p.port = p.addr("ftp")[1]
    return p


@pytest.mark.timeout(60)
def test_slow_link_large_upload_times_out(tcpfault, monkeypatch, vsftpd, tmp_path):
    """An 8 MiB upload over a 256 KiB/s uplink with small buffers: `curl -m 2` gives up
    while still sending (28, "Operation timed out"), and the server has received about
    2 s worth of the link, not the megabytes curl could otherwise park in buffers."""
    p = start_slow_link(tcpfault, monkeypatch, vsftpd.port)
    src = tmp_path / "up.bin"
    make_file(src, 8 * MiB, seed=27)
    r = run(CURL + ["-m", "2", "-T", src, f"ftp://127.0.0.1:{p.port}/upload/big.bin"], 10)
    stored = vsftpd.upload / "big.bin"
    size = stored.stat().st_size if stored.exists() else 0
    assert r.rc == 28, f"curl should time out: {r}"
    assert re.search(r"curl: \(28\) Operation timed out after \d+ milliseconds", r.err), (
        f"curl should time out while still sending (small buffers), not after: {r}")
    # At curl's exit: at most RATE * elapsed (+ the 50 ms token bucket), at least half of it.
    assert size <= RATE * r.secs + 32 * KiB, (
        f"server has {size} bytes after {r.secs:.2f}s at {RATE} B/s: the rate is not enforced")
    assert size >= RATE * (r.secs - 1.0) / 2, f"server has only {size} bytes after {r.secs:.2f}s"
    assert prefix_of(stored, src.read_bytes())


@pytest.mark.timeout(60)
def test_slow_link_small_upload_completes_at_the_rate(tcpfault, monkeypatch, vsftpd, tmp_path):
    """A 384 KiB upload fits in the buffers for the client, but the server receives it at the
    link's pace: 1.5 s at 256 KiB/s, byte-identical."""
    p = start_slow_link(tcpfault, monkeypatch, vsftpd.port)
    src = tmp_path / "up.bin"
    sha = make_file(src, 384 * KiB, seed=28)
    r = run(CURL + ["-m", "20", "-T", src, f"ftp://127.0.0.1:{p.port}/upload/small.bin"], 30)
    assert r.rc == 0, r
    assert 1.2 <= r.secs <= 4.0, f"384 KiB at 256 KiB/s took {r.secs:.2f}s, expected ~1.5s"
    assert sha256_file(vsftpd.upload / "small.bin") == sha
