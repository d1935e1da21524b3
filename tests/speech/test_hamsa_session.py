"""Hamsa client, pool and per-call session against the simulator on 127.0.0.1 (real sockets)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from gateway.config import HamsaAuthMode, Settings
from gateway.metrics import Metrics
from gateway.sim.hamsa_sim import SIM_STATE, SimConfig, SimState, create_sim_app, start_embedded
from gateway.sim.speech_synth import synthetic_speech
from gateway.speech.hamsa.client import Backoff, Endpoint, HamsaConnection, realtime_url
from gateway.speech.hamsa.errors import HamsaError
from gateway.speech.hamsa.protocol import ErrorKind
from gateway.speech.hamsa.service import HamsaService
from gateway.speech.hamsa.session import FallbackGate, HamsaSession, split_text
from gateway.telephony.events import PCM16_16K, ULAW_8K

TIMEOUT = 5.0
KEY = "k3y-Secret-0123456789"
TEXT = "مرحبا بكم في خدمة العملاء، كيف يمكنني مساعدتك اليوم"
TEXT2 = "شكرا لاتصالك، سنعاود الاتصال بك قريبا إن شاء الله"

FAST_SIM = SimConfig(
    api_key=KEY,
    connect_delay=0.01,
    first_audio_delay=0.01,
    realtime_factor=200.0,
    stt_delay=0.0,
    espeak="",
    stall_seconds=2.0,
)


def port_of(server: TestServer) -> int:
    assert server.port is not None
    return server.port


def fast_settings(port: int, **overrides: Any) -> Settings:
    base = Settings(
        hamsa_api_key=KEY,
        hamsa_base_url=f"http://127.0.0.1:{port}",
        hamsa_pool_min_idle=0,
        hamsa_pool_burst_calls=0,  # tests size the pool by min_idle alone
        hamsa_connect_timeout=2.0,
        hamsa_tts_first_audio_timeout=0.15,
        hamsa_tts_gap_timeout=0.15,
        hamsa_stt_timeout=0.15,
        hamsa_retry_delay=0.01,
        hamsa_retries=2,
        hamsa_rest_fallback_after=3,
    )
    return replace(base, **overrides)


@dataclass
class Env:
    server: TestServer
    service: HamsaService
    metrics: Metrics
    delays: list[float] = field(default_factory=list)

    @property
    def sim(self) -> SimState:
        return self.server.app[SIM_STATE]

    def count(self, metric: Any, *labels: str) -> float:
        child = metric.labels(*labels) if labels else metric
        return float(child._value.get())


MakeEnv = Callable[..., Awaitable[Env]]


@pytest.fixture
async def make_env(aiohttp_server: Any) -> AsyncIterator[MakeEnv]:
    services: list[HamsaService] = []
    sessions: list[aiohttp.ClientSession] = []

    async def make(sim: SimConfig = FAST_SIM, **overrides: Any) -> Env:
        server: TestServer = await aiohttp_server(create_sim_app(sim))
        metrics = Metrics()
        delays: list[float] = []

        async def fake_sleep(seconds: float) -> None:
            delays.append(seconds)  # record the policy; never really wait long
            await asyncio.sleep(0.001)

        http = aiohttp.ClientSession()
        sessions.append(http)
        service = HamsaService(
            fast_settings(port_of(server), **overrides),
            metrics,
            http,
            pool_check_interval=0.02,
            probe_interval=60.0,
            sleep=fake_sleep,
            rng=lambda: 0.5,
        )
        services.append(service)
        await service.start()
        return Env(server, service, metrics, delays)

    yield make
    for service in services:
        await service.aclose()
    for http in sessions:
        await http.close()


async def speak(session: HamsaSession, text: str = TEXT, mulaw: bool = False) -> bytes:
    out = []
    async with asyncio.timeout(TIMEOUT), aclosing(session.tts(text, mulaw=mulaw)) as stream:
        async for chunk in stream:
            assert chunk.format == (ULAW_8K if mulaw else PCM16_16K)
            out.append(chunk.audio)
    return b"".join(out)


async def wait_for(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(TIMEOUT):
        while not predicate():
            await asyncio.sleep(0.005)


# ---------------------------------------------------------------------------- pure parts


def test_realtime_url_derivation() -> None:
    assert realtime_url("https://api.tryhamsa.com") == "wss://api.tryhamsa.com/v1/realtime/ws"
    assert realtime_url("http://127.0.0.1:9000/") == "ws://127.0.0.1:9000/v1/realtime/ws"


def test_backoff_is_exponential_jittered_and_capped() -> None:
    policy = Backoff(initial=1.0, factor=2.0, maximum=5.0, jitter=0.5)
    assert [policy.delay(n, lambda: 1.0) for n in range(4)] == [1.0, 2.0, 4.0, 5.0]
    assert [policy.delay(n, lambda: 0.0) for n in range(4)] == [0.5, 1.0, 2.0, 2.5]


def test_fallback_gate_probes_periodically() -> None:
    now = [0.0]
    gate = FallbackGate(threshold=2, probe_interval=10.0, clock=lambda: now[0])
    gate.record_failure()
    assert not gate.use_rest()
    gate.record_failure()
    assert gate.use_rest()  # threshold reached
    now[0] = 10.0
    assert not gate.use_rest()  # one probe request goes to the socket
    assert gate.use_rest()
    gate.record_success()
    assert not gate.use_rest()


def test_split_text_respects_limit() -> None:
    parts = split_text("كلمة " * 900, limit=2000)
    assert all(len(p) <= 2000 for p in parts) and len(parts) == 3
    assert " ".join(parts).split() == ("كلمة " * 900).split()


# ------------------------------------------------------------------------------ sockets


async def test_one_connect_for_many_requests(make_env: MakeEnv) -> None:
    env = await make_env()
    session = env.service.session("call-1")
    for text in (TEXT, TEXT2, TEXT):
        assert await speak(session, text) == synthetic_speech(text)
    assert await session.stt(b"\x00\x00" * 1600, 16000) == "مرحبا، أريد أن أسأل عن طلبي"
    assert await session.stt(b"\x00\x00" * 800, 8000) == "رقم الطلب هو واحد اثنان ثلاثة"
    # one TTS socket and one STT socket for the whole call
    assert env.sim.stats["ws_connections"] == 2
    assert env.sim.stats["tts_requests"] == 3
    assert env.count(env.metrics.hamsa_connections, "reused") == 3
    await session.aclose()


async def test_mulaw_tts(make_env: MakeEnv) -> None:
    env = await make_env()
    session = env.service.session("call-mulaw")
    audio = await speak(session, TEXT, mulaw=True)
    assert len(audio) == pytest.approx(len(synthetic_speech(TEXT)) / 4, abs=16)


async def test_first_tts_takes_a_warm_socket_no_connect_on_path(make_env: MakeEnv) -> None:
    sim = replace(FAST_SIM, connect_delay=0.25)
    env = await make_env(sim, hamsa_pool_min_idle=2)
    pool = env.service.pool
    await wait_for(lambda: pool.idle == 2)
    session = env.service.session("call-warm")
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with aclosing(session.tts(TEXT)) as stream:
        first = await anext(stream)
        first_audio = loop.time() - started
        rest = [c.audio async for c in stream]
    assert first.audio and rest
    assert first_audio < 0.2  # a connect alone would take 0.25 s
    assert pool.on_demand_connects == 0
    await wait_for(lambda: pool.idle == 2)  # refilled in the background
    await session.aclose()


async def test_pool_recycles_old_sockets(make_env: MakeEnv) -> None:
    env = await make_env(hamsa_pool_min_idle=2, hamsa_pool_max_age=1.0)
    pool = env.service.pool
    pool.max_age = 0.1  # Settings forbids < 1 s; the pool takes any value
    await wait_for(lambda: pool.connects >= 6)
    await wait_for(lambda: pool.idle == 2)
    await wait_for(lambda: env.sim.snapshot()["ws_open"] <= 3)  # old ones were closed


async def test_reconnect_after_server_idle_close(make_env: MakeEnv) -> None:
    env = await make_env(replace(FAST_SIM, idle_timeout=0.05))
    session = env.service.session("call-idle")
    assert await speak(session) == synthetic_speech(TEXT)
    await wait_for(lambda: env.sim.stats["idle_closes"] == 1)
    assert await speak(session, TEXT2) == synthetic_speech(TEXT2)
    assert env.sim.stats["ws_connections"] == 2
    # Either the client saw the close before reusing the socket, or the request raced the
    # close (1000) and was retried at once: no backoff pause in both cases.
    assert env.delays == []


async def test_drop_mid_stream_raises_then_next_request_reconnects(make_env: MakeEnv) -> None:
    env = await make_env(replace(FAST_SIM, tts_faults=("drop",)))
    session = env.service.session("call-drop")
    got: list[bytes] = []
    with pytest.raises(HamsaError) as info:
        async with aclosing(session.tts(TEXT)) as stream:
            async for chunk in stream:
                got.append(chunk.audio)
    assert got  # part of the audio was already played: not retried (it would repeat)
    assert info.value.kind is ErrorKind.CLOSED and not info.value.fatal
    assert await speak(session, TEXT2) == synthetic_speech(TEXT2)
    assert env.sim.stats["ws_connections"] == 2


async def test_first_audio_timeout_is_retried_on_a_fresh_socket(make_env: MakeEnv) -> None:
    env = await make_env(replace(FAST_SIM, tts_faults=("stall",)))
    session = env.service.session("call-stall")
    assert await speak(session) == synthetic_speech(TEXT)
    assert env.sim.stats["ws_connections"] == 2
    assert env.delays == [pytest.approx(0.0075)]  # retry_delay 0.01 * (0.5 + 0.5 * 0.5)
    assert env.count(env.metrics.hamsa_errors, "timeout") == 1


async def test_short_response_is_retried_with_backoff_on_a_fresh_socket(
    make_env: MakeEnv,
) -> None:
    env = await make_env(replace(FAST_SIM, tts_faults=("short", "short")))
    session = env.service.session("call-640")
    audio = await speak(session)
    assert audio == synthetic_speech(TEXT)  # the 640 bytes were never passed on
    assert env.count(env.metrics.hamsa_short_responses) == 2
    assert env.delays == [pytest.approx(0.0075), pytest.approx(0.015)]  # doubling
    assert env.sim.stats["ws_connections"] == 3


async def test_short_responses_exhaust_retries(make_env: MakeEnv) -> None:
    env = await make_env(replace(FAST_SIM, tts_faults=("short",) * 3), hamsa_retries=2)
    session = env.service.session("call-640x3")
    with pytest.raises(HamsaError) as info:
        await speak(session)
    assert info.value.kind is ErrorKind.SHORT_RESPONSE


@pytest.mark.parametrize("mode", ["close", "http"])
async def test_bad_key_is_fatal_at_once_with_a_clear_message(
    make_env: MakeEnv, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    env = await make_env(
        replace(FAST_SIM, api_key="the-right-key", auth_failure=mode),
        hamsa_auth_mode=HamsaAuthMode.QUERY,
    )
    session = env.service.session("call-auth")
    with pytest.raises(HamsaError) as info:
        await speak(session)
    err = info.value
    assert err.kind is ErrorKind.AUTH and err.fatal
    assert "HAMSA_API_KEY" in str(err)
    pool = env.service.pool
    assert pool.on_demand_connects == 1 and pool.circuit_open  # tried once, not retried
    with pytest.raises(HamsaError) as again:
        await speak(session)  # fails fast with the same clear error, no new connect
    assert again.value.kind is ErrorKind.AUTH
    assert pool.on_demand_connects == 1
    assert env.sim.stats["rest_tts_requests"] == 0  # REST shares the key: not tried
    # The key never shows: our logs at every level (websockets' handshake lines included),
    # errors, reprs. (aiohttp.access lines come from the simulator's server side.)
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("gateway"))
    assert "gateway.speech.hamsa.wire" in {r.name for r in caplog.records}
    for text in (
        ours,
        str(err),
        repr(err),
        repr(session),
        repr(env.service),
        repr(Endpoint.from_settings(fast_settings(1))),
    ):
        assert KEY not in text


async def test_empty_wallet_is_fatal(make_env: MakeEnv) -> None:
    env = await make_env(replace(FAST_SIM, tts_faults=("wallet",)))
    session = env.service.session("call-wallet")
    with pytest.raises(HamsaError) as info:
        await speak(session)
    assert info.value.kind is ErrorKind.QUOTA and info.value.fatal
    assert "wallet" in str(info.value)
    assert env.delays == []


async def test_cancelled_stream_leaves_no_corrupted_socket(make_env: MakeEnv) -> None:
    env = await make_env(replace(FAST_SIM, realtime_factor=2.0))
    session = env.service.session("call-barge")
    async with aclosing(session.tts(TEXT)) as stream:
        await anext(stream)  # first audio, then the caller barges in
    # task cancellation is the other way to stop
    task = asyncio.create_task(speak(session, TEXT2))
    await wait_for(lambda: env.sim.stats["tts_requests"] == 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # the next request gets clean, complete audio on a fresh socket
    fast = replace(FAST_SIM, realtime_factor=200.0)
    object.__setattr__(env.sim, "config", fast)
    assert await speak(session, TEXT) == synthetic_speech(TEXT)
    assert env.sim.stats["ws_connections"] == 3
    await wait_for(lambda: env.sim.snapshot()["ws_open"] == 1)  # abandoned ones are gone


async def test_stt_does_not_wait_behind_a_tts_stream(make_env: MakeEnv) -> None:
    env = await make_env(replace(FAST_SIM, realtime_factor=1.5))
    session = env.service.session("call-both")
    tts_task = asyncio.create_task(speak(session))
    await wait_for(lambda: env.sim.stats["tts_requests"] == 1)
    async with asyncio.timeout(1.0):
        text = await session.stt(b"\x00\x00" * 1600, 16000)
    assert text and not tts_task.done()  # answered while the stream still runs
    tts_task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await tts_task


async def test_stt_thinking_marker_times_out_and_retries(make_env: MakeEnv) -> None:
    env = await make_env(replace(FAST_SIM, stt_faults=("thinking",), stall_seconds=1.0))
    session = env.service.session("call-stt")
    assert await session.stt(b"\x00\x00" * 1600, 16000) == "مرحبا، أريد أن أسأل عن طلبي"
    assert env.count(env.metrics.hamsa_errors, "timeout") == 1
    assert env.sim.stats["ws_connections"] == 2


async def test_rest_fallback_when_the_socket_is_down(make_env: MakeEnv) -> None:
    env = await make_env(
        replace(FAST_SIM, ws_down=True, rest_stream_riff=True), hamsa_rest_fallback_after=2
    )
    session = env.service.session("call-rest")
    assert await speak(session) == synthetic_speech(TEXT)
    assert env.count(env.metrics.hamsa_rest_fallbacks, "tts") == 1
    assert env.sim.stats["rest_tts_requests"] == 1
    assert await session.stt(b"\x00\x00" * 1600, 16000) == "مرحبا، أريد أن أسأل عن طلبي"
    assert env.count(env.metrics.hamsa_rest_fallbacks, "stt") == 1
    assert env.service.status()["rest_fallback"] is True


async def test_rest_fallback_raw_pcm_mulaw_and_plain_stt(make_env: MakeEnv) -> None:
    sim = replace(FAST_SIM, ws_down=True, rest_stream_riff=False, rest_stt_envelope=False)
    env = await make_env(sim, hamsa_rest_fallback_after=1)
    session = env.service.session("call-rest2")
    audio = await speak(session, TEXT, mulaw=True)
    assert len(audio) == pytest.approx(len(synthetic_speech(TEXT)) / 4, abs=16)
    assert await session.stt(b"\x00\x00" * 1600, 16000) == "مرحبا، أريد أن أسأل عن طلبي"


async def test_circuit_opens_while_down_and_closes_when_back(make_env: MakeEnv) -> None:
    env = await make_env(replace(FAST_SIM, ws_down=True), hamsa_pool_min_idle=1)
    pool = env.service.pool
    await wait_for(lambda: pool.circuit_open)
    assert env.count(env.metrics.hamsa_circuit_open) == 1
    assert env.service.status()["circuit"] == "open"
    assert env.service.status()["ready"] is False
    before = env.sim.stats["ws_connections"]
    with pytest.raises(HamsaError) as info:
        await pool.acquire()
    assert info.value.kind is ErrorKind.CIRCUIT_OPEN
    assert env.sim.stats["ws_connections"] - before <= 1  # no connect storm from acquire
    assert len(set(env.delays)) > 1 and env.delays[1] > env.delays[0]  # backing off
    env.sim.ws_down = False
    await wait_for(lambda: not pool.circuit_open and pool.idle == 1)
    assert env.count(env.metrics.hamsa_circuit_open) == 0


async def test_connects_are_capped(make_env: MakeEnv) -> None:
    env = await make_env(replace(FAST_SIM, connect_delay=0.05))
    pool = env.service.pool
    pool._connects = asyncio.Semaphore(2)  # cap for this test
    conns = await asyncio.gather(*(pool.acquire() for _ in range(6)))
    assert len(conns) == 6
    assert pool.peak_connecting == 2  # six callers, never more than two connects at once
    assert env.count(env.metrics.hamsa_connections, "created") == 6
    for conn in conns:
        pool.release(conn)


async def test_no_task_or_socket_leaks(aiohttp_server: Any) -> None:
    server: TestServer = await aiohttp_server(create_sim_app(FAST_SIM))
    before = asyncio.all_tasks()
    async with aiohttp.ClientSession() as http:
        service = HamsaService(
            fast_settings(port_of(server), hamsa_pool_min_idle=2),
            Metrics(),
            http,
            pool_check_interval=0.02,
        )
        async with service:
            await wait_for(lambda: service.pool.idle == 2)
            session = service.session("call-leak")
            await speak(session)
            async with aclosing(session.tts(TEXT2)) as stream:
                await anext(stream)
            await session.stt(b"\x00\x00" * 1600, 16000)
            await session.aclose()
    await asyncio.sleep(0.05)
    assert asyncio.all_tasks() - before == set()
    await wait_for(lambda: server.app[SIM_STATE].snapshot()["ws_open"] == 0)


async def test_embedded_simulator_when_no_key() -> None:
    metrics = Metrics()
    sim = replace(FAST_SIM, api_key="")
    settings = replace(
        Settings(), hamsa_pool_min_idle=1, hamsa_pool_burst_calls=0, hamsa_connect_timeout=2.0
    )
    service = HamsaService(
        settings, metrics, simulator=partial(start_embedded, sim), pool_check_interval=0.02
    )
    async with service as svc:
        status = svc.status()
        assert status["backend"] == "simulator"
        assert status["base_url"].startswith("http://127.0.0.1:")
        session = svc.session("call-embedded")
        assert await speak(session) == synthetic_speech(TEXT)
        await session.aclose()


async def test_no_key_and_no_simulator_is_a_clear_start_error() -> None:
    """The speech layer never imports the simulator: without a key it must be given one."""
    service = HamsaService(Settings(), Metrics())
    with pytest.raises(RuntimeError, match="HAMSA_API_KEY is not set"):
        await service.start()
    await service.aclose()


async def test_with_the_lead_split_a_burst_reserve_holds_two_sockets_per_greeting(
    make_env: MakeEnv,
) -> None:
    """A greeting may use two streams (lead and rest): the pool keeps 2 x the burst warm, and
    a second stream borrows only beyond the reserve while the greeting plays."""
    env = await make_env(hamsa_pool_min_idle=1, hamsa_pool_burst_calls=2)
    pool = env.service.pool
    await wait_for(lambda: pool.idle == 4)
    session = env.service.session("call-split")
    assert session.can_borrow(greeting=True)  # 4 idle > 2 reserved (+1 for the first stream)
    async with aclosing(session.tts(TEXT, greeting=True)) as first:
        assert (await anext(first)).audio  # the call's own socket: 3 idle
        taken = pool.idle
        assert session.can_borrow(greeting=True) == (taken > 2)
        assert session.can_borrow() == (taken > 0)  # not a greeting: any idle socket
        async for _ in first:
            pass
    await session.aclose()


async def test_connection_open_classifies_unreachable(aiohttp_server: Any) -> None:
    endpoint = Endpoint("ws://127.0.0.1:9/v1/realtime/ws", KEY)
    with pytest.raises(HamsaError) as info:
        await HamsaConnection.open(endpoint, 1.0)
    assert info.value.kind is ErrorKind.CONNECT
    assert KEY not in str(info.value)


async def test_prepare_leaves_warm_sockets_to_greetings(make_env: MakeEnv) -> None:
    """Issue 10.17: a call's STT socket (taken while its greeting plays) is opened fresh
    while the pool holds no more than the burst reserve, so a burst's greetings keep them."""
    # One socket per greeting (no playout lead split), so the pool's target is the reserve.
    env = await make_env(hamsa_pool_min_idle=2, hamsa_pool_burst_calls=2, playout_lead_split=False)
    pool = env.service.pool
    await wait_for(lambda: pool.idle == 2)
    session = env.service.session("call-burst")
    await session.prepare()
    assert pool.idle == 2  # both warm sockets still there for the next greetings
    assert pool.on_demand_connects == 1
    async with aclosing(session.tts(TEXT)) as stream:
        assert (await anext(stream)).audio
        async for _ in stream:
            pass
    assert pool.on_demand_connects == 1  # the greeting took a warm one
    await session.aclose()
