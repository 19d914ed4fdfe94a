"""A tiny TCP peer run inside another namespace (``ip netns exec NS python netpeer.py``).

    netpeer.py connect ADDRESS PORT [--device DEV]   print what the server says
    netpeer.py accept PORT [--device DEV]            print the peer address of one connection
"""

from __future__ import annotations

import argparse
import socket
import sys

TIMEOUT = 3.0


def _bound(family: int, device: str | None) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT)
    if device:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
    return sock


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["connect", "accept"])
    parser.add_argument("args", nargs="+")
    parser.add_argument("--device")
    opts = parser.parse_args()
    if opts.mode == "connect":
        address, port = opts.args[0], int(opts.args[1])
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        with _bound(family, opts.device) as sock:
            sock.connect((address, port))
            print(sock.recv(256).decode())
        return 0
    with _bound(socket.AF_INET6, opts.device) as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("::", int(opts.args[0])))
        server.listen()
        print("listening", flush=True)
        conn, peer = server.accept()
        with conn:
            conn.sendall(b"ok")
        print(peer[0].removeprefix("::ffff:"), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
