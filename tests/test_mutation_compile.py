"""compile's output object by object for the cases the paper's Table 1 test leaves out
(IPv6, a netns VS with a VLAN, sysctls and a resolver, extra routes, confinement), where
observe looks (the scope), and what an edit reuses. No root. Written so that mutants of
vsnetd/compile.py fail (CONTRIBUTING.md, "Mutation testing")."""

from __future__ import annotations

from collections import Counter
from socket import AF_INET, AF_INET6
from typing import Any

import pytest

from vsnetd import ruletree
from vsnetd.compile import compile_config, compile_edit, count_shared_users
from vsnetd.config import Config
from vsnetd.kinds import Address, Link, Namespace, ResolverFile, Route, Rule, Sysctl
from vsnetd.kinds.rule import FULL_MASK
from vsnetd.reconcile import changed_servers
from vsnetd.state import DesiredServer, DesiredState, ObjectKey

V6 = {"id": 1, "mode": "pbr", "uplink": "eth0", "gateway": ["2001:db8:1::1"],
      "addresses": [{"address": "2001:db8::5/64"},
                    {"address": "2001:db8:1::5/64", "gateway": "2001:db8:1::1"}],
      "routes": [{"to": "2001:db8:ff::/48", "via": "2001:db8:1::fe"},
                 {"to": "::/0", "via": "2001:db8::fe"}]}
VLAN_NETNS = {"id": 2, "mode": "netns", "uplink": "eth1", "vlan": 7, "gateway": "10.2.0.1",
              "addresses": [{"address": "10.2.0.5/24"},
                            {"address": "10.2.1.5/24", "gateway": "10.2.1.1"}],
              "routes": [{"to": "192.168.0.0/16", "via": "10.2.1.254"}],
              "sysctl": {"net.ipv4.b": 1, "net.ipv4.a": "x"},
              "dns": {"servers": ["192.0.2.53"], "search": ["ex.net"], "options": ["ndots:2"]}}
V4 = {"id": 3, "mode": "pbr", "uplink": "eth0", "addresses": [{"address": "10.3.0.5/24"}]}


def config_of(servers: dict[str, Any], **settings: Any) -> Config:
    return Config.model_validate({"version": 1, "settings": settings, "servers": servers})


def test_an_ipv6_pbr_vs_with_extra_routes() -> None:
    """IPv6 metrics and scopes as the kernel reports them; an extra route in every table
    whose subnet holds its next hop; an extra default where the table has none; the mark
    table's default from the address on the VS gateway's subnet."""
    server = compile_config(config_of({"a": V6})).servers["a"]
    v6 = dict(metric=1024, device="eth0")
    leaf_0 = ruletree.source_leaf(AF_INET6, 10000, "2001:db8::5")[0]
    leaf_1 = ruletree.source_leaf(AF_INET6, 10000, "2001:db8:1::5")[0]
    mark_leaf = ruletree.mark_leaf(AF_INET6, 10000, 0x5600001)[0]
    assert server.objects == (
        Address("eth0", "2001:db8::5", 64),
        Route(AF_INET6, 10016, "2001:db8::/64", source="2001:db8::5", **v6),
        Route(AF_INET6, 10016, "::/0", gateway="2001:db8::fe", source="2001:db8::5", **v6),
        Rule(AF_INET6, leaf_0, 10016, source="2001:db8::5/128"),
        Address("eth0", "2001:db8:1::5", 64),
        Route(AF_INET6, 10017, "2001:db8:1::/64", source="2001:db8:1::5", **v6),
        Route(AF_INET6, 10017, "::/0", gateway="2001:db8:1::1", source="2001:db8:1::5", **v6),
        Route(AF_INET6, 10017, "2001:db8:ff::/48", gateway="2001:db8:1::fe",
              source="2001:db8:1::5", **v6),
        Rule(AF_INET6, leaf_1, 10017, source="2001:db8:1::5/128"),
        Route(AF_INET6, 10031, "2001:db8::/64", source="2001:db8::5", **v6),
        Route(AF_INET6, 10031, "2001:db8:1::/64", source="2001:db8::5", **v6),
        Route(AF_INET6, 10031, "::/0", gateway="2001:db8:1::1", source="2001:db8:1::5", **v6),
        Route(AF_INET6, 10031, "2001:db8:ff::/48", gateway="2001:db8:1::fe",
              source="2001:db8::5", **v6),
        Rule(AF_INET6, mark_leaf, 10031, fwmark=0x5600001, fwmask=FULL_MASK),
    )
    assert (server.netns, server.device, server.moves_uplink) == ("", "eth0", False)
    assert server.addresses == ("2001:db8::5/64", "2001:db8:1::5/64")
    assert server.shared == dict(
        ruletree.source_leaf(AF_INET6, 10000, "2001:db8::5")[1]
        | ruletree.source_leaf(AF_INET6, 10000, "2001:db8:1::5")[1]
        | ruletree.mark_leaf(AF_INET6, 10000, 0x5600001)[1])


