"""Benchmark of ``vsnetctl`` as whole processes: apply, validate, plan, --help, against ``ip -batch``.

How it measures: docs/benchmarks.md (`bench/cli.py`).
"""

from __future__ import annotations

import argparse
import compileall
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common, netns, pbr
from bench.common import Results, progress
from vsnetd.compile import compile_config
from vsnetd.config import parse_config
from vsnetd.state import VSNET_PROTOCOL

# Targets (from the issue), at TARGET_SERVERS VS.
APPLY_RATIO_TARGET = 1.2  # vsnetctl apply <= 1.2x ip -batch, both whole processes
VALIDATE_TARGET = 0.120
HELP_TARGET = 0.050
PLAN_NETNS_TARGET = 0.200
TARGET_SERVERS = 1000


def vsnetctl(*args: str) -> list[str]:
    return [*common.console_script("vsnetctl", "vsnetd.cli"), *args]


def timed_process(argv: list[str], what: str, results: Results,
                  expect: tuple[int, ...] = (0,)) -> float:
    started = time.perf_counter()
    process = subprocess.run(argv, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if process.returncode not in expect:
        results.note(f"{what} exited {process.returncode}: {process.stderr.strip()[:300]}")
    return seconds


def floor_lines(servers: Sequence[common.PbrServer], text: str) -> list[str]:
    """The ``ip -batch`` lines creating what vsnet creates for ``servers``, the rule tree's
    shared rules included (taken from vsnet's own compile, as bench/pbr.py does)."""
    desired = compile_config(parse_config(text, file="bench.yaml"))
    settings = desired.settings
    numbering = pbr.Numbering(settings.table_base, settings.priority_base, settings.mark_base,
                              settings.block_size)
    ops = [op for vs, rules in zip(servers, pbr.rules_by_server(desired), strict=True)
           for op in pbr.server_ops(vs, numbering, rules)]
    kinds = (pbr.AddressOp, pbr.RouteOp, pbr.RuleOp)  # vsnet's order
    return [pbr.ip_command(op, VSNET_PROTOCOL) for kind in kinds for op in ops
            if isinstance(op, kind)]


def run(args: argparse.Namespace) -> Results:
    results = Results()
    package = Path(__file__).resolve().parent.parent / "vsnetd"
    if not compileall.compile_dir(package, quiet=1):
        results.note(f"could not compile the bytecode of {package}")
    servers = common.make_pbr_servers(args.servers)
    with tempfile.TemporaryDirectory(prefix="vsnet-bench-", dir="/run") as tmp:
        workdir = Path(tmp)
        config = workdir / "servers.yaml"
        text = common.pbr_yaml(servers)
        config.write_text(text)
        batch = workdir / "floor.batch"
        lines = floor_lines(servers, text)
        batch.write_text("\n".join(lines) + "\n")
        results.count("floor_objects", len(lines))
        for round_ in range(1, args.repeat + 1):
            progress(f"round {round_}/{args.repeat}: ip -batch")
            with common.uplinked_netns():
                results.time("floor", timed_process(["ip", "-batch", str(batch)],
                                                    "ip -batch", results))
            progress(f"round {round_}/{args.repeat}: vsnetctl apply")
            with common.uplinked_netns():
                results.time("apply", timed_process(vsnetctl("apply", "-c", str(config)),
                                                    "vsnetctl apply", results))
                timed_process(vsnetctl("teardown", "-c", str(config)), "teardown", results)
            progress(f"round {round_}/{args.repeat}: vsnetctl validate, --help")
            results.time("validate", timed_process(vsnetctl("validate", "-c", str(config)),
                                                   "vsnetctl validate", results))
            results.time("help", timed_process(vsnetctl("--help"), "vsnetctl --help", results))
        measure_plan_netns(args, results, workdir)
    progress("")
    return results


def measure_plan_netns(args: argparse.Namespace, results: Results, workdir: Path) -> None:
    config = workdir / "netns.yaml"
    config.write_text(netns.to_yaml(netns.make_servers(args.servers)))
    with common.uplinked_netns():
        progress(f"netns: applying {args.servers} VS once")
        timed_process(vsnetctl("apply", "-c", str(config)), "vsnetctl apply (netns)", results)
        try:
            for round_ in range(1, args.repeat + 1):
                progress(f"round {round_}/{args.repeat}: vsnetctl plan (netns, nothing to do)")
                results.time("plan_netns", timed_process(vsnetctl("plan", "-c", str(config)),
                                                         "vsnetctl plan (netns)", results))
        finally:
            progress("netns: teardown")
            timed_process(vsnetctl("teardown", "-c", str(config)), "teardown (netns)", results)


ROWS = [
    ("floor", "ip -batch, the objects of N pbr VS (floor)"),
    ("apply", "vsnetctl apply, N pbr VS"),
    ("validate", "vsnetctl validate, N pbr VS"),
    ("help", "vsnetctl --help"),
    ("plan_netns", "vsnetctl plan, N netns VS, nothing to do"),
]


def targets(results: Results, servers: int) -> list[dict[str, Any]]:
    at = common.scale_note(servers, TARGET_SERVERS)
    median = results.median_or_none
    checks = [common.target(f"vsnetctl apply <= {APPLY_RATIO_TARGET:g}x ip -batch{at}",
                            "apply_vs_floor", common.ratio(median("apply"), median("floor")),
                            APPLY_RATIO_TARGET, "x floor")]
    for name, label, limit in (("validate", "vsnetctl validate", VALIDATE_TARGET),
                               ("help", "vsnetctl --help", HELP_TARGET),
                               ("plan_netns", "vsnetctl plan, netns, no-op", PLAN_NETNS_TARGET)):
        checks.append(common.target(f"{label} <= {limit * 1000:.0f} ms{at}", name, median(name),
                                    limit, "s"))
    return checks


def print_table(info: dict[str, Any], args: argparse.Namespace, results: Results) -> None:
    print(f"vsnetctl as whole processes, {args.servers} VS, {args.repeat} interleaved rounds "
          f"(median; ip -batch: {results.counts.get('floor_objects', ['?'])[0]} objects)")
    print(common.machine_line(info) + f"Python {info['python']}, pydantic {info['pydantic']}, "
          f"pyroute2 {info['pyroute2']}")
    print()
    floor = results.median_or_none("floor")
    print(f"{'process':<46} {'median':>10} {'min':>10} {'x floor':>8}")
    for name, label in ROWS:
        samples = results.samples.get(name)
        if not samples:
            continue
        value = statistics.median(samples)
        ratio = f"{value / floor:7.2f}x" if floor and name in ("floor", "apply") else ""
        print(f"{label:<46} {value * 1000:7.1f} ms {min(samples) * 1000:7.1f} ms {ratio:>8}")
    print()
    common.print_targets(targets(results, args.servers), results.notes)


def as_json(info: dict[str, Any], args: argparse.Namespace, results: Results) -> dict[str, Any]:
    return {"benchmark": "cli", "servers": args.servers, "repeat": args.repeat,
            "machine": info, "samples_s": results.samples,
            "targets": targets(results, args.servers), "notes": results.notes}


def main(argv: Sequence[str]) -> int:
    parser = common.arguments(__doc__, repeat=5,
                              repeat_help="interleaved rounds; medians are reported")
    args = common.parse(parser, argv, common.pbr_max_servers(), "default numbering")
    return common.run_benchmark(__file__, argv, args, run, info, as_json, print_table)


def info() -> dict[str, Any]:
    return common.machine(pyroute2=version("pyroute2"), pydantic=version("pydantic"))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
