"""TTS job records belong to the core: one status family beside the sessions', and the API's
request model and record fields without any vendor."""

from __future__ import annotations

from voxq import tts_jobs
from voxq.records import JobStatus, Status


def test_one_status_family() -> None:
    from workers.tts import jobs

    assert jobs.Status is JobStatus and jobs.TtsRequest is tts_jobs.TtsRequest
    assert tts_jobs.TERMINAL == {JobStatus.FINISHED, JobStatus.FAILED}
    for s in JobStatus:  # finished and failed mean the same for a job and a session
        if s.value in Status.__members__.values():
            assert s.terminal == Status(s.value).terminal


class _Planned:
    vendor, voice, chars = "local", "en-us", 5

    def to_json(self) -> str:
        return '{"text":"hello"}'


def test_record_fields_of_a_planned_job() -> None:
    f = tts_jobs.record_fields(_Planned(), batch_id="batch-" + "0" * 32)
    assert (f["kind"], f["status"], f["vendor"], f["voice"], f["chars"]) == (
        "job", "queued", "local", "en-us", "5")
    assert f["request"] == '{"text":"hello"}' and f["batch"] == "batch-" + "0" * 32
