"""`watch: true` / `--watch`: the config file is re-read when it changes, the ways it changes in
practice: a Kubernetes ConfigMap volume (the kubelet renames a new `..data` symlink over the old
one), an editor or tool replacing the file (`mv` over it), and a write in place. Each change
reloads exactly once; a broken file is reported, counted as
tcpfault_config_reloads_total{result="error"} and the running config kept, as with SIGHUP; a
connection open across the reloads stays byte-exact.

Each test ends by proving that no second reload is pending: it touches another file in the
watched directory and waits for the watcher's debug line "config file unchanged" (the
watcher's one debounce timer has then run after the last change and found nothing new), and
only then checks the counts exactly.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
from pathlib import Path

from admin_helpers import Admin, admin_port
from helpers import connect, recv_exact, run_tcpfault

def config(echo: str, rule: str, watch: bool | None = True, extra: str = "") -> str:
    """One proxy `main` (its listener never changes, so open connections stay on it) whose
    single rule's name tells which version of the file is running."""
    out = ["admin: {listen: 127.0.0.1:0}", "log: {format: json, level: debug}"]
    if watch is not None:
        out.append(f"watch: {'true' if watch else 'false'}")
    if extra:
        out.append(extra)
    workers = os.environ.get("TCPFAULT_TEST_WORKERS")
    if workers:
        out.append(f"workers: {workers}")
    out += ["proxies:", "  - name: main", "    listen: 127.0.0.1:0", f'    upstream: "{echo}"',
            "    rules:",
            f"      - {{name: {rule}, match: {{connections: {{nth: 999999}}}}, "
            f"fault: {{type: latency, delay: 1ms}}}}"]
    return "\n".join(out) + "\n"


def broken(echo: str) -> str:
    return config(echo, "never-applied").replace("    rules:\n", "    rules:\n      - {name: x\n")


class Kubelet:
    """A ConfigMap volume as the kubelet's AtomicWriter lays it out and updates it:
        DIR/..2026_12_07_10_00_00.000000001/{tcpfault.yaml,other}   (the data, read-only)
        DIR/..data -> ..2026_12_07_10_00_00.000000001
        DIR/tcpfault.yaml -> ..data/tcpfault.yaml             (one symlink per key)
    An update writes a new timestamped directory, points a new symlink ..data_tmp at it,
    renames ..data_tmp over ..data (the atomic step) and removes the old directory."""

    def __init__(self, root: Path, text: str):
        self.root = root
        self.n = 0
        root.mkdir()
        ts = self._write(text)
        os.symlink(ts, root / "..data")
        for key in ("tcpfault.yaml", "other"):
            os.symlink(f"..data/{key}", root / key)

    def _write(self, text: str) -> str:
        self.n += 1
        ts = f"..2026_12_07_10_00_{self.n:02d}.{self.n:09d}"
        d = self.root / ts
        d.mkdir()
        (d / "tcpfault.yaml").write_text(text)
        (d / "other").write_text(f"another key of the ConfigMap, version {self.n}\n")
        for f in d.iterdir():
            f.chmod(0o444)
        return ts

    @property
    def path(self) -> Path:
        return self.root / "tcpfault.yaml"

    def update(self, text: str) -> None:
        old = os.readlink(self.root / "..data")
        ts = self._write(text)
        tmp = self.root / "..data_tmp"
        os.symlink(ts, tmp)
        os.rename(tmp, self.root / "..data")
        shutil.rmtree(self.root / old)


class Echo:
    """A connection through the proxy to the echo server, checked chunk by chunk."""

    def __init__(self, addr):
        self.sock = connect(addr)
        self.sent = 0

    def round(self, n: int = 256 * 1024) -> None:
        data = os.urandom(n)
        self.sock.sendall(data)
        got = recv_exact(self.sock, n)
        assert got == data, f"echo differs after {self.sent} bytes"
        self.sent += n

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)
        self.sock.settimeout(5)
        assert self.sock.recv(1) == b"", "expected the echo server's FIN"
        self.sock.close()


def start(tcpfault, path: Path, extra: tuple = ()):
    p = tcpfault.spawn(["-c", str(path), *extra])
    p.wait_listening(1)
    admin = Admin(admin_port(p))
    p.wait_for_log("started")
    return p, admin


def rules(admin: Admin) -> list[str]:
    return [r["name"] for r in admin.ok_json("GET", "/api/proxies/main/rules")]


def wait_reloaded(p, admin: Admin, n: int, rule: str) -> None:
    """The n-th reload happened, exactly n so far, and it put `rule` in place."""
    p.wait_for_log("reloaded", count=n, timeout=10)
    assert len(p.find_logs("reloaded")) == n, p.stderr_text()
    assert rules(admin) == [rule]


