"""What the benchmarks share: the sandbox and its uplink, the pbr workload, the daemon as a
subprocess, the bookkeeping of figures, and the report's common parts.

The benchmarks run as scripts (``python bench/pbr.py``); each puts the project's root on
``sys.path`` before it imports this module as ``bench.common``.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any, TypeVar

from tests import sandbox
from tests.daemons import Daemon
from vsnetd import netlink
from vsnetd.compile import compile_config
from vsnetd.config import Config, parse_config
from vsnetd.diff import plan_changes
from vsnetd.kernel import Kernel
from vsnetd.kinds import route as route_kind
from vsnetd.kinds import rule as rule_kind
from vsnetd.kinds.route import Route
from vsnetd.kinds.rule import Rule
from vsnetd.observe import observe
from vsnetd.reconcile import ConvergeResult, Reconciler, converge, gc_paused, plan_for
from vsnetd.state import SHARED, VSNET_PROTOCOL, DesiredState

UPLINK = "eth0"
PEER = "peer0"

R = TypeVar("R")
N = TypeVar("N", int, float)


# --------------------------------------------------------------------------- the sandbox


def enter_sandbox(script: str, argv: Sequence[str]) -> bool:
    """Go on when already inside a sandbox; else re-run ``script`` with ``argv`` in a new one
    (this does not return) or, when not root, say so and return False."""
    if sandbox.inside():
        return True
    if os.geteuid() != 0:
        print(f"bench/{Path(script).name}: must run as root (it creates namespaces)",
              file=sys.stderr)
        return False
    sandbox.reexec([sys.executable, str(Path(script).resolve()), *argv])


def add_uplink() -> None:
    sandbox.ip("link", "add", UPLINK, "type", "veth", "peer", "name", PEER)
    sandbox.ip("link", "set", UPLINK, "up")
    sandbox.ip("link", "set", PEER, "up")


@contextmanager
def uplinked_netns() -> Iterator[None]:
    """A fresh namespace with the uplink; the uplink removed before it is left."""
    with sandbox.fresh_netns():
        add_uplink()
        try:
            yield
        finally:
            sandbox.ip("link", "del", UPLINK)


# --------------------------------------------------------------------------- pbr workload


SUBNETS = (IPv4Network("10.1.0.0/16"), IPv4Network("10.2.0.0/16"))
FIRST_HOST = 10  # VS n gets host FIRST_HOST + n of each subnet: clear of the gateways (.0.1)


@dataclass(frozen=True, slots=True)
class PbrServer:
    """A pbr VS: one address (and its gateway) in each of SUBNETS."""

    name: str
    id: int
    addresses: tuple[IPv4Interface, ...]
    gateways: tuple[IPv4Address, ...]  # one per address, inside its subnet

    @property
    def gateway(self) -> IPv4Address:
        """The VS gateway (for its marked traffic): the first address's."""
        return self.gateways[0]


def make_pbr_servers(count: int) -> list[PbrServer]:
    servers = []
    for number in range(1, count + 1):
        addresses = tuple(
            IPv4Interface((net[FIRST_HOST + number], net.prefixlen)) for net in SUBNETS
        )
        gateways = tuple(net[1] for net in SUBNETS)
        servers.append(PbrServer(f"vs{number}", number, addresses, gateways))
    return servers


def pbr_yaml(servers: Sequence[PbrServer]) -> str:
    lines = ["version: 1", "servers:"]
    for vs in servers:
        lines += [f"  {vs.name}:", f"    id: {vs.id}", "    mode: pbr", f"    uplink: {UPLINK}",
                  "    addresses:"]
        for address, gateway in zip(vs.addresses, vs.gateways, strict=True):
            lines += [f"      - address: {address}", f"        gateway: {gateway}"]
        lines.append(f"    gateway: {vs.gateway}")
    return "\n".join(lines) + "\n"


def pbr_max_servers() -> int:
    """How many VS the benchmark's subnets hold (the rule tree has no limit of its own)."""
    return min(net.num_addresses for net in SUBNETS) - FIRST_HOST - 2


# --------------------------------------------------------------------------- the daemon


def console_script(name: str, module: str) -> list[str]:
    """The installed console script next to this Python, or ``python -m module``."""
    script = Path(sys.executable).with_name(name)
    return [str(script)] if script.exists() else [sys.executable, "-m", module]


