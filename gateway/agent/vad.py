"""Voice activity detection on the caller's audio: WebRTC's VAD (webrtcvad-wheels).

Chosen over Silero (ONNX) on CPU cost: see bench/bench_vad.py and README "VAD choice".
webrtcvad classifies one 10, 20 or 30 ms frame of PCM16 mono at 8, 16, 32 or 48 kHz; the
gateway feeds 20 ms frames at the call's rate (8 kHz, or 16 kHz on slin16 channels).
"""

from __future__ import annotations

from typing import Final

import webrtcvad

SUPPORTED_RATES: Final = (8000, 16000, 32000, 48000)
FRAME_MS_ALLOWED: Final = (10, 20, 30)


class Vad:
    """Speech / non-speech for single PCM16 LE mono frames; one instance per call.

    ``aggressiveness`` 0 (keeps most audio as speech) to 3 (most aggressive at calling
    noise non-speech). A frame whose length is not 10, 20 or 30 ms at ``sample_rate`` is
    not audio webrtcvad can judge: it is reported as non-speech and counted in
    ``bad_frames`` (never an exception on the media path).
    """

    __slots__ = ("_lengths", "_rate", "_vad", "bad_frames")

    def __init__(self, aggressiveness: int = 2, sample_rate: int = 8000) -> None:
        if aggressiveness not in (0, 1, 2, 3):
            raise ValueError("aggressiveness must be 0, 1, 2 or 3")
        if sample_rate not in SUPPORTED_RATES:
            raise ValueError(f"sample_rate must be one of {SUPPORTED_RATES}")
        self._vad = webrtcvad.Vad(aggressiveness)
        self._rate = sample_rate
        self._lengths = frozenset(sample_rate * ms // 1000 * 2 for ms in FRAME_MS_ALLOWED)
        self.bad_frames = 0

    @property
    def sample_rate(self) -> int:
        return self._rate

    def is_speech(self, frame: bytes) -> bool:
        """True when ``frame`` (20 ms of PCM16 at ``sample_rate``) holds speech."""
        if len(frame) not in self._lengths:
            self.bad_frames += 1
            return False
        return bool(self._vad.is_speech(frame, self._rate))
