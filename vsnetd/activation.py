"""Where a ``placement: cluster`` VS is active: the runtime active set.

A cluster VS is known on every node (its config validated, its numbers reserved) but is in
the kernel only on the node where a cluster manager activated it (``vsnetctl activate``,
the OCF agent ``packaging/ocf/vsnet``). The set of active names is runtime state, one name
per line in ``/run/vsnet/active``: it survives a restart of the daemon (the VS stays where
it is, serving) but not a reboot (a rebooted node holds nothing until the cluster says so).

Pure except for reading and writing that one file.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from vsnetd.config import Config
from vsnetd.state import DesiredState, ServerVerdict

ACTIVE_PATH = Path(os.environ.get("VSNET_ACTIVE", "/run/vsnet/active"))


class ActivationError(ValueError):
    """A name that cannot be (de)activated, with the reason."""


def read_active(path: Path = ACTIVE_PATH) -> frozenset[str]:
    """The names activated on this node; none when the file does not exist (after boot)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return frozenset()
    return frozenset(line.strip() for line in text.splitlines() if line.strip())


def write_active(names: Iterable[str], path: Path = ACTIVE_PATH) -> None:
    """Replace the set atomically (a reader sees the old set or the new one, never half)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text("".join(f"{name}\n" for name in sorted(set(names))), encoding="utf-8")
    os.replace(temporary, path)


def check_names(config: Config, names: Iterable[str]) -> list[str]:
    """Why each of ``names`` cannot be switched: unknown, or not a cluster VS."""
    problems = []
    for name in names:
        server = config.servers.get(name)
        if server is None:
            problems.append(f"{name}: no such server in the config")
        elif server.placement != "cluster":
            problems.append(f"{name}: placement is {server.placement}, not cluster: it is "
                            "always active")
    return problems


def switched(active: frozenset[str], names: Iterable[str], *, on: bool) -> frozenset[str]:
    return active | set(names) if on else active - set(names)


def is_active(config: Config, name: str, active: frozenset[str]) -> bool:
    server = config.servers.get(name)
    return server is not None and (server.placement != "cluster" or name in active)


def select(desired: DesiredState, config: Config, active: frozenset[str]) -> DesiredState:
    """``desired`` (compiled from all of ``config``) without the cluster VS that are not
    active here. The scope stays that of every VS: an inactive VS's numbers stay reserved
    (a foreign object in them is still reported), and what is left of it in the kernel is
    deleted in its name."""
    inactive = {name for name, server in config.servers.items()
                if server.placement == "cluster" and name not in active}
    if not inactive:
        return desired
    return desired._replace(
        servers={name: s for name, s in desired.servers.items() if name not in inactive},
        former_names=desired.former_names | {config.servers[name].id: name for name in inactive},
        former_namespaces=desired.former_namespaces | {
            config.servers[name].namespace_name(name): name for name in inactive
            if config.servers[name].mode == "netns"},
    )


def annotate(report: dict[str, dict[str, Any]], config: Config, active: frozenset[str]
             ) -> dict[str, dict[str, Any]]:
    """A status report (vsnetd/status.py, of every VS compiled) with each VS's placement and
    whether it is active here; an inactive VS's state is "inactive"."""
    for name, row in report.items():
        server = config.servers.get(name)
        placement = server.placement if server is not None else "local"
        row["placement"] = placement
        row["active"] = placement != "cluster" or name in active
        if not row["active"]:
            row.update(state="inactive", reasons=[], pending_changes=0)
    return report


def reply(names: list[str], active: frozenset[str], verdicts: dict[str, ServerVerdict],
          op: str) -> dict[str, Any]:
    """The daemon's answer to activate / deactivate / is-active: per name, active or not,
    and its state; ok when each is where it was asked to be (activate: active and in sync;
    deactivate: inactive and gone from the kernel; is-active: always)."""
    servers: dict[str, dict[str, Any]] = {}
    ok = True
    for name in names:
        is_on = name in active
        verdict = verdicts.get(name)
        state: str
        if is_on:
            state = verdict.state if verdict is not None else "pending"
        else:
            # a failed delete leaves a verdict behind (the failure is reported in its name)
            state = verdicts[name].state if name in verdicts else "inactive"
        servers[name] = {"active": is_on, "state": state,
                         "reasons": list(verdict.reasons) if verdict is not None else []}
        if op == "activate":
            ok &= state == "in-sync"
        elif op == "deactivate":
            ok &= state == "inactive"
    return {"ok": ok, "servers": servers}
