"""Run inside the VM with the host's systemd as PID 1: vsnet as an operator gets it.

The package `make deb` built is installed with ``dpkg -i``; its unit runs exactly as
shipped. One boot, one process, every step recorded in one JSON document (printed on
the line ``VSNET-SYSTEMD=...``) that ``test_vm_systemd.py`` asserts on. A step that fails
records its error and the next ones still run, so one defect does not hide the others.

The uplink is a veth ``eth0`` (its peer ``eth0p`` plays the LAN); the VS are those of
the example config shipped in /usr/share/doc/vsnet/examples/servers.yaml: nas1 and iscsi1
in pbr mode, nas2 in netns mode (a macvlan on eth0). Foreign objects (a rule, a route) are
there from the start and must be there, unchanged, at the end.
"""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parents[2]
EXAMPLE = Path("/usr/share/doc/vsnet/examples/servers.yaml")
CONFIG = Path("/etc/vsnet/servers.yaml")
METRICS = "http://127.0.0.1:9586/metrics"
FOREIGN_RULE = ["from", "192.0.2.99", "lookup", "200", "priority", "500"]
FOREIGN_ROUTE = ["198.51.100.0/24", "dev", "eth0p", "table", "200"]
# a VS the kernel refuses: a macvlan on the loopback device (EINVAL)
BAD_VS = "  bad: {id: 9, mode: netns, uplink: lo, addresses: [{address: 10.9.9.9/24}]}\n"

out: dict[str, Any] = {"errors": {}}


def sh(*argv: str, check: bool = False, env: dict[str, str] | None = None) -> dict[str, Any]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300,
                            env={**os.environ, **(env or {})})
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {result.returncode}: {result.stdout}{result.stderr}")
    return {"rc": result.returncode, "out": result.stdout, "err": result.stderr}


def ip_json(*argv: str) -> Any:
    return json.loads(sh("ip", "-j", *argv, check=True)["out"] or "[]")


