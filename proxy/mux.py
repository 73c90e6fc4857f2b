"""Stream multiplexing between sidecars: yamux framing and flow control as pure state.

Why: sidecar-to-sidecar traffic rides long-lived mutual-TLS connections that carry many
streams, so a new app connection costs one frame instead of a ~2 ms TLS handshake. The
framing is HashiCorp's yamux spec (version 0), negotiated by the ALPN id `ALPN`; a peer
that does not offer it gets one TLS connection per app connection (not this module).

The functional core: no asyncio, sockets, clocks or logging. A `Session` is fed the
bytes read from the connection (`receive`) and the app's actions (`open_stream`,
`send_data`, `consume`, `send_fin`, `reset_stream`, `ping`, `go_away`); it returns events
for the glue (`mux_transport.py`) and gathers the bytes to write, taken with
`data_to_send()` once per batch so that many frames share one TLS write.

Wire format and errors: `mux_frame.py`; events and states: `mux_events.py`. The client
opens odd stream ids, the server even ones; each stream starts with 256 KiB windows.

Choices where the spec is silent (our peers are other mesh sidecars):
- SYN and ACK ride on the stream's first frame when the app writes in the same batch;
  otherwise `data_to_send()` sends them as a bare WindowUpdate.
- A peer's stream ids must increase. A frame for an id that was never opened, or for a
  stream whose SYN we have not sent yet, is a protocol error; a frame for a stream that
  is already gone is dropped (it crossed our RST or FIN on the wire).
- The receive window is credited back in one WindowUpdate once the app consumed half of
  it. The glue reports consumption only when the local side really took the bytes, so a
  slow local reader stops the remote writer: backpressure crosses the mux.
- Everything the peer controls is bounded: concurrent and not yet accepted streams (an
  excess SYN gets RST), a frame's size (the window), the window (2**32 - 1). While the
  glue says the connection's write side is blocked, stream data stays queued and pings
  go unanswered, so a peer that does not read cannot grow our buffers.
"""

from __future__ import annotations

from collections import deque

from mesh.proxy.mux_events import (
    Data,
    Event,
    GoAwayReceived,
    Pong,
    StreamAccepted,
    StreamFinished,
    StreamOpened,
    StreamReset,
    StreamState,
    StreamStats,
    WindowOpened,
)
from mesh.proxy.mux_frame import (
    ACK,
    DATA,
    FIN,
    GO_AWAY,
    HEADER,
    INITIAL_WINDOW,
    MAX_WINDOW,
    PING,
    RST,
    SYN,
    VERSION,
    WINDOW_UPDATE,
    FrameDecoder,
    FrameType,
    GoAwayCode,
    ProtocolError,
    StreamError,
)

__all__ = ["ACCEPT_BACKLOG", "ALPN", "MAX_SEND_FRAME", "MAX_STREAMS", "Session"]

ALPN = "x-mesh-yamux/1"
MAX_STREAM_ID = 0xFFFFFFFF
MAX_STREAMS = 1024
ACCEPT_BACKLOG = 256
MAX_SEND_FRAME = 64 * 1024  # bounds how much the receiver reassembles before delivering
_pack = HEADER.pack
_SYN_SENT, _SYN_RECEIVED, _ESTABLISHED = 0, 1, 2  # StreamState's, as plain ints


class _Stream:
    __slots__ = ("id", "state", "send_window", "recv_window", "unconsumed", "credit", "queue",
                 "queued", "flags", "fin_requested", "fin_sent", "remote_fin", "accepted")

    def __init__(self, sid: int, state: int, window: int) -> None:
        self.id = sid
        self.state = state
        self.send_window = window
        self.recv_window = window
        self.unconsumed = 0  # received, not yet taken by the app
        self.credit = 0  # taken by the app, not yet given back to the peer
        # beyond the send window or while output is blocked: the app's own buffers (or
        # views of them), not copies; the deque only while there is something in it
        self.queue: deque[bytes | memoryview] | None = None
        self.queued = 0
        self.flags = 0  # SYN/ACK waiting to ride on the next frame
        self.fin_requested = False
        self.fin_sent = False
        self.remote_fin = False
        self.accepted = state != _SYN_RECEIVED


