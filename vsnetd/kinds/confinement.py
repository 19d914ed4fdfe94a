"""Confinement of a pbr VS's unmodified programs: a cgroup and three cgroup-BPF programs.

Per pbr VS, the cgroup ``<cgroup_root>/<vs>`` under the cgroup-v2 mount, with attached:

* ``sock_create`` (``BPF_CGROUP_INET_SOCK_CREATE``): every AF_INET/AF_INET6 socket a process
  of the cgroup creates gets the VS mark, so it routes by the VS's mark table;
* ``post_bind4`` / ``post_bind6``: a bind to a specific address that is not one of the
  VS's fails with EPERM; the wildcard and loopback (and an IPv4-mapped VS or loopback
  address on an IPv6 socket) are allowed.

Each program is also pinned at ``<pin_root>/<vs>/<hook>`` so that a systemd unit can attach
it itself (``BPFProgram=sock_create:/sys/fs/bpf/vsnet/<vs>/sock_create``). The programs
are emitted here as bytecode and loaded with the raw ``bpf()`` call
(:mod:`vsnetd.bpf`); the kernel's verifier checks them.

Ownership: vsnet's programs are named ``vsnet<h>_<digest>`` (h: ``c``, ``4``, ``6``; digest:
the first 8 hex digits of the SHA-256 of the instructions, so the name says which mark
and addresses a program enforces). Programs of other names attached to the same cgroup
are left alone; a pin path holding anything else is a conflict, never overwritten. The
directories under ``<cgroup_root>`` and ``<pin_root>`` are vsnet's by configuration.

There are no notifications for BPF attachments: the daemon looks again periodically
(:meth:`ConfinementKind.recheck`).
"""

from __future__ import annotations

import contextlib
import errno
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

HOOKS = ("sock_create", "post_bind4", "post_bind6")
ATTACH_TYPES = {"sock_create": bpf.BPF_CGROUP_INET_SOCK_CREATE,
                "post_bind4": bpf.BPF_CGROUP_INET4_POST_BIND,
                "post_bind6": bpf.BPF_CGROUP_INET6_POST_BIND}
HOOK_LETTERS = {"sock_create": "c", "post_bind4": "4", "post_bind6": "6"}
NAME_PREFIX = "vsnet"
LICENSE = "GPL"  # the programs use no helper at all; any string would load

# struct bpf_sock (linux/bpf.h): the fields the programs read or write
SOCK_FAMILY, SOCK_MARK, SOCK_SRC_IP4, SOCK_SRC_IP6 = 4, 16, 24, 28

PROC_MOUNTS = Path("/proc/self/mounts")

# (hook, digests of vsnet's programs attached there in the kernel's order, digest pinned)
HookState = tuple[str, tuple[str, ...], str]


class Confinement(NamedTuple):
    server: str
    cgroup: str  # relative to the cgroup-v2 mount: "vsnet/nas1"
    pins: str  # "/sys/fs/bpf/vsnet/nas1"
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
    def key(self) -> tuple[str]:
        return (self.server,)

    @property
    def netns(self) -> str:
        return ""  # cgroups and pins are not per network namespace

    def describe(self) -> str:
        words = [f"confinement {self.server}: cgroup {self.cgroup}"]
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


# An allowed bind address: per 32-bit word of the address, (value, mask) in host order.
Pattern = tuple[tuple[int, int], ...]


def _pattern(packed: bytes, prefix: int) -> Pattern:
    bits = len(packed) * 8
    mask = ((1 << bits) - 1) ^ ((1 << (bits - prefix)) - 1)
    mask_bytes = mask.to_bytes(len(packed), "big")
    return tuple((_word(bytes(a & m for a, m in zip(packed[i:i + 4], mask_bytes[i:i + 4],
                                                     strict=True))),
                  _word(mask_bytes[i:i + 4]))
                 for i in range(0, len(packed), 4))


def _bind_program(offset: int, patterns: list[Pattern]) -> bytes:
    """Return 1 (allow) when the bound address matches one of ``patterns``, else 0 (the
    kernel undoes the bind and the caller gets EPERM). Words go to r2..r5; r6 is scratch."""
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


def post_bind4_program(addresses: tuple[str, ...]) -> bytes:
    patterns = [_pattern(_ipv4("0.0.0.0"), 32), _pattern(_ipv4("127.0.0.0"), 8)]
    patterns += [_pattern(_ipv4(a), 32) for a in addresses if ":" not in a]
    return _bind_program(SOCK_SRC_IP4, patterns)


