"""Response models: the API's answers are built field by field, never dumped from Redis hashes."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from voxq.records import SessionMeta, Status


class ErrorOut(BaseModel):
    """Every error answer: a human-readable reason."""

    detail: str


class SessionOut(BaseModel):
    """A session as the API shows it (owner, epoch, checkpoint and options stay internal)."""

    session_id: str
    vendor: str
    language: str
    rate: int = Field(description="Sample rate in Hz.")
    channels: int = Field(description="1, or 2 for agent (0) and customer (1).")
    status: Status
    error: str = Field(description="Why the session failed; empty otherwise.")
    created: float = Field(description="Unix time the session was created.")
    updated: float = Field(description="Unix time the meta last changed.")
    finals: int = Field(description="Final segments written so far.")
    audio_seconds: float = Field(description=(
        "Seconds of audio up to the end of the last final transcript segment (the durable "
        "progress); trailing silence after the last word is not counted."))
    bad_chunks: int = Field(default=0, description="Malformed audio entries the worker could "
                                                   "not use (a few are skipped; more fail the "
                                                   "session).")
    tenant: str = Field(default="default", description="The tenant the session belongs to.")

    @classmethod
    def from_meta(cls, m: SessionMeta) -> SessionOut:
        """Copy the public fields of a session's meta."""
        return cls(session_id=m.session_id, vendor=m.vendor, language=m.language, rate=m.rate,
                   channels=m.channels, status=m.status, error=m.error, created=m.created,
                   updated=m.updated, finals=m.finals, audio_seconds=m.audio_seconds,
                   bad_chunks=m.bad_chunks, tenant=m.tenant or "default")


class SessionPage(BaseModel):
    """One page of sessions, newest first."""

    total: int = Field(description="Sessions in the index (expired ones are left out of pages).")
    offset: int
    limit: int
    skipped: int = Field(description="Entries of this page left out because their stored "
                                     "record cannot be read (a malformed id or meta).")
    items: list[SessionOut]


class WordOut(BaseModel):
    """One recognised word, times in seconds from session start."""

    text: str
    start: float
    end: float
    confidence: float | None = None
    speaker: str | None = None


class SegmentOut(BaseModel):
    """One final segment."""

    seq: int
    text: str
    start: float
    end: float
    channel: int
    speaker: str | None = None
    words: list[WordOut] = []


class TranscriptOut(BaseModel):
    """A session's final transcript so far, in order."""

    session_id: str
    status: Status
    skipped: int = Field(description="Final entries left out because they cannot be read.")
    segments: list[SegmentOut]


class JobAccepted(BaseModel):
    """A TTS job just submitted: queued, or finished at once from the content cache."""

    job_id: str = Field(description="32 hexadecimal digits.")
    status: Literal["queued", "finished"]
    cached: bool = Field(description="True when the content cache answered (no synthesis).")
    status_url: str
    audio_url: str


class BatchAccepted(BaseModel):
    """A TTS batch just submitted: one job per item, in item order."""

    batch_id: str
    job_ids: list[str]
    jobs: list[JobAccepted]
    status_url: str
    zip_url: str


class HealthOut(BaseModel):
    """Liveness or readiness."""

    status: str
