"""Whole AudioSocket calls over real TCP on 127.0.0.1, against the simulated Asterisk peer.

The peer (gateway.sim.asterisk_caller.AudioSocketCaller) treats any kind other than 0x00 or
audio, or an empty audio packet, as a protocol error, as ``app_audiosocket.c`` does.
"""

from __future__ import annotations

import asyncio
import json
import struct
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.calls import CallRegistry, CallSession, Conversation
from gateway.config import AgentMode
from gateway.metrics import Metrics
from gateway.server import keys
from gateway.server.app import create_app
from gateway.sim.asterisk_caller import AudioSocketCaller, basic_auth_header, packet
from gateway.telephony.audiosocket_server import AudioSocketServer
from gateway.telephony.events import (
    PCM16_8K,
    CallEnded,
    CallerAudio,
    ClearAudio,
    Dtmf,
    MarkPlayed,
    PlayAudio,
    SetMark,
)
from telecodecs.g711 import pcm16_to_ulaw
from tests.agent.audio import silence, voiced
from tests.call_helpers import Recorder, other_tasks, wait_for
from tests.conftest import TIMEOUT, make_settings
from tests.speech_rig import REPLY, TRANSCRIPT, speech_backends, voice_settings

FRAME = 320  # 20 ms of slin 8 kHz
ZERO = bytes(FRAME)


