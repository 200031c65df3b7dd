"""Hostile clients of tcpfault's HTTP APIs, in a process of their own (run by
test_admin_hardening.py, so the test's own well-behaved client does not share a GIL with them).

    python3 admin_attack.py CONFIG_JSON

CONFIG_JSON: {"admin": PORT, "toxiproxy": PORT or null, "pipelined": N, "slowloris": N,
"idle": N, "idle_sources": N, "seconds": S}. Every attacker connects from its own loopback
addresses (Linux routes all of 127.0.0.0/8 to lo), as an attacker on another host would:
  - pipeline: one connection per API from 127.0.0.2 with a 4 KiB receive buffer sends N
    pipelined `GET /healthz` (admin) or `GET /version` (Toxiproxy) and never reads;
  - slowloris: N connections from 127.0.0.3 send half a request head, then one byte a second;
    one the server closes is opened again at once;
  - idle: N connections from 127.0.1.1 .. 127.0.1.<idle_sources>, opened (at most 256
    handshakes in flight, so the kernel's accept queue does not overflow) and held, sending
    nothing.
Prints one JSON line when every idle connection was attempted ("ramped"), and a final JSON line
with counts when `seconds` are over or stdin closes. Exit 0.
"""

from __future__ import annotations

import errno
import json
import selectors
import socket
import sys
import time

HEAD = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: "


def nonblocking_from(source: str, rcvbuf: int = 0) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.bind((source, 0))
    s.setblocking(False)
    return s


def start_connect(s: socket.socket, port: int) -> None:
    err = s.connect_ex(("127.0.0.1", port))
    if err not in (0, errno.EINPROGRESS):
        raise OSError(err, "connect")


def main() -> None:
    cfg = json.loads(sys.argv[1])
    sel = selectors.DefaultSelector()
    deadline = time.monotonic() + cfg["seconds"]
    stats = {"pipelined_sent": 0, "slowloris_reopened": 0, "idle_connected": 0,
             "idle_closed_by_server": 0, "idle_failed": 0}

    # -- pipelining
    pipes = []
    for port, path in ((cfg["admin"], b"/healthz"), (cfg.get("toxiproxy"), b"/version")):
        if not port:
            continue
        s = nonblocking_from("127.0.0.2", rcvbuf=4096)
        start_connect(s, port)
        data = (b"GET " + path + b" HTTP/1.1\r\nHost: localhost\r\n\r\n") * cfg["pipelined"]
        pipes.append({"sock": s, "data": memoryview(data), "off": 0})
        sel.register(s, selectors.EVENT_WRITE, ("pipe", pipes[-1]))

    # -- slowloris
    def open_slow() -> None:
        s = nonblocking_from("127.0.0.3")
        start_connect(s, cfg["admin"])
        st = {"sock": s, "sent": 0, "next": 0.0, "connected": False}
        sel.register(s, selectors.EVENT_WRITE | selectors.EVENT_READ, ("slow", st))
        slow.append(st)

    slow: list[dict] = []
    for _ in range(cfg["slowloris"]):
        open_slow()

    # -- idle crowd
    idle_total = cfg["idle"]
    sources = max(1, cfg["idle_sources"])
    idle_started = 0
    in_flight = 0
    idle_socks: list[socket.socket] = []
    ramped_reported = False

    def start_idle() -> None:
        nonlocal idle_started, in_flight
        src = f"127.0.1.{1 + idle_started % sources}"
        idle_started += 1
        try:
            s = nonblocking_from(src)
            start_connect(s, cfg["admin"])
        except OSError:
            stats["idle_failed"] += 1
            return
        in_flight += 1
        sel.register(s, selectors.EVENT_WRITE, ("idle", s))

    stdin_open = True
    sel.register(sys.stdin, selectors.EVENT_READ, ("stdin", None))
    while time.monotonic() < deadline and stdin_open:
        while idle_started < idle_total and in_flight < 256:
            start_idle()
        if not ramped_reported and idle_started >= idle_total and in_flight == 0:
            ramped_reported = True
            print(json.dumps({"ramped": True, **stats}), flush=True)
        now = time.monotonic()
        for st in slow:  # the trickle: one byte a second, after the half head
            if st["connected"] and now >= st["next"]:
                try:
                    piece = HEAD if st["sent"] == 0 else b"a"
                    st["sock"].send(piece)
                    st["sent"] += len(piece)
                    st["next"] = now + 1.0
                except OSError:
                    st["next"] = now + 3600  # closed: its read event reopens it
        for key, events in sel.select(timeout=0.05):
            kind, st = key.data
            if kind == "stdin":
                if not sys.stdin.readline():
                    stdin_open = False
                    sel.unregister(sys.stdin)
            elif kind == "pipe":
                s = st["sock"]
                try:
                    n = s.send(st["data"][st["off"]:st["off"] + 65536])
                    st["off"] += n
                    stats["pipelined_sent"] += n
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    st["off"] = len(st["data"])
                if st["off"] >= len(st["data"]):
                    sel.unregister(s)  # all sent; the responses are never read
            elif kind == "slow":
                s = st["sock"]
                if not st["connected"] and events & selectors.EVENT_WRITE:
                    if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                        st["connected"] = True
                        sel.modify(s, selectors.EVENT_READ, key.data)
                        continue
                try:
                    gone = s.recv(4096) == b""  # a 408 or the close: either way, over
                except (BlockingIOError, InterruptedError):
                    gone = False
                except OSError:
                    gone = True
                if gone or not st["connected"]:
                    sel.unregister(s)
                    s.close()
                    slow.remove(st)
                    stats["slowloris_reopened"] += 1
                    open_slow()
            elif kind == "idle":
                s = st
                if events & selectors.EVENT_WRITE:
                    in_flight -= 1
                    if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0:
                        stats["idle_failed"] += 1
                        sel.unregister(s)
                        s.close()
                        continue
                    stats["idle_connected"] += 1
                    idle_socks.append(s)
                    sel.modify(s, selectors.EVENT_READ, key.data)
                else:
                    try:
                        gone = s.recv(4096) == b""
                    except (BlockingIOError, InterruptedError):
                        gone = False
                    except OSError:
                        gone = True
                    if gone:
                        stats["idle_closed_by_server"] += 1
                        sel.unregister(s)  # held open on our side, as an idle client would
    stats["slowloris_open"] = len(slow)
    print(json.dumps({"done": True, **stats}), flush=True)


if __name__ == "__main__":
    main()
