"""Reframer and frame_bytes_for: tables of (input chunks, expected frames) plus a property."""

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telecodecs.constants import (
    ALAW_SILENCE,
    PCM16_FRAME_BYTES_8K,
    PCM16_FRAME_BYTES_16K,
    PCM16_SILENCE,
    ULAW_FRAME_BYTES_8K,
    ULAW_SILENCE,
)
from telecodecs.framing import Reframer, frame_bytes_for


@pytest.mark.parametrize(
    ("sample_rate", "frame_ms", "width", "expected"),
    [
        (8000, 20, 1, 160),  # Twilio μ-law frame
        (8000, 20, 2, 320),  # AudioSocket slin frame
        (16000, 20, 2, 640),
        (24000, 20, 2, 960),
        (22050, 20, 2, 882),
        (48000, 10, 2, 960),
    ],
)
def test_frame_bytes_for(sample_rate: int, frame_ms: int, width: int, expected: int) -> None:
    assert frame_bytes_for(sample_rate, frame_ms, width) == expected


def test_named_frame_sizes_agree_with_frame_bytes_for() -> None:
    assert frame_bytes_for(8000, 20, 1) == ULAW_FRAME_BYTES_8K
    assert frame_bytes_for(8000, 20, 2) == PCM16_FRAME_BYTES_8K
    assert frame_bytes_for(16000, 20, 2) == PCM16_FRAME_BYTES_16K


@pytest.mark.parametrize(
    ("sample_rate", "frame_ms", "width", "message"),
    [
        (22050, 10, 2, "whole number of samples"),
        (0, 20, 2, "positive"),
        (8000, 0, 1, "positive"),
        (8000, 20, -1, "positive"),
    ],
)
def test_frame_bytes_for_rejects(sample_rate: int, frame_ms: int, width: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        frame_bytes_for(sample_rate, frame_ms, width)


# (frame size, chunks pushed, frames returned by each push, pending after the last push)
PUSH_TABLE = [
    (4, [b"abcd"], [[b"abcd"]], 0),
    (4, [b"ab", b"cd"], [[], [b"abcd"]], 0),
    (4, [b"abcdefghij"], [[b"abcd", b"efgh"]], 2),
    (4, [b"abc", b"defgh", b"ijklm"], [[], [b"abcd", b"efgh"], [b"ijkl"]], 1),
    (4, [b"", b"a", b"", b"bcd"], [[], [], [], [b"abcd"]], 0),
    (3, [b"a", b"b", b"c", b"d"], [[], [], [b"abc"], []], 1),
    (2, [b"\x01\x02\x03", b"\x04"], [[b"\x01\x02"], [b"\x03\x04"]], 0),  # odd byte carried
]


@pytest.mark.parametrize(("size", "chunks", "expected", "pending"), PUSH_TABLE)
def test_push_table(
    size: int, chunks: list[bytes], expected: list[list[bytes]], pending: int
) -> None:
    reframer = Reframer(size)
    assert [reframer.push(chunk) for chunk in chunks] == expected
    assert reframer.pending == pending


@pytest.mark.parametrize(
    ("silence", "pending_bytes", "expected"),
    [
        (PCM16_SILENCE, b"\x01\x02\x03", b"\x01\x02\x03\x00\x00\x00"),
        (ULAW_SILENCE, b"\x10", b"\x10\xff\xff\xff\xff\xff"),
        (ALAW_SILENCE, b"\x10\x11", b"\x10\x11\xd5\xd5\xd5\xd5"),
        (b"\x01\x02", b"\x10", b"\x10\x01\x02\x01\x02\x01"),  # multi-byte pattern repeats
    ],
)
def test_flush_pads_with_silence(silence: bytes, pending_bytes: bytes, expected: bytes) -> None:
    reframer = Reframer(6, silence=silence)
    assert reframer.push(pending_bytes) == []
    assert reframer.flush() == expected
    assert reframer.pending == 0
    assert reframer.flush() is None


def test_flush_without_padding_returns_partial_frame() -> None:
    reframer = Reframer(160, silence=ULAW_SILENCE)
    reframer.push(b"\x01" * 170)
    assert reframer.flush(pad=False) == b"\x01" * 10
    assert reframer.pending == 0


def test_flush_when_empty_is_none() -> None:
    reframer = Reframer(160)
    assert reframer.flush() is None
    reframer.push(b"\x00" * 160)
    assert reframer.flush() is None  # an exact frame leaves nothing pending


def test_clear_drops_pending_bytes() -> None:
    reframer = Reframer(4)
    reframer.push(b"abcdef")
    reframer.clear()
    assert reframer.pending == 0
    assert reframer.flush() is None
    assert reframer.push(b"wxyz") == [b"wxyz"]


def test_frames_are_bytes_on_fast_and_buffered_paths() -> None:
    reframer = Reframer(2)
    fast = reframer.push(b"abcde")  # nothing pending: sliced straight from the input
    buffered = reframer.push(b"fgh")  # "e" pending: assembled in the buffer
    assert fast == [b"ab", b"cd"]
    assert buffered == [b"ef", b"gh"]
    assert all(type(frame) is bytes for frame in fast + buffered)


@pytest.mark.parametrize(("size", "silence"), [(0, b"\x00"), (-1, b"\x00"), (160, b"")])
def test_constructor_rejects(size: int, silence: bytes) -> None:
    with pytest.raises(ValueError):
        Reframer(size, silence=silence)


@given(
    data=st.binary(max_size=2000),
    size=st.integers(min_value=1, max_value=700),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=30),
)
@settings(max_examples=100, deadline=None)
def test_any_chunking_yields_the_same_frames(data: bytes, size: int, cuts: list[int]) -> None:
    bounds = [0, *sorted(c for c in cuts if c <= len(data)), len(data)]
    reframer = Reframer(size)
    frames = [f for a, b in itertools.pairwise(bounds) for f in reframer.push(data[a:b])]
    whole = len(data) - len(data) % size
    assert frames == [data[i : i + size] for i in range(0, whole, size)]
    assert reframer.pending == len(data) % size
    tail = reframer.flush(pad=False)
    assert (tail or b"") == data[whole:]
