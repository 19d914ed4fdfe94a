"""observe: kernel -> ObservedState. Reads only; one of the two modules that talk netlink.

What is kept: every object vsnet owns, wherever it is, and the foreign objects that could
collide with them; each kind of the registry (vsnetd/kinds/kind.py) says how it is looked
at, what proves an object is vsnet's (its protocol on routes, rules and addresses, its
alias on devices, its record on namespaces, its header on resolver files, its program
names on cgroups) and where a foreign one would collide. Everything else is dropped while
decoding, straight from the receive buffer.

A pass looks first at what lives outside network namespaces (the namespaces themselves,
cgroups), then into vsnet's own namespace and each of its namespaces, every kind in the
registry's order there: devices first, as the other kinds name them by ifindex.

A one-shot process (``Kernel(helper_from=...)``) hands a share of many namespaces to a
forked child (vsnetd/forked.py): the kernel fills two dumps at once, on two CPUs. The
child starts at :func:`look_ahead`, before the process has read its config: it lists the
namespaces and has the kernel fill the dumps of its share (``RtnlSocket.dump_ahead``)
while the parent parses and compiles; :func:`observe` sends it the scope and its share,
and it decodes them while the parent looks at the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from vsnetd.forked import Helper, HelperFailed, may_fork
from vsnetd.kernel import ROOT, Kernel
from vsnetd.kinds import REGISTRY, KernelObject, Kind
from vsnetd.kinds.kind import Inside, Looking, NamespaceObserver
from vsnetd.netlink import DumpMemo, RtnlSocket
from vsnetd.state import DesiredServer, ObservedState, Scope

Observers = list[tuple[str, NamespaceObserver[Any]]]
# What the child is sent: the scope, its namespaces (name -> inode), vsnet's own devices.
Orders = tuple[Scope, dict[str, int], dict[int, str]]


def look_ahead(kernel: Kernel) -> None:
    """Start the child of the next :func:`observe` now, if ``kernel`` shares its looks
    and there are enough namespaces to share: call it before reading the config."""
    if (kernel.helper is None and kernel.helper_from is not None and may_fork()
            and kernel.named_namespaces() >= kernel.helper_from):
        kernel.helper = _start_helper(kernel, ahead=True)


def _start_helper(kernel: Kernel, ahead: bool) -> Helper[ObservedState] | None:
    try:
        return Helper(lambda orders: _look_in_child(kernel, orders, ahead),
                      ObservedState.unpacked)
    except OSError:  # no process to spare (EAGAIN, ENOMEM): the look stays whole here
        return None


def _look_in_child(kernel: Kernel, orders: Callable[[], Orders | None], ahead: bool) -> bytes:
    """The child: the dumps of the share it expects, made ahead; then its share decoded,
    packed for the way back (ObservedState.packed: an object it cannot pack fails the
    child, and the parent looks at that share itself)."""
    look = Looking(kernel, Scope(), ObservedState())
    for kind in REGISTRY:  # the namespaces (the scope matters to none of their kinds)
        kind.observe_machine(look)
    expected = _shares(list(look.namespaces.items()), ahead)[1]
    dumps = [request for kind in REGISTRY for request in kind.namespace_dumps]
    for sock in kernel.open_sockets(expected).values():
        sock.dump_ahead(dumps)
    sent = orders()
    state = ObservedState()
    if sent is not None:
        scope, theirs, root_names = sent  # a share other than expected: dumped now
        _observe_namespaces(kernel, theirs, _observers(Looking(kernel, scope, state)),
                            scope, state, root_names, None)
    return state.packed()


def _shares(namespaces: list[tuple[str, int]], ahead: bool
            ) -> tuple[dict[str, int], dict[str, int]]:
    """(the parent's share, the child's). A child started ahead has had its dumps made
    by the time the parent knows the scope: it has only to decode them (about half of a
    namespace's cost) while the parent also waits for the kernel, so it takes more."""
    split = len(namespaces) * (7 if ahead else 10) // 20
    return dict(namespaces[:split]), dict(namespaces[split:])


def observe(kernel: Kernel, scope: Scope, memo: DumpMemo | None = None) -> ObservedState:
    """The kernel as vsnet sees it. ``memo``: what the last pass with it decoded, and
    where this one leaves what it decodes (for a second look soon after the first)."""
    state = ObservedState()
    look = Looking(kernel, scope, state)
    for kind in REGISTRY:
        kind.observe_machine(look)
    observers = _observers(look)
    root_names = _observe_in(kernel.root, ROOT, observers, scope, state, {}, memo)
    namespaces = mine = look.namespaces
    theirs: dict[str, int] = {}
    helper, kernel.helper = kernel.helper, None  # a child serves one look
    ahead = helper is not None
    # a memo stays with the process that decodes: passes that keep one look alone
    shared = (memo is None and kernel.helper_from is not None
              and len(namespaces) >= kernel.helper_from)
    if not shared and helper is not None:
        helper.stop()
        helper = None
    elif shared and helper is None and may_fork():
        helper = _start_helper(kernel, ahead=False)
    if helper is not None:
        mine, theirs = _shares(list(namespaces.items()), ahead)
        helper.send((scope, theirs, root_names))
    try:
        _observe_namespaces(kernel, mine, observers, scope, state, root_names, memo)
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
