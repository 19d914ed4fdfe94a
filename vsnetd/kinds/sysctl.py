"""Per-namespace sysctls (``net.*`` keys read and written inside a VS namespace).

``/proc/sys/net`` shows the network namespace of the thread that opens it, so the
calling thread enters the namespace for the read or write and comes back.

vsnet only sets values; removing a key from the config leaves the value as it is (the
previous one is not known), and a namespace vsnet removes takes its sysctls with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, cast

from vsnetd.kinds.kind import Applier, Inside, Kind, Looking, NamespaceObserver
from vsnetd.syscalls import entered_netns

if TYPE_CHECKING:
    from vsnetd.netlink import RtnlSocket
    from vsnetd.state import Change

PROC_SYS = Path("/proc/sys")



class Sysctl(NamedTuple):
    netns: str
    name: str  # net.ipv4.conf.all.rp_filter
    value: str

    @property
    def kind(self) -> Literal["sysctl"]:
        return "sysctl"

    @property
    def key(self) -> tuple[str, str]:
        return (self.netns, self.name)

    def describe(self) -> str:
        return f"sysctl {self.name}={self.value} netns {self.netns}"

    def as_json(self) -> dict[str, Any]:
        return {"kind": "sysctl", "netns": self.netns, "name": self.name, "value": self.value}


def path_of(name: str) -> Path:
    # interface names may contain dots (eth0.100): keys with them use '/' instead
    return PROC_SYS.joinpath(*name.split("."))


def read(netns_fd: int, names: list[str]) -> dict[str, str]:
    """The current values of ``names`` in a namespace (missing keys are left out)."""
    values: dict[str, str] = {}
    with entered_netns(netns_fd):
        for name in names:
            try:
                values[name] = " ".join(path_of(name).read_text().split())
            except OSError:
                continue
    return values


def write(netns_fd: int, obj: Sysctl) -> None:
    with entered_netns(netns_fd):
        path_of(obj.name).write_text(obj.value + "\n")


class SysctlKind(Kind[Sysctl]):
    """Sysctls: read only where the config sets keys, set and never unset."""

    name = "sysctl"
    deletable = False

    def observer(self, look: Looking) -> NamespaceObserver[Sysctl]:
        kernel, sysctls = look.kernel, look.scope.sysctls

        def values_in(_sock: RtnlSocket, inside: Inside) -> list[tuple[Sysctl, bool]]:
            netns = inside.netns
            keys = sysctls.get(netns) if netns else None
            if not keys:
                return []
            return [(Sysctl(netns, key, value), True)
                    for key, value in read(kernel.netns_fd(netns), list(keys)).items()]

        return values_in

    def apply(self, applier: Applier, changes: list[Change]) -> None:
        kernel = applier.kernel

        def set_one(change: Change) -> None:
            obj = cast(Sysctl, change.obj)
            write(kernel.netns_fd(obj.netns), obj)

        applier.each(changes, set_one)


KIND = SysctlKind()
