"""Config loading at its edges (no root): the fast path takes every field of a valid
file and each range up to its bounds (and steps aside past them), the line reader takes
the block YAML a config is written in, and errors keep their exact words. Written so that
mutants of vsnetd/config/ fail (CONTRIBUTING.md, "Mutation testing")."""

from __future__ import annotations

import copy
import ipaddress
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from vsnetd import config, ruletree
from vsnetd.config import (
    ConfigError,
    ConfigIssue,
    ConfigLoader,
    SourceMap,
    drop_in_dir,
    drop_in_files,
    fast_check,
    is_drop_in,
    libyaml,
    load_config,
    models,
    parse_config,
    parse_file,
    plain_yaml,
    read_config_text,
    render_path,
)

RICH: dict[str, Any] = {
    "version": 1,
    "settings": {"table_base": 20000, "priority_base": 3000, "mark_base": 0x100,
                 "block_size": 8, "cgroup_root": "vsnet/x", "bpf_pin_root": "/sys/fs/bpf/v",
                 "max_file_bytes": 8192},
    "servers": {
        "web": {"id": 7, "mode": "pbr", "uplink": "eth0", "vlan": 100, "mark": 0x7000000,
                "gateway": ["10.0.0.1", "2001:db8::1"],
                "addresses": [{"address": "10.0.0.5/24", "gateway": "10.0.0.1"},
                              {"address": "2001:db8::5/64"}],
                "routes": [{"to": "192.168.0.0/16", "via": "10.0.0.254"}],
                "sockets": {"allow_users": ["www-data", "1000"], "allow_groups": ["web"],
                            "privileged_ports": True},
                "placement": "cluster"},
        "db": {"id": 8, "mode": "netns", "uplink": "eth1", "link": "macvlan",
               "namespace": "ns.db", "gateway": "10.1.0.1",
               "addresses": [{"address": "10.1.0.5/24"}],
               "sysctl": {"net.ipv4.ip_forward": 1, "net.ipv6.conf.all.forwarding": "0"},
               "dns": {"servers": ["192.0.2.53", "2001:db8::53"], "search": ["a.example"],
                       "options": ["ndots:2"]}},
    },
}


def fast(data: Any, main: bool = True) -> Any:
    return fast_check.fast_file(copy.deepcopy(data), main=main)


def by_models(data: Any, main: bool = True) -> Any:
    return models.validate(copy.deepcopy(data), main)


def test_the_fast_checks_take_every_field_of_a_valid_file() -> None:
    taken = fast(RICH)
    assert taken is not None
    assert taken == by_models(RICH)
    assert repr(taken) == repr(by_models(RICH))
    settings, servers = taken
    assert settings == config.Settings(20000, 3000, 0x100, 8, "vsnet/x", "/sys/fs/bpf/v", 8192)
    assert servers["web"].sockets == config.SocketsConfig(["www-data", "1000"], ["web"], True)
    assert servers["db"].dns == config.DnsConfig(
        [ipaddress.ip_address("192.0.2.53"), ipaddress.ip_address("2001:db8::53")],
        ["a.example"], ["ndots:2"])
    assert servers["db"].gateway == [ipaddress.ip_address("10.1.0.1")]
    assert fast({"servers": RICH["servers"]}, main=False) == (None, servers)


def test_defaults_where_a_file_says_nothing() -> None:
    minimal = {"version": 1, "settings": {}, "servers": {"a": {
        "id": 1, "mode": "pbr", "uplink": "eth0", "addresses": [{"address": "10.0.0.5/24"}],
        "sockets": {}}}}
    settings, servers = fast(minimal)
    assert settings == config.Settings()
    assert servers["a"].sockets == config.SocketsConfig()
    assert (servers["a"].placement, servers["a"].gateway, servers["a"].routes) == (
        "local", [], [])
    assert fast({"version": 1}) == (config.Settings(), {})
    assert fast({"version": 1, "servers": None}) == (config.Settings(), {})
    assert fast({"servers": {}}, main=False) == (None, {})
    only_priority = fast({"version": 1, "settings": {"priority_base": 3000}})[0]
    assert (only_priority.priority_base, only_priority.table_base) == (3000, 10000)
    assert fast({"version": 1, "settings": {"table_base": 5}})[0].priority_base == 10000
    dns = fast({"version": 1, "servers": {"a": RICH["servers"]["db"] | {
        "dns": {"servers": ["192.0.2.53"]}}}})[1]["a"].dns
    assert dns == config.DnsConfig([ipaddress.ip_address("192.0.2.53")])
    sockets = fast({"version": 1, "servers": {"a": RICH["servers"]["web"] | {
        "sockets": {"allow_groups": ["g"]}}}})[1]["a"].sockets
    assert sockets == config.SocketsConfig([], ["g"], False)


def settings_with(key: str, value: Any) -> dict[str, Any]:
    return {"version": 1, "settings": {key: value}}


def server_with(key: str, value: Any) -> dict[str, Any]:
    data = copy.deepcopy(RICH)
    data["servers"]["web"][key] = value
    return data


