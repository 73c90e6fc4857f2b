"""The DNS listeners: UDP and TCP on one address, answering from a view it is given.

The only owner of DNS sockets. Packets that are not a query are dropped (UDP) or end
the connection (TCP); a query whose name cannot be echoed (over 255 bytes) gets
FORMERR; nothing raises out of the protocol, and bad input is logged at most once a
minute, without a traceback, since anyone can send it (UDP sources are spoofable). An
answer is never larger than the query's transport allows nor, over UDP, than
`udp_max_payload`. Metrics are reported through `on_query`, so this package stays free
of the agent's registry.
"""

from __future__ import annotations

import asyncio
import random
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from dnslib import EDNS0, QTYPE, RCODE, DNSError, DNSHeader, DNSLabel, DNSRecord
from dnslib.label import DNSLabelError

from .answer import (
    AnswerPolicy,
    DNSView,
    build_answer,
    formerr,
    nxdomain,
    refused,
    servfail,
    trim_for_udp,
    udp_limit,
)
from .pack import pack
from .parse import InvalidName, parse_qname
from .recursor import forward
from .wire import patch_answer, question_key

__all__ = ["DNSServer", "QuietLog", "resolve_packet"]

log = structlog.get_logger(component="dns")

OnQuery = Callable[[str, str, float], None]
Report = Callable[[str, str], None]
# what dnslib and our answer code raise on bytes or names they cannot handle
_BAD_INPUT = (DNSError, DNSLabelError, struct.error, IndexError, ValueError, UnicodeError, OverflowError)
_MAX_WIRE_NAME = 255
_TCP_MAX = 65535
CACHE_SECONDS = 60.0  # also refreshes the SOA serial in cached negative answers
CACHE_ENTRIES = 65536
SHUFFLE_VARIANTS = 4


@dataclass
class _Cached:
    generation: Any
    variants: list[bytes]
    created: float
    hits: int = 0


class QuietLog:
    """Bad input is logged at most once per `interval` per event, with how many were
    left out since: a flood of junk must not become a flood of log lines."""

    def __init__(self, interval: float = 60.0, clock: Callable[[], float] = time.monotonic,
                 sink: Callable[..., Any] | None = None) -> None:
        self._interval = interval
        self._clock = clock
        self._sink = sink
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def __call__(self, event: str, detail: str, *, level: str = "debug") -> bool:
        """Log (True) or count (False) one occurrence."""
        now = self._clock()
        last = self._last.get(event)
        if last is not None and now - last < self._interval:
            self._suppressed[event] = self._suppressed.get(event, 0) + 1
            return False
        self._last[event] = now
        suppressed = self._suppressed.pop(event, 0)
        sink = self._sink or getattr(log, level)
        sink(event, detail=detail, suppressed=suppressed)
        return True


def _wire_name_ok(name: DNSLabel) -> bool:
    """Labels of at most 63 bytes in at most 255 bytes: dnslib parses longer ones (a
    length byte of 64-191 is read as a label), but cannot pack them back."""
    return all(len(label) <= 63 for label in name.label) and sum(len(label) + 1 for label in name.label) + 1 <= _MAX_WIRE_NAME


def _edns_size(request: DNSRecord) -> int | None:
    for rr in request.ar:
        if rr.rtype == QTYPE.OPT:
            return max(512, min(int(rr.rclass), 65535))
    return None


def resolve_packet(
    data: bytes,
    view: DNSView,
    policy: AnswerPolicy,
    domains: tuple[str, ...],
    rng: random.Random,
    *,
    udp: bool,
    now: Callable[[], float] = time.time,
    report: Report | None = None,
) -> tuple[bytes | None, str, str]:
    """One query packet to one answer packet (None: drop). Returns (bytes, qtype, rcode).
    Never raises on bad input: `report(event, detail)` hears about it instead."""
    try:
        request = DNSRecord.parse(data)
    except _BAD_INPUT as exc:
        if report is not None:
            report("dns_query_malformed", f"{len(data)} bytes: {type(exc).__name__}")
        return None, "invalid", "dropped"
    if request.header.qr or len(request.questions) != 1:
        return None, "invalid", "dropped"
    qtype_name = QTYPE.get(request.q.qtype, str(request.q.qtype))
    if not _wire_name_ok(request.q.qname):
        if report is not None:
            report("dns_query_malformed", f"question name of {len(request.q.qname)} bytes (at most 255)")
        return pack(formerr(request)), qtype_name, "FORMERR"
    try:
        return _resolve(request, qtype_name, view, policy, domains, rng, udp, now)
    except _BAD_INPUT as exc:  # an answer we could not pack: SERVFAIL, never a dead query
        if report is not None:
            report("dns_answer_failed", f"{request.q.qname} {qtype_name}: {type(exc).__name__}: {exc}"[:300])
        return pack(servfail(request)), qtype_name, "SERVFAIL"


