"""SentenceSplitter: tables of (streamed text, expected sentences), plus properties."""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.agent.sentences import SentenceSplitter

AR_1 = "مرحبا بك في خدمة العملاء."  # 25 characters: too short alone
AR_2 = "كيف يمكنني مساعدتك اليوم؟"
AR_LONG = "شكرا لاتصالك بنا، يسعدنا أن نخدمك في أي وقت تريده."

CASES: list[tuple[str, str, list[str]]] = [
    ("empty", "", []),
    ("short whole reply is sent alone", "Hi.", ["Hi."]),
    (
        "short Arabic fragment merges with the next",
        f"{AR_1} {AR_2} {AR_LONG}",
        [f"{AR_1} {AR_2}", AR_LONG],
    ),
    (
        "Arabic question mark ends a sentence",
        f"{AR_LONG} {AR_2} {AR_LONG}",
        [f"{AR_LONG}", f"{AR_2} {AR_LONG}"],
    ),
    (
        "english sentences",
        "Hello there, how are you doing today? I am fine, thank you very much!",
        ["Hello there, how are you doing today?", "I am fine, thank you very much!"],
    ),
    (
        "decimal is not a sentence end",
        "The price is 3.5 dinars for the whole package. Would you like to book it now?",
        ["The price is 3.5 dinars for the whole package.", "Would you like to book it now?"],
    ),
    (
        "ellipsis is one end, not three",
        "Well... I think that this is a very good idea. Let me check the details for you.",
        ["Well... I think that this is a very good idea.", "Let me check the details for you."],
    ),
    (
        "ellipsis at a cut counts once",
        "I am thinking about your question right now... The answer is yes, of course.",
        ["I am thinking about your question right now...", "The answer is yes, of course."],
    ),
    (
        "closing quote stays with its sentence",
        'He told me "the office opens at nine o\'clock." Then he left the building quickly.',
        ['He told me "the office opens at nine o\'clock."', "Then he left the building quickly."],
    ),
    (
        "urdu full stop",
        "یہ ایک بہت اچھا دن ہے اور ہم خوش ہیں۔ آپ کیسے ہیں میرے دوست آج؟",
        ["یہ ایک بہت اچھا دن ہے اور ہم خوش ہیں۔", "آپ کیسے ہیں میرے دوست آج؟"],
    ),
    (
        "newline ends a sentence",
        "First line of the reply without a mark\nSecond line that also has no mark",
        ["First line of the reply without a mark", "Second line that also has no mark"],
    ),
    (
        "whitespace runs are collapsed",
        "One   sentence   that is long\t enough to stand.  Next.",
        ["One sentence that is long enough to stand.", "Next."],
    ),
]


def run(splitter: SentenceSplitter, pieces: list[str]) -> list[str]:
    out: list[str] = []
    for piece in pieces:
        out += splitter.push(piece)
    return out + splitter.flush()


@pytest.mark.parametrize(
    ("text", "expected"), [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES]
)
def test_table_whole(text: str, expected: list[str]) -> None:
    assert run(SentenceSplitter(), [text]) == expected


@pytest.mark.parametrize(
    ("text", "expected"), [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES]
)
def test_table_char_by_char(text: str, expected: list[str]) -> None:
    assert run(SentenceSplitter(), list(text)) == expected


def test_sentence_is_returned_as_soon_as_it_is_decidable() -> None:
    s = SentenceSplitter()
    assert s.push("The first sentence is long enough to be sent.") == []  # "." may be "3.5"
    assert s.push(" The") == ["The first sentence is long enough to be sent."]
    assert s.push(" second one") == []
    assert s.flush() == ["The second one"]
    assert s.flush() == []  # flush resets


def test_decimal_split_across_chunks_is_not_cut() -> None:
    s = SentenceSplitter(min_chars=5)
    assert s.push("It costs 3.") == []
    assert s.push("5 dinars. Thanks") == ["It costs 3.5 dinars."]
    assert s.flush() == ["Thanks"]


def test_long_text_cuts_at_a_comma_only_past_half_max() -> None:
    clause = "هذا جزء من جملة طويلة جدا"  # 25 chars
    text = "، ".join([clause] * 8) + "."  # ~215 chars, commas only
    out = run(SentenceSplitter(min_chars=30, max_chars=120), [text])
    assert len(out) >= 2
    assert all(len(p) <= 120 for p in out)
    # Each early cut is at an Arabic comma, and only once the piece is >= 60 characters.
    for piece in out[:-1]:
        assert piece.endswith("،")
        assert len(piece) >= 60
    assert "".join(out).replace(" ", "") == text.replace(" ", "")


def test_hard_cut_at_a_space_when_there_is_no_punctuation() -> None:
    words = ["word"] * 80  # 399 characters, no punctuation at all
    text = " ".join(words)
    out = run(SentenceSplitter(max_chars=100), [text])
    assert all(len(p) <= 100 for p in out)
    assert all(p.split() == ["word"] * len(p.split()) for p in out)  # never inside a word
    assert " ".join(out) == text


def test_one_huge_word_is_cut_at_max_chars() -> None:
    text = "x" * 250
    assert run(SentenceSplitter(max_chars=100), [text]) == ["x" * 100, "x" * 100, "x" * 50]


def test_bad_limits_are_rejected() -> None:
    with pytest.raises(ValueError):
        SentenceSplitter(min_chars=50, max_chars=10)


# ------------------------------------------------------------------ properties

_alphabet = st.sampled_from(
    list("abc xyz") + list("مرحبا كيف") + list(".!?؟۔,،;؛\n…\"'0123456789") + ["  ", "..."]
)
_texts = st.lists(_alphabet, max_size=400).map("".join)


def _squash(text: str) -> str:
    return "".join(text.split())


def _chunked(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts})
    pieces, last = [], 0
    for p in points:
        pieces.append(text[last:p])
        last = p
    pieces.append(text[last:])
    return pieces


@settings(max_examples=300, deadline=None)
@example(text="a" * 38 + "  a", cuts=[], min_chars=39, max_chars=40)
@example(text="a  a\na", cuts=[], min_chars=1, max_chars=40)
@given(
    text=_texts,
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=40),
    min_chars=st.integers(1, 40),
    max_chars=st.integers(40, 120),
)
def test_chunking_never_changes_the_result(
    text: str, cuts: list[int], min_chars: int, max_chars: int
) -> None:
    whole = run(SentenceSplitter(min_chars, max_chars), [text])
    chunked = run(SentenceSplitter(min_chars, max_chars), _chunked(text, cuts))
    # Joining the outputs gives the input back, whatever the chunking (whitespace aside;
    # a hard cut inside a huge word is the only place a space is "added" by joining).
    assert _squash("".join(chunked)) == _squash(text)
    assert _squash("".join(whole)) == _squash(text)
    # Stronger: the sentences themselves do not depend on the chunking.
    assert chunked == whole
    for piece in whole:
        assert piece == piece.strip() and piece
        assert len(piece) <= max_chars
    # Every piece but the tail is at least min_chars long, except where it cannot be: a hard
    # cut at max_chars whose window ended in whitespace (found by hypothesis: 38 letters,
    # two spaces, a letter, with min 39 / max 40).
    for piece in whole[:-1]:
        if len(piece) < min_chars:
            after = re.search(re.escape(piece) + r"(\s+)", text)
            assert after is not None and len(piece) + len(after.group(1)) >= max_chars, piece
