"""Softphone routes over real sockets: off by default, tokens, Origin, capacity, limits, and
the conversation's events reaching the page."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from gateway.calls import CallSession, Conversation
from gateway.config import AgentMode
from gateway.server import keys
from gateway.server.app import create_app
from gateway.telephony.browser import issue_token
from gateway.telephony.events import CallerAudio, ClearAudio, MarkPlayed, PlayAudio, SetMark
from tests.call_helpers import Recorder, wait_for
from tests.conftest import TIMEOUT, make_settings

START = {"type": "start", "format": {"encoding": "pcm16", "sampleRate": 16000, "channels": 1}}
FRAME = b"\x01\x02" * 320  # 20 ms of 16 kHz PCM16


class Gateway:
    def __init__(self, client: TestClient, recorders: list[Recorder]) -> None:
        self.client = client
        self.recorders = recorders

    @property
    def origin(self) -> str:
        return str(self.client.make_url("")).rstrip("/")

    @property
    def app(self) -> Any:
        return self.client.app

    async def token(self, origin: str | None = None) -> str:
        response = await self.client.post("/phone/token", headers={"Origin": origin or self.origin})
        assert response.status == 200, await response.text()
        body = await response.json()
        token: str = body["token"]
        return token

    async def connect(
        self, token: str, origin: str | None = None
    ) -> aiohttp.ClientWebSocketResponse:
        return await self.client.ws_connect(
            "/browser/media", params={"token": token}, origin=origin or self.origin
        )

    async def call(self) -> aiohttp.ClientWebSocketResponse:
        ws = await self.connect(await self.token())
        await ws.send_json(START)
        # Queued messages ("started", conversation events) leave after the page's next
        # message; a real page sends audio every 20 ms.
        await ws.send_bytes(FRAME)
        return ws

    def metric(self, name: str, labels: dict[str, str]) -> float:
        value = self.app[keys.METRICS].registry.get_sample_value(name, labels)
        return 0.0 if value is None else float(value)


GatewayFactory = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def gateway(aiohttp_client: Any) -> GatewayFactory:
    async def start(record: bool = True, **overrides: Any) -> Gateway:
        settings = make_settings(**{"agent": AgentMode.PARROT, "browser_phone": True, **overrides})
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


async def next_text(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    """The next TEXT message as JSON (binary audio in between is skipped)."""
    while True:
        msg = await ws.receive(timeout=TIMEOUT)
        if msg.type is aiohttp.WSMsgType.TEXT:
            body: dict[str, Any] = json.loads(msg.data)
            return body
        assert msg.type is aiohttp.WSMsgType.BINARY, msg


# ------------------------------------------------------------------ off / page


async def test_everything_is_404_unless_browser_phone_is_on(aiohttp_client: Any) -> None:
    client = await aiohttp_client(create_app(make_settings(agent=AgentMode.PARROT)))
    origin = str(client.make_url("")).rstrip("/")
    for method, path in [
        ("GET", "/phone"),
        ("GET", "/phone/phone.js"),
        ("GET", "/phone/phone-worklet.js"),
        ("POST", "/phone/token"),
        ("GET", "/browser/media?token=x"),
    ]:
        response = await client.request(method, path, headers={"Origin": origin})
        assert response.status == 404, path


async def test_page_and_scripts_are_served_with_a_fresh_token(gateway: GatewayFactory) -> None:
    gw = await gateway()
    response = await gw.client.get("/phone")
    assert response.status == 200
    assert response.content_type == "text/html"
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    assert response.headers["Cache-Control"] == "no-store"
    page = await response.text()
    assert "__CALL_TOKEN" not in page
    token = page.split('name="call-token" content="')[1].split('"')[0]
    assert token.startswith("web-")
    assert 'name="call-token-ttl" content="60"' in page
    # The embedded token opens a call.
    ws = await gw.connect(token)
    await ws.send_json(START)
    await ws.send_bytes(FRAME)
    assert (await next_text(ws))["type"] == "started"
    await ws.close()
    for name in ("phone.js", "phone-worklet.js"):
        script = await gw.client.get(f"/phone/{name}")
        assert script.status == 200 and script.content_type == "text/javascript"
        assert "use strict" in await script.text()
    assert (await gw.client.get("/phone/phone.css")).content_type == "text/css"
    assert (await gw.client.get("/phone/missing.js")).status == 404


# ------------------------------------------------------------------ security


async def test_token_endpoint_needs_our_origin(gateway: GatewayFactory) -> None:
    gw = await gateway(browser_allowed_origins=("https://app.example.com",))
    assert (await gw.client.post("/phone/token")).status == 403  # no Origin at all
    bad = await gw.client.post("/phone/token", headers={"Origin": "https://evil.example"})
    assert bad.status == 403 and (await bad.json()) == {"error": "bad_origin"}
    assert await gw.token("https://app.example.com")  # the configured list
    assert await gw.token("https://gw.example.com")  # PUBLIC_URL's origin
    assert gw.metric("gateway_auth_failures_total", {"transport": "browser"}) == 2


async def test_media_socket_refuses_other_origins_and_bad_tokens(gateway: GatewayFactory) -> None:
    gw = await gateway()
    book = gw.app[keys.BROWSER_TOKENS]
    good = await gw.token()
    refused = {
        "bad origin": (good, "https://evil.example"),
        "null origin": (good, "null"),
        "no token": ("", None),
        "forged": (good[:-4] + "AAAA", None),
        "other key": (issue_token(b"x" * 32, "web-1", now=time.time(), ttl=60), None),
        "expired": (issue_token(book.key, "web-2", now=time.time() - 61, ttl=60), None),
    }
    for name, (token, origin) in refused.items():
        with pytest.raises(aiohttp.WSServerHandshakeError) as failure:
            await gw.connect(token, origin)
        assert failure.value.status == 403, name
    assert gw.recorders == []
    # The good token survived the bad-origin attempt (refused before it was consumed)...
    ws = await gw.connect(good)
    await ws.close()
    # ...and opens exactly one call.
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await gw.connect(good)
    assert gw.metric("gateway_auth_failures_total", {"transport": "browser"}) == len(refused) + 1


async def test_capacity_and_drain_refuse_politely(gateway: GatewayFactory) -> None:
    gw = await gateway(max_calls=1)
    first = await gw.call()
    await wait_for(lambda: gw.app[keys.CALLS].count == 1)
    busy = await gw.client.post("/phone/token", headers={"Origin": gw.origin})
    assert busy.status == 503 and (await busy.json()) == {"error": "at_capacity"}
    # A token issued earlier still reaches the socket, which closes with 1013 and the reason.
    book = gw.app[keys.BROWSER_TOKENS]
    _, early = book.issue(now=time.time())
    second = await gw.connect(early)
    await second.send_json(START)
    msg = await second.receive(timeout=TIMEOUT)
    assert msg.type is aiohttp.WSMsgType.CLOSE
    assert (second.close_code, msg.extra) == (1013, "at_capacity")
    await first.close()
    await wait_for(lambda: gw.app[keys.CALLS].count == 0)
    gw.app[keys.CALLS].draining = True
    draining = await gw.client.post("/phone/token", headers={"Origin": gw.origin})
    assert (await draining.json()) == {"error": "draining"}
    _, late = book.issue(now=time.time())
    third = await gw.connect(late)
    await third.send_json(START)
    await third.receive(timeout=TIMEOUT)
    assert third.close_code == 1013
    labels = {"transport": "browser", "outcome": "refused_at_capacity"}
    assert gw.metric("gateway_calls_total", labels) == 1


@pytest.mark.parametrize(
    ("message", "code"),
    [(b"\0" * 70_000, 1009), ("x" * 5000, 1009)],
)
async def test_oversized_messages_end_only_that_call(
    gateway: GatewayFactory, message: bytes | str, code: int
) -> None:
    gw = await gateway(max_message_bytes=65536)
    other = await gw.call()
    ws = await gw.call()
    await wait_for(lambda: len(gw.recorders) == 2)
    if isinstance(message, bytes):
        await ws.send_bytes(message)
    else:
        await ws.send_str(message)
    msg = await ws.receive(timeout=TIMEOUT)
    while msg.type is not aiohttp.WSMsgType.CLOSE:
        msg = await ws.receive(timeout=TIMEOUT)
    assert ws.close_code == code
    await wait_for(lambda: gw.app[keys.CALLS].count == 1)
    await other.send_bytes(FRAME)
    await wait_for(lambda: any(isinstance(e, CallerAudio) for e in gw.recorders[0].events))
    await other.close()


# ------------------------------------------------------------------ a call


async def test_a_call_carries_audio_marks_clear_and_conversation_events(
    gateway: GatewayFactory,
) -> None:
    gw = await gateway()
    ws = await gw.call()
    assert (await next_text(ws)) == {"type": "started", "call_id": gw.recorders[0].session.call_id}
    recorder = gw.recorders[0]
    session = recorder.session
    assert session.transport.value == "browser"
    assert session.metadata == {"origin": gw.origin}

    await wait_for(lambda: CallerAudio(FRAME) in recorder.events)

    await session.send(PlayAudio(b"\x05\x00" * 1600))
    await session.send(SetMark("t1.first"))
    audio = await ws.receive(timeout=TIMEOUT)
    assert audio.type is aiohttp.WSMsgType.BINARY and audio.data == b"\x05\x00" * 1600
    assert await next_text(ws) == {"type": "mark", "name": "t1.first"}
    await ws.send_json({"type": "mark", "name": "t1.first", "played": True})
    await wait_for(lambda: MarkPlayed("t1.first", True) in recorder.events)

    await session.send(SetMark("t1.s0"))
    await session.send(ClearAudio())
    assert await next_text(ws) == {"type": "mark", "name": "t1.s0"}
    assert await next_text(ws) == {"type": "clear"}
    await ws.send_json({"type": "mark", "name": "t1.s0", "played": False})
    await wait_for(lambda: MarkPlayed("t1.s0", False) in recorder.events)

    # What the voice agent tells the call's observer reaches the page with the next frame.
    session.observe("transcript", turn=2, text="مرحبا")
    session.observe("reply", turn=2, text="أهلا بك")
    await ws.send_bytes(FRAME)
    assert await next_text(ws) == {"type": "transcript", "turn": 2, "text": "مرحبا"}
    assert await next_text(ws) == {"type": "reply", "turn": 2, "text": "أهلا بك"}

    await ws.send_json({"type": "hangup"})
    while (await ws.receive(timeout=TIMEOUT)).type is not aiohttp.WSMsgType.CLOSE:
        pass
    assert ws.close_code == 1000
    await wait_for(lambda: gw.app[keys.CALLS].count == 0)
    labels = {"transport": "browser", "outcome": "completed"}
    assert gw.metric("gateway_calls_total", labels) == 1


async def test_parrot_plays_the_callers_audio_back(gateway: GatewayFactory) -> None:
    gw = await gateway(record=False)
    ws = await gw.call()
    assert (await next_text(ws))["type"] == "started"
    frame = bytes(range(256)) * 2 + bytes(128)
    await ws.send_bytes(frame)
    echoed: list[bytes] = []
    while len(echoed) < 2:
        msg = await ws.receive(timeout=TIMEOUT)
        if msg.type is aiohttp.WSMsgType.BINARY:
            echoed.append(msg.data)
    assert echoed == [FRAME, frame]
    await ws.close()
