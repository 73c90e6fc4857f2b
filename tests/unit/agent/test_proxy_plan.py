"""The supervisor's pure plan, driven by a fake clock: starts, crashes and backoff,
drains and kills, adoption, and a property test over random event sequences."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.agent.proxies.plan import (
    LIVE_STATES,
    Exit,
    Forget,
    Kill,
    Policy,
    ProxyProcess,
    Start,
    State,
    Stop,
    adopted,
    backoff_delay,
    became_ready,
    exited,
    kill_sent,
    launched,
    next_due,
    plan,
    spawn_failed,
    stop_requested,
)

POLICY = Policy(initial_backoff=1.0, max_backoff=30.0, reset_after=60.0, drain_timeout=5.0)
P = "web-sidecar-proxy"
WANTED = {P: "web"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def crash(proc: ProxyProcess, at: float, code: int | None = 1, sig: int | None = None) -> ProxyProcess:
    after = exited(proc, Exit(at=at, code=code, signal=sig), POLICY)
    assert after is not None
    return after


def test_a_wanted_proxy_without_a_process_is_started():
    assert plan(WANTED, {}, 0.0) == [Start(P)]
    assert plan({}, {}, 0.0) == []


def test_a_started_proxy_is_left_alone_until_ready_and_after():
    clock = Clock()
    proc = launched(None, P, "web", pid=10, start_time=5, now=clock.now)
    assert (proc.state, proc.pid, proc.restarts, proc.failures) == (State.STARTING, 10, 0, 0)
    assert plan(WANTED, {P: proc}, clock.advance(100)) == []
    ready = became_ready(proc, clock.now)
    assert ready.state == State.READY and ready.ready_at == clock.now
    assert became_ready(ready, clock.advance(30)).ready_at == ready.ready_at  # a repeated report keeps the first time
    assert plan(WANTED, {P: ready}, clock.advance(100)) == []


@pytest.mark.parametrize("failures, delay", [(0, 0.0), (1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 16.0),
                                             (6, 30.0), (7, 30.0), (10_000, 30.0)])
def test_backoff_doubles_from_one_second_and_is_capped(failures, delay):
    assert backoff_delay(failures, POLICY) == delay


def test_repeated_crashes_back_off_further_each_time_up_to_the_cap():
    clock = Clock()
    proc = launched(None, P, "web", 10, 5, clock.now)
    delays = []
    for i in range(8):
        proc = crash(proc, clock.advance(0.5))
        assert proc.state == State.BACKOFF and proc.pid == 0
        delays.append(proc.restart_at - clock.now)
        # nothing before the backoff has passed, a start once it has
        assert plan(WANTED, {P: proc}, proc.restart_at - 0.001) == []
        assert plan(WANTED, {P: proc}, clock.advance(proc.restart_at - clock.now)) == [Start(P)]
        proc = launched(proc, P, "web", 11 + i, 6 + i, clock.now)
        assert proc.restarts == i + 1
    assert delays == [1, 2, 4, 8, 16, 30, 30, 30]


def test_a_long_run_resets_the_backoff():
    clock = Clock()
    proc = launched(None, P, "web", 10, 5, clock.now)
    for _ in range(5):
        proc = crash(proc, clock.advance(1))
        proc = launched(proc, P, "web", 10, 5, clock.advance(proc.restart_at - clock.now))
    assert proc.failures == 5
    short = crash(proc, clock.now + 59.9)
    assert short.failures == 6 and short.restart_at - (clock.now + 59.9) == 30
    long = crash(proc, clock.now + 60.0)
    assert long.failures == 1 and long.restart_at - (clock.now + 60.0) == 1.0


def test_a_clean_exit_of_a_wanted_proxy_counts_as_a_crash():
    proc = launched(None, P, "web", 10, 5, 0.0)
    after = crash(proc, 0.1, code=0)
    assert after.state == State.BACKOFF and after.last_exit == Exit(at=0.1, code=0)


def test_the_last_exit_is_kept_across_the_restart():
    proc = crash(launched(None, P, "web", 10, 5, 0.0), 2.0, code=None, sig=9)
    again = launched(proc, P, "web", 11, 6, 3.0)
    assert again.last_exit == Exit(at=2.0, signal=9) and again.restarts == 1


def test_a_proxy_no_longer_wanted_is_drained_then_killed():
    clock = Clock()
    proc = became_ready(launched(None, P, "web", 10, 5, clock.now), clock.now)
    assert plan({}, {P: proc}, clock.advance(1)) == [Stop(P)]
    stopping = stop_requested(proc, clock.now, POLICY)
    assert stopping.state == State.STOPPING and stopping.stop_deadline == clock.now + 5.0
    assert stop_requested(stopping, clock.now + 1, POLICY) == stopping  # a second Stop changes nothing
    assert plan({}, {P: stopping}, clock.advance(4.999)) == []
    assert plan({}, {P: stopping}, clock.advance(0.001)) == [Kill(P)]
    killed = kill_sent(stopping)
    assert plan({}, {P: killed}, clock.advance(100)) == []  # SIGKILL once; the exit ends it
    assert exited(killed, Exit(at=clock.now, signal=9), POLICY) is None
    assert became_ready(stopping, clock.now) == stopping


@pytest.mark.parametrize("state", [State.STARTING, State.RUNNING, State.READY])
def test_every_live_state_is_stopped_when_unwanted(state):
    proc = ProxyProcess(P, "web", state, pid=10, start_time=5)
    assert plan({}, {P: proc}, 0.0) == [Stop(P)]


def test_an_unwanted_proxy_in_backoff_is_forgotten_not_started():
    proc = crash(launched(None, P, "web", 10, 5, 0.0), 1.0)
    assert plan({}, {P: proc}, 100.0) == [Forget(P)]


def test_re_registered_while_draining_starts_only_after_the_old_process_is_gone():
    proc = stop_requested(launched(None, P, "web", 10, 5, 0.0), 1.0, POLICY)
    assert plan(WANTED, {P: proc}, 2.0) == []  # no second process on the same port
    assert plan(WANTED, {P: proc}, 6.0) == [Kill(P)]
    assert exited(proc, Exit(at=6.5, signal=9), POLICY) is None
    assert plan(WANTED, {}, 6.5) == [Start(P)]


def test_a_sidecar_moved_to_another_parent_is_restarted_for_it():
    proc = became_ready(launched(None, P, "web", 10, 5, 0.0), 1.0)
    assert plan({P: "web2"}, {P: proc}, 2.0) == [Stop(P)]
    backoff = crash(launched(None, P, "web", 10, 5, 0.0), 1.0)
    assert plan({P: "web2"}, {P: backoff}, 1.5) == [Forget(P)]


def test_an_adopted_process_is_never_duplicated_and_is_stopped_when_unwanted():
    proc = adopted(P, "web", pid=4242, start_time=77, now=0.0)
    assert (proc.state, proc.adopted, proc.restarts) == (State.RUNNING, True, 0)
    assert plan(WANTED, {P: proc}, 0.0) == []
    assert plan(WANTED, {P: proc}, 1e6) == []
    assert became_ready(proc, 1.0).state == State.READY
    assert plan({}, {P: proc}, 0.0) == [Stop(P)]
    # once it dies it is restarted as our own child
    gone = exited(proc, Exit(at=5.0, reason="gone"), POLICY)
    assert gone is not None and gone.state == State.BACKOFF
    relaunched = launched(gone, P, "web", 5000, 99, gone.restart_at)
    assert relaunched.adopted is False and relaunched.restarts == 1


def test_a_failed_launch_backs_off_like_a_crash_without_counting_a_restart():
    first = spawn_failed(None, P, "web", "launch failed: No such file or directory", 0.0, POLICY)
    assert (first.state, first.failures, first.restart_at, first.restarts) == (State.BACKOFF, 1, 1.0, 0)
    assert first.last_exit == Exit(at=0.0, reason="launch failed: No such file or directory")
    second = spawn_failed(first, P, "web", "again", 1.0, POLICY)
    assert (second.failures, second.restart_at) == (2, 3.0)


def test_next_due_is_the_earliest_restart_or_drain_deadline():
    a = crash(launched(None, "a", "x", 1, 1, 0.0), 1.0)  # restart at 2.0
    b = stop_requested(launched(None, "b", "y", 2, 2, 0.0), 0.5, POLICY)  # kill at 5.5
    c = launched(None, "c", "z", 3, 3, 0.0)
    assert next_due({"c": c}) is None
    assert next_due({"a": a, "b": b, "c": c}) == 2.0
    assert next_due({"b": b}) == 5.5
    assert next_due({"b": kill_sent(b)}) is None


def test_actions_come_in_proxy_id_order():
    procs = {"b": ProxyProcess("b", "x", State.READY, pid=1)}
    assert plan({"c": "x", "a": "y"}, procs, 0.0) == [Start("a"), Stop("b"), Start("c")]


# ---- property: random events never produce a duplicate or a stray signal ----------------

EVENTS = st.lists(st.tuples(st.sampled_from(["want", "unwant", "crash", "ready", "tick"]),
                            st.floats(min_value=0.0, max_value=90.0)), max_size=60)


@settings(max_examples=300, deadline=None)
@given(EVENTS)
def test_random_event_sequences_keep_the_invariants(events):
    now = 0.0
    wanted: dict[str, str] = {}
    procs: dict[str, ProxyProcess] = {}
    next_pid = 100
    alive: set[int] = set()
    for kind, dt in events:
        now += dt
        proc = procs.get(P)
        if kind == "want":
            wanted = dict(WANTED)
        elif kind == "unwant":
            wanted = {}
        elif kind == "crash" and proc is not None and proc.state in LIVE_STATES:
            alive.discard(proc.pid)
            after = exited(proc, Exit(at=now, code=1), POLICY)
            if after is None:
                del procs[P]
            else:
                assert 0 < after.restart_at - now <= POLICY.max_backoff
                procs[P] = after
        elif kind == "ready" and proc is not None:
            procs[P] = became_ready(proc, now)
        for action in plan(wanted, procs, now):
            proc = procs.get(P)
            if isinstance(action, Start):
                assert proc is None or proc.state == State.BACKOFF, "a second process for one sidecar"
                assert P in wanted
                next_pid += 1
                alive.add(next_pid)
                procs[P] = launched(proc, P, "web", next_pid, next_pid, now)
            elif isinstance(action, Stop):
                assert proc is not None and proc.state in (State.STARTING, State.RUNNING, State.READY)
                assert proc.pid in alive
                procs[P] = stop_requested(proc, now, POLICY)
            elif isinstance(action, Kill):
                assert proc is not None and proc.state == State.STOPPING and now >= proc.stop_deadline
                procs[P] = kill_sent(proc)
            else:
                assert proc is not None and proc.state == State.BACKOFF and P not in wanted
                del procs[P]
        assert len(alive) <= 1, "two live processes for one sidecar"
