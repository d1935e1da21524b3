"""Load an audio file (greeting, hold music, test caller audio) as PCM16 mono at a given rate.

WAV files are read natively (``parse_wav``: PCM 8/16/24/32-bit, μ-law, A-law, any channel
count), so they work without ffmpeg. pydub could read WAV without ffmpeg too
(``AudioSegment.from_file`` has a pure-Python WAV branch), but it resamples with
``audioop.ratecv``, which has no anti-alias filter, and importing it warns when ffmpeg is
absent; so pydub is only used, lazily, for other formats (mp3, ogg, ...), which need ffmpeg.
Resampling always goes through ``telecodecs.resample`` (libsoxr).
"""

import shutil
import warnings
from pathlib import Path

import numpy as np

from telecodecs.constants import PCM16_WIDTH, SAMPLE_RATE_16K
from telecodecs.g711 import alaw_to_pcm16, ulaw_to_pcm16
from telecodecs.resample import resample
from telecodecs.wav import WAVE_FORMAT_ALAW, WAVE_FORMAT_MULAW, WavAudio, WavError, parse_wav

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # stdlib audioop on 3.11/3.12 (PEP 594)
    import audioop

__all__ = ["AudioFileError", "load_audio"]


class AudioFileError(Exception):
    """The file cannot be read or decoded; the message says why and what to do."""


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE_16K) -> bytes:
    """Return the file's audio as PCM16 LE mono at ``sample_rate`` (channels are averaged).

    ``sample_rate`` must be one of ``telecodecs.resample.SUPPORTED_RATES`` (as must the file's
    own rate when it differs). Raises ``AudioFileError`` for an unreadable file, a WAV that
    cannot be parsed, an unsupported rate, or a non-WAV file when ffmpeg is not installed
    ("install ffmpeg to read .mp3 files").
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AudioFileError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        try:
            wav = parse_wav(data)
        except WavError as exc:
            raise AudioFileError(f"{path}: {exc}") from exc
        pcm, rate = _wav_to_mono_pcm16(wav), wav.sample_rate
    else:
        pcm, rate = _decode_with_pydub(path)
    try:
        return resample(pcm, rate, sample_rate)
    except ValueError as exc:
        raise AudioFileError(f"{path}: {exc}") from exc


def _wav_to_mono_pcm16(wav: WavAudio) -> bytes:
    if wav.format_tag == WAVE_FORMAT_MULAW:
        pcm = ulaw_to_pcm16(wav.audio)
    elif wav.format_tag == WAVE_FORMAT_ALAW:
        pcm = alaw_to_pcm16(wav.audio)
    elif wav.sample_width == 1:
        # 8-bit WAV PCM is unsigned (offset 128); audioop's 8-bit samples are signed.
        pcm = audioop.lin2lin(audioop.bias(wav.audio, 1, -128), 1, PCM16_WIDTH)
    elif wav.sample_width in (3, 4):
        pcm = audioop.lin2lin(wav.audio, wav.sample_width, PCM16_WIDTH)
    elif wav.sample_width == PCM16_WIDTH:
        pcm = wav.audio
    else:
        raise AudioFileError(f"unsupported WAV sample width: {wav.sample_width} bytes")
    if wav.channels == 1:
        return pcm
    frames = np.frombuffer(pcm, dtype=np.int16).reshape(-1, wav.channels)
    mono: bytes = np.round(frames.mean(axis=1)).astype(np.int16).tobytes()
    return mono


def _decode_with_pydub(path: Path) -> tuple[bytes, int]:
    suffix = path.suffix.lower() or "(no extension)"
    # pydub shells out to ffmpeg (or its fork avconv) for every non-WAV format.
    if shutil.which("ffmpeg") is None and shutil.which("avconv") is None:
        raise AudioFileError(
            f"install ffmpeg to read {suffix} files ({path}); WAV files need no ffmpeg"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydub warns about ffmpeg/audioop at import time
        try:
            from pydub import AudioSegment
        except ImportError:  # an optional dependency: the `audio` extra
            raise AudioFileError(
                f"install pydub to read {suffix} files ({path}): "
                "pip install 'hamsa-voice-gateway[audio]'; WAV files need neither"
            ) from None
    try:
        segment = AudioSegment.from_file(str(path))
    except Exception as exc:  # pydub raises CouldntDecodeError, OSError, IndexError, ...
        raise AudioFileError(f"ffmpeg could not decode {path}: {exc}") from exc
    segment = segment.set_sample_width(PCM16_WIDTH).set_channels(1)
    raw: bytes = segment.raw_data
    rate: int = segment.frame_rate
    return raw, rate
