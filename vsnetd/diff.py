"""diff: (DesiredState, ObservedState) -> Plan. Pure.

Level-triggered: the plan is recomputed from the full desired and observed state every
time. Only objects vsnet owns are ever deleted or replaced; a desired object that would
collide with a foreign one makes its VS a *conflict* and that VS gets no changes at all
(a half-built VS could misroute its traffic).

Order: deletes first, rules -> routes -> addresses (a rule never points at a table being
emptied, a route never outlives its ``src`` address); then adds and replaces, addresses ->
routes -> rules (a rule only appears once its table is complete).
"""

from __future__ import annotations

from vsnetd import numbering
from vsnetd.kinds import KernelObject
from vsnetd.state import (
    Change,
    DesiredServer,
    DesiredState,
    ObjectKey,
    ObservedState,
    Plan,
    ServerVerdict,
    object_key,
)

CREATE_ORDER = {"address": 0, "route": 1, "rule": 2}
DELETE_ORDER = {"rule": 0, "route": 1, "address": 2}


def find_conflicts(server: DesiredServer, observed: ObservedState) -> list[str]:
    """Foreign objects standing where this VS wants its own."""
    reasons: list[str] = []
    tables = {obj.table for obj in server.objects if obj.kind == "route"}
    priorities = {(obj.family, obj.priority) for obj in server.objects if obj.kind == "rule"}
    for obj in server.objects:
        if obj.kind == "address":
            foreign = observed.foreign_addresses.get(obj.address)
            if foreign is not None:
                reasons.append(
                    f"address {obj.address} is already on {foreign.device} "
                    f"(not created by vsnet)"
                )
    reasons.extend(
        f"table {route.table} holds a foreign {route.describe()}"
        for route in observed.foreign_routes
        if route.table in tables
    )
    reasons.extend(
        f"priority {rule.priority} is taken by a foreign {rule.describe()}"
        for rule in observed.foreign_rules
        if (rule.family, rule.priority) in priorities
    )
    return reasons


def _owner(obj: KernelObject, desired: DesiredState, by_id: dict[int, str]) -> str | None:
    """The VS an owned object belongs to, from its numbers (it may no longer be desired)."""
    settings = desired.settings
    if obj.kind == "route":
        server_id = numbering.server_id_of_table(settings, obj.table)
    elif obj.kind == "rule":
        server_id = numbering.server_id_of_priority(settings, obj.priority)
    else:
        return None
    return by_id.get(server_id) if server_id is not None else None


def plan_changes(desired: DesiredState, observed: ObservedState) -> Plan:
    verdicts: dict[str, ServerVerdict] = {}
    wanted: dict[ObjectKey, tuple[KernelObject, str]] = {}
    for server in desired.servers.values():
        if server.uplink not in observed.links:
            verdicts[server.name] = ServerVerdict(
                "waiting", (f"uplink {server.uplink} does not exist",)
            )
            continue
        conflicts = find_conflicts(server, observed)
        if conflicts:
            verdicts[server.name] = ServerVerdict("conflict", tuple(conflicts))
            continue
        for obj in server.objects:
            wanted[object_key(obj)] = (obj, server.name)
    held = set(verdicts)  # VS whose objects stay exactly as they are

    by_id = desired.server_by_id()
    address_owner = {
        obj.address: server.name
        for server in desired.servers.values()
        for obj in server.objects
        if obj.kind == "address"
    }
    deletes: list[Change] = []
    for key, obj in observed.owned.items():
        if key in wanted:
            continue
        owner = address_owner.get(obj.address) if obj.kind == "address" else (
            _owner(obj, desired, by_id)
        )
        if owner in held:
            continue
        deletes.append(Change("delete", obj, owner))

    creates: list[Change] = []
    for key, (obj, name) in wanted.items():
        have = observed.owned.get(key)
        if have is None:
            creates.append(Change("add", obj, name))
        elif have != obj:
            creates.append(Change("replace", obj, name))

    deletes.sort(key=lambda c: (DELETE_ORDER[c.obj.kind], c.server or "", object_key(c.obj)))
    creates.sort(key=lambda c: (CREATE_ORDER[c.obj.kind], c.server or "", object_key(c.obj)))
    pending = {c.server for c in deletes} | {c.server for c in creates}
    for name in desired.servers:
        if name not in verdicts:
            verdicts[name] = ServerVerdict("pending" if name in pending else "in-sync")
    return Plan(changes=tuple(deletes + creates), servers=verdicts)
