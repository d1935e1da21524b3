"""The AudioSocket TCP server: Asterisk connects, one connection is one call.

Asterisk is always the TCP client (``AudioSocket(<uuid>,host:port)``, ``Dial(AudioSocket/...)``
or ARI externalMedia; docs/protocols/asterisk.md §3). The wire is parsed by the sans-I/O
:class:`~gateway.telephony.audiosocket.AudioSocketProtocol`; this module owns the socket,
the timers and the call:

* **Admission.** AudioSocket has no authentication, so a connection from outside
  ``AUDIOSOCKET_ALLOW`` is closed at once (counted in
  ``gateway_auth_failures_total{transport="audiosocket"}``, logged once per source address,
  with a bounded memory of addresses). At capacity, while draining or while the speech
  backend is down (``CallRegistry.refusal_reason``) the connection gets the hang-up packet
  ``00 00 00`` at once, before anything is read, and is counted as a refused call.
* **Start.** The UUID comes first and the first audio message (normally within 1 ms) tells
  the rate; if no audio follows within ``audio_wait`` seconds the call starts at 8 kHz
  (:meth:`AudioSocketProtocol.start_default`).
* **Inbound.** Whatever TCP delivers goes to ``receive_data`` (packets may be split
  anywhere); events go to the conversation synchronously, as in the WebSocket driver, with
  the same bad-input counting (:class:`~gateway.telephony.driver.BadInputLog`).
* **Outbound.** Asterisk neither buffers nor paces AudioSocket audio (§3.3, §7:
  ``app_audiosocket.c`` writes each packet to the channel as it arrives), so a pacer task
  owned by the call sends exactly one 20 ms frame per tick on a drift-free grid
  (:class:`~gateway.telephony.pacing.FramePacer`) from a playout queue
  (:class:`~gateway.telephony.pacing.OutboundAudio`): silence while idle (the
  ``AudioSocket()`` app hangs up after 2 s without activity), :class:`MarkPlayed` when the
  frame clock passes a mark, :class:`ClearAudio` empties the queue and retires its marks.
  Each tick's lateness goes to ``gateway_audiosocket_pacing_lateness_seconds``.
* **Hang-up.** Ours: ``00 00 00`` then close. Theirs: EOF (Asterisk never sends 0x00).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Sequence
from typing import Any, Final

from gateway.calls import CallRegistry, CallSession
from gateway.logs import call_id_var
from gateway.metrics import Metrics
from gateway.telephony.audiosocket import HANGUP_PACKET, AudioSocketProtocol
from gateway.telephony.driver import BadInputLog, ConversationFactory, dispatch, max_duration
from gateway.telephony.events import (
    CallEnded,
    CallStarted,
    ClearAudio,
    Ignored,
    InboundEvent,
    Malformed,
    OutboundEvent,
    PlayAudio,
    SetMark,
    Transport,
)
from gateway.telephony.pacing import FRAME_MS, FramePacer, OutboundAudio

log = logging.getLogger(__name__)

_TRANSPORT: Final = Transport.AUDIOSOCKET
READ_CHUNK_BYTES: Final = 16384
DEFAULT_START_TIMEOUT: Final = 15.0  # connect -> first audio (or UUID + audio_wait)
DEFAULT_AUDIO_WAIT: Final = 2.0  # UUID -> first audio before starting at 8 kHz anyway
# After our hang-up packet, a peer that stops reading could keep the close pending forever.
_CLOSE_GRACE_SECONDS: Final = 2.0
# Refused source addresses remembered for log-once; beyond that refusals are only counted.
_MAX_LOGGED_SOURCES: Final = 256


def _networks(cidrs: Sequence[str]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)


class AudioSocketServer:
    """A TCP listener on ``host:port`` running one :class:`CallSession` per connection.

    ``port=0`` binds an ephemeral port (see :attr:`port`). :meth:`aclose` stops listening,
    cancels every connection still open (each one cleans its call up) and waits for them.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        allow: Sequence[str],
        registry: CallRegistry,
        metrics: Metrics,
        make_conversation: ConversationFactory,
        max_call_seconds: float,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        audio_wait: float = DEFAULT_AUDIO_WAIT,
    ) -> None:
        self._host = host
        self._port = port
        self._allow = _networks(allow)
        self._registry = registry
        self._metrics = metrics
        self._make_conversation = make_conversation
        self._max_call_seconds = max_call_seconds
        self._start_timeout = start_timeout
        self._audio_wait = audio_wait
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        self._refused_logged: set[str] = set()

    @property
    def port(self) -> int:
        """The bound port (the real one when constructed with ``port=0``)."""
        if self._server is None or not self._server.sockets:
            return self._port
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def connections(self) -> int:
        return len(self._connections)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._on_connect, self._host, self._port)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    # ------------------------------------------------------------------ internals

    def _allowed(self, peer: Any) -> tuple[bool, str]:
        host = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        try:
            address = ipaddress.ip_address(host.partition("%")[0])
        except ValueError:
            return False, host
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # ::ffff:10.0.0.5 on a dual-stack listener
        return any(address in net for net in self._allow), host

    def _refuse(self, host: str) -> None:
        self._metrics.auth_failures.labels(_TRANSPORT.value).inc()
        if host in self._refused_logged:
            return
        if len(self._refused_logged) < _MAX_LOGGED_SOURCES:
            self._refused_logged.add(host)
            log.warning(
                "refused AudioSocket connection from %s: not in AUDIOSOCKET_ALLOW; "
                "further ones from it are only counted",
                host,
            )
        elif len(self._refused_logged) == _MAX_LOGGED_SOURCES:
            self._refused_logged.add("")  # sentinel: say this once
            log.warning("many refused AudioSocket sources; further refusals are only counted")

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            ok, host = self._allowed(writer.get_extra_info("peername"))
            if not ok:
                self._refuse(host)
                writer.transport.abort()
                return
            refusal = self._registry.refusal_reason()
            if refusal is not None:
                # At capacity, draining or speech down: hang up at once, before reading the
                # call (the hang-up packet is what Asterisk understands; it ends the channel).
                self._registry.refuse(_TRANSPORT, refusal, f"(connection from {host})")
                writer.write(HANGUP_PACKET)
                writer.close()
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(_CLOSE_GRACE_SECONDS):
                        await writer.wait_closed()
                if not writer.transport.is_closing():
                    writer.transport.abort()
                return
            call = _AudioSocketCall(self, reader, writer)
            await call.run()
        except asyncio.CancelledError:
            # Only aclose() cancels these tasks, and the call has cleaned up by now. Ending
            # normally matters on Python 3.11: asyncio's done-callback for a client task
            # calls task.exception(), which raises (and logs an error) for a cancelled task.
            pass
        finally:
            if task is not None:
                self._connections.discard(task)


