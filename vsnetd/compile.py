"""compile: Config -> DesiredState. Pure.

For each VS (the paper's Table 1, per address family):

* every address A gets an *address table* with A's connected subnet (``src A``) and, if A
  has a gateway, ``default via <gw> src A``; and a rule ``from A lookup <address table>``;
* the VS gets one *mark table* with every VS subnet (``src`` = the VS's first address of
  that family) and ``default via <VS gateway>``, and a rule ``fwmark <mark> lookup <mark
  table>``. Without a VS gateway of that family the default is ``unreachable``, so marked
  traffic can never fall through to the host's main table and leave the VS;
* extra ``routes`` go into every table of the VS whose subnet contains the next hop.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

from vsnetd import numbering
from vsnetd.config import Config, IpAddress, IpInterface, ServerConfig, Settings
from vsnetd.kinds import Address, KernelObject, Route, Rule
from vsnetd.kinds._ip import normal
from vsnetd.kinds.route import IPV6_DEFAULT_METRIC, RT_SCOPE_LINK, RT_SCOPE_UNIVERSE
from vsnetd.kinds.rule import FULL_MASK
from vsnetd.state import VSNET_PROTOCOL, DesiredServer, DesiredState, Scope


def _family(version: int) -> int:
    return socket.AF_INET6 if version == 6 else socket.AF_INET


def _metric(family: int) -> int:
    # Written as the kernel will report it back, so observed and desired compare equal.
    return IPV6_DEFAULT_METRIC if family == socket.AF_INET6 else 0


def _default(family: int) -> str:
    return "::/0" if family == socket.AF_INET6 else "0.0.0.0/0"


def _network(interface: IpInterface | ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    net = interface.network if isinstance(interface, IpInterface) else interface
    return f"{normal(str(net.network_address))}/{net.prefixlen}"


def _table_routes(
    family: int, table: int, uplink: str, source: str, subnets: Iterable[IpInterface],
    gateway: IpAddress | None, server: ServerConfig,
) -> list[Route]:
    """The routes of one table: connected subnets, the default, reachable extra routes."""
    metric = _metric(family)
    link_scope = RT_SCOPE_LINK if family == socket.AF_INET else RT_SCOPE_UNIVERSE
    routes: dict[str, Route] = {}
    subnets = list(subnets)
    for subnet in subnets:
        destination = _network(subnet)
        routes.setdefault(destination, Route(family, table, destination, metric, device=uplink,
                                             source=source, scope=link_scope))
    default = _default(family)
    if gateway is not None:
        routes[default] = Route(family, table, default, metric, device=uplink,
                                gateway=normal(str(gateway)), source=source)
    for extra in server.routes:
        if any(extra.via.version == s.version and extra.via in s.network for s in subnets):
            destination = _network(extra.to)
            routes.setdefault(destination, Route(family, table, destination, metric,
                                                 device=uplink, gateway=normal(str(extra.via)),
                                                 source=source))
    return list(routes.values())


def compile_server(name: str, server: ServerConfig, settings: Settings) -> DesiredServer:
    numbers = numbering.layout(settings, server.id, server.mark)
    uplink = server.uplink
    objects: list[KernelObject] = []
    by_family: dict[int, list[IpInterface]] = {}

    for index, entry in enumerate(server.addresses):
        family = _family(entry.address.version)
        ip = normal(str(entry.address.ip))
        by_family.setdefault(family, []).append(entry.address)
        table = numbers.address_table(index)
        objects.append(Address(uplink, ip, entry.address.network.prefixlen))
        objects.extend(_table_routes(family, table, uplink, ip, [entry.address], entry.gateway,
                                     server))
        host_length = entry.address.max_prefixlen
        objects.append(Rule(family, numbers.address_priority(index), table,
                            source=f"{ip}/{host_length}"))

    gateways = {_family(gw.version): gw for gw in server.gateway}
    for family, subnets in by_family.items():
        source = normal(str(subnets[0].ip))
        table = numbers.mark_table
        routes = _table_routes(family, table, uplink, source, subnets, gateways.get(family),
                               server)
        if family not in gateways:
            default = _default(family)
            routes.append(Route(family, table, default, _metric(family), type="unreachable"))
        objects.extend(routes)
        objects.append(Rule(family, numbers.mark_priority, table, fwmark=numbers.mark,
                            fwmask=FULL_MASK))

    return DesiredServer(
        name=name,
        id=server.id,
        mode=server.mode,
        uplink=uplink,
        numbers=numbers,
        addresses=tuple(str(entry.address) for entry in server.addresses),
        objects=tuple(objects),
    )


def scope_of(settings: Settings, ids: Iterable[int]) -> Scope:
    """The table and priority ranges the configured VS ids can reach."""
    top = max(ids, default=-1) + 1
    size = settings.block_size
    return Scope(
        protocol=VSNET_PROTOCOL,
        tables=range(settings.table_base, settings.table_base + top * size),
        priorities=range(settings.priority_base, settings.priority_base + top * size),
    )


def compile_config(config: Config) -> DesiredState:
    servers = {
        name: compile_server(name, server, config.settings)
        for name, server in sorted(config.servers.items(), key=lambda item: item[1].id)
    }
    return DesiredState(
        settings=config.settings,
        scope=scope_of(config.settings, (s.id for s in config.servers.values())),
        servers=servers,
    )
