"""FTP through tcpfault with no rules (`protocol: ftp`): real servers (pyftpdlib, vsftpd), real
clients (curl, lftp, Python's ftplib), passive (EPSV and PASV) and active (EPRT and PORT) data
connections. Every transfer is a 2 MiB random file, uploaded and downloaded through the proxy
and compared by sha256 with what the server stored / served.

The proxy must rewrite the 227/229 replies and the PORT/EPRT commands so that the data
connections go through it as well: the tests check that too, from the proxy's debug log and by
counting its connections.
"""

from __future__ import annotations

import ftplib
import os
import time
from pathlib import Path

import pytest

from recipe_helpers import (CURL, MiB, PyFtpd, Vsftpd, lftp_script, logs, make_file,
                            missing_tools, run, sha256_file)

pytestmark = pytest.mark.skipif(
    bool(missing_tools("curl", "lftp", "vsftpd")),
    reason=f"needs curl, lftp and vsftpd (apt-get install curl lftp vsftpd python3-pyftpdlib); "
           f"missing: {missing_tools('curl', 'lftp', 'vsftpd')}")

SIZE = 2 * MiB


class FtpServer:
    """One real FTP server with a 2 MiB file to download and a place to upload to."""

    def __init__(self, kind: str, tmp: Path):
        self.kind = kind
        if kind == "pyftpdlib":
            self.impl = PyFtpd(tmp)
            self.root = self.impl.root
            self.upload_dir = self.root
            self.upload_path = ""  # the URL path prefix of uploads
        else:
            self.impl = Vsftpd(tmp)
            self.root = self.impl.root
            self.upload_dir = self.impl.upload
            self.upload_path = "upload/"
        self.port = self.impl.port
        self.addr = f"127.0.0.1:{self.port}"
        self.download_sha = make_file(self.root / "down.bin", SIZE, seed=11)
        os.chmod(self.root / "down.bin", 0o644)
        self.src = tmp / "src.bin"
        self.src_sha = make_file(self.src, SIZE, seed=12)

    def stop(self) -> None:
        self.impl.stop()

    def log(self) -> str:
        return self.impl.log()


@pytest.fixture(scope="module", params=["pyftpdlib", "vsftpd"])
def ftp_server(request, tmp_path_factory):
    s = FtpServer(request.param, tmp_path_factory.mktemp(request.param))
    yield s
    s.stop()


def ftp_proxy_yaml(upstream: str) -> str:
    return ("admin: {listen: \"off\"}\n"
            "log: {format: json, level: debug}\n"
            "proxies:\n"
            "  - name: ftp\n"
            "    listen: 127.0.0.1:0\n"
            f"    upstream: \"{upstream}\"\n"
            "    protocol: ftp\n"
            "    rules: []\n")


@pytest.fixture
def proxy(tcpfault, ftp_server):
    p = tcpfault.from_config(ftp_proxy_yaml(ftp_server.addr))
    p.ftp_port = p.addr("ftp")[1]
    return p


def check_stored(server: FtpServer, name: str, result=None) -> None:
    path = server.upload_dir / name
    # The server may close the file a moment after its 226 (vsftpd: a separate process).
    deadline = time.monotonic() + 3
    while (not path.exists() or path.stat().st_size != SIZE) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert path.exists(), f"{server.kind} stored no {name}; client: {result}\n{server.log()}"
    assert path.stat().st_size == SIZE, (
        f"{server.kind} stored {path.stat().st_size} bytes of {SIZE} for {name}; client: "
        f"{result}")
    assert sha256_file(path) == server.src_sha, f"{name}: stored bytes differ from the upload"


def check_downloaded(server: FtpServer, path: Path, result=None) -> None:
    assert path.exists(), f"nothing downloaded; client: {result}"
    assert path.stat().st_size == SIZE, (
        f"downloaded {path.stat().st_size} bytes of {SIZE}; client: {result}")
    assert sha256_file(path) == server.download_sha, "downloaded bytes differ from the server's"


def check_data_went_through_proxy(p, kind: str, transfers: int) -> None:
    """The data connections did not bypass the proxy: it accepted the control connection
    and one data connection per transfer (passive: from the client, active: from the
    server), and (passive) logged a data listener per transfer; no 227/229/PORT/EPRT went
    through unchanged."""
    if kind == "passive":
        logs(p, "ftp: passive data via proxy", transfers)
    logs(p, "accepted", 1 + transfers)
    unchanged = p.find_logs("ftp: passed through unchanged")
    assert not unchanged, f"the proxy left a 227/229/PORT/EPRT unchanged: {unchanged}"


# --------------------------------------------------------------------------------------------
# curl


