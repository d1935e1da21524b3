"""Vad: WebRTC's VAD really calls the test "speech" speech, and silence silence."""

from __future__ import annotations

import pytest

from gateway.agent.vad import Vad
from tests.agent.audio import espeak, frames, noise, silence, voiced


def speech_ratio(vad: Vad, pcm: bytes, rate: int = 8000) -> float:
    flags = [vad.is_speech(f) for f in frames(pcm, rate)]
    return sum(flags) / len(flags)


@pytest.mark.parametrize("rate", [8000, 16000])
@pytest.mark.parametrize("aggressiveness", [0, 2, 3])
def test_voiced_signal_is_speech_and_silence_is_not(rate: int, aggressiveness: int) -> None:
    vad = Vad(aggressiveness, rate)
    assert speech_ratio(vad, voiced(1.0, rate=rate), rate) >= 0.95
    vad = Vad(aggressiveness, rate)
    assert speech_ratio(vad, silence(1.0, rate), rate) == 0.0


def test_quiet_line_noise_is_mostly_not_speech() -> None:
    # The VAD needs a few frames to adapt to a new noise floor; after that, quiet noise
    # is not speech.
    vad = Vad(2)
    assert speech_ratio(vad, noise(0.2, rms=100)) <= 0.5
    assert speech_ratio(vad, noise(2.0, rms=100, seed=3)) <= 0.02


def test_real_voice_is_speech_when_espeak_is_installed() -> None:
    # Without espeak-ng the synthetic voice stands in (it is speech for the VAD too).
    pcm = espeak("مرحبا، كيف يمكنني مساعدتك اليوم؟") or voiced(1.5, f0=200)
    assert speech_ratio(Vad(2), pcm) >= 0.6  # real speech has pauses between words


def test_frames_of_the_wrong_size_are_not_speech_and_are_counted() -> None:
    vad = Vad(2)
    speech = voiced(0.2)
    assert vad.is_speech(speech[:320])  # 20 ms
    assert vad.is_speech(speech[:160]) in (True, False)  # 10 ms is valid too
    assert vad.is_speech(speech[:300]) is False
    assert vad.is_speech(b"") is False
    assert vad.bad_frames == 2


def test_bad_settings_are_rejected() -> None:
    with pytest.raises(ValueError):
        Vad(4)
    with pytest.raises(ValueError):
        Vad(2, 11025)
