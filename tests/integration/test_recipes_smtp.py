"""The SMTP recipes of examples/recipes/ with a real server (aiosmtpd, storing each accepted mail
in a directory) and real clients (swaks, curl smtp://, Python's smtplib): each test copies a
recipe, fills in its ${...} addresses and tunables, runs the clients through it and checks what
they report and what the server stored. Plus SMTP through tcpfault with no rules at all.
"""

from __future__ import annotations

import errno
import re
import signal
import smtplib
import socket
import statistics
import threading
import time
from pathlib import Path

import pytest

from recipe_helpers import (CURL, RECIPES, KiB, MiB, Smtpd, have_module, logs, mail_message,
                            missing_tools, normalize_mail, run, start_recipe)

pytestmark = pytest.mark.skipif(
    bool(missing_tools("curl", "swaks")) or not have_module("aiosmtpd"),
    reason="needs curl, swaks and python3-aiosmtpd (apt-get install curl swaks python3-aiosmtpd)")

FROM, TO = "sender@example.com", "rcpt@example.com"
RESET_REPLY = "Connection reset by peer"
SWAKS_CLOSED = "*** Remote host closed connection unexpectedly."


@pytest.fixture
def smtpd(tmp_path):
    s = Smtpd(tmp_path)
    yield s
    s.stop()


def swaks(port: int, msg_file, timeout: float = 30):
    return run(["swaks", "-n", "--timeout", "10", "--server", f"127.0.0.1:{port}",
                "--from", FROM, "--to", TO, "--data", f"@{msg_file}"], timeout)


def curl_smtp(port: int, msg_file, timeout: float = 30):
    return run(CURL + ["-m", "20", "--mail-from", FROM, "--mail-rcpt", TO, "-T", msg_file,
                       f"smtp://127.0.0.1:{port}"], timeout)


def smtplib_send(port: int, msg: bytes) -> None:
    s = smtplib.SMTP("127.0.0.1", port, timeout=10)
    try:
        s.sendmail(FROM, [TO], msg)
        s.quit()
    finally:
        s.close()


def reset_underneath(e: BaseException) -> bool:
    """smtplib wraps socket errors in SMTPServerDisconnected: either with the OSError's text
    ("Connection unexpectedly closed: [Errno 104] ...") or as the exception's context."""
    seen = 0
    while e is not None and seen < 5:
        if isinstance(e, ConnectionResetError) or "[Errno 104] Connection reset by peer" in str(e):
            return True
        e = e.__cause__ or e.__context__
        seen += 1
    return False


def message_file(tmp_path, size: int, seed: int):
    data = mail_message(size, seed)
    path = tmp_path / f"msg-{seed}.eml"
    path.write_bytes(data)
    return path, data


def assert_no_mail(smtpd: Smtpd, why: str) -> None:
    time.sleep(0.2)  # the server handled the reset before the client reported it; margin only
    mails = smtpd.mails()
    assert not mails, f"{why}, yet the server stored {len(mails)} mail(s)"


def greeting_of(smtpd: Smtpd) -> bytes:
    with socket.create_connection(("127.0.0.1", smtpd.port), timeout=5) as s:
        f = s.makefile("rb")
        line = f.readline()
        s.sendall(b"QUIT\r\n")
        return line


# --------------------------------------------------------------------------------------------
# every recipe


@pytest.mark.timeout(30)
@pytest.mark.parametrize("recipe", sorted(p.name for p in RECIPES.glob("*.yaml")))
def test_recipe_is_valid_and_tested(recipe):
    """Each recipe passes `tcpfault --check` as shipped (its ${VAR:-default}s expanded), has
    the header sections users rely on, and is run by a test in one of the recipe modules."""
    from helpers import BIN
    r = run([BIN, "--check", "-c", RECIPES / recipe], 20)
    assert r.rc == 0, f"tcpfault --check rejects {recipe}: {r}"
    text = (RECIPES / recipe).read_text()
    for section in ("# Symptom", "#   Windows:", "#   Linux:", "# Run", "# Adapt"):
        assert section in text, f"{recipe}: no {section!r} in its header comment"
    here = Path(__file__).resolve().parent
    tests = "".join(p.read_text() for p in sorted(here.glob("test_recipes_*.py")))
    assert f'"{recipe}"' in tests, f"no test runs {recipe}"


# --------------------------------------------------------------------------------------------
# no rules


