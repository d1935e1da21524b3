"""First audio heard after the end of speech, through the browser softphone, on the simulator.

A gateway with the defaults of ``make run`` (embedded Hamsa simulator with its realistic
timings, echo agent, 600 ms endpointing) and ``BROWSER_PHONE=true`` serves ``/phone`` on
127.0.0.1; headless Debian Chromium opens it with a fake microphone that loops the bundled
Arabic utterance followed by a pause long enough for the whole reply. The latency is the
page's own measurement (``window.softphone.latencies``): the AudioContext time at which the
AudioWorklet output the reply's first sample, minus the AudioContext time at which it captured
the caller's last voiced sample (the gateway's VAD says which one, as a stream position). The
gateway's "heard" (first-frame mark echoed by the page) is printed beside it from the record.

Run: ``.venv/bin/python -m bench.bench_browser [--turns 6]`` (about 12 s per turn).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import tempfile
import wave
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.config import load_settings
from gateway.server.app import create_app
from gateway.sim.loadtest import machine_summary
from telecodecs.resample import resample
from tests.browser.chromium import open_page

RATE = 16000


def mic_wav(path: Path, pause_s: float) -> Path:
    """The bundled utterance (8 kHz) at 16 kHz, then ``pause_s`` of silence."""
    asset = resources.files("gateway.sim").joinpath("assets", "demo_utterance.wav")
    with asset.open("rb") as f, wave.open(f) as w:
        pcm = w.readframes(w.getnframes())
        rate = w.getframerate()
    pcm = resample(pcm, rate, RATE) + b"\0\0" * int(pause_s * RATE)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(pcm)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def run(turns: int, pause_s: float) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        records = Path(tmp) / "calls.jsonl"
        port = free_port()
        settings = load_settings(
            {
                "BROWSER_PHONE": "true",
                "CALL_RECORD_PATH": str(records),
                "REPROMPT_AFTER": "0",
                "LOG_LEVEL": "WARNING",
            },
            host="127.0.0.1",
            port=port,
        )
        runner = web.AppRunner(create_app(settings))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            wav = mic_wav(Path(tmp) / "mic.wav", pause_s)
            url = f"http://127.0.0.1:{port}/phone"
            async with open_page(url, wav=wav, profile=Path(tmp) / "profile") as page:
                await asyncio.sleep(2.0)  # the warm pool connects (1.2 s on the simulator)
                await page.evaluate("document.getElementById('call').click()", user_gesture=True)
                state: dict[str, Any] = {}
                async with asyncio.timeout(30 + turns * (6 + pause_s)):
                    while len(state.get("latencies", [])) < turns:
                        await asyncio.sleep(0.5)
                        state = json.loads(await page.evaluate("JSON.stringify(window.softphone)"))
                await page.evaluate("document.getElementById('hangup').click()", user_gesture=True)
                await asyncio.sleep(1.0)
        finally:
            await runner.cleanup()
        record = json.loads(records.read_text().splitlines()[-1]) if records.exists() else {}
    gw_turns = [t for t in record.get("turns", []) if t.get("kind") == "utterance"]
    print(machine_summary())
    print(f"{'turn':<6}{'page heard ms':>14}{'gw sent ms':>12}{'gw heard ms':>13}")
    page_ms = [row["ms"] for row in state["latencies"][:turns]]
    for i, ms in enumerate(page_ms):
        timings = gw_turns[i].get("timings", {}) if i < len(gw_turns) else {}

        def show(key: str, timings: dict[str, float] = timings) -> str:
            return f"{timings[key] * 1000:.0f}" if key in timings else "-"

        print(f"{i + 1:<6}{ms:>14}{show('turn'):>12}{show('heard'):>13}")
    print(
        f"page-measured end of speech -> first audio heard: p50 {statistics.median(page_ms):.0f} ms"
        f" (min {min(page_ms)}, max {max(page_ms)}, {len(page_ms)} turns); "
        f"underruns {state['underruns']}, barge-ins {len(state['interruptions'])}"
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--pause", type=float, default=7.0, help="silence after each utterance")
    args = parser.parse_args()
    return asyncio.run(run(args.turns, args.pause))


if __name__ == "__main__":
    raise SystemExit(main())
