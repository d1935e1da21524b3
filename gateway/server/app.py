"""``create_app(settings)``: routes and paired lifecycles, no logic.

The one place that wires the layers together (telephony, speech, agent, the embedded
simulator): nothing below ``gateway.server`` imports it or reaches into the app's state.
Each long-lived resource has one ``cleanup_ctx`` entry: setup above its ``yield``, teardown
below it. Typed state lives under the keys in :mod:`gateway.server.keys`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
from aiohttp import web

from gateway.agent.brains import make_brain
from gateway.agent.fallback import SHIPPED_TEXT, FallbackClip, keep_rendering
from gateway.agent.parrot import ParrotConversation
from gateway.agent.playout import DeliveryModel
from gateway.agent.prompt_cache import PromptCache, prerender
from gateway.agent.voice import VoiceAgentConversation
from gateway.calls import CallRegistry, CallSession, Conversation
from gateway.config import AgentMode, Settings
from gateway.metrics import Metrics
from gateway.readiness import Probe, Readiness
from gateway.server import asterisk_routes, browser_routes, health, keys, twilio_routes
from gateway.speech.hamsa.service import HamsaService
from gateway.telephony.audiosocket_server import AudioSocketServer
from gateway.telephony.driver import ConversationFactory

log = logging.getLogger(__name__)


def create_app(settings: Settings, metrics: Metrics | None = None) -> web.Application:
    """Build the gateway's web application from validated settings."""
    app = web.Application(client_max_size=1024 * 1024)
    app[keys.SETTINGS] = settings
    app[keys.METRICS] = metrics if metrics is not None else Metrics()
    app[keys.READINESS] = Readiness()
    app[keys.CALLS] = CallRegistry(settings.max_calls, app[keys.METRICS])
    app[keys.CONVERSATIONS] = conversation_factory(app)
    app.cleanup_ctx.append(_http_client)
    if settings.agent is not AgentMode.PARROT:
        app.cleanup_ctx.append(_speech)
        app.cleanup_ctx.append(_brain)
    if settings.audiosocket_port is not None:
        app.cleanup_ctx.append(_audiosocket)  # after speech and brain: calls use them
    health.add_routes(app)
    twilio_routes.add_routes(app)
    asterisk_routes.add_routes(app)
    browser_routes.add_routes(app)  # 404 unless BROWSER_PHONE=true
    return app


def conversation_factory(app: web.Application) -> ConversationFactory:
    """Which conversation runs a call, chosen once from ``AGENT``.

    ``parrot`` loops the caller's audio back (no speech services); every other mode runs the
    voice agent (Hamsa STT -> brain -> Hamsa TTS) on the app's shared speech service and
    brain, with a per-call child of the process-wide TTS delivery model.
    """
    settings = app[keys.SETTINGS]
    if settings.agent is AgentMode.PARROT:
        delay = settings.parrot_delay_ms

        def parrot(session: CallSession) -> Conversation:
            return ParrotConversation(session, delay)

        return parrot
    delivery = app[keys.DELIVERY] = DeliveryModel()  # Hamsa's TTS delivery, process-wide
    fallback = app[keys.FALLBACK] = FallbackClip()
    prompts = app[keys.PROMPTS] = PromptCache(
        int(settings.prompt_cache_mb * 1024 * 1024), settings.hamsa_short_audio_ms_per_char
    )

    def voice_agent(session: CallSession) -> Conversation:
        return VoiceAgentConversation(
            session,
            settings=settings,
            metrics=app[keys.METRICS],
            speech=app[keys.SPEECH].session(session.call_id),
            brain=app[keys.BRAIN],
            delivery=delivery.connection(),
            fallback=fallback,
            prompts=prompts,
        )

    return voice_agent


async def _http_client(app: web.Application) -> AsyncIterator[None]:
    """One pooled HTTP client for all outbound requests (carrier REST, agent webhook)."""
    timeout = aiohttp.ClientTimeout(total=None, connect=5, sock_connect=5)
    connector = aiohttp.TCPConnector(limit=200, limit_per_host=100, keepalive_timeout=30)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        app[keys.HTTP_CLIENT] = session
        yield


