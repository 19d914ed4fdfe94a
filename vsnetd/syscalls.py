"""The few Linux system calls Python 3.11's ``os`` lacks: unshare, setns, mount, umount2,
prctl(PR_SET_PDEATHSIG)."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from contextlib import contextmanager

CLONE_NEWNET = 0x40000000
CLONE_NEWNS = 0x00020000
CLONE_FS = 0x00000200
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SHARED = 1 << 20
MNT_DETACH = 0x2
PR_SET_PDEATHSIG = 1

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{what}: {os.strerror(error)}")


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(fd, nstype), "setns")


def mount(source: str, target: str, fstype: str | None, flags: int) -> None:
    _check(
        _libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None,
                    ctypes.c_ulong(flags), None),
        f"mount {target}",
    )


def umount(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(target.encode(), flags), f"umount {target}")


def set_parent_death_signal(signal: int) -> None:
    """The calling thread's process gets ``signal`` when the thread that forked it ends."""
    _check(_libc.prctl(PR_SET_PDEATHSIG, signal), "prctl")


@contextmanager
def entered_netns(fd: int, home: int | None = None) -> Iterator[None]:
    """Run a block with the calling thread in the network namespace ``fd`` refers to,
    then back to ``home`` (an fd of the thread's namespace; looked up when not given).

    Only this thread moves (the rest of the process stays where it is); sockets opened
    inside the block belong to that namespace for good.
    """
    if home is None:
        with (open("/proc/thread-self/ns/net", "rb", buffering=0) as current,
              entered_netns(fd, current.fileno())):
            yield
        return
    setns(fd, CLONE_NEWNET)
    try:
        yield
    finally:
        setns(home, CLONE_NEWNET)
