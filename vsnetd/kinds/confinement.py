"""Confinement of a pbr VS's unmodified programs: a cgroup and five cgroup-BPF programs.

Per pbr VS, the cgroup ``<cgroup_root>/<vs>`` under the cgroup-v2 mount, with attached:

* ``sock_create`` (``BPF_CGROUP_INET_SOCK_CREATE``): every AF_INET/AF_INET6 socket a process
  of the cgroup creates gets the VS mark, so it routes by the VS's mark table;
* ``bind4`` / ``bind6`` (``BPF_CGROUP_INET4_BIND``, ``BPF_CGROUP_INET6_BIND``): a bind to a
  specific address that is not one of the VS's fails with EPERM before anything is bound,
  with or without a port (``IP_BIND_ADDRESS_NO_PORT`` binds take none); the wildcard and
  loopback (and an IPv4-mapped VS or loopback address on an IPv6 socket) are allowed;
* ``sendmsg4`` / ``sendmsg6`` (``BPF_CGROUP_UDP4_SENDMSG``, ``BPF_CGROUP_UDP6_SENDMSG``): a
  UDP datagram may leave only from an address a bind may take. The kernel hands these
  programs the source the datagram will have: the one its ``IP_PKTINFO``/``IPV6_PKTINFO``
  control message names, else its socket's bound address (checked at bind), else the
  wildcard (the mark table's route chooses). A connected socket sending without control
  messages does not run them: its source was fixed by bind or by the route.

Earlier versions attached ``post_bind4``/``post_bind6`` programs instead of the bind hooks.
The kernel runs those only inside a bind system call, after the bind hook and with the
same address, and only when the bind takes a port (``bpf_bind`` from a program skips
them): the bind hooks see every bind they saw, and the NO_PORT ones too. vsnet's programs
still attached there (``vsnet4_``/``vsnet6_`` names) and their pins are removed
(:data:`RETIRED_HOOKS`). Sockets whose protocol binds and sends by code of its own (raw
sockets, SCTP, ICMP echo "ping" sockets) are not held by these hooks, then as now.

Each program is also pinned at ``<pin_root>/<vs>/<hook>`` so that a systemd unit can attach
it itself (``BPFProgram=sock_create:/sys/fs/bpf/vsnet/<vs>/sock_create``). The programs
are emitted here as bytecode and loaded with the raw ``bpf()`` call
(:mod:`vsnetd.bpf`); the kernel's verifier checks them.

Ownership: vsnet's programs are named ``vsnet<h>_<digest>`` (h: ``c`` for sock_create,
``b``/``B`` for bind4/bind6, ``s``/``S`` for sendmsg4/sendmsg6, ``4``/``6`` for the retired
post_bind ones; digest: the first 8 hex digits of the SHA-256 of the instructions, so the
name says which mark and addresses a program enforces). Programs of other names attached to
the same cgroup are left alone; a pin path holding anything else is a conflict, never
overwritten. Directories: vsnet records under ``/run/vsnet/confinement`` each VS directory
it confines (:func:`ensure`) and each root directory it makes; it looks, and deletes, only
there, and under roots it no longer uses as well, so that turning confinement off or moving
the roots leaves nothing behind. A directory under a root that vsnet has no record of
(another program's cgroup or pins beside vsnet's) is never touched, nor is a root vsnet did
not make, nor a recorded directory that was replaced since (its inode differs).

There are no notifications for BPF attachments: the daemon looks again periodically
(:meth:`ConfinementKind.recheck`).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import socket
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, cast

from vsnetd import bpf
from vsnetd.kinds.kind import Applier, Kind, Looking, Owners

if TYPE_CHECKING:
    from vsnetd.state import Change, DesiredServer, ObservedState, Scope


class Hook(NamedTuple):
    """Where a program is attached, how it is loaded for it, and the letter its name has."""

    attach_type: int
    prog_type: int
    letter: str


HOOK = {
    "sock_create": Hook(bpf.BPF_CGROUP_INET_SOCK_CREATE, bpf.BPF_PROG_TYPE_CGROUP_SOCK, "c"),
    "bind4": Hook(bpf.BPF_CGROUP_INET4_BIND, bpf.BPF_PROG_TYPE_CGROUP_SOCK_ADDR, "b"),
    "bind6": Hook(bpf.BPF_CGROUP_INET6_BIND, bpf.BPF_PROG_TYPE_CGROUP_SOCK_ADDR, "B"),
    "sendmsg4": Hook(bpf.BPF_CGROUP_UDP4_SENDMSG, bpf.BPF_PROG_TYPE_CGROUP_SOCK_ADDR, "s"),
    "sendmsg6": Hook(bpf.BPF_CGROUP_UDP6_SENDMSG, bpf.BPF_PROG_TYPE_CGROUP_SOCK_ADDR, "S"),
    # attached by earlier versions: only ever detached and unpinned now
    "post_bind4": Hook(bpf.BPF_CGROUP_INET4_POST_BIND, bpf.BPF_PROG_TYPE_CGROUP_SOCK, "4"),
    "post_bind6": Hook(bpf.BPF_CGROUP_INET6_POST_BIND, bpf.BPF_PROG_TYPE_CGROUP_SOCK, "6"),
}
HOOKS = ("sock_create", "bind4", "bind6", "sendmsg4", "sendmsg6")  # attached and pinned
RETIRED_HOOKS = ("post_bind4", "post_bind6")
NAME_PREFIX = "vsnet"
LICENSE = "GPL"  # the programs use no helper at all; any string would load

# struct bpf_sock (linux/bpf.h): the fields sock_create reads or writes
SOCK_FAMILY, SOCK_MARK = 4, 16
# struct bpf_sock_addr (linux/bpf.h): the addresses the bind and sendmsg programs read
# (user_ip4, user_ip6[4]: the address bound; msg_src_ip4, msg_src_ip6[4]: a datagram's source)
ADDR_USER_IP4, ADDR_USER_IP6, ADDR_MSG_SRC_IP4, ADDR_MSG_SRC_IP6 = 4, 8, 40, 44

PROC_MOUNTS = Path("/proc/self/mounts")

# What vsnet made or confined, by tree ("cgroup": paths relative to the cgroup-v2 mount;
# "pins": absolute paths) and root: RECORD_DIR/<tree>/<root, "/" written %2F>/ holds a
# file per VS directory (its name; its inode inside) and MADE_RECORD (the directories
# vsnet made to reach the root, "<inode> <path>" a line, outermost first).
RECORD_DIR = Path("/run/vsnet/confinement")
MADE_RECORD = ".made"  # no VS name starts with a dot
TREES = ("cgroup", "pins")

# (hook, digests of vsnet's programs attached there in the kernel's order, digest pinned)
HookState = tuple[str, tuple[str, ...], str]


class Confinement(NamedTuple):
    server: str
    # where, relative to the cgroup-v2 mount: "vsnet/nas1"; "" in what vsnet left under a
    # former pin root (the cgroup is not part of it)
    cgroup: str
    pins: str  # "/sys/fs/bpf/vsnet/nas1"; "" in what vsnet left under a former cgroup root
    programs: tuple[HookState, ...]
    # What the programs enforce (desired objects only; the digests in ``programs`` stand
    # for them in comparisons, as the kernel cannot say which mark a program sets)
    mark: int = 0
    addresses: tuple[str, ...] = ()

    def _compared(self) -> tuple[str, str, str, tuple[HookState, ...]]:
        return (self.server, self.cgroup, self.pins, self.programs)

    def __eq__(self, other: object) -> bool:
        return type(other) is Confinement and self._compared() == other._compared()

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash(self._compared())

    @property
    def kind(self) -> Literal["confinement"]:
        return "confinement"

    @property
    def key(self) -> tuple[str, str, str]:
        # the places are part of the identity: after a change of roots, the VS's
        # confinement at the new ones is made and what is left at the old ones deleted
        return (self.server, self.cgroup, self.pins)

    @property
    def netns(self) -> str:
        return ""  # cgroups and pins are not per network namespace

    def describe(self) -> str:
        words = [f"confinement {self.server}: "
                 + (f"cgroup {self.cgroup}" if self.cgroup else f"pins {self.pins}")]
        if self.addresses or self.mark:
            words.append(f"mark {self.mark:#x}, binds {' '.join(self.addresses) or '-'}")
        else:
            words.append(", ".join(
                f"{hook} {'+'.join(attached) or 'detached'}"
                f"{'' if pinned and attached[:1] == (pinned,) else ' unpinned'}"
                for hook, attached, pinned in self.programs))
        return ", ".join(words)

    def as_json(self) -> dict[str, Any]:
        return {"kind": "confinement", "server": self.server, "cgroup": self.cgroup,
                "pins": self.pins, "mark": self.mark, "addresses": list(self.addresses),
                "programs": [{"hook": hook, "attached": list(attached), "pinned": pinned}
                             for hook, attached, pinned in self.programs]}


# ----------------------------------------------------------------------- the programs


def _word(raw: bytes) -> int:
    """Four bytes of an address as the kernel's u32 load of them reads (host order)."""
    return int.from_bytes(raw, sys.byteorder)