@contextmanager
def config_dir(text: str) -> Iterator[tuple[Path, Path]]:
    """A work directory under /run with ``etc/servers.yaml`` holding ``text``; (the
    directory, the file)."""
    with tempfile.TemporaryDirectory(prefix="vsnet-bench-", dir="/run") as tmp:
        workdir = Path(tmp)
        (workdir / "etc").mkdir()
        config = workdir / "etc" / "servers.yaml"
        config.write_text(text)
        yield workdir, config


def start_daemon(workdir: Path, config: Path, *, args: Sequence[str] = (),
                 env: Mapping[str, str] | None = None, command: Sequence[str] | None = None,
                 control: str = "control.sock", watchdog_usec: str | None = None,
                 stop_timeout: float = 30.0) -> Daemon:
    """The tests' running vsnetd (tests/daemons.py) as the benchmarks run it: the installed
    console script, not verbose, no periodic resync inside a measure."""
    return Daemon(workdir, config, [*args, "--resync-interval", "3600"],
                  command=command or console_script("vsnetd", "vsnetd.daemon"), env=env,
                  watchdog_usec=watchdog_usec, verbose=False, control=control,
                  stop_timeout=stop_timeout)


def daemon_status(daemon: Daemon) -> dict[str, Any]:
    """``vsnetctl status --json``; {} when it does not answer."""
    try:
        return daemon.status()
    except json.JSONDecodeError:
        return {}


def note_exited(daemon: Daemon, notes: Notes) -> None:
    """A note when the daemon is no longer running."""
    if not daemon.alive():
        notes.note(f"vsnetd exited ({daemon.proc.returncode}): {daemon.log_tail(5)}")


def stop_and_teardown(daemon: Daemon, notes: Notes) -> None:
    """SIGTERM (it must exit 0 after STOPPING=1), then ``vsnetctl teardown``; what went
    wrong as notes. The notify socket is closed."""
    code = daemon.stop()
    if code != 0:
        notes.note(f"vsnetd exited {code} on SIGTERM: {daemon.log_tail(5)}")
    elif not daemon.notify.seen("STOPPING", "1"):
        notes.note("vsnetd stopped without STOPPING=1")
    teardown = daemon.vsnetctl("teardown")
    if teardown.returncode != 0:
        notes.note(f"vsnetctl teardown failed ({teardown.returncode}): "
                   f"{teardown.stderr.strip()[:200]}")
    daemon.notify.close()


# --------------------------------------------------------------------------- kernel events


@dataclass(frozen=True, slots=True)
class Event:
    """One IPv4 address, route or rule notification: its message type, when it was read,
    and the rule or route it announces as vsnet's own decoders read it (vsnetd/kinds)."""

    type: int
    at: float
    rule: Rule | None = None
    route: Route | None = None


EVERY = range(1 << 32)  # as the decoders' own range: foreign rules and routes are kept too
_RULE_TYPES = (netlink.RTM_NEWRULE, netlink.RTM_DELRULE)
_ROUTE_TYPES = (netlink.RTM_NEWROUTE, netlink.RTM_DELROUTE)
_ADDRESS_TYPES = (netlink.RTM_NEWADDR, netlink.RTM_DELADDR)


