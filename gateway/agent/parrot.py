"""Parrot mode (``AGENT=parrot``): play the caller's audio back after a short delay.

The classic parrot test checks a deployment's whole audio path (carrier -> gateway -> carrier)
without any speech service. Audio is returned in the call's own format, untouched.

With ``delay_ms == 0`` each frame is sent back as soon as it arrives, awaited by the transport
before it reads the next message (this is what the echo-latency benchmark measures). With a
delay, due audio is sent in batches of up to ``batch_ms`` so the outbound side makes a few
messages per second rather than fifty.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable

from gateway.calls import CallSession
from gateway.telephony.events import CallerAudio, InboundEvent, PlayAudio


class ParrotConversation:
    """Echoes the caller's audio back after ``delay_ms`` (see module docstring)."""

    def __init__(self, session: CallSession, delay_ms: int, batch_ms: int = 100) -> None:
        self._session = session
        self._delay = delay_ms / 1000.0
        self._batch = batch_ms / 1000.0
        self._pending: deque[tuple[float, bytes]] = deque()
        self._wake = asyncio.Event()

    def on_event(self, event: InboundEvent) -> Awaitable[None] | None:
        if type(event) is CallerAudio:
            if self._delay == 0.0:
                # Echo at once, awaited by the transport: no queue, no task hop.
                return self._session.send(PlayAudio(event.audio))
            self._pending.append((time.monotonic() + self._delay, event.audio))
            self._wake.set()
        return None

    async def run(self) -> None:
        pending = self._pending
        send = self._session.send
        while True:
            if not pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            wait = pending[0][0] - time.monotonic()
            if wait > 0:
                # Sleep until the oldest frame is due; collect a batch's worth meanwhile.
                await asyncio.sleep(wait + self._batch)
            now = time.monotonic()
            chunks: list[bytes] = []
            while pending and pending[0][0] <= now:
                chunks.append(pending.popleft()[1])
            if chunks:
                await send(PlayAudio(chunks[0] if len(chunks) == 1 else b"".join(chunks)))

    async def finish(self) -> None:
        """Nothing to record for a parrot call."""
