"""Slowloris guard: a deadline for a connection's first request, and a cap on half-open ones.

aiohttp reads request headers with no deadline of its own: a client that connects and then
trickles (or never sends) its headers holds a socket and a handler task for as long as it
likes (issue 10 item 10: 550 half-open requests held for 150 s). This module closes that
hole at the connection level, with public aiohttp API only:

* :class:`ConnectionGuard` wraps the runner's protocol factory. A new connection is
  *half-open* until the application sees its first request (the :meth:`middleware` marks it,
  so "headers complete" is exactly "a handler runs"). A half-open connection is closed after
  ``header_timeout`` seconds, and when ``max_half_open`` are already open a new one is closed
  at once. Both are counted (``closed_slow`` / ``refused``) and logged rate-limited.
* Later requests on a keep-alive connection are bounded by aiohttp's own
  ``keepalive_timeout`` (the handler closes an idle connection whose next request has not
  arrived in that time), which :func:`gateway.server.serve.serve` sets.
* Bodies are bounded where they are read (the Twilio webhooks: ``BODY_TIMEOUT_SECONDS``).

WebSocket calls are untouched: once the upgrade request reached its handler the connection
is no longer half-open, whatever it does afterwards.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

from aiohttp import web

from gateway.logs import ThrottledLog

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ConnectionGuard:
    """Protocol factory wrapper enforcing the first-request deadline and the half-open cap.

    ``factory`` is ``runner.server`` (aiohttp's per-connection ``RequestHandler`` factory).
    Install :meth:`middleware` on the application so the guard learns when a request starts.
    """

    def __init__(
        self,
        factory: Callable[[], asyncio.BaseProtocol],
        *,
        header_timeout: float,
        max_half_open: int,
        throttled_log: ThrottledLog | None = None,
    ) -> None:
        if header_timeout <= 0 or max_half_open <= 0:
            raise ValueError("header_timeout and max_half_open must be positive")
        self._factory = factory
        self._timeout = header_timeout
        self._max = max_half_open
        self._log = throttled_log or ThrottledLog(log)
        # Half-open connections: protocol -> (transport, deadline timer).
        self._half_open: dict[asyncio.BaseProtocol, tuple[asyncio.Transport, Any]] = {}
        self.refused = 0  # closed at once: too many half-open connections
        self.closed_slow = 0  # closed: no complete request within header_timeout

    @property
    def half_open(self) -> int:
        return len(self._half_open)

    def __call__(self) -> asyncio.BaseProtocol:
        return _GuardedProtocol(self._factory(), self)

    def _made(self, proto: asyncio.BaseProtocol, transport: asyncio.Transport) -> None:
        if len(self._half_open) >= self._max:
            self.refused += 1
            self._log.warning(
                "http_half_open_cap",
                "closing a new HTTP connection: %d connections have not sent a request yet",
                len(self._half_open),
            )
            transport.abort()
            return
        timer = asyncio.get_running_loop().call_later(self._timeout, self._expire, proto)
        self._half_open[proto] = (transport, timer)

    def _forget(self, proto: asyncio.BaseProtocol) -> None:
        entry = self._half_open.pop(proto, None)
        if entry is not None:
            entry[1].cancel()

    def _expire(self, proto: asyncio.BaseProtocol) -> None:
        entry = self._half_open.pop(proto, None)
        if entry is None:
            return
        self.closed_slow += 1
        self._log.warning(
            "http_header_timeout",
            "closing an HTTP connection: no complete request within %.0f s",
            self._timeout,
        )
        entry[0].abort()

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Mark the request's connection as past its headers (no longer half-open)."""
        proto = request.protocol
        if proto in self._half_open:
            self._forget(proto)
        return await handler(request)


class _GuardedProtocol(asyncio.Protocol):
    """Forwards every transport callback to aiohttp's handler, telling the guard of the
    connection's start and end. (aiohttp's ``RequestHandler`` has ``__slots__``, so it cannot
    be hooked in place; one extra call per TCP read is all this costs.)"""

    __slots__ = ("_guard", "_inner")

    def __init__(self, inner: asyncio.BaseProtocol, guard: ConnectionGuard) -> None:
        self._inner = inner
        self._guard = guard

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)
        self._guard._made(self._inner, cast(asyncio.Transport, transport))  # TCP: a Transport

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)  # type: ignore[attr-defined]

    def eof_received(self) -> bool | None:
        result: bool | None = self._inner.eof_received()  # type: ignore[attr-defined]
        return result

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._guard._forget(self._inner)
        self._inner.connection_lost(exc)


class GuardedTCPSite(web.BaseSite):
    """A TCP site whose connections go through a :class:`ConnectionGuard`."""

    __slots__ = ("_guard", "_host", "_port")

    def __init__(self, runner: web.BaseRunner, host: str, port: int, guard: ConnectionGuard):
        super().__init__(runner)
        self._host = host
        self._port = port
        self._guard = guard

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self.port}"

    @property
    def port(self) -> int:
        """The bound port (the real one when started with port 0)."""
        sockets = getattr(self._server, "sockets", None)
        if sockets:
            port: int = sockets[0].getsockname()[1]
            return port
        return self._port

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._guard, self._host, self._port, reuse_address=True
        )
