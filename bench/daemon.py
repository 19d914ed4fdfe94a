"""Benchmark of vsnetd as a running process: edit-to-kernel latency, self-heal, CPU and memory.

How it measures: docs/benchmarks.md (`bench/daemon.py`).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from importlib.metadata import version
from ipaddress import IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common
from bench.common import Event, KernelEvents, PbrServer, Results, rule_created
from bench.common import progress_line as progress
from tests import sandbox
from tests.daemons import Daemon, save
from vsnetd.compile import compile_config
from vsnetd.config import drop_in_dir, load_config, parse_config
from vsnetd.kinds import route as route_kind
from vsnetd.kinds import rule as rule_kind
from vsnetd.kinds.route import Route
from vsnetd.kinds.rule import Rule
from vsnetd.netlink import RTM_NEWRULE, RtnlSocket
from vsnetd.state import VSNET_PROTOCOL, DesiredState

KINDS = {"rule": rule_kind, "route": route_kind}  # what a heal deletes, and its codec

MOVED_HOST = 30000  # an edit moves VS n's second address to host MOVED_HOST + n (and back)
EDIT_GAP = 0.050  # seconds between two measured edits (or heals): they must not coalesce
WAIT_TIMEOUT = 10.0  # seconds before a change that never shows is counted as lost
SETTLE = 1.0  # seconds after READY=1 before anything is measured
# The unit file's WatchdogSec=30s: the daemon runs here as systemd runs it.
WATCHDOG_USEC = "30000000"

# Targets (from the issue), at TARGET_SERVERS VS.
EDIT_P50_TARGET = 0.005
EDIT_P99_TARGET = 0.015
EDIT_VS_IP_BATCH_TARGET = 1.0  # p50 of the edit / p50 of ip -batch making the same change
HEAL_P50_TARGET = 0.010
IDLE_CPU_TARGET = 1.0  # percent of one CPU
RSS_TARGET = 80_000_000  # bytes: 80 MB read strictly (76.3 MiB)
TARGET_SERVERS = 1000


# --------------------------------------------------------------------------- workload


def moved(vs: PbrServer) -> PbrServer:
    """The VS with its second address moved to its other host (and back, next time)."""
    current = vs.addresses[1]
    net = current.network
    hosts = (net[common.FIRST_HOST + vs.id], net[MOVED_HOST + vs.id])
    other = hosts[1] if current.ip == hosts[0] else hosts[0]
    return replace(vs, addresses=(vs.addresses[0], IPv4Interface((other, net.prefixlen))))


def drop_in_yaml(vs: PbrServer) -> str:
    """The drop-in file of one VS: its ``servers:`` entry."""
    return common.pbr_yaml([vs]).removeprefix("version: 1\n")


FLOOR_DEVICE = "floor0"  # the ip -batch floor's device: no VS uses it
FLOOR_TABLE, FLOOR_PRIORITY = 500, 500  # below vsnet's ranges
FLOOR_NET = IPv4Network("10.200.0.0/16")


def floor_batch(old: str, new: str) -> str:
    """What vsnet does for one edit, as ``ip -batch`` input: the second address replaced,
    its table's two routes replaced, its rule replaced."""
    gateway = FLOOR_NET[1]
    return "\n".join([
        f"address del {old}/16 dev {FLOOR_DEVICE}",
        f"address add {new}/16 dev {FLOOR_DEVICE}",
        f"route replace {FLOOR_NET} dev {FLOOR_DEVICE} src {new} table {FLOOR_TABLE}",
        f"route replace default via {gateway} dev {FLOOR_DEVICE} src {new} table {FLOOR_TABLE}",
        f"rule del priority {FLOOR_PRIORITY}",
        f"rule add priority {FLOOR_PRIORITY} from {new} lookup {FLOOR_TABLE}",
    ]) + "\n"


def rule_from(source: str) -> Callable[[Event], bool]:
    """Matches the creation of a rule ``from source``."""
    return lambda event: created_from(event) == source


def rule_at(priority: int) -> Callable[[Event], bool]:
    """Matches the creation of a rule at ``priority``."""
    return rule_created(lambda rule: rule.priority == priority)


DEFAULT = "0.0.0.0/0"


def default_route_in(table: int) -> Callable[[Event], bool]:
    """Matches the creation of the default route of ``table``."""
    return common.route_created(lambda route: route.table == table and route.destination == DEFAULT)


