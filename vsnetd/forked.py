"""Work handed to a forked child process, its result pickled back through a pipe.

For a one-shot process that waits on the kernel: a look into 1,000 namespaces is ~4,000
dumps, each a system call in which the kernel fills the reply, then Python decoding it.
Two threads cannot share that work (they take turns at the interpreter's lock, and every
system call hands it over: docs/benchmarks.md); two processes can, one per CPU.

Only a single-threaded process may fork (the child would inherit locks other threads
hold): the daemon never does, ``vsnetctl`` does through ``Kernel(helper_from=...)``.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from vsnetd.syscalls import set_parent_death_signal

T = TypeVar("T")


class HelperFailed(Exception):
    """The child did not hand back a result (it raised, or was killed)."""


def may_fork() -> bool:
    return threading.active_count() == 1


class Helper(Generic[T]):
    """``work`` running in a child from construction on; :meth:`result` waits for it."""

    def __init__(self, work: Callable[[], T]) -> None:
        reading, writing = os.pipe()
        parent = os.getpid()
        self.pid = os.fork()
        if self.pid == 0:  # the child: never returns
            os.close(reading)
            _run_child(work, writing, parent)
        os.close(writing)
        self._reading = reading

    def result(self) -> T:
        import pickle

        try:
            with os.fdopen(self._reading, "rb") as pipe:
                data = pipe.read()
        finally:
            _, status = os.waitpid(self.pid, 0)
        if not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0 or not data:
            raise HelperFailed(f"helper process {self.pid} ended with status {status}")
        result: T = pickle.loads(data)
        return result

    def stop(self) -> None:
        """Kill the child and reap it (when :meth:`result` will not be called)."""
        os.close(self._reading)
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)


def _run_child(work: Callable[[], T], writing: int, parent: int) -> None:
    status = 1
    try:
        set_parent_death_signal(signal.SIGKILL)  # a parent killed meanwhile takes it along
        if os.getppid() != parent:
            return  # the parent ended before the signal was set
        import pickle

        data = pickle.dumps(work(), protocol=pickle.HIGHEST_PROTOCOL)
        with os.fdopen(writing, "wb") as pipe:
            pipe.write(data)
        status = 0
    finally:
        # no interpreter teardown, no atexit handler, no flush of the parent's buffers
        os._exit(status)