EDGES = [
    # (document, taken by the fast checks: the models agree; else both refuse it)
    (settings_with("table_base", 1), True), (settings_with("table_base", 0), False),
    (settings_with("table_base", 0xFFFFFFFF), True), (settings_with("table_base", 2**32), False),
    (settings_with("priority_base", 1), True), (settings_with("priority_base", 0), False),
    (settings_with("priority_base", ruletree.MAX_PRIORITY_BASE), True),
    (settings_with("priority_base", ruletree.MAX_PRIORITY_BASE + 1), False),
    (settings_with("mark_base", 0), True), (settings_with("mark_base", -1), False),
    (settings_with("mark_base", 0xFFFFFFFF), True), (settings_with("mark_base", 2**32), False),
    (settings_with("block_size", 2), True), (settings_with("block_size", 1), False),
    (settings_with("block_size", 256), True), (settings_with("block_size", 257), False),
    (settings_with("max_file_bytes", 4096), True), (settings_with("max_file_bytes", 4095), False),
    (settings_with("max_file_bytes", 1 << 30), True),
    (settings_with("max_file_bytes", (1 << 30) + 1), False),
    (settings_with("cgroup_root", None), True), (settings_with("cgroup_root", "/abs"), False),
    (settings_with("bpf_pin_root", "/a.b"), False), (settings_with("colour", 1), False),
    (settings_with("table_base", True), False), (settings_with("table_base", "1"), False),
    ({"version": 1, "settings": []}, False),
    (server_with("id", 1), True), (server_with("id", 0), False),
    (server_with("id", 65535), True), (server_with("id", 65536), False),
    (server_with("vlan", 1), True), (server_with("vlan", 0), False),
    (server_with("vlan", 4094), True), (server_with("vlan", 4095), False),
    (server_with("mark", 1), True), (server_with("mark", 0), False),
    (server_with("mark", 0xFFFFFFFF), True), (server_with("mark", 2**32), False),
    (server_with("mode", "bridge"), False), (server_with("link", "bond"), False),
    (server_with("link", "vlan"), True), (server_with("placement", "remote"), False),
    (server_with("uplink", "e" * 15), True), (server_with("uplink", "e" * 16), False),
    (server_with("uplink", "é"), False), (server_with("uplink", 7), False),
    (server_with("namespace", "x" * 64), True), (server_with("namespace", "x" * 65), False),
    (server_with("gateway", "10.0.0.1"), True), (server_with("gateway", None), True),
    (server_with("gateway", "10.0.0.300"), False), (server_with("gateway", "x"), False),
    (server_with("addresses", []), False), (server_with("addresses", "10.0.0.5/24"), False),
    (server_with("addresses", [{"address": "10.0.0.5/24", "colour": 1}]), False),
    (server_with("addresses", ["10.0.0.5/24"]), False),
    (server_with("addresses", [{"address": "2001:db8::5/64"}]), True),
    (server_with("addresses", [{"address": "10.0.0.5/33"}]), False),
    (server_with("addresses", [{"address": "10.0.0.256/24"}]), False),
    (server_with("addresses", [{"address": "256.0.0.1/24"}]), False),
    (server_with("addresses", [{"address": "10.256.0.1/24"}]), False),
    (server_with("addresses", [{"address": "10.0.256.1/24"}]), False),
    (server_with("addresses", [{"address": "2001:db8::5/129"}]), False),
    (server_with("routes", [{"to": "192.168.0.0/16"}]), False),
    (server_with("routes", [{"to": "192.168.0.0/16", "via": "10.0.0.1", "x": 1}]), False),
    (server_with("routes", ["x"]), False), (server_with("routes", "x"), False),
    (server_with("routes", [{"to": "2001:db8:ff::/48", "via": "2001:db8::fe"}]), True),
    (server_with("routes", [{"to": "192.168.0.1/16", "via": "10.0.0.1"}]), False),
    (server_with("sysctl", {"net.x": "é"}), False), (server_with("sysctl", {"net.x": 1.5}), False),
    (server_with("sysctl", {"kernel.x": 1}), False), (server_with("sysctl", []), False),
    (server_with("sysctl", {"net.x": "1", "net.y": 2}), True),
    (server_with("dns", {"servers": []}), False),
    (server_with("dns", {"servers": ["192.0.2.1"] * 3}), True),
    (server_with("dns", {"servers": ["192.0.2.1"] * 4}), False),
    (server_with("dns", {"servers": ["192.0.2.1"], "colour": 1}), False),
    (server_with("dns", {"servers": ["192.0.2.1"], "search": ["a b"]}), False),
    (server_with("dns", {"servers": ["192.0.2.1"], "options": ["a b"]}), False),
    (server_with("dns", ["192.0.2.1"]), False),
    (server_with("sockets", {"privileged_ports": 1}), False),
    (server_with("sockets", {"allow_users": ["a b"]}), False),
    (server_with("sockets", {"allow_groups": ["a b"]}), False),
    (server_with("sockets", {"colour": 1}), False), (server_with("sockets", []), False),
    (server_with("colour", 1), False),
    (server_with("gateway", [["10.0.0.1"]]), False), (server_with("gateway", [1]), False),
    (server_with("link", "move"), True), (server_with("link", "macvlan"), True),
    (server_with("sockets", {"allow_users": ["a"]}), True),
    (server_with("sockets", {"allow_groups": ["a"]}), True),
    ({"version": 1, "servers": {"every": RICH["servers"]["web"] | {  # every key a VS has
        "link": "vlan", "namespace": "ns1", "sysctl": {"net.x": 1},
        "dns": {"servers": ["192.0.2.53"]}}}}, True),
    ({"version": 2, "servers": {}}, False), ({"version": True, "servers": {}}, False),
    ({"version": 1, "servers": []}, False), ({"version": 1, "servers": {1: {}}}, False),
    ({"version": 1, "servers": {"a": []}}, False), ({"version": 1, "colour": 1}, False),
    ([], False),
]


@pytest.mark.parametrize(("data", "taken"), EDGES, ids=[f"case{i}" for i in range(len(EDGES))])
def test_the_fast_checks_take_what_they_can_up_to_each_bound(data: Any, taken: bool) -> None:
    if taken:
        assert fast(data) is not None
        assert fast(data) == by_models(data)
    else:  # the models decide: refuse it, or take it coerced (True for 1...)
        assert fast(data) is None


def test_a_drop_in_holds_servers_only() -> None:
    assert fast({"servers": {}, "version": 1}, main=False) is None
    assert fast({"version": 1}, main=False) is None


# --------------------------------------------------------------------------- the line reader


