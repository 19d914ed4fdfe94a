"""The rule tree (docs/rule-tree.md) against a model of the kernel's rule walk. No root.

The model walks rules the way net/core/fib_rules.c does: in priority order, a rule that
matches either looks its table up (the answer here), jumps (``goto``: on to the first rule
at the target priority, which is matched in turn; an unresolved goto is passed over), or
does nothing (``nop``). It counts the rules it checks: the cost the kernel charges each
uncached route lookup.

The reference is the paper's Table 1 read as a rule list: a packet from a VS address is
routed by that address's table; any other packet carrying a VS mark by the VS's mark
table; everything else reaches ``main``.
"""

from __future__ import annotations

import bisect
import ipaddress
import random
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vsnetd import ruletree
from vsnetd.compile import compile_config
from vsnetd.config import Config
from vsnetd.kinds import Rule
from vsnetd.state import DesiredState

MAIN = "main"


@dataclass(frozen=True)
class Probe:
    family: int
    source: int  # 0: no source chosen yet
    mark: int


class KernelRules:
    """One family's rule list, walked as the kernel walks it."""

    def __init__(self, rules: Iterable[Rule]) -> None:
        self.rules = sorted(rules, key=lambda r: r.priority)  # stable: list order in a priority
        self.priorities = [r.priority for r in self.rules]
        self.selectors = [self._selector(rule) for rule in self.rules]

    @staticmethod
    def _selector(rule: Rule) -> tuple[int, int, int, int]:
        """(source mask, source value, mark mask, mark value)"""
        source_mask = source = 0
        if rule.source is not None:
            network = ipaddress.ip_network(rule.source)
            source_mask, source = int(network.netmask), int(network.network_address)
        mark_mask = mark = 0
        if rule.fwmark is not None:
            mark_mask = ruletree.FULL_MASK if rule.fwmask is None else rule.fwmask
            mark = rule.fwmark
        return source_mask, source, mark_mask, mark

    def _matches(self, index: int, probe: Probe) -> bool:
        source_mask, source, mark_mask, mark = self.selectors[index]
        return probe.source & source_mask == source and probe.mark & mark_mask == mark

    def lookup(self, probe: Probe) -> tuple[int | str, int]:
        """(the table chosen, the number of rules checked)."""
        index = checks = 0
        while index < len(self.rules):
            rule = self.rules[index]
            checks += 1
            if self._matches(index, probe):
                if rule.action == "lookup":
                    return rule.table, checks
                if rule.action == "goto":
                    target = bisect.bisect_left(self.priorities, rule.target)
                    if target < len(self.rules) and self.priorities[target] == rule.target:
                        index = target
                        continue
            index += 1
        return MAIN, checks


def root_rules(desired: DesiredState, family: int) -> list[Rule]:
    rules = [o for s in desired.servers.values() for o in s.objects
             if isinstance(o, Rule) and not o.netns]
    rules.extend(o for o in desired.shared.values() if isinstance(o, Rule))
    return [r for r in rules if r.family == family]


class Reference:
    """Table 1 as a flat rule list: a VS address's table for packets from it, else the
    mark table of a VS mark, else main."""

    def __init__(self, desired: DesiredState) -> None:
        self.by_source: dict[tuple[int, int], int] = {}
        self.by_mark: dict[tuple[int, int], int] = {}
        for server in desired.servers.values():
            for rule in server.objects:
                if isinstance(rule, Rule) and rule.source:
                    address = int(ipaddress.ip_network(rule.source).network_address)
                    self.by_source[(rule.family, address)] = rule.table
                elif isinstance(rule, Rule) and rule.fwmark is not None:
                    self.by_mark[(rule.family, rule.fwmark)] = rule.table

    def __call__(self, probe: Probe, by_source: bool = True) -> int | str:
        table = self.by_source.get((probe.family, probe.source)) if by_source else None
        if table is None:
            table = self.by_mark.get((probe.family, probe.mark))
        return MAIN if table is None else table


