"""The sampler of tests/cluster.py, a process of its own.

    python -m tests.cluster_sampler OUT ADDR,ADDR,... NODE=PID ...

Every 2 ms: the watched addresses each node holds, in its namespace and in the VS
namespace ``vs-nas2`` inside it (netlink dumps). A JSON line per change
``{"t": CLOCK_MONOTONIC, "nodes": {"node1": [...], ...}}``; on SIGTERM a last line
``{"samples": N}``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

from vsnetd.kinds import address
from vsnetd.netlink import RtnlSocket
from vsnetd.syscalls import entered_netns

VS_NETNS = ("vs-nas2",)
PERIOD = 0.002


def held(pid: int, wanted: set[str]) -> set[str]:
    found: set[str] = set()
    paths = [f"/proc/{pid}/ns/net", *(f"/proc/{pid}/root/run/netns/{ns}" for ns in VS_NETNS)]
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            with entered_netns(fd), RtnlSocket() as sock:
                found.update(a.address for a, _proto in address.observe(sock, {}))
        except OSError:
            continue
        finally:
            os.close(fd)
    return found & wanted


def main(argv: list[str]) -> int:
    out_path, wanted_text, *node_args = argv
    wanted = set(wanted_text.split(","))
    nodes = {name: int(pid) for name, pid in (arg.split("=") for arg in node_args)}
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    samples = 0
    last: dict[str, list[str]] | None = None
    with open(out_path, "w", buffering=1) as out:
        while not stopping:
            now = time.monotonic()
            state = {name: sorted(held(pid, wanted)) for name, pid in nodes.items()}
            samples += 1
            if state != last:
                out.write(json.dumps({"t": now, "nodes": state}) + "\n")
                last = state
            time.sleep(PERIOD)
        out.write(json.dumps({"samples": samples}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
