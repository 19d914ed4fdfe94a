"""What a kernel object kind declares: the contract of the kind registry
(docs/architecture.md, "Kernel object kinds").

Each kind is one :class:`Kind` object in its own module of ``vsnetd/kinds/``, listed once
in :data:`vsnetd.kinds.REGISTRY`. observe, diff and apply iterate the registry and ask the
kind of each object; none of them names a kind. A kind says:

* how it is observed: :meth:`Kind.observe_machine` (objects outside any network
  namespace), :meth:`Kind.observer` (one dump per network namespace, each object found
  with whether vsnet owns it), :attr:`Kind.notifications` and :meth:`Kind.notified` (the
  daemon's netlink notifications), :meth:`Kind.rescan` (a cheap second look after the
  kernel dropped objects silently), :meth:`Kind.recheck` (polling, without
  notifications);
* how two instances compare: the identity is the object's ``key``; two objects with the
  same key and different content are replaced in place unless :meth:`Kind.rebuilt`
  (delete, then create), and only if :meth:`Kind.differs`;
* where a foreign object collides with a desired one (:meth:`Kind.slot`, the reason in
  :meth:`Kind.conflict`), whom an object belongs to (:meth:`Kind.owner`), and what a
  deletion implies (:attr:`Kind.deletable`, :attr:`Kind.cascades`,
  :attr:`Kind.newest_first`, :meth:`Kind.outlives`), and in what order its creates are
  best made (:meth:`Kind.order_creates`, :meth:`Kind.order_deletes`, and which deletes
  may wait until after the creates: :meth:`Kind.deferred_deletes`);
* how its changes are made: :meth:`Kind.apply`, a batch of changes of this kind, with
  the applier's netlink batching (:class:`Applier`: ``send`` now, or ``queue`` to go out
  with the next kinds' requests).

The order among kinds is the registry's: creates go in that order, deletes in the
reverse one (then the deletes the kinds let wait).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    from vsnetd.kernel import Kernel
    from vsnetd.netlink import DumpMemo, DumpRequest, RtnlSocket
    from vsnetd.state import Change, DesiredServer, ObservedState, Scope


class KernelObject(Protocol):
    """What every kind's objects have."""

    @property
    def kind(self) -> str: ...

    @property
    def key(self) -> tuple[Any, ...]: ...

    @property
    def netns(self) -> str: ...

    def describe(self) -> str: ...

    def as_json(self) -> dict[str, Any]: ...


Obj = TypeVar("Obj", bound=KernelObject)

# The owner named on changes of objects no single VS owns: the rule tree's goto and nop
# rules (vsnetd/ruletree.py), shared by every VS below them.
SHARED = "(rule tree)"

# Where a foreign object would collide with a desired one of the same kind (Kind.slot).
Slot = Hashable

# A netlink request: (message type, flags, body).
Request = tuple[int, int, bytes]


class Looking:
    """One observe pass, as the kinds see it."""

    __slots__ = ("kernel", "namespaces", "scope", "state")

    def __init__(self, kernel: Kernel, scope: Scope, state: ObservedState) -> None:
        self.kernel = kernel
        self.scope = scope
        self.state = state
        # the network namespaces to look into besides vsnet's own, each with the inode its
        # name mounts (found by the kind whose objects are namespaces)
        self.namespaces: dict[str, int] = {}


class Inside:
    """One network namespace, in an observe pass or for a notification."""

    __slots__ = ("memo", "names", "netns", "root_names", "scope", "state")

    def __init__(self, netns: str, scope: Scope, state: ObservedState, names: dict[int, str],
                 root_names: dict[int, str], memo: DumpMemo | None = None) -> None:
        self.netns = netns
        self.scope = scope
        self.state = state
        self.names = names  # its devices by ifindex (the link kind's dump fills it first)
        self.root_names = root_names  # those of vsnet's own namespace (the VS devices' parents)
        # what the pass before this one decoded (vsnetd/netlink.py DumpMemo): a converge's
        # verification decodes only what its apply changed
        self.memo = memo


