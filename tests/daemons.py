"""A running vsnetd for the tests: started as systemd would (NOTIFY_SOCKET, a watchdog),
killed with the test; and the kernel-side views the daemon tests check."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import RUNNING
from tests.sandbox import NotifySocket, ip_json


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
    def __init__(self, tmp: Path, config: Path, extra: list[str] | None = None,
                 wrapper: list[str] | None = None) -> None:
        self.config = config
        self.control = tmp / "control.sock"
        self.notify = NotifySocket(tmp / f"notify-{time.monotonic_ns()}.sock")
        env = dict(os.environ, NOTIFY_SOCKET=str(self.notify.path), WATCHDOG_USEC="400000",
                   VSNET_CONTROL=str(self.control))
        self.log = tmp / "vsnetd.log"
        self.proc = subprocess.Popen(
            [*(wrapper or []), sys.executable, "-m", "vsnetd.daemon", "-c", str(config),
             "--control", str(self.control), "-v", *(extra or [])],
            env=env, stdout=subprocess.DEVNULL, stderr=self.log.open("ab"),
        )
        RUNNING.append(self.proc)
        self.env = env

    def ready(self, timeout: float = 20.0) -> None:
        wait_until(lambda: self.notify.seen("READY", "1") or self.proc.poll() is not None,
                   timeout, "READY=1")
        assert self.proc.poll() is None, self.log.read_text()

    def status(self) -> dict[str, Any]:
        result = subprocess.run([sys.executable, "-m", "vsnetd.cli", "status", "--json", "-c",
                                 str(self.config)], capture_output=True, text=True,
                                env=self.env, timeout=30)
        return json.loads(result.stdout)  # type: ignore[no-any-return]

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=20)


def save(path: Path, text: str) -> None:
    """Write the way editors do: a new file renamed over the old one."""
    partial = path.with_name(".servers.yaml.swp")
    partial.write_text(text)
    partial.replace(path)


def vsnet_rules() -> list[dict[str, Any]]:
    """vsnet's rules that choose a table (the rule tree's goto and nop rules left out)."""
    return [r for family in ("-4", "-6") for r in ip_json(family, "rule")
            if r.get("protocol") == "vsnet" and "table" in r]


def addresses(dev: str = "eth0", netns: str | None = None) -> set[str]:
    """Global addresses of a device (none while it does not exist)."""
    try:
        links = ip_json("addr", "show", "dev", dev, netns=netns)
    except RuntimeError:
        return set()
    return {a["local"] for link in links for a in link["addr_info"] if a["scope"] == "global"}
