"""The ``bpf()`` system call, raw, through ctypes: load, pin, attach to a cgroup, query.

No libbpf and no compiler: vsnet's programs are a few instructions emitted by
:mod:`vsnetd.kinds.confinement`, and the kernel's verifier checks them at load time. The
``union bpf_attr`` layouts below are those of linux/bpf.h (stable kernel ABI); a shorter
attr than the kernel's is allowed (the rest counts as zero).
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from typing import NamedTuple

SYS_BPF = {"x86_64": 321, "aarch64": 280, "armv7l": 386, "ppc64le": 361, "s390x": 351,
           "riscv64": 280}.get(os.uname().machine, 321)

# commands
BPF_PROG_LOAD = 5
BPF_OBJ_PIN = 6
BPF_OBJ_GET = 7
BPF_PROG_ATTACH = 8
BPF_PROG_DETACH = 9
BPF_PROG_GET_FD_BY_ID = 13
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_PROG_QUERY = 16

# program types (enum bpf_prog_type)
BPF_PROG_TYPE_CGROUP_SOCK = 9
BPF_PROG_TYPE_CGROUP_SOCK_ADDR = 18

# attach types (enum bpf_attach_type)
BPF_CGROUP_INET_SOCK_CREATE = 2
BPF_CGROUP_INET4_BIND = 8
BPF_CGROUP_INET6_BIND = 9
BPF_CGROUP_INET4_POST_BIND = 12
BPF_CGROUP_INET6_POST_BIND = 13
BPF_CGROUP_UDP4_SENDMSG = 14
BPF_CGROUP_UDP6_SENDMSG = 15
# every attach type of cgroups: ingress/egress, sock_create, sock_ops, device, the socket
# address hooks (bind, connect, post_bind, sendmsg), sysctl, recvmsg, get/setsockopt,
# getpeername/getsockname, sock_release, lsm_cgroup, and the AF_UNIX address hooks
CGROUP_ATTACH_TYPES = (0, 1, 2, 3, 6, *range(8, 16), *range(18, 23), *range(29, 33), 34, 43,
                       *range(49, 54))

BPF_F_ALLOW_MULTI = 1 << 1
BPF_F_REPLACE = 1 << 2

BPF_OBJ_NAME_LEN = 16
BPF_FS_MAGIC = 0xCAFE4A11
CGROUP2_SUPER_MAGIC = 0x63677270

# instruction classes and fields (linux/bpf_common.h, linux/bpf.h)
BPF_LDX, BPF_STX, BPF_ALU, BPF_JMP, BPF_JMP32, BPF_ALU64 = 0x01, 0x03, 0x04, 0x05, 0x06, 0x07
BPF_W, BPF_MEM = 0x00, 0x60
BPF_K, BPF_X = 0x00, 0x08
BPF_AND, BPF_MOV = 0x50, 0xB0
BPF_JA, BPF_JEQ, BPF_JNE, BPF_EXIT = 0x00, 0x10, 0x50, 0x90

_INSN = struct.Struct("<BBhi")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class BpfError(OSError):
    """A bpf() call the kernel refused; ``log`` holds the verifier's words for a load."""

    def __init__(self, errno_: int, what: str, log: str = "") -> None:
        super().__init__(errno_, f"{what}: {os.strerror(errno_)}" + (f"\n{log}" if log else ""))
        self.log = log


def _call(cmd: int, attr: ctypes.Array[ctypes.c_char], what: str) -> int:
    result = _libc.syscall(SYS_BPF, cmd, attr, len(attr))
    if result < 0:
        raise BpfError(ctypes.get_errno(), what)
    return int(result)


def _attr(size: int, *fields: tuple[int, str, int]) -> ctypes.Array[ctypes.c_char]:
    attr = ctypes.create_string_buffer(size)
    for offset, fmt, value in fields:
        struct.pack_into(fmt, attr, offset, value)
    return attr


def _address(buffer: ctypes.Array[ctypes.c_char] | None) -> int:
    return ctypes.addressof(buffer) if buffer is not None else 0


# ------------------------------------------------------------------------- instructions


def insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    if imm > 0x7FFFFFFF:
        imm -= 1 << 32  # a u32 constant as the s32 the encoding holds (its bits are kept)
    return _INSN.pack(code, (src << 4) | dst, off, imm)


def mov32_imm(dst: int, imm: int) -> bytes:
    return insn(BPF_ALU | BPF_MOV | BPF_K, dst, imm=imm)


def mov64_imm(dst: int, imm: int) -> bytes:
    return insn(BPF_ALU64 | BPF_MOV | BPF_K, dst, imm=imm)


def and32_imm(dst: int, imm: int) -> bytes:
    return insn(BPF_ALU | BPF_AND | BPF_K, dst, imm=imm)


def load32(dst: int, src: int, off: int) -> bytes:
    return insn(BPF_LDX | BPF_MEM | BPF_W, dst, src, off)


