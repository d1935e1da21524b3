"""The per-call voice agent: listen, transcribe, ask the agent, speak back, be interruptible.

One :class:`VoiceAgentConversation` per call, identical over every transport (it sees only the
provider-neutral events of ``gateway.telephony.events``):

* **Listening** (``on_event``, synchronous, 50 frames per second): caller audio -> PCM16 ->
  WebRTC VAD -> :class:`~gateway.agent.endpointing.Endpointer`. A finished utterance becomes a
  job for the turn loop; sustained speech during a reply is a barge-in.
* **A turn** (one task at a time, cancellable): STT through the call's Hamsa session, the
  agent's streamed reply cut into sentences as it arrives, each sentence synthesized at once and
  sent to the carrier. Audio is sent as fast as TTS yields it (the carrier buffers and plays in
  real time), so sentence N+1 is synthesized while sentence N plays: no dead air between them.
  Greetings and re-prompts, alike on every call, play from the prompt cache once synthesised
  (``gateway.agent.prompt_cache``).
* **Marks**: a tiny mark after the first frame of each reply (its echo = the caller starts
  hearing it: *heard latency*) and one after each sentence (what was heard, for barge-in).
* **Barge-in**: the turn task is cancelled (which aborts the TTS stream: the Hamsa session
  never reuses a socket with unread audio), ``ClearAudio`` drops the carrier's buffer, and what
  the caller heard goes to the agent with the next request.
* **Timers** (one ticker task): DTMF entries closed by the inter-digit timeout, re-prompts
  after caller silence, hang-up after too many unanswered re-prompts.
* **finish()**: after the call, the record goes to ``CALL_RECORD_PATH`` and to the agent as
  ``call.ended`` (bounded in time).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from gateway.agent.audio_io import InboundConverter, OutboundConverter
from gateway.agent.brains import Brain, Notifier
from gateway.agent.dtmf import DtmfCollector
from gateway.agent.endpointing import (
    Endpointer,
    SpeechStarted,
    SustainedSpeech,
    UtteranceEnded,
)
from gateway.agent.fallback import FallbackClip
from gateway.agent.playout import (
    UNDERRUN_TOLERANCE,
    Delivery,
    DeliveryModel,
    HoldResult,
    PlayoutClock,
    Prefetched,
    SentencePlan,
    Synthesis,
    lead_split,
    queued_after,
    scheduled,
)
from gateway.agent.prompt_cache import PromptCache
from gateway.agent.record import CallRecord, TurnRecord, append_record
from gateway.agent.sentences import SentenceSplitter
from gateway.agent.vad import Vad
from gateway.agent.webhook import (
    Action,
    AgentError,
    AgentEvent,
    AgentRequest,
    Interruption,
    TextDelta,
)
from gateway.calls import CallSession
from gateway.config import Settings
from gateway.metrics import Metrics
from gateway.speech.hamsa.errors import HamsaError
from gateway.speech.hamsa.session import HamsaSession, TtsChunk
from gateway.telephony.events import (
    CallerAudio,
    ClearAudio,
    Dtmf,
    Encoding,
    InboundEvent,
    MarkPlayed,
    PlayAudio,
    SetMark,
)
from telecodecs.framing import Reframer

log = logging.getLogger(__name__)

FRAME_MS = 20
TICK_SECONDS = 0.25  # timer resolution for DTMF timeouts and re-prompts
FINISH_TIMEOUT = 3.0  # bound on call.ended + record write after the call
# Turns waiting for the turn loop (a turn runs one at a time). Callers cannot queue more than
# a few by speaking; a DTMF flood could queue without end: beyond this, jobs are dropped
# (gateway_dropped_input_total{reason="job_queue_full"}, issue 10 item 3).
MAX_QUEUED_JOBS = 8
MAX_DTMF_DIGITS = 64  # digits of one open DTMF entry; more are dropped (dtmf_buffer_full)
HANGUP_GRACE_SECONDS = 2.0  # extra wait for the last mark before an agent-asked hang-up
# Flush the resampler's held-back tail when less than this is queued ahead of playback.
FLUSH_BELOW_SECONDS = 0.3


def tts_seconds(chunk: TtsChunk) -> float:
    """Seconds of audio in a TTS chunk (for the playout scheduler)."""
    return len(chunk.audio) / chunk.format.bytes_per_ms() / 1000.0


JobKind = Literal["greeting", "utterance", "dtmf", "reprompt"]
# Slow end of TTS first-audio times: how long the rest of a lead split waits after the lead
# when both go on one socket (gateway.agent.playout.lead_split).
FIRST_AUDIO_QUANTILE: Final = 0.9
# Turns whose sentences are said on every call, alike: kept in the prompt cache.
PROMPT_KINDS: Final = frozenset({"greeting", "reprompt"})


@dataclass(slots=True)
class Job:
    """Work for the turn loop."""

    kind: JobKind
    pcm: bytes = b""
    rate: int = 0
    digits: str = ""
    speech_end: float | None = None  # monotonic time the caller stopped speaking
    endpointing: float = 0.0


@dataclass(slots=True)
class SpokenSentence:
    mark: str
    text: str
    audio_ms: float
    played: bool = False


@dataclass(slots=True)
class Reply:
    """One reply being spoken: its sentences, their marks, and what has been heard."""

    turn: int
    speech_end: float | None
    record: TurnRecord
    sentences: list[SpokenSentence] = field(default_factory=list)
    first_mark: str = ""
    first_audio_at: float | None = None
    last_played_at: float | None = None
    cancelled: bool = False
    finished_sending: bool = False
    all_played: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def speaking(self) -> bool:
        """Audio was sent and the caller has not heard all of it yet."""
        return self.first_audio_at is not None and not self.all_played.is_set()

    def on_mark(self, name: str, played: bool, now: float) -> bool:
        """Record a mark echo; True if it was one of this reply's marks."""
        if name == self.first_mark:
            if played and self.last_played_at is None:
                self.last_played_at = now
            return True
        for sentence in self.sentences:
            if sentence.mark == name:
                sentence.played = played
                if played:
                    self.last_played_at = now
                self._check_done()
                return True
        return False

    def _check_done(self) -> None:
        if self.finished_sending and all(s.played for s in self.sentences):
            self.all_played.set()

    def mark_sending_done(self) -> None:
        self.finished_sending = True
        if not self.sentences:
            self.all_played.set()
        self._check_done()

    def heard(self, now: float) -> tuple[str, int]:
        """(text of the sentences fully heard, ms of reply audio heard) as of ``now``."""
        heard = [s for s in self.sentences if s.played]
        heard_ms = sum(s.audio_ms for s in heard)
        # Part of the sentence playing now: time since the last played mark, capped.
        pending = next((s for s in self.sentences if not s.played), None)
        if pending is not None and self.last_played_at is not None:
            heard_ms += min(pending.audio_ms, (now - self.last_played_at) * 1000.0)
        return " ".join(s.text for s in heard), int(heard_ms)

    @property
    def text(self) -> str:
        return " ".join(s.text for s in self.sentences)


