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
from importlib.metadata import version
from ipaddress import IPv4Address, IPv4Interface
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
from vsnetd.state import VSNET_PROTOCOL, DesiredState

ADDRESS = IPv4Interface("10.1.1.5/24")  # every VS: each has its own namespace
EDIT_ADDRESS = IPv4Interface("10.1.1.6/24")  # the one-VS edit moves its address here
GATEWAY = IPv4Address("10.1.1.1")
NETNS_DIR = Path("/run/netns")  # the sandbox's private tmpfs
MAX_ID = 65535

# Targets (from the issue).
COLD_RATIO_TARGET = 1.5  # cold apply <= 1.5x ip -batch
MEMORY_TARGET_KB = 150.0  # per namespace (the paper reports ~120 kB)

# Memory readings: how long objects are given to settle after a measure created them, and
# when the kernel counts as done freeing the previous measure's namespaces.
AFTER_CREATE_S = 0.5
SETTLE_POLL_S = 0.1
SETTLE_READINGS = 4  # consecutive Slab readings ...
SETTLE_SPREAD_KB = 256  # ... within this much of each other
SETTLE_TIMEOUT_S = 20.0


# --------------------------------------------------------------------------- workload


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


def edit_one(servers: list[VirtualServer]) -> tuple[list[VirtualServer], str]:
    """The same servers with the middle VS's address moved; and that VS's name."""
    index = len(servers) // 2
    edited = list(servers)
    edited[index] = replace(servers[index], address=EDIT_ADDRESS)
    return edited, servers[index].name


def to_yaml(servers: Sequence[VirtualServer]) -> str:
    lines = ["version: 1", "servers:"]
    for vs in servers:
        lines.append(f"  {vs.name}: {{id: {vs.id}, mode: netns, uplink: {UPLINK}, "
                     f"addresses: [{{address: {vs.address}}}], gateway: {GATEWAY}}}")
    return "\n".join(lines) + "\n"


# What vsnet creates per VS, written out for iproute2 (the floor). Batch lines cannot
# name a namespace (see batch_takes_netns_option), so the floor is two parts: one
# ``ip -batch`` creating every namespace and every device directly inside its namespace,
# then one ``ip -n NS -batch -`` per namespace, run from one sh script.


def create_batch(servers: Sequence[VirtualServer]) -> str:
    lines = []
    for vs in servers:
        lines.append(f"netns add {vs.netns}")
        lines.append(f"link add {vs.name} link {UPLINK} netns {vs.netns} type macvlan mode bridge")
    return "\n".join(lines) + "\n"


def configure_script(servers: Sequence[VirtualServer]) -> str:
    parts = []
    for vs in servers:
        parts.append(
            f"ip -n {vs.netns} -batch - <<'EOF'\n"
            "link set lo up\n"
            f"link set {vs.name} up\n"
            f"address add {vs.address} dev {vs.name}\n"
            f"route add default via {GATEWAY} proto {VSNET_PROTOCOL}\n"
            "EOF\n"
        )
    return "".join(parts)


def bare_batch(servers: Sequence[VirtualServer]) -> str:
    return "".join(f"netns add {vs.netns}\n" for vs in servers)


def batch_takes_netns_option() -> tuple[bool, str]:
    """Whether this iproute2's batch mode accepts ``-n NS`` at the start of a line; and
    what it answers (nothing is created: the namespace does not exist)."""
    process = subprocess.run(["ip", "-batch", "-"], input="-n vsnet-bench-probe link show\n",
                             capture_output=True, text=True)
    answer = process.stderr.strip().splitlines()[0] if process.stderr.strip() else ""
    return 'Object "-n" is unknown' not in process.stderr, answer


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
        ns.route("add", dst="0.0.0.0/0", gateway=str(GATEWAY), oif=device,
                 proto=VSNET_PROTOCOL)


# --------------------------------------------------------------------------- measuring


@dataclass(slots=True)
class Results(common.Results):
    memory_kb: dict[str, list[float]] = field(default_factory=dict)  # per namespace
    contents: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=dict)

    def memory(self, name: str, before: Memory, after: Memory, namespaces: int) -> None:
        self.memory_kb.setdefault(f"{name}_available", []).append(
            (before.available - after.available) / namespaces)
        self.memory_kb.setdefault(f"{name}_slab", []).append((after.slab - before.slab) / namespaces)
        self.memory_kb.setdefault(f"{name}_rss", []).append((after.rss - before.rss) / namespaces)

