"""build_wav, parse_wav (lenient, typed errors) and RiffStripper (header at stream start)."""

import io
import itertools
import struct
import wave

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telecodecs.wav import (
    WAVE_FORMAT_ALAW,
    WAVE_FORMAT_MULAW,
    WAVE_FORMAT_PCM,
    RiffStripper,
    WavAudio,
    WavError,
    build_wav,
    parse_wav,
)

PCM = bytes(range(256)) * 4  # 1024 bytes = 512 PCM16 samples, recognisable content


def chunk(chunk_id: bytes, body: bytes) -> bytes:
    """A RIFF chunk with its pad byte when the body is odd-sized."""
    return struct.pack("<4sI", chunk_id, len(body)) + body + (b"\x00" if len(body) % 2 else b"")


def fmt_body(tag: int = 1, channels: int = 1, rate: int = 16000, bits: int = 16) -> bytes:
    block = channels * bits // 8
    return struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits)


def riff(*chunks: bytes, size: int | None = None) -> bytes:
    body = b"WAVE" + b"".join(chunks)
    return struct.pack("<4sI", b"RIFF", len(body) if size is None else size) + body


def hamsa_streamed_header(rate: int = 16000) -> bytes:
    """A 44-byte header as in hamsa.md §2.3's sample response: RIFF size 0xFFFFFFFF."""
    return riff(
        chunk(b"fmt ", fmt_body(rate=rate)),
        struct.pack("<4sI", b"data", 0xFFFFFFFF),
        size=0xFFFFFFFF,
    )


# --- build_wav --------------------------------------------------------------------------


def test_build_wav_canonical_header_bytes() -> None:
    wav = build_wav(b"\x01\x00\x02\x00", sample_rate=8000)
    assert len(wav) == 44 + 4
    assert wav[:44] == (
        b"RIFF" + struct.pack("<I", 40) + b"WAVE"
        b"fmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, 8000, 16000, 2, 16)
        + b"data"
        + struct.pack("<I", 4)
    )
    assert wav[44:] == b"\x01\x00\x02\x00"


@pytest.mark.parametrize(("rate", "channels"), [(16000, 1), (8000, 1), (44100, 2)])
def test_build_wav_is_readable_by_stdlib_wave(rate: int, channels: int) -> None:
    with wave.open(io.BytesIO(build_wav(PCM, rate, channels))) as reader:
        assert reader.getframerate() == rate
        assert reader.getnchannels() == channels
        assert reader.getsampwidth() == 2
        assert reader.readframes(reader.getnframes()) == PCM


def test_build_wav_rejects_partial_frames() -> None:
    with pytest.raises(ValueError, match="whole number"):
        build_wav(b"\x00\x00\x00")
    with pytest.raises(ValueError, match="whole number"):
        build_wav(b"\x00\x00", channels=2)


# --- parse_wav ----------------------------------------------------------------------------


def test_parse_round_trips_build() -> None:
    assert parse_wav(build_wav(PCM, 8000)) == WavAudio(8000, 1, 2, PCM, WAVE_FORMAT_PCM)


def test_parse_reads_stdlib_wave_output() -> None:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(2)
        writer.setsampwidth(2)
        writer.setframerate(44100)
        writer.writeframes(PCM)
    assert parse_wav(buffer.getvalue()) == WavAudio(44100, 2, 2, PCM)


LENIENT_CASES = {
    "riff and data sizes 0xFFFFFFFF (streamed)": (
        riff(chunk(b"fmt ", fmt_body()), struct.pack("<4sI", b"data", 0xFFFFFFFF), size=0xFFFFFFFF)
        + PCM,
        PCM,
    ),
    "riff and data sizes 0 (streamed)": (
        riff(chunk(b"fmt ", fmt_body()), struct.pack("<4sI", b"data", 0), size=0) + PCM,
        PCM,
    ),
    "LIST and fact chunks skipped, odd LIST padded": (
        riff(
            chunk(b"LIST", b"INFOISFT\x05\x00\x00\x00Lavf\x00"),  # 17 bytes -> pad byte
            chunk(b"fmt ", fmt_body()),
            chunk(b"fact", struct.pack("<I", 512)),
            chunk(b"data", PCM),
        ),
        PCM,
    ),
    "trailing chunk after data ignored": (
        riff(chunk(b"fmt ", fmt_body()), chunk(b"data", PCM), chunk(b"LIST", b"junk")),
        PCM,
    ),
    "data size larger than present: truncated to what is there": (
        riff(chunk(b"fmt ", fmt_body()), size=4 + 24 + 8 + 100000)
        + struct.pack("<4sI", b"data", 100000)
        + PCM,
        PCM,
    ),
    "half sample at the end trimmed": (
        riff(chunk(b"fmt ", fmt_body()), chunk(b"data", PCM + b"\x07")),
        PCM,
    ),
    "bytes after the RIFF body ignored": (
        riff(chunk(b"fmt ", fmt_body()), chunk(b"data", PCM)) + b"garbage!",
        PCM,
    ),
    "empty data chunk": (riff(chunk(b"fmt ", fmt_body()), chunk(b"data", b"")), b""),
}


