"""load_audio: WAV without ffmpeg (any rate/width/channels -> mono PCM16), clear errors."""

import shutil
import struct
import subprocess
import wave
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from telecodecs.audiofile import AudioFileError, load_audio
from telecodecs.g711 import pcm16_to_ulaw
from telecodecs.wav import build_wav

TIMEOUT = 5.0  # seconds, for the ffmpeg subprocess when ffmpeg is installed


def tone(freq: float, rate: int, seconds: float, amplitude: float) -> npt.NDArray[np.int16]:
    t = np.arange(round(rate * seconds)) / rate
    return np.round(amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def rms(x: npt.NDArray[np.int16]) -> float:
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))


def peak_frequency(x: npt.NDArray[np.int16], rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x.astype(np.float64) * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[int(np.argmax(spectrum))])


def write_wav(path: Path, frames: bytes, rate: int, channels: int, width: int) -> None:
    with wave.open(str(path), "wb") as writer:
        writer.setnchannels(channels)
        writer.setsampwidth(width)
        writer.setframerate(rate)
        writer.writeframes(frames)


def test_stereo_44k1_wav_loads_as_mono_16k(tmp_path: Path) -> None:
    # Left: 440 Hz at 8000; right: silence. Mono is the channel average: 440 Hz at 4000.
    left = tone(440, 44100, 0.5, 8000)
    stereo = np.column_stack([left, np.zeros_like(left)]).astype(np.int16)
    path = tmp_path / "greeting.wav"
    write_wav(path, stereo.tobytes(), 44100, 2, 2)
    pcm = load_audio(path, sample_rate=16000)
    y = np.frombuffer(pcm, dtype=np.int16)
    assert len(y) == 8000  # 0.5 s at 16 kHz
    assert peak_frequency(y, 16000) == pytest.approx(440, abs=5)
    steady = y[800:-800]
    assert rms(steady) == pytest.approx(4000 / np.sqrt(2), rel=0.02)


def test_wav_at_target_rate_is_returned_unchanged(tmp_path: Path) -> None:
    pcm = tone(1000, 8000, 0.1, 5000).tobytes()
    path = tmp_path / "a.wav"
    path.write_bytes(build_wav(pcm, 8000))
    assert load_audio(str(path), sample_rate=8000) == pcm


def test_8bit_unsigned_wav(tmp_path: Path) -> None:
    # 8-bit WAV is unsigned: 128 is silence, 255 is near full positive scale.
    path = tmp_path / "u8.wav"
    write_wav(path, bytes([128, 255, 0, 128]), 8000, 1, 1)
    assert struct.unpack("<4h", load_audio(path, 8000)) == (0, 127 << 8, -128 << 8, 0)


def test_mulaw_wav_is_decoded(tmp_path: Path) -> None:
    pcm = tone(500, 8000, 0.1, 10000).tobytes()
    fmt = struct.pack("<HHIIHH", 7, 1, 8000, 8000, 1, 8)
    ulaw = pcm16_to_ulaw(pcm)
    body = b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt + b"data"
    body += struct.pack("<I", len(ulaw)) + ulaw
    path = tmp_path / "ulaw.wav"
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    y = np.frombuffer(load_audio(path, 8000), dtype=np.int16)
    x = np.frombuffer(pcm, dtype=np.int16)
    assert len(y) == len(x)
    assert int(np.max(np.abs(y.astype(np.int32) - x))) <= 512  # μ-law quantisation


def test_non_wav_needs_ffmpeg(tmp_path: Path) -> None:
    # Whichever branch applies on this machine is tested; neither is skipped.
    path = tmp_path / "hold.mp3"
    if shutil.which("ffmpeg") is None and shutil.which("avconv") is None:
        path.write_bytes(b"ID3\x04\x00\x00\x00\x00\x00\x00" + b"\xff\xfb" * 64)
        with pytest.raises(AudioFileError, match=r"install ffmpeg to read \.mp3 files"):
            load_audio(path)
    else:
        ffmpeg = shutil.which("ffmpeg") or "ffmpeg"
        subprocess.run(
            [
                ffmpeg,
                "-nostdin",
                "-loglevel",
                "error",
                "-f",
                "lavfi",
                "-i",
                "sine=frequency=440:sample_rate=22050:duration=1",
                str(path),
            ],
            check=True,
            timeout=TIMEOUT,
        )
        y = np.frombuffer(load_audio(path), dtype=np.int16)
        assert abs(len(y) - 16000) < 1600  # mp3 encoders add padding
        assert peak_frequency(y, 16000) == pytest.approx(440, abs=5)


@pytest.mark.parametrize(
    ("contents", "message"),
    [
        (None, "cannot read"),
        (b"RIFF\x10\x00\x00\x00WAVEfmt \x02\x00\x00\x00\x01\x00", "fmt chunk too short"),
        (build_wav(b"\x00\x00" * 10, 11025), "unsupported in_rate 11025"),
    ],
)
def test_errors_are_audio_file_errors(tmp_path: Path, contents: bytes | None, message: str) -> None:
    path = tmp_path / "bad.wav"
    if contents is not None:
        path.write_bytes(contents)
    with pytest.raises(AudioFileError, match=message):
        load_audio(path)
