"""Load and validate ``servers.yaml``: the operator's interface.

Loading is two passes over one YAML node tree:

1. structure: pydantic validates types, ranges and unknown keys;
2. meaning: :func:`check_semantics` checks what a single field cannot know
   (gateways inside a subnet, unique ids, non-overlapping numbers...).

Every problem becomes a :class:`ConfigIssue` carrying file, line, column and the
field path, and all of them are reported together. A config with any issue is
refused as a whole (:class:`ConfigError`): the caller keeps its last good state.
"""

from __future__ import annotations

import copy
import ipaddress
import os
import re
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    IPvAnyAddress,
    IPvAnyInterface,
    IPvAnyNetwork,
    StrictInt,
    ValidationError,
    WithJsonSchema,
    field_validator,
)

from vsnetd import numbering, ruletree

DEFAULT_CONFIG_PATH = Path("/etc/vsnet/servers.yaml")
DEFAULT_MAX_FILE_BYTES = 16 << 20

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

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


def _as_list(value: Any) -> Any:
    """Accept one item where a list is expected (``gateway: 10.0.1.1``)."""
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AddressConfig(_Strict):
    """One address of a virtual server, with the gateway its replies leave through."""

    address: IPvAnyInterface = Field(description="Address with prefix length, e.g. 10.0.0.5/24.")
    gateway: IPvAnyAddress | None = Field(
        default=None,
        description="Where replies from this address go (reflection); inside the address's subnet.",
    )


class RouteConfig(_Strict):
    """An extra route, placed in every table of the VS that can reach ``via``."""

    to: IPvAnyNetwork = Field(description="Destination network, e.g. 192.168.50.0/24.")
    via: IPvAnyAddress = Field(description="Next hop; must lie inside one of the VS's subnets.")


class DnsConfig(_Strict):
    """Resolver settings of a netns VS."""

    servers: list[IPvAnyAddress] = Field(min_length=1, max_length=3)
    search: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,253}$")]] = Field(
        default_factory=list
    )
    options: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_:.-]{1,64}$")]] = Field(
        default_factory=list
    )


class SocketsConfig(_Strict):
    """Who may fetch this VS's sockets from the broker (root always may)."""

    allow_users: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.][A-Za-z0-9_.-]{0,31}$")]] = (
        Field(default_factory=list, description="User names (or numeric uids).")
    )
    allow_groups: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.][A-Za-z0-9_.-]{0,31}$")]] = (
        Field(default_factory=list, description="Group names (or numeric gids).")
    )
    privileged_ports: bool = Field(
        default=False,
        description="Whether those users and groups may also bind ports below 1024.",
    )


class ServerConfig(_Strict):
    """One virtual server."""

    id: StrictInt = Field(
        ge=1,
        le=numbering.MAX_SERVER_ID,
        description="Stable small integer chosen by the operator; all numbering derives from it.",
    )
    mode: Literal["pbr", "netns"] = Field(description="How the VS is sliced.")
    uplink: Annotated[str, Field(pattern=IFNAME_RE.pattern)] = Field(
        description="Parent device in the root namespace."
    )
    addresses: list[AddressConfig] = Field(min_length=1)
    gateway: Annotated[
        list[IPvAnyAddress],
        BeforeValidator(_as_list),
        WithJsonSchema({
            "anyOf": [
                {"type": "string", "format": "ipvanyaddress"},
                {"type": "array", "items": {"type": "string", "format": "ipvanyaddress"}},
                {"type": "null"},
            ]
        }),
    ] = Field(
        default_factory=list,
        description="Default route for the VS's own (marked) traffic; one per family.",
    )
    routes: list[RouteConfig] = Field(default_factory=list)
    mark: StrictInt | None = Field(
        default=None,
        ge=1,
        le=0xFFFFFFFF,
        description="fwmark of the VS's sockets; default mark_base + id.",
    )
    vlan: StrictInt | None = Field(
        default=None, ge=1, le=4094,
        description="802.1Q VLAN id: the VS's device is a VLAN on the uplink.",
    )
    link: Literal["vlan", "macvlan", "move"] | None = Field(
        default=None,
        description="netns mode: the VS device: vlan (default with vlan), macvlan (default "
                    "otherwise) or move (the uplink itself is handed to the VS).",
    )
    namespace: Annotated[str, Field(pattern=NETNS_NAME_RE.pattern)] | None = Field(
        default=None,
        description="netns mode: the namespace's name (default vs-<name>); VS may share one.",
    )
    sysctl: dict[Annotated[str, Field(pattern=SYSCTL_KEY_RE.pattern)], StrictInt | str] = Field(
        default_factory=dict,
        description="netns mode: net.* sysctls set inside the namespace.",
    )
    dns: DnsConfig | None = Field(
        default=None, description="netns mode: /etc/netns/<namespace>/resolv.conf."
    )
    sockets: SocketsConfig = Field(
        default_factory=SocketsConfig,
        description="The socket broker: who may fetch this VS's sockets.",
    )
    placement: Literal["local", "cluster"] = Field(
        default="local",
        description="local: always in the kernel; cluster: known (numbers reserved) but in the "
                    "kernel only while activated (vsnetctl activate, the OCF agent).",
    )

    def namespace_name(self, name: str) -> str:
        """The namespace this VS lives in ("" for pbr: the root namespace)."""
        if self.mode != "netns":
            return ""
        return self.namespace or f"vs-{name}"

    def link_type(self) -> str:
        return self.link or ("vlan" if self.vlan is not None else "macvlan")


