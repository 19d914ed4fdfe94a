"""diff: (DesiredState, ObservedState) -> Plan. Pure.

Level-triggered: the plan is recomputed from the full desired and observed state every
time. Only objects vsnet owns are ever deleted or replaced; a desired object that would
collide with a foreign one makes its VS a *conflict* and that VS gets no changes at all
(a half-built VS could misroute its traffic).

Order: deletes first, confinement -> resolver files -> rules -> routes -> addresses ->
links -> namespaces (a rule never points at a table being emptied, a route never outlives
its ``src`` address, a device goes before its namespace); then creates and replaces in the
opposite order (confinement once the mark rule is there), sysctls and resolver files
last. Within a kind, deletes keep the kernel's order and creates the config's: plans are
deterministic without sorting.
Objects inside a namespace that goes are not deleted one by one: they go with it.
The rule tree's shared rules are wanted while any VS, even a held one, needs them, and are
owned by no VS (``SHARED``).
"""

from __future__ import annotations

from vsnetd import numbering, ruletree
from vsnetd.kinds import (
    Address,
    Confinement,
    KernelObject,
    Link,
    Namespace,
    ResolverFile,
    Route,
    Rule,
)
from vsnetd.kinds import rule as rule_kind
from vsnetd.state import (
    SHARED,
    Change,
    DesiredServer,
    DesiredState,
    ObjectKey,
    ObservedState,
    Plan,
    ServerVerdict,
    object_key,
)

CREATE_ORDER = ("namespace", "link", "address", "route", "rule", "confinement", "sysctl",
                "resolver")
DELETE_ORDER = ("confinement", "resolver", "rule", "route", "address", "link", "namespace")


def find_conflicts(server: DesiredServer, observed: ObservedState) -> list[str]:
    """Foreign objects standing where this VS wants its own."""
    reasons: list[str] = []
    for obj in server.objects:
        if isinstance(obj, Address):
            foreign = observed.foreign_addresses.get((obj.netns, obj.address))
            if foreign is not None:
                reasons.append(f"address {obj.address} is already on {foreign.device} "
                               f"(not created by vsnet)")
        elif isinstance(obj, Namespace) and obj.name in observed.foreign_namespaces:
            reasons.append(f"namespace {obj.name} exists and was not created by vsnet")
        elif isinstance(obj, Link) and obj.type in ("vlan", "macvlan") and (
            (obj.netns, obj.name) in observed.foreign_links
        ):
            where = f" in namespace {obj.netns}" if obj.netns else ""
            reasons.append(f"device {obj.name}{where} exists and was not created by vsnet")
        elif isinstance(obj, ResolverFile) and obj.netns in observed.foreign_resolvers:
            reasons.append(f"/etc/netns/{obj.netns}/resolv.conf was not written by vsnet")
        elif isinstance(obj, Confinement) and obj.server in observed.foreign_confinements:
            reasons.append(observed.foreign_confinements[obj.server])
    if observed.foreign_routes:
        tables = {(obj.netns, obj.table) for obj in server.objects if isinstance(obj, Route)}
        reasons.extend(
            f"table {route.table} holds a foreign {route.describe()}"
            for route in observed.foreign_routes
            if (route.netns, route.table) in tables and route.table != 254
        )
    if observed.foreign_rules:
        slots = {(obj.netns, obj.family, obj.priority)
                 for obj in server.objects if isinstance(obj, Rule)}
        reasons.extend(
            f"priority {rule.priority} is taken by a foreign {rule.describe()}"
            for rule in observed.foreign_rules
            if (rule.netns, rule.family, rule.priority) in slots
        )
    return reasons


def _waiting(server: DesiredServer, observed: ObservedState) -> str | None:
    if server.uplink in observed.links.get("", {}):
        return None
    if server.moves_uplink and server.uplink in observed.links.get(server.netns, {}):
        return None  # already lent to the VS
    return f"uplink {server.uplink} does not exist"


