"""Benchmark of the socket broker: request -> socket received, in parts, against the same
socket made in-process.

How it measures: docs/benchmarks.md (`bench/broker.py`).
"""

from __future__ import annotations

import argparse
import array
import fcntl
import gc
import json
import multiprocessing
import os
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common
from bench.common import UPLINK, Notes, percentile
from bench.common import progress_line as progress
from tests import sandbox
from tests.daemons import Daemon
from vsnetd.broker.access import Peer
from vsnetd.broker.server import Broker as BrokerServer
from vsnetd.broker.server import Client as ServerClient
from vsnetd.broker.server import Served
from vsnetd.client import Broker, BrokerRefused
from vsnetd.compile import compile_config
from vsnetd.config import parse_config
from vsnetd.kernel import Kernel
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
CONTROL_SPACE = socket.CMSG_SPACE(253 * 4)
TICK_NS = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
IMPORT_RUNS = 5  # per round, of each command
HEAVY_MODULES = ("pydantic", "pydantic_core", "yaml", "pyroute2")
# the worked example's reply (docs/broker-protocol.md): what the transport floor sends
TRANSPORT_REPLY = (b'{"v":1,"ok":true,"generation":1,"sockets":[{"server":"nas1",'
                   b'"address":"10.0.0.5","port":8080,"proto":"tcp","family":4,'
                   b'"mark":90177537,"namespace":""}],"part":1,"parts":1}')

# Targets (issue 12).
P50_TARGET = 50e-6  # seconds per request, 1 client, persistent connection
FLOOR_RATIO_TARGET = 6.0  # p50 within 6x the in-process floor
LIBRARY_TARGET = 10e-6  # what vsnetd.client may add to the bare client's p50
DAEMON_CPU_TARGET = 25e-6  # vsnetd's CPU per request
RATE_TARGET = 25_000.0  # sockets/s with N clients
IMPORT_TARGET = 0.030  # seconds, `python -c "import vsnetd.client"`

MODES = ("pbr", "netns")
KINDS = ("floor", "code", "bare", "library", "clients", "batch")
TRANSPORT = ("-", "transport")
SPLIT = ("-", "split")  # the transport floor with its ends on two CPUs


# --------------------------------------------------------------------------- the daemon


def start_broker_daemon(workdir: Path, config: Path, profile: Path | None = None) -> Daemon:
    """vsnetd with its broker at ``workdir/broker.sock`` (under cProfile with ``profile``)."""
    broker = workdir / "broker.sock"
    command = (None if profile is None else
               [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "vsnetd.daemon"])
    return common.start_daemon(workdir, config, control="ctl.sock", args=["--broker", str(broker)],
                               env={"VSNET_BROKER": str(broker)}, command=command,
                               stop_timeout=60)


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of ``pid`` so far, in ns (schedstat)."""
    return sum(common.schedstat_ns(pid).values())


def stat_cpu_ns(pid: int) -> int:
    """utime + stime of process ``pid`` (all its threads), in ns (clock-tick resolution)."""
    return common.stat_cpu_ticks(pid) * TICK_NS


@dataclass(slots=True)
class CpuMeter:
    """A process's CPU over a measure, both ways."""

    pid: int
    stat: int = 0
    sched: int = 0

    def start(self) -> None:
        self.stat, self.sched = stat_cpu_ns(self.pid), cpu_ns(self.pid)

    def stop(self) -> tuple[int, int]:
        return stat_cpu_ns(self.pid) - self.stat, cpu_ns(self.pid) - self.sched


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


