"""The status page at the admin root, driven in a real headless browser (Debian's chromium and
chromium-driver through python3-selenium): it shows proxies and open connections, switches
rules, applies and lifts a fault on one connection, resets one (the client sees ECONNRESET),
shows the timeline, asks for the admin token once, and stays usable with 10,000 connections.
Screenshots go to <build>/artifacts/ (the folder of the tcpfault binary under test).

Needs /usr/bin/chromium, /usr/bin/chromedriver and python3-selenium (docker/install-deps.sh
test); fails without them unless TCPFAULT_SKIP_BROWSER=1.
"""

from __future__ import annotations

import os
import tempfile
import time

import pytest

from admin_helpers import start_with_admin
from fault_helpers import Recorder, echo_reply, wait_until
from helpers import BIN, connect, raise_nofile_limit, read_outcome
from test_connection_api import open_conn, round_trip

CHROMIUM = os.environ.get("TCPFAULT_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("TCPFAULT_CHROMEDRIVER", "/usr/bin/chromedriver")
ARTIFACTS = BIN.resolve().parent / "artifacts"
WAIT = 10


@pytest.fixture(scope="module")
def browser():
    if os.environ.get("TCPFAULT_SKIP_BROWSER") == "1":
        pytest.skip("TCPFAULT_SKIP_BROWSER=1")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("python3-selenium is missing: bash docker/install-deps.sh test "
                    "(or TCPFAULT_SKIP_BROWSER=1)", pytrace=False)
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            pytest.fail(f"{path} is missing: bash docker/install-deps.sh test (Debian chromium, "
                        f"chromium-driver) or TCPFAULT_SKIP_BROWSER=1", pytrace=False)
    profile = tempfile.TemporaryDirectory(prefix="tcpfault-chromium-")
    opts = Options()
    opts.binary_location = CHROMIUM
    # No sandbox (root in CI), and nothing that reaches for the network: the machine has none.
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-quic", "--disable-dev-shm-usage",
                f"--user-data-dir={profile.name}", "--window-size=1280,1000"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # Chromium writes beside its profile too (~/.config, ~/.cache): keep all of it in /tmp.
    env = dict(os.environ, HOME=profile.name, XDG_CONFIG_HOME=profile.name + "/config",
               XDG_CACHE_HOME=profile.name + "/cache")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER, env=env), options=opts)
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()
        profile.cleanup()


def by():
    from selenium.webdriver.common.by import By
    return By


def wait_for(driver, pred, what: str, timeout: float = WAIT):
    """Polls pred(driver) until it is truthy; returns its value."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            v = pred(driver)
            if v:
                return v
        except (StaleElementReferenceException, WebDriverException) as e:
            last = e  # the page re-rendered between finding and reading: look again
        if time.monotonic() >= deadline:
            shot(driver, "failed-" + what.replace(" ", "-")[:40])
            raise AssertionError(f"page: {what} not seen within {timeout}s ({last!r})")
        time.sleep(0.05)  # polled: the page polls the API once a second


def shot(driver, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"status-page-{name}.png"))


def row(driver, cid: int):
    rows = driver.find_elements(by().CSS_SELECTOR, f'tr[data-conn-id="{cid}"]')
    return rows[0] if rows else None


def click_in_row(driver, cid: int, css: str) -> None:
    """Clicks a button of a connection's row (found afresh: the page re-renders each second)."""
    def go(d):
        r = row(d, cid)
        if r is None:
            return False
        b = r.find_element(by().CSS_SELECTOR, css)
        if not b.is_enabled():
            return False
        b.click()
        return True
    wait_for(driver, go, f"an enabled {css} on connection {cid}")


def rule_switch(driver, proxy: str, rule: str):
    return driver.find_element(
        by().CSS_SELECTOR, f'input.rule-switch[data-proxy="{proxy}"][data-rule="{rule}"]')


