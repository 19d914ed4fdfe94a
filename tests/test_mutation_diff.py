"""diff's verdicts, owners and order, case by case (no root): the exact reason each kind
of foreign object gives, who each delete is attributed to, when a device is replaced
rather than edited, and which VS an observed change concerns. Written so that mutants of
vsnetd/diff.py fail (CONTRIBUTING.md, "Mutation testing")."""

from __future__ import annotations

import socket
from typing import Any

from tests.strategies import kernel_holding
from vsnetd.compile import compile_config
from vsnetd.config import Config
from vsnetd.diff import Affected, plan_changes
from vsnetd.kinds import KINDS, Address, Link, Namespace, ResolverFile, Route, Rule, Sysctl
from vsnetd.kinds.confinement import ForeignPins
from vsnetd.state import SHARED, Change, DesiredState, ObservedState, Plan, keyed

ROOT_LINKS = {"eth0": 2, "eth1": 3, "eth2": 4}
PBR = {"id": 1, "mode": "pbr", "uplink": "eth0", "addresses": [{"address": "10.0.0.5/24"}]}
NETNS = {"id": 2, "mode": "netns", "uplink": "eth1", "dns": {"servers": ["192.0.2.53"]},
         "addresses": [{"address": "10.2.0.5/24", "gateway": "10.2.0.1"}]}
MOVE = {"id": 3, "mode": "netns", "uplink": "eth2", "link": "move",
        "addresses": [{"address": "10.3.0.5/24"}]}


def desired_of(servers: dict[str, Any], **settings: Any) -> DesiredState:
    return compile_config(Config.model_validate(
        {"version": 1, "settings": settings, "servers": servers}))


def holding(desired: DesiredState) -> ObservedState:
    """A kernel holding everything ``desired`` wants, all of it vsnet's."""
    return kernel_holding(desired, ROOT_LINKS)


def reasons(plan: Plan) -> dict[str, tuple[str, ...]]:
    return {name: verdict.reasons for name, verdict in plan.servers.items()}


def done(plan: Plan) -> list[tuple[str, str | None, str]]:
    return [(c.action, c.server, c.obj.describe()) for c in plan.changes]


# ------------------------------------------------------------------------ conflicts


def test_each_foreign_object_says_what_stands_in_the_way() -> None:
    desired = desired_of({"a": PBR, "b": NETNS, "c": MOVE})
    observed = ObservedState(links={"": dict(ROOT_LINKS)})
    for obj in (Address("eth2", "10.0.0.5", 24), Namespace("vs-b"), Link("vs-b", "b", "macvlan"),
                Link("vs-c", "lo", "loopback"), Link("vs-c", "eth2", "veth"),
                ResolverFile("vs-b", "")):
        observed.add_foreign(obj)
    plan = plan_changes(desired, observed)
    assert reasons(plan) == {
        "a": ("address 10.0.0.5 is already on eth2 (not created by vsnet)",),
        "b": ("namespace vs-b exists and was not created by vsnet",
              "device b in namespace vs-b exists and was not created by vsnet",
              "/etc/netns/vs-b/resolv.conf was not written by vsnet"),
        "c": (),  # a loopback or a lent uplink is no VS device that could collide
    }
    assert {name: v.state for name, v in plan.servers.items()} == {
        "a": "conflict", "b": "conflict", "c": "pending"}
    assert {c.server for c in plan.changes} == {"c", SHARED}  # a held VS keeps its tree path


def test_a_foreign_vlan_device_in_the_root_namespace_is_named_without_a_namespace() -> None:
    desired = desired_of({"a": PBR | {"vlan": 100}})
    observed = ObservedState(links={"": dict(ROOT_LINKS)})
    observed.add_foreign(Link("", "eth0.100", "vlan", parent="eth0", vlan=100))
    assert reasons(plan_changes(desired, observed)) == {
        "a": ("device eth0.100 exists and was not created by vsnet",)}


def test_a_foreign_route_collides_only_in_a_table_of_the_vs_in_its_namespace() -> None:
    desired = desired_of({"a": PBR, "b": NETNS | {"gateway": "10.2.0.1"}})
    in_a_table = Route(socket.AF_INET, 10016, "192.0.2.0/24", 0, device="eth0")
    observed = ObservedState(links={"": dict(ROOT_LINKS)})
    for route in [
        in_a_table,
        Route(socket.AF_INET, 10048, "192.0.2.0/24", 0, device="eth0"),  # VS 3's block
        Route(socket.AF_INET, 10016, "192.0.2.0/24", 0, device="b", netns="vs-b"),
        # b's namespace has routes in its main table: a foreign one there is no collision
        Route(socket.AF_INET, 254, "198.51.100.0/24", 0, device="b", netns="vs-b"),
    ]:
        observed.add_foreign(route)
    assert reasons(plan_changes(desired, observed)) == {
        "a": ("table 10016 holds a foreign route 192.0.2.0/24 dev eth0 table 10016",),
        "b": ()}


