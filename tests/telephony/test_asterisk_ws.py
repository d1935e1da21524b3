"""Table-driven tests of the sans-I/O chan_websocket core (both control formats)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.telephony.asterisk_ws import (
    MAX_OUT_MESSAGE_BYTES,
    MAX_TEXT_COMMAND_BYTES,
    AsteriskWsProtocol,
    ControlFormat,
    Tracking,
    audio_format_for,
)
from gateway.telephony.events import (
    ALAW_8K,
    PCM16_8K,
    PCM16_16K,
    ULAW_8K,
    AudioFormat,
    CallEnded,
    CallerAudio,
    CallStarted,
    ClearAudio,
    Dtmf,
    Encoding,
    Hangup,
    Ignored,
    InboundEvent,
    Malformed,
    MarkPlayed,
    OutboundFlow,
    PlayAudio,
    PlaybackDrained,
    SetMark,
    Transport,
)
from tests.telephony.wire import (
    data_in,
    events,
    pending,
    produced,
    reported,
    text_in,
)
from tests.telephony.wire import (
    out as send_out,
)

TIMEOUT = 5.0  # seconds; unused by these pure tests, kept for the suite-wide convention

CID = "1795597183.14"
PLAIN_START = (
    "MEDIA_START connection_id:wsconn channel:WebSocket/wsconn/0x7f0260004950 "
    f"channel_id:{CID} format:ulaw optimal_frame_size:160 ptime:20"
)
OLD_PLAIN_START = (  # 20.16 / 22.6 / 23.0: no channel_id
    "MEDIA_START connection_id:wsconn channel:WebSocket/wsconn/0x7f0260004950 "
    "format:ulaw optimal_frame_size:160 ptime:20"
)
JSON_START = json.dumps(
    {
        "event": "MEDIA_START",
        "connection_id": "wsconn",
        "channel": "WebSocket/wsconn/0x7f0284003e50",
        "channel_id": CID,
        "format": "ulaw",
        "optimal_frame_size": 160,
        "ptime": 20,
        "channel_variables": {
            "DIALEDPEERNUMBER": "wsconn/c(ulaw)f(json)",
            "MEDIA_WEBSOCKET_CONNECTION_ID": "wsconn",
            "MEDIA_WEBSOCKET_OPTIMAL_FRAME_SIZE": "160",
        },
    },
    separators=(",", ":"),
)


def started(start: str = PLAIN_START, **kwargs: object) -> AsteriskWsProtocol:
    proto = AsteriskWsProtocol(**kwargs)  # type: ignore[arg-type]
    events = text_in(proto, start)
    assert len(events) == 1 and isinstance(events[0], CallStarted), events
    return proto


def text_len(item: str | bytes) -> int:
    return len(item.encode() if isinstance(item, str) else item)


# --------------------------------------------------------------------------- MEDIA_START


@pytest.mark.parametrize(
    ("codec", "expected"),
    [
        ("ulaw", ULAW_8K),
        ("alaw", ALAW_8K),
        ("slin", PCM16_8K),
        ("slin16", PCM16_16K),
        ("slin12", AudioFormat(Encoding.PCM16, 12000)),
        ("slin24", AudioFormat(Encoding.PCM16, 24000)),
        ("slin44", AudioFormat(Encoding.PCM16, 44100)),
        ("slin48", AudioFormat(Encoding.PCM16, 48000)),
        ("slin192", AudioFormat(Encoding.PCM16, 192000)),
        ("g722", None),
        ("opus", None),
        ("slin17", None),
        ("sln16", None),
        ("", None),
    ],
)
def test_audio_format_for(codec: str, expected: AudioFormat | None) -> None:
    assert audio_format_for(codec) == expected


def test_plain_media_start() -> None:
    proto = AsteriskWsProtocol(query={"call_id": "abc123", "lang": "en"})
    [event] = text_in(proto, PLAIN_START)
    assert event == CallStarted(
        call_id=CID,
        transport=Transport.ASTERISK_WS,
        audio_format=ULAW_8K,
        stream_id="WebSocket/wsconn/0x7f0260004950",
        metadata={
            "call_id": "abc123",
            "lang": "en",
            "connection_id": "wsconn",
            "channel": "WebSocket/wsconn/0x7f0260004950",
        },
    )
    assert proto.frame_size == 160 and proto.ptime_ms == 20
    assert proto.control_format is ControlFormat.PLAIN
    assert proto.tracking is Tracking.BYTE_CLOCK  # plain text cannot prove MARK_MEDIA exists
    assert proto.has_channel_id


def test_json_media_start_metadata_and_format() -> None:
    proto = AsteriskWsProtocol(
        query={"exten": "100", "DIALEDPEERNUMBER": "from-query"},
        forward_variables=("MEDIA_WEBSOCKET_CONNECTION_ID", "DIALEDPEERNUMBER"),
    )
    [event] = text_in(proto, JSON_START)
    assert isinstance(event, CallStarted)
    assert event.call_id == CID
    assert event.metadata["MEDIA_WEBSOCKET_CONNECTION_ID"] == "wsconn"  # allow-listed
    assert "MEDIA_WEBSOCKET_OPTIMAL_FRAME_SIZE" not in event.metadata  # not allow-listed
    assert event.metadata["exten"] == "100"
    assert event.metadata["DIALEDPEERNUMBER"] == "from-query"  # query wins over variables
    assert proto.control_format is ControlFormat.JSON
    assert proto.tracking is Tracking.MARK_MEDIA  # JSON arrived with MARK_MEDIA (>= 23.2)


def test_old_version_start_without_channel_id_uses_channel_name() -> None:
    proto = AsteriskWsProtocol()
    [event] = text_in(proto, OLD_PLAIN_START)
    assert isinstance(event, CallStarted)
    assert event.call_id == "WebSocket/wsconn/0x7f0260004950"
    assert not proto.has_channel_id


def test_start_trailing_newline_and_missing_ptime_frame_size() -> None:
    proto = AsteriskWsProtocol()
    [event] = text_in(proto, "MEDIA_START connection_id:c1 channel_id:9.1 format:slin16\n")
    assert isinstance(event, CallStarted) and event.audio_format == PCM16_16K
    assert proto.frame_size == 640  # derived: 20 ms of slin16


@pytest.mark.parametrize(
    ("text", "reason", "fatal"),
    [
        (
            "MEDIA_START channel_id:1.1 format:g722 optimal_frame_size:160",
            "unsupported_codec",
            True,
        ),
        ("MEDIA_START channel_id:1.1 optimal_frame_size:160", "unsupported_codec", True),
        ("MEDIA_START channel_id:1.1 format:ulaw optimal_frame_size:0", "bad_media_start", True),
        ("MEDIA_START channel_id:1.1 format:ulaw optimal_frame_size:x", "bad_media_start", True),
        ("MEDIA_START channel_id:1.1 format:slin optimal_frame_size:321", "bad_media_start", True),
        ("MEDIA_START format:ulaw optimal_frame_size:160", "bad_media_start", True),
        (
            '{"event":"MEDIA_START","channel_id":"1","format":"ulaw","optimal_frame_size":-5}',
            "bad_media_start",
            True,
        ),
    ],
)
def test_bad_media_start(text: str, reason: str, fatal: bool) -> None:
    proto = AsteriskWsProtocol()
    [event] = text_in(proto, text)
    assert isinstance(event, Malformed) and event.reason == reason and event.fatal is fatal
    assert not proto.started
    assert data_in(proto, b"\xff" * 160) == []  # dead after a fatal error


def test_duplicate_start_is_not_fatal() -> None:
    proto = started()
    assert text_in(proto, PLAIN_START) == [Malformed("duplicate_start")]
    assert data_in(proto, b"\xff" * 160) == [CallerAudio(b"\xff" * 160)]


# --------------------------------------------------------------------------- events table

EVENTS: list[tuple[str, str, list[InboundEvent]]] = [
    # (plain text, JSON, expected) -- one row per event of the reference (§2.5)
    (
        f"DTMF_END digit:5 channel_id:{CID}",
        f'{{"event":"DTMF_END","channel_id":"{CID}","digit":"5"}}',
        [Dtmf("5")],
    ),
    (
        f"DTMF_END digit:# channel_id:{CID}",
        f'{{"event":"DTMF_END","channel_id":"{CID}","digit":"#"}}',
        [Dtmf("#")],
    ),
    ("MEDIA_XOFF", f'{{"event":"MEDIA_XOFF","channel_id":"{CID}"}}', [OutboundFlow(True)]),
    ("MEDIA_XON", f'{{"event":"MEDIA_XON","channel_id":"{CID}"}}', [OutboundFlow(False)]),
    ("QUEUE_DRAINED", f'{{"event":"QUEUE_DRAINED","channel_id":"{CID}"}}', [PlaybackDrained()]),
    (
        f"STATUS channel_id:{CID} queue_length:0 xon_level:800 xoff_level:900 queue_full:false "
        "bulk_media:false media_paused:false",
        f'{{"event":"STATUS","channel_id":"{CID}","queue_length":0,"xon_level":800,'
        '"xoff_level":900,"queue_full":false,"bulk_media":false,"media_paused":false}',
        [Ignored("status")],
    ),
    (
        "STATUS queue_length:0 xon_level:800 xoff_level:900 queue_full:false bulk_media:false "
        "media_paused:false",  # old releases: no channel_id
        '{"event":"STATUS","queue_length":3}',
        [Ignored("status")],
    ),
    (
        "MEDIA_BUFFERING_COMPLETED b1",
        f'{{"event":"MEDIA_BUFFERING_COMPLETED","channel_id":"{CID}","correlation_id":"b1"}}',
        [Ignored("buffering_completed")],
    ),
    (
        "MEDIA_BUFFERING_COMPLETED",
        f'{{"event":"MEDIA_BUFFERING_COMPLETED","channel_id":"{CID}","correlation_id":""}}',
        [Ignored("buffering_completed")],
    ),
    (
        "MEDIA_MARK_PROCESSED zz9",
        f'{{"event":"MEDIA_MARK_PROCESSED","channel_id":"{CID}","correlation_id":"zz9"}}',
        [Ignored("unknown_mark")],
    ),
    (
        f"ERROR channel_id:{CID} error_text:SET_MEDIA_DIRECTION only supports JSON format.\n",
        f'{{"event":"ERROR","channel_id":"{CID}","error_text":"Unable to parse JSON command\\n"}}',
        [],
    ),  # checked separately (detail differs)
    ("SOME_FUTURE_EVENT a:b", '{"event":"SOME_FUTURE_EVENT"}', [Ignored("unknown_event")]),
    ("HANGUP", '{"event":"HANGUP"}', [Ignored("unknown_event")]),  # Asterisk never sends it
]


@pytest.mark.parametrize(("plain", "as_json", "expected"), EVENTS)
def test_event_both_formats(plain: str, as_json: str, expected: list[InboundEvent]) -> None:
    for start, text in ((PLAIN_START, plain), (JSON_START, as_json)):
        proto = started(start)
        events = text_in(proto, text)
        if plain.startswith("ERROR"):
            [event] = events
            assert isinstance(event, Malformed) and event.reason == "asterisk_error"
            assert not event.fatal and not event.detail.endswith("\n") and event.detail
        else:
            assert events == expected, text


def test_error_text_keeps_spaces_and_strips_newline() -> None:
    proto = started()
    [event] = text_in(
        proto, f"ERROR channel_id:{CID} error_text:SET_MEDIA_DIRECTION only supports JSON format.\n"
    )
    assert event == Malformed("asterisk_error", "SET_MEDIA_DIRECTION only supports JSON format.")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "bad_control"),
        ("   \n", "bad_control"),
        ("media_start format:ulaw", "bad_control"),
        ("DTMF_END digit5", "bad_control"),
        ("DTMF_END :5", "bad_control"),
        ("{not json", "bad_json"),
        ('{"command":"GET_STATUS"}', "bad_control"),
        ('{"event":42}', "bad_control"),
        ("[1,2]", "bad_control"),
        ("DTMF_END digit:X", "bad_dtmf"),
        ("DTMF_END digit:12", "bad_dtmf"),
        ('{"event":"DTMF_END","digit":true}', "bad_dtmf"),
        ("\x00\x01garbage", "bad_control"),
    ],
)
def test_malformed_control(text: str, reason: str) -> None:
    proto = started()
    [event] = text_in(proto, text)
    assert isinstance(event, Malformed) and event.reason == reason and not event.fatal
    assert text_in(proto, f"DTMF_END digit:1 channel_id:{CID}") == [Dtmf("1")]


def test_oversized_text_and_binary() -> None:
    proto = started(max_message_bytes=1000)
    [event] = text_in(proto, "DTMF_END digit:1 x:" + "a" * 1000)
    assert isinstance(event, Malformed) and event.reason == "oversized_message"
    [event] = data_in(proto, b"\xff" * 1001)
    assert isinstance(event, Malformed) and event.reason == "oversized_message"
    assert data_in(proto, b"\xff" * 1000) == [CallerAudio(b"\xff" * 1000)]


def test_events_before_start() -> None:
    proto = AsteriskWsProtocol()
    assert data_in(proto, b"\xff" * 160) == [Malformed("audio_before_start", "160 bytes")]
    [event] = text_in(proto, "DTMF_END digit:1")
    assert isinstance(event, Malformed) and event.reason == "before_start"
    assert isinstance(text_in(proto, PLAIN_START)[0], CallStarted)


def test_binary_audio_rules() -> None:
    proto = started()
    assert data_in(proto, b"\xff" * 12) == [CallerAudio(b"\xff" * 12)]  # short last piece
    assert data_in(proto, b"") == [Ignored("empty_audio")]
    slin = started(
        PLAIN_START.replace(
            "format:ulaw optimal_frame_size:160", "format:slin optimal_frame_size:320"
        )
    )
    [event] = data_in(slin, b"\x00" * 25)
    assert isinstance(event, Malformed) and event.reason == "partial_sample"
    assert data_in(slin, b"\x00" * 24) == [CallerAudio(b"\x00" * 24)]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_junk_text_never_raises(junk: str) -> None:
    proto = started()
    for event in text_in(proto, junk):
        assert isinstance(event, (Malformed, Ignored, Dtmf, OutboundFlow, PlaybackDrained))


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=400))
def test_junk_binary_never_raises(junk: bytes) -> None:
    proto = started()
    assert all(isinstance(e, (CallerAudio, Ignored, Malformed)) for e in data_in(proto, junk))


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (None, "remote_hangup"),
        (1000, "remote_hangup"),
        (1001, "remote_hangup"),
        (1009, "message_too_big"),
        (1011, "remote_error"),
    ],
)
def test_closed(code: int | None, reason: str) -> None:
    proto = started()
    assert reported(proto, lambda: proto.receive_eof(code)) == [CallEnded(reason)]
    assert reported(proto, lambda: proto.receive_eof(code)) == []
    assert data_in(proto, b"\xff" * 160) == []


def test_closed_after_our_hangup() -> None:
    proto = started()
    assert send_out(proto, Hangup()) == ["HANGUP"]
    assert send_out(proto, PlayAudio(b"\xff" * 160)) == []  # nothing after HANGUP
    assert reported(proto, lambda: proto.receive_eof(1000)) == [CallEnded("local_hangup")]


# --------------------------------------------------------------------------- outbound


@pytest.mark.parametrize("chunk", [1, 7, 100, 159, 160, 161, 250, 1000, 8000, 70000])
def test_play_audio_sends_exact_frame_multiples(chunk: int) -> None:
    proto = started()
    audio = bytes(range(256)) * 100  # 25600 bytes = 160 frames exactly
    sent: list[bytes] = []
    for i in range(0, len(audio), chunk):
        for item in send_out(proto, PlayAudio(audio[i : i + chunk])):
            assert isinstance(item, bytes)
            sent.append(item)
    sent += [b for b in produced(proto, proto.flush_audio) if isinstance(b, bytes)]
    assert all(len(m) % 160 == 0 and 0 < len(m) <= MAX_OUT_MESSAGE_BYTES for m in sent)
    assert b"".join(sent) == audio
    assert proto.bytes_sent == len(audio)


@pytest.mark.parametrize(
    ("start", "silence_byte"),
    [
        (PLAIN_START, 0xFF),
        (PLAIN_START.replace("format:ulaw", "format:alaw"), 0xD5),
        (
            PLAIN_START.replace(
                "format:ulaw optimal_frame_size:160", "format:slin optimal_frame_size:320"
            ),
            0x00,
        ),
    ],
)
def test_flush_pads_with_codec_silence(start: str, silence_byte: int) -> None:
    proto = started(start)
    assert send_out(proto, PlayAudio(b"\x01\x02" * 25)) == []  # 50 bytes carried
    [frame] = produced(proto, proto.flush_audio)
    assert isinstance(frame, bytes) and len(frame) == proto.frame_size
    assert frame[:50] == b"\x01\x02" * 25
    assert set(frame[50:]) == {silence_byte}
    assert produced(proto, proto.flush_audio) == []


def test_big_play_audio_is_split_and_budgeted() -> None:
    proto = started(frames_per_message=400)
    out = send_out(proto, PlayAudio(b"\xff" * 160 * 1000))  # 20 s in one event
    audio = [m for m in out if isinstance(m, bytes)]
    assert all(len(m) <= MAX_OUT_MESSAGE_BYTES for m in audio)
    # Only 800 frames may be in flight (XOFF comes at 900, drops at 1000); the rest waits
    # for proof of playout, which the byte clock asks for with REPORT_QUEUE_DRAINED.
    assert sum(map(len, audio)) == proto.bytes_sent == 160 * 800
    assert out[-1] == "REPORT_QUEUE_DRAINED"
    assert text_in(proto, "QUEUE_DRAINED") == [PlaybackDrained()]
    rest = pending(proto)
    assert sum(len(m) for m in rest if isinstance(m, bytes)) == 160 * 200


@pytest.mark.parametrize(
    "kwargs",
    [
        {"frames_per_message": 0},
        {"max_queued_frames": 900},
        {"frames_per_message": 500},
        {"max_message_bytes": 0},
    ],
)
def test_bad_limits_rejected(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        AsteriskWsProtocol(**kwargs)  # type: ignore[arg-type]


def test_mark_media_json() -> None:
    proto = started(JSON_START)
    out = send_out(proto, PlayAudio(b"\x00" * 200))
    out += send_out(proto, SetMark("utterance-1"))
    assert out[0] == b"\x00" * 160
    assert out[1] == b"\x00" * 40 + b"\xff" * 120  # the mark flushes the partial frame
    assert json.loads(out[2]) == {"command": "MARK_MEDIA", "correlation_id": "m1"}
    echo = f'{{"event":"MEDIA_MARK_PROCESSED","channel_id":"{CID}","correlation_id":"m1"}}'
    assert text_in(proto, echo) == [MarkPlayed("utterance-1", True)]
    assert text_in(proto, echo) == [Ignored("unknown_mark")]  # only once


def test_mark_media_plain_when_forced() -> None:
    proto = started(mark_media=True)
    assert proto.tracking is Tracking.MARK_MEDIA
    assert send_out(proto, SetMark("a b c")) == ["MARK_MEDIA m1"]
    assert text_in(proto, "MEDIA_MARK_PROCESSED m1") == [MarkPlayed("a b c", True)]


def test_long_mark_names_stay_under_128_bytes() -> None:
    for start in (PLAIN_START, JSON_START):
        proto = started(start, mark_media=True)
        for i in range(2000):
            for item in send_out(proto, SetMark("x" * 500 + str(i))):
                assert text_len(item) < MAX_TEXT_COMMAND_BYTES


def test_command_guard_refuses_long_text() -> None:
    proto = started()
    with pytest.raises(ValueError, match="ignore"):
        proto._command("MARK_MEDIA", "y" * 120)


def test_clear_json_retires_marks_and_reports_drained() -> None:
    proto = started(JSON_START)
    send_out(proto, PlayAudio(b"\x00" * 1600))
    send_out(proto, SetMark("a"))
    send_out(proto, PlayAudio(b"\x00" * 1600))
    send_out(proto, SetMark("b"))
    send_out(proto, PlayAudio(b"\x00" * 100))  # partial frame carried, must be dropped by clear
    out = send_out(proto, ClearAudio())
    assert [json.loads(t)["command"] for t in out if isinstance(t, str)] == [
        "FLUSH_MEDIA",
        "REPORT_QUEUE_DRAINED",
    ]
    assert events(proto) == [MarkPlayed("a", False), MarkPlayed("b", False)]
    assert events(proto) == []
    assert produced(proto, proto.flush_audio) == []  # carry was dropped
    assert proto.pending_marks == 0


def test_clear_after_pause_continues_media() -> None:
    proto = started()
    assert produced(proto, proto.pause_media) == ["PAUSE_MEDIA"]
    assert send_out(proto, ClearAudio()) == [
        "FLUSH_MEDIA",
        "CONTINUE_MEDIA",
        "REPORT_QUEUE_DRAINED",
    ]
    assert send_out(proto, ClearAudio()) == ["FLUSH_MEDIA", "REPORT_QUEUE_DRAINED"]


def test_byte_clock_marks_confirmed_by_queue_drained() -> None:
    proto = started()  # plain text -> byte clock
    assert send_out(proto, PlayAudio(b"\xff" * 320)) == [b"\xff" * 320]
    assert send_out(proto, SetMark("a")) == ["REPORT_QUEUE_DRAINED"]
    assert send_out(proto, PlayAudio(b"\xff" * 320)) == [b"\xff" * 320]
    assert send_out(proto, SetMark("b")) == []  # a request is already outstanding
    events = text_in(proto, "QUEUE_DRAINED")
    # Only "a" is proven: "b" was set after the request, so we ask again.
    assert events == [MarkPlayed("a", True), PlaybackDrained()]
    assert pending(proto) == ["REPORT_QUEUE_DRAINED"]
    assert text_in(proto, "QUEUE_DRAINED") == [MarkPlayed("b", True), PlaybackDrained()]
    assert pending(proto) == []


def test_byte_clock_marks_reached() -> None:
    proto = started()
    send_out(proto, PlayAudio(b"\xff" * 320))
    send_out(proto, SetMark("a"))
    send_out(proto, PlayAudio(b"\xff" * 320))
    send_out(proto, SetMark("b"))
    assert proto.marks_reached(319) == []
    assert proto.marks_reached(320) == [MarkPlayed("a", True)]
    assert proto.marks_reached(10_000) == [MarkPlayed("b", True)]


def test_xoff_holds_audio_and_marks_in_order_until_xon() -> None:
    proto = started(JSON_START)
    assert text_in(proto, '{"event":"MEDIA_XOFF"}') == [OutboundFlow(True)]
    assert proto.flow_paused
    assert send_out(proto, PlayAudio(b"\x01" * 160)) == []
    assert send_out(proto, SetMark("m")) == []
    assert send_out(proto, PlayAudio(b"\x02" * 160)) == []
    assert proto.bytes_sent == 0
    assert text_in(proto, '{"event":"MEDIA_XON"}') == [OutboundFlow(False)]
    out = pending(proto)
    assert out[0] == b"\x01" * 160 and out[2] == b"\x02" * 160
    assert isinstance(out[1], str) and json.loads(out[1])["command"] == "MARK_MEDIA"
    assert proto.bytes_sent == 320


def test_clear_during_xoff_drops_held_audio() -> None:
    proto = started()
    text_in(proto, "MEDIA_XOFF")
    send_out(proto, PlayAudio(b"\x01" * 1600))
    assert send_out(proto, ClearAudio()) == ["FLUSH_MEDIA", "REPORT_QUEUE_DRAINED"]
    text_in(proto, "MEDIA_XON")
    assert pending(proto) == []


def test_control_format_forced() -> None:
    proto = started(control_format="json")
    assert send_out(proto, Hangup()) == ['{"command":"HANGUP"}']
    proto = started(JSON_START, control_format=ControlFormat.PLAIN)
    assert produced(proto, proto.answer) == ["ANSWER"]


def test_send_before_start() -> None:
    proto = AsteriskWsProtocol()
    assert send_out(proto, ClearAudio()) == []
    with pytest.raises(RuntimeError):
        send_out(proto, PlayAudio(b"\xff"))
    assert send_out(proto, Hangup()) == ["HANGUP"]
