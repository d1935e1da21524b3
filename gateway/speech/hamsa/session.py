"""Per-call Hamsa speech: ``tts`` and ``stt`` over held realtime sockets, with recovery.

Why TWO sockets per call (one for TTS, one for STT), both taken from the warm pool: the
realtime socket carries one request at a time with no request id and no cancel
(``hamsa.md`` §1.4), so an STT request for a barge-in sent on the TTS socket would wait
behind the whole audio stream (2-5 s). A separate STT socket answers at once. Billing is per
second of audio, not per socket (§1.7), so the second socket costs only a pooled connect.

Contract of :class:`HamsaSession`:

* Sockets are held for the whole call (get-or-create, reuse, replace after an error or
  timeout) and given back to the pool by :meth:`aclose` when clean.
* :meth:`tts` yields :class:`TtsChunk` s (PCM16 16 kHz, or μ-law 8 kHz with ``mulaw``).
  Audio is held back until it passes ``min(short threshold, HOLD_MS)``: a "640-byte"
  response (§4: ack, one tiny frame, end) is then caught before anything was played and
  retried on a fresh socket with jittered exponential backoff (``hamsa_retries``,
  ``hamsa_retry_delay``). Once audio was yielded, a failure is raised, never retried (a
  retry would repeat speech). Timeouts (first audio, gap) replace the socket.
* Stopping the iteration (``break`` + ``aclose``, or cancelling the task: barge-in) aborts
  that socket; the next request takes a fresh one. A socket with unread audio is never
  reused.
* Two :meth:`tts` streams may run at once (the next sentence synthesised while the current
  one is still streaming, ``gateway.agent.playout``): the second takes a warm socket from
  the pool, since a socket carries one request at a time (§1.4), while more than the burst
  reserve (``HAMSA_POOL_BURST_CALLS``) are idle: the reserve is for new calls' greetings.
  Otherwise it waits for the call's own socket instead (a connect, ~1.2 s, would take
  longer than the first stream has left). A borrowed socket that ended cleanly becomes the
  call's TTS socket if that slot is free, else it goes back to the pool: a call holds one
  idle TTS socket.
* :meth:`stt` sends one whole utterance as a 16 kHz WAV; markers such as ``[THINKING]`` are
  skipped; timeouts replace the socket.
* Fatal errors (bad key, empty wallet) raise :class:`HamsaError` at once, never retried.
* REST fallback (:class:`FallbackGate`, shared by all calls): after
  ``hamsa_rest_fallback_after`` consecutive socket failures, or while the pool's circuit is
  open, requests go to REST; every ``probe_interval`` one request tries the socket again.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass

from gateway.audio_format import PCM16_16K, ULAW_8K, AudioFormat
from gateway.config import Settings
from gateway.metrics import Metrics
from gateway.speech.hamsa.client import Backoff, HamsaConnection
from gateway.speech.hamsa.errors import HamsaError
from gateway.speech.hamsa.pool import HamsaPool
from gateway.speech.hamsa.protocol import MAX_TTS_CHARS, ErrorKind, is_short_response
from gateway.speech.hamsa.rest import HamsaRest
from telecodecs.resample import resample
from telecodecs.wav import build_wav

log = logging.getLogger(__name__)

HOLD_MS = 200.0  # audio held back before the first yield (catches 640-byte responses)
STT_RATE = 16000  # §1.5: whole 16 kHz mono WAV
GRACEFUL_CLOSES = frozenset({1000, 1001})  # §1.6: idle timeout, server shutting down


@dataclass(frozen=True, slots=True)
class TtsChunk:
    """A piece of TTS audio and its format (PCM16 16 kHz, or μ-law 8 kHz)."""

    audio: bytes
    format: AudioFormat


class FallbackGate:
    """Counts consecutive socket failures across calls; decides when to use REST.

    Sans-I/O: the clock is passed in. ``use_rest()`` is true once ``threshold`` failures
    have happened in a row, except for one probe request every ``probe_interval`` seconds,
    which goes to the socket; a socket success resets the count.
    """

    def __init__(
        self,
        threshold: int,
        probe_interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.probe_interval = probe_interval
        self._clock = clock
        self.failures = 0
        self._next_probe = 0.0

    def use_rest(self) -> bool:
        if self.failures < self.threshold:
            return False
        now = self._clock()
        if now >= self._next_probe:
            self._next_probe = now + self.probe_interval
            return False
        return True

    def record_failure(self) -> None:
        self.failures += 1
        if self.failures == self.threshold:
            self._next_probe = self._clock() + self.probe_interval

    def record_success(self) -> None:
        self.failures = 0


class FirstAudioTimes:
    """Recent seconds from a TTS request sent on a socket to its first audio, process-wide
    (the wait for a socket left out): how long a request queued behind another on the same
    socket will take to start speaking (the playout lead split asks, issue 11)."""

    def __init__(self, size: int = 200) -> None:
        self._times: deque[float] = deque(maxlen=size)

    def record(self, seconds: float) -> None:
        self._times.append(seconds)

    def quantile(self, q: float, min_samples: int = 5) -> float | None:
        """The ``q`` quantile of the recent times; None with fewer than ``min_samples``."""
        if len(self._times) < min_samples:
            return None
        ordered = sorted(self._times)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def split_text(text: str, limit: int = MAX_TTS_CHARS) -> list[str]:
    """Split ``text`` into pieces of at most ``limit`` characters at whitespace (§1.4)."""
    text = text.strip()
    pieces: list[str] = []
    while len(text) > limit:
        cut = text.rfind(" ", 0, limit + 1)
        if cut <= 0:
            cut = limit
        pieces.append(text[:cut].strip())
        text = text[cut:].strip()
    if text:
        pieces.append(text)
    return pieces


class HamsaSession:
    """Speech for one call. Not shared between calls; :meth:`aclose` at hang-up."""

    def __init__(
        self,
        call_id: str,
        pool: HamsaPool,
        settings: Settings,
        metrics: Metrics,
        gate: FallbackGate,
        rest: HamsaRest | None = None,
        *,
        first_audio: FirstAudioTimes | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.call_id = call_id
        self._pool = pool
        self._s = settings
        self._metrics = metrics
        self._gate = gate
        self._rest = rest
        self.first_audio = first_audio if first_audio is not None else FirstAudioTimes()
        self._sleep = sleep
        self._rng = rng
        self._clock = clock
        self._retry = Backoff(initial=settings.hamsa_retry_delay, factor=2.0, maximum=30.0)
        self._tts: HamsaConnection | None = None
        self._stt: HamsaConnection | None = None
        self._tts_streaming: set[HamsaConnection] = set()  # TTS sockets with a request on
        self._tts_ended = asyncio.Event()  # set whenever a TTS request ends
        self._closed = False
        # One acquisition at a time per socket kind (prepare() may race the first request).
        self._locks = {"tts": asyncio.Lock(), "stt": asyncio.Lock()}

    def __repr__(self) -> str:
        return f"<HamsaSession call={self.call_id}>"

    # -- sockets
    async def prepare(self) -> None:
        """Take the call's STT socket now, while the greeting plays.

        The TTS socket is taken by the first reply (usually the greeting); without this the
        STT socket would be taken at the first utterance, which pays a full connect whenever
        the warm pool has run dry (a burst of new calls). Failures are left to the request
        that needs the socket.
        """
        if self._closed or self._stt is not None:
            return
        try:
            async with self._locks["stt"]:
                if self._stt is None and not self._closed:
                    # Not needed until the caller has heard the greeting: leave the warm
                    # sockets to greetings of calls arriving in the same burst.
                    self._stt = await self._pool.acquire(spare=True)
        except HamsaError as exc:
            log.info("could not prepare the STT socket: %s", exc)

    def can_borrow(self, greeting: bool = False) -> bool:
        """True if a second concurrent :meth:`tts` would get a warm pooled socket now.

        For a ``greeting`` only beyond the burst reserve (``HAMSA_POOL_BURST_CALLS``), which
        is kept for the greetings of calls arriving in the same burst; for anything else any
        idle socket will do.
        """
        reserve = self._pool.sizer.burst if greeting else 0
        if self._tts is None:
            reserve += 1  # the first stream will take one from the pool too
        return self._pool.idle > reserve

    async def _socket(self, which: str, greeting: bool = False) -> HamsaConnection:
        async with self._locks[which]:
            return await self._take_socket(which, greeting)

    async def _take_socket(self, which: str, greeting: bool = False) -> HamsaConnection:
        held = self._tts if which == "tts" else self._stt
        if held is not None and held in self._tts_streaming:
            # Another sentence is streaming on the call's TTS socket: borrow a warm one,
            # leaving the held socket alone (for a greeting only beyond the burst reserve);
            # otherwise wait for that stream to end (sooner than a connect).
            if self.can_borrow(greeting):
                conn = await self._pool.acquire()
                if conn.requests:
                    self._metrics.hamsa_connections.labels("reused").inc()
                self._tts_streaming.add(conn)
                return conn
            while held in self._tts_streaming:
                self._tts_ended.clear()
                await self._tts_ended.wait()
            held = self._tts  # still the same socket, unless that stream failed
        if held is not None:
            if held.usable:
                self._metrics.hamsa_connections.labels("reused").inc()
                return self._taken(which, held)
            self._pool.discard(held)
        self._set(which, None)
        conn = await self._pool.acquire()
        if conn.requests:
            self._metrics.hamsa_connections.labels("reused").inc()
        self._set(which, conn)
        return self._taken(which, conn)

    def _taken(self, which: str, conn: HamsaConnection) -> HamsaConnection:
        if which == "tts":
            self._tts_streaming.add(conn)  # until _ws_audio ends (no await in between)
        return conn

    def _set(self, which: str, conn: HamsaConnection | None) -> None:
        if which == "tts":
            self._tts = conn
        else:
            self._stt = conn

    def _drop(self, which: str, conn: HamsaConnection, abort: bool = False) -> None:
        """Never reuse ``conn``: abort it now (unread audio) or close it in the background."""
        if abort:
            conn.abort()
        self._pool.discard(conn)
        if (self._tts if which == "tts" else self._stt) is conn:
            self._set(which, None)

    def _tts_finished(self, conn: HamsaConnection) -> None:
        """A TTS request on ``conn`` completed: a borrowed second socket becomes the call's
        TTS socket if that slot is free, else it goes back to the pool."""
        if conn is self._tts:
            return
        if self._tts is None and not self._closed:
            self._tts = conn
        else:
            self._pool.release(conn)

    async def aclose(self) -> None:
        """Hang-up: give clean sockets back to the pool, close the rest."""
        self._closed = True
        for conn in (self._tts, self._stt):
            if conn is not None:
                self._pool.release(conn)
        self._tts = self._stt = None

    # -- failure bookkeeping
    def _failed(self, err: HamsaError, via_rest: bool) -> None:
        self._metrics.hamsa_errors.labels(err.kind.value).inc()
        if not via_rest and err.kind is not ErrorKind.CIRCUIT_OPEN:
            self._gate.record_failure()
        log.info("hamsa request failed: %s", err)

    def _use_rest(self) -> bool:
        fatal = self._pool.fatal_error
        if fatal is not None:
            # Bad key or empty wallet: REST shares the key and the wallet.
            raise HamsaError(fatal.message, fatal.kind, fatal=True)
        return self._rest is not None and (self._pool.circuit_open or self._gate.use_rest())

    async def _retry_pause(self, attempt: int, err: HamsaError | None) -> None:
        if attempt == 0 or err is None or err.kind is ErrorKind.CIRCUIT_OPEN:
            return
        if err.close_code in GRACEFUL_CLOSES:
            return  # the server closed an idle socket as we used it: not an overload sign
        await self._sleep(self._retry.delay(attempt - 1, self._rng))

    # -- TTS
    async def tts(
        self, text: str, *, mulaw: bool = False, greeting: bool = False
    ) -> AsyncGenerator[TtsChunk, None]:
        """Speak ``text``: yields audio chunks as they arrive (see the module contract).

        ``greeting``: part of a call's greeting, which borrows a second socket only beyond
        the burst reserve (:meth:`can_borrow`).

        Raises :class:`HamsaError` when every attempt failed, or at once when fatal.
        Use with ``contextlib.aclosing`` or cancel the task to stop early (barge-in).
        """
        if self._closed:
            raise HamsaError("the call's speech session is closed", ErrorKind.CLOSED)
        fmt = ULAW_8K if mulaw else PCM16_16K
        started = self._clock()
        first = True
        for part in split_text(text):
            async with aclosing(self._tts_part(part, mulaw, greeting)) as audio_parts:
                async for audio in audio_parts:
                    if first:
                        first = False
                        self._metrics.observe_stage("tts_first_audio", self._clock() - started)
                    yield TtsChunk(audio, fmt)
        self._metrics.observe_stage("tts_total", self._clock() - started)

    async def _tts_part(
        self, text: str, mulaw: bool, greeting: bool = False
    ) -> AsyncGenerator[bytes, None]:
        bytes_per_ms = 8.0 if mulaw else 32.0
        threshold_ms = len(text) * self._s.hamsa_short_audio_ms_per_char
        hold = max(1, int(min(threshold_ms, HOLD_MS) * bytes_per_ms))
        last: HamsaError | None = None
        for attempt in range(self._s.hamsa_retries + 1):
            await self._retry_pause(attempt, last)
            via_rest = self._use_rest()
            if via_rest:
                self._metrics.hamsa_rest_fallbacks.labels("tts").inc()
            held: list[bytes] = []
            held_bytes = 0
            total = 0
            yielded = False
            conn: HamsaConnection | None = None
            try:
                if via_rest:
                    assert self._rest is not None
                    source: AsyncGenerator[bytes, None] = self._rest.tts_stream(text, mulaw=mulaw)
                else:
                    conn = await self._socket("tts", greeting)
                    source = self._ws_audio(conn, text, mulaw)
                async with aclosing(source) as stream:
                    async for audio in stream:
                        total += len(audio)
                        if yielded:
                            yield audio
                            continue
                        held.append(audio)
                        held_bytes += len(audio)
                        if held_bytes >= hold:
                            yielded = True
                            yield b"".join(held)
                            held.clear()
            except HamsaError as err:
                self._failed(err, via_rest)
                if err.fatal or yielded:
                    raise
                last = err
                continue
            if is_short_response(total, text, mulaw, self._s.hamsa_short_audio_ms_per_char):
                self._metrics.hamsa_short_responses.inc()
                short = HamsaError(
                    f"short TTS response: {total} bytes for {len(text)} characters",
                    ErrorKind.SHORT_RESPONSE,
                )
                if conn is not None:
                    self._drop("tts", conn)  # §4: retry on a NEW connection
                self._failed(short, via_rest)
                if not yielded:
                    last = short
                    continue
                return  # already playing: nothing better to do than let it end
            if conn is not None:
                self._tts_finished(conn)
            if held:
                yield b"".join(held)
            if not via_rest:
                self._gate.record_success()
            return
        assert last is not None
        raise last

    async def _ws_audio(
        self, conn: HamsaConnection, text: str, mulaw: bool
    ) -> AsyncGenerator[bytes, None]:
        """One TTS request on ``conn``; the socket is dropped unless the stream completed."""
        done = False
        try:
            await conn.start_tts(
                text,
                speaker=self._s.hamsa_speaker,
                dialect=self._s.hamsa_dialect,
                language=self._s.hamsa_language,
                mulaw=mulaw,
            )
            timeout = self._s.hamsa_tts_first_audio_timeout
            sent = self._clock()
            first = True
            while True:
                audio = await conn.next_audio(timeout)
                if audio is None:
                    done = True
                    return
                if first:
                    first = False
                    self.first_audio.record(self._clock() - sent)
                timeout = self._s.hamsa_tts_gap_timeout
                yield audio
        finally:
            self._tts_streaming.discard(conn)
            self._tts_ended.set()
            if not done:
                # Error, timeout, consumer stopped or task cancelled (barge-in): audio may
                # still be on the wire and there is no cancel message, so the socket goes.
                self._drop("tts", conn, abort=True)

    # -- STT
    async def stt(self, pcm: bytes, sample_rate: int) -> str:
        """Transcript of one whole utterance of PCM16 mono at ``sample_rate``."""
        if self._closed:
            raise HamsaError("the call's speech session is closed", ErrorKind.CLOSED)
        started = self._clock()
        if sample_rate != STT_RATE:
            pcm = resample(pcm, sample_rate, STT_RATE)
        wav = build_wav(pcm, STT_RATE)
        last: HamsaError | None = None
        for attempt in range(self._s.hamsa_retries + 1):
            await self._retry_pause(attempt, last)
            via_rest = self._use_rest()
            try:
                if via_rest:
                    assert self._rest is not None
                    self._metrics.hamsa_rest_fallbacks.labels("stt").inc()
                    text = await self._rest.stt(wav)
                else:
                    text = await self._ws_stt(wav)
                    self._gate.record_success()
            except HamsaError as err:
                self._failed(err, via_rest)
                if err.fatal:
                    raise
                last = err
                continue
            self._metrics.observe_stage("stt", self._clock() - started)
            return text
        assert last is not None
        raise last

    async def _ws_stt(self, wav: bytes) -> str:
        conn = await self._socket("stt")
        done = False
        try:
            text = await conn.transcribe(
                wav, language=self._s.hamsa_language, timeout=self._s.hamsa_stt_timeout
            )
            done = True
            return text
        finally:
            if not done:
                self._drop("stt", conn, abort=True)
