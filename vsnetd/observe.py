"""observe: kernel -> ObservedState. Reads only; one of the two modules that talk netlink.

What is kept: every object carrying vsnet's protocol (its own, wherever it is), and the
foreign objects that could collide with vsnet's: all foreign addresses, foreign routes in
vsnet's table range, foreign rules in its priority range. Everything else is dropped
while decoding.
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

    for message in address.dump(sock):
        decoded_address = address.decode(message, names)
        if decoded_address is None:
            continue
        found_address, owner = decoded_address
        if owner == protocol:
            state.add(found_address)
        else:
            state.foreign_addresses[found_address.address] = found_address

    for family in (socket.AF_INET, socket.AF_INET6):
        for message in route.dump(sock, family):
            decoded_route = route.decode(message, names)
            if decoded_route is None:
                continue
            found_route, owner = decoded_route
            if owner == protocol:
                state.add(found_route)
            elif found_route.table in scope.tables:
                state.foreign_routes.append(found_route)

        for message in rule.dump(sock, family):
            decoded_rule = rule.decode(message)
            if decoded_rule is None:
                continue
            found_rule, owner = decoded_rule
            if owner == protocol:
                state.add(found_rule)
            elif found_rule.priority in scope.priorities:
                state.foreign_rules.append(found_rule)
    return state
