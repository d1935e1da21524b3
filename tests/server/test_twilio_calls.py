"""Whole Twilio calls over real sockets: webhook, signed socket, parrot, bad input, hang-up."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.config import AgentMode, BusyMode, Settings
from gateway.server import keys
from gateway.server.app import create_app
from gateway.sim.twilio_caller import TwilioCaller
from gateway.telephony.twilio_signature import compute_signature
from tests.call_helpers import other_tasks, wait_for
from tests.conftest import TIMEOUT, make_settings

TOKEN = "test-auth-token-0123456789"
PUBLIC = "https://gw.example.com"

ClientFactory = Callable[[web.Application], Awaitable[TestClient]]


def sample(name: str, labels: dict[str, str], client: TestClient) -> float:
    value = client.app[keys.METRICS].registry.get_sample_value(name, labels)  # type: ignore[index]
    return 0.0 if value is None else float(value)


def ulaw_tone(frames: int, seed: int = 0) -> bytes:
    """Distinct, deterministic μ-law frames (no two identical) for echo matching."""
    out = bytearray()
    for i in range(frames * 160):
        out.append((i * 7 + seed * 13 + (i // 160) * 31) % 251)
    return bytes(out)


@pytest.fixture
async def gateway(aiohttp_client: Any) -> AsyncIterator[Callable[..., Awaitable[TestClient]]]:
    async def start(**overrides: Any) -> TestClient:
        settings: Settings = make_settings(**{"agent": AgentMode.PARROT, **overrides})
        client: TestClient = await aiohttp_client(create_app(settings))
        return client

    yield start


def caller(client: TestClient, **kwargs: Any) -> TwilioCaller:
    return TwilioCaller(
        client.session,
        str(client.make_url("/twilio/media")),
        public_ws_url="wss://gw.example.com/twilio/media",
        **kwargs,
    )


def signed_post_headers(url: str, form: dict[str, str], token: str = TOKEN) -> dict[str, str]:
    return {"X-Twilio-Signature": compute_signature(token, url, form)}


async def test_voice_webhook_answers_connect_stream_with_parameters(gateway: Any) -> None:
    client = await gateway(twilio_auth_token=TOKEN, twilio_stream_parameters=(("tenant", "a&b"),))
    form = {"CallSid": "CA1", "From": "+15550001", "To": "+15550002", "AccountSid": "AC1"}
    response = await client.post(
        "/twilio/voice",
        data=form,
        headers=signed_post_headers(PUBLIC + "/twilio/voice", form),
    )
    assert response.status == 200
    assert response.content_type == "text/xml"
    body = await response.text()
    assert '<Stream url="wss://gw.example.com/twilio/media"' in body
    assert "?" not in re.search(r'url="([^"]+)"', body).group(1)  # type: ignore[union-attr]
    for name, value in (
        ("From", "+15550001"),
        ("To", "+15550002"),
        ("CallSid", "CA1"),
        ("tenant", "a&amp;b"),
    ):
        assert f'<Parameter name="{name}" value="{value}"' in body
    assert 'statusCallback="https://gw.example.com/twilio/stream-status"' in body


async def test_voice_webhook_refuses_bad_or_missing_signature(gateway: Any) -> None:
    client = await gateway(twilio_auth_token=TOKEN)
    form = {"CallSid": "CA1"}
    missing = await client.post("/twilio/voice", data=form)
    wrong = await client.post(
        "/twilio/voice",
        data=form,
        headers=signed_post_headers(PUBLIC + "/twilio/voice", form, token="other"),
    )
    tampered = await client.post(
        "/twilio/voice",
        data={"CallSid": "CA2"},
        headers=signed_post_headers(PUBLIC + "/twilio/voice", form),
    )
    assert (missing.status, wrong.status, tampered.status) == (403, 403, 403)
    assert sample("gateway_twilio_signature_failures_total", {"endpoint": "voice"}, client) == 3


async def test_without_token_twilio_is_refused_unless_explicitly_allowed(gateway: Any) -> None:
    strict = await gateway(twilio_allow_unsigned=False)
    assert (await strict.post("/twilio/voice", data={"CallSid": "CA1"})).status == 403
    assert (await strict.get("/twilio/media")).status == 403
    dev = await gateway(twilio_allow_unsigned=True)
    assert (await dev.post("/twilio/voice", data={"CallSid": "CA1"})).status == 200


@pytest.mark.parametrize(
    ("mode", "expected"),
    [(BusyMode.SAY, "<Say>Busy, sorry.</Say><Hangup"), (BusyMode.REJECT, '<Reject reason="busy"')],
)
async def test_at_capacity_the_caller_is_turned_away_politely(
    gateway: Any, mode: BusyMode, expected: str
) -> None:
    client = await gateway(max_calls=1, twilio_busy_mode=mode, twilio_busy_message="Busy, sorry.")
    async with caller(client) as first:
        await first.play(ulaw_tone(1), realtime=False)
        await wait_for(lambda: client.app[keys.CALLS].count == 1)  # type: ignore[index]
        response = await client.post("/twilio/voice", data={"CallSid": "CA2"})
        assert response.status == 200
        assert expected in (await response.text()).replace("\n", "")
        # A media socket that slips past the webhook is closed with 1013 (try again later).
        async with caller(client) as second:
            assert await second.wait_closed(TIMEOUT) == 1013
        await first.stop()
        await first.wait_closed(TIMEOUT)
    assert (
        sample(
            "gateway_calls_total", {"transport": "twilio", "outcome": "refused_at_capacity"}, client
        )
        == 2
    )


async def test_draining_turns_new_calls_away(gateway: Any) -> None:
    client = await gateway()
    client.app[keys.CALLS].draining = True  # type: ignore[index]
    response = await client.post("/twilio/voice", data={"CallSid": "CA9"})
    assert response.status == 200 and "<Hangup" in await response.text()


async def test_stream_status_callback_is_counted(gateway: Any) -> None:
    client = await gateway(twilio_auth_token=TOKEN)
    form = {"StreamEvent": "stream-stopped", "CallSid": "CA1", "StreamSid": "MZ1"}
    url = PUBLIC + "/twilio/stream-status"
    ok = await client.post(
        "/twilio/stream-status", data=form, headers=signed_post_headers(url, form)
    )
    bad = await client.post("/twilio/stream-status", data=form)
    assert (ok.status, bad.status) == (204, 403)
    assert sample("gateway_twilio_stream_callbacks_total", {"event": "stream-stopped"}, client) == 1


# ------------------------------------------------------------------- media socket


async def test_media_upgrade_requires_signature_over_the_wss_url(gateway: Any) -> None:
    client = await gateway(twilio_auth_token=TOKEN)
    unsigned = await client.get("/twilio/media")
    wrong_url = await client.get(
        "/twilio/media",
        headers={"X-Twilio-Signature": compute_signature(TOKEN, PUBLIC + "/twilio/media", {})},
    )
    assert (unsigned.status, wrong_url.status) == (403, 403)
    async with caller(client, auth_token=TOKEN) as call:
        await call.play(ulaw_tone(2), realtime=False)
        await wait_for(lambda: call.stats.bytes_received >= 320)
    assert sample("gateway_twilio_signature_failures_total", {"endpoint": "media"}, client) == 2


async def test_parrot_call_returns_the_callers_audio_and_leaves_nothing_behind(
    gateway: Any,
) -> None:
    client = await gateway()
    before = other_tasks()
    audio = ulaw_tone(25)
    async with caller(client, custom_parameters={"From": "+1555"}) as call:
        await call.play(audio, realtime=True)
        await call.press("5")
        await wait_for(lambda: call.stats.bytes_received >= len(audio))
        assert call.received_audio() == audio
        await call.stop()
        assert await call.wait_closed(TIMEOUT) == 1000
    await wait_for(lambda: client.app[keys.CALLS].count == 0)  # type: ignore[index]
    await asyncio.sleep(0)
    assert other_tasks() - before == set()
    assert (
        sample("gateway_calls_total", {"transport": "twilio", "outcome": "completed"}, client) == 1
    )
    assert sample("gateway_frames_total", {"transport": "twilio", "direction": "in"}, client) == 25
    assert sample("gateway_frames_total", {"transport": "twilio", "direction": "out"}, client) == 25
    assert sample("gateway_active_calls", {"transport": "twilio"}, client) == 0
    assert sample("gateway_call_tasks_leaked_total", {}, client) == 0


async def test_parrot_with_delay_batches_and_keeps_audio_intact(gateway: Any) -> None:
    client = await gateway(parrot_delay_ms=100)
    audio = ulaw_tone(30, seed=3)
    async with caller(client) as call:
        await call.play(audio, realtime=True)
        await wait_for(lambda: call.stats.bytes_received >= len(audio))
        assert call.received_audio() == audio
        # Batched: fewer outbound messages than inbound frames.
        assert call.stats.media_received < 30


async def test_caller_hangup_by_closing_socket_ends_call_cleanly(gateway: Any) -> None:
    client = await gateway()
    call = caller(client)
    await call.connect()
    await call.play(ulaw_tone(3), realtime=False)
    await wait_for(lambda: client.app[keys.CALLS].count == 1)  # type: ignore[index]
    await call.close()
    await wait_for(lambda: client.app[keys.CALLS].count == 0)  # type: ignore[index]


# ---------------------------------------------------------------------- bad input


def media_message(payload: str, stream: str) -> str:
    return json.dumps(
        {
            "event": "media",
            "sequenceNumber": "9",
            "streamSid": stream,
            "media": {"track": "inbound", "chunk": "1", "timestamp": "0", "payload": payload},
        }
    )


BAD_INPUTS: list[tuple[str, Callable[[TwilioCaller], str | bytes], bool]] = [
    ("invalid_json", lambda c: '{"event": "media", ', False),
    ("not_an_object", lambda c: "[1, 2, 3]", False),
    ("bad_base64", lambda c: media_message("***not base64***", c.stream_sid), False),
    ("bad_payload_size", lambda c: media_message("", c.stream_sid), False),
    ("binary_frame", lambda c: b"\x00\x01\x02", True),
    ("second_start", lambda c: "SECOND_START", True),
    ("message_too_large", lambda c: "x" * 70_000, True),
]


@pytest.mark.parametrize(("reason", "make", "fatal"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
async def test_bad_input_is_counted_and_never_affects_another_call(
    gateway: Any,
    reason: str,
    make: Callable[[TwilioCaller], str | bytes],
    fatal: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = await gateway()
    async with caller(client) as victim, caller(client) as bystander:
        await victim.play(ulaw_tone(1), realtime=False)
        await bystander.play(ulaw_tone(1), realtime=False)
        await wait_for(lambda: client.app[keys.CALLS].count == 2)  # type: ignore[index]
        bad = make(victim)
        for _ in range(2):
            if bad == "SECOND_START":
                await victim.send_start()
            elif isinstance(bad, bytes):
                await victim._ws.send_bytes(bad)  # type: ignore[union-attr]
            else:
                await victim.send_raw(bad)
            if fatal:
                break
        if fatal:
            code = await victim.wait_closed(TIMEOUT)
            assert code in (1003, 1008, 1009)
        else:
            await victim.play(ulaw_tone(2, seed=5), realtime=False)
            await wait_for(lambda: victim.stats.bytes_received >= 160 * 3)
            assert not victim.closed
        await wait_for(
            lambda: (
                sample(
                    "gateway_malformed_input_total",
                    {"transport": "twilio", "reason": reason},
                    client,
                )
                >= 1
            )
        )
        # The other call is untouched.
        await bystander.play(ulaw_tone(2, seed=9), realtime=False)
        await wait_for(lambda: bystander.stats.bytes_received >= 160 * 3)
        assert not bystander.closed
    expected = 1 if fatal else 2
    assert (
        sample("gateway_malformed_input_total", {"transport": "twilio", "reason": reason}, client)
        == expected
    )
    # Logged once per reason per call, with the call id.
    lines = [r for r in caplog.records if reason in r.getMessage()]
    assert len(lines) == 1


async def test_media_before_start_is_counted_then_call_proceeds(gateway: Any) -> None:
    client = await gateway()
    call = caller(client)
    await call.connect(start=False)
    try:
        await call.send_raw(
            media_message(base64.b64encode(b"\xff" * 160).decode(), call.stream_sid)
        )
        await call.send_start()
        await call.play(ulaw_tone(2), realtime=False)
        await wait_for(lambda: call.stats.bytes_received >= 320)
        assert (
            sample(
                "gateway_malformed_input_total",
                {"transport": "twilio", "reason": "media_before_start"},
                client,
            )
            == 1
        )
    finally:
        await call.close()


async def test_no_start_within_timeout_closes_socket(gateway: Any) -> None:
    from gateway.telephony import driver

    client = await gateway()
    original = driver.DriverConfig.__init__

    def short(self: driver.DriverConfig, *a: Any, **k: Any) -> None:
        original(self, *a, **k)
        self.start_timeout = 0.2

    driver.DriverConfig.__init__ = short  # type: ignore[method-assign]
    try:
        call = caller(client)
        await call.connect(start=False)
        assert await call.wait_closed(TIMEOUT) == 1008
        await call.close()
    finally:
        driver.DriverConfig.__init__ = original  # type: ignore[method-assign]


# ------------------------------------------------------------------------- hang-up


async def fake_twilio_rest(
    aiohttp_server: Any, status: int, body: dict[str, Any]
) -> tuple[TestServer, list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []

    async def update(request: web.Request) -> web.Response:
        form = await request.post()
        seen.append(
            {
                "path": request.path,
                "auth": request.headers.get("Authorization", ""),
                "form": dict(form),
            }
        )
        return web.json_response(body, status=status)

    app = web.Application()
    app.router.add_post("/2010-04-01/Accounts/{account}/Calls/{call}.json", update)
    server: TestServer = await aiohttp_server(app)
    return server, seen


@pytest.mark.parametrize(
    ("status", "body"),
    [(200, {"status": "completed"}), (404, {"code": 20404, "message": "not found"})],
)
async def test_max_duration_hangs_up_by_closing_socket_and_rest(
    gateway: Any, aiohttp_server: Any, status: int, body: dict[str, Any]
) -> None:
    server, seen = await fake_twilio_rest(aiohttp_server, status, body)
    client = await gateway(
        max_call_seconds=1.0,
        twilio_auth_token=TOKEN,
        twilio_account_sid="AC123",
        twilio_api_base_url=str(server.make_url("")).rstrip("/"),
    )
    async with caller(client, auth_token=TOKEN) as call:
        await call.play(ulaw_tone(1), realtime=False)
        assert await call.wait_closed(TIMEOUT) == 1000
    await wait_for(lambda: len(seen) == 1)
    assert seen[0]["path"] == f"/2010-04-01/Accounts/AC123/Calls/{call.call_sid}.json"
    assert seen[0]["form"] == {"Status": "completed"}
    assert seen[0]["auth"].startswith("Basic ")
    await wait_for(lambda: client.app[keys.CALLS].count == 0)  # type: ignore[index]
    assert (
        sample("gateway_calls_total", {"transport": "twilio", "outcome": "max_duration"}, client)
        == 1
    )
    assert (
        sample(
            "gateway_carrier_api_errors_total",
            {"transport": "twilio", "operation": "hangup"},
            client,
        )
        == 0
    )
