"""The pipeline, driven once: compile -> observe -> diff -> apply -> verify.

Every driver (vsnetctl, the daemon, the benchmarks) calls these functions; none of them
re-implements a step.
"""

from __future__ import annotations

import gc
import itertools
import operator
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from vsnetd.apply import ApplyResult, apply_plan
from vsnetd.diff import plan_changes
from vsnetd.kernel import Kernel
from vsnetd.kinds import KernelObject, Namespace
from vsnetd.netlink import DumpMemo
from vsnetd.observe import observe, refresh
from vsnetd.state import (
    Change,
    DesiredServer,
    DesiredState,
    ObjectKey,
    ObservedState,
    Plan,
    ServerVerdict,
    object_key,
)

# Verification may find work a first pass could not see (the kernel drops routes whose
# ``src`` address was replaced); a few passes settle it, a persistent failure does not loop.
MAX_ROUNDS = 3


class ConvergeResult:
    __slots__ = ("applied", "failures", "final_plan", "first_plan", "observed", "seconds")

    def __init__(self, first_plan: Plan, final_plan: Plan, applied: list[Change] | None = None,
                 failures: dict[str, str] | None = None, seconds: float = 0.0,
                 observed: ObservedState | None = None) -> None:
        self.first_plan = first_plan
        self.final_plan = final_plan
        self.applied = [] if applied is None else applied
        self.failures = {} if failures is None else failures
        self.seconds = seconds
        self.observed = observed  # the kernel as last seen (after verification)

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


def plan_for(kernel: Kernel, desired: DesiredState) -> Plan:
    with gc_paused():
        return plan_changes(desired, observe(kernel, desired.scope))