READ_AS_LIBYAML = [
    ("a: 1\n", {"a": 1}),
    ("a: 0x1F\n", {"a": 31}),
    ("a: 0\n", {"a": 0}),
    ("a: yes\nb: Off\nc: TRUE\n", {"a": True, "b": False, "c": True}),
    ("a: ~\nb: null\nc: NULL\nd:\n", {"a": None, "b": None, "c": None, "d": None}),
    ("b: x:y\nc: a#b\nd: 10.0.0.5/24\ne: eth0.100\n",
     {"b": "x:y", "c": "a#b", "d": "10.0.0.5/24", "e": "eth0.100"}),
    ("a: [x, 1, yes]\nb: []\nc: [ ]\n", {"a": ["x", 1, True], "b": [], "c": []}),
    ("a:\n- 1\n- x\n", {"a": [1, "x"]}),
    ("a:\n  - 1\n  -\n    b: 2\n", {"a": [1, {"b": 2}]}),
    ("a:\n  -\n    b: 2\n  - 3\n  - X1\n", {"a": [{"b": 2}, 3, "X1"]}),
    ("a:\nb: 1\n", {"a": None, "b": 1}),
    ("a:\n- 1\n- x\nb: 2\n", {"a": [1, "x"], "b": 2}),  # a list as deep as its key
    ("a:\n-\n  b: 1\nc: 2\n", {"a": [{"b": 1}], "c": 2}),
    ("Xa: [X1, Y , Z]\nb: cX  \nc: d # e # f\n", {"Xa": ["X1", "Y", "Z"], "b": "cX", "c": "d"}),
    ("a:\n  -   b: 1\n      c: 2\n  - d: 3\n", {"a": [{"b": 1, "c": 2}, {"d": 3}]}),
    ("a:\n  - - 1\n", None),
    ("- 1\n- 2\n", [1, 2]),
    ("# only a comment\n", None),
    ("a: 1  # note\n# whole line\n  # indented comment\nb: 2\n", {"a": 1, "b": 2}),
    ("a:\n  b:\n    c: 1\n  d: 2\ne: 3\n", {"a": {"b": {"c": 1}, "d": 2}, "e": 3}),
    ("a: 1\n\n\nb: 2", {"a": 1, "b": 2}),
    ("a: x  \n", {"a": "x"}),
    ]


# plain ids: mutmut names the tests to run by their ids, which must survive a command line
@pytest.mark.parametrize(("text", "expected"), READ_AS_LIBYAML,
                         ids=[f"case{i}" for i in range(len(READ_AS_LIBYAML))])
def test_the_reader_reads_block_yaml_as_libyaml_does(text: str, expected: Any) -> None:
    if expected is None and text.startswith("a:\n  - - "):
        with pytest.raises(plain_yaml.Declined):
            plain_yaml.load(text)
        return
    assert plain_yaml.load(text) == expected
    assert yaml.safe_load(text) == expected


DECLINED = [
    "a: [x\n", "a: [x, 'y']\n", "a: 1.5\n", "a: <<\n", "a: =\n", "a:\n  - x\n   y\n",
    "a:\n  b: 1\n c: 2\n", "a: 1\n  b: 2\n", "x\n", "- 1\n  - 2\n", "a:\n- - 1\n",
    "é: 1\n", "%YAML 1.1\na: 1\n", "...\n", "a: 1\n...\n",
    "a: @x\n", "a: b: c\n",
    ]


@pytest.mark.parametrize("text", DECLINED, ids=[f"case{i}" for i in range(len(DECLINED))])
def test_the_reader_declines_what_it_cannot_read_as_libyaml_would(text: str) -> None:
    with pytest.raises(plain_yaml.Declined):
        plain_yaml.load(text)


def test_the_reader_declines_a_document_deeper_than_it_reads() -> None:
    def nested(depth: int, as_list: bool) -> str:
        if as_list:
            return "".join(f"{'  ' * i}-\n" for i in range(depth)) + f"{'  ' * depth}- 1\n"
        return "".join(f"{'  ' * i}k{i}:\n" for i in range(depth)) + f"{'  ' * depth}v: 1\n"

    for as_list in (False, True):
        assert plain_yaml.load(nested(config.MAX_DEPTH, as_list)) == yaml.safe_load(
            nested(config.MAX_DEPTH, as_list))
        with pytest.raises(plain_yaml.Declined):
            plain_yaml.load(nested(config.MAX_DEPTH + 1, as_list))

    def dashes(depth: int) -> str:  # "- key:" lines, each a list and a mapping deeper
        return "".join(f"{'  ' * i}- k{i}:\n" for i in range(depth)) + "  " * depth + "v: 1\n"

    assert plain_yaml.load(dashes(16)) == yaml.safe_load(dashes(16))
    with pytest.raises(plain_yaml.Declined):
        plain_yaml.load(dashes(17))


def test_a_repeated_line_is_read_once_and_a_list_on_it_not_shared() -> None:
    text = "a:\n  x: [1, 2]\nb:\n  x: [1, 2]\n"
    data = plain_yaml.load(text)
    assert data == {"a": {"x": [1, 2]}, "b": {"x": [1, 2]}}
    assert data["a"]["x"] is not data["b"]["x"]
    repeated = "a:\n  - v: 1\nb:\n  - v: 1\n"
    assert plain_yaml.load(repeated) == {"a": [{"v": 1}], "b": [{"v": 1}]}


# --------------------------------------------------------------------------- errors


def test_an_issue_reads_and_serializes_with_or_without_a_path() -> None:
    issue = ConfigIssue("f.yaml", 3, 7, "servers.a.id", "too big")
    assert str(issue) == "f.yaml:3:7: servers.a.id: too big"
    assert str(ConfigIssue("f.yaml", 1, 1, "", "the file is empty")) == (
        "f.yaml:1:1: the file is empty")
    assert issue.as_json() == {"file": "f.yaml", "line": 3, "column": 7,
                               "path": "servers.a.id", "message": "too big"}
    error = ConfigError([issue, ConfigIssue("g", 1, 2, "", "x")])
    assert str(error) == "f.yaml:3:7: servers.a.id: too big\ng:1:2: x"
    assert error.issues == [issue, ConfigIssue("g", 1, 2, "", "x")]


def test_a_path_renders_as_the_operator_writes_it() -> None:
    assert render_path(("servers", "a", "addresses", 0, "gateway")) == (
        "servers.a.addresses[0].gateway")
    assert render_path((0, "x")) == "[0].x"
    assert render_path(()) == ""


def test_a_problem_points_at_the_deepest_place_the_file_has() -> None:
    smap = SourceMap("f")
    smap.values[()] = libyaml._Position(1, 1)
    smap.values[("servers",)] = libyaml._Position(2, 1)
    smap.values[("servers", "a")] = libyaml._Position(3, 5)
    smap.keys[("servers", "a")] = libyaml._Position(3, 3)
    assert smap.locate(("servers", "a", "id")) == (("servers", "a"), libyaml._Position(3, 5))
    assert smap.locate(("servers", "a"), key=True) == (("servers", "a"), libyaml._Position(3, 3))
    assert smap.locate(("servers", "a")) == (("servers", "a"), libyaml._Position(3, 5))
    assert str(smap.issue(("servers", "a"), "bad")) == "f:3:5: servers.a: bad"
    assert smap.locate(("servers", "b"), key=True) == (("servers",), libyaml._Position(2, 1))
    assert smap.locate(("other",)) == ((), libyaml._Position(1, 1))
    assert SourceMap("f").locate(("x",)) == ((), libyaml._Position(1, 1))
    assert str(smap.issue(("servers", "a", "id"), "bad")) == "f:3:5: servers.a: bad"


