"""Benchmark: a VS moving between two real Pacemaker nodes, and vsnetctl activate/deactivate.

How it measures: docs/benchmarks.md (`bench/cluster.py`).
"""

from __future__ import annotations

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
from bench.common import Notes, Results
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
MOVE_LIMIT = 0.5
FAILOVER_LIMIT = 3.5
AGENT_START_LIMIT = 0.1
SWITCH_LIMIT = 0.2
SWITCH_SERVERS = 100


def other(node: str) -> str:
    return "node2" if node == "node1" else "node1"


def device_mac(cluster: Cluster, resource: str, node: str) -> str:
    if resource == "nas2":
        return cluster.node(node).mac("nas2", "vs-nas2")
    return cluster.node(node).mac()


# --------------------------------------------------------------------------- planned moves


def planned_moves(cluster: Cluster, rounds: int, results: Results, notes: Notes) -> int:
    """Interleaved rounds of moves; the number of instants seen on both nodes."""
    watched = {name: VS_ADDRESSES[name] for name in RESOURCES}
    moves: list[tuple[str, str, float]] = []
    with Sampler(cluster, watched) as sampler:
        for round_number in range(rounds):
            for resource in RESOURCES:
                source = cluster.where(resource)
                assert source is not None, f"{resource} is not started"
                target = other(source)
                addresses = VS_ADDRESSES[resource]
                for ip_address in addresses:  # the client talks to the VS at its old node
                    if served_by(ip_address, timeout=1.0) != source:
                        notes.note(f"{resource}: {ip_address} not served by {source} before "
                                   "the move")
                started = time.monotonic()
                cluster.move(resource, target)
                results.time(f"move {resource}", reconnect(addresses[0], target, started))
                moves.append((resource, target, started))
                entries = {a: neighbour(a) for a in addresses}
                mac = device_mac(cluster, resource, target)
                followed = sum(1 for e in entries.values() if e and e.get("lladdr") == mac)
                results.count(f"followed {resource}", followed)
                if followed != len(addresses):
                    notes.note(f"round {round_number + 1}: {resource}: neighbour entries "
                               f"{entries} do not all name {mac}")
                wait_for(lambda r=resource, t=target: cluster.where(r) == t, 30,  # type: ignore[misc]
                         f"{resource} Started on {target}")
                exec_ms = cluster.start_exec_ms(resource, target)
                if exec_ms is not None:
                    results.time(f"start {resource}", exec_ms / 1000)
                cluster.clear(resource)
    for resource, target, started in moves:
        up = sampler.first_seen(target, VS_ADDRESSES[resource][0], started)
        if up is not None:
            results.time(f"move {resource} up", up - started)
    results.values["samples"] = sampler.samples
    results.values["overlaps"] = sorted({a for _t, a in sampler.both})
    return len(sampler.both)


# --------------------------------------------------------------------------- node loss


def node_loss(cluster: Cluster, results: Results, notes: Notes, lose_dc: bool = False) -> None:
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
            wait_for(lambda r=resource: cluster.where(r) == victim, 30, f"{resource} on {victim}")  # type: ignore[misc]
            cluster.clear(resource)
    survivor = other(victim)
    time.sleep(1.0)  # a quiet cluster: the clear's transition done
    served: dict[str, float] = {}

    def probe(resource: str) -> None:
        try:
            served[resource] = reconnect(VS_ADDRESSES[resource][0], survivor, killed, 30)
        except TimeoutError as exc:
            notes.note(str(exc))

    with Sampler(cluster, {r: VS_ADDRESSES[r] for r in RESOURCES}) as sampler:
        killed_epoch = time.time()
        killed = time.monotonic()
        cluster.node(victim).kill()
        probes = [threading.Thread(target=probe, args=(r,)) for r in RESOURCES]
        for thread in probes:
            thread.start()
        for thread in probes:
            thread.join()
    membership = cluster.membership_formed_after(survivor, killed_epoch)
    if membership is None:
        notes.note("no new membership found in the survivor's corosync log")
    for resource in RESOURCES:
        if resource not in served:
            continue
        results.time(f"loss {resource}", served[resource])
        requested, result = cluster.start_logged_after(survivor, resource, killed_epoch)
        if membership is None or requested is None or result is None:
            notes.note(f"{resource}: the start's times are missing from the survivor's logs")
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
    agent_by_hand(cluster, cluster.node(survivor), results)


