"""Audio at the call's edges: carrier format <-> PCM16, for the voice agent.

Inside the agent, audio is PCM16 LE mono with its rate beside it. These helpers convert the
call's negotiated :class:`~gateway.telephony.events.AudioFormat` to PCM16 (caller audio, for VAD
and STT) and PCM16 TTS audio to the call's format (playout), with one resampler per stream
direction (``telecodecs``).
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.telephony.events import AudioFormat, Encoding
from telecodecs.g711 import alaw_to_pcm16, pcm16_to_alaw, pcm16_to_ulaw, ulaw_to_pcm16
from telecodecs.resample import StreamResampler

# Rates WebRTC VAD accepts (webrtc/common_audio/vad: 8, 16, 32, 48 kHz).
VAD_RATES = frozenset({8000, 16000, 32000, 48000})


def _identity(data: bytes) -> bytes:
    return data


def decoder_for(fmt: AudioFormat) -> Callable[[bytes], bytes]:
    """A function turning audio in ``fmt`` into PCM16 at ``fmt.sample_rate``."""
    if fmt.encoding is Encoding.ULAW:
        return ulaw_to_pcm16
    if fmt.encoding is Encoding.ALAW:
        return alaw_to_pcm16
    return _identity


def encoder_for(fmt: AudioFormat) -> Callable[[bytes], bytes]:
    """A function turning PCM16 at ``fmt.sample_rate`` into ``fmt``'s encoding."""
    if fmt.encoding is Encoding.ULAW:
        return pcm16_to_ulaw
    if fmt.encoding is Encoding.ALAW:
        return pcm16_to_alaw
    return _identity


class OutboundConverter:
    """PCM16 at ``source_rate`` -> the call's format; one per reply sentence (stateful)."""

    def __init__(self, source_rate: int, target: AudioFormat) -> None:
        self._resampler = (
            StreamResampler(source_rate, target.sample_rate)
            if source_rate != target.sample_rate
            else None
        )
        self._encode = encoder_for(target)

    def process(self, pcm: bytes) -> bytes:
        if self._resampler is not None:
            pcm = self._resampler.process(pcm)
        return self._encode(pcm) if pcm else b""

    def flush(self) -> bytes:
        if self._resampler is None:
            return b""
        tail = self._resampler.flush()
        return self._encode(tail) if tail else b""


class InboundConverter:
    """Caller audio in the call's format -> PCM16 at a VAD-friendly rate."""

    def __init__(self, source: AudioFormat) -> None:
        self._decode = decoder_for(source)
        if source.sample_rate in VAD_RATES:
            self.rate = source.sample_rate
            self._resampler: StreamResampler | None = None
        else:
            self.rate = 16000
            self._resampler = StreamResampler(source.sample_rate, self.rate)

    def process(self, audio: bytes) -> bytes:
        pcm = self._decode(audio)
        if self._resampler is not None:
            pcm = self._resampler.process(pcm)
        return pcm
