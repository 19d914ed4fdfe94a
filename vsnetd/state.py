"""The data that flows through the pipeline: desired state, observed state, plans.

All plain, immutable-by-convention data: compile and diff produce and consume it
without touching the kernel. The immutable records are NamedTuples (their dict and list
defaults, here and in vsnetd/config/model.py, are shared and never changed in place) and the
others plain classes with slots: a dataclass compiles its methods from source at every
import, and the ~28 of them on a ``vsnetctl`` run cost ~25 ms of each
(docs/benchmarks.md).
"""

from __future__ import annotations

import marshal
import sys
from typing import Any, Literal, NamedTuple

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


class Scope(NamedTuple):
    """Where vsnet looks for foreign objects that would collide with its own."""

    protocol: int = VSNET_PROTOCOL
    tables: range = range(0)
    priorities: range = range(0)
    sysctls: dict[str, tuple[str, ...]] = {}  # noqa: RUF012 (by namespace)
    cgroup_root: str | None = None  # pbr confinement (settings.cgroup_root); None: off
    pin_root: str = ""


def keyed(objects: tuple[KernelObject, ...]) -> dict[ObjectKey, KernelObject]:
    """Objects by identity (DesiredServer.keyed)."""
    return {object_key(obj): obj for obj in objects}


class DesiredServer(NamedTuple):
    name: str
    id: int
    mode: str
    uplink: str
    numbers: ServerNumbers
    addresses: tuple[str, ...]
    objects: tuple[KernelObject, ...]
    keyed: dict[ObjectKey, KernelObject]  # the objects by identity: keyed(objects)
    netns: str = ""  # the VS's namespace; "" for pbr (the namespace vsnet runs in)
    device: str = ""  # the device carrying its addresses
    moves_uplink: bool = False  # netns with link: move
    # shared objects it needs (the rule tree's rules on the way to its own rules)
    shared: dict[ObjectKey, KernelObject] = {}  # noqa: RUF012


class DesiredState(NamedTuple):
    settings: Settings
    scope: Scope
    servers: dict[str, DesiredServer]
    shared: dict[ObjectKey, KernelObject]  # every VS's, once
    # how many VS need each shared object (compile.count_shared_users fills it, the
    # daemon's reader thread after a read): an edit then finds what no VS needs any more
    # without a pass over every VS. Not compared: it follows from the rest.
    shared_users: dict[ObjectKey, int]
    # Names of VS ids that are not desired but whose leftovers may still be in the kernel
    # (a teardown knows the config it tears down): deletes are attributed to them.
    former_names: dict[int, str] = {}  # noqa: RUF012
    former_namespaces: dict[str, str] = {}  # noqa: RUF012 (namespace -> VS name)

    def __eq__(self, other: object) -> bool:
        return type(other) is DesiredState and self._compared() == other._compared()

    def __ne__(self, other: object) -> bool:
        return not self == other

    def _compared(self) -> tuple[Any, ...]:
        return (self.settings, self.scope, self.servers, self.shared, self.former_names,
                self.former_namespaces)

    def names_by_id(self) -> dict[int, str]:
        return self.former_names | {server.id: server.name for server in self.servers.values()}


class ObservedState:
    """What the kernel holds: vsnet's own objects, and foreign ones that could collide.

    Namespaces are named as in the config; "" is the namespace vsnet runs in. Foreign
    objects are kept by kind and by the slot where they would collide with one of vsnet's
    (``Kind.slot`` of vsnetd/kinds/kind.py): a VS wanting an object there is a conflict.
    """

    __slots__ = ("foreign", "links", "owned", "unavailable")

    def __init__(self, links: dict[str, dict[str, int]] | None = None,
                 owned: dict[ObjectKey, KernelObject] | None = None,
                 foreign: dict[str, dict[Slot, list[Any]]] | None = None,
                 unavailable: dict[str, str] | None = None) -> None:
        self.links = {} if links is None else links  # netns -> name -> ifindex
        self.owned = {} if owned is None else owned
        self.foreign = {} if foreign is None else foreign
        self.unavailable = {} if unavailable is None else unavailable  # kind -> what lacks

    def __eq__(self, other: object) -> bool:
        return type(other) is ObservedState and all(
            getattr(self, name) == getattr(other, name) for name in self.__slots__)

    __hash__ = None  # type: ignore[assignment]  # it changes

    def __repr__(self) -> str:
        return f"ObservedState({len(self.owned)} owned, {len(self.links)} namespaces)"

    def with_owned(self, owned: dict[ObjectKey, KernelObject]) -> ObservedState:
        """The same kernel, another set of owned objects (the rest shared, not copied)."""
        return ObservedState(self.links, owned, self.foreign, self.unavailable)

    def add(self, obj: KernelObject) -> None:
        self.owned[(obj.kind, obj.key)] = obj

    def packed(self) -> bytes:
        """This state for another process of this interpreter (:meth:`unpacked`): plain
        tuples in marshal's format, each object as its class's place in a list of class
        names and its fields. Pickling the objects (NamedTuples: a Python call each way
        per object) cost twice as much: ~13 + 7 ms for 6,000 routes, against ~4 + 5 here.
        ValueError: an object that is not a tuple, or a field marshal cannot carry (in
        the look's child: it fails, and the parent looks at that share itself)."""
        classes: dict[type, int] = {}

        def fields(obj: object) -> tuple[int, tuple[Any, ...]]:
            if not isinstance(obj, tuple):
                raise ValueError(f"{type(obj).__name__} is not a tuple")
            return classes.setdefault(type(obj), len(classes)), tuple(obj)

        owned = [(key, *fields(obj)) for key, obj in self.owned.items()]
        foreign = [fields(obj) for slots in self.foreign.values() for there in slots.values()
                   for obj in there]
        names = [(cls.__module__, cls.__qualname__) for cls in classes]
        return marshal.dumps((names, self.links, owned, foreign, self.unavailable))

    @staticmethod
    def unpacked(data: bytes) -> ObservedState:
        """The state :meth:`packed` packed."""
        names, links, owned, foreign, unavailable = marshal.loads(data)
        classes = [getattr(sys.modules[module], name) for module, name in names]
        new = tuple.__new__  # the objects are NamedTuples: no Python __new__ to call
        state = ObservedState(links, {key: new(classes[index], fields)
                                      for key, index, fields in owned},
                              None, unavailable)
        for index, fields in foreign:
            state.add_foreign(new(classes[index], fields))
        return state

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


class Change(NamedTuple):
    action: Action
    obj: KernelObject
    server: str | None  # None: no VS of the config claims it any more

    def describe(self) -> str:
        return f"{ACTION_SIGNS[self.action]} {self.server or '(removed)'}: {self.obj.describe()}"

    def as_json(self) -> dict[str, Any]:
        return {"action": self.action, "server": self.server, "object": self.obj.as_json()}


class ServerVerdict(NamedTuple):
    state: ServerState
    reasons: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {"state": self.state, "reasons": list(self.reasons)}


class Plan(NamedTuple):
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
