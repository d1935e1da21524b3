"""RIFF/WAVE: build canonical headers, parse leniently, strip headers from audio streams.

References: Microsoft "Multimedia Programming Interface and Data Specifications 1.0" (1991),
RIFF chunks (4-byte id, 4-byte little-endian size, body, one pad byte after an odd-sized
body) and the WAVE ``fmt `` chunk (WAVEFORMAT / WAVEFORMATEX / WAVEFORMATEXTENSIBLE).

Hamsa needs and sends WAV in inconsistent ways (``docs/protocols/hamsa.md``):

* STT takes whole WAV files only ("Only WAV files are supported" for raw PCM, §2.4, §4):
  ``build_wav``.
* TTS over REST ``tts-stream`` and the realtime WebSocket may or may not start with a RIFF
  header, with RIFF size 0xFFFFFFFF when it does (§1.4, §2.3; GUESSED which one you get):
  ``RiffStripper`` accepts both readings, ``parse_wav`` treats 0 and 0xFFFFFFFF sizes as
  "to the end".
"""

import struct
from dataclasses import dataclass
from typing import Final

from telecodecs.constants import PCM16_WIDTH, SAMPLE_RATE_16K

__all__ = [
    "WAVE_FORMAT_ALAW",
    "WAVE_FORMAT_MULAW",
    "WAVE_FORMAT_PCM",
    "RiffStripper",
    "WavAudio",
    "WavError",
    "build_wav",
    "parse_wav",
]

WAVE_FORMAT_PCM: Final = 0x0001
WAVE_FORMAT_ALAW: Final = 0x0006
WAVE_FORMAT_MULAW: Final = 0x0007
_WAVE_FORMAT_EXTENSIBLE: Final = 0xFFFE
_SUPPORTED_FORMATS: Final = frozenset({WAVE_FORMAT_PCM, WAVE_FORMAT_ALAW, WAVE_FORMAT_MULAW})

# Sizes streaming writers put in the RIFF and data headers when the length is unknown.
_SIZE_UNKNOWN: Final = frozenset({0, 0xFFFFFFFF})

_RIFF_HEADER: Final = struct.Struct("<4sI4s")  # "RIFF", size, "WAVE"
_CHUNK_HEADER: Final = struct.Struct("<4sI")
_FMT: Final = struct.Struct("<HHIIHH")  # tag, channels, rate, byte rate, block align, bits
_CANONICAL: Final = struct.Struct("<4sI4s4sIHHIIHH4sI")
_MAX_FMT_BYTES: Final = 1024  # WAVEFORMATEXTENSIBLE is 40; anything far larger is garbage.


class WavError(ValueError):
    """The bytes are not a WAV file this module can read; the message says why."""


@dataclass(frozen=True, slots=True)
class WavAudio:
    """Format and sample bytes of a WAV file.

    ``audio`` is the data chunk, trimmed to whole frames (``sample_width * channels``).
    ``format_tag`` is ``WAVE_FORMAT_PCM`` (signed LE; 8-bit is unsigned per the spec),
    ``WAVE_FORMAT_MULAW`` or ``WAVE_FORMAT_ALAW`` (extensible headers are resolved to these).
    """

    sample_rate: int
    channels: int
    sample_width: int
    audio: bytes
    format_tag: int = WAVE_FORMAT_PCM


def build_wav(pcm: bytes, sample_rate: int = SAMPLE_RATE_16K, channels: int = 1) -> bytes:
    """Wrap PCM16 LE samples in a canonical 44-byte WAV header.

    Raises ``ValueError`` if ``pcm`` is not a whole number of frames (2 bytes x channels) or
    a parameter is not positive.
    """
    if sample_rate <= 0 or channels <= 0:
        raise ValueError(f"sample_rate and channels must be positive: {sample_rate}, {channels}")
    block_align = PCM16_WIDTH * channels
    if len(pcm) % block_align:
        raise ValueError(
            f"PCM16 data of {len(pcm)} bytes is not a whole number of {block_align}-byte frames"
        )
    header = _CANONICAL.pack(
        b"RIFF",
        36 + len(pcm),
        b"WAVE",
        b"fmt ",
        16,
        WAVE_FORMAT_PCM,
        channels,
        sample_rate,
        sample_rate * block_align,
        block_align,
        PCM16_WIDTH * 8,
        b"data",
        len(pcm),
    )
    return header + pcm