def post_bind6_program(addresses: tuple[str, ...]) -> bytes:
    patterns = [_pattern(bytes(16), 128), _pattern(socket.inet_pton(socket.AF_INET6, "::1"), 128),
                _pattern(_mapped(_ipv4("0.0.0.0")), 128),
                _pattern(_mapped(_ipv4("127.0.0.0")), 104)]
    for address in addresses:
        if ":" in address:
            patterns.append(_pattern(socket.inet_pton(socket.AF_INET6, address), 128))
        else:
            patterns.append(_pattern(_mapped(_ipv4(address)), 128))
    return _bind_program(SOCK_SRC_IP6, patterns)


def programs_of(mark: int, addresses: tuple[str, ...]) -> dict[str, bytes]:
    return {"sock_create": sock_create_program(mark),
            "post_bind4": post_bind4_program(addresses),
            "post_bind6": post_bind6_program(addresses)}


def digest(code: bytes) -> str:
    import hashlib  # loads OpenSSL (~4 ms): only a config with confinement needs it

    return hashlib.sha256(code).hexdigest()[:8]


def program_name(hook: str, code: bytes) -> str:
    return f"{NAME_PREFIX}{HOOK_LETTERS[hook]}_{digest(code)}"


def _ours(hook: str, name: str) -> str | None:
    """The digest in the name of one of vsnet's programs for ``hook``, else None."""
    prefix = f"{NAME_PREFIX}{HOOK_LETTERS[hook]}_"
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


def unavailable(pin_root: str) -> str | None:
    """What this machine lacks for confinement, in words for status, or None."""
    if cgroup2_mount() is None:
        return "cgroup v2 is not mounted"
    if _filesystem_of(pin_root) != "bpf":
        return f"{pin_root} is not on a bpf filesystem (mount -t bpf bpf /sys/fs/bpf)"
    return probe_bpf()


def cgroup_path(obj: Confinement) -> Path:
    mount = cgroup2_mount()
    if mount is None:
        raise OSError(errno.ENOENT, "cgroup v2 is not mounted")
    return mount / obj.cgroup


# ----------------------------------------------------------------------- observe


@contextlib.contextmanager
def _opened(fd: int) -> Iterator[int]:
    try:
        yield fd
    finally:
        os.close(fd)


def _attached(cgroup_fd: int, hook: str) -> list[tuple[int, str | None]]:
    """(program id, digest if it is vsnet's) for what is attached at ``hook``."""
    found = []
    ids, _revision = bpf.prog_query(cgroup_fd, ATTACH_TYPES[hook])
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
    name = _ours(hook, info.name) if info.type == bpf.BPF_PROG_TYPE_CGROUP_SOCK else None
    if name is None:
        return "", f"pin {path} holds program {info.name or info.id} (not vsnet's)"
    return name, None


