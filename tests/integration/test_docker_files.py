"""The Docker / Kubernetes files in docker/ agree with each other and with tcpfault.

No Docker engine is needed: compose.yaml, prometheus.yml and every manifest in docker/k8s/ are
parsed (python3-yaml) and cross-checked; every tcpfault config they use passes
`tcpfault --check`; the Dockerfile is read instruction by instruction; the image's healthcheck
script is run against a real tcpfault; and the Dockerfile's build stage (docker/build-steps.sh)
is run on this host in a copy of exactly the files the Dockerfile COPYs, after which the
binary's shared libraries are mapped to Debian packages and compared with install-deps.sh's
runtime list.

Environment: TCPFAULT_BIN, TCPFAULT_SOURCE_DIR (see conftest.py); TCPFAULT_SKIP_IMAGE_BUILD=1
skips the build-steps run (it is also skipped when TCPFAULT_BIN is a sanitizer build: the
suite's ASan pass would only repeat the normal pass's Release build).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

import pytest

try:
    import yaml
except ImportError as e:  # pragma: no cover
    raise ImportError("these tests need PyYAML: apt-get install python3-yaml") from e

from helpers import BIN, SOURCE_DIR, free_port

DOCKER = SOURCE_DIR / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
COMPOSE = DOCKER / "compose.yaml"
PROMETHEUS = DOCKER / "prometheus.yml"
K8S = DOCKER / "k8s"
INSTALL_DEPS = DOCKER / "install-deps.sh"
BUILD_STEPS = DOCKER / "build-steps.sh"
HEALTHCHECK = DOCKER / "tcpfault-healthcheck"
IMAGE_CONFIG = DOCKER / "tcpfault.yaml"
CONFIG_IN_IMAGE = "/etc/tcpfault/tcpfault.yaml"
ADMIN_PORT = 9474

# Libraries the runtime stage does not install because debian:12-slim already has them
# (both are pulled in by the base system: libc6 is Essential, libgcc-s1 comes with it). Every
# other package that owns a library `ldd` lists must be in install-deps.sh's runtime list, and
# every package in that list must own one of them.
BASE_IMAGE_PACKAGES = {"libc6", "libgcc-s1"}

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

    def flags_and_words(self) -> tuple[dict, list[str]]:
        """`COPY --from=build --chmod=0755 a b` -> ({"from": "build", "chmod": "0755"}, [a, b])."""
        flags, words = {}, []
        for w in self.args.split():
            if w.startswith("--") and not words:
                k, _, v = w[2:].partition("=")
                flags[k] = v
            else:
                words.append(w)
        return flags, words

    def exec_form(self) -> Optional[list]:
        """The JSON array of an exec-form ENTRYPOINT/CMD/HEALTHCHECK CMD, else None."""
        import json
        text = self.args
        if self.keyword == "HEALTHCHECK":
            m = re.search(r"\bCMD\s+(.*)$", text)
            text = m.group(1) if m else ""
        try:
            v = json.loads(text)
        except ValueError:
            return None
        return v if isinstance(v, list) else None


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


def stage_name(stage: list[Instruction]) -> str:
    m = re.search(r"\bAS\s+(\S+)", stage[0].args, re.IGNORECASE)
    return m.group(1) if m else ""


def stage_image(stage: list[Instruction]) -> str:
    return stage[0].args.split()[0]


def context_copies(stages) -> list[tuple[Instruction, list[str], str]]:
    """(instruction, sources, destination) of every COPY/ADD that reads the build context."""
    out = []
    for stage in stages:
        for ins in stage:
            if ins.keyword in ("COPY", "ADD"):
                flags, words = ins.flags_and_words()
                if "from" in flags:
                    continue
                out.append((ins, words[:-1], words[-1]))
    return out


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


def k8s_docs() -> list[tuple[Path, dict]]:
    docs = []
    for path in sorted(K8S.glob("*.y*ml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path, doc))
    return docs


def k8s_tcpfault_containers():
    """(deployment, pod spec, tcpfault container, its config text, config origin)."""
    docs = k8s_docs()
    configmaps = {d["metadata"]["name"]: d for _, d in docs if d["kind"] == "ConfigMap"}
    out = []
    for path, d in docs:
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
                key = cfg[len(m["mountPath"].rstrip("/")) + 1:]
                cm = configmaps.get(vol["configMap"]["name"])
                assert cm is not None, \
                    f"{rel(path)}: ConfigMap {vol['configMap']['name']} is not defined in docker/k8s"
                assert key in cm.get("data", {}), \
                    f"{rel(path)}: -c {cfg}, but ConfigMap {cm['metadata']['name']} has no key {key}"
                text, origin = cm["data"][key], f"ConfigMap {cm['metadata']['name']}/{key}"
            assert text is not None, \
                f"{rel(path)}: container {c['name']} reads {cfg}, which no ConfigMap mount provides"
            out.append((d, pod, c, text, origin))
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
# Dockerfile


def test_dockerfile_stages_user_healthcheck_expose():
    stages = parse_dockerfile(DOCKERFILE)
    assert len(stages) >= 2, "docker/Dockerfile must be multi-stage (build, runtime)"
    build, final = stages[0], stages[-1]
    assert re.fullmatch(r"debian:(12|bookworm)(\.\d+)?", stage_image(build)), \
        f"build stage is FROM {stage_image(build)}, expected debian:12"
    assert re.fullmatch(r"debian:(12|bookworm)(\.\d+)?-slim", stage_image(final)), \
        f"runtime stage is FROM {stage_image(final)}, expected debian:12-slim"

    build_runs = " ; ".join(i.args for i in build if i.keyword == "RUN")
    assert "install-deps.sh build" in build_runs
    assert "build-steps.sh" in build_runs, "the build stage must run docker/build-steps.sh"

    # The runtime stage installs only install-deps.sh's runtime list.
    runs = [i.args for i in final if i.keyword == "RUN"]
    assert any("install-deps.sh runtime" in r for r in runs), \
        "the runtime stage must install its libraries with `install-deps.sh runtime`"
    for r in runs:
        assert not re.search(r"apt(-get)?\s+install", r), \
            f"the runtime stage installs packages besides install-deps.sh runtime: {r}"

    user = image_user(final)
    assert user.split(":")[0] not in ("root", "0"), "the image must not run as root"
    uid = user.split(":")[0]
    assert uid.isdigit(), f"USER {user}: use the numeric uid so runAsNonRoot can verify it"
    assert any(re.search(rf"useradd\b.*--uid\s+{uid}\b", r) for r in runs), \
        f"no `useradd --uid {uid}` in the runtime stage"

    hc = [i for i in final if i.keyword == "HEALTHCHECK"]
    assert hc, "the runtime stage has no HEALTHCHECK"
    hc_cmd = hc[-1].exec_form()
    assert hc_cmd, "HEALTHCHECK CMD must be exec form"
    copied = {dest: srcs for _, srcs, dest in context_copies([final])}
    assert copied.get(hc_cmd[0]) == ["docker/tcpfault-healthcheck"], \
        f"HEALTHCHECK runs {hc_cmd[0]}, which is not COPYed from docker/tcpfault-healthcheck"

    exposed = {int(p.split("/")[0]) for i in final if i.keyword == "EXPOSE" for p in i.args.split()}
    assert ADMIN_PORT in exposed, f"EXPOSE lacks the admin port {ADMIN_PORT}"
    cfg = TcpfaultConfig(IMAGE_CONFIG.read_text(), rel(IMAGE_CONFIG))
    assert cfg.ports() <= exposed, f"{rel(IMAGE_CONFIG)} listens on {cfg.ports()}, EXPOSE {exposed}"
    assert cfg.admin_host in ("0.0.0.0", "::"), \
        "in a container the admin API must listen on every interface"
    assert copied.get(CONFIG_IN_IMAGE) == ["docker/tcpfault.yaml"]

    stop = [i.args for i in final if i.keyword == "STOPSIGNAL"]
    assert stop and stop[-1] in ("SIGTERM", "15")
    entry = [i for i in final if i.keyword == "ENTRYPOINT"]
    assert entry and entry[-1].exec_form(), \
        "ENTRYPOINT must be exec form so tcpfault is PID 1 and gets SIGTERM itself"
    binary = entry[-1].exec_form()[0]
    assert any(i.keyword == "COPY" and i.flags_and_words()[0].get("from") == stage_name(build)
               and i.flags_and_words()[1][-1] == binary for i in final), \
        f"ENTRYPOINT {binary} is not copied from the build stage"
    cmd = [i for i in final if i.keyword == "CMD"]
    assert cmd and cmd[-1].exec_form() == ["-c", CONFIG_IN_IMAGE]


def test_dockerfile_context_files_exist_and_are_not_ignored():
    stages = parse_dockerfile(DOCKERFILE)
    ignore = DOCKERFILE.with_name(DOCKERFILE.name + ".dockerignore")
    lines = [ln.strip() for ln in ignore.read_text().splitlines()
             if ln.strip() and not ln.strip().startswith("#")]
    assert lines and lines[0] == "*", f"{rel(ignore)} should ignore everything, then allow"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    for ins, srcs, _ in context_copies(stages):
        for src in srcs:
            assert (SOURCE_DIR / src).exists(), f"Dockerfile:{ins.lineno}: COPY {src}: no such file"
            s = src.rstrip("/")
            assert s == "." or any(s == a or s.startswith(a + "/") for a in allowed), \
                f"Dockerfile:{ins.lineno}: COPY {src}, but {rel(ignore)} keeps it out of the context"


def test_image_default_config_checks():
    check_config(IMAGE_CONFIG)


def test_scripts_parse():
    for script in (BUILD_STEPS, HEALTHCHECK, DOCKER / "rig" / "run-recipes.sh", INSTALL_DEPS):
        r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert r.returncode == 0, f"bash -n {rel(script)}:\n{r.stderr}"
    assert os.access(HEALTHCHECK, os.X_OK), f"{rel(HEALTHCHECK)} must be executable"


# ---------------------------------------------------------------------------------------------
# The healthcheck script against a real tcpfault running the image's default config.


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


@pytest.mark.timeout(60)
def test_healthcheck_script(tcpfault, monkeypatch):
    # The image's own config, with its proxy on a free loopback port and JSON logs.
    monkeypatch.setenv("TCPFAULT_LISTEN", "127.0.0.1:0")
    monkeypatch.setenv("TCPFAULT_LOG_FORMAT", "json")
    monkeypatch.delenv("TCPFAULT_TOKEN", raising=False)
    admin = f"127.0.0.1:{free_port()}"
    p = tcpfault.spawn(["-c", str(IMAGE_CONFIG), "--admin", admin])
    p.wait_listening(1)
    deadline = time.monotonic() + 10
    while True:  # the admin listener may come up just after the proxies
        r = run_healthcheck(admin)
        if r.returncode == 0 or time.monotonic() > deadline or not p.running():
            break
        time.sleep(0.1)
    assert r.returncode == 0, f"healthcheck against a healthy tcpfault: {r.returncode} {r.stderr}"

    bad = _OneShotHttp(b"HTTP/1.1 503 Service Unavailable")
    try:
        r = run_healthcheck(f"127.0.0.1:{bad.port}")
        assert r.returncode == 1 and "503" in r.stderr, (r.returncode, r.stderr)
    finally:
        bad.close()
    r = run_healthcheck(f"127.0.0.1:{free_port()}")
    assert r.returncode == 1, "healthcheck with nothing listening must fail"


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
# Kubernetes manifests


def test_k8s_manifests_parse():
    docs = k8s_docs()
    kinds = {d["kind"] for _, d in docs}
    assert {"ConfigMap", "Deployment", "Service"} <= kinds, f"docker/k8s has {sorted(kinds)}"
    for path, d in docs:
        assert d.get("apiVersion") and d.get("metadata", {}).get("name"), \
            f"{rel(path)}: {d.get('kind')} without apiVersion or metadata.name"
    assert k8s_tcpfault_containers(), "no Deployment runs a tcpfault container"


def test_k8s_tcpfault_configs_check(tmp_path):
    for i, (_, _, c, text, origin) in enumerate(k8s_tcpfault_containers()):
        path = tmp_path / f"k8s-{i}-{c['name']}.yaml"
        path.write_text(text)
        check_config(path)


def test_k8s_ports_probes_annotations_security():
    final = parse_dockerfile(DOCKERFILE)[-1]
    image_uid = int(image_user(final).split(":")[0])
    services = [d for _, d in k8s_docs() if d["kind"] == "Service"]
    for dep, pod, c, text, origin in k8s_tcpfault_containers():
        cfg = TcpfaultConfig(text, origin)
        where = f"{dep['metadata']['name']}/{c['name']}"
        cports = {int(p["containerPort"]) for p in c.get("ports") or []}
        assert cports == cfg.ports(), \
            f"{where}: containerPorts {sorted(cports)}, {origin} listens on {sorted(cfg.ports())}"
        assert cfg.admin_host in ("0.0.0.0", "::"), f"{origin}: probes need admin on 0.0.0.0"

        for kind in ("livenessProbe", "readinessProbe"):
            probe = c.get(kind)
            assert probe and "httpGet" in probe, f"{where}: no httpGet {kind}"
            assert probe["httpGet"]["path"] == "/healthz"
            assert resolve_port(probe["httpGet"]["port"], [c]) == cfg.admin_port, \
                f"{where}: {kind} port is not the admin port {cfg.admin_port}"

        ann = dep["spec"]["template"]["metadata"].get("annotations") or {}
        assert ann.get("prometheus.io/scrape") == "true"
        assert int(ann.get("prometheus.io/port", 0)) == cfg.admin_port, \
            f"{where}: prometheus.io/port {ann.get('prometheus.io/port')} != {cfg.admin_port}"
        assert ann.get("prometheus.io/path", "/metrics") == "/metrics"

        sc = {**(pod.get("securityContext") or {}), **(c.get("securityContext") or {})}
        assert sc.get("runAsNonRoot") is True, f"{where}: runAsNonRoot"
        assert sc.get("runAsUser", image_uid) == image_uid, \
            f"{where}: runAsUser {sc.get('runAsUser')}, the image's user is {image_uid}"
        res = c.get("resources") or {}
        assert res.get("requests") and res.get("limits"), f"{where}: resources requests/limits"

        # Sidecar upstreams reach another container of the pod over loopback.
        others = {int(p["containerPort"]) for o in pod["containers"] if o is not c
                  for p in o.get("ports") or []}
        for pname, p in cfg.proxies.items():
            host, port = split_addr(p["upstream"])
            if host in ("127.0.0.1", "localhost", "::1"):
                assert port in others, f"{origin}: proxy {pname} forwards to {host}:{port}, " \
                                       f"which no other container of the pod declares"

        # Every tcpfault port is reachable through a Service selecting this pod, by targetPort.
        labels = dep["spec"]["template"]["metadata"]["labels"]
        targets = set()
        for s in services:
            sel = s["spec"].get("selector") or {}
            if sel and all(labels.get(k) == v for k, v in sel.items()):
                for sp in s["spec"]["ports"]:
                    targets.add(resolve_port(sp.get("targetPort", sp["port"]), pod["containers"]))
        assert targets, f"{where}: no Service selects this pod"
        assert cfg.ports() <= targets, \
            f"{where}: Service targetPorts {sorted(targets)} miss {sorted(cfg.ports() - targets)}"


# =============================================================================================
# The Dockerfile's build stage, run on this host; the runtime library list.


def _sanitized(binary: Path) -> bool:
    try:
        out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "libasan" in out or "libubsan" in out


@pytest.fixture(scope="module")
def image_build(tmp_path_factory):
    """Runs docker/build-steps.sh in a directory holding only the files the Dockerfile COPYs
    (so a missing COPY shows up here), as the build stage does. Returns the output dir."""
    if os.environ.get("TCPFAULT_SKIP_IMAGE_BUILD") == "1":
        pytest.skip("TCPFAULT_SKIP_IMAGE_BUILD=1")
    if _sanitized(BIN):
        pytest.skip("sanitizer pass: the Release image build runs in the normal pass")
    root = tmp_path_factory.mktemp("image-build")
    ctx, out = root / "src", root / "out"
    for _, srcs, dest in context_copies(parse_dockerfile(DOCKERFILE)[:1]):
        for src in srcs:
            s = SOURCE_DIR / src
            d = ctx / src.rstrip("/")
            d.parent.mkdir(parents=True, exist_ok=True)
            if s.is_dir():
                shutil.copytree(s, d)
            else:
                shutil.copy2(s, d)
    try:
        r = subprocess.run(["bash", "docker/build-steps.sh", str(out)], cwd=ctx, timeout=240,
                           capture_output=True, text=True, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"docker/build-steps.sh did not finish in 240s:\n{(e.stdout or b'')[-3000:]}")
    log = r.stdout + r.stderr
    assert r.returncode == 0, f"docker/build-steps.sh exited {r.returncode}:\n{log[-6000:]}"
    return out, log


@pytest.mark.timeout(300)
def test_build_steps_produce_a_stripped_binary(image_build):
    out, log = image_build
    binary = out / "tcpfault"
    assert binary.is_file() and os.access(binary, os.X_OK)
    r = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=10)
    assert r.returncode == 0 and r.stdout.startswith("tcpfault "), r
    sections = subprocess.run(["readelf", "-S", str(binary)], capture_output=True, text=True).stdout
    assert ".symtab" not in sections and ".debug_info" not in sections, \
        "the image's binary is not stripped"
    cache = (out / "build" / "CMakeCache.txt").read_text()
    assert "CMAKE_BUILD_TYPE:STRING=Release" in cache
    assert "CMAKE_GENERATOR:INTERNAL=Ninja" in cache
    assert (out / "ldd.txt").read_text().strip(), "build-steps.sh printed no ldd output"


def _runtime_list() -> list[str]:
    m = re.search(r"^runtime=\(([^)]*)\)", INSTALL_DEPS.read_text(), re.MULTILINE)
    assert m, "install-deps.sh has no runtime=(...) list"
    return m.group(1).split()


def _dpkg_owner(path: str) -> Optional[str]:
    """The Debian package owning a library path; tries the /usr-merged twins too."""
    cands = []
    for p in (path, os.path.realpath(path)):
        cands.append(p)
        cands.append(p[4:] if p.startswith("/usr/") else "/usr" + p)
    for p in cands:
        r = subprocess.run(["dpkg-query", "-S", p], capture_output=True, text=True)
        if r.returncode == 0 and r.stdout.strip():
            return r.stdout.split(":", 1)[0].strip().split(",")[0].strip()
    return None


@pytest.mark.timeout(300)
def test_runtime_list_is_exactly_the_libraries_the_binary_loads(image_build):
    out, _ = image_build
    ldd = subprocess.run(["ldd", str(out / "tcpfault")], capture_output=True, text=True,
                         timeout=20).stdout
    owners: dict[str, list[str]] = {}
    for line in ldd.splitlines():
        line = line.strip()
        m = re.match(r"(\S+) => (\S+) \(", line) or re.match(r"(/\S+) \(", line)
        if not m:
            assert "linux-vdso" in line or "linux-gate" in line or not line, f"ldd: {line}"
            continue
        path = m.group(m.lastindex)
        assert path != "not", f"ldd: {line}"
        pkg = _dpkg_owner(path)
        assert pkg, f"{path} (from ldd) belongs to no Debian package"
        owners.setdefault(pkg, []).append(os.path.basename(path))
    runtime = set(_runtime_list())
    needed = set(owners) - BASE_IMAGE_PACKAGES
    missing = needed - runtime
    assert not missing, ("install-deps.sh's runtime list lacks "
                         + ", ".join(f"{p} ({', '.join(owners[p])})" for p in sorted(missing)))
    extra = runtime - set(owners)
    assert not extra, f"install-deps.sh's runtime list has packages the binary does not load: " \
                      f"{sorted(extra)} (ldd: {sorted(owners)})"
