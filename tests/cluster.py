"""A real two-node Pacemaker + corosync cluster on one machine, inside the sandbox.

::

    [node1: net+mount+uts+pid ns]  eth0 ─ vn-node1 ─┐
      corosync, pacemakerd, vsnetd, app            br0 (the sandbox's namespace) ─ cl0 ─ [client ns]
    [node2: the same]              eth0 ─ vn-node2 ─┘

Each node is its own network, mount, uts and pid namespace (recipe and gotchas:
/work/shared/spikes/README.md): its own hostname, a private /run and /dev/shm, bind-mounted
corosync and pacemaker state, corosync (knet) and pacemakerd in the foreground, its own
vsnetd with the same config, and the app of tests/cluster_app.py. The OCF agent is
packaging/ocf/vsnet, seen by the nodes as /usr/lib/ocf/resource.d/vsnet/server (a bind
mount in the sandbox's mount namespace only).

Everything dies with the harness: the init of each node runs under ``unshare
--kill-child`` with PR_SET_PDEATHSIG, so killing it (``Cluster.close``, or the harness
dying) kills every process of the node, and the node's namespaces with them.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from tests import sandbox
from tests.sandbox import ip, sh

ROOT = Path(__file__).resolve().parent.parent
AGENT = ROOT / "packaging" / "ocf" / "vsnet"
APP = ROOT / "tests" / "cluster_app.py"
NET, NET6 = "10.77.0", "fd77::"
PORT = 7000
CLIENT = "client"
PR_SET_PDEATHSIG = 1

# pbr and netns VS, several addresses each (IPv4 and IPv6); placement cluster. nas3 is no
# Pacemaker resource: bench/cluster.py runs the agent on it by hand.
VS_CONFIG = f"""\
version: 1
servers:
  nas1:
    id: 1
    mode: pbr
    placement: cluster
    uplink: eth0
    addresses:
      - {{address: {NET}.100/24}}
      - {{address: {NET}.101/24}}
      - {{address: {NET6}100/64}}
  nas2:
    id: 2
    mode: netns
    placement: cluster
    uplink: eth0
    addresses:
      - {{address: {NET}.110/24}}
      - {{address: {NET}.111/24}}
      - {{address: {NET6}110/64}}
  nas3:
    id: 3
    mode: pbr
    placement: cluster
    uplink: eth0
    addresses:
      - {{address: {NET}.120/24}}
      - {{address: {NET}.121/24}}
      - {{address: {NET6}120/64}}
"""
VS_ADDRESSES = {"nas1": [f"{NET}.100", f"{NET}.101", f"{NET6}100"],
                "nas2": [f"{NET}.110", f"{NET}.111", f"{NET6}110"],
                "vip": [f"{NET}.150"]}
VIP = f"{NET}.150"

COROSYNC_CONF = """\
totem {{
    version: 2
    cluster_name: vsnet
    transport: knet
    crypto_cipher: none
    crypto_hash: none
    token: {token}
}}
logging {{
    to_stderr: no
    to_logfile: yes
    logfile: /var/log/cluster/corosync.log
    to_syslog: no
    timestamp: hires
}}
quorum {{
    provider: corosync_votequorum
    two_node: 1
}}
nodelist {{
{nodes}
}}
"""

# dc-deadtime 2 s (else the first election waits 20 s) and no fencing: pre-seeded. And
# load-threshold far up: both nodes share this machine's 2 CPUs with whatever else runs on
# it, and at the default (80 %) the controller throttles itself to one operation at a
# time when the load average is high, which measures the machine's other tenants.
CIB = """\
<cib crm_feature_set="3.16.1" validate-with="pacemaker-3.9" epoch="1" num_updates="0" admin_epoch="0">
  <configuration>
    <crm_config>
      <cluster_property_set id="cib-bootstrap-options">
        <nvpair id="opt-dc-deadtime" name="dc-deadtime" value="2s"/>
        <nvpair id="opt-stonith-enabled" name="stonith-enabled" value="false"/>
        <nvpair id="opt-load-threshold" name="load-threshold" value="1000%"/>
      </cluster_property_set>
    </crm_config>
    <nodes/>
    <resources/>
    <constraints/>
    <rsc_defaults>
      <meta_attributes id="rsc-options">
        <nvpair id="rsc-stickiness" name="resource-stickiness" value="100"/>
      </meta_attributes>
    </rsc_defaults>
  </configuration>
  <status/>
