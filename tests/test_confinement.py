"""pbr confinement against the real kernel: cgroup-BPF programs, real traffic between
namespaces, a real daemon and vsnet-exec.

cgroups and bpffs are not namespaced: every test names its cgroup root and pin root
uniquely (``vsnet-test-<pid>-<n>``) and removes them in a ``finally``, processes first.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import lab
from tests.daemons import Daemon, save, wait_until
from tests.sandbox import ip, ip_json
from vsnetd import bpf
from vsnetd.kinds import Confinement, confinement

pytestmark = pytest.mark.usefixtures("netns")

SO_MARK = 36
MARK1, MARK2 = 0x5600001, 0x5600002
NAMES = itertools.count()
ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def cgroup_tree(path: Path) -> Iterator[Path]:
    """A cgroup made (or left) under ``path``, removed afterwards with everything in it:
    processes killed, then the directories bottom-up (their programs go with them)."""
    try:
        yield path
    finally:
        for directory in sorted((p for p in [path, *path.rglob("*")] if p.is_dir()),
                                key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                (directory / "cgroup.kill").write_text("1\n")
            wait_until(lambda d=directory: not (d / "cgroup.procs").exists()
                       or not (d / "cgroup.procs").read_text().strip(), 10, f"{directory} empty")
            with contextlib.suppress(FileNotFoundError):
                directory.rmdir()


def remove_pins(path: Path) -> None:
    for directory, _dirs, files in sorted(os.walk(path), key=lambda w: -len(w[0])):
        for name in files:
            os.unlink(os.path.join(directory, name))
        os.rmdir(directory)


@pytest.fixture
def roots() -> Iterator[tuple[str, str]]:
    """(cgroup root relative to the cgroup-v2 mount, pin root), unique to this test; the
    cgroup ``<root>-foreign`` and the pin directory ``<pin root>-foreign`` (others', or
    roots moved to) are removed afterwards too."""
    mount = confinement.cgroup2_mount()
    if mount is None:
        pytest.fail("this machine has no cgroup v2: confinement cannot be tested here")
    name = f"vsnet-test-{os.getpid()}-{next(NAMES)}"
    pins = Path("/sys/fs/bpf") / name
    try:
        with cgroup_tree(mount / name), cgroup_tree(mount / f"{name}-foreign"):
            yield name, str(pins)
    finally:
        for pin_root in (pins, Path(f"{pins}-foreign")):
            if pin_root.exists():
                remove_pins(pin_root)
        # what vsnet recorded of them (in the sandbox's /run, shared by the tests of a run)
        for tree, recorded in confinement.recorded().items():
            for root in recorded:
                if root.startswith((name, str(pins))):
                    shutil.rmtree(confinement.record_dir(tree, root), ignore_errors=True)
    assert not (mount / name).exists() and not pins.exists()


def settings_yaml(roots: tuple[str, str]) -> str:
    return f"settings: {{cgroup_root: {roots[0]}, bpf_pin_root: {roots[1]}}}\n"


NAS1 = """\
  nas1:
    id: 1
    mode: pbr
    uplink: eth0
    addresses:
      - {address: 10.0.0.5/24, gateway: 10.0.0.1}
      - {address: 10.0.1.5/24, gateway: 10.0.1.1}
    gateway: 10.0.1.1
"""
NAS2 = """\
  nas2:
    id: 2
    mode: pbr
    uplink: eth0
    addresses:
      - {address: 10.0.0.7/24, gateway: 10.0.0.1}
    gateway: 10.0.0.1
"""


def config(roots: tuple[str, str] | None, *servers: str) -> str:
    return "version: 1\n" + (settings_yaml(roots) if roots else "") + "servers:\n" + "".join(servers)


def cgroup_of(roots: tuple[str, str], server: str) -> Path:
    mount = confinement.cgroup2_mount()
    assert mount is not None
    return mount / roots[0] / server


def attached(cgroup: Path) -> list[dict[str, Any]]:
    """What the kernel says is attached to ``cgroup`` (bpftool, not vsnet)."""
    out = subprocess.run(["bpftool", "-j", "cgroup", "show", str(cgroup)], capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out) if out.strip() else []  # type: ignore[no-any-return]


def by_hook(cgroup: Path) -> dict[str, list[tuple[int, str]]]:
    hooks: dict[str, list[tuple[int, str]]] = {}
    for entry in attached(cgroup):
        hooks.setdefault(entry["attach_type"], []).append((entry["id"], entry["name"]))
    return hooks


def pinned_id(path: Path) -> int:
    out = subprocess.run(["bpftool", "-j", "prog", "show", "pinned", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return int(json.loads(out)["id"])


def program_exists(prog_id: int) -> bool:
    return subprocess.run(["bpftool", "prog", "show", "id", str(prog_id)],
                          capture_output=True).returncode == 0


# --------------------------------------------------------------------------- verifier


@pytest.mark.parametrize("addresses", [
    ("10.0.0.5",),
    ("2001:db8:5::5",),
    ("10.0.0.5", "10.0.1.5", "2001:db8:5::5"),
    tuple(f"10.0.{i}.5" for i in range(8)) + tuple(f"2001:db8:{i}::5" for i in range(7)),
])
def test_the_verifier_accepts_every_program(addresses: tuple[str, ...]) -> None:
    programs = confinement.programs_of(0xFFFFFFFF, addresses)
    assert sorted(programs) == sorted(confinement.HOOKS)
    for hook, code in programs.items():
        name = confinement.program_name(hook, code)
        hook_of = confinement.HOOK[hook]
        fd = bpf.prog_load(code, name, hook_of.prog_type, hook_of.attach_type)
        try:
            info = bpf.prog_info(fd)
            assert (info.type, info.name) == (hook_of.prog_type, name)
        finally:
            os.close(fd)


def test_a_program_the_verifier_refuses_is_reported_with_its_log() -> None:
    # post_bind programs may not write the mark: the verifier must say so
    code = confinement.sock_create_program(1)
    with pytest.raises(OSError) as refused:
        bpf.prog_load(code, "vsnet_wrong", bpf.BPF_PROG_TYPE_CGROUP_SOCK,
                      bpf.BPF_CGROUP_INET4_POST_BIND)
    assert "invalid bpf_context access" in str(refused.value)


BINDER = """\
import errno, socket, sys
open(sys.argv[1], "w").write("0")  # into the cgroup under test
print("ready", flush=True)
for line in sys.stdin:
    family, address = line.split()
    v6 = family == "6"
    with socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM) as s:
        # freebind: the kernel's own address checks pass, the programs' verdict is left
        s.setsockopt(socket.IPPROTO_IPV6 if v6 else socket.IPPROTO_IP, 78 if v6 else 15, 1)
        try:
            s.bind((address, 0))
            print("ok", flush=True)
        except OSError as exc:
            print(errno.errorcode[exc.errno], flush=True)
