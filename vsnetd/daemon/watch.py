"""The config reader: its own thread, woken by inotify, never by a timer.

Events that mark a complete write (a file renamed into place, closed after writing,
hard-linked into place, removed) are acted on at once, without debounce; what arrives
together is read together. The config's directory replaced or removed is watched again
where it comes back, and read whole. Each file
that changed is read again on its own (:class:`vsnetd.config.ConfigLoader`), compiled
against the previous desired state, and handed to the daemon's loop as a :class:`Loaded`.
Parsing never runs on the thread that heals and serves the control socket: a slow or
hostile file delays its own edit only.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import logging
import os
import queue
import select
import stat
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vsnetd import log
from vsnetd.compile import compile_edit, count_shared_users
from vsnetd.config import Config, ConfigError, ConfigIssue, ConfigLoader
from vsnetd.reconcile import gc_paused
from vsnetd.state import DesiredState

# inotify(7)
IN_ATTRIB = 0x4
IN_CLOSE_WRITE = 0x8
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x1000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
_EVENT = struct.Struct("iIII")

# A write is complete when the file is closed or renamed into place; a removal is
# complete at once. IN_CREATE only counts for what has no close to wait for (a symlink,
# a pipe, a file hard-linked into place): a regular file created by its writer is judged
# when the writer closes it.
DIRECTORY_EVENTS = (IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE | IN_CREATE
                    | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR)
# The config's directory also says when the drop-in directory's owner or mode changed
# (it may have become readable, or stopped being so): IN_ATTRIB, acted on for that name
# only (a file's attributes may change before its writer is done with it).
CONFIG_DIRECTORY_EVENTS = DIRECTORY_EVENTS | IN_ATTRIB
# While the config's directory does not exist: the nearest directory above it that does,
# for the next name on the way appearing (or that directory going in turn).
ANCESTOR_EVENTS = IN_CREATE | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR
# A watch that ends: its directory removed or moved away (a moved one would report what
# happens under its new name), or the file system unmounted.
WATCH_ENDS = IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED


class Inotify:
    """inotify(7) through libc: the standard library has no binding."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.fd: int = fd

    def watch(self, path: Path, mask: int) -> int:
        wd = int(self._libc.inotify_add_watch(self.fd, os.fsencode(path), mask))
        if wd < 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno), str(path))
        return wd

    def unwatch(self, wd: int) -> None:
        """Stop a watch (one of a directory moved away); one already ended is no error."""
        self._libc.inotify_rm_watch(self.fd, wd)

    def read(self) -> list[tuple[int, int, str]]:
        """Every event waiting, as (watch, mask, name)."""
        events: list[tuple[int, int, str]] = []
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return events
            offset = 0
            while offset < len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                offset += _EVENT.size
                name = data[offset:offset + length].rstrip(b"\0")
                offset += length
                events.append((wd, mask, os.fsdecode(name)))

    def close(self) -> None:
        os.close(self.fd)


@dataclass(slots=True)
class Loaded:
    """What one read of the config gave: a new desired state, or the reasons it has none."""

    requests: list[int]  # the reload requests this read answers
    config: Config | None = None
    desired: DesiredState | None = None
    issues: list[ConfigIssue] = field(default_factory=list)
    files: list[str] = field(default_factory=list)  # read again ([] when all were)
    seconds: float = 0.0  # reading and compiling
    done_at: float = 0.0  # time.perf_counter() when handed over


