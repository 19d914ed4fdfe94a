"""What the benchmarks share (docs/benchmarks.md): the sandbox and its uplink, the pbr workload,
vsnetd as a subprocess, the kernel's notifications timed on arrival, /proc, vsnet's own
measures, the options and the report. Each script puts the project's root on ``sys.path``
before it imports this module as ``bench.common``.
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
from importlib.metadata import version
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any, TypeVar

from tests import sandbox
from tests.daemons import Daemon
from vsnetd import netlink
from vsnetd.compile import compile_config
from vsnetd.config import Config, drop_in_dir, parse_config
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
R = TypeVar("R")
N = TypeVar("N", int, float)


# --------------------------------------------------------------------------- the sandbox


def enter_sandbox(script: str, argv: Sequence[str]) -> bool:
    """Go on inside a sandbox; else re-run ``script`` in a new one (this does not return) or,
    when not root, say so and return False."""
    if sandbox.inside():
        return True
    if os.geteuid() != 0:
        print(f"bench/{Path(script).name}: must run as root (it creates namespaces)",
              file=sys.stderr)
        return False
    sandbox.reexec([sys.executable, str(Path(script).resolve()), *argv])


@contextmanager
def uplinked_netns() -> Iterator[None]:
    """A fresh namespace with the uplink (a veth), removed before it is left."""
    with sandbox.fresh_netns():
        sandbox.ip("link", "add", UPLINK, "type", "veth", "peer", "name", "peer0")
        sandbox.ip("link", "set", UPLINK, "up")
        sandbox.ip("link", "set", "peer0", "up")
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
    gateways: tuple[IPv4Address, ...]

    @property
    def gateway(self) -> IPv4Address:
        return self.gateways[0]


def make_pbr_servers(count: int) -> list[PbrServer]:
    return [PbrServer(f"vs{n}", n, tuple(IPv4Interface((net[FIRST_HOST + n], net.prefixlen))
                                         for net in SUBNETS), tuple(net[1] for net in SUBNETS))
            for n in range(1, count + 1)]


def pbr_yaml(servers: Sequence[PbrServer], head: str = "version: 1\n") -> str:
    lines = [f"{head}servers:"]
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


def vsnetctl(*args: str) -> list[str]:
    return [*console_script("vsnetctl", "vsnetd.cli"), *args]


@contextmanager
def config_dir(text: str, drop_ins: Mapping[str, str] | None = None
               ) -> Iterator[tuple[Path, Path]]:
    """A work directory under /run with ``etc/servers.yaml`` holding ``text`` (and the
    ``drop_ins`` by file name); (the directory, the file)."""
    with tempfile.TemporaryDirectory(prefix="vsnet-bench-", dir="/run") as tmp:
        config = Path(tmp) / "etc" / "servers.yaml"
        config.parent.mkdir()
        config.write_text(text)
        if drop_ins:
            drop_in_dir(config).mkdir()
            for name, body in drop_ins.items():
                (drop_in_dir(config) / name).write_text(body)
        yield Path(tmp), config


@contextmanager
def running_daemon(workdir: Path, config: Path, notes: Notes, *, args: Sequence[str] = (),
                   env: Mapping[str, str] | None = None, command: Sequence[str] | None = None,
                   control: str = "control.sock", watchdog_usec: str | None = None,
                   stop_timeout: float = 30.0) -> Iterator[Daemon]:
    """The tests' vsnetd (tests/daemons.py) as the benchmarks run it: the console script, not
    verbose, no periodic resync; at the end SIGTERM (it must exit 0 after STOPPING=1) and
    ``vsnetctl teardown``, what went wrong and what vsnet left behind as notes."""
    daemon = Daemon(workdir, config, [*args, "--resync-interval", "3600"],
                    command=command or console_script("vsnetd", "vsnetd.daemon"), env=env,
                    watchdog_usec=watchdog_usec, verbose=False, control=control,
                    stop_timeout=stop_timeout)
    try:
        yield daemon
        if not daemon.alive():
            notes.note(f"vsnetd exited ({daemon.proc.returncode}): {daemon.log_tail(5)}")
    finally:
        progress_line("stopping vsnetd")
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
        left = [f"rule {r.get('priority')}" for family in ("-4", "-6")
                for r in sandbox.ip_json(family, "rule") if r.get("protocol") == "vsnet"]
        left += [f"netns {name}" for name in sandbox.ip("netns", "list").split()
                 if name.startswith("vs-")]
        if left:
            notes.note(f"after teardown: {', '.join(left[:5])} ({len(left)} in all) left")
        progress_line("")


def daemon_status(daemon: Daemon) -> dict[str, Any]:
    """``vsnetctl status --json``; {} when it does not answer."""
    try:
        return daemon.status()
    except json.JSONDecodeError:
        return {}


# --------------------------------------------------------------------------- kernel events


@dataclass(frozen=True, slots=True)
class Event:
    """An IPv4 address, route or rule notification, when it was read, and the rule or route
    it announces as vsnet's own decoders read it (vsnetd/kinds)."""

    type: int
    at: float
    rule: Rule | None = None
    route: Route | None = None


