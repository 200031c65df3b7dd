"""Helpers for the admin API / metrics / reload integration tests (test_admin_*.py).

Builds on helpers.py / conftest.py (not changed here): a config builder with the admin server
on 127.0.0.1:0, an HTTP client on http.client (a real HTTP/1.1 client; one connection per
call), raw-socket HTTP for requests no client library sends, and a parser for the Prometheus
text exposition format.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import time
import urllib.request
from typing import Optional

from helpers import LOOPBACK, parse_addr

# --------------------------------------------------------------------------------------------
# configuration


def admin_yaml(proxies: list[dict], token: Optional[str] = None, level: str = "info",
               top_extra: str = "") -> str:
    """A config with the admin server on 127.0.0.1:0 and JSON logs. Each proxy is a dict with
    name, upstream and optionally listen (default 127.0.0.1:0), extra (YAML lines of the proxy
    mapping) and rules (a list of YAML flow mappings, e.g. '{name: r, fault: {type: reset}}')."""
    admin = "admin:\n  listen: 127.0.0.1:0\n"
    if token is not None:
        admin += f'  token: "{token}"\n'
    out = [admin.rstrip("\n"), f"log: {{format: json, level: {level}}}"]
    if top_extra:
        out.append(top_extra)
    out.append("proxies:")
    for p in proxies:
        out += [f"  - name: {p['name']}", f"    listen: {p.get('listen', '127.0.0.1:0')}",
                f'    upstream: "{p["upstream"]}"']
        for line in p.get("extra", "").splitlines():
            out.append("    " + line)
        rules = p.get("rules") or []
        if rules:
            out.append("    rules:")
            out += [f"      - {r}" for r in rules]
        else:
            out.append("    rules: []")
    return "\n".join(out) + "\n"


def admin_port(proc, timeout: float = 10.0) -> int:
    """The admin port from the 'admin listening' log line."""
    rec = proc.wait_for_log("admin listening", timeout=timeout)[0]
    host, port = parse_addr(rec["addr"])
    assert host == LOOPBACK and port != 0, f"unexpected admin address in {rec}"
    return port


def start_with_admin(tcpfault, proxies: list[dict], token: Optional[str] = None, **kw):
    """Starts tcpfault from admin_yaml(...); waits for every proxy and the admin server.
    Returns (process, Admin client)."""
    p = tcpfault.from_config(admin_yaml(proxies, token=token, **kw), listening=len(proxies))
    return p, Admin(admin_port(p), token=token)


# --------------------------------------------------------------------------------------------
# HTTP


class Response:
    def __init__(self, status: int, headers: dict, body: bytes):
        self.status = status
        self.headers = headers  # lower-cased names
        self.body = body

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError as e:
            raise AssertionError(f"response body is not JSON ({e}): {self.body[:500]!r}")

    def __repr__(self) -> str:
        return f"<HTTP {self.status} {self.body[:300]!r}>"


class Admin:
    """A client for tcpfault's admin server (http.client; a new connection per call)."""

    def __init__(self, port: int, token: Optional[str] = None, host: str = LOOPBACK):
        self.host = host
        self.port = port
        self.token = token

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    def request(self, method: str, path: str, body=None, headers: Optional[dict] = None,
                auth: object = "default", timeout: float = 10.0) -> Response:
        """auth: "default" sends the client's token (if any); None sends no Authorization
        header; a string sends "Bearer <string>"."""
        hdrs = dict(headers or {})
        tok = self.token if auth == "default" else auth
        if tok is not None:
            hdrs["Authorization"] = f"Bearer {tok}"
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        elif isinstance(body, (str, bytes)):
            # Rule bodies in tests are YAML or JSON text; the API refuses a body without a
            # JSON or YAML Content-Type (browser protection, docs/security.md).
            if isinstance(body, str):
                body = body.encode()
            hdrs.setdefault("Content-Type", "application/yaml")
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=hdrs)
            r = conn.getresponse()
            data = r.read()
            return Response(r.status, {k.lower(): v for k, v in r.getheaders()}, data)
        finally:
            conn.close()

    def get(self, path: str, **kw) -> Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, body=None, **kw) -> Response:
        return self.request("POST", path, body=body, **kw)

    def put(self, path: str, body=None, **kw) -> Response:
        return self.request("PUT", path, body=body, **kw)

    def delete(self, path: str, **kw) -> Response:
        return self.request("DELETE", path, **kw)

    def ok_json(self, method: str, path: str, body=None, status: int = 200):
        r = self.request(method, path, body=body)
        assert r.status == status, f"{method} {path}: expected {status}, got {r}"
        assert r.headers.get("content-type", "").startswith("application/json"), \
            f"{method} {path}: content-type {r.headers.get('content-type')!r}"
        return r.json()

    def proxy(self, name: str) -> dict:
        return self.ok_json("GET", f"/api/proxies/{name}")

    def connections(self, name: str) -> list:
        return self.ok_json("GET", f"/api/proxies/{name}/connections")

    def scrape(self) -> "Metrics":
        """GET /metrics with urllib (what a scraper does); parsed."""
        with urllib.request.urlopen(self.base + "/metrics", timeout=10) as r:
            assert r.status == 200
            ctype = r.headers.get("Content-Type", "")
            body = r.read().decode("utf-8")
        assert ctype.startswith("text/plain") and "version=0.0.4" in ctype, \
            f"/metrics content-type {ctype!r}"
        return parse_prometheus(body)

    def wait_metric(self, name: str, value: float, timeout: float = 5.0, **labels) -> "Metrics":
        """Scrapes until the sample has this value (the proxy folds some counters in at scrape
        time after connections close); returns the last scrape."""
        deadline = time.monotonic() + timeout
        while True:
            m = self.scrape()
            got = m.value(name, **labels)
            if got == value:
                return m
            if time.monotonic() >= deadline:
                raise AssertionError(f"{name}{labels} is {got}, expected {value} "
                                     f"(waited {timeout}s)")
            time.sleep(0.05)  # polled: a scrape is the only way to observe the value


