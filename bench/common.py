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
import signal
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
from tests.sandbox import NotifySocket
from vsnetd.compile import compile_config
from vsnetd.config import parse_config
from vsnetd.kernel import Kernel
from vsnetd.reconcile import ConvergeResult, Reconciler, gc_paused
from vsnetd.state import SHARED, DesiredState

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


class RunningDaemon:
    """``vsnetd -c FILE --control CTL [ARGS] --resync-interval 3600`` as a subprocess, with
    a NOTIFY_SOCKET of its own (``command`` in place of ``vsnetd``, ``env`` added to its
    environment)."""

    def __init__(self, workdir: Path, config: Path, *, control: str = "control.sock",
                 args: Sequence[str] = (), env: Mapping[str, str] | None = None,
                 command: Sequence[str] | None = None, stop_timeout: float = 30.0) -> None:
        self.config = config
        self.control = workdir / control
        self.notify = NotifySocket(workdir / "notify.sock")
        self.log = workdir / "vsnetd.log"
        self.stop_timeout = stop_timeout
        self.env = dict(os.environ, NOTIFY_SOCKET=str(self.notify.path),
                        VSNET_CONTROL=str(self.control), **(env or {}))
        if command is None:
            command = console_script("vsnetd", "vsnetd.daemon")
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [*command, "-c", str(config), "--control", str(self.control), *args,
                 "--resync-interval", "3600"],
                env=self.env, stdout=subprocess.DEVNULL, stderr=log,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def ready(self, timeout: float) -> float:
        """Wait for READY=1; the seconds it took."""
        started = time.perf_counter()
        deadline = started + timeout
        while not self.notify.seen("READY", "1"):
            if self.proc.poll() is not None:
                raise RuntimeError(f"vsnetd exited ({self.proc.returncode}): {self.log_tail()}")
            if time.perf_counter() > deadline:
                raise RuntimeError(f"vsnetd not ready after {timeout:g} s: {self.log_tail()}")
            time.sleep(0.005)
        return time.perf_counter() - started

    def log_tail(self, lines: int = 5) -> str:
        try:
            return " | ".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def note_exited(self, notes: Notes) -> None:
        """A note when the daemon is no longer running."""
        if not self.alive():
            notes.note(f"vsnetd exited ({self.proc.returncode}): {self.log_tail()}")

    def vsnetctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*console_script("vsnetctl", "vsnetd.cli"), *args, "-c",
                               str(self.config)], capture_output=True, text=True,
                              env=self.env, timeout=60)

    def status(self) -> dict[str, Any]:
        result = self.vsnetctl("status", "--json")
        try:
            reply: dict[str, Any] = json.loads(result.stdout)
        except json.JSONDecodeError:
            return {}
        return reply

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def stop_and_teardown(self, notes: Notes) -> None:
        """SIGTERM (it must exit 0 after STOPPING=1), then ``vsnetctl teardown``; what went
        wrong as notes. The notify socket is closed."""
        code = self.stop()
        if code != 0:
            notes.note(f"vsnetd exited {code} on SIGTERM: {self.log_tail()}")
        elif not self.notify.seen("STOPPING", "1"):
            notes.note("vsnetd stopped without STOPPING=1")
        teardown = self.vsnetctl("teardown")
        if teardown.returncode != 0:
            notes.note(f"vsnetctl teardown failed ({teardown.returncode}): "
                       f"{teardown.stderr.strip()[:200]}")
        self.notify.close()


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


def report(info: dict[str, Any], args: argparse.Namespace, results: R,
           as_json: Callable[[dict[str, Any], argparse.Namespace, R], dict[str, Any]],
           print_table: Callable[[dict[str, Any], argparse.Namespace, R], None]) -> int:
    """The report, as JSON with ``--json``; 0, the exit status."""
    if args.json:
        print(json.dumps(as_json(info, args, results), indent=2))
    else:
        print_table(info, args, results)
    return 0


# --------------------------------------------------------------------------- arguments


def floor_args(argv: Sequence[str], description: str | None, limit: int,
               why: str) -> argparse.Namespace:
    """The options of a benchmark against ``ip -batch`` and a naive pyroute2 loop:
    ``--servers`` (1..limit, ``why`` said when outside), ``--repeat``, ``--naive-budget``,
    ``--json``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--servers", type=int, default=1000, help="number of VS (default 1000)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of each measure; the median is reported (default 3)")
    parser.add_argument("--naive-budget", type=float, default=20.0, metavar="SECONDS",
                        help="stop the naive pyroute2 loop after this long per run and "
                             "extrapolate linearly (default 20)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    if not 1 <= args.servers <= limit:
        parser.error(f"--servers must be 1..{limit} ({why})")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def description(doc: str | None) -> str | None:
    """A script's description for ``--help``: the first paragraph of its docstring."""
    return doc.split("\n\n")[0] if doc else None