def _parse_fmt(body: bytes) -> tuple[int, int, int, int]:
    """Return (format_tag, channels, sample_rate, sample_width) from a fmt chunk body."""
    if len(body) < _FMT.size:
        raise WavError(f"fmt chunk too short: {len(body)} bytes, need {_FMT.size}")
    fields: tuple[int, int, int, int, int, int] = _FMT.unpack_from(body)
    tag, channels, rate, _byte_rate, _block_align, bits = fields
    if tag == _WAVE_FORMAT_EXTENSIBLE:
        # WAVEFORMATEXTENSIBLE: cbSize(2) validBits(2) channelMask(4) SubFormat GUID(16) whose
        # first two bytes are the plain format tag.
        if len(body) < 26:
            raise WavError("WAVE_FORMAT_EXTENSIBLE fmt chunk has no SubFormat")
        (tag,) = struct.unpack_from("<H", body, 24)
    if tag not in _SUPPORTED_FORMATS:
        raise WavError(f"unsupported WAV format tag 0x{tag:04x} (PCM, mu-law, A-law only)")
    if channels < 1 or rate < 1:
        raise WavError(f"invalid WAV format: {channels} channels at {rate} Hz")
    if bits < 1 or bits % 8:
        raise WavError(f"unsupported bits per sample: {bits}")
    return tag, channels, rate, bits // 8


def _parse_riff_header(data: bytes) -> int:
    """Check the 12-byte RIFF/WAVE header; return the end offset of the RIFF body."""
    if len(data) < _RIFF_HEADER.size:
        raise WavError(f"too short for a WAV file: {len(data)} bytes")
    fields: tuple[bytes, int, bytes] = _RIFF_HEADER.unpack_from(data)
    magic, riff_size, form = fields
    if magic != b"RIFF":
        raise WavError(f"not a RIFF file (starts with {magic!r})")
    if form != b"WAVE":
        raise WavError(f"RIFF form is {form!r}, not b'WAVE'")
    if riff_size in _SIZE_UNKNOWN:
        return len(data)
    return min(len(data), 8 + riff_size)


def parse_wav(data: bytes) -> WavAudio:
    """Parse a WAV file leniently.

    Accepted: RIFF or data sizes of 0 or 0xFFFFFFFF ("to the end", as streaming writers
    leave them), a data chunk claiming more bytes than present (truncated to what is there),
    unknown chunks (LIST, fact, ...) skipped with their odd-size pad byte, trailing bytes
    after the RIFF body. Raises ``WavError`` for anything else: no RIFF/WAVE magic, a
    missing or unsupported ``fmt `` chunk, no data chunk.
    """
    end = _parse_riff_header(data)
    offset = _RIFF_HEADER.size
    fmt: tuple[int, int, int, int] | None = None
    while offset + _CHUNK_HEADER.size <= end:
        chunk_id, size = _CHUNK_HEADER.unpack_from(data, offset)
        body = offset + _CHUNK_HEADER.size
        if chunk_id == b"fmt ":
            fmt = _parse_fmt(data[body : min(body + size, end)])
        elif chunk_id == b"data":
            if fmt is None:
                raise WavError("data chunk before fmt chunk")
            tag, channels, rate, width = fmt
            stop = end if size in _SIZE_UNKNOWN else min(body + size, end)
            block = width * channels
            stop -= (stop - body) % block
            return WavAudio(rate, channels, width, data[body:stop], tag)
        offset = body + size + (size & 1)
    if fmt is None:
        raise WavError("no fmt chunk")
    raise WavError("no data chunk")