class KernelEvents:
    """The kernel's IPv4 address, route and rule notifications (vsnetd.netlink's monitor),
    each timed when read."""

    def __init__(self) -> None:
        self.monitor = netlink.RtnlMonitor()
        self.overruns = 0
        self._rule = rule_kind.decoder(VSNET_PROTOCOL, EVERY)
        self._route = route_kind.decoder({}, VSNET_PROTOCOL, EVERY)

    def close(self) -> None:
        self.monitor.close()

    def read(self, timeout: float) -> list[Event]:
        """What arrives within ``timeout`` (all that is queued once something is)."""
        if not select.select([self.monitor], [], [], max(0.0, timeout))[0]:
            return []
        events: list[Event] = []

        def decode(kind: int, data: bytearray, start: int, end: int) -> None:
            at = time.perf_counter()
            if data[start] != socket.AF_INET:  # every header starts with its family
                return
            if kind in _RULE_TYPES:
                found = self._rule(data, start, end)
                events.append(Event(kind, at, rule=found[0] if found else None))
            elif kind in _ROUTE_TYPES:
                routed = self._route(data, start, end)
                events.append(Event(kind, at, route=routed[0] if routed else None))
            elif kind in _ADDRESS_TYPES:
                events.append(Event(kind, at))

        try:
            self.monitor.read(decode)
        except netlink.Overrun:
            self.overruns += 1
        return events

    def drain(self) -> None:
        while self.read(0.0):
            pass

    def wait(self, match: Callable[[Event], bool], timeout: float
             ) -> tuple[Event | None, list[Event]]:
        """Read until an event matches; (that event or None on timeout, all events read)."""
        deadline = time.perf_counter() + timeout
        seen: list[Event] = []
        while (left := deadline - time.perf_counter()) > 0:
            for event in self.read(left):
                seen.append(event)
                if match(event):
                    return event, seen
        return None, seen


def rule_created(match: Callable[[Rule], bool]) -> Callable[[Event], bool]:
    return lambda event: (event.type == netlink.RTM_NEWRULE and event.rule is not None
                          and match(event.rule))


def route_created(match: Callable[[Route], bool]) -> Callable[[Event], bool]:
    return lambda event: (event.type == netlink.RTM_NEWROUTE and event.route is not None
                          and match(event.route))


# --------------------------------------------------------------------------- /proc


CLOCK_TICK = os.sysconf("SC_CLK_TCK")


def stat_cpu_ticks(pid: int) -> int:
    """utime + stime of the whole process (every thread), in clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


def schedstat_ns(pid: int) -> dict[str, int]:
    """CPU ns per thread, from schedstat: the main thread as "main", the others by
    ``comm`` (Python threads inherit the process's) and their order of creation."""
    threads: dict[str, int] = {}
    tasks = sorted(Path(f"/proc/{pid}/task").iterdir(), key=lambda task: int(task.name))
    for number, task in enumerate(tasks):
        try:
            comm = (task / "comm").read_text().strip()
            runtime = int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # a thread that just ended
        threads["main" if task.name == str(pid) else f"{comm}#{number}"] = runtime
    return threads


# --------------------------------------------------------------------------- measuring


def percentile(values: Sequence[N], q: float) -> N:
    """Nearest-rank percentile (p99 of 100 samples is the 99th smallest)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(slots=True)
class Notes:
    """What the report's notes say, each once, in order."""

    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


@dataclass(slots=True)
class Results(Notes):
    """Timed samples and counts by measure name, and single values."""

    samples: dict[str, list[float]] = field(default_factory=dict)
    counts: dict[str, list[int]] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)

    def time(self, name: str, seconds: float) -> None:
        self.samples.setdefault(name, []).append(seconds)

    def count(self, name: str, value: int) -> None:
        self.counts.setdefault(name, []).append(value)

    def median(self, name: str) -> float:
        return statistics.median(self.samples[name])

    def median_or_none(self, name: str) -> float | None:
        values = self.samples.get(name)
        return statistics.median(values) if values else None

    def stat(self, name: str, q: float) -> float | None:
        values = self.samples.get(name)
        return percentile(values, q) if values else None

    def counted(self, name: str) -> str:
        """The distinct counts of ``name`` over the runs, as "a/b" ("-" when none)."""
        values = sorted(set(self.counts.get(name, [])))
        return "/".join(map(str, values)) if values else "-"


def progress(text: str) -> None:
    """Progress on a terminal only: redirected output stays the report alone."""
    if sys.stderr.isatty():
        print(text, end="", file=sys.stderr, flush=True)


def progress_line(text: str) -> None:
    """Progress on a terminal only, in place of the previous progress line."""
    progress(f"\r\033[K{text}")


def timed(action: Callable[[], R]) -> tuple[float, R]:
    gc.collect()
    started = time.perf_counter()
    value = action()
    return time.perf_counter() - started, value


# --------------------------------------------------------------------------- vsnet's measures


