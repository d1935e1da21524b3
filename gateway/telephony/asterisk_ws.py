"""Sans-I/O Asterisk chan_websocket media protocol (Asterisk 20.16+, 22.6+, 23+).

Asterisk dials the gateway (``Dial(WebSocket/<connection>/c(<codec>)f(json)v(...))``) and
speaks TEXT control messages plus BINARY raw-codec media. Wire facts are from
``docs/protocols/asterisk.md`` §2 and §7 (``channels/chan_websocket.c``; real 23.4.1
transcripts in ``tests/fixtures/asterisk-23.4.1``). This module does no I/O and reads no
clock: the glue feeds it what arrived and writes what it returns.

Contract for the glue
---------------------
It is a :class:`~gateway.telephony.adapter.MediaAdapter`:

* ``receive_text(str)`` / ``receive_data(bytes)`` for each WebSocket message, then
  ``events_received()`` and ``data_to_send()``: processing input can produce wire output
  on its own (audio held during MEDIA_XOFF is released by MEDIA_XON; a renewed
  REPORT_QUEUE_DRAINED).
* ``send(event)`` for :class:`PlayAudio`, :class:`SetMark`, :class:`ClearAudio`,
  :class:`Hangup`, then ``data_to_send()``; ``flush_audio()`` at the end of an utterance.
  After :class:`ClearAudio`, ``events_received()`` holds the marks whose audio was dropped
  as ``MarkPlayed(played=False)`` (FLUSH_MEDIA discards queued markers silently).
* ``receive_eof(code)`` when the WebSocket closes: Asterisk sends **no** hang-up event, it
  just closes (code 1000 or the tech cause), so the close is the hang-up.
* Never send pings and never negotiate extensions (the handshake is the glue's job).

Design choices
--------------
* Control format: Asterisk's replies use the format it was configured with, and it parses
  our commands in that same format. With ``control_format="auto"`` we answer in whatever
  MEDIA_START used (``{`` first = JSON). Both formats are always *parsed*.
* Outbound framing: Asterisk cuts each BINARY message into ``optimal_frame_size`` frames
  and silently drops a trailing partial piece unless buffering mode is on (§7: 100-byte
  messages gave 0 s of audio). We send whole frames only and carry the remainder to the
  next :class:`PlayAudio`; ``flush_audio()`` pads the final partial frame with codec
  silence (< 1 frame, < 20 ms) rather than wrapping bursts in START/STOP_MEDIA_BUFFERING.
  Padding behaves the same on every version (STOP_MEDIA_BUFFERING pads before 23.3 and
  sends a short frame after), costs no control messages, and keeps the byte clock aligned
  to whole frames.
* Playback tracking: MARK_MEDIA / MEDIA_MARK_PROCESSED exist from 20.18 / 22.8 / 23.2, the
  same releases that brought JSON control, and plain text cannot tell 23.1 from 23.4 (both
  send ``channel_id``). So with ``mark_media=None`` marks go on the wire only when
  MEDIA_START came in JSON; otherwise a *byte clock*: :attr:`bytes_sent` counts audio bytes
  handed to the glue and each mark remembers its position. With an injected ``clock`` the
  core models Asterisk's playout: chan_websocket plays one ``optimal_frame_size`` frame per
  ``ptime`` from its queue (§2.4, §7 "re-times what it receives"), so audio sent at ``t``
  finishes at ``max(t, end of what is queued) + bytes / (frame_size / ptime)``, and a mark
  retires when that time has passed. The check runs when caller audio arrives (Asterisk
  sends a frame every 20 ms on a live line), so a mark is reported within one frame of its
  playout time rather than at the next QUEUE_DRAINED, which on a long reply comes seconds
  later (the first QUEUE_DRAINED was taken as "first frame heard": 0.3-1.4 s too late).
  REPORT_QUEUE_DRAINED still confirms every mark set before the request (an empty queue
  means all earlier audio played): the fallback when no caller audio flows, and what frees
  the in-flight budget (a model is not proof that Asterisk's queue has room). Pass
  ``mark_media=True`` when you know the PBX is new enough.
* Wire correlation ids are ours (``m1``, ``m2`` ...), mapped back to the caller's mark
  names: short, ASCII, no spaces, so every command stays far below 128 bytes.
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Callable, Collection, Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final

from gateway.telephony.adapter import AdapterBuffers
from gateway.telephony.events import (
    ALAW_8K,
    PCM16_8K,
    ULAW_8K,
    AudioFormat,
    CallEnded,
    CallerAudio,
    CallStarted,
    ClearAudio,
    Dtmf,
    Encoding,
    Hangup,
    Ignored,
    InboundEvent,
    Malformed,
    MarkPlayed,
    OutboundEvent,
    OutboundFlow,
    PlayAudio,
    PlaybackDrained,
    SetMark,
    Transport,
)
from gateway.telephony.pacing import silence

# chan_websocket.c: MAX_TEXT_MESSAGE_LEN = MIN(128, ...); a longer TEXT message is ignored
# without a reply. We keep every command strictly below it.
MAX_TEXT_COMMAND_BYTES: Final = 128
# AST_WEBSOCKET_MAX_RX_PAYLOAD_SIZE is 65535 including the frame header; a bigger message
# makes Asterisk close with 1009 and hang up (huge_binary transcript). 64000 is verified.
MAX_OUT_MESSAGE_BYTES: Final = 64000
DEFAULT_FRAMES_PER_MESSAGE: Final = 50  # one second of audio per BINARY message
# chan_websocket.c: MEDIA_XOFF at 900 queued frames, whole messages dropped at 1000. A
# MEDIA_XOFF comes back too late to stop messages already written, so we never let more
# than this many frames be in flight (sent but not known to be played).
XOFF_LEVEL_FRAMES: Final = 900
DEFAULT_MAX_QUEUED_FRAMES: Final = 800
VALID_DTMF: Final = frozenset("0123456789*#ABCD")

_EVENT_WORD = re.compile(r"[A-Z][A-Z0-9_]*")
_SLIN_RATE = re.compile(r"slin(\d+)")
_SLIN_RATES: Final = frozenset({12, 16, 24, 32, 44, 48, 96, 192})  # main/codec_builtin.c
# Numeric MEDIA_START fields: ASCII digits only. str.isdigit() also accepts '²' or '٢٠',
# which int() rejects or silently reads as 20; more than 6 digits is no real value (and
# int() refuses over 4300 digits).
_NUMBER = re.compile(r"[0-9]{1,6}")
MAX_PTIME_MS: Final = 1000
_NO_QUERY: Final[Mapping[str, str]] = MappingProxyType({})
# Events whose plain-text form is `EVENT <correlation id>` (no key:value pairs).
_ID_EVENTS: Final = frozenset({"MEDIA_MARK_PROCESSED", "MEDIA_BUFFERING_COMPLETED"})


class ControlFormat(StrEnum):
    """chan_websocket control-message format (``f()`` / ``control_message_format``)."""

    AUTO = "auto"  # answer in whatever format MEDIA_START used
    PLAIN = "plain-text"
    JSON = "json"


class Tracking(StrEnum):
    """How playback position is known."""

    MARK_MEDIA = "mark_media"  # Asterisk echoes MEDIA_MARK_PROCESSED
    BYTE_CLOCK = "byte_clock"  # bytes_sent + QUEUE_DRAINED (+ marks_reached)


def audio_format_for(codec: str) -> AudioFormat | None:
    """Map an Asterisk format name from MEDIA_START to an :class:`AudioFormat`.

    ``ulaw``, ``alaw``, ``slin`` (8 kHz) and ``slinNN`` (NN kHz; ``slin44`` = 44.1 kHz).
    chan_websocket slin is host order, little-endian on x86/ARM. Anything else (g722, opus,
    ...) returns None: the gateway does not transcode those.
    """
    if codec == "ulaw":
        return ULAW_8K
    if codec == "alaw":
        return ALAW_8K
    if codec == "slin":
        return PCM16_8K
    match = _SLIN_RATE.fullmatch(codec)
    if match is None or int(match.group(1)) not in _SLIN_RATES:
        return None
    khz = int(match.group(1))
    return AudioFormat(Encoding.PCM16, 44100 if khz == 44 else khz * 1000)


def _parse_plain_fields(rest: str) -> dict[str, str] | None:
    """Parse ``key:value key:value ...``; ``error_text`` runs to the end of the line.

    Returns None when a token is not ``key:value`` (malformed control text).
    """
    fields: dict[str, str] = {}
    pos, end_of_text = 0, len(rest)
    while pos < end_of_text:
        if rest[pos] == " ":
            pos += 1
            continue
        end = rest.find(" ", pos)
        if end < 0:
            end = end_of_text
        key, sep, value = rest[pos:end].partition(":")
        if not sep or not key:
            return None
        if key == "error_text":
            # Values have no spaces except error_text, which may also end in "\n" (§2.5).
            fields[key] = rest[pos + len(key) + 1 :].strip()
            break
        fields[key] = value
        pos = end
    return fields


def _number(text: str | None) -> int | None:
    """A non-negative ASCII decimal of at most 6 digits, else None (never raises)."""
    if text is None or _NUMBER.fullmatch(text) is None:
        return None
    return int(text)


def _utf8(value: str) -> bool:
    """True if ``value`` can be sent on (JSON ``\\udc80`` escapes give lone surrogates)."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _field(fields: Mapping[str, Any], key: str) -> str | None:
    """A field as a string (JSON numbers become strings), or None if absent/unusable."""
    value = fields.get(key)
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


