"""Benchmark of pbr mode: vsnet against ``ip -batch`` (the floor) and a naive pyroute2 loop.

How it measures: docs/benchmarks.md (`bench/pbr.py`).
"""

from __future__ import annotations

import argparse
import gc
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from importlib.metadata import version
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyroute2 import IPRoute

from bench import common
from bench.common import PbrServer, Results, timed
from vsnetd.compile import compile_config
from vsnetd.config import Config, parse_config
from vsnetd.kernel import Kernel
from vsnetd.kinds import Rule
from vsnetd.kinds.rule import FR_ACT_GOTO, FR_ACT_NOP, FULL_MASK
from vsnetd.numbering import table_number
from vsnetd.observe import observe
from vsnetd.reconcile import converge
from vsnetd.state import VSNET_PROTOCOL, DesiredState, object_key

EDIT_HOST = 65000  # the one-VS edit moves the second address here (no VS uses it)
RT_SCOPE_LINK = 253

# Targets (from the issue).
COLD_RATIO_TARGET = 1.5  # cold apply <= 1.5x ip -batch
NOOP_PLAN_TARGET = 0.100  # seconds, at 1000 VS
EDIT_TARGET = 0.010  # seconds
TARGET_SERVERS = 1000


# --------------------------------------------------------------------------- workload


def edit_one(servers: list[PbrServer]) -> tuple[list[PbrServer], str]:
    """The same servers with the middle VS's second address moved; and that VS's name."""
    index = len(servers) // 2
    target = servers[index]
    net = target.addresses[1].network
    moved = IPv4Interface((net[EDIT_HOST], net.prefixlen))
    edited = list(servers)
    edited[index] = replace(target, addresses=(target.addresses[0], moved))
    return edited, target.name


# The kernel objects of one VS, written out independently of vsnet (the layout documented
# in vsnetd/compile.py and vsnetd/numbering.py), for the floor and for the naive peer.


@dataclass(frozen=True, slots=True)
class AddressOp:
    interface: IPv4Interface


@dataclass(frozen=True, slots=True)
class RouteOp:
    table: int
    destination: IPv4Network | None  # None: the default route
    source: IPv4Address
    gateway: IPv4Address | None


@dataclass(frozen=True, slots=True)
class RuleOp:
    """A rule where vsnet's rule tree puts it (docs/rule-tree.md): the leaves a VS owns and
    the shared goto/nop rules, taken from vsnet's own compile of the same file, so that the
    floor builds the same tree."""

    rule: Rule


KernelOp = AddressOp | RouteOp | RuleOp


@dataclass(frozen=True, slots=True)
class Numbering:
    table_base: int
    priority_base: int
    mark_base: int
    block_size: int


def server_ops(vs: PbrServer, numbering: Numbering, rules: list[Rule]) -> list[KernelOp]:
    """Addresses, routes and rules of one VS: what vsnet's pbr mode creates, with the rule
    tree's shared rules this VS is the first to need."""
    block = vs.id * numbering.block_size
    ops: list[KernelOp] = [AddressOp(address) for address in vs.addresses]
    for index, (address, gateway) in enumerate(zip(vs.addresses, vs.gateways, strict=True)):
        table = table_number(numbering.table_base, block + index)
        ops.append(RouteOp(table, address.network, address.ip, None))
        ops.append(RouteOp(table, None, address.ip, gateway))
    mark_table = table_number(numbering.table_base, block + numbering.block_size - 1)
    first = vs.addresses[0].ip
    for subnet in dict.fromkeys(address.network for address in vs.addresses):
        ops.append(RouteOp(mark_table, subnet, first, None))
    ops.append(RouteOp(mark_table, None, first, vs.gateway))
    return ops + [RuleOp(rule) for rule in rules]


