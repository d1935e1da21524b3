"""Playout scheduling: when to start a sentence's audio so the caller never hears a dropout.

Hamsa streams a sentence as a small first frame (~0.5 s of audio) and then 1-2 s frames that
arrive only a little faster than they play (``hamsa.md`` §1.4; issue 11). Sending the first
frame at once gives the lowest latency, but when the second frame lands after the first has
played out, the caller hears a gap inside the sentence. Holding every sentence a fixed time
(``PLAYOUT_PREBUFFER_MS``) fixes that at a cost on every turn. This module holds a sentence's
start only as long as the *predicted* arrival of its later chunks requires, and not at all
when the provider is fast.

Pieces (all sans-I/O except :func:`scheduled`; time is passed in as monotonic seconds):

* :class:`DeliveryModel`: what the provider's delivery looks like, learned from finished
  sentences, per process and per connection (a call's TTS socket): *rate* (seconds of audio
  delivered per second of wall time after the first chunk), *frame* size (seconds of audio in
  a later chunk), a sentence's *length* from its text (a fixed part per request plus a part
  per character: see :func:`fit_length`) and the *first chunk* size. Predictions use
  conservative quantiles of the recent window (slow rate, big frames, long sentences); a
  connection with a few sentences of its own uses its own window, otherwise the process's,
  and for rate and frame size the more pessimistic of the two (a handful of a call's own
  frames understates the big end); with no data at all, priors from the observed Hamsa
  pattern.
* :class:`SentencePlan`: one sentence's arrivals; :meth:`SentencePlan.required_start` is the
  earliest moment its playback may start so that every predicted later chunk arrives before
  it is needed (plus the safety margin).
* :class:`PlayoutClock`: a sender-side clock of what the carrier is playing (carriers and
  the AudioSocket pacer play in real time from when audio reaches them), used to find
  underruns (audio sent after everything before it had played out) and how far playback is
  queued ahead (backpressure: ``PLAYOUT_MAX_AHEAD_SECONDS``).
* :func:`scheduled`: wraps a TTS chunk stream and holds its first chunks until the plan says
  go (or the stream ends).
* :class:`Prefetched`: reads a (scheduled) TTS stream in its own task into a bounded buffer,
  so the next sentence is synthesised while the current one is still being sent and its
  first audio is waiting when the current one's last audio has gone out: sentence
  boundaries do not gap (issue 11).
* :func:`lead_split` (``PLAYOUT_LEAD_SPLIT``): the first words of a reply's first sentence
  (about ``LEAD_SECONDS`` of audio) and the rest of it, synthesised as two requests at once.
  The hold a long sentence needs is set by its second TTS frame, random and unknown until it
  lands; a short lead has no such frame (its plan does not hold it), and by the time it has
  played, the rest's first and second frames are in, so the rest is not held either.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Generic, TypeVar

if TYPE_CHECKING:  # the speech session imports this module (its delivery model)
    from gateway.speech.hamsa.session import TtsChunk

# Priors before anything was learned: the observed Hamsa pattern (issue 11), slightly
# pessimistic, so the first sentences of a process are held rather than broken.
PRIOR_RATE: Final = 2.0  # audio seconds per wall second after the first chunk (issue 11: "~2x")
PRIOR_FRAME_SECONDS: Final = 2.0  # a full later chunk (big end)
PRIOR_MS_PER_CHAR: Final = 80.0
PRIOR_OVERHEAD_SECONDS: Final = 0.5  # leading/trailing silence of one request
PROCESS_WINDOW: Final = 200  # sentences remembered per process
CONNECTION_WINDOW: Final = 20  # sentences remembered per connection
MIN_SAMPLES: Final = 5  # a window with fewer sentences defers to its parent (or the prior)
RATE_QUANTILE: Final = 0.25  # slow end of observed rates
# Big end of observed full frames. The hold a sentence needs is set by the size of its second
# frame, unknown until it lands (hamsa.md §1.4: 32-64 KB, i.e. 1-2 s at 16 kHz); holding for
# the 75th percentile left ~1 in 10 long sentences with a dropout (issue 11 measurements), so
# the plan holds for nearly the largest frame seen (PLAYOUT_SAFETY_MS covers the rest).
FRAME_QUANTILE: Final = 0.95
# A sentence's length is predicted from its text by a line (fit_length) and a relative error:
# the long end is line x (1 + error), the short end line x (1 - error). Lengths were once a
# plain ms-per-character median: a synthesised sentence carries a fixed part (its silences)
# that per-character rates hide, so short texts (a lead, "thank you") came out 30-65 % longer
# than predicted, went out unheld and broke up (issue 11, observed-slow delivery: 48 % of
# turns with an underrun). The error is the LENGTH_QUANTILE of the window's |actual / line - 1|,
# at least MIN_LENGTH_ERROR: texts of one length vary by about that much (the simulator's
# espeak-ng voice: +-20-30 % on 1-2 s texts), and a window of a few texts shows less.
LENGTH_QUANTILE: Final = 0.9
FIRST_QUANTILE: Final = 0.1  # small end of observed first chunks
MIN_LENGTH_ERROR: Final = 0.25
# Less audio than this per character is a truncated stream (hamsa.md §4: the 640-byte
# failure is 20 ms of audio whatever the text), not a length to learn from; speech runs at
# 60-120 ms per character (the tests' fast simulator at 12).
IMPLAUSIBLE_MS_PER_CHAR: Final = 10.0
MAX_LENGTH_ERROR: Final = 0.8  # beyond it one outlier (a truncated stream) would rule
# Fewer characters of spread than this (standard deviation) and the window cannot tell the
# fixed part from the per-character one (a fit through texts of 36-52 characters put 2.9 s in
# the fixed part and predicted a 200-character sentence at 4 s); nor is a fixed part outside
# 0-MAX_OVERHEAD_SECONDS believed. The length is then a per-character ratio.
MIN_CHAR_SPREAD: Final = 8.0
MAX_OVERHEAD_SECONDS: Final = 1.0
_MAX_PLANNED_FRAMES: Final = 64  # bound on the prediction loop (a 2000-char sentence)
UNDERRUN_TOLERANCE: Final = 0.02  # s: one 20 ms frame of lateness is not heard as a gap
# Chunks a prefetched sentence buffers before its reader stops reading the socket (Hamsa
# frames are <= 64 KB: a bound of ~0.5 MB per call, and the sender's own backpressure,
# PLAYOUT_MAX_AHEAD_SECONDS, still applies once the sentence is being sent).
PREFETCH_CHUNKS: Final = 8
# Lead split (PLAYOUT_LEAD_SPLIT): the lead is cut at the first word boundary after at least
# LEAD_SECONDS of predicted audio, more if the rest's second frame could land later than the
# lead and the rest's first frame (the learned small end; before anything was learned
# REST_FIRST_SECONDS, hamsa.md §1.4: 0.23 s) take to play (a big frame at a slow rate; longer
# when the rest must wait for the lead's socket), and only when the rest is at least REST_SECONDS
# (a shorter sentence is not held anyway). A lead whose first word boundary is beyond
# LEAD_MAX_SECONDS would itself be long enough to be held: no split.
LEAD_SECONDS: Final = 0.6
REST_FIRST_SECONDS: Final = 0.23
LEAD_MAX_SECONDS: Final = 1.4
REST_SECONDS: Final = 1.0
_CLAUSE_ENDS: Final = ",،;:؛"

T = TypeVar("T")


def _quantile(values: deque[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass(slots=True)
class _Window:
    rates: deque[float]
    frames: deque[float]
    lengths: deque[tuple[int, float]]  # (characters, seconds of audio) per sentence
    first: deque[float]

    @classmethod
    def of(cls, size: int) -> _Window:
        return cls(deque(maxlen=size), deque(maxlen=size), deque(maxlen=size), deque(maxlen=size))


@dataclass(frozen=True, slots=True)
class Delivery:
    """Predicted delivery for the next sentence (conservative quantiles)."""

    rate: float  # audio seconds per wall second after the first chunk
    frame: float  # seconds of audio in a later chunk
    ms_per_char: float  # a sentence's length: (overhead + characters x ms_per_char) ...
    overhead: float = 0.0  # seconds
    error: float = 0.0  # ... x (1 +- error) at the long and the short end
    first: float = REST_FIRST_SECONDS  # seconds of audio in a first chunk (small end)

    def seconds(self, chars: int, end: float = 1.0) -> float:
        """Predicted audio seconds of a sentence of ``chars`` characters: the long end
        (``end=1``), the line (0) or the short end (-1)."""
        line = self.overhead + chars * self.ms_per_char / 1000.0
        return max(0.0, line * (1.0 + end * self.error))

    def chars_for(self, seconds: float, end: float = 1.0) -> float:
        """Characters a sentence needs for ``seconds`` of predicted audio at ``end`` (the
        inverse of :meth:`seconds`; ``inf`` when the per-character part is zero)."""
        if self.ms_per_char <= 0.0:
            return float("inf")
        line = seconds / max(1e-9, 1.0 + end * self.error)
        return (line - self.overhead) * 1000.0 / self.ms_per_char


class DeliveryModel:
    """Learned TTS delivery, for a process (``parent=None``) or one connection under it.

    :meth:`observe` feeds both the connection's window and its parent's. Not thread-safe;
    one event loop.
    """

    def __init__(self, parent: DeliveryModel | None = None) -> None:
        self._parent = parent
        self._w = _Window.of(CONNECTION_WINDOW if parent is not None else PROCESS_WINDOW)
        self.sentences = 0

    def connection(self) -> DeliveryModel:
        """A child model for one connection (a call's TTS socket) that also teaches this one."""
        return DeliveryModel(parent=self)

    def observe(self, plan: SentencePlan) -> None:
        """Learn from a sentence whose stream ended normally."""
        w = self._w
        if plan.rate is not None:
            w.rates.append(plan.rate)
        w.frames.extend(plan.full_frames)
        if plan.chars > 0 and plan.received * 1000.0 >= plan.chars * IMPLAUSIBLE_MS_PER_CHAR:
            w.lengths.append((plan.chars, plan.received))
        if plan.first_chunk > 0.0:
            w.first.append(plan.first_chunk)
        self.sentences += 1
        if self._parent is not None:
            self._parent.observe(plan)

    def predict(self) -> Delivery:
        """Slow-end rate, big-end frame and long-end length. Length comes from the most
        specific window with enough samples (this connection, then the process, then the
        priors); rate and frame from the more pessimistic of the windows with enough: a
        connection's few sentences put the 95th percentile of its frames near their maximum,
        below the provider's (issue 11: the turns that still broke up had such holds)."""
        rate = self._pick("rates", RATE_QUANTILE, PRIOR_RATE, min)
        frame = self._pick("frames", FRAME_QUANTILE, PRIOR_FRAME_SECONDS, max)
        length = (PRIOR_OVERHEAD_SECONDS, PRIOR_MS_PER_CHAR, MIN_LENGTH_ERROR)
        ratio: tuple[float, float, float] | None = None
        model: DeliveryModel | None = self
        while model is not None:  # the most specific window that fits a line, else a ratio
            if len(model._w.lengths) >= MIN_SAMPLES:
                *fit, line = fit_length(model._w.lengths, LENGTH_QUANTILE)
                if line:
                    length = (fit[0], fit[1], fit[2])
                    break
                ratio = ratio or (fit[0], fit[1], fit[2])
            model = model._parent
        else:
            length = ratio or length
        overhead, mspc, error = length
        error = min(MAX_LENGTH_ERROR, max(MIN_LENGTH_ERROR, error))
        first = self._pick("first", FIRST_QUANTILE, REST_FIRST_SECONDS, min)
        return Delivery(rate, frame, mspc, overhead, error, first)

    def _pick(
        self,
        name: str,
        q: float,
        prior: float,
        worse: Callable[[float, float], float] | None = None,
    ) -> float:
        picked: float | None = None
        model: DeliveryModel | None = self
        while model is not None:
            values: deque[float] = getattr(model._w, name)
            if len(values) >= MIN_SAMPLES:
                value = _quantile(values, q)
                if worse is None:
                    return value
                picked = value if picked is None else worse(picked, value)
            model = model._parent
        return prior if picked is None else picked


def fit_length(samples: deque[tuple[int, float]], q: float) -> tuple[float, float, float, bool]:
    """(overhead seconds, ms per character, error, line) predicting a sentence's audio
    length from its character count: the least-squares line through (characters, seconds),
    and the ``q`` quantile of the relative misses ``|seconds / line - 1|``; ``line`` is True.

    Synthesised speech has a part per request (leading and trailing silence, the sentence's
    final lengthening) and a part per character; a ratio alone predicts short texts too
    short. When the window's texts are too alike in length to separate the two
    (``MIN_CHAR_SPREAD``), or the line does not rise, or its fixed part is outside
    0-``MAX_OVERHEAD_SECONDS``, the median seconds-per-character ratio is used instead,
    with no overhead, and ``line`` is False.
    """
    n = len(samples)
    mean_chars = sum(c for c, _ in samples) / n
    mean_seconds = sum(s for _, s in samples) / n
    sxx = sum((c - mean_chars) ** 2 for c, _ in samples)
    slope = intercept = 0.0
    line = False
    if sxx >= n * MIN_CHAR_SPREAD**2:
        slope = sum((c - mean_chars) * (s - mean_seconds) for c, s in samples) / sxx
        intercept = mean_seconds - slope * mean_chars
        line = slope > 0.0 and 0.0 <= intercept <= MAX_OVERHEAD_SECONDS
    if not line:
        intercept, slope = 0.0, _quantile(deque(s / c for c, s in samples), 0.5)
    misses = deque(abs(s / max(1e-9, intercept + slope * c) - 1.0) for c, s in samples)
    return intercept, slope * 1000.0, _quantile(misses, q), line


@dataclass(slots=True)
class SentencePlan:
    """One sentence's TTS arrivals, and when its playback may start.

    ``chars`` is the text length (predicts the sentence's audio length); ``margin`` the
    safety margin in seconds (``PLAYOUT_SAFETY_MS``).
    """

    chars: int
    delivery: Delivery
    margin: float
    first_at: float | None = None
    last_at: float = 0.0
    received: float = 0.0  # seconds of audio received
    first_chunk: float = 0.0
    # Later chunks known not to be the sentence's last (the last is cut short by the end of
    # the text, so it says nothing about the provider's frame size).
    full_frames: list[float] = field(default_factory=list)
    chunks: int = 0
    ended: bool = False
    _after_first: float = 0.0
    _last_later: float = 0.0

    def arrived(self, seconds: float, now: float) -> None:
        """A chunk of ``seconds`` of audio arrived at ``now``."""
        if self.first_at is None:
            self.first_at = now
            self.first_chunk = seconds
        else:
            self._after_first += seconds
            if self._last_later > 0.0:
                self.full_frames.append(self._last_later)
            self._last_later = seconds
        self.last_at = now
        self.received += seconds
        self.chunks += 1

    @property
    def rate(self) -> float | None:
        """Observed delivery rate after the first chunk (None with fewer than 2 chunks)."""
        if self.first_at is None or self.chunks < 2:
            return None
        elapsed = self.last_at - self.first_at
        if elapsed <= 0.0:
            return None
        return self._after_first / elapsed

    def required_start(self) -> float:
        """Earliest playback start (monotonic seconds) keeping every predicted later chunk
        ahead of playback; ``-inf`` when nothing more is expected.

        The model (``DeliveryModel``): after the latest arrival, the rest of the sentence
        (predicted length minus what arrived) comes in chunks of ``frame`` seconds at
        ``rate``: chunk ``j`` lands at ``last_at + Q_j / rate`` (``Q_j``: audio in chunks
        1..j) and is needed once ``received + Q_(j-1)`` seconds have played. Playback must
        start no earlier than the latest of (landing - needed) over the chunks, plus margin.
        """
        if self.first_at is None:
            return float("inf")
        if self.ended:
            return float("-inf")
        d = self.delivery
        remaining = d.seconds(self.chars) - self.received
        worst = float("-inf")
        planned = 0.0
        for _ in range(_MAX_PLANNED_FRAMES):
            if remaining <= 0.02:
                break
            size = min(d.frame, remaining)
            lands = self.last_at + (planned + size) / d.rate
            worst = max(worst, lands - (self.received + planned))
            planned += size
            remaining -= size
        if worst == float("-inf"):
            return worst
        return worst + self.margin


class PlayoutClock:
    """Sender-side model of the carrier's playback (real time from when audio reaches it).

    ``end`` is when everything sent so far will have played out. One per call; reset on a
    barge-in clear (the carrier dropped its buffer).
    """

    __slots__ = ("end",)

    def __init__(self) -> None:
        self.end = 0.0

    def ahead(self, now: float) -> float:
        """Seconds of audio queued ahead of playback at ``now``."""
        return self.end - now if self.end > now else 0.0

    def sent(self, seconds: float, now: float) -> float:
        """Account audio sent at ``now``; return the silence (s) the caller heard before it."""
        gap = now - self.end if now > self.end else 0.0
        self.end = (now if now > self.end else self.end) + seconds
        return gap

    def reset(self, now: float) -> None:
        self.end = now


@dataclass(slots=True)
class HoldResult:
    """How long :func:`scheduled` held a sentence's start (seconds), for records."""

    held: float = 0.0


def _ended(plan: SentencePlan, learn: Callable[[SentencePlan], None] | None) -> None:
    plan.ended = True
    if learn is not None:
        learn(plan)


async def scheduled(
    chunks: AsyncIterator[TtsChunk],
    plan: SentencePlan,
    clock: PlayoutClock,
    seconds_of: Callable[[TtsChunk], float],
    now: Callable[[], float],
    result: HoldResult | None = None,
    learn: Callable[[SentencePlan], None] | None = None,
) -> AsyncIterator[TtsChunk]:
    """Yield ``chunks`` in order, holding the first ones until playback may start.

    Every arrival is recorded in ``plan``; when the stream ends normally, ``learn(plan)``
    (e.g. :meth:`DeliveryModel.observe`) is called at once, before the audio has played
    and even if the reply is then interrupted, so the model learns as early as it can.
    Before the first chunk is released, the stream is held while ``plan.required_start()``
    is later than both ``now`` and the end of what is already playing (``clock.end``: the
    previous sentence covers the wait), or until the stream ends. A new arrival during the
    hold re-plans at once. ``result.held`` gets the
    hold time. Closing the generator closes ``chunks``.
    """
    async with contextlib.aclosing(chunks) as source:  # type: ignore[type-var]
        iterator = source.__aiter__()
        pending: list[TtsChunk] = []
        following: asyncio.Future[TtsChunk] | None = None
        started = now()
        try:
            while True:
                if pending:
                    t = now()
                    start = plan.required_start()
                    wait = start - t if start > clock.end else 0.0
                    if wait <= 0.0:
                        break
                    following = asyncio.ensure_future(anext(iterator))
                    done, _ = await asyncio.wait({following}, timeout=wait)
                    if not done:
                        break  # waited long enough: go, and keep the request running
                    nxt = following
                    following = None
                    try:
                        chunk = nxt.result()
                    except StopAsyncIteration:
                        _ended(plan, learn)
                        break
                else:
                    try:
                        chunk = await anext(iterator)
                    except StopAsyncIteration:
                        _ended(plan, learn)
                        return
                plan.arrived(seconds_of(chunk), now())
                pending.append(chunk)
            if result is not None:
                result.held = max(0.0, now() - (plan.first_at or started))
            for chunk in pending:
                yield chunk
            pending.clear()
            if plan.ended:
                return
            if following is not None:
                waiting: asyncio.Future[TtsChunk] = following
                following = None
                try:
                    chunk = await waiting
                except StopAsyncIteration:
                    _ended(plan, learn)
                    return
                plan.arrived(seconds_of(chunk), now())
                yield chunk
            while True:
                try:
                    chunk = await anext(iterator)
                except StopAsyncIteration:
                    _ended(plan, learn)
                    return
                plan.arrived(seconds_of(chunk), now())
                yield chunk
        finally:
            if following is not None and not following.done():
                following.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await following


class Prefetched(Generic[T]):
    """``stream`` read in its own task into a buffer of at most ``limit`` items.

    ``started`` is set at the first item (or when the stream ended or failed). Iterate
    :meth:`items` once: the buffered items, then the rest as they come; the stream's error
    is raised there. :meth:`aclose` cancels the reader and waits for it, which closes the
    stream (a TTS stream then drops its socket: it has unread audio). Always call it.
    """

    def __init__(self, stream: AsyncIterator[T], limit: int = PREFETCH_CHUNKS) -> None:
        self.started = asyncio.Event()
        self.finished = asyncio.Event()  # the stream ended, failed or was closed
        self.completed = False  # ... and it ended normally (all of it was read)
        self._buffer: asyncio.Queue[tuple[T] | None] = asyncio.Queue(limit)  # None: the end
        self._error: BaseException | None = None
        self._task = asyncio.get_running_loop().create_task(self._read(stream))

    async def _read(self, stream: AsyncIterator[T]) -> None:
        try:
            async with contextlib.aclosing(stream):  # type: ignore[type-var]
                async for item in stream:
                    self.started.set()
                    await self._buffer.put((item,))
            self.completed = True
        except Exception as exc:  # handed to the consumer, which decides
            self._error = exc
        finally:
            self.started.set()
            self.finished.set()
        await self._buffer.put(None)

    async def items(self) -> AsyncIterator[T]:
        while (item := await self._buffer.get()) is not None:
            yield item[0]
        if self._error is not None:
            raise self._error

    async def aclose(self) -> None:
        if not self._task.done():
            self._task.cancel()
        await asyncio.wait({self._task})


async def queued_after(
    first: Prefetched[T], stream: AsyncGenerator[T, None]
) -> AsyncGenerator[T, None]:
    """``stream``, started only once ``first`` has been read to its normal end (nothing if
    it failed or was closed): a lead split's rest queued on the lead's socket asks for its
    audio when that socket is free, never before the lead (which a failed lead's retry
    would otherwise find taken, and wait behind)."""
    async with contextlib.aclosing(stream):
        await first.finished.wait()
        if not first.completed:
            return
        async for item in stream:
            yield item


def lead_split(
    text: str, delivery: Delivery, margin: float = 0.0, *, queued: float | None = None
) -> tuple[str, str] | None:
    """``text`` cut into a lead and the rest, the lead long enough (predicted, short end) for
    the rest's second frame to land before the lead and the rest's first frame have played;
    at least ``LEAD_SECONDS`` (on the predicted line); cut at a clause end within reach if
    there is one, else at the first word boundary. None when there is no such boundary
    before ``LEAD_MAX_SECONDS`` or the rest would be shorter than ``REST_SECONDS``.

    The rest is synthesised at the same time as the lead (on a second socket), or with
    ``queued`` (seconds from a request to its first audio) after it on the same socket: its
    request then goes out once the lead's stream has ended, so the lead must also cover the
    lead's own delivery and that wait: ``L (1 - 1/rate) >= queued + max((frame - first) /
    rate - first, -first / rate) + margin`` (first frames at their small end), longer at slow
    rates, impossible at or below real time.
    """
    text = " ".join(text.split())  # one space between words: the lead is what was counted
    if delivery.ms_per_char <= 0.0 or delivery.rate <= 0.0:
        return None
    rate, first = delivery.rate, delivery.first
    if queued is None:
        cover = delivery.frame / rate - first + margin
    elif rate <= 1.0:
        return None
    else:
        # The rest's second frame lands before the lead and the rest's first frame have
        # played, and its first frame before the lead has (binding only for small frames).
        needed = max((delivery.frame - first) / rate - first, -first / rate)
        cover = (queued + needed + margin) / (1.0 - 1.0 / rate)
    # LEAD_SECONDS on the line; the rest's second frame covered even at the short end of the
    # predicted length; at most LEAD_MAX_SECONDS on the line.
    shortest = max(
        1,
        math.ceil(delivery.chars_for(LEAD_SECONDS, end=0.0)),
        math.ceil(delivery.chars_for(cover, end=-1.0)),
    )
    longest = int(delivery.chars_for(LEAD_MAX_SECONDS, end=0.0))
    cut = -1
    for i in range(shortest, min(len(text), longest + 1)):
        if text[i].isspace():
            if cut < 0:
                cut = i
            if text[i - 1] in _CLAUSE_ENDS:
                cut = i
                break
    if cut < 0:
        return None
    lead, rest = text[:cut].rstrip(), text[cut:].strip()
    if not lead or delivery.seconds(len(rest), end=0.0) < REST_SECONDS:
        return None
    return lead, rest


@dataclass(slots=True)
class Synthesis:
    """One sentence's TTS on its way: the text, when it was asked for, its audio (read ahead
    into a buffer), and with adaptive playout its plan and hold. With a lead split, this is
    the lead's audio (``text`` is still the whole sentence's) and ``rest`` the rest's, played
    right after it under the same sentence mark."""

    text: str
    started: float
    audio: Prefetched[TtsChunk]
    plan: SentencePlan | None = None
    hold: HoldResult = field(default_factory=HoldResult)
    rest: Synthesis | None = None
    keep: bool = False  # a prompt: store its audio in the prompt cache once all sent

    def parts(self) -> list[Synthesis]:
        """This synthesis and its rest, in playing order."""
        return [self] if self.rest is None else [self, *self.rest.parts()]

    async def items(self) -> AsyncIterator[TtsChunk]:
        """The sentence's audio: each part's, in order (iterate once)."""
        for part in self.parts():
            stream = part.audio.items()
            async with contextlib.aclosing(stream):  # type: ignore[type-var]
                async for chunk in stream:
                    yield chunk