class Session:
    """One side of a multiplexed connection, as pure state.

    Local calls queue frames (taken with `data_to_send`); `receive` consumes the peer's
    bytes and returns events in wire order, raising ProtocolError (with a GoAway queued)
    when the peer breaks the protocol. Streams are forgotten once reset or once both
    sides sent FIN (and ours went out), so a long-lived session does not leak.
    """

    def __init__(self, *, client: bool, window: int = INITIAL_WINDOW, max_streams: int = MAX_STREAMS,
                 accept_backlog: int = ACCEPT_BACKLOG, max_send_frame: int = MAX_SEND_FRAME) -> None:
        self.client = client  # `window` may differ from the spec's only between two of ours
        self.window = window
        self.max_streams = max_streams
        self.accept_backlog = accept_backlog
        self.max_send_frame = max_send_frame
        self.local_go_away: int | None = None
        self.remote_go_away: int | None = None
        self.failed: ProtocolError | None = None
        self.streams_opened = 0  # both directions, for metrics
        self.streams_refused = 0  # peer SYNs answered with RST
        self._half = window // 2
        self._next_id = 1 if client else 2
        self._peer_parity = 0 if client else 1
        self._last_peer_id = 0
        self._streams: dict[int, _Stream] = {}
        self._flagged: dict[int, _Stream] = {}  # SYN/ACK not sent yet
        self._queued: dict[int, _Stream] = {}  # send queue not empty
        self._backlog = 0
        self._blocked = False
        self._out: list[bytes | bytearray | memoryview] = []
        self.output_size = 0  # data bytes waiting in data_to_send(): the glue may flush early
        self._decoder = FrameDecoder(window)

    # -- inspection --------------------------------------------------------------------

    def stream_ids(self) -> list[int]:
        return list(self._streams)

    def has_stream(self, sid: int) -> bool:
        return sid in self._streams

    def open_refusal(self) -> str | None:
        """Why `open_stream` would fail now, or None when it would succeed."""
        if self.failed is not None:
            return "the session failed"
        if self.local_go_away is not None or self.remote_go_away is not None:
            return "the session is going away"
        if len(self._streams) >= self.max_streams:
            return f"{self.max_streams} streams are open"
        if self._next_id > MAX_STREAM_ID:
            return "stream ids are exhausted"
        return None

    def stream_state(self, sid: int) -> StreamState | None:
        if (st := self._streams.get(sid)) is None:
            return None
        if st.fin_requested:
            return StreamState.CLOSING if st.remote_fin else StreamState.LOCAL_CLOSE
        return StreamState.REMOTE_CLOSE if st.remote_fin else StreamState(st.state)

    def stream_stats(self, sid: int) -> StreamStats | None:
        """Flow-control counters of a live stream (debugging, metrics, invariant tests):
        recv_window + unconsumed + uncredited is always the session's window."""
        if (st := self._streams.get(sid)) is None:
            return None
        return StreamStats(st.send_window, st.recv_window, st.unconsumed, st.credit, st.queued)

    def buffered(self, sid: int) -> int:
        """Bytes the app wrote that are still queued (0 for a forgotten stream)."""
        st = self._streams.get(sid)
        return st.queued if st is not None else 0

    # -- local operations --------------------------------------------------------------

    def open_stream(self) -> int:
        """A new stream id; its SYN rides on its first frame. StreamError when
        `open_refusal()` says why not."""
        reason = self.open_refusal()
        if reason is not None:
            raise StreamError(reason)
        sid = self._next_id
        self._next_id += 2
        st = self._streams[sid] = _Stream(sid, _SYN_SENT, self.window)
        st.flags = SYN
        self._flagged[sid] = st
        self.streams_opened += 1
        return sid

    def accept_stream(self, sid: int) -> None:
        """The app took a stream from StreamOpened: acknowledge it, free a backlog slot."""
        st = self._streams.get(sid)
        if st is None or st.accepted:
            return
        st.accepted = True
        st.state = _ESTABLISHED
        self._backlog -= 1
        st.flags |= ACK
        self._flagged[sid] = st

    def send_data(self, sid: int, data: bytes | bytearray | memoryview) -> int:
        """Frame `data` up to the send window, queue the rest; the bytes now queued."""
        st = self._streams.get(sid)
        if st is None or st.fin_requested:
            raise StreamError(f"stream {sid} is not open for writing")
        n = len(data)
        if not n:
            return st.queued
        if type(data) is not bytes:
            data = bytes(data)  # the caller may reuse its buffer; we keep references
        window = st.send_window
        if st.queued or self._blocked or not window:
            self._enqueue(st, data)
        elif n <= window and n <= self.max_send_frame:
            flags = st.flags
            if flags:
                st.flags = 0
                del self._flagged[sid]
            self._out += (_pack(VERSION, DATA, flags, sid, n), data)
            self.output_size += n
            st.send_window = window - n
        elif n <= window:
            self._emit_data(st, data)
        else:
            view = memoryview(data)
            self._emit_data(st, view[:window])
            self._enqueue(st, view[window:])
        return st.queued

    def send_fin(self, sid: int) -> None:
        """Half-close: FIN goes out after the data already queued."""
        st = self._streams.get(sid)
        if st is None:
            raise StreamError(f"stream {sid} is gone")
        if st.fin_requested:
            return
        st.fin_requested = True
        if not st.queued:
            self._emit_fin(st)

    def reset_stream(self, sid: int) -> None:
        """Abort: RST now, queued data dropped, the stream forgotten. No-op when gone."""
        st = self._streams.get(sid)
        if st is None:
            return
        if not st.flags & SYN:  # a stream the peer never heard of needs no RST
            self._out.append(_pack(VERSION, WINDOW_UPDATE, self._take_flags(st) | RST, sid, 0))
        self._forget(st)

    def consume(self, sid: int, n: int) -> None:
        """The app took `n` delivered bytes: credit them back once half a window is due."""
        st = self._streams.get(sid)
        if st is None or n <= 0:
            return
        if n > st.unconsumed:
            raise ValueError(f"stream {sid}: {n} bytes consumed, {st.unconsumed} delivered")
        st.unconsumed -= n
        credit = st.credit + n
        if credit >= self._half and not st.remote_fin:
            self._out.append(_pack(VERSION, WINDOW_UPDATE, self._take_flags(st), sid, credit))
            st.recv_window += credit
            credit = 0
        st.credit = credit

    def ping(self, opaque: int) -> None:
        self._out.append(_pack(VERSION, PING, SYN, 0, opaque))

    def go_away(self, code: int = GoAwayCode.NORMAL) -> None:
        """Refuse new streams from now on; existing ones may finish."""
        if self.local_go_away is None or code != self.local_go_away:
            self._announce()  # streams opened before the GoAway must be seen before it
            self._out.append(_pack(VERSION, GO_AWAY, 0, 0, code))
        self.local_go_away = code

    def set_output_blocked(self, blocked: bool, budget: int = MAX_WINDOW) -> list[Event]:
        """The connection's write buffer is full (True) or drained (False). Unblocking
        sends queued data as the windows allow, streams in turn, about `budget` bytes
        (`sendable()` says whether more could go), and reports the streams whose
        buffers shrank."""
        self._blocked = blocked
        events: list[Event] = []
        if blocked:
            return events
        for st in list(self._queued.values()):
            if budget <= 0:
                break
            if st.send_window:
                sent = self._flush(st, budget)
                budget -= sent
                events.append(WindowOpened(st.id))
                if st.queued:  # its turn is over: to the back of the line
                    del self._queued[st.id]
                    self._queued[st.id] = st
        return events

    def sendable(self) -> bool:
        """Whether queued data could go out now (after a budgeted unblock)."""
        return not self._blocked and any(st.send_window for st in self._queued.values())

    def data_to_send(self) -> bytes:
        """Everything queued for the wire since the last call, as one buffer."""
        if self._flagged:
            self._announce()
        out = self._out
        if not out:
            return b""
        data = b"".join(out)
        out.clear()
        self.output_size = 0
        return data

    # -- the peer's bytes --------------------------------------------------------------

    def receive(self, data: bytes | bytearray | memoryview) -> list[Event]:
        if self.failed is not None:
            raise self.failed
        events: list[Event] = []
        streams = self._streams
        try:
            for ftype, flags, sid, length, payload in self._decoder.feed(data):
                if ftype == DATA and not flags:  # the bulk of the traffic: checks inline
                    st = streams.get(sid)
                    if (st is not None and not st.flags & SYN and not st.remote_fin
                            and 0 < length <= st.recv_window):
                        st.recv_window -= length
                        st.unconsumed += length
                        events.append(Data(sid, payload))
                        continue
                if ftype <= WINDOW_UPDATE:
                    self._on_stream_frame(ftype, flags, sid, length, payload, events)
                else:
                    self._on_session_frame(ftype, flags, sid, length, events)
        except ProtocolError as exc:
            self.failed = exc
            self.go_away(GoAwayCode.PROTOCOL_ERROR)
            raise
        return events

    def _on_stream_frame(self, ftype: int, flags: int, sid: int, length: int, payload: bytes,
                         events: list[Event]) -> None:
        st = self._streams.get(sid)
        if flags & SYN:
            if st is not None:
                raise ProtocolError(f"SYN for stream {sid}, which is already open")
            st = self._incoming(sid, events)
            if st is None:
                return
        elif st is None:
            self._check_gone(sid)
            return
        elif st.flags & SYN:
            raise ProtocolError(f"frame for stream {sid} before we opened it")
        if flags & ACK and st.state == _SYN_SENT:
            st.state = _ESTABLISHED
            if not flags & RST:
                events.append(StreamAccepted(sid))
        if flags & RST:
            refused = st.state == _SYN_SENT
            self._forget(st)
            events.append(StreamReset(sid, refused))
            return
        if ftype == DATA:
            if length:
                if st.remote_fin:
                    raise ProtocolError(f"data on stream {sid} after its FIN")
                if length > st.recv_window:
                    raise ProtocolError(
                        f"{length} bytes on stream {sid} exceed its window of {st.recv_window}")
                st.recv_window -= length
                st.unconsumed += length
                events.append(Data(sid, payload))
        elif length:
            window = st.send_window + length
            if window > MAX_WINDOW:
                raise ProtocolError(f"window update overflows stream {sid}'s window")
            st.send_window = window
            if st.queued and not self._blocked and self._flush(st):
                events.append(WindowOpened(sid))
        if flags & FIN:
            if st.remote_fin:
                raise ProtocolError(f"second FIN on stream {sid}")
            st.remote_fin = True
            events.append(StreamFinished(sid))
            if st.fin_sent:
                self._forget(st)

    def _on_session_frame(self, ftype: int, flags: int, sid: int, value: int,
                          events: list[Event]) -> None:
        if sid:
            raise ProtocolError(f"{FrameType(ftype).name} frame on stream {sid}, not 0")
        if ftype == PING:
            if flags & SYN:
                if not self._blocked:  # a peer that does not read needs no answers
                    self._out.append(_pack(VERSION, PING, ACK, 0, value))
            elif flags & ACK:
                events.append(Pong(value))
            else:
                raise ProtocolError("ping with neither SYN nor ACK")
        else:
            self.remote_go_away = value
            events.append(GoAwayReceived(value))

    def _incoming(self, sid: int, events: list[Event]) -> _Stream | None:
        if sid & 1 != self._peer_parity:
            raise ProtocolError(f"peer opened stream {sid}, an id of our parity")
        if sid <= self._last_peer_id:
            raise ProtocolError(f"peer opened stream {sid} after {self._last_peer_id}")
        self._last_peer_id = sid
        if (self.local_go_away is not None or len(self._streams) >= self.max_streams
                or self._backlog >= self.accept_backlog):
            self._out.append(_pack(VERSION, WINDOW_UPDATE, RST, sid, 0))
            self.streams_refused += 1
            return None
        st = self._streams[sid] = _Stream(sid, _SYN_RECEIVED, self.window)
        self._backlog += 1
        self.streams_opened += 1
        events.append(StreamOpened(sid))
        return st

    def _check_gone(self, sid: int) -> None:
        """A frame for a stream we do not hold: late (dropped) or never opened (error)."""
        if sid == 0:
            raise ProtocolError("stream frame on stream 0")
        if sid & 1 == self._peer_parity:
            if sid > self._last_peer_id:
                raise ProtocolError(f"frame for stream {sid}, which the peer never opened")
        elif sid >= self._next_id:
            raise ProtocolError(f"frame for stream {sid}, which we never opened")

    # -- helpers -------------------------------------------------------------------------

    def _announce(self) -> None:
        """SYN and ACK that found no frame to ride on go out as bare WindowUpdates."""
        if self._flagged:
            for st in self._flagged.values():
                self._out.append(_pack(VERSION, WINDOW_UPDATE, st.flags, st.id, 0))
                st.flags = 0
            self._flagged.clear()

    def _take_flags(self, st: _Stream) -> int:
        flags = st.flags
        if flags:
            st.flags = 0
            del self._flagged[st.id]
        return flags

    def _emit_data(self, st: _Stream, data: bytes | memoryview) -> None:
        """Frames for `data` (within the window), at most max_send_frame each."""
        total, step, out, sid = len(data), self.max_send_frame, self._out, st.id
        if total > step and type(data) is bytes:
            data = memoryview(data)  # slices without copies
        for pos in range(0, total, step):
            chunk = data[pos:pos + step] if total > step else data
            out += (_pack(VERSION, DATA, self._take_flags(st), sid, len(chunk)), chunk)
        st.send_window -= total
        self.output_size += total

    def _enqueue(self, st: _Stream, data: bytes | memoryview) -> None:
        if st.queue is None:
            st.queue = deque()
            self._queued[st.id] = st
        st.queue.append(data)
        st.queued += len(data)

    def _flush(self, st: _Stream, limit: int = MAX_WINDOW) -> int:
        """Send as much of the queue as the window (and `limit`) allows; then the FIN if
        it was waiting. How much went out."""
        queue = st.queue
        assert queue is not None
        n = budget = min(st.queued, st.send_window, limit)
        while budget:
            piece = queue[0]
            if len(piece) <= budget:
                queue.popleft()
            else:
                piece = memoryview(piece)
                queue[0] = piece[budget:]
                piece = piece[:budget]
            self._emit_data(st, piece)
            budget -= len(piece)
        st.queued -= n
        if not st.queued:
            st.queue = None
            del self._queued[st.id]
            if st.fin_requested and not st.fin_sent:
                self._emit_fin(st)
        return n

    def _emit_fin(self, st: _Stream) -> None:
        self._out.append(_pack(VERSION, WINDOW_UPDATE, self._take_flags(st) | FIN, st.id, 0))
        st.fin_sent = True
        if st.remote_fin:
            self._forget(st)

    def _forget(self, st: _Stream) -> None:
        sid = st.id
        del self._streams[sid]
        self._flagged.pop(sid, None)
        self._queued.pop(sid, None)
        if not st.accepted:
            self._backlog -= 1

