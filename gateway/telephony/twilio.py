"""Sans-I/O Twilio Media Streams (bidirectional ``<Connect><Stream>``): text in, events out.

:class:`TwilioMediaProtocol` turns the WebSocket TEXT messages Twilio sends into the
provider-neutral events of :mod:`gateway.telephony.events`, and turns outbound events into
the TEXT messages to write. It owns no socket, task or clock: the glue feeds it what
arrived and writes what it returns. Wire shapes follow docs/protocols/twilio.md
(§1.3 inbound, §1.4 outbound), which cites
https://www.twilio.com/docs/voice/media-streams/websocket-messages and the real 2020 call
log of ``twilio/media-streams`` ``node/connect-basic/output.txt``.

Inbound messages and their events:

=============  ==============================================================================
``connected``  ``[]``; :attr:`~TwilioMediaProtocol.connected` becomes True (a repeat is
               ``Ignored("duplicate_connected")``)
``start``      ``CallStarted`` (μ-law 8 kHz mono only); ``metadata`` holds the
               ``customParameters`` verbatim plus ``account_sid``, ``call_sid``,
               ``stream_sid`` and ``tracks`` (comma-joined); those four win over a custom
               parameter of the same name
``media``      ``CallerAudio`` (track ``inbound``); track ``outbound`` is
               ``Ignored("outbound_track")``, any other track ``Ignored("unknown_track")``
``dtmf``       ``Dtmf`` (track ``inbound_track``; ``inbound`` accepted too)
``mark``       one ``MarkPlayed`` per mark retired (see *Marks*), or ``Ignored("unknown_mark")``
``stop``       ``MarkPlayed(played=False)`` for every mark still in flight, then
               ``CallEnded("remote_hangup")``; everything after it is ``Ignored("after_stop")``
other          ``Ignored("unknown_event")`` (Twilio may add events; unknown fields are ignored)
=============  ==============================================================================

Bad input becomes :class:`~gateway.telephony.events.Malformed`. The rule: a fault that makes
the stream unusable (no identity, wrong audio format, not Twilio at all) is fatal; a fault
confined to one message drops that message and keeps the call, because hanging up on a
caller costs more than losing 20 ms of audio. Fatal outcomes carry the close code the glue
should use (RFC 6455 §7.4.1).

============================  ====================================================  =====  =====
reason                        when                                                  fatal  close
============================  ====================================================  =====  =====
``message_too_large``         ``len(text) > max_message_bytes``, checked before     yes    1009
                              parsing (Twilio's largest message, ``start``, is a
                              few hundred bytes plus custom parameters)
``binary_frame``              any binary frame (Twilio sends only TEXT frames)      yes    1003
``unsupported_media_format``  ``start.mediaFormat`` is not μ-law 8 kHz mono         yes    1003
``second_start``              a ``start`` after the stream started                  yes    1008
``missing_field``             ``start`` lacks callSid, streamSid or mediaFormat     yes    1008
``stream_mismatch``           ``start.streamSid`` differs from its top-level one    yes    1008
``missing_field``             a ``media``/``dtmf``/``mark`` field is absent or of   no     -
                              the wrong type (this token covers both)
``stream_mismatch``           a later message names another streamSid               no     -
``invalid_json``              not JSON                                              no     -
``not_an_object``             JSON, but not an object                               no     -
``media_before_start``        ``media``, ``dtmf`` or ``mark`` before ``start``      no     -
``bad_base64``                ``media.payload`` is not strict base64                no     -
``bad_payload_size``          decoded payload empty or over                         no     -
                              :data:`MAX_INBOUND_PAYLOAD_BYTES`
============================  ====================================================  =====  =====

``message_too_large`` closes with 1009 ("message too big", RFC 6455 §7.4.1), the code made
for exactly that case, rather than the generic 1008.

Payload size: Twilio sends exactly 160 bytes (20 ms) per message (VERIFIED, real log). μ-law
is one byte per sample, so every non-empty payload is a whole number of samples; sizes from
1 byte up to :data:`MAX_INBOUND_PAYLOAD_BYTES` (200 ms, ten Twilio frames) are accepted so a
short or batched frame is not lost, since the call session re-frames audio anyway. Anything
larger is not Twilio and would distort the turn detector's timing, so it is dropped.

Marks: every :class:`~gateway.telephony.events.SetMark` sent yields exactly one
:class:`~gateway.telephony.events.MarkPlayed` if the stream ends with ``stop``.

- Marks in flight are kept in the order sent (:attr:`~TwilioMediaProtocol.marks_in_flight`).
  Duplicate names are allowed; an echo matches the oldest mark of that name.
- ``ClearAudio`` marks every mark then in flight as *cleared*. Twilio then echoes them
  (GUESSED strong, §1.4); such an echo yields ``MarkPlayed(name, played=False)``, never a
  played mark. An echo that raced the clear (its audio really played just before) is also
  reported unplayed: the two cannot be told apart, and under-reporting heard speech is the
  safe side.
- Twilio plays audio in order, so an echo of a mark that is not the oldest in flight implies
  every older mark's audio has finished too: those are retired first, in order, each as
  played unless it was cleared. This also covers the other reading of the GUESSED clear
  behaviour: if Twilio never echoes cleared marks, the next echo retires them as unplayed.
- On ``stop`` the marks still in flight never played: each yields ``played=False``.

Hot path: ``media`` in and ``PlayAudio`` out run 50 times a second per call. Inbound media
is one ``orjson.loads`` plus one ``binascii.a2b_base64``; outbound media is string
concatenation around ``binascii.b2a_base64`` with a JSON prefix built once at ``start``.
"""

