"""Work handed to a forked child process: what it needs later (pickled) and its result
(bytes) through two pipes.

For a one-shot process that waits on the kernel: a look into 1,000 namespaces is ~4,000
dumps, each a system call in which the kernel fills the reply, then Python decoding it.
Two threads cannot share that work (they take turns at the interpreter's lock, and every
system call hands it over: docs/benchmarks.md); two processes can, one per CPU.

Only a single-threaded process may fork (the child would inherit locks other threads
hold): the daemon never does, ``vsnetctl`` does through ``Kernel(helper_from=...)``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from vsnetd.syscalls import set_parent_death_signal

T = TypeVar("T")
ORDERS_PIPE_SIZE = 1 << 20


class HelperFailed(Exception):
    """The child did not hand back a result (it raised, or was killed)."""


def may_fork() -> bool:
    return threading.active_count() == 1


class Helper(Generic[T]):
    """``work`` running in a child from construction on; :meth:`result` waits for what it
    returns and ``load``s it. ``work`` is given a function that waits for what the parent
    :meth:`send`s (once), for work that can start before the parent knows all it needs."""

    def __init__(self, work: Callable[[Callable[[], Any]], bytes],
                 load: Callable[[bytes], T]) -> None:
        self._load = load
        reading, writing = os.pipe()  # the result
        orders_in, orders_out = os.pipe()  # what the parent sends
        with contextlib.suppress(OSError):  # room for all of it: send never waits
            fcntl.fcntl(orders_out, fcntl.F_SETPIPE_SZ, ORDERS_PIPE_SIZE)
        parent = os.getpid()
        self.pid = os.fork()
        if self.pid == 0:  # the child: never returns
            os.close(reading)
            os.close(orders_out)
            _run_child(lambda: work(lambda: _receive(orders_in)), writing, parent)
        os.close(writing)
        os.close(orders_in)
        self._reading = reading
        self._orders = orders_out

    def send(self, message: object) -> None:
        """Hand ``message`` to the child's work (its function returns it). A child gone
        already is left to :meth:`result` to report."""
        import pickle

        rest = memoryview(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))
        try:
            while rest:
                rest = rest[os.write(self._orders, rest):]
        except BrokenPipeError:
            pass
        finally:
            self._close_orders()

    def result(self) -> T:
        loaded: list[T] = []  # none: no result
        try:
            with os.fdopen(self._reading, "rb") as pipe:
                data = pipe.read()
            # loaded while the child exits (it closes what it opened: for a look into 500
            # namespaces, ~5 ms); a result that does not load is no result
            if data:
                with contextlib.suppress(Exception):
                    loaded.append(self._load(data))
        finally:
            _, status = os.waitpid(self.pid, 0)
            self._close_orders()
        if not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0 or not loaded:
            raise HelperFailed(f"helper process {self.pid} ended with status {status}")
        return loaded[0]

    def stop(self) -> None:
        """Kill the child and reap it (when :meth:`result` will not be called)."""
        os.close(self._reading)
        self._close_orders()
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)

    def _close_orders(self) -> None:
        if self._orders >= 0:
            os.close(self._orders)
            self._orders = -1


def _receive(orders: int) -> Any:
    """In the child: what the parent sends, once it has (None: it closed without)."""
    import pickle

    with os.fdopen(orders, "rb") as pipe:
        data = pipe.read()
    return pickle.loads(data) if data else None


def _run_child(work: Callable[[], bytes], writing: int, parent: int) -> None:
    status = 1
    try:
        set_parent_death_signal(signal.SIGKILL)  # a parent killed meanwhile takes it along
        if os.getppid() != parent:
            return  # the parent ended before the signal was set
        data = work()
        with os.fdopen(writing, "wb") as pipe:
            pipe.write(data)
        status = 0
    finally:
        # no interpreter teardown, no atexit handler, no flush of the parent's buffers
        os._exit(status)
