"""The softphone in a real headless Chromium, against a gateway on 127.0.0.1.

The gateway runs the echo agent on the Hamsa simulator; Chromium's fake microphone loops a WAV
of one second of speech-like sound and 2.5 s of silence. So: the first loop's speech becomes a
transcript, the echo agent repeats it (a long reply: the simulator speaks 200 ms per
character), and the next loop's speech barges in while the reply plays. Everything asserted is
measured inside the page (window.softphone): the transcript shown, samples actually played by
the AudioWorklet, and the samples a "clear" dropped from its jitter buffer.
"""

from __future__ import annotations

import asyncio
import json
import wave
from pathlib import Path
from typing import Any

from gateway.server import keys
from gateway.server.app import create_app
from gateway.sim.hamsa_sim import create_sim_app
from tests.agent.audio import silence, voiced
from tests.browser.chromium import Page, open_page, require_chromium
from tests.call_helpers import wait_for
from tests.conftest import TIMEOUT
from tests.speech_rig import TRANSCRIPT, fast_sim_config, voice_settings

RATE = 16000


def write_mic_wav(path: Path, speech_s: float = 1.0, pause_s: float = 2.5) -> Path:
    """What the fake microphone plays, in a loop: speech, then a pause."""
    pcm = voiced(speech_s, rate=RATE) + silence(pause_s, rate=RATE)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(pcm)
    return path


async def page_state(page: Page) -> dict[str, Any]:
    text = await page.evaluate("JSON.stringify(window.softphone || null)")
    state = json.loads(text) or {}
    return state  # {} until the page's script has run


async def poll(page: Page, predicate: Any, timeout: float) -> dict[str, Any]:
    """Poll the page's state until ``predicate(state)``; the last state on failure."""
    last: dict[str, Any] = {}

    async def check() -> bool:
        nonlocal last
        last = await page_state(page)
        return bool(last) and bool(predicate(last))

    try:
        async with asyncio.timeout(timeout):
            while not await check():
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"page never reached the state; last: {last}") from None
    return last


async def test_softphone_call_in_headless_chromium(aiohttp_server: Any, tmp_path: Path) -> None:
    require_chromium()  # fails loudly where `make test` could have installed it
    sim = await aiohttp_server(
        create_sim_app(fast_sim_config(stt_script=(TRANSCRIPT,), ms_per_char=200.0))
    )
    settings = voice_settings(
        str(sim.make_url("")),
        tmp_path,
        browser_phone=True,
        greeting_text="مرحبا",
        public_url="",
    )
    server = await aiohttp_server(create_app(settings), host="127.0.0.1")
    app = server.app
    url = str(server.make_url("/phone"))
    wav = write_mic_wav(tmp_path / "mic.wav")

    async with open_page(url, wav=wav, profile=tmp_path / "profile") as page:
        await poll(page, lambda s: s.get("state") == "idle", TIMEOUT)
        await page.evaluate("document.getElementById('call').click()", user_gesture=True)

        # 1. The caller's words, transcribed by the gateway, appear in the page.
        state = await poll(page, lambda s: s["transcripts"], 3 * TIMEOUT)
        assert state["state"] == "in-call", state
        assert state["transcripts"][0]["text"] == TRANSCRIPT
        assert await page.evaluate(
            "document.getElementById('conversation').textContent.includes("
            + repr(TRANSCRIPT).replace("'", '"')
            + ")"
        )
        # 2. The echo agent's reply is shown and its audio really plays in the page.
        state = await poll(
            page,
            lambda s: (
                s["played"] > RATE // 2 and any(r["text"] == TRANSCRIPT for r in s["replies"])
            ),
            3 * TIMEOUT,
        )
        assert state["latencies"], state  # end of speech -> first audio heard, measured
        # 3. The next loop of the microphone barges in on that reply: the page's buffer is
        # cleared (the greeting may have been interrupted too; only this reply's counts).
        turn = state["transcripts"][0]["turn"]
        cleared_before = state["cleared"]
        state = await poll(
            page,
            lambda s: (
                any(i["turn"] == turn for i in s["interruptions"]) and s["cleared"] > cleared_before
            ),
            3 * TIMEOUT,
        )
        assert state["marks"]["cleared"] >= 1  # marks of unplayed audio answered played=false
        assert state["error"] == ""

        metrics = app[keys.METRICS].registry
        interruptions = metrics.get_sample_value(
            "gateway_interruptions_total", {"transport": "browser"}
        )
        assert interruptions is not None and interruptions >= 1
        assert app[keys.CALLS].count == 1

        await page.evaluate("document.getElementById('hangup').click()", user_gesture=True)
        await wait_for(lambda: app[keys.CALLS].count == 0)
    completed = metrics.get_sample_value(
        "gateway_calls_total", {"transport": "browser", "outcome": "completed"}
    )
    assert completed == 1
