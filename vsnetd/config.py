"""Load and validate ``servers.yaml``: the operator's interface.

Loading checks a file twice over:

1. structure: types, ranges and unknown keys;
2. meaning: :func:`check_semantics` checks what a single field cannot know
   (gateways inside a subnet, unique ids, non-overlapping numbers...).

Every problem becomes a :class:`ConfigIssue` carrying file, line, column and the
field path, and all of them are reported together. A config with any issue is
refused as a whole (:class:`ConfigError`): the caller keeps its last good state.

The common file (plain block YAML, valid) takes a fast path: read line by line
(:func:`_fast_yaml`), its structure checked by hand (:func:`_fast_file`), neither PyYAML
nor pydantic imported. Anything else goes through libyaml and the pydantic models of
:mod:`vsnetd.config_models`, which also say where each problem is.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
import stat
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from vsnetd import numbering

if TYPE_CHECKING:
    import yaml

DEFAULT_CONFIG_PATH = Path("/etc/vsnet/servers.yaml")
DEFAULT_MAX_FILE_BYTES = 16 << 20

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# A VS name becomes part of namespace and interface names ("vs-<name>", 15 bytes max
# for an interface), so it is kept short and shell/filename-safe.
SERVER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,11}$")
# Linux interface names: 1..15 bytes, no '/', ':' or whitespace.
IFNAME_RE = re.compile(r"^[^/:\s]{1,15}$")
NETNS_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SYSCTL_KEY_RE = re.compile(r"^net\.[A-Za-z0-9_.-]+$")
# cgroup paths below the cgroup-v2 mount; pin paths on bpffs, which refuses dots in names
CGROUP_PATH_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*(/[A-Za-z0-9_-][A-Za-z0-9_.-]*)*$")
PIN_PATH_RE = re.compile(r"^(/[A-Za-z0-9_-]+)+$")
DNS_SEARCH_PATTERN = r"^[A-Za-z0-9._-]{1,253}$"
DNS_OPTION_PATTERN = r"^[A-Za-z0-9_:.-]{1,64}$"
PRINCIPAL_PATTERN = r"^[A-Za-z0-9_.][A-Za-z0-9_.-]{0,31}$"  # a user or group name, or id


# --------------------------------------------------------------------------- the config
#
# Plain frozen classes (NamedTuples: vsnetd/state.py says why), what every other module
# reads; their list and dict defaults are shared, never changed in place. Their structure
# (types, ranges, unknown keys) is checked when a file is read, by hand for the common
# valid file (:func:`_fast_servers`), else by the pydantic models of
# :mod:`vsnetd.config_models`, which also give the JSON Schema; field names, defaults and
# descriptions are theirs.


class AddressConfig(NamedTuple):
    """One address of a virtual server, with the gateway its replies leave through."""

    address: IpInterface
    gateway: IpAddress | None = None


class RouteConfig(NamedTuple):
    """An extra route, placed in every table of the VS that can reach ``via``."""

    to: IpNetwork
    via: IpAddress


class DnsConfig(NamedTuple):
    """Resolver settings of a netns VS."""

    servers: list[IpAddress]
    search: list[str] = []  # noqa: RUF012
    options: list[str] = []  # noqa: RUF012


class SocketsConfig(NamedTuple):
    """Who may fetch this VS's sockets from the broker (root always may)."""

    allow_users: list[str] = []  # noqa: RUF012
    allow_groups: list[str] = []  # noqa: RUF012
    privileged_ports: bool = False


class ServerConfig(NamedTuple):
    """One virtual server."""

    id: int
    mode: Literal["pbr", "netns"]
    uplink: str
    addresses: list[AddressConfig]
    gateway: list[IpAddress] = []  # noqa: RUF012
    routes: list[RouteConfig] = []  # noqa: RUF012
    mark: int | None = None
    vlan: int | None = None
    link: Literal["vlan", "macvlan", "move"] | None = None
    namespace: str | None = None
    sysctl: dict[str, int | str] = {}  # noqa: RUF012
    dns: DnsConfig | None = None
    sockets: SocketsConfig = SocketsConfig()
    placement: Literal["local", "cluster"] = "local"

    def namespace_name(self, name: str) -> str:
        """The namespace this VS lives in ("" for pbr: the root namespace)."""
        if self.mode != "netns":
            return ""
        return self.namespace or f"vs-{name}"

    def link_type(self) -> str:
        return self.link or ("vlan" if self.vlan is not None else "macvlan")


class Settings(NamedTuple):
    """Numbering ranges (changing them renumbers every VS: an explicit operator action), and
    where pbr confinement lives."""

    table_base: int = 10000
    priority_base: int = 10000
    mark_base: int = 0x5600000
    block_size: int = numbering.DEFAULT_BLOCK_SIZE
    cgroup_root: str | None = None
    bpf_pin_root: str = "/sys/fs/bpf/vsnet"
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES


class Config(NamedTuple):
    """The whole of ``servers.yaml``."""

    version: Literal[1]
    settings: Settings = Settings()
    servers: dict[str, ServerConfig] = {}  # noqa: RUF012

    @classmethod
    def model_validate(cls, data: Any) -> Config:
        """``data`` (as a YAML document loads) checked for its structure only, as the
        pydantic model does (raising its ``ValidationError``); the semantic checks are
        :func:`check_semantics`'s."""
        checked = _fast_file(data, main=True)
        if checked is None:
            from vsnetd import config_models

            checked = config_models.validate(data, main=True)
        settings, servers = checked
        assert settings is not None
        return cls(version=1, settings=settings, servers=servers)



# --------------------------------------------------------------------------- errors


FieldPath = tuple[str | int, ...]


class ConfigIssue(NamedTuple):
    """One problem in a config file, pointing at the exact place."""

    file: str
    line: int
    column: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"

    def as_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "path": self.path,
            "message": self.message,
        }


class ConfigError(Exception):
    """A config refused as a whole; ``issues`` lists every problem found."""

    def __init__(self, issues: Sequence[ConfigIssue]) -> None:
        self.issues = list(issues)
        super().__init__("\n".join(str(i) for i in self.issues))


def render_path(path: FieldPath) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


# --------------------------------------------------------------------------- YAML


class _Position(NamedTuple):
    line: int
    column: int


class SourceMap:
    """Where each value (and each mapping key) of a YAML document stands."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.values: dict[FieldPath, _Position] = {}
        self.keys: dict[FieldPath, _Position] = {}

    def locate(self, path: FieldPath, *, key: bool = False) -> tuple[FieldPath, _Position]:
        """The longest prefix of ``path`` present in the document, and its position."""
        for end in range(len(path), -1, -1):
            prefix = path[:end]
            table = self.keys if key and end == len(path) else self.values
            if prefix in table:
                return prefix, table[prefix]
        return (), _Position(1, 1)

    def issue(self, path: FieldPath, message: str, *, key: bool = False) -> ConfigIssue:
        found, pos = self.locate(path, key=key)
        return ConfigIssue(self.file, pos.line, pos.column, render_path(found), message)


def _mark(node: yaml.Node) -> _Position:
    return _Position(node.start_mark.line + 1, node.start_mark.column + 1)


def _construct(
    node: yaml.Node, path: FieldPath, loader: yaml.SafeLoader, smap: SourceMap,
    issues: list[ConfigIssue],
) -> Any:
    """Build plain Python data from a node tree, recording each node's position."""
    import yaml

    smap.values[path] = _mark(node)
    if node.tag not in _PLAIN_COLLECTIONS and not isinstance(node, yaml.ScalarNode):
        issues.append(smap.issue(path, f"YAML tag {node.tag} is not supported here"))
        return None
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        for key, child, value_node in _entries(node, path, loader, smap, issues):
            result[key] = (None if value_node is None
                           else _construct(value_node, child, loader, smap, issues))
        return result
    if isinstance(node, yaml.SequenceNode):
        return [
            _construct(item, (*path, index), loader, smap, issues)
            for index, item in enumerate(node.value)
        ]
    return _built(node, path, loader, smap, issues)  # _UNBUILT comes with an issue


