"""Slowloris and slow bodies (issue 10 items 9 and 10), with raw sockets on 127.0.0.1.

The gateway is started the way ``gateway serve`` starts it (:func:`start_site`: guarded site,
keep-alive timeout), with the limits shrunk so the tests take fractions of a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from gateway.config import AgentMode
from gateway.server import serve, twilio_routes
from gateway.server.app import create_app
from gateway.server.serve import GUARD, start_site
from gateway.sim.twilio_caller import TwilioCaller
from tests.call_helpers import wait_for
from tests.conftest import TIMEOUT, make_settings

HEADER_TIMEOUT = 0.3
MAX_HALF_OPEN = 5


@pytest.fixture
async def gateway(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[web.Application, int]]:
    monkeypatch.setattr(serve, "HEADER_TIMEOUT_SECONDS", HEADER_TIMEOUT)
    monkeypatch.setattr(serve, "MAX_HALF_OPEN_CONNECTIONS", MAX_HALF_OPEN)
    monkeypatch.setattr(serve, "LINGERING_SECONDS", HEADER_TIMEOUT)
    monkeypatch.setattr(twilio_routes, "BODY_TIMEOUT_SECONDS", HEADER_TIMEOUT)
    app = create_app(make_settings(agent=AgentMode.PARROT, host="127.0.0.1"))
    runner, site = await start_site(app, "127.0.0.1", 0)
    try:
        yield app, site.port
    finally:
        await runner.cleanup()


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """Read until EOF (what the server sent, if anything); fail if not closed in time."""
    async with asyncio.timeout(seconds):
        return await reader.read()


async def healthy(port: int) -> bool:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/healthz") as response,
    ):
        return response.status == 200


async def test_a_half_open_request_is_closed_and_calls_still_work(
    gateway: tuple[web.Application, int],
) -> None:
    app, port = gateway
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # headers never finish
    silent_reader, silent_writer = await asyncio.open_connection("127.0.0.1", port)
    # Meanwhile a real call goes on for longer than the header timeout.
    async with (
        aiohttp.ClientSession() as http,
        TwilioCaller(
            http, f"http://127.0.0.1:{port}/twilio/media", public_ws_url="wss://x/twilio/media"
        ) as call,
    ):
        await call.play(bytes(160), realtime=False)
        assert await closed_within(reader, HEADER_TIMEOUT * 5) == b""
        assert await closed_within(silent_reader, HEADER_TIMEOUT * 5) == b""
        await call.play(bytes(160 * 5), realtime=False)
        await wait_for(lambda: len(call.received_audio()) >= 160 * 6)
        assert not call.closed
    assert app[GUARD].closed_slow == 2 and app[GUARD].half_open == 0
    assert await healthy(port)
    writer.close()
    silent_writer.close()


async def test_half_open_connections_beyond_the_cap_are_closed_at_once(
    gateway: tuple[web.Application, int],
) -> None:
    app, port = gateway
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(MAX_HALF_OPEN)]
    await wait_for(lambda: app[GUARD].half_open == MAX_HALF_OPEN)
    extra_reader, extra_writer = await asyncio.open_connection("127.0.0.1", port)
    with contextlib.suppress(ConnectionResetError):  # closed at once: FIN or RST
        assert await closed_within(extra_reader, HEADER_TIMEOUT / 2) == b""
    assert app[GUARD].refused == 1
    for reader, _ in held:
        assert await closed_within(reader, HEADER_TIMEOUT * 5) == b""
    assert await healthy(port)  # room again
    for _, writer in held:
        writer.close()
    extra_writer.close()


async def test_a_body_that_never_completes_gets_408_and_one_log_line(
    gateway: tuple[web.Application, int], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    _, port = gateway
    head = (
        b"POST /twilio/voice HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nCallSid=CA"
    )
    for _ in range(3):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head)
        answer = await closed_within(reader, TIMEOUT)
        assert answer.startswith(b"HTTP/1.1 408")
        writer.close()
    # A client that goes away mid-body: one line, no traceback.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.transport.abort()
    await asyncio.sleep(0.1)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    lines = [r.getMessage() for r in caplog.records if "body" in r.getMessage()]
    assert len(lines) == 2, lines  # one per reason, the repeats only counted
    assert "not complete within" in lines[0] and "went away" in lines[1]