def observe_one(server: str, cgroup_root: str, pin_root: str, mount: Path | None
                ) -> tuple[Confinement | None, str | None]:
    """vsnet's confinement of ``server`` as the kernel has it (None: neither its cgroup nor
    its pin directory exists), and why something there is foreign (or None). ``mount``:
    :func:`cgroup2_mount`, looked up once per pass."""
    relative = f"{cgroup_root.strip('/')}/{server}"
    pins = f"{pin_root.rstrip('/')}/{server}"
    cgroup_fd = None
    if mount is not None:
        try:
            cgroup_fd = os.open(mount / relative, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            cgroup_fd = None
    if cgroup_fd is None and not os.path.isdir(pins):
        return None, None
    programs: list[HookState] = []
    foreign: str | None = None
    try:
        for hook in HOOKS:
            attached: tuple[str, ...] = ()
            if cgroup_fd is not None:
                attached = tuple(d for _id, d in _attached(cgroup_fd, hook) if d is not None)
            pinned, why = _pinned(f"{pins}/{hook}", hook)
            foreign = foreign or why
            programs.append((hook, attached, pinned))
    finally:
        if cgroup_fd is not None:
            os.close(cgroup_fd)
    return Confinement(server, relative, pins, tuple(programs)), foreign


def observe(cgroup_root: str, pin_root: str) -> list[tuple[Confinement | None, str, str | None]]:
    """Every VS cgroup or pin directory under the roots: (what is there, VS name, why
    something there is foreign)."""
    names: set[str] = set()
    mount = cgroup2_mount()
    roots = [Path(pin_root)] + ([mount / cgroup_root.strip("/")] if mount is not None else [])
    for root in roots:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            names.update(entry.name for entry in os.scandir(root)
                         if entry.is_dir(follow_symlinks=False))
    found = []
    for name in sorted(names):
        obj, foreign = observe_one(name, cgroup_root, pin_root, mount)
        found.append((obj, name, foreign))
    return found


def signature(server: str, cgroup_root: str, pin_root: str, mount: Path | None
              ) -> tuple[Any, ...]:
    """Cheap to read, and changes whenever what :func:`observe_one` sees may have changed:
    the cgroup's inode, the ids attached at each hook, the pins' inodes."""
    parts: list[Any] = []
    try:
        cgroup_fd = os.open(mount / cgroup_root.strip("/") / server,
                            os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) if mount else None
    except (FileNotFoundError, NotADirectoryError):
        cgroup_fd = None
    if cgroup_fd is not None:
        with _opened(cgroup_fd):
            parts.append(os.fstat(cgroup_fd).st_ino)
            parts.extend(tuple(bpf.prog_query(cgroup_fd, ATTACH_TYPES[hook])[0])
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
    """Make the kernel hold ``obj``: the cgroup, each program attached once, pinned.

    A program whose mark or addresses changed is swapped atomically (``BPF_F_REPLACE``: no
    socket is created between without one); stray copies of vsnet's are detached; programs
    of other names stay as they are.
    """
    path = cgroup_path(obj)
    path.mkdir(parents=True, exist_ok=True)
    os.makedirs(obj.pins, exist_ok=True)
    codes = programs_of(obj.mark, obj.addresses)
    with _opened(os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)) as cgroup_fd:
        for hook in HOOKS:
            _ensure_hook(cgroup_fd, obj, hook, codes[hook])


def _ensure_hook(cgroup_fd: int, obj: Confinement, hook: str, code: bytes) -> None:
    attach_type = ATTACH_TYPES[hook]
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
                keep = bpf.prog_load(code, program_name(hook, code),
                                     bpf.BPF_PROG_TYPE_CGROUP_SOCK, attach_type, LICENSE)
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


def delete(obj: Confinement) -> None:
    """Detach vsnet's programs, unpin them, remove the pin directory and the cgroup (the
    roots too once empty). A cgroup that still has processes, or programs vsnet did not
    attach (removing it would detach them), stays: an error naming it, retried."""
    mount = cgroup2_mount()
    path = mount / obj.cgroup if mount is not None else None
    strangers: list[str] = []
    if path is not None:
        try:
            cgroup_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            cgroup_fd = None
        if cgroup_fd is not None:
            with _opened(cgroup_fd):
                for hook in HOOKS:
                    for prog_id, mine in _attached(cgroup_fd, hook):
                        if mine is None:
                            strangers.append(f"{prog_id} at {hook}")
                            continue
                        with contextlib.suppress(FileNotFoundError), _opened(
                                bpf.prog_fd_by_id(prog_id)) as fd:
                            bpf.prog_detach(cgroup_fd, fd, ATTACH_TYPES[hook])
    for hook in HOOKS:
        pinned, foreign = _pinned(f"{obj.pins}/{hook}", hook)
        if pinned and foreign is None:
            os.unlink(f"{obj.pins}/{hook}")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{obj.pins}/{hook}_new")
    _remove_dir(Path(obj.pins))
    if path is None:
        return
    if strangers and path.exists():
        raise OSError(errno.EBUSY, f"cgroup {path} holds programs vsnet did not attach "
                                   f"({', '.join(strangers)}): detach them first")
    try:
        _remove_dir(path)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            raise OSError(errno.EBUSY, f"cgroup {path} still has processes (see "
                                       f"{path}/cgroup.procs): stop or move them") from None
        raise


def _remove_dir(path: Path) -> None:
    try:
        path.rmdir()
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno == errno.ENOTEMPTY:
            raise OSError(errno.ENOTEMPTY, f"{path} holds entries vsnet did not make: "
                                           f"remove them first") from None
        raise
    with contextlib.suppress(OSError):  # the root, once the last VS is gone
        path.parent.rmdir()


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
        if scope.cgroup_root is None:
            return
        missing = unavailable(scope.pin_root)
        if missing is not None:
            state.unavailable[self.name] = missing
            return
        for found, server, foreign in observe(scope.cgroup_root, scope.pin_root):
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
        for server in servers:
            if server.mode != "pbr":
                continue
            key = (self.name, (server.name,))
            wanted = server.keyed.get(key)
            if wanted is None:
                continue
            now = signature(server.name, scope.cgroup_root, scope.pin_root, mount)
            if seen.get(key) == now:
                continue
            seen[key] = now
            found, foreign = observe_one(server.name, scope.cgroup_root, scope.pin_root, mount)
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
            changed.append(found or cast(Confinement, wanted))
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
