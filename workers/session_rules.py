"""The decisions a session runner and its worker make about results and ownership, as pure
functions: re-basing vendor times, dropping finals a replay says again, how far the checkpoint
may move, and which sessions someone else has claimed (fencing)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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
