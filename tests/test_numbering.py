"""Table numbering (vsnetd/numbering.py): stable, invertible, and clear of the hash buckets
of the kernel's own tables (local 255, main 254, default 253 modulo 256). No root."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from vsnetd.config import Settings
from vsnetd.numbering import (
    U32_MAX,
    ServerNumbers,
    check_reserved,
    layout,
    namespace_rule_priority,
    server_id_of_table,
    table_number,
    table_slot,
)

bases = st.integers(1, 1 << 24)
slots = st.integers(0, 65536 * 16)


@given(base=bases, slot=slots)
def test_a_table_never_shares_a_bucket_with_local_main_or_default(base: int, slot: int) -> None:
    assert table_number(base, slot) % 256 not in (253, 254, 255)


@given(base=bases, slot=slots)
def test_numbers_count_up_and_invert(base: int, slot: int) -> None:
    number = table_number(base, slot)
    assert number >= base
    assert table_number(base, slot + 1) > number
    assert table_slot(base, number) == slot


@given(base=bases, number=st.integers(0, 1 << 26))
def test_numbers_it_never_gives_belong_to_no_slot(base: int, number: int) -> None:
    slot = table_slot(base, number)
    assert slot is None or table_number(base, slot) == number


def test_small_ids_keep_their_numbers() -> None:
    """From the default base, the first 237 slots (ids below 14) are table_base + slot."""
    assert [table_number(10000, s) for s in (0, 16, 31, 236)] == [10000, 10016, 10031, 10236]
    assert [table_number(10000, s) for s in (237, 238)] == [10240, 10241]  # 10237-10239 skipped


def test_a_base_in_the_kernel_tables_buckets_starts_after_them() -> None:
    """A ``table_base`` of 253-255 modulo 256 counts from the next 256 (10240 = 40 * 256)."""
    assert [table_number(10238, s) for s in (0, 1, 252, 253)] == [10240, 10241, 10492, 10496]
    assert table_number(10239, 5) == 10245
    assert table_slot(10238, 10240) == 0
    assert table_slot(10238, 10239) is None  # below the first number it gives


def test_numbers_below_the_base_or_in_the_kernel_tables_buckets_have_no_slot() -> None:
    assert table_slot(10000, 9999) is None
    assert [table_slot(10000, t) for t in (10236, 10237, 10238, 10239, 10240)] == [
        236, None, None, None, 237]


def test_a_table_belongs_to_the_vs_whose_block_holds_it() -> None:
    settings = Settings()
    assert server_id_of_table(settings, 10000 + 16 * 3 + 15) == 3
    assert server_id_of_table(settings, 10000 + 16 * 3) == 3
    assert server_id_of_table(settings, 10000 + 16 * 3 - 1) == 2
    assert server_id_of_table(settings, 10237) is None
    assert server_id_of_table(settings, 254) is None


def test_layout_takes_the_configured_mark_else_counts_from_mark_base() -> None:
    settings = Settings(table_base=20000, mark_base=0x100, block_size=4)
    assert [layout(settings, 3).address_table(index) for index in range(3)] == [20012, 20013,
                                                                                   20014]
    assert layout(settings, 3).mark == 0x103
    assert layout(settings, 3, mark=0x7000000).mark == 0x7000000
    assert layout(settings, 3).mark_table == 20015
    assert layout(settings, 3).address_table(1) == 20013


def test_a_namespace_rule_sits_at_priority_base_plus_its_address_index() -> None:
    settings = Settings(priority_base=500)
    assert [namespace_rule_priority(settings, i) for i in (0, 1, 7)] == [500, 501, 507]


def test_reserved_numbers_are_refused_at_the_edges_of_32_bits() -> None:
    settings = Settings()
    top = table_slot(0, U32_MAX - 3)  # the last table number below 2^32 (253-255 modulo 256 are skipped)
    assert top is not None

    def block_ending_at(slot: int, mark: int = 1) -> ServerNumbers:
        return ServerNumbers(table_base=0, first_slot=slot - 2, block_size=3, mark=mark)

    assert check_reserved(block_ending_at(top), settings) == []
    assert check_reserved(block_ending_at(top + 1, U32_MAX), settings) == [
        f"route tables {U32_MAX - 4}-{U32_MAX + 1} exceed 2^32-1"]
    assert check_reserved(block_ending_at(3, 0), settings) == [
        "mark 0x0 is outside 1..0xffffffff (settings.mark_base)"]
    assert check_reserved(block_ending_at(3, U32_MAX + 1), settings) == [
        "mark 0x100000000 is outside 1..0xffffffff (settings.mark_base)"]
