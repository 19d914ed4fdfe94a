"""placement: cluster: a VS known everywhere, in the kernel only where it is activated;
its neighbours follow it (gratuitous ARP / unsolicited NA); the OCF agent passes ocf-tester."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.daemons import Daemon, addresses, vsnet_rules
from tests.sandbox import ip, ip_json, sh
from vsnetd import activation, cli, ctl, neighbours
from vsnetd.compile import compile_config
from vsnetd.config import DEFAULT_CONFIG_PATH, ConfigError, parse_config

AGENT = ROOT / "packaging" / "ocf" / "vsnet"

CONFIG = """\
version: 1
servers:
  web:
    id: 1
    mode: pbr
    uplink: eth0
    addresses: [{address: 10.0.0.4/24}]
  nas1:
    id: 2
    mode: pbr
    placement: cluster
    uplink: eth0
    addresses:
      - {address: 10.0.0.5/24, gateway: 10.0.0.1}
      - {address: 10.0.0.6/24}
      - {address: fd00::5/64}
    gateway: 10.0.0.1
  nas2:
    id: 3
    mode: netns
    placement: cluster
    uplink: eth0
    addresses: [{address: 10.0.0.7/24}, {address: fd00::7/64}]
    gateway: 10.0.0.1
"""


# --------------------------------------------------------------------------- pure


def test_placement_is_validated_with_its_place() -> None:
    config = parse_config(CONFIG)
    assert config.servers["nas1"].placement == "cluster"
    assert config.servers["web"].placement == "local"
    with pytest.raises(ConfigError) as bad:
        parse_config(CONFIG.replace("placement: cluster\n    uplink: eth0\n    addresses: [",
                                    "placement: everywhere\n    uplink: eth0\n    addresses: ["),
                     "s.yaml")
    assert [str(i) for i in bad.value.issues] == [
        "s.yaml:21:16: servers.nas2.placement: everywhere: Input should be 'local' or 'cluster'"]
    shared = CONFIG.replace("    mode: netns\n", "    mode: netns\n    namespace: shared\n")
    with pytest.raises(ConfigError) as bad:
        parse_config(shared, "s.yaml")
    assert [str(i) for i in bad.value.issues] == [
        "s.yaml:21:16: servers.nas2.namespace: a VS with placement cluster keeps the namespace "
        "of its own (vs-<name>)"]


def test_an_inactive_vs_keeps_its_numbers_and_is_deleted_in_its_name() -> None:
    config = parse_config(CONFIG)
    compiled = compile_config(config)
    only_web = activation.select(compiled, config, frozenset())
    assert set(only_web.servers) == {"web"}
    assert only_web.scope == compiled.scope  # nas1's and nas2's numbers stay reserved
    assert only_web.former_names == {2: "nas1", 3: "nas2"}
    assert only_web.former_namespaces == {"vs-nas2": "nas2"}
    assert set(activation.select(compiled, config, frozenset({"nas2"})).servers) == {"web", "nas2"}
    assert activation.check_names(config, ["web", "nope", "nas1"]) == [
        "web: placement is local, not cluster: it is always active",
        "nope: no such server in the config"]


def test_the_front_door_agrees_with_the_config_module() -> None:
    assert Path(ctl.DEFAULT_CONFIG) == DEFAULT_CONFIG_PATH
    assert Path(cli.DEFAULT_CONFIG_PATH) == DEFAULT_CONFIG_PATH
    assert ctl.split(["-c", "x.yaml", "activate", "a", "b", "--json"]) == (
        "activate", "x.yaml", True, ["a", "b"])
    assert ctl.split(["activate", "--help"]) is None
    # the front door does not pay for pydantic
    code = "import sys, vsnetd.ctl; print('pydantic' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


def test_announcement_frames_are_what_the_rfcs_say() -> None:
    mac = bytes.fromhex("020000000001")
    arp = neighbours.arp_announcement(mac, ipaddress.IPv4Address("10.0.0.5"))
    assert arp[:6] == b"\xff" * 6 and arp[6:12] == mac and arp[12:14] == b"\x08\x06"
    assert arp[14 + 6 : 14 + 8] == b"\x00\x01"  # a request
    assert arp[14 + 14 : 14 + 18] == arp[14 + 24 : 14 + 28] == bytes([10, 0, 0, 5])
    na = neighbours.neighbour_advertisement(mac, ipaddress.IPv6Address("fd00::5"))
    assert na[:6] == bytes.fromhex("333300000001") and na[12:14] == b"\x86\xdd"
    assert na[14 + 7] == 255  # hop limit: receivers drop anything else
    icmp = na[14 + 40 :]
    assert icmp[0] == 136 and icmp[4] & 0x20  # Override
    pseudo = na[14 + 8 : 14 + 40] + len(icmp).to_bytes(4, "big") + b"\0\0\0\x3a"
    assert neighbours._checksum(pseudo + icmp) == 0  # the checksum is right


# --------------------------------------------------------------------------- the kernel


CLIENT_MAC = "02:00:00:00:00:99"  # what the client's entries say before the announcement


@pytest.fixture
def lan(uplink: str) -> Iterator[str]:
    """The uplink's peer in a namespace of its own, ``client``: a host on the VS's link."""
    ip("netns", "add", "client")
    ip("link", "set", "peer0", "netns", "client")
    ip("link", "set", "lo", "up", netns="client")
    ip("addr", "add", "10.0.0.100/24", "dev", "peer0", netns="client")
    ip("addr", "add", "fd00::100/64", "dev", "peer0", "nodad", netns="client")
    ip("link", "set", "peer0", "up", netns="client")
    yield "client"


@pytest.fixture
def cluster_daemon(lan: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                   ) -> Iterator[Daemon]:
    path = tmp_path / "etc" / "servers.yaml"
    path.parent.mkdir()
    path.write_text(CONFIG)
    monkeypatch.setenv("VSNET_ACTIVE", str(tmp_path / "active"))
    running = Daemon(tmp_path, path)
    running.ready()
    yield running
    running.stop()


def vsnetctl(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vsnetd.ctl", "-c", str(daemon.config), *args],
                          capture_output=True, text=True, env=daemon.env, timeout=30)


def stale_entries(netns: str, *addresses: str) -> None:
    for address in addresses:
        ip("neigh", "replace", address, "lladdr", CLIENT_MAC, "dev", "peer0", "nud", "stale",
           netns=netns)


def neighbour_mac(netns: str, address: str) -> str | None:
    entries = ip_json("neigh", "show", address, "dev", "peer0", netns=netns)
    return entries[0].get("lladdr") if entries else None


def mac_of(device: str, netns: str | None = None) -> str:
    return str(ip_json("link", "show", "dev", device, netns=netns)[0]["address"])


def states(daemon: Daemon) -> dict[str, tuple[str, bool]]:
    return {name: (s["state"], s["active"]) for name, s in daemon.status()["servers"].items()}


def test_activate_deactivate_and_neighbours_follow(cluster_daemon: Daemon, tmp_path: Path
                                                   ) -> None:
    daemon = cluster_daemon
    # foreign objects beside vsnet's: an address on the uplink, a rule
    ip("addr", "add", "10.0.0.50/24", "dev", "eth0")
    ip("rule", "add", "priority", "10070", "from", "10.9.9.9", "lookup", "main")
    assert addresses() == {"10.0.0.4", "10.0.0.50"}
    assert "vs-nas2" not in os.listdir("/run/netns")
    assert states(daemon) == {"web": ("in-sync", True), "nas1": ("inactive", False),
                              "nas2": ("inactive", False)}
    human = subprocess.run([sys.executable, "-m", "vsnetd.cli", "status", "-c",
                            str(daemon.config)], capture_output=True, text=True, env=daemon.env)
    assert human.returncode == 0, human.stdout + human.stderr
    rows = [line.split() for line in human.stdout.splitlines()[4:7]]
    assert {row[0]: row[5] for row in rows} == {
        "web": "in-sync", "nas1": "inactive", "nas2": "inactive"}
    assert vsnetctl(daemon, "is-active", "nas1").returncode == ctl.EXIT_INACTIVE

    stale_entries("client", "10.0.0.5", "10.0.0.6", "fd00::5", "10.0.0.7", "fd00::7")
    done = vsnetctl(daemon, "activate", "nas1", "nas2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "nas1: active, in-sync" in done.stdout
    assert addresses() == {"10.0.0.4", "10.0.0.50", "10.0.0.5", "10.0.0.6", "fd00::5"}
    assert addresses("nas2", "vs-nas2") == {"10.0.0.7", "fd00::7"}
    assert (tmp_path / "active").read_text() == "nas1\nnas2\n"
    # the client's entries now name the VS's devices: the first round left before the reply
    assert neighbour_mac("client", "10.0.0.5") == mac_of("eth0")
    assert neighbour_mac("client", "10.0.0.6") == mac_of("eth0")
    assert neighbour_mac("client", "fd00::5") == mac_of("eth0")
    assert neighbour_mac("client", "10.0.0.7") == mac_of("nas2", "vs-nas2")
    assert neighbour_mac("client", "fd00::7") == mac_of("nas2", "vs-nas2")
    assert vsnetctl(daemon, "is-active", "nas1", "nas2").returncode == 0
    # ... and the VS serves: the client reaches it
    sh("ping", "-c1", "-W2", "10.0.0.7", netns="client")

    # a restart keeps the active set (runtime state under /run/vsnet) and changes nothing
    rules = vsnet_rules()
    assert daemon.stop(signal.SIGTERM) == 0
    again = Daemon(tmp_path, daemon.config)
    again.ready()
    assert states(again) == {"web": ("in-sync", True), "nas1": ("in-sync", True),
                             "nas2": ("in-sync", True)}
    assert vsnet_rules() == rules

    done = vsnetctl(again, "deactivate", "nas1", "nas2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert addresses() == {"10.0.0.4", "10.0.0.50"}
    assert "vs-nas2" not in os.listdir("/run/netns")
    assert not any(r["priority"] in range(10032, 10064) for r in vsnet_rules())
    assert any(r["priority"] == 10070 for r in ip_json("rule"))  # the foreign rule stays
    assert vsnetctl(again, "is-active", "nas1").returncode == ctl.EXIT_INACTIVE
    # a name that is not a cluster VS: refused with its reason, exit 2
    refused = vsnetctl(again, "activate", "web")
    assert refused.returncode == ctl.EXIT_REFUSED
    assert "web: placement is local, not cluster" in refused.stderr
    again.stop()


def test_without_a_daemon_vsnetctl_activates_itself(lan: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "servers.yaml"
    path.write_text(CONFIG)
    env = dict(os.environ, VSNET_ACTIVE=str(tmp_path / "active"),
               VSNET_CONTROL=str(tmp_path / "none.sock"))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "vsnetd.ctl", "-c", str(path), *args],
                              capture_output=True, text=True, env=env, timeout=60)

    stale_entries("client", "10.0.0.5")
    done = run("activate", "nas1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert addresses() == {"10.0.0.4", "10.0.0.5", "10.0.0.6", "fd00::5"}
    assert neighbour_mac("client", "10.0.0.5") == mac_of("eth0")
    assert run("is-active", "nas1").returncode == 0
    assert run("is-active", "nas2").returncode == ctl.EXIT_INACTIVE
    status = json.loads(run("--json", "status").stdout)
    assert {n: s["state"] for n, s in status["servers"].items()} == {
        "web": "in-sync", "nas1": "in-sync", "nas2": "inactive"}
    assert run("deactivate", "nas1").returncode == 0
    assert addresses() == {"10.0.0.4"}


def test_the_ocf_agent_passes_ocf_tester(cluster_daemon: Daemon, tmp_path: Path) -> None:
    if shutil.which("ocf-tester") is None:
        pytest.fail("ocf-tester is missing: scripts/install-deps.sh installs resource-agents")
    # ocf-tester runs the agent's meta-data as nobody: it needs a copy it can read
    agent = Path("/run/vsnet-ocf-test/server")
    agent.parent.mkdir(mode=0o755, exist_ok=True)
    shutil.copy(AGENT, agent)
    agent.chmod(0o755)
    vsnetctl_wrapper = agent.parent / "vsnetctl"
    vsnetctl_wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} -m vsnetd.ctl \"$@\"\n")
    vsnetctl_wrapper.chmod(0o755)
    env: dict[str, Any] = dict(cluster_daemon.env, VSNETCTL=str(vsnetctl_wrapper),
                               PYTHONPATH=str(ROOT))
    try:
        result = subprocess.run(
            ["ocf-tester", "-v", "-n", "nas2test", "-o", "server=nas2", "-o",
             f"config={cluster_daemon.config}", str(agent)],
            capture_output=True, text=True, env=env, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "passed all tests" in result.stdout
        # and it did switch the VS: the last step stopped it
        assert "vs-nas2" not in os.listdir("/run/netns")
        # the codes a cluster manager acts on
        def agent_rc(action: str, **params: str) -> int:
            ocf = {f"OCF_RESKEY_{k}": v for k, v in params.items()}
            return subprocess.run([str(agent), action], env=dict(
                env, OCF_ROOT="/usr/lib/ocf", OCF_RESOURCE_INSTANCE="t", **ocf),
                capture_output=True).returncode
        config = str(cluster_daemon.config)
        assert agent_rc("validate-all", config=config) == 6  # OCF_ERR_CONFIGURED: no server
        assert agent_rc("validate-all", server="web", config=config) == 6  # not cluster
        assert agent_rc("monitor", server="nas1", config=config) == 7  # OCF_NOT_RUNNING
        assert agent_rc("start", server="nas1", config=config) == 0
        assert agent_rc("monitor", server="nas1", config=config) == 0
        # broken beyond repair: the daemon gone and the kernel changed behind its back
        cluster_daemon.stop()
        ip("addr", "del", "10.0.0.6/24", "dev", "eth0")
        assert agent_rc("monitor", server="nas1", config=config) == 1  # OCF_ERR_GENERIC
        assert agent_rc("stop", server="nas1", config=config) == 0
        assert addresses() == {"10.0.0.4"}
    finally:
        shutil.rmtree(agent.parent)