def cold_apply(results: Results, sock: Kernel, text: str
               ) -> tuple[Reconciler, DesiredState, ConvergeResult]:
    """vsnet's cold apply of ``text``, as `vsnetctl apply` runs it (a one-shot process holds
    the cyclic gc): parse, compile, and a Reconciler's first converge (a full one), timed.
    The Reconciler is kept for the edits (what the daemon keeps); (it, the desired state,
    the result)."""
    with gc_paused():
        parse_s, config = timed(lambda: parse_config(text, file="bench.yaml"))
        compile_s, desired = timed(lambda: compile_config(config))
        reconciler = Reconciler(sock)
        converge_s, result = timed(lambda: reconciler.converge(desired))
    results.time("cold_parse", parse_s)
    results.time("cold_compile", compile_s)
    results.time("cold_converge", converge_s)
    results.time("cold_total", parse_s + compile_s + converge_s)
    results.count("vsnet_applied", len(result.applied))
    return reconciler, desired, result


def one_vs_edit(results: Results, reconciler: Reconciler, edited_text: str
                ) -> tuple[DesiredState, ConvergeResult]:
    """The one-VS edit through the warm Reconciler, timed alone and with parse + compile;
    (the edited desired state, the result)."""
    with gc_paused():
        edit_compile_s, edited = timed(
            lambda: compile_config(parse_config(edited_text, file="bench.yaml")))
    edit_s, edit = timed(lambda: reconciler.converge(edited))
    results.time("edit_converge", edit_s)
    results.time("edit_total", edit_compile_s + edit_s)
    results.count("edit_applied", len(edit.applied))
    return edited, edit


def check_attributed(results: Results, edit: ConvergeResult, edited_name: str) -> None:
    """A note unless the edit's changes were all attributed to the edited VS (and the rule
    tree's shared rules on its way, docs/rule-tree.md)."""
    touched = {change.server or "(removed)" for change in edit.applied} - {SHARED}
    if touched != {edited_name}:
        results.note(f"one-VS edit: its changes were attributed to {sorted(touched)}, "
                     f"expected only {edited_name}")


def not_converged(result: ConvergeResult) -> str:
    """Why a converge did not converge: how many VS failed (the first named) and changes left."""
    first = next(iter(result.failures.items()), ("-", "-"))
    return (f"{len(result.failures)} VS failed (e.g. {first[0]}: {first[1]}), "
            f"{len(result.final_plan.changes)} changes left")


def warm_measures(results: Results, sock: Kernel, reconciler: Reconciler, desired: DesiredState,
                  texts: tuple[str, str], edited_name: str,
                  differs: Callable[[DesiredState], str], count_changes: bool = False) -> None:
    """What follows vsnet's cold apply of ``texts[0]``: the no-op plan (and its observe, its
    diff, and with parse + compile), the one-VS edit to ``texts[1]`` through the warm
    Reconciler, the one-shot converge back, and the teardown to an empty config; notes
    where the kernel ``differs`` (a description, "" when it does not) after the edit."""
    plan_s, plan = timed(lambda: plan_for(sock, desired))
    results.time("noop_plan", plan_s)
    if plan.changes:
        results.note(f"no-op plan was not empty: {len(plan.changes)} changes "
                     f"(e.g. {plan.changes[0].describe()})")
    with gc_paused():
        observe_s, observed = timed(lambda: observe(sock, desired.scope))
        diff_s, _ = timed(lambda: plan_changes(desired, observed))
        full_s, _ = timed(
            lambda: plan_for(sock, compile_config(parse_config(texts[0], file="bench.yaml"))))
    results.time("noop_observe", observe_s)
    results.time("noop_diff", diff_s)
    results.time("noop_total", full_s)
    edited, edit = one_vs_edit(results, reconciler, texts[1])
    if not edit.converged:
        results.note(f"vsnet one-VS edit did not converge: {not_converged(edit)}")
    problem = differs(edited)
    if problem:
        results.note(f"after the one-VS edit the kernel differs from desired: {problem}")
    check_attributed(results, edit, edited_name)
    oneshot_s, back = timed(lambda: converge(sock, desired))  # and back, the one-shot way
    results.time("edit_oneshot", oneshot_s)
    teardown_s, gone = timed(lambda: converge(sock, compile_config(Config(version=1))))
    results.time("teardown", teardown_s)
    if count_changes:
        results.count("oneshot_applied", len(back.applied))
        results.count("teardown_applied", len(gone.applied))
    for what, result in (("one-shot converge back from the edit", back), ("teardown", gone)):
        if not result.converged:
            results.note(f"vsnet {what} did not converge: {not_converged(result)}")


