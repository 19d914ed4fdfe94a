"""Man pages and bash completion are generated from the argparse definitions and the
schema: every flag, subcommand and config key is in them, and the pages render cleanly."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import EXAMPLE_CONFIG
from vsnetd import cli, completion, daemon, manpages
from vsnetd import exec as vsnet_exec
from vsnetd.config import json_schema

PARSERS = {"vsnetd.8": daemon.build_parser, "vsnetctl.8": cli.build_parser,
           "vsnet-exec.1": vsnet_exec.build_parser}


def every_parser(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from every_parser(sub)


def rendered(name: str) -> str:
    """The page as `man` shows it (plain ASCII); groff's warnings fail the test."""
    result = subprocess.run(["groff", "-man", "-Tascii", "-ww", "-P", "-cbou", "-rLL=200n"],
                            input=manpages.PAGES[name](), capture_output=True, text=True,
                            check=True)
    assert result.stderr == "", f"{name}: {result.stderr}"
    return result.stdout


@pytest.mark.parametrize("page", sorted(PARSERS))
def test_every_flag_and_command_is_on_its_page(page: str) -> None:
    text = rendered(page)
    for parser in every_parser(PARSERS[page]()):
        for action in parser._actions:
            for flag in action.option_strings:
                assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), \
                    f"{flag} of {parser.prog} missing from {page}"
            if isinstance(action, argparse._SubParsersAction):
                for command in action.choices:
                    assert f"{parser.prog} {command}" in text, f"{command} missing from {page}"
            elif not action.option_strings and action.metavar:
                assert str(action.metavar) in text


def schema_key_names(node: dict[str, Any], schema: dict[str, Any]) -> Iterator[str]:
    """Every key name a config may contain, walked independently of the generator."""
    if "$ref" in node:
        node = schema["$defs"][node["$ref"].rsplit("/", 1)[1]]
    for name, prop in node.get("properties", {}).items():
        yield name
        yield from schema_key_names(prop, schema)
    for option in node.get("anyOf", []):
        yield from schema_key_names(option, schema)
    for child in ("items", "additionalProperties"):
        if isinstance(node.get(child), dict):
            yield from schema_key_names(node[child], schema)


def test_every_config_key_is_on_the_servers_yaml_page() -> None:
    text = rendered("vsnet-servers.yaml.5")
    documented = set(re.findall(r"^ *([\w.\[\]]+) \(", text, re.MULTILINE))
    leaves = {path.split(".")[-1].removesuffix("[]") for path in documented}
    schema = json_schema()
    names = set(schema_key_names(schema, schema))
    assert names and names <= leaves, names - leaves
    assert "servers.NAME.addresses[].gateway" in documented


def test_exit_codes_come_from_the_cli_docstring() -> None:
    text = rendered("vsnetctl.8")
    section = text.split("EXIT STATUS")[1].split("FILES")[0]
    for command in ("validate", "plan", "apply", "status", "teardown", "metrics"):
        assert command in section


def test_man_renders_a_page(tmp_path: Path) -> None:
    if shutil.which("man") is None:
        pytest.fail("man (man-db) is missing: scripts/install-deps.sh installs it")
    assert manpages.main([str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(manpages.PAGES)
    result = subprocess.run(["man", "-l", str(tmp_path / "vsnetctl.8")], capture_output=True,
                            text=True, env={"MANWIDTH": "80", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert "vsnetctl - validate, plan, apply" in result.stdout


# --------------------------------------------------------------------------- completion

COMPLETE = r"""
source /usr/share/bash-completion/bash_completion
source "$1"
shift
COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 )); COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}
fn=$(complete -p "$1" | sed 's/.*-F \([^ ]*\).*/\1/')
COMPREPLY=(); "$fn" "$1" "${COMP_WORDS[-1]}" "${COMP_WORDS[-2]}"
printf '%s\n' "${COMPREPLY[@]}"
"""


@pytest.fixture(scope="module")
def script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not Path("/usr/share/bash-completion/bash_completion").exists():
        pytest.fail("bash-completion is missing: scripts/install-deps.sh installs it")
    path = tmp_path_factory.mktemp("completion") / "vsnet"
    path.write_text(completion.bash_script(sys.executable))
    return path


def complete(script: Path, *words: str) -> list[str]:
    result = subprocess.run(["bash", "-c", COMPLETE, "complete", str(script), *words],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if line]


def test_completion_of_subcommands_flags_and_vs_names(script: Path) -> None:
    commands = list(cli.COMMANDS)
    assert complete(script, "vsnetctl", "") == commands
    assert complete(script, "vsnetctl", "st") == ["status"]
    assert complete(script, "vsnetctl", "-c", str(EXAMPLE_CONFIG), "status", "") == [
        "iscsi1", "nas1", "nas2"]
    assert complete(script, "vsnetctl", "--config", str(EXAMPLE_CONFIG), "status", "na") == [
        "nas1", "nas2"]
    assert complete(script, "vsnetd", "--metrics") == ["--metrics-listen"]
    assert complete(script, "vsnet-exec", "--listen", "") == ["tcp:", "udp:"]


def test_completion_knows_every_flag(script: Path) -> None:
    text = script.read_text()
    for build in PARSERS.values():
        for parser in every_parser(build()):
            for action in parser._actions:
                for flag in action.option_strings:
                    assert re.search(rf"[ '|]{re.escape(flag)}[ '|)]", text), flag


def test_vs_names_of_a_broken_or_missing_file_are_none(tmp_path: Path) -> None:
    broken = tmp_path / "servers.yaml"
    broken.write_text("servers: [unclosed\n")
    assert completion.server_names(broken) == []
    assert completion.server_names(tmp_path / "missing.yaml") == []
    assert completion.server_names(EXAMPLE_CONFIG) == ["iscsi1", "nas1", "nas2"]
