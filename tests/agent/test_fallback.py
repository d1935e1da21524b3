"""The fallback clip: a custom AGENT_FALLBACK_TEXT rendered through TTS (issue 10 item 2)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway.agent.fallback import (
    CLIP_RATE,
    SHIPPED_TEXT,
    FallbackClip,
    fallback_clip,
    keep_rendering,
    render,
)
from gateway.audio_format import PCM16_16K, ULAW_8K
from gateway.speech.hamsa.errors import HamsaError
from gateway.speech.hamsa.protocol import ErrorKind
from gateway.speech.hamsa.session import TtsChunk

CUSTOM = "نعتذر، الخدمة غير متاحة الآن"


def speaker(*outcomes: list[bytes] | HamsaError) -> tuple[list[str], object]:
    """A fake ``HamsaSession.tts``: each call plays the next outcome (chunks or an error)."""
    asked: list[str] = []
    queue = list(outcomes)

    async def tts(text: str) -> AsyncIterator[TtsChunk]:
        asked.append(text)
        outcome = queue.pop(0)
        if isinstance(outcome, HamsaError):
            raise outcome
        for audio in outcome:
            yield TtsChunk(audio, PCM16_16K)

    return asked, tts


def test_a_new_clip_is_the_shipped_one() -> None:
    clip = FallbackClip()
    assert clip.audio.pcm == fallback_clip() and clip.audio.rate == CLIP_RATE
    assert clip.audio.text == SHIPPED_TEXT and not clip.rendered


async def test_render_joins_every_chunk_at_the_tts_rate() -> None:
    _, tts = speaker([b"\x01\x00" * 100, b"\x02\x00" * 50])
    audio = await render(tts, CUSTOM)  # type: ignore[arg-type]
    assert audio.pcm == b"\x01\x00" * 100 + b"\x02\x00" * 50
    assert audio.rate == 16000 and audio.text == CUSTOM


async def test_render_refuses_no_audio_and_mulaw() -> None:
    _, tts = speaker([])
    with pytest.raises(ValueError, match="no audio"):
        await render(tts, CUSTOM)  # type: ignore[arg-type]

    async def mulaw(text: str) -> AsyncIterator[TtsChunk]:
        yield TtsChunk(b"\xff" * 160, ULAW_8K)

    with pytest.raises(ValueError, match="PCM16"):
        await render(mulaw, CUSTOM)


async def test_keep_rendering_retries_with_backoff_and_keeps_the_shipped_clip_meanwhile() -> None:
    down = HamsaError("connect refused", ErrorKind.CONNECT)
    asked, tts = speaker(down, down, [], [b"\x05\x00" * 400])
    clip = FallbackClip()
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        assert not clip.rendered  # the shipped clip is in use while Hamsa fails
        slept.append(seconds)

    await keep_rendering(clip, tts, CUSTOM, sleep=sleep)  # type: ignore[arg-type]
    assert asked == [CUSTOM] * 4
    assert slept == [5.0, 10.0, 20.0]
    assert clip.rendered and clip.audio.pcm == b"\x05\x00" * 400 and clip.audio.text == CUSTOM