"""

V4_POOL = [f"10.0.0.{i}" for i in range(1, 5)]
V6_POOL = [f"2001:db8::{i}" for i in range(1, 5)]
V4_TARGETS = [*V4_POOL, "0.0.0.0", "127.0.0.1", "127.255.0.9", "126.255.255.255",
              "128.0.0.1", "224.0.0.251", "10.0.1.1"]
V6_TARGETS = [*V6_POOL, "::", "::1", "::2", "::ffff:0.0.0.0", "ff05::1", "2001:db8:1::1",
              *(f"::ffff:{a}" for a in V4_TARGETS)]


def allowed(family: int, target: str, vs: set[str]) -> bool:
    """The rule the programs implement, written plainly."""
    import ipaddress

    address = ipaddress.ip_address(target)
    if family == 6 and isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return allowed(4, str(address.ipv4_mapped), vs)
    return address.is_unspecified or address.is_loopback or target in vs


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(vs=st.sets(st.sampled_from(V4_POOL + V6_POOL), min_size=1, max_size=5),
       targets=st.lists(st.sampled_from([(4, t) for t in V4_TARGETS] +
                                        [(6, t) for t in V6_TARGETS]), min_size=1, max_size=12))
def test_bind_verdicts_follow_the_rule(shared_cgroup: tuple[Confinement, Any],
                                       vs: set[str], targets: list[tuple[int, str]]) -> None:
    """The hand-emitted bind programs against a plain model, on the kernel: every bind of a
    process in the cgroup is allowed exactly when the model allows it."""
    base, binder = shared_cgroup
    confinement.ensure(confinement.desired(base.server, base.cgroup.split("/")[0],
                                           base.pins.rsplit("/", 1)[0], 1, tuple(sorted(vs))))
    for family, target in targets:
        binder.stdin.write(f"{family} {target}\n")
        binder.stdin.flush()
        verdict = binder.stdout.readline().strip()
        assert verdict == ("ok" if allowed(family, target, vs) else "EPERM"), (family, target)


@pytest.fixture
def shared_cgroup(roots: tuple[str, str]) -> Iterator[tuple[Confinement, Any]]:
    """One VS cgroup and a process in it that binds on request."""
    base = confinement.desired("prop", roots[0], roots[1], 1, ("10.0.0.1",))
    confinement.ensure(base)
    binder = subprocess.Popen([sys.executable, "-c", BINDER,
                               str(cgroup_of(roots, "prop") / "cgroup.procs")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert binder.stdout is not None and binder.stdout.readline().strip() == "ready"
        yield base, binder
    finally:
        binder.kill()
        binder.wait()


# --------------------------------------------------------------------------- source addresses

NOBODY = 65534
VS_ADDRESSES = ("10.0.0.5", "2001:db8::5")

# Run as nobody in the VS's cgroup: each attempt to leave from an address, and how it ended.
LEAVER = """\
import errno, json, socket, struct, sys
IP_BIND_ADDRESS_NO_PORT, IP_PKTINFO = 24, 8
V4, V6, TCP, UDP = socket.AF_INET, socket.AF_INET6, socket.SOCK_STREAM, socket.SOCK_DGRAM
port = int(sys.argv[1])

def no_port(family, kind, source, peer):
    s = socket.socket(family, kind)
    s.settimeout(10)
    s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
    try:
        s.bind((source, 0))
    except OSError as exc:
        return "bind " + errno.errorcode[exc.errno]
    try:
        if kind == TCP:
            s.connect((peer, port))
        else:
            s.sendto(f"no_port {source}".encode(), (peer, port))
    except OSError as exc:
        return "send " + errno.errorcode[exc.errno]
    return "from " + s.getsockname()[0]

def bind(family, source):
    try:
        socket.socket(family, UDP).bind((source, 0))
    except OSError as exc:
        return "bind " + errno.errorcode[exc.errno]
    return "bound"

def pktinfo(family, source, peer, connected=False):
    s = socket.socket(family, UDP)
    if family == V4:
        control = (socket.IPPROTO_IP, IP_PKTINFO,
                   struct.pack("=I4s4s", 0, socket.inet_aton(source), bytes(4)))
    else:
        control = (socket.IPPROTO_IPV6, socket.IPV6_PKTINFO,
                   socket.inet_pton(V6, source) + struct.pack("=I", 0))
    target = [(peer, port)]
    if connected:
        s.connect(target.pop())
    try:
        s.sendmsg([f"pktinfo {source}".encode()], [control], 0, *target)
    except OSError as exc:
        return "send " + errno.errorcode[exc.errno]
    return "sent"