def test_the_default_file_name_and_a_refusal_without_a_path() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("version: 2\n")
    assert [str(i) for i in info.value.issues] == ["servers.yaml:1:10: version: 2: Input "
                                                   "should be 1"]
    refusal = config.model.refusal("f", "no")
    assert refusal.issues[0].as_json() == {"file": "f", "line": 0, "column": 0, "path": "",
                                           "message": "no"}


def test_a_pattern_is_matched_whole_without_its_anchors() -> None:
    match = fast_check._fullmatch("^a+$")
    assert match("aa") and not match("aa\n") and not match("ba")
    assert fast_check._fullmatch(re.compile(r"^[0-9]$"))("7")


def test_semantic_errors_name_the_field() -> None:
    text = """\
version: 1
servers:
  a:
    id: 1
    mode: pbr
    uplink: eth0
    vlan: 100
    gateway: [10.0.0.1, 10.0.1.1]
    addresses: [{address: 10.0.0.5/24}]
    link: vlan
  verylongname1:
    id: 2
    mode: pbr
    uplink: eth0123456789
    vlan: 4000
    addresses: [{address: 10.0.0.6/24}, {address: 10.0.0.6/24}]
  c:
    id: 3
    mode: netns
    uplink: eth0
    placement: cluster
    namespace: ns1
    dns: {servers: [192.0.2.1]}
    addresses: [{address: 10.0.3.5/24}]
  d:
    id: 4
    mode: netns
    uplink: eth0
    namespace: ns1
    dns: {servers: [192.0.2.2]}
    addresses: [{address: 10.0.4.5/24}]
  e:
    id: 5
    mode: netns
    link: move
    uplink: eth0
    addresses: [{address: 10.0.5.5/24}]
"""
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    assert [str(i) for i in info.value.issues] == [
        "servers.yaml:6:13: servers.a.uplink: uplink eth0 is handed whole to e (link: move)",
        "servers.yaml:8:25: servers.a.gateway[1]: more than one IPv4 gateway",
        "servers.yaml:8:25: servers.a.gateway[1]: 10.0.1.1 is not inside any subnet of a",
        "servers.yaml:10:11: servers.a.link: link is for mode netns only",
        "servers.yaml:11:3: servers.verylongname1: name 'verylongname1' must be 1-12 letters, "
        "digits, '-' or '_' (it becomes part of interface and namespace names)",
        "servers.yaml:15:11: servers.verylongname1.vlan: the VLAN device name "
        "eth0123456789.4000 would exceed 15 characters",
        "servers.yaml:16:51: servers.verylongname1.addresses[1].address: 10.0.0.6 is already "
        "an address of this server",
        "servers.yaml:20:13: servers.c.uplink: uplink eth0 is handed whole to e (link: move)",
        "servers.yaml:22:16: servers.c.namespace: a VS with placement cluster keeps the "
        "namespace of its own (vs-<name>)",
        "servers.yaml:28:13: servers.d.uplink: uplink eth0 is handed whole to e (link: move)",
        "servers.yaml:30:10: servers.d.dns: c shares namespace ns1 with other dns settings",
    ]


def test_an_uplink_is_handed_whole_to_one_vs_only() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("""\
version: 1
servers:
  e: {id: 5, mode: netns, link: move, uplink: eth0, addresses: [{address: 10.0.5.5/24}]}
  f: {id: 6, mode: netns, link: move, uplink: eth0, addresses: [{address: 10.0.6.5/24}]}
  g: {id: 7, mode: netns, link: move, uplink: eth1, addresses: [{address: 10.0.7.5/24}]}
""")
    assert [str(i) for i in info.value.issues] == [
        # each of the two is told about the other
        "servers.yaml:3:47: servers.e.uplink: uplink eth0 is handed whole to f (link: move)",
        "servers.yaml:4:47: servers.f.uplink: uplink eth0 is already handed to e",
    ]


def test_a_valid_document_takes_the_fast_path_only(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any) -> Any:
        raise AssertionError("the models were asked about a file the fast checks take")

    monkeypatch.setattr(models, "validate", refuse)
    assert config.Config.model_validate(copy.deepcopy(RICH)).servers["db"].namespace == "ns.db"
    parsed = parse_file(PLAIN, "f", main=True)
    assert (parsed.issues, list(parsed.servers)) == ([], ["a"])
    assert parsed.settings == config.Settings(block_size=8)


PLAIN = """\
version: 1
settings:
  block_size: 8
servers:
  a:
    id: 1
    mode: pbr
    uplink: eth0
    addresses:
      - address: 10.0.0.5/24
        gateway: 10.0.0.1
"""


# --------------------------------------------------------------------------- files


def test_drop_ins_are_the_visible_yaml_files_of_the_d_directory(tmp_path: Path) -> None:
    assert drop_in_dir("/etc/vsnet/servers.yaml") == Path("/etc/vsnet/servers.d")
    assert [is_drop_in(Path(n)) for n in ("a.yaml", ".a.yaml", "a.yml", "a.yaml.swp")] == [
        True, False, False, False]
    for name in ("b.yaml", "a.yaml", ".c.yaml", "d.txt"):
        (tmp_path / name).write_text("servers: {}\n")
    assert drop_in_files(tmp_path) == [tmp_path / "a.yaml", tmp_path / "b.yaml"]
    assert drop_in_files(tmp_path / "missing") == []
    assert drop_in_files(tmp_path / "a.yaml") == []


def test_a_file_is_read_whole_up_to_the_cap(tmp_path: Path) -> None:
    path = tmp_path / "servers.yaml"
    path.write_bytes(b"x" * 4096)
    assert read_config_text(path, 4096) == "x" * 4096
    path.write_bytes(b"x" * 4097)
    with pytest.raises(ConfigError) as info:
        read_config_text(path, 4096)
    assert [str(i) for i in info.value.issues] == [
        f"{path}:0:0: refused: 4097 bytes, more than 4096 (settings.max_file_bytes)"]
    big = "é" * (3 << 19)  # 3 MiB: read in more than one chunk
    path.write_text(big)
    assert read_config_text(path) == big
    path.write_bytes(b"a: \xff\n")
    with pytest.raises(ConfigError) as info:
        read_config_text(path)
    assert [str(i) for i in info.value.issues] == [
        f"{path}:1:1: not UTF-8 text: invalid start byte"]
    os.chmod(path, 0)
    if os.geteuid() != 0:  # root reads it all the same
        with pytest.raises(ConfigError):
            read_config_text(path)


