"""Prometheus metrics: what the daemon did, for ``vsnetctl metrics`` and ``--metrics-listen``.

The text exposition comes from prometheus_client (never written by hand). The call sites
are one line each, in the modules that know the event:

* :func:`changes` — :func:`vsnetd.apply.apply_plan`, every change with its kind, action
  and result (``ok`` or ``failed``);
* :func:`reconciled` — the daemon after each run (full, scoped or heal): run counts and
  durations, heals, VS by state, edit-to-kernel latency;
* :func:`config_refused` — the daemon, when a config file is refused whole;
* :func:`broker_served` — the broker's observer, after each request it serves;
* :func:`exposition` / :func:`serve` — the control socket's ``metrics`` op and the HTTP
  endpoint.

Metric names follow Prometheus' conventions: ``vsnet_`` prefix, base units (seconds),
``_total`` for counters.
"""

from __future__ import annotations

import sys
import time
from bisect import bisect_left
from collections.abc import Iterator
from itertools import accumulate
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vsnetd import __version__

if TYPE_CHECKING:
    from vsnetd.apply import ApplyResult
    from vsnetd.reconcile import ConvergeResult
    from vsnetd.state import ServerVerdict

SERVER_STATES = ("in-sync", "pending", "waiting", "conflict", "failed")
# A one-VS edit reaches the kernel in milliseconds; a 1,000-VS start takes seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0)
BROKER_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                  0.25, 1.0)
# An edit older than this when its reconcile ends was not "just saved": a SIGHUP long
# after the file changed, or a retry. Its age says nothing about vsnet's latency.
EDIT_RECENT_SECONDS = 300.0


class _Metrics:
    """Every series vsnet exports, registered in prometheus_client's default registry
    (which adds the process_* series: CPU, memory, open descriptors)."""

    def __init__(self) -> None:
        from prometheus_client import REGISTRY, Counter, Gauge, Histogram, Info

        self.build = Info("vsnet_build", "vsnet's version and the Python running it")
        self.build.info({"version": __version__,
                         "python": ".".join(map(str, sys.version_info[:3]))})
        self.reconciles = Counter("vsnet_reconciles", "Pipeline runs of the daemon, by what "
                                  "started them", ["trigger"])
        self.reconcile_seconds = Histogram(
            "vsnet_reconcile_duration_seconds", "Duration of a pipeline run (observe, diff, "
            "apply, verify)", ["trigger"], buckets=LATENCY_BUCKETS)
        self.changes = Counter("vsnet_changes", "Kernel changes vsnet made, by object kind, "
                               "action and result", ["kind", "action", "result"])
        self.heals = Counter("vsnet_heals", "Heals that changed the kernel: objects of a VS "
                             "changed or vanished behind vsnet's back and were put back")
        self.refused = Counter("vsnet_config_refused", "Config files refused whole (the last "
                               "good one stays applied)")
        self.servers = Gauge("vsnet_servers", "Virtual servers of the config, by state",
                             ["state"])
        self.pending = Gauge("vsnet_servers_pending", "Virtual servers not in sync with the "
                             "kernel (pending, waiting, in conflict or failed)")
        self.last_reconcile = Gauge("vsnet_last_reconcile_timestamp_seconds",
                                    "When the last pipeline run ended (Unix time)")
        self.edit_to_kernel = Histogram(
            "vsnet_edit_to_kernel_seconds", "From the config file's modification to the end "
            "of the run that applied it", buckets=LATENCY_BUCKETS)
        self.broker = _BrokerTally()
        REGISTRY.register(self.broker)
        for state in SERVER_STATES:  # every state present, 0 or not: alerts need no absent()
            self.servers.labels(state).set(0)


