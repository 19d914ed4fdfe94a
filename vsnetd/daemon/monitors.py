"""The kernel's notifications: one rtnetlink monitor per namespace vsnet manages.

They keep the Reconciler's observed state current and say which VS a change concerns
(self-heal). Lost notifications (ENOBUFS) and namespaces unmounted by hand ask for a
full run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
from collections.abc import Iterable
from pathlib import Path

from vsnetd import log
from vsnetd.diff import Affected
from vsnetd.kernel import ROOT
from vsnetd.kinds import KernelObject, Namespace, namespace
from vsnetd.netlink import Overrun, RtnlMonitor
from vsnetd.observe import NotificationFeed
from vsnetd.reconcile import Reconciler
from vsnetd.state import Change, DesiredState, ObservedState
from vsnetd.syscalls import entered_netns


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except OSError:
        return None


class Monitors:
    """What the kernel says, per namespace; :attr:`changed` collects the objects it
    concerned, :attr:`full_why` is set when only a full look will do."""

    def __init__(self, reconciler: Reconciler, selector: selectors.BaseSelector) -> None:
        self.reconciler = reconciler  # its observed state is what notifications update
        self.kernel = reconciler.kernel
        self.selector = selector
        self.monitors: dict[str, RtnlMonitor] = {}
        self.inodes: dict[str, int | None] = {}
        self.changed: list[KernelObject] = []
        self.full_why: str | None = None
        # built by the first heal after an edit: not on the way of the edit
        self._affected: tuple[DesiredState, Affected] | None = None
        self._synced: ObservedState | None = None  # the observed state of the last sync

    def open(self, netns: str) -> None:
        if netns == ROOT:
            monitor = RtnlMonitor()
            inode = None
        else:
            fd = self.kernel.netns_fd(netns)
            with entered_netns(fd):
                monitor = RtnlMonitor()
            inode = os.fstat(fd).st_ino
        self.monitors[netns] = monitor
        self.inodes[netns] = inode
        self.selector.register(monitor, selectors.EVENT_READ, lambda: self._read(netns))

    def _close(self, netns: str) -> None:
        self.inodes.pop(netns, None)
        monitor = self.monitors.pop(netns)
        self.selector.unregister(monitor)
        monitor.close()

    def sync(self, applied: Iterable[Change] = ()) -> None:
        """One monitor per namespace vsnet manages; none kept for one it removed (an open
        socket would keep the namespace, and its devices, alive). After a run that kept
        the observed state and made or removed no namespace (an edit, a heal), nothing to
        do: not a pass over every object per reconcile. (A namespace unmounted by hand
        asks for a full run: :meth:`check_namespaces`.)"""
        observed = self.reconciler.observed
        if observed is None:
            return  # the kernel unknown (a run raised): not a reason to stop listening
        if (observed is self._synced
                and not any(isinstance(change.obj, Namespace) for change in applied)):
            return
        self._synced = observed
        wanted = {ROOT} | {obj.name for obj in observed.owned.values()
                           if isinstance(obj, Namespace)}
        for netns in set(self.monitors) - {ROOT}:
            if netns not in wanted or _inode(namespace.NETNS_DIR / netns) != (
                self.inodes.get(netns)
            ):
                self._close(netns)  # gone, or the name now means another namespace
        for netns in wanted - set(self.monitors):
            try:
                self.open(netns)
            except OSError as exc:
                self.full_why = f"cannot watch namespace {netns}: {exc.strerror}"

    def check_namespaces(self) -> None:
        """A namespace of vsnet's unmounted or replaced by hand: look at everything again."""
        for netns, inode in self.inodes.items():
            if netns != ROOT and _inode(namespace.NETNS_DIR / netns) != inode:
                self.full_why = f"namespace {netns} unmounted or replaced"

    def _read(self, netns: str) -> None:
        monitor = self.monitors[netns]
        observed, desired = self.reconciler.observed, self.reconciler.desired
        if observed is None or desired is None:
            monitor.read(lambda *_: None)
            if desired is not None:
                self.full_why = "the kernel changed while its state was unknown"
            return
        feed = NotificationFeed(observed, desired.scope, netns)
        try:
            monitor.read(feed)
        except Overrun:
            log.event(logging.WARNING, "netlink notifications were lost: full resync",
                      op="resync")
            self.full_why = "netlink notifications were lost (ENOBUFS)"
        self.changed.extend(feed.changed)
        if feed.needs_full:
            self.full_why = "the kernel removed objects without notifications"

    def affected(self) -> set[str]:
        """The VS the changes seen since the last call concern."""
        changed, self.changed = self.changed, []
        desired = self.reconciler.desired
        if not changed or desired is None:
            return set()
        if self._affected is None or self._affected[0] is not desired:
            self._affected = (desired, Affected(desired))
        return self._affected[1](changed)

    def drain(self) -> None:
        """Before a full run: what was said until now, the run will see for itself."""
        for monitor in self.monitors.values():
            with contextlib.suppress(Overrun):
                monitor.read(lambda *_: None)
        self.changed.clear()
        self.full_why = None

    def close(self) -> None:
        for monitor in self.monitors.values():
            monitor.close()
        self.monitors.clear()
