"""Addresses vsnet puts on uplinks.

Ownership: vsnet marks its addresses with IFA_PROTO (Linux >= 6.0) set to its routing
protocol number, so an address the host or an operator configured is never mistaken for
one of ours. IPv6 addresses are added with IFA_F_NODAD: routes with ``src`` (address
tables) can only be installed once the address is no longer tentative.
"""

from __future__ import annotations

import socket
import struct
from pathlib import Path
from typing import Any, Literal, NamedTuple

from vsnetd import netlink
from vsnetd.kinds import _ip

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
    VS's) with it. systemd enables it by default; vsnet turns it on for an uplink it is
    about to delete an IPv4 address from when neither ``all`` nor the device has it.
    Returns True when it had to turn it on.
    """
    conf = Path("/proc/sys/net/ipv4/conf")
    try:
        if any((conf / name / "promote_secondaries").read_text().strip() != "0"
               for name in ("all", device)):
            return False
        (conf / device / "promote_secondaries").write_text("1")
    except OSError:
        return False
    return True


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


def observe(
    sock: netlink.RtnlSocket, names: dict[int, str], netns: str = ""
) -> list[tuple[Address, int]]:
    """Every IPv4/IPv6 address as (address, IFA_PROTO)."""
    return sock.dump(netlink.RTM_GETADDR, IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0),
                     decoder(names, netns))