class _BrokerTally:
    """The broker's requests: by op and result, and how long each took, by op. The broker's
    thread adds to plain counts (a metric's ``inc`` and ``observe`` take a lock and walk
    the buckets: ~2 µs, a tenth of what serving a request costs); a scrape turns them into
    the two series ``vsnet_broker_requests_total`` and
    ``vsnet_broker_request_duration_seconds``."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str], int] = {}  # (op, result) -> count
        self.buckets: dict[str, list[int]] = {}  # op -> count per bucket, +Inf last
        self.nanoseconds: dict[str, int] = {}  # op -> sum of durations

    def add(self, op: str, result: str, nanoseconds: int) -> None:
        key = (op, result)
        self.requests[key] = self.requests.get(key, 0) + 1
        buckets = self.buckets.get(op)
        if buckets is None:
            buckets = self.buckets[op] = [0] * (len(BROKER_BUCKETS) + 1)
            self.nanoseconds[op] = 0
        buckets[bisect_left(BROKER_BUCKETS, nanoseconds / 1e9)] += 1  # le: bound included
        self.nanoseconds[op] += nanoseconds

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        requests = CounterMetricFamily("vsnet_broker_requests", "Broker requests, by op and "
                                       "result (ok, or the error code)", labels=["op", "result"])
        for (op, result), count in sorted(list(self.requests.items())):  # a copy: the broker adds
            requests.add_metric([op, result], count)
        yield requests
        seconds = HistogramMetricFamily(
            "vsnet_broker_request_duration_seconds", "Time to serve a broker request, its "
            "sockets made and sent", labels=["op"])
        for op, counts in sorted(list(self.buckets.items())):
            cumulative = list(accumulate(counts))
            bounds = [*(repr(bound) for bound in BROKER_BUCKETS), "+Inf"]
            seconds.add_metric([op], list(zip(bounds, cumulative, strict=True)),
                               self.nanoseconds.get(op, 0) / 1e9)
        yield seconds


# None until enable(): one-shot processes (vsnetctl) spare the import (~50 ms) and count nothing.
_metrics: _Metrics | None = None


def enable() -> None:
    """Start counting (the daemon, once at start)."""
    global _metrics
    if _metrics is None:
        _metrics = _Metrics()


def changes(result: ApplyResult) -> None:
    if (m := _metrics) is None:
        return
    for change in result.applied:
        m.changes.labels(change.obj.kind, change.action, "ok").inc()
    for change, _error in result.failed:
        m.changes.labels(change.obj.kind, change.action, "failed").inc()


def trigger_of(why: str) -> str:
    """The daemon's reason ("reload (generation 3)", "changed in the kernel": a heal) as a
    label value."""
    reason = why.split(" (")[0]
    return "heal" if reason == "changed in the kernel" else reason.replace(" ", "_")


def reconciled(result: ConvergeResult, why: str, verdicts: dict[str, ServerVerdict],
               config: Path) -> None:
    if (m := _metrics) is None:
        return
    trigger = trigger_of(why)
    m.reconciles.labels(trigger).inc()
    m.reconcile_seconds.labels(trigger).observe(result.seconds)
    m.last_reconcile.set_to_current_time()
    if trigger == "heal" and result.applied:
        m.heals.inc()
    counts = dict.fromkeys(SERVER_STATES, 0)
    for verdict in verdicts.values():
        counts[verdict.state] = counts.get(verdict.state, 0) + 1
    for state, count in counts.items():
        m.servers.labels(state).set(count)
    m.pending.set(sum(count for state, count in counts.items() if state != "in-sync"))
    if trigger == "reload" and result.applied:
        try:
            age = time.time() - config.stat().st_mtime
        except OSError:
            return
        if 0 <= age < EDIT_RECENT_SECONDS:
            m.edit_to_kernel.observe(age)


def config_refused() -> None:
    if _metrics is not None:
        _metrics.refused.inc()


def broker_served(op: str, result: str, nanoseconds: int) -> None:
    """One broker request served (the broker's observer, vsnetd/broker/server.py): ``ok``,
    the error code it was refused with, or ``dropped``."""
    if (m := _metrics) is not None:
        m.broker.add(op, result, nanoseconds)


def exposition() -> str:
    """The Prometheus text format (version 0.0.4) of every metric of this process."""
    from prometheus_client import REGISTRY, generate_latest

    return generate_latest(REGISTRY).decode()


def parse_listen(text: str) -> tuple[str, int]:
    """``ADDR:PORT`` (``[v6]:PORT`` for IPv6) for ``--metrics-listen``."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: expected ADDR:PORT, e.g. 127.0.0.1:9586 or [::1]:9586")
    return host.strip("[]") or "0.0.0.0", int(port)


def serve(text: str) -> Any:
    """Start the HTTP endpoint (any path, ``/metrics`` by convention) on a thread of its own."""
    from prometheus_client import start_http_server

    enable()
    host, port = parse_listen(text)
    return start_http_server(port, addr=host)