report = {
    "no_port tcp 10.0.0.7": no_port(V4, TCP, "10.0.0.7", "10.0.0.1"),
    "no_port udp 10.0.0.7": no_port(V4, UDP, "10.0.0.7", "10.0.0.1"),
    "no_port tcp 2001:db8::7": no_port(V6, TCP, "2001:db8::7", "2001:db8::1"),
    "no_port tcp ::ffff:10.0.0.7": no_port(V6, TCP, "::ffff:10.0.0.7", "::ffff:10.0.0.1"),
    "no_port tcp 10.0.0.5": no_port(V4, TCP, "10.0.0.5", "10.0.0.1"),
    "no_port udp 2001:db8::5": no_port(V6, UDP, "2001:db8::5", "2001:db8::1"),
    "bind 10.0.0.7": bind(V4, "10.0.0.7"),
    "bind 2001:db8::7": bind(V6, "2001:db8::7"),
    "bind 10.0.0.5": bind(V4, "10.0.0.5"),
    "pktinfo 10.0.0.7": pktinfo(V4, "10.0.0.7", "10.0.0.1"),
    "pktinfo 10.0.0.7 connected": pktinfo(V4, "10.0.0.7", "10.0.0.1", connected=True),
    "pktinfo 2001:db8::7": pktinfo(V6, "2001:db8::7", "2001:db8::1"),
    "pktinfo ::ffff:10.0.0.7": pktinfo(V6, "::ffff:10.0.0.7", "::ffff:10.0.0.1"),
    "pktinfo 10.0.0.5": pktinfo(V4, "10.0.0.5", "10.0.0.1"),
    "pktinfo 2001:db8::5 connected": pktinfo(V6, "2001:db8::5", "2001:db8::1", connected=True),
    "pktinfo ::ffff:10.0.0.5": pktinfo(V6, "::ffff:10.0.0.5", "::ffff:10.0.0.1"),
    "pktinfo 0.0.0.0": pktinfo(V4, "0.0.0.0", "10.0.0.1"),
}
print(json.dumps(report))
"""


@contextlib.contextmanager
def listeners() -> Iterator[tuple[int, list[socket.socket]]]:
    """TCP and UDP, IPv4 and IPv6, on one port of this test's namespace."""
    port, sockets = 0, []
    try:
        for family, kind in itertools.product((socket.AF_INET, socket.AF_INET6),
                                              (socket.SOCK_STREAM, socket.SOCK_DGRAM)):
            sock = socket.socket(family, kind)
            sockets.append(sock)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
            port = sock.getsockname()[1]
            if kind == socket.SOCK_STREAM:
                sock.listen()
            sock.setblocking(False)
        yield port, sockets
    finally:
        for sock in sockets:
            sock.close()


def arrivals(sockets: list[socket.socket]) -> set[tuple[str, str]]:
    """(source address, what) of every connection and datagram waiting at ``sockets``."""
    seen = set()
    for sock in sockets:
        with contextlib.suppress(BlockingIOError):
            while True:
                if sock.type == socket.SOCK_STREAM:
                    conn, peer = sock.accept()
                    conn.close()
                    seen.add((peer[0], "connection"))
                else:
                    data, peer = sock.recvfrom(64)
                    seen.add((peer[0], data.decode()))
    return seen


def test_an_unprivileged_process_leaves_only_from_the_vs_addresses(
        roots: tuple[str, str]) -> None:
    """Binds are checked before they happen (bind4/bind6), so IP_BIND_ADDRESS_NO_PORT binds
    too, which take no port and skip the post-bind hooks; a datagram's source named in an
    IP_PKTINFO/IPV6_PKTINFO control message is checked at sendmsg4/sendmsg6. A refused
    bind fails with EPERM at bind(), a refused datagram at sendmsg()."""
    ip("link", "set", "lo", "up")
    for address in ("10.0.0.1", "10.0.0.5", "10.0.0.7"):
        ip("addr", "add", f"{address}/32", "dev", "lo")
    for address in ("2001:db8::1", "2001:db8::5", "2001:db8::7"):
        ip("addr", "add", f"{address}/128", "dev", "lo", "nodad")
    vs = confinement.desired("vs", roots[0], roots[1], MARK1, VS_ADDRESSES)
    confinement.ensure(vs)
    cgroup = cgroup_of(roots, "vs")
    # the kernel's view: vsnet's five programs, the pinned ones, and no post_bind hooks
    hooks = by_hook(cgroup)
    assert sorted(hooks) == ["cgroup_inet4_bind", "cgroup_inet6_bind", "cgroup_inet_sock_create",
                             "cgroup_udp4_sendmsg", "cgroup_udp6_sendmsg"]
    for (hook, found), pin in zip(sorted(hooks.items()), ["bind4", "bind6", "sock_create",
                                                         "sendmsg4", "sendmsg6"], strict=True):
        assert [name[:6] for _id, name in found] == [f"vsnet{confinement.HOOK[pin].letter}"]
        assert pinned_id(Path(vs.pins) / pin) == found[0][0], hook
    with listeners() as (port, sockets):
        leaver = subprocess.run(
            ["sh", "-c", f'echo $$ > {cgroup}/cgroup.procs && exec setpriv --reuid {NOBODY} '
             f'--regid {NOBODY} --clear-groups "$@"', "leaver", sys.executable, "-I", "-c",
             LEAVER, str(port)], capture_output=True, text=True, timeout=60, cwd="/")
        assert leaver.returncode == 0, leaver.stderr
        report = json.loads(leaver.stdout)
        seen = arrivals(sockets)
    assert report == {
        "no_port tcp 10.0.0.7": "bind EPERM",
        "no_port udp 10.0.0.7": "bind EPERM",
        "no_port tcp 2001:db8::7": "bind EPERM",
        "no_port tcp ::ffff:10.0.0.7": "bind EPERM",
        "no_port tcp 10.0.0.5": "from 10.0.0.5",
        "no_port udp 2001:db8::5": "from 2001:db8::5",
        "bind 10.0.0.7": "bind EPERM",
        "bind 2001:db8::7": "bind EPERM",
        "bind 10.0.0.5": "bound",
        "pktinfo 10.0.0.7": "send EPERM",
        "pktinfo 10.0.0.7 connected": "send EPERM",
        "pktinfo 2001:db8::7": "send EPERM",
        "pktinfo ::ffff:10.0.0.7": "send EPERM",
        "pktinfo 10.0.0.5": "sent",
        "pktinfo 2001:db8::5 connected": "sent",
        "pktinfo ::ffff:10.0.0.5": "sent",
        "pktinfo 0.0.0.0": "sent",  # no source named: the route's (here 10.0.0.1's own)
    }
    assert ("10.0.0.5", "connection") in seen and ("10.0.0.5", "pktinfo 10.0.0.5") in seen
    assert ("2001:db8::5", "no_port 2001:db8::5") in seen
    assert ("2001:db8::5", "pktinfo 2001:db8::5") in seen
    assert ("10.0.0.5", "pktinfo ::ffff:10.0.0.5") in seen  # the IPv4 listener's view
    assert not {source for source, _what in seen} & {"10.0.0.7", "2001:db8::7"}, seen


