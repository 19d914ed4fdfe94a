"""What pbr confinement costs: the same N pbr VS converged with and without it.

How it measures: docs/benchmarks.md (`bench/confinement.py`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common
from bench.common import Results, timed
from vsnetd.compile import compile_config
from vsnetd.config import Config, parse_config
from vsnetd.kernel import Kernel
from vsnetd.kinds import confinement
from vsnetd.observe import observe, recheck
from vsnetd.reconcile import converge, plan_for

OPTIONS: dict[str, common.Option] = {"--servers": (200, "number of VS"),
                                     "--repeat": (3, "interleaved rounds")}
CHECKS = 5  # no-op plans and periodic checks per round
MEASURES = ("cold apply", "no-op plan", "periodic check")


def measure_one(results: Results, text: str, label: str) -> None:
    config = parse_config(text)
    desired = compile_config(config)
    with common.uplinked_netns(), Kernel() as kernel:
        try:
            seconds, result = timed(converge, kernel, desired)
            results.time(f"{label} cold apply", seconds)
            assert result.converged, result.failures
            for _ in range(CHECKS):
                seconds, plan = timed(plan_for, kernel, desired)
                results.time(f"{label} no-op plan", seconds)
                assert not plan
            observed = observe(kernel, desired.scope)
            seen: dict[str, tuple[object, ...]] = {}
            recheck(desired.scope, desired.servers.values(), observed, seen)
            for _ in range(CHECKS):
                seconds, changed = timed(recheck, desired.scope, desired.servers.values(),
                                         observed, seen)
                results.time(f"{label} periodic check", seconds)
                assert not changed
        finally:
            converge(kernel, compile_config(Config(version=1, settings=config.settings)))


def measure(args: argparse.Namespace) -> Results:
    results = Results()
    name = f"vsnet-bench-{os.getpid()}"  # the cgroups, unique to the run
    plain = common.pbr_yaml(common.make_pbr_servers(args.servers))
    confined = plain.replace("servers:\n", f"settings: {{cgroup_root: {name}, bpf_pin_root: "
                             f"/sys/fs/bpf/{name}}}\nservers:\n", 1)
    mount = confinement.cgroup2_mount()
    try:
        for _ in range(args.repeat):  # interleaved: contention hits both alike
            measure_one(results, plain, "without")
            measure_one(results, confined, "with")
    finally:
        results.values["cgroups_left"] = left = mount is not None and (mount / name).exists()
        if left:
            print(f"bench/confinement.py: cgroup {name} left behind", file=sys.stderr)
    return results


def table(info: dict[str, Any], args: argparse.Namespace, results: Results) -> None:
    print(f"cgroups left behind: {'YES' if results.values['cgroups_left'] else 'none'}")
    print(f"{args.servers} pbr VS; medians of {args.repeat} cold applies, "
          f"{args.repeat * CHECKS} plans/checks")
    for what in MEASURES:
        floor, cost = (statistics.median(results.samples[f"{how} {what}"])
                       for how in ("without", "with"))
        print(f"  {what:15} without {floor * 1000:8.1f} ms   with {cost * 1000:8.1f} ms"
              f"   (+{(cost - floor) * 1000 / args.servers:.3f} ms per VS)")


def as_json(args: argparse.Namespace, results: Results) -> dict[str, Any]:
    return {"benchmark": "confinement", "servers": args.servers, "repeat": args.repeat,
            "samples_s": results.samples, "values": results.values}


if __name__ == "__main__":
    sys.exit(common.main(__file__, __doc__, sys.argv[1:], OPTIONS, measure, table, as_json))
