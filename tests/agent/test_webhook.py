"""stream_reply over real sockets against the test agents of fake_agents.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.agent.sentences import SentenceSplitter
from gateway.agent.webhook import Action, AgentError, ReplyPart, TextDelta, stream_reply
from tests.agent.fake_agents import DEFAULT_REPLY, REQUESTS_KEY, make_agent_app
from tests.conftest import TIMEOUT, free_port

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]
PAYLOAD = {"text": "مرحبا", "session_id": "CA1", "event": "utterance", "turn": 1}
SHORT = 0.2  # a deadline tests can afford to wait for


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def collect(
    session: aiohttp.ClientSession,
    url: str,
    first_text_timeout: float = TIMEOUT,
    total_timeout: float = TIMEOUT,
) -> list[ReplyPart]:
    out: list[ReplyPart] = []
    async with asyncio.timeout(TIMEOUT):
        async for part in stream_reply(
            session,
            url,
            PAYLOAD,
            first_text_timeout=first_text_timeout,
            total_timeout=total_timeout,
        ):
            out.append(part)
    return out


def text_of(parts: list[ReplyPart]) -> str:
    return "".join(p.text for p in parts if isinstance(p, TextDelta))


async def test_n8n_first_sentence_arrives_before_the_webhook_finishes(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    app = make_agent_app("n8n", first_at=0.05, complete_at=0.6)
    server = await aiohttp_server(app)
    loop = asyncio.get_running_loop()
    start = loop.time()
    arrivals: list[tuple[float, str]] = []
    splitter = SentenceSplitter()
    sentences: list[tuple[float, str]] = []
    async for part in stream_reply(
        session,
        str(server.make_url("/webhook/agent")),
        PAYLOAD,
        first_text_timeout=TIMEOUT,
        total_timeout=TIMEOUT,
    ):
        assert isinstance(part, TextDelta)
        arrivals.append((loop.time() - start, part.text))
        sentences += [(loop.time() - start, s) for s in splitter.push(part.text)]
    done = loop.time() - start
    sentences += [(done, s) for s in splitter.flush()]
    # The first sentence is ready for TTS while the agent is still writing the rest.
    assert [s for _, s in sentences] == [
        "شكرا لاتصالك بنا، يسعدنا خدمتك اليوم.",
        "كيف يمكنني مساعدتك في حجزك أو استفسارك؟",
    ]
    assert sentences[0][0] < 0.4
    assert "".join(t for _, t in arrivals) == DEFAULT_REPLY  # final answer not spoken twice
    first_sentence_end = DEFAULT_REPLY.index(".") + 1
    got_first_sentence_at = next(
        t for t, spoken in _cumulative(arrivals) if len(spoken) >= first_sentence_end
    )
    assert got_first_sentence_at < 0.4  # streamed at 0.05 s, long before completion
    assert done >= 0.6
    assert app[REQUESTS_KEY] == [PAYLOAD]


def _cumulative(arrivals: list[tuple[float, str]]) -> list[tuple[float, str]]:
    out, acc = [], ""
    for t, piece in arrivals:
        acc += piece
        out.append((t, acc))
    return out


@pytest.mark.parametrize(
    ("kind", "knobs", "expected"),
    [
        ("json", {"reply": "أهلا وسهلا"}, [TextDelta("أهلا وسهلا")]),
        ("json", {"reply": "Hi", "key": "reply"}, [TextDelta("Hi")]),
        ("actions", {"reply": "Bye", "hangup": True}, [TextDelta("Bye"), Action("hangup")]),
        (
            "actions",
            {"reply": "Bye", "hangup": True, "form": "action"},
            [TextDelta("Bye"), Action("hangup")],
        ),
        (
            "actions",
            {"reply": "Wait", "transfer": "+12025550123", "form": "action"},
            [TextDelta("Wait"), Action("transfer", "+12025550123")],
        ),
        (
            "actions",
            {"reply": "Wait", "hangup": True, "transfer": "+1", "form": "actions"},
            [TextDelta("Wait"), Action("hangup"), Action("transfer", "+1")],
        ),
        (
            "n8n",
            {
                "reply": "Goodbye and have a nice day.",
                "final_extra": {"hangup": True},
                "tool_calls": True,
            },
            [Action("hangup")],
        ),  # text checked below, as deltas
    ],
)
async def test_json_and_action_replies(
    aiohttp_server: ServerFactory,
    session: aiohttp.ClientSession,
    kind: str,
    knobs: dict[str, Any],
    expected: list[ReplyPart],
) -> None:
    server = await aiohttp_server(make_agent_app(kind, **knobs))
    parts = await collect(session, str(server.make_url("/")))
    if kind == "n8n":
        assert text_of(parts) == knobs["reply"]
        assert [p for p in parts if isinstance(p, Action)] == expected
    else:
        assert parts == expected


@pytest.mark.parametrize("kind", ["text", "sse"])
async def test_text_and_sse_stream(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession, kind: str
) -> None:
    chunks = [(0.0, "First part of the reply. "), (0.3, "Second part.")]
    server = await aiohttp_server(make_agent_app(kind, chunks=chunks))
    loop = asyncio.get_running_loop()
    start = loop.time()
    first_at = None
    parts: list[ReplyPart] = []
    async for part in stream_reply(
        session,
        str(server.make_url("/")),
        PAYLOAD,
        first_text_timeout=TIMEOUT,
        total_timeout=TIMEOUT,
    ):
        first_at = first_at if first_at is not None else loop.time() - start
        parts.append(part)
    assert text_of(parts) == "First part of the reply. Second part."
    assert first_at is not None and first_at < 0.25  # before the second chunk was sent


async def test_slow_agent_times_out_at_the_first_text_deadline(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    server = await aiohttp_server(make_agent_app("slow"))
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(AgentError) as info:
        await collect(session, str(server.make_url("/")), first_text_timeout=SHORT)
    assert info.value.kind == "timeout"
    assert SHORT <= loop.time() - start < SHORT + 1.0


async def test_stalled_stream_times_out_at_the_total_deadline_after_speaking(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    server = await aiohttp_server(make_agent_app("slow", stall_after_first=True))
    parts: list[ReplyPart] = []
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(AgentError) as info:
        async for part in stream_reply(
            session,
            str(server.make_url("/")),
            PAYLOAD,
            first_text_timeout=SHORT,
            total_timeout=2 * SHORT,
        ):
            parts.append(part)
    assert info.value.kind == "timeout"
    assert text_of(parts).startswith("هذه هي الجملة الأولى")  # the first text was delivered
    assert 2 * SHORT <= loop.time() - start < 2 * SHORT + 1.0


@pytest.mark.parametrize(
    ("kind", "knobs", "error", "status"),
    [
        ("failing", {}, "http_status", 500),
        ("failing", {"status": 404, "body": "no such workflow"}, "http_status", 404),
        ("malformed", {}, "malformed", None),
        ("malformed", {"body": b"<html><body>Bad gateway</body></html>"}, "malformed", None),
        ("json", {"reply": ""}, "empty", None),
    ],
)
async def test_failures_are_typed(
    aiohttp_server: ServerFactory,
    session: aiohttp.ClientSession,
    kind: str,
    knobs: dict[str, Any],
    error: str,
    status: int | None,
) -> None:
    server = await aiohttp_server(make_agent_app(kind, **knobs))
    with pytest.raises(AgentError) as info:
        await collect(session, str(server.make_url("/")))
    assert info.value.kind == error
    assert info.value.status == status


async def test_n8n_error_chunk_after_text(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    server = await aiohttp_server(
        make_agent_app("n8n", first_at=0.0, complete_at=0.2, error_at=0.1)
    )
    parts: list[ReplyPart] = []
    with pytest.raises(AgentError) as info:
        async for part in stream_reply(
            session,
            str(server.make_url("/")),
            PAYLOAD,
            first_text_timeout=TIMEOUT,
            total_timeout=TIMEOUT,
        ):
            parts.append(part)
    assert info.value.kind == "agent_error"
    assert DEFAULT_REPLY.startswith(text_of(parts)) and text_of(parts)


async def test_connection_refused_is_connect(session: aiohttp.ClientSession) -> None:
    url = f"http://127.0.0.1:{free_port()}/"
    with pytest.raises(AgentError) as info:
        await collect(session, url)
    assert info.value.kind == "connect"


async def test_server_dropping_the_connection_mid_reply_is_connect(
    session: aiohttp.ClientSession,
) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n"
            b'{"type":"item","content":"Hello"}\n'
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    parts: list[ReplyPart] = []
    try:
        with pytest.raises(AgentError) as info:
            async with asyncio.timeout(TIMEOUT):
                async for part in stream_reply(
                    session,
                    f"http://127.0.0.1:{port}/",
                    PAYLOAD,
                    first_text_timeout=TIMEOUT,
                    total_timeout=TIMEOUT,
                ):
                    parts.append(part)
    finally:
        server.close()
        await server.wait_closed()
    assert info.value.kind == "connect"
    assert parts == [TextDelta("Hello")]


async def test_closing_the_iterator_early_frees_the_pooled_connection(
    aiohttp_server: ServerFactory,
) -> None:
    server = await aiohttp_server(make_agent_app("slow", stall_after_first=True))
    url = str(server.make_url("/"))
    # A pool of one: a leaked connection would block the second request forever.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        for _ in range(2):
            replies = stream_reply(
                session, url, PAYLOAD, first_text_timeout=TIMEOUT, total_timeout=TIMEOUT
            )
            async with asyncio.timeout(TIMEOUT):
                first = await anext(replies)
                await replies.aclose()  # type: ignore[attr-defined]
            assert isinstance(first, TextDelta)
