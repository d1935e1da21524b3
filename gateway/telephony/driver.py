"""The one thin loop that runs a sans-I/O media protocol over an aiohttp WebSocket.

Used by every WebSocket transport (Twilio Media Streams, Asterisk chan_websocket). The loop:

1. waits (bounded by ``start_timeout``) for the protocol to announce :class:`CallStarted`;
2. admits the call (capacity / drain) and builds a :class:`CallSession` plus its conversation;
3. feeds every further message through the protocol and hands the events to the conversation,
   synchronously, with no per-frame task or queue (the hot path: 50 messages per second per call);
4. on ``CallEnded``, socket close, fatal bad input, hang-up from our side, or the maximum call
   duration, closes the socket and cancels and awaits every task the call started.

Bad input (:class:`Malformed`) is counted every time by reason and logged once per reason per call
with the call id; fatal kinds end that call with the protocol's close code, never another call.
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
from gateway.telephony.events import (
    CallEnded,
    CallerAudio,
    CallStarted,
    ClearAudio,
    Hangup,
    Ignored,
    InboundEvent,
    Malformed,
    MarkPlayed,
    OutboundEvent,
    PlayAudio,
    Transport,
)

log = logging.getLogger(__name__)

# RFC 6455 §7.4.1 close codes used by the driver.
CLOSE_NORMAL = 1000
CLOSE_INVALID_TEXT = 1007
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011
CLOSE_TRY_AGAIN_LATER = 1013

# How long a cancelled handler waits for its call's cleanup (REST hang-up has a 5 s timeout).
_CLEANUP_GRACE_SECONDS = 15.0


class MediaProtocol(Protocol):
    """What a sans-I/O WebSocket media protocol offers the driver.

    Two optional methods are used when present (Asterisk chan_websocket has them, Twilio
    does not): ``data_to_send() -> Sequence[str | bytes]``, wire output produced while
    processing input (audio held during MEDIA_XOFF released by MEDIA_XON), written after
    every receive; and ``retire_flushed_marks() -> Sequence[MarkPlayed]``, marks a
    :class:`ClearAudio` dropped without the carrier ever echoing them, delivered to the
    conversation right after the clear is written.
    """

    def receive_text(self, text: str) -> list[InboundEvent]: ...

    def receive_bytes(self, data: bytes) -> list[InboundEvent]: ...

    def send(self, event: OutboundEvent) -> Sequence[str | bytes]: ...


ConversationFactory = Callable[[CallSession], Conversation]


@dataclass(slots=True)
class DriverConfig:
    transport: Transport
    max_call_seconds: float
    start_timeout: float = 15.0


class BadInputLog:
    """Counts every bad input; logs each reason once per call (shared with AudioSocket)."""

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


async def drive_websocket(
    ws: web.WebSocketResponse,
    protocol: MediaProtocol,
    *,
    config: DriverConfig,
    registry: CallRegistry,
    metrics: Metrics,
    make_conversation: ConversationFactory,
    on_call_end: Callable[[CallSession], Awaitable[None]] | None = None,
) -> None:
    """Run one media WebSocket until the call ends. Never raises for call-level problems.

    The call runs in its own task: aiohttp may cancel the request handler when the carrier's
    connection drops, and the call's cleanup (cancel its tasks, carrier REST hang-up, metrics)
    must still run to the end, so the handler waits for it rather than abandoning it.
    """
    task = asyncio.get_running_loop().create_task(
        _drive(
            ws,
            protocol,
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


async def _drive(
    ws: web.WebSocketResponse,
    protocol: MediaProtocol,
    *,
    config: DriverConfig,
    registry: CallRegistry,
    metrics: Metrics,
    make_conversation: ConversationFactory,
    on_call_end: Callable[[CallSession], Awaitable[None]] | None,
) -> None:
    transport = config.transport
    bad = BadInputLog(metrics, transport)
    frames_out = metrics.frames.labels(transport.value, "out")

    pending_output: Callable[[], Sequence[str | bytes]] | None = getattr(
        protocol, "data_to_send", None
    )
    retire_marks: Callable[[], Sequence[MarkPlayed]] | None = getattr(
        protocol, "retire_flushed_marks", None
    )

    async def write(messages: Sequence[str | bytes]) -> bool:
        # Uncompressed aiohttp frames are written to the transport before send_* first
        # suspends, so messages from the conversation task and the receive loop keep the
        # order in which the protocol produced them.
        try:
            for message in messages:
                if isinstance(message, str):
                    await ws.send_str(message)
                else:
                    await ws.send_bytes(message)
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            return False  # the carrier went away; the receive loop sees the close
        return True

    async def send_wire(event: OutboundEvent) -> None:
        if ws.closed:
            return
        messages = protocol.send(event)
        if not await write(messages):
            return
        if isinstance(event, PlayAudio):
            frames_out.inc(len(messages))
        elif retire_marks is not None and isinstance(event, ClearAudio):
            conversation = session.conversation
            for mark in retire_marks():
                if conversation is not None:
                    conversation.on_event(mark)

    # ---- phase 1: wait for the call to start (bounded)
    started: CallStarted | None = None
    try:
        async with asyncio.timeout(config.start_timeout):
            while started is None:
                msg = await ws.receive()
                events = _decode(msg, protocol, bad)
                if events is None:
                    return  # closed or errored before start
                for event in events:
                    if isinstance(event, CallStarted):
                        started = event
                        break
                    if isinstance(event, Malformed):
                        bad.malformed(event)
                        if event.fatal:
                            await ws.close(code=event.close_code, message=event.reason.encode())
                            return
                    elif isinstance(event, Ignored):
                        bad.ignored(event)
                    elif isinstance(event, CallEnded):
                        await ws.close(code=CLOSE_NORMAL)
                        return
    except TimeoutError:
        metrics.malformed_input.labels(transport.value, "start_timeout").inc()
        log.warning("no call start within %.0f s; closing the socket", config.start_timeout)
        await ws.close(code=CLOSE_POLICY, message=b"start_timeout")
        return

    # ---- phase 2: the call
    close_code = CLOSE_NORMAL
    closers: list[asyncio.Task[None]] = []

    def on_hangup(reason: str) -> None:
        # Closing the socket ends the receive loop below; the call's tasks are then cancelled.
        # The closer task is awaited in the `finally` below, so it never outlives the call.
        if not ws.closed and not closers:
            closers.append(asyncio.get_running_loop().create_task(_close_after_send(ws, send_wire)))

    session = CallSession(started, send_wire, metrics, on_hangup=on_hangup)
    refused = registry.admit(session)
    if refused is not None:
        registry.refuse(transport, refused, started.call_id)
        await ws.close(code=CLOSE_TRY_AGAIN_LATER, message=refused.encode())
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
        session.start(conversation)
        on_event = conversation.on_event
        frames_in = metrics.frames.labels(transport.value, "in")
        session.spawn(max_duration(session, config.max_call_seconds), "max_duration")
        async for msg in ws:
            events = _decode(msg, protocol, bad)
            if events is None:
                if msg.type is aiohttp.WSMsgType.ERROR and isinstance(
                    msg.data, aiohttp.WebSocketError
                ):
                    # A protocol violation (e.g. a message over MAX_MESSAGE_BYTES): aiohttp
                    # has closed the socket with its code; the call ended in error.
                    session.outcome = "error"
                break
            if pending_output is not None:
                output = pending_output()
                if output:
                    await write(output)
            end = await dispatch(events, on_event, bad, frames_in)
            if isinstance(end, Malformed):
                session.outcome = "error"
                close_code = end.close_code
                await ws.close(code=end.close_code, message=end.reason.encode())
                break
            if end is not None:
                await ws.close(code=CLOSE_NORMAL)
                break
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
            if not ws.closed:
                await ws.close(code=close_code)
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
    events: list[InboundEvent],
    on_event: Callable[[InboundEvent], Awaitable[None] | None],
    bad: BadInputLog,
    frames_in: Counter,
) -> Malformed | CallEnded | None:
    """Hand a call's inbound events to its conversation (every transport's receive loop).

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


