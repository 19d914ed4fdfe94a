"""apply: Plan -> kernel. The only module that changes kernel state.

The plan is applied kind by kind in its own order. Netlink requests of one kind go out
batched per namespace socket (many per ``send``, one ACK each); namespaces, sysctls and
resolver files are handled directly. A failing change fails its VS only: the kernel
processes every message of a batch on its own, and the first error of each VS is
reported with the kernel's own words.
"""

from __future__ import annotations

import errno
import itertools
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from vsnetd import metrics
from vsnetd.kernel import ROOT, Kernel
from vsnetd.kinds import (
    Address,
    Confinement,
    Link,
    Namespace,
    ResolverFile,
    Route,
    Rule,
    Sysctl,
    address,
    confinement,
    link,
    namespace,
    resolver,
    route,
    rule,
    sysctl,
)
from vsnetd.netlink import RtnlSocket
from vsnetd.state import Change, Plan

# A delete that finds nothing has reached its goal (e.g. an admin removed it meanwhile).
GONE = {-errno.ENOENT, -errno.ESRCH, -errno.EADDRNOTAVAIL, -errno.ENODEV}

Request = tuple[int, int, bytes]


@dataclass(slots=True)
class ApplyResult:
    applied: list[Change] = field(default_factory=list)
    failed: list[tuple[Change, str]] = field(default_factory=list)
    links: dict[str, dict[str, int]] = field(default_factory=dict)  # devices known after

    def failures_by_server(self) -> dict[str, str]:
        """The first error of each VS (later ones usually follow from it)."""
        first: dict[str, str] = {}
        for change, error in self.failed:
            first.setdefault(change.server or "(removed)", f"{change.obj.describe()}: {error}")
        return first