def rules_by_server(desired: DesiredState) -> list[list[Rule]]:
    """Each VS's rules, and each shared rule with the first VS that needs it."""
    seen: set[Any] = set()
    by_server = []
    for server in desired.servers.values():
        rules = [obj for obj in server.objects if isinstance(obj, Rule)]
        rules += [obj for key, obj in server.shared.items()
                  if isinstance(obj, Rule) and key not in seen]
        seen.update(server.shared)
        by_server.append(rules)
    return by_server


def ip_command(op: KernelOp, protocol: int) -> str:
    """One line of an ``ip -batch`` file."""
    if isinstance(op, AddressOp):
        # iproute2 < 6.3 cannot set IFA_PROTO: the floor's addresses carry no owner tag.
        return f"address add {op.interface} dev {common.UPLINK}"
    if isinstance(op, RouteOp):
        destination = "default" if op.destination is None else str(op.destination)
        via = f" via {op.gateway}" if op.gateway is not None else ""
        return (f"route add {destination}{via} dev {common.UPLINK} src {op.source} table {op.table} "
                f"proto {protocol}")
    rule = op.rule
    selector = f"from {rule.source}" if rule.source else "from all"
    if rule.fwmark is not None:
        selector += f" fwmark {rule.fwmark:#x}/{rule.fwmask or FULL_MASK:#x}"
    action = {"lookup": f"lookup {rule.table}", "goto": f"goto {rule.target}"}.get(
        rule.action, rule.action)
    return f"rule add {selector} {action} pref {rule.priority} proto {protocol}"


def naive_call(ipr: Any, index: int, op: KernelOp, protocol: int) -> None:
    """One pyroute2 call for one object, as a straightforward program would do it."""
    if isinstance(op, AddressOp):
        ipr.addr("add", index=index, address=str(op.interface.ip),
                 prefixlen=op.interface.network.prefixlen, proto=protocol)
    elif isinstance(op, RouteOp):
        destination = "0.0.0.0/0" if op.destination is None else str(op.destination)
        if op.gateway is not None:
            ipr.route("add", dst=destination, gateway=str(op.gateway), prefsrc=str(op.source),
                      oif=index, table=op.table, proto=protocol)
        else:
            ipr.route("add", dst=destination, prefsrc=str(op.source), oif=index,
                      table=op.table, proto=protocol, scope=RT_SCOPE_LINK)
    else:
        rule = op.rule
        selector: dict[str, Any] = {}
        if rule.source:
            address, length = rule.source.split("/")
            selector.update(src=address, src_len=int(length))
        if rule.fwmark is not None:
            selector.update(fwmark=rule.fwmark, fwmask=rule.fwmask or FULL_MASK)
        if rule.action == "lookup":
            selector.update(table=rule.table)
        elif rule.action == "goto":
            selector.update(action=FR_ACT_GOTO, goto=rule.target)
        else:
            selector.update(action=FR_ACT_NOP)
        ipr.rule("add", priority=rule.priority, protocol=protocol, **selector)


# --------------------------------------------------------------------------- measuring


@contextmanager
def uplinked_netns() -> Iterator[Kernel]:
    """A fresh namespace with the uplink and an open vsnet socket; emptied afterwards.

    The namespace is emptied (untimed) before it is left, so the kernel's asynchronous
    clean-up of a namespace full of objects does not run during the next measure.
    """
    with common.uplinked_netns(), Kernel() as sock:
        try:
            yield sock
        finally:
            converge(sock, compile_config(Config(version=1)))


def mismatch(sock: Kernel, desired: DesiredState) -> str:
    """How the kernel differs from what vsnet wants ("" when it holds exactly that).

    Addresses the floor added are foreign to vsnet (no IFA_PROTO tag): they count as
    present when they stand where vsnet wants its own.
    """
    observed = observe(sock, desired.scope)
    want = {object_key(obj): obj for server in desired.servers.values() for obj in server.objects}
    want.update(desired.shared)
    have = dict(observed.owned)
    for found in observed.foreign_addresses.values():
        key = object_key(found)
        if key in want:
            have.setdefault(key, found)
    missing = [obj for key, obj in want.items() if have.get(key) != obj]
    extra = [obj for key, obj in have.items() if key not in want]
    if not missing and not extra:
        return ""
    example = (missing or extra)[0].describe()
    return f"{len(missing)} missing or different, {len(extra)} extra (e.g. {example})"