def test_a_foreign_rule_collides_at_the_same_priority_family_and_namespace() -> None:
    desired = desired_of({"a": PBR, "b": NETNS})
    observed = ObservedState(links={"": dict(ROOT_LINKS)})
    for rule in [
        Rule(socket.AF_INET, 24884, 5),
        Rule(socket.AF_INET6, 30548, 5),  # a's mark rule is IPv4 only
        Rule(socket.AF_INET, 10000, 7, netns="vs-b"),
        Rule(socket.AF_INET, 10000, 7, netns="vs-x"),
    ]:
        observed.add_foreign(rule)
    assert reasons(plan_changes(desired, observed)) == {
        "a": ("priority 24884 is taken by a foreign rule 24884 from all lookup 5",),
        "b": ("priority 10000 is taken by a foreign rule 10000 from all lookup 7 netns vs-b",)}


def test_foreign_confinement_gives_its_own_reason() -> None:
    desired = desired_of({"a": PBR, "b": NETNS}, cgroup_root="vsnet")
    observed = ObservedState(links={"": dict(ROOT_LINKS)})
    observed.add_foreign(ForeignPins("a", "cgroup vsnet/a is not vsnet's"))
    observed.add_foreign(ForeignPins("b", "never asked for"))
    assert reasons(plan_changes(desired, observed)) == {
        "a": ("cgroup vsnet/a is not vsnet's",), "b": ()}


# ------------------------------------------------------------------------ waiting


def test_a_vs_waits_for_its_uplink_unless_it_is_lent_to_it() -> None:
    desired = desired_of({"b": NETNS, "c": MOVE})
    # both uplinks sit in the VS's namespaces: lent to them (c's still, b's before it
    # became a macvlan on it: to be handed back), neither is missing
    observed = ObservedState(links={"": {"eth0": 2}, "vs-b": {"eth1": 3}, "vs-c": {"eth2": 4}})
    observed.add(Link("vs-b", "eth1", "move", "eth1"))
    plan = plan_changes(desired, observed)
    assert plan.servers["b"].state == "pending" and plan.servers["c"].state == "pending"
    assert ("delete", Link("vs-b", "eth1", "move", "eth1")) in [
        (c.action, c.obj) for c in plan.changes if c.server == "b"]
    # the uplink nowhere: waiting
    elsewhere = ObservedState(links={"": {"eth0": 2}, "vs-b": {}, "vs-c": {"eth2": 4}})
    assert plan_changes(desired, elsewhere).servers["b"].reasons == ("uplink eth1 does not exist",)
    # nothing seen at all, not even the root namespace's devices
    assert {name: v.reasons for name, v in plan_changes(desired, ObservedState()).servers.items()
            } == {"b": ("uplink eth1 does not exist",), "c": ("uplink eth2 does not exist",)}


# ------------------------------------------------------------------------ owners


def test_leftovers_of_removed_vs_are_attributed_to_their_former_names() -> None:
    before = desired_of({"a": PBR | {"addresses": [{"address": "10.0.0.5/24",
                                                    "gateway": "10.0.0.1"}]}, "b": NETNS})
    empty = desired_of({})._replace(former_names={1: "a"}, former_namespaces={"vs-b": "b"})
    plan = plan_changes(empty, holding(before))
    owners: dict[str, set[str | None]] = {}
    for change in plan.changes:
        assert change.action == "delete"
        owners.setdefault(change.obj.kind, set()).add(change.server)
    # routes and rules by their tables, addresses by the routes using them as src, what is
    # in the namespace with it; the rule tree's rules belong to no VS
    assert owners == {"route": {"a"}, "rule": {"a", SHARED}, "address": {"a"},
                      "namespace": {"b"}, "resolver": {"b"}}
    # b's link, address, routes and rule go with its namespace; its resolver file is removed
    assert [c.obj.kind for c in plan.changes if c.server == "b"] == ["resolver", "namespace"]

    unnamed = plan_changes(desired_of({}), holding(before))
    assert {c.server for c in unnamed.changes if c.obj.kind != "rule"} == {None}
    assert {c.server for c in unnamed.changes if c.obj.kind == "rule"} == {None, SHARED}