EVERY = range(1 << 32)  # as the decoders' own range: foreign rules and routes are kept too


class KernelEvents:
    """The kernel's IPv4 address, route and rule notifications, each timed when read."""

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
            if kind in (netlink.RTM_NEWRULE, netlink.RTM_DELRULE):
                found = self._rule(data, start, end)
                events.append(Event(kind, at, rule=found[0] if found else None))
            elif kind in (netlink.RTM_NEWROUTE, netlink.RTM_DELROUTE):
                routed = self._route(data, start, end)
                events.append(Event(kind, at, route=routed[0] if routed else None))
            elif kind in (netlink.RTM_NEWADDR, netlink.RTM_DELADDR):
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


# --------------------------------------------------------------------------- /proc


def stat_cpu_ns(pid: int) -> int:
    """utime + stime of the whole process (every thread), in ns (clock-tick resolution)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)
    return ticks * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def schedstat_ns(pid: int) -> dict[str, int]:
    """CPU ns per thread, from schedstat: the main thread as "main", the others by ``comm``
    (Python threads inherit the process's) and their order of creation."""
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


class CpuMeter:
    """The CPU a process uses from now: (wall seconds, stat ns, schedstat ns by thread)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.wall, self.stat = pid, time.perf_counter(), stat_cpu_ns(pid)
        self.threads = schedstat_ns(pid)

    def stop(self) -> tuple[float, int, dict[str, int]]:
        wall, stat = time.perf_counter() - self.wall, stat_cpu_ns(self.pid) - self.stat
        threads = schedstat_ns(self.pid)
        return wall, stat, {name: ns - self.threads.get(name, 0) for name, ns in threads.items()}


# --------------------------------------------------------------------------- measuring


def percentile(values: Sequence[N], q: float) -> N:
    """Nearest-rank percentile (p99 of 100 samples is the 99th smallest)."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


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
        return "/".join(map(str, sorted(set(self.counts.get(name, []))))) or "-"


def progress(text: str) -> None:
    """Progress on a terminal only: redirected output stays the report alone."""
    if sys.stderr.isatty():
        print(text, end="", file=sys.stderr, flush=True)


def progress_line(text: str) -> None:
    progress(f"\r\033[K{text}")


def timed(action: Callable[..., R], *args: Any, **kwargs: Any) -> tuple[float, R]:
    gc.collect()
    started = time.perf_counter()
    value = action(*args, **kwargs)
    return time.perf_counter() - started, value


# --------------------------------------------------------------------------- vsnet's measures


def check_converged(results: Results, what: str, result: ConvergeResult) -> None:
    """A note unless the converge converged: how many VS failed (the first named), what is
    left to do."""
    if not result.converged:
        first = next(iter(result.failures.items()), ("-", "-"))
        results.note(f"vsnet {what} did not converge: {len(result.failures)} VS failed (e.g. "
                     f"{first[0]}: {first[1]}), {len(result.final_plan.changes)} changes left")


def cold_apply(results: Results, sock: Kernel, text: str
               ) -> tuple[Reconciler, DesiredState, ConvergeResult]:
    """vsnet's cold apply as `vsnetctl apply` runs it (a one-shot process holds the cyclic
    gc), timed in parts; the Reconciler is kept for the edits, as the daemon keeps it."""
    with gc_paused():
        parse_s, config = timed(lambda: parse_config(text, file="bench.yaml"))
        compile_s, desired = timed(lambda: compile_config(config))
        reconciler = Reconciler(sock)
        converge_s, result = timed(lambda: reconciler.converge(desired))
    for name, seconds in (("parse", parse_s), ("compile", compile_s), ("converge", converge_s),
                          ("total", parse_s + compile_s + converge_s)):
        results.time(f"cold_{name}", seconds)
    results.count("vsnet_applied", len(result.applied))
    check_converged(results, "cold apply", result)
    return reconciler, desired, result


def warm_measures(results: Results, sock: Kernel, reconciler: Reconciler, desired: DesiredState,
                  texts: tuple[str, str], edited_name: str,
                  differs: Callable[[DesiredState], str], count_changes: bool = False) -> None:
    """What follows the cold apply of ``texts[0]``: the no-op plan (in parts), the one-VS edit
    to ``texts[1]`` through the warm Reconciler (after which the kernel must not ``differ``),
    the one-shot converge back and the teardown to an empty config."""
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
        edit_compile_s, edited = timed(
            lambda: compile_config(parse_config(texts[1], file="bench.yaml")))
    edit_s, edit = timed(lambda: reconciler.converge(edited))
    problem = differs(edited)
    if problem:
        results.note(f"after the one-VS edit the kernel differs from desired: {problem}")
    oneshot_s, back = timed(lambda: converge(sock, desired))  # and back, the one-shot way
    teardown_s, gone = timed(lambda: converge(sock, compile_config(Config(version=1))))
    for name, seconds in (("noop_observe", observe_s), ("noop_diff", diff_s),
                          ("noop_total", full_s), ("edit_converge", edit_s),
                          ("edit_total", edit_compile_s + edit_s), ("edit_oneshot", oneshot_s),
                          ("teardown", teardown_s)):
        results.time(name, seconds)
    results.count("edit_applied", len(edit.applied))
    if count_changes:
        results.count("oneshot_applied", len(back.applied))
        results.count("teardown_applied", len(gone.applied))
    check_converged(results, "one-VS edit", edit)
    check_converged(results, "one-shot converge back from the edit", back)
    check_converged(results, "teardown", gone)
    touched = {change.server or "(removed)" for change in edit.applied} - {SHARED}
    if touched != {edited_name}:  # the rule tree's shared rules aside (docs/rule-tree.md)
        results.note(f"one-VS edit: its changes were attributed to {sorted(touched)}, "
                     f"expected only {edited_name}")


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


def machine(*packages: str, **extra: Any) -> dict[str, Any]:
    """The machine: kernel, CPUs, Python, the versions of ``packages`` (iproute2: ``ip``'s);
    then ``extra``."""
    models = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text()
              .splitlines() if line.startswith("model name")]
    ip = subprocess.run(["ip", "-V"], capture_output=True, text=True).stdout.strip()
    return {"kernel": os.uname().release, "cpus": os.cpu_count(),
            "cpu_model": models[0] if models else "unknown", "python": sys.version.split()[0],
            **{name: ip.removeprefix("ip utility, ").split(",")[0] if name == "iproute2"
               else version(name) for name in packages}, **extra}


