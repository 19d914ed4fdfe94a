"""The fast path of config loading gives what the full path gives, or steps aside.

vsnetd.config reads the common file without PyYAML or pydantic (docs: the module's
docstring): a line-by-line reader for plain block YAML and hand-written structural checks.
Both are only worth having if they can never change an answer:

* the reader returns exactly what libyaml loads, or declines the document;
* the checks accept only documents the pydantic models accept, with equal objects, and
  decline every document the models refuse, so its errors are the models' as before.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import subprocess
import sys
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from tests.conftest import ROOT
from tests.strategies import examples, server_specs
from vsnetd import config
from vsnetd.config import fast_check, libyaml, models, parse_file, plain_yaml

# --------------------------------------------------------------------------- the reader

# scalars a config may hold, and the ones YAML 1.1 reads as something else than a string
SCALARS = [
    "eth0", "pbr", "netns", "10.0.0.5/24", "10.0.0.1", "2001:db8::1", "2001:db8:5::5/64",
    "vs-1_a", "net.ipv4.ip_forward", "/sys/fs/bpf/vsnet", "a.b", "x:y", "a#b", "a b",
    "0", "7", "42", "010", "0x5600000", "0x1F", "0o7", "0b101", "1_000", "-3", "+4", "1.5",
    "1e5", ".5", ".inf", ".NaN", "1:30", "2001-12-14", "2002-12-14 21:59:43.10 -5",
    "yes", "No", "TRUE", "off", "On", "y", "n", "null", "Null", "~", "<<", "=", "yEs",
    "-", "-x", "?x", ":x", "x:", "[a]", "{a: 1}", "'q'", '"q"', "&a", "*a", "!t", "|", ">",
    "%x", "@x", "`x", "a: b", "a #c", "a\tb", "é", "1.2.3.4", "00", "0x", "-0", "0_1",
]
KEYS = ["id", "mode", "uplink", "addresses", "gateway", "a", "b-c", "x.y", "1", "0x10",
        "yes", "null", "1.5", "servers", "a/b", "_"]


def scalars() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(SCALARS),
                     st.text(alphabet="ab09.:/-_# xy!'\"[]{},&*?|>%@`~\\", min_size=1,
                             max_size=8))


def documents(depth: int = 3) -> st.SearchStrategy[Any]:
    leaves = st.one_of(scalars(), st.lists(scalars(), max_size=3).map(tuple))
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.dictionaries(st.sampled_from(KEYS), inner, max_size=4),
            st.lists(inner, max_size=3),
        ),
        max_leaves=12,
    )


def render(value: Any, indent: int, draw: st.DrawFn, dash: bool = False) -> list[str]:
    """Block YAML of ``value`` (tuples: flow lists), spaced and commented at random."""
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for index, (key, item) in enumerate(value.items()):
            first = pad if not (dash and index == 0) else ""
            comment = draw(st.sampled_from(["", "", " # note", "  #", "#x"]))
            if isinstance(item, dict | list) and item and draw(st.integers(0, 3)) == 0:
                lines.append(f"{first}{key}: {flow(item, draw)}{comment}")
            elif isinstance(item, dict | list) and item:
                lines.append(f"{first}{key}:{comment}")
                step = 0 if isinstance(item, list) and draw(st.booleans()) else draw(
                    st.sampled_from([1, 2, 4]))
                lines.extend(render(item, indent + step, draw))
            else:
                lines.append(f"{first}{key}:{draw(st.sampled_from([' ', '  ']))}"
                             f"{inline(item)}{comment}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict | list) and item and draw(st.integers(0, 3)) == 0:
                lines.append(f"{pad}- {flow(item, draw)}")
            elif isinstance(item, dict) and item:
                spaces = draw(st.sampled_from([1, 1, 2]))
                inner = render(item, indent + 1 + spaces, draw, dash=True)
                lines.append(f"{pad}-{' ' * spaces}{inner[0]}")
                lines.extend(inner[1:])
            elif isinstance(item, list) and item:
                lines.append(f"{pad}-")
                lines.extend(render(item, indent + 2, draw))
            else:
                lines.append(f"{pad}- {inline(item)}")
    else:
        lines.append(f"{pad}{inline(value)}")
    if draw(st.integers(0, 5)) == 0:
        lines.insert(draw(st.integers(0, len(lines))), draw(st.sampled_from(
            ["", "   ", "# comment", "  # indented comment", "---", "...", "\t", " x"])))
    return lines


def flow(value: Any, draw: st.DrawFn) -> str:
    """``value`` as a one-line flow collection, spaced at random."""
    space = draw(st.sampled_from(["", " ", "  "]))
    if isinstance(value, dict):
        pairs = [f"{key}:{draw(st.sampled_from([' ', ' ', '  ', '']))}{flow(item, draw)}"
                 for key, item in value.items()]
        return "{" + space + f",{draw(st.sampled_from([' ', '', '  ']))}".join(pairs) + space + "}"
    if isinstance(value, list | tuple):
        return "[" + space + ", ".join(flow(item, draw) for item in value) + space + "]"
    return str(value)


def inline(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(value) + "]"
    if isinstance(value, dict | list):
        return "{}" if isinstance(value, dict) else "[]"
    return str(value)


@st.composite
def yaml_texts(draw: st.DrawFn) -> str:
    return "\n".join(render(draw(documents()), draw(st.sampled_from([0, 0, 2])), draw)) + "\n"


def libyaml_load(text: str) -> Any:
    return yaml.load(text, Loader=libyaml._libyaml_loader())  # a safe loader, refusing duplicates


@settings(max_examples=examples(400), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=yaml_texts())
def test_the_reader_loads_what_libyaml_loads_or_declines(text: str) -> None:
    try:
        fast = plain_yaml.load(text)
    except plain_yaml.Declined:
        return
    assert type(fast) is type(libyaml_load(text))
    assert fast == libyaml_load(text)
    assert json.dumps(fast, sort_keys=False, default=str) == json.dumps(
        libyaml_load(text), sort_keys=False, default=str)  # same key order, same types inside


def test_the_reader_takes_the_shipped_example_and_the_benchmark_file() -> None:
    from bench.common import make_pbr_servers, pbr_yaml

    for text in ((ROOT / "etc/vsnet/servers.yaml").read_text(),
                 pbr_yaml(make_pbr_servers(50))):
        assert plain_yaml.load(text) == libyaml_load(text)


@pytest.mark.parametrize("text", [
    "a: 1\na: 2\n",            # duplicate key: the full path names it
    "a: &x 1\nb: *x\n",        # aliases
    "a: 'q'\n",                # quotes
    "a: {b: 1,}\n",            # a trailing comma in a flow mapping
    "a: {b:1}\n",              # a key without ": " in a flow mapping
    "a: {b: 1,\n  c: 2}\n",     # a flow mapping over two lines
    "a: |\n  text\n",          # block scalar
    "a: b\n  c\n",             # a scalar over two lines
    "a:\n\tb: 1\n",            # a tab
    "a: 1.5\n",                # not an int
    "a: 010\n",                # octal
    "---\na: 1\n",             # a document marker
], ids=["duplicate", "alias", "quotes", "flow-comma", "flow-colon", "flow-lines", "block",
        "continued", "tab", "float", "octal", "marker"])  # plain ids: mutmut runs tests by id
def test_the_reader_declines_what_it_does_not_know(text: str) -> None:
    with pytest.raises(plain_yaml.Declined):
        plain_yaml.load(text)


# --------------------------------------------------------------------------- the checks

ODD_VALUES = [None, True, False, "yes", 0, -1, 1, 4095, 65536, 1.5, "1", "", [], {}, ["x"],
              {"a": 1}, "10.0.0.300/24", "10.0.0.5/24", "10.0.0.0/24", "2001:db8::1",
              "eth0\n", "e" * 16, "x", "pbr", "netns", "macvlan", "move", "cluster",
              167772165, "010.0.0.5/24", "10.0.0.5/08", "10.0.0.5", " eth0", "vs1",
              ["10.0.0.1"], ["10.0.0.1", "10.0.0.2"], "net.ipv4.ip_forward", "/sys/fs/bpf/x",
              "é"]


def paths(data: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(data, dict):
        for key, value in data.items():
            found.extend(paths(value, (*prefix, key)))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            found.extend(paths(value, (*prefix, index)))
    return found


@st.composite
def documents_to_check(draw: st.DrawFn) -> tuple[Any, bool]:
    """A valid config document, then perhaps a few changes anywhere in it."""
    main = draw(st.booleans())
    ids = draw(st.lists(st.integers(1, 300), max_size=4, unique=True))
    servers = {f"vs{i}": draw(server_specs(i)) for i in ids}
    for spec in servers.values():
        if draw(st.integers(0, 3)) == 0:
            spec["sockets"] = {"allow_users": ["www-data"], "privileged_ports": True}
        if draw(st.integers(0, 5)) == 0:
            spec["placement"] = "cluster"
        if spec["mode"] == "netns" and draw(st.integers(0, 3)) == 0:
            spec["link"] = draw(st.sampled_from(["macvlan", "move", "vlan"]))
            spec["vlan"] = 10
    data: dict[str, Any] = {"servers": servers}
    if main:
        data["version"] = 1
        if draw(st.booleans()):
            data["settings"] = draw(st.fixed_dictionaries({}, optional={
                "table_base": st.sampled_from([1, 20000, 0, 2**32]),
                "priority_base": st.sampled_from([10000, 1, 20000, 40000]),
                "mark_base": st.sampled_from([0, 0x100, -1]),
                "block_size": st.sampled_from([2, 16, 300]),
                "cgroup_root": st.sampled_from([None, "vsnet", "a/b", "/abs"]),
                "bpf_pin_root": st.sampled_from(["/sys/fs/bpf/x", "rel", "/a.b"]),
                "max_file_bytes": st.sampled_from([4096, 100, 1 << 20]),
            }))
    for _change in range(draw(st.integers(0, 3))):
        places = paths(data)
        where = draw(st.sampled_from(places))
        parent: Any = data
        for step in where[:-1]:
            parent = parent[step]
        action = draw(st.sampled_from(["set", "set", "delete", "unknown"]))
        if not where:
            data = copy.deepcopy(draw(st.sampled_from(
                [None, [], "x", {"version": 1, "servers": None}])))
            break
        if action == "delete" and isinstance(parent, dict):
            del parent[where[-1]]
        elif action == "unknown" and isinstance(parent, dict):
            parent["colour"] = "blue"
        else:
            parent[where[-1]] = copy.deepcopy(draw(st.sampled_from(ODD_VALUES)))
    return data, main


@settings(max_examples=examples(500), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=documents_to_check())
def test_the_checks_agree_with_the_models(case: tuple[Any, bool]) -> None:
    data, main = case
    fast = fast_check.fast_file(data, main=main)
    try:
        full = models.validate(data, main)
    except ValidationError:
        assert fast is None, "the fast checks accepted what the models refuse"
        return
    if fast is not None:
        assert fast == full
        assert repr(fast) == repr(full)  # the same types all the way down


@settings(max_examples=examples(100), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=documents_to_check())
def test_a_file_reads_the_same_by_either_path(case: tuple[Any, bool]) -> None:
    data, main = case
    text = yaml.safe_dump(data, sort_keys=False, default_flow_style=draw_style(data))
    fast = parse_file(text, "servers.yaml", main=main)
    slow = full_path(text, main)
    assert (fast.settings, fast.servers) == (slow.settings, slow.servers)
    assert fast.issues == slow.issues


def draw_style(data: Any) -> bool:
    servers = data.get("servers") if isinstance(data, dict) else None
    return isinstance(servers, dict) and len(servers) == 3  # some in flow style


def full_path(text: str, main: bool) -> config.ParsedFile:
    """parse_file as it reads a file its fast path declines."""
    load = plain_yaml.load
    try:
        plain_yaml.load = _declines  # type: ignore[assignment]
        return parse_file(text, "servers.yaml", main=main)
    finally:
        plain_yaml.load = load


def _declines(text: str) -> Any:
    raise plain_yaml.Declined


def test_the_plain_classes_have_the_models_fields() -> None:
    pairs = [(config.AddressConfig, models.AddressConfig),
             (config.RouteConfig, models.RouteConfig),
             (config.DnsConfig, models.DnsConfig),
             (config.SocketsConfig, models.SocketsConfig),
             (config.ServerConfig, models.ServerConfig),
             (config.Settings, models.Settings),
             (config.Config, models.Config)]
    for plain, model in pairs:
        assert plain.__name__ == model.__name__
        assert list(plain._fields) == list(model.model_fields)
        defaults = plain._field_defaults
        for name, info in model.model_fields.items():
            has_default = name in defaults
            assert has_default != info.is_required(), (plain.__name__, name)
            if has_default:
                theirs = info.get_default(call_default_factory=True)
                mine = defaults[name]
                assert mine == models.to_runtime(theirs), (plain.__name__, name)


def test_a_valid_file_costs_neither_pyyaml_nor_pydantic(tmp_path: Any) -> None:
    """What makes ``vsnetctl validate`` of 1,000 VS fast (bench/cli.py): nothing but the
    standard library on the way of a valid plain file."""
    from bench.common import make_pbr_servers, pbr_yaml

    path = tmp_path / "servers.yaml"
    path.write_text(pbr_yaml(make_pbr_servers(20)))
    code = ("import sys; from vsnetd.config import load_config; "
            f"c = load_config({str(path)!r}); "
            "print(len(c.servers), 'pydantic' in sys.modules, 'yaml' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout.split()
    assert out == ["20", "False", "False"]


@given(ip=st.integers(0, 2**32 - 1), prefix=st.integers(0, 32),
       spelling=st.sampled_from(["canonical", "zero-padded prefix", "leading zero"]))
def test_an_ipv4_interface_is_built_as_ipaddress_builds_it(ip: int, prefix: int,
                                                           spelling: str) -> None:
    text = f"{ipaddress.IPv4Address(ip)}/{prefix}"
    if spelling == "zero-padded prefix":
        text = text.replace("/", "/0")
    elif spelling == "leading zero":
        text = "0" + text
    addresses = fast_check._Addresses()
    try:
        expected = ipaddress.IPv4Interface(text)
    except ValueError:
        with pytest.raises(fast_check._Unsure):
            addresses.interface(text)
        return
    built = addresses.interface(text)
    assert built == expected and hash(built) == hash(expected) and str(built) == str(expected)
    assert vars(built) == vars(expected)
    # /31 and /32 networks carry their own ``hosts`` function: compare what it gives
    assert ({k: v for k, v in vars(built.network).items() if k != "hosts"}
            == {k: v for k, v in vars(expected.network).items() if k != "hosts"})
    if prefix >= 31:
        assert list(built.network.hosts()) == list(expected.network.hosts())


# --------------------------------------------------------------------------- flow style


@pytest.mark.parametrize("text", [
    "a: {b: 1, c: [x, {d: 2}], e: []}\n",
    "a: [x, {b: 1}, [y, z]]\n",
    "a: {  b: 1 ,  c: {}  }\n",
    "- {address: 10.0.0.5/24, gateway: 10.0.0.1}\n- {address: 2001:db8::5/64}\n",
    "v1: {id: 1, mode: netns, addresses: [{address: 10.1.1.5/24}], gateway: 10.1.1.1}\n",
    "a: Xen\nb: {x: Xen}\n",
    "a: {b: 1,c: [x,y]}\n",
], ids=["nested", "list", "spaced", "dashes", "netns-vs", "plain-x", "unspaced"])
def test_the_reader_takes_one_line_flow_collections(text: str) -> None:
    assert plain_yaml.load(text) == libyaml_load(text)


@pytest.mark.parametrize("text", [
    "a: {b: 1}}\n",       # more after the collection
    "a: {b: 1, b: 2}\n",  # a duplicate key
    "a: {./x: 1}\n",      # a key a block mapping would not take
    "a: [x y]\n",         # no comma
    "a: [x, ]\n",         # a trailing comma in a flow list
], ids=["after", "duplicate", "key", "comma", "trailing"])
def test_the_reader_declines_other_flow_collections(text: str) -> None:
    with pytest.raises(plain_yaml.Declined):
        plain_yaml.load(text)


@pytest.mark.parametrize("opening, closing", [("[", "]"), ("{b: ", "}")], ids=["list", "map"])
def test_flow_collections_nest_as_deep_as_block_ones(opening: str, closing: str) -> None:
    deepest = config.MAX_DEPTH  # the innermost scalar's depth: the last one taken
    text = f"a: {opening * deepest}x{closing * deepest}\n"
    assert plain_yaml.load(text) == libyaml_load(text)
    with pytest.raises(plain_yaml.Declined):
        plain_yaml.load(f"a: {opening * (deepest + 1)}x{closing * (deepest + 1)}\n")


def test_equal_lines_holding_collections_give_collections_of_their_own() -> None:
    """Lines read once are shared (vsnetd/config/plain_yaml.py, _YamlLines.entry): a nested flow value
    must not be, or changing one VS's value would change another's."""
    data = plain_yaml.load("a:\n  k: {b: 1}\n  l: [{b: 1}]\n"
                             "c:\n  k: {b: 1}\n  l: [{b: 1}]\n")
    data["a"]["k"]["b"] = data["a"]["l"][0]["b"] = 5
    assert data == {"a": {"k": {"b": 5}, "l": [{"b": 5}]}, "c": {"k": {"b": 1}, "l": [{"b": 1}]}}


@st.composite
def paths_in(draw: st.DrawFn, known: list[config.FieldPath]) -> config.FieldPath:
    """A path of the document, maybe longer (a field it lacks), or one of its own."""
    base = draw(st.sampled_from(known)) if known else ()
    extra = draw(st.lists(st.sampled_from(["servers", "addresses", "x", 0, 1, 2]), max_size=2))
    return (*base, *extra)


@settings(max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=yaml_texts(), data=st.data())
def test_a_problem_is_located_where_the_whole_map_locates_it(text: str, data: st.DataObject
                                                             ) -> None:
    """The positions of a few paths (assemble's problems) are those a full source map of
    the document gives them, for a value and for a key."""
    try:
        _data, whole = libyaml.load_located(text, "f.yaml")
    except (config.ConfigError, yaml.YAMLError):
        return  # refused before any problem could be located
    assert_located_as(whole, text, data)


def assert_located_as(whole: config.SourceMap, text: str, data: st.DataObject) -> None:
    """A few paths of ``text`` (or longer), located alone, stand where ``whole`` has them."""
    known = sorted({*whole.values, *whole.keys}, key=repr)
    paths = data.draw(st.lists(paths_in(known), max_size=4))
    located = libyaml.locate(text, "f.yaml", paths)
    for path in paths:
        for key in (False, True):
            assert located.locate(path, key=key) == whole.locate(path, key=key)


def test_locating_walks_only_the_paths_asked_for() -> None:
    """What it keeps is those paths' positions (and their keys' and prefixes'), not one
    per node of the document; a key it cannot build is passed over, as the full map does;
    the same paths asked again of a file are answered from what was kept."""
    text = "a: {!!int x: 1, b: [p, q, r]}\nc: {d: 2}\n"
    located = libyaml.locate(text, "f.yaml", [("a", "b", 1)])
    assert set(located.values) == {(), ("a",), ("a", "b"), ("a", "b", 1)}
    assert located.locate(("a", "b", 1)) == (("a", "b", 1), libyaml._Position(1, 24))
    parsed = config.ParsedFile("f.yaml", text)
    assert parsed.positions([("c", "d")]) is parsed.positions([("c", "d")])
    assert parsed.positions([("c", "d")]).locate(("c", "d")) == (("c", "d"), libyaml._Position(2, 8))


def test_a_problem_behind_an_alias_is_located_in_what_it_names() -> None:
    text = "a: &shared {b: 1, c: [x, y]}\nd: *shared\n"
    _data, whole = libyaml.load_located(text, "f.yaml")
    paths = [("d", "c", 1), ("d", "b"), ("a",), ("e", "f")]
    located = libyaml.locate(text, "f.yaml", paths)
    for path in paths:
        assert located.locate(path) == whole.locate(path)
    assert located.locate(("d", "c", 1)) == (("d", "c", 1), libyaml._Position(1, 26))


@st.composite
def merging_texts(draw: st.DrawFn) -> str:
    """Anchored mappings, and mappings that merge one or several of them (``<<``) at any
    place among keys of their own, some the same; and aliases of those."""
    keys = st.sampled_from(["a", "b", "c", "d"])
    bases = draw(st.lists(st.dictionaries(keys, st.integers(0, 9), max_size=3), min_size=1,
                          max_size=3))
    lines = [f"base{number}: &b{number} {flow(base, draw)}" for number, base in enumerate(bases)]
    for number in range(draw(st.integers(1, 3))):
        refs = [f"*b{ref}" for ref in draw(st.lists(st.integers(0, len(bases) - 1), min_size=1,
                                                     max_size=3))]
        merge = refs[0] if len(refs) == 1 and draw(st.booleans()) else f"[{', '.join(refs)}]"
        own = [f"{key}: {value}" for key, value in
               draw(st.dictionaries(keys, st.integers(10, 19), max_size=3)).items()]
        own.insert(draw(st.integers(0, len(own))), f"<<: {merge}")
        lines.append(f"m{number}: &m{number} {{{', '.join(own)}}}")
        if draw(st.booleans()):  # the same node again, through an alias
            lines.append(f"again{number}: *m{number}")
    return "\n".join(lines) + "\n"


@settings(max_examples=examples(150), deadline=None)
@given(text=merging_texts(), data=st.data())
def test_merge_keys_read_as_the_safe_loader_reads_them(text: str, data: st.DataObject) -> None:
    """The slow path (positions recorded) builds what libyaml builds, in the same order,
    and locates the merged keys where they are written."""
    built, whole = libyaml.load_located(text, "f.yaml")
    assert json.dumps(built) == json.dumps(libyaml_load(text))
    assert_located_as(whole, text, data)
