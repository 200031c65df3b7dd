#!/usr/bin/env python3
"""The tree shows the architecture: includes go down the layers, and no header includes itself
through others (no cycles between the socket, pipe and session layers or anywhere else).

Layers, top to bottom (README "Layout"):
  app (the process) > api (HTTP APIs) > proxy (listeners, sessions, pipes)
  > ftp, faults (what sessions apply) > net (sockets, loops) > observe (log, metrics, clock)
  > config (the YAML model)
Inside proxy/: proxy_server > session > pipe.

A file may include files of its own layer (but see the proxy/ order) and of lower layers.
The one sanctioned upward edge: config/ names the fault kinds (config.hpp holds a rule's
FaultSpec, and the loader hands each fault's parameters to the fault's own parser), so
config/ may include faults/fault_list.hpp; the faults include only config's leaf headers.

Run: python3 tests/check_layers.py [SOURCE_DIR]; exits 1 naming every offending include.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

RANK = {"app": 7, "api": 6, "proxy": 5, "ftp": 4, "faults": 4, "net": 3, "observe": 2,
        "config": 1}
PROXY_ORDER = {"proxy_server": 3, "session": 2, "pipe": 1}
ALLOWED_UP = {("config", "faults/fault_list.hpp")}
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def layer(rel: str) -> str:
    return rel.split("/", 1)[0]


def stem(rel: str) -> str:
    name = rel.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return "session" if name.startswith("session") else name


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[1])
    files = sorted(p for d in RANK for p in (root / d).glob("*.[ch]pp"))
    graph: dict[str, list[str]] = {}
    problems: list[str] = []
    for f in files:
        rel = f.relative_to(root).as_posix()
        incs = [i for i in INCLUDE.findall(f.read_text()) if layer(i) in RANK]
        graph[rel] = incs
        for inc in incs:
            a, b = layer(rel), layer(inc)
            if RANK[b] > RANK[a] and (a, inc) not in ALLOWED_UP:
                problems.append(f"{rel} includes {inc}: {b}/ is above {a}/")
            if a == b == "proxy":
                ra, rb = PROXY_ORDER.get(stem(rel)), PROXY_ORDER.get(stem(inc))
                if ra is not None and rb is not None and rb > ra:
                    problems.append(f"{rel} includes {inc}: {stem(inc)} is above {stem(rel)}")
            if a == b and a != "proxy" and RANK[a] == RANK[b] and not (root / inc).exists():
                problems.append(f"{rel} includes {inc}, which does not exist")
    # Cycles among headers (a .cpp is never included).
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in graph.get(n, []):
            if m not in graph:
                continue
            if state.get(m) == 1:
                cyc = stack[stack.index(m):] + [m]
                problems.append("include cycle: " + " -> ".join(cyc))
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in graph:
        if n not in state:
            visit(n)
    for p in problems:
        print(p)
    if not problems:
        print(f"layers ok: {len(files)} files, {sum(len(v) for v in graph.values())} includes")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
