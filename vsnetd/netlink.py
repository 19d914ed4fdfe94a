"""A small rtnetlink transport: batched requests and filtered dumps.

Why not pyroute2's ``IPRoute`` calls here: one request per round trip costs ~500 µs and
parsing a dump costs ~90 µs per object (measured on this project's machines), so 1,000 VS
(~12,000 objects) would take seconds. vsnet packs many requests into one ``send`` and
decodes only the attributes it compares, with ``struct``; the kernel then costs the same
as ``ip -batch``. pyroute2
stays the reference decoder in the tests, which cross-check this codec against it.

Only the message layout lives here; what a route, rule or address *is* lives in
``vsnetd.kinds``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple, TypeVar

# netlink message types and flags (linux/netlink.h, linux/rtnetlink.h)
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP = 0x300
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_ACK_TLVS = 0x200  # on NLMSG_ERROR: extended ACK attributes follow
NLMSGERR_ATTR_MSG = 1

RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWRULE, RTM_DELRULE, RTM_GETRULE = 32, 33, 34

SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
NETLINK_GET_STRICT_CHK = 12

NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
ATTR = struct.Struct("=HH")
U32 = struct.Struct("=I")
I32 = struct.Struct("=i")
NLMSG_FLAGS = struct.Struct("=H")  # nlmsg_flags, at offset 6 of the header
NLA_TYPE_MASK = 0x3FFF

# The kernel refuses a send larger than its socket send buffer; 64 KiB keeps each batch
# well inside the default and the ACKs of one batch inside the receive buffer we ask for.
MAX_BATCH_BYTES = 64 * 1024
RECV_BUFFER = 32 * 1024 * 1024
# The kernel sends netlink datagrams of at most 32 KiB (dump skbs are capped there). One
# receive buffer per thread serves every socket: a daemon with a socket in each of 1,000
# namespaces must not hold 1,000 buffers.
RECV_CHUNK = 64 * 1024
_buffers = threading.local()


def _receive_buffer() -> bytearray:
    buffer: bytearray | None = getattr(_buffers, "buffer", None)
    if buffer is None:
        buffer = _buffers.buffer = bytearray(RECV_CHUNK)
    return buffer


def attr(kind: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    length = ATTR.size + len(payload)
    return ATTR.pack(length, kind) + payload + b"\0" * (-length & 3)


_ATTR_U32 = struct.Struct("=HHI")
_ATTR_U8 = struct.Struct("=HHBxxx")


def attr_u32(kind: int, value: int) -> bytes:
    return _ATTR_U32.pack(8, kind, value)


def attr_u8(kind: int, value: int) -> bytes:
    return _ATTR_U8.pack(5, kind, value)


def parse_attrs(data: bytes | bytearray, offset: int, end: int) -> dict[int, bytes]:
    """Attributes of one message as {type: payload}; nested ones are left packed."""
    attrs: dict[int, bytes] = {}
    unpack = ATTR.unpack_from
    while offset + 4 <= end:
        length, kind = unpack(data, offset)
        if length < 4:
            break
        attrs[kind & NLA_TYPE_MASK] = bytes(data[offset + 4 : offset + length])
        offset += (length + 3) & ~3
    return attrs


T = TypeVar("T")
# Decodes one message body from the receive buffer: (buffer, body start, body end).
Decoder = Callable[[bytearray, int, int], T | None]
_UNSEEN = object()


class DumpMemo:
    """What the last dump of each request decoded, by each message's bytes: a second look
    at a kernel that barely changed (a converge's verification, right after its first
    look) decodes only the messages that are new. Decoding is most of a dump's cost in
    Python (~4 µs a rule; copying its bytes and looking them up, ~0.3 µs). Only for
    decoders that are pure functions of the message and of what ``key`` names; a request
    keeps only its last dump's messages."""

    def __init__(self) -> None:
        self._last: dict[object, dict[bytes, Any]] = {}

    def turn(self, key: object) -> tuple[dict[bytes, Any], dict[bytes, Any]]:
        """(what the last dump under ``key`` decoded, where this one writes its own)."""
        last = self._last.get(key, {})
        now: dict[bytes, Any] = {}
        self._last[key] = now
        return last, now


class Reply(NamedTuple):
    """The kernel's answer to one request of a batch: 0 or a negative errno."""

    error: int
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.error == 0

    def describe(self) -> str:
        if self.ok:
            return "ok"
        text = os.strerror(-self.error)
        return f"{text}: {self.message}" if self.message else text


OK = Reply(0)


class DumpInterrupted(Exception):
    """The kernel's tables changed during a dump (NLM_F_DUMP_INTR); dump again."""


class NetlinkError(OSError):
    pass