def pbr_config(addresses_by_id: dict[int, list[str]], marks: dict[int, int] | None = None
               ) -> Config:
    servers: dict[str, Any] = {}
    for server_id, addresses in addresses_by_id.items():
        spec: dict[str, Any] = {"id": server_id, "mode": "pbr", "uplink": "eth0",
                                "addresses": [{"address": a} for a in addresses]}
        if marks and server_id in marks:
            spec["mark"] = marks[server_id]
        servers[f"vs{server_id}"] = spec
    return Config.model_validate({"version": 1, "servers": servers})


def as_int(address: str) -> int:
    return int(ipaddress.ip_interface(address).ip)


# ------------------------------------------------------------------ same tables as Table 1

dense_v4 = st.integers(0, 4095).map(lambda n: f"10.1.{n >> 8}.{n & 255}/16")
any_v4 = st.integers(1 << 24, (223 << 24) - 1).map(
    lambda n: f"{ipaddress.IPv4Address(n)}/{32 if n & 1 else 24}")
any_v6 = st.integers(1, (1 << 128) - 1).map(lambda n: f"{ipaddress.IPv6Address(n)}/64")
addresses = st.one_of(dense_v4, any_v4, any_v6)


@st.composite
def pbr_configs(draw: st.DrawFn) -> Config:
    ids = draw(st.lists(st.integers(1, 5000), min_size=1, max_size=30, unique=True))
    taken: set[int] = set()
    by_id: dict[int, list[str]] = {}
    for server_id in ids:
        mine = []
        for text in draw(st.lists(addresses, min_size=1, max_size=3)):
            if as_int(text) not in taken:
                taken.add(as_int(text))
                mine.append(text)
        if mine:
            by_id[server_id] = mine
    marks = {i: 0x7000000 + i * 977 for i in by_id if draw(st.integers(0, 5)) == 0}
    return pbr_config(by_id or {1: ["10.9.9.9/24"]}, marks)


def probes(desired: DesiredState, rng: random.Random) -> list[Probe]:
    found: list[Probe] = []
    marks = {o.fwmark for s in desired.servers.values() for o in s.objects
             if isinstance(o, Rule) and o.fwmark is not None}
    for server in desired.servers.values():
        for text in server.addresses:
            ip = ipaddress.ip_interface(text).ip
            family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
            bits = ip.max_prefixlen
            for mark in (0, rng.choice(sorted(marks)) if marks else 0, rng.getrandbits(32)):
                found.append(Probe(family, int(ip), mark))  # a VS address (a reply)
                found.append(Probe(family, int(ip) ^ rng.getrandbits(8), mark))  # its neighbour
                found.append(Probe(family, rng.getrandbits(bits), mark))  # anyone
                found.append(Probe(family, 0, mark))  # no source chosen yet
    return found


@given(config=pbr_configs(), seed=st.integers(0, 2**32), keep=st.floats(0, 1))
@settings(max_examples=80, deadline=None)
def test_the_tree_routes_every_packet_as_the_flat_table_1_list(
    config: Config, seed: int, keep: float
) -> None:
    """The whole tree routes every packet as the flat list does. With any part of its
    shared rules missing (during an apply, or deleted by hand until healed) a packet may
    miss its address's rule and be routed by its mark or by main, but never by the table
    of a VS that is not its own."""
    desired = compile_config(config)
    reference = Reference(desired)
    rng = random.Random(seed)
    for family in (socket.AF_INET, socket.AF_INET6):
        whole = root_rules(desired, family)
        rng.shuffle(whole)  # rules of one priority: any list order
        partial = KernelRules([r for r in whole if r.action == "lookup" or rng.random() < keep])
        complete = KernelRules(whole)
        for probe in probes(desired, rng):
            if probe.family == family:
                assert complete.lookup(probe)[0] == reference(probe), probe
                assert partial.lookup(probe)[0] in (
                    reference(probe), reference(probe, by_source=False), MAIN)


# ------------------------------------------------------------------ the cost of a lookup