class _CollectorHold:
    """The cyclic collector held off while any thread is inside :func:`gc_paused`: the
    daemon's reader thread and its loop each run one, and the collector is one switch for
    the whole process, so the last to leave turns it back on (if it was on)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.holders = 0
        self.was_enabled = False

    def enter(self) -> None:
        with self.lock:
            if self.holders == 0:
                self.was_enabled = gc.isenabled()
                gc.disable()
            self.holders += 1

    def leave(self) -> None:
        with self.lock:
            self.holders -= 1
            if self.holders == 0 and self.was_enabled:
                gc.enable()


_COLLECTOR_HOLD = _CollectorHold()


@contextmanager
def gc_paused() -> Iterator[None]:
    """Hold the cyclic garbage collector for one pipeline run.

    A run allocates tens of thousands of small tuples and no reference cycles; without
    this, generation scans cost a third of the time at 1,000 VS. Reference counting
    still frees everything as usual.
    """
    _COLLECTOR_HOLD.enter()
    try:
        yield
    finally:
        _COLLECTOR_HOLD.leave()


def converge(kernel: Kernel, desired: DesiredState) -> ConvergeResult:
    """Apply until the kernel matches ``desired`` (verified by observing again)."""
    with gc_paused():
        return _converge(kernel, desired)


def _converge(kernel: Kernel, desired: DesiredState) -> ConvergeResult:
    started = time.perf_counter()
    # the verification's looks decode only what changed since the look before
    memo = DumpMemo()
    observed = observe(kernel, desired.scope, memo)
    plan = plan_changes(desired, observed)
    result = ConvergeResult(first_plan=plan, final_plan=plan)
    for _round in range(MAX_ROUNDS):
        todo = Plan(
            changes=tuple(c for c in plan.changes if c.server not in result.failures),
            servers=plan.servers,
        )
        if not todo:
            break
        outcome: ApplyResult = apply_plan(kernel, todo, observed.links, desired.scope.protocol)
        result.applied.extend(outcome.applied)
        for name, reason in outcome.failures_by_server().items():
            result.failures.setdefault(name, reason)
        observed = observe(kernel, desired.scope, memo)
        plan = plan_changes(desired, observed)
        result.final_plan = plan
    result.observed = observed
    result.seconds = time.perf_counter() - started
    return result


class Reconciler:
    """Converges the kernel again and again, keeping what it last saw.

    The first call (and any call with ``full=True``, or after new settings or an error)
    runs the whole pipeline. Later calls diff only the VS whose desired objects changed,
    against the kept observed state, which the ACKs of every applied change keep up to
    date: a one-VS edit costs one VS, not a dump of 12,000 objects. Whoever changes the
    kernel behind vsnet's back is caught by a full run (the daemon's periodic resync, or
    its netlink notifications).

    A VS the kernel refused is the only one whose kept state is in doubt (a create
    refused with "File exists" means an object vsnet has not seen): its retry is a full
    run, at its own backoff; the state is kept for the others, whose heals stay scoped.
    """

    def __init__(self, kernel: Kernel, schedule: Schedule | None = None) -> None:
        self.kernel = kernel
        self.desired: DesiredState | None = None
        self.observed: ObservedState | None = None
        self.verdicts: dict[str, ServerVerdict] = {}
        self.schedule = schedule or Schedule(now=time.monotonic())
        self.doubted: set[str] = set()  # VS the kernel refused: converged by a full run

    def edit(self, desired: DesiredState) -> ConvergeResult:
        """A new config: converge what it changed at once (everything when nothing is
        known yet); failures join the schedule."""
        previous, observed = self.desired, self.observed
        full = (previous is None or observed is None or previous.settings != desired.settings)
        changed: set[str] = set()
        try:
            if not full and previous is not None:
                changed = changed_servers(previous, desired)
                # a refused VS among them, or a failure no VS of the config retries (a
                # removed VS's leftovers, the rule tree's shared rules): a full run
                full = (not self.doubted.isdisjoint(changed)
                        or not self.doubted <= desired.servers.keys())
            if full or previous is None or observed is None:
                changed = set()
                result = self._full(desired)
            else:
                with gc_paused():
                    result = self._scoped(previous, observed, desired, changed)
        except Exception as exc:
            self.desired = desired  # what the retry converges to
            self._lost_track(exc)
            raise
        self.schedule.forget(set(desired.servers))
        self.schedule.done(full, changed, result.failures, time.monotonic())
        return result

    def run_due(self, now: float) -> tuple[ConvergeResult, str] | None:
        """The run the schedule asks for at ``now``, if any, and why it ran."""
        if self.desired is None:
            return None
        full, names, why = self.schedule.due(now)
        if not full and not names:
            return None
        try:
            result = self.converge(self.desired, full=True) if full else self.heal(names)
        except Exception as exc:
            self._lost_track(exc)
            raise
        self.schedule.done(full, names, result.failures, time.monotonic())
        return result, why

    def _lost_track(self, exc: Exception) -> None:
        # e.g. a netlink dump failing under memory pressure, or no descriptor left: look
        # at the whole kernel again, after a backoff (never in a tight loop)
        self.observed = None
        self.schedule.failed_full(f"error: {exc!r}", time.monotonic())

    def converge(self, desired: DesiredState, *, full: bool = False) -> ConvergeResult:
        previous, observed = self.desired, self.observed
        if full or previous is None or observed is None or previous.settings != desired.settings:
            return self._full(desired)
        changed = changed_servers(previous, desired)
        if not self.doubted.isdisjoint(changed):
            return self._full(desired)
        with gc_paused():
            return self._scoped(previous, observed, desired, changed)

    def heal(self, names: set[str]) -> ConvergeResult:
        """Converge these VS again against the kept state (which notifications keep
        current): an object of theirs changed or vanished, or a foreign one appeared."""
        desired, observed = self.desired, self.observed
        assert desired is not None, "heal() comes after a first converge()"
        if observed is None or not self.doubted.isdisjoint(names):
            return self._full(desired)
        with gc_paused():
            return self._scoped(desired, observed, desired, names & desired.servers.keys())

    def _full(self, desired: DesiredState) -> ConvergeResult:
        result = converge(self.kernel, desired)
        self.desired, self.observed = desired, result.observed
        self.verdicts = result.servers
        self.doubted = set(result.failures)
        return result

    def _scoped(
        self, previous: DesiredState, observed: ObservedState, desired: DesiredState,
        changed: set[str],
    ) -> ConvergeResult:
        started = time.perf_counter()
        # the shared rules on the way to these VS: still wanted if any VS needs them
        paths = {key for server in _each(previous, desired, changed) for key in server.shared}
        # only objects of the changed VS are planned: their former names are all it takes
        # to attribute deletes (not a pass over every VS)
        before = [server for name in changed if (server := previous.servers.get(name))]
        subset_desired = desired._replace(
            servers={n: desired.servers[n] for n in sorted(  # in the order of the ids
                (n for n in changed if n in desired.servers), key=lambda n: desired.servers[n].id)},
            shared={key: desired.shared[key] for key in paths if key in desired.shared},
            former_names=previous.former_names | {server.id: server.name for server in before},
            former_namespaces={server.netns: server.name for server in before if server.netns},
        )
        keys = paths.union(*(server.keyed for server in _each(previous, desired, changed)))
        # the foreign objects are all there
        subset = observed.with_owned(_held(observed, keys))
        plan = plan_changes(subset_desired, subset)
        outcome = apply_plan(self.kernel, plan, observed.links, desired.scope.protocol)
        _record(observed, outcome)
        if any(c.action == "delete" and c.obj.kind in ("address", "link")
               for c in outcome.applied):
            # the kernel may have dropped routes of the VS silently: look, and finish
            touched = list({s.name: s for s in _each(previous, desired, changed)}.values())
            refresh(self.kernel, observed, desired.scope, touched)
            subset = observed.with_owned(_held(observed, keys))
            more = apply_plan(self.kernel, plan_changes(subset_desired, subset), observed.links,
                              desired.scope.protocol)
            _record(observed, more)
            outcome.applied.extend(more.applied)
            outcome.failed.extend(more.failed)
        failures = outcome.failures_by_server()
        verdicts = dict(self.verdicts)  # a copy, not a pass over every VS: names come and go
        for name in changed:                # only with the changed ones
            if name not in desired.servers:
                verdicts.pop(name, None)
            elif name not in verdicts:
                verdicts[name] = ServerVerdict("pending")
        for name, verdict in plan.servers.items():
            state = verdict.state if verdict.state not in ("pending",) else "in-sync"
            verdicts[name] = ServerVerdict(state, verdict.reasons)
        for name, reason in failures.items():
            if name in desired.servers:  # a shared rule that failed is retried, not a VS's
                verdicts[name] = ServerVerdict("failed", (reason,))
        self.desired, self.verdicts = desired, verdicts
        self.doubted = (self.doubted - changed) | set(failures)
        return ConvergeResult(
            first_plan=plan,
            final_plan=Plan(changes=(), servers=verdicts),
            applied=outcome.applied,
            failures=failures,
            seconds=time.perf_counter() - started,
            observed=self.observed,
        )


def _held(observed: ObservedState, keys: set[ObjectKey]) -> dict[ObjectKey, KernelObject]:
    """What the kernel holds of these objects."""
    owned = observed.owned
    return {key: obj for key in keys if (obj := owned.get(key)) is not None}


def _record(observed: ObservedState, outcome: ApplyResult) -> None:
    """What the ACKs confirm, written into the kept state."""
    observed.links = outcome.links
    for change in outcome.applied:
        obj = change.obj
        key = object_key(obj)
        if change.action != "delete":
            observed.owned[key] = obj
            continue
        observed.owned.pop(key, None)
        if isinstance(obj, Namespace):  # what was inside went with it
            observed.owned = {k: o for k, o in observed.owned.items()
                              if isinstance(o, Namespace) or o.netns != obj.name}


def changed_servers(previous: DesiredState, desired: DesiredState) -> set[str]:
    """VS added, removed, or whose desired objects differ."""
    before, after = previous.servers, desired.servers
    # an edit recompiles only the VS it changed; the others are the very same objects, in
    # the same order: those that are not are found in C (a pass in Python costs ~0.2 ms at
    # 1,000 VS); a pair out of order is only looked at again by name below, and the same
    # object at the same place is the same name (each VS's object is under its own name)
    suspects: Iterable[str] = after
    changed: set[str] | None = None
    if len(before) == len(after):
        suspects = list(itertools.compress(
            after, map(operator.is_not, after.values(), before.values())))
        if all(name in before for name in suspects):
            changed = set()  # as many names, the others the very same VS: the same names
    if changed is None:
        changed = before.keys() ^ after.keys()
    for name in suspects:
        old, new = before.get(name), after[name]
        if old is None or old is new:
            continue
        # the objects say everything the kernel holds for a VS (numbers, uplink included)
        if old.objects != new.objects or old.mode != new.mode:
            changed.add(name)
    return changed


def _each(previous: DesiredState, desired: DesiredState, names: set[str]) -> Iterator[DesiredServer]:
    for name in names:
        for state in (previous, desired):
            server = state.servers.get(name)
            if server is not None:
                yield server


# --------------------------------------------------------------------------- scheduling

RETRY_FIRST_SECONDS = 0.5
RETRY_MAX_SECONDS = 10.0  # a failing VS is tried again at least this often
RESYNC_SECONDS = 60.0


class Pending:
    """Why a VS (or the whole kernel: ``"*"``) waits for a run, and when that run comes."""

    __slots__ = ("next_at", "tries", "why")

    def __init__(self, why: str, tries: int = 0, next_at: float = 0.0) -> None:
        self.why = why
        self.tries = tries
        self.next_at = next_at  # time.monotonic()

    def as_json(self, now: float) -> dict[str, object]:
        return {"why": self.why, "tries": self.tries,
                "next_attempt_in": round(max(0.0, self.next_at - now), 3)}


def backoff(tries: int) -> float:
    # the exponent capped: past the cap the wait is the cap anyway, and 2 ** tries of a
    # count that ran away would not convert to a float
    doublings = min(max(0, tries - 1), 16)
    return float(min(RETRY_FIRST_SECONDS * 2 ** doublings, RETRY_MAX_SECONDS))


WHOLE = "*"  # the key of a pending full run


class Schedule:
    """What is to be converged, and when: the dirty VS (each with its reason, its tries
    and a capped backoff), a full run wanted (lost netlink notifications, an unexpected
    error, a namespace replaced by hand) and the periodic resync.

    The daemon feeds it and asks :meth:`due`; a run's outcome goes back through
    :meth:`done`. Pure bookkeeping: no kernel access, clock passed in.

    A full run that failed (it raised: no descriptor left, a dump refused) holds back
    everything else until its backoff ends: the resync and the VS waiting would each be
    a run meeting the same error (a VS's heal is a full run once the kept state is
    lost), and the full run converges them all anyway.
    """

    def __init__(self, resync_seconds: float = RESYNC_SECONDS, now: float = 0.0) -> None:
        self.resync_seconds = resync_seconds
        self.next_resync = now + resync_seconds
        self.pending: dict[str, Pending] = {}

    def want(self, names: set[str] | list[str], why: str, now: float) -> None:
        for name in names:
            entry = self.pending.get(name)
            if entry is None:
                self.pending[name] = Pending(why, 0, now)
            elif entry.tries == 0:
                entry.next_at = min(entry.next_at, now)  # a failing one keeps its backoff

    def want_full(self, why: str, now: float) -> None:
        self.want([WHOLE], why, now)

    def failed_full(self, why: str, now: float) -> None:
        """An unexpected error in a run: the whole kernel again, after a backoff."""
        entry = self.pending.setdefault(WHOLE, Pending(why))
        entry.why, entry.tries = why, entry.tries + 1
        entry.next_at = now + backoff(entry.tries)

    def lost_track(self, why: str, now: float) -> None:
        """Something may have gone unseen (an error in the daemon's loop between reading
        notifications and acting on them): a full run, after a backoff; one already
        pending keeps its own."""
        if WHOLE not in self.pending:
            self.failed_full(why, now)

    def _failing_full(self) -> Pending | None:
        """The full run pending after it failed, which everything else waits for."""
        whole = self.pending.get(WHOLE)
        return whole if whole is not None and whole.tries else None

    def deadline(self) -> float:
        failing = self._failing_full()
        if failing is not None:
            return failing.next_at
        return min([self.next_resync, *(p.next_at for p in self.pending.values())])

    def due(self, now: float) -> tuple[bool, set[str], str]:
        """(full run?, VS to converge, why) for the moment ``now``."""
        whole = self.pending.get(WHOLE)
        if whole is not None and whole.next_at <= now:
            return True, set(), whole.why
        if whole is not None and whole.tries:
            return False, set(), ""  # a failing full run waits out its backoff: all wait
        if now >= self.next_resync:
            return True, set(), "resync"
        names = {name for name, p in self.pending.items() if p.next_at <= now and name != WHOLE}
        reasons = sorted({self.pending[name].why for name in names})
        return False, names, ", ".join(reasons[:3])

    def done(self, full: bool, names: set[str], failures: dict[str, str], now: float) -> None:
        """A run over ``names`` (or everything) ended with these failures."""
        if full:
            self.next_resync = now + self.resync_seconds
            names = set(self.pending)
        for name in names:
            if name not in failures:
                self.pending.pop(name, None)
        for name, reason in failures.items():
            entry = self.pending.setdefault(name, Pending(reason))
            entry.why, entry.tries = reason, entry.tries + 1
            entry.next_at = now + backoff(entry.tries)

    def forget(self, known: set[str]) -> None:
        """A new config: VS that are gone wait for nothing."""
        for name in [n for n in self.pending if n != WHOLE and n not in known]:
            del self.pending[name]

    def as_json(self, now: float) -> dict[str, dict[str, object]]:
        return {name: entry.as_json(now) for name, entry in sorted(self.pending.items())}