def _remembering(decode: Decoder[T], last: dict[bytes, Any], now: dict[bytes, Any]
                 ) -> Decoder[T]:
    """``decode``, answered from ``last`` for the messages it holds; every message's result
    kept in ``now``."""
    def remembered(data: bytearray, start: int, end: int) -> T | None:
        raw = bytes(data[start:end])
        found: T | None = last.get(raw, _UNSEEN)
        if found is _UNSEEN:
            found = decode(data, start, end)
        now[raw] = found
        return found

    return remembered


_DONE, _INTERRUPTED = 1, 2  # what _take saw


def _take(data: bytearray, received: int, seq: int, decode: Decoder[T],
          found: list[T]) -> int:
    """The messages of dump ``seq`` in one received chunk, each decoded into ``found``;
    whether the dump ended there (_DONE) and whether the kernel marked any of them
    interrupted by a change (_INTERRUPTED). Written out (no generator, no tuple per
    message): at 1,000 namespaces a plan makes ~4,000 dumps and this loop is most of
    their Python cost."""
    unpack = NLMSGHDR.unpack_from
    status = 0
    offset = 0
    while offset + 16 <= received:
        length, mtype, flags, mseq, _pid = unpack(data, offset)
        if length < 16:
            break
        if mseq == seq:
            if flags & NLM_F_DUMP_INTR:
                status |= _INTERRUPTED
            if mtype == NLMSG_DONE:
                # a dump that failed part-way ends here with its error (a table that
                # went, a namespace torn down): what came before it is not the whole
                error = I32.unpack_from(data, offset + 16)[0] if length >= 20 else 0
                if error < 0:
                    raise NetlinkError(-error, os.strerror(-error))
                return status | _DONE
            if mtype == NLMSG_ERROR:
                error = I32.unpack_from(data, offset + 16)[0]
                if error:
                    raise NetlinkError(-error, os.strerror(-error))
            else:
                item = decode(data, offset + 16, offset + length)
                if item is not None:
                    found.append(item)
        offset += (length + 3) & ~3
    return status


def _decode_nothing(_data: bytearray, _start: int, _end: int) -> None:
    return None


class DumpRequest(NamedTuple):
    """A dump as a kind asks for it: the message type, its header, its attributes."""

    kind: int
    header: bytes
    attrs: bytes = b""


