"""Routes in vsnet's tables (address tables and mark tables).

Ownership: every route vsnet creates carries its routing protocol number
(``proto vsnet``), and deletes name that protocol, so the kernel itself refuses to
delete a route of another owner even if the plan were wrong.
"""

from __future__ import annotations

import errno
import socket
import struct
from typing import TYPE_CHECKING, Any, ClassVar, Literal, NamedTuple, cast

from vsnetd import netlink
from vsnetd.kinds import _ip
from vsnetd.kinds.kind import Inside, Looking, NamespaceObserver, NetlinkKind, Owners, Request

if TYPE_CHECKING:
    from vsnetd.kernel import Kernel
    from vsnetd.state import DesiredServer, ObservedState, Scope

# family, dst_len, src_len, tos, table, protocol, scope, type, flags
RTMSG = struct.Struct("=BBBBBBBBI")
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_PREFSRC, RTA_TABLE = 1, 4, 5, 6, 7, 15
RT_TABLE_COMPAT, RT_TABLE_MAIN = 252, 254  # the header's 8-bit table field when the real one is in RTA_TABLE
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK = 0, 253
RTN_UNICAST, RTN_UNREACHABLE = 1, 7
# linux/rtnetlink.h, as ip-route(8) names them: vsnet makes unicast and unreachable
# routes; a foreign route of any type in its way must be seen to be reported
ROUTE_TYPES = {0: "unspec", RTN_UNICAST: "unicast", 2: "local", 3: "broadcast", 4: "anycast",
               5: "multicast", 6: "blackhole", RTN_UNREACHABLE: "unreachable", 8: "prohibit",
               9: "throw", 10: "nat", 11: "xresolve"}
ROUTE_TYPE_CODES = {name: code for code, name in ROUTE_TYPES.items()}
IPV6_DEFAULT_METRIC = 1024  # what the kernel stores for an IPv6 route added with metric 0

RouteKey = tuple[str, int, int, str, int]


class Route(NamedTuple):
    family: int
    table: int
    destination: str  # "10.0.0.0/24"; "0.0.0.0/0" and "::/0" are the defaults
    metric: int
    type: str = "unicast"
    device: str | None = None
    gateway: str | None = None
    source: str | None = None
    scope: int = RT_SCOPE_UNIVERSE
    netns: str = ""  # "": the namespace vsnet runs in

    @property
    def kind(self) -> Literal["route"]:
        return "route"

    @property
    def key(self) -> RouteKey:
        """What the kernel itself uses to tell two routes apart."""
        return (self.netns, self.family, self.table, self.destination, self.metric)

    def describe(self) -> str:
        words = [] if self.type == "unicast" else [self.type]
        words.append("default" if self.destination.endswith("/0") else self.destination)
        if self.gateway:
            words.append(f"via {self.gateway}")
        if self.device:
            words.append(f"dev {self.device}")
        if self.source:
            words.append(f"src {self.source}")
        if self.table != RT_TABLE_MAIN:
            words.append(f"table {self.table}")
        if self.netns:
            words.append(f"netns {self.netns}")
        v6 = self.family == socket.AF_INET6
        if self.metric and not (v6 and self.metric == IPV6_DEFAULT_METRIC):
            words.append(f"metric {self.metric}")
        return f"{'route -6' if v6 else 'route'} {' '.join(words)}"

    def as_json(self) -> dict[str, Any]:
        return {"kind": "route", "family": 6 if self.family == socket.AF_INET6 else 4,
                "table": self.table, "destination": self.destination, "metric": self.metric,
                "type": self.type, "device": self.device, "gateway": self.gateway,
                "source": self.source, "netns": self.netns}


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


def decoder(
    names: dict[int, str], protocol: int, tables: range | frozenset[int], netns: str = ""
) -> netlink.Decoder[tuple[Route, bool]]:
    """Decodes an RTM_NEWROUTE/RTM_DELROUTE (dump or notification) into (route, owned):
    routes carrying ``protocol`` (vsnet's own) and foreign ones in ``tables`` or, in a VS
    namespace (``netns``), in its main table (they could collide); None for the rest.
    ``names`` maps the namespace's ifindexes to names."""
    unpack_attr = netlink.ATTR.unpack_from
    unpack_u32 = netlink.U32.unpack_from
    unpack_ip = _ip.unpack

    def decode(data: bytearray, start: int, end: int) -> tuple[Route, bool] | None:
        family, dst_len, src_len, _tos, table, proto, scope, rtype, _fl = RTMSG.unpack_from(
            data, start)
        if src_len or rtype not in ROUTE_TYPES:
            return None
        if family != socket.AF_INET and family != socket.AF_INET6:
            return None  # an AF_UNSPEC dump also holds multicast (RTNL_FAMILY_IPMR...) ones
        owned = proto == protocol
        if (not owned and table != RT_TABLE_COMPAT and table not in tables
                and not (netns and table == RT_TABLE_MAIN)):
            return None  # a foreign route in a table vsnet never uses (main, local...)
        dst = gateway = source = None
        oif = metric = 0
        pos = start + RTMSG.size
        while pos + 4 <= end:
            length, kind = unpack_attr(data, pos)
            if length < 4:
                break
            if kind == RTA_TABLE:
                table = unpack_u32(data, pos + 4)[0]
            elif kind == RTA_DST:
                dst = unpack_ip(family, data[pos + 4 : pos + length])
            elif kind == RTA_GATEWAY:
                gateway = unpack_ip(family, data[pos + 4 : pos + length])
            elif kind == RTA_PREFSRC:
                source = unpack_ip(family, data[pos + 4 : pos + length])
            elif kind == RTA_OIF:
                oif = unpack_u32(data, pos + 4)[0]
            elif kind == RTA_PRIORITY:
                metric = unpack_u32(data, pos + 4)[0]
            pos += (length + 3) & ~3
        if not owned and table not in tables and not (netns and table == RT_TABLE_MAIN):
            return None
        unicast = rtype == RTN_UNICAST
        device = (names.get(oif) or f"if{oif}") if unicast and oif else None
        default = "::" if family == socket.AF_INET6 else "0.0.0.0"
        route = Route(family, table, f"{dst or default}/{dst_len}", metric,
                      ROUTE_TYPES[rtype], device, gateway, source, scope,
                      netns)
        return route, owned

    return decode