# --------------------------------------------------------------------------- /proc


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM, in bytes."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) * 1024
    return found


@dataclass(slots=True)
class CpuWindow:
    """CPU the daemon used over a stretch of wall-clock time."""

    pid: int
    started: float = 0.0
    cpu: float = 0.0
    threads: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.started = time.perf_counter()
        self.cpu = common.stat_cpu_ticks(self.pid) / common.CLOCK_TICK
        self.threads = thread_cpu(self.pid)

    def stop(self, values: dict[str, Any], prefix: str) -> None:
        """Into ``values``, under ``prefix``: the CPU used as percent of one CPU (from stat,
        from schedstat, per thread from schedstat) and the window's seconds."""
        wall = time.perf_counter() - self.started
        cpu = common.stat_cpu_ticks(self.pid) / common.CLOCK_TICK - self.cpu
        after = thread_cpu(self.pid)
        threads = {name: after[name] - self.threads.get(name, 0.0) for name in after}
        values[f"{prefix}_cpu_percent"] = cpu / wall * 100
        values[f"{prefix}_cpu_schedstat_percent"] = sum(threads.values()) / wall * 100
        values[f"{prefix}_cpu_threads_percent"] = {n: s / wall * 100 for n, s in threads.items()}
        values[f"{prefix}_seconds"] = wall


def thread_cpu(pid: int) -> dict[str, float]:
    return {name: ns / 1e9 for name, ns in common.schedstat_ns(pid).items()}


# --------------------------------------------------------------------------- measuring


@dataclass(slots=True)
class Bench:
    """One daemon, its config file, and the kernel's notifications."""

    args: argparse.Namespace
    servers: list[PbrServer]
    desired: DesiredState
    config: Path
    floor: Floor | None
    daemon: Daemon
    events: KernelEvents
    requests: RtnlSocket
    results: Results

    def write(self, index: int) -> float:
        if self.args.single_file:
            return save(self.config, common.pbr_yaml(self.servers))
        vs = self.servers[index]
        return save(drop_in_dir(self.config) / f"{vs.name}.yaml", drop_in_yaml(vs))

    def edit(self, index: int) -> tuple[str, float]:
        """Move VS ``index``'s second address; (the new address, when the file was in place)."""
        self.servers[index] = moved(self.servers[index])
        return str(self.servers[index].addresses[1].ip), self.write(index)


def write_config(config: Path, servers: list[PbrServer], single_file: bool) -> None:
    if single_file:
        config.write_text(common.pbr_yaml(servers))
        return
    config.write_text("version: 1\n")
    directory = drop_in_dir(config)
    directory.mkdir(exist_ok=True)
    for vs in servers:
        (directory / f"{vs.name}.yaml").write_text(drop_in_yaml(vs))


class Floor:
    """The same change as one edit, made by an ``ip -batch`` process."""

    def __init__(self, workdir: Path) -> None:
        sandbox.ip("link", "add", FLOOR_DEVICE, "type", "veth", "peer", "name", "floor1")
        sandbox.ip("link", "set", FLOOR_DEVICE, "up")
        self.hosts = (str(FLOOR_NET[10]), str(FLOOR_NET[30010]))
        self.current = 0
        sandbox.ip("address", "add", f"{self.hosts[0]}/16", "dev", FLOOR_DEVICE)
        sandbox.ip("rule", "add", "priority", str(FLOOR_PRIORITY), "from", self.hosts[0],
                   "lookup", str(FLOOR_TABLE))
        self.batch = workdir / "floor.batch"

    def change(self) -> tuple[str, float]:
        """(the new address, when the process was started); the process ran to its end."""
        old, new = self.hosts[self.current], self.hosts[1 - self.current]
        self.current = 1 - self.current
        self.batch.write_text(floor_batch(old, new))
        t0 = time.perf_counter()
        subprocess.run(["ip", "-batch", str(self.batch)], check=True)
        return new, t0

    def close(self) -> None:
        sandbox.sh("ip", "rule", "del", "priority", str(FLOOR_PRIORITY), check=False)
        sandbox.sh("ip", "link", "del", FLOOR_DEVICE, check=False)


