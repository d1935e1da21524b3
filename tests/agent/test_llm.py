"""The built-in LLM agent: the stream parser (sans-I/O) and LlmBrain against a local server
that follows the OpenAI streaming wire format (tests/agent/fake_openai.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.agent.brains import make_brain
from gateway.agent.llm import DTMF_MESSAGE, TOOLS, ChatStreamParser, LlmBrain
from gateway.agent.sentences import SentenceSplitter
from gateway.agent.webhook import (
    Action,
    AgentError,
    AgentRequest,
    Interruption,
    ReplyPart,
    TextDelta,
)
from gateway.config import AgentMode, Settings, load_settings
from tests.agent.fake_openai import OPENAI_REQUESTS_KEY, Answer, make_openai_app
from tests.conftest import TIMEOUT, make_settings

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]

SECRET = "sk-test-0123456789abcdefSECRET"
SYSTEM = "أنت مساعد اختبار."
REPLY = "أهلا بك في خدمة العملاء، كيف أساعدك؟ نحن هنا على مدار الساعة لخدمتك."


def sse(*chunks: Any, done: bool = True) -> bytes:
    """An SSE body: one ``data:`` event per chunk (dicts are JSON-encoded), then [DONE]."""
    out = b""
    for chunk in chunks:
        data = chunk if isinstance(chunk, bytes) else orjson.dumps(chunk)
        out += b"data: " + data + b"\n\n"
    return out + (b"data: [DONE]\n\n" if done else b"")


def delta(finish: str | None = None, **fields: Any) -> dict[str, Any]:
    return {
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": fields, "finish_reason": finish}],
    }


def parse(body: bytes, step: int | None = None) -> list[ReplyPart]:
    parser = ChatStreamParser()
    out: list[ReplyPart] = []
    size = step or len(body) or 1
    for i in range(0, len(body), size):
        out.extend(parser.feed(body[i : i + size]))
    return out + parser.end()


TOOL_BODY = sse(
    delta(role="assistant", content=""),
    delta(content="سأحولك "),
    delta(content="الآن."),
    delta(
        content=None,
        tool_calls=[
            {
                "index": 0,
                "id": "call_1",
                "type": "function",
                "function": {"name": "transfer", "arguments": ""},
            }
        ],
    ),
    delta(tool_calls=[{"index": 0, "function": {"name": "_call"}}]),
    delta(tool_calls=[{"index": 0, "function": {"arguments": '{"tar'}}]),
    delta(tool_calls=[{"index": 0, "function": {"arguments": 'get": "+1555'}}]),
    delta(
        tool_calls=[
            {"index": 1, "id": "call_2", "type": "function", "function": {"name": "end_call"}}
        ]
    ),
    delta(tool_calls=[{"index": 0, "function": {"arguments": '1234567"}'}}]),
    delta("tool_calls"),
)


# ------------------------------------------------------------------ parser


@pytest.mark.parametrize("step", [None, 1, 7])
def test_parser_streams_text_deltas_in_any_split(step: int | None) -> None:
    body = sse(delta(role="assistant", content=""), delta(content="مرحبا"), delta(content=" بك."))
    body += b": keep-alive comment\n\n"
    assert parse(body, step) == [TextDelta("مرحبا"), TextDelta(" بك.")]


@pytest.mark.parametrize("step", [None, 1, 5])
def test_parser_assembles_tool_call_deltas_split_across_chunks(step: int | None) -> None:
    parts = parse(TOOL_BODY, step)
    assert parts == [
        TextDelta("سأحولك "),
        TextDelta("الآن."),
        Action("transfer", "+15551234567"),
        Action("hangup"),
    ]


def test_parser_stops_at_done_and_accepts_crlf() -> None:
    body = sse(delta(content="قبل"), done=True).replace(b"\n", b"\r\n")
    body += sse(delta(content="بعد"), done=False)
    assert parse(body) == [TextDelta("قبل")]


def test_parser_error_event_mid_stream_is_an_agent_error() -> None:
    parser = ChatStreamParser()
    assert parser.feed(sse(delta(content="نص"), done=False)) == [TextDelta("نص")]
    with pytest.raises(AgentError) as info:
        parser.feed(sse({"error": {"message": "overloaded", "type": "server_error"}}))
    assert info.value.kind == "agent_error" and "overloaded" in info.value.detail


def test_parser_body_ending_before_done_is_a_cut_connection() -> None:
    parser = ChatStreamParser()
    assert parser.feed(sse(delta(content="نص"), done=False)) == [TextDelta("نص")]
    with pytest.raises(AgentError) as info:
        parser.end()
    assert info.value.kind == "connect"


def test_parser_accepts_a_finish_reason_without_done() -> None:
    assert parse(sse(delta(content="نص"), delta("stop"), done=False)) == [TextDelta("نص")]


def test_parser_bounds_lines_and_body() -> None:
    with pytest.raises(AgentError) as info:
        ChatStreamParser(max_line=100).feed(b"data: " + b"x" * 200)
    assert info.value.kind == "malformed"
    parser = ChatStreamParser(max_bytes=1000)
    with pytest.raises(AgentError) as info:
        for _ in range(20):
            parser.feed(sse(delta(content="x" * 40), done=False))
    assert info.value.kind == "too_large"


def test_parser_empty_and_garbage_replies() -> None:
    with pytest.raises(AgentError) as info:
        parse(sse(delta(role="assistant", content=""), delta("stop")))
    assert info.value.kind == "empty"
    with pytest.raises(AgentError) as info:
        parse(b"data: not json\n\ndata: [DONE]\n\n")
    assert info.value.kind == "malformed"


def test_parser_unknown_tool_is_ignored_and_bad_transfer_args_keep_the_transfer() -> None:
    call = {"index": 0, "id": "c", "type": "function"}
    body = sse(
        delta(content="حسنا."),
        delta(tool_calls=[dict(call, function={"name": "lookup_weather", "arguments": "{}"})]),
        delta(tool_calls=[dict(call, index=1, function={"name": "transfer_call"})]),
        delta(tool_calls=[{"index": 1, "function": {"arguments": "{not json"}}]),
        delta("tool_calls"),
    )
    assert parse(body) == [TextDelta("حسنا."), Action("transfer")]


def test_parser_accepts_a_non_streamed_completion() -> None:
    body = orjson.dumps(
        {
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": "وداعا.",
                        "tool_calls": [
                            {
                                "id": "c",
                                "type": "function",
                                "function": {"name": "end_call", "arguments": "{}"},
                            }
                        ],
                    },
                    "finish_reason": "tool_calls",
                }
            ],
        }
    )
    assert parse(body, 9) == [TextDelta("وداعا."), Action("hangup")]


def test_parser_scans_each_byte_once() -> None:
    """A long line arriving in small reads is searched for its newline once, not per read
    (the quadratic re-scan the webhook parser had)."""
    parser = ChatStreamParser()
    line = b"data: " + orjson.dumps(delta(content="x" * 50_000))
    scanned = 0
    original = bytearray.find

    class Counting(bytearray):
        def find(self, sub: Any, start: Any = None, *args: Any) -> int:  # type: ignore[override]
            nonlocal scanned
            scanned += len(self) - (start or 0)
            return original(self, sub, start, *args)

    parser._buf = Counting()  # type: ignore[assignment]
    for i in range(0, len(line), 10):
        parser.feed(line[i : i + 10])
    parser.feed(b"\n\n")
    assert scanned < 3 * len(line)


# ------------------------------------------------------------------ the brain


def llm_settings(url: str, **overrides: Any) -> Settings:
    knobs: dict[str, Any] = {
        "agent": AgentMode.LLM,
        "llm_base_url": url,
        "llm_api_key": SECRET,
        "llm_model": "test-model",
        "llm_system_prompt": SYSTEM,
        "agent_timeout": 2.0,
    }
    knobs.update(overrides)
    return make_settings(**knobs)


class Llm:
    """A fake server plus a brain pointed at it."""

    def __init__(self, app: web.Application, brain: LlmBrain) -> None:
        self.app = app
        self.brain = brain

    @property
    def requests(self) -> list[dict[str, Any]]:
        return self.app[OPENAI_REQUESTS_KEY]

    def messages(self, index: int = -1) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = self.requests[index]["body"]["messages"]
        return messages

    async def ask(self, request: AgentRequest) -> list[ReplyPart]:
        async with asyncio.timeout(TIMEOUT):
            return [part async for part in self.brain.reply(request)]


@pytest.fixture
async def llm(aiohttp_server: ServerFactory) -> Any:
    sessions: list[aiohttp.ClientSession] = []

    async def build(script: Any, *, server_key: str = SECRET, **overrides: Any) -> Llm:
        app = make_openai_app(script, api_key=server_key)
        server = await aiohttp_server(app)
        session = aiohttp.ClientSession()
        sessions.append(session)
        brain = make_brain(llm_settings(str(server.make_url("/v1")), **overrides), session)
        assert isinstance(brain, LlmBrain)
        return Llm(app, brain)

    yield build
    for session in sessions:
        await session.close()


def utterance(text: str, turn: int = 1, interrupted: Interruption | None = None) -> AgentRequest:
    return AgentRequest("utterance", "CA1", turn, text=text, interrupted=interrupted)


def text_of(parts: list[ReplyPart]) -> str:
    return "".join(p.text for p in parts if isinstance(p, TextDelta))


async def test_streamed_text_becomes_sentences_and_the_request_is_openai_shaped(
    llm: Any,
) -> None:
    r: Llm = await llm([Answer(REPLY, piece_chars=3)])
    parts = await r.ask(utterance("مرحبا"))
    assert len(parts) > 10  # streamed as deltas, not one block
    splitter = SentenceSplitter()
    sentences = [s for p in parts if isinstance(p, TextDelta) for s in splitter.push(p.text)]
    sentences += splitter.flush()
    assert sentences == [
        "أهلا بك في خدمة العملاء، كيف أساعدك؟",
        "نحن هنا على مدار الساعة لخدمتك.",
    ]
    (request,) = r.requests
    assert request["authorization"] == f"Bearer {SECRET}"
    body = request["body"]
    assert body["model"] == "test-model" and body["stream"] is True
    assert body["tools"] == TOOLS
    assert [t["function"]["name"] for t in body["tools"]] == ["end_call", "transfer_call"]
    assert body["messages"] == [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "مرحبا"},
    ]


async def test_tools_can_be_left_out_and_no_key_sends_no_authorization(llm: Any) -> None:
    r: Llm = await llm([Answer(REPLY)], server_key="", llm_api_key="", llm_tools=False)
    await r.ask(utterance("مرحبا"))
    assert r.requests[0]["authorization"] == ""
    assert "tools" not in r.requests[0]["body"]


@pytest.mark.parametrize("split_name", [False, True])
async def test_tool_call_deltas_map_to_actions(llm: Any, split_name: bool) -> None:
    r: Llm = await llm(
        [
            Answer(
                "سأحولك إلى موظف الآن، انتظر من فضلك.",
                tool_calls=[("transfer_call", '{"target": "sip:agent@pbx.example.com"}')],
                piece_chars=3,
                split_name=split_name,
            ),
            Answer("مع السلامة.", tool_calls=[("end_call", "{}")]),
        ]
    )
    parts = await r.ask(utterance("أريد موظفا"))
    assert text_of(parts) == "سأحولك إلى موظف الآن، انتظر من فضلك."
    assert parts[-1] == Action("transfer", "sip:agent@pbx.example.com")
    parts = await r.ask(utterance("شكرا", 2))
    assert text_of(parts) == "مع السلامة." and parts[-1] == Action("hangup")


@pytest.mark.parametrize(
    ("status", "expected"),
    [(401, "invalid_api_key"), (429, "rate_limit_exceeded"), (500, "server_error")],
)
async def test_error_statuses_raise_http_status_with_the_error_message(
    llm: Any, status: int, expected: str
) -> None:
    server_key = "sk-the-right-key" if status == 401 else SECRET
    r: Llm = await llm([Answer(status=status)], server_key=server_key)
    with pytest.raises(AgentError) as info:
        await r.ask(utterance("مرحبا"))
    assert info.value.kind == "http_status" and info.value.status == status
    assert expected in info.value.detail
    assert SECRET not in str(info.value)


async def test_api_key_never_reaches_logs_or_errors(
    llm: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The server echoes the wrong key it was given in its 401 message (in full)."""
    caplog.set_level(logging.DEBUG)
    r: Llm = await llm([Answer(REPLY)], server_key="sk-the-right-key")
    with pytest.raises(AgentError) as info:
        await r.ask(utterance("مرحبا"))
    assert info.value.kind == "http_status" and "Incorrect API key" in info.value.detail
    assert "***" in info.value.detail  # the echoed key was there, and was scrubbed
    logging.getLogger("test").warning("agent failed: %s", info.value)
    assert SECRET not in caplog.text and SECRET not in str(info.value)
    assert SECRET not in repr(llm_settings("http://x"))


