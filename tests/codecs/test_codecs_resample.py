"""StreamResampler: anti-aliasing, pass-band fidelity, chunking invariance, lengths."""

import itertools
import warnings

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telecodecs.resample import SUPPORTED_RATES, StreamResampler, resample

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # stdlib audioop on 3.11/3.12
    import audioop

FRAME_MS = 20

Int16Array = npt.NDArray[np.int16]


def tone(freq: float, rate: int, seconds: float, amplitude: float = 10000.0) -> Int16Array:
    t = np.arange(round(rate * seconds)) / rate
    return np.round(amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def to_array(pcm: bytes) -> Int16Array:
    return np.frombuffer(pcm, dtype=np.int16)


def rms(x: Int16Array) -> float:
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))


def stream_in_frames(resampler: StreamResampler, pcm: bytes, frame_bytes: int) -> bytes:
    out = [resampler.process(pcm[i : i + frame_bytes]) for i in range(0, len(pcm), frame_bytes)]
    return b"".join(out) + resampler.flush()


def peak_frequency(x: Int16Array, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x.astype(np.float64) * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[int(np.argmax(spectrum))])


def test_downsampling_attenuates_5khz_tone_by_50db() -> None:
    x = tone(5000, 16000, 1.0)
    y = to_array(stream_in_frames(StreamResampler(16000, 8000), x.tobytes(), 640))
    steady = y[800:-800]  # skip 100 ms at each end (filter start-up and tail)
    attenuation_db = 20 * np.log10(rms(x) / max(rms(steady), 1e-9))
    assert attenuation_db >= 50


def test_audioop_ratecv_aliases_5khz_to_3khz_so_the_attenuation_test_means_something() -> None:
    # ratecv interpolates without a low-pass filter: 5 kHz folds around the new 4 kHz
    # Nyquist to 3 kHz and comes out at nearly full level.
    x = tone(5000, 16000, 1.0)
    converted, _ = audioop.ratecv(x.tobytes(), 2, 1, 16000, 8000, None)
    y = to_array(converted)[800:-800]
    attenuation_db = 20 * np.log10(rms(x) / rms(y))
    assert attenuation_db < 6
    assert peak_frequency(y, 8000) == pytest.approx(3000, abs=10)


