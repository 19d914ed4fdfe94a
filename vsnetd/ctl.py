"""vsnetctl's front door.

``activate``, ``deactivate`` and ``is-active`` go straight to the running daemon, without
loading the config machinery (pydantic alone costs ~150 ms): they are on the way of a
cluster's failover (the OCF agent ``packaging/ocf/vsnet`` calls them), where a whole
``vsnetctl activate`` takes ~40 ms. Every other command, and these when no daemon answers,
go to :mod:`vsnetd.cli`.

Exit status of ``is-active`` (as ``systemctl is-active``): 0 every name is active and in
sync, 3 one is inactive (and none is broken), 1 one is active but not in sync (or error).
All three exit with 2 when a name is not a ``placement: cluster`` VS of the config.
"""

from __future__ import annotations

import sys

# Anything else is imported by the command that uses it: even json, pathlib, typing and
# socket are a fifth of a `vsnetctl --help` (docs/benchmarks.md).
TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing; mypy knows the name
if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path
    from typing import Any

FAST = ("activate", "deactivate", "is-active")
# vsnetd.config.DEFAULT_CONFIG_PATH, not imported from there: that costs the import of
# pydantic (tests/test_activation.py checks that both agree)
DEFAULT_CONFIG = "/etc/vsnet/servers.yaml"
EXIT_OK, EXIT_ERROR, EXIT_REFUSED, EXIT_INACTIVE = 0, 1, 2, 3
JSON_VERSION = 1


def split(argv: Sequence[str]) -> tuple[str | None, str, bool, list[str]] | None:
    """(command, config, json, names) of a simple command line; None when it holds anything
    else (help, an unknown option): then the full parser of vsnetd.cli speaks."""
    command: str | None = None
    config = DEFAULT_CONFIG
    as_json = False
    names: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg in ("-c", "--config"):
            value = next(args, None)
            if value is None or value.startswith("-"):
                return None  # argparse refuses an option where the file should be
            config = value
        elif arg.startswith("--config="):
            config = arg.removeprefix("--config=")
        elif arg == "--json":
            as_json = True
        elif arg.startswith("-"):
            return None
        elif command is None:
            command = arg
        else:
            names.append(arg)
    return command, config, as_json, names


def via_daemon(op: str, names: list[str], config: str | Path) -> dict[str, Any] | None:
    """The running daemon's answer; None when no daemon answers."""
    from pathlib import Path

    from vsnetd import control

    try:
        return control.request(op, names=names, config=str(Path(config).absolute()))
    except (control.DaemonUnavailable, ConnectionError):
        return None


def exit_status(op: str, reply: dict[str, Any]) -> int:
    if reply.get("refused"):
        return EXIT_REFUSED
    servers = reply.get("servers")
    if not isinstance(servers, dict):
        return EXIT_ERROR
    if op != "is-active":
        return EXIT_OK if reply.get("ok") else EXIT_ERROR
    if any(s["active"] and s["state"] != "in-sync" for s in servers.values()):
        return EXIT_ERROR
    return EXIT_INACTIVE if any(not s["active"] for s in servers.values()) else EXIT_OK


def report(op: str, reply: dict[str, Any], as_json: bool) -> int:
    """Print the answer (text or JSON); the exit status."""
    status = exit_status(op, reply)
    if as_json:
        import json

        print(json.dumps({"version": JSON_VERSION, **reply}, indent=2, sort_keys=True))
        return status
    if "servers" not in reply:
        print(f"vsnetctl: {reply.get('error', f'{op} failed')}", file=sys.stderr)
        return status
    for name, server in reply["servers"].items():
        where = "active" if server["active"] else "inactive"
        state = "" if server["state"] == "inactive" else f", {server['state']}"
        reasons = "".join(f"; {reason}" for reason in server["reasons"])
        print(f"{name}: {where}{state}{reasons}")
    if "seconds" in reply and op != "is-active":
        print(f"{op}: {reply['seconds'] * 1000:.1f} ms")
    return status


def main(argv: Sequence[str] | None = None) -> int:
    whole_process = argv is None  # the console script: vsnetd.cli may end the process
    argv = list(sys.argv[1:] if argv is None else argv)
    parsed = split(argv)
    if parsed is not None and parsed[0] in FAST and parsed[3]:
        command, config, as_json, names = parsed
        op = str(command)
        reply = via_daemon(op, names, config)
        if reply is not None:
            return report(op, reply, as_json)
    from vsnetd import cli  # no daemon, or another command: the whole of vsnetctl

    return cli.main(argv, whole_process=whole_process)


if __name__ == "__main__":
    sys.exit(main())
