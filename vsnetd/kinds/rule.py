"""Policy routing rules: ``from <address> lookup <table>`` and ``fwmark <mark> lookup <table>``.

Ownership: rules carry FRA_PROTOCOL = vsnet's protocol (Linux >= 4.17); deletes name it, so
the kernel only ever deletes a rule of ours.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from vsnetd import netlink
from vsnetd.kinds import _ip

FIB_RULE_HDR = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, res1, res2, action, flags
FRA_SRC, FRA_PRIORITY, FRA_FWMARK, FRA_TABLE, FRA_FWMASK, FRA_PROTOCOL = 2, 6, 10, 15, 16, 21
FR_ACT_TO_TBL = 1
FULL_MASK = 0xFFFFFFFF

RuleKey = tuple[int, int, int, str, int, int]


@dataclass(frozen=True, slots=True, order=True)
class Rule:
    family: int
    priority: int
    table: int
    source: str | None = None  # "10.0.0.5/32"
    fwmark: int | None = None
    fwmask: int | None = None

    kind: ClassVar[Literal["rule"]] = "rule"

    @property
    def key(self) -> RuleKey:
        """Rules have no identity but their whole content."""
        return (self.family, self.priority, self.table, self.source or "",
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
        return " ".join(words)

    def as_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "family": 6 if self.family == socket.AF_INET6 else 4,
                "priority": self.priority, "table": self.table, "source": self.source,
                "fwmark": self.fwmark, "fwmask": self.fwmask}


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


def dump(sock: netlink.RtnlSocket, family: int) -> list[netlink.Message]:
    return sock.dump(netlink.RTM_GETRULE, FIB_RULE_HDR.pack(family, 0, 0, 0, 0, 0, 0, 0, 0))


def decode(message: netlink.Message) -> tuple[Rule, int] | None:
    """(rule, protocol) of one RTM_NEWRULE; None for actions other than ``lookup``."""
    body = message.body
    family, _dst_len, src_len, _tos, table, _r1, _r2, action, _flags = FIB_RULE_HDR.unpack_from(body)
    if action != FR_ACT_TO_TBL:
        return None
    attrs = netlink.parse_attrs(body, FIB_RULE_HDR.size, len(body))
    if FRA_TABLE in attrs:
        table = netlink.U32.unpack(attrs[FRA_TABLE])[0]
    raw_src = attrs.get(FRA_SRC)
    rule = Rule(
        family=family,
        priority=netlink.U32.unpack(attrs[FRA_PRIORITY])[0] if FRA_PRIORITY in attrs else 0,
        table=table,
        source=f"{_ip.unpack(family, raw_src)}/{src_len}" if raw_src else None,
        fwmark=netlink.U32.unpack(attrs[FRA_FWMARK])[0] if FRA_FWMARK in attrs else None,
        fwmask=netlink.U32.unpack(attrs[FRA_FWMASK])[0] if FRA_FWMASK in attrs else None,
    )
    protocol = attrs[FRA_PROTOCOL][0] if FRA_PROTOCOL in attrs else 0
    return rule, protocol