class ConfigReader:
    """The thread that watches and reads the config; the daemon's loop takes its results
    from :attr:`results` when :attr:`wake` is readable (and namespaces vanishing from
    ``netns_dir`` through ``on_netns``)."""

    def __init__(self, path: Path, netns_dir: Path, on_netns: Callable[[], None]) -> None:
        self.loader = ConfigLoader(path)
        self.path = self.loader.path
        self.directory = self.loader.directory
        self.netns_dir = netns_dir
        self.on_netns = on_netns
        self.results: queue.SimpleQueue[Loaded] = queue.SimpleQueue()
        self.wake, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._ask_r, self._ask_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._asked: list[int] = []
        self._asked_lock = threading.Lock()
        self._stopping = False
        self._read_all = False  # events were lost (an error): read every file next time
        self._previous: tuple[Config, DesiredState] | None = None
        self.inotify = Inotify()
        self._wd_parent: int | None = None
        self._wd_ancestor: int | None = None
        self._ancestor_awaits = ""  # the name whose arrival the ancestor's watch waits for
        self._watch_config_directory()
        self._wd_drop_ins = self._watch_drop_ins()
        netns_dir.mkdir(parents=True, exist_ok=True)
        self._wd_netns = self.inotify.watch(netns_dir, IN_DELETE | IN_MOVED_FROM | IN_CREATE
                                            | IN_MOVED_TO | IN_ONLYDIR)
        self.thread = threading.Thread(target=self._run, name="config-reader", daemon=True)

    def _watch_drop_ins(self) -> int | None:
        try:
            return self.inotify.watch(self.directory, DIRECTORY_EVENTS)
        except OSError:
            # none yet, or unreadable: its creation, or its mode changing, is seen in the
            # config's directory
            return None

    def _watch_config_directory(self) -> None:
        """Watch the config's directory; while it does not exist (removed, or moved away
        to be replaced), the nearest existing directory above it, until it is back."""
        directory = self.path.parent
        if self._wd_ancestor is not None:
            self.inotify.unwatch(self._wd_ancestor)
            self._wd_ancestor = None
        attempts = len(directory.parts)  # a name on the way may be made meanwhile, each once
        while True:
            try:
                self._wd_parent = self.inotify.watch(directory, CONFIG_DIRECTORY_EVENTS)
                return
            except OSError:
                self._wd_parent = None
            ancestor = directory.parent
            while not ancestor.is_dir() and ancestor != ancestor.parent:
                ancestor = ancestor.parent
            try:
                self._wd_ancestor = self.inotify.watch(ancestor, ANCESTOR_EVENTS)
            except OSError:
                return  # nothing left to watch from: SIGHUP and reload still read
            self._ancestor_awaits = directory.relative_to(ancestor).parts[0]
            attempts -= 1
            # the next name on the way made before the watch above saw it: go on down
            # (one there that cannot be watched keeps this watch: it may be replaced)
            if not (ancestor / self._ancestor_awaits).is_dir() or attempts <= 0:
                return
            self.inotify.unwatch(self._wd_ancestor)
            self._wd_ancestor = None

    def start(self) -> None:
        self.thread.start()

    def request(self, token: int) -> None:
        """Read every file again (SIGHUP, ``vsnetctl reload``); ``token`` comes back in
        :attr:`Loaded.requests`. Not from a signal handler: it takes a lock."""
        with self._asked_lock:
            self._asked.append(token)
        with contextlib.suppress(BlockingIOError):
            os.write(self._ask_w, b"r")

    def load_now(self) -> Loaded:
        """The first read, on the caller's thread (before the loop starts)."""
        return self._load(None, [])

    def stop(self) -> None:
        self._stopping = True
        with contextlib.suppress(BlockingIOError):
            os.write(self._ask_w, b"s")
        self.thread.join(timeout=5)

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        self._count_shared_users()
        while not self._stopping:
            try:
                select.select([self.inotify.fd, self._ask_r], [], [])
                self._once()
            except Exception as exc:  # a bug here must not end the watching
                log.event(logging.ERROR, f"config reader: {exc!r}", op="reload")
                # the events it had taken are gone: the next read is of every file
                self._read_all = True
                time.sleep(0.1)

    def _once(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self._ask_r, 4096)
        with self._asked_lock:
            requests, self._asked = self._asked, []
        changed: set[Path] | None = None if requests or self._read_all else set()
        netns = False
        try:
            changed, netns = self._events(changed)
        except Exception as exc:  # the requests taken are still answered, by a full read
            log.event(logging.ERROR, f"config reader: {exc!r}", op="reload")
            changed = None
        if netns:
            self.on_netns()
        if changed is None or changed:
            self._read_all = False
            self.results.put(self._load(changed, requests))
        if changed is None or changed or netns:
            self._poke()  # after the put: the loop finds what it is woken for
        self._count_shared_users()

    def _events(self, changed: set[Path] | None) -> tuple[set[Path] | None, bool]:
        """The files the waiting events say changed (None: read every file), and whether
        something left or entered the namespace directory."""
        netns = False
        for wd, mask, name in self.inotify.read():
            if mask & IN_Q_OVERFLOW:
                changed = None  # events were lost: read everything
            elif wd == self._wd_netns:
                netns = True
            elif wd == self._wd_parent:
                if mask & WATCH_ENDS:  # the directory itself went: watch where it comes back
                    self._replaced(wd, mask)
                    changed = None
                elif name == self.directory.name:
                    self._rewatch_drop_ins()
                    changed = None  # the directory came or went: every drop-in with it
                elif (changed is not None and name == self.path.name and not mask & IN_ATTRIB
                      and _complete(mask, self.path)):
                    changed.add(self.path)
            elif wd == self._wd_ancestor:
                if not mask & WATCH_ENDS and name != self._ancestor_awaits:
                    continue  # something else appeared beside it
                self._watch_config_directory()
                if self._wd_parent is not None:  # back: everything in it is new
                    self._rewatch_drop_ins()
                    changed = None
            elif wd == self._wd_drop_ins:
                if mask & WATCH_ENDS:
                    if mask & IN_MOVE_SELF:
                        self.inotify.unwatch(wd)
                    self._wd_drop_ins = None
                    changed = None
                elif changed is not None and name and _complete(mask, self.directory / name):
                    path = self.directory / name
                    if self.loader.concerns(path):
                        changed.add(path)
        return changed, netns

    def _replaced(self, wd: int, mask: int) -> None:
        """The config's directory was removed or moved away (an edit that replaces the
        whole directory): watch the one now at its path, or wait for it."""
        if mask & IN_MOVE_SELF:
            self.inotify.unwatch(wd)  # it would report the old directory's files
        self._wd_parent = None
        self._watch_config_directory()
        self._rewatch_drop_ins()

    def _rewatch_drop_ins(self) -> None:
        if self._wd_drop_ins is not None:
            self.inotify.unwatch(self._wd_drop_ins)
        self._wd_drop_ins = self._watch_drop_ins()

    def _count_shared_users(self) -> None:
        """After a read is handed over (and at the start): what the next edit of a path in
        the rule tree needs, made now rather than on that edit's way. A read that compiled
        the whole config again (a VS added or removed) left a state without the counts;
        once made they are kept, and this costs nothing."""
        if self._previous is not None:
            with gc_paused():
                count_shared_users(self._previous[1])

    def _load(self, changed: set[Path] | None, requests: list[int]) -> Loaded:
        started = time.perf_counter()
        result = Loaded(requests, files=sorted(str(p) for p in changed or ()))
        starved = False
        failed: ConfigIssue | None = None
        with gc_paused():  # 1,000 VS of small objects, no cycles: no collector passes
            try:
                if changed:
                    _reachable(changed)
                config = self.loader.load(changed)
                desired = compile_edit(config, self._previous)
            except ConfigError as exc:
                result.issues = exc.issues
            except MemoryError:
                starved = True
            except OSError as exc:  # a changed file vsnetd may not look at (_reachable)...
                failed = ConfigIssue(str(exc.filename or self.path), 0, 0, "",
                                     f"cannot read: {exc.strerror or repr(exc)}")
            except Exception as exc:  # a bug: still a refusal, so that every read ends
                log.event(logging.ERROR, f"config reader: {exc!r}", op="reload")
                failed = ConfigIssue(str(self.path), 0, 0, "", f"not read: {exc!r}")
            else:
                result.config, result.desired = config, desired
                self._previous = (config, desired)
        if starved:  # out of the handler: what the read had built is garbage by now
            result.issues = self._out_of_memory(changed)
        elif failed is not None:
            # the loader may have replaced some files' reads and not others: start whole
            self.loader.forget()
            self._previous = None
            result.issues = [failed]
        result.done_at = time.perf_counter()
        result.seconds = result.done_at - started
        return result

    def _out_of_memory(self, changed: set[Path] | None) -> list[ConfigIssue]:
        """A read that ran out of memory (a file too costly for the memory vsnetd may
        use, or pressure from elsewhere) is refused like a bad file, naming the files it
        was reading; the last good config stays. What the loader kept of each file, and
        the state edits are compiled against, may be half-replaced: forgotten, so that the
        next read is of every file and compiles the whole config."""
        self.loader.forget()
        self._previous = None
        gc.collect()
        message = ("not read: vsnetd ran out of memory reading the config (MemoryError); "
                   "the last good config stays; `vsnetctl reload` reads every file again")
        return [ConfigIssue(str(path), 0, 0, "", message)
                for path in (sorted(changed, key=str) if changed else [self.path])]

    def _poke(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"w")

    def close(self) -> None:
        self.inotify.close()
        for fd in (self.wake, self._wake_w, self._ask_r, self._ask_w):
            with contextlib.suppress(OSError):
                os.close(fd)


def _reachable(changed: set[Path]) -> None:
    """Raise the OSError of a changed file that vsnetd may not even look at (its directory
    made unreadable): the loader would take it for a file removed."""
    for path in changed:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):  # removed indeed
            path.lstat()


def _complete(mask: int, path: Path) -> bool:
    """Whether this event ends a change worth reading now (see DIRECTORY_EVENTS).

    A regular file that appears is complete when it arrives with more than one link:
    open(O_CREAT) makes a file with one link, which its writer closes when done, and a
    link() of an existing file (``ln``, ``cp -l``) adds one to a file that is written
    already and sends no close. (A writer that links a file it has not finished
    writing errs as one that renames it into place half-written would.)"""
    if mask & IN_CREATE:
        try:
            found = path.lstat()
        except OSError:
            return True
        return not stat.S_ISREG(found.st_mode) or found.st_nlink > 1
    return True
