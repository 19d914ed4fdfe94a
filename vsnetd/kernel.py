"""The netlink sockets vsnet talks through: one in its own namespace, one per managed
namespace, opened once (a thread ``setns``es in, opens, comes back: no fork) and kept."""

from __future__ import annotations

import os
import resource
from typing import TYPE_CHECKING

from vsnetd.kinds import namespace
from vsnetd.netlink import RtnlSocket
from vsnetd.syscalls import CLONE_NEWNET, entered_netns, setns

if TYPE_CHECKING:
    from vsnetd.forked import Helper
    from vsnetd.state import ObservedState

ROOT = ""  # the namespace vsnet itself runs in


def _raise_fd_limit() -> None:
    # one socket and one namespace fd per managed namespace: 1,000 VS outgrow 1,024 fds
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Kernel:
    """``helper_from``: a look into at least this many namespaces may share the work with
    a forked child process (vsnetd/forked.py); None, never (a process with threads)."""

    def __init__(self, helper_from: int | None = None) -> None:
        _raise_fd_limit()
        self.helper_from = helper_from
        # the child of the next look, started ahead of it (vsnetd/observe.py look_ahead)
        self.helper: Helper[ObservedState] | None = None
        self.root_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self.root = RtnlSocket()
        self._sockets: dict[str, RtnlSocket] = {ROOT: self.root}
        self._fds: dict[str, tuple[int, int]] = {}  # name -> (fd, inode)

    def __enter__(self) -> Kernel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.helper is not None:  # a look started ahead and never made
            self.helper.stop()
            self.helper = None
        for name in list(self._fds):
            self.forget(name)
        self.root.close()
        os.close(self.root_fd)

    def netns_fd(self, name: str) -> int:
        """An open fd of namespace ``name``, reopened if the name now means another one."""
        cached = self._fds.get(name)
        try:
            inode = os.stat(namespace.NETNS_DIR / name).st_ino
        except FileNotFoundError:
            self.forget(name)  # unmounted by hand: holding on would keep it (and its devices)
            raise
        if cached is not None and cached[1] == inode:
            return cached[0]
        self.forget(name)
        fd = namespace.open_fd(name)
        self._fds[name] = (fd, inode)
        return fd

    def named_namespaces(self) -> int:
        """How many names /run/netns holds (vsnet's namespaces and others)."""
        try:
            return len(os.listdir(namespace.NETNS_DIR))
        except OSError:
            return 0

    def socket(self, name: str) -> RtnlSocket:
        """The netlink socket inside namespace ``name`` (ROOT: vsnet's own)."""
        if name == ROOT:
            return self.root
        fd = self.netns_fd(name)
        sock = self._sockets.get(name)
        if sock is None:
            with entered_netns(fd):
                sock = RtnlSocket()
            self._sockets[name] = sock
        return sock

    def open_sockets(self, inodes: dict[str, int]) -> dict[str, RtnlSocket]:
        """The sockets of many namespaces at once, given the inode each name is known to
        mount (from :func:`namespace.scan`): no second ``stat``, and the thread enters
        each missing namespace in turn and comes back once, instead of twice per
        namespace. A namespace gone meanwhile is left out."""
        sockets: dict[str, RtnlSocket] = {}
        missing: list[tuple[str, int]] = []
        for name, inode in inodes.items():
            cached = self._fds.get(name)
            if cached is not None and cached[1] == inode and name in self._sockets:
                sockets[name] = self._sockets[name]
                continue
            self.forget(name)
            try:
                fd = namespace.open_fd(name)
            except OSError:
                continue
            if os.fstat(fd).st_ino != inode:  # replaced since it was scanned
                os.close(fd)
                continue
            self._fds[name] = (fd, inode)
            missing.append((name, fd))
        if missing:
            with open("/proc/thread-self/ns/net", "rb", buffering=0) as home:
                try:
                    for name, fd in missing:
                        setns(fd, CLONE_NEWNET)
                        sockets[name] = self._sockets[name] = RtnlSocket()
                finally:
                    setns(home.fileno(), CLONE_NEWNET)
        return sockets

    def forget(self, name: str) -> None:
        """Close what vsnet holds of a namespace (before it is deleted, or when stale)."""
        sock = self._sockets.pop(name, None) if name != ROOT else None
        if sock is not None:
            sock.close()
        cached = self._fds.pop(name, None)
        if cached is not None:
            os.close(cached[0])
