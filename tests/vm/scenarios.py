"""Run inside the VM (a Debian kernel with 802.1Q): vsnet's VLAN scenarios, one process.

Prints one JSON document with what it saw; ``test_vm_vsnet.py`` asserts on it. Booting a
VM costs seconds under emulation, so all scenarios share one boot and this one process
(which is also the paper's point: one process serving every virtual server).

    trunk0 (vsnet's uplink) ══ veth trunk ══ trunk1
      vs-A: A = trunk0 VLAN 100, 10.1.1.5/24     cl100: trunk1 VLAN 100, 10.1.1.100/24
      vs-B: B = trunk0 VLAN 200, 10.1.1.5/24     cl200: trunk1 VLAN 200, 10.1.1.100/24
      root: trunk0.300 (pbr VS C), 10.3.0.5/24   cl300: trunk1 VLAN 300, 10.3.0.100/24
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import threading
from typing import Any

from tests.sandbox import socket_in
from vsnetd.compile import compile_config
from vsnetd.config import parse_config
from vsnetd.kernel import Kernel
from vsnetd.reconcile import Reconciler, plan_for

RTMGRP_LINK = 1
RTM_NEWLINK = 16
PORT = 2049


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def config(with_b: bool = True, b_address: str = "10.1.1.5/24") -> str:
    text = """\
version: 1
servers:
  A: {id: 1, mode: netns, uplink: trunk0, vlan: 100, addresses: [{address: 10.1.1.5/24}]}
  C: {id: 3, mode: pbr, uplink: trunk0, vlan: 300,
      addresses: [{address: 10.3.0.5/24, gateway: 10.3.0.1}]}
"""
    if with_b:
        text += (f"  B: {{id: 2, mode: netns, uplink: trunk0, vlan: 200, "
                 f"addresses: [{{address: {b_address}}}]}}\n")
    return text


def link_events_in_root() -> socket.socket:
    """A socket that hears every device created in (or moved into) the root namespace."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    sock.bind((0, RTMGRP_LINK))
    sock.setblocking(False)
    return sock


def new_link_names(sock: socket.socket) -> list[str]:
    names = []
    while True:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return names
        offset = 0
        while offset + 16 <= len(data):
            length, kind = struct.unpack_from("=IH", data, offset)
            if kind == RTM_NEWLINK:
                pos = offset + 16 + 16
                while pos + 4 <= offset + length:
                    alen, atype = struct.unpack_from("=HH", data, pos)
                    if atype == 3:  # IFLA_IFNAME
                        names.append(data[pos + 4:pos + alen].rstrip(b"\0").decode())
                    pos += (alen + 3) & ~3
            offset += (length + 3) & ~3


def serve_in(netns: str | None, name: str, address: str = "0.0.0.0") -> socket.socket:
    """A listening socket in ``netns`` (None: the root namespace) answering its name."""
    sock = socket_in(netns)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address, PORT))
    sock.listen()

    def answer() -> None:
        try:
            while True:
                conn, _ = sock.accept()
                with conn:
                    conn.sendall(f"I am {name}".encode())
        except OSError:
            return

    threading.Thread(target=answer, daemon=True).start()
    return sock


def ask_from(netns: str, address: str) -> str:
    sock = socket_in(netns)
    sock.settimeout(5)
    try:
        sock.connect((address, PORT))
        return sock.recv(64).decode()
    except OSError as exc:
        return f"error: {exc}"
    finally:
        sock.close()


def link_info(netns: str | None, name: str) -> dict[str, Any]:
    prefix = ["ip", "-n", netns] if netns else ["ip"]
    return json.loads(sh(*prefix, "-j", "-d", "link", "show", "dev", name))[0]  # type: ignore[no-any-return]


def main() -> None:
    sh("modprobe", "8021q")
    sh("ip", "link", "set", "lo", "up")
    sh("ip", "link", "add", "trunk0", "type", "veth", "peer", "name", "trunk1")
    for dev in ("trunk0", "trunk1"):
        sh("ip", "link", "set", dev, "up")
    for vlan, address in ((100, "10.1.1.100/24"), (200, "10.1.1.100/24"), (300, "10.3.0.100/24")):
        ns = f"cl{vlan}"
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", "link", "trunk1", "name", f"c{vlan}", "netns", ns, "type",
           "vlan", "id", str(vlan))
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", ns, "link", "set", f"c{vlan}", "up")
        sh("ip", "-n", ns, "addr", "add", address, "dev", f"c{vlan}")
    out: dict[str, Any] = {}

    events = link_events_in_root()
    with Kernel() as kernel:
        reconciler = Reconciler(kernel)
        first = reconciler.converge(compile_config(parse_config(config())))
        out["converged"] = first.converged
        out["failures"] = first.failures
        out["root_new_links"] = new_link_names(events)
        out["A"] = link_info("vs-A", "A")
        out["B"] = link_info("vs-B", "B")
        out["C"] = link_info(None, "trunk0.300")
        out["C_rules"] = json.loads(sh("ip", "-j", "rule"))
        out["C_table"] = json.loads(sh("ip", "-j", "route", "show", "table", "10048"))

        # Figure 2: one process, a listening socket in each namespace, one answer each
        servers = [serve_in("vs-A", "A"), serve_in("vs-B", "B"),
                   serve_in(None, "C", "10.3.0.5")]
        out["cl100_asks"] = ask_from("cl100", "10.1.1.5")
        out["cl200_asks"] = ask_from("cl200", "10.1.1.5")
        out["cl300_asks"] = ask_from("cl300", "10.3.0.5")
        for sock in servers:
            sock.close()

        # an edit of B leaves A's device alone; removing B removes its VLAN device
        edited = compile_config(parse_config(config(b_address="10.1.1.6/24")))
        result = reconciler.converge(edited)
        out["edit_servers"] = sorted({c.server or "" for c in result.applied})
        out["A_after_edit"] = link_info("vs-A", "A")
        out["B_after_edit"] = link_info("vs-B", "B")
        without_b = compile_config(parse_config(config(with_b=False)))
        reconciler.converge(without_b)
        out["namespaces_after_removal"] = sorted(os.listdir("/run/netns"))
        # the VLANs on vsnet's side of the trunk (the clients' side keeps its own)
        out["vlans_after_removal"] = sorted(
            link["linkinfo"]["info_data"]["id"]
            for ns in [*(n for n in os.listdir("/run/netns") if n.startswith("vs-")), None]
            for link in json.loads(sh(*(["ip", "-n", ns] if ns else ["ip"]), "-j", "-d", "link"))
            if link.get("linkinfo", {}).get("info_kind") == "vlan"
            and link.get("ifalias") == "vsnet"
        )
        out["in_sync_after_removal"] = not plan_for(kernel, without_b)
    print("VSNET-SCENARIOS=" + json.dumps(out))


if __name__ == "__main__":
    main()
