"""A small network around the box under test, all inside the test's namespaces.

::

    [test netns: the box]  eth0 ──┐
                                  br0 (netns lan) ── gw-a (10.0.0.1) ── ca ─┐
                                  │                                       [client]
                                  └──────────────── gw-b (10.0.1.1) ── cb ─┘
                                                                 198.51.100.10

The client reaches 10.0.0.0/24 only through gw-a (link ``ca``) and 10.0.1.0/24 only
through gw-b (link ``cb``). A client socket bound to one link never sees a reply that
came back through the other gateway, so a successful exchange proves the reply path.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.sandbox import ip, sh

PEER = str(Path(__file__).with_name("netpeer.py"))
CLIENT = "198.51.100.10"
CLIENT6 = "2001:db8:c::10"


def _ns(name: str) -> None:
    ip("netns", "add", name)
    ip("link", "set", "lo", "up", netns=name)


def _veth(a: str, a_ns: str | None, b: str, b_ns: str) -> None:
    """A veth pair: ``a`` in ``a_ns`` (None: the test namespace), ``b`` in ``b_ns``."""
    ip("link", "add", a, "type", "veth", "peer", "name", b, "netns", b_ns)
    if a_ns:
        ip("link", "set", a, "netns", a_ns)
    ip("link", "set", a, "up", netns=a_ns)
    ip("link", "set", b, "up", netns=b_ns)


def build(uplink: str = "eth0") -> None:
    for name in ("lan", "gw-a", "gw-b", "client"):
        _ns(name)
    ip("link", "add", "br0", "type", "bridge", netns="lan")
    ip("link", "set", "br0", "up", netns="lan")
    _veth(uplink, None, "box", "lan")
    ip("link", "set", "box", "master", "br0", netns="lan")
    for gw, subnet, lan_v6, client_link, transfer in (
        ("gw-a", "10.0.0.1/24", "2001:db8:4::1/64", "ca", "172.16.1"),
        ("gw-b", "10.0.1.1/24", "2001:db8:5::1/64", "cb", "172.16.2"),
    ):
        _veth(f"{gw}-lan", gw, f"{gw}-port", "lan")
        ip("link", "set", f"{gw}-port", "master", "br0", netns="lan")
        ip("addr", "add", subnet, "dev", f"{gw}-lan", netns=gw)
        ip("addr", "add", lan_v6, "dev", f"{gw}-lan", "nodad", netns=gw)
        _veth(f"{gw}-c", gw, client_link, "client")
        ip("addr", "add", f"{transfer}.1/30", "dev", f"{gw}-c", netns=gw)
        ip("addr", "add", f"{transfer}.2/30", "dev", client_link, netns="client")
        ip("route", "add", f"{CLIENT}/32", "via", f"{transfer}.2", netns=gw)
        sh("sysctl", "-qw", "net.ipv4.ip_forward=1", netns=gw)
        sh("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1", netns=gw)
    ip("addr", "add", f"{CLIENT}/32", "dev", "lo", netns="client")
    ip("route", "add", "10.0.0.0/24", "via", "172.16.1.1", "dev", "ca", netns="client")
    ip("route", "add", "10.0.1.0/24", "via", "172.16.2.1", "dev", "cb", netns="client")
    for name in ("client", "lan", "gw-a", "gw-b"):
        sh("sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0", netns=name)
        sh("sysctl", "-qw", "net.ipv4.conf.default.rp_filter=0", netns=name)


def client_connect(address: str, port: int, device: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", "client", sys.executable, PEER, "connect", address, str(port),
         "--device", device],
        capture_output=True, text=True, timeout=20,
    )


def client_accept(port: int, device: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        ["ip", "netns", "exec", "client", sys.executable, PEER, "accept", str(port),
         "--device", device],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "listening"
    return proc
