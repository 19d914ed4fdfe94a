"""The broker's connections, served by a thread of their own.

The daemon's select loop watches the listening socket (:meth:`Broker.open`) and calls
:meth:`accept` when it is readable (admission needs the daemon's descriptor count); the
clients accepted are served by the broker's thread (:meth:`start`): a level-triggered
``epoll`` of the clients alone, one request per wake-up of a client (the only client: as
many as it has sent, up to 9), nothing else on its path (the daemon's loop computes
deadlines and looks at its schedule on every wake-up: a request waiting for it cost more
than serving it). The daemon hands the broker its
picture of the VS after every reconcile (:meth:`update`). :attr:`Broker.lock` is held
while a request is served and while the picture changes: a request sees one picture, and
whoever takes the lock after a reply was received finds that request counted.
:meth:`readable` serves one request of one client in the calling thread (the thread's
loop, or a benchmark without one).

No descriptor passed by a client is ever closed on the broker's thread: the last close
of a TCP socket with ``SO_LINGER`` waits until its data and FIN are gone (up to the linger
time), and would stall every client and the daemon's loop (waiting for :attr:`lock`). Where the kernel has
``SO_PASSRIGHTS`` (Linux >= 6.16) the listener refuses them, so that a sender's
``sendmsg`` fails with ``EPERM`` and none arrives; elsewhere they are closed by
:class:`Closer`, and so are the connections dropped (their unread messages may hold some).

The hot path (``listen``/``socket``, a profile showed where the time went): one
``recvmsg_into`` into a buffer kept for the broker's life, one ``ioctl`` (how much the
client left unread: :data:`UNREAD_MAX`), :func:`parse_request`, a dict lookup of the
VS's :class:`~vsnetd.broker.sockets.Target` (built once per picture), the caller's
verdict for that VS (decided once per connection and generation), the socket's system
calls, the port put between the two preframed halves of the reply, one ``sendmsg``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import grp
import logging
import os
import queue
import select
import socket
import struct
import threading
import time
from _socket import socket as _socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vsnetd import log
from vsnetd.broker.access import (
    DENIED,
    PRIVILEGED_PORTS,
    Access,
    Peer,
    allows,
    peer_of,
    verdict,
)
from vsnetd.broker.protocol import (
    BROKER_GROUP,
    BROKER_PATH,
    MAX_FDS,
    MAX_MESSAGE,
    VERSION,
    Batch,
    BrokerError,
    Request,
    encode,
    parse_request,
)
from vsnetd.broker.sockets import SpareBudget, Target, make_socket
from vsnetd.config import ServerConfig
from vsnetd.kernel import Kernel
from vsnetd.kinds import confinement
from vsnetd.state import DesiredServer

__all__ = ["BROKER_PATH", "Broker", "Client", "Observer", "Served"]

MAX_CLIENTS = 4096
SO_SNDBUFFORCE = 32
SO_PASSRIGHTS = 83  # Linux >= 6.16; 0: the kernel refuses SCM_RIGHTS sent to the socket
SIOCOUTQ = 0x5411  # AF_UNIX: the kernel memory of the messages sent and not read yet
# What a connection may leave unread (the kernel memory of the messages: 768 bytes for a
# reply of one socket, a large message's rounded up to a power of two) before the broker
# serves it again: room for an unread `servers` reply or event of ~4,500 VS of one
# address. Without a bound, a client pipelining requests without reading pins every
# socket its 16 MiB send buffer holds replies for (21,000; over 100,000 in batches).
UNREAD_MAX = 1 << 20
# Threads closing what a client may have passed (kernels without SO_PASSRIGHTS): one close
# that waits, for the linger time or for good, leaves the others to close the rest.
CLOSERS = 4
CONTROL_SPACE = socket.CMSG_SPACE(MAX_FDS * 4)
# plain ints: the socket module's flags are enums, whose operators are Python functions
SEND_FLAGS = int(socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
RECV_FLAGS = int(socket.MSG_DONTWAIT)
MSG_TRUNC = int(socket.MSG_TRUNC)
EPOLLIN = select.EPOLLIN
EVENTS_PER_WAIT = 64
EAGER_READS = 8
SKIP_AFTER_MISS = 8
DROPPED_ERRNOS = frozenset({errno.EAGAIN, errno.EPIPE, errno.ECONNRESET, errno.ENOBUFS,
                            errno.EMSGSIZE})
SOL_SOCKET, SCM_RIGHTS = int(socket.SOL_SOCKET), int(socket.SCM_RIGHTS)
_perf = time.perf_counter_ns
_ioctl = fcntl.ioctl

# A request's observer: (op, result, nanoseconds) -- result is "ok", an error code, or
# "dropped" (the reply could not be handed over). The one place where a request's op,
# outcome and service time are all known (for metrics).
Observer = Callable[[str, str, int], object]


@dataclass(slots=True)
class Served:
    """What the broker knows of one VS: what the daemon compiled, and its policy."""

    desired: DesiredServer
    config: ServerConfig
    state: str = "pending"
    access: Access | None = None  # resolved from ``config`` when not given

    def __post_init__(self) -> None:
        if self.access is None:
            self.access = Access.of(self.config)

    @property
    def policy(self) -> Access:
        assert self.access is not None
        return self.access

    def describe(self) -> dict[str, Any]:
        d = self.desired
        return {"server": d.name, "mode": d.mode, "addresses": list(d.addresses),
                "mark": d.numbers.mark if d.mode == "pbr" else 0,
                "namespace": d.netns, "state": self.state,
                "cgroup": getattr(confinement.of(d.objects), "cgroup", "")}


class Closer:
    """Closes descriptors on threads of their own (at most :data:`CLOSERS`, started as
    needed), in order: a last close that waits (a socket with ``SO_LINGER`` whose data
    cannot leave) holds up one of them, never the broker's thread."""

    def __init__(self) -> None:
        self.queue: queue.SimpleQueue[int | socket.socket | None] = queue.SimpleQueue()
        self.lock = threading.Lock()  # the serving thread and the daemon's loop both close
        self.threads = 0  # running
        self.idle = 0  # waiting for something to close
        self.pending = 0  # queued, not taken yet

    def close(self, closable: int | socket.socket) -> None:
        """Close a descriptor number or a socket, soon."""
        with self.lock:
            self.queue.put(closable)
            self.pending += 1
            if self.pending > self.idle and self.threads < CLOSERS:
                self.threads += 1
                threading.Thread(target=self._run, name="broker-closer", daemon=True).start()

    def stop(self) -> None:
        """End the threads once what they were given is closed (without waiting)."""
        with self.lock:
            for _thread in range(self.threads):
                self.queue.put(None)
                self.pending += 1

    def _run(self) -> None:
        while True:
            with self.lock:
                self.idle += 1
            closable = self.queue.get()
            with self.lock:
                self.idle -= 1
                self.pending -= 1
                if closable is None:
                    self.threads -= 1
                    return
            with contextlib.suppress(OSError):
                if isinstance(closable, int):
                    os.close(closable)
                else:
                    closable.close()