async def test_mid_stream_disconnect_raises_connect_after_the_text_so_far(llm: Any) -> None:
    r: Llm = await llm([Answer(REPLY, disconnect_after=3)])
    parts: list[ReplyPart] = []
    with pytest.raises(AgentError) as info:
        async with asyncio.timeout(TIMEOUT):
            async for part in r.brain.reply(utterance("مرحبا")):
                parts.append(part)
    assert info.value.kind == "connect"
    assert text_of(parts) == REPLY[:12]


async def test_reply_size_is_bounded_by_agent_max_reply_bytes(llm: Any) -> None:
    r: Llm = await llm([Answer("كلام " * 2000)], agent_max_reply_bytes=4096)
    with pytest.raises(AgentError) as info:
        await r.ask(utterance("مرحبا"))
    assert info.value.kind == "too_large"


async def test_mid_stream_error_event_is_an_agent_error(llm: Any) -> None:
    r: Llm = await llm([Answer("نص", stream_error={"message": "model overloaded"})])
    with pytest.raises(AgentError) as info:
        await r.ask(utterance("مرحبا"))
    assert info.value.kind == "agent_error" and "overloaded" in info.value.detail


async def test_no_first_token_within_agent_timeout_is_a_timeout(llm: Any) -> None:
    r: Llm = await llm([Answer(REPLY, stall=5.0)], agent_timeout=0.3)
    with pytest.raises(AgentError) as info:
        await r.ask(utterance("مرحبا"))
    assert info.value.kind == "timeout"


