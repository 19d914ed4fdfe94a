"""Property tests of compile and diff against a simulated kernel (no root needed).

The simulated kernel applies a Plan the way the real one does for vsnet's purposes:
deletes remove an object by identity, adds and replaces store it.
"""

from __future__ import annotations

import copy
import socket
from typing import Any

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tests.strategies import UPLINKS, examples, kernel_holding, server_specs
from vsnetd.compile import compile_config
from vsnetd.config import Config, check_semantics
from vsnetd.diff import CREATE_ORDER, DELETE_ORDER, plan_changes
from vsnetd.kinds import Address, Namespace, Route, Rule
from vsnetd.state import SHARED, DesiredState, ObservedState, Plan, object_key


@st.composite
def configs(draw: st.DrawFn, max_servers: int = 6) -> Config:
    ids = draw(st.lists(st.integers(1, 300), max_size=max_servers, unique=True))
    servers = {f"vs{i}": draw(server_specs(i)) for i in ids}
    config = Config.model_validate({"version": 1, "servers": servers})
    assume(check_semantics(config) == [])  # VS sharing a namespace may disagree
    return config


def simulate(observed: ObservedState, plan: Plan) -> ObservedState:
    """Apply a plan the way the kernel would, checking that its order is possible."""
    after = copy.deepcopy(observed)
    for change in plan.changes:
        obj = change.obj
        key = object_key(obj)
        inside = "" if isinstance(obj, Namespace) else obj.netns
        assert not inside or ("namespace", (inside,)) in after.owned, (
            f"{change.describe()}: its namespace does not exist (yet, or any more)")
        if change.action == "delete":
            assert key in after.owned, f"deletes only what vsnet owns: {change.describe()}"
            del after.owned[key]
            if isinstance(obj, Namespace):  # everything inside goes with it
                after.owned = {k: o for k, o in after.owned.items()
                               if isinstance(o, Namespace) or o.netns != obj.name}
        else:
            after.owned[key] = obj
    return after


def all_objects(desired: DesiredState) -> dict[Any, Any]:
    return {object_key(o): o for s in desired.servers.values() for o in s.objects} | dict(
        desired.shared)


@given(before=configs(), after=configs())
@settings(max_examples=examples(150), deadline=None)
def test_one_plan_converges_from_any_owned_state(before: Config, after: Config) -> None:
    observed = kernel_holding(compile_config(before))
    desired = compile_config(after)
    plan = plan_changes(desired, observed)
    converged = simulate(observed, plan)
    wanted = all_objects(desired)
    # a sysctl no longer configured keeps its value: it is set, never unset
    kept = {k for k, o in converged.owned.items() if o.kind == "sysctl" and k not in wanted}
    assert {k: o for k, o in converged.owned.items() if k not in kept} == wanted
    second = plan_changes(desired, converged)
    assert not second.changes
    assert all(v.state == "in-sync" for v in second.servers.values())


@given(config=configs())
@settings(max_examples=examples(100), deadline=None)
def test_plan_order_is_creates_after_deletes_in_dependency_order(config: Config) -> None:
    empty = ObservedState(links={"": dict(UPLINKS)})
    plan = plan_changes(compile_config(config), empty)
    kinds = [c.obj.kind for c in plan.changes]
    assert kinds == sorted(kinds, key=list(CREATE_ORDER).index)
    teardown = plan_changes(compile_config(Config(version=1)), simulate(empty, plan))
    kinds = [c.obj.kind for c in teardown.changes]
    assert all(c.action == "delete" for c in teardown.changes)
    assert kinds == sorted(kinds, key=list(DELETE_ORDER).index)
    assert simulate(simulate(empty, plan), teardown).owned == {}


