"""Golden tests: replay real Asterisk 23.4.1 chan_websocket transcripts through the core.

The transcripts (``tests/fixtures/asterisk-23.4.1/*.jsonl``) record what a real Asterisk
sent: TEXT messages verbatim, BINARY messages by size and first bytes (we rebuild each one
from its head, padded to its size). The core must turn them into exactly the events the
call implies, and our own commands must match what the capture server sent.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from gateway.telephony.asterisk_ws import AsteriskWsProtocol, ControlFormat, Tracking
from gateway.telephony.events import (
    ALAW_8K,
    PCM16_8K,
    PCM16_16K,
    ULAW_8K,
    AudioFormat,
    CallEnded,
    CallerAudio,
    CallStarted,
    Dtmf,
    Hangup,
    InboundEvent,
    Malformed,
    MarkPlayed,
    OutboundFlow,
    PlaybackDrained,
    SetMark,
)
from tests.telephony.wire import data_in, out, text_in

TIMEOUT = 5.0
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "asterisk-23.4.1"


def load(name: str) -> list[dict[str, Any]]:
    path = FIXTURES / f"{name}.jsonl"
    if not path.is_file():
        pytest.fail(f"fixture missing: {path} (see tests/fixtures/README.md)")
    with path.open() as fh:
        records = [json.loads(line) for line in fh if line.strip()]
    return sorted(records, key=lambda r: float(r["t_ms"]))


def binary_payload(record: dict[str, Any]) -> bytes:
    head = bytes.fromhex(record.get("head", ""))
    size = int(record["size"])
    return (head + head[-1:] * size)[:size] if head else b"\x00" * size


def query_of(records: list[dict[str, Any]]) -> dict[str, str]:
    opened = next(r for r in records if r["event"] == "OPEN")
    return dict(parse_qsl(urlsplit(opened["path"]).query))


def replay(
    name: str, **kwargs: Any
) -> tuple[AsteriskWsProtocol, list[InboundEvent], dict[str, Any]]:
    """Feed every RX message to a fresh core; return it, all events, and the summary line."""
    records = load(name)
    proto = AsteriskWsProtocol(query=query_of(records), **kwargs)
    events: list[InboundEvent] = []
    summary: dict[str, Any] = {}
    for record in records:
        if record["event"] == "RX_TEXT":
            events += text_in(proto, record["text"])
        elif record["event"] == "RX_BINARY":
            events += data_in(proto, binary_payload(record))
        elif record["event"] == "CLOSED":
            summary = record
            proto.receive_eof(record["rcvd_close"])
            events += proto.events_received()
    return proto, events, summary


def channel_id_of(records: list[dict[str, Any]]) -> str:
    text = next(r["text"] for r in records if r["event"] == "RX_TEXT")
    if text.startswith("{"):
        return str(json.loads(text)["channel_id"])
    return str(dict(t.split(":", 1) for t in text.split()[1:])["channel_id"])


CALLS = [
    # name, format, codec frame size
    ("ulaw_local", ULAW_8K, 160),
    ("slin8_local", PCM16_8K, 320),
    ("slin16_local", PCM16_16K, 640),
    ("port8790_alaw_json", ALAW_8K, 160),
    ("json_local", ULAW_8K, 160),
    ("no_subprotocol", ULAW_8K, 160),
    ("noanswer", ULAW_8K, 160),
    ("uri_params", ULAW_8K, 160),
    ("plain_cmds_server_hangup", ULAW_8K, 160),
    ("server_close", ULAW_8K, 160),
]


@pytest.mark.parametrize(("name", "audio_format", "frame_size"), CALLS)
def test_call_replays_to_events(name: str, audio_format: AudioFormat, frame_size: int) -> None:
    records = load(name)
    proto, events, summary = replay(name)
    started = events[0]
    assert isinstance(started, CallStarted)
    assert started.call_id == channel_id_of(records)
    assert started.audio_format == audio_format
    assert proto.frame_size == frame_size
    for key, value in query_of(records).items():
        assert started.metadata[key] == value
    audio = [e for e in events if isinstance(e, CallerAudio)]
    assert len(audio) == summary["n_bin_in"]
    assert sum(len(a.audio) for a in audio) == summary["bytes_in"]
    assert isinstance(events[-1], CallEnded)
    # Nothing from a real Asterisk is malformed except the ERROR reply we provoked.
    malformed = [e for e in events if isinstance(e, Malformed)]
    assert all(m.reason == "asterisk_error" for m in malformed)


def test_uri_params_reach_metadata() -> None:
    _, events, _ = replay("uri_params")
    assert isinstance(events[0], CallStarted)
    assert events[0].metadata["call_id"] == "abc123" and events[0].metadata["lang"] == "en"


def test_json_call_uses_json_and_mark_media() -> None:
    proto, events, _ = replay("json_local", forward_variables=("DIALEDPEERNUMBER",))
    assert proto.control_format is ControlFormat.JSON and proto.tracking is Tracking.MARK_MEDIA
    assert isinstance(events[0], CallStarted)
    assert events[0].metadata["DIALEDPEERNUMBER"] == "wsconn/c(ulaw)f(json)"


def test_json_mark_round_trip_matches_capture() -> None:
    """Our MARK_MEDIA equals the capture's (as JSON) and the real echo resolves our mark."""
    records = load("json_local")
    proto = AsteriskWsProtocol()
    sent_mark = next(
        r["text"]
        for r in records
        if "MARK_MEDIA" in r.get("text", "") and r["event"] == "SENT_TEXT"
    )
    echo = next(r["text"] for r in records if "MEDIA_MARK_PROCESSED" in r.get("text", ""))
    drained = next(
        r["text"]
        for r in records
        if "QUEUE_DRAINED" in r.get("text", "") and r["event"] == "RX_TEXT"
    )
    text_in(proto, next(r["text"] for r in records if r["event"] == "RX_TEXT"))
    [command] = out(proto, SetMark("greeting"))
    assert isinstance(command, str) and json.loads(command) == json.loads(sent_mark)
    assert text_in(proto, echo) == [MarkPlayed("greeting", True)]
    assert text_in(proto, drained) == [PlaybackDrained()]


