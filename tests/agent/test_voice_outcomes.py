"""Voice-agent failure paths over real sockets (issue 10 items 2, 3, 8, 19; issue 12 items 5, 6).

Each test drives a whole Twilio call through the gateway with the Hamsa simulator and a test
agent (tests/agent/test_voice_calls.py's rig), except the DTMF flood, which feeds 400k events
straight into one conversation (a real socket would take minutes to carry them).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any, cast

from gateway.agent.brains import EchoBrain, WebhookBrain
from gateway.agent.fallback import CLIP_RATE, fallback_clip
from gateway.agent.voice import MAX_DTMF_DIGITS, MAX_QUEUED_JOBS, VoiceAgentConversation
from gateway.agent.webhook import AgentRequest
from gateway.calls import CallSession
from gateway.metrics import TURN_OUTCOMES, Metrics
from gateway.server import keys
from gateway.speech.hamsa.session import HamsaSession
from gateway.telephony.events import ULAW_8K, CallStarted, Dtmf, Transport
from tests.agent import test_voice_calls
from tests.agent.fake_agents import make_agent_app
from tests.agent.test_voice_calls import TRANSCRIPT, Rig, utterance, wait_for
from tests.conftest import TIMEOUT, make_settings
from tests.speech_rig import fast_sim_config

rig = test_voice_calls.rig  # the whole-call rig fixture, shared
FALLBACK = "عذرا، حدث خطأ. هل يمكنك الإعادة؟"
# No sentence end before character 60: a trickling agent finishes it only after 6 s.
TRICKLED = "هذا رد طويل جدا يكتبه الوكيل حرفا بعد حرف ببطء شديد ولا ينتهي بسرعة أبدا. ثم يكمل."


def records(tmp_path: Path) -> list[dict[str, Any]]:
    lines = (tmp_path / "calls.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def turn_metrics(r: Rig) -> Counter[str]:
    """gateway_turns_total by outcome (zero outcomes left out, as in a record's Counter)."""
    counts = {o: int(r.metric("gateway_turns_total", {"outcome": o})) for o in TURN_OUTCOMES}
    return Counter({o: n for o, n in counts.items() if n})


# ------------------------------------------------------------------ 10.8 trickling agent


async def test_a_trickling_agent_gets_the_fallback_at_the_first_sentence_deadline(
    rig: Any, tmp_path: Path
) -> None:
    chunks = [(0.1 * (i + 1), ch) for i, ch in enumerate(TRICKLED)]  # one char per 100 ms
    r: Rig = await rig("text", agent_timeout=0.6, agent_knobs={"chunks": chunks})
    loop = asyncio.get_running_loop()
    async with r.caller() as call:
        await wait_for(lambda: call.stats.marks_echoed >= 2)  # greeting heard
        before = call.stats.bytes_received
        await call.play(utterance(), realtime=True)
        await wait_for(lambda: any(q.get("event") == "utterance" for q in r.requests))
        asked = loop.time()
        await wait_for(lambda: call.stats.bytes_received > before + 2000)
        # Text arrived at once (0.1 s) but no sentence: the fallback plays at the 0.6 s
        # deadline, not when the first sentence completes (~6 s) or the total deadline (30 s).
        assert loop.time() - asked < 3.0
        await call.stop()
        await call.wait_closed(TIMEOUT)
    assert r.metric("gateway_agent_errors_total", {"kind": "timeout"}) == 1
    await wait_for(lambda: (tmp_path / "calls.jsonl").exists())
    turn = next(t for t in records(tmp_path)[0]["turns"] if t["kind"] == "utterance")
    assert turn["outcome"] == "agent_error"
    assert turn["reply"].endswith(FALLBACK)


# ------------------------------------------------------------------ 12.6 slow greeting


async def test_a_greeting_that_times_out_stays_silent(rig: Any, tmp_path: Path) -> None:
    r: Rig = await rig("slow", greeting_text="", agent_timeout=0.3, agent_knobs={})
    async with r.caller() as call:
        await wait_for(lambda: r.metric("gateway_agent_errors_total", {"kind": "timeout"}) >= 1)
        await asyncio.sleep(0.5)  # the apology would be playing by now (simulator: ~0.1 s)
        assert call.stats.bytes_received == 0
        # The call goes on: a caller's turn that times out does get the fallback.
        await call.play(utterance(), realtime=True)
        await wait_for(lambda: call.stats.bytes_received > 2000)
        await call.stop()
        await call.wait_closed(TIMEOUT)
    await wait_for(lambda: (tmp_path / "calls.jsonl").exists())
    greeting = records(tmp_path)[0]["turns"][0]
    assert greeting["kind"] == "greeting" and greeting["reply"] == ""
    assert greeting["outcome"] == "agent_error"


# ------------------------------------------------------------------ 12.5 call.ended


async def test_call_ended_to_a_streaming_agent_is_not_a_timeout(rig: Any) -> None:
    # The n8n agent streams every answer for 5 s: longer than FINISH_TIMEOUT (3 s).
    r: Rig = await rig(
        agent_knobs={"reply": "شكرا لك. " * 10, "first_at": 0.05, "complete_at": 5.0}
    )
    loop = asyncio.get_running_loop()
    async with r.caller() as call:
        await wait_for(lambda: call.stats.marks_echoed >= 2)
        await call.stop()
        await call.wait_closed(TIMEOUT)
        ended = loop.time()
    await wait_for(lambda: r.client.app[keys.CALLS].count == 0)
    assert loop.time() - ended < 2.0  # not held for the body
    assert any(q.get("event") == "call.ended" for q in r.requests)
    assert r.metric("gateway_agent_errors_total", {"kind": "timeout"}) == 0


async def test_notify_reads_the_status_line_only(aiohttp_server: Any) -> None:
    import aiohttp

    agent = await aiohttp_server(make_agent_app("n8n", first_at=1.0, complete_at=5.0))
    failing = await aiohttp_server(make_agent_app("failing", status=503))
    settings = make_settings(agent_webhook_url=str(agent.make_url("/hook")))
    request = AgentRequest(event="call.ended", session_id="CA1", record={"outcome": "completed"})
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as session:
        started = loop.time()
        await WebhookBrain(session, settings).notify(request, timeout=TIMEOUT)
        assert loop.time() - started < 0.9  # the first delta is only sent at 1 s
        bad = make_settings(agent_webhook_url=str(failing.make_url("/hook")))
        try:
            await WebhookBrain(session, bad).notify(request, timeout=TIMEOUT)
        except Exception as exc:
            assert getattr(exc, "kind", None) == "http_status"
        else:
            raise AssertionError("a 503 must raise AgentError(http_status)")


# ------------------------------------------------------------------ 10.19 records vs metrics


async def test_turn_outcomes_in_the_record_match_the_metric_after_a_barge_in(
    rig: Any, tmp_path: Path
) -> None:
    long_reply = " ".join(["هذه جملة طويلة من الرد لكي يستمر الكلام وقتا كافيا للمقاطعة."] * 6)
    r: Rig = await rig(
        agent_knobs={"reply": long_reply},
        sim=fast_sim_config(stt_script=(TRANSCRIPT, "توقف من فضلك")),
    )
    async with r.caller() as call:
        await wait_for(lambda: call.stats.marks_echoed >= 2)
        await call.play(utterance(), realtime=True)
        await wait_for(lambda: call.stats.marks_echoed >= 4)  # the reply is playing
        await call.play(utterance(1.0), realtime=True)  # the caller talks over it
        await wait_for(lambda: call.stats.clears_received >= 1)
        await wait_for(lambda: sum(q.get("event") == "utterance" for q in r.requests) == 2)
        await wait_for(lambda: call.stats.marks_echoed >= 7)  # second reply heard
        await call.stop()
        await call.wait_closed(TIMEOUT)
    await wait_for(lambda: r.client.app[keys.CALLS].count == 0)
    turns = records(tmp_path)[0]["turns"]
    recorded = Counter(t["outcome"] for t in turns)
    assert recorded["interrupted"] == 1
    assert turn_metrics(r) == recorded


async def test_the_fallback_text_is_in_the_recorded_reply(rig: Any, tmp_path: Path) -> None:
    r: Rig = await rig("failing", agent_knobs={})
    async with r.caller() as call:
        await wait_for(lambda: call.stats.marks_echoed >= 2)
        await call.play(utterance(), realtime=True)
        await wait_for(lambda: call.stats.marks_echoed >= 4)  # fallback heard
        await call.stop()
        await call.wait_closed(TIMEOUT)
    await wait_for(lambda: r.client.app[keys.CALLS].count == 0)
    turns = records(tmp_path)[0]["turns"]
    turn = next(t for t in turns if t["kind"] == "utterance")
    assert turn["reply"] == FALLBACK and turn["outcome"] == "agent_error"
    assert turn_metrics(r) == Counter(t["outcome"] for t in turns)


async def test_a_too_large_reply_is_counted_and_gets_the_fallback(rig: Any) -> None:
    r: Rig = await rig("malformed", agent_max_reply_bytes=4096, agent_knobs={"body": b"\n" * 8000})
    async with r.caller() as call:
        await wait_for(lambda: call.stats.marks_echoed >= 2)
        before = call.stats.bytes_received
        await call.play(utterance(), realtime=True)
        await wait_for(lambda: call.stats.bytes_received > before + 2000)
    assert r.metric("gateway_agent_errors_total", {"kind": "too_large"}) == 1


# ------------------------------------------------------------------ 10.2 speech outage


def test_the_shipped_clip_is_a_few_seconds_of_8khz_speech() -> None:
    pcm = fallback_clip()
    seconds = len(pcm) / 2 / CLIP_RATE
    assert 1.0 < seconds < 6.0
    assert (
        max(
            abs(int.from_bytes(pcm[i : i + 2], "little", signed=True))
            for i in range(0, len(pcm), 2)
        )
        > 3000
    )  # not silence


async def take_speech_down(r: Rig) -> None:
    """Every Hamsa request fails from now on: sockets, TTS, STT and the REST fallback."""
    down = {"ws_down": True, "tts": ["error"] * 50, "stt": ["error"] * 50}
    down["rest"] = ["error"] * 50
    async with r.client.session.post(r.sim.make_url("/sim/faults"), json=down) as resp:
        assert resp.status == 200


async def test_speech_outage_plays_the_clip_then_hangs_up(rig: Any, tmp_path: Path) -> None:
    r: Rig = await rig(speech_outage_hangup_seconds=1.0, hamsa_retries=0)
    async with r.caller() as call:
        await wait_for(lambda: call.stats.marks_echoed >= 2)  # greeting heard: Hamsa healthy
        await take_speech_down(r)
        before = call.stats.bytes_received
        talking = asyncio.create_task(call.play(utterance() * 20, realtime=True))
        try:
            # STT fails -> the fallback phrase -> TTS fails -> the shipped clip plays.
            clip_bytes = len(fallback_clip()) // 2  # μ-law 8 kHz: one byte per sample
            await wait_for(lambda: call.stats.bytes_received - before >= clip_bytes * 0.9)
            # Then the call ends cleanly, well before the caller stops talking (~34 s).
            code = await call.wait_closed(TIMEOUT * 2)
        finally:
            talking.cancel()
            await asyncio.gather(talking, return_exceptions=True)
        assert code == 1000
    await wait_for(lambda: r.client.app[keys.CALLS].count == 0)
    outcome = {"transport": "twilio", "outcome": "speech_unavailable"}
    assert r.metric("gateway_calls_total", outcome) == 1
    record = records(tmp_path)[0]
    assert record["outcome"] == "speech_unavailable"
    assert turn_metrics(r) == Counter(t["outcome"] for t in record["turns"])


async def test_a_custom_fallback_text_is_rendered_and_played_in_an_outage(
    rig: Any, tmp_path: Path
) -> None:
    """AGENT_FALLBACK_TEXT is rendered through Hamsa while it is up, and that rendering (not
    the shipped default apology) is what a caller hears once TTS is down."""
    custom = "نعتذر منكم، الخدمة غير متاحة في هذه اللحظة، سنعود إليكم قريبا جدا إن شاء الله"
    slow_voice = fast_sim_config(stt_script=(TRANSCRIPT,), ms_per_char=100.0)  # ~7.5 s clip
    r: Rig = await rig(
        sim=slow_voice,
        speech_outage_hangup_seconds=1.0,
        hamsa_retries=0,
        agent_fallback_text=custom,
    )
    clip = r.client.app[keys.FALLBACK]
    await wait_for(lambda: clip.rendered)
    rendered_bytes = len(clip.audio.pcm) // 2 * 8000 // clip.audio.rate  # as μ-law 8 kHz
    shipped_bytes = len(fallback_clip()) // 2
    assert rendered_bytes > 1.5 * shipped_bytes  # so hearing it tells the clips apart
    async with r.caller() as call:
        await wait_for(lambda: call.stats.marks_echoed >= 2)  # greeting heard
        await take_speech_down(r)
        before = call.stats.bytes_received
        talking = asyncio.create_task(call.play(utterance() * 20, realtime=True))
        try:
            await wait_for(lambda: call.stats.bytes_received - before >= rendered_bytes * 0.9)
            await call.wait_closed(TIMEOUT * 2)
        finally:
            talking.cancel()
            await asyncio.gather(talking, return_exceptions=True)
    await wait_for(lambda: r.client.app[keys.CALLS].count == 0)  # the record is written
    record = records(tmp_path)[0]
    assert record["outcome"] == "speech_unavailable"
    assert custom in [t.get("reply") for t in record["turns"]]


# ------------------------------------------------------------------ 10.3 DTMF flood


async def test_a_dtmf_flood_keeps_one_call_bounded() -> None:
    metrics = Metrics()
    sent: list[object] = []

    async def send(event: object) -> None:
        sent.append(event)

    started = CallStarted("CA1", Transport.TWILIO, ULAW_8K)
    session = CallSession(started, send, metrics, on_hangup=lambda reason: None)  # type: ignore[arg-type]
    speech = cast(HamsaSession, object())
    conversation = VoiceAgentConversation(
        session, settings=make_settings(), metrics=metrics, speech=speech, brain=EchoBrain()
    )
    # 400k key presses with no turn loop running (the worst case: nothing drains the queue).
    for i in range(400_000):
        conversation.on_event(Dtmf("1"))
        if i % 1000 == 999:
            conversation.on_event(Dtmf("#"))  # ends an entry: one job each
    conversation_digits = conversation._dtmf.pending
    assert len(conversation_digits) <= MAX_DTMF_DIGITS
    assert conversation._jobs.qsize() <= MAX_QUEUED_JOBS
    dropped_digits = metrics.registry.get_sample_value(
        "gateway_dropped_input_total", {"reason": "dtmf_buffer_full"}
    )
    dropped_jobs = metrics.registry.get_sample_value(
        "gateway_dropped_input_total", {"reason": "job_queue_full"}
    )
    assert dropped_digits == 400_000 - 400 * MAX_DTMF_DIGITS
    assert dropped_jobs == 400 - MAX_QUEUED_JOBS
    assert conversation._dtmf.dropped == dropped_digits
