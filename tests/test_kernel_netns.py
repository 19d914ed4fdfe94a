"""netns mode against the real kernel (macvlan here; 802.1Q runs in the VM tests)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.examples import TWO_NETNS_VS as TWO_VS
from tests.sandbox import ip, ip_json, sh, socket_in
from vsnetd import netlink
from vsnetd.apply import apply_plan
from vsnetd.compile import compile_config
from vsnetd.config import parse_config
from vsnetd.kernel import Kernel
from vsnetd.kinds import address as address_kind
from vsnetd.reconcile import converge, plan_for
from vsnetd.syscalls import entered_netns

pytestmark = pytest.mark.usefixtures("netns")


def vsnetctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vsnetd.cli", *args],
                          capture_output=True, text=True, timeout=60)


def apply_ok(path: Path) -> str:
    result = vsnetctl("apply", "-c", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def uplinks(*names: str) -> None:
    for name in names:
        ip("link", "add", name, "type", "veth", "peer", "name", f"{name}p")
        ip("link", "set", name, "up")
        ip("link", "set", f"{name}p", "up")


def namespaces() -> list[str]:
    return sorted(os.listdir("/run/netns"))


def links(netns: str | None = None) -> dict[str, dict[str, Any]]:
    return {link["ifname"]: link for link in ip_json("-d", "link", "show", netns=netns)}



@pytest.fixture
def two_vs(tmp_path: Path) -> Path:
    uplinks("eth0", "eth1")
    path = tmp_path / "servers.yaml"
    path.write_text(TWO_VS)
    return path


def test_each_vs_gets_its_namespace_device_addresses_routes(two_vs: Path) -> None:
    apply_ok(two_vs)
    assert namespaces() == ["vs-a", "vs-b"]
    inside = links("vs-a")
    assert set(inside) == {"lo", "a"}
    assert inside["lo"]["operstate"] == "UNKNOWN" and "UP" in inside["lo"]["flags"]
    device = inside["a"]
    assert device["ifindex"] == 10001  # stable: 10000 + id
    assert device["linkinfo"]["info_kind"] == "macvlan"
    assert device["ifalias"] == "vsnet"
    assert "UP" in device["flags"]
    addresses = {(a["local"], a["prefixlen"]) for a in ip_json("addr", "show", "dev", "a",
                                                               netns="vs-a")[0]["addr_info"]
                 if a["scope"] == "global"}
    assert addresses == {("10.1.1.5", 24), ("2001:db8:1::5", 64)}
    routes = {(r["dst"], r.get("gateway")) for r in ip_json("route", netns="vs-a")
              if r["protocol"] == "vsnet"}
    assert routes == {("default", "10.1.1.1"), ("192.168.0.0/16", "10.1.1.254")}
    assert [(r["dst"], r["gateway"]) for r in ip_json("-6", "route", netns="vs-a")
            if r["protocol"] == "vsnet"] == [("default", "2001:db8:1::1")]
    # the resolver file, as `ip netns exec` shows it to programs in the VS
    resolv = sh("ip", "netns", "exec", "vs-a", "cat", "/etc/resolv.conf")
    assert "nameserver 10.1.1.53\nsearch corp.example\n" in resolv
    assert sh("ip", "netns", "exec", "vs-a", "sysctl", "-n",
              "net.ipv4.conf.all.rp_filter").strip() == "1"
    status = json.loads(vsnetctl("status", "--json", "-c", str(two_vs)).stdout)["servers"]
    assert {n: (s["state"], s["netns"], s["device"]) for n, s in status.items()} == {
        "a": ("in-sync", "vs-a", "a"), "b": ("in-sync", "vs-b", "b")}
    assert vsnetctl("plan", "-c", str(two_vs)).returncode == 0


class NameServer:
    """ONE process, one listening socket per VS namespace (the paper's trick): a thread
    enters each namespace, opens the socket, comes back; every answer names its VS."""

    def __init__(self, servers: dict[str, str], port: int) -> None:
        self.sockets: list[tuple[str, socket.socket]] = []
        for name, netns in servers.items():
            sock = socket_in(netns)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("0.0.0.0", port))
            sock.listen()
            self.sockets.append((name, sock))
        self.threads = [threading.Thread(target=self._serve, args=(name, sock), daemon=True)
                        for name, sock in self.sockets]
        for thread in self.threads:
            thread.start()

    @staticmethod
    def _serve(name: str, sock: socket.socket) -> None:
        try:
            while True:
                conn, _peer = sock.accept()
                with conn:
                    conn.sendall(f"I am {name}".encode())
        except OSError:
            return

    def close(self) -> None:
        for _name, sock in self.sockets:
            sock.shutdown(socket.SHUT_RDWR)  # wakes its thread's accept: the thread ends
        for thread in self.threads:
            thread.join()
        for _name, sock in self.sockets:
            sock.close()


def client_says(netns: str, address: str, port: int) -> str:
    code = ("import socket,sys; s=socket.create_connection((sys.argv[1], int(sys.argv[2])), 3);"
            "print(s.recv(64).decode())")
    return sh("ip", "netns", "exec", netns, sys.executable, "-c", code, address,
              str(port)).strip()


def test_overlapping_address_plans_one_process_serves_both(two_vs: Path) -> None:
    """Figure 2 on macvlan: two VS with the same 10.1.1.5/24, each on its own segment; one
    process holds a listening socket in each namespace and answers with the right name."""
    apply_ok(two_vs)
    for lan, uplink in (("lan-a", "eth0p"), ("lan-b", "eth1p")):
        ip("netns", "add", lan)
        ip("link", "set", uplink, "netns", lan)
        ip("link", "set", uplink, "up", netns=lan)
        ip("link", "set", "lo", "up", netns=lan)
        ip("addr", "add", "10.1.1.100/24", "dev", uplink, netns=lan)
    server = NameServer({"a": "vs-a", "b": "vs-b"}, 2049)
    try:
        assert client_says("lan-a", "10.1.1.5", 2049) == "I am a"
        assert client_says("lan-b", "10.1.1.5", 2049) == "I am b"
    finally:
        server.close()


@pytest.fixture
def foreign_ns_files() -> Iterator[Path]:
    """/etc/netns/foreign-ns, removed after the test (the sandbox's /etc/netns is the
    whole run's)."""
    path = Path("/etc/netns/foreign-ns")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_edits_mode_switches_and_removal_leave_nothing_behind(two_vs: Path,
                                                              foreign_ns_files: Path) -> None:
    # foreign things that must survive everything
    ip("netns", "add", "foreign-ns")
    ip("link", "add", "fmv0", "link", "eth0", "type", "macvlan")
    Path("/etc/netns/foreign-ns").mkdir(parents=True)
    Path("/etc/netns/foreign-ns/resolv.conf").write_text("nameserver 192.0.2.53\n")
    foreign_before = (links()["fmv0"], Path("/etc/netns/foreign-ns/resolv.conf").read_text())

    apply_ok(two_vs)
    index_b = links("vs-b")["b"]["ifindex"]
    # edit a only: b's device is untouched (same ifindex, same namespace)
    two_vs.write_text(TWO_VS.replace("search: [corp.example]", "search: [corp.example, lab]"))
    out = apply_ok(two_vs)
    assert "b:" not in out
    assert links("vs-b")["b"]["ifindex"] == index_b
    assert "search corp.example lab" in Path("/etc/netns/vs-a/resolv.conf").read_text()
    # a moves to pbr mode: its namespace goes, its address lands on eth0 in the root
    as_pbr = TWO_VS.replace("""    mode: netns
    uplink: eth0""", """    mode: pbr
    uplink: eth0""").replace("""    sysctl: {net.ipv4.conf.all.rp_filter: 1}
    dns: {servers: [10.1.1.53], search: [corp.example]}
""", "")
    two_vs.write_text(as_pbr)
    apply_ok(two_vs)
    assert namespaces() == ["foreign-ns", "vs-b"]
    assert not Path("/etc/netns/vs-a").exists()
    assert "10.1.1.5" in {a["local"] for a in ip_json("addr", "show", "dev", "eth0")[0]
                          ["addr_info"]}
    # and back to netns, in a namespace of its own choosing, shared with b
    two_vs.write_text("""\
version: 1
servers:
  a:
    id: 1
    mode: netns
    namespace: shared
    uplink: eth0
    addresses: [{address: 10.1.1.5/24}]
    gateway: 10.1.1.1
  b:
    id: 2
    mode: netns
    namespace: shared
    uplink: eth1
    addresses: [{address: 10.1.2.6/24}]
""")
    apply_ok(two_vs)
    assert namespaces() == ["foreign-ns", "shared"]
    assert set(links("shared")) == {"lo", "a", "b"}
    assert rules_of_vsnet() == []
    # everything goes
    assert vsnetctl("teardown", "-c", str(two_vs)).returncode == 0
    assert namespaces() == ["foreign-ns"]
    assert sorted(os.listdir("/etc/netns")) == ["foreign-ns"]
    assert (links()["fmv0"], Path("/etc/netns/foreign-ns/resolv.conf").read_text()) == \
        foreign_before
    assert set(links()) == {"lo", "eth0", "eth0p", "eth1", "eth1p", "fmv0"}
    assert [a["local"] for a in ip_json("addr", "show", "dev", "eth0")[0]["addr_info"]
            if a["scope"] == "global"] == []


def rules_of_vsnet() -> list[Any]:
    return [r for family in ("-4", "-6") for r in ip_json(family, "rule")
            if r.get("protocol") == "vsnet"]


def test_foreign_namespace_with_the_wanted_name_is_a_conflict(two_vs: Path) -> None:
    ip("netns", "add", "vs-b")
    ip("link", "add", "x0", "type", "veth", "peer", "name", "x1", "netns", "vs-b")
    result = vsnetctl("apply", "--json", "-c", str(two_vs))
    assert result.returncode == 1
    servers = json.loads(result.stdout)["servers"]
    assert servers["a"]["state"] == "in-sync"
    assert servers["b"] == {"state": "conflict",
                            "reasons": ["namespace vs-b exists and was not created by vsnet"]}
    assert vsnetctl("teardown", "-c", str(two_vs)).returncode == 0
    assert namespaces() == ["vs-b"]
    assert set(links("vs-b")) == {"lo", "x1"}


def test_a_moved_uplink_is_handed_back(tmp_path: Path) -> None:
    uplinks("eth0", "data0")
    path = tmp_path / "servers.yaml"
    path.write_text("""\
version: 1
servers:
  m: {id: 9, mode: netns, uplink: data0, link: move, addresses: [{address: 10.5.0.5/24}]}
""")
    index = links()["data0"]["ifindex"]
    apply_ok(path)
    assert "data0" not in links()
    inside = links("vs-m")["data0"]
    assert inside["ifindex"] == index and inside["ifalias"] == "vsnet"
    assert vsnetctl("plan", "-c", str(path)).returncode == 0
    assert vsnetctl("teardown", "-c", str(path)).returncode == 0
    back = links()["data0"]
    assert back["ifindex"] == index and "ifalias" not in back
    assert namespaces() == []


def test_a_lent_uplink_is_handed_back_for_a_device_on_it(tmp_path: Path) -> None:
    """From ``link: move`` to a macvlan on the same uplink: the uplink, lent to the VS, is
    not missing; it is handed back and the macvlan made on it, in one apply."""
    uplinks("eth0", "data0")
    path = tmp_path / "servers.yaml"
    moved = """\
version: 1
servers:
  m: {id: 9, mode: netns, uplink: data0, link: move, addresses: [{address: 10.5.0.5/24}]}
"""
    path.write_text(moved)
    apply_ok(path)
    assert "data0" in links("vs-m")
    path.write_text(moved.replace("link: move", "link: macvlan"))
    apply_ok(path)
    assert links()["data0"]["ifindex"] == links("vs-m")["m"]["link_index"]
    assert links("vs-m")["m"]["linkinfo"]["info_kind"] == "macvlan"
    assert "data0" not in links("vs-m")
    assert vsnetctl("plan", "-c", str(path)).returncode == 0
    assert vsnetctl("teardown", "-c", str(path)).returncode == 0


def test_a_device_deleted_by_hand_is_planned_again(two_vs: Path) -> None:
    apply_ok(two_vs)
    ip("link", "del", "dev", "b", netns="vs-b")
    plan = json.loads(vsnetctl("plan", "--json", "-c", str(two_vs)).stdout)
    assert [(c["action"], c["object"]["kind"]) for c in plan["changes"]] == [
        ("add", "link"), ("add", "address"), ("add", "route")]
    apply_ok(two_vs)
    assert links("vs-b")["b"]["ifindex"] == 10002


def test_namespaces_are_created_without_forking(tmp_path: Path) -> None:
    uplinks("eth0")
    servers = "\n".join(
        f"  v{i}: {{id: {i}, mode: netns, uplink: eth0, addresses: [{{address: 10.0.{i}.5/24}}]}}"
        for i in range(1, 6))
    desired = compile_config(parse_config(f"version: 1\nservers:\n{servers}\n"))
    with pytest.MonkeyPatch.context() as patch:
        def refuse(*_args: object, **_kwargs: object) -> None:
            raise AssertionError("vsnet forked a process")

        for name in ("fork", "forkpty", "posix_spawn", "posix_spawnp", "system"):
            patch.setattr(os, name, refuse)
        patch.setattr(subprocess.Popen, "__init__", refuse)
        with Kernel() as kernel:
            result = converge(kernel, desired)
            assert result.converged, result.failures
            assert not plan_for(kernel, desired)
    assert namespaces() == [f"vs-v{i}" for i in range(1, 6)]


def test_warm_edits_see_what_the_kernel_drops_silently(tmp_path: Path) -> None:
    """Replacing the only address of a device makes the kernel drop the routes through it
    without a notification; the warm Reconciler looks again and puts them back."""
    from vsnetd.reconcile import Reconciler

    uplinks("eth0", "eth1")
    text = """\
version: 1
servers:
  n: {id: 1, mode: netns, uplink: eth0, addresses: [{address: 10.1.1.5/24}], gateway: 10.1.1.1}
  p: {id: 2, mode: pbr, uplink: eth1, addresses: [{address: 10.2.0.5/24, gateway: 10.2.0.1}],
      gateway: 10.2.0.1}
"""
    with Kernel() as kernel:
        reconciler = Reconciler(kernel)
        assert reconciler.converge(compile_config(parse_config(text))).converged
        edited = compile_config(parse_config(
            text.replace("10.1.1.5/24", "10.1.1.6/24").replace("10.2.0.5/24", "10.2.0.6/24")))
        result = reconciler.converge(edited)
        assert result.converged, result.failures
        assert not plan_for(kernel, edited)  # a full look agrees: nothing missing
    assert [r["dst"] for r in ip_json("route", netns="vs-n") if r["protocol"] == "vsnet"] == [
        "default"]


FOREIGN_RESOLVER = "nameserver 192.0.2.99\n"


@pytest.fixture
def foreign_resolver() -> Iterator[Path]:
    """Someone else's resolver file for vs-a (removed after the test)."""
    path = Path("/etc/netns/vs-a/resolv.conf")
    path.parent.mkdir(parents=True)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)
        path.parent.rmdir()


def test_a_foreign_resolver_file_of_a_namespace_yet_to_come_is_a_conflict(
        two_vs: Path, foreign_resolver: Path) -> None:
    """/etc/netns/<ns>/resolv.conf outlives its namespace: one written by someone else
    before vsnet creates the namespace stands in the way, as it does beside an existing one."""
    foreign = foreign_resolver
    foreign.write_text(FOREIGN_RESOLVER)
    result = vsnetctl("apply", "--json", "-c", str(two_vs))
    assert result.returncode == 1, result.stdout + result.stderr
    servers = json.loads(result.stdout)["servers"]
    assert servers["a"] == {"state": "conflict", "reasons": [
        "/etc/netns/vs-a/resolv.conf was not written by vsnet"]}
    assert servers["b"]["state"] == "in-sync"
    assert foreign.read_text() == FOREIGN_RESOLVER
    assert vsnetctl("teardown", "-c", str(two_vs)).returncode == 0
    assert foreign.read_text() == FOREIGN_RESOLVER and namespaces() == []


def test_a_resolver_file_that_is_not_text_is_foreign_too(two_vs: Path,
                                                        foreign_resolver: Path) -> None:
    foreign_resolver.write_bytes(b"nameserver 192.0.2.99 # \xff\xfe\n")
    result = vsnetctl("apply", "--json", "-c", str(two_vs))
    assert result.returncode == 1, result.stdout + result.stderr
    assert json.loads(result.stdout)["servers"]["a"] == {"state": "conflict", "reasons": [
        "/etc/netns/vs-a/resolv.conf was not written by vsnet"]}
    assert foreign_resolver.read_bytes() == b"nameserver 192.0.2.99 # \xff\xfe\n"
    assert vsnetctl("teardown", "-c", str(two_vs)).returncode == 0


def test_a_resolver_file_written_after_the_look_is_not_overwritten(
        two_vs: Path, foreign_resolver: Path) -> None:
    """A plan made before someone else wrote the file: its write is refused and fails
    the VS, the file is kept."""
    desired = compile_config(parse_config(two_vs.read_text(), file=str(two_vs)))
    with Kernel() as kernel:
        plan = plan_for(kernel, desired)
        foreign = foreign_resolver
        foreign.write_text(FOREIGN_RESOLVER)
        result = apply_plan(kernel, plan, {"": {name: link["ifindex"]
                                                for name, link in links().items()}},
                            desired.scope.protocol)
    failures = result.failures_by_server()
    assert list(failures) == ["a"] and "was not written by vsnet" in failures["a"], failures
    assert foreign.read_text() == FOREIGN_RESOLVER
    assert vsnetctl("teardown", "-c", str(two_vs)).returncode == 0
    assert foreign.read_text() == FOREIGN_RESOLVER


def test_a_foreign_route_where_a_vs_wants_one_in_its_namespace_is_a_conflict(
        two_vs: Path) -> None:
    """The main table of a VS namespace is shared with the kernel's own routes: a foreign
    route at the key of a wanted one stands in the way (and is kept); the others do not."""
    apply_ok(two_vs)
    ip("route", "add", "172.16.0.0/12", "via", "10.1.1.9", "proto", "static", netns="vs-b")
    two_vs.write_text(TWO_VS.replace("    gateway: 10.1.1.1\n", "    gateway: 10.1.1.1\n"
                                     "    routes: [{to: 172.16.0.0/12, via: 10.1.1.254}]\n"))
    result = vsnetctl("apply", "--json", "-c", str(two_vs))
    assert result.returncode == 1, result.stdout + result.stderr
    servers = json.loads(result.stdout)["servers"]
    assert servers["b"] == {"state": "conflict", "reasons": [
        "namespace vs-b holds a foreign route 172.16.0.0/12 via 10.1.1.9 dev b netns vs-b"]}
    assert servers["a"]["state"] == "in-sync"
    assert [(r["dst"], r.get("gateway"), r["protocol"])
            for r in ip_json("route", "show", netns="vs-b")] == [
        ("default", "10.1.1.1", "vsnet"), ("10.1.1.0/24", None, "kernel"),
        ("172.16.0.0/12", "10.1.1.9", "static")]
    assert vsnetctl("teardown", "-c", str(two_vs)).returncode == 0


def test_removing_a_first_address_keeps_the_others_of_its_subnet(tmp_path: Path) -> None:
    """In a VS namespace too, deleting the primary IPv4 address of a subnet must promote
    its secondaries, not delete them (with the routes through them) for a later round to
    put back: the kernel's own notifications say no other address went."""
    uplinks("eth0")
    path = tmp_path / "servers.yaml"
    text = """\
version: 1
servers:
  x: {id: 1, mode: netns, uplink: eth0, gateway: 10.0.0.1,
      addresses: [{address: 10.0.0.7/24}, {address: 10.0.0.8/24}]}
"""
    path.write_text(text)
    apply_ok(path)
    path.write_text(text.replace("{address: 10.0.0.7/24}, ", ""))
    with open("/run/netns/vs-x") as netns, entered_netns(netns.fileno()):
        monitor = netlink.RtnlMonitor()
    deleted: list[str] = []

    def note(message: int, data: bytearray, start: int, end: int) -> None:
        found = address_kind.decoder({})(data, start, end) if message == netlink.RTM_DELADDR \
            else None
        if found is not None:
            deleted.append(found[0].address)

    try:
        apply_ok(path)
        monitor.read(note)
    finally:
        monitor.close()
    assert deleted == ["10.0.0.7"]
    assert [(a["local"], a["prefixlen"]) for link in ip_json("-4", "addr", "show", netns="vs-x")
            for a in link["addr_info"] if link["ifname"] == "x"] == [("10.0.0.8", 24)]
    assert [r["dst"] for r in ip_json("route", "show", netns="vs-x")] == ["default", "10.0.0.0/24"]
    assert vsnetctl("teardown", "-c", str(path)).returncode == 0
