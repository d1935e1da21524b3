"""Provider-neutral call events: what every telephony adapter produces and consumes.

Each sans-I/O adapter (Twilio Media Streams, Asterisk chan_websocket, AudioSocket) turns
wire input into *inbound* events and turns *outbound* events into wire output. The call
session only ever sees these types, so the voice agent never knows which transport a call
came in on.

Audio inside events is in the call's negotiated :class:`AudioFormat` (announced once by
:class:`CallStarted`): the adapter does not transcode, so a μ-law carrier and μ-law TTS can
skip conversion entirely. Conversions happen in the call session, using ``telecodecs``.

Three outcomes are kept apart, never folded into one ``None``:
an event (something happened), :class:`Ignored` (understood, deliberately dropped, counted)
and :class:`Malformed` (could not be understood; counted by reason, maybe fatal).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

# Re-exported: events carry audio in these formats (defined below every layer).
from gateway.audio_format import ALAW_8K as ALAW_8K
from gateway.audio_format import PCM16_8K as PCM16_8K
from gateway.audio_format import PCM16_16K as PCM16_16K
from gateway.audio_format import ULAW_8K as ULAW_8K
from gateway.audio_format import AudioFormat as AudioFormat
from gateway.audio_format import Encoding as Encoding


class Transport(StrEnum):
    """Where a call came from; a closed set, safe as a metric label."""

    TWILIO = "twilio"
    ASTERISK_WS = "asterisk_ws"
    AUDIOSOCKET = "audiosocket"
    BROWSER = "browser"  # the built-in softphone page (GET /phone, /browser/media)


# --------------------------------------------------------------------------- inbound


@dataclass(frozen=True, slots=True)
class CallStarted:
    """The carrier has started media for a call.

    ``call_id`` is the carrier's id for the call (Twilio CallSid, Asterisk channel id or
    AudioSocket UUID); ``stream_id`` the media stream's id where it differs (Twilio
    streamSid). ``metadata`` holds caller/callee and custom parameters as strings.
    """

    call_id: str
    transport: Transport
    audio_format: AudioFormat
    stream_id: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CallerAudio:
    """A chunk of the caller's audio, in the call's ``audio_format``."""

    audio: bytes


@dataclass(frozen=True, slots=True)
class Dtmf:
    """One DTMF digit pressed by the caller (``0-9``, ``*``, ``#``, ``A-D``)."""

    digit: str


@dataclass(frozen=True, slots=True)
class MarkPlayed:
    """The carrier reports a mark we set.

    ``played`` is True when all audio queued before the mark really played to the caller,
    False when the carrier echoed (or we locally retired) the mark because its audio was
    dropped by a clear.
    """

    name: str
    played: bool = True


@dataclass(frozen=True, slots=True)
class OutboundFlow:
    """Carrier-side flow control (Asterisk MEDIA_XOFF / MEDIA_XON): pause or resume sending."""

    paused: bool


@dataclass(frozen=True, slots=True)
class PlaybackDrained:
    """The carrier's playback queue is empty (Asterisk QUEUE_DRAINED)."""


@dataclass(frozen=True, slots=True)
class CallEnded:
    """The carrier ended the call (Twilio ``stop``, Asterisk hang-up, socket EOF)."""

    reason: str = "remote_hangup"


@dataclass(frozen=True, slots=True)
class Ignored:
    """Input understood and deliberately dropped (unknown event type, keepalive...).

    ``reason`` is a short closed-set token suitable as a metric label.
    """

    reason: str


@dataclass(frozen=True, slots=True)
class Malformed:
    """Input that could not be understood.

    ``reason`` is a short closed-set token (metric label); ``detail`` is for the log line
    and must never contain secrets. ``fatal`` means the call cannot continue and the glue
    should end it with ``close_code``.
    """

    reason: str
    detail: str = ""
    fatal: bool = False
    close_code: int = 1008  # RFC 6455 §7.4.1 "policy violation"


InboundEvent = (
    CallStarted
    | CallerAudio
    | Dtmf
    | MarkPlayed
    | OutboundFlow
    | PlaybackDrained
    | CallEnded
    | Ignored
    | Malformed
)


# -------------------------------------------------------------------------- outbound


@dataclass(frozen=True, slots=True)
class PlayAudio:
    """Queue audio for the caller, in the call's ``audio_format``."""

    audio: bytes


@dataclass(frozen=True, slots=True)
class SetMark:
    """Ask to be told (by :class:`MarkPlayed`) when audio queued so far has played."""

    name: str


@dataclass(frozen=True, slots=True)
class ClearAudio:
    """Drop all queued, unplayed audio at once (barge-in)."""


@dataclass(frozen=True, slots=True)
class Hangup:
    """End the call from the gateway's side."""

    reason: str = "gateway_hangup"


OutboundEvent = PlayAudio | SetMark | ClearAudio | Hangup
