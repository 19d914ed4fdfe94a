"""The service a cluster node offers, run inside the node (``python cluster_app.py NS...``).

It answers every TCP connection on port 7000 with the node's name, then closes it:

* in the node's own namespace, on every address (a pbr VS's addresses and an IPaddr2
  address land there when the node holds them);
* inside each netns VS's namespace NS while it exists: the app watches ``/run/netns/NS``
  every 2 ms, listens inside as soon as it appears and closes its socket as soon as it
  goes (an open socket would keep a deactivated namespace, and its addresses, alive).

On a real cluster the application is a resource ordered after the VS; here it follows the
VS by itself so that the measurements are vsnet's and Pacemaker's, not a second agent's.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import sys

from vsnetd.syscalls import entered_netns

PORT = 7000
WATCH_SECONDS = 0.002


def listener(netns_fd: int | None = None) -> socket.socket:
    def make() -> socket.socket:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # IPv4 as well
        sock.bind(("::", PORT))
        sock.listen(64)
        sock.setblocking(False)
        return sock

    if netns_fd is None:
        return make()
    with entered_netns(netns_fd):
        return make()


def inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def main(namespaces: list[str]) -> int:
    name = socket.gethostname().encode()
    selector = selectors.DefaultSelector()
    selector.register(listener(), selectors.EVENT_READ)
    inside: dict[str, tuple[int, socket.socket]] = {}  # namespace -> (inode, listener)
    while True:
        for netns in namespaces:
            path = f"/run/netns/{netns}"
            now = inode(path)
            held = inside.get(netns)
            if held is not None and held[0] != now:
                selector.unregister(held[1])
                held[1].close()
                del inside[netns]
            if now is not None and netns not in inside:
                # vsnetd creates the file, then mounts the namespace on it: until then
                # setns() refuses it; the next round tries again
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                    try:
                        sock = listener(fd)
                    finally:
                        os.close(fd)
                except OSError:
                    continue
                inside[netns] = (now, sock)
                selector.register(sock, selectors.EVENT_READ)
        for key, _events in selector.select(WATCH_SECONDS):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                conn, _peer = sock.accept()
            except OSError:
                continue
            with conn, contextlib.suppress(OSError):
                conn.sendall(name)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
