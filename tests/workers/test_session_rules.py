"""The session runner's core decisions on their own: re-basing a vendor's times by the
checkpoint, dropping the finals a replay says again, how far the checkpoint may move, and
fencing a worker whose session was claimed again (the pure rule, and the writes Redis refuses)."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st

from tests.support import create
from voxq.keys import Keys
from voxq.records import Status, Transcript, Word, encode_transcript
from workers.ownership import Fenced, Ownership
from workers.session_rules import end_frames, fenced, rebase, safe_frames, said_before, unsaid

RATE = 16000


def final(start: float, end: float, channel: int = 0) -> Transcript:
    return Transcript(text="w", is_final=True, start=start, end=end, channel=channel,
                      words=(Word("w", start, end),))


def test_rebase_moves_every_time_by_the_checkpoint() -> None:
    t = final(0.25, 0.75)
    moved = rebase(t, 3 * RATE, RATE)
    assert (moved.start, moved.end) == (3.25, 3.75)
    assert [(w.start, w.end) for w in moved.words] == [(3.25, 3.75)]
    assert rebase(t, 0, RATE) is t  # from the start of the audio: nothing to move


def test_a_replay_drops_what_was_written_and_keeps_what_is_new() -> None:
    """Written before the failure: a final on channel 0 up to 2.5 s; the checkpoint is at
    2.0 s. The vendor, sent the audio again from the checkpoint, says 0.0-0.5 s again (that
    is 2.0-2.5 s) and then 0.5-1.0 s (2.5-3.0 s, new)."""
    checkpoint, written = 2 * RATE, round(2.5 * RATE)
    again = end_frames(rebase(final(0.0, 0.5), checkpoint, RATE), RATE)
    new = end_frames(rebase(final(0.5, 1.0), checkpoint, RATE), RATE)
    assert (again, new) == (written, 3 * RATE)
    assert said_before(again, written)
    assert not said_before(new, written)
    assert not said_before(written + 1, written)  # one frame further is new speech


def said(*words: tuple[str, float, float], text: str | None = None) -> Transcript:
    ws = tuple(Word(w, s, e) for w, s, e in words)
    return Transcript(text=text if text is not None else " ".join(w for w, _, _ in words),
                      is_final=True, start=ws[0].start, end=ws[-1].end, words=ws)


def test_a_replay_that_joins_a_written_tail_to_new_words_keeps_only_the_new_ones() -> None:
    """Written: a final ending at 3.14 s; the checkpoint is the chunk boundary at 3.1 s. A
    fallback that waits longer for quiet hears the 40 ms tail again and joins it to the next
    words: only those are new, with the vendor's formatting of them kept."""
    written = round(3.14 * RATE)
    joined = said(("Tone2900", 3.1, 3.14), ("tone1300", 3.38, 3.6), ("tone400.", 3.95, 4.19))
    new = unsaid(joined, written, RATE)
    assert new is not None
    assert (new.text, new.start, new.end) == ("tone1300 tone400.", 3.38, 4.19)
    assert [w.text for w in new.words] == ["tone1300", "tone400."]
    # a tail a little longer than its own final's end (vendor timing): still the old word
    assert unsaid(said(("Tone2900", 3.1, 3.16)), written, RATE) is None
    # text without one token per word (no spaces in Chinese): rebuilt from the words
    zh = unsaid(said(("你", 3.0, 3.12), ("好", 3.3, 3.5), text="你好。"), written, RATE)
    assert zh is not None and zh.text == "好"
    # nothing before the end of the last final, or no final written yet: unchanged
    fresh = said(("tone500", 3.2, 3.4), ("tone600", 3.6, 3.8))
    assert unsaid(fresh, written, RATE) is fresh
    assert unsaid(joined, 0, RATE) is joined
    assert unsaid(final(3.0, 3.14), written, RATE) is None  # the whole final was said


@given(start=st.floats(0, 3600), length=st.floats(0.01, 30), checkpoint=st.integers(0, 10 ** 9))
def test_rebasing_adds_exactly_the_checkpoint(start: float, length: float, checkpoint: int) -> None:
    t = final(start, start + length)
    assert abs(end_frames(rebase(t, checkpoint, RATE), RATE) - (end_frames(t, RATE) + checkpoint)) <= 1


def test_the_checkpoint_waits_for_a_channel_with_an_open_partial() -> None:
    margin = 2 * RATE
    # channel 1 is mid-utterance: nothing after its last final is durable yet
    assert safe_frames([10 * RATE, 4 * RATE], [False, True], 10 * RATE, margin) == 4 * RATE
    # channel 1 is quiet: it trails the newest result by the margin, not its own old final
    assert safe_frames([10 * RATE, 4 * RATE], [False, False], 10 * RATE, margin) == 8 * RATE
    # ... and never falls behind its own last final
    assert safe_frames([10 * RATE, 9 * RATE], [False, False], 10 * RATE, margin) == 9 * RATE
    assert safe_frames([5 * RATE], [False], 5 * RATE, margin) == 5 * RATE


def test_fenced_are_the_sessions_whose_epoch_moved_or_whose_meta_is_gone() -> None:
    mine = {"a": 1, "b": 4, "c": 2, "d": 7}
    stored: dict[str, int | None] = {"a": 1, "b": 5, "c": None}  # "d": its node did not answer
    assert fenced(mine, stored) == ["b", "c"]
    assert fenced({}, stored) == []


async def test_redis_refuses_every_write_of_a_fenced_owner(r: aioredis.Redis, keys: Keys) -> None:
    await create(r, keys, "f")
    old, new = Ownership(r, keys, "w-old"), Ownership(r, keys, "w-new")
    try:
        first = await old.claim("f")
        second = await new.claim("f")
        assert second == first + 1
        fields = encode_transcript(final(0.0, 0.5))
        with pytest.raises(Fenced):
            await old.write_final("f", first, 0, 0, 8000, "0-0", 0, 0.5, fields)
        with pytest.raises(Fenced):
            await old.write_partial("f", first, 10, encode_transcript(
                Transcript(text="w", is_final=False, start=0.0, end=0.2)))
        with pytest.raises(Fenced):
            await old.set_status("f", first, Status.FINISHED)
        assert await r.xlen(keys.final("f")) == 0 and await r.xlen(keys.partial("f")) == 0
        await new.write_final("f", second, 0, 0, 8000, "0-0", 0, 0.5, fields)
        meta = await r.hgetall(keys.meta("f"))
        assert await r.xlen(keys.final("f")) == 1
        assert meta[b"owner"] == b"w-new" and meta[b"status"] == b"active"
    finally:
        await old.aclose()
        await new.aclose()
