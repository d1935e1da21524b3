"""TwilioMediaProtocol: wire input -> events tables, outbound shapes, marks, fuzzing.

Wire shapes are those of docs/protocols/twilio.md §1.3 (inbound) and §1.4
(outbound). Every table case is fed whole, with unknown fields added, and with unknown
events interleaved: the events must not change.
"""

from __future__ import annotations

import base64
import copy
import json
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.telephony.events import (
    ULAW_8K,
    CallEnded,
    CallerAudio,
    CallStarted,
    ClearAudio,
    Dtmf,
    Hangup,
    Ignored,
    InboundEvent,
    Malformed,
    MarkPlayed,
    PlayAudio,
    SetMark,
    Transport,
)
from gateway.telephony.twilio import MAX_INBOUND_PAYLOAD_BYTES, TwilioMediaProtocol
from tests.telephony.wire import data_in, out, text_in

TIMEOUT = 5.0  # seconds; the hypothesis deadline per example (nothing here waits on I/O)

SID = "MZ18ad3ab5a668481ce02b83e7395059f0"
CALL_SID = "CA3c95a2a6bba5fde93a5dea01e388e8fb"
ACCOUNT_SID = "AC18fbd524d33614fba208030751dffdca"
FRAME = bytes(range(160))  # one 20 ms μ-law frame, as Twilio sends (§1.3)

Wire = dict[str, Any]


def connected_msg() -> Wire:
    return {"event": "connected", "protocol": "Call", "version": "1.0.0"}


