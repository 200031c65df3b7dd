"""Network namespaces for the tests of the faults that drop packets (blackhole, loss,
drop_syn): tcpfault adds nftables rules there, so they run in a namespace of their own that
nothing else on the machine shares, and that vanishes with everything in it when the test ends.

    def test_x(netns, tcpfault, servers): ...     # the fixture (conftest-free: import it)

`netns` moves the test's thread into a new network namespace (unshare(CLONE_NEWNET)) with
loopback up, and back when the test ends. Everything the thread starts meanwhile lives in it:
child processes (tcpfault, servers, clients, tcpdump, nft) and threads (the helpers' servers)
inherit the namespace, and sockets the thread opens are in it. Start them inside the test (or
in fixtures that depend on `netns`), never before.

Making a namespace needs CAP_SYS_ADMIN (root). A plain user's run skips these tests, saying
why; as root (CI) they must run, so a namespace that cannot be made fails the test instead.

Also here: what nftables holds (through the `nft` program, which the tests may use and tcpfault
never does), TCP_INFO's retransmission counter and the namespace's TCP counters.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import socket
import struct
import subprocess
import time
from typing import Iterator, Optional

import pytest

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def unavailable() -> Optional[str]:
    """None when this process can make network namespaces and run what the tests need, else
    why it cannot."""
    if os.geteuid() != 0:
        return ("needs root: a network namespace of its own (unshare -n) and nftables "
                "(CAP_SYS_ADMIN, CAP_NET_ADMIN); CI runs these as root")
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"the {tool!r} program is missing (docker/install-deps.sh test)"
    return None


def require() -> None:
    """Skips (plain user) or fails (root: CI must run these) when namespaces are unavailable."""
    why = unavailable()
    if why is None:
        return
    if os.geteuid() == 0:
        pytest.fail(f"cannot run the packet-fault tests as root: {why}", pytrace=False)
    pytest.skip(why)


@contextlib.contextmanager
def network_namespace() -> Iterator[None]:
    """The calling thread in a new network namespace with loopback up, for the duration."""
    back = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        if _libc.unshare(CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")
        try:
            subprocess.run(["ip", "link", "set", "lo", "up"], check=True, timeout=10)
            yield
        finally:
            if _libc.setns(back, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns back to the original namespace: {os.strerror(err)}")
    finally:
        os.close(back)


@pytest.fixture
def netns():
    require()
    try:
        with network_namespace():
            yield
    except OSError as e:
        pytest.fail(f"network namespace: {e}", pytrace=False)


# --------------------------------------------------------------------------------------------
# nftables, as the test sees it (the nft program; tcpfault itself uses libnftables)


def nft_json(*args: str) -> list[dict]:
    r = subprocess.run(["nft", "-j", *args], capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, f"nft -j {' '.join(args)}: {r.stderr}"
    return json.loads(r.stdout)["nftables"]


def tcpfault_tables() -> list[str]:
    """Names of the tables tcpfault made in this namespace (`tcpfault_<pid>_<random>`)."""
    return [o["table"]["name"] for o in nft_json("list", "tables")
            if "table" in o and o["table"]["name"].startswith("tcpfault_")]


def table_of(pid: int) -> str:
    names = [t for t in tcpfault_tables() if t.startswith(f"tcpfault_{pid}_")]
    assert len(names) == 1, f"expected one nftables table of tcpfault {pid}, found {names}"
    return names[0]


class TableState:
    """A table's rules (as text) and set elements, from `nft -j list table inet NAME`."""

    def __init__(self, objs: list[dict]):
        self.rules: list[str] = []
        self.elements: dict[str, list] = {}
        for o in objs:
            if "rule" in o:
                self.rules.append(json.dumps(o["rule"]["expr"]))
            elif "set" in o:
                self.elements[o["set"]["name"]] = o["set"].get("elem", [])

    def all_elements(self) -> list:
        return [e for elems in self.elements.values() for e in elems]

    def __repr__(self) -> str:
        return f"<{len(self.rules)} rules, elements {self.elements}>"


def table_state(name: str) -> TableState:
    return TableState(nft_json("list", "table", "inet", name))


def wait_for(pred, timeout: float, what: str, poll: float = 0.02):
    """Polls pred() (nftables and TCP state have no event to wait on) until it returns a true
    value, which is returned; fails naming `what` after the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout}s (last: {v!r})")
        time.sleep(poll)


# --------------------------------------------------------------------------------------------
# TCP's own view


def total_retrans(sock: socket.socket) -> int:
    """tcpi_total_retrans of TCP_INFO (struct tcp_info: 8 bytes of u8 fields, then u32s;
    total_retrans is the 24th u32)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return struct.unpack_from("I", info, 8 + 23 * 4)[0]


def tcp_counters() -> dict[str, int]:
    """This namespace's TCP counters (RetransSegs, ...) from /proc/thread-self/net/snmp."""
    with open("/proc/thread-self/net/snmp") as f:
        lines = [l.split() for l in f if l.startswith("Tcp:")]
    return dict(zip(lines[0][1:], map(int, lines[1][1:])))
