"""pbr mode against the real kernel, each test in its own fresh network namespace."""

from __future__ import annotations

import json
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import IPRoute

from tests import lab
from tests.examples import ISSUE_EXAMPLE
from tests.sandbox import ip, ip_json
from vsnetd import netlink
from vsnetd.apply import apply_plan
from vsnetd.compile import compile_config
from vsnetd.config import parse_config
from vsnetd.kernel import Kernel
from vsnetd.observe import NotificationFeed, observe
from vsnetd.reconcile import Reconciler, plan_for
from vsnetd.state import SHARED, VSNET_PROTOCOL

pytestmark = pytest.mark.usefixtures("netns")

SO_MARK = 36
IP_FREEBIND = 15


def vsnetctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vsnetd.cli", *args],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "servers.yaml"
    path.write_text(ISSUE_EXAMPLE)
    return path


def apply_ok(path: Path) -> str:
    result = vsnetctl("apply", "-c", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def rules(family: str = "-4") -> list[dict[str, Any]]:
    return [r for r in ip_json(family, "rule", "show") if r["priority"] not in (0, 32766, 32767)]


def lookup_rules(family: str = "-4") -> list[dict[str, Any]]:
    """The rules that choose a table (the rule tree's goto/nop rules left out)."""
    return [r for r in rules(family) if "table" in r and "goto" not in r]


def table(number: int, family: str = "-4") -> list[dict[str, Any]]:
    return ip_json(family, "route", "show", "table", str(number))  # type: ignore[no-any-return]


def test_paper_table_1_in_the_kernel(uplink: str, config_file: Path) -> None:
    apply_ok(config_file)
    assert lookup_rules() == [  # at their places in the rule tree (docs/rule-tree.md)
        {"priority": 24884, "src": "10.0.0.5", "table": "10016", "protocol": "vsnet"},
        {"priority": 25012, "src": "10.0.1.5", "table": "10017", "protocol": "vsnet"},
        {"priority": 30548, "src": "all", "fwmark": "0x5600001", "table": "10031",
         "protocol": "vsnet"},
    ]
    link = {"dev": "eth0", "protocol": "vsnet", "flags": []}
    assert table(10016) == [
        {"dst": "default", "gateway": "10.0.0.1", **link, "prefsrc": "10.0.0.5"},
        {"dst": "10.0.0.0/24", **link, "scope": "link", "prefsrc": "10.0.0.5"},
        {"dst": "192.168.50.0/24", "gateway": "10.0.0.1", **link, "prefsrc": "10.0.0.5"},
    ]
    assert table(10017) == [
        {"dst": "default", "gateway": "10.0.1.1", **link, "prefsrc": "10.0.1.5"},
        {"dst": "10.0.1.0/24", **link, "scope": "link", "prefsrc": "10.0.1.5"},
    ]
    assert table(10031) == [  # the default's source: on the VS gateway's subnet (README)
        {"dst": "default", "gateway": "10.0.1.1", **link, "prefsrc": "10.0.1.5"},
        {"dst": "10.0.0.0/24", **link, "scope": "link", "prefsrc": "10.0.0.5"},
        {"dst": "10.0.1.0/24", **link, "scope": "link", "prefsrc": "10.0.0.5"},
        {"dst": "192.168.50.0/24", "gateway": "10.0.0.1", **link, "prefsrc": "10.0.0.5"},
    ]
    addresses = {(a["local"], a["prefixlen"]) for a in ip_json("addr", "show", "dev", "eth0")[0]
                 ["addr_info"] if a["scope"] == "global"}
    assert addresses == {("10.0.0.5", 24), ("10.0.1.5", 24), ("2001:db8:5::5", 64)}


def test_ipv6_gets_the_same_structure(uplink: str, config_file: Path) -> None:
    apply_ok(config_file)
    assert lookup_rules("-6") == [
        {"priority": 23348, "src": "2001:db8:5::5", "table": "10018", "protocol": "vsnet"},
        {"priority": 27988, "src": "all", "fwmark": "0x5600001", "table": "10031",
         "protocol": "vsnet"},
    ]
    v6 = {"dev": "eth0", "protocol": "vsnet", "prefsrc": "2001:db8:5::5", "metric": 1024,
          "flags": [], "pref": "medium"}
    assert table(10018, "-6") == [
        {"dst": "2001:db8:5::/64", **v6},
        {"dst": "default", "gateway": "2001:db8:5::1", **v6},
    ]
    # no IPv6 VS gateway in the issue's example: marked IPv6 traffic must not leak to main
    assert table(10031, "-6") == [
        {"dst": "2001:db8:5::/64", **v6},
        {"type": "unreachable", "dst": "default", "dev": "lo", "protocol": "vsnet",
         "metric": 1024, "flags": [], "pref": "medium"},
    ]


def test_plan_status_and_exit_codes(uplink: str, config_file: Path) -> None:
    pending = vsnetctl("plan", "-c", str(config_file), "--json")
    assert pending.returncode == 2
    document = json.loads(pending.stdout)
    assert document["in_sync"] is False
    assert {c["action"] for c in document["changes"]} == {"add"}
    by_owner = [c["server"] for c in document["changes"]]
    # nas1's 21 objects; the rule tree's 49 IPv4 rules (the paths of 2 addresses and a
    # mark, the final nop) and 87 IPv6 ones (an address's path is 3 times as long)
    assert (by_owner.count("nas1"), by_owner.count(SHARED)) == (21, 49 + 87)
    assert vsnetctl("status", "-c", str(config_file)).returncode == 2

    apply_ok(config_file)
    assert vsnetctl("plan", "-c", str(config_file)).returncode == 0
    status = vsnetctl("status", "--json", "-c", str(config_file))
    assert status.returncode == 0
    nas1 = json.loads(status.stdout)["servers"]["nas1"]
    assert nas1 == {
        "id": 1, "mode": "pbr", "uplink": "eth0", "netns": "", "device": "eth0",
        "state": "in-sync", "reasons": [],
        "addresses": ["10.0.0.5/24", "10.0.1.5/24", "2001:db8:5::5/64"],
        "mark": 0x5600001, "mark_table": 10031, "pending_changes": 0,
        "tables": [10016, 10017, 10018, 10031],
        "priorities": [23348, 24884, 25012, 27988, 30548],
        "placement": "local", "active": True,
    }


def test_observe_agrees_with_pyroute2(uplink: str, config_file: Path) -> None:
    """Cross-check vsnet's struct decoder against pyroute2's on the same kernel state."""
    apply_ok(config_file)
    config = parse_config(config_file.read_text())
    with Kernel() as sock:
        observed = observe(sock, compile_config(config).scope)
    ours = {(o.family, o.table, o.destination, o.gateway, o.source)
            for o in observed.owned.values() if o.kind == "route"}
    theirs = set()
    with IPRoute() as ipr:
        for family in (socket.AF_INET, socket.AF_INET6):
            for msg in ipr.route("dump", family=family):
                if msg["proto"] != VSNET_PROTOCOL:
                    continue
                dst = msg.get_attr("RTA_DST") or ("::" if family == socket.AF_INET6 else "0.0.0.0")
                theirs.add((family, msg.get_attr("RTA_TABLE"), f"{dst}/{msg['dst_len']}",
                            msg.get_attr("RTA_GATEWAY"), msg.get_attr("RTA_PREFSRC")))
    assert ours == theirs
    assert len(ours) == 13


def snapshot_foreign() -> dict[str, Any]:
    """Everything in the namespace that is not vsnet's, as ``ip -j`` prints it.

    Left out: the kernel's own routes (``proto kernel``: local, broadcast and prefix routes
    that follow addresses) and the primary/secondary flag, which moves to a foreign
    address when vsnet removes the primary of a subnet (promote_secondaries).
    """
    ours = {"10.0.0.5", "10.0.1.5", "10.0.1.6", "2001:db8:5::5"}
    addresses = [
        {**link, "addr_info": sorted(
            ({k: v for k, v in a.items() if k != "secondary"}
             for a in link["addr_info"] if a["local"] not in ours),
            key=lambda a: str(a["local"]))}
        for link in ip_json("addr", "show")
    ]
    routes = [r for family in ("-4", "-6") for r in ip_json(family, "route", "show", "table", "all")
              if r.get("protocol") not in ("vsnet", "kernel")]
    foreign_rules = [r for family in ("-4", "-6") for r in ip_json(family, "rule", "show")
                     if r.get("protocol") != "vsnet"]
    return {"addresses": addresses, "routes": routes, "rules": foreign_rules}


def test_foreign_objects_are_unchanged_by_apply_edit_and_teardown(
    uplink: str, config_file: Path
) -> None:
    # foreign objects, some of them inside vsnet's ranges, all on vsnet's uplink
    ip("addr", "add", "10.0.0.2/24", "dev", "eth0")  # primary of 10.0.0.0/24
    ip("addr", "add", "192.0.2.1/24", "dev", "peer0")
    ip("route", "add", "default", "via", "10.0.0.254")
    ip("route", "add", "198.51.100.0/24", "via", "10.0.0.254", "table", "500")
    ip("route", "add", "203.0.113.0/24", "via", "10.0.0.254", "table", "10025")
    ip("rule", "add", "priority", "10020", "from", "10.0.0.77", "lookup", "500")
    ip("-6", "rule", "add", "priority", "10019", "fwmark", "7", "lookup", "500")
    ip("rule", "add", "priority", "100", "fwmark", "0x5600001", "lookup", "main")
    before = snapshot_foreign()

    apply_ok(config_file)
    assert snapshot_foreign() == before
    # vsnet's 10.0.1.5 becomes primary of its subnet; a foreign secondary joins it
    ip("addr", "add", "10.0.1.99/24", "dev", "eth0")
    before = snapshot_foreign()
    edited = config_file.read_text().replace("10.0.1.5/24", "10.0.1.6/24").replace(
        "gateway: 10.0.0.1  #", "gateway: 10.0.0.3  #")
    config_file.write_text(edited)
    apply_ok(config_file)
    assert snapshot_foreign() == before
    assert vsnetctl("teardown", "-c", str(config_file)).returncode == 0
    assert snapshot_foreign() == before
    assert rules() == [r for r in ip_json("rule", "show") if r["priority"] not in (0, 32766, 32767)
                       and r.get("protocol") != "vsnet"]


def test_conflicts_are_reported_not_overwritten(uplink: str, tmp_path: Path) -> None:
    path = tmp_path / "servers.yaml"
    path.write_text("""\
version: 1
servers:
  a: {id: 1, mode: pbr, uplink: eth0, addresses: [{address: 10.0.0.5/24}]}
  b: {id: 2, mode: pbr, uplink: eth0, addresses: [{address: 10.0.0.21/24}]}
  c: {id: 3, mode: pbr, uplink: eth0, addresses: [{address: 10.0.0.37/24}]}
""")
    # a's address rule's place: the rule tree's group of 10.0.0.4/30 (c is in 10.0.0.36/30)
    ip("rule", "add", "priority", "24884", "lookup", "main")
    ip("addr", "add", "10.0.0.21/24", "dev", "peer0")  # b's address, on another link
    result = vsnetctl("apply", "--json", "-c", str(path))
    assert result.returncode == 1
    servers = json.loads(result.stdout)["servers"]
    assert servers["a"] == {"state": "conflict", "reasons": [
        "priority 24884 is taken by a foreign rule 24884 from all lookup 254"]}
    assert servers["b"] == {"state": "conflict", "reasons": [
        "address 10.0.0.21 is already on peer0 (not created by vsnet)"]}
    assert servers["c"] == {"state": "in-sync", "reasons": []}
    assert [(r["priority"], r["table"]) for r in lookup_rules()] == [
        (24884, "main"), (24900, "10048"), (30548, "10063")]
    assert ip_json("addr", "show", "dev", "peer0")[0]["addr_info"][0]["local"] == "10.0.0.21"


def test_kernel_errors_fail_only_their_server(netns: None, tmp_path: Path) -> None:
    for name in ("up0", "down0"):
        ip("link", "add", name, "type", "veth", "peer", "name", f"{name}p")
    ip("link", "set", "up0", "up")
    path = tmp_path / "servers.yaml"
    path.write_text("""\
version: 1
servers:
  good: {id: 1, mode: pbr, uplink: up0, addresses: [{address: 10.0.0.5/24, gateway: 10.0.0.1}]}
  bad: {id: 2, mode: pbr, uplink: down0, addresses: [{address: 10.1.0.5/24, gateway: 10.1.0.1}]}
  later: {id: 3, mode: pbr, uplink: nosuch0, addresses: [{address: 10.2.0.5/24}]}
""")
    result = vsnetctl("apply", "--json", "-c", str(path))
    assert result.returncode == 1
    servers = json.loads(result.stdout)["servers"]
    assert servers["good"]["state"] == "in-sync"
    assert servers["bad"]["state"] == "failed"
    assert servers["bad"]["reasons"][0] == (
        "route 10.1.0.0/24 dev down0 src 10.1.0.5 table 10032: "
        "Network is down: Device for nexthop is not up")
    assert servers["later"] == {"state": "waiting", "reasons": ["uplink nosuch0 does not exist"]}
    human = vsnetctl("status", "-c", str(path)).stdout
    assert "later: uplink nosuch0 does not exist" in human
    # once the link is up and the missing uplink exists, the same file converges
    ip("link", "set", "down0", "up")
    ip("link", "add", "nosuch0", "type", "veth", "peer", "name", "nosuch0p")
    ip("link", "set", "nosuch0", "up")
    apply_ok(path)


def test_invalid_config_touches_nothing(uplink: str, config_file: Path) -> None:
    apply_ok(config_file)
    state = (rules(), rules("-6"), ip_json("route", "show", "table", "all"), ip_json("addr"))
    config_file.write_text(ISSUE_EXAMPLE.replace("10.0.1.5/24", "10.0.1.500/24"))
    for command in ("apply", "plan", "status"):
        result = vsnetctl(command, "-c", str(config_file))
        assert result.returncode == 1
        assert result.stderr.startswith(f"{config_file}:14:18: servers.nas1.addresses[1].address")
    assert state == (rules(), rules("-6"), ip_json("route", "show", "table", "all"),
                     ip_json("addr"))


def test_removing_a_server_removes_only_its_objects(uplink: str, tmp_path: Path) -> None:
    path = tmp_path / "servers.yaml"
    two = """\
version: 1
servers:
  a: {id: 1, mode: pbr, uplink: eth0, addresses: [{address: 10.0.0.5/24, gateway: 10.0.0.1}]}
  b: {id: 2, mode: pbr, uplink: eth0, addresses: [{address: 10.0.0.6/24, gateway: 10.0.0.1}]}
"""
    path.write_text(two)
    apply_ok(path)
    a_tables = (table(10016), table(10031))
    path.write_text(two.replace("10.0.0.6/24, gateway: 10.0.0.1", "10.0.0.7/24"))
    out = apply_ok(path)
    assert "a:" not in out  # only b changed
    assert (table(10016), table(10031)) == a_tables
    path.write_text("\n".join(two.splitlines()[:3]) + "\n")
    apply_ok(path)
    assert [(r["priority"], r["table"]) for r in lookup_rules()] == [
        (24884, "10016"), (30548, "10031")]
    assert table(10032) == [] and table(10047) == []
    global_v4 = [a["local"] for a in ip_json("-4", "addr", "show", "dev", "eth0")[0]["addr_info"]]
    assert global_v4 == ["10.0.0.5"]


# ------------------------------------------------------------------ real traffic


class EchoServer:
    """Listening sockets on VS addresses that tell the client which address answered."""

    def __init__(self, addresses: list[str], port: int) -> None:
        self.sockets = []
        for address in addresses:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)  # the address comes later
            sock.bind((address, port))
            sock.listen()
            sock.settimeout(10)
            self.sockets.append(sock)
        self.threads = [threading.Thread(target=self._serve, args=(s,), daemon=True)
                        for s in self.sockets]
        for thread in self.threads:
            thread.start()

    @staticmethod
    def _serve(sock: socket.socket) -> None:
        try:
            while True:
                conn, _peer = sock.accept()
                with conn:
                    conn.sendall(f"hello from {conn.getsockname()[0]}".encode())
        except OSError:
            return

    def close(self) -> None:
        for sock in self.sockets:
            sock.shutdown(socket.SHUT_RDWR)  # wakes its thread's accept: the thread ends
        for thread in self.threads:
            thread.join()
        for sock in self.sockets:
            sock.close()