def run(argv: Sequence[str], text: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, input=text, capture_output=True, text=True)


def check_ran(results: Results, what: str, process: subprocess.CompletedProcess[str]) -> None:
    if process.returncode != 0:
        results.note(f"{what} failed ({process.returncode}): {process.stderr.strip()[:300]}")


@dataclass(frozen=True, slots=True)
class Memory:
    available: int  # kB, machine-wide (/proc/meminfo)
    slab: int  # kB, machine-wide
    rss: int  # kB, this process


def memory() -> Memory:
    info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return Memory(int(info["MemAvailable"].split()[0]), int(info["Slab"].split()[0]),
                  int(status["VmRSS"].split()[0]))


def settle(results: Results) -> None:
    """Wait until the kernel is done freeing the previous measure's namespaces.

    A namespace is destroyed asynchronously once its last reference goes (a kernel worker
    that takes the RTNL lock): still running, it would slow the next measure and blur its
    memory figures. It is done when Slab stops moving.
    """
    readings: list[int] = []
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while time.monotonic() < deadline:
        readings.append(memory().slab)
        last = readings[-SETTLE_READINGS:]
        if len(last) == SETTLE_READINGS and max(last) - min(last) <= SETTLE_SPREAD_KB:
            return
        time.sleep(SETTLE_POLL_S)
    results.note(f"Slab did not settle within {SETTLE_TIMEOUT_S:g} s between measures "
                 f"(last readings {readings[-SETTLE_READINGS:]} kB)")


def named_namespaces() -> list[str]:
    return sorted(os.listdir(NETNS_DIR)) if NETNS_DIR.is_dir() else []


def delete_namespaces(results: Results, measure: str, expected: bool) -> None:
    """Delete every named namespace (all under the sandbox's private /run/netns)."""
    names = named_namespaces()
    if not names:
        return
    if not expected:
        results.note(f"{measure} left {len(names)} namespaces behind (e.g. {names[0]}); "
                     f"deleted with ip netns del")
    check_ran(results, f"{measure}: ip netns del",
              run(["ip", "-batch", "-"], "".join(f"netns del {name}\n" for name in names)))


@contextmanager
def uplinked_netns(results: Results, measure: str, leaves_namespaces: bool) -> Iterator[None]:
    """A fresh namespace with the uplink, once the previous measure's are freed; every
    named namespace deleted afterwards (the uplink's deletion takes any device left on it).
    """
    settle(results)
    with common.uplinked_netns():
        try:
            yield
        finally:
            delete_namespaces(results, measure, expected=leaves_namespaces)


def netns_contents(name: str) -> tuple[str, ...]:
    """What one namespace holds as ``ip`` shows it: devices, IPv4 addresses and routes."""
    lines = []
    for device in sandbox.ip_json("-d", "link", "show", netns=name):
        info = device.get("linkinfo", {})
        kind = info.get("info_kind", "loopback" if device["ifname"] == "lo" else "?")
        mode = info.get("info_data", {}).get("mode")
        state = "up" if "UP" in device.get("flags", []) else "down"
        lines.append(" ".join(filter(None, ["link", device["ifname"], kind, mode, state])))
    for device in sandbox.ip_json("-4", "address", "show", netns=name):
        for found in device.get("addr_info", []):
            lines.append(f"address {found['local']}/{found['prefixlen']} dev {device['ifname']}")
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


def measure_floor(results: Results, servers: list[VirtualServer], workdir: Path) -> None:
    create, configure = workdir / "create.batch", workdir / "configure.sh"
    with uplinked_netns(results, "ip -batch", leaves_namespaces=True):
        before = memory()
        create_s, created = timed(lambda: run(["ip", "-batch", str(create)]))
        configure_s, configured = timed(lambda: run(["sh", "-e", str(configure)]))
        time.sleep(AFTER_CREATE_S)
        after = memory()
        check_ran(results, "ip -batch (namespaces, devices)", created)
        check_ran(results, "ip -n NS -batch (per namespace)", configured)
        record_contents(results, "floor", servers)
    results.time("floor_create", create_s)
    results.time("floor_configure", configure_s)
    results.time("floor", create_s + configure_s)
    results.memory("floor", before, after, len(servers))


