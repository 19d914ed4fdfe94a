"""The socket broker: ready sockets for the application, over SCM_RIGHTS.

The application (one process serving many VS, without root and without ``setns``) asks
``/run/vsnet/broker.sock`` (SOCK_SEQPACKET) for sockets and gets them ready: bound to a
VS address with ``SO_MARK`` = the VS mark (pbr), or created inside the VS's namespace
(netns; the daemon's thread enters the namespace, opens the socket and comes back: no
fork). The broker reads the daemon's current desired state; it never configures routing.

The protocol (``docs/broker-protocol.md``, ``schemas/broker.schema.json``): one JSON
object per message each way, ``"v": 1``; a reply carries its file descriptors as
SCM_RIGHTS, at most 253 per message (larger answers come in parts, each saying
``"part"`` and ``"parts"``).

This module has three layers: requests parsed and checked (pure, fuzzed by the tests),
sockets made, and the connection handling the daemon's select loop drives.
"""

from __future__ import annotations

import array
import contextlib
import errno
import grp
import json
import os
import pwd
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vsnetd import metrics
from vsnetd.config import ServerConfig
from vsnetd.kernel import Kernel
from vsnetd.state import DesiredServer
from vsnetd.syscalls import entered_netns

BROKER_PATH = Path(os.environ.get("VSNET_BROKER", "/run/vsnet/broker.sock"))
BROKER_GROUP = "vsnet"
VERSION = 1
MAX_MESSAGE = 64 * 1024
MAX_FDS = 253  # SCM_MAX_FD
MAX_CLIENTS = 4096
MAX_BURST = 32  # requests of one client served per wake-up (the others' turn comes next)
SO_MARK = 36
IP_FREEBIND = 15
IPV6_FREEBIND = 78
PRIVILEGED_PORTS = 1024
OPS = ("listen", "socket", "servers", "subscribe")


class BrokerError(Exception):
    """A request refused: ``code`` for programs, ``message`` for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def reply(self) -> dict[str, Any]:
        return {"v": VERSION, "ok": False, "error": {"code": self.code, "message": self.message}}


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True, slots=True)
class Request:
    op: str
    server: str | None = None
    proto: str = "tcp"
    port: int = 0
    address: str | None = None
    family: int | None = None  # 4 or 6, for "socket"
    backlog: int = 128
    reuseport: bool = False
    freebind: bool = True


def _field(message: dict[str, Any], name: str, kind: type | tuple[type, ...],
           default: Any = None, required: bool = False) -> Any:
    if name not in message:
        if required:
            raise BrokerError("bad-request", f"{name!r} is required")
        return default
    value = message[name]
    if isinstance(value, bool) and kind is int:
        raise BrokerError("bad-request", f"{name!r} must be an integer")
    if not isinstance(value, kind):
        raise BrokerError("bad-request", f"{name!r} has the wrong type")
    return value


def parse_request(data: bytes) -> Request:
    """One request message; :class:`BrokerError` says what is wrong with it."""
    if len(data) > MAX_MESSAGE:
        raise BrokerError("too-large", f"a request is at most {MAX_MESSAGE} bytes")
    try:
        message = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise BrokerError("bad-request", f"malformed JSON: {exc}") from None
    if not isinstance(message, dict):
        raise BrokerError("bad-request", "a request is a JSON object")
    version = message.get("v")
    if type(version) is not int or version != VERSION:
        raise BrokerError("unsupported-version", f'this broker speaks "v": {VERSION}')
    op = _field(message, "op", str, required=True)
    if op not in OPS:
        raise BrokerError("unknown-op", f"unknown op {op!r} ({', '.join(OPS)})")
    known = {"v", "op", "server", "proto", "port", "address", "family", "backlog",
             "reuseport", "freebind"}
    unknown = sorted(set(message) - known)
    if unknown:
        raise BrokerError("bad-request", f"unknown key(s): {', '.join(map(str, unknown))}")
    if op in ("servers", "subscribe"):
        return Request(op)
    server = _field(message, "server", str, required=True)
    proto = _field(message, "proto", str, "tcp")
    if proto not in ("tcp", "udp"):
        raise BrokerError("bad-request", "'proto' is tcp or udp")
    port = _field(message, "port", int, 0, required=op == "listen")
    if not 0 <= port <= 65535 or (op == "listen" and port == 0):
        raise BrokerError("bad-request", "'port' is 1..65535")
    address = _field(message, "address", str)
    family = _field(message, "family", int)
    if family not in (None, 4, 6):
        raise BrokerError("bad-request", "'family' is 4 or 6")
    backlog = _field(message, "backlog", int, 128)
    if not 1 <= backlog <= 65535:
        raise BrokerError("bad-request", "'backlog' is 1..65535")
    return Request(op, server, proto, port, address, family, backlog,
                   _field(message, "reuseport", bool, False),
                   _field(message, "freebind", bool, True))


# --------------------------------------------------------------------------- who may


@dataclass(frozen=True, slots=True)
class Peer:
    pid: int
    uid: int
    gid: int
    groups: frozenset[int] = frozenset()


SO_PEERGROUPS = 59


def peer_of(conn: socket.socket) -> Peer:
    """The peer's credentials as of its connect(): SO_PEERCRED, SO_PEERGROUPS."""
    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    groups = {gid}
    with contextlib.suppress(OSError):
        packed = conn.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 4 * 1024)
        groups.update(array.array("I", packed[: len(packed) - len(packed) % 4]))
    return Peer(pid, uid, gid, frozenset(groups))


