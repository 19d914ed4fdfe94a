"""Table numbering (vsnetd/numbering.py): stable, invertible, and clear of the hash buckets
of the kernel's own tables (local 255, main 254, default 253 modulo 256). No root."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from vsnetd.numbering import table_number, table_slot

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
