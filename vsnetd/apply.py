"""apply: Plan -> kernel. The only module that changes kernel state.

The whole plan goes out as batched netlink requests (many per ``send``), one ACK each.
A failing request fails its VS only: the kernel processes every message of a batch on
its own, and the first error of each VS is reported with the kernel's own words.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vsnetd import netlink
from vsnetd.kinds import address, route, rule
from vsnetd.state import Change, Plan

# A delete that finds nothing has reached its goal (e.g. an admin removed it meanwhile).
GONE = {-errno.ENOENT, -errno.ESRCH, -errno.EADDRNOTAVAIL}

Encoder = Callable[[str, Any, int, dict[str, int]], tuple[int, int, bytes]]
ENCODERS: dict[str, Encoder] = {
    "address": address.request,
    "route": route.request,
    "rule": rule.request,
}


@dataclass(slots=True)
class ApplyResult:
    applied: list[Change] = field(default_factory=list)
    failed: list[tuple[Change, str]] = field(default_factory=list)

    def failures_by_server(self) -> dict[str, str]:
        """The first error of each VS (later ones usually follow from it)."""
        first: dict[str, str] = {}
        for change, error in self.failed:
            first.setdefault(change.server or "(removed)", f"{change.obj.describe()}: {error}")
        return first


def apply_plan(
    sock: netlink.RtnlSocket, plan: Plan, links: dict[str, int], protocol: int
) -> ApplyResult:
    result = ApplyResult()
    for device in sorted({c.obj.device for c in plan.changes
                          if c.action == "delete" and isinstance(c.obj, address.Address)
                          and c.obj.family == socket.AF_INET}):
        address.protect_secondaries(device)
    requests = []
    sendable = []
    for change in plan.changes:
        try:
            requests.append(ENCODERS[change.obj.kind](change.action, change.obj, protocol, links))
        except KeyError as exc:  # the device vanished between observe and apply
            result.failed.append((change, f"device {exc.args[0]} does not exist"))
            continue
        sendable.append(change)
    for change, reply in zip(sendable, sock.batch(requests), strict=True):
        if reply.ok or (change.action == "delete" and reply.error in GONE):
            result.applied.append(change)
        else:
            result.failed.append((change, reply.describe()))
    return result
