"""Benchmark of the socket broker: request -> sockets received, against the same socket made
in-process.

``bench/broker.py`` starts ``vsnetd`` on one pbr VS and one netns VS and measures, in one
run, inside a sandbox (a fresh network namespace whose uplink ``eth0`` is a veth created in
it; the machine's own network is never touched):

* the in-process baseline (the floor): this process makes the very socket the broker
  makes: ``socket()`` (for netns, with the thread ``setns``-ed into the VS namespace for
  that call, as the broker does), ``SO_MARK`` (pbr), ``IP_FREEBIND``, ``SO_REUSEADDR``,
  ``bind``, ``listen``; then ``close``;
* the broker, 1 client: one persistent SOCK_SEQPACKET connection
  (:class:`vsnetd.client.Broker`), one ``listen`` tcp request after the other, each on a
  port of its own (the broker binds for real); the received socket is closed at once;
* the broker, 8 clients: 8 processes, each with its own connection, started together; the
  daemon serves them all from its one thread: aggregate throughput, and per-request
  latency under contention.

The latency of a request runs from the send to the reply with its descriptor received
(``time.perf_counter_ns``); for the baseline, from ``socket()`` to ``listen()`` returned.
``close`` counts in the throughput (sockets received / wall time of the whole measure),
not in the latency. The daemon's CPU (all its threads, from schedstat) per request is the
broker's service time. p50/p99 are nearest-rank over one round's requests; each measure
is repeated ``--repeat`` rounds (interleaved, so drift hits every measure alike) and the
median over rounds is reported. Every measure checks, on one socket of its own, that it is
the promised one: listening, bound to the VS address and port, with the VS mark (pbr) or
in the VS namespace (netns).

vsnetd is stopped with SIGTERM at the end and ``vsnetctl teardown`` removes what it made.
``--profile FILE`` runs vsnetd under cProfile (``python -m cProfile -o FILE -m
vsnetd.daemon``; the profile is written when it stops) to see where the broker's time goes.

The targets are reported PASS/MISS; this is a benchmark, not a test, so it always exits 0
once it has measured.
"""

from __future__ import annotations

import argparse
import array
import fcntl
import gc
import multiprocessing
import os
import socket
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common
from bench.common import (
    UPLINK,
    Notes,
    config_dir,
    description,
    enter_sandbox,
    machine,
    machine_line,
    percentile,
    print_targets,
    report,
    uplinked_netns,
)
from bench.common import progress_line as progress
from vsnetd import sandbox
from vsnetd.client import Broker, BrokerRefused
from vsnetd.compile import compile_config
from vsnetd.config import parse_config
from vsnetd.syscalls import entered_netns

PBR, NETNS = "p1", "n1"  # the two VS
CONFIG = f"""\
version: 1
servers:
  {PBR}:
    id: 1
    mode: pbr
    uplink: {UPLINK}
    addresses: [{{address: 10.0.0.5/24}}]
  {NETNS}:
    id: 2
    mode: netns
    uplink: {UPLINK}
    addresses: [{{address: 10.1.1.5/24}}]
"""
PORT_LOW = 20000  # request ports cycle through PORT_LOW .. PORT_LOW + PORT_SPAN - 1
PORT_SPAN = 40000
BACKLOG = 128  # the broker's default
READY_TIMEOUT = 60.0
CLIENT_TIMEOUT = 30.0  # seconds a client waits for one reply before it gives up
SO_MARK = 36
IP_FREEBIND = 15
SIOCGSKNS = 0x894C  # linux/sockios.h: an fd of the socket's network namespace

# Targets (from the issue).
P50_TARGET = 100e-6  # seconds per request
RATE_TARGET = 10_000.0  # sockets/s
NETNS_RATIO_TARGET = 2.0  # netns requests within 2x of pbr requests

MODES = ("pbr", "netns")
KINDS = ("baseline", "broker1", "brokerN")


# --------------------------------------------------------------------------- the daemon


