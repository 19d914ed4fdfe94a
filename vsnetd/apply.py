"""apply: Plan -> kernel. The only module that changes kernel state, through the kinds.

The plan is applied kind by kind in its own order, each batch of one kind by that kind
(``Kind.apply``, vsnetd/kinds/kind.py). Netlink requests go out batched per namespace
socket (many per ``send``, one ACK a ``send``: failures are answered anyway); the other
kinds' changes are made one by one.
The requests of consecutive netlink kinds (e.g. an edit's rules, addresses, routes and
rules again) wait for each other and go out together, in the plan's order within each
namespace: one ``send`` and one read of the ACKs for all, not one round trip per kind;
whatever is done otherwise (a device, a namespace, a sysctl, a file) first sends what
waits, and so does the tidying after the creates (the deletes a kind defers, see
vsnetd/diff.py): what the VS wait for is in place before it. A failing change fails its
VS only: the kernel processes every message of a batch on its own, and the first error
of each VS is reported with the kernel's own words.
"""

from __future__ import annotations

import errno
import itertools
from collections.abc import Callable, Iterable
from operator import attrgetter

from vsnetd import metrics
from vsnetd.kernel import Kernel
from vsnetd.kinds import KINDS
from vsnetd.kinds.kind import Request
from vsnetd.netlink import Batch, RtnlSocket
from vsnetd.state import Change, Plan

# A delete that finds nothing has reached its goal (e.g. an admin removed it meanwhile).
GONE = {-errno.ENOENT, -errno.ESRCH, -errno.EADDRNOTAVAIL, -errno.ENODEV}

_kind_of = attrgetter("obj.kind")


class ApplyResult:
    __slots__ = ("applied", "failed", "links")

    def __init__(self, links: dict[str, dict[str, int]]) -> None:
        self.applied: list[Change] = []
        self.failed: list[tuple[Change, str]] = []
        self.links = links  # devices known after

    def failures_by_server(self) -> dict[str, str]:
        """The first error of each VS (later ones usually follow from it)."""
        first: dict[str, str] = {}
        for change, error in self.failed:
            first.setdefault(change.server or "(removed)", f"{change.obj.describe()}: {error}")
        return first


class _Applier:
    """What the kinds apply their changes with (``Applier`` of vsnetd/kinds/kind.py)."""

    def __init__(self, kernel: Kernel, links: dict[str, dict[str, int]], protocol: int) -> None:
        self.kernel = kernel
        self.links = {netns: dict(names) for netns, names in links.items()}
        self.protocol = protocol
        self.result = ApplyResult(links=self.links)
        # requests encoded, not all sent yet: by socket, with their changes (see queue)
        self.queued: dict[int, tuple[Batch, list[Change]]] = {}
        self.created = False  # what is queued creates or replaces something

    def run(self, changes: Iterable[Change]) -> ApplyResult:
        try:
            for kind, group in itertools.groupby(changes, key=_kind_of):
                KINDS[kind].apply(self, list(group))
            self.flush()
        finally:
            for batch, _changes in self.queued.values():
                batch.settle()  # failed before its end: no send left in flight
        return self.result

    def each(self, changes: list[Change], do: Callable[[Change], None]) -> None:
        self.flush()
        for change in changes:
            try:
                do(change)
            except KeyError as exc:
                self.result.failed.append((change, _no_device(exc)))
            except OSError as exc:
                self.result.failed.append((change, exc.strerror or str(exc)))
            else:
                self.result.applied.append(change)

    def done(self, changes: Iterable[Change]) -> None:
        self.result.applied.extend(changes)

    def queue(self, changes: list[Change], encode: Callable[[Change], tuple[RtnlSocket, Request]]
              ) -> None:
        """Encode each change for its socket now; send it with whatever follows, up to
        the next :meth:`send`, :meth:`each` or the plan's end; the changes the kernel
        acknowledges are applied then. A delete after creates (tidying up: the plan's
        deferred deletes) first sends what they created: that is in place, acknowledged
        and announced before the kernel walks its lists for the tidying."""
        for start, change in enumerate(changes):
            if change.action == "delete" and self.created:
                self._encode(changes[:start], encode)
                self.flush()
                changes = changes[start:]
                break
            self.created = self.created or change.action != "delete"
        self._encode(changes, encode)

    def flush(self) -> None:
        """Send what :meth:`queue` holds."""
        if self.queued:
            self.done(self._send_queued())

    def send(self, changes: list[Change], encode: Callable[[Change], tuple[RtnlSocket, Request]]
             ) -> list[Change]:
        """Encode each change for its socket; one batch per socket (after what is queued);
        the changes the kernel acknowledged (a delete of what is gone already counts),
        failures recorded."""
        self.flush()
        self._encode(changes, encode)
        return self._send_queued()

    def _encode(self, changes: list[Change],
                encode: Callable[[Change], tuple[RtnlSocket, Request]]) -> None:
        by_socket, failed = self.queued, self.result.failed
        for change in changes:
            try:
                sock, request = encode(change)
            except KeyError as exc:  # a device that does not exist (any more)
                failed.append((change, _no_device(exc)))
                continue
            except OSError as exc:  # e.g. a namespace that could not be created
                failed.append((change, exc.strerror or str(exc)))
                continue
            queued = by_socket.get(id(sock))
            if queued is None:
                queued = by_socket[id(sock)] = (sock.start_batch(), [])
            queued[0].add(*request)
            queued[1].append(change)

    def _send_queued(self) -> list[Change]:
        by_socket, self.queued, self.created = self.queued, {}, False
        failed = self.result.failed
        acknowledged: list[Change] = []
        for batch, pending in by_socket.values():
            for change, reply in zip(pending, batch.replies(), strict=True):
                if reply.ok or (change.action == "delete" and reply.error in GONE):
                    acknowledged.append(change)
                else:
                    failed.append((change, reply.describe()))
        return acknowledged


def _no_device(exc: KeyError) -> str:
    # the kinds look devices up by name in the applier's ``links``
    return f"device {exc.args[0]} does not exist"


def apply_plan(
    kernel: Kernel, plan: Plan, links: dict[str, dict[str, int]], protocol: int
) -> ApplyResult:
    result = _Applier(kernel, links, protocol).run(plan.changes)
    metrics.changes(result)
    return result
