"""Config loading: accepted shapes, and errors that name file, line, column and field."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import EXAMPLE_CONFIG, ROOT
from tests.daemons import OTHER_UID, unit_capabilities
from tests.examples import ISSUE_EXAMPLE
from tests.hostile import costly_config
from tests.strategies import examples
from vsnetd.config import (
    ConfigError,
    drop_in_dir,
    json_schema,
    load_config,
    parse_config,
    parse_file,
)


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(textwrap.dedent(text), "servers.yaml")
    return [str(issue) for issue in info.value.issues]


def test_the_issue_example_is_accepted_as_written() -> None:
    config = parse_config(ISSUE_EXAMPLE)
    nas1 = config.servers["nas1"]
    assert config.settings.mark_base == 0x5600000
    assert [str(a.address) for a in nas1.addresses] == [
        "10.0.0.5/24", "10.0.1.5/24", "2001:db8:5::5/64"]
    assert [str(g) for g in nas1.gateway] == ["10.0.1.1"]
    assert str(nas1.routes[0].to) == "192.168.50.0/24"


def test_the_shipped_example_is_valid() -> None:
    config = load_config(EXAMPLE_CONFIG)
    assert set(config.servers) == {"nas1", "iscsi1", "nas2"}
    assert [str(g) for g in config.servers["nas1"].gateway] == ["10.0.1.1", "2001:db8:5::1"]


def test_error_names_file_line_column_and_field() -> None:
    text = ISSUE_EXAMPLE.replace("        gateway: 10.0.1.1\n", "        gateway: 10.0.9.1\n")
    assert errors_of(text) == [
        "servers.yaml:15:18: servers.nas1.addresses[1].gateway: 10.0.9.1 is not inside 10.0.1.5/24"
    ]


def test_every_error_is_reported_in_one_pass() -> None:
    errors = errors_of("""\
        version: 1
        servers:
          a:
            id: 1
            mode: pbr
            uplink: eth0
            colour: blue
            addresses: [{address: 10.0.0.5/24}]
          b:
            id: 2
            mode: pbr
            uplink: eth0
            addresses: [{address: 10.0.0.5/24, gateway: 10.9.0.1}]
          c:
            id: 2
            mode: pbr
            uplink: eth0
            addresses: [{address: 10.0.0.300/24}]
        """)
    assert errors == [
        "servers.yaml:7:5: servers.a.colour: unknown key",
        # a is checked too, its unknown key set aside
        "servers.yaml:13:27: servers.b.addresses[0].address: 10.0.0.5 is already an address of a",
        "servers.yaml:13:49: servers.b.addresses[0].gateway: 10.9.0.1 is not inside 10.0.0.5/24",
        "servers.yaml:18:27: servers.c.addresses[0].address: 10.0.0.300/24: "
        "value is not a valid IPv4 or IPv6 interface",
    ]


def test_an_unknown_key_does_not_hide_the_entrys_other_errors() -> None:
    errors = errors_of("""\
        version: 1
        servers:
          a: {id: 1, mode: pbr, uplink: eth0, addresses: [{address: 10.0.0.5/24}]}
          b:
            id: 1
            mode: pbr
            uplink: eth0
            colour: blue
            addresses: [{address: 10.0.1.5/24, gateway: 10.9.0.1}]
        """)
    assert errors == [
        "servers.yaml:5:9: servers.b.id: id 1 is already used by a",
        "servers.yaml:8:5: servers.b.colour: unknown key",
        "servers.yaml:9:49: servers.b.addresses[0].gateway: 10.9.0.1 is not inside 10.0.1.5/24",
    ]


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ("    id: 1\n    id: 2\n", "servers.yaml:5:5: servers.a.id: duplicate key"),
        ("    id: '1'\n", "servers.yaml:4:9: servers.a.id: 1: Input should be a valid integer"),
        ("    id: 0\n", "servers.yaml:4:9: servers.a.id: 0: Input should be greater than or equal to 1"),
        ("    id: 1\n    mark: 0\n",
         "servers.yaml:5:11: servers.a.mark: 0: Input should be greater than or equal to 1"),
        # a number or a boolean where an address goes: ipaddress would read 1 as 0.0.0.1
        ("    id: 1\n    gateway: 1\n", "servers.yaml:5:14: servers.a.gateway: 1: "
         "Value error, 1 is not an address: write it as text, e.g. 10.0.0.5"),
        ("    id: 1\n    routes: [{to: true, via: 10.0.0.1}]\n",
         "servers.yaml:5:19: servers.a.routes[0].to: "
         "Value error, True is not an address: write it as text, e.g. 10.0.0.5"),
    ],
    ids=["duplicate", "string", "zero", "mark", "number-address", "boolean-network"],
    # plain ids: mutmut runs tests by id
)
def test_field_errors(snippet: str, expected: str) -> None:
    text = ("version: 1\nservers:\n  a:\n" + snippet
            + "    mode: pbr\n    uplink: eth0\n    addresses: [{address: 10.0.0.5/24}]\n")
    assert errors_of(text) == [expected]


def test_missing_keys_and_bad_modes() -> None:
    errors = errors_of("""\
        version: 1
        servers:
          a:
            mode: bridge
            uplink: eth0/1
            addresses: []
        """)
    assert errors == [
        "servers.yaml:3:3: servers.a: required key 'id' is missing",
        "servers.yaml:4:11: servers.a.mode: bridge: Input should be 'pbr' or 'netns'",
        "servers.yaml:5:13: servers.a.uplink: eth0/1: String should match pattern '^[^/:\\s]{1,15}$'",
        "servers.yaml:6:16: servers.a.addresses: List should have at least 1 item after validation, not 0",
    ]


def test_a_numeric_uid_or_gid_may_be_a_yaml_number() -> None:
    """``allow_users: [4242]`` is the uid 4242, as ``["4242"]`` is; a boolean or a negative
    number is no user."""
    def sockets(value: str) -> str:
        return ("version: 1\nservers:\n  a:\n    id: 1\n    mode: pbr\n    uplink: eth0\n"
                f"    addresses: [{{address: 10.0.0.5/24}}]\n    sockets: {value}\n")

    config = parse_config(sockets("{allow_users: [4242, nfsd], allow_groups: [0]}"),
                          file="servers.yaml")
    assert list(config.servers["a"].sockets.allow_users) == ["4242", "nfsd"]
    assert list(config.servers["a"].sockets.allow_groups) == ["0"]
    assert errors_of(sockets("{allow_users: [true, -1]}")) == [
        "servers.yaml:8:29: servers.a.sockets.allow_users[0]: Input should be a valid string",
        "servers.yaml:8:35: servers.a.sockets.allow_users[1]: -1: String should match pattern "
        "'^[A-Za-z0-9_.][A-Za-z0-9_.-]{0,31}$'"]


def test_semantic_checks() -> None:
    errors = errors_of("""\
        version: 1
        settings: {table_base: 4294967290}
        servers:
          "bad name":
            id: 1
            mode: pbr
            uplink: eth0
            addresses: [{address: 10.0.0.5/24}]
          b:
            id: 1
            mode: netns
            uplink: eth0
            addresses: [{address: 10.0.1.5/24}, {address: 2001:db8::5/64}]
            gateway: [10.0.1.1, 10.0.1.2, 2001:db9::1]
            routes: [{to: 192.168.0.0/16, via: 2001:db8::1}, {to: 10.9.0.0/16, via: 10.3.3.3}]
        """)
    assert errors[0] == (
        "servers.yaml:4:3: servers.bad name: name 'bad name' must be 1-12 letters, digits, "
        "'-' or '_' (it becomes part of interface and namespace names)")
    assert errors[1:] == [
        "servers.yaml:5:9: servers.bad name.id: route tables 4294967309-4294967324 exceed "
        "2^32-1",
        "servers.yaml:10:9: servers.b.id: id 1 is already used by bad name",
        "servers.yaml:10:9: servers.b.id: route tables 4294967309-4294967324 exceed 2^32-1",
        "servers.yaml:14:25: servers.b.gateway[1]: more than one IPv4 gateway",
        "servers.yaml:14:35: servers.b.gateway[2]: 2001:db9::1 is not inside any subnet of b",
        "servers.yaml:15:40: servers.b.routes[0].via: 2001:db8::1 is not of the family of "
        "192.168.0.0/16",
        "servers.yaml:15:77: servers.b.routes[1].via: 10.3.3.3 is not inside any subnet of b",
    ]


def test_the_rule_tree_must_end_before_the_main_table() -> None:
    errors = errors_of("""\
        version: 1
        settings: {priority_base: 20000}
        servers:
          a: {id: 50, mode: pbr, uplink: eth0, addresses: [{address: 10.0.0.5/24}]}
        """)
    assert errors == [
        "servers.yaml:2:27: settings.priority_base: 20000: Value error, the rule tree from "
        "20000 would end at 41060, after the main table's rule (32766); at most 11705"
    ]


def test_marks_must_not_collide() -> None:
    errors = errors_of("""\
        version: 1
        servers:
          a: {id: 1, mode: pbr, uplink: eth0, addresses: [{address: 10.0.0.5/24}]}
          b: {id: 2, mode: pbr, uplink: eth0, addresses: [{address: 10.0.0.6/24}], mark: 0x5600001}
        """)
    assert errors == ["servers.yaml:4:82: servers.b.mark: mark 0x5600001 is already used by a"]


def test_too_many_addresses_for_the_block() -> None:
    addresses = ", ".join(f"{{address: 10.0.0.{i}/24}}" for i in range(2, 5))
    errors = errors_of(f"""\
        version: 1
        settings: {{block_size: 3}}
        servers:
          a: {{id: 1, mode: pbr, uplink: eth0, addresses: [{addresses}]}}
        """)
    assert errors == ["servers.yaml:4:50: servers.a.addresses: 3 addresses, at most 2 fit a "
                      "block of 3 (settings.block_size)"]


def test_yaml_syntax_errors_point_at_the_problem() -> None:
    assert errors_of("version: 1\nservers:\n  a: [1,\n") == [
        "servers.yaml:4:1: YAML syntax: did not find expected node content"]
    assert errors_of("") == ["servers.yaml:1:1: the file is empty"]
    assert errors_of("- 1\n") == ["servers.yaml:1:1: Input should be a valid dictionary or "
                                  "instance of Config"]


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "missing.yaml")
    assert str(info.value).endswith("missing.yaml:0:0: cannot read: No such file or directory")


def test_schema_file_is_fresh() -> None:
    on_disk = json.loads((ROOT / "schemas" / "servers.schema.json").read_text())
    assert on_disk == json_schema(), "schemas/servers.schema.json is stale: run `make schema`"
    drop_in = json.loads((ROOT / "schemas" / "servers.d.schema.json").read_text())
    assert drop_in == json_schema(drop_in=True), "schemas/servers.d.schema.json is stale"


def test_validate_cli_exit_codes(tmp_path: Path) -> None:
    bad = tmp_path / "servers.yaml"
    bad.write_text("version: 2\n")
    cli = [sys.executable, "-m", "vsnetd.cli", "validate", "-c"]
    good = subprocess.run([*cli, str(EXAMPLE_CONFIG)], capture_output=True, text=True)
    assert good.returncode == 0, good.stderr
    refused = subprocess.run([*cli, str(bad)], capture_output=True, text=True)
    assert refused.returncode == 1
    assert refused.stderr == f"{bad}:1:10: version: 2: Input should be 1\n"


def test_validate_refuses_a_drop_in_directory_it_may_not_list(tmp_path: Path) -> None:
    """As vsnetd runs under its unit (no CAP_DAC_OVERRIDE), another user's servers.d of
    mode 0750 cannot be listed: a refusal naming it, not a traceback."""
    main = tmp_path / "servers.yaml"
    main.write_text(EXAMPLE_CONFIG.read_text())
    directory = drop_in_dir(main)
    directory.mkdir(mode=0o750)
    os.chown(directory, OTHER_UID, OTHER_UID)
    tmp_path.chmod(0o755)
    refused = subprocess.run([*unit_capabilities(), sys.executable, "-m", "vsnetd.cli",
                              "validate", "-c", str(main)], capture_output=True, text=True)
    assert refused.returncode == 1, refused.stderr
    assert refused.stderr == f"{directory}:0:0: cannot read: Permission denied\n"


def test_a_drop_in_directory_that_cannot_be_listed_is_refused_naming_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same in this process (root reads anything: the listing is made to fail here)."""
    main = tmp_path / "servers.yaml"
    main.write_text(EXAMPLE_CONFIG.read_text())
    directory = drop_in_dir(main)
    directory.mkdir()
    listdir = os.listdir

    def denied(path: Any) -> list[str]:
        if Path(path) == directory:
            raise PermissionError(13, "Permission denied", str(path))
        return listdir(path)

    monkeypatch.setattr(os, "listdir", denied)
    with pytest.raises(ConfigError) as refused:
        load_config(main)
    assert [str(issue) for issue in refused.value.issues] == [
        f"{directory}:0:0: cannot read: Permission denied"]


