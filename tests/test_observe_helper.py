"""A look into many namespaces shared with a forked child (vsnetd/forked.py): it sees what
one process alone sees, and a child that fails is made up for."""

from __future__ import annotations

import errno
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from tests.sandbox import ip, ip_json
from vsnetd import forked
from vsnetd.apply import apply_plan
from vsnetd.compile import compile_config
from vsnetd.config import parse_config
from vsnetd.kernel import Kernel
from vsnetd.observe import observe
from vsnetd.reconcile import converge, plan_for
from vsnetd.state import DesiredState


def test_a_helper_hands_back_what_its_work_returns() -> None:
    assert forked.Helper(lambda: {"found": [1, 2]}).result() == {"found": [1, 2]}
    assert forked.Helper(os.getpid).result() != os.getpid()  # it ran in another process
    with pytest.raises(forked.HelperFailed):
        forked.Helper(lambda: 1 // 0).result()


def test_a_stopped_helper_is_reaped() -> None:
    helper = forked.Helper(lambda: signal.pause())
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

    def kill(pid: int) -> None:
        os.kill(pid, signal.SIGKILL)

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
