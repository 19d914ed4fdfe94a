"""Benchmark of the data plane: what vsnet's pbr rules cost the traffic (docs/rule-tree.md).

``bench/dataplane.py --servers 100,1000,4000`` builds, inside a sandbox, one "box" network
namespace per count with that many pbr VS (2 IPv4 addresses each, applied by ``vsnetctl
apply``), beside each a *baseline* box, the same host without a policy rule (the same
addresses and routes, made by ``ip -batch``), and a *flat* box holding the largest
count's lookup rules in one flat list (the layout before the rule tree); each box is
joined by a veth to a client namespace of its own. Real traffic then runs between client
and box, with a small C load generator (bench/dataplane.c) so the generator's own cost
stays small against the kernel's path, server and client pinned to one CPU:

* UDP request/response p50 to an unconnected server socket (one route lookup per
  datagram each way) bound to the first, a middle and the last VS's address, and to the
  host's own address (the host's traffic must pass vsnet's rules to reach ``main``);
* new TCP connections per second to the same four servers (2-3 lookups a connection).

Rounds are interleaved (every box and target once per round) and the median of the rounds
is compared with its baseline's median of the same run. Targets, reported PASS/MISS:
each figure ≤ 1.1x the baseline for UDP and ≥ 0.9x for connections, at every count of
at least 100; and the cost does not grow with the count: the largest count's UDP ratio
within 10 % of the smallest's. A box with 1 VS shows what any policy rule costs at all
(the kernel then leaves its no-rule fast path). This is a benchmark, not a test: it
always exits 0 once it has measured.
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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    FIRST_HOST,
    SUBNETS,
    Notes,
    console_script,
    description,
    enter_sandbox,
    machine,
    machine_line,
    make_pbr_servers,
    pbr_max_servers,
    pbr_yaml,
    print_targets,
    progress_line,
)
from tests import sandbox
from vsnetd.compile import compile_config
from vsnetd.config import parse_config
from vsnetd.kinds import Rule
from vsnetd.kinds.rule import FULL_MASK

HERE = Path(__file__).resolve().parent
HOST = "10.0.0.2"  # the box's own address: its traffic has nothing to do with any VS
CLIENT_ADDRESSES = ("10.0.0.250/24", *(f"{net[-6]}/{net.prefixlen}" for net in SUBNETS))
UDP_PORT, TCP_PORT = 7000, 7001
UDP_RATIO_TARGET, TCP_RATIO_TARGET = 1.1, 0.9
GROWTH_TARGET = 1.1
TARGET_MIN_COUNT = 100  # below, the box shows what rules cost at all
FLAT_BLOCK = 16  # the flat layout: priority_base + id * 16 + index, as before the tree


@dataclass(frozen=True, slots=True)
class Box:
    """A namespace serving traffic, and the client namespace beside it."""

    name: str  # the number of VS, "base-<number>" or "flat"
    base: str  # the box it is compared with: the same host without a policy rule
    label: str
    netns: str
    client: str
    targets: dict[str, str]  # target name -> server address


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
    config.write_text(pbr_yaml(make_pbr_servers(count)))
    result = subprocess.run(in_netns(box.netns, *console_script("vsnetctl", "vsnetd.cli"),
                                     "apply", "-c", str(config)),
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"vsnetctl apply of {count} VS failed: {result.stderr[-500:]}")


def apply_batch(box: Box, count: int, batch: Path, flat: bool) -> int:
    """The addresses and routes vsnet makes for ``count`` VS, by ``ip -batch``; with
    ``flat`` their lookup rules too, in one flat list in id order (each VS's address
    rules, then its mark rule). How many rules it made."""
    desired = compile_config(parse_config(pbr_yaml(make_pbr_servers(count)), "flat.yaml"))
    lines = []
    for server in desired.servers.values():
        rules = [obj for obj in server.objects if isinstance(obj, Rule)]
        lines += [f"{obj.kind} add {obj.describe().removeprefix(obj.kind + ' ')}"
                  for obj in server.objects if obj.kind in ("address", "route")]
        for index, rule in enumerate(rules if flat else ()):
            last = index == len(rules) - 1
            priority = 10000 + server.id * FLAT_BLOCK + (FLAT_BLOCK - 1 if last else index)
            selector = (f"from {rule.source}" if rule.source
                        else f"fwmark {rule.fwmark:#x}/{FULL_MASK:#x}")
            lines.append(f"rule add {selector} lookup {rule.table} pref {priority}")
    batch.write_text("\n".join(lines) + "\n")
    sandbox.sh("ip", "-n", box.netns, "-batch", str(batch))
    return sum(line.startswith("rule") for line in lines)


def rule_count(box: Box) -> int:
    return len(json.loads(sandbox.sh("ip", "-n", box.netns, "-j", "rule")))


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
           amount: str) -> list[float]:
    for _attempt in range(50):  # the server may not be listening yet
        result = subprocess.run(in_netns(box.client, "taskset", "-c", cpu, str(binary), mode,
                                         address, str(port), amount),
                                capture_output=True, text=True)
        if result.returncode == 0:
            return [float(word) for word in result.stdout.split()]
    raise RuntimeError(f"{mode} to {address} in {box.name} failed: {result.stderr.strip()}")


class Samples(Notes):
    def __init__(self) -> None:
        super().__init__()
        self.udp: dict[tuple[str, str], list[float]] = {}  # (box, target) -> p50 in µs
        self.tcp: dict[tuple[str, str], list[float]] = {}  # (box, target) -> connections/s
        self.rules: dict[str, int] = {}
        self.bases: dict[str, str] = {}  # box -> its baseline box

    def median(self, kind: str, box: str, target: str) -> float | None:
        values = (self.udp if kind == "udp" else self.tcp).get((box, target))
        return statistics.median(values) if values else None

    def ratio(self, kind: str, box: str, target: str) -> float | None:
        mine, base = self.median(kind, box, target), self.median(kind, self.bases[box], target)
        return None if mine is None or not base else mine / base


def measure(boxes: list[Box], binary: Path, args: argparse.Namespace, samples: Samples) -> None:
    for round_number in range(1, args.rounds + 1):
        for box in boxes:
            for target, address in box.targets.items():
                progress_line(f"round {round_number}/{args.rounds}: {box.name}, {target}")
                with server(box, binary, args.cpu, "udp-server", address, UDP_PORT):
                    p50, _p99 = client(box, binary, args.cpu, "udp-client", address,
                                       UDP_PORT, str(args.udp_count))
                samples.udp.setdefault((box.name, target), []).append(p50 / 1000)
                with server(box, binary, args.cpu, "tcp-server", address, TCP_PORT):
                    [rate] = client(box, binary, args.cpu, "tcp-client", address, TCP_PORT,
                                    str(args.tcp_seconds))
                samples.tcp.setdefault((box.name, target), []).append(rate)
    progress_line("")


def compile_generator(work: Path) -> Path:
    binary = work / "dataplane"
    subprocess.run([os.environ.get("CC", "gcc"), "-O2", "-Wall", "-o", str(binary),
                    str(HERE / "dataplane.c")], check=True)
    return binary


# --------------------------------------------------------------------------- report


def targets(samples: Samples, counts: Sequence[int]) -> list[dict[str, Any]]:
    checks = []
    scaled = [count for count in counts if count >= TARGET_MIN_COUNT]
    for count in scaled:
        for target in targets_of(count):
            udp = samples.ratio("udp", str(count), target)
            tcp = samples.ratio("tcp", str(count), target)
            checks.append({"name": f"{count} VS, {target}: UDP p50 <= {UDP_RATIO_TARGET}x",
                           "value": udp, "limit": UDP_RATIO_TARGET,
                           "pass": udp is not None and udp <= UDP_RATIO_TARGET})
            checks.append({"name": f"{count} VS, {target}: conns/s >= {TCP_RATIO_TARGET}x",
                           "value": tcp, "limit": TCP_RATIO_TARGET,
                           "pass": tcp is not None and tcp >= TCP_RATIO_TARGET})
    if len(scaled) > 1:
        small, large = str(scaled[0]), str(scaled[-1])
        for target in targets_of(scaled[0]):
            mine, base = samples.ratio("udp", large, target), samples.ratio("udp", small, target)
            growth = None if mine is None or not base else mine / base
            checks.append({"name": f"{target}: UDP ratio at {large} VS <= {GROWTH_TARGET}x "
                                   f"at {small}", "value": growth, "limit": GROWTH_TARGET,
                           "pass": growth is not None and growth <= GROWTH_TARGET,
                           "unit": f"x {small} VS"})
    return checks


def shown(target: dict[str, Any]) -> str:
    value = target["value"]
    return "not measured" if value is None else f"{value:.2f}{target.get('unit', 'x baseline')}"


def print_table(info: dict[str, Any], args: argparse.Namespace, samples: Samples,
                boxes: list[Box]) -> None:
    print(f"vsnet data-plane benchmark: pbr VS x 2 IPv4 addresses; median of {args.rounds} "
          f"interleaved rounds; server and client on CPU {args.cpu}")
    print(machine_line(info))
    print()
    print(f"{'box':<26} {'rules':>6}  {'target':<10} {'UDP p50':>9} {'x base':>7} "
          f"{'added':>8} {'conns/s':>9} {'x base':>7}")
    for box in boxes:
        label = box.label
        for target in box.targets:
            udp, tcp = samples.median("udp", box.name, target), samples.median(
                "tcp", box.name, target)
            udp_ratio, tcp_ratio = samples.ratio("udp", box.name, target), samples.ratio(
                "tcp", box.name, target)
            added = (udp or 0) - (samples.median("udp", box.base, target) or 0)
            print(f"{label:<26} {samples.rules[box.name]:>6}  {target:<10} "
                  f"{udp or 0:>6.2f} µs {udp_ratio or 0:>7.2f} {added:>+5.2f} µs "
                  f"{tcp or 0:>9.0f} {tcp_ratio or 0:>7.2f}")
            label = ""
    print()
    print_targets(targets(samples, args.counts), samples.notes, shown, width=44)


def as_json(info: dict[str, Any], args: argparse.Namespace, samples: Samples,
            boxes: list[Box]) -> dict[str, Any]:
    return {
        "benchmark": "dataplane",
        "counts": args.counts,
        "rounds": args.rounds,
        "machine": info,
        "rules": samples.rules,
        "baselines": samples.bases,
        "udp_p50_us": {f"{b}/{t}": v for (b, t), v in samples.udp.items()},
        "tcp_conns_per_s": {f"{b}/{t}": v for (b, t), v in samples.tcp.items()},
        "targets": targets(samples, args.counts),
        "notes": samples.notes,
    }


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description(__doc__))
    parser.add_argument("--servers", default="1,100,1000,4000",
                        help="comma-separated VS counts (default 1,100,1000,4000)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--udp-count", type=int, default=20000,
                        help="request/responses per UDP measure (default 20000)")
    parser.add_argument("--tcp-seconds", type=float, default=1.0,
                        help="seconds per connections/s measure (default 1)")
    parser.add_argument("--cpu", default=str((os.cpu_count() or 1) - 1),
                        help="the CPU server and client run on (default: the last)")
    parser.add_argument("--no-flat", action="store_true",
                        help="leave out the flat-list box (the layout before the rule tree)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    args.counts = sorted({int(word) for word in args.servers.split(",")})
    if not all(1 <= count <= pbr_max_servers() for count in args.counts):
        parser.error(f"--servers: counts must be 1..{pbr_max_servers()}")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    if not enter_sandbox(__file__, argv):
        return 1
    for tool in ("taskset", "gcc"):
        if shutil.which(os.environ.get("CC", "gcc") if tool == "gcc" else tool) is None:
            print(f"bench/dataplane.py: {tool} is missing (make setup installs it)",
                  file=sys.stderr)
            return 1
    samples = Samples()
    with tempfile.TemporaryDirectory(prefix="vsnet-dataplane-") as work:
        binary = compile_generator(Path(work))
        boxes = []
        for count in args.counts:
            progress_line(f"applying {count} VS")
            base = make_box(f"base-{count}", f"base-{count}", f"baseline, {count} VS", count)
            apply_batch(base, count, Path(work) / f"base-{count}.batch", flat=False)
            box = make_box(str(count), base.name, f"rule tree, {count} VS", count)
            apply_vsnet(box, count, Path(work) / f"servers-{count}.yaml")
            boxes += [base, box]
        if not args.no_flat:
            progress_line(f"flat list of {max(args.counts)} VS")
            box = make_box("flat", f"base-{max(args.counts)}", f"flat list, {max(args.counts)} VS",
                           max(args.counts))
            flat_rules = apply_batch(box, max(args.counts), Path(work) / "flat.batch", flat=True)
            samples.note(f"the flat box holds {flat_rules} lookup rules in one list, the "
                         f"layout before the rule tree: the cost the tree removes")
            boxes.append(box)
        for box in boxes:
            samples.rules[box.name] = rule_count(box)
            samples.bases[box.name] = box.base
        measure(boxes, binary, args, samples)
    info = machine()
    if args.json:
        print(json.dumps(as_json(info, args, samples, boxes), indent=2))
    else:
        print_table(info, args, samples, boxes)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
