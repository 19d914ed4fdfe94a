"""vsnet with real 802.1Q VLANs, under a Debian kernel in a VM (the host kernel has none).

The scenarios run in one VM boot and one process (``tests/vm/scenarios.py``); each test
checks one part of what that run saw.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.vm.harness import HarnessError, ensure_image, run_in_vm

pytestmark = pytest.mark.vm
MARKER = "VSNET-SCENARIOS="


@pytest.fixture(scope="module")
def seen() -> dict[str, Any]:
    try:
        ensure_image()
    except HarnessError as error:
        pytest.fail(str(error), pytrace=False)
    result = run_in_vm(".venv/bin/python -m tests.vm.scenarios", timeout=300)
    assert result.returncode == 0, result.output
    line = next((ln for ln in result.output.splitlines() if ln.startswith(MARKER)), None)
    assert line is not None, result.output
    return json.loads(line.removeprefix(MARKER))  # type: ignore[no-any-return]


def test_figure_2_overlapping_vs_on_two_vlans_served_by_one_process(seen: dict[str, Any]) -> None:
    assert seen["converged"], seen["failures"]
    assert seen["cl100_asks"] == "I am A"
    assert seen["cl200_asks"] == "I am B"
    for name, vlan in (("A", 100), ("B", 200)):
        device = seen[name]
        assert device["linkinfo"]["info_kind"] == "vlan"
        assert device["linkinfo"]["info_data"]["id"] == vlan
        assert device["linkinfo"]["info_data"]["protocol"] == "802.1Q"
        assert device["ifalias"] == "vsnet"


def test_vlan_devices_are_created_in_their_namespace_and_survive_unrelated_edits(
    seen: dict[str, Any],
) -> None:
    # created directly inside: the root namespace never saw a device called A or B
    assert "A" not in seen["root_new_links"] and "B" not in seen["root_new_links"]
    assert seen["A"]["ifindex"] == 10001 and seen["B"]["ifindex"] == 10002
    # editing B's address touched B only; A's device is the same device
    assert seen["edit_servers"] == ["B"]
    assert seen["A_after_edit"]["ifindex"] == seen["A"]["ifindex"]
    assert seen["A_after_edit"]["address"] == seen["A"]["address"]
    assert seen["B_after_edit"]["ifindex"] == seen["B"]["ifindex"]
    # removing B removed its namespace, and its VLAN device with it
    assert "vs-B" not in seen["namespaces_after_removal"]
    assert "vs-A" in seen["namespaces_after_removal"]
    assert seen["vlans_after_removal"] == [100, 300]
    assert seen["in_sync_after_removal"]


def test_pbr_vs_on_a_vlan(seen: dict[str, Any]) -> None:
    device = seen["C"]
    assert device["linkinfo"]["info_kind"] == "vlan"
    assert device["linkinfo"]["info_data"]["id"] == 300
    assert device["ifalias"] == "vsnet"
    # at its place in the rule tree (docs/rule-tree.md), tagged as vsnet's: by name where
    # the VM's iproute2 reads packaging/rt_protos.d, else by number
    [rule] = [r for r in seen["C_rules"] if r.get("src") == "10.3.0.5"]
    assert rule in ({"priority": 26900, "src": "10.3.0.5", "table": "10048", "protocol": p}
                    for p in ("vsnet", "86"))
    assert {(r["dst"], r["dev"]) for r in seen["C_table"]} == {
        ("10.3.0.0/24", "trunk0.300"), ("default", "trunk0.300")}
    assert seen["cl300_asks"] == "I am C"