def tone(frames: int, seed: int = 1) -> bytes:
    """Distinct non-silent slin frames (no frame is all zeros)."""
    return bytes(((i * 7 + seed * 13 + (i // FRAME) * 31) % 251) | 1 for i in range(frames * FRAME))


def audible(pcm: bytes) -> bytes:
    """The non-silent 20 ms frames of what the caller heard, in order."""
    chunks = (pcm[i : i + FRAME] for i in range(0, len(pcm), FRAME))
    return b"".join(c for c in chunks if c != ZERO[: len(c)])


class Gateway:
    def __init__(self, client: TestClient, recorders: list[Recorder]) -> None:
        self.client = client
        self.recorders = recorders

    @property
    def port(self) -> int:
        port: int = self.client.app[keys.AUDIOSOCKET].port  # type: ignore[index]
        return port

    def caller(self, **kwargs: Any) -> AudioSocketCaller:
        return AudioSocketCaller("127.0.0.1", self.port, **kwargs)

    @property
    def calls(self) -> int:
        count: int = self.client.app[keys.CALLS].count  # type: ignore[index]
        return count

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        registry = self.client.app[keys.METRICS].registry  # type: ignore[index]
        value = registry.get_sample_value(name, labels or {})
        return 0.0 if value is None else float(value)


GatewayFactory = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def gateway(aiohttp_client: Any) -> GatewayFactory:
    async def start(record: bool = False, **overrides: Any) -> Gateway:
        settings = make_settings(
            **{"agent": AgentMode.PARROT, "host": "127.0.0.1", "audiosocket_port": 0, **overrides}
        )
        app = create_app(settings)
        recorders: list[Recorder] = []
        if record:

            def factory(session: CallSession) -> Conversation:
                recorder = Recorder(session)
                recorders.append(recorder)
                return recorder

            app[keys.CONVERSATIONS] = factory
        client: TestClient = await aiohttp_client(app)
        return Gateway(client, recorders)

    return start


# ------------------------------------------------------------------- admission


async def test_source_outside_the_allowed_networks_is_closed_at_once(
    gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    gw = await gateway(audiosocket_allow=("10.0.0.0/8",))
    for _ in range(2):
        async with gw.caller() as call:
            await call.wait_done(TIMEOUT)
            assert call.stats.packets_received == 0
    assert gw.metric("gateway_auth_failures_total", {"transport": "audiosocket"}) == 2
    assert len([r for r in caplog.records if "AUDIOSOCKET_ALLOW" in r.getMessage()]) == 1
    assert gw.calls == 0


async def test_at_capacity_the_call_gets_the_hangup_packet(gateway: GatewayFactory) -> None:
    gw = await gateway(max_calls=1)
    async with gw.caller() as first:
        await first.play(tone(1), realtime=False)
        await wait_for(lambda: gw.calls == 1)
        async with gw.caller() as second:
            await second.play(tone(1), realtime=False)
            await second.wait_done(TIMEOUT)
            assert second.stats.hangup_received
    labels = {"transport": "audiosocket", "outcome": "refused_at_capacity"}
    assert gw.metric("gateway_calls_total", labels) == 1


# ---------------------------------------------------------------------- parrot


async def test_parrot_call_returns_the_audio_paced_and_leaves_nothing_behind(
    gateway: GatewayFactory,
) -> None:
    gw = await gateway()
    before = other_tasks()
    audio = tone(25)
    async with gw.caller() as call:
        await call.play(audio, realtime=True)
        await wait_for(lambda: len(audible(call.heard_audio())) >= len(audio))
        assert audible(call.heard_audio()) == audio
        assert set(call.stats.kinds) == {0x10}  # slin 8 kHz only, never 0x01/0x03/0xff
        assert len(call.heard_audio()) % FRAME == 0  # whole 20 ms frames only
    await wait_for(lambda: gw.calls == 0)
    await wait_for(lambda: other_tasks() - before == set())
    labels = {"transport": "audiosocket", "outcome": "completed"}
    assert gw.metric("gateway_calls_total", labels) == 1
    frames_in = {"transport": "audiosocket", "direction": "in"}
    assert gw.metric("gateway_frames_total", frames_in) == 25
    assert gw.metric("gateway_audiosocket_pacing_lateness_seconds_count") > 0
    assert gw.metric("gateway_call_tasks_leaked_total") == 0


async def test_silence_keeps_flowing_at_one_frame_per_20_ms_when_idle(
    gateway: GatewayFactory,
) -> None:
    gw = await gateway()
    async with gw.caller() as call:
        await call.play(tone(1), realtime=False)
        await wait_for(lambda: len(call.stats.arrivals) >= 3)
        start = time.monotonic()
        first = len(call.stats.arrivals)
        await asyncio.sleep(0.5)
        window = [t for t in call.stats.arrivals[first:] if t - start <= 0.5]
        assert 23 <= len(window) <= 27, len(window)
        assert call.heard_audio()[-FRAME:] == ZERO  # idle frames are digital silence


async def test_wideband_call_keeps_its_rate(gateway: GatewayFactory) -> None:
    gw = await gateway()
    audio = bytes((i % 250) | 1 for i in range(640 * 5))
    async with gw.caller(sample_rate=16000) as call:
        await call.play(audio, realtime=False)
        await wait_for(lambda: audio in call.heard_audio())
        assert set(call.stats.kinds) == {0x12}
        assert audio in call.heard_audio()


async def test_packets_split_anywhere_are_reassembled(gateway: GatewayFactory) -> None:
    gw = await gateway()
    audio = tone(6, seed=3)
    call = gw.caller()
    await call.connect(send_uuid=False)
    try:
        wire = packet(0x01, call.uuid.bytes) + b"".join(
            packet(0x10, audio[i : i + FRAME]) for i in range(0, len(audio), FRAME)
        )
        for size in (1, 2, 3, 5, 7, 320, 11):  # cuts through headers and payloads
            chunk, wire = wire[:size], wire[size:]
            await call.send_raw(chunk)
            await asyncio.sleep(0.002)
        await call.send_raw(wire)
        await wait_for(lambda: len(audible(call.heard_audio())) >= len(audio))
        assert audible(call.heard_audio()) == audio
    finally:
        await call.close()


async def test_unknown_kind_is_counted_and_the_call_continues(
    gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    gw = await gateway()
    async with gw.caller() as victim, gw.caller() as bystander:
        await victim.play(tone(1), realtime=False)
        await bystander.play(tone(1), realtime=False)
        await wait_for(lambda: gw.calls == 2)
        for _ in range(2):
            await victim.send_raw(packet(0x42, b"?"))
        await victim.play(tone(2, seed=5), realtime=False)
        await wait_for(lambda: len(audible(victim.heard_audio())) >= 3 * FRAME)
        await bystander.play(tone(2, seed=9), realtime=False)
        await wait_for(lambda: len(audible(bystander.heard_audio())) >= 3 * FRAME)
        assert not victim.done and not bystander.done
    labels = {"transport": "audiosocket", "reason": "unknown_kind"}
    assert gw.metric("gateway_malformed_input_total", labels) == 2
    assert len([r for r in caplog.records if "unknown_kind" in r.getMessage()]) == 1


async def test_ulaw_dialled_audiosocket_is_counted_logged_once_and_kept_from_the_call(
    gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """``Dial(AudioSocket/.../c(ulaw))``: Asterisk labels 160-byte μ-law payloads 0x10."""
    caplog.set_level("WARNING")
    gw = await gateway(record=True)
    ulaw = pcm16_to_ulaw(voiced(0.2))
    async with gw.caller() as call:
        for offset in range(0, len(ulaw), 160):
            await call.send_raw(packet(0x10, ulaw[offset : offset + 160]))
        labels = {"transport": "audiosocket", "reason": "not_slin"}
        await wait_for(lambda: gw.metric("gateway_malformed_input_total", labels) == 10)
        await call.press("4")
        await wait_for(lambda: bool(gw.recorders) and Dtmf("4") in gw.recorders[0].events)
        assert not any(isinstance(e, CallerAudio) for e in gw.recorders[0].events)
        assert not call.done  # the call goes on
    logged = [r for r in caplog.records if "not_slin" in r.getMessage()]
    assert len(logged) == 1 and "c(slin)" in logged[0].getMessage()


async def test_dtmf_reaches_the_conversation(gateway: GatewayFactory) -> None:
    gw = await gateway(record=True)
    async with gw.caller() as call:
        await call.press("4")  # before any audio: held until the call starts
        await call.play(tone(1), realtime=False)
        await call.press("#")
        await wait_for(lambda: len(gw.recorders) == 1)
        rec = gw.recorders[0]
        await wait_for(lambda: sum(isinstance(e, Dtmf) for e in rec.events) == 2)
        assert [e.digit for e in rec.events if isinstance(e, Dtmf)] == ["4", "#"]
        assert rec.session.call_id == str(call.uuid)


# ----------------------------------------------------------------------- hang-up


@pytest.mark.parametrize("how", ["hangup_packet", "eof"])
async def test_caller_hangup_ends_the_call(gateway: GatewayFactory, how: str) -> None:
    gw = await gateway(record=True)
    call = gw.caller()
    await call.connect()
    try:
        await call.play(tone(1), realtime=False)
        await wait_for(lambda: gw.calls == 1)
        if how == "hangup_packet":
            await call.send_hangup_packet()
        else:
            await call.close()
        await wait_for(lambda: gw.calls == 0)
        assert isinstance(gw.recorders[0].events[-1], CallEnded)
    finally:
        await call.close()
    labels = {"transport": "audiosocket", "outcome": "completed"}
    assert gw.metric("gateway_calls_total", labels) == 1


async def test_gateway_hangup_sends_the_hangup_packet(gateway: GatewayFactory) -> None:
    gw = await gateway(max_call_seconds=0.3)
    async with gw.caller() as call:
        await call.play(tone(1), realtime=False)
        await call.wait_done(TIMEOUT)
        assert call.stats.hangup_received
        assert call.stats.kinds[-1] == 0x00
        assert call.stats.protocol_errors == []
    await wait_for(lambda: gw.calls == 0)
    labels = {"transport": "audiosocket", "outcome": "max_duration"}
    assert gw.metric("gateway_calls_total", labels) == 1


async def test_transfer_target_and_outcome_are_served_to_the_dialplan(
    gateway: GatewayFactory,
) -> None:
    """AudioSocket has no way to set a channel variable either: an agent transfer ends our
    leg with the hang-up packet, and the dialplan after AudioSocket() fetches the target by
    the UUID it chose (same store and credentials as chan_websocket)."""
    gw = await gateway(record=True, asterisk_ws_username="ast", asterisk_ws_password="pw")
    auth = {"Authorization": basic_auth_header("ast", "pw")}
    http = gw.client.session
    call_uuid = uuid.uuid4()
    base = gw.client.make_url(f"/asterisk/calls/{call_uuid}")
    async with gw.caller(call_uuid=call_uuid) as call:
        await call.play(tone(1), realtime=False)
        await wait_for(lambda: len(gw.recorders) == 1)
        live = await http.get(base, headers=auth)
        assert (await live.json())["state"] == "live"
        session = gw.recorders[0].session
        assert session.transfer is not None
        assert not await session.transfer("100,,U(evil)")  # not an extension name
        assert await session.transfer("operator")
        await call.wait_done(TIMEOUT)
        assert call.stats.hangup_received
    transfer = await http.get(f"{base}/transfer", headers=auth)
    assert transfer.status == 200 and await transfer.text() == "operator"
    assert await (await http.get(f"{base}/outcome", headers=auth)).text() == "transferred"
    assert (await http.get(f"{base}/outcome")).status == 401
    await wait_for(lambda: gw.calls == 0)
    info = await (await http.get(base, headers=auth)).json()
    assert info == {
        "call_id": str(call_uuid),
        "state": "ended",
        "outcome": "transferred",
        "transfer": "operator",
    }
    labels = {"transport": "audiosocket", "outcome": "transferred"}
    assert gw.metric("gateway_calls_total", labels) == 1


# -------------------------------------------------------------- marks and clear


async def test_marks_fire_on_the_frame_clock_and_clear_retires_them(
    gateway: GatewayFactory,
) -> None:
    gw = await gateway(record=True)
    async with gw.caller() as call:
        await call.play(tone(1), realtime=False)
        await wait_for(lambda: len(gw.recorders) == 1)
        rec = gw.recorders[0]
        sent_at = time.monotonic()
        await rec.session.send(PlayAudio(tone(10, seed=7)[:-100]))  # partial last frame
        await rec.session.send(SetMark("s0"))
        await wait_for(lambda: bool(rec.marks()))
        elapsed = time.monotonic() - sent_at
        assert rec.marks() == [MarkPlayed("s0", played=True)]
        assert 0.15 <= elapsed < 1.0, elapsed  # 10 frames at 20 ms, not at once
        await rec.session.send(PlayAudio(tone(100, seed=8)))
        await rec.session.send(SetMark("s1"))
        await rec.session.send(ClearAudio())
        assert rec.marks()[-1] == MarkPlayed("s1", played=False)
        heard = len(audible(call.heard_audio()))
        await asyncio.sleep(0.1)
        assert len(audible(call.heard_audio())) - heard <= 2 * FRAME  # the rest was dropped


async def test_no_audio_after_the_uuid_starts_the_call_at_8khz() -> None:
    metrics = Metrics()
    registry = CallRegistry(10, metrics)
    recorders: list[Recorder] = []

    def factory(session: CallSession) -> Conversation:
        recorders.append(Recorder(session))
        return recorders[-1]

    server = AudioSocketServer(
        host="127.0.0.1",
        port=0,
        allow=("127.0.0.1/32",),
        registry=registry,
        metrics=metrics,
        make_conversation=factory,
        max_call_seconds=60,
        audio_wait=0.1,
    )
    await server.start()
    try:
        async with AudioSocketCaller("127.0.0.1", server.port, call_uuid=uuid.UUID(int=7)) as call:
            await wait_for(lambda: len(call.stats.arrivals) >= 3)  # silence flows
            assert recorders[0].session.audio_format == PCM16_8K
            assert recorders[0].session.call_id == str(uuid.UUID(int=7))
    finally:
        await server.aclose()
    assert registry.count == 0 and server.connections == 0


# ------------------------------------------------------------------ voice agent


async def test_voice_agent_call_over_audiosocket(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path
) -> None:
    backends = await speech_backends(aiohttp_server)
    settings = voice_settings(
        backends.sim_url,
        tmp_path,
        agent=AgentMode.WEBHOOK,
        agent_webhook_url=backends.agent_url,
        greeting_text="أهلا وسهلا بك",
        host="127.0.0.1",
        audiosocket_port=0,
    )
    client: TestClient = await aiohttp_client(create_app(settings))
    port = client.app[keys.AUDIOSOCKET].port  # type: ignore[index]
    async with AudioSocketCaller("127.0.0.1", port) as call:
        await call.play(silence(0.1), realtime=False)
        await wait_for(lambda: len(audible(call.heard_audio())) > 2000)  # the greeting
        requests = backends.requests
        await call.play(voiced(0.8) + silence(0.9), realtime=True)
        await wait_for(lambda: any(q.get("event") == "utterance" for q in requests))
        greeting = len(audible(call.heard_audio()))
        await wait_for(lambda: len(audible(call.heard_audio())) - greeting > 8000)
        assert call.stats.protocol_errors == []
    request = next(q for q in requests if q.get("event") == "utterance")
    assert request["text"] == TRANSCRIPT
    assert request["call"]["transport"] == "audiosocket"
    await wait_for(lambda: any(q.get("event") == "call.ended" for q in requests))
    record = json.loads((tmp_path / "calls.jsonl").read_text(encoding="utf-8").splitlines()[0])
    turn = next(t for t in record["turns"] if t["kind"] == "utterance")
    assert turn["reply"] == REPLY
    assert "heard" in turn["timings"]  # the first-frame mark fired on the pacer's clock


def _audible_bytes(pcm: bytes, frame: int) -> int:
    """Bytes of the non-silent 20 ms frames in ``pcm`` (the pacer fills gaps with zeros)."""
    zero = bytes(frame)
    return sum(frame for i in range(0, len(pcm) - frame + 1, frame) if pcm[i : i + frame] != zero)


# The rates that used to fail (12/96/192 kHz at once, 32 kHz at the first reply) and 44.1
# kHz (882 samples per 20 ms); 8 and 16 kHz are covered above, every rate over chan_websocket.
@pytest.mark.parametrize("rate", [12000, 32000, 44100, 96000, 192000])
async def test_voice_agent_call_at_every_audiosocket_rate(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path, rate: int
) -> None:
    backends = await speech_backends(aiohttp_server)
    settings = voice_settings(
        backends.sim_url,
        tmp_path,
        agent=AgentMode.WEBHOOK,
        agent_webhook_url=backends.agent_url,
        greeting_text="أهلا وسهلا بك، كيف يمكنني مساعدتك؟",
        host="127.0.0.1",
        audiosocket_port=0,
    )
    client: TestClient = await aiohttp_client(create_app(settings))
    port = client.app[keys.AUDIOSOCKET].port  # type: ignore[index]
    frame = rate // 50 * 2
    async with AudioSocketCaller("127.0.0.1", port, sample_rate=rate) as call:
        await call.play(silence(0.1, rate=rate), realtime=False)
        # Channel drivers c(slin12) ... c(slin192): the gateway answers in the same kind.
        await wait_for(lambda: _audible_bytes(call.heard_audio(), frame) > rate * 2 * 0.3)
        requests = backends.requests
        await call.play(voiced(0.8, rate=rate) + silence(0.9, rate=rate), realtime=True)
        await wait_for(lambda: any(q.get("event") == "utterance" for q in requests))
        greeting = _audible_bytes(call.heard_audio(), frame)
        await wait_for(lambda: _audible_bytes(call.heard_audio(), frame) - greeting > rate)
        assert call.stats.protocol_errors == [] and not call.done
        assert set(call.stats.kinds) == {call.kind}
    request = next(q for q in requests if q.get("event") == "utterance")
    assert request["text"] == TRANSCRIPT


def test_packet_helper_matches_the_reference_examples() -> None:
    # docs/protocols/asterisk.md §3.3: DTMF '5' is 03 00 01 35, hang-up is 00 00 00.
    assert packet(0x03, b"5") == bytes.fromhex("03000135")
    assert packet(0x00) == b"\x00\x00\x00"
    assert struct.unpack(">BH", packet(0x10, bytes(320))[:3]) == (0x10, 320)
