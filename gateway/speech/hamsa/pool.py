"""Process-wide warm pool of Hamsa realtime sockets, with a circuit breaker.

Opening a socket costs about 1.2 s (the latency the original system fought), so the pool
keeps greeted sockets ready (how many: :class:`PoolSizer`, from ``min_idle``, the burst size
and the recent arrival rate) and a call's first request takes one instead of
connecting. Contract:

* :meth:`HamsaPool.acquire` returns a usable socket: a warm one (oldest first, so none ages
  out unused) or, if none is idle, a new one opened on the caller's path. While the circuit
  is open it raises at once (no connect on the critical path; the session may use REST).
* :meth:`HamsaPool.release` takes back a clean socket (idle, no unread audio) while fewer
  than ``max_idle`` (default twice the target; ``min_idle=0`` means no pooling at all)
  are idle; anything else is closed. :meth:`HamsaPool.discard` closes in the background.
* One background task refills to the target, recycles sockets at a jittered
  ``max_age`` (well before Hamsa's 60-minute idle close, ``hamsa.md`` §1.6, and spread so
  sockets opened together are not all replaced together), and backs off with jittered
  exponential delays after failures.
* No connect storms: at most ``max_connecting`` connects run at once, on-demand and
  background together.
* Circuit breaker: ``breaker_threshold`` consecutive connect failures (or one fatal auth or
  billing failure) open it; the refill task keeps probing with backoff; one success closes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.metrics import Metrics
from gateway.speech.hamsa.client import Backoff, HamsaConnection
from gateway.speech.hamsa.errors import HamsaError
from gateway.speech.hamsa.protocol import ErrorKind

log = logging.getLogger(__name__)

Connector = Callable[[], Awaitable[HamsaConnection]]
Sleep = Callable[[float], Awaitable[None]]

RECYCLE_JITTER = 0.1  # a socket is recycled after max_age * (1 - U(0, 0.1))


ARRIVAL_WINDOW = 10.0  # seconds of recent acquisitions the sizing policy looks at
REFILL_HORIZON_FLOOR = 2.0  # seconds a refill takes at least (a connect is ~1.2 s)


class PoolSizer:
    """How many warm sockets to keep idle: sans-I/O (``now`` is passed in).

    ``target(now) = max(min_idle, burst * per_greeting, ceil(rate * horizon))`` where
    ``burst`` is the number of calls that may arrive at once and must each find a warm
    socket for their greeting (``HAMSA_POOL_BURST_CALLS``, at most ``MAX_CALLS``; those
    ``burst`` sockets are the reserve a spare or second socket never takes),
    ``per_greeting`` the sockets a greeting may use (2 with the playout lead split: the
    lead and the rest of its first sentence, while more than the reserve are idle), ``rate``
    the warm-socket acquisitions per second over the last :data:`ARRIVAL_WINDOW` seconds,
    and ``horizon`` how long a refill takes (twice the mean recent connect time, at least
    :data:`REFILL_HORIZON_FLOOR`): a pool that many sockets deep is not drained before
    its refills land. ``cap`` bounds the target (twice ``MAX_CALLS``: two sockets per call).
    ``min_idle=0`` switches pooling off (target 0).
    """

    def __init__(
        self, min_idle: int, burst: int = 0, cap: int = 1_000_000, per_greeting: int = 1
    ) -> None:
        self.min_idle = min_idle
        self.burst = burst
        self.per_greeting = per_greeting
        self.cap = max(cap, min_idle)
        self._arrivals: deque[float] = deque()
        self._connect_mean = 1.2

    def arrival(self, now: float) -> None:
        """A socket was taken for a call's request."""
        self._arrivals.append(now)
        self._expire(now)

    def connected(self, seconds: float) -> None:
        """A connect took ``seconds`` (moving average)."""
        self._connect_mean += 0.2 * (seconds - self._connect_mean)

    def _expire(self, now: float) -> None:
        arrivals = self._arrivals
        while arrivals and arrivals[0] < now - ARRIVAL_WINDOW:
            arrivals.popleft()

    def target(self, now: float) -> int:
        if self.min_idle == 0:
            return 0  # pooling switched off
        self._expire(now)
        rate = len(self._arrivals) / ARRIVAL_WINDOW
        horizon = max(REFILL_HORIZON_FLOOR, 2.0 * self._connect_mean)
        by_rate = int(rate * horizon + 0.999)
        return min(self.cap, max(self.min_idle, self.burst * self.per_greeting, by_rate))


