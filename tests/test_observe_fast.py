"""observe's fast path (one route and one rule dump per namespace for both families, link
dumps without counters, namespaces scanned with plain paths, sockets opened in one pass,
resolver files looked up only where /etc/netns has a directory) sees exactly what the
previous, straightforward observe saw: on a kernel populated by vsnet, with foreign
objects of every kind beside vsnet's, in the root namespace and inside VS namespaces; and
a look that reuses what the look before it decoded (a converge's verification) sees what
a fresh look sees, changes between the two included."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.examples import TWO_NETNS_VS
from tests.sandbox import ip, ip_json, sh
from vsnetd import netlink
from vsnetd.compile import compile_config
from vsnetd.config import parse_config
from vsnetd.kernel import ROOT, Kernel
from vsnetd.kinds import Namespace, ResolverFile, Sysctl, link, route, rule, sysctl
from vsnetd.kinds import address as address_kind
from vsnetd.kinds import confinement as confinement_kind
from vsnetd.kinds import namespace as namespace_kind
from vsnetd.kinds import resolver as resolver_kind
from vsnetd.kinds.kind import Looking
from vsnetd.netlink import RtnlSocket
from vsnetd.observe import observe
from vsnetd.state import ObservedState, Scope

pytestmark = pytest.mark.usefixtures("netns")

# the two netns VS, the second with two addresses and their gateways, and a pbr VS
CONFIG = TWO_NETNS_VS.replace(
    "addresses: [{address: 10.1.1.5/24}]",
    "addresses: [{address: 10.1.1.5/24, gateway: 10.1.1.1}, {address: 10.2.2.5/24, gateway: 10.2.2.1}]",
) + """\
  c:
    id: 3
    mode: pbr
    uplink: eth0
    addresses: [{address: 10.7.0.5/24}, {address: 2001:db8:7::5/64}]
    gateway: [10.7.0.1, 2001:db8:7::1]
