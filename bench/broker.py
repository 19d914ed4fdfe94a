"""Benchmark of the socket broker: request -> socket received, in parts, against the same
socket made in-process.

How it measures: docs/benchmarks.md (`bench/broker.py`).
"""

from __future__ import annotations

import argparse
import array
import contextlib
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
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common
from bench.common import UPLINK, Notes, percentile
from bench.common import progress_line as progress
from vsnetd.broker.access import Peer
from vsnetd.broker.server import Broker as BrokerServer
from vsnetd.broker.server import Client as ServerClient
from vsnetd.broker.server import Served
from vsnetd.broker.sockets import SPARE_BATCH
from vsnetd.client import Broker, BrokerRefused
from vsnetd.compile import compile_config
from vsnetd.config import parse_config
from vsnetd.kernel import Kernel
from vsnetd.syscalls import entered_netns

PBR, NETNS = "p1", "n1"  # the two VS
CONFIG = f"""\
version: 1
servers:
  {PBR}: {{id: 1, mode: pbr, uplink: {UPLINK}, addresses: [{{address: 10.0.0.5/24}}]}}
  {NETNS}: {{id: 2, mode: netns, uplink: {UPLINK}, addresses: [{{address: 10.1.1.5/24}}]}}
"""
PORT_LOW, PORT_SPAN = 20000, 40000  # request ports cycle through PORT_LOW + 0 .. PORT_SPAN - 1
BACKLOG = 128  # the broker's default
READY_TIMEOUT = 60.0
CLIENT_TIMEOUT = 30.0  # seconds a client waits for one reply before it gives up
SO_MARK, IP_FREEBIND = 36, 15
SIOCGSKNS = 0x894C  # linux/sockios.h: an fd of the socket's network namespace
CONTROL_SPACE = socket.CMSG_SPACE(253 * 4)
IMPORT_RUNS = 5  # per round, of each command
HEAVY_MODULES = ("pydantic", "pydantic_core", "yaml", "pyroute2")
# the worked example's reply (docs/broker-protocol.md): what the transport floor sends
TRANSPORT_REPLY = (b'{"v":1,"ok":true,"generation":1,"sockets":[{"server":"nas1",'
                   b'"address":"10.0.0.5","port":8080,"proto":"tcp","family":4,'
                   b'"mark":90177537,"namespace":""}],"part":1,"parts":1}')
MODES = ("pbr", "netns")
KINDS = ("floor", "code", "bare", "library", "clients", "batch")
# the figures of a round the report takes medians of (microseconds, sockets/s)
P50, P99, RATE, CPU, SCHED = ("p50_us", "p99_us", "sockets_per_s", "server_cpu_us_per_request",
                              "server_schedstat_us_per_request")

OPTIONS: dict[str, common.Option] = {
    "--requests": (2000, "measured requests per client and measure"),
    "--clients": (8, "concurrent clients of the capacity measure"),
    "--batch": (32, "listen items per batch request (at most 253)"),
    "--warmup": (100, "unmeasured requests per client first"),
    "--repeat": (5, "rounds of every measure; the median is reported"),
    "--profile": {"type": Path, "metavar": "FILE", "help": "run vsnetd under cProfile and write "
                  "its profile to FILE (the figures are then the profiled daemon's)"},
    "--cpu": {"type": int, "metavar": "N", "help": "run everything (vsnetd, the clients, the "
              "transport server) on CPU N only: no cross-CPU wake-ups"},
}


def check(args: argparse.Namespace) -> str:
    if args.clients < 2:
        return "--clients must be at least 2"
    if args.batch > 253:
        return "--batch must be 1..253 (the descriptors of one message)"
    if args.clients * (args.requests + args.warmup) > PORT_SPAN:
        return (f"--clients x (--requests + --warmup) must be at most {PORT_SPAN} "
                f"(one port per request of a measure)")
    return ""


