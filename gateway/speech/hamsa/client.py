"""Connection glue for the Hamsa realtime socket: open, request, classify failures.

:class:`HamsaConnection` is one open ``websockets`` client connection driven by a
:class:`~gateway.speech.hamsa.protocol.HamsaProtocol`. It runs ONE request at a time (the
protocol has no request id and no cancel, ``hamsa.md`` §1.4) and turns every failure into a
:class:`~gateway.speech.hamsa.errors.HamsaError` with a bounded kind. A connection that timed
out, failed or was abandoned mid-stream is never reused: :attr:`HamsaConnection.usable`
turns false and the owner discards it.

:class:`Backoff` is the one jittered exponential delay policy (pool refill and request
retries); callers inject the random source and the sleep function, so tests drive it without
sleeping. :class:`Endpoint` derives the socket URL and auth from settings and never shows the
key in its repr.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.protocol import State

from gateway.config import HamsaAuthMode, Settings
from gateway.logs import REDACTED
from gateway.speech.hamsa.errors import HamsaError
from gateway.speech.hamsa.protocol import (
    ErrorKind,
    Event,
    HamsaProtocol,
    ServerClosed,
    ServerError,
    SttTranscript,
    TtsAudio,
    TtsEnd,
)

log = logging.getLogger(__name__)

REALTIME_PATH = "/v1/realtime/ws"  # §1.1
MAX_FRAME_BYTES = 4 * 1024 * 1024  # observed frames are <= 64 KB (§1.4); generous cap
CLOSE_TIMEOUT_S = 2.0  # a closing handshake never holds a call for long
ABNORMAL_CLOSE = 1006  # RFC 6455 §7.1.5: connection lost without a close frame


# ------------------------------------------------------------------------------ policy


@dataclass(frozen=True, slots=True)
class Backoff:
    """Jittered exponential delays: ``min(maximum, initial * factor**attempt)``, of which the
    last ``jitter`` fraction is random (``rng()`` in [0, 1)). ``attempt`` counts from 0."""

    initial: float = 1.0
    factor: float = 2.0
    maximum: float = 30.0
    jitter: float = 0.5

    def delay(self, attempt: int, rng: Callable[[], float]) -> float:
        base = min(self.maximum, self.initial * self.factor ** max(0, attempt))
        return base * (1.0 - self.jitter + self.jitter * rng())


# ---------------------------------------------------------------------------- endpoint


def realtime_url(base_url: str) -> str:
    """The realtime socket URL for a REST base URL: https -> wss, http -> ws (§1.1)."""
    parts = urlsplit(base_url)
    scheme = {"https": "wss", "http": "ws"}.get(parts.scheme, parts.scheme)
    path = parts.path.rstrip("/") + REALTIME_PATH
    return urlunsplit((scheme, parts.netloc, path, "", ""))


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how to open a realtime socket. ``repr`` never shows the key."""

    url: str
    api_key: str = field(repr=False)
    auth_mode: HamsaAuthMode = HamsaAuthMode.HEADER

    @classmethod
    def from_settings(cls, settings: Settings, base_url: str | None = None) -> Endpoint:
        return cls(
            realtime_url(base_url or settings.hamsa_base_url),
            settings.hamsa_api_key,
            settings.hamsa_auth_mode,
        )

    def connect_target(self) -> tuple[str, dict[str, str]]:
        """(URL, headers) with the key in the header or the query (§1.1)."""
        if self.auth_mode is HamsaAuthMode.QUERY:
            return f"{self.url}?api_key={quote(self.api_key, safe='')}", {}
        return self.url, {"X-Api-Key": self.api_key}


class _ScrubbingLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """The logger handed to ``websockets``: its DEBUG handshake lines would show the key
    (header or query), so messages are formatted here and the key replaced."""

    def __init__(self, logger: logging.Logger, secret: str) -> None:
        super().__init__(logger, {})
        self._secret = secret

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if not self.isEnabledFor(level):
            return
        text = str(msg) % args if args else str(msg)
        if self._secret:
            text = text.replace(self._secret, REDACTED)
            text = text.replace(quote(self._secret, safe=""), REDACTED)
        kwargs.pop("extra", None)
        self.logger.log(level, "%s", text, **kwargs)


