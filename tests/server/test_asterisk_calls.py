"""Whole chan_websocket calls over real sockets, against the simulated Asterisk 23 peer.

The peer (gateway.sim.asterisk_caller.AsteriskWsCaller) enforces Asterisk's rules itself:
it fails the handshake on any negotiated extension, drops trailing partial frames, ignores
TEXT over 128 bytes, counts pings, and echoes marks only when its playout clock reaches them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from gateway.calls import CallSession, Conversation
from gateway.config import AgentMode
from gateway.logs import call_id_var
from gateway.server import keys
from gateway.server.app import create_app
from gateway.sim.asterisk_caller import (
    SLIN_RATES,
    AsteriskWsCaller,
    basic_auth_header,
    send_text_frame_bytes,
)
from gateway.sim.twilio_caller import TwilioCaller
from gateway.telephony.events import (
    ClearAudio,
    Dtmf,
    InboundEvent,
    MarkPlayed,
    PlayAudio,
    SetMark,
)
from telecodecs.g711 import pcm16_to_ulaw
from tests.agent.audio import silence, voiced
from tests.call_helpers import Recorder, other_tasks, wait_for
from tests.conftest import TIMEOUT, make_settings
from tests.speech_rig import REPLY, TRANSCRIPT, speech_backends, voice_settings

USER = "asterisk"
PASSWORD = "s3cret-media-pass"
PATH = "/asterisk/media"


def ulaw_tone(frames: int, seed: int = 0, size: int = 160) -> bytes:
    """Distinct, deterministic frames (no two identical, never all-silence) for echo checks."""
    out = bytearray()
    for i in range(frames * size):
        out.append((i * 7 + seed * 13 + (i // size) * 31) % 251)
    return bytes(out)


def sample(client: TestClient, name: str, labels: dict[str, str]) -> float:
    value = client.app[keys.METRICS].registry.get_sample_value(name, labels)  # type: ignore[index]
    return 0.0 if value is None else float(value)


class TimedRecorder(Recorder):
    """A Recorder that also notes when (monotonic) each event reached the conversation."""

    def __init__(self, session: CallSession) -> None:
        super().__init__(session)
        self.times: list[float] = []

    def on_event(self, event: InboundEvent) -> None:
        super().on_event(event)
        self.times.append(time.monotonic())

    def mark_time(self, name: str) -> float:
        return next(
            t
            for e, t in zip(self.events, self.times, strict=True)
            if isinstance(e, MarkPlayed) and e.name == name
        )


class Gateway:
    def __init__(self, client: TestClient, recorders: list[TimedRecorder]) -> None:
        self.client = client
        self.recorders = recorders

    def caller(self, **kwargs: Any) -> AsteriskWsCaller:
        kwargs.setdefault("username", USER)
        kwargs.setdefault("password", PASSWORD)
        return AsteriskWsCaller(self.client.session, str(self.client.make_url(PATH)), **kwargs)

    @property
    def calls(self) -> int:
        count: int = self.client.app[keys.CALLS].count  # type: ignore[index]
        return count

    def metric(self, name: str, labels: dict[str, str]) -> float:
        return sample(self.client, name, labels)


GatewayFactory = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def gateway(aiohttp_client: Any) -> GatewayFactory:
    async def start(record: bool = False, **overrides: Any) -> Gateway:
        settings = make_settings(
            **{
                "agent": AgentMode.PARROT,
                "asterisk_ws_username": USER,
                "asterisk_ws_password": PASSWORD,
                **overrides,
            }
        )
        app = create_app(settings)
        recorders: list[TimedRecorder] = []
        if record:

            def factory(session: CallSession) -> Conversation:
                recorder = TimedRecorder(session)
                recorders.append(recorder)
                return recorder

            app[keys.CONVERSATIONS] = factory
        client: TestClient = await aiohttp_client(app)
        return Gateway(client, recorders)

    return start


# ----------------------------------------------------------------- handshake


async def test_upgrade_needs_the_configured_basic_credentials(gateway: GatewayFactory) -> None:
    gw = await gateway()
    session = gw.client.session
    url = gw.client.make_url(PATH)
    missing = await session.get(url)
    wrong = await session.get(url, headers={"Authorization": basic_auth_header(USER, "nope")})
    garbage = await session.get(url, headers={"Authorization": "Basic !!!not-base64"})
    assert (missing.status, wrong.status, garbage.status) == (401, 401, 401)
    assert missing.headers["WWW-Authenticate"].startswith("Basic")
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await gw.caller(password="wrong").connect()
    assert refused.value.status == 401
    assert gw.metric("gateway_auth_failures_total", {"transport": "asterisk_ws"}) == 4


async def test_without_configured_credentials_everything_is_refused(
    gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("WARNING")
    gw = await gateway(asterisk_ws_username="", asterisk_ws_password="")
    assert any("chan_websocket" in r.getMessage() for r in caplog.records)  # start-up notice
    # Even an empty user/password pair must not match the empty configuration.
    empty = await gw.client.session.get(
        gw.client.make_url(PATH), headers={"Authorization": basic_auth_header("", "")}
    )
    assert empty.status == 401
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await gw.caller().connect()
    assert gw.metric("gateway_auth_failures_total", {"transport": "asterisk_ws"}) == 2


async def test_media_subprotocol_echoed_and_no_extension_even_when_offered(
    gateway: GatewayFactory,
) -> None:
    gw = await gateway()
    # Raw look at the 101 answer to an upgrade that offers permessage-deflate.
    ws = await gw.client.session.ws_connect(
        gw.client.make_url(PATH),
        protocols=("media",),
        compress=15,
        headers={"Authorization": basic_auth_header(USER, PASSWORD)},
    )
    assert ws.protocol == "media"
    assert ws.compress == 0
    await ws.close()
    # The simulated Asterisk fails the handshake on any extension; this one goes through.
    async with gw.caller(offer_deflate=True) as call:
        assert call.subprotocol == "media"
        await call.play(ulaw_tone(2), realtime=False)
        await wait_for(lambda: call.stats.bytes_received >= 320)


# ------------------------------------------------------------------ parrot


@pytest.mark.parametrize(
    ("control_format", "codec"),
    [("plain-text", "ulaw"), ("json", "ulaw"), ("json", "slin16"), ("plain-text", "alaw")],
)
async def test_parrot_call_returns_the_audio_in_whole_frames(
    gateway: GatewayFactory, control_format: str, codec: str
) -> None:
    gw = await gateway(parrot_delay_ms=60)
    before = other_tasks()
    async with gw.caller(control_format=control_format, codec=codec, speed=4.0) as call:
        audio = ulaw_tone(25, size=call.frame_size)
        await call.play(audio, realtime=True)
        await wait_for(lambda: call.stats.bytes_received >= len(audio))
        assert call.received_audio() == audio
        # Exact multiples of optimal_frame_size: nothing is dropped by Asterisk's framing.
        assert all(size % call.frame_size == 0 for size in call.stats.received_sizes)
        assert call.stats.dropped_partial_bytes == 0
        await wait_for(lambda: len(call.played) >= len(audio))
        assert bytes(call.played) == audio
        await call.press("5")
        await call.close()
    await wait_for(lambda: gw.calls == 0)
    # aiohttp's own handler tasks finish a few loop turns after the close: wait, bounded.
    await wait_for(lambda: other_tasks() - before == set())
    assert call.stats.pings_received == 0
    assert call.stats.ignored_texts == 0 and call.stats.unknown_commands == 0
    labels = {"transport": "asterisk_ws", "outcome": "completed"}
    assert gw.metric("gateway_calls_total", labels) == 1
    frames_in = gw.metric("gateway_frames_total", {"transport": "asterisk_ws", "direction": "in"})
    assert frames_in == 25
    assert gw.metric("gateway_call_tasks_leaked_total", {}) == 0


async def test_metadata_dtmf_and_caller_hangup(gateway: GatewayFactory) -> None:
    gw = await gateway(record=True, asterisk_forward_variables=("MEDIA_WEBSOCKET_CONNECTION_ID",))
    query = {"callid": "1795597160.5", "exten": "+966 5"}
    async with gw.caller(control_format="json", query=query) as call:
        await wait_for(lambda: len(gw.recorders) == 1)
        rec = gw.recorders[0]
        assert rec.session.call_id == call.channel_id
        assert rec.session.metadata["exten"] == "+966 5"
        assert rec.session.metadata["callid"] == "1795597160.5"
        assert rec.session.metadata["MEDIA_WEBSOCKET_CONNECTION_ID"] == "wsconn"  # allow-listed
        assert "DIALEDPEERNUMBER" not in rec.session.metadata  # inherited, not allow-listed
        for digit in "7#":
            await call.press(digit)
        await wait_for(lambda: sum(isinstance(e, Dtmf) for e in rec.events) == 2)
        assert [e.digit for e in rec.events if isinstance(e, Dtmf)] == ["7", "#"]
    # The caller closed (Asterisk's hang-up is a close 1000 with no text event).
    await wait_for(lambda: gw.calls == 0)


@pytest.mark.parametrize("control_format", ["plain-text", "json"])
async def test_gateway_hangup_sends_hangup_and_asterisk_closes(
    gateway: GatewayFactory, control_format: str
) -> None:
    gw = await gateway(record=True)
    async with gw.caller(control_format=control_format) as call:
        await wait_for(lambda: len(gw.recorders) == 1)
        gw.recorders[0].session.hangup("test")
        assert await call.wait_closed(TIMEOUT) == 1000
        expected = '{"command":"HANGUP"}' if control_format == "json" else "HANGUP"
        assert expected in call.stats.texts_received
    await wait_for(lambda: gw.calls == 0)


async def test_max_duration_hangs_up(gateway: GatewayFactory) -> None:
    gw = await gateway(max_call_seconds=0.3)
    async with gw.caller() as call:
        assert await call.wait_closed(TIMEOUT) == 1000
        assert "HANGUP" in call.stats.texts_received
    await wait_for(lambda: gw.calls == 0)
    labels = {"transport": "asterisk_ws", "outcome": "max_duration"}
    assert gw.metric("gateway_calls_total", labels) == 1


# ------------------------------------------------------ marks, clear, flow control


async def test_json_marks_are_echoed_when_played_and_clear_retires_pending_ones(
    gateway: GatewayFactory,
) -> None:
    gw = await gateway(record=True)
    async with gw.caller(control_format="json", speed=4.0) as call:
        await wait_for(lambda: len(gw.recorders) == 1)
        rec = gw.recorders[0]
        session = rec.session
        # A sentence of 0.5 s whose length is not a whole number of frames: the mark
        # flushes the partial frame (padded), so nothing is dropped by Asterisk.
        await session.send(PlayAudio(ulaw_tone(25)[:-50]))
        await session.send(SetMark("s0"))
        await wait_for(lambda: bool(rec.marks()))
        assert rec.marks() == [MarkPlayed("s0", played=True)]
        assert call.stats.frames_played == 25
        assert call.stats.dropped_partial_bytes == 0
        # Barge-in: a long sentence, its mark, then a clear before it can play out.
        await session.send(PlayAudio(ulaw_tone(250, seed=2)))
        await session.send(SetMark("s1"))
        await session.send(ClearAudio())
        # Retired locally at once (FLUSH_MEDIA never echoes the flushed marker).
        assert rec.marks()[-1] == MarkPlayed("s1", played=False)
        await wait_for(lambda: call.stats.flushes == 1 and call.stats.drained_reports >= 1)
        assert call.stats.frames_played < 25 + 250
        await asyncio.sleep(0.1)
        assert call.stats.marks_processed[0] == "m1"
        assert "m2" not in call.stats.marks_processed  # the flushed marker never came back
        assert sum(m.name == "s1" for m in rec.marks()) == 1  # never reported twice


async def test_plain_text_marks_use_the_queue_drained_byte_clock(gateway: GatewayFactory) -> None:
    gw = await gateway(record=True)
    async with gw.caller(control_format="plain-text", speed=4.0) as call:
        await wait_for(lambda: len(gw.recorders) == 1)
        rec = gw.recorders[0]
        await rec.session.send(PlayAudio(ulaw_tone(20)))
        await rec.session.send(SetMark("only"))
        await wait_for(lambda: bool(rec.marks()))
        assert rec.marks() == [MarkPlayed("only", played=True)]
        assert call.stats.frames_played == 20  # reported once the queue had drained
        assert "REPORT_QUEUE_DRAINED" in call.stats.texts_received
        assert not any(t.startswith("MARK_MEDIA") for t in call.stats.texts_received)


async def test_plain_text_marks_are_heard_at_their_playout_time(gateway: GatewayFactory) -> None:
    """Plain text has no MARK_MEDIA: the byte clock must retire each mark when its audio has
    played, not at the next QUEUE_DRAINED (which came after the whole reply: "heard" was
    0.3-1.4 s late). The peer plays in real time and notes when each frame played."""
    gw = await gateway(record=True)
    async with gw.caller(control_format="plain-text") as call:
        await wait_for(lambda: len(gw.recorders) == 1)
        rec = gw.recorders[0]
        # A live line: Asterisk sends the caller's audio (or silence) every 20 ms.
        line = asyncio.create_task(call.play(b"\xff" * 160 * 150, realtime=True))
        try:
            await asyncio.sleep(0.1)
            await rec.session.send(PlayAudio(ulaw_tone(1)))
            await rec.session.send(SetMark("first"))  # "the caller starts hearing the reply"
            await rec.session.send(PlayAudio(ulaw_tone(50, seed=3)))  # one more second
            await rec.session.send(SetMark("end"))
            await wait_for(lambda: len(rec.marks()) == 2)
        finally:
            line.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await line
    assert rec.marks() == [MarkPlayed("first", True), MarkPlayed("end", True)]
    played = call.stats.played_at
    # A mark is reached when the frame before it has played (one ptime after it started).
    first_played, end_played = played[0] + 0.020, played[50] + 0.020
    assert abs(rec.mark_time("first") - first_played) < 0.040
    assert abs(rec.mark_time("end") - end_played) < 0.040


@pytest.mark.parametrize("control_format", ["plain-text", "json"])
async def test_a_long_burst_never_overflows_asterisks_queue(
    gateway: GatewayFactory, control_format: str
) -> None:
    gw = await gateway(record=True)
    async with gw.caller(control_format=control_format, speed=25.0) as call:
        await wait_for(lambda: len(gw.recorders) == 1)
        rec = gw.recorders[0]
        audio = ulaw_tone(1250, seed=4)  # 25 s at once: more than Asterisk's 1000 frames
        await rec.session.send(PlayAudio(audio))
        await rec.session.send(SetMark("end"))
        # Held audio is released by the driver writing data_to_send() after each receive.
        await wait_for(lambda: len(call.played) >= len(audio))
        assert bytes(call.played) == audio
        assert call.stats.max_queue_length < 900  # never reached MEDIA_XOFF
        assert call.stats.dropped_messages == 0
        await wait_for(lambda: bool(rec.marks()))
        assert rec.marks() == [MarkPlayed("end", played=True)]


# ------------------------------------------- call outcome for the dialplan (after Dial g)


async def test_transfer_target_and_outcome_are_served_to_the_dialplan(
    gateway: GatewayFactory,
) -> None:
    gw = await gateway(record=True)
    auth = {"Authorization": basic_auth_header(USER, PASSWORD)}
    http = gw.client.session
    # What the sample dialplan passes: v(callid=${UNIQUEID}) of the caller's channel.
    async with gw.caller(query={"callid": "1795597426.7"}) as call:
        await wait_for(lambda: len(gw.recorders) == 1)
        session = gw.recorders[0].session
        live = await http.get(
            gw.client.make_url(f"/asterisk/calls/{call.channel_id}"), headers=auth
        )
        assert (await live.json())["state"] == "live"
        assert session.transfer is not None
        assert await session.transfer("operator")  # the agent's {"transfer": "operator"}
        # Our leg ends (Asterisk then goes on after Dial(...,g)).
        assert await call.wait_closed(TIMEOUT) == 1000
        assert "HANGUP" in call.stats.texts_received
    for key in (call.channel_id, "1795597426.7"):
        base = gw.client.make_url(f"/asterisk/calls/{key}")
        transfer = await http.get(f"{base}/transfer", headers=auth)
        assert transfer.status == 200 and await transfer.text() == "operator"
        outcome = await http.get(f"{base}/outcome", headers=auth)
        assert await outcome.text() == "transferred"
    await wait_for(lambda: gw.calls == 0)
    info = await http.get(gw.client.make_url(f"/asterisk/calls/{call.channel_id}"), headers=auth)
    assert await info.json() == {
        "call_id": call.channel_id,
        "state": "ended",
        "outcome": "transferred",
        "transfer": "operator",
    }


async def test_call_info_needs_credentials_and_a_known_call(gateway: GatewayFactory) -> None:
    gw = await gateway(record=True)
    http = gw.client.session
    async with gw.caller() as call:
        await wait_for(lambda: len(gw.recorders) == 1)
        url = gw.client.make_url(f"/asterisk/calls/{call.channel_id}/outcome")
        assert (await http.get(url)).status == 401
        wrong = {"Authorization": basic_auth_header(USER, "nope")}
        assert (await http.get(url, headers=wrong)).status == 401
        auth = {"Authorization": basic_auth_header(USER, PASSWORD)}
        unknown = gw.client.make_url("/asterisk/calls/1.1/transfer")
        assert (await http.get(unknown, headers=auth)).status == 404
        ok = await http.get(url, headers=auth)
        assert ok.status == 200 and await ok.text() == "completed"
        # A target that could smuggle dialplan options is refused, and not served.
        session = gw.recorders[0].session
        assert session.transfer is not None
        assert not await session.transfer("100,,U(evil)")
        transfer_url = gw.client.make_url(f"/asterisk/calls/{call.channel_id}/transfer")
        blank = await http.get(transfer_url, headers=auth)
        assert await blank.text() == ""
    assert gw.metric("gateway_auth_failures_total", {"transport": "asterisk_ws"}) == 2


async def test_caller_hangup_outcome_is_completed_with_no_transfer(gateway: GatewayFactory) -> None:
    gw = await gateway()
    auth = {"Authorization": basic_auth_header(USER, PASSWORD)}
    async with gw.caller() as call:
        await call.play(ulaw_tone(2), realtime=False)
        await wait_for(lambda: gw.calls == 1)
    await wait_for(lambda: gw.calls == 0)
    info = await gw.client.session.get(
        gw.client.make_url(f"/asterisk/calls/{call.channel_id}"), headers=auth
    )
    assert await info.json() == {
        "call_id": call.channel_id,
        "state": "ended",
        "outcome": "completed",
        "transfer": "",
    }


# -------------------------------------------------------------------- bad input


async def _bad_control(call: AsteriskWsCaller) -> None:
    await call.send_text("this is not a command")


async def _oversized(call: AsteriskWsCaller) -> None:
    await call.send_bytes(b"\xff" * 70_000)


BAD: list[tuple[str, Callable[[AsteriskWsCaller], Awaitable[None]], bool]] = [
    ("bad_control", _bad_control, False),
    ("message_too_large", _oversized, True),
]


@pytest.mark.parametrize(("reason", "send_bad", "fatal"), BAD, ids=[b[0] for b in BAD])
async def test_bad_input_is_counted_and_the_other_call_is_untouched(
    gateway: GatewayFactory,
    reason: str,
    send_bad: Callable[[AsteriskWsCaller], Awaitable[None]],
    fatal: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    gw = await gateway()
    async with gw.caller() as victim, gw.caller(control_format="json") as bystander:
        await victim.play(ulaw_tone(1), realtime=False)
        await bystander.play(ulaw_tone(1), realtime=False)
        await wait_for(lambda: gw.calls == 2)
        for _ in range(1 if fatal else 2):
            await send_bad(victim)
        if fatal:
            assert await victim.wait_closed(TIMEOUT) == 1009
        else:
            await victim.play(ulaw_tone(2, seed=5), realtime=False)
            await wait_for(lambda: victim.stats.bytes_received >= 160 * 3)
            assert not victim.closed
        labels = {"transport": "asterisk_ws", "reason": reason}
        await wait_for(lambda: gw.metric("gateway_malformed_input_total", labels) >= 1)
        await bystander.play(ulaw_tone(2, seed=9), realtime=False)
        await wait_for(lambda: bystander.stats.bytes_received >= 160 * 3)
        assert not bystander.closed
    assert gw.metric("gateway_malformed_input_total", labels) == (1 if fatal else 2)
    assert len([r for r in caplog.records if reason in r.getMessage()]) == 1


class CallIdCapture(logging.Handler):
    """Records each message with the call id in effect when it was logged."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.getMessage(), call_id_var.get()))


