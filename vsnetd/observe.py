"""observe: kernel -> ObservedState. Reads only; one of the two modules that talk netlink.

What is kept: every object carrying vsnet's protocol (its own, wherever it is), and the
foreign objects that could collide with vsnet's: all foreign addresses, foreign routes in
vsnet's table range, foreign rules in its priority range. Everything else is dropped
while decoding, straight from the receive buffer.
"""

from __future__ import annotations

import socket

from vsnetd import netlink
from vsnetd.kinds import address, link, route, rule
from vsnetd.state import ObservedState, Scope


def observe(sock: netlink.RtnlSocket, scope: Scope) -> ObservedState:
    state = ObservedState(links=link.observe_links(sock))
    names = {index: name for name, index in state.links.items()}
    protocol = scope.protocol

    for found_address, owner in address.observe(sock, names):
        if owner == protocol:
            state.add(found_address)
        else:
            state.foreign_addresses[found_address.address] = found_address

    for family in (socket.AF_INET, socket.AF_INET6):
        for found_route, owned in route.observe(sock, family, names, protocol, scope.tables):
            if owned:
                state.add(found_route)
            else:
                state.foreign_routes.append(found_route)
        for found_rule, owned in rule.observe(sock, family, protocol, scope.priorities):
            if owned:
                state.add(found_rule)
            else:
                state.foreign_rules.append(found_rule)
    return state