@pytest.fixture
def network(netns: None) -> Iterator[None]:
    lab.build("eth0")
    # the box's own address and default route (gw-a): replies that ignore vsnet's tables
    # take it.
    ip("addr", "add", "10.0.0.2/24", "dev", "eth0")
    ip("route", "add", "default", "via", "10.0.0.1")
    yield


def test_replies_leave_through_their_address_gateway(network: None, config_file: Path) -> None:
    server = EchoServer(["10.0.0.5", "10.0.1.5"], 8000)
    try:
        # Without vsnet's tables a reply from 10.0.1.5 leaves by the main default (gw-a)
        # and never reaches the client socket bound to gw-b's link: the check can fail.
        ip("addr", "add", "10.0.1.5/24", "dev", "eth0")
        control = lab.client_connect("10.0.1.5", 8000, "cb")
        assert control.returncode != 0
        ip("addr", "del", "10.0.1.5/24", "dev", "eth0")

        apply_ok(config_file)
        for vs_address, link in (("10.0.0.5", "ca"), ("10.0.1.5", "cb")):
            reply = lab.client_connect(vs_address, 8000, link)
            assert reply.returncode == 0, reply.stderr
            assert reply.stdout.strip() == f"hello from {vs_address}"
    finally:
        server.close()


def outgoing_peer(mark: int | None, port: int, link: str = "ca") -> str:
    """Connect from the box to the client; return the source address the client saw
    arrive through ``link`` (``ca``: gw-a, ``cb``: gw-b)."""
    listener = lab.client_accept(port, link)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            if mark is not None:
                sock.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
            sock.settimeout(5)
            sock.connect((lab.CLIENT, port))
            assert sock.recv(16) == b"ok"
        out, _err = listener.communicate(timeout=10)
        return out.strip()
    finally:
        listener.kill()


