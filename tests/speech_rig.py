"""Shared pieces for whole-call tests that need speech: a fast Hamsa simulator and settings.

The simulator keeps the real protocol (and its faults) but runs its clocks in milliseconds and
speaks 12 ms per character, so a whole conversation fits in a few seconds of test time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.config import AgentMode, Settings
from gateway.sim.hamsa_sim import SimConfig, create_sim_app
from tests.conftest import make_settings

SIM_MS_PER_CHAR = 12.0


def fast_sim_config(**overrides: Any) -> SimConfig:
    """Simulator knobs for tests: ms-scale delays, fast synthetic voice, no espeak-ng."""
    knobs: dict[str, Any] = {
        "connect_delay": 0.05,
        "first_audio_delay": 0.05,
        "realtime_factor": 20.0,
        "stt_delay": 0.05,
        "espeak": "",
        "ping_interval": 3600.0,
        "ms_per_char": SIM_MS_PER_CHAR,
    }
    knobs.update(overrides)
    return SimConfig(**knobs)


def voice_settings(sim_url: str, tmp_path: Path, **overrides: Any) -> Settings:
    """Gateway settings wired to a simulator at ``sim_url`` (echo agent unless overridden)."""
    knobs: dict[str, Any] = {
        "agent": AgentMode.ECHO,
        "hamsa_api_key": "test-hamsa-key",
        "hamsa_base_url": sim_url.rstrip("/"),
        "hamsa_pool_min_idle": 2,
        "hamsa_retry_delay": 0.05,
        # The simulator speaks 12 ms per character: 4 ms per character is "too short".
        "hamsa_short_audio_ms_per_char": 4.0,
        "endpoint_silence_ms": 400,
        "greeting_text": "أهلا وسهلا بك في خدمة العملاء، كيف يمكنني مساعدتك؟",
        "reprompt_after": 0,
        "call_record_path": str(tmp_path / "calls.jsonl"),
    }
    knobs.update(overrides)
    return make_settings(**knobs)


# An utterance and a two-sentence reply used by the whole-call tests of every transport.
TRANSCRIPT = "مرحبا، أريد أن أعرف حالة الطقس اليوم في الرياض من فضلك"
REPLY = "الطقس اليوم مشمس وجميل في الرياض. هل تريد أن أخبرك عن توقعات الغد أيضا؟"


@dataclass(frozen=True)
class SpeechBackends:
    sim_url: str
    agent_url: str
    requests: list[dict[str, Any]]  # JSON bodies the agent received, in order


async def speech_backends(aiohttp_server: Any, reply: str = REPLY) -> SpeechBackends:
    """Start a fast simulator (answering :data:`TRANSCRIPT`) and an n8n-style agent."""
    from tests.agent.fake_agents import REQUESTS_KEY, make_agent_app

    sim = await aiohttp_server(create_sim_app(fast_sim_config(stt_script=(TRANSCRIPT,))))
    agent_app = make_agent_app("n8n", reply=reply)
    agent = await aiohttp_server(agent_app)
    return SpeechBackends(
        str(sim.make_url("")), str(agent.make_url("/webhook/agent")), agent_app[REQUESTS_KEY]
    )
