"""vsnetd as a real process in the test's namespace: watch, self-heal, restart, systemd."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import resource
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.daemons import (
    OTHER_UID,
    Daemon,
    addresses,
    patched,
    save,
    unit_capabilities,
    vsnet_rules,
    wait_until,
)
from tests.hostile import costly_config
from tests.sandbox import ip, ip_json
from vsnetd import control
from vsnetd.client import servers as client_servers
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


WEB = "servers:\n  web: {id: 3, mode: pbr, uplink: eth0, addresses: [{address: %s}]}\n"


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


def test_start_converges_and_speaks_the_notify_protocol(daemon: Daemon) -> None:
    status = daemon.status()
    assert {name: s["state"] for name, s in status["servers"].items()} == {
        "nas1": "in-sync", "nas2": "in-sync"}
    assert status["daemon"]["generation"] == 1
    assert status["daemon"]["pending"] == {}  # nothing waits for a retry
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
    ip("rule", "del", "priority", "24884")  # nas1's from 10.0.0.5 (docs/rule-tree.md)
    ip("rule", "del", "priority", "10000")  # the rule tree's first rule, shared by all VS
    ip("route", "del", "default", "table", "10017")
    wait_until(lambda: any(r["priority"] == 24884 for r in vsnet_rules()), what="the rule")
    wait_until(lambda: any(r["priority"] == 10000 and r.get("goto") for r in ip_json("rule")),
               what="the shared rule")
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
    ip("rule", "add", "priority", "25012", "from", "192.0.2.9", "lookup", "main")
    status = wait_until(lambda: (s := daemon.status())["servers"]["nas1"]["state"] == "conflict"
                        and s, what="the conflict")
    assert status["servers"]["nas1"]["reasons"] == [
        "priority 25012 is taken by a foreign rule 25012 from 192.0.2.9 lookup 254"]
    assert status["servers"]["nas2"]["state"] == "in-sync"
    # a full reload answers once converged: the witness that vsnet has looked again
    reload = subprocess.run([sys.executable, "-m", "vsnetd.cli", "reload"],
                            capture_output=True, text=True, env=daemon.env, timeout=30)
    assert reload.returncode == 0, reload.stdout + reload.stderr
    assert daemon.status()["servers"]["nas1"]["state"] == "conflict"
    assert any(r["priority"] == 25012 and r.get("src") == "192.0.2.9"
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


MARKER_PRIORITY = 5  # a rule the test adds: everything announced before it has been read


def count_changes_until_marker(sock: socket.socket) -> int:
    """Changes announced since the socket was opened until the test's marker rule (added
    after what is being counted), but the kernel's own doings on an uplink that just came
    up (IPv6 duplicate address detection ending: its link-local address and the routes
    the kernel makes for it, which no vsnet request causes)."""
    ip("rule", "add", "priority", str(MARKER_PRIORITY), "from", "192.0.2.123", "lookup", "main")
    sock.setblocking(True)
    sock.settimeout(10)
    count = 0
    while True:
        data = sock.recv(1 << 20)
        offset = 0
        while offset + 16 <= len(data):
            length, kind = struct.unpack_from("=IH", data, offset)
            body = offset + 16
            if kind == 32 and _rule_priority(data, body + 12, offset + length) == MARKER_PRIORITY:
                return count  # RTM_NEWRULE of the marker
            link_local = kind in (20, 21) and data[body] == socket.AF_INET6 and (
                data[body + 3] == 253)  # ifa_scope: RT_SCOPE_LINK
            kernel_route = kind in (24, 25) and data[body + 5] == 2  # rtm_protocol: kernel
            count += kind in (16, 17, 20, 21, 24, 25, 32, 33) and not (
                link_local or kernel_route)
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
        assert count_changes_until_marker(watcher) == 0
        assert second.status()["daemon"]["last_reconcile"]["changes"] == 0
    finally:
        second.stop()


def _rule_priority(data: bytes, start: int, end: int) -> int | None:
    """FRA_PRIORITY of a rule message's attributes."""
    while start + 4 <= end:
        length, kind = struct.unpack_from("=HH", data, start)
        if length < 4:
            return None
        if kind == 6:
            return int(struct.unpack_from("=I", data, start + 4)[0])
        start += (length + 3) & ~3
    return None


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
    # v5's rule's place, which v1000's shares (their /30 nodes fold onto one group of the
    # rule tree, docs/rule-tree.md): both are conflicts
    ip("rule", "add", "priority", "25524", "from", "192.0.2.7", "lookup", "main")
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
        assert len(rules) == 2000 - 4  # an address rule and a mark rule per VS, but theirs
        assert len({(r["priority"], r.get("src"), r.get("fwmark")) for r in rules}) == len(rules)
        routes = [r for r in ip_json("route", "show", "table", "all")
                  if r.get("protocol") == "vsnet"]
        assert len(routes) == 4000 - 8
        assert len({(r["table"], r["dst"]) for r in routes}) == len(routes)
        status = second.status()["servers"]
        assert {n for n, s in status.items() if s["state"] != "in-sync"} == {"v5", "v1000"}
        assert status["v5"]["state"] == "conflict"  # v5's group holds the foreign rule
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


