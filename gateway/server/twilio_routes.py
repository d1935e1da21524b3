"""Twilio HTTP glue: the voice webhook, stream status callbacks and the media WebSocket.

- ``POST /twilio/voice`` answers TwiML ``<Connect><Stream>`` (docs/protocols/twilio.md §1.2)
  or, at capacity / while draining, a polite refusal (never a 5xx).
- ``POST /twilio/stream-status`` logs and counts Twilio's stream callbacks.
- ``GET /twilio/media`` is the bidirectional Media Stream, run by the shared driver.

Every request is checked against ``X-Twilio-Signature`` (§1.5). With no auth token configured,
Twilio traffic is refused unless ``TWILIO_ALLOW_UNSIGNED=true`` (development only).
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from multidict import MultiDictProxy

from gateway.calls import CallSession, Conversation
from gateway.config import BusyMode, Settings
from gateway.server import keys
from gateway.telephony import twiml
from gateway.telephony.driver import DriverConfig, drive_websocket
from gateway.telephony.events import Transport
from gateway.telephony.twilio import TwilioMediaProtocol
from gateway.telephony.twilio_rest import TwilioRestError, hang_up, update_call
from gateway.telephony.twilio_signature import validate_signature

log = logging.getLogger(__name__)

FormValue = str | bytes | bytearray | web.FileField

VOICE_PATH = "/twilio/voice"
STATUS_PATH = "/twilio/stream-status"
MEDIA_PATH = "/twilio/media"
SIGNATURE_HEADER = "X-Twilio-Signature"
# A webhook body is a few hundred bytes sent at once; one still incomplete after this is not
# Twilio (slowloris, issue 10 item 10).
BODY_TIMEOUT_SECONDS = 10.0
# Twilio's documented StreamEvent values; anything else is counted as "other" (bounded label).
_STREAM_EVENTS = frozenset({"stream-started", "stream-stopped", "stream-error"})


class _NoBody(Exception):
    """The request body never completed (slow or vanished client); already logged."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__()
        self.response = web.Response(status=status, text=text)
        self.response.force_close()  # the rest of the body is not worth waiting for


async def _read_form(request: web.Request) -> dict[str, list[str]]:
    """The form body, read within ``BODY_TIMEOUT_SECONDS``; :class:`_NoBody` otherwise.

    A body that trickles (slowloris) or stops when the client goes away must neither hold
    the handler forever nor end in aiohttp's ERROR traceback: one rate-limited line instead.
    """
    throttled = request.app[keys.CALLS].throttled_log
    try:
        async with asyncio.timeout(BODY_TIMEOUT_SECONDS):
            return _form_params(await request.post())
    except TimeoutError:
        throttled.warning(
            "twilio_body_timeout",
            "Twilio %s from %s: body not complete within %g s",
            request.path,
            request.remote,
            BODY_TIMEOUT_SECONDS,
        )
        raise _NoBody(408, "request body timeout\n") from None
    except ConnectionError as exc:
        throttled.warning(
            "twilio_body_lost",
            "Twilio %s from %s: client went away before the body was complete (%s)",
            request.path,
            request.remote,
            exc,
        )
        raise _NoBody(400, "incomplete body\n") from None


def _form_params(form: MultiDictProxy[FormValue]) -> dict[str, list[str]]:
    params: dict[str, list[str]] = {}
    for name, value in form.items():
        if isinstance(value, str):
            params.setdefault(name, []).append(value)
    return params


def _is_signed(request: web.Request, url: str, params: dict[str, list[str]], endpoint: str) -> bool:
    """Check X-Twilio-Signature; count and log a refusal."""
    settings = request.app[keys.SETTINGS]
    if settings.twilio_auth_token:
        signature = request.headers.get(SIGNATURE_HEADER, "")
        if validate_signature(settings.twilio_auth_token, url, params, signature):
            return True
        why = "missing" if not signature else "invalid"
    elif settings.twilio_allow_unsigned:
        return True
    else:
        why = "no TWILIO_AUTH_TOKEN configured"
    request.app[keys.METRICS].signature_failures.labels(endpoint).inc()
    # Anyone can send these at will: rate-limited per endpoint (the counter has every one).
    request.app[keys.CALLS].throttled_log.warning(
        "twilio_signature:" + endpoint, "refused Twilio %s request: signature %s", endpoint, why
    )
    return False


def _busy_twiml(settings: Settings) -> str:
    if settings.twilio_busy_mode is BusyMode.REJECT:
        return twiml.reject_busy()
    return twiml.busy_say(settings.twilio_busy_message)


