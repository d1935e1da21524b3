"""Golden tests: replay the real 2020 Twilio call log through TwilioMediaProtocol.

The fixture is Twilio's own capture (``twilio/media-streams`` ``node/connect-basic/
output.txt``, copied to tests/fixtures/twilio-connect-basic-2020.log): an echo server
that, after every 50 inbound media messages, sends the same audio back as one media message
followed by a mark. Node printed the messages as JavaScript object literals; a small
converter for that subset turns them into JSON at test time, so the log itself is the input.

"50 omitted media messages" lines are replayed as 50 copies of the one real media message
the log kept (its sequence numbers renumbered), so outbound audio is, as in the log, the
exact audio of the previous 50 inbound messages.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.telephony.events import (
    ULAW_8K,
    CallerAudio,
    CallStarted,
    Ignored,
    InboundEvent,
    MarkPlayed,
    PlayAudio,
    SetMark,
    Transport,
)
from gateway.telephony.twilio import TwilioMediaProtocol
from tests.telephony.wire import out, text_in

TIMEOUT = 5.0  # seconds; unused by these synchronous tests, kept for the suite's one pattern

# Checked into the repository (tests/fixtures/README.md says where it came from).
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "twilio-connect-basic-2020.log"

STREAM_SID = "9e7ee906-377b-408f-a852-eebfb834422a"
CALL_SID = "CA3c95a2a6bba5fde93a5dea01e388e8fb"
ACCOUNT_SID = "AC18fbd524d33614fba208030751dffdca"


# ------------------------------------------------------------- JS literal -> JSON

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<punct>[{}\[\]:,])
  | '(?P<single>(?:[^'\\]|\\.)*)'
  | (?P<double>"(?:[^"\\]|\\.)*")
  | (?P<number>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
  | (?P<ident>[A-Za-z_$][\w$]*)
    """,
    re.VERBOSE | re.DOTALL,
)
_JS_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "0": "\0"}


def js_literal_to_json(source: str) -> str:
    """JSON text for a Node ``util.inspect`` object literal (the subset the log uses).

    Handles bare identifier keys, single- and double-quoted strings, numbers, arrays,
    ``true``/``false``/``null``. Anything else raises ValueError.
    """
    out: list[str] = []
    position = 0
    while position < len(source):
        match = _TOKEN.match(source, position)
        if match is None:
            raise ValueError(f"unexpected {source[position : position + 20]!r} at {position}")
        position = match.end()
        kind = match.lastgroup
        if kind == "space":
            continue
        if kind == "single":
            raw = match.group("single")
            text = re.sub(r"\\(.)", lambda m: _JS_ESCAPES.get(m[1], m[1]), raw, flags=re.DOTALL)
            out.append(json.dumps(text, ensure_ascii=False))
        elif kind == "ident":
            word = match.group("ident")
            out.append(word if word in ("true", "false", "null") else json.dumps(word))
        else:
            out.append(match.group())
    return "".join(out)


@dataclass(frozen=True)
class LogEntry:
    line: int  # 1-based line number in the fixture where the entry starts
    source: str  # "From Twilio", "To Twilio" or "Server"
    text: str  # the line's text after the source
    message: dict[str, Any] | None  # the object printed with it, converted


_HEADER = re.compile(r"^\d{4}-\d\d-\d\dT[\d:.]+Z (From Twilio|To Twilio|Server): (.*)$")


def read_log(path: Path) -> list[LogEntry]:
    """Every timestamped entry of the log, with its (possibly multi-line) object parsed."""
    if not path.is_file():
        pytest.fail(f"fixture missing: {path} (see tests/fixtures/README.md)")
    lines = path.read_text(encoding="utf-8").splitlines()
    entries: list[LogEntry] = []
    index = 0
    while index < len(lines):
        header = _HEADER.match(lines[index])
        start_line = index + 1
        index += 1
        if header is None:
            continue
        source, text = header.groups()
        message = None
        brace = text.find("{")
        if brace >= 0:
            chunk = text[brace:]
            while _depth(chunk) > 0:
                chunk += "\n" + lines[index]
                index += 1
            message = json.loads(js_literal_to_json(chunk))
            text = text[:brace].rstrip()
        entries.append(LogEntry(start_line, source, text, message))
    return entries


