"""VM tests: the ``vm`` marker, and the VM image built before pytest enters its sandbox."""

from __future__ import annotations

import os

import pytest

from tests import sandbox
from tests.vm.harness import HarnessError, ensure_image


# tryfirst: tests/conftest.py re-executes pytest inside a sandbox that has no network, and
# the first build needs the package registry (apt packages, the kernel package). Building
# here, before that, makes `pytest tests/vm` work from a cold cache.
@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "vm: boots a qemu VM running a Debian kernel (802.1Q, VRF, dummy, ipvlan); slow")
    about_to_enter_sandbox = os.geteuid() == 0 and not sandbox.inside()
    if about_to_enter_sandbox and "not vm" not in config.getoption("markexpr", ""):
        try:
            ensure_image()
        except HarnessError as error:
            raise pytest.UsageError(f"cannot build the VM image for the vm tests: {error}") from None
