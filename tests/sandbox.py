"""Sandboxes for tests, the demo and benchmarks: never touch the machine's own network.

Test tooling: it lives in the checkout's tests/ and is not part of the installed package.

``python -m tests.sandbox -- CMD ...`` runs CMD inside fresh network + mount namespaces
(``unshare --net --mount``) with private tmpfs mounts on ``/run``, ``/etc/netns`` and
``/etc/iproute2/rt_protos.d`` (where vsnet's protocol name is registered, so ``ip rule``
prints ``proto vsnet``) and a private bpffs on ``/sys/fs/bpf``. Everything created inside
dies with the namespaces.

Inside a sandbox, :func:`fresh_netns` gives the calling thread a further, empty network
namespace for the length of a ``with`` block: one per test.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from vsnetd.state import VSNET_PROTOCOL
from vsnetd.syscalls import CLONE_NEWNET, entered_netns, setns, unshare

MARKER = "VSNET_SANDBOX"
PROTOCOL_NAMES = f"{VSNET_PROTOCOL} vsnet\n"


def inside() -> bool:
    return os.environ.get(MARKER) == "1"


def command(argv: Sequence[str]) -> list[str]:
    """The command line that runs ``argv`` in a new sandbox."""
    # this file by its path: the caller's working directory need not be the checkout's root
    return ["unshare", "--net", "--mount", "--propagation", "private", "--",
            sys.executable, str(Path(__file__).resolve()), "--", *argv]


def reexec(argv: Sequence[str]) -> NoReturn:
    """Replace this process by ``argv`` running in a new sandbox."""
    os.environ[MARKER] = "setup"  # tells the re-executed module to prepare the mounts
    cmd = command(argv)
    os.execvp(cmd[0], cmd)


def _mount_tmpfs(target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "vsnet-sandbox", str(target)],
                   check=True)


def _prepare() -> None:
    """Run inside the fresh namespaces: private mounts, loopback up."""
    _mount_tmpfs(Path("/run"))
    for sub in ("netns", "vsnet"):
        Path("/run", sub).mkdir()
    _mount_tmpfs(Path("/etc/netns"))
    protos = Path("/etc/iproute2/rt_protos.d")
    _mount_tmpfs(protos)
    (protos / "vsnet.conf").write_text(PROTOCOL_NAMES)
    # a bpffs of the sandbox's own (each mount is a new instance): pins made inside vanish
    # with it. cgroups have no such thing: tests name theirs uniquely and remove them.
    subprocess.run(["mount", "-t", "bpf", "vsnet-sandbox", "/sys/fs/bpf"], check=False)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)


@contextmanager
def fresh_netns() -> Iterator[None]:
    """Move the calling thread into a new, empty network namespace; back afterwards.

    Child processes started inside the block inherit it. It disappears (with every link,
    address, route and rule in it) once nothing refers to it any more.
    """
    if not inside():
        raise RuntimeError("fresh_netns() is only for use inside a sandbox")
    with open("/proc/thread-self/ns/net") as previous:
        unshare(CLONE_NEWNET)
        try:
            subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
            yield
        finally:
            setns(previous.fileno(), CLONE_NEWNET)


def socket_in(netns: str | None, family: int = socket.AF_INET,
              kind: int = socket.SOCK_STREAM) -> socket.socket:
    """A socket created inside the named namespace (None: where the thread is), the paper's
    trick: the thread enters, opens it and comes back; the socket stays there for good."""
    if netns is None:
        return socket.socket(family, kind)
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        with entered_netns(fd):
            return socket.socket(family, kind)
    finally:
        os.close(fd)


def sh(*argv: str, netns: str | None = None, check: bool = True) -> str:
    """Run a command (optionally in a named namespace); return its stdout."""
    prefix = ["ip", "netns", "exec", netns] if netns else []
    result = subprocess.run([*prefix, *argv], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr}")
    return result.stdout


def ip(*args: str, netns: str | None = None) -> str:
    return sh("ip", *(["-n", netns] if netns else []), *args)


def ip_json(*args: str, netns: str | None = None) -> Any:
    out = ip("-j", *args, netns=netns)
    return json.loads(out) if out.strip() else []


class NotifySocket:
    """A NOTIFY_SOCKET for a daemon under test or benchmark, read as a service manager does:
    all the time, by a thread (sd_notify blocks once the socket's queue is full)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[dict[str, str]] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            if not data:  # shut down by close (sd_notify sends no empty datagram)
                return
            self.messages.append(dict(line.split("=", 1) for line in data.decode().splitlines()
                                      if "=" in line))

    def poll(self) -> list[dict[str, str]]:
        """Every message so far, each as its KEY=VALUE fields."""
        return list(self.messages)

    def seen(self, key: str, value: str | None = None) -> bool:
        return any(key in m and (value is None or m[key] == value) for m in self.poll())

    def close(self) -> None:
        """Stop reading (the thread ends: a test process that forks must have no other
        thread) and close; what was read stays in ``messages``."""
        if self.sock.fileno() < 0:
            return
        self.sock.shutdown(socket.SHUT_RDWR)  # wakes the reader blocked in recv
        self.reader.join()
        self.sock.close()


def main(argv: Sequence[str]) -> int:
    if not argv or argv[0] != "--" or len(argv) < 2:
        print("usage: python -m tests.sandbox -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("tests.sandbox: must run as root (it creates namespaces)", file=sys.stderr)
        return 1
    marker = os.environ.get(MARKER)
    if marker is None:  # still in the caller's namespaces: re-run ourselves in new ones
        reexec(argv[1:])
    if marker == "setup":
        _prepare()
        os.environ[MARKER] = "1"
    os.execvp(argv[1], list(argv[1:]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