@pytest.mark.timeout(60)
def test_smtp_passthrough_delivers_mail(tcpfault, smtpd, tmp_path):
    p = tcpfault.from_config(
        'admin: {listen: "off"}\nlog: {format: json, level: info}\nproxies:\n'
        f'  - {{name: smtp, listen: "127.0.0.1:0", upstream: "{smtpd.addr}", rules: []}}\n')
    port = p.addr("smtp")[1]
    path, data = message_file(tmp_path, 256 * KiB, seed=1)
    r = swaks(port, path)
    assert r.rc == 0, f"swaks: {r}"
    r = curl_smtp(port, path)
    assert r.rc == 0, f"curl: {r}"
    smtplib_send(port, data)
    mails = smtpd.mails()
    assert len(mails) == 3, f"expected 3 mails stored, got {len(mails)}"
    for m in mails:
        assert normalize_mail(m) == normalize_mail(data), "stored mail differs from the sent one"
    for env in smtpd.envelopes():
        assert env.split() == [FROM, TO], env


# --------------------------------------------------------------------------------------------
# smtp-reset-after-greeting.yaml


@pytest.mark.timeout(60)
def test_smtp_reset_after_greeting(tcpfault, monkeypatch, smtpd, tmp_path):
    """The 220 greeting arrives; the client's EHLO goes to the server but its reply is held
    for RESET_DELAY (100 ms), then the RST: every client is waiting for the EHLO reply when
    it comes (swaks 6, curl 56, smtplib's ehlo() with the reset underneath). Nothing is
    stored. (With RESET_DELAY=0 the RST lands ~1 ms after the accept and races the client:
    curl then reports 7, 55 or 56, swaks 2 or 6, depending on which call sees it.)"""
    greeting = greeting_of(smtpd)
    p = start_recipe(tcpfault, monkeypatch, "smtp-reset-after-greeting.yaml",
                     {"LISTEN": "127.0.0.1:0", "UPSTREAM": smtpd.addr})
    port = p.addr("smtp")[1]
    path, data = message_file(tmp_path, 1 * KiB, seed=2)

    r = swaks(port, path)
    assert r.rc == 6 and SWAKS_CLOSED in r.err, f"swaks: {r}"
    assert "<-  " + greeting.decode().strip() in r.out, f"swaks did not get the greeting: {r}"

    r = curl_smtp(port, path)
    assert r.rc == 56 and f"curl: (56) Recv failure: {RESET_REPLY}" in r.err, f"curl: {r}"

    s = smtplib.SMTP(timeout=10)
    try:
        code, msg = s.connect("127.0.0.1", port)
        assert code == 220, (code, msg)  # the greeting is delivered before the RST
        with pytest.raises(smtplib.SMTPServerDisconnected) as ei:
            s.ehlo()
        assert reset_underneath(ei.value), f"not a reset: {ei.value!r}"
    finally:
        s.close()

    assert_no_mail(smtpd, "every session was reset after the greeting")
    faults = logs(p, "fault injected", 3, rule="reset-after-greeting")
    assert len(faults) == 3, faults
    for f in faults:
        assert f["bytes_down"] == len(greeting), (
            f"only the {len(greeting)}-byte greeting should reach the client: {f}")
        assert f["bytes_up"] > 0 and f["bytes_up"] < 100, f"the client's EHLO only: {f}"


# --------------------------------------------------------------------------------------------
# smtp-reset-mid-data.yaml


@pytest.mark.timeout(60)
def test_smtp_reset_mid_data(tcpfault, monkeypatch, smtpd, tmp_path):
    """A 256 KiB message is reset (both sides) 4 KiB after DATA: every client reports the
    failure, the server saw the connection die during DATA and stored nothing. smtplib sends
    "data" in lower case: the recipe's regex matches it too."""
    p = start_recipe(tcpfault, monkeypatch, "smtp-reset-mid-data.yaml",
                     {"LISTEN": "127.0.0.1:0", "UPSTREAM": smtpd.addr})
    port = p.addr("smtp")[1]
    path, data = message_file(tmp_path, 256 * KiB, seed=3)

    r = swaks(port, path)
    assert r.rc == 6 and SWAKS_CLOSED in r.err, f"swaks: {r}"
    assert "<-  354 " in r.out, f"the reset should come after DATA was accepted: {r}"

    r = curl_smtp(port, path)
    # 55 when the RST hits a write, 56 when the whole message fitted in the socket buffers.
    assert r.rc in (55, 56), f"curl: {r}"
    assert re.search(rf"curl: \(5[56]\) (Send|Recv) failure: {RESET_REPLY}", r.err), r

    with pytest.raises(smtplib.SMTPServerDisconnected) as ei:
        smtplib_send(port, data)
    assert reset_underneath(ei.value), f"not a reset: {ei.value!r}"

    assert_no_mail(smtpd, "every message was reset mid-DATA")
    assert smtpd.log(tail=None).count("Connection lost during DATA") == 3, smtpd.log()
    assert len(logs(p, "fault injected", 3, rule="reset-mid-data")) == 3


