#!/usr/bin/env python3
"""``make demo``: vsnet on etc/vsnet/servers.yaml, in a sandbox, with real traffic.

The script re-executes itself inside fresh network + mount namespaces (``tests.sandbox``);
the sandbox's own network namespace plays the server box, and named namespaces around it
play the network::

    server (sandbox)      lan         gw-a  10.0.0.1                     client
    eth0 --------------- br0 --+-- a-lan      a-cl 172.16.1.1 ----- ca   lo 198.51.100.10
                               +-- b-lan      b-cl 172.16.2.1 ----- cb      2001:db8:100::10
                                    gw-b  10.0.1.1, 2001:db8:5::1

The server's main table sends everything via gw-a (10.0.0.1), so without vsnet a reply
from 10.0.1.5 would leave through the wrong gateway. The demo applies the config with the
real ``vsnetd`` daemon, then proves with traffic that each VS address answers through its
own gateway (nas2's from its own namespace) and that a socket carrying a VS's mark leaves
with that VS's source address; then it deletes a rule by hand and edits the config, and
the daemon puts both right within milliseconds.
Sockets in the client namespace are opened by this very process: the thread switches
namespace (setns), opens the socket and switches back, the paper's trick.

Exit status: 0 when every check passed, 1 otherwise.
"""

from __future__ import annotations

import os
import select
import shlex
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the sandbox is test tooling: it lives in the checkout only

from tests import sandbox  # noqa: E402

CONFIG = "etc/vsnet/servers.yaml"  # relative to REPO, as an operator would type it
LIVE_CONFIG = Path("/run/vsnet/demo/servers.yaml")  # the sandbox's private /run
DAEMON_LOG = Path("/run/vsnet/demo/vsnetd.log")
NAMESPACES = ("lan", "gw-a", "gw-b", "client")
SO_MARK = getattr(socket, "SO_MARK", 36)
TIMEOUT = 3.0
WHOAMI_PORT = 7007  # the "who am I" service on every VS address
CLIENT_PORT = 7008  # the client's listener for outgoing connections
CLIENT_V4, CLIENT_V6 = "198.51.100.10", "2001:db8:100::10"
GATEWAY_OF_LINK = {"ca": "gw-a", "cb": "gw-b"}

# The sandbox's namespaces start with kernel defaults: make them quiet and predictable.
BASE_SYSCTLS = ("net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0 "
                "net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0")
ROUTER_SYSCTLS = "net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1"

TOPOLOGY = [
    *(f"ip netns add {ns}" for ns in NAMESPACES),
    f"sysctl -qw {BASE_SYSCTLS}",
    *(f"ip netns exec {ns} sysctl -qw {BASE_SYSCTLS}" for ns in NAMESPACES),
    *(f"ip netns exec {ns} sysctl -qw {ROUTER_SYSCTLS}" for ns in ("gw-a", "gw-b")),
    *(f"ip -n {ns} link set lo up" for ns in NAMESPACES),
    # lan: the L2 segment the server and both gateways share
    "ip -n lan link add br0 type bridge mcast_snooping 0",
    "ip -n lan link set br0 up",
    # the server box: uplink eth0, and a main table whose default goes via gw-a
    "ip link add eth0 type veth peer name l-srv netns lan",
    "ip -n lan link set l-srv master br0 up",
    "ip link set eth0 up",
    "ip route add default via 10.0.0.1 dev eth0 onlink",
    # gw-a: 10.0.0.1 on the LAN, point-to-point link a-cl <-> ca to the client
    "ip -n gw-a link add a-lan type veth peer name l-a netns lan",
    "ip -n lan link set l-a master br0 up",
    "ip -n gw-a addr add 10.0.0.1/24 dev a-lan",
    "ip -n gw-a link set a-lan up",
    "ip -n gw-a link add a-cl type veth peer name ca netns client",
    "ip -n gw-a addr add 172.16.1.1/30 dev a-cl",
    "ip -n gw-a link set a-cl up",
    "ip -n gw-a route add 198.51.100.10/32 via 172.16.1.2",
    # gw-b: 10.0.1.1 and 2001:db8:5::1 on the LAN, link b-cl <-> cb to the client
    "ip -n gw-b link add b-lan type veth peer name l-b netns lan",
    "ip -n lan link set l-b master br0 up",
    "ip -n gw-b addr add 10.0.1.1/24 dev b-lan",
    "ip -n gw-b addr add 2001:db8:5::1/64 dev b-lan nodad",
    "ip -n gw-b link set b-lan up",
    "ip -n gw-b link add b-cl type veth peer name cb netns client",
    "ip -n gw-b addr add 172.16.2.1/30 dev b-cl",
    "ip -n gw-b addr add fd00:2::1/64 dev b-cl nodad",
    "ip -n gw-b link set b-cl up",
    "ip -n gw-b route add 198.51.100.10/32 via 172.16.2.2",
    "ip -n gw-b route add 2001:db8:100::10/128 via fd00:2::2",
    # gw-b also reaches 10.0.0.0/24 on the LAN, and the client can answer it through
    # gw-b: the way back for traffic from 10.0.0.5 sent out via gw-b (nas1's mark table)
    "ip -n gw-b route add 10.0.0.0/24 dev b-lan",
    # client: one address, reachable through either gateway
    "ip -n client addr add 198.51.100.10/32 dev lo",
    "ip -n client addr add 2001:db8:100::10/128 dev lo nodad",
    "ip -n client addr add 172.16.1.2/30 dev ca",
    "ip -n client addr add 172.16.2.2/30 dev cb",
    "ip -n client addr add fd00:2::2/64 dev cb nodad",
    "ip -n client link set ca up",
    "ip -n client link set cb up",
    "ip -n client route add 10.0.0.0/24 via 172.16.1.1 dev ca src 198.51.100.10",
    "ip -n client route add 10.0.1.0/24 via 172.16.2.1 dev cb src 198.51.100.10",
    "ip -n client route add 10.0.0.0/24 via 172.16.2.1 dev cb src 198.51.100.10 metric 100",
    "ip -n client route add 2001:db8:5::/64 via fd00:2::1 dev cb src 2001:db8:100::10",
]


