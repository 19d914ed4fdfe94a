"""The Reconciler's schedule: what waits for a run, why, and when it comes."""

from __future__ import annotations

import gc

from vsnetd.reconcile import RETRY_MAX_SECONDS, WHOLE, Pending, Schedule, gc_paused


def test_a_changed_vs_is_due_at_once_and_done_after_a_clean_run() -> None:
    schedule = Schedule(resync_seconds=60, now=0)
    schedule.want({"a", "b"}, "changed in the kernel", 1.0)
    assert schedule.due(1.0) == (False, {"a", "b"}, "changed in the kernel")
    assert schedule.deadline() == 1.0
    schedule.done(False, {"a", "b"}, {}, 1.1)
    assert schedule.pending == {}
    assert schedule.due(2.0) == (False, set(), "")
    assert schedule.deadline() == 60


def test_a_failing_vs_is_retried_with_a_capped_backoff_and_says_why() -> None:
    schedule = Schedule(resync_seconds=600, now=0)
    schedule.want({"a"}, "edit", 0.0)
    now, waits = 0.0, []
    for _attempt in range(8):
        full, names, _why = schedule.due(now)
        assert (full, names) == (False, {"a"})
        schedule.done(False, names, {"a": "RTNETLINK: File exists"}, now)
        waits.append(schedule.pending["a"].next_at - now)
        assert schedule.due(now) == (False, set(), "")  # nothing before the backoff ends
        now = schedule.pending["a"].next_at
    assert waits == sorted(waits) and waits[0] < 1 and waits[-1] == RETRY_MAX_SECONDS
    assert schedule.as_json(now - 1.0) == {
        "a": {"why": "RTNETLINK: File exists", "tries": 8, "next_attempt_in": 1.0}}
    # a notification about a failing VS does not cut its backoff short
    schedule.want({"a"}, "changed in the kernel", now - 5)
    assert schedule.pending["a"].next_at == now
    schedule.done(False, {"a"}, {}, now)
    assert schedule.pending == {}


def test_a_full_run_is_wanted_after_lost_notifications_and_clears_everything() -> None:
    schedule = Schedule(resync_seconds=60, now=0)
    schedule.want({"a"}, "changed in the kernel", 1.0)
    schedule.want_full("netlink notifications were lost (ENOBUFS)", 1.0)
    assert schedule.due(1.0) == (True, set(), "netlink notifications were lost (ENOBUFS)")
    schedule.done(True, set(), {"b": "failed"}, 1.5)
    assert set(schedule.pending) == {"b"}
    assert schedule.next_resync == 61.5
    assert schedule.due(61.5)[0] is True  # the periodic resync


def test_an_unexpected_error_backs_off_instead_of_spinning() -> None:
    schedule = Schedule(resync_seconds=60, now=0)
    schedule.failed_full("error: OSError(24, 'Too many open files')", 1.0)
    schedule.failed_full("error: OSError(24, 'Too many open files')", 1.0)
    assert schedule.pending[WHOLE].tries == 2
    assert schedule.deadline() > 1.0
    assert schedule.due(1.0) == (False, set(), "")


def test_an_error_in_the_loop_wants_a_full_run_after_a_backoff_once() -> None:
    schedule = Schedule(resync_seconds=60, now=0)
    schedule.lost_track("error: MemoryError()", 1.0)
    assert schedule.due(1.0) == (False, set(), "")  # not at once: an error may repeat
    first = schedule.pending[WHOLE].next_at
    assert first > 1.0
    schedule.lost_track("error: MemoryError()", 1.0)  # one pending keeps its backoff
    assert (schedule.pending[WHOLE].tries, schedule.pending[WHOLE].next_at) == (1, first)
    assert schedule.due(first) == (True, set(), "error: MemoryError()")
    schedule.done(True, set(), {}, first)
    assert schedule.pending == {}


def test_vs_gone_from_the_config_wait_for_nothing() -> None:
    schedule = Schedule(resync_seconds=60, now=0)
    schedule.want({"a", "b"}, "edit", 0)
    schedule.want_full("lost track", 0)
    schedule.forget({"a"})
    assert set(schedule.pending) == {"a", WHOLE}


def test_the_collector_comes_back_when_the_last_hold_is_left() -> None:
    """The daemon's reader thread and its loop each hold the collector off, overlapping:
    the first to leave must not turn it back on under the other."""
    was_enabled = gc.isenabled()
    gc.enable()
    try:
        reader, loop = gc_paused(), gc_paused()
        reader.__enter__()
        loop.__enter__()
        reader.__exit__(None, None, None)
        assert not gc.isenabled()
        loop.__exit__(None, None, None)
        assert gc.isenabled()
        gc.disable()  # held off by someone else: left off
        with gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        (gc.enable if was_enabled else gc.disable)()


def test_a_failing_full_run_holds_back_the_resync_and_the_vs_until_its_backoff_ends() -> None:
    """A full run that raises again and again (no descriptor left) must not be run again
    at every turn of the loop once the periodic resync is due, nor through a VS whose
    heal raised (its heal would be a full run: the kept state is gone)."""
    schedule = Schedule(resync_seconds=2, now=0)
    # a heal of "a" raised: the Reconciler wants a full run after a backoff
    schedule.want({"a"}, "changed in the kernel", 1.0)
    assert schedule.due(1.0) == (False, {"a"}, "changed in the kernel")
    schedule.failed_full("error: OSError(24, 'Too many open files')", 1.0)
    retry = schedule.pending[WHOLE].next_at
    assert retry > 1.0
    assert schedule.due(1.0) == (False, set(), "")
    assert schedule.deadline() == retry
    # the resync falls due while the full run waits out its backoff
    schedule.failed_full("error: OSError(24, 'Too many open files')", 2.5)
    retry = schedule.pending[WHOLE].next_at
    assert retry > 2.5
    schedule.want({"b"}, "changed in the kernel", 2.5)
    assert schedule.due(2.5) == (False, set(), "")
    assert schedule.deadline() == retry  # the loop sleeps until then
    assert schedule.as_json(2.5)[WHOLE]["tries"] == 2
    assert schedule.due(retry) == (True, set(), "error: OSError(24, 'Too many open files')")
    schedule.done(True, set(), {}, retry)
    assert schedule.pending == {} and schedule.next_resync == retry + 2


def test_the_backoff_of_a_run_away_count_is_the_cap() -> None:
    schedule = Schedule(resync_seconds=60, now=0)
    schedule.pending[WHOLE] = Pending("error", 100_000, 0.0)
    schedule.failed_full("error", 1.0)
    assert schedule.pending[WHOLE].next_at == 1.0 + RETRY_MAX_SECONDS
