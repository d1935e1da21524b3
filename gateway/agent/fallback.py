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

then resampled to 8 kHz and trimmed of silence (``telecodecs.audiofile.load_audio``). With a
custom ``AGENT_FALLBACK_TEXT`` the clip still says the default apology: a generic apology
beats silence when nothing can speak the custom text.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Final

from telecodecs.wav import WAVE_FORMAT_PCM, parse_wav

CLIP_RESOURCE: Final = "assets/fallback_ar.wav"
CLIP_RATE: Final = 8000


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
