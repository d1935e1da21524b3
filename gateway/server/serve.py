"""``gateway serve``: run the app until SIGTERM/SIGINT, then drain without dropping calls.

Drain sequence (SIGTERM or SIGINT):
1. ``/readyz`` turns 503 and new calls are refused (Twilio busy TwiML, chan_websocket HTTP 503,
   AudioSocket the hang-up packet);
2. live calls get up to ``DRAIN_TIMEOUT`` seconds to finish on their own;
3. calls still live are hung up cleanly, the server stops, and the process exits 0.
A second signal during the drain skips the wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal

from aiohttp import web

from gateway.config import Settings
from gateway.server import keys
from gateway.server.app import create_app
from gateway.server.guard import ConnectionGuard, GuardedTCPSite

log = logging.getLogger(__name__)

# Slowloris limits (issue 10 item 10). Carriers send a whole request in milliseconds; a
# connection still without one after 10 s is not a carrier.
HEADER_TIMEOUT_SECONDS = 10.0
MAX_HALF_OPEN_CONNECTIONS = 256
KEEPALIVE_TIMEOUT_SECONDS = 15.0
# After answering a request whose body never completed (408), aiohttp keeps reading the rest
# this long before closing (its default is 10 s).
LINGERING_SECONDS = 2.0
GUARD = web.AppKey("connection_guard", ConnectionGuard)


async def serve(settings: Settings, *, ready: asyncio.Event | None = None) -> int:
    """Serve until a stop signal, drain, return the exit status (0)."""
    app = create_app(settings)
    runner, site = await start_site(app, settings.host, settings.port)
    log.info(
        "gateway listening on %s:%d (public %s), agent=%s, max calls %d",
        settings.host,
        site.port,
        settings.public_base,
        settings.agent.value,
        settings.max_calls,
    )
    if not settings.twilio_auth_token:
        if settings.twilio_allow_unsigned:
            log.warning(
                "TWILIO_ALLOW_UNSIGNED=true: Twilio signatures are NOT checked (development only)"
            )
        else:
            log.warning("TWILIO_AUTH_TOKEN is not set: Twilio requests will be refused (403)")
    stop = asyncio.Event()
    signals = 0

    def on_signal(signum: int) -> None:
        nonlocal signals
        signals += 1
        log.info("received %s", signal.Signals(signum).name)
        stop.set()
        if signals > 1:
            skip.set()

    skip = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    # Everything allocated at start-up lives for the whole process: move it out of the
    # collector's way, so full collections under load scan only per-call objects.
    gc.collect()
    gc.freeze()
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
        await drain(app, settings.drain_timeout, skip)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await runner.cleanup()
    log.info("stopped")
    return 0


async def start_site(
    app: web.Application, host: str, port: int
) -> tuple[web.AppRunner, GuardedTCPSite]:
    """Set the app up and listen on ``host:port`` behind the slowloris guard (see guard.py).

    A connection must deliver a complete first request within ``HEADER_TIMEOUT_SECONDS``, at
    most ``MAX_HALF_OPEN_CONNECTIONS`` may be waiting for theirs at once, and a keep-alive
    connection's next request must come within ``KEEPALIVE_TIMEOUT_SECONDS``.
    """
    runner_box: list[web.AppRunner] = []

    def factory() -> asyncio.BaseProtocol:
        server = runner_box[0].server
        assert server is not None
        return server()

    guard = ConnectionGuard(
        factory,
        header_timeout=HEADER_TIMEOUT_SECONDS,
        max_half_open=MAX_HALF_OPEN_CONNECTIONS,
        throttled_log=app[keys.CALLS].throttled_log,
    )
    app[GUARD] = guard
    app.middlewares.append(guard.middleware)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        shutdown_timeout=5.0,
        keepalive_timeout=KEEPALIVE_TIMEOUT_SECONDS,
        lingering_time=LINGERING_SECONDS,
    )
    runner_box.append(runner)
    await runner.setup()
    site = GuardedTCPSite(runner, host, port, guard)
    await site.start()
    return runner, site


async def drain(app: web.Application, timeout: float, skip: asyncio.Event) -> None:
    """Refuse new calls, give live ones ``timeout`` seconds, then hang up the rest."""
    registry = app[keys.CALLS]
    app[keys.READINESS].draining = True
    registry.draining = True
    app[keys.METRICS].draining.set(1)
    live = registry.count
    log.info("draining: %d live call(s), waiting up to %.0f s", live, timeout)
    if live:
        waiter = asyncio.ensure_future(registry.wait_idle(timeout))
        skipper = asyncio.ensure_future(skip.wait())
        await asyncio.wait({waiter, skipper}, return_when=asyncio.FIRST_COMPLETED)
        for task in (waiter, skipper):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if registry.count:
        log.warning("drain timeout: hanging up %d call(s)", registry.count)
        registry.hangup_all("drain_timeout")
        await registry.wait_idle(5.0)
    log.info("drained")
