"""Making a VS's sockets: marked (pbr) or inside its namespace (netns).

What a request needs to know of a VS changes only when its entry does: its addresses and
their families, its mark, its outgoing address per family, its namespace (as an open
descriptor: entering it is one ``setns``, not a path lookup), and the fixed part of each
socket's metadata as it appears in the reply. :class:`Target` holds all of it, built when
the daemon hands the broker a picture where the VS is new or changed (kept as it is for
the others: an edit of one VS builds one); a request then costs its system calls
(socket, setsockopt, bind, listen), a dict lookup and a string join.

A socket of a netns VS must be created inside its namespace: the broker's thread enters it
and comes back, two ``setns`` calls that cost more than the socket itself. So the thread
makes a few sockets per entry (:data:`SPARE_BATCH`) and keeps the others for the next
requests (:attr:`Target.spares`): bare sockets, everything a request sets is set after one
is taken. They belong to the VS's Target, handed over with its namespace descriptor to the
Target built when the VS changes, and are closed with it: like that descriptor they keep
the namespace alive, never longer than until the broker's next picture.
:class:`SpareBudget` bounds how many the broker holds, and none are made once descriptors
run short.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import resource
import socket
from _socket import socket as _socket  # the C type: no Python-level __init__ per socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vsnetd.broker.protocol import BrokerError, Request
from vsnetd.kinds.namespace import NETNS_DIR
from vsnetd.syscalls import CLONE_NEWNET, setns

if TYPE_CHECKING:
    from vsnetd.config import ServerConfig
    from vsnetd.state import DesiredServer

SO_MARK = 36
IP_FREEBIND = 15
IPV6_FREEBIND = 78
AF_INET, AF_INET6 = socket.AF_INET, socket.AF_INET6
SOCK_CLOEXEC, SOCK_STREAM = socket.SOCK_CLOEXEC, socket.SOCK_STREAM
KINDS = {"tcp": SOCK_STREAM, "udp": socket.SOCK_DGRAM}
SOL_SOCKET, SO_REUSEADDR, SO_REUSEPORT = (socket.SOL_SOCKET, socket.SO_REUSEADDR,
                                          socket.SO_REUSEPORT)
IPPROTO_IP, IPPROTO_IPV6, IPV6_V6ONLY = socket.IPPROTO_IP, socket.IPPROTO_IPV6, socket.IPV6_V6ONLY
SPARE_BATCH = 8  # sockets made per entry into a namespace: one for the request, 7 spares
SPARE_LIMIT = 64  # spare sockets the broker holds at most, all VS together
SPARE_HEADROOM = 512  # none are made when a descriptor number comes this close to the limit


@dataclass(slots=True)
class SpareBudget:
    """How many spare sockets the broker holds, and the descriptor numbers they may take."""

    held: int = 0
    limit: int = SPARE_LIMIT
    highest_fd: int = field(default_factory=lambda: resource.getrlimit(
        resource.RLIMIT_NOFILE)[0] - SPARE_HEADROOM)


@dataclass(slots=True)
class Target:
    """One VS as the broker's requests need it, while its entry stays as it is."""

    name: str
    netns: str  # "" for pbr
    mark: int  # SO_MARK; 0 for netns (not set)
    addresses: tuple[tuple[str, int], ...]  # (address, AF_INET/AF_INET6), config order
    outgoing: dict[int, str]  # family 4/6 -> the address a `socket` request binds
    # the metadata of a socket on an address, around its port: head + port + tail[proto]
    heads: dict[str, str] = field(default_factory=dict)
    tails: dict[str, dict[str, str]] = field(default_factory=dict)
    families: dict[str, int] = field(default_factory=dict)  # address -> AF_INET/AF_INET6
    # a one-socket request's reply around its port, by address and proto, after the
    # generation's head (``Broker.reply_head``): what lies either side of the port
    replies: dict[str, dict[str, tuple[bytes, bytes]]] = field(default_factory=dict)
    netns_fd: int = -1  # the broker's own descriptor of the namespace (-1: none open)
    netns_inode: int = 0
    # (family, type) -> sockets made ahead in the namespace, counted in ``budget``
    spares: dict[tuple[int, int], list[_socket]] = field(default_factory=dict)
    budget: SpareBudget | None = None

    @classmethod
    def of(cls, desired: DesiredServer, config: ServerConfig) -> Target:
        addresses = tuple((a.split("/")[0], AF_INET6 if ":" in a else AF_INET)
                          for a in desired.addresses)
        mark = 0 if desired.netns else desired.numbers.mark
        target = cls(desired.name, desired.netns, mark, addresses,
                     {family: address for family in (4, 6)
                      if (address := outgoing_address(config, family)) is not None})
        name, netns = json.dumps(desired.name), json.dumps(desired.netns)
        target.families.update(addresses)
        for address, af in addresses:
            target.heads[address] = f'{{"server":{name},"address":{json.dumps(address)},"port":'
            family = 6 if af == AF_INET6 else 4
            target.tails[address] = {
                proto: f',"proto":"{proto}","family":{family},"mark":{mark},"namespace":{netns}'
                for proto in KINDS}
            target.replies[address] = {
                proto: (target.heads[address].encode(),
                        f'{tail}}}],"part":1,"parts":1}}'.encode())
                for proto, tail in target.tails[address].items()}
        return target

    def open_namespace(self, previous: Target | None) -> None:
        """Hold a descriptor of the VS's namespace: the previous picture's when the name
        still means the same namespace, else a new one (none while it does not exist).
        The previous picture's spare sockets are not taken over: the entry changed, and a
        socket takes the namespace's settings (its sysctls: buffer sizes, congestion
        control) when it is made; they close with the previous picture."""
        if not self.netns:
            return
        try:
            inode = os.stat(NETNS_DIR / self.netns).st_ino
        except OSError:
            return
        if previous is not None and previous.netns_fd >= 0 and previous.netns_inode == inode:
            self.netns_fd, self.netns_inode = previous.netns_fd, inode
            previous.netns_fd = -1  # handed over: not closed with it
            return
        with contextlib.suppress(OSError):
            self.netns_fd = os.open(NETNS_DIR / self.netns, os.O_RDONLY | os.O_CLOEXEC)
            self.netns_inode = inode

    def reopen_if_replaced(self) -> None:
        """Kept for a new picture: the namespace descriptor still the one of its name (a
        reconcile, or someone by hand, may have made the namespace anew)."""
        if not self.netns:
            return
        try:
            inode = os.stat(NETNS_DIR / self.netns).st_ino
        except OSError:
            inode = -1
        if self.netns_fd >= 0 and inode == self.netns_inode:
            return
        self.close()
        self.open_namespace(None)

    def close(self) -> None:
        if self.netns_fd >= 0:
            os.close(self.netns_fd)
            self.netns_fd = -1
        for spares in self.spares.values():
            if self.budget is not None:
                self.budget.held -= len(spares)
            for sock in spares:
                sock.close()
        self.spares = {}

    def namespace_socket(self, af: int, kind: int, home_fd: int) -> _socket:
        """A new socket inside the VS's namespace: a spare, else made with up to
        SPARE_BATCH - 1 spares while the budget allows. ``home_fd``: the calling thread's
        namespace, to come back to."""
        spares = self.spares.get((af, kind))
        if spares:
            if self.budget is not None:
                self.budget.held -= 1
            return spares.pop()
        if self.netns_fd < 0:
            raise BrokerError("socket-error", f"{self.name}: its namespace {self.netns} "
                                              f"does not exist")
        budget = self.budget
        setns(self.netns_fd, CLONE_NEWNET)
        try:
            sock = _socket(af, kind | SOCK_CLOEXEC)
            made: list[_socket] = []
            if budget is not None and sock.fileno() < budget.highest_fd:
                with contextlib.suppress(OSError):  # a saving, not a need
                    for _spare in range(min(SPARE_BATCH - 1, budget.limit - budget.held)):
                        made.append(_socket(af, kind | SOCK_CLOEXEC))
        finally:
            setns(home_fd, CLONE_NEWNET)
        if made:
            assert budget is not None
            self.spares[(af, kind)] = made
            budget.held += len(made)
        return sock


