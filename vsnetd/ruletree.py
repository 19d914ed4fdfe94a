"""The policy-rule tree of the root namespace: where every pbr rule sits. Pure.

The kernel walks policy rules one by one on every uncached route lookup (~10-20 ns a
rule here), so a flat list of ``from``/``fwmark`` rules makes every lookup — the host's own
traffic included — pay for every VS. Rules with the ``goto`` action turn the list into a
tree (docs/rule-tree.md has the picture and the measurements):

* per family, two tries: one over the source addresses of the ``from <address> lookup
  <table>`` rules, then one over the fwmarks of the ``fwmark <mark> lookup <table>`` rules
  (source before mark, as in the paper's Table 1: a marked reply still leaves by its
  address's table). Their levels take 4 bits at the top, where a site's addresses share
  their prefix, and 2 at the bottom, where they branch;
* a trie node that holds at least one key has a *group*: a priority at which its children
  sit — ``from <child prefix> goto <child's group>`` rules, or at the last level the leaf
  ``lookup`` rules themselves — and, one priority later, an end rule ``goto <exit>`` that
  leaves the trie when no child matched (the source trie exits to the mark trie's root,
  the mark trie to a final ``nop`` rule). So a lookup checks at most 16 rules a level, 4
  on a 2-bit level (more where nodes share a group), and the host's own traffic leaves
  each trie after a few checks;
* the priority of a group depends only on the node's prefix: levels have fixed priority
  ranges, and a node's group is ``level start + 2 * fold(prefix)`` (:meth:`Trie.group`).
  A rule's place is therefore a function of its own key: adding or removing a VS never
  moves another VS's rules, and creates or removes at most the nodes on its own path.
  Two nodes of one level that share a group only make that group longer: every selector
  is exact, so a lookup never reaches another VS's rule; with some of the tree's ``goto``
  rules missing (during an apply, or after a hand-made deletion until it is healed) a
  packet may miss its address's rule and be routed by its mark or by ``main`` instead.

The ``goto`` and ``nop`` rules are shared by every VS below them; the leaves are the VS's.
"""

from __future__ import annotations

import socket
from functools import lru_cache
from typing import Any, NamedTuple

from vsnetd.kinds.rule import FULL_MASK, Rule
from vsnetd.numbering import MAIN_RULE_PRIORITY

# Per trie level, top to bottom: (bits the level consumes, groups it has at most). Wide
# levels at the top, where the addresses of a site share their prefix and a level costs
# one check; narrow levels at the bottom, where the keys branch and a level costs up to
# its fan-out in checks. Group counts are powers of two: enough that the nodes of
# thousands of VS addresses rarely share a group, few enough that both tries of a family
# fit between priority_base and the main table's rule (docs/rule-tree.md).
Level = tuple[int, int]
SOURCE_LEVELS: dict[int, tuple[Level, ...]] = {
    socket.AF_INET: ((4, 1024),) * 5 + ((2, 1024),) * 6,
    socket.AF_INET6: ((4, 128),) * 30 + ((2, 1024),) * 3 + ((2, 512),),
}
MARK_LEVELS: tuple[Level, ...] = ((4, 256),) * 6 + ((2, 256),) * 4
MARK_BITS = 32
_ODD = 0x9E3779B97F4A7C15  # the golden ratio's odd 64-bit multiplier: spreads the rest's bits


def rule_family_bits(family: int) -> int:
    return 128 if family == socket.AF_INET6 else 32


# keyed as vsnetd.state.object_key keys objects (state imports config, which imports this)
SharedRules = dict[tuple[str, tuple[Any, ...]], Rule]


