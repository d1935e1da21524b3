"""X-Twilio-Signature: the §1.5 test vector, port variants, repeated and Unicode params,
and a cross-check against twilio-python's RequestValidator (dev extra ``twilio``)."""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import MultiDict

from gateway.telephony.twilio_signature import (
    compute_signature,
    url_variants,
    validate_signature,
)

TIMEOUT = 5.0  # seconds; the hypothesis deadline per example

# The classic docs example (docs/protocols/twilio.md §1.5).
TOKEN = "12345"
URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Caller": "+12349013030",
    "Digits": "1234",
    "From": "+12349013030",
    "To": "+18005551212",
}
EXPECTED = "0/KCTR6DLpKmkAf8muzZqo1nDgQ="

MEDIA_URL = "wss://gw.example.com/twilio/media"


def reference(token: str, message: str, digest: str = "sha1") -> str:
    """HMAC + base64 written out by hand from §1.5, independent of the module under test."""
    mac = hmac.new(token.encode(), message.encode(), getattr(hashlib, digest))
    return base64.b64encode(mac.digest()).decode()


def test_docs_vector() -> None:
    assert compute_signature(TOKEN, URL, PARAMS) == EXPECTED
    assert validate_signature(TOKEN, URL, PARAMS, EXPECTED)


def test_signed_string_is_sorted_names_then_values_without_separators() -> None:
    message = URL + "".join(name + PARAMS[name] for name in sorted(PARAMS))
    assert reference(TOKEN, message) == EXPECTED


@pytest.mark.parametrize(
    "bad",
    [
        "",
        None,
        EXPECTED[:-1],
        EXPECTED + "=",
        EXPECTED.lower(),
        "0/KCTR6DLpKmkAf8muzZqo1nDgQ\u0645",  # non-ASCII must not raise in compare_digest
    ],
)
def test_wrong_or_missing_signature(bad: str | None) -> None:
    assert not validate_signature(TOKEN, URL, PARAMS, bad)


def test_wrong_token_url_or_params() -> None:
    assert not validate_signature("54321", URL, PARAMS, EXPECTED)
    assert not validate_signature(TOKEN, URL + "&baz=3", PARAMS, EXPECTED)
    assert not validate_signature(TOKEN, URL, PARAMS | {"Digits": "1235"}, EXPECTED)
    assert not validate_signature(TOKEN, URL, PARAMS | {"Extra": ""}, EXPECTED)
    assert not validate_signature(
        TOKEN, URL, {k: v for k, v in PARAMS.items() if k != "To"}, EXPECTED
    )


def test_empty_token_never_validates() -> None:
    signature = compute_signature("", URL, PARAMS)
    assert not validate_signature("", URL, PARAMS, signature)


# ----------------------------------------------------------------------------- ports


@pytest.mark.parametrize(
    ("signed_url", "received_url"),
    [
        # Twilio signed without the port, we rebuilt the URL with it, and vice versa.
        ("https://mycompany.com/myapp.php?foo=1", "https://mycompany.com:443/myapp.php?foo=1"),
        ("https://mycompany.com:443/myapp.php?foo=1", "https://mycompany.com/myapp.php?foo=1"),
        ("http://mycompany.com/hook", "http://mycompany.com:80/hook"),
        ("http://mycompany.com:80/hook", "http://mycompany.com/hook"),
        # wss default port is 443, not twilio-python's 80.
        ("wss://gw.example.com:443/twilio/media", MEDIA_URL),
        (MEDIA_URL, "wss://gw.example.com:443/twilio/media"),
        ("ws://localhost:80/twilio/media", "ws://localhost/twilio/media"),
        # A non-default port removed (as twilio-python does).
        ("https://gw.example.com/hook", "https://gw.example.com:8443/hook"),
    ],
)
def test_port_variants(signed_url: str, received_url: str) -> None:
    signature = compute_signature(TOKEN, signed_url, PARAMS)
    assert validate_signature(TOKEN, received_url, PARAMS, signature)


@pytest.mark.parametrize(
    ("signed_url", "received_url"),
    [
        ("wss://gw.example.com:80/twilio/media", MEDIA_URL),  # twilio-python's add_port bug
        ("https://gw.example.com:80/hook", "https://gw.example.com/hook"),
        ("https://gw.example.com:8443/hook", "https://gw.example.com/hook"),
        ("https://other.example.com/hook", "https://gw.example.com/hook"),
    ],
)
def test_wrong_port_or_host_fails(signed_url: str, received_url: str) -> None:
    signature = compute_signature(TOKEN, signed_url, PARAMS)
    assert not validate_signature(TOKEN, received_url, PARAMS, signature)


def test_url_variants_keep_the_rest_of_the_url_verbatim() -> None:
    assert url_variants("https://u:p@h.example/a%2Fb?x=%20&y#f") == [
        "https://u:p@h.example/a%2Fb?x=%20&y#f",
        "https://u:p@h.example:443/a%2Fb?x=%20&y#f",
    ]
    assert url_variants("https://h.example:8443/p?") == [
        "https://h.example:8443/p?",
        "https://h.example/p?",
    ]
    assert url_variants("http://[::1]:8080/x") == ["http://[::1]:8080/x", "http://[::1]/x"]
    assert url_variants("ftp://h.example/x") == ["ftp://h.example/x"]
    assert url_variants("https://h.example:99999999/x") == ["https://h.example:99999999/x"]
    assert url_variants("not a url") == ["not a url"]


def test_empty_query_mark_is_part_of_the_signed_url() -> None:
    signature = compute_signature(TOKEN, "https://h.example/p?", {})
    assert validate_signature(TOKEN, "https://h.example/p?", {}, signature)
    assert not validate_signature(TOKEN, "https://h.example/p", {}, signature)


