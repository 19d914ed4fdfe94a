"""Deterministic numbering: route tables, rule priorities and fwmarks from a VS ``id``.

Every VS owns one *block* of ``block_size`` consecutive tables and priorities::

    block(id)        = base + id * block_size
    address table i  = table_base    + id * block_size + i        (i = index in ``addresses``)
    address rule  i  = priority_base + id * block_size + i
    mark table       = table_base    + id * block_size + block_size - 1
    mark rule        = priority_base + id * block_size + block_size - 1
    mark             = ``mark`` if set, else mark_base + id

A VS's numbers depend only on its own ``id`` and the settings, so adding, removing or
editing one VS never renumbers another, and the address rules of a VS always come before
its mark rule (replies on a marked listening socket still leave through their address's
gateway). IPv4 and IPv6 use the same numbers: the kernel keeps separate tables and rule
lists per family.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vsnetd.config import Settings

DEFAULT_BLOCK_SIZE = 16
MAX_SERVER_ID = 65535
U32_MAX = 0xFFFFFFFF
RESERVED_TABLES = frozenset({0, 253, 254, 255})  # unspec, default, main, local
MAIN_RULE_PRIORITY = 32766  # vsnet's rules must be looked at before the main table


@dataclass(frozen=True, slots=True)
class ServerNumbers:
    """The numbers one VS owns."""

    table_block: range
    priority_block: range
    mark: int

    @property
    def mark_table(self) -> int:
        return self.table_block[-1]

    @property
    def mark_priority(self) -> int:
        return self.priority_block[-1]

    def address_table(self, index: int) -> int:
        return self.table_block[index]

    def address_priority(self, index: int) -> int:
        return self.priority_block[index]


def layout(settings: Settings, server_id: int, mark: int | None = None) -> ServerNumbers:
    size = settings.block_size
    table_start = settings.table_base + server_id * size
    priority_start = settings.priority_base + server_id * size
    return ServerNumbers(
        table_block=range(table_start, table_start + size),
        priority_block=range(priority_start, priority_start + size),
        mark=mark if mark is not None else settings.mark_base + server_id,
    )


def check_reserved(numbers: ServerNumbers, settings: Settings) -> list[str]:
    """Why these numbers cannot be used (empty when they can)."""
    problems = []
    tables = numbers.table_block
    if tables[-1] > U32_MAX:
        problems.append(f"route tables {tables[0]}-{tables[-1]} exceed 2^32-1")
    clash = sorted(RESERVED_TABLES.intersection(tables))
    if clash:
        problems.append(
            f"route tables {tables[0]}-{tables[-1]} include the kernel's reserved table(s) "
            f"{', '.join(map(str, clash))} (settings.table_base)"
        )
    prios = numbers.priority_block
    if prios[-1] >= MAIN_RULE_PRIORITY:
        problems.append(
            f"rule priorities {prios[0]}-{prios[-1]} reach {MAIN_RULE_PRIORITY} (the main table's "
            f"rule); lower settings.priority_base or the id"
        )
    if not 0 < numbers.mark <= U32_MAX:
        problems.append(f"mark {numbers.mark:#x} is outside 1..0xffffffff (settings.mark_base)")
    return problems


def server_id_of_table(settings: Settings, table: int) -> int | None:
    """Which VS id a table number belongs to, if it is in vsnet's range at all."""
    offset = table - settings.table_base
    return offset // settings.block_size if offset >= 0 else None


def server_id_of_priority(settings: Settings, priority: int) -> int | None:
    offset = priority - settings.priority_base
    return offset // settings.block_size if offset >= 0 else None
