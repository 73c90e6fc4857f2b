"""The watchdog's recovery decision (agent/server/raft/watchdog.py), without a node."""

from __future__ import annotations

from mesh.agent.server.raft.watchdog import (
    TICK_ERROR_LIMIT,
    Progress,
    recovery_reason,
    track_progress,
)


def _decide(**kw):
    base = dict(tick_errors=[], applied=10, leader_commit=10, applied_since=0.0, thread_alive=True,
                stopping=False, is_leader=False, persistent=True, now=100.0, stuck_after=15.0)
    return recovery_reason(**{**base, **kw})


def test_a_healthy_follower_is_left_alone():
    assert _decide() is None


def test_recent_tick_errors_trigger_recovery_old_ones_do_not():
    assert _decide(tick_errors=[95.0] * TICK_ERROR_LIMIT) == "tick errors"
    assert _decide(tick_errors=[95.0] * (TICK_ERROR_LIMIT - 1)) is None
    assert _decide(tick_errors=[80.0] * TICK_ERROR_LIMIT) is None  # outside the window


def test_an_applied_index_stuck_behind_the_leader():
    assert _decide(applied=5, leader_commit=9, applied_since=80.0) == "applied index stuck"
    assert _decide(applied=5, leader_commit=9, applied_since=90.0) is None  # not long enough
    assert _decide(applied=9, leader_commit=9, applied_since=0.0) is None  # nothing owed


def test_a_dead_tick_thread_unless_stopping():
    assert _decide(thread_alive=False) == "tick thread died"
    assert _decide(thread_alive=False, stopping=True) is None


def test_never_the_leader_nor_an_in_memory_node():
    broken = dict(tick_errors=[99.0] * 50, thread_alive=False, applied=1, leader_commit=9)
    assert _decide(**broken) == "tick errors"
    assert _decide(**broken, is_leader=True) is None
    assert _decide(**broken, persistent=False) is None


def test_progress_restarts_when_the_index_moves_or_nothing_is_owed():
    p = Progress(5, 0.0)
    assert track_progress(p, 5, 9, 50.0) == p  # stuck: keeps its start
    assert track_progress(p, 6, 9, 50.0) == Progress(6, 50.0)
    assert track_progress(p, 5, 5, 50.0) == Progress(5, 50.0)
