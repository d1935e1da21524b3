"""Per-frame CPU cost of the codec paths: `python bench/bench_codecs.py`.

Prints µs per 20 ms frame (median of RUNS runs of ITERATIONS frames each, measured with
time.perf_counter_ns) for the inbound path (Twilio μ-law 8 kHz -> PCM16 16 kHz for Hamsa),
the outbound path (Hamsa PCM16 16 kHz -> μ-law 8 kHz), each step alone, and audioop.ratecv
for comparison (cheaper, but it aliases: see telecodecs.resample). Target: each path under
20 µs per frame on one core (design.md budget: in + out under ~30 µs).
"""

import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soxr

from telecodecs.constants import FRAME_MS, SAMPLE_RATE_8K, SAMPLE_RATE_16K
from telecodecs.framing import Reframer, frame_bytes_for
from telecodecs.g711 import pcm16_to_ulaw, ulaw_to_pcm16
from telecodecs.resample import QUALITY, StreamResampler
from telecodecs.wav import RiffStripper

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # stdlib audioop on 3.11/3.12
    import audioop

RUNS = 7
ITERATIONS = 20_000
WARMUP = 500
TARGET_US = 20.0

# audioop.ratecv's opaque state, as typeshed spells it.
RatecvState = tuple[int, tuple[tuple[int, int], ...]]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def measure(step: Callable[[], object]) -> tuple[float, float]:
    """Median µs per call over RUNS runs of ITERATIONS calls: (wall clock, thread CPU time).

    Wall clock (perf_counter_ns) is the reference; the CPU-time column shows how much of it
    was preemption when other processes compete for the cores.
    """
    for _ in range(WARMUP):
        step()
    wall, cpu = [], []
    for _ in range(RUNS):
        start, start_cpu = time.perf_counter_ns(), time.thread_time_ns()
        for _ in range(ITERATIONS):
            step()
        cpu.append((time.thread_time_ns() - start_cpu) / ITERATIONS / 1000)
        wall.append((time.perf_counter_ns() - start) / ITERATIONS / 1000)
    return statistics.median(wall), statistics.median(cpu)


def speech_like(rate: int, seconds: float) -> bytes:
    """Band-limited noise at speech level, so the codecs see realistic values."""
    rng = np.random.default_rng(1)
    noise = rng.normal(0, 3000, round(rate * seconds))
    smoothed = np.convolve(noise, np.ones(4) / 4, mode="same")
    return smoothed.clip(-32768, 32767).astype(np.int16).tobytes()


def main() -> None:
    ulaw_frame_bytes = frame_bytes_for(SAMPLE_RATE_8K, FRAME_MS, 1)
    pcm8_frame_bytes = frame_bytes_for(SAMPLE_RATE_8K, FRAME_MS, 2)
    pcm16_frame_bytes = frame_bytes_for(SAMPLE_RATE_16K, FRAME_MS, 2)
    pcm8_frame = speech_like(SAMPLE_RATE_8K, 1.0)[:pcm8_frame_bytes]
    pcm16_frame = speech_like(SAMPLE_RATE_16K, 1.0)[:pcm16_frame_bytes]
    ulaw_frame = pcm16_to_ulaw(pcm8_frame)
    assert len(ulaw_frame) == ulaw_frame_bytes

    up = StreamResampler(SAMPLE_RATE_8K, SAMPLE_RATE_16K)
    down = StreamResampler(SAMPLE_RATE_16K, SAMPLE_RATE_8K)
    up_alone = StreamResampler(SAMPLE_RATE_8K, SAMPLE_RATE_16K)
    down_alone = StreamResampler(SAMPLE_RATE_16K, SAMPLE_RATE_8K)
    ratecv_up: list[RatecvState | None] = [None]
    ratecv_down: list[RatecvState | None] = [None]
    reframer = Reframer(ulaw_frame_bytes)
    stripper = RiffStripper()
    stripper.feed(pcm16_frame)  # past the sniffing stage: the hot path

    def inbound() -> bytes:
        return up.process(ulaw_to_pcm16(ulaw_frame))

    def outbound() -> bytes:
        return pcm16_to_ulaw(down.process(pcm16_frame))

    def audioop_up() -> bytes:
        out, ratecv_up[0] = audioop.ratecv(pcm8_frame, 2, 1, 8000, 16000, ratecv_up[0])
        return out

    def audioop_down() -> bytes:
        out, ratecv_down[0] = audioop.ratecv(pcm16_frame, 2, 1, 16000, 8000, ratecv_down[0])
        return out

    rows: list[tuple[str, Callable[[], object], bool]] = [
        ("inbound: ulaw 160 B -> PCM16 -> 16 kHz", inbound, True),
        ("outbound: PCM16 16 kHz 640 B -> 8 kHz -> ulaw", outbound, True),
        ("  ulaw_to_pcm16 (160 B)", lambda: ulaw_to_pcm16(ulaw_frame), False),
        ("  StreamResampler 8 -> 16 kHz (320 B)", lambda: up_alone.process(pcm8_frame), False),
        ("  StreamResampler 16 -> 8 kHz (640 B)", lambda: down_alone.process(pcm16_frame), False),
        ("  pcm16_to_ulaw (320 B)", lambda: pcm16_to_ulaw(pcm8_frame), False),
        ("  Reframer.push (160 B, aligned)", lambda: reframer.push(ulaw_frame), False),
        ("  RiffStripper.feed (640 B, past header)", lambda: stripper.feed(pcm16_frame), False),
        ("compare: audioop.ratecv 8 -> 16 kHz (aliases)", audioop_up, False),
        ("compare: audioop.ratecv 16 -> 8 kHz (aliases)", audioop_down, False),
    ]

    print(
        f"python {platform.python_version()} ({sys.implementation.name}), "
        f"soxr {soxr.__version__} quality {QUALITY}, numpy {np.__version__}"
    )
    print(f"cpu: {cpu_model()}, usable cores (nproc): {usable_cores()}")
    print(f"median of {RUNS} runs x {ITERATIONS} frames, {FRAME_MS} ms frames, one core\n")
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    print(f"{'step':<48} {'µs/frame':>9} {'cpu µs':>8}  target {TARGET_US:g} µs")
    print("-" * 80)
    for name, step, is_path in rows:
        wall, cpu = measure(step)
        verdict = ("ok" if wall < TARGET_US else "OVER") if is_path else ""
        print(f"{name:<48} {wall:>9.2f} {cpu:>8.2f}  {verdict}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
