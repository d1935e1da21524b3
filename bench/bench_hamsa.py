"""Benchmark: first-audio latency of a new call's first sentence, warm pool on vs off.

Runs the Hamsa simulator in-process at the issue's timings (connect 1.2 s, first audio
0.28 s) and the real client stack (HamsaService -> pool -> HamsaSession) against it:

* first audio of a NEW call's first sentence, pool on (``min_idle=2``) vs off (``0``);
* connects made on the critical path (and in total) for a three-sentence reply;
* PCM16 16 kHz vs μ-law 8 kHz TTS: first audio, bytes, and the CPU a Twilio call saves by
  not transcoding (resample 16->8 kHz + μ-law encode) when it asks Hamsa for μ-law.

Usage: ``.venv/bin/python bench/bench_hamsa.py [--calls N]``
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from dataclasses import replace

from aiohttp import web

from gateway.config import Settings
from gateway.metrics import Metrics
from gateway.sim.hamsa_sim import SIM_STATE, SimConfig, create_sim_app
from gateway.sim.speech_synth import synthetic_speech
from gateway.speech.hamsa.service import HamsaService
from telecodecs.g711 import pcm16_to_ulaw
from telecodecs.resample import StreamResampler

SENTENCES = (
    "أهلا وسهلا بك في خدمة العملاء، كيف يمكنني مساعدتك اليوم؟",
    "لقد وجدت طلبك في النظام وهو الآن قيد التوصيل إلى عنوانك.",
    "هل هناك أي شيء آخر يمكنني مساعدتك به قبل إنهاء المكالمة؟",
)
SIM = SimConfig(api_key="bench", connect_delay=1.2, first_audio_delay=0.28, espeak="")


async def first_audio(service: HamsaService, call: str, mulaw: bool = False) -> float:
    session = service.session(call)
    started = time.perf_counter()
    stream = session.tts(SENTENCES[0], mulaw=mulaw)
    try:
        await anext(stream)
        elapsed = time.perf_counter() - started
        async for _ in stream:
            pass
    finally:
        await stream.aclose()
        await session.aclose()
    return elapsed


async def wait_warm(service: HamsaService, idle: int) -> None:
    # Polls the pool's public idle count: the pool exposes no event for it.
    while service.pool.idle < idle:  # noqa: ASYNC110
        await asyncio.sleep(0.02)


async def run(calls: int) -> None:
    runner = web.AppRunner(create_sim_app(SIM), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    state = runner.app[SIM_STATE]
    base = Settings(hamsa_api_key="bench", hamsa_base_url=f"http://127.0.0.1:{port}")
    try:
        print(f"simulator: connect {SIM.connect_delay} s, first audio {SIM.first_audio_delay} s")
        for min_idle in (2, 0):
            service = HamsaService(replace(base, hamsa_pool_min_idle=min_idle), Metrics())
            async with service:
                samples = []
                for n in range(calls):
                    await wait_warm(service, min_idle)
                    samples.append(await first_audio(service, f"call-{min_idle}-{n}"))
                label = "pool on (min_idle=2)" if min_idle else "pool off (min_idle=0)"
                print(
                    f"{label:24s} first audio of a new call: median "
                    f"{statistics.median(samples) * 1000:7.0f} ms  "
                    f"(min {min(samples) * 1000:.0f}, max {max(samples) * 1000:.0f}, n={calls})"
                )
                if min_idle:
                    await wait_warm(service, min_idle)
                    pool = service.pool
                    before_total = state.stats["ws_connections"]
                    before_demand = pool.on_demand_connects
                    session = service.session("call-three")
                    for sentence in SENTENCES:
                        async for _ in session.tts(sentence):
                            pass
                    await session.aclose()
                    print(
                        "three-sentence reply: connects on the critical path "
                        f"{pool.on_demand_connects - before_demand}, sockets opened meanwhile "
                        f"(background refill) {state.stats['ws_connections'] - before_total}"
                    )
                    for mulaw in (False, True):
                        await wait_warm(service, min_idle)
                        t = await first_audio(service, f"fmt-{mulaw}", mulaw=mulaw)
                        fmt = "μ-law 8 kHz" if mulaw else "PCM16 16 kHz"
                        print(f"  {fmt:13s} first audio {t * 1000:5.0f} ms")
    finally:
        await runner.cleanup()
    # What μ-law TTS saves a Twilio call: transcoding PCM16 16 kHz -> μ-law 8 kHz.
    pcm = synthetic_speech(SENTENCES[0])
    seconds = len(pcm) / 32000
    resampler = StreamResampler(16000, 8000)
    started = time.perf_counter()
    for offset in range(0, len(pcm), 640):  # 20 ms frames
        pcm16_to_ulaw(resampler.process(pcm[offset : offset + 640]))
    cost = time.perf_counter() - started
    print(
        f"transcoding avoided by mulaw=true: {cost / seconds * 1e6:.0f} µs CPU per second "
        f"of audio ({cost / (seconds * 50) * 1e6:.1f} µs per 20 ms frame); "
        f"bytes on the Hamsa socket: {len(pcm)} (PCM16) vs {len(pcm) // 4} (μ-law)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=5)
    asyncio.run(run(parser.parse_args().calls))


if __name__ == "__main__":
    main()