CURL_MODES = {
    "epsv": [],                                   # curl's default: EPSV, then PASV
    "pasv": ["--disable-epsv"],                   # 227 replies
    "eprt": ["-P", "127.0.0.1"],                  # active, EPRT
    "port": ["-P", "127.0.0.1", "--disable-eprt"],  # active, PORT
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", list(CURL_MODES))
def test_curl_upload_download(ftp_server, proxy, tmp_path, mode):
    base = f"ftp://127.0.0.1:{proxy.ftp_port}/"
    name = f"curl-{mode}.bin"
    flags = CURL_MODES[mode]
    up = run(CURL + ["-m", "20"] + flags + ["-T", ftp_server.src,
                                             base + ftp_server.upload_path + name], 30)
    assert up.rc == 0, f"upload failed: {up}"
    check_stored(ftp_server, name, up)
    out = tmp_path / "down.bin"
    down = run(CURL + ["-m", "20"] + flags + ["-o", out, base + "down.bin"], 30)
    assert down.rc == 0, f"download failed: {down}"
    check_downloaded(ftp_server, out, down)
    check_data_went_through_proxy(proxy, "active" if "-P" in flags else "passive", 2)


# --------------------------------------------------------------------------------------------
# lftp (uses the address in the 227 reply, unlike curl and ftplib)


LFTP_MODES = {
    "pasv": "set ftp:passive-mode on; set ftp:prefer-epsv no",
    "epsv": "set ftp:passive-mode on; set ftp:prefer-epsv yes",
    "active": "set ftp:passive-mode off; set ftp:port-ipv4 127.0.0.1",
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", list(LFTP_MODES))
def test_lftp_upload_download(ftp_server, proxy, tmp_path, mode):
    name = f"lftp-{mode}.bin"
    out = tmp_path / "down.bin"
    cmds = (f"put {ftp_server.src} -o {ftp_server.upload_path}{name}; "
            f"get down.bin -o {out}")
    r = run(lftp_script(proxy.ftp_port, cmds, settings=LFTP_MODES[mode]), 30)
    assert r.rc == 0, f"lftp failed: {r}"
    check_stored(ftp_server, name, r)
    check_downloaded(ftp_server, out, r)
    check_data_went_through_proxy(proxy, "active" if mode == "active" else "passive", 2)


# --------------------------------------------------------------------------------------------
# Python ftplib (PASV for IPv4; set_pasv(False) sends PORT)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("passive", [True, False], ids=["pasv", "port"])
def test_ftplib_upload_download(ftp_server, proxy, tmp_path, passive):
    name = f"ftplib-{'pasv' if passive else 'port'}.bin"
    ftp = ftplib.FTP()
    ftp.connect("127.0.0.1", proxy.ftp_port, timeout=20)
    try:
        ftp.login()
        ftp.set_pasv(passive)
        with open(ftp_server.src, "rb") as f:
            resp = ftp.storbinary(f"STOR {ftp_server.upload_path}{name}", f)
        assert resp.startswith("226"), resp
        out = tmp_path / "down.bin"
        with open(out, "wb") as f:
            resp = ftp.retrbinary("RETR down.bin", f.write)
        assert resp.startswith("226"), resp
        # A directory listing is a data connection too.
        names = ftp.nlst(ftp_server.upload_path or ".")
        assert any(n.endswith(name) for n in names), names
        ftp.quit()
    finally:
        ftp.close()
    check_stored(ftp_server, name)
    check_downloaded(ftp_server, out)
    check_data_went_through_proxy(proxy, "passive" if passive else "active", 3)


# --------------------------------------------------------------------------------------------
# multi-line replies


# A 220 greeting of several lines (RFC 959 4.2: "220-" ... "220 "), whose continuation lines
# look like 227/229 replies: they are text inside the greeting and must not be rewritten.
BANNER = ("tcpfault multi-line greeting\r\n"
          "227 Entering Passive Mode (10,1,2,3,4,5) - not a reply, part of the greeting\r\n"
          " 229 Entering Extended Passive Mode (|||4321|) - neither\r\n"
          "230-still the greeting\r\n"
          "  the last line follows")


@pytest.mark.timeout(60)
def test_multiline_replies_pass_unchanged(tcpfault, tmp_path):
    srv = PyFtpd(tmp_path, banner=BANNER)
    try:
        sha = make_file(srv.root / "down.bin", SIZE, seed=13)
        direct = ftplib.FTP()
        direct.connect("127.0.0.1", srv.port, timeout=10)
        want = direct.getwelcome()
        direct.close()
        assert want.count("\n") >= 4, f"pyftpdlib did not send a multi-line greeting: {want!r}"

        p = tcpfault.from_config(ftp_proxy_yaml(f"127.0.0.1:{srv.port}"))
        port = p.addr("ftp")[1]
        ftp = ftplib.FTP()
        ftp.connect("127.0.0.1", port, timeout=10)
        try:
            assert ftp.getwelcome() == want, "the multi-line greeting changed through the proxy"
            ftp.login()
            feat = ftp.sendcmd("FEAT")  # a multi-line 211 reply
            assert feat.startswith("211-") and feat.splitlines()[-1].startswith("211 "), feat
            # After the multi-line replies, PASV and EPSV still get rewritten and work.
            for cmd_pasv in (True, False):
                if not cmd_pasv:
                    ftp.af = 0  # ftplib: EPSV is used for af != AF_INET
                out = tmp_path / f"down-{cmd_pasv}.bin"
                with open(out, "wb") as f:
                    ftp.retrbinary("RETR down.bin", f.write)
                assert sha256_file(out) == sha
            ftp.quit()
        finally:
            ftp.close()
        assert len(logs(p, "ftp: passive data via proxy", 2)) == 2
        # lftp reads FEAT (multi-line) and the greeting before transferring, and uses the
        # address of the 227 reply: with a wrong rewrite it would connect to 10.1.2.3.
        out = tmp_path / "lftp.bin"
        r = run(lftp_script(port, f"get down.bin -o {out}",
                            settings="set ftp:prefer-epsv no"), 30)
        assert r.rc == 0, f"lftp failed: {r}"
        assert sha256_file(out) == sha
    finally:
        srv.stop()