class RunningDaemon(common.RunningDaemon):
    """``vsnetd -c FILE --control CTL --broker SOCK --resync-interval 3600`` as a
    subprocess (under cProfile with ``profile``)."""

    def __init__(self, workdir: Path, config: Path, profile: Path | None = None) -> None:
        self.broker = workdir / "broker.sock"
        command = (None if profile is None else
                   [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "vsnetd.daemon"])
        super().__init__(workdir, config, control="ctl.sock", args=["--broker", str(self.broker)],
                         env={"VSNET_BROKER": str(self.broker)}, command=command,
                         stop_timeout=60)


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of ``pid`` so far, in ns (schedstat: its first field)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # a thread that just ended
    return total


# --------------------------------------------------------------------------- sockets


@dataclass(frozen=True, slots=True)
class Target:
    """One VS as the benchmark sees it: where its sockets go and what marks them."""

    mode: str  # "pbr" or "netns"
    server: str
    address: str
    mark: int  # 0 for netns
    netns: str  # "" for pbr

    def netns_inode(self) -> int | None:
        return os.stat(Path("/run/netns") / self.netns).st_ino if self.netns else None


def port_of(index: int) -> int:
    return PORT_LOW + index % PORT_SPAN


def make_inprocess(target: Target, port: int, netns_fd: int | None) -> socket.socket:
    """The socket the broker makes, made here: the floor."""
    if netns_fd is not None:
        with entered_netns(netns_fd):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        if target.mark:
            sock.setsockopt(socket.SOL_SOCKET, SO_MARK, target.mark)
        sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((target.address, port))
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def check_socket(sock: socket.socket, target: Target, port: int) -> str:
    """What is wrong with a socket that should listen on ``target``'s address and ``port``
    ("" when nothing is)."""
    problems = []
    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) != 1:
        problems.append("not listening")
    if sock.getsockname() != (target.address, port):
        problems.append(f"bound to {sock.getsockname()}, not {(target.address, port)}")
    mark = sock.getsockopt(socket.SOL_SOCKET, SO_MARK)
    if mark != target.mark:
        problems.append(f"mark {mark:#x}, not {target.mark:#x}")
    if sock.getsockopt(socket.IPPROTO_IP, IP_FREEBIND) != 1:
        problems.append("no IP_FREEBIND")
    ns_fd = fcntl.ioctl(sock.fileno(), SIOCGSKNS)
    try:
        inode = os.fstat(ns_fd).st_ino
    finally:
        os.close(ns_fd)
    if target.netns and inode != target.netns_inode():
        problems.append(f"not in namespace {target.netns}")
    if not target.netns and inode != os.stat("/proc/thread-self/ns/net").st_ino:
        problems.append("not in the uplink's namespace")
    return "; ".join(problems)


# --------------------------------------------------------------------------- measuring


@dataclass(slots=True)
class Round:
    """One measure's figures in one round."""

    clients: int
    requests: int  # answered with sockets
    sockets: int
    errors: int
    wall_ns: int
    p50_ns: int
    p99_ns: int
    max_ns: int
    daemon_cpu_ns: int | None = None

    @property
    def rate(self) -> float:
        return self.sockets / (self.wall_ns / 1e9) if self.wall_ns else 0.0

    @property
    def cpu_per_request_ns(self) -> float | None:
        if self.daemon_cpu_ns is None or not self.requests:
            return None
        return self.daemon_cpu_ns / self.requests

    @property
    def cpu_share(self) -> float | None:
        """The daemon's CPU during the measure, in cores (1.0: one thread always busy)."""
        if self.daemon_cpu_ns is None or not self.wall_ns:
            return None
        return self.daemon_cpu_ns / self.wall_ns

    def as_json(self) -> dict[str, Any]:
        return {"clients": self.clients, "requests": self.requests, "sockets": self.sockets,
                "errors": self.errors, "wall_s": self.wall_ns / 1e9,
                "p50_us": self.p50_ns / 1000, "p99_us": self.p99_ns / 1000,
                "max_us": self.max_ns / 1000, "sockets_per_s": self.rate,
                "daemon_cpu_us_per_request": (None if self.cpu_per_request_ns is None
                                              else self.cpu_per_request_ns / 1000),
                "daemon_cpu_cores": self.cpu_share}


