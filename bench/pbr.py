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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from ipaddress import IPv4Interface
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyroute2 import IPRoute

from bench import common
from bench.common import PbrServer, Results, timed
from vsnetd.compile import compile_config
from vsnetd.config import Config, parse_config
from vsnetd.kernel import Kernel
from vsnetd.kinds import Address, Route, Rule
from vsnetd.kinds.rule import FR_ACT_GOTO, FR_ACT_NOP, FULL_MASK
from vsnetd.observe import observe
from vsnetd.reconcile import converge
from vsnetd.state import VSNET_PROTOCOL, DesiredState, object_key

EDIT_HOST = 65000  # the one-VS edit moves the second address here (no VS uses it)
ROWS: list[tuple[str, str]] = [
    ("floor", "ip -batch (floor)"),
    ("naive", "naive pyroute2 loop, one call per object"),
    *common.VSNET_ROWS,
    ("teardown", "vsnet teardown to empty config (extra)"),
]

Op = Address | Route | Rule


def edit_one(servers: list[PbrServer]) -> tuple[list[PbrServer], str]:
    """The same servers with the middle VS's second address moved; and that VS's name."""
    index = len(servers) // 2
    vs = servers[index]
    net = vs.addresses[1].network
    edited = list(servers)
    edited[index] = replace(vs, addresses=(vs.addresses[0],
                                           IPv4Interface((net[EDIT_HOST], net.prefixlen))))
    return edited, vs.name


def ops_by_server(desired: DesiredState) -> list[list[Op]]:
    """What vsnet creates, VS by VS: its objects, and the rule tree's shared rules with the
    first VS that needs them (docs/rule-tree.md), for the floor and the naive loop."""
    seen: set[Any] = set()
    by_server = []
    for server in desired.servers.values():
        shared = [obj for key, obj in server.shared.items() if key not in seen]
        seen.update(server.shared)
        by_server.append([obj for obj in (*server.objects, *shared)
                          if isinstance(obj, Address | Route | Rule)])
    return by_server


def ip_command(op: Op) -> str:
    """One line of an ``ip -batch`` file (iproute2 < 6.3 cannot set IFA_PROTO: the floor's
    addresses carry no owner tag)."""
    if isinstance(op, Address):
        return f"address add {op.address}/{op.prefixlen} dev {op.device}"
    if isinstance(op, Route):
        destination = "default" if op.destination == "0.0.0.0/0" else op.destination
        via = f" via {op.gateway}" if op.gateway else ""
        return (f"route add {destination}{via} dev {op.device} src {op.source} table {op.table} "
                f"proto {VSNET_PROTOCOL}")
    selector = f"from {op.source or 'all'}"
    if op.fwmark is not None:
        selector += f" fwmark {op.fwmark:#x}/{op.fwmask or FULL_MASK:#x}"
    action = {"lookup": f"lookup {op.table}", "goto": f"goto {op.target}"}.get(op.action, op.action)
    return f"rule add {selector} {action} pref {op.priority} proto {VSNET_PROTOCOL}"


def batch_lines(desired: DesiredState) -> list[str]:
    """The floor's ``ip -batch`` lines, in vsnet's order: a rule only once its table is full."""
    ops = [op for server in ops_by_server(desired) for op in server]
    return [ip_command(op) for kind in (Address, Route, Rule) for op in ops if isinstance(op, kind)]


def naive_call(ipr: Any, index: int, op: Op) -> None:
    """One pyroute2 call for one object, as a straightforward program would do it."""
    if isinstance(op, Address):
        ipr.addr("add", index=index, address=op.address, prefixlen=op.prefixlen,
                 proto=VSNET_PROTOCOL)
    elif isinstance(op, Route):
        via = {"gateway": op.gateway} if op.gateway else {"scope": op.scope}
        ipr.route("add", dst=op.destination, prefsrc=op.source, oif=index, table=op.table,
                  proto=VSNET_PROTOCOL, **via)
    else:
        selector: dict[str, Any] = {}
        if op.source:
            address, length = op.source.split("/")
            selector.update(src=address, src_len=int(length))
        if op.fwmark is not None:
            selector.update(fwmark=op.fwmark, fwmask=op.fwmask or FULL_MASK)
        if op.action == "lookup":
            selector.update(table=op.table)
        elif op.action == "goto":
            selector.update(action=FR_ACT_GOTO, goto=op.target)
        else:
            selector.update(action=FR_ACT_NOP)
        ipr.rule("add", priority=op.priority, protocol=VSNET_PROTOCOL, **selector)


@contextmanager
def uplinked_netns() -> Iterator[Kernel]:
    """A fresh namespace with the uplink and a vsnet socket, emptied (untimed) before it is
    left: the kernel's clean-up of a full namespace must not run during the next measure."""
    with common.uplinked_netns(), Kernel() as sock:
        try:
            yield sock
        finally:
            converge(sock, compile_config(Config(version=1)))