def sock_create_program(mark: int) -> bytes:
    r"""``if (family == AF_INET || family == AF_INET6) sk->mark = mark; return 1;``"""
    return b"".join([
        bpf.load32(2, 1, SOCK_FAMILY),
        bpf.jump32_imm(bpf.BPF_JEQ, 2, socket.AF_INET, 1),
        bpf.jump32_imm(bpf.BPF_JNE, 2, socket.AF_INET6, 2),
        bpf.mov32_imm(2, mark),
        bpf.store32(1, SOCK_MARK, 2),
        bpf.mov64_imm(0, 1),
        bpf.exit_(),
    ])


# An allowed address: per 32-bit word of the address, (value, mask) in host order.
Pattern = tuple[tuple[int, int], ...]


def _pattern(packed: bytes, prefix: int) -> Pattern:
    bits = len(packed) * 8
    mask = ((1 << bits) - 1) ^ ((1 << (bits - prefix)) - 1)
    mask_bytes = mask.to_bytes(len(packed), "big")
    return tuple((_word(bytes(a & m for a, m in zip(packed[i:i + 4], mask_bytes[i:i + 4],
                                                     strict=True))),
                  _word(mask_bytes[i:i + 4]))
                 for i in range(0, len(packed), 4))


def _address_program(offset: int, patterns: list[Pattern]) -> bytes:
    """Return 1 (allow) when the address at ``offset`` of the context matches one of
    ``patterns``, else 0 (the kernel refuses the bind or the datagram with EPERM). Words go
    to r2..r5; r6 is scratch."""
    words = len(patterns[0])
    head = [bpf.load32(2 + i, 1, offset + 4 * i) for i in range(words)]
    body: list[bytes | str | tuple[int, int, int, str]] = []  # labels; jumps resolved below
    for index, pattern in enumerate(patterns):
        following = f"next{index}"
        checks = [(i, value, mask) for i, (value, mask) in enumerate(pattern) if mask]
        for position, (i, value, mask) in enumerate(checks):
            register = 2 + i
            if mask != 0xFFFFFFFF:
                body.append(bpf.insn(bpf.BPF_ALU | bpf.BPF_MOV | bpf.BPF_X, 6, 2 + i))
                body.append(bpf.and32_imm(6, mask))
                register = 6
            if position == len(checks) - 1:
                body.append((bpf.BPF_JEQ, register, value, "allow"))
            else:
                body.append((bpf.BPF_JNE, register, value, following))
        body.append(following)
    tail = [bpf.mov64_imm(0, 0), bpf.exit_()]
    labels: dict[str, int] = {}
    position = len(head)
    for item in body:
        if isinstance(item, str):
            labels[item] = position
        else:
            position += 1
    labels["allow"] = position + len(tail)
    code = list(head)
    position = len(head)
    for item in body:
        if isinstance(item, str):
            continue
        if isinstance(item, tuple):
            op, register, value, label = item
            code.append(bpf.jump32_imm(op, register, value, labels[label] - position - 1))
        else:
            code.append(item)
        position += 1
    return b"".join([*code, *tail, bpf.mov64_imm(0, 1), bpf.exit_()])


