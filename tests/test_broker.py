"""The socket broker against a real daemon, real kernel and real traffic."""

from __future__ import annotations

import array
import contextlib
import ctypes
import errno
import fcntl
import json
import os
import re
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests import lab
from tests.daemons import Daemon, save, wait_until
from tests.sandbox import ip, sh
from vsnetd import client
from vsnetd.broker import BrokerError, Request, parse_request
from vsnetd.broker import server as broker_server
from vsnetd.broker.access import Peer
from vsnetd.broker.protocol import Batch
from vsnetd.broker.sockets import SPARE_BATCH
from vsnetd.compile import compile_config
from vsnetd.config import Config
from vsnetd.kernel import Kernel
from vsnetd.syscalls import mount, umount

pytestmark = pytest.mark.usefixtures("netns")

APP_USER, APP_UID = "vsnetapp", 4242
OTHER_USER, OTHER_UID = "stranger", 4243
SO_MARK = 36
SIOCGSKNS = 0x894C
SYS_PIDFD_GETFD = 438  # x86_64 and arm64 alike (the generic table)
MS_BIND, MS_REC = 0x1000, 0x4000


@pytest.fixture(scope="session")
def app_users() -> Iterator[None]:
    """Two unprivileged users, in the sandbox's private copies of /etc/passwd and
    /etc/group (bind-mounted over them in its mount namespace: the machine's stay as
    they are)."""
    private = Path("/run/vsnet-test-users")
    private.mkdir(exist_ok=True)
    for name, lines in (
        ("passwd", [f"{APP_USER}:x:{APP_UID}:{APP_UID}::/nonexistent:/bin/sh",
                    f"{OTHER_USER}:x:{OTHER_UID}:{OTHER_UID}::/nonexistent:/bin/sh"]),
        ("group", [f"{APP_USER}:x:{APP_UID}:", f"{OTHER_USER}:x:{OTHER_UID}:"]),
    ):
        copy = private / name
        copy.write_text(Path(f"/etc/{name}").read_text() + "\n".join(lines) + "\n")
        mount(str(copy), f"/etc/{name}", None, MS_BIND)
    reachable = _interpreter_reachable(private)
    try:
        yield
    finally:
        if reachable:
            umount("/root", 2)  # MNT_DETACH: the interpreter itself is in use
        for name in ("passwd", "group"):
            umount(f"/etc/{name}")


def _interpreter_reachable(private: Path) -> bool:
    """Python may live under /root (mode 0700, as with pyenv here): in the sandbox's mount
    namespace only, show /root as a searchable directory holding just that installation,
    so the unprivileged users can run it. True when it had to."""
    interpreter = Path(os.path.realpath(sys.executable))
    if Path("/root") not in interpreter.parents or os.stat("/root").st_mode & 0o001:
        return False
    real, view = private / "real-root", private / "root-view"
    top = interpreter.relative_to("/root").parts[0]
    for path in (real, view, view / top):
        path.mkdir(mode=0o755, exist_ok=True)
    os.chmod(view, 0o755)
    mount("/root", str(real), None, MS_BIND)
    mount(str(real / top), str(view / top), None, MS_BIND)
    mount(str(view), "/root", None, MS_BIND | MS_REC)  # with the submount inside
    return True


def config_text(body: str) -> str:
    return "version: 1\nservers:\n" + textwrap.indent(textwrap.dedent(body), "  ")


@pytest.fixture
def broker_path(tmp_path: Path) -> Path:
    """Where everyone may reach it (pytest's tmp_path is root's alone)."""
    shared = Path("/run/vsnet-test-broker")
    shared.mkdir(mode=0o755, exist_ok=True)
    return shared / f"{tmp_path.name}.sock"


def start(tmp_path: Path, body: str, broker_path: Path) -> Daemon:
    config = tmp_path / "etc" / "servers.yaml"
    config.parent.mkdir(exist_ok=True)
    config.write_text(config_text(body))
    daemon = Daemon(tmp_path, config, ["--broker", str(broker_path)])
    daemon.ready()
    os.chmod(broker_path, 0o666)  # no vsnet group here: open it to the test's users
    return daemon


def socket_netns_inode(sock: socket.socket) -> int:
    ns_fd = fcntl.ioctl(sock.fileno(), SIOCGSKNS)
    try:
        return os.fstat(ns_fd).st_ino
    finally:
        os.close(ns_fd)


def daemon_fds(daemon: Daemon) -> int:
    return len(os.listdir(f"/proc/{daemon.proc.pid}/fd"))


def settled_fds(daemon: Daemon) -> int:
    """The daemon's fd count once its config watcher (inotify, set up by its own thread
    after READY) is in place."""
    fd_dir = f"/proc/{daemon.proc.pid}/fd"

    def watching() -> bool:
        links = []
        for fd in os.listdir(fd_dir):
            with contextlib.suppress(OSError):
                links.append(os.readlink(f"{fd_dir}/{fd}"))
        return "anon_inode:inotify" in links

    wait_until(watching, 10, "the config watcher")
    return daemon_fds(daemon)


PBR = """\
nas1:
  id: 1
  mode: pbr
  uplink: eth0
  addresses:
    - {address: 10.0.0.5/24, gateway: 10.0.0.1}
    - {address: 10.0.1.5/24, gateway: 10.0.1.1}
  gateway: 10.0.1.1
"""


@pytest.fixture
def pbr_daemon(tmp_path: Path, broker_path: Path) -> Iterator[Daemon]:
    lab.build("eth0")
    ip("addr", "add", "10.0.0.2/24", "dev", "eth0")
    ip("route", "add", "default", "via", "10.0.0.1")  # the box's own, through gw-a
    daemon = start(tmp_path, PBR, broker_path)
    yield daemon
    daemon.stop()


def serve_once(sock: socket.socket, text: str) -> threading.Thread:
    def run() -> None:
        conn, _ = sock.accept()
        with conn:
            conn.sendall(text.encode())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_pbr_listening_sockets_are_bound_and_marked(pbr_daemon: Daemon, broker_path: Path
                                                     ) -> None:
    sockets = client.listen("nas1", "tcp", 8000, path=broker_path)
    try:
        assert sorted(s.getsockname()[0] for s in sockets) == ["10.0.0.5", "10.0.1.5"]
        assert {s.getsockopt(socket.SOL_SOCKET, SO_MARK) for s in sockets} == {0x5600001}
        by_address = {s.getsockname()[0]: s for s in sockets}
        for address, link in (("10.0.0.5", "ca"), ("10.0.1.5", "cb")):
            serve_once(by_address[address], f"nas1 at {address}")
            reply = lab.client_connect(address, 8000, link)  # bound to that gateway's link
            assert reply.stdout.strip() == f"nas1 at {address}", reply.stderr
    finally:
        for sock in sockets:
            sock.close()


