"""Deterministic numbering: route tables and fwmarks from a VS ``id``.

Every VS owns one *block* of ``block_size`` consecutive tables::

    address table i  = table_base + id * block_size + i        (i = index in ``addresses``)
    mark table       = table_base + id * block_size + block_size - 1
    mark             = ``mark`` if set, else mark_base + id

A VS's numbers depend only on its own ``id`` and the settings, so adding, removing or
editing one VS never renumbers another. IPv4 and IPv6 use the same numbers: the kernel
keeps separate tables per family.

Rule priorities are not per VS: in the root namespace a rule's priority is its place in
the rule tree (:mod:`vsnetd.ruletree`), a function of its own address or mark; inside a
VS's namespace, whose short list only that namespace's VS share, the rule of address i
sits at ``priority_base + i``.
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
    mark: int

    @property
    def mark_table(self) -> int:
        return self.table_block[-1]

    def address_table(self, index: int) -> int:
        return self.table_block[index]


def layout(settings: Settings, server_id: int, mark: int | None = None) -> ServerNumbers:
    size = settings.block_size
    table_start = settings.table_base + server_id * size
    return ServerNumbers(
        table_block=range(table_start, table_start + size),
        mark=mark if mark is not None else settings.mark_base + server_id,
    )


def namespace_rule_priority(settings: Settings, index: int) -> int:
    """The priority of the ``from`` rule of address ``index`` inside a VS's namespace."""
    return settings.priority_base + index


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
    if not 0 < numbers.mark <= U32_MAX:
        problems.append(f"mark {numbers.mark:#x} is outside 1..0xffffffff (settings.mark_base)")
    return problems


def server_id_of_table(settings: Settings, table: int) -> int | None:
    """Which VS id a table number belongs to, if it is in vsnet's range at all."""
    offset = table - settings.table_base
    return offset // settings.block_size if offset >= 0 else None
