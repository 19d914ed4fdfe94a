"""Policy routing rules: ``from <address> lookup <table>`` and ``fwmark <mark> lookup <table>``.

Ownership: rules carry FRA_PROTOCOL = vsnet's protocol (Linux >= 4.17); deletes name it, so
the kernel only ever deletes a rule of ours.
"""

from __future__ import annotations

import socket
import struct
from typing import Any, Literal, NamedTuple

from vsnetd import netlink
from vsnetd.kinds import _ip

# family, dst_len, src_len, tos, table, res1, res2, action, flags
FIB_RULE_HDR = struct.Struct("=BBBBBBBBI")
FRA_SRC, FRA_PRIORITY, FRA_FWMARK, FRA_TABLE, FRA_FWMASK, FRA_PROTOCOL = 2, 6, 10, 15, 16, 21
FR_ACT_TO_TBL = 1
FULL_MASK = 0xFFFFFFFF

RuleKey = tuple[str, int, int, int, str, int, int]


class Rule(NamedTuple):
    family: int
    priority: int
    table: int
    source: str | None = None  # "10.0.0.5/32"
    fwmark: int | None = None
    fwmask: int | None = None
    netns: str = ""  # "": the namespace vsnet runs in

    @property
    def kind(self) -> Literal["rule"]:
        return "rule"

    @property
    def key(self) -> RuleKey:
        """Rules have no identity but their whole content."""
        return (self.netns, self.family, self.priority, self.table, self.source or "",
                self.fwmark or 0, self.fwmask or 0)

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
        words.append(f"lookup {self.table}")
        if self.netns:
            words.append(f"netns {self.netns}")
        return " ".join(words)

    def as_json(self) -> dict[str, Any]:
        return {"kind": "rule", "family": 6 if self.family == socket.AF_INET6 else 4,
                "priority": self.priority, "table": self.table, "source": self.source,
                "fwmark": self.fwmark, "fwmask": self.fwmask, "netns": self.netns}


def request(action: str, obj: Rule, protocol: int, links: dict[str, int]) -> tuple[int, int, bytes]:
    src_len = 0
    attrs = netlink.attr_u32(FRA_PRIORITY, obj.priority) + netlink.attr_u32(FRA_TABLE, obj.table)
    if obj.source:
        address, src_len = _ip.split_prefix(obj.source)
        attrs += netlink.attr(FRA_SRC, _ip.pack(address))
    if obj.fwmark is not None:
        attrs += netlink.attr_u32(FRA_FWMARK, obj.fwmark)
        attrs += netlink.attr_u32(FRA_FWMASK, FULL_MASK if obj.fwmask is None else obj.fwmask)
    attrs += netlink.attr_u8(FRA_PROTOCOL, protocol)
    table = obj.table if obj.table < 256 else 252
    header = FIB_RULE_HDR.pack(obj.family, 0, src_len, 0, table, 0, 0, FR_ACT_TO_TBL, 0)
    if action == "delete":
        return netlink.RTM_DELRULE, 0, header + attrs
    return netlink.RTM_NEWRULE, netlink.NLM_F_CREATE | netlink.NLM_F_EXCL, header + attrs


def decoder(
    protocol: int, priorities: range, netns: str = ""
) -> netlink.Decoder[tuple[Rule, bool]]:
    """Decodes an RTM_NEWRULE/RTM_DELRULE (dump or notification) into (rule, owned):
    ``lookup`` rules carrying ``protocol`` and foreign ones in ``priorities``."""
    unpack_attr = netlink.ATTR.unpack_from
    unpack_u32 = netlink.U32.unpack_from

    def decode(data: bytearray, start: int, end: int) -> tuple[Rule, bool] | None:
        family, _dl, src_len, _tos, table, _r1, _r2, action, _fl = FIB_RULE_HDR.unpack_from(
            data, start)
        if action != FR_ACT_TO_TBL:
            return None
        source = fwmark = fwmask = None
        priority = proto = 0
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
            elif kind == FRA_PROTOCOL:
                proto = data[pos + 4]
            pos += (length + 3) & ~3
        owned = proto == protocol
        if not owned and priority not in priorities:
            return None
        return Rule(family, priority, table, source, fwmark, fwmask, netns), owned

    return decode


def observe(
    sock: netlink.RtnlSocket, family: int, protocol: int, priorities: range, netns: str = ""
) -> list[tuple[Rule, bool]]:
    """``lookup`` rules of ``family`` as (rule, owned), see :func:`decoder`."""
    header = FIB_RULE_HDR.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)
    return sock.dump(netlink.RTM_GETRULE, header, decoder(protocol, priorities, netns))