def wait_for(check: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def show(*properties: str) -> dict[str, str]:
    text = sh("systemctl", "show", "vsnetd", *(f"-p{p}" for p in properties))["out"]
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def snapshot() -> dict[str, Any]:
    """The kernel's view of everything vsnet (or anyone) set up, normalised for comparison."""
    namespaces = sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else []
    view: dict[str, Any] = {
        "rules": ip_json("-4", "rule") + ip_json("-6", "rule"),
        "routes": [r for r in ip_json("route", "show", "table", "all")
                   + ip_json("-6", "route", "show", "table", "all") if r.get("type") != "local"],
        "links": sorted((link["ifname"], link["ifindex"]) for link in ip_json("link")),
        "addresses": sorted((a["ifname"], i["local"], i["prefixlen"])
                            for a in ip_json("addr") for i in a["addr_info"]),
        "namespaces": {name: os.stat(f"/run/netns/{name}").st_ino for name in namespaces},
    }
    for name in namespaces:
        view[f"ns:{name}"] = {
            "links": sorted((link["ifname"], link["ifindex"])
                            for link in ip_json("-n", name, "link")),
            "addresses": sorted((a["ifname"], i["local"], i["prefixlen"])
                                for a in ip_json("-n", name, "addr") for i in a["addr_info"]),
            "routes": ip_json("-n", name, "route", "show", "table", "all"),
        }
    return view


def metrics() -> dict[str, float]:
    text = sh("curl", "-sf", "--max-time", "10", METRICS)["out"]
    values = {}
    for line in text.splitlines():
        match = re.match(r"^([a-z_]+(?:\{[^}]*\})?) (\S+)$", line)
        if match:
            values[match.group(1)] = float(match.group(2))
    return values


def changes_made(values: dict[str, float]) -> float:
    return sum(v for k, v in values.items() if k.startswith("vsnet_changes_total"))


def step(name: str) -> Callable[[Callable[[], None]], Callable[[], None]]:
    """Run the decorated function now; record its error; say how long it took (emulation
    is slow: the log shows where the time goes, even when the VM is killed half-way)."""
    def run(body: Callable[[], None]) -> Callable[[], None]:
        started = time.monotonic()
        print(f"step {name}...", flush=True)
        try:
            body()
        except Exception:
            out["errors"][name] = traceback.format_exc()
            print(out["errors"][name], flush=True)
        print(f"step {name}: {time.monotonic() - started:.1f} s", flush=True)
        print("VSNET-SYSTEMD=" + json.dumps(out), flush=True)  # the last one counts
        return body
    return run


def main() -> None:
    deb = sorted(glob.glob(str(PROJECT / "dist" / "vsnet_*_amd64.deb")))[-1]
    out["deb"] = os.path.basename(deb)

    @step("setup")
    def _() -> None:
        sh("modprobe", "-a", "veth", "macvlan", "8021q", check=True)
        # man-db's trigger would index every man page of the host: minutes under emulation
        Path("/var/lib/man-db/auto-update").unlink(missing_ok=True)
        # run from `make test`, the VM sees the test sandbox's /etc/iproute2/rt_protos.d,
        # which registers vsnet's protocol itself: dpkg would ask about its conffile there
        Path("/etc/iproute2/rt_protos.d/vsnet.conf").unlink(missing_ok=True)
        sh("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p", check=True)
        for dev in ("eth0", "eth0p"):
            sh("ip", "link", "set", dev, "up", check=True)
        sh("ip", "rule", "add", *FOREIGN_RULE, check=True)
        sh("ip", "route", "add", *FOREIGN_ROUTE, check=True)
        out["foreign_before"] = {"rules": [r for r in ip_json("rule") if r.get("src") == "192.0.2.99"],
                                 "routes": ip_json("route", "show", "table", "200")}

    @step("install")
    def _() -> None:
        out["dpkg_install"] = sh("dpkg", "-i", deb)
        out["after_install"] = show("ActiveState", "SubState", "StatusText", "FragmentPath",
                                    "DropInPaths", "Type")
        out["group"] = sh("getent", "group", "vsnet")
        out["unit_verify"] = sh("systemd-analyze", "verify", "vsnetd.service")
        out["unit_cat"] = sh("systemctl", "cat", "vsnetd")["out"]

    @step("start")
    def _() -> None:
        sh("systemctl", "stop", "vsnetd", check=True)
        CONFIG.write_text(EXAMPLE.read_text())
        Path("/etc/default/vsnetd").write_text('VSNETD_OPTS="--metrics-listen 127.0.0.1:9586"\n')
        out["start"] = sh("systemctl", "start", "vsnetd")
        out["started"] = show("ActiveState", "SubState", "StatusText", "MainPID", "NRestarts",
                              "WatchdogTimestampMonotonic", "WatchdogUSec")
        out["status_cli"] = sh("vsnetctl", "status", "--json")
        out["status_json"] = json.loads(out["status_cli"]["out"])
        out["plan"] = sh("vsnetctl", "plan")
        out["rules"] = ip_json("rule")
        out["rules_text"] = sh("ip", "rule")["out"]
        out["netns"] = sh("ip", "netns", "list")["out"]
        pid = out["started"]["MainPID"]
        out["mount_ns"] = {"vsnetd": os.readlink(f"/proc/{pid}/ns/mnt"),
                           "pid1": os.readlink("/proc/1/ns/mnt")}
        out["login_shell"] = sh("bash", "-lc", "ip netns exec vs-nas2 ip -j addr show dev nas2")
        out["systemctl_status"] = sh("systemctl", "status", "--no-pager", "-n0", "vsnetd")["out"]
        out["metrics_before_edit"] = wait_for(metrics, 20)

    @step("reload")
    def _() -> None:
        edited = CONFIG.read_text().replace("10.0.0.6/24", "10.0.0.8/24")
        assert edited != CONFIG.read_text()
        CONFIG.write_text(edited)
        out["reload"] = sh("systemctl", "reload", "vsnetd")
        out["reload_applied"] = bool(wait_for(lambda: any(
            a[1] == "10.0.0.8" for a in snapshot()["addresses"]), 30))
        out["addresses_after_reload"] = snapshot()["addresses"]
        out["metrics_after_edit"] = wait_for(
            lambda: (m := metrics()) and m.get("vsnet_edit_to_kernel_seconds_count", 0) >= 1 and m,
            20) or metrics()
        journal = sh("journalctl", "-u", "vsnetd", "-o", "json", "--no-pager",
                     "VSNET_SERVER=iscsi1")["out"]
        out["journal_iscsi1"] = [
            {k: e.get(k) for k in ("MESSAGE", "VSNET_SERVER", "VSNET_OP", "PRIORITY",
                                   "_SYSTEMD_UNIT")}
            for e in map(json.loads, journal.splitlines())]

    @step("failure_visible")
    def _() -> None:
        CONFIG.write_text(CONFIG.read_text() + BAD_VS)
        sh("systemctl", "reload", "vsnetd")
        out["failing_status_text"] = wait_for(
            lambda: "failed" in (s := show("StatusText")["StatusText"]) and s, 30)
        out["failing_systemctl_status"] = sh("systemctl", "status", "--no-pager", "-n0",
                                             "vsnetd")["out"]
        out["failing_vsnetctl_status"] = sh("vsnetctl", "status")
        out["failing_metrics"] = metrics()
        CONFIG.write_text(CONFIG.read_text().replace(BAD_VS, ""))
        sh("systemctl", "reload", "vsnetd")
        out["recovered_status_text"] = wait_for(
            lambda: "failed" not in (s := show("StatusText")["StatusText"]) and s, 30)
        out["recovered_vsnetctl_status_rc"] = sh("vsnetctl", "status")["rc"]

    @step("watchdog_and_restart")
    def _() -> None:
        # WatchdogSec=30s: a ping every 15 s; two readings 16 s apart see a new one
        first = show("WatchdogTimestampMonotonic")["WatchdogTimestampMonotonic"]
        time.sleep(16)
        second = show("WatchdogTimestampMonotonic")["WatchdogTimestampMonotonic"]
        out["watchdog"] = [first, second]
        before = snapshot()
        old = show("MainPID")["MainPID"]
        sh("kill", "-9", old, check=True)
        out["restarted"] = wait_for(lambda: (s := show("MainPID", "ActiveState", "NRestarts",
                                                        "SubState"))
                                    and s["MainPID"] not in ("0", old)
                                    and s["ActiveState"] == "active" and s, 90)
        out["old_pid"] = old
        out["restart_metrics"] = wait_for(metrics, 20)
        out["restart_kernel_unchanged"] = snapshot() == before
        out["restart_status_rc"] = sh("vsnetctl", "status")["rc"]

    @step("man_and_completion")
    def _() -> None:
        out["man"] = sh("man", "vsnetctl", env={"MANWIDTH": "80", "PAGER": "cat"})
        completion = r"""
            source /usr/share/bash-completion/bash_completion
            complete_line() {
                COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 )); COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}
                _completion_loader "$1"
                local fn; fn=$(complete -p "$1" | sed 's/.*-F \([^ ]*\).*/\1/')
                COMPREPLY=(); "$fn" "$1" "${COMP_WORDS[-1]}" "${COMP_WORDS[-2]}"
                echo "${COMPREPLY[*]}"
            }
            complete_line vsnetctl st
            complete_line vsnetctl status n
            complete_line vsnet-exec --server ""
        """
        out["completion"] = sh("bash", "-c", completion)

    @step("remove")
    def _() -> None:
        before = snapshot()
        out["apt_remove"] = sh("apt-get", "remove", "-y", "vsnet",
                               env={"DEBIAN_FRONTEND": "noninteractive"})
        out["after_remove"] = {
            "active": sh("systemctl", "is-active", "vsnetd")["out"].strip(),
            "kernel_unchanged": snapshot() == before,
            "config_kept": CONFIG.read_text() if CONFIG.exists() else None,
            "program_gone": not Path("/opt/vsnet/bin/vsnetd").exists(),
            "dpkg_status": sh("dpkg-query", "-W", "-f=${Status}", "vsnet")["out"],
        }

    @step("reinstall")
    def _() -> None:
        before = snapshot()
        for round_ in ("after_remove", "over_installed"):
            out[f"reinstall_{round_}"] = sh("dpkg", "-i", deb)
            state = wait_for(lambda: (s := show("ActiveState", "MainPID"))
                             and s["ActiveState"] == "active" and s, 60)
            out[f"reinstall_{round_}_state"] = state
            out[f"reinstall_{round_}_metrics"] = wait_for(metrics, 20)
            out[f"reinstall_{round_}_kernel_unchanged"] = snapshot() == before
        out["config_after_reinstall"] = CONFIG.read_text()

    @step("foreign")
    def _() -> None:
        out["foreign_after"] = {"rules": [r for r in ip_json("rule") if r.get("src") == "192.0.2.99"],
                                "routes": ip_json("route", "show", "table", "200")}

    out["done"] = True
    print("VSNET-SYSTEMD=" + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
