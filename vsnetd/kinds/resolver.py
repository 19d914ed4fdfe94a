"""Resolver settings of a VS namespace: ``/etc/netns/<name>/resolv.conf``.

That is the iproute2 convention: ``ip netns exec`` bind-mounts it over /etc/resolv.conf,
and so can anything that resolves names on behalf of a VS. Ownership: the file starts with
vsnet's header line; a resolv.conf without it is foreign and never overwritten.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, cast

from vsnetd.kinds.kind import Applier, Inside, Kind, Looking, NamespaceObserver

if TYPE_CHECKING:
    from vsnetd.netlink import RtnlSocket
    from vsnetd.state import Change

ETC_NETNS = Path("/etc/netns")
HEADER = "# managed by vsnet: edit /etc/vsnet/servers.yaml instead\n"
HEADER_BYTES = HEADER.encode()


class ResolverFile(NamedTuple):
    netns: str
    content: str  # without the header

    @property
    def kind(self) -> Literal["resolver"]:
        return "resolver"

    @property
    def key(self) -> tuple[str]:
        return (self.netns,)

    def describe(self) -> str:
        lines = "; ".join(line for line in self.content.splitlines() if line)
        return f"resolv.conf netns {self.netns}: {lines}"

    def as_json(self) -> dict[str, Any]:
        return {"kind": "resolver", "netns": self.netns, "content": self.content}


def render(servers: list[str], search: list[str], options: list[str]) -> str:
    lines = [f"nameserver {server}" for server in servers]
    if search:
        lines.append("search " + " ".join(search))
    if options:
        lines.append("options " + " ".join(options))
    return "\n".join(lines) + "\n"


def path_of(netns: str) -> Path:
    return ETC_NETNS / netns / "resolv.conf"


def namespaces_with_files() -> set[str]:
    """The names under /etc/netns: a namespace not among them has no resolver file, which
    spares :func:`observe` a failed open per namespace."""
    try:
        return set(os.listdir(ETC_NETNS))
    except OSError:
        return set()


def observe(netns: str) -> tuple[ResolverFile | None, bool]:
    """(vsnet's file, whether a foreign one stands there)."""
    try:
        text = path_of(netns).read_text()
    except OSError:
        return None, False
    except UnicodeDecodeError:  # not text vsnet wrote (it writes ASCII): someone else's
        return None, True
    if text.startswith(HEADER):
        return ResolverFile(netns, text[len(HEADER):]), False
    return None, True


def _refuse_foreign(path: Path) -> None:
    """Raise unless ``path`` is absent or vsnet's: the last look before a write or an
    unlink (a file may appear after the observe that planned the change, or under a
    namespace that did not exist then)."""
    try:
        with path.open("rb") as file:
            head = file.read(len(HEADER_BYTES))
    except FileNotFoundError:
        return
    if head != HEADER_BYTES:
        raise FileExistsError(errno.EEXIST, f"{path} was not written by vsnet: left as it is")


def write(obj: ResolverFile) -> None:
    path = path_of(obj.netns)
    path.parent.mkdir(parents=True, exist_ok=True)
    _refuse_foreign(path)
    partial = path.with_name(".resolv.conf.vsnet")
    partial.write_text(HEADER + obj.content)
    partial.replace(path)  # readers see the old file or the new one, never half of one


def delete(obj: ResolverFile) -> None:
    path = path_of(obj.netns)
    _refuse_foreign(path)
    path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        path.parent.rmdir()  # only when vsnet's file was all there was


class ResolverKind(Kind[ResolverFile]):
    """Resolver files: under /etc/netns, so they outlive their namespace and are removed
    when it goes; a file without vsnet's header stands in the way."""

    name = "resolver"

    def observe_machine(self, look: Looking) -> None:
        """The files of namespaces that do not exist (yet): a VS about to be created
        there must not take a foreign one for free room. Those of existing namespaces
        are :meth:`observer`'s."""
        for netns in namespaces_with_files() - look.namespaces.keys():
            found, foreign = observe(netns)
            if found is not None:
                look.state.add(found)
            elif foreign:
                look.state.add_foreign(ResolverFile(netns, ""))

    def observer(self, look: Looking) -> NamespaceObserver[ResolverFile]:
        with_files = namespaces_with_files()

        def file_of(_sock: RtnlSocket, inside: Inside) -> list[tuple[ResolverFile, bool]]:
            netns = inside.netns
            if netns not in with_files:
                return []
            found, foreign = observe(netns)
            if found is not None:
                return [(found, True)]
            return [(ResolverFile(netns, ""), False)] if foreign else []

        return file_of

    def outlives(self, obj: ResolverFile) -> bool:
        return True

    def slot(self, obj: ResolverFile) -> tuple[str]:
        return (obj.netns,)

    def conflict(self, found: ResolverFile) -> str:
        return f"/etc/netns/{found.netns}/resolv.conf was not written by vsnet"

    def apply(self, applier: Applier, changes: list[Change]) -> None:
        def change_one(change: Change) -> None:
            obj = cast(ResolverFile, change.obj)
            if change.action == "delete":
                delete(obj)
            else:
                write(obj)

        applier.each(changes, change_one)


KIND = ResolverKind()
