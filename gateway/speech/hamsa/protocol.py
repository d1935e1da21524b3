"""Sans-I/O core of the Hamsa realtime WebSocket (``/v1/realtime/ws``).

Requests go out as JSON text built here; frames that arrived go in through
:meth:`HamsaProtocol.receive_text`, :meth:`~HamsaProtocol.receive_bytes` and
:meth:`~HamsaProtocol.receive_close`, and come back as typed events. No sockets, no asyncio,
no clock: the glue in ``client.py`` owns those.

Wire facts (``docs/protocols/hamsa.md``; section numbers below refer to it):

* §1.2 greeting after connect: ``{"type":"info","payload":{"message":"Connected to realtime
  WebSocket server"}}`` -> :class:`Greeting`.
* §1.4 TTS: request ``{"type":"tts","payload":{text, speaker, dialect, languageId, mulaw}}``
  -> ``ack`` -> binary audio frames -> ``end``. Audio is PCM16 LE mono 16 kHz, or μ-law 8 kHz
  when ``mulaw`` is set (community practice, GUESSED/OBSERVED). A leading RIFF/WAVE header
  may or may not be present (unresolved, §6.2): both readings are accepted, a header is
  stripped by ``telecodecs.wav.RiffStripper``, which also carries odd bytes across frames.
* §1.5 STT: request ``{"type":"stt","payload":{audioBase64, language, isEosEnabled,
  eosThreshold}}`` -> ONE plain-text frame (not JSON). Bracket markers such as
  ``[THINKING]`` (regex ``^\\[[A-Z_ ]+\\]$`` per [SPK]) are not transcripts: they surface as
  :class:`SttMarker` and the request stays in flight.
* §1.3/§1.4 errors: ``{"type":"error","payload":{"message":...}}``; no ``end`` follows (the
  simulator's "error" fault, §5), so an error ends the request in flight.
* §1.6 close codes: 4001 (bad key) and 4003 (empty wallet) are fatal; 1000, 1001, 4500 and
  anything else are retryable.
* There is no request id and no cancel message: strictly one request in flight per socket.
  A second request while one is in flight is a programming error (:class:`RequestInFlight`).

Three outcomes are kept apart: an event, :class:`Ignored` (understood but not for us, e.g.
an ``end`` with no request in flight) and :class:`Malformed` (could not be understood).
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Any

import orjson

from telecodecs.wav import RiffStripper

# §1.2, §1.4: exact server texts, typos verbatim (the simulator sends these too).
GREETING_MESSAGE = "Connected to realtime WebSocket server"
TTS_ACK_MESSAGE = "Real time text to speach connection establesh"
TTS_END_MESSAGE = "End of TTS stream"
NOT_WAV_MESSAGE = "Only WAV files are supported"  # §4, OBSERVED [SPK]

MAX_TTS_CHARS = 2000  # §1.4 VERIFIED-DOC

# §1.4 audio formats (GUESSED/OBSERVED community practice).
PCM_SAMPLE_RATE = 16000
MULAW_SAMPLE_RATE = 8000

# §1.5 [SPK]: bracketed status markers are not transcripts.
_MARKER_RE = re.compile(r"^\[[A-Z_ ]+\]$")


class ErrorKind(StrEnum):
    """Why a Hamsa request or connection failed. A closed set: safe as a metric label."""

    AUTH = "auth"  # bad/missing key, voice not owned (§1.6 4001, [SPK] rules)
    QUOTA = "quota"  # empty wallet / usage limit (§1.6 4003, §4)
    RATE_LIMIT = "rate_limit"  # "rate limit" error text, HTTP 429 without quota code
    BAD_REQUEST = "bad_request"  # refused input ("Only WAV files are supported", ...)
    ABORTED = "aborted"  # server says the stream was aborted ([LKWS])
    SERVER = "server"  # any other server error frame / HTTP 5xx / close 4500
    CLOSED = "closed"  # the socket closed with a request in flight
    CONNECT = "connect"  # the socket could not be opened
    TIMEOUT = "timeout"  # first audio, gap or transcript did not arrive in time
    SHORT_RESPONSE = "short_response"  # the "640-byte" failure (§4)
    PROTOCOL = "protocol"  # unparseable or out-of-order frames
    CIRCUIT_OPEN = "circuit_open"  # Hamsa is down; no connect attempted


FATAL_KINDS = frozenset({ErrorKind.AUTH, ErrorKind.QUOTA})


class CloseKind(StrEnum):
    """§1.6 close code meanings."""

    IDLE = "idle"  # 1000: closed after 60 minutes of inactivity
    GOING_AWAY = "going_away"  # 1001: server shutting down
    AUTH = "auth"  # 4001: authentication failed (fatal)
    WALLET = "wallet"  # 4003: insufficient funds (fatal)
    INTERNAL_AUTH = "internal_auth"  # 4500: internal authentication error (retryable)
    OTHER = "other"  # anything else, e.g. 1006 abnormal closure (retryable)


_CLOSE_CODES: dict[int, CloseKind] = {
    1000: CloseKind.IDLE,
    1001: CloseKind.GOING_AWAY,
    4001: CloseKind.AUTH,
    4003: CloseKind.WALLET,
    4500: CloseKind.INTERNAL_AUTH,
}


def classify_close(code: int) -> tuple[CloseKind, ErrorKind, bool]:
    """Map a close code to (close kind, error kind, fatal). Fatal means: do not retry."""
    kind = _CLOSE_CODES.get(code, CloseKind.OTHER)
    if kind is CloseKind.AUTH:
        return kind, ErrorKind.AUTH, True
    if kind is CloseKind.WALLET:
        return kind, ErrorKind.QUOTA, True
    if kind is CloseKind.INTERNAL_AUTH:
        return kind, ErrorKind.SERVER, False
    return kind, ErrorKind.CLOSED, False


def classify_error_message(message: str) -> ErrorKind:
    """Classify an ``error`` frame (or REST error) text, following [SPK]'s rules (§1.6).

    "insufficient funds"/"usage limit" -> quota; "rate limit" -> rate limit;
    "api key"/"inactive"/"not owned" -> auth; "abort" -> aborted ([LKWS]);
    "only wav"/"not supported"/"required" -> bad request; anything else -> server.
    """
    low = message.lower()
    if "insufficient funds" in low or "usage limit" in low:
        return ErrorKind.QUOTA
    if "rate limit" in low:
        return ErrorKind.RATE_LIMIT
    if "api key" in low or "inactive" in low or "not owned" in low:
        return ErrorKind.AUTH
    if "abort" in low:
        return ErrorKind.ABORTED
    if "only wav" in low or "not supported" in low or "is required" in low:
        return ErrorKind.BAD_REQUEST
    return ErrorKind.SERVER


def audio_ms(nbytes: int, mulaw: bool) -> float:
    """Duration in ms of ``nbytes`` of TTS audio (PCM16 16 kHz or μ-law 8 kHz)."""
    bytes_per_ms = MULAW_SAMPLE_RATE / 1000 if mulaw else PCM_SAMPLE_RATE * 2 / 1000
    return nbytes / bytes_per_ms


def is_short_response(nbytes: int, text: str, mulaw: bool, ms_per_char: float) -> bool:
    """True if ``nbytes`` of audio is implausibly short for ``text`` (the §4 "640-byte" case).

    Threshold: ``len(text.strip()) * ms_per_char`` milliseconds. ``ms_per_char <= 0`` disables
    the check (but zero audio is always short).
    """
    if nbytes == 0:
        return True
    return audio_ms(nbytes, mulaw) < len(text.strip()) * ms_per_char


# ------------------------------------------------------------------------------ events


@dataclass(frozen=True, slots=True)
class Greeting:
    """An ``info`` frame (§1.2); the first one says the socket is ready."""

    message: str


@dataclass(frozen=True, slots=True)
class TtsAck:
    """``ack``: the TTS request was accepted (§1.4)."""

    message: str


@dataclass(frozen=True, slots=True)
class TtsAudio:
    """Audio bytes of the TTS request in flight: whole samples, any RIFF header removed."""

    audio: bytes


@dataclass(frozen=True, slots=True)
class TtsEnd:
    """``end``: the TTS stream is complete; ``audio_bytes`` counts the audio delivered."""

    message: str
    audio_bytes: int


@dataclass(frozen=True, slots=True)
class SttTranscript:
    """The STT answer (a plain-text frame, §1.5). Ends the STT request."""

    text: str


@dataclass(frozen=True, slots=True)
class SttMarker:
    """A bracketed status frame such as ``[THINKING]``; the STT request stays in flight."""

    text: str


@dataclass(frozen=True, slots=True)
class ServerError:
    """An ``error`` frame. Ends the request in flight (no ``end`` follows)."""

    message: str
    kind: ErrorKind

    @property
    def fatal(self) -> bool:
        return self.kind in FATAL_KINDS


@dataclass(frozen=True, slots=True)
class ServerClosed:
    """The socket closed. ``interrupted`` is the request kind that was in flight, if any."""

    code: int
    reason: str
    kind: CloseKind
    error_kind: ErrorKind
    fatal: bool
    interrupted: RequestKind | None


@dataclass(frozen=True, slots=True)
class Ignored:
    """A well-formed frame that is not for the current state (counted, then dropped)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Malformed:
    """A frame that could not be understood."""

    reason: str