@dataclass(frozen=True, slots=True)
class Reflection:
    """The client connects to a VS address over the link of the gateway it must answer by."""

    server: str
    address: str
    gateway: str
    link: str
    netns: str | None = None  # where the VS lives (None: the server box's own namespace)


@dataclass(frozen=True, slots=True)
class MarkedConnect:
    """A socket with a VS's mark (or none) connects to the client; whom did it see?"""

    server: str
    mark: int | None
    family: socket.AddressFamily
    source: str | None  # None: a control, shown but not checked


# What etc/vsnet/servers.yaml promises (marks: mark_base 0x5600000 + id).
REFLECTIONS = [
    Reflection("nas1", "10.0.0.5", "10.0.0.1", "ca"),
    Reflection("nas1", "10.0.1.5", "10.0.1.1", "cb"),
    Reflection("nas1", "2001:db8:5::5", "2001:db8:5::1", "cb"),
    Reflection("iscsi1", "10.0.0.6", "10.0.0.1", "ca"),
    Reflection("nas2", "10.0.0.7", "10.0.0.1", "ca", netns="vs-nas2"),
]
MARKED = [
    # the address next to nas1's gateway (gw-b), not the first one (README: PBR semantics)
    MarkedConnect("nas1", 0x5600001, socket.AF_INET, "10.0.1.5"),
    MarkedConnect("nas1", 0x5600001, socket.AF_INET6, "2001:db8:5::5"),
    MarkedConnect("iscsi1", 0x5600002, socket.AF_INET, "10.0.0.6"),
    MarkedConnect("-", None, socket.AF_INET, None),
]

# --------------------------------------------------------------------------- output


def heading(title: str) -> None:
    print(f"\n=== {title} " + "=" * max(3, 76 - len(title)), flush=True)


def say(text: str, *, gap: bool = True) -> None:
    """A paragraph of explanation, after a blank line unless ``gap`` is false."""
    print(("\n" if gap else "") + textwrap.dedent(text).strip(), flush=True)


def show(argv: Sequence[str], *, shown: str | None = None, expect: Sequence[int] = (0,)) -> bool:
    """Run a command as an operator would, print it and its output; was the status expected?"""
    print(f"\n$ {shown or shlex.join(argv)}", flush=True)
    result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    lines = (result.stdout + result.stderr).rstrip().splitlines()
    for line in lines:
        print(f"  {line}".rstrip())
    if result.returncode != 0:
        print(f"  [exit status {result.returncode}]")
    return result.returncode in expect


def program(name: str) -> str:
    binary = Path(sys.executable).parent / name
    return str(binary) if binary.exists() else shutil.which(name) or name


