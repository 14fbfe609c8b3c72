"""Where one vendor connection's audio sits in a session's audio: pure arithmetic, no I/O.

A vendor times its results from the first byte of *its* connection, and it heard more than the
session said: keep-alive silence sent through a pause. A ``Timeline`` records the frames a
connection was sent, which of them were inserted silence, and how many session frames came
before its first byte (non-zero after a roll to a fresh connection), so a vendor time maps back
to session seconds: silence taken out, the earlier connections' audio added in.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from voxq.records import Transcript

__all__ = ["Timeline"]


@dataclass(slots=True)
class Timeline:
    """Frames sent on one vendor connection and where inserted silence went."""

    rate: int
    base_frames: int = 0  # session frames sent before this connection's first byte
    frames: int = 0  # frames sent on this connection, inserted silence included
    inserted: list[list[int]] = field(default_factory=list)  # [at frame, n frames] of silence

    def add(self, n: int, inserted: bool = False) -> None:
        """Account ``n`` frames just sent: session audio, or silence the session never had."""
        if inserted:
            last = self.inserted[-1] if self.inserted else None
            if last is not None and last[0] + last[1] == self.frames:
                last[1] += n
            else:
                self.inserted.append([self.frames, n])
        self.frames += n

    @property
    def audio_frames(self) -> int:
        """Session frames this connection was sent (inserted silence excluded)."""
        return self.frames - sum(n for _, n in self.inserted)

    def frame_of(self, seconds: float) -> int:
        """The connection frame at a vendor time in seconds (never negative)."""
        return max(0, round(float(seconds) * self.rate))

    def to_session_frames(self, frame: int) -> int:
        """Session frame of a connection frame, inserted silence taken out."""
        shift = 0
        for at, n in self.inserted:
            if frame >= at + n:
                shift += n
            elif frame > at:
                shift += frame - at
            else:
                break
        return self.base_frames + frame - shift

    def to_session(self, seconds: float, digits: int = 6) -> float:
        """Session seconds of a vendor time (seconds from this connection's first byte)."""
        return round(self.to_session_frames(self.frame_of(seconds)) / self.rate, digits)

    def ms_to_session(self, ms: int, digits: int = 4) -> float:
        """Session seconds of a vendor time given in milliseconds."""
        v = max(0, round(ms * self.rate / 1000))
        return round(self.to_session_frames(v) / self.rate, digits)

    def rebase(self, t: Transcript, digits: int = 6, channel: int | None = None) -> Transcript:
        """A result timed from this connection's first byte, in session time (and on
        ``channel`` when the connection carried only that channel)."""
        words = tuple(replace(w, start=self.to_session(w.start, digits),
                              end=self.to_session(w.end, digits)) for w in t.words)
        return replace(t, start=self.to_session(t.start, digits),
                       end=self.to_session(t.end, digits), words=words,
                       channel=t.channel if channel is None else channel)