def machine_line(info: dict[str, Any]) -> str:
    """The start of the report's machine line (what follows ``; `` is each benchmark's)."""
    return f"machine: Linux {info['kernel']}, {info['cpus']} CPUs, {info['cpu_model']}; "


def header(title: str, info: dict[str, Any], packages: Sequence[str] = ()) -> None:
    """The report's first lines: ``title``, the machine with Python and ``packages``."""
    print(title)
    print(machine_line(info) + ", ".join([f"Python {info['python']}", *(
        info[name] if name == "iproute2" else f"{name} {info[name]}" for name in packages)]))
    print()


def ms(seconds: float) -> str:
    return f"{seconds * 1000:10.1f} ms"


def mib(value: int) -> str:
    return f"{value / 1024 / 1024:.1f} MiB"


def print_measures(results: Results, rows: Sequence[tuple[str, str]],
                   labels: Mapping[str, str] | None = None, floor: str | None = "floor") -> None:
    """The table of timed measures: median/min/max and (with a ``floor``) the median's ratio
    to the floor's; ``labels`` in place of some rows' labels."""
    base = results.median(floor) if floor else None
    columns = f"{'measure':<46} {'median':>13} {'min':>13} {'max':>13}"
    print(columns + (f" {'x floor':>8}" if base else ""))
    for name, label in rows:
        values = results.samples.get(name)
        if values:
            median = statistics.median(values)
            print(f"{(labels or {}).get(name, label):<46} {ms(median)} {ms(min(values))} "
                  f"{ms(max(values))}" + (f" {median / base:8.2f}" if base else ""))


def measures_json(results: Results, rows: Sequence[tuple[str, str]]) -> dict[str, Any]:
    floor = results.median("floor")
    return {name: {"label": label.strip(), "median_s": statistics.median(samples),
                   "min_s": min(samples), "max_s": max(samples), "samples_s": samples,
                   "ratio_to_floor": statistics.median(samples) / floor}
            for name, label in rows if (samples := results.samples.get(name))}


def shown(target: dict[str, Any]) -> str:
    """A target's value and limit, by its unit."""
    value, limit, unit = target["value"], target["limit"], target["unit"]
    if value is None:
        return "not measured"
    if unit == "s" and limit < 1e-3:
        return f"{value * 1e6:.1f} us (limit {limit * 1e6:.0f} us)"
    if unit == "s":
        return f"{value * 1000:.1f} ms (limit {limit * 1000:.0f} ms)"
    if unit == "x" or unit.startswith("x "):  # x floor, x baseline...
        return f"{value:.2f}{unit} (limit {limit:.1f}x)"
    if unit == "kB":
        return f"{value:.0f} kB (limit {limit:.0f} kB)"
    if unit == "%":
        return f"{value:.2f} % (limit {limit:g} %)"
    if unit == "B":
        return f"{mib(value)} = {value / 1e6:.1f} MB (limit {limit / 1e6:g} MB)"
    if unit == "count":
        return f"{value} (want {limit})"
    if unit == "modules":
        return " ".join(value) or "none"
    return f"{value:,.0f} {unit} (limit {limit:,.0f})"