# What a kind does in each network namespace of an observe pass: (object, owned) for each
# object of its kind there that vsnet owns or that could collide with vsnet's.
NamespaceObserver = Callable[["RtnlSocket", Inside], Iterable[tuple[Obj, bool]]]


class Owners(Protocol):
    """Who owns what, for :meth:`Kind.owner` (vsnetd/diff.py builds it)."""

    def of_netns(self, netns: str) -> str | None: ...

    def of_table(self, table: int) -> str | None: ...

    def wanting(self, kind: str, slot: Slot) -> str | None:
        """The VS whose desired object of ``kind`` stands at ``slot``."""

    def using(self, kind: str, slot: Slot) -> str | None:
        """The owner of an observed object that uses the one of ``kind`` at ``slot``."""


class Applier(Protocol):
    """What :meth:`Kind.apply` works with (vsnetd/apply.py)."""

    kernel: Kernel
    links: dict[str, dict[str, int]]  # netns -> device name -> ifindex, kept current
    protocol: int

    def each(self, changes: list[Change], do: Callable[[Change], None]) -> None:
        """Make each change with ``do``; an OSError fails that change only."""

    def send(self, changes: list[Change], encode: Callable[[Change], tuple[RtnlSocket, Request]]
             ) -> list[Change]:
        """Encode each change for its socket, send one batch per socket; failures are
        recorded, the changes the kernel acknowledged returned (not yet recorded)."""

    def queue(self, changes: list[Change], encode: Callable[[Change], tuple[RtnlSocket, Request]]
              ) -> None:
        """Like :meth:`send`, the batch sent with the next kinds' requests (up to the next
        ``send`` or ``each``): the changes the kernel acknowledges are recorded then."""

    def done(self, changes: Iterable[Change]) -> None:
        """Record changes as applied."""