async def _speech(app: web.Application) -> AsyncIterator[None]:
    """Hamsa speech: warm pool, REST fallback; the embedded simulator when no key is set."""
    settings = app[keys.SETTINGS]
    # With no HAMSA_API_KEY the service starts the embedded simulator and says so loudly.
    service = HamsaService(
        settings, app[keys.METRICS], http=app[keys.HTTP_CLIENT], simulator=_embedded_simulator
    )
    async with service:
        app[keys.SPEECH] = service

        def probe() -> Probe:
            status = service.status()
            return Probe(bool(status.get("ready")), status)

        app[keys.READINESS].register("speech", probe)
        render: asyncio.Task[None] | None = None
        text = settings.agent_fallback_text
        if text and text != SHIPPED_TEXT:
            # A custom apology is rendered once Hamsa answers; the shipped clip until then.
            renderer = service.session("fallback-render")
            render = asyncio.create_task(
                keep_rendering(app[keys.FALLBACK], renderer.tts, text), name="fallback-render"
            )
        prompts = app.get(keys.PROMPTS)
        fixed = [t for t in (settings.greeting_text, settings.reprompt_text) if t]
        warm: asyncio.Task[None] | None = None
        if prompts is not None and prompts.enabled and fixed:
            # Fixed prompts are synthesised now, so the first calls play them at once too.
            encodings = [False, True] if settings.hamsa_tts_mulaw else [False]
            warm = asyncio.create_task(
                _prerender(service, prompts, fixed, encodings), name="prompt-render"
            )
        try:
            yield
        finally:
            app[keys.READINESS].unregister("speech")
            if render is not None:
                render.cancel()
                await asyncio.gather(render, return_exceptions=True)
                await renderer.aclose()
            if warm is not None:
                warm.cancel()
                await asyncio.gather(warm, return_exceptions=True)


async def _prerender(
    service: HamsaService, prompts: PromptCache, texts: list[str], encodings: list[bool]
) -> None:
    """Synthesise the fixed prompts into the cache on a session of their own, closed once
    done (its socket is not kept for nothing)."""
    session = service.session("prompt-render")
    try:
        await prerender(prompts, session.tts, texts, encodings)
    except Exception:  # never silent: calls then synthesise the prompts themselves
        log.exception("prompt rendering stopped")
    finally:
        await session.aclose()


async def _embedded_simulator() -> tuple[str, Callable[[], Awaitable[None]]]:
    """The Hamsa simulator in this process (imported only when no HAMSA_API_KEY is set)."""
    from gateway.sim.hamsa_sim import start_embedded

    return await start_embedded()


async def _brain(app: web.Application) -> AsyncIterator[None]:
    """Where replies come from: the webhook (shared HTTP pool) or the built-in echo agent."""
    app[keys.BRAIN] = make_brain(app[keys.SETTINGS], app[keys.HTTP_CLIENT])
    yield


async def _audiosocket(app: web.Application) -> AsyncIterator[None]:
    """The AudioSocket TCP listener (``AUDIOSOCKET_PORT``); closing it ends its calls."""
    settings = app[keys.SETTINGS]
    assert settings.audiosocket_port is not None
    # Outcome and transfer target for the dialplan after AudioSocket(), as for chan_websocket.
    make_conversation, on_call_end = asterisk_routes.with_call_control(app)
    server = AudioSocketServer(
        host=settings.host,
        port=settings.audiosocket_port,
        allow=settings.audiosocket_allow,
        registry=app[keys.CALLS],
        metrics=app[keys.METRICS],
        make_conversation=make_conversation,
        max_call_seconds=settings.max_call_seconds,
        on_call_end=on_call_end,
    )
    await server.start()
    app[keys.AUDIOSOCKET] = server
    log.info(
        "AudioSocket listening on %s:%d, allowed sources %s",
        settings.host,
        server.port,
        ",".join(settings.audiosocket_allow),
    )
    try:
        yield
    finally:
        await server.aclose()
