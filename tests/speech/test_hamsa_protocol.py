"""Tables of (wire input, expected events) for the sans-I/O Hamsa protocol core."""

from __future__ import annotations

import base64
import itertools
import json
import struct
from collections.abc import Sequence

import pytest

from gateway.speech.hamsa.protocol import (
    GREETING_MESSAGE,
    TTS_ACK_MESSAGE,
    TTS_END_MESSAGE,
    CloseKind,
    ErrorKind,
    Greeting,
    HamsaProtocol,
    Ignored,
    Malformed,
    ProtocolClosed,
    RequestInFlight,
    RequestKind,
    ServerClosed,
    ServerError,
    SttMarker,
    SttTranscript,
    TtsAck,
    TtsAudio,
    TtsEnd,
    classify_close,
    classify_error_message,
    is_short_response,
)

INFO = json.dumps({"type": "info", "payload": {"message": GREETING_MESSAGE}})
ACK = json.dumps({"type": "ack", "payload": {"message": TTS_ACK_MESSAGE}})
END = json.dumps({"type": "end", "payload": {"message": TTS_END_MESSAGE}})


def streamed_riff_header(sample_rate: int = 16000, width: int = 2) -> bytes:
    """A 44-byte RIFF header with 0xFFFFFFFF sizes, as in the tts-stream doc sample (§2.3)."""
    return (
        b"RIFF"
        + struct.pack("<I", 0xFFFFFFFF)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * width, width, width * 8)
        + b"data"
        + struct.pack("<I", 0xFFFFFFFF)
    )


def wav(pcm: bytes, rate: int = 16000) -> bytes:
    header = (
        b"RIFF"
        + struct.pack("<I", 36 + len(pcm))
        + b"WAVE"
        + b"fmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
        + b"data"
        + struct.pack("<I", len(pcm))
    )
    return header + pcm


def tts_proto(mulaw: bool = False) -> HamsaProtocol:
    proto = HamsaProtocol()
    assert proto.receive_text(INFO) == [Greeting(GREETING_MESSAGE)]
    proto.tts_request("مرحبا بكم", speaker="Majd", dialect="ksa", mulaw=mulaw)
    return proto


def collect_audio(events: Sequence[object]) -> bytes:
    return b"".join(e.audio for e in events if isinstance(e, TtsAudio))


def test_tts_request_text_matches_documented_shape() -> None:
    proto = HamsaProtocol()
    frame = proto.tts_request("نص", speaker="Majd", dialect="ksa", language_id="ar")
    assert json.loads(frame) == {
        "type": "tts",
        "payload": {
            "text": "نص",
            "speaker": "Majd",
            "dialect": "ksa",
            "languageId": "ar",
            "mulaw": False,
        },
    }
    assert proto.in_flight is RequestKind.TTS


def test_tts_request_sample_rate_only_for_pcm() -> None:
    frame = HamsaProtocol().tts_request("x", speaker="s", dialect="d", sample_rate="16k")
    assert json.loads(frame)["payload"]["sampleRate"] == "16k"
    with pytest.raises(ValueError):
        HamsaProtocol().tts_request("x", speaker="s", dialect="d", mulaw=True, sample_rate="8k")


@pytest.mark.parametrize("text", ["", "   ", "a" * 2001])
def test_tts_text_bounds(text: str) -> None:
    proto = HamsaProtocol()
    with pytest.raises(ValueError):
        proto.tts_request(text, speaker="s", dialect="d")
    assert not proto.busy


def test_tts_text_of_2000_chars_is_accepted() -> None:
    HamsaProtocol().tts_request("a" * 2000, speaker="s", dialect="d")


def test_second_request_in_flight_is_refused() -> None:
    proto = tts_proto()
    with pytest.raises(RequestInFlight):
        proto.tts_request("again", speaker="s", dialect="d")
    with pytest.raises(RequestInFlight):
        proto.stt_request(wav(b"\x00\x00"))


def test_request_on_closed_socket_is_refused() -> None:
    proto = HamsaProtocol()
    proto.receive_close(1000, "")
    with pytest.raises(ProtocolClosed):
        proto.tts_request("x", speaker="s", dialect="d")


