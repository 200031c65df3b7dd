"""The Docker / Kubernetes files in docker/ agree with each other and with tcpfault.

What the real image build proves is not repeated here: tests/image/check-image.py builds the
image (podman, every COPY through the Dockerfile's own ignore file), checks its config, its
libraries against install-deps.sh's runtime list, its size and contents, and runs it (--check,
a transfer, the HEALTHCHECK, SIGTERM). What stays here needs no image:

- the runtime stage installs packages only through `install-deps.sh runtime` (the one list);
- the healthcheck script reports a non-200 answer as unhealthy (the image run only sees 200
  and nothing listening); the rig's recipe script parses;
- compose.yaml and prometheus.yml: files, ports, configs passing `tcpfault --check`, addresses;
- docker/k8s (kustomize): the example is rendered with `kubectl kustomize` (also with the
  PodMonitor component), every object is validated against the Kubernetes OpenAPI schemas
  (npm kubernetes-models and @kubernetes-models/prometheus-operator, offline, tests/k8s/) and
  checked for unknown fields against the API models of Debian's python3-kubernetes; then the
  sidecar's wiring: its config checks and is watched, mounted as a directory, probes, ports,
  the Services' selectors and targets, Prometheus, security context.

Environment: TCPFAULT_BIN, TCPFAULT_SOURCE_DIR (see conftest.py); TCPFAULT_NODE_CACHE (where
the npm packages are installed, default ~/.cache/tcpfault/k8s-node).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import socket
import subprocess
import threading
from functools import lru_cache
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

import pytest

try:
    import yaml
except ImportError as e:  # pragma: no cover
    raise ImportError("these tests need PyYAML: apt-get install python3-yaml") from e

from helpers import BIN, SOURCE_DIR

DOCKER = SOURCE_DIR / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
COMPOSE = DOCKER / "compose.yaml"
PROMETHEUS = DOCKER / "prometheus.yml"
K8S = DOCKER / "k8s"
K8S_EXAMPLE = K8S / "example"
K8S_NODE_DIR = SOURCE_DIR / "tests" / "k8s"
HEALTHCHECK = DOCKER / "tcpfault-healthcheck"
IMAGE_CONFIG = DOCKER / "tcpfault.yaml"
CONFIG_IN_IMAGE = "/etc/tcpfault/tcpfault.yaml"
ADMIN_PORT = 9474

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}")


# ---------------------------------------------------------------------------------------------
# helpers: tcpfault configs

def expand_defaults(text: str) -> str:
    """${VAR:-default} -> default, ${VAR} -> "" (what tcpfault sees with VAR unset)."""
    return _VAR.sub(lambda m: m.group(3) or "", text)


def env_without_config_vars(text: str) -> dict:
    env = dict(os.environ)
    for m in _VAR.finditer(text):
        env.pop(m.group(1), None)
    return env


def split_addr(addr: str) -> tuple[str, int]:
    host, _, port = str(addr).rpartition(":")
    return host.strip("[]"), int(port)


class TcpfaultConfig:
    """A tcpfault config file as the container would see it with its variables unset."""

    def __init__(self, text: str, origin: str):
        self.text = text
        self.origin = origin
        self.data = yaml.safe_load(expand_defaults(text)) or {}
        admin = (self.data.get("admin") or {}).get("listen", f"127.0.0.1:{ADMIN_PORT}")
        self.admin_port: Optional[int] = None if admin == "off" else split_addr(admin)[1]
        self.admin_host = None if admin == "off" else split_addr(admin)[0]
        self.proxies = {p["name"]: p for p in self.data.get("proxies") or []}

    def listen_ports(self) -> dict[str, int]:
        return {n: split_addr(p["listen"])[1] for n, p in self.proxies.items()}

    def ports(self) -> set[int]:
        """Every port the process listens on: proxies and the admin API."""
        ports = set(self.listen_ports().values())
        if self.admin_port is not None:
            ports.add(self.admin_port)
        return ports

    def rule_names(self, proxy: str) -> set[str]:
        return {r["name"] for r in self.proxies.get(proxy, {}).get("rules") or []}


def check_config(path: Path) -> None:
    """`tcpfault --check -c path` passes with every ${VAR} it uses unset (so the defaults
    apply), and every ${VAR} has a default."""
    text = path.read_text()
    no_default = sorted({m.group(1) for m in _VAR.finditer(text) if m.group(2) is None})
    assert not no_default, f"{path}: ${{VAR}} without a default (use ${{VAR:-...}}): {no_default}"
    if not BIN.is_file():
        pytest.fail(f"tcpfault binary not found at {BIN} (set TCPFAULT_BIN or build it: "
                    f"ninja -C build tcpfault)", pytrace=False)
    r = subprocess.run([str(BIN), "--check", "-c", str(path)], capture_output=True, text=True,
                       timeout=20, env=env_without_config_vars(text), stdin=subprocess.DEVNULL)
    assert r.returncode == 0, f"tcpfault --check -c {path} exited {r.returncode}:\n{r.stderr}"


def rel(path: Path) -> str:
    try:
        return str(path.relative_to(SOURCE_DIR))
    except ValueError:
        return str(path)


# ---------------------------------------------------------------------------------------------
# helpers: Dockerfile


class Instruction:
    def __init__(self, lineno: int, keyword: str, args: str):
        self.lineno, self.keyword, self.args = lineno, keyword, args


def parse_dockerfile(path: Path) -> list[list[Instruction]]:
    """Instructions grouped by stage (each list starts with its FROM). Handles comments,
    blank lines and backslash continuations (comment lines inside a continuation are dropped,
    as Docker does)."""
    stages: list[list[Instruction]] = []
    pending, start = "", 0
    for lineno, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not pending:
            start = lineno
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        ins = Instruction(start, keyword.upper(), args.strip())
        if ins.keyword == "FROM":
            stages.append([])
        assert stages, f"{path}:{start}: {ins.keyword} before the first FROM"
        stages[-1].append(ins)
    return stages


def image_user(final: list[Instruction]) -> str:
    users = [i.args for i in final if i.keyword == "USER"]
    return users[-1] if users else "root"


# ---------------------------------------------------------------------------------------------
# helpers: compose


def load_compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def is_tcpfault_service(svc: dict) -> bool:
    build = svc.get("build")
    if isinstance(build, dict) and str(build.get("dockerfile", "")).endswith("docker/Dockerfile"):
        return True
    return "tcpfault" in str(svc.get("image", "")).split("/")[-1].split(":")[0]


def netns_owner(name: str, svc: dict) -> str:
    mode = str(svc.get("network_mode", ""))
    return mode.split(":", 1)[1] if mode.startswith("service:") else name


def container_ports(svc: dict) -> dict[int, Optional[int]]:
    """container port -> published host port (None if only exposed to the network)."""
    out: dict[int, Optional[int]] = {}
    for p in svc.get("ports") or []:
        if isinstance(p, dict):
            out[int(p["target"])] = int(p["published"]) if p.get("published") else None
            continue
        p = str(p).split("/")[0]
        parts = p.split(":")
        target = int(parts[-1])
        out[target] = int(parts[-2]) if len(parts) >= 2 else None
    return out


def bind_mounts(svc: dict) -> list[tuple[str, str]]:
    """(host path as written, container path) of every bind mount."""
    out = []
    for v in svc.get("volumes") or []:
        if isinstance(v, dict):
            if v.get("type") == "bind":
                out.append((v["source"], v["target"]))
            continue
        parts = str(v).split(":")
        if len(parts) >= 2 and parts[0].startswith((".", "/", "~")):
            out.append((parts[0], parts[1]))
    return out


def compose_path(p: str) -> Path:
    return (COMPOSE.parent / p).resolve()


def compose_tcpfaults() -> dict[str, tuple[dict, TcpfaultConfig, Path]]:
    """Every tcpfault service -> (service, its config, the config's path)."""
    out = {}
    for name, svc in load_compose()["services"].items():
        if not is_tcpfault_service(svc):
            continue
        mounts = {target: src for src, target in bind_mounts(svc)}
        if CONFIG_IN_IMAGE in mounts:
            path = compose_path(mounts[CONFIG_IN_IMAGE])
        elif "/etc/tcpfault" in mounts:
            path = compose_path(mounts["/etc/tcpfault"]) / "tcpfault.yaml"
        else:
            path = IMAGE_CONFIG
        out[name] = (svc, TcpfaultConfig(path.read_text(), rel(path)), path)
    return out


# ---------------------------------------------------------------------------------------------
# helpers: kubernetes


@lru_cache(maxsize=None)
def _render(kustomization_dir: str) -> tuple:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl (with its built-in kustomize, v4 or later for components) is needed "
                    "to render docker/k8s; it comes with this kind of machine", pytrace=False)
    r = subprocess.run([kubectl, "kustomize", kustomization_dir], capture_output=True, text=True,
                       timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, f"kubectl kustomize {kustomization_dir}:\n{r.stderr}"
    return tuple(d for d in yaml.safe_load_all(r.stdout) if d)


def k8s_example() -> list[dict]:
    """docker/k8s/example as `kubectl apply -k` would send it."""
    return list(_render(str(K8S_EXAMPLE)))


@pytest.fixture(scope="module")
def k8s_with_podmonitor(tmp_path_factory) -> list[dict]:
    """The example plus the PodMonitor component, from an overlay outside the tree (kustomize
    wants relative paths)."""
    d = tmp_path_factory.mktemp("overlay")
    rel_k8s = os.path.relpath(K8S, d)
    (d / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources: [{rel_k8s}/example]\ncomponents: [{rel_k8s}/podmonitor]\n")
    return list(_render(str(d)))


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def k8s_tcpfault_containers(docs: list[dict]):
    """(deployment, pod spec, tcpfault container, its config text, config origin)."""
    configmaps = {d["metadata"]["name"]: d for d in by_kind(docs, "ConfigMap")}
    out = []
    for d in docs:
        if d["kind"] not in ("Deployment", "StatefulSet", "DaemonSet"):
            continue
        pod = d["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod.get("volumes") or []}
        for c in pod["containers"]:
            if "tcpfault" not in c["image"].split("/")[-1].split(":")[0]:
                continue
            args = list(c.get("command") or []) + list(c.get("args") or [])
            cfg = args[args.index("-c") + 1] if "-c" in args else CONFIG_IN_IMAGE
            text = origin = None
            for m in c.get("volumeMounts") or []:
                vol = volumes[m["name"]]
                if "configMap" not in vol or not cfg.startswith(m["mountPath"].rstrip("/") + "/"):
                    continue
                # A subPath mount is never updated by the kubelet: the watch would see nothing.
                assert "subPath" not in m and "subPathExpr" not in m, \
                    f"container {c['name']}: the config's ConfigMap is mounted with subPath"
                key = cfg[len(m["mountPath"].rstrip("/")) + 1:]
                cm = configmaps.get(vol["configMap"]["name"])
                assert cm is not None, f"ConfigMap {vol['configMap']['name']} is not rendered"
                assert key in cm.get("data", {}), \
                    f"-c {cfg}, but ConfigMap {cm['metadata']['name']} has no key {key}"
                text, origin = cm["data"][key], f"ConfigMap {cm['metadata']['name']}/{key}"
            assert text is not None, \
                f"container {c['name']} reads {cfg}, which no ConfigMap mount provides"
            out.append((d, pod, c, text, origin))
    return out


def pod_selected(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


# --- schema validation: npm kubernetes-models (tests/k8s/validate.mjs) ----------------------


def _node_modules() -> Path:
    """node_modules with tests/k8s/package.json's packages, installed once into a cache."""
    npm = shutil.which("npm")
    if shutil.which("node") is None or npm is None:
        pytest.fail("node and npm are needed to validate the manifests (tests/k8s)",
                    pytrace=False)
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    cache = Path(os.environ.get("TCPFAULT_NODE_CACHE") or default / "tcpfault" / "k8s-node")
    cache.mkdir(parents=True, exist_ok=True)
    pkg = (K8S_NODE_DIR / "package.json").read_text()
    marker = cache / "node_modules" / "kubernetes-models" / "package.json"
    with open(cache / ".lock", "w") as lock:  # parallel runs share the cache
        fcntl.flock(lock, fcntl.LOCK_EX)
        current = cache / "package.json"
        if not marker.is_file() or not current.is_file() or current.read_text() != pkg:
            current.write_text(pkg)
            r = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--no-package-lock"],
                               cwd=cache, capture_output=True, text=True, timeout=600,
                               stdin=subprocess.DEVNULL)
            if r.returncode != 0 or not marker.is_file():
                current.unlink(missing_ok=True)
                pytest.fail(f"npm install of tests/k8s/package.json failed ({r.returncode}):\n"
                            f"{r.stdout}\n{r.stderr}", pytrace=False)
    return cache / "node_modules"


def schema_errors(docs: list[dict], tmp_path: Path) -> dict[str, str]:
    """Kind/name -> the schema validator's complaint, for every object it rejects."""
    path = tmp_path / "objects.json"
    path.write_text(json.dumps(docs))
    r = subprocess.run(["node", str(K8S_NODE_DIR / "validate.mjs"), str(path),
                        str(_node_modules())], capture_output=True, text=True, timeout=120,
                       stdin=subprocess.DEVNULL)
    lines = r.stdout.splitlines()
    assert len(lines) == len(docs), f"validate.mjs:\n{r.stdout}\n{r.stderr}"
    bad = {}
    for line in lines:
        m = re.match(r"INVALID (\S+): (.*)", line)
        if m:
            bad[m.group(1)] = m.group(2)
    assert (r.returncode != 0) == bool(bad), f"validate.mjs exit {r.returncode}:\n{r.stdout}"
    return bad


# --- unknown fields: Debian's python3-kubernetes API models ----------------------------------

_LIST = re.compile(r"^list\[(.+)\]$")
_DICT = re.compile(r"^dict\(str, (.+)\)$")


def unknown_fields(doc: dict) -> list[str]:
    """Paths of fields the Kubernetes API does not have (a typo the OpenAPI schemas let through
    and `kubectl apply` would reject as an unknown field). Objects of kinds the client does
    not model (custom resources) are not looked into."""
    try:
        from kubernetes import client
    except ImportError:
        pytest.fail("python3-kubernetes is needed (docker/install-deps.sh test)", pytrace=False)
    version = doc["apiVersion"].rpartition("/")[2]
    model = getattr(client, version[:1].upper() + version[1:] + doc["kind"], None)
    if model is None:
        return []
    out: list[str] = []

    def walk(value, typ: str, path: str) -> None:
        if (m := _LIST.match(typ)) and isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, m.group(1), f"{path}[{i}]")
            return
        if (m := _DICT.match(typ)) and isinstance(value, dict):
            for k, v in value.items():
                walk(v, m.group(1), f"{path}.{k}")
            return
        cls = getattr(client, typ, None)
        if cls is None or not isinstance(value, dict):
            return  # a scalar, or `object` (int-or-string, quantities): the schemas check them
        fields = {json_key: attr for attr, json_key in cls.attribute_map.items()}
        for k, v in value.items():
            if k not in fields:
                out.append(f"{path}.{k}")
            else:
                walk(v, cls.openapi_types[fields[k]], f"{path}.{k}")

    walk(doc, model.__name__, f"{doc['kind']}/{doc['metadata']['name']}")
    return out


def resolve_port(port, containers: list[dict]) -> int:
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for c in containers:
        for p in c.get("ports") or []:
            if p.get("name") == port:
                return int(p["containerPort"])
    raise AssertionError(f"named port {port!r} is not declared by any container of the pod")


# =============================================================================================
# Dockerfile and scripts: what the image build and run do not show


def test_runtime_stage_installs_only_the_runtime_list():
    """One package list: the runtime stage's libraries come from `install-deps.sh runtime`."""
    final = parse_dockerfile(DOCKERFILE)[-1]
    runs = [i.args for i in final if i.keyword == "RUN"]
    assert any("install-deps.sh runtime" in r for r in runs), \
        "the runtime stage must install its libraries with `install-deps.sh runtime`"
    for r in runs:
        assert not re.search(r"apt(-get)?\s+install", r), \
            f"the runtime stage installs packages besides install-deps.sh runtime: {r}"


def test_recipe_script_parses():
    script = DOCKER / "rig" / "run-recipes.sh"
    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, f"bash -n {rel(script)}:\n{r.stderr}"


class _OneShotHttp:
    """Answers every connection with a fixed status line, then closes."""

    def __init__(self, status: bytes):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.status = status
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with c:
                c.settimeout(2)
                try:
                    c.recv(4096)
                    c.sendall(self.status + b"\r\nContent-Length: 0\r\n\r\n")
                except OSError:
                    pass

    def close(self):
        self.sock.close()


def run_healthcheck(addr: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, TCPFAULT_HEALTHCHECK_ADDR=addr)
    return subprocess.run(["bash", str(HEALTHCHECK)], capture_output=True, text=True, env=env,
                          timeout=15, stdin=subprocess.DEVNULL)


def test_healthcheck_reports_a_non_200_as_unhealthy():
    """The image run sees the healthy answer and nothing listening; a server that answers
    with an error must fail the check too, and name the answer."""
    bad = _OneShotHttp(b"HTTP/1.1 503 Service Unavailable")
    try:
        r = run_healthcheck(f"127.0.0.1:{bad.port}")
        assert r.returncode == 1 and "503" in r.stderr, (r.returncode, r.stderr)
    finally:
        bad.close()


# =============================================================================================
# compose.yaml


def test_compose_services_and_referenced_files():
    c = load_compose()
    services = c["services"]
    tf = compose_tcpfaults()
    assert len(tf) >= 2, f"expected tcpfault in front of the SMTP and FTP servers, got {list(tf)}"
    assert any(str(s.get("network_mode", "")).startswith("service:") for s, _, _ in tf.values()), \
        "one tcpfault should be a sidecar (network_mode: service:...)"
    assert any("prom/prometheus" in str(s.get("image", "")) for s in services.values())
    assert "client" in services

    for name, svc in services.items():
        build = svc.get("build")
        if build:
            ctx = compose_path(build["context"] if isinstance(build, dict) else build)
            assert ctx.is_dir(), f"service {name}: build context {ctx} does not exist"
            if isinstance(build, dict) and build.get("dockerfile"):
                df = ctx / build["dockerfile"]
                assert df.resolve() == DOCKERFILE.resolve(), f"service {name}: dockerfile {df}"
        for src, target in bind_mounts(svc):
            assert compose_path(src).exists(), f"service {name}: volume {src}:{target} missing"
        for env_file in ([svc["env_file"]] if isinstance(svc.get("env_file"), str)
                         else svc.get("env_file") or []):
            assert compose_path(env_file).exists(), f"service {name}: env_file {env_file}"
        mode = str(svc.get("network_mode", ""))
        if mode.startswith("service:"):
            assert mode.split(":", 1)[1] in services, f"service {name}: {mode}: no such service"
            assert not svc.get("ports"), \
                f"service {name} shares another's network: publish ports on {mode[8:]} instead"
        deps = svc.get("depends_on") or []
        for dep in deps:
            assert dep in services, f"service {name} depends on unknown service {dep}"

    # The client runs a mounted script.
    client = services["client"]
    mounts = {t: compose_path(s) for s, t in bind_mounts(client)}
    cmd = " ".join(client.get("command") or [])
    script = next((t for t in mounts if t in cmd), None)
    assert script, f"client's command {cmd!r} runs no mounted file"
    assert mounts[script].is_file()


@pytest.mark.parametrize("service", list(compose_tcpfaults()))
def test_compose_tcpfault_config_checks(service):
    _, _, path = compose_tcpfaults()[service]
    check_config(path)


def test_compose_ports_match_tcpfault_configs():
    services = load_compose()["services"]
    published_host: dict[int, str] = {}
    for name, svc in services.items():
        for target, host in container_ports(svc).items():
            if host is not None:
                assert host not in published_host, \
                    f"host port {host} published by both {published_host[host]} and {name}"
                published_host[host] = name

    tf = compose_tcpfaults()
    for name, (svc, cfg, _) in tf.items():
        owner = netns_owner(name, svc)
        ports = container_ports(services[owner])
        missing = cfg.ports() - set(ports)
        assert not missing, (f"{cfg.origin} (service {name}) listens on {sorted(cfg.ports())}; "
                             f"service {owner} does not publish {sorted(missing)}")
        if owner == name:
            extra = set(ports) - cfg.ports()
            assert not extra, f"service {name} publishes {sorted(extra)}, which tcpfault does not listen on"
        assert cfg.admin_port == ADMIN_PORT and cfg.admin_host in ("0.0.0.0", "::"), \
            f"{cfg.origin}: the admin API must listen on 0.0.0.0:{ADMIN_PORT} in the rig"
        # Upstreams: the server in the same namespace (sidecar) or another compose service.
        for pname, p in cfg.proxies.items():
            host, port = split_addr(p["upstream"])
            if owner != name:
                assert host in ("127.0.0.1", "localhost", "::1"), \
                    f"{cfg.origin}: sidecar proxy {pname} should forward to 127.0.0.1, not {host}"
                assert port not in cfg.ports(), f"{cfg.origin}: proxy {pname} forwards to itself"
            else:
                assert host in services and host not in tf, \
                    f"{cfg.origin}: proxy {pname} upstream {host} is not a server of the rig"


def _tcpfault_in_netns(service: str):
    for name, (svc, cfg, _) in compose_tcpfaults().items():
        if netns_owner(name, svc) == service:
            return cfg
    return None


def test_compose_client_addresses_point_at_tcpfault():
    client = load_compose()["services"]["client"]
    env = client.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    addrs = {k: v for k, v in env.items() if k.endswith("_ADDR")}
    admins = {k: v for k, v in env.items() if k.endswith("_ADMIN")}
    assert addrs and admins, "the client's environment names no tcpfault addresses"
    for k, v in addrs.items():
        host, port = split_addr(v)
        cfg = _tcpfault_in_netns(host)
        assert cfg, f"client {k}={v}: no tcpfault listens in service {host}'s network"
        assert port in cfg.listen_ports().values(), f"client {k}={v}: tcpfault there listens on " \
                                                    f"{sorted(cfg.listen_ports().values())}"
    for k, v in admins.items():
        u = urlparse(v)
        cfg = _tcpfault_in_netns(u.hostname)
        assert cfg and u.port == cfg.admin_port, f"client {k}={v}: not a tcpfault admin API"


def test_recipes_use_rules_that_exist():
    """run-recipes.sh switches rules by name: each must exist in the rig config of its proxy."""
    script = (DOCKER / "rig" / "run-recipes.sh").read_text()
    rules: dict[str, set] = {}
    for _, cfg, _ in compose_tcpfaults().values():
        for proxy in cfg.proxies:
            rules.setdefault(proxy, set()).update(cfg.rule_names(proxy))
    used = set(re.findall(r"/api/proxies/([a-z0-9_-]+)/rules/([a-z0-9_-]+)/", script))
    used |= set(re.findall(r"\bfired\s+\"\$\w+\"\s+([a-z0-9_-]+)\s+([a-z0-9_-]+)", script))
    assert used, "run-recipes.sh switches no rules?"
    for proxy, rule in sorted(used):
        assert proxy in rules, f"run-recipes.sh uses proxy {proxy}; the rig has {sorted(rules)}"
        assert rule in rules[proxy], f"run-recipes.sh uses rule {proxy}/{rule}, not in the config"


def test_prometheus_targets_are_the_tcpfault_admin_ports():
    prom = yaml.safe_load(PROMETHEUS.read_text())
    targets = set()
    for job in prom["scrape_configs"]:
        assert job.get("metrics_path", "/metrics") == "/metrics"
        for sc in job.get("static_configs") or []:
            targets.update(sc["targets"])
    expected = {f"{netns_owner(n, svc)}:{cfg.admin_port}"
                for n, (svc, cfg, _) in compose_tcpfaults().items()}
    assert targets == expected, f"prometheus.yml scrapes {sorted(targets)}, " \
                                f"the tcpfault admin APIs are {sorted(expected)}"
    services = load_compose()["services"]
    prom_svc = next(s for s in services.values() if "prom/prometheus" in str(s.get("image", "")))
    mounts = {t: compose_path(s) for s, t in bind_mounts(prom_svc)}
    assert mounts.get("/etc/prometheus/prometheus.yml") == PROMETHEUS.resolve()


# =============================================================================================
# Kubernetes: the kustomize components and the example


def test_k8s_example_renders_with_the_sidecar(k8s_with_podmonitor):
    docs = k8s_example()
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["ConfigMap", "Deployment", "Service", "Service"], kinds
    assert len(k8s_tcpfault_containers(docs)) == 1, "the example's Deployment has no tcpfault"
    assert sorted(d["kind"] for d in k8s_with_podmonitor) == sorted(kinds + ["PodMonitor"])


def test_k8s_objects_match_the_api_schemas(k8s_with_podmonitor, tmp_path):
    bad = schema_errors(k8s_with_podmonitor, tmp_path)
    assert not bad, "objects the Kubernetes / Prometheus Operator schemas reject:\n" + \
        "\n".join(f"  {k}: {v}" for k, v in bad.items())
    # The validator does validate: a wrong type, a missing required field, a bad enum value.
    broken = json.loads(json.dumps(k8s_with_podmonitor))
    dep = by_kind(broken, "Deployment")[0]
    dep["spec"]["replicas"] = "two"
    del dep["spec"]["template"]["spec"]["containers"][0]["name"]
    svc = by_kind(broken, "Service")[0]
    svc["spec"]["ports"][0]["port"] = "25"
    pm = by_kind(broken, "PodMonitor")[0]
    pm["spec"]["podMetricsEndpoints"][0]["scheme"] = "gopher"
    bad = schema_errors(broken, tmp_path)
    assert set(bad) == {f"Deployment/{dep['metadata']['name']}",
                        f"Service/{svc['metadata']['name']}", "PodMonitor/tcpfault"}, bad
    assert "replicas" in bad[f"Deployment/{dep['metadata']['name']}"]
    assert "name" in bad[f"Deployment/{dep['metadata']['name']}"]


def test_k8s_objects_have_no_unknown_fields(k8s_with_podmonitor):
    unknown = [p for d in k8s_with_podmonitor for p in unknown_fields(d)]
    assert not unknown, f"fields the Kubernetes API does not have: {unknown}"
    # The check does check: a misspelt field, deep inside the pod.
    broken = json.loads(json.dumps(k8s_example()))
    dep = by_kind(broken, "Deployment")[0]
    tf = dep["spec"]["template"]["spec"]["containers"][-1]
    tf["readinessProbe"]["httpGet"]["paht"] = "/healthz"
    tf["securityContext"]["runAsNonroot"] = True
    assert sorted(p.rsplit(".", 1)[1] for p in unknown_fields(dep)) == ["paht", "runAsNonroot"]


def test_k8s_tcpfault_config_checks_and_is_watched(tmp_path):
    for i, (_, _, c, text, origin) in enumerate(k8s_tcpfault_containers(k8s_example())):
        path = tmp_path / f"k8s-{i}.yaml"
        path.write_text(text)
        check_config(path)
        args = list(c.get("command") or []) + list(c.get("args") or [])
        data = yaml.safe_load(expand_defaults(text))
        assert "--watch" in args or data.get("watch") is True, \
            f"{origin}: the sidecar must watch its ConfigMap (--watch or watch: true)"


def test_k8s_sidecar_ports_probes_services_security(k8s_with_podmonitor):
    docs = k8s_with_podmonitor
    final = parse_dockerfile(DOCKERFILE)[-1]
    image_uid = int(image_user(final).split(":")[0])
    services = by_kind(docs, "Service")
    (dep, pod, c, text, origin), = k8s_tcpfault_containers(docs)
    cfg = TcpfaultConfig(text, origin)
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert pod_selected(dep["spec"]["selector"]["matchLabels"], labels)

    # The admin API: declared, probed, on every interface.
    assert cfg.admin_host in ("0.0.0.0", "::"), f"{origin}: probes need admin on 0.0.0.0"
    assert {int(p["containerPort"]) for p in c["ports"]} == {cfg.admin_port}
    admin_name = next(p["name"] for p in c["ports"] if p["containerPort"] == cfg.admin_port)
    for kind in ("livenessProbe", "readinessProbe"):
        probe = c.get(kind)
        assert probe and probe["httpGet"]["path"] == "/healthz", f"{kind}: GET /healthz"
        assert resolve_port(probe["httpGet"]["port"], [c]) == cfg.admin_port, kind

    # The headless admin Service selects exactly this Deployment's pods.
    admin_svc = next(s for s in services if s["metadata"]["name"] == "tcpfault")
    assert admin_svc["spec"].get("clusterIP") == "None"
    assert admin_svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert [resolve_port(p["targetPort"], pod["containers"])
            for p in admin_svc["spec"]["ports"]] == [cfg.admin_port]

    # The application's Service now sends its clients to a tcpfault proxy, which forwards to
    # the application's container over the pod's loopback.
    app_svc = next(s for s in services if s is not admin_svc)
    assert pod_selected(app_svc["spec"]["selector"], labels)
    proxy_ports = cfg.listen_ports()
    for sp in app_svc["spec"]["ports"]:
        target = resolve_port(sp["targetPort"], pod["containers"])
        assert target in proxy_ports.values(), \
            f"Service {app_svc['metadata']['name']} port {sp['port']} -> {target}, " \
            f"not a tcpfault proxy ({proxy_ports})"
    app_ports = {int(p["containerPort"]) for o in pod["containers"] if o is not c
                 for p in o.get("ports") or []}
    for name, p in cfg.proxies.items():
        host, port = split_addr(p["upstream"])
        assert host in ("127.0.0.1", "localhost", "::1") and port in app_ports, \
            f"{origin}: proxy {name} forwards to {host}:{port}, not to the app container"

    # Prometheus: the annotations, and the PodMonitor on the same pods and port.
    ann = dep["spec"]["template"]["metadata"].get("annotations") or {}
    assert ann.get("prometheus.io/scrape") == "true"
    assert int(ann.get("prometheus.io/port", 0)) == cfg.admin_port
    assert ann.get("prometheus.io/path", "/metrics") == "/metrics"
    (pm,) = by_kind(docs, "PodMonitor")
    assert pod_selected(pm["spec"]["selector"]["matchLabels"], labels)
    assert [(e["port"], e.get("path", "/metrics")) for e in pm["spec"]["podMetricsEndpoints"]] \
        == [(admin_name, "/metrics")]

    sc = {**(pod.get("securityContext") or {}), **(c.get("securityContext") or {})}
    assert sc.get("runAsNonRoot") is True and sc.get("runAsUser", image_uid) == image_uid
    assert sc.get("readOnlyRootFilesystem") is True
    # No escalation beyond NET_ADMIN (for the packet faults: the image's binary holds it as a
    # permitted file capability, which needs no_new_privs off): every other capability
    # dropped from the bounding set.
    caps = sc.get("capabilities") or {}
    assert caps.get("drop") == ["ALL"], caps
    assert caps.get("add", []) in ([], ["NET_ADMIN"]), caps
    assert sc.get("allowPrivilegeEscalation") is (caps.get("add") == ["NET_ADMIN"]), sc
    res = c.get("resources") or {}
    assert res.get("requests") and res.get("limits")
    # SIGTERM: open connections get shutdown_grace to finish before the kubelet's SIGKILL.
    grace = pod.get("terminationGracePeriodSeconds", 30)
    assert grace > int(str(cfg.data.get("shutdown_grace", "5s")).rstrip("s"))
    # The application's container stays the pod's first (kubectl logs/exec default to it).
    assert pod["containers"][-1] is c and len(pod["containers"]) >= 2