def measure_floor(
    results: Results, ops: list[KernelOp], desired: DesiredState, protocol: int
) -> None:
    kinds = (AddressOp, RouteOp, RuleOp)  # vsnet's order: a rule only once its table is full
    lines = [ip_command(op, protocol) for kind in kinds for op in ops if isinstance(op, kind)]
    with tempfile.NamedTemporaryFile("w", prefix="vsnet-bench-", suffix=".batch") as batch:
        batch.write("\n".join(lines) + "\n")
        batch.flush()
        with uplinked_netns() as sock:
            seconds, process = timed(lambda: subprocess.run(
                ["ip", "-batch", batch.name], capture_output=True, text=True))
            if process.returncode != 0:
                results.note(f"ip -batch failed ({process.returncode}): "
                             f"{process.stderr.strip()[:300]}")
            problem = mismatch(sock, desired)
    if problem:
        results.note(f"ip -batch result differs from vsnet's desired state: {problem}")
    results.time("floor", seconds)
    results.count("floor_objects", len(lines))


def measure_naive(
    results: Results, per_server: list[list[KernelOp]], desired: DesiredState, protocol: int,
    budget: float,
) -> None:
    calls = 0
    done = 0
    with uplinked_netns() as sock:
        with IPRoute() as ipr:
            index = ipr.link_lookup(ifname=common.UPLINK)[0]
            gc.collect()
            started = time.perf_counter()
            for ops in per_server:
                for op in ops:
                    naive_call(ipr, index, op, protocol)
                calls += len(ops)
                done += 1
                if time.perf_counter() - started > budget:
                    break
            seconds = time.perf_counter() - started
        problem = mismatch(sock, desired) if done == len(per_server) else ""
    if problem:
        results.note(f"naive pyroute2 result differs from vsnet's desired state: {problem}")
    total = len(per_server)
    if done < total:
        results.note(f"naive pyroute2 loop: stopped after {done} of {total} VS "
                     f"(--naive-budget {budget:g} s); its time is extrapolated linearly "
                     f"(x{total / done:.2f}), a lower bound: later VS find longer rule lists")
    results.time("naive", seconds * total / done)
    results.count("naive_calls", calls)
    results.count("naive_servers", done)


def measure_vsnet(results: Results, text: str, edited_text: str, edited_name: str) -> None:
    with uplinked_netns() as sock:
        # cold apply, as `vsnetctl apply` runs it (a one-shot process holds the cyclic gc)
        reconciler, desired, result = common.cold_apply(results, sock, text)
        if not result.converged:
            results.note(f"vsnet cold apply did not converge: {common.not_converged(result)}")
        problem = mismatch(sock, desired)
        if problem:
            results.note(f"vsnet's own result differs from its desired state: {problem}")
        common.warm_measures(results, sock, reconciler, desired, (text, edited_text),
                             edited_name, lambda edited: mismatch(sock, edited))


# --------------------------------------------------------------------------- report


ROWS: list[tuple[str, str]] = [
    ("floor", "ip -batch (floor)"),
    ("naive", "naive pyroute2 loop, one call per object"),
    *common.VSNET_ROWS,
    ("teardown", "vsnet teardown to empty config (extra)"),
]