def _ipv4(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET, text)


def _mapped(packed4: bytes) -> bytes:
    return b"\0" * 10 + b"\xff\xff" + packed4


def allowed4(addresses: tuple[str, ...]) -> list[Pattern]:
    """The IPv4 addresses a process of the VS may bind or send from: the wildcard,
    loopback, the VS's own."""
    patterns = [_pattern(_ipv4("0.0.0.0"), 32), _pattern(_ipv4("127.0.0.0"), 8)]
    patterns += [_pattern(_ipv4(a), 32) for a in addresses if ":" not in a]
    return patterns


def allowed6(addresses: tuple[str, ...]) -> list[Pattern]:
    """The same on IPv6 sockets: ``::``, ``::1``, the VS's IPv6 addresses, and the
    IPv4-mapped forms of the IPv4 ones (an IPv6 socket binds and sends to IPv4 that way)."""
    patterns = [_pattern(bytes(16), 128), _pattern(socket.inet_pton(socket.AF_INET6, "::1"), 128),
                _pattern(_mapped(_ipv4("0.0.0.0")), 128),
                _pattern(_mapped(_ipv4("127.0.0.0")), 104)]
    for address in addresses:
        if ":" in address:
            patterns.append(_pattern(socket.inet_pton(socket.AF_INET6, address), 128))
        else:
            patterns.append(_pattern(_mapped(_ipv4(address)), 128))
    return patterns


@functools.lru_cache(maxsize=4096)  # compile and then apply ask for the same VS's
def programs_of(mark: int, addresses: tuple[str, ...]) -> dict[str, bytes]:
    v4, v6 = allowed4(addresses), allowed6(addresses)
    return {"sock_create": sock_create_program(mark),
            "bind4": _address_program(ADDR_USER_IP4, v4),
            "bind6": _address_program(ADDR_USER_IP6, v6),
            "sendmsg4": _address_program(ADDR_MSG_SRC_IP4, v4),
            "sendmsg6": _address_program(ADDR_MSG_SRC_IP6, v6)}


def digest(code: bytes) -> str:
    import hashlib  # loads OpenSSL (~4 ms): only a config with confinement needs it

    return hashlib.sha256(code).hexdigest()[:8]


def program_name(hook: str, code: bytes) -> str:
    return f"{NAME_PREFIX}{HOOK[hook].letter}_{digest(code)}"


def _ours(hook: str, name: str) -> str | None:
    """The digest in the name of one of vsnet's programs for ``hook``, else None."""
    prefix = f"{NAME_PREFIX}{HOOK[hook].letter}_"
    if name.startswith(prefix) and len(name) == len(prefix) + 8:
        return name[len(prefix):]
    return None


def desired(server: str, cgroup_root: str, pin_root: str, mark: int,
            addresses: tuple[str, ...]) -> Confinement:
    codes = programs_of(mark, addresses)
    return Confinement(
        server=server, cgroup=f"{cgroup_root.strip('/')}/{server}",
        pins=f"{pin_root.rstrip('/')}/{server}",
        programs=tuple((hook, (digest(codes[hook]),), digest(codes[hook])) for hook in HOOKS),
        mark=mark, addresses=addresses)