class Trie(NamedTuple):
    """One trie's place in the rule list."""

    family: int
    bits: int  # key width: 32 or 128 for addresses, 32 for marks
    strides: tuple[int, ...]  # bits per level, top to bottom; they sum to ``bits``
    lengths: tuple[int, ...]  # per depth: the prefix length of its nodes (strides summed)
    levels: tuple[tuple[int, int], ...]  # per depth: (first priority, number of groups)
    exit: int  # where an end rule jumps
    over_marks: bool

    @property
    def depth(self) -> int:
        return len(self.levels)

    @property
    def first(self) -> int:
        return self.levels[0][0]

    @property
    def last(self) -> int:
        first, count = self.levels[-1]
        return first + 2 * count - 1

    def prefix(self, depth: int, key: int) -> int:
        return key >> (self.bits - self.lengths[depth])

    def group(self, depth: int, value: int) -> int:
        """The priority of the group of the node of ``depth`` whose prefix is ``value``:
        the prefix's low bits pick the group, XORed with an odd multiple of the rest (both
        taken modulo the number of groups, so each is a bijection). Prefixes allocated in
        sequence never share a group, nor do the runs below parents allocated in sequence
        (one address per /24), and two subnets allocated alike land their runs apart."""
        first, count = self.levels[depth]
        width = count.bit_length() - 1
        mixed = (value >> width) * _ODD if width else 0
        return first + 2 * ((value ^ mixed) & (count - 1))

    def leaf_priority(self, key: int) -> int:
        return self.group(self.depth - 1, self.prefix(self.depth - 1, key))

    def enter(self, depth: int, value: int) -> Rule:
        """The rule, in its parent's group, that enters the node of ``depth`` with prefix
        ``value``."""
        priority = self.group(depth - 1, value >> self.strides[depth - 1])
        target = self.group(depth, value)
        length = self.lengths[depth]
        shift = self.bits - length
        if self.over_marks:
            # A delete of ``fwmark 0/<mask>`` would take the first rule of its priority
            # with that mask, a sibling's: the kernel compares a delete's mark only when
            # it is not zero. It does compare the table, which a goto rule does not use:
            # the rule's own target there sets it apart (docs/rule-tree.md).
            return Rule.goto(self.family, priority, target, fwmark=value << shift,
                             fwmask=(FULL_MASK >> shift) << shift, table=0 if value else target)
        raw = (value << shift).to_bytes(self.bits // 8, "big")
        source = f"{socket.inet_ntop(self.family, raw)}/{length}"
        return Rule.goto(self.family, priority, target, source=source)


class Layout(NamedTuple):
    """The tree of one family's rule list."""

    family: int
    source: Trie
    mark: Trie
    end: int  # the final nop rule: every exit of the tree lands here

    @property
    def priorities(self) -> range:
        return range(self.source.first, self.end + 1)


def _levels(start: int, shape: tuple[Level, ...]
            ) -> tuple[tuple[tuple[int, int], ...], int]:
    """Each level's (first priority, number of groups), and the priority after the last."""
    levels = []
    nodes = 1  # how many nodes the level could hold
    for stride, cap in shape:
        count = min(nodes, cap)
        levels.append((start, count))
        start += 2 * count
        nodes <<= stride
    return tuple(levels), start


def _lengths(strides: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(sum(strides[:depth]) for depth in range(len(strides) + 1))


@lru_cache(maxsize=16)
def layout(family: int, priority_base: int) -> Layout:
    bits = rule_family_bits(family)
    strides = tuple(stride for stride, _ in SOURCE_LEVELS[family])
    mark_strides = tuple(stride for stride, _ in MARK_LEVELS)
    source_levels, mark_root = _levels(priority_base, SOURCE_LEVELS[family])
    mark_levels, end = _levels(mark_root, MARK_LEVELS)
    return Layout(
        family=family,
        source=Trie(family, bits, strides, _lengths(strides), source_levels, exit=mark_root,
                    over_marks=False),
        mark=Trie(family, MARK_BITS, mark_strides, _lengths(mark_strides), mark_levels,
                  exit=end, over_marks=True),
        end=end,
    )


def last_priority(priority_base: int) -> int:
    """The highest priority the tree of either family uses."""
    return max(layout(family, priority_base).end
               for family in (socket.AF_INET, socket.AF_INET6))


# The tree must end before the main table's rule: vsnet's rules are looked at first.
MAX_PRIORITY_BASE = MAIN_RULE_PRIORITY - 1 - last_priority(0)


@lru_cache(maxsize=65536)  # leaves under one node share its path: thousands of VS, few paths
def _path(family: int, priority_base: int, over_marks: bool, depth: int, value: int
          ) -> SharedRules:
    """The shared rules on the way to the node of ``depth`` whose prefix is ``value``: the
    final nop, then from the root down each node's end rule and (below the root) the rule
    in its parent's group that enters it. Its parent's path, copied, plus its own two: a
    cold compile of 1,000 VS builds ~750 such paths."""
    tree = layout(family, priority_base)
    trie = tree.mark if over_marks else tree.source
    rules = [Rule.goto(family, trie.group(depth, value) + 1, trie.exit)]  # its group's end
    if depth:
        path = dict(_path(family, priority_base, over_marks, depth - 1,
                          value >> trie.strides[depth - 1]))
        rules.append(trie.enter(depth, value))
    else:
        nop = Rule(family, tree.end, 0, action="nop")
        path = {(nop.kind, nop.key): nop}
    for rule in rules:
        path[(rule.kind, rule.key)] = rule
    return path


def source_leaf(family: int, priority_base: int, address: str) -> tuple[int, SharedRules]:
    """The priority of ``from <address>``'s rule and the shared rules leading to it."""
    key = int.from_bytes(socket.inet_pton(family, address), "big")
    trie = layout(family, priority_base).source
    return trie.leaf_priority(key), _path(family, priority_base, False, trie.depth - 1,
                                          trie.prefix(trie.depth - 1, key))


def mark_leaf(family: int, priority_base: int, mark: int) -> tuple[int, SharedRules]:
    """The priority of ``fwmark <mark>``'s rule and the shared rules leading to it."""
    trie = layout(family, priority_base).mark
    return trie.leaf_priority(mark), _path(family, priority_base, True, trie.depth - 1,
                                           trie.prefix(trie.depth - 1, mark))


def leaf_path(rule: object, priority_base: int) -> SharedRules:
    """The shared rules leading to ``rule`` if it is a leaf of the tree (a root-namespace
    ``from <address>`` or ``fwmark <mark>`` lookup at its place), else none: what keeps a
    held VS's stale rules reachable (vsnetd/diff.py)."""
    if not isinstance(rule, Rule) or rule.netns or rule.action != "lookup":
        return {}
    if rule.source is not None:
        address, _, length = rule.source.partition("/")
        if length and int(length) != rule_family_bits(rule.family):
            return {}
        priority, path = source_leaf(rule.family, priority_base, address)
    elif rule.fwmark is not None and rule.fwmask in (None, FULL_MASK):
        priority, path = mark_leaf(rule.family, priority_base, rule.fwmark)
    else:
        return {}
    return path if priority == rule.priority else {}
