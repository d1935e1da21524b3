"""The Hamsa speech service: one per process, for the app's ``cleanup_ctx``.

:class:`HamsaService` owns the warm pool, the REST fallback client and the failure gate
shared by every call, and hands out a :class:`~gateway.speech.hamsa.session.HamsaSession`
per call. When no ``HAMSA_API_KEY`` is set it starts the embedded simulator it was given
(``simulator=``) and says so loudly, in the log and in :meth:`HamsaService.status` (for
``/readyz``).

Usage::

    async def hamsa_ctx(app):
        async with HamsaService(settings, metrics, http=app[HTTP]) as service:
            app[HAMSA] = service
            yield
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import aiohttp

from gateway.config import Settings
from gateway.metrics import Metrics
from gateway.speech.hamsa.client import Backoff, Endpoint, HamsaConnection
from gateway.speech.hamsa.pool import HamsaPool
from gateway.speech.hamsa.rest import HamsaRest
from gateway.speech.hamsa.session import FallbackGate, FirstAudioTimes, HamsaSession

log = logging.getLogger(__name__)

SIMULATOR_KEY = "simulator"  # the embedded simulator accepts any key

# Starts a local Hamsa stand-in; returns its base URL and how to stop it. Injected by the
# wiring (gateway/server/app.py passes gateway.sim.hamsa_sim.start_embedded) so that the
# speech layer never imports the simulator.
SimulatorStarter = Callable[[], Awaitable[tuple[str, Callable[[], Awaitable[None]]]]]


class HamsaService:
    """Process-wide Hamsa speech. ``start`` / ``aclose`` (or ``async with``)."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        http: aiohttp.ClientSession | None = None,
        *,
        max_connecting: int | None = None,
        pool_check_interval: float = 1.0,
        probe_interval: float = 10.0,
        simulator: SimulatorStarter | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._http = http
        self._own_http = False
        self._max_connecting = (
            settings.hamsa_pool_max_connecting if max_connecting is None else max_connecting
        )
        self._check_interval = pool_check_interval
        self._simulator = simulator
        self._sleep = sleep
        self._rng = rng
        self._clock = clock
        self.gate = FallbackGate(settings.hamsa_rest_fallback_after, probe_interval, clock)
        self.first_audio = FirstAudioTimes()  # TTS request -> first audio, all sessions
        self._stop_simulator: Callable[[], Awaitable[None]] | None = None
        self._pool: HamsaPool | None = None
        self._rest: HamsaRest | None = None
        self.base_url = settings.hamsa_base_url
        self._settings_in_use = settings

    def __repr__(self) -> str:
        return f"<HamsaService {self.base_url} simulator={self.simulated}>"

    @property
    def simulated(self) -> bool:
        return self._settings.uses_hamsa_simulator

    @property
    def pool(self) -> HamsaPool:
        if self._pool is None:
            raise RuntimeError("HamsaService.start() was not called")
        return self._pool

    async def start(self) -> None:
        settings = self._settings
        if self.simulated:
            await self._start_simulator()
            settings = replace(settings, hamsa_api_key=SIMULATOR_KEY, hamsa_base_url=self.base_url)
        endpoint = Endpoint.from_settings(settings)
        timeout = settings.hamsa_connect_timeout
        clock = self._clock

        async def connect() -> HamsaConnection:
            return await HamsaConnection.open(endpoint, timeout, clock)

        self._pool = HamsaPool(
            connect,
            self._metrics,
            min_idle=settings.hamsa_pool_min_idle,
            # A burst of this many calls each finds a warm socket for its greeting.
            burst=min(settings.hamsa_pool_burst_calls, settings.max_calls),
            cap=2 * settings.max_calls,
            # The playout lead split (gateway/agent/playout.py) gives a greeting two streams.
            per_greeting=2 if settings.playout_adaptive and settings.playout_lead_split else 1,
            max_age=settings.hamsa_pool_max_age,
            max_connecting=self._max_connecting,
            backoff=Backoff(initial=max(0.05, settings.hamsa_retry_delay / 2), maximum=30.0),
            check_interval=self._check_interval,
            clock=clock,
            sleep=self._sleep,
            rng=self._rng,
        )
        if self._http is None:
            self._http = aiohttp.ClientSession()
            self._own_http = True
        self._rest = HamsaRest(
            self._http,
            settings.hamsa_base_url,
            settings.hamsa_api_key,
            speaker=settings.hamsa_speaker,
            dialect=settings.hamsa_dialect,
            language=settings.hamsa_language,
        )
        self._settings_in_use = settings
        await self._pool.start()

    async def _start_simulator(self) -> None:
        if self._simulator is None:
            raise RuntimeError(
                "HAMSA_API_KEY is not set and no embedded simulator was provided: set "
                "HAMSA_API_KEY (gateway/server/app.py provides the simulator)"
            )
        self.base_url, self._stop_simulator = await self._simulator()
        log.warning(
            "NO HAMSA_API_KEY: speech is served by the embedded Hamsa SIMULATOR at %s "
            "(synthetic voice, scripted transcripts). Set HAMSA_API_KEY for real speech.",
            self.base_url,
        )

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()
        if self._own_http and self._http is not None:
            await self._http.close()
        if self._stop_simulator is not None:
            await self._stop_simulator()
            self._stop_simulator = None

    async def __aenter__(self) -> HamsaService:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def session(self, call_id: str) -> HamsaSession:
        """A new per-call session (close it with ``aclose`` at hang-up)."""
        return HamsaSession(
            call_id,
            self.pool,
            self._settings_in_use,
            self._metrics,
            self.gate,
            self._rest,
            first_audio=self.first_audio,
            sleep=self._sleep,
            rng=self._rng,
            clock=self._clock,
        )

    def status(self) -> dict[str, Any]:
        """For ``/readyz``: backend (real or simulator), pool and circuit state."""
        pool = self._pool.status() if self._pool is not None else {"circuit": "not started"}
        return {
            "backend": "simulator" if self.simulated else "hamsa",
            "base_url": self.base_url,
            "ready": self._pool is not None and not self._pool.circuit_open,
            "rest_fallback": self.gate.failures >= self.gate.threshold,
            **pool,
        }