@dataclass(frozen=True, slots=True)
class Target:
    """One VS as the benchmark sees it: where its sockets go and what marks them."""

    mode: str
    server: str
    address: str
    mark: int  # 0 for netns
    netns: str  # "" for pbr


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
    if (mark := sock.getsockopt(socket.SOL_SOCKET, SO_MARK)) != target.mark:
        problems.append(f"mark {mark:#x}, not {target.mark:#x}")
    if sock.getsockopt(socket.IPPROTO_IP, IP_FREEBIND) != 1:
        problems.append("no IP_FREEBIND")
    ns_fd = fcntl.ioctl(sock.fileno(), SIOCGSKNS)
    try:
        inode = os.fstat(ns_fd).st_ino
    finally:
        os.close(ns_fd)
    where = Path("/run/netns") / target.netns if target.netns else Path("/proc/thread-self/ns/net")
    if inode != os.stat(where).st_ino:
        problems.append(f"not in namespace {target.netns}" if target.netns
                        else "not in the uplink's namespace")
    return "; ".join(problems)


@dataclass(slots=True)
class Results(Notes):
    rounds: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # by "mode/kind"
    values: dict[str, Any] = field(default_factory=dict)
    imports: dict[str, list[float]] = field(default_factory=dict)

    def add(self, key: str, latencies: array.array[int], clients: int, sockets: int,
            errors: int, wall_ns: int, cpu: tuple[int, int] | None = None) -> None:
        """One round of a measure: its latencies (ns), the server's CPU (stat, schedstat ns)."""
        requests = len(latencies)
        self.rounds.setdefault(key, []).append({
            "clients": clients, "requests": requests, "sockets": sockets, "errors": errors,
            "wall_s": wall_ns / 1e9, "p50_us": percentile(latencies, 50) / 1000,
            "p99_us": percentile(latencies, 99) / 1000, "max_us": max(latencies) / 1000,
            "sockets_per_s": sockets / (wall_ns / 1e9) if wall_ns else 0.0,
            CPU: cpu[0] / requests / 1000 if cpu and requests else None,
            SCHED: cpu[1] / requests / 1000 if cpu and requests else None})

    def median(self, key: str, figure: str | Callable[[dict[str, Any]], float]) -> float | None:
        """The median over the rounds of one of a measure's figures (None if it has none)."""
        values = [v for r in self.rounds.get(key, [])
                  if (v := r[figure] if isinstance(figure, str) else figure(r)) is not None]
        return statistics.median(values) if values else None


def in_process(results: Results, target: Target, kind: str, requests: int, warmup: int,
               first: int, make: Callable[[int], tuple[int, socket.socket]]) -> None:
    """``make`` a socket on a new port (and say how long it took, ns), ``warmup`` times,
    then ``requests`` times measured; the first socket checked."""
    latencies = array.array("q")
    perf = time.perf_counter_ns
    gc.collect()
    started = 0
    for index in range(warmup + requests):
        started = perf() if index == warmup else started
        elapsed, sock = make(port_of(first + index))
        with sock:
            if index == 0 and (problem := check_socket(sock, target, port_of(first))):
                results.note(f"{target.mode} {kind} in-process: {problem}")
        if index >= warmup:
            latencies.append(elapsed)
    results.add(f"{target.mode}/{kind}", latencies, 1, requests, 0, perf() - started)


def measure_floor(results: Results, target: Target, requests: int, warmup: int,
                  first: int) -> None:
    """The floor: the same socket made by this process, one after the other."""
    netns_fd = (os.open(Path("/run/netns") / target.netns, os.O_RDONLY | os.O_CLOEXEC)
                if target.netns else None)

    def make(port: int) -> tuple[int, socket.socket]:
        before = time.perf_counter_ns()
        sock = make_inprocess(target, port, netns_fd)
        return time.perf_counter_ns() - before, sock

    try:
        in_process(results, target, "floor", requests, warmup, first, make)
    finally:
        if netns_fd is not None:
            os.close(netns_fd)