def mismatch(sock: Kernel, desired: DesiredState) -> str:
    """How the kernel differs from what vsnet wants ("" when it holds exactly that); the
    floor's addresses (foreign to vsnet: no IFA_PROTO) count where vsnet wants its own."""
    observed = observe(sock, desired.scope)
    want = {object_key(obj): obj for server in desired.servers.values() for obj in server.objects}
    want.update(desired.shared)
    have = dict(observed.owned)
    for found in observed.foreign_addresses.values():
        if object_key(found) in want:
            have.setdefault(object_key(found), found)
    missing = [obj for key, obj in want.items() if have.get(key) != obj]
    extra = [obj for key, obj in have.items() if key not in want]
    if not missing and not extra:
        return ""
    return (f"{len(missing)} missing or different, {len(extra)} extra "
            f"(e.g. {(missing or extra)[0].describe()})")


def measure_floor(results: Results, lines: list[str], desired: DesiredState) -> None:
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


def measure_naive(results: Results, per_server: list[list[Op]], desired: DesiredState,
                  budget: float) -> None:
    done = calls = 0
    with uplinked_netns() as sock, IPRoute() as ipr:
        index = ipr.link_lookup(ifname=common.UPLINK)[0]
        gc.collect()
        started = time.perf_counter()
        while done < len(per_server) and time.perf_counter() - started <= budget:
            for op in per_server[done]:
                naive_call(ipr, index, op)
            calls += len(per_server[done])
            done += 1
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
        reconciler, desired, _ = common.cold_apply(results, sock, text)
        problem = mismatch(sock, desired)
        if problem:
            results.note(f"vsnet's own result differs from its desired state: {problem}")
        common.warm_measures(results, sock, reconciler, desired, (text, edited_text),
                             edited_name, lambda edited: mismatch(sock, edited))


def measure(args: argparse.Namespace) -> Results:
    servers = common.make_pbr_servers(args.servers)
    edited, edited_name = edit_one(servers)
    text, edited_text = common.pbr_yaml(servers), common.pbr_yaml(edited)
    desired = compile_config(parse_config(text, file="bench.yaml"))
    per_server, lines = ops_by_server(desired), batch_lines(desired)
    results = Results()
    for run in range(1, args.repeat + 1):  # interleaved, so drift hits every measure alike
        common.progress(f"run {run}/{args.repeat}: ip -batch")
        measure_floor(results, lines, desired)
        common.progress(", vsnet")
        measure_vsnet(results, text, edited_text, edited_name)
        common.progress(", naive pyroute2")
        measure_naive(results, per_server, desired, args.naive_budget)
        common.progress_line("")
    applied, floor_objects = (set(results.counts[name]) for name in ("vsnet_applied", "floor_objects"))
    if applied != floor_objects:
        results.note(f"object counts differ: ip -batch creates {sorted(floor_objects)}, "
                     f"vsnet applied {sorted(applied)}")
    return results


def targets(args: argparse.Namespace, results: Results) -> list[dict[str, Any]]:
    median = results.median
    return [
        common.target("cold apply <= 1.5x ip -batch", "cold_total",
                      median("cold_total") / median("floor"), 1.5, "x floor"),
        common.target(f"no-op plan <= 100 ms{common.scale_note(args.servers)}", "noop_plan",
                      median("noop_plan"), 0.100, "s"),
        common.target("one-VS edit <= 10 ms (Reconciler)", "edit_converge",
                      median("edit_converge"), 0.010, "s"),
        common.target("one-VS edit <= 10 ms (with parse + compile)", "edit_total",
                      median("edit_total"), 0.010, "s"),
    ]


def table(info: dict[str, Any], args: argparse.Namespace, results: Results) -> None:
    one = results.counted
    common.header(f"vsnet pbr benchmark: {args.servers} VS x 2 IPv4 addresses = "
                  f"{results.counts['floor_objects'][0]} kernel objects; median of {args.repeat} "
                  f"runs, each in a fresh network namespace", info,
                  ("iproute2", "pyroute2"))
    done = min(results.counts["naive_servers"])
    common.print_measures(results, ROWS, {"naive": f"naive pyroute2 loop (extrapolated from "
                                                   f"{done} VS)"} if done < args.servers else None)
    print()
    print(f"objects: ip -batch lines {one('floor_objects')}, vsnet cold apply applied "
          f"{one('vsnet_applied')}, naive pyroute2 calls {one('naive_calls')} "
          f"(over {one('naive_servers')} VS)")
    print(f"one-VS edit: {one('edit_applied')} changes applied")


def as_json(args: argparse.Namespace, results: Results) -> dict[str, Any]:
    return {"benchmark": "pbr", "servers": args.servers,
            "addresses_per_server": len(common.SUBNETS), "repeat": args.repeat,
            "measures": common.measures_json(results, ROWS), "counts": results.counts}


if __name__ == "__main__":
    sys.exit(common.main(__file__, __doc__, sys.argv[1:], common.FLOOR_OPTIONS, measure, table, as_json,
                         targets, check=common.pbr_limit, packages=("iproute2", "pyroute2")))
