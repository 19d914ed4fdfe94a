"""diff: (DesiredState, ObservedState) -> Plan. Pure.

Level-triggered: the plan is recomputed from the full desired and observed state every
time. Only objects vsnet owns are ever deleted or replaced; a desired object that would
collide with a foreign one makes its VS a *conflict* and that VS gets no changes at all
(a half-built VS could misroute its traffic).

Every kind-specific answer comes from the kind registry (vsnetd/kinds/kind.py): where a
foreign object collides, whom an object belongs to, what a change of one takes.

Order: deletes first, in the reverse of the registry's order (a rule never points at a
table being emptied, a route never outlives its ``src`` address, a device goes before its
namespace); then creates and replaces in the registry's order (confinement once the mark
rule is there, sysctls and resolver files last); last the deletes a kind lets wait
(``Kind.deferred_deletes``: the rule tree's paths no VS needs any more, when nothing
created meets them). Within a kind, deletes keep the kernel's order and creates the
config's, unless the kind orders its own (``Kind.order_creates``/``order_deletes``: rules
from the top of the tree down, their deletes gotos first): plans are deterministic.
Objects inside a namespace that goes are not deleted one by one: they go with it.
The rule tree's shared rules are wanted while any VS, even a held one, needs them, and are
owned by no VS (``SHARED``).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from vsnetd import numbering, ruletree
from vsnetd.kinds import KINDS, REGISTRY, KernelObject
from vsnetd.kinds.kind import Kind
from vsnetd.state import (
    SHARED,
    Change,
    DesiredServer,
    DesiredState,
    ObjectKey,
    ObservedState,
    Plan,
    ServerVerdict,
)

CREATE_ORDER = tuple(kind.name for kind in REGISTRY)
DELETE_ORDER = CREATE_ORDER[::-1]

# What the planning loops ask of every object, answered once per kind here
_REBUILDS = frozenset(kind.name for kind in REGISTRY if kind.rebuilds)
_NAMESPACES = frozenset(kind.name for kind in REGISTRY if kind.is_namespace)
_USERS = frozenset(kind.name for kind in REGISTRY if kind.uses_others)


def find_conflicts(server: DesiredServer, observed: ObservedState) -> list[str]:
    """Foreign objects standing where this VS wants its own."""
    foreign = observed.foreign
    reasons: list[str] = []
    if not foreign:
        return reasons
    seen: set[tuple[str, Hashable]] = set()  # a slot many objects share is reported once
    for key, obj in server.keyed.items():
        slots = foreign.get(key[0])
        if not slots:
            continue
        kind = KINDS[key[0]]
        slot = kind.slot(obj)
        if slot is None or slot not in slots or (key[0], slot) in seen:
            continue
        seen.add((key[0], slot))
        reasons.extend(kind.conflict(found) for found in slots[slot])
    return reasons


def _waiting(server: DesiredServer, observed: ObservedState) -> str | None:
    if server.uplink in observed.links.get("", {}):
        return None
    if server.netns and server.uplink in observed.links.get(server.netns, {}):
        return None  # lent to the VS (still, or it is to be handed back for a device on it)
    return f"uplink {server.uplink} does not exist"


class Owners:
    """Which VS an owned object belongs to, even when no VS wants it any more (each kind's
    ``owner`` says which of these it goes by): the VS living in a namespace, the VS
    numbered by a table, the VS whose desired object stands at a slot, the owner of an
    observed object using it (an address by the routes using it as ``src``). The indexes
    over every VS's objects are built on first use only: most plans delete nothing."""

    def __init__(self, desired: DesiredState, observed: ObservedState) -> None:
        self.settings = desired.settings
        self.names = desired.names_by_id()
        self.by_netns: dict[str, str] = dict(desired.former_namespaces)
        for server in desired.servers.values():
            if server.netns:
                self.by_netns.setdefault(server.netns, server.name)
        self._desired = desired
        self._observed = observed
        self._wanting: dict[str, dict[Hashable, str]] = {}
        self._using: dict[tuple[str, Hashable], str] | None = None

    def __call__(self, obj: KernelObject) -> str | None:
        return KINDS[obj.kind].owner(obj, self)

    def of_netns(self, netns: str) -> str | None:
        return self.by_netns.get(netns)

    def of_table(self, table: int) -> str | None:
        server_id = numbering.server_id_of_table(self.settings, table)
        return self.names.get(server_id) if server_id is not None else None

    def wanting(self, kind: str, slot: Hashable) -> str | None:
        index = self._wanting.get(kind)
        if index is None:
            index = self._wanting[kind] = {}
            slot_of = KINDS[kind].slot
            for server in self._desired.servers.values():
                for key, obj in server.keyed.items():
                    if key[0] == kind and (at := slot_of(obj)) is not None:
                        index.setdefault(at, server.name)
        return index.get(slot)

    def using(self, kind: str, slot: Hashable) -> str | None:
        if self._using is None:
            self._using = {}
            for key, obj in self._observed.owned.items():
                if key[0] not in _USERS:
                    continue
                targets = KINDS[key[0]].uses(obj)
                owner = self(obj) if targets else None
                if owner is not None:
                    for target in targets:
                        self._using.setdefault(target, owner)
        return self._using.get((kind, slot))


def _held_paths(desired: DesiredState, observed: ObservedState, held: set[str],
                owner_of: Owners) -> dict[ObjectKey, KernelObject]:
    """The rule tree's rules leading to the rules a held VS has now: its stale rules stay
    as reachable as they were."""
    paths: dict[ObjectKey, KernelObject] = {}
    if held:
        base = desired.settings.priority_base
        for obj in observed.owned.values():
            path = ruletree.leaf_path(obj, base)
            if path and owner_of(obj) in held:
                paths.update(path)
    return paths


