"""The recipes of examples/recipes/ that drop packets (blackhole, loss: CAP_NET_ADMIN), with real
servers (vsftpd, pyftpdlib, aiosmtpd) and real clients (curl, smtplib), each in a network
namespace of its own (netns.py: skipped for a plain user, failing as root, where CI runs).
"""

from __future__ import annotations

import errno
import ftplib
import hashlib
import smtplib
import socket
import subprocess
import time

import pytest

from netns import netns, tcp_counters  # noqa: F401
from recipe_helpers import (CURL, KiB, MiB, PyFtpd, Smtpd, Vsftpd, have_module, logs,
                            make_file, missing_tools, run, sha256_file, start_recipe,
                            wait_stable_size)

pytestmark = pytest.mark.skipif(
    bool(missing_tools("curl", "vsftpd")) or not have_module("aiosmtpd")
    or not have_module("pyftpdlib"),
    reason="needs curl, vsftpd, python3-pyftpdlib and python3-aiosmtpd (docker/install-deps.sh "
           "test)")


def sysctl(name: str, value: str) -> None:
    """Sets a sysctl of the test's network namespace (net.ipv4.tcp_* are per namespace)."""
    subprocess.run(["sysctl", "-q", "-w", f"{name}={value}"], check=True, timeout=10)


# --------------------------------------------------------------------------------------------
# firewall-silent-drop.yaml


@pytest.mark.timeout(60)
def test_firewall_silent_drop_busy_and_idle(netns, tcpfault, monkeypatch, tmp_path):
    """1 s into each connection every packet disappears. A busy FTP download with curl
    (keepalive probes every second) fails with "(56) Recv failure: Connection timed out"; an
    idle SMTP session (smtplib, TCP_USER_TIMEOUT 2 s) fails on its next command with
    [Errno 110]. The namespace keeps the kernel's default timeouts except the number of
    keepalive probes (2 instead of 9), so curl gives up in about 3 s instead of 10."""
    sysctl("net.ipv4.tcp_keepalive_probes", "2")
    ftpd = PyFtpd(tmp_path, rate=256 * KiB)
    smtpd = Smtpd(tmp_path)
    try:
        make_file(ftpd.root / "big.bin", 4 * MiB, seed=31)
        p = start_recipe(tcpfault, monkeypatch, "firewall-silent-drop.yaml",
                         {"SMTP_LISTEN": "127.0.0.1:0", "SMTP_UPSTREAM": smtpd.addr,
                          "FTP_LISTEN": "127.0.0.1:0", "FTP_UPSTREAM": f"127.0.0.1:{ftpd.port}",
                          "DROP_AFTER": "1s"}, listening=2)
        s = smtplib.SMTP("127.0.0.1", p.addr("smtp")[1], timeout=20)
        s.ehlo()
        s.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 2000)

        out = tmp_path / "big.bin"
        t0 = time.monotonic()
        r = run(CURL + ["--keepalive-time", "1", "-m", "30", "-o", out,
                        f"ftp://127.0.0.1:{p.addr('ftp')[1]}/big.bin"], 40)
        secs = time.monotonic() - t0
        assert r.rc == 56 and "curl: (56) Recv failure: Connection timed out" in r.err, r
        got = out.stat().st_size if out.exists() else 0
        assert 0 < got < 4 * MiB, f"curl got {got} bytes: the drop should cut the transfer"
        print(f"curl: {r.err.strip()} after {secs:.1f}s, {got} bytes")

        logs(p, "packets dropped", 1, proxy="smtp")
        with pytest.raises(smtplib.SMTPServerDisconnected) as e:
            s.noop()
        assert "[Errno 110] Connection timed out" in str(e.value), e.value
        print(f"smtplib: {e.value!r}")
        s.close()
    finally:
        ftpd.stop()
        smtpd.stop()


# --------------------------------------------------------------------------------------------
# ftp-upload-blackhole-700k.yaml


