"""vsnetctl: validate, plan, apply, status and teardown, one shot each.

A thin driver over :mod:`vsnetd.reconcile`; exit codes are part of the interface:

=========  =====================================================================
command    exit status
=========  =====================================================================
validate   0 valid, 1 invalid
plan       0 in sync, 2 changes pending (or a VS waiting / in conflict), 1 error
apply      0 every VS converged, 1 otherwise
status     0 every VS in sync, 2 otherwise, 1 error
teardown   0 everything vsnet owned is gone, 1 otherwise
=========  =====================================================================
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vsnetd.compile import compile_config
from vsnetd.config import DEFAULT_CONFIG_PATH, Config, ConfigError, json_schema, load_config
from vsnetd.kernel import Kernel
from vsnetd.kinds import Route, Rule
from vsnetd.kinds.route import RT_TABLE_MAIN
from vsnetd.reconcile import ConvergeResult, converge, plan_for
from vsnetd.state import DesiredState, Plan, ServerVerdict

EXIT_OK, EXIT_ERROR, EXIT_PENDING = 0, 1, 2
JSON_VERSION = 1


def _print_json(document: dict[str, Any]) -> None:
    print(json.dumps({"version": JSON_VERSION, **document}, indent=2, sort_keys=True))


def _load(args: argparse.Namespace) -> Config:
    return load_config(args.config)


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _range(numbers: range) -> str:
    return f"{numbers[0]}-{numbers[-1]}"


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


def _render_status(report: dict[str, dict[str, Any]]) -> str:
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


# --------------------------------------------------------------------------- commands


def cmd_validate(args: argparse.Namespace) -> int:
    config = _load(args)
    if args.json:
        _print_json({"valid": True, "servers": sorted(config.servers)})
    else:
        print(f"{args.config}: valid, {len(config.servers)} server(s)")
    return EXIT_OK


def _render_verdicts(verdicts: dict[str, ServerVerdict]) -> str:
    return "\n".join(
        f"! {name}: {verdict.state}: {reason}"
        for name, verdict in verdicts.items()
        if verdict.state in ("waiting", "conflict", "failed")
        for reason in verdict.reasons
    )


def cmd_plan(args: argparse.Namespace) -> int:
    desired = compile_config(_load(args))
    with Kernel() as kernel:
        plan = plan_for(kernel, desired)
    in_sync = all(v.state == "in-sync" for v in plan.servers.values()) and not plan
    if args.json:
        _print_json({"in_sync": in_sync, **plan.as_json()})
    else:
        print(plan.describe())
        blocked = _render_verdicts(plan.servers)
        if blocked:
            print(blocked)
    return EXIT_OK if in_sync else EXIT_PENDING


def _report_converge(result: ConvergeResult, args: argparse.Namespace) -> None:
    if args.json:
        _print_json({
            "converged": result.converged,
            "seconds": round(result.seconds, 6),
            "applied": [change.as_json() for change in result.applied],
            "remaining": [change.as_json() for change in result.final_plan.changes],
            "servers": {name: v.as_json() for name, v in result.servers.items()},
        })
        return
    for change in result.applied:
        print(change.describe())
    if not result.applied:
        print("no changes")
    blocked = _render_verdicts(result.servers)
    if blocked:
        print(blocked)
    print(f"{len(result.applied)} change(s) in {result.seconds * 1000:.1f} ms")


def cmd_apply(args: argparse.Namespace) -> int:
    desired = compile_config(_load(args))
    with Kernel() as kernel:
        result = converge(kernel, desired)
    _report_converge(result, args)
    return EXIT_OK if result.converged else EXIT_ERROR


def cmd_status(args: argparse.Namespace) -> int:
    desired = compile_config(_load(args))
    with Kernel() as kernel:
        plan = plan_for(kernel, desired)
    report = server_status(desired, plan.servers, plan)
    if args.json:
        _print_json({"config": str(args.config), "servers": report})
    else:
        print(_render_status(report))
    in_sync = all(s["state"] == "in-sync" for s in report.values())
    return EXIT_OK if in_sync else EXIT_PENDING


def cmd_schema(args: argparse.Namespace) -> int:
    print(json.dumps(json_schema(), indent=2, sort_keys=True))
    return EXIT_OK


def cmd_teardown(args: argparse.Namespace) -> int:
    # Everything carrying vsnet's protocol goes, whatever the config says now; the config
    # (when readable) only lends its settings, so deletes are attributed to their VS.
    try:
        base = _load(args)
    except ConfigError:
        base = Config(version=1)
    empty = dataclasses.replace(
        compile_config(Config(version=1, settings=base.settings)),
        former_names={server.id: name for name, server in base.servers.items()},
    )
    with Kernel() as kernel:
        result = converge(kernel, empty)
    _report_converge(result, args)
    return EXIT_OK if result.converged else EXIT_ERROR


COMMANDS = {
    "validate": (cmd_validate, "check the config file; exit 1 if invalid"),
    "plan": (cmd_plan, "show what apply would change (dry run)"),
    "apply": (cmd_apply, "converge the kernel to the config once"),
    "status": (cmd_status, "per virtual server: numbers, addresses, in sync or why not"),
    "teardown": (cmd_teardown, "remove every object vsnet created"),
    "schema": (cmd_schema, "print the JSON Schema of the config file"),
}


def _common_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    # Accepted before and after the command; only the top level sets defaults, or a
    # subcommand's default would overwrite ``vsnetctl -c FILE plan``.
    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument("-c", "--config", type=Path, default=default(DEFAULT_CONFIG_PATH),
                        help=f"config file (default {DEFAULT_CONFIG_PATH})")
    parser.add_argument("--json", action="store_true", default=default(False),
                        help="machine-readable output")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vsnetctl",
        description="Control vsnet: virtual servers over policy routing and namespaces.",
    )
    _common_options(parser, defaults=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_func, help_text) in COMMANDS.items():
        _common_options(sub.add_parser(name, help=help_text, description=help_text),
                        defaults=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # A one-shot process that allocates many small objects and no cycles: the cyclic
    # collector would only cost time (a third of a run at 1,000 VS).
    gc.disable()
    args = build_parser().parse_args(argv)
    func = COMMANDS[args.command][0]
    try:
        return func(args)
    except ConfigError as exc:
        if args.json:
            _print_json({"valid": False, "errors": [i.as_json() for i in exc.issues]})
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        return EXIT_ERROR
    except PermissionError as exc:
        print(f"vsnetctl: {exc.strerror or exc}: run as root (CAP_NET_ADMIN)", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