def vsnetctl(command: str, *, expect: Sequence[int] = (0,), config: str = CONFIG) -> bool:
    return show([program("vsnetctl"), "-c", config, command],
                shown=f"vsnetctl -c {config} {command}", expect=expect)


def wait_for(check: Callable[[], object], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.005)
    return False


def start_daemon() -> subprocess.Popen[bytes]:
    """vsnetd on a copy of the example config (the demo edits the copy, never the file)."""
    LIVE_CONFIG.parent.mkdir(parents=True, exist_ok=True)
    LIVE_CONFIG.write_text((REPO / CONFIG).read_text())
    command = [program("vsnetd"), "-c", str(LIVE_CONFIG)]
    print(f"\n$ vsnetd -c {LIVE_CONFIG} &")
    print(f"  (a copy of {CONFIG}, so the demo can edit it; log in {DAEMON_LOG})")
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=DAEMON_LOG.open("w"))


def daemon_in_sync() -> bool:
    result = subprocess.run([program("vsnetctl"), "-c", str(LIVE_CONFIG), "status"],
                            capture_output=True)
    return result.returncode == 0 and b"vsnetd (pid" in result.stdout


# --------------------------------------------------------------------------- namespaces

def build_topology() -> None:
    for line in TOPOLOGY:
        sandbox.sh(*shlex.split(line))


def remove_topology() -> None:
    for ns in reversed(NAMESPACES):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def tcp_socket(family: socket.AddressFamily, *, netns: str | None = None) -> socket.socket:
    sock = sandbox.socket_in(netns, family)  # this very process, in the client's namespace
    sock.settimeout(TIMEOUT)
    return sock


def family_of(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


# --------------------------------------------------------------------------- checks


def whoami_listeners(stack: ExitStack) -> dict[str, socket.socket]:
    """The server's "who am I" service, one listening socket per VS address."""
    listeners = {}
    for check in REFLECTIONS:
        sock = stack.enter_context(tcp_socket(family_of(check.address), netns=check.netns))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((check.address, WHOAMI_PORT))
        sock.listen()
        listeners[check.address] = sock
    return listeners


def reflect(check: Reflection, listener: socket.socket) -> tuple[bool, str]:
    family = family_of(check.address)
    with tcp_socket(family, netns="client") as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, check.link.encode())
        client.bind((CLIENT_V6 if family == socket.AF_INET6 else CLIENT_V4, 0))
        try:
            client.connect((check.address, WHOAMI_PORT))
            conn, peer = listener.accept()
            with conn:
                conn.sendall(f"I am {check.server} at {check.address}; you are {peer[0]}".encode())
            reply = client.recv(200).decode()
        except OSError as exc:
            return False, f"{exc.__class__.__name__}: {exc}"
    return bool(reply), f'"{reply}"'


def connect_marked(check: MarkedConnect) -> tuple[bool, str]:
    """Connect from the server to the client, which listens on both links, one socket each."""
    client_address = CLIENT_V6 if check.family == socket.AF_INET6 else CLIENT_V4
    with ExitStack() as stack:
        listeners = {}
        for link in GATEWAY_OF_LINK:
            listener = stack.enter_context(tcp_socket(check.family, netns="client"))
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, link.encode())
            listener.bind((client_address, CLIENT_PORT))
            listener.listen()
            listeners[listener] = link
        sock = stack.enter_context(tcp_socket(check.family))
        if check.mark is not None:
            sock.setsockopt(socket.SOL_SOCKET, SO_MARK, check.mark)
        try:
            sock.connect((client_address, CLIENT_PORT))
            ready, _, _ = select.select(list(listeners), [], [], TIMEOUT)
            if not ready:
                return False, "the client saw no connection"
            conn, peer = ready[0].accept()
            conn.close()
        except OSError as exc:
            return False, f"{exc.__class__.__name__}: {exc}"
    link = listeners[ready[0]]
    return peer[0] == check.source, f"client saw {peer[0]}, via {GATEWAY_OF_LINK[link]} ({link})"


def table(rows: list[list[str]]) -> str:
    """Aligned columns; the last one runs free."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)]
        lines.append("  " + "  ".join([*cells, row[-1]]))
    return "\n".join(lines)


# --------------------------------------------------------------------------- the demo


DROP_IN = LIVE_CONFIG.with_name("servers.d") / "web1.yaml"
WEB1 = """\
servers:
  web1: {id: 4, mode: pbr, uplink: eth0, addresses: [{address: 10.0.0.9/24, gateway: 10.0.0.1}]}
