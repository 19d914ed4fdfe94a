"""Who may use which VS: the caller's credentials against a VS's ``sockets:`` policy.

The caller is known by ``SO_PEERCRED``/``SO_PEERGROUPS`` as of its ``connect()``; a VS's
policy has its user and group names resolved when its entry is read anew (a full reload,
an edit of that entry; a lookup in the event loop could block on a directory service).
Since neither changes during a connection within one generation, the server decides once
per connection, VS and generation (docs/broker-protocol.md, "Authorization").
"""

from __future__ import annotations

import array
import contextlib
import grp
import pwd
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vsnetd.config import ServerConfig

PRIVILEGED_PORTS = 1024
SO_PEERGROUPS = 59

# A verdict: what a caller may do with one VS.
DENIED, UNPRIVILEGED_PORTS, ANY_PORT = 0, 1, 2


@dataclass(frozen=True, slots=True)
class Peer:
    pid: int
    uid: int
    gid: int
    groups: frozenset[int] = frozenset()


def peer_of(conn: socket.socket) -> Peer:
    """The peer's credentials as of its connect(): SO_PEERCRED, SO_PEERGROUPS."""
    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    groups = {gid}
    with contextlib.suppress(OSError):
        packed = conn.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 4 * 1024)
        groups.update(array.array("I", packed[: len(packed) - len(packed) % 4]))
    return Peer(pid, uid, gid, frozenset(groups))


def _ids(names: list[str], lookup: Callable[[str], int]) -> set[int]:
    ids = set()
    for name in names:
        if name.isdigit():
            ids.add(int(name))
            continue
        with contextlib.suppress(KeyError):
            ids.add(lookup(name))
    return ids


@dataclass(frozen=True, slots=True)
class Access:
    """A VS's ``sockets`` policy with names resolved (when its entry is read anew)."""

    uids: frozenset[int] = frozenset()
    gids: frozenset[int] = frozenset()
    privileged_ports: bool = False

    @classmethod
    def of(cls, server: ServerConfig) -> Access:
        policy = server.sockets
        return cls(frozenset(_ids(policy.allow_users, lambda n: pwd.getpwnam(n).pw_uid)),
                   frozenset(_ids(policy.allow_groups, lambda n: grp.getgrnam(n).gr_gid)),
                   policy.privileged_ports)


def verdict(peer: Peer, access: Access) -> int:
    """Root: any port; others listed by user or group: ports from 1024 up, and below
    only with ``privileged_ports: true``; anyone else: denied."""
    if peer.uid == 0:
        return ANY_PORT
    if peer.uid not in access.uids and not peer.groups & access.gids:
        return DENIED
    return ANY_PORT if access.privileged_ports else UNPRIVILEGED_PORTS


def allows(verdict_: int, port: int) -> bool:
    """Whether a verdict lets the caller have a socket on ``port`` (0: any port it is
    given, as for ``socket``)."""
    return verdict_ == ANY_PORT or (verdict_ == UNPRIVILEGED_PORTS
                                    and not 0 < port < PRIVILEGED_PORTS)