def test_the_outgoing_socket_leaves_with_the_vs_source_through_the_vs_gateway(
    pbr_daemon: Daemon, broker_path: Path
) -> None:
    out = client.outgoing_socket("nas1", "tcp", 4, path=broker_path)
    listener = lab.client_accept(9100, "cb")  # only what comes through gw-b is accepted
    try:
        assert out.getsockname()[0] == "10.0.1.5"  # the address next to the VS gateway
        assert out.getsockopt(socket.SOL_SOCKET, SO_MARK) == 0x5600001
        out.settimeout(5)
        out.connect((lab.CLIENT, 9100))
        assert out.recv(16) == b"ok"
        seen, _ = listener.communicate(timeout=10)
        assert seen.strip() == "10.0.1.5"
    finally:
        out.close()
        listener.kill()


NETNS = """\
a:
  id: 1
  mode: netns
  uplink: eth0
  addresses: [{address: 10.1.1.5/24}]
  sockets: {allow_users: [vsnetapp]}
b:
  id: 2
  mode: netns
  uplink: eth1
  addresses: [{address: 10.1.1.5/24}]
  sockets: {allow_groups: [vsnetapp]}
secret:
  id: 3
  mode: pbr
  uplink: eth0
  addresses: [{address: 10.9.0.5/24}]
  sockets: {allow_users: [stranger]}
"""

APP = """\
import socket, sys, threading
from vsnetd import client
assert __import__("os").getuid() != 0
path = sys.argv[1]
for name in ("a", "b"):
    for sock in client.listen(name, "tcp", 2049, path=path):
        def serve(sock=sock, name=name):
            while True:
                conn, _ = sock.accept()
                conn.sendall(f"I am {name}".encode())
                conn.close()
        threading.Thread(target=serve, daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def netns_daemon(tmp_path: Path, broker_path: Path, app_users: None) -> Iterator[Daemon]:
    for uplink, lan in (("eth0", "lan-a"), ("eth1", "lan-b")):
        ip("link", "add", uplink, "type", "veth", "peer", "name", uplink + "p")
        ip("link", "set", uplink, "up")
        ip("netns", "add", lan)
        ip("link", "set", uplink + "p", "netns", lan)
        ip("link", "set", uplink + "p", "up", netns=lan)
        ip("link", "set", "lo", "up", netns=lan)
        ip("addr", "add", "10.1.1.100/24", "dev", uplink + "p", netns=lan)
    daemon = start(tmp_path, NETNS, broker_path)
    yield daemon
    daemon.stop()


def ask(netns: str, address: str, port: int) -> str:
    code = ("import socket,sys; s=socket.create_connection((sys.argv[1], int(sys.argv[2])), 3);"
            "print(s.recv(64).decode())")
    return sh("ip", "netns", "exec", netns, sys.executable, "-c", code, address,
              str(port)).strip()


def test_one_unprivileged_process_serves_two_vs_with_the_same_address(
    netns_daemon: Daemon, broker_path: Path
) -> None:
    """The paper's Figure 2 (on macvlan): one process, no root, no setns, a socket in
    each VS namespace from the broker; each segment's client reaches its own VS."""
    app = subprocess.Popen([sys.executable, "-c", APP, str(broker_path)], user=APP_UID,
                           group=APP_UID, extra_groups=[APP_UID], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True, cwd="/")
    try:
        assert app.stdout is not None and app.stdout.readline().strip() == "ready"
        assert ask("lan-a", "10.1.1.5", 2049) == "I am a"
        assert ask("lan-b", "10.1.1.5", 2049) == "I am b"
    finally:
        app.kill()
        app.wait()


def test_sockets_of_a_netns_vs_are_made_in_its_namespace(netns_daemon: Daemon,
                                                         broker_path: Path) -> None:
    (sock,) = client.listen("a", "udp", 5353, path=broker_path)
    with sock:
        assert socket_netns_inode(sock) == os.stat("/run/netns/vs-a").st_ino
        assert sock.type == socket.SOCK_DGRAM and sock.getsockname() == ("10.1.1.5", 5353)
    out = client.outgoing_socket("b", "tcp", 4, path=broker_path)
    with out:
        assert socket_netns_inode(out) == os.stat("/run/netns/vs-b").st_ino
        assert out.getsockname()[0] == "10.1.1.5"


IP_FAMILIES = frozenset({socket.AF_INET, socket.AF_INET6})  # the broker's sockets, not netlink


def namespaces_of_sockets(pid: int, families: frozenset[int] | None = None) -> list[int]:
    """The network namespace (inode) of every socket process ``pid`` holds (of
    ``families`` only, if given), each socket copied into this process (pidfd_getfd) to
    ask the kernel."""
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    found = []
    try:
        for name in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                if not os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                    continue
            fd = libc.syscall(SYS_PIDFD_GETFD, pidfd, int(name), 0)
            if fd < 0:
                continue  # closed since
            try:
                with socket.socket(fileno=os.dup(fd)) as sock:
                    if families is None or sock.family in families:
                        found.append(socket_netns_inode(sock))
            finally:
                os.close(fd)
    finally:
        os.close(pidfd)
    return found