def test_an_empty_drop_in_holds_no_servers(tmp_path: Path) -> None:
    main = tmp_path / "servers.yaml"
    main.write_text(PLAIN)
    (tmp_path / "servers.d").mkdir()
    empty = tmp_path / "servers.d" / "empty.yaml"
    empty.write_text("# nothing yet\n")
    loader = ConfigLoader(main)
    assert list(loader.load().servers) == ["a"]
    assert loader.concerns(empty) and loader.concerns(main)
    assert not loader.concerns(tmp_path / "servers.d" / ".x.yaml")
    assert not loader.concerns(tmp_path / "other.yaml")
    assert loader.limit == config.DEFAULT_MAX_FILE_BYTES


def test_each_edit_in_place_reads_as_a_full_load(tmp_path: Path) -> None:
    """The loader's edits of pbr drop-ins in place, and every case it leaves to a full
    assemble, against a fresh full load after each step."""
    main = tmp_path / "servers.yaml"
    directory = tmp_path / "servers.d"
    directory.mkdir()

    def vs(server_id: int, address: str, **extra: Any) -> dict[str, Any]:
        return {"id": server_id, "mode": "pbr", "uplink": "eth0",
                "addresses": [{"address": address}], **extra}

    def write(name: str, servers: dict[str, Any] | None) -> Path:
        path = main if name == "main" else directory / f"{name}.yaml"
        if servers is None:
            path.unlink()
        else:
            head = "version: 1\n" if name == "main" else ""
            path.write_text(head + yaml.safe_dump({"servers": servers}))
        return path

    def outcome(load: Any) -> Any:
        try:
            return load()
        except ConfigError as exc:
            return [str(issue) for issue in exc.issues]

    write("main", {"m": {**vs(1, "10.0.1.5/24"), "mode": "netns", "link": "move",
                         "uplink": "eth5"}})
    a = write("a", {"a": vs(2, "10.0.2.5/24")})
    b = write("b", {"b": vs(3, "10.0.3.5/24")})
    loader = ConfigLoader(main)
    first = loader.load()
    assert list(first.servers) == ["m", "a", "b"]
    assert loader.load([]) is first  # nothing changed: the same config
    steps: list[tuple[str, dict[str, Any] | None]] = [
        ("a", {"a": vs(2, "10.0.2.6/24")}),                   # in place
        ("a", {"a": vs(3, "10.0.2.6/24")}),                   # b's id
        ("a", {"a": vs(2, "10.0.2.6/24")}),
        ("a", {"a": vs(2, "10.0.3.5/24")}),                   # b's address
        ("a", {"a": vs(2, "10.0.2.6/24", mark=0x5600003)}),   # b's mark
        ("a", {"a": vs(2, "10.0.2.6/24", uplink="eth5")}),    # m's uplink, handed whole
        ("a", {"a": vs(2, "10.0.2.6/24"), "c": vs(4, "10.0.4.5/24")}),  # a new VS
        ("a", {"a": vs(2, "10.0.2.6/24"), "c": vs(4, "10.0.4.5/24"), "d": vs(4, "10.9.0.1/24")}),
        ("a", {"a": vs(2, "10.0.2.6/24"), "b": vs(3, "10.0.3.5/24")}),  # b defined twice
        ("b", {}),                                            # b moved into a.yaml
        ("a", {"a": {**vs(2, "10.0.2.6/24"), "mode": "netns"}, "b": vs(3, "10.0.3.5/24")}),
        ("a", {"a": vs(2, "10.0.2.6/24"), "b": vs(3, "10.0.3.5/24")}),
        ("a", {"a": {**vs(2, "10.0.2.6/24"), "colour": 1}, "b": vs(3, "10.0.3.5/24")}),
        ("a", {"a": vs(2, "10.0.2.6/24"), "b": vs(3, "10.0.3.5/24")}),
        ("e", {"e": vs(5, "10.0.5.5/24")}),                   # a new file
        ("e", {"e": vs(5, "10.0.5.5/24", addresses=[{"address": "10.0.5.5/24",
                                                       "gateway": "10.9.9.9"}])}),
        ("e", None),                                          # a file removed
        ("b", None),
        ("main", {"m": vs(1, "10.0.1.5/24")}),
        ("a", {"a": vs(2, "10.0.2.7/24"), "b": vs(3, "10.0.3.5/24")}),
    ]
    for name, servers in steps:
        changed = write(name, servers)
        assert outcome(lambda c=changed: loader.load([c])) == outcome(lambda: load_config(main))
    assert outcome(lambda: loader.load([directory / ".hidden.yaml"])) == outcome(
        lambda: load_config(main))
    assert sorted(loader.load([a, b]).servers) == ["a", "b", "m"]


# --------------------------------------------------------------------------- hostile files


def expansion_refusal(text: str, limit: int) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config.check_expansion(yaml.compose(text), limit, "f")
    return [str(issue) for issue in info.value.issues]


def test_the_expanded_size_is_counted_exactly() -> None:
    """A scalar is its text and one byte, a list or mapping two bytes and two per entry
    besides its entries; an alias counts as a copy of what it names."""
    for text, size in (("a: bc\n", 9), ("[ab, c]\n", 11), ("a: &x [b]\nc: *x\n", 22),
                       ("[[], {}]\n", 10)):
        config.check_expansion(yaml.compose(text), size, "f")
        assert expansion_refusal(text, size - 1) == [
            f"f:1:1: the document expands (aliases included) to more than {size - 1} bytes "
            "(settings.max_file_bytes)"]
    assert expansion_refusal("x: 1\ny: abcdefghij\n", 10) == [  # where it first goes over
        "f:2:4: the document expands (aliases included) to more than 10 bytes "
        "(settings.max_file_bytes)"]


