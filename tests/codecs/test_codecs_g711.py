"""G.711 against a reference decoder written from the ITU-T G.711 definition (1988, Tables 1a/2a).

Each 8-bit code is sign (1 bit), segment/exponent (3 bits), quantisation step/mantissa (4 bits).
"""

import itertools
import struct
from collections.abc import Callable

import pytest

from telecodecs.g711 import alaw_to_pcm16, pcm16_to_alaw, pcm16_to_ulaw, ulaw_to_pcm16

Codec = Callable[[bytes], bytes]

ALL_CODES = bytes(range(256))
ALL_PCM16 = struct.pack("<65536h", *range(-32768, 32768))


def ref_ulaw_decode(code: int) -> int:
    """G.711 μ-law: the code is transmitted inverted; sign bit set means negative.

    Segment e has step 2**(e+1) in 14-bit units and starts at 33 * 2**e - 33; the decoder
    output of step m is ((2m + 33) * 2**e) - 33, so segment 0 outputs 0, 2, ..., 30 and
    segment 7 tops out at 8031 (full scale 8159). Scaled by 4 to 16 bits (14-bit << 2).
    """
    code = ~code & 0xFF
    negative = code & 0x80
    exponent = (code >> 4) & 0x07
    mantissa = code & 0x0F
    magnitude = ((2 * mantissa + 33) << exponent) - 33
    value = magnitude * 4
    return -value if negative else value


def ref_alaw_decode(code: int) -> int:
    """G.711 A-law: even bits are inverted (XOR 0x55); sign bit set means positive.

    Segment 0 is linear with step 2 in 13-bit units (outputs 1, 3, ..., 31); segment e >= 1
    outputs (2m + 33) * 2**(e-1). Scaled by 8 to 16 bits (13-bit << 3).
    """
    code ^= 0x55
    positive = code & 0x80
    exponent = (code >> 4) & 0x07
    mantissa = code & 0x0F
    magnitude = 2 * mantissa + 1 if exponent == 0 else (2 * mantissa + 33) << (exponent - 1)
    value = magnitude * 8
    return value if positive else -value


def samples(pcm: bytes) -> list[int]:
    return list(struct.unpack(f"<{len(pcm) // 2}h", pcm))


def test_ulaw_decoder_matches_reference_for_all_256_codes() -> None:
    assert samples(ulaw_to_pcm16(ALL_CODES)) == [ref_ulaw_decode(c) for c in range(256)]


def test_alaw_decoder_matches_reference_for_all_256_codes() -> None:
    assert samples(alaw_to_pcm16(ALL_CODES)) == [ref_alaw_decode(c) for c in range(256)]


@pytest.mark.parametrize(
    ("decode", "code", "expected"),
    [
        (ulaw_to_pcm16, 0xFF, 0),  # +0
        (ulaw_to_pcm16, 0x7F, 0),  # -0 also decodes to 0
        (ulaw_to_pcm16, 0x80, 32124),  # positive full scale
        (ulaw_to_pcm16, 0x00, -32124),  # negative full scale
        (alaw_to_pcm16, 0xD5, 8),  # smallest positive step: A-law has no zero code
        (alaw_to_pcm16, 0x55, -8),
        (alaw_to_pcm16, 0xAA, 32256),
        (alaw_to_pcm16, 0x2A, -32256),
    ],
)
def test_known_vectors(decode: Codec, code: int, expected: int) -> None:
    assert samples(decode(bytes([code]))) == [expected]


def test_ulaw_round_trip_all_codes_except_negative_zero() -> None:
    # G.711 Table 2a lists +0 (0xFF) and -0 (0x7F); both decode to 0 and the encoder emits
    # +0 for 0, so 0x7F comes back as 0xFF. Every other code round-trips.
    round_trip = pcm16_to_ulaw(ulaw_to_pcm16(ALL_CODES))
    mismatches = {c: round_trip[c] for c in range(256) if round_trip[c] != c}
    assert mismatches == {0x7F: 0xFF}


def test_alaw_round_trip_all_codes() -> None:
    assert pcm16_to_alaw(alaw_to_pcm16(ALL_CODES)) == ALL_CODES


@pytest.mark.parametrize(
    ("encode", "decode", "full_scale"),
    [(pcm16_to_ulaw, ulaw_to_pcm16, 32124), (pcm16_to_alaw, alaw_to_pcm16, 32256)],
)
def test_encoder_quantises_every_pcm16_value_monotonically_within_one_step(
    encode: Codec, decode: Codec, full_scale: int
) -> None:
    xs = range(-32768, 32768)
    ys = samples(decode(encode(ALL_PCM16)))
    # Monotonic: a larger input never decodes smaller (the quantiser picks intervals in order).
    assert all(a <= b for a, b in itertools.pairwise(ys))
    # Error within half the largest step (1024 / 2 on the 16-bit scale) plus the 2 low bits
    # μ-law drops to reach 14 bits (3) inside the range; the extremes clip to full scale.
    assert max(abs(y - x) for x, y in zip(xs, ys, strict=True) if abs(x) <= full_scale) <= 515
    assert ys[0] == -full_scale
    assert ys[-1] == full_scale
    # Small signals get small steps: |x| < 64 is reproduced within 8 (half the smallest step).
    assert all(abs(y - x) <= 8 for x, y in zip(xs, ys, strict=True) if abs(x) < 64)


@pytest.mark.parametrize("encode", [pcm16_to_ulaw, pcm16_to_alaw])
def test_odd_length_pcm_raises_value_error(encode: Codec) -> None:
    with pytest.raises(ValueError, match="whole number of 2-byte samples"):
        encode(b"\x00\x00\x01")


@pytest.mark.parametrize("codec", [pcm16_to_ulaw, pcm16_to_alaw, ulaw_to_pcm16, alaw_to_pcm16])
def test_empty_input_gives_empty_output(codec: Codec) -> None:
    assert codec(b"") == b""


def test_output_lengths() -> None:
    assert len(ulaw_to_pcm16(bytes(160))) == 320
    assert len(pcm16_to_alaw(bytes(640))) == 320
