"""Browser softphone glue: the page (``GET /phone``) and its media socket (``/browser/media``).

Off unless ``BROWSER_PHONE=true``: then every route here answers 404, as if it did not exist.
When on:

* ``GET /phone`` serves ``static/phone.html`` (no build step, no CDN; the files ship in the
  package) with a fresh call token in a ``<meta>`` tag; ``GET /phone/{phone.js,
  phone-worklet.js}`` its scripts. ``POST /phone/token`` issues another token (a second call
  from the same page, or an expired one); it answers 503 with the reason while the gateway is
  draining or full, so the page can say so before dialling.
* ``GET /browser/media?token=...`` upgrades only when (1) the ``Origin`` header is the
  gateway's own (its host as the browser addressed it, or ``PUBLIC_URL``) or one of
  ``BROWSER_ALLOWED_ORIGINS``: no cross-site page can use a visitor's browser to call in;
  (2) the token is valid (HMAC-SHA256, ``BROWSER_TOKEN_TTL`` seconds, unused: each token
  opens one call). Refusals are 403 before any upgrade, counted in
  ``gateway_auth_failures_total{transport="browser"}`` and logged once per reason.
* The call then runs in the shared driver exactly like a carrier call (same ``MAX_CALLS``,
  drain refusals with close code 1013 and the reason, ``MAX_MESSAGE_BYTES``,
  ``MAX_CALL_SECONDS``), with :class:`~gateway.telephony.browser.BrowserMediaProtocol` as its
  adapter. The call session's observer forwards what the voice agent hears and says
  (transcript, reply text, end of speech) to the page as JSON control messages.
"""

from __future__ import annotations

import html
import logging
import time
from importlib import resources
from urllib.parse import urlsplit

from aiohttp import hdrs, web

from gateway.calls import CallSession, Conversation
from gateway.server import keys
from gateway.telephony.browser import BrowserMediaProtocol, TokenBook, new_secret
from gateway.telephony.driver import DriverConfig, drive_websocket
from gateway.telephony.events import Transport

log = logging.getLogger(__name__)

PAGE_PATH = "/phone"
TOKEN_PATH = "/phone/token"
MEDIA_PATH = "/browser/media"
START_TIMEOUT = 10.0  # the page sends 'start' right after the socket opens
HEARTBEAT_SECONDS = 20.0  # browsers answer pings by themselves; finds dead tabs
TOKEN_PLACEHOLDER = "__CALL_TOKEN__"
TTL_PLACEHOLDER = "__CALL_TOKEN_TTL__"

_SCRIPTS = ("phone.js", "phone-worklet.js")
# Everything from our own origin, nothing inline, no framing. 'self' in connect-src covers
# same-origin ws:/wss: (CSP Level 3); the allowed list is added for pages served elsewhere.
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "media-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; "
        "form-action 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class _StaticFiles:
    """The page's files, read once at start-up from the installed package."""

    def __init__(self) -> None:
        root = resources.files("gateway.server").joinpath("static")
        self.page = root.joinpath("phone.html").read_text(encoding="utf-8")
        self.scripts = {name: root.joinpath(name).read_bytes() for name in _SCRIPTS}
        self.style = root.joinpath("phone.css").read_bytes()


_STATIC = web.AppKey("browser_static", _StaticFiles)
_REFUSALS_LOGGED: web.AppKey[set[str]] = web.AppKey("browser_refusals_logged")


def _enabled(request: web.Request) -> bool:
    return request.app[keys.SETTINGS].browser_phone


def _refuse(request: web.Request, status: int, reason: str) -> web.Response:
    """Count a refused softphone request; log the first one of each reason."""
    app = request.app
    app[keys.METRICS].auth_failures.labels(Transport.BROWSER.value).inc()
    seen = app[_REFUSALS_LOGGED]
    if reason not in seen:
        seen.add(reason)
        log.warning(
            "refused softphone request from %s: %s (further ones are only counted)",
            request.remote,
            reason,
        )
    return web.json_response({"error": reason}, status=status)


def origin_allowed(request: web.Request) -> bool:
    """True iff the request's ``Origin`` is the gateway's own or in BROWSER_ALLOWED_ORIGINS.

    "Own" means the origin's host:port is the ``Host`` the browser sent (any scheme: a
    TLS-terminating proxy turns https into http in front of us), or ``PUBLIC_URL``'s origin.
    A missing ``Origin`` is refused: browsers always send it on WebSocket upgrades and POSTs.
    """
    origin = request.headers.get(hdrs.ORIGIN, "").strip().lower()
    if not origin or origin == "null":
        return False
    settings = request.app[keys.SETTINGS]
    if origin in settings.browser_allowed_origins:
        return True
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False
    if parts.netloc == (request.host or "").lower():
        return True
    public = urlsplit(settings.public_base.lower())
    return (parts.scheme, parts.netloc) == (public.scheme, public.netloc)