class RiffStripper:
    """Remove an optional RIFF/WAVE header from the start of an audio stream.

    Hamsa TTS streams sometimes start with a header and sometimes are raw samples (hamsa.md
    §1.4 and §2.3: the docs contradict themselves and measurements differ), so both are
    accepted. Use one instance per audio stream (per TTS response).

    ``feed`` returns audio bytes only, always a whole number of ``sample_width`` samples
    (the remainder is carried). At stream start it buffers until it can decide: at most 12
    bytes to rule a header out (``RIFF`` + size + ``WAVE``); if there is a header, chunks
    are skipped until the ``data`` chunk starts, however the header is split. ``wav_format``
    holds the header's format (``audio`` empty) once parsed, and stays ``None`` for raw
    streams or a header whose fmt chunk is unreadable. A data chunk with a real size (not 0
    or 0xFFFFFFFF) ends the audio: bytes after it (trailing LIST chunks) are dropped.
    The ``sample_width`` given here is what alignment uses, whatever the header says.
    """

    __slots__ = (
        "_buffer",
        "_data_left",
        "_fmt_size",
        "_sample_width",
        "_skip",
        "_state",
        "wav_format",
    )

    # States: sniffing the RIFF/WAVE magic, reading chunk headers, reading the fmt body,
    # skipping an unknown chunk body, passing audio through, dropping what follows the data.
    _SNIFF: Final = 0
    _CHUNK: Final = 1
    _FMT_BODY: Final = 2
    _SKIP: Final = 3
    _AUDIO: Final = 4
    _DONE: Final = 5

    def __init__(self, sample_width: int = PCM16_WIDTH) -> None:
        if sample_width <= 0:
            raise ValueError(f"sample_width must be positive, got {sample_width}")
        self._sample_width = sample_width
        self._state = self._SNIFF
        self._buffer = bytearray()
        self._skip = 0
        self._fmt_size = 0
        self._data_left: int | None = None  # None: audio runs to the end of the stream
        self.wav_format: WavAudio | None = None

    def feed(self, chunk: bytes) -> bytes:
        """Add a chunk of the stream; return the whole samples of audio it completes."""
        if (
            self._state == self._AUDIO
            and not self._buffer
            and self._data_left is None
            and len(chunk) % self._sample_width == 0
        ):
            return chunk  # hot path: past the header, nothing carried, whole samples
        if self._state == self._DONE:
            return b""
        self._buffer += chunk
        if self._state != self._AUDIO:
            self._parse_header()
            if self._state != self._AUDIO:
                return b""
        return self._take_audio()

    def flush(self) -> bytes:
        """End of stream: return remaining whole samples; a partial sample is dropped.

        A stream that ended before its first 12 bytes could be classified is audio if it
        does not match the start of ``RIFF....WAVE``; an unfinished header yields nothing.
        """
        if self._state == self._SNIFF and not self._could_be_header():
            self._state = self._AUDIO
        out = self._take_audio() if self._state == self._AUDIO else b""
        self._buffer.clear()
        return out

    def _take_audio(self) -> bytes:
        buffer = self._buffer
        usable = len(buffer)
        if self._data_left is not None:
            usable = min(usable, self._data_left)
        usable -= usable % self._sample_width
        out = bytes(buffer[:usable])
        del buffer[:usable]
        if self._data_left is not None:
            self._data_left -= usable
            if self._data_left < self._sample_width:
                self._state = self._DONE
                buffer.clear()
        return out

    def _could_be_header(self) -> bool:
        head = bytes(self._buffer[:12])
        if head[:4] != b"RIFF"[: len(head[:4])]:
            return False
        return len(head) <= 8 or head[8:] == b"WAVE"[: len(head) - 8]

    def _parse_header(self) -> None:
        """Advance the header state machine over the buffer as far as it goes."""
        buffer = self._buffer
        while True:
            state = self._state
            if state == self._SNIFF:
                if not self._could_be_header():
                    self._state = self._AUDIO
                    return
                if len(buffer) < _RIFF_HEADER.size:
                    return
                del buffer[: _RIFF_HEADER.size]
                self._state = self._CHUNK
            elif state == self._CHUNK:
                if len(buffer) < _CHUNK_HEADER.size:
                    return
                chunk_id, size = _CHUNK_HEADER.unpack_from(buffer)
                del buffer[: _CHUNK_HEADER.size]
                padded = size + (size & 1)
                if chunk_id == b"data":
                    self._data_left = None if size in _SIZE_UNKNOWN else size
                    self._state = self._AUDIO
                    return
                if chunk_id == b"fmt " and size <= _MAX_FMT_BYTES:
                    self._fmt_size = padded
                    self._state = self._FMT_BODY
                else:
                    self._skip = padded
                    self._state = self._SKIP
            elif state == self._FMT_BODY:
                if len(buffer) < self._fmt_size:
                    return
                try:
                    tag, channels, rate, width = _parse_fmt(bytes(buffer[: self._fmt_size]))
                except WavError:
                    self.wav_format = None  # unreadable fmt: audio is still passed on
                else:
                    self.wav_format = WavAudio(rate, channels, width, b"", tag)
                del buffer[: self._fmt_size]
                self._state = self._CHUNK
            elif state == self._SKIP:
                dropped = min(self._skip, len(buffer))
                del buffer[:dropped]
                self._skip -= dropped
                if self._skip:
                    return
                self._state = self._CHUNK
            else:
                return
