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

from vsnetd.kernel import ROOT, Kernel
from vsnetd.kinds import (
    Link,
    Namespace,
    Sysctl,
    address,
    link,
    namespace,
    resolver,
    route,
    rule,
    sysctl,
)
from vsnetd.netlink import RtnlSocket
from vsnetd.state import ObservedState, Scope


def observe(kernel: Kernel, scope: Scope) -> ObservedState:
    state = ObservedState()
    owned_namespaces, foreign_namespaces = namespace.observe_namespaces()
    state.foreign_namespaces = set(foreign_namespaces)
    root_names = _observe_in(kernel.root, ROOT, scope, state, {})
    for name in owned_namespaces:
        state.add(Namespace(name))
        try:
            sock = kernel.socket(name)
        except OSError:  # removed meanwhile
            continue
        _observe_in(sock, name, scope, state, root_names)
        keys = scope.sysctls.get(name)
        if keys:
            for key, value in sysctl.read(kernel.netns_fd(name), list(keys)).items():
                state.add(Sysctl(name, key, value))
        found, foreign = resolver.observe(name)
        if found is not None:
            state.add(found)
        if foreign:
            state.foreign_resolvers.add(name)
    return state


def _observe_in(
    sock: RtnlSocket, netns: str, scope: Scope, state: ObservedState, root_names: dict[int, str]
) -> dict[int, str]:
    """Observe one namespace into ``state``; return its ifindex -> name map."""
    devices = link.observe(sock)
    names = {found.ifindex: found.name for found in devices}
    state.links[netns] = {found.name: found.ifindex for found in devices}
    parents = root_names if netns else names
    for found in devices:
        if found.alias == link.ALIAS:
            if found.type in ("vlan", "macvlan"):
                parent = parents.get(found.parent_index, f"if{found.parent_index}")
                state.add(Link(netns, found.name, found.type, parent, found.vlan, found.up,
                               found.ifindex))
            else:  # an uplink lent whole to a VS
                state.add(Link(netns, found.name, "move", found.name, None, found.up, 0))
        elif netns and found.name == "lo":
            state.add(Link(netns, "lo", "loopback", None, None, found.up, 0))
        else:
            state.foreign_links.add((netns, found.name))

    protocol = scope.protocol
    for found_address, owner in address.observe(sock, names, netns):
        if owner == protocol:
            state.add(found_address)
        else:
            state.foreign_addresses[(netns, found_address.address)] = found_address

    for family in (socket.AF_INET, socket.AF_INET6):
        for found_route, owned in route.observe(sock, family, names, protocol, scope.tables,
                                                netns):
            if owned:
                state.add(found_route)
            else:
                state.foreign_routes.append(found_route)
        for found_rule, owned in rule.observe(sock, family, protocol, scope.priorities, netns):
            if owned:
                state.add(found_rule)
            else:
                state.foreign_rules.append(found_rule)
    return names
