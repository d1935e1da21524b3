"""Sans-I/O Asterisk AudioSocket framing (any Asterisk 18+, FreePBX).

Asterisk connects to the gateway over TCP and both sides exchange TLV messages
``[kind: u8][length: u16 big-endian][payload]`` (``include/asterisk/res_audiosocket.h``;
``docs/protocols/asterisk.md`` §3 and §7). Kinds: 0x00 hang-up, 0x01 UUID (16 raw bytes,
always first), 0x03 DTMF (one ASCII byte), 0x10..0x18 signed 16-bit little-endian PCM at
8/12/16/24/32/44.1/48/96/192 kHz, 0xFF error. Asterisk never sends 0x00 (it just closes
TCP, so EOF is the hang-up) and treats anything from us other than 0x00 or audio, or audio
of length 0, as a fatal protocol error. It neither buffers nor paces what we send: see
:mod:`gateway.telephony.pacing`.

When the call starts
--------------------
The UUID arrives first but says nothing about the audio rate; the first audio message does
(0x10 for the ``AudioSocket()`` application, which forces slin 8 kHz; ``c(slin16)`` on the
channel driver gives 0x12). In every real transcript the first audio follows the UUID
within 0.1-1 ms, so :class:`CallStarted` is emitted **on the first audio message**, with
that message's rate: the session never has to handle a format change. DTMF arriving before
it is held and delivered right after :class:`CallStarted`. If no audio ever comes (a
channel with no media), the glue calls :meth:`AudioSocketProtocol.start_default` after a
short timeout to start the call at 8 kHz (the only rate the ``AudioSocket()`` app uses).

The parser is robust to packets split anywhere: partial headers and payloads are carried
to the next :meth:`~AudioSocketProtocol.receive_data` call.

It is a :class:`~gateway.telephony.adapter.MediaAdapter` (``receive_data`` / ``receive_eof``
then ``events_received``; ``send`` then ``data_to_send``). Outbound audio has two modes:
unpaced (``send(PlayAudio)`` queues back-to-back packets, for tools and tests) and, once the
glue attached a playout queue with :meth:`~AudioSocketProtocol.attach_playout`, paced:
audio, marks and clears go to that queue and the glue's pacer takes one packet per tick
with :meth:`~AudioSocketProtocol.next_packet` (Asterisk neither buffers nor paces, §3.3).

G.711 mislabelled as slin
-------------------------
``Dial(AudioSocket/host:port/<uuid>/c(ulaw))`` (or ``c(alaw)``) makes Asterisk send the
channel's G.711 bytes under kind 0x10, which means slin 8 kHz: 160-byte payloads every 20 ms
where slin has 320. Read as PCM16 they are loud noise (μ-law's quiet codes 0x7F/0xFF are
±full scale once paired into 16-bit samples), so the caller is never understood. Asterisk
itself cuts 20 ms frames, but a 10 ms phone could legitimately give 160-byte slin packets, so a
160-byte 0x10 packet is judged by its content too: G.711 read as PCM16 has a large share of
samples beyond half scale, which telephone speech in real slin practically never has. Such
packets are reported as ``Malformed("not_slin")`` (counted, logged once by the glue) and
never reach the call as audio; after :data:`NOT_SLIN_AFTER_PACKETS` of them every 0x10 packet
of the call is. The fix is on the PBX: AudioSocket carries slin only (``c(slin)``,
``c(slin16)`` ...).
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Sequence
from typing import Final

from gateway.telephony.adapter import AdapterBuffers
from gateway.telephony.events import (
    PCM16_8K,
    AudioFormat,
    CallEnded,
    CallerAudio,
    CallStarted,
    ClearAudio,
    Dtmf,
    Encoding,
    Hangup,
    InboundEvent,
    Malformed,
    MarkPlayed,
    OutboundEvent,
    PlayAudio,
    SetMark,
    Transport,
)
from gateway.telephony.pacing import OutboundAudio

KIND_HANGUP: Final = 0x00
KIND_UUID: Final = 0x01
KIND_DTMF: Final = 0x03
KIND_SLIN8: Final = 0x10
KIND_ERROR: Final = 0xFF
# res_audiosocket.h: 0x11 is slin12 and 0x12 slin16 (an old docs PR said 0x11 = slin16;
# the merged code wins).
AUDIO_KIND_RATES: Final = {
    0x10: 8000,
    0x11: 12000,
    0x12: 16000,
    0x13: 24000,
    0x14: 32000,
    0x15: 44100,
    0x16: 48000,
    0x17: 96000,
    0x18: 192000,
}
KIND_FOR_RATE: Final = {rate: kind for kind, rate in AUDIO_KIND_RATES.items()}
HEADER: Final = struct.Struct(">BH")
HANGUP_PACKET: Final = b"\x00\x00\x00"
FRAME_MS: Final = 20
# 20 ms of slin192 is 7680 B; anything far above a few frames means a desynchronised stream.
DEFAULT_MAX_PAYLOAD: Final = 16384
VALID_DTMF: Final = frozenset(b"0123456789*#ABCD")
G711_FRAME_BYTES: Final = 160  # 20 ms of 8 kHz μ-law/A-law (slin 8 kHz is 320)
NOT_SLIN_AFTER_PACKETS: Final = 3
# High byte of a little-endian PCM16 sample in 0x40..0xBF <=> |sample| >= 16384 (half scale).
_LOUD_HIGH_BYTE: Final = bytes(1 if 0x40 <= b < 0xC0 else 0 for b in range(256))
_G711_LOUD_SHARE: Final = 4  # "G.711-looking": at least 1/4 of the samples beyond half scale
# What Asterisk accepts from us: hang-up or audio (never 0x01, 0x03, 0xFF).
_SENDABLE_KINDS: Final = frozenset({KIND_HANGUP, *AUDIO_KIND_RATES})


def _looks_like_g711(payload: bytes) -> bool:
    """True when a quarter or more of the PCM16 LE samples are beyond half scale."""
    loud = payload[1::2].translate(_LOUD_HIGH_BYTE).count(1)
    return loud * _G711_LOUD_SHARE >= len(payload) // 2


class AudioSocketProtocol(AdapterBuffers):
    """One AudioSocket connection: bytes in -> events; events -> bytes.

    ``max_payload_bytes`` bounds one message; a longer declared length is a fatal
    ``oversized_frame`` (the stream is desynchronised or hostile). ``default_format`` is the
    format used by :meth:`start_default` and for sending before any audio arrived.
    """

    def __init__(
        self,
        *,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD,
        default_format: AudioFormat = PCM16_8K,
    ) -> None:
        if default_format.encoding is not Encoding.PCM16:
            raise ValueError("AudioSocket carries PCM16 only")
        if default_format.sample_rate not in KIND_FOR_RATE:
            raise ValueError(f"no AudioSocket kind for {default_format.sample_rate} Hz")
        super().__init__()
        self._max_payload = max_payload_bytes
        self._default_format = default_format
        self._buf = bytearray()
        self.call_id = ""
        self.audio_format: AudioFormat | None = None
        self._kind = KIND_FOR_RATE[default_format.sample_rate]
        self._uuid_seen = False
        self._started = False
        self._ended = False  # CallEnded returned, or a fatal Malformed
        self._pending: list[InboundEvent] = []  # DTMF before CallStarted
        self._silence_payload: bytes | None = None
        self._silence_packet = b""
        self._silence_kind = -1
        self._g711_packets = 0  # 160-byte 0x10 packets that look like G.711 (see module doc)
        self._playout: OutboundAudio | None = None  # paced mode (attach_playout)
        self._hangup_sent = False

    @property
    def started(self) -> bool:
        return self._started

    @property
    def ended(self) -> bool:
        return self._ended

    @property
    def send_format(self) -> AudioFormat:
        """The format :meth:`frame` sends: the call's, or the default before it is known."""
        return self.audio_format or self._default_format

    # ------------------------------------------------------------------ inbound

    def receive_data(self, data: bytes) -> None:
        """Feed bytes as they arrived from TCP (any split); complete events are queued."""
        if self._ended or not data:
            return
        events: list[InboundEvent] = []
        if self._buf:
            self._buf += data
            src: bytes | bytearray = self._buf
        else:
            src = data
        size = len(src)
        offset = 0
        while size - offset >= 3 and not self._ended:
            kind, length = HEADER.unpack_from(src, offset)
            if length > self._max_payload:
                self._ended = True
                events.append(
                    Malformed("oversized_frame", f"kind 0x{kind:02x} length {length}", True)
                )
                break
            end = offset + 3 + length
            if end > size:
                break  # wait for the rest of the payload
            self._handle(kind, bytes(src[offset + 3 : end]), events)
            offset = end
        if self._ended:
            self._buf = bytearray()
        elif src is self._buf:
            del self._buf[:offset]
        elif offset < size:
            self._buf = bytearray(src[offset:])
        self._queue_events(events)

    def receive_text(self, text: str) -> None:
        """AudioSocket is a byte stream: text input is a glue bug, reported as fatal."""
        self._ended = True
        self._queue_events([Malformed("text_message", f"{len(text)} characters", True)])

    @property
    def awaiting_audio(self) -> bool:
        """The UUID came and no audio yet: the glue may :meth:`start_default` after a wait."""
        return self._uuid_seen and not self._started and not self._ended

    def start_default(self) -> None:
        """Start the call in ``default_format`` if the UUID came but no audio yet.

        For the glue's "no audio after N ms" timeout; queues nothing if there is no UUID yet
        or the call already started.
        """
        if not self.awaiting_audio:
            return
        events: list[InboundEvent] = []
        self._start(self._default_format, events)
        self._queue_events(events)

    def receive_eof(self) -> None:
        """TCP EOF: Asterisk hung up (it never sends 0x00). A cut-off message is reported."""
        if self._ended:
            return
        self._ended = True
        events: list[InboundEvent] = []
        if self._buf:
            events.append(Malformed("truncated_frame", f"{len(self._buf)} bytes at EOF"))
            self._buf = bytearray()
        events.append(CallEnded("remote_hangup"))
        self._queue_events(events)

    # ------------------------------------------------------------------ outbound

    def send(self, event: OutboundEvent) -> None:
        """Queue the wire bytes for an outbound event (one ``bytes`` message at most).

        :class:`Hangup` is ``00 00 00`` (once). Unpaced, :class:`PlayAudio` becomes
        back-to-back 20 ms audio messages and marks and clears have no wire form (no
        carrier-side buffer). Paced (:meth:`attach_playout`), audio and marks go to the
        playout queue and a :class:`ClearAudio` empties it, its marks then reported by
        :meth:`events_received` as ``MarkPlayed(played=False)``.
        """
        if isinstance(event, Hangup):
            if not self._hangup_sent:
                self._hangup_sent = True
                self._output_one(HANGUP_PACKET)
            return
        playout = self._playout
        if playout is not None:
            if isinstance(event, PlayAudio):
                playout.push(event.audio)
            elif isinstance(event, SetMark):
                playout.mark(event.name)
            elif isinstance(event, ClearAudio):
                retired: list[InboundEvent] = list(playout.clear())
                self._queue_events(retired)
            return
        if isinstance(event, PlayAudio) and event.audio:
            step = self.send_format.frame_bytes(FRAME_MS)
            audio = event.audio
            self._output_one(
                b"".join(self.frame(audio[i : i + step]) for i in range(0, len(audio), step))
            )

    # ------------------------------------------------------------------ paced playout

    def attach_playout(self, playout: OutboundAudio) -> None:
        """Switch to paced mode: outbound audio, marks and clears go to ``playout``."""
        self._playout = playout
        self.use_silence(playout.silence_frame)

    def next_packet(self) -> bytes:
        """The packet for this pacer tick: queued audio, or the cached silence packet."""
        assert self._playout is not None, "attach_playout() first"
        return self.frame(self._playout.next_frame())

    def pop_played_marks(self) -> Sequence[MarkPlayed]:
        """Marks whose audio the pacer has sent since the last call (shared ``()`` if none)."""
        assert self._playout is not None, "attach_playout() first"
        return self._playout.pop_played_marks()

    def frame(self, audio: bytes) -> bytes:
        """One audio message of the call's kind (normally one 20 ms frame, from the pacer).

        If ``audio`` is the very object registered with :meth:`use_silence`, a cached packet
        is returned, so idle ticks allocate nothing.
        """
        if audio is self._silence_payload:
            if self._silence_kind != self._kind:
                self._silence_packet = self._pack(self._kind, audio)
                self._silence_kind = self._kind
            return self._silence_packet
        return self._pack(self._kind, audio)

    def use_silence(self, payload: bytes) -> None:
        """Register the playout queue's shared silence frame for packet caching."""
        self._silence_payload = payload
        self._silence_packet = self._pack(self._kind, payload)
        self._silence_kind = self._kind

    # ------------------------------------------------------------------ internals

    @staticmethod
    def _pack(kind: int, payload: bytes) -> bytes:
        if kind not in _SENDABLE_KINDS:
            # Asterisk ends the call on any other kind from the server.
            raise ValueError(f"AudioSocket kind 0x{kind:02x} must never be sent")
        if kind != KIND_HANGUP and not 0 < len(payload) <= 0xFFFF:
            raise ValueError(f"audio payload of {len(payload)} bytes (must be 1..65535)")
        return HEADER.pack(kind, len(payload)) + payload

    def _start(self, audio_format: AudioFormat, events: list[InboundEvent]) -> None:
        self._started = True
        self.audio_format = audio_format
        self._kind = KIND_FOR_RATE[audio_format.sample_rate]
        events.append(CallStarted(self.call_id, Transport.AUDIOSOCKET, audio_format))
        events.extend(self._pending)
        self._pending.clear()

    def _handle(self, kind: int, payload: bytes, events: list[InboundEvent]) -> None:
        if not self._uuid_seen:
            if kind != KIND_UUID or len(payload) != 16:
                self._ended = True
                reason = "missing_uuid" if kind != KIND_UUID else "bad_uuid"
                events.append(Malformed(reason, f"first kind 0x{kind:02x}", fatal=True))
                return
            self._uuid_seen = True
            self.call_id = str(uuid.UUID(bytes=payload))
            return
        rate = AUDIO_KIND_RATES.get(kind)
        if rate is not None:
            if not payload:
                events.append(Malformed("empty_audio"))
                return
            if len(payload) & 1:
                events.append(Malformed("partial_sample", f"{len(payload)} bytes of PCM16"))
                return
            if not self._started:
                self._start(AudioFormat(Encoding.PCM16, rate), events)
            elif kind != self._kind:
                events.append(Malformed("format_change", f"kind 0x{kind:02x}"))
                return
            if kind == KIND_SLIN8 and (
                self._g711_packets >= NOT_SLIN_AFTER_PACKETS
                or (len(payload) == G711_FRAME_BYTES and _looks_like_g711(payload))
            ):
                self._g711_packets += 1
                events.append(
                    Malformed(
                        "not_slin",
                        "160-byte kind 0x10 packets hold G.711, not slin 8 kHz (320 B per "
                        "20 ms): AudioSocket carries slin only, dial it with c(slin)",
                    )
                )
                return
            events.append(CallerAudio(payload))
        elif kind == KIND_DTMF:
            if len(payload) != 1 or payload[0] not in VALID_DTMF:
                events.append(Malformed("bad_dtmf", payload[:4].hex()))
                return
            dtmf = Dtmf(chr(payload[0]))
            if self._started:
                events.append(dtmf)
            else:
                self._pending.append(dtmf)
        elif kind == KIND_HANGUP:
            self._ended = True
            events.append(CallEnded("remote_hangup"))
        elif kind == KIND_ERROR:
            # Defined but never sent by Asterisk; if it comes, the peer gave up on the call.
            self._ended = True
            events.append(CallEnded("remote_error"))
        elif kind == KIND_UUID:
            events.append(Malformed("duplicate_uuid"))
        else:
            events.append(Malformed("unknown_kind", f"0x{kind:02x}"))
