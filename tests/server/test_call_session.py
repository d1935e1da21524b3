"""CallSession.aclose: every owned task is cancelled, and a task that ignores cancellation
cannot hang the call's close (it is counted as leaked and logged once with the call id)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from gateway.calls import CallSession
from gateway.metrics import Metrics
from gateway.telephony.events import PCM16_8K, CallStarted, OutboundEvent, Transport
from tests.conftest import TIMEOUT

STARTED = CallStarted("call-leaky", Transport.AUDIOSOCKET, PCM16_8K)


async def _ignore(event: OutboundEvent) -> None:
    return None


def _session(metrics: Metrics, cancel_wait: float) -> CallSession:
    return CallSession(STARTED, _ignore, metrics, on_hangup=lambda _: None, cancel_wait=cancel_wait)


async def test_a_task_that_swallows_cancellation_is_counted_not_waited_for(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics()
    session = _session(metrics, cancel_wait=0.1)
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                continue  # the bug: cancellation swallowed, in a loop

    async def polite() -> None:
        await asyncio.sleep(3600)

    session.spawn(stubborn(), "stubborn")
    polite_task = session.spawn(polite(), "polite")
    await asyncio.sleep(0)
    with caplog.at_level(logging.ERROR, logger="gateway.calls"):
        async with asyncio.timeout(TIMEOUT):  # with gather this waited forever
            await session.aclose()
        await session.aclose()  # idempotent: neither counted nor logged twice
    assert polite_task.cancelled()
    assert metrics.tasks_leaked._value.get() == 1
    lines = [r.getMessage() for r in caplog.records if "still running" in r.getMessage()]
    assert len(lines) == 1
    assert "call-leaky" in lines[0] and "stubborn:call-leaky" in lines[0]
    release.set()
    await asyncio.sleep(0.01)  # let the stubborn task end so the test leaves nothing behind


async def test_cancellable_tasks_are_awaited_and_nothing_is_leaked() -> None:
    metrics = Metrics()
    session = _session(metrics, cancel_wait=5.0)
    cleaned = asyncio.Event()

    async def tidy() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            await asyncio.sleep(0.01)  # a short cleanup on cancellation is waited for
            cleaned.set()

    session.spawn(tidy(), "tidy")
    await asyncio.sleep(0)
    await session.aclose()
    assert cleaned.is_set()
    assert metrics.tasks_leaked._value.get() == 0
