"""Sans-I/O browser softphone media socket (``/browser/media``): frames in, events out.

The gateway's own page (``GET /phone``, ``gateway/server/static/``) is the "carrier" here, so
this module *defines* the wire format; the page's ``phone.js`` is its other half. One
WebSocket per call. BINARY frames are audio, TEXT frames are JSON control objects with a
``type``. Audio both ways is PCM16 little-endian mono at 16 kHz (the rate Hamsa STT wants,
so the call needs no resampling at all).

Page -> gateway:

==================================================  ===========================================
``{"type":"start","format":{"encoding":"pcm16",``   ``CallStarted`` (``Transport.BROWSER``,
``"sampleRate":16000,"channels":1}}``               PCM16 16 kHz); the call id comes from the
                                                    signed token the socket was opened with
BINARY, 2..``MAX_AUDIO_BYTES`` bytes, even length   ``CallerAudio`` (20 ms = 640 bytes usually)
``{"type":"mark","name":N,"played":true|false}``    ``MarkPlayed(N, played)`` (see *Marks*)
``{"type":"dtmf","digit":"5"}``                     ``Dtmf``
``{"type":"hangup"}``                               ``MarkPlayed(played=False)`` for every mark
                                                    not yet answered, then ``CallEnded``
other ``type``                                      ``Ignored("unknown_type")``
==================================================  ===========================================

Gateway -> page:

=================  ===============================================================================
``PlayAudio``      BINARY frames of at most ``chunk_ms`` (default 100 ms) of PCM16 16 kHz
``SetMark``        ``{"type":"mark","name":N}``
``ClearAudio``     ``{"type":"clear"}``
``Hangup``         ``{"type":"hangup","reason":R}`` (the glue then closes the socket)
``notify()``       ``{"type":"started","call_id":C}`` after ``start``; conversation events
                   (``transcript``, ``reply``, ``speech_end``, ``interrupted``) as JSON objects,
                   picked up by the glue with :meth:`BrowserMediaProtocol.data_to_send`
                   after the page's next message (the page sends audio every 20 ms)
=================  ===============================================================================

Marks: the page plays audio in order through its jitter buffer and answers **every** mark
exactly once: ``played: true`` when the audio queued before the mark has actually been output
(its playback clock passed the mark's position), ``played: false`` when a ``clear`` emptied its
buffer first. So what-was-heard on barge-in works exactly as on the carriers; an answer that
crossed a ``clear`` on the wire keeps its truth (the page decided while it still had the
audio). A page that never answers a mark only stalls its own call, never another.

Bad input becomes :class:`~gateway.telephony.events.Malformed` (counted by the driver, logged
once per reason per call):

======================  ==========================================================  =====  =====
reason                  when                                                        fatal  close
======================  ==========================================================  =====  =====
``message_too_large``   TEXT over ``max_control_bytes`` (checked before parsing)    yes    1009
``unsupported_format``  ``start.format`` is not PCM16 16 kHz mono                   yes    1003
``second_start``        a second ``start``                                          yes    1008
``invalid_json``        TEXT that is not JSON                                       no     -
``not_an_object``       JSON that is not an object (or has no string ``type``)      no     -
``media_before_start``  audio, ``mark`` or ``dtmf`` before ``start``                no     -
``bad_payload_size``    audio empty, odd-sized or over ``MAX_AUDIO_BYTES``          no     -
``missing_field``       ``mark.name`` / ``dtmf.digit`` absent or wrong              no     -
======================  ==========================================================  =====  =====

Tokens: :func:`issue_token` / :func:`verify_token` sign a short-lived call ticket with
HMAC-SHA256 (pure functions: the caller passes the clock and the key). A token is
``<call id>.<expiry unix seconds>.<urlsafe base64 MAC>``; the route consumes each one once.

Hot path: audio in is the ``bytes`` aiohttp already made (no copy), audio out is at most one
slice per ``chunk_ms``; nothing is logged or allocated per frame beyond that.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections import deque
from collections.abc import Mapping
from typing import Any, Final

import orjson

from gateway.telephony.adapter import AdapterBuffers
from gateway.telephony.events import (
    PCM16_16K,
    CallEnded,
    CallerAudio,
    CallStarted,
    ClearAudio,
    Dtmf,
    Hangup,
    Ignored,
    InboundEvent,
    Malformed,
    MarkPlayed,
    OutboundEvent,
    PlayAudio,
    SetMark,
    Transport,
)

SAMPLE_RATE_HZ: Final = 16000
BYTES_PER_MS: Final = SAMPLE_RATE_HZ * 2 // 1000  # PCM16 mono: 32 bytes per ms
# Largest inbound audio frame: 500 ms. The page sends 20 ms (640 bytes); a busy tab may batch a
# few, but more would distort the turn detector's timing.
MAX_AUDIO_BYTES: Final = 500 * BYTES_PER_MS
# Largest inbound TEXT message: control objects are tiny.
MAX_CONTROL_BYTES: Final = 4096
MAX_MARK_NAME: Final = 128

# RFC 6455 §7.4.1 close codes.
CLOSE_POLICY_VIOLATION: Final = 1008
CLOSE_UNSUPPORTED_DATA: Final = 1003
CLOSE_MESSAGE_TOO_BIG: Final = 1009

DTMF_DIGITS: Final = frozenset("0123456789*#ABCD")

_UNKNOWN_TYPE: Final = Ignored("unknown_type")
_UNKNOWN_MARK: Final = Ignored("unknown_mark")
_AFTER_HANGUP: Final = Ignored("after_hangup")
_NOT_AN_OBJECT: Final = Malformed("not_an_object", "control message is not an object with a type")
_BEFORE_START: Final = Malformed("media_before_start", "audio or control before 'start'")
_CLEAR: Final = '{"type":"clear"}'


def _bad_size(size: int) -> Malformed:
    return Malformed(
        "bad_payload_size", f"{size}-byte audio frame; accepted: even, 2..{MAX_AUDIO_BYTES}"
    )


class BrowserMediaProtocol(AdapterBuffers):
    """One softphone call: parses what the page sends, builds what we send back.

    A :class:`~gateway.telephony.adapter.MediaAdapter` (``receive_*`` then
    ``events_received``; ``send`` / :meth:`notify` then ``data_to_send``).

    ``call_id`` comes from the verified token (the page never chooses it); ``metadata`` goes
    to the agent as call metadata. Not thread-safe; one instance per WebSocket.
    """

    __slots__ = (
        "_call_id",
        "_chunk_bytes",
        "_ended",
        "_marks",
        "_max_control_bytes",
        "_metadata",
        "_started",
    )

    def __init__(
        self,
        call_id: str,
        *,
        metadata: Mapping[str, str] | None = None,
        chunk_ms: int = 100,
        max_control_bytes: int = MAX_CONTROL_BYTES,
    ) -> None:
        if not call_id:
            raise ValueError("call_id must not be empty")
        if chunk_ms <= 0 or max_control_bytes <= 0:
            raise ValueError("chunk_ms and max_control_bytes must be positive")
        super().__init__()
        self._call_id = call_id
        self._metadata = dict(metadata or {})
        self._chunk_bytes = chunk_ms * BYTES_PER_MS
        self._max_control_bytes = max_control_bytes
        self._started = False
        self._ended = False
        self._marks: deque[str] = deque()  # sent, not yet answered, oldest first

    @property
    def started(self) -> bool:
        return self._started

    @property
    def marks_in_flight(self) -> tuple[str, ...]:
        return tuple(self._marks)

    # ---------------------------------------------------------------- inbound

    def receive_data(self, data: bytes) -> None:
        """One BINARY frame: caller audio (PCM16 16 kHz). Never raises."""
        self._queue_events(self._audio(data))

    def receive_text(self, text: str) -> None:
        """One TEXT frame: a JSON control object. Never raises."""
        self._queue_events(self._control(text))

    def receive_eof(self) -> None:
        """The page's socket closed without ``hangup``: nothing to report (the glue ends it)."""

    def _audio(self, data: bytes) -> list[InboundEvent]:
        if not self._started:
            return [_BEFORE_START]
        if self._ended:
            return [_AFTER_HANGUP]
        size = len(data)
        if size == 0 or size & 1 or size > MAX_AUDIO_BYTES:
            return [_bad_size(size)]
        return [CallerAudio(data)]

    def _control(self, text: str) -> list[InboundEvent]:
        if len(text) > self._max_control_bytes:
            return [
                Malformed(
                    "message_too_large",
                    f"{len(text)} characters > {self._max_control_bytes}",
                    fatal=True,
                    close_code=CLOSE_MESSAGE_TOO_BIG,
                )
            ]
        try:
            msg = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            return [Malformed("invalid_json", str(exc))]
        if type(msg) is not dict or type(msg.get("type")) is not str:
            return [_NOT_AN_OBJECT]
        if self._ended:
            return [_AFTER_HANGUP]
        kind = msg["type"]
        if kind == "mark":
            return self._on_mark(msg)
        if kind == "start":
            return self._on_start(msg)
        if kind == "hangup":
            return self._on_hangup()
        if kind == "dtmf":
            return self._on_dtmf(msg)
        return [_UNKNOWN_TYPE]

    def _on_start(self, msg: dict[str, Any]) -> list[InboundEvent]:
        if self._started:
            return [
                Malformed(
                    "second_start",
                    "a second 'start'",
                    fatal=True,
                    close_code=CLOSE_POLICY_VIOLATION,
                )
            ]
        fmt = msg.get("format")
        ok = (
            type(fmt) is dict
            and fmt.get("encoding") == "pcm16"
            and fmt.get("sampleRate") == SAMPLE_RATE_HZ
            and fmt.get("channels", 1) == 1
        )
        if not ok:
            shown = orjson.dumps(fmt).decode()[:120]
            return [
                Malformed(
                    "unsupported_format",
                    f"format {shown}; only pcm16 16000 Hz mono is supported",
                    fatal=True,
                    close_code=CLOSE_UNSUPPORTED_DATA,
                )
            ]
        self._started = True
        self.notify("started", {"call_id": self._call_id})
        return [
            CallStarted(
                call_id=self._call_id,
                transport=Transport.BROWSER,
                audio_format=PCM16_16K,
                stream_id=self._call_id,
                metadata=self._metadata,
            )
        ]

    def _on_mark(self, msg: dict[str, Any]) -> list[InboundEvent]:
        if not self._started:
            return [_BEFORE_START]
        name = msg.get("name")
        played = msg.get("played", True)
        if type(name) is not str or type(played) is not bool:
            return [Malformed("missing_field", "mark needs a string name and a boolean played")]
        try:
            self._marks.remove(name)  # the oldest mark of that name
        except ValueError:
            return [_UNKNOWN_MARK]
        return [MarkPlayed(name, played=played)]

    def _on_dtmf(self, msg: dict[str, Any]) -> list[InboundEvent]:
        if not self._started:
            return [_BEFORE_START]
        digit = msg.get("digit")
        if type(digit) is not str or digit.upper() not in DTMF_DIGITS:
            return [Malformed("missing_field", "dtmf needs a digit 0-9, *, #, A-D")]
        return [Dtmf(digit.upper())]

    def _on_hangup(self) -> list[InboundEvent]:
        self._ended = True
        events: list[InboundEvent] = [MarkPlayed(name, played=False) for name in self._marks]
        self._marks.clear()
        events.append(CallEnded("remote_hangup"))
        return events

    # --------------------------------------------------------------- outbound

    def send(self, event: OutboundEvent) -> None:
        """Queue the frames for ``event`` (see :meth:`_frames`) for ``data_to_send``."""
        self._queue_output(self._frames(event))

    def _frames(self, event: OutboundEvent) -> list[str | bytes]:
        """Frames to write for ``event``, in order (see the module docstring).

        After the page hung up everything returns ``[]``. Raises RuntimeError for audio or a
        mark before ``start`` (a programming error) and ValueError for a bad mark name.
        """
        if self._ended:
            return []
        if type(event) is PlayAudio:
            if not self._started:
                raise RuntimeError("PlayAudio before the page's 'start'")
            audio = event.audio
            chunk = self._chunk_bytes
            if len(audio) <= chunk:
                return [audio] if audio else []
            view = memoryview(audio)
            return [bytes(view[i : i + chunk]) for i in range(0, len(audio), chunk)]
        if type(event) is SetMark:
            if not self._started:
                raise RuntimeError("SetMark before the page's 'start'")
            if not event.name or len(event.name) > MAX_MARK_NAME:
                raise ValueError(f"mark name must be 1..{MAX_MARK_NAME} characters")
            self._marks.append(event.name)
            return [_json({"type": "mark", "name": event.name})]
        if type(event) is ClearAudio:
            return [_CLEAR] if self._started else []
        if type(event) is Hangup:
            self._ended = True
            return [_json({"type": "hangup", "reason": event.reason})]
        raise TypeError(f"not an outbound event: {event!r}")

    def notify(self, kind: str, fields: Mapping[str, object]) -> None:
        """Queue a conversation event for the page (``{"type": kind, **fields}``).

        Used as the call session's observer; picked up by :meth:`data_to_send` (the runner
        calls it after every receive and every send).
        """
        if not self._ended:
            body = dict(fields)
            body["type"] = kind
            self._output_one(_json(body))