def test_netns_sockets_made_ahead_go_with_their_vs(netns_daemon: Daemon, broker_path: Path,
                                                    tmp_path: Path) -> None:
    """The broker makes a few sockets per entry into a namespace and keeps the others for
    the next requests; they hold the namespace and its settings of the time, so they are
    closed once the VS's entry changes or the VS is gone."""
    namespace = os.stat("/run/netns/vs-a").st_ino
    # the daemon's netlink sockets in the namespace may come meanwhile: IP sockets only
    held_before = namespaces_of_sockets(netns_daemon.pid, IP_FAMILIES).count(namespace)
    for port in range(7001, 7004):
        (sock,) = client.listen("a", "tcp", port, path=broker_path)
        with sock:
            assert socket_netns_inode(sock) == namespace
            assert sock.getsockname() == ("10.1.1.5", port)
    # one batch made, three of it sent: the rest kept for the next requests
    held = namespaces_of_sockets(netns_daemon.pid, IP_FAMILIES).count(namespace)
    assert held - held_before == SPARE_BATCH - 3
    config = tmp_path / "etc" / "servers.yaml"
    save(config, config_text(NETNS.replace("[{address: 10.1.1.5/24}]",
                                           "[{address: 10.1.1.5/24}, {address: 10.1.1.6/24}]", 1)))
    wait_until(lambda: len({s["server"]: s for s in client.servers(broker_path)}["a"]
                           ["addresses"]) == 2, 10,
               "the broker's picture with VS a changed")  # the witness that it was processed
    assert namespaces_of_sockets(netns_daemon.pid, IP_FAMILIES).count(namespace) == held_before
    save(config, config_text("b:\n" + NETNS.split("b:\n", 1)[1]))  # VS a removed
    wait_until(lambda: "a" not in {s["server"] for s in client.servers(broker_path)}, 10,
               "the broker's picture without VS a")  # the witness that it was processed
    assert namespace not in namespaces_of_sockets(netns_daemon.pid)


def as_user(uid: int, code: str, broker_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code, str(broker_path)], user=uid, group=uid,
                          extra_groups=[], capture_output=True, text=True, cwd="/", timeout=30)


ATTEMPT = """\
import sys
from vsnetd import client
try:
    sockets = client.listen(sys.argv[2], "tcp", int(sys.argv[3]), path=sys.argv[1])
    print("ok", len(sockets))
except client.BrokerRefused as exc:
    print(exc.code)
"""


def test_authorization_by_peer_credentials(netns_daemon: Daemon, broker_path: Path) -> None:
    def attempt(uid: int, server: str, port: int) -> str:
        code = ATTEMPT.replace("sys.argv[2]", repr(server)).replace("int(sys.argv[3])",
                                                                     str(port))
        result = as_user(uid, code, broker_path)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    before = settled_fds(netns_daemon)
    namespaces = {vs: os.stat(f"/run/netns/vs-{vs}").st_ino for vs in ("a", "b")}
    held_before = namespaces_of_sockets(netns_daemon.pid, IP_FAMILIES)
    assert attempt(APP_UID, "a", 3000) == "ok 1"  # allowed by user name
    assert attempt(APP_UID, "b", 3001) == "ok 1"  # allowed by group
    assert attempt(APP_UID, "secret", 3002) == "forbidden"
    assert attempt(OTHER_UID, "a", 3003) == "forbidden"
    assert attempt(OTHER_UID, "secret", 3004) == "ok 1"
    assert attempt(APP_UID, "a", 80) == "forbidden"  # no privileged_ports for vsnetapp
    assert attempt(APP_UID, "nosuch", 3005) == "unknown-server"
    listed = as_user(APP_UID, "import sys\nfrom vsnetd import client\n"
                     "print(sorted(s['server'] for s in client.servers(sys.argv[1])))",
                     broker_path)
    assert listed.stdout.strip() == "['a', 'b']"
    # nothing leaked on either path: beyond the baseline, only the spare sockets of the
    # one batch made in each netns VS (one socket of it sent, the others kept)
    held = namespaces_of_sockets(netns_daemon.pid, IP_FAMILIES)
    spares = {vs: held.count(inode) - held_before.count(inode)
              for vs, inode in namespaces.items()}
    assert spares == {"a": SPARE_BATCH - 1, "b": SPARE_BATCH - 1}
    assert daemon_fds(netns_daemon) == before + sum(spares.values())