# The tags of the collections a config is made of; a collection tagged otherwise (!!set,
# !!omap, !!python/...) is refused rather than read as a plain one.
_PLAIN_COLLECTIONS = frozenset({"tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"})
_UNBUILT = object()


def _entries(node: yaml.MappingNode, path: FieldPath, loader: yaml.SafeLoader,
             smap: SourceMap, issues: list[ConfigIssue]
             ) -> Iterator[tuple[str | int, FieldPath, yaml.Node | None]]:
    """A mapping's entries as the safe loader builds its dict, each key's position
    recorded: (key, its path, the node of its value), or None for the value where a key
    first stands that a later entry overrides (the dict keeps that place). Merge keys
    (``<<: *defaults``) bring their mappings' entries first, which the node's own
    override; a key twice among the node's own is an issue at the second."""
    import yaml

    merged: int | None = getattr(node, _MERGED, None)
    if merged is None:  # not flattened yet (an alias brings the same node again)
        own = len(node.value) - sum(key.tag == _MERGE for key, _value in node.value)
        try:
            loader.flatten_mapping(node)
        except yaml.MarkedYAMLError as exc:  # "<<: 3"
            mark = exc.problem_mark or node.start_mark
            issues.append(ConfigIssue(smap.file, mark.line + 1, mark.column + 1,
                                      render_path(path), f"YAML: {exc.problem}"))
            return
        merged = len(node.value) - own
        setattr(node, _MERGED, merged)  # how many of its entries came from merge keys
    keys = [_built(key_node, path, loader, smap, issues) for key_node, _value in node.value]
    # the entry each key's value comes from: the last merged one, or the first of its own
    winner = {key: index for index, key in enumerate(keys[:merged]) if isinstance(key, str | int)}
    first_own: dict[Any, int] = {}
    for index in range(merged, len(keys)):
        if isinstance(keys[index], str | int):
            first_own.setdefault(keys[index], index)
    winner.update(first_own)
    for index, (key_node, value_node) in enumerate(node.value):
        key = keys[index]
        if key is _UNBUILT:
            continue
        if not isinstance(key, str | int):
            issues.append(smap.issue(path, f"mapping key {key!r} must be a string"))
            continue
        child = (*path, key)
        if winner[key] == index:
            smap.keys[child] = _mark(key_node)
            yield key, child, value_node
        elif index < merged:  # overridden by a later entry: the dict keeps this place
            yield key, child, None
        else:  # its own key twice
            smap.keys[child] = _mark(key_node)
            issues.append(smap.issue(child, "duplicate key", key=True))


_MERGE = "tag:yaml.org,2002:merge"
_MERGED = "vsnet_merged"


def _built(node: yaml.Node, path: FieldPath, loader: yaml.SafeLoader, smap: SourceMap,
           issues: list[ConfigIssue]) -> Any:
    """What the safe loader builds of ``node``, or _UNBUILT with an issue where it stands
    when it cannot (an unknown tag, ``!!binary`` that is not base64, ``!!bool maybe``)."""
    import yaml

    try:
        return loader.construct_object(node, deep=True)
    except yaml.MarkedYAMLError as exc:
        problem, mark = str(exc.problem), exc.problem_mark or node.start_mark
    except RecursionError:
        raise  # parse_file says how deep is too deep
    except Exception as exc:  # PyYAML's constructors raise anything on a value their tag
        # refuses: `!!bool maybe` KeyError, `!!int ` IndexError, `!!timestamp x` AttributeError
        why = f" ({exc})" if isinstance(exc, ValueError) else ""  # said for people
        problem, mark = (f"{node.value!r} is no {node.tag}{why}"
                         if isinstance(node, yaml.ScalarNode)
                         else f"what it holds cannot be built{why}"), node.start_mark
    issues.append(ConfigIssue(smap.file, mark.line + 1, mark.column + 1, render_path(path),
                              f"YAML: {problem}"))
    return _UNBUILT


def _safe_loader(text: str) -> yaml.SafeLoader:
    import yaml

    loader: yaml.SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)  # libyaml
    return loader


def _locate(text: str, file: str, paths: Iterable[FieldPath]) -> SourceMap:
    """Where the values and mapping keys along ``paths`` stand, as :func:`_parse_yaml`
    records them, walking only those paths: a problem found in a list of 200,000 items
    costs the document's nodes while they are walked, not a position kept for each."""
    import yaml

    smap = SourceMap(file)
    wanted = {path[:end] for path in paths for end in range(len(path) + 1)}
    loader = _safe_loader(text)
    try:
        root = loader.get_single_node()
        if root is not None:
            _walk(root, (), loader, smap, wanted)
    except (yaml.YAMLError, RecursionError):
        pass  # read once already (parse_file): what was found stands, the rest at 1:1
    finally:
        loader.dispose()
    return smap


def _walk(node: yaml.Node, path: FieldPath, loader: yaml.SafeLoader, smap: SourceMap,
          wanted: set[FieldPath]) -> None:
    """:func:`_construct`'s positions, for the nodes whose path is ``wanted`` only."""
    import yaml

    smap.values[path] = _mark(node)
    if isinstance(node, yaml.MappingNode):
        for _key, child, value_node in _entries(node, path, loader, smap, []):
            if value_node is not None and child in wanted:
                _walk(value_node, child, loader, smap, wanted)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            if (*path, index) in wanted:
                _walk(item, (*path, index), loader, smap, wanted)


def _parse_yaml(text: str, file: str, limit: int = 0) -> tuple[Any, SourceMap]:
    import yaml

    smap = SourceMap(file)
    loader = _safe_loader(text)
    try:
        try:
            root = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
            raise ConfigError(
                [ConfigIssue(file, line, col, "", f"YAML syntax: {exc.problem or exc}")]
            ) from None
        except yaml.reader.ReaderError as exc:  # a character YAML forbids, such as NUL
            before = text.encode()[:exc.position].decode()  # libyaml counts bytes
            line, col = before.count("\n") + 1, len(before) - before.rfind("\n")
            raise ConfigError([ConfigIssue(file, line, col, "", f"YAML: {exc.reason}")]
                              ) from None
        if root is None:
            raise ConfigError([ConfigIssue(file, 1, 1, "", "the file is empty")])
        check_expansion(root, limit or DEFAULT_MAX_FILE_BYTES, file)
        issues: list[ConfigIssue] = []
        data = _construct(root, (), loader, smap, issues)
        if issues:
            raise ConfigError(issues)
        return data, smap
    finally:
        loader.dispose()


# --------------------------------------------------------------------------- validation




Problems = list[tuple[FieldPath, str]]


def check_semantics(config: Config) -> Problems:
    """Checks that need more than one field. Pure; returns (path, message) pairs.

    A path ending in a server name points at that name (the mapping key).
    """
    problems = _shared_namespace_problems(config) + _uniqueness_problems(config)
    for name, server in config.servers.items():
        problems.extend(server_problems(name, server, config.settings))
    return problems


Claims = tuple[int, list[tuple[tuple[str, int, int], IpAddress]], int, bool]


def server_claims(name: str, server: ServerConfig, settings: Settings) -> Claims:
    """What a VS holds that no other may: (id, address slots, mark, mark by default)."""
    netns = server.namespace_name(name)
    slots: list[tuple[tuple[str, int, int], IpAddress]] = []
    for entry in server.addresses:
        ip = entry.address.ip
        slots.append(((netns, int(ip.version), int(ip)), ip))  # ints hash fast; addresses do not
    mark = server.mark if server.mark is not None else settings.mark_base + server.id
    return server.id, slots, mark, server.mark is None