def _ids(names: list[str], lookup: Callable[[str], int]) -> set[int]:
    ids = set()
    for name in names:
        if name.isdigit():
            ids.add(int(name))
            continue
        with contextlib.suppress(KeyError):
            ids.add(lookup(name))
    return ids


@dataclass(frozen=True, slots=True)
class Access:
    """A VS's ``sockets`` policy with names resolved, once per config generation (a
    lookup in the event loop could block on a directory service)."""

    uids: frozenset[int] = frozenset()
    gids: frozenset[int] = frozenset()
    privileged_ports: bool = False

    @classmethod
    def of(cls, server: ServerConfig) -> Access:
        policy = server.sockets
        return cls(frozenset(_ids(policy.allow_users, lambda n: pwd.getpwnam(n).pw_uid)),
                   frozenset(_ids(policy.allow_groups, lambda n: grp.getgrnam(n).gr_gid)),
                   policy.privileged_ports)


def may_use(peer: Peer, access: Access, port: int = 0) -> bool:
    """Root always; others when the VS's ``sockets`` lists their user or one of their
    groups, and for ports below 1024 only with ``privileged_ports: true``."""
    if peer.uid == 0:
        return True
    if peer.uid not in access.uids and not peer.groups & access.gids:
        return False
    return not (0 < port < PRIVILEGED_PORTS) or access.privileged_ports


# --------------------------------------------------------------------------- sockets


@dataclass(slots=True)
class Served:
    """What the broker knows of one VS: what the daemon compiled, and its policy."""

    desired: DesiredServer
    config: ServerConfig
    state: str = "pending"
    access: Access | None = None  # resolved from ``config`` when not given

    def __post_init__(self) -> None:
        if self.access is None:
            self.access = Access.of(self.config)

    @property
    def policy(self) -> Access:
        assert self.access is not None
        return self.access

    def describe(self) -> dict[str, Any]:
        d = self.desired
        return {"server": d.name, "mode": d.mode, "addresses": list(d.addresses),
                "mark": d.numbers.mark if d.mode == "pbr" else 0,
                "namespace": d.netns, "state": self.state}


