"""Every ``web.AppKey`` of the application, in one place (typed app state, no globals)."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from gateway.agent.brains import Brain
from gateway.agent.fallback import FallbackClip
from gateway.agent.playout import DeliveryModel
from gateway.agent.prompt_cache import PromptCache
from gateway.calls import CallRegistry
from gateway.config import Settings
from gateway.metrics import Metrics
from gateway.readiness import Readiness
from gateway.speech.hamsa.service import HamsaService
from gateway.telephony.audiosocket_server import AudioSocketServer
from gateway.telephony.browser import TokenBook
from gateway.telephony.driver import ConversationFactory

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
CALLS = web.AppKey("calls", CallRegistry)
READINESS = web.AppKey("readiness", Readiness)
HTTP_CLIENT = web.AppKey("http_client", aiohttp.ClientSession)
CONVERSATIONS: web.AppKey[ConversationFactory] = web.AppKey("conversations")
SPEECH = web.AppKey("speech", HamsaService)
BRAIN: web.AppKey[Brain] = web.AppKey("brain")
FALLBACK = web.AppKey("fallback_clip", FallbackClip)  # what plays when TTS fails
# Hamsa TTS delivery learned by the playout scheduler, process-wide (voice agent modes only).
DELIVERY = web.AppKey("tts_delivery", DeliveryModel)
PROMPTS = web.AppKey("prompt_cache", PromptCache)  # greetings, re-prompts (voice agent modes)
AUDIOSOCKET = web.AppKey("audiosocket", AudioSocketServer)  # only when AUDIOSOCKET_PORT is set
BROWSER_TOKENS = web.AppKey("browser_tokens", TokenBook)  # only when BROWSER_PHONE=true
