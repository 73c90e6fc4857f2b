"""The splice's rules on fake transports: forwarding, backpressure both ways, bytes held
until the peer exists, half-close, resets, and the idle sweep."""

from __future__ import annotations

from typing import Any

from mesh.proxy.splice import SpliceSide, Traffic, join, sweep_idle


class FakeTransport:
    def __init__(self, *, eof: bool = True, tls: bool = False) -> None:
        self.written: list[bytes] = []
        self.paused = False
        self.eof_written = False
        self.closed = False
        self.aborted = False
        self._eof = eof
        self._tls = tls

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return object() if (name == "sslcontext" and self._tls) else default

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def can_write_eof(self) -> bool:
        return self._eof

    def write_eof(self) -> None:
        self.eof_written = True

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True


def pair(*, down_tls: bool = False, up_eof: bool = True) -> tuple[SpliceSide, SpliceSide, FakeTransport, FakeTransport, Traffic]:
    traffic = Traffic()
    down, up = SpliceSide(traffic, downstream=True), SpliceSide(traffic, downstream=False)
    dt, ut = FakeTransport(eof=not down_tls, tls=down_tls), FakeTransport(eof=up_eof)
    down.connection_made(dt)
    up.connection_made(ut)
    return down, up, dt, ut, traffic


def test_bytes_cross_and_are_counted_by_direction():
    down, up, dt, ut, traffic = pair()
    join(down, up)
    down.data_received(b"request")
    up.data_received(b"answer!!")
    assert ut.written == [b"request"] and dt.written == [b"answer!!"]
    assert (traffic.rx, traffic.tx) == (7, 8)


def test_bytes_before_the_peer_exists_are_held_with_reading_paused():
    down, up, dt, ut, _ = pair()
    down.data_received(b"early")
    assert dt.paused and ut.written == []
    join(down, up)
    assert ut.written == [b"early"] and not dt.paused


def test_a_full_write_buffer_pauses_reading_on_the_other_side():
    down, up, dt, ut, _ = pair()
    join(down, up)
    up.pause_writing()  # the upstream's buffer is full
    assert dt.paused
    up.resume_writing()
    assert not dt.paused


def test_eof_is_passed_on_and_both_close_when_both_are_done():
    down, up, dt, ut, _ = pair()
    join(down, up)
    assert down.eof_received() is True
    assert ut.eof_written and not ut.closed
    assert up.eof_received() is False
    assert dt.closed and ut.closed


def test_an_eof_towards_a_transport_without_half_close_closes_it():
    down, up, dt, ut, _ = pair(down_tls=True)
    join(down, up)
    assert up.eof_received() is False
    assert dt.closed
    assert down.eof_received() is False  # a TLS side never keeps itself open


def test_a_reset_on_one_side_aborts_the_other_and_a_clean_close_closes_it():
    down, up, dt, ut, _ = pair()
    join(down, up)
    down.connection_lost(ConnectionResetError())
    assert ut.aborted
    down2, up2, dt2, ut2, _ = pair()
    join(down2, up2)
    up2.connection_lost(None)
    assert dt2.closed and not dt2.aborted


def test_on_close_runs_once():
    calls: list[SpliceSide] = []
    side = SpliceSide(Traffic(), downstream=True, on_close=calls.append)
    side.connection_made(FakeTransport())
    side.connection_lost(None)
    side.connection_lost(None)
    assert calls == [side]


def test_the_idle_sweep_closes_only_connections_that_moved_nothing():
    busy_down, busy_up, busy_dt, _, _ = pair()
    idle_down, idle_up, idle_dt, _, _ = pair()
    join(busy_down, busy_up)
    join(idle_down, idle_up)
    sides = [busy_down, idle_down]
    assert sweep_idle(sides) == 0  # first sweep: nothing moved since the start, one mark
    busy_up.data_received(b"x")
    assert sweep_idle(sides) == 1
    assert idle_dt.closed and not busy_dt.closed


def test_a_side_that_ended_before_the_join_ends_the_other():
    down, up, dt, ut, _ = pair()
    up.connection_lost(None)  # e.g. a stream reset right after it was accepted
    join(down, up)
    assert dt.closed