def raw(broker_path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.settimeout(5)
    for _attempt in range(500):
        try:
            sock.connect(str(broker_path))
            return sock
        except BlockingIOError:  # the accept queue is full for a moment: as any client would
            time.sleep(0.002)
    raise TimeoutError("the broker accepts nobody")


def answer(sock: socket.socket) -> dict[str, object]:
    return json.loads(sock.recv(1 << 16))  # type: ignore[no-any-return]


def test_bad_input_gets_an_error_and_the_daemon_carries_on(
    pbr_daemon: Daemon, broker_path: Path
) -> None:
    before = settled_fds(pbr_daemon)
    with raw(broker_path) as sock:
        for request, code in (
            (b"{not json", "bad-request"),
            (b"[1, 2]", "bad-request"),
            (b'{"v": 2, "op": "servers"}', "unsupported-version"),
            (b'{"v": 1, "op": "format-disk"}', "unknown-op"),
            (b'{"v": 1, "op": "listen", "server": "nas1", "proto": "sctp", "port": 1}',
             "bad-request"),
            (b'{"v": 1, "op": "listen", "server": "nas1", "proto": "tcp", "port": 0}',
             "bad-request"),
            (b'{"v": 1, "op": "listen", "server": "nas1", "port": 1, "colour": "red"}',
             "bad-request"),
            (b" " * 70_000, "too-large"),
            (b'{"v": 1, "op": "serv\xff\xfeers"}', "bad-request"),  # not UTF-8
            (b'{"v": 1, "op": "listen", "server": "nas1", "port": 1, "address": "\xc3("}',
             "bad-request"),
            (b'{"v": true, "op": "servers"}', "unsupported-version"),
            (b'{"v": 1.0, "op": "servers"}', "unsupported-version"),
            (b'{"v": 1, "op": "batch", "requests": [1]}', "bad-request"),
            (b'{"v": 1, "op": "batch", "requests": [{"op": "listen", "server": "nas1", '
             b'"port": 7200}, {"op": "servers"}]}', "bad-request"),
            (b'{"v": 1, "op": "batch", "requests": []}', "bad-request"),
        ):
            sock.send(request)
            reply = answer(sock)
            assert reply["ok"] is False and reply["error"]["code"] == code, (request, reply)  # type: ignore[index]
        # descriptors sent to the broker: refused by the kernel where it can (the sender
        # gets EPERM); else closed by the broker, and the request refused (also one that
        # would be served on the fast path, and a batch)
        for request in (b'{"v": 1, "op": "servers"}',
                        b'{"v":1,"op":"listen","server":"nas1","proto":"tcp","port":7201}',
                        b'{"v":1,"op":"batch","requests":[{"op":"socket","server":"nas1"}]}'):
            pipe_r, pipe_w = os.pipe()
            if kernel_refuses_passed_descriptors():
                with pytest.raises(PermissionError):
                    _send_with_descriptor(sock, request, pipe_r)
            else:
                data, ancdata, _flags, _ = _sendmsg_and_receive(sock, request, pipe_r)
                assert json.loads(data)["error"]["code"] == "bad-request" and not ancdata
            os.close(pipe_r)
            _wait_for_no_reader(pipe_w)  # the daemon's copy closed (by its closer), or none
            os.close(pipe_w)
        # the same connection still works
        sock.send(b'{"v": 1, "op": "servers"}')
        assert answer(sock)["ok"] is True
    # a client that asks and leaves before the answer
    for _ in range(20):
        with raw(broker_path) as sock:
            sock.send(b'{"v": 1, "op": "listen", "server": "nas1", "proto": "tcp", "port": 7100}')
    # a stuck client that never reads: dropped, not waited for
    stuck = raw(broker_path)
    stuck.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        for _ in range(5000):
            stuck.send(b'{"v": 1, "op": "servers"}')
    # a thousand clients at once
    crowd = [raw(broker_path) for _ in range(1000)]
    for sock in crowd:
        sock.send(b'{"v": 1, "op": "servers"}')
    replies = sum(1 for sock in crowd if answer(sock).get("ok"))
    assert replies == 1000
    for sock in crowd:
        sock.close()
    stuck.close()
    assert pbr_daemon.proc.poll() is None
    assert pbr_daemon.status()["servers"]["nas1"]["state"] == "in-sync"
    wait_until(lambda: daemon_fds(pbr_daemon) <= before, 10, "the daemon's fds to settle")


def kernel_refuses_passed_descriptors() -> bool:
    """Whether this kernel has SO_PASSRIGHTS (Linux >= 6.16), which the broker sets to 0:
    a message with descriptors for it then fails at the sender with EPERM."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as probe:
        try:
            probe.setsockopt(socket.SOL_SOCKET, broker_server.SO_PASSRIGHTS, 0)
        except OSError as exc:
            if exc.errno != errno.ENOPROTOOPT:
                raise
            return False
    return True


def _send_with_descriptor(sock: socket.socket, request: bytes, fd: int) -> None:
    sock.sendmsg([request], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])


def _sendmsg_and_receive(sock: socket.socket, request: bytes, fd: int
                         ) -> tuple[bytes, list[tuple[int, int, bytes]], int, object]:
    _send_with_descriptor(sock, request, fd)
    return sock.recvmsg(1 << 16, socket.CMSG_SPACE(253 * 4))


def _wait_for_no_reader(pipe_w: int) -> None:
    wait_until(lambda: not _has_reader(pipe_w), 10, "the read end of the pipe to be closed")


def _has_reader(pipe_w: int) -> bool:
    """Whether any process still holds the read end of a pipe (a write would tell)."""
    try:
        os.write(pipe_w, b"x")
    except BrokenPipeError:
        return False
    return True


# --------------------------------------------------------------------------- clients that stall


@contextlib.contextmanager
def lingering_socket() -> Iterator[socket.socket]:
    """A TCP connection on the loopback whose peer never reads, its send queue full and
    SO_LINGER 60 s: the last close of the sending socket waits for data that cannot leave,
    until the linger time has passed or the peer resets the connection (on leaving)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        sender = socket.create_connection(listener.getsockname())
        peer, _ = listener.accept()
    try:
        sender.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                sender.send(b"x" * 65536)
        sender.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 60))
        yield sender
    finally:
        # the reset first: it ends a close waiting for the data, this process's own included
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()
        sender.close()


def test_a_lingering_socket_passed_to_the_broker_stalls_nobody(pbr_daemon: Daemon,
                                                              broker_path: Path) -> None:
    """A client passes a socket whose last close blocks: the kernel refuses it (EPERM),
    or the broker closes it on a thread of its own; either way its other clients are
    served meanwhile."""
    with lingering_socket() as sender, raw(broker_path) as passer, \
            raw(broker_path) as other:
        passer.settimeout(30)  # far beyond a reply, well within the linger time
        other.settimeout(30)
        try:
            _send_with_descriptor(passer, b'{"v": 1, "op": "servers"}', sender.fileno())
        except PermissionError:
            assert kernel_refuses_passed_descriptors()
            handed = False
        else:
            assert not kernel_refuses_passed_descriptors()
            handed = True
            # the broker's copy is now the last (unless it was quicker than this close,
            # which then waits here instead)
            sender.close()
        other.send(b'{"v": 1, "op": "servers"}')
        assert answer(other)["ok"] is True
        if handed:
            assert answer(passer)["error"]["code"] == "bad-request"  # type: ignore[index]
        assert pbr_daemon.status()["servers"]["nas1"]["state"] == "in-sync"


def connected(broker: broker_server.Broker) -> socket.socket:
    """A client of an in-process broker, accepted."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.settimeout(30)  # far beyond a reply, well within the linger time
    sock.connect(str(broker.path))
    assert broker.accept() is not None
    return sock


def test_without_passrights_passed_descriptors_are_closed_off_the_serving_thread(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A kernel without SO_PASSRIGHTS (an option it does not know stands for it here) lets
    descriptors reach the broker: with a request, and queued behind the end of a
    connection it drops. Their closes, which wait for the linger time, are its closer's:
    the other clients are served meanwhile."""
    monkeypatch.setattr(broker_server, "SO_PASSRIGHTS", 0x7FFF)  # ENOPROTOOPT, as Linux 6.1
    broker = broker_server.Broker(cast(Kernel, None), tmp_path / "broker.sock")
    broker.open()
    assert not broker.refuses_rights
    broker.start()
    try:
        with lingering_socket() as first, lingering_socket() as second, \
                connected(broker) as passer, connected(broker) as leaving, \
                connected(broker) as other:
            with broker.lock:  # nothing is read meanwhile: the broker's copies are the last
                _send_with_descriptor(passer, b'{"v": 1, "op": "servers"}', first.fileno())
                leaving.send(b"")  # the end of the connection, for the broker: dropped
                _send_with_descriptor(leaving, b'{"v": 1, "op": "servers"}', second.fileno())
                first.close()
                second.close()
            other.send(b'{"v": 1, "op": "servers"}')
            assert answer(other)["ok"] is True
            assert answer(passer)["error"]["code"] == "bad-request"  # type: ignore[index]
            with pytest.raises(ConnectionResetError):  # dropped, a message of it unread
                leaving.recv(100)
            other.send(b'{"v": 1, "op": "servers"}')
            assert answer(other)["ok"] is True
    finally:
        broker.close()


