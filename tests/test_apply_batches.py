"""How apply sends a plan (vsnetd/apply.py), without root: consecutive netlink kinds in one
send per socket, the deletes the diff lets wait in a send after the creates."""

from __future__ import annotations

import errno
import socket
from typing import cast

from vsnetd.apply import apply_plan
from vsnetd.kernel import Kernel
from vsnetd.kinds import Address, Route, Rule
from vsnetd.netlink import Reply
from vsnetd.state import SHARED, Change, Plan

DEVICE = "vsnet-test0"  # no such device here: the promote_secondaries check writes nothing


class Socket:
    """Records the message types of each batch (one send: a plan this small fits)."""

    def __init__(self, failing: int | None = None) -> None:
        self.sends: list[list[int]] = []
        self.failing = failing

    def start_batch(self) -> Batch:
        return Batch(self)


class Batch:
    def __init__(self, sock: Socket) -> None:
        self.sock = sock
        self.types: list[int] = []

    def add(self, mtype: int, flags: int, body: bytes) -> None:
        self.types.append(mtype)

    def replies(self) -> list[Reply]:
        self.sock.sends.append(self.types)
        failed = len(self.sock.sends) == self.sock.failing
        return [Reply(-errno.EEXIST if failed else 0) for _ in self.types]

    def settle(self) -> None:
        pass


class FakeKernel:
    def __init__(self, sock: Socket) -> None:
        self.sock = sock

    def socket(self, netns: str) -> Socket:
        return self.sock


def edit_plan() -> Plan:
    v4 = socket.AF_INET
    return Plan(changes=(
        Change("delete", Rule(v4, 300, 1001, "10.0.0.7/32"), "a"),
        Change("delete", Address(DEVICE, "10.0.0.7", 24), "a"),
        Change("add", Address(DEVICE, "10.0.0.8", 24), "a"),
        Change("replace", Route(v4, 1001, "0.0.0.0/0", 0, device=DEVICE, gateway="10.0.0.1",
                                source="10.0.0.8"), "a"),
        Change("add", Rule(v4, 310, 1001, "10.0.0.8/32"), "a"),
        Change("delete", Rule.goto(v4, 200, 300, "10.0.0.4/30"), SHARED),
        Change("delete", Rule(v4, 210, 0, action="nop"), SHARED),
    ), servers={})


def test_an_edit_goes_out_in_one_send_and_its_tidying_in_a_second() -> None:
    sock = Socket()
    result = apply_plan(cast(Kernel, FakeKernel(sock)), edit_plan(), {"": {DEVICE: 7}}, 200)
    assert sock.sends == [[33, 21, 20, 24, 32], [33, 33]]
    assert result.applied == list(edit_plan().changes) and not result.failed


def test_what_the_tidying_send_fails_is_the_tree_s_only() -> None:
    sock = Socket(failing=2)
    result = apply_plan(cast(Kernel, FakeKernel(sock)), edit_plan(), {"": {DEVICE: 7}}, 200)
    assert result.applied == list(edit_plan().changes[:5])
    assert list(result.failures_by_server()) == [SHARED] and len(result.failed) == 2