# --------------------------------------------------------------- media socket upgrade


def test_media_socket_upgrade_signs_the_bare_wss_url() -> None:
    # §1.5 (GUESSED strong): the upgrade is a GET with no body: the exact wss URL, no params.
    signature = reference(TOKEN, MEDIA_URL)
    assert compute_signature(TOKEN, MEDIA_URL, {}) == signature
    assert validate_signature(TOKEN, MEDIA_URL, {}, signature)
    assert validate_signature(TOKEN, "wss://gw.example.com:443/twilio/media", {}, signature)
    assert not validate_signature(TOKEN, "wss://gw.example.com/twilio/other", {}, signature)


# ---------------------------------------------------------------------- params forms


def test_repeated_params_values_sorted() -> None:
    params = {"b": "2", "a": ["z", "y", "x"]}
    expected = reference(TOKEN, URL + "ax" + "ay" + "az" + "b2")
    assert compute_signature(TOKEN, URL, params) == expected
    # Order of the values as received does not matter.
    assert validate_signature(TOKEN, URL, {"a": ("x", "z", "y"), "b": ["2"]}, expected)


def test_multidict_repeated_fields_are_all_signed() -> None:
    form = MultiDict([("a", "z"), ("b", "2"), ("a", "x")])
    expected = reference(TOKEN, URL + "ax" + "az" + "b2")
    assert compute_signature(TOKEN, URL, form) == expected
    assert validate_signature(TOKEN, URL, form, expected)


def test_identical_repeated_values_accept_both_readings() -> None:
    # twilio-python signs a value repeated verbatim once; Twilio's signer is undocumented.
    deduped = reference(TOKEN, URL + "a1")
    doubled = reference(TOKEN, URL + "a1a1")
    assert compute_signature(TOKEN, URL, {"a": ["1", "1"]}) == deduped
    assert validate_signature(TOKEN, URL, {"a": ["1", "1"]}, deduped)
    assert validate_signature(TOKEN, URL, {"a": ["1", "1"]}, doubled)
    assert not validate_signature(TOKEN, URL, {"a": ["1"]}, doubled)


def test_unicode_params_are_utf8() -> None:
    params = {"SpeechResult": "مرحبا بكم", "From": "+966500000000", "Body": "café ☕"}
    message = URL + "Body" + "café ☕" + "From+966500000000" + "SpeechResultمرحبا بكم"
    expected = reference(TOKEN, message)
    assert compute_signature(TOKEN, URL, params) == expected
    assert validate_signature(TOKEN, URL, params, expected)


def test_lone_surrogates_do_not_raise() -> None:
    params = {"x": "\udcff"}
    assert not validate_signature(TOKEN, URL, params, EXPECTED)
    assert isinstance(compute_signature(TOKEN, URL, params), str)


def test_sha256_variant() -> None:
    # §1.5 optional variant: same signed string, HMAC-SHA256 with the SharedKey.
    expected = reference("shared-key", URL + "a1", "sha256")
    assert compute_signature("shared-key", URL, {"a": "1"}, algorithm="sha256") == expected
    assert validate_signature("shared-key", URL, {"a": "1"}, expected, algorithm="sha256")
    assert not validate_signature("shared-key", URL, {"a": "1"}, expected)


# ------------------------------------------------------- cross-check with twilio-python


@pytest.fixture(scope="module")
def validator_class() -> Any:
    """twilio-python's RequestValidator. ``twilio`` is in the dev extras, so this never skips
    in CI; it is skipped, not failed, only where someone installed the runtime alone."""
    return pytest.importorskip("twilio.request_validator").RequestValidator


_text = st.text(
    alphabet=st.characters(exclude_categories=["Cs"]),  # UTF-8 encodable, as on the wire
    max_size=12,
)


def test_twilio_python_agrees_on_the_docs_vector(validator_class: Any) -> None:
    assert validator_class(TOKEN).compute_signature(URL, PARAMS) == EXPECTED
    assert validator_class(TOKEN).validate(URL, PARAMS, EXPECTED)


@settings(max_examples=150, deadline=TIMEOUT * 1000)
@given(
    token=_text.filter(bool),
    path=st.text(alphabet="abc/%20-_", max_size=10),
    port=st.sampled_from(["", ":443", ":8443"]),
    params=st.dictionaries(_text, st.lists(_text, min_size=1, max_size=3), max_size=4),
)
def test_twilio_python_agrees_on_https(
    validator_class: Any, token: str, path: str, port: str, params: dict[str, list[str]]
) -> None:
    url = f"https://gw.example.com{port}/{path}"
    form = MultiDict([(name, value) for name, values in params.items() for value in values])
    ours = compute_signature(token, url, form)
    assert ours == validator_class(token).compute_signature(url, form)
    # Every signature twilio-python accepts for https, we accept, and the reverse.
    for signed in {url, *url_variants(url)}:
        theirs = validator_class(token).compute_signature(signed, form)
        assert validate_signature(token, url, form, theirs) == validator_class(token).validate(
            url, form, theirs
        )


def test_twilio_python_wss_difference_is_only_the_port_80_bug(validator_class: Any) -> None:
    validator = validator_class(TOKEN)
    with_443 = compute_signature(TOKEN, "wss://gw.example.com:443/twilio/media", {})
    with_80 = compute_signature(TOKEN, "wss://gw.example.com:80/twilio/media", {})
    # twilio-python adds :80 to a wss URL; we add :443 (RFC 6455 §3).
    assert validator.validate(MEDIA_URL, {}, with_80)
    assert not validator.validate(MEDIA_URL, {}, with_443)
    assert validate_signature(TOKEN, MEDIA_URL, {}, with_443)
    assert not validate_signature(TOKEN, MEDIA_URL, {}, with_80)