def test_a_stale_address_is_attributed_to_the_vs_of_its_namespace() -> None:
    old = desired_of({"c": MOVE})
    new = desired_of({"c": MOVE | {"addresses": [{"address": "10.3.0.9/24"}]}})
    observed = holding(old)
    observed.links["vs-c"] = {"eth2": 4}
    del observed.links[""]["eth2"]
    assert done(plan_changes(new, observed)) == [
        ("delete", "c", "address 10.3.0.5/24 dev eth2 netns vs-c"),
        ("add", "c", "address 10.3.0.9/24 dev eth2 netns vs-c")]


def test_an_address_no_route_uses_belongs_to_no_vs() -> None:
    observed = holding(desired_of({"a": PBR}))
    observed.add(Address("eth0", "10.9.9.9", 24))
    plan = plan_changes(desired_of({"a": PBR}), observed)
    assert done(plan) == [("delete", None, "address 10.9.9.9/24 dev eth0")]
    assert plan.servers["a"].state == "in-sync"


def test_a_held_vs_keeps_a_shared_namespace_whole() -> None:
    """y, in conflict, shares namespace ns1 with x: a stale route in ns1 stays, though the
    namespace's first VS, x, is not held."""
    x = NETNS | {"id": 1, "namespace": "ns1", "dns": None}
    y = NETNS | {"id": 2, "namespace": "ns1", "dns": None, "uplink": "eth2",
                 "addresses": [{"address": "10.4.0.5/24"}]}
    desired = desired_of({"x": x, "y": y})
    observed = holding(desired)
    stale = Route(socket.AF_INET, 254, "198.51.100.0/24", 0, device="y", gateway="10.4.0.1",
                  netns="ns1")
    observed.add(stale)
    at_x = Rule(socket.AF_INET, 10000, 1, netns="ns1")  # at x's rule
    observed.add_foreign(at_x)
    plan = plan_changes(desired, observed)
    assert {n: v.state for n, v in plan.servers.items()} == {"x": "conflict", "y": "in-sync"}
    assert plan.changes == ()
    observed.drop_foreign(at_x)
    observed.add_foreign(Address("eth9", "10.4.0.5", 24, "ns1"))
    plan = plan_changes(desired, observed)
    assert {n: v.state for n, v in plan.servers.items()} == {"x": "in-sync", "y": "conflict"}
    assert plan.changes == ()


def test_addresses_are_deleted_newest_first() -> None:
    two = PBR | {"addresses": [{"address": "10.0.0.5/24"}, {"address": "10.0.0.6/24"},
                               {"address": "10.0.0.7/24"}]}
    plan = plan_changes(desired_of({}), holding(desired_of({"a": two})))
    assert [c.obj.describe() for c in plan.changes if c.obj.kind == "address"] == [
        "address 10.0.0.7/24 dev eth0", "address 10.0.0.6/24 dev eth0",
        "address 10.0.0.5/24 dev eth0"]


def test_an_edit_deletes_the_tree_paths_it_left_after_its_creates() -> None:
    def servers(moved: str) -> dict[str, Any]:
        return {name: PBR | {"id": i, "addresses": [{"address": address}]}
                for i, (name, address) in enumerate(
                    (("a", "10.0.0.5/24"), ("b", moved), ("c", "10.0.0.200/24")), 1)}

    plan = plan_changes(desired_of(servers("10.0.0.6/24")),
                        holding(desired_of(servers("10.0.0.77/24"))))
    kinds = [(c.action, c.server, c.obj.kind) for c in plan.changes]
    last_create = max(i for i, (action, _, _) in enumerate(kinds) if action != "delete")
    tidying = kinds[last_create + 1:]
    assert tidying and all(k == ("delete", SHARED, "rule") for k in tidying)
    assert all(server == "b" for _, server, _ in kinds[:last_create + 1])
    assert kinds[0] == ("delete", "b", "rule") and kinds[last_create] == ("add", "b", "rule")


def test_a_teardown_deletes_the_tree_paths_before_the_leaves() -> None:
    plan = plan_changes(desired_of({}), holding(desired_of({"a": PBR})))
    rules = [c for c in plan.changes if c.obj.kind == "rule"]
    shared = [i for i, c in enumerate(rules) if c.server == SHARED]
    assert shared and shared == list(range(len(shared))) and len(shared) < len(rules)