class _AudioSocketCall:
    """One connection: wait for the start, admit, run the call, clean up."""

    def __init__(
        self, server: AudioSocketServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._srv = server
        self._reader = reader
        self._writer = writer
        self._proto = AudioSocketProtocol()
        self._bad = BadInputLog(server._metrics, _TRANSPORT)
        self._frames_in = server._metrics.frames.labels(_TRANSPORT.value, "in")
        self._closing = False  # we sent the hang-up packet (or gave up on the socket)
        self._abort_handle: asyncio.TimerHandle | None = None
        self._queue: OutboundAudio | None = None
        self._session: CallSession | None = None

    async def run(self) -> None:
        try:
            first = await self._wait_start()
            if first is None:
                return
            started, rest = first
            await self._run_call(started, rest)
        except (ConnectionError, OSError) as exc:
            log.info("AudioSocket connection failed: %r", exc)
        finally:
            if self._abort_handle is not None:
                self._abort_handle.cancel()
            await self._close_socket()

    # ---------------------------------------------------------------- phase 1

    async def _read(self) -> bytes:
        try:
            return await self._reader.read(READ_CHUNK_BYTES)
        except ConnectionResetError:
            return b""  # Asterisk closed with unread data (RST, seen on 23.4.1): a hang-up

    async def _wait_start(self) -> tuple[CallStarted, list[InboundEvent]] | None:
        """Read until CallStarted; return it with the events that came after it."""
        loop = asyncio.get_running_loop()
        proto = self._proto
        deadline = loop.time() + self._srv._start_timeout
        uuid_deadline: float | None = None
        while True:
            limit = deadline
            if uuid_deadline is None and proto.call_id:
                uuid_deadline = loop.time() + self._srv._audio_wait
            if uuid_deadline is not None:
                limit = min(limit, uuid_deadline)
            events: list[InboundEvent]
            try:
                async with asyncio.timeout_at(limit):
                    data = await self._read()
                events = proto.receive_data(data) if data else proto.eof()
            except TimeoutError:
                if uuid_deadline is not None and loop.time() >= uuid_deadline:
                    events = proto.start_default()  # a channel with no media yet
                else:
                    self._srv._metrics.malformed_input.labels(
                        _TRANSPORT.value, "start_timeout"
                    ).inc()
                    log.warning("no AudioSocket call start within %.0f s", self._srv._start_timeout)
                    self._send_hangup()
                    return None
            for index, event in enumerate(events):
                if isinstance(event, CallStarted):
                    return event, events[index + 1 :]
                if isinstance(event, Malformed):
                    self._bad.malformed(event)
                    if event.fatal:
                        self._send_hangup()
                        return None
                elif isinstance(event, Ignored):
                    self._bad.ignored(event)
                elif isinstance(event, CallEnded):
                    return None

    # ---------------------------------------------------------------- phase 2

    async def _run_call(self, started: CallStarted, rest: list[InboundEvent]) -> None:
        srv = self._srv
        metrics = srv._metrics
        registry = srv._registry
        session = CallSession(started, self._send, metrics, on_hangup=self._on_hangup)
        refused = registry.admit(session)
        if refused is not None:  # the state changed while the call was starting
            registry.refuse(_TRANSPORT, refused, started.call_id)
            self._send_hangup()
            return
        token = call_id_var.set(started.call_id)
        self._session = session
        log.info(
            "call started: transport=%s format=%s/%d",
            _TRANSPORT.value,
            started.audio_format.encoding.value,
            started.audio_format.sample_rate,
        )
        try:
            try:
                conversation = srv._make_conversation(session)
            except Exception:
                log.exception("could not set up the call's conversation")
                session.outcome = "error"
                self._send_hangup()
                return
            queue = OutboundAudio.for_format(started.audio_format, FRAME_MS)
            self._queue = queue
            self._proto.use_silence(queue.silence_frame)
            session.start(conversation)
            session.spawn(self._pace(), "pacer")
            session.spawn(max_duration(session, srv._max_call_seconds), "max_duration")
            if not await self._dispatch(rest):
                await self._receive_loop()
        except (ConnectionError, OSError):
            raise  # the connection failed: run() logs it; the outcome stays what it was
        except Exception as exc:
            # A bug inside the call: end this call only, as an error, logged once.
            log.error("call failed: %r; ending it", exc, exc_info=exc)
            session.outcome = "error"
            self._send_hangup()
        finally:
            try:
                await session.aclose()
                if session.conversation is not None:
                    try:
                        await session.conversation.finish()
                    except Exception:
                        log.exception("conversation finish failed")
            finally:
                registry.remove(session)
                log.info(
                    "call ended: outcome=%s duration=%.1fs",
                    session.outcome,
                    session.duration_seconds,
                )
                call_id_var.reset(token)

    async def _receive_loop(self) -> None:
        proto = self._proto
        while not self._closing:
            data = await self._read()
            if self._closing:
                return  # our own hang-up: the EOF that follows it is not the caller's
            if await self._dispatch(proto.receive_data(data) if data else proto.eof()):
                return

    async def _dispatch(self, events: list[InboundEvent]) -> bool:
        """Hand events to the conversation; True when the call is over."""
        session = self._session
        assert session is not None and session.conversation is not None
        end = await dispatch(events, session.conversation.on_event, self._bad, self._frames_in)
        if isinstance(end, Malformed):
            session.outcome = "error"
            self._send_hangup()
        return end is not None

    # ---------------------------------------------------------------- outbound

    async def _send(self, event: OutboundEvent) -> None:
        """The session's outbound path: the playout queue, never the socket directly."""
        queue = self._queue
        if queue is None:
            return
        if isinstance(event, PlayAudio):
            queue.push(event.audio)
        elif isinstance(event, SetMark):
            queue.mark(event.name)
        elif isinstance(event, ClearAudio):
            retired = queue.clear()
            session = self._session
            if retired and session is not None and session.conversation is not None:
                for mark in retired:
                    session.conversation.on_event(mark)
        # Hangup: on_hangup (called by CallSession.hangup) writes 00 00 00 and closes.

    def _on_hangup(self, reason: str) -> None:
        self._send_hangup()

    def _send_hangup(self) -> None:
        """``00 00 00`` then close; the receive loop then reads EOF and ends the call."""
        if self._closing:
            return
        self._closing = True
        writer = self._writer
        if writer.is_closing():
            return
        writer.write(HANGUP_PACKET)
        writer.close()  # flushes what is buffered first, then closes
        # A peer that stopped reading would keep that flush (and so the close) pending.
        # The receive loop wakes with EOF once the close completes; a peer that stopped
        # reading would keep the flush (and so the close) pending, hence the abort timer.
        self._abort_handle = asyncio.get_running_loop().call_later(
            _CLOSE_GRACE_SECONDS, writer.transport.abort
        )

    async def _close_socket(self) -> None:
        writer = self._writer
        if not writer.is_closing():
            writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_CLOSE_GRACE_SECONDS):
                await writer.wait_closed()
        if not writer.transport.is_closing():
            writer.transport.abort()

    async def _pace(self) -> None:
        """One 20 ms frame per tick on a fixed grid; marks fire as the frame clock passes them."""
        loop = asyncio.get_running_loop()
        queue = self._queue
        session = self._session
        assert queue is not None and session is not None and session.conversation is not None
        on_event = session.conversation.on_event
        writer = self._writer
        write = writer.write
        frame = self._proto.frame
        next_frame = queue.next_frame
        lateness = self._srv._metrics.pacing_lateness
        frames_out = self._srv._metrics.frames.labels(_TRANSPORT.value, "out")
        pacer = FramePacer(FRAME_MS)
        pacer.start(loop.time())
        while not self._closing and not writer.is_closing():
            now = loop.time()
            late = now - pacer.next_deadline()
            due = pacer.due(now)
            if due:
                lateness.observe(late if late > 0.0 else 0.0)
                for _ in range(due):
                    write(frame(next_frame()))
                frames_out.inc(due)
                for mark in queue.pop_played_marks():
                    on_event(mark)
                try:
                    # Returns at once unless the peer stopped reading (then the pacer
                    # resyncs its grid rather than bursting the backlog).
                    await writer.drain()
                except ConnectionError:
                    return
            await asyncio.sleep(pacer.next_deadline() - loop.time())