@pytest.mark.parametrize(("wav", "audio"), LENIENT_CASES.values(), ids=LENIENT_CASES.keys())
def test_parse_is_lenient(wav: bytes, audio: bytes) -> None:
    parsed = parse_wav(wav)
    assert parsed.audio == audio
    assert (parsed.sample_rate, parsed.channels, parsed.sample_width) == (16000, 1, 2)


def test_parse_extensible_and_g711_formats() -> None:
    extensible = fmt_body(tag=0xFFFE, channels=2, rate=48000) + struct.pack(
        "<HHI16s",
        22,
        16,
        3,
        struct.pack("<H", 1) + b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71",
    )
    parsed = parse_wav(riff(chunk(b"fmt ", extensible), chunk(b"data", PCM)))
    assert parsed == WavAudio(48000, 2, 2, PCM, WAVE_FORMAT_PCM)
    ulaw = parse_wav(riff(chunk(b"fmt ", fmt_body(tag=7, rate=8000, bits=8)), chunk(b"data", PCM)))
    assert ulaw == WavAudio(8000, 1, 1, PCM, WAVE_FORMAT_MULAW)
    alaw = parse_wav(riff(chunk(b"fmt ", fmt_body(tag=6, rate=8000, bits=8)), chunk(b"data", b"a")))
    assert alaw == WavAudio(8000, 1, 1, b"a", WAVE_FORMAT_ALAW)


ERROR_CASES = {
    "empty": (b"", "too short"),
    "raw pcm": (PCM, "not a RIFF file"),
    "big-endian RIFX": (b"RIFX" + riff(chunk(b"fmt ", fmt_body()))[4:], "not a RIFF file"),
    "RIFF but AVI": (b"RIFF\x04\x00\x00\x00AVI ", "not b'WAVE'"),
    "no fmt": (riff(chunk(b"data", PCM)), "data chunk before fmt"),
    "no chunks at all": (riff(), "no fmt chunk"),
    "no data": (riff(chunk(b"fmt ", fmt_body())), "no data chunk"),
    "float samples": (
        riff(chunk(b"fmt ", fmt_body(tag=3, bits=32)), chunk(b"data", PCM)),
        "unsupported WAV format tag 0x0003",
    ),
    "fmt too short": (riff(chunk(b"fmt ", b"\x01\x00\x01\x00")), "fmt chunk too short"),
    "zero channels": (
        riff(chunk(b"fmt ", fmt_body(channels=0)), chunk(b"data", PCM)),
        "0 channels",
    ),
    "12-bit samples": (
        riff(chunk(b"fmt ", fmt_body(bits=12)), chunk(b"data", PCM)),
        "bits per sample",
    ),
    "extensible without SubFormat": (
        riff(chunk(b"fmt ", fmt_body(tag=0xFFFE)), chunk(b"data", PCM)),
        "SubFormat",
    ),
}


@pytest.mark.parametrize(("data", "message"), ERROR_CASES.values(), ids=ERROR_CASES.keys())
def test_parse_errors_are_wav_errors(data: bytes, message: str) -> None:
    with pytest.raises(WavError, match=message):
        parse_wav(data)


def test_wav_error_is_a_value_error() -> None:
    assert issubclass(WavError, ValueError)


# --- RiffStripper ---------------------------------------------------------------------------


def feed_all(stripper: RiffStripper, chunks: list[bytes]) -> bytes:
    return b"".join(stripper.feed(c) for c in chunks) + stripper.flush()


def test_raw_stream_passes_through_unchanged() -> None:
    stripper = RiffStripper()
    assert feed_all(stripper, [PCM[:300], PCM[300:]]) == PCM
    assert stripper.wav_format is None


def test_raw_stream_is_released_as_soon_as_it_cannot_be_a_header() -> None:
    stripper = RiffStripper()
    assert stripper.feed(b"\x00\x01") == b"\x00\x01"  # first byte is not "R"
    stripper = RiffStripper()
    assert stripper.feed(b"RI") == b""  # could still be "RIFF": wait
    assert stripper.feed(b"FX") == b"RIFX"  # cannot: all of it is audio