# --------------------------------------------------------------------------- figures


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
    server_cpu_ns: int | None = None  # /proc/<pid>/stat (tick resolution)
    server_sched_ns: int | None = None  # schedstat

    @property
    def rate(self) -> float:
        return self.sockets / (self.wall_ns / 1e9) if self.wall_ns else 0.0

    @property
    def cpu_per_request_ns(self) -> float | None:
        if self.server_cpu_ns is None or not self.requests:
            return None
        return self.server_cpu_ns / self.requests

    @property
    def sched_per_request_ns(self) -> float | None:
        if self.server_sched_ns is None or not self.requests:
            return None
        return self.server_sched_ns / self.requests

    @property
    def per_socket_ns(self) -> float:
        return self.wall_ns / self.sockets if self.sockets else 0.0

    def as_json(self) -> dict[str, Any]:
        return {"clients": self.clients, "requests": self.requests, "sockets": self.sockets,
                "errors": self.errors, "wall_s": self.wall_ns / 1e9,
                "p50_us": self.p50_ns / 1000, "p99_us": self.p99_ns / 1000,
                "max_us": self.max_ns / 1000, "sockets_per_s": self.rate,
                "server_cpu_us_per_request": (None if self.cpu_per_request_ns is None
                                              else self.cpu_per_request_ns / 1000),
                "server_schedstat_us_per_request": (None if self.sched_per_request_ns is None
                                                    else self.sched_per_request_ns / 1000)}


@dataclass(slots=True)
class Results(Notes):
    rounds: dict[tuple[str, str], list[Round]] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    imports: dict[str, list[float]] = field(default_factory=dict)

    def add(self, mode: str, kind: str, figures: Round) -> None:
        self.rounds.setdefault((mode, kind), []).append(figures)

    def median(self, mode: str, kind: str, figure: str) -> float | None:
        """The median over the rounds of one of a measure's :class:`Round` figures."""
        values = [v for r in self.rounds.get((mode, kind), [])
                  if (v := getattr(r, figure)) is not None]
        return statistics.median(values) if values else None


def round_of(latencies: array.array[int], clients: int, sockets: int, errors: int,
             wall_ns: int, cpu: tuple[int, int] | None = None) -> Round:
    return Round(clients, len(latencies), sockets, errors, wall_ns, percentile(latencies, 50),
                 percentile(latencies, 99), max(latencies),
                 None if cpu is None else cpu[0], None if cpu is None else cpu[1])


# --------------------------------------------------------------------------- in-process