def measure_reference(results: Results, desired: DesiredState, config: Path) -> None:
    """What vsnet's objects are, and what reading the file costs in a process of its own:
    ``load_config`` + ``compile_config``, the first steps of every reload (median of 5)."""
    objects: dict[str, int] = {}
    for server in desired.servers.values():
        for obj in server.objects:
            objects[obj.kind] = objects.get(obj.kind, 0) + 1
    results.values["objects"] = objects
    took = []
    for _run in range(5):
        started = time.perf_counter()
        compile_config(load_config(config))
        took.append(time.perf_counter() - started)
    results.values["reference_load_compile"] = statistics.median(took)


def measure_idle(bench: Bench, seconds: float) -> None:
    window = CpuWindow(bench.daemon.pid)
    time.sleep(seconds)
    window.stop(bench.results.values, "idle")
    bench.results.values["rss_idle"] = memory(bench.daemon.pid)["VmRSS"]


def measure_edits(bench: Bench) -> None:
    """One VS's second address, moved and back, ``--edits`` times; one at a time."""
    results, events = bench.results, bench.events
    index = len(bench.servers) // 2
    status_every = max(1, bench.args.edits // bench.args.status_samples)
    lost = 0
    for number in range(bench.args.edits):
        progress(f"edit {number + 1}/{bench.args.edits}")
        if bench.floor is not None:  # interleaved: contention weighs on both alike
            events.drain()
            address, t0 = bench.floor.change()
            found, _seen = events.wait(rule_from(address), WAIT_TIMEOUT)
            if found is not None:
                results.time("floor_ip_batch", found.at - t0)
            time.sleep(EDIT_GAP)
        events.drain()
        address, t0 = bench.edit(index)
        found, seen = events.wait(rule_from(address), WAIT_TIMEOUT)
        if found is None:
            lost += 1
            continue
        results.time("edit", found.at - t0)
        results.time("edit_first", seen[0].at - t0)  # the daemon reacting: watch, load, plan
        results.time("edit_apply", found.at - seen[0].at)  # its changes in the kernel
        results.values["edit_changes"] = len(seen)
        if number % status_every == status_every - 1:
            last = common.daemon_status(bench.daemon).get("daemon", {}).get("last_reconcile") or {}
            if last:
                results.time("status_last_reconcile", float(last["seconds"]))
                views = results.values.setdefault("status_views", [])
                views.append({key: last.get(key) for key in (
                    "why", "seconds", "changes", "read_seconds", "handover_seconds")})
        time.sleep(EDIT_GAP)
    if lost:
        results.note(f"edits: {lost} of {bench.args.edits} never showed their last change "
                     f"within {WAIT_TIMEOUT:g} s")


def measure_heals(bench: Bench, what: str) -> None:
    """Delete one of vsnet's rules (or routes) ``--heals`` times, each of another VS."""
    results, events = bench.results, bench.events
    count = bench.args.heals
    names = [vs.name for vs in bench.servers]
    stride = max(1, len(names) // count) if count < len(names) else 1
    lost = 0
    for number in range(count):
        progress(f"heal ({what}) {number + 1}/{count}")
        server = bench.desired.servers[names[(number * stride) % len(names)]]
        events.drain()
        table = server.numbers.address_table(0)  # the first address's
        victim: Rule | Route
        if what == "rule":  # the rule of the first address: the one that looks up its table
            victim = next(o for o in server.objects
                          if isinstance(o, Rule) and o.action == "lookup" and o.table == table)
            match = rule_at(victim.priority)
        else:
            victim = next(o for o in server.objects if isinstance(o, Route) and o.table == table
                          and o.destination == DEFAULT)
            match = default_route_in(table)
        t0 = time.perf_counter()
        (reply,) = bench.requests.batch([KINDS[what].request("delete", victim, VSNET_PROTOCOL, {})])
        if not reply.ok:
            raise OSError(-reply.error, f"deleting {victim.describe()}: {reply.describe()}")
        found, _seen = events.wait(match, WAIT_TIMEOUT)
        if found is None:
            lost += 1
            continue
        results.time(f"heal_{what}", found.at - t0)
        time.sleep(EDIT_GAP)
    if lost:
        results.note(f"heals ({what}): {lost} of {count} never came back within "
                     f"{WAIT_TIMEOUT:g} s")


def created_from(event: Event) -> str | None:
    """The address a created rule is ``from`` (None for other events)."""
    if event.type != RTM_NEWRULE or event.rule is None or event.rule.source is None:
        return None
    return event.rule.source.removesuffix("/32")


def measure_load(bench: Bench) -> None:
    """``--rate`` edits/s of different VS for ``--load-seconds``; CPU, memory, latency."""
    results, events, pid = bench.results, bench.events, bench.daemon.pid
    rate, duration = bench.args.rate, bench.args.load_seconds
    total = max(1, round(rate * duration))
    first = len(bench.servers) // 2 + 1  # not the VS the one-at-a-time edits used
    pending: dict[str, float] = {}
    peak_rss = 0
    events.drain()
    window = CpuWindow(pid)
    started = window.started
    for number in range(total):
        progress(f"load: edit {number + 1}/{total}")
        due = started + number / rate
        while (now := time.perf_counter()) < due:
            for event in events.read(due - now):
                if (source := created_from(event)) in pending:
                    results.time("load_edit", event.at - pending.pop(source))
        peak_rss = max(peak_rss, memory(pid)["VmRSS"])
        address, t0 = bench.edit((first + number) % len(bench.servers))
        pending[address] = t0
    deadline = max(started + duration, time.perf_counter()) + WAIT_TIMEOUT
    while pending and (left := deadline - time.perf_counter()) > 0:
        for event in events.read(min(left, 0.1)):
            if (source := created_from(event)) in pending:
                results.time("load_edit", event.at - pending.pop(source))
        peak_rss = max(peak_rss, memory(pid)["VmRSS"])
    if (left := started + duration - time.perf_counter()) > 0:
        time.sleep(left)  # the window is at least the load's length
    results.values["load_edits"] = total
    window.stop(results.values, "load")
    mem = memory(pid)
    results.values.update(rss_load_peak=max(peak_rss, mem["VmRSS"]), hwm_after_load=mem["VmHWM"])
    if pending:
        results.note(f"load: {len(pending)} of {total} edits never showed their last change")


def check_in_sync(bench: Bench, when: str) -> None:
    status = common.daemon_status(bench.daemon)
    servers = status.get("servers", {})
    off = sorted(name for name, s in servers.items() if s.get("state") != "in-sync")
    if not servers:
        bench.results.note(f"{when}: vsnetctl status --json gave no answer")
    elif off:
        bench.results.note(f"{when}: {len(off)} VS not in sync (e.g. {off[0]}: "
                           f"{servers[off[0]].get('state')})")
    expected = {vs.name: [str(a) for a in vs.addresses] for vs in bench.servers}
    wrong = [name for name, s in servers.items()
             if s.get("addresses") and s["addresses"] != expected.get(name)]
    if wrong:
        bench.results.note(f"{when}: the daemon's addresses differ from the file for "
                           f"{len(wrong)} VS (e.g. {wrong[0]})")


def vsnet_rule_count() -> int:
    return sum(1 for rule in sandbox.ip_json("rule") if rule.get("protocol") == "vsnet")


def run(args: argparse.Namespace) -> Results:
    results = Results()
    servers = common.make_pbr_servers(args.servers)
    desired = compile_config(parse_config(common.pbr_yaml(servers), file="bench.yaml"))
    with common.uplinked_netns(), common.config_dir(common.pbr_yaml(servers)) as (workdir, config):
        write_config(config, servers, args.single_file)
        measure_reference(results, desired, config)
        events = KernelEvents()
        requests = RtnlSocket()
        floor = Floor(workdir)
        progress("starting vsnetd")
        daemon = common.start_daemon(workdir, config, watchdog_usec=WATCHDOG_USEC)
        bench = Bench(args, servers, desired, config, floor, daemon, events, requests, results)
        try:
            results.values["ready_seconds"] = daemon.ready(timeout=120)
            results.values["rss_start"] = memory(daemon.pid)["VmRSS"]
            results.values["hwm_start"] = memory(daemon.pid)["VmHWM"]
            shared = sum(1 for obj in desired.shared.values() if isinstance(obj, Rule))
            rules, expected = vsnet_rule_count(), results.values["objects"]["rule"] + shared
            if rules != expected:  # the VS's own rules and the rule tree's shared ones
                results.note(f"after start: {rules} vsnet rules, expected {expected}")
            progress("settling")
            time.sleep(SETTLE)
            progress("idle")
            measure_idle(bench, args.idle_seconds)
            measure_edits(bench)
            bench.floor = None
            floor.close()
            check_in_sync(bench, "after the edits")
            measure_heals(bench, "rule")
            measure_heals(bench, "route")
            time.sleep(SETTLE)
            measure_load(bench)
            time.sleep(SETTLE)
            check_in_sync(bench, "after the load")
            common.note_exited(daemon, results)
            if events.overruns:
                results.note(f"the benchmark's netlink socket overran {events.overruns} time(s)")
        finally:
            progress("stopping vsnetd")
            common.stop_and_teardown(daemon, results)
            left = vsnet_rule_count()
            if left:
                results.note(f"after teardown: {left} vsnet rules left")
            events.close()
            requests.close()
            progress("")
    return results


# --------------------------------------------------------------------------- report


ROWS: list[tuple[str, str]] = [
    ("edit", "edit to kernel: rename -> last change (rule)"),
    ("edit_first", "  rename -> first change (watch, load, plan)"),
    ("edit_apply", "  first -> last change (apply)"),
    ("floor_ip_batch", "floor: ip -batch, same 6 changes, as a process"),
    ("status_last_reconcile", "  daemon's view: last_reconcile seconds"),
    ("heal_rule", "heal: rule deleted -> rule back"),
    ("heal_route", "heal: route deleted -> route back"),
    ("load_edit", "edit to kernel under load (10 edits/s)"),
]


def plural(kind: str) -> str:
    return f"{kind}es" if kind.endswith("s") else f"{kind}s"


def targets(results: Results, servers: int) -> list[dict[str, Any]]:
    at = common.scale_note(servers, TARGET_SERVERS)

    def latency(name: str, measure: str, q: float, limit: float) -> dict[str, Any]:
        return common.target(f"{name} <= {limit * 1000:.0f} ms{at}", measure,
                             results.stat(measure, q), limit, "s")

    peak = max((results.values.get(k, 0) for k in ("hwm_after_load", "hwm_start")), default=0)
    idle = results.values.get("idle_cpu_percent")
    return [
        latency("edit to kernel p50", "edit", 50, EDIT_P50_TARGET),
        latency("edit to kernel p99", "edit", 99, EDIT_P99_TARGET),
        common.target(f"edit p50 / ip -batch p50 <= {EDIT_VS_IP_BATCH_TARGET:g} (same run)",
                      "edit_vs_ip_batch",
                      common.ratio(results.stat("edit", 50), results.stat("floor_ip_batch", 50)),
                      EDIT_VS_IP_BATCH_TARGET, "x floor"),
        latency("heal p50 (rule)", "heal_rule", 50, HEAL_P50_TARGET),
        latency("heal p50 (route)", "heal_route", 50, HEAL_P50_TARGET),
        common.target(f"idle CPU <= {IDLE_CPU_TARGET:g} %{at}", "idle_cpu_percent", idle,
                      IDLE_CPU_TARGET, "%"),
        common.target(f"RSS <= {RSS_TARGET // 10**6} MB, peak (VmHWM){at}", "rss_peak", peak,
                      RSS_TARGET, "B", passed=0 < peak <= RSS_TARGET),
    ]


def threads_text(percent: dict[str, float]) -> str:
    ranked = sorted(percent.items(), key=lambda item: -item[1])
    return ", ".join(f"{name} {value:.2f} %" for name, value in ranked if value >= 0.005) or "-"


def print_table(info: dict[str, Any], args: argparse.Namespace, results: Results) -> None:
    values = results.values
    objects = values.get("objects", {})
    print(f"vsnet daemon benchmark: vsnetd on {args.servers} VS x 2 IPv4 addresses "
          f"({', '.join(f'{count} {plural(kind)}' for kind, count in objects.items())}); "
          f"{args.edits} edits, {args.heals} heals of each kind, {args.rate:g} edits/s for "
          f"{args.load_seconds:g} s")
    print(common.machine_line(info)
          + f"Python {info['python']}, "
          f"pydantic {info['pydantic']}")
    print()
    print(f"{'latency':<46} {'n':>4} {'p50':>10} {'p99':>10} {'max':>10}")
    for name, label in ROWS:
        samples = results.samples.get(name)
        if not samples:
            continue
        print(f"{label:<46} {len(samples):>4} {common.percentile(samples, 50) * 1000:7.1f} ms "
              f"{common.percentile(samples, 99) * 1000:7.1f} ms {max(samples) * 1000:7.1f} ms")
    print()
    if "ready_seconds" in values:
        print(f"start: READY=1 after {values['ready_seconds']:.2f} s; "
              f"RSS {common.mib(values['rss_start'])}, VmHWM {common.mib(values['hwm_start'])}")
    if "idle_cpu_percent" in values:
        print(f"idle ({values['idle_seconds']:.1f} s): CPU {values['idle_cpu_percent']:.2f} % "
              f"(schedstat {values['idle_cpu_schedstat_percent']:.2f} %: "
              f"{threads_text(values['idle_cpu_threads_percent'])}); "
              f"RSS {common.mib(values['rss_idle'])}")
    if "load_cpu_percent" in values:
        print(f"load ({values['load_edits']} edits in {values['load_seconds']:.1f} s): "
              f"CPU {values['load_cpu_percent']:.1f} % "
              f"(schedstat {values['load_cpu_schedstat_percent']:.1f} %: "
              f"{threads_text(values['load_cpu_threads_percent'])}); "
              f"RSS peak {common.mib(values['rss_load_peak'])}, VmHWM {common.mib(values['hwm_after_load'])}")
    if "edit_changes" in values:
        print(f"one edit: {values['edit_changes']} kernel notifications, from the first "
              f"change to the new rule")
    if "reference_load_compile" in values:
        print(f"reference: load_config + compile_config of the file in the benchmark's "
              f"process: {values['reference_load_compile'] * 1000:.1f} ms")
    views = values.get("status_views") or []
    if views:
        whys = sorted({str(v["why"]).split(" (")[0] for v in views})
        changes = sorted({str(v["changes"]) for v in views})
        print(f"vsnetctl status --json after {len(views)} of the edits: last_reconcile why "
              f"{'/'.join(whys)}, changes {'/'.join(changes)}")
        reads = [float(v["read_seconds"]) for v in views if v.get("read_seconds") is not None]
        hands = [float(v["handover_seconds"]) for v in views
                 if v.get("handover_seconds") is not None]
        if reads and hands:
            print(f"  of which the reader thread (read + compile) p50 "
                  f"{statistics.median(reads) * 1000:.2f} ms, handover to the loop p50 "
                  f"{statistics.median(hands) * 1000:.2f} ms")
    print()
    common.print_targets(targets(results, args.servers), results.notes)


def as_json(info: dict[str, Any], args: argparse.Namespace, results: Results) -> dict[str, Any]:
    latencies = {
        name: {
            "label": label.strip(),
            "count": len(results.samples[name]),
            "p50_s": common.percentile(results.samples[name], 50),
            "p99_s": common.percentile(results.samples[name], 99),
            "max_s": max(results.samples[name]),
            "mean_s": statistics.fmean(results.samples[name]),
            "samples_s": results.samples[name],
        }
        for name, label in ROWS
        if results.samples.get(name)
    }
    return {
        "benchmark": "daemon",
        "servers": args.servers,
        "addresses_per_server": len(common.SUBNETS),
        "edits": args.edits,
        "heals": args.heals,
        "rate": args.rate,
        "load_seconds": args.load_seconds,
        "machine": info,
        "latencies": latencies,
        "values": results.values,
        "targets": targets(results, args.servers),
        "notes": results.notes,
    }


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str]) -> int:
    parser = common.arguments(__doc__)
    parser.add_argument("--edits", type=int, default=100,
                        help="one-at-a-time edits of one VS (default 100)")
    parser.add_argument("--heals", type=int, default=100,
                        help="deleted rules, and deleted routes, to heal (default 100 each)")
    parser.add_argument("--rate", type=float, default=10.0,
                        help="edits per second under load (default 10)")
    parser.add_argument("--load-seconds", type=float, default=10.0,
                        help="length of the load (default 10)")
    parser.add_argument("--idle-seconds", type=float, default=5.0,
                        help="length of the idle CPU sample (default 5)")
    parser.add_argument("--status-samples", type=int, default=10,
                        help="edits followed by `vsnetctl status --json` (default 10)")
    parser.add_argument("--single-file", action="store_true",
                        help="every VS in servers.yaml (default: one drop-in file per VS)")
    args = common.parse(parser, argv, common.pbr_max_servers(), "default numbering")
    if args.edits < 1 or args.heals < 1 or args.status_samples < 1:
        parser.error("--edits, --heals and --status-samples must be at least 1")
    if args.rate <= 0 or args.load_seconds <= 0 or args.idle_seconds <= 0:
        parser.error("--rate, --load-seconds and --idle-seconds must be positive")
    return common.run_benchmark(__file__, argv, args, run, info, as_json, print_table)


def info() -> dict[str, Any]:
    return common.machine(pyroute2=version("pyroute2"), pydantic=version("pydantic"))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
