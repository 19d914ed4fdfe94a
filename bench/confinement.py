"""What pbr confinement costs: the same N pbr VS converged with and without it.

How it measures: docs/benchmarks.md (`bench/confinement.py`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import add_uplink, enter_sandbox, make_pbr_servers, pbr_yaml
from tests.sandbox import fresh_netns
from vsnetd.compile import compile_config
from vsnetd.config import Config, parse_config
from vsnetd.kernel import Kernel
from vsnetd.kinds import confinement
from vsnetd.observe import observe, recheck
from vsnetd.reconcile import converge, plan_for


def measure(text: str, rounds: int, label: str, times: dict[str, list[float]]) -> None:
    config = parse_config(text)
    desired = compile_config(config)
    with fresh_netns(), Kernel() as kernel:
        add_uplink()
        try:
            started = time.perf_counter()
            result = converge(kernel, desired)
            times.setdefault(f"{label} cold apply", []).append(time.perf_counter() - started)
            assert result.converged, result.failures
            for _ in range(rounds):
                started = time.perf_counter()
                assert not plan_for(kernel, desired)
                times.setdefault(f"{label} no-op plan", []).append(time.perf_counter() - started)
            observed = observe(kernel, desired.scope)
            seen: dict[str, tuple[object, ...]] = {}
            recheck(desired.scope, desired.servers.values(), observed, seen)
            for _ in range(rounds):
                started = time.perf_counter()
                assert not recheck(desired.scope, desired.servers.values(),
                                                observed, seen)
                times.setdefault(f"{label} periodic check", []).append(
                    time.perf_counter() - started)
        finally:
            empty = compile_config(Config(version=1, settings=config.settings))
            converge(kernel, empty)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--servers", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    if not enter_sandbox(__file__, argv):
        return 0
    name = f"vsnet-bench-{os.getpid()}"
    mount = confinement.cgroup2_mount()
    servers = make_pbr_servers(args.servers)
    plain = pbr_yaml(servers)
    confined = plain.replace("servers:\n", f"settings: {{cgroup_root: {name}, bpf_pin_root: "
                             f"/sys/fs/bpf/{name}}}\nservers:\n", 1)
    times: dict[str, list[float]] = {}
    try:
        for _ in range(args.repeat):  # interleaved: contention hits both alike
            measure(plain, 5, "without", times)
            measure(confined, 5, "with", times)
    finally:
        left = mount is not None and (mount / name).exists()
        print(f"cgroups left behind: {'YES' if left else 'none'}")
    print(f"{args.servers} pbr VS; medians of {args.repeat} cold applies, "
          f"{args.repeat * 5} plans/checks")
    for what in ("cold apply", "no-op plan", "periodic check"):
        floor = statistics.median(times[f"without {what}"])
        cost = statistics.median(times[f"with {what}"])
        print(f"  {what:15} without {floor * 1000:8.1f} ms   with {cost * 1000:8.1f} ms"
              f"   (+{(cost - floor) * 1000 / args.servers:.3f} ms per VS)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
