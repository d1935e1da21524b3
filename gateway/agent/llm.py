"""The built-in LLM agent (``AGENT=llm``): any OpenAI-compatible chat-completions server.

OpenAI, vLLM, Ollama (``/v1``), llama.cpp server and most hosted APIs speak the same wire
format (https://platform.openai.com/docs/api-reference/chat/create and
https://platform.openai.com/docs/api-reference/chat-streaming):

* request: ``POST {LLM_BASE_URL}/chat/completions`` with ``Authorization: Bearer <key>`` and
  ``{"model", "messages", "stream": true, "tools": [...]}``;
* streamed answer: server-sent events, one ``data: {chat.completion.chunk}`` per event, then
  ``data: [DONE]``. Text arrives in ``choices[0].delta.content``; a tool call arrives in
  pieces in ``choices[0].delta.tool_calls[]``: the first piece of call ``index`` carries
  ``id``, ``type`` and ``function.name``, later pieces add ``function.arguments`` fragments
  (a JSON document only once concatenated). ``choices[0].finish_reason`` is ``stop``,
  ``length`` or ``tool_calls`` on the last content chunk;
* errors: a non-2xx status with ``{"error": {"message", "type", "code"}}`` (401 bad key, 429
  rate limit or quota, 5xx), or, once streaming, a ``data: {"error": {...}}`` event.

:class:`ChatStreamParser` is the sans-I/O reader (bytes in, :data:`ReplyPart` out, linear in
the body size, bounded); :class:`LlmBrain` is the :class:`~gateway.agent.brains.Brain` that
keeps each call's conversation history and maps the two tools to the actions the webhook
brain already produces (``end_call`` -> ``Action("hangup")``, ``transfer_call(target)`` ->
``Action("transfer", target)``). Failures raise the webhook's
:class:`~gateway.agent.webhook.AgentError` kinds, so the voice agent's timeout and spoken
fallback apply unchanged.

**History and barge-in.** Each call's history is the system prompt, then alternating caller
and agent messages. An agent reply enters the history only as far as the caller heard it: a
reply streamed to the end and not interrupted goes in whole; when the next request carries
``interrupted`` (the voice agent's report of a barge-in) the reply is replaced by
``interrupted.heard``, the sentences whose audio played (nothing when it is empty); a reply
cut short with no such report is dropped, and so is its caller message when the next
utterance repeats it (the caller spoke again before any audio played: the voice agent
re-sends those words with the next utterance); a reply that failed mid-stream leaves only
the caller's message.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import aiohttp
import orjson

from gateway.agent.webhook import (
    MAX_REPLY_BYTES,
    Action,
    AgentError,
    AgentRequest,
    ReplyPart,
    TextDelta,
)
from gateway.config import Settings

log = logging.getLogger(__name__)

MAX_LINE_BYTES: Final = 256 * 1024  # one SSE line (one chunk) is a few hundred bytes
MAX_HISTORY_MESSAGES: Final = 40  # caller + agent messages kept after the system prompt
MIN_TRACKED_CALLS: Final = 64  # histories kept at least (call.ended drops one)
ERROR_BODY_BYTES: Final = 2048  # how much of a non-2xx body is read for the log line
DTMF_MESSAGE: Final = "(the caller pressed on the keypad: {digits})"

END_CALL: Final = "end_call"
TRANSFER_CALL: Final = "transfer_call"
# The tools declared with every request (OpenAI "function" tools, JSON Schema parameters).
TOOLS: Final[list[dict[str, Any]]] = [
    {
        "type": "function",
        "function": {
            "name": END_CALL,
            "description": "End the phone call after your last sentence has been spoken. "
            "Say goodbye first.",
            "parameters": {"type": "object", "properties": {}, "additionalProperties": False},
        },
    },
    {
        "type": "function",
        "function": {
            "name": TRANSFER_CALL,
            "description": "Transfer the caller to a person or another number, after your "
            "last sentence has been spoken.",
            "parameters": {
                "type": "object",
                "properties": {
                    "target": {
                        "type": "string",
                        "description": "phone number in E.164 form (+15551234567) or SIP URI",
                    }
                },
                "required": ["target"],
                "additionalProperties": False,
            },
        },
    },
]


# ------------------------------------------------------------------ the parser


@dataclass(slots=True)
class _ToolCall:
    """One tool call being assembled from its deltas."""

    id: str = ""
    name: list[str] = field(default_factory=list)
    arguments: list[str] = field(default_factory=list)


class ChatStreamParser:
    """Sans-I/O reader of one streamed chat completion: ``feed(bytes)`` then ``end()``.

    Both return the :data:`ReplyPart` values that became known, in order: text deltas as
    they arrive, tool calls as actions once complete (at ``finish_reason`` or ``[DONE]``).
    Raises :class:`AgentError`: ``agent_error`` for an ``error`` event, ``too_large`` for a
    body over ``max_bytes``, ``malformed`` for a line over ``max_line`` or a body that is no
    chat completion,
    ``connect`` when the stream ends before ``[DONE]`` or a ``finish_reason`` (a cut
    connection), ``empty`` for a reply with no text and no action.

    Work is linear in the body: each byte is scanned for a newline once (a line split over
    many reads resumes the scan where it stopped) and consumed lines are dropped from the
    buffer once per ``feed``. A server that ignored ``stream`` and answered one
    ``chat.completion`` JSON object is accepted too.
    """

    def __init__(self, max_bytes: int = MAX_REPLY_BYTES, max_line: int = MAX_LINE_BYTES) -> None:
        self.finish_reason: str | None = None
        self.bad_events = 0
        self._max_bytes = max_bytes
        self._max_line = max_line
        self._size = 0
        self._buf = bytearray()
        self._scan = 0  # bytes of _buf already searched for a newline
        self._data: list[bytes] = []  # data: lines of the event being read
        self._form: Literal["sse", "json"] | None = None
        self._done = False
        self._tools: dict[int, _ToolCall] = {}
        self._actions_sent = False
        self._produced = False

    def feed(self, data: bytes) -> list[ReplyPart]:
        """Bytes of the body as they arrive (any split)."""
        if not data or self._done:
            return []
        self._size += len(data)
        if self._size > self._max_bytes:
            raise AgentError("too_large", f"reply larger than {self._max_bytes} bytes")
        self._buf += data
        if self._form is None:
            head = self._buf.lstrip()
            if not head:
                return []
            self._form = "json" if head[:1] == b"{" else "sse"
        if self._form == "json":
            return []  # one document: complete only at the end of the body
        out: list[ReplyPart] = []
        start = 0
        while not self._done:
            newline = self._buf.find(b"\n", self._scan)
            if newline < 0:
                self._scan = len(self._buf)
                break
            line = bytes(self._buf[start:newline])
            start = self._scan = newline + 1
            out.extend(self._line(line[:-1] if line.endswith(b"\r") else line))
        if start:
            del self._buf[:start]  # one O(rest) move per feed, not per line
            self._scan -= start
        if len(self._buf) > self._max_line:
            raise AgentError("malformed", f"SSE line longer than {self._max_line} bytes")
        return out

    def end(self) -> list[ReplyPart]:
        """The body is complete: return the last parts, or raise if the reply is unusable."""
        out: list[ReplyPart] = []
        if self._form == "json":
            out = self._whole(bytes(self._buf))
        elif not self._done:
            if self._buf:
                out.extend(self._line(bytes(self._buf).rstrip(b"\r")))
            out.extend(self._line(b""))  # dispatch an event the body ended without a blank line
            if not self._done and self.finish_reason is None:
                raise AgentError("connect", "stream ended before [DONE]")
        out.extend(self._actions())
        if not self._produced and not out:
            if self.bad_events:
                raise AgentError("malformed", f"{self.bad_events} unreadable event(s)")
            raise AgentError("empty")
        return out

    # -- SSE (https://html.spec.whatwg.org/multipage/server-sent-events.html)

    def _line(self, line: bytes) -> list[ReplyPart]:
        if not line:
            return self._dispatch()
        if line.startswith(b":"):
            return []  # comment (keep-alive)
        name, _, value = line.partition(b":")
        if name == b"data":
            self._data.append(value[1:] if value.startswith(b" ") else value)
        return []  # event:, id:, retry: carry nothing a chat completion needs

    def _dispatch(self) -> list[ReplyPart]:
        if not self._data:
            return []
        data = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
        self._data = []
        if data.strip() == b"[DONE]":
            self._done = True
            return self._actions()
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            chunk = None
        if not isinstance(chunk, dict):
            self.bad_events += 1
            log.debug("LLM stream event skipped: %.100r", data)
            return []
        _raise_if_error(chunk)
        choices = chunk.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return []  # e.g. the usage chunk of stream_options.include_usage
        choice = choices[0]
        out: list[ReplyPart] = []
        delta = choice.get("delta")
        if isinstance(delta, dict):
            content = delta.get("content")
            if isinstance(content, str) and content:
                self._produced = True
                out.append(TextDelta(content))
            # reasoning_content (reasoning models) is never spoken.
            calls = delta.get("tool_calls")
            if isinstance(calls, list):
                self._tool_deltas(calls)
        reason = choice.get("finish_reason")
        if isinstance(reason, str) and reason:
            self.finish_reason = reason
            out.extend(self._actions())
        return out

    def _tool_deltas(self, calls: list[Any]) -> None:
        for position, piece in enumerate(calls):
            if not isinstance(piece, dict):
                continue
            index = piece.get("index")
            key = index if isinstance(index, int) else position
            call = self._tools.setdefault(key, _ToolCall())
            if isinstance(piece.get("id"), str) and piece["id"]:
                call.id = piece["id"]
            function = piece.get("function")
            if isinstance(function, dict):
                if isinstance(function.get("name"), str):
                    call.name.append(function["name"])
                if isinstance(function.get("arguments"), str):
                    call.arguments.append(function["arguments"])

    def _actions(self) -> list[ReplyPart]:
        """The tool calls as actions, once (at finish_reason, [DONE] or the end)."""
        if self._actions_sent or not self._tools:
            return []
        self._actions_sent = True
        out: list[ReplyPart] = []
        for index in sorted(self._tools):
            call = self._tools[index]
            action = tool_action("".join(call.name), "".join(call.arguments))
            if action is not None:
                out.append(action)
        if out:
            self._produced = True
        return out

    # -- a non-streamed answer

    def _whole(self, body: bytes) -> list[ReplyPart]:
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise AgentError("malformed", "invalid JSON") from None
        if not isinstance(obj, dict):
            raise AgentError("malformed", "not a chat completion")
        _raise_if_error(obj)
        choices = obj.get("choices")
        message = choices[0].get("message") if isinstance(choices, list) and choices else None
        if not isinstance(message, dict):
            raise AgentError("malformed", "no choices[0].message in the completion")
        out: list[ReplyPart] = []
        content = message.get("content")
        if isinstance(content, str) and content.strip():
            out.append(TextDelta(content))
        calls = message.get("tool_calls")
        if isinstance(calls, list):
            self._tool_deltas(calls)
        self._produced = bool(out)
        return out


def _raise_if_error(obj: dict[str, Any]) -> None:
    error = obj.get("error")
    if error:
        message = error.get("message", error) if isinstance(error, dict) else error
        raise AgentError("agent_error", str(message)[:200])


def tool_action(name: str, arguments: str) -> Action | None:
    """The action a completed tool call asks for; None (logged) for an unknown tool.

    ``end_call`` -> hang up; ``transfer_call`` -> transfer to ``arguments.target``. Arguments
    that are not a JSON object with a non-empty string ``target`` still transfer, with no
    target: the voice agent then ends the gateway's leg, as for a webhook ``transfer``
    without one.
    """
    if name == END_CALL:
        return Action("hangup")
    if name == TRANSFER_CALL:
        try:
            args = orjson.loads(arguments) if arguments.strip() else {}
        except orjson.JSONDecodeError:
            args = None
        target = args.get("target") if isinstance(args, dict) else None
        if isinstance(target, str) and target.strip():
            return Action("transfer", target.strip())
        log.warning("LLM transfer_call without a usable target: %.100r", arguments)
        return Action("transfer")
    log.warning("LLM called an unknown tool %.60r; ignored", name)
    return None


# ------------------------------------------------------------------ history


def _squash(text: str) -> str:
    return "".join(text.split())


@dataclass(slots=True)
class _Exchange:
    """The last request and its reply, kept aside until the next request says what the
    caller heard of it."""

    user: str
    reply: list[str] = field(default_factory=list)
    state: Literal["open", "complete", "aborted"] = "open"


@dataclass(slots=True)
class CallHistory:
    """One call's conversation, without the system prompt (see module docstring)."""

    messages: list[dict[str, str]] = field(default_factory=list)
    pending: _Exchange | None = None

    def settle(self, request: AgentRequest) -> None:
        """Put the previous exchange into the history as far as the caller heard it."""
        done, self.pending = self.pending, None
        heard = request.interrupted
        if done is None:
            if heard is not None:
                self._interrupt_last(heard.reply, heard.heard)  # e.g. the configured greeting
            return
        reply = "".join(done.reply)
        if heard is not None and _squash(reply).startswith(_squash(heard.reply)):
            reply = heard.heard
        elif done.state != "complete":
            if request.event == "utterance" and request.text.startswith(done.user):
                return  # cut while thinking: the voice agent re-sent the caller's words
            reply = ""  # failed mid-reply: how much was heard is unknown, keep none of it
        self.messages.append({"role": "user", "content": done.user})
        if reply.strip():
            self.messages.append({"role": "assistant", "content": reply})
        self._trim()

    def _interrupt_last(self, spoken: str, heard: str) -> None:
        last = self.messages[-1] if self.messages else None
        if last is None or last["role"] != "assistant":
            return
        if not _squash(last["content"]).startswith(_squash(spoken)):
            return  # the interrupted speech was not the agent's (a re-prompt, a fallback)
        if heard.strip():
            last["content"] = heard
        else:
            self.messages.pop()

    def _trim(self) -> None:
        excess = len(self.messages) - MAX_HISTORY_MESSAGES
        if excess > 0:
            del self.messages[:excess]
            while self.messages and self.messages[0]["role"] != "user":
                del self.messages[0]


