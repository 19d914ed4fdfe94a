"""Benchmark of ``vsnetctl plan`` with nothing to do over N netns VS, as a whole process.

How it measures: docs/benchmarks.md (`bench/plan.py`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from io import BytesIO
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common, netns
from bench.common import Results, machine, machine_line, progress

REPO = Path(__file__).resolve().parent.parent

PLAN_TARGET = 0.200  # vsnetctl plan, nothing to do, 1000 netns VS, whole process
TARGET_SERVERS = 1000

# Run in a child process with the tree under test first on sys.path: the plan's phases.
PHASES = """
import gc, json, sys, time
started = time.perf_counter()
import vsnetd.cli, vsnetd.reconcile, vsnetd.kernel
from vsnetd.compile import compile_config
from vsnetd.config import parse_config
from vsnetd.diff import plan_changes
from vsnetd.kernel import Kernel
from vsnetd.observe import observe
imported = time.perf_counter()
gc.disable()  # as plan_for does
text = open(sys.argv[1]).read()
t0 = time.perf_counter()
config = parse_config(text, file=sys.argv[1])
t1 = time.perf_counter()
desired = compile_config(config)
t2 = time.perf_counter()
with Kernel() as kernel:
    t3 = time.perf_counter()
    observed = observe(kernel, desired.scope)
    t4 = time.perf_counter()
plan = plan_changes(desired, observed)
t5 = time.perf_counter()
print(json.dumps({"import": imported - started, "parse": t1 - t0, "compile": t2 - t1,
                  "observe": t4 - t3, "diff": t5 - t4, "changes": len(plan.changes),
                  "package": vsnetd.__file__}))
"""
PHASE_NAMES = ("import", "parse", "compile", "observe", "diff")


def export_tree(revision: str, into: Path) -> Path:
    """The ``vsnetd`` package of ``revision``, extracted under ``into``."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", revision, "vsnetd"],
                             capture_output=True, check=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    # compiled now, so that no round pays for the tree's first import
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(into)], check=True)
    return into


def copy_tree(into: Path) -> Path:
    """This tree's ``vsnetd`` (as it is on disk, uncommitted changes included), copied."""
    shutil.copytree(REPO / "vsnetd", into / "vsnetd",
                    ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(into)], check=True)
    return into


def environment(tree: Path) -> dict[str, str]:
    """The tree's ``vsnetd`` first on the path. Processes run in a directory without one
    (``python -c`` looks in its working directory first)."""
    return {**os.environ, "PYTHONPATH": str(tree)}


def vsnetctl(*args: str) -> list[str]:
    return [*common.console_script("vsnetctl", "vsnetd.cli"), *args]


def timed_plan(tree: Path, config: Path, results: Results, label: str) -> None:
    started = time.perf_counter()
    process = subprocess.run(vsnetctl("plan", "-c", str(config)), capture_output=True,
                             text=True, env=environment(tree), cwd="/")
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        results.note(f"{label}: vsnetctl plan exited {process.returncode} (0: nothing to do): "
                     f"{(process.stdout + process.stderr).strip()[:300]}")
    results.time(f"{label}:process", seconds)


def phases(tree: Path, config: Path, results: Results, label: str) -> None:
    process = subprocess.run([sys.executable, "-c", PHASES, str(config)], capture_output=True,
                             text=True, env=environment(tree), cwd="/")
    if process.returncode != 0:
        results.note(f"{label}: phases failed: {process.stderr.strip()[-300:]}")
        return
    figures = json.loads(process.stdout)
    if not figures["package"].startswith(str(tree)):
        results.note(f"{label}: measured {figures['package']}, not the tree {tree}")
    if figures["changes"]:
        results.note(f"{label}: the plan was not empty: {figures['changes']} changes")
    for name in PHASE_NAMES:
        results.time(f"{label}:{name}", figures[name])


