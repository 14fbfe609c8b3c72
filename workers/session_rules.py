"""The decisions a session runner and its worker make about results and ownership, as pure
functions: re-basing vendor times, dropping what a replay says again, how far the checkpoint
may move, and which sessions someone else has claimed (fencing)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from voxq.records import Transcript


def rebase(t: Transcript, checkpoint_frames: int, rate: int) -> Transcript:
    """A vendor's result in session time: its times count from the first audio it was sent,
    which is the checkpoint's position (``checkpoint_frames`` bus frames at ``rate``)."""
    return t.shifted(checkpoint_frames / rate) if checkpoint_frames else t


def end_frames(t: Transcript, rate: int) -> int:
    """Where a (re-based) result ends, in bus frames."""
    return round(t.end * rate)


def said_before(end: int, final_end: int) -> bool:
    """A final ending (in frames) no later than the last final written on its channel was
    already written: a replay from the checkpoint re-recognises audio said before."""
    return end <= final_end


def unsaid(t: Transcript, final_end: int, rate: int) -> Transcript | None:
    """What a (re-based) final adds to its channel: None when it was said before, else the
    final without its leading words whose middle lies no later than ``final_end`` (frames).

    A replay starts at the audio chunk that holds the checkpoint, a little before the end of
    the last final, so the vendor hears the tail of a word already written again; a vendor
    that waits for more quiet before it ends an utterance than the one before it (a fallback)
    may join that tail to the next words, in a final that ends later."""
    if said_before(end_frames(t, rate), final_end):
        return None
    words = t.words
    k = 0
    while final_end and k < len(words) and (words[k].start + words[k].end) * rate / 2 <= final_end:
        k += 1
    if k == 0:
        return t
    if k == len(words):
        return None
    kept = words[k:]
    tokens = t.text.split()
    if len(tokens) == len(words):  # one token per word: keep the vendor's formatting
        text = " ".join(tokens[k:])
    else:
        text = (" " if " " in t.text.strip() else "").join(w.text for w in kept)
    return replace(t, text=text, start=kept[0].start, words=kept)


def safe_frames(final_end: Sequence[int], pending: Sequence[bool], horizon: int,
                margin: int) -> int:
    """How far (in frames) every channel's audio is covered by durable finals, so the
    checkpoint may move up to it: a channel with an open partial only to its last final; a
    quiet one to ``margin`` frames behind the newest result (``horizon``) of any channel."""
    return min(end if open_ else max(end, horizon - margin)
               for end, open_ in zip(final_end, pending, strict=True))


def fenced(mine: Mapping[str, int], stored: Mapping[str, int | None]) -> list[str]:
    """Sessions whose stored epoch is no longer ours (claimed again, or their meta is gone:
    None); a session without an answer (its node was slow) is kept."""
    return [sid for sid, epoch in mine.items() if sid in stored and stored[sid] != epoch]