@pytest.mark.parametrize(
    ("rate", "via"), [(8000, 16000), (16000, 8000), (8000, 24000), (22050, 16000)]
)
def test_1khz_tone_survives_a_round_trip_with_snr_above_60db(rate: int, via: int) -> None:
    # Bound 60 dB (G.711 itself only reaches ~38 dB). Measured: integer ratios come back
    # bit-exact (soxr's half-band filters keep the original samples, float32 path), 22050 ->
    # 16000 -> 22050 at 89 dB (max error 1 LSB). Noise energy floored at 1 LSB² so an exact
    # result reads as "very high", not a division by zero.
    x = tone(1000, rate, 1.0)
    there, back = StreamResampler(rate, via), StreamResampler(via, rate)
    pcm = x.tobytes()
    frame = 2 * rate * FRAME_MS // 1000
    out = [back.process(there.process(pcm[i : i + frame])) for i in range(0, len(pcm), frame)]
    out.append(back.process(there.flush()) + back.flush())
    y = to_array(b"".join(out))
    assert len(y) == len(x)
    steady = slice(rate // 10, -rate // 10)
    error = y[steady].astype(np.float64) - x[steady]
    noise = max(float(np.sum(error**2)), 1.0)
    snr_db = 10 * np.log10(float(np.sum(x[steady].astype(np.float64) ** 2)) / noise)
    assert snr_db >= 60


@pytest.mark.parametrize(("in_rate", "freq"), [(22050, 1000), (24000, 1500), (48000, 440)])
def test_tts_and_file_rates_keep_tone_frequency(in_rate: int, freq: int) -> None:
    y = to_array(resample(tone(freq, in_rate, 0.5).tobytes(), in_rate, 16000))
    assert peak_frequency(y, 16000) == pytest.approx(freq, abs=5)


RATE_PAIRS = [
    (8000, 16000),
    (16000, 8000),
    (22050, 16000),
    (22050, 8000),
    (24000, 8000),
    (48000, 16000),
    (8000, 48000),
    (16000, 24000),
    (44100, 16000),
]


@pytest.mark.parametrize(("in_rate", "out_rate"), RATE_PAIRS)
@pytest.mark.parametrize("n_samples", [0, 1, 159, 160, 4410, 16001])
def test_output_length_matches_ratio_after_flush(
    in_rate: int, out_rate: int, n_samples: int
) -> None:
    pcm = tone(440, in_rate, n_samples / in_rate).tobytes()
    out = stream_in_frames(StreamResampler(in_rate, out_rate), pcm, 2 * in_rate * FRAME_MS // 1000)
    assert len(out) % 2 == 0
    assert abs(len(out) // 2 - n_samples * out_rate / in_rate) <= 1


@given(
    data=st.data(),
    rates=st.sampled_from(RATE_PAIRS),
    n_samples=st.integers(min_value=0, max_value=3000),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
@settings(max_examples=60, deadline=None)
def test_any_chunking_equals_whole_buffer(
    data: st.DataObject, rates: tuple[int, int], n_samples: int, seed: int
) -> None:
    in_rate, out_rate = rates
    signal = np.random.default_rng(seed).normal(0, 6000, n_samples).clip(-32768, 32767)
    pcm = signal.astype(np.int16).tobytes()
    # Split points at any byte offset, so odd splits (half samples) are common.
    cuts = sorted(
        data.draw(st.lists(st.integers(min_value=0, max_value=len(pcm)), max_size=40), "cuts")
    )
    chunked_resampler = StreamResampler(in_rate, out_rate)
    bounds = [0, *cuts, len(pcm)]
    chunked = b"".join(chunked_resampler.process(pcm[a:b]) for a, b in itertools.pairwise(bounds))
    chunked += chunked_resampler.flush()
    whole_resampler = StreamResampler(in_rate, out_rate)
    whole = whole_resampler.process(pcm) + whole_resampler.flush()
    # Exact: soxr works in float32 and rounding happens per sample, so chunking cannot
    # matter. (soxr's int16 mode dithers and differs by up to 2 LSB; see resample.py.)
    assert chunked == whole


def test_identical_input_is_reproducible_across_instances() -> None:
    pcm = np.random.default_rng(7).normal(0, 6000, 8000).astype(np.int16).tobytes()
    runs = [stream_in_frames(StreamResampler(16000, 8000), pcm, 640) for _ in range(2)]
    assert runs[0] == runs[1]


def test_equal_rates_pass_through_and_carry_odd_byte() -> None:
    resampler = StreamResampler(16000, 16000)
    assert resampler.process(b"\x01\x02\x03") == b"\x01\x02"
    assert resampler.process(b"\x04") == b"\x03\x04"
    assert resampler.process(b"\x05") == b""
    assert resampler.flush() == b""  # the dangling half sample is dropped


def test_process_never_returns_half_samples() -> None:
    resampler = StreamResampler(8000, 16000)
    pcm = tone(440, 8000, 0.3).tobytes()
    outputs = [resampler.process(pcm[i : i + 7]) for i in range(0, len(pcm), 7)]
    assert all(len(out) % 2 == 0 for out in outputs)
    assert any(outputs)


def test_first_chunks_may_be_empty_but_audio_is_not_lost() -> None:
    # soxr holds output back at stream start (documented); flush() returns it.
    resampler = StreamResampler(8000, 16000)
    first = resampler.process(tone(440, 8000, 0.02).tobytes())
    tail = resampler.flush()
    assert len(first) + len(tail) == 640


def test_flush_makes_instance_reusable_for_the_next_stream() -> None:
    resampler = StreamResampler(16000, 8000)
    pcm = tone(440, 16000, 0.1).tobytes()
    first = resampler.process(pcm) + resampler.flush()
    second = resampler.process(pcm) + resampler.flush()
    assert len(first) == len(pcm) // 2
    assert second == first


def test_reset_discards_pending_audio() -> None:
    resampler = StreamResampler(8000, 16000)
    resampler.process(tone(440, 8000, 0.1).tobytes() + b"\x01")
    resampler.reset()
    assert resampler.flush() == b""


def test_empty_chunk_is_harmless() -> None:
    resampler = StreamResampler(8000, 16000)
    assert resampler.process(b"") == b""
    assert resampler.flush() == b""


@pytest.mark.parametrize(("in_rate", "out_rate"), [(16, 8000), (8000, 11025), (0, 8000)])
def test_unsupported_rates_raise(in_rate: int, out_rate: int) -> None:
    with pytest.raises(ValueError, match="unsupported"):
        StreamResampler(in_rate, out_rate)


def test_supported_rates_cover_telephony_tts_and_files() -> None:
    assert {8000, 16000, 22050, 24000, 44100, 48000} <= SUPPORTED_RATES


# Every signed-linear rate Asterisk offers: chan_websocket slin, slin12 ... slin192
# (main/codec_builtin.c) and AudioSocket kinds 0x10-0x18. 12, 32, 96 and 192 kHz used to be
# refused, which hung up those calls at once (or at the first reply, for 32 kHz).
ASTERISK_RATES = [8000, 12000, 16000, 24000, 32000, 44100, 48000, 96000, 192000]


def test_every_asterisk_rate_is_supported() -> None:
    assert set(ASTERISK_RATES) <= SUPPORTED_RATES


@pytest.mark.parametrize(
    ("in_rate", "out_rate"), list(itertools.permutations([*ASTERISK_RATES, 22050], 2))
)
def test_every_asterisk_rate_pair_streams_a_tone_faithfully(in_rate: int, out_rate: int) -> None:
    x = tone(1000, in_rate, 0.2)
    y = to_array(
        stream_in_frames(
            StreamResampler(in_rate, out_rate), x.tobytes(), 2 * in_rate * FRAME_MS // 1000
        )
    )
    assert abs(len(y) - len(x) * out_rate / in_rate) <= 1
    assert peak_frequency(y, out_rate) == pytest.approx(1000, abs=10)
    steady = y[out_rate // 20 : -out_rate // 20]  # skip 50 ms at each end
    assert 20 * np.log10(rms(steady) / rms(x)) == pytest.approx(0, abs=0.5)


def test_whole_buffer_resample_rejects_odd_length() -> None:
    with pytest.raises(ValueError, match="whole number"):
        resample(b"\x00\x00\x00", 8000, 16000)


def test_overshoot_is_clipped_not_wrapped() -> None:
    # A full-scale square wave makes the filter ring past ±32767; a float -> int16 cast
    # without clipping would wrap those peaks to the opposite sign (loud clicks).
    period = 160  # 100 Hz at 16 kHz
    square = np.where((np.arange(16000) // (period // 2)) % 2 == 0, 32767, -32768)
    y = to_array(resample(square.astype(np.int16).tobytes(), 16000, 8000))
    assert int(y.max()) == 32767  # clipped: the overshoot was there
    assert int(y.min()) == -32768
    mid_high = y[20::80]  # middle of each positive half period at 8 kHz
    mid_low = y[60::80]
    assert bool(np.all(mid_high > 20000))
    assert bool(np.all(mid_low < -20000))
