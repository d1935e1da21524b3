"""A turn through the built-in LLM agent (AGENT=llm), end to end on loopback.

Scenario (issue 13): a simulated Twilio caller speaks; the Hamsa simulator runs with its
default timings (STT 0.3 s, TTS first audio 0.3 s, connect 1.2 s: the warm pool hides it);
the LLM is a stand-in OpenAI-compatible server (tests/agent/fake_openai.py, the real SSE
wire format) whose first token comes 300 ms after the request and whose text then streams at
4 characters per 20 ms (~200 characters per second, a hosted small model's pace).

Measured: end of the caller's speech -> first reply audio *heard* by the caller (the caller
plays audio in real time, as a phone does), plus the gateway's own stage timings from the call
record. "Gateway-added" is the turn latency (first audio sent) minus endpointing, STT, the
stand-in's time from receiving the request to writing the piece that completes the first
sentence (the first text TTS can take; measured by the stand-in, same clock) and TTS first
audio.

Run: ``.venv/bin/python -m bench.bench_llm_turn [--turns 5] [--no-adaptive-playout]`` (about
8 s per turn). With the default ``PLAYOUT_ADAPTIVE=true`` the gateway may hold a sentence's
start as long as the learned TTS delivery rate needs for gap-free playout (a long first
sentence is split into a lead and the rest instead, ``PLAYOUT_LEAD_SPLIT``); any hold is part
of "gateway-added".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.bench_turn import free_port, serve, wait_ready
from gateway.agent.sentences import SentenceSplitter
from gateway.config import AgentMode
from gateway.server.app import create_app
from gateway.sim.caller_cli import Microphone
from gateway.sim.hamsa_sim import SimConfig, create_sim_app
from gateway.sim.loadtest import machine_summary
from gateway.sim.speech_synth import synthetic_speech
from gateway.sim.twilio_caller import TwilioCaller
from telecodecs.g711 import pcm16_to_ulaw
from telecodecs.resample import resample
from tests.agent.fake_openai import OPENAI_REQUESTS_KEY, Answer, make_openai_app
from tests.conftest import make_settings

FIRST_TOKEN = 0.3
PIECE_CHARS = 4
PIECE_SECONDS = 0.02
REPLY = (
    "أهلا بك، لقد وصلني طلبك وأنا أراجعه الآن. "
    "طلبك رقم واحد اثنان ثلاثة في الطريق وسيصل غدا صباحا. "
    "هل هناك شيء آخر يمكنني مساعدتك به اليوم؟"
)


def first_sentence_piece() -> int:
    """Index of the stand-in's piece that completes the first sentence (the splitter cuts
    once it has seen the character after the sentence's end)."""
    splitter = SentenceSplitter()
    for piece, index in enumerate(range(0, len(REPLY), PIECE_CHARS)):
        if splitter.push(REPLY[index : index + PIECE_CHARS]):
            return piece
    return len(REPLY) // PIECE_CHARS


