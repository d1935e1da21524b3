"""Call records: one JSON line per finished call (turns, timings, outcome, transport).

Appended to ``CALL_RECORD_PATH`` when set, and sent to the agent as ``call.ended``. A write
failure is logged and counted (``gateway_call_record_failures_total``), never breaks a call.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import asdict, dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass(slots=True)
class TurnRecord:
    """One turn: what the caller said (or pressed), what the agent replied, how long it took.

    ``timings`` are seconds per stage (keys from gateway.metrics.STAGES); ``heard`` is the
    part of the reply the caller heard when ``interrupted``.
    """

    turn: int
    kind: str  # "greeting" | "utterance" | "dtmf" | "reprompt" | "fallback" (speech outage)
    transcript: str = ""
    reply: str = ""
    interrupted: bool = False
    heard: str | None = None
    outcome: str = "ok"
    timings: dict[str, float] = field(default_factory=dict)
    underruns: int = 0  # times the carrier ran dry inside a sentence (gateway/agent/playout.py)
    underrun_ms: float = 0.0  # silence those underruns inserted


@dataclass(slots=True)
class CallRecord:
    call_id: str
    transport: str
    started_at: float  # Unix time
    metadata: dict[str, str]
    duration_seconds: float = 0.0
    outcome: str = ""
    turns: list[TurnRecord] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _append_line(path: str, line: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")


async def append_record(path: str, record: CallRecord) -> bool:
    """Append ``record`` as one JSON line; False (logged) if the write failed."""
    line = json.dumps(record.to_dict(), ensure_ascii=False, separators=(",", ":"))
    try:
        await asyncio.to_thread(_append_line, path, line)
    except OSError as exc:
        log.error("could not write call record to %s: %s", path, exc.strerror or exc)
        return False
    return True
