"""Which conversation runs a call, chosen once from ``AGENT``.

``parrot`` loops the caller's audio back (no speech services); ``echo`` and ``webhook`` run the
voice agent (Hamsa STT -> agent -> Hamsa TTS).
"""

from __future__ import annotations

from aiohttp import web

from gateway.agent.parrot import ParrotConversation
from gateway.calls import CallSession, Conversation
from gateway.config import AgentMode
from gateway.server import keys
from gateway.telephony.driver import ConversationFactory


def conversation_factory(app: web.Application) -> ConversationFactory:
    """Build the per-call conversation factory for this app's settings."""
    settings = app[keys.SETTINGS]
    if settings.agent is AgentMode.PARROT:
        delay = settings.parrot_delay_ms

        def parrot(session: CallSession) -> Conversation:
            return ParrotConversation(session, delay)

        return parrot

    def voice_agent(session: CallSession) -> Conversation:
        from gateway.agent.voice import VoiceAgentConversation

        return VoiceAgentConversation.for_app(app, session)

    return voice_agent
