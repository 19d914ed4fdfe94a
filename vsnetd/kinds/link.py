"""Network devices: the VS devices vsnet creates (macvlan or 802.1Q VLAN on an uplink), an
uplink handed to a VS whole (``move``), and the loopback of each VS namespace.

Devices are created *directly inside* their target namespace: the request goes out on the
root namespace's socket, naming the parent by its root ifindex and the target with
IFLA_NET_NS_FD (~0.14 ms), instead of create-then-move (~17 ms, under the RTNL lock).
A device created in a namespace gets a requested, stable ifindex (10000 + VS id), so the
addresses and routes of the same apply can name it without a dump in between.

Ownership: devices vsnet creates carry the alias (IFLA_IFALIAS) ``vsnet``, set right after
creation (the kernel ignores an alias on the create request); a moved uplink carries it
while it is lent. Loopbacks of vsnet's namespaces are vsnet's by extension.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any, ClassVar, Literal, NamedTuple, cast

from vsnetd import netlink
from vsnetd.kinds.kind import Applier, Inside, Kind, Looking, NamespaceObserver, Request

if TYPE_CHECKING:
    from vsnetd.state import Change, DesiredServer

IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
IFLA_IFNAME, IFLA_LINK, IFLA_LINKINFO, IFLA_IFALIAS, IFLA_NET_NS_FD = 3, 5, 18, 20, 28
IFLA_LINK_NETNSID = 37
IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS = 29, 1 << 3
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
IFLA_MACVLAN_MODE, MACVLAN_MODE_BRIDGE = 1, 4
IFLA_VLAN_ID = 1
NLA_F_NESTED = 0x8000
IFF_UP = 0x1
ALIAS = "vsnet"
IFINDEX_BASE = 10000  # requested ifindex of a VS device: IFINDEX_BASE + VS id

LinkType = Literal["macvlan", "vlan", "move", "loopback"]


class Link(NamedTuple):
    netns: str
    name: str
    type: str  # LinkType
    parent: str | None = None  # the uplink, by its name in the root namespace
    vlan: int | None = None
    up: bool = True
    ifindex: int = 0  # the ifindex vsnet asks for when creating (0: the kernel's choice)

    @property
    def kind(self) -> Literal["link"]:
        return "link"

    @property
    def key(self) -> tuple[str, str]:
        return (self.netns, self.name)

    def same_device(self, other: Link) -> bool:
        """Whether ``other`` is this device, up/down aside (otherwise: delete, create)."""
        return (self.type, self.parent, self.vlan) == (other.type, other.parent, other.vlan)

    def describe(self) -> str:
        words = ["link", self.name]
        if self.type == "vlan":
            words.append(f"vlan {self.vlan} on {self.parent}")
        elif self.type == "macvlan":
            words.append(f"macvlan on {self.parent}")
        elif self.type == "move":
            words.append("(the uplink itself)")
        if self.netns:
            words.append(f"netns {self.netns}")
        if not self.up:
            words.append("down")
        return " ".join(words)

    def as_json(self) -> dict[str, Any]:
        return {"kind": "link", "netns": self.netns, "name": self.name, "type": self.type,
                "parent": self.parent, "vlan": self.vlan, "up": self.up}


def _nested(kind: int, payload: bytes) -> bytes:
    return netlink.attr(kind | NLA_F_NESTED, payload)


def create_request(obj: Link, parent_index: int, target_fd: int | None) -> tuple[int, int, bytes]:
    """RTM_NEWLINK for a macvlan/vlan device, sent on the root namespace's socket."""
    index = obj.ifindex if target_fd is not None else 0
    body = IFINFOMSG.pack(0, 0, index, IFF_UP if obj.up else 0, IFF_UP)
    body += netlink.attr(IFLA_IFNAME, obj.name.encode() + b"\0")
    body += netlink.attr_u32(IFLA_LINK, parent_index)
    if target_fd is not None:
        body += netlink.attr_u32(IFLA_NET_NS_FD, target_fd)
    if obj.type == "vlan":
        assert obj.vlan is not None
        data = netlink.attr(IFLA_VLAN_ID, struct.pack("=H", obj.vlan))
    else:
        data = netlink.attr_u32(IFLA_MACVLAN_MODE, MACVLAN_MODE_BRIDGE)
    body += _nested(IFLA_LINKINFO, netlink.attr(IFLA_INFO_KIND, obj.type.encode())
                    + _nested(IFLA_INFO_DATA, data))
    return netlink.RTM_NEWLINK, netlink.NLM_F_CREATE | netlink.NLM_F_EXCL, body