async def run(turns: int, adaptive: bool = True) -> dict[str, Any]:
    sim_port, llm_port, gw_port = free_port(), free_port(), free_port()
    record = Path(tempfile.mkdtemp()) / "calls.jsonl"
    sim = await serve(create_sim_app(SimConfig(stt_script=("أريد أن أعرف أين طلبي",))), sim_port)
    answer = Answer(
        REPLY, first_token_delay=FIRST_TOKEN, piece_chars=PIECE_CHARS, chunk_delay=PIECE_SECONDS
    )
    llm_app = make_openai_app([answer], api_key="bench-key")
    llm = await serve(llm_app, llm_port)
    settings = make_settings(
        port=gw_port,
        public_url=f"http://127.0.0.1:{gw_port}",
        agent=AgentMode.LLM,
        llm_base_url=f"http://127.0.0.1:{llm_port}/v1",
        llm_api_key="bench-key",
        llm_model="stand-in",
        hamsa_api_key="bench",
        hamsa_base_url=f"http://127.0.0.1:{sim_port}",
        greeting_text="أهلا وسهلا، كيف يمكنني مساعدتك اليوم؟",
        reprompt_after=0,
        call_record_path=str(record),
        playout_adaptive=adaptive,
    )
    gateway = await serve(create_app(settings), gw_port)
    speech = pcm16_to_ulaw(resample(synthetic_speech("أريدأنأعرفأينطلبي"), 16000, 8000))
    heard: list[float] = []
    try:
        async with aiohttp.ClientSession() as http:
            await wait_ready(http, f"http://127.0.0.1:{gw_port}")
            call = TwilioCaller(http, f"ws://127.0.0.1:{gw_port}/twilio/media")
            await call.connect()
            mic = Microphone(call)
            mic_task = asyncio.create_task(mic.run())
            try:
                await call.wait_reply_played(0.0, 20.0, quiet=1.0)  # the greeting
                for _ in range(turns):
                    spoken = mic.say(speech)
                    await asyncio.sleep(max(0.0, spoken - time.monotonic()))
                    await call.wait_reply_played(spoken, 30.0, quiet=1.0)
                    first = call.first_heard_after(spoken)
                    if first is not None:
                        heard.append(first - spoken)
                await call.stop()
                with contextlib.suppress(TimeoutError):
                    await call.wait_closed(5.0)
            finally:
                mic_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await mic_task
                await call.close()
    finally:
        for runner in (gateway, llm, sim):
            await runner.cleanup()
    await asyncio.sleep(0.2)
    data = json.loads(record.read_text(encoding="utf-8").splitlines()[-1])
    results = [t["timings"] for t in data["turns"] if t["kind"] == "utterance"]
    piece = first_sentence_piece()
    ready = [q["content_at"][piece] - q["received_at"] for q in llm_app[OPENAI_REQUESTS_KEY]]
    return {"turns": results, "heard": heard, "ready": ready}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument(
        "--no-adaptive-playout",
        action="store_true",
        help="PLAYOUT_ADAPTIVE=false: send TTS audio as it arrives (isolates the agent path)",
    )
    args = parser.parse_args()
    result = asyncio.run(run(args.turns, adaptive=not args.no_adaptive_playout))
    print(f"machine: {machine_summary()}")
    print(
        f"stand-in: first token after {FIRST_TOKEN:.3f} s, then {PIECE_CHARS} characters "
        f"every {PIECE_SECONDS * 1000:.0f} ms ('llm sent.' = first sentence complete)"
    )
    print(
        f"{'turn':<5}{'endpoint':>9}{'stt':>7}{'llm 1st':>9}{'llm sent.':>10}{'tts 1st':>9}"
        f"{'sent':>7}{'heard gw':>9}{'HEARD':>8}{'added':>9}"
    )
    added: list[float] = []
    rows = zip(result["turns"], result["heard"], result["ready"], strict=False)
    for i, (t, h, ready) in enumerate(rows, 1):
        extra = t["turn"] - (t["endpointing"] + t["stt"] + ready + t["tts_first_audio"])
        added.append(extra)
        print(
            f"{i:<5}{t['endpointing']:>9.3f}{t['stt']:>7.3f}{t['agent_first_text']:>9.3f}"
            f"{ready:>10.3f}{t['tts_first_audio']:>9.3f}{t['turn']:>7.3f}"
            f"{t.get('heard', float('nan')):>9.3f}{h:>8.3f}{extra * 1000:>7.1f}ms"
        )
    if result["heard"]:
        print(
            f"end of speech -> first audio heard: median "
            f"{statistics.median(result['heard']):.3f} s, max {max(result['heard']):.3f} s "
            f"over {len(result['heard'])} turns; gateway-added mean "
            f"{statistics.fmean(added) * 1000:.1f} ms, max {max(added) * 1000:.1f} ms"
        )


if __name__ == "__main__":
    main()
