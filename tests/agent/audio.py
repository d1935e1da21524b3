"""Test audio: speech-like voiced signals, noise and silence as PCM16 LE mono.

``voiced`` builds a harmonic signal (a glottal-like pulse train: 20+ harmonics of a
120-200 Hz fundamental with vibrato, a formant-like boost and a 4 Hz syllable envelope),
which WebRTC's VAD classifies as speech (test_vad.py checks that it does). ``espeak`` returns
a real synthesized utterance when ``espeak-ng`` is installed, else None.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np
import soxr

RATE = 8000
FRAME_MS = 20


def frame_bytes(rate: int = RATE) -> int:
    return rate * FRAME_MS // 1000 * 2


def frames(pcm: bytes, rate: int = RATE) -> list[bytes]:
    """Whole 20 ms frames of ``pcm`` (a partial last frame is dropped)."""
    size = frame_bytes(rate)
    return [pcm[i : i + size] for i in range(0, len(pcm) - size + 1, size)]


def silence(seconds: float, rate: int = RATE) -> bytes:
    return b"\0\0" * int(seconds * rate)


def noise(seconds: float, rms: float = 100.0, rate: int = RATE, seed: int = 1) -> bytes:
    rng = np.random.default_rng(seed)
    samples = rng.normal(0.0, rms, int(seconds * rate))
    return np.clip(samples, -32768, 32767).astype("<i2").tobytes()


def voiced(seconds: float, f0: float = 140.0, rate: int = RATE, level: float = 0.5) -> bytes:
    """A speech-like voiced sound of ``seconds`` (see the module docstring)."""
    t = np.arange(int(seconds * rate)) / rate
    freq = f0 * (1.0 + 0.05 * np.sin(2 * np.pi * 3.0 * t))
    phase = 2 * np.pi * np.cumsum(freq) / rate
    signal = np.zeros_like(t)
    for k in range(1, 25):
        if k * f0 >= rate / 2:
            break
        gain = 1.0 / k
        if 300 <= k * f0 <= 900:  # first-formant region
            gain *= 1.5
        signal += gain * np.sin(k * phase)
    signal *= 0.6 + 0.4 * np.sin(2 * np.pi * 4.0 * t)
    peak = float(np.max(np.abs(signal))) or 1.0
    return (signal / peak * level * 32767).astype("<i2").tobytes()


def espeak(text: str, voice: str = "ar", rate: int = RATE) -> bytes | None:
    """``text`` spoken by espeak-ng as PCM16 at ``rate``, or None without espeak-ng."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "say.wav"
        done = subprocess.run(
            [exe, "-v", voice, "-w", str(path), text], capture_output=True, timeout=20
        )
        if done.returncode != 0 or not path.exists():
            return None
        with wave.open(str(path), "rb") as wav:
            src_rate = wav.getframerate()
            data = wav.readframes(wav.getnframes())
    samples = np.frombuffer(data, dtype="<i2").astype(np.float32)
    out = soxr.resample(samples, src_rate, rate)
    pcm: bytes = np.clip(out, -32768, 32767).astype("<i2").tobytes()
    return pcm
