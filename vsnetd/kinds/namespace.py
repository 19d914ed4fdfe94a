"""Named network namespaces (``/run/netns/<name>``), created without forking.

``ip netns add`` and pyroute2 fork a process per namespace (~8-12 ms). vsnet does what the
paper describes instead: the calling thread ``unshare``s a new network namespace, the
namespace is bind-mounted to ``/run/netns/<name>`` (so ``ip netns exec`` and ``ip -n`` see
it), a netlink socket is opened inside, and the thread ``setns``es back: ~0.3 ms. The
socket stays in the namespace for good.

Ownership: a namespace is vsnet's when ``/run/vsnet/netns/<name>`` records the inode of
the namespace mounted at ``/run/netns/<name>``. A namespace of the same name without that
record (or with another inode) is foreign: a conflict, never removed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, cast

from vsnetd import syscalls
from vsnetd.kinds.kind import Applier, Kind, Looking, Owners

if TYPE_CHECKING:
    from vsnetd.state import Change

NETNS_DIR = Path("/run/netns")
RECORD_DIR = Path("/run/vsnet/netns")

# Where the /run/netns bind mounts are made. None: vsnet's own mount namespace. Under
# systemd with ProtectSystem=, vsnetd runs in a mount namespace of its own whose mounts do
# not reach the host; the unit passes PID 1's (``vsnetd --mount-ns /proc/1/ns/mnt``) so
# `ip netns` and the application see the namespaces. Never the default: a test sandbox
# must not mount anything in the machine's namespace.
_mount_namespace: str | None = None
_prepared = False  # /run/netns made a shared mount point in that mount namespace


def use_mount_namespace(path: str | None) -> None:
    global _mount_namespace, _prepared
    _mount_namespace = path
    _prepared = False


def _mounting(work: Callable[[], None]) -> None:
    """Run ``work`` in the mount namespace the namespaces are mounted in."""
    if _mount_namespace is None:
        work()
        return
    failure: list[BaseException] = []

    def thread() -> None:
        # a thread of its own leaves the fs context it shares with the process, enters
        # the other mount namespace, and ends there: nothing else moves
        try:
            syscalls.unshare(syscalls.CLONE_FS)
            fd = os.open(str(_mount_namespace), os.O_RDONLY | os.O_CLOEXEC)
            try:
                syscalls.setns(fd, syscalls.CLONE_NEWNS)
            finally:
                os.close(fd)
            work()
        except BaseException as exc:
            failure.append(exc)

    worker = threading.Thread(target=thread, name="netns-mount")
    worker.start()
    worker.join()
    if failure:
        raise failure[0]


class Namespace(NamedTuple):
    name: str

    @property
    def kind(self) -> Literal["namespace"]:
        return "namespace"

    @property
    def key(self) -> tuple[str]:
        return (self.name,)

    @property
    def netns(self) -> str:
        return ""  # a namespace is made from the root namespace

    def describe(self) -> str:
        return f"netns {self.name}"

    def as_json(self) -> dict[str, Any]:
        return {"kind": "namespace", "name": self.name}


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except OSError:
        return None


def scan() -> tuple[dict[str, int], list[str]]:
    """(vsnet's namespaces, each with the inode mounted at its name; foreign ones) under
    /run/netns. Plain ``str`` paths and one read per record: at 1,000 namespaces this runs
    on every plan, and pathlib's object per path cost more than the system calls."""
    owned: dict[str, int] = {}
    foreign: list[str] = []
    try:
        names = sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return owned, foreign
    try:
        records = set(os.listdir(RECORD_DIR))
    except OSError:
        records = set()
    netns_dir, record_dir = f"{NETNS_DIR}/", f"{RECORD_DIR}/"
    for name in names:
        try:
            inode: int | None = os.stat(netns_dir + name).st_ino
        except OSError:
            inode = None
        recorded = None
        if name in records:
            try:
                fd = os.open(record_dir + name, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    recorded = int(os.read(fd, 64))
                finally:
                    os.close(fd)
            except (OSError, ValueError):
                recorded = None
        if inode is not None and inode == recorded:
            owned[name] = inode
        else:
            foreign.append(name)
    return owned, foreign


def _prepare_mount_dir() -> None:
    """Make /run/netns a shared mount point, as ``ip netns add`` does, so namespaces
    mounted later show up in other mount namespaces (``ip netns exec``, services)."""
    global _prepared
    if _prepared:  # once per process and mount namespace: 1,000 remounts cost 30 ms
        return
    NETNS_DIR.mkdir(parents=True, exist_ok=True)
    try:
        syscalls.mount("none", str(NETNS_DIR), None, syscalls.MS_SHARED | syscalls.MS_REC)
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # EINVAL: not a mount point yet
            raise
        syscalls.mount(str(NETNS_DIR), str(NETNS_DIR), None, syscalls.MS_BIND | syscalls.MS_REC)
        syscalls.mount("none", str(NETNS_DIR), None, syscalls.MS_SHARED | syscalls.MS_REC)
    _prepared = True


def create(name: str) -> None:
    """Create and mount the namespace ``name``; the calling thread ends where it started."""
    _mounting(lambda: _create(name))
    RECORD_DIR.mkdir(parents=True, exist_ok=True)
    (RECORD_DIR / name).write_text(f"{(NETNS_DIR / name).stat().st_ino}\n")


def _create(name: str) -> None:
    _prepare_mount_dir()
    target = NETNS_DIR / name
    fd = os.open(target, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o444)
    os.close(fd)
    try:
        with open("/proc/thread-self/ns/net") as home:
            syscalls.unshare(syscalls.CLONE_NEWNET)
            try:
                syscalls.mount("/proc/thread-self/ns/net", str(target), None, syscalls.MS_BIND)
            finally:
                syscalls.setns(home.fileno(), syscalls.CLONE_NEWNET)
    except BaseException:
        _unmount(target)
        raise


def _unmount(target: Path) -> None:
    with contextlib.suppress(OSError):
        syscalls.umount(str(target), syscalls.MNT_DETACH)
    target.unlink(missing_ok=True)


def delete(name: str) -> None:
    """Unmount and forget a namespace of vsnet's. Its devices go when the last reference
    (a socket, a process) does."""
    _mounting(lambda: _unmount(NETNS_DIR / name))
    (RECORD_DIR / name).unlink(missing_ok=True)


def open_fd(name: str) -> int:
    """A file descriptor referring to the namespace (for setns and IFLA_NET_NS_FD)."""
    return os.open(f"{NETNS_DIR}/{name}", os.O_RDONLY | os.O_CLOEXEC)


class NamespaceKind(Kind[Namespace]):
    """Namespaces are found under /run/netns; the other kinds are then looked for inside
    each of vsnet's, and go with it when it goes."""

    name = "namespace"
    is_namespace = True

    def observe_machine(self, look: Looking) -> None:
        owned, foreign = scan()
        look.namespaces = owned
        for name in owned:
            look.state.add(Namespace(name))
        for name in foreign:
            look.state.add_foreign(Namespace(name))

    def namespace(self, obj: Namespace) -> str:
        return obj.name

    def owner(self, obj: Namespace, owners: Owners) -> str | None:
        return owners.of_netns(obj.name)

    def slot(self, obj: Namespace) -> tuple[str]:
        return (obj.name,)

    def conflict(self, found: Namespace) -> str:
        return f"namespace {found.name} exists and was not created by vsnet"

    def apply(self, applier: Applier, changes: list[Change]) -> None:
        def change_one(change: Change) -> None:
            name = cast(Namespace, change.obj).name
            if change.action == "delete":
                applier.kernel.forget(name)
                delete(name)
                applier.links.pop(name, None)
            else:
                create(name)
                applier.links[name] = {"lo": 1}

        applier.each(changes, change_one)


KIND = NamespaceKind()
