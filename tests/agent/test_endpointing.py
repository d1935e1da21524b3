"""Endpointer: exact frame-level behaviour on VAD flag patterns, then real VAD on audio."""

from __future__ import annotations

import pytest

from gateway.agent.endpointing import (
    Endpointer,
    EndpointEvent,
    SpeechStarted,
    SustainedSpeech,
    UtteranceDiscarded,
    UtteranceEnded,
)
from gateway.agent.vad import Vad
from tests.agent.audio import espeak, frames, noise, silence, voiced

FRAME = 320  # 20 ms at 8 kHz


def marked(i: int) -> bytes:
    """A frame whose bytes say which frame it is, so pcm contents can be checked exactly."""
    return i.to_bytes(4, "little") * (FRAME // 4)


def index_of(frame: bytes) -> int:
    return int.from_bytes(frame[:4], "little")


def run(pattern: str, ep: Endpointer | None = None) -> list[tuple[int, EndpointEvent]]:
    """Push one frame per character ('1' voiced, '0' not); return (frame index, event)."""
    ep = ep or Endpointer()
    out: list[tuple[int, EndpointEvent]] = []
    for i, ch in enumerate(pattern.replace(" ", "")):
        for event in ep.push(marked(i), ch == "1"):
            out.append((i, event))
    return out


def test_onset_needs_three_of_five_voiced_frames() -> None:
    # One voiced frame, then two, then three in five: only the last starts speech.
    assert run("1" + "0" * 10 + "11" + "0" * 10 + "1011" + "0" * 5)[0][0] == 26
    # Voiced frames never closer than 3 in 5 never start speech.
    assert run("10001000100010001" + "01001" * 10 + "0" * 10) == []
    (i, event), *_ = run("0000" + "10101" + "0" * 40)
    assert i == 8 and event == SpeechStarted(at_ms=180, onset_ms=80)


def test_utterance_ends_after_trailing_silence_with_pre_and_post_roll() -> None:
    pattern = "0" * 30 + "1" * 20 + "0" * 30 + "0" * 10
    events = run(pattern)
    kinds = [type(e) for _, e in events]
    assert kinds == [SpeechStarted, SustainedSpeech, UtteranceEnded]
    i, end = events[-1]
    assert isinstance(end, UtteranceEnded)
    assert i == 49 + 30  # 600 ms = 30 unvoiced frames after the last voiced frame (49)
    assert end.speech_ms == 20 * 20
    assert end.trailing_silence_ms == 600
    assert end.speech_end_ms == 50 * 20 and end.at_ms == 80 * 20
    assert not end.forced
    got = [index_of(end.pcm[k : k + FRAME]) for k in range(0, len(end.pcm), FRAME)]
    # Onset decided at frame 32: the ring held the 10 pre-roll + 5 onset frames 18..32,
    # then speech 33..49, then 200 ms (10 frames) of the trailing silence.
    assert got == list(range(18, 60))


def test_sustained_speech_fires_once_and_only_after_barge_in_min() -> None:
    events = run("0" * 5 + "1" * 60 + "0" * 40)
    sustained = [(i, e) for i, e in events if isinstance(e, SustainedSpeech)]
    assert len(sustained) == 1
    i, event = sustained[0]
    assert event.onset_ms == 100
    assert i == 5 + 15 - 1  # 300 ms after onset = 15 frames
    assert event.at_ms == (i + 1) * 20


def test_short_backchannel_does_not_barge_in() -> None:
    # 280 ms of voiced audio ("mm"): an utterance, but not a barge-in.
    events = run("0" * 5 + "1" * 14 + "0" * 40)
    assert [type(e) for _, e in events] == [SpeechStarted, UtteranceEnded]
    # 300 ms is.
    events = run("0" * 5 + "1" * 15 + "0" * 40)
    assert [type(e) for _, e in events] == [SpeechStarted, SustainedSpeech, UtteranceEnded]


def test_mostly_voiced_speech_with_gaps_still_barges_in() -> None:
    # 4 voiced, 1 unvoiced, repeated: 80 % voiced.
    events = run("0" * 5 + "11110" * 8 + "0" * 40)
    assert SustainedSpeech in [type(e) for _, e in events]
    # 60 % voiced is not "mostly".
    events = run("0" * 5 + "11100" * 8 + "0" * 40)
    assert SustainedSpeech not in [type(e) for _, e in events]


def test_too_short_speech_is_discarded_as_noise() -> None:
    events = run("0" * 5 + "1" * 6 + "0" * 40)  # 120 ms < 200 ms minimum
    assert [type(e) for _, e in events] == [SpeechStarted, UtteranceDiscarded]
    # Dropped after 200 ms (the minimum) of silence, not the full 600 ms.
    assert events[-1][1] == UtteranceDiscarded(at_ms=(10 + 10 + 1) * 20, speech_ms=120)


def test_speech_right_after_a_noise_blip_is_its_own_utterance() -> None:
    events = run("1111" + "0" * 12 + "1" * 30 + "0" * 40)
    assert [type(e) for _, e in events] == [
        SpeechStarted,
        UtteranceDiscarded,
        SpeechStarted,
        SustainedSpeech,
        UtteranceEnded,
    ]
    end = events[-1][1]
    assert isinstance(end, UtteranceEnded) and end.speech_ms == 600


def test_max_utterance_forces_an_end_and_speech_continues_in_a_new_one() -> None:
    ep = Endpointer(max_utterance_ms=1000, pre_roll_ms=0)
    events = run("0" * 5 + "1" * 80 + "0" * 40, ep)
    ends = [e for _, e in events if isinstance(e, UtteranceEnded)]
    assert len(ends) == 2
    assert ends[0].forced and ends[0].trailing_silence_ms == 0
    assert not ends[1].forced
    # No audio is lost or repeated between the two parts.
    idx = [index_of(e.pcm[k : k + FRAME]) for e in ends for k in range(0, len(e.pcm), FRAME)]
    assert idx == sorted(set(idx))
    assert set(range(5, 85)) <= set(idx)


def test_finish_closes_an_utterance_in_progress() -> None:
    ep = Endpointer()
    run("0" * 5 + "1" * 20, ep)
    assert ep.in_speech
    (end,) = ep.finish()
    assert isinstance(end, UtteranceEnded) and end.forced
    assert ep.finish() == []


def test_reset_forgets_the_utterance() -> None:
    ep = Endpointer()
    run("0" * 5 + "1" * 20, ep)
    ep.reset()
    assert not ep.in_speech
    assert [type(e) for _, e in run("0" * 40, ep)] == []


def test_bad_configuration_is_rejected() -> None:
    with pytest.raises(ValueError):
        Endpointer(onset_frames=3, onset_voiced=4)
    with pytest.raises(ValueError):
        Endpointer(barge_in_ratio=0)


# ------------------------------------------------------------------ with a real VAD


def detect(pcm: bytes, ep: Endpointer | None = None) -> list[EndpointEvent]:
    vad = Vad(aggressiveness=2)
    ep = ep or Endpointer()
    out: list[EndpointEvent] = []
    for frame in frames(pcm):
        out += ep.push(frame, vad.is_speech(frame))
    return out + ep.finish()


def test_voiced_burst_in_silence_and_noise_is_one_utterance() -> None:
    # 0.5 s quiet line noise, 1.2 s of voice, 1 s of quiet noise.
    pcm = noise(0.5, rms=30) + voiced(1.2) + noise(1.0, rms=30, seed=2)
    events = detect(pcm)
    # WebRTC's VAD adapts to the line during its first frames and may call a few of them
    # speech: such blips are too short to be an utterance and come out as discarded noise.
    while isinstance(events[0], SpeechStarted) and isinstance(events[1], UtteranceDiscarded):
        assert events[1].at_ms < 480
        events = events[2:]
    assert [type(e) for e in events] == [SpeechStarted, SustainedSpeech, UtteranceEnded]
    start, sustained, end = events
    assert isinstance(start, SpeechStarted) and isinstance(end, UtteranceEnded)
    assert 480 <= start.onset_ms <= 560
    assert isinstance(sustained, SustainedSpeech) and sustained.at_ms - start.onset_ms >= 300
    # WebRTC's VAD holds "speech" for a few frames after the sound stops (hangover).
    assert 1200 <= end.speech_ms <= 1400
    assert end.trailing_silence_ms == 600
    # pre-roll + speech + post-roll, each at least what was asked for.
    assert len(end.pcm) >= (200 + 1200 + 200) * 16


def test_cough_is_discarded_and_never_barges_in() -> None:
    events = detect(silence(0.5) + voiced(0.1) + silence(1.0))
    assert SustainedSpeech not in [type(e) for e in events]
    assert [type(e) for e in events][-1] is UtteranceDiscarded


def test_real_synthesized_utterance() -> None:
    # A real voice when espeak-ng is installed; otherwise two voiced "words" with a short
    # (200 ms) pause, which must not split the utterance.
    speech = espeak("مرحبا، أريد أن أحجز موعدا مع الطبيب غدا صباحا")
    if speech is None:
        speech = voiced(0.6, f0=180) + silence(0.2) + voiced(0.8, f0=120)
    events = detect(silence(0.5) + speech + silence(1.0))
    ends = [e for e in events if isinstance(e, UtteranceEnded)]
    assert len(ends) == 1
    duration_ms = len(speech) // 16
    assert duration_ms * 0.6 <= ends[0].speech_ms <= duration_ms + 200
    assert any(isinstance(e, SustainedSpeech) for e in events)