def alias_request(index: int, alias: str) -> tuple[int, int, bytes]:
    """Tag a device (the kernel ignores IFLA_IFALIAS on create: it takes a second request)."""
    body = IFINFOMSG.pack(0, 0, index, 0, 0) + netlink.attr(IFLA_IFALIAS, alias.encode())
    return netlink.RTM_NEWLINK, 0, body


def move_request(index: int, target_fd: int, alias: str, up: bool) -> tuple[int, int, bytes]:
    """Move an existing device (by its index where it is now) into ``target_fd``."""
    body = IFINFOMSG.pack(0, 0, index, IFF_UP if up else 0, IFF_UP)
    body += netlink.attr_u32(IFLA_NET_NS_FD, target_fd)
    body += netlink.attr(IFLA_IFALIAS, alias.encode())
    return netlink.RTM_NEWLINK, 0, body


def set_up_request(index: int, up: bool) -> tuple[int, int, bytes]:
    return netlink.RTM_NEWLINK, 0, IFINFOMSG.pack(0, 0, index, IFF_UP if up else 0, IFF_UP)


def delete_request(index: int) -> tuple[int, int, bytes]:
    return netlink.RTM_DELLINK, 0, IFINFOMSG.pack(0, 0, index, 0, 0)


class ObservedLink(NamedTuple):
    name: str
    ifindex: int
    alias: str
    type: str
    parent_index: int
    parent_elsewhere: bool  # the parent is in another namespace (IFLA_LINK_NETNSID)
    vlan: int | None
    up: bool


_unpack_attr = netlink.ATTR.unpack_from
_unpack_u32 = netlink.U32.unpack_from


# The attributes decode reads, with and without the nested/byte-order flag bits: one set
# lookup per attribute skips the ~30 others of a device's message.
_READ = frozenset(kind | flag for kind in (IFLA_IFNAME, IFLA_LINK, IFLA_LINKINFO,
                                          IFLA_IFALIAS, IFLA_LINK_NETNSID)
                  for flag in (0, 0x4000, 0x8000, 0xC000))


def decode(data: bytearray, start: int, end: int) -> ObservedLink | None:
    """One RTM_NEWLINK/RTM_DELLINK (dump or notification)."""
    _family, _type, index, flags, _change = IFINFOMSG.unpack_from(data, start)
    name = alias = kind = ""
    parent = 0
    elsewhere = False
    vlan = None
    pos = start + 16  # IFINFOMSG.size
    read = _READ
    unpack_attr = _unpack_attr
    while pos + 4 <= end:
        length, attr_type = unpack_attr(data, pos)
        if length < 4:
            break
        if attr_type in read:
            attr_type &= netlink.NLA_TYPE_MASK
            if attr_type == IFLA_IFNAME:
                name = bytes(data[pos + 4 : pos + length]).rstrip(b"\0").decode()
            elif attr_type == IFLA_IFALIAS:
                alias = bytes(data[pos + 4 : pos + length]).rstrip(b"\0").decode()
            elif attr_type == IFLA_LINK:
                parent = _unpack_u32(data, pos + 4)[0]
            elif attr_type == IFLA_LINK_NETNSID:
                elsewhere = True
            else:  # IFLA_LINKINFO
                info = netlink.parse_attrs(data, pos + 4, pos + length)
                kind = info.get(IFLA_INFO_KIND, b"").rstrip(b"\0").decode()
                if kind == "vlan" and IFLA_INFO_DATA in info:
                    raw = netlink.parse_attrs(info[IFLA_INFO_DATA], 0,
                                              len(info[IFLA_INFO_DATA])).get(IFLA_VLAN_ID)
                    vlan = struct.unpack("=H", raw[:2])[0] if raw else None
        pos += (length + 3) & ~3
    if not name:
        return None
    return ObservedLink(name, index, alias, kind, parent, elsewhere, vlan, bool(flags & IFF_UP))


