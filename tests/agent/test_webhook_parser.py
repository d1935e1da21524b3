"""ReplyParser (sans-I/O): tables of (wire body, expected parts), fed whole and split."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.agent.webhook import (
    Action,
    AgentError,
    AgentRequest,
    Interruption,
    ReplyParser,
    ReplyPart,
    TextDelta,
    build_request,
    parse_reply_object,
)


def nd(*objs: object) -> bytes:
    return b"".join(json.dumps(o, ensure_ascii=False).encode() + b"\n" for o in objs)


AGENT = {"nodeName": "Conversation Agent"}
RESPOND = {"nodeName": "Respond to Webhook"}
N8N_STREAM = nd(
    {"type": "begin", "metadata": AGENT},
    {"type": "item", "content": "شكرا لاتصالك", "metadata": AGENT},
    {"type": "item", "content": " بنا. كيف", "metadata": AGENT},
    {"type": "tool-call-start", "metadata": AGENT},
    {"type": "tool-call-end", "metadata": AGENT},
    {"type": "item", "content": " أساعدك؟", "metadata": AGENT},
    {
        "type": "item",
        "content": json.dumps({"output": "شكرا لاتصالك بنا. كيف أساعدك؟"}),
        "metadata": RESPOND,
    },
    {"type": "end", "metadata": AGENT},
)


def sse(*events: object) -> bytes:
    out = b""
    for e in events:
        data = e if isinstance(e, str) else json.dumps(e, ensure_ascii=False)
        out += b"data: " + data.encode() + b"\n\n"
    return out


def delta(text: str) -> dict[str, object]:
    return {"choices": [{"index": 0, "delta": {"content": text}}]}


OK_CASES: list[tuple[str, bytes, list[ReplyPart]]] = [
    (
        "n8n stream: deltas, final answer not spoken twice",
        N8N_STREAM,
        [TextDelta("شكرا لاتصالك"), TextDelta(" بنا. كيف"), TextDelta(" أساعدك؟")],
    ),
    (
        "n8n final answer alone is spoken",
        nd(
            {"type": "begin"},
            {"type": "item", "content": '{"output": "Hello there"}'},
            {"type": "end"},
        ),
        [TextDelta("Hello there")],
    ),
    (
        "n8n final answer adds text beyond the deltas",
        nd(
            {"type": "item", "content": "Hello", "metadata": AGENT},
            {"type": "item", "content": '{"output": "Hello world"}', "metadata": RESPOND},
        ),
        [TextDelta("Hello"), TextDelta(" world")],
    ),
    (
        "n8n final answer with a hangup action",
        nd(
            {"type": "item", "content": "Goodbye.", "metadata": AGENT},
            {
                "type": "item",
                "content": '{"output": "Goodbye.", "hangup": true}',
                "metadata": RESPOND,
            },
        ),
        [TextDelta("Goodbye."), Action("hangup")],
    ),
    (
        "n8n plain-text respond node repeating the deltas is dropped",
        nd(
            {"type": "item", "content": "Hi there. ", "metadata": AGENT},
            {"type": "item", "content": "friend", "metadata": AGENT},
            {"type": "item", "content": "Hi there.  friend", "metadata": RESPOND},
        ),
        [TextDelta("Hi there. "), TextDelta("friend")],
    ),
    (
        "n8n with CRLF, blank lines and a junk line after text",
        b'{"type":"begin"}\r\n\r\n{"type":"item","content":"Hi"}\r\nnot json\r\n{"type":"end"}\r\n',
        [TextDelta("Hi")],
    ),
    (
        "n8n without a trailing newline",
        b'{"type":"item","content":"Hi"}\n{"type":"item","content":" you"}',
        [TextDelta("Hi"), TextDelta(" you")],
    ),
    ("plain JSON output", b'{"output": "Hello"}', [TextDelta("Hello")]),
    ("plain JSON reply, pretty printed", b'{\n  "reply": "Hello"\n}\n', [TextDelta("Hello")]),
    ("plain JSON text key", b'{"text": "Hello"}', [TextDelta("Hello")]),
    ("plain JSON list (n8n all items)", b'[{"output": "Hello"}]', [TextDelta("Hello")]),
    (
        "plain JSON OpenAI non-streaming",
        b'{"choices":[{"message":{"role":"assistant","content":"Hello"}}]}',
        [TextDelta("Hello")],
    ),
    (
        "plain JSON flat hangup",
        b'{"output": "Bye", "hangup": true}',
        [TextDelta("Bye"), Action("hangup")],
    ),
    (
        "plain JSON flat transfer",
        b'{"output": "One moment", "transfer": "+12025550123"}',
        [TextDelta("One moment"), Action("transfer", "+12025550123")],
    ),
    (
        "plain JSON action name",
        b'{"output": "Bye", "action": "hangup"}',
        [TextDelta("Bye"), Action("hangup")],
    ),
    (
        "plain JSON action name with target beside it",
        b'{"output": "Wait", "action": "transfer", "target": "sip:desk@pbx.example.com"}',
        [TextDelta("Wait"), Action("transfer", "sip:desk@pbx.example.com")],
    ),
    (
        "plain JSON action object",
        b'{"output": "Wait", "action": {"type": "transfer", "to": "+1"}}',
        [TextDelta("Wait"), Action("transfer", "+1")],
    ),
    (
        "plain JSON actions list",
        b'{"output": "", "actions": ["hangup", {"transfer": "+1"}]}',
        [Action("hangup"), Action("transfer", "+1")],
    ),
    (
        "plain JSON unknown action ignored",
        b'{"output": "Hi", "action": "dance"}',
        [TextDelta("Hi")],
    ),
    ("plain JSON only an action", b'{"hangup": true}', [Action("hangup")]),
    ("text/plain", "مرحبا، كيف حالك؟".encode(), [TextDelta("مرحبا، كيف حالك؟")]),
    ("text/plain with leading whitespace", b"  \n Hello", [TextDelta("Hello")]),
    ("text/plain starting like a word of SSE", b"dance with me", [TextDelta("dance with me")]),
    (
        "SSE OpenAI stream",
        sse(
            {"choices": [{"delta": {"role": "assistant"}}]},
            delta("Hel"),
            delta("lo"),
            {"choices": [{"delta": {}, "finish_reason": "stop"}]},
            "[DONE]",
        ),
        [TextDelta("Hel"), TextDelta("lo")],
    ),
    (
        "SSE with comments, event names, CRLF and no space after colon",
        b": keepalive\r\nevent: message\r\ndata:" + json.dumps(delta("Hi")).encode() + b"\r\n\r\n"
        b"data: [DONE]\r\n\r\n",
        [TextDelta("Hi")],
    ),
    (
        "SSE ignores anything after [DONE]",
        sse(delta("Hi"), "[DONE]") + b"data: garbage\n\n",
        [TextDelta("Hi")],
    ),
    (
        "SSE anthropic-style delta.text",
        sse({"type": "content_block_delta", "delta": {"type": "text_delta", "text": "Hi"}}),
        [TextDelta("Hi")],
    ),
    (
        "SSE multi-line data field",
        b'data: {"choices":[{"delta":\ndata: {"content":"Hi"}}]}\n\n',
        [TextDelta("Hi")],
    ),
]

ERROR_CASES: list[tuple[str, bytes, str]] = [
    ("empty body", b"", "empty"),
    ("whitespace body", b"  \n ", "empty"),
    ("n8n without items", nd({"type": "begin"}, {"type": "end"}), "empty"),
    ("n8n error chunk", nd({"type": "begin"}, {"type": "error", "content": "boom"}), "agent_error"),
    ("JSON with empty output", b'{"output": ""}', "empty"),
    ("JSON without a text key", b'{"foo": 1}', "malformed"),
    ("broken JSON", b'{"output": "unterminated', "malformed"),
    ("JSON scalar", b"[1, 2]", "malformed"),
    ("HTML error page", b"<!DOCTYPE html><html><body>502</body></html>", "malformed"),
    ("binary garbage", b"\x00\xff\xfe<<not a reply>>\x81", "malformed"),
    ("invalid UTF-8 text", b"Hello \xff\xfe world", "malformed"),
    ("SSE error object", sse({"error": {"message": "rate limited"}}), "agent_error"),
    ("SSE of junk only", b"data: nope\n\ndata: still nope\n\n", "malformed"),
    ("SSE with DONE only", sse("[DONE]"), "empty"),
]


def parse(body: bytes, pieces: int | None = None) -> list[ReplyPart]:
    """Feed ``body`` whole (None), byte by byte (1) or in ``pieces``-byte pieces."""
    parser = ReplyParser()
    out: list[ReplyPart] = []
    step = (len(body) or 1) if pieces is None else pieces
    for i in range(0, len(body), step):
        out += parser.feed(body[i : i + step])
    return out + parser.end()


def merged(parts: list[ReplyPart]) -> list[ReplyPart]:
    """Adjacent text deltas joined: how a reply reads, whatever the chunking."""
    out: list[ReplyPart] = []
    for p in parts:
        if isinstance(p, TextDelta) and out and isinstance(out[-1], TextDelta):
            out[-1] = TextDelta(out[-1].text + p.text)
        else:
            out.append(p)
    return out


@pytest.mark.parametrize(
    ("body", "expected"), [c[1:] for c in OK_CASES], ids=[c[0] for c in OK_CASES]
)
@pytest.mark.parametrize("pieces", [None, 1, 7])
def test_reply_forms(body: bytes, expected: list[ReplyPart], pieces: int | None) -> None:
    got = parse(body, pieces)
    if pieces is None:
        assert got == expected
    else:
        # Plain text and UTF-8 may be delivered in more, smaller deltas when split.
        assert merged(got) == merged(expected)


@pytest.mark.parametrize(
    ("body", "kind"), [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES]
)
@pytest.mark.parametrize("pieces", [None, 1, 5])
def test_unusable_replies_raise_typed_errors(body: bytes, kind: str, pieces: int | None) -> None:
    with pytest.raises(AgentError) as info:
        parse(body, pieces)
    assert info.value.kind == kind


def test_deltas_are_released_before_the_body_ends() -> None:
    parser = ReplyParser()
    assert parser.feed(N8N_STREAM[:60]) == []  # the begin line is not complete yet
    first_two = N8N_STREAM.split(b"\n")[:2]
    out = parser.feed(N8N_STREAM[60 : len(b"\n".join(first_two)) + 1])
    assert out == [TextDelta("شكرا لاتصالك")]
    assert parser.form == "ndjson"


def test_sse_deltas_are_released_per_event() -> None:
    parser = ReplyParser()
    assert parser.feed(b"da") == []  # could be "data:" or plain text: wait
    assert parser.feed(b"ta: " + json.dumps(delta("Hi")).encode() + b"\n") == []
    assert parser.feed(b"\n") == [TextDelta("Hi")]
    assert parser.form == "sse"


def test_plain_text_streams_and_survives_split_utf8() -> None:
    parser = ReplyParser()
    data = "مرحبا".encode()
    out = parser.feed(data[:3]) + parser.feed(data[3:]) + parser.end()
    assert "".join(p.text for p in out if isinstance(p, TextDelta)) == "مرحبا"
    assert parser.form == "text"


def test_too_large_reply_is_its_own_error_kind() -> None:
    parser = ReplyParser(max_bytes=100)
    parser.feed(b"x" * 60)
    with pytest.raises(AgentError) as info:
        parser.feed(b"x" * 60)
    assert info.value.kind == "too_large"


@settings(max_examples=200, deadline=None)
@given(junk=st.binary(max_size=300), cuts=st.lists(st.integers(1, 50), max_size=10))
def test_any_bytes_give_parts_or_a_typed_error(junk: bytes, cuts: list[int]) -> None:
    parser = ReplyParser()
    pos = 0
    try:
        for c in cuts:
            parser.feed(junk[pos : pos + c])
            pos += c
        parser.feed(junk[pos:])
        parser.end()
    except AgentError as exc:
        assert exc.kind in ("malformed", "empty", "agent_error")


def test_parse_reply_object_shapes() -> None:
    assert parse_reply_object({"reply": "x", "action": {"hangup": True}}) == (
        "x",
        [Action("hangup")],
    )
    assert parse_reply_object({"output": "x", "action": {"transfer": "+1"}}) == (
        "x",
        [Action("transfer", "+1")],
    )
    assert parse_reply_object({"output": "x", "actions": {"kind": "transfer"}}) == (
        "x",
        [Action("transfer", None)],
    )
    # The same action in two shapes is reported once.
    assert parse_reply_object({"hangup": True, "action": "hangup"}) == (None, [Action("hangup")])
    assert parse_reply_object("just a string") == (None, [])


def test_build_request_keeps_the_original_contract() -> None:
    body = build_request(
        AgentRequest(
            event="utterance",
            session_id="CA123",
            turn=2,
            text="مرحبا",
            call_id="CA123",
            transport="twilio",
            metadata={"from": "+1555"},
            params={"customer": "42"},
            interrupted=Interruption(reply="A. B.", heard="A.", heard_ms=900),
        )
    )
    assert body == {
        "text": "مرحبا",
        "session_id": "CA123",
        "event": "utterance",
        "turn": 2,
        "call": {
            "id": "CA123",
            "transport": "twilio",
            "metadata": {"from": "+1555"},
            "params": {"customer": "42"},
        },
        "interrupted": {"reply": "A. B.", "heard": "A.", "heard_ms": 900},
    }
    json.dumps(body)  # serialisable


def test_build_request_dtmf_and_call_ended() -> None:
    dtmf = build_request(AgentRequest(event="dtmf", session_id="s", turn=3, digits="12#"))
    assert dtmf["digits"] == "12#" and dtmf["text"] == "12#" and dtmf["interrupted"] is None
    ended = build_request(
        AgentRequest(event="call.ended", session_id="s", record={"turns": [], "outcome": "ok"})
    )
    assert ended["record"] == {"turns": [], "outcome": "ok"} and ended["text"] == ""
    assert "digits" not in ended and "record" not in dtmf
