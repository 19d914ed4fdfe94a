"""vsnet-exec: run an unmodified program in a VS, its sockets handed over the systemd way.

    vsnet-exec --server nas1 --listen tcp:8080 [--listen udp:53 ...] [--join] -- PROGRAM ARGS

The sockets come from the broker, are placed at fd 3, 4, ... and announced with
``LISTEN_FDS``, ``LISTEN_PID`` (the program's own pid: exec keeps it) and
``LISTEN_FDNAMES`` (``tcp-8080``...), as systemd socket activation does: gunicorn, nginx
and anything built on sd_listen_fds(3) take them as they are. Without ``--listen`` it
passes no socket and leaves the ``LISTEN_*`` variables as it found them (inside a
socket-activated unit: the unit's own sockets, at the same fds and pid after exec).
``--join`` also enters the VS's network namespace (netns mode; needs CAP_SYS_ADMIN), so
the program's outgoing connections stay inside the VS. In pbr mode with confinement on,
the program runs in the VS's cgroup (with or without ``--listen``): every socket it and
its children create carries the VS mark and may bind, or send UDP from, only the VS's
addresses (needs root to enter it).
"""

from __future__ import annotations

import argparse
import fcntl
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vsnetd import __version__
from vsnetd.broker import BROKER_PATH
from vsnetd.client import Broker, BrokerRefused
from vsnetd.kinds import confinement
from vsnetd.syscalls import CLONE_NEWNET, setns

SD_LISTEN_FDS_START = 3


def _listen_spec(text: str) -> tuple[str, int]:
    proto, _, port = text.partition(":")
    if proto not in ("tcp", "udp") or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r}: expected tcp:PORT or udp:PORT")
    return proto, int(port)


def confine(cgroup: str) -> str | None:
    """Move this process into the VS's cgroup (exec keeps it there, children are born
    there); what is missing if it cannot."""
    try:
        confinement.enter(cgroup)
    except FileNotFoundError:
        mount = confinement.cgroup2_mount()
        if mount is None:
            return "cgroup v2 is not mounted"
        refused = confinement.probe_bpf() if os.geteuid() == 0 else None  # only root may load
        return refused or f"{mount / cgroup} does not exist (vsnetctl status says why)"
    except PermissionError:
        return (f"entering cgroup {cgroup} needs root (or a unit with "
                f"BPFProgram=, see README)")
    except OSError as exc:
        return f"entering cgroup {cgroup}: {exc.strerror or exc}"
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vsnet-exec", description="Run a program in a virtual server with sockets "
        "from the vsnet broker (LISTEN_FDS, as systemd socket activation).")
    parser.add_argument("--server", required=True, help="the virtual server")
    parser.add_argument("--listen", type=_listen_spec, action="append", default=[],
                        metavar="PROTO:PORT", help="tcp:PORT or udp:PORT (repeatable)")
    parser.add_argument("--address", help="only this VS address (default: all of them)")
    parser.add_argument("--join", action="store_true",
                        help="also enter the VS's network namespace (netns mode)")
    parser.add_argument("--broker", type=Path, default=BROKER_PATH, help="broker socket")
    parser.add_argument("--version", action="version", version=f"vsnet-exec {__version__}",
                        help="print the version and exit")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- PROGRAM ARGS...")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no program to run (put it after --)")

    names: list[str] = []
    fds: list[int] = []
    namespace = ""
    server: dict[str, Any] | None = None
    try:
        broker = Broker(args.broker)
    except OSError as exc:  # no daemon, or not allowed to connect
        print(f"vsnet-exec: cannot reach the broker at {args.broker}: {exc.strerror or exc} "
              "(is vsnetd running? a caller other than root must be in the vsnet group)",
              file=sys.stderr)
        return 1
    try:
        with broker:
            for proto, port in args.listen:
                fields = {"op": "listen", "server": args.server, "proto": proto, "port": port}
                if args.address:
                    fields["address"] = args.address
                reply, sockets = broker.request(**fields)
                for sock, meta in zip(sockets, reply["sockets"], strict=True):
                    fds.append(sock.detach())
                    names.append(f"{proto}-{port}")
                    namespace = meta.get("namespace", "") or namespace
            reply, _ = broker.request(op="servers")
            server = next((s for s in reply["servers"] if s["server"] == args.server), None)
    except (BrokerRefused, OSError) as exc:
        print(f"vsnet-exec: {exc}", file=sys.stderr)
        return 1
    if server is None:
        print(f"vsnet-exec: no virtual server {args.server!r} (or not one you may use)",
              file=sys.stderr)
        return 1
    namespace = namespace or server["namespace"]

    if args.join:
        if not namespace:
            print(f"vsnet-exec: --join: {args.server} has no namespace (pbr mode)",
                  file=sys.stderr)
            return 1
        fd = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
        setns(fd, CLONE_NEWNET)
        os.close(fd)

    # fds at 3, 4, ...: first move them all above that range, then into place
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD, SD_LISTEN_FDS_START + len(fds)) for fd in fds]
    for fd in fds:
        os.close(fd)
    for index, fd in enumerate(moved):
        target = SD_LISTEN_FDS_START + index
        os.dup2(fd, target, inheritable=True)
        if fd != target:
            os.close(fd)
    env = dict(os.environ)
    if moved:  # else the environment's, if any, announce the fds this process was given
        env.update(LISTEN_FDS=str(len(moved)), LISTEN_PID=str(os.getpid()),
                   LISTEN_FDNAMES=":".join(names))
    if server["mode"] == "pbr" and server.get("cgroup"):  # "": confinement is off
        missing = confine(server["cgroup"])
        if missing:
            print(f"vsnet-exec: warning: {args.server}: not confined, {missing}; the "
                  f"program's own sockets are neither marked nor limited to its addresses",
                  file=sys.stderr)
    try:
        os.execvpe(command[0], command, env)
    except OSError as exc:
        print(f"vsnet-exec: {command[0]}: {exc.strerror}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main())
