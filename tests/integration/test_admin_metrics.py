"""GET /metrics (docs/metrics.md): the exposition parses, every metric of the table is there with
its type and label names, every series is declared from the start, and the counters match
exactly what the test did."""

from __future__ import annotations

import signal
import socket

import pytest

from admin_helpers import start_with_admin
from helpers import connect, free_port, read_outcome, recv_exact

# name -> (type, label names of its series)
TABLE = {
    "tcpfault_connections_total": ("counter", {"proxy"}),
    "tcpfault_connections_active": ("gauge", {"proxy"}),
    "tcpfault_connections_rejected_total": ("counter", {"proxy", "reason"}),
    "tcpfault_upstream_errors_total": ("counter", {"proxy", "error"}),
    "tcpfault_bytes_total": ("counter", {"proxy", "direction"}),
    "tcpfault_faults_total": ("counter", {"proxy", "rule", "fault"}),
    "tcpfault_rule_active": ("gauge", {"proxy", "rule"}),
    "tcpfault_connection_duration_seconds": ("histogram", {"proxy"}),
    "tcpfault_config_reloads_total": ("counter", {"result"}),
}
REASONS = ["cap", "refuse", "upstream_error", "accept_error"]
UPSTREAM_ERRORS = ["refused", "timeout", "reset", "dns", "other"]


def get_family(m, name: str):
    fam = m.families.get(name)
    if fam is None and name.endswith("_total"):
        fam = m.families.get(name[: -len("_total")])
    assert fam is not None, f"metric {name} missing from /metrics:\n{m.text}"
    return fam


def echo_ok(s: socket.socket, payload: bytes) -> None:
    s.sendall(payload)
    assert recv_exact(s, len(payload), timeout=5) == payload


@pytest.mark.timeout(20)
def test_every_metric_present_typed_and_declared(tcpfault, servers):
    echo = servers.echo()
    p, api = start_with_admin(tcpfault, [
        {"name": "web", "upstream": echo.addr,
         "rules": ["{name: slow, fault: {type: latency, delay: 1ms}}",
                   "{name: boom, enabled: false, fault: {type: reset}}"]},
        {"name": "db", "upstream": echo.addr,
         "rules": ["{name: gate, fault: {type: cap, max: 5}}"]},
    ])
    m = api.scrape()

    for name, (type_, labels) in TABLE.items():
        fam = get_family(m, name)
        assert fam.type == type_, f"{name}: TYPE {fam.type}, expected {type_}"
        assert fam.help, f"{name}: no # HELP text"
        assert fam.samples, f"{name}: no series declared"
        for sample, lb, _ in fam.samples:
            want = labels | ({"le"} if sample.endswith("_bucket") else set())
            assert set(lb) == want, f"{sample}{lb}: label names {sorted(lb)}, expected " \
                                    f"{sorted(want)}"

    for proxy in ("web", "db"):
        assert m.need("tcpfault_connections_total", proxy=proxy) == 0
        assert m.need("tcpfault_connections_active", proxy=proxy) == 0
        for reason in REASONS:
            assert m.need("tcpfault_connections_rejected_total", proxy=proxy, reason=reason) == 0
        for err in UPSTREAM_ERRORS:
            assert m.need("tcpfault_upstream_errors_total", proxy=proxy, error=err) == 0
        for d in ("upstream", "downstream"):
            assert m.need("tcpfault_bytes_total", proxy=proxy, direction=d) == 0
        assert m.need("tcpfault_connection_duration_seconds_count", proxy=proxy) == 0
        assert m.need("tcpfault_connection_duration_seconds_sum", proxy=proxy) == 0
        buckets = m.samples("tcpfault_connection_duration_seconds_bucket")
        les = [lb["le"] for lb, _ in buckets if lb["proxy"] == proxy]
        assert "+Inf" in les and len(les) >= 2, les
        assert all(v == 0 for lb, v in buckets if lb["proxy"] == proxy)
    for proxy, rule, fault in [("web", "slow", "latency"), ("web", "boom", "reset"),
                               ("db", "gate", "cap")]:
        assert m.need("tcpfault_faults_total", proxy=proxy, rule=rule, fault=fault) == 0
    assert m.need("tcpfault_rule_active", proxy="web", rule="slow") == 1
    assert m.need("tcpfault_rule_active", proxy="web", rule="boom") == 0
    assert m.need("tcpfault_rule_active", proxy="db", rule="gate") == 1
    for result in ("ok", "error"):
        assert m.need("tcpfault_config_reloads_total", result=result) == 0

    # A rule added over the API is declared at once; a disabled one reads 0.
    r = api.post("/api/proxies/db/rules", {"name": "later", "enabled": False,
                                           "fault": {"type": "close"}})
    assert r.status == 201, r
    m = api.scrape()
    assert m.need("tcpfault_faults_total", proxy="db", rule="later", fault="close") == 0
    assert m.need("tcpfault_rule_active", proxy="db", rule="later") == 0
    assert api.post("/api/proxies/db/rules/later/enable").status == 200
    assert api.scrape().need("tcpfault_rule_active", proxy="db", rule="later") == 1


