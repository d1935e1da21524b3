"""Brains: the echo agent, and the webhook brain against a test agent over a real socket."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.agent.brains import ECHO_GREETING, Brain, EchoBrain, WebhookBrain, make_brain
from gateway.agent.webhook import (
    Action,
    AgentError,
    AgentRequest,
    Interruption,
    ReplyPart,
    TextDelta,
)
from gateway.config import AgentMode
from tests.agent.fake_agents import REQUESTS_KEY, make_agent_app
from tests.conftest import TIMEOUT, make_settings

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]


async def reply_of(brain: Brain, request: AgentRequest) -> list[ReplyPart]:
    async with asyncio.timeout(TIMEOUT):
        return [part async for part in brain.reply(request)]


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        (AgentRequest("utterance", "s", 1, text="  أريد حجز موعد  "), [TextDelta("أريد حجز موعد")]),
        (AgentRequest("call.started", "s"), [TextDelta(ECHO_GREETING)]),
        (AgentRequest("dtmf", "s", 2, digits="12#"), [TextDelta("لقد ضغطت على الأرقام: 1 2 #.")]),
        (AgentRequest("utterance", "s", 1, text="   "), []),
        (AgentRequest("call.ended", "s", record={"turns": []}), []),
    ],
)
async def test_echo_brain(request_: AgentRequest, expected: list[ReplyPart]) -> None:
    assert await reply_of(EchoBrain(), request_) == expected


def test_echo_greeting_is_long_enough_for_tts() -> None:
    assert len(ECHO_GREETING) >= 30


async def test_webhook_brain_posts_the_request_body_and_streams_the_reply(
    aiohttp_server: ServerFactory,
) -> None:
    app = make_agent_app(
        "n8n",
        reply=lambda body: f"قلت: {body['text']}. شكرا لك.",
        final_extra={"hangup": True},
    )
    server = await aiohttp_server(app)
    settings = make_settings(agent=AgentMode.WEBHOOK, agent_webhook_url=str(server.make_url("/a")))
    request = AgentRequest(
        "utterance",
        "CA9",
        4,
        text="مرحبا",
        call_id="CA9",
        transport="twilio",
        params={"lang": "ar"},
        interrupted=Interruption("A. B.", "A.", 700),
    )
    async with aiohttp.ClientSession() as session:
        brain = make_brain(settings, session)
        assert isinstance(brain, WebhookBrain)
        parts = await reply_of(brain, request)
    assert "".join(p.text for p in parts if isinstance(p, TextDelta)) == "قلت: مرحبا. شكرا لك."
    assert parts[-1] == Action("hangup")
    (body,) = app[REQUESTS_KEY]
    assert body["text"] == "مرحبا" and body["session_id"] == "CA9" and body["turn"] == 4
    assert body["interrupted"] == {"reply": "A. B.", "heard": "A.", "heard_ms": 700}
    assert body["call"]["params"] == {"lang": "ar"}


async def test_webhook_brain_uses_the_configured_first_text_timeout(
    aiohttp_server: ServerFactory,
) -> None:
    server = await aiohttp_server(make_agent_app("slow"))
    settings = make_settings(
        agent=AgentMode.WEBHOOK, agent_webhook_url=str(server.make_url("/")), agent_timeout=0.1
    )
    async with aiohttp.ClientSession() as session:
        with pytest.raises(AgentError) as info:
            await reply_of(WebhookBrain(session, settings), AgentRequest("utterance", "s"))
    assert info.value.kind == "timeout"


async def test_make_brain_defaults_to_echo() -> None:
    async with aiohttp.ClientSession() as session:
        assert isinstance(make_brain(make_settings(), session), EchoBrain)
        assert isinstance(make_brain(make_settings(agent=AgentMode.PARROT), session), EchoBrain)
        with pytest.raises(ValueError):
            WebhookBrain(session, make_settings(agent=AgentMode.WEBHOOK))
