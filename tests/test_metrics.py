"""Prometheus metrics of a real vsnetd: `vsnetctl metrics`, the HTTP endpoint, and a VS
that cannot be applied made visible (STATUS=, `vsnetctl status`, the metrics)."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.daemons import Daemon, save, wait_until
from tests.sandbox import ip
from vsnetd import client, metrics

pytestmark = pytest.mark.usefixtures("netns")

# `bad`: a macvlan on the loopback device, which the kernel refuses (EINVAL)
CONFIG = """\
version: 1
servers:
  nas1:
    id: 1
    mode: pbr
    uplink: eth0
    addresses: [{address: 10.0.0.5/24, gateway: 10.0.0.1}]
  bad:
    id: 2
    mode: netns
    uplink: lo
    addresses: [{address: 10.1.1.5/24}]
"""
EDITED = """\
version: 1
servers:
  nas1:
    id: 1
    mode: pbr
    uplink: eth0
    addresses: [{address: 10.0.0.6/24, gateway: 10.0.0.1}]
"""
PORT = 9586


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(seen: Samples, name: str, **labels: str) -> float:
    return seen.get((name, frozenset(labels.items())), 0.0)


def vsnetctl(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vsnetd.cli", *args, "-c", str(daemon.config)],
                          capture_output=True, text=True, env=daemon.env, timeout=30)


def last_status(daemon: Daemon) -> str:
    return [m["STATUS"] for m in daemon.notify.poll() if "STATUS" in m][-1]


def scraped(daemon: Daemon) -> Samples:
    result = vsnetctl(daemon, "metrics")
    assert result.returncode == 0, result.stderr
    return samples(result.stdout)


def test_listen_address_forms() -> None:
    assert metrics.parse_listen("127.0.0.1:9586") == ("127.0.0.1", 9586)
    assert metrics.parse_listen("[::1]:9586") == ("::1", 9586)
    assert metrics.parse_listen(":9586") == ("0.0.0.0", 9586)
    for bad in ("9586", "host:", "host:0", "host:70000"):
        with pytest.raises(ValueError, match="ADDR:PORT"):
            metrics.parse_listen(bad)
    assert metrics.trigger_of("reload (generation 3)") == "reload"
    assert metrics.trigger_of("lost track") == "lost_track"


def test_metrics_follow_failures_edits_and_broker_requests(uplink: str, tmp_path: Path) -> None:
    ip("link", "set", "lo", "up")
    config = tmp_path / "etc" / "servers.yaml"
    config.parent.mkdir()
    config.write_text(CONFIG)
    broker = tmp_path / "broker.sock"
    daemon = Daemon(tmp_path, config, ["--broker", str(broker),
                                       "--metrics-listen", f"127.0.0.1:{PORT}"])
    try:
        daemon.ready()
        # the failure is where operators look: STATUS= (systemctl status), vsnetctl status
        assert "1 failed (bad)" in last_status(daemon)
        status = vsnetctl(daemon, "status")
        assert status.returncode == 2, status.stdout + status.stderr
        assert "bad: link bad macvlan on lo netns vs-bad: Invalid argument" in status.stdout

        seen = scraped(daemon)
        assert value(seen, "vsnet_servers", state="failed") == 1
        assert value(seen, "vsnet_servers", state="in-sync") == 1
        assert value(seen, "vsnet_servers_pending") == 1
        assert value(seen, "vsnet_changes_total", kind="link", action="add", result="failed") >= 1
        assert value(seen, "vsnet_changes_total", kind="rule", action="add", result="ok") >= 1
        assert value(seen, "vsnet_reconciles_total", trigger="start") == 1
        assert value(seen, "vsnet_build_info", version=metrics.__version__,
                     python=".".join(map(str, sys.version_info[:3]))) == 1

        # broker requests, by op and result
        with client.Broker(broker) as connection:
            connection.request(op="servers")
            with pytest.raises(client.BrokerRefused, match="unknown-server"):
                connection.request(op="listen", server="nobody", proto="tcp", port=80)
        seen = scraped(daemon)
        assert value(seen, "vsnet_broker_requests_total", op="servers", result="ok") == 1
        assert value(seen, "vsnet_broker_requests_total", op="listen",
                     result="unknown-server") == 1
        assert value(seen, "vsnet_broker_request_duration_seconds_count", op="servers") == 1

        # an edit: the failing VS goes, nas1's address changes; the numbers follow
        before = seen
        save(config, EDITED)
        wait_until(lambda: (s := scraped(daemon)) and value(
            s, "vsnet_reconciles_total", trigger="reload") >= 1 and s, what="the edit's run")
        seen = scraped(daemon)
        assert value(seen, "vsnet_servers", state="failed") == 0
        assert value(seen, "vsnet_servers_pending") == 0
        assert value(seen, "vsnet_edit_to_kernel_seconds_count") == 1
        assert 0 < value(seen, "vsnet_edit_to_kernel_seconds_sum") < 10
        assert (value(seen, "vsnet_changes_total", kind="address", action="add", result="ok")
                > value(before, "vsnet_changes_total", kind="address", action="add",
                        result="ok"))
        assert vsnetctl(daemon, "status").returncode == 0
        wait_until(lambda: "failed" not in last_status(daemon), what="STATUS= without the failure")

        # a refused config is counted, and changes nothing else
        save(config, "version: 1\nservers: {nas1: {id: one}}\n")
        wait_until(lambda: value(scraped(daemon), "vsnet_config_refused_total") == 1,
                   what="the refusal")

        # the HTTP endpoint serves the same series
        with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/metrics", timeout=10) as reply:
            over_http = samples(reply.read().decode())
        assert value(over_http, "vsnet_config_refused_total") == 1
        assert value(over_http, "vsnet_edit_to_kernel_seconds_count") == 1
    finally:
        daemon.stop()


def test_metrics_without_a_daemon_fail_clearly(tmp_path: Path) -> None:
    env = {"VSNET_CONTROL": str(tmp_path / "none.sock"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-m", "vsnetd.cli", "metrics"], capture_output=True,
                            text=True, env=env, timeout=30)
    assert result.returncode == 1
    assert "no vsnetd answers" in result.stderr
