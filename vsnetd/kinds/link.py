"""Network devices. vsnet only reads them so far: uplinks are looked up by name."""

from __future__ import annotations

import struct

from vsnetd import netlink

IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
IFLA_IFNAME = 3


def observe_links(sock: netlink.RtnlSocket) -> dict[str, int]:
    """Device name -> ifindex for the namespace of ``sock``."""
    links: dict[str, int] = {}
    for message in sock.dump(netlink.RTM_GETLINK, IFINFOMSG.pack(0, 0, 0, 0, 0)):
        _family, _type, index, _flags, _change = IFINFOMSG.unpack_from(message.body)
        attrs = netlink.parse_attrs(message.body, IFINFOMSG.size, len(message.body))
        name = attrs.get(IFLA_IFNAME)
        if name:
            links[name.rstrip(b"\0").decode()] = index
    return links
