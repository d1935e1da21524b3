"""A minimal agent for the Hamsa voice gateway's webhook (AGENT=webhook). Copy and edit.

Run it:      pip install aiohttp && python agent.py            (listens on :8090)
Gateway:     AGENT=webhook AGENT_WEBHOOK_URL=http://127.0.0.1:8090/agent make run

The gateway POSTs one JSON object per event (README, "The agent webhook"):

    {"text": "...", "session_id": "<call id>", "event": "utterance" | "dtmf" |
     "call.started" | "call.ended", "turn": 3, "call": {"id", "transport", "metadata",
     "params"}, "interrupted": null | {"reply", "heard", "heard_ms"}, "digits": "12#"}

and speaks what comes back, in any of these forms:

* plain text (``text/plain``), streamed: each sentence is spoken as soon as it arrives, so
  stream when your reply is slow to produce (an LLM);
* JSON ``{"output": "<reply>"}``, with actions: ``"hangup": true`` ends the call after the
  reply; ``"transfer": "+15551234567"`` (or ``"sip:..."``) transfers it.

This agent keeps a tiny per-call memory, greets, answers DTMF menu choices, transfers on
"موظف" (agent) or key 0, hangs up on "مع السلامة" (goodbye), and otherwise streams a reply.
Replace ``think()`` with your own logic (an LLM call, a database lookup...).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

TRANSFER_TO = os.environ.get("TRANSFER_TO", "+15551234567")  # where "agent" calls go
GREETING = "أهلا بك في خدمة العملاء. كيف يمكنني مساعدتك اليوم؟"
GOODBYE = "شكرا لاتصالك، مع السلامة."
TRANSFERRING = "سأحولك الآن إلى أحد موظفينا، انتظر لحظة من فضلك."


@dataclass
class Call:
    """What this agent remembers about one call (dropped at call.ended)."""

    said: list[str] = field(default_factory=list)  # what the caller said, in order
    heard: list[str] = field(default_factory=list)  # what the caller heard of our replies


CALLS: web.AppKey[dict[str, Call]] = web.AppKey("calls", dict)


async def think(call: Call, text: str) -> AsyncIterator[str]:
    """The reply, as pieces of text. Here: a canned answer, streamed word by word."""
    reply = f"سمعتك تقول: {text}. هذا طلبك رقم {len(call.said)} في هذه المكالمة."
    for word in reply.split(" "):
        yield word + " "
        await asyncio.sleep(0.02)  # stands for an LLM producing tokens


async def handle(request: web.Request) -> web.StreamResponse:
    try:
        body: dict[str, Any] = await request.json()
    except ValueError:
        return web.json_response({"error": "expected a JSON body"}, status=400)
    calls = request.app[CALLS]
    session = str(body.get("session_id", ""))
    event = body.get("event", "utterance")  # the original contract had only text+session_id

    if event == "call.ended":
        calls.pop(session, None)  # body["record"] has the transcript and timings
        return web.json_response({"output": ""})
    call = calls.setdefault(session, Call())
    if event == "call.started":
        return web.json_response({"output": GREETING})

    interrupted = body.get("interrupted")
    if interrupted:  # the caller spoke over our last reply and heard only this part of it
        call.heard.append(str(interrupted.get("heard", "")))

    if event == "dtmf":
        digits = str(body.get("digits") or body.get("text", ""))
        if digits.startswith("0"):
            return web.json_response({"output": TRANSFERRING, "transfer": TRANSFER_TO})
        return web.json_response({"output": f"لقد اخترت الرقم {' '.join(digits)}."})

    text = str(body.get("text", "")).strip()
    call.said.append(text)
    if "مع السلامة" in text or "goodbye" in text.lower():
        return web.json_response({"output": GOODBYE, "hangup": True})
    if "موظف" in text:
        return web.json_response({"output": TRANSFERRING, "transfer": TRANSFER_TO})

    response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
    await response.prepare(request)
    async for piece in think(call, text):
        await response.write(piece.encode("utf-8"))
    await response.write_eof()
    return response


def make_app() -> web.Application:
    app = web.Application()
    app[CALLS] = {}
    app.router.add_post("/agent", handle)
    return app


if __name__ == "__main__":
    web.run_app(make_app(), host="127.0.0.1", port=int(os.environ.get("PORT", "8090")))