@dataclass(slots=True)
class Results(Notes):
    rounds: dict[tuple[str, str], list[Round]] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)

    def add(self, mode: str, kind: str, figures: Round) -> None:
        self.rounds.setdefault((mode, kind), []).append(figures)

    def median(self, mode: str, kind: str, figure: Callable[[Round], float | None]
               ) -> float | None:
        values = [v for r in self.rounds.get((mode, kind), []) if (v := figure(r)) is not None]
        return statistics.median(values) if values else None

def measure_baseline(results: Results, target: Target, requests: int, warmup: int,
                     first: int) -> None:
    """The floor: the same socket made by this process, one after the other."""
    netns_fd = (os.open(Path("/run/netns") / target.netns, os.O_RDONLY | os.O_CLOEXEC)
                if target.netns else None)
    try:
        port = port_of(first)
        sock = make_inprocess(target, port, netns_fd)
        with sock:
            problem = check_socket(sock, target, port)
        if problem:
            results.note(f"{target.mode} in-process baseline socket: {problem}")
        for index in range(1, warmup + 1):
            make_inprocess(target, port_of(first + index), netns_fd).close()
        latencies = array.array("q")
        perf = time.perf_counter_ns
        gc.collect()
        started = perf()
        for index in range(warmup + 1, warmup + 1 + requests):
            before = perf()
            sock = make_inprocess(target, port_of(first + index), netns_fd)
            latencies.append(perf() - before)
            sock.close()
        wall = perf() - started
    finally:
        if netns_fd is not None:
            os.close(netns_fd)
    results.add(target.mode, "baseline", Round(
        1, requests, requests, 0, wall, percentile(latencies, 50), percentile(latencies, 99),
        max(latencies)))


def client_process(path: str, target: Target, first: int, requests: int, warmup: int,
                   pipe: Connection, start: Any) -> None:
    """One client (a process of its own): connect, warm up, say ready, wait for the start,
    then ``requests`` listen requests; its figures go back through ``pipe``."""
    try:
        with Broker(path, timeout=CLIENT_TIMEOUT) as broker:
            problem = ""
            for index in range(warmup):
                port = port_of(first + index)
                _reply, sockets = broker.request(op="listen", server=target.server,
                                                 proto="tcp", port=port)
                if index == 0:
                    problem = (check_socket(sockets[0], target, port) if len(sockets) == 1
                               else f"{len(sockets)} sockets for one address")
                for sock in sockets:
                    sock.close()
            pipe.send(("ready", problem))
            start.wait()
            request = broker.request
            perf = time.perf_counter_ns
            latencies = array.array("q")
            received = errors = wrong = 0
            first_error = ""
            started = perf()
            for index in range(warmup, warmup + requests):
                port = port_of(first + index)
                before = perf()
                try:
                    reply, sockets = request(op="listen", server=target.server, proto="tcp",
                                             port=port)
                except BrokerRefused as exc:
                    errors += 1
                    first_error = first_error or str(exc)
                    continue
                latencies.append(perf() - before)
                for sock in sockets:
                    sock.close()
                received += len(sockets)
                if len(sockets) != 1 or reply["sockets"][0]["port"] != port:
                    wrong += 1
            ended = perf()
        pipe.send(("done", latencies.tobytes(), started, ended, received, errors, wrong,
                   first_error))
    except Exception as exc:
        pipe.send(("failed", f"{type(exc).__name__}: {exc}"))
    finally:
        pipe.close()