class _Owners:
    """Which VS an owned object belongs to, even when no VS wants it any more: routes and
    ``lookup`` rules of the root namespace by their tables, addresses by the routes that
    use them as ``src``, objects in a namespace by the VS living there; the rule tree's
    ``goto`` and ``nop`` rules to no VS."""

    def __init__(self, desired: DesiredState, observed: ObservedState) -> None:
        self.settings = desired.settings
        self.names = desired.names_by_id()
        self.by_address: dict[tuple[str, str], str] = {}
        self.by_netns: dict[str, str] = dict(desired.former_namespaces)
        for server in desired.servers.values():
            if server.netns:
                self.by_netns.setdefault(server.netns, server.name)
            for obj in server.objects:
                if isinstance(obj, Address):
                    self.by_address[(obj.netns, obj.address)] = server.name
        self._by_source: dict[tuple[str, str], str] | None = None
        self._observed = observed

    def __call__(self, obj: KernelObject) -> str | None:
        if isinstance(obj, Namespace):
            return self.by_netns.get(obj.name)
        if isinstance(obj, Confinement):
            return obj.server
        if obj.netns and not isinstance(obj, Address):
            return self.by_netns.get(obj.netns)
        if isinstance(obj, Rule) and obj.action != "lookup":
            return SHARED
        if isinstance(obj, Route | Rule):
            server_id = numbering.server_id_of_table(self.settings, obj.table)
        elif isinstance(obj, Address):
            slot = (obj.netns, obj.address)
            return self.by_address.get(slot) or self.by_source().get(slot) or (
                self.by_netns.get(obj.netns) if obj.netns else None)
        else:
            return None
        return self.names.get(server_id) if server_id is not None else None

    def by_source(self) -> dict[tuple[str, str], str]:
        if self._by_source is None:
            self._by_source = {}
            for obj in self._observed.owned.values():
                if isinstance(obj, Route) and obj.source is not None:
                    owner = self(obj)
                    if owner is not None:
                        self._by_source.setdefault((obj.netns, obj.source), owner)
        return self._by_source


def _recreated(have: KernelObject, want: KernelObject) -> bool:
    """A device whose type, parent or VLAN changed cannot be edited: delete, then create."""
    return isinstance(have, Link) and isinstance(want, Link) and not want.same_device(have)


def _differs(have: KernelObject, want: KernelObject) -> bool:
    if isinstance(have, Link) and isinstance(want, Link):
        # the ifindex vsnet asked for is not part of what a device is
        return not want.same_device(have) or want.up != have.up
    return have != want


def _held_paths(desired: DesiredState, observed: ObservedState, held: set[str]
                ) -> dict[ObjectKey, KernelObject]:
    """The rule tree's rules leading to the rules a held VS has now: its stale rules stay
    as reachable as they were."""
    paths: dict[ObjectKey, KernelObject] = {}
    if held:
        owner_of = _Owners(desired, observed)
        base = desired.settings.priority_base
        for obj in observed.owned.values():
            path = ruletree.leaf_path(obj, base)
            if path and owner_of(obj) in held:
                paths.update(path)
    return paths


