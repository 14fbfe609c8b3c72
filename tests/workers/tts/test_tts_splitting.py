"""Sentence splitting: every piece fits the vendor's limit (characters, UTF-8 bytes, Han counted
double), order and text are kept, and sentence ends are preferred over clause marks and spaces."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.tts.splitting import TextLimit, sentences, split_text


def squash(text: str) -> str:
    """Text without whitespace: what must survive splitting unchanged."""
    return "".join(text.split())


def test_sentences_cut_after_terminal_punctuation_and_keep_everything() -> None:
    text = "Hello there. This is a test! Is it? Yes, e.g. this one. 你好。今天天气很好！\n\nNew para"
    parts = sentences(text)
    assert "".join(parts) == text
    assert parts == ["Hello there. ", "This is a test! ", "Is it? ", "Yes, e.g. this one. ",
                     "你好。", "今天天气很好！\n\n", "New para"]


def test_short_text_is_one_piece_and_whitespace_only_is_none() -> None:
    assert split_text("  Hello world.  ", TextLimit(100)) == ["Hello world."]
    assert split_text(" \n\t ", TextLimit(100)) == []


def test_pieces_pack_whole_sentences_up_to_the_limit() -> None:
    text = "One two three. Four five six. Seven eight nine. Ten."
    assert split_text(text, TextLimit(30)) == ["One two three. Four five six.", "Seven eight nine. Ten."]


def test_long_sentence_cut_at_clause_marks_then_spaces_then_anywhere() -> None:
    clauses = "alpha beta, gamma delta, epsilon zeta, eta theta"
    assert split_text(clauses, TextLimit(26)) == ["alpha beta, gamma delta,", "epsilon zeta, eta theta"]
    words = "aaaa bbbb cccc dddd eeee"
    assert split_text(words, TextLimit(10)) == ["aaaa bbbb", "cccc dddd", "eeee"]
    assert split_text("x" * 25, TextLimit(10)) == ["x" * 10, "x" * 10, "x" * 5]


def test_byte_limit_counts_utf8_and_never_cuts_a_character() -> None:
    text = "你好世界。" * 150  # 750 characters, 2250 bytes
    pieces = split_text(text, TextLimit(300, max_bytes=1024))
    assert all(len(p.encode()) <= 1024 and len(p) <= 300 for p in pieces)
    assert "".join(pieces) == text
    assert len(pieces) == 3


def test_han_characters_count_double_when_the_vendor_bills_them_so() -> None:
    limit = TextLimit(20, han_weight=2)
    assert limit.units("你好ab") == 6
    pieces = split_text("你好。" * 30, limit)
    assert all(limit.units(p) <= 20 for p in pieces)
    assert pieces[0] == "你好。你好。你好。你好。"


def test_limit_must_allow_something() -> None:
    with pytest.raises(ValueError):
        TextLimit(0)
    with pytest.raises(ValueError):
        TextLimit(10, max_bytes=3)
    with pytest.raises(ValueError):
        TextLimit(1, han_weight=2)


@settings(max_examples=150, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(list("ab c.,!?;:\n你好。é€🙂")), max_size=400),
       max_chars=st.integers(2, 60), max_bytes=st.one_of(st.none(), st.integers(4, 120)),
       han_weight=st.sampled_from([1, 2]))
def test_fuzz_pieces_fit_and_keep_all_text_in_order(text: str, max_chars: int, max_bytes: int | None,
                                                    han_weight: int) -> None:
    limit = TextLimit(max_chars, max_bytes, han_weight)
    pieces = split_text(text, limit)
    assert all(p and p == p.strip() and limit.fits(p) for p in pieces)
    assert squash("".join(pieces)) == squash(text)