def dump_request(family: int, only_table: int | None = None) -> netlink.DumpRequest:
    """The routes of ``family`` (AF_UNSPEC: both), of table ``only_table`` or all."""
    return netlink.DumpRequest(
        netlink.RTM_GETROUTE, RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0),
        netlink.attr_u32(RTA_TABLE, only_table) if only_table is not None else b"")


def observe(
    sock: netlink.RtnlSocket, family: int, names: dict[int, str], protocol: int,
    tables: range | frozenset[int], netns: str = "", only_table: int | None = None,
    memo: netlink.DumpMemo | None = None,
) -> list[tuple[Route, bool]]:
    """Routes of ``family`` (AF_UNSPEC: IPv4 then IPv6, one dump) as (route, owned), see
    :func:`decoder`. Every table is dumped
    (the host's own tables are small next to vsnet's, and foreign routes in vsnet's tables
    must be seen), or only ``only_table``, filtered by the kernel. With ``memo``, decoded
    again only where they changed (devices are named from ``names``: part of the key)."""
    try:
        return sock.dump(dump_request(family, only_table),
                         decoder(names, protocol, tables, netns),
                         None if memo is None else
                         (memo, (protocol, tables, netns, tuple(names.items()))))
    except netlink.NetlinkError as exc:
        if only_table is not None and exc.errno == errno.ENOENT:
            return []  # the kernel drops a table with its last route
        raise


class RouteKind(NetlinkKind[Route]):
    """Routes of vsnet's tables (and of VS namespaces' main tables): vsnet's carry its
    protocol; foreign ones in its table range collide with the VS owning the table."""

    name = "route"
    uses_others = True
    namespace_dumps: ClassVar[tuple[netlink.DumpRequest, ...]] = (dump_request(socket.AF_UNSPEC),)
    notifications: ClassVar[dict[int, bool]] = {netlink.RTM_NEWROUTE: False,
                                                netlink.RTM_DELROUTE: True}

    def observer(self, look: Looking) -> NamespaceObserver[Route]:
        protocol, tables = look.scope.protocol, look.scope.tables

        def routes_in(sock: netlink.RtnlSocket, inside: Inside) -> list[tuple[Route, bool]]:
            # both families in one dump (AF_UNSPEC): a round trip per namespace saved
            return observe(sock, socket.AF_UNSPEC, inside.names, protocol, tables, inside.netns,
                           memo=inside.memo)

        return routes_in

    def notified(self, inside: Inside, gone: bool, data: bytearray, start: int, end: int
                 ) -> tuple[Route, bool] | None:
        scope = inside.scope
        return decoder(inside.names, scope.protocol, scope.tables, inside.netns)(data, start, end)

    def rescan(self, kernel: Kernel, state: ObservedState, scope: Scope,
               names: dict[int, str], servers: list[DesiredServer]) -> None:
        """The tables of these VS, dumped with the kernel's table filter. The routes of
        these tables vsnet knows of are those the VS's objects name (the rest, leftovers
        of an interrupted run, are a full run's to find): forgetting them costs the VS's
        size, not a pass over every VS's objects."""
        tables: set[int] = set()
        name = self.name
        for server in servers:
            for key, obj in server.keyed.items():
                if key[0] == name and not obj.netns:
                    tables.add(cast(Route, obj).table)
                    state.owned.pop(key, None)
        for family in (socket.AF_INET, socket.AF_INET6):
            for table in sorted(tables):
                for found, owned in observe(kernel.root, family, names, scope.protocol,
                                            scope.tables, only_table=table):
                    if owned:
                        state.add(found)

    def owner(self, obj: Route, owners: Owners) -> str | None:
        return owners.of_netns(obj.netns) if obj.netns else owners.of_table(obj.table)

    def uses(self, obj: Route) -> tuple[tuple[str, tuple[str, str]], ...]:
        return (("address", (obj.netns, obj.source)),) if obj.source is not None else ()

    def slot(self, obj: Route) -> tuple[str, int] | RouteKey | None:
        """A table of vsnet's is the VS's whole (any foreign route in it collides); in the
        main table of a VS namespace, shared with the kernel's own routes, a route
        collides with one at its key only; the root namespace's main table is not vsnet's."""
        if obj.table != RT_TABLE_MAIN:
            return (obj.netns, obj.table)
        return obj.key if obj.netns else None

    def conflict(self, found: Route) -> str:
        if found.table == RT_TABLE_MAIN:
            return f"namespace {found.netns} holds a foreign {found.describe()}"
        return f"table {found.table} holds a foreign {found.describe()}"

    def request(self, action: str, obj: Route, protocol: int, links: dict[str, int]
                ) -> Request:
        return request(action, obj, protocol, links)


KIND = RouteKind()
