"""Address text <-> bytes, one normal form for what compile writes and observe reads."""

from __future__ import annotations

import socket
from functools import lru_cache


def family_of(text: str) -> int:
    return socket.AF_INET6 if ":" in text else socket.AF_INET


@lru_cache(maxsize=65536)  # gateways and sources repeat across thousands of routes
def pack(text: str) -> bytes:
    return socket.inet_pton(family_of(text), text)


def unpack(family: int, raw: bytes | bytearray) -> str:
    return socket.inet_ntop(family, raw)


@lru_cache(maxsize=65536)
def normal(text: str) -> str:
    """The form ``inet_ntop`` gives, so desired and observed text compare equal."""
    family = family_of(text)
    return socket.inet_ntop(family, socket.inet_pton(family, text))


def split_prefix(text: str) -> tuple[str, int]:
    address, _, length = text.partition("/")
    return address, int(length)
