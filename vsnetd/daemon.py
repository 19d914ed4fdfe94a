"""vsnetd: keeps the kernel converged to ``servers.yaml``, in the foreground, as systemd expects.

One thread runs everything through one ``select`` loop, and every path ends in the same
pipeline (:class:`vsnetd.reconcile.Reconciler`):

* the config file changes (watched with watchfiles, a few ms of debounce), SIGHUP or
  ``vsnetctl reload``: load it; an invalid file is refused whole and the last good config
  stays applied; a valid one is converged, only the VS that changed;
* netlink notifications from the root namespace and every managed one keep the observed
  state current; the VS a change concerns are converged again (self-heal); vsnet's own
  changes come back as notifications that change nothing;
* lost notifications (ENOBUFS), changes the kernel makes without a word, failed VS (with
  backoff) and the periodic resync: a full run, observing everything;
* SIGTERM stops the daemon and leaves the kernel as it is (the application keeps serving;
  ``vsnetctl teardown`` is the way to remove everything).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import selectors
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vsnetd import control, log, metrics
from vsnetd.broker import BROKER_PATH, Broker, Client, Served
from vsnetd.compile import compile_config
from vsnetd.config import DEFAULT_CONFIG_PATH, Config, ConfigError, ConfigIssue, ConfigLoader
from vsnetd.diff import Affected
from vsnetd.kernel import ROOT, Kernel
from vsnetd.kinds import KernelObject, Namespace, namespace
from vsnetd.netlink import Overrun, RtnlMonitor
from vsnetd.observe import NotificationFeed
from vsnetd.reconcile import ConvergeResult, Reconciler, gc_paused
from vsnetd.state import ACTION_SIGNS, DesiredState, Plan
from vsnetd.status import server_status, summary
from vsnetd.syscalls import entered_netns

DEFAULT_RESYNC_SECONDS = 60.0
WATCH_DEBOUNCE_MS = 10  # watchfiles' default is 1,600 ms: edits must reach the kernel in ms
# The watcher yields a change after two quiet steps (~10 ms); each step wakes a thread:
# 5 ms keeps an idle daemon near 0.4 % CPU (2 ms: ~1.4 %).
WATCH_STEP_MS = 5
MAX_BACKOFF_SECONDS = 60.0


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except OSError:
        return None


def notify(state: str) -> None:
    """sd_notify(3), through systemd-python; nothing when not started by systemd."""
    if "NOTIFY_SOCKET" not in os.environ:
        return
    from systemd import daemon as sd  # type: ignore[attr-defined]

    for _attempt in range(3):
        try:
            sd.notify(state)
            return
        except InterruptedError:
            continue
        except OSError as exc:  # the service manager went away: not a reason to stop
            log.event(logging.DEBUG, f"sd_notify failed: {exc}", op="notify")
            return


def watchdog_interval() -> float | None:
    """Half the watchdog timeout systemd asked for, or None."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and int(pid) != os.getpid()):
        return None
    return int(usec) / 2_000_000