# --------------------------------------------------------------------------- report


# The report's rows of vsnet's measures (cold apply, no-op plan, one-VS edit): name, label.
VSNET_ROWS: list[tuple[str, str]] = [
    ("cold_total", "vsnet cold apply: parse + compile + converge"),
    ("cold_parse", "  parse_config"),
    ("cold_compile", "  compile_config"),
    ("cold_converge", "  converge (observe, diff, apply, verify)"),
    ("noop_plan", "vsnet no-op plan: plan_for"),
    ("noop_observe", "  observe alone"),
    ("noop_diff", "  diff (plan_changes) alone"),
    ("noop_total", "  parse + compile + plan_for"),
    ("edit_converge", "vsnet one-VS edit: Reconciler (warm)"),
    ("edit_total", "  parse + compile + Reconciler"),
    ("edit_oneshot", "  one-shot converge (full observe + verify)"),
]


def machine(**extra: Any) -> dict[str, Any]:
    """The machine: kernel, CPUs, Python; then ``extra``."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "kernel": os.uname().release,
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": sys.version.split()[0],
        **extra,
    }


def iproute2_version() -> str:
    iproute2 = subprocess.run(["ip", "-V"], capture_output=True, text=True).stdout.strip()
    return iproute2.removeprefix("ip utility, ").split(",")[0]


def machine_line(info: dict[str, Any]) -> str:
    """The start of the report's machine line (what follows ``; `` is each benchmark's)."""
    return f"machine: Linux {info['kernel']}, {info['cpus']} CPUs, {info['cpu_model']}; "


def ms(seconds: float) -> str:
    return f"{seconds * 1000:10.1f} ms"


def mib(value: int) -> str:
    return f"{value / 1024 / 1024:.1f} MiB"


def print_measures(results: Results, rows: Sequence[tuple[str, str]],
                   labels: Mapping[str, str] | None = None) -> None:
    """The table of timed measures, median/min/max and the median's ratio to the floor's;
    ``labels`` in place of some rows' labels."""
    floor = results.median("floor")
    print(f"{'measure':<46} {'median':>13} {'min':>13} {'max':>13} {'x floor':>8}")
    for name, label in rows:
        values = results.samples.get(name)
        if not values:
            continue
        median = statistics.median(values)
        shown = (labels or {}).get(name, label)
        print(f"{shown:<46} {ms(median)} {ms(min(values))} {ms(max(values))} "
              f"{median / floor:8.2f}")


def measures_json(results: Results, rows: Sequence[tuple[str, str]]) -> dict[str, Any]:
    floor = results.median("floor")
    return {
        name: {
            "label": label.strip(),
            "median_s": statistics.median(results.samples[name]),
            "min_s": min(results.samples[name]),
            "max_s": max(results.samples[name]),
            "samples_s": results.samples[name],
            "ratio_to_floor": statistics.median(results.samples[name]) / floor,
        }
        for name, label in rows
        if results.samples.get(name)
    }


def shown(target: dict[str, Any]) -> str:
    """A target's value and limit, by its unit."""
    value, limit, unit = target["value"], target["limit"], target["unit"]
    if value is None:
        return "not measured"
    if unit == "s":
        return f"{value * 1000:.1f} ms (limit {limit * 1000:.0f} ms)"
    if unit == "x floor":
        return f"{value:.2f}x floor (limit {limit:.1f}x)"
    if unit == "kB":
        return f"{value:.0f} kB (limit {limit:.0f} kB)"
    if unit == "%":
        return f"{value:.2f} % (limit {limit:g} %)"
    if unit == "B":
        return f"{mib(value)} = {value / 1e6:.1f} MB (limit {limit / 1e6:g} MB)"
    raise ValueError(f"target {target['name']!r}: unknown unit {unit!r}")


def print_targets(checks: Sequence[dict[str, Any]], notes: Sequence[str],
                  show: Callable[[dict[str, Any]], str] = shown, width: int = 52) -> None:
    """The targets, PASS or MISS, then the notes (if any)."""
    print("targets:")
    for target in checks:
        verdict = "PASS" if target["pass"] else "MISS"
        print(f"  {verdict}  {target['name']:<{width}} {show(target)}")
    if notes:
        print()
        print("notes:")
        for text in notes:
            print(f"  - {text}")