def plan_changes(desired: DesiredState, observed: ObservedState) -> Plan:
    verdicts: dict[str, ServerVerdict] = {}
    wanted: dict[ObjectKey, tuple[KernelObject, str]] = {}
    unavailable = observed.unavailable  # kinds the machine lacks: their objects wait
    for server in desired.servers.values():
        waiting = _waiting(server, observed)
        if waiting is not None:
            verdicts[server.name] = ServerVerdict("waiting", (waiting,))
            continue
        conflicts = find_conflicts(server, observed)
        if conflicts:
            verdicts[server.name] = ServerVerdict("conflict", tuple(conflicts))
            continue
        name = server.name
        for key, obj in server.keyed.items():
            if unavailable and key[0] in unavailable:
                continue  # the VS works without; its verdict says what is missing
            wanted.setdefault(key, (obj, name))
    held = set(verdicts)  # VS whose objects stay exactly as they are
    for key, obj in desired.shared.items():
        wanted.setdefault(key, (obj, SHARED))
    owner_of = Owners(desired, observed)
    for key, obj in _held_paths(desired, observed, held, owner_of).items():
        wanted.setdefault(key, (obj, SHARED))
    held_namespaces = {s.netns for s in desired.servers.values() if s.name in held and s.netns}

    deletes: dict[str, list[Change]] = {kind: [] for kind in DELETE_ORDER}
    creates: dict[str, list[Change]] = {kind: [] for kind in CREATE_ORDER}
    owned = observed.owned
    going: set[str] = set()  # namespaces to delete: what is inside goes with them
    for key, obj in owned.items():
        if key[0] in _NAMESPACES and key not in wanted:
            netns = KINDS[key[0]].namespace(obj)
            if netns not in held_namespaces:
                going.add(netns)
    for key, obj in owned.items():
        want = wanted.get(key)
        if want is not None and (key[0] not in _REBUILDS
                                 or not KINDS[key[0]].rebuilt(obj, want[0])):
            continue
        kind = KINDS[key[0]]
        netns = kind.namespace(obj) if kind.is_namespace else obj.netns
        if not kind.deletable or netns in held_namespaces:
            continue  # e.g. sysctls are set, never unset; a held VS keeps its namespace whole
        if obj.netns in going and not kind.outlives(obj):
            continue  # it goes with its namespace (a lent uplink is handed back, files removed)
        owner = owner_of(obj)
        if owner not in held:
            deletes[key[0]].append(Change("delete", obj, owner))

    for key, (obj, name) in wanted.items():
        have = owned.get(key)
        if have is None:
            creates[key[0]].append(Change("add", obj, name))
        elif have != obj:
            kind = KINDS[key[0]]
            if kind.rebuilds and kind.rebuilt(have, obj):
                creates[key[0]].append(Change("add", obj, name))
            elif kind.differs(have, obj):
                creates[key[0]].append(Change("replace", obj, name))

    for kind in REGISTRY:
        kind.order_creates(creates[kind.name])
    changes: list[Change] = []
    late: list[Change] = []
    for kind in reversed(REGISTRY):
        if kind.newest_first:
            deletes[kind.name].reverse()
        kind.order_deletes(deletes[kind.name])
        late.extend(kind.deferred_deletes(deletes[kind.name], creates[kind.name]))
        changes.extend(deletes[kind.name])
    for name in CREATE_ORDER:
        changes.extend(creates[name])
    changes.extend(late)

    pending = {c.server for c in changes}
    for name, server in desired.servers.items():
        if name not in verdicts:
            notes = tuple(f"{KINDS[kind].unavailable_note}: {missing}"
                          for kind, missing in unavailable.items()
                          if any(key[0] == kind for key in server.keyed)) if unavailable else ()
            verdicts[name] = ServerVerdict("pending" if name in pending else "in-sync", notes)
    return Plan(changes=tuple(changes), servers=verdicts)


class Affected:
    """Which VS objects seen changing (own or foreign) may concern: their owners, the VS
    wanting an object at their slot or standing on them (a device that is a VS's uplink),
    the VS their kind attributes them to. Built once per desired state, its indexes by
    slot on first use: a heal must not cost a pass over every VS."""

    def __init__(self, desired: DesiredState) -> None:
        self.names = set(desired.servers)
        self.owner_of = Owners(desired, ObservedState())
        self.by_key: dict[ObjectKey, str] = {}
        for server in desired.servers.values():
            for key in server.keyed:
                self.by_key.setdefault(key, server.name)
            for key in server.shared:  # healing one VS below a shared rule restores it
                self.by_key.setdefault(key, server.name)
        self._desired = desired
        self._by_slot: dict[str, dict[Hashable, set[str]]] = {}

    def _at(self, kind: Kind[Any], slot: Hashable) -> set[str] | None:
        index = self._by_slot.get(kind.name)
        if index is None:
            index = self._by_slot[kind.name] = {}
            for server in self._desired.servers.values():
                for key, obj in server.keyed.items():
                    if key[0] == kind.name and (at := kind.slot(obj)) is not None:
                        index.setdefault(at, set()).add(server.name)
                for at in kind.watched(server):
                    index.setdefault(at, set()).add(server.name)
        return index.get(slot)

    def __call__(self, objects: list[KernelObject]) -> set[str]:
        affected: set[str] = set()
        for obj in objects:
            owner = self.by_key.get((obj.kind, obj.key))
            if owner is not None:
                affected.add(owner)
                continue
            kind = KINDS[obj.kind]
            slot = kind.slot(obj)
            servers = self._at(kind, slot) if slot is not None else None
            if servers:
                affected |= servers  # e.g. a foreign rule where theirs sit, their uplink
                continue
            owner = self.owner_of(obj)
            if owner is not None:
                affected.add(owner)
        return affected & self.names
