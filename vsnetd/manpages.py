"""Man pages generated from the one source of truth: the argparse definitions of the three
commands and the JSON Schema of ``servers.yaml``. A flag or a config key added to the code
is in the next page built; ``tests/test_manpages.py`` checks that every one is.

    python -m vsnetd.manpages OUTDIR      # writes vsnetd.8 vsnetctl.8 vsnet-exec.1 vsnet-servers.yaml.5

The prose around the generated parts (files, signals, environment) is here, beside them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vsnetd import __version__, cli, daemon
from vsnetd import exec as vsnet_exec
from vsnetd.config import DEFAULT_CONFIG_PATH, json_schema

SOURCE = f"vsnet {__version__}"
MANUAL = "vsnet manual"


def roff(text: str) -> str:
    """Plain text as roff: backslashes and hyphens escaped, no line starting with a dot."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(("\\&" + line) if line.startswith((".", "'")) else line
                     for line in text.split("\n"))


def bold(text: str) -> str:
    return f"\\fB{roff(text)}\\fR"


def italic(text: str) -> str:
    return f"\\fI{roff(text)}\\fR"


def _expand_help(action: argparse.Action, parser: argparse.ArgumentParser) -> str:
    text = action.help or ""
    if "%(" in text:
        params = {**vars(action), "prog": parser.prog}
        text = text % params
    return text


def _metavar(action: argparse.Action) -> str:
    if action.metavar is not None:
        return str(action.metavar)
    if action.choices is not None:
        return "{" + ",".join(map(str, action.choices)) + "}"
    return action.dest.upper()