def raw_http(port: int, data: bytes, timeout: float = 5.0) -> tuple[int, bytes]:
    """Sends raw bytes to the admin port and reads the answer until EOF (or until a complete
    response with Content-Length has arrived). Returns (status, raw response)."""
    s = socket.create_connection((LOOPBACK, port), timeout=timeout)
    try:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer and close before reading everything
        buf = b""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            s.settimeout(left)
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                break
            if not chunk:
                break
            buf += chunk
            head, sep, body = buf.partition(b"\r\n\r\n")
            if sep:
                m = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
                if m and len(body) >= int(m.group(1)):
                    break
    finally:
        s.close()
    m = re.match(rb"HTTP/1\.[01] (\d{3}) ", buf)
    assert m, f"no HTTP status line in the answer: {buf[:300]!r}"
    return int(m.group(1)), buf


def response_json(raw: bytes):
    return json.loads(raw.partition(b"\r\n\r\n")[2])


# --------------------------------------------------------------------------------------------
# Prometheus text format


class Family:
    def __init__(self, name: str):
        self.name = name
        self.help: Optional[str] = None
        self.type: Optional[str] = None
        self.samples: list[tuple[str, dict, float]] = []  # (sample name, labels, value)


class Metrics:
    def __init__(self, families: dict, text: str):
        self.families = families
        self.text = text

    def samples(self, name: str) -> list[tuple[dict, float]]:
        """Every sample with this exact sample name (e.g. x_bucket), with its labels."""
        out = []
        for f in self.families.values():
            out += [(labels, v) for n, labels, v in f.samples if n == name]
        return out

    def value(self, name: str, **labels) -> Optional[float]:
        """The value of the sample whose labels are exactly `labels`; None if absent."""
        found = [v for lb, v in self.samples(name) if lb == labels]
        assert len(found) <= 1, f"duplicate series {name}{labels}"
        return found[0] if found else None

    def need(self, name: str, **labels) -> float:
        v = self.value(name, **labels)
        assert v is not None, f"no series {name}{labels} in /metrics:\n{self.text}"
        return v


_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(rf"^({_NAME})(\{{(.*)\}})?\s+(\S+)(\s+-?\d+)?$")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(,|$)')


def _unescape(v: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "\\": "\\", '"': '"'}.get(m.group(1),
                                                                         "\\" + m.group(1)), v)


def _parse_labels(s: str) -> dict:
    labels: dict = {}
    pos = 0
    while pos < len(s):
        m = _LABEL.match(s, pos)
        if not m:
            raise AssertionError(f"malformed label set {{{s}}} at {pos}")
        assert m.group(1) not in labels, f"label {m.group(1)} twice in {{{s}}}"
        labels[m.group(1)] = _unescape(m.group(2))
        pos = m.end()
    return labels


def _parse_value(s: str) -> float:
    if s in ("+Inf", "Inf"):
        return float("inf")
    if s == "-Inf":
        return float("-inf")
    return float(s)  # NaN included


def _family_of(sample: str, families: dict) -> Optional[Family]:
    if sample in families:
        return families[sample]
    for suffix in ("_bucket", "_sum", "_count"):
        if sample.endswith(suffix):
            base = families.get(sample[: -len(suffix)])
            if base is not None and base.type in ("histogram", "summary"):
                return base
    return None


def parse_prometheus(text: str) -> Metrics:
    """Parses the text exposition format (version 0.0.4) strictly: every sample must belong
    to a family announced by # TYPE before it; values must be numbers."""
    families: dict[str, Family] = {}
    assert text.endswith("\n"), "exposition does not end with a newline"
    for lineno, line in enumerate(text.split("\n")[:-1], 1):
        if not line.strip():
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                name = parts[2]
                assert re.fullmatch(_NAME, name), f"line {lineno}: bad metric name {name!r}"
                fam = families.setdefault(name, Family(name))
                rest = parts[3] if len(parts) > 3 else ""
                if parts[1] == "HELP":
                    assert fam.help is None, f"line {lineno}: second HELP for {name}"
                    fam.help = rest
                else:
                    assert fam.type is None, f"line {lineno}: second TYPE for {name}"
                    assert not fam.samples, f"line {lineno}: TYPE after samples of {name}"
                    assert rest in ("counter", "gauge", "histogram", "summary", "untyped"), \
                        f"line {lineno}: bad type {rest!r}"
                    fam.type = rest
            continue  # other comments are allowed
        m = _SAMPLE.match(line)
        assert m, f"line {lineno}: not a sample line: {line!r}"
        name, labels_s, value_s = m.group(1), m.group(3), m.group(4)
        fam = _family_of(name, families)
        assert fam is not None and fam.type is not None, \
            f"line {lineno}: sample {name} without a preceding # TYPE"
        labels = _parse_labels(labels_s) if labels_s else {}
        try:
            value = _parse_value(value_s)
        except ValueError:
            raise AssertionError(f"line {lineno}: bad value {value_s!r}")
        fam.samples.append((name, labels, value))
    return Metrics(families, text)