def measure_bare(results: Results, servers: list[VirtualServer], workdir: Path) -> None:
    with uplinked_netns(results, "ip netns add", leaves_namespaces=True):
        before = memory()
        seconds, process = timed(lambda: run(["ip", "-batch", str(workdir / "bare.batch")]))
        time.sleep(AFTER_CREATE_S)
        after = memory()
        check_ran(results, "ip -batch netns add", process)
    results.time("bare", seconds)
    results.memory("bare", before, after, len(servers))


def measure_naive(results: Results, servers: list[VirtualServer], budget: float) -> None:
    per_server: list[float] = []
    with uplinked_netns(results, "naive pyroute2", leaves_namespaces=True):
        with IPRoute() as ipr:
            uplink_index = ipr.link_lookup(ifname=UPLINK)[0]
            gc.collect()
            started = time.perf_counter()
            for vs in servers:
                began = time.perf_counter()
                naive_server(ipr, uplink_index, vs)
                per_server.append(time.perf_counter() - began)
                if time.perf_counter() - started > budget:
                    break
            seconds = time.perf_counter() - started
        done = len(per_server)
        record_contents(results, "naive", servers[:done])
    results.time("naive", seconds * len(servers) / done)
    results.count("naive_servers", done)
    tenth = max(1, done // 10)
    results.time("naive_first_tenth", statistics.median(per_server[:tenth]))
    results.time("naive_last_tenth", statistics.median(per_server[-tenth:]))


def naive_note(results: Results, servers: int, budget: float) -> None:
    done = results.counts["naive_servers"]
    first = results.median("naive_first_tenth")
    last = results.median("naive_last_tenth")
    trend = (f"one VS took {first * 1000:.1f} ms over the first tenth of the loop and "
             f"{last * 1000:.1f} ms over the last (medians)")
    if min(done) == servers:
        results.note(f"naive pyroute2: {trend}")
        return
    if last > first * 1.1:
        bound = ": it grows, so the extrapolation is a lower bound"
    else:
        bound = ": flat, so a linear extrapolation fits"
    results.note(f"naive pyroute2: stopped after {'/'.join(map(str, done))} of {servers} VS "
                 f"(--naive-budget {budget:g} s); its time is extrapolated linearly; "
                 f"{trend}{bound}")


def measure_vsnet(
    results: Results, servers: list[VirtualServer], text: str, edited_text: str,
    edited_name: str,
) -> None:
    with uplinked_netns(results, "vsnet", leaves_namespaces=False), Kernel() as sock:
        try:
            vsnet_measures(results, sock, servers, text, edited_text, edited_name)
        finally:  # an empty config, whatever happened (a no-op once the teardown ran)
            converge(sock, compile_config(Config(version=1)))


def vsnet_measures(
    results: Results, sock: Kernel, servers: list[VirtualServer], text: str, edited_text: str,
    edited_name: str,
) -> None:
    # cold apply, as `vsnetctl apply` runs it (a one-shot process holds the cyclic gc);
    # the Reconciler's first call is a full converge, and it is kept for the edit below
    before = memory()
    reconciler, desired, result = common.cold_apply(results, sock, text)
    time.sleep(AFTER_CREATE_S)
    after = memory()
    results.memory("vsnet", before, after, len(servers))
    if not result.converged:
        results.note(f"vsnet cold apply did not converge: {common.not_converged(result)}")
    record_contents(results, "vsnet", servers)
    common.warm_measures(results, sock, reconciler, desired, (text, edited_text), edited_name,
                         lambda edited: changes_left(sock, edited), count_changes=True)


def changes_left(sock: Kernel, desired: DesiredState) -> str:
    left = plan_for(sock, desired).changes
    return f"{len(left)} changes (e.g. {left[0].describe()})" if left else ""


# --------------------------------------------------------------------------- report


ROWS: list[tuple[str, str]] = [
    ("floor", "ip -batch floor (two parts, see notes)"),
    ("floor_create", "  ip -batch: netns add + link add ... netns"),
    ("floor_configure", "  ip -n NS -batch, one per namespace"),
    ("naive", "naive pyroute2 (NetNS, create-then-move)"),
    *common.VSNET_ROWS,
    ("teardown", "vsnet teardown to empty config"),
    ("bare", "ip -batch netns add only (extra)"),
]

MEMORY_ROWS: list[tuple[str, str]] = [
    ("vsnet", "vsnet cold apply"),
    ("floor", "ip -batch floor (same objects)"),
    ("bare", "bare namespaces: ip netns add (extra)"),
]


def kb_median(results: Results, name: str) -> float:
    return statistics.median(results.memory_kb[name])


def targets(results: Results) -> list[dict[str, Any]]:
    return [
        common.target("cold apply <= 1.5x ip -batch floor", "cold_total",
                      results.median("cold_total") / results.median("floor"), COLD_RATIO_TARGET,
                      "x floor"),
        common.target("memory per namespace <= 150 kB (Slab growth)", "vsnet_slab",
                      kb_median(results, "vsnet_slab"), MEMORY_TARGET_KB, "kB"),
        common.target("memory per namespace <= 150 kB (MemAvailable drop)", "vsnet_available",
                      kb_median(results, "vsnet_available"), MEMORY_TARGET_KB, "kB"),
    ]


def kb(results: Results, name: str) -> str:
    values = results.memory_kb.get(name)
    if not values:
        return f"{'-':>20}"
    spread = f"({min(values):.0f}..{max(values):.0f})"
    return f"{statistics.median(values):7.0f} {spread:>12}"


def contents_text(results: Results) -> list[str]:
    """How many namespaces each way made, and whether the sampled ones hold the same."""
    one = results.counted
    lines = [f"namespaces after creating: ip -batch {one('floor_namespaces')}, vsnet "
             f"{one('vsnet_namespaces')}, naive pyroute2 {one('naive_namespaces')} "
             f"(over {one('naive_servers')} VS)"]
    reference = results.contents.get("vsnet", {})
    if reference:
        name, held = next(iter(reference.items()))
        kinds = {kind: sum(line.startswith(kind) for line in held)
                 for kind in ("link", "address", "route")}
        lines.append(f"sampled {', '.join(reference)}: each holds {kinds['link']} links, "
                     f"{kinds['address']} IPv4 addresses, {kinds['route']} IPv4 routes; {name}:")
        lines += [f"    {line}" for line in held]
    for measure, label in (("floor", "ip -batch"), ("naive", "naive pyroute2")):
        found = results.contents.get(measure, {})
        same = [ns for ns, held in found.items() if reference.get(ns) == held]
        differ = [ns for ns in found if ns in reference and ns not in same]
        verdict = "the same as vsnet's" if not differ else f"DIFFERENT in {', '.join(differ)}"
        lines.append(f"{label}: sampled {', '.join(found) or '-'}: {verdict}")
        for ns in differ[:1]:
            lines.append(f"    {label} {ns}: {'; '.join(found[ns])}")
    lines.append(f"changes applied by vsnet: cold apply {one('vsnet_applied')}, one-VS edit "
                 f"{one('edit_applied')}, one-shot converge back {one('oneshot_applied')}, "
                 f"teardown {one('teardown_applied')}")
    return lines


def print_table(info: dict[str, Any], args: argparse.Namespace, results: Results) -> None:
    print(f"vsnet netns benchmark: {args.servers} VS, each a namespace with lo, a macvlan on "
          f"{UPLINK}, 1 IPv4 address and a default route; median of {args.repeat} runs, each "
          f"measure in a fresh network namespace")
    print(common.machine_line(info)
          + f"Python {info['python']}, {info['iproute2']}, pyroute2 {info['pyroute2']}")
    print()
    done = min(results.counts["naive_servers"])
    most = max(results.counts["naive_servers"])
    counted = f"{done}" if done == most else f"{done}..{most}"
    common.print_measures(results, ROWS, {"naive": f"naive pyroute2 (extrapolated from {counted} VS)"}
                   if done < args.servers else None)
    print()
    print(f"{'memory per namespace, kB: median (min..max)':<46} {'MemAvailable drop':>20} "
          f"{'Slab growth':>20} {'own RSS growth':>20}")
    for name, label in MEMORY_ROWS:
        rss = kb(results, f"{name}_rss") if name == "vsnet" else f"{'-':>20}"
        print(f"{label:<46} {kb(results, f'{name}_available')} {kb(results, f'{name}_slab')} "
              f"{rss}")
    print()
    for line in contents_text(results):
        print(line)
    print()
    common.print_targets(targets(results), results.notes)


def as_json(info: dict[str, Any], args: argparse.Namespace, results: Results) -> dict[str, Any]:
    memory_per_namespace = {
        name: {"median_kb": statistics.median(values), "samples_kb": values}
        for name, values in results.memory_kb.items()
    }
    return {
        "benchmark": "netns",
        "servers": args.servers,
        "repeat": args.repeat,
        "machine": info,
        "measures": common.measures_json(results, ROWS),
        "memory_per_namespace": memory_per_namespace,
        "counts": results.counts,
        "naive_per_server_s": {"first_tenth": results.samples["naive_first_tenth"],
                               "last_tenth": results.samples["naive_last_tenth"]},
        "sampled_namespaces": {measure: {ns: list(held) for ns, held in found.items()}
                               for measure, found in results.contents.items()},
        "targets": targets(results),
        "notes": results.notes,
    }


# --------------------------------------------------------------------------- main


def max_servers() -> int:
    """VS ids fit below 65536; vsnet holds two fds per namespace (its fd and a socket)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        return MAX_ID
    return min(MAX_ID, (hard - 64) // 2)


def standing_notes(results: Results, args: argparse.Namespace) -> None:
    """What every reader of the figures needs to know."""
    accepted, answer = batch_takes_netns_option()
    if accepted:
        results.note("this iproute2 accepts `-n NS` on batch lines: one ip -batch could be "
                     "a lower floor than the two-part one measured here")
    else:
        results.note(f"floor: ip -batch lines cannot name a namespace (`-n NS` on a line: "
                     f"{answer!r}), so the floor is one `ip -batch` (netns add; link add "
                     f"... netns NS: each device created directly inside its namespace) plus "
                     f"one `ip -n NS -batch -` per namespace (lo up, device up, address, "
                     f"route), run from one sh script: {args.servers} process starts")
    results.note(f"memory: per VS (its namespace, macvlan, address, route; for vsnet also "
                 f"its netlink socket and fd), read {AFTER_CREATE_S:g} s after creating, "
                 f"once the previous measure's namespaces were freed; MemAvailable and Slab "
                 f"are machine-wide and noisy (medians); vsnet's MemAvailable drop includes "
                 f"its own process's growth (own RSS growth)")


def main(argv: Sequence[str]) -> int:
    args = common.floor_args(argv, __doc__, max_servers(), "VS ids; open files")
    return common.run_benchmark(__file__, argv, args, measure, info, as_json, print_table)


def info() -> dict[str, Any]:
    return common.machine(iproute2=common.iproute2_version(), pyroute2=version("pyroute2"))


def measure(args: argparse.Namespace) -> Results:
    servers = make_servers(args.servers)
    edited, edited_name = edit_one(servers)
    text, edited_text = to_yaml(servers), to_yaml(edited)

    results = Results()
    standing_notes(results, args)
    with tempfile.TemporaryDirectory(prefix="vsnet-bench-") as directory:
        workdir = Path(directory)
        (workdir / "create.batch").write_text(create_batch(servers))
        (workdir / "configure.sh").write_text(configure_script(servers))
        (workdir / "bare.batch").write_text(bare_batch(servers))
        for run_number in range(1, args.repeat + 1):  # interleaved: drift hits all alike
            common.progress(f"run {run_number}/{args.repeat}: ip -batch")
            measure_floor(results, servers, workdir)
            common.progress(", vsnet")
            measure_vsnet(results, servers, text, edited_text, edited_name)
            common.progress(", naive pyroute2")
            measure_naive(results, servers, args.naive_budget)
            common.progress(", bare namespaces")
            measure_bare(results, servers, workdir)
            common.progress("\r\033[K")
    settle(results)
    naive_note(results, args.servers, args.naive_budget)

    return results


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
