"""The agent webhook client: request body, reply parsing, streaming glue.

Contract: docs/protocols/agent-webhook.md. The request extends the original system's
``{"text", "session_id"}`` (see :func:`build_request`); the reply may come in any form users
run today, recognised by its first bytes (never by Content-Type, which n8n sets to
``application/json`` even when it streams):

* **n8n streaming NDJSON** (first line is a JSON object whose ``type`` is one of ``begin``,
  ``item``, ``end``, ``error``, ``tool-call-start``, ``tool-call-end``): ``item`` contents
  are text deltas. n8n also streams the "Respond to Webhook" node's body as a last ``item``
  whose content is the whole reply again (``{"output": "<whole reply>"}``). It is not spoken
  twice: an ``item`` whose content is a JSON object is a *final answer*, not a delta; once
  deltas were seen its text is dropped (only the part it adds after the deltas, if it
  starts with exactly the deltas, is spoken) and its actions are honoured. A non-JSON item
  from a different node than the deltas whose text equals the deltas (whitespace aside) is
  dropped too. ``error`` chunks raise ``AgentError("agent_error")``.
* **Server-sent events** (first line starts with ``data:``, ``event:``, ``id:`` or ``:``),
  OpenAI chat-completions style: ``choices[0].delta.content`` (or ``.message.content``, or
  a top-level ``delta.text``) are deltas; ``data: [DONE]`` ends the reply; an ``error``
  object raises ``AgentError("agent_error")``.
* **Plain JSON** (first byte ``{`` or ``[`` and not NDJSON): see :func:`parse_reply_object`
  for the accepted text keys and action shapes. A list uses its first object (n8n's
  "all incoming items" mode).
* **Plain text**: anything else that is valid UTF-8, streamed as it arrives. A body that
  starts like HTML (``<``) is an error page, not a reply: ``AgentError("malformed")``.

The parser (:class:`ReplyParser`) is sans-I/O: bytes in, :data:`ReplyPart` list out, in time
linear in the body (a hostile reply of blank lines, keep-alive comments or one giant line
must not freeze the event loop every call shares: issue 10 item 1). The glue
(:func:`stream_reply`) owns the HTTP request, the two deadlines and the size bound, and feeds
the parser in slices of at most :data:`SLICE_BYTES`, yielding to the loop between slices.
:func:`post_event` sends a fire-and-forget event (``call.ended``): it waits for the status
line only, never for the body.
"""

from __future__ import annotations

import asyncio
import encodings.utf_8
import logging
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeAlias

import aiohttp
import orjson

log = logging.getLogger(__name__)

AgentEvent: TypeAlias = Literal["utterance", "call.started", "dtmf", "call.ended"]
ErrorKind: TypeAlias = Literal[
    "timeout", "http_status", "connect", "malformed", "empty", "agent_error", "too_large"
]
ActionKind: TypeAlias = Literal["hangup", "transfer"]

# The closed set of AgentError kinds (safe as a metric label).
ERROR_KINDS: Final[tuple[ErrorKind, ...]] = (
    "timeout",  # no first text within first_text_timeout, or not finished within total_timeout
    "http_status",  # a non-2xx answer
    "connect",  # could not connect, or the connection broke mid-reply
    "malformed",  # a body that is no reply form we know (garbage, HTML, bad JSON, bad UTF-8)
    "empty",  # a well-formed reply with no text and no action
    "agent_error",  # the agent said it failed (n8n `error` chunk, SSE `error` object)
    "too_large",  # the body passed the size bound (AGENT_MAX_REPLY_BYTES)
)