@pytest.mark.parametrize(("text", "issue"), [
    ("<<: 3\n", "f.yaml:2:5: YAML: expected a mapping or list of mappings for merging, but "
                "found scalar"),
    ("servers: {<<: [3]}\n",
     "f.yaml:2:16: servers: YAML: expected a mapping for merging, but found scalar"),
    ("servers: !!python/object:os.system {}\n",
     "f.yaml:2:10: servers: YAML tag tag:yaml.org,2002:python/object:os.system is not "
     "supported here"),
    ("servers: !!set {a}\n", "f.yaml:2:10: servers: YAML tag tag:yaml.org,2002:set is not "
                             "supported here"),
    ("servers: {a: !foo bar}\n", "f.yaml:2:14: servers.a: YAML: could not determine a "
                                 "constructor for the tag '!foo'"),
    ("servers: {a: !!binary xx}\n",
     "f.yaml:2:14: servers.a: YAML: failed to decode base64 data: Incorrect padding"),
    ("servers: {a: !!timestamp 2020-13-45}\n", "f.yaml:2:14: servers.a: YAML: '2020-13-45' "
     "is no tag:yaml.org,2002:timestamp (month must be in 1..12)"),
    ("servers: {a: !!bool maybe}\n",
     "f.yaml:2:14: servers.a: YAML: 'maybe' is no tag:yaml.org,2002:bool"),
    ("servers: {a: !!int }\n", "f.yaml:2:14: servers.a: YAML: '' is no tag:yaml.org,2002:int"),
    ("servers: {a: !!timestamp x}\n",
     "f.yaml:2:14: servers.a: YAML: 'x' is no tag:yaml.org,2002:timestamp"),
    ("servers: {a\x00: 1}\n",
     "f.yaml:2:12: YAML: control characters are not allowed"),
    ("é: é\n\x01\n", "f.yaml:3:1: YAML: control characters are not allowed"),
    ("servers: {!!int x: 1, !!int y: 2}\n",
     "f.yaml:2:11: servers: YAML: 'x' is no tag:yaml.org,2002:int (invalid literal for int() "
     "with base 10: 'x')\nf.yaml:2:23: servers: YAML: 'y' is no tag:yaml.org,2002:int "
     "(invalid literal for int() with base 10: 'y')"),
    ("? [a, !foo x]\n: 1\n", "f.yaml:2:7: YAML: could not determine a constructor for the "
                           "tag '!foo'"),
    ("? [a, !!int x]\n: 1\n", "f.yaml:2:3: YAML: what it holds cannot be built (invalid "
                             "literal for int() with base 10: 'x')"),
], ids=["merge", "merge-list", "python-tag", "set", "local-tag", "binary", "timestamp",
        "bool", "empty-int", "no-timestamp", "nul", "control-after-utf8", "keys",
        "key-holding-a-tag", "key-holding-an-int"])
