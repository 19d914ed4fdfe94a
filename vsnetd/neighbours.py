"""Neighbours follow a VS that moved: unsolicited ARP (IPv4) and neighbour advertisements
(IPv6) for each of its addresses, from its own device.

When a cluster moves a VS to another node, the peers on its link still map its addresses
to the old node's MAC address until their entries time out (tens of seconds). A
gratuitous ARP request (sender = target = the address, RFC 5227 "ARP announcement") makes
a Linux peer replace the MAC of an entry it holds whatever its lock time; an unsolicited
neighbour advertisement with the Override flag (RFC 4861 section 7.2.6) does the same for
IPv6. Several of each, spaced, as heartbeat's IPaddr2 does: a single frame can be lost.

The frames are built here and sent on an ``AF_PACKET`` socket bound to the VS's device
(opened inside the VS's namespace in netns mode): no helper program, and no dependency on
the state of the address (an IPv6 address may still be tentative).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import struct
import threading
import time
from collections.abc import Iterable, Sequence

from vsnetd import log
from vsnetd.kernel import Kernel
from vsnetd.state import DesiredServer
from vsnetd.syscalls import entered_netns

ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
BROADCAST = b"\xff" * 6
ALL_NODES_MAC = b"\x33\x33\x00\x00\x00\x01"  # ff02::1 (RFC 2464 section 7)
ALL_NODES = ipaddress.IPv6Address("ff02::1").packed
ICMPV6 = 58
NEIGHBOR_ADVERT = 136
NA_FLAG_OVERRIDE = 0x20000000
TARGET_LINK_ADDRESS = 2

# IPaddr2 sends 5 ARPs 200 ms apart; the first leaves at once (on the way of the start).
DEFAULT_COUNT = 5
DEFAULT_INTERVAL = 0.2


def arp_announcement(mac: bytes, ip: ipaddress.IPv4Address) -> bytes:
    """An Ethernet frame: broadcast ARP request, sender and target both ``ip``."""
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac, ip.packed, b"\0" * 6, ip.packed)
    return BROADCAST + mac + struct.pack("!H", ETH_P_ARP) + arp


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return int(~total & 0xFFFF)


def neighbour_advertisement(mac: bytes, ip: ipaddress.IPv6Address) -> bytes:
    """An Ethernet frame: unsolicited NA (Override set) for ``ip`` to all nodes, with the
    target link-layer address option; hop limit 255 as receivers require."""
    body = struct.pack("!I16s", NA_FLAG_OVERRIDE, ip.packed) + struct.pack(
        "!BB6s", TARGET_LINK_ADDRESS, 1, mac)
    length = 4 + len(body)
    pseudo = ip.packed + ALL_NODES + struct.pack("!I3xB", length, ICMPV6)
    checksum = _checksum(pseudo + struct.pack("!BBH", NEIGHBOR_ADVERT, 0, 0) + body)
    icmp = struct.pack("!BBH", NEIGHBOR_ADVERT, 0, checksum) + body
    header = struct.pack("!IHBB16s16s", 6 << 28, length, ICMPV6, 255, ip.packed, ALL_NODES)
    return ALL_NODES_MAC + mac + struct.pack("!H", ETH_P_IPV6) + header + icmp


def frames_for(mac: bytes, addresses: Sequence[str]) -> list[bytes]:
    """One frame per address (``10.0.0.5/24`` or ``fd00::5/64``)."""
    frames = []
    for text in addresses:
        ip = ipaddress.ip_interface(text).ip
        if isinstance(ip, ipaddress.IPv4Address):
            frames.append(arp_announcement(mac, ip))
        else:
            frames.append(neighbour_advertisement(mac, ip))
    return frames


def open_device(device: str, netns_fd: int | None = None) -> tuple[socket.socket, bytes]:
    """A packet socket bound to ``device`` (in the namespace ``netns_fd``, when given), and
    the device's MAC address (what the kernel reports for the bound socket)."""
    def make() -> socket.socket:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # protocol 0: receives none
        try:
            sock.bind((device, 0))
        except OSError:
            sock.close()
            raise
        return sock

    if netns_fd is None:
        sock = make()
    else:
        with entered_netns(netns_fd):
            sock = make()
    return sock, sock.getsockname()[4]


class Announcer:
    """Sends the announcements: the first round at once, the others from one thread per
    call (an activation of 100 VS starts one thread, not 100)."""

    def __init__(self, count: int = DEFAULT_COUNT, interval: float = DEFAULT_INTERVAL) -> None:
        self.count = count
        self.interval = interval
        self.threads: list[threading.Thread] = []

    def announce(self, server: str, device: str, addresses: Sequence[str],
                 netns_fd: int | None = None) -> int:
        """Announce ``addresses`` of ``server`` on ``device``; the number of frames sent in
        the first round."""
        return self.announce_many([(server, device, addresses, netns_fd)])

    def announce_many(self, servers: Iterable[tuple[str, str, Sequence[str], int | None]]
                      ) -> int:
        """Announce each (server, device, addresses, netns fd); the frames sent in the
        first round. A failure is logged (the VS serves anyway; peers catch up when their
        entries expire)."""
        opened: list[tuple[socket.socket, list[bytes], str]] = []
        for server, device, addresses, netns_fd in servers:
            try:
                sock, mac = open_device(device, netns_fd)
            except OSError as exc:
                log.event(logging.WARNING, f"cannot announce on {device}: {exc}",
                          server=server, op="announce")
                continue
            opened.append((sock, frames_for(mac, addresses), server))
        sent = sum(self._round(sock, frames, server) for sock, frames, server in opened)
        if not opened:
            return sent
        if self.count > 1:
            thread = threading.Thread(target=self._rest, args=(opened,), name="announce",
                                      daemon=True)
            self.threads = [t for t in self.threads if t.is_alive()]
            self.threads.append(thread)
            thread.start()
        else:
            for sock, _frames, _server in opened:
                sock.close()
        return sent

    def _round(self, sock: socket.socket, frames: list[bytes], server: str) -> int:
        sent = 0
        for frame in frames:
            try:
                sock.send(frame)
                sent += 1
            except OSError as exc:  # the device went away meanwhile: nothing to tell
                log.event(logging.DEBUG, f"announce: {exc}", server=server, op="announce")
        return sent

    def _rest(self, opened: list[tuple[socket.socket, list[bytes], str]]) -> None:
        try:
            for _round in range(self.count - 1):
                time.sleep(self.interval)
                for sock, frames, server in opened:
                    self._round(sock, frames, server)
        finally:
            for sock, _frames, _server in opened:
                sock.close()

    def wait(self) -> None:
        """Until every round is sent (a one-shot vsnetctl must not exit before)."""
        for thread in self.threads:
            thread.join()
        self.threads.clear()


def announce_servers(announcer: Announcer, kernel: Kernel, servers: Iterable[DesiredServer]
                     ) -> None:
    """Announce every address of each VS from its device (in its namespace, in netns mode)."""
    batch: list[tuple[str, str, Sequence[str], int | None]] = []
    for server in servers:
        try:
            fd = kernel.netns_fd(server.netns) if server.netns else None
        except OSError as exc:
            log.event(logging.WARNING, f"cannot announce: {exc}", server=server.name,
                      op="announce")
            continue
        batch.append((server.name, server.device, server.addresses, fd))
    announcer.announce_many(batch)
