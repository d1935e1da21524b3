"""VAD cost per 20 ms frame: WebRTC VAD (what the gateway uses) and, optionally, Silero.

Usage::

    .venv/bin/python bench/bench_vad.py [--seconds 20] [--silero-model PATH]

Measures, on speech-like audio with pauses, the CPU time of ``Vad.is_speech`` per 20 ms
frame at 8 and 16 kHz, and of ``Endpointer.push``. A call makes 50 caller frames per
second, so ``us_per_frame * 50 / 1e6`` is the share of a core one call costs.

Silero is measured only when ``onnxruntime`` is importable and a Silero ONNX model is at
hand: ``--silero-model PATH``, or the model that ships inside the ``silero-vad`` PyPI wheel
(``silero_vad/data/silero_vad.onnx``, found if that package is importable). Neither is a
gateway dependency; nothing is downloaded. Silero v5+ takes 32 ms windows (256 samples at
8 kHz, 512 at 16 kHz, plus 32/64 samples of context), so its cost per 20 ms of audio is the
per-window cost times 20/32.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from gateway.agent.endpointing import Endpointer
from gateway.agent.vad import Vad

FRAME_MS = 20


def speech_like(seconds: float, rate: int) -> bytes:
    """Voiced bursts (harmonics of 140 Hz, 4 Hz syllables) alternating with low noise."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * rate)) / rate
    phase = 2 * np.pi * np.cumsum(140.0 * (1 + 0.05 * np.sin(2 * np.pi * 3 * t))) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 25) if k * 140 < rate / 2)
    voice = voice * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))
    on = (np.floor(t / 1.5) % 2 == 0).astype(float)  # 1.5 s speech, 1.5 s pause
    signal = 8000 * voice / np.max(np.abs(voice)) * on + rng.normal(0, 50, t.size)
    pcm: bytes = np.clip(signal, -32768, 32767).astype("<i2").tobytes()
    return pcm


def per_call(fn: Callable[[], Any], calls: int) -> float:
    """Best-of-5 wall time of ``fn`` divided by ``calls`` (the loop runs ``calls`` times)."""
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best / calls


def bench_webrtc(seconds: float) -> None:
    for rate in (8000, 16000):
        pcm = speech_like(seconds, rate)
        size = rate * FRAME_MS // 1000 * 2
        frames = [pcm[i : i + size] for i in range(0, len(pcm) - size + 1, size)]
        for mode in (0, 2, 3):
            vad = Vad(mode, rate)

            def run(vad: Vad = vad, frames: list[bytes] = frames) -> None:
                for f in frames:
                    vad.is_speech(f)

            us = per_call(run, len(frames)) * 1e6
            voiced = sum(vad.is_speech(f) for f in frames) / len(frames)
            print(
                f"webrtcvad  {rate:>5} Hz mode {mode}: {us:6.2f} us/frame "
                f"({voiced:.0%} frames voiced)"
            )
    pcm = speech_like(seconds, 8000)
    frames = [pcm[i : i + 320] for i in range(0, len(pcm) - 319, 320)]
    vad = Vad(2, 8000)
    flags = [vad.is_speech(f) for f in frames]

    def endpoint() -> None:
        ep = Endpointer()
        for f, s in zip(frames, flags, strict=True):
            ep.push(f, s)

    us = per_call(endpoint, len(frames)) * 1e6
    print(f"Endpointer.push      8000 Hz       : {us:6.2f} us/frame")


def find_silero(explicit: str | None) -> Path | None:
    if explicit:
        return Path(explicit)
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "data" / "silero_vad.onnx"
    return path if path.exists() else None


def bench_silero(seconds: float, model: Path) -> None:
    ort: Any = importlib.import_module("onnxruntime")  # optional: only for this comparison

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # one call = one thread; the gateway runs hundreds
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    for rate, window, context in ((8000, 256, 32), (16000, 512, 64)):
        audio = np.frombuffer(speech_like(seconds, rate), dtype="<i2").astype(np.float32) / 32768
        n = (audio.size - context) // window
        sr = np.array(rate, dtype=np.int64)

        def run(
            audio: Any = audio,
            n: int = n,
            window: int = window,
            context: int = context,
            sr: Any = sr,
        ) -> None:
            state = np.zeros((2, 1, 128), dtype=np.float32)
            for i in range(n):
                start = i * window
                chunk = audio[start : start + context + window][None, :]
                _, state = session.run(None, {"input": chunk, "state": state, "sr": sr})

        us_window = per_call(run, n) * 1e6
        us = us_window * FRAME_MS / (window * 1000 / rate)
        print(
            f"silero     {rate:>5} Hz          : {us:6.2f} us per 20 ms "
            f"({us_window:.1f} us per {window}-sample window, 1 thread)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="audio length per run")
    parser.add_argument("--silero-model", help="path to a Silero VAD .onnx model")
    args = parser.parse_args()
    bench_webrtc(args.seconds)
    model = find_silero(args.silero_model)
    if importlib.util.find_spec("onnxruntime") is None or model is None:
        print("silero: skipped (needs onnxruntime and a Silero model; see --help)")
        return
    bench_silero(args.seconds, model)


if __name__ == "__main__":
    main()
