"""Helpers for the recipe and FTP pass-through tests (test_recipes_*.py, test_ftp_passthrough.py):
real servers (pyftpdlib, vsftpd, aiosmtpd) run as child processes, real clients (curl, lftp,
swaks) run under `timeout`, and the recipes in examples/recipes/ are started with their
${LISTEN}/${UPSTREAM}-style placeholders filled in from the environment.

This file is also a small program, run by the server helpers as a child process:
    python3 recipe_helpers.py pyftpd ROOT RATE [BANNER_FILE]  # prints "PORT n", serves FTP
    python3 recipe_helpers.py smtpd MAILDIR                   # prints "PORT n", stores mails
    python3 recipe_helpers.py reaper CMD...                   # CMD under a subreaper
so the servers never share the test's GIL and are killed with all their descendants.

Debian packages: python3-pyftpdlib vsftpd curl lftp swaks python3-aiosmtpd (+ python3-pytest,
python3-pytest-timeout).
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional, Sequence

HERE = Path(__file__).resolve().parent
SOURCE_DIR = Path(os.environ.get("TCPFAULT_SOURCE_DIR") or HERE.parents[1])
RECIPES = SOURCE_DIR / "examples" / "recipes"
PYTHON = "/usr/bin/python3"  # Debian's python: has pyftpdlib and aiosmtpd

KiB = 1 << 10
MiB = 1 << 20


# --------------------------------------------------------------------------------------------
# availability


def missing_tools(*tools: str) -> list[str]:
    return [t for t in tools if shutil.which(t) is None and not Path(t).is_file()]


def have_module(name: str) -> bool:
    r = subprocess.run([PYTHON, "-c", f"import {name}"], capture_output=True)
    return r.returncode == 0


# --------------------------------------------------------------------------------------------
# recipes


def recipe_path(name: str) -> Path:
    return RECIPES / name


def start_recipe(tcpfault, monkeypatch, name: str, env: dict[str, str], listening: int = 1,
                 log_level: str = "info"):
    """Copies examples/recipes/NAME into the test's directory and runs tcpfault on the copy
    with the environment variables in `env` set (the recipes keep their addresses and
    tunables as ${VAR:-default}), JSON logs and no admin API. Waits for `listening` lines."""
    text = recipe_path(name).read_text()
    for k, v in env.items():
        assert "${" + k in text, f"{name} has no ${{{k}...}} placeholder"
        monkeypatch.setenv(k, str(v))
    p = tcpfault.from_config(text, listening=listening,
                             extra=("--admin", "off", "--log-format", "json",
                                    "--log-level", log_level))
    # The environment is read once, at start-up (and at reload, which the tests do not use).
    for k in env:
        monkeypatch.delenv(k, raising=False)
    return p


def logs(p, msg: str, count: int, timeout: float = 5.0, **fields) -> list[dict]:
    """Waits (stderr is read by a thread) until `count` log records with this msg/fields
    exist, then returns all of them (there may be more)."""
    p.wait_for_log(msg, timeout=timeout, count=count, **fields)
    return p.find_logs(msg, **fields)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------
# files


def make_file(path: Path, size: int, seed: int) -> str:
    """Writes `size` reproducible random bytes; returns their sha256 hex."""
    data = random.Random(seed).randbytes(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def wait_stable_size(path: Path, timeout: float, quiet: float = 0.3) -> int:
    """The size of a file another process writes, once it stopped changing for `quiet` s."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while True:
        size = path.stat().st_size if path.exists() else -1
        now = time.monotonic()
        if size != last:
            last, since = size, now
        elif now - since >= quiet:
            return size
        if now >= deadline:
            raise AssertionError(f"{path} still growing after {timeout}s (size {size})")
        time.sleep(0.02)


# --------------------------------------------------------------------------------------------
# running clients


class Result:
    def __init__(self, args, rc: int, out: str, err: str, secs: float):
        self.args, self.rc, self.out, self.err, self.secs = args, rc, out, err, secs

    @property
    def text(self) -> str:
        return self.out + self.err

    def __repr__(self) -> str:
        return (f"<{' '.join(map(str, self.args))}: exit {self.rc} after {self.secs:.2f}s; "
                f"stdout={self.out[-1500:]!r} stderr={self.err[-1500:]!r}>")


