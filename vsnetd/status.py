"""Per-VS status, one rendering for vsnetctl and the daemon."""

from __future__ import annotations

from typing import Any

from vsnetd.kinds import Route, Rule
from vsnetd.kinds.route import RT_TABLE_MAIN
from vsnetd.state import DesiredState, Plan, ServerVerdict


def server_status(desired: DesiredState, verdicts: dict[str, ServerVerdict], plan: Plan
                  ) -> dict[str, dict[str, Any]]:
    """Per VS: what it is, the numbers it owns, and whether the kernel matches it."""
    pending: dict[str, int] = {}
    for change in plan.changes:
        if change.server:
            pending[change.server] = pending.get(change.server, 0) + 1
    report = {}
    for name, server in desired.servers.items():
        verdict = verdicts.get(name, ServerVerdict("pending"))
        tables = sorted({o.table for o in server.objects
                         if isinstance(o, Route | Rule) and o.table != RT_TABLE_MAIN})
        priorities = sorted({o.priority for o in server.objects if isinstance(o, Rule)})
        report[name] = {
            "id": server.id,
            "mode": server.mode,
            "uplink": server.uplink,
            "netns": server.netns,
            "device": server.device,
            "addresses": list(server.addresses),
            "mark": server.numbers.mark,
            "mark_table": server.numbers.mark_table,
            "tables": tables,
            "priorities": priorities,
            "state": verdict.state,
            "reasons": list(verdict.reasons),
            "pending_changes": pending.get(name, 0),
        }
    return report


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def render_status(report: dict[str, dict[str, Any]]) -> str:
    rows = [["SERVER", "ID", "MODE", "DEVICE", "NETNS", "STATE", "MARK", "TABLES", "PRIORITIES",
             "ADDRESSES"]]
    notes: list[str] = []
    for name, s in report.items():
        device = s["device"] if s["device"] == s["uplink"] else f"{s['device']}@{s['uplink']}"
        rows.append([
            name, str(s["id"]), s["mode"], device, s["netns"] or "-", s["state"],
            f"{s['mark']:#x}" if s["mode"] == "pbr" else "-",
            ",".join(map(str, s["tables"])) or "-", ",".join(map(str, s["priorities"])) or "-",
            " ".join(s["addresses"]),
        ])
        notes.extend(f"{name}: {reason}" for reason in s["reasons"])
        if s["pending_changes"]:
            notes.append(f"{name}: {s['pending_changes']} change(s) pending (see vsnetctl plan)")
    if len(rows) == 1:
        return "no servers configured"
    return _table(rows) + ("\n\n" + "\n".join(notes) if notes else "")


SUMMARY_NAMES = 3  # VS named per state in the line; `vsnetctl status` has them all


def summary(verdicts: dict[str, ServerVerdict], seconds: float | None) -> str:
    """One line for systemd's STATUS= (what `systemctl status` shows):
    '12 servers in sync, 1 failed (nas2); last reconcile 3.1 ms'."""
    names: dict[str, list[str]] = {}
    for name, verdict in verdicts.items():
        names.setdefault(verdict.state, []).append(name)
    parts = [f"{len(names.pop('in-sync', []))} servers in sync"]
    for state, which in sorted(names.items()):
        shown = ", ".join(sorted(which)[:SUMMARY_NAMES]) + (
            ", ..." if len(which) > SUMMARY_NAMES else "")
        parts.append(f"{len(which)} {state} ({shown})")
    line = ", ".join(parts)
    if seconds is not None:
        line += f"; last reconcile {seconds * 1000:.1f} ms"
    return line