def test_what_the_safe_loader_cannot_build_is_refused_where_it_stands(text: str, issue: str
                                                                     ) -> None:
    """PyYAML raises on these (a merge of what is no mapping, tags, values a tag refuses,
    control characters): an issue in its place, never an exception out of the reader."""
    with pytest.raises(ConfigError) as info:
        parse_config("version: 1\n" + text, "f.yaml")
    assert "\n".join(str(i) for i in info.value.issues) == issue


def test_a_merged_mapping_is_read_and_its_problems_located_where_they_are_written() -> None:
    text = """\
version: 1
servers:
  a: &vs {id: 1, mode: pbr, uplink: eth0, addresses: [{address: 10.0.0.5/24}]}
  b: {<<: *vs, id: 2, addresses: [{address: 10.0.0.6/24}]}
"""
    config = parse_config(text, "f.yaml")
    assert (config.servers["b"].id, config.servers["b"].uplink) == (2, "eth0")
    with pytest.raises(ConfigError) as info:
        parse_config(text.replace("uplink: eth0", "uplink: eth0, bogus: 1"), "f.yaml")
    assert [str(i) for i in info.value.issues] == [
        "f.yaml:3:43: servers.a.bogus: unknown key", "f.yaml:3:43: servers.b.bogus: unknown key"]