class _Applier:
    def __init__(self, kernel: Kernel, links: dict[str, dict[str, int]], protocol: int) -> None:
        self.kernel = kernel
        self.links = {netns: dict(names) for netns, names in links.items()}
        self.protocol = protocol
        self.result = ApplyResult(links=self.links)

    def run(self, changes: Iterable[Change]) -> ApplyResult:
        for kind, group in itertools.groupby(changes, key=lambda c: c.obj.kind):
            batch = list(group)
            if kind == "namespace":
                self._each(batch, self._namespace)
            elif kind == "link":
                self._links(batch)
            elif kind == "sysctl":
                self._each(batch, self._sysctl)
            elif kind == "resolver":
                self._each(batch, self._resolver)
            elif kind == "confinement":
                self._each(batch, self._confinement)
            else:
                self._send(batch, self._address_route_rule)
        return self.result

    # ---------------------------------------------------------------- direct changes

    def _each(self, changes: list[Change], do: Callable[[Change], None]) -> None:
        for change in changes:
            try:
                do(change)
            except (OSError, KeyError) as exc:
                self.result.failed.append((change, _describe_error(exc)))
            else:
                self.result.applied.append(change)

    def _namespace(self, change: Change) -> None:
        assert isinstance(change.obj, Namespace)
        name = change.obj.name
        if change.action == "delete":
            self.kernel.forget(name)
            namespace.delete(name)
            self.links.pop(name, None)
        else:
            namespace.create(name)
            self.links[name] = {"lo": 1}

    def _sysctl(self, change: Change) -> None:
        assert isinstance(change.obj, Sysctl)
        sysctl.write(self.kernel.netns_fd(change.obj.netns), change.obj)

    def _resolver(self, change: Change) -> None:
        assert isinstance(change.obj, ResolverFile)
        if change.action == "delete":
            resolver.delete(change.obj)
        else:
            resolver.write(change.obj)

    def _confinement(self, change: Change) -> None:
        assert isinstance(change.obj, Confinement)
        if change.action == "delete":
            confinement.delete(change.obj)
        else:
            confinement.ensure(change.obj)

    # ---------------------------------------------------------------- netlink

    def _address_route_rule(self, change: Change) -> tuple[RtnlSocket, Request]:
        obj = change.obj
        assert isinstance(obj, Address | Route | Rule)
        links = self.links.get(obj.netns, {})
        sock = self.kernel.socket(obj.netns)
        if isinstance(obj, Address):
            return sock, address.request(change.action, obj, self.protocol, links)
        if isinstance(obj, Route):
            return sock, route.request(change.action, obj, self.protocol, links)
        return sock, rule.request(change.action, obj, self.protocol, links)

    def _link(self, change: Change) -> tuple[RtnlSocket, Request]:
        obj = change.obj
        assert isinstance(obj, Link)
        root = self.links.get(ROOT, {})
        here = self.links.get(obj.netns, {})
        if change.action == "delete":
            if obj.type == "move":  # hand the uplink back to the root namespace
                return self.kernel.socket(obj.netns), link.move_request(
                    here[obj.name], self.kernel.root_fd, "", obj.up)
            return self.kernel.socket(obj.netns), link.delete_request(here[obj.name])
        if change.action == "replace" or obj.type == "loopback":
            return self.kernel.socket(obj.netns), link.set_up_request(here[obj.name], obj.up)
        target = self.kernel.netns_fd(obj.netns) if obj.netns else None
        if obj.type == "move":
            assert target is not None
            return self.kernel.root, link.move_request(root[obj.name], target, link.ALIAS, obj.up)
        assert obj.parent is not None
        return self.kernel.root, link.create_request(obj, root[obj.parent], target)

    def _links(self, changes: list[Change]) -> None:
        failed_before = len(self.result.failed)
        self._send(changes, self._link)
        failed = {id(c) for c, _error in self.result.failed[failed_before:]}
        created = [c for c in changes if c.action == "add" and id(c) not in failed
                   and isinstance(c.obj, Link) and c.obj.type in ("vlan", "macvlan")]
        # learn the indexes of devices that appeared where vsnet did not choose them
        touched = {c.obj.netns for c in changes
                   if c.action == "add" and isinstance(c.obj, Link)
                   and (c.obj.type == "move" or not c.obj.netns)}
        for change in created:
            obj = change.obj
            assert isinstance(obj, Link)
            if obj.netns:
                self.links.setdefault(obj.netns, {})[obj.name] = obj.ifindex
        for netns in touched:
            try:
                self.links[netns] = link.observe_links(self.kernel.socket(netns))
            except OSError:
                continue
        # the ownership tag, in a second request: the kernel ignores it on create. A device
        # counts as applied once tagged (untagged, vsnet would not recognise it as its own).
        untagged = {id(c) for c in created}
        self.result.applied = [c for c in self.result.applied if id(c) not in untagged]
        self._send(created, self._tag)

    def _tag(self, change: Change) -> tuple[RtnlSocket, Request]:
        obj = change.obj
        assert isinstance(obj, Link)
        index = self.links[obj.netns][obj.name]
        return self.kernel.socket(obj.netns), link.alias_request(index, link.ALIAS)

    def _send(
        self, changes: list[Change], encode: Callable[[Change], tuple[RtnlSocket, Request]]
    ) -> None:
        """Encode each change for its socket; one batch per socket; collect the ACKs."""
        by_socket: dict[int, tuple[RtnlSocket, list[tuple[Change, Request]]]] = {}
        for change in changes:
            try:
                sock, request = encode(change)
            except KeyError as exc:  # a device that does not exist (any more)
                self.result.failed.append((change, f"device {exc.args[0]} does not exist"))
                continue
            except OSError as exc:  # e.g. a namespace that could not be created
                self.result.failed.append((change, _describe_error(exc)))
                continue
            by_socket.setdefault(id(sock), (sock, []))[1].append((change, request))
        for sock, pending in by_socket.values():
            replies = sock.batch(request for _change, request in pending)
            for (change, _request), reply in zip(pending, replies, strict=True):
                if reply.ok or (change.action == "delete" and reply.error in GONE):
                    self.result.applied.append(change)
                else:
                    self.result.failed.append((change, reply.describe()))


def _describe_error(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return f"device {exc.args[0]} does not exist"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def apply_plan(
    kernel: Kernel, plan: Plan, links: dict[str, dict[str, int]], protocol: int
) -> ApplyResult:
    for device in sorted({c.obj.device for c in plan.changes
                          if c.action == "delete" and isinstance(c.obj, Address)
                          and not c.obj.netns and c.obj.family == socket.AF_INET}):
        address.protect_secondaries(device)
    result = _Applier(kernel, links, protocol).run(plan.changes)
    metrics.changes(result)
    return result