def test_nesting_is_refused_past_max_depth_where_it_goes_deeper() -> None:
    config.check_expansion(yaml.compose("[" * 33 + "]" * 33), 1000, "f")  # depth 32
    config.check_expansion(yaml.compose("[" * 31 + "{k: v}" + "]" * 31), 1000, "f")
    assert expansion_refusal("[" * 34 + "]" * 34, 1000) == [
        "f:1:34: nested deeper than 32 levels"]
    assert expansion_refusal("a: &x [b, *x]\n", 1000) == [  # the node the alias names
        "f:1:4: an alias refers to a node that contains it"]


def test_an_alias_is_checked_only_in_a_file_that_has_one(tmp_path: Path) -> None:
    path = tmp_path / "servers.yaml"
    # 4096 bytes of text expanding to more: refused under a 4096-byte cap
    lines = ["version: 1", "settings: {max_file_bytes: 4096}",
             "a: &a [" + ", ".join(["xxxxxxxxxx"] * 100) + "]", "b: [*a, *a, *a]"]
    path.write_text("\n".join(lines) + "\n")
    [issue] = [str(i) for i in parse_file(path.read_text(), "f", main=True, limit=4096).issues]
    assert issue == ("f:1:1: the document expands (aliases included) to more than 4096 bytes "
                     "(settings.max_file_bytes)")


def test_a_file_growing_while_read_is_refused_at_the_cap() -> None:
    """/proc files say they hold 0 bytes and hold more: the cap is checked as they read."""
    with pytest.raises(ConfigError) as info:
        read_config_text("/proc/self/maps", 4096)
    assert [str(i) for i in info.value.issues] == [
        "/proc/self/maps:0:0: refused: more than 4096 bytes (settings.max_file_bytes)"]
    assert len(read_config_text("/proc/self/maps", 1 << 20)) > 4096


def test_a_valid_document_expanding_past_the_cap_is_refused() -> None:
    """Aliases can make a valid config (sysctls shared by VS) larger than its text: the
    expanded size is checked before the models see it."""
    sysctls = ", ".join(f"net.k{i}: 1" for i in range(150))
    text = ("version: 1\nsettings: {max_file_bytes: 4096}\nservers:\n"
            f"  a: {{id: 1, mode: netns, uplink: eth0, sysctl: &s {{{sysctls}}},\n"
            "      addresses: [{address: 10.0.1.5/24}]}\n"
            + "".join(f"  b{i}: {{id: {i + 2}, mode: netns, uplink: eth0, sysctl: *s,\n"
                      f"      addresses: [{{address: 10.0.{i + 2}.5/24}}]}}\n" for i in range(3)))
    assert len(text) < 4096
    assert [str(i) for i in parse_file(text, "f", main=True, limit=4096).issues] == [
        "f:4:3: the document expands (aliases included) to more than 4096 bytes "
        "(settings.max_file_bytes)"]
    assert parse_file(text, "f", main=True).issues == []


def test_a_file_failing_while_read_cannot_be_read() -> None:
    with pytest.raises(ConfigError) as info:  # a regular file of size 0 whose read fails
        read_config_text("/proc/self/mem")
    assert [str(i) for i in info.value.issues] == [
        "/proc/self/mem:0:0: cannot read: Input/output error"]


