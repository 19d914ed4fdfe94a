"""Network devices. vsnet only reads them so far: uplinks are looked up by name."""

from __future__ import annotations

import struct

from vsnetd import netlink

IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
IFLA_IFNAME = 3


def observe_links(sock: netlink.RtnlSocket) -> dict[str, int]:
    """Device name -> ifindex for the namespace of ``sock``."""

    def decode(data: bytearray, start: int, end: int) -> tuple[str, int] | None:
        index = IFINFOMSG.unpack_from(data, start)[2]
        name = netlink.parse_attrs(data, start + IFINFOMSG.size, end).get(IFLA_IFNAME)
        return (name.rstrip(b"\0").decode(), index) if name else None

    return dict(sock.dump(netlink.RTM_GETLINK, IFINFOMSG.pack(0, 0, 0, 0, 0), decode))