def run(args: Sequence, timeout: float, input: Optional[bytes] = None,
        cwd: Optional[Path] = None) -> Result:
    """Runs an external client under `timeout` (exit 124 when it had to be killed)."""
    cmd = ["timeout", "-k", "2", str(timeout)] + [str(a) for a in args]
    t0 = time.monotonic()
    p = subprocess.run(cmd, input=input, capture_output=True, cwd=cwd, timeout=timeout + 10)
    return Result(args, p.returncode, p.stdout.decode("utf-8", "replace"),
                  p.stderr.decode("utf-8", "replace"), time.monotonic() - t0)


class Background:
    """An external client started now and collected later (runs under `timeout` as well)."""

    def __init__(self, args: Sequence, timeout: float):
        self.args = [str(a) for a in args]
        self.t0 = time.monotonic()
        self.timeout = timeout
        self.proc = subprocess.Popen(["timeout", "-k", "2", str(timeout)] + self.args,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)

    def result(self) -> Result:
        out, err = self.proc.communicate(timeout=self.timeout + 10)
        return Result(self.args, self.proc.returncode, out.decode("utf-8", "replace"),
                      err.decode("utf-8", "replace"), time.monotonic() - self.t0)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


CURL = ["curl", "-sS", "--connect-timeout", "5"]


def lftp_script(port: int, commands: str, user: str = "anonymous", password: str = "x@y",
                settings: str = "") -> list[str]:
    """An lftp command line that fails fast: one try, non-zero exit on the first error."""
    pre = ("set net:max-retries 1; set net:reconnect-interval-base 1; set net:timeout 10; "
           "set cmd:fail-exit yes; set xfer:clobber yes; " + settings)
    return ["lftp", "-c", f"{pre}; open -u {user},{password} -p {port} 127.0.0.1; {commands}"]


# --------------------------------------------------------------------------------------------
# child-process servers