def received_fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    return [fd for level, kind, payload in ancdata
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS
            for fd in struct.unpack(f"{len(payload) // 4}i", payload)]


def measure_code(results: Results, server: BrokerServer, target: Target, requests: int,
                 warmup: int, first: int) -> None:
    """The broker's code alone: ``Broker.readable`` on a socketpair, in this process."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    client = ServerClient(ours, Peer(os.getpid(), 0, 0))

    def make(port: int) -> tuple[int, socket.socket]:
        theirs.send(b'{"v":1,"op":"listen","server":"%s","proto":"tcp","port":%d}'
                    % (target.server.encode(), port))
        before = time.perf_counter_ns()
        server.readable(client)
        elapsed = time.perf_counter_ns() - before
        data, ancdata, _flags, _ = theirs.recvmsg(1 << 16, CONTROL_SPACE)
        fds = received_fds(ancdata)
        for fd in fds[1:]:
            os.close(fd)
        if not fds:
            raise RuntimeError(f"{target.mode} broker code in-process: {data[:200]!r}")
        return elapsed, socket.socket(fileno=fds[0])

    with ours, theirs:
        in_process(results, target, "code", requests, warmup, first, make)


def bare_request(sock: socket.socket, request: bytes) -> tuple[dict[str, Any], list[int]]:
    """A request and its whole reply, the standard library only (docs/broker-protocol.md)."""
    sock.send(request)
    fds: list[int] = []
    while True:
        # 64 KiB: a reply of up to 253 sockets fits (docs/broker-protocol.md); a larger
        # buffer costs an allocation of its size per call in Python
        data, ancdata, flags, _ = sock.recvmsg(1 << 16, CONTROL_SPACE, socket.MSG_CMSG_CLOEXEC)
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            raise ConnectionError("a reply did not fit")
        fds += received_fds(ancdata)
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
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        if library is None:  # blocking, with a receive timeout (settimeout would poll first)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                           struct.pack("ll", int(CLIENT_TIMEOUT), 0))
            raw.connect(path)

        def one(index: int) -> tuple[list[socket.socket], list[int]]:
            """The sockets of request ``index`` and the ports asked."""
            ports = [port_of(first + index * per + n) for n in range(per)]
            if library is not None and style == "batch":
                got = library.batch([{"op": "listen", "server": target.server, "proto": "tcp",
                                      "port": port} for port in ports])
                return [sock for _meta, sock in got], ports
            if library is not None:
                return library.listen(target.server, "tcp", ports[0]), ports
            reply, fds = bare_request(raw, b'{"v":1,"op":"listen","server":"%s","proto":'
                                           b'"tcp","port":%d}' % (target.server.encode(), ports[0]))
            if not reply.get("ok"):
                raise BrokerRefused(reply["error"]["code"], reply["error"]["message"])
            return ([socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0, fd) for fd in fds],
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
            wrong += len(sockets) != per
            for sock in sockets:
                sock.close()
        ended = perf()
        if library is not None:
            library.close()
        raw.close()
        pipe.send(("done", latencies.tobytes(), started, ended, received, errors, wrong,
                   first_error))
    except Exception as exc:
        pipe.send(("failed", f"{type(exc).__name__}: {exc}"))
    finally:
        pipe.close()


def measure_clients(results: Results, path: Path, server_pid: int, target: Target,
                    style: str, key: str, clients: int, requests: int, warmup: int,
                    first: int, batch: int = 1, cpu: int | None = None) -> None:
    """``clients`` processes of ``style``, each with its own connection, started together;
    the server's CPU over the measure."""
    label = key.replace("/", " ")
    context = multiprocessing.get_context("fork")
    start = context.Event()
    pipes: list[Connection] = []
    processes = []
    for number in range(clients):
        mine, theirs = context.Pipe(duplex=False)
        process = context.Process(target=client_process, daemon=True, args=(
            style, str(path), target, first + number * (warmup + requests) * batch, requests,
            warmup, batch, theirs, start, cpu))
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
        meter = common.CpuMeter(server_pid)
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
        _wall, stat_ns, threads = meter.stop()
    finally:
        for process in processes:  # stuck ones (a failed measure) are not waited for
            process.join(timeout=5 if len(replies) == clients else 0)
            if process.is_alive():
                process.kill()
                process.join()
        for pipe in pipes:
            pipe.close()
    if failed := [m[1] for m in replies.values() if m[0] != "done"]:
        raise RuntimeError(f"{label}: {failed[0]}")
    latencies = array.array("q")
    for _done, data, *_rest, first_error in replies.values():
        latencies.frombytes(data)
        if first_error:
            results.note(f"{label}: refused: {first_error}")
    received, errors, wrong = (sum(m[i] for m in replies.values()) for i in (4, 5, 6))
    if errors:
        results.note(f"{label}: {errors} request(s) refused")
    if wrong:
        results.note(f"{label}: {wrong} reply(ies) without the sockets asked for")
    if not latencies:
        raise RuntimeError(f"{label}: no request answered")
    wall = max(m[3] for m in replies.values()) - min(m[2] for m in replies.values())
    results.add(key, latencies, clients, received, errors, wall,
                (stat_ns, sum(threads.values())))


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
    while conn.recvmsg_into((buffer,), CONTROL_SPACE)[0]:
        conn.sendmsg((TRANSPORT_REPLY,), control)
    os._exit(0)