def test_marked_socket_connects_out_with_the_vs_source(network: None, config_file: Path) -> None:
    """The mark table picks the VS source: the address next to the VS gateway (10.0.1.5,
    not the paper's first address); after source selection that address's rule routes the
    connection through the VS gateway: the client only accepts what arrives from gw-b."""
    apply_ok(config_file)
    assert outgoing_peer(0x5600001, 9000, "cb") == "10.0.1.5"
    assert outgoing_peer(None, 9001) == "10.0.0.2"  # unmarked: the box's own address


def test_reconciler_applies_one_vs_edits_without_full_dumps(uplink: str) -> None:
    """Edits through the warm Reconciler leave the kernel exactly as a full run would."""
    def config(servers: dict[int, str]) -> str:
        lines = ["version: 1", "servers:"]
        for server_id, address in servers.items():
            lines.append(f"  vs{server_id}: {{id: {server_id}, mode: pbr, uplink: eth0, "
                         f"addresses: [{{address: {address}, gateway: 10.0.0.1}}], "
                         f"gateway: 10.0.0.1}}")
        return "\n".join(lines) + "\n"

    servers = {i: f"10.0.0.{10 + i}/24" for i in range(1, 21)}
    with Kernel() as sock:
        reconciler = Reconciler(sock)
        first = reconciler.converge(compile_config(parse_config(config(servers))))
        assert first.converged
        assert len([c for c in first.applied if c.server != SHARED]) == 20 * 7
        servers[7] = "10.0.0.99/24"  # one address moves
        edits = [("vs7", dict(servers))]
        del servers[3]  # one VS goes
        edits.append(("vs3", dict(servers)))
        servers[40] = "10.0.0.140/24"  # one VS comes
        edits.append(("vs40", dict(servers)))
        for edited, state in edits:
            desired = compile_config(parse_config(config(state)))
            result = reconciler.converge(desired)
            assert result.converged, result.failures
            assert {c.server for c in result.applied} - {SHARED} == {edited}
            assert not plan_for(sock, desired)  # a full look finds nothing left to do