def test_a_tree_path_a_created_rule_meets_is_deleted_before_the_creates() -> None:
    ipv4 = socket.AF_INET
    creates = [Change("add", Rule.goto(ipv4, 100, 300, "10.0.0.0/24"), "a"),
               Change("add", Rule(ipv4, 300, 1001, "10.0.0.5/32"), "a")]
    kept = [Change("delete", Rule.goto(ipv4, 100, 900), SHARED),  # where a rule is created
            Change("delete", Rule.goto(ipv4, 300, 900), SHARED),  # where a created goto jumps
            Change("delete", Rule.goto(ipv4, 200, 300), SHARED),  # a goto to a created rule
            Change("delete", Rule(ipv4, 250, 1002, "10.0.1.5/32"), "b")]  # a VS's own
    waiting = [Change("delete", Rule.goto(ipv4, 400, 500, "10.9.0.0/16"), SHARED),
               Change("delete", Rule(ipv4, 600, 0, action="nop"), SHARED),
               Change("delete", Rule(ipv4, 100, 0, netns="vs-x", action="goto", target=300),
                      SHARED)]
    deletes = [kept[0], waiting[0], kept[1], waiting[1], kept[2], kept[3], waiting[2]]
    rule_kind = KINDS["rule"]
    assert rule_kind.deferred_deletes(deletes, creates) == waiting
    assert deletes == kept
    alone = list(kept + waiting)
    assert rule_kind.deferred_deletes(alone, []) == [] and alone == kept + waiting
    assert KINDS["address"].deferred_deletes(
        [Change("delete", Address("eth0", "10.0.0.5", 24), "a")], creates) == []


def test_a_conflicting_vs_keeps_its_namespace_whole() -> None:
    old = desired_of({"b": NETNS | {"sysctl": {"net.ipv4.ip_forward": 1}}})
    observed = holding(old)
    observed.add(Route(socket.AF_INET, 254, "198.51.100.0/24", 0, device="b",
                       gateway="10.2.0.1", netns="vs-b"))  # stale: no longer configured
    theirs = Address("b", "10.2.0.5", 24, "vs-b")
    observed.add_foreign(theirs)
    plan = plan_changes(desired_of({"b": NETNS}), observed)
    assert plan.servers["b"].state == "conflict"
    assert plan.changes == ()
    observed.drop_foreign(theirs)
    # without the conflict the stale route goes; the sysctl no longer configured stays set
    assert done(plan_changes(desired_of({"b": NETNS}), observed)) == [
        ("delete", "b", "route 198.51.100.0/24 via 10.2.0.1 dev b netns vs-b")]


# ------------------------------------------------------------------------ changes


def test_a_device_is_edited_in_place_or_replaced_whole() -> None:
    desired = desired_of({"b": NETNS})
    observed = holding(desired)
    device = desired.servers["b"].objects[2]
    assert isinstance(device, Link) and device.type == "macvlan"
    observed.add(device._replace(ifindex=0))  # the ifindex asked for is not part of it
    assert done(plan_changes(desired, observed)) == []
    observed.add(device._replace(up=False))
    assert done(plan_changes(desired, observed)) == [("replace", "b", device.describe())]
    observed.add(device._replace(type="vlan", vlan=7))
    assert done(plan_changes(desired, observed)) == [
        ("delete", "b", device._replace(type="vlan", vlan=7).describe()),
        ("add", "b", device.describe())]


def test_a_changed_route_is_replaced_and_a_missing_one_added() -> None:
    desired = desired_of({"a": PBR})
    observed = holding(desired)
    route = next(o for o in desired.servers["a"].objects if isinstance(o, Route))
    observed.add(route._replace(source="10.0.0.99"))
    plan = plan_changes(desired, observed)
    assert done(plan) == [("replace", "a", route.describe())]
    assert plan.servers["a"].state == "pending"
    del observed.owned[("route", route.key)]
    assert done(plan_changes(desired, observed)) == [("add", "a", route.describe())]


def test_without_confinement_the_vs_is_built_and_says_it_is_not_confined() -> None:
    desired = desired_of({"a": PBR, "b": NETNS}, cgroup_root="vsnet")
    observed = ObservedState(links={"": dict(ROOT_LINKS)},
                             unavailable={"confinement": "no cgroup2 mount"})
    plan = plan_changes(desired, observed)
    assert "confinement" not in {c.obj.kind for c in plan.changes}
    assert {c.server for c in plan.changes} == {"a", "b", SHARED}
    assert plan.servers["a"].reasons == ("not confined: no cgroup2 mount",)
    assert plan.servers["b"].reasons == ()
    # whichever place confinement has among the VS's objects
    objects = (desired.servers["a"].objects[-1], *desired.servers["a"].objects[:-1])
    first = desired.servers["a"]._replace(objects=objects, keyed=keyed(objects))
    reordered = desired._replace(servers={"a": first})
    assert [c.obj for c in plan_changes(reordered, observed).changes if c.server == "a"] == [
        c.obj for c in plan.changes if c.server == "a"]
    with_it = plan_changes(desired, ObservedState(links={"": dict(ROOT_LINKS)}))
    assert [c.obj.kind for c in with_it.changes].count("confinement") == 1
    assert with_it.servers["a"].reasons == ()