def measure_transport(results: Results, workdir: Path, target: Target, requests: int,
                      warmup: int, split: bool) -> None:
    """The transport floor, the scheduler placing both ends (``split``: the server on CPU 0,
    the client on CPU 1: every wake-up crosses CPUs)."""
    path = workdir / "transport.sock"
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(str(path))
    listener.listen(1)
    server = multiprocessing.get_context("fork").Process(
        target=transport_server, args=(listener, 0 if split else None), daemon=True)
    server.start()
    listener.close()
    try:
        assert server.pid is not None
        measure_clients(results, path, server.pid, target, "transport",
                        "-/split" if split else "-/transport", 1, requests, warmup, 0,
                        cpu=1 if split else None)
    finally:
        server.join(timeout=5)
        if server.is_alive():
            server.kill()
            server.join()


def measure_import(results: Results, workdir: Path) -> None:
    """``python -c "import vsnetd.client"`` and ``python -c pass``, whole processes,
    interleaved, with a bytecode cache as an installed package has one (in the run's
    directory: PYTHONPYCACHEPREFIX; this machine's environment may forbid writing one)."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(workdir / "pycache")
    commands = {"import": "import vsnetd.client", "python": "pass"}
    for run in range(IMPORT_RUNS + 1):  # the first run writes the cache
        for name, code in commands.items():
            seconds, _ = common.timed(subprocess.run, [sys.executable, "-c", code], check=True,
                                      env=env)
            if run:
                results.imports.setdefault(name, []).append(seconds)
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, vsnetd.client; print(' '.join(sorted(m for m in "
         f"sys.modules if m.split('.')[0] in {HEAVY_MODULES!r})))"],
        check=True, capture_output=True, text=True, env=env).stdout.split()
    results.values["heavy_modules_loaded"] = loaded


def check_in_sync(results: Results, daemon: Any, when: str) -> None:
    states = {name: s.get("state")
              for name, s in common.daemon_status(daemon).get("servers", {}).items()}
    if states != {PBR: "in-sync", NETNS: "in-sync"}:
        results.note(f"{when}: vsnetctl status --json says {states or 'nothing'}")


def measure(args: argparse.Namespace) -> Results:
    results = Results()
    if args.cpu is not None:  # the daemon, the clients and the servers inherit it
        os.sched_setaffinity(0, {args.cpu})
    config = parse_config(CONFIG, file="bench.yaml")
    desired = compile_config(config)
    targets = {mode: Target(mode, name, desired.servers[name].addresses[0].split("/")[0],
                            desired.servers[name].numbers.mark if mode == "pbr" else 0,
                            desired.servers[name].netns or "")
               for mode, name in (("pbr", PBR), ("netns", NETNS))}
    results.values["targets"] = {mode: {"server": t.server, "address": t.address,
                                        "mark": t.mark, "netns": t.netns}
                                 for mode, t in targets.items()}
    span, profile = args.requests + args.warmup, args.profile
    splits = [False, True] if args.cpu is None and (os.cpu_count() or 1) > 1 else [False]
    with common.uplinked_netns(), common.config_dir(CONFIG) as (workdir, path), Kernel() as kernel:
        broker = workdir / "broker.sock"
        progress("starting vsnetd")
        with common.running_daemon(
                workdir, path, results, control="ctl.sock", args=["--broker", str(broker)],
                env={"VSNET_BROKER": str(broker)}, stop_timeout=60,
                command=None if profile is None else [sys.executable, "-m", "cProfile", "-o",
                                                      str(profile.resolve()), "-m", "vsnetd.daemon"]
        ) as daemon:
            results.values["ready_seconds"] = daemon.ready(READY_TIMEOUT)
            check_in_sync(results, daemon, "after start")
            code = BrokerServer(kernel, Path("/nonexistent"))  # the daemon's, in this process
            with contextlib.closing(code):  # its spare sockets hold the netns VS's namespace
                code.update({name: Served(server, config.servers[name], "in-sync")
                             for name, server in desired.servers.items()}, 1)
                fds_before = len(os.listdir(f"/proc/{daemon.pid}/fd"))
                first = 0
                for number in range(1, args.repeat + 1):
                    step = f"round {number}/{args.repeat}"
                    progress(f"{step}: transport floor, import")
                    for split in splits:
                        measure_transport(results, workdir, targets["pbr"], args.requests,
                                          args.warmup, split)
                    measure_import(results, workdir)
                    for mode, target in targets.items():
                        progress(f"{step}: {mode}")
                        measure_floor(results, target, args.requests, args.warmup, first)
                        first += span + 1
                        measure_code(results, code, target, args.requests, args.warmup, first)
                        first += span
                        for style, clients in (("bare", 1), ("library", 1), ("clients", args.clients)):
                            measure_clients(results, broker, daemon.pid, target,
                                            "bare" if style == "bare" else "library",
                                            f"{mode}/{style}", clients, args.requests, args.warmup,
                                            first)
                            first += clients * span
                        batches = max(1, args.requests // args.batch)
                        measure_clients(results, broker, daemon.pid, target, "batch", f"{mode}/batch",
                                        1, batches, 2, first, args.batch)
                        first += (batches + 2) * args.batch
                check_in_sync(results, daemon, "after the requests")
                fds_after = len(os.listdir(f"/proc/{daemon.pid}/fd"))
                results.values["daemon_fds"] = {"before": fds_before, "after": fds_after}
                # every client has gone: its sockets must have too; the netns VS's spares stay
                if fds_after > fds_before + SPARE_BATCH - 1:
                    results.note(f"vsnetd holds {fds_after - fds_before} more descriptor(s) after "
                                 f"the requests than before (at most {SPARE_BATCH - 1} spare "
                                 f"sockets of the netns VS expected)")
    return results


def figure(results: Results, key: str, name: str = P50) -> float | None:
    return results.median(key, name)


def sub(a: float | None, b: float | None) -> float | None:
    return a - b if a is not None and b is not None else None


def seconds(us: float | None) -> float | None:
    return None if us is None else us / 1e6


def targets(args: argparse.Namespace, results: Results) -> list[dict[str, Any]]:
    checks = []
    for mode in MODES:
        floor = figure(results, f"{mode}/floor")
        for kind, who in (("bare", "bare client"), ("library", "vsnetd.client")):
            p50 = figure(results, f"{mode}/{kind}")
            checks += [common.target(f"p50 <= 50 us ({mode}, {who})", f"{mode}/{kind}/p50",
                                     seconds(p50), 50e-6, "s"),
                       common.target(f"p50 <= 6x floor ({mode}, {who})", f"{mode}/{kind}/p50 / floor",
                                     common.ratio(p50, floor), 6.0, "x")]
    checks += [common.target(f"vsnetd.client adds <= 10 us ({mode})", f"{mode}/library-bare/p50",
                             seconds(sub(figure(results, f"{mode}/library"),
                                         figure(results, f"{mode}/bare"))), 10e-6, "s")
               for mode in MODES]
    checks += [common.target(f"daemon CPU <= 25 us per request ({mode})",
                             f"{mode}/library/daemon_cpu",
                             seconds(figure(results, f"{mode}/library", CPU)), 25e-6, "s")
               for mode in MODES]
    checks += [common.target(f">= 25,000 sockets/s ({mode}, {args.clients} clients)",
                             f"{mode}/clients/sockets_per_s",
                             figure(results, f"{mode}/clients", RATE), 25_000.0, "sockets/s",
                             at_least=True) for mode in MODES]
    imports = {name: statistics.median(runs) for name, runs in results.imports.items()}
    heavy = results.values.get("heavy_modules_loaded")
    return [*checks,
            common.target("import vsnetd.client <= 30 ms (process - python -c pass)",
                          "import-python/seconds", sub(imports.get("import"),
                                                       imports.get("python")), 0.030, "s"),
            common.target("import vsnetd.client loads no pydantic/yaml/pyroute2",
                          "heavy_modules_loaded", heavy, [], "modules", passed=heavy == [])]


def label_of(key: str, args: argparse.Namespace) -> str:
    return {"floor": "in-process floor (socket..listen)", "code": "broker code, in-process",
            "bare": "bare client -> vsnetd", "library": "vsnetd.client -> vsnetd",
            "clients": f"vsnetd.client x {args.clients} clients",
            "batch": f"batch of {args.batch}, 1 client",
            "transport": "transport floor (stdlib server)",
            "split": "transport floor, ends on CPUs 0 and 1"}[key.split("/")[1]]


def us(value: float | None, width: int = 8) -> str:
    return f"{value:{width}.1f}" if value is not None else f"{'-':>{width}}"


def table(info: dict[str, Any], args: argparse.Namespace, results: Results) -> None:
    t = results.values["targets"]
    print(f"vsnet broker benchmark: `listen` tcp, a new port each request, persistent "
          f"connections; {args.requests} requests per client and measure; median of "
          f"{args.repeat} rounds")
    print(common.machine_line(info) + f"Python {info['python']}, vsnet {info['vsnet']}; load "
          f"average {'/'.join(map(str, info['loadavg']))} before the run")
    print(f"VS: {t['pbr']['server']} pbr {t['pbr']['address']} mark {t['pbr']['mark']:#x}; "
          f"{t['netns']['server']} netns {t['netns']['address']} in {t['netns']['netns']}; "
          f"vsnetd READY=1 after {results.values.get('ready_seconds', 0):.2f} s"
          + (" (under cProfile: its figures are slowed)" if args.profile else ""))
    print()
    print(f"{'measure':<42} {'p50 us':>8} {'p99 us':>8} {'sockets/s':>10} "
          f"{'server':>8} {'server':>8} {'p50 x':>7}")
    print(f"{'':<42} {'':>8} {'':>8} {'':>10} {'us/req':>8} {'sched':>8} {'floor':>7}")
    for key in ("-/transport", "-/split", *(f"{m}/{k}" for m in MODES for k in KINDS)):
        if key in results.rounds:
            mode, kind = key.split("/")
            p50, floor = figure(results, key), figure(results, f"{mode}/floor")
            ratio = f"{p50 / floor:7.2f}" if p50 is not None and floor and kind != "floor" else ""
            print(f"{('' if mode == '-' else mode + ' ') + label_of(key, args):<42} {us(p50)} "
                  f"{us(figure(results, key, P99))} {figure(results, key, RATE) or 0:10,.0f} "
                  f"{us(figure(results, key, CPU))} {us(figure(results, key, SCHED))} {ratio:>7}")
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
        code, daemon = figure(results, f"{mode}/code"), figure(results, f"{mode}/library", SCHED)
        bare, library = figure(results, f"{mode}/bare"), figure(results, f"{mode}/library")
        batch = results.median(f"{mode}/batch", lambda r: r["wall_s"] * 1e6 / r["sockets"])
        print(f"{mode:<8} {us(figure(results, f'{mode}/floor'), 7)} {us(code, 7)} "
              f"{us(daemon, 7)} {us(sub(daemon, code), 7)} {us(figure(results, '-/transport'), 7)} "
              f"{us(bare, 7)} {us(library, 8)} {us(sub(library, bare), 8)} {us(batch, 10)}")
    print("code: the broker's code per request in-process (no loop, no second process); "
          "daemon CPU: vsnetd's (schedstat) per request")
    print("of vsnetd.client; loop+wakeups: the daemon's CPU beyond its broker code (select "
          "loop, kernel wake-ups); transp.: the transport floor,")
    print("a minimal stdlib server answering with one descriptor (2 processes, 2 wake-ups, "
          "SCM_RIGHTS); lib adds: vsnetd.client p50 - bare p50;")
    print("batch/sock: wall time per socket with batch requests")
    if (split := figure(results, "-/split")) is not None:
        print(f"the transport floor with its two ends forced onto different CPUs: p50 "
              f"{split:.1f} us, server CPU {figure(results, '-/split', SCHED) or 0:.1f}"
              f" us per request (where the scheduler puts the daemon and the client decides "
              f"between the two floors)")
    if results.imports:
        whole, bare = (statistics.median(results.imports[name]) for name in ("import", "python"))
        print()
        print(f'python -c "import vsnetd.client": {whole * 1e3:.1f} ms, python -c pass: '
              f"{bare * 1e3:.1f} ms (whole processes, bytecode cached): the import costs "
              f"{(whole - bare) * 1e3:.1f} ms; heavy modules loaded: "
              f"{' '.join(results.values.get('heavy_modules_loaded', [])) or 'none'}")


def as_json(args: argparse.Namespace, results: Results) -> dict[str, Any]:
    measures: dict[str, Any] = {}
    for key, rounds in results.rounds.items():
        mode = key.split("/")[0]
        measures[key] = {"label": label_of(key, args), "mode": mode,
                         "clients": rounds[0]["clients"],
                         **{name: results.median(key, name) for name in (P50, P99, RATE, CPU, SCHED)},
                         "rounds": rounds}
        if mode in MODES and f"{mode}/floor" in results.rounds:
            measures[key]["p50_ratio_to_floor"] = common.ratio(figure(results, key),
                                                               figure(results, f"{mode}/floor"))
    return {"benchmark": "broker", "requests_per_client": args.requests, "clients": args.clients,
            "batch": args.batch, "warmup": args.warmup, "repeat": args.repeat,
            "profiled": str(args.profile) if args.profile else None, "values": results.values,
            "measures": measures,
            "import_seconds": {name: statistics.median(runs)
                               for name, runs in results.imports.items()}}


def info() -> dict[str, Any]:
    """First: its load average is the machine's before the run (do others share the CPUs?)."""
    return common.machine("vsnet", loadavg=[round(value, 2) for value in os.getloadavg()])


if __name__ == "__main__":
    sys.exit(common.main(__file__, __doc__, sys.argv[1:], OPTIONS, measure, table, as_json,
                         targets, check=check, info=info, info_first=True))
