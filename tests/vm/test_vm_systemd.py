"""vsnet under real systemd (PID 1 in the VM), installed from the .deb `make deb` builds,
its unit exactly as shipped. One boot runs ``tests/vm/systemd_scenario.py``; each test
checks one part of what it saw."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import DEB
from tests.vm.harness import HarnessError, ensure_image, run_in_vm
from vsnetd import __version__

pytestmark = pytest.mark.vm
MARKER = "VSNET-SYSTEMD="


@pytest.fixture(scope="module")
def seen() -> dict[str, Any]:
    if not DEB.exists():
        pytest.fail(f"{DEB.name} is missing: `make deb` builds it (make test does)", pytrace=False)
    try:
        ensure_image()
    except HarnessError as error:
        pytest.fail(str(error), pytrace=False)
    result = run_in_vm(".venv/bin/python -m tests.vm.systemd_scenario", timeout=900,
                       init="systemd")
    assert result.returncode == 0, result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith(MARKER)]
    assert lines, result.output
    seen: dict[str, Any] = json.loads(lines[-1].removeprefix(MARKER))  # after the last step
    assert seen.get("done"), result.output
    return seen


def no_error(seen: dict[str, Any], *steps: str) -> None:
    for step in steps:
        assert step not in seen["errors"], seen["errors"][step]


def vsnet_rule_sources(seen: dict[str, Any]) -> set[str]:
    return {r["src"] for r in seen["rules"] if r.get("protocol") == "vsnet"}


def metric(values: dict[str, float], name: str, **labels: str) -> float:
    key = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
                  if labels else "")
    return values.get(key, 0.0)


def test_the_package_installs_and_the_shipped_unit_runs_unmodified(seen: dict[str, Any]) -> None:
    no_error(seen, "setup", "install")
    assert seen["dpkg_install"]["rc"] == 0, seen["dpkg_install"]
    assert seen["group"]["out"].startswith("vsnet:")
    assert seen["after_install"]["ActiveState"] == "active"  # started by postinst
    assert seen["after_install"]["FragmentPath"] == "/lib/systemd/system/vsnetd.service"
    assert seen["after_install"]["DropInPaths"] == ""  # nothing overrides the shipped unit
    assert seen["after_install"]["Type"] == "notify"
    # man pages named in Documentation= exist now: verify checks them too
    assert seen["unit_verify"]["rc"] == 0, seen["unit_verify"]
    assert "CAP_SYS_PTRACE" in seen["unit_cat"] and "CAP_CHOWN" in seen["unit_cat"]


def test_start_reaches_active_with_the_vs_in_the_kernel_and_in_sync(seen: dict[str, Any]) -> None:
    no_error(seen, "start")
    assert seen["start"]["rc"] == 0, seen["start"]
    started = seen["started"]
    assert (started["ActiveState"], started["SubState"]) == ("active", "running")
    assert started["StatusText"].startswith("3 servers in sync"), started["StatusText"]
    assert seen["status_cli"]["rc"] == 0, seen["status_cli"]
    assert {n: s["state"] for n, s in seen["status_json"]["servers"].items()} == {
        "nas1": "in-sync", "iscsi1": "in-sync", "nas2": "in-sync"}
    assert seen["plan"]["rc"] == 0, seen["plan"]  # nothing left to do
    # pbr: the rules, with the protocol name the package's rt_protos entry gives them
    assert {"10.0.0.5", "10.0.1.5", "10.0.0.6"} <= vsnet_rule_sources(seen)
    assert "proto vsnet" in seen["rules_text"]
    # netns: the namespace exists where everyone sees it, not only in vsnetd's mount namespace
    assert "vs-nas2" in seen["netns"]
    assert seen["mount_ns"]["vsnetd"] != seen["mount_ns"]["pid1"]  # ProtectSystem= held
    login = seen["login_shell"]
    assert login["rc"] == 0, login
    (device,) = json.loads(login["out"])
    assert [a["local"] for a in device["addr_info"] if a["family"] == "inet"] == ["10.0.0.7"]
    assert "Status: \"3 servers in sync" in seen["systemctl_status"]


def test_reload_applies_an_edit_logged_with_journal_fields(seen: dict[str, Any]) -> None:
    no_error(seen, "reload")
    assert seen["reload"]["rc"] == 0, seen["reload"]
    assert seen["reload_applied"], seen["addresses_after_reload"]
    addresses = {(dev, ip) for dev, ip, _ in seen["addresses_after_reload"]}
    assert ("eth0", "10.0.0.8") in addresses and ("eth0", "10.0.0.6") not in addresses
    entries = seen["journal_iscsi1"]
    assert entries, "no journal entry with VSNET_SERVER=iscsi1"
    assert all(e["_SYSTEMD_UNIT"] == "vsnetd.service" for e in entries)
    assert any(e["VSNET_OP"].startswith("reload") and "change(s) applied" in e["MESSAGE"]
               for e in entries), entries


def test_metrics_over_http_change_with_an_edit(seen: dict[str, Any]) -> None:
    before, after = seen["metrics_before_edit"], seen["metrics_after_edit"]
    assert metric(before, "vsnet_build_info", python=_python(before), version=__version__) == 1
    assert metric(before, "vsnet_servers", state="in-sync") == 3
    assert metric(before, "vsnet_servers_pending") == 0
    assert metric(before, "vsnet_reconciles_total", trigger="start") == 1
    assert metric(before, "vsnet_changes_total", action="add", kind="rule", result="ok") >= 3
    for name in ("vsnet_heals_total", "vsnet_config_refused_total",
                 "vsnet_edit_to_kernel_seconds_count", "vsnet_reconcile_duration_seconds_count"):
        assert any(key.startswith(name) for key in before), name
    assert metric(after, "vsnet_edit_to_kernel_seconds_count") >= 1
    assert metric(after, "vsnet_reconciles_total", trigger="reload") >= 1
    assert (metric(after, "vsnet_changes_total", action="add", kind="address", result="ok")
            > metric(before, "vsnet_changes_total", action="add", kind="address", result="ok"))


def _python(values: dict[str, float]) -> str:
    (key,) = [k for k in values if k.startswith("vsnet_build_info")]
    return key.split('python="')[1].split('"')[0]


def test_a_vs_that_cannot_be_applied_is_visible(seen: dict[str, Any]) -> None:
    no_error(seen, "failure_visible")
    assert "1 failed (bad)" in seen["failing_status_text"]
    assert "1 failed (bad)" in seen["failing_systemctl_status"]
    assert seen["failing_vsnetctl_status"]["rc"] == 2
    assert "bad: link bad macvlan on lo netns vs-bad: Invalid argument" in (
        seen["failing_vsnetctl_status"]["out"])
    assert metric(seen["failing_metrics"], "vsnet_servers", state="failed") == 1
    assert metric(seen["failing_metrics"], "vsnet_changes_total", action="add", kind="link",
                  result="failed") >= 1
    assert seen["recovered_status_text"].startswith("3 servers in sync")
    assert seen["recovered_vsnetctl_status_rc"] == 0


def test_the_watchdog_is_fed_and_a_killed_daemon_is_restarted_changing_nothing(
    seen: dict[str, Any],
) -> None:
    no_error(seen, "watchdog_and_restart")
    first, second = map(int, seen["watchdog"])
    assert 0 < first < second
    restarted = seen["restarted"]
    assert restarted, "vsnetd was not restarted after SIGKILL"
    assert restarted["NRestarts"] == "1"
    assert restarted["MainPID"] != seen["old_pid"]
    assert seen["restart_kernel_unchanged"]
    # the new process adopted the kernel state: it made no change at all
    assert metric(seen["restart_metrics"], "vsnet_reconciles_total", trigger="start") == 1
    assert sum(v for k, v in seen["restart_metrics"].items()
               if k.startswith("vsnet_changes_total")) == 0
    assert seen["restart_status_rc"] == 0


def test_man_page_and_bash_completion(seen: dict[str, Any]) -> None:
    no_error(seen, "man_and_completion")
    assert seen["man"]["rc"] == 0, seen["man"]
    assert "vsnetctl - validate, plan, apply" in seen["man"]["out"]
    assert "--metrics" not in seen["man"]["err"]
    assert seen["completion"]["rc"] == 0, seen["completion"]
    assert seen["completion"]["out"].splitlines() == ["status", "nas1 nas2", "iscsi1 nas1 nas2"]


def test_apt_remove_leaves_the_kernel_state_and_the_config(seen: dict[str, Any]) -> None:
    no_error(seen, "remove")
    assert seen["apt_remove"]["rc"] == 0, seen["apt_remove"]
    after = seen["after_remove"]
    assert after["active"] == "inactive"
    assert after["kernel_unchanged"]
    assert after["config_kept"] is not None and "nas2" in after["config_kept"]
    assert after["program_gone"]
    assert after["dpkg_status"] == "deinstall ok config-files"


def test_installing_the_same_package_again_changes_nothing_in_the_kernel(
    seen: dict[str, Any],
) -> None:
    no_error(seen, "reinstall")
    for round_ in ("after_remove", "over_installed"):
        assert seen[f"reinstall_{round_}"]["rc"] == 0, seen[f"reinstall_{round_}"]
        assert seen[f"reinstall_{round_}_state"], round_
        assert seen[f"reinstall_{round_}_kernel_unchanged"], round_
        values = seen[f"reinstall_{round_}_metrics"]
        assert sum(v for k, v in values.items() if k.startswith("vsnet_changes_total")) == 0
        assert metric(values, "vsnet_servers", state="in-sync") == 3
    assert "10.0.0.8/24" in seen["config_after_reinstall"]  # the operator's edit stays


def test_foreign_objects_are_untouched(seen: dict[str, Any]) -> None:
    no_error(seen, "foreign")
    assert seen["foreign_before"]["rules"] and seen["foreign_before"]["routes"]
    assert seen["foreign_after"] == seen["foreign_before"]
