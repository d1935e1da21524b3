"""Playout scheduler over a real transport, measured on the caller side (issue 11, 10.4).

The simulator delivers TTS in the pattern seen on real Hamsa calls (a 0.5 s first frame, then
1-2 s frames about 3x faster than real time) and each transport's fake peer records what the
caller hears on a real-time timeline:

* AudioSocket: what the channel would play, 20 ms per packet; the gateway's pacer fills any
  underrun with zero frames, so a dropout is a run of all-zero frames inside the reply.
* Twilio: the carrier buffers what the gateway sends and plays it at real time
  (``docs/protocols/twilio.md`` §1.4); ``TwilioCaller`` places each media message on its
  playout clock (``max(arrival, end of what is queued)``), so audio that arrives after the
  buffer ran dry leaves silence on the caller's timeline.
* chan_websocket: Asterisk's own queue, one frame per 20 ms tick (``chan_websocket.c``
  ``dequeue_frame``); ``AsteriskWsCaller.timeline`` holds silence on ticks with nothing queued.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.agent.playout import DeliveryModel, SentencePlan
from gateway.config import AgentMode
from gateway.server import keys
from gateway.server.app import create_app
from gateway.sim.asterisk_caller import AsteriskWsCaller, AudioSocketCaller
from gateway.sim.hamsa_sim import OBSERVED_DELIVERY, SIM_STATE, create_sim_app
from gateway.sim.twilio_caller import TwilioCaller
from gateway.telephony.events import AudioFormat
from gateway.telephony.pacing import FRAME_MS, OutboundAudio
from telecodecs.g711 import ulaw_to_pcm16
from tests.agent.audio import silence
from tests.agent.fake_agents import make_agent_app
from tests.agent.test_voice_calls import utterance, wait_for
from tests.conftest import TIMEOUT
from tests.speech_rig import fast_sim_config, voice_settings

# No spaces: the synthetic voice is continuous, so any silent frame inside it is a dropout.
LONG_GREETING = "أهلاوسهلابكفيخدمةالعملاءكيفيمكننيمساعدتكاليوم"  # ~3.2 s at 70 ms/char
FRAME = 320  # slin 8 kHz, 20 ms


def observed_sim(**overrides: Any) -> Any:
    knobs: dict[str, Any] = {k: int(v) if "bytes" in k else v for k, v in OBSERVED_DELIVERY.items()}
    knobs.update(first_audio_delay=0.05, ms_per_char=70.0, seed=3)
    knobs.update(overrides)
    return fast_sim_config(**knobs)


def warm(model: DeliveryModel, ms_per_char: float = 70.0) -> None:
    """Teach ``model`` the observed pattern as a gateway that has been running would have
    learned it from these tests' simulator: 0.5 s first frames, then 1-2 s frames at 3x real
    time, ``ms_per_char`` of audio per character. A cold model assumes a slower provider
    (``playout.PRIOR_RATE``, 2x) and holds more; these tests are about the learned case."""
    for i in range(20):
        chars = 10 + 10 * (i % 5)
        length = chars * ms_per_char / 1000.0
        plan = SentencePlan(chars, model.predict(), margin=0.0)
        plan.arrived(min(0.5, length), 0.0)
        at, received, frame = 0.0, 0.5, 1.0 + (i % 3) / 2.0
        while received < length:
            size = min(frame, length - received)
            at += size / 3.0
            plan.arrived(size, at)
            received += size
        plan.ended = True
        model.observe(plan)


def gaps(pcm: bytes) -> list[int]:
    """Lengths (frames) of silent runs between the first and the last audible frame."""
    zero = bytes(FRAME)
    frames = [pcm[i : i + FRAME] != zero for i in range(0, len(pcm) - FRAME + 1, FRAME)]
    if True not in frames:
        return []
    first = frames.index(True)
    last = len(frames) - 1 - frames[::-1].index(True)
    runs: list[int] = []
    run = 0
    for audible in frames[first : last + 1]:
        if audible:
            if run:
                runs.append(run)
            run = 0
        else:
            run += 1
    return runs


async def greeting_heard(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path, sim: Any, **overrides: Any
) -> tuple[bytes, Any]:
    server = await aiohttp_server(create_sim_app(sim))
    settings = voice_settings(
        str(server.make_url("")),
        tmp_path,
        greeting_text=LONG_GREETING,
        host="127.0.0.1",
        audiosocket_port=0,
        hamsa_short_audio_ms_per_char=4.0,
        **overrides,
    )
    client: TestClient = await aiohttp_client(create_app(settings))
    port = client.app[keys.AUDIOSOCKET].port  # type: ignore[index]
    async with AudioSocketCaller("127.0.0.1", port) as call:
        await call.play(silence(0.1), realtime=False)
        deadline = time.monotonic() + TIMEOUT
        # Played out: 3.2 s of voice, then a stretch of silence after it.
        while time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            heard = call.heard_audio()
            if len(heard) > 4 * 16000 and heard[-16000:] == bytes(16000):
                break
        return call.heard_audio(), client


async def test_sentence_in_the_observed_pattern_plays_without_gaps_over_audiosocket(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path
) -> None:
    heard, _ = await greeting_heard(aiohttp_client, aiohttp_server, tmp_path, observed_sim())
    assert len(heard) > 3 * 16000
    assert gaps(heard) == []


async def test_without_the_scheduler_the_same_sentence_breaks_up(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path
) -> None:
    """The control: the pattern really does cause dropouts when audio is sent as it comes."""
    heard, _ = await greeting_heard(
        aiohttp_client, aiohttp_server, tmp_path, observed_sim(), playout_adaptive=False
    )
    assert gaps(heard) != []


ASTERISK_USER = "asterisk"
ASTERISK_PASSWORD = "s3cret-media-pass"


async def played_out(heard: Any) -> bytes:
    """Poll ``heard()`` (caller-side PCM16 8 kHz timeline) until the greeting's 3.2 s of voice
    played and 1 s of silence followed; return the timeline."""
    deadline = time.monotonic() + TIMEOUT
    pcm: bytes = heard()
    while time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        pcm = heard()
        if len(pcm) > 4 * 16000 and pcm[-16000:] == bytes(16000) and any(pcm):
            break
    return pcm


async def twilio_greeting_heard(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path, sim: Any, **overrides: Any
) -> tuple[bytes, TwilioCaller, float]:
    """The greeting as a Twilio caller hears it (the carrier's playout clock, decoded μ-law),
    the caller, and the gateway's own count of underruns on Twilio calls."""
    server = await aiohttp_server(create_sim_app(sim))
    settings = voice_settings(
        str(server.make_url("")), tmp_path, greeting_text=LONG_GREETING, **overrides
    )
    client: TestClient = await aiohttp_client(create_app(settings))
    call = TwilioCaller(client.session, str(client.make_url("/twilio/media")))
    async with call:
        assert await call.wait_reply_played(0.0, TIMEOUT, quiet=1.0)
        # heard_audio(): every media message at max(arrival, end of the carrier's queue),
        # μ-law silence where the queue ran dry, from the first audio to the last.
        heard = ulaw_to_pcm16(call.heard_audio())
    registry = client.app[keys.METRICS].registry  # type: ignore[index]
    counted = registry.get_sample_value("gateway_playout_underruns_total", {"transport": "twilio"})
    return heard, call, counted or 0.0


async def asterisk_ws_greeting_heard(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path, sim: Any, **overrides: Any
) -> bytes:
    """The greeting as a chan_websocket (μ-law) channel plays it, one frame per 20 ms tick."""
    server = await aiohttp_server(create_sim_app(sim))
    settings = voice_settings(
        str(server.make_url("")),
        tmp_path,
        greeting_text=LONG_GREETING,
        asterisk_ws_username=ASTERISK_USER,
        asterisk_ws_password=ASTERISK_PASSWORD,
        **overrides,
    )
    client: TestClient = await aiohttp_client(create_app(settings))
    call = AsteriskWsCaller(
        client.session,
        str(client.make_url("/asterisk/media")),
        username=ASTERISK_USER,
        password=ASTERISK_PASSWORD,
        codec="ulaw",
    )
    async with call:
        return await played_out(lambda: ulaw_to_pcm16(call.heard_audio()))


# Seed 11 draws a 1.98 s second frame for the greeting (the simulator's largest): it lands
# 0.66 s after the 0.5 s first frame, a gap on any transport when audio is sent as received.
BIG_SECOND_FRAME = 11


async def test_sentence_in_the_observed_pattern_plays_without_gaps_over_twilio(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path
) -> None:
    heard, call, counted = await twilio_greeting_heard(
        aiohttp_client, aiohttp_server, tmp_path, observed_sim(seed=BIG_SECOND_FRAME)
    )
    assert len(heard) > 3 * 16000
    assert gaps(heard) == []
    assert call.underruns_mid_sentence == 0 and counted == 0


async def test_without_the_scheduler_the_sentence_breaks_up_over_twilio(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path
) -> None:
    """The control: sent as received, the second frame lands after Twilio's buffer ran dry."""
    heard, call, counted = await twilio_greeting_heard(
        aiohttp_client,
        aiohttp_server,
        tmp_path,
        observed_sim(seed=BIG_SECOND_FRAME),
        playout_adaptive=False,
    )
    assert gaps(heard) != []
    assert call.underruns_mid_sentence > 0
    assert counted > 0  # the gateway's sender-side clock saw it too (metric)


async def test_sentence_in_the_observed_pattern_plays_without_gaps_over_asterisk_ws(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path
) -> None:
    heard = await asterisk_ws_greeting_heard(
        aiohttp_client, aiohttp_server, tmp_path, observed_sim(seed=BIG_SECOND_FRAME)
    )
    assert sum(1 for i in range(0, len(heard), FRAME) if any(heard[i : i + FRAME])) > 150
    assert gaps(heard) == []


async def test_without_the_scheduler_the_sentence_breaks_up_over_asterisk_ws(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path
) -> None:
    heard = await asterisk_ws_greeting_heard(
        aiohttp_client,
        aiohttp_server,
        tmp_path,
        observed_sim(seed=BIG_SECOND_FRAME),
        playout_adaptive=False,
    )
    assert gaps(heard) != []


async def test_long_reply_is_not_read_faster_than_playout_allows(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """10.4: TTS is read only while <= PLAYOUT_MAX_AHEAD_SECONDS are queued ahead of playback,
    so the AudioSocket playout queue (gateway memory) stays bounded on a long reply."""
    long_text = "و" * 300  # 21 s of audio, delivered 50x faster than it plays
    sim = observed_sim(realtime_factor=50.0)
    server = await aiohttp_server(create_sim_app(sim))
    settings = voice_settings(
        str(server.make_url("")),
        tmp_path,
        greeting_text=long_text,
        host="127.0.0.1",
        audiosocket_port=0,
        hamsa_short_audio_ms_per_char=4.0,
        playout_max_ahead_seconds=2.0,
    )
    # The pacer's playout queue is the gateway memory in question: keep a handle on it.
    queues: list[OutboundAudio] = []
    real_for_format = OutboundAudio.for_format

    def recording_for_format(audio_format: AudioFormat, frame_ms: int = FRAME_MS) -> OutboundAudio:
        queue = real_for_format(audio_format, frame_ms)
        queues.append(queue)
        return queue

    monkeypatch.setattr(OutboundAudio, "for_format", recording_for_format)
    client: TestClient = await aiohttp_client(create_app(settings))
    port = client.app[keys.AUDIOSOCKET].port  # type: ignore[index]
    async with AudioSocketCaller("127.0.0.1", port) as call:
        await call.play(silence(0.1), realtime=False)
        peak = 0.0
        deadline = time.monotonic() + 6.0
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            for queue in queues:
                peak = max(peak, queue.queued_ms)
        assert len(queues) == 1  # the one call's queue
        assert len(call.heard_audio()) > 4 * 16000  # it played all along
    # 2 s ahead plus at most one TTS frame (2 s) read before the check: never the 21 s.
    assert 1500.0 < peak <= 4200.0


# A two-sentence reply, each sentence without spaces (continuous voice): 1.9 s and 2.1 s at
# 60 ms per character. The agent sends it at once, so the second sentence's text is known
# while the first one's TTS is still streaming.
FIRST_SENTENCE = "أهلاوسهلابكفيخدمةالعملاءالرقمية."
SECOND_SENTENCE = "كيفيمكننيمساعدتكفيطلبكاليومياصديقي؟"
# First audio 1.7 s after each TTS request: the slow end of what was observed (hamsa.md
# §1.4: 0.3-1.7 s). The first sentence's stream ends ~0.5 s after its first audio, ~1.3 s
# before it has played out: a second request sent only then answers too late.
SLOW_FIRST_AUDIO = 1.7


async def two_sentence_greeting(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path, reply: str, **overrides: Any
) -> tuple[TwilioCaller, Any]:
    """A Twilio caller (not yet connected) whose greeting is the agent's ``reply`` to
    call.started, spoken by the simulator in the observed pattern with slow first audio;
    and the simulator's state."""
    server = await aiohttp_server(
        create_sim_app(
            observed_sim(first_audio_delay=SLOW_FIRST_AUDIO, ms_per_char=60.0, stt_script=("",))
        )
    )
    agent = await aiohttp_server(make_agent_app("n8n", reply=reply))
    settings = voice_settings(
        str(server.make_url("")),
        tmp_path,
        greeting_text="",  # the greeting is the agent's reply to call.started
        prompt_cache_mb=0,  # synthesised, not replayed: the TTS path is what is tested
        agent=AgentMode.WEBHOOK,
        agent_webhook_url=str(agent.make_url("/webhook/agent")),
        **overrides,
    )
    client: TestClient = await aiohttp_client(create_app(settings))
    warm(client.app[keys.DELIVERY], ms_per_char=60.0)
    call = TwilioCaller(client.session, str(client.make_url("/twilio/media")))
    return call, server.app[SIM_STATE]


async def test_sentence_boundary_does_not_gap_when_first_audio_is_slow(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path
) -> None:
    """The next sentence's TTS runs while the current one streams and plays (second socket):
    a Twilio caller hears both sentences back to back, with no silence at the boundary."""
    call, _ = await two_sentence_greeting(
        aiohttp_client, aiohttp_server, tmp_path, f"{FIRST_SENTENCE} {SECOND_SENTENCE}"
    )
    async with call:
        assert await call.wait_reply_played(0.0, 2 * TIMEOUT, quiet=1.0)
        heard = ulaw_to_pcm16(call.heard_audio())
        marks = set(call.stats.mark_sent_times)
    assert {"t1.s0", "t1.s1"} <= marks  # both sentences were spoken, in one reply
    # 4 s of voice heard as one run: no silent frame at the boundary (nor inside).
    assert len(heard) > int(3.8 * 16000)
    assert gaps(heard) == []
    assert call.sentence_gaps == [] and call.underruns_mid_sentence == 0


def prefetch_readers() -> list[asyncio.Task[Any]]:
    """Live tasks reading a sentence's TTS ahead (gateway.agent.playout.Prefetched)."""
    return [
        t
        for t in asyncio.all_tasks()
        if getattr(t.get_coro(), "__qualname__", "") == "Prefetched._read"
    ]


async def test_barge_in_closes_the_sentence_being_synthesised_ahead(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path
) -> None:
    """The caller talks over the first sentence while the second one's TTS is running ahead
    on its own socket: both streams close and no reader task is left. The second sentence
    (14 s of audio, more chunks than the read-ahead buffer holds) would otherwise keep its
    reader blocked, and its socket open, for good."""
    long_second = "و" * 240 + "."
    call, sim = await two_sentence_greeting(
        aiohttp_client,
        aiohttp_server,
        tmp_path,
        f"{FIRST_SENTENCE} {long_second}",
        hamsa_tts_first_audio_timeout=30.0,
    )
    async with call:
        await wait_for(lambda: call.stats.bytes_received > 0)  # the first sentence plays
        # Its TTS and the second sentence's are both requested; nothing of the second sent.
        await wait_for(lambda: sim.stats["tts_requests"] == 2)
        assert "t1.s1" not in call.stats.mark_sent_times and prefetch_readers()
        await call.play(utterance(1.0), realtime=True)  # the caller talks over it
        await wait_for(lambda: call.stats.clears_received >= 1)
        await wait_for(lambda: not prefetch_readers())
        assert "t1.s1" not in call.stats.mark_sent_times  # the second sentence never went out