"""


def drop_in_steps() -> list[str]:
    """A VS added, then removed, as a file of its own in servers.d/."""
    failures: list[str] = []
    say(f"A VS of its own file: {DROP_IN} (only that file is read again):")
    DROP_IN.parent.mkdir(exist_ok=True)
    partial = DROP_IN.with_name(".web1.yaml.new")
    partial.write_text(WEB1)
    print("".join(f"  {line}\n" for line in WEB1.splitlines()), end="")
    partial.replace(DROP_IN)
    started = time.perf_counter()
    added = wait_for(lambda: "10.0.0.9/24" in sandbox.sh("ip", "-br", "addr", "show", "eth0"), 5)
    print(f"  ... web1 in the kernel after {(time.perf_counter() - started) * 1000:.0f} ms"
          if added else "  ... web1 NOT applied")
    if not added:
        failures.append("drop-in servers.d/web1.yaml")
    show(["ip", "rule", "list", "table", "10064"])
    say("The file removed, web1's objects go:")
    DROP_IN.unlink()
    started = time.perf_counter()
    removed = wait_for(lambda: "10.0.0.9/24" not in sandbox.sh("ip", "-br", "addr", "show",
                                                                "eth0"), 5)
    print(f"  ... gone after {(time.perf_counter() - started) * 1000:.0f} ms"
          if removed else "  ... web1 NOT removed")
    if not removed:
        failures.append("removal of servers.d/web1.yaml")
    return failures


def demo() -> list[str]:
    """Run every step; return the failed checks."""
    failures: list[str] = []

    heading("1. Topology")
    build_topology()
    say(gap=False, text="""
        server (this namespace): uplink eth0 on a bridged LAN; main table: default via 10.0.0.1
        gw-a  10.0.0.1                  <- link ca ->  client 198.51.100.10
        gw-b  10.0.1.1, 2001:db8:5::1   <- link cb ->  client 198.51.100.10, 2001:db8:100::10
        Without vsnet every reply would leave via gw-a, whatever address it comes from.
    """)

    heading("2. vsnetd on the config: validate, plan, start the daemon, status")
    for command, expect in (("validate", (0,)), ("plan", (2,))):
        if not vsnetctl(command, expect=expect):
            failures.append(f"vsnetctl {command}")
    daemon = start_daemon()
    if not wait_for(lambda: daemon_in_sync(), 15):
        failures.append("vsnetd did not converge")
    vsnetctl("status", config=str(LIVE_CONFIG))
    say("""
        The kernel objects; nas1's are the paper's Table 1 (plus IPv6). The rules that pick
        a table sit in a tree of goto rules (docs/rule-tree.md: a lookup checks a few dozen
        rules whatever the number of VS); here the ones that pick a table:
    """)
    for family in ("", "-6 "):
        show(["sh", "-c", f"ip {family}rule | grep lookup; echo \"... of $(ip {family}rule | wc -l)\""],
             shown=f"ip {family}rule | grep lookup")
    for argv in (
                 ["ip", "route", "show", "table", "10016"],
                 ["ip", "route", "show", "table", "10017"],
                 ["ip", "-6", "route", "show", "table", "10018"],
                 ["ip", "route", "show", "table", "10031"],
                 ["ip", "-6", "route", "show", "table", "10031"],
                 ["ip", "-n", "vs-nas2", "-br", "addr"], ["ip", "-n", "vs-nas2", "route"],
                 ["ip", "netns", "exec", "vs-nas2", "cat", "/etc/resolv.conf"]):
        show(argv)

    heading("3. Replies leave through their address's gateway")
    say(gap=False, text="The host's main table and the rule vsnet added for 10.0.1.5 disagree:")
    show(["ip", "route", "get", CLIENT_V4])
    show(["ip", "route", "get", CLIENT_V4, "from", "10.0.1.5"])
    say("""
        The client connects to each VS address with its socket bound to the link of the
        address's gateway (SO_BINDTODEVICE). A reply routed through the other gateway would
        arrive on the other link and never reach that socket.
    """)
    print()
    rows = [["SERVER", "ADDRESS", "GATEWAY", "CLIENT LINK", "RESULT"]]
    with ExitStack() as stack:
        listeners = whoami_listeners(stack)
        for check in REFLECTIONS:
            ok, detail = reflect(check, listeners[check.address])
            link = f"{check.link} ({GATEWAY_OF_LINK[check.link]})"
            rows.append([check.server, check.address, check.gateway, link,
                         f"{'OK' if ok else 'FAIL':4}  {detail}"])
            if not ok:
                failures.append(f"reply from {check.address} via {check.gateway}")
    print(table(rows), flush=True)

    heading("4. A marked socket connects out with its VS's source address")
    say(gap=False, text="""
        Sockets with SO_MARK set to a VS's mark and no bind() connect to the client, which
        listens on both links. Without a mark, the host's main table picks the source.
    """)
    print()
    rows = [["SERVER", "MARK", "EXPECTED SOURCE", "RESULT"]]
    for marked in MARKED:
        ok, detail = connect_marked(marked)
        if marked.source is None:
            result = f"--    {detail}: the main table's pick"
        else:
            result = f"{'OK' if ok else 'FAIL':4}  {detail}"
            if not ok:
                failures.append(f"marked connection of {marked.server} from {marked.source}")
        mark = "none" if marked.mark is None else f"{marked.mark:#x}"
        rows.append([marked.server, mark, marked.source or "-", result])
    print(table(rows), flush=True)

    heading("5. The daemon keeps the kernel converged")
    say(gap=False, text="An administrator deletes one of nas1's rules by hand:")
    show(["ip", "rule", "del", "priority", "25012"])
    started = time.perf_counter()
    healed = wait_for(lambda: "25012:" in sandbox.sh("ip", "rule"), 5)
    print(f"  ... back after {(time.perf_counter() - started) * 1000:.0f} ms"
          if healed else "  ... NOT restored")
    if not healed:
        failures.append("self-heal of rule 25012")
    say("An operator gives iscsi1 a second address and saves the file:")
    edited = LIVE_CONFIG.read_text().replace(
        "      - address: 10.0.0.6/24\n        gateway: 10.0.0.1\n",
        "      - address: 10.0.0.6/24\n        gateway: 10.0.0.1\n"
        "      - address: 10.0.0.8/24\n        gateway: 10.0.0.1\n")
    partial = LIVE_CONFIG.with_name(".servers.yaml.new")
    partial.write_text(edited)
    partial.replace(LIVE_CONFIG)  # as editors save: write, then rename over
    started = time.perf_counter()
    edited_in = wait_for(lambda: "10.0.0.8/24" in sandbox.sh("ip", "-br", "addr", "show",
                                                             "eth0"), 5)
    print(f"  ... in the kernel after {(time.perf_counter() - started) * 1000:.0f} ms"
          if edited_in else "  ... NOT applied")
    if not edited_in:
        failures.append("live edit of iscsi1")
    show(["ip", "rule", "list", "priority", "24884"])  # 10.0.0.4/30: nas1's, iscsi1's
    failures += drop_in_steps()
    vsnetctl("status", config=str(LIVE_CONFIG))
    say("What the daemon logged (under systemd, journal fields VSNET_SERVER, VSNET_OP):")
    for line in DAEMON_LOG.read_text().splitlines()[-6:]:
        print(f"  {line}")

    heading("6. Stop the daemon, tear down")
    say(gap=False, text="SIGTERM stops vsnetd and leaves the kernel as it is (the application "
                        "keeps serving); teardown removes what vsnet created:")
    daemon.terminate()
    daemon.wait(timeout=10)
    if not vsnetctl("teardown", config=str(LIVE_CONFIG)):
        failures.append("vsnetctl teardown")
    show(["ip", "rule"])
    show(["ip", "-6", "rule"])
    return failures


def main() -> int:
    if os.geteuid() != 0:
        print("demo: must run as root (it builds network namespaces)", file=sys.stderr)
        return 1
    if not sandbox.inside():
        sandbox.reexec([sys.executable, __file__, *sys.argv[1:]])
    started = time.perf_counter()
    try:
        failures = demo()
    finally:
        remove_topology()
    seconds = time.perf_counter() - started
    heading("Result")
    if failures:
        print(f"FAILED ({seconds:.1f} s): " + "; ".join(failures))
        return 1
    print(f"all checks passed in {seconds:.1f} s; namespaces removed, nothing left behind")
    return 0


if __name__ == "__main__":
    sys.exit(main())
