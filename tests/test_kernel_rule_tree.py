"""The rule tree (docs/rule-tree.md) in the kernel, with 1,000 VS: the kernel's own answers
(``ip -j route get``, ``ip -j rule``), each test in a fresh network namespace."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.sandbox import ip, ip_json
from vsnetd import netlink
from vsnetd.kinds import rule
from vsnetd.state import VSNET_PROTOCOL

pytestmark = pytest.mark.usefixtures("netns")

CLIENT = "198.51.100.7"  # somewhere beyond the gateways
MARK_BASE = 0x5600000


def address(server_id: int, subnet: int) -> str:
    """VS n's address in 10.1.0.0/16 or 10.2.0.0/16: host 10 + n, allocated in sequence."""
    host = 10 + server_id
    return f"10.{subnet}.{host >> 8}.{host & 255}"


def config(ids: list[int]) -> str:
    lines = ["version: 1", "servers:"]
    for i in ids:
        lines.append(
            f"  vs{i}: {{id: {i}, mode: pbr, uplink: eth0, gateway: 10.1.0.1, addresses: ["
            f"{{address: {address(i, 1)}/16, gateway: 10.1.0.1}}, "
            f"{{address: {address(i, 2)}/16, gateway: 10.2.0.1}}]}}")
    return "\n".join(lines) + "\n"


def apply(path: Path, ids: list[int]) -> None:
    path.write_text(config(ids))
    vsnetctl_apply(path)


def vsnetctl_apply(path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "vsnetd.cli", "apply", "-c", str(path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def route_get(*selector: str) -> dict[str, Any]:
    [answer] = ip_json("route", "get", CLIENT, *selector)
    return answer  # type: ignore[no-any-return]


def all_rules() -> Counter[str]:
    """Every rule of both families, as ``ip -j`` prints it (rules may repeat)."""
    return Counter(json.dumps(r, sort_keys=True) for family in ("-4", "-6")
                   for r in ip_json(family, "rule", "show"))


def test_host_traffic_reaches_main_and_each_vs_its_tables(uplink: str, tmp_path: Path) -> None:
    ip("addr", "add", "10.0.0.2/24", "dev", "eth0")  # the host's own address and gateway
    ip("route", "add", "default", "via", "10.0.0.1")
    apply(tmp_path / "servers.yaml", list(range(1, 1001)))
    assert len(ip_json("rule", "show")) > 3000

    for host_lookup in (route_get(), route_get("from", "10.0.0.2"), route_get("mark", "7")):
        assert (host_lookup.get("gateway"), host_lookup.get("table", "main")) == (
            "10.0.0.1", "main"), host_lookup
    # the VS's tables: 10000 + 16 * id + index, skipping the numbers 253-255 modulo 256
    # (vsnetd/numbering.py)
    for server_id, tables in ((1, (10016, 10017, 10031)), (500, (18093, 18094, 18108)),
                              (1000, (26189, 26190, 26204))):
        for subnet in (1, 2):
            reply = route_get("from", address(server_id, subnet))
            assert (reply["gateway"], reply["table"]) == (
                f"10.{subnet}.0.1", str(tables[subnet - 1])), reply
        marked = route_get("mark", hex(MARK_BASE + server_id))
        assert (marked["gateway"], marked["table"], marked["prefsrc"]) == (
            "10.1.0.1", str(tables[2]), address(server_id, 1)), marked


def test_adding_or_removing_a_vs_in_the_middle_changes_only_its_rules(
    uplink: str, tmp_path: Path
) -> None:
    path = tmp_path / "servers.yaml"
    others = [i for i in range(1, 1001) if i != 500]
    apply(path, others)
    before = all_rules()

    apply(path, sorted([*others, 500]))
    after = all_rules()
    assert after - before + before == after  # nothing went, nothing moved
    added = [json.loads(text) for text in after - before]
    # vs500's address rules and its mark rule; the rule tree's nodes on its way exist
    # already (its neighbours' addresses and marks share them)
    assert sorted((r["src"], r.get("fwmark"), r["table"], r["protocol"]) for r in added) == [
        ("10.1.1.254", None, "18093", "vsnet"), ("10.2.1.254", None, "18094", "vsnet"),
        ("all", "0x56001f4", "18108", "vsnet")]

    apply(path, others)
    assert all_rules() == before


def test_removing_the_mark_zero_group_leaves_its_siblings(uplink: str, tmp_path: Path) -> None:
    """The rule entering the group of marks 0x0xxxxxxx shares its priority with those
    entering the groups of other first digits: deleting it must delete it, not the first
    rule of its priority (the kernel's own notifications say which went)."""
    path = tmp_path / "servers.yaml"
    both = """\
version: 1
servers:
  hi: {id: 1, mode: pbr, uplink: eth0, mark: 0x10000001, gateway: 10.1.0.1,
       addresses: [{address: 10.1.0.11/16}]}
  lo0: {id: 2, mode: pbr, uplink: eth0, gateway: 10.1.0.1, addresses: [{address: 10.1.0.12/16}]}
"""
    path.write_text(both)
    vsnetctl_apply(path)
    entering = {r["fwmark"]: (r.get("table"), r["goto"]) for r in ip_json("rule", "show")
                if r.get("fwmask") == "0xf0000000"}
    assert set(entering) == {"0", "0x10000000"}
    assert entering["0"][0] == str(entering["0"][1]) and entering["0x10000000"][0] is None
    monitor = netlink.RtnlMonitor()
    deleted: list[tuple[int | None, int | None]] = []
    decode = rule.decoder(VSNET_PROTOCOL, range(0))

    def note(message: int, data: bytearray, start: int, end: int) -> None:
        found = decode(data, start, end) if message == netlink.RTM_DELRULE else None
        if found is not None and found[0].fwmask == 0xF0000000:
            deleted.append((found[0].fwmark, found[0].target))

    try:
        path.write_text(both[:both.index("  lo0:")])
        vsnetctl_apply(path)
        monitor.read(note)
    finally:
        monitor.close()
    assert [mark for mark, _target in deleted] == [0]
    assert [r["fwmark"] for r in ip_json("rule", "show") if r.get("fwmask") == "0xf0000000"] == [
        "0x10000000"]