@pytest.mark.timeout(30)
def test_connections_bytes_active_and_duration_exact(tcpfault, servers):
    echo = servers.echo()
    p, api = start_with_admin(tcpfault, [{"name": "p", "upstream": echo.addr},
                                         {"name": "idle", "upstream": echo.addr}])
    addr = p.addr("p")

    sizes = [1, 1000, 65536, 300_000, 7]
    for i, k in enumerate(sizes):
        with connect(addr) as s:
            payload = bytes([i + 1]) * k
            echo_ok(s, payload)
    total = sum(sizes)
    m = api.wait_metric("tcpfault_connections_active", 0, proxy="p")
    assert m.need("tcpfault_connections_total", proxy="p") == len(sizes)
    assert m.need("tcpfault_bytes_total", proxy="p", direction="upstream") == total
    assert m.need("tcpfault_bytes_total", proxy="p", direction="downstream") == total
    m = api.wait_metric("tcpfault_connection_duration_seconds_count", len(sizes), proxy="p")
    assert m.need("tcpfault_connection_duration_seconds_sum", proxy="p") > 0

    # Active goes up to the number open, and back to 0.
    open_ = [connect(addr) for _ in range(4)]
    try:
        for i, s in enumerate(open_):
            echo_ok(s, b"x" * (i + 1))  # each is proxied end to end, so it is counted
        m = api.scrape()
        assert m.need("tcpfault_connections_active", proxy="p") == 4
        assert m.need("tcpfault_connections_total", proxy="p") == len(sizes) + 4
        assert m.need("tcpfault_bytes_total", proxy="p", direction="upstream") == total + 10
        assert m.need("tcpfault_bytes_total", proxy="p", direction="downstream") == total + 10
        assert m.need("tcpfault_connection_duration_seconds_count", proxy="p") == len(sizes)
        # half of them close
        for s in open_[:2]:
            s.close()
        m = api.wait_metric("tcpfault_connections_active", 2, proxy="p")
        assert m.need("tcpfault_connection_duration_seconds_count", proxy="p") == len(sizes) + 2
    finally:
        for s in open_:
            s.close()
    m = api.wait_metric("tcpfault_connections_active", 0, proxy="p")
    n = len(sizes) + 4
    assert m.need("tcpfault_connection_duration_seconds_count", proxy="p") == n
    buckets = sorted(((float(lb["le"]), v) for lb, v in
                      m.samples("tcpfault_connection_duration_seconds_bucket")
                      if lb["proxy"] == "p"))
    values = [v for _, v in buckets]
    assert values == sorted(values), f"buckets not cumulative: {buckets}"
    assert buckets[-1] == (float("inf"), n), buckets
    # the other proxy saw nothing
    assert m.need("tcpfault_connections_total", proxy="idle") == 0
    assert m.need("tcpfault_bytes_total", proxy="idle", direction="upstream") == 0
    assert m.need("tcpfault_connection_duration_seconds_count", proxy="idle") == 0