def test_tts_stream_raw_pcm() -> None:
    proto = tts_proto()
    assert proto.receive_text(ACK) == [TtsAck(TTS_ACK_MESSAGE)]
    assert proto.receive_bytes(b"\x01\x02" * 100) == [TtsAudio(b"\x01\x02" * 100)]
    assert proto.receive_text(END) == [TtsEnd(TTS_END_MESSAGE, 200)]
    assert not proto.busy


def test_tts_stream_riff_header_split_across_frames_and_odd_bytes() -> None:
    pcm = bytes(range(256)) * 4  # 1024 bytes, 512 samples
    stream = streamed_riff_header() + pcm
    # Cut the header itself and then the audio at odd offsets.
    cuts = [0, 5, 30, 47, 300, 301, len(stream)]
    proto = tts_proto()
    events: list[object] = list(proto.receive_text(ACK))
    for a, b in itertools.pairwise(cuts):
        got = proto.receive_bytes(stream[a:b])
        for event in got:
            assert isinstance(event, TtsAudio)
            assert len(event.audio) % 2 == 0  # whole samples only
        events.extend(got)
    events.extend(proto.receive_text(END))
    assert collect_audio(events) == pcm
    assert events[-1] == TtsEnd(TTS_END_MESSAGE, len(pcm))


def test_tts_mulaw_keeps_odd_lengths() -> None:
    proto = tts_proto(mulaw=True)
    proto.receive_text(ACK)
    events = proto.receive_bytes(b"\xff" * 161)
    assert collect_audio(events) == b"\xff" * 161


def test_tts_odd_trailing_byte_of_pcm_is_dropped_at_end() -> None:
    proto = tts_proto()
    proto.receive_text(ACK)
    events = proto.receive_bytes(b"\x01\x02\x03")
    events += proto.receive_text(END)
    assert collect_audio(events) == b"\x01\x02"
    assert events[-1] == TtsEnd(TTS_END_MESSAGE, 2)


def test_the_640_byte_failure_reads_as_a_normal_end() -> None:
    proto = tts_proto()
    proto.receive_text(ACK)
    events = proto.receive_bytes(bytes(640)) + proto.receive_text(END)
    assert events[-1] == TtsEnd(TTS_END_MESSAGE, 640)
    assert is_short_response(640, "مرحبا بكم في خدمة العملاء لدينا", False, 20.0)


@pytest.mark.parametrize(
    ("nbytes", "text", "mulaw", "ms_per_char", "short"),
    [
        (640, "a" * 30, False, 20.0, True),  # 20 ms for 30 chars
        (32000 * 2, "a" * 30, False, 20.0, False),  # 2 s
        (640, "a" * 30, True, 20.0, True),  # 80 ms of μ-law
        (8000, "a" * 30, True, 20.0, False),  # 1 s of μ-law
        (0, "a", False, 0.0, True),  # nothing is always short
        (2, "a" * 100, False, 0.0, False),  # check disabled
    ],
)
def test_short_response_threshold(
    nbytes: int, text: str, mulaw: bool, ms_per_char: float, short: bool
) -> None:
    assert is_short_response(nbytes, text, mulaw, ms_per_char) is short


def test_stt_request_and_plain_text_transcript() -> None:
    proto = HamsaProtocol()
    audio = wav(b"\x00\x01" * 16)
    frame = json.loads(proto.stt_request(audio, language="ar"))
    assert frame == {
        "type": "stt",
        "payload": {
            "audioBase64": base64.b64encode(audio).decode(),
            "language": "ar",
            "isEosEnabled": False,
            "eosThreshold": 0.3,
        },
    }
    assert proto.receive_text("[THINKING]") == [SttMarker("[THINKING]")]
    assert proto.busy  # a marker is not an answer
    assert proto.receive_text("  مرحبا  ") == [SttTranscript("مرحبا")]
    assert not proto.busy


def test_stt_refuses_raw_pcm() -> None:
    with pytest.raises(ValueError):
        HamsaProtocol().stt_request(b"\x00\x01" * 100)