def measure_broker(results: Results, daemon: RunningDaemon, target: Target, clients: int,
                   requests: int, warmup: int, first: int) -> None:
    """``clients`` processes, each with its own connection, started together."""
    kind = "broker1" if clients == 1 else "brokerN"
    label = f"{target.mode} broker, {clients} client{'s' if clients > 1 else ''}"
    context = multiprocessing.get_context("fork")
    start = context.Event()
    pipes: list[Connection] = []
    processes = []
    per_client = warmup + requests
    for number in range(clients):
        mine, theirs = context.Pipe(duplex=False)
        process = context.Process(target=client_process, daemon=True, args=(
            str(daemon.broker), target, first + number * per_client, requests, warmup,
            theirs, start))
        process.start()
        theirs.close()
        pipes.append(mine)
        processes.append(process)
    replies: dict[int, tuple[Any, ...]] = {}
    try:
        for number, pipe in enumerate(pipes):  # every client connected and warmed up
            if not pipe.poll(READY_TIMEOUT + CLIENT_TIMEOUT):
                raise RuntimeError(f"{label}: client {number} never got ready")
            message = pipe.recv()
            if message[0] != "ready":
                raise RuntimeError(f"{label}: client {number}: {message[1]}")
            if message[1]:
                results.note(f"{label}: the broker's socket: {message[1]}")
        gc.collect()
        cpu_before = cpu_ns(daemon.pid)
        start.set()
        deadline = time.monotonic() + CLIENT_TIMEOUT + requests * clients * 0.01
        waiting = {pipe: number for number, pipe in enumerate(pipes)}
        while waiting:
            ready = wait(list(waiting), timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                raise RuntimeError(f"{label}: {len(waiting)} client(s) did not finish")
            for done in ready:
                assert isinstance(done, Connection)
                replies[waiting.pop(done)] = done.recv()
        cpu_after = cpu_ns(daemon.pid)
    finally:
        for process in processes:  # stuck ones (a failed measure) are not waited for
            process.join(timeout=5 if len(replies) == clients else 0)
            if process.is_alive():
                process.kill()
                process.join()
        for pipe in pipes:
            pipe.close()
    failed = [m[1] for m in replies.values() if m[0] != "done"]
    if failed:
        raise RuntimeError(f"{label}: {failed[0]}")
    latencies = array.array("q")
    starts, ends = [], []
    received = errors = wrong = 0
    for message in replies.values():
        _done, data, started, ended, got, errs, bad, first_error = message
        latencies.frombytes(data)
        starts.append(started)
        ends.append(ended)
        received, errors, wrong = received + got, errors + errs, wrong + bad
        if first_error:
            results.note(f"{label}: refused: {first_error}")
    if errors:
        results.note(f"{label}: {errors} request(s) refused")
    if wrong:
        results.note(f"{label}: {wrong} reply(ies) without exactly one socket on the port asked")
    if not latencies:
        raise RuntimeError(f"{label}: no request answered")
    results.add(target.mode, kind, Round(
        clients, len(latencies), received, errors, max(ends) - min(starts),
        percentile(latencies, 50), percentile(latencies, 99), max(latencies),
        cpu_after - cpu_before))


def targets_of(text: str) -> dict[str, Target]:
    desired = compile_config(parse_config(text, file="bench.yaml"))
    found = {}
    for mode, name in (("pbr", PBR), ("netns", NETNS)):
        server = desired.servers[name]
        address = server.addresses[0].split("/")[0]
        found[mode] = Target(mode, name, address, server.numbers.mark if mode == "pbr" else 0,
                             server.netns or "")
    return found


def check_in_sync(results: Results, daemon: RunningDaemon, when: str) -> None:
    status = daemon.status()
    states = {name: s.get("state") for name, s in status.get("servers", {}).items()}
    if states != {PBR: "in-sync", NETNS: "in-sync"}:
        results.note(f"{when}: vsnetctl status --json says {states or 'nothing'}")


def leftovers() -> list[str]:
    """What vsnet left in the sandbox after teardown."""
    left = [f"rule {r.get('priority')}" for family in ("-4", "-6")
            for r in sandbox.ip_json(family, "rule") if r.get("protocol") == "vsnet"]
    left += [f"netns {name}" for name in sandbox.ip("netns", "list").split()
             if name.startswith("vs-")]
    return left


def run(args: argparse.Namespace) -> Results:
    results = Results()
    targets = targets_of(CONFIG)
    results.values["targets"] = {mode: {"server": t.server, "address": t.address,
                                        "mark": t.mark, "netns": t.netns}
                                 for mode, t in targets.items()}
    per_measure = args.clients * (args.requests + args.warmup)
    with uplinked_netns(), config_dir(CONFIG) as (workdir, config):
        progress("starting vsnetd")
        daemon = RunningDaemon(workdir, config, args.profile)
        try:
            results.values["ready_seconds"] = daemon.ready(READY_TIMEOUT)
            check_in_sync(results, daemon, "after start")
            fds_before = len(os.listdir(f"/proc/{daemon.pid}/fd"))
            first = 0
            for number in range(1, args.repeat + 1):
                for mode in MODES:
                    target = targets[mode]
                    progress(f"round {number}/{args.repeat}: {mode} in-process")
                    measure_baseline(results, target, args.requests, args.warmup, first)
                    first += args.requests + args.warmup + 1
                    progress(f"round {number}/{args.repeat}: {mode} broker, 1 client")
                    measure_broker(results, daemon, target, 1, args.requests, args.warmup, first)
                    first += args.requests + args.warmup
                    progress(f"round {number}/{args.repeat}: {mode} broker, "
                             f"{args.clients} clients")
                    measure_broker(results, daemon, target, args.clients, args.requests,
                                   args.warmup, first)
                    first += per_measure
            check_in_sync(results, daemon, "after the requests")
            daemon.note_exited(results)
            fds_after = len(os.listdir(f"/proc/{daemon.pid}/fd"))
            results.values["daemon_fds"] = {"before": fds_before, "after": fds_after}
            if fds_after > fds_before:  # every client has gone: its sockets must have too
                results.note(f"vsnetd holds {fds_after - fds_before} more descriptor(s) after "
                             f"the requests than before")
        finally:
            progress("stopping vsnetd")
            daemon.stop_and_teardown(results)
            left = leftovers()
            if left:
                results.note(f"after teardown: {', '.join(left)} left")
            progress("")
    return results


# --------------------------------------------------------------------------- report


def row_label(mode: str, kind: str, clients: int) -> str:
    if kind == "baseline":
        return f"{mode:<5} in-process (setns + socket)" if mode == "netns" else (
            f"{mode:<5} in-process (socket)")
    n = 1 if kind == "broker1" else clients
    return f"{mode:<5} broker, {n} client{'s' if n > 1 else ''}"


def us(value: float | None, width: int = 8) -> str:
    return f"{value / 1000:{width}.1f}" if value is not None else f"{'-':>{width}}"


def ratio(a: float | None, b: float | None, width: int = 7) -> str:
    return f"{a / b:{width}.2f}" if a is not None and b else f"{'-':>{width}}"


def rate_of(r: Round) -> float:
    return r.rate


def p50_of(r: Round) -> float:
    return r.p50_ns


def p99_of(r: Round) -> float:
    return r.p99_ns


def max_of(r: Round) -> float:
    return r.max_ns


def cpu_of(r: Round) -> float | None:
    return r.cpu_per_request_ns


def cores_of(r: Round) -> float | None:
    return r.cpu_share


def cores_text(value: float | None) -> str:
    return f"{value:7.2f}" if value is not None else f"{'-':>7}"


def netns_pbr(results: Results, kind: str, figure: Callable[[Round], float | None]
              ) -> tuple[float | None, float | None]:
    return results.median("netns", kind, figure), results.median("pbr", kind, figure)


def targets(results: Results, clients: int) -> list[dict[str, Any]]:
    checks: list[dict[str, Any]] = []

    def p50(mode: str) -> float | None:
        value = results.median(mode, "broker1", p50_of)
        return value / 1e9 if value is not None else None

    def rate(mode: str) -> float | None:
        return results.median(mode, "brokerN", rate_of)

    for mode in MODES:
        value = p50(mode)
        checks.append({"name": f"p50 <= 100 us per request ({mode}, 1 client)",
                       "measure": f"{mode}/broker1/p50", "value": value, "limit": P50_TARGET,
                       "unit": "s", "pass": value is not None and value <= P50_TARGET})
    for mode in MODES:
        value = rate(mode)
        checks.append({"name": f">= 10,000 sockets/s ({mode}, {clients} clients)",
                       "measure": f"{mode}/brokerN/sockets_per_s", "value": value,
                       "limit": RATE_TARGET, "unit": "sockets/s",
                       "pass": value is not None and value >= RATE_TARGET})
    pbr, netns = p50("pbr"), p50("netns")
    value = netns / pbr if pbr and netns is not None else None
    checks.append({"name": "netns p50 <= 2x pbr p50 (1 client)", "measure": "p50 netns/pbr",
                   "value": value, "limit": NETNS_RATIO_TARGET, "unit": "x",
                   "pass": value is not None and value <= NETNS_RATIO_TARGET})
    pbr_rate, netns_rate = rate("pbr"), rate("netns")
    value = pbr_rate / netns_rate if pbr_rate is not None and netns_rate else None
    checks.append({"name": f"netns sockets/s >= pbr / 2 ({clients} clients)",
                   "measure": "sockets/s pbr/netns", "value": value,
                   "limit": NETNS_RATIO_TARGET, "unit": "x",
                   "pass": value is not None and value <= NETNS_RATIO_TARGET})
    return checks


def shown(target: dict[str, Any]) -> str:
    value, limit, unit = target["value"], target["limit"], target["unit"]
    if value is None:
        return "not measured"
    if unit == "s":
        return f"{value * 1e6:.1f} us (limit {limit * 1e6:.0f} us)"
    if unit == "x":
        return f"{value:.2f}x (limit {limit:.1f}x)"
    return f"{value:,.0f} sockets/s (limit {limit:,.0f})"


def print_table(info: dict[str, Any], args: argparse.Namespace, results: Results) -> None:
    values = results.values
    t = values["targets"]
    print(f"vsnet broker benchmark: `listen` tcp, one socket per request, a new port each; "
          f"{args.requests} requests per client, 1 and {args.clients} clients; median of "
          f"{args.repeat} rounds")
    print(machine_line(info)
          + f"Python {info['python']}, vsnet {info['vsnet']}; load average "
          f"{'/'.join(map(str, info['loadavg']))} before the run")
    print(f"VS: {t['pbr']['server']} pbr {t['pbr']['address']} mark {t['pbr']['mark']:#x}; "
          f"{t['netns']['server']} netns {t['netns']['address']} in {t['netns']['netns']}; "
          f"vsnetd READY=1 after {values.get('ready_seconds', 0):.2f} s"
          + (" (under cProfile: its figures are slowed)" if args.profile else ""))
    print()
    print(f"{'measure':<32} {'p50 us':>8} {'p99 us':>8} {'max us':>8} {'sockets/s':>10} "
          f"{'daemon':>8} {'daemon':>7} {'p50 x':>7} {'rate x':>7}")
    print(f"{'':<32} {'':>8} {'':>8} {'':>8} {'':>10} {'us/req':>8} {'cores':>7} "
          f"{'floor':>7} {'floor':>7}")
    for mode in MODES:
        floor_p50 = results.median(mode, "baseline", p50_of)
        floor_rate = results.median(mode, "baseline", rate_of)
        for kind in KINDS:
            if (mode, kind) not in results.rounds:
                continue
            p50 = results.median(mode, kind, p50_of)
            rate = results.median(mode, kind, rate_of)
            print(f"{row_label(mode, kind, args.clients):<32} {us(p50)} "
                  f"{us(results.median(mode, kind, p99_of))} "
                  f"{us(results.median(mode, kind, max_of))} "
                  f"{rate or 0:10,.0f} {us(results.median(mode, kind, cpu_of))} "
                  f"{cores_text(results.median(mode, kind, cores_of))} "
                  f"{ratio(p50, floor_p50)} {ratio(floor_rate, rate)}")
    print()
    print(f"{'netns / pbr':<32} {'p50':>7} {'p99':>7} {'1/rate':>7} {'daemon us/req':>14}")
    for kind in KINDS:
        if ("pbr", kind) not in results.rounds or ("netns", kind) not in results.rounds:
            continue
        pbr_rate, netns_rate = (results.median(m, kind, rate_of) for m in MODES)
        print(f"{row_label('', kind, args.clients).strip():<32} "
              f"{ratio(*netns_pbr(results, kind, p50_of))} "
              f"{ratio(*netns_pbr(results, kind, p99_of))} {ratio(pbr_rate, netns_rate)} "
              f"{ratio(*netns_pbr(results, kind, cpu_of), width=14)}")
    print()
    print("p50 x floor: the p50 over the in-process p50; rate x floor: the in-process "
          "sockets/s over the measure's;")
    print("daemon us/req: vsnetd's CPU (all its threads, schedstat) per request; cores: that "
          "CPU over the wall time")
    print(f"targets: p50 from 1 client (with {args.clients}, a request also waits for the "
          f"others': p50 ~ clients x service time); sockets/s from {args.clients} clients "
          f"(the broker's capacity)")
    print()
    print_targets(targets(results, args.clients), results.notes, shown, width=44)


def as_json(info: dict[str, Any], args: argparse.Namespace, results: Results) -> dict[str, Any]:
    measures: dict[str, Any] = {}
    for (mode, kind), rounds in results.rounds.items():
        floor = results.rounds.get((mode, "baseline"))
        measure: dict[str, Any] = {
            "label": row_label(mode, kind, args.clients).split(None, 1)[1],
            "mode": mode,
            "clients": rounds[0].clients,
            "p50_us": (results.median(mode, kind, p50_of) or 0) / 1000,
            "p99_us": (results.median(mode, kind, p99_of) or 0) / 1000,
            "sockets_per_s": results.median(mode, kind, rate_of),
            "rounds": [r.as_json() for r in rounds],
        }
        cpu = results.median(mode, kind, cpu_of)
        measure["daemon_cpu_us_per_request"] = cpu / 1000 if cpu is not None else None
        if floor:
            measure["p50_ratio_to_floor"] = (results.median(mode, kind, p50_of) or 0) / (
                results.median(mode, "baseline", p50_of) or 1)
            measure["floor_rate_ratio"] = (results.median(mode, "baseline", rate_of) or 0) / (
                results.median(mode, kind, rate_of) or 1)
        measures[f"{mode}/{kind}"] = measure
    netns_over_pbr = {}
    for kind in KINDS:
        pbr_p50, netns_p50 = (results.median(m, kind, p50_of) for m in MODES)
        pbr_rate, netns_rate = (results.median(m, kind, rate_of) for m in MODES)
        if pbr_p50 and netns_p50 is not None and pbr_rate and netns_rate is not None:
            netns_over_pbr[kind] = {"p50": netns_p50 / pbr_p50,
                                    "sockets_per_s": netns_rate / pbr_rate}
    return {
        "benchmark": "broker",
        "requests_per_client": args.requests,
        "clients": args.clients,
        "warmup": args.warmup,
        "repeat": args.repeat,
        "profiled": str(args.profile) if args.profile else None,
        "machine": info,
        "values": results.values,
        "measures": measures,
        "netns_over_pbr": netns_over_pbr,
        "targets": targets(results, args.clients),
        "notes": results.notes,
    }


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description(__doc__))
    parser.add_argument("--requests", type=int, default=2000,
                        help="measured requests per client and measure (default 2000)")
    parser.add_argument("--clients", type=int, default=8,
                        help="concurrent clients of the contended measure (default 8)")
    parser.add_argument("--warmup", type=int, default=100,
                        help="unmeasured requests per client first (default 100)")
    parser.add_argument("--repeat", type=int, default=5,
                        help="rounds of every measure; the median is reported (default 5)")
    parser.add_argument("--profile", type=Path, metavar="FILE",
                        help="run vsnetd under cProfile and write its profile to FILE "
                             "(the figures are then the profiled daemon's)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.clients < 2 or args.warmup < 1 or args.repeat < 1:
        parser.error("--requests, --warmup and --repeat must be at least 1, --clients at "
                     "least 2")
    if args.clients * (args.requests + args.warmup) > PORT_SPAN:
        parser.error(f"--clients x (--requests + --warmup) must be at most {PORT_SPAN} "
                     f"(one port per request of a measure)")
    if args.profile is not None:
        args.profile = args.profile.resolve()
    return args


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    if not enter_sandbox(__file__, argv):
        return 1

    info = machine(  # first: its load average is the machine's before the run
        vsnet=version("vsnet"),
        loadavg=[round(value, 2) for value in os.getloadavg()],  # do others share the CPUs?
    )
    results = run(args)
    return report(info, args, results, as_json, print_table)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
