"""Deterministic numbering: route tables and fwmarks from a VS ``id``.

Every VS owns one *block* of ``block_size`` table slots::

    address table i  = table(id * block_size + i)              (i = index in ``addresses``)
    mark table       = table(id * block_size + block_size - 1)
    mark             = ``mark`` if set, else mark_base + id

``table(k)`` counts up from ``table_base`` but skips every number that is 253, 254 or 255
modulo 256: the kernel finds a table by id in a hash of 256 buckets (``id mod 256``), and
the buckets of ``local`` (255) and ``main`` (254) are looked at for nearly every packet;
a thousand VS tables chained in front of them would cost every packet microseconds
(docs/rule-tree.md, "Measured"). Below the first such number, ``table(k) = table_base + k``.

A VS's numbers depend only on its own ``id`` and the settings, so adding, removing or
editing one VS never renumbers another. IPv4 and IPv6 use the same numbers: the kernel
keeps separate tables per family.

Rule priorities are not per VS: in the root namespace a rule's priority is its place in
the rule tree (:mod:`vsnetd.ruletree`), a function of its own address or mark; inside a
VS's namespace, whose short list only that namespace's VS share, the rule of address i
sits at ``priority_base + i``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from vsnetd.config import Settings

DEFAULT_BLOCK_SIZE = 16
MAX_SERVER_ID = 65535
U32_MAX = 0xFFFFFFFF
TABLE_BUCKETS = 256  # the kernel's FIB_TABLE_HASHSZ, IPv4 and IPv6
USABLE_RESIDUES = 253  # 253-255 modulo 256: the buckets of default, main and local
MAIN_RULE_PRIORITY = 32766  # vsnet's rules must be looked at before the main table


class ServerNumbers(NamedTuple):
    """The numbers one VS owns: its block of table slots (numbered on demand, a VS uses
    two or three of them) and its mark."""

    table_base: int
    first_slot: int
    block_size: int
    mark: int

    @property
    def mark_table(self) -> int:
        return table_number(self.table_base, self.first_slot + self.block_size - 1)

    def address_table(self, index: int) -> int:
        return table_number(self.table_base, self.first_slot + index)


def layout(settings: Settings, server_id: int, mark: int | None = None) -> ServerNumbers:
    size = settings.block_size
    return ServerNumbers(
        table_base=settings.table_base, first_slot=server_id * size, block_size=size,
        mark=mark if mark is not None else settings.mark_base + server_id,
    )


def _origin(table_base: int) -> tuple[int, int]:
    """(the bucket-aligned number table slots count from, the first slot's residue)"""
    residue = table_base % TABLE_BUCKETS
    if residue >= USABLE_RESIDUES:  # a base in the kernel's buckets starts after them
        return table_base - residue + TABLE_BUCKETS, 0
    return table_base - residue, residue


def table_number(table_base: int, slot: int) -> int:
    """The ``slot``-th table from ``table_base``, skipping the kernel tables' buckets."""
    origin, residue = _origin(table_base)
    rounds, rest = divmod(residue + slot, USABLE_RESIDUES)
    return origin + rounds * TABLE_BUCKETS + rest


def table_slot(table_base: int, table: int) -> int | None:
    """The inverse of :func:`table_number`: None for a number it never gives."""
    origin, residue = _origin(table_base)
    rounds, rest = divmod(table - origin, TABLE_BUCKETS)
    slot = rounds * USABLE_RESIDUES + rest - residue
    return slot if slot >= 0 and rest < USABLE_RESIDUES else None


def namespace_rule_priority(settings: Settings, index: int) -> int:
    """The priority of the ``from`` rule of address ``index`` inside a VS's namespace."""
    return settings.priority_base + index


def check_reserved(numbers: ServerNumbers, settings: Settings) -> list[str]:
    """Why these numbers cannot be used (empty when they can)."""
    problems = []
    first, last = numbers.address_table(0), numbers.mark_table
    if last > U32_MAX:
        problems.append(f"route tables {first}-{last} exceed 2^32-1")
    if not 0 < numbers.mark <= U32_MAX:
        problems.append(f"mark {numbers.mark:#x} is outside 1..0xffffffff (settings.mark_base)")
    return problems


def server_id_of_table(settings: Settings, table: int) -> int | None:
    """Which VS id a table number belongs to, if it is in vsnet's range at all."""
    slot = table_slot(settings.table_base, table)
    return slot // settings.block_size if slot is not None else None