# --------------------------------------------------------------------------- traffic

PEER = """\
import socket, sys
device, port = sys.argv[1], int(sys.argv[2])
tcp = socket.socket(); udp = socket.socket(type=socket.SOCK_DGRAM)
for s in (tcp, udp):
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.settimeout(15)
    s.bind(("0.0.0.0", port))
tcp.listen()
print("listening", flush=True)
conn, peer = tcp.accept(); conn.sendall(b"tcp ok"); conn.close()
print("tcp", peer[0], flush=True)
data, peer = udp.recvfrom(64); udp.sendto(b"udp ok", peer)
print("udp", peer[0], flush=True)
"""

APP = """\
import errno, json, socket, subprocess, sys
client, port = sys.argv[1], int(sys.argv[2])
if sys.argv[3:] == ["--child"]:  # fork + exec: the same checks, in a child
    sys.exit(subprocess.run([sys.executable, *sys.argv[:3]]).returncode)
report = {}
with socket.create_connection((client, port), timeout=10) as tcp:
    report["tcp"] = tcp.recv(16).decode()
    report["tcp_source"] = tcp.getsockname()[0]
    report["tcp_mark"] = tcp.getsockopt(socket.SOL_SOCKET, 36)
with socket.socket(type=socket.SOCK_DGRAM) as udp:
    udp.settimeout(10)
    udp.sendto(b"hello", (client, port))
    report["udp"] = udp.recv(16).decode()
    report["udp_mark"] = udp.getsockopt(socket.SOL_SOCKET, 36)
for address in sys.argv[4:] or ["10.0.0.5", "10.0.0.7", "127.0.0.1", "0.0.0.0"]:
    for family, text in ((socket.AF_INET, address), (socket.AF_INET6, "::ffff:" + address)):
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            try:
                s.bind((text, 0))
                report[f"bind {text}"] = "ok"
            except OSError as exc:
                report[f"bind {text}"] = errno.errorcode[exc.errno]
print(json.dumps(report))
"""


