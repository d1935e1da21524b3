"""Sans-I/O softphone protocol (gateway.telephony.browser): tables of wire input -> events,
events -> wire output, and the HMAC call tokens."""

from __future__ import annotations

import json

import pytest

from gateway.telephony.browser import (
    MAX_AUDIO_BYTES,
    BrowserMediaProtocol,
    TokenBook,
    issue_token,
    verify_token,
)
from gateway.telephony.events import (
    PCM16_16K,
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
from tests.telephony.wire import data_in, out, text_in

START = json.dumps({"type": "start", "format": {"encoding": "pcm16", "sampleRate": 16000}})


def started(**kwargs: object) -> BrowserMediaProtocol:
    protocol = BrowserMediaProtocol("web-1", metadata={"origin": "http://x"}, **kwargs)  # type: ignore[arg-type]
    text_in(protocol, START)
    protocol.data_to_send()
    return protocol


def reasons(events: list[InboundEvent]) -> list[tuple[str, str, bool]]:
    return [
        (type(e).__name__, e.reason, e.fatal if isinstance(e, Malformed) else False)
        for e in events
        if isinstance(e, Malformed | Ignored)
    ]


def test_start_announces_a_pcm16_16k_browser_call_with_the_token_call_id() -> None:
    protocol = BrowserMediaProtocol("web-abc", metadata={"origin": "http://127.0.0.1:1"})
    events = text_in(protocol, START)
    assert events == [
        CallStarted(
            call_id="web-abc",
            transport=Transport.BROWSER,
            audio_format=PCM16_16K,
            stream_id="web-abc",
            metadata={"origin": "http://127.0.0.1:1"},
        )
    ]
    assert [json.loads(m) for m in protocol.data_to_send()] == [
        {"type": "started", "call_id": "web-abc"}
    ]
    assert protocol.data_to_send() == ()  # drained; nothing allocated when empty


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("not json", [("Malformed", "invalid_json", False)]),
        ("[1,2]", [("Malformed", "not_an_object", False)]),
        ('{"type": 3}', [("Malformed", "not_an_object", False)]),
        ('{"type":"mark","name":"m"}', [("Malformed", "media_before_start", False)]),
        ('{"type":"dtmf","digit":"1"}', [("Malformed", "media_before_start", False)]),
        ('{"type":"whatever"}', [("Ignored", "unknown_type", False)]),
        (
            '{"type":"start","format":{"encoding":"pcm16","sampleRate":48000}}',
            [("Malformed", "unsupported_format", True)],
        ),
        ('{"type":"start"}', [("Malformed", "unsupported_format", True)]),
        (
            '{"type":"start","format":{"encoding":"pcm16","sampleRate":16000,"channels":2}}',
            [("Malformed", "unsupported_format", True)],
        ),
        ("x" * 5000, [("Malformed", "message_too_large", True)]),
    ],
)
def test_bad_or_unknown_input_before_start(
    text: str, expected: list[tuple[str, str, bool]]
) -> None:
    protocol = BrowserMediaProtocol("web-1")
    assert reasons(text_in(protocol, text)) == expected
    assert not protocol.started


def test_fatal_close_codes() -> None:
    protocol = BrowserMediaProtocol("web-1")
    [too_big] = text_in(protocol, "x" * 5000)
    [bad_format] = text_in(protocol, '{"type":"start","format":{}}')
    assert isinstance(too_big, Malformed) and too_big.close_code == 1009
    assert isinstance(bad_format, Malformed) and bad_format.close_code == 1003
    text_in(protocol, START)
    [second] = text_in(protocol, START)
    assert isinstance(second, Malformed) and (second.reason, second.fatal) == ("second_start", True)
    assert second.close_code == 1008


@pytest.mark.parametrize(
    ("size", "ok"),
    [
        (640, True),
        (2, True),
        (MAX_AUDIO_BYTES, True),
        (0, False),
        (641, False),
        (MAX_AUDIO_BYTES + 2, False),
    ],
)
def test_audio_frames_must_be_whole_samples_within_the_limit(size: int, ok: bool) -> None:
    protocol = started()
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    events = data_in(protocol, data)
    if ok:
        assert events == [CallerAudio(data)]
        [event] = events
        assert isinstance(event, CallerAudio) and event.audio is data  # no copy: hot path
    else:
        assert reasons(events) == [("Malformed", "bad_payload_size", False)]


def test_audio_before_start_is_counted_not_fatal() -> None:
    protocol = BrowserMediaProtocol("web-1")
    assert reasons(data_in(protocol, b"\0" * 640)) == [("Malformed", "media_before_start", False)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"type":"dtmf","digit":"7"}', [Dtmf("7")]),
        ('{"type":"dtmf","digit":"a"}', [Dtmf("A")]),
        ('{"type":"dtmf","digit":"x"}', None),
        ('{"type":"dtmf"}', None),
        ('{"type":"mark","name":"nope"}', [Ignored("unknown_mark")]),
        ('{"type":"mark","name":1}', None),
        ('{"type":"mark","name":"m","played":"yes"}', None),
    ],
)
def test_control_messages_after_start(text: str, expected: list[InboundEvent] | None) -> None:
    events = text_in(started(), text)
    if expected is None:
        assert reasons(events) == [("Malformed", "missing_field", False)]
    else:
        assert events == expected


