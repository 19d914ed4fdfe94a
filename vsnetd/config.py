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

import ipaddress
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
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
)

from vsnetd import numbering

DEFAULT_CONFIG_PATH = Path("/etc/vsnet/servers.yaml")

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

# A VS name becomes part of namespace and interface names ("vs-<name>", 15 bytes max
# for an interface), so it is kept short and shell/filename-safe.
SERVER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,11}$")
# Linux interface names: 1..15 bytes, no '/', ':' or whitespace.
IFNAME_RE = re.compile(r"^[^/:\s]{1,15}$")
NETNS_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SYSCTL_KEY_RE = re.compile(r"^net\.[A-Za-z0-9_.-]+$")


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
    """Numbering ranges. Changing them renumbers every VS (an explicit operator action)."""

    table_base: StrictInt = Field(default=10000, ge=1, le=0xFFFFFFFF)
    priority_base: StrictInt = Field(default=10000, ge=1, le=0xFFFFFFFF)
    mark_base: StrictInt = Field(default=0x5600000, ge=0, le=0xFFFFFFFF)
    block_size: StrictInt = Field(
        default=numbering.DEFAULT_BLOCK_SIZE,
        ge=2,
        le=256,
        description="Tables and rule priorities reserved per VS (block_size - 1 addresses max).",
    )


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


def _parse_yaml(text: str, file: str) -> tuple[Any, SourceMap]:
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


def _uniqueness_problems(config: Config) -> Problems:
    """What one VS may not share with another: ids, addresses (per namespace), marks."""
    problems: Problems = []
    ids: dict[int, str] = {}
    address_owner: dict[tuple[str, int, int], str] = {}  # per namespace: plans may overlap
    marks: dict[int, str] = {}
    settings = config.settings
    for name, server in config.servers.items():
        base: FieldPath = ("servers", name)
        duplicate_id = server.id in ids
        if duplicate_id:
            problems.append(((*base, "id"), f"id {server.id} is already used by {ids[server.id]}"))
        else:
            ids[server.id] = name
        netns = server.namespace_name(name)
        for index, entry in enumerate(server.addresses):
            ip = entry.address.ip
            slot = (netns, ip.version, int(ip))  # ints hash fast; ipaddress objects do not
            if slot in address_owner:
                owner = address_owner[slot]
                where = "this server" if owner == name else owner
                problems.append(((*base, "addresses", index, "address"),
                                 f"{ip} is already an address of {where}"))
            else:
                address_owner[slot] = name
        mark = server.mark if server.mark is not None else settings.mark_base + server.id
        if mark in marks and not (duplicate_id and server.mark is None):
            mark_path: FieldPath = (*base, "mark") if server.mark is not None else (*base, "id")
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


def parse_config(text: str, file: str = "servers.yaml") -> Config:
    """Validate config text; raise :class:`ConfigError` with every issue found.

    A valid file takes the fast path (libyaml, pydantic, semantic checks: ~0.1 ms per
    VS); only a file with problems is read again, recording where every value stands,
    to say where each problem is.
    """
    try:
        config = Config.model_validate(yaml.load(text, Loader=_FastLoader))
        if not check_semantics(config):
            return config
    except (yaml.YAMLError, ValidationError, _DuplicateKey):
        pass
    return _parse_with_positions(text, file)


def _parse_with_positions(text: str, file: str) -> Config:
    data, smap = _parse_yaml(text, file)
    issues: list[ConfigIssue] = []
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        issues.extend(_structure_issues(exc, smap))
        config = _valid_part(data)
    issues.extend(
        smap.issue(path, message, key=len(path) == 2)  # ("servers", name): the name itself
        for path, message in check_semantics(config)
    )
    if issues:
        raise ConfigError(sorted(issues, key=lambda i: (i.line, i.column)))
    return config


def _valid_part(data: Any) -> Config:
    """The servers that are valid on their own, so one pass reports every kind of error."""
    if not isinstance(data, dict):
        return Config(version=1)
    try:
        settings = Settings.model_validate(data.get("settings") or {})
    except ValidationError:
        settings = Settings()
    servers = data.get("servers")
    valid: dict[str, ServerConfig] = {}
    for name, server in (servers.items() if isinstance(servers, dict) else ()):
        try:
            valid[str(name)] = ServerConfig.model_validate(server)
        except ValidationError:
            continue
    return Config.model_construct(version=1, settings=settings, servers=valid)


def load_config(path: Path | str = DEFAULT_CONFIG_PATH) -> Config:
    """Read and validate a config file; raise :class:`ConfigError` naming file and line."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigIssue(file, 0, 0, "", f"cannot read: {exc.strerror}")]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([ConfigIssue(file, 1, 1, "", f"not UTF-8 text: {exc.reason}")]) from None
    return parse_config(text, file)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of ``servers.yaml``, for editors and ``schemas/``."""
    schema = Config.model_json_schema()
    schema["$id"] = "https://vsnet.invalid/schemas/servers.schema.json"
    return schema