</cib>
"""

NODE_SETUP = """\
set -e
hostname {name}
mount --bind {dir}/etc-corosync /etc/corosync
mount --bind {dir}/lib-corosync /var/lib/corosync
mount --bind {dir}/lib-pacemaker /var/lib/pacemaker
mount --bind {dir}/log /var/log
mount --bind {dir}/node /mnt
mount -t sysfs sysfs /sys
mount -t tmpfs -o mode=755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs -o mode=755 tmpfs /etc/netns
mkdir -p /run/lock /run/vsnet
mkdir -m 1755 /run/resource-agents
touch /mnt/ready
exec sleep infinity
"""


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def spawn(argv: Sequence[str], log: Path | None = None, env: dict[str, str] | None = None
          ) -> subprocess.Popen[bytes]:
    out = log.open("ab") if log is not None else subprocess.DEVNULL
    return subprocess.Popen(list(argv), stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                            env=env, preexec_fn=_die_with_parent)


def wait_for(check: Callable[[], Any], timeout: float, what: str, step: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(step)


def node_env() -> dict[str, str]:
    """The environment of every process of a node: the project's vsnetctl first in PATH
    (the agent calls it), none of the test's VSNET_* overrides."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VSNET_")}
    env["PATH"] = f"{Path(sys.executable).parent}:/usr/sbin:/usr/bin:/sbin:/bin"
    env["PYTHONPATH"] = str(ROOT)
    return env


@dataclass
class Node:
    name: str
    index: int
    dir: Path
    init: subprocess.Popen[bytes] | None = None  # unshare --kill-child
    pid: int = 0  # the node's pid-namespace init, as this namespace sees it
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"{NET}.{self.index}"

    def command(self, argv: Sequence[str]) -> list[str]:
        return ["nsenter", "-t", str(self.pid), "-n", "-m", "-u", "-p", "--", *argv]

    def run(self, *argv: str, check: bool = True, timeout: float = 60) -> str:
        result = subprocess.run(self.command(argv), capture_output=True, text=True,
                                env=node_env(), timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"{self.name}: {' '.join(argv)} failed ({result.returncode}): "
                               f"{result.stdout}{result.stderr}")
        return result.stdout

    def start(self, argv: Sequence[str], log: str, env: dict[str, str] | None = None) -> None:
        self.processes.append(spawn(self.command(argv), self.dir / "log" / log,
                                    env=env or node_env()))

    @property
    def alive(self) -> bool:
        return self.pid != 0 and self.init is not None and self.init.poll() is None

    def netns_path(self) -> str:
        return f"/proc/{self.pid}/ns/net"

    def vs_netns_path(self, netns: str) -> str:
        return f"/proc/{self.pid}/root/run/netns/{netns}"

    def mac(self, device: str = "eth0", netns: str | None = None) -> str:
        argv = ["ip", "-j", *(["-n", netns] if netns else []), "link", "show", "dev", device]
        return str(json.loads(self.run(*argv))[0]["address"])

    def kill(self) -> None:
        """The whole node dies at once: its pid-namespace init, hence every process in it,
        hence its namespaces (a node loss, not a stop of the cluster daemons)."""
        if self.alive:
            os.kill(self.pid, signal.SIGKILL)
        if self.init is not None:
            self.init.kill()
            self.init.wait()
        for proc in self.processes:
            proc.kill()
            proc.wait()
        self.processes.clear()
        self.pid = 0