class AsteriskWsProtocol(AdapterBuffers):
    """One chan_websocket call: control text and media in, events out; events in, wire out.

    ``query`` holds the upgrade request's query parameters (from ``v()``, chosen per call by
    the dialplan): they become :attr:`CallStarted.metadata`. JSON MEDIA_START also carries
    ``channel_variables``: *every* variable on the channel, inherited ones included
    (``__CALLNAME``, ``DIALEDPEERNUMBER`` ...), so only names in ``forward_variables`` are
    added to the metadata (an allow-list; ``v()`` parameters are never among them: they
    arrive in the query string, not as channel variables). ``max_message_bytes`` bounds
    inbound messages. ``control_format`` picks the format of our commands (default: the one
    MEDIA_START used). ``mark_media`` forces MARK_MEDIA tracking on or off (None: on iff
    JSON control, see the module docstring). ``frames_per_message`` caps BINARY messages.
    ``clock`` (seconds, monotonic; injected by the glue, tests pass a fake) enables the
    byte-clock playout model; without it byte-clock marks retire on QUEUE_DRAINED only.
    """

    def __init__(
        self,
        *,
        query: Mapping[str, str] = _NO_QUERY,
        max_message_bytes: int = 65536,
        control_format: ControlFormat | str = ControlFormat.AUTO,
        mark_media: bool | None = None,
        frames_per_message: int = DEFAULT_FRAMES_PER_MESSAGE,
        max_queued_frames: int = DEFAULT_MAX_QUEUED_FRAMES,
        forward_variables: Collection[str] = (),
        clock: Callable[[], float] | None = None,
    ) -> None:
        if max_message_bytes <= 0 or frames_per_message <= 0:
            raise ValueError("max_message_bytes and frames_per_message must be positive")
        if not 2 * frames_per_message <= max_queued_frames < XOFF_LEVEL_FRAMES:
            raise ValueError("need 2 * frames_per_message <= max_queued_frames < 900")
        super().__init__()
        self._query = dict(query)
        self._forward = frozenset(forward_variables)
        self._clock = clock
        self._max_in = max_message_bytes
        self._format_pref = ControlFormat(control_format)
        self._mark_media_pref = mark_media
        self._frames_per_message = frames_per_message
        self._max_queued_frames = max_queued_frames
        # A progress mark every quarter budget (at most 2 s): its echo frees budget.
        self._checkpoint_frames = min(100, max_queued_frames // 4)
        self._json = self._format_pref is ControlFormat.JSON
        # Set by MEDIA_START.
        self.call_id = ""
        self.audio_format: AudioFormat | None = None
        self.frame_size = 0
        self.ptime_ms = 20
        self.tracking = Tracking.BYTE_CLOCK
        self.has_channel_id = False  # MEDIA_START carried channel_id: >= 20.17 / 22.7 / 23.1
        self._started = False
        self._pcm16 = False
        self._dead = False  # a fatal Malformed was returned
        self._ended = False  # receive_eof() reported CallEnded
        self._hangup_sent = False
        # Outbound state.
        self._carry = b""  # partial frame waiting for more audio
        self._silence_frame = b""
        self.bytes_sent = 0  # audio bytes handed to the glue (whole frames only)
        self._bytes_accepted = 0  # bytes_sent + audio held back
        self._confirmed = 0  # bytes of bytes_sent known to have left Asterisk's queue
        self._budget = 0  # max bytes in flight (set from max_queued_frames at MEDIA_START)
        self._checkpoint_bytes = 0
        self._next_checkpoint = 0
        self._xoff = False
        self._paused = False
        self._held: deque[str | bytes] = deque()  # ordered media/markers held back
        self._outbox: list[str | bytes] = []  # output produced while processing input
        self._next_mark = 0
        self._wire_marks: dict[str, str] = {}  # wire correlation id -> mark name
        self._progress: dict[str, int] = {}  # internal progress mark id -> byte position
        self._clock_marks: list[tuple[int, str]] = []  # (position in bytes, name)
        self._drain_sent_at: int | None = None  # bytes_sent when REPORT_QUEUE_DRAINED went out
        # Byte-clock playout model (only with a clock): when the audio sent so far will
        # have played, and Asterisk's playout rate in bytes per second.
        self._play_end = 0.0
        self._byte_rate = 0.0

    # ------------------------------------------------------------------ state

    @property
    def started(self) -> bool:
        return self._started

    @property
    def flow_paused(self) -> bool:
        """True between MEDIA_XOFF and MEDIA_XON (audio is held, not sent)."""
        return self._xoff

    @property
    def control_format(self) -> ControlFormat:
        """The format our commands use (plain text until MEDIA_START says otherwise)."""
        return ControlFormat.JSON if self._json else ControlFormat.PLAIN

    @property
    def pending_marks(self) -> int:
        return len(self._wire_marks) + len(self._clock_marks)

    # ------------------------------------------------------------------ inbound

    def receive_text(self, text: str) -> None:
        """Parse one TEXT message (either control format) into events."""
        self._queue_events(self._parse_text(text))
        if self._outbox:
            self._queue_output(self._outbox)
            self._outbox = []

    def _parse_text(self, text: str) -> list[InboundEvent]:
        if self._dead or self._ended:
            return []
        # surrogatepass: a str from another glue may hold lone surrogates; never raise here.
        if len(text) > self._max_in or len(text.encode("utf-8", "surrogatepass")) > self._max_in:
            return [Malformed("oversized_message", f"{len(text)} chars")]
        stripped = text.strip()
        if not stripped:
            return [Malformed("bad_control", "empty text message")]
        is_json = stripped[0] == "{"
        fields: Mapping[str, Any] | None
        if is_json:
            try:
                obj = json.loads(stripped)
            except ValueError:
                return [Malformed("bad_json", stripped[:80])]
            except RecursionError:
                # A few thousand nested brackets fit in one message and exhaust the C
                # parser's recursion limit. Asterisk's JSON is at most two levels deep.
                return [Malformed("bad_json", "nested too deeply")]
            event = obj.get("event") if isinstance(obj, dict) else None
            if not isinstance(event, str) or not event:
                return [Malformed("bad_control", "JSON without an event name")]
            fields = obj
        else:
            event, _, rest = stripped.partition(" ")
            if not _EVENT_WORD.fullmatch(event):
                return [Malformed("bad_control", stripped[:80])]
            if event in _ID_EVENTS:
                fields = self._id_event_fields(rest.strip())
            else:
                fields = _parse_plain_fields(rest)
                if fields is None:
                    return [Malformed("bad_control", stripped[:80])]
        if event == "MEDIA_START":
            return self._on_media_start(fields, is_json)
        if not self._started:
            return [Malformed("before_start", event)]
        return self._on_event(event, fields)

    def receive_data(self, data: bytes) -> None:
        """One BINARY message: one frame of caller audio in the negotiated codec.

        A short last piece of a prompt (e.g. 12 B of ulaw) is real audio and passes through.
        """
        if self._dead or self._ended:
            return
        if not self._started:
            self._queue_events([Malformed("audio_before_start", f"{len(data)} bytes")])
            return
        size = len(data)
        if size == 0:
            self._queue_events([Ignored("empty_audio")])
        elif size > self._max_in:
            self._queue_events([Malformed("oversized_message", f"{size} bytes")])
        elif size & 1 and self._pcm16:
            self._queue_events([Malformed("partial_sample", f"{size} bytes of PCM16")])
        elif self._clock_marks and self._byte_rate and not self._paused:
            # Byte clock: caller audio arrives every ptime on a live line, so the marks whose
            # audio has played by now retire here (within one frame of their playout time).
            played = self.marks_reached(self._played_estimate())
            self._queue_events([CallerAudio(data), *played])
        else:
            self._queue_events([CallerAudio(data)])

    def receive_eof(self, code: int | None = None) -> None:
        """The WebSocket closed (Asterisk sends no hang-up event, the close *is* the hang-up).

        Queues one :class:`CallEnded` (then nothing on later calls). Reason tokens:
        ``local_hangup`` (we sent HANGUP first), ``remote_hangup`` (1000/1001/no code),
        ``message_too_big`` (1009: we sent an oversized message), ``remote_error``.
        """
        if self._ended:
            return
        self._ended = True
        if self._hangup_sent:
            reason = "local_hangup"
        elif code in (None, 1000, 1001):
            reason = "remote_hangup"
        elif code == 1009:
            reason = "message_too_big"
        else:
            reason = "remote_error"
        self._queue_events([CallEnded(reason)])

    # ------------------------------------------------------------------ outbound

    def send(self, event: OutboundEvent) -> None:
        """Queue the wire output (TEXT as ``str``, BINARY as ``bytes``) for one event.

        Raises RuntimeError for audio or a mark before MEDIA_START (a programming error).
        """
        if self._hangup_sent or self._ended or self._dead:
            return
        out: list[str | bytes] = []
        if isinstance(event, Hangup):
            self._hangup_sent = True
            out.append(self._command("HANGUP"))
        elif not self._started:
            if isinstance(event, ClearAudio):
                return
            raise RuntimeError(f"{type(event).__name__} before MEDIA_START")
        elif isinstance(event, PlayAudio):
            self._play(event.audio, out)
        elif isinstance(event, SetMark):
            self._mark(event.name, out)
        elif isinstance(event, ClearAudio):
            self._clear(out)
        self._queue_output(out)

    def flush_audio(self) -> None:
        """Queue the carried partial frame, padded with codec silence to a whole frame."""
        out: list[str | bytes] = []
        if self._started and not (self._hangup_sent or self._ended or self._dead):
            self._flush_carry(out)
        self._queue_output(out)

    def marks_reached(self, played_bytes: int) -> list[MarkPlayed]:
        """Byte clock: retire marks whose position is at or before ``played_bytes``.

        ``played_bytes`` is the glue's estimate of how much of :attr:`bytes_sent` Asterisk
        has played (it plays one ``frame_size`` frame per ``ptime_ms`` from its queue).
        """
        done: list[MarkPlayed] = []
        while self._clock_marks and self._clock_marks[0][0] <= played_bytes:
            done.append(MarkPlayed(self._clock_marks.pop(0)[1], played=True))
        return done

    def _played_estimate(self) -> int:
        """Bytes of :attr:`bytes_sent` Asterisk has played by now (byte-clock model)."""
        assert self._clock is not None
        queued_seconds = self._play_end - self._clock()
        if queued_seconds <= 0.0:
            return self.bytes_sent
        return self.bytes_sent - int(queued_seconds * self._byte_rate + 0.5)

    def answer(self) -> None:
        """Queue ANSWER: needed only when the dial string had the ``n`` (no auto-answer) option."""
        self._output_one(self._command("ANSWER"))

    def pause_media(self) -> None:
        """Queue PAUSE_MEDIA: Asterisk plays silence and keeps its queue."""
        self._paused = True
        self._output_one(self._command("PAUSE_MEDIA"))

    def continue_media(self) -> None:
        """Queue CONTINUE_MEDIA."""
        self._paused = False
        self._output_one(self._command("CONTINUE_MEDIA"))

    # ------------------------------------------------------------------ internals

    @staticmethod
    def _id_event_fields(rest: str) -> dict[str, str]:
        # `MEDIA_MARK_PROCESSED m1`: the id is everything after the first space (the
        # command's argument is echoed verbatim). Tolerate a key:value form too, in case a
        # later release aligns these events with the others (GUESSED; not seen on 23.4.1).
        if rest.startswith("correlation_id:"):
            parsed = _parse_plain_fields(rest)
            if parsed is not None:
                return parsed
        return {"correlation_id": rest}

    def _on_media_start(self, fields: Mapping[str, Any], is_json: bool) -> list[InboundEvent]:
        if self._started:
            return [Malformed("duplicate_start")]
        codec = _field(fields, "format") or ""
        audio_format = audio_format_for(codec)
        if audio_format is None:
            self._dead = True
            return [Malformed("unsupported_codec", codec[:40], fatal=True, close_code=1003)]
        events: list[InboundEvent] = []
        ptime = _field(fields, "ptime")
        ptime_ms = _number(ptime) if ptime is not None else 20
        if ptime_ms is None or not 0 < ptime_ms <= MAX_PTIME_MS:
            # Not fatal: Asterisk's ptime is 20 ms for every format it offers us.
            events.append(Malformed("bad_media_start", f"ptime={ptime!r:.40}"))
            ptime_ms = 20
        size_text = _field(fields, "optimal_frame_size")
        if size_text is None:
            frame_size = audio_format.frame_bytes(ptime_ms)
        else:
            frame_size = _number(size_text) or -1
        bad_size = not 0 < frame_size <= MAX_OUT_MESSAGE_BYTES
        if bad_size or frame_size % audio_format.bytes_per_sample:
            self._dead = True
            detail = f"optimal_frame_size={size_text!r:.40}"
            return [Malformed("bad_media_start", detail, fatal=True)]
        channel_id = _field(fields, "channel_id")
        channel = _field(fields, "channel") or ""
        connection_id = _field(fields, "connection_id") or ""
        # channel_id (uniqueid) from 20.17/22.7/23.1; older releases: the channel name is
        # unique per live channel, the connection id is the shared websocket_client.conf
        # section name for outgoing calls.
        call_id = channel_id or channel or connection_id
        if not call_id:
            self._dead = True
            return [Malformed("bad_media_start", "no channel_id/channel/connection_id", True)]

        metadata: dict[str, str] = {}
        variables = fields.get("channel_variables") if is_json else None
        if isinstance(variables, dict) and self._forward:
            # Allow-list only: the channel's inherited variables are not the agent's business.
            metadata.update(
                (k, v)
                for k, v in variables.items()
                if k in self._forward and isinstance(v, str) and _utf8(v)
            )
        metadata.update(self._query)  # v() parameters, chosen per call by the dialplan
        if connection_id:
            metadata["connection_id"] = connection_id
        if channel:
            metadata["channel"] = channel

        self._started = True
        self.call_id = call_id
        self.has_channel_id = channel_id is not None
        self.audio_format = audio_format
        self._pcm16 = audio_format.encoding is Encoding.PCM16
        self.frame_size = frame_size
        self.ptime_ms = ptime_ms
        self._silence_frame = silence(audio_format, frame_size)
        self._budget = self._max_queued_frames * frame_size
        self._checkpoint_bytes = self._checkpoint_frames * frame_size
        self._next_checkpoint = self._checkpoint_bytes
        if self._clock is not None:
            self._byte_rate = frame_size * 1000.0 / ptime_ms
        if self._format_pref is ControlFormat.AUTO:
            self._json = is_json
        use_marks = is_json if self._mark_media_pref is None else self._mark_media_pref
        self.tracking = Tracking.MARK_MEDIA if use_marks else Tracking.BYTE_CLOCK
        # A non-fatal Malformed goes first, so a driver waiting for CallStarted counts it.
        events.append(
            CallStarted(
                call_id=call_id,
                transport=Transport.ASTERISK_WS,
                audio_format=audio_format,
                stream_id=channel,
                metadata=metadata,
            )
        )
        return events

    def _on_event(self, event: str, fields: Mapping[str, Any]) -> list[InboundEvent]:
        if event == "DTMF_END":
            digit = _field(fields, "digit")
            if digit is None or digit not in VALID_DTMF:
                return [Malformed("bad_dtmf", repr(digit)[:20])]
            return [Dtmf(digit)]
        if event == "MEDIA_MARK_PROCESSED":
            wire_id = _field(fields, "correlation_id") or ""
            position = self._progress.pop(wire_id, None)
            if position is not None:
                # Our own progress mark: its audio left the queue, budget frees up.
                self._confirmed = max(self._confirmed, position)
                self._release(self._outbox)
                return []
            name = self._wire_marks.pop(wire_id, None)
            if name is None:
                # Not ours, or retired by a ClearAudio whose FLUSH_MEDIA crossed the echo.
                return [Ignored("unknown_mark")]
            return [MarkPlayed(name, played=True)]
        if event == "QUEUE_DRAINED":
            return self._on_drained()
        if event == "MEDIA_XOFF":
            self._xoff = True
            return [OutboundFlow(paused=True)]
        if event == "MEDIA_XON":
            self._xoff = False
            self._release(self._outbox)
            return [OutboundFlow(paused=False)]
        if event == "ERROR":
            # Asterisk rejected one of our commands; not fatal, logged with its text.
            # Strip a trailing "\n": some SET_MEDIA_DIRECTION errors carry one (§2.5).
            error_text = (_field(fields, "error_text") or "").strip()
            return [Malformed("asterisk_error", error_text[:120])]
        if event == "STATUS":
            return [Ignored("status")]
        if event == "MEDIA_BUFFERING_COMPLETED":
            return [Ignored("buffering_completed")]
        # An unknown event is forward-compatible noise (newer releases add events).
        return [Ignored("unknown_event")]

    def _on_drained(self) -> list[InboundEvent]:
        events: list[InboundEvent] = []
        if self.tracking is Tracking.BYTE_CLOCK:
            sent_at = self._drain_sent_at
            self._drain_sent_at = None
            if sent_at is not None:
                # The queue was empty after our request arrived, so every byte sent before
                # the request has played (or was flushed). Later marks need a new request.
                self._confirmed = max(self._confirmed, sent_at)
                events.extend(self.marks_reached(sent_at))
            self._release(self._outbox)
            if self._clock_marks:
                self._request_drain(self._outbox)
        events.append(PlaybackDrained())
        return events

    def _in_flight_ok(self, nbytes: int) -> bool:
        return self.bytes_sent - self._confirmed + nbytes <= self._budget

    def _emit_media(self, item: str | bytes, out: list[str | bytes]) -> None:
        """Audio and markers keep their order; held back during MEDIA_XOFF or over budget."""
        if (
            self._held
            or self._xoff
            or (isinstance(item, bytes) and not self._in_flight_ok(len(item)))
        ):
            self._held.append(item)
            if not self._xoff and self.tracking is Tracking.BYTE_CLOCK:
                self._request_drain(out)  # the only progress report old releases give
            return
        self._put(item, out)

    def _put(self, item: str | bytes, out: list[str | bytes]) -> None:
        out.append(item)
        if not isinstance(item, bytes):
            return
        self.bytes_sent += len(item)
        if self._byte_rate:
            # Playout model: this audio starts when what is queued ahead of it has played.
            now = self._clock() if self._clock is not None else 0.0
            start = self._play_end if self._play_end > now else now
            self._play_end = start + len(item) / self._byte_rate
        if self.tracking is Tracking.MARK_MEDIA and self.bytes_sent >= self._next_checkpoint:
            self._next_checkpoint = self.bytes_sent + self._checkpoint_bytes
            self._next_mark += 1
            wire_id = f"q{self._next_mark}"
            self._progress[wire_id] = self.bytes_sent
            out.append(self._command("MARK_MEDIA", wire_id))

    def _release(self, out: list[str | bytes]) -> None:
        """Send held items, in order, while flow and the in-flight budget allow."""
        held = self._held
        while held and not self._xoff:
            item = held[0]
            if isinstance(item, bytes) and not self._in_flight_ok(len(item)):
                if self.tracking is Tracking.BYTE_CLOCK:
                    self._request_drain(out)
                return
            held.popleft()
            self._put(item, out)

    def _request_drain(self, out: list[str | bytes]) -> None:
        if self._drain_sent_at is None:
            self._drain_sent_at = self.bytes_sent
            out.append(self._command("REPORT_QUEUE_DRAINED"))

    def _play(self, audio: bytes, out: list[str | bytes]) -> None:
        if not audio:
            return
        fs = self.frame_size
        if self._carry:
            audio = self._carry + audio
        whole = len(audio) - len(audio) % fs
        self._carry = audio[whole:]
        if not whole:
            return
        self._bytes_accepted += whole
        step = fs * min(self._frames_per_message, MAX_OUT_MESSAGE_BYTES // fs)
        if whole == len(audio) and whole <= step:
            self._emit_media(audio, out)  # the common case: no copy
            return
        view = memoryview(audio)
        for offset in range(0, whole, step):
            self._emit_media(bytes(view[offset : min(offset + step, whole)]), out)

    def _flush_carry(self, out: list[str | bytes]) -> None:
        if self._carry:
            frame = self._carry + self._silence_frame[len(self._carry) :]
            self._carry = b""
            self._bytes_accepted += len(frame)
            self._emit_media(frame, out)

    def _mark(self, name: str, out: list[str | bytes]) -> None:
        self._flush_carry(out)  # a mark covers everything queued so far
        if self.tracking is Tracking.MARK_MEDIA:
            self._next_mark += 1
            wire_id = f"m{self._next_mark}"
            self._wire_marks[wire_id] = name
            self._emit_media(self._command("MARK_MEDIA", wire_id), out)
            return
        self._clock_marks.append((self._bytes_accepted, name))
        self._request_drain(out)

    def _clear(self, out: list[str | bytes]) -> None:
        self._carry = b""
        self._held.clear()
        self._bytes_accepted = self._confirmed = self.bytes_sent
        self._progress.clear()  # flushed markers are never echoed
        self._next_checkpoint = self.bytes_sent + self._checkpoint_bytes
        # FLUSH_MEDIA silently drops queued MARK_MEDIA markers (chan_websocket.c
        # handle_command), so retire them here; it does not clear the paused state, so
        # CONTINUE_MEDIA if we paused; REPORT_QUEUE_DRAINED confirms the queue is empty.
        retired: list[InboundEvent] = [
            MarkPlayed(name, played=False) for name in self._wire_marks.values()
        ]
        retired.extend(MarkPlayed(name, played=False) for _, name in self._clock_marks)
        self._queue_events(retired)
        self._wire_marks.clear()
        self._clock_marks.clear()
        self._play_end = 0.0  # FLUSH_MEDIA empties Asterisk's queue: nothing left to play
        out.append(self._command("FLUSH_MEDIA"))
        if self._paused:
            self._paused = False
            out.append(self._command("CONTINUE_MEDIA"))
        out.append(self._command("REPORT_QUEUE_DRAINED"))
        self._drain_sent_at = self.bytes_sent

    def _command(self, name: str, argument: str | None = None) -> str:
        """One control command in the call's format, checked against the 128-byte limit."""
        if self._json:
            body: dict[str, str] = {"command": name}
            if argument is not None:
                body["correlation_id"] = argument
            text = json.dumps(body, separators=(",", ":"))
        else:
            text = name if argument is None else f"{name} {argument}"
        if len(text.encode()) >= MAX_TEXT_COMMAND_BYTES:
            raise ValueError(f"TEXT command of {len(text)} bytes: Asterisk would ignore it")
        return text
