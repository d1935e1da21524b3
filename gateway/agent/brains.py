"""Where replies come from: the user's webhook, or the built-in echo agent.

A :class:`Brain` turns one :class:`~gateway.agent.webhook.AgentRequest` into a stream of
:data:`~gateway.agent.webhook.ReplyPart` (text deltas in order, then actions) and signals
failure with :class:`~gateway.agent.webhook.AgentError` only, whose ``kind`` is a closed set.
The call session does not know which brain it talks to.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Final, Protocol, runtime_checkable

import aiohttp

from gateway.agent.webhook import (
    AgentRequest,
    ReplyPart,
    TextDelta,
    build_request,
    post_event,
    stream_reply,
)
from gateway.config import AgentMode, Settings

# The echo agent's lines (Arabic, as the product's callers speak it). The greeting is over
# 30 characters so Hamsa TTS never gets a near-empty text (agent-webhook.md).
ECHO_GREETING: Final = "مرحبا بك! أنا المساعد الآلي، تفضل بالكلام وسأعيد ما تقوله."
ECHO_DTMF_PREFIX: Final = "لقد ضغطت على الأرقام:"


class Brain(Protocol):
    """Produces the reply to one agent request."""

    def reply(self, request: AgentRequest) -> AsyncIterator[ReplyPart]:
        """Yield the reply's parts as they become known; raise ``AgentError`` on failure."""
        ...


@runtime_checkable
class Notifier(Protocol):
    """A brain that can deliver a fire-and-forget event (``call.ended``) without a reply.

    Optional: the call session uses :meth:`notify` when a brain has it and otherwise reads
    (and drops) the brain's :meth:`Brain.reply`.
    """

    async def notify(self, request: AgentRequest, timeout: float) -> None:
        """Deliver ``request``; wait for the agent's acknowledgement only, never a reply.

        Raises ``AgentError`` (``timeout``, ``connect``, ``http_status``) on failure.
        """
        ...


class WebhookBrain:
    """The user's agent over HTTP (``AGENT_WEBHOOK_URL``), through the shared pool.

    ``first_text_timeout`` is ``settings.agent_timeout``; ``total_timeout`` defaults to the
    larger of 30 s and four times that (a streamed reply may take long to finish while its
    first sentence is already playing).
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        settings: Settings,
        *,
        total_timeout: float | None = None,
    ) -> None:
        if not settings.agent_webhook_url:
            raise ValueError("WebhookBrain needs settings.agent_webhook_url")
        self._session = session
        self._url = settings.agent_webhook_url
        self._max_bytes = settings.agent_max_reply_bytes
        self._first_text_timeout = settings.agent_timeout
        self._total_timeout = (
            max(30.0, 4 * settings.agent_timeout) if total_timeout is None else total_timeout
        )

    def reply(self, request: AgentRequest) -> AsyncIterator[ReplyPart]:
        return stream_reply(
            self._session,
            self._url,
            build_request(request),
            first_text_timeout=self._first_text_timeout,
            total_timeout=max(self._total_timeout, self._first_text_timeout),
            max_bytes=self._max_bytes,
        )

    async def notify(self, request: AgentRequest, timeout: float) -> None:
        """POST the event and read the status line only (the body is not awaited)."""
        await post_event(self._session, self._url, build_request(request), timeout=timeout)


class EchoBrain:
    """The built-in agent: repeats the caller's words (used when no webhook is configured).

    ``utterance`` -> the transcript; ``call.started`` -> :data:`ECHO_GREETING`;
    ``dtmf`` -> the digits, one by one; ``call.ended`` -> nothing.
    """

    async def reply(self, request: AgentRequest) -> AsyncIterator[ReplyPart]:
        if request.event == "utterance":
            text = request.text.strip()
        elif request.event == "call.started":
            text = ECHO_GREETING
        elif request.event == "dtmf":
            digits = request.digits or request.text
            text = f"{ECHO_DTMF_PREFIX} {' '.join(digits)}." if digits else ""
        else:
            text = ""
        if text:
            yield TextDelta(text)

    async def notify(self, request: AgentRequest, timeout: float) -> None:
        """Events need no delivery: there is no one to tell."""


def make_brain(settings: Settings, session: aiohttp.ClientSession) -> Brain:
    """The brain ``settings.agent`` asks for: webhook, or echo (also the fallback).

    ``parrot`` mode has no brain (it loops audio back); it gets :class:`EchoBrain`, which
    the parrot call path never calls.
    """
    if settings.agent is AgentMode.WEBHOOK:
        return WebhookBrain(session, settings)
    if settings.agent is AgentMode.LLM:
        from gateway.agent.llm import LlmBrain  # the built-in LLM agent (gateway/agent/llm.py)

        return LlmBrain(session, settings)
    return EchoBrain()