@dataclass(slots=True)
class Client:
    conn: socket.socket
    peer: Peer
    fd: int = field(init=False)  # the connection's, while it is open
    subscribed: bool = False
    # verdicts (access.DENIED...) by VS, valid for one generation of the config
    verdicts: dict[str, int] = field(default_factory=dict)
    verdicts_generation: int = -1
    # read again at once after a reply while that finds the next request (see _serve);
    # after a miss, only after SKIP_AFTER_MISS more requests
    eager: int = 0

    def __post_init__(self) -> None:
        self.fd = self.conn.fileno()


def _reply_head(generation: int) -> bytes:
    return f'{{"v":{VERSION},"ok":true,"generation":{generation},"sockets":['.encode()


@dataclass(slots=True)
class Broker:
    """The broker's listening socket and clients; the clients served by its thread."""

    kernel: Kernel
    path: Path = Path(BROKER_PATH)
    served: dict[str, Served] = field(default_factory=dict)
    generation: int = 0
    clients: dict[int, Client] = field(default_factory=dict)
    listener: socket.socket | None = None
    observe: Observer | None = None
    targets: dict[str, Target] = field(default_factory=dict)
    spare_budget: SpareBudget = field(default_factory=SpareBudget)  # netns sockets made ahead
    # what every sockets reply of this generation starts with
    reply_head: bytes = field(default_factory=lambda: _reply_head(0))
    buffer: bytearray = field(default_factory=lambda: bytearray(MAX_MESSAGE + 1))
    lock: threading.Lock = field(default_factory=threading.Lock)
    # the thread serving the clients (start), its epoll and an eventfd to wake it for stop
    thread: threading.Thread | None = None
    epoll: select.epoll | None = None
    wake: int = -1
    stopping: bool = False
    missed: bool = False  # the last read found nothing (readable)
    # the kernel refuses descriptors sent to the broker (SO_PASSRIGHTS, see open); else
    # those that arrive, and the connections that may hold some, go to the closer
    refuses_rights: bool = False
    closer: Closer = field(default_factory=Closer)
    # SIOCOUTQ's answer, written in place: no allocation per request
    unread: bytearray = field(default_factory=lambda: bytearray(4))
    unread_bytes: memoryview = field(init=False)

    def __post_init__(self) -> None:
        self.unread_bytes = memoryview(self.unread).cast("i")

    def open(self) -> socket.socket:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX,
                             socket.SOCK_SEQPACKET | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        # before listen(): a connection inherits it from the listener as it is made, so
        # even what a client sends before it is accepted is refused
        try:
            sock.setsockopt(SOL_SOCKET, SO_PASSRIGHTS, 0)
            self.refuses_rights = True
        except OSError as exc:
            if exc.errno != errno.ENOPROTOOPT:  # an older kernel: Closer instead
                sock.close()
                raise
        sock.bind(str(self.path))
        group = -1
        with contextlib.suppress(KeyError):
            group = grp.getgrnam(BROKER_GROUP).gr_gid
        os.chown(self.path, 0, group)
        os.chmod(self.path, 0o660)
        sock.listen(4096)
        self.listener = sock
        return sock

    def start(self) -> None:
        """Serve the clients (those accepted so far and from now on) in a thread."""
        assert self.thread is None
        self.epoll = select.epoll()  # close-on-exec
        self.wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self.epoll.register(self.wake, EPOLLIN)
        with self.lock:
            for fd in self.clients:
                self.epoll.register(fd, EPOLLIN)
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, name="broker", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        """The thread: wait for clients with a request, serve one request of each."""
        assert self.epoll is not None
        poll, lock, clients, woken = self.epoll.poll, self.lock, self.clients, self.wake
        while not self.stopping:
            try:
                ready = poll(-1, EVENTS_PER_WAIT)
            except InterruptedError:
                continue
            for fd, _events in ready:
                if fd == woken:
                    break  # stop: the flag is read again
                with lock:
                    client = clients.get(fd)
                    if client is None:
                        continue  # dropped since (update, close)
                    try:
                        alive = self.readable(client)
                        # The only client (the usual case: one application), asking
                        # again as soon as it has its reply, has often done so by now
                        # when it runs on this CPU (its wake-up preempted this thread):
                        # its next requests are read without a wait in between, a few at
                        # most. With several clients, their requests are left to gather
                        # between waits instead (eager reads of one would turn the
                        # others' batches into one ping-pong: fewer sockets/s).
                        if alive and len(clients) == 1:
                            if client.eager >= 0:
                                for _more in range(EAGER_READS):
                                    self.missed = False
                                    alive = self.readable(client)
                                    if self.missed:
                                        client.eager = -SKIP_AFTER_MISS
                                    if self.missed or not alive:
                                        break
                            else:
                                client.eager += 1
                    except Exception as exc:  # a bug must cost one client, never the broker
                        log.event(logging.ERROR, f"broker: {exc!r}", op="broker")
                        alive = False
                    if not alive:
                        self.drop(client)

    def stop(self) -> None:
        """Stop the thread (the clients stay connected, unserved, until :meth:`close`)."""
        if self.thread is None:
            return
        assert self.epoll is not None
        self.stopping = True
        os.eventfd_write(self.wake, 1)
        self.thread.join()
        self.thread = None
        self.epoll.close()
        self.epoll = None
        os.close(self.wake)
        self.wake = -1

    def close(self) -> None:
        self.stop()
        for client in list(self.clients.values()):
            self.drop(client)
        if self.listener is not None:
            self.close_connection(self.listener)  # its unaccepted ones go with it
            with contextlib.suppress(OSError):
                self.path.unlink()
        for target in self.targets.values():
            target.close()
        self.targets = {}
        self.closer.stop()

    # ------------------------------------------------------------------ the picture

    def update(self, served: dict[str, Served], generation: int) -> None:
        """The daemon's new picture (after every reconcile); subscribers hear what changed
        among the VS they may use (added, changed, removed or no longer theirs)."""
        with self.lock:  # no request is being served with the previous picture
            self._update(served, generation)

    def _update(self, served: dict[str, Served], generation: int) -> None:
        before = self.served
        self.served, self.generation = served, generation
        self.reply_head = _reply_head(generation)
        self._retarget(before)
        # a VS whose Served is the very same object is unchanged for everybody
        touched = [n for n in served.keys() | before.keys() if served.get(n) is not before.get(n)]
        for client in list(self.clients.values()):
            if not client.subscribed or not touched:
                continue
            old = {n: s.describe() for n in touched if (s := before.get(n)) is not None
                   and verdict(client.peer, s.policy) != DENIED}
            new = {n: s.describe() for n in touched if (s := served.get(n)) is not None
                   and verdict(client.peer, s.policy) != DENIED}
            changed = sorted(n for n in new if old.get(n) != new[n])
            removed = sorted(n for n in old if n not in new)
            if not changed and not removed:
                continue
            # a subscriber that does not read its events is dropped like any other client
            # that leaves too much unread
            if self._unread(client) > UNREAD_MAX or not self._send(client, encode({
                "v": VERSION, "event": "changed", "generation": generation,
                "changed": changed, "removed": removed, "servers": [new[n] for n in changed],
            })):
                self.drop(client)

    def _retarget(self, before: dict[str, Served]) -> None:
        """The VS data requests need, for this picture: built again for a VS whose compiled
        state or entry changed, kept for the others; namespace descriptors carried over
        while a name means the same namespace (a reconcile may have made it anew)."""
        previous = self.targets
        unused = dict(previous)
        targets = {}
        for name, served in self.served.items():
            target = previous.get(name)
            known = before.get(name)
            if (target is not None and known is not None and known.desired is served.desired
                    and known.config is served.config):
                target.reopen_if_replaced()
                del unused[name]
            else:
                target = Target.of(served.desired, served.config)
                target.budget = self.spare_budget
                target.open_namespace(previous.get(name))
            targets[name] = target
        self.targets = targets
        for target in unused.values():
            target.close()  # those not handed over

    # ------------------------------------------------------------------ connections

    def accept(self) -> Client | None:
        assert self.listener is not None
        try:
            conn, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return None
        if len(self.clients) >= MAX_CLIENTS:
            self.close_connection(conn)  # one over the limit goes; the next one may fit
            return self.accept() if len(self.clients) < MAX_CLIENTS else None
        conn.setblocking(False)
        # room for a `servers` reply of tens of thousands of VS (the kernel doubles it:
        # vsnetd/client.py's REPLY_MAX receives the largest message it lets through);
        # UNREAD_MAX, not this, bounds what a client may leave unread
        with contextlib.suppress(OSError):
            conn.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, 8 << 20)
        client = Client(conn, peer_of(conn))
        fd = client.fd
        with self.lock:
            self.clients[fd] = client
            if self.epoll is not None:
                self.epoll.register(fd, EPOLLIN)
        return client

    def drop(self, client: Client) -> None:
        """Forget a client and close its connection (with :attr:`lock` held, or no
        thread: its descriptor number may be reused by the next accept)."""
        fd = client.fd
        if self.clients.pop(fd, None) is None:
            return
        if self.epoll is not None:
            with contextlib.suppress(OSError, ValueError):
                self.epoll.unregister(fd)
        self.close_connection(client.conn)

    def close_connection(self, conn: socket.socket) -> None:
        """Close a connection (or the listener); on the closer's thread where messages
        the broker never read may hold descriptors: their last close is then the
        broker's."""
        if self.refuses_rights:
            conn.close()
        else:
            self.closer.close(conn)

    def _unread(self, client: Client) -> int:
        """The bytes (kernel memory) of the messages sent to the client that it has not
        read yet."""
        _ioctl(client.fd, SIOCOUTQ, self.unread)
        return self.unread_bytes[0]

    def readable(self, client: Client) -> bool:
        """Serve one request of the client; False when it is gone (the caller drops it)."""
        try:
            size, ancdata, flags, _ = client.conn.recvmsg_into(
                (self.buffer,), CONTROL_SPACE, RECV_FLAGS)
        except (BlockingIOError, InterruptedError):
            self.missed = True
            return True
        except OSError:
            return False
        started = _perf()
        if ancdata and self._close_passed(ancdata):
            if self._unread(client) > UNREAD_MAX:
                return self._done("?", "dropped", started, False)
            return self._refuse(client, "?", started, BrokerError(
                "bad-request", "the broker takes no file descriptors"))
        if not size:
            return False  # end of file: the client went away
        # A client that sends requests without reading the replies would pin every socket
        # they carry (and their memory) in its receive queue: it is dropped before it gets
        # more. _unread written out: this is the hot path.
        _ioctl(client.fd, SIOCOUTQ, self.unread)
        if self.unread_bytes[0] > UNREAD_MAX:
            return self._done("?", "dropped", started, False)
        if flags & MSG_TRUNC:
            return self._refuse(client, "?", started, BrokerError(
                "too-large", f"a request is at most {MAX_MESSAGE} bytes"))
        try:
            request = parse_request(self.buffer[:size])
        except BrokerError as exc:
            return self._refuse(client, "?", started, exc)
        try:
            if request.op == "listen" or request.op == "socket":
                assert isinstance(request, Request)
                return self._one_socket(client, request, started)
            if isinstance(request, Batch):
                return self._sockets(client, request.requests, started, True)
            client.subscribed |= request.op == "subscribe"
            sent = self._send(client, encode({
                "v": VERSION, "ok": True, "generation": self.generation,
                "servers": [s.describe() for s in self.served.values()
                            if verdict(client.peer, s.policy) != DENIED]}))
            return self._done(request.op, "ok" if sent else "dropped", started, sent)
        except BrokerError as exc:
            return self._refuse(client, request.op, started, exc)

    # ------------------------------------------------------------------ requests

    def _verdict(self, client: Client, name: str) -> int:
        """The caller's verdict for VS ``name``: decided once per connection and
        generation (the peer's credentials and the VS's resolved policy are fixed)."""
        if client.verdicts_generation != self.generation:
            client.verdicts, client.verdicts_generation = {}, self.generation
        allowed = client.verdicts.get(name)
        if allowed is None:
            allowed = client.verdicts[name] = verdict(client.peer, self.served[name].policy)
        return allowed

    def _one_socket(self, client: Client, request: Request, started: int) -> bool:
        """The hottest path: one socket (``socket``, or ``listen`` on one address), the
        same checks as :meth:`_sockets` in the same order, without its generality."""
        name = request.server
        assert name is not None
        target = self.targets.get(name)
        if target is None:
            raise BrokerError("unknown-server", f"no virtual server {name!r}")
        listen = request.op == "listen"
        if not allows(self._verdict(client, name), request.port if listen else 0):
            raise _forbidden(client, name, request.port if listen else 0)
        address = request.address
        if address is None:
            if listen:
                if len(target.addresses) != 1:  # a socket per address: the general path
                    return self._sockets(client, (request,), started, False)
                address = target.addresses[0][0]
            else:
                family = request.family or 4
                address = target.outgoing.get(family)
                if address is None:
                    raise BrokerError("bad-request", f"{name} has no IPv{family} address")
        af = target.families.get(address)
        if af is None:
            raise BrokerError("bad-request", f"{address} is not an address of {name}")
        sock, port = make_socket(target, address, af, request, listen, self.kernel.root_fd)
        head, tail = target.replies[address][request.proto]
        try:  # _send, written out
            client.conn.sendmsg((b"%b%b%d%b" % (self.reply_head, head, port, tail),),
                                ((SOL_SOCKET, SCM_RIGHTS, _FD.pack(sock.fileno())),),
                                SEND_FLAGS)
            sent = True
        except OSError as exc:
            if exc.errno not in DROPPED_ERRNOS:
                raise
            sent = False
        finally:
            sock.close()  # the client has its own copy (or is gone)
        if self.observe is not None:  # _done, written out
            self.observe(request.op, "ok" if sent else "dropped", _perf() - started)
        return sent

    def _sockets(self, client: Client, requests: tuple[Request, ...], started: int,
                 batch: bool) -> bool:
        """``listen``/``socket`` (one request) or ``batch``: every socket made or none."""
        op = "batch" if batch else requests[0].op
        # every socket to make: (target, address, family, request, listen, item)
        plan: list[tuple[Target, str, int, Request, bool, int]] = []
        for item, request in enumerate(requests):
            where = f"requests[{item}]: " if batch else ""
            name = request.server
            assert name is not None
            target = self.targets.get(name)
            if target is None:
                raise BrokerError("unknown-server", f"{where}no virtual server {name!r}")
            listen = request.op == "listen"
            if not allows(self._verdict(client, name), request.port if listen else 0):
                raise _forbidden(client, name, request.port if listen else 0, where)
            address = request.address
            if listen:
                if address is None:
                    plan.extend((target, a, af, request, True, item)
                                for a, af in target.addresses)
                    continue
            elif address is None:
                family = request.family or 4
                address = target.outgoing.get(family)
                if address is None:
                    raise BrokerError("bad-request",
                                      f"{where}{name} has no IPv{family} address")
            for known, af in target.addresses:
                if known == address:
                    plan.append((target, address, af, request, listen, item))
                    break
            else:
                raise BrokerError("bad-request",
                                  f"{where}{address} is not an address of {name}")
        if batch and len(plan) > MAX_FDS:
            raise BrokerError("bad-request", f"a batch yields at most {MAX_FDS} sockets "
                                             f"(one message); this one {len(plan)}")
        home = self.kernel.root_fd
        made: list[_socket] = []
        metas: list[str] = []
        try:
            for target, address, af, request, listen, item in plan:
                try:
                    sock, port = make_socket(target, address, af, request, listen, home)
                except BrokerError as exc:
                    if batch:
                        exc.message = f"requests[{item}]: {exc.message}"
                    raise
                made.append(sock)
                metas.append(f"{target.heads[address]}{port}"
                             f"{target.tails[address][request.proto]}"
                             + (f',"request":{item}}}' if batch else "}"))
            sent = self._send_sockets(client, made, metas)
            return self._done(op, "ok" if sent else "dropped", started, sent)
        finally:
            for sock in made:
                sock.close()  # the client has its own copies (or is gone)

    def _send_sockets(self, client: Client, made: list[_socket], metas: list[str]
                      ) -> bool:
        count = len(made)
        parts = (count + MAX_FDS - 1) // MAX_FDS or 1
        head = self.reply_head.decode()
        for number in range(parts):
            first, last = number * MAX_FDS, min(count, (number + 1) * MAX_FDS)
            data = f'{head}{",".join(metas[first:last])}],"part":{number + 1},"parts":{parts}}}'
            fds = struct.pack(f"{last - first}i", *(s.fileno() for s in made[first:last]))
            if not self._send(client, data.encode(), fds):
                return False
        return True

    def _close_passed(self, ancdata: list[tuple[int, int, bytes]]) -> int:
        """Have the descriptors a client passed closed (the broker takes none; only a
        kernel without SO_PASSRIGHTS lets them through) on the closer's thread; how many
        there were."""
        count = 0
        for level, kind, payload in ancdata:
            if level == SOL_SOCKET and kind == SCM_RIGHTS:
                usable = len(payload) - len(payload) % 4
                for fd in struct.unpack(f"{usable // 4}i", payload[:usable]):
                    self.closer.close(fd)
                    count += 1
        return count

    def _refuse(self, client: Client, op: str, started: int, error: BrokerError) -> bool:
        sent = self._send(client, error.encoded())
        return self._done(op, error.code if sent else "dropped", started, sent)

    def _done(self, op: str, result: str, started: int, alive: bool) -> bool:
        """Every request ends here: its op ("?" when unreadable), its result ("ok", an
        error code, "dropped") and its service time are known."""
        if self.observe is not None:
            self.observe(op, result, _perf() - started)
        return alive

    def _send(self, client: Client, data: bytes, fds: bytes = b"") -> bool:
        """Send one message; a client that cannot take it now (slow, stuck, gone) is
        dropped: the daemon never waits for anyone."""
        try:
            client.conn.sendmsg((data,), ((SOL_SOCKET, SCM_RIGHTS, fds),) if fds else (),
                                SEND_FLAGS)
        except OSError as exc:
            if exc.errno not in DROPPED_ERRNOS:
                raise
            return False
        return True


_FD = struct.Struct("i")


def _forbidden(client: Client, name: str, port: int, where: str = "") -> BrokerError:
    return BrokerError("forbidden", f"{where}uid {client.peer.uid} may not use {name!r}"
                       + (f" port {port}" if 0 < port < PRIVILEGED_PORTS else ""))