def test_a_netns_vs_on_a_vlan_with_sysctls_and_a_resolver() -> None:
    """Only the address with a gateway of its own gets a table and a rule, at
    priority_base + its index; the main table holds the VS gateway and the extra routes
    (its connected routes are the kernel's); IPv4 connected routes have link scope."""
    server = compile_config(config_of({"b": VLAN_NETNS}, priority_base=500)).servers["b"]
    v4 = dict(metric=0, device="b", netns="vs-b")
    assert server.objects == (
        Namespace("vs-b"),
        Link("vs-b", "lo", "loopback"),
        Link("vs-b", "b", "vlan", parent="eth1", vlan=7, ifindex=10002),
        Address("b", "10.2.0.5", 24, "vs-b"),
        Address("b", "10.2.1.5", 24, "vs-b"),
        Route(AF_INET, 10033, "10.2.1.0/24", source="10.2.1.5", scope=253, **v4),
        Route(AF_INET, 10033, "0.0.0.0/0", gateway="10.2.1.1", source="10.2.1.5", **v4),
        Route(AF_INET, 10033, "192.168.0.0/16", gateway="10.2.1.254", source="10.2.1.5", **v4),
        Rule(AF_INET, 501, 10033, source="10.2.1.5/32", netns="vs-b"),
        Route(AF_INET, 254, "0.0.0.0/0", gateway="10.2.0.1", **v4),
        Route(AF_INET, 254, "192.168.0.0/16", gateway="10.2.1.254", **v4),
        Sysctl("vs-b", "net.ipv4.a", "x"),
        Sysctl("vs-b", "net.ipv4.b", "1"),
        ResolverFile("vs-b", "nameserver 192.0.2.53\nsearch ex.net\noptions ndots:2\n"),
    )
    assert (server.netns, server.device, server.moves_uplink, server.shared) == (
        "vs-b", "b", False, {})
    assert (server.name, server.id, server.mode, server.uplink) == ("b", 2, "netns", "eth1")


def test_every_reachable_extra_route_once() -> None:
    routes = [{"to": "192.168.0.0/16", "via": "10.2.1.254"},
              {"to": "172.16.0.0/12", "via": "10.2.1.254"},
              {"to": "198.51.100.0/24", "via": "10.9.9.9"}]  # reached from no table
    server = compile_config(config_of({"b": VLAN_NETNS | {"routes": routes}})).servers["b"]
    assert [(r.table, r.destination, r.gateway) for r in server.objects
            if isinstance(r, Route)] == [
        (10033, "10.2.1.0/24", None), (10033, "0.0.0.0/0", "10.2.1.1"),
        (10033, "192.168.0.0/16", "10.2.1.254"), (10033, "172.16.0.0/12", "10.2.1.254"),
        (254, "0.0.0.0/0", "10.2.0.1"), (254, "192.168.0.0/16", "10.2.1.254"),
        (254, "172.16.0.0/12", "10.2.1.254")]