async def test_history_keeps_only_what_was_heard_after_a_barge_in(llm: Any) -> None:
    first = "الجملة الأولى من الرد. الجملة الثانية من الرد. الجملة الثالثة من الرد."
    r: Llm = await llm(
        [Answer(first), Answer("حسنا، فهمت."), Answer("تفضل.")], greeting_text="أهلا بك."
    )
    await r.ask(utterance("سؤال أول"))
    # The caller heard the first sentence, then spoke over the second.
    heard = Interruption(
        "الجملة الأولى من الرد. الجملة الثانية من الرد.", "الجملة الأولى من الرد.", 1800
    )
    await r.ask(utterance("توقف", 2, heard))
    assert r.messages(1) == [
        {"role": "system", "content": SYSTEM},
        {"role": "assistant", "content": "أهلا بك."},
        {"role": "user", "content": "سؤال أول"},
        {"role": "assistant", "content": "الجملة الأولى من الرد."},
        {"role": "user", "content": "توقف"},
    ]
    # A reply heard to the end goes in whole; an interruption that heard nothing drops it.
    await r.ask(utterance("وبعد", 3, Interruption("حسنا، فهمت.", "", 200)))
    assert r.messages(2)[-3:] == [
        {"role": "assistant", "content": "الجملة الأولى من الرد."},
        {"role": "user", "content": "توقف"},
        {"role": "user", "content": "وبعد"},
    ]


