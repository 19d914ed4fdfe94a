"""Address text <-> bytes, one normal form for what compile writes and observe reads."""

from __future__ import annotations

import socket


def family_of(text: str) -> int:
    return socket.AF_INET6 if ":" in text else socket.AF_INET


def pack(text: str) -> bytes:
    return socket.inet_pton(family_of(text), text)


def unpack(family: int, raw: bytes) -> str:
    return socket.inet_ntop(family, raw)


def normal(text: str) -> str:
    """The form ``inet_ntop`` gives, so desired and observed text compare equal."""
    family = family_of(text)
    return socket.inet_ntop(family, socket.inet_pton(family, text))


def split_prefix(text: str) -> tuple[str, int]:
    address, _, length = text.partition("/")
    return address, int(length)