def test_plain_commands_transcript() -> None:
    records = load("plain_cmds_server_hangup")
    _proto, events, _ = replay("plain_cmds_server_hangup", mark_media=True)
    assert [e for e in events if isinstance(e, Dtmf)] == [
        Dtmf("1"),
        Dtmf("2"),
        Dtmf("3"),
        Dtmf("#"),
    ]
    errors = [e for e in events if isinstance(e, Malformed)]
    assert errors == [Malformed("asterisk_error", "SET_MEDIA_DIRECTION only supports JSON format.")]
    assert PlaybackDrained() in events
    # The real echo "MEDIA_MARK_PROCESSED m1" answers our first plain-text mark.
    fresh = AsteriskWsProtocol(mark_media=True)
    text_in(fresh, next(r["text"] for r in records if r["event"] == "RX_TEXT"))
    assert out(fresh, SetMark("x")) == ["MARK_MEDIA m1"]
    sent = [r["text"] for r in records if r["event"] == "SENT_TEXT"]
    assert "MARK_MEDIA m1" in sent and "HANGUP" in sent
    assert text_in(fresh, "MEDIA_MARK_PROCESSED m1") == [MarkPlayed("x", True)]
    assert out(fresh, Hangup()) == ["HANGUP"]


def test_server_close_dtmf() -> None:
    _, events, summary = replay("server_close")
    assert [e for e in events if isinstance(e, Dtmf)] == [Dtmf("1"), Dtmf("2"), Dtmf("3")]
    assert summary["rcvd_close"] == 1001 and events[-1] == CallEnded("remote_hangup")


def test_xoff_transcript_flow_events() -> None:
    _, events, _ = replay("xoff")
    flow = [e for e in events if isinstance(e, (OutboundFlow, PlaybackDrained))]
    assert flow == [OutboundFlow(True), OutboundFlow(False), PlaybackDrained()]


def test_huge_binary_close_code() -> None:
    _, events, summary = replay("huge_binary")
    assert summary["rcvd_close"] == 1009 and events[-1] == CallEnded("message_too_big")


@pytest.mark.parametrize("name", ["ulaw_local", "json_local", "plain_cmds_server_hangup"])
def test_transcript_split_into_fragments_is_robust(name: str) -> None:
    """Feeding each TEXT message cut in two gives Malformed/Ignored, never an exception."""
    for record in load(name):
        if record["event"] != "RX_TEXT":
            continue
        text = record["text"]
        for cut in range(1, len(text)):
            proto = AsteriskWsProtocol()
            text_in(
                proto,
                "MEDIA_START connection_id:c channel_id:1.1 format:ulaw optimal_frame_size:160",
            )
            for part in (text[:cut], text[cut:]):
                for event in text_in(proto, part):
                    assert not (isinstance(event, Malformed) and event.fatal)
