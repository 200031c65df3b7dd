"""The Grafana dashboard of the compose rig (docker/grafana/tcpfault-dashboard.json) against what
tcpfault really exports: every metric and label its PromQL names is in /metrics, every
expression parses (promtool), and a real Prometheus scraping a real tcpfault answers each
one, including the admin API's per-connection faults (rule="@api"). Plus the provisioning
files and the compose service that load it.

Needs /usr/bin/prometheus and /usr/bin/promtool (Debian package `prometheus`); fails without
them unless TCPFAULT_SKIP_PROMETHEUS=1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest
import yaml

from admin_helpers import start_with_admin
from fault_helpers import Recorder, echo_reply
from helpers import SOURCE_DIR, read_outcome
from test_admin_prometheus import prometheus_bin, prometheus_factory  # noqa: F401 (fixtures)
from test_connection_api import open_conn

DOCKER = SOURCE_DIR / "docker"
DASHBOARD = DOCKER / "grafana" / "tcpfault-dashboard.json"
PROVISIONING = DOCKER / "grafana" / "provisioning"
METRIC = re.compile(r"\b(tcpfault_[a-z_]+)\b")
# What Grafana substitutes before a query reaches Prometheus.
GRAFANA_VARS = {"$__rate_interval": "5s", "$__range": "1m", "$instance": ".*", "$proxy": ".*"}
# Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"instance", "job"}


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(d: dict) -> list[dict]:
    out = []
    for p in d["panels"]:
        out.append(p)
        out += p.get("panels", [])
    return out


def expressions(d: dict) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and every query variable."""
    out = []
    for p in panels(d):
        for t in p.get("targets", []):
            out.append((f"panel {p['title']!r} {t['refId']}", t["expr"]))
    for v in d["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", q)
            assert m, f"variable {v['name']}: unexpected query {q!r}"
            out.append((f"variable {v['name']}", m.group(1)))
    return out


def substituted(expr: str) -> str:
    for k, v in GRAFANA_VARS.items():
        expr = expr.replace(k, v)
    assert "$" not in expr, f"a Grafana variable the test does not know: {expr}"
    return expr


def labels_used(expr: str) -> dict[str, set[str]]:
    """metric -> label names its selector matches on; plus "" -> the `by (...)` labels."""
    out: dict[str, set[str]] = {}
    for m in re.finditer(r"\b(tcpfault_[a-z_]+)\s*(\{([^}]*)\})?", expr):
        out.setdefault(m.group(1), set()).update(
            re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", m.group(3) or ""))
    out[""] = {label.strip() for g in re.findall(r"\bby\s*\(([^)]*)\)", expr)
               for label in g.split(",") if label.strip()}
    return out


@pytest.fixture
def promtool():
    if os.environ.get("TCPFAULT_SKIP_PROMETHEUS") == "1":
        pytest.skip("TCPFAULT_SKIP_PROMETHEUS=1")
    path = shutil.which("promtool") or "/usr/bin/promtool"
    if not os.access(path, os.X_OK):
        pytest.fail("promtool not found: install Debian's package `prometheus`, or set "
                    "TCPFAULT_SKIP_PROMETHEUS=1", pytrace=False)
    return path


def test_dashboard_shape():
    d = dashboard()
    assert d["uid"] == "tcpfault" and d["title"] == "tcpfault"
    titles = [p["title"] for p in panels(d)]
    assert len(titles) == len(set(titles)), f"duplicate panel titles: {titles}"
    for p in panels(d):
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p.get("targets"), f"panel {p['title']!r} has no query"
    names = {v["name"] for v in d["templating"]["list"]}
    assert {"datasource", "instance", "proxy"} <= names
    exprs = " ".join(e for _, e in expressions(d))
    # What the issue asks the dashboard to show.
    for must in ("tcpfault_connections_active", "tcpfault_connections_total", "tcpfault_bytes_total",
                 "tcpfault_faults_total", "tcpfault_connections_rejected_total",
                 "tcpfault_upstream_errors_total", "tcpfault_connection_duration_seconds_bucket",
                 'rule="@api"', "by (proxy, rule, fault)", "histogram_quantile(0.99"):
        assert must in exprs, f"the dashboard does not query {must}"


def test_every_queried_metric_and_label_exists(tcpfault, servers):
    rec = Recorder(servers, reply=echo_reply, close_on_eof=True)
    proc, api = start_with_admin(tcpfault, [{
        "name": "web", "upstream": rec.addr,
        "rules": ["{name: slow, fault: {type: latency, delay: 1ms}}"]}])
    m = api.scrape()
    # Sample names (histograms expose _bucket/_sum/_count) with the labels each carries.
    exported: dict[str, set[str]] = {}
    for fam in m.families.values():
        for name, labels, _ in fam.samples:
            exported.setdefault(name, set()).update(labels)
    problems = []
    for where, expr in expressions(dashboard()):
        used = labels_used(expr)
        metrics = [k for k in used if k]
        assert metrics, f"{where}: no tcpfault metric in {expr}"
        for metric in metrics:
            if metric not in exported:
                problems.append(f"{where}: {metric} is not in /metrics")
                continue
            missing = used[metric] - exported[metric] - TARGET_LABELS
            if missing:
                problems.append(f"{where}: {metric} has no label {sorted(missing)}")
        have = set().union(*(exported.get(x, set()) for x in metrics)) | TARGET_LABELS
        if used[""] - have:
            problems.append(f"{where}: `by` names {sorted(used[''] - have)}, not on {metrics}")
    assert not problems, "the dashboard queries what tcpfault does not export:\n" + \
        "\n".join(problems)
    # The admin API's per-connection faults are there from the start, at 0.
    assert m.need("tcpfault_faults_total", proxy="web", rule="@api", fault="reset") == 0


def test_every_expression_parses(promtool, tmp_path):
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:expr{i}", "expr": substituted(expr)}
        for i, (_, expr) in enumerate(expressions(dashboard()))]}]}
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rules))
    r = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, f"promtool rejects a dashboard expression:\n{r.stdout}\n{r.stderr}"


@pytest.mark.timeout(90)
def test_prometheus_answers_every_panel(tcpfault, servers, prometheus_factory):  # noqa: F811
    rec = Recorder(servers, reply=echo_reply, close_on_eof=True)
    proc, api = start_with_admin(tcpfault, [{
        "name": "web", "upstream": rec.addr,
        "rules": ["{name: slow, fault: {type: latency, delay: 1ms}}"]}])
    prom = prometheus_factory(f"127.0.0.1:{api.port}")
    prom.wait_ready(timeout=20)
    prom.wait_query("tcpfault_connections_total", lambda r: len(r) == 1, 30, "first scrape")
    # Traffic, a rule's fault, and one from the admin API.
    s, cid = open_conn(proc, api, "web")
    with s:
        assert api.delete(f"/api/proxies/web/connections/{cid}").status == 200
        assert read_outcome(s, 5)[0] == "reset"
    api.wait_metric("tcpfault_faults_total", 1, proxy="web", rule="@api", fault="reset")
    d = dashboard()
    api_panel = next(t["expr"] for p in panels(d) if p["title"] == "Faults from the admin API"
                     for t in p["targets"])
    res = prom.wait_query(substituted(api_panel),
                          lambda r: any(float(x["value"][1]) > 0 for x in r), 30,
                          "the admin API's reset on its panel")
    assert {x["metric"]["fault"] for x in res if float(x["value"][1]) > 0} == {"reset"}, res
    for where, expr in expressions(d):
        res = prom.query(substituted(expr))  # asserts the query succeeded
        assert res, f"{where}: Prometheus answers nothing for {substituted(expr)}"