def sockets_bound_to(address: str) -> int:
    """The UDP and TCP sockets bound to an IPv4 address in this thread's namespace, from
    the kernel's tables (those held in flight by a message included)."""
    hexed = socket.inet_aton(address)[::-1].hex().upper()
    count = 0
    for table in ("udp", "tcp"):
        with open(f"/proc/thread-self/net/{table}") as lines:
            next(lines)
            count += sum(1 for line in lines if line.split()[1].startswith(hexed + ":"))
    return count


def test_a_client_that_does_not_read_its_replies_is_dropped(pbr_daemon: Daemon,
                                                            broker_path: Path) -> None:
    """Requests pipelined without reading: the sockets of the replies wait in the
    client's receive queue, pinned. Once more than UNREAD_MAX waits, the broker drops the
    client; everything it made is gone with the connection."""
    before = settled_fds(pbr_daemon)
    requests = (b'{"v":1,"op":"socket","server":"nas1","proto":"udp"}',
                b'{"v":1,"op":"listen","server":"nas1","proto":"tcp","port":7600,'
                b'"address":"10.0.1.5","reuseport":true}')
    sent = received = 0
    with raw(broker_path) as sock:
        sock.settimeout(30)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            while sent < 5000:  # blocks while the broker reads; fails once it has dropped us
                sock.send(requests[sent % 2])
                sent += 1
        pinned = sockets_bound_to("10.0.1.5")
        while True:  # the replies, up to the end of the connection: the witness of the drop
            data, ancdata, _flags, _ = sock.recvmsg(1 << 16, socket.CMSG_SPACE(253 * 4))
            fds = array.array("i")
            for _level, _kind, payload in ancdata:
                fds.frombytes(payload)
            for fd in fds:
                os.close(fd)
            if not data:
                break
            assert json.loads(data)["ok"] is True and len(fds) == 1
            received += 1
    assert received == pinned < sent
    # a reply with its socket takes more than 512 bytes of kernel memory
    assert pinned <= broker_server.UNREAD_MAX // 512 + 1
    wait_until(lambda: sockets_bound_to("10.0.1.5") == 0, 10, "the sockets to be freed")
    wait_until(lambda: daemon_fds(pbr_daemon) <= before, 10, "the daemon's fds to settle")
    with raw(broker_path) as sock:  # and the broker serves on
        sock.send(b'{"v": 1, "op": "servers"}')
        assert answer(sock)["ok"] is True


def test_a_subscriber_that_does_not_read_its_events_is_dropped() -> None:
    """An event goes to a subscriber that reads; one that left more than UNREAD_MAX
    unread is dropped instead."""
    broker = broker_server.Broker(cast(Kernel, None))
    config = Config.model_validate({"version": 1, "servers": {"a": {
        "id": 1, "mode": "pbr", "uplink": "eth0", "addresses": [{"address": "10.0.0.5/24"}]}}})
    served = {name: broker_server.Served(server, config.servers[name], "in-sync")
              for name, server in compile_config(config).servers.items()}
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) for _ in range(2)]
    reading, idle = (broker_server.Client(ours, Peer(os.getpid(), 0, 0), subscribed=True)
                     for ours, _theirs in pairs)
    for subscriber in (reading, idle):
        subscriber.conn.setsockopt(socket.SOL_SOCKET, broker_server.SO_SNDBUFFORCE, 8 << 20)
        broker.clients[subscriber.fd] = subscriber
    unread = b"x" * (broker_server.UNREAD_MAX + 1)
    idle.conn.send(unread)
    try:
        broker.update(served, 1)
        assert list(broker.clients) == [reading.fd]
        event = json.loads(pairs[0][1].recv(1 << 16))
        assert event["event"] == "changed" and event["changed"] == ["a"]
        idle_end = pairs[1][1]
        idle_end.settimeout(10)
        assert idle_end.recv(len(unread) + 1) == unread  # and no event after it:
        assert idle_end.recv(1 << 16) == b""  # the connection closed
    finally:
        broker.close()
        for ours, theirs in pairs:
            ours.close()
            theirs.close()


REQUEST_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-5, 70000),
                           st.sampled_from(["listen", "socket", "servers", "subscribe", "batch",
                                            "tcp", "udp", "nas1"]), st.text(max_size=5))
REQUEST_DICTS = st.dictionaries(
    st.sampled_from(["v", "op", "server", "proto", "port", "address", "family", "backlog",
                     "reuseport", "freebind", "requests", "x"]),
    REQUEST_VALUES, max_size=8)


@given(st.binary(max_size=300) | st.text(max_size=200).map(str.encode)
       | REQUEST_DICTS.map(lambda d: json.dumps(d).encode())
       | st.builds(lambda top, items: json.dumps({**top, "requests": items}).encode(),
                   REQUEST_DICTS, st.lists(REQUEST_DICTS | REQUEST_VALUES, max_size=4)))
@settings(max_examples=2000, deadline=None)
def test_the_request_parser_only_ever_answers_or_refuses(data: bytes) -> None:
    try:
        request = parse_request(data)
    except BrokerError as exc:
        assert exc.code in {"bad-request", "too-large", "unsupported-version", "unknown-op"}
        return
    if isinstance(request, Batch):
        assert request.op == "batch" and 1 <= len(request.requests) <= 253
        items = request.requests
    else:
        assert isinstance(request, Request)
        assert request.op in {"listen", "socket", "servers", "subscribe"}
        items = (request,) if request.op in ("listen", "socket") else ()
    for item in items:
        assert item.op in ("listen", "socket") and isinstance(item.server, str)
        assert item.proto in ("tcp", "udp") and item.family in (None, 4, 6)
        assert 1 <= item.backlog <= 65535
        assert 1 <= item.port <= 65535 if item.op == "listen" else 0 <= item.port <= 65535