@pytest.mark.timeout(30)
def test_injected_resets_counted_exactly(tcpfault, servers):
    echo = servers.echo()
    p, api = start_with_admin(tcpfault, [{
        "name": "p", "upstream": echo.addr,
        "rules": ["{name: rst, match: {connections: {every: 1}}, fault: {type: reset}}",
                  "{name: never, match: {connections: {nth: 999999}}, fault: {type: close}}"]}])
    addr = p.addr("p")
    outcomes = []
    for _ in range(7):
        try:
            s = connect(addr)
        except ConnectionResetError:
            outcomes.append("reset")
            continue
        with s:
            try:
                s.sendall(b"hi")
                outcomes.append(read_outcome(s, 5)[0])
            except (ConnectionResetError, BrokenPipeError):
                outcomes.append("reset")
    assert outcomes == ["reset"] * 7, outcomes
    p.wait_for_log("fault injected", rule="rst", count=7)
    m = api.wait_metric("tcpfault_connections_active", 0, proxy="p")
    assert m.need("tcpfault_faults_total", proxy="p", rule="rst", fault="reset") == 7
    assert m.need("tcpfault_faults_total", proxy="p", rule="never", fault="close") == 0
    assert m.need("tcpfault_connections_total", proxy="p") == 7
    assert m.need("tcpfault_rule_active", proxy="p", rule="rst") == 1
    assert api.proxy("p")["rules"][0]["fired"] == 7


@pytest.mark.timeout(30)
def test_rejections_by_reason(tcpfault, servers, sockets):
    echo = servers.echo()
    down = f"127.0.0.1:{free_port()}"  # nothing listens there
    p, api = start_with_admin(tcpfault, [
        {"name": "capped", "upstream": echo.addr,
         "rules": ["{name: one, fault: {type: cap, max: 1, over: reset}}"]},
        {"name": "dead", "upstream": down},
    ])

    # cap: the first connection holds the only slot, the next ones are reset
    first = connect(p.addr("capped"))
    sockets.append(first)
    echo_ok(first, b"slot")
    for _ in range(3):
        try:
            s = connect(p.addr("capped"))
        except ConnectionResetError:
            continue
        with s:
            try:
                s.sendall(b"x")
            except (ConnectionResetError, BrokenPipeError):
                continue
            assert read_outcome(s, 5)[0] == "reset"
    echo_ok(first, b"still")
    m = api.wait_metric("tcpfault_connections_rejected_total", 3, proxy="capped", reason="cap")
    for reason in ("refuse", "upstream_error", "accept_error"):
        assert m.need("tcpfault_connections_rejected_total", proxy="capped", reason=reason) == 0
    assert m.need("tcpfault_connections_active", proxy="capped") == 1

    # upstream down: refused connects
    for _ in range(4):
        try:
            s = connect(p.addr("dead"))
        except ConnectionResetError:
            continue
        with s:
            out = read_outcome(s, 5)[0]
            assert out in ("reset", "eof"), out
    m = api.wait_metric("tcpfault_connections_rejected_total", 4, proxy="dead",
                        reason="upstream_error")
    assert m.need("tcpfault_upstream_errors_total", proxy="dead", error="refused") == 4
    for err in ("timeout", "reset", "dns", "other"):
        assert m.need("tcpfault_upstream_errors_total", proxy="dead", error=err) == 0
    for reason in ("cap", "refuse", "accept_error"):
        assert m.need("tcpfault_connections_rejected_total", proxy="dead", reason=reason) == 0
    assert m.need("tcpfault_upstream_errors_total", proxy="capped", error="refused") == 0
    assert m.need("tcpfault_connections_rejected_total", proxy="capped", reason="cap") == 3
    m = api.wait_metric("tcpfault_connections_active", 0, proxy="dead")
    assert m.need("tcpfault_bytes_total", proxy="dead", direction="downstream") == 0