def _family_of(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _addresses(served: Served, request: Request) -> list[str]:
    ips = [a.split("/")[0] for a in served.desired.addresses]
    if request.address is None:
        return ips
    if request.address not in ips:
        raise BrokerError("bad-request", f"{request.address} is not an address of "
                                         f"{served.desired.name}")
    return [request.address]


def outgoing_address(served: Served, family: int) -> str:
    """The source for outgoing connections: the address whose subnet holds the VS gateway
    of that family (its own ``from`` rule then sends the traffic through that gateway), or
    the first address of the family."""
    import ipaddress

    config = served.config
    candidates = [a.address for a in config.addresses if a.address.version == family]
    if not candidates:
        raise BrokerError("bad-request", f"{served.desired.name} has no IPv{family} address")
    for gateway in config.gateway:
        for interface in candidates:
            if gateway.version == family and gateway in interface.network:
                return str(interface.ip)
    return str(ipaddress.ip_interface(candidates[0]).ip)


def make_socket(kernel: Kernel, served: Served, address: str, request: Request,
                listen: bool) -> tuple[socket.socket, dict[str, Any]]:
    """A socket bound to ``address`` of the VS: marked (pbr) or inside its namespace."""
    desired = served.desired
    family = _family_of(address)
    kind = socket.SOCK_STREAM if request.proto == "tcp" else socket.SOCK_DGRAM
    try:
        if desired.netns:
            # back to the daemon's own namespace: the broker runs on the thread that has it
            with entered_netns(kernel.netns_fd(desired.netns), kernel.root_fd):
                sock = socket.socket(family, kind | socket.SOCK_CLOEXEC)
        else:
            sock = socket.socket(family, kind | socket.SOCK_CLOEXEC)
    except OSError as exc:  # the namespace is gone, no descriptors left...
        raise BrokerError("socket-error", f"{desired.name}: {exc.strerror or exc}") from None
    try:
        mark = 0
        if not desired.netns:
            mark = desired.numbers.mark
            sock.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if request.freebind:  # the address may come a moment after the request
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
        if listen and kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if request.reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((address, request.port if listen else 0))
        if listen and kind == socket.SOCK_STREAM:
            sock.listen(request.backlog)
        port = sock.getsockname()[1]
    except OSError as exc:
        sock.close()
        raise BrokerError("socket-error", f"{address} port {request.port}: {exc.strerror}"
                          ) from None
    meta = {"server": desired.name, "address": address, "port": port, "proto": request.proto,
            "family": 6 if family == socket.AF_INET6 else 4, "mark": mark,
            "namespace": desired.netns}
    return sock, meta


# --------------------------------------------------------------------------- serving


@dataclass(slots=True)
class Client:
    conn: socket.socket
    peer: Peer
    subscribed: bool = False


@dataclass(slots=True)
class Broker:
    """The broker's listening socket and clients, driven by the daemon's select loop."""

    kernel: Kernel
    path: Path = BROKER_PATH
    served: dict[str, Served] = field(default_factory=dict)
    generation: int = 0
    clients: dict[int, Client] = field(default_factory=dict)
    listener: socket.socket | None = None
    unregister: Callable[[socket.socket], object] | None = None  # the select loop's

    def open(self) -> socket.socket:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX,
                             socket.SOCK_SEQPACKET | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        sock.bind(str(self.path))
        group = -1
        with contextlib.suppress(KeyError):
            group = grp.getgrnam(BROKER_GROUP).gr_gid
        os.chown(self.path, 0, group)
        os.chmod(self.path, 0o660)
        sock.listen(4096)
        self.listener = sock
        return sock

    def close(self) -> None:
        for client in list(self.clients.values()):
            self.drop(client)
        if self.listener is not None:
            self.listener.close()
            with contextlib.suppress(OSError):
                self.path.unlink()

    def update(self, served: dict[str, Served], generation: int) -> None:
        """The daemon's new picture; subscribers hear what changed among the VS they may
        use (added, changed, removed or no longer theirs)."""
        before = self.served
        self.served, self.generation = served, generation
        for client in list(self.clients.values()):
            if not client.subscribed:
                continue
            old = {n: s.describe() for n, s in before.items() if may_use(client.peer, s.policy)}
            new = {n: s.describe() for n, s in served.items() if may_use(client.peer, s.policy)}
            changed = sorted(n for n in new if old.get(n) != new[n])
            removed = sorted(n for n in old if n not in new)
            if (changed or removed) and not self._send(client, {
                "v": VERSION, "event": "changed", "generation": generation,
                "changed": changed, "removed": removed, "servers": [new[n] for n in changed],
            }):
                self.drop(client)

    def accept(self) -> Client | None:
        assert self.listener is not None
        try:
            conn, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return None
        if len(self.clients) >= MAX_CLIENTS:
            conn.close()  # one over the limit goes; the next one waiting may fit
            return self.accept() if len(self.clients) < MAX_CLIENTS else None
        conn.setblocking(False)
        with contextlib.suppress(OSError):  # room for a `servers` reply of thousands of VS
            conn.setsockopt(socket.SOL_SOCKET, 32, 8 << 20)  # SO_SNDBUFFORCE
        client = Client(conn, peer_of(conn))
        self.clients[conn.fileno()] = client
        return client

    def drop(self, client: Client) -> None:
        if self.clients.pop(client.conn.fileno(), None) is None:
            return
        if self.unregister is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.unregister(client.conn)
        client.conn.close()

    def readable(self, client: Client) -> bool:
        """Serve what the client sent (all its queued requests, up to a bound, for one
        wake-up); False when it is gone (the caller unregisters it)."""
        for _request in range(MAX_BURST):
            alive, more = self._read_one(client)
            if not alive or not more:
                return alive
        return True

    def _read_one(self, client: Client) -> tuple[bool, bool]:
        """(still connected, maybe more queued)."""
        try:
            data, ancdata, flags, _ = client.conn.recvmsg(
                MAX_MESSAGE + 1, socket.CMSG_SPACE(MAX_FDS * 4))
        except (BlockingIOError, InterruptedError):
            return True, False
        except OSError:
            return False, False
        passed = _close_fds(ancdata)
        if not data and not passed:
            return False, False  # end of file: the client went away
        if passed:
            return self._send(client, BrokerError(
                "bad-request", "the broker takes no file descriptors").reply()), True
        if flags & socket.MSG_TRUNC or len(data) > MAX_MESSAGE:
            return self._send(client, BrokerError(
                "too-large", f"a request is at most {MAX_MESSAGE} bytes").reply()), True
        try:
            with metrics.broker_request() as counted:
                request = parse_request(data)
                counted.op = request.op
                return self._serve(client, request), True
        except BrokerError as exc:
            return self._send(client, exc.reply()), True

    def _visible(self, peer: Peer) -> list[Served]:
        return [s for s in self.served.values() if may_use(peer, s.policy)]

    def _serve(self, client: Client, request: Request) -> bool:
        if request.op == "servers" or request.op == "subscribe":
            client.subscribed |= request.op == "subscribe"
            return self._send(client, {
                "v": VERSION, "ok": True, "generation": self.generation,
                "servers": [s.describe() for s in self._visible(client.peer)]})
        assert request.server is not None
        served = self.served.get(request.server)
        if served is None:
            raise BrokerError("unknown-server", f"no virtual server {request.server!r}")
        if not may_use(client.peer, served.policy, request.port if request.op == "listen"
                       else 0):
            raise BrokerError("forbidden", f"uid {client.peer.uid} may not use "
                                           f"{request.server!r}" + (
                                               f" port {request.port}"
                                               if 0 < request.port < PRIVILEGED_PORTS else ""))
        sockets: list[tuple[socket.socket, dict[str, Any]]] = []
        try:
            if request.op == "listen":
                for address in _addresses(served, request):
                    sockets.append(make_socket(self.kernel, served, address, request, True))
            else:
                family = request.family or (
                    6 if request.address and ":" in request.address else 4)
                address = request.address or outgoing_address(served, family)
                _addresses(served, Request(request.op, address=address))
                sockets.append(make_socket(self.kernel, served, address, request, False))
            return self._send_sockets(client, sockets)
        finally:
            for sock, _meta in sockets:
                sock.close()  # the client has its own copies (or is gone)

    def _send_sockets(self, client: Client, sockets: list[tuple[socket.socket, dict[str, Any]]]
                      ) -> bool:
        parts = [sockets[i:i + MAX_FDS] for i in range(0, len(sockets), MAX_FDS)] or [[]]
        for number, part in enumerate(parts, 1):
            reply = {"v": VERSION, "ok": True, "generation": self.generation,
                     "sockets": [meta for _sock, meta in part],
                     "part": number, "parts": len(parts)}
            if not self._send(client, reply, [sock.fileno() for sock, _meta in part]):
                return False
        return True

    def _send(self, client: Client, reply: dict[str, Any], fds: list[int] | None = None
              ) -> bool:
        """Send one message; a client that cannot take it now (slow, stuck, gone) is
        dropped: the daemon never waits for anyone."""
        data = json.dumps(reply, separators=(",", ":")).encode()
        ancdata = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        try:
            client.conn.sendmsg([data], ancdata, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EPIPE, errno.ECONNRESET, errno.ENOBUFS,
                                 errno.EMSGSIZE):
                raise
            return False
        return True



def _close_fds(ancdata: list[tuple[int, int, bytes]]) -> int:
    """Close descriptors a client passed (the broker takes none); how many there were."""
    count = 0
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds = array.array("i")
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
                count += 1
    return count
