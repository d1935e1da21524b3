"""A local OpenAI-compatible chat-completions server that follows the streaming wire format.

Wire format (https://platform.openai.com/docs/api-reference/chat-streaming, as OpenAI, vLLM,
Ollama and llama.cpp server send it):

* ``POST .../chat/completions`` with ``"stream": true`` is answered ``200`` with
  ``Content-Type: text/event-stream`` and one event per chunk, ``data: {json}\\n\\n``, where
  each chunk is a ``chat.completion.chunk`` object: ``{"id", "object", "created", "model",
  "system_fingerprint", "choices": [{"index": 0, "delta": {...}, "logprobs": null,
  "finish_reason": null}]}``. The first delta is ``{"role": "assistant", "content": ""}``,
  then ``{"content": "<piece>"}`` per token; a tool call comes as
  ``{"tool_calls": [{"index": i, "id": "call_...", "type": "function", "function":
  {"name": "<name>", "arguments": ""}}]}`` then pieces ``{"tool_calls": [{"index": i,
  "function": {"arguments": "<fragment>"}}]}``; the last chunk has an empty delta and
  ``finish_reason`` ``stop`` or ``tool_calls``; then ``data: [DONE]\\n\\n``.
* Errors: a non-2xx status with ``{"error": {"message", "type", "param", "code"}}`` (401
  ``invalid_api_key``, 429 ``rate_limit_exceeded``, 500 ``server_error``), or mid-stream
  ``data: {"error": {...}}``.
* ``"stream": false`` (or absent) gets one ``chat.completion`` object.

``make_openai_app(script, api_key=...)`` answers every path ending in ``/chat/completions``.
``script`` is a list of :class:`Answer` (one per request, the last one repeats) or a function
of the request body. With ``api_key`` set, a request without ``Authorization: Bearer
<api_key>`` gets the 401 error, whose message echoes the key it was given in full (worse than
OpenAI, which masks it, so a test can prove the gateway never logs it).
``app[OPENAI_REQUESTS_KEY]`` records each request as ``{"body", "authorization",
"received_at", "content_at"}`` (monotonic times: arrival, and when each content piece was
written, for benchmarks).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

OPENAI_REQUESTS_KEY: web.AppKey[list[dict[str, Any]]] = web.AppKey("openai_requests", list)
_SCRIPT_KEY: web.AppKey[Any] = web.AppKey("openai_script")
_API_KEY: web.AppKey[str] = web.AppKey("openai_api_key", str)

ERRORS: dict[int, dict[str, Any]] = {
    401: {
        "message": "Incorrect API key provided: {key}. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    },
    429: {
        "message": "Rate limit reached for gpt-4o-mini on requests per min (RPM): "
        "Limit 3, Used 3, Requested 1.",
        "type": "requests",
        "param": None,
        "code": "rate_limit_exceeded",
    },
    500: {
        "message": "The server had an error while processing your request. Sorry about that!",
        "type": "server_error",
        "param": None,
        "code": None,
    },
}


@dataclass(frozen=True)
class Answer:
    """One scripted answer. Times are seconds.

    ``text`` is streamed in ``piece_chars``-character pieces (or exactly ``pieces``), the
    first after ``first_token_delay``, the next ones ``chunk_delay`` apart. ``tool_calls``
    are ``(name, arguments_json)`` pairs, sent after the text, arguments in
    ``piece_chars``-character fragments (``split_name`` also splits the name over two
    pieces). ``status`` != 200 answers the error body of :data:`ERRORS` (or ``error``).
    ``stream_error`` is sent as a ``data: {"error": ...}`` event after the text.
    ``disconnect_after`` cuts the connection after that many content chunks (no
    ``[DONE]``, no end of the chunked body). ``stall`` sleeps that long before the text.
    """

    text: str = ""
    pieces: Sequence[str] | None = None
    tool_calls: Sequence[tuple[str, str]] = ()
    first_token_delay: float = 0.0
    chunk_delay: float = 0.0
    piece_chars: int = 4
    split_name: bool = False
    status: int = 200
    error: dict[str, Any] | None = None
    stream_error: dict[str, Any] | None = None
    disconnect_after: int | None = None
    stall: float = 0.0
    finish_reason: str | None = None
    extra_chunks: Sequence[dict[str, Any]] = field(default_factory=tuple)


Script = Sequence[Answer] | Callable[[dict[str, Any]], Answer]


def make_openai_app(script: Script, *, api_key: str = "") -> web.Application:
    app = web.Application()
    app[OPENAI_REQUESTS_KEY] = []
    app[_SCRIPT_KEY] = script
    app[_API_KEY] = api_key
    app.router.add_post("/{tail:.*}", _handle)
    return app


def _pick(app: web.Application, body: dict[str, Any]) -> Answer:
    script = app[_SCRIPT_KEY]
    if callable(script):
        answer: Answer = script(body)
        return answer
    index = min(len(app[OPENAI_REQUESTS_KEY]) - 1, len(script) - 1)
    return script[index]  # type: ignore[no-any-return]


def _error_response(status: int, error: dict[str, Any]) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps({"error": error}), content_type="application/json"
    )


def _chunks(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] if text else []


async def _handle(request: web.Request) -> web.StreamResponse:
    if not request.path.endswith("/chat/completions"):
        return _error_response(404, {"message": "Not found", "type": "invalid_request_error"})
    app = request.app
    authorization = request.headers.get("Authorization", "")
    body = orjson.loads(await request.read())
    log: dict[str, Any] = {
        "body": body,
        "authorization": authorization,
        "received_at": time.monotonic(),
        "content_at": [],
    }
    app[OPENAI_REQUESTS_KEY].append(log)
    expected = app[_API_KEY]
    if expected and authorization != f"Bearer {expected}":
        given = authorization.removeprefix("Bearer ")
        error = dict(ERRORS[401], message=ERRORS[401]["message"].format(key=given))
        return _error_response(401, error)
    answer = _pick(app, body)
    if answer.status != 200:
        error = answer.error or dict(ERRORS.get(answer.status, ERRORS[500]))
        error = dict(error, message=str(error["message"]).format(key=""))
        return _error_response(answer.status, error)
    model = body.get("model", "")
    if not body.get("stream"):
        return _whole(answer, model)
    return await _stream(request, answer, model, log["content_at"])


def _whole(answer: Answer, model: str) -> web.Response:
    message: dict[str, Any] = {"role": "assistant", "content": answer.text or None}
    if answer.tool_calls:
        message["tool_calls"] = [
            {"id": f"call_{i}", "type": "function", "function": {"name": n, "arguments": a}}
            for i, (n, a) in enumerate(answer.tool_calls)
        ]
    obj = {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": "tool_calls" if answer.tool_calls else "stop",
            }
        ],
    }
    return web.Response(body=orjson.dumps(obj), content_type="application/json")


async def _stream(
    request: web.Request, answer: Answer, model: str, content_at: list[float]
) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    response.headers["Cache-Control"] = "no-cache"
    await response.prepare(request)
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        obj = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_fake",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        return b"data: " + orjson.dumps(obj) + b"\n\n"

    await asyncio.sleep(answer.first_token_delay)
    await response.write(chunk({"role": "assistant", "content": ""}))
    if answer.stall:
        await asyncio.sleep(answer.stall)
    pieces = (
        answer.pieces if answer.pieces is not None else _chunks(answer.text, answer.piece_chars)
    )
    for count, piece in enumerate(pieces):
        if answer.disconnect_after is not None and count >= answer.disconnect_after:
            assert request.transport is not None
            request.transport.close()  # cut mid-stream: no [DONE], no last chunk of the body
            return response
        if count:
            await asyncio.sleep(answer.chunk_delay)
        await response.write(chunk({"content": piece}))
        content_at.append(time.monotonic())
    for extra in answer.extra_chunks:
        await response.write(b"data: " + orjson.dumps(extra) + b"\n\n")
    if answer.stream_error is not None:
        await response.write(b"data: " + orjson.dumps({"error": answer.stream_error}) + b"\n\n")
        await response.write_eof()
        return response
    for index, (name, arguments) in enumerate(answer.tool_calls):
        names = [name[:3], name[3:]] if answer.split_name else [name]
        first: dict[str, Any] = {
            "index": index,
            "id": f"call_{index}abc",
            "type": "function",
            "function": {"name": names[0], "arguments": ""},
        }
        await response.write(chunk({"role": "assistant", "content": None, "tool_calls": [first]}))
        for rest in names[1:]:
            name_piece = {"index": index, "function": {"name": rest}}
            await response.write(chunk({"tool_calls": [name_piece]}))
        for fragment in _chunks(arguments, answer.piece_chars):
            args_piece = {"index": index, "function": {"arguments": fragment}}
            await response.write(chunk({"tool_calls": [args_piece]}))
    finish = answer.finish_reason or ("tool_calls" if answer.tool_calls else "stop")
    await response.write(chunk({}, finish))
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response
