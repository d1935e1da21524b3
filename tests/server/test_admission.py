"""Admission on every transport: at capacity, draining and with the speech backend down.

Issue 10 items 2, 9 and 14: a new call is refused while ``/readyz`` is 503 (Hamsa circuit
open), politely on each carrier (Twilio busy TwiML; chan_websocket HTTP 503 *before* the
upgrade, so Asterisk's Dial() fails with CHANUNAVAIL instead of answering; AudioSocket the
hang-up packet at once), every refusal is counted, and refusal log lines are rate-limited.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from gateway.config import AgentMode
from gateway.readiness import Probe
from gateway.server import keys
from gateway.server.app import create_app
from gateway.sim.asterisk_caller import AsteriskWsCaller, AudioSocketCaller, basic_auth_header
from tests.call_helpers import wait_for
from tests.conftest import TIMEOUT, make_settings

USER, PASSWORD, PATH = "asterisk", "pw-0123", "/asterisk/media"
SLIN_FRAME = bytes(range(1, 161)) * 2  # 20 ms of slin 8 kHz, not silent

Start = Callable[..., Awaitable[TestClient]]


@pytest.fixture
def start(aiohttp_client: Any) -> Start:
    async def run(**overrides: Any) -> TestClient:
        settings = make_settings(
            **{
                "agent": AgentMode.PARROT,
                "host": "127.0.0.1",
                "audiosocket_port": 0,
                "asterisk_ws_username": USER,
                "asterisk_ws_password": PASSWORD,
                **overrides,
            }
        )
        client: TestClient = await aiohttp_client(create_app(settings))
        return client

    return run


def metric(client: TestClient, name: str, labels: dict[str, str]) -> float:
    value = client.app[keys.METRICS].registry.get_sample_value(name, labels)  # type: ignore[index]
    return 0.0 if value is None else float(value)


def refused(client: TestClient, transport: str, reason: str) -> float:
    return metric(
        client, "gateway_calls_total", {"transport": transport, "outcome": "refused_" + reason}
    )


def speech_down(client: TestClient) -> dict[str, bool]:
    """Register a speech probe whose circuit we control (as the Hamsa service's probe does)."""
    state = {"up": False}
    client.app[keys.READINESS].register(  # type: ignore[index]
        "speech", lambda: Probe(state["up"], {"circuit": "closed" if state["up"] else "open"})
    )
    return state


def asterisk(client: TestClient) -> AsteriskWsCaller:
    return AsteriskWsCaller(
        client.session, str(client.make_url(PATH)), username=USER, password=PASSWORD
    )


async def occupy(client: TestClient) -> AudioSocketCaller:
    """One live AudioSocket call (fills MAX_CALLS=1)."""
    port: int = client.app[keys.AUDIOSOCKET].port  # type: ignore[index]
    call = AudioSocketCaller("127.0.0.1", port)
    await call.__aenter__()
    await call.play(SLIN_FRAME, realtime=False)
    await wait_for(lambda: client.app[keys.CALLS].count == 1)  # type: ignore[index]
    return call


# -------------------------------------------------------------- speech down


async def test_while_the_circuit_is_open_every_transport_refuses_and_readyz_agrees(
    start: Start,
) -> None:
    client = await start()
    state = speech_down(client)
    assert (await client.get("/readyz")).status == 503

    twiml = await client.post("/twilio/voice", data={"CallSid": "CA1"})
    assert twiml.status == 200
    assert "<Hangup" in await twiml.text() and "<Connect" not in await twiml.text()

    upgrade = await client.session.get(
        client.make_url(PATH), headers={"Authorization": basic_auth_header(USER, PASSWORD)}
    )
    assert upgrade.status == 503 and upgrade.headers["Retry-After"].isdigit()

    port: int = client.app[keys.AUDIOSOCKET].port  # type: ignore[index]
    async with AudioSocketCaller("127.0.0.1", port) as call:
        await call.wait_done(TIMEOUT)
        assert call.stats.hangup_received and call.stats.packets_received == 1

    for transport in ("twilio", "asterisk_ws", "audiosocket"):
        assert refused(client, transport, "speech_unavailable") == 1, transport
    assert client.app[keys.CALLS].count == 0  # type: ignore[index]

    state["up"] = True  # the circuit closes: calls are welcome again
    assert (await client.get("/readyz")).status == 200
    twiml = await client.post("/twilio/voice", data={"CallSid": "CA2"})
    assert "<Connect>" in await twiml.text()
    async with asterisk(client) as call:
        await call.play(bytes(160), realtime=False)
        await wait_for(lambda: client.app[keys.CALLS].count == 1)  # type: ignore[index]


# ----------------------------------------------------- chan_websocket politeness


@pytest.mark.parametrize("why", ["at_capacity", "draining", "speech_unavailable"])
async def test_chan_websocket_refusal_is_http_503_before_the_upgrade(
    start: Start, why: str
) -> None:
    client = await start(max_calls=1)
    held: AudioSocketCaller | None = None
    if why == "at_capacity":
        held = await occupy(client)
    elif why == "draining":
        client.app[keys.CALLS].draining = True  # type: ignore[index]
    else:
        speech_down(client)
    try:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refusal:
            await asterisk(client).connect()
        # Not 101: Asterisk's websocket client fails, Dial() -> CHANUNAVAIL, no answer.
        assert refusal.value.status == 503
        assert refusal.value.headers is not None and refusal.value.headers["Retry-After"] == "5"
        assert refused(client, "asterisk_ws", why) == 1
    finally:
        if held is not None:
            await held.__aexit__(None, None, None)


async def test_audiosocket_at_capacity_gets_the_hangup_packet_before_anything_is_read(
    start: Start,
) -> None:
    client = await start(max_calls=1)
    held = await occupy(client)
    try:
        port: int = client.app[keys.AUDIOSOCKET].port  # type: ignore[index]
        async with AudioSocketCaller("127.0.0.1", port) as second:
            await second.wait_done(TIMEOUT)  # no audio sent: refused on connect
            assert second.stats.hangup_received
        assert refused(client, "audiosocket", "at_capacity") == 1
    finally:
        await held.__aexit__(None, None, None)


# ------------------------------------------------------------ log flooding


async def test_a_flood_of_refusals_logs_one_line_per_reason(
    start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    client = await start(twilio_allow_unsigned=False)
    client.app[keys.CALLS].draining = True  # type: ignore[index]
    for _ in range(50):
        assert (await client.post("/twilio/voice", data={"CallSid": "CA1"})).status == 403
        await client.session.get(client.make_url(PATH))  # no credentials: 401
        await client.session.get(
            client.make_url(PATH), headers={"Authorization": basic_auth_header(USER, PASSWORD)}
        )  # draining: 503
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len([m for m in warnings if "signature" in m]) == 1
    assert len([m for m in warnings if "credentials" in m]) == 1
    assert len([m for m in warnings if "draining" in m]) == 1
    assert refused(client, "asterisk_ws", "draining") == 50
    assert metric(client, "gateway_auth_failures_total", {"transport": "asterisk_ws"}) == 50