foreign_objects = st.one_of(
    st.builds(Address, st.sampled_from(["eth0", "eth1", "mgmt0"]),
              st.sampled_from(["10.1.0.5", "10.9.9.9", "192.0.2.1"]), st.just(24),
              netns=st.just("")),
    st.builds(Route, st.just(socket.AF_INET), st.integers(10000, 10000 + 16 * 301),
              st.sampled_from(["0.0.0.0/0", "10.1.0.0/24", "198.51.100.0/24"]), st.just(0),
              type=st.just("unicast"), device=st.just("eth0"), gateway=st.none(),
              source=st.none(), scope=st.just(0), netns=st.just("")),
    st.builds(Rule, st.sampled_from([socket.AF_INET, socket.AF_INET6]),
              st.integers(10000, 10000 + 16 * 301), st.integers(1, 20000),
              source=st.none(), fwmark=st.none(), fwmask=st.none(), netns=st.just("")),
)


@given(config=configs(), foreign=st.lists(foreign_objects, max_size=8))
@settings(max_examples=examples(300), deadline=None)
def test_foreign_objects_never_appear_and_block_only_their_server(
    config: Config, foreign: list[Address | Route | Rule]
) -> None:
    observed = ObservedState(links={"": dict(UPLINKS) | {"mgmt0": 4}})
    for obj in foreign:
        observed.add_foreign(obj)
    desired = compile_config(config)
    plan = plan_changes(desired, observed)

    for change in plan.changes:
        assert change.obj not in foreign
        assert change.action == "add"  # nothing owned yet: nothing to delete or replace
    for name, server in desired.servers.items():
        tables = {(o.netns, o.table) for o in server.objects
                  if isinstance(o, Route) and o.table != 254}
        rule_slots = {(o.netns, o.family, o.priority) for o in server.objects
                      if isinstance(o, Rule)}
        addresses = {(o.netns, o.address) for o in server.objects if isinstance(o, Address)}
        collides = any(
            (isinstance(f, Address) and (f.netns, f.address) in addresses)
            or (isinstance(f, Route) and (f.netns, f.table) in tables)
            or (isinstance(f, Rule) and (f.netns, f.family, f.priority) in rule_slots)
            for f in foreign
        )
        mine = [c for c in plan.changes if c.server == name]
        assert plan.servers[name].state == ("conflict" if collides else "pending")
        assert (mine == []) == collides
        if collides:
            assert plan.servers[name].reasons


@given(
    steps=st.lists(
        st.tuples(st.sampled_from(["add", "remove"]), st.integers(1, 40)), min_size=1, max_size=25
    ),
    data=st.data(),
)
@settings(max_examples=examples(100), deadline=None)
def test_numbering_is_stable_under_add_and_remove(
    steps: list[tuple[str, int]], data: st.DataObject
) -> None:
    servers: dict[str, dict[str, Any]] = {}
    compiled: dict[str, Any] = {}
    for action, server_id in steps:
        name = f"vs{server_id}"
        if action == "add" and name not in servers:
            servers[name] = data.draw(server_specs(server_id))
        elif action == "remove":
            servers.pop(name, None)
            compiled.pop(name, None)
        desired = compile_config(Config.model_validate({"version": 1, "servers": servers}))
        for vs_name, server in desired.servers.items():
            before = compiled.setdefault(vs_name, server)
            assert before.numbers == server.numbers
            assert before.objects == server.objects


def test_paper_table_1() -> None:
    """The paper's example compiles to exactly Table 1 (renumbered into vsnet's ranges; the
    rules sit in the rule tree, docs/rule-tree.md)."""
    config = Config.model_validate({"version": 1, "servers": {"nas1": {
        "id": 1, "mode": "pbr", "uplink": "eth0", "gateway": "10.0.1.1",
        "addresses": [{"address": "10.0.0.5/24", "gateway": "10.0.0.1"},
                      {"address": "10.0.1.5/24", "gateway": "10.0.1.1"}]}}})
    objects = compile_config(config).servers["nas1"].objects
    assert [o.describe() for o in objects if isinstance(o, Rule)] == [
        "rule 24884 from 10.0.0.5 lookup 10016",
        "rule 25012 from 10.0.1.5 lookup 10017",
        "rule 30548 from all fwmark 0x5600001 lookup 10031",
    ]
    assert sorted(o.describe() for o in objects if isinstance(o, Route)) == sorted([
        "route 10.0.0.0/24 dev eth0 src 10.0.0.5 table 10016",
        "route default via 10.0.0.1 dev eth0 src 10.0.0.5 table 10016",
        "route 10.0.1.0/24 dev eth0 src 10.0.1.5 table 10017",
        "route default via 10.0.1.1 dev eth0 src 10.0.1.5 table 10017",
        "route 10.0.0.0/24 dev eth0 src 10.0.0.5 table 10031",
        "route 10.0.1.0/24 dev eth0 src 10.0.0.5 table 10031",
        # not the paper's src 10.0.0.5: the address on the VS gateway's subnet (README)
        "route default via 10.0.1.1 dev eth0 src 10.0.1.5 table 10031",
    ])
    assert [o.describe() for o in objects if isinstance(o, Address)] == [
        "address 10.0.0.5/24 dev eth0", "address 10.0.1.5/24 dev eth0"]


