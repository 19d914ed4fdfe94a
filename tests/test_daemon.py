"""vsnetd as a real process in the test's namespace: watch, self-heal, restart, systemd."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, RUNNING
from vsnetd.sandbox import NotifySocket, ip, ip_json
from vsnetd.state import VSNET_PROTOCOL

pytestmark = pytest.mark.usefixtures("netns")

CONFIG = """\
version: 1
servers:
  nas1:
    id: 1
    mode: pbr
    uplink: eth0
    addresses:
      - {address: 10.0.0.5/24, gateway: 10.0.0.1}
      - {address: 10.0.1.5/24, gateway: 10.0.1.1}
    gateway: 10.0.1.1
  nas2:
    id: 2
    mode: netns
    uplink: eth0
    addresses: [{address: 10.1.1.5/24}]
    gateway: 10.1.1.1
"""


def wait_until(check: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        time.sleep(0.02)


class Daemon:
    def __init__(self, tmp: Path, config: Path, extra: list[str] | None = None,
                 wrapper: list[str] | None = None) -> None:
        self.config = config
        self.control = tmp / "control.sock"
        self.notify = NotifySocket(tmp / f"notify-{time.monotonic_ns()}.sock")
        env = dict(os.environ, NOTIFY_SOCKET=str(self.notify.path), WATCHDOG_USEC="400000",
                   VSNET_CONTROL=str(self.control))
        self.log = tmp / "vsnetd.log"
        self.proc = subprocess.Popen(
            [*(wrapper or []), sys.executable, "-m", "vsnetd.daemon", "-c", str(config),
             "--control", str(self.control), "-v", *(extra or [])],
            env=env, stdout=subprocess.DEVNULL, stderr=self.log.open("ab"),
        )
        RUNNING.append(self.proc)
        self.env = env

    def ready(self, timeout: float = 20.0) -> None:
        wait_until(lambda: self.notify.seen("READY", "1") or self.proc.poll() is not None,
                   timeout, "READY=1")
        assert self.proc.poll() is None, self.log.read_text()

    def status(self) -> dict[str, Any]:
        result = subprocess.run([sys.executable, "-m", "vsnetd.cli", "status", "--json", "-c",
                                 str(self.config)], capture_output=True, text=True,
                                env=self.env, timeout=30)
        return json.loads(result.stdout)  # type: ignore[no-any-return]

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=20)


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "etc" / "servers.yaml"
    path.parent.mkdir()
    path.write_text(CONFIG)
    return path


@pytest.fixture
def daemon(uplink: str, config_file: Path, tmp_path: Path) -> Iterator[Daemon]:
    running = Daemon(tmp_path, config_file)
    running.ready()
    yield running
    running.stop()


def save(path: Path, text: str) -> None:
    """Write the way editors do: a new file renamed over the old one."""
    partial = path.with_name(".servers.yaml.swp")
    partial.write_text(text)
    partial.replace(path)


def vsnet_rules() -> list[dict[str, Any]]:
    return [r for family in ("-4", "-6") for r in ip_json(family, "rule")
            if r.get("protocol") == "vsnet"]


def addresses(dev: str = "eth0", netns: str | None = None) -> set[str]:
    """Global addresses of a device (none while it does not exist)."""
    try:
        links = ip_json("addr", "show", "dev", dev, netns=netns)
    except RuntimeError:
        return set()
    return {a["local"] for link in links for a in link["addr_info"] if a["scope"] == "global"}


def test_start_converges_and_speaks_the_notify_protocol(daemon: Daemon) -> None:
    status = daemon.status()
    assert {name: s["state"] for name, s in status["servers"].items()} == {
        "nas1": "in-sync", "nas2": "in-sync"}
    assert status["daemon"]["generation"] == 1
    ready = next(m for m in daemon.notify.poll() if m.get("READY") == "1")
    assert ready["STATUS"].startswith("2 servers in sync; last reconcile ")
    wait_until(lambda: daemon.notify.seen("WATCHDOG", "1"), 5, "WATCHDOG=1")
    assert addresses() == {"10.0.0.5", "10.0.1.5"}
    assert addresses("nas2", "vs-nas2") == {"10.1.1.5"}
    # SIGHUP: RELOADING=1 (with MONOTONIC_USEC), then READY=1 again
    before = len(daemon.notify.poll())
    daemon.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: any(m.get("READY") == "1" for m in daemon.notify.poll()[before:]))
    reloading = [m for m in daemon.notify.poll()[before:] if m.get("RELOADING") == "1"]
    assert reloading and int(reloading[0]["MONOTONIC_USEC"]) > 0
    assert daemon.status()["daemon"]["generation"] == 2
    # SIGTERM: STOPPING=1, and the kernel state stays for the application
    assert daemon.stop() == 0
    assert daemon.notify.seen("STOPPING", "1")
    assert addresses() == {"10.0.0.5", "10.0.1.5"}
    assert "vs-nas2" in os.listdir("/run/netns")


def test_an_edit_converges_and_an_invalid_one_changes_nothing(
    daemon: Daemon, config_file: Path
) -> None:
    save(config_file, CONFIG.replace("10.0.1.5/24", "10.0.1.6/24"))
    wait_until(lambda: addresses() == {"10.0.0.5", "10.0.1.6"}, what="the edit")
    assert daemon.status()["daemon"]["generation"] == 2

    rules = vsnet_rules()
    save(config_file, CONFIG.replace("    gateway: 10.0.1.1\n", "    gateway: 10.0.9.1\n"))
    status = wait_until(lambda: (s := daemon.status())["daemon"]["config_errors"] and s,
                        what="the refusal")
    assert status["daemon"]["config_errors"] == [{
        "file": str(config_file), "line": 10, "column": 14, "path": "servers.nas1.gateway",
        "message": "10.0.9.1 is not inside any subnet of nas1"}]
    assert status["daemon"]["generation"] == 2
    assert "config refused" in status["daemon"]["status"]
    assert vsnet_rules() == rules and addresses() == {"10.0.0.5", "10.0.1.6"}
    human = subprocess.run([sys.executable, "-m", "vsnetd.cli", "status", "-c", str(config_file)],
                           capture_output=True, text=True, env=daemon.env).stdout
    assert f"config refused: {config_file}:10:14: servers.nas1.gateway" in human
    # `vsnetctl reload` reports the refusal too, and exits 1
    reload = subprocess.run([sys.executable, "-m", "vsnetd.cli", "reload"],
                            capture_output=True, text=True, env=daemon.env)
    assert reload.returncode == 1
    save(config_file, CONFIG)
    wait_until(lambda: addresses() == {"10.0.0.5", "10.0.1.5"}, what="the fixed file")
    assert daemon.status()["daemon"]["config_errors"] == []


def test_what_is_deleted_by_hand_comes_back(daemon: Daemon) -> None:
    ip("rule", "del", "priority", "10016")
    ip("route", "del", "default", "table", "10017")
    wait_until(lambda: any(r["priority"] == 10016 for r in vsnet_rules()), what="the rule")
    wait_until(lambda: ip_json("route", "show", "table", "10017", "default"), what="the route")
    ip("addr", "del", "10.0.0.5/24", "dev", "eth0")
    wait_until(lambda: "10.0.0.5" in addresses(), what="the address")
    # the kernel flushed the address's routes without a word: they are back as well
    wait_until(lambda: len(ip_json("route", "show", "table", "10016")) == 2, what="its routes")
    ip("netns", "del", "vs-nas2")
    wait_until(lambda: "vs-nas2" in os.listdir("/run/netns")
               and addresses("nas2", "vs-nas2") == {"10.1.1.5"}, what="the namespace")
    ip("link", "del", "dev", "nas2", netns="vs-nas2")
    wait_until(lambda: addresses("nas2", "vs-nas2") == {"10.1.1.5"}, what="the device")
    status = daemon.status()
    assert {s["state"] for s in status["servers"].values()} == {"in-sync"}


def test_a_foreign_rule_in_vsnet_range_is_reported_not_removed(daemon: Daemon) -> None:
    ip("rule", "add", "priority", "10017", "from", "192.0.2.9", "lookup", "main")
    status = wait_until(lambda: (s := daemon.status())["servers"]["nas1"]["state"] == "conflict"
                        and s, what="the conflict")
    assert status["servers"]["nas1"]["reasons"] == [
        "priority 10017 is taken by a foreign rule 10017 from 192.0.2.9 lookup 254"]
    assert status["servers"]["nas2"]["state"] == "in-sync"
    time.sleep(0.3)
    assert any(r["priority"] == 10017 and r.get("src") == "192.0.2.9"
               for r in ip_json("rule") if r.get("protocol") != "vsnet")


def test_a_waiting_uplink_converges_when_it_appears(uplink: str, tmp_path: Path) -> None:
    config = tmp_path / "servers.yaml"
    config.write_text(CONFIG.replace("uplink: eth0\n    addresses:\n      - {address: 10.0.0.5",
                                     "uplink: eth7\n    addresses:\n      - {address: 10.0.0.5"))
    running = Daemon(tmp_path, config)
    try:
        running.ready()
        assert running.status()["servers"]["nas1"]["state"] == "waiting"
        ip("link", "add", "eth7", "type", "veth", "peer", "name", "eth7p")
        ip("link", "set", "eth7", "up")
        wait_until(lambda: running.status()["servers"]["nas1"]["state"] == "in-sync",
                   what="nas1 in sync")
        assert addresses("eth7") == {"10.0.0.5", "10.0.1.5"}
    finally:
        running.stop()


def netlink_changes() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    sock.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE: count every change
    groups = 0x1 | 0x10 | 0x40 | 0x80 | 0x100 | 0x400 | (1 << 18)  # links, addrs, routes, rules
    sock.bind((0, groups))
    sock.setblocking(False)
    return sock


def count_changes(sock: socket.socket) -> int:
    count = 0
    while True:
        try:
            data = sock.recv(1 << 20)
        except BlockingIOError:
            return count
        offset = 0
        while offset + 16 <= len(data):
            length, kind = struct.unpack_from("=IH", data, offset)
            count += kind in (16, 17, 20, 21, 24, 25, 32, 33)
            offset += (length + 3) & ~3


def test_a_restart_over_converged_state_changes_nothing(
    uplink: str, config_file: Path, tmp_path: Path
) -> None:
    first = Daemon(tmp_path, config_file)
    first.ready()
    assert first.stop() == 0
    watcher = netlink_changes()
    second = Daemon(tmp_path, config_file)
    try:
        second.ready()
        time.sleep(0.2)
        assert count_changes(watcher) == 0
        assert second.status()["daemon"]["last_reconcile"]["changes"] == 0
    finally:
        second.stop()


def big_config(servers: int) -> str:
    lines = ["version: 1", "servers:"]
    for i in range(1, servers + 1):
        lines.append(f"  v{i}: {{id: {i}, mode: pbr, uplink: eth0, addresses: "
                     f"[{{address: 10.{i // 250}.{i % 250}.5/16, gateway: 10.{i // 250}.0.1}}],"
                     f" gateway: 10.{i // 250}.0.1}}")
    return "\n".join(lines) + "\n"


def wait_for_first_route(sock: socket.socket, timeout: float = 30.0) -> None:
    """Block until the kernel announces a route of vsnet's (added after the addresses)."""
    sock.setblocking(True)
    sock.settimeout(timeout)
    while True:
        try:
            data = sock.recv(1 << 20)
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:  # lost some: later ones will do
                continue
            raise
        offset = 0
        while offset + 16 <= len(data):
            length, kind = struct.unpack_from("=IH", data, offset)
            if kind == 24 and data[offset + 16 + 5] == VSNET_PROTOCOL:  # RTM_NEWROUTE, ours
                return
            offset += (length + 3) & ~3