# --------------------------------------------------------------------------- incremental


_SERVERS_LINE = re.compile(r"^servers:[ \t]*(?:#[^\n]*)?$", re.MULTILINE)
_TOP_LEVEL = re.compile(r"^[^\s#]", re.MULTILINE)
_CONTENT = re.compile(r"^( *)[^\s#]", re.MULTILINE)
_TAB_INDENT = re.compile(r"^ *\t", re.MULTILINE)


def split_servers(text: str) -> tuple[str, list[tuple[str, str]]] | None:
    """A block-style file cut into (everything but the servers' entries, [(name, entry
    text)]), or None when its layout is not that simple (then it is read whole). Done with
    a few regular expressions over the whole text: a file of 1,000 VS has 12,000 lines."""
    found = _SERVERS_LINE.search(text)
    if found is None or _SERVERS_LINE.search(text, found.end()) is not None:
        return None
    block_start = found.end() + 1
    following = _TOP_LEVEL.search(text, block_start)
    end = following.start() if following is not None else len(text)
    block = text[block_start:end]
    if _TAB_INDENT.search(block):
        return None
    first = _CONTENT.search(block)
    if first is None:
        return text, []
    indent = len(first.group(1))
    if indent > 1 and re.search(rf"^ {{1,{indent - 1}}}[^\s#]", block, re.MULTILINE):
        return None  # a line less indented than the entries: not a simple layout
    entry = re.compile(rf"^ {{{indent}}}([A-Za-z0-9][A-Za-z0-9_-]*):(?=\s)|^ {{{indent}}}\S",
                       re.MULTILINE)
    starts = list(entry.finditer(block))
    if any(match.group(1) is None for match in starts):
        return None  # an entry whose key is not a plain name
    bounds = [match.start() for match in starts] + [len(block)]
    entries = [(match.group(1), block[bounds[i] : bounds[i + 1]])
               for i, match in enumerate(starts)]
    outer = text[:block_start] + block[: bounds[0]] + text[end:]
    return outer, entries


class ConfigLoader:
    """Loads one config file again and again, reading again only the VS entries that
    changed (the daemon: an edit of one VS among a thousand costs one VS).

    Whenever the file is not simple block-style YAML, its settings changed, or anything is
    wrong with it, the whole file is read as :func:`load_config` reads it, so the result,
    and every error with its line and column, is exactly that of a full load.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._outer: str | None = None
        self._entries: dict[str, tuple[str, ServerConfig]] = {}  # entry text -> (name, VS)
        self._config: Config | None = None

    def load(self) -> Config:
        file = str(self.path)
        try:
            text = self.path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError([ConfigIssue(file, 0, 0, "", f"cannot read: {exc.strerror}")]
                              ) from None
        except UnicodeDecodeError as exc:
            raise ConfigError([ConfigIssue(file, 1, 1, "", f"not UTF-8 text: {exc.reason}")]
                              ) from None
        split = split_servers(text)
        if split is not None and self._config is not None and split[0] == self._outer:
            config = self._incremental(split[1], self._config.settings)
            if config is not None:
                return config
        config = parse_config(text, file)
        self._remember(split, config)
        return config

    def _remember(self, split: tuple[str, list[tuple[str, str]]] | None, config: Config
                  ) -> None:
        self._config = config
        self._outer = split[0] if split is not None else None
        self._entries = {}
        if split is not None:
            for name, entry in split[1]:
                if name in config.servers:
                    self._entries[entry] = (name, config.servers[name])

    def _incremental(self, entries: list[tuple[str, str]], settings: Settings) -> Config | None:
        servers: dict[str, ServerConfig] = {}
        remembered: dict[str, tuple[str, ServerConfig]] = {}
        for name, entry in entries:
            if name in servers:
                return None  # a duplicate: the full read says where
            known = self._entries.get(entry)
            if known is not None and known[0] == name:
                server = known[1]
            else:
                try:
                    data = yaml.load(entry, Loader=_FastLoader)
                    if not isinstance(data, dict) or list(data) != [name]:
                        return None
                    server = ServerConfig.model_validate(data[name])
                except (yaml.YAMLError, ValidationError, _DuplicateKey):
                    return None
                if server_problems(name, server, settings):
                    return None
            servers[name] = server
            remembered[entry] = (name, server)
        config = Config.model_construct(version=1, settings=settings, servers=servers)
        if _uniqueness_problems(config) or _shared_namespace_problems(config):
            return None
        self._config, self._entries = config, remembered
        return config
