"""Asterisk chan_websocket glue: the media WebSocket Asterisk dials (``ASTERISK_WS_PATH``).

Asterisk is the WebSocket *client* (``websocket_client.conf`` + ``Dial(WebSocket/<conn>/...)``,
docs/protocols/asterisk.md §2.3). The upgrade is accepted only with the HTTP Basic
credentials ``ASTERISK_WS_USERNAME`` / ``ASTERISK_WS_PASSWORD``; with no credentials
configured every upgrade gets 401 (secure by default) and start-up logs that chan_websocket
is disabled. Refusals are counted in ``gateway_auth_failures_total{transport="asterisk_ws"}``.

Handshake rules from ``res/res_http_websocket.c`` (§2.3, §6.3): the ``media`` subprotocol is
echoed when offered (omitting it also works, §7), **no** ``Sec-WebSocket-Extensions`` ever
(Asterisk fails the handshake on any, so ``compress=False`` even if a client offers
permessage-deflate), and **no** pings (20.16-20.17, 22.6-22.7 and 23.0-23.1 hang up on a
PING or PONG, so ``heartbeat=None``; answering a ping with a pong stays on, Asterisk never
sends one). ``v()`` dial-string parameters arrive as the upgrade's query string and become
call metadata. The call itself runs in the shared driver, exactly like a Twilio call.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import time
from collections.abc import Mapping

from aiohttp import hdrs, web

from gateway.config import Settings
from gateway.server import keys
from gateway.telephony.asterisk_ws import AsteriskWsProtocol
from gateway.telephony.driver import DriverConfig, drive_websocket
from gateway.telephony.events import Transport

log = logging.getLogger(__name__)

SUBPROTOCOL = "media"  # the only one res_http_websocket registers for chan_websocket
_UNAUTHORIZED_HEADERS: Mapping[str, str] = {"WWW-Authenticate": 'Basic realm="asterisk"'}

# Refusals (at capacity, draining, speech backend down) answer the upgrade with HTTP 503.
RETRY_AFTER_SECONDS = "5"

def credentials_ok(settings: Settings, authorization: str | None) -> bool:
    """True iff ``authorization`` is ``Basic`` with exactly the configured user and password.

    No credentials configured means no upgrade is ever accepted. Both parts are compared in
    constant time, and both comparisons always run, so timing tells nothing about which
    part was wrong.
    """
    if not settings.asterisk_ws_username or not authorization:
        return False
    scheme, _, encoded = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    user, sep, password = decoded.partition(b":")
    user_ok = hmac.compare_digest(user, settings.asterisk_ws_username.encode())
    password_ok = hmac.compare_digest(password, settings.asterisk_ws_password.encode())
    return bool(sep) & user_ok & password_ok


async def media(request: web.Request) -> web.StreamResponse:
    """The chan_websocket media socket: Basic-auth upgrade, then the shared driver."""
    app = request.app
    settings = app[keys.SETTINGS]
    if not credentials_ok(settings, request.headers.get(hdrs.AUTHORIZATION)):
        app[keys.METRICS].auth_failures.labels(Transport.ASTERISK_WS.value).inc()
        why = "not configured" if not settings.asterisk_ws_username else "wrong or missing"
        app[keys.CALLS].throttled_log.warning(
            "asterisk_ws_auth",
            "refused chan_websocket upgrade from %s: credentials %s",
            request.remote,
            why,
        )
        return web.Response(status=401, text="unauthorized\n", headers=_UNAUTHORIZED_HEADERS)
    ws = web.WebSocketResponse(
    registry = app[keys.CALLS]
    refusal = registry.refusal_reason()
    if refusal is not None:
        # Refuse *before* the upgrade. An accepted upgrade is an answered channel: Asterisk
        # ignores WebSocket close codes, so Dial() would report ANSWER and the caller hear a
        # hang-up 3 ms later (seen on 23.4.1). A non-101 reply makes the websocket client
        # fail, Dial() ends with DIALSTATUS=CHANUNAVAIL and the dialplan can fail over.
        registry.refuse(Transport.ASTERISK_WS, refusal, f"(upgrade from {request.remote})")
        return web.Response(
            status=503, text=f"refused: {refusal}\n", headers={"Retry-After": RETRY_AFTER_SECONDS}
        )
        protocols=(SUBPROTOCOL,),
        compress=False,  # never negotiate extensions: Asterisk fails the handshake on any
        heartbeat=None,  # never ping: older releases hang up on a PING
        autoping=True,
        max_msg_size=settings.max_message_bytes,
    )
    await ws.prepare(request)
    # v(a=1,b=2) on the dial string -> ?a=1&b=2 (already URI-decoded by aiohttp); the
    # first value of a repeated name wins.
    query: dict[str, str] = {}
    for name, value in request.query.items():
        query.setdefault(name, value)
    protocol = AsteriskWsProtocol(
        query=query,
        max_message_bytes=settings.max_message_bytes,
        forward_variables=settings.asterisk_forward_variables,
        clock=time.monotonic,  # byte-clock playout model for plain-text control
    )
    await drive_websocket(
        ws,
        protocol,
        config=DriverConfig(Transport.ASTERISK_WS, settings.max_call_seconds),
        registry=app[keys.CALLS],
        metrics=app[keys.METRICS],
        make_conversation=app[keys.CONVERSATIONS],
    )
    return ws


async def _announce(app: web.Application) -> None:
    settings = app[keys.SETTINGS]
    if not settings.asterisk_ws_username:
        log.warning(
            "ASTERISK_WS_USERNAME/ASTERISK_WS_PASSWORD are not set: chan_websocket (%s) is "
            "disabled and refuses every connection (401) until credentials are set",
            settings.asterisk_ws_path,
        )


def add_routes(app: web.Application) -> None:
    app.router.add_get(app[keys.SETTINGS].asterisk_ws_path, media)
    app.on_startup.append(_announce)