def _child_pids(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # ppid
            out.append(int(d))
    return out


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a server and all its descendants, deepest first, so that every process is
    reaped by its own (still living) parent instead of becoming a zombie of PID 1."""

    def kill_below(pid: int) -> None:
        for c in _child_pids(pid):
            kill_below(c)
            try:
                os.kill(c, signal.SIGKILL)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + 0.5
            while os.path.exists(f"/proc/{c}") and time.monotonic() < deadline:
                time.sleep(0.005)  # until its parent reaped it

    if proc.poll() is None:
        kill_below(proc.pid)
        try:
            proc.kill()
        except ProcessLookupError:
            pass
    proc.wait(5)


class _Child:
    """A server in its own process group; prints "PORT n" on stdout once listening."""

    def __init__(self, args: list[str], log: Path, timeout: float = 10.0):
        self.log_path = log
        self._log = open(log, "ab")
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=self._log, start_new_session=True)
        line = self._readline(timeout)
        if not line.startswith("PORT "):
            self.stop()
            raise AssertionError(f"{args[:3]} did not start: {line!r}; log:\n{self.log()}")
        self.port = int(line.split()[1])

    def _readline(self, timeout: float) -> str:
        box: list[bytes] = []
        t = threading.Thread(target=lambda: box.append(self.proc.stdout.readline()), daemon=True)
        t.start()
        t.join(timeout)
        return box[0].decode().strip() if box else ""

    def log(self, tail: Optional[int] = 4000) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return text[-tail:] if tail else text

    def stop(self) -> None:
        kill_tree(self.proc)
        self._log.close()


class PyFtpd(_Child):
    """pyftpdlib serving ROOT to anonymous (and user/pass) with full write permission."""

    def __init__(self, tmp: Path, banner: Optional[str] = None, rate: int = 0):
        """rate > 0: downloads are sent at `rate` bytes/s, in small pieces with short pauses
        (a slow server whose data connection is never idle for long)."""
        self.root = tmp / "pyftpd-root"
        self.root.mkdir(exist_ok=True)
        args = [PYTHON, str(Path(__file__).resolve()), "pyftpd", str(self.root), str(rate)]
        if banner is not None:
            bf = tmp / "pyftpd-banner.txt"
            bf.write_text(banner)
            args.append(str(bf))
        super().__init__(args, tmp / "pyftpd.log")


class Vsftpd:
    """vsftpd standalone on a free port: anonymous login, downloads from its root, uploads
    into /upload. Runs as root (chroot), with the sandboxes a container lacks switched off."""

    def __init__(self, tmp: Path, extra: str = ""):
        if os.geteuid() != 0:
            import pytest
            pytest.skip("vsftpd runs as root here (chroot to its anonymous root)")
        self.base = tmp / "vsftpd"
        self.root = self.base / "root"
        self.upload = self.root / "upload"
        empty = self.base / "empty"
        for d in (self.base, self.root, self.upload, empty):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base, 0o755)
        os.chmod(self.root, 0o755)  # vsftpd refuses an anonymous root the ftp user can write
        os.chmod(empty, 0o755)
        shutil.chown(self.upload, "ftp", "ftp")
        os.chmod(self.upload, 0o755)
        self.log_path = self.base / "vsftpd.log"
        self.port = free_port()
        conf = self.base / "vsftpd.conf"
        conf.write_text("\n".join([
            "listen=YES", "listen_ipv6=NO", "listen_address=127.0.0.1",
            f"listen_port={self.port}", "background=NO",
            "anonymous_enable=YES", "local_enable=NO", "no_anon_password=YES",
            "write_enable=YES", "anon_upload_enable=YES", "anon_other_write_enable=YES",
            "anon_mkdir_write_enable=NO", "anon_umask=022", f"anon_root={self.root}",
            "seccomp_sandbox=NO", "isolate=NO", "isolate_network=NO",
            f"secure_chroot_dir={empty}", "connect_from_port_20=NO",
            "pasv_enable=YES", "port_enable=YES",
            "xferlog_enable=YES", "log_ftp_protocol=YES", f"vsftpd_log_file={self.log_path}",
            "dual_log_enable=NO", "syslog_enable=NO",
            "data_connection_timeout=20", "idle_session_timeout=60",
            "ftpd_banner=vsftpd test server",
            *([extra] if extra else []), ""]))
        self._err = open(self.base / "stderr.log", "ab")
        # Under a subreaper: vsftpd's session processes outlive their parents at the end of
        # a session and would otherwise become zombies of PID 1.
        self.proc = subprocess.Popen([PYTHON, str(Path(__file__).resolve()), "reaper",
                                      "vsftpd", str(conf)], stdin=subprocess.DEVNULL,
                                     stdout=self._err, stderr=self._err,
                                     start_new_session=True)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                    if s.recv(100).startswith(b"220"):
                        break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"vsftpd did not start: {self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        out = []
        for p in (self.base / "stderr.log", self.log_path):
            try:
                out.append(p.read_text(errors="replace")[-3000:])
            except OSError:
                pass
        return "\n".join(out)

    def stop(self) -> None:
        kill_tree(self.proc)  # the listener and its session processes
        self._err.close()


class Smtpd(_Child):
    """aiosmtpd on a free port; every accepted mail becomes MAILDIR/NNN.eml (its content as
    received, after dot-unstuffing) and NNN.env ("from\\nrcpt..."). A mail is stored only once
    the final "." was accepted."""

    def __init__(self, tmp: Path):
        self.maildir = tmp / "maildir"
        self.maildir.mkdir(exist_ok=True)
        super().__init__([PYTHON, str(Path(__file__).resolve()), "smtpd", str(self.maildir)],
                         tmp / "smtpd.log")

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def mails(self) -> list[bytes]:
        return [p.read_bytes() for p in sorted(self.maildir.glob("*.eml"))]

    def envelopes(self) -> list[str]:
        return [p.read_text() for p in sorted(self.maildir.glob("*.env"))]


_ALNUM = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_TO_ALNUM = bytes(_ALNUM[i % len(_ALNUM)] for i in range(256))


def mail_message(body_size: int, seed: int, subject: str = "tcpfault test") -> bytes:
    """A complete RFC 5322 message with CRLF line endings and a body of at least body_size
    bytes: random letters and digits in lines of 76 (none starts with '.')."""
    head = ("From: sender@example.com\r\nTo: rcpt@example.com\r\n"
            f"Subject: {subject}\r\nMessage-ID: <{seed}@tcpfault.test>\r\n\r\n").encode()
    n = -(-body_size // 78)
    raw = random.Random(seed).randbytes(76 * n).translate(_TO_ALNUM)
    body = b"".join(raw[i * 76:(i + 1) * 76] + b"\r\n" for i in range(n))
    return head + body


def normalize_mail(raw: bytes) -> bytes:
    """Line endings to CRLF and no trailing blank lines (what clients and servers may change)."""
    return raw.replace(b"\r\n", b"\n").rstrip(b"\n").replace(b"\n", b"\r\n")


# --------------------------------------------------------------------------------------------
# the child-process servers


def _serve_pyftpd(root: str, rate: int, banner_file: Optional[str]) -> None:
    import logging

    from pyftpdlib.authorizers import DummyAuthorizer
    from pyftpdlib.handlers import DTPHandler, FTPHandler
    from pyftpdlib.servers import FTPServer

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    auth = DummyAuthorizer()
    auth.add_anonymous(root, perm="elradfmwMT")
    auth.add_user("user", "pass", root, perm="elradfmwMT")

    class Handler(FTPHandler):
        pass

    Handler.authorizer = auth
    if rate > 0:
        Handler.dtp_handler = _paced_dtp_handler(DTPHandler, rate)
        Handler.use_sendfile = False  # sendfile() would bypass the pacing
    if banner_file:
        Handler.banner = Path(banner_file).read_text()
    server = FTPServer(("127.0.0.1", 0), Handler)
    server.max_cons = 256
    print(f"PORT {server.socket.getsockname()[1]}", flush=True)
    server.serve_forever()


def _paced_dtp_handler(base, rate: int):
    """A DTP handler that sends at `rate` bytes/s in pieces of at most 16 KiB with short
    pauses (pyftpdlib's ThrottledDTPHandler bursts a second's worth, then sleeps up to 2 s;
    vsftpd's anon_max_rate is off by a factor of 2-4 on short transfers)."""

    class Paced(base):
        def __init__(self, sock, cmd_channel):
            super().__init__(sock, cmd_channel)
            self._t0 = None
            self._count = 0
            self._timer = None

        def send(self, data):
            n = super().send(data[:16 * 1024])
            now = time.monotonic()
            if self._t0 is None:
                self._t0 = now
            self._count += n
            ahead = self._count / rate - (now - self._t0)
            if ahead > 0.002:
                self.del_channel()
                self._timer = self.ioloop.call_later(ahead, self._wake,
                                                     _errback=self.handle_error)
            return n

        def _wake(self):
            self._timer = None
            self.add_channel(events=self.ioloop.WRITE)

        def close(self):
            if self._timer is not None and not self._timer.cancelled:
                self._timer.cancel()
            super().close()

    return Paced


def _serve_smtpd(maildir: str) -> None:
    import asyncio
    import logging

    from aiosmtpd.smtp import SMTP

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    counter = [0]

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            counter[0] += 1
            base = Path(maildir) / f"{counter[0]:03d}"
            tmp = base.with_suffix(".tmp")
            tmp.write_bytes(envelope.original_content)
            base.with_suffix(".env").write_text(
                "\n".join([envelope.mail_from] + list(envelope.rcpt_tos)) + "\n")
            os.replace(tmp, base.with_suffix(".eml"))
            return "250 2.0.0 Ok: queued"

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    handler = Handler()
    srv = loop.run_until_complete(loop.create_server(
        lambda: SMTP(handler, hostname="mail.tcpfault.test", data_size_limit=64 * MiB,
                     loop=loop),
        "127.0.0.1", 0))
    print(f"PORT {srv.sockets[0].getsockname()[1]}", flush=True)
    loop.run_forever()


def _reaper(argv: list[str]) -> None:
    """Runs argv as a child and reaps every orphan below it until none is left
    (PR_SET_CHILD_SUBREAPER); exits with the child's status."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    pid = os.fork()
    if pid == 0:
        os.execvp(argv[0], argv)
    signal.signal(signal.SIGTERM, lambda *_: os.kill(pid, signal.SIGTERM))
    status = 0
    while True:
        try:
            p, st = os.wait()
        except ChildProcessError:
            break
        if p == pid:
            status = os.waitstatus_to_exitcode(st)
    sys.exit(status if status >= 0 else 128 - status)


if __name__ == "__main__":
    if sys.argv[1] == "reaper":
        _reaper(sys.argv[2:])
    elif sys.argv[1] == "pyftpd":
        _serve_pyftpd(sys.argv[2], int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else None)
    elif sys.argv[1] == "smtpd":
        _serve_smtpd(sys.argv[2])
    else:
        sys.exit(f"unknown server {sys.argv[1]!r}")