@pytest.mark.timeout(20)
def test_reload_results_counted(tcpfault, servers):
    echo = servers.echo()
    p, api = start_with_admin(tcpfault, [{"name": "p", "upstream": echo.addr}])
    good = p.config_path.read_text()
    bad = good.replace("rules: []", "rules: [{name: x, fault: {type: reset}, bogus: 1}]")
    assert bad != good

    expect = {"ok": 0, "error": 0}
    for text, how, result in [(good, "api", "ok"), (bad, "api", "error"), (good, "hup", "ok"),
                              (bad, "hup", "error"), (bad, "api", "error"),
                              (good, "api", "ok")]:
        tcpfault.write_config(text, name=p.config_path.name)
        mark = p.mark()
        if how == "api":
            r = api.post("/api/reload")
            assert r.status == (200 if result == "ok" else 400), r
        else:
            p.signal(signal.SIGHUP)
        p.wait_for_log("reloaded" if result == "ok" else "reload failed", since=mark)
        expect[result] += 1
        m = api.scrape()
        for res in ("ok", "error"):
            assert m.need("tcpfault_config_reloads_total", result=res) == expect[res], \
                f"after a {result} reload by {how}: {res} should be {expect[res]}"
    assert expect == {"ok": 3, "error": 3}


@pytest.mark.timeout(60)
def test_deleted_rules_and_proxies_leave_their_gauges_and_bounded_counters(tcpfault, servers):
    """docs/metrics.md: a deleted rule's tcpfault_rule_active series goes at once (a dashboard of
    "rules in force" must not show it); its fault counters stay for the scrape after the
    deletion, until 1,000 later deletions push them out. A proxy removed by a reload loses its
    tcpfault_connections_active series. Many uniquely named rules added and deleted over the
    API leave /metrics bounded."""
    echo = servers.echo()
    p, api = start_with_admin(tcpfault, [
        {"name": "p", "upstream": echo.addr,
         "rules": ["{name: rst, match: {connections: {every: 1}}, fault: {type: reset}}"]},
        {"name": "gone", "upstream": echo.addr}])
    addr = p.addr("p")
    try:
        s = connect(addr)
        with s:
            read_outcome(s, 5)
    except ConnectionResetError:
        pass
    p.wait_for_log("fault injected", rule="rst", count=1)
    m = api.wait_metric("tcpfault_connections_active", 0, proxy="p")
    assert m.need("tcpfault_rule_active", proxy="p", rule="rst") == 1

    # The file drops proxy "gone": its active gauge goes with it.
    assert m.need("tcpfault_connections_active", proxy="gone") == 0
    text = p.config_path.read_text()
    start = text.index("- name: gone")
    tcpfault.write_config(text[:start].rstrip() + "\n", name=p.config_path.name)
    mark = p.mark()
    assert api.post("/api/reload").status == 200
    p.wait_for_log("reloaded", since=mark)
    m = api.scrape()
    assert m.value("tcpfault_connections_active", proxy="gone") is None, m.text
    assert m.need("tcpfault_connections_active", proxy="p") == 0
    assert m.need("tcpfault_rule_active", proxy="p", rule="rst") == 1

    api.ok_json("DELETE", "/api/proxies/p/rules/rst")
    m = api.scrape()
    assert m.value("tcpfault_rule_active", proxy="p", rule="rst") is None, m.text
    assert m.need("tcpfault_faults_total", proxy="p", rule="rst", fault="reset") == 1

    # 1,100 uniquely named rules added and deleted: the oldest counts are pushed out.
    for i in range(1100):
        api.ok_json("POST", "/api/proxies/p/rules",
                    {"name": f"t{i}", "fault": {"type": "close"}}, status=201)
        api.ok_json("DELETE", f"/api/proxies/p/rules/t{i}")
    m = api.scrape()
    rule_series = [labels for labels, _ in m.samples("tcpfault_faults_total")
                   if labels.get("proxy") == "p" and labels.get("rule") != "@api"]
    assert len(rule_series) == 1000, len(rule_series)
    assert m.value("tcpfault_faults_total", proxy="p", rule="rst", fault="reset") is None
    assert m.need("tcpfault_faults_total", proxy="p", rule="t1099", fault="close") == 0
    assert not [l for l, _ in m.samples("tcpfault_rule_active") if l.get("proxy") == "p"]


