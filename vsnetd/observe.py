"""observe: kernel -> ObservedState. Reads only; one of the two modules that talk netlink.

What is kept: every object vsnet owns, wherever it is, and the foreign objects that could
collide with them; each kind of the registry (vsnetd/kinds/kind.py) says how it is looked
at, what proves an object is vsnet's (its protocol on routes, rules and addresses, its
alias on devices, its record on namespaces, its header on resolver files, its program
names on cgroups) and where a foreign one would collide. Everything else is dropped while
decoding, straight from the receive buffer.

A pass looks first at what lives outside network namespaces (the namespaces themselves,
cgroups), then into vsnet's own namespace and each of its namespaces, every kind in the
registry's order there: devices first, as the other kinds name them by ifindex. A
one-shot process (``Kernel(helper_from=...)``) hands half of many namespaces to a forked
child (vsnetd/forked.py): the kernel fills two dumps at once, on two CPUs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from vsnetd.forked import Helper, HelperFailed, may_fork
from vsnetd.kernel import ROOT, Kernel
from vsnetd.kinds import REGISTRY, KernelObject, Kind
from vsnetd.kinds.kind import Inside, Looking, NamespaceObserver
from vsnetd.netlink import DumpMemo, RtnlSocket
from vsnetd.state import DesiredServer, ObservedState, Scope

Observers = list[tuple[str, NamespaceObserver[Any]]]


def observe(kernel: Kernel, scope: Scope, memo: DumpMemo | None = None) -> ObservedState:
    """The kernel as vsnet sees it. ``memo``: what the last pass with it decoded, and
    where this one leaves what it decodes (for a second look soon after the first)."""
    state = ObservedState()
    look = Looking(kernel, scope, state)
    for kind in REGISTRY:
        kind.observe_machine(look)
    observers = _observers(look)
    root_names = _observe_in(kernel.root, ROOT, observers, scope, state, {}, memo)
    namespaces = list(look.namespaces.items())
    helper: Helper[ObservedState] | None = None
    if (memo is None and kernel.helper_from is not None
            and len(namespaces) >= kernel.helper_from and may_fork()):
        # the second half in a child process while this one looks at the first (a memo
        # stays with the process that decodes: passes that keep one look alone)
        half = len(namespaces) // 2
        theirs = dict(namespaces[half:])
        try:
            helper = Helper(lambda: _observe_namespaces(kernel, theirs, observers, scope,
                                                        ObservedState(), root_names, None))
        except OSError:  # no process to spare (EAGAIN, ENOMEM): all of it here
            pass
        else:
            namespaces = namespaces[:half]
    try:
        _observe_namespaces(kernel, dict(namespaces), observers, scope, state, root_names,
                            memo)
    except BaseException:
        if helper is not None:
            helper.stop()
        raise
    if helper is not None:
        try:
            _merge(state, helper.result())
        except HelperFailed:  # look again here: whatever stopped the child reaches the caller
            _observe_namespaces(kernel, theirs, observers, scope, state, root_names, None)
    return state


def _observe_namespaces(kernel: Kernel, namespaces: dict[str, int], observers: Observers,
                        scope: Scope, state: ObservedState, root_names: dict[int, str],
                        memo: DumpMemo | None) -> ObservedState:
    """Observe ``namespaces`` (name -> inode) into ``state``; return it."""
    sockets = kernel.open_sockets(namespaces)
    for name in namespaces:
        sock = sockets.get(name)
        if sock is not None:  # else removed meanwhile
            _observe_in(sock, name, observers, scope, state, root_names, memo)
    return state


def _merge(state: ObservedState, other: ObservedState) -> None:
    """Add what ``other`` saw of other namespaces, after what ``state`` holds."""
    state.links.update(other.links)
    state.owned.update(other.owned)
    for found in (obj for slots in other.foreign.values() for there in slots.values()
                  for obj in there):
        state.add_foreign(found)
    state.unavailable.update(other.unavailable)


def _observers(look: Looking) -> Observers:
    return [(kind.name, observer) for kind in REGISTRY
            if (observer := kind.observer(look)) is not None]


def _observe_in(sock: RtnlSocket, netns: str, observers: Observers, scope: Scope,
                state: ObservedState, root_names: dict[int, str],
                memo: DumpMemo | None = None) -> dict[int, str]:
    """Observe one namespace into ``state``; return its ifindex -> name map."""
    inside = Inside(netns, scope, state, {}, root_names, memo)
    owned = state.owned
    for name, observer in observers:
        for found, is_owned in observer(sock, inside):
            if is_owned:
                owned[(name, found.key)] = found
            else:
                state.add_foreign(found)
    return inside.names


def recheck(scope: Scope, servers: Iterable[DesiredServer], state: ObservedState,
            seen: dict[Any, tuple[Any, ...]]) -> list[KernelObject]:
    """What the kernel sends no notifications of (BPF attachments): look at each VS's
    objects again (cheaply: ``seen`` keeps what was read last time), update ``state``
    where the kernel differs from it, and return the objects concerned (the daemon heals
    their VS)."""
    servers = list(servers)
    changed: list[KernelObject] = []
    for kind in REGISTRY:
        changed.extend(kind.recheck(scope, servers, state, seen))
    return changed



def refresh(kernel: Kernel, state: ObservedState, scope: Scope,
            servers: list[DesiredServer]) -> None:
    """Look again at what these VS own, in place: their namespace whole, or (pbr) what
    each kind looks at again cheaply (``Kind.rescan``: the tables they use, dumped with
    the kernel's table filter). For after changes that make the kernel drop routes
    without a word (an address or device removed)."""
    root_names = {index: name for name, index in state.links.get(ROOT, {}).items()}
    observers: Observers | None = None
    rooted: list[DesiredServer] = []
    for server in servers:
        if not server.netns:
            rooted.append(server)
            continue
        netns = server.netns
        state.owned = {k: o for k, o in state.owned.items() if o.netns != netns}
        try:
            sock = kernel.socket(netns)
        except OSError:
            _forget_namespace(state, netns)
            continue
        if observers is None:
            observers = _observers(Looking(kernel, scope, state))
        _observe_in(sock, netns, observers, scope, state, root_names)
    if rooted:
        for kind in REGISTRY:
            kind.rescan(kernel, state, scope, root_names, rooted)


def _forget_namespace(state: ObservedState, netns: str) -> None:
    namespaces = {kind.name: kind for kind in REGISTRY if kind.is_namespace}
    state.owned = {key: obj for key, obj in state.owned.items()
                   if key[0] not in namespaces or namespaces[key[0]].namespace(obj) != netns}


# netlink message type -> (the kind it reports, whether it reports a deletion)
_NOTIFIED: dict[int, tuple[Kind[Any], bool]] = {
    message: (kind, gone) for kind in REGISTRY for message, gone in kind.notifications.items()}


class NotificationFeed:
    """Keeps an ObservedState current from the netlink notifications of one namespace.

    Each notification updates the state the way a dump would have seen it, and the objects
    it concerned are collected in ``changed`` (the daemon converges the VS they belong to).
    Notifications vsnet's own changes cause update the state to what it already holds, and
    are not collected: healing them would only find nothing to do.
    Objects whose deletion takes others silently (``Kind.cascades``: IPv4 routes flushed
    with an address or device) set ``needs_full`` (look at everything again).
    """

    def __init__(self, state: ObservedState, scope: Scope, netns: str) -> None:
        self.state = state
        self.scope = scope
        self.netns = netns
        self.changed: list[KernelObject] = []
        self.needs_full = False

    def _names(self, netns: str) -> dict[int, str]:
        return {index: name for name, index in self.state.links.get(netns, {}).items()}

    def __call__(self, message: int, data: bytearray, start: int, end: int) -> None:
        entry = _NOTIFIED.get(message)
        if entry is None:
            return
        kind, gone = entry
        state, netns = self.state, self.netns
        names = self._names(netns)
        inside = Inside(netns, self.scope, state, names,
                        names if netns == ROOT else self._names(ROOT))
        decoded = kind.notified(inside, gone, data, start, end)
        if decoded is None:
            return
        obj, owned = decoded
        if owned:
            key = (kind.name, obj.key)
            if gone:
                news = state.owned.pop(key, None) is not None
                if news and kind.cascades:
                    self.needs_full = True  # what went with it went without a word
            else:
                news = state.owned.get(key) != obj
                state.owned[key] = obj
            if kind.unique_slots and (slot := kind.slot(obj)) is not None:
                state.clear_foreign(kind.name, slot)  # tagged just now, or gone
            if not news:
                return  # the state held it so already: vsnet's own change, recorded at apply
        elif gone:
            state.drop_foreign(obj)
        else:
            state.add_foreign(obj)
        self.changed.append(obj)
