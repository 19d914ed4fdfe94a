"""Logging: journal fields under systemd, readable lines on stderr otherwise.

Every event names what it is about in fields the journal can filter on:
``VSNET_SERVER`` (the VS), ``VSNET_OP`` (what vsnet did: add, delete, reload, heal...),
``VSNET_OBJECT`` (the kernel object). ``journalctl -u vsnetd VSNET_SERVER=nas1``.
"""

from __future__ import annotations

import logging
import os
import sys

LOGGER = logging.getLogger("vsnetd")


class _Plain(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        server = getattr(record, "VSNET_SERVER", None)
        prefix = f"{server}: " if server else ""
        return f"vsnetd[{record.levelname.lower()}]: {prefix}{record.getMessage()}"


def under_systemd() -> bool:
    return "JOURNAL_STREAM" in os.environ or "INVOCATION_ID" in os.environ


def setup(verbose: bool = False) -> logging.Logger:
    LOGGER.handlers.clear()
    handler: logging.Handler
    if under_systemd():
        try:
            from systemd.journal import JournalHandler

            handler = JournalHandler(SYSLOG_IDENTIFIER="vsnetd")
        except ImportError:  # the journal still reads stderr
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(_Plain())
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_Plain())
    LOGGER.addHandler(handler)
    LOGGER.setLevel(logging.DEBUG if verbose else logging.INFO)
    LOGGER.propagate = False
    return LOGGER


def printable(text: str) -> str:
    """``text`` as UTF-8 can carry it (the journal, sd_notify): a byte of a file name that
    is no UTF-8, which Python holds as a lone surrogate, shown as ``\\xff``."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that stands for no byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def event(level: int, message: str, *, server: str | None = None, op: str | None = None,
          obj: str | None = None) -> None:
    if not LOGGER.isEnabledFor(level):  # a DEBUG line per change of a large apply
        return
    fields = {name: printable(value) for name, value in (
        ("VSNET_SERVER", server), ("VSNET_OP", op), ("VSNET_OBJECT", obj)) if value}
    LOGGER.log(level, printable(message), extra=fields)
