"""Transcript renderings from final segments (JSON-ready dicts, plain text, SubRip, WebVTT).

Pure functions over `voxq.records.Transcript` values, with no Redis, so every byte of every
format is unit-tested. Two-channel sessions label each line with its side of the call
(channel 0 = agent, 1 = customer); mono sessions use the vendor's speaker label if any.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from enum import StrEnum
from typing import Any

from voxq.records import Transcript, Word

CHANNEL_LABELS = ("agent", "customer")


class Format(StrEnum):
    """Transcript formats the API serves."""

    JSON = "json"
    TXT = "txt"
    SRT = "srt"
    VTT = "vtt"


MEDIA_TYPES: dict[Format, str] = {
    Format.JSON: "application/json",
    Format.TXT: "text/plain; charset=utf-8",
    Format.SRT: "application/x-subrip; charset=utf-8",
    Format.VTT: "text/vtt; charset=utf-8",
}


def word_dict(w: Word) -> dict[str, Any]:
    """One word as a JSON object."""
    return {"text": w.text, "start": w.start, "end": w.end,
            "confidence": w.confidence, "speaker": w.speaker}


def segment_dict(t: Transcript, index: int) -> dict[str, Any]:
    """One segment as a JSON object; `seq` falls back to its position when the entry has none;
    `vendor` (which vendor recognised it; a session may fail over) when the final names one."""
    d: dict[str, Any] = {
        "seq": t.seq if t.seq is not None else index,
        "text": t.text,
        "start": t.start,
        "end": t.end,
        "channel": t.channel,
        "speaker": t.speaker,
        "words": [word_dict(w) for w in t.words],
    }
    if t.vendor is not None:
        d["vendor"] = t.vendor
    return d


def clean_text(text: str) -> str:
    """Text on one line with single spaces, so a segment can never break a line-based format."""
    return " ".join(text.split())


def label(t: Transcript, channels: int) -> str | None:
    """Who speaks: the call side for two-channel sessions, else the speaker label if any."""
    if channels == 2:
        return CHANNEL_LABELS[t.channel] if 0 <= t.channel < 2 else f"ch{t.channel}"
    if t.speaker:
        return clean_text(t.speaker) or None
    return None


def timestamp(seconds: float, sep: str) -> str:
    """`HH:MM:SS<sep>mmm` (sep `,` for SRT, `.` for WebVTT); negatives and NaN clamp to zero."""
    if not math.isfinite(seconds) or seconds < 0:
        seconds = 0.0
    ms = round(seconds * 1000)
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def _spoken(segments: Sequence[Transcript]) -> list[tuple[Transcript, str]]:
    """Segments that have text, with the text cleaned."""
    out = []
    for t in segments:
        text = clean_text(t.text)
        if text:
            out.append((t, text))
    return out


def to_txt(segments: Sequence[Transcript], channels: int) -> str:
    """One line per segment, `[label] text` when a label is known."""
    lines = []
    for t, text in _spoken(segments):
        who = label(t, channels)
        lines.append(f"[{who}] {text}" if who else text)
    return "".join(line + "\n" for line in lines)


def _times(t: Transcript, sep: str) -> str:
    return f"{timestamp(t.start, sep)} --> {timestamp(max(t.start, t.end), sep)}"


def to_srt(segments: Sequence[Transcript], channels: int) -> str:
    """SubRip: numbered cues from 1, `HH:MM:SS,mmm` times, a blank line after each cue."""
    cues = []
    for n, (t, text) in enumerate(_spoken(segments), start=1):
        who = label(t, channels)
        body = (f"[{who}] {text}" if who else text).replace("-->", "->")
        cues.append(f"{n}\n{_times(t, ',')}\n{body}\n\n")
    return "".join(cues)


def _vtt_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_vtt(segments: Sequence[Transcript], channels: int) -> str:
    """WebVTT: header, numbered cues, `HH:MM:SS.mmm` times, labels as `<v label>` voice spans."""
    cues = ["WEBVTT\n\n"]
    for n, (t, text) in enumerate(_spoken(segments), start=1):
        who = label(t, channels)
        body = _vtt_escape(text)
        if who:
            body = f"<v {_vtt_escape(who)}>{body}"
        cues.append(f"{n}\n{_times(t, '.')}\n{body}\n\n")
    return "".join(cues)


def render_text(fmt: Format, segments: Sequence[Transcript], channels: int) -> str:
    """The transcript in a text format (txt, srt or vtt)."""
    if fmt is Format.TXT:
        return to_txt(segments, channels)
    if fmt is Format.SRT:
        return to_srt(segments, channels)
    if fmt is Format.VTT:
        return to_vtt(segments, channels)
    raise ValueError(f"{fmt} is not a text format")