def _depth(text: str) -> int:
    """Open braces minus close braces outside string literals."""
    depth = 0
    for match in _TOKEN.finditer(text):
        if match.lastgroup == "punct":
            depth += {"{": 1, "}": -1}.get(match.group(), 0)
    return depth


# -------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def log() -> list[LogEntry]:
    return read_log(FIXTURE)


def test_converter_subset() -> None:
    source = "{ a: 'x\\'y', b: [ 'c', 2 ], \"d\": { e: true, f: null }, g: -1.5 }"
    assert json.loads(js_literal_to_json(source)) == {
        "a": "x'y",
        "b": ["c", 2],
        "d": {"e": True, "f": None},
        "g": -1.5,
    }
    with pytest.raises(ValueError):
        js_literal_to_json("{ a: `template` }")


def test_fixture_is_read_whole(log: list[LogEntry]) -> None:
    messages = [(e.line, e.source, e.message["event"]) for e in log if e.message]
    assert messages == [
        (4, "From Twilio", "connected"),
        (5, "From Twilio", "start"),
        (18, "From Twilio", "media"),
        (31, "To Twilio", "media"),
        (32, "To Twilio", "mark"),
        (38, "To Twilio", "media"),
        (39, "To Twilio", "mark"),
        (44, "From Twilio", "mark"),
        (51, "To Twilio", "media"),
        (52, "To Twilio", "mark"),
        (57, "From Twilio", "mark"),
        (64, "To Twilio", "media"),
        (65, "To Twilio", "mark"),
        (70, "From Twilio", "mark"),
        (77, "To Twilio", "media"),
        (78, "To Twilio", "mark"),
    ]
    # §1.3: counters are strings, sampleRate and channels are ints.
    start = next(e.message for e in log if e.message and e.message["event"] == "start")
    assert start["sequenceNumber"] == "1"
    assert start["start"]["mediaFormat"] == {
        "encoding": "audio/x-mulaw",
        "sampleRate": 8000,
        "channels": 1,
    }


def _from_twilio(log: list[LogEntry], event: str) -> list[dict[str, Any]]:
    return [
        e.message
        for e in log
        if e.source == "From Twilio" and e.message and e.message["event"] == event
    ]


def test_connected_start_and_real_media(log: list[LogEntry]) -> None:
    protocol = TwilioMediaProtocol()
    [connected] = _from_twilio(log, "connected")
    [start] = _from_twilio(log, "start")
    [media] = _from_twilio(log, "media")
    assert text_in(protocol, json.dumps(connected)) == []
    assert protocol.connected
    assert text_in(protocol, json.dumps(start)) == [
        CallStarted(
            call_id=CALL_SID,
            transport=Transport.TWILIO,
            audio_format=ULAW_8K,
            stream_id=STREAM_SID,  # UUID-shaped, not MZ...: opaque
            metadata={
                "aCutomParameter": "aCustomValue that was set in TwiML",  # verbatim, typo included
                "account_sid": ACCOUNT_SID,
                "call_sid": CALL_SID,
                "stream_sid": STREAM_SID,
                "tracks": "inbound",
            },
        )
    ]
    [audio] = text_in(protocol, json.dumps(media))
    assert isinstance(audio, CallerAudio)
    assert len(audio.audio) == 160  # 20 ms of μ-law 8 kHz
    assert audio.audio == base64.b64decode(media["media"]["payload"])


def _add_unknown_fields(message: dict[str, Any]) -> dict[str, Any]:
    out = {
        k: (_add_unknown_fields(v) if isinstance(v, dict) and k != "customParameters" else v)
        for k, v in message.items()
    }
    out["futureField"] = {"x": [1, 2]}
    return out


JUNK = json.dumps({"event": "futureEvent", "streamSid": STREAM_SID, "sequenceNumber": "0"})


