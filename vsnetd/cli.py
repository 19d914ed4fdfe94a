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
activate   0 every named VS active and in sync, 1 otherwise
deactivate 0 every named VS inactive and gone from the kernel, 1 otherwise
is-active  0 every named VS active and in sync, 3 one inactive, 1 one not in sync
(all three: 2 when a name is not a cluster VS of the config)
metrics    0 printed, 1 no daemon
=========  =====================================================================

activate, deactivate and is-active (placement: cluster) go to the running daemon through
the lean front door :mod:`vsnetd.ctl`; without a daemon they work here, one shot.
"""

from __future__ import annotations

import gc
import io
import os
import sys

from vsnetd import __version__

# Each command imports what it uses, when it runs: pydantic, PyYAML and pyroute2 cost
# ~150 ms to import, `vsnetctl --help` or `status` against a daemon need none of them;
# even json, pathlib and typing are a fifth of a `vsnetctl --help` (docs/benchmarks.md).
TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing; mypy knows the name
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence
    from pathlib import Path
    from typing import Any, NoReturn

    from vsnetd.config import Config
    from vsnetd.reconcile import ConvergeResult
    from vsnetd.state import DesiredState, ServerVerdict

EXIT_OK, EXIT_ERROR, EXIT_PENDING = 0, 1, 2
JSON_VERSION = 1
DEFAULT_CONFIG_PATH = "/etc/vsnet/servers.yaml"  # = vsnetd.config.DEFAULT_CONFIG_PATH
# A look into at least this many namespaces shares its dumps with a forked child (a
# one-shot process may fork; vsnetd/forked.py): below, the fork costs more than it saves.
HELPER_FROM = 128


def _print_json(document: dict[str, Any]) -> None:
    import json

    print(json.dumps({"version": JSON_VERSION, **document}, indent=2, sort_keys=True))


def _load(args: argparse.Namespace) -> Config:
    from vsnetd.config import ConfigError, ConfigIssue, load_config

    try:
        return load_config(args.config)
    except MemoryError:
        pass  # refused below, once what the read had built is garbage
    raise ConfigError([ConfigIssue(str(args.config), 0, 0, "", "not read: vsnetctl ran out "
                                   "of memory reading the config (MemoryError)")])


def _desired(config: Config) -> DesiredState:
    """What the kernel should hold here: every VS but the cluster VS not active here."""
    from vsnetd import activation
    from vsnetd.compile import compile_config

    return activation.select(compile_config(config), config, activation.read_active())


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
    from vsnetd.kernel import Kernel
    from vsnetd.observe import look_ahead
    from vsnetd.reconcile import plan_for

    with Kernel(helper_from=HELPER_FROM) as kernel:
        look_ahead(kernel)  # the kernel's share of the look made while the config is read
        plan = plan_for(kernel, _desired(_load(args)))
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
    # one write: a print per change costs more than applying it at 10,000 changes
    lines = [change.describe() for change in result.applied] or ["no changes"]
    blocked = _render_verdicts(result.servers)
    if blocked:
        lines.append(blocked)
    lines.append(f"{len(result.applied)} change(s) in {result.seconds * 1000:.1f} ms")
    sys.stdout.write("\n".join(lines) + "\n")


def cmd_apply(args: argparse.Namespace) -> int:
    from vsnetd.kernel import Kernel
    from vsnetd.reconcile import converge

    desired = _desired(_load(args))
    with Kernel() as kernel:  # a converge's looks keep a memo: never shared (observe.py)
        result = converge(kernel, desired)
    _report_converge(result, args)
    return EXIT_OK if result.converged else EXIT_ERROR


def _daemon_status(args: argparse.Namespace) -> dict[str, Any] | None:
    """The running daemon's view, when it serves the same config file."""
    from vsnetd import control

    try:
        reply = control.request("status")
    except (control.DaemonUnavailable, OSError, ValueError):
        return None
    from pathlib import Path

    if Path(reply.get("daemon", {}).get("config", "")) != Path(args.config).absolute():
        return None
    return reply


