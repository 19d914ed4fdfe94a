"""The data that flows through the pipeline: desired state, observed state, plans.

All plain, immutable-by-convention data: compile and diff produce and consume it
without touching the kernel.
"""

from __future__ import annotations

from typing import Any, Literal

from msgspec import Struct, field

from vsnetd.config import Settings
from vsnetd.kinds import KINDS, KernelObject
from vsnetd.kinds.kind import SHARED as SHARED  # the owner of the rule tree's shared rules
from vsnetd.kinds.kind import Slot
from vsnetd.numbering import ServerNumbers

# The routing protocol number on every route and rule vsnet creates (and IFA_PROTO on its
# addresses): ``proto vsnet`` once packaging/rt_protos.d/vsnet.conf is installed.
# 86 is 'V', unassigned in linux/rtnetlink.h and in iproute2's rt_protos.
VSNET_PROTOCOL = 86

ObjectKey = tuple[str, tuple[Any, ...]]


def object_key(obj: KernelObject) -> ObjectKey:
    """Identity of an object across kinds: (kind, the kind's own key)."""
    return (obj.kind, obj.key)


class Scope(Struct, frozen=True):
    """Where vsnet looks for foreign objects that would collide with its own."""

    protocol: int = VSNET_PROTOCOL
    tables: range = range(0)
    priorities: range = range(0)
    sysctls: dict[str, tuple[str, ...]] = field(default_factory=dict)  # by namespace
    cgroup_root: str | None = None  # pbr confinement (settings.cgroup_root); None: off
    pin_root: str = ""


class DesiredServer(Struct, frozen=True):
    name: str
    id: int
    mode: str
    uplink: str
    numbers: ServerNumbers
    addresses: tuple[str, ...]
    objects: tuple[KernelObject, ...]
    netns: str = ""  # the VS's namespace; "" for pbr (the namespace vsnet runs in)
    device: str = ""  # the device carrying its addresses
    moves_uplink: bool = False  # netns with link: move
    keyed: dict[ObjectKey, KernelObject] = field(default_factory=dict)  # objects by identity
    # shared objects it needs (the rule tree's rules on the way to its own rules)
    shared: dict[ObjectKey, KernelObject] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.keyed:
            self.keyed.update((object_key(obj), obj) for obj in self.objects)


class DesiredState(Struct, frozen=True):
    settings: Settings
    scope: Scope
    servers: dict[str, DesiredServer]
    shared: dict[ObjectKey, KernelObject] = field(default_factory=dict)  # every VS's, once
    # Names of VS ids that are not desired but whose leftovers may still be in the kernel
    # (a teardown knows the config it tears down): deletes are attributed to them.
    former_names: dict[int, str] = field(default_factory=dict)
    former_namespaces: dict[str, str] = field(default_factory=dict)  # namespace -> VS name
    # how many VS need each shared object (compile.count_shared_users fills it, the
    # daemon's reader thread after a read): an edit then finds what no VS needs any more
    # without a pass over every VS
    shared_users: dict[ObjectKey, int] = field(default_factory=dict)

    def __eq__(self, other: object) -> bool:  # shared_users follows from the rest
        return type(other) is DesiredState and all(
            getattr(self, name) == getattr(other, name) for name in _DESIRED_COMPARED)

    def names_by_id(self) -> dict[int, str]:
        return self.former_names | {server.id: server.name for server in self.servers.values()}


_DESIRED_COMPARED = tuple(name for name in DesiredState.__struct_fields__
                          if name != "shared_users")


class ObservedState(Struct):
    """What the kernel holds: vsnet's own objects, and foreign ones that could collide.

    Namespaces are named as in the config; "" is the namespace vsnet runs in. Foreign
    objects are kept by kind and by the slot where they would collide with one of vsnet's
    (``Kind.slot`` of vsnetd/kinds/kind.py): a VS wanting an object there is a conflict.
    """

    links: dict[str, dict[str, int]] = field(default_factory=dict)  # netns -> name -> ifindex
    owned: dict[ObjectKey, KernelObject] = field(default_factory=dict)
    foreign: dict[str, dict[Slot, list[Any]]] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)  # kind -> what the machine lacks

    def add(self, obj: KernelObject) -> None:
        self.owned[(obj.kind, obj.key)] = obj

    def add_foreign(self, obj: Any) -> None:
        """A foreign object (of a kind that says where it collides; others are dropped)."""
        slot = KINDS[obj.kind].slot(obj)
        if slot is None:
            return
        there = self.foreign.setdefault(obj.kind, {}).setdefault(slot, [])
        if obj not in there:
            there.append(obj)

    def drop_foreign(self, obj: Any) -> None:
        """A foreign object is gone (with any other at its slot, for kinds holding one
        object per slot)."""
        kind = KINDS[obj.kind]
        slots = self.foreign.get(obj.kind)
        slot = kind.slot(obj)
        if slots is None or slot is None or slot not in slots:
            return
        there = slots[slot]
        if kind.unique_slots:
            there.clear()
        elif obj in there:
            there.remove(obj)
        if not there:
            del slots[slot]

    def clear_foreign(self, kind: str, slot: Slot) -> None:
        slots = self.foreign.get(kind)
        if slots is not None:
            slots.pop(slot, None)

    def foreign_of(self, kind: str) -> list[Any]:
        """Every foreign object of a kind."""
        return [obj for there in self.foreign.get(kind, {}).values() for obj in there]

    @property
    def foreign_addresses(self) -> dict[Slot, Any]:
        """Foreign addresses by (netns, address), as bench/pbr.py reads them."""
        return {slot: there[0] for slot, there in self.foreign.get("address", {}).items()}


Action = Literal["add", "replace", "delete"]
ACTION_SIGNS: dict[str, str] = {"add": "+", "replace": "~", "delete": "-"}

ServerState = Literal["in-sync", "pending", "waiting", "conflict", "failed"]


class Change(Struct, frozen=True):
    action: Action
    obj: KernelObject
    server: str | None  # None: no VS of the config claims it any more

    def describe(self) -> str:
        return f"{ACTION_SIGNS[self.action]} {self.server or '(removed)'}: {self.obj.describe()}"

    def as_json(self) -> dict[str, Any]:
        return {"action": self.action, "server": self.server, "object": self.obj.as_json()}


class ServerVerdict(Struct, frozen=True):
    state: ServerState
    reasons: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {"state": self.state, "reasons": list(self.reasons)}


class Plan(Struct, frozen=True):
    """Ordered changes that take the kernel from observed to desired."""

    changes: tuple[Change, ...]
    servers: dict[str, ServerVerdict]

    def __bool__(self) -> bool:
        return bool(self.changes)

    def describe(self) -> str:
        if not self.changes:
            return "no changes: the kernel matches the config"
        return "\n".join(change.describe() for change in self.changes)

    def as_json(self) -> dict[str, Any]:
        return {
            "changes": [change.as_json() for change in self.changes],
            "servers": {name: verdict.as_json() for name, verdict in self.servers.items()},
        }
