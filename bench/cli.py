"""Benchmark of ``vsnetctl`` as whole processes: apply, validate, plan, --help, against ``ip -batch``.

How it measures: docs/benchmarks.md (`bench/cli.py`).
"""

from __future__ import annotations

import argparse
import compileall
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common, netns, pbr
from bench.common import Results, progress_line, vsnetctl
from vsnetd.compile import compile_config
from vsnetd.config import parse_config

OPTIONS: dict[str, common.Option] = {"--servers": (1000, "number of VS"),
                                     "--repeat": (5, "interleaved rounds; medians are reported")}
ROWS = [
    ("floor", "ip -batch, the objects of N pbr VS (floor)"),
    ("apply", "vsnetctl apply, N pbr VS"),
    ("validate", "vsnetctl validate, N pbr VS"),
    ("help", "vsnetctl --help"),
    ("plan_netns", "vsnetctl plan, N netns VS, nothing to do"),
]
# the targets (docs/benchmarks.md) but apply's: measure, label, seconds
LIMITS = (("validate", "vsnetctl validate", 0.120), ("help", "vsnetctl --help", 0.050),
          ("plan_netns", "vsnetctl plan, netns, no-op", 0.200))


def process(results: Results, argv: list[str], name: str = "") -> None:
    """``argv`` run to its end, timed as ``name`` (if any)."""
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    if name:
        results.time(name, time.perf_counter() - started)
    if done.returncode != 0:
        results.note(f"{' '.join(argv[-3:])} exited {done.returncode}: {done.stderr.strip()[:300]}")


def measure(args: argparse.Namespace) -> Results:
    results = Results()
    package = Path(__file__).resolve().parent.parent / "vsnetd"
    if not compileall.compile_dir(package, quiet=1):  # as installed packages have it
        results.note(f"could not compile the bytecode of {package}")
    text = common.pbr_yaml(common.make_pbr_servers(args.servers))
    lines = pbr.batch_lines(compile_config(parse_config(text, file="bench.yaml")))
    netns_text = netns.to_yaml(netns.make_servers(args.servers))
    with common.config_dir(text) as (workdir, config):
        batch, netns_config = workdir / "floor.batch", workdir / "netns.yaml"
        batch.write_text("\n".join(lines) + "\n")
        netns_config.write_text(netns_text)
        results.count("floor_objects", len(lines))
        ratios: list[float] = results.values.setdefault("apply_ratios", [])

        def floor() -> None:
            with common.uplinked_netns():
                process(results, ["ip", "-batch", str(batch)], "floor")

        def apply() -> None:
            with common.uplinked_netns():
                process(results, vsnetctl("apply", "-c", str(config)), "apply")
                process(results, vsnetctl("teardown", "-c", str(config)))

        for round_ in range(1, args.repeat + 1):
            progress_line(f"round {round_}/{args.repeat}: ip -batch, apply, validate, --help")
            # back to back, the first of the two alternating: the ratio of each round
            for step in (floor, apply) if round_ % 2 else (apply, floor):
                step()
            ratios.append(results.samples["apply"][-1] / results.samples["floor"][-1])
            process(results, vsnetctl("validate", "-c", str(config)), "validate")
            process(results, vsnetctl("--help"), "help")
        with common.uplinked_netns():
            progress_line(f"netns: applying {args.servers} VS once, then plan")
            process(results, vsnetctl("apply", "-c", str(netns_config)))
            try:
                for _round in range(args.repeat):
                    process(results, vsnetctl("plan", "-c", str(netns_config)), "plan_netns")
            finally:
                process(results, vsnetctl("teardown", "-c", str(netns_config)))
    progress_line("")
    return results


def _median_ratio(results: Results) -> float | None:
    ratios = results.values.get("apply_ratios")
    return statistics.median(ratios) if ratios else None


def targets(args: argparse.Namespace, results: Results) -> list[dict[str, Any]]:
    at, median = common.scale_note(args.servers), results.median_or_none
    return [common.target(f"vsnetctl apply <= 1.2x ip -batch{at}", "apply_vs_floor",
                          _median_ratio(results), 1.2, "x floor"),
            *(common.target(f"{label} <= {limit * 1000:.0f} ms{at}", name, median(name), limit,
                            "s") for name, label, limit in LIMITS)]


def table(info: dict[str, Any], args: argparse.Namespace, results: Results) -> None:
    common.header(f"vsnetctl as whole processes, {args.servers} VS, {args.repeat} interleaved "
                  f"rounds (median; ip -batch: {results.counts['floor_objects'][0]} objects; "
                  f"x floor: the median of the rounds' ratios)",
                  info, ("pydantic", "pyroute2"))
    ratios = {"floor": 1.0, "apply": _median_ratio(results)}
    print(f"{'process':<46} {'median':>10} {'min':>10} {'x floor':>8}")
    for name, label in ROWS:
        if samples := results.samples.get(name):
            value = statistics.median(samples)
            ratio = f"{ratios[name]:7.2f}x" if ratios.get(name) is not None else ""
            print(f"{label:<46} {value * 1000:7.1f} ms {min(samples) * 1000:7.1f} ms {ratio:>8}")


def as_json(args: argparse.Namespace, results: Results) -> dict[str, Any]:
    return {"benchmark": "cli", "servers": args.servers, "repeat": args.repeat,
            "samples_s": results.samples, "apply_ratios": results.values.get("apply_ratios")}


if __name__ == "__main__":
    sys.exit(common.main(__file__, __doc__, sys.argv[1:], OPTIONS, measure, table, as_json,
                         targets, check=common.pbr_limit, packages=("pydantic", "pyroute2")))