# --------------------------------------------------------------------------- hostile input


def answers(daemon: Daemon) -> dict[str, Any]:
    """The daemon's status through the control socket; a second at most (the witness
    that it is not stuck)."""
    return control.request("status", daemon.control, timeout=1.0)


def peak_memory(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def still_healing(daemon: Daemon) -> None:
    """It answers, and a rule of vsnet's deleted by hand comes back."""
    assert answers(daemon)["ok"]
    ip("rule", "del", "priority", "24884")  # nas1's from 10.0.0.5 (docs/rule-tree.md)
    wait_until(lambda: any(r["priority"] == 24884 for r in vsnet_rules()), 1.0,
               "the rule deleted by hand back")
    assert answers(daemon)["ok"]


def replace_with_fifo(path: Path) -> None:
    fifo = path.with_name(".fifo")
    os.mkfifo(fifo)
    fifo.replace(path)


def replace_with_directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


def replace_with_huge_file(path: Path) -> None:
    huge = path.with_name(".huge")
    with huge.open("wb") as sparse:  # 1 GiB that takes no disk
        sparse.truncate(1 << 30)
    huge.replace(path)


def replace_with_billion_laughs(path: Path) -> None:
    lines = ["version: 1", "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    save(path, "\n".join([*lines, "servers: {x: *a9}"]) + "\n")


def replace_with_merge_key(path: Path) -> None:
    save(path, "version: 1\n<<: 3\n")  # libyaml's safe constructor raises


def replace_with_dev_zero(path: Path) -> None:
    link = path.with_name(".link")
    link.symlink_to("/dev/zero")
    link.replace(path)


@pytest.mark.parametrize(("hostile", "reason"), [
    (replace_with_dev_zero, "refused: a character device, not a regular file"),
    (replace_with_fifo, "refused: a named pipe, not a regular file"),
    (replace_with_directory, "refused: a directory, not a regular file"),
    (replace_with_huge_file, f"refused: {1 << 30} bytes, more than {16 << 20} "
                             "(settings.max_file_bytes)"),
    (replace_with_billion_laughs, f"the document expands (aliases included) to more than "
                                  f"{16 << 20} bytes (settings.max_file_bytes)"),
    (replace_with_merge_key, "YAML: expected a mapping or list of mappings for merging, "
                             "but found scalar"),
], ids=["dev-zero", "fifo", "directory", "huge", "billion-laughs", "merge-key"])
def test_a_hostile_config_is_refused_and_healing_goes_on(
    daemon: Daemon, config_file: Path, hostile: Callable[[Path], None], reason: str
) -> None:
    rules = vsnet_rules()
    hostile(config_file)

    def refused() -> dict[str, Any] | None:
        status = answers(daemon)
        messages = [e["message"] for e in status["daemon"]["config_errors"]]
        return status if messages == [reason] else None

    status = wait_until(refused, what="the refusal")
    [error] = status["daemon"]["config_errors"]
    assert (error["file"], error["message"]) == (str(config_file), reason)
    assert status["daemon"]["generation"] == 1
    assert vsnet_rules() == rules  # the last good state stays
    still_healing(daemon)
    assert peak_memory(daemon.proc.pid) < 200_000_000
    # a valid file afterwards converges
    if config_file.is_dir():
        config_file.rmdir()
    save(config_file, CONFIG.replace("10.0.1.5/24", "10.0.1.6/24"))
    wait_until(lambda: addresses() == {"10.0.0.5", "10.0.1.6"}, what="the valid file")
    assert answers(daemon)["daemon"]["config_errors"] == []


def address_space(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmSize")


def test_a_drop_in_whose_name_is_not_utf8_is_refused_by_name_everywhere(
    daemon: Daemon, config_file: Path
) -> None:
    """A file name the file system holds as bytes that are no UTF-8: its refusal names it
    (with the undecodable byte escaped) in `vsnetctl status`, in STATUS= and after a heal,
    and the daemon's loop meets no error on its way."""
    directory = config_file.with_name("servers.d")
    directory.mkdir()
    bad = os.fsdecode(bytes(directory) + b"/bad\xff.yaml")
    save(Path(bad), "servers: {web: 1}\n")
    status = wait_until(lambda: (s := answers(daemon))["daemon"]["config_errors"] and s,
                        what="the refusal")
    assert [e["file"] for e in status["daemon"]["config_errors"]] == [bad]
    still_healing(daemon)  # a heal sends STATUS= with the refusal in it
    wait_until(lambda: any("bad\\xff.yaml" in m.get("STATUS", "")
                           for m in daemon.notify.poll()), what="STATUS= naming the file")
    assert "*" not in answers(daemon)["daemon"]["pending"]  # no error in the loop
    shown = daemon.vsnetctl("status")
    assert shown.returncode == 2, shown.stderr  # pending: a config is refused
    assert f"config refused: {directory}/bad\\udcff.yaml:1:16: servers.web: 1: " in shown.stdout


def control_raw(daemon: Daemon, line: bytes) -> dict[str, Any]:
    """One request line as sent, its reply as read (a second at most)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        sock.connect(str(daemon.control))
        sock.sendall(line)
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = sock.recv(65536)
            assert chunk, f"the daemon closed the connection without a reply to {line[:40]!r}"
            reply += chunk
    answer: dict[str, Any] = json.loads(reply)
    return answer


def test_a_control_request_nested_too_deep_is_answered_and_healing_goes_on(
    daemon: Daemon
) -> None:
    reply = control_raw(daemon, b"[" * 60_000 + b"\n")  # within the 64 KiB a request may be
    assert reply["ok"] is False, reply
    assert reply["error"].startswith("malformed JSON: maximum recursion depth exceeded")
    still_healing(daemon)
    assert "*" not in answers(daemon)["daemon"]["pending"]  # no error in the loop


def test_running_out_of_memory_refuses_the_read_and_healing_goes_on(
    daemon: Daemon, config_file: Path
) -> None:
    """vsnetd may grow by 64 MiB of address space (RLIMIT_AS, as systemd's LimitAS= or
    vm.overcommit_memory=2 would have it); a file that needs more to be read is refused
    like a bad one (naming it), the last good state stays, healing goes on, and the
    next valid file converges under the same limit."""
    pid = daemon.proc.pid
    rules = vsnet_rules()
    limit = address_space(pid) + (64 << 20)
    # the soft limit is the one enforced; lowering the hard one could not be undone
    resource.prlimit(pid, resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))
    try:
        save(config_file, costly_config(200_000))  # ~400 MiB to read

        def refused() -> dict[str, Any] | None:
            status = answers(daemon)  # "out of memory, try again" while memory runs out
            return status if status.get("daemon", {}).get("config_errors") else None

        status = wait_until(refused, 60.0, "the refusal")
        [error] = status["daemon"]["config_errors"]
        assert (error["file"], error["line"]) == (str(config_file), 0)
        assert "ran out of memory" in error["message"]
        assert status["daemon"]["generation"] == 1
        assert vsnet_rules() == rules  # the last good state stays
        still_healing(daemon)
        save(config_file, CONFIG.replace("10.0.1.5/24", "10.0.1.6/24"))
        wait_until(lambda: addresses() == {"10.0.0.5", "10.0.1.6"}, what="the valid file")
        assert answers(daemon)["daemon"]["config_errors"] == []
        assert any(r.get("src") == "10.0.1.6" for r in vsnet_rules())
    finally:
        resource.prlimit(pid, resource.RLIMIT_AS, (resource.RLIM_INFINITY,) * 2)


def test_a_full_broker_does_not_stop_healing(
    uplink: str, config_file: Path, tmp_path: Path
) -> None:
    """LimitNOFILE=1024 (a container's default) and 1100 idle broker clients: the broker
    keeps a reserve of descriptors, healing goes on, clients are served again as soon as
    some leave."""
    broker = tmp_path / "broker.sock"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4096), max(hard, 4096)))
    running = Daemon(tmp_path, config_file, ["--broker", str(broker)],
                     wrapper=["prlimit", "--nofile=1024:1024", "--"])
    clients: list[socket.socket] = []
    try:
        running.ready()
        for _ in range(1100):
            client = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            client.connect(str(broker))
            clients.append(client)
        # the witness that every connection was seen: the broker's own count settles
        status = wait_until(
            lambda: (s := answers(running))["daemon"]["broker"]["clients"]
            + s["daemon"]["broker"]["refused"] >= 1100 and s, what="every client seen")
        held = status["daemon"]["broker"]["clients"]
        assert 0 < held < 1024 - 64
        still_healing(running)
        for client in clients[:300]:
            client.close()
        del clients[:300]
        # descriptors free again: a new client is served
        assert wait_until(lambda: _served(broker), 2.0, "a client served again")
        still_healing(running)
        assert peak_memory(running.proc.pid) < 200_000_000
    finally:
        for client in clients:
            client.close()
        running.stop()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _served(broker: Path) -> bool:
    try:
        return isinstance(client_servers(broker), list)
    except Exception:  # refused (closed at once) while the broker is full
        return False


def test_drop_in_files_are_added_changed_and_removed_live(daemon: Daemon, config_file: Path
                                                         ) -> None:
    directory = config_file.with_name("servers.d")
    directory.mkdir()
    web = directory / "web.yaml"
    entry = "servers:\n  web: {id: 3, mode: pbr, uplink: eth0, addresses: [{address: %s}]}\n"
    save(web, entry % "10.0.2.5/24")
    wait_until(lambda: "10.0.2.5" in addresses(), what="the added file")
    assert any(r["table"] == "10048" and r.get("src") == "10.0.2.5" for r in vsnet_rules())
    save(web, entry % "10.0.2.6/24")
    wait_until(lambda: "10.0.2.6" in addresses() and "10.0.2.5" not in addresses(),
               what="the changed file")
    # nas1 defined a second time, in another file: refused, naming both files
    twice = directory / "twice.yaml"
    save(twice, "servers:\n  nas1: {id: 9, mode: pbr, uplink: eth0, "
                "addresses: [{address: 10.0.3.5/24}]}\n")
    status = wait_until(lambda: (s := answers(daemon))["daemon"]["config_errors"] and s,
                        what="the refusal")
    assert status["daemon"]["config_errors"] == [{
        "file": str(twice), "line": 2, "column": 3, "path": "servers.nas1",
        "message": f"nas1 is already defined in {config_file}"}]
    assert "10.0.3.5" not in addresses()
    twice.unlink()
    wait_until(lambda: not answers(daemon)["daemon"]["config_errors"], what="the fix")
    web.unlink()
    wait_until(lambda: "10.0.2.6" not in addresses(), what="the removed file")
    assert not any(r["table"] in ("10048", "10063") for r in vsnet_rules())
    assert addresses() == {"10.0.0.5", "10.0.1.5"}
    assert set(answers(daemon)["servers"]) == {"nas1", "nas2"}


# --------------------------------------------------------------------------- failing runs


@contextlib.contextmanager
def denied(path: Path, mode: int = 0, owner: int | None = None) -> Iterator[None]:
    """``path`` with ``mode`` (and ``owner``) for a while: what a vsnetd holding only the
    unit's capabilities may not read (root bypasses modes only through the DAC ones)."""
    before = path.stat()
    if owner is not None:
        os.chown(path, owner, owner)
    os.chmod(path, mode)
    try:
        yield
    finally:
        os.chown(path, before.st_uid, before.st_gid)
        os.chmod(path, stat.S_IMODE(before.st_mode))


def watchdog_after(daemon: Daemon, seen: int) -> bool:
    """Whether WATCHDOG=1 came after the first ``seen`` notify messages: the witness
    that the loop's turns reach their end."""
    return any(m.get("WATCHDOG") == "1" for m in daemon.notify.poll()[seen:])


def full_run_failing(daemon: Daemon, tries: int = 1) -> dict[str, Any] | None:
    pending = answers(daemon)["daemon"]["pending"].get("*")
    return pending if pending and pending["tries"] >= tries else None


def test_a_full_run_that_keeps_failing_waits_its_backoff_past_the_resync(
    uplink: str, config_file: Path, tmp_path: Path
) -> None:
    """Every full run raises (the namespace directory unreadable): the resync falling
    due does not run it again at each turn of the loop; the loop goes on (WATCHDOG=1)
    and the retry converges once the directory is readable again."""
    running = Daemon(tmp_path, config_file, ["--resync-interval", "0.5"],
                     wrapper=unit_capabilities())
    running.ready()
    with denied(Path("/run/netns")):
        # the resync that failed stays due (only a full run that ends moves it on)
        pending = wait_until(lambda: full_run_failing(running, 2), what="two full runs failed")
        assert "PermissionError" in pending["why"]
        seen = len(running.notify.poll())
        wait_until(lambda: watchdog_after(running, seen), what="WATCHDOG=1 meanwhile")
    wait_until(lambda: answers(running)["daemon"]["pending"] == {}, what="the retry converging")
    still_healing(running)
    running.stop()


def ready_after_reloading(messages: list[dict[str, str]]) -> bool:
    reloading = [i for i, m in enumerate(messages) if m.get("RELOADING") == "1"]
    return bool(reloading) and any(m.get("READY") == "1" for m in messages[reloading[0]:])


def test_a_reload_whose_converge_fails_is_answered_and_ready_follows(
    uplink: str, config_file: Path, tmp_path: Path
) -> None:
    running = Daemon(tmp_path, config_file, wrapper=unit_capabilities())
    running.ready()
    with denied(Path("/run/netns")):
        ip("netns", "del", "vs-nas2")  # a full run, which fails: the kept state is gone
        wait_until(lambda: full_run_failing(running), what="the full run failed")
        before = len(running.notify.poll())
        # the reload's converge is a full run too, and fails the same way
        reply = control.request("reload", running.control, timeout=20)
        assert reply["ok"] is False and "PermissionError" in reply["error"], reply
        assert reply["daemon"]["config_errors"] == []
        assert "*" in reply["daemon"]["pending"]
        wait_until(lambda: ready_after_reloading(running.notify.poll()[before:]),
                   what="READY=1 after RELOADING=1")
    wait_until(lambda: "vs-nas2" in os.listdir("/run/netns")
               and addresses("nas2", "vs-nas2") == {"10.1.1.5"}, what="the retry")
    running.stop()


# the first look at the kernel raises, as with no descriptor left (a start with too few
# of them fails later anyway, opening the control socket: no real condition fails that
# look alone)
FIRST_CONVERGE_FAILS = """
import vsnetd.reconcile
converge, calls = vsnetd.reconcile.converge, []
def first_fails(*args, **kwargs):
    calls.append(None)
    if len(calls) == 1:
        raise OSError(24, "Too many open files")
    return converge(*args, **kwargs)
vsnetd.reconcile.converge = first_fails
"""


def test_vsnetd_starts_when_its_first_converge_fails_and_retries(
    uplink: str, config_file: Path, tmp_path: Path
) -> None:
    running = Daemon(tmp_path, config_file, command=patched(FIRST_CONVERGE_FAILS))
    running.ready()
    wait_until(lambda: {s["state"] for s in answers(running)["servers"].values()} == {"in-sync"},
               what="the retry converging")
    assert "OSError(24, 'Too many open files')" in running.log.read_text()
    assert addresses() == {"10.0.0.5", "10.0.1.5"}
    running.stop()


# the periodic look at nas1's confinement raises, as it does when its cgroup was delegated
# to another user (the unit has no CAP_DAC_OVERRIDE) or no descriptor is left
CHECK_OF_NAS1_FAILS = """
import vsnetd.daemon
recheck = vsnetd.daemon.recheck
def nas1_fails(scope, servers, state, seen):
    servers = list(servers)
    if any(server.name == "nas1" for server in servers):
        raise PermissionError(13, "Permission denied")
    return recheck(scope, servers, state, seen)
vsnetd.daemon.recheck = nas1_fails
"""


def test_a_confinement_check_that_fails_stops_neither_healing_nor_the_watchdog(
    uplink: str, config_file: Path, tmp_path: Path
) -> None:
    """One VS's check raising is healed as if it had changed; the loop goes on."""
    running = Daemon(tmp_path, config_file, command=patched(CHECK_OF_NAS1_FAILS))
    running.ready()
    wait_until(lambda: "PermissionError" in running.log.read_text(), what="a check failed")
    seen = len(running.notify.poll())
    wait_until(lambda: watchdog_after(running, seen), what="WATCHDOG=1 meanwhile")
    still_healing(running)
    assert "nas1: confinement check failed: PermissionError(13" in running.log.read_text()
    running.stop()


def test_a_vs_the_kernel_refuses_leaves_the_others_healed_from_their_notifications(
    uplink: str, config_file: Path, tmp_path: Path
) -> None:
    """nas1's routes refused (its uplink down): the kept state stays for nas2, whose
    namespace is still listened to and healed at once, by a heal of nas2 alone."""
    ip("link", "set", "eth0", "down")
    running = Daemon(tmp_path, config_file)
    running.ready()
    status = answers(running)
    assert (status["servers"]["nas1"]["state"], status["servers"]["nas2"]["state"]) == (
        "failed", "in-sync")
    ip("route", "del", "default", netns="vs-nas2")
    wait_until(lambda: "nas2: changed in the kernel: 1 change(s) applied"
               in running.log.read_text(), what="the heal of nas2")
    assert ip_json("route", "show", "default", netns="vs-nas2")
    assert answers(running)["servers"]["nas1"]["pending"]["tries"] >= 1
    running.stop()


# --------------------------------------------------------------------------- config intake


def test_an_unreadable_drop_in_directory_is_refused_and_every_reload_answered(
    uplink: str, config_file: Path, tmp_path: Path
) -> None:
    """servers.d owned by another user, mode 0750: vsnetd (the unit's capabilities) may
    not list it. The refusal names it; the last good config stays; `vsnetctl reload` is
    answered, and says so; making it readable again is seen."""
    directory = config_file.with_name("servers.d")
    directory.mkdir()
    (directory / "web.yaml").write_text(WEB % "10.0.2.5/24")
    running = Daemon(tmp_path, config_file, wrapper=unit_capabilities())
    running.ready()
    assert "10.0.2.5" in addresses()
    with denied(directory, 0o750, OTHER_UID):
        reload = running.vsnetctl("reload")
        assert reload.returncode == 1 and "Traceback" not in reload.stderr, reload.stderr
        assert f"config refused: {directory}:0:0: : cannot read: Permission denied" in (
            reload.stdout)
        assert "10.0.2.5" in addresses()  # the last good config stays
        still_healing(running)
    wait_until(lambda: not answers(running)["daemon"]["config_errors"], what="readable again")
    running.stop()


def test_vsnetd_starts_with_an_unreadable_drop_in_directory_refused(
    uplink: str, config_file: Path, tmp_path: Path
) -> None:
    """As with an invalid config at start: reported, nothing applied, and the fix seen."""
    directory = config_file.with_name("servers.d")
    directory.mkdir()
    (directory / "web.yaml").write_text(WEB % "10.0.2.5/24")
    with denied(directory, 0o750, OTHER_UID):
        running = Daemon(tmp_path, config_file, wrapper=unit_capabilities())
        running.ready()
        status = answers(running)
        assert status["daemon"]["config_errors"] == [{
            "file": str(directory), "line": 0, "column": 0, "path": "",
            "message": "cannot read: Permission denied"}]
        assert addresses() == set()
    wait_until(lambda: "10.0.2.5" in addresses() and "10.0.0.5" in addresses(),
               what="the config read once readable")
    running.stop()


@pytest.mark.parametrize(("error", "said"), [
    (TimeoutError("timed out"), "vsnetd did not answer the reload within 30 s"),
    (ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
     "Connection reset by peer"),
], ids=["timeout", "reset"])
def test_vsnetctl_reload_says_why_it_has_no_answer(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], error: OSError,
    said: str
) -> None:
    from vsnetd import cli

    def no_answer(*_args: object, **_fields: object) -> dict[str, Any]:
        raise error

    monkeypatch.setattr(control, "request", no_answer)
    assert cli.main(["reload"]) == 1
    printed = capsys.readouterr()
    assert printed.err.startswith("vsnetctl: ") and said in printed.err, printed.err


def test_edits_go_on_after_the_config_directory_is_replaced(
    daemon: Daemon, config_file: Path
) -> None:
    etc = config_file.parent
    new = etc.with_name("etc.new")
    new.mkdir()
    (new / config_file.name).write_text(CONFIG.replace("10.0.1.5/24", "10.0.1.6/24"))
    etc.rename(etc.with_name("etc.old"))
    new.rename(etc)
    wait_until(lambda: addresses() == {"10.0.0.5", "10.0.1.6"}, what="the new directory read")
    save(config_file, CONFIG.replace("10.0.1.5/24", "10.0.1.7/24"))
    wait_until(lambda: addresses() == {"10.0.0.5", "10.0.1.7"}, what="an edit in it")
    # removed, then made again
    shutil.rmtree(etc)
    wait_until(lambda: any(e["message"] == "cannot read: No such file or directory"
                           for e in answers(daemon)["daemon"]["config_errors"]),
               what="the removal")
    etc.mkdir()
    save(config_file, CONFIG.replace("10.0.1.5/24", "10.0.1.8/24"))
    wait_until(lambda: addresses() == {"10.0.0.5", "10.0.1.8"}, what="the directory made again")
    assert answers(daemon)["daemon"]["config_errors"] == []


def test_a_drop_in_hard_linked_into_place_is_read(
    uplink: str, config_file: Path, tmp_path: Path
) -> None:
    directory = config_file.with_name("servers.d")
    directory.mkdir()
    running = Daemon(tmp_path, config_file)
    running.ready()
    written = tmp_path / "web.yaml"
    written.write_text(WEB % "10.0.2.5/24")
    os.link(written, directory / "web.yaml")  # no close in servers.d: a link arrives whole
    wait_until(lambda: "10.0.2.5" in addresses(), what="the linked file")
    running.stop()


def test_status_follows_a_refusal_and_its_fix(daemon: Daemon, config_file: Path) -> None:
    """STATUS= says a file-watched edit was refused, and stops saying so once it is fixed,
    though the fix changes nothing in the kernel."""
    before = len(daemon.notify.poll())
    save(config_file, CONFIG.replace("    gateway: 10.0.1.1\n", "    gateway: 10.0.9.1\n"))
    wait_until(lambda: any("config refused" in m.get("STATUS", "")
                           for m in daemon.notify.poll()[before:]), what="STATUS= refused")
    refused = len(daemon.notify.poll())
    save(config_file, CONFIG)
    wait_until(lambda: any("STATUS" in m and "config refused" not in m["STATUS"]
                           for m in daemon.notify.poll()[refused:]), what="STATUS= fixed")


def test_sighup_only_flags_the_loop() -> None:
    """The handler runs between any two bytecodes of the loop, which may hold the lock
    the reader's request takes: it must take none (the loop asks the reader)."""
    from vsnetd.daemon import Daemon as Vsnetd

    asked: list[int] = []
    vsnetd = Vsnetd.__new__(Vsnetd)
    vsnetd.reader = SimpleNamespace(request=asked.append)  # type: ignore[assignment]
    vsnetd.reload_token, vsnetd.stopping, vsnetd.hangup = 0, False, False
    vsnetd._on_signal(signal.SIGHUP, None)
    assert asked == [] and vsnetd.hangup and not vsnetd.stopping
