"""A caller hanging up is not an error: the embedded simulator must not log tracebacks.

Issue 10 item 18. When a call ends mid-reply the gateway aborts its TTS socket (unread
audio) or drops an STT request; the simulator sees its peer vanish while it writes. That is
the ordinary end of a call, so nothing may be logged at ERROR (aiohttp's "Error handling
request" traceback included).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.server import keys
from gateway.server.app import create_app
from gateway.sim.asterisk_caller import AudioSocketCaller
from gateway.sim.hamsa_sim import SIM_STATE, create_sim_app
from tests.agent.audio import silence
from tests.call_helpers import wait_for
from tests.speech_rig import fast_sim_config, voice_settings


async def test_callers_hanging_up_mid_reply_log_no_error_in_the_simulator(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    # Slow synthesis with big frames: the gateway hangs up while the simulator is writing.
    sim = await aiohttp_server(create_sim_app(fast_sim_config(realtime_factor=4.0)))
    settings = voice_settings(str(sim.make_url("")), tmp_path, host="127.0.0.1", audiosocket_port=0)
    client: TestClient = await aiohttp_client(create_app(settings))
    port = client.app[keys.AUDIOSOCKET].port  # type: ignore[index]
    for _ in range(3):
        async with AudioSocketCaller("127.0.0.1", port) as call:
            await call.play(silence(0.1), realtime=False)
            await wait_for(lambda: call.stats.packets_received > 20)
            await asyncio.sleep(0.3)  # the greeting is streaming
        await wait_for(lambda: client.app[keys.CALLS].count == 0)  # type: ignore[index]
    await asyncio.sleep(1.0)  # let the simulator notice
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [(r.name, r.getMessage()) for r in errors]


async def test_a_client_vanishing_before_its_transcript_or_audio_is_not_an_error(
    aiohttp_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    import base64
    import json

    from telecodecs.wav import build_wav

    caplog.set_level(logging.INFO)
    config = fast_sim_config(api_key="k", stt_delay=0.2, first_audio_delay=0.2)
    client = await aiohttp_client(create_sim_app(config))
    wav = base64.b64encode(build_wav(b"\x00\x00" * 160)).decode()
    requests = (
        {"type": "stt", "payload": {"audioBase64": wav}},
        {"type": "tts", "payload": {"text": "مرحبا", "speaker": "Majd", "dialect": "ksa"}},
    )
    for request in requests:
        ws = await client.ws_connect("/v1/realtime/ws", headers={"X-Api-Key": "k"})
        await ws.receive_json()  # greeting
        await ws.send_str(json.dumps(request))
        await asyncio.sleep(0.05)
        ws._response.connection.transport.abort()  # type: ignore[union-attr]  # the hang-up
        await asyncio.sleep(0.4)  # the simulator answers into a dead socket
    rest = await client.post(
        "/v1/realtime/tts-stream",
        json={"text": "مرحبا " * 50, "speaker": "Majd", "dialect": "ksa", "languageId": "ar"},
        headers={"Authorization": "Token k"},
    )
    rest.connection.transport.abort()  # type: ignore[union-attr]
    await asyncio.sleep(0.4)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [(r.name, r.getMessage()) for r in errors]


async def test_a_write_into_a_vanished_client_is_logged_as_a_hang_up_not_an_error(
    aiohttp_client: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deterministic: the write fails as aiohttp fails it when the peer is gone."""
    import json

    from aiohttp import ClientConnectionResetError, web

    caplog.set_level(logging.INFO)
    client = await aiohttp_client(create_sim_app(fast_sim_config(api_key="k")))

    async def gone(self: web.WebSocketResponse, data: bytes, compress: Any = None) -> None:
        raise ClientConnectionResetError("Cannot write to closing transport")

    ws = await client.ws_connect("/v1/realtime/ws", headers={"X-Api-Key": "k"})
    await ws.receive_json()
    monkeypatch.setattr(web.WebSocketResponse, "send_bytes", gone)
    payload = {"text": "مرحبا بكم", "speaker": "Majd", "dialect": "ksa", "languageId": "ar"}
    await ws.send_str(json.dumps({"type": "tts", "payload": payload}))
    await ws.receive()  # the ack; then the handler's first audio write fails
    from tests.call_helpers import wait_for as until

    stats = client.app[SIM_STATE].stats
    await until(lambda: stats["client_gone"] == 1)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [(r.name, r.getMessage()) for r in errors]
    await ws.close()
