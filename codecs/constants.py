"""Named audio constants shared by the gateway (rates in Hz, sizes in bytes).

Telephony audio is 8 kHz G.711 (μ-law for Twilio and most PBXs, A-law in Europe) or 8 kHz
signed linear ("slin"); Hamsa speech works on 16 kHz PCM16. Inside the gateway audio is PCM16
little-endian mono with its sample rate carried beside it (see README, Architecture).
"""

from typing import Final

SAMPLE_RATE_8K: Final = 8000
"""Narrowband telephony rate (G.711, Twilio Media Streams, AudioSocket slin)."""

SAMPLE_RATE_16K: Final = 16000
"""Wideband rate used by Hamsa STT/TTS (community practice, hamsa.md §1.4)."""

SAMPLE_RATE_22K05: Final = 22050
"""Rate one third-party Hamsa TTS plugin assumes (hamsa.md §2.3); accepted as an input rate."""

SAMPLE_RATE_24K: Final = 24000
SAMPLE_RATE_44K1: Final = 44100
"""CD / common audio file rate; accepted as an input rate (greetings, hold music)."""

SAMPLE_RATE_48K: Final = 48000

FRAME_MS: Final = 20
"""Packetisation interval of every telephony media stream we speak (ptime 20 ms)."""

PCM16_WIDTH: Final = 2
"""Bytes per sample of signed 16-bit little-endian PCM."""

G711_WIDTH: Final = 1
"""Bytes per sample of μ-law / A-law."""

PCM16_SILENCE: Final = b"\x00"
"""Pad byte for PCM16 silence (sample value 0)."""

ULAW_SILENCE: Final = b"\xff"
"""μ-law code for zero (G.711 Table 2a: 0xFF is +0; 0x7F, -0, also decodes to 0)."""

ALAW_SILENCE: Final = b"\xd5"
"""A-law code closest to zero (G.711 Table 1a: 0xD5 decodes to +8 on the 16-bit scale)."""

ULAW_FRAME_BYTES_8K: Final = SAMPLE_RATE_8K * FRAME_MS // 1000 * G711_WIDTH
"""160: one 20 ms G.711 frame at 8 kHz."""

PCM16_FRAME_BYTES_8K: Final = SAMPLE_RATE_8K * FRAME_MS // 1000 * PCM16_WIDTH
"""320: one 20 ms PCM16 frame at 8 kHz (AudioSocket slin)."""

PCM16_FRAME_BYTES_16K: Final = SAMPLE_RATE_16K * FRAME_MS // 1000 * PCM16_WIDTH
"""640: one 20 ms PCM16 frame at 16 kHz."""
