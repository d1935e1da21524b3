"""X-Twilio-Signature: compute and validate Twilio's request signature.

Algorithm (docs/protocols/twilio.md §1.5, VERIFIED from twilio-python
``twilio/request_validator.py``): take the full URL Twilio requested, including its query
string; append ``name + value`` for every POST parameter, names sorted and each repeated
name's values sorted, with no separators; sign the UTF-8 bytes with HMAC-SHA1 keyed by the
auth token; base64 the digest.

Two uses in the gateway:

- voice webhooks (form POST): ``params`` are the form fields;
- the Media Streams WebSocket upgrade (a GET with no body, and ``<Stream url>`` may carry no
  query string): the exact ``wss://`` URL with empty ``params`` (GUESSED strong, §1.5).

Pure functions: no I/O, no clock, no globals.
"""

from __future__ import annotations

import base64
import hmac
from collections.abc import Mapping, Sequence
from typing import Final, Literal
from urllib.parse import urlsplit

# Default port per scheme, for the "with the port added" URL variant. twilio-python's
# add_port uses 443 only for https and 80 for everything else, so it would wrongly try
# wss://host:80/...; a wss:// URL's default port is 443 (RFC 6455 §3).
DEFAULT_PORTS: Final[Mapping[str, int]] = {"https": 443, "wss": 443, "http": 80, "ws": 80}

# The Auth Token signature is HMAC-SHA1. HMAC-SHA256 is used with a SharedKey when
# X-Twilio-Webhooks-Signature-Settings says algorithm=HMAC_SHA256 (§1.5, optional variant).
SignatureAlgorithm = Literal["sha1", "sha256"]

Params = Mapping[str, str | Sequence[str]]


def compute_signature(
    auth_token: str,
    url: str,
    params: Params,
    *,
    algorithm: SignatureAlgorithm = "sha1",
) -> str:
    """The base64 HMAC signature Twilio sends for ``url`` with form ``params``.

    ``params`` maps each name to one value or a sequence of values (a repeated field). A
    multidict (aiohttp's ``MultiDictProxy``) is read with ``getall``, so repeated fields are
    never collapsed to their first value. Like twilio-python, identical repeated values are
    counted once.
    """
    return _sign(auth_token, url + _params_string(params, dedupe=True), algorithm)


def validate_signature(
    auth_token: str,
    url: str,
    params: Params,
    signature: str | None,
    *,
    algorithm: SignatureAlgorithm = "sha1",
) -> bool:
    """True when ``signature`` is Twilio's signature of ``url`` and ``params``.

    The URL is tried as given, with the scheme's default port added (443 for https and wss,
    80 for http and ws) when it has none, and with its port removed when it has one, as
    twilio-python does (Twilio's own signing is inconsistent about ports). Every comparison
    is constant-time. An empty or missing signature, or an empty auth token (anyone could
    sign with it), is always False.
    """
    if not signature or not auth_token:
        return False
    # Real signatures are ASCII base64; anything else simply fails to match.
    received = signature.encode("utf-8", "replace")
    suffixes = [_params_string(params, dedupe=True)]
    # GUESSED: twilio-python counts identical repeated values once; whether Twilio's signer
    # does is not documented. When duplicates exist, accept either reading.
    with_duplicates = _params_string(params, dedupe=False)
    if with_duplicates != suffixes[0]:
        suffixes.append(with_duplicates)
    for candidate_url in url_variants(url):
        for suffix in suffixes:
            expected = _sign(auth_token, candidate_url + suffix, algorithm).encode("ascii")
            if hmac.compare_digest(expected, received):
                return True
    return False


def url_variants(url: str) -> list[str]:
    """``url`` as given, then with the default port added or with its port removed.

    The rest of the URL is kept byte for byte (no re-quoting, no dropped empty query): the
    signature covers the exact string Twilio requested.
    """
    variants = [url]
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # a malformed port or IPv6 literal: only the URL as given
        return variants
    scheme_end = url.find("//")
    if scheme_end < 0 or not parts.netloc:
        return variants
    start = scheme_end + 2
    end = start + len(parts.netloc)
    netloc = url[start:end]
    if netloc != parts.netloc:  # urlsplit normalised something; do not guess
        return variants
    userinfo, at, hostport = netloc.rpartition("@")
    if port is None:
        default = DEFAULT_PORTS.get(parts.scheme.lower())
        if default is not None and not hostport.endswith(":"):
            variants.append(f"{url[:start]}{userinfo}{at}{hostport}:{default}{url[end:]}")
    else:
        host = hostport[: hostport.rfind(":")]
        variants.append(f"{url[:start]}{userinfo}{at}{host}{url[end:]}")
    return variants


def _params_string(params: Params, *, dedupe: bool) -> str:
    """``name + value`` for every value, names sorted, each name's values sorted."""
    getall = getattr(params, "getall", None)
    pieces: list[str] = []
    for name in sorted(set(params)):
        raw = getall(name) if getall is not None else params[name]
        values = [raw] if isinstance(raw, str) else [str(v) for v in raw]
        for value in sorted(set(values) if dedupe else values):
            pieces.append(name + value)
    return "".join(pieces)


def _sign(auth_token: str, message: str, algorithm: SignatureAlgorithm) -> str:
    # surrogatepass: a lone surrogate (undecodable input upstream) must not raise; such a
    # string cannot be what Twilio signed, so it simply fails to match.
    key = auth_token.encode("utf-8", "surrogatepass")
    digest = hmac.new(key, message.encode("utf-8", "surrogatepass"), algorithm).digest()
    return base64.b64encode(digest).decode("ascii")
