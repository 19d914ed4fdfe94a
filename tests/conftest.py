"""Test harness: everything runs inside a sandbox (fresh network + mount namespaces).

Running ``pytest`` directly as root re-executes it inside ``python -m tests.sandbox``, so
no test can ever touch the machine's own network. Each kernel test then gets its own,
empty network namespace (``netns`` fixture).
"""

from __future__ import annotations

import os
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import Phase, settings

from tests import sandbox
from tests.daemons import RUNNING

# Mutation runs (CONTRIBUTING.md, "Mutation testing") run each property test on a few
# examples, always the same ones (a mutant is judged on one run: a random one would make
# its verdict change between runs), and do not shrink a failure (a killed mutant needs no
# minimal example). Loaded with ``--hypothesis-profile=mutation``.
settings.register_profile("mutation", max_examples=10, derandomize=True, database=None,
                          phases=[Phase.explicit, Phase.generate])


def pytest_configure(config: pytest.Config) -> None:
    if os.geteuid() == 0 and not sandbox.inside():
        # Give the terminal back from pytest's output capture, then start over inside.
        capture = config.pluginmanager.getplugin("capturemanager")
        if capture is not None:
            capture.stop_global_capturing()
        sandbox.reexec([sys.executable, "-m", "pytest", *sys.argv[1:]])

ROOT = Path(__file__).resolve().parent.parent
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
DEB = ROOT / "dist" / f"vsnet_{VERSION}_amd64.deb"  # `make deb` builds it


@pytest.fixture(autouse=True)
def no_daemon_outlives_its_test() -> Iterator[None]:
    """A test that fails half-way must not leave a daemon running (it would keep the
    test's namespaces alive after the sandbox is gone)."""
    yield
    while RUNNING:
        RUNNING.pop().close()
EXAMPLE_CONFIG = ROOT / "etc" / "vsnet" / "servers.yaml"


@pytest.fixture
def netns() -> Iterator[None]:
    """A fresh, empty network namespace for this test's thread (and its children)."""
    if not sandbox.inside():
        pytest.fail("kernel tests need root: they run inside a sandbox (see README, make test)")
    named_before = set(os.listdir("/run/netns"))
    with sandbox.fresh_netns():
        try:
            yield
        finally:
            for name in set(os.listdir("/run/netns")) - named_before:
                sandbox.sh("ip", "netns", "del", name, check=False)


@pytest.fixture
def uplink(netns: None) -> str:
    """A veth ``eth0`` in the test namespace; its peer ``peer0`` stays beside it. Returned
    once the kernel has given both their IPv6 link-local address and its local route
    (asynchronously, after DAD), so that snapshots taken later see no such change."""
    sandbox.ip("link", "add", "eth0", "type", "veth", "peer", "name", "peer0")
    for name in ("eth0", "peer0"):
        sandbox.sh("sysctl", "-qw", f"net.ipv6.conf.{name}.accept_dad=0")
        sandbox.ip("link", "set", name, "up")
    deadline = time.monotonic() + 10
    while {r.get("dev") for r in sandbox.ip_json("-6", "route", "show", "table", "local")
           if str(r.get("dst", "")).startswith("fe80:")} < {"eth0", "peer0"}:
        if time.monotonic() > deadline:
            pytest.fail("the uplink's IPv6 link-local addresses did not appear")
        time.sleep(0.005)  # polling for a positive witness
    return "eth0"