def test_each_family_gets_its_own_default() -> None:
    """A netns VS's IPv6 gateway is the IPv6 default of its main table; a pbr VS without
    an IPv6 gateway has an unreachable IPv6 default in its mark table."""
    dual = {"id": 2, "mode": "netns", "uplink": "eth1", "gateway": ["2001:db8::1", "10.2.0.1"],
            "addresses": [{"address": "10.2.0.5/24"}, {"address": "2001:db8::5/64"}]}
    routes = [o for o in compile_config(config_of({"b": dual})).servers["b"].objects
              if isinstance(o, Route)]
    assert routes == [
        Route(AF_INET, 254, "0.0.0.0/0", 0, device="b", gateway="10.2.0.1", netns="vs-b"),
        Route(AF_INET6, 254, "::/0", 1024, device="b", gateway="2001:db8::1", netns="vs-b")]
    pbr = compile_config(config_of({"a": dual | {"mode": "pbr", "gateway": "10.2.0.1"}}))
    assert Route(AF_INET6, 10047, "::/0", 1024, type="unreachable") in pbr.servers["a"].objects
    assert not any(isinstance(o, Route) and o.type == "unreachable" and o.family == AF_INET
                   for o in pbr.servers["a"].objects)


def test_a_vs_given_its_uplink_whole_and_a_named_namespace() -> None:
    moved = VLAN_NETNS | {"link": "move", "vlan": None, "namespace": "ns1", "sysctl": {},
                          "dns": None, "routes": []}
    server = compile_config(config_of({"b": moved})).servers["b"]
    assert server.objects[:3] == (Namespace("ns1"), Link("ns1", "lo", "loopback"),
                                  Link("ns1", "eth1", "move", parent="eth1"))
    assert (server.netns, server.device, server.moves_uplink) == ("ns1", "eth1", True)


def test_a_pbr_vs_on_a_vlan_is_confined_to_its_mark_and_addresses() -> None:
    desired = compile_config(config_of({"a": V4 | {"vlan": 9, "mark": 0x7000003},
                                        "b": VLAN_NETNS}, cgroup_root="vsnet",
                                       bpf_pin_root="/sys/fs/bpf/x"))
    objects = desired.servers["a"].objects
    assert objects[0] == Link("", "eth0.9", "vlan", parent="eth0", vlan=9)
    assert desired.servers["a"].device == "eth0.9"
    confinement = objects[-1]
    assert confinement.describe() == (
        "confinement a: cgroup vsnet/a, mark 0x7000003, binds 10.3.0.5")
    assert confinement.kind == "confinement"
    assert (confinement.pins, confinement.mark) == ("/sys/fs/bpf/x/a", 0x7000003)
    assert objects[-2] == Rule(AF_INET, ruletree.mark_leaf(AF_INET, 10000, 0x7000003)[0],
                               10063, fwmark=0x7000003, fwmask=FULL_MASK)
    assert not any(o.kind == "confinement" for o in desired.servers["b"].objects)
    unconfined = compile_config(config_of({"a": V4})).servers["a"].objects
    assert not any(o.kind == "confinement" for o in unconfined)


def test_an_extra_default_route_leaves_from_the_address_on_its_subnet() -> None:
    two = V4 | {"addresses": [{"address": "10.3.0.5/24"}, {"address": "10.3.1.5/24"}],
                "routes": [{"to": "0.0.0.0/0", "via": "10.3.1.254"}]}
    objects = compile_config(config_of({"a": two})).servers["a"].objects
    assert Route(AF_INET, 10063, "0.0.0.0/0", 0, device="eth0", gateway="10.3.1.254",
                 source="10.3.1.5") in objects
    assert Route(AF_INET, 10049, "0.0.0.0/0", 0, device="eth0", gateway="10.3.1.254",
                 source="10.3.1.5") in objects  # the address table of 10.3.1.5


def test_an_extra_default_route_replaces_the_unreachable_default() -> None:
    server = compile_config(config_of({"a": V4 | {"routes": [
        {"to": "0.0.0.0/0", "via": "10.3.0.254"}]}})).servers["a"]
    assert len(server.keyed) == len(server.objects)
    defaults = [o for o in server.objects if isinstance(o, Route) and o.table == 10063
                and o.destination == "0.0.0.0/0"]
    assert [(d.type, d.gateway) for d in defaults] == [("unicast", "10.3.0.254")]


