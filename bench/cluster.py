"""Benchmark: a VS moving between two real Pacemaker nodes, and vsnetctl activate/deactivate.

How it measures: docs/benchmarks.md (`bench/cluster.py`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common
from bench.common import Results
from tests.cluster import (
    VS_ADDRESSES,
    Cluster,
    Node,
    Sampler,
    neighbour,
    node_env,
    reconnect,
    running_cluster,
    served_by,
    wait_for,
)

RESOURCES = ("vip", "nas1", "nas2")
MOVE_LIMIT, FAILOVER_LIMIT, AGENT_START_LIMIT, SWITCH_LIMIT = 0.5, 3.5, 0.1, 0.2
SWITCH_SERVERS = 100
OPTIONS: dict[str, common.Option] = {
    "--rounds": (3, "planned moves per resource, and activation rounds"),
    "--token": (1000, "corosync token, ms"),
    "--lose-dc": (False, "the node lost is the DC (default: the other one)"),
}
# the agents run by hand (as Pacemaker's executor runs them): vsnet's on nas3 (a cluster VS
# no resource manages; three addresses) and IPaddr2 on a spare address
AGENTS = {
    "vsnet": ("/usr/lib/ocf/resource.d/vsnet/server",
              {"OCF_RESKEY_server": "nas3", "OCF_RESKEY_config": "/mnt/servers.yaml"}),
    "IPaddr2": ("/usr/lib/ocf/resource.d/heartbeat/IPaddr2",
                {"OCF_RESKEY_ip": "10.77.0.160", "OCF_RESKEY_cidr_netmask": "24",
                 "OCF_RESKEY_nic": "eth0"}),
}
ROWS = [
    ("move vip", "planned move, IPaddr2, 1 address (floor)"),
    ("move nas1", "planned move, vsnet pbr VS, 3 addresses"),
    ("move nas2", "planned move, vsnet netns VS, 3 addresses"),
    ("move vip up", "  IPaddr2: its address in the new node's kernel"),
    ("move nas1 up", "  pbr: its first address in the new node's kernel"),
    ("move nas2 up", "  netns: its first address in the new node's kernel"),
    ("start vip", "  IPaddr2's start (Pacemaker exec-time)"),
    ("start nas1", "  vsnet agent's start, pbr"),
    ("start nas2", "  vsnet agent's start, netns"),
    *((f"loss {resource}{part}", label.format(resource)) for resource in RESOURCES
      for part, label in (("", "node loss -> {} served by survivor"),
                          (" membership", "  membership (corosync log)"),
                          (" scheduling", "  scheduling (to the start's request)"),
                          (" start", "  the agent's start (request to result)"),
                          (" client", "  the client, after the start's result"),
                          (" up", "  (first address in the survivor's kernel)"))),
    ("hand IPaddr2 start", "IPaddr2 start by hand (floor)"),
    ("hand IPaddr2 stop", "IPaddr2 stop by hand"),
    ("hand vsnet start", "vsnet agent start by hand, 3 addresses"),
    ("hand vsnet stop", "vsnet agent stop by hand"),
    ("floor", "vsnetctl is-active, 1 VS (floor)"),
    ("activate 100", f"vsnetctl activate, {SWITCH_SERVERS} VS"),
    ("deactivate 100", f"vsnetctl deactivate, {SWITCH_SERVERS} VS"),
    ("activate 100 daemon", "  of which in vsnetd (activate)"),
    ("deactivate 100 daemon", "  of which in vsnetd (deactivate)"),
    ("activate 1", "vsnetctl activate, 1 VS"),
    ("deactivate 1", "vsnetctl deactivate, 1 VS"),
]


def other(node: str) -> str:
    return "node2" if node == "node1" else "node1"


def planned_moves(cluster: Cluster, rounds: int, results: Results) -> None:
    """Interleaved rounds of moves; the instants seen on both nodes."""
    moves: list[tuple[str, str, float]] = []
    with Sampler(cluster, {name: VS_ADDRESSES[name] for name in RESOURCES}) as sampler:
        for round_number in range(rounds):
            for resource in RESOURCES:
                source = cluster.where(resource)
                assert source is not None, f"{resource} is not started"
                target, addresses = other(source), VS_ADDRESSES[resource]
                for address in addresses:  # the client talks to the VS at its old node
                    if served_by(address, timeout=1.0) != source:
                        results.note(f"{resource}: {address} not served by {source} before the "
                                     "move")
                started = time.monotonic()
                cluster.move(resource, target)
                results.time(f"move {resource}", reconnect(addresses[0], target, started))
                moves.append((resource, target, started))
                entries = {a: neighbour(a) for a in addresses}
                mac = (cluster.node(target).mac("nas2", "vs-nas2") if resource == "nas2"
                       else cluster.node(target).mac())
                followed = sum(1 for e in entries.values() if e and e.get("lladdr") == mac)
                results.count(f"followed {resource}", followed)
                if followed != len(addresses):
                    results.note(f"round {round_number + 1}: {resource}: neighbour entries "
                                 f"{entries} do not all name {mac}")
                wait_for(lambda r=resource, t=target: cluster.where(r) == t,  # type: ignore[misc]
                         30, f"{resource} Started on {target}")
                exec_ms = cluster.start_exec_ms(resource, target)
                if exec_ms is not None:
                    results.time(f"start {resource}", exec_ms / 1000)
                cluster.clear(resource)
    for resource, target, started in moves:
        up = sampler.first_seen(target, VS_ADDRESSES[resource][0], started)
        if up is not None:
            results.time(f"move {resource} up", up - started)
    results.values.update(samples=sampler.samples, overlaps=sorted({a for _t, a in sampler.both}),
                          both=len(sampler.both))


def node_loss(cluster: Cluster, results: Results, lose_dc: bool) -> None:
    """The node that holds the resources dies: by default not the DC (losing the DC as
    well adds an election and the new DC's join round to the scheduling: ``--lose-dc``)."""
    dc = cluster.dc()
    victim = (dc if lose_dc else other(dc)) if dc is not None else cluster.where("nas1")
    assert victim is not None
    results.values["victim"] = f"{victim} (DC: {dc})"
    for resource in RESOURCES:
        if cluster.where(resource) != victim:
            cluster.move(resource, victim)
            reconnect(VS_ADDRESSES[resource][0], victim, time.monotonic())
            wait_for(lambda r=resource: cluster.where(r) == victim,  # type: ignore[misc]
                     30, f"{resource} on {victim}")
            cluster.clear(resource)
    survivor = other(victim)
    time.sleep(1.0)  # a quiet cluster: the clear's transition done
    served: dict[str, float] = {}

    def probe(resource: str) -> None:
        try:
            served[resource] = reconnect(VS_ADDRESSES[resource][0], survivor, killed, 30)
        except TimeoutError as exc:
            results.note(str(exc))

    with Sampler(cluster, {r: VS_ADDRESSES[r] for r in RESOURCES}) as sampler:
        killed_epoch, killed = time.time(), time.monotonic()
        cluster.node(victim).kill()
        probes = [threading.Thread(target=probe, args=(r,)) for r in RESOURCES]
        for thread in probes:
            thread.start()
        for thread in probes:
            thread.join()
    membership = cluster.membership_formed_after(survivor, killed_epoch)
    if membership is None:
        results.note("no new membership found in the survivor's corosync log")
    for resource in (r for r in RESOURCES if r in served):
        results.time(f"loss {resource}", served[resource])
        requested, result = cluster.start_logged_after(survivor, resource, killed_epoch)
        if membership is None or requested is None or result is None:
            results.note(f"{resource}: the start's times are missing from the survivor's logs")
            continue
        results.time(f"loss {resource} membership", membership - killed_epoch)
        results.time(f"loss {resource} scheduling", requested - membership)
        results.time(f"loss {resource} start", result - requested)
        results.time(f"loss {resource} client", served[resource] - (result - killed_epoch))
        seen = sampler.first_seen(survivor, VS_ADDRESSES[resource][0], killed)
        if seen is not None:
            results.time(f"loss {resource} up", seen - killed)
        exec_ms = cluster.start_exec_ms(resource, survivor)
        if exec_ms is not None:
            results.time(f"start {resource}", exec_ms / 1000)
    agent_by_hand(cluster.node(survivor), results)


def agent_by_hand(node: Node, results: Results, rounds: int = 5) -> None:
    """The agents' own start and stop on a quiet node, interleaved (a fresh process, OCF_*
    in the environment); and the floor of entering the node (``nsenter ... true``)."""
    for _round in range(rounds):
        for name, (agent, params) in AGENTS.items():
            for action in ("start", "stop"):
                env = dict(node_env(), OCF_ROOT="/usr/lib/ocf", OCF_RESOURCE_INSTANCE=name,
                           **params)
                seconds, done = common.timed(subprocess.run, node.command([agent, action]),
                                             env=env, capture_output=True)
                if done.returncode != 0:
                    results.note(f"{name} {action} by hand: exit {done.returncode}")
                results.time(f"hand {name} {action}", seconds)
    results.values["nsenter"] = statistics.median(
        common.timed(subprocess.run, node.command(["true"]), capture_output=True)[0]
        for _round in range(rounds))


def activation(rounds: int, results: Results) -> None:
    """``vsnetctl activate``/``deactivate`` of 100 cluster VS against a daemon, and 1."""
    names = [f"vs{n}" for n in range(1, SWITCH_SERVERS + 1)]
    text = "version: 1\nservers:\n" + "".join(
        f"  vs{n}: {{id: {n}, mode: pbr, uplink: eth0, placement: cluster, "
        f"addresses: [{{address: 10.{20 + n // 250}.{n % 250}.5/24}}]}}\n"
        for n in range(1, SWITCH_SERVERS + 1))
    with common.uplinked_netns(), common.config_dir(text) as (workdir, config), \
            common.running_daemon(workdir, config, results,
                                  env={"VSNET_ACTIVE": str(workdir / "active")}) as daemon:
        daemon.ready(60)

        def run(name: str, *args: str) -> None:
            seconds, result = common.timed(
                subprocess.run, common.vsnetctl("-c", str(config), "--json", *args),
                capture_output=True, text=True, env=daemon.env, timeout=60)
            if result.returncode not in (0, 3):
                results.note(f"vsnetctl {args[0]}: exit {result.returncode}: "
                             f"{result.stderr.strip()[:200]}")
            results.time(name, seconds)
            if len(args) > 2:  # the daemon's own part of a 100-VS switch
                results.time(f"{name} daemon", json.loads(result.stdout)["seconds"])

        for _round in range(rounds):
            run("floor", "is-active", "vs1")
            for action in ("activate", "deactivate"):
                run(f"{action} 100", action, *names)
            for action in ("activate", "deactivate"):
                run(f"{action} 1", action, "vs1")


def measure(args: argparse.Namespace) -> Results:
    results = Results()
    activation(args.rounds, results)
    started = time.monotonic()
    with running_cluster(token_ms=args.token) as cluster:
        results.values["boot"] = time.monotonic() - started
        planned_moves(cluster, args.rounds, results)
        node_loss(cluster, results, args.lose_dc)
    return results


def targets(args: argparse.Namespace, results: Results) -> list[dict[str, Any]]:
    median = results.median_or_none

    def check(name: str, value: Any, limit: Any, unit: str = "s", passed: bool | None = None
              ) -> dict[str, Any]:
        return common.target(name, name, value, limit, unit, passed=passed)

    checks = []
    for resource in ("nas1", "nas2"):
        move, followed = median(f"move {resource}"), results.counts.get(f"followed {resource}", [])
        want = len(VS_ADDRESSES[resource])
        checks += [
            check(f"planned move {resource} (median)", move, MOVE_LIMIT),
            check("  x IPaddr2 move in the same run", common.ratio(move, median("move vip")), 1.5,
                  "x floor"),
            check(f"  neighbour entries on the new MAC ({resource})",
                  f"{sum(followed)}/{len(followed) * want}", "all", "count",
                  bool(followed) and all(f == want for f in followed)),
            check(f"  agent start {resource} (Pacemaker exec-time, median)",
                  median(f"start {resource}"), AGENT_START_LIMIT),
            check(f"node loss -> {resource} served by survivor", median(f"loss {resource}"),
                  FAILOVER_LIMIT)]
    hand, both = median("hand vsnet start"), results.values.get("both", 0)
    return [*checks,
            check("agent start by hand (median)", hand, AGENT_START_LIMIT),
            check("  x IPaddr2 start by hand", common.ratio(hand, median("hand IPaddr2 start")),
                  1.0, "x floor"),
            check("addresses on both nodes during planned moves",
                  f"{both} of {results.values.get('samples', 0)} samples", 0, "count", both == 0),
            *(check(f"vsnetctl {name} VS (median)", median(name), SWITCH_LIMIT)
              for name in ("activate 100", "deactivate 100"))]


def table(info: dict[str, Any], args: argparse.Namespace, results: Results) -> None:
    print(common.machine_line(info) + f"corosync token {args.token} ms; cluster up in "
          f"{results.values['boot']:.1f} s; node lost: {results.values.get('victim')}")
    print()
    common.print_measures(results, ROWS, floor=None)


def as_json(args: argparse.Namespace, results: Results) -> dict[str, Any]:
    return {"benchmark": "cluster", "rounds": args.rounds, "token_ms": args.token,
            "samples_s": results.samples, "counts": results.counts, "values": results.values}


if __name__ == "__main__":
    sys.exit(common.main(__file__, __doc__, sys.argv[1:], OPTIONS, measure, table, as_json,
                         targets))