class Cluster:
    """Two nodes, a bridge and a client, inside the current (sandbox) namespaces."""

    def __init__(self, workdir: Path, token_ms: int = 1000, config: str = VS_CONFIG) -> None:
        self.workdir = workdir
        self.token_ms = token_ms
        self.config = config
        self.nodes = [Node(f"node{i}", i, workdir / f"node{i}") for i in (1, 2)]
        self.ocf_dir = workdir / "ocf"

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        self._agent_visible()
        ip("link", "add", "br0", "type", "bridge")
        ip("addr", "add", f"{NET}.254/24", "dev", "br0")
        ip("link", "set", "br0", "up")
        ip("netns", "add", CLIENT)
        ip("link", "add", "cl0", "type", "veth", "peer", "name", "eth0", "netns", CLIENT)
        ip("link", "set", "cl0", "master", "br0", "up")
        ip("link", "set", "lo", "up", netns=CLIENT)
        ip("addr", "add", f"{NET}.200/24", "dev", "eth0", netns=CLIENT)
        ip("addr", "add", f"{NET6}200/64", "dev", "eth0", "nodad", netns=CLIENT)
        ip("link", "set", "eth0", "up", netns=CLIENT)
        nodelist = "\n".join(
            f"    node {{\n        name: {n.name}\n        nodeid: {n.index}\n"
            f"        ring0_addr: {n.address}\n    }}" for n in self.nodes)
        for node in self.nodes:
            self._boot(node, COROSYNC_CONF.format(token=self.token_ms, nodes=nodelist))
        for node in self.nodes:
            node.start(["corosync", "-f"], "corosync.out")
        for node in self.nodes:
            wait_for(lambda node=node: subprocess.run(  # type: ignore[misc]
                node.command(["corosync-cfgtool", "-s"]), capture_output=True).returncode == 0,
                30, f"corosync on {node.name}", 0.1)
            env = dict(node_env(), PCMK_logfile="/var/log/pacemaker/pacemaker.log",
                       PCMK_logfacility="none", PCMK_debug="no")
            node.start(["pacemakerd"], "pacemakerd.out", env)
            node.start([sys.executable, "-m", "vsnetd.daemon", "-c", "/mnt/servers.yaml"],
                       "vsnetd.out")
            node.start([sys.executable, str(APP), "vs-nas2"], "app.out")
        wait_for(lambda: "Online: [ node1 node2 ]" in self.nodes[0].run(
            "crm_mon", "-1", check=False), 120, "both nodes online", 0.25)

    def _agent_visible(self) -> None:
        """ocf:vsnet:server for the nodes: a directory of providers (heartbeat's and the
        vsnet agent) bind-mounted over /usr/lib/ocf/resource.d, in this mount namespace
        only (the sandbox's: the machine's own stays as it is)."""
        providers = Path("/usr/lib/ocf/resource.d")
        self.ocf_dir.mkdir(parents=True)
        for provider in providers.iterdir():
            (self.ocf_dir / provider.name).mkdir()
            sh("mount", "--bind", str(provider), str(self.ocf_dir / provider.name))
        (self.ocf_dir / "vsnet").mkdir()
        shutil.copy(AGENT, self.ocf_dir / "vsnet" / "server")
        (self.ocf_dir / "vsnet" / "server").chmod(0o755)
        sh("mount", "--rbind", str(self.ocf_dir), str(providers))

    def _boot(self, node: Node, corosync_conf: str) -> None:
        d = node.dir
        for sub in ("etc-corosync/uidgid.d", "lib-corosync", "log/cluster", "log/pacemaker",
                    "lib-pacemaker/cib", "lib-pacemaker/pengine", "lib-pacemaker/blackbox",
                    "lib-pacemaker/cores", "node"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        (d / "etc-corosync" / "corosync.conf").write_text(corosync_conf)
        cib = d / "lib-pacemaker" / "cib" / "cib.xml"
        cib.write_text(CIB)
        cib.chmod(0o600)
        sh("chown", "-R", "hacluster:haclient", str(d / "lib-pacemaker"),
           str(d / "log" / "pacemaker"))
        for sub in ("cib", "pengine", "blackbox", "cores"):
            (d / "lib-pacemaker" / sub).chmod(0o750)
        (d / "log" / "pacemaker").chmod(0o770)
        (d / "node" / "servers.yaml").write_text(self.config)
        node.init = spawn(["unshare", "--net", "--mount", "--uts", "--pid", "--fork",
                           "--kill-child", "--mount-proc", "--propagation", "private",
                           "bash", "-c", NODE_SETUP.format(name=node.name, dir=d)],
                          d / "log" / "init.out")
        init = node.init
        wait_for(lambda: (d / "node" / "ready").exists() or init.poll() is not None, 10,
                 f"{node.name} to boot", 0.01)
        children = Path(f"/proc/{init.pid}/task/{init.pid}/children").read_text().split()
        if init.poll() is not None or not children:
            raise RuntimeError(f"{node.name} did not boot: "
                               f"{(d / 'log' / 'init.out').read_text()}")
        node.pid = int(children[0])
        ip("link", "add", f"vn-{node.name}", "type", "veth", "peer", "name", "eth0", "netns",
           str(node.pid))
        ip("link", "set", f"vn-{node.name}", "master", "br0", "up")
        node.run("sh", "-c", f"ip link set lo up && ip addr add {node.address}/24 dev eth0 && "
                             f"ip addr add {NET6}{node.index}/64 dev eth0 nodad && "
                             "ip link set eth0 up")

    def close(self) -> None:
        for node in self.nodes:
            node.kill()
        subprocess.run(["ip", "netns", "del", CLIENT], capture_output=True)
        subprocess.run(["ip", "link", "del", "br0"], capture_output=True)
        subprocess.run(["umount", "-R", "/usr/lib/ocf/resource.d"], capture_output=True)
        if self.ocf_dir.exists():
            subprocess.run(["umount", "-R", *map(str, self.ocf_dir.iterdir())],
                           capture_output=True)
        shutil.rmtree(self.workdir, ignore_errors=True)

    # ------------------------------------------------------------------ resources

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def alive_node(self) -> Node:
        return next(n for n in self.nodes if n.alive)

    def crm(self, *argv: str, check: bool = True) -> str:
        return self.alive_node().run(*argv, check=check)

    def add_resources(self) -> None:
        """nas1 (pbr) and nas2 (netns) as ocf:vsnet:server, and an IPaddr2 address to
        compare with, each monitored every 5 s."""
        primitives = []
        for name in ("nas1", "nas2"):
            primitives.append(
                f"<primitive id='{name}' class='ocf' provider='vsnet' type='server'>"
                f"<instance_attributes id='{name}-ia'>"
                f"<nvpair id='{name}-server' name='server' value='{name}'/>"
                f"<nvpair id='{name}-config' name='config' value='/mnt/servers.yaml'/>"
                f"</instance_attributes><operations>"
                f"<op id='{name}-mon' name='monitor' interval='5s' timeout='20s'/>"
                f"</operations></primitive>")
        primitives.append(
            "<primitive id='vip' class='ocf' provider='heartbeat' type='IPaddr2'>"
            "<instance_attributes id='vip-ia'>"
            f"<nvpair id='vip-ip' name='ip' value='{VIP}'/>"
            "<nvpair id='vip-cidr' name='cidr_netmask' value='24'/>"
            "<nvpair id='vip-nic' name='nic' value='eth0'/>"
            "</instance_attributes><operations>"
            "<op id='vip-mon' name='monitor' interval='5s' timeout='20s'/>"
            "</operations></primitive>")
        for primitive in primitives:
            self.crm("cibadmin", "--create", "--scope", "resources", "--xml-text", primitive)
        try:
            for name in ("nas1", "nas2", "vip"):
                wait_for(lambda name=name: self.where(name), 60, f"{name} started", 0.1)  # type: ignore[misc]
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{self.crm('crm_mon', '-1', '-r', check=False)}") from None

    def status_xml(self) -> ET.Element:
        return ET.fromstring(self.crm("crm_mon", "--output-as=xml", "-1", check=False))

    def dc(self) -> str | None:
        """The node that is the cluster's Designated Controller now."""
        element = self.status_xml().find(".//current_dc")
        return element.get("name") if element is not None else None

    def where(self, resource: str) -> str | None:
        """The node the resource is Started on (None while it is not started anywhere)."""
        for element in self.status_xml().iter("resource"):
            if element.get("id") == resource and element.get("role") == "Started":
                nodes = [n.get("name") for n in element.iter("node")]
                if len(nodes) == 1:
                    return nodes[0]
        return None

    def move(self, resource: str, node: str) -> None:
        self.crm("crm_resource", "--move", "--resource", resource, "--node", node)

    def clear(self, resource: str) -> None:
        self.crm("crm_resource", "--clear", "--resource", resource)

    def start_exec_ms(self, resource: str, on: str) -> int | None:
        """How long the last start of ``resource`` on node ``on`` took, as Pacemaker
        measured it (exec-time of the operation in the CIB)."""
        cib = ET.fromstring(self.crm("cibadmin", "--query", "--scope", "status"))
        for state in cib.iter("node_state"):
            if state.get("uname") != on:
                continue
            for rsc in state.iter("lrm_resource"):
                if rsc.get("id") != resource:
                    continue
                starts = [op for op in rsc.iter("lrm_rsc_op") if op.get("operation") == "start"]
                if starts:
                    return int(starts[-1].get("exec-time", "0"))
        return None

    def logged_after(self, node: str, log: str, text: str, after: float) -> float | None:
        """When a line holding ``text`` was first logged after ``after`` (epoch seconds)
        in the node's ``log`` under /var/log (corosync's and Pacemaker's logs both start
        with a local time in ms, without the year)."""
        path = self.node(node).dir / "log" / log
        year = datetime.now().year
        for line in path.read_text(errors="replace").splitlines():
            if text not in line:
                continue
            stamp = " ".join(line.split()[:3])
            try:
                when = datetime.strptime(f"{year} {stamp}", "%Y %b %d %H:%M:%S.%f").timestamp()
            except ValueError:
                continue
            if when >= after:
                return when
        return None

    def membership_formed_after(self, node: str, after: float) -> float | None:
        return self.logged_after(node, "cluster/corosync.log", "A new membership", after)

    def start_logged_after(self, node: str, resource: str, after: float
                           ) -> tuple[float | None, float | None]:
        """(requested, result): when the node's controller asked for the start of
        ``resource`` and when it had its result (pacemaker.log)."""
        log = "pacemaker/pacemaker.log"
        return (self.logged_after(node, log, f"execution of start operation for {resource} ",
                                  after),
                self.logged_after(node, log, f"Result of start operation for {resource} ",
                                  after))


@contextmanager
def running_cluster(token_ms: int = 1000) -> Iterator[Cluster]:
    if not sandbox.inside():
        raise RuntimeError("the cluster runs inside a sandbox only")
    workdir = Path(f"/run/vsnet-cluster-{os.getpid()}")
    cluster = Cluster(workdir, token_ms)
    try:
        cluster.start()
        cluster.add_resources()
        yield cluster
    finally:
        cluster.close()


# --------------------------------------------------------------------------- the client


def client_socket(family: int = socket.AF_INET) -> socket.socket:
    return sandbox.socket_in(CLIENT, family)


def served_by(address: str, timeout: float = 0.05) -> str | None:
    """The name of the node that answers on ``address`` now (None: nobody, yet).

    The app answers at once; a connection whose answer takes longer than ``2 * timeout``
    was made with the old node just as it let the address go (its handshake completed
    there, the rest of it reaches nobody): the probe gives up on it as a client would, and
    tries again."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = client_socket(family)
    sock.settimeout(timeout)
    try:
        sock.connect((address, PORT))
        sock.settimeout(2 * timeout)
        return sock.recv(64).decode() or None
    except OSError:
        return None
    finally:
        sock.close()


def reconnect(address: str, node: str, since: float, limit: float = 30.0) -> float:
    """Connect again and again until ``node`` answers on ``address``; seconds since
    ``since`` (a time.monotonic())."""
    deadline = since + limit
    answer = None
    while time.monotonic() < deadline:
        answer = served_by(address)
        if answer == node:
            return time.monotonic() - since
    raise TimeoutError(f"{node} did not serve {address} within {limit:.0f} s (last answer: "
                       f"{answer}; neighbour entry {neighbour(address)})")


def neighbour(address: str) -> dict[str, Any] | None:
    entries = json.loads(ip("-j", "neigh", "show", address, "dev", "eth0", netns=CLIENT)
                         or "[]")
    return entries[0] if entries else None


# --------------------------------------------------------------------------- the sampler


class Sampler:
    """Looks at both nodes' addresses every 2 ms from a process of its own (the kernel's
    view, by netlink, in each node's namespace and inside its VS namespace; no GIL shared
    with the client's probes), and writes down each change with its CLOCK_MONOTONIC time.

    ``both`` lists every instant where a watched address was on both nodes at once. A VS
    is stopped on one node before it is started on the other: an overlap would last tens
    of ms at least, and 2 ms between samples leaves the CPUs to the cluster measured."""

    def __init__(self, cluster: Cluster, watched: dict[str, list[str]]) -> None:
        self.cluster = cluster
        self.watched = watched
        self.out = cluster.workdir / f"samples-{time.monotonic_ns()}.jsonl"
        self.proc: subprocess.Popen[bytes] | None = None
        self.samples = 0
        self.changes: list[tuple[float, dict[str, set[str]]]] = []
        self.both: list[tuple[float, str]] = []

    def __enter__(self) -> Sampler:
        wanted = sorted({a for addresses in self.watched.values() for a in addresses})
        nodes = [f"{n.name}={n.pid}" for n in self.cluster.nodes if n.alive]
        self.proc = spawn([sys.executable, "-m", "tests.cluster_sampler", str(self.out),
                           ",".join(wanted), *nodes], env=node_env())
        wait_for(lambda: self.out.exists(), 10, "the sampler", 0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait()
        for line in self.out.read_text().splitlines():
            record = json.loads(line)
            if "samples" in record:
                self.samples = record["samples"]
                continue
            nodes = {name: set(found) for name, found in record["nodes"].items()}
            self.changes.append((record["t"], nodes))
            on = list(nodes.values())
            if len(on) == 2:
                self.both.extend((record["t"], a) for a in on[0] & on[1])

    def first_seen(self, node: str, address: str, after: float) -> float | None:
        """The first sample after ``after`` (monotonic) where ``node`` held ``address``."""
        for when, nodes in self.changes:
            if when >= after and address in nodes.get(node, set()):
                return when
        return None