async def test_barge_in_over_the_greeting_keeps_what_was_heard_of_it(llm: Any) -> None:
    r: Llm = await llm([Answer("تفضل.")], greeting_text="أهلا بك. كيف أساعدك اليوم؟")
    await r.ask(utterance("مرحبا", 1, Interruption("أهلا بك. كيف أساعدك اليوم؟", "أهلا بك.", 900)))
    assert r.messages()[1:] == [
        {"role": "assistant", "content": "أهلا بك."},
        {"role": "user", "content": "مرحبا"},
    ]


async def test_a_reply_cut_before_anything_was_heard_is_dropped(llm: Any) -> None:
    """Cancelled while thinking: the voice agent re-sends the caller's words next time."""
    r: Llm = await llm([Answer("رد لن يسمع.", stall=5.0), Answer("تفضل.")])
    consumer = asyncio.ensure_future(r.ask(utterance("أريد")))
    while not r.requests:
        await asyncio.sleep(0.01)
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer
    await r.ask(utterance("أريد حجز موعد", 2))
    assert r.messages() == [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "أريد حجز موعد"},
    ]


async def test_a_reply_failed_mid_stream_leaves_only_the_callers_words(llm: Any) -> None:
    r: Llm = await llm([Answer(REPLY, disconnect_after=3), Answer("تفضل.")])
    with pytest.raises(AgentError):
        await r.ask(utterance("أريد"))
    await r.ask(utterance("هل تسمعني", 2))
    assert r.messages()[1:] == [
        {"role": "user", "content": "أريد"},
        {"role": "user", "content": "هل تسمعني"},
    ]