@pytest.mark.timeout(60)
def test_ftp_upload_blackhole_700k_curl(netns, tcpfault, monkeypatch, tmp_path):
    """curl -T of 16 MiB (more than the socket buffers on the way hold, so curl cannot
    finish writing): after exactly 700 KiB of the data connection every packet is dropped;
    curl sees its upload stall and gives up with its own timeout (28) after 3 s,
    vsftpd has stored exactly 716,800 bytes (it received them before the drop) and nothing
    more. The control connection is not touched: one blackhole, on the data connection."""
    vsftpd = Vsftpd(tmp_path)
    try:
        p = start_recipe(tcpfault, monkeypatch, "ftp-upload-blackhole-700k.yaml",
                         {"LISTEN": "127.0.0.1:0", "UPSTREAM": f"127.0.0.1:{vsftpd.port}"},
                         log_level="debug")
        src = tmp_path / "up.bin"
        make_file(src, 16 * MiB, seed=32)
        data = src.read_bytes()
        r = run(CURL + ["--speed-limit", "1", "--speed-time", "3", "-m", "30", "-T", src,
                        f"ftp://127.0.0.1:{p.addr('ftp')[1]}/upload/u.bin"], 40)
        assert r.rc == 28 and "curl: (28) Operation too slow" in r.err, r
        stored = vsftpd.upload / "u.bin"
        size = wait_stable_size(stored, 5)
        assert size == 700 * KiB, f"vsftpd stored {size} bytes, expected exactly {700 * KiB}"
        assert stored.read_bytes() == data[:size]
        faults = logs(p, "fault injected", 1, rule="blackhole-upload-700k")
        assert len(faults) == 1 and faults[0]["bytes_up"] == 700 * KiB, faults
        logs(p, "packets dropped", 1, rule="blackhole-upload-700k")
    finally:
        vsftpd.stop()


# --------------------------------------------------------------------------------------------
# flaky-link-2pct-loss.yaml


@pytest.mark.timeout(60)
def test_flaky_link_2pct_loss_every_byte_arrives(netns, tcpfault, monkeypatch, tmp_path):
    """On a 1500-byte-MTU link (loopback set to Ethernet's MTU, so an 8 MiB file is thousands
    of packets) losing 2% of the packets each way: curl downloads over FTP and ftplib
    uploads, both complete with identical bytes, and the namespace's TCP counted
    retransmissions."""
    subprocess.run(["ip", "link", "set", "lo", "mtu", "1500"], check=True, timeout=10)
    ftpd = PyFtpd(tmp_path)
    smtpd = Smtpd(tmp_path)
    try:
        sha = make_file(ftpd.root / "big.bin", 8 * MiB, seed=33)
        p = start_recipe(tcpfault, monkeypatch, "flaky-link-2pct-loss.yaml",
                         {"FTP_LISTEN": "127.0.0.1:0", "FTP_UPSTREAM": f"127.0.0.1:{ftpd.port}",
                          "SMTP_LISTEN": "127.0.0.1:0", "SMTP_UPSTREAM": smtpd.addr},
                         listening=2)
        port = p.addr("ftp")[1]
        before = tcp_counters()["RetransSegs"]
        t0 = time.monotonic()
        out = tmp_path / "down.bin"
        r = run(CURL + ["-m", "40", "-o", out, f"ftp://127.0.0.1:{port}/big.bin"], 50)
        assert r.rc == 0, r
        assert sha256_file(out) == sha, "curl: the file differs"
        up = out.read_bytes()
        ftp = ftplib.FTP()
        ftp.connect("127.0.0.1", port, timeout=20)
        ftp.login()
        import io
        ftp.storbinary("STOR up.bin", io.BytesIO(up))
        ftp.quit()
        assert hashlib.sha256((ftpd.root / "up.bin").read_bytes()).hexdigest() == sha
        retrans = tcp_counters()["RetransSegs"] - before
        secs = time.monotonic() - t0
        assert retrans > 0, "no retransmission: were packets lost at all?"
        print(f"8 MiB down (curl) and up (ftplib) through 2% loss in {secs:.1f}s, "
              f"{retrans} retransmitted segments")
        assert logs(p, "packets dropped", 1, proxy="ftp")
    finally:
        ftpd.stop()
        smtpd.stop()