async def prebuffered(chunks: AsyncIterator[TtsChunk], hold: float) -> AsyncIterator[TtsChunk]:
    """Yield ``chunks`` unchanged, but hold the first one until the second has arrived, the
    stream has ended, or ``hold`` seconds have passed.

    Hamsa sends a small first frame (~16 KB, 0.5 s) and then 32-64 KB frames at a few times
    real time (hamsa.md §1.4), so the second frame can arrive after the first has played: an
    audible gap inside the first sentence. A short hold trades that gap for latency.
    """
    async with contextlib.aclosing(chunks) as source:  # type: ignore[type-var]
        iterator = source.__aiter__()
        try:
            first = await anext(iterator)
        except StopAsyncIteration:
            return
        following: asyncio.Future[TtsChunk] = asyncio.ensure_future(anext(iterator))
        try:
            await asyncio.wait({following}, timeout=hold)
            yield first
            try:
                second = await following
            except StopAsyncIteration:
                return
            yield second
            async for chunk in iterator:
                yield chunk
        finally:
            if not following.done():
                following.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await following


async def _replayed(chunks: tuple[TtsChunk, ...]) -> AsyncIterator[TtsChunk]:
    for chunk in chunks:
        yield chunk


class VoiceAgentConversation:
    """Runs one call's conversation (see module docstring)."""

    def __init__(
        self,
        session: CallSession,
        *,
        settings: Settings,
        metrics: Metrics,
        speech: HamsaSession,
        brain: Brain,
        delivery: DeliveryModel | None = None,
        fallback: FallbackClip | None = None,
        prompts: PromptCache | None = None,
    ) -> None:
        self._session = session
        self._settings = settings
        self._metrics = metrics
        self._speech = speech
        self._brain = brain
        self._format = session.audio_format
        self._inbound = InboundConverter(self._format)
        self._vad = Vad(settings.vad_aggressiveness, self._inbound.rate)
        self._vad_frames = Reframer(self._inbound.rate * FRAME_MS // 1000 * 2)
        self._endpointer = Endpointer(
            frame_ms=FRAME_MS,
            trailing_silence_ms=settings.endpoint_silence_ms,
            min_speech_ms=settings.min_speech_ms,
            max_utterance_ms=settings.max_utterance_ms,
            barge_in_min_ms=settings.barge_in_min_ms,
        )
        self._dtmf = DtmfCollector(settings.dtmf_timeout_ms, max_pending=MAX_DTMF_DIGITS)
        self._jobs: asyncio.Queue[Job] = asyncio.Queue(MAX_QUEUED_JOBS)
        self._drops_logged: set[str] = set()
        # The turn whose outcome is not counted yet: a reply still playing can still be
        # interrupted, so gateway_turns_total counts it once it can no longer change, and
        # then agrees with the call record (issue 10 item 19).
        self._unsettled: TurnRecord | None = None
        # Speech outage (issue 10 item 2): since when STT/TTS keep failing, and whether the
        # call is being ended for it.
        self._speech_down_since: float | None = None
        self._ending = False
        self._turn_task: asyncio.Task[None] | None = None
        self._reply: Reply | None = None
        self._turn = 0
        self._last_interruption: Interruption | None = None
        self._carry_text = ""
        self._pending_transcript = ""
        self._hangup_after_reply = False
        self._transfer_target: str | None = None
        self._last_activity = time.monotonic()
        self._reprompts = 0
        self._mark_sent_at: dict[str, float] = {}
        self._use_mulaw = settings.hamsa_tts_mulaw and self._format.encoding is Encoding.ULAW
        self._prebuffer = settings.playout_prebuffer_ms / 1000.0
        # Playout scheduling (gateway/agent/playout.py): ``delivery`` is this call's TTS
        # delivery model, normally a child of the process-wide one that it also teaches.
        self._playout = PlayoutClock()
        self._delivery = delivery if delivery is not None else DeliveryModel()
        # What plays when TTS fails (the shipped clip, or AGENT_FALLBACK_TEXT once rendered).
        self._fallback = fallback if fallback is not None else FallbackClip()
        # Greetings and re-prompts already synthesised (gateway/agent/prompt_cache.py).
        self._prompts = prompts if prompts is not None else PromptCache(0)
        self._adaptive = settings.playout_adaptive
        self._safety = settings.playout_safety_ms / 1000.0
        self._lead_split = settings.playout_adaptive and settings.playout_lead_split
        self._max_ahead = settings.playout_max_ahead_seconds
        transport = session.transport.value
        self._underrun_count = metrics.playout_underruns.labels(transport)
        self._underrun_seconds = metrics.playout_underrun_seconds.labels(transport)
        self.record = CallRecord(
            call_id=session.call_id,
            transport=session.transport.value,
            started_at=time.time(),
            metadata=dict(session.metadata),
        )

    # ------------------------------------------------------------------ inbound

    def on_event(self, event: InboundEvent) -> None:  # never an immediate reply
        if type(event) is CallerAudio:
            pcm = self._inbound.process(event.audio)
            for frame in self._vad_frames.push(pcm):
                for ep in self._endpointer.push(frame, self._vad.is_speech(frame)):
                    self._on_endpoint(ep)
        elif isinstance(event, MarkPlayed):
            self._on_mark(event)
        elif isinstance(event, Dtmf):
            now = time.monotonic()
            self._last_activity = now
            dropped = self._dtmf.dropped
            entry = self._dtmf.push(event.digit, now)
            if self._dtmf.dropped != dropped:
                self._dropped("dtmf_buffer_full")
            if entry:
                self._enqueue(Job("dtmf", digits=entry))

    def _on_endpoint(self, event: object) -> None:
        now = time.monotonic()
        if isinstance(event, SpeechStarted):
            self._last_activity = now
            self._reprompts = 0
        elif isinstance(event, SustainedSpeech):
            if self._settings.barge_in:
                onset = now - (event.at_ms - event.onset_ms) / 1000.0
                self._interrupt(onset)
        elif isinstance(event, UtteranceEnded):
            self._last_activity = now
            self._session.observe("speech_end", stream_ms=event.speech_end_ms)
            speech_end = now - (event.at_ms - event.speech_end_ms) / 1000.0
            self._metrics.observe_stage("endpointing", event.trailing_silence_ms / 1000.0)
            self._enqueue(
                Job(
                    "utterance",
                    pcm=event.pcm,
                    rate=self._inbound.rate,
                    speech_end=speech_end,
                    endpointing=event.trailing_silence_ms / 1000.0,
                )
            )

    def _on_mark(self, event: MarkPlayed) -> None:
        now = time.monotonic()
        sent = self._mark_sent_at.pop(event.name, None)
        if sent is not None and event.played:
            self._metrics.observe_stage("mark_round_trip", now - sent)
        reply = self._reply
        if reply is None or not reply.on_mark(event.name, event.played, now):
            return
        if event.name == reply.first_mark and event.played and reply.speech_end is not None:
            heard = now - reply.speech_end
            reply.record.timings["heard"] = round(heard, 3)
            self._metrics.observe_stage("heard", heard)
        if reply.all_played.is_set():
            self._last_activity = now
            if self._turn_task is None:
                self._settle(reply.record)  # heard to the end: it can no longer change

    def _interrupt(self, onset: float) -> None:
        """Barge-in: the caller speaks over the agent (or while it is still thinking).

        The reply may still be playing after its turn task has finished sending (audio is
        sent faster than real time and the carrier buffers it), so "speaking" is judged by the
        marks, not by the task.
        """
        reply, task = self._reply, self._turn_task
        running = task is not None and not task.done()
        if reply is not None and reply.speaking and not reply.cancelled:
            reply.cancelled = True
            heard_text, heard_ms = reply.heard(time.monotonic())
            self._last_interruption = Interruption(reply.text, heard_text, heard_ms)
            reply.record.interrupted = True
            reply.record.heard = heard_text
            self._session.observe("interrupted", turn=reply.turn, heard=heard_text)
            if reply.record.outcome == "ok":
                reply.record.outcome = "interrupted"
            self._metrics.interruptions.labels(self._session.transport.value).inc()
            self._session.spawn(self._clear(onset), "barge-in")
        elif running and reply is not None and reply.first_audio_at is None:
            # Still thinking: keep what the caller said; it starts the next utterance.
            self._carry_text = self._pending_transcript
            reply.cancelled = True
            reply.record.outcome = "superseded"
        else:
            return
        if running and task is not None:
            task.cancel()  # the turn settles its outcome as it ends
        else:
            self._settle(reply.record)

    async def _clear(self, onset: float) -> None:
        await self._session.send(ClearAudio())
        self._playout.reset(time.monotonic())  # the carrier dropped what it had queued
        self._metrics.observe_stage("barge_in_reaction", max(0.0, time.monotonic() - onset))

    # ---------------------------------------------------------------- turn loop

    async def run(self) -> None:
        self._session.spawn(self._ticker(), "ticker")
        self._session.spawn(self._speech.prepare(), "speech-prepare")
        self._enqueue(Job("greeting"))
        while True:
            job = await self._jobs.get()
            task = self._session.spawn(self._run_turn(job), "turn")
            self._turn_task = task
            await asyncio.wait({task})
            self._turn_task = None

    async def _ticker(self) -> None:
        """DTMF inter-digit timeouts and caller-silence re-prompts, on one coarse timer."""
        while True:
            await asyncio.sleep(TICK_SECONDS)
            now = time.monotonic()
            entry = self._dtmf.poll(now)
            if entry:
                self._enqueue(Job("dtmf", digits=entry))
            outage = self._settings.speech_outage_hangup_seconds
            down = self._speech_down_since
            if outage > 0 and down is not None and now - down >= outage:
                await self._end_for_speech_outage(now - down)
                return
            after = self._settings.reprompt_after
            if after <= 0 or self._busy() or self._endpointer.in_speech:
                continue
            if now - self._last_activity >= after:
                self._last_activity = now
                self._reprompts += 1
                if self._reprompts > self._settings.reprompt_max:
                    log.info("caller silent after %d re-prompts", self._settings.reprompt_max)
                    self._session.hangup("caller_silent", outcome="caller_silent")
                    return
                self._enqueue(Job("reprompt"))

    def _busy(self) -> bool:
        """A turn is running, queued, or its reply is still playing."""
        if self._turn_task is not None or not self._jobs.empty():
            return True
        return self._reply is not None and self._reply.speaking

    def _enqueue(self, job: Job) -> None:
        """Queue work for the turn loop; a full queue drops the job (counted, logged once)."""
        if self._ending:
            return
        try:
            self._jobs.put_nowait(job)
        except asyncio.QueueFull:
            self._dropped("job_queue_full")

    def _dropped(self, reason: str) -> None:
        """Caller input dropped by a per-call bound: counted always, logged once per call."""
        self._metrics.dropped_input.labels(reason).inc()
        if reason not in self._drops_logged:
            self._drops_logged.add(reason)
            log.warning("caller input dropped (%s); further drops are only counted", reason)

    def _settle(self, record: TurnRecord | None) -> None:
        """Count ``record``'s outcome in gateway_turns_total, once, when it is final."""
        if record is not None and record is self._unsettled:
            self._unsettled = None
            self._metrics.turns.labels(record.outcome).inc()

    async def _run_turn(self, job: Job) -> None:
        self._settle(self._unsettled)  # the previous reply is no longer interruptible
        if self._ending:
            return
        self._turn += 1
        record = TurnRecord(turn=self._turn, kind=job.kind)
        self.record.turns.append(record)
        self._unsettled = record
        reply = Reply(turn=self._turn, speech_end=job.speech_end, record=record)
        self._reply = reply
        self._hangup_after_reply = False
        self._pending_transcript = ""
        try:
            request, fixed_text = await self._prepare(job, record)
            if request is None and not fixed_text:
                reply.mark_sending_done()
                return
            await self._respond(reply, request, fixed_text)
        except asyncio.CancelledError:
            if record.outcome == "ok":
                record.outcome = "cancelled"
            raise
        finally:
            if reply.cancelled or not reply.speaking:
                self._settle(record)  # else when heard to the end, interrupted, or next turn
        if self._hangup_after_reply and not reply.cancelled:
            await self._hang_up_after(reply)

    def _request(
        self,
        event: AgentEvent,
        *,
        text: str = "",
        digits: str = "",
        interrupted: Interruption | None = None,
        record: dict[str, Any] | None = None,
    ) -> AgentRequest:
        """An agent request carrying this call's identity (session id = carrier call id)."""
        return AgentRequest(
            event=event,
            session_id=self._session.call_id,
            turn=self._turn,
            text=text,
            call_id=self._session.call_id,
            transport=self._session.transport.value,
            metadata=self._session.metadata,
            interrupted=interrupted,
            digits=digits,
            record=record,
        )

    async def _prepare(self, job: Job, record: TurnRecord) -> tuple[AgentRequest | None, str]:
        """What to answer: an agent request, or fixed text (greeting/re-prompt)."""
        if job.kind == "greeting":
            if self._settings.greeting_text:
                return None, self._settings.greeting_text
            return self._request("call.started"), ""
        if job.kind == "reprompt":
            return None, self._settings.reprompt_text
        if job.kind == "dtmf":
            record.transcript = job.digits
            return self._request("dtmf", digits=job.digits), ""
        record.timings["endpointing"] = round(job.endpointing, 3)
        started = time.monotonic()
        try:
            text = await self._speech.stt(job.pcm, job.rate)
        except HamsaError as exc:
            record.outcome = "stt_error"
            log.warning("STT failed: %s", exc)
            self._speech_failed()
            return None, self._settings.agent_fallback_text
        self._speech_down_since = None  # the speech service answers
        stt_seconds = time.monotonic() - started
        record.timings["stt"] = round(stt_seconds, 3)
        text = " ".join(p for p in (self._carry_text, text.strip()) if p)
        self._carry_text = ""
        record.transcript = text
        self._session.observe("transcript", turn=self._turn, text=text)
        if not text:
            record.outcome = "empty"
            return None, ""
        self._pending_transcript = text
        interrupted, self._last_interruption = self._last_interruption, None
        return (
            self._request("utterance", text=text, interrupted=interrupted),
            "",
        )

    async def _respond(self, reply: Reply, request: AgentRequest | None, fixed: str) -> None:
        """Stream the reply: agent text -> sentences -> TTS -> carrier, concurrently."""
        sentences: asyncio.Queue[str | None] = asyncio.Queue()
        speaker = asyncio.get_running_loop().create_task(self._speak(reply, sentences))
        try:
            if request is None:
                sentences.put_nowait(fixed)
                reply.record.reply = fixed
            else:
                await self._ask_agent(request, reply, sentences)
            sentences.put_nowait(None)
            await speaker  # TTS failures are handled per sentence inside _speak
            if reply.record.outcome == "tts_error":
                self._speech_failed()
                if reply.first_audio_at is None and not reply.cancelled:
                    # The caller heard nothing: the apology, without the failing TTS.
                    await self._play_clip(reply)
            elif reply.first_audio_at is not None:
                self._speech_down_since = None  # TTS spoke
        finally:
            if not speaker.done():
                speaker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await speaker

    async def _ask_agent(
        self, request: AgentRequest, reply: Reply, sentences: asyncio.Queue[str | None]
    ) -> None:
        """Stream the agent's reply into ``sentences`` as they are cut.

        The first *speakable sentence* must be ready within ``AGENT_TIMEOUT``, not just the
        first text: an agent trickling characters would otherwise hold the caller in silence
        until the whole-reply deadline (issue 10 item 8). On that timeout or an agent error
        before anything was queued, what text there is and the fallback phrase are spoken;
        the greeting (``call.started``) stays silent instead, since an apology is no greeting
        (issue 12 item 6). Failures are counted (``gateway_agent_errors_total{kind}``) and
        logged once. The record's ``reply`` holds what was spoken, fallback included.
        """
        splitter = SentenceSplitter()
        started = time.monotonic()
        limit = self._settings.agent_timeout
        parts: list[str] = []
        spoke = False
        fallback = ""
        try:
            async with asyncio.timeout(limit) as first_sentence:
                replies = self._brain.reply(request)
                try:
                    async for part in replies:
                        if isinstance(part, TextDelta):
                            if not parts:
                                first = time.monotonic() - started
                                reply.record.timings["agent_first_text"] = round(first, 3)
                                self._metrics.observe_stage("agent_first_text", first)
                            parts.append(part.text)
                            for sentence in splitter.push(part.text):
                                sentences.put_nowait(sentence)
                                if not spoke:
                                    spoke = True
                                    first_sentence.reschedule(None)  # the rest may take long
                        elif isinstance(part, Action):
                            self._on_action(part)
                finally:
                    aclose = getattr(replies, "aclose", None)
                    if aclose is not None:
                        await aclose()  # release the agent's connection at once
            for sentence in splitter.flush():
                sentences.put_nowait(sentence)
                spoke = True
            total = time.monotonic() - started
            reply.record.timings["agent_total"] = round(total, 3)
            self._metrics.observe_stage("agent_total", total)
        except (AgentError, TimeoutError) as exc:
            if isinstance(exc, AgentError):
                kind, detail = exc.kind, exc.detail
            else:
                kind, detail = "timeout", f"no speakable sentence within {limit:g} s"
            self._metrics.agent_errors.labels(kind).inc()
            reply.record.outcome = "agent_error"
            if request.event == "call.started":
                log.warning("agent greeting failed (%s): %s; no greeting", kind, detail)
            else:
                log.warning("agent failed (%s)%s", kind, f": {detail}" if detail else "")
                if not spoke:
                    for sentence in splitter.flush():
                        sentences.put_nowait(sentence)
                    fallback = self._settings.agent_fallback_text
                    sentences.put_nowait(fallback)
        reply.record.reply = " ".join(p for p in ("".join(parts).strip(), fallback) if p)

    def _on_action(self, action: Action) -> None:
        """Agent call control, carried out once the current reply has been heard."""
        if action.kind == "hangup":
            self._hangup_after_reply = True
        elif action.kind == "transfer":
            self._transfer_target = action.target or ""
            self._hangup_after_reply = True

    async def _speak(self, reply: Reply, sentences: asyncio.Queue[str | None]) -> None:
        """Speak sentences in order. A sentence whose TTS fails (after the Hamsa session's own
        retries) is skipped, and the next one goes out on a fresh connection: the caller loses
        one sentence, not the rest of the reply.

        With adaptive playout the next sentence's TTS starts as soon as its text is known and
        the current sentence's audio has begun to arrive (the speech session runs it on a
        second socket), read ahead into a buffer: when the current sentence's last audio has
        been sent, the next one's first audio is already here and the boundary does not gap.
        Cancelling this task (barge-in) closes both streams.

        With ``PLAYOUT_LEAD_SPLIT`` a reply's first sentence is synthesised as a short lead and
        the rest at once (``gateway.agent.playout.lead_split``): one sentence, two streams.
        """
        index = 0
        live: list[Prefetched[TtsChunk]] = []
        ahead: asyncio.Task[Synthesis | None] | None = None
        try:
            text = await sentences.get()
            current = None if text is None else self._synthesize(reply, text, index, live)
            while current is not None:
                if reply.cancelled:
                    return
                if self._adaptive:
                    ahead = asyncio.get_running_loop().create_task(
                        self._synthesize_next(reply, sentences, current, index + 1, live)
                    )
                self._session.observe("reply", turn=reply.turn, text=current.text)
                try:
                    await self._speak_sentence(reply, current, index)
                except HamsaError as exc:
                    reply.record.outcome = "tts_error"
                    log.warning("TTS failed for sentence %d of turn %d: %s", index, reply.turn, exc)
                for part in current.parts():
                    await part.audio.aclose()
                    live.remove(part.audio)
                index += 1
                if ahead is not None:
                    current, ahead = await ahead, None
                else:
                    text = await sentences.get()
                    current = None if text is None else self._synthesize(reply, text, index, live)
        finally:
            if ahead is not None:
                ahead.cancel()
                await asyncio.wait({ahead})
            for audio in live:
                await audio.aclose()
        reply.mark_sending_done()

    def _synthesize(
        self, reply: Reply, text: str, index: int, live: list[Prefetched[TtsChunk]]
    ) -> Synthesis:
        """Start ``text``'s TTS now (scheduled when adaptive), read ahead into a buffer; a
        reply's first sentence as a lead and the rest with ``PLAYOUT_LEAD_SPLIT``; a
        greeting's or re-prompt's from the prompt cache when it is there."""
        kind = reply.record.kind
        prompt = kind in PROMPT_KINDS and self._prompts.enabled
        if prompt:
            cached = self._prompts.get(text, self._use_mulaw)
            self._metrics.prompt_cache.labels("miss" if cached is None else "hit").inc()
            if cached is not None:
                return self._replay(text, cached, live)
        synthesis = self._synthesize_new(text, index, live, kind == "greeting")
        synthesis.keep = prompt
        return synthesis

    def _replay(
        self, text: str, chunks: tuple[TtsChunk, ...], live: list[Prefetched[TtsChunk]]
    ) -> Synthesis:
        """A cached prompt's audio as a synthesis: all of it in hand, nothing to hold for."""
        audio = Prefetched(_replayed(chunks))
        live.append(audio)
        return Synthesis(text, time.monotonic(), audio)

    def _synthesize_new(
        self, text: str, index: int, live: list[Prefetched[TtsChunk]], greeting: bool
    ) -> Synthesis:
        delivery = self._delivery.predict() if self._adaptive else None
        if delivery is not None and self._lead_split and index == 0:
            split, queued = self._lead_split_of(text, delivery, greeting)
            if split is not None:
                # The lead first: it takes the call's own socket, the rest a warm pooled one
                # (or the call's, asked for once the lead's stream has ended).
                lead = self._synthesize_part(split[0], index, live, greeting, delivery)
                behind = lead.audio if queued else None
                lead.rest = self._synthesize_part(split[1], index, live, greeting, delivery, behind)
                lead.text = text
                return lead
        return self._synthesize_part(text, index, live, greeting, delivery)

    def _lead_split_of(
        self, text: str, delivery: Delivery, greeting: bool
    ) -> tuple[tuple[str, str] | None, bool]:
        """``text`` as a lead and the rest (``lead_split``), or None; and whether the rest
        must queue behind the lead on the call's own socket."""
        if self._speech.can_borrow(greeting):
            return lead_split(text, delivery, self._safety), False
        # No warm socket to spare (a burst of new calls: the reserve is for their greetings;
        # or a drained pool): the rest goes on the lead's socket after it, so the lead must
        # also cover its own delivery and the rest's first audio (slow end of what requests
        # take; unknown until a few were measured: no split).
        queued = self._speech.first_audio.quantile(FIRST_AUDIO_QUANTILE)
        if queued is None:
            return None, True
        return lead_split(text, delivery, self._safety, queued=queued), True

    def _synthesize_part(
        self,
        text: str,
        index: int,
        live: list[Prefetched[TtsChunk]],
        greeting: bool,
        delivery: Delivery | None,
        behind: Prefetched[TtsChunk] | None = None,
    ) -> Synthesis:
        """One TTS stream: scheduled by ``delivery`` (adaptive playout; None: sent as it
        comes, prebuffered if so configured), asked for only after ``behind`` if given."""
        started = time.monotonic()
        speech = self._speech.tts(text, mulaw=self._use_mulaw, greeting=greeting)
        stream: AsyncIterator[TtsChunk] = speech if behind is None else queued_after(behind, speech)
        plan: SentencePlan | None = None
        hold = HoldResult()
        if delivery is not None:
            plan = SentencePlan(len(text), delivery, self._safety)
            stream = scheduled(
                stream,
                plan,
                self._playout,
                tts_seconds,
                time.monotonic,
                hold,
                self._delivery.observe,
            )
        elif index == 0 and self._prebuffer > 0:
            # Nothing is playing yet: give the provider a moment to send its next chunk.
            stream = prebuffered(stream, self._prebuffer)
        audio = Prefetched(stream)
        live.append(audio)
        return Synthesis(text, started, audio, plan, hold)

    async def _synthesize_next(
        self,
        reply: Reply,
        sentences: asyncio.Queue[str | None],
        current: Synthesis,
        index: int,
        live: list[Prefetched[TtsChunk]],
    ) -> Synthesis | None:
        """The next sentence's synthesis, started once its text is known and ``current``'s
        audio has begun to arrive (its first audio is not slowed by a second request)."""
        text = await sentences.get()
        if text is None:
            return None
        await current.audio.started.wait()
        return self._synthesize(reply, text, index, live)

    async def _speak_sentence(self, reply: Reply, synthesis: Synthesis, index: int) -> None:
        """Synthesize one sentence and send it, scheduled (``gateway.agent.playout``).

        The sentence's start is held only as long as the learned delivery model says its
        later chunks would otherwise arrive after they are needed; the resampler is flushed
        whenever playback is not comfortably ahead, so everything received is sent; a chunk
        sent after the carrier ran dry is an underrun (counted, recorded); and TTS is not
        read while more than ``PLAYOUT_MAX_AHEAD_SECONDS`` are queued ahead of playback.
        """
        send = self._session.send
        clock = self._playout
        converter: OutboundConverter | None = None
        audio_ms = 0.0
        text, started = synthesis.text, synthesis.started
        plan, hold = synthesis.plan, synthesis.hold
        bytes_per_ms = self._format.bytes_per_ms()
        stream = synthesis.items()
        first_chunk = True  # (a gap at a lead split's seam is inside the sentence)
        kept: list[TtsChunk] | None = [] if synthesis.keep else None
        async with contextlib.aclosing(stream):  # type: ignore[type-var]
            async for chunk in stream:
                if reply.cancelled:
                    return
                if kept is not None:
                    kept.append(chunk)
                now = time.monotonic()
                if chunk.format == self._format:
                    audio = chunk.audio  # e.g. μ-law TTS on a μ-law call: no transcoding
                else:
                    if converter is None:
                        converter = OutboundConverter(chunk.format.sample_rate, self._format)
                    audio = converter.process(chunk.audio)
                    if self._adaptive and clock.ahead(now) < FLUSH_BELOW_SECONDS:
                        # The resampler holds ~60 ms (more at the start) until more input
                        # comes; with playback about to run dry, send all that was received.
                        audio += converter.flush()
                if not audio:
                    continue
                seconds = len(audio) / bytes_per_ms / 1000.0
                audio_ms += seconds * 1000.0
                gap = clock.sent(seconds, now)
                if not first_chunk and gap > UNDERRUN_TOLERANCE:
                    self._underrun(reply, gap)
                first_chunk = False
                if reply.first_audio_at is None:
                    if plan is not None and plan.first_at is not None:
                        reply.record.timings["tts_first_audio"] = round(plan.first_at - started, 3)
                        reply.record.timings["playout_hold"] = round(hold.held, 3)
                        self._metrics.observe_stage("playout_hold", hold.held)
                    audio = await self._send_first_frame(reply, audio, started)
                if audio:
                    await send(PlayAudio(audio))
                ahead = clock.ahead(time.monotonic())
                if ahead > self._max_ahead:
                    # Backpressure: stop reading TTS until playback catches up.
                    await asyncio.sleep(ahead - self._max_ahead)
        if converter is not None:
            tail = converter.flush()
            if tail and not reply.cancelled:
                await send(PlayAudio(tail))
                audio_ms += len(tail) / bytes_per_ms
                clock.sent(len(tail) / bytes_per_ms / 1000.0, time.monotonic())
        if reply.cancelled:
            return
        if kept:  # the whole sentence arrived and was sent: the next call replays it
            self._prompts.put(text, self._use_mulaw, kept)
        name = f"t{reply.turn}.s{index}"
        reply.sentences.append(SpokenSentence(name, text, audio_ms))
        self._mark_sent_at[name] = time.monotonic()
        await send(SetMark(name))

    def _underrun(self, reply: Reply, gap: float) -> None:
        """The carrier ran dry inside a sentence: the caller heard ``gap`` s of silence."""
        self._underrun_count.inc()
        self._underrun_seconds.inc(gap)
        record = reply.record
        record.underruns += 1
        record.underrun_ms = round(record.underrun_ms + gap * 1000.0, 1)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("playout underrun in turn %d: %.0f ms", reply.turn, gap * 1000.0)

    async def _send_first_frame(self, reply: Reply, audio: bytes, started: float) -> bytes:
        """Send the reply's first 20 ms frame and a tiny mark after it; return the rest."""
        now = time.monotonic()
        reply.first_audio_at = now
        reply.first_mark = f"t{reply.turn}.first"
        if "tts_first_audio" not in reply.record.timings:
            reply.record.timings["tts_first_audio"] = round(now - started, 3)
        if reply.speech_end is not None:
            latency = now - reply.speech_end
            reply.record.timings["turn"] = round(latency, 3)
            self._metrics.observe_stage("turn", latency)
        frame = self._format.frame_bytes(FRAME_MS)
        await self._session.send(PlayAudio(audio[:frame]))
        self._mark_sent_at[reply.first_mark] = time.monotonic()
        await self._session.send(SetMark(reply.first_mark))
        return audio[frame:]

    async def _hang_up_after(self, reply: Reply) -> None:
        """The agent asked to end (or transfer) the call: let the caller hear the reply first.

        A transfer uses the transport's call control (Twilio: REST redirect to ``<Dial>``);
        where there is none (Asterisk: the dialplan continues after the gateway's leg ends),
        or it fails, the gateway's leg simply ends.
        """
        remaining = sum(s.audio_ms for s in reply.sentences if not s.played) / 1000.0
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reply.all_played.wait(), remaining + HANGUP_GRACE_SECONDS)
        target, self._transfer_target = self._transfer_target, None
        transfer = self._session.transfer
        if target is not None:
            if target and transfer is not None and await transfer(target):
                log.info("call transferred")
                self._session.outcome = "transferred"
                return  # the carrier ends our media stream itself
            log.warning(
                "transfer to %s not possible on this call; ending the gateway's leg",
                target or "(no target)",
            )
            self._session.hangup("agent_transfer", outcome="transferred")
            return
        self._session.hangup("agent_hangup", outcome="agent_hangup")

    # ------------------------------------------------------------- speech outage

    def _speech_failed(self) -> None:
        """STT or TTS failed (after the speech session's own retries and REST fallback)."""
        if self._speech_down_since is None:
            self._speech_down_since = time.monotonic()

    async def _play_clip(self, reply: Reply) -> None:
        """Play the fallback clip (``gateway.agent.fallback``) as ``reply``'s audio.

        No TTS is involved, so the caller hears an apology while the speech service is
        down. The clip is one sentence with its own mark, so barge-in and "heard" work.
        """
        clip = self._fallback.audio
        converter = OutboundConverter(clip.rate, self._format)
        audio = converter.process(clip.pcm) + converter.flush()
        now = time.monotonic()
        seconds = len(audio) / self._format.bytes_per_ms() / 1000.0
        reply.all_played.clear()
        if reply.first_audio_at is None:
            reply.first_audio_at = now
        await self._session.send(PlayAudio(audio))
        self._playout.sent(seconds, now)
        name = f"t{reply.turn}.fallback"
        text = clip.text
        reply.sentences.append(SpokenSentence(name, text, seconds * 1000.0))
        self._mark_sent_at[name] = time.monotonic()
        await self._session.send(SetMark(name))
        reply.mark_sending_done()
        log.info("speech service failed: played the fallback clip (turn %d)", reply.turn)

    async def _end_for_speech_outage(self, down_for: float) -> None:
        """No working speech service for SPEECH_OUTAGE_HANGUP_SECONDS: stop the turn in
        progress, play the clip once more (unless the caller is hearing it now), wait until
        it has been heard (bounded), and hang up with outcome ``speech_unavailable``."""
        self._ending = True
        log.warning(
            "no speech service for %.0f s: ending the call with the fallback clip", down_for
        )
        task = self._turn_task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task})
        reply = self._reply
        if reply is None or not (reply.speaking and reply.text):
            self._turn += 1
            record = TurnRecord(turn=self._turn, kind="fallback")
            record.outcome = "tts_error"  # the clip stands in for speech that failed
            self.record.turns.append(record)
            self._settle(self._unsettled)
            self._unsettled = record
            self._settle(record)  # final: counted with the outcome the record shows
            reply = Reply(turn=self._turn, speech_end=None, record=record)
            self._reply = reply
            await self._session.send(ClearAudio())
            self._playout.reset(time.monotonic())
            await self._play_clip(reply)
            record.reply = self._fallback.audio.text
        remaining = sum(s.audio_ms for s in reply.sentences if not s.played) / 1000.0
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reply.all_played.wait(), remaining + HANGUP_GRACE_SECONDS)
        self._session.hangup("speech_unavailable", outcome="speech_unavailable")

    # ------------------------------------------------------------------- finish

    async def finish(self) -> None:
        """After the call: give speech sockets back, write the record, tell the agent.

        ``call.ended`` is fire and forget: a brain that can :class:`Notifier`-deliver it is
        only waited for until the agent acknowledges (status line), never for a reply body
        (issue 12 item 5).
        """
        self._settle(self._unsettled)
        self.record.duration_seconds = round(self._session.duration_seconds, 3)
        self.record.outcome = self._session.outcome
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._speech.aclose(), FINISH_TIMEOUT)
        path = self._settings.call_record_path
        if path and not await append_record(path, self.record):
            self._metrics.call_record_failures.inc()
        request = self._request("call.ended", record=self.record.to_dict())
        try:
            async with asyncio.timeout(FINISH_TIMEOUT):
                if isinstance(self._brain, Notifier):
                    await self._brain.notify(request, FINISH_TIMEOUT)
                else:
                    async for _ in self._brain.reply(request):
                        pass  # call.ended replies are not spoken: the call is over
        except (AgentError, TimeoutError) as exc:
            kind = exc.kind if isinstance(exc, AgentError) else "timeout"
            self._metrics.agent_errors.labels(kind).inc()
            log.info("call.ended not delivered to the agent (%s)", kind)
