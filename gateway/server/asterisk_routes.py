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
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from aiohttp import hdrs, web

from gateway.calls import CallSession, Conversation
from gateway.config import Settings
from gateway.server import keys
from gateway.telephony.asterisk_ws import AsteriskWsProtocol
from gateway.telephony.driver import (
    CallEndHook,
    ConversationFactory,
    DriverConfig,
    drive_websocket,
)
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
    ws = web.WebSocketResponse(
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
    make_conversation, on_call_end = with_call_control(app)

    await drive_websocket(
        ws,
        protocol,
        config=DriverConfig(Transport.ASTERISK_WS, settings.max_call_seconds),
        registry=app[keys.CALLS],
        metrics=app[keys.METRICS],
        make_conversation=make_conversation,
        on_call_end=on_call_end,
    )
    return ws


# ---------------------------------------------------------------- call outcome for the dialplan

# The dialplan continues after Dial(...,g) once the gateway's leg ends and asks how it ended:
#   GET /asterisk/calls/<id>            JSON {"call_id", "state", "outcome", "transfer"}
#   GET /asterisk/calls/<id>/outcome    text/plain, e.g. "transferred" (for CURL())
#   GET /asterisk/calls/<id>/transfer   text/plain: the agent's transfer target, or empty
# <id> is the gateway's call id (the WebSocket channel's uniqueid, or the AudioSocket UUID the
# dialplan chose) or the caller channel's ${UNIQUEID} passed as v(callid=...), the one the
# dialplan knows. Same Basic credentials (docs/protocols/asterisk.md §2.5).
CALLS_PATH = "/asterisk/calls/{call_id}"
CALL_ID_PARAM = "callid"
# The target is used as an extension name (Goto(hamsa-transfer,<target>,1)): no commas,
# parentheses, slashes or ${...} that could smuggle dialplan options or applications.
TRANSFER_TARGET = re.compile(r"[A-Za-z0-9+*#_.-]{1,80}")
OUTCOME_TTL_SECONDS = 600.0
MAX_OUTCOMES = 10_000


@dataclass(slots=True)
class CallControl:
    """What the dialplan may ask about one Asterisk call (chan_websocket or AudioSocket)."""

    call_id: str
    session: CallSession | None  # while live; its outcome is read at request time
    outcome: str = ""
    transfer_target: str = ""
    ended_at: float = 0.0

    def as_dict(self) -> dict[str, str]:
        live = self.session is not None
        return {
            "call_id": self.call_id,
            "state": "live" if live else "ended",
            "outcome": self.session.outcome if self.session is not None else self.outcome,
            "transfer": self.transfer_target,
        }


class CallOutcomes:
    """Live and recently ended Asterisk calls by call id (bounded, expiring)."""

    def __init__(
        self,
        *,
        ttl: float = OUTCOME_TTL_SECONDS,
        max_entries: int = MAX_OUTCOMES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, CallControl] = OrderedDict()

    def open(self, session: CallSession) -> CallControl:
        entry = CallControl(session.call_id, session)
        for key in _lookup_keys(session):
            self._entries[key] = entry
            self._entries.move_to_end(key)
        self._expire()
        return entry

    def close(self, session: CallSession) -> None:
        for key in _lookup_keys(session):
            entry = self._entries.get(key)
            if entry is not None and entry.session is session:
                entry.outcome = session.outcome
                entry.session = None
                entry.ended_at = self._clock()

    def get(self, key: str) -> CallControl | None:
        self._expire()
        return self._entries.get(key)

    def _expire(self) -> None:
        entries, limit = self._entries, self._clock() - self._ttl
        while entries:
            first = next(iter(entries.values()))
            ended_long_ago = first.session is None and first.ended_at < limit
            if len(entries) <= self._max and not ended_long_ago:
                break
            entries.popitem(last=False)


def _lookup_keys(session: CallSession) -> list[str]:
    keys_ = [session.call_id]
    alias = session.metadata.get(CALL_ID_PARAM, "")
    if alias and alias != session.call_id:
        keys_.append(alias)
    return keys_


CALL_OUTCOMES = web.AppKey("asterisk_call_outcomes", CallOutcomes)


def with_call_control(app: web.Application) -> tuple[ConversationFactory, CallEndHook]:
    """The app's conversation factory, with each Asterisk call in the outcome store.

    Used by both Asterisk transports (chan_websocket here, AudioSocket in
    :mod:`gateway.server.app`): neither has a command that sets a channel variable, so an
    agent transfer stores its target here, ends the gateway's leg, and the dialplan that
    continues after ``Dial(...,g)`` or ``AudioSocket()`` fetches it from ``CALLS_PATH``.
    """
    outcomes = app[CALL_OUTCOMES]
    conversations = app[keys.CONVERSATIONS]

    def make_conversation(session: CallSession) -> Conversation:
        entry = outcomes.open(session)

        async def transfer(target: str) -> bool:
            # docs/protocols/asterisk.md §2.5: no chan_websocket command sets a variable.
            if not TRANSFER_TARGET.fullmatch(target):
                log.warning("transfer target %r is not a dialplan extension name", target[:80])
                return False
            entry.transfer_target = target
            session.hangup("agent_transfer", outcome="transferred")
            return True

        session.transfer = transfer
        return conversations(session)

    async def on_call_end(session: CallSession) -> None:
        outcomes.close(session)

    return make_conversation, on_call_end


async def call_info(request: web.Request) -> web.StreamResponse:
    """How a chan_websocket call ended, for the dialplan after ``Dial(...,g)`` (Basic auth)."""
    app = request.app
    settings = app[keys.SETTINGS]
    if not credentials_ok(settings, request.headers.get(hdrs.AUTHORIZATION)):
        app[keys.METRICS].auth_failures.labels(Transport.ASTERISK_WS.value).inc()
        return web.Response(status=401, text="unauthorized\n", headers=_UNAUTHORIZED_HEADERS)
    entry = app[CALL_OUTCOMES].get(request.match_info["call_id"])
    if entry is None:
        return web.Response(status=404, text="unknown call\n")
    info = entry.as_dict()
    field = request.match_info.get("field")
    if field is None:
        return web.json_response(info)
    # CURL() returns the body verbatim into a variable: no trailing newline.
    return web.Response(text=info["outcome"] if field == "outcome" else info["transfer"])


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
    app[CALL_OUTCOMES] = CallOutcomes()
    app.router.add_get(CALLS_PATH, call_info)
    app.router.add_get(CALLS_PATH + "/{field:outcome|transfer}", call_info)
    app.on_startup.append(_announce)