def test_subscribers_hear_about_changes(pbr_daemon: Daemon, broker_path: Path) -> None:
    events = client.subscribe(broker_path)
    first = next(events)
    assert [s["server"] for s in first["servers"]] == ["nas1"]
    config = pbr_daemon.config
    config.write_text(config.read_text() + textwrap.indent(textwrap.dedent("""\
        nas9: {id: 9, mode: pbr, uplink: eth0, addresses: [{address: 10.0.0.99/24}]}
        """), "  "))
    event = next(events)
    assert event["event"] == "changed" and "nas9" in event["changed"]
    assert event["generation"] == 2


def test_gunicorn_serves_http_through_vsnet_exec(pbr_daemon: Daemon, broker_path: Path,
                                                 tmp_path: Path) -> None:
    exe = Path(sys.executable).parent
    app = subprocess.Popen(
        [str(exe / "vsnet-exec"), "--broker", str(broker_path), "--server", "nas1",
         "--listen", "tcp:8080", "--", str(exe / "gunicorn"), "--workers", "1",
         "--chdir", str(Path(__file__).parent), "wsgi_app:app"],
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "gunicorn.log").open("w"))
    try:
        code = ("import http.client,sys; c=http.client.HTTPConnection(sys.argv[1], 8080, "
                "timeout=3); c.request('GET', '/'); print(c.getresponse().read().decode())")

        def fetch() -> str:
            result = subprocess.run(["ip", "netns", "exec", "client", sys.executable, "-c",
                                     code, "10.0.1.5"], capture_output=True, text=True)
            return result.stdout.strip()

        body = wait_until(fetch, 20, "gunicorn to answer")
        assert body == "hello from gunicorn on 10.0.1.5"
    finally:
        app.terminate()
        app.wait(timeout=20)