def test_a_foreign_route_of_any_type_in_a_vs_table_is_a_conflict(uplink: str, tmp_path: Path
                                                                  ) -> None:
    """A route ``replace`` takes the kernel's first route at its key, whoever made it:
    a foreign blackhole in a VS's table must be seen, reported, and left alone."""
    path = tmp_path / "servers.yaml"
    text = """\
version: 1
servers:
  a: {id: 1, mode: pbr, uplink: eth0, addresses: [{address: 10.0.0.5/24}], gateway: 10.0.0.1}
  b: {id: 2, mode: pbr, uplink: eth0, addresses: [{address: 10.0.0.21/24}], gateway: 10.0.0.1}
"""
    path.write_text(text)
    apply_ok(path)
    tables = {r["table"] for r in ip_json("route", "show", "table", "all", "proto", "vsnet")
              if r.get("prefsrc") == "10.0.0.5" and r["dst"] == "default"}
    assert len(tables) == 1  # the table of its mark: the one a gateway edit replaces in
    a_table = tables.pop()
    ip("route", "prepend", "blackhole", "default", "table", a_table, "proto", "static")
    path.write_text(text.replace("10.0.0.5/24}], gateway: 10.0.0.1", "10.0.0.5/24}], "
                                 "gateway: 10.0.0.2"))
    result = vsnetctl("apply", "--json", "-c", str(path))
    assert result.returncode == 1, result.stdout + result.stderr
    servers = json.loads(result.stdout)["servers"]
    assert servers["a"] == {"state": "conflict", "reasons": [
        f"table {a_table} holds a foreign route blackhole default table {a_table}"]}
    assert servers["b"]["state"] == "in-sync"
    assert [(r.get("type", "unicast"), r.get("gateway"), r["protocol"])
            for r in table(int(a_table)) if r["dst"] == "default"] == [
        ("blackhole", None, "static"), ("unicast", "10.0.0.1", "vsnet")]
    assert vsnetctl("teardown", "-c", str(path)).returncode == 0
    assert [(r.get("type"), r["protocol"]) for r in table(int(a_table))] == [
        ("blackhole", "static")]


