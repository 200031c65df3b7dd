"""pytest fixtures for the tcpfault integration tests.

Environment: TCPFAULT_BIN (the binary; default <repo>/build/tcpfault) and TCPFAULT_SOURCE_DIR
(default <repo>). Run: python3 -m pytest -q tests/integration
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import (  # noqa: E402
    BIN,
    ProxyProcess,
    SelectorEchoServer,
    TcpServer,
    proxy_yaml,
)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On failure, attach the stderr of every tcpfault the test started to the report."""
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for i, p in enumerate(getattr(item, "_tcpfault_procs", [])):
            rc = p.proc.poll()
            state = "running" if rc is None else f"exit code {rc}"
            rep.sections.append((f"tcpfault #{i} stderr ({state}; {p.desc})",
                                 p.stderr_text() or "(empty)"))


def _require_binary() -> None:
    if not BIN.is_file() or not os.access(BIN, os.X_OK):
        pytest.fail(f"tcpfault binary not found at {BIN} (set TCPFAULT_BIN or build it: "
                    f"ninja -C build tcpfault)", pytrace=False)


class ProxyFactory:
    def __init__(self, request, tmp_path: Path):
        self.request = request
        self.tmp_path = tmp_path
        self.procs: list[ProxyProcess] = []
        request.node._tcpfault_procs = self.procs
        self._n = 0

    def _track(self, p: ProxyProcess) -> ProxyProcess:
        self.procs.append(p)
        return p

    def spawn(self, args: list[str], cwd: Optional[Path] = None) -> ProxyProcess:
        """Starts tcpfault with exactly these args; does not wait for anything."""
        _require_binary()
        return self._track(ProxyProcess(args, cwd=cwd))

    def quick(self, upstream: str, listen: str = "127.0.0.1:0", extra: tuple = (),
              timeout: float = 10.0) -> ProxyProcess:
        """`-l listen -u upstream` with JSON logs and no admin; waits for its listening line."""
        p = self.spawn(["-l", listen, "-u", upstream, "--log-format", "json", "--admin", "off",
                        *extra])
        p.wait_listening(1, timeout=timeout)
        return p

    def write_config(self, text: str, name: Optional[str] = None) -> Path:
        if name is None:
            self._n += 1
            name = f"tcpfault{self._n}.yaml"
        path = self.tmp_path / name
        tmp = path.with_suffix(".tmp")
        workers = os.environ.get("TCPFAULT_TEST_WORKERS")
        if workers and "\nproxies:" in text and not re.search(r"(?m)^workers:", text):
            # Runs a suite with every config on N event loops (appended, so the line and
            # column numbers that config-error tests expect stay put).
            text = text.rstrip("\n") + f"\nworkers: {workers}\n"
        tmp.write_text(text)
        os.replace(tmp, path)  # atomic: a reload never sees half a file
        return path

    def from_config(self, text: Optional[str], listening: int = 1, path: Optional[Path] = None,
                    extra: tuple = (), timeout: float = 10.0) -> ProxyProcess:
        """Writes the YAML (unless text is None: path holds it already) and runs `-c FILE`;
        waits for `listening` listening lines."""
        if path is None:
            path = self.write_config(text)
        elif text is not None:
            path.write_text(text)
        p = self.spawn(["-c", str(path), *extra])
        p.config_path = path
        if listening:
            p.wait_listening(listening, timeout=timeout)
        return p

    def from_proxies(self, proxies: list[dict], listening: Optional[int] = None, **top
                     ) -> ProxyProcess:
        return self.from_config(proxy_yaml(proxies, **top),
                                listening=len(proxies) if listening is None else listening)

    def cleanup(self) -> None:
        crashed = [(p, p.proc.poll()) for p in self.procs
                   if p.proc.poll() is not None and not p.exit_expected]
        problems = []
        for p in self.procs:
            if p.proc.poll() is None:
                # A clean stop is part of every test: it runs the close paths of every open
                # handle, which is where an ASan build finds use-after-free and leaks.
                problems += _stop_cleanly(p)
            p.kill()
            problems += _sanitizer_reports(p)
        if crashed:
            p, rc = crashed[0]
            raise AssertionError(
                f"tcpfault exited unexpectedly during the test with code {rc} ({p.desc}); "
                f"stderr:\n{p.stderr_text()}")
        if problems:
            raise AssertionError("\n".join(problems))


_SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                      "WARNING: ThreadSanitizer")


def _stop_cleanly(p: ProxyProcess) -> list:
    p.exit_expected = True
    p.proc.send_signal(signal.SIGTERM)
    try:
        rc = p.proc.wait(timeout=0.5)
    except subprocess.TimeoutExpired:
        # Connections still open: the second signal skips the grace period.
        p.proc.send_signal(signal.SIGTERM)
        try:
            rc = p.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            return [f"tcpfault did not stop within 10s of a second SIGTERM ({p.desc})"]
    if rc != 0:
        return [f"tcpfault exited with {rc} on SIGTERM at teardown ({p.desc}); stderr:\n"
                f"{p.stderr_text()}"]
    return []


def _sanitizer_reports(p: ProxyProcess) -> list:
    text = p.stderr_text()
    if any(m in text for m in _SANITIZER_MARKERS):
        return [f"sanitizer report from tcpfault ({p.desc}):\n{text}"]
    return []


@pytest.fixture
def tcpfault(request, tmp_path):
    f = ProxyFactory(request, tmp_path)
    yield f
    f.cleanup()


class ServerFactory:
    def __init__(self):
        self.items = []

    def tcp(self, handler=None, host: str = "127.0.0.1", backlog: int = 1024) -> TcpServer:
        s = TcpServer(handler, host=host, backlog=backlog)
        self.items.append(s)
        return s

    def echo(self, host: str = "127.0.0.1") -> TcpServer:
        from helpers import echo_handler
        return self.tcp(echo_handler, host=host)

    def selector_echo(self) -> SelectorEchoServer:
        s = SelectorEchoServer()
        self.items.append(s)
        return s

    def close(self) -> None:
        for s in self.items:
            try:
                s.close()
            except Exception:
                pass


@pytest.fixture
def servers():
    f = ServerFactory()
    yield f
    f.close()


@pytest.fixture
def sockets():
    """A list to append client sockets to; all are closed at teardown."""
    socks: list = []
    yield socks
    for s in socks:
        try:
            s.close()
        except OSError:
            pass
