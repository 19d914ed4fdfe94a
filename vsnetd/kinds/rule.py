"""Policy routing rules: ``from <address> lookup <table>``, ``fwmark <mark> lookup <table>``,
and the ``goto``/``nop`` rules that arrange them as a tree (docs/rule-tree.md).

Ownership: rules carry FRA_PROTOCOL = vsnet's protocol (Linux >= 4.17); deletes name it, so
the kernel only ever deletes a rule of ours.
"""

from __future__ import annotations

import socket
import struct
from typing import TYPE_CHECKING, Any, ClassVar, Literal, NamedTuple, cast

from vsnetd import netlink
from vsnetd.kinds import _ip
from vsnetd.kinds.kind import SHARED, Inside, Looking, NamespaceObserver, NetlinkKind, Owners, Request

if TYPE_CHECKING:
    from vsnetd.state import Change

# family, dst_len, src_len, tos, table, res1, res2, action, flags
FIB_RULE_HDR = struct.Struct("=BBBBBBBBI")
FRA_SRC, FRA_GOTO, FRA_PRIORITY, FRA_FWMARK, FRA_TABLE, FRA_FWMASK, FRA_PROTOCOL = (
    2, 4, 6, 10, 15, 16, 21)
# linux/fib_rules.h actions; vsnet creates the first three, the others only appear as
# foreign rules in its range
FR_ACT_TO_TBL, FR_ACT_GOTO, FR_ACT_NOP = 1, 2, 3
ACTION_NAMES = {FR_ACT_TO_TBL: "lookup", FR_ACT_GOTO: "goto", FR_ACT_NOP: "nop",
                6: "blackhole", 7: "unreachable", 8: "prohibit"}
ACTION_CODES = {name: code for code, name in ACTION_NAMES.items()}
RT_TABLE_COMPAT = 252  # the header's table when the real one only fits in FRA_TABLE
FULL_MASK = 0xFFFFFFFF

RuleKey = tuple[str, int, int, int, str, int, int, str, int]


class Rule(NamedTuple):
    family: int
    priority: int
    table: int
    source: str | None = None  # "10.0.0.5/32"
    fwmark: int | None = None
    fwmask: int | None = None
    netns: str = ""  # "": the namespace vsnet runs in
    action: str = "lookup"  # or "goto" (to the first rule at ``target``), "nop"
    target: int = 0  # goto: a priority after this rule's

    @classmethod
    def goto(cls, family: int, priority: int, target: int, source: str | None = None,
             fwmark: int | None = None, fwmask: int | None = None, table: int = 0) -> Rule:
        """A goto rule; ``table``, which it does not use, may set it apart from the other
        rules of its priority where its selector cannot (see vsnetd/ruletree.py Trie.enter)."""
        return cls(family, priority, table, source, fwmark, fwmask, action="goto",
                   target=target)

    @property
    def kind(self) -> Literal["rule"]:
        return "rule"

    @property
    def key(self) -> RuleKey:
        """Rules have no identity but their whole content."""
        return (self.netns, self.family, self.priority, self.table, self.source or "",
                self.fwmark or 0, self.fwmask or 0, self.action, self.target)

    def describe(self) -> str:
        words = ["rule -6" if self.family == socket.AF_INET6 else "rule", str(self.priority)]
        if self.source:
            address, length = _ip.split_prefix(self.source)
            host = 128 if self.family == socket.AF_INET6 else 32
            words.append(f"from {address if length == host else self.source}")
        else:
            words.append("from all")
        if self.fwmark is not None:
            mask = "" if self.fwmask in (None, FULL_MASK) else f"/{self.fwmask:#x}"
            words.append(f"fwmark {self.fwmark:#x}{mask}")
        if self.action == "lookup":
            words.append(f"lookup {self.table}")
        elif self.action == "goto":
            words.append(f"goto {self.target}")
        else:
            words.append(self.action)
        if self.netns:
            words.append(f"netns {self.netns}")
        return " ".join(words)

    def as_json(self) -> dict[str, Any]:
        return {"kind": "rule", "family": 6 if self.family == socket.AF_INET6 else 4,
                "priority": self.priority, "table": self.table, "source": self.source,
                "fwmark": self.fwmark, "fwmask": self.fwmask, "netns": self.netns,
                "action": self.action, "target": self.target}