@pytest.mark.timeout(30)
def test_a_failed_reload_keeps_the_running_rules_series(tcpfault, servers):
    """A reload that moves a proxy to a port in use fails and keeps the running config: the
    rule it would have dropped keeps its tcpfault_rule_active series, and is still known as a
    rule of the running config when it is deleted later."""
    echo = servers.echo()
    p, api = start_with_admin(tcpfault, [
        {"name": "p", "upstream": echo.addr,
         "rules": ["{name: keep, fault: {type: latency, delay: 1ms}}",
                   "{name: dropme, fault: {type: close}}"]}])
    assert api.scrape().need("tcpfault_rule_active", proxy="p", rule="dropme") == 1
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        text = p.config_path.read_text()
        moved = text.replace("    listen: 127.0.0.1:0",  # the proxy's, not admin's
                             f"    listen: 127.0.0.1:{busy.getsockname()[1]}")
        moved = moved.replace("      - {name: dropme, fault: {type: close}}\n", "")
        assert moved != text and "dropme" not in moved
        tcpfault.write_config(moved, name=p.config_path.name)
        mark = p.mark()
        assert api.post("/api/reload").status != 200
        rec = p.wait_for_log("reload failed", since=mark)[0]
        assert "cannot listen" in rec["error"], rec
        m = api.scrape()
        assert m.need("tcpfault_rule_active", proxy="p", rule="dropme") == 1, m.text
        assert m.need("tcpfault_rule_active", proxy="p", rule="keep") == 1
        assert [r["name"] for r in api.proxy("p")["rules"]] == ["keep", "dropme"]
        # And it is still known as live: deleting it now removes its gauge.
        api.ok_json("DELETE", "/api/proxies/p/rules/dropme")
        m = api.scrape()
        assert m.value("tcpfault_rule_active", proxy="p", rule="dropme") is None, m.text
    finally:
        busy.close()


@pytest.mark.timeout(30)
def test_a_failed_reload_leaves_no_series_of_proxies_it_would_have_added(tcpfault, servers):
    """A reload that adds a proxy and fails on a later one (its port is in use) runs nothing
    new: the added proxy has no tcpfault_connections_active or tcpfault_rule_active series, as
    a deleted proxy has none."""
    echo = servers.echo()
    p, api = start_with_admin(tcpfault, [{"name": "p", "upstream": echo.addr}])
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        text = p.config_path.read_text()
        added = (f'  - name: newp\n    listen: 127.0.0.1:0\n    upstream: "{echo.addr}"\n'
                 "    rules:\n      - {name: nr, fault: {type: close}}\n")
        moved = text.replace("proxies:\n", "proxies:\n" + added, 1)
        moved = moved.replace("  - name: p\n    listen: 127.0.0.1:0",
                              f"  - name: p\n    listen: 127.0.0.1:{busy.getsockname()[1]}")
        assert moved.count("newp") == 1 and str(busy.getsockname()[1]) in moved
        tcpfault.write_config(moved, name=p.config_path.name)
        mark = p.mark()
        assert api.post("/api/reload").status != 200
        p.wait_for_log("reload failed", since=mark)
        m = api.scrape()
        assert m.value("tcpfault_connections_active", proxy="newp") is None, m.text
        assert m.value("tcpfault_rule_active", proxy="newp", rule="nr") is None, m.text
        assert m.need("tcpfault_connections_active", proxy="p") == 0
        assert api.get("/api/proxies/newp").status == 404
    finally:
        busy.close()