def run(args: argparse.Namespace) -> Results:
    results = Results()
    with tempfile.TemporaryDirectory(prefix="vsnet-bench-", dir="/run") as tmp:
        workdir = Path(tmp)
        # both trees are measured from copies side by side in /run (a tmpfs): reading the
        # modules from the worktree's disk while other work loads it biased the imports
        trees = {"this tree": copy_tree(workdir / "this-tree")}
        if args.baseline:
            trees[args.baseline] = export_tree(args.baseline, workdir / "baseline")
        config = workdir / f"{args.mode}.yaml"
        config.write_text(netns.to_yaml(netns.make_servers(args.servers)) if args.mode == "netns"
                          else common.pbr_yaml(common.make_pbr_servers(args.servers)))
        with common.uplinked_netns():
            progress(f"applying {args.servers} {args.mode} VS once\n")
            applied = subprocess.run(vsnetctl("apply", "-c", str(config)), capture_output=True,
                                     text=True, env=environment(REPO), cwd="/")
            if applied.returncode != 0:
                results.note(f"vsnetctl apply exited {applied.returncode}: "
                             f"{applied.stderr.strip()[:300]}")
            subprocess.run(["ip", "netns", "add", "vsnet-bench-foreign"], check=True)
            try:
                for round_ in range(1, args.repeat + 1):
                    progress(f"round {round_}/{args.repeat}\n")
                    # the order alternates: what a process leaves the kernel to finish
                    # (closing its 1,000 sockets) weighs on whichever runs next
                    order = list(trees.items())[:: 1 if round_ % 2 else -1]
                    for label, tree in order:
                        timed_plan(tree, config, results, label)
                    for label, tree in order:
                        phases(tree, config, results, label)
            finally:
                subprocess.run(["ip", "netns", "del", "vsnet-bench-foreign"], check=False)
                subprocess.run(vsnetctl("teardown", "-c", str(config)), capture_output=True,
                               env=environment(REPO), cwd="/")
    results.values["trees"] = list(trees)
    return results


def targets(results: Results, args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.mode != "netns":
        return []  # the target is for netns VS; pbr is measured for comparison
    at = common.scale_note(args.servers, TARGET_SERVERS)
    return [common.target(f"vsnetctl plan, netns, no-op <= {PLAN_TARGET * 1000:.0f} ms{at}",
                          "this tree:process", results.median_or_none("this tree:process"),
                          PLAN_TARGET, "s")]


def print_table(info: dict[str, Any], args: argparse.Namespace, results: Results) -> None:
    print(f"vsnetctl plan, nothing to do, {args.servers} {args.mode} VS, {args.repeat} interleaved "
          f"rounds (median)")
    print(machine_line(info) + f"Python {info['python']}")
    print()
    trees = results.values.get("trees", [])
    print(f"{'measure':<34}" + "".join(f"{label:>16}" for label in trees))
    for name in ("process", *PHASE_NAMES):
        row = f"{'whole process' if name == 'process' else '  phase: ' + name:<34}"
        for label in trees:
            value = results.median_or_none(f"{label}:{name}")
            row += f"{'-' if value is None else f'{value * 1000:.1f} ms':>16}"
        print(row)
    print()
    common.print_targets(targets(results, args), results.notes)


def as_json(info: dict[str, Any], args: argparse.Namespace, results: Results) -> dict[str, Any]:
    return {"benchmark": "plan", "mode": args.mode, "servers": args.servers, "repeat": args.repeat,
            "baseline": args.baseline, "machine": info, "samples_s": results.samples,
            "targets": targets(results, args), "notes": results.notes}


def main(argv: Sequence[str]) -> int:
    parser = common.arguments(__doc__, repeat=7,
                              repeat_help="interleaved rounds; medians are reported")
    parser.add_argument("--baseline", metavar="REV",
                        help="also measure the vsnetd of this git revision, in the same rounds")
    parser.add_argument("--mode", choices=("netns", "pbr"), default="netns",
                        help="the VS's mode (default netns, the issue's target; pbr: bench/cli.py's "
                             "workload, two addresses each)")
    args = common.parse(parser, argv)
    limit = netns.MAX_ID if args.mode == "netns" else common.pbr_max_servers()
    if not 1 <= args.servers <= limit:
        parser.error(f"--servers must be 1..{limit} for {args.mode} VS")
    return common.run_benchmark(__file__, argv, args, run, machine, as_json, print_table)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