class Settings(_Strict):
    """Numbering ranges (changing them renumbers every VS: an explicit operator action), and
    where pbr confinement lives."""

    table_base: StrictInt = Field(default=10000, ge=1, le=0xFFFFFFFF)
    priority_base: StrictInt = Field(
        default=10000, ge=1,
        description=f"First priority of vsnet's rule tree (docs/rule-tree.md); at most "
                    f"{ruletree.MAX_PRIORITY_BASE}, so the tree ends before the main table's "
                    f"rule ({numbering.MAIN_RULE_PRIORITY}).",
    )
    mark_base: StrictInt = Field(default=0x5600000, ge=0, le=0xFFFFFFFF)
    block_size: StrictInt = Field(
        default=numbering.DEFAULT_BLOCK_SIZE,
        ge=2,
        le=256,
        description="Tables reserved per VS (block_size - 1 addresses max).",
    )
    cgroup_root: Annotated[str, Field(pattern=CGROUP_PATH_RE.pattern)] | None = Field(
        default=None,
        description="pbr mode: confine each VS's programs in the cgroup <cgroup_root>/<VS> "
                    "under the cgroup-v2 mount (e.g. vsnet): their sockets get the VS mark and "
                    "may bind only VS addresses. Unset: no confinement.",
    )
    bpf_pin_root: Annotated[str, Field(pattern=PIN_PATH_RE.pattern)] = Field(
        default="/sys/fs/bpf/vsnet",
        description="Where the confinement programs are pinned: <bpf_pin_root>/<VS>/<hook>.",
    )
    max_file_bytes: StrictInt = Field(
        default=DEFAULT_MAX_FILE_BYTES, ge=4096, le=1 << 30,
        description="Largest config file, and YAML document once its aliases are expanded, "
                    "that vsnet reads; a bigger one is refused.",
    )

    @field_validator("priority_base")
    @classmethod
    def _tree_fits(cls, value: int) -> int:
        if value > ruletree.MAX_PRIORITY_BASE:
            raise ValueError(
                f"the rule tree from {value} would end at {ruletree.last_priority(value)}, "
                f"after the main table's rule ({numbering.MAIN_RULE_PRIORITY}); at most "
                f"{ruletree.MAX_PRIORITY_BASE}")
        return value