def _uniqueness_problems(config: Config, claims: dict[str, Claims] | None = None) -> Problems:
    """What one VS may not share with another: ids, addresses (per namespace), marks.
    ``claims`` (by VS name) may come from a cache: see :class:`ParsedFile`."""
    problems: Problems = []
    ids: dict[int, str] = {}
    address_owner: dict[tuple[str, int, int], str] = {}  # per namespace: plans may overlap
    marks: dict[int, str] = {}
    settings = config.settings
    for name, server in config.servers.items():
        base: FieldPath = ("servers", name)
        server_id, slots, mark, default_mark = (
            claims[name] if claims is not None else server_claims(name, server, settings))
        duplicate_id = server_id in ids
        if duplicate_id:
            problems.append(((*base, "id"), f"id {server_id} is already used by {ids[server_id]}"))
        else:
            ids[server_id] = name
        for index, (slot, ip) in enumerate(slots):
            owner = address_owner.setdefault(slot, name)
            if owner is not name:  # twice in one VS: server_problems says so
                problems.append(((*base, "addresses", index, "address"),
                                 f"{ip} is already an address of {owner}"))
        if mark in marks and not (duplicate_id and default_mark):
            mark_path: FieldPath = (*base, "id") if default_mark else (*base, "mark")
            problems.append((mark_path, f"mark {mark:#x} is already used by {marks[mark]}"))
        else:
            marks[mark] = name
    return problems


def server_problems(name: str, server: ServerConfig, settings: Settings) -> Problems:
    """What is wrong with one VS on its own (its settings given)."""
    problems: Problems = []
    base: FieldPath = ("servers", name)
    if not SERVER_NAME_RE.match(name):
        problems.append(
            (base, f"name {name!r} must be 1-12 letters, digits, '-' or '_' "
                   "(it becomes part of interface and namespace names)")
        )
    problems.extend(_mode_problems(name, server, base))
    if len(server.addresses) > settings.block_size - 1:
        problems.append(
            ((*base, "addresses"),
             f"{len(server.addresses)} addresses, at most {settings.block_size - 1} "
             f"fit a block of {settings.block_size} (settings.block_size)")
        )
    subnets: list[IpInterface] = []
    seen: set[IpAddress] = set()
    for index, entry in enumerate(server.addresses):
        if entry.address.ip in seen:
            problems.append(((*base, "addresses", index, "address"),
                             f"{entry.address.ip} is already an address of this server"))
        seen.add(entry.address.ip)
        if entry.gateway is not None and not _inside(entry.gateway, entry.address):
            problems.append(((*base, "addresses", index, "gateway"),
                             f"{entry.gateway} is not inside {entry.address}"))
        subnets.append(entry.address)

    seen_families: set[int] = set()
    for index, gw in enumerate(server.gateway):
        here = (*base, "gateway", index) if len(server.gateway) > 1 else (*base, "gateway")
        if gw.version in seen_families:
            problems.append((here, f"more than one IPv{gw.version} gateway"))
        seen_families.add(gw.version)
        if not any(_inside(gw, net) for net in subnets):
            problems.append((here, f"{gw} is not inside any subnet of {name}"))

    for index, route in enumerate(server.routes):
        here = (*base, "routes", index)
        if route.to.version != route.via.version:
            problems.append(((*here, "via"), f"{route.via} is not of the family of {route.to}"))
        elif not any(_inside(route.via, net) for net in subnets):
            problems.append(((*here, "via"), f"{route.via} is not inside any subnet of {name}"))

    layout = numbering.layout(settings, server.id, server.mark)
    problems.extend(((*base, "id"), msg) for msg in numbering.check_reserved(layout, settings))
    return problems


def _mode_problems(name: str, server: ServerConfig, base: FieldPath) -> list[tuple[FieldPath, str]]:
    problems: list[tuple[FieldPath, str]] = []
    if server.mode == "pbr":
        for key in ("link", "namespace", "sysctl", "dns"):
            if getattr(server, key):
                problems.append(((*base, key), f"{key} is for mode netns only"))
        if server.vlan is not None and len(f"{server.uplink}.{server.vlan}") > 15:
            problems.append(((*base, "vlan"), f"the VLAN device name {server.uplink}.{server.vlan}"
                                               " would exceed 15 characters"))
        return problems
    link = server.link_type()
    if link == "vlan" and server.vlan is None:
        problems.append(((*base, "link"), "link vlan needs a vlan id"))
    if link != "vlan" and server.vlan is not None:
        problems.append(((*base, "vlan"), f"vlan is for link vlan, not {link}"))
    return problems


def _shared_namespace_problems(config: Config) -> list[tuple[FieldPath, str]]:
    """VS sharing a namespace must agree on what belongs to the namespace."""
    problems: list[tuple[FieldPath, str]] = []
    first: dict[str, tuple[str, ServerConfig]] = {}
    moved: dict[str, str] = {}
    # the main table of a shared namespace is shared: one default per family, one route
    # per destination
    main_routes: dict[tuple[str, str], str] = {}
    for name, server in config.servers.items():
        base: FieldPath = ("servers", name)
        netns = server.namespace_name(name)
        if netns:
            wanted: list[tuple[str, FieldPath]] = [
                (f"default IPv{gw.version} route", ("gateway",)) for gw in server.gateway]
            wanted += [(f"route to {r.to}", ("routes", i, "to"))
                       for i, r in enumerate(server.routes)]
            for what, where in wanted:
                owner = main_routes.setdefault((netns, what), name)
                if owner != name:
                    problems.append(((*base, *where), f"{owner} shares namespace {netns} and "
                                                      f"already sets its {what}"))
        if server.mode == "netns" and server.link_type() == "move":
            if server.uplink in moved:
                problems.append(((*base, "uplink"), f"uplink {server.uplink} is already "
                                                     f"handed to {moved[server.uplink]}"))
            moved[server.uplink] = name
        if not netns:
            continue
        if server.placement == "cluster" and server.namespace is not None:
            # its namespace comes and goes with its activation: shared, it would take
            # the other VS with it
            problems.append(((*base, "namespace"), "a VS with placement cluster keeps the "
                                                    "namespace of its own (vs-<name>)"))
        if netns not in first:
            first[netns] = (name, server)
            continue
        other_name, other = first[netns]
        for key, value in server.sysctl.items():
            if key in other.sysctl and str(other.sysctl[key]) != str(value):
                problems.append(((*base, "sysctl", key), f"{other_name} shares namespace "
                                 f"{netns} and sets {key} to {other.sysctl[key]}"))
        if server.dns and other.dns and server.dns != other.dns:
            problems.append(((*base, "dns"), f"{other_name} shares namespace {netns} with "
                                              "other dns settings"))
    for name, server in config.servers.items():
        if server.uplink in moved and moved[server.uplink] != name:
            problems.append(((*("servers", name), "uplink"), f"uplink {server.uplink} is "
                             f"handed whole to {moved[server.uplink]} (link: move)"))
    return problems


def _inside(address: IpAddress, interface: IpInterface) -> bool:
    return address.version == interface.version and address in interface.network



# --------------------------------------------------------------------------- fast checks
#
# The structural checks of vsnetd.config_models, by hand, for the common case: a file they
# accept gives exactly the objects the models give (tests/test_config_fast.py checks it
# on generated documents); anything they are not sure of (a wrong type, an unknown key,
# a value pydantic would coerce, such as "yes" for a bool) returns None and the models
# decide, with their messages. Strings are checked as pydantic's Rust regexes check them:
# fully (``$`` in Python's re also matches before a final newline) and ASCII only, where
# Python's ``\s`` covers Rust's.


def _fullmatch(pattern: str | re.Pattern[str]) -> Any:
    text = pattern if isinstance(pattern, str) else pattern.pattern
    return re.compile(text.removeprefix("^").removesuffix("$")).fullmatch