def test_an_owned_sysctl_is_never_unset() -> None:
    desired = desired_of({"b": NETNS})
    observed = holding(desired)
    observed.add(Sysctl("vs-b", "net.ipv4.ip_forward", "1"))
    assert done(plan_changes(desired, observed)) == []


def test_a_namespace_that_goes_takes_its_content_but_hands_back_a_lent_uplink() -> None:
    observed = holding(desired_of({"c": MOVE, "b": NETNS}))
    plan = plan_changes(desired_of({"b": NETNS}), observed)
    assert done(plan) == [("delete", None, "link eth2 (the uplink itself) netns vs-c"),
                          ("delete", None, "netns vs-c")]
    observed.add(ResolverFile("vs-c", "nameserver 192.0.2.53\n"))
    assert [c.obj.kind for c in plan_changes(desired_of({"b": NETNS}), observed).changes] == [
        "resolver", "link", "namespace"]


# ------------------------------------------------------------------------ affected


def test_an_observed_change_concerns_its_owner_or_the_vs_it_would_collide_with() -> None:
    desired = desired_of({"a": PBR | {"vlan": 100}, "b": NETNS})
    affected = Affected(desired)
    a_objects = desired.servers["a"].objects
    a_rule = next(o for o in a_objects if isinstance(o, Rule))
    assert affected([a_rule]) == {"a"}
    assert affected([a_rule._replace(table=99)]) == {"a"}  # a foreign rule in a's place
    assert affected([a_rule._replace(family=socket.AF_INET6, table=99)]) == set()
    assert affected([Link("", "eth0", "ether")]) == {"a"}  # a's uplink
    assert affected([Link("vs-b", "b", "macvlan", parent="eth1", up=False)]) == {"b"}
    assert affected([Link("", "eth1", "ether"), Link("", "eth7", "ether")]) == {"b"}
    assert affected([Route(socket.AF_INET, 10020, "192.0.2.0/24", 0)]) == {"a"}  # a's table
    assert affected([Route(socket.AF_INET, 10000 + 16 * 7, "192.0.2.0/24", 0)]) == set()
    for shared in desired.shared.values():  # healing the VS below a shared rule restores it
        assert affected([shared]) == {"a"}, shared
    assert affected([Address("eth9", "192.0.2.1", 24)]) == set()
    assert affected([Address("eth9", "10.0.0.5", 16)]) == {"a"}  # a's address, elsewhere
    b_rule = next(o for o in desired.servers["b"].objects if isinstance(o, Rule))
    assert affected([a_rule, b_rule._replace(table=99)]) == {"a", "b"}
    assert affected([b_rule._replace(table=98)]) == {"b"}
    former = desired._replace(former_names={7: "gone"})
    assert Affected(former)([Route(socket.AF_INET, 10000 + 16 * 7, "0.0.0.0/0", 0)]) == set()


def test_in_a_shared_namespace_a_change_concerns_the_vs_whose_object_it_is() -> None:
    x = NETNS | {"id": 1, "namespace": "ns1", "dns": None}
    y = NETNS | {"id": 2, "namespace": "ns1", "dns": None, "uplink": "eth2",
                 "gateway": "10.4.0.1", "addresses": [{"address": "10.4.0.5/24"}]}
    desired = desired_of({"x": x, "y": y})
    y_default = next(o for o in desired.servers["y"].objects
                     if isinstance(o, Route) and o.table == 254)
    assert Affected(desired)([y_default]) == {"y"}
    assert Affected(desired)([y_default._replace(destination="192.0.2.0/24")]) == {"x"}


def test_an_address_moved_to_another_device_is_deleted_in_the_name_of_the_vs_wanting_it() -> None:
    """Owners.wanting: a delete is attributed to the VS whose desired object stands at
    the deleted one's slot (here: its address, now wanted on the VLAN device)."""
    before = desired_of({"a": PBR, "z": PBR | {"id": 9, "addresses": [
        {"address": "10.0.0.9/24"}]}})
    observed = holding(before)
    after = desired_of({"a": PBR | {"vlan": 100}, "z": PBR | {"id": 9, "addresses": [
        {"address": "10.0.0.9/24"}]}})
    deletes = [(c.server, c.obj.describe()) for c in plan_changes(after, observed).changes
               if c.action == "delete" and c.obj.kind == "address"]
    assert deletes == [("a", "address 10.0.0.5/24 dev eth0")]