Event = (
    Greeting
    | TtsAck
    | TtsAudio
    | TtsEnd
    | SttTranscript
    | SttMarker
    | ServerError
    | ServerClosed
    | Ignored
    | Malformed
)


class RequestKind(Enum):
    TTS = "tts"
    STT = "stt"


class RequestInFlight(RuntimeError):
    """A request was started while another is in flight (programming error: §1.4 FIFO)."""


class ProtocolClosed(RuntimeError):
    """A request was started on a closed connection (programming error)."""


# ---------------------------------------------------------------------------- protocol


class HamsaProtocol:
    """State of one realtime socket: the greeting, the one request in flight, closure.

    Contract: call :meth:`tts_request` / :meth:`stt_request` only when :attr:`busy` is
    false; feed every received frame in order; a request ends with exactly one of
    :class:`TtsEnd`, :class:`SttTranscript`, :class:`ServerError` or :class:`ServerClosed`.
    """

    __slots__ = ("_audio_bytes", "_closed", "_greeted", "_in_flight", "_mulaw", "_stripper")

    def __init__(self) -> None:
        self._greeted = False
        self._closed = False
        self._in_flight: RequestKind | None = None
        self._stripper: RiffStripper | None = None
        self._audio_bytes = 0
        self._mulaw = False

    # -- state
    @property
    def greeted(self) -> bool:
        return self._greeted

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def in_flight(self) -> RequestKind | None:
        return self._in_flight

    @property
    def busy(self) -> bool:
        return self._in_flight is not None

    # -- requests out
    def tts_request(
        self,
        text: str,
        *,
        speaker: str,
        dialect: str,
        language_id: str = "ar",
        mulaw: bool = False,
        sample_rate: str | None = None,
    ) -> str:
        """Start a TTS request; returns the text frame to send.

        ``text`` must be 1..2000 characters (§1.4) and not blank: ValueError otherwise.
        ``sample_rate`` ("8k"/"16k", secondary source [VLL]) is only sent for PCM, since the
        spec says it "must not be combined with" mulaw.
        """
        self._check_can_start()
        if not text.strip() or len(text) > MAX_TTS_CHARS:
            raise ValueError(f"TTS text must be 1..{MAX_TTS_CHARS} characters")
        if sample_rate is not None and mulaw:
            raise ValueError("sampleRate must not be combined with mulaw")
        payload: dict[str, Any] = {
            "text": text,
            "speaker": speaker,
            "dialect": dialect,
            "languageId": language_id,
            "mulaw": mulaw,
        }
        if sample_rate is not None:
            payload["sampleRate"] = sample_rate
        self._in_flight = RequestKind.TTS
        self._mulaw = mulaw
        self._stripper = RiffStripper(1 if mulaw else 2)
        self._audio_bytes = 0
        return orjson.dumps({"type": "tts", "payload": payload}).decode()

    def stt_request(
        self,
        wav: bytes,
        *,
        language: str = "ar",
        eos: bool = False,
        eos_threshold: float = 0.3,
    ) -> str:
        """Start an STT request for one whole utterance; returns the text frame to send.

        ``wav`` must be a complete RIFF/WAVE file (raw PCM is refused by the server, §4):
        ValueError otherwise. ``eos`` stays false by default: with it the server may answer
        ``[THINKING]`` and then nothing (§1.5).
        """
        self._check_can_start()
        if len(wav) < 12 or wav[:4] != b"RIFF" or wav[8:12] != b"WAVE":
            raise ValueError("STT audio must be a whole WAV file")
        payload = {
            "audioBase64": base64.b64encode(wav).decode("ascii"),
            "language": language,
            "isEosEnabled": eos,
            "eosThreshold": eos_threshold,
        }
        self._in_flight = RequestKind.STT
        return orjson.dumps({"type": "stt", "payload": payload}).decode()

    def _check_can_start(self) -> None:
        if self._closed:
            raise ProtocolClosed("the Hamsa socket is closed")
        if self._in_flight is not None:
            raise RequestInFlight(f"a {self._in_flight.value} request is already in flight")

    # -- frames in
    def receive_bytes(self, data: bytes) -> list[Event]:
        """A binary frame: TTS audio when a TTS request is in flight (§1.4)."""
        if self._in_flight is not RequestKind.TTS or self._stripper is None:
            return [Ignored("binary frame without a TTS request")]
        audio = self._stripper.feed(data)
        if not audio:
            return []
        self._audio_bytes += len(audio)
        return [TtsAudio(audio)]

    def receive_text(self, text: str) -> list[Event]:
        """A text frame: a JSON envelope (§1.3) or, during STT, the plain transcript (§1.5)."""
        stripped = text.strip()
        if stripped.startswith("{"):
            try:
                message = orjson.loads(stripped)
            except orjson.JSONDecodeError:
                message = None
            if isinstance(message, dict):
                return self._receive_envelope(message)
            if self._in_flight is not RequestKind.STT:
                return [Malformed("text frame is not a JSON object")]
        if self._in_flight is RequestKind.STT:
            if _MARKER_RE.match(stripped):
                return [SttMarker(stripped)]
            self._in_flight = None
            return [SttTranscript(stripped)]
        return [Ignored("plain text frame without an STT request")]

    def _receive_envelope(self, message: dict[str, Any]) -> list[Event]:
        # The one place a Hamsa server dict is read.
        kind = message.get("type")
        payload = message.get("payload")
        if not isinstance(kind, str):
            return [Malformed("JSON frame without a type")]
        text = ""
        if isinstance(payload, dict):
            raw = payload.get("message")
            text = raw if isinstance(raw, str) else ""
        if kind == "info":
            self._greeted = True
            return [Greeting(text)]
        if kind == "ack":
            if self._in_flight is RequestKind.TTS:
                return [TtsAck(text)]
            return [Ignored("ack without a TTS request")]
        if kind == "end":
            if self._in_flight is RequestKind.TTS:
                return self._finish_tts(text)
            # [BS] tolerates an `end` after STT (GUESSED): harmless either way.
            return [Ignored("end without a TTS request")]
        if kind == "error":
            if not text and isinstance(payload, dict):
                text = str(payload)
            self._end_request()
            return [ServerError(text, classify_error_message(text))]
        if kind == "response" and self._in_flight is RequestKind.STT:
            # §1.3 lists a `response` type never seen in the wild; GUESSED shape
            # {payload: {text|transcription}}. The documented answer is plain text.
            if isinstance(payload, dict):
                for key in ("text", "transcription"):
                    value = payload.get(key)
                    if isinstance(value, str):
                        self._in_flight = None
                        return [SttTranscript(value.strip())]
            return [Malformed("response frame without text")]
        return [Ignored(f"unexpected {kind[:20]!r} frame")]

    def _finish_tts(self, message: str) -> list[Event]:
        events: list[Event] = []
        if self._stripper is not None:
            tail = self._stripper.flush()
            # A dangling odd byte of PCM16 is not a whole sample: drop it.
            if not self._mulaw and len(tail) % 2:
                tail = tail[:-1]
            if tail:
                self._audio_bytes += len(tail)
                events.append(TtsAudio(tail))
        events.append(TtsEnd(message, self._audio_bytes))
        self._end_request()
        return events

    def _end_request(self) -> None:
        self._in_flight = None
        self._stripper = None

    def receive_close(self, code: int, reason: str = "") -> list[Event]:
        """The socket closed (or was lost: pass 1006). Ends any request in flight."""
        close_kind, error_kind, fatal = classify_close(code)
        interrupted = self._in_flight
        self._end_request()
        self._closed = True
        return [ServerClosed(code, reason, close_kind, error_kind, fatal, interrupted)]

    def abandon(self) -> None:
        """The client gave up on the socket (timeout, cancelled stream): no more requests."""
        self._end_request()
        self._closed = True