def start_msg(
    *,
    media_format: Any = None,
    custom: Any = None,
    drop: tuple[str, ...] = (),
    top_sid: str | None = SID,
) -> Wire:
    start: Wire = {
        "accountSid": ACCOUNT_SID,
        "streamSid": SID,
        "callSid": CALL_SID,
        "tracks": ["inbound"],
        "customParameters": {"tenant": "abc123", "agentId": "agent-42"}
        if custom is None
        else custom,
        "mediaFormat": media_format
        or {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    }
    for name in drop:
        del start[name]
    msg: Wire = {"event": "start", "sequenceNumber": "1", "start": start}
    if top_sid is not None:
        msg["streamSid"] = top_sid
    return msg


def media_msg(payload: bytes | str = FRAME, *, track: str = "inbound", sid: str = SID) -> Wire:
    text = payload if isinstance(payload, str) else base64.b64encode(payload).decode()
    return {
        "event": "media",
        "sequenceNumber": "2",
        "media": {"track": track, "chunk": "1", "timestamp": "52", "payload": text},
        "streamSid": sid,
    }


def mark_msg(name: Any, *, sid: str = SID) -> Wire:
    return {"event": "mark", "sequenceNumber": "103", "streamSid": sid, "mark": {"name": name}}


def dtmf_msg(digit: Any, *, track: str = "inbound_track") -> Wire:
    return {
        "event": "dtmf",
        "streamSid": SID,
        "sequenceNumber": "5",
        "dtmf": {"track": track, "digit": digit},
    }


def stop_msg(*, sid: str = SID) -> Wire:
    return {
        "event": "stop",
        "sequenceNumber": "5",
        "streamSid": sid,
        "stop": {"accountSid": ACCOUNT_SID, "callSid": CALL_SID},
    }


def started_protocol(**kwargs: int) -> TwilioMediaProtocol:
    protocol = TwilioMediaProtocol(**kwargs)
    assert text_in(protocol, json.dumps(connected_msg())) == []
    [started] = text_in(protocol, json.dumps(start_msg()))
    assert isinstance(started, CallStarted)
    return protocol


def shape(events: list[InboundEvent]) -> list[object]:
    """Events with Malformed reduced to (reason, fatal, close_code): details are for logs."""
    return [
        ("Malformed", e.reason, e.fatal, e.close_code) if isinstance(e, Malformed) else e
        for e in events
    ]


def bad(reason: str, *, fatal: bool = False, close_code: int = 1008) -> Malformed:
    return Malformed(reason, fatal=fatal, close_code=close_code)


EXPECTED_METADATA = {
    "tenant": "abc123",
    "agentId": "agent-42",
    "account_sid": ACCOUNT_SID,
    "call_sid": CALL_SID,
    "stream_sid": SID,
    "tracks": "inbound",
}


@dataclass(frozen=True)
class Case:
    id: str
    wire: Wire | str
    expected: list[InboundEvent]
    started: bool = True
    marks: tuple[str, ...] = ()  # sent with SetMark before feeding ``wire``
    extra_fields: bool = True  # whether adding unknown fields must leave events unchanged
    nested: tuple[str, ...] = field(default=())  # nested objects left alone when adding fields


CASES = [
    # --- the happy path, one per message type
    Case("connected-again", connected_msg(), [Ignored("duplicate_connected")]),
    Case(
        "start",
        start_msg(),
        [CallStarted(CALL_SID, Transport.TWILIO, ULAW_8K, SID, EXPECTED_METADATA)],
        started=False,
        nested=("customParameters",),
    ),
    Case(
        "start-uuid-sid-no-custom",
        start_msg(custom={}, top_sid=None)
        | {"start": start_msg(custom={})["start"] | {"streamSid": "9e7ee906-377b"}},
        [
            CallStarted(
                CALL_SID,
                Transport.TWILIO,
                ULAW_8K,
                "9e7ee906-377b",
                {k: v for k, v in EXPECTED_METADATA.items() if k not in ("tenant", "agentId")}
                | {"stream_sid": "9e7ee906-377b"},
            )
        ],
        started=False,
        nested=("customParameters",),
    ),
    Case(
        "start-sid-only-top-level",
        start_msg(drop=("streamSid",)),
        [CallStarted(CALL_SID, Transport.TWILIO, ULAW_8K, SID, EXPECTED_METADATA)],
        started=False,
        nested=("customParameters",),
    ),
    Case(
        "start-custom-param-named-like-ours-loses",
        start_msg(custom={"call_sid": "spoof", "n": 7}),
        [
            CallStarted(
                CALL_SID,
                Transport.TWILIO,
                ULAW_8K,
                SID,
                {k: v for k, v in EXPECTED_METADATA.items() if k not in ("tenant", "agentId")}
                | {"n": "7"},
            )
        ],
        started=False,
        nested=("customParameters",),
    ),
    Case("media", media_msg(), [CallerAudio(FRAME)]),
    Case("media-short-frame", media_msg(b"\xff"), [CallerAudio(b"\xff")]),
    Case(
        "media-max-frame",
        media_msg(b"\x7f" * MAX_INBOUND_PAYLOAD_BYTES),
        [CallerAudio(b"\x7f" * MAX_INBOUND_PAYLOAD_BYTES)],
    ),
    Case("media-outbound-track", media_msg(track="outbound"), [Ignored("outbound_track")]),
    Case("media-unknown-track", media_msg(track="both"), [Ignored("unknown_track")]),
    Case("dtmf", dtmf_msg("1"), [Dtmf("1")]),
    Case("dtmf-hash", dtmf_msg("#"), [Dtmf("#")]),
    Case("dtmf-track-spelled-inbound", dtmf_msg("*", track="inbound"), [Dtmf("*")]),
    Case("dtmf-outbound", dtmf_msg("1", track="outbound_track"), [Ignored("outbound_track")]),
    Case("mark-echo", mark_msg("m1"), [MarkPlayed("m1", played=True)], marks=("m1",)),
    Case("mark-unknown", mark_msg("nope"), [Ignored("unknown_mark")], marks=("m1",)),
    Case(
        "stop",
        stop_msg(),
        [MarkPlayed("m1", played=False), CallEnded("remote_hangup")],
        marks=("m1",),
    ),
    Case("stop-before-start", stop_msg(), [CallEnded("remote_hangup")], started=False),
    Case("unknown-event", {"event": "transcription", "x": 1}, [Ignored("unknown_event")]),
    # --- malformed, not fatal: drop the message, keep the call
    Case("invalid-json", '{"event": "media",', [bad("invalid_json")], extra_fields=False),
    Case("json-array", "[1, 2]", [bad("not_an_object")], extra_fields=False),
    Case("json-string", '"media"', [bad("not_an_object")], extra_fields=False),
    Case("no-event", {"media": {}}, [bad("missing_field")]),
    Case("event-not-string", {"event": 7}, [bad("missing_field")]),
    Case("media-before-start", media_msg(), [bad("media_before_start")], started=False),
    Case("dtmf-before-start", dtmf_msg("1"), [bad("media_before_start")], started=False),
    Case("mark-before-start", mark_msg("m"), [bad("media_before_start")], started=False),
    Case("media-other-stream", media_msg(sid="MZother"), [bad("stream_mismatch")]),
    Case(
        "mark-other-stream", mark_msg("m1", sid="MZother"), [bad("stream_mismatch")], marks=("m1",)
    ),
    Case("stop-other-stream", stop_msg(sid="MZother"), [bad("stream_mismatch")]),
    Case("media-no-media", {"event": "media", "streamSid": SID}, [bad("missing_field")]),
    Case(
        "media-payload-not-string",
        media_msg() | {"media": {"track": "inbound", "payload": 12}},
        [bad("missing_field")],
    ),
    Case("media-bad-base64", media_msg("not base64!!"), [bad("bad_base64")]),
    Case("media-base64-bad-padding", media_msg("AAA"), [bad("bad_base64")]),
    Case("media-base64-non-ascii", media_msg("AAAA\u0661"), [bad("bad_base64")]),
    Case("media-empty-payload", media_msg(""), [bad("bad_payload_size")]),
    Case(
        "media-payload-too-big",
        media_msg(b"\x00" * (MAX_INBOUND_PAYLOAD_BYTES + 1)),
        [bad("bad_payload_size")],
    ),
    Case("dtmf-no-digit", dtmf_msg(None), [bad("missing_field")]),
    Case("dtmf-bad-digit", dtmf_msg("Z"), [bad("missing_field")]),
    Case("dtmf-two-digits", dtmf_msg("12"), [bad("missing_field")]),
    Case("mark-no-name", mark_msg(None), [bad("missing_field")], marks=("m1",)),
    # --- malformed and fatal: the stream cannot go on
    Case(
        "second-start",
        start_msg(),
        [bad("second_start", fatal=True)],
        nested=("customParameters",),
    ),
    Case(
        "start-no-call-sid",
        start_msg(drop=("callSid",)),
        [bad("missing_field", fatal=True)],
        started=False,
    ),
    Case(
        "start-no-stream-sid",
        start_msg(drop=("streamSid",), top_sid=None),
        [bad("missing_field", fatal=True)],
        started=False,
    ),
    Case(
        "start-no-media-format",
        start_msg(drop=("mediaFormat",)),
        [bad("missing_field", fatal=True)],
        started=False,
    ),
    Case(
        "start-not-object",
        {"event": "start", "start": "yes", "streamSid": SID},
        [bad("missing_field", fatal=True)],
        started=False,
    ),
    Case(
        "start-sids-disagree",
        start_msg(top_sid="MZsomethingelse"),
        [bad("stream_mismatch", fatal=True)],
        started=False,
    ),
    Case(
        "start-pcm16",
        start_msg(media_format={"encoding": "audio/l16", "sampleRate": 8000, "channels": 1}),
        [bad("unsupported_media_format", fatal=True, close_code=1003)],
        started=False,
    ),
    Case(
        "start-mulaw-16k",
        start_msg(media_format={"encoding": "audio/x-mulaw", "sampleRate": 16000, "channels": 1}),
        [bad("unsupported_media_format", fatal=True, close_code=1003)],
        started=False,
    ),
    Case(
        "start-stereo",
        start_msg(media_format={"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 2}),
        [bad("unsupported_media_format", fatal=True, close_code=1003)],
        started=False,
    ),
]


def _prepare(case: Case) -> TwilioMediaProtocol:
    if not case.started:
        return TwilioMediaProtocol()
    protocol = started_protocol()
    for name in case.marks:
        out(protocol, SetMark(name))
    return protocol


def _with_unknown_fields(value: Any, skip: tuple[str, ...]) -> Any:
    """A copy of a message with an unknown field added to it and to every nested object."""
    if isinstance(value, dict):
        out = {
            key: (item if key in skip else _with_unknown_fields(item, skip))
            for key, item in value.items()
        }
        out["zzFutureField"] = {"anything": [1, "two", None]}
        return out
    return value


def _text(wire: Wire | str) -> str:
    return wire if isinstance(wire, str) else json.dumps(wire, ensure_ascii=False)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case_whole(case: Case) -> None:
    protocol = _prepare(case)
    assert shape(text_in(protocol, _text(case.wire))) == shape(case.expected)


@pytest.mark.parametrize(
    "case", [c for c in CASES if c.extra_fields], ids=[c.id for c in CASES if c.extra_fields]
)
def test_case_with_unknown_fields(case: Case) -> None:
    assert isinstance(case.wire, dict)
    wire = _with_unknown_fields(copy.deepcopy(case.wire), case.nested)
    protocol = _prepare(case)
    assert shape(text_in(protocol, _text(wire))) == shape(case.expected)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case_with_unknown_events_interleaved(case: Case) -> None:
    protocol = _prepare(case)
    junk = json.dumps({"event": "someFutureEvent", "streamSid": SID, "sequenceNumber": "9"})
    before = text_in(protocol, junk)
    events = text_in(protocol, _text(case.wire))
    after = text_in(protocol, junk)
    assert before == [Ignored("unknown_event")]
    assert shape(events) == shape(case.expected)
    # After a stop everything is ignored as such; otherwise junk stays unknown_event.
    assert after == [Ignored("after_stop" if protocol.stopped else "unknown_event")]


def test_media_timestamps_and_counters_are_strings_and_ignored() -> None:
    protocol = started_protocol()
    wire = media_msg()
    wire["media"] |= {"chunk": "4294967296", "timestamp": "99999999999"}
    wire["sequenceNumber"] = "not-a-number"
    assert text_in(protocol, json.dumps(wire)) == [CallerAudio(FRAME)]


def test_media_without_track_or_stream_sid_is_caller_audio() -> None:
    protocol = started_protocol()
    wire = {"event": "media", "media": {"payload": base64.b64encode(FRAME).decode()}}
    assert text_in(protocol, json.dumps(wire)) == [CallerAudio(FRAME)]


def test_start_tolerates_string_sample_rate_and_missing_channels() -> None:
    protocol = TwilioMediaProtocol()
    wire = start_msg(media_format={"encoding": "AUDIO/X-MULAW", "sampleRate": "8000"})
    [event] = text_in(protocol, json.dumps(wire))
    assert isinstance(event, CallStarted)
    assert event.audio_format == ULAW_8K


def test_connected_is_recorded() -> None:
    protocol = TwilioMediaProtocol()
    assert not protocol.connected
    assert text_in(protocol, json.dumps(connected_msg())) == []
    assert protocol.connected
    assert not protocol.started


def test_start_records_identity() -> None:
    protocol = started_protocol()
    assert protocol.started
    assert protocol.stream_sid == SID
    assert protocol.call_sid == CALL_SID


def test_everything_after_stop_is_ignored() -> None:
    protocol = started_protocol()
    assert text_in(protocol, json.dumps(stop_msg())) == [CallEnded("remote_hangup")]
    for wire in (media_msg(), mark_msg("x"), dtmf_msg("1"), stop_msg(), start_msg()):
        assert text_in(protocol, json.dumps(wire)) == [Ignored("after_stop")]


# --------------------------------------------------------------- size limit, binary


def test_length_limit_applies_before_parsing() -> None:
    protocol = started_protocol(max_message_bytes=500)
    # Not JSON at all: if it were parsed first the outcome would be invalid_json.
    [event] = text_in(protocol, "{" * 501)
    assert isinstance(event, Malformed)
    assert (event.reason, event.fatal, event.close_code) == ("message_too_large", True, 1009)
    # Exactly at the limit is parsed normally.
    [at_limit] = text_in(protocol, "{" * 500)
    assert isinstance(at_limit, Malformed)
    assert at_limit.reason == "invalid_json"


def test_default_limit_accepts_real_messages() -> None:
    protocol = TwilioMediaProtocol()
    huge_custom = {f"p{i}": "v" * 100 for i in range(100)}  # ~11 KB of parameters
    [event] = text_in(protocol, json.dumps(start_msg(custom=huge_custom)))
    assert isinstance(event, CallStarted)


@pytest.mark.parametrize("data", [b"", b"\x00" * 160, b'{"event":"media"}'])
def test_binary_frames_are_fatal_unsupported_data(data: bytes) -> None:
    for protocol in (TwilioMediaProtocol(), started_protocol()):
        [event] = data_in(protocol, data)
        assert isinstance(event, Malformed)
        assert (event.reason, event.fatal, event.close_code) == ("binary_frame", True, 1003)


def test_constructor_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        TwilioMediaProtocol(chunk_ms=0)
    with pytest.raises(ValueError):
        TwilioMediaProtocol(max_message_bytes=0)


# -------------------------------------------------------------------------- outbound


def test_send_before_start_is_a_programming_error() -> None:
    protocol = TwilioMediaProtocol()
    text_in(protocol, json.dumps(connected_msg()))
    for event in (PlayAudio(FRAME), SetMark("m"), ClearAudio(), Hangup()):
        with pytest.raises(RuntimeError, match="start"):
            out(protocol, event)


def test_play_audio_wire_shape() -> None:
    protocol = started_protocol()
    [message] = out(protocol, PlayAudio(FRAME))
    assert orjson.loads(message) == {
        "event": "media",
        "streamSid": SID,
        "media": {"payload": base64.b64encode(FRAME).decode()},
    }


@pytest.mark.parametrize(
    ("chunk_ms", "audio_ms", "sizes"),
    [
        (100, 20, [160]),
        (100, 100, [800]),
        (100, 250, [800, 800, 400]),
        (20, 60, [160, 160, 160]),
        (1000, 1000, [8000]),
    ],
)
def test_play_audio_is_chunked(chunk_ms: int, audio_ms: int, sizes: list[int]) -> None:
    protocol = started_protocol(chunk_ms=chunk_ms)
    audio = bytes(i % 256 for i in range(audio_ms * 8))
    messages = out(protocol, PlayAudio(audio))
    decoded = [base64.b64decode(orjson.loads(m)["media"]["payload"]) for m in messages]
    assert [len(d) for d in decoded] == sizes
    assert b"".join(decoded) == audio


def test_play_odd_sized_audio_keeps_every_byte() -> None:
    protocol = started_protocol(chunk_ms=20)
    audio = bytes(range(161))
    decoded = [
        base64.b64decode(orjson.loads(m)["media"]["payload"])
        for m in out(protocol, PlayAudio(audio))
    ]
    assert b"".join(decoded) == audio


def test_play_empty_audio_sends_nothing() -> None:
    assert out(started_protocol(), PlayAudio(b"")) == []


def test_mark_clear_and_hangup_wire_shapes() -> None:
    protocol = started_protocol()
    [mark] = out(protocol, SetMark('utt-17 "quoted" \u0645'))
    assert orjson.loads(mark) == {
        "event": "mark",
        "streamSid": SID,
        "mark": {"name": 'utt-17 "quoted" \u0645'},
    }
    [clear] = out(protocol, ClearAudio())
    assert orjson.loads(clear) == {"event": "clear", "streamSid": SID}
    assert out(protocol, Hangup()) == []


def test_stream_sid_with_json_special_characters_is_encoded() -> None:
    protocol = TwilioMediaProtocol()
    odd_sid = 'MZ"\\\n\u0645'
    text_in(
        protocol,
        json.dumps(
            start_msg(top_sid=None) | {"start": start_msg()["start"] | {"streamSid": odd_sid}}
        ),
    )
    for message in (
        *out(protocol, PlayAudio(FRAME)),
        *out(protocol, SetMark("m")),
        *out(protocol, ClearAudio()),
    ):
        assert orjson.loads(message)["streamSid"] == odd_sid


def test_empty_mark_name_is_refused() -> None:
    with pytest.raises(ValueError):
        out(started_protocol(), SetMark(""))


def test_send_after_stop_returns_nothing() -> None:
    protocol = started_protocol()
    text_in(protocol, json.dumps(stop_msg()))
    assert out(protocol, PlayAudio(FRAME)) == []
    assert out(protocol, SetMark("late")) == []
    assert in_flight(protocol) == ()


# ----------------------------------------------------------------------------- marks


def in_flight(protocol: TwilioMediaProtocol) -> tuple[str, ...]:
    # A call, not the property inline: mypy narrows a property after an == assert.
    return protocol.marks_in_flight


def cleared(protocol: TwilioMediaProtocol) -> tuple[str, ...]:
    return protocol.cleared_marks


def echo(protocol: TwilioMediaProtocol, name: str) -> list[InboundEvent]:
    return text_in(protocol, json.dumps(mark_msg(name)))


def test_marks_in_flight_in_order_and_retired_by_echo() -> None:
    protocol = started_protocol()
    for name in ("a", "b", "c"):
        out(protocol, PlayAudio(FRAME))
        out(protocol, SetMark(name))
    assert in_flight(protocol) == ("a", "b", "c")
    assert echo(protocol, "a") == [MarkPlayed("a", played=True)]
    assert in_flight(protocol) == ("b", "c")


def test_echo_of_a_later_mark_retires_older_ones_as_played() -> None:
    protocol = started_protocol()
    for name in ("a", "b", "c"):
        out(protocol, SetMark(name))
    assert echo(protocol, "c") == [MarkPlayed("a"), MarkPlayed("b"), MarkPlayed("c")]
    assert in_flight(protocol) == ()
    # The skipped marks are gone: a late echo of them is unknown, not a second event.
    assert echo(protocol, "a") == [Ignored("unknown_mark")]


def test_clear_turns_marks_in_flight_into_unplayed_echoes() -> None:
    protocol = started_protocol()
    out(protocol, SetMark("a"))
    out(protocol, SetMark("b"))
    out(protocol, ClearAudio())
    assert cleared(protocol) == ("a", "b")
    out(protocol, SetMark("c"))  # after the clear: its audio will really play
    assert cleared(protocol) == ("a", "b")
    # Twilio echoes the marks the clear dropped (GUESSED strong, §1.4).
    assert echo(protocol, "a") == [MarkPlayed("a", played=False)]
    assert echo(protocol, "b") == [MarkPlayed("b", played=False)]
    assert echo(protocol, "c") == [MarkPlayed("c", played=True)]
    assert in_flight(protocol) == ()
    assert cleared(protocol) == ()


def test_cleared_marks_never_echoed_are_retired_unplayed_by_the_next_echo() -> None:
    # The other reading of the GUESSED clear behaviour: Twilio drops cleared marks silently.
    protocol = started_protocol()
    out(protocol, SetMark("a"))
    out(protocol, SetMark("b"))
    out(protocol, ClearAudio())
    out(protocol, SetMark("c"))
    assert echo(protocol, "c") == [
        MarkPlayed("a", played=False),
        MarkPlayed("b", played=False),
        MarkPlayed("c", played=True),
    ]


def test_echo_of_second_cleared_mark_retires_first_unplayed() -> None:
    protocol = started_protocol()
    for name in ("a", "b", "c"):
        out(protocol, SetMark(name))
    out(protocol, ClearAudio())
    assert echo(protocol, "b") == [MarkPlayed("a", played=False), MarkPlayed("b", played=False)]
    assert cleared(protocol) == ("c",)
    out(protocol, SetMark("d"))
    assert echo(protocol, "d") == [MarkPlayed("c", played=False), MarkPlayed("d", played=True)]


def test_second_clear_covers_marks_set_since_the_first() -> None:
    protocol = started_protocol()
    out(protocol, SetMark("a"))
    out(protocol, ClearAudio())
    out(protocol, SetMark("b"))
    out(protocol, ClearAudio())
    assert cleared(protocol) == ("a", "b")
    assert echo(protocol, "b") == [MarkPlayed("a", played=False), MarkPlayed("b", played=False)]


def test_duplicate_mark_names_match_oldest_first() -> None:
    protocol = started_protocol()
    out(protocol, SetMark("x"))
    out(protocol, SetMark("y"))
    out(protocol, SetMark("x"))
    assert echo(protocol, "x") == [MarkPlayed("x")]
    assert in_flight(protocol) == ("y", "x")
    assert echo(protocol, "x") == [MarkPlayed("y"), MarkPlayed("x")]


def test_stop_retires_every_mark_in_flight_unplayed_in_order() -> None:
    protocol = started_protocol()
    for name in ("a", "b"):
        out(protocol, SetMark(name))
    out(protocol, ClearAudio())
    out(protocol, SetMark("c"))
    assert text_in(protocol, json.dumps(stop_msg())) == [
        MarkPlayed("a", played=False),
        MarkPlayed("b", played=False),
        MarkPlayed("c", played=False),
        CallEnded("remote_hangup"),
    ]
    assert in_flight(protocol) == ()


def test_every_mark_yields_exactly_one_mark_played() -> None:
    protocol = started_protocol()
    sent = [f"m{i}" for i in range(6)]
    events: list[InboundEvent] = []
    for i, name in enumerate(sent):
        out(protocol, SetMark(name))
        if i == 2:
            out(protocol, ClearAudio())
    events += echo(protocol, "m1")
    events += echo(protocol, "m4")
    events += text_in(protocol, json.dumps(stop_msg()))
    names = [e.name for e in events if isinstance(e, MarkPlayed)]
    assert names == sent
    played = {e.name: e.played for e in events if isinstance(e, MarkPlayed)}
    assert played == {"m0": False, "m1": False, "m2": False, "m3": True, "m4": True, "m5": False}


# --------------------------------------------------------------------------- fuzzing

_keys = st.sampled_from(
    [
        "streamSid",
        "start",
        "media",
        "dtmf",
        "mark",
        "stop",
        "payload",
        "name",
        "digit",
        "track",
        "callSid",
        "mediaFormat",
        "encoding",
        "sampleRate",
        "channels",
        "customParameters",
    ]
) | st.text(max_size=6)
_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.sampled_from(["inbound", "outbound", "inbound_track", "audio/x-mulaw", "AAAA", SID]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(_keys, children, max_size=4),
    max_leaves=8,
)
_events = st.sampled_from(["connected", "start", "media", "dtmf", "mark", "stop", "clear", "x"])


@settings(max_examples=300, deadline=TIMEOUT * 1000)
@given(st.text(max_size=200))
def test_any_text_never_raises(text: str) -> None:
    for protocol in (TwilioMediaProtocol(), started_protocol()):
        for event in text_in(protocol, text):
            assert isinstance(event, Ignored | Malformed | CallEnded | MarkPlayed)


@settings(max_examples=150, deadline=TIMEOUT * 1000)
@given(_events, st.dictionaries(_keys, _json_values, max_size=5))
def test_any_message_shape_never_raises(event: str, body: dict[str, Any]) -> None:
    message = json.dumps({"event": event, **body})
    fresh, started = TwilioMediaProtocol(), started_protocol()
    out(started, SetMark("m"))
    for protocol in (fresh, started):
        events = text_in(protocol, message)
        assert all(isinstance(e, InboundEvent) for e in events)
