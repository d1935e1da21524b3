"""Prompt cache: the synthesised audio of what the gateway says on every call, kept in memory.

Every call starts with the same greeting (``GREETING_TEXT``, or the agent's reply to
``call.started``, which for most agents is a fixed text) and may hear the same re-prompt.
Synthesising them again for each call costs a TTS request, a warm Hamsa socket and, with
Hamsa's delivery (a small first frame, then big frames at ~2x real time; issue 11), a held
start: in a burst of new calls the greetings were the turns that waited longest. A cached
prompt plays at once, with all its audio in hand (nothing to hold for, no dropout possible).

What is cached is decided by the voice agent: the sentences of greetings and re-prompts,
never replies to what a caller said. A sentence is stored only when its whole stream arrived
and was sent (not cut by a barge-in or a failure), keyed by its text and the audio encoding
asked of Hamsa (speaker and dialect are process settings). Bounded by bytes
(``PROMPT_CACHE_MB``), least recently used first out; one per process, one event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Final

from gateway.agent.fallback import RENDER_RETRY_FIRST, RENDER_RETRY_MAX
from gateway.speech.hamsa.errors import HamsaError
from gateway.speech.hamsa.session import TtsChunk

log = logging.getLogger(__name__)

# A text longer than this is not a prompt (a greeting is a sentence or two); it is not cached.
MAX_PROMPT_CHARS: Final = 400

CacheKey = tuple[str, bool]  # (sentence text, μ-law asked of Hamsa)


class PromptCache:
    """Sentences' TTS audio by (text, μ-law), at most ``max_bytes`` of audio in all.

    ``max_bytes <= 0`` disables it (:meth:`get` misses, :meth:`put` stores nothing).
    ``min_ms_per_char``: audio shorter than this per character of its text is a truncated
    stream (the "640 bytes" failure, hamsa.md §4; ``HAMSA_SHORT_AUDIO_MS_PER_CHAR``), which
    the speech session lets finish once it is already playing: never kept, or every later
    call would hear it cut too.
    """

    def __init__(self, max_bytes: int, min_ms_per_char: float = 0.0) -> None:
        self.max_bytes = max(0, max_bytes)
        self.min_ms_per_char = min_ms_per_char
        self.bytes = 0
        self._entries: OrderedDict[CacheKey, tuple[tuple[TtsChunk, ...], int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def get(self, text: str, mulaw: bool) -> tuple[TtsChunk, ...] | None:
        """The cached audio of ``text`` (most recently used now), or None."""
        key = (text.strip(), mulaw)
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, text: str, mulaw: bool, chunks: Sequence[TtsChunk]) -> bool:
        """Keep ``chunks`` (a whole sentence's audio) for ``text``; evict the least recently
        used entries to make room. False (nothing stored) when the cache is off, the text is
        empty or too long for a prompt, there is no audio or too little for the text, or it
        alone exceeds the bound."""
        text = text.strip()
        size = sum(len(c.audio) for c in chunks)
        if not self.enabled or not text or len(text) > MAX_PROMPT_CHARS or size == 0:
            return False
        audio_ms = sum(len(c.audio) / c.format.bytes_per_ms() for c in chunks)
        if size > self.max_bytes or audio_ms < len(text) * self.min_ms_per_char:
            return False
        key = (text, mulaw)
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
        while self._entries and self.bytes + size > self.max_bytes:
            _, (_, evicted) = self._entries.popitem(last=False)
            self.bytes -= evicted
        self._entries[key] = (tuple(chunks), size)
        self.bytes += size
        return True


async def prerender(
    cache: PromptCache,
    speak: Callable[..., AsyncIterator[TtsChunk]],
    texts: Sequence[str],
    encodings: Sequence[bool],
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Synthesise each of ``texts`` (fixed prompts: ``GREETING_TEXT``, ``REPROMPT_TEXT``) in
    each of ``encodings`` (μ-law or not, as calls will ask) into ``cache``, so even the first
    calls after a start play them at once.

    ``speak`` is a Hamsa session's ``tts``. Runs as one background task per process (cancel
    it at shutdown); a failure is logged at WARNING and retried with capped backoff, and
    until then the calls synthesise the prompt themselves (and fill the cache).
    """
    delay = RENDER_RETRY_FIRST
    pending = [(text.strip(), mulaw) for text in texts if text.strip() for mulaw in encodings]
    while pending:
        text, mulaw = pending[0]
        if cache.get(text, mulaw) is None:
            try:
                chunks = [chunk async for chunk in speak(text, mulaw=mulaw)]
                failure = "" if _settled(cache, text, mulaw, chunks) else "truncated audio"
            except HamsaError as exc:
                failure = str(exc)
            if failure:
                log.warning("prompt not synthesised yet (%s); retrying in %.0f s", failure, delay)
                await sleep(delay)
                delay = min(delay * 2.0, RENDER_RETRY_MAX)
                continue
        pending.pop(0)
    if texts:
        log.info(
            "prompts synthesised in advance: %d in the cache (%d KB)",
            len(cache),
            cache.bytes // 1024,
        )


def _settled(cache: PromptCache, text: str, mulaw: bool, chunks: Sequence[TtsChunk]) -> bool:
    """Put ``chunks`` in ``cache``: True when that is done, or can never be (too big for
    it: calls synthesise the prompt each time); False to ask for it again."""
    if cache.put(text, mulaw, chunks):
        return True
    if len(text) > MAX_PROMPT_CHARS or sum(len(c.audio) for c in chunks) > cache.max_bytes:
        log.warning("prompt of %d characters too big for the cache", len(text))
        return True
    return False  # no audio, or too little for the text: ask again