async def voice(request: web.Request) -> web.Response:
    """Answer an incoming call with a bidirectional Media Stream (or a polite refusal)."""
    settings = request.app[keys.SETTINGS]
    try:
        params = await _read_form(request)
    except _NoBody as no_body:
        return no_body.response
    if not _is_signed(request, settings.public_base + request.path_qs, params, "voice"):
        return web.Response(status=403, text="invalid Twilio signature\n")
    registry = request.app[keys.CALLS]
    refusal = registry.refusal_reason()
    if refusal is not None:
        # At capacity, draining, or the speech backend down (circuit open): busy TwiML, so
        # the caller hears "busy" instead of dead air, never a 5xx (Twilio would play its own
        # error message).
        registry.refuse(Transport.TWILIO, refusal, params.get("CallSid", ["?"])[0])
        return web.Response(text=_busy_twiml(settings), content_type="text/xml")
    # Twilio rejects query strings on the stream URL (error 31920): values go in <Parameter>s.
    parameters: list[tuple[str, str]] = [
        (name, params[name][0]) for name in ("From", "To", "CallSid") if name in params
    ]
    parameters.extend(settings.twilio_stream_parameters)
    body = twiml.connect_stream(
        settings.public_ws_base + MEDIA_PATH,
        parameters,
        status_callback=settings.public_base + STATUS_PATH,
    )
    return web.Response(text=body, content_type="text/xml")


async def stream_status(request: web.Request) -> web.Response:
    """Log and count a stream status callback (StreamEvent: stream-started/stopped/error)."""
    settings = request.app[keys.SETTINGS]
    try:
        params = await _read_form(request)
    except _NoBody as no_body:
        return no_body.response
    if not _is_signed(request, settings.public_base + request.path_qs, params, "stream_status"):
        return web.Response(status=403, text="invalid Twilio signature\n")
    event = params.get("StreamEvent", [""])[0]
    request.app[keys.METRICS].stream_callbacks.labels(
        event if event in _STREAM_EVENTS else "other"
    ).inc()
    log.info(
        "stream status: %s call=%s stream=%s error=%s",
        event or "?",
        params.get("CallSid", ["?"])[0],
        params.get("StreamSid", ["?"])[0],
        params.get("StreamError", [""])[0],
    )
    return web.Response(status=204)


async def media(request: web.Request) -> web.StreamResponse:
    """The Media Stream WebSocket: signature-checked upgrade, then the shared driver."""
    app = request.app
    settings = app[keys.SETTINGS]
    # The handshake is a GET with no body and no query: sign the wss:// URL, empty params (§1.5).
    if not _is_signed(request, settings.public_ws_base + request.path, {}, "media"):
        return web.Response(status=403, text="invalid Twilio signature\n")
    ws = web.WebSocketResponse(max_msg_size=settings.max_message_bytes, compress=False)
    await ws.prepare(request)
    protocol = TwilioMediaProtocol(
        max_message_bytes=settings.max_message_bytes, chunk_ms=settings.twilio_chunk_ms
    )

    conversations = app[keys.CONVERSATIONS]

    def make_conversation(session: CallSession) -> Conversation:
        if settings.twilio_account_sid and settings.twilio_auth_token:

            async def transfer(target: str) -> bool:
                return await _transfer(app, session.call_id, target)

            session.transfer = transfer
        return conversations(session)

    async def on_call_end(session: CallSession) -> None:
        # Closing the socket already ends the call (no TwiML after </Connect>); the REST update
        # also ends it when Twilio would otherwise keep the caller on the line.
        if session.hangup_reason is None or not settings.twilio_account_sid:
            return
        try:
            done = await hang_up(
                app[keys.HTTP_CLIENT],
                base_url=settings.twilio_api_base_url,
                account_sid=settings.twilio_account_sid,
                auth_token=settings.twilio_auth_token,
                call_sid=session.call_id,
            )
            log.info("REST hang-up: %s", "done" if done else "call had already ended")
        except TwilioRestError as exc:
            app[keys.METRICS].carrier_api_errors.labels(Transport.TWILIO.value, "hangup").inc()
            log.warning("%s", exc)

    await drive_websocket(
        ws,
        protocol,
        config=DriverConfig(Transport.TWILIO, settings.max_call_seconds),
        registry=app[keys.CALLS],
        metrics=app[keys.METRICS],
        make_conversation=make_conversation,
        on_call_end=on_call_end,
    )
    return ws


async def _transfer(app: web.Application, call_sid: str, target: str) -> bool:
    """Redirect the live call to ``<Dial>target</Dial>`` over REST (twilio.md §1.6).

    Twilio then leaves ``<Connect><Stream>``, which stops our media stream. False (logged,
    counted) when the target is not dialable or the REST call fails.
    """
    settings = app[keys.SETTINGS]
    try:
        body = twiml.dial(target)
        return await update_call(
            app[keys.HTTP_CLIENT],
            base_url=settings.twilio_api_base_url,
            account_sid=settings.twilio_account_sid,
            auth_token=settings.twilio_auth_token,
            call_sid=call_sid,
            form={"Twiml": body},
        )
    except (ValueError, TwilioRestError) as exc:
        app[keys.METRICS].carrier_api_errors.labels(Transport.TWILIO.value, "transfer").inc()
        log.warning("transfer failed: %s", exc)
        return False


def add_routes(app: web.Application) -> None:
    app.router.add_post(VOICE_PATH, voice)
    app.router.add_post(STATUS_PATH, stream_status)
    app.router.add_get(MEDIA_PATH, media)
