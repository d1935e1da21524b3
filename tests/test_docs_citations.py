"""The repository stands alone: every protocol citation resolves inside it, nothing points outside.

Code cites wire facts as ``docs/protocols/<name>.md §N`` (or, in a module that names one
protocol file, a bare ``§N`` meaning that file). These tests fail when a citation dangles (the
file or the numbered heading is missing) and when code, tests or docs point at material that
lives beside the repository (``../shared``) instead of in it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "protocols"
PROTOCOLS = ("twilio", "asterisk", "hamsa", "agent-webhook")

# A numbered heading: "## 1. Realtime WebSocket", "### 1.4 TTS", "### 6.3 chan_websocket ...".
HEADING = re.compile(r"^#{1,6}\s+(\d+(?:\.\d+)*)\.?\s", re.MULTILINE)
SECTION = re.compile(r"§\s*(\d+(?:\.\d+)*)")
# "docs/protocols/twilio.md §1.5", "``hamsa.md`` §1.4", "asterisk.md §2 and §7", "§1.4, §2.3".
EXPLICIT = re.compile(
    r"(?:docs/protocols/)?\b(" + "|".join(PROTOCOLS) + r")\.md`{0,2}\)?[,;:]?"
    r"((?:\s*§\s*\d+(?:\.\d+)*(?:\s*(?:,|and|or))?)+)"
)
NAMED = re.compile(r"\b(" + "|".join(PROTOCOLS) + r")\.md\b")
# Sections of other documents (RFC 6455 §7.4.1, XML 1.0 §2.2) are not ours to resolve.
FOREIGN = re.compile(r"(?:RFC\s*\d+|XML\s*1\.\d)\s*$")


def sections(name: str) -> set[str]:
    """The section numbers of ``docs/protocols/<name>.md`` (its numbered headings)."""
    return set(HEADING.findall((DOCS / f"{name}.md").read_text(encoding="utf-8")))


def python_files(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


def explicit_citations(text: str) -> list[tuple[str, str]]:
    """(protocol, section) for every ``<protocol>.md §N`` in ``text``."""
    found = []
    for match in EXPLICIT.finditer(text):
        found += [(match.group(1), number) for number in SECTION.findall(match.group(2))]
    return found


def bare_sections(text: str) -> list[str]:
    """Every ``§N`` that is not a section of an RFC or of XML."""
    return [
        m.group(1) for m in SECTION.finditer(text) if not FOREIGN.search(text[: m.start()][-12:])
    ]


def test_every_protocol_doc_exists_with_numbered_sections() -> None:
    for name in PROTOCOLS:
        assert (DOCS / f"{name}.md").is_file(), f"docs/protocols/{name}.md is missing"
        assert sections(name), f"docs/protocols/{name}.md has no numbered headings"


def test_the_citation_parser_sees_what_the_code_writes() -> None:
    # The forms used in the code base; if the parser missed them, the next test would pass
    # without checking anything.
    assert explicit_citations("(docs/protocols/twilio.md §1.5, VERIFIED") == [("twilio", "1.5")]
    assert explicit_citations("``docs/protocols/asterisk.md`` §2 and §7 (") == [
        ("asterisk", "2"),
        ("asterisk", "7"),
    ]
    assert explicit_citations("(hamsa.md §1.4)") == [("hamsa", "1.4")]
    assert bare_sections("RFC 6455 §7.4.1 close codes; XML 1.0 §2.2; see §1.3") == ["1.3"]
    assert "9.9" not in sections("twilio")


def test_explicit_citations_resolve() -> None:
    """Every ``<protocol>.md §N`` anywhere in code or tests names a heading that exists."""
    known = {name: sections(name) for name in PROTOCOLS}
    dangling = []
    checked = 0
    for path in python_files("gateway", "codecs", "tests", "bench", "scripts"):
        for name, number in explicit_citations(path.read_text(encoding="utf-8")):
            checked += 1
            if number not in known[name]:
                dangling.append(f"{path.relative_to(ROOT)}: {name}.md §{number}")
    assert checked >= 10, "expected the code to cite the protocol docs"
    assert not dangling, "citations with no such section:\n" + "\n".join(dangling)


def test_bare_section_citations_in_the_code_resolve() -> None:
    """In gateway/ and codecs/, a bare ``§N`` resolves in a protocol file the module names."""
    known = {name: sections(name) for name in PROTOCOLS}
    problems = []
    for path in python_files("gateway", "codecs"):
        text = path.read_text(encoding="utf-8")
        numbers = bare_sections(text)
        if not numbers:
            continue
        named = set(NAMED.findall(text))
        where = path.relative_to(ROOT)
        if not named:
            problems.append(f"{where}: cites §{numbers[0]} but names no docs/protocols file")
            continue
        for number in numbers:
            if not any(number in known[name] for name in named):
                problems.append(f"{where}: §{number} is in none of {sorted(named)}")
    assert not problems, "\n".join(problems)


OUTSIDE = ("../" + "shared", "/work/" + "shared", "shared/" + "protocols", "shared/" + "fixtures")


@pytest.mark.parametrize("pattern", OUTSIDE)
def test_nothing_points_outside_the_repository(pattern: str) -> None:
    paths = python_files("gateway", "codecs", "tests", "bench", "scripts")
    paths += [ROOT / "README.md", ROOT / "Makefile", ROOT / ".ci" / "run", ROOT / "pyproject.toml"]
    paths += sorted((ROOT / "docs").rglob("*.md")) + sorted((ROOT / "tests").rglob("*.md"))
    offenders = [
        str(p.relative_to(ROOT))
        for p in paths
        if p != Path(__file__).resolve() and pattern in p.read_text(encoding="utf-8")
    ]
    assert not offenders, f"{pattern!r} found in: {offenders}"
