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

import json
import mmap
import socket
import struct
from collections.abc import Iterator, Sequence

from vsnetd.broker.protocol import BROKER_PATH, MAX_FDS, VERSION, load_message, quote

TYPE_CHECKING = False  # typing is not imported at run time: an application pays its import
if TYPE_CHECKING:
    from pathlib import Path  # nor pathlib: a path may be one, or a string
    from typing import Any

SO_MARK = 36
SO_RCVMARK = 75
IP_PKTINFO = 8
IPV6_RECVPKTINFO = 49
IPV6_PKTINFO = 50
# The longest message the broker can send: its connections' SO_SNDBUFFORCE of 8 MiB
# (vsnetd/broker/server.py, Broker.accept), which the kernel doubles, less 32 bytes. The
# buffer is an anonymous mapping: only the pages a reply writes take memory.
REPLY_MAX = 16 << 20
CONTROL_SPACE = socket.CMSG_SPACE(MAX_FDS * 4)
FAMILIES = {4: socket.AF_INET, 6: socket.AF_INET6}
TYPES = {"tcp": socket.SOCK_STREAM, "udp": socket.SOCK_DGRAM}
SOL_SOCKET, SCM_RIGHTS = socket.SOL_SOCKET, socket.SCM_RIGHTS
TRUNCATED = socket.MSG_TRUNC | socket.MSG_CTRUNC


