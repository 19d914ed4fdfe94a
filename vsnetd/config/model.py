"""The config as the rest of vsnet reads it: plain frozen classes, the limits of its
names, and the issues a file can have (each at its file, line, column and field).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

from vsnetd import numbering

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
# Deeper than any servers.yaml needs (servers > name > addresses > [i] > address), far
# below Python's recursion limit, which the constructors would otherwise reach.
MAX_DEPTH = 32


#
# Plain frozen classes (NamedTuples: vsnetd/state.py says why), what every other module
# reads; their list and dict defaults are shared, never changed in place. Their structure
# (types, ranges, unknown keys) is checked when a file is read, by hand for the common
# valid file (:func:`_fast_servers`), else by the pydantic models of
# :mod:`vsnetd.config.models`, which also give the JSON Schema; field names, defaults and
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
        from vsnetd.config.fast_check import fast_file  # which imports this module

        checked = fast_file(data, main=True)
        if checked is None:
            from vsnetd.config import models

            checked = models.validate(data, main=True)
        settings, servers = checked
        assert settings is not None
        return cls(version=1, settings=settings, servers=servers)


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


def refusal(file: str, reason: str, line: int = 0, column: int = 0) -> ConfigError:
    """A file refused as a whole (line 0: about no line in particular)."""
    return ConfigError([ConfigIssue(file, line, column, "", reason)])