def test_a_missing_file_cannot_be_read(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        read_config_text(tmp_path / "missing.yaml")
    assert [str(i) for i in info.value.issues] == [
        f"{tmp_path}/missing.yaml:0:0: cannot read: No such file or directory"]


PARSE_FILE_CASES = [
    (PLAIN, True, (1, [])),                                  # the fast path
    ("version: 1\nservers: {a: {id: 1, mode: pbr, uplink: eth0, "
     "addresses: [{address: 10.0.0.5/24}]}}\n", True, (1, [])),  # libyaml, the models
    ("", False, (0, [])),                                   # an empty drop-in
    ("# nothing\n", False, (0, [])),
    ("", True, (0, ["f:1:1: the file is empty"])),
    ("version: 1\nservers: " + "[" * 500 + "]" * 500 + "\n", True,
     (0, ["f:2:42: nested deeper than 32 levels"])),
    ("version: 1\n? [a, b]\n: x\n", True, (0, ["f:1:1: mapping key ['a', 'b'] must be "
                                                "a string"])),
    ("version: 1\n1.5: x\n2.5: y\n", True, (0, ["f:1:1: mapping key 1.5 must be a string",
                                                "f:1:1: mapping key 2.5 must be a string"])),
    ("version: 1\nservers: {a: &x [*x]}\n", True,
     (0, ["f:2:14: an alias refers to a node that contains it"])),
    ("version: 1\nservers: [\n", True,
     (0, ["f:3:1: YAML syntax: did not find expected node content"])),
    ("a: 'unterminated\n", True, (0, ["f:2:1: YAML syntax: found unexpected end of "
                                       "stream"])),  # the problem's place, not the quote's
    ("a: 1\na: 2\nb: 1\nb: 2\n", True, (0, ["f:2:1: a: duplicate key",
                                            "f:4:1: b: duplicate key"])),
    ("version: 1\nlist: [{a: 1, a: 2}]\n", True, (0, ["f:2:15: list[0].a: duplicate key"])),
    ("a: é\x00\n", True, (0, ["f:1:5: YAML: control characters are not allowed"])),
    ("servers:\n  a:\n    id: 0\n", False, (0, ["f:3:9: servers.a.id: 0: Input should "
                                                  "be greater than or equal to 1",
                                                  *(f"f:2:3: servers.a: required key '{k}' "
                                                    "is missing"
                                                    for k in ("mode", "uplink",
                                                              "addresses"))])),
    ]


@pytest.mark.parametrize(("text", "main", "expected"), PARSE_FILE_CASES,
                         ids=[f"case{i}" for i in range(len(PARSE_FILE_CASES))])
def test_each_way_through_parse_file(text: str, main: bool, expected: Any) -> None:
    parsed = parse_file(text, "f", main=main)
    assert (parsed.file, parsed.text) == ("f", text)
    assert (len(parsed.servers), [str(i) for i in parsed.issues]) == expected
    assert (parsed.settings is not None) == (main and not parsed.issues)
    assert all(isinstance(issue.as_json()["path"], str) for issue in parsed.issues)


def test_a_document_the_fast_checks_leave_is_validated_by_the_models() -> None:
    coerced = {"version": True, "servers": {"a": RICH["servers"]["web"]}}
    assert fast(coerced) is None
    checked = config.Config.model_validate(copy.deepcopy(coerced))
    assert (checked.version, checked.settings, checked.servers) == (1, config.Settings(),
                                                                     by_models(coerced)[1])
    with pytest.raises(ValueError):  # pydantic's ValidationError
        config.Config.model_validate({"version": 1, "servers": {"a": {"id": 0}}})


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    return [str(issue) for issue in info.value.issues]


def test_a_default_mark_taken_by_another_vs_is_blamed_on_the_id() -> None:
    assert errors_of("""\
version: 1
servers:
  a: {id: 5, mode: pbr, uplink: eth0, mark: 0x5600006, addresses: [{address: 10.0.0.5/24}]}
  b: {id: 6, mode: pbr, uplink: eth0, addresses: [{address: 10.0.0.6/24}]}
""") == ["servers.yaml:4:11: servers.b.id: mark 0x5600006 is already used by a"]


def test_a_vlan_device_name_may_have_15_characters() -> None:
    ok = """\
version: 1
servers:
  a: {id: 1, mode: pbr, uplink: eth0123456, vlan: 4094, addresses: [{address: 10.0.0.5/24}]}
"""
    assert list(parse_config(ok).servers) == ["a"]
    assert errors_of(ok.replace("eth0123456", "eth01234567")) == [
        "servers.yaml:3:52: servers.a.vlan: the VLAN device name eth01234567.4094 would "
        "exceed 15 characters"]


def test_what_vs_in_their_own_namespaces_or_sharing_one_may_do() -> None:
    """Own namespaces: the same address and default in each. A shared one: sysctls set by
    one VS only, or to the same value however written; dns given by one VS only."""
    config_ = parse_config("""\
version: 1
servers:
  a: {id: 1, mode: netns, uplink: eth0, gateway: 10.0.0.1, addresses: [{address: 10.0.0.5/24}]}
  b: {id: 2, mode: netns, uplink: eth1, gateway: 10.0.0.1, addresses: [{address: 10.0.0.5/24}]}
  c: {id: 3, mode: netns, uplink: eth0, namespace: ns1, sysctl: {net.x: 1, net.y: 2},
      addresses: [{address: 10.0.3.5/24}], dns: {servers: [192.0.2.53]}}
  d: {id: 4, mode: netns, uplink: eth0, namespace: ns1, sysctl: {net.x: "1", net.z: 3},
      addresses: [{address: 10.0.4.5/24}]}
""")
    assert config.check_semantics(config_) == []
    assert list(config_.servers) == ["a", "b", "c", "d"]


def test_an_edit_of_pbr_drop_ins_is_checked_in_place(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """What makes an edit cost one file (the daemon: one VS of a thousand): a pbr drop-in
    replaced, added or removed is checked against the last valid config's index, without
    assembling the whole config again; anything else is assembled whole. Either way the
    result is that of a full load."""
    assembled: list[int] = []
    whole = config.assemble

    def counting(main: Any, drop_ins: Any) -> Any:
        assembled.append(1)
        return whole(main, drop_ins)

    monkeypatch.setattr(config.loader, "assemble", counting)
    main = tmp_path / "servers.yaml"
    directory = tmp_path / "servers.d"
    directory.mkdir()

    def vs(server_id: int, address: str, **extra: Any) -> dict[str, Any]:
        return {"id": server_id, "mode": "pbr", "uplink": "eth0",
                "addresses": [{"address": address}], **extra}

    def write(name: str, servers: dict[str, Any] | None) -> Path:
        path = directory / f"{name}.yaml"
        if servers is None:
            path.unlink()
        else:
            path.write_text(yaml.safe_dump({"servers": servers}))
        return path

    def outcome(load: Any) -> Any:
        try:
            return load()
        except ConfigError as exc:
            return [str(issue) for issue in exc.issues]

    main.write_text("version: 1\nsettings: {table_base: 20000}\nservers:\n"
                    "  m: {id: 1, mode: netns, link: move, uplink: eth5, "
                    "addresses: [{address: 10.0.1.5/24}]}\n"
                    "  n: {id: 9, mode: netns, uplink: eth0, addresses: [{address: 10.0.9.5/24}]}\n")
    write("a", {"a": vs(2, "10.0.2.5/24")})
    write("b", {"b": vs(3, "10.0.3.5/24")})
    loader = ConfigLoader(main)
    assert loader.load([main]).settings.table_base == 20000  # a first load reads it all
    a2 = vs(2, "10.0.2.6/24")
    steps: list[tuple[str, dict[str, Any] | None, bool]] = [
        ("a", {"a": a2}, True),
        ("a", {"a": a2, "c": vs(4, "10.0.4.5/24")}, True),
        ("a", {"a": a2}, True),
        ("e", {"e": vs(5, "10.0.5.5/24")}, True),            # a new file
        ("e", None, True),                                    # a file removed
        ("b", {"b2": vs(3, "10.0.3.5/24")}, True),            # b renamed, its numbers kept
        ("b", {"b": vs(3, "10.0.3.5/24")}, True),
        ("a", {"a": {**a2, "mode": "netns"}}, False),         # a netns VS
        ("a", {"a": a2}, False),                              # ... replaced
        ("a", {"a": vs(2, "10.0.2.7/24")}, True),
        ("a", {"a": vs(3, "10.0.2.7/24")}, False),            # b's id
        ("a", {"a": a2}, False),                              # after an invalid config
        ("a", {"a": vs(2, "10.0.3.5/24")}, False),            # b's address
        ("a", {"a": a2}, False),
        ("a", {"a": vs(2, "10.0.2.6/24", mark=0x5600003)}, False),  # b's mark
        ("a", {"a": a2}, False),
        ("a", {"a": vs(2, "10.0.2.6/24", uplink="eth5")}, False),   # m's uplink
        ("a", {"a": a2}, False),
        ("a", {"a": a2, "b": vs(6, "10.0.6.5/24")}, False),   # b, defined in b.yaml too
        ("a", {"a": a2}, False),
        ("a", {"a": a2, "c": vs(4, "10.0.4.5/24"), "d": vs(4, "10.0.9.5/24")}, False),
        ("a", {"a": a2}, False),
        ("a", {"a": {**a2, "colour": 1}}, False),             # a problem to locate
        ("a", {"a": a2}, False),
        ("a", {"a": vs(2, "10.0.2.6/24", addresses=[{"address": "10.0.2.6/24",
                                                     "gateway": "10.9.9.9"}])}, False),
    ]
    for step, (name, servers, in_place) in enumerate(steps):
        changed = write(name, servers)
        assembled.clear()
        got = outcome(lambda c=changed: loader.load([c]))
        assert (not assembled) == in_place, (step, name, servers)
        assert got == outcome(lambda: load_config(main)), (step, name, servers)


def test_a_reader_running_out_of_stack_is_an_issue(monkeypatch: pytest.MonkeyPatch) -> None:
    """libyaml refuses nesting past 1,000 levels itself; should a reader still recurse too
    deep, the file gets an issue, not the caller a RecursionError."""
    def recursing(text: str, file: str, limit: int) -> Any:
        raise RecursionError

    monkeypatch.setattr(libyaml, "load", recursing)
    parsed = parse_file("a: [x, 'y']\n", "f", main=False)
    assert (parsed.file, parsed.text, parsed.servers) == ("f", "a: [x, 'y']\n", {})
    assert [i.as_json() for i in parsed.issues] == [{
        "file": "f", "line": 1, "column": 1, "path": "",
        "message": "nested deeper than 32 levels"}]


def test_drop_ins_are_checked_again_under_new_settings(tmp_path: Path) -> None:
    """A drop-in read once is judged under the settings of the main file as it is now."""
    main = tmp_path / "servers.yaml"
    (tmp_path / "servers.d").mkdir()
    drop_in = tmp_path / "servers.d" / "a.yaml"
    drop_in.write_text(yaml.safe_dump({"servers": {"a": {
        "id": 2, "mode": "pbr", "uplink": "eth0",
        "addresses": [{"address": f"10.0.0.{i}/24"} for i in (5, 6, 7)]}}}))
    head = "version: 1\n"
    m = ("servers:\n  m: {id: 1, mode: pbr, uplink: eth0, mark: 0x202, "
         "addresses: [{address: 10.0.1.5/24}]}\n")
    main.write_text(head + m)
    loader = ConfigLoader(main)
    assert sorted(loader.load().servers) == ["a", "m"]
    for settings in ("settings: {mark_base: 0x200}\n", "settings: {block_size: 3}\n", ""):
        main.write_text(head + settings + m)
        try:
            got: Any = loader.load([main])
        except ConfigError as exc:
            got = [str(i) for i in exc.issues]
        try:
            want: Any = load_config(main)
        except ConfigError as exc:
            want = [str(i) for i in exc.issues]
        assert got == want
        assert isinstance(got, list) == bool(settings)



def test_a_load_without_a_list_reads_every_file_again(tmp_path: Path) -> None:
    main = tmp_path / "servers.yaml"
    main.write_text(PLAIN)
    loader = ConfigLoader(main)
    assert loader.load().settings.block_size == 8
    main.write_text(PLAIN.replace("block_size: 8", "block_size: 4"))
    assert loader.load().settings.block_size == 4


def test_the_cap_read_from_the_main_file_applies_to_the_next_reads(tmp_path: Path) -> None:
    main = tmp_path / "servers.yaml"
    main.write_text("version: 1\nsettings: {max_file_bytes: 4096}\n")
    (tmp_path / "servers.d").mkdir()
    drop_in = tmp_path / "servers.d" / "a.yaml"
    loader = ConfigLoader(main)
    loader.load()
    items = ", ".join(["xxxxxxxxxx"] * 100)
    drop_in.write_text(f"x: &a [{items}]\ny: [*a, *a, *a, *a]\n")
    with pytest.raises(ConfigError) as info:
        loader.load([drop_in])
    assert [str(i) for i in info.value.issues] == [
        f"{drop_in}:2:4: the document expands (aliases included) to more than 4096 bytes "
        "(settings.max_file_bytes)"]


def test_issues_come_in_file_order_then_line_order(tmp_path: Path) -> None:
    main = tmp_path / "servers.yaml"
    main.write_text("version: 1\nservers:\n\n\n\n"
                    "  m: {id: 1, mode: pbr, uplink: eth0, gateway: 10.9.9.9, "
                    "addresses: [{address: 10.0.1.5/24}]}\n")
    (tmp_path / "servers.d").mkdir()
    (tmp_path / "servers.d" / "0.yaml").mkdir()  # refused: a directory
    one = tmp_path / "servers.d" / "1.yaml"
    one.write_text("servers:\n  m: {id: 2, mode: pbr, uplink: eth0, "
                   "addresses: [{address: 10.0.2.5/24}]}\n"
                   "  api: {id: 3, mode: pbr, uplink: eth0, gateway: 10.8.8.8, "
                   "addresses: [{address: 10.0.3.5/24}]}\n")
    with pytest.raises(ConfigError) as info:
        load_config(main)
    assert [str(i) for i in info.value.issues] == [
        f"{main}:6:48: servers.m.gateway: 10.9.9.9 is not inside any subnet of m",
        f"{tmp_path}/servers.d/0.yaml:0:0: refused: a directory, not a regular file",
        f"{one}:2:3: servers.m: m is already defined in {main}",
        f"{one}:3:50: servers.api.gateway: 10.8.8.8 is not inside any subnet of api",
    ]


def test_a_main_file_with_a_broken_vs_keeps_its_settings_for_the_others() -> None:
    assert errors_of("""\
version: 1
settings: {block_size: 3}
servers:
  a: {id: 1, mode: pbr, uplink: eth0,
      addresses: [{address: 10.0.0.5/24}, {address: 10.0.0.6/24}, {address: 10.0.0.7/24}]}
  b: {id: 2, mode: pbr, uplink: eth0, colour: 1, addresses: [{address: 10.0.2.5/24}]}
  c: {id: 3, mode: pbr, uplink: eth0, addresses: [{address: 10.0.3.5/24}, {address: 10.0.3.6/24}]}
""") == ["servers.yaml:5:18: servers.a.addresses: 3 addresses, at most 2 fit a block of 3 "
         "(settings.block_size)",
         "servers.yaml:6:39: servers.b.colour: unknown key"]


def test_one_gateway_is_named_without_an_index_and_an_explicit_mark_is_checked() -> None:
    assert errors_of("""\
version: 1
settings: {mark_base: 0xFFFFFFFF}
servers:
  a: {id: 1, mode: pbr, uplink: eth0, gateway: 10.9.9.9, mark: 5,
      addresses: [{address: 10.0.0.5/24}]}
""") == ["servers.yaml:4:48: servers.a.gateway: 10.9.9.9 is not inside any subnet of a"]
