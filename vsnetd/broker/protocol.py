"""The broker's wire protocol: constants, request parsing, errors, reply framing.

One JSON object per SOCK_SEQPACKET message each way, ``"v": 1``; a reply carries its file
descriptors as SCM_RIGHTS, at most 253 per message (docs/broker-protocol.md,
schemas/broker.schema.json). Pure and standard-library only: the application's client
(:mod:`vsnetd.client`) imports this module and nothing else of vsnet.

Parsing is the broker's hot path (every ``listen``/``socket`` request goes through it):
the checks are written out one after the other, in the order the protocol document lists
them ("Checks, in order"), each costing what its test costs; the precise wording of an
error is only worked out once the request is known to be refused.
"""

from __future__ import annotations

import json
import os
import re
from collections import namedtuple

# typing is imported by type checkers only: the client imports this module, and typing
# is a noticeable part of an import that must stay cheap (bench/broker.py measures it)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NamedTuple

# a string, not a pathlib.Path: pathlib is a tenth of the client's import
BROKER_PATH = os.environ.get("VSNET_BROKER", "/run/vsnet/broker.sock")
BROKER_GROUP = "vsnet"
VERSION = 1
MAX_MESSAGE = 64 * 1024
MAX_FDS = 253  # SCM_MAX_FD: descriptors in one message
OPS = ("listen", "socket", "servers", "subscribe", "batch")
SOCKET_OPS = ("listen", "socket")  # the ops that make sockets (also the ops of batch items)
ERROR_CODES = ("bad-request", "too-large", "unsupported-version", "unknown-op",
               "unknown-server", "forbidden", "socket-error")
REQUEST_KEYS = frozenset({"v", "op", "server", "proto", "port", "address", "family",
                          "backlog", "reuseport", "freebind"})
ITEM_KEYS = REQUEST_KEYS - {"v"}  # an item of a batch: a listen/socket request without v
BATCH_KEYS = frozenset({"v", "op", "requests"})
DEFAULT_BACKLOG = 128


