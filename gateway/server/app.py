"""``create_app(settings)``: routes and paired lifecycles, no logic.

Each long-lived resource has one ``cleanup_ctx`` entry: setup above its ``yield``, teardown
below it. Typed state lives under the keys in :mod:`gateway.server.keys`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from gateway.calls import CallRegistry
from gateway.config import Settings
from gateway.conversations import conversation_factory
from gateway.metrics import Metrics
from gateway.readiness import Readiness
from gateway.server import health, keys, twilio_routes


def create_app(settings: Settings, metrics: Metrics | None = None) -> web.Application:
    """Build the gateway's web application from validated settings."""
    app = web.Application(client_max_size=1024 * 1024)
    app[keys.SETTINGS] = settings
    app[keys.METRICS] = metrics if metrics is not None else Metrics()
    app[keys.READINESS] = Readiness()
    app[keys.CALLS] = CallRegistry(settings.max_calls, app[keys.METRICS])
    app[keys.CONVERSATIONS] = conversation_factory(app)
    app.cleanup_ctx.append(_http_client)
    health.add_routes(app)
    twilio_routes.add_routes(app)
    return app


async def _http_client(app: web.Application) -> AsyncIterator[None]:
    """One pooled HTTP client for all outbound requests (carrier REST, agent webhook)."""
    timeout = aiohttp.ClientTimeout(total=None, connect=5, sock_connect=5)
    connector = aiohttp.TCPConnector(limit=200, limit_per_host=100, keepalive_timeout=30)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        app[keys.HTTP_CLIENT] = session
        yield
