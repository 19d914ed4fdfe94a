"""A look into many namespaces shared with a forked child (vsnetd/forked.py): it sees what
one process alone sees, and a child that fails is made up for."""

from __future__ import annotations

import errno
import os
import pickle
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast

import pytest

from tests.sandbox import ip, ip_json
from vsnetd import forked
from vsnetd.apply import apply_plan
from vsnetd.compile import compile_config
from vsnetd.config import parse_config
from vsnetd.kernel import Kernel
from vsnetd.kinds import link
from vsnetd.netlink import DumpMemo, RtnlSocket
from vsnetd.observe import look_ahead, observe
from vsnetd.reconcile import converge, plan_for
from vsnetd.state import DesiredState, ObservedState


def test_a_helper_hands_back_what_its_work_returns() -> None:
    assert forked.Helper(lambda _orders: b"found", bytes.decode).result() == "found"
    child = forked.Helper(lambda _orders: str(os.getpid()).encode(), int).result()
    assert child != os.getpid()  # it ran in another process
    with pytest.raises(forked.HelperFailed):  # the work failed
        forked.Helper(lambda _orders: bytes(1 // 0), bytes).result()
    with pytest.raises(forked.HelperFailed):  # what it returned does not load
        forked.Helper(lambda _orders: b"x", int).result()


def test_a_helper_is_handed_what_the_parent_sends() -> None:
    helper = forked.Helper(lambda orders: pickle.dumps((os.getpid(), orders())), pickle.loads)
    sent = {"names": [f"vs-v{i}" for i in range(20_000)]}  # more than a pipe holds
    helper.send(sent)
    child, received = helper.result()
    assert child == helper.pid and received == sent
    closed = forked.Helper(lambda orders: pickle.dumps(orders()), pickle.loads)
    closed.send(None)
    assert closed.result() is None


def test_a_stopped_helper_is_reaped() -> None:
    # waiting for what is never sent
    helper = forked.Helper(lambda orders: pickle.dumps(orders()), pickle.loads)
    helper.stop()
    with pytest.raises(ChildProcessError):
        os.waitpid(helper.pid, os.WNOHANG)


SERVERS = 6  # the helper looks into vs-v4..vs-v6 (the second half, in name order)


@pytest.fixture
def netns_vs(netns: None) -> Iterator[DesiredState]:
    ip("link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
    ip("link", "set", "eth0", "up")
    lines = [f"  v{i}: {{id: {i}, mode: netns, uplink: eth0, addresses: "
             f"[{{address: 10.0.{i}.5/24}}], gateway: 10.0.{i}.1}}"
             for i in range(1, SERVERS + 1)]
    desired = compile_config(parse_config("version: 1\nservers:\n" + "\n".join(lines) + "\n"))
    with Kernel() as kernel:
        assert converge(kernel, desired).converged
    yield desired


@contextmanager
def counted_forks(after: Callable[[int], None] = lambda _pid: None) -> Iterator[list[int]]:
    """The children os.fork makes meanwhile (``after`` runs in the parent on each)."""
    children: list[int] = []
    real_fork = os.fork

    def fork() -> int:
        pid = real_fork()
        if pid:
            children.append(pid)
            after(pid)
        return pid

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "fork", fork)
        yield children


def kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


def routes(netns: str) -> list[str]:
    # ip -j leaves out the protocol "boot" (the default of ip route add)
    return sorted(f"{r['dst']} {r.get('protocol', 'boot')}" for r in ip_json("route", netns=netns))


def test_a_shared_look_sees_and_plans_what_one_look_does(netns_vs: DesiredState) -> None:
    ip("route", "del", "default", netns="vs-v5")  # the helper's half: to be added again
    ip("route", "add", "10.99.0.0/16", "dev", "v6", "proto", "vsnet", netns="vs-v6")  # stale
    ip("route", "add", "10.98.0.0/16", "dev", "v4", netns="vs-v4")  # foreign: kept
    ip("route", "del", "default", netns="vs-v1")  # this process's half
    with Kernel() as kernel:
        alone = observe(kernel, netns_vs.scope)
    assert forked.may_fork(), threading.enumerate()  # an earlier test left a thread behind
    with Kernel(helper_from=2) as kernel, counted_forks() as children:
        shared = observe(kernel, netns_vs.scope)
        plan = plan_for(kernel, netns_vs)
        assert len(children) == 2  # one per look: the work was shared
        assert not apply_plan(kernel, plan, shared.links, netns_vs.scope.protocol).failed
    assert shared == alone
    assert sorted((c.action, c.obj.netns, c.obj.kind, getattr(c.obj, "destination", ""))
                  for c in plan.changes) == [
        ("add", "vs-v1", "route", "0.0.0.0/0"), ("add", "vs-v5", "route", "0.0.0.0/0"),
        ("delete", "vs-v6", "route", "10.99.0.0/16")]
    assert "default vsnet" in routes("vs-v1") and "default vsnet" in routes("vs-v5")
    assert "10.99.0.0/16 vsnet" not in routes("vs-v6")
    assert "10.98.0.0/16 boot" in routes("vs-v4")  # what vsnet did not make stays


def test_a_helper_killed_is_made_up_for(netns_vs: DesiredState) -> None:
    ip("route", "del", "default", netns="vs-v6")
    with Kernel() as kernel:
        alone = observe(kernel, netns_vs.scope)

    assert forked.may_fork(), threading.enumerate()
    with Kernel(helper_from=2) as kernel, counted_forks(after=kill) as children:
        shared = observe(kernel, netns_vs.scope)
    assert len(children) == 1
    assert shared == alone
    assert not any(key == ("route", ("vs-v6", 2, 254, "0.0.0.0/0", 0)) for key in shared.owned)
    assert ("route", ("vs-v5", 2, 254, "0.0.0.0/0", 0)) in shared.owned  # the child's half


def test_no_process_to_spare_looks_at_everything_here(netns_vs: DesiredState) -> None:
    ip("route", "del", "default", netns="vs-v6")
    with Kernel() as kernel:
        alone = observe(kernel, netns_vs.scope)

    def no_process() -> int:
        raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")

    with Kernel(helper_from=2) as kernel, pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "fork", no_process)
        shared = observe(kernel, netns_vs.scope)
    assert shared == alone
    assert ("route", ("vs-v5", 2, 254, "0.0.0.0/0", 0)) in shared.owned  # the second half


def test_a_dump_made_ahead_is_decoded_once_then_made_again(netns: None) -> None:
    with RtnlSocket() as sock:
        sock.dump_ahead([link.DUMP])
        ip("link", "add", "ahead0", "type", "veth", "peer", "name", "ahead1")
        then = {found.name for found in sock.dump(link.DUMP, link.decode)}
        now = {found.name for found in sock.dump(link.DUMP, link.decode)}
    in_kernel = {device["ifname"] for device in ip_json("link")}
    assert {"ahead0", "ahead1"} <= in_kernel
    assert now == in_kernel
    assert then == in_kernel - {"ahead0", "ahead1"}  # as it was when it was made


def test_a_look_started_ahead_sees_what_one_look_does(netns_vs: DesiredState) -> None:
    ip("route", "del", "default", netns="vs-v6")  # the child's share (vs-v3..vs-v6)
    ip("route", "add", "10.99.0.0/16", "dev", "v5", "proto", "vsnet", netns="vs-v5")  # stale
    ip("route", "add", "10.98.0.0/16", "dev", "v4", netns="vs-v4")  # foreign
    ip("route", "del", "default", netns="vs-v1")  # this process's
    with Kernel() as kernel:
        alone = observe(kernel, netns_vs.scope)
    assert forked.may_fork(), threading.enumerate()
    with Kernel(helper_from=2) as kernel, counted_forks() as children:
        look_ahead(kernel)
        assert len(children) == 1  # before the scope is known
        shared = observe(kernel, netns_vs.scope)
        assert len(children) == 1 and kernel.helper is None
    assert shared == alone
    assert ("route", ("vs-v6", 2, 254, "0.0.0.0/0", 0)) not in shared.owned
    assert ("route", ("vs-v5", 2, 254, "10.99.0.0/16", 0)) in shared.owned
    assert ("route", ("vs-v3", 2, 254, "0.0.0.0/0", 0)) in shared.owned


def test_a_look_travels_between_processes_whole(netns_vs: DesiredState) -> None:
    ip("route", "add", "10.98.0.0/16", "dev", "v4", netns="vs-v4")  # foreign
    with Kernel() as kernel:
        seen = observe(kernel, netns_vs.scope)
    assert any(seen.foreign.values()) and seen.links and seen.owned
    assert ObservedState.unpacked(seen.packed()) == seen
    seen.owned[("route", ("odd",))] = cast(Any, frozenset({1}))  # not a kernel object
    with pytest.raises(ValueError, match="not a tuple"):
        seen.packed()


def test_a_look_started_ahead_and_killed_is_made_up_for(netns_vs: DesiredState) -> None:
    ip("route", "del", "default", netns="vs-v6")
    with Kernel() as kernel:
        alone = observe(kernel, netns_vs.scope)

    with Kernel(helper_from=2) as kernel, counted_forks(after=kill) as children:
        look_ahead(kernel)
        shared = observe(kernel, netns_vs.scope)
    assert len(children) == 1
    assert shared == alone
    assert ("route", ("vs-v5", 2, 254, "0.0.0.0/0", 0)) in shared.owned  # the child's share


def test_a_look_started_ahead_and_not_made_ends_its_child(netns_vs: DesiredState) -> None:
    with Kernel(helper_from=2) as kernel, counted_forks() as children:
        look_ahead(kernel)  # then the config is refused, say: no look
    with Kernel(helper_from=2) as kernel, counted_forks() as remembering:
        look_ahead(kernel)
        observe(kernel, netns_vs.scope, DumpMemo())  # a look that keeps a memo is not shared
        assert kernel.helper is None
    for pid in children + remembering:
        with pytest.raises(ChildProcessError):  # reaped
            os.waitpid(pid, os.WNOHANG)
    assert len(children) == len(remembering) == 1


def test_too_few_namespaces_start_no_look_ahead(netns_vs: DesiredState) -> None:
    with Kernel(helper_from=SERVERS + 1) as kernel, counted_forks() as children:
        look_ahead(kernel)
        observe(kernel, netns_vs.scope)
    assert children == []