def quiet(p, watched_dir: Path) -> None:
    """Waits until the watcher has looked at the file after a change to another file of its
    directory and found it unchanged: every change before is then dealt with."""
    mark = p.mark()
    (watched_dir / "sentinel").write_text(str(mark))
    p.wait_for_log("config file unchanged", since=mark, timeout=10)


def settle_and_count(p, admin: Admin, watched_dir: Path, ok: int, error: int = 0) -> None:
    """Nothing pending, and exactly `ok` reloads and `error` failed ones, logged and counted."""
    quiet(p, watched_dir)
    assert len(p.find_logs("reloaded")) == ok, p.stderr_text()
    assert len(p.find_logs("reload failed")) == error, p.stderr_text()
    m = admin.scrape()
    assert m.need("tcpfault_config_reloads_total", result="ok") == ok
    assert m.need("tcpfault_config_reloads_total", result="error") == error


# ---------------------------------------------------------------------------------------------


def test_kubelet_configmap_symlink_swap(tcpfault, servers, tmp_path):
    echo = servers.echo()
    cm = Kubelet(tmp_path / "tcpfault", config(echo.addr, "v1"))
    p, admin = start(tcpfault, cm.path)
    assert p.find_logs("watching the config file", file=str(cm.path))
    conn = Echo(p.addr())
    conn.round()

    for n in (1, 2, 3):  # each swap re-resolves ..data: the old directory is gone each time
        cm.update(config(echo.addr, f"v{n + 1}"))
        wait_reloaded(p, admin, n, f"v{n + 1}")
        conn.round()
    changed = p.find_logs("config file changed")
    assert len(changed) == 3 and changed[0]["file"] == str(cm.path)
    settle_and_count(p, admin, cm.root, ok=3)
    conn.round()
    conn.close()


def test_mv_over_the_file(tcpfault, servers, tmp_path):
    """What editors and config tools do: write a temporary file next to it, rename it over."""
    echo = servers.echo()
    path = tmp_path / "tcpfault.yaml"
    path.write_text(config(echo.addr, "v1"))
    p, admin = start(tcpfault, path)
    conn = Echo(p.addr())
    for n in (1, 2):
        tmp = tmp_path / f".tcpfault.yaml.{n}.tmp"
        tmp.write_text(config(echo.addr, f"v{n + 1}"))
        os.rename(tmp, path)
        wait_reloaded(p, admin, n, f"v{n + 1}")
        conn.round()
    settle_and_count(p, admin, tmp_path, ok=2)
    conn.close()


def test_write_in_place(tcpfault, servers, tmp_path):
    """`cat new > tcpfault.yaml`: truncated, then written, same inode."""
    echo = servers.echo()
    path = tmp_path / "tcpfault.yaml"
    path.write_text(config(echo.addr, "v1"))
    ino = path.stat().st_ino
    p, admin = start(tcpfault, path)
    conn = Echo(p.addr())
    for n in (1, 2):
        with open(path, "w") as f:
            f.write(config(echo.addr, f"v{n + 1}"))
        assert path.stat().st_ino == ino
        wait_reloaded(p, admin, n, f"v{n + 1}")
        conn.round()
    settle_and_count(p, admin, tmp_path, ok=2)
    conn.close()


def test_symlink_to_another_directory_written_in_place(tcpfault, servers, tmp_path):
    """The path is a symlink into another directory: writes to the target there are seen."""
    echo = servers.echo()
    (tmp_path / "etc").mkdir()
    (tmp_path / "srv").mkdir()
    real = tmp_path / "srv" / "rules.yaml"
    real.write_text(config(echo.addr, "v1"))
    path = tmp_path / "etc" / "tcpfault.yaml"
    os.symlink(real, path)
    p, admin = start(tcpfault, path)
    real.write_text(config(echo.addr, "v2"))
    wait_reloaded(p, admin, 1, "v2")
    settle_and_count(p, admin, tmp_path / "etc", ok=1)


def test_broken_file_keeps_running_config_and_is_counted(tcpfault, servers, tmp_path):
    echo = servers.echo()
    cm = Kubelet(tmp_path / "tcpfault", config(echo.addr, "v1"))
    p, admin = start(tcpfault, cm.path)
    conn = Echo(p.addr())

    cm.update(broken(echo.addr))
    rec = p.wait_for_log("reload failed", timeout=10)[0]
    assert rec["file"] == str(cm.path) and "tcpfault.yaml:" in rec["error"], rec
    assert rules(admin) == ["v1"], "the running config must be kept"
    conn.round()  # the open connection is untouched
    fresh = Echo(p.addr())  # and the listener still accepts
    fresh.round(1024)
    fresh.close()
    # As with SIGHUP: the same counter, the same log line.
    assert admin.scrape().need("tcpfault_config_reloads_total", result="error") == 1

    cm.update(config(echo.addr, "v2"))  # fixed: taken at the next change
    wait_reloaded(p, admin, 1, "v2")
    conn.round()
    settle_and_count(p, admin, cm.root, ok=1, error=1)
    conn.close()


