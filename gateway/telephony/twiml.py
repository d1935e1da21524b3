"""TwiML builders: pure functions returning complete XML documents for Twilio.

Every builder returns ``<?xml version="1.0" encoding="UTF-8"?>`` followed by one
``<Response>``, serve it as ``Content-Type: text/xml`` (docs/protocols/twilio.md
§1.2). Elements are built with :mod:`xml.etree.ElementTree`, which escapes ``&``, ``<``,
``>`` and ``"`` in text and attributes; text stays Unicode (Arabic is written as is, the
document being UTF-8). Characters XML 1.0 cannot carry at all (most C0 controls, lone
surrogates, U+FFFE/U+FFFF) raise ValueError instead of producing a document Twilio would
refuse.

Verbs: https://www.twilio.com/docs/voice/twiml (``Connect``/``Stream``/``Parameter``,
``Say``, ``Hangup``, ``Reject``, ``Dial``/``Number``/``Sip``).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from typing import Final
from urllib.parse import urlsplit

XML_DECLARATION: Final = '<?xml version="1.0" encoding="UTF-8"?>'

# XML 1.0 §2.2 Char excludes these; ElementTree would write them unescaped.
_XML_ILLEGAL: Final = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
# An E.164 number (up to 15 digits) with optional "+", for <Dial><Number>.
_PHONE_NUMBER: Final = re.compile(r"\+?[0-9]{1,15}")


def connect_stream(
    stream_url: str,
    parameters: Sequence[tuple[str, str]],
    status_callback: str | None = None,
) -> str:
    """``<Connect><Stream url=...>`` with one ``<Parameter>`` per ``(name, value)``.

    The parameters arrive in the ``start`` message's ``customParameters``. Raises
    ValueError for a stream URL that is not ``ws://``/``wss://`` with a host (Twilio
    connects only to ``wss://``; ``ws://`` is allowed for local simulators), that has a query
    string (Twilio error 31920: ``<Stream url>`` does not support query strings, pass
    values as parameters) or a fragment (RFC 6455 §3: not allowed in WebSocket URIs); for a
    status callback that is not an ``http(s)://`` URL; and for an empty parameter name.
    No ``track`` attribute: ``<Connect><Stream>`` streams the inbound track (§1.2).
    """
    _check_url(stream_url, ("ws", "wss"), "stream URL")
    if "?" in stream_url:
        raise ValueError(
            f"stream URL {stream_url!r} has a query string: Twilio refuses it (error 31920); "
            "pass values as <Parameter>s"
        )
    if "#" in stream_url:
        raise ValueError(f"stream URL {stream_url!r} has a fragment (RFC 6455 §3)")
    response = ET.Element("Response")
    stream = ET.SubElement(ET.SubElement(response, "Connect"), "Stream", url=stream_url)
    if status_callback is not None:
        _check_url(status_callback, ("http", "https"), "status callback")
        stream.set("statusCallback", status_callback)
    for name, value in parameters:
        if not name:
            raise ValueError("a <Parameter> needs a non-empty name")
        ET.SubElement(stream, "Parameter", name=name, value=value)
    return _render(response)


def busy_say(message: str, *, language: str | None = None, voice: str | None = None) -> str:
    """``<Say>message</Say><Hangup/>``: tell the caller we are busy, then hang up.

    ``language`` (e.g. ``ar-XA``) and ``voice`` become ``<Say>`` attributes when given.
    """
    response = ET.Element("Response")
    say = ET.SubElement(response, "Say")
    if voice is not None:
        say.set("voice", voice)
    if language is not None:
        say.set("language", language)
    say.text = message
    ET.SubElement(response, "Hangup")
    return _render(response)


def reject_busy() -> str:
    """``<Reject reason="busy"/>``: refuse the call with a busy signal, unanswered (unbilled)."""
    response = ET.Element("Response")
    ET.SubElement(response, "Reject", reason="busy")
    return _render(response)


def dial(target: str, caller_id: str | None = None) -> str:
    """``<Dial>`` for a transfer: ``<Sip>`` for a ``sip:``/``sips:`` URI, else ``<Number>``.

    A number is E.164 digits with an optional leading ``+`` (spaces, dots, dashes and
    parentheses are removed first). Raises ValueError for anything else, and for an empty
    ``caller_id``.
    """
    response = ET.Element("Response")
    dial_element = ET.SubElement(response, "Dial")
    if caller_id is not None:
        if not caller_id:
            raise ValueError("caller_id must be non-empty when given")
        dial_element.set("callerId", caller_id)
    if target[:4].lower() == "sip:" or target[:5].lower() == "sips:":
        if len(target.partition(":")[2]) == 0:
            raise ValueError(f"SIP URI {target!r} has no address")
        ET.SubElement(dial_element, "Sip").text = target
    else:
        number = re.sub(r"[\s.()\-]", "", target)
        if not _PHONE_NUMBER.fullmatch(number):
            raise ValueError(f"dial target {target!r} is neither a phone number nor a sip: URI")
        ET.SubElement(dial_element, "Number").text = number
    return _render(response)


def hangup() -> str:
    """``<Hangup/>``: end the call."""
    response = ET.Element("Response")
    ET.SubElement(response, "Hangup")
    return _render(response)


def _check_url(url: str, schemes: tuple[str, ...], what: str) -> None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError as exc:
        raise ValueError(f"{what} {url!r} is not a valid URL: {exc}") from None
    if parts.scheme.lower() not in schemes or not parts.hostname:
        raise ValueError(f"{what} {url!r} must be a {'/'.join(schemes)} URL with a host")


def _render(response: ET.Element) -> str:
    for element in response.iter():
        for value in (element.text or "", *element.attrib.values()):
            match = _XML_ILLEGAL.search(value)
            if match is not None:
                raise ValueError(
                    f"character U+{ord(match.group()):04X} cannot appear in XML ({value[:40]!r})"
                )
    return XML_DECLARATION + ET.tostring(response, encoding="unicode")
