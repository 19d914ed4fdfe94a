"""Benchmark of vsnetd as a running process: edit-to-kernel latency, self-heal, CPU and memory.

How it measures: docs/benchmarks.md (`bench/daemon.py`).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from ipaddress import IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common
from bench.common import Event, KernelEvents, PbrServer, Results
from bench.common import progress_line as progress
from tests import sandbox
from tests.daemons import Daemon, save
from vsnetd.compile import compile_config
from vsnetd.config import drop_in_dir, load_config, parse_config
from vsnetd.kinds import route as route_kind
from vsnetd.kinds import rule as rule_kind
from vsnetd.kinds.route import Route
from vsnetd.kinds.rule import Rule
from vsnetd.netlink import RTM_NEWROUTE, RTM_NEWRULE, RtnlSocket
from vsnetd.state import VSNET_PROTOCOL, DesiredState

MOVED_HOST = 30000  # an edit moves VS n's second address to host MOVED_HOST + n (and back)
EDIT_GAP = 0.050  # seconds between two measured edits (or heals): they must not coalesce
WAIT_TIMEOUT = 10.0  # seconds before a change that never shows is counted as lost
SETTLE = 1.0  # seconds after READY=1 before anything is measured
WATCHDOG_USEC = "30000000"  # the unit file's WatchdogSec=30s: run as systemd runs it
RSS_TARGET = 80_000_000  # bytes: 80 MB read strictly (76.3 MiB)
FLOOR_DEVICE, FLOOR_TABLE = "floor0", 500  # the ip -batch floor's: below vsnet's ranges
FLOOR_NET = IPv4Network("10.200.0.0/16")
DEFAULT = "0.0.0.0/0"
KINDS = {"rule": rule_kind, "route": route_kind}  # what a heal deletes, and its codec

OPTIONS: dict[str, common.Option] = {
    "--servers": (1000, "number of VS"),
    "--edits": (100, "one-at-a-time edits of one VS"),
    "--heals": (100, "deleted rules, and deleted routes, to heal (each)"),
    "--rate": (10.0, "edits per second under load"),
    "--load-seconds": (10.0, "length of the load"),
    "--idle-seconds": (5.0, "length of the idle CPU sample"),
    "--status-samples": (10, "edits followed by `vsnetctl status --json`"),
    "--single-file": (False, "every VS in servers.yaml (default: one drop-in file per VS)"),
}
ROWS: list[tuple[str, str]] = [
    ("edit", "edit to kernel: rename -> new rule"),
    ("edit_first", "  rename -> first change (watch, load, plan)"),
    ("edit_apply", "  first change -> new rule (apply)"),
    ("floor_ip_batch", "floor: ip -batch, same 6 changes, as a process"),
    ("status_last_reconcile", "  daemon's view: last_reconcile seconds"),
    ("heal_rule", "heal: rule deleted -> rule back"),
    ("heal_route", "heal: route deleted -> route back"),
    ("load_edit", "edit to kernel under load (--rate edits/s)"),
]


def moved(vs: PbrServer) -> PbrServer:
    """The VS with its second address moved to its other host (and back, next time)."""
    net = vs.addresses[1].network
    hosts = (net[common.FIRST_HOST + vs.id], net[MOVED_HOST + vs.id])
    other = hosts[1] if vs.addresses[1].ip == hosts[0] else hosts[0]
    return replace(vs, addresses=(vs.addresses[0], IPv4Interface((other, net.prefixlen))))


def drop_in_yaml(vs: PbrServer) -> str:
    return common.pbr_yaml([vs], head="")


def created_from(event: Event) -> str | None:
    """The address a created rule is ``from`` (None for other events)."""
    if event.type != RTM_NEWRULE or event.rule is None or event.rule.source is None:
        return None
    return event.rule.source.removesuffix("/32")


def rule_from(address: str) -> Callable[[Event], bool]:
    return lambda event: created_from(event) == address


def created(victim: Rule | Route) -> Callable[[Event], bool]:
    """Matches the creation of the rule at ``victim``'s priority, or of the route to its
    destination in its table."""
    if isinstance(victim, Rule):
        return lambda event: (event.type == RTM_NEWRULE and event.rule is not None
                              and event.rule.priority == victim.priority)
    return lambda event: (event.type == RTM_NEWROUTE and event.route is not None
                          and event.route.table == victim.table
                          and event.route.destination == victim.destination)


class Floor:
    """The same six changes as one edit (the second address, its table's two routes, its
    rule), made by an ``ip -batch`` process on a device and numbers vsnet does not manage."""

    def __init__(self, workdir: Path) -> None:
        self.hosts = (str(FLOOR_NET[10]), str(FLOOR_NET[30010]))
        sandbox.ip("link", "add", FLOOR_DEVICE, "type", "veth", "peer", "name", "floor1")
        sandbox.ip("link", "set", FLOOR_DEVICE, "up")
        sandbox.ip("address", "add", f"{self.hosts[0]}/16", "dev", FLOOR_DEVICE)
        sandbox.ip("rule", "add", "priority", str(FLOOR_TABLE), "from", self.hosts[0],
                   "lookup", str(FLOOR_TABLE))
        self.batch = workdir / "floor.batch"

    def change(self) -> tuple[str, float]:
        """(the new address, when the process was started); the process ran to its end."""
        old, new = self.hosts
        self.hosts = (new, old)
        where = f"dev {FLOOR_DEVICE} src {new} table {FLOOR_TABLE}"
        self.batch.write_text(
            f"address del {old}/16 dev {FLOOR_DEVICE}\naddress add {new}/16 dev {FLOOR_DEVICE}\n"
            f"route replace {FLOOR_NET} {where}\nroute replace default via {FLOOR_NET[1]} {where}\n"
            f"rule del priority {FLOOR_TABLE}\n"
            f"rule add priority {FLOOR_TABLE} from {new} lookup {FLOOR_TABLE}\n")
        started = time.perf_counter()
        subprocess.run(["ip", "-batch", str(self.batch)], check=True)
        return new, started

    def close(self) -> None:
        sandbox.sh("ip", "rule", "del", "priority", str(FLOOR_TABLE), check=False)
        sandbox.sh("ip", "link", "del", FLOOR_DEVICE, check=False)


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM, in bytes."""
    found = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {key: int(found[key].split()[0]) * 1024 for key in ("VmRSS", "VmHWM")}


