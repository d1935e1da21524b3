"""Call sessions and the registry of live calls.

A :class:`CallSession` is one call, whatever its transport. It owns every task it starts
(:meth:`CallSession.spawn`): when the call ends, :meth:`CallSession.aclose` cancels and awaits all
of them, so a hang-up leaves nothing behind. The *conversation* (parrot loopback or the voice
agent) plugs in through the :class:`Conversation` protocol and talks to the caller only through
:meth:`CallSession.send` with outbound events from ``gateway.telephony.events``.

The :class:`CallRegistry` admits calls up to ``MAX_CALLS``, refuses them while draining or while
a required backend is down (a *gate*: the Hamsa circuit breaker), and lets the drain wait until
the last call is gone. Every transport refuses through :meth:`CallRegistry.refuse`: one counter
(``gateway_calls_total{outcome="refused_<reason>"}``) and one rate-limited log line per reason.

Outcome: :attr:`CallSession.outcome` is the one source of truth for how a call ended. It is
final from the moment the call starts closing (:meth:`CallSession.aclose`); the call record
(written by the conversation's ``finish``, after ``aclose``) and ``gateway_calls_total``
(counted by :meth:`CallRegistry.remove`, after that) both read the same, frozen value, so a
hang-up that races the end of a call (a drain) can no longer make them disagree.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, Protocol

from gateway.logs import ThrottledLog, call_id_var
from gateway.metrics import Metrics
from gateway.telephony.events import (
    AudioFormat,
    CallStarted,
    Hangup,
    InboundEvent,
    OutboundEvent,
    Transport,
)

log = logging.getLogger(__name__)

SendFn = Callable[[OutboundEvent], Awaitable[None]]

# How long :meth:`CallSession.aclose` waits for its cancelled tasks. Cancellation normally
# completes within one loop iteration; a task still running after this swallowed its
# CancelledError (or blocks in a ``finally``) and is counted as leaked instead of holding the
# call's close, and so the transport's socket and the registry slot, forever.
CANCEL_WAIT_SECONDS = 5.0


class Conversation(Protocol):
    """What runs a call: the parrot loopback, the voice agent...

    ``on_event`` is called synchronously for every inbound event of the call (CallerAudio 50 times
    per second: keep it cheap, never block). It may return an awaitable that the transport
    awaits at once, before reading on: an immediate reply with no task hop (the parrot's echo
    at zero delay); otherwise None. ``run`` is the conversation's own long-running task,
    started once when the call starts and cancelled when it ends; ``finish`` runs once after
    the call's tasks are gone (records, goodbyes to backends) and must bound its own time.
    """

    def on_event(self, event: InboundEvent) -> Awaitable[None] | None: ...

    async def run(self) -> None: ...

    async def finish(self) -> None: ...


class CallSession:
    """One live call: identity, outbound path, owned tasks, outcome."""

    def __init__(
        self,
        started: CallStarted,
        send: SendFn,
        metrics: Metrics,
        *,
        on_hangup: Callable[[str], None],
        cancel_wait: float = CANCEL_WAIT_SECONDS,
    ) -> None:
        self.call_id = started.call_id
        self.transport: Transport = started.transport
        self.audio_format: AudioFormat = started.audio_format
        self.stream_id = started.stream_id
        self.metadata: Mapping[str, str] = started.metadata
        self.started_monotonic = time.monotonic()
        self._outcome = "completed"
        self.metrics = metrics
        self._send = send
        self._on_hangup = on_hangup
        self._tasks: set[asyncio.Task[Any]] = set()
        self._hangup_reason: str | None = None
        self._closed = False
        self._cancel_wait = cancel_wait
        self.conversation: Conversation | None = None
        # Transport call control, set by the glue where the carrier offers it: hand the caller
        # to a number or SIP URI; True when the carrier accepted the transfer.
        self.transfer: Callable[[str], Awaitable[bool]] | None = None
        # What the conversation says and hears, for transports that show it to the caller
        # (the browser softphone): ``observer(kind, fields)``, see :meth:`observe`.
        self.observer: Callable[[str, Mapping[str, object]], None] | None = None

    @property
    def outcome(self) -> str:
        """How the call ended (``completed`` unless something said otherwise)."""
        return self._outcome

    @outcome.setter
    def outcome(self, value: str) -> None:
        # Final once the call started closing: the record and the metric read it after that.
        if not self._closed:
            self._outcome = value

    def observe(self, kind: str, **fields: object) -> None:
        """Tell the transport's :attr:`observer`, if any, about a conversation event.

        Kinds (from the voice agent): ``speech_end`` (``stream_ms``: caller-audio position
        where the caller stopped speaking), ``transcript`` and ``reply`` (``turn``, ``text``),
        ``interrupted`` (``turn``, ``heard``). Synchronous and cheap (never per frame); an
        observer's failure is logged, never raised into the conversation.
        """
        observer = self.observer
        if observer is None:
            return
        try:
            observer(kind, fields)
        except Exception:
            log.exception("call observer failed on %s", kind)

    # ------------------------------------------------------------------ tasks

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Start a task owned by this call; it is cancelled and awaited when the call ends.

        A task that fails ends the call (outcome ``error``), logged once with the call id.
        """
        if self._closed:
            coro.close()
            raise RuntimeError("call already closed")
        task = asyncio.get_running_loop().create_task(coro, name=f"{name}:{self.call_id}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            token = call_id_var.set(self.call_id)
            try:
                log.error("task %s failed: %r; ending the call", task.get_name(), exc, exc_info=exc)
            finally:
                call_id_var.reset(token)
            self.hangup("internal_error", outcome="error")

    # --------------------------------------------------------------- outbound

    async def send(self, event: OutboundEvent) -> None:
        """Send one outbound event to the caller through the call's transport."""
        if self._hangup_reason is not None and not isinstance(event, Hangup):
            return
        await self._send(event)

    def hangup(self, reason: str, *, outcome: str | None = None) -> None:
        """End the call from our side (idempotent). The transport glue closes the media socket."""
        if self._hangup_reason is not None:
            return
        self._hangup_reason = reason
        if outcome is not None:
            self.outcome = outcome
        log.info("hanging up: %s", reason)
        self._on_hangup(reason)

    @property
    def hangup_reason(self) -> str | None:
        return self._hangup_reason

    # --------------------------------------------------------------- lifecycle

    def start(self, conversation: Conversation) -> None:
        """Attach the conversation and start its task."""
        self.conversation = conversation
        self.spawn(conversation.run(), "conversation")

    async def aclose(self) -> None:
        """Cancel every task the call owns and wait for them, at most ``cancel_wait`` s.

        Idempotent: only the first call cancels and waits. A task still running after the
        wait (it swallowed its cancellation) is not waited for any longer: it is counted in
        ``gateway_call_tasks_leaked_total`` and logged once, with the call id and the task
        names, so a misbehaving task can never hang the call's close. From here on
        :attr:`outcome` is final (see the module docstring).
        """
        if self._closed:
            return
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if not tasks:
            return
        # asyncio.wait, not gather: gather would wait forever for a task that ignores
        # cancellation. Exceptions of tasks that failed are retrieved by _task_done.
        _, pending = await asyncio.wait(tasks, timeout=self._cancel_wait)
        if pending:
            self.metrics.tasks_leaked.inc(len(pending))
            log.error(
                "call %s: %d task(s) still running %.1f s after cancellation (%s); "
                "leaving them behind",
                self.call_id,
                len(pending),
                self._cancel_wait,
                ", ".join(sorted(t.get_name() for t in pending)),
            )

    @property
    def duration_seconds(self) -> float:
        return time.monotonic() - self.started_monotonic


class CallRegistry:
    """Admission control and bookkeeping for live calls (capacity, drain)."""

    def __init__(self, max_calls: int, metrics: Metrics, *, refusal_log_interval: float = 60.0):
        self.max_calls = max_calls
        self.metrics = metrics
        self.draining = False
        # Refusals and other lines outsiders can trigger at will: first one per key, then at
        # most one summary per interval (a flood of refused calls must not flood the log).
        self.throttled_log = ThrottledLog(log, refusal_log_interval)
        # reason -> "closed now?": e.g. speech_unavailable while the Hamsa circuit is open.
        self._gates: dict[str, Callable[[], bool]] = {}
        self._calls: dict[int, CallSession] = {}
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def count(self) -> int:
        """Live calls."""
        return len(self._calls)

    def add_gate(self, reason: str, closed: Callable[[], bool]) -> None:
        """Refuse new calls with ``reason`` (a fixed token) while ``closed()`` is true."""
        self._gates[reason] = closed

    def remove_gate(self, reason: str) -> None:
        self._gates.pop(reason, None)

    def refusal_reason(self) -> str | None:
        """Why a new call would be refused (``draining`` / ``at_capacity`` / a gate), or None."""
        if self.draining:
            return "draining"
        if self.count >= self.max_calls:
            return "at_capacity"
        for reason, closed in self._gates.items():
            if closed():
                return reason
        return None

    def refuse(self, transport: Transport, reason: str, call_id: str = "?") -> None:
        """Count a refused call and log it, rate-limited per transport and reason."""
        self.metrics.calls.labels(transport.value, "refused_" + reason).inc()
        self.throttled_log.warning(
            f"refused:{transport.value}:{reason}",
            "%s call %s refused: %s",
            transport.value,
            call_id,
            reason,
        )

    def admit(self, session: CallSession) -> str | None:
        """Register a new call; return why it was refused instead, or None when admitted."""
        reason = self.refusal_reason()
        if reason is None:
            self._calls[id(session)] = session
            self._idle.clear()
            self.metrics.active_calls.labels(session.transport.value).inc()
        return reason

    def remove(self, session: CallSession) -> None:
        if self._calls.pop(id(session), None) is not None:
            self.metrics.active_calls.labels(session.transport.value).dec()
            self.metrics.calls.labels(session.transport.value, session.outcome).inc()
        self._check_idle()

    def _check_idle(self) -> None:
        if self.count == 0:
            self._idle.set()

    def sessions(self) -> list[CallSession]:
        return list(self._calls.values())

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no call is live; True if that happened within ``timeout`` seconds."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def hangup_all(self, reason: str) -> None:
        """Hang up every live call with outcome ``drained`` (a call already ending keeps its)."""
        for session in self.sessions():
            session.hangup(reason, outcome="drained")
