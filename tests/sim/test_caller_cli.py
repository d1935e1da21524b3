"""`gateway call` against a live gateway over each transport (fast simulator timings)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from gateway.server import keys
from gateway.server.app import create_app
from gateway.sim.caller_cli import (
    CallReport,
    _read_record,
    bundled_utterance,
    place_asterisk_call,
    place_twilio_call,
    waterfall,
)
from gateway.sim.hamsa_sim import create_sim_app
from tests.speech_rig import fast_sim_config, voice_settings


@pytest.fixture
async def gateway(aiohttp_server: Any, tmp_path: Path) -> tuple[TestServer, Path]:
    sim: TestServer = await aiohttp_server(create_sim_app(fast_sim_config()))
    record = tmp_path / "calls.jsonl"
    settings = voice_settings(
        str(sim.make_url("")),
        tmp_path,
        asterisk_ws_username="pbx",
        asterisk_ws_password="secret",
        audiosocket_port=0,
        host="127.0.0.1",
        call_record_path=str(record),
        endpoint_silence_ms=600,
        greeting_text="أهلا وسهلا بك في خدمة العملاء، تفضل بالكلام.",
    )
    server: TestServer = await aiohttp_server(create_app(settings))
    return server, record


def check(report: CallReport) -> None:
    assert report.greeting_heard
    assert len(report.turns) == 1
    turn = report.turns[0]
    assert turn.first_audio_heard is not None
    # Endpointing (600 ms) + fast simulator: the reply is heard within a few seconds.
    assert 0.6 < turn.first_audio_heard - turn.speech_end < 5.0
    assert len(report.heard_ulaw) > 4000  # greeting + reply: over half a second heard


@pytest.mark.parametrize("transport", ["twilio", "asterisk_ws", "audiosocket"])
async def test_call_tool_over_each_transport(
    gateway: tuple[TestServer, Path], transport: str
) -> None:
    server, record = gateway
    base = str(server.make_url("")).rstrip("/")
    utterance = bundled_utterance()
    if transport == "twilio":
        report = await place_twilio_call(base, [utterance], pause=0.2)
    else:
        port = server.app[keys.AUDIOSOCKET].port
        report = await place_asterisk_call(
            base,
            [utterance],
            transport=transport,
            username="pbx",
            password="secret",
            audiosocket_port=port,
            pause=0.2,
        )
    check(report)
    # The waterfall joins the caller's view with the gateway's call record for the same call.
    async with asyncio.timeout(10):
        while (gateway_record := _read_record(str(record), report.call_sid)) is None:
            await asyncio.sleep(0.05)
    row = waterfall(report, gateway_record).splitlines()[2].split()
    assert row[0] == "1" and all(cell.isdigit() for cell in row[1:]), row