def targets(results: Results, servers: int) -> list[dict[str, Any]]:
    at = common.scale_note(servers, TARGET_SERVERS)
    return [
        common.target("cold apply <= 1.5x ip -batch", "cold_total",
                      results.median("cold_total") / results.median("floor"), COLD_RATIO_TARGET,
                      "x floor"),
        common.target(f"no-op plan <= 100 ms{at}", "noop_plan", results.median("noop_plan"),
                      NOOP_PLAN_TARGET, "s"),
        common.target("one-VS edit <= 10 ms (Reconciler)", "edit_converge",
                      results.median("edit_converge"), EDIT_TARGET, "s"),
        common.target("one-VS edit <= 10 ms (with parse + compile)", "edit_total",
                      results.median("edit_total"), EDIT_TARGET, "s"),
    ]


def counts_text(results: Results) -> list[str]:
    one = results.counted
    return [
        f"objects: ip -batch lines {one('floor_objects')}, vsnet cold apply applied "
        f"{one('vsnet_applied')}, naive pyroute2 calls {one('naive_calls')} "
        f"(over {one('naive_servers')} VS)",
        f"one-VS edit: {one('edit_applied')} changes applied",
    ]


def print_table(info: dict[str, Any], args: argparse.Namespace, results: Results) -> None:
    objects = results.counts["floor_objects"][0]
    print(f"vsnet pbr benchmark: {args.servers} VS x 2 IPv4 addresses = {objects} kernel "
          f"objects; median of {args.repeat} runs, each in a fresh network namespace")
    print(common.machine_line(info)
          + f"Python {info['python']}, {info['iproute2']}, pyroute2 {info['pyroute2']}")
    print()
    done = min(results.counts["naive_servers"])
    common.print_measures(results, ROWS, {"naive": f"naive pyroute2 loop (extrapolated from {done} VS)"}
                   if done < args.servers else None)
    print()
    for line in counts_text(results):
        print(line)
    print()
    common.print_targets(targets(results, args.servers), results.notes)


def as_json(info: dict[str, Any], args: argparse.Namespace, results: Results) -> dict[str, Any]:
    return {
        "benchmark": "pbr",
        "servers": args.servers,
        "addresses_per_server": len(common.SUBNETS),
        "repeat": args.repeat,
        "machine": info,
        "measures": common.measures_json(results, ROWS),
        "counts": results.counts,
        "targets": targets(results, args.servers),
        "notes": results.notes,
    }


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str]) -> int:
    args = common.floor_args(argv, __doc__, common.pbr_max_servers(), "default numbering")
    return common.run_benchmark(__file__, argv, args, measure, info, as_json, print_table)


def info() -> dict[str, Any]:
    return common.machine(iproute2=common.iproute2_version(), pyroute2=version("pyroute2"))


def measure(args: argparse.Namespace) -> Results:
    servers = common.make_pbr_servers(args.servers)
    edited, edited_name = edit_one(servers)
    text, edited_text = common.pbr_yaml(servers), common.pbr_yaml(edited)
    desired = compile_config(parse_config(text, file="bench.yaml"))
    settings = desired.settings
    numbering = Numbering(settings.table_base, settings.priority_base, settings.mark_base,
                          settings.block_size)
    per_server = [server_ops(vs, numbering, rules)
                  for vs, rules in zip(servers, rules_by_server(desired), strict=True)]
    ops = [op for server in per_server for op in server]

    results = Results()
    for run in range(1, args.repeat + 1):  # interleaved, so drift hits every measure alike
        common.progress(f"run {run}/{args.repeat}: ip -batch")
        measure_floor(results, ops, desired, VSNET_PROTOCOL)
        common.progress(", vsnet")
        measure_vsnet(results, text, edited_text, edited_name)
        common.progress(", naive pyroute2")
        measure_naive(results, per_server, desired, VSNET_PROTOCOL, args.naive_budget)
        common.progress("\r\033[K")

    applied = set(results.counts["vsnet_applied"])
    floor_objects = set(results.counts["floor_objects"])
    if applied != floor_objects:
        results.note(f"object counts differ: ip -batch creates {sorted(floor_objects)}, "
                     f"vsnet applied {sorted(applied)}")
    if results.counts["floor_objects"][0] != len(ops):
        results.note("internal: floor line count differs from the object list")

    return results


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
