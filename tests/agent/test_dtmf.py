"""DtmfCollector: digits aggregated by terminator, pause or count; time is passed in."""

from __future__ import annotations

from gateway.agent.dtmf import DtmfCollector


def test_terminator_ends_the_entry_without_itself() -> None:
    c = DtmfCollector()
    assert c.push("1", 0.0) is None
    assert c.push("2", 0.5) is None
    assert c.pending == "12"
    assert c.push("#", 1.0) == "12"
    assert c.pending == "" and c.deadline() is None


def test_pause_ends_the_entry() -> None:
    c = DtmfCollector(inter_digit_timeout_ms=1500)
    c.push("4", 10.0)
    c.push("2", 11.0)
    assert c.deadline() == 12.5
    assert c.poll(12.49) is None
    assert c.poll(12.5) == "42"
    assert c.poll(20.0) is None


def test_late_poll_returns_the_old_entry_and_starts_a_new_one() -> None:
    c = DtmfCollector(inter_digit_timeout_ms=1000)
    c.push("1", 0.0)
    assert c.push("2", 5.0) == "1"  # the pause had passed: "1" was complete
    assert c.pending == "2"
    assert c.push("#", 5.1) == "2"
    c.push("3", 10.0)
    assert c.push("#", 20.0) == "3"  # a terminator after the pause ends nothing new
    assert c.pending == ""


def test_lone_terminator_is_returned() -> None:
    c = DtmfCollector(terminators="#*")
    assert c.push("*", 0.0) == "*"
    assert c.push("#", 0.1) == "#"


def test_max_digits_and_unknown_keys() -> None:
    c = DtmfCollector(max_digits=3)
    assert c.push("1", 0) is None
    assert c.push("x", 0) is None and c.ignored == 1
    assert c.push("2", 0) is None
    assert c.push("a", 0) == "12A"  # "A" is a DTMF key too; the third digit ends the entry
    assert c.push("9", 0) is None
    assert c.flush() == "9"
    assert c.flush() is None


def test_without_a_terminator_only_the_pause_ends_entries() -> None:
    c = DtmfCollector(inter_digit_timeout_ms=200, terminators="")
    assert c.push("#", 0.0) is None
    assert c.poll(0.2) == "#"
