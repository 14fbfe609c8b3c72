"""`voxq tts` (one-off and --batch, in process, no Redis) and `voxq tts-worker --burst`, run as
real processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.emulators.polly import Fault, PollyEmulator
from tests.emulators.tts_audio import speech_seconds
from tests.support import run_voxq
from tests.workers.tts.ttstest_support import api_client, decoded_seconds, wait_job
from voxq.settings import Settings


async def voxq(env: dict[str, str], *args: str, stdin: bytes = b"") -> tuple[int, str, str]:
    """Run `python -m voxq ARGS`; (exit code, stdout, stderr)."""
    done = await run_voxq(*args, env=env, stdin=stdin)
    return done.returncode or 0, done.stdout.decode(), done.stderr.decode()


async def test_one_off_local_from_argument_and_stdin(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    out = tmp_path / "sub" / "hello.mp3"
    code, _, err = await voxq(env, "tts", "Hello from the command line.", "-o", str(out), "--rate", "16000")
    assert code == 0, err
    assert f"{out}: " in err and "bytes" in err
    assert 1.0 < decoded_seconds(out.read_bytes()) < 6.0
    piped = tmp_path / "piped.mp3"
    code, _, err = await voxq(env, "tts", "-", "-o", str(piped), "--voice", "de", stdin=b"Guten Tag.")
    assert code == 0, err and piped.stat().st_size > 0
    code, out_text, _ = await voxq(env, "tts", "--list-voices", "-o", "x", "--vendor", "aws")
    assert code == 0 and out_text.splitlines()[0] == "Joanna"


async def test_one_off_through_a_vendor(env: dict[str, str], tmp_path: Path) -> None:
    async with PollyEmulator() as emu:
        out = tmp_path / "polly.mp3"
        text = "Polly speaks. " * 150  # two Polly calls
        code, _, err = await voxq({**env, **emu.env()}, "tts", text, "-o", str(out), "--vendor", "aws",
                                  "--voice", "Amy", "--speed", "1.5")
        assert code == 0, err
        assert len(emu.successes) == 2 and all(r.body["VoiceId"] == "Amy" for r in emu.successes)
        want = sum(speech_seconds(r.spoken, 1.5) for r in emu.successes)
        assert decoded_seconds(out.read_bytes()) == pytest.approx(want, abs=0.01)


@pytest.mark.parametrize(("args", "words"), [
    (["tts", "x", "-o", "o.mp3", "--voice", "nobody"], "unknown voice 'nobody'"),
    (["tts", "x", "-o", "o.mp3", "--vendor", "nope"], "unknown speech vendor 'nope'"),
    (["tts", "-o", "o.mp3"], "give the TEXT"),
    (["tts", "x", "--batch", "l.txt", "-o", "d"], "not both"),
    (["tts", "--batch", "/nonexistent/lines.txt", "-o", "d"], "cannot read"),
    (["tts", "", "-o", "o.mp3"], "give the TEXT"),
    (["tts", "x", "-o", "o.mp3", "--speed", "9"], "speed"),
    (["tts", "x", "-o", "/nonexistent/x.mp3"], "cannot write /nonexistent/x.mp3: the folder "
                                               "/nonexistent does not exist"),
])
async def test_mistakes_exit_2_with_a_reason(env: dict[str, str], tmp_path: Path, args: list[str],
                                             words: str) -> None:
    code, _, err = await voxq(env, *args)
    assert code == 2 and words in err, err
    assert not (tmp_path / "o.mp3").exists()


async def test_output_folders_are_never_created_silently(env: dict[str, str],
                                                         tmp_path: Path) -> None:
    lines = tmp_path / "lines.txt"
    lines.write_text("One.\n", encoding="utf-8")
    (tmp_path / "file").write_text("")
    for out, why in ((tmp_path / "missing" / "x.mp3", "does not exist"),
                     (tmp_path / "file" / "x.mp3", "is not a folder")):
        code, _, err = await voxq(env, "tts", "x", "-o", str(out))
        assert code == 2 and f"the folder {out.parent} {why}" in err, err
    deep = tmp_path / "missing" / "out"
    code, _, err = await voxq(env, "tts", "--batch", str(lines), "-o", str(deep))
    assert code == 2 and f"the folder {deep.parent} does not exist" in err, err
    assert not (tmp_path / "missing").exists()


async def test_batch_writes_one_mp3_per_line_and_reports_failures(env: dict[str, str], tmp_path: Path) -> None:
    lines = tmp_path / "lines.txt"
    lines.write_text("First line.\n\nThird line here.\nFourth.\n", encoding="utf-8")
    out = tmp_path / "out"
    code, _, err = await voxq(env, "tts", "--batch", str(lines), "-o", str(out), "-j", "2")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["0001.mp3", "0003.mp3", "0004.mp3"]
    assert "3 of 3 lines synthesised" in err
    async with PollyEmulator() as emu:
        emu.faults.append(Fault(status=400, error_type="InvalidSsmlException", message="nope"))
        failing = tmp_path / "failing"
        code, _, err = await voxq({**env, **emu.env()}, "tts", "--batch", str(lines), "-o", str(failing),
                                  "--vendor", "aws", "-j", "1")
        assert code == 1, err
        assert "line 1: aws: InvalidSsmlException: nope" in err and "2 of 3 lines" in err
        assert sorted(p.name for p in failing.iterdir()) == ["0003.mp3", "0004.mp3"]
    bad = tmp_path / "bad.txt"
    bad.write_text("ok\n" + "x" * 30 + "\n")
    code, _, err = await voxq({**env, "VOXQ_TTS_MAX_TEXT_CHARS": "20"}, "tts", "--batch", str(bad), "-o",
                              str(tmp_path / "none"))
    assert code == 2 and "30 characters" in err and not (tmp_path / "none").exists()


async def test_burst_worker_drains_the_queue_and_exits(env: dict[str, str], settings: Settings,
                                                       prefix: str) -> None:
    s = settings.model_copy(update={"tts_queue": prefix})
    async with api_client(s) as client:
        ids = [(await client.post("/v1/tts", json={"text": f"Burst job {i}."})).json()["job_id"]
               for i in range(3)]
        code, _, err = await voxq({**env, "VOXQ_TTS_QUEUE": prefix}, "tts-worker", "--burst")
        assert code == 0, err
        assert f"on queue {prefix}" in err
        for job_id in ids:
            assert (await wait_job(client, job_id, timeout=5))["status"] == "finished"


async def test_worker_logs_a_missing_credentials_failure_in_one_line(
        env: dict[str, str], settings: Settings, prefix: str) -> None:
    s = settings.model_copy(update={"tts_queue": prefix})
    async with api_client(s) as client:
        reply = await client.post("/v1/tts", json={"text": "No keys here.", "vendor": "aws"})
        assert reply.status_code == 202, reply.text
        job_id = reply.json()["job_id"]
        code, _, err = await voxq({**env, "VOXQ_TTS_QUEUE": prefix, "VOXQ_TTS_RETRIES": "0"},
                                  "tts-worker", "--burst")
        assert code == 0, err
        job = await wait_job(client, job_id, timeout=5)
        assert job["status"] == "failed" and "credentials" in job["error"], job
    assert "Traceback" not in err, err
    failed = [ln for ln in err.splitlines() if job_id in ln and "failed" in ln]
    assert len(failed) == 1 and "credentials" in failed[0], err