def test_hamsa_streamed_header_is_stripped_and_format_exposed() -> None:
    stripper = RiffStripper()
    out = feed_all(stripper, [hamsa_streamed_header() + PCM[:100], PCM[100:]])
    assert out == PCM
    assert stripper.wav_format == WavAudio(16000, 1, 2, b"", WAVE_FORMAT_PCM)


def test_header_split_at_every_byte_offset() -> None:
    stream = hamsa_streamed_header(rate=22050) + PCM
    for split in range(len(stream) + 1):
        stripper = RiffStripper()
        assert feed_all(stripper, [stream[:split], stream[split:]]) == PCM, split
        assert stripper.wav_format is not None
        assert stripper.wav_format.sample_rate == 22050


def test_header_fed_one_byte_at_a_time_with_extra_chunks() -> None:
    stream = (
        riff(
            chunk(b"LIST", b"x" * 301),
            chunk(b"fmt ", fmt_body(rate=8000)),
            chunk(b"fact", b"\x00" * 4),
        )
        + struct.pack("<4sI", b"data", 0xFFFFFFFF)
        + PCM
    )
    stripper = RiffStripper()
    assert feed_all(stripper, [stream[i : i + 1] for i in range(len(stream))]) == PCM
    assert stripper.wav_format is not None
    assert stripper.wav_format.sample_rate == 8000


def test_the_640_byte_response_with_a_header() -> None:
    # hamsa.md §4: a lone 640-byte frame said to "contain the WAV header": 44 + 596 bytes.
    frame = hamsa_streamed_header() + PCM[:596]
    assert len(frame) == 640
    assert feed_all(RiffStripper(), [frame]) == PCM[:596]


def test_real_data_size_ends_the_audio() -> None:
    wav = riff(chunk(b"fmt ", fmt_body()), chunk(b"data", PCM[:10]), chunk(b"LIST", b"meta"))
    assert feed_all(RiffStripper(), [wav[:30], wav[30:]]) == PCM[:10]


def test_odd_bytes_are_carried_and_trailing_half_sample_dropped() -> None:
    stripper = RiffStripper(sample_width=2)
    outputs = [stripper.feed(b"\x01\x02\x03"), stripper.feed(b"\x04\x05")]
    assert outputs == [b"\x01\x02", b"\x03\x04"]
    assert stripper.flush() == b""  # b"\x05" is half a sample


def test_mulaw_width_one_never_carries() -> None:
    stripper = RiffStripper(sample_width=1)
    header = riff(chunk(b"fmt ", fmt_body(tag=7, rate=8000, bits=8)))
    header += struct.pack("<4sI", b"data", 0)
    assert stripper.feed(header + b"\xff\x7f\x00") == b"\xff\x7f\x00"
    assert stripper.wav_format == WavAudio(8000, 1, 1, b"", WAVE_FORMAT_MULAW)


def test_unreadable_fmt_still_strips_header() -> None:
    stream = riff(chunk(b"fmt ", b"\x03\x00"), struct.pack("<4sI", b"data", 0)) + PCM
    stripper = RiffStripper()
    assert feed_all(stripper, [stream]) == PCM
    assert stripper.wav_format is None


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        (b"RI", b""),  # could have been a header: nothing is emitted
        (b"RIFF\x00\x00\x00\x00WA", b""),
        (b"RIFF\x00\x00\x00\x00WAVX", b"RIFF\x00\x00\x00\x00WAVX"),
        (b"\x00\x01\x02", b"\x00\x01"),
        (hamsa_streamed_header()[:30], b""),  # stream died inside the header
    ],
)
def test_short_streams_on_flush(stream: bytes, expected: bytes) -> None:
    stripper = RiffStripper()
    assert feed_all(stripper, [stream]) == expected


@given(
    with_header=st.booleans(),
    audio=st.binary(max_size=600),
    cuts=st.lists(st.integers(min_value=0, max_value=700), max_size=20),
    width=st.sampled_from([1, 2]),
)
@settings(max_examples=100, deadline=None)
def test_any_chunking_yields_the_audio(
    with_header: bool, audio: bytes, cuts: list[int], width: int
) -> None:
    if not with_header and audio[:1] == b"R":
        audio = b"\x00" + audio  # keep raw audio from looking like the start of a header
    stream = (hamsa_streamed_header() if with_header else b"") + audio
    bounds = [0, *sorted(c for c in cuts if c <= len(stream)), len(stream)]
    stripper = RiffStripper(sample_width=width)
    outputs = [stripper.feed(stream[a:b]) for a, b in itertools.pairwise(bounds)]
    outputs.append(stripper.flush())
    assert all(len(out) % width == 0 for out in outputs)
    assert b"".join(outputs) == audio[: len(audio) - len(audio) % width]
    assert (stripper.wav_format is not None) == with_header
