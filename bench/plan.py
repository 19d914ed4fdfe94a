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
import time
from io import BytesIO
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common, netns
from bench.common import Results, progress, vsnetctl

REPO = Path(__file__).resolve().parent.parent
OPTIONS: dict[str, common.Option] = {
    "--servers": (1000, "number of VS"),
    "--repeat": (7, "interleaved rounds; medians are reported"),
    "--baseline": {"metavar": "REV",
                   "help": "also measure the vsnetd of this git revision, in the same rounds"},
    "--mode": {"choices": ("netns", "pbr"), "default": "netns",
               "help": "the VS's mode (default netns, the target's; pbr: bench/cli.py's "
                       "workload, two addresses each)"},
}
# Run in a child process with the tree under test first on sys.path: the plan's phases.
PHASES = """
import gc, json, sys, time
started = time.perf_counter()
import vsnetd.cli, vsnetd.reconcile, vsnetd.kernel, vsnetd.observe
from vsnetd.compile import compile_config
from vsnetd.config import parse_config
from vsnetd.diff import plan_changes
from vsnetd.kernel import Kernel
from vsnetd.observe import observe
imported = time.perf_counter()
gc.disable()  # as plan_for does
# as vsnetctl opens it (a revision before HELPER_FROM never shared its look), with its look
# started ahead of reading the config (before look_ahead, observe started it)
helper_from = getattr(vsnetd.cli, "HELPER_FROM", None)
with Kernel(**({"helper_from": helper_from} if helper_from else {})) as kernel:
    getattr(vsnetd.observe, "look_ahead", lambda _kernel: None)(kernel)
    text = open(sys.argv[1]).read()
    t0 = time.perf_counter()
    config = parse_config(text, file=sys.argv[1])
    t1 = time.perf_counter()
    desired = compile_config(config)
    t2 = time.perf_counter()
    observed = observe(kernel, desired.scope)
    t4 = time.perf_counter()
plan = plan_changes(desired, observed)
t5 = time.perf_counter()
print(json.dumps({"import": imported - started, "parse": t1 - t0, "compile": t2 - t1,
                  "observe": t4 - t2, "diff": t5 - t4, "changes": len(plan.changes),
                  "package": vsnetd.__file__}))
"""
PHASE_NAMES = ("import", "parse", "compile", "observe", "diff")


def check(args: argparse.Namespace) -> str:
    limit = netns.MAX_ID if args.mode == "netns" else common.pbr_max_servers()
    return f"--servers must be 1..{limit} for {args.mode} VS" if args.servers > limit else ""


def tree(into: Path, revision: str | None) -> Path:
    """The ``vsnetd`` package of ``revision`` (None: this tree's, uncommitted changes
    included) under ``into``, compiled now so that no round pays for its first import."""
    if revision is None:
        shutil.copytree(REPO / "vsnetd", into / "vsnetd",
                        ignore=shutil.ignore_patterns("__pycache__"))
    else:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", revision, "vsnetd"],
                                 capture_output=True, check=True).stdout
        with tarfile.open(fileobj=BytesIO(archive)) as tar:
            tar.extractall(into, filter="data")
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(into)], check=True)
    return into


def run(argv: list[str], tree: Path) -> subprocess.CompletedProcess[str]:
    """``argv`` with ``tree``'s ``vsnetd`` first on the path, in a directory without one
    (``python -c`` looks in its working directory first)."""
    return subprocess.run(argv, capture_output=True, text=True, cwd="/",
                          env={**os.environ, "PYTHONPATH": str(tree)})


def measure_tree(results: Results, label: str, tree: Path, config: Path, phases: bool) -> None:
    """``vsnetctl plan`` as a whole process or (``phases``) its phases timed inside one."""
    if not phases:
        started = time.perf_counter()
        process = run(vsnetctl("plan", "-c", str(config)), tree)
        results.time(f"{label}:process", time.perf_counter() - started)
        if process.returncode != 0:
            results.note(f"{label}: vsnetctl plan exited {process.returncode} (0: nothing to "
                         f"do): {(process.stdout + process.stderr).strip()[:300]}")
        return
    process = run([sys.executable, "-c", PHASES, str(config)], tree)
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


def measure(args: argparse.Namespace) -> Results:
    results = Results()
    text = (netns.to_yaml(netns.make_servers(args.servers)) if args.mode == "netns"
            else common.pbr_yaml(common.make_pbr_servers(args.servers)))
    with common.config_dir(text) as (workdir, config), common.uplinked_netns():
        # both trees are measured from copies side by side in /run (a tmpfs): reading the
        # modules from the worktree's disk while other work loads it biased the imports
        trees = {"this tree": tree(workdir / "this-tree", None)}
        if args.baseline:
            trees[args.baseline] = tree(workdir / "baseline", args.baseline)
        progress(f"applying {args.servers} {args.mode} VS once\n")
        applied = run(vsnetctl("apply", "-c", str(config)), REPO)
        if applied.returncode != 0:
            results.note(f"vsnetctl apply exited {applied.returncode}: "
                         f"{applied.stderr.strip()[:300]}")
        subprocess.run(["ip", "netns", "add", "vsnet-bench-foreign"], check=True)
        try:
            for round_ in range(1, args.repeat + 1):
                progress(f"round {round_}/{args.repeat}\n")
                # the order alternates: what a process leaves the kernel to finish (closing
                # its 1,000 sockets) weighs on whichever runs next
                order = list(trees.items())[:: 1 if round_ % 2 else -1]
                for phases in (False, True):
                    for label, path in order:
                        measure_tree(results, label, path, config, phases)
        finally:
            subprocess.run(["ip", "netns", "del", "vsnet-bench-foreign"], check=False)
            run(vsnetctl("teardown", "-c", str(config)), REPO)
    results.values["trees"] = list(trees)
    return results


def targets(args: argparse.Namespace, results: Results) -> list[dict[str, Any]]:
    if args.mode != "netns":
        return []  # the target is for netns VS (docs/benchmarks.md); pbr is for comparison
    return [common.target(f"vsnetctl plan, netns, no-op <= 200 ms"
                          f"{common.scale_note(args.servers)}", "this tree:process",
                          results.median_or_none("this tree:process"), 0.200, "s")]


def table(info: dict[str, Any], args: argparse.Namespace, results: Results) -> None:
    common.header(f"vsnetctl plan, nothing to do, {args.servers} {args.mode} VS, {args.repeat} "
                  f"interleaved rounds (median)", info)
    trees = results.values["trees"]
    print(f"{'measure':<34}" + "".join(f"{label:>16}" for label in trees))
    for name in ("process", *PHASE_NAMES):
        row = f"{'whole process' if name == 'process' else '  phase: ' + name:<34}"
        for label in trees:
            value = results.median_or_none(f"{label}:{name}")
            row += f"{'-' if value is None else f'{value * 1000:.1f} ms':>16}"
        print(row)


def as_json(args: argparse.Namespace, results: Results) -> dict[str, Any]:
    return {"benchmark": "plan", "mode": args.mode, "servers": args.servers, "repeat": args.repeat,
            "baseline": args.baseline, "samples_s": results.samples}


if __name__ == "__main__":
    sys.exit(common.main(__file__, __doc__, sys.argv[1:], OPTIONS, measure, table, as_json,
                         targets, check=check))