class RtnlSocket:
    """A NETLINK_ROUTE socket in the network namespace of the thread that opened it."""

    def __init__(self) -> None:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        try:
            sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
            sock.bind((0, 0))
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._seq = 0
        # What only batches need is set up before the first one: a plan opens a socket in
        # each of 1,000 namespaces only to dump (dumps are paced by the kernel to the
        # default receive buffer), and three system calls each are ~10 % of its sockets.
        self._batch_ready = False
        # dump_ahead's replies: (type, body) -> (sequence number, the chunks received)
        self._ahead: dict[tuple[int, bytes], tuple[int, list[bytearray]]] | None = None

    def _prepare_batches(self) -> None:
        sock = self._sock
        for option in (NETLINK_CAP_ACK, NETLINK_EXT_ACK):
            sock.setsockopt(SOL_NETLINK, option, 1)
        try:  # root may exceed rmem_max; a full batch of ACKs must fit
            sock.setsockopt(socket.SOL_SOCKET, 33, RECV_BUFFER)  # SO_RCVBUFFORCE
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BUFFER)
        self._batch_ready = True

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> RtnlSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
        return self._seq

    def _receive(self) -> Iterator[tuple[int, int, int, bytearray, int, int]]:
        """Yield (type, flags, seq, buffer, body_start, body_end) for one recv().

        The buffer is reused by the next call: copy out what must outlive it.
        """
        data = _receive_buffer()
        received = self._sock.recv_into(data)
        offset = 0
        while offset + NLMSGHDR.size <= received:
            length, kind, flags, seq, _pid = NLMSGHDR.unpack_from(data, offset)
            if length < NLMSGHDR.size:
                break
            yield kind, flags, seq, data, offset + NLMSGHDR.size, offset + length
            offset += (length + 3) & ~3

    # ------------------------------------------------------------------ dumps

    def dump(self, request: DumpRequest, decode: Decoder[T],
             memo: tuple[DumpMemo, object] | None = None) -> list[T]:
        """A dump request, each message passed to ``decode`` straight from the receive
        buffer (no copy); what it returns, None excepted, is collected. Retried while the
        kernel reports the dump was interrupted by a change. With ``memo`` (a DumpMemo and
        what, besides the message, the decoder's result depends on) a message the last
        such dump decoded is not decoded again. A reply :meth:`dump_ahead` received is
        decoded instead of asking again, once."""
        kind, header, attrs = request
        if self._ahead:
            made = self._ahead.pop((kind, header + attrs), None)
            if made is not None:
                if memo is not None:
                    last, now = memo[0].turn((kind, header, attrs, memo[1]))
                    decode = _remembering(decode, last, now)
                seq, chunks = made
                found: list[T] = []
                for chunk in chunks:
                    _take(chunk, len(chunk), seq, decode, found)
                return found
        for _attempt in range(10):
            try:
                if memo is None:
                    return self._dump_once(kind, header + attrs, decode)
                last, now = memo[0].turn((kind, header, attrs, memo[1]))
                return self._dump_once(kind, header + attrs, _remembering(decode, last, now))
            except DumpInterrupted:
                continue
        raise NetlinkError(errno.EAGAIN, "netlink dump kept being interrupted")

    def dump_ahead(self, requests: Iterable[DumpRequest]) -> None:
        """Make these dumps now and keep their replies undecoded, for :meth:`dump` to
        decode later: a process that does not know yet how to decode (``look_ahead`` in
        vsnetd/observe.py) has the kernel's share of the work done meanwhile. A reply
        the kernel marked interrupted, or refused, is not kept: that dump is made again."""
        ahead = self._ahead
        if ahead is None:
            ahead = self._ahead = {}
        sock = self._sock
        data = _receive_buffer()
        for kind, header, attrs in requests:
            body = header + attrs
            seq = self._next_seq()
            sock.send(NLMSGHDR.pack(NLMSGHDR.size + len(body), kind,
                                    NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body)
            chunks: list[bytearray] = []
            status = 0
            try:
                while not status & _DONE:
                    received = sock.recv_into(data)
                    chunks.append(data[:received])  # a copy
                    status |= _take(data, received, seq, _decode_nothing, [])
            except NetlinkError:
                continue
            if not status & _INTERRUPTED:
                ahead[(kind, body)] = (seq, chunks)

    def _dump_once(self, kind: int, body: bytes, decode: Decoder[T]) -> list[T]:
        seq = self._next_seq()
        sock = self._sock
        sock.send(
            NLMSGHDR.pack(NLMSGHDR.size + len(body), kind, NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
            + body
        )
        data = _receive_buffer()
        found: list[T] = []
        status = 0
        while not status & _DONE:
            status |= _take(data, sock.recv_into(data), seq, decode, found)
        if status & _INTERRUPTED:
            raise DumpInterrupted
        return found

    # ------------------------------------------------------------------ batches

    def batch(self, requests: Iterable[tuple[int, int, bytes]]) -> list[Reply]:
        """Send (type, flags, body) requests, many per ``send``; one :class:`Reply` each
        (see :class:`Batch`)."""
        batch = self.start_batch()
        for mtype, flags, body in requests:
            batch.add(mtype, flags, body)
        return batch.replies()

    def start_batch(self) -> Batch:
        """An empty :class:`Batch` of requests for this socket."""
        return Batch(self)

    def _send_chunk(self, chunk: list[bytes], first_seq: int) -> list[Reply]:
        last = bytearray(chunk[-1])
        NLMSG_FLAGS.pack_into(last, 6, NLMSG_FLAGS.unpack_from(last, 6)[0] | NLM_F_ACK)
        chunk[-1] = bytes(last)
        self._sock.send(b"".join(chunk))
        results = [OK] * len(chunk)
        closing = len(chunk) - 1
        while True:
            for mtype, flags, seq, data, start, end in self._receive():
                index = (seq - first_seq) & 0xFFFFFFFF
                if seq < first_seq:  # past the wrap, where the sequence skips 0
                    index -= 1
                if mtype != NLMSG_ERROR or index > closing:
                    continue  # not an answer to this send (a late answer of an earlier one)
                error = I32.unpack_from(data, start)[0]
                if error:
                    text = ""
                    if flags & NLM_F_ACK_TLVS:
                        # with NETLINK_CAP_ACK only the original header follows the errno
                        tlvs = parse_attrs(data, start + 4 + NLMSGHDR.size, end)
                        text = tlvs.get(NLMSGERR_ATTR_MSG, b"").rstrip(b"\0").decode(
                            errors="replace")
                    results[index] = Reply(error, text)
                if index == closing:
                    return results


class Batch:
    """Requests for one socket, added one at a time, sent many per ``send``.

    The kernel handles the messages of one send in order and independently, so one
    failure does not stop the others. It answers a failed request whatever its flags
    and a successful one only when asked (``NLM_F_ACK``): only the last request of a
    send asks, and its answer, behind every error of that send, closes the send. A
    batch of thousands of changes then costs a few receives, not one per change.

    A send that is full goes to the kernel on a thread of its own while the caller adds
    (and encodes) what follows: the kernel does a send's work inside the ``send`` call,
    without the GIL, so at 1,000 VS (14 sends) the two overlap (docs/architecture.md,
    "Applying"). One send is in flight at a time, in order: each goes once the answers
    of the one before are read. The last send, and a batch of one send (an edit), are
    sent by the caller's thread. The socket is the batch's until :meth:`replies` or
    :meth:`settle` returns.
    """

    def __init__(self, owner: RtnlSocket) -> None:
        if not owner._batch_ready:
            owner._prepare_batches()
        self._owner = owner
        self._chunk: list[bytes] = []
        self._size = self._first_seq = 0
        self._replies: list[Reply] = []
        self._in_flight: threading.Thread | None = None
        self._failure: BaseException | None = None

    def add(self, mtype: int, flags: int, body: bytes) -> None:
        seq = self._owner._next_seq()
        message = NLMSGHDR.pack(NLMSGHDR.size + len(body), mtype, flags | NLM_F_REQUEST,
                                seq, 0) + body
        if self._size + len(message) > MAX_BATCH_BYTES and self._chunk:
            self._send_behind()
        if not self._chunk:
            self._first_seq = seq
        self._chunk.append(message)
        self._size += len(message)

    def replies(self) -> list[Reply]:
        """Send what is left; one reply per request, in the order they were added."""
        self._wait()
        if self._chunk:
            self._replies.extend(self._owner._send_chunk(self._chunk, self._first_seq))
            self._chunk, self._size = [], 0
        return self._replies

    def settle(self) -> None:
        """Wait for the send in flight, if any, and drop what was not sent: the batch is
        abandoned (its caller failed) and the socket free again."""
        self._chunk = []
        with contextlib.suppress(Exception):  # the caller's own failure is on its way
            self._wait()

    def _send_behind(self) -> None:
        self._wait()
        chunk, first_seq = self._chunk, self._first_seq
        self._chunk, self._size = [], 0
        self._in_flight = threading.Thread(target=self._send, args=(chunk, first_seq),
                                           name="netlink-batch", daemon=True)
        self._in_flight.start()

    def _send(self, chunk: list[bytes], first_seq: int) -> None:
        try:
            self._replies.extend(self._owner._send_chunk(chunk, first_seq))
        except BaseException as exc:  # raised again in the caller's thread
            self._failure = exc

    def _wait(self) -> None:
        if self._in_flight is not None:
            self._in_flight.join()
            self._in_flight = None
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure


# rtnetlink multicast groups (linux/rtnetlink.h, enum rtnetlink_groups)
RTNLGRP_LINK, RTNLGRP_IPV4_IFADDR, RTNLGRP_IPV4_ROUTE, RTNLGRP_IPV4_RULE = 1, 5, 7, 8
RTNLGRP_IPV6_IFADDR, RTNLGRP_IPV6_ROUTE, RTNLGRP_IPV6_RULE = 9, 11, 19
NETLINK_ADD_MEMBERSHIP = 1
WATCHED_GROUPS = (RTNLGRP_LINK, RTNLGRP_IPV4_IFADDR, RTNLGRP_IPV4_ROUTE, RTNLGRP_IPV4_RULE,
                  RTNLGRP_IPV6_IFADDR, RTNLGRP_IPV6_ROUTE, RTNLGRP_IPV6_RULE)


class Overrun(Exception):
    """Notifications were lost (ENOBUFS): whoever reads them must look at everything again."""


class RtnlMonitor:
    """Link, address, route and rule notifications of the namespace it was opened in."""

    def __init__(self) -> None:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK,
                             socket.NETLINK_ROUTE)
        try:
            try:
                sock.setsockopt(socket.SOL_SOCKET, 33, RECV_BUFFER)  # SO_RCVBUFFORCE
            except PermissionError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BUFFER)
            sock.bind((0, 0))
            for group in WATCHED_GROUPS:
                sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
        except BaseException:
            sock.close()
            raise
        self._sock = sock

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()

    def read(self, decode: Callable[[int, bytearray, int, int], None]) -> None:
        """Pass every pending notification to ``decode(type, buffer, start, end)``."""
        buffer = _receive_buffer()
        while True:
            try:
                received = self._sock.recv_into(buffer)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    raise Overrun from None
                raise
            offset = 0
            while offset + NLMSGHDR.size <= received:
                length, kind, _flags, _seq, _pid = NLMSGHDR.unpack_from(buffer, offset)
                if length < NLMSGHDR.size:
                    break
                decode(kind, buffer, offset + NLMSGHDR.size, offset + length)
                offset += (length + 3) & ~3
