"""The multiplexer's pure core: yamux frames, the incremental decoder, the Session's
states, flow control, limits and protocol errors (../shared: issue 12)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.proxy.mux import Session
from mesh.proxy.mux_events import (
    Data,
    GoAwayReceived,
    Pong,
    StreamAccepted,
    StreamFinished,
    StreamOpened,
    StreamReset,
    StreamState,
    WindowOpened,
)
from mesh.proxy.mux_frame import (
    HEADER_SIZE,
    Flag,
    Frame,
    FrameDecoder,
    FrameType,
    GoAwayCode,
    ProtocolError,
    StreamError,
    encode_frame,
)

HEADER = struct.Struct(">BBHII")
SYN, ACK, FIN, RST = Flag.SYN, Flag.ACK, Flag.FIN, Flag.RST
DATA, WU, PING, GO_AWAY = FrameType.DATA, FrameType.WINDOW_UPDATE, FrameType.PING, FrameType.GO_AWAY


def frame(ftype, flags, sid, length, payload=b""):
    return HEADER.pack(0, ftype, flags, sid, length) + payload


def frames_of(data: bytes) -> list[Frame]:
    return FrameDecoder(max_frame=1 << 32).feed(data)


@st.composite
def any_frame(draw) -> Frame:
    ftype = draw(st.sampled_from(list(FrameType)))
    flags = draw(st.integers(0, 0xFFFF))
    sid = draw(st.integers(0, 0xFFFFFFFF))
    if ftype == DATA:
        payload = draw(st.binary(max_size=300))
        return Frame(ftype, flags, sid, len(payload), payload)
    return Frame(ftype, flags, sid, draw(st.integers(0, 0xFFFFFFFF)))


# -- frames and the decoder -------------------------------------------------------------

@given(any_frame())
def test_encode_decode_round_trip(f):
    wire = encode_frame(f)
    assert len(wire) == HEADER_SIZE + len(f.payload)
    assert frames_of(wire) == [f]


@given(st.lists(any_frame(), max_size=20), st.data())
def test_any_split_gives_the_same_frames(frames, data):
    wire = b"".join(encode_frame(f) for f in frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=12)))
    decoder = FrameDecoder(max_frame=1 << 32)
    got = []
    for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        got += decoder.feed(wire[a:b])
    assert got == frames and decoder.buffered == 0


def test_a_byte_at_a_time_and_a_trailing_partial_frame():
    wire = encode_frame(Frame(DATA, SYN, 1, 5, b"hello")) + encode_frame(Frame(PING, SYN, 0, 7))
    decoder = FrameDecoder()
    got = [f for i in range(len(wire)) for f in decoder.feed(bytearray(wire[i:i + 1]))]
    assert got == [(DATA, SYN, 1, 5, b"hello"), (PING, SYN, 0, 7, b"")]
    assert decoder.feed(wire[:15]) == [] and decoder.buffered == 15


@pytest.mark.parametrize("wire, reason", [
    (HEADER.pack(1, 0, 0, 1, 0), "unsupported version 1"),
    (HEADER.pack(0, 4, 0, 1, 0), "unknown frame type 4"),
    (HEADER.pack(0, 0, 0, 1, 1025), "exceeds the 1024 byte limit"),  # no payload needed
])
def test_decoder_rejects(wire, reason):
    for decoder_input in ([wire], [wire[:5], wire[5:]]):
        decoder = FrameDecoder(max_frame=1024)
        with pytest.raises(ProtocolError, match=reason):
            for chunk in decoder_input:
                decoder.feed(chunk)


@pytest.mark.parametrize("bad", [Frame(DATA, 0, 1, 3, b"ab"), Frame(WU, 0, 1, 0, b"x"),
                                 Frame(PING, 0, 0, 1 << 32), Frame(DATA, 1 << 16, 1, 0)])
def test_encode_rejects_impossible_frames(bad):
    with pytest.raises(ValueError):
        encode_frame(bad)


# -- sessions ---------------------------------------------------------------------------

def pair(**kw):
    return Session(client=True, **kw), Session(client=False, **kw)


def step(src: Session, dst: Session) -> list:
    return dst.receive(src.data_to_send())


def test_open_send_fin_both_ways_and_forget():
    c, s = pair()
    sid = c.open_stream()
    assert sid == 1 and c.stream_state(sid) == StreamState.SYN_SENT
    c.send_data(sid, b"hello")
    c.send_fin(sid)
    wire = c.data_to_send()
    assert frames_of(wire) == [(DATA, SYN, 1, 5, b"hello"), (WU, FIN, 1, 0, b"")]  # SYN rode on data
    assert s.receive(wire) == [StreamOpened(1), Data(1, b"hello"), StreamFinished(1)]
    assert s.stream_state(1) == StreamState.REMOTE_CLOSE
    s.accept_stream(1)
    s.consume(1, 5)
    s.send_data(1, b"world")
    s.send_fin(1)
    assert s.stream_ids() == []  # both FINs out: forgotten on the server
    assert step(s, c) == [StreamAccepted(1), Data(1, b"world"), StreamFinished(1)]  # the ACK rode on data
    assert c.stream_ids() == [] and c.streams_opened == s.streams_opened == 1
    assert s.open_stream() == 2 and c.open_stream() == 3  # parities


def test_syn_and_ack_go_out_bare_when_nothing_rides_on_them():
    c, s = pair()
    c.open_stream()
    assert frames_of(c.data_to_send()) == [(WU, SYN, 1, 0, b"")]
    s.receive(encode_frame(Frame(WU, SYN, 1, 0)))
    s.accept_stream(1)
    assert frames_of(s.data_to_send()) == [(WU, ACK, 1, 0, b"")]


def test_ack_establishes_and_rst_before_ack_is_a_refusal():
    c, s = Session(client=True), Session(client=False, max_streams=1)
    a, b = c.open_stream(), c.open_stream()
    events = step(c, s)
    assert events == [StreamOpened(a)] and s.streams_refused == 1
    s.accept_stream(a)
    assert step(s, c) == [StreamReset(b, refused=True), StreamAccepted(a)]  # the refusal went out first
    assert c.stream_state(a) == StreamState.ESTABLISHED and c.stream_ids() == [a]


def test_reset_both_ways_and_late_frames_are_dropped():
    c, s = pair()
    sid = c.open_stream()
    c.send_data(sid, b"x" * 10)
    step(c, s)
    s.accept_stream(sid)
    s.reset_stream(sid)
    c.send_data(sid, b"late")  # crosses the RST on the wire
    late = c.data_to_send()
    assert step(s, c) == [StreamReset(sid, refused=False)]
    assert s.receive(late) == [] and s.stream_ids() == [] and c.stream_ids() == []
    with pytest.raises(StreamError):
        c.send_data(sid, b"x")
    c.reset_stream(sid)  # idempotent


def test_reset_of_a_stream_never_announced_sends_nothing():
    c, _ = pair()
    sid = c.open_stream()
    c.send_data(sid, b"x")
    c.data_to_send()
    sid2 = c.open_stream()
    c.reset_stream(sid2)
    assert c.data_to_send() == b"" and c.stream_ids() == [sid]


def test_window_is_credited_once_half_is_consumed():
    c, s = pair(window=1000)
    sid = c.open_stream()
    c.send_data(sid, b"x" * 1500)
    assert c.stream_stats(sid).send_window == 0 and c.buffered(sid) == 500
    step(c, s)
    s.accept_stream(sid)
    s.data_to_send()
    s.consume(sid, 499)
    assert s.data_to_send() == b""  # less than half: no update yet
    s.consume(sid, 1)
    assert frames_of(s.data_to_send()) == [(WU, 0, sid, 500, b"")]
    s.receive(b"")
    assert c.receive(encode_frame(Frame(WU, 0, sid, 500))) == [WindowOpened(sid)]
    assert c.buffered(sid) == 0 and c.stream_stats(sid).send_window == 0
    assert [len(e.data) for e in step(c, s)] == [500]
    assert s.stream_stats(sid) == (1000, 0, 1000, 0, 0)  # all 1500 in, 500 credited back


def test_fin_waits_behind_queued_data():
    c, s = pair(window=10)
    sid = c.open_stream()
    c.send_data(sid, b"0123456789abc")
    c.send_fin(sid)
    assert c.stream_state(sid) == StreamState.LOCAL_CLOSE
    with pytest.raises(StreamError):
        c.send_data(sid, b"more")
    assert step(c, s) == [StreamOpened(sid), Data(sid, b"0123456789")]  # no FIN yet
    s.accept_stream(sid)
    s.consume(sid, 10)
    assert step(s, c) == [StreamAccepted(sid), WindowOpened(sid)]
    assert step(c, s) == [Data(sid, b"abc"), StreamFinished(sid)]


def test_large_writes_are_split_into_frames():
    c, _ = pair(max_send_frame=4)
    sid = c.open_stream()
    c.send_data(sid, memoryview(b"abcdefghij"))
    assert [f[4] for f in frames_of(c.data_to_send())] == [b"abcd", b"efgh", b"ij"]


def test_blocked_output_queues_data_and_skips_pongs():
    c, s = pair()
    sid = c.open_stream()
    c.set_output_blocked(True)
    c.send_data(sid, b"abc")
    assert c.buffered(sid) == 3
    assert c.receive(encode_frame(Frame(PING, SYN, 0, 9))) == []
    assert frames_of(c.data_to_send()) == [(WU, SYN, sid, 0, b"")]  # control frames still go
    assert c.set_output_blocked(False) == [WindowOpened(sid)]
    assert frames_of(c.data_to_send()) == [(DATA, 0, sid, 3, b"abc")]
    s.ping(5)
    assert step(s, c) == [] and step(c, s) == [Pong(5)]


def test_limits_backlog_and_go_away():
    c, s = pair(accept_backlog=2)
    for _ in range(3):
        c.open_stream()
    assert step(c, s) == [StreamOpened(1), StreamOpened(3)]
    assert step(s, c) == [StreamReset(5, refused=True)]
    s.accept_stream(1)
    c.open_stream()
    assert step(c, s) == [StreamOpened(7)]  # a backlog slot was freed
    s.go_away()
    c.open_stream()  # crosses the GoAway on the wire
    assert step(c, s) == []
    assert step(s, c) == [StreamAccepted(1), GoAwayReceived(GoAwayCode.NORMAL), StreamReset(9, refused=True)]
    assert c.open_refusal() == "the session is going away"
    with pytest.raises(StreamError):
        c.open_stream()


def test_a_server_going_away_refuses_new_streams():
    c, s = pair()
    s.go_away()
    assert frames_of(s.data_to_send()) == [(GO_AWAY, 0, 0, 0, b"")]
    c.open_stream()
    step(c, s)
    assert frames_of(s.data_to_send()) == [(WU, RST, 1, 0, b"")]


def test_stream_limit_and_id_exhaustion():
    c, _ = pair(max_streams=2)
    c.open_stream(), c.open_stream()
    assert c.open_refusal() == "2 streams are open"
    c2, _ = pair()
    c2._next_id = 0xFFFFFFFF
    c2.open_stream()
    assert c2.open_refusal() == "stream ids are exhausted"


@pytest.mark.parametrize("wire, reason", [
    (frame(DATA, SYN, 1, 6, b"x" * 6) + frame(DATA, 0, 1, 5, b"x" * 5), "exceed its window of 4"),
    (frame(WU, SYN, 2, 0), "an id of our parity"),
    (frame(WU, SYN, 3, 0) + frame(WU, SYN, 1, 0), "opened stream 1 after 3"),
    (frame(WU, SYN, 1, 0) + frame(WU, SYN, 1, 0), "already open"),
    (frame(DATA, 0, 5, 1, b"x"), "which the peer never opened"),
    (frame(WU, 0, 4, 0), "which we never opened"),
    (frame(WU, 0, 0, 0), "on stream 0"),
    (frame(PING, SYN, 1, 0), "PING frame on stream 1"),
    (frame(GO_AWAY, 0, 3, 0), "GO_AWAY frame on stream 3"),
    (frame(PING, 0, 0, 0), "neither SYN nor ACK"),
    (frame(WU, SYN | FIN, 1, 0) + frame(WU, FIN, 1, 0), "second FIN"),
    (frame(WU, SYN | FIN, 1, 0) + frame(DATA, 0, 1, 1, b"x"), "after its FIN"),
    (frame(WU, SYN, 1, 0xFFFFFFFF), "overflows"),
    (HEADER.pack(9, 0, 0, 1, 0), "unsupported version 9"),
    (HEADER.pack(0, 7, 0, 1, 0), "unknown frame type 7"),
    (HEADER.pack(0, 0, SYN, 1, 11), "exceeds the 10 byte limit"),
])
def test_protocol_errors_end_the_session_with_go_away(wire, reason):
    s = Session(client=False, window=10)
    with pytest.raises(ProtocolError, match=reason) as err:
        s.receive(wire)
    assert reason in err.value.reason and s.failed is err.value
    assert frames_of(s.data_to_send())[-1] == (GO_AWAY, 0, 0, GoAwayCode.PROTOCOL_ERROR, b"")
    with pytest.raises(ProtocolError):
        s.receive(b"")  # the session stays failed


def test_a_frame_for_our_stream_before_its_syn_left_is_an_error():
    c = Session(client=True)
    c.open_stream()
    with pytest.raises(ProtocolError, match="before we opened it"):
        c.receive(frame(WU, ACK, 1, 0))


def test_go_away_with_an_error_code_is_reported():
    c = Session(client=True)
    assert c.receive(frame(GO_AWAY, 0, 0, 2)) == [GoAwayReceived(GoAwayCode.INTERNAL_ERROR)]
    assert c.remote_go_away == 2


def test_consuming_more_than_was_delivered_is_a_caller_bug():
    c, s = pair()
    sid = c.open_stream()
    c.send_data(sid, b"abc")
    step(c, s)
    with pytest.raises(ValueError):
        s.consume(sid, 4)
    s.consume(99, 1)  # a forgotten stream: nothing to credit


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 2000), st.integers(1, 700))
def test_bulk_through_small_windows(size, window):
    c, s = pair(window=window, max_send_frame=max(1, window // 3))
    sid = c.open_stream()
    payload = bytes(range(256)) * (size // 256 + 1)
    c.send_data(sid, payload[:size])
    c.send_fin(sid)
    got, finished = bytearray(), False
    for _ in range(10_000):
        for event in step(c, s):
            if isinstance(event, StreamOpened):
                s.accept_stream(sid)
            elif isinstance(event, Data):
                got += event.data
                s.consume(sid, len(event.data))
            elif isinstance(event, StreamFinished):
                finished = True
        step(s, c)
        if finished:
            break
    assert finished and bytes(got) == payload[:size]


def test_a_stream_opened_before_go_away_is_announced_before_it():
    c, s = pair()
    sid = c.open_stream()
    c.go_away()
    assert frames_of(c.data_to_send()) == [(WU, SYN, sid, 0, b""), (GO_AWAY, 0, 0, 0, b"")]


def test_unblocking_with_a_budget_takes_streams_in_turn():
    c, _ = pair()
    a, b = c.open_stream(), c.open_stream()
    c.data_to_send()
    c.set_output_blocked(True)
    c.send_data(a, b"a" * 300)
    c.send_data(b, b"b" * 300)
    assert c.output_size == 0
    assert c.set_output_blocked(False, budget=200) == [WindowOpened(a)]
    assert c.buffered(a) == 100 and c.buffered(b) == 300 and c.sendable()
    assert c.output_size == 200
    assert c.set_output_blocked(False, budget=400) == [WindowOpened(b), WindowOpened(a)]
    assert not c.sendable() and c.buffered(a) == c.buffered(b) == 0
    assert [(f[2], len(f[4])) for f in frames_of(c.data_to_send())] == [(a, 200), (b, 300), (a, 100)]
    assert c.output_size == 0