def test_stt_transcript_that_looks_like_json_but_is_not_an_object() -> None:
    proto = HamsaProtocol()
    proto.stt_request(wav(b""))
    assert proto.receive_text("{not json") == [SttTranscript("{not json")]


def test_stt_guessed_response_envelope() -> None:
    proto = HamsaProtocol()
    proto.stt_request(wav(b""))
    msg = json.dumps({"type": "response", "payload": {"text": "نعم"}})
    assert proto.receive_text(msg) == [SttTranscript("نعم")]


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (END, Ignored("end without a TTS request")),
        (ACK, Ignored("ack without a TTS request")),
        ("hello", Ignored("plain text frame without an STT request")),
        ("{oops", Malformed("text frame is not a JSON object")),
        ("[1, 2]", Ignored("plain text frame without an STT request")),
        ('{"payload": {}}', Malformed("JSON frame without a type")),
        ('{"type": "mystery"}', Ignored("unexpected 'mystery' frame")),
    ],
)
def test_frames_out_of_place(frame: str, expected: object) -> None:
    proto = HamsaProtocol()
    assert proto.receive_text(frame) == [expected]
    assert not proto.busy


def test_binary_without_request_is_ignored() -> None:
    assert HamsaProtocol().receive_bytes(b"\x00" * 10) == [
        Ignored("binary frame without a TTS request")
    ]


@pytest.mark.parametrize(
    ("message", "kind", "fatal"),
    [
        ("Insufficient funds in project wallet", ErrorKind.QUOTA, True),
        ("You have reached your text-to-speech usage limit!", ErrorKind.QUOTA, True),
        ("Rate limit exceeded", ErrorKind.RATE_LIMIT, False),
        ("Invalid API key", ErrorKind.AUTH, True),
        ("Project inactive", ErrorKind.AUTH, True),
        ("Voice not owned by user", ErrorKind.AUTH, True),
        ("aborted", ErrorKind.ABORTED, False),
        ("Only WAV files are supported", ErrorKind.BAD_REQUEST, False),
        (
            "Error generating transcription: Audio format not supported",
            ErrorKind.BAD_REQUEST,
            False,
        ),
        ("boom", ErrorKind.SERVER, False),
    ],
)
def test_error_frame_classification(message: str, kind: ErrorKind, fatal: bool) -> None:
    assert classify_error_message(message) is kind
    proto = tts_proto()
    events = proto.receive_text(json.dumps({"type": "error", "payload": {"message": message}}))
    assert events == [ServerError(message, kind)]
    assert events[0].fatal is fatal  # type: ignore[union-attr]
    assert not proto.busy  # the error ends the request: no `end` follows


@pytest.mark.parametrize(
    ("code", "kind", "fatal"),
    [
        (1000, CloseKind.IDLE, False),
        (1001, CloseKind.GOING_AWAY, False),
        (4001, CloseKind.AUTH, True),
        (4003, CloseKind.WALLET, True),
        (4500, CloseKind.INTERNAL_AUTH, False),
        (1006, CloseKind.OTHER, False),
    ],
)
def test_close_codes(code: int, kind: CloseKind, fatal: bool) -> None:
    assert classify_close(code)[0] is kind
    proto = tts_proto()
    (event,) = proto.receive_close(code, "bye")
    assert isinstance(event, ServerClosed)
    assert (event.code, event.kind, event.fatal) == (code, kind, fatal)
    assert event.interrupted is RequestKind.TTS
    assert proto.closed and not proto.busy


def test_close_when_idle_interrupts_nothing() -> None:
    (event,) = HamsaProtocol().receive_close(4003, "")
    assert isinstance(event, ServerClosed)
    assert event.interrupted is None
    assert event.error_kind is ErrorKind.QUOTA


def test_one_socket_many_requests() -> None:
    proto = tts_proto()
    for _ in range(3):
        proto.receive_text(ACK)
        proto.receive_bytes(b"\x00\x00" * 8)
        assert isinstance(proto.receive_text(END)[-1], TtsEnd)
        proto.stt_request(wav(b""))
        assert proto.receive_text("نعم") == [SttTranscript("نعم")]
        proto.tts_request("again", speaker="s", dialect="d")