# --------------------------------------------------------------------------------------------
# connection-abort-10053.yaml


@pytest.mark.timeout(60)
def test_connection_abort_10053_clients(tcpfault, monkeypatch, smtpd, tmp_path):
    """A 4 MiB message: after DATA + 64 KiB the client's side is closed (FIN) and what it
    keeps sending is answered with a RST. curl: 55 "Broken pipe" (EPIPE: the RST on a
    connection that already got a FIN) or "Connection reset by peer"; swaks: exit 6; smtplib:
    SMTPServerDisconnected. The server saw a premature end (FIN) and stored nothing."""
    p = start_recipe(tcpfault, monkeypatch, "connection-abort-10053.yaml",
                     {"LISTEN": "127.0.0.1:0", "UPSTREAM": smtpd.addr})
    port = p.addr("smtp")[1]
    path, data = message_file(tmp_path, 4 * MiB, seed=4)

    r = curl_smtp(port, path)
    assert r.rc == 55 and re.search(
        rf"curl: \(55\) Send failure: (Broken pipe|{RESET_REPLY})", r.err), f"curl: {r}"

    r = swaks(port, path)
    # Or swaks is killed by SIGPIPE while writing (the same event): a shell shows 141
    # (128 + 13); `timeout` re-raises the signal, so Python sees -13.
    assert r.rc in (6, 141, -signal.SIGPIPE), f"swaks: {r}"
    if r.rc == 6:
        assert SWAKS_CLOSED in r.err, r

    with pytest.raises(smtplib.SMTPServerDisconnected):
        smtplib_send(port, data)

    assert_no_mail(smtpd, "every message was cut off")
    faults = logs(p, "fault injected", 3, rule="abort-while-sending")
    assert len(faults) == 3 and all(f["fault"] == "close" for f in faults), faults


def _read_reply(f) -> bytes:
    """One SMTP reply (all its lines)."""
    out = b""
    while True:
        line = f.readline()
        assert line, f"EOF while reading a reply (got {out!r})"
        out += line
        if line[3:4] == b" ":
            return out


