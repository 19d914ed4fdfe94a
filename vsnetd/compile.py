"""compile: Config -> DesiredState. Pure.

For each VS (the paper's Table 1, per address family):

* every address A gets an *address table* with A's connected subnet (``src A``) and, if A
  has a gateway, ``default via <gw> src A``; and a rule ``from A lookup <address table>``;
* the VS gets one *mark table* with every VS subnet (``src`` = the VS's first address of
  that family) and ``default via <VS gateway>`` (``src`` = the address on the gateway's
  subnet, unlike the paper), and a rule ``fwmark <mark> lookup <mark table>``. Without a
  VS gateway of that family the default is ``unreachable``, so marked traffic can never
  fall through to the host's main table and leave the VS;
* extra ``routes`` go into every table of the VS whose subnet contains the next hop.

In the root namespace the ``from`` and ``fwmark`` rules sit in the rule tree
(:mod:`vsnetd.ruletree`); each VS also names the tree's shared ``goto`` rules on the way
to its own (``DesiredServer.shared``).
"""

from __future__ import annotations

import ipaddress
import itertools
import operator
import socket
from collections import Counter
from collections.abc import Iterable

from vsnetd import numbering, ruletree
from vsnetd.config import Config, IpAddress, IpInterface, ServerConfig, Settings
from vsnetd.kinds import (
    Address,
    KernelObject,
    Link,
    Namespace,
    ResolverFile,
    Route,
    Rule,
    Sysctl,
    confinement,
    link,
    resolver,
)
from vsnetd.kinds.route import (
    IPV6_DEFAULT_METRIC,
    RT_SCOPE_LINK,
    RT_SCOPE_UNIVERSE,
    RT_TABLE_MAIN,
)
from vsnetd.kinds.rule import FULL_MASK
from vsnetd.state import VSNET_PROTOCOL, DesiredServer, DesiredState, ObjectKey, Scope, keyed


def _family(version: int) -> int:
    return socket.AF_INET6 if version == 6 else socket.AF_INET


def _metric(family: int) -> int:
    # Written as the kernel will report it back, so observed and desired compare equal.
    return IPV6_DEFAULT_METRIC if family == socket.AF_INET6 else 0


def _default(family: int) -> str:
    return "::/0" if family == socket.AF_INET6 else "0.0.0.0/0"


def _text(ip: IpAddress) -> str:
    """An address as observe reads it back (``inet_ntop``'s form; from the packed bytes,
    a fifth of ``str``'s cost, ~10 ms of a 1,000-VS compile)."""
    return socket.inet_ntop(_family(ip.version), ip.packed)


