"""Addresses vsnet puts on uplinks.

Ownership: vsnet marks its addresses with IFA_PROTO (Linux >= 6.0) set to its routing
protocol number, so an address the host or an operator configured is never mistaken for
one of ours. IPv6 addresses are added with IFA_F_NODAD: routes with ``src`` (address
tables) can only be installed once the address is no longer tentative.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, NamedTuple, cast

from vsnetd import netlink
from vsnetd.kinds import _ip
from vsnetd.kinds.kind import (
    Applier,
    Inside,
    Looking,
    NamespaceObserver,
    NetlinkKind,
    Owners,
    Request,
)
from vsnetd.syscalls import entered_netns

if TYPE_CHECKING:
    from vsnetd.state import Change

IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS, IFA_PROTO = 1, 2, 8, 11
IFA_F_NODAD = 0x02

AddressKey = tuple[str, str, str, int]


class Address(NamedTuple):
    device: str
    address: str
    prefixlen: int
    netns: str = ""  # "": the namespace vsnet runs in

    @property
    def kind(self) -> Literal["address"]:
        return "address"

    @property
    def family(self) -> int:
        return _ip.family_of(self.address)

    @property
    def key(self) -> AddressKey:
        return (self.netns, self.device, self.address, self.prefixlen)

    def describe(self) -> str:
        where = f" netns {self.netns}" if self.netns else ""
        return f"address {self.address}/{self.prefixlen} dev {self.device}{where}"

    def as_json(self) -> dict[str, Any]:
        return {"kind": "address", "netns": self.netns, "device": self.device,
                "address": self.address, "prefixlen": self.prefixlen}


def request(action: str, obj: Address, protocol: int, links: dict[str, int]) -> tuple[int, int, bytes]:
    family = obj.family
    raw = _ip.pack(obj.address)
    body = IFADDRMSG.pack(family, obj.prefixlen, 0, 0, links[obj.device])
    body += netlink.attr(IFA_LOCAL, raw) + netlink.attr(IFA_ADDRESS, raw)
    if action == "delete":
        return netlink.RTM_DELADDR, 0, body
    flags = IFA_F_NODAD if family == socket.AF_INET6 else 0
    body += netlink.attr_u32(IFA_FLAGS, flags) + netlink.attr_u8(IFA_PROTO, protocol)
    return netlink.RTM_NEWADDR, netlink.NLM_F_CREATE | netlink.NLM_F_EXCL, body


def protect_secondaries(device: str) -> bool:
    """Make deleting a primary IPv4 address promote its secondaries instead of deleting them.

    Without ``promote_secondaries`` the kernel deletes every secondary address of a subnet
    with its primary: removing one vsnet address could take a foreign one (or another
    VS's) with it. systemd enables it by default, but not in a namespace vsnet creates; vsnet
    turns it on for a device it is about to delete an IPv4 address from (an uplink, or a VS
    device in its namespace: call it there) when neither ``all`` nor the device has it.
    Returns True when it had to turn it on.
    """
    # read with os calls: on an edit's way, pathlib's text files cost ~0.1 ms each
    conf = "/proc/sys/net/ipv4/conf"
    try:
        if any(_read(f"{conf}/{name}/promote_secondaries").strip() != b"0"
               for name in ("all", device)):
            return False
        Path(conf, device, "promote_secondaries").write_text("1")
    except OSError:
        return False
    return True


def _read(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 64)
    finally:
        os.close(fd)


def decoder(names: dict[int, str], netns: str = "") -> netlink.Decoder[tuple[Address, int]]:
    """Decodes an RTM_NEWADDR/RTM_DELADDR (dump or notification) into (address,
    IFA_PROTO); None for families vsnet does not manage."""
    unpack_attr = netlink.ATTR.unpack_from

    def decode(data: bytearray, start: int, end: int) -> tuple[Address, int] | None:
        family, prefixlen, _flags, _scope, index = IFADDRMSG.unpack_from(data, start)
        if family != socket.AF_INET and family != socket.AF_INET6:
            return None
        local = address = None
        protocol = 0
        pos = start + IFADDRMSG.size
        while pos + 4 <= end:
            length, kind = unpack_attr(data, pos)
            if length < 4:
                break
            if kind == IFA_LOCAL:
                local = data[pos + 4 : pos + length]
            elif kind == IFA_ADDRESS:
                address = data[pos + 4 : pos + length]
            elif kind == IFA_PROTO:
                protocol = data[pos + 4]
            pos += (length + 3) & ~3
        raw = local or address
        if raw is None:
            return None
        device = names.get(index) or f"if{index}"
        return Address(device, _ip.unpack(family, raw), prefixlen, netns), protocol

    return decode


DUMP = netlink.DumpRequest(netlink.RTM_GETADDR, IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0))


def observe(
    sock: netlink.RtnlSocket, names: dict[int, str], netns: str = ""
) -> list[tuple[Address, int]]:
    """Every IPv4/IPv6 address as (address, IFA_PROTO)."""
    return sock.dump(DUMP, decoder(names, netns))


class AddressKind(NetlinkKind[Address]):
    """Addresses: vsnet's carry its protocol in IFA_PROTO. One that goes takes the routes
    using it as ``src`` with it, silently; that is also how an address no VS wants any
    more is attributed (to the VS of those routes)."""

    name = "address"
    cascades = True
    # the kernel lists addresses oldest first: secondaries go before their primary, so no
    # deletion makes the kernel promote (and re-route) another one
    newest_first = True
    namespace_dumps: ClassVar[tuple[netlink.DumpRequest, ...]] = (DUMP,)
    notifications: ClassVar[dict[int, bool]] = {netlink.RTM_NEWADDR: False,
                                                netlink.RTM_DELADDR: True}

    def observer(self, look: Looking) -> NamespaceObserver[Address]:
        protocol = look.scope.protocol

        def addresses_in(sock: netlink.RtnlSocket, inside: Inside) -> list[tuple[Address, bool]]:
            return [(found, owner == protocol)
                    for found, owner in observe(sock, inside.names, inside.netns)]

        return addresses_in

    def notified(self, inside: Inside, gone: bool, data: bytearray, start: int, end: int
                 ) -> tuple[Address, bool] | None:
        decoded = decoder(inside.names, inside.netns)(data, start, end)
        if decoded is None:
            return None
        found, owner = decoded
        return found, owner == inside.scope.protocol

    def owner(self, obj: Address, owners: Owners) -> str | None:
        slot = (obj.netns, obj.address)
        return owners.wanting(self.name, slot) or owners.using(self.name, slot) or (
            owners.of_netns(obj.netns) if obj.netns else None)

    def slot(self, obj: Address) -> tuple[str, str]:
        return (obj.netns, obj.address)

    def conflict(self, found: Address) -> str:
        return f"address {found.address} is already on {found.device} (not created by vsnet)"

    def request(self, action: str, obj: Address, protocol: int, links: dict[str, int]
                ) -> Request:
        return request(action, obj, protocol, links)

    def apply(self, applier: Applier, changes: list[Change]) -> None:
        for netns, device in sorted({(obj.netns, obj.device) for c in changes
                                     if c.action == "delete"
                                     and (obj := cast(Address, c.obj)).family == socket.AF_INET}):
            try:  # /proc/sys/net is the namespace of the thread that opens it
                with (entered_netns(applier.kernel.netns_fd(netns)) if netns
                      else contextlib.nullcontext()):
                    turned_on = protect_secondaries(device)
            except OSError:  # the namespace is going: its addresses go with it
                continue
            if turned_on:
                import logging  # here: a one-shot vsnetctl has no logging otherwise

                from vsnetd import log

                where = f" in namespace {netns}" if netns else ""
                log.event(logging.INFO, f"promote_secondaries turned on for {device}{where}: "
                          "deleting a primary address must not delete the secondaries of its "
                          "subnet", op="sysctl", obj=device)
        super().apply(applier, changes)


KIND = AddressKind()
