"""TwiML builders: document shape (parsed back), escaping, refusals."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.telephony.twiml import (
    XML_DECLARATION,
    busy_say,
    connect_stream,
    dial,
    hangup,
    reject_busy,
)

TIMEOUT = 5.0  # seconds; the hypothesis deadline per example

MEDIA_URL = "wss://gw.example.com/twilio/media"
ARABIC = "جميع خطوطنا مشغولة، يرجى الاتصال لاحقاً"


def parse(document: str) -> ET.Element:
    assert document.startswith(XML_DECLARATION)
    root = ET.fromstring(document.encode("utf-8"))
    assert root.tag == "Response"
    return root


def test_connect_stream_shape() -> None:
    root = parse(
        connect_stream(
            MEDIA_URL,
            [("tenant", "abc123"), ("agentId", "agent-42")],
            status_callback="https://gw.example.com/twilio/stream-status",
        )
    )
    [connect] = root
    assert connect.tag == "Connect"
    [stream] = connect
    assert stream.tag == "Stream"
    assert stream.attrib == {
        "url": MEDIA_URL,
        "statusCallback": "https://gw.example.com/twilio/stream-status",
    }
    assert [(p.tag, p.attrib) for p in stream] == [
        ("Parameter", {"name": "tenant", "value": "abc123"}),
        ("Parameter", {"name": "agentId", "value": "agent-42"}),
    ]


def test_connect_stream_exact_text() -> None:
    assert connect_stream(MEDIA_URL, [("a", "1")]) == (
        '<?xml version="1.0" encoding="UTF-8"?><Response><Connect>'
        '<Stream url="wss://gw.example.com/twilio/media"><Parameter name="a" value="1" />'
        "</Stream></Connect></Response>"
    )


def test_connect_stream_without_parameters_or_callback() -> None:
    [connect] = parse(connect_stream("ws://127.0.0.1:8080/twilio/media", []))
    [stream] = connect
    assert stream.attrib == {"url": "ws://127.0.0.1:8080/twilio/media"}
    assert list(stream) == []


@pytest.mark.parametrize(
    "value",
    ["a&b", "a<b>c", 'say "hi"', "it's", ARABIC, "line\nbreak\ttab", "&amp; already"],
)
def test_parameter_values_escape_and_round_trip(value: str) -> None:
    document = connect_stream(MEDIA_URL, [("p", value)])
    [connect] = parse(document)
    [param] = connect[0]
    assert param.get("value") == value
    if value == ARABIC:
        assert ARABIC in document  # written as is (UTF-8), not as character references


def test_raw_special_characters_never_reach_the_document() -> None:
    document = connect_stream(MEDIA_URL, [("p", 'x"/><Hangup/><Parameter name="y')])
    assert "<Hangup" not in document
    [connect] = parse(document)
    assert [p.tag for p in connect[0]] == ["Parameter"]


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("wss://gw.example.com/twilio/media?tenant=1", "31920"),
        ("wss://gw.example.com/twilio/media?", "31920"),
        ("wss://gw.example.com/twilio/media#x", "fragment"),
        ("https://gw.example.com/twilio/media", "ws"),
        ("gw.example.com/twilio/media", "ws"),
        ("wss:///twilio/media", "host"),
        ("wss://gw.example.com:99999/x", "valid"),
    ],
)
def test_connect_stream_refuses_bad_urls(url: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        connect_stream(url, [])


def test_connect_stream_refuses_bad_callback_and_names() -> None:
    with pytest.raises(ValueError, match="status callback"):
        connect_stream(MEDIA_URL, [], status_callback="wss://gw.example.com/cb")
    with pytest.raises(ValueError, match="name"):
        connect_stream(MEDIA_URL, [("", "v")])


@pytest.mark.parametrize("bad", ["\x00", "a\x07b", "\x1b[31m", "\ufffe", "\udc80"])
def test_xml_illegal_characters_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="XML"):
        connect_stream(MEDIA_URL, [("p", bad)])
    with pytest.raises(ValueError, match="XML"):
        busy_say(bad)


def test_busy_say_then_hangup() -> None:
    root = parse(busy_say("Busy & <sorry>"))
    assert [child.tag for child in root] == ["Say", "Hangup"]
    assert root[0].text == "Busy & <sorry>"
    assert root[0].attrib == {}
    assert "Busy &amp; &lt;sorry&gt;" in busy_say("Busy & <sorry>")


def test_busy_say_arabic_with_language() -> None:
    document = busy_say(ARABIC, language="ar-XA", voice="Google.ar-XA-Standard-A")
    assert ARABIC in document
    say = parse(document)[0]
    assert say.text == ARABIC
    assert say.attrib == {"language": "ar-XA", "voice": "Google.ar-XA-Standard-A"}


def test_reject_busy() -> None:
    [reject] = parse(reject_busy())
    assert (reject.tag, reject.attrib, list(reject)) == ("Reject", {"reason": "busy"}, [])


def test_hangup() -> None:
    [element] = parse(hangup())
    assert element.tag == "Hangup"


@pytest.mark.parametrize(
    ("target", "tag", "text"),
    [
        ("+18005551212", "Number", "+18005551212"),
        ("+1 (800) 555-1212", "Number", "+18005551212"),
        ("1001", "Number", "1001"),
        ("sip:alice@pbx.example.com", "Sip", "sip:alice@pbx.example.com"),
        ("SIP:bob@pbx.example.com;transport=tls", "Sip", "SIP:bob@pbx.example.com;transport=tls"),
        ("sips:carol@pbx.example.com?x=1&y=2", "Sip", "sips:carol@pbx.example.com?x=1&y=2"),
    ],
)
def test_dial_targets(target: str, tag: str, text: str) -> None:
    [dial_element] = parse(dial(target))
    assert dial_element.tag == "Dial"
    assert dial_element.attrib == {}
    [child] = dial_element
    assert (child.tag, child.text) == (tag, text)


def test_dial_with_caller_id() -> None:
    [dial_element] = parse(dial("+18005551212", caller_id="+966500000000"))
    assert dial_element.attrib == {"callerId": "+966500000000"}


@pytest.mark.parametrize(
    "target", ["", "alice", "+", "+1234567890123456", "tel:+1800", "sip:", "1800<Hangup/>"]
)
def test_dial_refuses_unknown_targets(target: str) -> None:
    with pytest.raises(ValueError):
        dial(target)


def test_dial_refuses_empty_caller_id() -> None:
    with pytest.raises(ValueError):
        dial("+18005551212", caller_id="")


_xml_text = st.text(
    alphabet=st.characters(
        exclude_categories=["Cs"],
        exclude_characters="".join(map(chr, [*range(0x09), 0x0B, 0x0C, *range(0x0E, 0x20)]))
        + "\ufffe\uffff",
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=TIMEOUT * 1000)
@given(st.lists(st.tuples(_xml_text.filter(bool), _xml_text), max_size=4), _xml_text)
def test_any_legal_text_round_trips(params: list[tuple[str, str]], message: str) -> None:
    [connect] = parse(connect_stream(MEDIA_URL, params))
    assert [(p.get("name"), p.get("value")) for p in connect[0]] == params
    # XML parsers normalise line ends in text (XML 1.0 §2.11) unless escaped.
    said = parse(busy_say(message))[0].text or ""
    assert said in (message, message.replace("\r\n", "\n").replace("\r", "\n"))
