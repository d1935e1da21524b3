"""G.711 μ-law and A-law <-> PCM16 (signed 16-bit little-endian mono).

Thin wrappers over ``audioop`` (stdlib up to Python 3.12; the ``audioop-lts`` package provides
the same module on 3.13+), which implements ITU-T G.711 with the classic Sun reference tables:

* μ-law decodes to ±32124 full scale (the 14-bit G.711 value shifted left by 2); codes 0xFF
  (+0) and 0x7F (-0) both decode to 0, and the encoder writes 0xFF for 0, so 0x7F is the one
  code that does not round-trip (G.711 Table 2a lists both zeros; only +0 is produced).
  No zero-code suppression: -32768 encodes to 0x00 (G.711 leaves 0x00 suppression to the
  transmission system).
* A-law decodes to ±32256 (13-bit value shifted left by 3); there is no zero code, the two
  codes nearest zero are 0xD5 (+8) and 0x55 (-8). Every code round-trips.

Odd-length PCM16 input raises ``ValueError``: half a sample means the caller lost track of
sample boundaries upstream, and silently dropping the byte would shift every later sample.
Streams whose chunks do not align with samples go through ``Reframer``/``RiffStripper``/
``StreamResampler`` first, which carry the odd byte.
"""

import warnings

with warnings.catch_warnings():
    # Python 3.11/3.12 warn that stdlib audioop goes away in 3.13 (PEP 594); pyproject installs
    # audioop-lts there, which provides the same module without the warning.
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

from telecodecs.constants import PCM16_WIDTH

__all__ = ["alaw_to_pcm16", "pcm16_to_alaw", "pcm16_to_ulaw", "ulaw_to_pcm16"]


def _check_pcm16(pcm: bytes) -> None:
    if len(pcm) % PCM16_WIDTH:
        raise ValueError(
            f"PCM16 input must be a whole number of 2-byte samples, got {len(pcm)} bytes"
        )


def ulaw_to_pcm16(data: bytes) -> bytes:
    """Decode μ-law bytes (one sample each) to PCM16; output is ``2 * len(data)`` bytes."""
    return audioop.ulaw2lin(data, PCM16_WIDTH)


def pcm16_to_ulaw(pcm: bytes) -> bytes:
    """Encode PCM16 to μ-law, one byte per sample.

    Raises ``ValueError`` if ``len(pcm)`` is odd (not a whole number of samples).
    """
    _check_pcm16(pcm)
    return audioop.lin2ulaw(pcm, PCM16_WIDTH)


def alaw_to_pcm16(data: bytes) -> bytes:
    """Decode A-law bytes (one sample each) to PCM16; output is ``2 * len(data)`` bytes."""
    return audioop.alaw2lin(data, PCM16_WIDTH)


def pcm16_to_alaw(pcm: bytes) -> bytes:
    """Encode PCM16 to A-law, one byte per sample.

    Raises ``ValueError`` if ``len(pcm)`` is odd (not a whole number of samples).
    """
    _check_pcm16(pcm)
    return audioop.lin2alaw(pcm, PCM16_WIDTH)
