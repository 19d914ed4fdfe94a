"""Routes in vsnet's tables (address tables and mark tables).

Ownership: every route vsnet creates carries its routing protocol number
(``proto vsnet``), and deletes name that protocol, so the kernel itself refuses to
delete a route of another owner even if the plan were wrong.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from vsnetd import netlink
from vsnetd.kinds import _ip

RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, proto, scope, type, flags
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_PREFSRC, RTA_TABLE = 1, 4, 5, 6, 7, 15
RT_TABLE_COMPAT = 252  # the header's 8-bit table field when the real one is in RTA_TABLE
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK = 0, 253
RTN_UNICAST, RTN_UNREACHABLE = 1, 7
ROUTE_TYPES = {RTN_UNICAST: "unicast", RTN_UNREACHABLE: "unreachable"}
ROUTE_TYPE_CODES = {name: code for code, name in ROUTE_TYPES.items()}
IPV6_DEFAULT_METRIC = 1024  # what the kernel stores for an IPv6 route added with metric 0

RouteKey = tuple[int, int, str, int]


@dataclass(frozen=True, slots=True, order=True)
class Route:
    family: int
    table: int
    destination: str  # "10.0.0.0/24"; "0.0.0.0/0" and "::/0" are the defaults
    metric: int
    type: str = "unicast"
    device: str | None = None
    gateway: str | None = None
    source: str | None = None
    scope: int = RT_SCOPE_UNIVERSE

    kind: ClassVar[Literal["route"]] = "route"

    @property
    def key(self) -> RouteKey:
        """What the kernel itself uses to tell two routes apart."""
        return (self.family, self.table, self.destination, self.metric)

    def describe(self) -> str:
        words = [] if self.type == "unicast" else [self.type]
        words.append("default" if self.destination.endswith("/0") else self.destination)
        if self.gateway:
            words.append(f"via {self.gateway}")
        if self.device:
            words.append(f"dev {self.device}")
        if self.source:
            words.append(f"src {self.source}")
        words.append(f"table {self.table}")
        if self.metric and not (self.family == socket.AF_INET6 and self.metric == IPV6_DEFAULT_METRIC):
            words.append(f"metric {self.metric}")
        prefix = "route -6" if self.family == socket.AF_INET6 else "route"
        return f"{prefix} {' '.join(words)}"

    def as_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "family": 6 if self.family == socket.AF_INET6 else 4,
                "table": self.table, "destination": self.destination, "metric": self.metric,
                "type": self.type, "device": self.device, "gateway": self.gateway,
                "source": self.source}


def request(action: str, obj: Route, protocol: int, links: dict[str, int]) -> tuple[int, int, bytes]:
    address, length = _ip.split_prefix(obj.destination)
    header_table = obj.table if obj.table < 256 else RT_TABLE_COMPAT
    body = RTMSG.pack(obj.family, length, 0, 0, header_table, protocol, obj.scope,
                      ROUTE_TYPE_CODES[obj.type], 0)
    body += netlink.attr_u32(RTA_TABLE, obj.table)
    if length:
        body += netlink.attr(RTA_DST, _ip.pack(address))
    body += netlink.attr_u32(RTA_PRIORITY, obj.metric)
    if action == "delete":
        # the key plus our protocol: the kernel deletes nothing of another owner
        return netlink.RTM_DELROUTE, 0, body
    if obj.device is not None:
        body += netlink.attr_u32(RTA_OIF, links[obj.device])
    if obj.gateway is not None:
        body += netlink.attr(RTA_GATEWAY, _ip.pack(obj.gateway))
    if obj.source is not None:
        body += netlink.attr(RTA_PREFSRC, _ip.pack(obj.source))
    mode = netlink.NLM_F_REPLACE if action == "replace" else netlink.NLM_F_EXCL
    return netlink.RTM_NEWROUTE, netlink.NLM_F_CREATE | mode, body


def dump(sock: netlink.RtnlSocket, family: int) -> list[netlink.Message]:
    # Every table: a foreign route inside one of vsnet's tables must be seen to be
    # reported. The host's own tables are small next to vsnet's.
    return sock.dump(netlink.RTM_GETROUTE, RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0))


def decode(message: netlink.Message, names: dict[int, str]) -> tuple[Route, int] | None:
    """(route, protocol) of one RTM_NEWROUTE, or None for kinds vsnet never creates."""
    body = message.body
    family, dst_len, src_len, _tos, table, protocol, scope, rtype, _flags = RTMSG.unpack_from(body)
    if rtype not in ROUTE_TYPES or src_len:
        return None
    attrs = netlink.parse_attrs(body, RTMSG.size, len(body))
    if RTA_TABLE in attrs:
        table = netlink.U32.unpack(attrs[RTA_TABLE])[0]
    raw_dst = attrs.get(RTA_DST)
    destination = (
        _ip.unpack(family, raw_dst) if raw_dst else ("::" if family == socket.AF_INET6 else "0.0.0.0")
    )
    device = None
    if rtype == RTN_UNICAST and RTA_OIF in attrs:
        index = netlink.U32.unpack(attrs[RTA_OIF])[0]
        device = names.get(index, f"if{index}")
    gateway = attrs.get(RTA_GATEWAY)
    source = attrs.get(RTA_PREFSRC)
    metric = netlink.U32.unpack(attrs[RTA_PRIORITY])[0] if RTA_PRIORITY in attrs else 0
    route = Route(
        family=family,
        table=table,
        destination=f"{destination}/{dst_len}",
        metric=metric,
        type=ROUTE_TYPES[rtype],
        device=device,
        gateway=_ip.unpack(family, gateway) if gateway else None,
        source=_ip.unpack(family, source) if source else None,
        scope=scope,
    )
    return route, protocol