def agent_by_hand(cluster: Cluster, node: Node, results: Results, rounds: int = 5) -> None:
    """The agents' own start and stop, run by hand on a quiet node as Pacemaker's executor
    runs them (a fresh process, OCF_* in the environment), interleaved: vsnet's on nas3
    (a cluster VS no resource manages; three addresses) and IPaddr2 on a spare address."""
    agents: dict[str, tuple[str, dict[str, str]]] = {
        "vsnet": ("/usr/lib/ocf/resource.d/vsnet/server",
                  {"OCF_RESKEY_server": "nas3", "OCF_RESKEY_config": "/mnt/servers.yaml"}),
        "IPaddr2": ("/usr/lib/ocf/resource.d/heartbeat/IPaddr2",
                    {"OCF_RESKEY_ip": "10.77.0.160", "OCF_RESKEY_cidr_netmask": "24",
                     "OCF_RESKEY_nic": "eth0"}),
    }
    for _round in range(rounds):
        for name, (agent, params) in agents.items():
            for action in ("start", "stop"):
                env = dict(node_env(), OCF_ROOT="/usr/lib/ocf", OCF_RESOURCE_INSTANCE=name,
                           **params)
                started = time.perf_counter()
                rc = subprocess.run(node.command([agent, action]), env=env,
                                    capture_output=True).returncode
                seconds = time.perf_counter() - started
                if rc != 0:
                    results.note(f"{name} {action} by hand: exit {rc}")
                results.time(f"hand {name} {action}", seconds)
    floor = []
    for _round in range(rounds):
        started = time.perf_counter()
        subprocess.run(node.command(["true"]), capture_output=True)
        floor.append(time.perf_counter() - started)
    results.values["nsenter"] = statistics.median(floor)


# --------------------------------------------------------------------------- activate


def switch_config(count: int) -> str:
    lines = ["version: 1", "servers:"]
    for number in range(1, count + 1):
        lines += [f"  vs{number}:", f"    id: {number}", "    mode: pbr", "    uplink: eth0",
                  "    placement: cluster", "    addresses:",
                  f"      - address: 10.{20 + number // 250}.{number % 250}.5/24"]
    return "\n".join(lines) + "\n"


def activation(rounds: int, results: Results, notes: Notes) -> None:
    names = [f"vs{n}" for n in range(1, SWITCH_SERVERS + 1)]
    with common.uplinked_netns(), common.config_dir(switch_config(SWITCH_SERVERS)) as (workdir, config):
        env = {"VSNET_ACTIVE": str(workdir / "active")}
        daemon = common.start_daemon(workdir, config, env=env)
        try:
            daemon.ready(60)
            vsnetctl = [*common.console_script("vsnetctl", "vsnetd.ctl"), "-c", str(config)]

            def run(*args: str) -> float:
                started = time.perf_counter()
                result = subprocess.run([*vsnetctl, "--json", *args], capture_output=True,
                                        text=True, env=daemon.env, timeout=60)
                seconds = time.perf_counter() - started
                if result.returncode not in (0, 3):
                    notes.note(f"vsnetctl {args[0]}: exit {result.returncode}: "
                               f"{result.stderr.strip()[:200]}")
                if len(args) > 2:  # the daemon's own part of a 100-VS switch
                    results.time(f"{args[0]} 100 daemon", json.loads(result.stdout)["seconds"])
                return seconds

            for _round in range(rounds):
                results.time("floor", run("is-active", "vs1"))
                results.time("activate 100", run("activate", *names))
                results.time("deactivate 100", run("deactivate", *names))
                results.time("activate 1", run("activate", "vs1"))
                results.time("deactivate 1", run("deactivate", "vs1"))
        finally:
            daemon.stop()


# --------------------------------------------------------------------------- report


def target(name: str, value: Any, limit: Any, unit: str = "s", passed: bool | None = None
           ) -> dict[str, Any]:
    return common.target(name, name, value, limit, unit, passed=passed)