def as_owned(found: ObservedLink, netns: str, parents: dict[int, str]) -> Link | None:
    """The Link vsnet owns that ``found`` is, or None for a foreign device. ``parents``
    names the parent indexes (the root namespace's for devices inside a VS namespace)."""
    if found.alias == ALIAS:
        if found.type in ("vlan", "macvlan"):
            parent = parents.get(found.parent_index, f"if{found.parent_index}")
            return Link(netns, found.name, found.type, parent, found.vlan, found.up,
                        found.ifindex)
        return Link(netns, found.name, "move", found.name, None, found.up, 0)  # a lent uplink
    if netns and found.name == "lo":
        return Link(netns, "lo", "loopback", None, None, found.up, 0)
    return None


# Every device of a namespace. Without counters (nothing here reads them) each device's
# message is a third of the size: less for the kernel to fill and for decode to walk.
DUMP = netlink.DumpRequest(netlink.RTM_GETLINK, IFINFOMSG.pack(0, 0, 0, 0, 0),
                           netlink.attr_u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS))


def observe(sock: netlink.RtnlSocket) -> list[ObservedLink]:
    """Every device of the namespace of ``sock``."""
    return sock.dump(DUMP, decode)


def observe_links(sock: netlink.RtnlSocket) -> dict[str, int]:
    """Device name -> ifindex for the namespace of ``sock``."""
    return {found.name: found.ifindex for found in observe(sock)}


