"""Benchmark of netns mode: vsnet against ``ip -batch`` (the floor) and a naive pyroute2 loop.

How it measures: docs/benchmarks.md (`bench/netns.py`).
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Interface
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyroute2 import IPRoute, NetNS, netns

from bench import common
from bench.common import UPLINK, timed
from tests import sandbox
from vsnetd.compile import compile_config
from vsnetd.config import Config
from vsnetd.kernel import Kernel
from vsnetd.reconcile import converge, plan_for
from vsnetd.state import VSNET_PROTOCOL

ADDRESS = IPv4Interface("10.1.1.5/24")  # every VS: each has its own namespace
EDIT_ADDRESS = IPv4Interface("10.1.1.6/24")  # the one-VS edit moves its address here
GATEWAY = "10.1.1.1"
NETNS_DIR = Path("/run/netns")  # the sandbox's private tmpfs
MAX_ID = 65535
MEMORY_TARGET_KB = 150.0  # per namespace (the paper reports ~120 kB)
# Memory is read AFTER_CREATE_S after a measure created its objects, and a measure starts once
# the kernel is done freeing the previous one's namespaces: SETTLE_READINGS consecutive Slab
# readings within SETTLE_SPREAD_KB.
AFTER_CREATE_S = 0.5
SETTLE_READINGS, SETTLE_SPREAD_KB, SETTLE_TIMEOUT_S = 4, 256, 20.0

ROWS: list[tuple[str, str]] = [
    ("floor", "ip -batch floor (two parts, see notes)"),
    ("floor_create", "  ip -batch: netns add + link add ... netns"),
    ("floor_configure", "  ip -n NS -batch, one per namespace"),
    ("naive", "naive pyroute2 (NetNS, create-then-move)"),
    *common.VSNET_ROWS,
    ("teardown", "vsnet teardown to empty config"),
    ("bare", "ip -batch netns add only (extra)"),
]
MEMORY_ROWS = [("vsnet", "vsnet cold apply"), ("floor", "ip -batch floor (same objects)"),
               ("bare", "bare namespaces: ip netns add (extra)")]


@dataclass(frozen=True, slots=True)
class VirtualServer:
    name: str
    id: int
    address: IPv4Interface

    @property
    def netns(self) -> str:
        return f"vs-{self.name}"  # vsnet's default namespace name


def make_servers(count: int) -> list[VirtualServer]:
    return [VirtualServer(f"v{number}", number, ADDRESS) for number in range(1, count + 1)]


def to_yaml(servers: Sequence[VirtualServer]) -> str:
    return "version: 1\nservers:\n" + "".join(
        f"  {vs.name}: {{id: {vs.id}, mode: netns, uplink: {UPLINK}, "
        f"addresses: [{{address: {vs.address}}}], gateway: {GATEWAY}}}\n" for vs in servers)


def floor_files(servers: Sequence[VirtualServer]) -> dict[str, str]:
    """What vsnet creates, for iproute2. Batch lines cannot name a namespace (see
    standing_notes), so the floor is two parts: one ``ip -batch`` creating every namespace and
    every device directly inside it, then one ``ip -n NS -batch -`` per namespace, from one sh
    script. And bare namespaces alone, for reference."""
    create, configure = [], []
    for vs in servers:
        create += [f"netns add {vs.netns}",
                   f"link add {vs.name} link {UPLINK} netns {vs.netns} type macvlan mode bridge"]
        configure += [f"ip -n {vs.netns} -batch - <<'EOF'", "link set lo up",
                      f"link set {vs.name} up", f"address add {vs.address} dev {vs.name}",
                      f"route add default via {GATEWAY} proto {VSNET_PROTOCOL}", "EOF"]
    return {"create.batch": "\n".join(create) + "\n", "configure.sh": "\n".join(configure) + "\n",
            "bare.batch": "".join(f"netns add {vs.netns}\n" for vs in servers)}


def naive_server(ipr: Any, uplink_index: int, vs: VirtualServer) -> None:
    """One VS as a straightforward pyroute2 program builds it."""
    netns.create(vs.netns)  # forks a child that unshares and bind-mounts
    ipr.link("add", ifname=vs.name, kind="macvlan", link=uplink_index, macvlan_mode="bridge")
    index = ipr.link_lookup(ifname=vs.name)[0]
    ipr.link("set", index=index, net_ns_fd=vs.netns)  # create, then move
    with NetNS(vs.netns) as ns:  # forks a child to open the socket inside
        ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
        device = ns.link_lookup(ifname=vs.name)[0]
        ns.link("set", index=device, state="up")
        ns.addr("add", index=device, address=str(vs.address.ip),
                prefixlen=vs.address.network.prefixlen)
        ns.route("add", dst="0.0.0.0/0", gateway=GATEWAY, oif=device, proto=VSNET_PROTOCOL)


@dataclass(slots=True)
class Results(common.Results):
    memory_kb: dict[str, list[float]] = field(default_factory=dict)  # per namespace
    contents: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=dict)

    def memory(self, name: str, before: dict[str, int], after: dict[str, int],
               namespaces: int) -> None:
        for what, grew in (("available", before["MemAvailable"] - after["MemAvailable"]),
                           ("slab", after["Slab"] - before["Slab"]),
                           ("rss", after["VmRSS"] - before["VmRSS"])):
            self.memory_kb.setdefault(f"{name}_{what}", []).append(grew / namespaces)


def run(results: Results, what: str, argv: Sequence[str], text: str | None = None) -> None:
    process = subprocess.run(argv, input=text, capture_output=True, text=True)
    if process.returncode != 0:
        results.note(f"{what} failed ({process.returncode}): {process.stderr.strip()[:300]}")


def memory() -> dict[str, int]:
    """MemAvailable and Slab (kB, machine-wide), VmRSS (kB, this process)."""
    lines = (Path("/proc/meminfo").read_text() + Path("/proc/self/status").read_text()).splitlines()
    found = dict(line.split(":", 1) for line in lines)
    return {key: int(found[key].split()[0]) for key in ("MemAvailable", "Slab", "VmRSS")}


def named_namespaces() -> list[str]:
    return sorted(os.listdir(NETNS_DIR)) if NETNS_DIR.is_dir() else []


def settle(results: Results) -> None:
    """Wait until the kernel is done freeing the previous measure's namespaces (a kernel
    worker that takes the RTNL lock: it would slow the next measure and blur its memory)."""
    readings: list[int] = []
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while time.monotonic() < deadline:
        readings.append(memory()["Slab"])
        last = readings[-SETTLE_READINGS:]
        if len(last) == SETTLE_READINGS and max(last) - min(last) <= SETTLE_SPREAD_KB:
            return
        time.sleep(0.1)
    results.note(f"Slab did not settle within {SETTLE_TIMEOUT_S:g} s between measures "
                 f"(last readings {readings[-SETTLE_READINGS:]} kB)")


@contextmanager
def uplinked_netns(results: Results, measure: str, leaves_namespaces: bool = True
                   ) -> Iterator[None]:
    """A fresh namespace with the uplink once the previous measure's are freed; every named
    namespace deleted afterwards."""
    settle(results)
    with common.uplinked_netns():
        try:
            yield
        finally:
            names = named_namespaces()
            if names and not leaves_namespaces:
                results.note(f"{measure} left {len(names)} namespaces behind (e.g. {names[0]}); "
                             f"deleted with ip netns del")
            if names:
                run(results, f"{measure}: ip netns del", ["ip", "-batch", "-"],
                    "".join(f"netns del {name}\n" for name in names))


def netns_contents(name: str) -> tuple[str, ...]:
    """What one namespace holds as ``ip`` shows it: devices, IPv4 addresses and routes."""
    lines = []
    for device in sandbox.ip_json("-d", "link", "show", netns=name):
        info = device.get("linkinfo", {})
        kind = info.get("info_kind", "loopback" if device["ifname"] == "lo" else "?")
        state = "up" if "UP" in device.get("flags", []) else "down"
        lines.append(" ".join(filter(None, ["link", device["ifname"], kind,
                                            info.get("info_data", {}).get("mode"), state])))
    for device in sandbox.ip_json("-4", "address", "show", netns=name):
        lines += [f"address {found['local']}/{found['prefixlen']} dev {device['ifname']}"
                  for found in device.get("addr_info", [])]
    for found in sandbox.ip_json("-4", "route", "show", netns=name):
        via = f" via {found['gateway']}" if "gateway" in found else ""
        lines.append(f"route {found['dst']}{via} dev {found.get('dev')} "
                     f"proto {found.get('protocol')}")
    return tuple(sorted(lines))


def record_contents(results: Results, measure: str, servers: Sequence[VirtualServer]) -> None:
    """The number of namespaces, and the contents of a few (first, middle, last)."""
    results.count(f"{measure}_namespaces", len(named_namespaces()))
    sample = sorted({0, len(servers) // 2, len(servers) - 1})
    results.contents[measure] = {servers[i].netns: netns_contents(servers[i].netns)
                                 for i in sample}


def measure_ip(results: Results, servers: list[VirtualServer], name: str, label: str,
               parts: dict[str, tuple[str, list[str]]]) -> None:
    """``parts`` (a measure: what it is, its command) one after the other, timed, and the
    memory they took per namespace."""
    with uplinked_netns(results, label):
        before = memory()
        for part, (what, argv) in parts.items():
            results.time(part, timed(run, results, what, argv)[0])
        time.sleep(AFTER_CREATE_S)
        results.memory(name, before, memory(), len(servers))
        if name == "floor":
            record_contents(results, "floor", servers)
            results.time("floor", results.samples["floor_create"][-1]
                         + results.samples["floor_configure"][-1])


def measure_naive(results: Results, servers: list[VirtualServer], budget: float) -> None:
    per_server: list[float] = []
    with uplinked_netns(results, "naive pyroute2"), IPRoute() as ipr:
        uplink_index = ipr.link_lookup(ifname=UPLINK)[0]
        gc.collect()
        started = time.perf_counter()
        while len(per_server) < len(servers) and time.perf_counter() - started <= budget:
            began = time.perf_counter()
            naive_server(ipr, uplink_index, servers[len(per_server)])
            per_server.append(time.perf_counter() - began)
        seconds = time.perf_counter() - started
        record_contents(results, "naive", servers[:len(per_server)])
    done, tenth = len(per_server), max(1, len(per_server) // 10)
    results.time("naive", seconds * len(servers) / done)
    results.count("naive_servers", done)
    results.time("naive_first_tenth", statistics.median(per_server[:tenth]))
    results.time("naive_last_tenth", statistics.median(per_server[-tenth:]))


def measure_vsnet(results: Results, servers: list[VirtualServer], texts: tuple[str, str],
                  edited_name: str) -> None:
    with uplinked_netns(results, "vsnet", leaves_namespaces=False), Kernel() as sock:
        try:
            before = memory()
            reconciler, desired, _ = common.cold_apply(results, sock, texts[0])
            time.sleep(AFTER_CREATE_S)
            results.memory("vsnet", before, memory(), len(servers))
            record_contents(results, "vsnet", servers)

            def changes_left(edited: Any) -> str:
                left = plan_for(sock, edited).changes
                return f"{len(left)} changes (e.g. {left[0].describe()})" if left else ""

            common.warm_measures(results, sock, reconciler, desired, texts, edited_name,
                                 changes_left, count_changes=True)
        finally:  # an empty config, whatever happened (a no-op once the teardown ran)
            converge(sock, compile_config(Config(version=1)))


def standing_notes(results: Results, servers: int) -> None:
    """What every reader of the figures needs to know."""
    probe = subprocess.run(["ip", "-batch", "-"], input="-n vsnet-bench-probe link show\n",
                           capture_output=True, text=True)  # creates nothing: no such namespace
    if 'Object "-n" is unknown' not in probe.stderr:
        results.note("this iproute2 accepts `-n NS` on batch lines: one ip -batch could be "
                     "a lower floor than the two-part one measured here")
    else:
        answer = probe.stderr.strip().splitlines()[0]
        results.note(f"floor: ip -batch lines cannot name a namespace (`-n NS` on a line: "
                     f"{answer!r}), so the floor is one `ip -batch` (netns add; link add "
                     f"... netns NS: each device created directly inside its namespace) plus "
                     f"one `ip -n NS -batch -` per namespace (lo up, device up, address, "
                     f"route), run from one sh script: {servers} process starts")
    results.note(f"memory: per VS (its namespace, macvlan, address, route; for vsnet also "
                 f"its netlink socket and fd), read {AFTER_CREATE_S:g} s after creating, "
                 f"once the previous measure's namespaces were freed; MemAvailable and Slab "
                 f"are machine-wide and noisy (medians); vsnet's MemAvailable drop includes "
                 f"its own process's growth (own RSS growth)")


def naive_note(results: Results, servers: int, budget: float) -> None:
    done = results.counts["naive_servers"]
    first, last = results.median("naive_first_tenth"), results.median("naive_last_tenth")
    trend = (f"one VS took {first * 1000:.1f} ms over the first tenth of the loop and "
             f"{last * 1000:.1f} ms over the last (medians)")
    if min(done) == servers:
        results.note(f"naive pyroute2: {trend}")
        return
    bound = ("it grows, so the extrapolation is a lower bound" if last > first * 1.1
             else "flat, so a linear extrapolation fits")
    results.note(f"naive pyroute2: stopped after {'/'.join(map(str, done))} of {servers} VS "
                 f"(--naive-budget {budget:g} s); its time is extrapolated linearly; "
                 f"{trend}: {bound}")


def measure(args: argparse.Namespace) -> Results:
    servers = make_servers(args.servers)
    index = len(servers) // 2
    edited = [*servers[:index], replace(servers[index], address=EDIT_ADDRESS), *servers[index + 1:]]
    texts = (to_yaml(servers), to_yaml(edited))
    results = Results()
    standing_notes(results, args.servers)
    with tempfile.TemporaryDirectory(prefix="vsnet-bench-") as directory:
        files = Path(directory)
        for name, text in floor_files(servers).items():
            (files / name).write_text(text)
        floor = {"floor_create": ("ip -batch (namespaces, devices)",
                                  ["ip", "-batch", str(files / "create.batch")]),
                 "floor_configure": ("ip -n NS -batch (per namespace)",
                                     ["sh", "-e", str(files / "configure.sh")])}
        bare = {"bare": ("ip -batch netns add", ["ip", "-batch", str(files / "bare.batch")])}
        for run_number in range(1, args.repeat + 1):  # interleaved: drift hits all alike
            common.progress_line(f"run {run_number}/{args.repeat}: ip -batch, vsnet, naive, bare")
            measure_ip(results, servers, "floor", "ip -batch", floor)
            measure_vsnet(results, servers, texts, servers[index].name)
            measure_naive(results, servers, args.naive_budget)
            measure_ip(results, servers, "bare", "ip netns add", bare)
        common.progress_line("")
    settle(results)
    naive_note(results, args.servers, args.naive_budget)
    return results


def targets(args: argparse.Namespace, results: Results) -> list[dict[str, Any]]:
    def kb(name: str) -> float:
        return statistics.median(results.memory_kb[name])

    return [
        common.target("cold apply <= 1.5x ip -batch floor", "cold_total",
                      results.median("cold_total") / results.median("floor"), 1.5, "x floor"),
        common.target("memory per namespace <= 150 kB (Slab growth)", "vsnet_slab",
                      kb("vsnet_slab"), MEMORY_TARGET_KB, "kB"),
        common.target("memory per namespace <= 150 kB (MemAvailable drop)", "vsnet_available",
                      kb("vsnet_available"), MEMORY_TARGET_KB, "kB"),
    ]


def kb_cell(results: Results, name: str) -> str:
    values = results.memory_kb.get(name)
    if not values:
        return f"{'-':>20}"
    return f"{statistics.median(values):7.0f} {f'({min(values):.0f}..{max(values):.0f})':>12}"


def contents_text(results: Results) -> list[str]:
    """How many namespaces each way made, and whether the sampled ones hold the same."""
    one = results.counted
    lines = [f"namespaces after creating: ip -batch {one('floor_namespaces')}, vsnet "
             f"{one('vsnet_namespaces')}, naive pyroute2 {one('naive_namespaces')} "
             f"(over {one('naive_servers')} VS)"]
    reference = results.contents.get("vsnet", {})
    if reference:
        name, held = next(iter(reference.items()))
        kinds = [sum(line.startswith(kind) for line in held) for kind in ("link", "address", "route")]
        lines.append(f"sampled {', '.join(reference)}: each holds {kinds[0]} links, "
                     f"{kinds[1]} IPv4 addresses, {kinds[2]} IPv4 routes; {name}:")
        lines += [f"    {line}" for line in held]
    for measure, label in (("floor", "ip -batch"), ("naive", "naive pyroute2")):
        found = results.contents.get(measure, {})
        differ = [ns for ns, held in found.items() if ns in reference and reference[ns] != held]
        verdict = "the same as vsnet's" if not differ else f"DIFFERENT in {', '.join(differ)}"
        lines.append(f"{label}: sampled {', '.join(found) or '-'}: {verdict}")
        lines += [f"    {label} {ns}: {'; '.join(found[ns])}" for ns in differ[:1]]
    lines.append(f"changes applied by vsnet: cold apply {one('vsnet_applied')}, one-VS edit "
                 f"{one('edit_applied')}, one-shot converge back {one('oneshot_applied')}, "
                 f"teardown {one('teardown_applied')}")
    return lines


def table(info: dict[str, Any], args: argparse.Namespace, results: Results) -> None:
    common.header(f"vsnet netns benchmark: {args.servers} VS, each a namespace with lo, a macvlan "
                  f"on {UPLINK}, 1 IPv4 address and a default route; median of {args.repeat} "
                  f"runs, each measure in a fresh network namespace", info,
                  ("iproute2", "pyroute2"))
    done = results.counts["naive_servers"]
    counted = f"{min(done)}" if min(done) == max(done) else f"{min(done)}..{max(done)}"
    common.print_measures(results, ROWS, {"naive": f"naive pyroute2 (extrapolated from {counted} "
                                                   f"VS)"} if min(done) < args.servers else None)
    print()
    print(f"{'memory per namespace, kB: median (min..max)':<46} {'MemAvailable drop':>20} "
          f"{'Slab growth':>20} {'own RSS growth':>20}")
    for name, label in MEMORY_ROWS:
        rss = kb_cell(results, f"{name}_rss") if name == "vsnet" else f"{'-':>20}"
        print(f"{label:<46} {kb_cell(results, f'{name}_available')} "
              f"{kb_cell(results, f'{name}_slab')} {rss}")
    print()
    print("\n".join(contents_text(results)))


def as_json(args: argparse.Namespace, results: Results) -> dict[str, Any]:
    return {
        "benchmark": "netns", "servers": args.servers, "repeat": args.repeat,
        "measures": common.measures_json(results, ROWS),
        "memory_per_namespace": {name: {"median_kb": statistics.median(values),
                                        "samples_kb": values}
                                 for name, values in results.memory_kb.items()},
        "counts": results.counts,
        "naive_per_server_s": {"first_tenth": results.samples["naive_first_tenth"],
                               "last_tenth": results.samples["naive_last_tenth"]},
        "sampled_namespaces": {measure: {ns: list(held) for ns, held in found.items()}
                               for measure, found in results.contents.items()},
    }


def max_servers() -> int:
    """VS ids fit below 65536; vsnet holds two fds per namespace (its fd and a socket)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return MAX_ID if hard == resource.RLIM_INFINITY else min(MAX_ID, (hard - 64) // 2)


if __name__ == "__main__":
    sys.exit(common.main(
        __file__, __doc__, sys.argv[1:], common.FLOOR_OPTIONS, measure, table, as_json, targets,
        packages=("iproute2", "pyroute2"),
        check=lambda args: common.too_many(args, max_servers(), "VS ids; open files")))
