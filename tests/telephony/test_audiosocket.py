"""AudioSocket TLV core: table tests, every split offset, junk, golden transcripts, real TCP."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.telephony.audiosocket import (
    AUDIO_KIND_RATES,
    HANGUP_PACKET,
    HEADER,
    AudioSocketProtocol,
)
from gateway.telephony.events import (
    PCM16_8K,
    PCM16_16K,
    AudioFormat,
    CallEnded,
    CallerAudio,
    CallStarted,
    ClearAudio,
    Dtmf,
    Encoding,
    Hangup,
    InboundEvent,
    Malformed,
    PlayAudio,
    SetMark,
    Transport,
)
from gateway.telephony.pacing import OutboundAudio
from tests.telephony.wire import data_in, eof_in, out_bytes, reported

TIMEOUT = 5.0
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "asterisk-23.4.1"

UUID_HEX = "40325ec25efd4bd3805f53576e581d13"  # the reference's example (§3.3)
UUID_STR = str(uuid.UUID(UUID_HEX))
UUID_MSG = bytes.fromhex("010010" + UUID_HEX)
SLIN8 = bytes(range(160)) * 2
SLIN16 = bytes(range(128)) * 5


def msg(kind: int, payload: bytes) -> bytes:
    return HEADER.pack(kind, len(payload)) + payload


def started_8k() -> list[InboundEvent]:
    return [CallStarted(UUID_STR, Transport.AUDIOSOCKET, PCM16_8K)]


TABLE: list[tuple[str, bytes, list[InboundEvent]]] = [
    ("uuid only", UUID_MSG, []),
    ("uuid + slin8", UUID_MSG + msg(0x10, SLIN8), [*started_8k(), CallerAudio(SLIN8)]),
    (
        "uuid + slin16",
        UUID_MSG + msg(0x12, SLIN16),
        [CallStarted(UUID_STR, Transport.AUDIOSOCKET, PCM16_16K), CallerAudio(SLIN16)],
    ),
    (
        "dtmf before audio is held",
        UUID_MSG + msg(0x03, b"5") + msg(0x10, SLIN8),
        [*started_8k(), Dtmf("5"), CallerAudio(SLIN8)],
    ),
    (
        "dtmf after audio",
        UUID_MSG + msg(0x10, SLIN8) + msg(0x03, b"#"),
        [*started_8k(), CallerAudio(SLIN8), Dtmf("#")],
    ),
    (
        "short last piece",
        UUID_MSG + msg(0x10, SLIN8[:24]),
        [*started_8k(), CallerAudio(SLIN8[:24])],
    ),
    (
        "hangup kind",
        UUID_MSG + msg(0x10, SLIN8) + HANGUP_PACKET + msg(0x10, SLIN8),
        [*started_8k(), CallerAudio(SLIN8), CallEnded("remote_hangup")],
    ),
    (
        "error kind",
        UUID_MSG + msg(0x10, SLIN8) + msg(0xFF, b"\x04"),
        [*started_8k(), CallerAudio(SLIN8), CallEnded("remote_error")],
    ),
    (
        "unknown kind is skipped",
        UUID_MSG + msg(0x10, SLIN8) + msg(0x42, b"abc") + msg(0x10, SLIN8),
        [*started_8k(), CallerAudio(SLIN8), Malformed("unknown_kind", "0x42"), CallerAudio(SLIN8)],
    ),
    ("bad dtmf", UUID_MSG + msg(0x03, b"x"), [Malformed("bad_dtmf", "78")]),
    ("two-byte dtmf", UUID_MSG + msg(0x03, b"12"), [Malformed("bad_dtmf", "3132")]),
    ("empty audio", UUID_MSG + msg(0x10, b""), [Malformed("empty_audio")]),
    ("odd audio", UUID_MSG + msg(0x10, b"abc"), [Malformed("partial_sample", "3 bytes of PCM16")]),
    (
        "format change dropped",
        UUID_MSG + msg(0x10, SLIN8) + msg(0x12, SLIN16),
        [*started_8k(), CallerAudio(SLIN8), Malformed("format_change", "kind 0x12")],
    ),
    ("duplicate uuid", UUID_MSG + UUID_MSG, [Malformed("duplicate_uuid")]),
    ("audio first", msg(0x10, SLIN8), [Malformed("missing_uuid", "first kind 0x10", fatal=True)]),
    (
        "short uuid",
        bytes.fromhex("01000f") + bytes(15),
        [Malformed("bad_uuid", "first kind 0x01", fatal=True)],
    ),
    (
        "oversized",
        UUID_MSG + b"\x10\xff\xff",
        [Malformed("oversized_frame", "kind 0x10 length 65535", fatal=True)],
    ),
]


@pytest.mark.parametrize(("name", "wire", "expected"), TABLE, ids=[t[0] for t in TABLE])
def test_table_whole(name: str, wire: bytes, expected: list[InboundEvent]) -> None:
    assert data_in(AudioSocketProtocol(), wire) == expected


@pytest.mark.parametrize(("name", "wire", "expected"), TABLE, ids=[t[0] for t in TABLE])
def test_table_split_at_every_offset(name: str, wire: bytes, expected: list[InboundEvent]) -> None:
    for cut in range(1, len(wire)):
        proto = AudioSocketProtocol()
        assert data_in(proto, wire[:cut]) + data_in(proto, wire[cut:]) == expected, cut


@pytest.mark.parametrize(("name", "wire", "expected"), TABLE, ids=[t[0] for t in TABLE])
def test_table_byte_by_byte(name: str, wire: bytes, expected: list[InboundEvent]) -> None:
    proto = AudioSocketProtocol()
    events: list[InboundEvent] = []
    for i in range(len(wire)):
        events += data_in(proto, wire[i : i + 1])
    assert events == expected


@pytest.mark.parametrize(("kind", "rate"), sorted(AUDIO_KIND_RATES.items()))
def test_every_audio_kind(kind: int, rate: int) -> None:
    proto = AudioSocketProtocol()
    [start, audio] = data_in(proto, UUID_MSG + msg(kind, b"\x01\x00" * 10))
    assert start == CallStarted(UUID_STR, Transport.AUDIOSOCKET, AudioFormat(Encoding.PCM16, rate))
    assert audio == CallerAudio(b"\x01\x00" * 10)
    assert proto.frame(b"\x00\x00")[:1] == bytes((kind,))  # we answer in the call's kind


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=1, max_value=50))
def test_junk_never_raises(junk: bytes, step: int) -> None:
    proto = AudioSocketProtocol()
    for i in range(0, len(junk), step):
        for event in data_in(
            proto, UUID_MSG + junk[i : i + step] if i == 0 else junk[i : i + step]
        ):
            assert isinstance(event, (CallStarted, CallerAudio, Dtmf, CallEnded, Malformed))
    eof_in(proto)


def test_after_fatal_nothing_more() -> None:
    proto = AudioSocketProtocol()
    assert data_in(proto, b"\x10\x00\x02ab")[0].fatal  # type: ignore[union-attr]
    assert data_in(proto, UUID_MSG + msg(0x10, SLIN8)) == []
    assert eof_in(proto) == []


def test_eof() -> None:
    proto = AudioSocketProtocol()
    data_in(proto, UUID_MSG + msg(0x10, SLIN8) + b"\x10\x01")
    assert eof_in(proto) == [Malformed("truncated_frame", "2 bytes at EOF"), CallEnded()]
    assert eof_in(proto) == []
    clean = AudioSocketProtocol()
    data_in(clean, UUID_MSG)
    assert eof_in(clean) == [CallEnded("remote_hangup")]


def test_start_default_when_no_audio_comes() -> None:
    proto = AudioSocketProtocol()
    assert reported(proto, proto.start_default) == []  # no UUID yet
    data_in(proto, UUID_MSG + msg(0x03, b"1"))
    assert reported(proto, proto.start_default) == [*started_8k(), Dtmf("1")]
    assert reported(proto, proto.start_default) == []
    assert data_in(proto, msg(0x10, SLIN8)) == [CallerAudio(SLIN8)]


def test_send() -> None:
    proto = AudioSocketProtocol()
    data_in(proto, UUID_MSG + msg(0x12, SLIN16))
    assert out_bytes(proto, Hangup()) == b"\x00\x00\x00"
    assert out_bytes(proto, SetMark("m")) == b"" and out_bytes(proto, ClearAudio()) == b""
    wire = out_bytes(proto, PlayAudio(b"\x01\x00" * 700))  # 1400 B of slin16: 640 + 640 + 120
    parsed = []
    offset = 0
    while offset < len(wire):
        kind, length = HEADER.unpack_from(wire, offset)
        parsed.append((kind, length))
        offset += 3 + length
    assert parsed == [(0x12, 640), (0x12, 640), (0x12, 120)]
    assert out_bytes(proto, PlayAudio(b"")) == b""


def test_never_sends_forbidden_kinds() -> None:
    for kind in (0x01, 0x03, 0xFF, 0x42):
        with pytest.raises(ValueError):
            AudioSocketProtocol._pack(kind, b"x")
    with pytest.raises(ValueError):
        AudioSocketProtocol().frame(b"")  # zero-length audio is fatal for Asterisk


def test_silence_packet_is_cached_and_follows_the_kind() -> None:
    proto = AudioSocketProtocol()
    queue = OutboundAudio.for_format(PCM16_16K)
    proto.use_silence(queue.silence_frame)
    data_in(proto, UUID_MSG + msg(0x12, SLIN16))
    first = proto.frame(queue.next_frame())
    assert first[:3] == b"\x12\x02\x80" and first[3:] == bytes(640)
    assert proto.frame(queue.next_frame()) is first  # no allocation per idle tick


# --------------------------------------------------------------------------- golden


def load(name: str) -> list[dict[str, Any]]:
    path = FIXTURES / f"{name}.jsonl"
    if not path.is_file():
        pytest.fail(f"fixture missing: {path} (see tests/fixtures/README.md)")
    with path.open() as fh:
        return sorted((json.loads(x) for x in fh if x.strip()), key=lambda r: float(r["t_ms"]))


def rebuild_stream(records: list[dict[str, Any]]) -> bytes:
    """The byte stream Asterisk sent: raw UUID/DTMF verbatim, audio from header + head."""
    out = bytearray()
    for r in records:
        if r["event"] != "RX":
            continue
        if "raw" in r:
            out += bytes.fromhex(r["raw"])
        else:
            head = bytes.fromhex(r["head"]) if "head" in r else b""
            out += bytes.fromhex(r["hdr"]) + (head + bytes(int(r["len"])))[: int(r["len"])]
    return bytes(out)


GOLDEN = [
    ("as_app", PCM16_8K, []),
    ("as_app_dtmf_server_hangup", PCM16_8K, ["1", "2", "3", "#"]),
    ("as_chan_slin16", PCM16_16K, []),
    ("as_chan_server_close", PCM16_8K, ["1", "2", "3"]),
]


@pytest.mark.parametrize(("name", "fmt", "digits"), GOLDEN)
@pytest.mark.parametrize("chunk", [1, 3, 7, 321, 1400, 1 << 20])
def test_golden(name: str, fmt: AudioFormat, digits: list[str], chunk: int) -> None:
    records = load(name)
    stream = rebuild_stream(records)
    proto = AudioSocketProtocol()
    events: list[InboundEvent] = []
    for i in range(0, len(stream), chunk):
        events += data_in(proto, stream[i : i + chunk])
    events += eof_in(proto)
    uuid_record = next(r for r in records if r.get("kind") == "UUID")
    audio_records = [r for r in records if r["event"] == "RX" and "hdr" in r]
    assert events[0] == CallStarted(uuid_record["uuid"], Transport.AUDIOSOCKET, fmt)
    audio = [e for e in events if isinstance(e, CallerAudio)]
    assert [len(a.audio) for a in audio] == [int(r["len"]) for r in audio_records]
    assert audio[0].audio[:8] == bytes.fromhex(audio_records[0]["head"])
    assert [e.digit for e in events if isinstance(e, Dtmf)] == digits
    assert events[-1] == CallEnded("remote_hangup")
    assert not any(isinstance(e, Malformed) for e in events)


def test_golden_server_hangup_bytes_match() -> None:
    records = load("as_app_dtmf_server_hangup")
    sent = next(r for r in records if r["event"] == "SENT_HANGUP")
    assert out_bytes(AudioSocketProtocol(), Hangup()) == bytes.fromhex(sent["raw"])


# --------------------------------------------------------------------------- real TCP


async def test_over_real_tcp_with_split_writes() -> None:
    """An Asterisk-like client writes the golden stream in odd-sized pieces over TCP."""
    stream = rebuild_stream(load("as_app_dtmf_server_hangup"))
    got: list[InboundEvent] = []
    done = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        proto = AudioSocketProtocol()
        while data := await reader.read(997):
            got.extend(data_in(proto, data))
            if any(isinstance(e, Dtmf) and e.digit == "#" for e in got):
                writer.write(out_bytes(proto, Hangup()))  # hang up like the transcript's server
                await writer.drain()
        got.extend(eof_in(proto))
        writer.close()
        done.set()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        sizes = [1, 2, 3, 5, 300, 7, 1000]
        offset = 0
        i = 0
        while offset < len(stream):
            writer.write(stream[offset : offset + sizes[i % len(sizes)]])
            await writer.drain()
            offset += sizes[i % len(sizes)]
            i += 1
        reply = await asyncio.wait_for(reader.readexactly(3), TIMEOUT)
        assert reply == HANGUP_PACKET  # Asterisk closes TCP on 00 00 00
        writer.close()
        await asyncio.wait_for(done.wait(), TIMEOUT)
    assert isinstance(got[0], CallStarted)
    assert [e.digit for e in got if isinstance(e, Dtmf)] == ["1", "2", "3", "#"]
    assert got[-1] == CallEnded("remote_hangup")
    assert not any(isinstance(e, Malformed) for e in got)


# ------------------------------------------- G.711 mislabelled as slin (issue 10 item 7)


def _g711_packets() -> tuple[list[bytes], list[bytes], bytes]:
    """20 ms packets of the same speech as μ-law, as A-law (160 B) and one slin8 (320 B)."""
    from telecodecs.g711 import pcm16_to_alaw, pcm16_to_ulaw
    from tests.agent.audio import voiced

    pcm = voiced(0.2)
    ulaw, alaw = pcm16_to_ulaw(pcm), pcm16_to_alaw(pcm)
    return (
        [ulaw[i : i + 160] for i in range(0, len(ulaw), 160)],
        [alaw[i : i + 160] for i in range(0, len(alaw), 160)],
        pcm[:320],
    )


@pytest.mark.parametrize("law", ["ulaw", "alaw"])
def test_g711_labelled_slin_is_detected_and_never_reaches_the_call(law: str) -> None:
    """``Dial(AudioSocket/.../c(ulaw))``: 160-byte kind-0x10 payloads that are G.711."""
    ulaw, alaw, _ = _g711_packets()
    packets = ulaw if law == "ulaw" else alaw
    proto = AudioSocketProtocol()
    events = data_in(proto, UUID_MSG + b"".join(msg(0x10, p) for p in packets))
    assert events[0] == started_8k()[0]  # the call starts (and can hear the reason spoken)
    rest = events[1:]
    assert len(rest) == len(packets)
    assert all(isinstance(e, Malformed) and e.reason == "not_slin" for e in rest)
    assert not any(isinstance(e, CallerAudio) for e in events)
    # Once established, every 0x10 packet of the call is refused, even a 320-byte one.
    [late] = data_in(proto, msg(0x10, SLIN8))
    assert isinstance(late, Malformed) and late.reason == "not_slin"


def test_real_slin_in_10ms_packets_is_not_mistaken_for_g711() -> None:
    """A 10 ms phone gives 160-byte *slin* packets: content, not size alone, decides."""
    from tests.agent.audio import noise, voiced

    pcm = voiced(0.5) + noise(0.5, rms=2000.0)
    proto = AudioSocketProtocol()
    events = data_in(
        proto, UUID_MSG + b"".join(msg(0x10, pcm[i : i + 160]) for i in range(0, len(pcm), 160))
    )
    assert events[0] == started_8k()[0]
    assert all(isinstance(e, CallerAudio) for e in events[1:]) and len(events) == 101


def test_g711_digital_silence_passes_until_speech_shows_the_mislabel() -> None:
    ulaw, _, _ = _g711_packets()
    proto = AudioSocketProtocol()
    silent = b"\xff" * 160  # μ-law silence reads as PCM16 -1: harmless, undetectable
    events = data_in(proto, UUID_MSG + msg(0x10, silent) + msg(0x10, ulaw[3]))
    assert events[1] == CallerAudio(silent)
    assert isinstance(events[2], Malformed) and events[2].reason == "not_slin"