MAX_REPLY_BYTES: Final = 1 << 20  # a spoken reply is a few KB; more is a broken agent
# The glue hands the parser at most this much at a time and lets other calls run between
# slices: even the costliest body (one tiny line after another) then blocks the shared loop
# for a few milliseconds per slice, never for the whole body.
SLICE_BYTES: Final = 16 * 1024
_ACCEPT: Final = "application/x-ndjson, text/event-stream, application/json, text/plain"
_N8N_TYPES: Final = frozenset({"begin", "item", "end", "error", "tool-call-start", "tool-call-end"})
_TEXT_KEYS: Final = ("output", "reply", "text")
_SSE_FIELDS: Final = (b"data:", b"event:", b"id:", b"retry:", b":")
# Runs skipped in C rather than line by line: whitespace before the form is known and between
# NDJSON lines; blank and comment (keep-alive) lines of SSE while no event data is pending.
# A comment line is only skipped whole when it ends within 4 KiB, so a partial line at the
# end of the buffer is scanned a bounded amount per feed (longer ones go line by line).
_WHITESPACE: Final = re.compile(rb"[ \t\r\n\f\v]+")
_SSE_SKIP: Final = re.compile(rb"(?:(?::[^\n]{0,4096})?\r?\n)+")


# ------------------------------------------------------------------------ replies


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of reply text, in order; concatenate deltas to get the reply."""

    text: str


@dataclass(frozen=True, slots=True)
class Action:
    """Call control asked for by the agent.

    ``hangup``: end the call after the sentence being spoken. ``transfer``: hand the
    caller to ``target`` (phone number or SIP URI; None means the configured default).
    """

    kind: ActionKind
    target: str | None = None


ReplyPart: TypeAlias = TextDelta | Action


class AgentError(Exception):
    """The agent gave no usable reply. ``kind`` is one of :data:`ERROR_KINDS`.

    ``status`` is the HTTP status for ``http_status``; ``detail`` is for the log line.
    """

    def __init__(self, kind: ErrorKind, detail: str = "", status: int | None = None) -> None:
        self.kind: ErrorKind = kind
        self.detail = detail
        self.status = status
        super().__init__(f"agent {kind}" + (f": {detail}" if detail else ""))


# ------------------------------------------------------------------------ requests


@dataclass(frozen=True, slots=True)
class Interruption:
    """What the caller heard of the previous reply before speaking over it.

    ``reply`` is the whole reply text that was being spoken, ``heard`` the part the caller
    actually heard (whole sentences whose audio played, as the transport reported), and
    ``heard_ms`` how much of the reply's audio had played.
    """

    reply: str
    heard: str
    heard_ms: int


@dataclass(frozen=True, slots=True)
class AgentRequest:
    """One request to the agent; :func:`build_request` turns it into the JSON body.

    ``metadata`` are the carrier's call details (from/to...), ``params`` the custom
    parameters (Twilio ``<Parameter>``, Asterisk URI params), all strings. ``digits`` is for
    ``dtmf``; ``record`` (the call record: transcript, timings, outcome) for ``call.ended``.
    """

    event: AgentEvent
    session_id: str
    turn: int = 0
    text: str = ""
    call_id: str = ""
    transport: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, str] = field(default_factory=dict)
    interrupted: Interruption | None = None
    digits: str = ""
    record: Mapping[str, Any] | None = None


def build_request(request: AgentRequest) -> dict[str, Any]:
    """The JSON body POSTed to the agent webhook.

    ::

        {
          "text": "<transcript>",          # utterance: what the caller said;
                                           # dtmf: the digits; call.started/ended: ""
          "session_id": "<stable per call>",  # the original contract: text + session_id
          "event": "utterance",            # | "call.started" | "dtmf" | "call.ended"
          "turn": 3,                       # 0 for call.started, then 1, 2, ... per request
          "call": {
            "id": "<carrier call id>",     # Twilio CallSid, Asterisk channel id, AudioSocket UUID
            "transport": "twilio",         # | "asterisk_ws" | "audiosocket"
            "metadata": {"from": "...", "to": "..."},   # strings, as the carrier gave them
            "params": {"customer": "42"}   # custom parameters, strings
          },
          "interrupted": null,             # or {"reply": "...", "heard": "...", "heard_ms": 1840}
          "digits": "123#",                # dtmf only
          "record": {...}                  # call.ended only: the call record
        }

    Keys ``text``, ``session_id``, ``event``, ``turn``, ``call`` and ``interrupted`` are
    always present, so a workflow written for the original contract keeps working.
    """
    interrupted: dict[str, Any] | None = None
    if request.interrupted is not None:
        interrupted = {
            "reply": request.interrupted.reply,
            "heard": request.interrupted.heard,
            "heard_ms": request.interrupted.heard_ms,
        }
    text = request.digits if request.event == "dtmf" and not request.text else request.text
    body: dict[str, Any] = {
        "text": text,
        "session_id": request.session_id,
        "event": request.event,
        "turn": request.turn,
        "call": {
            "id": request.call_id,
            "transport": request.transport,
            "metadata": dict(request.metadata),
            "params": dict(request.params),
        },
        "interrupted": interrupted,
    }
    if request.event == "dtmf":
        body["digits"] = request.digits
    if request.event == "call.ended":
        body["record"] = dict(request.record) if request.record is not None else {}
    return body


# ------------------------------------------------------------------ JSON replies


def _action_from(value: Any) -> Action | None:
    """One action in any accepted shape, or None (unknown shapes are ignored)."""
    if isinstance(value, str):
        name = value.strip().lower()
        if name == "hangup":
            return Action("hangup")
        if name == "transfer":
            return Action("transfer")
        return None
    if not isinstance(value, dict):
        return None
    kind = value.get("type", value.get("kind", value.get("action", value.get("name"))))
    target = value.get("target", value.get("to", value.get("number")))
    target_str = target if isinstance(target, str) and target.strip() else None
    if isinstance(kind, str):
        found = _action_from(kind)
        if found is not None and found.kind == "transfer":
            return Action("transfer", target_str)
        return found
    if value.get("hangup") is True:
        return Action("hangup")
    transfer = value.get("transfer")
    if isinstance(transfer, str) and transfer.strip():
        return Action("transfer", transfer.strip())
    if transfer is True:
        return Action("transfer", target_str)
    return None


def parse_reply_object(obj: Any) -> tuple[str | None, list[Action]]:
    """Text and actions of a JSON reply (plain JSON, or an n8n final-answer item).

    Text: the first string among ``output``, ``reply``, ``text``, else OpenAI's
    ``choices[0].message.content``; None when there is none. Actions, in this order:

    * ``"hangup": true`` and ``"transfer": "<number or SIP URI>"`` at the top level;
    * ``"action"``: a name (``"hangup"``, ``"transfer"`` with a top-level ``"target"`` or
      ``"to"``) or an object: ``{"type"|"kind"|"action"|"name": "hangup"|"transfer",
      "target"|"to"|"number": "..."}`` or ``{"hangup": true}`` / ``{"transfer": "+123"}``;
    * ``"actions"``: a list of any of the ``"action"`` forms.

    Unknown action names and shapes are ignored (logged at debug). A list uses its first
    element that is an object.
    """
    if isinstance(obj, list):
        obj = next((item for item in obj if isinstance(item, dict)), None)
    if not isinstance(obj, dict):
        return None, []
    text: str | None = None
    for key in _TEXT_KEYS:
        value = obj.get(key)
        if isinstance(value, str):
            text = value
            break
    if text is None:
        text = _openai_message(obj)
    actions: list[Action] = []
    if obj.get("hangup") is True:
        actions.append(Action("hangup"))
    transfer = obj.get("transfer")
    if isinstance(transfer, str) and transfer.strip():
        actions.append(Action("transfer", transfer.strip()))
    raw_actions: list[Any] = []
    if "action" in obj:
        single = obj["action"]
        if isinstance(single, str):
            # {"action": "transfer", "target": "+1..."}: the target sits beside it.
            single = {"type": single, "target": obj.get("target", obj.get("to"))}
        raw_actions.append(single)
    listed = obj.get("actions")
    if isinstance(listed, list):
        raw_actions.extend(listed)
    elif isinstance(listed, dict):
        raw_actions.append(listed)
    for raw in raw_actions:
        action = _action_from(raw)
        if action is None:
            log.debug("agent action ignored: %.100r", raw)
        elif action not in actions:
            actions.append(action)
    return text, actions


def _openai_message(obj: dict[str, Any]) -> str | None:
    choices = obj.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        message = choices[0].get("message")
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            return str(message["content"])
    return None


def _openai_delta(obj: dict[str, Any]) -> str | None:
    choices = obj.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        delta = choices[0].get("delta")
        if isinstance(delta, dict):
            content = delta.get("content")
            return content if isinstance(content, str) else None
        return _openai_message(obj)
    delta = obj.get("delta")  # Anthropic-style content_block_delta
    if isinstance(delta, dict) and isinstance(delta.get("text"), str):
        return str(delta["text"])
    return None


# ------------------------------------------------------------------ the parser


def _loads(data: bytes | bytearray | str) -> Any:
    """JSON value, or the ``_BAD`` sentinel."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return _BAD


