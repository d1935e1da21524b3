"""The original system's scenario, end to end on loopback: how fast is the first reply audio?

Scenario (issue 6): STT takes 2.0 s; the agent webhook (n8n streaming) has its first sentence at
1.5 s and completes at 6.4 s; Hamsa TTS costs 1.2 s to connect and 0.28 s to first audio.

Target: end of caller speech -> first reply audio sent <= endpointing + 2.0 + 1.5 + 0.28 + 0.05 s
(the gateway may add 50 ms). The original design (fresh TTS connection per reply, whole webhook
reply before TTS) needed about endpointing + 2 + 6.4 + 1.2 + 0.28 s. Also: no gap over 100 ms
between consecutive sentences of one reply (measured by the caller, who plays audio in real time).

Run: ``.venv/bin/python -m bench.bench_turn [--turns 3]`` (about 15 s per turn).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from gateway.config import AgentMode
from gateway.server.app import create_app
from gateway.sim.caller_cli import Microphone
from gateway.sim.hamsa_sim import SimConfig, create_sim_app
from gateway.sim.loadtest import machine_summary
from gateway.sim.speech_synth import synthetic_speech
from gateway.sim.twilio_caller import TwilioCaller
from telecodecs.g711 import pcm16_to_ulaw
from telecodecs.resample import resample
from tests.agent.fake_agents import make_agent_app
from tests.conftest import make_settings

STT_SECONDS = 2.0
AGENT_FIRST_SENTENCE = 1.5
AGENT_COMPLETE = 6.4
TTS_CONNECT = 1.2
TTS_FIRST_AUDIO = 0.28
GATEWAY_BUDGET = 0.05
REPLY = (
    "أهلا بك، لقد وصلني طلبك وأنا أراجع التفاصيل الآن. "
    "طلبك رقم واحد اثنان ثلاثة في الطريق وسيصل غدا صباحا. "
    "هل هناك شيء آخر يمكنني مساعدتك به اليوم؟"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def serve(app: web.Application, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


async def run(turns: int) -> dict[str, Any]:
    sim_port, agent_port, gw_port = free_port(), free_port(), free_port()
    record = Path(tempfile.mkdtemp()) / "calls.jsonl"
    sim = await serve(
        create_sim_app(
            SimConfig(
                connect_delay=TTS_CONNECT,
                first_audio_delay=TTS_FIRST_AUDIO,
                stt_delay=STT_SECONDS,
                stt_script=("أريد أن أعرف أين طلبي",),
            )
        ),
        sim_port,
    )
    agent = await serve(
        make_agent_app(
            "n8n", reply=REPLY, first_at=AGENT_FIRST_SENTENCE, complete_at=AGENT_COMPLETE
        ),
        agent_port,
    )
    settings = make_settings(
        port=gw_port,
        public_url=f"http://127.0.0.1:{gw_port}",
        agent=AgentMode.WEBHOOK,
        agent_webhook_url=f"http://127.0.0.1:{agent_port}/webhook/agent",
        hamsa_api_key="bench",
        hamsa_base_url=f"http://127.0.0.1:{sim_port}",
        greeting_text="أهلا وسهلا، كيف يمكنني مساعدتك اليوم؟",
        reprompt_after=0,
        call_record_path=str(record),
        agent_timeout=10.0,
    )
    gateway = await serve(create_app(settings), gw_port)
    speech = pcm16_to_ulaw(resample(synthetic_speech("أريدأنأعرفأينطلبي"), 16000, 8000))
    gaps: list[float] = []
    underruns = 0
    try:
        async with aiohttp.ClientSession() as http:
            await wait_ready(http, f"http://127.0.0.1:{gw_port}")
            call = TwilioCaller(http, f"ws://127.0.0.1:{gw_port}/twilio/media")
            await call.connect()
            mic = Microphone(call)
            mic_task = asyncio.create_task(mic.run())
            try:
                await call.wait_reply_played(0.0, 20.0, quiet=1.5)  # the greeting
                for _ in range(turns):
                    spoken = mic.say(speech)
                    await asyncio.sleep(max(0.0, spoken - time.monotonic()))
                    await call.wait_reply_played(spoken, 30.0, quiet=1.5)
                    await asyncio.sleep(1.0)
                await call.stop()
                with contextlib.suppress(TimeoutError):
                    await call.wait_closed(5.0)
            finally:
                mic_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await mic_task
                await call.close()
            gaps = call.sentence_gaps
            underruns = call.underruns_mid_sentence
    finally:
        for runner in (gateway, agent, sim):
            await runner.cleanup()
    await asyncio.sleep(0.2)
    data = json.loads(record.read_text(encoding="utf-8").splitlines()[-1])
    results = [t["timings"] for t in data["turns"] if t["kind"] == "utterance"]
    return {"turns": results, "sentence_gaps": gaps, "underruns": underruns}


async def wait_ready(http: aiohttp.ClientSession, base: str) -> None:
    for _ in range(300):
        with contextlib.suppress(aiohttp.ClientError, ValueError):
            async with http.get(base + "/readyz") as r:
                body = await r.json()
                if r.status == 200 and body["checks"]["speech"].get("idle", 0) >= 2:
                    return
        await asyncio.sleep(0.1)
    raise SystemExit("gateway not ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--turns", type=int, default=3)
    args = parser.parse_args()
    result = asyncio.run(run(args.turns))
    print(f"machine: {machine_summary()}")
    print(
        f"{'turn':<5}{'endpoint':>9}{'stt':>7}{'agent 1st':>10}{'tts 1st':>9}"
        f"{'turn':>7}{'target':>8}{'original':>9}{'added':>7}"
    )
    added: list[float] = []
    for i, t in enumerate(result["turns"], 1):
        target = t["endpointing"] + STT_SECONDS + AGENT_FIRST_SENTENCE + TTS_FIRST_AUDIO
        target += GATEWAY_BUDGET
        original = t["endpointing"] + STT_SECONDS + AGENT_COMPLETE + TTS_CONNECT + TTS_FIRST_AUDIO
        extra = t["turn"] - (
            t["endpointing"] + t["stt"] + t["agent_first_text"] + t["tts_first_audio"]
        )
        added.append(extra)
        print(
            f"{i:<5}{t['endpointing']:>9.3f}{t['stt']:>7.3f}{t['agent_first_text']:>10.3f}"
            f"{t['tts_first_audio']:>9.3f}{t['turn']:>7.3f}{target:>8.3f}{original:>9.3f}"
            f"{extra * 1000:>6.1f}ms {'OK' if t['turn'] <= target else 'MISSED'}"
        )
    gaps = result["sentence_gaps"]
    print(
        f"gateway-added latency: mean {statistics.fmean(added) * 1000:.1f} ms, "
        f"max {max(added) * 1000:.1f} ms"
    )
    print(
        f"gaps between sentences: {len(gaps)} (max {max(gaps, default=0) * 1000:.0f} ms); "
        f"underruns mid-sentence: {result['underruns']}"
    )


if __name__ == "__main__":
    main()