def test_the_scope_reaches_the_highest_id_and_the_whole_rule_tree() -> None:
    desired = compile_config(config_of({"a": V4, "b": VLAN_NETNS}, table_base=20000,
                                       priority_base=3000))
    assert desired.scope.tables == range(20000, 20000 + 16 * 4)
    assert desired.scope.priorities == range(3000, ruletree.last_priority(3000) + 1)
    assert desired.scope.sysctls == {"vs-b": ("net.ipv4.a", "net.ipv4.b")}
    assert (desired.scope.protocol, desired.scope.cgroup_root, desired.scope.pin_root) == (
        86, None, "/sys/fs/bpf/vsnet")
    confined = compile_config(config_of({"a": V4}, cgroup_root="vsnet", bpf_pin_root="/x"))
    assert (confined.scope.cgroup_root, confined.scope.pin_root) == ("vsnet", "/x")
    # past the kernel tables' buckets the range follows the numbering
    assert compile_config(config_of({"z": V4 | {"id": 15}})).scope.tables == range(10000, 10259)
    assert compile_config(config_of({})).scope.tables == range(10000, 10000)
    assert list(compile_config(config_of({"a": V4})).servers) == ["a"]
    by_id = compile_config(config_of({"z": V4 | {"id": 1}, "a": V4 | {"id": 2,
                                      "addresses": [{"address": "10.4.0.5/24"}]}}))
    assert list(by_id.servers) == ["z", "a"]


def test_an_unchanged_vs_keeps_what_was_compiled_for_it() -> None:
    before = config_of({"a": V4, "b": VLAN_NETNS})
    previous = (before, compile_config(before))
    after = config_of({"a": V4, "b": VLAN_NETNS | {"gateway": None}})
    desired = compile_config(after, previous)
    assert desired.servers["a"] is previous[1].servers["a"]
    assert desired.servers["b"] is not previous[1].servers["b"]
    assert desired == compile_config(after)
    moved = config_of({"a": V4, "b": VLAN_NETNS}, mark_base=0x100)
    renumbered = compile_config(moved, previous)
    assert renumbered.servers["a"].numbers.mark == 0x103
    assert renumbered == compile_config(moved)
    assert compile_config(before, (before, previous[1]._replace(
        servers={"b": previous[1].servers["b"]}))) == previous[1]


def test_an_edit_of_pbr_vs_keeping_their_ids_compiles_only_them() -> None:
    before = config_of({"a": V4, "b": VLAN_NETNS, "c": V4 | {"id": 4, "addresses": [
        {"address": "10.4.0.5/24"}]}})
    previous = (before, compile_config(before))
    # the daemon's edit: the settings and the other VS are the very objects of before
    edit = config_of({"a": V4 | {"addresses": [{"address": "10.3.0.6/24"}]}}).servers["a"]
    same_group = before._replace(servers=before.servers | {"a": edit})
    edited = compile_edit(same_group, previous)
    assert edited == compile_config(same_group)
    assert edited.scope is previous[1].scope
    assert edited.shared is previous[1].shared  # the edit stays in a's groups of the tree
    assert edited.servers["b"] is previous[1].servers["b"]
    assert edited.servers["c"] is previous[1].servers["c"]
    assert edited.servers["a"] != previous[1].servers["a"]

    elsewhere = same_group._replace(servers=same_group.servers | {
        "a": config_of({"a": V4 | {"addresses": [{"address": "172.16.0.5/24"}]}}).servers["a"]})
    assert compile_edit(elsewhere, previous) == compile_config(elsewhere)


