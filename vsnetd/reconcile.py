"""The pipeline, driven once: compile -> observe -> diff -> apply -> verify.

Every driver (vsnetctl, the daemon, the benchmarks) calls these functions; none of them
re-implements a step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from vsnetd.apply import ApplyResult, apply_plan
from vsnetd.compile import compile_config
from vsnetd.config import Config
from vsnetd.diff import plan_changes
from vsnetd.netlink import RtnlSocket
from vsnetd.observe import observe
from vsnetd.state import Change, DesiredState, Plan, ServerVerdict

# Verification may find work a first pass could not see (the kernel drops routes whose
# ``src`` address was replaced); a few passes settle it, a persistent failure does not loop.
MAX_ROUNDS = 3


@dataclass(slots=True)
class ConvergeResult:
    first_plan: Plan
    final_plan: Plan
    applied: list[Change] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def servers(self) -> dict[str, ServerVerdict]:
        verdicts = dict(self.final_plan.servers)
        for name, reason in self.failures.items():
            if name in verdicts and verdicts[name].state != "in-sync":
                verdicts[name] = ServerVerdict("failed", (reason,))
        return verdicts

    @property
    def converged(self) -> bool:
        return all(v.state == "in-sync" for v in self.servers.values()) and not self.final_plan


def plan_for(sock: RtnlSocket, desired: DesiredState) -> Plan:
    return plan_changes(desired, observe(sock, desired.scope))


def converge(sock: RtnlSocket, desired: DesiredState) -> ConvergeResult:
    """Apply until the kernel matches ``desired`` (verified by observing again)."""
    started = time.perf_counter()
    observed = observe(sock, desired.scope)
    plan = plan_changes(desired, observed)
    result = ConvergeResult(first_plan=plan, final_plan=plan)
    for _round in range(MAX_ROUNDS):
        todo = Plan(
            changes=tuple(c for c in plan.changes if c.server not in result.failures),
            servers=plan.servers,
        )
        if not todo:
            break
        outcome: ApplyResult = apply_plan(sock, todo, observed.links, desired.scope.protocol)
        result.applied.extend(outcome.applied)
        for name, reason in outcome.failures_by_server().items():
            result.failures.setdefault(name, reason)
        observed = observe(sock, desired.scope)
        plan = plan_changes(desired, observed)
        result.final_plan = plan
    result.seconds = time.perf_counter() - started
    return result


def converge_config(sock: RtnlSocket, config: Config) -> ConvergeResult:
    return converge(sock, compile_config(config))