def client_peer(device: str, port: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(["ip", "netns", "exec", "client", sys.executable, "-c", PEER, device,
                             str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "listening"
    return proc


def run_app(port: int, device: str, prefix: list[str], *extra: str
            ) -> tuple[dict[str, Any], list[str], str]:
    """The app's own report, what the client saw arrive through ``device``, its stderr."""
    program = Path(f"/run/vsnet-test-app-{os.getpid()}.py")
    program.write_text(APP)
    peer = client_peer(device, port)
    try:
        app = subprocess.run([*prefix, sys.executable, str(program), lab.CLIENT, str(port),
                              *extra],
                             capture_output=True, text=True, timeout=60)
        seen, _ = peer.communicate(timeout=20)
    finally:
        peer.kill()
        peer.wait()
    assert app.returncode == 0, app.stderr
    return json.loads(app.stdout), seen.split("\n"), app.stderr


@pytest.fixture
def lab_box() -> None:
    lab.build("eth0")
    ip("addr", "add", "10.0.0.2/24", "dev", "eth0")
    ip("route", "add", "default", "via", "10.0.0.1")  # the box's own, through gw-a


def start(tmp_path: Path, text: str, *wrapper: str) -> tuple[Daemon, Path]:
    path = tmp_path / "etc" / "servers.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    broker = Path("/run") / f"vsnet-test-broker-{tmp_path.name}.sock"
    daemon = Daemon(tmp_path, path, ["--broker", str(broker)], wrapper=list(wrapper) or None)
    daemon.ready()
    wait_until(lambda: all(s["state"] == "in-sync" for s in daemon.status()["servers"].values()),
               20, "in sync")
    return daemon, broker


def vsnet_exec(broker: Path, server: str) -> list[str]:
    return [sys.executable, "-m", "vsnetd.exec", "--broker", str(broker), "--server", server,
            "--"]


def test_a_program_run_by_vsnet_exec_is_confined_to_its_vs(
    lab_box: None, roots: tuple[str, str], tmp_path: Path
) -> None:
    daemon, broker = start(tmp_path, config(roots, NAS1, NAS2))
    try:
        # confined: TCP and UDP leave with nas1's address next to its gateway, through
        # gw-b (the client's listeners only hear link cb)
        report, seen, stderr = run_app(7001, "cb", vsnet_exec(broker, "nas1"))
        assert seen[:2] == ["tcp 10.0.1.5", "udp 10.0.1.5"], (seen, stderr)
        assert report["tcp"] == "tcp ok" and report["udp"] == "udp ok"
        assert report["tcp_source"] == "10.0.1.5"
        assert report["tcp_mark"] == report["udp_mark"] == MARK1
        assert report["bind 10.0.0.5"] == report["bind ::ffff:10.0.0.5"] == "ok"
        assert report["bind 10.0.0.7"] == report["bind ::ffff:10.0.0.7"] == "EPERM"  # nas2's
        assert report["bind 127.0.0.1"] == report["bind 0.0.0.0"] == "ok"
        assert "warning" not in stderr

        # a child (fork + exec) is confined as well
        child, seen, _ = run_app(7002, "cb", vsnet_exec(broker, "nas1"), "--child")
        assert seen[:2] == ["tcp 10.0.1.5", "udp 10.0.1.5"]
        assert child["tcp_mark"] == MARK1 and child["bind 10.0.0.7"] == "EPERM"

        # nas2's programs: its own mark, its own address
        other, seen, _ = run_app(7003, "ca", vsnet_exec(broker, "nas2"))
        assert seen[:2] == ["tcp 10.0.0.7", "udp 10.0.0.7"]
        assert other["tcp_mark"] == MARK2
        assert other["bind 10.0.0.5"] == "EPERM" and other["bind 10.0.0.7"] == "ok"

        # the same program without vsnet-exec: the host's route (gw-a, its own address)
        free, seen, _ = run_app(7004, "ca", [])
        assert seen[:2] == ["tcp 10.0.0.2", "udp 10.0.0.2"]
        assert free["tcp_mark"] == free["udp_mark"] == 0
        assert free["bind 10.0.0.7"] == "ok"
    finally:
        daemon.stop()


def test_marked_unbound_traffic_leaves_by_the_gateway_of_the_second_address(
    lab_box: None, tmp_path: Path
) -> None:
    """No confinement here: a socket marked by hand, never bound. nas1's gateway is in its
    second address's subnet: the mark table's default takes that address as source."""
    path = tmp_path / "servers.yaml"
    path.write_text(config(None, NAS1))
    applied = subprocess.run([sys.executable, "-m", "vsnetd.cli", "apply", "-c", str(path)],
                             capture_output=True, text=True, timeout=60)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    default = next(r for r in ip_json("route", "show", "table", "10031")
                   if r["dst"] == "default")
    assert default["prefsrc"] == "10.0.1.5"
    peer = client_peer("cb", 7010)  # only what comes through gw-b
    try:
        with socket.socket() as tcp, socket.socket(type=socket.SOCK_DGRAM) as udp:
            for sock in (tcp, udp):
                sock.setsockopt(socket.SOL_SOCKET, SO_MARK, MARK1)
                sock.settimeout(10)
            tcp.connect((lab.CLIENT, 7010))
            assert tcp.recv(16) == b"tcp ok"
            assert tcp.getsockname()[0] == "10.0.1.5"
            udp.sendto(b"hello", (lab.CLIENT, 7010))
            assert udp.recv(16) == b"udp ok"
        seen, _ = peer.communicate(timeout=20)
    finally:
        peer.kill()
        peer.wait()
    assert seen.split("\n")[:2] == ["tcp 10.0.1.5", "udp 10.0.1.5"]


# --------------------------------------------------------------------------- ownership


def foreign_program(cgroup: Path) -> int:
    """A program someone else attached (not named vsnet...): its id."""
    cgroup.mkdir(parents=True, exist_ok=True)
    return load_pinned(confinement.sock_create_program(0x1234), "admin_mark",
                       confinement.HOOK["sock_create"], cgroup=cgroup)


def detach(cgroup: Path, hook: str, prog_id: int) -> None:
    subprocess.run(["bpftool", "cgroup", "detach", str(cgroup), hook, "id", str(prog_id)],
                   check=True)


def test_heal_update_and_removal_leave_foreign_programs_alone(
    uplink: str, roots: tuple[str, str], tmp_path: Path
) -> None:
    mount = confinement.cgroup2_mount()
    assert mount is not None
    elsewhere = foreign_program(mount / f"{roots[0]}-foreign")
    daemon, _broker = start(tmp_path, config(roots, NAS1))
    cgroup, pins = cgroup_of(roots, "nas1"), Path(roots[1]) / "nas1"
    try:
        hooks = by_hook(cgroup)
        assert sorted(hooks) == ["cgroup_inet4_bind", "cgroup_inet6_bind",
                                 "cgroup_inet_sock_create", "cgroup_udp4_sendmsg",
                                 "cgroup_udp6_sendmsg"]
        assert all(len(found) == 1 and found[0][1].startswith("vsnet")
                   for found in hooks.values())
        (create_id, _), = hooks["cgroup_inet_sock_create"]
        assert pinned_id(pins / "sock_create") == create_id
        mine = foreign_program(cgroup)  # someone else's, on vsnet's cgroup

        # detached by hand: attached again (the pinned program), within the periodic check
        detach(cgroup, "sock_create", create_id)
        wait_until(lambda: (create_id, hooks["cgroup_inet_sock_create"][0][1]) in
                   by_hook(cgroup).get("cgroup_inet_sock_create", []), 10, "re-attached")
        # unpinned by hand: pinned again
        (pins / "bind4").unlink()
        wait_until(lambda: (pins / "bind4").exists(), 10, "pinned again")
        assert pinned_id(pins / "bind4") == hooks["cgroup_inet4_bind"][0][0]

        # an address more: the bind programs are replaced in place, the mark's stays
        save(daemon.config, config(roots, NAS1.replace(
            "    gateway:", "      - {address: 10.0.2.9/24}\n    gateway:")))
        wait_until(lambda: by_hook(cgroup)["cgroup_inet4_bind"][0][0]
                   != hooks["cgroup_inet4_bind"][0][0], 10, "replaced")
        now = by_hook(cgroup)
        assert [len(now[h]) for h in sorted(now)] == [1, 1, 2, 1, 1]  # + the foreign one
        assert all(now[h] != hooks[h] for h in now if h != "cgroup_inet_sock_create")
        assert (create_id, hooks["cgroup_inet_sock_create"][0][1]) in now[
            "cgroup_inet_sock_create"]
        assert mine in [i for i, _ in now["cgroup_inet_sock_create"]]
        assert pinned_id(pins / "bind4") == now["cgroup_inet4_bind"][0][0]
        wait_until(lambda: not program_exists(hooks["cgroup_inet4_bind"][0][0]), 10,
                   "the replaced program freed")

        # a new mark: the mark's program swapped in place, the foreign one still there
        save(daemon.config, config(roots, NAS1.replace(
            "    gateway:", "      - {address: 10.0.2.9/24}\n    mark: 0x5600042\n    gateway:")))
        wait_until(lambda: create_id not in [i for i, _ in by_hook(cgroup)[
            "cgroup_inet_sock_create"]], 10, "the mark's program replaced")
        now = by_hook(cgroup)
        ours = [(i, n) for i, n in now["cgroup_inet_sock_create"] if n.startswith("vsnet")]
        assert len(ours) == 1 and mine in [i for i, _ in now["cgroup_inet_sock_create"]]
        assert pinned_id(pins / "sock_create") == ours[0][0]
        # programs run in attach order, the last mark written wins: vsnet's, re-attached
        # after the foreign one by the heal above and swapped in place since
        probe = subprocess.run(
            [sys.executable, "-c", f"open('{cgroup}/cgroup.procs', 'w').write('0');"
             "import socket; print(socket.socket().getsockopt(socket.SOL_SOCKET, 36))"],
            capture_output=True, text=True, timeout=30)
        assert probe.stdout.strip() == str(0x5600042), probe.stderr

        # the VS goes: vsnet will not take the foreign program with its cgroup...
        ids = [i for found in now.values() for i, name in found if name.startswith("vsnet")]
        save(daemon.config, config(roots))
        wait_until(lambda: not pins.exists(), 10, "pins removed")
        assert cgroup.exists() and mine in [i for i, _ in by_hook(cgroup)[
            "cgroup_inet_sock_create"]]
        # ...until its owner takes it away; then the cgroup goes on the next retry
        detach(cgroup, "sock_create", mine)
        subprocess.run([sys.executable, "-m", "vsnetd.cli", "reload"], env=daemon.env,
                       capture_output=True, timeout=30)
        # by the reload's run, not the periodic resync (60 s): the leftovers of a removed
        # VS that failed to go are retried by the next run
        wait_until(lambda: not cgroup.exists(), 30, "cgroup removed")
        assert not (mount / roots[0]).exists() and not Path(roots[1]).exists()
        wait_until(lambda: not any(program_exists(i) for i in ids), 10, "programs freed")
        assert [(e["id"], e["name"]) for e in attached(mount / f"{roots[0]}-foreign")] == [
            (elsewhere, "admin_mark")]
    finally:
        daemon.stop()


def vsnetctl(command: str, config_text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "servers.yaml"
    path.write_text(config_text)
    return subprocess.run([sys.executable, "-m", "vsnetd.cli", command, "-c", str(path)],
                          capture_output=True, text=True, timeout=60)


def vsnet_ids(cgroup: Path) -> list[int]:
    return [i for found in by_hook(cgroup).values() for i, name in found
            if name.startswith("vsnet")]


def load_pinned(code: bytes, name: str, hook: confinement.Hook, pin: Path | None = None,
                cgroup: Path | None = None) -> int:
    """Load a program, pin it and attach it where asked, as another program would: its id."""
    fd = bpf.prog_load(code, name, hook.prog_type, hook.attach_type)
    try:
        if pin is not None:
            bpf.obj_pin(fd, str(pin))
        if cgroup is not None:
            cgroup_fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
            try:
                bpf.prog_attach(cgroup_fd, fd, hook.attach_type)
            finally:
                os.close(cgroup_fd)
        return bpf.prog_info(fd).id
    finally:
        os.close(fd)


ALLOW = bpf.mov64_imm(0, 1) + bpf.exit_()


def test_an_earlier_versions_post_bind_programs_are_detached_and_unpinned(
    uplink: str, roots: tuple[str, str], tmp_path: Path
) -> None:
    """What an earlier vsnet left on a VS's cgroup (no record of it, post_bind programs
    named vsnet4_/vsnet6_ attached and pinned) converges to the bind and sendmsg hooks; a
    foreign post_bind program stays."""
    cgroup, pins = cgroup_of(roots, "nas1"), Path(roots[1]) / "nas1"
    cgroup.mkdir(parents=True)
    pins.mkdir(parents=True)
    addresses = ("10.0.0.5", "10.0.1.5")
    earlier = []
    for hook, offset, allowed in (("post_bind4", 24, confinement.allowed4),
                                  ("post_bind6", 28, confinement.allowed6)):
        # the programs as earlier versions emitted them: the bpf_sock source address checked
        code = confinement._address_program(offset, allowed(addresses))
        earlier.append(load_pinned(code, f"vsnet{hook[-1]}_{confinement.digest(code)}",
                                   confinement.HOOK[hook], pins / hook, cgroup))
    theirs = load_pinned(ALLOW, "admin_bind", confinement.HOOK["post_bind4"], cgroup=cgroup)
    assert sorted(by_hook(cgroup)) == ["cgroup_inet4_post_bind", "cgroup_inet6_post_bind"]

    applied = vsnetctl("apply", config(roots, NAS1), tmp_path)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    hooks = by_hook(cgroup)
    assert hooks.pop("cgroup_inet4_post_bind") == [(theirs, "admin_bind")]
    assert sorted(hooks) == ["cgroup_inet4_bind", "cgroup_inet6_bind", "cgroup_inet_sock_create",
                             "cgroup_udp4_sendmsg", "cgroup_udp6_sendmsg"]
    assert sorted(os.listdir(pins)) == sorted(confinement.HOOKS)
    wait_until(lambda: not any(program_exists(i) for i in earlier), 10, "earlier ones freed")
    assert vsnetctl("plan", config(roots, NAS1), tmp_path).returncode == 0  # in sync


def test_turning_confinement_off_removes_what_it_made_and_nothing_else(
    uplink: str, roots: tuple[str, str], tmp_path: Path
) -> None:
    mount = confinement.cgroup2_mount()
    assert mount is not None
    elsewhere = foreign_program(mount / f"{roots[0]}-foreign")
    applied = vsnetctl("apply", config(roots, NAS1, NAS2), tmp_path)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    nas1, nas2 = cgroup_of(roots, "nas1"), cgroup_of(roots, "nas2")
    ours = {cgroup: vsnet_ids(cgroup) for cgroup in (nas1, nas2)}
    assert all(len(ids) == len(confinement.HOOKS) for ids in ours.values())
    mine = foreign_program(nas1)  # someone else's, on vsnet's cgroup

    # off: cgroup_root gone from the config. Before, nothing was looked at any more and
    # status said in sync; now what vsnet recorded is looked at and removed
    off = config(None, NAS1, NAS2)
    assert vsnetctl("plan", off, tmp_path).returncode == 2
    applied = vsnetctl("apply", off, tmp_path)
    assert applied.returncode == 1 and "holds programs vsnet did not attach" in applied.stdout, (
        applied.stdout + applied.stderr)
    assert not nas2.exists() and not (Path(roots[1]) / "nas2").exists()
    assert not (Path(roots[1]) / "nas1").exists()
    # vsnet's programs are detached and freed (the kernel's view), the foreign one stays
    assert [(e["id"], e["name"]) for e in attached(nas1)] == [(mine, "admin_mark")]
    wait_until(lambda: not any(program_exists(i) for ids in ours.values() for i in ids), 10,
               "vsnet's programs freed")

    # once its owner takes it away, the cgroup goes, and the roots vsnet made
    detach(nas1, "sock_create", mine)
    applied = vsnetctl("apply", off, tmp_path)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert not nas1.exists() and not (mount / roots[0]).exists()
    assert not Path(roots[1]).exists()
    assert not any(confinement.recorded().values())
    assert vsnetctl("plan", off, tmp_path).returncode == 0
    assert [(e["id"], e["name"]) for e in attached(mount / f"{roots[0]}-foreign")] == [
        (elsewhere, "admin_mark")]


def test_moving_the_roots_moves_the_confinement(
    uplink: str, roots: tuple[str, str], tmp_path: Path
) -> None:
    mount = confinement.cgroup2_mount()
    assert mount is not None
    applied = vsnetctl("apply", config(roots, NAS1), tmp_path)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    programs = sorted(vsnet_ids(cgroup_of(roots, "nas1")))
    moved = (f"{roots[0]}-foreign/moved", f"{roots[1]}-foreign")
    # one root at a time: the programs kept at the other place move along, none is loaded
    for step in ((moved[0], roots[1]), moved):
        applied = vsnetctl("apply", config(step, NAS1), tmp_path)
        assert applied.returncode == 0, applied.stdout + applied.stderr
        assert vsnetctl("plan", config(step, NAS1), tmp_path).returncode == 0
        assert sorted(vsnet_ids(cgroup_of(step, "nas1"))) == programs
        assert sorted(os.listdir(f"{step[1]}/nas1")) == sorted(confinement.HOOKS)
        assert not (mount / roots[0]).exists()
    assert not Path(roots[1]).exists()
    # both back at once: made anew, and the directories vsnet made for the moved roots go
    applied = vsnetctl("apply", config(roots, NAS1), tmp_path)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert not (mount / f"{roots[0]}-foreign").exists() and not Path(moved[1]).exists()
    assert len(vsnet_ids(cgroup_of(roots, "nas1"))) == len(programs)
    wait_until(lambda: not any(program_exists(i) for i in programs), 10, "moved ones freed")
    assert vsnetctl("plan", config(roots, NAS1), tmp_path).returncode == 0


def test_directories_and_pins_vsnet_did_not_make_under_its_roots_stay(
    uplink: str, roots: tuple[str, str], tmp_path: Path
) -> None:
    """Roots that are shared directories: another service's cgroup, another program's pin
    directory and pin beside the VS's. Only what vsnet recorded is removed, and the roots,
    which vsnet did not make, stay even when empty."""
    mount = confinement.cgroup2_mount()
    assert mount is not None
    cgroup_root, pin_root = mount / roots[0], Path(roots[1])
    service = cgroup_root / "other.service"
    service.mkdir(parents=True)
    (pin_root / "xdp").mkdir(parents=True)
    theirs = [load_pinned(ALLOW, "admin_x", confinement.HOOK["bind4"], pin_root / "xdp" / "prog"),
              load_pinned(ALLOW, "admin_y", confinement.HOOK["bind4"], pin_root / "admin")]
    applied = vsnetctl("apply", config(roots, NAS1, NAS2), tmp_path)
    assert applied.returncode == 0, applied.stdout + applied.stderr

    for step in (config(roots, NAS2), config(roots), config(None)):  # one VS, none, off
        applied = vsnetctl("apply", step, tmp_path)
        assert applied.returncode == 0, applied.stdout + applied.stderr
        assert vsnetctl("plan", step, tmp_path).returncode == 0
        assert not cgroup_of(roots, "nas1").exists() and not (pin_root / "nas1").exists()
        assert service.is_dir() and sorted(os.listdir(pin_root)) in (
            ["admin", "nas2", "xdp"], ["admin", "xdp"])
        assert [pinned_id(pin_root / "xdp" / "prog"), pinned_id(pin_root / "admin")] == theirs
    assert sorted(p.name for p in cgroup_root.iterdir() if p.is_dir()) == ["other.service"]

    # emptied by their owner, the roots still stay: vsnet did not make them
    service.rmdir()
    remove_pins(pin_root / "xdp")
    (pin_root / "admin").unlink()
    for step in (config(roots, NAS1), config(None)):
        applied = vsnetctl("apply", step, tmp_path)
        assert applied.returncode == 0, applied.stdout + applied.stderr
    assert cgroup_root.is_dir() and not [p for p in cgroup_root.iterdir() if p.is_dir()]
    assert pin_root.is_dir() and not os.listdir(pin_root)


def test_the_pins_confine_a_unit_the_way_systemd_attaches_them(
    uplink: str, roots: tuple[str, str], tmp_path: Path
) -> None:
    """systemd's ``BPFProgram=hook:PIN`` opens the pin (BPF_OBJ_GET) and attaches it to the
    unit's cgroup with BPF_F_ALLOW_MULTI: done here with bpftool on a cgroup of nobody's."""
    mount = confinement.cgroup2_mount()
    assert mount is not None
    path = tmp_path / "servers.yaml"
    path.write_text(config(roots, NAS1, NAS2))
    applied = subprocess.run([sys.executable, "-m", "vsnetd.cli", "apply", "-c", str(path)],
                             capture_output=True, text=True, timeout=60)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    unit = mount / f"{roots[0]}-foreign" / "vsnet-app@nas1.service"
    unit.mkdir(parents=True)
    for hook in confinement.HOOKS:
        subprocess.run(["bpftool", "cgroup", "attach", str(unit), hook, "pinned",
                        f"{roots[1]}/nas1/{hook}", "multi"], check=True)
    probe = (f"open('{unit}/cgroup.procs', 'w').write('0');"
             "import socket, json; s = socket.socket(); t = socket.socket(type=socket.SOCK_DGRAM);"
             "r = {'mark': s.getsockopt(socket.SOL_SOCKET, 36)};"
             "r['own'] = t.bind(('10.0.0.5', 0)) or 'ok';"
             "u = socket.socket(type=socket.SOCK_DGRAM);\n"
             "try: u.bind(('10.0.0.7', 0)); r['other'] = 'ok'\n"
             "except PermissionError: r['other'] = 'EPERM'\n"
             "print(json.dumps(r))")
    seen = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=30)
    assert seen.returncode == 0, seen.stderr
    assert json.loads(seen.stdout) == {"mark": MARK1, "own": "ok", "other": "EPERM"}
    # vsnet's own view is unchanged by the unit's attachments: nothing to do
    plan = subprocess.run([sys.executable, "-m", "vsnetd.cli", "plan", "-c", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert plan.returncode == 0, plan.stdout


# --------------------------------------------------------------------------- degraded


def test_without_cgroup_v2_the_vs_works_and_both_tools_say_what_is_missing(
    lab_box: None, roots: tuple[str, str], tmp_path: Path
) -> None:
    mount = confinement.cgroup2_mount()
    # daemon and vsnet-exec in a mount namespace of their own without the cgroup-v2 mount
    hide = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            f'umount -l {mount} && exec "$@"', "hide"]
    daemon, broker = start(tmp_path, config(roots, NAS1), *hide)
    try:
        nas1 = daemon.status()["servers"]["nas1"]
        assert nas1["state"] == "in-sync"
        assert nas1["reasons"] == ["not confined: cgroup v2 is not mounted"]
        assert any(r.get("fwmark") == hex(MARK1) for r in ip_json("rule"))
        report, seen, stderr = run_app(7020, "ca", [*hide, *vsnet_exec(broker, "nas1")])
        assert "nas1: not confined, cgroup v2 is not mounted" in stderr
        assert report["tcp_mark"] == 0 and seen[:2] == ["tcp 10.0.0.2", "udp 10.0.0.2"]
    finally:
        daemon.stop()
    assert not cgroup_of(roots, "nas1").exists()


def test_the_example_unit_attaches_the_pinned_programs(tmp_path: Path) -> None:
    unit = (ROOT / "packaging" / "examples" / "vsnet-app@.service").read_text()
    assert [line for line in unit.splitlines() if line.startswith("BPFProgram=")] == [
        f"BPFProgram={hook}:/sys/fs/bpf/vsnet/%i/{hook}" for hook in confinement.HOOKS]
    # systemd itself accepts it (BPFProgram= since v249), beside the daemon's unit
    (tmp_path / "vsnet-app@nas1.service").write_text(
        unit.replace("/usr/local/bin/my-application", "/bin/true"))
    daemon_unit = (ROOT / "systemd" / "vsnetd.service").read_text()
    (tmp_path / "vsnetd.service").write_text(daemon_unit.replace(
        "/usr/bin/vsnetd", str(Path(sys.executable).with_name("vsnetd"))))
    result = subprocess.run(["systemd-analyze", "verify", "vsnet-app@nas1.service"],
                            cwd=tmp_path, capture_output=True, text=True,
                            env=dict(os.environ, SYSTEMD_UNIT_PATH=f"{tmp_path}:"))
    assert result.returncode == 0 and "Unknown" not in result.stderr, result.stderr