# Pieces of YAML that PyYAML's loader or constructors raise on, alone or together.
YAML_PIECES = [*"abx01 :-[]{},&*!|>'\"#%@`?\n\t.~=", "<<", "!!int ", "!!bool ", "!!float ",
               "!!binary ", "!!timestamp ", "!!null ", "!!str ", "!!map ", "!!seq ", "!!set ",
               "!!omap ", "!!python/name:os.system ", "!x ", "&a ", "*a", "? ", "- ", "  ",
               "version: 1\n", "servers:", "id: ", "addresses:", "%YAML 1.1\n", "---\n",
               "...\n", "%TAG ! tag:x,2000:\n", "\x00", "\x85", "\ufeff", "\u2028", "é",
               "\U0001f600", "\r"]


@settings(max_examples=examples(1000), deadline=None, database=None)
@given(text=st.lists(st.sampled_from(YAML_PIECES), max_size=40).map("".join))
def test_no_text_makes_the_reader_raise(text: str) -> None:
    """Whatever the text, a file is valid or refused with issues (found this way: `!!int `
    raised IndexError, `!!timestamp x` AttributeError, a NUL ReaderError)."""
    parse_file(text, "f.yaml", main=False)  # a drop-in: never raises
    try:
        parse_config(text, "f.yaml")
    except ConfigError as exc:
        assert exc.issues


