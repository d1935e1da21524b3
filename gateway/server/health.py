"""Operational endpoints: ``/healthz`` (alive), ``/readyz`` (ready for calls), ``/metrics``.

What ``/readyz`` says is also what admission does: while the speech probe is not ready (the
Hamsa circuit is open) every transport refuses new calls with reason ``speech_unavailable``
(Twilio busy TwiML, chan_websocket HTTP 503, AudioSocket hang-up packet), rather than
answering a caller into dead air.
"""

from __future__ import annotations

from aiohttp import web

from gateway.metrics import CONTENT_TYPE
from gateway.server import keys


async def healthz(request: web.Request) -> web.Response:
    """200 while the process runs: liveness only, no dependency checks."""
    return web.json_response({"status": "alive"})


async def readyz(request: web.Request) -> web.Response:
    """200 when ready for new calls; 503 with the reasons while draining or a backend is down."""
    app = request.app
    ready, body = app[keys.READINESS].report()
    registry = app[keys.CALLS]
    body["calls"] = {"active": registry.count, "max": registry.max_calls}
    return web.json_response(body, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition format."""
    body = request.app[keys.METRICS].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


SPEECH_UNAVAILABLE = "speech_unavailable"  # refusal reason (a gateway_calls_total label)


async def _gate_calls_on_speech(app: web.Application) -> None:
    # on_startup runs after every cleanup_ctx setup, so the speech probe is registered by now.
    readiness = app[keys.READINESS]
    app[keys.CALLS].add_gate(SPEECH_UNAVAILABLE, lambda: not readiness.probe_ready("speech"))


def add_routes(app: web.Application) -> None:
    app.on_startup.append(_gate_calls_on_speech)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
