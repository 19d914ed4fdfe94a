"""Benchmark of the data plane: what vsnet's pbr rules cost the traffic, with real traffic.

Per VS count, a box of that many pbr VS (``vsnetctl apply``) beside its *baseline*, the same
host without a policy rule; a *flat* box with the largest count's rules in one list (the
layout before the rule tree). UDP request/response p50 and TCP connections/s to the first,
a middle and the last VS and to the host's own address, by a C load generator
(bench/dataplane.c) on one CPU. How it measures: docs/benchmarks.md (`bench/dataplane.py`);
what the figures say: docs/rule-tree.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common
from bench.common import FIRST_HOST, SUBNETS, Notes, progress_line
from bench.pbr import ip_command
from tests import sandbox
from vsnetd.compile import compile_config
from vsnetd.config import parse_config
from vsnetd.kinds import Address, Route, Rule
from vsnetd.kinds.rule import FULL_MASK

HOST = "10.0.0.2"  # the box's own address: its traffic has nothing to do with any VS
CLIENT_ADDRESSES = ("10.0.0.250/24", *(f"{net[-6]}/{net.prefixlen}" for net in SUBNETS))
UDP_PORT, TCP_PORT = 7000, 7001
UDP_RATIO_TARGET, TCP_RATIO_TARGET, GROWTH_TARGET = 1.1, 0.9, 1.1
TARGET_MIN_COUNT = 100  # below, the box shows what rules cost at all
FLAT_BLOCK = 16  # the flat layout: priority_base + id * 16 + index, as before the tree
OPTIONS: dict[str, common.Option] = {
    "--servers": {"default": "1,100,1000,4000",
                  "help": "comma-separated VS counts (default 1,100,1000,4000)"},
    "--rounds": (9, "interleaved rounds"),
    "--udp-count": (20000, "request/responses per UDP measure"),
    "--tcp-seconds": (1.0, "seconds per connections/s measure"),
    "--cpu": {"default": str((os.cpu_count() or 1) - 1),
              "help": "the CPU server and client run on (default: the last)"},
    "--no-flat": (False, "leave out the flat-list box (the layout before the rule tree)"),
}


@dataclass(frozen=True, slots=True)
class Box:
    """A namespace serving traffic, and the client namespace beside it."""

    name: str  # the number of VS, "base-<number>" or "flat"
    base: str  # the box it is compared with: the same host without a policy rule
    label: str
    netns: str
    client: str
    targets: dict[str, str]  # target name -> server address


@dataclass
class Samples(Notes):
    boxes: list[Box] = field(default_factory=list)
    udp: dict[tuple[str, str], list[float]] = field(default_factory=dict)  # p50, µs
    tcp: dict[tuple[str, str], list[float]] = field(default_factory=dict)  # connections/s
    rules: dict[str, int] = field(default_factory=dict)

    def median(self, kind: str, box: str, target: str) -> float | None:
        values = (self.udp if kind == "udp" else self.tcp).get((box, target))
        return statistics.median(values) if values else None

    def ratio(self, kind: str, box: Box, target: str) -> float | None:
        """The median of the rounds' ratios: in each round a box and its baseline are
        measured back to back, so a drift in the machine's speed (other guests of the VM
        host) weighs on both sides of a ratio alike."""
        table = self.udp if kind == "udp" else self.tcp
        mine, base = table.get((box.name, target)), table.get((box.base, target))
        if not mine or not base:
            return None
        return statistics.median(value / floor for value, floor in zip(mine, base, strict=True))


def vs_address(number: int) -> str:
    return str(SUBNETS[0][FIRST_HOST + number])


def targets_of(count: int) -> dict[str, str]:
    return {"first VS": vs_address(1), "middle VS": vs_address(count // 2 or 1),
            "last VS": vs_address(count), "host": HOST}


def in_netns(netns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", netns, *argv]


def make_box(name: str, base: str, label: str, count: int) -> Box:
    netns, client = f"dp-{name}", f"dp-{name}-cl"
    for ns in (netns, client):
        sandbox.ip("netns", "add", ns)
        sandbox.ip("link", "set", "lo", "up", netns=ns)
    sandbox.ip("link", "add", "eth0", "netns", netns, "type", "veth", "peer", "name", "c0",
               "netns", client)
    sandbox.ip("addr", "add", f"{HOST}/24", "dev", "eth0", netns=netns)
    for address in CLIENT_ADDRESSES:
        sandbox.ip("addr", "add", address, "dev", "c0", netns=client)
    for ns, device in ((netns, "eth0"), (client, "c0")):
        sandbox.ip("link", "set", device, "up", netns=ns)
    return Box(name, base, label, netns, client, targets_of(count))


def apply_vsnet(box: Box, count: int, config: Path) -> None:
    config.write_text(common.pbr_yaml(common.make_pbr_servers(count)))
    done = subprocess.run(in_netns(box.netns, *common.vsnetctl("apply", "-c", str(config))),
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"vsnetctl apply of {count} VS failed: {done.stderr[-500:]}")


def apply_batch(box: Box, count: int, batch: Path, flat: bool) -> int:
    """vsnet's addresses and routes for ``count`` VS, by ``ip -batch``; with ``flat`` their
    lookup rules too, in one list in id order (each VS's address rules, then its mark
    rule). How many rules that makes."""
    text = common.pbr_yaml(common.make_pbr_servers(count))
    lines, made = [], 0
    for server in compile_config(parse_config(text, "flat.yaml")).servers.values():
        lines += [ip_command(obj) for obj in server.objects if isinstance(obj, Address | Route)]
        rules = [obj for obj in server.objects if isinstance(obj, Rule)] if flat else []
        made += len(rules)
        for index, rule in enumerate(rules):
            slot = FLAT_BLOCK - 1 if index == len(rules) - 1 else index
            selector = (f"from {rule.source}" if rule.source
                        else f"fwmark {rule.fwmark:#x}/{FULL_MASK:#x}")
            lines.append(f"rule add {selector} lookup {rule.table} "
                         f"pref {10000 + server.id * FLAT_BLOCK + slot}")
    batch.write_text("\n".join(lines) + "\n")
    sandbox.sh("ip", "-n", box.netns, "-batch", str(batch))
    return made


@contextmanager
def server(box: Box, binary: Path, cpu: str, mode: str, address: str, port: int
           ) -> Iterator[None]:
    process = subprocess.Popen(in_netns(box.netns, "taskset", "-c", cpu, str(binary), mode,
                                        address, str(port)))
    try:
        yield
    finally:
        process.kill()
        process.wait()


def client(box: Box, binary: Path, cpu: str, mode: str, address: str, port: int,
           amount: float) -> list[float]:
    for _attempt in range(50):  # the server may not be listening yet
        done = subprocess.run(in_netns(box.client, "taskset", "-c", cpu, str(binary), mode,
                                       address, str(port), str(amount)),
                              capture_output=True, text=True)
        if done.returncode == 0:
            return [float(word) for word in done.stdout.split()]
    raise RuntimeError(f"{mode} to {address} in {box.name} failed: {done.stderr.strip()}")


def build(args: argparse.Namespace, samples: Samples, work: Path) -> None:
    for count in args.counts:
        progress_line(f"applying {count} VS")
        base = make_box(f"base-{count}", f"base-{count}", f"baseline, {count} VS", count)
        apply_batch(base, count, work / f"base-{count}.batch", flat=False)
        box = make_box(str(count), base.name, f"rule tree, {count} VS", count)
        apply_vsnet(box, count, work / f"servers-{count}.yaml")
        samples.boxes += [base, box]
    if not args.no_flat:
        largest = max(args.counts)
        progress_line(f"flat list of {largest} VS")
        box = make_box("flat", f"base-{largest}", f"flat list, {largest} VS", largest)
        rules = apply_batch(box, largest, work / "flat.batch", flat=True)
        samples.note(f"the flat box holds {rules} lookup rules in one list, the layout "
                     f"before the rule tree: the cost the tree removes")
        samples.boxes.append(box)
    for box in samples.boxes:
        samples.rules[box.name] = len(json.loads(sandbox.sh("ip", "-n", box.netns, "-j", "rule")))


def measure(args: argparse.Namespace) -> Samples:
    samples = Samples()
    with tempfile.TemporaryDirectory(prefix="vsnet-dataplane-") as work:
        binary = Path(work) / "dataplane"
        subprocess.run([os.environ.get("CC", "gcc"), "-O2", "-Wall", "-o", str(binary),
                        str(Path(__file__).with_name("dataplane.c"))], check=True)
        build(args, samples, Path(work))
        compared: dict[str, list[Box]] = {}  # a baseline's name -> it and the boxes it is for
        for box in samples.boxes:
            compared.setdefault(box.base, []).append(box)
        for round_number in range(1, args.rounds + 1):
            for boxes in compared.values():
                for target in boxes[0].targets:
                    # back to back, in an order that alternates round by round: what one
                    # measure leaves behind (a warm cache) favours each side alike
                    for box in boxes if round_number % 2 else boxes[::-1]:
                        progress_line(f"round {round_number}/{args.rounds}: {box.name}, {target}")
                        measure_once(args, samples, binary, box, target)
        progress_line("")
    return samples


def measure_once(args: argparse.Namespace, samples: Samples, binary: Path, box: Box,
                 target: str) -> None:
    """The UDP p50 and the connections/s of one target of one box."""
    address, key = box.targets[target], (box.name, target)
    with server(box, binary, args.cpu, "udp-server", address, UDP_PORT):
        p50, _p99 = client(box, binary, args.cpu, "udp-client", address, UDP_PORT,
                           args.udp_count)
    samples.udp.setdefault(key, []).append(p50 / 1000)
    with server(box, binary, args.cpu, "tcp-server", address, TCP_PORT):
        [rate] = client(box, binary, args.cpu, "tcp-client", address, TCP_PORT, args.tcp_seconds)
    samples.tcp.setdefault(key, []).append(rate)


def targets(args: argparse.Namespace, samples: Samples) -> list[dict[str, Any]]:
    checks = []
    boxes = {box.name: box for box in samples.boxes}
    scaled = [str(count) for count in args.counts if count >= TARGET_MIN_COUNT]
    for count in scaled:
        for target in boxes[count].targets:
            checks.append(common.target(
                f"{count} VS, {target}: UDP p50 <= {UDP_RATIO_TARGET}x", "udp",
                samples.ratio("udp", boxes[count], target), UDP_RATIO_TARGET, "x baseline"))
            checks.append(common.target(
                f"{count} VS, {target}: conns/s >= {TCP_RATIO_TARGET}x", "tcp",
                samples.ratio("tcp", boxes[count], target), TCP_RATIO_TARGET, "x baseline",
                at_least=True))
    if len(scaled) > 1:
        small, large = scaled[0], scaled[-1]
        for target in boxes[small].targets:
            growth = common.ratio(samples.ratio("udp", boxes[large], target),
                                  samples.ratio("udp", boxes[small], target))
            checks.append(common.target(
                f"{target}: UDP ratio at {large} VS <= {GROWTH_TARGET}x at {small}", "growth",
                growth, GROWTH_TARGET, f"x {small} VS"))
    return checks


def table(info: dict[str, Any], args: argparse.Namespace, samples: Samples) -> None:
    print(f"vsnet data-plane benchmark: pbr VS x 2 IPv4 addresses; medians of {args.rounds} "
          f"rounds (x base: of each round's ratio to the baseline measured beside it); "
          f"server and client on CPU {args.cpu}")
    print(common.machine_line(info))
    print()
    print(f"{'box':<26} {'rules':>6}  {'target':<10} {'UDP p50':>9} {'x base':>7} "
          f"{'added':>8} {'conns/s':>9} {'x base':>7}")
    for box in samples.boxes:
        label = box.label
        for target in box.targets:
            udp = samples.median("udp", box.name, target) or 0
            added = udp - (samples.median("udp", box.base, target) or 0)
            print(f"{label:<26} {samples.rules[box.name]:>6}  {target:<10} {udp:>6.2f} µs "
                  f"{samples.ratio('udp', box, target) or 0:>7.2f} {added:>+5.2f} µs "
                  f"{samples.median('tcp', box.name, target) or 0:>9.0f} "
                  f"{samples.ratio('tcp', box, target) or 0:>7.2f}")
            label = ""


def as_json(args: argparse.Namespace, samples: Samples) -> dict[str, Any]:
    return {"benchmark": "dataplane", "counts": args.counts, "rounds": args.rounds,
            "rules": samples.rules, "baselines": {b.name: b.base for b in samples.boxes},
            "udp_p50_us": {f"{b}/{t}": v for (b, t), v in samples.udp.items()},
            "tcp_conns_per_s": {f"{b}/{t}": v for (b, t), v in samples.tcp.items()}}


def check(args: argparse.Namespace) -> str:
    words = args.servers.split(",")
    if not all(word.isdigit() for word in words):
        return "--servers: comma-separated VS counts"
    args.counts = sorted({int(word) for word in words})
    if not all(1 <= count <= common.pbr_max_servers() for count in args.counts):
        return f"--servers: counts must be 1..{common.pbr_max_servers()}"
    missing = [tool for tool in ("taskset", os.environ.get("CC", "gcc")) if not shutil.which(tool)]
    return f"{', '.join(missing)} missing (make setup installs them)" if missing else ""


if __name__ == "__main__":
    sys.exit(common.main(__file__, __doc__, sys.argv[1:], OPTIONS, measure, table,
                         as_json, targets, check=check))
