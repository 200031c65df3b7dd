"""A real Prometheus server scrapes tcpfault's /metrics (docs/metrics.md), as users do to see
what was injected and when.

Needs /usr/bin/prometheus (Debian package `prometheus`); the test fails without it unless
TCPFAULT_SKIP_PROMETHEUS=1. Prometheus runs as a plain child process on 127.0.0.1 with its own
config and storage in the test's tmp dir (the Debian service is never used), and is killed at
the end whatever happens.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from admin_helpers import start_with_admin
from helpers import connect, free_port, read_outcome

PROMETHEUS = os.environ.get("TCPFAULT_PROMETHEUS_BIN", "/usr/bin/prometheus")


class Prometheus:
    def __init__(self, tmp: Path, target: str):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        cfg = tmp / "prometheus.yml"
        cfg.write_text(f"""global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: tcpfault
    scrape_interval: 1s
    scrape_timeout: 1s
    static_configs:
      - targets: ["{target}"]
""")
        (tmp / "prom-data").mkdir()
        self.log_path = tmp / "prometheus.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={cfg}", f"--storage.tsdb.path={tmp / 'prom-data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=info"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, cwd=str(tmp))

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def get(self, path: str, timeout: float = 5.0):
        with urllib.request.urlopen(self.base + path, timeout=timeout) as r:
            return r.status, r.read()

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, \
                f"prometheus exited with {self.proc.returncode}:\n{self.log_text()}"
            try:
                status, _ = self.get("/-/ready", timeout=1)
                if status == 200:
                    return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            assert time.monotonic() < deadline, \
                f"prometheus not ready within {timeout}s:\n{self.log_text()}"
            time.sleep(0.1)  # polled: readiness is only visible over HTTP

    def query(self, expr: str) -> list:
        status, body = self.get("/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        data = json.loads(body)
        assert status == 200 and data.get("status") == "success", data
        assert data["data"]["resultType"] == "vector", data
        return data["data"]["result"]

    def wait_query(self, expr: str, pred, timeout: float, what: str) -> list:
        """Polls an instant query until pred(result) holds (a scrape every second feeds it)."""
        deadline = time.monotonic() + timeout
        last = None
        while True:
            assert self.proc.poll() is None, \
                f"prometheus exited with {self.proc.returncode}:\n{self.log_text()}"
            last = self.query(expr)
            if pred(last):
                return last
            if time.monotonic() >= deadline:
                targets = ""
                try:
                    targets = self.get("/api/v1/targets")[1].decode()[:2000]
                except Exception as e:  # diagnostics only
                    targets = repr(e)
                raise AssertionError(f"{what}: not seen within {timeout}s; last {expr} -> "
                                     f"{last}\ntargets: {targets}\nprometheus log:\n"
                                     f"{self.log_text()}")
            time.sleep(0.25)  # polled: Prometheus scrapes on its own schedule

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._log.close()


@pytest.fixture
def prometheus_bin():
    if os.environ.get("TCPFAULT_SKIP_PROMETHEUS") == "1":
        pytest.skip("TCPFAULT_SKIP_PROMETHEUS=1")
    if not (os.path.isfile(PROMETHEUS) and os.access(PROMETHEUS, os.X_OK)):
        pytest.fail(f"{PROMETHEUS} not found: install Debian's package `prometheus` "
                    f"(apt-get install -y prometheus), or set TCPFAULT_SKIP_PROMETHEUS=1 to "
                    f"skip this test", pytrace=False)
    return PROMETHEUS


@pytest.fixture
def prometheus_factory(prometheus_bin, tmp_path):
    started: list[Prometheus] = []

    def start(target: str) -> Prometheus:
        d = tmp_path / f"prom{len(started)}"
        d.mkdir()
        p = Prometheus(d, target)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


def sample_value(series: dict) -> float:
    return float(series["value"][1])


@pytest.mark.timeout(60)
def test_prometheus_scrapes_injected_faults(tcpfault, servers, prometheus_factory):
    echo = servers.echo()
    p, api = start_with_admin(tcpfault, [{
        "name": "web", "upstream": echo.addr,
        "rules": ["{name: kill, match: {connections: {every: 1}}, fault: {type: reset}}"]}])
    target = f"127.0.0.1:{api.port}"
    prom = prometheus_factory(target)
    prom.wait_ready(timeout=20)

    # The target is scraped and the declared series is there at 0 before any fault.
    prom.wait_query('up{job="tcpfault"}',
                    lambda r: len(r) == 1 and sample_value(r[0]) == 1, 30,
                    "tcpfault target up")
    # (The rule's series; the admin API's per-connection ones, rule="@api", are there too.)
    res = prom.wait_query('tcpfault_faults_total{rule="kill"}', lambda r: len(r) == 1, 30,
                          "declared tcpfault_faults_total series")
    assert sample_value(res[0]) == 0, res

    # Inject: one connection, reset by the rule.
    try:
        s = connect(p.addr("web"))
    except ConnectionResetError:
        outcome = "reset"
    else:
        with s:
            try:
                s.sendall(b"hello")
                outcome = read_outcome(s, 5)[0]
            except (ConnectionResetError, BrokenPipeError):
                outcome = "reset"
    assert outcome == "reset"
    p.wait_for_log("fault injected", rule="kill")

    res = prom.wait_query('tcpfault_faults_total{rule="kill"}',
                          lambda r: len(r) == 1 and sample_value(r[0]) >= 1, 30,
                          "tcpfault_faults_total >= 1")
    m = res[0]["metric"]
    assert m["__name__"] == "tcpfault_faults_total", m
    assert (m["proxy"], m["rule"], m["fault"]) == ("web", "kill", "reset"), m
    assert m["job"] == "tcpfault" and m["instance"] == target, m
    assert sample_value(res[0]) == 1, res

    # Other families came through typed: the histogram's buckets and the reload counters.
    res = prom.query('tcpfault_connection_duration_seconds_bucket{le="+Inf"}')
    assert len(res) == 1 and res[0]["metric"]["proxy"] == "web", res
    res = prom.query('tcpfault_config_reloads_total')
    assert sorted(r["metric"]["result"] for r in res) == ["error", "ok"], res
    status, body = prom.get("/api/v1/metadata?metric=tcpfault_faults_total")
    meta = json.loads(body)["data"].get("tcpfault_faults_total")
    assert meta and meta[0]["type"] == "counter", meta