_WIRE_LOG = "gateway.speech.hamsa.wire"


def _closed_error(event: ServerClosed, during: str) -> HamsaError:
    reason = f" ({event.reason[:80]})" if event.reason else ""
    return HamsaError(
        f"socket closed with code {event.code}{reason} {during}",
        event.error_kind,
        fatal=event.fatal,
        close_code=event.code,
    )


# -------------------------------------------------------------------------- connection


class HamsaConnection:
    """One open realtime socket. Contract: one request at a time; after any
    :class:`HamsaError` or a cancelled request, :attr:`usable` is false for good."""

    def __init__(self, ws: ClientConnection, protocol: HamsaProtocol, opened_at: float) -> None:
        self._ws = ws
        self._proto = protocol
        self._events: deque[Event] = deque()
        self.opened_at = opened_at
        self.expires_at = float("inf")  # set by the pool (jittered recycle time)
        self.requests = 0

    def __repr__(self) -> str:
        return f"<HamsaConnection requests={self.requests} usable={self.usable}>"

    @classmethod
    async def open(
        cls,
        endpoint: Endpoint,
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> HamsaConnection:
        """Open a socket and wait for the ``info`` greeting (§1.2), within ``timeout``.

        Raises :class:`HamsaError`: ``auth``/``quota`` (fatal) for HTTP 401/403 at the
        upgrade or close 4001/4003 after it (both readings of §6.4), ``rate_limit`` for 429,
        ``timeout``, ``connect`` otherwise.
        """
        url, headers = endpoint.connect_target()
        ws: ClientConnection | None = None
        proto = HamsaProtocol()
        try:
            async with asyncio.timeout(timeout):
                ws = await connect(
                    url,
                    additional_headers=headers,
                    compression=None,  # audio does not compress; deflate only costs CPU
                    open_timeout=None,  # the enclosing timeout covers the greeting too
                    close_timeout=CLOSE_TIMEOUT_S,
                    max_size=MAX_FRAME_BYTES,
                    logger=_ScrubbingLog(logging.getLogger(_WIRE_LOG), endpoint.api_key),
                )
                conn = cls(ws, proto, clock())
                while not proto.greeted:
                    await conn._pump(during="before the greeting")
                    for event in conn._events:
                        if isinstance(event, ServerClosed | ServerError):
                            conn._raise_for(event, "before the greeting")
                conn._events.clear()
                return conn
        except HamsaError:
            await _quiet_close(ws)
            raise
        except InvalidStatus as exc:
            status = exc.response.status_code
            kind = {401: ErrorKind.AUTH, 403: ErrorKind.AUTH, 429: ErrorKind.RATE_LIMIT}.get(
                status, ErrorKind.CONNECT
            )
            raise HamsaError(f"upgrade refused with HTTP {status}", kind) from None
        except TimeoutError:
            await _quiet_close(ws)
            raise HamsaError(f"no greeting within {timeout:g} s", ErrorKind.TIMEOUT) from None
        except (OSError, InvalidHandshake, InvalidURI) as exc:
            await _quiet_close(ws)
            # Only the exception's class: some texts carry the URL (and a query key).
            raise HamsaError(f"cannot connect ({type(exc).__name__})", ErrorKind.CONNECT) from None

    # -- state
    @property
    def usable(self) -> bool:
        """Open, idle and never failed: safe for the next request."""
        return not self._proto.closed and not self._proto.busy and self._ws.state is State.OPEN

    @property
    def busy(self) -> bool:
        return self._proto.busy

    # -- requests
    async def start_tts(
        self, text: str, *, speaker: str, dialect: str, language: str, mulaw: bool
    ) -> None:
        """Send a TTS request; read its audio with :meth:`next_audio`."""
        frame = self._proto.tts_request(
            text, speaker=speaker, dialect=dialect, language_id=language, mulaw=mulaw
        )
        self.requests += 1
        await self._send(frame)

    async def next_audio(self, timeout: float) -> bytes | None:
        """The next audio bytes of the TTS request in flight, or None at its ``end``.

        Raises :class:`HamsaError` (``timeout`` after ``timeout`` seconds without audio,
        or the server's error/close), after which the connection is unusable.
        """
        try:
            async with asyncio.timeout(timeout):
                while True:
                    while self._events:
                        event = self._events.popleft()
                        if isinstance(event, TtsAudio):
                            return event.audio
                        if isinstance(event, TtsEnd):
                            return None
                        self._raise_for(event, "during TTS")
                    await self._pump(during="during TTS")
        except TimeoutError:
            self._proto.abandon()
            raise HamsaError(f"no TTS audio within {timeout:g} s", ErrorKind.TIMEOUT) from None

    async def transcribe(self, wav: bytes, *, language: str, timeout: float) -> str:
        """One whole-utterance STT request (§1.5); ``[THINKING]``-style markers are skipped.

        A normal close (1000) with no transcript reads as an empty transcript ([SPK], §4).
        """
        frame = self._proto.stt_request(wav, language=language)
        self.requests += 1
        await self._send(frame)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    while self._events:
                        event = self._events.popleft()
                        if isinstance(event, SttTranscript):
                            return event.text
                        if isinstance(event, ServerClosed) and event.code == 1000:
                            return ""
                        self._raise_for(event, "during STT")
                    await self._pump(during="during STT")
        except TimeoutError:
            self._proto.abandon()
            raise HamsaError(f"no transcript within {timeout:g} s", ErrorKind.TIMEOUT) from None

    # -- frames
    async def _send(self, frame: str) -> None:
        try:
            await self._ws.send(frame)
        except ConnectionClosed as exc:
            self._on_closed(exc)
            self._raise_for(self._events.pop(), "while sending")

    async def _pump(self, during: str) -> None:
        """Receive one frame and queue its events."""
        try:
            data = await self._ws.recv()
        except ConnectionClosed as exc:
            self._on_closed(exc)
            return
        except asyncio.CancelledError:
            self._proto.abandon()
            raise
        if isinstance(data, bytes):
            self._events.extend(self._proto.receive_bytes(data))
        else:
            self._events.extend(self._proto.receive_text(data))

    def _on_closed(self, exc: ConnectionClosed) -> None:
        code = exc.rcvd.code if exc.rcvd is not None else ABNORMAL_CLOSE
        reason = exc.rcvd.reason if exc.rcvd is not None else ""
        self._events.extend(self._proto.receive_close(code, reason))

    def _raise_for(self, event: Event, during: str) -> None:
        """Raise for terminal failures; ignore informational events (greeting, ack, ...)."""
        if isinstance(event, ServerError):
            self._proto.abandon()  # after an error frame the socket is not trusted again
            raise HamsaError(f"server error {during}: {event.message[:200]}", event.kind)
        if isinstance(event, ServerClosed):
            raise _closed_error(event, during)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("hamsa frame ignored %s: %r", during, event)

    # -- closing
    def abort(self) -> None:
        """Drop the socket now (no closing handshake): used when a stream is abandoned with
        audio still on the wire. Synchronous, so it is safe in ``finally`` under cancel."""
        self._proto.abandon()
        transport = self._ws.transport
        if transport is not None:
            transport.abort()

    async def aclose(self) -> None:
        """Close politely (bounded by :data:`CLOSE_TIMEOUT_S`)."""
        self._proto.abandon()
        await _quiet_close(self._ws)


async def _quiet_close(ws: ClientConnection | None) -> None:
    if ws is None:
        return
    with contextlib.suppress(OSError, ConnectionClosed):
        await ws.close()


def headers_for_rest(api_key: str) -> Mapping[str, str]:
    """REST auth header (§2.1: ``Token``, not ``Bearer``)."""
    return {"Authorization": f"Token {api_key}"}