# ----------------------------------------------------------------------- where


def _mounts() -> list[tuple[str, str]]:
    mounts = []
    with contextlib.suppress(OSError):
        for line in PROC_MOUNTS.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 3:
                mounts.append((fields[1].replace("\\040", " "), fields[2]))
    return mounts


def cgroup2_mount() -> Path | None:
    """Where the cgroup-v2 hierarchy is mounted (``/sys/fs/cgroup``, or
    ``/sys/fs/cgroup/unified`` on hybrid hosts)."""
    for point, fstype in _mounts():
        if fstype == "cgroup2":
            return Path(point)
    return None


def _filesystem_of(path: str) -> str | None:
    best, fstype = "", None
    for point, kind in _mounts():
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, fstype = point, kind
    return fstype


_bpf_refusal: list[str] = []  # the probe's answer, once per process


def probe_bpf() -> str | None:
    if not _bpf_refusal:
        try:
            fd = bpf.prog_load(sock_create_program(1), "vsnet_probe", bpf.BPF_PROG_TYPE_CGROUP_SOCK,
                               bpf.BPF_CGROUP_INET_SOCK_CREATE, LICENSE)
        except OSError as exc:
            _bpf_refusal.append(f"the kernel refuses cgroup BPF programs "
                                f"({os.strerror(exc.errno or 0)})")
        else:
            os.close(fd)
            _bpf_refusal.append("")
    return _bpf_refusal[0] or None


def unavailable(pin_root: str | None) -> str | None:
    """What this machine lacks for confinement, in words for status, or None. Without a
    ``pin_root``: what looking at (and deleting) what vsnet left takes."""
    if cgroup2_mount() is None:
        return "cgroup v2 is not mounted"
    if pin_root is not None and _filesystem_of(pin_root) != "bpf":
        return f"{pin_root} is not on a bpf filesystem (mount -t bpf bpf /sys/fs/bpf)"
    return probe_bpf()


def cgroup_path(obj: Confinement) -> Path:
    mount = cgroup2_mount()
    if mount is None:
        raise OSError(errno.ENOENT, "cgroup v2 is not mounted")
    return mount / obj.cgroup


@contextlib.contextmanager
def _opened(fd: int) -> Iterator[int]:
    try:
        yield fd
    finally:
        os.close(fd)


def _open_dir(path: Path | str) -> int | None:
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _split(place: str) -> tuple[str, str]:
    """(root, VS name) of a VS directory: "vsnet/nas1" -> ("vsnet", "nas1")."""
    root, _, name = place.rpartition("/")
    return root, name


# ----------------------------------------------------------------------- records


def record_dir(tree: str, root: str) -> Path:
    return RECORD_DIR / tree / root.replace("%", "%25").replace("/", "%2F")


def _root_of_record(entry: str) -> str:
    return entry.replace("%2F", "/").replace("%25", "%")


def recorded() -> dict[str, dict[str, set[str]]]:
    """The VS directories vsnet recorded, by tree and root: one directory read per root."""
    found: dict[str, dict[str, set[str]]] = {}
    for tree in TREES:
        roots = found[tree] = {}
        try:
            entries = os.listdir(RECORD_DIR / tree)
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                roots[_root_of_record(entry)] = {
                    name for name in os.listdir(RECORD_DIR / tree / entry)
                    if not name.startswith(".")}
    return found


def _recorded_inode(tree: str, root: str, name: str) -> int | None:
    try:
        return int((record_dir(tree, root) / name).read_text())
    except (OSError, ValueError):
        return None


def _record(tree: str, root: str, name: str, inode: int) -> None:
    record = record_dir(tree, root)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
    try:
        fd = os.open(record / name, flags, 0o644)
    except FileNotFoundError:  # the first VS recorded under this root
        record.mkdir(parents=True, exist_ok=True)
        fd = os.open(record / name, flags, 0o644)
    with _opened(fd):
        os.write(fd, f"{inode}\n".encode())


def _make_root(tree: str, root: str, base: Path) -> None:
    """Make the root's directories that are missing, recording each one made."""
    made: list[str] = []
    path = base
    for part in root.strip("/").split("/"):
        path = path / part
        try:
            path.mkdir()
        except FileExistsError:
            continue
        made.append(f"{path.stat().st_ino} {path.relative_to(base)}\n")
    if made:
        record = record_dir(tree, root)
        record.mkdir(parents=True, exist_ok=True)
        with open(record / MADE_RECORD, "a") as file:
            file.writelines(made)


def _made(record: Path) -> list[tuple[int, str]]:
    made = []
    with contextlib.suppress(FileNotFoundError):
        for line in (record / MADE_RECORD).read_text().splitlines():
            inode, _, relative = line.partition(" ")
            if inode.isdigit() and relative:
                made.append((int(inode), relative))
    return made


