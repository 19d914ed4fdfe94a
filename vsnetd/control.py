"""The daemon's control socket: ``/run/vsnet/control.sock``, root only.

One JSON object per line each way: ``{"op": "status"}``, ``{"op": "reload"}`` or
``{"op": "metrics"}`` in, ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}`` out.
``vsnetctl status``, ``reload`` and ``metrics`` use it when a daemon is running.
"""

from __future__ import annotations

import json
import os
import socket
import struct
from pathlib import Path
from typing import Any

CONTROL_PATH = Path(os.environ.get("VSNET_CONTROL", "/run/vsnet/control.sock"))
MAX_REQUEST = 64 * 1024
TIMEOUT = 30.0


class DaemonUnavailable(Exception):
    """No daemon answers on the control socket."""


def request(op: str, path: Path = CONTROL_PATH, timeout: float = TIMEOUT,
            **fields: Any) -> dict[str, Any]:
    """Ask the running daemon (``fields`` go with the op, e.g. ``names``); raise
    DaemonUnavailable when there is none."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise DaemonUnavailable(str(exc)) from None
        sock.sendall(json.dumps({"op": op, **fields}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        sock.close()
    if not data:
        raise DaemonUnavailable("the daemon closed the connection")
    reply: dict[str, Any] = json.loads(data)
    return reply


def listen(path: Path = CONTROL_PATH) -> socket.socket:
    """The daemon's listening socket, readable and writable by root only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    old_umask = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    sock.listen(16)
    return sock


def peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def parse(line: bytes) -> str:
    """The operation of one request line; ValueError with a reason when it is not one."""
    return str(parse_request(line)["op"])


def parse_request(line: bytes) -> dict[str, Any]:
    """One request line: an object with a string ``op`` (and whatever that op takes)."""
    try:
        message = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:  # [[[[...
        raise ValueError(f"malformed JSON: {exc}") from None
    if not isinstance(message, dict) or not isinstance(message.get("op"), str):
        raise ValueError('a request is an object like {"op": "status"}')
    return message


def dumps(reply: dict[str, Any]) -> bytes:
    return json.dumps(reply, sort_keys=True).encode() + b"\n"


def read_line(conn: socket.socket) -> bytes:
    """One request line; ValueError when it is too long or the peer stops half-way."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_REQUEST:
            raise ValueError(f"request longer than {MAX_REQUEST} bytes")
    return data
