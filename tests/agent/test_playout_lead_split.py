"""Lead split (``PLAYOUT_LEAD_SPLIT``, issue 11): a reply's long first sentence is synthesised as
a short lead and the rest at once, on two sockets, so its start is not held, and a Twilio
caller still hears it without a gap (measured on the carrier's playout clock).

The simulator delivers in the observed pattern (0.5 s first frame, then 1-2 s frames at 3x
real time; seed 11 draws the largest second frame, 0.66 s after the first): unsplit, the
scheduler must hold the sentence's start for that frame (~0.2 s).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from gateway.server import keys
from gateway.server.app import create_app
from gateway.sim.hamsa_sim import SIM_STATE, create_sim_app
from gateway.sim.twilio_caller import TwilioCaller
from telecodecs.g711 import ulaw_to_pcm16
from tests.agent.test_playout_calls import (
    BIG_SECOND_FRAME,
    gaps,
    observed_sim,
    prefetch_readers,
    warm,
)
from tests.agent.test_voice_calls import utterance, wait_for
from tests.conftest import TIMEOUT
from tests.speech_rig import voice_settings

# One sentence, one space: at 70 ms per character a 0.63 s first word (the lead: the prior
# predicts 80 ms per character, so at least 8 characters) and a 2.7 s rest. The synthetic
# voice is silent only at the space, which the split drops: any silent frame is a dropout.
LEAD = "أهلاوسهلا"
REST = "بكفيخدمةالعملاءكيفيمكننيمساعدتكاليوم"
SENTENCE = f"{LEAD} {REST}"
ONE_FRAME = 0.02  # s: a hold shorter than one 20 ms frame is no wait at all


async def greeting(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path, text: str, **overrides: Any
) -> tuple[TwilioCaller, TestClient, Any]:
    """A Twilio caller (not yet connected) greeted with ``text``, the gateway's client and the
    simulator's state; observed delivery at its observed 0.28 s first audio."""
    server = await aiohttp_server(
        create_sim_app(observed_sim(seed=BIG_SECOND_FRAME, first_audio_delay=0.28))
    )
    # One call, no burst to keep warm sockets for: three warm sockets (STT, the greeting's
    # lead and its rest).
    overrides.setdefault("hamsa_pool_burst_calls", 0)
    overrides.setdefault("hamsa_pool_min_idle", 3)
    # Synthesised, not replayed from the prompt cache: the TTS path is what is tested.
    overrides.setdefault("prompt_cache_mb", 0)
    settings = voice_settings(str(server.make_url("")), tmp_path, greeting_text=text, **overrides)
    client: TestClient = await aiohttp_client(create_app(settings))
    warm(client.app[keys.DELIVERY])
    pool = client.app[keys.SPEECH].pool  # type: ignore[index]
    await wait_for(lambda: pool.idle >= settings.hamsa_pool_min_idle)
    call = TwilioCaller(client.session, str(client.make_url("/twilio/media")))
    return call, client, server.app[SIM_STATE]


def hold_of_first_sentence(client: TestClient) -> float:
    """The playout hold of the call's one reply (gateway_stage_latency_seconds)."""
    registry = client.app[keys.METRICS].registry  # type: ignore[index]
    labels = {"stage": "playout_hold"}
    assert registry.get_sample_value("gateway_stage_latency_seconds_count", labels) == 1
    held = registry.get_sample_value("gateway_stage_latency_seconds_sum", labels)
    assert held is not None
    return float(held)


async def test_long_first_sentence_starts_without_a_hold_and_plays_without_a_gap(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path
) -> None:
    call, client, sim = await greeting(
        aiohttp_client, aiohttp_server, tmp_path, SENTENCE, playout_lead_split=True
    )
    async with call:
        assert await call.wait_reply_played(0.0, TIMEOUT, quiet=1.0)
        heard = ulaw_to_pcm16(call.heard_audio())
        marks = set(call.stats.mark_sent_times)
    assert sim.stats["tts_requests"] == 2  # the lead and the rest
    assert hold_of_first_sentence(client) < ONE_FRAME  # the lead went out as it came
    # 3.15 s of voice (45 characters) heard as one run: nothing missing at the seam, no
    # silent frame.
    assert len(heard) >= int(3.15 * 16000)
    assert gaps(heard) == []
    assert call.underruns_mid_sentence == 0
    # One sentence: its mark once, after all its audio; no second sentence.
    sentence_marks = {m for m in marks if ".s" in m}
    assert len(sentence_marks) == 1 and next(iter(sentence_marks)).endswith(".s0")


async def test_with_no_socket_to_spare_the_rest_follows_the_lead_on_its_socket(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path
) -> None:
    """A drained pool (a ramp of new calls): the rest is requested on the lead's socket once
    the lead's stream ends. Requests start speaking 0.28 s after they are sent (learned), so
    a 0.63 s lead still covers the rest's first and second frames: no hold, no gap."""
    call, client, sim = await greeting(
        aiohttp_client,
        aiohttp_server,
        tmp_path,
        SENTENCE,
        playout_lead_split=True,
        hamsa_pool_min_idle=2,  # one for STT, one for the greeting: none to spare
    )
    speech = client.app[keys.SPEECH]  # type: ignore[index]
    for _ in range(5):
        speech.first_audio.record(0.28)  # as the process has measured it
    connections = sim.stats["ws_connections"]
    async with call:
        assert await call.wait_reply_played(0.0, TIMEOUT, quiet=1.0)
        heard = ulaw_to_pcm16(call.heard_audio())
    assert sim.stats["tts_requests"] == 2  # the lead and the rest
    assert hold_of_first_sentence(client) < ONE_FRAME
    assert len(heard) >= int(3.15 * 16000)
    assert gaps(heard) == []
    assert call.underruns_mid_sentence == 0
    # Both went out before any refill connected (a connect takes 1.2 s): one socket.
    assert sim.stats["ws_connections"] - connections <= 2


async def test_without_the_split_the_same_sentence_is_held(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path
) -> None:
    """The control: one request, and the scheduler holds its start for the second frame."""
    call, client, sim = await greeting(
        aiohttp_client, aiohttp_server, tmp_path, SENTENCE, playout_lead_split=False
    )
    async with call:
        assert await call.wait_reply_played(0.0, TIMEOUT, quiet=1.0)
    assert sim.stats["tts_requests"] == 1
    assert hold_of_first_sentence(client) >= ONE_FRAME


async def test_barge_in_during_the_lead_closes_both_streams(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path
) -> None:
    """The caller talks over the lead while the rest (17 s of audio, more chunks than the
    read-ahead buffer holds) is still streaming: both streams close, no reader task is left,
    and the sentence's mark never goes out."""
    call, _, sim = await greeting(
        aiohttp_client,
        aiohttp_server,
        tmp_path,
        f"{LEAD} {'و' * 240}.",
        playout_lead_split=True,
        hamsa_tts_first_audio_timeout=30.0,
    )
    async with call:
        await wait_for(lambda: call.stats.bytes_received > 0)  # the lead plays
        await wait_for(lambda: sim.stats["tts_requests"] == 2)
        assert prefetch_readers()
        await call.play(utterance(1.0), realtime=True)  # the caller talks over it
        await wait_for(lambda: call.stats.clears_received >= 1)
        await wait_for(lambda: not prefetch_readers())
        marks = call.stats.mark_sent_times
        greeting_turn = min(marks, key=marks.__getitem__).split(".")[0]  # its first-audio mark
        assert f"{greeting_turn}.s0" not in marks