def test_kill_9_during_a_large_apply_then_restart(
    uplink: str, config_file: Path, tmp_path: Path
) -> None:
    ip("rule", "add", "priority", "10016", "from", "192.0.2.7", "lookup", "main")  # v1's slot
    foreign = [r for r in ip_json("rule") if r.get("protocol") != "vsnet"]
    config_file.write_text(big_config(1000))
    watcher = netlink_changes()
    first = Daemon(tmp_path, config_file)
    wait_for_first_route(watcher)
    first.stop(signal.SIGKILL)  # routes being added: no rule exists yet
    routes = [r for r in ip_json("route", "show", "table", "all") if r.get("protocol") == "vsnet"]
    assert 0 < len(routes) < 4000 and vsnet_rules() == []  # killed half-way
    second = Daemon(tmp_path, config_file)
    try:
        second.ready(60)
        rules = vsnet_rules()
        assert len(rules) == 2000 - 2  # an address rule and a mark rule per VS, but v1's
        assert len({(r["priority"], r.get("src"), r.get("fwmark")) for r in rules}) == len(rules)
        routes = [r for r in ip_json("route", "show", "table", "all")
                  if r.get("protocol") == "vsnet"]
        assert len(routes) == 4000 - 4
        assert len({(r["table"], r["dst"]) for r in routes}) == len(routes)
        status = second.status()["servers"]
        assert {n for n, s in status.items() if s["state"] != "in-sync"} == {"v1"}
        assert status["v1"]["state"] == "conflict"  # v1's block holds the foreign rule
        assert [r for r in ip_json("rule") if r.get("protocol") != "vsnet"] == foreign
    finally:
        second.stop()


def test_the_unit_file_verifies(tmp_path: Path) -> None:
    unit = (ROOT / "systemd" / "vsnetd.service").read_text()
    local = tmp_path / "vsnetd.service"
    local.write_text(unit.replace("/usr/bin/vsnetd", shutil.which("vsnetd") or
                                  str(Path(sys.executable).with_name("vsnetd"))))
    # --man=no: the man pages it names come with the package (tests/test_package.py)
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(local)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "Type=notify" in unit and "WatchdogSec=" in unit and "ExecReload=" in unit


def test_namespaces_are_mounted_in_the_mount_namespace_given(
    uplink: str, config_file: Path, tmp_path: Path
) -> None:
    """As under systemd: vsnetd in a mount namespace of its own (ProtectSystem=), its
    network namespaces mounted where everyone else sees them (--mount-ns)."""
    here = f"/proc/{os.getpid()}/ns/mnt"
    running = Daemon(tmp_path, config_file, ["--mount-ns", here],
                     wrapper=["unshare", "--mount", "--propagation", "slave"])
    try:
        running.ready()
        assert "vs-nas2" in os.listdir("/run/netns")
        assert addresses("nas2", "vs-nas2") == {"10.1.1.5"}  # `ip -n` works from here
    finally:
        running.stop()
