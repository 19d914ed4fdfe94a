"""observe: kernel -> ObservedState. Reads only; one of the two modules that talk netlink.

What is kept: every object vsnet owns, wherever it is (its protocol on routes, rules and
addresses, its alias on devices, its record on namespaces, its header on resolver
files), and the foreign objects that could collide with them: foreign addresses, foreign
routes in vsnet's table range, foreign rules in its priority range, foreign devices,
namespaces and resolver files. Everything else is dropped while decoding, straight from
the receive buffer.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from typing import Any

from vsnetd import netlink
from vsnetd.kernel import ROOT, Kernel
from vsnetd.kinds import (
    KernelObject,
    Namespace,
    Sysctl,
    address,
    confinement,
    link,
    namespace,
    resolver,
    route,
    rule,
    sysctl,
)
from vsnetd.kinds.route import Route
from vsnetd.kinds.rule import Rule
from vsnetd.netlink import RtnlSocket
from vsnetd.state import DesiredServer, ObservedState, Scope, object_key


def observe(kernel: Kernel, scope: Scope) -> ObservedState:
    state = ObservedState()
    owned_namespaces, foreign_namespaces = namespace.scan()
    state.foreign_namespaces = set(foreign_namespaces)
    root_names = _observe_in(kernel.root, ROOT, scope, state, {})
    sockets = kernel.open_sockets(owned_namespaces)
    with_resolver = resolver.namespaces_with_files()
    for name in owned_namespaces:
        state.add(Namespace(name))
        sock = sockets.get(name)
        if sock is None:  # removed meanwhile
            continue
        _observe_in(sock, name, scope, state, root_names)
        keys = scope.sysctls.get(name)
        if keys:
            for key, value in sysctl.read(kernel.netns_fd(name), list(keys)).items():
                state.add(Sysctl(name, key, value))
        if name not in with_resolver:
            continue
        found, foreign = resolver.observe(name)
        if found is not None:
            state.add(found)
        if foreign:
            state.foreign_resolvers.add(name)
    observe_confinements(scope, state)
    return state


def observe_confinements(scope: Scope, state: ObservedState) -> None:
    """pbr confinement (cgroups, programs, pins; not per network namespace), or what the
    machine lacks for it."""
    if scope.cgroup_root is None:
        return
    state.confinement_unavailable = confinement.unavailable(scope.pin_root)
    if state.confinement_unavailable is not None:
        return
    for found, server, foreign in confinement.observe(scope.cgroup_root, scope.pin_root):
        if found is not None:
            state.add(found)
        if foreign is not None:
            state.foreign_confinements[server] = foreign


def _observe_in(
    sock: RtnlSocket, netns: str, scope: Scope, state: ObservedState, root_names: dict[int, str]
) -> dict[int, str]:
    """Observe one namespace into ``state``; return its ifindex -> name map."""
    devices = link.observe(sock)
    names = {found.ifindex: found.name for found in devices}
    state.links[netns] = {found.name: found.ifindex for found in devices}
    parents = root_names if netns else names
    for found in devices:
        owned_link = link.as_owned(found, netns, parents)
        if owned_link is not None:
            state.add(owned_link)
        else:
            state.foreign_links.add((netns, found.name))

    protocol = scope.protocol
    for found_address, owner in address.observe(sock, names, netns):
        if owner == protocol:
            state.add(found_address)
        else:
            state.foreign_addresses[(netns, found_address.address)] = found_address

    # one dump per kind for both families (AF_UNSPEC): a round trip per namespace saved
    for found_route, owned in route.observe(sock, socket.AF_UNSPEC, names, protocol,
                                            scope.tables, netns):
        if owned:
            state.add(found_route)
        else:
            state.foreign_routes.append(found_route)
    for found_rule, owned in rule.observe(sock, socket.AF_UNSPEC, protocol, scope.priorities,
                                          netns):
        if owned:
            state.add(found_rule)
        else:
            state.foreign_rules.append(found_rule)
    return names


def recheck_confinements(scope: Scope, servers: Iterable[DesiredServer], state: ObservedState,
                         seen: dict[str, tuple[Any, ...]]) -> list[KernelObject]:
    """BPF attachments send no notifications: look at each confined VS again (cheaply:
    ``seen`` keeps what was read last time), update ``state`` where the kernel differs from
    it, and return the objects concerned (the daemon heals their VS)."""
    changed: list[KernelObject] = []
    if scope.cgroup_root is None or state.confinement_unavailable is not None:
        return changed
    mount = confinement.cgroup2_mount()
    for server in servers:
        if server.mode != "pbr":
            continue
        key = ("confinement", (server.name,))
        wanted = server.keyed.get(key)
        if wanted is None:
            continue
        now = confinement.signature(server.name, scope.cgroup_root, scope.pin_root, mount)
        if seen.get(server.name) == now:
            continue
        seen[server.name] = now
        found, foreign = confinement.observe_one(server.name, scope.cgroup_root, scope.pin_root,
                                                 mount)
        if found == state.owned.get(key) and foreign == state.foreign_confinements.get(
                server.name):
            continue
        if found is None:
            state.owned.pop(key, None)
        else:
            state.add(found)
        if foreign is None:
            state.foreign_confinements.pop(server.name, None)
        else:
            state.foreign_confinements[server.name] = foreign
        changed.append(found or wanted)
    return changed


def refresh(kernel: Kernel, state: ObservedState, scope: Scope,
            servers: list[DesiredServer]) -> None:
    """Look again at what these VS own, in place: their namespace whole, or (pbr) the
    tables they use, dumped with the kernel's table filter. For after changes that make
    the kernel drop routes without a word (an address or device removed)."""
    root_names = {index: name for name, index in state.links.get(ROOT, {}).items()}
    for server in servers:
        if server.netns:
            netns = server.netns
            state.owned = {k: o for k, o in state.owned.items()
                           if isinstance(o, Namespace) or o.netns != netns}
            try:
                sock = kernel.socket(netns)
            except OSError:
                state.owned.pop(object_key(Namespace(netns)), None)
                continue
            _observe_in(sock, netns, scope, state, root_names)
            continue
        tables = {obj.table for obj in server.objects if isinstance(obj, Route)}
        # the routes of these tables vsnet knows of are those the VS's objects name (the
        # rest, leftovers of an interrupted run, are a full run's to find): forgetting
        # them costs the VS's size, not a pass over every VS's objects
        for servers_route in servers:
            for key, obj in servers_route.keyed.items():
                if isinstance(obj, Route) and not obj.netns and obj.table in tables:
                    state.owned.pop(key, None)
        for family in (socket.AF_INET, socket.AF_INET6):
            for table in sorted(tables):
                for found_route, owned in route.observe(kernel.root, family, root_names,
                                                        scope.protocol, scope.tables,
                                                        only_table=table):
                    if owned:
                        state.add(found_route)


class NotificationFeed:
    """Keeps an ObservedState current from the netlink notifications of one namespace.

    Each notification updates the state the way a dump would have seen it, and the objects
    it concerned are collected in ``changed`` (the daemon converges the VS they belong to).
    Notifications vsnet's own changes cause update the state to what it already holds.
    IPv4 routes flushed with a deleted address or device come without notifications of
    their own: such deletions set ``needs_full`` (look at everything again).
    """

    def __init__(self, state: ObservedState, scope: Scope, netns: str) -> None:
        self.state = state
        self.scope = scope
        self.netns = netns
        self.changed: list[KernelObject] = []
        self.needs_full = False

    def _names(self, netns: str) -> dict[int, str]:
        return {index: name for name, index in self.state.links.get(netns, {}).items()}

    def __call__(self, kind: int, data: bytearray, start: int, end: int) -> None:
        netns, state = self.netns, self.state
        gone = kind in (netlink.RTM_DELLINK, netlink.RTM_DELADDR, netlink.RTM_DELROUTE,
                        netlink.RTM_DELRULE)
        if kind in (netlink.RTM_NEWLINK, netlink.RTM_DELLINK):
            found_link = link.decode(data, start, end)
            if found_link is None:
                return
            names = state.links.setdefault(netns, {})
            for name, index in list(names.items()):
                if index == found_link.ifindex:
                    del names[name]  # renamed or gone
            owned_link = link.as_owned(found_link, netns, self._names(ROOT))
            key = ("link", (netns, found_link.name))
            if gone:
                if state.owned.pop(key, None) is not None:
                    self.needs_full = True
                state.foreign_links.discard((netns, found_link.name))
            else:
                names[found_link.name] = found_link.ifindex
                if owned_link is not None:
                    state.owned[key] = owned_link
                    state.foreign_links.discard((netns, found_link.name))  # tagged just now
                else:
                    state.foreign_links.add((netns, found_link.name))
            self.changed.append(owned_link or link.Link(netns, found_link.name, found_link.type))
        elif kind in (netlink.RTM_NEWADDR, netlink.RTM_DELADDR):
            decoded = address.decoder(self._names(netns), netns)(data, start, end)
            if decoded is None:
                return
            found_address, owner = decoded
            if owner == self.scope.protocol:
                if gone:
                    if state.owned.pop(object_key(found_address), None) is not None:
                        self.needs_full = True  # its src routes went without a word
                else:
                    state.add(found_address)
            elif gone:
                state.foreign_addresses.pop((netns, found_address.address), None)
            else:
                state.foreign_addresses[(netns, found_address.address)] = found_address
            self.changed.append(found_address)
        elif kind in (netlink.RTM_NEWROUTE, netlink.RTM_DELROUTE):
            route_decode = route.decoder(self._names(netns), self.scope.protocol,
                                         self.scope.tables, netns)
            decoded_route = route_decode(data, start, end)
            if decoded_route is None:
                return
            found_route, owned = decoded_route
            self._update(found_route, owned, gone, state.foreign_routes)
        elif kind in (netlink.RTM_NEWRULE, netlink.RTM_DELRULE):
            decoded_rule = rule.decoder(self.scope.protocol, self.scope.priorities, netns)(
                data, start, end)
            if decoded_rule is None:
                return
            found_rule, owned = decoded_rule
            self._update(found_rule, owned, gone, state.foreign_rules)

    def _update(self, obj: Route | Rule, owned: bool, gone: bool, foreign: list[Any]) -> None:
        if owned:
            if gone:
                self.state.owned.pop(object_key(obj), None)
            else:
                self.state.add(obj)
        elif gone:
            if obj in foreign:
                foreign.remove(obj)
        elif obj not in foreign:
            foreign.append(obj)
        self.changed.append(obj)