def request(action: str, obj: Rule, protocol: int, links: dict[str, int]) -> tuple[int, int, bytes]:
    src_len = 0
    attrs = netlink.attr_u32(FRA_PRIORITY, obj.priority)
    if obj.action == "lookup" or obj.table:
        attrs += netlink.attr_u32(FRA_TABLE, obj.table)
    if obj.action == "goto":
        attrs += netlink.attr_u32(FRA_GOTO, obj.target)
    if obj.source:
        address, src_len = _ip.split_prefix(obj.source)
        attrs += netlink.attr(FRA_SRC, _ip.pack(address))
    if obj.fwmark is not None:
        attrs += netlink.attr_u32(FRA_FWMARK, obj.fwmark)
        attrs += netlink.attr_u32(FRA_FWMASK, FULL_MASK if obj.fwmask is None else obj.fwmask)
    attrs += netlink.attr_u8(FRA_PROTOCOL, protocol)
    table = obj.table if obj.table < 256 else RT_TABLE_COMPAT
    header = FIB_RULE_HDR.pack(obj.family, 0, src_len, 0, table, 0, 0,
                               ACTION_CODES[obj.action], 0)
    if action == "delete":
        return netlink.RTM_DELRULE, 0, header + attrs
    # No NLM_F_EXCL: the kernel's check for an equal rule walks the whole list on every
    # insert, which made creating a tree of thousands of rules quadratic; vsnet adds only
    # rules it observed missing, and a twin left by a race is equal to it and goes with it.
    return netlink.RTM_NEWRULE, netlink.NLM_F_CREATE, header + attrs


def decoder(
    protocol: int, priorities: range, netns: str = ""
) -> netlink.Decoder[tuple[Rule, bool]]:
    """Decodes an RTM_NEWRULE/RTM_DELRULE (dump or notification) into (rule, owned): rules
    carrying ``protocol`` and foreign ones in ``priorities`` (of any action: a foreign
    ``goto`` or ``blackhole`` there changes what vsnet's rules mean)."""
    unpack_attr = netlink.ATTR.unpack_from
    unpack_u32 = netlink.U32.unpack_from

    def decode(data: bytearray, start: int, end: int) -> tuple[Rule, bool] | None:
        family, _dl, src_len, _tos, table, _r1, _r2, action, _fl = FIB_RULE_HDR.unpack_from(
            data, start)
        action_name = ACTION_NAMES.get(action)
        if action_name is None:
            return None
        if family != socket.AF_INET and family != socket.AF_INET6:
            return None  # an AF_UNSPEC dump also holds multicast (RTNL_FAMILY_IPMR...) ones
        source = fwmark = fwmask = None
        priority = proto = target = 0
        pos = start + FIB_RULE_HDR.size
        while pos + 4 <= end:
            length, kind = unpack_attr(data, pos)
            if length < 4:
                break
            if kind == FRA_PRIORITY:
                priority = unpack_u32(data, pos + 4)[0]
            elif kind == FRA_TABLE:
                table = unpack_u32(data, pos + 4)[0]
            elif kind == FRA_SRC:
                source = f"{_ip.unpack(family, data[pos + 4 : pos + length])}/{src_len}"
            elif kind == FRA_FWMARK:
                fwmark = unpack_u32(data, pos + 4)[0]
            elif kind == FRA_FWMASK:
                fwmask = unpack_u32(data, pos + 4)[0]
            elif kind == FRA_GOTO:
                target = unpack_u32(data, pos + 4)[0]
            elif kind == FRA_PROTOCOL:
                proto = data[pos + 4]
            pos += (length + 3) & ~3
        if fwmask is not None and fwmark is None:
            fwmark = 0  # the kernel leaves a zero mark out; a mask says there is one
        owned = proto == protocol
        if not owned and priority not in priorities:
            return None
        return Rule(family, priority, table, source, fwmark, fwmask, netns, action_name,
                    target), owned

    return decode


def dump_request(family: int) -> netlink.DumpRequest:
    """The rules of ``family`` (AF_UNSPEC: both)."""
    return netlink.DumpRequest(netlink.RTM_GETRULE,
                               FIB_RULE_HDR.pack(family, 0, 0, 0, 0, 0, 0, 0, 0))


def observe(
    sock: netlink.RtnlSocket, family: int, protocol: int, priorities: range, netns: str = "",
    memo: netlink.DumpMemo | None = None,
) -> list[tuple[Rule, bool]]:
    """Rules of ``family`` (AF_UNSPEC: IPv4 then IPv6, one dump) as (rule, owned), see
    :func:`decoder`; with ``memo``, decoded again only where they changed."""
    return sock.dump(dump_request(family), decoder(protocol, priorities, netns),
                     None if memo is None else (memo, (protocol, priorities, netns)))