def test_unrelated_changes_and_unchanged_rewrites_do_not_reload(tcpfault, servers, tmp_path):
    echo = servers.echo()
    path = tmp_path / "tcpfault.yaml"
    text = config(echo.addr, "v1")
    path.write_text(text)
    p, admin = start(tcpfault, path)
    for i in range(20):  # another file in the same directory, written and replaced
        (tmp_path / "app.log").write_text(f"line {i}\n")
        os.rename(tmp_path / "app.log", tmp_path / f"app.log.{i}")
    quiet(p, tmp_path)
    mark = p.mark()
    path.write_text(text)  # the same bytes again
    p.wait_for_log("config file unchanged", since=mark, timeout=10)
    mark = p.mark()
    tmp = tmp_path / "copy.tmp"
    tmp.write_text(text)
    os.rename(tmp, path)  # a new inode, the same bytes
    p.wait_for_log("config file unchanged", since=mark, timeout=10)
    assert not p.find_logs("config file changed"), p.stderr_text()
    path.write_text(config(echo.addr, "v2"))  # the one real change, after all the noise
    wait_reloaded(p, admin, 1, "v2")
    settle_and_count(p, admin, tmp_path, ok=1)


def test_emptied_file_is_waited_out(tcpfault, servers, tmp_path):
    """An editor that truncates first and writes later must not load an empty config (which
    would stop every proxy): the empty file is logged and skipped, its content then loaded."""
    echo = servers.echo()
    path = tmp_path / "tcpfault.yaml"
    path.write_text(config(echo.addr, "v1"))
    p, admin = start(tcpfault, path)
    conn = Echo(p.addr())
    path.write_text("")
    p.wait_for_log("config file is empty: waiting for content before reloading", timeout=10)
    assert rules(admin) == ["v1"]
    conn.round()
    path.write_text(config(echo.addr, "v2"))
    wait_reloaded(p, admin, 1, "v2")
    settle_and_count(p, admin, tmp_path, ok=1)
    conn.close()


def test_watch_flag_and_switching_watch_off(tcpfault, servers, tmp_path):
    echo = servers.echo()
    path = tmp_path / "tcpfault.yaml"
    # No `watch:` in the file: --watch turns it on.
    path.write_text(config(echo.addr, "v1", watch=None))
    p, admin = start(tcpfault, path, ("--watch",))
    assert p.find_logs("watching the config file")
    path.write_text(config(echo.addr, "v2", watch=None))
    wait_reloaded(p, admin, 1, "v2")
    p.stop()

    # `watch: true` in the file, then `watch: false` written to it: the watch stops.
    path.write_text(config(echo.addr, "v1", watch=True))
    p, admin = start(tcpfault, path)
    path.write_text(config(echo.addr, "v2", watch=False))
    wait_reloaded(p, admin, 1, "v2")
    p.wait_for_log("config file no longer watched")
    path.write_text(config(echo.addr, "v3", watch=False))
    p.signal(signal.SIGHUP)  # the only way in now
    wait_reloaded(p, admin, 2, "v3")
    # The watch is off: nothing can come from it any more.
    assert len(p.find_logs("config file changed")) == 1
    assert admin.scrape().need("tcpfault_config_reloads_total", result="ok") == 2


def test_without_watch_nothing_is_watched(tcpfault, servers, tmp_path):
    echo = servers.echo()
    path = tmp_path / "tcpfault.yaml"
    path.write_text(config(echo.addr, "v1", watch=None))
    p, admin = start(tcpfault, path)  # "started" comes after "watching ..." when watching
    assert not p.find_logs("watching the config file"), p.stderr_text()


def test_watch_key_and_flag_validation(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("watch: sometimes\nproxies: []\n")
    r = run_tcpfault(["--check", "-c", str(path)])
    assert r.returncode == 2
    assert f"{path}:1:8:" in r.stderr and "watch" in r.stderr, r.stderr
    r = run_tcpfault(["-l", "127.0.0.1:0", "-u", "127.0.0.1:1", "--watch"])
    assert r.returncode == 2 and "--watch" in r.stderr, r.stderr