"""


# ------------------------------------------------------------------ the previous observe
# As it was before the fast path (git history of vsnetd/observe.py): every namespace
# looked up through pathlib, its socket opened on its own, links dumped with counters,
# routes and rules dumped once per family, every namespace's resolver file opened.


def previous_namespaces() -> tuple[list[str], list[str]]:
    owned: list[str] = []
    foreign: list[str] = []
    for name in sorted(os.listdir(namespace_kind.NETNS_DIR)):
        try:
            inode: int | None = (namespace_kind.NETNS_DIR / name).stat().st_ino
        except OSError:
            inode = None
        try:
            recorded: int | None = int((namespace_kind.RECORD_DIR / name).read_text())
        except (OSError, ValueError):
            recorded = None
        (owned if inode is not None and inode == recorded else foreign).append(name)
    return owned, foreign


def previous_observe_in(sock: RtnlSocket, netns: str, scope: Scope, state: ObservedState,
                        root_names: dict[int, str]) -> dict[int, str]:
    devices = sock.dump(link.DUMP, link.decode)
    names = {found.ifindex: found.name for found in devices}
    state.links[netns] = {found.name: found.ifindex for found in devices}
    parents = root_names if netns else names
    for found in devices:
        owned_link = link.as_owned(found, netns, parents)
        if owned_link is not None:
            state.add(owned_link)
        else:
            state.add_foreign(link.Link(netns, found.name, found.type))
    for found_address, owner in address_kind.observe(sock, names, netns):
        if owner == scope.protocol:
            state.add(found_address)
        else:
            state.add_foreign(found_address)
    for family in (socket.AF_INET, socket.AF_INET6):
        for found_route, owned in route.observe(sock, family, names, scope.protocol,
                                                scope.tables, netns):
            if owned:
                state.add(found_route)
            else:
                state.add_foreign(found_route)
        for found_rule, owned in rule.observe(sock, family, scope.protocol, scope.priorities,
                                              netns):
            if owned:
                state.add(found_rule)
            else:
                state.add_foreign(found_rule)
    return names


def previous_observe(scope: Scope) -> ObservedState:
    state = ObservedState()
    with Kernel() as kernel:
        owned_namespaces, foreign_namespaces = previous_namespaces()
        for name in foreign_namespaces:
            state.add_foreign(Namespace(name))
        root_names = previous_observe_in(kernel.root, ROOT, scope, state, {})
        for name in owned_namespaces:
            state.add(Namespace(name))
            previous_observe_in(kernel.socket(name), name, scope, state, root_names)
            keys = scope.sysctls.get(name)
            if keys:
                for key, value in sysctl.read(kernel.netns_fd(name), list(keys)).items():
                    state.add(Sysctl(name, key, value))
            found, foreign = resolver_kind.observe(name)
            if found is not None:
                state.add(found)
            if foreign:
                state.add_foreign(ResolverFile(name, ""))
        # the resolver files of namespaces that do not exist: a VS created there later
        # must not take a foreign one for free room
        gone = set(os.listdir(resolver_kind.ETC_NETNS)) if resolver_kind.ETC_NETNS.is_dir() else set()
        for name in sorted(gone - set(owned_namespaces)):
            found, foreign = resolver_kind.observe(name)
            if found is not None:
                state.add(found)
            if foreign:
                state.add_foreign(ResolverFile(name, ""))
        confinement_kind.KIND.observe_machine(Looking(kernel, scope, state))
    return state


# ------------------------------------------------------------------ the test


def comparable(state: ObservedState) -> dict[str, Any]:
    return {
        "links": state.links,
        "owned": state.owned,
        # lists whose order follows the dump order: compared as multisets
        "foreign": {kind: {slot: Counter(there) for slot, there in slots.items()}
                    for kind, slots in state.foreign.items()},
        "unavailable": state.unavailable,
    }


def test_fast_observe_equals_the_previous_one_with_foreign_objects(tmp_path: Path) -> None:
    for name in ("eth0", "eth1"):
        ip("link", "add", name, "type", "veth", "peer", "name", f"{name}p")
        ip("link", "set", name, "up")
        ip("link", "set", f"{name}p", "up")
    path = tmp_path / "servers.yaml"
    path.write_text(CONFIG)
    try:
        applied = subprocess.run([sys.executable, "-m", "vsnetd.cli", "apply", "-c", str(path)],
                                 capture_output=True, text=True, timeout=60)
        assert applied.returncode == 0, applied.stdout + applied.stderr
        scope = compile_config(parse_config(CONFIG)).scope
        table = scope.tables.start + 7
        priority = scope.priorities.start + 3

        # foreign objects: a namespace of someone else's, and in vsnet's own namespaces and the
        # root namespace devices, addresses, routes in vsnet's tables, rules in its priorities
        ip("netns", "add", "other")
        ip("link", "add", "o0", "type", "veth", "peer", "name", "o1", netns="other")
        for netns in ("vs-a", None):
            ip("link", "add", "f0", "type", "veth", "peer", "name", "f1", netns=netns)
            ip("link", "set", "f0", "up", netns=netns)
            ip("address", "add", "10.9.9.9/24", "dev", "f0", netns=netns)
            ip("address", "add", "2001:db8:9::9/64", "dev", "f0", "nodad", netns=netns)
            ip("route", "add", "192.0.2.0/24", "dev", "f0", "table", str(table), netns=netns)
            ip("-6", "route", "add", "2001:db8:99::/64", "dev", "f0", "table", str(table),
               netns=netns)
            ip("rule", "add", "pref", str(priority), "from", "10.9.9.9", "lookup", str(table),
               netns=netns)
            ip("-6", "rule", "add", "pref", str(priority), "from", "2001:db8:9::9",
               "lookup", str(table), netns=netns)
        Path("/etc/netns/vs-b").mkdir(parents=True, exist_ok=True)
        Path("/etc/netns/vs-b/resolv.conf").write_text("nameserver 192.0.2.53\n")
        sh("sysctl", "-qw", "net.ipv4.conf.all.rp_filter=2", netns="vs-a")  # drifted

        with Kernel() as kernel:
            fast = observe(kernel, scope)
            again = observe(kernel, scope)  # sockets and namespace fds reused
            memo = netlink.DumpMemo()  # a converge's looks: the second decodes what changed
            remembered = [observe(kernel, scope, memo) for _look in range(2)]
            previous = previous_observe(scope)
            # changed between two looks with the memo: seen as a fresh look sees it
            ip("rule", "del", "pref", str(priority), "from", "10.9.9.9", "lookup", str(table))
            ip("route", "add", "198.51.100.0/24", "dev", "f0", "table", str(table))
            changed = observe(kernel, scope, memo)
            fresh = observe(kernel, scope)

        assert comparable(fast) == comparable(previous)
        assert comparable(again) == comparable(previous)
        assert [comparable(look) for look in remembered] == [comparable(previous)] * 2
        assert comparable(changed) == comparable(fresh) != comparable(previous)
        assert (socket.AF_INET, "198.51.100.0/24") in {
            (r.family, r.destination) for r in changed.foreign_of("route") if not r.netns}
        assert not [r for r in changed.foreign_of("rule")
                    if not r.netns and r.family == socket.AF_INET and r.priority == priority]
        # the foreign objects were seen at all (the comparison is not of two empty views), as
        # the kernel shows them
        kernel_rules = [r for r in ip_json("rule", "show", netns="vs-a")
                        if r.get("priority") == priority]
        assert kernel_rules
        for netns in ("vs-a", ""):
            assert (netns, "f0") in fast.foreign["link"]
            assert (netns, "10.9.9.9") in fast.foreign["address"]
            assert {(r.family, r.destination) for r in fast.foreign_of("route")
                    if r.netns == netns} >= {
                (socket.AF_INET, "192.0.2.0/24"), (socket.AF_INET6, "2001:db8:99::/64")}
            assert {r.family for r in fast.foreign_of("rule")
                    if r.netns == netns and r.priority == priority} == {socket.AF_INET,
                                                                        socket.AF_INET6}
        assert ("other",) in fast.foreign["namespace"]
        assert set(fast.foreign["resolver"]) == {("vs-b",)}
        assert ("sysctl", ("vs-a", "net.ipv4.conf.all.rp_filter")) in fast.owned
        assert fast.owned[("sysctl", ("vs-a", "net.ipv4.conf.all.rp_filter"))].value == "2"
        # only IPv4 and IPv6 from the one-dump-for-both-families requests (the kernel adds its
        # multicast routing families to them)
        assert {r.family for r in fast.foreign_of("rule")} <= {socket.AF_INET, socket.AF_INET6}
        kinds = Counter(obj.kind for obj in fast.owned.values())
        assert kinds["namespace"] == 2 and kinds["rule"] >= 2 and kinds["route"] >= 6
    finally:  # the sandbox's /etc/netns and /run/vsnet outlive this test's namespace
        subprocess.run([sys.executable, "-m", "vsnetd.cli", "teardown", "-c", str(path)],
                       capture_output=True, timeout=60)
        resolver_file = Path("/etc/netns/vs-b/resolv.conf")
        resolver_file.unlink(missing_ok=True)
        if resolver_file.parent.exists():
            resolver_file.parent.rmdir()
