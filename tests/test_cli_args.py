"""vsnetctl reads a plain command line without argparse (vsnetd/cli.py ``plain_args``):
whatever it reads, the parser reads alike; whatever it declines, the parser gets."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from vsnetd import cli
from vsnetd.ctl import split

WORDS = ["plan", "apply", "validate", "status", "schema", "teardown", "reload", "metrics",
         "activate", "nas1", "-c", "--config", "a.yaml", "--config=b.yaml", "--config=",
         "--config=-x", "--json", "--js", "--conf", "-cFILE", "-", "--", "-h", "--help",
         "--drop-in", "--version", "plans", ""]


def parsed(argv: list[str]) -> dict[str, Any] | None:
    """What argparse reads, or None where it refuses (or prints help and exits)."""
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            return vars(cli.build_parser().parse_args(argv))
    except SystemExit:
        return None


@given(st.lists(st.sampled_from(WORDS), max_size=6))
def test_a_plain_line_is_read_as_the_parser_reads_it(argv: list[str]) -> None:
    plain = cli.plain_args(argv)
    if plain is not None:
        assert vars(plain) == parsed(argv)


VALUES = ["a.yaml", "", "-x", "--json", "plan", "a b", "=", "--config=c"]


@st.composite
def plain_lines(draw: st.DrawFn) -> list[str]:
    """A command and options in any order: most of them lines ``plain_args`` reads."""
    options = draw(st.lists(st.one_of(
        st.sampled_from(VALUES).map(lambda v: ["-c", v]),
        st.sampled_from(VALUES).map(lambda v: ["--config", v]),
        st.sampled_from(VALUES).map(lambda v: [f"--config={v}"]),
        st.just(["--json"])), max_size=4))
    words = [[draw(st.sampled_from(list(cli.COMMANDS)))], *options]
    return [word for part in draw(st.permutations(words)) for word in part]


@given(plain_lines())
def test_the_options_in_any_order_are_read_as_the_parser_reads_them(argv: list[str]) -> None:
    plain = cli.plain_args(argv)
    if plain is not None:
        assert vars(plain) == parsed(argv)


@given(plain_lines(), st.lists(st.sampled_from(["nas1", "nas2"]), min_size=1, max_size=2))
def test_the_switches_front_door_reads_as_the_parser(argv: list[str], names: list[str]) -> None:
    """vsnetd.ctl reads ``activate``/``deactivate``/``is-active`` lines the same way."""
    argv = ["activate" if word in cli.COMMANDS else word for word in argv] + names
    fast = split(argv)
    if fast is not None:
        command, config, as_json, seen = fast
        assert {"command": command, "config": Path(config), "json": as_json,
                "names": seen} == parsed(argv)


def test_the_plain_lines_are_read_without_the_parser() -> None:
    for argv in (["plan"], ["-c", "x.yaml", "apply", "--json"], ["status", "--config=y"],
                 ["schema"], ["validate", "-c", "a", "-c", "b"]):
        plain = cli.plain_args(argv)
        assert plain is not None and vars(plain) == parsed(argv), argv
    for argv in (["status", "nas1"], ["schema", "--drop-in"], ["plan", "--help"],
                 ["activate", "nas1"], ["--json"], ["plan", "-c"], ["plan", "-c", "-x"]):
        assert cli.plain_args(argv) is None, argv


def test_a_one_shot_command_imports_no_argparse_dataclasses_or_logging(tmp_path: Path) -> None:
    """What keeps `vsnetctl validate/plan/apply` cheap to start (docs/benchmarks.md): the
    pipeline's modules imported, and none of these."""
    config = tmp_path / "servers.yaml"
    config.write_text("version: 1\nservers: {}\n")
    code = ("import sys; from vsnetd import cli; status = cli.main(['validate', '-c', "
            f"{str(config)!r}]); import vsnetd.reconcile, vsnetd.observe; "
            "print(status, *(m in sys.modules for m in ('argparse', 'dataclasses', "
            "'logging', 'inspect')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[-5:] == ["0", "False", "False", "False", "False"]