async def _close_after_send(
    ws: web.WebSocketResponse, send_wire: Callable[[OutboundEvent], Awaitable[None]]
) -> None:
    with contextlib.suppress(Exception):
        await send_wire(Hangup())
        await ws.close(code=CLOSE_NORMAL)


def _decode(
    msg: aiohttp.WSMessage, protocol: MediaProtocol, bad: BadInputLog
) -> list[InboundEvent] | None:
    """Wire message -> events; None when the socket is closing or failed."""
    kind = msg.type
    if kind is aiohttp.WSMsgType.TEXT:
        return protocol.receive_text(msg.data)
    if kind is aiohttp.WSMsgType.BINARY:
        return protocol.receive_bytes(msg.data)
    if kind is aiohttp.WSMsgType.ERROR:
        # aiohttp reports a peer's protocol violation as an ERROR message and has already
        # failed the connection with the matching close code (RFC 6455 §7.1.7, §8.1): it is
        # bad input like any other, counted by reason and logged once with the call id.
        exc = msg.data
        if isinstance(exc, aiohttp.WebSocketError):
            code = exc.code
            if code == CLOSE_TOO_BIG:
                reason = "message_too_large"
            elif code == CLOSE_INVALID_TEXT:
                reason = "invalid_utf8"  # a TEXT message that is not UTF-8 (RFC 6455 §8.1)
            else:
                reason = "websocket_protocol_error"
            bad.malformed(Malformed(reason, str(exc), fatal=True, close_code=code))
        return None
    return None  # CLOSE, CLOSING, CLOSED
