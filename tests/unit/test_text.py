"""User text made safe to pass on."""

from __future__ import annotations

import pytest

from ajr_agent.domain.text import printable, visible


@pytest.mark.parametrize(
    ("text", "shown"),
    [("a\nb\r\tc", "a?b??c"), ("x\u2028y\u2029z\x85", "x?y?z?"), ("\x1f\x1e\x0c\x7f", "????"),
     ("\u202eevil", "?evil"), ("é ü 中", "é ü 中"), ("a\u00a0b", "a b")],
)  # fmt: skip
def test_no_character_that_breaks_or_hides_a_line_gets_through(text: str, shown: str) -> None:
    assert printable(text, 100) == shown
    assert len(printable(text, 100).splitlines()) <= 1


def test_long_text_is_cut_with_a_marker() -> None:
    assert printable("x" * 300, 250) == "x" * 249 + "…"
    assert printable("short", 250) == "short"


def test_a_caller_chooses_the_mark_and_keeps_its_own_invisible_marks() -> None:
    assert visible("a\u200bb\u2028c\x00", " ", keep="\u200b") == "a\u200bb c "
    assert visible("a\u200bb") == "a?b"