def _print_daemon(reply: dict[str, Any], args: argparse.Namespace) -> int:
    daemon = reply["daemon"]
    if args.json:
        _print_json({"config": daemon["config"], "daemon": daemon, "servers": reply["servers"]})
    else:
        last = daemon.get("last_reconcile") or {}
        print(f"vsnetd (pid {daemon['pid']}): config generation {daemon['generation']}; "
              f"{daemon['status']}")
        if last:
            print(f"last reconcile: {last['at']} ({last['why']}), "
                  f"{last['seconds'] * 1000:.1f} ms, {last['changes']} change(s)")
        for error in daemon["config_errors"]:
            print(f"config refused: {error['file']}:{error['line']}:{error['column']}: "
                  f"{error['path']}: {error['message']}")
        for name, entry in (daemon.get("pending") or {}).items():
            print(f"pending: {'everything (full run)' if name == '*' else name}: "
                  f"{entry['why']}; {entry['tries']} tr{'y' if entry['tries'] == 1 else 'ies'}"
                  f" so far, next in {entry['next_attempt_in']:.1f} s")
        print()
        from vsnetd.status import render_status

        print(render_status(reply["servers"]))
    in_sync = all(s["state"] in ("in-sync", "inactive") for s in reply["servers"].values())
    return EXIT_OK if in_sync and not daemon["config_errors"] else EXIT_PENDING


def _only(servers: dict[str, Any], names: list[str], args: argparse.Namespace
          ) -> dict[str, Any] | None:
    """The VS named on the command line (all when none is); None when one is unknown."""
    unknown = [name for name in names if name not in servers]
    if unknown:
        print(f"vsnetctl: no virtual server {', '.join(unknown)} in {args.config}",
              file=sys.stderr)
        return None
    return {name: s for name, s in servers.items() if not names or name in names}


def cmd_status(args: argparse.Namespace) -> int:
    reply = _daemon_status(args)
    if reply is not None:
        selected = _only(reply["servers"], args.servers, args)
        if selected is None:
            return EXIT_ERROR
        return _print_daemon({**reply, "servers": selected}, args)
    from vsnetd import activation
    from vsnetd.compile import compile_config
    from vsnetd.kernel import Kernel
    from vsnetd.observe import look_ahead
    from vsnetd.reconcile import plan_for
    from vsnetd.status import render_status, server_status

    with Kernel(helper_from=HELPER_FROM) as kernel:
        look_ahead(kernel)  # as in cmd_plan
        config = _load(args)
        compiled, active = compile_config(config), activation.read_active()
        plan = plan_for(kernel, activation.select(compiled, config, active))
    report = _only(activation.annotate(server_status(compiled, plan.servers, plan), config,
                                       active), args.servers, args)
    if report is None:
        return EXIT_ERROR
    if args.json:
        _print_json({"config": str(args.config), "servers": report})
    else:
        print(render_status(report))
    in_sync = all(s["state"] in ("in-sync", "inactive") for s in report.values())
    return EXIT_OK if in_sync else EXIT_PENDING


