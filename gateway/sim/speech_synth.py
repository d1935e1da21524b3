"""Speech audio for the Hamsa simulator: espeak-ng when installed, a speech-like signal otherwise.

:class:`SpeechSynth` turns text into PCM16 LE mono 16 kHz (and μ-law 8 kHz) and caches the
result per text, so a simulator serving a hundred calls that repeat the same sentences pays
for each sentence once. Two sources:

* espeak-ng (Debian package ``espeak-ng``, Arabic voice ``ar``), run as an asyncio
  subprocess writing a WAV to stdout (22050 Hz), resampled to 16 kHz with telecodecs;
* otherwise (or when espeak-ng fails) a deterministic speech-like signal: voiced harmonics
  of a wandering pitch, amplitude-modulated at a syllable rate, silent at spaces, about
  ``ms_per_char`` ms per character. Deterministic per text (seeded by CRC32), so tests can
  compare bytes.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import zlib
from collections import OrderedDict

import numpy as np

from telecodecs.g711 import pcm16_to_ulaw
from telecodecs.resample import resample
from telecodecs.wav import WavError, parse_wav

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
MULAW_RATE = 8000
DEFAULT_MS_PER_CHAR = 70.0  # plausible Arabic speaking rate (~14 characters per second)
SYLLABLE_CHARS = 3  # characters per synthetic syllable (~210 ms: 4-5 syllables per second)
ESPEAK_TIMEOUT_S = 10.0


def synthetic_speech(text: str, ms_per_char: float = DEFAULT_MS_PER_CHAR) -> bytes:
    """A deterministic speech-like PCM16 16 kHz signal of ``len(text) * ms_per_char`` ms."""
    chars = max(1, len(text.strip()))
    samples_per_char = max(1, int(SAMPLE_RATE * ms_per_char / 1000))
    n = chars * samples_per_char
    rng = np.random.default_rng(zlib.crc32(text.encode("utf-8")))
    # Pitch wanders between ~110 and ~190 Hz, one target per syllable.
    syllables = max(1, -(-chars // SYLLABLE_CHARS))
    targets = rng.uniform(110.0, 190.0, syllables + 1)
    syl_len = samples_per_char * SYLLABLE_CHARS
    pitch = np.interp(np.arange(n), np.arange(syllables + 1) * syl_len, targets)
    phase = 2 * np.pi * np.cumsum(pitch) / SAMPLE_RATE
    voice = np.zeros(n)
    for harmonic in range(1, 9):
        voice += np.sin(harmonic * phase) / harmonic**1.3
    # Syllable envelope: a raised cosine per syllable; spaces are pauses.
    syl_phase = (np.arange(n) % syl_len) / syl_len
    envelope = np.sin(np.pi * syl_phase) ** 2
    stripped = text.strip() or " "
    is_voiced = np.array([not c.isspace() for c in stripped[:chars]], dtype=np.float64)
    envelope *= np.repeat(is_voiced, samples_per_char)[:n]
    noise = rng.normal(0.0, 0.02, n)  # a little breath
    signal = (voice * 0.25 + noise) * envelope
    pcm = np.clip(signal * 32767 * 0.8, -32768, 32767).astype("<i2")
    return bytes(pcm.tobytes())


class SpeechSynth:
    """Text -> audio with a bounded per-text cache. One instance per simulator.

    ``espeak`` is the espeak-ng executable (default: found on PATH; ``""`` disables it).
    """

    def __init__(
        self,
        espeak: str | None = None,
        ms_per_char: float = DEFAULT_MS_PER_CHAR,
        cache_size: int = 512,
        voice: str = "ar",
    ) -> None:
        self.espeak = shutil.which("espeak-ng") if espeak is None else (espeak or None)
        self._ms_per_char = ms_per_char
        self._voice = voice
        self._cache_size = cache_size
        self._pcm: OrderedDict[str, bytes] = OrderedDict()
        self._mulaw: OrderedDict[str, bytes] = OrderedDict()
        self._pending: dict[str, asyncio.Future[bytes]] = {}
        self.synthesized = 0  # texts actually synthesized (cache misses)

    @property
    def source(self) -> str:
        return "espeak-ng" if self.espeak else "synthetic"

    async def pcm16k(self, text: str) -> bytes:
        """PCM16 LE mono 16 kHz speech for ``text`` (cached; concurrent misses share work)."""
        cached = self._pcm.get(text)
        if cached is not None:
            self._pcm.move_to_end(text)
            return cached
        pending = self._pending.get(text)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[text] = future
        try:
            pcm = await self._synthesize(text)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters (if any) re-raise it
            raise
        finally:
            del self._pending[text]
        future.set_result(pcm)
        self._remember(self._pcm, text, pcm)
        return pcm

    async def mulaw8k(self, text: str) -> bytes:
        """G.711 μ-law 8 kHz speech for ``text`` (cached)."""
        cached = self._mulaw.get(text)
        if cached is not None:
            self._mulaw.move_to_end(text)
            return cached
        pcm = await self.pcm16k(text)
        ulaw = pcm16_to_ulaw(resample(pcm, SAMPLE_RATE, MULAW_RATE))
        self._remember(self._mulaw, text, ulaw)
        return ulaw

    def _remember(self, cache: OrderedDict[str, bytes], text: str, audio: bytes) -> None:
        cache[text] = audio
        while len(cache) > self._cache_size:
            cache.popitem(last=False)

    async def _synthesize(self, text: str) -> bytes:
        self.synthesized += 1
        if self.espeak:
            pcm = await self._espeak(self.espeak, text)
            if pcm:
                return pcm
        return synthetic_speech(text, self._ms_per_char)

    async def _espeak(self, exe: str, text: str) -> bytes | None:
        try:
            proc = await asyncio.create_subprocess_exec(
                exe,
                "-v",
                self._voice,
                "--stdout",
                text,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
            )
        except OSError as exc:
            log.warning("espeak-ng could not start (%s); using the synthetic voice", exc)
            self.espeak = None
            return None
        try:
            async with asyncio.timeout(ESPEAK_TIMEOUT_S):
                out, _ = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            log.warning("espeak-ng timed out; using the synthetic voice for this text")
            return None
        if proc.returncode != 0 or not out:
            log.warning("espeak-ng failed (exit %s); using the synthetic voice", proc.returncode)
            return None
        try:
            wav = parse_wav(out)
        except WavError as exc:
            log.warning("espeak-ng wrote no usable WAV (%s); using the synthetic voice", exc)
            return None
        audio = wav.audio
        if wav.sample_width != 2:
            return None
        if wav.channels == 2:
            mono = np.frombuffer(audio[: len(audio) // 4 * 4], "<i2").reshape(-1, 2).mean(axis=1)
            audio = mono.astype("<i2").tobytes()
        if wav.sample_rate != SAMPLE_RATE:
            audio = resample(audio, wav.sample_rate, SAMPLE_RATE)
        return audio