def _json(body: Mapping[str, object]) -> str:
    return orjson.dumps(body).decode()


# ------------------------------------------------------------------------ tokens

TOKEN_VERSION: Final = "v1"


def new_secret() -> bytes:
    """A random HMAC key (used when ``BROWSER_PHONE_SECRET`` is not set)."""
    return secrets.token_bytes(32)


def new_call_id() -> str:
    """A fresh softphone call id (URL- and log-safe, no dots)."""
    return "web-" + secrets.token_hex(12)


def _mac(key: bytes, call_id: str, expires: int) -> str:
    message = f"{TOKEN_VERSION}.{call_id}.{expires}".encode()
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def issue_token(key: bytes, call_id: str, *, now: float, ttl: float) -> str:
    """A token for ``call_id`` valid until ``now + ttl`` (unix seconds)."""
    if not call_id or "." in call_id:
        raise ValueError("call_id must be non-empty and contain no '.'")
    expires = int(now + ttl)
    return f"{call_id}.{expires}.{_mac(key, call_id, expires)}"


def verify_token(key: bytes, token: str, *, now: float) -> tuple[str | None, str]:
    """``(call_id, "ok")`` for a valid token, else ``(None, reason)``.

    Reasons (a closed set, metric-safe): ``missing``, ``malformed``, ``bad_signature``,
    ``expired``. The MAC is compared in constant time, and checked before the expiry so an
    attacker learns nothing about forged tokens from the answer.
    """
    if not token:
        return None, "missing"
    if len(token) > 200:
        return None, "malformed"
    parts = token.split(".")
    if len(parts) != 3 or not parts[0] or not (parts[1].isascii() and parts[1].isdigit()):
        return None, "malformed"
    call_id, expires_text, mac = parts
    expires = int(expires_text)
    if not hmac.compare_digest(mac.encode(), _mac(key, call_id, expires).encode()):
        return None, "bad_signature"
    if now >= expires:
        return None, "expired"
    return call_id, "ok"