@pytest.mark.timeout(60)
def test_connection_abort_10053_socket_sequence(tcpfault, monkeypatch, smtpd):
    """The sequence behind Winsock 10053, seen from a plain socket: the client sends exactly
    CLOSE_AFTER bytes of the message, reads EOF (the FIN), then its writes fail with EPIPE
    (or ECONNRESET) once the proxy answered them with a RST."""
    p = start_recipe(tcpfault, monkeypatch, "connection-abort-10053.yaml",
                     {"LISTEN": "127.0.0.1:0", "UPSTREAM": smtpd.addr, "CLOSE_AFTER": "16KiB"})
    port = p.addr("smtp")[1]
    c = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        f = c.makefile("rb")
        assert _read_reply(f).startswith(b"220")
        for cmd, code in ((b"EHLO client.test", b"250"), (f"MAIL FROM:<{FROM}>".encode(), b"250"),
                          (f"RCPT TO:<{TO}>".encode(), b"250"), (b"DATA", b"354")):
            c.sendall(cmd + b"\r\n")
            reply = _read_reply(f)
            assert reply.startswith(code), (cmd, reply)
        body = (b"x" * 78 + b"\r\n") * (16 * KiB // 80) + b"y" * (16 * KiB % 80)
        assert len(body) == 16 * KiB
        c.sendall(body)  # exactly CLOSE_AFTER: the close fires now
        c.settimeout(5)
        assert c.recv(4096) == b"", "expected EOF (the FIN) after CLOSE_AFTER bytes"
        err = None
        for _ in range(200):
            try:
                c.send(b"z" * 1024)
            except OSError as e:
                err = e
                break
            time.sleep(0.01)  # give the RST time to come back
        assert err is not None, "writes after the FIN never failed (no RST came back)"
        assert err.errno in (errno.EPIPE, errno.ECONNRESET), f"unexpected error {err!r}"
    finally:
        c.close()
    assert_no_mail(smtpd, "the message was cut off")


# --------------------------------------------------------------------------------------------
# too-many-users-421.yaml (SMTP proxy)


@pytest.mark.timeout(60)
def test_too_many_users_421_smtp(tcpfault, monkeypatch, smtpd, tmp_path):
    """MAX_SMTP_CONNECTIONS=2: with two sessions open, the third client gets "421 4.7.0 Too
    many connections": swaks exits 21, curl 8, smtplib raises SMTPConnectError(421). When a
    session ends, mail goes through again."""
    p = start_recipe(tcpfault, monkeypatch, "too-many-users-421.yaml",
                     {"FTP_LISTEN": "127.0.0.1:0", "FTP_UPSTREAM": "127.0.0.1:9",
                      "SMTP_LISTEN": "127.0.0.1:0", "SMTP_UPSTREAM": smtpd.addr,
                      "MAX_SMTP_CONNECTIONS": "2"}, listening=2)
    port = p.addr("smtp")[1]
    path, data = message_file(tmp_path, 1 * KiB, seed=5)
    held = []
    try:
        for _ in range(2):
            s = smtplib.SMTP("127.0.0.1", port, timeout=10)
            assert s.ehlo()[0] == 250
            held.append(s)

        r = swaks(port, path)
        assert r.rc == 21 and "<** 421 4.7.0 Too many connections" in r.out, f"swaks: {r}"
        r = curl_smtp(port, path)
        assert r.rc == 8 and "curl: (8) Got unexpected smtp-server response: 421" in r.err, r
        with pytest.raises(smtplib.SMTPConnectError) as ei:
            smtplib.SMTP("127.0.0.1", port, timeout=10)
        assert ei.value.smtp_code == 421, ei.value
        assert ei.value.smtp_error.startswith(b"4.7.0 Too many connections"), ei.value
        assert smtpd.mails() == []
        assert len(logs(p, "fault injected", 3, rule="max-connections")) == 3

        held.pop().quit()
        deadline = time.monotonic() + 3
        while True:
            r = swaks(port, path)
            if r.rc == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.05)  # the proxy learns of the QUIT's close asynchronously
        assert r.rc == 0, f"a slot should be free after one session quit: {r}"
        assert [normalize_mail(m) for m in smtpd.mails()] == [normalize_mail(data)]
    finally:
        for s in held:
            s.close()


# --------------------------------------------------------------------------------------------
# firewall-idle-timeout.yaml (SMTP proxy)


@pytest.mark.timeout(60)
def test_firewall_idle_timeout_smtp(tcpfault, monkeypatch, smtpd, tmp_path):
    """IDLE_TIMEOUT=1s: a session quiet for 1.3 s fails on its next command with a reset; a
    session that sends NOOP every 0.4 s stays alive and delivers."""
    p = start_recipe(tcpfault, monkeypatch, "firewall-idle-timeout.yaml",
                     {"FTP_LISTEN": "127.0.0.1:0", "FTP_UPSTREAM": "127.0.0.1:9",
                      "SMTP_LISTEN": "127.0.0.1:0", "SMTP_UPSTREAM": smtpd.addr,
                      "IDLE_TIMEOUT": "1s"}, listening=2)
    port = p.addr("smtp")[1]
    data = mail_message(2 * KiB, seed=6)

    quiet = smtplib.SMTP("127.0.0.1", port, timeout=10)
    busy = smtplib.SMTP("127.0.0.1", port, timeout=10)
    try:
        assert quiet.ehlo()[0] == 250 and busy.ehlo()[0] == 250
        t_end = time.monotonic() + 1.3
        while time.monotonic() < t_end:
            time.sleep(0.4)  # the client's own keep-alive cadence
            assert busy.noop()[0] == 250
        with pytest.raises(smtplib.SMTPServerDisconnected) as ei:
            quiet.noop()
        assert reset_underneath(ei.value), f"not a reset: {ei.value!r}"
        busy.sendmail(FROM, [TO], data)
        busy.quit()
    finally:
        quiet.close()
        busy.close()
    assert [normalize_mail(m) for m in smtpd.mails()] == [normalize_mail(data)]
    # The quiet session timed out; the busy one never did (it is closed now).
    assert len(logs(p, "idle timeout", 1, proxy="smtp")) == 1


# --------------------------------------------------------------------------------------------
# tcp-message-boundaries.yaml