def store32(dst: int, off: int, src: int) -> bytes:
    return insn(BPF_STX | BPF_MEM | BPF_W, dst, src, off)


def jump32_imm(op: int, dst: int, imm: int, off: int) -> bytes:
    """``if (u32)dst <op> imm goto +off``: 32-bit compares, so a u32 constant is never
    sign-extended."""
    return insn(BPF_JMP32 | op | BPF_K, dst, imm=imm, off=off)


def jump(off: int) -> bytes:
    return insn(BPF_JMP | BPF_JA, off=off)


def exit_() -> bytes:
    return insn(BPF_JMP | BPF_EXIT)


# ------------------------------------------------------------------------- calls


def prog_load(insns: bytes, name: str, prog_type: int, attach_type: int,
              license_: str = "GPL") -> int:
    """Load a program; an fd. A refusal carries the verifier log (asked for only then: a
    log costs the verifier time on every load)."""
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(license_.encode())
    log = ctypes.create_string_buffer(65536)
    for log_level in (0, 1):
        attr = _attr(
            128,
            (0, "<I", prog_type), (4, "<I", len(insns) // 8), (8, "<Q", _address(code)),
            (16, "<Q", _address(lic)), (24, "<I", log_level),
            (28, "<I", len(log) if log_level else 0), (32, "<Q", _address(log) if log_level else 0),
            (68, "<I", attach_type),
        )
        struct.pack_into("16s", attr, 48, name.encode()[: BPF_OBJ_NAME_LEN - 1])
        result = _libc.syscall(SYS_BPF, BPF_PROG_LOAD, attr, len(attr))
        if result >= 0:
            return int(result)
        error = ctypes.get_errno()
    raise BpfError(error, f"loading {name}", log.value.decode(errors="replace").strip())


def obj_pin(fd: int, path: str) -> None:
    raw = ctypes.create_string_buffer(path.encode())
    _call(BPF_OBJ_PIN, _attr(16, (0, "<Q", _address(raw)), (8, "<I", fd)), f"pinning {path}")


def obj_get(path: str) -> int:
    raw = ctypes.create_string_buffer(path.encode())
    return _call(BPF_OBJ_GET, _attr(16, (0, "<Q", _address(raw))), f"opening pin {path}")


def prog_attach(cgroup_fd: int, prog_fd: int, attach_type: int, replace_fd: int | None = None
                ) -> None:
    flags = BPF_F_ALLOW_MULTI | (BPF_F_REPLACE if replace_fd is not None else 0)
    _call(BPF_PROG_ATTACH, _attr(
        20, (0, "<I", cgroup_fd), (4, "<I", prog_fd), (8, "<I", attach_type),
        (12, "<I", flags), (16, "<I", replace_fd or 0)), "attaching")


def prog_detach(cgroup_fd: int, prog_fd: int, attach_type: int) -> None:
    _call(BPF_PROG_DETACH, _attr(
        20, (0, "<I", cgroup_fd), (4, "<I", prog_fd), (8, "<I", attach_type)), "detaching")


def prog_query(cgroup_fd: int, attach_type: int) -> tuple[list[int], int]:
    """Ids of the programs attached to this cgroup at ``attach_type`` (not the inherited
    ones), and the attach point's revision (Linux >= 6.6; 0 before), which every attach
    and detach there changes."""
    count = 16
    while True:
        ids = (ctypes.c_uint32 * count)()
        attr = _attr(64, (0, "<I", cgroup_fd), (4, "<I", attach_type),
                     (16, "<Q", ctypes.addressof(ids)), (24, "<I", count))
        try:
            _call(BPF_PROG_QUERY, attr, "querying")
        except BpfError as exc:
            if exc.errno == errno.ENOSPC:  # more than ``count`` of them
                count = struct.unpack_from("<I", attr, 24)[0] + 16
                continue
            raise
        found, revision = struct.unpack_from("<I", attr, 24)[0], struct.unpack_from(
            "<Q", attr, 56)[0]
        return list(ids[:found]), revision


def prog_fd_by_id(prog_id: int) -> int:
    return _call(BPF_PROG_GET_FD_BY_ID, _attr(12, (0, "<I", prog_id)), f"program {prog_id}")


class ProgInfo(NamedTuple):
    type: int
    id: int
    tag: str
    name: str


def prog_info(fd: int) -> ProgInfo:
    info = ctypes.create_string_buffer(88)
    attr = _attr(16, (0, "<I", fd), (4, "<I", len(info)), (8, "<Q", _address(info)))
    _call(BPF_OBJ_GET_INFO_BY_FD, attr, "program info")
    prog_type, prog_id, tag = struct.unpack_from("<II8s", info, 0)
    name = info.raw[64:80].split(b"\0", 1)[0].decode(errors="replace")
    return ProgInfo(prog_type, prog_id, tag.hex(), name)