_BAD: Final = object()


def _squash(text: str) -> str:
    return "".join(text.split())


class ReplyParser:
    """Sans-I/O reader of one agent reply: ``feed(bytes)`` as they arrive, then ``end()``.

    Both return the :data:`ReplyPart` values that became known, in order, and raise
    :class:`AgentError` (``malformed``, ``agent_error``, ``empty``) when the reply is
    unusable. ``form`` tells which reply form was recognised (``None`` until known).
    Lines of an NDJSON or SSE stream that are not JSON are skipped and counted in
    ``bad_lines`` rather than failing a reply that is already being spoken; a reply made
    only of such lines is ``malformed``.
    """

    def __init__(self, max_bytes: int = MAX_REPLY_BYTES) -> None:
        self.form: Literal["ndjson", "sse", "json", "text"] | None = None
        self.bad_lines = 0
        self._max_bytes = max_bytes
        self._size = 0
        # Unparsed bytes. Consumed lines are deleted from the front (O(1) amortized for a
        # bytearray), and buf[:_scan] is known to hold no newline, so no byte is searched
        # twice while a long line arrives in pieces.
        self._buf = bytearray()
        self._scan = 0
        self._deltas: list[str] = []
        self._delta_node: object = None
        self._produced = False
        self._done = False  # SSE [DONE] seen: the rest is ignored
        self._sse_data: list[bytes] = []
        self._text_pending = b""  # bytes buffered while sniffing, once the form is text
        self._text_decoder = encodings.utf_8.IncrementalDecoder("strict")

    # -- public

    def feed(self, data: bytes) -> list[ReplyPart]:
        """Bytes of the body as they arrive (any split); linear time in the body size.

        Raises ``AgentError("too_large")`` once the body passes ``max_bytes``.
        """
        if not data or self._done:
            return []
        self._size += len(data)
        if self._size > self._max_bytes:
            raise AgentError("too_large", f"reply larger than {self._max_bytes} bytes")
        if self.form == "text":
            return self._text(data, final=False)
        self._buf += data
        if self.form is None and not self._sniff(final=False):
            return []
        return self._drain(final=False)

    def end(self) -> list[ReplyPart]:
        """The body is complete; return the last parts or raise if the reply is unusable."""
        out: list[ReplyPart] = []
        if not self._done:
            if self.form is None:
                self._sniff(final=True)
            if self.form is not None:
                out = self._drain(final=True)
        if not self._produced and not out:
            if self.bad_lines:
                raise AgentError("malformed", f"{self.bad_lines} unreadable line(s)")
            raise AgentError("empty")
        return out

    # -- form detection

    def _sniff(self, final: bool) -> bool:
        """Decide the reply form from the first bytes; False means "need more bytes"."""
        # Leading whitespace tells nothing about the form and no form keeps it: drop it as
        # it comes, so a body of blank lines is scanned once, not once per chunk.
        blank = _WHITESPACE.match(self._buf)
        if blank is not None:
            del self._buf[: blank.end()]
            self._scan = max(0, self._scan - blank.end())
        head = self._buf
        if not head:
            return False if not final else self._set("text")
        if head[0] in b"{[":
            newline = head.find(b"\n", self._scan)
            if newline < 0 and not final:
                self._scan = len(head)
                return False
            first = head if newline < 0 else head[:newline]
            obj = _loads(first)
            if isinstance(obj, dict) and obj.get("type") in _N8N_TYPES:
                return self._set("ndjson")
            return self._set("json")
        if head[:1] == b"<":
            raise AgentError("malformed", "HTML or XML body")
        # A short head could still become "data:" / "event:": wait for a few bytes more.
        short = not final and len(head) < 6 and b"\n" not in head
        if short and any(f.startswith(head) for f in _SSE_FIELDS):
            return False
        if head.startswith(_SSE_FIELDS):
            return self._set("sse")
        self._set("text")
        return True

    def _set(self, form: Literal["ndjson", "sse", "json", "text"]) -> bool:
        self.form = form
        if form == "text":
            # Plain text: hand over what was buffered (leading whitespace already dropped).
            self._text_pending = bytes(self._buf)
            self._buf.clear()
            self._scan = 0
        return True

    def _drain(self, final: bool) -> list[ReplyPart]:
        if self.form == "ndjson":
            return self._lines(final, self._ndjson_line)
        if self.form == "sse":
            out = self._lines(final, self._sse_line)
            if final and self._sse_data:
                out.extend(self._sse_dispatch())
            return out
        if self.form == "json":
            return self._json(final)
        if self.form == "text":
            pending, self._text_pending = self._text_pending, b""
            return self._text(pending, final)
        return []

    # -- forms

    def _lines(self, final: bool, handle: Any) -> list[ReplyPart]:
        """Complete lines to ``handle``, each byte searched once (see ``_scan``)."""
        out: list[ReplyPart] = []
        buf = self._buf
        sse = self.form == "sse"
        skip = _SSE_SKIP if sse else _WHITESPACE
        while not self._done and buf:
            if not (sse and self._sse_data):  # a blank line with data pending dispatches it
                run = skip.match(buf)
                if run is not None:
                    del buf[: run.end()]
                    self._scan = 0
                    continue
            newline = buf.find(b"\n", self._scan)
            if newline < 0:
                if not final:
                    self._scan = len(buf)
                    break
                line = bytes(buf)
                buf.clear()
            else:
                line = bytes(buf[:newline])
                del buf[: newline + 1]
            self._scan = 0
            out.extend(handle(line.rstrip(b"\r")))
        return out

    def _ndjson_line(self, line: bytes) -> list[ReplyPart]:
        if not line.strip():
            return []
        obj = _loads(line)
        if not isinstance(obj, dict):
            self.bad_lines += 1
            log.debug("agent NDJSON line skipped: %.100r", line)
            return []
        kind = obj.get("type")
        if kind == "error":
            raise AgentError("agent_error", str(obj.get("content", obj.get("message", "")))[:200])
        if kind == "item":
            content = obj.get("content")
            if not isinstance(content, str) or not content:
                return []
            meta = obj.get("metadata")
            node = meta.get("nodeName") if isinstance(meta, dict) else None
            return self._item(content, node)
        if kind is None:
            # An object without a type inside the stream: treat it as a final answer.
            return self._final_answer(obj)
        return []  # begin, end, tool-call-start, tool-call-end, or a newer chunk type

    def _item(self, content: str, node: object) -> list[ReplyPart]:
        stripped = content.strip()
        if stripped[:1] in ("{", "["):
            obj = _loads(stripped)
            if isinstance(obj, dict | list):
                return self._final_answer(obj)
        if (
            self._deltas
            and node is not None
            and node != self._delta_node
            and _squash(content) == _squash("".join(self._deltas))
        ):
            return []  # another node repeating the whole reply as plain text
        if not self._deltas:
            self._delta_node = node
        self._deltas.append(content)
        self._produced = True
        return [TextDelta(content)]

    def _final_answer(self, obj: Any) -> list[ReplyPart]:
        text, actions = parse_reply_object(obj)
        out: list[ReplyPart] = []
        if text:
            spoken = "".join(self._deltas)
            if not self._deltas:
                out.append(TextDelta(text))
                self._deltas.append(text)
            elif text.startswith(spoken) and len(text) > len(spoken):
                rest = text[len(spoken) :]
                out.append(TextDelta(rest))  # the deltas stopped short of the answer
                self._deltas.append(rest)
            # else: the deltas already said it; never speak a reply twice
        out.extend(actions)
        if out:
            self._produced = True
        return out

    def _sse_line(self, line: bytes) -> list[ReplyPart]:
        # https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation
        if not line:
            return self._sse_dispatch()
        if line.startswith(b":"):
            return []  # comment / keepalive
        name, _, value = line.partition(b":")
        if name == b"data":
            self._sse_data.append(value[1:] if value.startswith(b" ") else value)
        return []  # event:, id:, retry: carry nothing we need

    def _sse_dispatch(self) -> list[ReplyPart]:
        if not self._sse_data:
            return []
        data = b"\n".join(self._sse_data)
        self._sse_data = []
        if data.strip() == b"[DONE]":
            self._done = True
            return []
        obj = _loads(data)
        if not isinstance(obj, dict):
            self.bad_lines += 1
            log.debug("agent SSE event skipped: %.100r", data)
            return []
        error = obj.get("error")
        if error:
            message = error.get("message", error) if isinstance(error, dict) else error
            raise AgentError("agent_error", str(message)[:200])
        content = _openai_delta(obj)
        if not content:
            return []
        self._produced = True
        return [TextDelta(content)]

    def _json(self, final: bool) -> list[ReplyPart]:
        if not final:
            return []  # one JSON document: it is only complete at the end of the body
        obj = _loads(self._buf)
        self._buf.clear()
        if obj is _BAD:
            raise AgentError("malformed", "invalid JSON")
        text, actions = parse_reply_object(obj)
        out: list[ReplyPart] = []
        if text and text.strip():
            out.append(TextDelta(text))
        out.extend(actions)
        if text is None and not actions:
            keys = sorted(obj)[:5] if isinstance(obj, dict) else type(obj).__name__
            raise AgentError("malformed", f"no text key in JSON reply (keys {keys})")
        self._produced = self._produced or bool(out)
        return out

    def _text(self, data: bytes, final: bool) -> list[ReplyPart]:
        try:
            text = self._text_decoder.decode(data, final)
        except UnicodeDecodeError:
            raise AgentError("malformed", "reply is not UTF-8 text") from None
        if "\x00" in text:
            raise AgentError("malformed", "binary reply")
        if not self._produced:
            text = text.lstrip()
        if not text:
            return []
        self._produced = True
        return [TextDelta(text)]