class Daemon:
    def __init__(self, config_path: Path, resync_seconds: float, control_path: Path,
                 broker_path: Path) -> None:
        self.config_path = config_path.absolute()
        self.resync_seconds = resync_seconds
        self.control_path = control_path
        self.kernel = Kernel()
        metrics.enable()
        self.reconciler = Reconciler(self.kernel)
        self.selector = selectors.DefaultSelector()
        self.broker = Broker(self.kernel, broker_path)
        self.broker.unregister = self.selector.unregister
        self.config: Config | None = None
        self.loader = ConfigLoader(self.config_path)  # reads again only what changed
        self.affected: Affected | None = None
        self.monitors: dict[str, RtnlMonitor] = {}
        self.monitor_inodes: dict[str, int | None] = {}
        self.desired: DesiredState | None = None
        self.config_issues: list[ConfigIssue] = []
        self.generation = 0
        self.last: dict[str, Any] = {}
        self.stopping = False
        self.reload_wanted = False
        self.namespaces_touched = False
        self.full_wanted = False
        self.changed: list[KernelObject] = []
        now = time.monotonic()
        self.next_resync = now + resync_seconds
        self.retry_at: float | None = None
        self.backoff = 1.0
        self.watchdog = watchdog_interval()
        self.next_watchdog = now
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.watch_stop = threading.Event()

    # ------------------------------------------------------------------ life cycle

    def run(self) -> int:
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGHUP, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self.selector.register(self.wake_r, selectors.EVENT_READ, self._on_wake)
        watcher = threading.Thread(target=self._watch, name="config-watch", daemon=True)
        watcher.start()
        # subscribe before the first look, so nothing between the two goes unseen
        self._open_monitor(ROOT)
        self._load()
        if self.desired is not None:
            self._converge(full=True, why="start")
        listener = control.listen(self.control_path)
        self.selector.register(listener, selectors.EVENT_READ, lambda: self._accept(listener))
        self.selector.register(self.broker.open(), selectors.EVENT_READ, self._broker_accept)
        self._publish()
        log.event(logging.INFO, f"started: {self.config_path}, control {self.control_path}",
                  op="start")
        notify(f"READY=1\nSTATUS={self._status_line()}")
        try:
            while not self.stopping:
                try:
                    self._loop_once()
                except Exception as exc:  # a bad moment must not stop vsnet
                    # e.g. a netlink dump failing under memory pressure: log, look at the
                    # whole kernel again after the usual backoff
                    log.event(logging.ERROR, f"reconcile failed: {exc!r}", op="error")
                    self.reconciler.observed = None
                    self.retry_at = time.monotonic() + self.backoff
                    self.backoff = min(self.backoff * 2, MAX_BACKOFF_SECONDS)
        finally:
            notify("STOPPING=1")
            log.event(logging.INFO, "stopping; the kernel state stays as it is", op="stop")
            self.watch_stop.set()
            listener.close()
            with contextlib.suppress(OSError):
                self.control_path.unlink()
            self.broker.close()
            for monitor in self.monitors.values():
                monitor.close()
            self.kernel.close()
        return 0

    def _loop_once(self) -> None:
        now = time.monotonic()
        deadlines = [self.next_resync]
        if self.retry_at is not None:
            deadlines.append(self.retry_at)
        if self.watchdog is not None:
            deadlines.append(self.next_watchdog)
        for key, _mask in self.selector.select(max(0.0, min(deadlines) - now)):
            callback: Callable[[], None] = key.data
            callback()
        if self.stopping:
            return
        if self.reload_wanted:
            self.reload_wanted = False
            self._reload()
        if self.namespaces_touched:
            self.namespaces_touched = False
            self._check_namespaces()
        now = time.monotonic()
        if self.desired is not None:
            if self.full_wanted or now >= self.next_resync or (
                self.retry_at is not None and now >= self.retry_at
            ):
                why = "resync" if now >= self.next_resync else (
                    "retry" if self.retry_at is not None and now >= self.retry_at else "lost track")
                self._converge(full=True, why=why)
            elif self.changed:
                self._heal()
        else:
            self.changed.clear()
            self.full_wanted = False
            self.next_resync = now + self.resync_seconds
        if self.watchdog is not None and now >= self.next_watchdog:
            notify("WATCHDOG=1")
            self.next_watchdog = now + self.watchdog

    # ------------------------------------------------------------------ events

    def _on_signal(self, signum: int, _frame: object) -> None:
        if signum == signal.SIGHUP:
            self.reload_wanted = True
        else:
            self.stopping = True

    def _on_wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self.wake_r, 4096):
                pass

    def _watch(self) -> None:
        """Thread: wake the loop when the config file is written, renamed over or removed
        (editors save by rename: the directory is watched), or when a namespace goes
        from /run/netns (``ip netns del`` sends no netlink notification)."""
        import watchfiles

        namespace.NETNS_DIR.mkdir(parents=True, exist_ok=True)
        for changes in watchfiles.watch(
            self.config_path.parent, namespace.NETNS_DIR, debounce=WATCH_DEBOUNCE_MS,
            step=WATCH_STEP_MS, stop_event=self.watch_stop, recursive=False,
            raise_interrupt=False, watch_filter=None,
        ):
            paths = {Path(path) for _change, path in changes}
            if self.config_path in paths:
                self.reload_wanted = True
            if any(path.parent == namespace.NETNS_DIR for path in paths):
                self.namespaces_touched = True
            with contextlib.suppress(BlockingIOError):
                os.write(self.wake_w, b"w")

    def _check_namespaces(self) -> None:
        """A namespace of vsnet's unmounted or replaced by hand: look at everything again."""
        for netns, inode in self.monitor_inodes.items():
            if netns != ROOT and _inode(namespace.NETNS_DIR / netns) != inode:
                self.full_wanted = True

    def _open_monitor(self, netns: str) -> None:
        if netns == ROOT:
            monitor = RtnlMonitor()
            inode = None
        else:
            fd = self.kernel.netns_fd(netns)
            with entered_netns(fd):
                monitor = RtnlMonitor()
            inode = os.fstat(fd).st_ino
        self.monitors[netns] = monitor
        self.monitor_inodes[netns] = inode
        self.selector.register(monitor, selectors.EVENT_READ,
                               lambda: self._on_notifications(netns))

    def _close_monitor(self, netns: str) -> None:
        self.monitor_inodes.pop(netns, None)
        monitor = self.monitors.pop(netns)
        self.selector.unregister(monitor)
        monitor.close()

    def _sync_monitors(self) -> None:
        """One monitor per namespace vsnet manages; none kept for one it removed (an open
        socket would keep the namespace, and its devices, alive)."""
        observed = self.reconciler.observed
        wanted = {ROOT} | ({obj.name for obj in observed.owned.values()
                            if isinstance(obj, Namespace)} if observed else set())
        for netns in set(self.monitors) - {ROOT}:
            if netns not in wanted or _inode(namespace.NETNS_DIR / netns) != (
                self.monitor_inodes.get(netns)
            ):
                self._close_monitor(netns)  # gone, or the name now means another namespace
        for netns in wanted - set(self.monitors):
            try:
                self._open_monitor(netns)
            except OSError:
                self.full_wanted = True

    def _on_notifications(self, netns: str) -> None:
        monitor = self.monitors[netns]
        observed, desired = self.reconciler.observed, self.desired
        if observed is None or desired is None:
            monitor.read(lambda *_: None)
            self.full_wanted = desired is not None
            return
        feed = NotificationFeed(observed, desired.scope, netns)
        try:
            monitor.read(feed)
        except Overrun:
            log.event(logging.WARNING, "netlink notifications were lost: full resync",
                      op="resync")
            self.full_wanted = True
        self.changed.extend(feed.changed)
        self.full_wanted |= feed.needs_full

    def _drain_monitors(self) -> None:
        for monitor in self.monitors.values():
            with contextlib.suppress(Overrun):
                monitor.read(lambda *_: None)
        self.changed.clear()

    # ------------------------------------------------------------------ work

    def _load(self) -> bool:
        try:
            config = self.loader.load()
        except ConfigError as exc:
            metrics.config_refused()
            self.config_issues = exc.issues
            for issue in exc.issues:
                log.event(logging.ERROR, f"config refused, last good config stays: {issue}",
                          op="reload")
            return False
        self.config_issues = []
        previous = (self.config, self.desired) if self.config and self.desired else None
        self.config = config
        self.desired = compile_config(config, previous)
        self.affected = None  # built by the first heal: not on the way of an edit
        self.generation += 1
        return True

    def _reload(self) -> None:
        with gc_paused():  # parsing and compiling 1,000 VS: no collector passes meanwhile
            self._reload_now()

    def _reload_now(self) -> None:
        notify(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
        previous = self.desired
        if self._load():
            full = previous is None or self.reconciler.observed is None
            self._converge(full=full, why=f"reload (generation {self.generation})")
        notify(f"READY=1\nSTATUS={self._status_line()}")

    def _converge(self, *, full: bool, why: str) -> None:
        assert self.desired is not None
        if full:
            self._drain_monitors()
        result = self.reconciler.converge(self.desired, full=full)
        self._after(result, why)
        if full:
            self.next_resync = time.monotonic() + self.resync_seconds
            self.full_wanted = False
            gc.freeze()  # what a full run leaves is kept for long: spare the collector it

    def _heal(self) -> None:
        assert self.desired is not None
        if self.affected is None:
            self.affected = Affected(self.desired)
        changed, self.changed = self.changed, []
        names = self.affected(changed)
        if names:
            self._after(self.reconciler.heal(names), "heal")

    def _after(self, result: ConvergeResult, why: str) -> None:
        self._sync_monitors()
        metrics.reconciled(result, why, self.reconciler.verdicts, self.config_path)
        per_server: dict[str, int] = {}
        for change in result.applied:
            name = change.server or "(removed)"
            per_server[name] = per_server.get(name, 0) + 1
            log.event(logging.DEBUG, f"{ACTION_SIGNS[change.action]} {change.obj.describe()}",
                      server=change.server, op=change.action, obj=change.obj.describe())
        for name, count in sorted(per_server.items()):
            log.event(logging.INFO, f"{why}: {count} change(s) applied", server=name, op=why)
        for name, reason in result.failures.items():
            log.event(logging.ERROR, f"{why}: failed: {reason}", server=name, op=why)
        if result.failures:
            self.retry_at = time.monotonic() + self.backoff
            self.backoff = min(self.backoff * 2, MAX_BACKOFF_SECONDS)
        else:
            self.retry_at = None
            self.backoff = 1.0
        self._publish()
        if why == "heal" and not result.applied and not result.failures:
            return  # the echo of vsnet's own changes: nothing happened
        self.last = {
            "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "seconds": round(result.seconds, 6),
            "why": why,
            "changes": len(result.applied),
        }
        if result.applied or result.failures:
            notify(f"STATUS={self._status_line()}")

    # ------------------------------------------------------------------ broker

    def _publish(self) -> None:
        """Hand the broker the VS as they now stand."""
        if self.desired is None or self.config is None:
            return
        verdicts = self.reconciler.verdicts
        current = self.broker.served if self.broker.generation == self.generation else {}
        served = {}
        for name, server in self.desired.servers.items():
            state = verdicts[name].state if name in verdicts else "pending"
            known = current.get(name)
            # names are resolved (getpwnam...) once per config generation, not per heal
            served[name] = (Served(server, self.config.servers[name], state, known.access)
                            if known is not None else
                            Served(server, self.config.servers[name], state))
        self.broker.update(served, self.generation)

    def _broker_accept(self) -> None:
        while (client := self.broker.accept()) is not None:  # all who are waiting
            self.selector.register(client.conn, selectors.EVENT_READ,
                                   lambda client=client: self._broker_read(client))

    def _broker_read(self, client: Client) -> None:
        try:
            alive = self.broker.readable(client)
        except Exception as exc:  # a bug must cost one client, never the daemon
            log.event(logging.ERROR, f"broker: {exc!r}", op="broker")
            alive = False
        if not alive:
            self.broker.drop(client)

    # ------------------------------------------------------------------ control

    def _status_line(self) -> str:
        line = summary(self.reconciler.verdicts, self.last.get("seconds"))
        if self.config_issues:
            line = f"config refused ({self.config_issues[0]}); " + line
        return line

    def status(self) -> dict[str, Any]:
        servers = (server_status(self.desired, self.reconciler.verdicts, Plan((), {}))
                   if self.desired is not None else {})
        return {
            "ok": True,
            "daemon": {
                "pid": os.getpid(),
                "config": str(self.config_path),
                "generation": self.generation,
                "config_errors": [issue.as_json() for issue in self.config_issues],
                "last_reconcile": self.last,
                "status": self._status_line(),
            },
            "servers": servers,
        }

    def _accept(self, listener: socket.socket) -> None:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return
        with conn:
            conn.settimeout(2.0)
            try:
                reply = self._answer(conn)
                conn.sendall(control.dumps(reply))
            except OSError:
                return  # the client went away or stalled: its problem, not the daemon's

    def _answer(self, conn: socket.socket) -> dict[str, Any]:
        if control.peer_uid(conn) != 0:
            return {"ok": False, "error": "forbidden: the control socket is for root"}
        try:
            op = control.parse(control.read_line(conn))
        except ValueError as exc:
            return {"ok": False, "error": str(exc)}
        if op == "status":
            return self.status()
        if op == "reload":
            self._reload()
            reply = self.status()
            reply["ok"] = not self.config_issues
            return reply
        if op == "metrics":
            return {"ok": True, "metrics": metrics.exposition()}
        return {"ok": False, "error": f"unknown op {op!r} (status, reload, metrics)"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vsnetd", description="Keep the kernel converged to "
                                     "the vsnet config (runs in the foreground).")
    parser.add_argument("-c", "--config", type=Path, default=DEFAULT_CONFIG_PATH,
                        help=f"config file (default {DEFAULT_CONFIG_PATH})")
    parser.add_argument("--resync-interval", type=float, default=DEFAULT_RESYNC_SECONDS,
                        metavar="SECONDS", help="full resync period (default 60)")
    parser.add_argument("--control", type=Path, default=control.CONTROL_PATH,
                        help=f"control socket (default {control.CONTROL_PATH})")
    parser.add_argument("--broker", type=Path, default=BROKER_PATH,
                        help=f"broker socket (default {BROKER_PATH})")
    parser.add_argument("--mount-ns", metavar="PATH",
                        help="mount namespace to mount network namespaces in (the unit "
                             "file passes /proc/1/ns/mnt); default: vsnetd's own")
    parser.add_argument("--metrics-listen", metavar="ADDR:PORT",
                        help="serve Prometheus metrics over HTTP there, e.g. 127.0.0.1:9586 "
                             "(default: none; `vsnetctl metrics` works regardless)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every change")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    log.setup(args.verbose)
    namespace.use_mount_namespace(args.mount_ns)
    if args.metrics_listen:
        try:
            metrics.serve(args.metrics_listen)
        except (ValueError, OSError) as exc:
            parser.error(f"--metrics-listen: {exc}")
    try:
        daemon = Daemon(args.config, args.resync_interval, args.control, args.broker)
    except PermissionError as exc:
        print(f"vsnetd: {exc.strerror or exc}: run as root (CAP_NET_ADMIN)", file=sys.stderr)
        return 1
    return daemon.run()


if __name__ == "__main__":
    sys.exit(main())
