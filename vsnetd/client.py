"""Python client of the socket broker: ready sockets for a VS, no root, no ``setns``.

    from vsnetd import client
    for sock in client.listen("nas1", "tcp", 2049):   # one per VS address
        ...
    out = client.outgoing_socket("nas1", "tcp")        # bound to the VS source, marked
    out.connect(("192.0.2.10", 3260))

UDP with one shared socket (the paper's UDP problem): :func:`sendmsg_marked` sets the
mark of each datagram (SO_MARK control message, Linux >= 5.4), :func:`recvmsg_marked`
reads the mark a datagram arrived with (SO_RCVMARK, Linux >= 5.19) and the address it
was sent to (IP_PKTINFO / IPV6_PKTINFO). See docs/udp.md.
"""

from __future__ import annotations

import array
import json
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vsnetd.broker import BROKER_PATH, MAX_FDS, VERSION

SO_MARK = 36
SO_RCVMARK = 75
IP_PKTINFO = 8
IPV6_RECVPKTINFO = 49
IPV6_PKTINFO = 50
REPLY_MAX = 1 << 20


class BrokerRefused(Exception):
    """The broker said no: ``code`` (forbidden, unknown-server, ...) and its reason."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class Broker:
    """One connection to the broker (several requests may share it)."""

    def __init__(self, path: Path | str = BROKER_PATH, timeout: float | None = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def receive(self) -> tuple[dict[str, Any], list[socket.socket]]:
        """One message and the sockets it carries."""
        data, ancdata, flags, _ = self.sock.recvmsg(
            REPLY_MAX, socket.CMSG_SPACE(MAX_FDS * 4), socket.MSG_CMSG_CLOEXEC)
        fds = array.array("i")
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
        sockets = [socket.socket(fileno=fd) for fd in fds]
        if not data:
            raise ConnectionError("the broker closed the connection")
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            for sock in sockets:
                sock.close()
            raise ConnectionError("a broker message did not fit (truncated)")
        return json.loads(data), sockets

    def request(self, **fields: Any) -> tuple[dict[str, Any], list[socket.socket]]:
        """Send a request; collect every part of the reply."""
        self.sock.send(json.dumps({"v": VERSION, **fields}).encode())
        reply, sockets = self.receive()
        while "event" in reply:  # a subscription's event came first: not the answer
            reply, sockets = self.receive()
        if not reply.get("ok"):
            for sock in sockets:
                sock.close()
            error = reply.get("error", {})
            raise BrokerRefused(error.get("code", "error"), error.get("message", ""))
        while reply.get("part", 1) < reply.get("parts", 1):
            more, more_sockets = self.receive()
            reply["sockets"] = reply.get("sockets", []) + more.get("sockets", [])
            reply["part"] = more.get("part", reply["parts"])
            sockets += more_sockets
        return reply, sockets


def listen(server: str, proto: str, port: int, address: str | None = None, *,
           backlog: int = 128, reuseport: bool = False, path: Path | str = BROKER_PATH
           ) -> list[socket.socket]:
    """Listening (tcp) or bound (udp) sockets on every address of a VS (or one)."""
    fields: dict[str, Any] = {"op": "listen", "server": server, "proto": proto, "port": port,
                              "backlog": backlog, "reuseport": reuseport}
    if address is not None:
        fields["address"] = address
    with Broker(path) as broker:
        _reply, sockets = broker.request(**fields)
    return sockets


def outgoing_socket(server: str, proto: str = "tcp", family: int = 4, *,
                    path: Path | str = BROKER_PATH) -> socket.socket:
    """An unconnected socket bound to the VS source address of ``family`` and marked (pbr)
    or made inside the VS namespace (netns): its connections cannot leave the VS."""
    with Broker(path) as broker:
        _reply, sockets = broker.request(op="socket", server=server, proto=proto,
                                         family=family)
    return sockets[0]


def servers(path: Path | str = BROKER_PATH) -> list[dict[str, Any]]:
    """The VS this process may use: addresses, mode, mark, namespace, state."""
    with Broker(path) as broker:
        reply, _sockets = broker.request(op="servers")
    result: list[dict[str, Any]] = reply["servers"]
    return result


def subscribe(path: Path | str = BROKER_PATH) -> Iterator[dict[str, Any]]:
    """First the current servers, then one event per change of the VS this process may
    use (``{"event": "changed", "generation", "changed", "removed", "servers"}``)."""
    broker = Broker(path, timeout=None)
    try:
        reply, _sockets = broker.request(op="subscribe")
        yield reply
        while True:
            event, _sockets = broker.receive()
            yield event
    finally:
        broker.close()


# --------------------------------------------------------------------------- UDP


def sendmsg_marked(sock: socket.socket, data: bytes, address: tuple[Any, ...], mark: int) -> int:
    """Send one datagram routed with ``mark`` (a SO_MARK control message; Linux >= 5.4;
    needs CAP_NET_ADMIN, like SO_MARK itself)."""
    return sock.sendmsg([data], [(socket.SOL_SOCKET, SO_MARK, struct.pack("I", mark))], 0,
                        address)


def enable_receive_info(sock: socket.socket) -> None:
    """Ask the kernel to tell, per datagram, its mark and the address it was sent to."""
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVMARK, 1)
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)


def recvmsg_marked(sock: socket.socket, size: int = 65535
                   ) -> tuple[bytes, Any, int | None, str | None]:
    """(data, sender, mark, local address the datagram was sent to); call
    :func:`enable_receive_info` once first."""
    data, ancdata, _flags, sender = sock.recvmsg(size, 256)
    mark = local = None
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_MARK:
            mark = struct.unpack("I", payload[:4])[0]
        elif level == socket.IPPROTO_IP and kind == IP_PKTINFO:
            local = socket.inet_ntop(socket.AF_INET, payload[8:12])  # ipi_addr
        elif level == socket.IPPROTO_IPV6 and kind == IPV6_PKTINFO:
            local = socket.inet_ntop(socket.AF_INET6, payload[:16])
    return data, sender, mark, local