class BrokerError(Exception):
    """A request refused: ``code`` for programs, ``message`` for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def reply(self) -> dict[str, Any]:
        return {"v": VERSION, "ok": False, "error": {"code": self.code, "message": self.message}}

    def encoded(self) -> bytes:
        return encode(self.reply())


if TYPE_CHECKING:
    class Request(NamedTuple):
        """One request (``listen``, ``socket``, ``servers``, ``subscribe``), or one item
        of a ``batch``. A tuple: the hot path builds one per request."""

        op: str
        server: str | None = None
        proto: str = "tcp"
        port: int = 0
        address: str | None = None
        family: int | None = None  # 4 or 6, for "socket"
        backlog: int = DEFAULT_BACKLOG
        reuseport: bool = False
        freebind: bool = True

    class Batch(NamedTuple):
        """A ``batch``: several listen/socket requests answered in one message."""

        op: str
        requests: tuple[Request, ...]
else:  # the same tuples, without typing
    Request = namedtuple("Request", "op server proto port address family backlog reuseport "
                         "freebind", defaults=(None, "tcp", 0, None, None, DEFAULT_BACKLOG,
                                               False, True))
    Request.__doc__ = ("One request (listen, socket, servers, subscribe), or one item of a "
                       "batch. A tuple: the hot path builds one per request.")
    Batch = namedtuple("Batch", "op requests")
    Batch.__doc__ = "A batch: several listen/socket requests answered in one message."


_MISSING = object()
_loads = json.loads
_scan = json.JSONDecoder().raw_decode
_BLANK = " \t\n\r"  # JSON's whitespace


def load_message(data: bytes | bytearray) -> Any:
    """``json.loads``, without its encoding detection and wrappers for the usual message:
    UTF-8 starting with ``{`` (UTF-16/32 text has a NUL among its first two bytes).
    Both ends use it: the broker for requests, the client for replies."""
    if len(data) > 1 and data[0] == 0x7B and data[1]:
        text = data.decode("utf-8", "surrogatepass")  # as json.loads; errors: ValueError
        value, end = _scan(text)
        if end == len(text) or not text[end:].strip(_BLANK):
            return value
    return _loads(data)
_encoder = json.JSONEncoder(separators=(",", ":"))  # ASCII only (ensure_ascii)


quote = json.encoder.encode_basestring_ascii  # a str as a JSON string (C), ASCII only


def encode(message: dict[str, Any]) -> bytes:
    """A message as the broker sends it: compact JSON, ASCII only."""
    return _encoder.encode(message).encode()


# The usual listen/socket request, byte for byte as vsnetd.client writes it (compact, keys
# in this order, nothing else): one regular expression instead of a JSON parse and the
# checks one by one. A message it matches holds nothing the checks below would refuse but
# the values tested after the match (the port's range, the server name's UTF-8); anything
# else (other spacing, order, keys, escapes in the name) takes the general path. A JSON
# string holds no unescaped quote, backslash or control character.
_USUAL = re.compile(
    rb'\{"v":1,"op":"(listen|socket)","server":"([^"\\\x00-\x1f]*)","proto":"(tcp|udp)",'
    rb'(?:"port":([1-9][0-9]{0,4})|"family":([46]))\}').fullmatch
_NAMES = {b"listen": "listen", b"socket": "socket", b"tcp": "tcp", b"udp": "udp"}


def parse_request(data: bytes | bytearray) -> Request | Batch:
    """One request message; :class:`BrokerError` says what is wrong with it."""
    if len(data) > MAX_MESSAGE:
        raise BrokerError("too-large", f"a request is at most {MAX_MESSAGE} bytes")
    usual = _USUAL(data)
    if usual is not None:
        op, server, proto, port, family = usual.groups()
        try:
            name = server.decode()
        except UnicodeDecodeError:
            pass  # the general path says what is wrong, or takes it (surrogates)
        else:
            if port is None:
                if op == b"socket":
                    return Request("socket", name, _NAMES[proto], 0, None, int(family))
            elif int(port) <= 65535:
                return Request(_NAMES[op], name, _NAMES[proto], int(port))
    return parse_json_request(data)


def parse_json_request(data: bytes | bytearray) -> Request | Batch:
    """:func:`parse_request` without its shortcut for the usual request: the JSON parsed,
    then every check in the documented order (what the shortcut must agree with)."""
    if len(data) > MAX_MESSAGE:
        raise BrokerError("too-large", f"a request is at most {MAX_MESSAGE} bytes")
    try:
        message = load_message(data)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise BrokerError("bad-request", f"malformed JSON: {exc}") from None
    if type(message) is not dict:
        raise BrokerError("bad-request", "a request is a JSON object")
    version = message.get("v")
    if type(version) is not int or version != VERSION:
        raise BrokerError("unsupported-version", f'this broker speaks "v": {VERSION}')
    op = message.get("op", _MISSING)
    if type(op) is not str:
        raise _wrong(message, "op")
    if op == "listen" or op == "socket":
        if not REQUEST_KEYS.issuperset(message):
            raise _unknown_keys(message, REQUEST_KEYS, "")
        return _socket_request(message, op, "")
    if op == "servers" or op == "subscribe":
        if not REQUEST_KEYS.issuperset(message):
            raise _unknown_keys(message, REQUEST_KEYS, "")
        return Request(op)
    if op == "batch":
        if not BATCH_KEYS.issuperset(message):
            raise _unknown_keys(message, BATCH_KEYS, "")
        return _batch(message)
    raise BrokerError("unknown-op", f"unknown op {op!r} ({', '.join(OPS)})")


def _socket_request(message: dict[str, Any], op: str, where: str) -> Request:
    """The keys of a listen/socket request (or batch item), checked in the documented
    order; ``where`` prefixes errors (``requests[2]: ``)."""
    server = message.get("server", _MISSING)
    if type(server) is not str:
        raise _wrong(message, "server", where)
    proto = message.get("proto", "tcp")
    if proto != "tcp" and proto != "udp":
        raise (_wrong(message, "proto", where) if type(proto) is not str else
               BrokerError("bad-request", f"{where}'proto' is tcp or udp"))
    port = message.get("port", _MISSING)
    if type(port) is not int:
        if port is _MISSING and op == "socket":
            port = 0
        else:
            raise _wrong(message, "port", where, integer=True)
    if not 0 <= port <= 65535 or (port == 0 and op == "listen"):
        raise BrokerError("bad-request", f"{where}'port' is 1..65535")
    # the usual request names nothing else: done (v, op, server, proto, port)
    if len(message) == (1 if where else 2) + 1 + ("proto" in message) + ("port" in message):
        return Request(op, server, proto, port)
    address = message.get("address", _MISSING)
    if address is _MISSING:
        address = None
    elif type(address) is not str:
        raise _wrong(message, "address", where)
    family = message.get("family")
    if family is not None and (type(family) is not int or not (family == 4 or family == 6)):
        raise (_wrong(message, "family", where, integer=True) if type(family) is not int
               else BrokerError("bad-request", f"{where}'family' is 4 or 6"))
    if family is None and "family" in message:  # null is no value
        raise _wrong(message, "family", where)
    backlog = message.get("backlog", DEFAULT_BACKLOG)
    if type(backlog) is not int:
        raise _wrong(message, "backlog", where, integer=True)
    if not 1 <= backlog <= 65535:
        raise BrokerError("bad-request", f"{where}'backlog' is 1..65535")
    reuseport = message.get("reuseport", False)
    if type(reuseport) is not bool:
        raise _wrong(message, "reuseport", where)
    freebind = message.get("freebind", True)
    if type(freebind) is not bool:
        raise _wrong(message, "freebind", where)
    return Request(op, server, proto, port, address, family, backlog, reuseport, freebind)


def _batch(message: dict[str, Any]) -> Batch:
    items = message.get("requests", _MISSING)
    if type(items) is not list:
        raise _wrong(message, "requests")
    if not 1 <= len(items) <= MAX_FDS:
        raise BrokerError("bad-request", f"'requests' holds 1..{MAX_FDS} requests")
    requests = []
    for number, item in enumerate(items):
        where = f"requests[{number}]: "
        if type(item) is not dict:
            raise BrokerError("bad-request", f"{where}a request is a JSON object")
        op = item.get("op", _MISSING)
        if op != "listen" and op != "socket":
            raise (_wrong(item, "op", where) if type(op) is not str else
                   BrokerError("bad-request", f"{where}'op' is listen or socket"))
        if not ITEM_KEYS.issuperset(item):
            raise _unknown_keys(item, ITEM_KEYS, where)
        requests.append(_socket_request(item, op, where))
    return Batch("batch", tuple(requests))


def _wrong(message: dict[str, Any], name: str, where: str = "", integer: bool = False
           ) -> BrokerError:
    """The error for key ``name`` (missing, or of the wrong type)."""
    if name not in message:
        return BrokerError("bad-request", f"{where}{name!r} is required")
    if integer and isinstance(message[name], bool):
        return BrokerError("bad-request", f"{where}{name!r} must be an integer")
    return BrokerError("bad-request", f"{where}{name!r} has the wrong type")


def _unknown_keys(message: dict[str, Any], known: frozenset[str], where: str) -> BrokerError:
    unknown = sorted(set(message) - known)
    return BrokerError("bad-request", f"{where}unknown key(s): {', '.join(unknown)}")