def test_a_device_is_deleted_by_what_was_seen_not_by_its_name(uplink: str) -> None:
    """A plan made from a look that is stale by now (as the daemon's kept state can be):
    vsnet's device was renamed and a foreign one took its name. The delete reaches
    vsnet's device under its new name; the foreign one is left."""
    ip("link", "add", "mv0", "link", "eth0", "type", "macvlan")
    ip("link", "set", "mv0", "alias", "vsnet")  # one of vsnet's, no VS wants it: deleted
    empty = compile_config(parse_config("version: 1\n"))
    with Kernel() as kernel:
        plan = plan_for(kernel, empty)
        assert [(c.action, c.obj.name) for c in plan.changes
                if c.obj.kind == "link"] == [("delete", "mv0")]  # type: ignore[union-attr]
        ip("link", "set", "mv0", "name", "old0")
        ip("link", "add", "mv0", "type", "veth", "peer", "name", "mv1")
        result = apply_plan(kernel, plan, {"": {link["ifname"]: link["ifindex"]
                                                for link in ip_json("link", "show")}},
                            VSNET_PROTOCOL)
    assert not result.failed
    names = {link["ifname"] for link in ip_json("link", "show")}
    assert "old0" not in names and {"mv0", "mv1"} <= names


def test_a_renamed_device_is_forgotten_at_its_old_name(uplink: str) -> None:
    """The daemon's kept state follows a rename of vsnet's device: nothing of vsnet's is
    left at the old name (a foreign device may take it)."""
    ip("link", "add", "mv0", "link", "eth0", "type", "macvlan")
    ip("link", "set", "mv0", "alias", "vsnet")
    empty = compile_config(parse_config("version: 1\n"))
    monitor = netlink.RtnlMonitor()
    try:
        with Kernel() as kernel:
            state = observe(kernel, empty.scope)
        assert ("link", ("", "mv0")) in state.owned
        feed = NotificationFeed(state, empty.scope, "")
        ip("link", "set", "mv0", "name", "old0")
        deadline = time.monotonic() + 10
        while ("link", ("", "old0")) not in state.owned:  # the witness: the rename was read
            assert time.monotonic() < deadline, "no notification of the rename"
            select.select([monitor], [], [], 1.0)
            monitor.read(feed)
        assert ("link", ("", "mv0")) not in state.owned
        assert "mv0" not in state.links[""]
    finally:
        monitor.close()