class BrokerRefused(Exception):
    """The broker said no: ``code`` (forbidden, unknown-server, ...) and its reason."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class Broker:
    """One connection to the broker (several requests may share it).

    ``timeout`` (seconds, None: wait forever) bounds each send and receive; it is set as
    SO_SNDTIMEO/SO_RCVTIMEO on a blocking socket rather than with ``settimeout``, which
    would add a ``poll`` before every system call.

    A request whose exchange does not complete -- a timeout, the connection closed or a
    message truncated or unreadable before the reply's last part, an interruption --
    closes the connection: the rest of that reply may still come, and the next request
    would take it for its own (another VS's socket). Later requests then raise
    ``ConnectionError``; open a new ``Broker``. A refusal (:class:`BrokerRefused`) is a
    complete exchange: the connection stays usable. :meth:`send` and :meth:`receive` are
    the two halves, for a caller that keeps track of the exchange itself.
    """

    def __init__(self, path: Path | str = BROKER_PATH, timeout: float | None = 10.0) -> None:
        if timeout is not None and not timeout > 0:  # a zero timeval would mean no timeout
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r} "
                             "(None waits forever)")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        self.timeout = timeout
        self._buffer: mmap.mmap | None = None  # REPLY_MAX bytes, on the first receive
        self._broken_by = ""  # what closed it half-way
        try:
            if timeout is not None:
                seconds = int(timeout)
                limit = struct.pack("ll", seconds, int((timeout - seconds) * 1e6))
                self.sock.setsockopt(SOL_SOCKET, socket.SO_RCVTIMEO, limit)
                self.sock.setsockopt(SOL_SOCKET, socket.SO_SNDTIMEO, limit)
            self.sock.connect(str(path))
        except BaseException:
            self.sock.close()
            raise

    def close(self) -> None:
        self.sock.close()
        if self._buffer is not None:
            self._buffer.close()
            self._buffer = None

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def receive(self) -> tuple[dict[str, Any], list[socket.socket]]:
        """One message and the sockets it carries."""
        buffer = self._buffer
        if buffer is None:
            # private: a forked child's replies must not land in its parent's buffer
            buffer = self._buffer = mmap.mmap(-1, REPLY_MAX, flags=mmap.MAP_PRIVATE)
            # small pages: with transparent huge pages always on, a reply of 200 bytes
            # would take (and clear) 2 MiB
            buffer.madvise(mmap.MADV_NOHUGEPAGE)
        try:
            size, ancdata, flags, _ = self.sock.recvmsg_into(
                (buffer,), CONTROL_SPACE, socket.MSG_CMSG_CLOEXEC)
        except BlockingIOError:  # SO_RCVTIMEO expired
            raise TimeoutError(f"the broker did not answer within {self.timeout} s") from None
        fds: tuple[int, ...] = ()
        for level, kind, payload in ancdata:
            if level == SOL_SOCKET and kind == SCM_RIGHTS:
                usable = len(payload) - len(payload) % 4
                fds += struct.unpack(f"{usable // 4}i", payload[:usable])
        if not size or flags & TRUNCATED:
            for fd in fds:
                socket.close(fd)
            raise ConnectionError("the broker closed the connection" if not size else
                                  "a broker message did not fit (truncated)")
        try:
            message = load_message(buffer[:size])
        except ValueError:
            for fd in fds:
                socket.close(fd)
            raise
        return message, _sockets(message, fds)

    def send(self, **fields: Any) -> None:
        """Send one request (``v`` added); :meth:`request` also waits for its reply."""
        self.sock.send(_encode(fields))

    def request(self, **fields: Any) -> tuple[dict[str, Any], list[socket.socket]]:
        """Send a request; collect every part of the reply."""
        return self._ask(_encode(fields))

    def _ask(self, data: bytes) -> tuple[dict[str, Any], list[socket.socket]]:
        sockets: list[socket.socket] = []
        try:  # free in Python 3.11 while nothing is raised: this is the hot path
            self.sock.send(data)
            reply, sockets = self.receive()
            while "event" in reply:  # a subscription's event came first: not the answer
                reply, sockets = self.receive()
            if reply.get("ok") is True:
                parts = reply.get("parts", 1)
                while reply.get("part", 1) < parts:
                    more, more_sockets = self.receive()
                    reply["sockets"] = reply.get("sockets", []) + more.get("sockets", [])
                    reply["part"] = more.get("part", parts)
                    sockets += more_sockets
                return reply, sockets
        except BaseException as exc:
            self._break(exc, sockets)
            raise
        for sock in sockets:
            sock.close()
        error = reply.get("error", {})
        raise BrokerRefused(error.get("code", "error"), error.get("message", ""))

    def _break(self, exc: BaseException, sockets: list[socket.socket]) -> None:
        """The exchange is incomplete: close the connection (and the sockets of the
        reply's parts already received); a later request says why it cannot be made."""
        for sock in sockets:
            sock.close()
        if self._broken_by:
            raise ConnectionError(f"this broker connection was closed after an incomplete "
                                  f"exchange ({self._broken_by}): open a new one") from exc
        self._broken_by = repr(exc)
        self.close()

    def listen(self, server: str, proto: str, port: int, address: str | None = None, *,
               backlog: int = 128, reuseport: bool = False) -> list[socket.socket]:
        """:func:`listen` on this connection."""
        if (address is None and backlog == 128 and not reuseport and type(port) is int
                and (proto == "tcp" or proto == "udp")):  # the usual request, preformatted
            return self._ask(b'{"v":%d,"op":"listen","server":%s,"proto":"%s","port":%d}' % (
                VERSION, quote(server).encode(), proto.encode(), port))[1]
        fields: dict[str, Any] = {"op": "listen", "server": server, "proto": proto,
                                  "port": port}
        if address is not None:
            fields["address"] = address
        if backlog != 128:
            fields["backlog"] = backlog
        if reuseport:
            fields["reuseport"] = True
        return self.request(**fields)[1]

    def outgoing_socket(self, server: str, proto: str = "tcp", family: int = 4
                        ) -> socket.socket:
        """:func:`outgoing_socket` on this connection."""
        if (proto == "tcp" or proto == "udp") and (family == 4 or family == 6):
            return self._ask(b'{"v":%d,"op":"socket","server":%s,"proto":"%s","family":%d}' % (
                VERSION, quote(server).encode(), proto.encode(), family))[1][0]
        return self.request(op="socket", server=server, proto=proto, family=family)[1][0]

    def batch(self, requests: Sequence[dict[str, Any]]
              ) -> list[tuple[dict[str, Any], socket.socket]]:
        """Several listen/socket requests (dicts of their keys, ``op`` included, no
        ``v``) in one message; every socket with its metadata (``request``: the index of
        the request it answers), all or nothing, at most 253 sockets."""
        reply, sockets = self.request(op="batch", requests=list(requests))
        return list(zip(reply["sockets"], sockets, strict=True))


_dumps = json.JSONEncoder(separators=(",", ":")).encode


def _encode(fields: dict[str, Any]) -> bytes:
    return _dumps({"v": VERSION, **fields}).encode()


def _sockets(message: dict[str, Any], fds: tuple[int, ...]) -> list[socket.socket]:
    """Socket objects for the descriptors of one message; the metadata says their family
    and type (else the socket module asks the kernel)."""
    if not fds:
        return []
    metas = message.get("sockets")
    if type(metas) is list and len(metas) == len(fds):
        try:
            kinds = [(FAMILIES[m["family"]], TYPES[m["proto"]]) for m in metas]
        except (KeyError, TypeError):
            pass
        else:
            return [socket.socket(family, kind, 0, fd)
                    for (family, kind), fd in zip(kinds, fds, strict=True)]
    return [socket.socket(fileno=fd) for fd in fds]


def listen(server: str, proto: str, port: int, address: str | None = None, *,
           backlog: int = 128, reuseport: bool = False, path: Path | str = BROKER_PATH
           ) -> list[socket.socket]:
    """Listening (tcp) or bound (udp) sockets on every address of a VS (or one)."""
    with Broker(path) as broker:
        return broker.listen(server, proto, port, address, backlog=backlog,
                             reuseport=reuseport)


def outgoing_socket(server: str, proto: str = "tcp", family: int = 4, *,
                    path: Path | str = BROKER_PATH) -> socket.socket:
    """An unconnected socket bound to the VS source address of ``family`` and marked (pbr)
    or made inside the VS namespace (netns): its connections cannot leave the VS."""
    with Broker(path) as broker:
        return broker.outgoing_socket(server, proto, family)


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