def severe_console_errors(driver) -> list:
    return [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


@pytest.mark.timeout(60)
def test_page_shows_steers_and_resets(tcpfault, servers, browser):
    d = browser
    B = by()
    d.set_window_size(1280, 1000)
    rec = Recorder(servers, reply=echo_reply, close_on_eof=True)
    proc, api = start_with_admin(tcpfault, [{
        "name": "web", "upstream": rec.addr,
        "rules": ["{name: slow, enabled: false, fault: {type: latency, delay: 300ms}}"]}])
    d.get(api.base + "/")
    d.get_log("browser")  # from here on, the console must stay clean

    # A proxy with its addresses and rule.
    listen = "%s:%d" % proc.addr("web")
    card = wait_for(d, lambda d: d.find_elements(B.CSS_SELECTOR, 'article.proxy[data-proxy="web"]'),
                    "the proxy card")[0]
    assert f"{listen} → {rec.addr}" in card.text, card.text
    assert not rule_switch(d, "web", "slow").is_selected()

    # An open connection appears.
    s, cid = open_conn(proc, api, "web")
    with s:
        wait_for(d, lambda d: row(d, cid), f"connection {cid} in the table")
        assert "open" in row(d, cid).text

        # The rule switch drives the API, and through it the wire.
        rule_switch(d, "web", "slow").click()
        wait_until(lambda: api.ok_json("GET", "/api/proxies/web/rules/slow")["enabled"], WAIT,
                   "rule slow enabled by the page")
        assert round_trip(s) >= 0.28  # the rule reached the open connection
        wait_for(d, lambda d: rule_switch(d, "web", "slow").is_selected(), "switch on")
        rule_switch(d, "web", "slow").click()
        wait_until(lambda: not api.ok_json("GET", "/api/proxies/web/rules/slow")["enabled"], WAIT,
                   "rule slow disabled by the page")

        # A fault on this one connection, from the dialog; then lifted.
        click_in_row(d, cid, "button.act-fault")
        dialog = d.find_element(B.ID, "fault-dialog")
        wait_for(d, lambda d: dialog.get_attribute("open") is not None, "the fault dialog")
        from selenium.webdriver.support.ui import Select
        Select(d.find_element(B.ID, "fault-preset")).select_by_visible_text(
            "latency 500 ms downstream")
        assert '"delay":"500ms"' in d.find_element(B.ID, "fault-body").get_attribute("value")
        shot(d, "fault-dialog")
        d.find_element(B.ID, "fault-apply").click()
        wait_until(lambda: {"rule": "@api", "fault": "latency"} in
                   api.ok_json("GET", f"/api/proxies/web/connections/{cid}")["faults"], WAIT,
                   "latency applied from the page")
        # The page closes the dialog once its request's answer reaches it, which may trail the
        # API's state that was just read.
        wait_for(d, lambda d: dialog.get_attribute("open") is None, "the fault dialog closed")
        assert round_trip(s) >= 0.45
        click_in_row(d, cid, "button.act-lift")
        wait_until(lambda: round_trip(s) < 0.2, WAIT, "latency lifted from the page", poll=0.1)
        wait_for(d, lambda d: "latency" in row(d, cid).find_element(B.CSS_SELECTOR, "td.faults").text,
                 "the applied fault listed on the row")
        shot(d, "desktop")

        # Reset it from the page: the client sees ECONNRESET.
        click_in_row(d, cid, "button.act-reset")
        outcome, _, _ = read_outcome(s, 5)
        assert outcome == "reset"
    proc.wait_for_log("fault injected", conn=cid, rule="@api", fault="reset")

    # The timeline shows what was done, and the row goes.
    def timeline_has(kind, fault=""):
        return lambda d: any(fault in li.text for li in d.find_elements(
            B.CSS_SELECTOR, f'#timeline li[data-kind="{kind}"][data-conn="{cid}"]'))
    wait_for(d, timeline_has("fault", "reset"), "the reset on the timeline")
    wait_for(d, timeline_has("fault", "latency"), "the latency on the timeline")
    wait_for(d, timeline_has("closed"), "the connection's end on the timeline")
    wait_for(d, lambda d: row(d, cid) is None, "the row gone")
    shot(d, "after-reset")
    assert severe_console_errors(d) == []

    # A phone: readable without sideways scrolling.
    d.set_window_size(390, 844)
    d.refresh()
    wait_for(d, lambda d: d.find_elements(B.CSS_SELECTOR, 'article.proxy[data-proxy="web"]'),
             "the proxy card on a phone")
    wait_for(d, lambda d: d.find_elements(B.CSS_SELECTOR, "#timeline li"), "timeline on a phone")
    overflow = d.execute_script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth")
    shot(d, "phone")
    assert overflow <= 0, f"the page is {overflow}px wider than a 390px phone screen"
    d.set_window_size(1280, 1000)


@pytest.mark.timeout(60)
def test_page_asks_for_the_token_once(tcpfault, servers, browser):
    d = browser
    B = by()
    rec = Recorder(servers, reply=echo_reply, close_on_eof=True)
    proc, api = start_with_admin(tcpfault, [{
        "name": "web", "upstream": rec.addr,
        "rules": ["{name: slow, enabled: false, fault: {type: latency, delay: 1ms}}"]}],
        token="t0ken")
    d.get(api.base + "/")
    d.execute_script("sessionStorage.clear()")
    d.refresh()
    wait_for(d, lambda d: d.find_elements(B.CSS_SELECTOR, 'input.rule-switch[data-rule="slow"]'),
             "the rule switch")
    rule_switch(d, "web", "slow").click()
    dialog = d.find_element(B.ID, "token-dialog")
    wait_for(d, lambda d: dialog.get_attribute("open") is not None, "the token dialog")
    assert not api.ok_json("GET", "/api/proxies/web/rules/slow")["enabled"]
    shot(d, "token-dialog")
    d.find_element(B.ID, "token-input").send_keys("t0ken")
    d.find_element(B.ID, "token-save").click()
    wait_until(lambda: api.ok_json("GET", "/api/proxies/web/rules/slow")["enabled"], WAIT,
               "rule enabled once the token was given")
    assert d.execute_script("return sessionStorage.getItem('tcpfault.token')") == "t0ken"
    # The second change does not ask again.
    wait_for(d, lambda d: rule_switch(d, "web", "slow").is_selected()
             and rule_switch(d, "web", "slow").is_enabled(), "switch on")
    rule_switch(d, "web", "slow").click()
    wait_until(lambda: not api.ok_json("GET", "/api/proxies/web/rules/slow")["enabled"], WAIT,
               "rule disabled with the kept token")
    assert dialog.get_attribute("open") is None
    d.execute_script("sessionStorage.clear()")


@pytest.mark.timeout(90)
def test_page_with_10000_connections(tcpfault, servers, browser):
    """The page lists 10,000 connections a page of 50 at a time and pages through them. (As in
    test_connection_api: a cap rule holds all but one, for the machine's file limit.)"""
    d = browser
    B = by()
    limit = raise_nofile_limit()
    n = 10_000
    if limit < n + 500:
        pytest.skip(f"needs {n + 500} file descriptors (RLIMIT_NOFILE is {limit})")
    echo = servers.selector_echo()
    proc, api = start_with_admin(tcpfault, [{
        "name": "web", "upstream": echo.addr,
        "rules": ["{name: hold, fault: {type: cap, max: 1, over: hold}}"]}])
    socks = []
    try:
        for _ in range(n):
            socks.append(connect(proc.addr("web")))
        wait_until(lambda: api.proxy("web")["active_connections"] == n, 30, f"{n} open", poll=0.1)
        t0 = time.monotonic()
        d.get(api.base + "/")
        d.get_log("browser")  # what earlier tests left
        wait_for(d, lambda d: "10,000 open" in d.find_element(B.ID, "conn-summary").text,
                 "10,000 open in the summary")
        loaded = time.monotonic() - t0
        rows = d.find_elements(B.CSS_SELECTOR, "tr.conn")
        assert len(rows) == 50
        first_ids = [int(r.get_attribute("data-conn-id")) for r in rows]
        assert first_ids == sorted(first_ids)
        t0 = time.monotonic()
        d.find_element(B.ID, "page-next").click()
        wait_for(d, lambda d: int(d.find_elements(B.CSS_SELECTOR, "tr.conn")[0]
                                  .get_attribute("data-conn-id")) > first_ids[-1],
                 "the second page")
        paged = time.monotonic() - t0
        shot(d, "10000-connections")
        print(f"\n10000 connections: page shown {loaded * 1000:.0f} ms after load, next page "
              f"in {paged * 1000:.0f} ms")
        assert loaded < 5 and paged < 3
        assert severe_console_errors(d) == []
    finally:
        for s in socks:
            s.close()