def cpu_used(meter: common.CpuMeter, values: dict[str, Any], prefix: str) -> None:
    """Into ``values``: the CPU used since ``meter`` started, as percent of one CPU (stat,
    schedstat, schedstat by thread), and the seconds."""
    wall, stat, threads = meter.stop()
    values[f"{prefix}_cpu_percent"] = stat / 1e9 / wall * 100
    values[f"{prefix}_cpu_schedstat_percent"] = sum(threads.values()) / 1e9 / wall * 100
    values[f"{prefix}_cpu_threads_percent"] = {n: ns / 1e9 / wall * 100 for n, ns in threads.items()}
    values[f"{prefix}_seconds"] = wall


@dataclass(slots=True)
class Bench:
    """One daemon, its config, the kernel's notifications, and the figures."""

    args: argparse.Namespace
    servers: list[PbrServer]
    desired: DesiredState
    config: Path
    daemon: Daemon
    events: KernelEvents
    results: Results

    def edit(self, index: int) -> tuple[str, float]:
        """Move VS ``index``'s second address; (the new address, when the file was in place)."""
        vs = self.servers[index] = moved(self.servers[index])
        if self.args.single_file:
            return str(vs.addresses[1].ip), save(self.config, common.pbr_yaml(self.servers))
        return str(vs.addresses[1].ip), save(drop_in_dir(self.config) / f"{vs.name}.yaml",
                                             drop_in_yaml(vs))

    def wait(self, name: str, match: Callable[[Event], bool], started: float
             ) -> list[Event] | None:
        """The events up to the one that ``match``es, its time since ``started`` as ``name``;
        None when it never came."""
        found, seen = self.events.wait(match, WAIT_TIMEOUT)
        if found is None:
            return None
        self.results.time(name, found.at - started)
        return seen

    def check_in_sync(self, when: str) -> None:
        servers = common.daemon_status(self.daemon).get("servers", {})
        off = sorted(name for name, s in servers.items() if s.get("state") != "in-sync")
        if not servers:
            self.results.note(f"{when}: vsnetctl status --json gave no answer")
        elif off:
            self.results.note(f"{when}: {len(off)} VS not in sync (e.g. {off[0]}: "
                              f"{servers[off[0]].get('state')})")
        expected = {vs.name: [str(a) for a in vs.addresses] for vs in self.servers}
        wrong = [name for name, s in servers.items()
                 if s.get("addresses") and s["addresses"] != expected.get(name)]
        if wrong:
            self.results.note(f"{when}: the daemon's addresses differ from the file for "
                              f"{len(wrong)} VS (e.g. {wrong[0]})")