def main(argv: list[str]) -> int:
    parser = common.arguments(__doc__, servers=None)
    parser.add_argument("--rounds", type=int, default=3,
                        help="planned moves per resource, and activation rounds (default 3)")
    parser.add_argument("--token", type=int, default=1000, help="corosync token, ms")
    parser.add_argument("--lose-dc", action="store_true",
                        help="the node lost is the DC (default: the other one)")
    args = parser.parse_args(argv)
    if not common.enter_sandbox(__file__, argv):
        return 1
    results, notes = Results(), Notes()
    info = common.machine()
    activation(args.rounds, results, notes)
    started = time.monotonic()
    with running_cluster(token_ms=args.token) as cluster:
        boot = time.monotonic() - started
        overlaps = planned_moves(cluster, args.rounds, results, notes)
        node_loss(cluster, results, notes, args.lose_dc)
    print(common.machine_line(info) + f"corosync token {args.token} ms; cluster up in {boot:.1f} s; "
          f"node lost: {results.values.get('victim')}")
    print()
    rows = [
        ("move vip", "planned move, IPaddr2, 1 address (floor)"),
        ("move nas1", "planned move, vsnet pbr VS, 3 addresses"),
        ("move nas2", "planned move, vsnet netns VS, 3 addresses"),
        ("move vip up", "  IPaddr2: its address in the new node's kernel"),
        ("move nas1 up", "  pbr: its first address in the new node's kernel"),
        ("move nas2 up", "  netns: its first address in the new node's kernel"),
        ("start vip", "  IPaddr2's start (Pacemaker exec-time)"),
        ("start nas1", "  vsnet agent's start, pbr"),
        ("start nas2", "  vsnet agent's start, netns"),
    ]
    for resource in RESOURCES:
        rows += [(f"loss {resource}", f"node loss -> {resource} served by survivor"),
                 (f"loss {resource} membership", "  membership (corosync log)"),
                 (f"loss {resource} scheduling", "  scheduling (to the start's request)"),
                 (f"loss {resource} start", "  the agent's start (request to result)"),
                 (f"loss {resource} client", "  the client, after the start's result"),
                 (f"loss {resource} up", "  (first address in the survivor's kernel)")]
    rows += [("hand IPaddr2 start", "IPaddr2 start by hand (floor)"),
             ("hand IPaddr2 stop", "IPaddr2 stop by hand"),
             ("hand vsnet start", "vsnet agent start by hand, 3 addresses"),
             ("hand vsnet stop", "vsnet agent stop by hand")]
    rows += [("floor", "vsnetctl is-active, 1 VS (floor)"),
             ("activate 100", f"vsnetctl activate, {SWITCH_SERVERS} VS"),
             ("deactivate 100", f"vsnetctl deactivate, {SWITCH_SERVERS} VS"),
             ("activate 100 daemon", "  of which in vsnetd (activate)"),
             ("deactivate 100 daemon", "  of which in vsnetd (deactivate)"),
             ("activate 1", "vsnetctl activate, 1 VS"),
             ("deactivate 1", "vsnetctl deactivate, 1 VS")]
    print(f"{'measure':<46} {'median':>13} {'min':>13} {'max':>13}")
    for name, label in rows:
        values = results.samples.get(name)
        if values:
            print(f"{label:<46} {common.ms(statistics.median(values))} {common.ms(min(values))} "
                  f"{common.ms(max(values))}")
    print()
    floor = results.median_or_none("move vip")
    checks = []
    for resource in ("nas1", "nas2"):
        move = results.median_or_none(f"move {resource}")
        checks.append(target(f"planned move {resource} (median)", move, MOVE_LIMIT))
        checks.append(target("  x IPaddr2 move in the same run",
                             move / floor if move and floor else None, 1.5, "x floor"))
        followed = results.counts.get(f"followed {resource}", [])
        checks.append(target(f"  neighbour entries on the new MAC ({resource})",
                             f"{sum(followed)}/{len(followed) * len(VS_ADDRESSES[resource])}",
                             "all", "count", bool(followed) and all(
                                 f == len(VS_ADDRESSES[resource]) for f in followed)))
        checks.append(target(f"  agent start {resource} (Pacemaker exec-time, median)",
                             results.median_or_none(f"start {resource}"), AGENT_START_LIMIT))
        checks.append(target(f"node loss -> {resource} served by survivor",
                             results.median_or_none(f"loss {resource}"), FAILOVER_LIMIT))
    hand = results.median_or_none("hand vsnet start")
    checks.append(target("agent start by hand (median)", hand, AGENT_START_LIMIT))
    floor_hand = results.median_or_none("hand IPaddr2 start")
    checks.append(target("  x IPaddr2 start by hand", hand / floor_hand
                         if hand and floor_hand else None, 1.0, "x floor"))
    checks.append(target("addresses on both nodes during planned moves",
                         f"{overlaps} of {results.values.get('samples', 0)} samples", 0, "count",
                         overlaps == 0))
    for name in ("activate 100", "deactivate 100"):
        checks.append(target(f"vsnetctl {name} VS (median)", results.median_or_none(name),
                             SWITCH_LIMIT))

    def show(check: dict[str, Any]) -> str:
        if check["unit"] == "count":
            return f"{check['value']} (want {check['limit']})"
        return common.shown(check)

    common.print_targets(checks, notes.notes + results.notes, show)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