async def _nested_json(call: AsteriskWsCaller) -> None:
    # 5000 nested arrays: past the JSON parser's recursion limit (it used to raise).
    await call.send_text('{"event":' + "[" * 5000)


@pytest.mark.parametrize("control_format", ["plain-text", "json"])
async def test_deeply_nested_json_is_counted_and_the_call_goes_on(
    gateway: GatewayFactory, control_format: str, caplog: pytest.LogCaptureFixture
) -> None:
    gw = await gateway()
    async with gw.caller(control_format=control_format) as call:
        await call.play(ulaw_tone(1), realtime=False)
        await wait_for(lambda: gw.calls == 1)
        for _ in range(3):
            await _nested_json(call)
        await call.play(ulaw_tone(2, seed=5), realtime=False)
        await wait_for(lambda: call.stats.bytes_received >= 160 * 3)  # the parrot still echoes
        assert not call.closed
        labels = {"transport": "asterisk_ws", "reason": "bad_json"}
        await wait_for(lambda: gw.metric("gateway_malformed_input_total", labels) == 3)
    assert len([r for r in caplog.records if "bad_json" in r.getMessage()]) == 1


async def test_invalid_utf8_text_is_counted_logged_once_and_ends_only_that_call(
    gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("WARNING")
    call_ids = CallIdCapture()
    logging.getLogger("gateway").addHandler(call_ids)
    gw = await gateway()
    async with gw.caller() as victim, gw.caller() as bystander:
        await victim.play(ulaw_tone(1), realtime=False)
        await bystander.play(ulaw_tone(1), realtime=False)
        await wait_for(lambda: gw.calls == 2)
        await victim.send_invalid_text(b"DTMF_END digit:\xff\xfe")
        # RFC 6455 §8.1: the endpoint fails the connection (aiohttp closes with 1007).
        assert await victim.wait_closed(TIMEOUT) == 1007
        await bystander.play(ulaw_tone(2, seed=9), realtime=False)
        await wait_for(lambda: bystander.stats.bytes_received >= 160 * 3)
        assert not bystander.closed
    labels = {"transport": "asterisk_ws", "reason": "invalid_utf8"}
    assert gw.metric("gateway_malformed_input_total", labels) == 1
    logging.getLogger("gateway").removeHandler(call_ids)
    logged = [(m, cid) for m, cid in call_ids.lines if "invalid_utf8" in m]
    assert logged == [(logged[0][0], victim.channel_id)]  # once, with the call id


async def test_invalid_utf8_is_counted_on_twilio_too(gateway: GatewayFactory) -> None:
    """The one WebSocket driver serves every transport: Twilio's media socket as well."""
    gw = await gateway()
    caller = TwilioCaller(
        gw.client.session,
        str(gw.client.make_url("/twilio/media")),
        public_ws_url="wss://gw.example.com/twilio/media",
    )
    async with caller:
        await wait_for(lambda: gw.calls == 1)
        assert caller._ws is not None
        await send_text_frame_bytes(caller._ws, b'{"event":"\xc3\x28"}')
        assert await caller.wait_closed(TIMEOUT) == 1007
    labels = {"transport": "twilio", "reason": "invalid_utf8"}
    await wait_for(lambda: gw.metric("gateway_malformed_input_total", labels) == 1)


async def test_audio_before_media_start_is_counted_then_the_call_proceeds(
    gateway: GatewayFactory,
) -> None:
    gw = await gateway()
    call = gw.caller()
    await call.connect(start=False)
    try:
        await call.send_bytes(b"\xff" * 160)
        await call.send_media_start()
        await call.play(ulaw_tone(2), realtime=False)
        await wait_for(lambda: call.stats.bytes_received >= 320)
        labels = {"transport": "asterisk_ws", "reason": "audio_before_start"}
        assert gw.metric("gateway_malformed_input_total", labels) == 1
    finally:
        await call.close()


async def test_unsupported_codec_ends_the_call_with_1003(gateway: GatewayFactory) -> None:
    gw = await gateway()
    call = gw.caller()
    await call.connect(start=False)
    try:
        await call.send_text(call.media_start().replace("format:ulaw", "format:opus"))
        assert await call.wait_closed(TIMEOUT) == 1003
    finally:
        await call.close()
    labels = {"transport": "asterisk_ws", "reason": "unsupported_codec"}
    assert gw.metric("gateway_malformed_input_total", labels) == 1
    assert gw.calls == 0


# ------------------------------------------------------------------ voice agent


SLIN_CODECS = ["slin", "slin12", "slin16", "slin24", "slin32", "slin44", "slin48", "slin96"]
SLIN_CODECS += ["slin192"]


@pytest.mark.parametrize("codec", SLIN_CODECS)
async def test_every_slin_rate_gets_the_greeting_and_a_reply(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path, codec: str
) -> None:
    """A whole call per rate Asterisk offers: greeting (outbound), utterance (inbound), reply.

    12/96/192 kHz used to hang up at once (no resampler for the inbound rate) and 32 kHz at
    the first reply (none for TTS 16 kHz -> 32 kHz).
    """
    backends = await speech_backends(aiohttp_server)
    settings = voice_settings(
        backends.sim_url,
        tmp_path,
        agent=AgentMode.WEBHOOK,
        agent_webhook_url=backends.agent_url,
        greeting_text="أهلا وسهلا بك، كيف يمكنني مساعدتك؟",  # 12 ms/char: ~0.4 s of audio
        asterisk_ws_username=USER,
        asterisk_ws_password=PASSWORD,
    )
    client: TestClient = await aiohttp_client(create_app(settings))
    call = AsteriskWsCaller(
        client.session,
        str(client.make_url(PATH)),
        username=USER,
        password=PASSWORD,
        control_format="json",
        codec=codec,
        speed=4.0,
    )
    rate = SLIN_RATES[codec]
    async with call:
        # The greeting's first-frame and sentence marks came back: it was played.
        await wait_for(lambda: len([m for m in call.stats.marks_processed if m[0] == "m"]) >= 2)
        greeting = call.stats.bytes_received
        assert greeting > rate * 2 * 0.3  # at least 0.3 s of the greeting, at this rate
        await call.play(voiced(0.8, rate=rate) + silence(0.9, rate=rate), realtime=True)
        requests = backends.requests
        await wait_for(lambda: any(q.get("event") == "utterance" for q in requests))
        await wait_for(lambda: call.stats.bytes_received - greeting > rate * 2 * 0.5)
        assert all(size % call.frame_size == 0 for size in call.stats.received_sizes)
        assert call.stats.dropped_partial_bytes == 0 and not call.closed
    request = next(q for q in requests if q.get("event") == "utterance")
    assert request["text"] == TRANSCRIPT
    registry = client.app[keys.METRICS].registry  # type: ignore[index]
    labels = {"transport": "asterisk_ws", "outcome": "completed"}
    await wait_for(lambda: registry.get_sample_value("gateway_calls_total", labels) == 1)


async def test_voice_agent_call_speaks_the_reply_and_marks_are_processed(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path
) -> None:
    backends = await speech_backends(aiohttp_server)
    settings = voice_settings(
        backends.sim_url,
        tmp_path,
        agent=AgentMode.WEBHOOK,
        agent_webhook_url=backends.agent_url,
        greeting_text="أهلا وسهلا بك، كيف يمكنني مساعدتك؟",
        asterisk_ws_username=USER,
        asterisk_ws_password=PASSWORD,
    )
    client: TestClient = await aiohttp_client(create_app(settings))
    call = AsteriskWsCaller(
        client.session,
        str(client.make_url(PATH)),
        username=USER,
        password=PASSWORD,
        control_format="json",
        speed=2.0,
    )
    async with call:
        await wait_for(lambda: len(call.stats.marks_processed) >= 2)  # greeting heard
        greeting = call.stats.bytes_received
        caller_audio = pcm16_to_ulaw(voiced(0.8) + silence(0.9))
        await call.play(caller_audio, realtime=True)
        requests = backends.requests
        await wait_for(lambda: any(q.get("event") == "utterance" for q in requests))
        await wait_for(lambda: call.stats.bytes_received - greeting > 4000)
        # Greeting (first frame + sentence) and reply (first frame + 2 sentences); "q" ids
        # are the core's own progress marks.
        await wait_for(
            lambda: len([n for n in call.stats.marks_processed if n.startswith("m")]) >= 5
        )
        assert all(size % 160 == 0 for size in call.stats.received_sizes)
        assert call.stats.dropped_partial_bytes == 0 and call.stats.ignored_texts == 0
    request = next(q for q in requests if q.get("event") == "utterance")
    assert request["text"] == TRANSCRIPT
    assert request["call"]["transport"] == "asterisk_ws"
    await wait_for(lambda: any(q.get("event") == "call.ended" for q in requests))
    record = json.loads((tmp_path / "calls.jsonl").read_text(encoding="utf-8").splitlines()[0])
    turn = next(t for t in record["turns"] if t["kind"] == "utterance")
    assert turn["reply"] == REPLY
    assert "heard" in turn["timings"]  # the first-frame mark came back from Asterisk