def start_boundaries(tcpfault, monkeypatch, upstream: str):
    p = start_recipe(tcpfault, monkeypatch, "tcp-message-boundaries.yaml",
                     {"CHOPPED_LISTEN": "127.0.0.1:0", "BUNCHED_LISTEN": "127.0.0.1:0",
                      "UPSTREAM": upstream}, listening=2)
    return p.addr("chopped")[1], p.addr("bunched")[1], p


@pytest.mark.timeout(90)
def test_tcp_message_boundaries_clients_cope(tcpfault, monkeypatch, smtpd, tmp_path):
    """swaks, curl and smtplib read replies by lines, not by recv(): through both the chopped
    and the bunched proxy every mail arrives intact."""
    chopped, bunched, p = start_boundaries(tcpfault, monkeypatch, smtpd.addr)
    path, data = message_file(tmp_path, 2 * KiB, seed=7)
    for port in (chopped, bunched):
        r = swaks(port, path)
        assert r.rc == 0, f"swaks via port {port}: {r}"
        r = curl_smtp(port, path)
        assert r.rc == 0, f"curl via port {port}: {r}"
        smtplib_send(port, data)
    mails = smtpd.mails()
    assert len(mails) == 6
    assert all(normalize_mail(m) == normalize_mail(data) for m in mails)
    assert len(logs(p, "fault injected", 3, rule="small-pieces")) == 3
    assert len(logs(p, "fault injected", 3, rule="merge-replies")) == 3


@pytest.mark.timeout(60)
def test_tcp_message_boundaries_chopped_pieces(tcpfault, monkeypatch, smtpd):
    """Through "chopped", a multi-line EHLO reply arrives in pieces of at most 16 bytes."""
    chopped, _, _ = start_boundaries(tcpfault, monkeypatch, smtpd.addr)
    with socket.create_connection(("127.0.0.1", smtpd.port), timeout=5) as d:
        fd = d.makefile("rb")
        _read_reply(fd)
        d.sendall(b"EHLO client.test\r\n")
        want = _read_reply(fd)
    c = socket.create_connection(("127.0.0.1", chopped), timeout=5)
    try:
        fc = c.makefile("rb")
        _read_reply(fc)
        c.sendall(b"EHLO client.test\r\n")
        pieces, buf = [], b""
        while not buf.endswith(want[-20:]):
            b = c.recv(4096)
            assert b, f"EOF after {buf!r}"
            pieces.append(len(b))
            buf += b
    finally:
        c.close()
    assert buf == want, "the reply changed"
    # Pieces leave 1 ms apart; a reader that is descheduled for a while may get two or three
    # in one recv(), so the check is on the typical read, not the largest one.
    assert statistics.median(pieces) <= 16 and len(pieces) >= len(want) // 32, (
        f"a {len(want)}-byte reply should arrive in pieces of 1-16 bytes, got recv sizes "
        f"{pieces}")


@pytest.mark.timeout(60)
def test_tcp_message_boundaries_bunched_coalesces(tcpfault, monkeypatch):
    """Through "bunched", the 21 lines of an EHLO reply that the server wrote separately
    (10 ms apart, TCP_NODELAY) arrive in order but in fewer recv()s than lines: those
    written during the 200 ms stall arrive in one read."""
    lines = [b"250-line %02d\r\n" % i for i in range(20)] + [b"250 end\r\n"]
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    done = threading.Event()

    def serve():
        try:
            conn, _ = srv.accept()
        except OSError:
            return
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.settimeout(10)
            got = b""
            while not got.endswith(b"\r\n"):
                b = conn.recv(100)
                if not b:
                    return
                got += b
            for line in lines:
                conn.sendall(line)
                time.sleep(0.01)  # separate writes, separate segments
            done.wait(10)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        _, bunched, _ = start_boundaries(tcpfault, monkeypatch,
                                         f"127.0.0.1:{srv.getsockname()[1]}")
        c = socket.create_connection(("127.0.0.1", bunched), timeout=5)
        try:
            c.sendall(b"EHLO client.test\r\n")
            recvs, buf = [], b""
            while not buf.endswith(lines[-1]):
                b = c.recv(4096)
                assert b, f"EOF after {buf!r}"
                recvs.append(b)
                buf += b
        finally:
            c.close()
    finally:
        done.set()
        srv.close()
        t.join(5)
    assert buf == b"".join(lines), "the lines changed or were reordered"
    per_read = [r.count(b"\n") for r in recvs]
    # ~19 lines are written during the stall; >= 5 leaves room for a slow machine.
    assert len(recvs) < len(lines) and per_read[0] >= 5, (
        f"expected writes to be merged into fewer reads; lines per recv(): {per_read}")