def test_validate_refuses_a_file_that_runs_it_out_of_memory(tmp_path: Path) -> None:
    """Within 128 MiB of address space (a box with strict overcommit, or LimitAS=), a file
    that needs more to be read is refused naming it, not with a traceback."""
    costly = tmp_path / "servers.yaml"
    costly.write_text(costly_config(60_000))  # ~80 MiB more than a small file

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (128 << 20, resource.RLIM_INFINITY))

    refused = subprocess.run([sys.executable, "-m", "vsnetd.cli", "validate", "-c", str(costly)],
                             capture_output=True, text=True, preexec_fn=limited)
    assert refused.returncode == 1
    assert refused.stderr == (f"{costly}:0:0: not read: vsnetctl ran out of memory reading the "
                              "config (MemoryError)\n")


def test_validate_json_into_a_closed_pipe_still_refuses(tmp_path: Path) -> None:
    """`vsnetctl validate --json | head -1`: whoever reads stdout may be gone before the
    refusal is written; the exit status and the issues on stderr say it all the same."""
    bad = tmp_path / "servers.yaml"
    bad.write_text("version: 2\n")
    read_end, write_end = os.pipe()
    os.close(read_end)  # gone before anything is written: writing fails with EPIPE
    try:
        refused = subprocess.run([sys.executable, "-m", "vsnetd.cli", "validate", "--json", "-c",
                                  str(bad)], stdout=write_end, stderr=subprocess.PIPE, text=True)
    finally:
        os.close(write_end)
    assert (refused.returncode, refused.stderr) == (1, f"{bad}:1:10: version: 2: Input should "
                                                        "be 1\n")


