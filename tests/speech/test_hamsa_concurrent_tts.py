"""Two TTS streams of one call at once (issue 11: the next sentence is synthesised while the
current one still streams). A Hamsa socket carries one request at a time (hamsa.md §1.4), so
the second stream borrows another pooled socket and gives it back afterwards."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from gateway.sim.speech_synth import synthetic_speech
from tests.speech.test_hamsa_session import (
    FAST_SIM,
    TEXT,
    TEXT2,
    MakeEnv,
    make_env,
    speak,
    wait_for,
)

__all__ = ["make_env"]  # the fixture, shared


async def test_two_streams_at_once_each_get_their_own_socket(make_env: MakeEnv) -> None:
    env = await make_env(replace(FAST_SIM, realtime_factor=20.0))
    session = env.service.session("call-overlap")
    first, second = await asyncio.gather(speak(session, TEXT), speak(session, TEXT2))
    assert first == synthetic_speech(TEXT) and second == synthetic_speech(TEXT2)
    assert env.sim.stats["tts_requests"] == 2 and env.sim.stats["ws_connections"] == 2
    # The call keeps one TTS socket: the next sentence reuses it, no connect.
    assert await speak(session, TEXT) == synthetic_speech(TEXT)
    assert env.sim.stats["ws_connections"] == 2
    await session.aclose()
    # Nothing leaked: every socket still open on the server is idle in the pool.
    pool = env.service.pool
    await wait_for(lambda: env.sim.snapshot()["ws_open"] == pool.idle)


async def test_cancelling_one_of_two_streams_leaves_the_other_intact(make_env: MakeEnv) -> None:
    env = await make_env(replace(FAST_SIM, realtime_factor=20.0))
    session = env.service.session("call-overlap-barge")
    running = asyncio.create_task(speak(session, TEXT))
    await wait_for(lambda: env.sim.stats["tts_requests"] == 1)
    ahead = asyncio.create_task(speak(session, TEXT2))
    await wait_for(lambda: env.sim.stats["tts_requests"] == 2)
    ahead.cancel()  # e.g. the reply was cut short
    await asyncio.wait({ahead})
    assert await running == synthetic_speech(TEXT)
    # The call's own socket was left alone: the next request reuses it (the borrowed one,
    # abandoned with unread audio, is gone).
    assert await speak(session, TEXT2) == synthetic_speech(TEXT2)
    assert env.sim.stats["ws_connections"] == 2
    await session.aclose()
    pool = env.service.pool
    await wait_for(lambda: env.sim.snapshot()["ws_open"] == pool.idle)
