"""Audio formats: an encoding plus a sample rate, shared by every layer.

Telephony adapters announce a call's format, the speech layer says in which format TTS
audio arrives, and the voice agent converts between them (with ``telecodecs``). The types
live here, below all three, so none of them imports another for a format.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["ALAW_8K", "PCM16_8K", "PCM16_16K", "ULAW_8K", "AudioFormat", "Encoding"]


class Encoding(StrEnum):
    """Sample encodings carried on telephony media sockets."""

    PCM16 = "pcm16"  # signed 16-bit little-endian linear PCM
    ULAW = "ulaw"  # G.711 μ-law, one byte per sample
    ALAW = "alaw"  # G.711 A-law, one byte per sample


@dataclass(frozen=True, slots=True)
class AudioFormat:
    """A mono audio format: encoding plus sample rate in Hz."""

    encoding: Encoding
    sample_rate: int

    @property
    def bytes_per_sample(self) -> int:
        return 2 if self.encoding is Encoding.PCM16 else 1

    def bytes_per_ms(self) -> float:
        return self.sample_rate * self.bytes_per_sample / 1000.0

    def frame_bytes(self, frame_ms: int) -> int:
        """Size in bytes of one ``frame_ms`` frame in this format."""
        return self.sample_rate * frame_ms // 1000 * self.bytes_per_sample


ULAW_8K = AudioFormat(Encoding.ULAW, 8000)
ALAW_8K = AudioFormat(Encoding.ALAW, 8000)
PCM16_8K = AudioFormat(Encoding.PCM16, 8000)
PCM16_16K = AudioFormat(Encoding.PCM16, 16000)