# ------------------------------------------------------------------ the brain


class LlmBrain:
    """The built-in agent over an OpenAI-compatible server (see module docstring).

    Events: ``utterance`` -> the transcript as a user message; ``dtmf`` -> a user message
    naming the digits; ``call.started`` -> nothing (the greeting is ``GREETING_TEXT``, spoken
    by the voice agent and seeded into the history as the agent's first message);
    ``call.ended`` -> the history is dropped, no request is made.

    Deadlines as for the webhook brain: the first part within ``settings.agent_timeout``,
    the whole reply within ``total_timeout`` (default max(30 s, 4 x agent_timeout)), at most
    ``AGENT_MAX_REPLY_BYTES`` of body (``AgentError("too_large")``). Nothing
    is retried: the voice agent speaks the fallback. At most ``max_calls`` histories are kept
    (default max(64, 2 x MAX_CALLS)); the least recently used goes first.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        settings: Settings,
        *,
        total_timeout: float | None = None,
        max_calls: int | None = None,
    ) -> None:
        self._session = session
        self._url = settings.llm_base_url.rstrip("/") + "/chat/completions"
        self._api_key = settings.llm_api_key
        self._headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if settings.llm_api_key:
            self._headers["Authorization"] = f"Bearer {settings.llm_api_key}"
        self._model = settings.llm_model
        self._system = settings.llm_system_prompt
        self._tools = settings.llm_tools
        self._greeting = settings.greeting_text
        self._first_text_timeout = settings.agent_timeout
        self._total_timeout = max(
            self._first_text_timeout,
            max(30.0, 4 * settings.agent_timeout) if total_timeout is None else total_timeout,
        )
        self._max_calls = max_calls or max(MIN_TRACKED_CALLS, 2 * settings.max_calls)
        self._max_bytes = settings.agent_max_reply_bytes
        self._calls: OrderedDict[str, CallHistory] = OrderedDict()

    def history(self, session_id: str) -> CallHistory:
        """The call's history (created, with the configured greeting, on first use)."""
        history = self._calls.get(session_id)
        if history is None:
            history = CallHistory()
            if self._greeting:
                history.messages.append({"role": "assistant", "content": self._greeting})
            self._calls[session_id] = history
            while len(self._calls) > self._max_calls:
                self._calls.popitem(last=False)
        else:
            self._calls.move_to_end(session_id)
        return history

    def payload(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        """The request body for ``messages`` (system prompt first)."""
        body: dict[str, Any] = {
            "model": self._model,
            "messages": [{"role": "system", "content": self._system}, *messages],
            "stream": True,
        }
        if self._tools:
            body["tools"] = TOOLS
        return body

    async def reply(self, request: AgentRequest) -> AsyncIterator[ReplyPart]:
        if request.event == "call.ended":
            self._calls.pop(request.session_id, None)
            return
        if request.event == "call.started":
            self.history(request.session_id)
            return
        if request.event == "dtmf":
            user = DTMF_MESSAGE.format(digits=request.digits or request.text)
        else:
            user = request.text
        history = self.history(request.session_id)
        history.settle(request)
        if not user.strip():
            return
        exchange = _Exchange(user)
        history.pending = exchange
        body = self.payload([*history.messages, {"role": "user", "content": user}])
        try:
            async for part in self._stream(body):
                if isinstance(part, TextDelta):
                    exchange.reply.append(part.text)
                yield part
            exchange.state = "complete"
        finally:
            if exchange.state == "open":
                exchange.state = "aborted"  # failed, timed out, or the caller barged in

    async def _stream(self, body: dict[str, Any]) -> AsyncIterator[ReplyPart]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        total_deadline = start + self._total_timeout
        first_deadline = min(start + self._first_text_timeout, total_deadline)
        parser = ChatStreamParser(self._max_bytes)
        got_first = False
        response: aiohttp.ClientResponse | None = None
        try:
            try:
                async with asyncio.timeout_at(first_deadline):
                    response = await self._session.post(
                        self._url, data=orjson.dumps(body), headers=self._headers
                    )
            except TimeoutError:
                raise AgentError("timeout", "no answer before the first-text deadline") from None
            except aiohttp.ClientError as exc:
                raise AgentError("connect", self._safe(f"{type(exc).__name__}: {exc}")) from None
            if not 200 <= response.status < 300:
                raise AgentError(
                    "http_status",
                    self._safe(await _error_detail(response, total_deadline)),
                    status=response.status,
                )
            while True:
                try:
                    async with asyncio.timeout_at(total_deadline if got_first else first_deadline):
                        chunk = await response.content.readany()
                except TimeoutError:
                    which = "whole reply" if got_first else "first text"
                    raise AgentError("timeout", f"{which} deadline passed") from None
                except aiohttp.ClientError as exc:
                    detail = self._safe(f"{type(exc).__name__}: {exc}")
                    raise AgentError("connect", detail) from None
                parts = parser.feed(chunk) if chunk else parser.end()
                for part in parts:
                    got_first = True
                    yield part
                if not chunk:
                    return
        finally:
            if response is not None:
                response.release()

    def _safe(self, text: str) -> str:
        """``text`` without the API key (a server may echo it in an error message)."""
        return text.replace(self._api_key, "***") if self._api_key else text


async def _error_detail(response: aiohttp.ClientResponse, deadline: float) -> str:
    """``HTTP <status>: <error.type/code>: <error.message>`` from an OpenAI error body."""
    raw = b""
    try:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout_at(min(deadline, loop.time() + 1.0)):
            raw = await response.content.read(ERROR_BODY_BYTES)
    except (TimeoutError, aiohttp.ClientError):
        pass
    detail = f"HTTP {response.status}"
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        obj = None
    error = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(error, dict):
        kind = error.get("code") or error.get("type")
        if kind:
            detail += f" ({kind})"
        return f"{detail}: {str(error.get('message', ''))[:200]}"
    if isinstance(error, str):
        return f"{detail}: {error[:200]}"
    return f"{detail}: {raw[:200].decode('utf-8', 'replace')!r}"