def cmd_reload(args: argparse.Namespace) -> int:
    from vsnetd import control

    try:
        reply = control.request("reload")
    except control.DaemonUnavailable:
        print(f"vsnetctl: no vsnetd answers on {control.CONTROL_PATH}", file=sys.stderr)
        return EXIT_ERROR
    except TimeoutError:  # before OSError, whose kind it is
        print(f"vsnetctl: vsnetd did not answer the reload within {control.TIMEOUT:g} s; "
              "it may still be reading or converging: see `vsnetctl status`", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:
        print(f"vsnetctl: cannot ask vsnetd on {control.CONTROL_PATH}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return EXIT_ERROR
    except ValueError as exc:  # not JSON: whatever answers there is no vsnetd
        print(f"vsnetctl: no valid answer on {control.CONTROL_PATH}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if "daemon" not in reply:
        print(f"vsnetctl: {reply.get('error', 'reload failed')}", file=sys.stderr)
        return EXIT_ERROR
    _print_daemon(reply, args)
    if reply.get("error"):  # read, but converging it failed (retried by vsnetd)
        print(f"vsnetctl: {reply['error']}", file=sys.stderr)
    return EXIT_OK if reply.get("ok") else EXIT_ERROR


def cmd_metrics(args: argparse.Namespace) -> int:
    from vsnetd import control

    try:
        reply = control.request("metrics")
    except control.DaemonUnavailable:
        print(f"vsnetctl: no vsnetd answers on {control.CONTROL_PATH}", file=sys.stderr)
        return EXIT_ERROR
    if not reply.get("ok"):
        print(f"vsnetctl: {reply.get('error', 'metrics failed')}", file=sys.stderr)
        return EXIT_ERROR
    sys.stdout.write(reply["metrics"])
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    import json

    from vsnetd.config import json_schema

    print(json.dumps(json_schema(drop_in=args.drop_in), indent=2, sort_keys=True))
    return EXIT_OK


def cmd_teardown(args: argparse.Namespace) -> int:
    # Everything carrying vsnet's protocol goes, whatever the config says now; the config
    # (when readable) only lends its settings, so deletes are attributed to their VS.
    from vsnetd.compile import compile_config
    from vsnetd.config import Config, ConfigError
    from vsnetd.kernel import Kernel
    from vsnetd.reconcile import converge

    try:
        base = _load(args)
    except ConfigError:
        base = Config(version=1)
    empty = compile_config(Config(version=1, settings=base.settings))._replace(
        former_names={server.id: name for name, server in base.servers.items()},
        former_namespaces={server.namespace_name(name): name
                           for name, server in base.servers.items() if server.mode == "netns"},
    )
    with Kernel() as kernel:  # as in cmd_apply
        result = converge(kernel, empty)
    _report_converge(result, args)
    return EXIT_OK if result.converged else EXIT_ERROR


def _switch(args: argparse.Namespace) -> int:
    """activate / deactivate / is-active: by the daemon when one answers, else here."""
    from vsnetd import ctl

    op = args.command
    reply = ctl.via_daemon(op, args.names, args.config)
    if reply is None:
        reply = _switch_here(op, args.names, _load(args))
    return ctl.report(op, reply, args.json)


def _switch_here(op: str, names: list[str], config: Config) -> dict[str, Any]:
    from vsnetd import activation
    from vsnetd.compile import compile_config
    from vsnetd.kernel import Kernel
    from vsnetd.neighbours import Announcer, announce_servers
    from vsnetd.reconcile import converge, plan_for
    from vsnetd.state import ServerVerdict

    problems = activation.check_names(config, names)
    if problems:
        return {"ok": False, "refused": True, "error": "; ".join(problems)}
    active = activation.read_active()
    if op != "is-active":
        active = activation.switched(active, names, on=op == "activate")
        activation.write_active(active)
    desired = activation.select(compile_config(config), config, active)
    with Kernel(helper_from=HELPER_FROM) as kernel:
        if op == "is-active":
            verdicts = plan_for(kernel, desired).servers
        else:  # the whole config, as apply: without a daemon nothing else keeps it
            verdicts = converge(kernel, desired).servers
        if op == "activate":
            announcer = Announcer()
            announce_servers(announcer, kernel, (
                desired.servers[name] for name in names
                if verdicts.get(name) == ServerVerdict("in-sync")))
            announcer.wait()
    return activation.reply(names, active, verdicts, op)


COMMANDS = {
    "validate": (cmd_validate, "check the config file; exit 1 if invalid"),
    "plan": (cmd_plan, "show what apply would change (dry run)"),
    "apply": (cmd_apply, "converge the kernel to the config once"),
    "status": (cmd_status, "per virtual server: numbers, addresses, in sync or why not"),
    "teardown": (cmd_teardown, "remove every object vsnet created"),
    "reload": (cmd_reload, "make the running vsnetd read its config now"),
    "metrics": (cmd_metrics, "the running vsnetd's Prometheus metrics (text format)"),
    "schema": (cmd_schema, "print the JSON Schema of the config file"),
    "activate": (_switch, "put cluster VS in the kernel here and announce their addresses"),
    "deactivate": (_switch, "take cluster VS out of the kernel here"),
    "is-active": (_switch, "exit 0 when the VS are active and in sync here, 3 inactive"),
}
SWITCHES = ("activate", "deactivate", "is-active")


def _common_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    # Accepted before and after the command; only the top level sets defaults, or a
    # subcommand's default would overwrite ``vsnetctl -c FILE plan``.
    import argparse

    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument("-c", "--config", type=_path, default=default(DEFAULT_CONFIG_PATH),
                        help=f"config file (default {DEFAULT_CONFIG_PATH})")
    parser.add_argument("--json", action="store_true", default=default(False),
                        help="machine-readable output")


def _path(text: str) -> Path:
    from pathlib import Path

    return Path(text)


def build_parser() -> argparse.ArgumentParser:
    import argparse

    parser = argparse.ArgumentParser(
        prog="vsnetctl",
        description="Control vsnet: virtual servers over policy routing and namespaces.",
    )
    _common_options(parser, defaults=True)
    parser.add_argument("--version", action="version", version=f"vsnetctl {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_func, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        _common_options(command, defaults=False)
        if name == "schema":
            command.add_argument("--drop-in", action="store_true",
                                 help="the schema of a servers.d/*.yaml file")
        if name in SWITCHES:
            command.add_argument("names", nargs="+", metavar="NAME", help="server name")
        if name == "status":
            command.add_argument("servers", nargs="*", metavar="SERVER",
                                 help="only these virtual servers (default: all)")
    return parser


def main(argv: Sequence[str] | None = None, *, whole_process: bool = False) -> int:
    """Run one command; its exit status. ``whole_process``: this process exists for this
    command alone (the console script), so it ends here, see :func:`_exit_now`."""
    # A one-shot process that allocates many small objects and no cycles: the cyclic
    # collector would only cost time (a third of a run at 1,000 VS).
    gc.disable()
    # a config error may name a file whose name is no UTF-8: shown escaped, whatever the
    # locale (strict under UTF-8 would raise, surrogateescape under C would write the byte)
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    status = _main(argv)
    if whole_process:
        _exit_now(status)
    return status


def _exit_now(status: int) -> NoReturn:
    """Exit without the interpreter's teardown: freeing a config of 1,000 VS and its
    compiled state object by object costs ~30 ms of CPU, more after an apply.
    Nothing is left to release (sockets and files are closed by their ``with`` blocks);
    what is buffered is written first."""
    import contextlib

    if "logging" in sys.modules:
        sys.modules["logging"].shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BrokenPipeError, ValueError):  # `... | head`: not read
            stream.flush()
    os._exit(status)


def plain_args(argv: Sequence[str]) -> Any:
    """The arguments of a plain command line, as the parser would give them, read without
    argparse (by :func:`vsnetd.ctl.split`): a command taking no arguments of its own, with
    ``-c FILE``, ``--config FILE``, ``--config=FILE`` and ``--json`` before or after it
    (the last ``-c`` wins). None for anything else (help, an abbreviation, a mistake),
    which the parser reads. Importing argparse, building the parser and parsing cost ~20
    ms of a cold process (docs/benchmarks.md); tests/test_cli_args.py checks that both
    read alike."""
    from vsnetd.ctl import split

    parsed = split(argv)
    if parsed is None:
        return None
    command, config, as_json, names = parsed
    if command not in COMMANDS or command in SWITCHES or names:
        return None  # a command's own arguments: the parser knows them
    from types import SimpleNamespace

    return SimpleNamespace(command=command, config=_path(config), json=as_json,
                           **({"drop_in": False} if command == "schema" else {}),
                           **({"servers": []} if command == "status" else {}))


def _main(argv: Sequence[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = plain_args(argv) or build_parser().parse_args(argv)
    func = COMMANDS[args.command][0]
    try:
        return func(args)
    except PermissionError as exc:
        print(f"vsnetctl: {exc.strerror or exc}: run as root (CAP_NET_ADMIN)", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:  # `vsnetctl status | head`: the reader has what it wanted
        _stdout_gone()
        return EXIT_OK
    except Exception as exc:
        config = sys.modules.get("vsnetd.config")  # only a command that loaded it
        if config is None or not isinstance(exc, config.ConfigError):
            raise
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        if args.json:
            try:
                _print_json({"valid": False, "errors": [i.as_json() for i in exc.issues]})
            except BrokenPipeError:  # `vsnetctl validate --json | head`: refused all the same
                _stdout_gone()
        return EXIT_ERROR


def _stdout_gone() -> None:
    """Whoever read stdout has gone: what is still buffered goes nowhere, quietly."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


if __name__ == "__main__":
    sys.exit(main(whole_process=True))