_IFNAME = _fullmatch(IFNAME_RE)
_NETNS_NAME = _fullmatch(NETNS_NAME_RE)
_SYSCTL_KEY = _fullmatch(SYSCTL_KEY_RE)
_CGROUP_PATH = _fullmatch(CGROUP_PATH_RE)
_PIN_PATH = _fullmatch(PIN_PATH_RE)
_DNS_SEARCH = _fullmatch(DNS_SEARCH_PATTERN)
_DNS_OPTION = _fullmatch(DNS_OPTION_PATTERN)
_PRINCIPAL = _fullmatch(PRINCIPAL_PATTERN)
# the canonical spelling of an IPv4 interface; anything else goes through ipaddress
_IPV4_INTERFACE = re.compile(
    r"(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})"
    r"/(0|[1-9][0-9]?)").fullmatch

_SERVER_KEYS = frozenset(ServerConfig._fields)
_SETTINGS_KEYS = frozenset(Settings._fields)
_ADDRESS_KEYS = frozenset(AddressConfig._fields)
_ROUTE_KEYS = frozenset(RouteConfig._fields)
_DNS_KEYS = frozenset(DnsConfig._fields)
_SOCKETS_KEYS = frozenset(SocketsConfig._fields)
_MAIN_KEYS = frozenset(Config._fields)


class _Unsure(Exception):
    """The fast checks leave this document to the models."""


def _text(value: Any, match: Any = None) -> str:
    if type(value) is not str or not value.isascii() or (match is not None
                                                         and match(value) is None):
        raise _Unsure
    return value


