"""Whole voice-agent calls over real sockets: Twilio caller, Hamsa simulator, test webhooks."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.config import AgentMode
from gateway.server import keys
from gateway.server.app import create_app
from gateway.sim.hamsa_sim import SimConfig, create_sim_app
from gateway.sim.twilio_caller import TwilioCaller
from telecodecs.g711 import pcm16_to_ulaw
from tests.agent.audio import silence, voiced
from tests.agent.fake_agents import REQUESTS_KEY, make_agent_app
from tests.conftest import TIMEOUT
from tests.speech_rig import fast_sim_config, voice_settings

TRANSCRIPT = "مرحبا، أريد أن أعرف حالة الطقس اليوم في الرياض من فضلك"
REPLY = (
    "الطقس اليوم مشمس وجميل في الرياض، ودرجة الحرارة معتدلة. "
    "هل تريد أن أخبرك عن توقعات الغد أيضا؟ يمكنني مساعدتك في ذلك بكل سرور."
)


def utterance(seconds: float = 0.8) -> bytes:
    """Caller speech (a voiced, speech-like signal) followed by silence, as μ-law."""
    return pcm16_to_ulaw(voiced(seconds) + silence(0.9))


async def wait_for(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


class Rig:
    """A gateway wired to a Hamsa simulator and a test agent, plus a caller factory."""

    def __init__(self, client: TestClient, sim: TestServer, agent: web.Application) -> None:
        self.client = client
        self.sim = sim
        self.agent = agent

    @property
    def requests(self) -> list[dict[str, Any]]:
        return self.agent[REQUESTS_KEY]

    def caller(self, token: str = "") -> TwilioCaller:
        return TwilioCaller(
            self.client.session,
            str(self.client.make_url("/twilio/media")),
            public_ws_url="wss://gw.example.com/twilio/media",
            auth_token=token,
        )

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        value = self.client.app[keys.METRICS].registry.get_sample_value(name, labels or {})
        return 0.0 if value is None else float(value)

    async def sim_stats(self) -> dict[str, Any]:
        async with self.client.session.get(self.sim.make_url("/sim/stats")) as r:
            data: dict[str, Any] = await r.json()
            return data


@pytest.fixture
async def rig(aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path) -> Any:
    async def build(agent_kind: str = "n8n", sim: SimConfig | None = None, **overrides: Any) -> Rig:
        sim_config = sim or fast_sim_config(stt_script=(TRANSCRIPT,))
        sim_server: TestServer = await aiohttp_server(create_sim_app(sim_config))
        knobs = overrides.pop("agent_knobs", {"reply": REPLY})
        agent_app = make_agent_app(agent_kind, **knobs)
        agent_server: TestServer = await aiohttp_server(agent_app)
        settings = voice_settings(
            str(sim_server.make_url("")),
            tmp_path,
            agent=AgentMode.WEBHOOK,
            agent_webhook_url=str(agent_server.make_url("/webhook/agent")),
            **overrides,
        )
        client: TestClient = await aiohttp_client(create_app(settings))
        return Rig(client, sim_server, agent_app)

    return build


async def test_a_turn_speaks_the_agents_reply_and_records_the_call(
    rig: Any, tmp_path: Path
) -> None:
    r: Rig = await rig()
    async with r.caller() as call:
        # The greeting plays first.
        await wait_for(lambda: call.stats.bytes_received > 0)
        await wait_for(lambda: call.stats.marks_echoed >= 2)
        greeting_bytes = call.stats.bytes_received
        await call.play(utterance(), realtime=True)
        await wait_for(lambda: any(q.get("event") == "utterance" for q in r.requests))
        # Reply audio arrives: more than a second of it (two sentences of Arabic speech).
        await wait_for(lambda: call.stats.bytes_received - greeting_bytes > 8000)
        await wait_for(lambda: call.stats.marks_echoed >= 5)  # first + 2 sentences + greeting
        await call.stop()
        await call.wait_closed(TIMEOUT)
    utterance_request = next(q for q in r.requests if q.get("event") == "utterance")
    assert utterance_request["text"] == TRANSCRIPT
    assert utterance_request["session_id"] == call.call_sid
    assert utterance_request["call"]["transport"] == "twilio"
    await wait_for(lambda: any(q.get("event") == "call.ended" for q in r.requests))
    lines = (tmp_path / "calls.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["call_id"] == call.call_sid and record["outcome"] == "completed"
    turn = next(t for t in record["turns"] if t["kind"] == "utterance")
    assert turn["transcript"] == TRANSCRIPT and turn["reply"] == REPLY
    for stage in ("endpointing", "stt", "agent_first_text", "tts_first_audio", "turn", "heard"):
        assert stage in turn["timings"], stage
    assert r.metric("gateway_stage_latency_seconds_count", {"stage": "turn"}) >= 1
    assert r.metric("gateway_stage_latency_seconds_count", {"stage": "heard"}) >= 1
    assert r.metric("gateway_turns_total", {"outcome": "ok"}) >= 2


async def test_first_sentence_plays_before_the_webhook_finishes(rig: Any) -> None:
    r: Rig = await rig(agent_knobs={"reply": REPLY, "first_at": 0.1, "complete_at": 2.5})
    async with r.caller() as call:
        await wait_for(lambda: call.stats.marks_echoed >= 2)  # greeting heard
        before = call.stats.bytes_received
        await call.play(utterance(), realtime=True)
        await wait_for(lambda: any(q.get("event") == "utterance" for q in r.requests))
        asked = asyncio.get_running_loop().time()
        await wait_for(lambda: call.stats.bytes_received > before)
        first_audio_after = asyncio.get_running_loop().time() - asked
        assert first_audio_after < 2.0, first_audio_after  # the webhook completes at 2.5 s


async def test_barge_in_clears_and_next_request_carries_what_was_heard(rig: Any) -> None:
    long_reply = " ".join(["هذه جملة طويلة من الرد لكي يستمر الكلام وقتا كافيا للمقاطعة."] * 6)
    r: Rig = await rig(
        agent_knobs={"reply": long_reply},
        sim=fast_sim_config(stt_script=(TRANSCRIPT, "توقف من فضلك")),
    )
    async with r.caller() as call:
        await wait_for(lambda: call.stats.marks_echoed >= 2)
        await call.play(utterance(), realtime=True)
        await wait_for(lambda: sum(q.get("event") == "utterance" for q in r.requests) == 1)
        await wait_for(lambda: call.stats.marks_echoed >= 4)  # reply is playing
        await call.play(utterance(1.0), realtime=True)  # the caller talks over it
        await wait_for(lambda: call.stats.clears_received >= 1)
        await wait_for(lambda: sum(q.get("event") == "utterance" for q in r.requests) == 2)
    second = [q for q in r.requests if q.get("event") == "utterance"][1]
    assert second["text"] == "توقف من فضلك"
    interrupted = second["interrupted"]
    assert interrupted is not None
    assert interrupted["reply"].startswith("هذه جملة")
    assert interrupted["heard_ms"] > 0
    assert len(interrupted["heard"]) < len(interrupted["reply"])
    assert r.metric("gateway_interruptions_total", {"transport": "twilio"}) == 1
    reaction = r.metric("gateway_stage_latency_seconds_sum", {"stage": "barge_in_reaction"})
    assert 0 < reaction < 1.0


async def test_dtmf_reaches_the_webhook_aggregated(rig: Any) -> None:
    r: Rig = await rig(dtmf_timeout_ms=300)
    async with r.caller() as call:
        await wait_for(lambda: call.stats.marks_echoed >= 2)
        for digit in "42#":
            await call.press(digit)
        await wait_for(lambda: any(q.get("event") == "dtmf" for q in r.requests))
    dtmf = next(q for q in r.requests if q.get("event") == "dtmf")
    assert dtmf["digits"] == "42"


async def test_agent_hangup_ends_the_call_after_the_sentence(rig: Any) -> None:
    r: Rig = await rig(
        "actions",
        agent_knobs={"reply": "شكرا لاتصالك، مع السلامة وإلى اللقاء قريبا.", "hangup": True},
    )
    async with r.caller() as call:
        await wait_for(lambda: call.stats.marks_echoed >= 2)
        await call.play(utterance(), realtime=True)
        code = await call.wait_closed(TIMEOUT)
        assert code == 1000
        # The goodbye was heard before the hang-up: its sentence mark was echoed.
        assert any(
            name.endswith(".s0") and name.startswith("t2") for name in call.stats.mark_echo_times
        )


async def test_webhook_timeout_speaks_the_fallback(rig: Any) -> None:
    r: Rig = await rig("slow", agent_timeout=0.3, agent_knobs={})
    async with r.caller() as call:
        await wait_for(lambda: call.stats.marks_echoed >= 2)
        before = call.stats.bytes_received
        await call.play(utterance(), realtime=True)
        # The fallback phrase (~30 characters, ~0.35 s at the simulator's 12 ms/char).
        await wait_for(lambda: call.stats.bytes_received > before + 2000)
    assert r.metric("gateway_agent_errors_total", {"kind": "timeout"}) >= 1
    assert r.metric("gateway_turns_total", {"outcome": "agent_error"}) >= 1


async def test_short_tts_response_is_retried_on_a_fresh_connection(rig: Any) -> None:
    sim = fast_sim_config(stt_script=(TRANSCRIPT,), tts_faults=("short",))
    r: Rig = await rig(sim=sim)
    async with r.caller() as call:
        # The greeting's first TTS answer is the "640-byte" failure; the retry plays it.
        await wait_for(lambda: call.stats.marks_echoed >= 2)
        assert call.stats.bytes_received > 4000
    assert r.metric("gateway_hamsa_short_responses_total") >= 1


async def test_hamsa_drop_mid_reply_recovers_on_a_fresh_connection(rig: Any) -> None:
    r: Rig = await rig()
    async with r.caller() as call:
        await wait_for(lambda: call.stats.marks_echoed >= 2)  # greeting done
        # The reply's first sentence: the connection drops mid-stream (after audio flowed).
        async with r.client.session.post(
            r.sim.make_url("/sim/faults"), json={"tts": ["drop"]}
        ) as resp:
            assert resp.status == 200
        await call.play(utterance(), realtime=True)
        # The second sentence still plays (its mark is echoed), on a fresh connection.
        await wait_for(lambda: "t2.s1" in call.stats.mark_echo_times)
    stats = await r.sim_stats()
    assert stats["ws_accepted"] >= 3  # two warm sockets + a replacement
    turn_outcomes = r.metric("gateway_turns_total", {"outcome": "tts_error"})
    assert turn_outcomes == 1


async def test_nothing_is_left_running_after_calls(rig: Any) -> None:
    r: Rig = await rig()
    current = asyncio.current_task()
    baseline = {t for t in asyncio.all_tasks() if t is not current}
    for _ in range(2):
        async with r.caller() as call:
            await wait_for(lambda: call.stats.marks_echoed >= 1)
            await call.play(utterance(0.5), realtime=True)
            await call.stop()
            await call.wait_closed(TIMEOUT)
    await wait_for(lambda: r.client.app[keys.CALLS].count == 0)
    await asyncio.sleep(0.05)
    leftover = {t for t in asyncio.all_tasks() if t is not current and not t.done()} - baseline
    names = sorted(t.get_name() for t in leftover)
    # Only the process-wide pool may have background tasks (refill); no call-owned task.
    assert not [
        n
        for n in names
        if ":" in n
        and n.split(":")[0] in {"turn", "ticker", "conversation", "barge-in", "max_duration"}
    ], names
    assert r.metric("gateway_call_tasks_leaked_total") == 0


async def test_agent_transfer_redirects_the_twilio_call_to_dial(
    rig: Any, aiohttp_server: Any
) -> None:
    updates: list[dict[str, str]] = []

    async def update(request: web.Request) -> web.Response:
        updates.append(dict(await request.post()))  # type: ignore[arg-type]
        return web.json_response({"status": "in-progress"})

    rest = web.Application()
    rest.router.add_post("/2010-04-01/Accounts/{account}/Calls/{call}.json", update)
    rest_server: TestServer = await aiohttp_server(rest)
    r: Rig = await rig(
        "actions",
        agent_knobs={
            "reply": "سأحولك الآن إلى أحد موظفينا، انتظر لحظة من فضلك.",
            "transfer": "+15551234567",
        },
        twilio_auth_token="tok",
        twilio_account_sid="AC1",
        twilio_api_base_url=str(rest_server.make_url("")).rstrip("/"),
    )
    async with r.caller(token="tok") as call:
        await wait_for(lambda: call.stats.marks_echoed >= 2)
        await call.play(utterance(), realtime=True)
        await wait_for(lambda: len(updates) == 1)
        # The reply was heard before the transfer.
        assert "t2.s0" in call.stats.mark_echo_times
    assert "<Dial><Number>+15551234567</Number></Dial>" in updates[0]["Twiml"]


async def test_caller_silence_reprompts_then_hangs_up(rig: Any) -> None:
    r: Rig = await rig(
        reprompt_after=0.6, reprompt_max=1, reprompt_text="هل ما زلت معي؟ تفضل بالكلام من فضلك."
    )
    async with r.caller() as call:
        await wait_for(lambda: call.stats.marks_echoed >= 2)  # greeting heard
        # The caller says nothing (Twilio keeps sending silence): one re-prompt, then hang-up.
        silence_task = asyncio.create_task(call.silence(6.0, realtime=True))
        try:
            code = await call.wait_closed(TIMEOUT)
        finally:
            silence_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionResetError):
                await silence_task
        assert code == 1000
        assert call.stats.marks_echoed >= 4  # greeting (2) + the re-prompt (2)
    outcome = {"transport": "twilio", "outcome": "caller_silent"}
    await wait_for(lambda: r.metric("gateway_calls_total", outcome) == 1)


async def test_greeting_comes_from_the_agent_when_none_is_configured(rig: Any) -> None:
    r: Rig = await rig(greeting_text="", agent_knobs={"reply": REPLY})
    async with r.caller() as call:
        await wait_for(lambda: call.stats.marks_echoed >= 2)
    started = [q for q in r.requests if q.get("event") == "call.started"]
    assert len(started) == 1 and started[0]["turn"] == 1


async def test_empty_transcripts_are_dropped(rig: Any) -> None:
    r: Rig = await rig(sim=fast_sim_config(stt_script=("",)))
    async with r.caller() as call:
        await wait_for(lambda: call.stats.marks_echoed >= 2)
        await call.play(utterance(), realtime=True)
        await wait_for(lambda: r.metric("gateway_turns_total", {"outcome": "empty"}) == 1)
    assert not any(q.get("event") == "utterance" for q in r.requests)


@pytest.mark.parametrize("kind", ["json", "sse", "text"])
async def test_every_reply_form_is_spoken(rig: Any, kind: str) -> None:
    r: Rig = await rig(kind, agent_knobs={"reply": REPLY})
    async with r.caller() as call:
        await wait_for(lambda: call.stats.marks_echoed >= 2)
        before = call.stats.bytes_received
        await call.play(utterance(), realtime=True)
        # Both sentences of the reply are synthesized and their marks echoed.
        await wait_for(lambda: "t2.s1" in call.stats.mark_echo_times)
        assert call.stats.bytes_received - before > 8000
    assert r.metric("gateway_turns_total", {"outcome": "ok"}) >= 2


@pytest.mark.parametrize(
    ("kind", "error"), [("failing", "http_status"), ("malformed", "malformed")]
)
async def test_a_broken_agent_gets_the_fallback_phrase(rig: Any, kind: str, error: str) -> None:
    r: Rig = await rig(kind, agent_knobs={})
    async with r.caller() as call:
        await wait_for(lambda: call.stats.marks_echoed >= 2)
        before = call.stats.bytes_received
        await call.play(utterance(), realtime=True)
        await wait_for(lambda: call.stats.bytes_received > before + 2000)
        assert not call.closed  # the call goes on
    assert r.metric("gateway_agent_errors_total", {"kind": error}) >= 1