@pytest.mark.parametrize("junk", ["none", "unknown_fields", "unknown_events"])
def test_replay_whole_call(log: list[LogEntry], junk: str) -> None:
    protocol = TwilioMediaProtocol(chunk_ms=1000)  # the sample sends 1 s per message
    [real_media] = _from_twilio(log, "media")
    received: list[InboundEvent] = []
    sequence = 0  # Twilio's counter: "1" on start, +1 per later message (§1.3)

    def feed(message: dict[str, Any]) -> None:
        nonlocal sequence
        if "sequenceNumber" in message:
            sequence += 1
            if message["event"] != "media":
                # The replay reconstructs the omitted messages' count exactly: the log's
                # own numbers (start "1", echoes "103", "154", "205") must line up.
                assert message["sequenceNumber"] == str(sequence)
            message = message | {"sequenceNumber": str(sequence)}
        if junk == "unknown_fields":
            message = _add_unknown_fields(message)
        if junk == "unknown_events":
            assert text_in(protocol, JUNK) == [Ignored("unknown_event")]
        received.extend(text_in(protocol, json.dumps(message)))

    inbound_since_echo: list[bytes] = []
    marks_sent: list[str] = []
    for entry in log:
        if entry.source == "From Twilio" and entry.message is not None:
            before = len(received)
            feed(entry.message)
            new = received[before:]
            if entry.message["event"] == "media":
                inbound_since_echo += [e.audio for e in new if isinstance(e, CallerAudio)]
        elif entry.source == "From Twilio" and (
            omitted := re.match(r"(\d+) omitted media", entry.text)
        ):
            for _ in range(int(omitted.group(1))):
                before = len(received)
                feed(real_media)
                inbound_since_echo += [
                    e.audio for e in received[before:] if isinstance(e, CallerAudio)
                ]
        elif entry.source == "To Twilio" and entry.message is not None:
            expected = entry.message
            if expected["event"] == "media":
                # The sample echoes the previous 50 inbound messages' audio (log text says so);
                # the first second had 51 (the printed one, then 50 omitted).
                assert len(inbound_since_echo) in (50, 51)
                audio = b"".join(inbound_since_echo[-50:])
                inbound_since_echo.clear()
                [message] = out(protocol, PlayAudio(audio))
                ours = orjson.loads(message)
                logged = re.search(r"length of (\d+)", expected["media"]["payload"])
                assert logged is not None
                length = int(logged.group(1))
                assert len(ours["media"]["payload"]) == length == 10668  # 8000 bytes, base64
                assert base64.b64decode(ours["media"]["payload"]) == audio
                ours["media"]["payload"] = expected["media"]["payload"]
                assert ours == expected
            else:
                name = expected["mark"]["name"]
                [message] = out(protocol, SetMark(name))
                assert orjson.loads(message) == expected  # identical wire shape
                marks_sent.append(name)

    inbound = [e for e in received if isinstance(e, CallerAudio)]
    assert len(inbound) == 1 + 5 * 50
    assert all(len(e.audio) == 160 for e in inbound)
    assert [e for e in received if isinstance(e, MarkPlayed)] == [
        MarkPlayed("Repeat message 0", played=True),
        MarkPlayed("Repeat message 1", played=True),
        MarkPlayed("Repeat message 2", played=True),
    ]
    assert marks_sent == [f"Repeat message {i}" for i in range(5)]
    # The server closed the socket before the last two marks came back.
    assert protocol.marks_in_flight == ("Repeat message 3", "Repeat message 4")
    others = [e for e in received if not isinstance(e, CallerAudio | MarkPlayed | CallStarted)]
    assert others == []


def test_default_chunking_splits_the_logged_second_of_audio(log: list[LogEntry]) -> None:
    protocol = TwilioMediaProtocol()  # chunk_ms=100
    [start] = _from_twilio(log, "start")
    [media] = _from_twilio(log, "media")
    text_in(protocol, json.dumps(start))
    [audio] = text_in(protocol, json.dumps(media))
    assert isinstance(audio, CallerAudio)
    second = audio.audio * 50
    messages = out(protocol, PlayAudio(second))
    payloads = [base64.b64decode(orjson.loads(m)["media"]["payload"]) for m in messages]
    assert [len(p) for p in payloads] == [800] * 10
    assert b"".join(payloads) == second