def test_marked_traffic_without_gateway_is_unreachable_not_leaked() -> None:
    config = Config.model_validate({"version": 1, "servers": {"a": {
        "id": 3, "mode": "pbr", "uplink": "eth0",
        "addresses": [{"address": "2001:db8::5/64"}]}}})
    routes = [o for o in compile_config(config).servers["a"].objects if isinstance(o, Route)]
    assert "route -6 unreachable default table 10063" in [r.describe() for r in routes]


def test_waiting_server_keeps_its_objects() -> None:
    config = Config.model_validate({"version": 1, "servers": {"a": {
        "id": 1, "mode": "pbr", "uplink": "eth9", "addresses": [{"address": "10.0.0.5/24"}]}}})
    desired = compile_config(config)
    observed = kernel_holding(compile_config(Config.model_validate({"version": 1, "servers": {
        "a": {"id": 1, "mode": "pbr", "uplink": "eth0",
              "addresses": [{"address": "10.0.0.5/24"}]}}})))
    plan = plan_changes(desired, observed)
    assert plan.servers["a"].state == "waiting"
    assert plan.servers["a"].reasons == ("uplink eth9 does not exist",)
    assert plan.changes == ()


def test_a_server_in_conflict_keeps_even_its_stale_objects() -> None:
    """An edited-away address of a VS in conflict stays: deleting it would make the kernel
    drop the VS's routes that use it as ``src`` (a half-built VS). The rule tree keeps the
    way to its stale rules; it may grow the (empty) way to its new address, which routes
    nothing until the VS's own rule is there."""
    old = Config.model_validate({"version": 1, "servers": {"a": {
        "id": 1, "mode": "pbr", "uplink": "eth0",
        "addresses": [{"address": "10.0.0.5/24"}, {"address": "10.0.1.5/24"}]}}})
    new = Config.model_validate({"version": 1, "servers": {"a": {
        "id": 1, "mode": "pbr", "uplink": "eth0",
        "addresses": [{"address": "10.0.0.5/24"}, {"address": "10.0.1.9/24"}]}}})
    observed = kernel_holding(compile_config(old))
    observed.add_foreign(Address("eth1", "10.0.1.9", 24))
    plan = plan_changes(compile_config(new), observed)
    assert plan.servers["a"].state == "conflict"
    assert [c.action for c in plan.changes if c.server != SHARED] == []
    assert all(c.action == "add" and c.obj.action == "goto" for c in plan.changes), plan.changes
    # without the conflict, the stale address is deleted and attributed to its VS
    observed.drop_foreign(Address("eth1", "10.0.1.9", 24))
    deletes = [c for c in plan_changes(compile_config(new), observed).changes
               if c.action == "delete"]
    assert {(c.server, c.obj.describe()) for c in deletes if isinstance(c.obj, Address)} == {
        ("a", "address 10.0.1.5/24 dev eth0")}


@given(before=configs(), after=configs())
@settings(max_examples=examples(100), deadline=None)
def test_compiling_against_the_previous_config_gives_the_same_result(
    before: Config, after: Config
) -> None:
    previous = (before, compile_config(before))
    assert compile_config(after, previous) == compile_config(after)
