#!/usr/bin/env python3
"""Read a proxy's CPU time and memory from /proc, for bench/run.sh.

    proctool.py cpu PID      CPU seconds of PID and all its descendants
    proctool.py mem PID      "NPROCS RSS_KIB PSS_KIB" summed over PID and its descendants
    proctool.py nprocs PID   number of live processes in the tree (PID included)
    proctool.py threads PID  threads of PID ("Threads:" in /proc/PID/status)

cpu: for every process in the tree, utime + stime + cutime + cstime from
/proc/P/stat (threads are included: the process's own fields sum all its
threads). The c* fields hold the children that process has already reaped, so
the sum stays consistent while children come and go (socat forks one per
connection): a child's time moves from its own line to its parent's when it
is reaped. Two readings taken while the tree is at rest subtract cleanly.

mem: VmRSS from /proc/P/status and Pss from /proc/P/smaps_rollup, summed.
For one process the RSS delta is the honest number. For a tree of forked
processes, summed RSS counts every shared page (libc, the parent's heap
before fork) once per process; summed Pss divides each shared page among the
processes that map it, so it adds up to the memory the tree really uses.

Prints "NA" (exit 1) when PID does not exist.
"""
import os
import sys


def children_map():
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                st = f.read()
        except OSError:
            continue
        fields = st[st.rindex(b")") + 2:].split()
        kids.setdefault(int(fields[1]), []).append(int(d))  # fields[1] = ppid
    return kids


def tree(pid):
    kids = children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat", "rb") as f:
        st = f.read()
    fields = st[st.rindex(b")") + 2:].split()
    # After "(comm) ": state=0 ppid=1 ... utime=11 stime=12 cutime=13 cstime=14
    return sum(int(x) for x in fields[11:15])


def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def pss_kib(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("cpu", "mem", "nprocs", "threads"):
        sys.exit(__doc__)
    cmd, pid = sys.argv[1], int(sys.argv[2])
    if not os.path.exists(f"/proc/{pid}"):
        print("NA")
        sys.exit(1)
    if cmd == "threads":
        print(status_kib(pid, "Threads"))
        return
    procs = tree(pid)
    if cmd == "nprocs":
        print(len(procs))
    elif cmd == "cpu":
        ticks = 0
        for p in procs:
            try:
                ticks += cpu_ticks(p)
            except (OSError, ValueError):
                pass  # exited between listing and reading (its parent's cutime has it)
        print(f"{ticks / os.sysconf('SC_CLK_TCK'):.2f}")
    else:
        n = rss = pss = 0
        for p in procs:
            try:
                r = status_kib(p, "VmRSS")
            except OSError:
                continue
            n += 1
            rss += r
            pss += pss_kib(p)
        print(n, rss, pss)


if __name__ == "__main__":
    main()
