"""Two TTS streams of one call at once (issue 11: the next sentence is synthesised while the
current one still streams). A Hamsa socket carries one request at a time (hamsa.md §1.4), so
the second stream borrows a warm pooled socket and gives it back afterwards; with none warm
it waits for the call's own socket rather than paying a connect."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from gateway.sim.speech_synth import synthetic_speech
from gateway.speech.hamsa.client import HamsaConnection
from tests.speech.test_hamsa_session import (
    FAST_SIM,
    TEXT,
    TEXT2,
    Env,
    MakeEnv,
    make_env,
    speak,
    wait_for,
)

__all__ = ["make_env"]  # the fixture, shared

# ~1 s per stream (3.5 s of audio at 3x real time): long enough to start a second one
# while the first still streams, with timeouts that allow the real frame spacing.
SLOW_SIM = replace(FAST_SIM, realtime_factor=3.0)
SLOW_TIMEOUTS: dict[str, Any] = {
    "hamsa_tts_first_audio_timeout": 2.0,
    "hamsa_tts_gap_timeout": 2.0,
}


async def overlapping(
    env: Env, session: Any
) -> tuple[asyncio.Task[bytes], asyncio.Task[bytes], HamsaConnection]:
    """Start a stream, and a second one once the first is on the wire; also return the
    call's own TTS socket (the first stream's)."""
    first = asyncio.create_task(speak(session, TEXT))
    await wait_for(lambda: env.sim.stats["tts_requests"] == 1)
    own = session._tts
    assert own is not None
    return first, asyncio.create_task(speak(session, TEXT2)), own


async def test_a_second_stream_borrows_a_warm_socket(make_env: MakeEnv) -> None:
    env = await make_env(SLOW_SIM, hamsa_pool_min_idle=2, **SLOW_TIMEOUTS)
    pool = env.service.pool
    await wait_for(lambda: pool.idle == 2)
    session = env.service.session("call-overlap")
    first, second, own = await overlapping(env, session)
    await wait_for(lambda: env.sim.stats["tts_requests"] == 2)
    assert not first.done()  # the second request went out while the first streams
    assert await first == synthetic_speech(TEXT) and await second == synthetic_speech(TEXT2)
    assert own.usable and session._tts is own  # the call's socket was left alone
    await session.aclose()
    # Nothing leaked: every socket still open on the server is idle in the pool.
    await wait_for(lambda: env.sim.snapshot()["ws_open"] == pool.idle)


async def test_with_no_warm_socket_the_second_stream_waits_for_the_calls_own(
    make_env: MakeEnv,
) -> None:
    env = await make_env(SLOW_SIM, **SLOW_TIMEOUTS)  # no warm pool
    session = env.service.session("call-overlap-cold")
    first, second, _ = await overlapping(env, session)
    assert await first == synthetic_speech(TEXT) and await second == synthetic_speech(TEXT2)
    assert env.sim.stats["ws_connections"] == 1  # no connect on the second's path
    await session.aclose()


async def test_cancelling_one_of_two_streams_leaves_the_other_intact(make_env: MakeEnv) -> None:
    env = await make_env(SLOW_SIM, hamsa_pool_min_idle=2, **SLOW_TIMEOUTS)
    pool = env.service.pool
    await wait_for(lambda: pool.idle == 2)
    session = env.service.session("call-overlap-barge")
    running, ahead, own = await overlapping(env, session)
    await wait_for(lambda: env.sim.stats["tts_requests"] == 2)
    ahead.cancel()  # e.g. the reply was cut short
    await asyncio.wait({ahead})
    assert await running == synthetic_speech(TEXT)
    # The call's own socket was left alone (the borrowed one, abandoned with unread audio,
    # is gone) and serves the next request.
    assert own.usable and session._tts is own
    assert await speak(session, TEXT2) == synthetic_speech(TEXT2)
    await session.aclose()
    await wait_for(lambda: env.sim.snapshot()["ws_open"] == pool.idle)


async def test_first_audio_times_leave_out_the_wait_for_the_socket(make_env: MakeEnv) -> None:
    """The second stream waits ~1 s for the call's socket; the time recorded for it is from
    its request on that socket to its first audio (the simulator's first-audio delay), which
    is what the lead split needs to know of a request queued behind another."""
    sim = replace(SLOW_SIM, first_audio_delay=0.2)
    env = await make_env(sim, **SLOW_TIMEOUTS)  # no warm pool: the second stream waits
    session = env.service.session("call-first-audio")
    first, second, _ = await overlapping(env, session)
    await first
    await second
    times = env.service.first_audio
    assert session.first_audio is times  # one window for the whole process
    slowest = times.quantile(1.0, min_samples=2)
    assert slowest is not None and 0.2 <= slowest < 0.6  # the ~1 s wait is not in it
    assert times.quantile(0.5, min_samples=3) is None  # two samples only
    await session.aclose()
