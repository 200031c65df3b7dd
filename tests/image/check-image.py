#!/usr/bin/env python3
"""Builds the tcpfault image (docker/build-image.sh: podman, a local mmdebstrap base) and runs it.

`podman run` cannot start containers on our machines (crun cannot set rlimits there), so the
image is run by hand the way a container runtime would: the image's root filesystem is mounted
(podman create + podman mount), and its ENTRYPOINT + CMD are started in it with chroot, as the
image's USER, with only the image's environment, as PID 1 of a new PID namespace with its own
/proc, in a network namespace of its own (so the image's fixed ports 8080 and 9474 are free, as
in a container). Checked:

  image     USER is numeric and not root, ENTRYPOINT/CMD exec form, HEALTHCHECK, EXPOSE covers
            the default config's ports, STOPSIGNAL SIGTERM
  contents  every library the binary loads is found in the image (ldd in the image), and the
            packages owning them are exactly docker/install-deps.sh's runtime list (plus libc6
            and libgcc-s1 of the base); the binary is stripped; no compiler, binutils, make,
            cmake or -dev package; image size and what the image adds to its base are bounded
  --check   `tcpfault --check` on the image's default config passes (as uid 10001)
  run       the image's HEALTHCHECK command fails while nothing listens; tcpfault starts with
            the image's default config and entrypoint arguments (TCPFAULT_UPSTREAM pointing at
            a server outside the image), runs as uid 10001 and as PID 1; a transfer both ways
            through it keeps its SHA-256; the HEALTHCHECK command then passes; SIGTERM makes it
            exit 0 with "stopped" logged

    python3 tests/image/check-image.py [--tag TAG] [--no-build]

As root (chroot, namespaces, podman's store). Exits 1 if the build or any check fails; the
last line is "image: N passed, N failed". tests/run-all.sh runs it unless SKIP_IMAGE=1.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

SOURCE = Path(__file__).resolve().parents[2]
INSTALL_DEPS = SOURCE / "docker" / "install-deps.sh"
UID = 10001
# Bounds: the slim base is ~77 MB; tcpfault adds its binary and three small libraries (~3 MB).
# A compiler, a build tree or apt's lists left in the image would blow through these.
MAX_IMAGE_BYTES = 110 * 1000 * 1000
MAX_ADDED_BYTES = 15 * 1000 * 1000
# Owners of libraries the binary loads that the base image already has (libc6 is Essential,
# libgcc-s1 comes with it); every other owner must be in install-deps.sh's runtime list.
BASE_PACKAGES = {"libc6", "libgcc-s1"}
COMPILERS = ["gcc", "g++", "cc", "c++", "cpp", "clang", "clang++", "as", "ld", "make", "cmake",
             "ninja", "x86_64-linux-gnu-gcc-12"]
BUILD_PACKAGE = re.compile(r"^(build-essential|gcc(-\d+)?|g\+\+(-\d+)?|cpp(-\d+)?|binutils.*|"
                           r"clang.*|make|cmake|ninja-build|libc6-dev|.*-dev)$")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}")


class Results:
    def __init__(self):
        self.passed = 0
        self.failed: list[str] = []

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        if ok:
            self.passed += 1
            print(f"ok   - {name}", flush=True)
        else:
            self.failed.append(name)
            print(f"FAIL - {name}" + (f": {detail}" if detail else ""), flush=True)
        return ok


def run(cmd, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    kw.setdefault("stdin", subprocess.DEVNULL)
    kw.setdefault("timeout", 120)
    return subprocess.run(cmd, **kw)


def image_env(cfg: dict, extra: dict | None = None) -> dict:
    env = dict(e.split("=", 1) for e in cfg.get("Env") or [])
    env.update(extra or {})
    return env


def user_spec(user: str) -> str:
    uid, _, gid = user.partition(":")
    return f"{uid}:{gid or uid}"


def default_config(root: Path) -> dict:
    """The image's default config as tcpfault reads it with no variable set."""
    text = (root / "etc/tcpfault/tcpfault.yaml").read_text()
    return yaml.safe_load(_VAR.sub(lambda m: m.group(3) or "", text)) or {}


def port_of(addr: str) -> int:
    return int(str(addr).rpartition(":")[2])


# ---------------------------------------------------------------------------------------------
# Outside the network namespace: build, inspect, mount, static checks.