def _resolve(request: DNSRecord, qtype_name: str, view: DNSView, policy: AnswerPolicy, domains: tuple[str, ...],
             rng: random.Random, udp: bool, now: Callable[[], float]) -> tuple[bytes, str, str]:
    edns = _edns_size(request)
    try:
        lookup = parse_qname(str(request.q.qname), domains)
    except InvalidName as exc:
        reply = nxdomain(request, exc.domain or domains[0], policy, now)
    else:
        if lookup is None:
            reply = refused(request)
        else:
            try:
                reply = build_answer(request, lookup, view, policy, rng, now)
            except LookupError:
                reply = servfail(request)
    if edns is not None:
        reply.add_ar(EDNS0(udp_len=udp_limit(policy, edns)))
    rcode = RCODE.get(reply.header.rcode, str(reply.header.rcode))
    if udp:
        return trim_for_udp(reply, policy, edns), qtype_name, rcode
    packed = pack(reply)
    while len(packed) > _TCP_MAX and len(reply.rr) > 1:
        reply.rr = reply.rr[: len(reply.rr) // 2]
        packed = pack(reply)
    return packed, qtype_name, rcode


def _truncated(query: bytes) -> bytes:
    """A recursor's answer too large for this client over UDP: TC, ask again over TCP."""
    request = DNSRecord.parse(query)
    header = DNSHeader(id=request.header.id, qr=1, rd=request.header.rd, ra=1, tc=1)
    return pack(DNSRecord(header, q=request.q))


class _UDP(asyncio.DatagramProtocol):
    def __init__(self, server: DNSServer) -> None:
        self._server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            self._received(data, addr)
        except Exception as exc:  # noqa: BLE001 - the shell's last guard: one quiet line, the listener lives
            self._server.report("dns_query_failed", f"{type(exc).__name__}: {exc}"[:300], level="warning")

    def _received(self, data: bytes, addr: Any) -> None:
        cached = self._server.cached(data, True)
        if cached is not None:
            if self.transport is not None:
                self.transport.sendto(cached, addr)
            return
        if self._server.ready_now(data):
            answer = self._server.answer_now(data, udp=True)
            if answer is not None and self.transport is not None:
                self.transport.sendto(answer, addr)
            return
        task = asyncio.get_running_loop().create_task(self._answer_later(data, addr))
        self._server.pending.add(task)
        task.add_done_callback(self._server.pending.discard)

    async def _answer_later(self, data: bytes, addr: Any) -> None:
        try:
            answer = await self._server.answer(data, udp=True)
        except Exception as exc:  # noqa: BLE001 - as in datagram_received
            self._server.report("dns_query_failed", f"{type(exc).__name__}: {exc}"[:300], level="warning")
            return
        if answer is not None and self.transport is not None:
            self.transport.sendto(answer, addr)


class DNSServer:
    def __init__(self, host: str, port: int, view: DNSView, policy: AnswerPolicy, domains: tuple[str, ...],
                 on_query: OnQuery | None = None, rng: random.Random | None = None,
                 recursors: tuple[str, ...] = (), recursor_timeout: float = 2.0) -> None:
        self.recursors = recursors
        self.recursor_timeout = recursor_timeout
        self._host, self._port = host, port
        self.view = view
        self.policy = policy
        self.domains = domains
        self._on_query = on_query
        self._rng = rng or random.Random()
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.AbstractServer | None = None
        self.pending: set[asyncio.Task[None]] = set()
        self._cache: dict[tuple[bytes, int | None, bool], _Cached] = {}
        self.cache_hits = 0
        self.port = port
        self.report = QuietLog()

    def _lookup(self, data: bytes) -> Any:
        try:
            return parse_qname(str(DNSRecord.parse(data).q.qname), self.domains)
        except (*_BAD_INPUT, InvalidName, AttributeError):
            return None

    def ready_now(self, data: bytes) -> bool:
        """True when the view can answer without waiting (the common, cached case)."""
        lookup = self._lookup(data)
        if lookup is None:
            return not (self.recursors and self._outside(data))
        ready = getattr(self.view, "ready", None)
        return ready is None or bool(ready(lookup))

    def _outside(self, data: bytes) -> bool:
        """A well-formed question for a name outside our domains (recursor material)."""
        try:
            name = DNSRecord.parse(data).q.qname
            return _wire_name_ok(name) and parse_qname(str(name), self.domains) is None
        except (*_BAD_INPUT, InvalidName, AttributeError):
            return False

    async def answer(self, data: bytes, *, udp: bool) -> bytes | None:
        """Let the view load what the query needs (first query for a name), then answer;
        names outside our domains go to the recursors when there are any."""
        if self.recursors and self._outside(data):
            started = time.perf_counter()
            forwarded = await forward(data, self.recursors, self.recursor_timeout)
            if forwarded is None:
                forwarded = pack(servfail(DNSRecord.parse(data)))
            elif udp and len(forwarded) > self._udp_limit(data):
                forwarded = _truncated(data)
            if self._on_query is not None:
                self._on_query("forwarded", "NOERROR" if forwarded[3] & 0x0F in (0, 3) else "SERVFAIL",
                               time.perf_counter() - started)
            return bytes(forwarded)
        prepare = getattr(self.view, "prepare", None)
        if prepare is not None:
            lookup = self._lookup(data)
            if lookup is not None:
                await prepare(lookup)
        return self.answer_now(data, udp=udp)

    def _udp_limit(self, data: bytes) -> int:
        try:
            return udp_limit(self.policy, _edns_size(DNSRecord.parse(data)))
        except _BAD_INPUT:
            return 512

    def cached(self, data: bytes, udp: bool) -> bytes | None:
        """The answer from the wire cache, or None (then the full path runs)."""
        key = question_key(data)
        if key is None:
            return None
        entry = self._cache.get((key[0], key[2], udp))
        if entry is None or not self._still_valid(entry.generation) or time.monotonic() - entry.created > CACHE_SECONDS:
            return None
        entry.hits += 1
        self.cache_hits += 1
        variant = entry.variants[entry.hits % len(entry.variants)]  # rotate: answers stay shuffled
        return patch_answer(variant, data)

    def _token(self, data: bytes) -> Any:
        """What the view says a cached answer depends on (views without tokens: one
        generation counter for everything; views without either: no caching)."""
        token_of = getattr(self.view, "token", None)
        if token_of is not None:
            lookup = self._lookup(data)
            return token_of(lookup) if lookup is not None else None
        return getattr(self.view, "generation", None)

    def _still_valid(self, token: Any) -> bool:
        valid = getattr(self.view, "token_valid", None)
        if valid is not None:
            return bool(valid(token))
        return token is not None and token == getattr(self.view, "generation", None)

    def answer_now(self, data: bytes, *, udp: bool) -> bytes | None:
        started = time.perf_counter()
        generation = self._token(data)
        answer, qtype, rcode = resolve_packet(data, self.view, self.policy, self.domains, self._rng, udp=udp,
                                              report=self.report)
        key = question_key(data) if generation is not None and answer is not None else None
        if key is not None and answer is not None and rcode != "SERVFAIL":
            variants = [answer]
            if (answer[6] << 8 | answer[7]) > 1:  # several records: keep a few orders to rotate through
                for _ in range(SHUFFLE_VARIANTS - 1):
                    more, _, _ = resolve_packet(data, self.view, self.policy, self.domains, self._rng, udp=udp,
                                                report=self.report)
                    if more is not None:
                        variants.append(more)
            if len(self._cache) >= CACHE_ENTRIES:
                self._cache.clear()
            self._cache[(key[0], key[2], udp)] = _Cached(generation, variants, time.monotonic())
        if self._on_query is not None:
            self._on_query(qtype, rcode, time.perf_counter() - started)
        return answer

    async def start(self) -> int:
        """Bind TCP first (port 0 picks one), then UDP on the same port."""
        loop = asyncio.get_running_loop()
        self._tcp = await asyncio.start_server(self._serve_tcp, self._host, self._port)
        self.port = self._tcp.sockets[0].getsockname()[1]
        transport, _ = await loop.create_datagram_endpoint(lambda: _UDP(self), local_addr=(self._host, self.port))
        self._udp = transport  # type: ignore[assignment]
        return self.port

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                async with asyncio.timeout(10):
                    header = await reader.readexactly(2)
                    (length,) = struct.unpack(">H", header)
                    data = await reader.readexactly(length)
                answer = self.cached(data, False) or await self.answer(data, udp=False)
                if answer is None:
                    return
                writer.write(struct.pack(">H", len(answer)) + answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            return
        except Exception as exc:  # noqa: BLE001 - the shell's last guard, as for UDP
            self.report("dns_query_failed", f"{type(exc).__name__}: {exc}"[:300], level="warning")
        finally:
            writer.close()

    async def stop(self) -> None:
        for task in list(self.pending):
            task.cancel()
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            try:
                await asyncio.wait_for(self._tcp.wait_closed(), 2)
            except TimeoutError:
                pass