class LinkKind(Kind[Link]):
    """Devices: dumped first in each namespace (the other kinds name devices by the
    ifindexes it finds); a changed type, parent or VLAN takes a new device."""

    name = "link"
    rebuilds = True
    cascades = True  # the kernel drops the routes through a device without a word
    unique_slots = True  # one device per name
    namespace_dumps: ClassVar[tuple[netlink.DumpRequest, ...]] = (DUMP,)
    notifications: ClassVar[dict[int, bool]] = {netlink.RTM_NEWLINK: False,
                                                netlink.RTM_DELLINK: True}

    def observer(self, look: Looking) -> NamespaceObserver[Link]:
        def devices_in(sock: netlink.RtnlSocket, inside: Inside) -> list[tuple[Link, bool]]:
            netns = inside.netns
            devices = observe(sock)
            names = {found.ifindex: found.name for found in devices}
            inside.names = names
            inside.state.links[netns] = {found.name: found.ifindex for found in devices}
            parents = inside.root_names if netns else names
            seen: list[tuple[Link, bool]] = []
            for found in devices:
                owned = as_owned(found, netns, parents)
                seen.append((owned, True) if owned is not None
                            else (Link(netns, found.name, found.type), False))
            return seen

        return devices_in

    def notified(self, inside: Inside, gone: bool, data: bytearray, start: int, end: int
                 ) -> tuple[Link, bool] | None:
        found = decode(data, start, end)
        if found is None:
            return None
        names = inside.state.links.setdefault(inside.netns, {})
        for name, index in list(names.items()):
            if index == found.ifindex:
                del names[name]  # renamed or gone
                if name != found.name:  # renamed: no device of vsnet's is left at the old
                    # name (kept, a change planned there would reach whatever takes it)
                    inside.state.owned.pop((self.name, (inside.netns, name)), None)
        if not gone:
            names[found.name] = found.ifindex
        owned = as_owned(found, inside.netns, inside.root_names)
        if owned is not None:
            return owned, True
        return Link(inside.netns, found.name, found.type), False

    def rebuilt(self, have: Link, want: Link) -> bool:
        return not want.same_device(have)

    def differs(self, have: Link, want: Link) -> bool:
        # the ifindex vsnet asked for is not part of what a device is
        return not want.same_device(have) or want.up != have.up

    def outlives(self, obj: Link) -> bool:
        return obj.type == "move"  # a lent uplink is handed back when its namespace goes

    def slot(self, obj: Link) -> tuple[str, str] | None:
        # an uplink to lend stands foreign in the root namespace until it is lent, and
        # every VS namespace has its own loopback
        return None if obj.type in ("move", "loopback") else (obj.netns, obj.name)

    def conflict(self, found: Link) -> str:
        where = f" in namespace {found.netns}" if found.netns else ""
        return f"device {found.name}{where} exists and was not created by vsnet"

    def watched(self, server: DesiredServer) -> tuple[tuple[str, str], ...]:
        return (("", server.uplink), (server.netns, server.device))

    def apply(self, applier: Applier, changes: list[Change]) -> None:
        handed_back = [c for c in changes
                       if c.action == "delete" and cast(Link, c.obj).type == "move"]
        if handed_back and len(handed_back) < len(changes):
            # a device may be made on an uplink handed back: it must be back (and its
            # index known in the root namespace) before that device's request is encoded
            self.apply(applier, handed_back)
            back = {id(c) for c in handed_back}
            self.apply(applier, [c for c in changes if id(c) not in back])
            return
        kernel, links = applier.kernel, applier.links

        def encode(change: Change) -> tuple[netlink.RtnlSocket, Request]:
            obj = cast(Link, change.obj)
            root = links.get("", {})
            here = links.get(obj.netns, {})
            if change.action == "delete":
                if obj.type == "move":  # hand the uplink back to the root namespace
                    return kernel.socket(obj.netns), move_request(
                        here[obj.name], kernel.root_fd, "", obj.up)
                # by the index it was seen with, not by its name: a name may have
                # passed to a foreign device since (renamed, and another made)
                return kernel.socket(obj.netns), delete_request(obj.ifindex or here[obj.name])
            if change.action == "replace" or obj.type == "loopback":
                return kernel.socket(obj.netns), set_up_request(here[obj.name], obj.up)
            target = kernel.netns_fd(obj.netns) if obj.netns else None
            if obj.type == "move":
                assert target is not None
                return kernel.root, move_request(root[obj.name], target, ALIAS, obj.up)
            assert obj.parent is not None
            return kernel.root, create_request(obj, root[obj.parent], target)

        def tag(change: Change) -> tuple[netlink.RtnlSocket, Request]:
            obj = cast(Link, change.obj)
            return kernel.socket(obj.netns), alias_request(links[obj.netns][obj.name], ALIAS)

        acknowledged = applier.send(changes, encode)
        created = [c for c in acknowledged
                   if c.action == "add" and cast(Link, c.obj).type in ("vlan", "macvlan")]
        # the ownership tag, in a second request: the kernel ignores it on create. A device
        # counts as applied once tagged (untagged, vsnet would not recognise it as its own).
        untagged = {id(c) for c in created}
        applier.done(c for c in acknowledged if id(c) not in untagged)
        # learn the indexes of devices that appeared where vsnet did not choose them
        touched = {c.obj.netns for c in changes
                   if c.action == "add" and (cast(Link, c.obj).type == "move" or not c.obj.netns)}
        if any(c.action == "delete" and cast(Link, c.obj).type == "move" for c in acknowledged):
            touched.add("")  # an uplink handed back: devices may be made on it next
        for change in created:
            obj = cast(Link, change.obj)
            if obj.netns:
                links.setdefault(obj.netns, {})[obj.name] = obj.ifindex
        for netns in touched:
            try:
                links[netns] = observe_links(kernel.socket(netns))
            except OSError:
                continue
        applier.done(applier.send(created, tag))


KIND = LinkKind()