def outgoing_address(config: ServerConfig, family: int) -> str | None:
    """The source for outgoing connections: the address whose subnet holds the VS gateway
    of that family (its own ``from`` rule then sends the traffic through that gateway), or
    the first address of the family; None when the VS has none of that family."""
    candidates = [a.address for a in config.addresses if a.address.version == family]
    if not candidates:
        return None
    for gateway in config.gateway:
        for interface in candidates:
            if gateway.version == family and gateway in interface.network:
                return str(interface.ip)
    return str(ipaddress.ip_interface(candidates[0]).ip)


def make_socket(target: Target, address: str, af: int, request: Request, listen: bool,
                home_fd: int) -> tuple[_socket, int]:
    """A socket bound to ``address`` of the VS, marked or inside its namespace, and the
    port it is bound to. ``home_fd``: the calling thread's namespace, to come back to."""
    kind = KINDS[request.proto]
    try:
        if target.netns:
            sock = target.namespace_socket(af, kind, home_fd)
        else:
            sock = _socket(af, kind | SOCK_CLOEXEC)
    except OSError as exc:  # out of descriptors, the namespace is being torn down...
        raise BrokerError("socket-error", f"{target.name}: {exc.strerror or exc}") from None
    port = request.port if listen else 0
    try:
        if target.mark:
            sock.setsockopt(SOL_SOCKET, SO_MARK, target.mark)
        if af == AF_INET6:
            sock.setsockopt(IPPROTO_IPV6, IPV6_V6ONLY, 1)
            if request.freebind:  # the address may come a moment after the request
                sock.setsockopt(IPPROTO_IPV6, IPV6_FREEBIND, 1)
        elif request.freebind:
            sock.setsockopt(IPPROTO_IP, IP_FREEBIND, 1)
        stream_listen = listen and kind == SOCK_STREAM
        if stream_listen:
            sock.setsockopt(SOL_SOCKET, SO_REUSEADDR, 1)
        if request.reuseport:
            sock.setsockopt(SOL_SOCKET, SO_REUSEPORT, 1)
        sock.bind((address, port))
        if stream_listen:
            sock.listen(request.backlog)
        if not port:
            port = sock.getsockname()[1]
    except OSError as exc:
        sock.close()
        raise BrokerError("socket-error", f"{address} port {request.port}: {exc.strerror}"
                          ) from None
    return sock, port