def dense(count: int) -> Config:
    """``count`` VS, 2 addresses each, allocated in sequence (as bench/dataplane.py)."""
    return pbr_config({i: [f"10.{100 + (i >> 8)}.{i & 255}.1/24",
                           f"10.{200 + (i >> 8)}.{i & 255}.1/24"] for i in range(1, count + 1)})


def scattered(count: int, seed: int = 7) -> Config:
    """``count`` VS whose addresses share no prefix: the worst case for a prefix tree."""
    rng = random.Random(seed)
    picks = rng.sample(range(1 << 24, 223 << 24), 2 * count)
    return pbr_config({i: [f"{ipaddress.IPv4Address(picks[2 * i - 2])}/24",
                           f"{ipaddress.IPv4Address(picks[2 * i - 1])}/24"]
                       for i in range(1, count + 1)})


@pytest.fixture(scope="module", params=["dense", "scattered"])
def many(request: pytest.FixtureRequest) -> DesiredState:
    return compile_config((dense if request.param == "dense" else scattered)(4000))


def test_a_lookup_checks_few_rules_whatever_the_number_of_vs(many: DesiredState) -> None:
    """4,000 VS, ~12,000 rules: every VS address, every mark and the host's own traffic
    pass in a bounded number of rule checks (a flat list would check up to 12,000)."""
    rules = KernelRules(root_rules(many, socket.AF_INET))
    reference = Reference(many)
    assert len(rules.rules) > 12000
    rng = random.Random(1)
    worst: dict[str, int] = {"vs address": 0, "vs mark": 0, "host": 0}
    servers = list(many.servers.values())
    for server in servers[:: len(servers) // 200]:
        reply = Probe(socket.AF_INET, as_int(server.addresses[-1]), 0)
        marked = Probe(socket.AF_INET, 0, server.numbers.mark)
        host = Probe(socket.AF_INET, rng.getrandbits(32), rng.choice([0, rng.getrandbits(32)]))
        for what, probe in (("vs address", reply), ("vs mark", marked), ("host", host)):
            table, checks = rules.lookup(probe)
            assert table == reference(probe)
            worst[what] = max(worst[what], checks)
    # 11 levels of at most 16 or 4 children each (more where nodes share a group):
    # measured 68/48/7 (dense) and 111/66/56 (scattered); a flat list checks up to 12,000
    assert max(worst.values()) <= 128, worst


# ------------------------------------------------------------------ stable numbering


def test_adding_or_removing_a_vs_moves_no_other_rule() -> None:
    """Adding or removing one VS in the middle changes its own rules and the rule tree's
    rules on its own path only; every other rule keeps its priority."""
    addresses = {i: [f"10.{100 + (i >> 8)}.{i & 255}.1/24", f"10.{200 + (i >> 8)}.{i & 255}.1/24"]
                 for i in range(1, 1001) if i != 500}
    without = compile_config(pbr_config(addresses))
    addresses[500] = ["10.101.244.1/24", "10.201.244.1/24"]
    with_500 = compile_config(pbr_config(addresses))

    def rules_of(desired: DesiredState) -> set[Rule]:
        return {r for f in (socket.AF_INET, socket.AF_INET6) for r in root_rules(desired, f)}

    assert rules_of(without) <= rules_of(with_500)  # nothing moved, nothing went
    own = {o for o in with_500.servers["vs500"].objects if isinstance(o, Rule)}
    added_shared = rules_of(with_500) - rules_of(without) - own
    # the nodes only vs500 is below: 10.101.244.0/24, /26, /28 and /30, and the same in
    # 10.201 (the previous VS's addresses are one per /24), in groups of their own
    assert added_shared <= set(with_500.servers["vs500"].shared.values())
    assert sorted(r.source for r in added_shared if r.source) == [
        f"10.{net}.244.0/{length}" for net in (101, 201) for length in (24, 26, 28, 30)]
    assert all(r.source or r.target in (ruletree.layout(r.family, 10000).mark.first,)
               for r in added_shared)  # the rest: the end rules of the new nodes' groups
