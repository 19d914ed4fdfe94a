"""The checks that need more than one field: gateways inside a subnet, ids, addresses
and marks unique, VS sharing a namespace agreeing on it. Pure: (field path, message) pairs.
"""

from __future__ import annotations

from vsnetd import numbering
from vsnetd.config.model import (
    SERVER_NAME_RE,
    Config,
    FieldPath,
    IpAddress,
    IpInterface,
    ServerConfig,
    Settings,
)

Problems = list[tuple[FieldPath, str]]


def check_semantics(config: Config) -> Problems:
    """Checks that need more than one field. Pure; returns (path, message) pairs.

    A path ending in a server name points at that name (the mapping key).
    """
    problems = shared_namespace_problems(config) + uniqueness_problems(config)
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


def uniqueness_problems(config: Config, claims: dict[str, Claims] | None = None) -> Problems:
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


def shared_namespace_problems(config: Config) -> list[tuple[FieldPath, str]]:
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