def _forget(tree: str, root: str, name: str, base: Path) -> None:
    """Drop the record of a VS directory (gone, or no longer vsnet's); the last one of a
    root takes with it the directories vsnet made for the root, those that are empty."""
    record = record_dir(tree, root)
    with contextlib.suppress(FileNotFoundError):
        (record / name).unlink()
    try:
        if any(not entry.startswith(".") for entry in os.listdir(record)):
            return  # other VS are recorded under this root
    except FileNotFoundError:
        return
    made = _made(record)
    kept = list(made)
    for inode, relative in reversed(made):  # innermost first
        path = base / relative
        if tree == "cgroup" and _holds_programs(path):
            break  # someone else's programs are attached to the root: it stays
        try:
            if os.lstat(path).st_ino == inode:
                path.rmdir()
        except FileNotFoundError:
            pass
        except OSError:  # ENOTEMPTY, EBUSY: someone else's entries are in it now
            break
        kept.pop()
    if kept:
        (record / MADE_RECORD).write_text("".join(f"{i} {p}\n" for i, p in kept))
        return
    with contextlib.suppress(FileNotFoundError):
        (record / MADE_RECORD).unlink()
    with contextlib.suppress(OSError):  # a VS recorded meanwhile keeps it
        record.rmdir()


# ----------------------------------------------------------------------- observe


def _attached(cgroup_fd: int, hook: str) -> list[tuple[int, str | None]]:
    """(program id, digest if it is vsnet's) for what is attached at ``hook``."""
    found = []
    ids, _revision = bpf.prog_query(cgroup_fd, HOOK[hook].attach_type)
    for prog_id in ids:
        try:
            with _opened(bpf.prog_fd_by_id(prog_id)) as fd:
                info = bpf.prog_info(fd)
        except OSError:  # detached and freed meanwhile
            continue
        found.append((prog_id, _ours(hook, info.name)))
    return found


def _pinned(path: str, hook: str) -> tuple[str, str | None]:
    """(digest of vsnet's program pinned there or "", why the path is foreign or None)."""
    try:
        fd = bpf.obj_get(path)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return "", None
        return "", f"pin {path} cannot be opened ({os.strerror(exc.errno or 0)})"
    with _opened(fd):
        try:
            info = bpf.prog_info(fd)
        except OSError:
            return "", f"pin {path} is not a program"
    name = _ours(hook, info.name) if info.type == HOOK[hook].prog_type else None
    if name is None:
        return "", f"pin {path} holds program {info.name or info.id} (not vsnet's)"
    return name, None


def _pin_entries(pins: str) -> set[str] | None:
    try:
        return set(os.listdir(pins))
    except (FileNotFoundError, NotADirectoryError):
        return None


def observe_one(server: str, cgroup: str, pins: str, mount: Path | None
                ) -> tuple[Confinement | None, str | None]:
    """vsnet's confinement of ``server`` at the cgroup ``cgroup`` (relative to ``mount``,
    :func:`cgroup2_mount` looked up once per pass) and the pin directory ``pins`` ("": not
    looked at) as the kernel has it (None: neither directory exists), and why something
    there is foreign (or None). The retired hooks are listed only when vsnet's programs
    are still there."""
    cgroup_fd = _open_dir(mount / cgroup) if mount is not None and cgroup else None
    entries = _pin_entries(pins) if pins else None
    if cgroup_fd is None and entries is None:
        return None, None
    programs: list[HookState] = []
    foreign: str | None = None
    try:
        for hook in HOOKS + RETIRED_HOOKS:
            attached: tuple[str, ...] = ()
            if cgroup_fd is not None:
                attached = tuple(d for _id, d in _attached(cgroup_fd, hook) if d is not None)
            pinned, why = "", None
            if entries is not None and hook in entries:
                pinned, why = _pinned(f"{pins}/{hook}", hook)
            if hook in RETIRED_HOOKS:
                if attached or pinned:
                    programs.append((hook, attached, pinned))
                continue  # something else at a retired path is in nobody's way
            foreign = foreign or why
            programs.append((hook, attached, pinned))
    finally:
        if cgroup_fd is not None:
            os.close(cgroup_fd)
    return Confinement(server, cgroup, pins, tuple(programs)), foreign


def _nothing(server: str, cgroup: str, pins: str) -> Confinement:
    """A recorded VS whose directories are gone: only the record is left to delete."""
    return Confinement(server, cgroup, pins, tuple((hook, (), "") for hook in HOOKS))


def observe(cgroup_root: str | None, pin_root: str,
            records: dict[str, dict[str, set[str]]] | None = None
            ) -> list[tuple[Confinement | None, str, str | None]]:
    """What vsnet confined, as (what is there, VS name, why something there is foreign):
    each recorded VS under the configured roots (``cgroup_root`` None: confinement is off)
    and, apart, what it left under roots it used before; for the other directories under
    the configured pin root, only whether a foreign pin stands at a VS's pin path.
    ``records``: :func:`recorded`, if read already."""
    mount = cgroup2_mount()
    records = recorded() if records is None else records
    found: list[tuple[Confinement | None, str, str | None]] = []
    cgroups, pins = "", ""
    if cgroup_root is not None:
        cgroups, pins = cgroup_root.strip("/"), pin_root.rstrip("/")
        names = records["cgroup"].pop(cgroups, set()) | records["pins"].pop(pins, set())
        for name in sorted(names):
            cgroup, pin_dir = f"{cgroups}/{name}", f"{pins}/{name}"
            obj, foreign = observe_one(name, cgroup, pin_dir, mount)
            found.append((obj or _nothing(name, cgroup, pin_dir), name, foreign))
        with contextlib.suppress(FileNotFoundError, NotADirectoryError), os.scandir(pins) as it:
            others = sorted(entry.name for entry in it
                            if entry.is_dir(follow_symlinks=False) and entry.name not in names)
            for name in others:
                _obj, foreign = observe_one(name, "", f"{pins}/{name}", None)
                if foreign is not None:
                    found.append((None, name, foreign))
    for root, names in sorted(records["cgroup"].items()):
        for name in sorted(names):
            obj, _foreign = observe_one(name, f"{root}/{name}", "", mount)
            found.append((obj or _nothing(name, f"{root}/{name}", ""), name, None))
    for root, names in sorted(records["pins"].items()):
        for name in sorted(names):
            obj, _foreign = observe_one(name, "", f"{root}/{name}", mount)
            found.append((obj or _nothing(name, "", f"{root}/{name}"), name, None))
    return found


