"""examples/: the minimal webhook agent answers the gateway's webhook client, and the n8n
workflow is wired and answers in forms the gateway reads."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import pytest

from gateway.agent.brains import WebhookBrain
from gateway.agent.webhook import (
    Action,
    AgentRequest,
    Interruption,
    ReplyParser,
    ReplyPart,
    TextDelta,
    build_request,
)
from gateway.config import AgentMode
from tests.conftest import TIMEOUT, make_settings

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
WORKFLOW = EXAMPLES / "n8n" / "voice-agent.workflow.json"


def load_agent() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "example_agent", EXAMPLES / "webhook_agent" / "agent.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


async def test_the_example_webhook_agent_answers_every_event(aiohttp_server: Any) -> None:
    agent = load_agent()
    app = agent.make_app()
    server = await aiohttp_server(app)
    settings = make_settings(
        agent=AgentMode.WEBHOOK, agent_webhook_url=str(server.make_url("/agent"))
    )

    async with aiohttp.ClientSession() as session:
        brain = WebhookBrain(session, settings)

        async def ask(request: AgentRequest) -> list[ReplyPart]:
            async with asyncio.timeout(TIMEOUT):
                return [part async for part in brain.reply(request)]

        assert await ask(AgentRequest("call.started", "CA1")) == [TextDelta(agent.GREETING)]
        parts = await ask(AgentRequest("utterance", "CA1", 1, text="أين طلبي"))
        assert len(parts) > 3  # streamed as it is produced
        assert "".join(p.text for p in parts if isinstance(p, TextDelta)).startswith(
            "سمعتك تقول: أين طلبي."
        )
        heard = Interruption("سمعتك تقول: أين طلبي. هذا طلبك", "سمعتك تقول: أين طلبي.", 900)
        parts = await ask(AgentRequest("utterance", "CA1", 2, text="أريد موظف", interrupted=heard))
        assert parts == [TextDelta(agent.TRANSFERRING), Action("transfer", agent.TRANSFER_TO)]
        parts = await ask(AgentRequest("dtmf", "CA1", 3, digits="0"))
        assert parts[-1] == Action("transfer", agent.TRANSFER_TO)
        parts = await ask(AgentRequest("utterance", "CA1", 4, text="شكرا، مع السلامة"))
        assert parts == [TextDelta(agent.GOODBYE), Action("hangup")]
        assert app[agent.CALLS]["CA1"].heard == ["سمعتك تقول: أين طلبي."]
        ended = build_request(AgentRequest("call.ended", "CA1", 5, record={}))
        async with session.post(settings.agent_webhook_url, json=ended) as response:
            assert response.status == 200
        assert "CA1" not in app[agent.CALLS]  # the call's memory is dropped


def workflow() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(WORKFLOW.read_text(encoding="utf-8"))
    return data


def node(name: str) -> dict[str, Any]:
    return next(n for n in workflow()["nodes"] if n["name"] == name)


def test_the_n8n_workflow_is_wired_for_every_gateway_event() -> None:
    data = workflow()
    names = {n["name"] for n in data["nodes"]}
    assert len(names) == len(data["nodes"])
    for source, outputs in data["connections"].items():
        assert source in names
        for branches in outputs.values():
            for branch in branches:
                assert all(link["node"] in names for link in branch)
    hook = node("Gateway Webhook")["parameters"]
    assert hook["httpMethod"] == "POST" and hook["responseMode"] == "responseNode"
    rules = node("Route by event")["parameters"]["rules"]["values"]
    events = [r["conditions"]["conditions"][0]["rightValue"] for r in rules]
    assert events == ["utterance", "dtmf", "call.started", "call.ended"]
    assert len(data["connections"]["Route by event"]["main"]) == len(events)
    memory = node("Call Memory")["parameters"]
    assert "session_id" in memory["sessionKey"]  # one conversation per call


def n8n_eval(template: str, json_item: dict[str, Any]) -> Any:
    """Evaluate an n8n expression (``={{ js }}`` pieces inside text) with node.js."""
    assert template.startswith("=")
    pieces = re.split(r"\{\{ (.*?) \}\}", template[1:], flags=re.S)
    script = ["const $json = " + json.dumps(json_item) + ";", "const out = [];"]
    for index, piece in enumerate(pieces):
        script.append(f"out.push({piece});" if index % 2 else f"out.push({json.dumps(piece)});")
    script.append(
        "const parts = out.filter(p => p !== '');"
        "process.stdout.write(JSON.stringify(parts.length === 1 ? parts[0] : parts.join('')));"
    )
    node_js = shutil.which("node")
    assert node_js is not None
    done = subprocess.run(
        [node_js, "-e", "\n".join(script)], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def parse_reply(obj: Any) -> list[ReplyPart]:
    parser = ReplyParser()
    return parser.feed(json.dumps(obj, ensure_ascii=False).encode()) + parser.end()


@pytest.mark.skipif(shutil.which("node") is None, reason="node.js evaluates n8n expressions")
def test_the_n8n_expressions_produce_what_the_gateway_reads() -> None:
    body = node("Respond to Webhook")["parameters"]["responseBody"]
    assert parse_reply(n8n_eval(body, {"output": "مرحبا بك."})) == [TextDelta("مرحبا بك.")]
    assert parse_reply(n8n_eval(body, {"output": "مع السلامة. [HANGUP]"})) == [
        TextDelta("مع السلامة."),
        Action("hangup"),
    ]
    assert parse_reply(n8n_eval(body, {"output": "سأحولك الآن. [TRANSFER]"})) == [
        TextDelta("سأحولك الآن."),
        Action("transfer", "+15551234567"),
    ]
    greeting = node("Greeting")["parameters"]["responseBody"]
    assert parse_reply(n8n_eval(greeting, {}))[0] == TextDelta(
        "أهلا بك في خدمة العملاء. كيف يمكنني مساعدتك اليوم؟"
    )
    prompt = node("Conversation Agent")["parameters"]["text"]
    utterance = {"body": {"event": "utterance", "text": "أين طلبي", "interrupted": None}}
    assert n8n_eval(prompt, utterance) == "أين طلبي"
    interrupted = {
        "body": {
            "event": "utterance",
            "text": "توقف",
            "interrupted": {"reply": "أ. ب.", "heard": "أ.", "heard_ms": 500},
        }
    }
    assert n8n_eval(prompt, interrupted).endswith('only heard this part of your last reply: "أ.")')
    dtmf = {"body": {"event": "dtmf", "text": "12", "digits": "12", "interrupted": None}}
    assert n8n_eval(prompt, dtmf) == "(the caller pressed on the keypad: 12)"