class RuleKind(NetlinkKind[Rule]):
    """Rules: vsnet's carry its protocol; a foreign rule at a priority vsnet wants
    collides with the VS wanting it. The rule tree's ``goto`` and ``nop`` rules belong to
    no VS (docs/rule-tree.md)."""

    name = "rule"
    namespace_dumps: ClassVar[tuple[netlink.DumpRequest, ...]] = (dump_request(socket.AF_UNSPEC),)
    notifications: ClassVar[dict[int, bool]] = {netlink.RTM_NEWRULE: False,
                                                netlink.RTM_DELRULE: True}

    def observer(self, look: Looking) -> NamespaceObserver[Rule]:
        protocol, priorities = look.scope.protocol, look.scope.priorities

        def rules_in(sock: netlink.RtnlSocket, inside: Inside) -> list[tuple[Rule, bool]]:
            # both families in one dump (AF_UNSPEC): a round trip per namespace saved
            return observe(sock, socket.AF_UNSPEC, protocol, priorities, inside.netns,
                           inside.memo)

        return rules_in

    def notified(self, inside: Inside, gone: bool, data: bytearray, start: int, end: int
                 ) -> tuple[Rule, bool] | None:
        scope = inside.scope
        return decoder(scope.protocol, scope.priorities, inside.netns)(data, start, end)

    def owner(self, obj: Rule, owners: Owners) -> str | None:
        if obj.netns:
            return owners.of_netns(obj.netns)
        if obj.action != "lookup":
            return SHARED
        return owners.of_table(obj.table)

    def slot(self, obj: Rule) -> tuple[str, int, int]:
        return (obj.netns, obj.family, obj.priority)

    def order_creates(self, changes: list[Change]) -> None:
        # From the highest priority down: the kernel inserts a rule after every rule of
        # lower or equal priority, and resolves a goto against the rules present (else it
        # walks the whole list again on each later insert); top-down, each insert is near
        # the head of the list and every goto finds its target (docs/rule-tree.md,
        # "Applying").
        changes.sort(key=lambda change: -cast(Rule, change.obj).priority)

    def order_deletes(self, changes: list[Change]) -> None:
        # The tree's goto and nop rules first: deleting a rule while goto rules exist walks
        # the whole list for gotos pointing at it; once they are gone the leaves go without
        # that walk. Each in ascending priority: the kernel finds the rule to delete by
        # walking the list from its head, where the next one then is (docs/rule-tree.md).
        changes.sort(key=_delete_order)

    def deferred_deletes(self, deletes: list[Change], creates: list[Change]) -> list[Change]:
        # A path of the tree no VS needs any more leads only to leaves that went before it
        # (the kernel skips a goto whose target holds no rule): it can go after the
        # creates, and an edit's new rules are in place ~1.5 ms sooner at 1,000 VS (each
        # rule change walks the kernel's list; docs/rule-tree.md, "Applying"). Not a rule
        # where a rule is created, nor one a created goto jumps to (traffic would run into
        # it), nor a goto to a created rule (it would jump there): those go first.
        if not creates:
            return []  # nothing to go ahead of (a teardown keeps the order that is cheapest)
        taken: set[tuple[str, int, int]] = set()
        for change in creates:
            rule = cast(Rule, change.obj)
            taken.add((rule.netns, rule.family, rule.priority))
            if rule.action == "goto":
                taken.add((rule.netns, rule.family, rule.target))
        first: list[Change] = []
        late: list[Change] = []
        for change in deletes:
            rule = cast(Rule, change.obj)
            waits = (change.server == SHARED
                     and (rule.netns, rule.family, rule.priority) not in taken
                     and (rule.action != "goto"
                          or (rule.netns, rule.family, rule.target) not in taken))
            (late if waits else first).append(change)
        deletes[:] = first
        return late

    def conflict(self, found: Rule) -> str:
        return f"priority {found.priority} is taken by a foreign {found.describe()}"

    def request(self, action: str, obj: Rule, protocol: int, links: dict[str, int]) -> Request:
        return request(action, obj, protocol, links)


def _delete_order(change: Change) -> tuple[bool, int]:
    rule = cast(Rule, change.obj)
    return rule.action == "lookup", rule.priority


KIND = RuleKind()