def signature(server: str, cgroup_root: str, pin_root: str, mount: Path | None
              ) -> tuple[Any, ...]:
    """Cheap to read, and changes whenever what :func:`observe_one` sees may have changed:
    the cgroup's inode, the ids attached at each hook, the pins' inodes. (Not the retired
    hooks: nothing attaches there any more; the full look finds what an earlier version
    left.)"""
    parts: list[Any] = []
    cgroup_fd = _open_dir(mount / cgroup_root.strip("/") / server) if mount else None
    if cgroup_fd is not None:
        with _opened(cgroup_fd):
            parts.append(os.fstat(cgroup_fd).st_ino)
            parts.extend(tuple(bpf.prog_query(cgroup_fd, HOOK[hook].attach_type)[0])
                         for hook in HOOKS)
    try:  # one directory read rather than a stat per pin
        with os.scandir(f"{pin_root.rstrip('/')}/{server}") as entries:
            parts.append(tuple(sorted((entry.name, entry.inode()) for entry in entries)))
    except OSError:
        parts.append(None)
    return tuple(parts)


def of(objects: Iterable[object]) -> Confinement | None:
    """The confinement among a VS's desired objects (pbr with confinement on), or None."""
    return next((obj for obj in objects if isinstance(obj, Confinement)), None)


# ----------------------------------------------------------------------- apply


