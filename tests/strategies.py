"""hypothesis strategies the property tests share."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hypothesis import settings
from hypothesis import strategies as st

if TYPE_CHECKING:
    from vsnetd.state import DesiredState, ObservedState

UPLINKS = {"eth0": 2, "eth1": 3}


def examples(count: int) -> int:
    """``count`` scaled by the loaded profile's ``max_examples`` over the default 100: as
    written normally, a tenth under the "mutation" profile of tests/conftest.py (an
    explicit ``max_examples`` would otherwise override the profile)."""
    return max(1, count * settings.default.max_examples // 100)


@st.composite
def server_specs(draw: st.DrawFn, server_id: int) -> dict[str, Any]:
    count = draw(st.integers(1, 4))
    addresses = []
    for k in range(count):
        if draw(st.booleans()):
            entry: dict[str, Any] = {"address": f"10.{server_id // 64}.{server_id % 64 * 4 + k}.5/24"}
            gateway = f"10.{server_id // 64}.{server_id % 64 * 4 + k}.1"
        else:
            entry = {"address": f"2001:db8:{server_id:x}:{k}::5/64"}
            gateway = f"2001:db8:{server_id:x}:{k}::1"
        if draw(st.booleans()):
            entry["gateway"] = gateway
        addresses.append(entry)
    spec: dict[str, Any] = {
        "id": server_id,
        "mode": draw(st.sampled_from(["pbr", "pbr", "netns"])),
        "uplink": draw(st.sampled_from(sorted(UPLINKS))),
        "addresses": addresses,
    }
    if spec["mode"] == "netns":
        if draw(st.booleans()):
            spec["namespace"] = draw(st.sampled_from(["shared", f"own{server_id}"]))
        if draw(st.booleans()):
            spec["sysctl"] = {"net.ipv4.conf.all.rp_filter": 1}
        if draw(st.booleans()):
            spec["dns"] = {"servers": ["192.0.2.53"], "search": ["example.net"]}
    with_gateway = [a for a in addresses if "gateway" in a]
    if with_gateway and draw(st.booleans()):
        spec["gateway"] = with_gateway[0]["gateway"]
    if draw(st.booleans()):
        first = addresses[0]["address"].split("/")[0]
        via = first.rsplit(".", 1)[0] + ".254" if "." in first else first.rsplit(":", 1)[0] + ":fe"
        to = "192.168.0.0/16" if "." in first else "2001:db8:ffff::/48"
        spec["routes"] = [{"to": to, "via": via}]
    if draw(st.integers(0, 9)) == 0:
        spec["mark"] = 0x7000000 + server_id
    return spec


def kernel_holding(desired: DesiredState, links: dict[str, int] | None = None) -> ObservedState:
    """A kernel holding everything ``desired`` wants, all of it vsnet's, with ``links``
    (default UPLINKS) in the root namespace."""
    from vsnetd.state import ObservedState

    observed = ObservedState(links={"": dict(UPLINKS if links is None else links)})
    for server in desired.servers.values():
        for obj in server.objects:
            observed.add(obj)
    for obj in desired.shared.values():
        observed.add(obj)
    return observed
