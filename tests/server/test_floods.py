"""Floods on one call over a real socket: the transport side buffers nothing unbounded.

Issue 10 item 3 (inbound side): 400k DTMF on one Twilio call grew the process by 43 MB, 1M
AudioSocket DTMF packets from 59 to 265 MB. The voice agent's own DTMF buffer and job queue are
bounded elsewhere; here the conversation drops every event, so any growth left is the
transport's (protocol state, driver, server). Measured with tracemalloc, not RSS.
"""

from __future__ import annotations

import asyncio
import struct
import tracemalloc
import uuid
from typing import Any

from aiohttp.test_utils import TestClient

from gateway.calls import CallSession, Conversation
from gateway.config import AgentMode
from gateway.server import keys
from gateway.server.app import create_app
from gateway.sim.twilio_caller import TwilioCaller
from gateway.telephony.events import Dtmf, InboundEvent
from tests.call_helpers import wait_for
from tests.conftest import TIMEOUT, make_settings

GROWTH_LIMIT = 2 * 1024 * 1024  # bytes still allocated after the flood


class Counting:
    """Counts DTMF and keeps nothing."""

    def __init__(self, session: CallSession) -> None:
        self.session = session
        self.dtmf = 0

    def on_event(self, event: InboundEvent) -> None:
        if isinstance(event, Dtmf):
            self.dtmf += 1

    async def run(self) -> None:
        await asyncio.Event().wait()

    async def finish(self) -> None:
        return None


async def start(aiohttp_client: Any) -> tuple[TestClient, list[Counting]]:
    app = create_app(make_settings(agent=AgentMode.PARROT, host="127.0.0.1", audiosocket_port=0))
    convs: list[Counting] = []

    def factory(session: CallSession) -> Conversation:
        conv = Counting(session)
        convs.append(conv)
        return conv

    app[keys.CONVERSATIONS] = factory
    client: TestClient = await aiohttp_client(app)
    return client, convs


async def test_a_dtmf_flood_on_a_twilio_call_leaves_no_growth(aiohttp_client: Any) -> None:
    client, convs = await start(aiohttp_client)
    count = 20_000
    async with TwilioCaller(
        client.session,
        str(client.make_url("/twilio/media")),
        public_ws_url="wss://gw.example.com/twilio/media",
    ) as call:
        await call.play(bytes(160), realtime=False)
        await wait_for(lambda: len(convs) == 1)
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for _ in range(count):
                await call.press("5")
            await wait_for(lambda: convs[0].dtmf == count, TIMEOUT * 3)
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert grown < GROWTH_LIMIT, grown
        assert client.app[keys.CALLS].count == 1  # type: ignore[index]


async def test_a_dtmf_flood_on_an_audiosocket_call_leaves_no_growth(aiohttp_client: Any) -> None:
    client, convs = await start(aiohttp_client)
    port: int = client.app[keys.AUDIOSOCKET].port  # type: ignore[index]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(struct.pack(">BH", 0x01, 16) + uuid.uuid4().bytes)
    writer.write(struct.pack(">BH", 0x10, 320) + bytes(320))
    await wait_for(lambda: len(convs) == 1)
    drain_task = asyncio.create_task(reader.read(-1))  # keep reading the paced audio
    count = 200_000
    chunk = (struct.pack(">BH", 0x03, 1) + b"7") * 10_000
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(count // 10_000):
            writer.write(chunk)
            await writer.drain()
        await wait_for(lambda: convs[0].dtmf == count, TIMEOUT * 3)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < GROWTH_LIMIT, grown
    assert client.app[keys.CALLS].count == 1  # type: ignore[index]
    writer.close()
    await wait_for(lambda: client.app[keys.CALLS].count == 0)  # type: ignore[index]
    drain_task.cancel()
