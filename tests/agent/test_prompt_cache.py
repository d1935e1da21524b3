"""Prompt cache (``PROMPT_CACHE_MB``): greetings and re-prompts synthesised once, then played
from memory: the bound, what is stored (whole sentences only), the start-up rendering of the
fixed prompts, and whole Twilio calls against the Hamsa simulator."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from gateway.agent.prompt_cache import MAX_PROMPT_CHARS, PromptCache, prerender
from gateway.config import AgentMode
from gateway.server import keys
from gateway.server.app import create_app
from gateway.sim.hamsa_sim import SIM_STATE, create_sim_app
from gateway.sim.twilio_caller import TwilioCaller
from gateway.speech.hamsa.errors import HamsaError
from gateway.speech.hamsa.protocol import ErrorKind
from gateway.speech.hamsa.session import TtsChunk
from gateway.telephony.events import PCM16_16K, ULAW_8K
from tests.agent.fake_agents import make_agent_app
from tests.agent.test_voice_calls import utterance, wait_for
from tests.conftest import TIMEOUT
from tests.speech_rig import fast_sim_config, voice_settings

GREETING = "أهلا وسهلا بك في خدمة العملاء، كيف يمكنني مساعدتك؟"


def chunk(n: int, fmt: Any = PCM16_16K) -> TtsChunk:
    return TtsChunk(bytes([n % 251]) * n, fmt)


def test_cache_keeps_prompts_by_text_and_encoding_within_its_bound() -> None:
    cache = PromptCache(1000)
    assert cache.put("  مرحبا  ", False, [chunk(300), chunk(100)])
    assert cache.put("مرحبا", True, [chunk(200, ULAW_8K)])
    assert [c.audio for c in cache.get("مرحبا", False) or ()] == [
        chunk(300).audio,
        chunk(100).audio,
    ]
    assert [c.format for c in cache.get("مرحبا", True) or ()] == [ULAW_8K]
    assert cache.bytes == 600
    # Over the bound: the least recently used goes (the PCM entry, read before the μ-law one).
    assert cache.put("أهلا", False, [chunk(500)])
    assert cache.get("مرحبا", False) is None
    assert cache.get("مرحبا", True) is not None and cache.bytes == 700
    # Replacing an entry frees its old size.
    assert cache.put("أهلا", False, [chunk(100)])
    assert cache.bytes == 300 and len(cache) == 2


def test_cache_refuses_what_is_no_prompt_or_does_not_fit() -> None:
    cache = PromptCache(1000)
    assert not cache.put("", False, [chunk(10)])
    assert not cache.put("نص", False, [])  # no audio
    assert not cache.put("ا" * (MAX_PROMPT_CHARS + 1), False, [chunk(10)])
    assert not cache.put("كبير", False, [chunk(1001)])  # bigger than the whole cache
    # A truncated stream (the "640 bytes" failure): 20 ms of PCM for a 10-character text,
    # against at least 20 ms per character.
    strict = PromptCache(10_000, min_ms_per_char=20.0)
    assert not strict.put("عشرة حروف!", False, [chunk(640)])
    assert strict.put("عشرة حروف!", False, [chunk(6400)])  # 200 ms: plausible
    off = PromptCache(0)
    assert (
        not off.enabled and not off.put("نص", False, [chunk(10)]) and off.get("نص", False) is None
    )
    assert len(cache) == 0 and cache.bytes == 0


async def test_prerender_retries_a_failing_speech_service_and_fills_every_encoding() -> None:
    calls: list[tuple[str, bool]] = []
    slept: list[float] = []

    async def speak(text: str, *, mulaw: bool = False) -> AsyncIterator[TtsChunk]:
        calls.append((text, mulaw))
        if len(calls) <= 2:
            raise HamsaError("connection refused", ErrorKind.CONNECT)
        yield chunk(320, ULAW_8K if mulaw else PCM16_16K)

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    cache = PromptCache(10_000)
    await prerender(cache, speak, ["تحية.", "", "هل ما زلت معي؟"], [False, True], sleep=sleep)
    assert slept == [5.0, 10.0]  # capped backoff, as for the fallback text
    assert len(cache) == 4  # two texts x two encodings; the empty text is skipped
    for text in ("تحية.", "هل ما زلت معي؟"):
        assert cache.get(text, False) is not None and cache.get(text, True) is not None


async def test_prerender_asks_again_for_a_truncated_prompt() -> None:
    answers = [[chunk(640)], [chunk(64_000)]]  # 20 ms, then 2 s of PCM for 12 characters

    async def speak(text: str, *, mulaw: bool = False) -> AsyncIterator[TtsChunk]:
        for c in answers.pop(0):
            yield c

    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    cache = PromptCache(1_000_000, min_ms_per_char=20.0)
    await prerender(cache, speak, ["أهلا بك معنا"], [False], sleep=sleep)
    stored = cache.get("أهلا بك معنا", False)
    assert stored is not None and len(stored[0].audio) == 64_000 and slept == [5.0]


async def greeted_twice(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path, **overrides: Any
) -> tuple[TestClient, list[int], list[bytes]]:
    """Two Twilio calls, one after the other, each hearing its greeting in full; the
    gateway's client, the simulator's TTS request count before the first call and after
    each, and what each caller heard."""
    sim = await aiohttp_server(create_sim_app(fast_sim_config(stt_script=("",))))
    settings = voice_settings(str(sim.make_url("")), tmp_path, **overrides)
    client: TestClient = await aiohttp_client(create_app(settings))
    stats = sim.app[SIM_STATE].stats
    if settings.greeting_text:
        await wait_for(lambda: len(client.app[keys.PROMPTS]) == 1)  # the start-up rendering
    requests = [stats["tts_requests"]]
    heard: list[bytes] = []
    for _ in range(2):
        call = TwilioCaller(client.session, str(client.make_url("/twilio/media")))
        async with call:
            assert await call.wait_reply_played(0.0, TIMEOUT, quiet=0.5)
            heard.append(call.heard_audio())
        requests.append(stats["tts_requests"])
    return client, requests, heard


def metric(client: TestClient, result: str) -> float:
    registry = client.app[keys.METRICS].registry  # type: ignore[index]
    value = registry.get_sample_value("gateway_prompt_cache_total", {"result": result})
    return 0.0 if value is None else float(value)


async def test_a_fixed_greeting_is_synthesised_at_start_up_and_replayed_on_every_call(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path
) -> None:
    client, requests, heard = await greeted_twice(
        aiohttp_client, aiohttp_server, tmp_path, greeting_text=GREETING, reprompt_text=""
    )
    assert requests == [1, 1, 1]  # the start-up rendering, none per call
    assert metric(client, "hit") == 2 and metric(client, "miss") == 0
    assert heard[0] == heard[1] and len(heard[0]) > 0.5 * 8000  # μ-law 8 kHz: > 0.5 s


async def test_an_agent_greeting_is_cached_once_a_call_was_sent_all_of_it(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path
) -> None:
    agent = await aiohttp_server(make_agent_app("n8n", reply=GREETING))
    client, requests, heard = await greeted_twice(
        aiohttp_client,
        aiohttp_server,
        tmp_path,
        greeting_text="",  # the greeting is the agent's reply to call.started
        reprompt_text="",
        agent=AgentMode.WEBHOOK,
        agent_webhook_url=str(agent.make_url("/webhook/agent")),
    )
    assert requests[0] == 0 and requests[1] >= 1  # the first call synthesised it
    assert requests[2] == requests[1]  # the second replayed it
    # What the second caller heard from the cache is what the first heard synthesised.
    assert metric(client, "miss") == 1 and metric(client, "hit") == 1
    assert heard[0] == heard[1]


async def test_a_greeting_cut_by_barge_in_is_not_cached(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path
) -> None:
    """A greeting interrupted before all its audio was sent is incomplete: the next call
    synthesises it again (and caches that whole one)."""
    long_greeting = "و" * 200 + "."  # one sentence, ~2.4 s at 12 ms per character
    sim_server = await aiohttp_server(create_sim_app(fast_sim_config(stt_script=("",))))
    agent = await aiohttp_server(make_agent_app("n8n", reply=long_greeting))
    settings = voice_settings(
        str(sim_server.make_url("")),
        tmp_path,
        greeting_text="",
        reprompt_text="",
        agent=AgentMode.WEBHOOK,
        agent_webhook_url=str(agent.make_url("/webhook/agent")),
        playout_max_ahead_seconds=1.0,  # sending stays 1 s ahead: the barge-in cuts it
    )
    client: TestClient = await aiohttp_client(create_app(settings))
    prompts = client.app[keys.PROMPTS]
    call = TwilioCaller(client.session, str(client.make_url("/twilio/media")))
    async with call:
        await wait_for(lambda: call.stats.bytes_received > 0)  # the greeting plays
        await call.play(utterance(1.0), realtime=True)  # the caller talks over it
        await wait_for(lambda: call.stats.clears_received >= 1)
    assert len(prompts) == 0
    call = TwilioCaller(client.session, str(client.make_url("/twilio/media")))
    async with call:
        assert await call.wait_reply_played(0.0, TIMEOUT, quiet=0.5)
    assert len(prompts) == 1