def test_vsnet_exec_without_a_broker_says_where_it_looked(tmp_path: Path) -> None:
    missing = tmp_path / "broker.sock"
    result = subprocess.run(
        [str(Path(sys.executable).parent / "vsnet-exec"), "--broker", str(missing),
         "--server", "nas1", "--listen", "tcp:8080", "--", "true"],
        capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert result.stderr == (
        f"vsnet-exec: cannot reach the broker at {missing}: No such file or directory (is "
        "vsnetd running? a caller other than root must be in the vsnet group)\n")


def test_vsnet_exec_announces_only_the_sockets_it_passes(pbr_daemon: Daemon,
                                                          broker_path: Path) -> None:
    """Inside a socket-activated unit (here: LISTEN_* set and fd 3 open by a shell),
    vsnet-exec without --listen leaves the unit's sockets and their announcement as they
    are; with --listen, it announces its own."""
    program = ("import os; print(os.environ.get('LISTEN_FDS'), "
               "os.environ.get('LISTEN_PID') == str(os.getpid()), "
               "os.environ.get('LISTEN_FDNAMES'), os.readlink('/proc/self/fd/3')[:7])")
    unit = ('export LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=unit-socket; '
            'exec "$@" 3</dev/null')

    def run(*listen: str) -> str:
        result = subprocess.run(
            ["sh", "-c", unit, "sh", str(Path(sys.executable).parent / "vsnet-exec"),
             "--broker", str(broker_path), "--server", "nas1", *listen, "--",
             sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    assert run() == "1 True unit-socket /dev/nu"
    assert run("--listen", "tcp:7700") == "2 True tcp-7700:tcp-7700 socket:"


def test_udp_marks_per_datagram_and_receive_marks(pbr_daemon: Daemon, broker_path: Path) -> None:
    """The paper's UDP problem, for applications that keep one shared socket: mark each
    datagram (SO_MARK control message), read the mark and destination of each received
    one (SO_RCVMARK, IP_PKTINFO)."""
    # a marked datagram is routed by nas1's mark table: source 10.0.1.5, out via gw-b
    receiver = subprocess.Popen(
        ["ip", "netns", "exec", "client", sys.executable, "-c",
         "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM);"
         "s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b'cb');"
         "s.bind(('0.0.0.0', 5400)); print('ready', flush=True); s.settimeout(5);"
         "d, a = s.recvfrom(100); print(a[0], d.decode(), flush=True)"],
        stdout=subprocess.PIPE, text=True)
    assert receiver.stdout is not None and receiver.stdout.readline().strip() == "ready"
    shared = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with shared:
        client.sendmsg_marked(shared, b"marked", (lab.CLIENT, 5400), 0x5600001)
        out, _ = receiver.communicate(timeout=10)
    assert out.strip() == "10.0.1.5 marked"
    # the receive side: the mark a datagram carries, and the address it was sent to
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        server.bind(("0.0.0.0", 5401))
        client.enable_receive_info(server)
        sender.setsockopt(socket.SOL_SOCKET, SO_MARK, 0x77)
        sender.sendto(b"hello", ("10.0.1.5", 5401))
        server.settimeout(5)
        data, _sender, mark, local = client.recvmsg_marked(server)
    assert (data, mark, local) == (b"hello", 0x77, "10.0.1.5")


def test_the_c_example_serves_sockets_from_the_broker(pbr_daemon: Daemon, broker_path: Path,
                                                      tmp_path: Path) -> None:
    source = Path(__file__).parent.parent / "packaging" / "examples" / "vsnet_listen.c"
    binary = tmp_path / "vsnet_listen"
    subprocess.run(["gcc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-O2", "-o", str(binary),
                    str(source)], check=True)
    example = subprocess.Popen([str(binary), "nas1", "8200", str(broker_path)],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert example.stdout is not None
        assert example.stdout.readline().strip() == "listening on 2 sockets"
        for address, link in (("10.0.0.5", "ca"), ("10.0.1.5", "cb")):
            reply = lab.client_connect(address, 8200, link)
            assert reply.stdout.startswith("hello from vsnet nas1"), reply.stderr
    finally:
        example.terminate()
        example.wait(timeout=10)


def test_descriptors_pass_exactly_once(pbr_daemon: Daemon, broker_path: Path) -> None:
    """Each reply's descriptors are the client's alone: the daemon keeps no copy."""
    before = settled_fds(pbr_daemon)
    with client.Broker(broker_path) as broker:
        reply, sockets = broker.request(op="listen", server="nas1", proto="udp", port=6000)
    assert len(sockets) == 2 == len(reply["sockets"])  # type: ignore[arg-type]
    assert [m["address"] for m in reply["sockets"]] == [s.getsockname()[0] for s in sockets]  # type: ignore[index, union-attr]
    wait_until(lambda: daemon_fds(pbr_daemon) <= before, 5, "the daemon to keep no copy")
    for sock in sockets:
        sock.close()


# --------------------------------------------------------------------------- the worked example

PROTOCOL = Path(__file__).resolve().parent.parent / "docs" / "broker-protocol.md"


def worked_example() -> tuple[str, list[bytes], str]:
    """The worked example of docs/broker-protocol.md: its config, its JSON messages (as
    written, byte for byte) and its text."""
    text = PROTOCOL.read_text().split("## Worked example", 1)[1].split("\n## ", 1)[0]
    config = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    messages = [block.split("```", 1)[0].rstrip("\n").encode()
                for block in text.split("```json\n")[1:]]
    return config, messages, text


def test_the_worked_example_is_byte_exact(tmp_path: Path, broker_path: Path,
                                          app_users: None) -> None:
    config_body, messages, text = worked_example()
    request, reply, unknown, refused = messages
    assert f"one message of {len(request)} bytes" in text
    assert f"one message of {len(reply)} bytes" in text
    ip("link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
    config = tmp_path / "servers.yaml"
    config.write_text(config_body)
    daemon = Daemon(tmp_path, config, ["--broker", str(broker_path)])
    daemon.ready()
    try:
        os.chmod(broker_path, 0o666)
        before = settled_fds(daemon)
        with raw(broker_path) as sock:
            sock.send(request)
            data, ancdata, flags, _ = sock.recvmsg(1 << 16, socket.CMSG_SPACE(253 * 4))
            fds = array.array("i")
            for _level, _kind, payload in ancdata:
                fds.frombytes(payload)
            assert data == reply and flags == 0 and len(fds) == 1
            with socket.socket(fileno=fds[0]) as listener:
                assert listener.getsockname() == ("10.0.0.5", 8080)
                assert listener.getsockopt(socket.SOL_SOCKET, SO_MARK) == 0x5600001
                assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
            sock.send(unknown)
            data, ancdata, _flags, _ = sock.recvmsg(1 << 16, socket.CMSG_SPACE(253 * 4))
            assert data == refused and not ancdata
        forbidden = re.search(r"gets\n`(\{.*?\})`", text, re.DOTALL)
        assert forbidden is not None
        code = ("import socket,sys; s=socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET);"
                "s.connect(sys.argv[1]); s.send(sys.argv[2].encode());"
                "sys.stdout.write(s.recv(65536).decode())")
        result = subprocess.run([sys.executable, "-c", code, str(broker_path),
                                 request.decode()], user=65534, group=65534, extra_groups=[],
                                capture_output=True, text=True, cwd="/", timeout=30)
        assert result.stdout == forbidden.group(1).replace("\n", " "), result.stderr
        wait_until(lambda: daemon_fds(daemon) <= before, 5, "the daemon to keep no copy")
    finally:
        daemon.stop()


# --------------------------------------------------------------------------- batch


def test_a_batch_gets_every_socket_in_one_message(pbr_daemon: Daemon, broker_path: Path
                                                  ) -> None:
    before = settled_fds(pbr_daemon)
    with client.Broker(broker_path) as broker:
        got = broker.batch([
            {"op": "listen", "server": "nas1", "proto": "tcp", "port": 7300},
            {"op": "listen", "server": "nas1", "proto": "udp", "port": 7300,
             "address": "10.0.1.5"},
            {"op": "socket", "server": "nas1", "proto": "tcp"},
        ])
        try:
            seen = [(meta["request"], sock.type, sock.getsockname(),
                     sock.getsockopt(socket.SOL_SOCKET, SO_MARK),
                     sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
                    for meta, sock in got]
            outgoing_port = got[3][1].getsockname()[1]
            assert seen == [
                (0, socket.SOCK_STREAM, ("10.0.0.5", 7300), 0x5600001, 1),
                (0, socket.SOCK_STREAM, ("10.0.1.5", 7300), 0x5600001, 1),
                (1, socket.SOCK_DGRAM, ("10.0.1.5", 7300), 0x5600001, 0),
                (2, socket.SOCK_STREAM, ("10.0.1.5", outgoing_port), 0x5600001, 0),
            ]
            assert outgoing_port != 0
            assert [m["port"] for m, _ in got] == [7300, 7300, 7300, outgoing_port]
        finally:
            for _meta, sock in got:
                sock.close()
    wait_until(lambda: daemon_fds(pbr_daemon) <= before, 5, "the daemon to keep no copy")


def test_a_batch_is_all_or_nothing(pbr_daemon: Daemon, broker_path: Path) -> None:
    before = settled_fds(pbr_daemon)
    with socket.socket() as squatter:  # 10.0.1.5:7400 taken: the third socket fails
        squatter.setsockopt(socket.IPPROTO_IP, 15, 1)  # IP_FREEBIND
        squatter.bind(("10.0.1.5", 7400))
        squatter.listen()
        with raw(broker_path) as sock:
            for items, code, where in (
                ([{"op": "listen", "server": "nas1", "port": 7401},
                  {"op": "listen", "server": "nas9", "port": 7401}],
                 "unknown-server", "requests[1]: "),
                ([{"op": "listen", "server": "nas1", "port": 7402},
                  {"op": "socket", "server": "nas1", "family": 6}],
                 "bad-request", "requests[1]: "),
                ([{"op": "listen", "server": "nas1", "port": 7403},
                  {"op": "listen", "server": "nas1", "port": 7400}],
                 "socket-error", "requests[1]: "),
                ([{"op": "socket", "server": "nas1"}] * 127
                 + [{"op": "listen", "server": "nas1", "port": 7404}] * 64,
                 "bad-request", "a batch yields at most 253 sockets"),
            ):
                sock.send(json.dumps({"v": 1, "op": "batch", "requests": items}).encode())
                data, ancdata, _flags, _ = sock.recvmsg(1 << 16, socket.CMSG_SPACE(253 * 4))
                reply = json.loads(data)
                assert not ancdata, reply
                assert reply["error"]["code"] == code, reply
                assert reply["error"]["message"].startswith(where), reply
    # nothing of the refused batches is left bound: the ports are free again
    for port in (7401, 7402, 7403):
        with socket.socket() as probe:
            probe.setsockopt(socket.IPPROTO_IP, 15, 1)
            probe.bind(("10.0.0.5", port))
    wait_until(lambda: daemon_fds(pbr_daemon) <= before, 5, "the daemon's fds to settle")


def test_authorization_holds_per_item_and_per_generation(netns_daemon: Daemon,
                                                          broker_path: Path) -> None:
    """A verdict is kept per connection and generation: a reload that takes a VS away
    from a user applies to the next request of a connection already open."""
    code = textwrap.dedent("""\
        import sys
        from vsnetd import client
        broker = client.Broker(sys.argv[1])
        def attempt(items):
            try:
                return [m["request"] for m, s in broker.batch(items)]
            except client.BrokerRefused as exc:
                return str(exc).split(":")[0] + " " + str(exc).split(": ")[1].split(":")[0]
        print(attempt([{"op": "listen", "server": "a", "port": 3100},
                       {"op": "socket", "server": "b"}]), flush=True)
        print(attempt([{"op": "socket", "server": "a"},
                       {"op": "socket", "server": "secret"}]), flush=True)
        print(attempt([{"op": "listen", "server": "a", "port": 99}]), flush=True)
        sys.stdin.readline()
        print(attempt([{"op": "socket", "server": "a"}]), flush=True)
        """)
    app = subprocess.Popen([sys.executable, "-c", code, str(broker_path)], user=APP_UID,
                           group=APP_UID, extra_groups=[APP_UID], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True, cwd="/")
    try:
        assert app.stdout is not None and app.stdin is not None
        assert app.stdout.readline().strip() == "[0, 1]"
        assert app.stdout.readline().strip() == "forbidden requests[1]"
        assert app.stdout.readline().strip() == "forbidden requests[0]"
        config = netns_daemon.config
        config.write_text(config.read_text().replace("sockets: {allow_users: [vsnetapp]}",
                                                      "sockets: {allow_users: [stranger]}"))
        wait_until(lambda: netns_daemon.status()["daemon"]["generation"] == 2, 20, "the reload")
        app.stdin.write("\n")
        app.stdin.flush()
        assert app.stdout.readline().strip() == "forbidden requests[0]"
    finally:
        app.kill()
        app.wait()


# --------------------------------------------------------------------------- the Python client


@contextlib.contextmanager
def fake_broker(tmp_path: Path, timeout: float | None = 10.0
                ) -> Iterator[tuple[client.Broker, socket.socket]]:
    """A client connected to a broker of the test's own: the test's end answers what it
    wants, when it wants (a reply queued before the request is its answer)."""
    path = tmp_path / "fake-broker.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as listener:
        listener.bind(str(path))
        listener.listen()
        with client.Broker(path, timeout=timeout) as broker:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(10)
                # room for any message, as the broker's connections have
                conn.setsockopt(socket.SOL_SOCKET, broker_server.SO_SNDBUFFORCE, 8 << 20)
                yield broker, conn


def sockets_reply(port: int, part: int = 1, parts: int = 1) -> bytes:
    return (b'{"v":1,"ok":true,"generation":1,"sockets":[{"server":"vs","address":"127.0.0.1",'
            b'"port":%d,"proto":"tcp","family":4,"mark":0,"namespace":""}],"part":%d,'
            b'"parts":%d}' % (port, part, parts))


def send_with(conn: socket.socket, data: bytes, fd: int) -> None:
    conn.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])


def test_a_late_reply_never_answers_the_next_request(tmp_path: Path) -> None:
    """A request that timed out closes the connection: its reply, arriving late, can never
    be taken for the answer to the next request (another VS's socket)."""
    with fake_broker(tmp_path, timeout=0.2) as (broker, conn), socket.socket() as late:
        with pytest.raises(TimeoutError):
            broker.listen("vs-a", "tcp", 1111)
        assert b'"server":"vs-a"' in conn.recv(1 << 16)
        with contextlib.suppress(BrokenPipeError):  # the late answer: nobody to take it
            send_with(conn, sockets_reply(1111), late.fileno())
        with pytest.raises(ConnectionError, match="incomplete exchange"):
            broker.listen("vs-b", "tcp", 2222)
        assert conn.recv(1 << 16) == b""  # the client closed its end, the request unsent


def test_a_reply_broken_between_its_parts_closes_the_connection(tmp_path: Path) -> None:
    """The first part came, the second is unreadable: the sockets received are closed with
    the connection; a refusal before that left the connection usable."""
    with fake_broker(tmp_path) as (broker, conn):
        conn.send(b'{"v":1,"ok":false,"error":{"code":"forbidden","message":"no"}}')
        with pytest.raises(client.BrokerRefused):
            broker.listen("vs", "tcp", 80)
        handed, kept = socket.socketpair()
        with handed, kept:
            send_with(conn, sockets_reply(8080, 1, 2), handed.fileno())
            handed.close()
            conn.send(b"{not json")
            with pytest.raises(ValueError):
                broker.listen("vs", "tcp", 8080)
            kept.settimeout(10)
            assert kept.recv(1) == b""  # the first part's socket closed by the client
        with pytest.raises(ConnectionError, match="incomplete exchange"):
            broker.request(op="servers")


def test_a_servers_reply_of_many_vs_fits(tmp_path: Path) -> None:
    """The broker's connections let a message of up to 16 MiB through; the client takes
    one of tens of thousands of VS."""
    servers = [{"server": f"vs{n}", "mode": "pbr", "addresses": [f"10.{n >> 8}.{n & 255}.5/24"],
                "mark": 90177536 + n, "namespace": "", "state": "in-sync"}
               for n in range(30_000)]
    reply = json.dumps({"v": 1, "ok": True, "generation": 1, "servers": servers},
                       separators=(",", ":")).encode()
    assert len(reply) > 3 << 20
    with fake_broker(tmp_path) as (broker, conn):
        conn.send(reply)
        assert broker.request(op="servers")[0]["servers"] == servers
        conn.send(b'{"v":1,"ok":true,"generation":1,"servers":[]}')  # and the next one
        assert broker.request(op="servers")[0]["servers"] == []


@pytest.mark.parametrize("timeout", [0, 0.0, -1])
def test_a_timeout_is_positive_or_none(timeout: float) -> None:
    with pytest.raises(ValueError, match="None waits forever"):
        client.Broker("/nonexistent", timeout=timeout)