class TokenBook:
    """Issues softphone tokens and accepts each one once, until it expires.

    ``key`` is the HMAC key (``BROWSER_PHONE_SECRET``, or :func:`new_secret`). Consumed call
    ids are remembered only until their token would have expired anyway, so the book holds
    at most one entry per call started in the last ``ttl`` seconds.
    """

    def __init__(self, key: bytes, ttl: float) -> None:
        if not key or ttl <= 0:
            raise ValueError("TokenBook needs a key and a positive ttl")
        self.key = key
        self.ttl = ttl
        self._used: dict[str, int] = {}  # call id -> expiry (unix seconds)

    def issue(self, *, now: float) -> tuple[str, str]:
        """A fresh ``(call_id, token)``."""
        call_id = new_call_id()
        return call_id, issue_token(self.key, call_id, now=now, ttl=self.ttl)

    def consume(self, token: str, *, now: float) -> tuple[str | None, str]:
        """Verify ``token`` and mark it used: ``(call_id, "ok")`` or ``(None, reason)``.

        Reasons: those of :func:`verify_token`, plus ``reused``.
        """
        if self._used:
            for stale in [c for c, expires in self._used.items() if expires <= now]:
                del self._used[stale]
        call_id, reason = verify_token(self.key, token, now=now)
        if call_id is None:
            return None, reason
        if call_id in self._used:
            return None, "reused"
        self._used[call_id] = int(now + self.ttl) + 1
        return call_id, "ok"