def target(name: str, measure: str, value: Any, limit: Any, unit: str, *,
           at_least: bool = False, passed: bool | None = None) -> dict[str, Any]:
    """One target as the reports print it and their JSON holds it; it passes when ``value``
    is at most ``limit`` (at least, with ``at_least``), or as ``passed`` says."""
    if passed is None:
        passed = value is not None and (value >= limit if at_least else value <= limit)
    return {"name": name, "measure": measure, "value": value, "limit": limit, "unit": unit,
            "pass": passed}


def scale_note(servers: int, target_servers: int) -> str:
    """What a target's name says when the run's size is not the one the target is set for."""
    return "" if servers == target_servers else f" (target set for {target_servers} VS)"


def ratio(value: float | None, floor: float | None) -> float | None:
    return value / floor if value is not None and floor else None


def report(info: dict[str, Any], args: argparse.Namespace, results: R,
           as_json: Callable[[dict[str, Any], argparse.Namespace, R], dict[str, Any]],
           print_table: Callable[[dict[str, Any], argparse.Namespace, R], None]) -> int:
    """The report, as JSON with ``--json``; 0, the exit status."""
    if args.json:
        print(json.dumps(as_json(info, args, results), indent=2))
    else:
        print_table(info, args, results)
    return 0


def run_benchmark(script: str, argv: Sequence[str], args: argparse.Namespace,
                  measure: Callable[[argparse.Namespace], R], info: Callable[[], dict[str, Any]],
                  as_json: Callable[[dict[str, Any], argparse.Namespace, R], dict[str, Any]],
                  print_table: Callable[[dict[str, Any], argparse.Namespace, R], None],
                  info_first: bool = False) -> int:
    """A benchmark's main: into a sandbox, measure, describe the machine (before measuring
    with ``info_first``), report; the exit status."""
    if not enter_sandbox(script, argv):
        return 1
    machine_info = info() if info_first else {}
    results = measure(args)
    return report(machine_info or info(), args, results, as_json, print_table)


# --------------------------------------------------------------------------- arguments


def arguments(doc: str | None, *, servers: int | None = 1000, repeat: int | None = None,
              repeat_help: str = "runs of each measure; the median is reported"
              ) -> argparse.ArgumentParser:
    """A benchmark's options: ``--servers`` and ``--repeat`` (with these defaults; None: no
    such option); the script adds its own, then :func:`parse` adds ``--json``."""
    parser = argparse.ArgumentParser(description=description(doc))
    if servers is not None:
        parser.add_argument("--servers", type=int, default=servers,
                            help=f"number of VS (default {servers})")
    if repeat is not None:
        parser.add_argument("--repeat", type=int, default=repeat,
                            help=f"{repeat_help} (default {repeat})")
    return parser


def parse(parser: argparse.ArgumentParser, argv: Sequence[str], limit: int | None = None,
          why: str = "") -> argparse.Namespace:
    """``--json`` added, ``argv`` parsed; ``--servers`` checked against 1..``limit`` (``why``
    said when outside), ``--repeat`` against at least 1."""
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    if limit is not None and not 1 <= args.servers <= limit:
        parser.error(f"--servers must be 1..{limit} ({why})")
    if getattr(args, "repeat", 1) < 1:
        parser.error("--repeat must be at least 1")
    return args


def floor_args(argv: Sequence[str], doc: str | None, limit: int, why: str) -> argparse.Namespace:
    """The options of a benchmark against ``ip -batch`` and a naive pyroute2 loop:
    ``--servers``, ``--repeat``, ``--naive-budget``, ``--json``."""
    parser = arguments(doc, repeat=3)
    parser.add_argument("--naive-budget", type=float, default=20.0, metavar="SECONDS",
                        help="stop the naive pyroute2 loop after this long per run and "
                             "extrapolate linearly (default 20)")
    return parse(parser, argv, limit, why)


def description(doc: str | None) -> str | None:
    """A script's description for ``--help``: the first paragraph of its docstring."""
    return doc.split("\n\n")[0] if doc else None