def _issue(app: web.Application) -> str:
    _, token = app[keys.BROWSER_TOKENS].issue(now=time.time())
    return token


async def page(request: web.Request) -> web.StreamResponse:
    """``GET /phone``: the softphone page, with a fresh call token."""
    if not _enabled(request):
        raise web.HTTPNotFound()
    app = request.app
    ttl = str(app[keys.SETTINGS].browser_token_ttl)
    body = (
        app[_STATIC]
        .page.replace(TOKEN_PLACEHOLDER, html.escape(_issue(app), quote=True))
        .replace(TTL_PLACEHOLDER, ttl)
    )
    return web.Response(text=body, content_type="text/html", headers=_PAGE_HEADERS)


async def script(request: web.Request) -> web.StreamResponse:
    """``GET /phone/<file>``: the page's scripts and style."""
    if not _enabled(request):
        raise web.HTTPNotFound()
    name = request.match_info["name"]
    files = request.app[_STATIC]
    if name == "phone.css":
        return web.Response(body=files.style, content_type="text/css")
    data = files.scripts.get(name)
    if data is None:
        raise web.HTTPNotFound()
    return web.Response(
        body=data, content_type="text/javascript", headers={"X-Content-Type-Options": "nosniff"}
    )


async def token(request: web.Request) -> web.StreamResponse:
    """``POST /phone/token``: a new call token (same origin only); 503 when full or draining."""
    if not _enabled(request):
        raise web.HTTPNotFound()
    if not origin_allowed(request):
        return _refuse(request, 403, "bad_origin")
    app = request.app
    refused = app[keys.CALLS].refusal_reason()
    if refused is not None:
        return web.json_response({"error": refused}, status=503, headers={"Retry-After": "30"})
    return web.json_response(
        {"token": _issue(app), "expires_in": app[keys.SETTINGS].browser_token_ttl},
        headers={"Cache-Control": "no-store"},
    )


async def media(request: web.Request) -> web.StreamResponse:
    """``/browser/media``: origin and token checks, then the shared driver."""
    if not _enabled(request):
        raise web.HTTPNotFound()
    if not origin_allowed(request):
        return _refuse(request, 403, "bad_origin")
    app = request.app
    settings = app[keys.SETTINGS]
    call_id, reason = app[keys.BROWSER_TOKENS].consume(
        request.query.get("token", ""), now=time.time()
    )
    if call_id is None:
        return _refuse(request, 403, "token_" + reason)
    ws = web.WebSocketResponse(
        heartbeat=HEARTBEAT_SECONDS,
        compress=False,  # audio does not compress; deflate would cost CPU per frame
        max_msg_size=settings.max_message_bytes,
    )
    await ws.prepare(request)
    protocol = BrowserMediaProtocol(
        call_id, metadata={"origin": request.headers.get(hdrs.ORIGIN, "")}
    )
    factory = app[keys.CONVERSATIONS]

    def make_conversation(session: CallSession) -> Conversation:
        session.observer = protocol.notify  # transcript and reply text go to the page
        return factory(session)

    await drive_websocket(
        ws,
        protocol,
        config=DriverConfig(Transport.BROWSER, settings.max_call_seconds, START_TIMEOUT),
        registry=app[keys.CALLS],
        metrics=app[keys.METRICS],
        make_conversation=make_conversation,
    )
    return ws


async def _setup(app: web.Application) -> None:
    settings = app[keys.SETTINGS]
    secret = settings.browser_phone_secret.encode() or new_secret()
    app[keys.BROWSER_TOKENS] = TokenBook(secret, settings.browser_token_ttl)
    app[_STATIC] = _StaticFiles()
    log.info(
        "browser softphone on: open %s%s (media socket %s, tokens valid %d s)",
        settings.public_base,
        PAGE_PATH,
        MEDIA_PATH,
        settings.browser_token_ttl,
    )


def add_routes(app: web.Application) -> None:
    """Register the softphone routes; they answer 404 unless BROWSER_PHONE=true."""
    app[_REFUSALS_LOGGED] = set()
    app.router.add_get(PAGE_PATH, page)
    app.router.add_post(TOKEN_PATH, token)
    app.router.add_get(PAGE_PATH + "/{name}", script)
    app.router.add_get(MEDIA_PATH, media)
    if app[keys.SETTINGS].browser_phone:
        app.on_startup.append(_setup)
