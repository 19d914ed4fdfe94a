"""The control socket, served from the daemon's loop without ever waiting on a client.

A request is read as it arrives (a client that sends half a line holds nothing up); its
op is looked up in ``handlers``: ``{"status": fn, "reload": fn, ...}``, each taking the
request object and returning the reply, or None when the reply comes later through
:meth:`ControlServer.reply` (``reload`` answers once the files are read and converged).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import selectors
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vsnetd import control, log

Handler = Callable[[dict[str, Any]], dict[str, Any] | None]
READ_SECONDS = 2.0  # a client that has not sent its line by then is dropped
SEND_SECONDS = 2.0
PAUSE_SECONDS = 0.2  # no descriptor left to accept with: wait, do not spin


class ControlServer:
    def __init__(self, path: Path, selector: selectors.BaseSelector,
                 handlers: dict[str, Handler]) -> None:
        self.path = path
        self.selector = selector
        self.handlers = handlers
        self.listener: socket.socket | None = None
        self.reading: dict[socket.socket, tuple[bytes, float]] = {}
        self.paused_until: float | None = None

    def open(self) -> None:
        self.listener = control.listen(self.path)
        self.selector.register(self.listener, selectors.EVENT_READ, self._accept)

    def deadline(self) -> float | None:
        times = [started + READ_SECONDS for _data, started in self.reading.values()]
        if self.paused_until is not None:
            times.append(self.paused_until)
        return min(times) if times else None

    def tick(self, now: float) -> None:
        """Drop clients too slow to ask; listen again after a pause."""
        for conn, (_data, started) in list(self.reading.items()):
            if now > started + READ_SECONDS:
                self._drop(conn)
        if self.paused_until is not None and now >= self.paused_until and self.listener:
            self.paused_until = None
            self.selector.register(self.listener, selectors.EVENT_READ, self._accept)

    def _accept(self) -> None:
        assert self.listener is not None
        while True:
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    raise
                log.event(logging.WARNING, f"control: cannot accept: {exc.strerror}", op="control")
                self.selector.unregister(self.listener)
                self.paused_until = time.monotonic() + PAUSE_SECONDS
                return
            conn.setblocking(False)
            self.reading[conn] = (b"", time.monotonic())
            self.selector.register(conn, selectors.EVENT_READ, lambda conn=conn: self._read(conn))

    def _read(self, conn: socket.socket) -> None:
        data, started = self.reading[conn]
        try:
            chunk = conn.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        data += chunk
        if not chunk and not data.endswith(b"\n"):
            self._drop(conn)
            return
        if not data.endswith(b"\n") and len(data) <= control.MAX_REQUEST:
            self.reading[conn] = (data, started)
            return
        self.selector.unregister(conn)
        del self.reading[conn]
        try:
            reply = self._answer(conn, data)
        except MemoryError:  # e.g. while the reader thread reads a costly file: say so
            reply = {"ok": False, "error": "vsnetd ran out of memory answering; try again"}
        except Exception as exc:  # a request no handler foresaw: its client hears of it
            log.event(logging.ERROR, f"control: {exc!r}", op="control")
            reply = {"ok": False, "error": f"vsnetd failed to answer: {exc!r}"}
        if reply is not None:
            self.reply(conn, reply)

    def _answer(self, conn: socket.socket, line: bytes) -> dict[str, Any] | None:
        if control.peer_uid(conn) != 0:
            return {"ok": False, "error": "forbidden: the control socket is for root"}
        if len(line) > control.MAX_REQUEST:
            return {"ok": False, "error": f"request longer than {control.MAX_REQUEST} bytes"}
        try:
            request = control.parse_request(line)
        except ValueError as exc:
            return {"ok": False, "error": str(exc)}
        handler = self.handlers.get(request["op"])
        if handler is None:
            known = ", ".join(sorted(self.handlers))
            return {"ok": False, "error": f"unknown op {request['op']!r} ({known})"}
        return handler({**request, "conn": conn})

    def reply(self, conn: socket.socket, reply: dict[str, Any]) -> None:
        with conn:
            conn.settimeout(SEND_SECONDS)
            with contextlib.suppress(OSError):  # the client went away or stalled: its problem
                conn.sendall(control.dumps(reply))

    def _drop(self, conn: socket.socket) -> None:
        self.reading.pop(conn, None)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(conn)
        conn.close()

    def close(self) -> None:
        for conn in list(self.reading):
            self._drop(conn)
        if self.listener is not None:
            self.listener.close()
        with contextlib.suppress(OSError):
            self.path.unlink()