def _network(interface: IpInterface | ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    net = interface.network if isinstance(interface, IpInterface) else interface
    return f"{_text(net.network_address)}/{net.prefixlen}"


def _table_routes(
    family: int, table: int, device: str, source: str | None, subnets: Iterable[IpInterface],
    gateway: IpAddress | None, server: ServerConfig, netns: str = "",
) -> list[Route]:
    """The routes of one table: connected subnets (with a ``source``), the default, and the
    reachable extra routes."""
    metric = _metric(family)
    link_scope = RT_SCOPE_LINK if family == socket.AF_INET else RT_SCOPE_UNIVERSE
    routes: dict[str, Route] = {}
    subnets = list(subnets)
    if source is not None:
        for subnet in subnets:
            destination = _network(subnet)
            routes.setdefault(destination, Route(family, table, destination, metric,
                                                 device=device, source=source,
                                                 scope=link_scope, netns=netns))
    default = _default(family)
    if gateway is not None:
        routes[default] = Route(family, table, default, metric, device=device,
                                gateway=_text(gateway), source=source, netns=netns)
    for extra in server.routes:
        if any(extra.via.version == s.version and extra.via in s.network for s in subnets):
            destination = _network(extra.to)
            routes.setdefault(destination, Route(family, table, destination, metric,
                                                 device=device, gateway=_text(extra.via),
                                                 source=source, netns=netns))
    return list(routes.values())


def _address_tables(
    server: ServerConfig, numbers: numbering.ServerNumbers, device: str, netns: str,
    settings: Settings, shared: dict[ObjectKey, KernelObject] | None,
) -> list[KernelObject]:
    """Per address: the address, its table and its ``from`` rule (reflection). In the root
    namespace (``shared`` given) every address has them, the rule in the rule tree; inside
    a namespace only an address with a gateway of its own, the rule after the others."""
    objects: list[KernelObject] = []
    for index, entry in enumerate(server.addresses):
        family = _family(entry.address.version)
        ip = _text(entry.address.ip)
        objects.append(Address(device, ip, entry.address.network.prefixlen, netns))
        if shared is None and entry.gateway is None:
            continue
        table = numbers.address_table(index)
        objects.extend(_table_routes(family, table, device, ip, [entry.address], entry.gateway,
                                     server, netns))
        if shared is None:
            priority = numbering.namespace_rule_priority(settings, index)
        else:
            priority, path = ruletree.source_leaf(family, settings.priority_base, ip)
            shared.update(path)
        objects.append(Rule(family, priority, table,
                            source=f"{ip}/{entry.address.max_prefixlen}", netns=netns))
    return objects


def _by_family(server: ServerConfig) -> dict[int, list[IpInterface]]:
    by_family: dict[int, list[IpInterface]] = {}
    for entry in server.addresses:
        by_family.setdefault(_family(entry.address.version), []).append(entry.address)
    return by_family


Compiled = tuple[list[KernelObject], str, dict[ObjectKey, KernelObject]]


def compile_pbr(name: str, server: ServerConfig, numbers: numbering.ServerNumbers,
                settings: Settings) -> Compiled:
    """The paper's Table 1 in the root namespace, on the uplink or a VLAN device on it."""
    objects: list[KernelObject] = []
    shared: dict[ObjectKey, KernelObject] = {}
    device = server.uplink
    if server.vlan is not None:
        device = f"{server.uplink}.{server.vlan}"
        objects.append(Link("", device, "vlan", parent=server.uplink, vlan=server.vlan))
    objects.extend(_address_tables(server, numbers, device, "", settings, shared))
    gateways = {_family(gw.version): gw for gw in server.gateway}
    for family, subnets in _by_family(server).items():
        source = _text(subnets[0].ip)
        table = numbers.mark_table
        gateway = gateways.get(family)
        routes = _table_routes(family, table, device, source, subnets, gateway, server)
        # Unlike the paper's Table 1, the default's source is the address whose subnet holds
        # the VS gateway: its own ``from`` rule then keeps a marked unbound connection on
        # that gateway (README, "Confinement").
        routes = [_via_gateway_source(r, subnets, gateway) for r in routes]
        default = _default(family)
        if family not in gateways and all(r.destination != default for r in routes):
            # (an extra route to the default, when the VS has one, is the default instead)
            routes.append(Route(family, table, default, _metric(family), type="unreachable"))
        objects.extend(routes)
        priority, path = ruletree.mark_leaf(family, settings.priority_base, numbers.mark)
        shared.update(path)
        objects.append(Rule(family, priority, table, fwmark=numbers.mark, fwmask=FULL_MASK))
    return objects, device, shared


def _via_gateway_source(route: Route, subnets: list[IpInterface],
                        gateway: IpAddress | None) -> Route:
    """``route`` with the source on the subnet of its gateway, when it is a default. With
    a VS ``gateway`` of its family the default is via it (``_table_routes``): its address
    is at hand, not parsed again from the route's text."""
    if route.gateway is None or not route.destination.endswith("/0"):
        return route
    if gateway is None:  # an extra route to the default
        gateway = ipaddress.ip_address(route.gateway)
    for subnet in subnets:
        if gateway in subnet.network:
            return route._replace(source=_text(subnet.ip))
    return route


def compile_netns(name: str, server: ServerConfig, numbers: numbering.ServerNumbers,
                  settings: Settings) -> Compiled:
    """A namespace of its own (the paper's Figure 2): the VS device inside it, created
    there directly; addresses, the default route, extra routes in its main table; an
    address with a gateway of its own gets a table and rule there too (reflection)."""
    netns = server.namespace_name(name)
    link_type = server.link_type()
    device = server.uplink if link_type == "move" else name
    objects: list[KernelObject] = [
        Namespace(netns),
        Link(netns, "lo", "loopback"),
        Link(netns, device, link_type, parent=server.uplink, vlan=server.vlan,
             ifindex=0 if link_type == "move" else link.IFINDEX_BASE + server.id),
    ]
    objects.extend(_address_tables(server, numbers, device, netns, settings, None))
    gateways = {_family(gw.version): gw for gw in server.gateway}
    for family, subnets in _by_family(server).items():
        objects.extend(_table_routes(family, RT_TABLE_MAIN, device, None, subnets,
                                     gateways.get(family), server, netns))
    objects.extend(Sysctl(netns, key, str(value)) for key, value in sorted(server.sysctl.items()))
    if server.dns is not None:
        content = resolver.render([str(ip) for ip in server.dns.servers], server.dns.search,
                                  server.dns.options)
        objects.append(ResolverFile(netns, content))
    return objects, device, {}


def compile_server(name: str, server: ServerConfig, settings: Settings) -> DesiredServer:
    numbers = numbering.layout(settings, server.id, server.mark)
    build = compile_netns if server.mode == "netns" else compile_pbr
    objects, device, shared = build(name, server, numbers, settings)
    if server.mode == "pbr" and settings.cgroup_root is not None:
        objects.append(confinement.desired(
            name, settings.cgroup_root, settings.bpf_pin_root, numbers.mark,
            tuple(_text(entry.address.ip) for entry in server.addresses)))
    built = tuple(objects)
    return DesiredServer(
        name=name,
        id=server.id,
        mode=server.mode,
        uplink=server.uplink,
        numbers=numbers,
        addresses=tuple(str(entry.address) for entry in server.addresses),
        objects=built,
        keyed=keyed(built),
        netns=server.namespace_name(name),
        device=device,
        moves_uplink=server.mode == "netns" and server.link_type() == "move",
        shared=shared,
    )


def scope_of(settings: Settings, servers: Iterable[DesiredServer]) -> Scope:
    """Where observe looks: the table and priority ranges the configured VS ids reach, and
    the sysctls each namespace is configured with."""
    servers = list(servers)
    top = max((s.id for s in servers), default=-1) + 1
    size = settings.block_size
    sysctls: dict[str, set[str]] = {}
    for server in servers:
        for obj in server.objects:
            if isinstance(obj, Sysctl):
                sysctls.setdefault(obj.netns, set()).add(obj.name)
    return Scope(
        protocol=VSNET_PROTOCOL,
        tables=range(settings.table_base,
                     numbering.table_number(settings.table_base, top * size) if top else
                     settings.table_base),
        priorities=range(settings.priority_base,
                         ruletree.last_priority(settings.priority_base) + 1),
        sysctls={netns: tuple(sorted(names)) for netns, names in sysctls.items()},
        cgroup_root=settings.cgroup_root,
        pin_root=settings.bpf_pin_root,
    )


def compile_config(config: Config, previous: tuple[Config, DesiredState] | None = None
                   ) -> DesiredState:
    """The desired state of ``config``. With the ``previous`` config and its desired state,
    a VS whose config did not change keeps what was compiled for it (the daemon's edits
    touch one VS of a thousand)."""
    reuse: dict[str, DesiredServer] = {}
    if previous is not None and previous[0].settings == config.settings:
        old_config, old_desired = previous
        for name, server in config.servers.items():
            old = old_config.servers.get(name)
            if old is not None and (old is server or old == server) and (
                name in old_desired.servers
            ):
                reuse[name] = old_desired.servers[name]
    servers = {
        name: reuse.get(name) or compile_server(name, server, config.settings)
        for name, server in sorted(config.servers.items(), key=lambda item: item[1].id)
    }
    return DesiredState(
        settings=config.settings,
        scope=scope_of(config.settings, servers.values()),
        servers=servers,
        shared=_union_of_shared(servers.values()),
        shared_users={},  # counted when first asked for
    )


def compile_edit(config: Config, previous: tuple[Config, DesiredState] | None) -> DesiredState:
    """:func:`compile_config` for the daemon's edits: when only pbr VS changed, keeping
    their ids (the numbering, the order by id and the scope stay as they are), only those
    are compiled and placed; anything else is compiled as a whole."""
    if previous is None or previous[0].settings is not config.settings:
        return compile_config(config, previous)
    old_config, old_desired = previous
    if old_config.servers.keys() != config.servers.keys():
        return compile_config(config, previous)
    servers = old_desired.servers
    changed: list[str] = []
    # the entries an edit left are the very same objects, mostly in the same order: the
    # others are found in C (see vsnetd/reconcile.py, changed_servers)
    for name in itertools.compress(config.servers, map(
            operator.is_not, config.servers.values(), old_config.servers.values())):
        server, old = config.servers[name], old_config.servers[name]
        if old is server:
            continue
        if old.id != server.id or old.mode != "pbr" or server.mode != "pbr":
            return compile_config(config, previous)
        if servers is old_desired.servers:
            servers = dict(servers)
        servers[name] = compile_server(name, server, config.settings)
        changed.append(name)
    shared, users = _edited_shared(old_desired, servers, changed)
    return DesiredState(settings=config.settings, scope=old_desired.scope, servers=servers,
                        shared=shared, shared_users=users)


def _edited_shared(old: DesiredState, servers: dict[str, DesiredServer], changed: list[str]
                   ) -> tuple[dict[ObjectKey, KernelObject], dict[ObjectKey, int]]:
    """The rule tree's rules after the ``changed`` VS were compiled again, and how many VS
    need each: the old union, plus their new paths, less what they left that no VS needs
    any more. An edit inside the VS's own groups (the usual one) keeps the tree as it is;
    one that moves an address elsewhere counts the rules it left and took (the counts of
    every VS, made once by the daemon's reader thread after a read: not a pass over every
    VS per edit)."""
    if all(servers[name].shared == old.servers[name].shared for name in changed):
        return old.shared, old.shared_users
    users = dict(count_shared_users(old))
    shared = dict(old.shared)
    for name in changed:
        before, after = old.servers[name].shared, servers[name].shared
        for key in before.keys() - after.keys():
            users[key] -= 1
            if not users[key]:
                del users[key], shared[key]
        for key in after.keys() - before.keys():
            users[key] = users.get(key, 0) + 1
        shared.update(after)
    return shared, users


def count_shared_users(state: DesiredState) -> dict[ObjectKey, int]:
    """:attr:`DesiredState.shared_users`, made when first asked for (~55,000 keys at
    1,000 VS, ~20-40 ms: the daemon's reader thread asks after handing a full read over,
    so that the first edit does not wait for it)."""
    users = state.shared_users
    if not users and state.shared:
        users.update(Counter(itertools.chain.from_iterable(
            server.shared for server in state.servers.values())))
    return users


def _union_of_shared(servers: Iterable[DesiredServer]) -> dict[ObjectKey, KernelObject]:
    shared: dict[ObjectKey, KernelObject] = {}
    for compiled in servers:
        shared.update(compiled.shared)
    return shared
