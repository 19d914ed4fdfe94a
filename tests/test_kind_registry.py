"""The kind registry as the daemon's heal path uses it, without root: notifications keep
the observed state as a dump would see it, and a changed object is traced to the VS it
concerns, each by asking the object's kind (docs/architecture.md, "Kernel object kinds").

Notifications are built with the kinds' own request encoders (a notification carries the
same header and attributes as the request that caused it), as the kernel would send them
for vsnet's objects (its protocol) and for foreign ones (another protocol).
"""

from __future__ import annotations

import socket

from vsnetd import netlink
from vsnetd.compile import compile_config
from vsnetd.config import Config
from vsnetd.diff import Affected
from vsnetd.kinds import Address, Link, Route, Rule, address, link, route
from vsnetd.observe import NotificationFeed
from vsnetd.state import VSNET_PROTOCOL, DesiredState, ObservedState, Scope

STATIC = 4  # RTPROT_STATIC: what `ip route add` tags a route with
SCOPE = Scope(protocol=VSNET_PROTOCOL, tables=range(10000, 20000),
              priorities=range(10000, 30000))
DEVICES = {"eth0": 2, "eth1": 3}


def notify(feed: NotificationFeed, message: int, body: bytes) -> None:
    feed(message, bytearray(body), 0, len(body))


def test_route_notifications_keep_vsnet_s_and_foreign_routes_apart() -> None:
    state = ObservedState(links={"": dict(DEVICES)})
    feed = NotificationFeed(state, SCOPE, "")
    ours = Route(socket.AF_INET, 10016, "10.0.0.0/24", 0, device="eth0", source="10.0.0.5",
                 scope=253)
    theirs = ours._replace(destination="192.0.2.0/24", source=None)
    _add, _flags, our_body = route.request("add", ours, VSNET_PROTOCOL, DEVICES)
    _add, _flags, their_body = route.request("add", theirs, STATIC, DEVICES)

    notify(feed, netlink.RTM_NEWROUTE, our_body)
    notify(feed, netlink.RTM_NEWROUTE, their_body)
    assert state.owned == {("route", ours.key): ours}
    assert state.foreign == {"route": {("", 10016): [theirs]}}  # where it collides: its table
    assert feed.changed == [ours, theirs]

    notify(feed, netlink.RTM_DELROUTE, their_body)
    notify(feed, netlink.RTM_DELROUTE, our_body)
    assert state.owned == {}
    assert state.foreign_of("route") == []
    assert not feed.needs_full  # a route takes nothing with it


def test_an_address_of_vsnet_s_deleted_asks_for_a_full_look() -> None:
    """The kernel flushes the IPv4 routes using an address as ``src`` without a word."""
    state = ObservedState(links={"": dict(DEVICES)})
    feed = NotificationFeed(state, SCOPE, "")
    ours = Address("eth0", "10.0.0.5", 24)
    theirs = Address("eth1", "10.0.0.9", 24)
    _add, _flags, our_body = address.request("add", ours, VSNET_PROTOCOL, DEVICES)
    _add, _flags, their_body = address.request("add", theirs, 0, DEVICES)

    notify(feed, netlink.RTM_NEWADDR, our_body)
    notify(feed, netlink.RTM_NEWADDR, their_body)
    assert state.owned == {("address", ours.key): ours}
    assert state.foreign_addresses == {("", "10.0.0.9"): theirs}
    notify(feed, netlink.RTM_DELADDR, their_body)
    assert not feed.needs_full and state.foreign_addresses == {}
    notify(feed, netlink.RTM_DELADDR, our_body)
    assert feed.needs_full and state.owned == {}


def test_a_device_tagged_by_vsnet_is_no_longer_foreign() -> None:
    """vsnet creates a device, then tags it (the kernel ignores the alias on create): in
    between, its notifications show a foreign device."""
    state = ObservedState(links={"": dict(DEVICES)})
    feed = NotificationFeed(state, SCOPE, "")
    device = Link("", "vs1", "macvlan", "eth0", ifindex=10001)
    _new, _flags, created = link.create_request(device, DEVICES["eth0"], 1)
    tagged = created + netlink.attr(link.IFLA_IFALIAS, link.ALIAS.encode())

    notify(feed, netlink.RTM_NEWLINK, created)
    assert state.foreign == {"link": {("", "vs1"): [Link("", "vs1", "macvlan")]}}
    assert state.links[""]["vs1"] == 10001
    notify(feed, netlink.RTM_NEWLINK, tagged)
    assert state.owned == {("link", ("", "vs1")): device}
    assert state.foreign_of("link") == []


def two_servers() -> DesiredState:
    return compile_config(Config.model_validate({"version": 1, "servers": {
        "a": {"id": 1, "mode": "pbr", "uplink": "eth0",
              "addresses": [{"address": "10.0.0.5/24", "gateway": "10.0.0.1"}]},
        "b": {"id": 2, "mode": "pbr", "uplink": "eth1",
              "addresses": [{"address": "10.0.1.5/24", "gateway": "10.0.1.1"}]}}}))


def test_changed_objects_are_traced_to_the_vs_they_concern() -> None:
    desired = two_servers()
    affected = Affected(desired)
    rule_of_a = next(o for o in desired.servers["a"].objects if isinstance(o, Rule))
    route_of_b = next(o for o in desired.servers["b"].objects if isinstance(o, Route))

    assert affected([rule_of_a]) == {"a"}  # its own object
    # a foreign rule at a priority vsnet wants, whatever it does
    assert affected([rule_of_a._replace(table=254, source="192.0.2.9/32")]) == {"a"}
    # a foreign route in a VS's table; its uplink appearing or going
    assert affected([route_of_b._replace(destination="192.0.2.0/24", source=None)]) == {"b"}
    assert affected([Link("", "eth1", "veth")]) == {"b"}
    # a device and a foreign address no VS stands on or wants
    assert affected([Link("", "eth7", "veth"), Address("eth7", "192.0.2.1", 24)]) == set()
    # a foreign address where a VS wants its own
    assert affected([Address("eth1", "10.0.0.5", 24)]) == {"a"}