class Config(_Strict):
    """The whole of ``servers.yaml``."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        title="vsnet servers.yaml",
        json_schema_extra={"$schema": "https://json-schema.org/draft/2020-12/schema"},
    )

    version: Literal[1]
    settings: Settings = Field(default_factory=Settings)
    servers: dict[str, ServerConfig] = Field(
        default_factory=dict,
        description="Virtual servers by name.",
        json_schema_extra={"propertyNames": {"pattern": SERVER_NAME_RE.pattern}},
    )

    @field_validator("servers", mode="before")
    @classmethod
    def _no_servers(cls, value: Any) -> Any:
        return {} if value is None else value  # `servers:` with nothing under it


# --------------------------------------------------------------------------- errors


FieldPath = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class ConfigIssue:
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


@dataclass(frozen=True, slots=True)
class _Position:
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
    smap.values[path] = _mark(node)
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node)
            if not isinstance(key, str | int):
                issues.append(smap.issue(path, f"mapping key {key!r} must be a string"))
                continue
            child = (*path, key)
            if key in result:
                smap.keys[child] = _mark(key_node)
                issues.append(smap.issue(child, "duplicate key", key=True))
                continue
            smap.keys[child] = _mark(key_node)
            result[key] = _construct(value_node, child, loader, smap, issues)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [
            _construct(item, (*path, index), loader, smap, issues)
            for index, item in enumerate(node.value)
        ]
    return loader.construct_object(node)


def _parse_yaml(text: str, file: str, limit: int = 0) -> tuple[Any, SourceMap]:
    smap = SourceMap(file)
    loader_cls = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: ~10x faster
    loader = loader_cls(text)
    try:
        try:
            root = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
            raise ConfigError(
                [ConfigIssue(file, line, col, "", f"YAML syntax: {exc.problem or exc}")]
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


def _describe(error: Any) -> str:
    message = str(error["msg"])
    if error["type"] == "extra_forbidden":
        return "unknown key"
    value = error.get("input")
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return f"{value}: {message}"
    return message


def _structure_issues(exc: ValidationError, smap: SourceMap) -> Iterator[ConfigIssue]:
    for error in exc.errors():
        # pydantic adds its own steps (union branches, validator names) to ``loc``:
        # keep only the ones that exist in the document.
        path: FieldPath = tuple(p for p in error["loc"] if isinstance(p, str | int))
        if error["type"] == "missing" and path:
            # point at the mapping that lacks the key, not at a value that is not there
            yield smap.issue(path[:-1], f"required key {path[-1]!r} is missing", key=True)
            continue
        yield smap.issue(path, _describe(error), key=error["type"] == "extra_forbidden")


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
            if owner is not name:
                where = "this server" if owner == name else owner
                problems.append(((*base, "addresses", index, "address"),
                                 f"{ip} is already an address of {where}"))
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
    for index, entry in enumerate(server.addresses):
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




# --------------------------------------------------------------------------- intake


class _DuplicateKey(Exception):
    pass


_BaseLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when available


class _FastLoader(_BaseLoader):  # type: ignore[misc]
    """The plain loader, refusing duplicate keys (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> Any:
        keys = [key.value for key, _value in node.value]
        if len(keys) != len(set(keys)):
            raise _DuplicateKey
        return super().construct_mapping(node, deep)


# Deeper than any servers.yaml needs (servers > name > addresses > [i] > address), far
# below Python's recursion limit, which the constructors would otherwise reach.
MAX_DEPTH = 32


def _refusal(file: str, reason: str, line: int = 0, column: int = 0) -> ConfigError:
    return ConfigError([ConfigIssue(file, line, column, "", reason)])


def check_expansion(root: yaml.Node, limit: int, file: str) -> None:
    """Refuse a node graph whose expanded size (every alias counted as a copy of what it
    names: "billion laughs") exceeds ``limit`` bytes, or that nests deeper than
    :data:`MAX_DEPTH`. Linear in the number of distinct nodes: sizes are memoized."""
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


def _load_fast(text: str, file: str, limit: int) -> Any:
    """libyaml's load, with the expansion bound checked between composing and building."""
    loader = _FastLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if "*" in text:  # no alias without one: the document is the text, under the cap
            check_expansion(node, limit, file)
        return loader.construct_document(node)
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


@dataclass(slots=True)
class ParsedFile:
    """One file as read: the valid part of it, and what is wrong within it."""

    file: str
    text: str
    main: bool
    settings: Settings | None = None  # the main file's, when valid
    servers: dict[str, ServerConfig] = field(default_factory=dict)
    issues: list[ConfigIssue] = field(default_factory=list)
    smap: SourceMap | None = None  # built only when a problem needs positions
    problems: tuple[Settings, Problems] | None = None  # server_problems, per settings
    claims: tuple[Settings, dict[str, Claims]] | None = None

    def positions(self, limit: int) -> SourceMap:
        if self.smap is None:
            try:
                _data, self.smap = _parse_yaml(self.text, self.file, limit)
            except ConfigError:
                self.smap = SourceMap(self.file)
        return self.smap

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
    model: type[_Strict] = Config if main else ServersFile
    try:
        data = _load_fast(text, file, limit)
        if data is None and not main:
            return ParsedFile(file, text, main)  # an empty drop-in holds no servers
        valid: Any = model.model_validate(data)
        return ParsedFile(file, text, main, valid.settings if main else None,
                          dict(valid.servers))
    except ConfigError as exc:
        return ParsedFile(file, text, main, issues=exc.issues)
    except RecursionError:
        return ParsedFile(file, text, main, issues=[ConfigIssue(
            file, 1, 1, "", f"nested deeper than {MAX_DEPTH} levels")])
    except (yaml.YAMLError, ValidationError, _DuplicateKey):
        pass
    try:
        data, smap = _parse_yaml(text, file, limit)
    except ConfigError as exc:
        return ParsedFile(file, text, main, issues=exc.issues)
    parsed = ParsedFile(file, text, main, smap=smap)
    try:
        valid = model.model_validate(data)
        parsed.settings = valid.settings if main else None
        parsed.servers = dict(valid.servers)
    except ValidationError as exc:
        parsed.issues.extend(_structure_issues(exc, smap))
        parsed.settings, parsed.servers = _valid_part(data, main)
    return parsed


def _valid_part(data: Any, main: bool) -> tuple[Settings | None, dict[str, ServerConfig]]:
    """The servers that are valid once their faulty optional keys are set aside, so one
    pass reports every kind of error (an unknown key must not hide a wrong gateway)."""
    if not isinstance(data, dict):
        return None, {}
    settings: Settings | None = None
    if main:
        try:
            settings = Settings.model_validate(data.get("settings") or {})
        except ValidationError:
            settings = Settings()
    servers = data.get("servers")
    valid: dict[str, ServerConfig] = {}
    for name, server in (servers.items() if isinstance(servers, dict) else ()):
        recovered = _recover_server(server)
        if recovered is not None:
            valid[str(name)] = recovered
    return settings, valid


_REQUIRED_SERVER_KEYS = {name for name, f in ServerConfig.model_fields.items()
                         if f.is_required()}


def _recover_server(data: Any) -> ServerConfig | None:
    """``data`` validated after removing unknown keys and invalid optional fields, or None
    when a required field itself is wrong (the structural error says so already)."""
    if not isinstance(data, dict):
        return None
    data = copy.deepcopy(data)
    for _attempt in range(8):
        try:
            return ServerConfig.model_validate(data)
        except ValidationError as exc:
            removed = False
            for error in exc.errors():
                path = [p for p in error["loc"] if isinstance(p, str | int)]
                if error["type"] == "extra_forbidden" and path:
                    removed |= _remove(data, path)
                elif path and path[0] not in _REQUIRED_SERVER_KEYS:
                    removed |= _remove(data, path[:1])
            if not removed:
                return None
    return None


def _remove(data: Any, path: Sequence[str | int]) -> bool:
    node = data
    for part in path[:-1]:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return False
    if isinstance(node, dict) and path[-1] in node:
        del node[path[-1]]
        return True
    return False


class ServersFile(_Strict):
    """A drop-in file of ``servers.d/``: virtual servers only."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        title="vsnet servers.d/*.yaml",
        json_schema_extra={"$schema": "https://json-schema.org/draft/2020-12/schema"},
    )

    servers: dict[str, ServerConfig] = Field(
        default_factory=dict,
        description="Virtual servers by name (each name in one file only).",
        json_schema_extra={"propertyNames": {"pattern": SERVER_NAME_RE.pattern}},
    )

    @field_validator("servers", mode="before")
    @classmethod
    def _no_servers(cls, value: Any) -> Any:
        return {} if value is None else value


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


def assemble(main: ParsedFile, drop_ins: Sequence[ParsedFile]) -> Config:
    """One config from the main file and the drop-ins (in name order); every issue of
    every file, and those between files, raised together."""
    limit = DEFAULT_MAX_FILE_BYTES
    settings = main.settings or Settings()
    issues = [*main.issues]
    servers: dict[str, ServerConfig] = {}
    origin: dict[str, ParsedFile] = {}
    for parsed in (main, *drop_ins):
        if parsed is not main:
            issues.extend(parsed.issues)
        for name, server in parsed.servers.items():
            first = origin.get(name)
            if first is not None:
                issues.append(parsed.positions(limit).issue(
                    ("servers", name), f"{name} is already defined in {first.file}", key=True))
                continue
            servers[name] = server
            origin[name] = parsed
    config = Config.model_construct(version=1, settings=settings, servers=servers)
    claims: dict[str, Claims] = {}
    for parsed in (main, *drop_ins):
        claims.update(parsed.server_claims(settings))
    problems = _uniqueness_problems(config, claims) + _shared_namespace_problems(config)
    for parsed in (main, *drop_ins):
        problems.extend(p for p in parsed.server_problems(settings) if origin[str(p[0][1])]
                        is parsed)
    for path, message in problems:
        parsed = origin[str(path[1])]
        issues.append(parsed.positions(limit).issue(path, message, key=len(path) == 2))
    if issues:
        order = {parsed.file: index for index, parsed in enumerate((main, *drop_ins))}
        raise ConfigError(sorted(issues, key=lambda i: (order.get(i.file, 0), i.line, i.column)))
    return config


def parse_config(text: str, file: str = "servers.yaml") -> Config:
    """Validate the text of one main file; raise :class:`ConfigError` with every issue.

    A valid file takes the fast path (libyaml, pydantic, semantic checks: ~0.1 ms per
    VS); only a file with problems is read again, recording where every value stands,
    to say where each problem is.
    """
    return assemble(parse_file(text, file, main=True), ())


def load_config(path: Path | str = DEFAULT_CONFIG_PATH) -> Config:
    """Read and validate a config file and its drop-in directory; raise
    :class:`ConfigError` naming file and line."""
    return ConfigLoader(path).load()


def json_schema(*, drop_in: bool = False) -> dict[str, Any]:
    """The JSON Schema of ``servers.yaml`` (or of a ``servers.d/*.yaml`` file)."""
    if drop_in:
        schema = ServersFile.model_json_schema()
        schema["$id"] = "https://vsnet.invalid/schemas/servers.d.schema.json"
        return schema
    schema = Config.model_json_schema()
    schema["$id"] = "https://vsnet.invalid/schemas/servers.schema.json"
    return schema


@dataclass(slots=True)
class _Index:
    """What a valid config's VS hold, by owner: the cross-VS checks of one more VS, in
    constant time (:meth:`ConfigLoader._edit_in_place`)."""

    config: Config
    origin: dict[str, ParsedFile]
    ids: dict[int, str]
    slots: dict[tuple[str, int, int], str]
    marks: dict[int, str]
    moved_uplinks: set[str]  # uplinks handed whole to a VS (link: move)

    @classmethod
    def of(cls, config: Config, files: Sequence[ParsedFile]) -> _Index:
        origin: dict[str, ParsedFile] = {}
        for parsed in files:
            for name in parsed.servers:
                origin.setdefault(name, parsed)
        index = cls(config, origin, {}, {}, {}, set())
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
        index.config = Config.model_construct(version=1, settings=settings, servers=servers)
        return index.config

    def _read(self, path: Path, *, main: bool) -> ParsedFile:
        try:
            text = read_config_text(path, self.limit)
        except ConfigError as exc:
            return ParsedFile(str(path), "", main, issues=exc.issues)
        return parse_file(text, str(path), main=main, limit=self.limit)
