"""The Hamsa simulator follows docs/protocols/hamsa.md: texts, frames, faults, REST."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestClient

from gateway.sim.hamsa_sim import SIM_STATE, SimConfig, create_sim_app, sim_main
from gateway.sim.speech_synth import SpeechSynth, synthetic_speech
from telecodecs.wav import build_wav, parse_wav

TIMEOUT = 5.0
KEY = "sim-test-key"
FAST = SimConfig(
    api_key=KEY,
    connect_delay=0.0,
    first_audio_delay=0.01,
    realtime_factor=1000.0,
    stt_delay=0.0,
    espeak="",
    ms_per_char=70.0,
)
TEXT = "مرحبا بكم في خدمة العملاء، كيف يمكنني مساعدتك"

ClientFactory = Callable[[web.Application], Awaitable[TestClient[web.Request, web.Application]]]


async def make(aiohttp_client: Any, config: SimConfig = FAST) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = await aiohttp_client(create_sim_app(config))
    return client


async def ws_open(client: TestClient[Any, Any], **kw: Any) -> aiohttp.ClientWebSocketResponse:
    headers = kw.pop("headers", {"X-Api-Key": KEY})
    ws: aiohttp.ClientWebSocketResponse = await client.ws_connect(
        "/v1/realtime/ws", headers=headers, **kw
    )
    return ws


async def tts_exchange(
    ws: aiohttp.ClientWebSocketResponse, text: str = TEXT, **extra: Any
) -> tuple[list[Any], list[bytes]]:
    payload = {
        "text": text,
        "speaker": "Majd",
        "dialect": "ksa",
        "languageId": "ar",
        "mulaw": False,
        **extra,
    }
    await ws.send_str(json.dumps({"type": "tts", "payload": payload}))
    texts: list[Any] = []
    frames: list[bytes] = []
    async with asyncio.timeout(TIMEOUT):
        while True:
            msg = await ws.receive()
            if msg.type is WSMsgType.BINARY:
                frames.append(msg.data)
                continue
            if msg.type is not WSMsgType.TEXT:
                texts.append(msg.type)
                return texts, frames
            texts.append(json.loads(msg.data))
            if texts[-1]["type"] in ("end", "error"):
                return texts, frames


async def test_greeting_then_tts_with_exact_texts_and_observed_frame_sizes(
    aiohttp_client: Any,
) -> None:
    client = await make(aiohttp_client)
    ws = await ws_open(client)
    greeting = await ws.receive_json(timeout=TIMEOUT)
    assert greeting == {
        "type": "info",
        "payload": {"message": "Connected to realtime WebSocket server"},
    }
    texts, frames = await tts_exchange(ws)
    assert texts == [
        {"type": "ack", "payload": {"message": "Real time text to speach connection establesh"}},
        {"type": "end", "payload": {"message": "End of TTS stream"}},
    ]
    audio = b"".join(frames)
    assert audio == synthetic_speech(TEXT, 70.0)
    assert len(frames[0]) == 16018
    assert all(32768 <= len(f) <= 65536 for f in frames[1:-1])
    # ~70 ms per character of PCM16 16 kHz
    assert len(audio) == pytest.approx(len(TEXT) * 0.070 * 32000, rel=0.05)
    await ws.close()


async def test_query_key_and_mulaw(aiohttp_client: Any) -> None:
    client = await make(aiohttp_client)
    ws = await ws_open(client, headers={}, params={"api_key": KEY})
    await ws.receive_json(timeout=TIMEOUT)
    _, frames = await tts_exchange(ws, mulaw=True)
    audio = b"".join(frames)
    # μ-law 8 kHz: one byte per sample, a quarter of the PCM16 16 kHz size
    assert len(audio) == pytest.approx(len(TEXT) * 0.070 * 8000, rel=0.05)
    assert len(frames[0]) == 16018 // 4 // 2 * 2
    await ws.close()


async def test_bad_key_accept_then_close_4001(aiohttp_client: Any) -> None:
    client = await make(aiohttp_client)
    ws = await ws_open(client, headers={"X-Api-Key": "wrong"})
    msg = await ws.receive(timeout=TIMEOUT)
    assert msg.type is WSMsgType.CLOSE
    assert ws.close_code == 4001


async def test_bad_key_http_mode_refuses_upgrade(aiohttp_client: Any) -> None:
    client = await make(aiohttp_client, SimConfig(**{**_fields(FAST), "auth_failure": "http"}))
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await ws_open(client, headers={"X-Api-Key": "wrong"})
    assert info.value.status == 401


def _fields(config: SimConfig) -> dict[str, Any]:
    return {name: getattr(config, name) for name in config.__dataclass_fields__}


async def test_fault_queue_short_error_riff_and_wallet(aiohttp_client: Any) -> None:
    client = await make(aiohttp_client)
    state = client.app[SIM_STATE]
    state.tts_faults.extend(["short", "error", "riff", "wallet"])
    ws = await ws_open(client)
    await ws.receive_json(timeout=TIMEOUT)
    texts, frames = await tts_exchange(ws)
    assert [t["type"] for t in texts] == ["ack", "end"]
    assert [len(f) for f in frames] == [640]
    texts, frames = await tts_exchange(ws)
    assert texts == [{"type": "error", "payload": {"message": "Internal server error"}}]
    assert frames == []
    _, frames = await tts_exchange(ws)
    audio = b"".join(frames)
    assert audio[:4] == b"RIFF" and audio[8:12] == b"WAVE"
    assert struct.unpack("<I", audio[4:8])[0] == 0xFFFFFFFF
    assert audio[44:] == synthetic_speech(TEXT, 70.0)
    texts, _ = await tts_exchange(ws)
    assert texts == [WSMsgType.CLOSE]
    assert ws.close_code == 4003
    stats = await (await client.get("/sim/stats")).json()
    assert stats["tts_requests"] == 4
    assert stats["ws_connections"] == 1
    assert stats["short_responses"] == 1


async def test_drop_mid_stream_loses_connection(aiohttp_client: Any) -> None:
    client = await make(aiohttp_client, SimConfig(**{**_fields(FAST), "tts_faults": ("drop",)}))
    ws = await ws_open(client)
    await ws.receive_json(timeout=TIMEOUT)
    texts, frames = await tts_exchange(ws)
    assert len(frames) == 1
    assert texts[-1] in (WSMsgType.CLOSED, WSMsgType.ERROR, WSMsgType.CLOSE)
    assert ws.close_code != 1000


async def test_requests_served_in_order(aiohttp_client: Any) -> None:
    client = await make(aiohttp_client)
    ws = await ws_open(client)
    await ws.receive_json(timeout=TIMEOUT)
    payload = {"text": "قصير جدا هنا", "speaker": "Majd", "dialect": "ksa"}
    wav = base64.b64encode(build_wav(b"\x00\x00" * 160)).decode()
    await ws.send_str(json.dumps({"type": "tts", "payload": payload}))
    await ws.send_str(json.dumps({"type": "stt", "payload": {"audioBase64": wav}}))
    seen: list[str] = []
    async with asyncio.timeout(TIMEOUT):
        while not seen or not seen[-1].startswith("transcript:"):
            msg = await ws.receive()
            if msg.type is WSMsgType.BINARY:
                seen.append("audio")
            elif msg.data.startswith("{"):
                seen.append(json.loads(msg.data)["type"])
            else:
                seen.append("transcript:" + msg.data)
    # the STT answer comes only after the whole TTS stream (no interleaving)
    assert seen[0] == "ack" and seen[-2] == "end"
    assert seen[-1] == "transcript:مرحبا، أريد أن أسأل عن طلبي"
    await ws.close()


async def test_stt_wav_only_thinking_and_script(aiohttp_client: Any) -> None:
    config = SimConfig(
        **{
            **_fields(FAST),
            "stt_script": ("one", "two"),
            "stt_faults": ("thinking",),
            "stall_seconds": 0.05,
        }
    )
    client = await make(aiohttp_client, config)
    ws = await ws_open(client)
    await ws.receive_json(timeout=TIMEOUT)
    raw = base64.b64encode(b"\x00\x01" * 100).decode()
    await ws.send_str(json.dumps({"type": "stt", "payload": {"audioBase64": raw}}))
    assert await ws.receive_json(timeout=TIMEOUT) == {
        "type": "error",
        "payload": {"message": "Only WAV files are supported"},
    }
    wav = base64.b64encode(build_wav(b"\x00\x00" * 160)).decode()
    for _ in range(3):
        await ws.send_str(json.dumps({"type": "stt", "payload": {"audioBase64": wav}}))
    assert await ws.receive_str(timeout=TIMEOUT) == "[THINKING]"  # then silence (stall)
    assert await ws.receive_str(timeout=TIMEOUT) == "one"
    assert await ws.receive_str(timeout=TIMEOUT) == "two"
    await ws.close()


async def test_idle_close_1000(aiohttp_client: Any) -> None:
    client = await make(aiohttp_client, SimConfig(**{**_fields(FAST), "idle_timeout": 0.05}))
    ws = await ws_open(client)
    await ws.receive_json(timeout=TIMEOUT)
    msg = await ws.receive(timeout=TIMEOUT)
    assert msg.type is WSMsgType.CLOSE and ws.close_code == 1000
    stats = await (await client.get("/sim/stats")).json()
    assert stats["idle_closes"] == 1


async def test_ws_down_refuses_with_503(aiohttp_client: Any) -> None:
    client = await make(aiohttp_client)
    resp = await client.post("/sim/faults", json={"ws_down": True, "tts": ["short"]})
    assert (await resp.json())["tts_faults_pending"] == ["short"]
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await ws_open(client)
    assert info.value.status == 503
    bad = await client.post("/sim/faults", json={"tts": ["nonsense"]})
    assert bad.status == 400


@pytest.mark.parametrize("riff", [True, False])
async def test_rest_tts_stream_chunked_riff_or_raw(aiohttp_client: Any, riff: bool) -> None:
    client = await make(aiohttp_client, SimConfig(**{**_fields(FAST), "rest_stream_riff": riff}))
    body = {"text": TEXT, "speaker": "Majd", "dialect": "ksa", "mulaw": False}
    resp = await client.post(
        "/v1/realtime/tts-stream", json=body, headers={"Authorization": f"Token {KEY}"}
    )
    assert resp.status == 200
    assert resp.headers["Transfer-Encoding"] == "chunked"
    assert resp.headers["Content-Type"] == "audio/wav"
    data = await resp.read()
    pcm = synthetic_speech(TEXT, 70.0)
    assert data == (data[:44] + pcm if riff else pcm)
    if riff:
        assert data[:4] == b"RIFF"


async def test_rest_auth_and_errors(aiohttp_client: Any) -> None:
    client = await make(aiohttp_client)
    body = {"text": TEXT, "speaker": "Majd", "dialect": "ksa"}
    resp = await client.post("/v1/realtime/tts", json=body, headers={"X-Api-Key": KEY})
    assert resp.status == 401
    assert await resp.json() == {"code": 401, "message": "Unauthorized"}
    resp = await client.post(
        "/v1/realtime/tts", json={"text": "x"}, headers={"Authorization": f"Token {KEY}"}
    )
    assert resp.status == 400 and (await resp.json())["message"] == "speaker is required"
    await client.post("/sim/faults", json={"wallet_empty": True})
    resp = await client.post(
        "/v1/realtime/tts", json=body, headers={"Authorization": f"Token {KEY}"}
    )
    assert resp.status == 429 and (await resp.json())["code"] == 10429


async def test_rest_tts_whole_wav_and_stt_both_shapes(aiohttp_client: Any) -> None:
    client = await make(aiohttp_client)
    auth = {"Authorization": f"Token {KEY}"}
    resp = await client.post(
        "/v1/realtime/tts", headers=auth, json={"text": TEXT, "speaker": "Majd", "dialect": "ksa"}
    )
    wav = parse_wav(await resp.read())
    assert (wav.sample_rate, wav.channels, wav.sample_width) == (16000, 1, 2)
    stt = {"audioBase64": base64.b64encode(build_wav(b"\x00\x00" * 160)).decode()}
    resp = await client.post("/v1/realtime/stt", headers=auth, json=stt)
    assert (await resp.json())["data"]["text"] == "مرحبا، أريد أن أسأل عن طلبي"
    plain = await make(aiohttp_client, SimConfig(**{**_fields(FAST), "rest_stt_envelope": False}))
    resp = await plain.post("/v1/realtime/stt", headers=auth, json=stt)
    assert await resp.json() == {"text": "مرحبا، أريد أن أسأل عن طلبي"}


async def test_synth_cache_and_fake_espeak(tmp_path: Any) -> None:
    # A stand-in espeak-ng that writes a 22050 Hz WAV, as the real one does.
    pcm = struct.pack("<" + "h" * 2205, *([1000, -1000] * 1102 + [0]))
    out = tmp_path / "out.wav"
    out.write_bytes(build_wav(pcm, 22050))
    fake = tmp_path / "espeak-ng"
    fake.write_text(f"#!/bin/sh\ncat {out}\n")
    fake.chmod(0o755)
    synth = SpeechSynth(espeak=str(fake))
    audio = await synth.pcm16k("نص")
    assert len(audio) == pytest.approx(1600 * 2, abs=64)  # 0.1 s at 16 kHz
    again = await asyncio.gather(synth.pcm16k("نص"), synth.mulaw8k("نص"))
    assert again[0] is audio and len(again[1]) == pytest.approx(800, abs=32)
    assert synth.synthesized == 1
    broken = SpeechSynth(espeak=str(tmp_path / "missing"))
    assert await broken.pcm16k("abc") == synthetic_speech("abc")


def test_sim_main_rejects_unreadable_script(tmp_path: Any) -> None:
    assert sim_main(["--stt-script", str(tmp_path / "none.txt")]) == 2