class Kind(Generic[Obj]):
    """The defaults: a kind observed nowhere, compared as a whole, owned by the VS of its
    namespace, colliding with nothing. Each kind's module overrides what it needs."""

    name: ClassVar[str]  # the objects' ``kind``: the first half of their keys

    # ------------------------------------------------------------------ observe

    def observe_machine(self, look: Looking) -> None:
        """Objects of this kind outside any network namespace, into ``look.state``."""

    def observer(self, look: Looking) -> NamespaceObserver[Obj] | None:
        """What to do in each network namespace of this pass; None: nothing."""
        return None

    # The dumps :meth:`observer` makes in each namespace, exactly as it asks for them: a
    # look may have them made ahead, before it knows how to decode them (``look_ahead``
    # in vsnetd/observe.py). One missing here is made when asked for: only slower.
    namespace_dumps: ClassVar[tuple[DumpRequest, ...]] = ()

    # netlink message type -> whether it reports a deletion
    notifications: ClassVar[dict[int, bool]] = {}

    def notified(self, inside: Inside, gone: bool, data: bytearray, start: int, end: int
                 ) -> tuple[Obj, bool] | None:
        """One notification of :attr:`notifications` (``gone``: of a deletion) as
        (object, owned), or None to ignore it."""
        return None

    def rescan(self, kernel: Kernel, state: ObservedState, scope: Scope,
               names: dict[int, str], servers: list[DesiredServer]) -> None:
        """Look again, in ``state``, at these pbr VS's objects of vsnet's own namespace
        (``names``: its devices by ifindex): after changes that make the kernel drop
        objects without a word. Nothing for kinds it never drops that way."""

    def recheck(self, scope: Scope, servers: Iterable[DesiredServer], state: ObservedState,
                seen: dict[Any, tuple[Any, ...]]) -> list[Obj]:
        """For kinds the kernel sends no notifications of: look again (cheaply, ``seen``
        keeps what was read last time), update ``state``, return the objects concerned."""
        return []

    # ------------------------------------------------------------------ compare

    rebuilds: ClassVar[bool] = False  # whether :meth:`rebuilt` can ever be True

    def rebuilt(self, have: Obj, want: Obj) -> bool:
        """Whether ``have`` must be deleted and ``want`` created (not edited in place)."""
        return False

    def differs(self, have: Obj, want: Obj) -> bool:
        """Whether ``have`` needs a change to become ``want``; asked only when they are
        not equal (fields that say nothing of the kernel's object are left out here)."""
        return True

    # ------------------------------------------------------------------ plan

    deletable: ClassVar[bool] = True  # False: set, never unset
    cascades: ClassVar[bool] = False  # deleting one makes the kernel drop others silently
    newest_first: ClassVar[bool] = False  # deletes in the reverse of the kernel's order
    unique_slots: ClassVar[bool] = False  # one object per slot: vsnet's replaces a foreign one
    is_namespace: ClassVar[bool] = False  # objects inside one that goes go with it
    unavailable_note: ClassVar[str] = "unavailable"  # a VS's note when the machine lacks it

    def order_creates(self, changes: list[Change]) -> None:
        """Put this kind's creates in the order they are best made (in place); the
        default keeps the config's."""

    def order_deletes(self, changes: list[Change]) -> None:
        """Put this kind's deletes in the order they are best made (in place, after
        :attr:`newest_first`); the default keeps the kernel's."""

    def deferred_deletes(self, deletes: list[Change], creates: list[Change]) -> list[Change]:
        """Of this kind's deletes (ordered), those that may wait until after the plan's
        creates, taken out of ``deletes`` in their order: what no VS needs any more and
        nothing created meets, so that the changes the VS wait for reach the kernel first.
        The default: none."""
        return []

    def namespace(self, obj: Obj) -> str:
        """The network namespace an object of an ``is_namespace`` kind is."""
        raise NotImplementedError

    def outlives(self, obj: Obj) -> bool:
        """Whether the object is changed even when its namespace goes (it lives outside)."""
        return False

    def owner(self, obj: Obj, owners: Owners) -> str | None:
        """The VS an owned object belongs to, even when no VS wants it any more."""
        return owners.of_netns(obj.netns) if obj.netns else None

    def uses(self, obj: Obj) -> Iterable[tuple[str, Slot]]:
        """The (kind, slot) of other objects this one depends on (a route's source
        address): their owner is this object's."""
        return ()

    uses_others: ClassVar[bool] = False  # whether :meth:`uses` can name anything

    def slot(self, obj: Obj) -> Slot | None:
        """Where a foreign object of this kind would collide with a desired one (the same
        for both); None: nowhere."""
        return None

    def conflict(self, found: Any) -> str:
        """Why a foreign object at a desired object's slot blocks its VS."""
        return f"a foreign {found.describe()} stands where vsnet wants its own"

    def watched(self, server: DesiredServer) -> Iterable[Slot]:
        """Slots of this kind whose changes concern a VS besides its own objects' (the
        devices it stands on)."""
        return ()

    # ------------------------------------------------------------------ apply

    def apply(self, applier: Applier, changes: list[Change]) -> None:
        raise NotImplementedError(f"{self.name} objects cannot be changed")


class NetlinkKind(Kind[Obj]):
    """A kind whose changes are one netlink request each, on the socket of the object's
    namespace, batched by the applier."""

    def request(self, action: str, obj: Obj, protocol: int, links: dict[str, int]) -> Request:
        raise NotImplementedError

    def apply(self, applier: Applier, changes: list[Change]) -> None:
        kernel, links, protocol, request = (applier.kernel, applier.links, applier.protocol,
                                            self.request)

        def encode(change: Change) -> tuple[RtnlSocket, Request]:
            obj: Any = change.obj
            netns = obj.netns
            return kernel.socket(netns), request(change.action, obj, protocol,
                                                 links.get(netns, {}))

        applier.queue(changes, encode)
