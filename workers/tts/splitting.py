"""Split long text at sentence boundaries into pieces each vendor call accepts.

Vendors cap one call by characters (Polly, CosyVoice) or by UTF-8 bytes (Volcengine v1: 1024),
and some count Han characters double (CosyVoice). Pieces are packed greedily from whole
sentences; a sentence over the limit is cut at clause punctuation, then at spaces, and only as a
last resort inside a word (never inside a UTF-8 character). No text is dropped or reordered.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from voxq.tts_offers import TextLimit  # each vendor's limit is part of its offer (the core)

__all__ = ["TextLimit", "sentences", "split_text"]

# A sentence ends at terminal punctuation (plus closing quotes/brackets) followed by space, or
# right after CJK terminal punctuation, or at a blank line.
_SENTENCE_END = re.compile(
    r"""(?:[.!?…]+["'”’)\]]*(?=\s+(?![a-z]))   # . ! ? then space, unless the next word is lowercase
        |[。！？；]+[」』”’）]*                  # CJK full stops need no space
        |\n\s*\n)                              # paragraph break
    """,
    re.VERBOSE,
)
_CLAUSE_END = re.compile(r"[,;:，、；：—–]+[\"'”’)\]]*\s*")
_SPACE = re.compile(r"\s+")


def sentences(text: str) -> list[str]:
    """The text cut after each sentence end; the pieces concatenate back to ``text``."""
    out: list[str] = []
    start = 0
    for m in _SENTENCE_END.finditer(text):
        end = m.end()
        # keep the whitespace after the sentence with it
        while end < len(text) and text[end].isspace():
            end += 1
        if end > start:
            out.append(text[start:end])
            start = end
    if start < len(text):
        out.append(text[start:])
    return out


def _longest_prefix(text: str, limit: TextLimit) -> int:
    """Length of the longest prefix of ``text`` that fits (binary search; at least 1)."""
    lo, hi = 1, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if limit.fits(text[:mid]):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _cut_oversized(text: str, limit: TextLimit) -> Iterator[str]:
    """Pieces of one sentence that is over the limit: at clause marks, spaces, else anywhere."""
    rest = text
    while rest and not limit.fits(rest):
        n = _longest_prefix(rest, limit)
        # prefer the last clause mark, then the last space, else a hard cut at n
        cut = 0
        for pattern in (_CLAUSE_END, _SPACE):
            cut = max((m.end() for m in pattern.finditer(rest, 0, n) if m.end() <= n), default=0)
            if cut:
                break
        if not cut or not rest[:cut].strip():
            cut = n
        yield rest[:cut]
        rest = rest[cut:]
    if rest:
        yield rest


def split_text(text: str, limit: TextLimit) -> list[str]:
    """Non-empty pieces, in order, each fitting ``limit``, that together hold all of ``text``.

    Whitespace between pieces is dropped from their ends; nothing else is changed.
    """
    pieces: list[str] = []
    current = ""
    for sentence in sentences(text):
        for part in (sentence,) if limit.fits(sentence.strip()) else _cut_oversized(sentence, limit):
            candidate = current + part
            if limit.fits(candidate.strip()):
                current = candidate
                continue
            if current.strip():
                pieces.append(current.strip())
            current = part
    if current.strip():
        pieces.append(current.strip())
    return pieces