def _number(value: Any, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:
        raise _Unsure
    return value


def _choice(value: Any, choices: tuple[str, ...]) -> Any:
    if type(value) is not str or value not in choices:
        raise _Unsure
    return value


def _list(value: Any) -> list[Any]:
    if type(value) is not list:
        raise _Unsure
    return value


class _Addresses:
    """ipaddress objects by their text: a config names the same gateway a thousand times
    (ipaddress objects are immutable: sharing them is safe)."""

    def __init__(self) -> None:
        self.addresses: dict[str, IpAddress] = {}
        self.networks: dict[tuple[int, int], ipaddress.IPv4Network] = {}

    def address(self, value: Any) -> IpAddress:
        found = self.addresses.get(value) if type(value) is str else None
        if found is None:
            text = _text(value)
            try:  # as pydantic's IPvAnyAddress
                found = ipaddress.IPv4Address(text)
            except ValueError:
                try:
                    found = ipaddress.IPv6Address(text)
                except ValueError:
                    raise _Unsure from None
            self.addresses[text] = found
        return found

    def interface(self, value: Any) -> IpInterface:
        text = _text(value)
        canonical = _IPV4_INTERFACE(text)
        if canonical is not None:
            a, b, c, d, prefix = map(int, canonical.groups())
            if a < 256 and b < 256 and c < 256 and d < 256 and prefix <= 32:
                return self._ipv4_interface((a << 24) | (b << 16) | (c << 8) | d, prefix)
        try:  # as pydantic's IPvAnyInterface
            return ipaddress.IPv4Interface(text)
        except ValueError:
            try:
                return ipaddress.IPv6Interface(text)
            except ValueError:
                raise _Unsure from None

    def _ipv4_interface(self, ip: int, prefix: int) -> ipaddress.IPv4Interface:
        """``IPv4Interface((ip, prefix))``, sharing the network object with the other
        interfaces of its subnet: what ``IPv4Interface.__init__`` sets, without building
        the same network once per address (tests/test_config_fast.py compares both)."""
        key = (ip & (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF, prefix)
        network = self.networks.get(key)
        if network is None:
            network = self.networks[key] = ipaddress.IPv4Network(key)
        interface = ipaddress.IPv4Interface.__new__(ipaddress.IPv4Interface)
        interface._ip = ip  # type: ignore[attr-defined]
        interface.network = network
        interface.netmask = network.netmask
        interface._prefixlen = prefix  # type: ignore[attr-defined]
        return interface

    @staticmethod
    def network(value: Any) -> IpNetwork:
        text = _text(value)
        try:  # as pydantic's IPvAnyNetwork
            return ipaddress.IPv4Network(text)
        except ValueError:
            try:
                return ipaddress.IPv6Network(text)
            except ValueError:
                raise _Unsure from None


def _fast_settings(data: Any) -> Settings:
    if type(data) is not dict or not data.keys() <= _SETTINGS_KEYS:
        raise _Unsure
    if not data:
        return Settings()
    get = data.get
    priority_base = get("priority_base", 10000)
    if priority_base != 10000:
        from vsnetd import ruletree  # the rule tree's layout: only when moved

        _number(priority_base, 1, ruletree.MAX_PRIORITY_BASE)
    cgroup_root = get("cgroup_root")
    return Settings(
        table_base=_number(get("table_base", 10000), 1, 0xFFFFFFFF),
        priority_base=_number(priority_base, 1, 0xFFFFFFFF),
        mark_base=_number(get("mark_base", 0x5600000), 0, 0xFFFFFFFF),
        block_size=_number(get("block_size", numbering.DEFAULT_BLOCK_SIZE), 2, 256),
        cgroup_root=None if cgroup_root is None else _text(cgroup_root, _CGROUP_PATH),
        bpf_pin_root=_text(get("bpf_pin_root", "/sys/fs/bpf/vsnet"), _PIN_PATH),
        max_file_bytes=_number(get("max_file_bytes", DEFAULT_MAX_FILE_BYTES), 4096, 1 << 30),
    )


def _fast_server(data: Any, ips: _Addresses) -> ServerConfig:
    if type(data) is not dict or not data.keys() <= _SERVER_KEYS:
        raise _Unsure
    get = data.get
    mode = _choice(get("mode"), ("pbr", "netns"))
    addresses = []
    entries = _list(get("addresses"))
    if not entries:
        raise _Unsure
    for entry in entries:
        if type(entry) is not dict or not entry.keys() <= _ADDRESS_KEYS:
            raise _Unsure
        gateway = entry.get("gateway")
        addresses.append(AddressConfig(
            ips.interface(entry.get("address")),
            None if gateway is None else ips.address(gateway)))
    gateway = get("gateway")
    gateways = ([] if gateway is None else [ips.address(item) for item in gateway]
                if type(gateway) is list else [ips.address(gateway)])
    routes = []
    for route in _list(get("routes", [])):
        if type(route) is not dict or route.keys() != _ROUTE_KEYS:
            raise _Unsure
        routes.append(RouteConfig(ips.network(route["to"]), ips.address(route["via"])))
    mark, vlan, namespace = get("mark"), get("vlan"), get("namespace")
    link = get("link")
    if link is not None:
        link = _choice(link, ("vlan", "macvlan", "move"))
    sysctl = get("sysctl", {})
    if type(sysctl) is not dict or not all(
            type(value) is int or (type(value) is str and value.isascii())
            for value in sysctl.values()):
        raise _Unsure
    for key in sysctl:
        _text(key, _SYSCTL_KEY)
    placement = _choice(get("placement", "local"), ("local", "cluster"))
    dns = get("dns")
    return ServerConfig(
        id=_number(get("id"), 1, numbering.MAX_SERVER_ID),
        mode=mode,
        uplink=_text(get("uplink"), _IFNAME),
        addresses=addresses,
        gateway=gateways,
        routes=routes,
        mark=None if mark is None else _number(mark, 1, 0xFFFFFFFF),
        vlan=None if vlan is None else _number(vlan, 1, 4094),
        link=link,
        namespace=None if namespace is None else _text(namespace, _NETNS_NAME),
        sysctl=dict(sysctl),
        dns=None if dns is None else _fast_dns(dns, ips),
        sockets=_fast_sockets(get("sockets", {})),
        placement=placement,
    )


def _fast_dns(data: Any, ips: _Addresses) -> DnsConfig:
    if type(data) is not dict or not data.keys() <= _DNS_KEYS:
        raise _Unsure
    servers = _list(data.get("servers"))
    if not 1 <= len(servers) <= 3:
        raise _Unsure
    return DnsConfig(
        servers=[ips.address(server) for server in servers],
        search=[_text(item, _DNS_SEARCH) for item in _list(data.get("search", []))],
        options=[_text(item, _DNS_OPTION) for item in _list(data.get("options", []))],
    )


def _fast_sockets(data: Any) -> SocketsConfig:
    if type(data) is not dict or not data.keys() <= _SOCKETS_KEYS:
        raise _Unsure
    if not data:
        return SocketsConfig()
    privileged = data.get("privileged_ports", False)
    if type(privileged) is not bool:
        raise _Unsure
    return SocketsConfig(
        allow_users=[_text(item, _PRINCIPAL) for item in _list(data.get("allow_users", []))],
        allow_groups=[_text(item, _PRINCIPAL) for item in _list(data.get("allow_groups", []))],
        privileged_ports=privileged,
    )


def _fast_file(data: Any, *, main: bool
               ) -> tuple[Settings | None, dict[str, ServerConfig]] | None:
    """The settings (of a main file) and servers of a loaded document, when the fast
    checks accept it; None leaves it to the models."""
    try:
        if type(data) is not dict or not data.keys() <= (_MAIN_KEYS if main else {"servers"}):
            raise _Unsure
        settings = None
        if main:
            version = data.get("version")
            if type(version) is not int or version != 1:
                raise _Unsure
            settings = _fast_settings(data["settings"]) if "settings" in data else Settings()
        servers = data.get("servers")
        if servers is None:
            return settings, {}
        if type(servers) is not dict:
            raise _Unsure
        ips = _Addresses()
        built = {}
        for name, server in servers.items():
            if type(name) is not str:
                raise _Unsure
            built[name] = _fast_server(server, ips)
        return settings, built
    except _Unsure:
        return None



# --------------------------------------------------------------------------- fast YAML
#
# libyaml composes a node per scalar and PyYAML's constructors and resolver then run in
# Python for each: most of a validation at 1,000 VS. A config is almost always plain block
# YAML: indented mappings and "- " lists of plain scalars, with comments. That subset is
# read here, line by line, into what ``yaml.load(text, CSafeLoader)`` would give; anything
# else (quotes, flow mappings, anchors, tags, block scalars, tabs, a scalar over several
# lines, non-ASCII text, duplicate keys, a number written other than plainly...) is declined
# and libyaml reads the file. tests/test_config_fast.py checks the two agree.


class _Declined(Exception):
    """Not in the subset: libyaml reads this document."""


_YAML_BOOLS = {word: value for value, words in ((True, "yes true on"), (False, "no false off"))
               for lower in words.split() for word in (lower, lower.title(), lower.upper())}
_YAML_NULLS = frozenset({"~", "null", "Null", "NULL"})
# PyYAML's implicit int, float and timestamp types (YAML 1.1): a plain scalar one of them
# matches is not a string
_YAML_NUMBERLIKE = re.compile(r"""(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)
    |[-+]?0x[0-9a-fA-F_]+|[-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+
    |[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?
    |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)
    |[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]
    |[0-9][0-9][0-9][0-9]-[0-9][0-9]?-[0-9][0-9]?(?:[Tt]|[ \t]+)[0-9][0-9]?:[0-9][0-9]
     :[0-9][0-9](?:\.[0-9]*)?(?:[ \t]*(?:Z|[-+][0-9][0-9]?(?::[0-9][0-9])?))?)$""",
                              re.X).match
_YAML_DECIMAL = re.compile(r"0|[1-9][0-9]*").fullmatch
_YAML_HEX = re.compile(r"0x[0-9a-fA-F]+").fullmatch
# a plain scalar: no indicator first, no ": " or " #" inside, printable ASCII only
_YAML_PLAIN = re.compile(r"[^-?:,\[\]{}#&*!|>'\"%@` ](?:[^:#]|:(?! )|(?<! )#)*(?<![: ])").fullmatch
_YAML_KEY_LINE = re.compile(r"([A-Za-z0-9_][A-Za-z0-9_./-]*):(?: +(.*))?").fullmatch
_YAML_OUTSIDE = re.compile(r"[^\x20-\x7e\n]|^(?:---|\.\.\.|%)", re.M).search
_YAML_MAX_DEPTH = 32  # MAX_DEPTH: deeper documents are left to libyaml, which refuses them


def _yaml_scalar(token: str) -> Any:
    """A plain scalar as PyYAML's SafeLoader resolves and builds it."""
    if token[0] in "-+.0123456789<=~nNyYtTfFoO":
        if _YAML_DECIMAL(token):
            return int(token)
        if _YAML_HEX(token):
            return int(token, 16)
        if token in _YAML_BOOLS:
            return _YAML_BOOLS[token]
        if token in _YAML_NULLS:
            return None
        if _YAML_NUMBERLIKE(token) or token in ("<<", "="):
            raise _Declined
    return token


def _yaml_value(text: str) -> Any:
    """A value on the line of its key or dash: a plain scalar, or a one-line flow list or
    mapping of them (``{id: 1, addresses: [{address: 10.0.0.5/24}]}``)."""
    if text[0] in "[{":
        return _FlowLine(text).document()
    if not _YAML_PLAIN(text):
        raise _Declined
    return _yaml_scalar(text)


_YAML_FLOW_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./-]*").fullmatch


# A flow line's lexemes, the spaces before each skipped: a bracket or a comma, or a plain
# scalar (no indicator, no ": ", no space) with the ": " after it when it is a key (""
# where a group did not take part). The scalar's repetition is possessive: "abc" is one
# lexeme, never "a" + "bc", so the line's check cannot backtrack over the ways to cut a
# long word.
_FLOW_SCALAR = r"[A-Za-z0-9_./](?:[A-Za-z0-9_./+=~-]|:(?=[A-Za-z0-9_./:]))*+"
_FLOW_LEXEME = r" *(?:([\[\]{},])|(" + _FLOW_SCALAR + r")(: )?)"
_YAML_FLOW_LEXEMES = re.compile(_FLOW_LEXEME).findall
_YAML_FLOW_LINE = re.compile(f"(?:{_FLOW_LEXEME})* *").fullmatch


class _FlowLine:
    """A flow collection on one line, as libyaml reads it; anything else (quotes,
    multi-line flow, a key without ``": "``, a trailing comma) is declined.

    The line is checked and cut into lexemes by two regular expressions first (a flow
    line is most of a config written one VS per line: scanning it character by character
    in Python cost a fifth more)."""

    def __init__(self, text: str) -> None:
        if not _YAML_FLOW_LINE(text):
            raise _Declined  # something no lexeme starts with
        self.lexemes: list[tuple[str, str, str]] = _YAML_FLOW_LEXEMES(text)
        self.at = 0

    def document(self) -> Any:
        try:
            value = self.node(0)
        except IndexError:  # the line ended inside a collection
            raise _Declined from None
        if self.at != len(self.lexemes):
            raise _Declined
        return value

    def node(self, depth: int) -> Any:
        if depth > _YAML_MAX_DEPTH:
            raise _Declined
        bracket, scalar, colon = self.lexemes[self.at]
        self.at += 1
        if scalar:
            if colon:
                raise _Declined  # "a: b" where a value stands: a mapping to libyaml
            return _yaml_scalar(scalar)
        if bracket == "{":
            return self._mapping(depth)
        if bracket == "[":
            return self._sequence(depth)
        raise _Declined

    def _closed(self, closing: str) -> bool:
        """After an item: True at the closing bracket, False after a comma."""
        bracket = self.lexemes[self.at][0]
        self.at += 1
        if bracket == closing:
            return True
        if bracket != ",":
            raise _Declined
        return False

    def _mapping(self, depth: int) -> dict[Any, Any]:
        result: dict[Any, Any] = {}
        lexemes = self.lexemes
        if lexemes[self.at][0] == "}":
            self.at += 1
            return result
        while True:
            _bracket, key, colon = lexemes[self.at]
            if not colon or not _YAML_FLOW_KEY(key):
                raise _Declined
            self.at += 1
            name = _yaml_scalar(key)
            if name in result:
                raise _Declined  # duplicate: the full path says where
            result[name] = self.node(depth + 1)
            if self._closed("}"):
                return result

    def _sequence(self, depth: int) -> list[Any]:
        result: list[Any] = []
        if self.lexemes[self.at][0] == "]":
            self.at += 1
            return result
        while True:
            result.append(self.node(depth + 1))
            if self._closed("]"):
                return result


def _nested(value: Any) -> bool:
    """Whether a value holds collections that a shared copy would let callers change."""
    return type(value) is dict or (type(value) is list and any(
        type(item) in (dict, list) for item in value))


_NO_VALUE = object()  # "key:" with nothing after it


class _YamlLines:
    def __init__(self, text: str) -> None:
        self.lines: list[tuple[int, str]] = []
        append = self.lines.append
        comments = "#" in text
        for raw in text.split("\n"):
            content = raw.lstrip(" ")
            if not content or content[0] == "#":
                continue
            indent = len(raw) - len(content)
            if comments:
                comment = content.find(" #")
                if comment >= 0:
                    content = content[:comment]
            append((indent, content.rstrip(" ")))
        self.at = 0
        # a config repeats itself ("mode: pbr", "uplink: eth0" in every VS): each distinct
        # line is read once (values are immutable scalars; a flow list is copied)
        self.entries: dict[str, tuple[Any, Any] | None] = {}

    def entry(self, content: str) -> tuple[Any, Any] | None:
        """``key: value`` read as (key, value or _NO_VALUE), or None: not such a line."""
        line = _YAML_KEY_LINE(content)
        entry = None if line is None else (
            _yaml_scalar(line[1]), _NO_VALUE if line[2] is None else _yaml_value(line[2]))
        if entry is None or not _nested(entry[1]):
            self.entries[content] = entry  # a scalar or a list of them: safe to share
        return entry

    def node(self, depth: int) -> Any:
        indent, content = self.lines[self.at]
        if depth > _YAML_MAX_DEPTH:
            raise _Declined
        if content == "-" or content.startswith("- "):
            return self.sequence(indent, depth)
        return self.mapping(indent, depth)

    def below(self, indent: int, depth: int) -> Any:
        """The block under a key or dash with nothing after it (or null)."""
        lines = self.lines
        if self.at < len(lines) and lines[self.at][0] > indent:
            return self.node(depth + 1)
        return None

    def mapping(self, indent: int, depth: int) -> dict[Any, Any]:
        lines, entries, result = self.lines, self.entries, {}
        while self.at < len(lines):
            at_indent, content = lines[self.at]
            if at_indent != indent:
                if at_indent > indent:
                    raise _Declined
                break
            entry: Any = entries.get(content, _NO_VALUE)
            if entry is _NO_VALUE:
                entry = self.entry(content)
            if entry is None:
                raise _Declined
            key, value = entry
            if key in result:
                raise _Declined  # duplicate: the full path says where
            self.at += 1
            if value is not _NO_VALUE:
                result[key] = value.copy() if type(value) is list else value
                if self.at < len(lines) and lines[self.at][0] > indent:
                    raise _Declined  # a scalar continued on the next line
            elif self.at < len(lines) and lines[self.at][0] == indent and (
                    lines[self.at][1] == "-" or lines[self.at][1].startswith("- ")):
                result[key] = self.sequence(indent, depth + 1)  # a list as deep as its key
            else:
                result[key] = self.below(indent, depth)
        return result

    def sequence(self, indent: int, depth: int) -> list[Any]:
        lines, result = self.lines, []
        while self.at < len(lines):
            at_indent, content = lines[self.at]
            if at_indent != indent:
                if at_indent > indent:
                    raise _Declined
                break
            if content == "-":
                self.at += 1
                result.append(self.below(indent, depth))
                continue
            if not content.startswith("- "):
                break  # the next key of a mapping holding this list at its own depth
            rest = content[2:].lstrip(" ")
            column = indent + len(content) - len(rest)
            if (self.entries[rest] if rest in self.entries else self.entry(rest)) is not None:
                # "- key: value": a mapping in the list
                lines[self.at] = (column, rest)
                if depth + 1 > _YAML_MAX_DEPTH:
                    raise _Declined
                result.append(self.mapping(column, depth + 1))
                continue
            if rest.startswith("-"):
                raise _Declined
            self.at += 1
            result.append(_yaml_value(rest))
            if self.at < len(lines) and lines[self.at][0] > indent:
                raise _Declined
        return result


def _fast_yaml(text: str) -> Any:
    """``text`` loaded as libyaml would, or raises :class:`_Declined`."""
    if _YAML_OUTSIDE(text):
        raise _Declined
    lines = _YamlLines(text)
    if not lines.lines:
        return None
    data = lines.node(0)
    if lines.at != len(lines.lines):
        raise _Declined
    return data




# --------------------------------------------------------------------------- intake


class _DuplicateKey(Exception):
    pass


@functools.cache
def _libyaml_loader() -> Any:
    """libyaml's loader (when available), refusing duplicate keys (PyYAML silently keeps
    the last one). Built on first use: PyYAML is imported only for a file the fast YAML
    reader declines."""
    import yaml

    base: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class _FastLoader(base):  # type: ignore[misc]
        def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> Any:
            # a list or mapping as a key ("? [a, b]") is no duplicate: the constructor
            # refuses it as unhashable, and the full path says where
            keys = [key.value for key, _value in node.value if isinstance(key, yaml.ScalarNode)]
            if len(keys) != len(set(keys)):
                raise _DuplicateKey
            return super().construct_mapping(node, deep)

    return _FastLoader


# Deeper than any servers.yaml needs (servers > name > addresses > [i] > address), far
# below Python's recursion limit, which the constructors would otherwise reach.
MAX_DEPTH = 32


def _refusal(file: str, reason: str, line: int = 0, column: int = 0) -> ConfigError:
    return ConfigError([ConfigIssue(file, line, column, "", reason)])


def check_expansion(root: yaml.Node, limit: int, file: str) -> None:
    """Refuse a node graph whose expanded size (every alias counted as a copy of what it
    names: "billion laughs") exceeds ``limit`` bytes, or that nests deeper than
    :data:`MAX_DEPTH`. Linear in the number of distinct nodes: sizes are memoized."""
    import yaml

    sizes: dict[int, int] = {}
    in_progress: set[int] = set()

    def size(node: yaml.Node, depth: int) -> int:
        known = sizes.get(id(node))
        if known is not None:
            return known
        if depth > MAX_DEPTH:
            pos = _mark(node)
            raise _refusal(file, f"nested deeper than {MAX_DEPTH} levels", pos.line, pos.column)
        if id(node) in in_progress:
            pos = _mark(node)
            raise _refusal(file, "an alias refers to a node that contains it", pos.line,
                           pos.column)
        in_progress.add(id(node))
        if isinstance(node, yaml.MappingNode):
            total = 2 + sum(size(k, depth + 1) + size(v, depth + 1) + 2 for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            total = 2 + sum(size(item, depth + 1) + 2 for item in node.value)
        else:
            total = len(node.value) + 1
        in_progress.discard(id(node))
        if total > limit:
            pos = _mark(node)
            raise _refusal(file, f"the document expands (aliases included) to more than "
                                 f"{limit} bytes (settings.max_file_bytes)", pos.line, pos.column)
        sizes[id(node)] = total
        return total

    size(root, 0)


class _Unbuildable(Exception):
    """A value its YAML tag refuses: the slow path says where."""


def _load_fast(text: str, file: str, limit: int) -> Any:
    """libyaml's load, with the expansion bound checked between composing and building."""
    import yaml

    loader = _libyaml_loader()(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if "*" in text:  # no alias without one: the document is the text, under the cap
            check_expansion(node, limit, file)
        try:
            return loader.construct_document(node)
        except (yaml.YAMLError, _DuplicateKey, RecursionError):
            raise
        except Exception as exc:  # PyYAML's constructors raise anything on a value their
            # tag refuses: `!!int ` IndexError, `!!timestamp x` AttributeError...
            raise _Unbuildable from exc
    finally:
        loader.dispose()


_FILE_TYPES = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a named pipe",
               stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
               stat.S_IFSOCK: "a socket"}


def read_config_text(path: Path | str, limit: int = DEFAULT_MAX_FILE_BYTES) -> str:
    """The text of a config file, read so that no file can hang or exhaust the reader:
    a regular file only (after following symlinks: not a pipe, device or directory),
    opened without blocking, at most ``limit`` bytes."""
    file = str(path)
    try:
        before = os.stat(path)  # no open() at all of a device or a pipe
        if not stat.S_ISREG(before.st_mode):
            kind = _FILE_TYPES.get(stat.S_IFMT(before.st_mode), "not a regular file")
            raise _refusal(file, f"refused: {kind}, not a regular file")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise _refusal(file, f"cannot read: {exc.strerror}") from None
    try:
        opened = os.fstat(fd)  # replaced between the two looks: judge what was opened
        if not stat.S_ISREG(opened.st_mode):
            raise _refusal(file, "refused: not a regular file")
        if opened.st_size > limit:
            raise _refusal(file, f"refused: {opened.st_size} bytes, more than {limit} "
                                 "(settings.max_file_bytes)")
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:  # it grew while being read
                raise _refusal(file, f"refused: more than {limit} bytes "
                                     "(settings.max_file_bytes)")
    except OSError as exc:
        raise _refusal(file, f"cannot read: {exc.strerror}") from None
    finally:
        os.close(fd)
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _refusal(file, f"not UTF-8 text: {exc.reason}", 1, 1) from None


# --------------------------------------------------------------------------- one file


class ParsedFile:
    """One file as read: the valid part of it, and what is wrong within it."""

    __slots__ = ("claims", "file", "issues", "located", "problems", "servers", "settings",
                 "text")

    def __init__(self, file: str, text: str, settings: Settings | None = None,
                 servers: dict[str, ServerConfig] | None = None,
                 issues: list[ConfigIssue] | None = None) -> None:
        self.file = file
        self.text = text
        self.settings = settings  # the main file's, when valid
        self.servers = {} if servers is None else servers
        self.issues = [] if issues is None else issues
        self.located: tuple[frozenset[FieldPath], SourceMap] | None = None  # positions()
        self.problems: tuple[Settings, Problems] | None = None  # server_problems, per settings
        self.claims: tuple[Settings, dict[str, Claims]] | None = None

    def positions(self, paths: Sequence[FieldPath]) -> SourceMap:
        """Where ``paths`` stand (kept while they are the ones asked for: each assemble
        asks again). Found in the text again rather than kept from the first read: a
        source map of every node of a large file would be kept as long as the file."""
        asked = frozenset(paths)
        if self.located is None or self.located[0] != asked:
            self.located = (asked, _locate(self.text, self.file, asked))
        return self.located[1]

    def server_claims(self, settings: Settings) -> dict[str, Claims]:
        if self.claims is None or not (self.claims[0] is settings or self.claims[0] == settings):
            self.claims = (settings, {name: server_claims(name, server, settings)
                                      for name, server in self.servers.items()})
        return self.claims[1]

    def server_problems(self, settings: Settings) -> Problems:
        if self.problems is None or not (self.problems[0] is settings
                                         or self.problems[0] == settings):
            found: Problems = []
            for name, server in self.servers.items():
                found.extend(server_problems(name, server, settings))
            self.problems = (settings, found)
        return self.problems[1]


def parse_file(text: str, file: str, *, main: bool,
               limit: int = DEFAULT_MAX_FILE_BYTES) -> ParsedFile:
    """Read one file: the main file (``version``, ``settings``, ``servers``) or a drop-in
    (``servers`` only). Never raises: what is wrong is in ``issues``."""
    try:
        data = _fast_yaml(text)
    except _Declined:
        data = _Declined
    checked = None if data is _Declined else _fast_file(data, main=main)
    if checked is not None:
        return ParsedFile(file, text, checked[0], checked[1])
    import yaml
    from pydantic import ValidationError

    from vsnetd import config_models

    try:
        if data is _Declined:
            data = _load_fast(text, file, limit)
        if data is None and not main:
            return ParsedFile(file, text)  # an empty drop-in holds no servers
        settings, servers = config_models.validate(data, main)
        return ParsedFile(file, text, settings, servers)
    except ConfigError as exc:
        return ParsedFile(file, text, issues=exc.issues)
    except RecursionError:
        return ParsedFile(file, text, issues=[ConfigIssue(
            file, 1, 1, "", f"nested deeper than {MAX_DEPTH} levels")])
    except (yaml.YAMLError, ValidationError, _DuplicateKey, _Unbuildable):
        pass  # read again below, to say where
    try:
        data, smap = _parse_yaml(text, file, limit)
    except ConfigError as exc:
        return ParsedFile(file, text, issues=exc.issues)
    parsed = ParsedFile(file, text)
    try:
        parsed.settings, parsed.servers = config_models.validate(data, main)
    except ValidationError as exc:
        parsed.issues.extend(config_models.structure_issues(exc, smap))
        parsed.settings, parsed.servers = config_models.valid_part(data, main)
    return parsed


# --------------------------------------------------------------------------- all files


def drop_in_dir(path: Path | str) -> Path:
    """``/etc/vsnet/servers.d`` for ``/etc/vsnet/servers.yaml``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.d")


def is_drop_in(path: Path) -> bool:
    return path.suffix == ".yaml" and not path.name.startswith(".")


def drop_in_files(directory: Path) -> list[Path]:
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(directory / name for name in names if is_drop_in(Path(name)))


class _Unlocated(NamedTuple):
    """A problem :func:`assemble` found, before it is given its place in the file."""

    parsed: ParsedFile
    path: FieldPath
    message: str
    key: bool  # about the key (else the value)


def assemble(main: ParsedFile, drop_ins: Sequence[ParsedFile]) -> Config:
    """One config from the main file and the drop-ins (in name order); every issue of
    every file, and those between files, raised together."""
    settings = main.settings or Settings()
    # the issues, those found here still to be located (once all of a file's are known)
    found: list[ConfigIssue | _Unlocated] = [*main.issues]
    servers: dict[str, ServerConfig] = {}
    origin: dict[str, ParsedFile] = {}
    for parsed in (main, *drop_ins):
        if parsed is not main:
            found.extend(parsed.issues)
        for name, server in parsed.servers.items():
            first = origin.get(name)
            if first is not None:
                found.append(_Unlocated(parsed, ("servers", name),
                                        f"{name} is already defined in {first.file}", True))
                continue
            servers[name] = server
            origin[name] = parsed
    config = Config(version=1, settings=settings, servers=servers)
    claims: dict[str, Claims] = {}
    for parsed in (main, *drop_ins):
        claims.update(parsed.server_claims(settings))
    problems = _uniqueness_problems(config, claims) + _shared_namespace_problems(config)
    for parsed in (main, *drop_ins):
        problems.extend(p for p in parsed.server_problems(settings) if origin[str(p[0][1])]
                        is parsed)
    found.extend(_Unlocated(origin[str(path[1])], path, message, len(path) == 2)
                 for path, message in problems)
    asked: dict[int, list[FieldPath]] = {}
    for entry in found:
        if isinstance(entry, _Unlocated):
            asked.setdefault(id(entry.parsed), []).append(entry.path)
    issues = [entry if isinstance(entry, ConfigIssue) else entry.parsed.positions(
        asked[id(entry.parsed)]).issue(entry.path, entry.message, key=entry.key)
        for entry in found]
    if issues:
        order = {parsed.file: index for index, parsed in enumerate((main, *drop_ins))}
        raise ConfigError(sorted(issues, key=lambda i: (order.get(i.file, 0), i.line, i.column)))
    return config


def parse_config(text: str, file: str = "servers.yaml") -> Config:
    """Validate the text of one main file; raise :class:`ConfigError` with every issue.

    A valid plain file takes the fast path (the line reader, the hand checks, the
    semantic checks: ~40 µs per VS); anything else goes through libyaml and the pydantic
    models, and a file with problems is read again to say where each problem is: the
    whole document's positions for what the models refuse, the paths of the semantic
    problems only (:func:`_locate`) for those.
    """
    return assemble(parse_file(text, file, main=True), ())


def load_config(path: Path | str = DEFAULT_CONFIG_PATH) -> Config:
    """Read and validate a config file and its drop-in directory; raise
    :class:`ConfigError` naming file and line."""
    return ConfigLoader(path).load()


def json_schema(*, drop_in: bool = False) -> dict[str, Any]:
    """The JSON Schema of ``servers.yaml`` (or of a ``servers.d/*.yaml`` file)."""
    from vsnetd import config_models

    return config_models.json_schema(drop_in=drop_in)


class _Index:
    """What a valid config's VS hold, by owner: the cross-VS checks of one more VS, in
    constant time (:meth:`ConfigLoader._edit_in_place`)."""

    __slots__ = ("config", "ids", "marks", "moved_uplinks", "origin", "slots")

    def __init__(self, config: Config, origin: dict[str, ParsedFile]) -> None:
        self.config = config
        self.origin = origin
        self.ids: dict[int, str] = {}
        self.slots: dict[tuple[str, int, int], str] = {}
        self.marks: dict[int, str] = {}
        self.moved_uplinks: set[str] = set()  # uplinks handed whole to a VS (link: move)

    @classmethod
    def of(cls, config: Config, files: Sequence[ParsedFile]) -> _Index:
        origin: dict[str, ParsedFile] = {}
        for parsed in files:
            for name in parsed.servers:
                origin.setdefault(name, parsed)
        index = cls(config, origin)
        for name, server in config.servers.items():
            index.add(name, origin[name].server_claims(config.settings)[name])
            if server.mode == "netns" and server.link_type() == "move":
                index.moved_uplinks.add(server.uplink)
        return index

    def add(self, name: str, claims: Claims) -> None:
        server_id, slots, mark, _default = claims
        self.ids[server_id] = name
        for slot, _ip in slots:
            self.slots[slot] = name
        self.marks[mark] = name

    def remove(self, name: str, claims: Claims) -> None:
        server_id, slots, mark, _default = claims
        for table, key in ((self.ids, server_id), (self.marks, mark)):
            if table.get(key) == name:
                del table[key]
        for slot, _ip in slots:
            if self.slots.get(slot) == name:
                del self.slots[slot]

    def free(self, claims: Claims) -> bool:
        server_id, slots, mark, _default = claims
        return (server_id not in self.ids and mark not in self.marks
                and not any(slot in self.slots for slot, _ip in slots))


class ConfigLoader:
    """The main file and its drop-in directory, read again and again: each file on its
    own, so an edit of one file costs that file (the daemon: one VS of a thousand in its
    own drop-in file costs one VS). The result, and every error, is that of a full load.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.directory = drop_in_dir(self.path)
        self.limit = DEFAULT_MAX_FILE_BYTES
        self._main: ParsedFile | None = None
        self._drop_ins: dict[Path, ParsedFile] = {}
        self._order: list[Path] | None = None  # the drop-ins in name order, while unchanged
        self._index: _Index | None = None  # of the last load, when it was valid

    def concerns(self, path: Path) -> bool:
        return path == self.path or (path.parent == self.directory and is_drop_in(path))

    def forget(self) -> None:
        """Drop every file read so far (a read that failed half-way may have replaced
        some): the next :meth:`load` reads every file."""
        self._main, self._drop_ins, self._order, self._index = None, {}, None, None

    def load(self, changed: Iterable[Path] | None = None) -> Config:
        """Read the files in ``changed`` again (None: every file), then assemble."""
        replaced: list[tuple[ParsedFile | None, ParsedFile | None]] = []
        if changed is None or self._main is None:
            self._main = self._read(self.path, main=True)
            self._drop_ins = {path: self._read(path, main=False)
                              for path in drop_in_files(self.directory)}
            self._index = None
        else:
            for path in changed:
                if path == self.path:
                    self._main = self._read(path, main=True)
                    self._index = None
                elif self.concerns(path):
                    before = self._drop_ins.get(path)
                    if os.path.lexists(path):
                        self._drop_ins[path] = self._read(path, main=False)
                    else:
                        self._drop_ins.pop(path, None)
                    if (before is None) != (path not in self._drop_ins):
                        self._order = None
                    replaced.append((before, self._drop_ins.get(path)))
        if changed is None or self._order is None:
            self._order = sorted(self._drop_ins, key=str)
        config = self._edit_in_place(replaced) if self._index is not None else None
        if config is None:
            self._index = None
            files = [self._drop_ins[p] for p in self._order]
            config = assemble(self._main, files)
            self._index = _Index.of(config, [self._main, *files])
        self.limit = config.settings.max_file_bytes
        return config

    def _edit_in_place(self, replaced: list[tuple[ParsedFile | None, ParsedFile | None]]
                       ) -> Config | None:
        """The config after drop-ins of pbr VS were replaced, checked against the index
        of the last valid one; None when a full assemble must decide (a problem to
        locate, a netns VS, a name moving between files). With no conflict before and
        none found here, the full checks would find none either: they are symmetric."""
        index = self._index
        assert index is not None
        settings = index.config.settings
        gone: dict[str, Claims] = {}
        new: dict[str, tuple[ParsedFile, Claims]] = {}
        for before, after in replaced:
            for parsed in (before, after):
                if parsed is None:
                    continue
                if parsed.issues or any(server.mode != "pbr" for server in
                                        parsed.servers.values()):
                    return None
            if before is not None:
                if any(index.origin.get(name) is not before for name in before.servers):
                    return None
                gone.update(before.server_claims(settings))
            if after is not None:
                if after.server_problems(settings):
                    return None
                for name, claims in after.server_claims(settings).items():
                    if name in new or (name in index.origin and name not in gone):
                        return None
                    new[name] = (after, claims)
        if not gone and not new:
            return index.config
        servers = dict(index.config.servers)
        for name, claims in gone.items():
            index.remove(name, claims)
            del servers[name]
            del index.origin[name]
        fits = True
        for name, (parsed, claims) in new.items():
            if not index.free(claims) or parsed.servers[name].uplink in index.moved_uplinks:
                fits = False
                break
            index.add(name, claims)
            servers[name] = parsed.servers[name]
            index.origin[name] = parsed
        if not fits:
            return None  # the index is half-updated: the caller rebuilds it
        index.config = Config(version=1, settings=settings, servers=servers)
        return index.config

    def _read(self, path: Path, *, main: bool) -> ParsedFile:
        try:
            text = read_config_text(path, self.limit)
        except ConfigError as exc:
            return ParsedFile(str(path), "", issues=exc.issues)
        return parse_file(text, str(path), main=main, limit=self.limit)
