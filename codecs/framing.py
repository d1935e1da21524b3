"""Cut a byte stream of audio into fixed-size frames (e.g. 20 ms = 160 B μ-law at 8 kHz).

Carriers want exact frames (Twilio plays any size but AudioSocket and chan_websocket expect
``optimal_frame_size``); TTS and resampler output arrives in arbitrary chunks, so a
``Reframer`` sits between them and carries partial frames across calls.
"""

from telecodecs.constants import PCM16_SILENCE

__all__ = ["Reframer", "frame_bytes_for"]


def frame_bytes_for(sample_rate: int, frame_ms: int, bytes_per_sample: int) -> int:
    """Bytes in one ``frame_ms`` frame, e.g. ``frame_bytes_for(8000, 20, 1) == 160``.

    Raises ``ValueError`` if an argument is not positive or the frame is not a whole number
    of samples (22050 Hz at 10 ms is 220.5 samples).
    """
    if sample_rate <= 0 or frame_ms <= 0 or bytes_per_sample <= 0:
        raise ValueError(
            "sample_rate, frame_ms and bytes_per_sample must be positive, got "
            f"{sample_rate}, {frame_ms}, {bytes_per_sample}"
        )
    samples, remainder = divmod(sample_rate * frame_ms, 1000)
    if remainder:
        raise ValueError(
            f"{frame_ms} ms at {sample_rate} Hz is not a whole number of samples "
            f"({sample_rate * frame_ms / 1000})"
        )
    return samples * bytes_per_sample


class Reframer:
    """Turn arbitrary chunks into frames of exactly ``frame_bytes`` bytes.

    ``push`` returns zero or more whole frames and keeps the remainder (including a partial
    sample) for the next call; the frames depend only on the concatenated input, never on
    how it was chunked. ``silence`` is the pad pattern ``flush`` repeats to fill the last
    frame: ``b"\\x00"`` for PCM16, ``b"\\xff"`` for μ-law, ``b"\\xd5"`` for A-law
    (``telecodecs.constants`` names them).
    Raises ``ValueError`` if ``frame_bytes`` is not positive or ``silence`` is empty.
    """

    __slots__ = ("_buffer", "_frame_bytes", "_silence")

    def __init__(self, frame_bytes: int, silence: bytes = PCM16_SILENCE) -> None:
        if frame_bytes <= 0:
            raise ValueError(f"frame_bytes must be positive, got {frame_bytes}")
        if not silence:
            raise ValueError("silence pad pattern must not be empty")
        self._frame_bytes = frame_bytes
        self._silence = bytes(silence)
        self._buffer = bytearray()

    @property
    def frame_bytes(self) -> int:
        return self._frame_bytes

    @property
    def pending(self) -> int:
        """Bytes held back, always less than ``frame_bytes``."""
        return len(self._buffer)

    def push(self, data: bytes) -> list[bytes]:
        """Add ``data``; return the frames completed by it (possibly none), in order."""
        size = self._frame_bytes
        buffer = self._buffer
        if not buffer:
            # Fast path (the common case: chunks already frame-aligned): slice, no buffering.
            if len(data) == size:
                return [bytes(data)]
            whole = len(data) - len(data) % size
            buffer += memoryview(data)[whole:]
            return [data[i : i + size] for i in range(0, whole, size)]
        buffer += data
        whole = len(buffer) - len(buffer) % size
        frames = [bytes(buffer[i : i + size]) for i in range(0, whole, size)]
        del buffer[:whole]
        return frames

    def flush(self, pad: bool = True) -> bytes | None:
        """Return the pending partial frame and empty the buffer; ``None`` if nothing pends.

        With ``pad`` (the default) the frame is filled to ``frame_bytes`` with the silence
        pattern; without it the partial frame is returned as is.
        """
        if not self._buffer:
            return None
        frame = bytes(self._buffer)
        self._buffer.clear()
        missing = self._frame_bytes - len(frame)
        if pad and missing:
            repeats = -(-missing // len(self._silence))
            frame += (self._silence * repeats)[:missing]
        return frame

    def clear(self) -> None:
        """Drop pending bytes (barge-in: the unplayed remainder is discarded)."""
        self._buffer.clear()