# ------------------------------------------------------------------ the glue


async def stream_reply(
    session: aiohttp.ClientSession,
    url: str,
    payload: Mapping[str, Any],
    *,
    first_text_timeout: float,
    total_timeout: float,
    max_bytes: int = MAX_REPLY_BYTES,
) -> AsyncIterator[ReplyPart]:
    """POST ``payload`` to the agent and yield the reply's parts as the body streams in.

    ``session`` is the process-wide pool (one ``aiohttp.ClientSession``). Deadlines are
    wall-clock from this call: the first part (text or action) must arrive within
    ``first_text_timeout`` seconds and the whole body within ``total_timeout``; otherwise
    ``AgentError("timeout")`` is raised (parts already yielded stay valid). Other failures
    raise :class:`AgentError` with kind ``connect``, ``http_status``, ``malformed``,
    ``empty``, ``agent_error`` or ``too_large`` (more than ``max_bytes`` of body; reading
    stops there). The body is parsed in slices of :data:`SLICE_BYTES` with a yield to the
    event loop between them, so a hostile body never stalls other calls. Nothing is
    retried: a reply is not idempotent (the agent may have acted on the request), so the
    caller speaks a fallback instead.

    Closing the iterator early (``aclose()``, or a cancelled consumer) releases the
    connection at once.
    """
    loop = asyncio.get_running_loop()
    start = loop.time()
    total_deadline = start + total_timeout
    first_deadline = min(start + first_text_timeout, total_deadline)
    parser = ReplyParser(max_bytes)
    got_first = False
    body = orjson.dumps(payload if isinstance(payload, dict) else dict(payload))
    headers = {"Content-Type": "application/json", "Accept": _ACCEPT}
    response: aiohttp.ClientResponse | None = None
    try:
        try:
            async with asyncio.timeout_at(first_deadline):
                response = await session.post(url, data=body, headers=headers)
        except TimeoutError:
            raise AgentError("timeout", "no answer before the first-text deadline") from None
        except aiohttp.ClientError as exc:
            raise AgentError("connect", f"{type(exc).__name__}: {exc}") from None
        if not 200 <= response.status < 300:
            snippet = b""
            try:
                async with asyncio.timeout_at(min(total_deadline, loop.time() + 1.0)):
                    snippet = await response.content.read(200)
            except (TimeoutError, aiohttp.ClientError):
                pass
            raise AgentError(
                "http_status",
                f"HTTP {response.status}: {snippet.decode('utf-8', 'replace')!r}",
                status=response.status,
            )
        while True:
            deadline = total_deadline if got_first else first_deadline
            try:
                async with asyncio.timeout_at(deadline):
                    chunk = await response.content.readany()
            except TimeoutError:
                which = "whole reply" if got_first else "first text"
                raise AgentError("timeout", f"{which} deadline passed") from None
            except aiohttp.ClientError as exc:
                raise AgentError("connect", f"{type(exc).__name__}: {exc}") from None
            if not chunk:
                for part in parser.end():
                    yield part
                return
            for start in range(0, len(chunk), SLICE_BYTES):
                if start:
                    await asyncio.sleep(0)  # other calls run between slices
                for part in parser.feed(chunk[start : start + SLICE_BYTES]):
                    got_first = True
                    yield part
    finally:
        if response is not None:
            response.release()


async def post_event(
    session: aiohttp.ClientSession, url: str, payload: Mapping[str, Any], *, timeout: float
) -> None:
    """POST a fire-and-forget event (``call.ended``) and wait only for the status line.

    The body is neither awaited nor parsed: an agent that streams a long answer to an event
    nobody will hear is healthy, not slow (issue 12 item 5). The connection is closed rather
    than drained. Raises :class:`AgentError` ``timeout`` (no status line within
    ``timeout``), ``connect`` or ``http_status``.
    """
    body = orjson.dumps(payload if isinstance(payload, dict) else dict(payload))
    headers = {"Content-Type": "application/json", "Accept": _ACCEPT}
    try:
        async with asyncio.timeout(timeout):
            response = await session.post(url, data=body, headers=headers)
    except TimeoutError:
        raise AgentError("timeout", "no answer to the event") from None
    except aiohttp.ClientError as exc:
        raise AgentError("connect", f"{type(exc).__name__}: {exc}") from None
    try:
        if not 200 <= response.status < 300:
            raise AgentError("http_status", f"HTTP {response.status}", status=response.status)
    finally:
        response.close()  # the body is not wanted: drop the connection instead of reading it