def plan_changes(desired: DesiredState, observed: ObservedState) -> Plan:
    verdicts: dict[str, ServerVerdict] = {}
    wanted: dict[ObjectKey, tuple[KernelObject, str]] = {}
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
            if observed.confinement_unavailable and obj.kind == "confinement":
                continue  # the VS works without; its verdict says what is missing
            wanted.setdefault(key, (obj, name))
    held = set(verdicts)  # VS whose objects stay exactly as they are
    for key, obj in desired.shared.items():
        wanted.setdefault(key, (obj, SHARED))
    for key, obj in _held_paths(desired, observed, held).items():
        wanted.setdefault(key, (obj, SHARED))
    held_namespaces = {s.netns for s in desired.servers.values() if s.name in held and s.netns}

    owner_of = _Owners(desired, observed)
    deletes: dict[str, list[Change]] = {kind: [] for kind in DELETE_ORDER}
    creates: dict[str, list[Change]] = {kind: [] for kind in CREATE_ORDER}
    going: set[str] = set()  # namespaces to delete: what is inside goes with them
    for key, obj in observed.owned.items():
        if isinstance(obj, Namespace) and key not in wanted and obj.name not in held_namespaces:
            going.add(obj.name)
    for key, obj in observed.owned.items():
        want = wanted.get(key)
        if want is not None and not _recreated(obj, want[0]):
            continue
        netns = obj.name if isinstance(obj, Namespace) else obj.netns
        if obj.kind == "sysctl" or netns in held_namespaces:
            continue  # sysctls are set, never unset; a held VS keeps its namespace whole
        inside_going = obj.netns in going and not isinstance(obj, Namespace)
        if inside_going and not (
            (isinstance(obj, Link) and obj.type == "move") or isinstance(obj, ResolverFile)
        ):
            continue  # a lent uplink is handed back and files removed; the rest goes with it
        owner = owner_of(obj)
        if owner not in held:
            deletes[obj.kind].append(Change("delete", obj, owner))

    owned = observed.owned
    for key, (obj, name) in wanted.items():
        have = owned.get(key)
        if have is None or _recreated(have, obj):
            creates[obj.kind].append(Change("add", obj, name))
        elif _differs(have, obj):
            creates[obj.kind].append(Change("replace", obj, name))

    # Rules go from the highest priority down: the kernel inserts a rule after every rule
    # of lower or equal priority, and resolves a goto against the rules present (else it
    # walks the whole list again on each later insert); top-down, each insert is near the
    # head of the list and every goto finds its target (docs/rule-tree.md, "Applying").
    creates["rule"].sort(key=lambda change: rule_kind.creation_order(change.obj))
    # Addresses go newest first, as the kernel lists them reversed: secondaries before
    # their primary, so no deletion makes the kernel promote (and re-route) another one.
    deletes["address"].reverse()
    changes: list[Change] = []
    for kind in DELETE_ORDER:
        changes.extend(deletes[kind])
    for kind in CREATE_ORDER:
        changes.extend(creates[kind])

    pending = {c.server for c in changes}
    missing = observed.confinement_unavailable
    for name, server in desired.servers.items():
        if name not in verdicts:
            notes = (f"not confined: {missing}",) if missing and any(
                obj.kind == "confinement" for obj in server.objects) else ()
            verdicts[name] = ServerVerdict("pending" if name in pending else "in-sync", notes)
    return Plan(changes=tuple(changes), servers=verdicts)


class Affected:
    """Which VS objects seen changing (own or foreign) may concern: their owners, the VS
    whose device or uplink a device is, the VS a foreign object would collide with.
    Built once per desired state: a heal must not cost a pass over every VS."""

    def __init__(self, desired: DesiredState) -> None:
        self.names = set(desired.servers)
        self.owner_of = _Owners(desired, ObservedState())
        self.by_key: dict[ObjectKey, str] = {}
        self.by_device: dict[tuple[str, str], set[str]] = {}
        self.by_rule_slot: dict[tuple[str, int, int], set[str]] = {}  # foreign rules collide
        for server in desired.servers.values():
            for key, obj in server.keyed.items():
                self.by_key.setdefault(key, server.name)
                if isinstance(obj, Rule):
                    slot = (obj.netns, obj.family, obj.priority)
                    self.by_rule_slot.setdefault(slot, set()).add(server.name)
            for key in server.shared:  # healing one VS below a shared rule restores it
                self.by_key.setdefault(key, server.name)
            self.by_device.setdefault(("", server.uplink), set()).add(server.name)
            self.by_device.setdefault((server.netns, server.device), set()).add(server.name)

    def __call__(self, objects: list[KernelObject]) -> set[str]:
        affected: set[str] = set()
        for obj in objects:
            owner = self.by_key.get(object_key(obj))
            if owner is not None:
                affected.add(owner)
            elif isinstance(obj, Link):
                affected |= self.by_device.get((obj.netns, obj.name), set())
            elif isinstance(obj, Rule) and (
                slot := (obj.netns, obj.family, obj.priority)) in self.by_rule_slot:
                affected |= self.by_rule_slot[slot]  # a foreign rule where theirs sit
            else:
                owner = self.owner_of(obj)
                if owner is not None:
                    affected.add(owner)
        return affected & self.names
