"""The sample dialplan (deploy/asterisk/extensions.conf), parsed and checked against the rules
chan_websocket and AudioSocket impose (docs/protocols/asterisk.md §2.3, §3, §7) and the
gateway's own routes, so the README's "continue the dialplan after Dial()" stays true.
"""

from __future__ import annotations

import configparser
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.server.asterisk_routes import CALL_ID_PARAM, CALLS_PATH, TRANSFER_TARGET
from gateway.telephony.asterisk_ws import audio_format_for
from gateway.telephony.events import Encoding

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "asterisk"


@dataclass(frozen=True)
class Step:
    context: str
    exten: str
    label: str
    app: str
    args: str


def _split_app(text: str) -> tuple[str, str]:
    name, _, rest = text.partition("(")
    assert rest.endswith(")"), text
    return name.strip(), rest[:-1]


def parse(path: Path) -> tuple[dict[str, str], list[Step]]:
    """``[globals]`` and every ``exten =>`` / ``same =>`` step, in file order."""
    globals_: dict[str, str] = {}
    steps: list[Step] = []
    context, exten = "", ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split(";", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            context = line.strip("[]")
            continue
        if context == "globals":
            name, _, value = line.partition("=")
            globals_[name.strip()] = value.strip()
            continue
        kind, _, rest = line.partition("=>")
        kind, rest = kind.strip(), rest.strip()
        if kind == "exten":
            exten, _, rest = rest.partition(",")
            _priority, _, rest = rest.partition(",")
            label = ""
        else:
            assert kind == "same", line
            priority, _, rest = rest.partition(",")
            match = re.fullmatch(r"n(?:\((\w+)\))?", priority)
            assert match, line
            label = match.group(1) or ""
        app, args = _split_app(rest)
        steps.append(Step(context, exten, label, app, args))
    return globals_, steps


def top_level_args(args: str) -> list[str]:
    """Split application arguments on commas outside parentheses and ${...}."""
    out, depth, current = [], 0, ""
    for char in args:
        if char in "({":
            depth += 1
        elif char in ")}":
            depth -= 1
        if char == "," and depth == 0:
            out.append(current)
            current = ""
        else:
            current += char
    out.append(current)
    return out


GLOBALS, STEPS = parse(DEPLOY / "extensions.conf")


def dials(tech: str) -> list[tuple[int, Step]]:
    return [
        (i, s) for i, s in enumerate(STEPS) if s.app == "Dial" and s.args.startswith(tech + "/")
    ]


def test_every_gateway_dial_has_the_g_option() -> None:
    """Without g, nothing after Dial() runs: an agent transfer would hang the caller up."""
    gateway_dials = dials("WebSocket") + dials("AudioSocket")
    assert gateway_dials
    for _, step in gateway_dials:
        args = top_level_args(step.args)
        assert len(args) >= 3 and "g" in args[2], step


def test_websocket_dial_string_follows_chan_websocket_rules() -> None:
    client = configparser.ConfigParser(inline_comment_prefixes=(";",))
    client.read(DEPLOY / "websocket_client.conf")
    keys_seen: set[tuple[str, ...]] = set()
    for _, step in dials("WebSocket"):
        dial_string = top_level_args(step.args)[0]
        _, connection, options = dial_string.split("/", 2)
        assert connection in client.sections()  # the websocket_client.conf section
        found = dict(re.findall(r"([cfv])\(((?:[^()]|\([^()]*\))*)\)", options))
        fmt = audio_format_for(found["c"])
        assert fmt is not None  # a codec the gateway takes
        assert found.get("f", "json") in ("json", "plain-text")
        params = dict(p.split("=", 1) for p in top_level_args(found["v"]))
        # §2.3: each v() value must already be URI-encoded.
        assert all(
            v.startswith("${URIENCODE(") or v.startswith("${CALLERNUM") for v in params.values()
        )
        assert params[CALL_ID_PARAM] == "${URIENCODE(${UNIQUEID})}"
        keys_seen.add(tuple(sorted(params)))
    # §7, 23.4.1 bug: v() sticks to the connection, so every call passes the same keys.
    assert len(keys_seen) == 1


def test_after_dial_the_dialplan_fetches_the_transfer_target_from_the_gateway() -> None:
    [(index, dial)] = dials("WebSocket")
    after = [s for s in STEPS[index + 1 :] if s.context == dial.context and s.exten == dial.exten]
    apps = [(s.app, s.args) for s in after]
    auth = next(i for i, (app, args) in enumerate(apps) if args.startswith("CURLOPT(userpwd)="))
    assert apps[auth][1] == "CURLOPT(userpwd)=${HAMSA_GW_AUTH}"
    user, _, password = GLOBALS["HAMSA_GW_AUTH"].partition(":")
    assert user and password
    curls = {
        m.group(1): m.group(2)
        for _, args in apps
        if (m := re.fullmatch(r"(\w+)=\$\{CURL\(\$\{HAMSA_GW_URL\}(\S+)\)\}", args))
    }
    route = CALLS_PATH.replace("{call_id}", "${UNIQUEID}")
    assert curls["HAMSA_TRANSFER"] == route + "/transfer"
    assert curls["HAMSA_OUTCOME"] == route + "/outcome"
    assert list(curls) and auth < min(
        i for i, (_, args) in enumerate(apps) if "CURL(" in args and "CURLOPT" not in args
    )
    goto = next(args for app, args in apps if app == "Goto")
    assert goto == "hamsa-transfer,${HAMSA_TRANSFER},1"
    assert any(app == "GotoIf" and '"${HAMSA_TRANSFER}" = ""' in args for app, args in apps)


def test_after_audiosocket_the_dialplan_fetches_the_transfer_target_by_uuid() -> None:
    """Both AudioSocket forms (the application and Dial) go on to [hamsa-transfer] with the
    target the gateway stored under the UUID the dialplan generated (its call id)."""
    legs = [
        (i, s)
        for i, s in enumerate(STEPS)
        if s.app == "AudioSocket" or (s.app == "Dial" and s.args.startswith("AudioSocket/"))
    ]
    assert len(legs) == 2
    route = CALLS_PATH.replace("{call_id}", "${HAMSA_UUID}") + "/transfer"
    for index, leg in legs:
        assert "${HAMSA_UUID}" in leg.args
        after = [s for s in STEPS[index + 1 :] if (s.context, s.exten) == (leg.context, leg.exten)]
        apps = [(s.app, s.args) for s in after]
        assert ("Set", "CURLOPT(userpwd)=${HAMSA_GW_AUTH}") in apps
        assert ("Set", f"HAMSA_TRANSFER=${{CURL(${{HAMSA_GW_URL}}{route})}}") in apps
        assert ("Goto", "hamsa-transfer,${HAMSA_TRANSFER},1") in apps


def test_transfer_context_handles_unknown_targets_and_the_allowed_charset() -> None:
    extens = {s.exten for s in STEPS if s.context == "hamsa-transfer"}
    assert "i" in extens  # an unknown target lands on the invalid-extension handler
    for exten in extens - {"i"}:
        literal = exten.lstrip("_").rstrip(".").replace("X", "1")
        assert TRANSFER_TARGET.fullmatch(literal), exten


def test_audiosocket_is_dialled_with_slin_only() -> None:
    """AudioSocket carries slin only: c(ulaw) makes Asterisk label G.711 as slin (§3.3)."""
    for _, step in dials("AudioSocket"):
        dial_string = top_level_args(step.args)[0]
        match = re.search(r"/c\(([^)]*)\)", dial_string)
        codec = match.group(1) if match else "slin"
        fmt = audio_format_for(codec)
        assert fmt is not None and fmt.encoding is Encoding.PCM16, codec


@pytest.mark.parametrize("target", ["operator", "+15551234567", "100", "sales_2"])
def test_sample_targets_are_accepted(target: str) -> None:
    assert TRANSFER_TARGET.fullmatch(target)


@pytest.mark.parametrize(
    "target", ["100,,U(evil)", "PJSIP/100", "${SHELL(id)}", "a b", "", "sip:x@y", "x" * 81]
)
def test_dial_string_injection_is_refused(target: str) -> None:
    assert not TRANSFER_TARGET.fullmatch(target)