def inspect(tag: str) -> dict:
    r = run(["podman", "image", "inspect", tag])
    if r.returncode != 0:
        raise SystemExit(f"podman image inspect {tag}: {r.stderr}")
    return json.loads(r.stdout)[0]


def runtime_list() -> set[str]:
    m = re.search(r"^runtime=\(([^)]*)\)", INSTALL_DEPS.read_text(), re.MULTILINE)
    return set(m.group(1).split()) if m else set()


def check_image_config(res: Results, info: dict, root: Path) -> None:
    cfg = info["Config"]
    user = cfg.get("User") or info.get("User") or ""
    uid = user.split(":")[0]
    res.check("USER is numeric, not root, uid 10001", uid.isdigit() and int(uid) == UID,
              f"USER {user!r}")
    entry, cmd = cfg.get("Entrypoint") or [], cfg.get("Cmd") or []
    res.check("ENTRYPOINT is the tcpfault binary (exec form)",
              entry == ["/usr/local/bin/tcpfault"], f"{entry}")
    res.check("CMD is -c /etc/tcpfault/tcpfault.yaml", cmd == ["-c", "/etc/tcpfault/tcpfault.yaml"],
              f"{cmd}")
    hc = (info.get("Healthcheck") or {}).get("Test") or []
    res.check("HEALTHCHECK set", len(hc) >= 2 and hc[0] in ("CMD", "CMD-SHELL"), f"{hc}")
    res.check("STOPSIGNAL SIGTERM", cfg.get("StopSignal") in ("SIGTERM", "15"),
              f"{cfg.get('StopSignal')}")
    exposed = {int(p.split("/")[0]) for p in (cfg.get("ExposedPorts") or {})}
    conf = default_config(root)
    ports = {port_of(conf["admin"]["listen"])} | {port_of(p["listen"]) for p in conf["proxies"]}
    res.check("EXPOSE covers the default config's ports", ports <= exposed and bool(ports),
              f"config listens on {sorted(ports)}, EXPOSE {sorted(exposed)}")


def check_contents(res: Results, info: dict, root: Path, base_size: int) -> None:
    binary = "/usr/local/bin/tcpfault"
    r = run(["chroot", str(root), "ldd", binary])
    ldd = r.stdout
    res.check("ldd in the image finds every library", r.returncode == 0 and "not found" not in ldd,
              ldd + r.stderr)
    owners: dict[str, list[str]] = {}
    for line in ldd.splitlines():
        m = re.match(r"\s*(\S+) => (/\S+) \(", line) or re.match(r"\s*(/\S+) \(", line)
        if not m:
            continue
        path = m.group(m.lastindex)
        pkg = None
        for cand in (path, os.path.realpath(root / path.lstrip("/")).removeprefix(str(root)),
                     path.removeprefix("/usr") if path.startswith("/usr/") else "/usr" + path):
            q = run(["chroot", str(root), "dpkg-query", "-S", cand])
            if q.returncode == 0 and q.stdout.strip():
                pkg = q.stdout.split(":", 1)[0].split(",")[0].strip()
                break
        owners.setdefault(pkg or f"? ({path})", []).append(os.path.basename(path))
    needed = set(owners) - BASE_PACKAGES
    listed = runtime_list()
    res.check("install-deps.sh runtime list == packages of the libraries the binary loads",
              needed == listed,
              f"loaded from {sorted(needed)}, runtime list {sorted(listed)}")

    r = run(["readelf", "-S", str(root / binary.lstrip("/"))])
    res.check("the binary is stripped",
              r.returncode == 0 and ".symtab" not in r.stdout and ".debug_info" not in r.stdout,
              r.stderr or "has .symtab/.debug_info")

    found = []
    for d in ("usr/local/bin", "usr/bin", "usr/sbin", "bin", "sbin"):
        for name in COMPILERS:
            p = root / d / name
            if p.exists() or p.is_symlink():
                found.append(f"/{d}/{name}")
    r = run(["chroot", str(root), "dpkg-query", "-W", "-f", "${Package} ${Status}\\n"])
    pkgs = [ln.split()[0] for ln in r.stdout.splitlines() if ln.endswith("installed")]
    build_pkgs = [p for p in pkgs if BUILD_PACKAGE.match(p.split(":")[0])]
    res.check("no compiler, binutils, make/cmake or -dev package in the image",
              r.returncode == 0 and not found and not build_pkgs, f"{found} {build_pkgs}")

    size = int(info["Size"])
    print(f"     image {size / 1e6:.1f} MB, base {base_size / 1e6:.1f} MB, "
          f"added {(size - base_size) / 1e6:.1f} MB, {len(pkgs)} packages", flush=True)
    res.check(f"image size < {MAX_IMAGE_BYTES / 1e6:.0f} MB", size < MAX_IMAGE_BYTES, f"{size}")
    res.check(f"image adds < {MAX_ADDED_BYTES / 1e6:.0f} MB to its base",
              size - base_size < MAX_ADDED_BYTES, f"{size - base_size}")


