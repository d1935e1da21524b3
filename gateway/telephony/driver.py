"""The one call runner: any :class:`MediaAdapter` over any :class:`Channel`.

Every transport runs the same lifecycle (:func:`run_call`); only the channel differs, an
aiohttp WebSocket (:class:`WebSocketChannel`: Twilio Media Streams, Asterisk chan_websocket,
the browser softphone) or AudioSocket's TCP stream with its pacer
(:class:`gateway.telephony.audiosocket_server.AudioSocketChannel`). The lifecycle:

1. **start**: read until the adapter announces :class:`CallStarted`, bounded by
   ``start_timeout`` (then closed with 1008 ``start_timeout``, counted);
2. **admit** the call (capacity, drain, speech gate), or close with 1013 and the reason;
3. build the conversation and **start** it, the channel's own tasks (a pacer) and the
   **maximum duration** timer, all owned by the :class:`CallSession`;
4. **dispatch**: every further message goes through the adapter and its events to the
   conversation, synchronously, with no per-frame task or queue (50 messages per second);
5. **hang-up** from our side writes the adapter's :class:`Hangup` output, then closes;
6. the call ends on :class:`CallEnded`, end of stream, fatal bad input, our hang-up or a
   failure; its **outcome** is set on the session (``error`` for bad input and bugs);
7. **close**: cancel and await the call's tasks, finish the conversation, close the channel
   with the right code, run the transport's ``on_call_end``, unregister, log once.

Bad input (:class:`Malformed`) is counted every time by reason and logged once per reason per
call with the call id; fatal kinds end that call with the adapter's close code, never another
call. A bug in a conversation ends that call only, as ``error``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import aiohttp
from aiohttp import web
from prometheus_client import Counter

from gateway.calls import CallRegistry, CallSession, Conversation
from gateway.logs import call_id_var
from gateway.metrics import Metrics
from gateway.telephony.adapter import MediaAdapter, WireMessage
from gateway.telephony.events import (
    CallEnded,
    CallerAudio,
    CallStarted,
    ClearAudio,
    Hangup,
    Ignored,
    InboundEvent,
    Malformed,
    OutboundEvent,
    PlayAudio,
    Transport,
)

log = logging.getLogger(__name__)

# RFC 6455 §7.4.1 close codes used by the runner.
CLOSE_NORMAL = 1000
CLOSE_INVALID_TEXT = 1007
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011
CLOSE_TRY_AGAIN_LATER = 1013

# How long a cancelled handler waits for its call's cleanup (REST hang-up has a 5 s timeout).
_CLEANUP_GRACE_SECONDS = 15.0

ConversationFactory = Callable[[CallSession], Conversation]
CallEndHook = Callable[[CallSession], Awaitable[None]]


class Channel(Protocol):
    """A call's connection, as the runner sees it (one implementation per socket kind).

    ``read`` returns the next message (``str`` for WebSocket TEXT, ``bytes`` otherwise; ``b""``
    means "nothing new, look at the adapter's events") or None once the stream ended; then
    :attr:`failure` says whether it ended in a protocol violation. ``write`` returns False
    when the peer is gone (the next ``read`` sees the end). ``close`` is idempotent; its
    ``code`` is a WebSocket close code (RFC 6455 §7.4.1): :data:`CLOSE_NORMAL` after the
    peer's hang-up or ours, anything else means the gateway is ending the call on an error
    or refusal. ``attach`` runs once the call is admitted and before its conversation
    starts, for channel-owned tasks (AudioSocket's pacer), spawned on the session.
    """

    @property
    def closed(self) -> bool: ...

    @property
    def failure(self) -> Malformed | None: ...

    async def read(self) -> str | bytes | None: ...

    async def write(self, messages: Sequence[WireMessage]) -> bool: ...

    async def close(self, code: int, reason: str = "") -> None: ...

    def attach(self, session: CallSession) -> None: ...


@dataclass(slots=True)
class DriverConfig:
    transport: Transport
    max_call_seconds: float
    start_timeout: float = 15.0


class BadInputLog:
    """Counts every bad input; logs each reason once per call."""

    def __init__(self, metrics: Metrics, transport: Transport) -> None:
        self._metrics = metrics
        self._transport = transport.value
        self._seen: set[str] = set()

    def malformed(self, event: Malformed) -> None:
        self._metrics.malformed_input.labels(self._transport, event.reason).inc()
        if event.reason not in self._seen:
            self._seen.add(event.reason)
            log.warning(
                "malformed input (%s)%s%s; further ones are only counted",
                event.reason,
                f": {event.detail}" if event.detail else "",
                ", ending the call" if event.fatal else "",
            )

    def ignored(self, event: Ignored) -> None:
        self._metrics.ignored_input.labels(self._transport, event.reason).inc()
        if event.reason not in self._seen:
            self._seen.add(event.reason)
            log.info("ignored input (%s); further ones are only counted", event.reason)


# ------------------------------------------------------------------ the WebSocket channel


class WebSocketChannel:
    """:class:`Channel` over an aiohttp server WebSocket (already prepared)."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self._ws = ws
        self._failure: Malformed | None = None

    @property
    def closed(self) -> bool:
        return self._ws.closed

    @property
    def failure(self) -> Malformed | None:
        return self._failure

    async def read(self) -> str | bytes | None:
        msg = await self._ws.receive()
        kind = msg.type
        if kind is aiohttp.WSMsgType.TEXT or kind is aiohttp.WSMsgType.BINARY:
            data: str | bytes = msg.data
            return data
        if kind is aiohttp.WSMsgType.ERROR and isinstance(msg.data, aiohttp.WebSocketError):
            # aiohttp reports a peer's protocol violation as an ERROR message and has already
            # failed the connection with the matching close code (RFC 6455 §7.1.7; invalid
            # UTF-8: RFC 6455 §8.1): it is bad input like any other, counted by reason and
            # logged once with the call id.
            exc = msg.data
            code = exc.code
            if code == CLOSE_TOO_BIG:
                reason = "message_too_large"
            elif code == CLOSE_INVALID_TEXT:
                reason = "invalid_utf8"  # a TEXT message that is not UTF-8 (RFC 6455 §8.1)
            else:
                reason = "websocket_protocol_error"
            self._failure = Malformed(reason, str(exc), fatal=True, close_code=code)
        return None  # CLOSE, CLOSING, CLOSED, ERROR

    async def write(self, messages: Sequence[WireMessage]) -> bool:
        # Uncompressed aiohttp frames are written to the transport before send_* first
        # suspends, so messages from the conversation task and the receive loop keep the
        # order in which the adapter produced them.
        ws = self._ws
        try:
            for message in messages:
                if isinstance(message, str):
                    await ws.send_str(message)
                else:
                    await ws.send_bytes(message)
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            return False  # the peer went away; the receive loop sees the close
        return True

    async def close(self, code: int, reason: str = "") -> None:
        await self._ws.close(code=code, message=reason.encode())

    def attach(self, session: CallSession) -> None:
        """Nothing to start: the carrier (or the page) buffers and paces our audio."""


async def drive_websocket(
    ws: web.WebSocketResponse,
    adapter: MediaAdapter,
    *,
    config: DriverConfig,
    registry: CallRegistry,
    metrics: Metrics,
    make_conversation: ConversationFactory,
    on_call_end: CallEndHook | None = None,
) -> None:
    """Run one media WebSocket until the call ends. Never raises for call-level problems.

    The call runs in its own task: aiohttp may cancel the request handler when the carrier's
    connection drops, and the call's cleanup (cancel its tasks, carrier REST hang-up, metrics)
    must still run to the end, so the handler waits for it rather than abandoning it.
    """
    task = asyncio.get_running_loop().create_task(
        run_call(
            WebSocketChannel(ws),
            adapter,
            config=config,
            registry=registry,
            metrics=metrics,
            make_conversation=make_conversation,
            on_call_end=on_call_end,
        ),
        name=f"media-socket:{config.transport.value}",
    )
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        if not task.done():
            await asyncio.wait({task}, timeout=_CLEANUP_GRACE_SECONDS)
        raise


# ------------------------------------------------------------------ the lifecycle


def _feed(adapter: MediaAdapter, message: str | bytes) -> None:
    if isinstance(message, str):
        adapter.receive_text(message)
    else:
        adapter.receive_data(message)


async def _wait_start(
    channel: Channel,
    adapter: MediaAdapter,
    config: DriverConfig,
    bad: BadInputLog,
    metrics: Metrics,
) -> tuple[CallStarted, Sequence[InboundEvent]] | None:
    """Phase 1: read until CallStarted (bounded); it and the events after it, or None."""
    try:
        async with asyncio.timeout(config.start_timeout):
            while True:
                message = await channel.read()
                if message is None:
                    if channel.failure is not None:
                        bad.malformed(channel.failure)
                        return None
                    adapter.receive_eof()
                else:
                    _feed(adapter, message)
                # Output produced before admission (the softphone's "started") stays queued
                # for the first write of the admitted call: a refused call gets only its
                # refusal.
                events = adapter.events_received()
                for index, event in enumerate(events):
                    if isinstance(event, CallStarted):
                        return event, events[index + 1 :]
                    if isinstance(event, Malformed):
                        bad.malformed(event)
                        if event.fatal:
                            await channel.close(event.close_code, event.reason)
                            return None
                    elif isinstance(event, Ignored):
                        bad.ignored(event)
                    elif isinstance(event, CallEnded):
                        await channel.close(CLOSE_NORMAL)
                        return None
                if message is None:
                    return None  # ended before the call started
    except TimeoutError:
        metrics.malformed_input.labels(config.transport.value, "start_timeout").inc()
        log.warning("no call start within %.0f s; closing the connection", config.start_timeout)
        await channel.close(CLOSE_POLICY, "start_timeout")
        return None


async def run_call(
    channel: Channel,
    adapter: MediaAdapter,
    *,
    config: DriverConfig,
    registry: CallRegistry,
    metrics: Metrics,
    make_conversation: ConversationFactory,
    on_call_end: CallEndHook | None = None,
) -> None:
    """Run one call over ``channel`` from its first message to its last (module docstring).

    Never raises for call-level problems; cancellation (server shutdown) still runs the
    close phase. The caller owns the channel's final teardown (TCP: wait for the close).
    """
    transport = config.transport
    bad = BadInputLog(metrics, transport)
    first = await _wait_start(channel, adapter, config, bad, metrics)
    if first is None:
        return
    started, rest = first
    frames_out = metrics.frames.labels(transport.value, "out")

    async def send_wire(event: OutboundEvent) -> None:
        if channel.closed:
            return
        adapter.send(event)
        output = adapter.data_to_send()
        # A clear may retire marks the carrier will never report (adapter contract).
        retired = adapter.events_received() if type(event) is ClearAudio else ()
        if output:
            if not await channel.write(output):
                return
            if type(event) is PlayAudio:
                frames_out.inc(len(output))
        conversation = session.conversation
        if conversation is not None:
            for mark in retired:
                conversation.on_event(mark)

    close_code = CLOSE_NORMAL
    closers: list[asyncio.Task[None]] = []

    def on_hangup(reason: str) -> None:
        # Closing the channel ends the receive loop below; the call's tasks are then cancelled.
        # The closer task is awaited in the `finally` below, so it never outlives the call.
        if not channel.closed and not closers:
            closers.append(asyncio.get_running_loop().create_task(_hang_up(channel, send_wire)))

    session = CallSession(started, send_wire, metrics, on_hangup=on_hangup)
    refused = registry.admit(session)
    if refused is not None:  # at capacity, draining, speech down (maybe since the connect)
        registry.refuse(transport, refused, started.call_id)
        await channel.close(CLOSE_TRY_AGAIN_LATER, refused)
        return
    token = call_id_var.set(started.call_id)
    log.info(
        "call started: transport=%s stream=%s format=%s/%d",
        transport.value,
        started.stream_id,
        started.audio_format.encoding.value,
        started.audio_format.sample_rate,
    )
    try:
        try:
            conversation = make_conversation(session)
        except Exception:
            log.exception("could not set up the call's conversation")
            session.outcome = "error"
            close_code = CLOSE_INTERNAL_ERROR
            return
        channel.attach(session)
        session.start(conversation)
        session.spawn(max_duration(session, config.max_call_seconds), "max_duration")
        on_event = conversation.on_event
        frames_in = metrics.frames.labels(transport.value, "in")
        end = await dispatch(rest, on_event, bad, frames_in) if rest else None
        while end is None:
            message = await channel.read()
            if message is None:
                if channel.failure is not None:
                    # A protocol violation (e.g. a message over MAX_MESSAGE_BYTES): the
                    # channel has closed with its code; the call ended in error.
                    bad.malformed(channel.failure)
                    session.outcome = "error"
                elif session.hangup_reason is None:
                    # The peer ended the stream (for Asterisk the close is the hang-up); the
                    # end that follows our own hang-up is not the caller's.
                    adapter.receive_eof()
                    await dispatch(adapter.events_received(), on_event, bad, frames_in)
                break
            _feed(adapter, message)
            events = adapter.events_received()
            output = adapter.data_to_send()
            if output:
                await channel.write(output)
            end = await dispatch(events, on_event, bad, frames_in)
        if isinstance(end, Malformed):
            session.outcome = "error"
            close_code = end.close_code
            await channel.close(end.close_code, end.reason)
        elif end is not None:
            await channel.close(CLOSE_NORMAL)
    except (ConnectionError, OSError) as exc:
        # The connection itself failed (reset, broken pipe): the outcome stays what it was.
        log.info("connection failed: %r", exc)
    except Exception as exc:
        # A bug inside the call (a conversation's on_event raised): end this call only,
        # as an error, logged once with the call id; never the process or another call.
        log.error("call failed: %r; ending it", exc, exc_info=exc)
        session.outcome = "error"
        close_code = CLOSE_INTERNAL_ERROR
    finally:
        try:
            await session.aclose()
            if session.conversation is not None:
                try:
                    await session.conversation.finish()
                except Exception:
                    log.exception("conversation finish failed")
            for closer in closers:
                with contextlib.suppress(Exception):
                    await closer
            if not channel.closed:
                await channel.close(close_code)
            if on_call_end is not None:
                try:
                    await on_call_end(session)
                except Exception:
                    log.exception("call-end hook failed")
        finally:
            registry.remove(session)
            log.info(
                "call ended: outcome=%s duration=%.1fs", session.outcome, session.duration_seconds
            )
            call_id_var.reset(token)


async def dispatch(
    events: Sequence[InboundEvent],
    on_event: Callable[[InboundEvent], Awaitable[None] | None],
    bad: BadInputLog,
    frames_in: Counter,
) -> Malformed | CallEnded | None:
    """Hand a call's inbound events to its conversation.

    Caller audio is the hot path and comes first; an immediate reply the conversation returns
    (the parrot's echo) is awaited before reading on. Bad input is counted and logged once per
    reason. Returns what ends the call, a fatal :class:`Malformed` or :class:`CallEnded`
    (already handed to the conversation), else None.
    """
    for event in events:
        if type(event) is CallerAudio:
            frames_in.inc()
            echo = on_event(event)
            if echo is not None:
                await echo
        elif isinstance(event, Malformed):
            bad.malformed(event)
            if event.fatal:
                return event
        elif isinstance(event, Ignored):
            bad.ignored(event)
        elif isinstance(event, CallEnded):
            on_event(event)
            return event
        elif isinstance(event, CallStarted):
            bad.malformed(Malformed("second_start", "call already started"))
        else:
            on_event(event)
    return None


async def max_duration(session: CallSession, seconds: float) -> None:
    """Hang up when the call reaches its maximum duration (a task the call owns)."""
    await asyncio.sleep(seconds)
    log.info("maximum call duration (%.0f s) reached", seconds)
    session.hangup("max_duration", outcome="max_duration")


async def _hang_up(channel: Channel, send_wire: Callable[[OutboundEvent], Awaitable[None]]) -> None:
    """Our hang-up: the adapter's Hangup output (HANGUP, 00 00 00, ...), then a normal close."""
    with contextlib.suppress(Exception):
        await send_wire(Hangup())
        await channel.close(CLOSE_NORMAL)
