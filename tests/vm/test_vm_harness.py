"""The VM harness itself: status and output come back, and the VM's kernel has what the
host's lacks (802.1Q, VRF). Each test boots its own VM (~6-15 s under emulation)."""

from __future__ import annotations

import pytest

from tests.vm.harness import CACHE, PROJECT, HarnessError, Image, ensure_image, run_in_vm

pytestmark = pytest.mark.vm


@pytest.fixture(scope="session", autouse=True)
def vm_image() -> Image:
    try:
        return ensure_image()
    except HarnessError as error:
        pytest.fail(str(error), pytrace=False)


def test_exit_status_and_output_round_trip() -> None:
    result = run_in_vm("echo to stdout; echo to stderr >&2; printf 'a\\tb\\r\\nno newline'; exit 3")

    assert result.returncode == 3, result.output
    assert result.output == "to stdout\nto stderr\na\tb\r\nno newline"
    assert not result.timed_out


def test_host_userland_runs_on_the_vm_kernel(vm_image: Image) -> None:
    script = f"""
        set -e
        uname -r
        [ "$PWD" = {PROJECT} ] && [ "$(id -u)" = 0 ]
        .venv/bin/python -c 'import tests.sandbox; print("venv ok")'
        python3 -c 'import sys; print("python", sys.version_info[:2])'
        ip netns add vs1 && ip -n vs1 link show lo >/dev/null && echo "netns ok"
        touch .cache/vm/written-inside-the-vm  # lands in the VM's tmpfs overlay only
    """
    result = run_in_vm(script)

    assert result.returncode == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == vm_image.version
    assert "venv ok" in lines
    assert "python (3, 11)" in lines
    assert "netns ok" in lines
    assert not (CACHE / "written-inside-the-vm").exists()


def test_8021q_vlan() -> None:
    result = run_in_vm(
        "modprobe 8021q && ip link add veth0 type veth peer name veth1"
        " && ip link add link veth0 name veth0.100 type vlan id 100 && ip -d link show veth0.100")

    assert result.returncode == 0, result.output
    assert "vlan protocol 802.1Q id 100" in result.output


def test_vrf() -> None:
    result = run_in_vm("modprobe vrf && ip link add vrf-a type vrf table 10 && ip -d link show vrf-a")

    assert result.returncode == 0, result.output
    assert "vrf table 10" in result.output


def test_missing_exit_status_gives_minus_one_and_the_console() -> None:
    # A kernel crash: the VM reboots (panic=-1), qemu exits (-no-reboot), no status line.
    result = run_in_vm("echo before the crash; echo c >/proc/sysrq-trigger; sleep 60")

    assert result.returncode == -1
    assert not result.timed_out
    assert "Kernel panic" in result.output
    assert "before the crash" in result.output


def test_timeout_kills_the_vm() -> None:
    result = run_in_vm("sleep 600", timeout=20)

    assert result.returncode == -1
    assert result.timed_out
    assert "timed out after 20 s" in result.output