def test_netns_mode_checks() -> None:
    errors = errors_of("""\
        version: 1
        servers:
          a:
            id: 1
            mode: pbr
            uplink: eth0
            namespace: vs-a
            addresses: [{address: 10.1.1.5/24}]
          b:
            id: 2
            mode: netns
            uplink: eth0
            link: vlan
            addresses: [{address: 10.1.1.5/24}]
            sysctl: {net.ipv4.ip_forward: 1}
            namespace: shared
          c:
            id: 3
            mode: netns
            uplink: eth0
            link: macvlan
            vlan: 7
            namespace: shared
            sysctl: {net.ipv4.ip_forward: 0}
            addresses: [{address: 10.1.1.5/24}]
          d:
            id: 4
            mode: netns
            uplink: eth1
            link: move
            addresses: [{address: 10.1.1.5/24}]
          e: {id: 5, mode: pbr, uplink: eth1, addresses: [{address: 10.2.1.5/24}]}
        """)
    assert errors == [
        "servers.yaml:7:16: servers.a.namespace: namespace is for mode netns only",
        "servers.yaml:13:11: servers.b.link: link vlan needs a vlan id",
        "servers.yaml:22:11: servers.c.vlan: vlan is for link vlan, not macvlan",
        "servers.yaml:24:35: servers.c.sysctl.net.ipv4.ip_forward: b shares namespace shared "
        "and sets net.ipv4.ip_forward to 1",
        "servers.yaml:25:27: servers.c.addresses[0].address: 10.1.1.5 is already an address of b",
        "servers.yaml:32:33: servers.e.uplink: uplink eth1 is handed whole to d (link: move)",
    ]


def test_overlapping_plans_in_separate_namespaces_are_fine() -> None:
    config = parse_config(textwrap.dedent("""\
        version: 1
        servers:
          a: {id: 1, mode: netns, uplink: eth0, vlan: 100, addresses: [{address: 10.1.1.5/24}]}
          b: {id: 2, mode: netns, uplink: eth0, vlan: 200, addresses: [{address: 10.1.1.5/24}],
              dns: {servers: [10.1.1.53], search: [corp.example]}}
        """))
    assert config.servers["a"].namespace_name("a") == "vs-a"
    assert config.servers["b"].link_type() == "vlan"


def test_vs_sharing_a_namespace_share_its_main_table() -> None:
    errors = errors_of("""\
        version: 1
        servers:
          a: {id: 1, mode: netns, uplink: eth0, namespace: ns1, gateway: 10.0.0.1,
              addresses: [{address: 10.0.0.5/24}], routes: [{to: 10.9.0.0/16, via: 10.0.0.9}]}
          b: {id: 2, mode: netns, uplink: eth0, namespace: ns1, gateway: 10.0.0.1,
              addresses: [{address: 10.0.0.6/24}], routes: [{to: 10.9.0.0/16, via: 10.0.0.9}]}
        """)
    assert errors == [
        "servers.yaml:5:66: servers.b.gateway: a shares namespace ns1 and already sets its "
        "default IPv4 route",
        "servers.yaml:6:58: servers.b.routes[0].to: a shares namespace ns1 and already sets its "
        "route to 10.9.0.0/16",
    ]