def test_the_vs_an_edit_changed_are_found_in_any_order() -> None:
    c = V4 | {"id": 4, "addresses": [{"address": "10.4.0.5/24"}]}
    before = compile_config(config_of({"a": V4, "b": VLAN_NETNS, "c": c}))
    a, b, c_vs = (before.servers[n] for n in "abc")
    moved = compile_config(config_of({"a": V4 | {"addresses": [{"address": "10.3.0.6/24"}]}}))
    new_a = moved.servers["a"]
    twin = a._replace()  # another object, the same objects: unchanged
    d = c_vs._replace(name="d")

    def changed(servers: dict[str, DesiredServer]) -> set[str]:
        return changed_servers(before, before._replace(servers=servers))

    assert changed({"a": a, "b": b, "c": c_vs}) == set()
    assert changed({"a": twin, "b": b, "c": c_vs}) == set()
    assert changed({"a": new_a, "b": b, "c": c_vs}) == {"a"}
    assert changed({"c": c_vs, "b": b, "a": new_a}) == {"a"}  # out of order
    assert changed({"c": c_vs, "a": a, "b": b}) == set()
    assert changed({"a": a, "b": b, "d": d}) == {"c", "d"}  # as many, not the same names
    assert changed({"d": d, "a": a, "b": b}) == {"c", "d"}
    assert changed({"a": a, "b": b}) == {"c"}
    assert changed({"a": a, "b": b, "c": c_vs, "d": d}) == {"d"}


@pytest.mark.parametrize("change", ["id", "netns", "to-netns", "added", "settings"])
def test_any_other_edit_is_compiled_whole_reusing_the_unchanged_vs(change: str) -> None:
    before = config_of({"a": V4, "b": VLAN_NETNS})
    previous = (before, compile_config(before))
    servers = dict(before.servers)
    settings = before.settings
    unchanged = "b"
    if change == "id":
        servers["a"] = config_of({"a": V4 | {"id": 40}}).servers["a"]
    elif change == "netns":
        servers["b"] = config_of({"b": VLAN_NETNS | {"gateway": None}}).servers["b"]
        unchanged = "a"
    elif change == "to-netns":  # its sysctl widens the scope
        servers["a"] = config_of({"a": V4 | {"mode": "netns", "sysctl": {
            "net.ipv4.ip_forward": 1}}}).servers["a"]
    elif change == "added":
        servers["c"] = config_of({"c": V4 | {"id": 5}}).servers["c"]
    else:
        settings = settings._replace()  # equal, but not the same object
    after = before._replace(settings=settings, servers=servers)
    edited = compile_edit(after, previous)
    assert edited == compile_config(after)
    assert edited.scope is not previous[1].scope
    assert edited.servers[unchanged] is previous[1].servers[unchanged]
    assert compile_edit(after, None) == compile_config(after)


def test_an_edit_keeps_the_count_of_vs_needing_each_shared_rule() -> None:
    """The daemon's edits count the VS needing each rule of the tree (a path goes once
    none does) as a count from scratch would, edit after edit, whatever the order of the
    entries; asking for the counts again counts nothing twice."""
    def from_scratch(state: DesiredState) -> Counter[ObjectKey]:
        return Counter(key for server in state.servers.values() for key in server.shared)

    before = config_of({"a": V4, "c": V4 | {"id": 4, "addresses": [{"address": "10.3.0.6/24"}]}})
    previous = (before, compile_config(before))
    assert count_shared_users(previous[1]) == from_scratch(previous[1])
    assert count_shared_users(previous[1]) == from_scratch(previous[1])  # asked again
    far_a = config_of({"a": V4 | {"addresses": [{"address": "172.16.0.5/24"}]}}).servers["a"]
    far_c = config_of({"c": V4 | {"id": 4, "addresses": [{"address": "172.16.0.6/24"}]}}
                      ).servers["c"]
    near_a = config_of({"a": V4 | {"addresses": [{"address": "10.3.0.7/24"}]}}).servers["a"]
    for name, server in (("a", far_a), ("a", near_a), ("c", far_c)):
        servers = previous[0].servers | {name: server}
        if server is near_a:  # the same names in another order, the changed one last
            servers = {"c": servers["c"], "a": servers["a"]}
        config = previous[0]._replace(servers=servers)
        edited = compile_edit(config, previous)
        assert edited == compile_config(config)
        assert edited.shared_users == from_scratch(edited)  # each edit moves a's or c's path
        previous = (config, edited)
