"""The structure of ``servers.yaml`` as pydantic models: the JSON Schema, and the full
validation that names every structural error (:mod:`vsnetd.config.files` uses it only for a file
its fast checks did not accept: importing pydantic and building these models costs more than
validating a thousand servers by hand).

The models produce :mod:`vsnetd.config.model`'s plain types (:func:`to_runtime`); the names
and fields of both agree (tests/test_config_fast.py checks it).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from typing import Annotated, Any, Literal

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
from vsnetd.config import model as runtime
from vsnetd.config.libyaml import SourceMap
from vsnetd.config.model import (
    CGROUP_PATH_RE,
    DEFAULT_MAX_FILE_BYTES,
    DNS_OPTION_PATTERN,
    DNS_SEARCH_PATTERN,
    IFNAME_RE,
    NETNS_NAME_RE,
    PIN_PATH_RE,
    PRINCIPAL_PATTERN,
    SERVER_NAME_RE,
    SYSCTL_KEY_RE,
    ConfigIssue,
    FieldPath,
)


def _as_list(value: Any) -> Any:
    """Accept one item where a list is expected (``gateway: 10.0.1.1``)."""
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _not_a_number(value: Any) -> Any:
    """Addresses and networks are text: pydantic's IP types would read ``1`` as 0.0.0.1
    (and ``true`` as 0.0.0.1 too), a typo turned into an address."""
    if isinstance(value, (bool, int, float)):
        raise ValueError(f"{value!r} is not an address: write it as text, e.g. 10.0.0.5")
    return value


Address = Annotated[IPvAnyAddress, BeforeValidator(_not_a_number)]
Interface = Annotated[IPvAnyInterface, BeforeValidator(_not_a_number)]
Network = Annotated[IPvAnyNetwork, BeforeValidator(_not_a_number)]


def _id_as_text(value: Any) -> Any:
    """A numeric uid or gid may be written as a YAML number (``allow_users: [4242]``):
    read as the digits the broker compares (vsnetd/broker/access.py)."""
    return str(value) if type(value) is int else value


# a user or group: a name, or a numeric id (digits, quoted or not)
Principal = Annotated[
    str, Field(pattern=PRINCIPAL_PATTERN), BeforeValidator(_id_as_text),
    WithJsonSchema({"anyOf": [{"type": "string", "pattern": PRINCIPAL_PATTERN},
                              {"type": "integer", "minimum": 0}]}),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AddressConfig(_Strict):
    """One address of a virtual server, with the gateway its replies leave through."""

    address: Interface = Field(description="Address with prefix length, e.g. 10.0.0.5/24.")
    gateway: Address | None = Field(
        default=None,
        description="Where replies from this address go (reflection); inside the address's subnet.",
    )


class RouteConfig(_Strict):
    """An extra route, placed in every table of the VS that can reach ``via``."""

    to: Network = Field(description="Destination network, e.g. 192.168.50.0/24.")
    via: Address = Field(description="Next hop; must lie inside one of the VS's subnets.")


class DnsConfig(_Strict):
    """Resolver settings of a netns VS."""

    servers: list[Address] = Field(min_length=1, max_length=3)
    search: list[Annotated[str, Field(pattern=DNS_SEARCH_PATTERN)]] = Field(
        default_factory=list
    )
    options: list[Annotated[str, Field(pattern=DNS_OPTION_PATTERN)]] = Field(
        default_factory=list
    )


class SocketsConfig(_Strict):
    """Who may fetch this VS's sockets from the broker (root always may)."""

    allow_users: list[Principal] = (
        Field(default_factory=list, description="User names (or numeric uids).")
    )
    allow_groups: list[Principal] = (
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
        list[Address],
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
                    "may bind, or send UDP from, only VS addresses. Unset: no confinement.",
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



# --------------------------------------------------------------------------- to vsnetd.config


_RUNTIME: dict[type[BaseModel], type[Any]] = {
    AddressConfig: runtime.AddressConfig,
    RouteConfig: runtime.RouteConfig,
    DnsConfig: runtime.DnsConfig,
    SocketsConfig: runtime.SocketsConfig,
    ServerConfig: runtime.ServerConfig,
    Settings: runtime.Settings,
    Config: runtime.Config,
}


def to_runtime(value: Any) -> Any:
    """A validated model (and what it holds) as :mod:`vsnetd.config.model`'s plain types."""
    if isinstance(value, BaseModel):
        fields = {name: to_runtime(getattr(value, name)) for name in type(value).model_fields}
        if isinstance(value, ServersFile):
            return fields
        return _RUNTIME[type(value)](**fields)
    if isinstance(value, list):
        return [to_runtime(item) for item in value]
    if isinstance(value, dict):
        return {key: to_runtime(item) for key, item in value.items()}
    return value


def validate(data: Any, main: bool) -> tuple[runtime.Settings | None,
                                             dict[str, runtime.ServerConfig]]:
    """The settings (of a main file) and servers of ``data``; raises ValidationError."""
    if main:
        config = Config.model_validate(data)
        return to_runtime(config.settings), to_runtime(config.servers)
    return None, to_runtime(ServersFile.model_validate(data).servers)


def json_schema(*, drop_in: bool = False) -> dict[str, Any]:
    if drop_in:
        schema = ServersFile.model_json_schema()
        schema["$id"] = "https://vsnet.invalid/schemas/servers.d.schema.json"
        return schema
    schema = Config.model_json_schema()
    schema["$id"] = "https://vsnet.invalid/schemas/servers.schema.json"
    return schema


# --------------------------------------------------------------------------- errors


def _describe(error: Any) -> str:
    message = str(error["msg"])
    if error["type"] == "extra_forbidden":
        return "unknown key"
    value = error.get("input")
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return f"{value}: {message}"
    return message


def structure_issues(exc: ValidationError, smap: SourceMap) -> Iterator[ConfigIssue]:
    for error in exc.errors():
        # pydantic adds its own steps (union branches, validator names) to ``loc``:
        # keep only the ones that exist in the document.
        path: FieldPath = tuple(p for p in error["loc"] if isinstance(p, str | int))
        if error["type"] == "missing" and path:
            # point at the mapping that lacks the key, not at a value that is not there
            yield smap.issue(path[:-1], f"required key {path[-1]!r} is missing", key=True)
            continue
        yield smap.issue(path, _describe(error), key=error["type"] == "extra_forbidden")


def valid_part(data: Any, main: bool) -> tuple[runtime.Settings | None,
                                               dict[str, runtime.ServerConfig]]:
    """The servers that are valid once their faulty optional keys are set aside, so one
    pass reports every kind of error (an unknown key must not hide a wrong gateway)."""
    if not isinstance(data, dict):
        return None, {}
    settings: runtime.Settings | None = None
    if main:
        try:
            settings = to_runtime(Settings.model_validate(data.get("settings") or {}))
        except ValidationError:
            settings = runtime.Settings()
    servers = data.get("servers")
    valid: dict[str, runtime.ServerConfig] = {}
    for name, server in (servers.items() if isinstance(servers, dict) else ()):
        recovered = _recover_server(server)
        if recovered is not None:
            valid[str(name)] = recovered
    return settings, valid


_REQUIRED_SERVER_KEYS = {name for name, f in ServerConfig.model_fields.items()
                         if f.is_required()}


def _recover_server(data: Any) -> runtime.ServerConfig | None:
    """``data`` validated after removing unknown keys and invalid optional fields, or None
    when a required field itself is wrong (the structural error says so already)."""
    if not isinstance(data, dict):
        return None
    data = copy.deepcopy(data)
    for _attempt in range(8):
        try:
            return to_runtime(ServerConfig.model_validate(data))  # type: ignore[no-any-return]
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