def print_targets(checks: Sequence[dict[str, Any]], notes: Sequence[str],
                  show: Callable[[dict[str, Any]], str] = shown, width: int = 52) -> None:
    """The targets, PASS or MISS, then the notes (if any)."""
    print("targets:")
    for target in checks:
        print(f"  {'PASS' if target['pass'] else 'MISS'}  {target['name']:<{width}} "
              f"{show(target)}")
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


def scale_note(servers: int, target_servers: int = 1000) -> str:
    """What a target's name says when the run's size is not the one the target is set for."""
    return "" if servers == target_servers else f" (target set for {target_servers} VS)"


def ratio(value: float | None, floor: float | None) -> float | None:
    return value / floor if value is not None and floor else None


# --------------------------------------------------------------------------- main


Option = tuple[Any, str] | dict[str, Any]
# The options of a benchmark against ``ip -batch`` and a naive pyroute2 loop.
FLOOR_OPTIONS: dict[str, Option] = {
    "--servers": (1000, "number of VS"),
    "--repeat": (3, "runs of each measure; the median is reported"),
    "--naive-budget": (20.0, "stop the naive pyroute2 loop after this long per run (seconds) "
                             "and extrapolate linearly"),
}
B = TypeVar("B", bound=Notes)


def description(doc: str | None) -> str | None:
    """A script's description for ``--help``: the first paragraph of its docstring."""
    return doc.split("\n\n")[0] if doc else None


def too_many(args: argparse.Namespace, limit: int, why: str) -> str:
    """The complaint when ``--servers`` is above ``limit`` ("" when it is not)."""
    return f"--servers must be 1..{limit} ({why})" if args.servers > limit else ""


def pbr_limit(args: argparse.Namespace) -> str:
    return too_many(args, pbr_max_servers(), "default numbering")


def parse(doc: str | None, argv: Sequence[str], options: Mapping[str, Option],
          check: Callable[[argparse.Namespace], str] = lambda args: "") -> argparse.Namespace:
    """``options`` by flag: (default, help) (a bool: a switch; a number: it must be positive)
    or add_argument's own keywords; and ``--json``. ``check`` says what else is wrong."""
    parser = argparse.ArgumentParser(description=description(doc))
    positive = []
    for flag, how in {**options, "--json": (False, "print the figures as JSON")}.items():
        if isinstance(how, dict):
            parser.add_argument(flag, **how)
        elif isinstance(how[0], bool):
            parser.add_argument(flag, action="store_true", help=how[1])
        else:
            parser.add_argument(flag, type=type(how[0]), default=how[0],
                                help=f"{how[1]} (default {how[0]:g})")
            positive.append(flag)
    args = parser.parse_args(argv)
    small = [flag for flag in positive if getattr(args, flag[2:].replace("-", "_")) <= 0]
    problem = f"{', '.join(small)} must be positive" if small else check(args)
    if problem:
        parser.error(problem)
    return args


def main(script: str, doc: str | None, argv: Sequence[str], options: Mapping[str, Option],
         measure: Callable[[argparse.Namespace], B],
         table: Callable[[dict[str, Any], argparse.Namespace, B], None],
         as_json: Callable[[argparse.Namespace, B], dict[str, Any]],
         targets: Callable[[argparse.Namespace, B], list[dict[str, Any]]] | None = None, *,
         check: Callable[[argparse.Namespace], str] = lambda args: "", packages: Sequence[str] = (),
         info: Callable[[], dict[str, Any]] | None = None, info_first: bool = False) -> int:
    """A benchmark: its options, into a sandbox, measured, the machine described (with
    ``packages``' versions, or as ``info`` does it; before measuring with ``info_first``),
    and the report: the table (or JSON), then the targets and the notes; the exit status."""
    info = info or (lambda: machine(*packages))
    args = parse(doc, argv, options, check)
    if not enter_sandbox(script, argv):
        return 1
    machine_info = info() if info_first else {}
    results = measure(args)
    machine_info = machine_info or info()
    checks = targets(args, results) if targets else []
    if args.json:
        print(json.dumps({**as_json(args, results), "machine": machine_info,
                          **({"targets": checks} if targets else {}), "notes": results.notes},
                         indent=2))
        return 0
    table(machine_info, args, results)
    if targets:
        print()
        print_targets(checks, results.notes)
    return 0