def check_config_in_image(res: Results, info: dict, root: Path) -> None:
    cfg = info["Config"]
    r = run(["chroot", f"--userspec={user_spec(cfg['User'])}", str(root), *cfg["Entrypoint"],
             "--check", *cfg["Cmd"]], env=image_env(cfg), cwd="/")
    res.check("tcpfault --check on the image's default config, as the image's user",
              r.returncode == 0, f"exit {r.returncode}: {r.stderr.strip()}")


# ---------------------------------------------------------------------------------------------
# Inside the network namespace: the run.


class Server:
    """Reads until the client's FIN, then answers with the SHA-256 of what it got followed by
    `size` random bytes, then closes."""

    def __init__(self, size: int):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.payload = os.urandom(size)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with c:
                h = hashlib.sha256()
                while chunk := c.recv(1 << 16):
                    h.update(chunk)
                c.sendall(h.digest() + self.payload)


def transfer(port: int, up: bytes, timeout: float = 30) -> tuple[bytes, bytes]:
    """Sends `up`, half-closes, returns (the server's digest of it, the rest it sent)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        threading.Thread(target=lambda: (s.sendall(up), s.shutdown(socket.SHUT_WR)),
                         daemon=True).start()
        got = bytearray()
        while chunk := s.recv(1 << 16):
            got += chunk
    return bytes(got[:32]), bytes(got[32:])


def proc_children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(x) for x in (task / "children").read_text().split()]
    return out


def proc_status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        out[k] = v.strip()
    return out


def run_healthcheck(info: dict, root: Path, env: dict) -> subprocess.CompletedProcess:
    hc = info["Healthcheck"]
    test = hc["Test"]
    argv = test[1:] if test[0] == "CMD" else ["/bin/sh", "-c", test[1]]
    timeout = max(1.0, hc.get("Timeout", 30e9) / 1e9)
    try:
        return run(["chroot", f"--userspec={user_spec(info['Config']['User'])}", str(root),
                    *argv], env=env, cwd="/", timeout=timeout + 2)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(argv, 124, "", f"timed out after {timeout}s")


def in_netns(root: Path, info: dict, results_path: Path) -> int:
    res = Results()
    run(["ip", "link", "set", "lo", "up"], check=True)
    cfg = info["Config"]
    proxy_port = port_of(default_config(root)["proxies"][0]["listen"])

    server = Server(4 << 20)
    env = image_env(cfg, {"TCPFAULT_UPSTREAM": f"127.0.0.1:{server.port}"})
    r = run_healthcheck(info, root, env)
    res.check("HEALTHCHECK fails while nothing listens", r.returncode != 0,
              f"exit {r.returncode}")

    # As a runtime starts it: a new PID namespace (tcpfault is its PID 1) with its own /proc,
    # chroot into the image, the image's user, ENTRYPOINT + CMD, the image's environment.
    argv = ["unshare", "--pid", "--fork", "--kill-child", f"--mount-proc={root}/proc",
            "chroot", f"--userspec={user_spec(cfg['User'])}", str(root),
            *cfg["Entrypoint"], *cfg["Cmd"]]
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, env=env, cwd="/", stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log: list[str] = []
    started = threading.Event()
    stopped = threading.Event()

    def reader():
        for line in proc.stdout:
            log.append(line.rstrip("\n"))
            if re.search(r"\bstarted\b", line):
                started.set()
            if re.search(r"\bstopped\b", line):
                stopped.set()
        started.set()

    threading.Thread(target=reader, daemon=True).start()
    try:
        ok = started.wait(20) and proc.poll() is None
        if not res.check("tcpfault starts with the image's config and entrypoint arguments", ok,
                         "\n".join(log[-20:])):
            return finish(res, results_path)
        print(f"     started in {time.monotonic() - t0:.2f}s", flush=True)
        kids = proc_children(proc.pid)
        pid = kids[0] if kids else -1
        st = proc_status(pid) if pid > 0 else {}
        uids = st.get("Uid", "").split()
        res.check("it runs as uid 10001 (real, effective, saved)",
                  len(uids) == 4 and all(u == str(UID) for u in uids[:3]), f"Uid: {uids}")
        res.check("it is PID 1 of its PID namespace", st.get("NSpid", "").split()[-1:] == ["1"],
                  f"NSpid: {st.get('NSpid')}")

        up = os.urandom(3 << 20)
        digest, down = transfer(proxy_port, up)
        res.check("3 MiB up through the proxy: the server's SHA-256 matches",
                  digest == hashlib.sha256(up).digest())
        res.check("4 MiB down through the proxy: SHA-256 matches",
                  hashlib.sha256(down).digest() == hashlib.sha256(server.payload).digest(),
                  f"{len(down)} bytes received")

        r = run_healthcheck(info, root, env)
        res.check("the image's HEALTHCHECK command passes", r.returncode == 0,
                  f"exit {r.returncode}: {r.stderr.strip()}")

        os.kill(pid, signal.SIGTERM)
        try:
            code = proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            code = None
        stopped.wait(2)
        res.check("SIGTERM: exit 0, 'stopped' logged", code == 0 and stopped.is_set(),
                  f"exit {code}\n" + "\n".join(log[-20:]))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return finish(res, results_path)


def finish(res: Results, path: Path) -> int:
    path.write_text(json.dumps({"passed": res.passed, "failed": res.failed}))
    return 0


# ---------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tag", default="localhost/tcpfault:ci")
    ap.add_argument("--no-build", action="store_true", help="check an image built before")
    ap.add_argument("--in-netns", nargs=3, metavar=("ROOT", "INFO", "RESULTS"),
                    help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.in_netns:
        root, info, out = a.in_netns
        return in_netns(Path(root), json.loads(Path(info).read_text()), Path(out))
    if os.geteuid() != 0:
        print("check-image: needs root (chroot, namespaces, podman's store)", file=sys.stderr)
        return 1

    t0 = time.monotonic()
    if not a.no_build:
        r = subprocess.run(["bash", str(SOURCE / "docker" / "build-image.sh"), a.tag],
                           stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            print(f"check-image: the image build failed (exit {r.returncode})", file=sys.stderr)
            print("image: 0 passed, 1 failed")
            return 1
    t_build = time.monotonic() - t0

    res = Results()
    info = inspect(a.tag)
    base = inspect("docker.io/library/debian:12-slim")
    ctr = run(["podman", "create", "--no-healthcheck", a.tag], check=True).stdout.strip()
    try:
        root = Path(run(["podman", "mount", ctr], check=True).stdout.strip())
        check_image_config(res, info, root)
        check_contents(res, info, root, int(base["Size"]))
        check_config_in_image(res, info, root)
        scratch = Path(run(["mktemp", "-d"], check=True).stdout.strip())
        try:
            (scratch / "info.json").write_text(json.dumps(info))
            r = subprocess.run(["unshare", "--net", sys.executable, __file__, "--in-netns",
                                str(root), str(scratch / "info.json"),
                                str(scratch / "results.json")], stdin=subprocess.DEVNULL,
                               timeout=180)
            try:
                inner = json.loads((scratch / "results.json").read_text())
            except (OSError, ValueError):
                inner = {"passed": 0, "failed": [f"the run in the image (exit {r.returncode})"]}
            res.passed += inner["passed"]
            res.failed += inner["failed"]
        finally:
            run(["rm", "-rf", str(scratch)])
    finally:
        run(["podman", "umount", ctr])
        run(["podman", "rm", "--force", ctr])
    total = time.monotonic() - t0
    print(f"     build {t_build:.0f}s, checks {total - t_build:.0f}s, total {total:.0f}s")
    if res.failed:
        print("failed: " + ", ".join(res.failed))
    print(f"image: {res.passed} passed, {len(res.failed)} failed")
    return 1 if res.failed else 0


if __name__ == "__main__":
    sys.exit(main())
