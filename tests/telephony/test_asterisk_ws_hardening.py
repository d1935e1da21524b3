"""chan_websocket core against hostile control text, the variable allow-list and the byte clock.

Issue 10 items 5 (crafted control text must be Malformed, never an exception), 12 (channel
variables reach the agent only when allow-listed; ``v()`` parameters always do) and 16 (plain
text control: marks retire at their playout time, modelled from the bytes sent).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.telephony.asterisk_ws import AsteriskWsProtocol
from gateway.telephony.events import (
    CallerAudio,
    CallStarted,
    ClearAudio,
    InboundEvent,
    Malformed,
    MarkPlayed,
    PlayAudio,
    PlaybackDrained,
    SetMark,
)
from tests.telephony.test_asterisk_ws_golden import load, query_of
from tests.telephony.wire import data_in, events, out, text_in

CID = "1795597183.14"


def plain_start(**fields: str) -> str:
    base = {
        "connection_id": "wsconn",
        "channel": "WebSocket/wsconn/0x7f0260004950",
        "channel_id": CID,
        "format": "ulaw",
        "optimal_frame_size": "160",
        "ptime": "20",
    }
    base.update(fields)
    return "MEDIA_START " + " ".join(f"{k}:{v}" for k, v in base.items())


def json_start(**fields: Any) -> str:
    base: dict[str, Any] = {
        "event": "MEDIA_START",
        "connection_id": "wsconn",
        "channel": "WebSocket/wsconn/0x7f0284003e50",
        "channel_id": CID,
        "format": "ulaw",
        "optimal_frame_size": 160,
        "ptime": 20,
    }
    base.update(fields)
    return json.dumps(base, separators=(",", ":"))


NESTED = 5000  # well inside MAX_MESSAGE_BYTES, far past the JSON parser's recursion limit

# ------------------------------------------------------------------ item 5: crafted text

# (text sent after a normal MEDIA_START, reason of the one Malformed expected)
AFTER_START: list[tuple[str, str]] = [
    ('{"event":' + "[" * NESTED, "bad_json"),
    ('{"event":"DTMF_END","digit":' + "{" * NESTED, "bad_json"),
    ('{"event":"DTMF_END","x":' + '{"a":' * NESTED + "1" + "}" * NESTED + "}", "bad_json"),
    ("[" * NESTED, "bad_control"),
    ('{"event":"DTMF_END","digit":"' + "9" * 5000 + '"}', "bad_dtmf"),
    ('{"event":"DTMF_END","digit":' + "9" * 5000 + "}", "bad_json"),  # int() digit limit
    ("DTMF_END digit:\ud800", "bad_dtmf"),  # a lone surrogate from some other glue
    ("\ud800", "bad_control"),
]


@pytest.mark.parametrize(("text", "reason"), AFTER_START, ids=range(len(AFTER_START)))
def test_crafted_control_text_is_malformed_and_the_call_goes_on(text: str, reason: str) -> None:
    proto = AsteriskWsProtocol()
    [start] = text_in(proto, plain_start())
    assert isinstance(start, CallStarted)
    [event] = text_in(proto, text)
    assert isinstance(event, Malformed) and event.reason == reason and not event.fatal
    assert data_in(proto, b"\xff" * 160) == [CallerAudio(b"\xff" * 160)]


# MEDIA_START with a bad ptime: counted (non-fatal Malformed first), the call starts at 20 ms.
BAD_PTIME: list[str] = [
    plain_start(ptime="\u0662\u0660"),  # Arabic-Indic "20": isdigit() and int() accept it
    plain_start(ptime="\u00b2"),  # superscript two: isdigit() accepts, int() raises
    plain_start(ptime="9" * 5000),  # int() refuses more than 4300 digits
    plain_start(ptime="0"),
    plain_start(ptime="-20"),
    json_start(ptime="\u0662\u0660"),
    json_start(ptime=10**30),
    json_start(ptime=-20),
]


@pytest.mark.parametrize("text", BAD_PTIME, ids=range(len(BAD_PTIME)))
def test_bad_ptime_is_counted_and_the_call_starts(text: str) -> None:
    proto = AsteriskWsProtocol()
    events = text_in(proto, text)
    assert len(events) == 2, events
    bad, start = events
    assert isinstance(bad, Malformed) and bad.reason == "bad_media_start" and not bad.fatal
    assert isinstance(start, CallStarted)
    assert proto.ptime_ms == 20 and proto.frame_size == 160
    assert data_in(proto, b"\xff" * 160) == [CallerAudio(b"\xff" * 160)]


BAD_FRAME_SIZE: list[str] = [
    plain_start(optimal_frame_size="\u0661\u0666\u0660"),  # Arabic-Indic "160"
    plain_start(optimal_frame_size="\u00b2"),
    plain_start(optimal_frame_size="1" * 5000),
    json_start(optimal_frame_size="1" * 5000),
]


@pytest.mark.parametrize("text", BAD_FRAME_SIZE, ids=range(len(BAD_FRAME_SIZE)))
def test_bad_frame_size_is_a_clear_fatal_error_not_an_exception(text: str) -> None:
    proto = AsteriskWsProtocol()
    [event] = text_in(proto, text)
    assert isinstance(event, Malformed) and event.reason == "bad_media_start" and event.fatal


def test_nested_json_before_start_is_malformed() -> None:
    proto = AsteriskWsProtocol()
    [event] = text_in(proto, '{"event":"MEDIA_START","channel_variables":' + "[" * NESTED)
    assert isinstance(event, Malformed) and event.reason == "bad_json"
    [start] = text_in(proto, plain_start())
    assert isinstance(start, CallStarted)


# ------------------------------------------------------------- item 12: variable allow-list


def test_real_v_parameters_reach_the_agent_from_the_query_string() -> None:
    """uri_params: ``v(call_id=abc123,lang=en)`` arrived as ``?call_id=abc123&lang=en``."""
    records = load("uri_params")
    start = next(r["text"] for r in records if r["event"] == "RX_TEXT")
    proto = AsteriskWsProtocol(query=query_of(records))  # no allow-list at all
    [event] = text_in(proto, start)
    assert isinstance(event, CallStarted)
    assert dict(event.metadata) == {
        "call_id": "abc123",
        "lang": "en",
        "connection_id": "wsconn",
        "channel": "WebSocket/wsconn/0x7efe18003360",
    }


def _real_json_start_with_inherited_variables() -> str:
    """json_local's real MEDIA_START, plus what a PBX's channel inherits in production."""
    records = load("json_local")
    start = json.loads(next(r["text"] for r in records if r["event"] == "RX_TEXT"))
    start["channel_variables"].update(
        {"__CALLNAME": "Dr. Salem (private)", "LANG": "ar", "SECRET_PIN": "4321"}
    )
    return json.dumps(start, separators=(",", ":"))


def test_inherited_channel_variables_are_not_forwarded_by_default() -> None:
    proto = AsteriskWsProtocol()
    [event] = text_in(proto, _real_json_start_with_inherited_variables())
    assert isinstance(event, CallStarted)
    assert set(event.metadata) == {"connection_id", "channel"}


def test_only_allow_listed_channel_variables_are_forwarded() -> None:
    proto = AsteriskWsProtocol(
        query={"exten": "100"}, forward_variables=("LANG", "MEDIA_WEBSOCKET_CONNECTION_ID")
    )
    [event] = text_in(proto, _real_json_start_with_inherited_variables())
    assert isinstance(event, CallStarted)
    assert event.metadata["LANG"] == "ar"
    assert event.metadata["MEDIA_WEBSOCKET_CONNECTION_ID"] == "wsconn"
    assert event.metadata["exten"] == "100"
    for hidden in ("__CALLNAME", "DIALEDPEERNUMBER", "SECRET_PIN"):
        assert hidden not in event.metadata


def test_allow_listed_variable_that_is_not_utf8_is_dropped() -> None:
    proto = AsteriskWsProtocol(forward_variables=("LANG", "OK"))
    text = json_start(channel_variables={"OK": "yes"}).replace(
        '"OK":"yes"', '"OK":"yes","LANG":"\\udc80"'
    )
    [event] = text_in(proto, text)
    assert isinstance(event, CallStarted)
    assert event.metadata.get("OK") == "yes" and "LANG" not in event.metadata


# ------------------------------------------------------------------ item 16: byte clock


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


FRAME = b"\xff" * 160  # 20 ms of ulaw


def _audio_at(proto: AsteriskWsProtocol, clock: FakeClock, t: float) -> list[InboundEvent]:
    clock.now = 100.0 + t
    return data_in(proto, FRAME)


def test_plain_marks_retire_at_their_playout_time() -> None:
    clock = FakeClock()
    proto = AsteriskWsProtocol(clock=clock)
    text_in(proto, plain_start())
    out(proto, PlayAudio(FRAME))
    out(proto, SetMark("first"))  # the voice agent's "caller starts hearing" mark
    out(proto, PlayAudio(FRAME * 50))  # one more second of reply
    out(proto, SetMark("end"))
    assert _audio_at(proto, clock, 0.019) == [CallerAudio(FRAME)]
    assert _audio_at(proto, clock, 0.021) == [CallerAudio(FRAME), MarkPlayed("first", True)]
    assert _audio_at(proto, clock, 1.000) == [CallerAudio(FRAME)]
    assert _audio_at(proto, clock, 1.021) == [CallerAudio(FRAME), MarkPlayed("end", True)]
    # The QUEUE_DRAINED that follows finds nothing left to report.
    assert text_in(proto, "QUEUE_DRAINED") == [PlaybackDrained()]


def test_audio_sent_after_a_pause_in_playout_is_timed_from_its_own_send_time() -> None:
    clock = FakeClock()
    proto = AsteriskWsProtocol(clock=clock)
    text_in(proto, plain_start())
    out(proto, PlayAudio(FRAME))
    out(proto, SetMark("a"))
    assert _audio_at(proto, clock, 0.03) == [CallerAudio(FRAME), MarkPlayed("a", True)]
    clock.now = 105.0  # Asterisk's queue ran empty long ago
    out(proto, PlayAudio(FRAME * 5))
    out(proto, SetMark("b"))
    assert _audio_at(proto, clock, 5.099) == [CallerAudio(FRAME)]
    assert _audio_at(proto, clock, 5.101) == [CallerAudio(FRAME), MarkPlayed("b", True)]


def test_clear_empties_the_modelled_queue() -> None:
    clock = FakeClock()
    proto = AsteriskWsProtocol(clock=clock)
    text_in(proto, plain_start())
    out(proto, PlayAudio(FRAME * 100))  # 2 s queued
    out(proto, SetMark("cut"))
    clock.now = 100.5
    out(proto, ClearAudio())
    assert events(proto) == [MarkPlayed("cut", False)]
    out(proto, PlayAudio(FRAME))
    out(proto, SetMark("next"))
    # Played 20 ms after it was sent, not after the flushed 2 s.
    assert _audio_at(proto, clock, 0.521) == [CallerAudio(FRAME), MarkPlayed("next", True)]


def test_slin16_rate_and_without_a_clock_only_queue_drained_retires() -> None:
    clock = FakeClock()
    proto = AsteriskWsProtocol(clock=clock)
    text_in(proto, plain_start(format="slin16", optimal_frame_size="640"))
    out(proto, PlayAudio(b"\x00" * 640 * 10))  # 200 ms at 32000 bytes/s
    out(proto, SetMark("m"))
    pcm = b"\x00" * 640
    clock.now = 100.199
    assert data_in(proto, pcm) == [CallerAudio(pcm)]
    clock.now = 100.201
    assert data_in(proto, pcm) == [CallerAudio(pcm), MarkPlayed("m", True)]
    no_clock = AsteriskWsProtocol()
    text_in(no_clock, plain_start())
    out(no_clock, PlayAudio(FRAME))
    out(no_clock, SetMark("m"))
    assert data_in(no_clock, FRAME) == [CallerAudio(FRAME)]
    assert text_in(no_clock, "QUEUE_DRAINED") == [MarkPlayed("m", True), PlaybackDrained()]


def test_json_marks_are_not_retired_by_the_clock() -> None:
    clock = FakeClock()
    proto = AsteriskWsProtocol(clock=clock)
    text_in(proto, json_start())
    out(proto, PlayAudio(FRAME))
    out(proto, SetMark("m"))
    assert _audio_at(proto, clock, 5.0) == [CallerAudio(FRAME)]  # MEDIA_MARK_PROCESSED does
