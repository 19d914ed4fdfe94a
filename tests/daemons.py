"""A running vsnetd, for the tests and the benchmarks alike: started as systemd would
(NOTIFY_SOCKET read all the time, a watchdog), killed with the test; and the kernel-side
views the daemon tests check.

Test tooling: no pytest here, so that bench/ can use it too.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.sandbox import NotifySocket, ip_json

# daemons started and not yet closed: conftest closes them after each test (killing what
# a failed test left running)
RUNNING: list[Daemon] = []
UNIT = Path(__file__).resolve().parent.parent / "systemd" / "vsnetd.service"
# a user that owns nothing of vsnet's
OTHER_UID = 65534


def patched(prelude: str) -> list[str]:
    """``Daemon(command=...)``: vsnetd, once ``prelude`` ran in its process (an error
    injected where no real condition reaches that place alone)."""
    return [sys.executable, "-c",
            f"{prelude}\nimport sys\nfrom vsnetd.daemon import main\nsys.exit(main(sys.argv[1:]))\n"]


def unit_capabilities() -> list[str]:
    """A wrapper (``Daemon(wrapper=...)``) that leaves the command, though root, only the
    capabilities the unit's ``CapabilityBoundingSet=`` leaves vsnetd: no CAP_DAC_OVERRIDE
    nor CAP_DAC_READ_SEARCH, so that what another user owns, or what its mode denies its
    owner, cannot be read (as under systemd)."""
    line = next(line for line in UNIT.read_text().splitlines()
                if line.startswith("CapabilityBoundingSet="))
    kept = [cap.removeprefix("CAP_").lower() for cap in line.split("=", 1)[1].split()]
    return ["setpriv", f"--bounding-set=-all,{','.join('+' + cap for cap in kept)}", "--"]


def wait_until(check: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        time.sleep(0.02)


class Daemon:
    """``[wrapper] python -m vsnetd.daemon -c CONFIG --control TMP/CONTROL [-v] [extra]`` as
    a subprocess, with a NOTIFY_SOCKET of its own; ``command`` in place of ``python -m
    vsnetd.daemon``, ``env`` added to its environment, no watchdog when ``watchdog_usec``
    is None."""

    def __init__(self, tmp: Path, config: Path, extra: Sequence[str] | None = None,
                 wrapper: Sequence[str] | None = None, *, command: Sequence[str] | None = None,
                 env: Mapping[str, str] | None = None, watchdog_usec: str | None = "400000",
                 verbose: bool = True, control: str = "control.sock",
                 stop_timeout: float = 20.0) -> None:
        self.config = config
        self.control = tmp / control
        self.notify = NotifySocket(tmp / f"notify-{time.monotonic_ns()}.sock")
        self.env = dict(os.environ, NOTIFY_SOCKET=str(self.notify.path),
                        VSNET_CONTROL=str(self.control), **(env or {}))
        if watchdog_usec is not None:
            self.env["WATCHDOG_USEC"] = watchdog_usec
        self.log = tmp / "vsnetd.log"
        self.stop_timeout = stop_timeout
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [*(wrapper or []), *(command or [sys.executable, "-m", "vsnetd.daemon"]),
                 "-c", str(config), "--control", str(self.control), *(["-v"] if verbose else []),
                 *(extra or [])],
                env=self.env, stdout=subprocess.DEVNULL, stderr=log,
            )
        RUNNING.append(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def ready(self, timeout: float = 20.0) -> float:
        """Wait for READY=1; the seconds it took."""
        started = time.perf_counter()
        while not self.notify.seen("READY", "1"):
            if not self.alive():
                raise AssertionError(f"vsnetd exited ({self.proc.returncode}): {self.log_tail()}")
            if time.perf_counter() - started > timeout:
                raise AssertionError(f"vsnetd not ready after {timeout:g} s: {self.log_tail()}")
            time.sleep(0.005)
        return time.perf_counter() - started

    def log_tail(self, lines: int = 20) -> str:
        try:
            return " | ".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def vsnetctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``vsnetctl ARGS -c CONFIG`` against this daemon."""
        return subprocess.run([sys.executable, "-m", "vsnetd.cli", *args, "-c", str(self.config)],
                              capture_output=True, text=True, env=self.env, timeout=60)

    def status(self) -> dict[str, Any]:
        return json.loads(self.vsnetctl("status", "--json").stdout)  # type: ignore[no-any-return]

    def close(self) -> None:
        """Kill it if it still runs, and stop reading its notifications."""
        if self.alive():
            self.proc.kill()
        self.proc.wait()
        self.notify.close()

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal it (SIGTERM) and reap it; killed when it outlives ``stop_timeout``."""
        if self.alive():
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def save(path: Path, text: str) -> float:
    """Write the way editors do (a new file renamed over the old one); when the rename was
    done (``time.perf_counter``)."""
    partial = path.with_name(f".{path.name}.swp")
    partial.write_text(text)
    partial.replace(path)
    return time.perf_counter()


def vsnet_rules() -> list[dict[str, Any]]:
    """vsnet's rules that choose a table (the rule tree's goto and nop rules left out)."""
    return [r for family in ("-4", "-6") for r in ip_json(family, "rule")
            if r.get("protocol") == "vsnet" and "table" in r and "goto" not in r]


def addresses(dev: str = "eth0", netns: str | None = None) -> set[str]:
    """Global addresses of a device (none while it does not exist)."""
    try:
        links = ip_json("addr", "show", "dev", dev, netns=netns)
    except RuntimeError:
        return set()
    return {a["local"] for link in links for a in link["addr_info"] if a["scope"] == "global"}