class HamsaPool:
    """Warm sockets for every call of the process. Start with :meth:`start`, stop with
    :meth:`aclose` (closes idle sockets and waits for background closes)."""

    def __init__(
        self,
        connect: Connector,
        metrics: Metrics,
        *,
        min_idle: int = 2,
        max_idle: int | None = None,
        max_age: float = 1800.0,
        max_connecting: int = 8,
        breaker_threshold: int = 3,
        backoff: Backoff | None = None,
        check_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        rng: Callable[[], float] = random.random,
        burst: int = 0,
        cap: int = 1_000_000,
        per_greeting: int = 1,
    ) -> None:
        self._connect = connect
        self._metrics = metrics
        self.min_idle = min_idle
        self.sizer = PoolSizer(min_idle, burst, cap, per_greeting)
        self._max_idle = max_idle
        self.max_age = max_age
        self._breaker_threshold = breaker_threshold
        self._backoff = backoff or Backoff(initial=0.5, maximum=30.0)
        self._check_interval = check_interval
        self._clock = clock
        self._sleep = sleep
        self._rng = rng
        self._idle: deque[HamsaConnection] = deque()
        self._connects = asyncio.Semaphore(max_connecting)
        self._connecting = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._closed = False
        self._failures = 0
        self._circuit_open = False
        self._last_error: HamsaError | None = None
        self.connects = 0  # sockets opened (background + on demand)
        self.on_demand_connects = 0  # of which on a caller's path
        self.peak_connecting = 0  # most connects ever in progress at once

    # -- lifecycle
    async def start(self) -> None:
        """Start the refill task (idempotent)."""
        if self._task is None:
            self._task = asyncio.create_task(self._maintain(), name="hamsa-pool")

    async def aclose(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while self._idle:
            self._close_later(self._idle.popleft())
        self._set_idle_gauge()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    async def __aenter__(self) -> HamsaPool:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- state
    @property
    def target(self) -> int:
        """Idle sockets the refill task aims for now (see :class:`PoolSizer`)."""
        return self.sizer.target(self._clock())

    @property
    def max_idle(self) -> int:
        """Idle sockets kept on release (default twice the target)."""
        return self._max_idle if self._max_idle is not None else 2 * self.target

    @property
    def idle(self) -> int:
        return len(self._idle)

    @property
    def circuit_open(self) -> bool:
        return self._circuit_open

    @property
    def fatal_error(self) -> HamsaError | None:
        """The auth/billing error that opened the circuit, if that is why it is open."""
        last = self._last_error
        return last if self._circuit_open and last is not None and last.fatal else None

    def status(self) -> dict[str, Any]:
        return {
            "idle": len(self._idle),
            "connecting": self._connecting,
            "min_idle": self.min_idle,
            "target_idle": self.target,
            "circuit": "open" if self._circuit_open else "closed",
            "last_error": self._last_error.kind.value if self._last_error else None,
            "connects": self.connects,
            "on_demand_connects": self.on_demand_connects,
        }

    # -- use
    async def acquire(self, *, spare: bool = False) -> HamsaConnection:
        """A usable socket; raises :class:`HamsaError` (``circuit_open``, or the fatal
        auth/quota error that opened the circuit, or the connect failure).

        ``spare=True`` is for a socket not needed at once (a call's STT socket taken while
        its greeting plays): it takes a warm one only while more than the burst reserve
        (``HAMSA_POOL_BURST_CALLS``) are idle, and otherwise opens its own, so a burst of new
        calls leaves the warm sockets to the greetings that need them now.
        """
        if self._closed:
            raise HamsaError("the speech pool is closed", ErrorKind.CIRCUIT_OPEN)
        now = self._clock()
        if not spare:
            self.sizer.arrival(now)
        elif len(self._idle) <= self.sizer.burst:
            if self._circuit_open:
                raise HamsaError("Hamsa is unavailable (circuit open)", ErrorKind.CIRCUIT_OPEN)
            self.on_demand_connects += 1
            try:
                return await self._open()
            finally:
                self._wake.set()
        while self._idle:
            conn = self._idle.popleft()
            if conn.usable and now < conn.expires_at:
                self._set_idle_gauge()
                self._wake.set()  # refill behind us
                return conn
            self._close_later(conn)
        self._set_idle_gauge()
        if self._circuit_open:
            last = self._last_error
            if last is not None and last.fatal:
                raise HamsaError(last.message, last.kind, fatal=True)
            raise HamsaError("Hamsa is unavailable (circuit open)", ErrorKind.CIRCUIT_OPEN)
        self.on_demand_connects += 1
        try:
            return await self._open()
        finally:
            self._wake.set()

    def release(self, conn: HamsaConnection) -> None:
        """Return a socket after use: kept warm if clean and young, else closed."""
        if (
            not self._closed
            and conn.usable
            and self._clock() < conn.expires_at
            and len(self._idle) < self.max_idle
        ):
            self._idle.append(conn)
            self._set_idle_gauge()
        else:
            self._close_later(conn)

    def discard(self, conn: HamsaConnection) -> None:
        """Close a socket that must not be reused (failed, abandoned mid-stream)."""
        self._close_later(conn)
        self._wake.set()

    # -- internals
    async def _open(self) -> HamsaConnection:
        async with self._connects:
            self._connecting += 1
            self.peak_connecting = max(self.peak_connecting, self._connecting)
            started = self._clock()
            try:
                conn = await self._connect()
            except HamsaError as exc:
                self._metrics.hamsa_connections.labels("failed").inc()
                self._metrics.hamsa_errors.labels(exc.kind.value).inc()
                self._record_failure(exc)
                raise
            finally:
                self._connecting -= 1
        self.connects += 1
        self._metrics.hamsa_connections.labels("created").inc()
        self._metrics.observe_stage("hamsa_connect", self._clock() - started)
        self.sizer.connected(self._clock() - started)
        self._record_success()
        conn.expires_at = self._clock() + self.max_age * (1.0 - RECYCLE_JITTER * self._rng())
        return conn

    def _record_failure(self, exc: HamsaError) -> None:
        self._failures += 1
        self._last_error = exc
        if not self._circuit_open and (exc.fatal or self._failures >= self._breaker_threshold):
            self._circuit_open = True
            self._metrics.hamsa_circuit_open.set(1)
            log.warning(
                "Hamsa circuit OPEN after %d failed connects (last: %s)", self._failures, exc
            )

    def _record_success(self) -> None:
        self._failures = 0
        if self._circuit_open:
            self._circuit_open = False
            self._last_error = None
            self._metrics.hamsa_circuit_open.set(0)
            log.warning("Hamsa circuit closed: connects succeed again")

    def _close_later(self, conn: HamsaConnection) -> None:
        task = asyncio.create_task(conn.aclose(), name="hamsa-close")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _set_idle_gauge(self) -> None:
        self._metrics.hamsa_pool_idle.set(len(self._idle))

    def _prune(self) -> float:
        """Drop dead or expired idle sockets; return seconds until the next expiry."""
        now = self._clock()
        keep: deque[HamsaConnection] = deque()
        for conn in self._idle:
            if conn.usable and now < conn.expires_at:
                keep.append(conn)
            else:
                self._close_later(conn)
        self._idle = keep
        self._set_idle_gauge()
        return min((c.expires_at - now for c in keep), default=float("inf"))

    async def _maintain(self) -> None:
        attempt = 0
        while not self._closed:
            self._wake.clear()
            next_expiry = self._prune()
            wanted = self.sizer.target(self._clock())
            target = max(wanted, 1) if self._circuit_open else wanted
            deficit = target - len(self._idle) - self._connecting
            if self._circuit_open and deficit > 0:
                deficit = 1  # half-open: one probe at a time, after a backoff pause
                await self._sleep(self._backoff.delay(attempt, self._rng))
                attempt += 1
            if deficit > 0:
                results = await asyncio.gather(
                    *(self._open() for _ in range(deficit)), return_exceptions=True
                )
                failed = False
                for result in results:
                    if isinstance(result, HamsaConnection):
                        self.release(result)
                    elif isinstance(result, HamsaError):
                        failed = True
                    elif isinstance(result, BaseException):
                        raise result
                if failed:
                    if not self._circuit_open:
                        delay = self._backoff.delay(attempt, self._rng)
                        attempt += 1
                        log.info("Hamsa pool refill failed; retrying in %.2f s", delay)
                        await self._sleep(delay)
                    continue
                attempt = 0
                continue
            timeout = min(self._check_interval, max(0.0, next_expiry))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
