r"""The structure of a config (types, ranges, unknown keys) checked by hand, for the common
case, as the pydantic models of :mod:`.models` check it: a file these checks
accept gives exactly the objects the models give (tests/test_config_fast.py checks it
on generated documents); anything they are not sure of (a wrong type, an unknown key,
a value pydantic would coerce, such as "yes" for a bool) returns None and the models
decide, with their messages. Strings are checked as pydantic's Rust regexes check them:
fully (``$`` in Python's re also matches before a final newline) and ASCII only, where
Python's ``\s`` covers Rust's.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from vsnetd import numbering
from vsnetd.config.model import (
    CGROUP_PATH_RE,
    DEFAULT_MAX_FILE_BYTES,
    DNS_OPTION_PATTERN,
    DNS_SEARCH_PATTERN,
    IFNAME_RE,
    NETNS_NAME_RE,
    PIN_PATH_RE,
    PRINCIPAL_PATTERN,
    SYSCTL_KEY_RE,
    AddressConfig,
    Config,
    DnsConfig,
    IpAddress,
    IpInterface,
    IpNetwork,
    RouteConfig,
    ServerConfig,
    Settings,
    SocketsConfig,
)


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


def fast_file(data: Any, *, main: bool
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