def ensure(obj: Confinement) -> None:
    """Make the kernel hold ``obj``: the cgroup, each program attached once, pinned; the
    directories recorded as vsnet's.

    A program whose mark or addresses changed is swapped atomically (``BPF_F_REPLACE``: no
    socket is created between without one); stray copies of vsnet's are detached, and so
    are the retired post_bind programs once the bind hooks are in place; programs of other
    names stay as they are.
    """
    mount = cgroup2_mount()
    if mount is None:
        raise OSError(errno.ENOENT, "cgroup v2 is not mounted")
    # recorded before anything is attached: whatever follows, the records lead to it
    _make_recorded("pins", obj.pins, Path("/"))
    _make_recorded("cgroup", obj.cgroup, mount)
    codes = programs_of(obj.mark, obj.addresses)
    with _opened(os.open(mount / obj.cgroup, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                 ) as cgroup_fd:
        for hook in HOOKS:
            _ensure_hook(cgroup_fd, obj, hook, codes[hook])
        entries = _pin_entries(obj.pins) or set()
        for hook in RETIRED_HOOKS:
            _detach_ours(cgroup_fd, hook)
            if hook in entries or f"{hook}_new" in entries:
                _unpin_ours(obj.pins, hook)


def _make_recorded(tree: str, place: str, base: Path) -> None:
    """Make the VS directory ``place`` (under ``base``) if it is missing, its root too, and
    record it as vsnet's: made here, or standing where the config puts a VS's."""
    root, name = _split(place)
    path = base / place
    try:
        path.mkdir()
    except FileExistsError:
        pass
    except FileNotFoundError:  # the root is missing
        _make_root(tree, root, base)
        with contextlib.suppress(FileExistsError):
            path.mkdir()
    _record(tree, root, name, os.lstat(path).st_ino)


def _ensure_hook(cgroup_fd: int, obj: Confinement, hook: str, code: bytes) -> None:
    attach_type = HOOK[hook].attach_type
    wanted = digest(code)
    fds: list[int] = []
    try:
        ours: list[tuple[int, str]] = []  # (fd, digest)
        for prog_id, found in _attached(cgroup_fd, hook):
            if found is not None:
                with contextlib.suppress(OSError):
                    fds.append(bpf.prog_fd_by_id(prog_id))
                    ours.append((fds[-1], found))
        keep = next((fd for fd, found in ours if found == wanted), None)
        if keep is None:
            keep = _pinned_fd(obj, hook, wanted)  # detached by hand: the pinned one again
            if keep is None:
                keep = bpf.prog_load(code, program_name(hook, code), HOOK[hook].prog_type,
                                     attach_type, LICENSE)
            fds.append(keep)
            replaced = ours[0][0] if ours else None
            bpf.prog_attach(cgroup_fd, keep, attach_type, replace_fd=replaced)
            ours = [(fd, found) for fd, found in ours if fd != replaced]
        for fd, _found in ours:
            if fd != keep:
                with contextlib.suppress(FileNotFoundError):  # ENOENT: gone meanwhile
                    bpf.prog_detach(cgroup_fd, fd, attach_type)
        _pin(obj, hook, keep, wanted)
    finally:
        for fd in fds:
            os.close(fd)


def _pinned_fd(obj: Confinement, hook: str, wanted: str) -> int | None:
    path = f"{obj.pins}/{hook}"
    pinned, _foreign = _pinned(path, hook)
    if pinned != wanted:
        return None
    try:
        return bpf.obj_get(path)
    except OSError:
        return None


def _pin(obj: Confinement, hook: str, fd: int, wanted: str) -> None:
    path = f"{obj.pins}/{hook}"
    pinned, foreign = _pinned(path, hook)
    if foreign is not None:
        raise OSError(errno.EEXIST, foreign)
    if pinned == wanted:
        return
    # pinned beside, then renamed over: a reader of the path finds the old program or
    # the new one, never none
    partial = f"{obj.pins}/{hook}_new"  # no dots: bpffs refuses them in names
    with contextlib.suppress(FileNotFoundError):
        os.unlink(partial)
    bpf.obj_pin(fd, partial)
    os.rename(partial, path)


def _detach_ours(cgroup_fd: int, hook: str) -> list[str]:
    """Detach vsnet's programs at ``hook``; the others there, as "<id> at <hook>"."""
    strangers = []
    for prog_id, mine in _attached(cgroup_fd, hook):
        if mine is None:
            strangers.append(f"{prog_id} at {hook}")
            continue
        with contextlib.suppress(FileNotFoundError), _opened(bpf.prog_fd_by_id(prog_id)) as fd:
            bpf.prog_detach(cgroup_fd, fd, HOOK[hook].attach_type)
    return strangers


def _unpin_ours(pins: str, hook: str) -> None:
    """Remove the pin of ``hook`` and its half-made replacement, if they hold vsnet's."""
    for path in (f"{pins}/{hook}", f"{pins}/{hook}_new"):
        pinned, foreign = _pinned(path, hook)
        if pinned and foreign is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def _is_recorded(tree: str, place: str, inode: int) -> bool:
    root, name = _split(place)
    return _recorded_inode(tree, root, name) == inode


def delete(obj: Confinement) -> None:
    """Unpin vsnet's programs, detach them, remove the pin directory and the cgroup, and
    forget them (the roots too, once empty, if vsnet made them). Only directories recorded
    as vsnet's are touched: one replaced since is left alone, its record dropped. A cgroup
    that still has processes is left as it is, pins and all, its programs still confining
    them; one with programs vsnet did not attach (removing it would detach them) stays
    once vsnet's are detached: errors naming it, retried."""
    mount = cgroup2_mount()
    if obj.cgroup and mount is not None:
        path = mount / obj.cgroup
        cgroup_fd = _open_dir(path)
        if cgroup_fd is not None:
            with _opened(cgroup_fd):
                ours = _is_recorded("cgroup", obj.cgroup, os.fstat(cgroup_fd).st_ino)
            if ours and _populated(path):
                raise _still_busy(path)
    if obj.pins:
        _delete_pins(obj.pins)
    if obj.cgroup and mount is not None:
        _delete_cgroup(obj.cgroup, mount)


def _still_busy(path: Path) -> OSError:
    return OSError(errno.EBUSY, f"cgroup {path} still has processes (see {path}/cgroup.procs): "
                                f"stop or move them")


def _delete_cgroup(cgroup: str, mount: Path) -> None:
    root, name = _split(cgroup)
    path = mount / cgroup
    cgroup_fd = _open_dir(path)
    if cgroup_fd is not None:
        with _opened(cgroup_fd):
            if not _is_recorded("cgroup", cgroup, os.fstat(cgroup_fd).st_ino):
                _forget("cgroup", root, name, mount)
                return
            strangers = [stranger for hook in HOOKS + RETIRED_HOOKS
                         for stranger in _detach_ours(cgroup_fd, hook)]
            strangers += _attached_elsewhere(cgroup_fd)
        if strangers:
            raise OSError(errno.EBUSY, f"cgroup {path} holds programs vsnet did not attach "
                                       f"({', '.join(strangers)}): detach them first")
        try:
            path.rmdir()
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno == errno.EBUSY:  # a process came in meanwhile
                raise _still_busy(path) from None
            if exc.errno == errno.ENOTEMPTY:
                raise OSError(errno.ENOTEMPTY, f"cgroup {path} holds cgroups vsnet did not "
                                               f"make: remove them first") from None
            raise
    _forget("cgroup", root, name, mount)


def _attached_elsewhere(cgroup_fd: int) -> list[str]:
    """Programs attached to the cgroup at attach points vsnet does not use, as "<id> at
    attach type <n>": removing the cgroup would detach them."""
    ours = {HOOK[hook].attach_type for hook in HOOKS + RETIRED_HOOKS}
    found: list[str] = []
    for attach_type in bpf.CGROUP_ATTACH_TYPES:
        if attach_type in ours:
            continue
        try:
            ids, _revision = bpf.prog_query(cgroup_fd, attach_type)
        except OSError:  # a type this kernel does not know (or cannot query here)
            continue
        found.extend(f"{prog_id} at attach type {attach_type}" for prog_id in ids)
    return found


def _holds_programs(path: Path) -> bool:
    """Whether anything is attached to the cgroup ``path`` (removing it would detach it)."""
    cgroup_fd = _open_dir(path)
    if cgroup_fd is None:
        return False
    with _opened(cgroup_fd):
        return bool(_attached_elsewhere(cgroup_fd)) or any(
            _attached(cgroup_fd, hook) for hook in HOOKS + RETIRED_HOOKS)


def _populated(path: Path) -> bool:
    """Whether a process is in the cgroup or below it."""
    try:
        return "populated 1" in (path / "cgroup.events").read_text().splitlines()
    except OSError:
        return False


def _delete_pins(pins: str) -> None:
    root, name = _split(pins)
    try:
        inode = os.lstat(pins).st_ino
    except FileNotFoundError:
        inode = None
    if inode is not None:
        if not _is_recorded("pins", pins, inode):
            _forget("pins", root, name, Path("/"))
            return
        for hook in HOOKS + RETIRED_HOOKS:
            _unpin_ours(pins, hook)
        try:
            os.rmdir(pins)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno == errno.ENOTEMPTY:
                raise OSError(errno.ENOTEMPTY, f"{pins} holds entries vsnet did not make: "
                                               f"remove them first") from None
            raise
    _forget("pins", root, name, Path("/"))


def enter(obj_cgroup: str, pid: int = 0) -> None:
    """Move process ``pid`` (0: the caller) into the cgroup (relative to the cgroup-v2
    mount); its children are born there."""
    mount = cgroup2_mount()
    if mount is None:
        raise OSError(errno.ENOENT, "cgroup v2 is not mounted")
    (mount / obj_cgroup / "cgroup.procs").write_text(f"{pid or os.getpid()}\n")


class ForeignPins(NamedTuple):
    """Something at a VS's pin path that is not vsnet's program: its VS is a conflict."""

    server: str
    why: str

    @property
    def kind(self) -> Literal["confinement"]:
        return "confinement"

    @property
    def key(self) -> tuple[str]:
        return (self.server,)

    @property
    def netns(self) -> str:
        return ""

    def describe(self) -> str:
        return self.why


class ConfinementKind(Kind[Confinement]):
    """Cgroups and BPF programs: not per network namespace, looked at once per pass when
    the machine has what they take, and polled (the kernel sends no notifications)."""

    name = "confinement"
    unavailable_note = "not confined"

    def observe_machine(self, look: Looking) -> None:
        scope, state = look.scope, look.state
        records = recorded()
        if scope.cgroup_root is None and not any(records.values()):
            return  # off, and nothing left from when it was on
        missing = unavailable(scope.pin_root if scope.cgroup_root is not None else None)
        if missing is not None:
            state.unavailable[self.name] = missing
            return
        for found, server, foreign in observe(scope.cgroup_root, scope.pin_root, records):
            if found is not None:
                state.add(found)
            if foreign is not None:
                state.add_foreign(ForeignPins(server, foreign))

    def recheck(self, scope: Scope, servers: Iterable[DesiredServer], state: ObservedState,
                seen: dict[Any, tuple[Any, ...]]) -> list[Confinement]:
        changed: list[Confinement] = []
        if scope.cgroup_root is None or self.name in state.unavailable:
            return changed
        mount = cgroup2_mount()
        cgroups, pins = scope.cgroup_root.strip("/"), scope.pin_root.rstrip("/")
        for server in servers:
            if server.mode != "pbr":
                continue
            key = (self.name, (server.name, f"{cgroups}/{server.name}", f"{pins}/{server.name}"))
            wanted = cast("Confinement | None", server.keyed.get(key))
            if wanted is None:
                continue
            now = signature(server.name, scope.cgroup_root, scope.pin_root, mount)
            if seen.get(key) == now:
                continue
            seen[key] = now
            found, foreign = observe_one(server.name, wanted.cgroup, wanted.pins, mount)
            stranger = ForeignPins(server.name, foreign) if foreign is not None else None
            before = state.foreign.get(self.name, {}).get((server.name,))
            if found == state.owned.get(key) and before == ([stranger] if stranger else None):
                continue
            if found is None:
                state.owned.pop(key, None)
            else:
                state.add(found)
            state.clear_foreign(self.name, (server.name,))
            if stranger is not None:
                state.add_foreign(stranger)
            changed.append(found or wanted)
        return changed

    def owner(self, obj: Confinement, owners: Owners) -> str | None:
        return obj.server

    def slot(self, obj: Confinement | ForeignPins) -> tuple[str]:
        return (obj.server,)

    def conflict(self, found: ForeignPins) -> str:
        return found.why

    def apply(self, applier: Applier, changes: list[Change]) -> None:
        def change_one(change: Change) -> None:
            obj = cast(Confinement, change.obj)
            if change.action == "delete":
                delete(obj)
            else:
                ensure(obj)

        applier.each(changes, change_one)


KIND = ConfinementKind()
