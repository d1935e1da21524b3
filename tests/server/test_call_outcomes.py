"""One source of truth for how a call ended (issue 10 item 19, the drained/crashed part).

The call record (written by the conversation's ``finish``, which reads ``session.outcome``)
and ``gateway_calls_total{outcome}`` must always agree: drained calls are ``drained``, a call
whose conversation raised is ``error``, a call that sent an oversized message is ``error``,
and a hang-up racing the end of a call cannot change the outcome after the record is made.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.calls import CallSession, Conversation
from gateway.config import AgentMode
from gateway.server import keys
from gateway.server.app import create_app
from gateway.server.serve import drain
from gateway.sim.twilio_caller import TwilioCaller
from gateway.telephony.events import Dtmf, InboundEvent
from tests.call_helpers import wait_for
from tests.conftest import TIMEOUT, make_settings


class OutcomeRecorder:
    """A conversation that writes its 'record' the way the voice agent does.

    ``finish`` reads ``session.outcome`` first, then may wait (a slow ``call.ended`` webhook),
    exactly the window in which a drain's hang-up used to rewrite the outcome.
    """

    def __init__(self, session: CallSession, gate: asyncio.Event, crash_on_dtmf: bool) -> None:
        self.session = session
        self.gate = gate
        self.crash_on_dtmf = crash_on_dtmf
        self.recorded: str | None = None
        self.finishing = asyncio.Event()

    def on_event(self, event: InboundEvent) -> None:
        if self.crash_on_dtmf and isinstance(event, Dtmf):
            raise RuntimeError("bug in the conversation")

    async def run(self) -> None:
        await asyncio.Event().wait()

    async def finish(self) -> None:
        self.recorded = self.session.outcome
        self.finishing.set()
        await self.gate.wait()


async def start(
    aiohttp_client: Any, *, crash: bool = False, **overrides: Any
) -> tuple[TestClient, list[OutcomeRecorder]]:
    settings = make_settings(**{"agent": AgentMode.PARROT, **overrides})
    app = create_app(settings)
    convs: list[OutcomeRecorder] = []
    gate = asyncio.Event()
    gate.set()

    def factory(session: CallSession) -> Conversation:
        conv = OutcomeRecorder(session, gate, crash)
        convs.append(conv)
        return conv

    app[keys.CONVERSATIONS] = factory
    client: TestClient = await aiohttp_client(app)
    return client, convs


def caller(client: TestClient) -> TwilioCaller:
    return TwilioCaller(
        client.session,
        str(client.make_url("/twilio/media")),
        public_ws_url="wss://gw.example.com/twilio/media",
    )


def calls_total(client: TestClient, outcome: str) -> float:
    registry = client.app[keys.METRICS].registry  # type: ignore[index]
    value = registry.get_sample_value(
        "gateway_calls_total", {"transport": "twilio", "outcome": outcome}
    )
    return 0.0 if value is None else float(value)


async def test_a_call_hung_up_by_the_drain_is_drained_in_record_and_metric(
    aiohttp_client: Any,
) -> None:
    client, convs = await start(aiohttp_client)
    async with caller(client) as call:
        await call.play(bytes(160), realtime=False)
        await wait_for(lambda: client.app[keys.CALLS].count == 1)  # type: ignore[index]
        await drain(client.app, 0.05, asyncio.Event())
        assert await call.wait_closed(TIMEOUT) == 1000
    assert convs[0].recorded == "drained"
    assert calls_total(client, "drained") == 1 and calls_total(client, "completed") == 0


async def test_a_drain_racing_the_end_of_a_call_cannot_rewrite_its_outcome(
    aiohttp_client: Any,
) -> None:
    client, convs = await start(aiohttp_client)
    async with caller(client) as call:
        await call.play(bytes(160), realtime=False)
        await wait_for(lambda: len(convs) == 1)
        convs[0].gate.clear()  # the call's finish will hang (slow call.ended webhook)
        await call.stop()  # the caller hangs up: the call is completed
        await asyncio.wait_for(convs[0].finishing.wait(), TIMEOUT)
        # The drain times out while the call is still finishing and hangs everything up.
        drainer = asyncio.create_task(drain(client.app, 0.01, asyncio.Event()))
        await asyncio.sleep(0.05)
        convs[0].gate.set()
        await asyncio.wait_for(drainer, TIMEOUT)
    assert convs[0].recorded == "completed"
    assert calls_total(client, "completed") == 1 and calls_total(client, "drained") == 0


async def test_a_conversation_that_raises_ends_its_call_as_an_error_logged_once(
    aiohttp_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    client, convs = await start(aiohttp_client, crash=True)
    async with caller(client) as call:
        await call.play(bytes(160), realtime=False)
        await call.press("5")
        assert await call.wait_closed(TIMEOUT) == 1011
    await wait_for(lambda: client.app[keys.CALLS].count == 0)  # type: ignore[index]
    assert convs[0].recorded == "error"
    assert calls_total(client, "error") == 1 and calls_total(client, "completed") == 0
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "bug in the conversation" in errors[0].getMessage()
    # The gateway still takes calls.
    async with caller(client) as again:
        await again.play(bytes(160), realtime=False)
        await wait_for(lambda: client.app[keys.CALLS].count == 1)  # type: ignore[index]


async def test_an_oversized_message_ends_the_call_as_an_error(aiohttp_client: Any) -> None:
    client, convs = await start(aiohttp_client, max_message_bytes=4096)
    async with caller(client) as call:
        await call.play(bytes(160), realtime=False)
        await wait_for(lambda: len(convs) == 1)
        await call.send_raw('{"event":"media","pad":"' + "x" * 8192 + '"}')
        assert await call.wait_closed(TIMEOUT) == 1009
    await wait_for(lambda: client.app[keys.CALLS].count == 0)  # type: ignore[index]
    assert convs[0].recorded == "error"
    assert calls_total(client, "error") == 1 and calls_total(client, "completed") == 0