def test_marks_are_answered_played_or_cleared_by_the_page() -> None:
    protocol = started()
    assert out(protocol, SetMark("t1.first")) == ['{"type":"mark","name":"t1.first"}']
    out(protocol, SetMark("t1.s0"))
    out(protocol, SetMark("t1.s1"))
    assert text_in(protocol, '{"type":"mark","name":"t1.first","played":true}') == [
        MarkPlayed("t1.first", played=True)
    ]
    assert out(protocol, ClearAudio()) == ['{"type":"clear"}']
    # The page answers the marks its clear dropped with played=false; an answer that crossed
    # the clear on the wire keeps its truth (it was played before the page saw the clear).
    assert text_in(protocol, '{"type":"mark","name":"t1.s0","played":true}') == [
        MarkPlayed("t1.s0", played=True)
    ]
    assert text_in(protocol, '{"type":"mark","name":"t1.s1","played":false}') == [
        MarkPlayed("t1.s1", played=False)
    ]
    assert protocol.marks_in_flight == ()
    # A second answer for the same mark is not ours any more.
    assert text_in(protocol, '{"type":"mark","name":"t1.s1"}') == [Ignored("unknown_mark")]


def test_page_hangup_retires_unanswered_marks_then_ends_the_call() -> None:
    protocol = started()
    out(protocol, SetMark("a"))
    out(protocol, SetMark("b"))
    assert text_in(protocol, '{"type":"hangup"}') == [
        MarkPlayed("a", played=False),
        MarkPlayed("b", played=False),
        CallEnded("remote_hangup"),
    ]
    assert data_in(protocol, b"\0" * 640) == [Ignored("after_hangup")]
    assert text_in(protocol, '{"type":"mark","name":"a"}') == [Ignored("after_hangup")]
    assert out(protocol, PlayAudio(b"\0" * 640)) == []


def test_play_audio_is_binary_in_chunks_of_at_most_chunk_ms() -> None:
    protocol = started(chunk_ms=100)
    small = b"\1\0" * 1600  # exactly 100 ms: sent as is, no copy
    [frame] = out(protocol, PlayAudio(small))
    assert frame is small
    big = bytes(range(256)) * 30  # 7680 bytes = 240 ms
    frames = out(protocol, PlayAudio(big))
    assert [len(f) for f in frames] == [3200, 3200, 1280]
    assert b"".join(f for f in frames if isinstance(f, bytes)) == big
    assert out(protocol, PlayAudio(b"")) == []


def test_hangup_is_announced_once_and_nothing_follows() -> None:
    protocol = started()
    assert [json.loads(m) for m in out(protocol, Hangup("agent_hangup"))] == [
        {"type": "hangup", "reason": "agent_hangup"}
    ]
    assert out(protocol, SetMark("late")) == []
    protocol.notify("transcript", {"turn": 1, "text": "x"})
    assert protocol.data_to_send() == ()


def test_send_before_start_is_a_programming_error_except_clear() -> None:
    protocol = BrowserMediaProtocol("web-1")
    with pytest.raises(RuntimeError):
        out(protocol, PlayAudio(b"\0\0"))
    with pytest.raises(RuntimeError):
        out(protocol, SetMark("m"))
    assert out(protocol, ClearAudio()) == []
    with pytest.raises(ValueError):
        out(started(), SetMark(""))


def test_conversation_events_are_queued_as_json_for_the_page() -> None:
    protocol = started()
    protocol.notify("transcript", {"turn": 2, "text": "مرحبا <b>"})
    protocol.notify("speech_end", {"stream_ms": 1480})
    assert [json.loads(m) for m in protocol.data_to_send()] == [
        {"type": "transcript", "turn": 2, "text": "مرحبا <b>"},
        {"type": "speech_end", "stream_ms": 1480},
    ]
    assert protocol.data_to_send() == ()


# ------------------------------------------------------------------------ tokens

KEY = b"k" * 32


def test_token_round_trip_and_expiry() -> None:
    token = issue_token(KEY, "web-1", now=1000.0, ttl=60)
    assert verify_token(KEY, token, now=1059.0) == ("web-1", "ok")
    assert verify_token(KEY, token, now=1060.0) == (None, "expired")


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda t: "", "missing"),
        (lambda t: "abc", "malformed"),
        (lambda t: t + ".x", "malformed"),
        (lambda t: "x" * 300, "malformed"),
        # A longer life, signed with nothing: the MAC no longer matches.
        (lambda t: t.replace(".1060.", ".9999999999."), "bad_signature"),
        (lambda t: t.replace("web-1.", "web-2."), "bad_signature"),
        (lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"), "bad_signature"),
        (lambda t: t.replace(".1060.", ".١٠٦٠."), "malformed"),  # non-ASCII digits
    ],
)
def test_forged_tokens_are_refused(mangle: object, reason: str) -> None:
    token = issue_token(KEY, "web-1", now=1000.0, ttl=60)
    assert callable(mangle)
    assert verify_token(KEY, mangle(token), now=1001.0) == (None, reason)
    assert verify_token(b"other-key", token, now=1001.0) == (None, "bad_signature")


def test_token_book_accepts_each_token_once_and_forgets_expired_ones() -> None:
    book = TokenBook(KEY, ttl=10)
    call_id, token = book.issue(now=100.0)
    assert call_id.startswith("web-")
    assert book.consume(token, now=101.0) == (call_id, "ok")
    assert book.consume(token, now=102.0) == (None, "reused")
    assert book.consume(token, now=111.0) == (None, "expired")
    _, other = book.issue(now=200.0)
    book.consume(other, now=200.0)
    assert call_id not in book._used  # pruned once its token could no longer be used
