"""FramePacer and OutboundAudio, driven by a hand-held clock (no sleeping)."""

from __future__ import annotations

import itertools

import pytest

from gateway.telephony.events import ALAW_8K, PCM16_8K, PCM16_16K, ULAW_8K, MarkPlayed
from gateway.telephony.pacing import FramePacer, OutboundAudio, silence

TIMEOUT = 5.0
T0 = 1000.0


def test_first_frame_due_at_start_then_one_per_period() -> None:
    pacer = FramePacer()
    pacer.start(T0)
    assert pacer.due(T0) == 1
    assert pacer.due(T0) == 0
    assert pacer.next_deadline() == pytest.approx(T0 + 0.020)
    assert pacer.due(T0 + 0.0199) == 0
    assert pacer.due(T0 + 0.020) == 1  # exactly on the deadline counts (float-safe)
    assert pacer.due(T0 + 0.060) == 2


def test_no_drift_over_an_hour_of_jittery_ticks() -> None:
    pacer = FramePacer()
    pacer.start(T0)
    total = 0
    jitter = [0.0, 0.004, -0.003, 0.007, 0.001, -0.002]  # scheduler wake-up noise
    for k in range(180_000):  # one hour of 20 ms ticks
        total += pacer.due(T0 + k * 0.020 + max(0.0, jitter[k % len(jitter)]))
    # Frames owed at the last tick's time: one per period, none lost, none extra.
    assert total in (180_000, 180_001)
    assert pacer.resyncs == 0


def test_late_ticks_catch_up_within_burst_cap() -> None:
    pacer = FramePacer(max_burst=3)
    pacer.start(T0)
    pacer.due(T0)
    assert pacer.due(T0 + 0.045) == 2  # 25 ms late: owed frames 1 and 2
    assert pacer.resyncs == 0
    assert pacer.next_deadline() == pytest.approx(T0 + 0.060)


def test_stall_caps_burst_and_resyncs() -> None:
    pacer = FramePacer(max_burst=3)
    pacer.start(T0)
    pacer.due(T0)
    assert pacer.due(T0 + 0.500) == 3  # 25 frames owed after a 500 ms stall: cap at 3
    assert pacer.resyncs == 1 and pacer.skipped_frames == 22
    # The grid restarts: the next frame is one period after the stall, not a backlog.
    assert pacer.next_deadline() == pytest.approx(T0 + 0.520)
    assert pacer.due(T0 + 0.510) == 0
    assert pacer.due(T0 + 0.520) == 1


def test_pacer_errors() -> None:
    with pytest.raises(RuntimeError):
        FramePacer().due(T0)
    with pytest.raises(RuntimeError):
        FramePacer().next_deadline()
    with pytest.raises(ValueError):
        FramePacer(frame_ms=0)


@pytest.mark.parametrize(("fmt", "byte"), [(ULAW_8K, 0xFF), (ALAW_8K, 0xD5), (PCM16_8K, 0)])
def test_silence(fmt: object, byte: int) -> None:
    assert silence(fmt, 4) == bytes([byte]) * 4  # type: ignore[arg-type]


def test_queue_one_frame_per_tick_and_silence_when_idle() -> None:
    q = OutboundAudio.for_format(PCM16_8K)
    assert q.frame_bytes == 320
    idle = q.next_frame()
    assert idle == bytes(320) and q.idle_frames == 1
    assert q.next_frame() is idle  # shared silence, no allocation
    q.push(b"\x01" * 700)
    assert q.next_frame() == b"\x01" * 320
    assert q.next_frame() == b"\x01" * 320
    assert q.next_frame() is idle  # 60 B partial waits for more audio
    q.push(b"\x02" * 260)
    assert q.next_frame() == b"\x01" * 60 + b"\x02" * 260
    assert q.played_ms == pytest.approx(60.0) and q.queued_bytes == 0


def test_flush_pads_with_codec_silence() -> None:
    q = OutboundAudio.for_format(ULAW_8K)
    q.push(b"\x10" * 100)
    q.flush()
    assert q.next_frame() == b"\x10" * 100 + b"\xff" * 60
    q.flush()  # nothing partial: no-op
    assert q.queued_bytes == 0


def test_marks_fire_when_the_frame_clock_passes_them() -> None:
    q = OutboundAudio.for_format(PCM16_16K)
    q.push(b"\x01" * 640 * 2)
    q.mark("a")
    q.push(b"\x02" * 100)
    q.mark("b")  # flushes the 100-byte partial frame
    assert q.pop_played_marks() == ()
    q.next_frame()
    assert q.pop_played_marks() == ()
    q.next_frame()
    assert list(q.pop_played_marks()) == [MarkPlayed("a", True)]
    assert q.pop_played_marks() == ()
    q.next_frame()
    assert list(q.pop_played_marks()) == [MarkPlayed("b", True)]
    assert q.played_ms == pytest.approx(60.0)


def test_mark_on_empty_queue_fires_next_tick() -> None:
    q = OutboundAudio.for_format(PCM16_8K)
    q.mark("now")
    q.next_frame()
    assert list(q.pop_played_marks()) == [MarkPlayed("now", True)]


def test_clear_drops_audio_and_retires_marks() -> None:
    q = OutboundAudio.for_format(PCM16_8K)
    q.push(b"\x01" * 320)
    q.mark("heard")
    q.push(b"\x02" * 3200)
    q.mark("cut")
    q.next_frame()  # plays the "heard" frame; the mark is fired but not popped yet
    retired = q.clear()
    assert retired == [MarkPlayed("heard", True), MarkPlayed("cut", False)]
    assert q.queued_bytes == 0 and q.played_ms == pytest.approx(20.0)
    assert q.next_frame() == bytes(320)  # silence right after barge-in
    assert q.pop_played_marks() == ()


def test_long_stream_compacts_and_stays_in_order() -> None:
    q = OutboundAudio(160, silence_byte=0xFF)
    data = bytes(i % 251 for i in range(160 * 1000))
    for i in range(0, len(data), 997):
        q.push(data[i : i + 997])
    out = b"".join(q.next_frame() for _ in range(1000))
    assert out == data and q.idle_frames == 0


def test_pacer_and_queue_keep_the_line_busy() -> None:
    """2.5 s of idle ticks: a frame every 20 ms (the app's 2 s inactivity timer never fires)."""
    pacer = FramePacer()
    q = OutboundAudio.for_format(PCM16_8K)
    pacer.start(T0)
    sent_at: list[float] = []
    now = T0
    while now < T0 + 2.5:
        for _ in range(pacer.due(now)):
            q.next_frame()
            sent_at.append(now)
        now = pacer.next_deadline()
    gaps = [b - a for a, b in itertools.pairwise(sent_at)]
    assert len(sent_at) == 125 and max(gaps) == pytest.approx(0.020)