async def test_dtmf_call_events_and_separate_calls(llm: Any) -> None:
    r: Llm = await llm([Answer("تم.")])
    assert await r.ask(AgentRequest("call.started", "CA1")) == []
    assert not r.requests  # no greeting asked of the model
    await r.ask(AgentRequest("dtmf", "CA1", 1, digits="42#"))
    assert r.messages()[-1] == {"role": "user", "content": DTMF_MESSAGE.format(digits="42#")}
    await r.ask(AgentRequest("utterance", "CA2", 1, text="مكالمة أخرى"))
    assert len(r.messages()) == 2  # another call has its own history
    await r.ask(AgentRequest("call.ended", "CA1", 2, record={}))
    assert len(r.requests) == 2  # call.ended makes no request
    await r.ask(AgentRequest("utterance", "CA1", 1, text="من جديد"))
    assert len(r.messages()) == 2  # the ended call's history was dropped


async def test_history_is_bounded(llm: Any) -> None:
    r: Llm = await llm([Answer("تم.")])
    for turn in range(1, 40):
        await r.ask(utterance(f"رسالة {turn}", turn))
    messages = r.messages()
    assert len(messages) <= 42 and messages[1]["role"] == "user"
    assert messages[-1] == {"role": "user", "content": "رسالة 39"}


def test_config_parses_the_llm_variables_and_hides_the_key() -> None:
    settings = load_settings(
        {"AGENT": "llm", "LLM_BASE_URL": "http://127.0.0.1:11434/v1/", "LLM_API_KEY": SECRET}
    )
    assert settings.agent is AgentMode.LLM
    assert settings.llm_base_url == "http://127.0.0.1:11434/v1"
    assert SECRET in settings.secrets and SECRET not in repr(settings)
    assert settings.llm_system_prompt.startswith("أنت مساعد")
    assert settings.llm_tools is True
