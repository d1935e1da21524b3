"""Whole calls with AGENT=llm: Twilio caller, Hamsa simulator, a local OpenAI-style server."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.config import AgentMode
from gateway.server import keys
from gateway.server.app import create_app
from gateway.sim.hamsa_sim import create_sim_app
from gateway.sim.twilio_caller import TwilioCaller
from tests.agent.fake_openai import OPENAI_REQUESTS_KEY, Answer, make_openai_app
from tests.agent.test_voice_calls import TRANSCRIPT, utterance
from tests.call_helpers import wait_for
from tests.conftest import TIMEOUT
from tests.speech_rig import fast_sim_config, voice_settings

SECRET = "sk-live-whole-call-SECRET-42"
SYSTEM = "أنت مساعد اختبار في مكالمة هاتفية."
GREETING = "أهلا وسهلا بك في خدمة العملاء، كيف يمكنني مساعدتك؟"
LONG_REPLY = " ".join(["هذه جملة طويلة من الرد لكي يستمر الكلام وقتا كافيا للمقاطعة."] * 6)
STOP = "توقف من فضلك"


class LlmRig:
    def __init__(self, client: TestClient, llm: web.Application, record_path: Path) -> None:
        self.client = client
        self.llm = llm
        self.record_path = record_path

    @property
    def requests(self) -> list[dict[str, Any]]:
        return self.llm[OPENAI_REQUESTS_KEY]

    def caller(self) -> TwilioCaller:
        return TwilioCaller(
            self.client.session,
            str(self.client.make_url("/twilio/media")),
            public_ws_url="wss://gw.example.com/twilio/media",
        )

    def metric(self, name: str, labels: dict[str, str]) -> float:
        value = self.client.app[keys.METRICS].registry.get_sample_value(name, labels)
        return 0.0 if value is None else float(value)

    def record(self) -> dict[str, Any]:
        lines = self.record_path.read_text(encoding="utf-8").splitlines()
        data: dict[str, Any] = json.loads(lines[-1])
        return data


@pytest.fixture
async def llm_rig(aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path) -> Any:
    async def build(
        script: list[Answer], stt: tuple[str, ...] = (TRANSCRIPT,), server_key: str = SECRET
    ) -> LlmRig:
        sim: TestServer = await aiohttp_server(create_sim_app(fast_sim_config(stt_script=stt)))
        llm_app = make_openai_app(script, api_key=server_key)
        llm: TestServer = await aiohttp_server(llm_app)
        settings = voice_settings(
            str(sim.make_url("")),
            tmp_path,
            agent=AgentMode.LLM,
            llm_base_url=str(llm.make_url("/v1")),
            llm_api_key=SECRET,
            llm_model="test-model",
            llm_system_prompt=SYSTEM,
            greeting_text=GREETING,
        )
        client: TestClient = await aiohttp_client(create_app(settings))
        return LlmRig(client, llm_app, tmp_path / "calls.jsonl")

    return build


async def test_barge_in_history_has_only_what_the_caller_heard(llm_rig: Any) -> None:
    r: LlmRig = await llm_rig(
        [Answer(LONG_REPLY, chunk_delay=0.005), Answer("حسنا، توقفت. كيف أساعدك؟")],
        stt=(TRANSCRIPT, STOP),
    )
    async with r.caller() as call:
        await wait_for(lambda: call.stats.marks_echoed >= 2)  # the greeting was heard
        await call.play(utterance(), realtime=True)
        await wait_for(lambda: "t2.s0" in call.stats.mark_echo_times)  # one sentence heard
        await call.play(utterance(1.0), realtime=True)  # the caller talks over the rest
        await wait_for(lambda: call.stats.clears_received >= 1)
        await wait_for(lambda: len(r.requests) == 2)
        await call.stop()
        await call.wait_closed(TIMEOUT)
    await wait_for(lambda: r.record_path.exists())
    turn = next(t for t in r.record()["turns"] if t["kind"] == "utterance")
    heard = turn["heard"]
    assert heard and LONG_REPLY.startswith(heard) and len(heard) < len(LONG_REPLY)
    assert r.requests[0]["body"]["messages"] == [
        {"role": "system", "content": SYSTEM},
        {"role": "assistant", "content": GREETING},
        {"role": "user", "content": TRANSCRIPT},
    ]
    assert r.requests[1]["body"]["messages"] == [
        {"role": "system", "content": SYSTEM},
        {"role": "assistant", "content": GREETING},
        {"role": "user", "content": TRANSCRIPT},
        {"role": "assistant", "content": heard},
        {"role": "user", "content": STOP},
    ]
    assert all(q["authorization"] == f"Bearer {SECRET}" for q in r.requests)


async def test_end_call_tool_hangs_up_after_the_goodbye(llm_rig: Any) -> None:
    r: LlmRig = await llm_rig(
        [Answer("شكرا لاتصالك، مع السلامة وإلى اللقاء قريبا.", tool_calls=[("end_call", "{}")])]
    )
    async with r.caller() as call:
        await wait_for(lambda: call.stats.marks_echoed >= 2)
        await call.play(utterance(), realtime=True)
        assert await call.wait_closed(TIMEOUT) == 1000
        assert "t2.s0" in call.stats.mark_echo_times  # the goodbye was heard first
    await wait_for(lambda: r.record_path.exists())
    assert r.record()["outcome"] == "agent_hangup"


async def test_a_rejected_key_gets_the_fallback_and_is_never_logged(
    llm_rig: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    r: LlmRig = await llm_rig([Answer("لن يقال.")], server_key="sk-the-right-one")
    async with r.caller() as call:
        await wait_for(lambda: call.stats.marks_echoed >= 2)
        before = call.stats.bytes_received
        await call.play(utterance(), realtime=True)
        await wait_for(lambda: call.stats.bytes_received > before + 2000)  # the fallback
        assert not call.closed
    assert r.metric("gateway_agent_errors_total", {"kind": "http_status"}) >= 1
    assert "invalid_api_key" in caplog.text  # the failure is logged...
    assert SECRET not in caplog.text  # ...without the key the server echoed back
