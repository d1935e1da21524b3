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
* **The call** runs in the shared runner (:func:`gateway.telephony.driver.run_call`), the
  same lifecycle as every WebSocket transport, over an :class:`AudioSocketChannel`: whatever
  TCP delivers goes to the adapter's ``receive_data`` (packets may be split anywhere).
* **Outbound.** Asterisk neither buffers nor paces AudioSocket audio (§3.3, §7:
  ``app_audiosocket.c`` writes each packet to the channel as it arrives), so the channel
  attaches a playout queue (:class:`~gateway.telephony.pacing.OutboundAudio`) to the
  adapter and a pacer task owned by the call sends exactly one 20 ms frame per tick on a
  drift-free grid (:class:`~gateway.telephony.pacing.FramePacer`): silence while idle (the
  ``AudioSocket()`` app hangs up after 2 s without activity), :class:`MarkPlayed` when the
  frame clock passes a mark; a :class:`ClearAudio` empties the queue and retires its marks.
  Each tick's lateness goes to ``gateway_audiosocket_pacing_lateness_seconds``.
* **Hang-up.** Ours: ``00 00 00`` then close (AudioSocket has no close codes: a close with
  any code but normal sends the hang-up packet first). Theirs: EOF (Asterisk never sends
  0x00).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Sequence
from typing import Any, Final

from gateway.calls import CallRegistry, CallSession
from gateway.metrics import Metrics
from gateway.telephony.adapter import WireMessage
from gateway.telephony.audiosocket import HANGUP_PACKET, AudioSocketProtocol
from gateway.telephony.driver import (
    CLOSE_NORMAL,
    CallEndHook,
    ConversationFactory,
    DriverConfig,
    run_call,
)
from gateway.telephony.events import Malformed, Transport
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
        on_call_end: CallEndHook | None = None,
    ) -> None:
        self._host = host
        self._port = port
        self._allow = _networks(allow)
        self._registry = registry
        self._metrics = metrics
        self._make_conversation = make_conversation
        self._on_call_end = on_call_end
        self._config = DriverConfig(_TRANSPORT, max_call_seconds, start_timeout)
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
            adapter = AudioSocketProtocol()
            channel = AudioSocketChannel(
                reader, writer, adapter, self._metrics, audio_wait=self._audio_wait
            )
            try:
                await run_call(
                    channel,
                    adapter,
                    config=self._config,
                    registry=self._registry,
                    metrics=self._metrics,
                    make_conversation=self._make_conversation,
                    on_call_end=self._on_call_end,
                )
            except (ConnectionError, OSError) as exc:
                log.info("AudioSocket connection failed: %r", exc)
            finally:
                await channel.aclose()
        except asyncio.CancelledError:
            # Only aclose() cancels these tasks, and the call has cleaned up by now. Ending
            # normally matters on Python 3.11: asyncio's done-callback for a client task
            # calls task.exception(), which raises (and logs an error) for a cancelled task.
            pass
        finally:
            if task is not None:
                self._connections.discard(task)


class AudioSocketChannel:
    """:class:`~gateway.telephony.driver.Channel` over one AudioSocket TCP connection.

    ``read`` waits at most ``audio_wait`` seconds for the first audio once the UUID came,
    then starts the call at 8 kHz (:meth:`AudioSocketProtocol.start_default`). ``attach``
    switches the adapter to paced playout and starts the pacer on the call's session.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        adapter: AudioSocketProtocol,
        metrics: Metrics,
        *,
        audio_wait: float = DEFAULT_AUDIO_WAIT,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._adapter = adapter
        self._metrics = metrics
        self._audio_wait = audio_wait
        self._audio_deadline: float | None = None
        self._eof = False  # the peer closed (Asterisk's hang-up)
        self._closing = False  # we closed (or gave up on the socket)
        self._abort_handle: asyncio.TimerHandle | None = None

    @property
    def closed(self) -> bool:
        return self._closing or self._writer.is_closing()

    @property
    def failure(self) -> Malformed | None:
        return None  # TCP has no framing of its own: bad bytes are the adapter's Malformed

    async def read(self) -> bytes | None:
        if self._eof:
            return None
        adapter = self._adapter
        try:
            if adapter.awaiting_audio:
                loop = asyncio.get_running_loop()
                if self._audio_deadline is None:
                    self._audio_deadline = loop.time() + self._audio_wait
                try:
                    async with asyncio.timeout_at(self._audio_deadline):
                        data = await self._reader.read(READ_CHUNK_BYTES)
                except TimeoutError:
                    adapter.start_default()  # a channel with no media yet
                    return b""
            else:
                data = await self._reader.read(READ_CHUNK_BYTES)
        except ConnectionResetError:
            data = b""  # Asterisk closed with unread data (RST, seen on 23.4.1): a hang-up
        if not data:
            self._eof = True
            return None
        return data

    async def write(self, messages: Sequence[WireMessage]) -> bool:
        writer = self._writer
        if writer.is_closing():
            return False
        for message in messages:
            if isinstance(message, bytes):
                writer.write(message)
        return True

    async def close(self, code: int, reason: str = "") -> None:
        """Close; a code other than normal ends the call our way first (``00 00 00``)."""
        if self._closing:
            return
        self._closing = True
        writer = self._writer
        if writer.is_closing():
            return
        if code != CLOSE_NORMAL and not self._eof:
            writer.write(HANGUP_PACKET)
        writer.close()  # flushes what is buffered first, then closes
        # The read loop wakes with EOF once the close completes; a peer that stopped
        # reading would keep the flush (and so the close) pending, hence the abort timer.
        self._abort_handle = asyncio.get_running_loop().call_later(
            _CLOSE_GRACE_SECONDS, writer.transport.abort
        )

    async def aclose(self) -> None:
        """Final teardown after the call: close, wait (bounded), abort if still open."""
        if self._abort_handle is not None:
            self._abort_handle.cancel()
        writer = self._writer
        if not writer.is_closing():
            writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_CLOSE_GRACE_SECONDS):
                await writer.wait_closed()
        if not writer.transport.is_closing():
            writer.transport.abort()

    def attach(self, session: CallSession) -> None:
        self._adapter.attach_playout(OutboundAudio.for_format(session.audio_format, FRAME_MS))
        session.spawn(self._pace(session), "pacer")

    async def _pace(self, session: CallSession) -> None:
        """One 20 ms frame per tick on a fixed grid; marks fire as the frame clock passes them."""
        loop = asyncio.get_running_loop()
        conversation = session.conversation  # started right after attach()
        assert conversation is not None
        on_event = conversation.on_event
        writer = self._writer
        write = writer.write
        next_packet = self._adapter.next_packet
        pop_played_marks = self._adapter.pop_played_marks
        lateness = self._metrics.pacing_lateness
        frames_out = self._metrics.frames.labels(_TRANSPORT.value, "out")
        pacer = FramePacer(FRAME_MS)
        pacer.start(loop.time())
        while not self._closing and not writer.is_closing():
            now = loop.time()
            late = now - pacer.next_deadline()
            due = pacer.due(now)
            if due:
                lateness.observe(late if late > 0.0 else 0.0)
                for _ in range(due):
                    write(next_packet())
                frames_out.inc(due)
                for mark in pop_played_marks():
                    on_event(mark)
                try:
                    # Returns at once unless the peer stopped reading (then the pacer
                    # resyncs its grid rather than bursting the backlog).
                    await writer.drain()
                except ConnectionError:
                    return
            await asyncio.sleep(pacer.next_deadline() - loop.time())