from __future__ import annotations

import binascii
from collections import deque
from typing import Any, Final

import orjson

from gateway.telephony.adapter import AdapterBuffers
from gateway.telephony.events import (
    ULAW_8K,
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

# μ-law 8 kHz mono: one byte per sample, 8 samples per ms (§1.3 mediaFormat).
MULAW_BYTES_PER_MS: Final = 8
# Largest inbound media payload accepted: 200 ms (see the module docstring).
MAX_INBOUND_PAYLOAD_BYTES: Final = 200 * MULAW_BYTES_PER_MS
# start.mediaFormat values we accept (§1.3; the only format Media Streams uses).
MULAW_ENCODING: Final = "audio/x-mulaw"
MULAW_SAMPLE_RATE_HZ: Final = 8000

# RFC 6455 §7.4.1 close codes.
CLOSE_POLICY_VIOLATION: Final = 1008
CLOSE_UNSUPPORTED_DATA: Final = 1003
CLOSE_MESSAGE_TOO_BIG: Final = 1009

# DTMF digits a phone can send (RFC 4733 events 0-15).
DTMF_DIGITS: Final = frozenset("0123456789*#ABCD")

# Metadata keys CallStarted carries besides the custom parameters.
META_ACCOUNT_SID: Final = "account_sid"
META_CALL_SID: Final = "call_sid"
META_STREAM_SID: Final = "stream_sid"
META_TRACKS: Final = "tracks"

# Immutable outcomes shared by every call, so the hot path allocates nothing for them.
_OUTBOUND_TRACK: Final = Ignored("outbound_track")
_UNKNOWN_TRACK: Final = Ignored("unknown_track")
_UNKNOWN_EVENT: Final = Ignored("unknown_event")
_UNKNOWN_MARK: Final = Ignored("unknown_mark")
_AFTER_STOP: Final = Ignored("after_stop")
_DUPLICATE_CONNECTED: Final = Ignored("duplicate_connected")
_NOT_AN_OBJECT: Final = Malformed("not_an_object", "message is JSON but not an object")
_MEDIA_BEFORE_START: Final = Malformed("media_before_start", "stream message before 'start'")
_BAD_BASE64: Final = Malformed("bad_base64", "media.payload is not strict base64")
_STREAM_MISMATCH: Final = Malformed("stream_mismatch", "streamSid differs from the started one")

_MEDIA_SUFFIX: Final = '"}}'


def _missing(field: str, *, fatal: bool = False) -> Malformed:
    return Malformed(
        "missing_field",
        f"{field} is missing or of the wrong type",
        fatal=fatal,
        close_code=CLOSE_POLICY_VIOLATION,
    )


class TwilioMediaProtocol(AdapterBuffers):
    """One Twilio media stream: parses what Twilio sends, builds what we send back.

    A :class:`~gateway.telephony.adapter.MediaAdapter`: ``receive_text`` / ``receive_data``
    feed input, ``events_received`` returns the events, ``send`` queues output and
    ``data_to_send`` returns the TEXT messages. Not thread-safe; one instance per WebSocket.
    ``chunk_ms`` is the largest outbound ``media`` message (Twilio buffers larger ones
    fine, §1.4, but small chunks keep ``clear`` and marks fine-grained).
    ``max_message_bytes`` bounds an inbound message's length in characters, checked before
    parsing.
    """

    __slots__ = (
        "_call_sid",
        "_chunk_bytes",
        "_clear_message",
        "_cleared",
        "_connected",
        "_marks",
        "_max_message_bytes",
        "_media_prefix",
        "_sid_json",
        "_stopped",
        "_stream_sid",
    )

    def __init__(self, *, max_message_bytes: int = 65536, chunk_ms: int = 100) -> None:
        if max_message_bytes <= 0:
            raise ValueError(f"max_message_bytes must be positive, got {max_message_bytes}")
        if chunk_ms <= 0:
            raise ValueError(f"chunk_ms must be positive, got {chunk_ms}")
        super().__init__()
        self._max_message_bytes = max_message_bytes
        self._chunk_bytes = chunk_ms * MULAW_BYTES_PER_MS
        self._connected = False
        self._stream_sid: str | None = None
        self._call_sid = ""
        self._stopped = False
        # Marks sent and not yet echoed, oldest first. The first ``_cleared`` of them were
        # in flight when we last sent ``clear``: a clear covers everything then in flight,
        # so cleared marks always form a prefix.
        self._marks: deque[str] = deque()
        self._cleared = 0
        # Built once at start: the JSON-encoded streamSid and the outbound message parts.
        self._sid_json = ""
        self._media_prefix = ""
        self._clear_message = ""

    # ------------------------------------------------------------------ state

    @property
    def connected(self) -> bool:
        """True once Twilio's ``connected`` message arrived."""
        return self._connected

    @property
    def started(self) -> bool:
        """True once a valid ``start`` arrived (``send`` is allowed from then on)."""
        return self._stream_sid is not None

    @property
    def stopped(self) -> bool:
        """True once ``stop`` arrived; later input is ignored and ``send`` returns ``[]``."""
        return self._stopped

    @property
    def stream_sid(self) -> str | None:
        """The started stream's streamSid (opaque: UUID in 2020, ``MZ...`` today)."""
        return self._stream_sid

    @property
    def call_sid(self) -> str:
        """The started call's CallSid, or ``""`` before ``start``."""
        return self._call_sid

    @property
    def marks_in_flight(self) -> tuple[str, ...]:
        """Names of marks sent and not yet retired, oldest first."""
        return tuple(self._marks)

    @property
    def cleared_marks(self) -> tuple[str, ...]:
        """The marks in flight that a ``clear`` dropped (a prefix of :attr:`marks_in_flight`)."""
        return tuple(self._marks)[: self._cleared]

    # ---------------------------------------------------------------- inbound

    def receive_data(self, data: bytes) -> None:
        """A binary frame: Twilio sends only TEXT frames (§1.3), so this is always fatal."""
        self._queue_events(self._binary(data))

    def receive_text(self, text: str) -> None:
        """Parse one TEXT message from Twilio into zero or more events. Never raises."""
        self._queue_events(self._parse(text))

    def receive_eof(self) -> None:
        """The socket closed without ``stop``: nothing to report (the glue ends the call)."""

    @staticmethod
    def _binary(data: bytes) -> list[InboundEvent]:
        return [
            Malformed(
                "binary_frame",
                f"{len(data)}-byte binary frame; Twilio sends text only",
                fatal=True,
                close_code=CLOSE_UNSUPPORTED_DATA,
            )
        ]

    def _parse(self, text: str) -> list[InboundEvent]:
        # Length first: refusing a huge message must not cost a parse.
        if len(text) > self._max_message_bytes:
            return [
                Malformed(
                    "message_too_large",
                    f"{len(text)} characters > {self._max_message_bytes}",
                    fatal=True,
                    close_code=CLOSE_MESSAGE_TOO_BIG,
                )
            ]
        try:
            msg = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            # orjson's message gives a position, never the input itself.
            return [Malformed("invalid_json", str(exc))]
        if type(msg) is not dict:
            return [_NOT_AN_OBJECT]
        event = msg.get("event")
        # Most frequent first: ~50 media messages a second per call.
        if event == "media":
            return self._on_media(msg)
        if self._stopped:
            return [_AFTER_STOP]
        if event == "mark":
            return self._on_mark(msg)
        if event == "dtmf":
            return self._on_dtmf(msg)
        if event == "start":
            return self._on_start(msg)
        if event == "stop":
            return self._on_stop(msg)
        if event == "connected":
            if self._connected:
                return [_DUPLICATE_CONNECTED]
            self._connected = True
            return []
        if type(event) is not str:
            return [_missing("event")]
        return [_UNKNOWN_EVENT]

    def _check_stream(self, msg: dict[str, Any]) -> Malformed | None:
        """Stream messages need a started stream; a streamSid, when present, must match.

        A missing streamSid is tolerated: one socket carries one stream.
        """
        if self._stream_sid is None:
            return _MEDIA_BEFORE_START
        sid = msg.get("streamSid")
        if sid is not None and sid != self._stream_sid:
            return _STREAM_MISMATCH
        return None

    def _on_media(self, msg: dict[str, Any]) -> list[InboundEvent]:
        if self._stopped:
            return [_AFTER_STOP]
        problem = self._check_stream(msg)
        if problem is not None:
            return [problem]
        media = msg.get("media")
        if type(media) is not dict:
            return [_missing("media")]
        # §1.3: track is "inbound" or "outbound"; with <Connect><Stream> only inbound is
        # streamed. A missing track is read as inbound (the only track we asked for).
        track = media.get("track", "inbound")
        if track != "inbound" and track != "inbound_track":
            if track == "outbound" or track == "outbound_track":
                return [_OUTBOUND_TRACK]
            return [_UNKNOWN_TRACK]
        payload = media.get("payload")
        if type(payload) is not str:
            return [_missing("media.payload")]
        try:
            # strict_mode: reject stray characters instead of silently skipping them, so
            # garbage never turns into audio. Non-ASCII text raises ValueError too.
            audio = binascii.a2b_base64(payload, strict_mode=True)
        except ValueError:
            return [_BAD_BASE64]
        size = len(audio)
        if size == 0 or size > MAX_INBOUND_PAYLOAD_BYTES:
            return [
                Malformed(
                    "bad_payload_size",
                    f"{size} bytes; accepted 1..{MAX_INBOUND_PAYLOAD_BYTES}",
                )
            ]
        return [CallerAudio(audio)]

    def _on_start(self, msg: dict[str, Any]) -> list[InboundEvent]:
        if self._stream_sid is not None:
            return [
                Malformed(
                    "second_start",
                    "a second 'start' on a started stream",
                    fatal=True,
                    close_code=CLOSE_POLICY_VIOLATION,
                )
            ]
        start = msg.get("start")
        if type(start) is not dict:
            return [_missing("start", fatal=True)]
        call_sid = start.get("callSid")
        if type(call_sid) is not str or not call_sid:
            return [_missing("start.callSid", fatal=True)]
        # streamSid appears inside start and at the top level (§1.3); either will do.
        top_sid = msg.get("streamSid")
        stream_sid = start.get("streamSid", top_sid)
        if type(stream_sid) is not str or not stream_sid:
            return [_missing("start.streamSid", fatal=True)]
        if top_sid is not None and top_sid != stream_sid:
            return [
                Malformed(
                    "stream_mismatch",
                    "start.streamSid differs from the message's streamSid",
                    fatal=True,
                    close_code=CLOSE_POLICY_VIOLATION,
                )
            ]
        media_format = start.get("mediaFormat")
        if type(media_format) is not dict:
            return [_missing("start.mediaFormat", fatal=True)]
        if not _is_mulaw_8k_mono(media_format):
            shown = orjson.dumps(media_format).decode()[:120]
            return [
                Malformed(
                    "unsupported_media_format",
                    f"mediaFormat {shown}; only {MULAW_ENCODING} 8000 Hz mono is supported",
                    fatal=True,
                    close_code=CLOSE_UNSUPPORTED_DATA,
                )
            ]

        metadata: dict[str, str] = {}
        custom = start.get("customParameters")
        if type(custom) is dict:
            for name, value in custom.items():
                # Twilio sends strings; tolerate scalars, skip containers and null.
                if type(value) is str:
                    metadata[name] = value
                elif type(value) in (int, float, bool):
                    metadata[name] = str(value)
        account_sid = start.get("accountSid")
        if type(account_sid) is str:
            metadata[META_ACCOUNT_SID] = account_sid
        metadata[META_CALL_SID] = call_sid
        metadata[META_STREAM_SID] = stream_sid
        tracks = start.get("tracks")
        if type(tracks) is list:
            metadata[META_TRACKS] = ",".join(t for t in tracks if type(t) is str)

        self._stream_sid = stream_sid
        self._call_sid = call_sid
        self._sid_json = orjson.dumps(stream_sid).decode()
        self._media_prefix = (
            '{"event":"media","streamSid":' + self._sid_json + ',"media":{"payload":"'
        )
        self._clear_message = '{"event":"clear","streamSid":' + self._sid_json + "}"
        return [
            CallStarted(
                call_id=call_sid,
                transport=Transport.TWILIO,
                audio_format=ULAW_8K,
                stream_id=stream_sid,
                metadata=metadata,
            )
        ]

    def _on_mark(self, msg: dict[str, Any]) -> list[InboundEvent]:
        problem = self._check_stream(msg)
        if problem is not None:
            return [problem]
        mark = msg.get("mark")
        name = mark.get("name") if type(mark) is dict else None
        if type(name) is not str:
            return [_missing("mark.name")]
        marks = self._marks
        try:
            position = marks.index(name)
        except ValueError:
            return [_UNKNOWN_MARK]
        # Twilio plays in order: this echo retires every older mark too (module docstring).
        cleared = self._cleared
        events: list[InboundEvent] = []
        for index in range(position + 1):
            events.append(MarkPlayed(marks.popleft(), played=index >= cleared))
        self._cleared = max(0, cleared - position - 1)
        return events

    def _on_dtmf(self, msg: dict[str, Any]) -> list[InboundEvent]:
        problem = self._check_stream(msg)
        if problem is not None:
            return [problem]
        dtmf = msg.get("dtmf")
        if type(dtmf) is not dict:
            return [_missing("dtmf")]
        # GUESSED strong (§1.3): the track is "inbound_track", unlike media's "inbound";
        # accept both spellings.
        track = dtmf.get("track", "inbound_track")
        if track == "outbound_track" or track == "outbound":
            return [_OUTBOUND_TRACK]
        if track != "inbound_track" and track != "inbound":
            return [_UNKNOWN_TRACK]
        digit = dtmf.get("digit")
        if type(digit) is not str or digit.upper() not in DTMF_DIGITS:
            return [_missing("dtmf.digit")]
        return [Dtmf(digit.upper())]

    def _on_stop(self, msg: dict[str, Any]) -> list[InboundEvent]:
        # A stop before start still ends the call: the stream is over either way.
        if self._stream_sid is not None:
            sid = msg.get("streamSid")
            if sid is not None and sid != self._stream_sid:
                return [_STREAM_MISMATCH]
        self._stopped = True
        events: list[InboundEvent] = [MarkPlayed(name, played=False) for name in self._marks]
        self._marks.clear()
        self._cleared = 0
        events.append(CallEnded("remote_hangup"))
        return events

    # --------------------------------------------------------------- outbound

    def send(self, event: OutboundEvent) -> None:
        """Queue the messages for ``event`` (see :meth:`_messages`) for ``data_to_send``."""
        messages = self._messages(event)
        if messages:
            self._queue_output(messages)

    def _messages(self, event: OutboundEvent) -> list[str]:
        """Messages to write for ``event``, in order (shapes as in §1.4).

        ``PlayAudio`` (μ-law 8 kHz bytes) becomes ``media`` messages of at most ``chunk_ms``
        each; ``SetMark`` a ``mark``; ``ClearAudio`` a ``clear``; ``Hangup`` nothing (the glue
        closes the socket, and with no TwiML after ``</Connect>`` the call ends, §1.2).
        After ``stop`` everything returns ``[]``: the stream is gone, which is a normal race.

        Raises RuntimeError before ``start`` (no streamSid yet: a programming error) and
        ValueError for a mark with an empty name.
        """
        if self._stream_sid is None:
            raise RuntimeError("TwilioMediaProtocol.send() before Twilio's 'start' message")
        if self._stopped:
            return []
        if type(event) is PlayAudio:
            return self._media_messages(event.audio)
        if type(event) is SetMark:
            if not event.name:
                raise ValueError("a Twilio mark needs a non-empty name")
            self._marks.append(event.name)
            return [
                '{"event":"mark","streamSid":'
                + self._sid_json
                + ',"mark":{"name":'
                + orjson.dumps(event.name).decode()
                + "}}"
            ]
        if type(event) is ClearAudio:
            self._cleared = len(self._marks)
            return [self._clear_message]
        if type(event) is Hangup:
            return []
        raise TypeError(f"not an outbound event: {event!r}")

    def _media_messages(self, audio: bytes) -> list[str]:
        size = len(audio)
        if size == 0:
            return []
        prefix = self._media_prefix
        chunk = self._chunk_bytes
        b2a = binascii.b2a_base64
        if size <= chunk:
            return [prefix + b2a(audio, newline=False).decode("ascii") + _MEDIA_SUFFIX]
        view = memoryview(audio)
        return [
            prefix + b2a(view[i : i + chunk], newline=False).decode("ascii") + _MEDIA_SUFFIX
            for i in range(0, size, chunk)
        ]


def _is_mulaw_8k_mono(media_format: dict[str, Any]) -> bool:
    """True for ``audio/x-mulaw`` at 8000 Hz, one channel (§1.3; ints, tolerated as strings)."""
    encoding = media_format.get("encoding")
    if type(encoding) is not str or encoding.lower() != MULAW_ENCODING:
        return False
    return _as_int(media_format.get("sampleRate")) == MULAW_SAMPLE_RATE_HZ and (
        _as_int(media_format.get("channels", 1)) == 1
    )


def _as_int(value: object) -> int | None:
    """An int, or a decimal string of one (Twilio's counters are strings; rates are ints)."""
    if type(value) is int:
        return value
    if type(value) is str and value.isascii() and value.isdigit():
        return int(value)
    return None