def measure_floor(results: Results, target: Target, requests: int, warmup: int,
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
            results.note(f"{target.mode} in-process floor socket: {problem}")
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
    results.add(target.mode, "floor", round_of(latencies, 1, requests, 0, wall))


def measure_code(results: Results, server: BrokerServer, target: Target, requests: int,
                 warmup: int, first: int) -> None:
    """The broker's code alone: ``Broker.readable`` on a socketpair, in this process."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    client = ServerClient(ours, Peer(os.getpid(), 0, 0))
    latencies = array.array("q")
    perf = time.perf_counter_ns
    problem = ""
    try:
        gc.collect()
        started = 0
        for index in range(warmup + requests):
            if index == warmup:
                started = perf()
            port = port_of(first + index)
            theirs.send(b'{"v":1,"op":"listen","server":"%s","proto":"tcp","port":%d}'
                        % (target.server.encode(), port))
            before = perf()
            server.readable(client)
            elapsed = perf() - before
            data, ancdata, _flags, _ = theirs.recvmsg(1 << 16, CONTROL_SPACE)
            fds = [fd for _l, _k, payload in ancdata
                   for fd in struct.unpack(f"{len(payload) // 4}i", payload)]
            if index == 0:
                if len(fds) != 1:
                    problem = f"{len(fds)} descriptors: {data[:200]!r}"
                else:
                    with socket.socket(fileno=os.dup(fds[0])) as sock:
                        problem = check_socket(sock, target, port)
            for fd in fds:
                os.close(fd)
            if index >= warmup:
                latencies.append(elapsed)
        wall = perf() - started
    finally:
        ours.close()
        theirs.close()
    if problem:
        results.note(f"{target.mode} broker code in-process: {problem}")
    results.add(target.mode, "code", round_of(latencies, 1, requests, 0, wall))


# --------------------------------------------------------------------------- clients


def bare_request(sock: socket.socket, request: bytes) -> tuple[dict[str, Any], list[int]]:
    """A request and its whole reply, the standard library only (docs/broker-protocol.md)."""
    sock.send(request)
    fds: list[int] = []
    while True:
        # 64 KiB: a sockets reply of up to 253 sockets fits (docs/broker-protocol.md); a
        # larger buffer costs an allocation of its size per call in Python
        data, ancdata, flags, _ = sock.recvmsg(1 << 16, CONTROL_SPACE, socket.MSG_CMSG_CLOEXEC)
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            raise ConnectionError("a reply did not fit")
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.extend(struct.unpack(f"{len(payload) // 4}i", payload))
        if not data:
            raise ConnectionError("the broker closed the connection")
        reply = json.loads(data)
        if not reply.get("ok") or reply.get("part", 1) == reply.get("parts", 1):
            return reply, fds


def client_process(style: str, path: str, target: Target, first: int, requests: int,
                   warmup: int, batch: int, pipe: Connection, start: Any,
                   cpu: int | None = None) -> None:
    """One client (a process of its own): connect, warm up, say ready, wait for the start,
    then ``requests`` requests; its figures go back through ``pipe``. ``style``: bare,
    library, batch or transport."""
    try:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        per = batch if style == "batch" else 1
        library = Broker(path, timeout=CLIENT_TIMEOUT) if style in ("library", "batch") else None
        raw = None
        if library is None:
            raw = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
            # a blocking socket with a receive timeout (settimeout would poll first)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                           struct.pack("ll", int(CLIENT_TIMEOUT), 0))
            raw.connect(path)
        server = target.server.encode()

        def one(index: int) -> tuple[list[socket.socket], list[int]]:
            """The sockets of request ``index`` and the ports asked."""
            ports = [port_of(first + index * per + n) for n in range(per)]
            if library is not None:
                if style == "batch":
                    got = library.batch([{"op": "listen", "server": target.server,
                                          "proto": "tcp", "port": port} for port in ports])
                    return [sock for _meta, sock in got], ports
                return library.listen(target.server, "tcp", ports[0]), ports
            assert raw is not None
            reply, fds = bare_request(raw, b'{"v":1,"op":"listen","server":"%s","proto":'
                                           b'"tcp","port":%d}' % (server, ports[0]))
            if not reply.get("ok"):
                raise BrokerRefused(reply["error"]["code"], reply["error"]["message"])
            return [socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0, fd) for fd in fds], (
                ports if style != "transport" else [8080])

        problem = ""
        for index in range(warmup):
            sockets, ports = one(index)
            if index == 0 and style != "transport":
                problem = (check_socket(sockets[0], target, ports[0])
                           if len(sockets) == per else f"{len(sockets)} sockets for {per}")
            for sock in sockets:
                sock.close()
        pipe.send(("ready", problem))
        start.wait()
        perf = time.perf_counter_ns
        latencies = array.array("q")
        received = errors = wrong = 0
        first_error = ""
        started = perf()
        for index in range(warmup, warmup + requests):
            before = perf()
            try:
                sockets, ports = one(index)
            except BrokerRefused as exc:
                errors += 1
                first_error = first_error or str(exc)
                continue
            latencies.append(perf() - before)
            received += len(sockets)
            if len(sockets) != per:
                wrong += 1
            for sock in sockets:
                sock.close()
        ended = perf()
        if library is not None:
            library.close()
        if raw is not None:
            raw.close()
        pipe.send(("done", latencies.tobytes(), started, ended, received, errors, wrong,
                   first_error))
    except Exception as exc:
        pipe.send(("failed", f"{type(exc).__name__}: {exc}"))
    finally:
        pipe.close()


def measure_clients(results: Results, path: Path, server_pid: int, target: Target,
                    style: str, kind: str, clients: int, requests: int, warmup: int,
                    first: int, batch: int = 1, cpu: int | None = None) -> None:
    """``clients`` processes of ``style``, each with its own connection, started together;
    the server's CPU over the measure."""
    label = f"{target.mode} {kind}"
    context = multiprocessing.get_context("fork")
    start = context.Event()
    pipes: list[Connection] = []
    processes = []
    per_client = (warmup + requests) * batch
    for number in range(clients):
        mine, theirs = context.Pipe(duplex=False)
        process = context.Process(target=client_process, daemon=True, args=(
            style, str(path), target, first + number * per_client, requests, warmup, batch,
            theirs, start, cpu))
        process.start()
        theirs.close()
        pipes.append(mine)
        processes.append(process)
    replies: dict[int, tuple[Any, ...]] = {}
    meter = CpuMeter(server_pid)
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
        meter.start()
        start.set()
        deadline = time.monotonic() + CLIENT_TIMEOUT + requests * clients * batch * 0.01
        waiting = {pipe: number for number, pipe in enumerate(pipes)}
        while waiting:
            ready = wait(list(waiting), timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                raise RuntimeError(f"{label}: {len(waiting)} client(s) did not finish")
            for done in ready:
                assert isinstance(done, Connection)
                replies[waiting.pop(done)] = done.recv()
        server_cpu = meter.stop()
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
        results.note(f"{label}: {wrong} reply(ies) without the sockets asked for")
    if not latencies:
        raise RuntimeError(f"{label}: no request answered")
    results.add(target.mode, kind, round_of(latencies, clients, received, errors,
                                            max(ends) - min(starts), server_cpu))


# --------------------------------------------------------------------------- transport


def transport_server(listener: socket.socket, cpu: int | None) -> None:
    """The transport floor's server: one connection, a fixed reply with one descriptor
    per request (the standard library only, as small as a server can be)."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    conn, _ = listener.accept()
    listener.close()
    passed = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    control = ((socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", passed.fileno())),)
    buffer = bytearray(1 << 16)
    while True:
        size, _ancdata, _flags, _ = conn.recvmsg_into((buffer,), CONTROL_SPACE)
        if not size:
            os._exit(0)
        conn.sendmsg((TRANSPORT_REPLY,), control)


def measure_transport(results: Results, workdir: Path, target: Target, requests: int,
                      warmup: int, split: bool) -> None:
    """The transport floor, the scheduler placing both ends (``split``: the server on CPU 0,
    the client on CPU 1: every wake-up crosses CPUs)."""
    path = workdir / "transport.sock"
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(str(path))
    listener.listen(1)
    context = multiprocessing.get_context("fork")
    server = context.Process(target=transport_server, args=(listener, 0 if split else None),
                             daemon=True)
    server.start()
    listener.close()
    try:
        assert server.pid is not None
        measure_clients(results, path, server.pid, target, "transport", "transport", 1,
                        requests, warmup, 0, cpu=1 if split else None)
    finally:
        server.join(timeout=5)
        if server.is_alive():
            server.kill()
            server.join()
    figures = results.rounds.pop((target.mode, "transport"))
    results.rounds.setdefault(SPLIT if split else TRANSPORT, []).extend(figures)


# --------------------------------------------------------------------------- import


def measure_import(results: Results, workdir: Path) -> None:
    """``python -c "import vsnetd.client"`` and ``python -c pass``, whole processes,
    interleaved, with a bytecode cache as an installed package has one (in the run's
    directory: PYTHONPYCACHEPREFIX; this machine's environment may forbid writing one)."""
    env = {key: value for key, value in os.environ.items()
           if key != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(workdir / "pycache")
    commands = {"import": "import vsnetd.client", "python": "pass"}
    for code in commands.values():  # the cache written
        subprocess.run([sys.executable, "-c", code], check=True, env=env)
    for _run in range(IMPORT_RUNS):
        for name, code in commands.items():
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True, env=env)
            results.imports.setdefault(name, []).append(time.perf_counter() - started)
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, vsnetd.client; print(' '.join(sorted(m for m in "
         f"sys.modules if m.split('.')[0] in {HEAVY_MODULES!r})))"],
        check=True, capture_output=True, text=True, env=env).stdout.split()
    results.values["heavy_modules_loaded"] = loaded


# --------------------------------------------------------------------------- the run


def targets_of(text: str) -> dict[str, Target]:
    desired = compile_config(parse_config(text, file="bench.yaml"))
    found = {}
    for mode, name in (("pbr", PBR), ("netns", NETNS)):
        server = desired.servers[name]
        address = server.addresses[0].split("/")[0]
        found[mode] = Target(mode, name, address, server.numbers.mark if mode == "pbr" else 0,
                             server.netns or "")
    return found


def in_process_broker(kernel: Kernel, text: str) -> BrokerServer:
    """The daemon's broker with the daemon's picture, in this process."""
    config = parse_config(text, file="bench.yaml")
    desired = compile_config(config)
    broker = BrokerServer(kernel, Path("/nonexistent"))
    broker.update({name: Served(server, config.servers[name], "in-sync")
                   for name, server in desired.servers.items()}, 1)
    return broker


def check_in_sync(results: Results, daemon: Daemon, when: str) -> None:
    status = common.daemon_status(daemon)
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
    if args.cpu is not None:  # the daemon, the clients and the servers inherit it
        os.sched_setaffinity(0, {args.cpu})
    targets = targets_of(CONFIG)
    results.values["targets"] = {mode: {"server": t.server, "address": t.address,
                                        "mark": t.mark, "netns": t.netns}
                                 for mode, t in targets.items()}
    span = args.requests + args.warmup
    with common.uplinked_netns(), common.config_dir(CONFIG) as (workdir, config):
        progress("starting vsnetd")
        daemon = start_broker_daemon(workdir, config, args.profile)
        broker = workdir / "broker.sock"
        kernel = Kernel()
        code = None
        try:
            results.values["ready_seconds"] = daemon.ready(READY_TIMEOUT)
            check_in_sync(results, daemon, "after start")
            code = in_process_broker(kernel, CONFIG)  # after the daemon made the namespace
            fds_before = len(os.listdir(f"/proc/{daemon.pid}/fd"))
            first = 0
            for number in range(1, args.repeat + 1):
                step = f"round {number}/{args.repeat}"
                progress(f"{step}: transport floor")
                measure_transport(results, workdir, targets["pbr"], args.requests, args.warmup,
                                  split=False)
                if args.cpu is None and (os.cpu_count() or 1) > 1:
                    progress(f"{step}: transport floor, two CPUs")
                    measure_transport(results, workdir, targets["pbr"], args.requests,
                                      args.warmup, split=True)
                progress(f"{step}: import")
                measure_import(results, workdir)
                for mode in MODES:
                    target = targets[mode]
                    progress(f"{step}: {mode} in-process floor")
                    measure_floor(results, target, args.requests, args.warmup, first)
                    first += span + 1
                    progress(f"{step}: {mode} broker code in-process")
                    measure_code(results, code, target, args.requests, args.warmup, first)
                    first += span
                    for style in ("bare", "library"):
                        progress(f"{step}: {mode} {style} client")
                        measure_clients(results, broker, daemon.pid, target, style,
                                        style, 1, args.requests, args.warmup, first)
                        first += span
                    progress(f"{step}: {mode} {args.clients} clients")
                    measure_clients(results, broker, daemon.pid, target, "library",
                                    "clients", args.clients, args.requests, args.warmup, first)
                    first += args.clients * span
                    progress(f"{step}: {mode} batch of {args.batch}")
                    batches = max(1, args.requests // args.batch)
                    measure_clients(results, broker, daemon.pid, target, "batch",
                                    "batch", 1, batches, 2, first, args.batch)
                    first += (batches + 2) * args.batch
            check_in_sync(results, daemon, "after the requests")
            common.note_exited(daemon, results)
            fds_after = len(os.listdir(f"/proc/{daemon.pid}/fd"))
            results.values["daemon_fds"] = {"before": fds_before, "after": fds_after}
            if fds_after > fds_before:  # every client has gone: its sockets must have too
                results.note(f"vsnetd holds {fds_after - fds_before} more descriptor(s) after "
                             f"the requests than before")
        finally:
            if code is not None:
                code.close()
            kernel.close()
            progress("stopping vsnetd")
            common.stop_and_teardown(daemon, results)
            left = leftovers()
            if left:
                results.note(f"after teardown: {', '.join(left)} left")
            progress("")
    return results


# --------------------------------------------------------------------------- report


# the Round figures the report takes medians of
P50, P99, RATE, CPU, SCHED, PER_SOCKET = (
    "p50_ns", "p99_ns", "rate", "cpu_per_request_ns", "sched_per_request_ns", "per_socket_ns")


def us(value: float | None, width: int = 8) -> str:
    return f"{value / 1000:{width}.1f}" if value is not None else f"{'-':>{width}}"


def ratio(a: float | None, b: float | None, width: int = 7) -> str:
    return f"{a / b:{width}.2f}" if a is not None and b else f"{'-':>{width}}"


def label_of(kind: str, args: argparse.Namespace) -> str:
    return {"floor": "in-process floor (socket..listen)", "code": "broker code, in-process",
            "bare": "bare client -> vsnetd", "library": "vsnetd.client -> vsnetd",
            "clients": f"vsnetd.client x {args.clients} clients",
            "batch": f"batch of {args.batch}, 1 client",
            "transport": "transport floor (stdlib server)",
            "split": "transport floor, ends on CPUs 0 and 1"}[kind]


def figures(results: Results, args: argparse.Namespace) -> dict[str, float | None]:
    """The figures the targets and the parts are made of (ns, sockets/s, seconds)."""
    found: dict[str, float | None] = {}
    for mode in MODES:
        for kind in KINDS:
            found[f"{mode}/{kind}/p50"] = results.median(mode, kind, P50)
            found[f"{mode}/{kind}/rate"] = results.median(mode, kind, RATE)
            found[f"{mode}/{kind}/cpu"] = results.median(mode, kind, CPU)
            found[f"{mode}/{kind}/sched"] = results.median(mode, kind, SCHED)
    found["transport/p50"] = results.median(*TRANSPORT, P50)
    found["transport/cpu"] = results.median(*TRANSPORT, CPU)
    found["transport/sched"] = results.median(*TRANSPORT, SCHED)
    for name, runs in results.imports.items():
        found[f"{name}/seconds"] = statistics.median(runs)
    return found


def targets(results: Results, args: argparse.Namespace) -> list[dict[str, Any]]:
    f = figures(results, args)
    checks: list[dict[str, Any]] = []

    def check(name: str, measure: str, value: float | None, limit: float, unit: str,
              at_least: bool = False) -> None:
        checks.append(common.target(name, measure, value, limit, unit, at_least=at_least))

    def sub(a: float | None, b: float | None) -> float | None:
        return a - b if a is not None and b is not None else None

    for mode in MODES:
        for kind, who in (("bare", "bare client"), ("library", "vsnetd.client")):
            p50 = f[f"{mode}/{kind}/p50"]
            check(f"p50 <= 50 us ({mode}, {who})", f"{mode}/{kind}/p50",
                  None if p50 is None else p50 / 1e9, P50_TARGET, "s")
            check(f"p50 <= 6x floor ({mode}, {who})", f"{mode}/{kind}/p50 / floor",
                  common.ratio(p50, f[f"{mode}/floor/p50"]), FLOOR_RATIO_TARGET, "x")
    for mode in MODES:
        added = sub(f[f"{mode}/library/p50"], f[f"{mode}/bare/p50"])
        check(f"vsnetd.client adds <= 10 us ({mode})", f"{mode}/library-bare/p50",
              None if added is None else added / 1e9, LIBRARY_TARGET, "s")
    for mode in MODES:
        cpu = f[f"{mode}/library/cpu"]
        check(f"daemon CPU <= 25 us per request ({mode})", f"{mode}/library/daemon_cpu",
              None if cpu is None else cpu / 1e9, DAEMON_CPU_TARGET, "s")
    for mode in MODES:
        check(f">= 25,000 sockets/s ({mode}, {args.clients} clients)",
              f"{mode}/clients/sockets_per_s", f[f"{mode}/clients/rate"], RATE_TARGET,
              "sockets/s", at_least=True)
    check('import vsnetd.client <= 30 ms (process - python -c pass)', "import-python/seconds",
          sub(f.get("import/seconds"), f.get("python/seconds")), IMPORT_TARGET, "s")
    heavy = results.values.get("heavy_modules_loaded")
    checks.append(common.target("import vsnetd.client loads no pydantic/yaml/pyroute2",
                                "heavy_modules_loaded", heavy, [], "modules", passed=heavy == []))
    return checks


def shown(target: dict[str, Any]) -> str:
    value, limit, unit = target["value"], target["limit"], target["unit"]
    if value is None:
        return "not measured"
    if unit == "s":
        if limit >= 1e-3:
            return f"{value * 1e3:.1f} ms (limit {limit * 1e3:.0f} ms)"
        return f"{value * 1e6:.1f} us (limit {limit * 1e6:.0f} us)"
    if unit == "x":
        return f"{value:.2f}x (limit {limit:.1f}x)"
    if unit == "modules":
        return " ".join(value) or "none"
    return f"{value:,.0f} sockets/s (limit {limit:,.0f})"


def print_table(info: dict[str, Any], args: argparse.Namespace, results: Results) -> None:
    values = results.values
    t = values["targets"]
    f = figures(results, args)
    print(f"vsnet broker benchmark: `listen` tcp, a new port each request, persistent "
          f"connections; {args.requests} requests per client and measure; median of "
          f"{args.repeat} rounds")
    print(common.machine_line(info)
          + f"Python {info['python']}, vsnet {info['vsnet']}; load average "
          f"{'/'.join(map(str, info['loadavg']))} before the run")
    print(f"VS: {t['pbr']['server']} pbr {t['pbr']['address']} mark {t['pbr']['mark']:#x}; "
          f"{t['netns']['server']} netns {t['netns']['address']} in {t['netns']['netns']}; "
          f"vsnetd READY=1 after {values.get('ready_seconds', 0):.2f} s"
          + (" (under cProfile: its figures are slowed)" if args.profile else ""))
    print()
    print(f"{'measure':<42} {'p50 us':>8} {'p99 us':>8} {'sockets/s':>10} "
          f"{'server':>8} {'server':>8} {'p50 x':>7}")
    print(f"{'':<42} {'':>8} {'':>8} {'':>10} {'us/req':>8} {'sched':>8} {'floor':>7}")

    def row(mode: str, kind: str) -> None:
        key = ("-", kind) if kind in ("transport", "split") else (mode, kind)
        if key not in results.rounds:
            return
        p50 = results.median(*key, P50)
        floor = results.median(mode, "floor", P50) if mode in MODES else None
        print(f"{(mode + ' ' if mode in MODES else '') + label_of(kind, args):<42} {us(p50)} "
              f"{us(results.median(*key, P99))} "
              f"{results.median(*key, RATE) or 0:10,.0f} "
              f"{us(results.median(*key, CPU))} {us(results.median(*key, SCHED))} "
              f"{ratio(p50, floor) if mode in MODES and kind != 'floor' else '':>7}")

    row("-", "transport")
    row("-", "split")
    for mode in MODES:
        for kind in KINDS:
            row(mode, kind)
    print()
    print("server us/req: the server process's CPU per request from /proc/<pid>/stat (utime + "
          "stime, 10 ms ticks); sched: the same from schedstat (ns)")
    print()
    print("where a request's time goes (1 client, p50 and CPU per request, us):")
    print(f"{'':<8} {'floor':>7} {'code':>7} {'daemon':>7} {'loop+':>7} {'transp.':>7} "
          f"{'bare':>7} {'library':>8} {'lib adds':>8} {'batch/sock':>10}")
    print(f"{'':<8} {'':>7} {'':>7} {'CPU':>7} {'wakeups':>7} {'p50':>7} {'p50':>7} "
          f"{'p50':>8} {'':>8} {'':>10}")
    for mode in MODES:
        code = f[f"{mode}/code/p50"]
        daemon = f[f"{mode}/library/sched"]
        bare, library = f[f"{mode}/bare/p50"], f[f"{mode}/library/p50"]
        batch = results.median(mode, "batch", PER_SOCKET)
        print(f"{mode:<8} {us(f[f'{mode}/floor/p50'], 7)} {us(code, 7)} {us(daemon, 7)} "
              f"{us(daemon - code if daemon is not None and code is not None else None, 7)} "
              f"{us(f['transport/p50'], 7)} {us(bare, 7)} {us(library, 8)} "
              f"{us(library - bare if library is not None and bare is not None else None, 8)} "
              f"{us(batch, 10)}")
    print("code: the broker's code per request in-process (no loop, no second process); "
          "daemon CPU: vsnetd's (schedstat) per request")
    print("of vsnetd.client; loop+wakeups: the daemon's CPU beyond its broker code (select "
          "loop, kernel wake-ups); transp.: the transport floor,")
    print("a minimal stdlib server answering with one descriptor (2 processes, 2 wake-ups, "
          "SCM_RIGHTS); lib adds: vsnetd.client p50 - bare p50;")
    print("batch/sock: wall time per socket with batch requests")
    split = results.median(*SPLIT, P50)
    if split is not None:
        print(f"the transport floor with its two ends forced onto different CPUs: p50 "
              f"{split / 1000:.1f} us, server CPU {(results.median(*SPLIT, SCHED) or 0) / 1000:.1f}"
              f" us per request (where the scheduler puts the daemon and the client decides "
              f"between the two floors)")
    imports = results.imports
    if imports:
        print()
        whole, bare = (statistics.median(imports[name]) for name in ("import", "python"))
        print(f'python -c "import vsnetd.client": {whole * 1e3:.1f} ms, python -c pass: '
              f"{bare * 1e3:.1f} ms (whole processes, bytecode cached): the import costs "
              f"{(whole - bare) * 1e3:.1f} ms; heavy modules loaded: "
              f"{' '.join(values.get('heavy_modules_loaded', [])) or 'none'}")
    print()
    common.print_targets(targets(results, args), results.notes, shown, width=52)


def as_json(info: dict[str, Any], args: argparse.Namespace, results: Results) -> dict[str, Any]:
    measures: dict[str, Any] = {}
    for (mode, kind), rounds in results.rounds.items():
        measure: dict[str, Any] = {
            "label": label_of(kind, args), "mode": mode, "clients": rounds[0].clients,
            "p50_us": (results.median(mode, kind, P50) or 0) / 1000,
            "p99_us": (results.median(mode, kind, P99) or 0) / 1000,
            "sockets_per_s": results.median(mode, kind, RATE),
            "rounds": [r.as_json() for r in rounds],
        }
        cpu = results.median(mode, kind, CPU)
        measure["server_cpu_us_per_request"] = cpu / 1000 if cpu is not None else None
        sched = results.median(mode, kind, SCHED)
        measure["server_schedstat_us_per_request"] = sched / 1000 if sched is not None else None
        if mode in MODES and (mode, "floor") in results.rounds:
            measure["p50_ratio_to_floor"] = (results.median(mode, kind, P50) or 0) / (
                results.median(mode, "floor", P50) or 1)
        measures[f"{mode}/{kind}"] = measure
    return {
        "benchmark": "broker",
        "requests_per_client": args.requests,
        "clients": args.clients,
        "batch": args.batch,
        "warmup": args.warmup,
        "repeat": args.repeat,
        "profiled": str(args.profile) if args.profile else None,
        "machine": info,
        "values": results.values,
        "measures": measures,
        "import_seconds": {name: statistics.median(runs)
                           for name, runs in results.imports.items()},
        "targets": targets(results, args),
        "notes": results.notes,
    }


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str]) -> int:
    parser = common.arguments(__doc__, servers=None, repeat=None)
    parser.add_argument("--requests", type=int, default=2000,
                        help="measured requests per client and measure (default 2000)")
    parser.add_argument("--clients", type=int, default=8,
                        help="concurrent clients of the capacity measure (default 8)")
    parser.add_argument("--batch", type=int, default=32,
                        help="listen items per batch request (default 32, at most 253)")
    parser.add_argument("--warmup", type=int, default=100,
                        help="unmeasured requests per client first (default 100)")
    parser.add_argument("--repeat", type=int, default=5,
                        help="rounds of every measure; the median is reported (default 5)")
    parser.add_argument("--profile", type=Path, metavar="FILE",
                        help="run vsnetd under cProfile and write its profile to FILE "
                             "(the figures are then the profiled daemon's)")
    parser.add_argument("--cpu", type=int, metavar="N",
                        help="run everything (vsnetd, the clients, the transport server) on "
                             "CPU N only: no cross-CPU wake-ups")
    args = common.parse(parser, argv)
    if args.requests < 1 or args.clients < 2 or args.warmup < 1:
        parser.error("--requests, --warmup and --repeat must be at least 1, --clients at "
                     "least 2")
    if not 1 <= args.batch <= 253:
        parser.error("--batch must be 1..253 (the descriptors of one message)")
    if args.clients * (args.requests + args.warmup) > PORT_SPAN:
        parser.error(f"--clients x (--requests + --warmup) must be at most {PORT_SPAN} "
                     f"(one port per request of a measure)")
    if args.profile is not None:
        args.profile = args.profile.resolve()
    return common.run_benchmark(__file__, argv, args, run, info, as_json, print_table,
                                info_first=True)


def info() -> dict[str, Any]:
    """First: its load average is the machine's before the run (do others share the CPUs?)."""
    return common.machine(vsnet=version("vsnet"),
                          loadavg=[round(value, 2) for value in os.getloadavg()])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
