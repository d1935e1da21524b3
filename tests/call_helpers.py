"""Helpers shared by the whole-call tests: polling, task accounting, a recording conversation."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from gateway.calls import CallSession
from gateway.telephony.events import InboundEvent, MarkPlayed
from tests.conftest import TIMEOUT


async def wait_for(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    """Poll ``predicate`` until true; fail the test after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


def other_tasks() -> set[asyncio.Task[Any]]:
    """Every unfinished task except the test's own (to prove a call left nothing behind)."""
    current = asyncio.current_task()
    return {t for t in asyncio.all_tasks() if t is not current and not t.done()}


class Recorder:
    """A conversation that records every inbound event; the test drives the outbound side."""

    def __init__(self, session: CallSession) -> None:
        self.session = session
        self.events: list[InboundEvent] = []

    def on_event(self, event: InboundEvent) -> None:
        self.events.append(event)

    async def run(self) -> None:
        await asyncio.Event().wait()

    async def finish(self) -> None:
        return None

    def marks(self) -> list[MarkPlayed]:
        return [e for e in self.events if isinstance(e, MarkPlayed)]