def options(parser: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    """The actions a page documents (help is implied by every program)."""
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
            continue
        if isinstance(action, argparse._SubParsersAction):
            continue
        yield action


def option_list(parser: argparse.ArgumentParser) -> str:
    lines = []
    for action in options(parser):
        if action.option_strings:
            takes = action.nargs != 0
            label = ", ".join(
                bold(flag) + (" " + italic(_metavar(action)) if takes else "")
                for flag in action.option_strings)
        else:
            label = italic(_metavar(action) if action.nargs != argparse.REMAINDER
                           else "-- PROGRAM ARGS")
        lines += [".TP", label, roff(_expand_help(action, parser))]
    lines += [".TP", bold("-h") + ", " + bold("--help"), "Show a short help and exit."]
    return "\n".join(lines)


def synopsis(parser: argparse.ArgumentParser, command: str | None = None) -> str:
    parts = [bold(parser.prog if command is None else f"{parser.prog} {command}")]
    for action in options(parser):
        if action.option_strings:
            flag = action.option_strings[0]
            text = bold(flag) + (" " + italic(_metavar(action)) if action.nargs != 0 else "")
            parts.append(text if action.required else f"[{text}]")
        elif action.nargs == argparse.REMAINDER:
            parts.append(bold("--") + " " + italic("PROGRAM") + " [" + italic("ARGS") + "...]")
        else:
            text = italic(_metavar(action))
            parts.append(f"[{text}...]" if action.nargs in ("*", "?") else text)
    return " ".join(parts)


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def header(name: str, section: int, summary: str) -> list[str]:
    return [f'.TH {name.upper()} {section} "" "{SOURCE}" "{MANUAL}"',
            ".SH NAME", f"{roff(name)} \\- {roff(summary)}"]


def section(title: str, *paragraphs: str) -> list[str]:
    lines = [f".SH {title}"]
    for index, paragraph in enumerate(paragraphs):
        if index:
            lines.append(".PP")
        lines.append(paragraph)
    return lines


def table_from_docstring(doc: str) -> list[tuple[str, str]]:
    """Rows of the reStructuredText simple table in a module docstring (cli's exit codes)."""
    rows, inside = [], 0
    for line in doc.splitlines():
        if line.startswith("====="):
            inside += 1
            continue
        if inside == 2 and line.strip():
            first, _, rest = line.strip().partition(" ")
            rows.append((first, rest.strip()))
    return rows


def see_also(*pages: str) -> list[str]:
    return section("SEE ALSO", ",\n".join(
        f"\\fB{roff(page.split('(')[0])}\\fR({page.split('(')[1]}" for page in pages))


# --------------------------------------------------------------------------- the pages


def vsnetd_page() -> str:
    parser = daemon.build_parser()
    lines = header("vsnetd", 8, "keep the kernel converged to the vsnet config")
    lines += section("SYNOPSIS", synopsis(parser))
    lines += section(
        "DESCRIPTION",
        roff(parser.description or ""),
        roff("vsnetd reads the virtual servers (VS) of the config file, see "
             "vsnet-servers.yaml(5), and creates what each needs in the kernel: policy "
             "routing rules and tables (pbr mode) or a network namespace with its device "
             "(netns mode). Edits of the file are applied as soon as it is saved, only to "
             "the VS that changed; an invalid file is refused whole and the last good "
             "config stays applied. Objects vsnet did not create are never modified or "
             "deleted: a VS that would collide with one is reported in conflict."),
        roff("Stopping vsnetd leaves the kernel as it is, so the application keeps serving "
             "while vsnetd restarts or is upgraded; the next start adopts what it finds. "
             "vsnetctl teardown removes everything explicitly."),
        roff("vsnetd also serves the socket broker, which hands ready sockets of a VS to "
             "unprivileged programs, see vsnet-exec(1)."),
    )
    lines += section("OPTIONS", option_list(parser))
    lines += section(
        "SIGNALS",
        ".TP\n" + bold("SIGHUP") + "\nRead the config file again (as " + bold("systemctl reload")
        + " does).\n.TP\n" + bold("SIGTERM") + ", " + bold("SIGINT")
        + "\nStop; the kernel state stays.")
    lines += section(
        "SYSTEMD",
        roff("Runs as Type=notify: READY=1 once the config is applied, STATUS= with the "
             "number of VS in sync and the names of those that are not (shown by systemctl "
             "status), RELOADING=1 around a reload, WATCHDOG=1 at half the watchdog "
             "interval. Log entries carry journal fields: VSNET_SERVER (the VS), VSNET_OP "
             "(what was done), VSNET_OBJECT (the kernel object), e.g. journalctl -u vsnetd "
             "VSNET_SERVER=nas1."))
    lines += section(
        "METRICS",
        roff("Prometheus text format, from vsnetctl metrics or, with --metrics-listen, over "
             "HTTP. Series: vsnet_reconciles_total{trigger}, "
             "vsnet_reconcile_duration_seconds, vsnet_changes_total{kind,action,result}, "
             "vsnet_heals_total, vsnet_config_refused_total, vsnet_servers{state}, "
             "vsnet_servers_pending, vsnet_edit_to_kernel_seconds, "
             "vsnet_broker_requests_total{op,result}, "
             "vsnet_broker_request_duration_seconds{op}, vsnet_build_info{version,python}, "
             "and the process_* series of the Python client."))
    lines += section(
        "FILES",
        f".TP\n{bold(str(DEFAULT_CONFIG_PATH))}\nThe config file.\n"
        f".TP\n{bold('/etc/default/vsnetd')}\nExtra options for the service (VSNETD_OPTS).\n"
        f".TP\n{bold('/run/vsnet/control.sock')}\nControl socket (root only), used by vsnetctl.\n"
        f".TP\n{bold('/run/vsnet/broker.sock')}\nSocket broker (group vsnet).\n"
        f".TP\n{bold('/run/netns/')}\nThe network namespaces of netns-mode VS.")
    lines += see_also("vsnetctl(8)", "vsnet-exec(1)", "vsnet-servers.yaml(5)",
                      "systemctl(1)", "ip-rule(8)", "ip-netns(8)")
    return "\n".join(lines) + "\n"


def vsnetctl_page() -> str:
    parser = cli.build_parser()
    lines = header("vsnetctl", 8, "validate, plan, apply and inspect the vsnet config")
    lines += section("SYNOPSIS", synopsis(parser) + " " + italic("COMMAND") + " ["
                     + italic("OPTIONS") + "]")
    lines += section(
        "DESCRIPTION", roff(parser.description or ""),
        roff("Each command runs once and exits. status, reload and metrics ask the running "
             "vsnetd over its control socket when there is one (status falls back to "
             "looking at the kernel itself)."))
    lines += section("OPTIONS", roff("Accepted before and after the command."),
                     option_list(parser))
    command_lines = []
    for sub in subcommands(parser).values():
        command_lines += [".TP", synopsis(sub),
                          roff(sub.description or "")]
        positional = [a for a in options(sub) if not a.option_strings]
        if positional:
            command_lines += [".RS", option_list_only(sub, positional), ".RE"]
    lines += section("COMMANDS", "\n".join(command_lines))
    exit_rows = table_from_docstring(cli.__doc__ or "")
    lines += section("EXIT STATUS", "\n".join(
        f".TP\n{bold(command)}\n{roff(meaning)}" for command, meaning in exit_rows))
    lines += section(
        "FILES", f".TP\n{bold(str(DEFAULT_CONFIG_PATH))}\nThe config file.\n"
        f".TP\n{bold('/run/vsnet/control.sock')}\nThe running vsnetd's control socket.")
    lines += section("ENVIRONMENT", f".TP\n{bold('VSNET_CONTROL')}\nAnother control socket.")
    lines += see_also("vsnetd(8)", "vsnet-servers.yaml(5)", "vsnet-exec(1)")
    return "\n".join(lines) + "\n"


def option_list_only(parser: argparse.ArgumentParser, actions: list[argparse.Action]) -> str:
    lines = []
    for action in actions:
        lines += [".TP", italic(_metavar(action)), roff(_expand_help(action, parser))]
    return "\n".join(lines)


def vsnet_exec_page() -> str:
    parser = vsnet_exec.build_parser()
    lines = header("vsnet-exec", 1, "run a program in a virtual server, with its sockets")
    lines += section("SYNOPSIS", synopsis(parser))
    lines += section(
        "DESCRIPTION", roff(parser.description or ""),
        roff("The sockets are placed at file descriptors 3, 4, ... and announced with "
             "LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES (tcp-8080...), as systemd socket "
             "activation does: programs built on sd_listen_fds(3), gunicorn and nginx take "
             "them as they are. The user needs the broker socket (group vsnet) and the VS's "
             "permission (sockets: allow_users / allow_groups in vsnet-servers.yaml(5))."))
    lines += section("OPTIONS", option_list(parser))
    lines += section("EXAMPLE", ".nf\n" + roff(
        "vsnet-exec --server nas1 --listen tcp:8080 -- gunicorn app:app") + "\n.fi")
    lines += section("ENVIRONMENT", f".TP\n{bold('VSNET_BROKER')}\nAnother broker socket.")
    lines += see_also("vsnetd(8)", "vsnet-servers.yaml(5)", "sd_listen_fds(3)")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- the schema


@dataclass(frozen=True)
class Key:
    path: str
    kind: str
    required: bool
    default: Any
    description: str
    constraints: str


class SchemaWalker:
    def __init__(self, schema: dict[str, Any]) -> None:
        self.schema = schema
        self.keys: list[Key] = []

    def resolve(self, node: dict[str, Any]) -> dict[str, Any]:
        ref = node.get("$ref")
        if ref is None:
            return node
        resolved: dict[str, Any] = self.schema["$defs"][ref.rsplit("/", 1)[1]]
        return resolved

    def kind(self, node: dict[str, Any]) -> str:
        node = self.resolve(node)
        if "const" in node:
            return f"the value {json.dumps(node['const'])}"
        if "enum" in node:
            return "one of " + ", ".join(map(str, node["enum"]))
        if "anyOf" in node:
            kinds = [self.kind(n) for n in node["anyOf"] if n.get("type") != "null"]
            return " or ".join(dict.fromkeys(kinds))
        kind = node.get("type", "object")
        if kind == "array":
            return "list of " + self.kind(node.get("items", {}))
        if kind == "object" and "properties" in node:
            return "mapping"
        if kind == "object" and ("additionalProperties" in node or "patternProperties" in node):
            return "mapping"
        fmt = {"ipvanyaddress": "IP address", "ipvanyinterface": "IP address/prefix",
               "ipvanynetwork": "IP network"}.get(node.get("format", ""))
        return fmt or str(kind)

    def constraints(self, node: dict[str, Any]) -> str:
        found = []
        for option in [node, *node.get("anyOf", [])]:
            option = self.resolve(option)
            if "minimum" in option or "maximum" in option:
                found.append(f"{option.get('minimum', '')}..{option.get('maximum', '')}")
            if "pattern" in option:
                found.append(f"matches {option['pattern']}")
            if "minItems" in option or "maxItems" in option:
                found.append(f"{option.get('minItems', 0)} to {option.get('maxItems', 'any')} "
                             "items")
            if "patternProperties" in option:
                found.append("keys match " + ", ".join(option["patternProperties"]))
        return "; ".join(found)

    def walk(self, node: dict[str, Any], prefix: str) -> None:
        node = self.resolve(node)
        required = set(node.get("required", []))
        for name, prop in sorted(node.get("properties", {}).items()):
            path = f"{prefix}{name}"
            target = self.resolve(prop)
            description = prop.get("description") or target.get("description") or ""
            self.keys.append(Key(path, self.kind(prop), name in required, prop.get("default"),
                                 description, self.constraints(prop)))
            self.descend(prop, path)

    def descend(self, prop: dict[str, Any], path: str) -> None:
        for option in [prop, *prop.get("anyOf", [])]:
            target = self.resolve(option)
            if "properties" in target:
                self.walk(target, path + ".")
            items = target.get("items")
            if isinstance(items, dict) and "properties" in self.resolve(items):
                self.walk(items, path + "[].")
            extra = target.get("additionalProperties")
            if isinstance(extra, dict) and "properties" in self.resolve(extra):
                self.walk(extra, path + ".NAME.")


def schema_keys(schema: dict[str, Any] | None = None) -> list[Key]:
    walker = SchemaWalker(schema or json_schema())
    walker.walk(walker.schema, "")
    return walker.keys


def servers_yaml_page() -> str:
    schema = json_schema()
    lines = header("vsnet-servers.yaml", 5, "the vsnet config: virtual servers and their numbers")
    lines += section("SYNOPSIS", bold(str(DEFAULT_CONFIG_PATH)))
    lines += section(
        "DESCRIPTION",
        roff("YAML. Each virtual server (VS) under servers: is a slice of this machine's "
             "network: its addresses, its gateways and routes, in policy routing tables of "
             "its own (mode: pbr) or in a network namespace of its own (mode: netns). "
             "Tables, rule priorities and marks derive from the VS id and the settings."),
        roff("A file with any problem is refused whole, every problem named with its file, "
             "line, column and key; vsnetctl validate checks a file. The JSON Schema of the "
             "file is printed by vsnetctl schema (editors use it for completion)."))
    key_lines = []
    for key in schema_keys(schema):
        facts = [key.kind]
        if key.required:
            facts.append("required")
        if key.default not in (None, [], {}):
            facts.append(f"default {json.dumps(key.default)}")
        if key.constraints:
            facts.append(key.constraints)
        key_lines += [".TP", bold(key.path) + " (" + roff("; ".join(facts)) + ")",
                      roff(key.description.replace("``", "")) or "\\&"]
    name_pattern = schema["properties"]["servers"].get("propertyNames", {}).get("pattern", "")
    lines += section("KEYS", roff(f"NAME stands for a VS name, matching {name_pattern} (it "
                                  "becomes part of device and namespace names)."),
                     "\n".join(key_lines))
    example = Path(__file__).resolve().parent.parent / "etc" / "vsnet" / "servers.yaml"
    if example.exists():
        text = "\n".join(line for line in example.read_text().rstrip().splitlines()
                         if not line.startswith("# yaml-language-server"))
        lines += section("EXAMPLE", ".nf\n" + roff(text) + "\n.fi")
    lines += see_also("vsnetd(8)", "vsnetctl(8)", "ip-rule(8)", "ip-netns(8)")
    return "\n".join(lines) + "\n"


PAGES: dict[str, Callable[[], str]] = {
    "vsnetd.8": vsnetd_page,
    "vsnetctl.8": vsnetctl_page,
    "vsnet-exec.1": vsnet_exec_page,
    "vsnet-servers.yaml.5": servers_yaml_page,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m vsnetd.manpages OUTDIR", file=sys.stderr)
        return 2
    out = Path(args[0])
    out.mkdir(parents=True, exist_ok=True)
    for name, render in PAGES.items():
        (out / name).write_text(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
