"""The fallback clip: an apology the gateway can play without the speech service.

When Hamsa TTS fails, the fallback *phrase* (``AGENT_FALLBACK_TEXT``) cannot be synthesized
by it either: before issue 10 item 2 a caller whose turn failed heard nothing at all. The
clip is played instead, and before the gateway hangs up a call that has had no speech
service for ``SPEECH_OUTAGE_HANGUP_SECONDS``.

Why a clip shipped in the package rather than one rendered at start-up through Hamsa: the
clip is needed exactly when Hamsa is down, and that includes start-up (a gateway restarted
during an outage would have nothing to play); rendering would also cost a TTS request per
process and a start-up dependency on a healthy Hamsa. The clip is the default
``AGENT_FALLBACK_TEXT`` ("عذرا، حدث خطأ. هل يمكنك الإعادة؟") spoken by espeak-ng's Arabic
voice, 8 kHz PCM16 mono (telephone band, 65 KB), made with::

    espeak-ng -v ar -s 160 -w fb.wav "عذرا، حدث خطأ. هل يمكنك الإعادة؟"

then resampled to 8 kHz and trimmed of silence (``telecodecs.audiofile.load_audio``).

A custom ``AGENT_FALLBACK_TEXT`` is rendered once through Hamsa, in the background, as soon
as the speech service answers (:func:`keep_rendering`, retried with backoff); from then on
:class:`FallbackClip` holds it. Until then (and for a gateway started during an outage) the
shipped clip plays: a generic apology beats silence when nothing can speak the custom text.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Final

from gateway.audio_format import Encoding
from gateway.speech.hamsa.errors import HamsaError
from gateway.speech.hamsa.session import TtsChunk
from telecodecs.wav import WAVE_FORMAT_PCM, parse_wav

log = logging.getLogger(__name__)

CLIP_RESOURCE: Final = "assets/fallback_ar.wav"
CLIP_RATE: Final = 8000
SHIPPED_TEXT: Final = "عذرا، حدث خطأ. هل يمكنك الإعادة؟"  # what the shipped clip says
RENDER_RETRY_FIRST: Final = 5.0  # s before the first retry of a failed rendering (doubles)
RENDER_RETRY_MAX: Final = 120.0


@functools.cache
def fallback_clip() -> bytes:
    """The clip as PCM16 LE mono at :data:`CLIP_RATE` (read once per process).

    Raises ``ValueError`` if the packaged file is not 8 kHz mono PCM16 (a packaging bug,
    caught by the tests).
    """
    data = resources.files("gateway.agent").joinpath(CLIP_RESOURCE).read_bytes()
    wav = parse_wav(data)
    shape = (wav.format_tag, wav.sample_rate, wav.channels, wav.sample_width)
    if shape != (WAVE_FORMAT_PCM, CLIP_RATE, 1, 2):
        raise ValueError(f"{CLIP_RESOURCE} must be {CLIP_RATE} Hz mono PCM16, got {shape}")
    return wav.audio


@dataclass(frozen=True, slots=True)
class FallbackAudio:
    """An apology as PCM16 LE mono at ``rate`` Hz, and the text it says."""

    pcm: bytes
    rate: int
    text: str


class FallbackClip:
    """The clip a call plays when TTS fails: the shipped one until a rendering replaces it.

    One per process, shared by every call (read at play time, so calls already running
    pick up a rendering that finishes later).
    """

    def __init__(self) -> None:
        self.audio = FallbackAudio(fallback_clip(), CLIP_RATE, SHIPPED_TEXT)

    @property
    def rendered(self) -> bool:
        return self.audio.text != SHIPPED_TEXT


async def render(speak: Callable[[str], AsyncIterator[TtsChunk]], text: str) -> FallbackAudio:
    """Synthesize ``text`` in full with ``speak`` (a Hamsa session's ``tts``) as PCM16.

    Raises :class:`HamsaError` if synthesis fails, ``ValueError`` if it yields no audio or
    not PCM16 (ask ``speak`` for linear audio).
    """
    parts: list[bytes] = []
    rate = 0
    async for chunk in speak(text):
        if chunk.format.encoding is not Encoding.PCM16:
            raise ValueError(f"fallback rendering needs PCM16 audio, got {chunk.format}")
        rate = chunk.format.sample_rate
        parts.append(chunk.audio)
    pcm = b"".join(parts)
    if not pcm:
        raise ValueError("the TTS returned no audio for the fallback text")
    return FallbackAudio(pcm, rate, text)


async def keep_rendering(
    clip: FallbackClip,
    speak: Callable[[str], AsyncIterator[TtsChunk]],
    text: str,
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Render ``text`` into ``clip``, retrying with capped backoff until it succeeds.

    Runs as one background task per process (cancel it at shutdown). Each failure is
    logged once per attempt at WARNING with the reason; the shipped clip stays in use.
    """
    delay = RENDER_RETRY_FIRST
    while True:
        try:
            clip.audio = await render(speak, text)
        except (HamsaError, ValueError) as exc:
            log.warning("fallback text not rendered yet (%s); retrying in %.0f s", exc, delay)
            await sleep(delay)
            delay = min(delay * 2.0, RENDER_RETRY_MAX)
            continue
        seconds = len(clip.audio.pcm) / 2 / clip.audio.rate
        log.info("AGENT_FALLBACK_TEXT rendered for speech outages (%.1f s of audio)", seconds)
        return
