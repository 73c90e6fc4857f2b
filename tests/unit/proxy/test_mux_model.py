"""Two mux Sessions back to back under random operations (hypothesis stateful): open,
accept, write, consume, FIN, RST, ping, GoAway, blocked output, and a wire delivering
any number of bytes at a time. Whatever the interleaving: no protocol error, windows
never negative and always accounted for, every byte delivered in order exactly once,
FIN after all data, and once everything is finished no stream is left in either."""

from __future__ import annotations

import os
from collections import defaultdict

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from mesh.proxy.mux import MAX_SEND_FRAME, Session
from mesh.proxy.mux_events import (
    Data,
    GoAwayReceived,
    Pong,
    StreamAccepted,
    StreamFinished,
    StreamOpened,
    StreamReset,
    WindowOpened,
)
from mesh.proxy.mux_frame import INITIAL_WINDOW

SIDES = ("c", "s")
OTHER = {"c": "s", "s": "c"}
side_st = st.sampled_from(SIDES)


class TwoSessions(RuleBasedStateMachine):
    @initialize(window=st.sampled_from([7, 64, 1000, INITIAL_WINDOW]),
                frame=st.sampled_from([1, 5, 64, MAX_SEND_FRAME]),
                max_streams=st.sampled_from([1, 3, 1024]), backlog=st.sampled_from([1, 2, 256]))
    def setup(self, window, frame, max_streams, backlog):
        kw = dict(window=window, max_send_frame=frame, max_streams=max_streams,
                  accept_backlog=backlog)
        self.window = window
        self.sessions = {"c": Session(client=True, **kw), "s": Session(client=False, **kw)}
        self.wire = {side: bytearray() for side in SIDES}  # written by side, unread by the other
        self.sent: dict[tuple[str, int], bytearray] = {}  # (writer, sid) -> bytes written
        self.got: dict[tuple[str, int], bytearray] = defaultdict(bytearray)  # (reader, sid)
        self.unconsumed: dict[tuple[str, int], int] = defaultdict(int)
        self.fin: set[tuple[str, int]] = set()  # (writer, sid) asked for FIN
        self.finished: set[tuple[str, int]] = set()  # (reader, sid) got StreamFinished
        self.reset: set[int] = set()  # sids reset by either side (or refused)
        self.accepted: set[tuple[str, int]] = set()
        self.to_accept: dict[str, list[int]] = {side: [] for side in SIDES}
        self.pings: dict[str, set[int]] = {side: set() for side in SIDES}

    # -- helpers --------------------------------------------------------------------------

    def pump(self) -> None:
        for side in SIDES:
            self.wire[side] += self.sessions[side].data_to_send()

    def handle(self, reader: str, events: list) -> None:
        writer = OTHER[reader]
        for ev in events:
            if isinstance(ev, StreamOpened):
                self.to_accept[reader].append(ev.stream_id)
                self.sent[(reader, ev.stream_id)] = bytearray()
            elif isinstance(ev, Data):
                key = (reader, ev.stream_id)
                assert key not in self.finished, "data after FIN"
                self.got[key] += ev.data
                assert self.sent[(writer, ev.stream_id)].startswith(self.got[key]), "order"
                self.unconsumed[key] += len(ev.data)
            elif isinstance(ev, StreamFinished):
                assert (writer, ev.stream_id) in self.fin
                assert self.got[(reader, ev.stream_id)] == self.sent[(writer, ev.stream_id)]
                self.finished.add((reader, ev.stream_id))
            elif isinstance(ev, StreamReset):
                if ev.refused:
                    assert (writer, ev.stream_id) not in self.accepted
                self.reset.add(ev.stream_id)
                if ev.stream_id in self.to_accept[reader]:
                    self.to_accept[reader].remove(ev.stream_id)
            elif isinstance(ev, StreamAccepted):  # the other side accepted our stream
                assert (writer, ev.stream_id) in self.accepted
            elif isinstance(ev, Pong):
                assert ev.opaque in self.pings[reader]
            else:
                assert isinstance(ev, WindowOpened | GoAwayReceived)

    def writable(self, side: str) -> list[int]:
        session = self.sessions[side]
        return [sid for sid in session.stream_ids() if (side, sid) not in self.fin]

    # -- rules ----------------------------------------------------------------------------

    @rule(side=side_st)
    def open(self, side):
        session = self.sessions[side]
        if session.open_refusal() is None:
            self.sent[(side, session.open_stream())] = bytearray()
        self.pump()

    @rule(side=side_st, data=st.data())
    def accept(self, side, data):
        if self.to_accept[side]:
            sid = data.draw(st.sampled_from(self.to_accept[side]))
            self.to_accept[side].remove(sid)
            if self.sessions[side].has_stream(sid):
                self.sessions[side].accept_stream(sid)
                self.accepted.add((side, sid))
                self.pump()

    @rule(side=side_st, data=st.data(), payload=st.binary(min_size=1, max_size=3000))
    def write(self, side, data, payload):
        if self.writable(side):
            sid = data.draw(st.sampled_from(self.writable(side)))
            self.sessions[side].send_data(sid, payload)
            self.sent[(side, sid)] += payload
            self.pump()

    @rule(side=side_st, data=st.data())
    def finish(self, side, data):
        if self.writable(side):
            sid = data.draw(st.sampled_from(self.writable(side)))
            self.sessions[side].send_fin(sid)
            self.fin.add((side, sid))
            self.pump()

    @rule(side=side_st, data=st.data(), roll=st.integers(0, 3))
    def rst(self, side, data, roll):
        session = self.sessions[side]
        if session.stream_ids() and not roll:  # rarer, or streams rarely live long
            sid = data.draw(st.sampled_from(session.stream_ids()))
            session.reset_stream(sid)
            self.reset.add(sid)
            if sid in self.to_accept[side]:
                self.to_accept[side].remove(sid)
            self.pump()

    @rule(side=side_st, data=st.data())
    def consume(self, side, data):
        keys = [k for k, n in self.unconsumed.items() if n and k[0] == side]
        if keys:
            key = data.draw(st.sampled_from(sorted(keys)))
            n = data.draw(st.integers(1, self.unconsumed[key]))
            self.unconsumed[key] -= n
            self.sessions[side].consume(key[1], n)
            self.pump()

    @precondition(lambda self: any(self.wire.values()))
    @rule(side=side_st, data=st.data())
    def deliver(self, side, data):
        wire = self.wire[side]
        if wire:
            n = data.draw(st.integers(1, len(wire)))
            chunk = bytes(wire[:n])
            del wire[:n]
            self.handle(OTHER[side], self.sessions[OTHER[side]].receive(chunk))
            self.pump()

    @rule(side=side_st, opaque=st.integers(0, 0xFFFFFFFF), roll=st.integers(0, 3))
    def ping(self, side, opaque, roll):
        if roll:
            return
        self.pings[side].add(opaque)
        self.sessions[side].ping(opaque)
        self.pump()

    @rule(side=side_st, blocked=st.booleans(), budget=st.integers(1, 5000))
    def block(self, side, blocked, budget):
        self.handle(side, self.sessions[side].set_output_blocked(blocked, budget))
        self.pump()

    @rule(side=side_st, roll=st.integers(0, 15))
    def go_away(self, side, roll):
        if not roll:  # rare: no stream opens after it
            self.sessions[side].go_away()
            self.pump()

    @rule()
    def exchange(self):
        """Both wires delivered whole, both readers consume what they got."""
        for side in SIDES:
            chunk = bytes(self.wire[side])
            self.wire[side].clear()
            self.handle(OTHER[side], self.sessions[OTHER[side]].receive(chunk))
        for key, n in self.unconsumed.items():
            if n:
                self.sessions[key[0]].consume(key[1], n)
                self.unconsumed[key] = 0
        self.pump()

    # -- invariants -----------------------------------------------------------------------

    @invariant()
    def windows_are_accounted_for(self):
        for side, session in self.sessions.items():
            for sid in session.stream_ids():
                stats = session.stream_stats(sid)
                assert stats.send_window >= 0 and stats.recv_window >= 0
                assert stats.recv_window + stats.unconsumed + stats.uncredited == self.window
                assert stats.unconsumed == self.unconsumed[(side, sid)]

    def teardown(self):
        """Finish everything: then every stream is forgotten on both sides, and every
        stream nobody reset delivered all its bytes and its FIN."""
        if not hasattr(self, "sessions"):
            return
        for side in SIDES:
            self.handle(side, self.sessions[side].set_output_blocked(False))
        for _ in range(100_000):
            for side in SIDES:
                session = self.sessions[side]
                for sid in self.to_accept[side]:
                    if session.has_stream(sid):
                        session.accept_stream(sid)
                        self.accepted.add((side, sid))
                self.to_accept[side].clear()
                for sid in self.writable(side):
                    session.send_fin(sid)
                    self.fin.add((side, sid))
                for key, n in self.unconsumed.items():
                    if n and key[0] == side:
                        session.consume(key[1], n)
                        self.unconsumed[key] = 0
            self.pump()
            if not any(self.wire.values()):
                break
            for side in SIDES:
                chunk = bytes(self.wire[side])
                self.wire[side].clear()
                self.handle(OTHER[side], self.sessions[OTHER[side]].receive(chunk))
        for session in self.sessions.values():
            assert session.stream_ids() == []
        for (writer, sid), data in self.sent.items():
            if sid not in self.reset:
                reader = OTHER[writer]
                assert self.got[(reader, sid)] == data and (reader, sid) in self.finished


# MUX_MODEL_EXAMPLES=5000 for a longer hunt
TwoSessions.TestCase.settings = settings(
    max_examples=int(os.environ.get("MUX_MODEL_EXAMPLES", "300")), stateful_step_count=50,
    deadline=None)
test_two_sessions = TwoSessions.TestCase