def measure_edits(bench: Bench, floor: Floor) -> None:
    """One VS's second address, moved and back, ``--edits`` times, one at a time, each
    after the floor's same change (interleaved: contention weighs on both alike)."""
    results, count = bench.results, bench.args.edits
    status_every = max(1, count // bench.args.status_samples)
    lost = 0
    for number in range(count):
        progress(f"edit {number + 1}/{count}")
        bench.events.drain()
        address, started = floor.change()
        bench.wait("floor_ip_batch", rule_from(address), started)
        time.sleep(EDIT_GAP)
        bench.events.drain()
        address, started = bench.edit(len(bench.servers) // 2)
        seen = bench.wait("edit", rule_from(address), started)
        if seen is None:
            lost += 1
            continue
        results.time("edit_first", seen[0].at - started)  # the daemon reacting: watch, load, plan
        results.time("edit_apply", seen[-1].at - seen[0].at)  # its changes in the kernel
        results.values["edit_changes"] = len(seen)
        if number % status_every == status_every - 1:
            last = common.daemon_status(bench.daemon).get("daemon", {}).get("last_reconcile")
            if last:
                results.time("status_last_reconcile", float(last["seconds"]))
                results.values.setdefault("status_views", []).append({key: last.get(key) for key in (
                    "why", "seconds", "changes", "read_seconds", "handover_seconds")})
        time.sleep(EDIT_GAP)
    if lost:
        results.note(f"edits: {lost} of {count} never showed their new rule "
                     f"within {WAIT_TIMEOUT:g} s")


def measure_heals(bench: Bench, what: str, requests: RtnlSocket) -> None:
    """Delete one of vsnet's rules (or routes), ``--heals`` times, each of another VS: the
    first address's rule, or the default route of its table."""
    names, count = list(bench.desired.servers), bench.args.heals
    stride = max(1, len(names) // count) if count < len(names) else 1
    lost = 0
    for number in range(count):
        progress(f"heal ({what}) {number + 1}/{count}")
        server = bench.desired.servers[names[(number * stride) % len(names)]]
        table = server.numbers.address_table(0)
        bench.events.drain()
        victim: Rule | Route
        if what == "rule":
            victim = next(o for o in server.objects
                          if isinstance(o, Rule) and o.action == "lookup" and o.table == table)
        else:
            victim = next(o for o in server.objects if isinstance(o, Route) and o.table == table
                          and o.destination == DEFAULT)
        started = time.perf_counter()
        (reply,) = requests.batch([KINDS[what].request("delete", victim, VSNET_PROTOCOL, {})])
        if not reply.ok:
            raise OSError(-reply.error, f"deleting {victim.describe()}: {reply.describe()}")
        if bench.wait(f"heal_{what}", created(victim), started) is None:
            lost += 1
            continue
        time.sleep(EDIT_GAP)
    if lost:
        bench.results.note(f"heals ({what}): {lost} of {count} never came back within "
                           f"{WAIT_TIMEOUT:g} s")


def measure_load(bench: Bench) -> None:
    """``--rate`` edits/s of different VS for ``--load-seconds``; CPU, memory, latency."""
    results, events, pid = bench.results, bench.events, bench.daemon.pid
    rate, duration = bench.args.rate, bench.args.load_seconds
    total = max(1, round(rate * duration))
    first = len(bench.servers) // 2 + 1  # not the VS the one-at-a-time edits used
    pending: dict[str, float] = {}
    peak_rss = 0

    def read(timeout: float) -> None:
        for event in events.read(timeout):
            if (source := created_from(event)) in pending:
                results.time("load_edit", event.at - pending.pop(source))

    events.drain()
    meter = common.CpuMeter(pid)
    for number in range(total):
        progress(f"load: edit {number + 1}/{total}")
        due = meter.wall + number / rate
        while (now := time.perf_counter()) < due:
            read(due - now)
        peak_rss = max(peak_rss, memory(pid)["VmRSS"])
        address, pending[address] = bench.edit((first + number) % len(bench.servers))
    deadline = max(meter.wall + duration, time.perf_counter()) + WAIT_TIMEOUT
    while pending and (left := deadline - time.perf_counter()) > 0:
        read(min(left, 0.1))
        peak_rss = max(peak_rss, memory(pid)["VmRSS"])
    time.sleep(max(0.0, meter.wall + duration - time.perf_counter()))  # at least the load's length
    results.values["load_edits"] = total
    cpu_used(meter, results.values, "load")
    mem = memory(pid)
    results.values.update(rss_load_peak=max(peak_rss, mem["VmRSS"]), hwm_after_load=mem["VmHWM"])
    if pending:
        results.note(f"load: {len(pending)} of {total} edits never showed their new rule")


def measure(args: argparse.Namespace) -> Results:
    results = Results()
    servers = common.make_pbr_servers(args.servers)
    text = common.pbr_yaml(servers)
    desired = compile_config(parse_config(text, file="bench.yaml"))
    values = results.values
    values["objects"] = dict(Counter(obj.kind for server in desired.servers.values()
                                     for obj in server.objects))
    drop_ins = {} if args.single_file else {f"{vs.name}.yaml": drop_in_yaml(vs) for vs in servers}
    with (common.uplinked_netns(),
          common.config_dir("version: 1\n" if drop_ins else text, drop_ins) as (workdir, config)):
        took = [common.timed(lambda: compile_config(load_config(config)))[0] for _run in range(5)]
        values["reference_load_compile"] = statistics.median(took)  # every reload's first steps
        events, requests, floor = KernelEvents(), RtnlSocket(), Floor(workdir)
        progress("starting vsnetd")
        try:
            with common.running_daemon(workdir, config, results,
                                       watchdog_usec=WATCHDOG_USEC) as daemon:
                bench = Bench(args, servers, desired, config, daemon, events, results)
                values["ready_seconds"] = daemon.ready(timeout=120)
                start = memory(daemon.pid)
                values.update(rss_start=start["VmRSS"], hwm_start=start["VmHWM"])
                rules = sum(1 for rule in sandbox.ip_json("rule") if rule.get("protocol") == "vsnet")
                expected = values["objects"]["rule"] + sum(
                    1 for obj in desired.shared.values() if isinstance(obj, Rule))
                if rules != expected:  # the VS's own rules and the rule tree's shared ones
                    results.note(f"after start: {rules} vsnet rules, expected {expected}")
                progress("settling")
                time.sleep(SETTLE)
                progress("idle")
                meter = common.CpuMeter(daemon.pid)
                time.sleep(args.idle_seconds)
                cpu_used(meter, values, "idle")
                values["rss_idle"] = memory(daemon.pid)["VmRSS"]
                measure_edits(bench, floor)
                floor.close()
                bench.check_in_sync("after the edits")
                measure_heals(bench, "rule", requests)
                measure_heals(bench, "route", requests)
                time.sleep(SETTLE)
                measure_load(bench)
                time.sleep(SETTLE)
                bench.check_in_sync("after the load")
                if events.overruns:
                    results.note(f"the benchmark's netlink socket overran {events.overruns} time(s)")
        finally:
            floor.close()
            events.close()
            requests.close()
    return results


def targets(args: argparse.Namespace, results: Results) -> list[dict[str, Any]]:
    at, values = common.scale_note(args.servers), results.values

    def latency(name: str, measure: str, q: float, limit: float) -> dict[str, Any]:
        return common.target(f"{name} <= {limit * 1000:.0f} ms{at}", measure,
                             results.stat(measure, q), limit, "s")

    peak = max(values.get("hwm_after_load", 0), values.get("hwm_start", 0))
    return [
        latency("edit to kernel p50", "edit", 50, 0.005),
        latency("edit to kernel p99", "edit", 99, 0.015),
        common.target("edit p50 / ip -batch p50 <= 1 (same run)", "edit_vs_ip_batch",
                      common.ratio(results.stat("edit", 50), results.stat("floor_ip_batch", 50)),
                      1.0, "x floor"),
        latency("heal p50 (rule)", "heal_rule", 50, 0.010),
        latency("heal p50 (route)", "heal_route", 50, 0.010),
        common.target(f"idle CPU <= 1 %{at}", "idle_cpu_percent", values.get("idle_cpu_percent"),
                      1.0, "%"),
        common.target(f"RSS <= {RSS_TARGET // 10**6} MB, peak (VmHWM){at}", "rss_peak", peak,
                      RSS_TARGET, "B", passed=0 < peak <= RSS_TARGET),
    ]


def cpu_text(values: dict[str, Any], prefix: str, digits: int) -> str:
    ranked = sorted(values[f"{prefix}_cpu_threads_percent"].items(), key=lambda item: -item[1])
    threads = ", ".join(f"{name} {value:.2f} %" for name, value in ranked if value >= 0.005)
    return (f"CPU {values[f'{prefix}_cpu_percent']:.{digits}f} % (schedstat "
            f"{values[f'{prefix}_cpu_schedstat_percent']:.{digits}f} %: {threads or '-'})")


def table(info: dict[str, Any], args: argparse.Namespace, results: Results) -> None:
    values, mib = results.values, common.mib
    objects = ", ".join(f"{count} {kind}{'es' if kind.endswith('s') else 's'}"
                        for kind, count in values["objects"].items())
    common.header(f"vsnet daemon benchmark: vsnetd on {args.servers} VS x 2 IPv4 addresses "
                  f"({objects}); {args.edits} edits, {args.heals} heals of each kind, "
                  f"{args.rate:g} edits/s for {args.load_seconds:g} s", info,
                  ("pydantic",))
    print(f"{'latency':<46} {'n':>4} {'p50':>10} {'p99':>10} {'max':>10}")
    for name, label in ROWS:
        if samples := results.samples.get(name):
            print(f"{label:<46} {len(samples):>4} {common.percentile(samples, 50) * 1000:7.1f} ms "
                  f"{common.percentile(samples, 99) * 1000:7.1f} ms {max(samples) * 1000:7.1f} ms")
    print()
    if "ready_seconds" in values:
        print(f"start: READY=1 after {values['ready_seconds']:.2f} s; "
              f"RSS {mib(values['rss_start'])}, VmHWM {mib(values['hwm_start'])}")
    if "idle_cpu_percent" in values:
        print(f"idle ({values['idle_seconds']:.1f} s): {cpu_text(values, 'idle', 2)}; "
              f"RSS {mib(values['rss_idle'])}")
    if "load_cpu_percent" in values:
        print(f"load ({values['load_edits']} edits in {values['load_seconds']:.1f} s): "
              f"{cpu_text(values, 'load', 1)}; RSS peak {mib(values['rss_load_peak'])}, "
              f"VmHWM {mib(values['hwm_after_load'])}")
    if "edit_changes" in values:
        print(f"one edit: {values['edit_changes']} kernel notifications, from the first "
              f"change to the new rule")
    print(f"reference: load_config + compile_config of the file in the benchmark's "
          f"process: {values['reference_load_compile'] * 1000:.1f} ms")
    if views := values.get("status_views"):
        whys = sorted({str(v["why"]).split(" (")[0] for v in views})
        changes = sorted({str(v["changes"]) for v in views})
        print(f"vsnetctl status --json after {len(views)} of the edits: last_reconcile why "
              f"{'/'.join(whys)}, changes {'/'.join(changes)}")
        reads, hands = ([float(v[key]) for v in views if v.get(key) is not None]
                        for key in ("read_seconds", "handover_seconds"))
        if reads and hands:
            print(f"  of which the reader thread (read + compile) p50 "
                  f"{statistics.median(reads) * 1000:.2f} ms, handover to the loop p50 "
                  f"{statistics.median(hands) * 1000:.2f} ms")


def as_json(args: argparse.Namespace, results: Results) -> dict[str, Any]:
    latencies = {name: {"label": label.strip(), "count": len(samples),
                        "p50_s": common.percentile(samples, 50),
                        "p99_s": common.percentile(samples, 99), "max_s": max(samples),
                        "mean_s": statistics.fmean(samples), "samples_s": samples}
                 for name, label in ROWS if (samples := results.samples.get(name))}
    return {"benchmark": "daemon", "servers": args.servers,
            "addresses_per_server": len(common.SUBNETS), "edits": args.edits,
            "heals": args.heals, "rate": args.rate, "load_seconds": args.load_seconds,
            "latencies": latencies, "values": results.values}


if __name__ == "__main__":
    sys.exit(common.main(__file__, __doc__, sys.argv[1:], OPTIONS, measure, table, as_json,
                         targets, check=common.pbr_limit, packages=("pyroute2", "pydantic")))
