"""Test agent webhooks speaking every reply form of docs/protocols/agent-webhook.md.

``make_agent_app(kind, **knobs)`` returns an aiohttp application answering POST on any
path; ``app[REQUESTS_KEY]`` records each request's parsed JSON body (a body that is not a
JSON object is recorded as ``{"_raw": "<text>"}``), in arrival order.

Kinds and their knobs (times are seconds after the request arrived):

* ``n8n``: streaming NDJSON as n8n 1.103+ sends it (``begin``, agent-node ``item`` deltas,
  the "Respond to Webhook" ``item`` carrying ``{"output": <whole reply>}``, ``end``), with
  Content-Type ``application/json`` as n8n really sets it. Knobs: ``reply``, ``chunks``
  (``[(at, delta), ...]``; default: :func:`timed_chunks` of ``reply`` with ``first_at`` and
  ``complete_at``), ``final_item`` (default True), ``final_extra`` (keys merged into the
  final item's object, e.g. ``{"hangup": True}``), ``error_at`` (send an ``error`` chunk
  instead of completing), ``tool_calls`` (add tool-call-start/-end chunks).
* ``json``: one JSON object ``{key: reply, **extra}`` after ``delay``. Knobs: ``key``
  (default ``output``), ``extra``.
* ``actions``: ``json`` with actions: ``hangup`` (bool), ``transfer`` (str), ``form``
  (``flat``: top-level keys, ``action``: ``{"action": {...}}``, ``actions``: a list).
* ``text``: ``text/plain``, streamed in ``chunks`` (default: the whole reply at ``delay``).
* ``sse``: OpenAI-style chat-completion chunks then ``data: [DONE]``; ``chunks`` as n8n.
* ``slow``: sends nothing for ``delay`` (default 3600 s) or until the client goes away;
  with ``stall_after_first=True`` it first streams a first n8n delta, then stalls.
* ``failing``: HTTP ``status`` (default 500) with a short body.
* ``malformed``: HTTP 200 with ``body`` (default: bytes that are no reply form).

``reply`` may be a string or a function of the request body (for whole-call tests that
answer what the caller said).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web

REQUESTS_KEY: web.AppKey[list[dict[str, Any]]] = web.AppKey("agent_requests", list)

DEFAULT_REPLY = "شكرا لاتصالك بنا، يسعدنا خدمتك اليوم. كيف يمكنني مساعدتك في حجزك أو استفسارك؟"
GARBAGE = b"\x00\xff\xfe<<not a reply>>\x81\x82"

Reply = str | Callable[[dict[str, Any]], str]
Chunks = Sequence[tuple[float, str]]


def split_first_sentence(text: str) -> tuple[str, str]:
    """(first sentence including its mark and following space, rest)."""
    for i, ch in enumerate(text):
        if ch in ".!?\u061f" and (i + 1 == len(text) or text[i + 1] == " "):
            return text[: i + 2], text[i + 2 :]
    return text, ""


def timed_chunks(
    text: str, first_at: float = 0.0, complete_at: float = 0.0
) -> list[tuple[float, str]]:
    """Deltas of ``text``: its first sentence word by word at ``first_at``, the rest word by
    word spread evenly until ``complete_at`` (the original system's webhook: first sentence
    at 1.5 s, complete at 6.4 s)."""
    first, rest = split_first_sentence(text)
    out = [(first_at, word) for word in _words(first)]
    later = _words(rest)
    span = max(0.0, complete_at - first_at)
    for i, word in enumerate(later, start=1):
        out.append((first_at + span * i / len(later), word))
    return out


def _words(text: str) -> list[str]:
    """Split keeping the spaces, so "".join(result) == text."""
    out: list[str] = []
    start = 0
    for i, ch in enumerate(text):
        if ch == " " and i > start:
            out.append(text[start : i + 1])
            start = i + 1
    if start < len(text):
        out.append(text[start:])
    return out


async def _wait_until(request: web.Request, t0: float, at: float) -> bool:
    """Sleep until ``t0 + at``; False if the client went away meanwhile (checked every
    20 ms, so a test never waits for a stalled handler at shutdown)."""
    loop = asyncio.get_running_loop()
    while True:
        transport = request.transport
        if transport is None or transport.is_closing():
            return False
        left = t0 + at - loop.time()
        if left <= 0:
            return True
        await asyncio.sleep(min(left, 0.02))


def _reply_text(reply: Reply, body: dict[str, Any]) -> str:
    return reply(body) if callable(reply) else reply


def _ndjson(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode() + b"\n"


def make_agent_app(kind: str, **knobs: Any) -> web.Application:
    """A test agent webhook of ``kind`` (see the module docstring for kinds and knobs)."""
    handlers: dict[str, Callable[[web.Request, dict[str, Any], float], Any]] = {
        "n8n": _n8n,
        "json": _json,
        "actions": _actions,
        "text": _text,
        "sse": _sse,
        "slow": _slow,
        "failing": _failing,
        "malformed": _malformed,
    }
    if kind not in handlers:
        raise ValueError(f"unknown fake agent kind {kind!r}; one of {sorted(handlers)}")
    handler = handlers[kind]
    app = web.Application()
    app[REQUESTS_KEY] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        t0 = asyncio.get_running_loop().time()
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        record = body if isinstance(body, dict) else {"_raw": raw.decode("utf-8", "replace")}
        app[REQUESTS_KEY].append(record)
        result: web.StreamResponse = await handler(request, {**knobs, "_body": record}, t0)
        return result

    app.router.add_post("/{tail:.*}", handle)
    return app


# --------------------------------------------------------------------------- kinds


async def _stream(request: web.Request, content_type: str) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": content_type})
    await response.prepare(request)
    return response


def _chunks(knobs: dict[str, Any], text: str) -> Chunks:
    chunks: Chunks | None = knobs.get("chunks")
    if chunks is not None:
        return chunks
    return timed_chunks(text, knobs.get("first_at", 0.0), knobs.get("complete_at", 0.0))


async def _n8n(request: web.Request, knobs: dict[str, Any], t0: float) -> web.StreamResponse:
    text = _reply_text(knobs.get("reply", DEFAULT_REPLY), knobs["_body"])
    response = await _stream(request, "application/json; charset=utf-8")
    meta = {"nodeId": "a1", "nodeName": "Conversation Agent", "itemIndex": 0, "runIndex": 0}
    await response.write(_ndjson({"type": "begin", "metadata": {**meta, "timestamp": 1}}))
    if knobs.get("tool_calls"):
        await response.write(_ndjson({"type": "tool-call-start", "metadata": meta}))
        await response.write(_ndjson({"type": "tool-call-end", "metadata": meta}))
    error_at: float | None = knobs.get("error_at")
    for at, delta in _chunks(knobs, text):
        if error_at is not None and at >= error_at:
            break
        if not await _wait_until(request, t0, at):
            return response
        await response.write(_ndjson({"type": "item", "content": delta, "metadata": meta}))
    if error_at is not None:
        if await _wait_until(request, t0, error_at):
            await response.write(
                _ndjson({"type": "error", "content": "Agent failed", "metadata": meta})
            )
        return response
    if knobs.get("final_item", True):
        final = {"output": text, **knobs.get("final_extra", {})}
        respond_meta = {**meta, "nodeId": "r1", "nodeName": "Respond to Webhook"}
        await response.write(
            _ndjson(
                {
                    "type": "item",
                    "content": json.dumps(final, ensure_ascii=False),
                    "metadata": respond_meta,
                }
            )
        )
    await response.write(_ndjson({"type": "end", "metadata": meta}))
    await response.write_eof()
    return response


async def _json(request: web.Request, knobs: dict[str, Any], t0: float) -> web.StreamResponse:
    text = _reply_text(knobs.get("reply", DEFAULT_REPLY), knobs["_body"])
    if not await _wait_until(request, t0, knobs.get("delay", 0.0)):
        return web.Response()
    body = {knobs.get("key", "output"): text, **knobs.get("extra", {})}
    return web.json_response(body, dumps=lambda o: json.dumps(o, ensure_ascii=False))


async def _actions(request: web.Request, knobs: dict[str, Any], t0: float) -> web.StreamResponse:
    hangup: bool = knobs.get("hangup", False)
    transfer: str | None = knobs.get("transfer")
    form = knobs.get("form", "flat")
    extra: dict[str, Any] = {}
    if form == "flat":
        if hangup:
            extra["hangup"] = True
        if transfer:
            extra["transfer"] = transfer
    elif form == "action":
        if transfer:
            extra["action"] = {"type": "transfer", "target": transfer}
        elif hangup:
            extra["action"] = "hangup"
    elif form == "actions":
        listed: list[Any] = []
        if hangup:
            listed.append("hangup")
        if transfer:
            listed.append({"transfer": transfer})
        extra["actions"] = listed
    else:
        raise ValueError(f"unknown actions form {form!r}")
    return await _json(request, {**knobs, "extra": extra}, t0)


async def _text(request: web.Request, knobs: dict[str, Any], t0: float) -> web.StreamResponse:
    text = _reply_text(knobs.get("reply", DEFAULT_REPLY), knobs["_body"])
    response = await _stream(request, "text/plain; charset=utf-8")
    chunks: Chunks = knobs.get("chunks") or [(knobs.get("delay", 0.0), text)]
    for at, piece in chunks:
        if not await _wait_until(request, t0, at):
            return response
        await response.write(piece.encode())
    await response.write_eof()
    return response


async def _sse(request: web.Request, knobs: dict[str, Any], t0: float) -> web.StreamResponse:
    text = _reply_text(knobs.get("reply", DEFAULT_REPLY), knobs["_body"])
    response = await _stream(request, "text/event-stream")
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "test"}
    first = {**base, "choices": [{"index": 0, "delta": {"role": "assistant"}}]}
    await response.write(b"data: " + json.dumps(first).encode() + b"\n\n")
    for at, delta in _chunks(knobs, text):
        if not await _wait_until(request, t0, at):
            return response
        chunk = {**base, "choices": [{"index": 0, "delta": {"content": delta}}]}
        payload = json.dumps(chunk, ensure_ascii=False).encode()
        await response.write(b"data: " + payload + b"\n\n")
    last = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    await response.write(b"data: " + json.dumps(last).encode() + b"\n\ndata: [DONE]\n\n")
    await response.write_eof()
    return response


async def _slow(request: web.Request, knobs: dict[str, Any], t0: float) -> web.StreamResponse:
    delay: float = knobs.get("delay", 3600.0)
    if knobs.get("stall_after_first"):
        response = await _stream(request, "application/json")
        meta = {"nodeName": "Conversation Agent"}
        first = knobs.get("first", "هذه هي الجملة الأولى من الرد الطويل جدا. ")
        await response.write(_ndjson({"type": "begin", "metadata": meta}))
        await response.write(_ndjson({"type": "item", "content": first, "metadata": meta}))
        await _wait_until(request, t0, delay)
        return response
    await _wait_until(request, t0, delay)
    return web.json_response({"output": "too late"})


async def _failing(request: web.Request, knobs: dict[str, Any], t0: float) -> web.StreamResponse:
    status: int = knobs.get("status", 500)
    return web.Response(status=status, text=knobs.get("body", "Internal Server Error"))


async def _malformed(request: web.Request, knobs: dict[str, Any], t0: float) -> web.StreamResponse:
    body: bytes = knobs.get("body", GARBAGE)
    return web.Response(body=body, content_type="application/json")
