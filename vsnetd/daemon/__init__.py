"""vsnetd: keeps the kernel converged to ``servers.yaml``, in the foreground, as systemd expects.

A thin driver split by concern; every path ends in the same pipeline
(:class:`vsnetd.reconcile.Reconciler`, which also owns the schedule: dirty VS, per-VS
retry with a capped backoff, periodic resync):

* :mod:`vsnetd.daemon.watch`: the config reader thread. inotify says which file of
  ``servers.yaml`` and ``servers.d/`` was written, renamed over or removed; that file alone
  is read and compiled (SIGHUP and ``vsnetctl reload`` read them all). An invalid config
  is refused whole and the last good one stays applied; a valid one is converged at once,
  only the VS that changed;
* :mod:`vsnetd.daemon.monitors`: netlink notifications from the root namespace and every
  managed one keep the observed state current; the VS a change concerns are converged
  again (self-heal); lost notifications (ENOBUFS) ask for a full run;
* :mod:`vsnetd.daemon.control_server`: ``vsnetctl status`` and ``reload``;
* this module: the one ``select`` loop of the main thread, the broker's admission
  (clients only while a reserve of descriptors remains; the clients admitted are served
  by the broker's own thread, :mod:`vsnetd.broker.server`), systemd's notify protocol.

SIGTERM stops the daemon and leaves the kernel as it is (the application keeps serving;
``vsnetctl teardown`` is the way to remove everything).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import gc
import logging
import os
import resource
import selectors
import signal
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vsnetd import __version__, activation, control, log, metrics
from vsnetd.broker import BROKER_PATH
from vsnetd.broker.server import MAX_CLIENTS, Broker, Served
from vsnetd.config import DEFAULT_CONFIG_PATH, Config, ConfigIssue
from vsnetd.daemon.control_server import ControlServer
from vsnetd.daemon.monitors import Monitors
from vsnetd.daemon.watch import ConfigReader, Loaded
from vsnetd.kernel import ROOT, Kernel
from vsnetd.kinds import namespace
from vsnetd.neighbours import Announcer, announce_servers
from vsnetd.observe import recheck
from vsnetd.reconcile import ConvergeResult, Reconciler, Schedule, gc_paused
from vsnetd.state import ACTION_SIGNS, DesiredState, ObservedState, Plan, ServerVerdict
from vsnetd.status import server_status, summary

DEFAULT_RESYNC_SECONDS = 60.0
# Descriptors the broker leaves free for reconciling (netlink sockets, namespace files,
# the control socket, config files): a broker full of clients must not stop healing.
FD_RESERVE = 128
ACCEPT_PAUSE_SECONDS = 0.2  # no descriptor to accept with: wait instead of spinning
# BPF attachments send no notifications: how often the confinement of each pbr VS is
# looked at again (a detached or unpinned program is healed within this), at least 20
# times the last look's duration apart (0.04-0.1 ms per VS here: at most 5 % of a CPU)
CONFINEMENT_CHECK_SECONDS = 2.0
CONFINEMENT_CHECK_SPACING = 20


def notify(state: str) -> None:
    """sd_notify(3), through systemd-python; nothing when not started by systemd."""
    if "NOTIFY_SOCKET" not in os.environ:
        return
    from systemd import daemon as sd  # type: ignore[attr-defined]

    state = log.printable(state)  # a config error may name a file whose name is no UTF-8
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


def raise_fd_limit() -> int:
    """The soft RLIMIT_NOFILE raised to the hard one (a container's 1024 is the soft
    default); the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class Daemon:
    def __init__(self, config_path: Path, resync_seconds: float, control_path: Path,
                 broker_path: Path) -> None:
        self.config_path = config_path.absolute()
        self.fd_limit = raise_fd_limit()
        self.kernel = Kernel()
        now = time.monotonic()
        self.reconciler = Reconciler(self.kernel, Schedule(resync_seconds, now))
        self.schedule = self.reconciler.schedule
        self.selector = selectors.DefaultSelector()
        self.monitors = Monitors(self.reconciler, self.selector)
        metrics.enable()
        self.broker = Broker(self.kernel, broker_path)
        self.broker.observe = metrics.broker_served
        self.broker_paused_until: float | None = None
        self.broker_refused = 0
        self.control = ControlServer(control_path, self.selector, {
            "status": lambda _request: self.status(),
            "reload": self._reload_request,
            "metrics": lambda _request: {"ok": True, "metrics": self._exposition()},
            **{op: self._activation for op in ("activate", "deactivate", "is-active")},
        })
        self.reader = ConfigReader(self.config_path, namespace.NETNS_DIR,
                                   self._namespaces_touched)
        self.config: Config | None = None
        self.desired: DesiredState | None = None
        # placement cluster (vsnetd/activation.py): every VS compiled, the active ones desired
        self.compiled: DesiredState | None = None
        self.active = activation.read_active()
        self.announcer = Announcer()
        self.config_issues: list[ConfigIssue] = []
        self.generation = 0
        self.resolve_names = True
        self.last: dict[str, Any] = {}
        self.stopping = False
        self.namespaces_touched = False
        self.reload_token = 0
        self.waiting_reloads: dict[int, Any] = {}  # token -> control connection
        self.hangup = False  # SIGHUP seen: the loop asks the reader for a full read
        self.status_sent: str | None = None  # the last STATUS= line systemd was given
        self.verdicts_shown: dict[str, ServerVerdict] | None = None  # what it was made of
        self.watchdog = watchdog_interval()
        self.next_watchdog = now
        self.next_confinement_check = now + CONFINEMENT_CHECK_SECONDS
        self.confinement_seen: dict[Any, tuple[Any, ...]] = {}
        self.confinement_errors: dict[str, str] = {}  # VS -> the error its check last met
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    # ------------------------------------------------------------------ life cycle

    def run(self) -> int:
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGHUP, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self.selector.register(self.wake_r, selectors.EVENT_READ, self._on_wake)
        self.selector.register(self.reader.wake, selectors.EVENT_READ, self._on_loaded)
        # subscribe before the first look, so nothing between the two goes unseen
        self.monitors.open(ROOT)
        try:
            self.config_loaded(self.reader.load_now(), why="start")
        except Exception as exc:  # e.g. the first look refused: retried like any run
            self._loop_error(exc)
        # the config and kernel state of the start are kept for long: spare the collector
        # them (an unfrozen full collection of 1,000 VS paused edits by 40-90 ms)
        gc.freeze()
        self.reader.start()
        self.control.open()
        self.selector.register(self.broker.open(), selectors.EVENT_READ, self._broker_accept)
        self.broker.start()
        self._publish()
        log.event(logging.INFO, f"started: {self.config_path}, control {self.control.path}, "
                  f"{self.fd_limit} descriptors", op="start")
        notify(f"READY=1\nSTATUS={self._shown_status()}")
        try:
            while not self.stopping:
                try:
                    self._loop_once()
                except Exception as exc:  # a bad moment must not stop vsnet
                    self._loop_error(exc)
        finally:
            notify("STOPPING=1")
            log.event(logging.INFO, "stopping; the kernel state stays as it is", op="stop")
            self.reader.stop()
            self.control.close()
            self.broker.close()
            self.monitors.close()
            self.reader.close()
            self.kernel.close()
        return 0

    def _loop_error(self, exc: Exception) -> None:
        log.event(logging.ERROR, f"daemon loop: {exc!r}", op="error")
        # notifications it had read (e.g. before a MemoryError) are gone
        self.schedule.lost_track(f"error: {exc!r}", time.monotonic())

    def _loop_once(self) -> None:
        deadlines = [self.schedule.deadline() if self.reconciler.desired is not None
                     else time.monotonic() + 3600]
        for extra in (self.control.deadline(), self.broker_paused_until,
                      self.next_watchdog if self.watchdog is not None else None,
                      self.next_confinement_check):
            if extra is not None:
                deadlines.append(extra)
        timeout = max(0.0, min(deadlines) - time.monotonic())
        for key, _mask in self.selector.select(timeout):
            callback: Callable[[], None] = key.data
            callback()
        if self.stopping:
            return
        if self.hangup:
            self.hangup = False
            self.reload_token += 1
            self.reader.request(self.reload_token)
        now = time.monotonic()
        self.control.tick(now)
        self._broker_resume(now)
        if self.namespaces_touched:
            self.namespaces_touched = False
            self.monitors.check_namespaces()
        if now >= self.next_confinement_check:
            self._check_confinement()
        self.heal(now)
        if self.watchdog is not None and now >= self.next_watchdog:
            notify("WATCHDOG=1")
            self.next_watchdog = now + self.watchdog

    # ------------------------------------------------------------------ events

    def _on_signal(self, signum: int, _frame: object) -> None:
        # only flags: the handler runs between any two bytecodes of the loop, which may
        # hold a lock the reader's request takes (the wakeup fd ends the loop's select)
        if signum == signal.SIGHUP:
            self.hangup = True
        else:
            self.stopping = True

    def _on_wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self.wake_r, 4096):
                pass

    def _namespaces_touched(self) -> None:
        """From the reader thread: something left or entered /run/netns (``ip netns del``
        sends no netlink notification)."""
        self.namespaces_touched = True

    def _on_loaded(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self.reader.wake, 4096):
                pass
        while not self.reader.results.empty():
            loaded = self.reader.results.get()
            error: str | None = None
            try:
                self.config_loaded(loaded, why="reload")
            except Exception as exc:  # the retry is scheduled; the reads after still come
                self._loop_error(exc)
                error = f"converging the config failed: {exc!r}; retried after a backoff"
            finally:
                if loaded.requests:
                    self._answer_reloads(loaded.requests, error)

    def _answer_reloads(self, requests: list[int], error: str | None) -> None:
        """Every reload a read answers hears how it ended, and systemd that it is over."""
        try:
            reply = self.status()
            reply["ok"] = not self.config_issues and error is None
            if error is not None:
                reply["error"] = error
        except Exception as exc:  # e.g. MemoryError: still an answer
            reply = {"ok": False, "error": f"vsnetd failed to answer: {exc!r}"}
        # first: a reload answered is over for systemd too
        notify(f"READY=1\nSTATUS={self._shown_status()}")
        for token in requests:
            conn = self.waiting_reloads.pop(token, None)
            if conn is not None:
                self.control.reply(conn, reply)

    # ------------------------------------------------------------------ work

    def config_loaded(self, loaded: Loaded, why: str) -> None:
        """A read of the config ended: refuse it (the last good state stays), or converge
        what it changed."""
        if loaded.requests:
            notify("RELOADING=1\nMONOTONIC_USEC="
                   f"{time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
        if loaded.desired is None or loaded.config is None:
            self.refuse(loaded.issues)
            return
        self.config_issues = []
        self.config, self.compiled = loaded.config, loaded.desired
        self.desired = activation.select(self.compiled, self.config, self.active)
        self.generation += 1
        self.resolve_names |= not loaded.files  # a full read (start, SIGHUP, reload)
        handed_over = time.perf_counter() - loaded.done_at
        with gc_paused():
            result = self.reconciler.edit(self.desired)
        self._after(result, f"{why} (generation {self.generation})")
        # where an edit's time goes: reading + compiling (the reader thread), waiting for
        # this loop, converging
        self.last.update(read_seconds=round(loaded.seconds, 6),
                         handover_seconds=round(handed_over, 6), files=loaded.files[:10])

    def refuse(self, issues: list[ConfigIssue]) -> None:
        """A config with problems: reported, and the last good one stays applied."""
        self.config_issues = issues
        metrics.config_refused()
        for issue in issues:
            log.event(logging.ERROR, f"config refused, last good config stays: {issue}",
                      op="reload")
        self._send_status()

    def heal(self, now: float) -> None:
        """Whatever the schedule says is due: the VS the kernel's notifications concern,
        retries, a full run (lost notifications, resync)."""
        if self.reconciler.desired is None:  # no valid config yet: nothing to heal towards
            self.monitors.full_why = None
            self.monitors.changed.clear()
            return
        if self.monitors.full_why is not None:
            self.schedule.want_full(self.monitors.full_why, now)
            self.monitors.full_why = None
        names = self.monitors.affected()
        if names:
            self.schedule.want(names, "changed in the kernel", now)
        full, _names, _why = self.schedule.due(now)
        if full:
            self.monitors.drain()
        ran = self.reconciler.run_due(now)
        if ran is not None:
            self._after(*ran)
            if full:
                gc.freeze()  # what a full run leaves is kept for long: spare the collector it

    def _check_confinement(self) -> None:
        """Confinement changed behind vsnet's back becomes work like a notification."""
        started = time.monotonic()
        # moved on first: a check that raises must not fall due again at once (a turn
        # that ends in it never reaches heal() or the watchdog)
        self.next_confinement_check = started + CONFINEMENT_CHECK_SECONDS
        try:
            observed, desired = self.reconciler.observed, self.desired
            if observed is not None and desired is not None:
                self._recheck(desired, observed)
        finally:
            now = time.monotonic()
            self.next_confinement_check = now + max(
                CONFINEMENT_CHECK_SECONDS, (now - started) * CONFINEMENT_CHECK_SPACING)

    def _recheck(self, desired: DesiredState, observed: ObservedState) -> None:
        """One look at every VS; when it raises, a look at each VS alone, and those whose
        look raises (a cgroup it may not open, no descriptor left) are healed as if they
        had changed: one VS's error stops neither the others' checks nor the turn."""
        seen = self.confinement_seen
        before = dict(seen)
        try:
            changed = recheck(desired.scope, desired.servers.values(), observed, seen)
        except Exception:
            changed = None  # which VS it was is found below, looking at each alone
        if changed is not None:
            self.monitors.changed.extend(changed)
            self.confinement_errors.clear()
            return
        # what the failed look updated in the kept state it reported to no one: the VS
        # of those objects (``seen`` is keyed by object) are healed too
        looked = {key for key, value in seen.items() if before.get(key) != value}
        suspects = {server.name for server in desired.servers.values()
                    if not looked.isdisjoint(server.keyed)}
        failed: dict[str, str] = {}
        for server in desired.servers.values():
            try:
                self.monitors.changed.extend(recheck(desired.scope, (server,), observed, seen))
            except Exception as exc:
                failed[server.name] = repr(exc)
        for name, error in failed.items():
            if self.confinement_errors.get(name) != error:  # once per error, not per look
                log.event(logging.ERROR, f"confinement check failed: {error}", server=name,
                          op="recheck")
        self.confinement_errors = failed
        if suspects or failed:
            self.schedule.want(suspects | failed.keys(), "confinement check failed",
                               time.monotonic())

    def _after(self, result: ConvergeResult, why: str) -> None:
        metrics.reconciled(result, why, self.reconciler.verdicts, self.config_path)
        self.monitors.sync(result.applied)
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
        self._publish()
        if why == "changed in the kernel" and not result.applied and not result.failures:
            # the echo of vsnet's own changes: nothing happened, unless a VS healed turned
            # out to be a conflict (its verdict is all the line can have changed)
            shown, verdicts = self.verdicts_shown, self.reconciler.verdicts
            if shown is None or any(shown.get(name) != verdicts.get(name)
                                    for name in result.first_plan.servers):
                self._send_status()
            return
        self.last = {
            "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "seconds": round(result.seconds, 6),
            "why": why,
            "changes": len(result.applied),
        }
        self._send_status()

    def _send_status(self) -> None:
        """STATUS= whenever its line changed (a refusal, its fix, a VS's state)."""
        before = self.status_sent
        line = self._shown_status()
        if line != before:
            notify(f"STATUS={line}")

    def _shown_status(self) -> str:
        """The status line, remembered as the one systemd is given, with what it shows."""
        self.verdicts_shown = self.reconciler.verdicts
        self.status_sent = self._status_line()
        return self.status_sent

    # ------------------------------------------------------------------ broker

    def _publish(self) -> None:
        """Hand the broker the VS as they now stand."""
        if self.desired is None or self.config is None:
            return
        verdicts = self.reconciler.verdicts
        current = self.broker.served
        if self.resolve_names:  # every file read again: names resolved again too
            self.resolve_names, current = False, {}
        served = {}
        for name, server in self.desired.servers.items():
            state = verdicts[name].state if name in verdicts else "pending"
            entry = self.config.servers[name]
            known = current.get(name)
            if known is None or known.config is not entry:
                served[name] = Served(server, entry, state)
            elif known.desired is server and known.state == state:
                served[name] = known  # unchanged: the broker keeps what it built for it
            else:  # names are resolved (getpwnam...) when the entry changes, not per heal
                served[name] = Served(server, entry, state, known.access)
        self.broker.update(served, self.generation)

    def client_capacity(self) -> int:
        """How many more broker clients fit, keeping FD_RESERVE descriptors free."""
        room = self.fd_limit - FD_RESERVE - open_fds()
        return max(0, min(room, MAX_CLIENTS - len(self.broker.clients)))

    def _broker_accept(self) -> None:
        capacity = self.client_capacity()
        listener = self.broker.listener
        assert listener is not None
        while True:
            try:
                if capacity <= 0:
                    self.refuse_client(listener)
                    continue
                client = self.broker.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    raise
                self._broker_pause(exc)
                return
            if client is None:
                return
            capacity -= 1

    def refuse_client(self, listener: Any) -> None:
        """The broker is full: the one waiting is told so by a closed connection, at once."""
        conn, _ = listener.accept()
        self.broker.close_connection(conn)  # what it sent may hold descriptors
        self.broker_refused += 1
        if self.broker_refused in (1, 10, 100) or self.broker_refused % 1000 == 0:
            log.event(logging.WARNING, f"broker: {len(self.broker.clients)} clients hold the "
                      f"descriptors it may use; {self.broker_refused} refused", op="broker")

    def _broker_pause(self, exc: OSError) -> None:
        """No descriptor to accept with: stop listening for a moment (a listener left
        readable would spin the loop)."""
        log.event(logging.WARNING, f"broker: cannot accept: {exc.strerror}; pausing",
                  op="broker")
        assert self.broker.listener is not None
        self.selector.unregister(self.broker.listener)
        self.broker_paused_until = time.monotonic() + ACCEPT_PAUSE_SECONDS

    def _broker_resume(self, now: float) -> None:
        if self.broker_paused_until is not None and now >= self.broker_paused_until:
            self.broker_paused_until = None
            assert self.broker.listener is not None
            self.selector.register(self.broker.listener, selectors.EVENT_READ,
                                   self._broker_accept)

    def _exposition(self) -> str:
        with self.broker.lock:  # a request whose reply was received is counted
            return metrics.exposition()

    # ------------------------------------------------------------------ control

    def _status_line(self) -> str:
        line = summary(self.reconciler.verdicts, self.last.get("seconds"))
        if self.config_issues:
            line = f"config refused ({self.config_issues[0]}); " + line
        return line

    def status(self) -> dict[str, Any]:
        servers = (activation.annotate(
            server_status(self.compiled, self.reconciler.verdicts, Plan((), {})),
            self.config, self.active) if self.compiled is not None and self.config else {})
        pending = self.schedule.as_json(time.monotonic())
        for name, entry in pending.items():
            if name in servers:
                servers[name]["pending"] = entry
        return {
            "ok": True,
            "daemon": {
                "pid": os.getpid(),
                "config": str(self.config_path),
                "drop_in_dir": str(self.reader.directory),
                "generation": self.generation,
                "config_errors": [issue.as_json() for issue in self.config_issues],
                "last_reconcile": self.last,
                "pending": pending,
                "broker": {"clients": len(self.broker.clients), "refused": self.broker_refused,
                           "descriptor_limit": self.fd_limit},
                "status": self._status_line(),
            },
            "servers": servers,
        }

    def _activation(self, request: dict[str, Any]) -> dict[str, Any]:
        """Switch cluster VS on or off here (or say where they stand): converge them at once,
        and announce the addresses of those switched on (neighbours follow)."""
        started = time.perf_counter()
        op, names = request["op"], request.get("names")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            return {"ok": False, "error": 'names: a list of server names, e.g. ["nas1"]'}
        config_path = request.get("config")
        if config_path is not None and Path(str(config_path)).absolute() != self.config_path:
            return {"ok": False, "error": f"vsnetd serves {self.config_path}, not {config_path}"}
        if self.config is None or self.compiled is None:
            return {"ok": False, "error": "no valid config loaded: "
                    + "; ".join(str(issue) for issue in self.config_issues)}
        problems = activation.check_names(self.config, names)
        if problems:
            return {"ok": False, "refused": True, "error": "; ".join(problems)}
        if op != "is-active":
            active = activation.switched(self.active, names, on=op == "activate")
            if active != self.active:
                activation.write_active(active)
                self.active = active
            self.desired = activation.select(self.compiled, self.config, self.active)
            with gc_paused():
                self._after(self.reconciler.edit(self.desired), op)
            if op == "activate":
                announce_servers(self.announcer, self.kernel, (
                    self.desired.servers[name] for name in names
                    if self.reconciler.verdicts.get(name) == ServerVerdict("in-sync")))
        reply = activation.reply(names, self.active, self.reconciler.verdicts, op)
        reply["seconds"] = round(time.perf_counter() - started, 6)
        return reply

    def _reload_request(self, request: dict[str, Any]) -> None:
        """``vsnetctl reload``: answered once every file is read again and converged."""
        self.reload_token += 1
        self.waiting_reloads[self.reload_token] = request["conn"]
        self.reader.request(self.reload_token)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vsnetd", description="Keep the kernel converged to "
                                     "the vsnet config (runs in the foreground).")
    parser.add_argument("-c", "--config", type=Path, default=DEFAULT_CONFIG_PATH,
                        help=f"config file (default {DEFAULT_CONFIG_PATH}); drop-ins in "
                             "the .d directory beside it (servers.d/*.yaml)")
    parser.add_argument("--resync-interval", type=float, default=DEFAULT_RESYNC_SECONDS,
                        metavar="SECONDS", help="full resync period (default 60)")
    parser.add_argument("--control", type=Path, default=control.CONTROL_PATH,
                        help=f"control socket (default {control.CONTROL_PATH})")
    parser.add_argument("--broker", type=Path, default=BROKER_PATH,
                        help=f"broker socket (default {BROKER_PATH})")
    parser.add_argument("--mount-ns", metavar="PATH",
                        help="mount namespace to mount network namespaces in (the unit "
                             "file passes /proc/1/ns/mnt); default: vsnetd's own")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every change")
    parser.add_argument("--metrics-listen", metavar="ADDR:PORT",
                        help="serve Prometheus metrics over HTTP there, e.g. 127.0.0.1:9586 "
                             "(default: none; `vsnetctl metrics` works regardless)")
    parser.add_argument("--version", action="version", version=f"vsnetd {__version__}",
                        help="print the version and exit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    log.setup(args.verbose)
    if args.metrics_listen:
        try:
            metrics.serve(args.metrics_listen)
        except (ValueError, OSError) as exc:
            parser.error(f"--metrics-listen: {exc}")
    namespace.use_mount_namespace(args.mount_ns)
    try:
        daemon = Daemon(args.config, args.resync_interval, args.control, args.broker)
    except PermissionError as exc:
        print(f"vsnetd: {exc.strerror or exc}: run as root (CAP_NET_ADMIN)", file=sys.stderr)
        return 1
    return daemon.run()


if __name__ == "__main__":
    sys.exit(main())
