"""`voxq produce` as a user runs it (a subprocess against the test Redis): files, stdin,
pacing, Ctrl-C, progress, and a clear message with a non-zero exit for every bad input."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import redis
import redis.asyncio as aioredis
import soundfile as sf
from pubtest_util import check_stream, fields_str, read_audio, stream_ms

from producer.cli import Pacer, Source, make_display, parse_options, rms_dbfs
from voxq.embedded_redis import RedisServer, free_port
from voxq.errors import InvalidInput
from voxq.keys import Keys
from voxq.records import SessionMeta, decode_chunk

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "voxq" / "samples" / "support-call.flac"


def produce(env: dict[str, str], *args: str, stdin: bytes | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run `python -m voxq produce ARGS` and capture its output."""
    p = subprocess.run([sys.executable, "-m", "voxq", "produce", *args], env=env, cwd=REPO,
                       input=stdin if stdin is not None else b"", capture_output=True,
                       timeout=timeout)
    return subprocess.CompletedProcess(p.args, p.returncode, p.stdout.decode(),
                                       p.stderr.decode())


def _wav(path: Path, seconds: float, rate: int = 16000, channels: int = 1,
         freq: float = 440.0) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    x = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    sf.write(path, np.repeat(x[:, None], channels, axis=1), rate, subtype="PCM_16")
    return path


# --- success -----------------------------------------------------------------------------

async def test_file_fast(env: dict[str, str], keys: Keys, r: aioredis.Redis) -> None:
    p = produce(env, str(SAMPLE), "--session", "call-a", "--fast", "--chunk-ms", "200")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "call-a"
    assert p.stderr == ""  # quiet when stderr is not a terminal
    entries = await read_audio(r, keys, "call-a")
    pcm = check_stream(entries)
    frames = sf.info(str(SAMPLE)).frames
    assert len(pcm) == frames * 2
    assert all(len(c.pcm) == 6400 for _, c in entries[:-2])  # 200 ms chunks
    meta = fields_str(await r.hgetall(keys.meta("call-a")))
    assert (meta["vendor"], meta["language"], meta["rate"], meta["channels"],
            meta["chunk_ms"]) == ("local", "en-US", "16000", "1", "200")


async def test_generated_session_id_and_options(env: dict[str, str], keys: Keys,
                                                r: aioredis.Redis, tmp_path: Path) -> None:
    wav = _wav(tmp_path / "st.wav", 0.5, rate=44100, channels=2)
    p = produce(env, str(wav), "--fast", "--rate", "8000", "--channels", "2",
                "--option", "vad_mode=1", "--option", "window=0.5")
    assert p.returncode == 0, p.stderr
    sid = p.stdout.strip()
    assert len(sid) == 32 and all(c in "0123456789abcdef" for c in sid)
    meta = fields_str(await r.hgetall(keys.meta(sid)))
    assert json.loads(meta["options"]) == {"vad_mode": 1, "window": 0.5}
    assert meta["rate"] == "8000" and meta["channels"] == "2"
    pcm = check_stream(await read_audio(r, keys, sid))
    assert abs(len(pcm) / 4 / 8000 - 0.5) < 0.01  # 0.5 s of 8 kHz stereo


@pytest.mark.parametrize(("fmt", "dtype", "rate"), [
    ("s16le", "<i2", 16000), ("f32le", "<f4", 48000), ("mulaw", "u1", 8000)])
async def test_stdin_raw(env: dict[str, str], keys: Keys, r: aioredis.Redis, fmt: str,
                         dtype: str, rate: int) -> None:
    n = rate // 2  # 0.5 s
    if fmt == "mulaw":
        raw = np.full(n, 0xFF, dtype="u1").tobytes()  # μ-law silence
    elif fmt == "f32le":
        raw = np.full(n, 0.25, dtype="<f4").tobytes()
    else:
        raw = np.full(n, 8192, dtype="<i2").tobytes()
    p = produce(env, "-", "--session", f"raw-{fmt}", "--fast", "--raw-format", fmt,
                "--raw-rate", str(rate), "--raw-channels", "1", stdin=raw)
    assert p.returncode == 0, p.stderr
    pcm = np.frombuffer(check_stream(await read_audio(r, keys, f"raw-{fmt}")), "<i2")
    assert abs(len(pcm) - 8000) <= 2  # 0.5 s at the bus rate 16 kHz
    mid = pcm[2000:6000]
    expected = {"s16le": 8192, "f32le": 8192, "mulaw": 0}[fmt]
    assert np.abs(mid.astype(int) - expected).max() <= 2


async def test_realtime_is_paced_and_fast_is_not(env: dict[str, str], keys: Keys,
                                                 r: aioredis.Redis, tmp_path: Path) -> None:
    wav = _wav(tmp_path / "t.wav", 1.5)
    p = produce(env, str(wav), "--session", "rt")  # realtime is the default
    assert p.returncode == 0, p.stderr
    entries = await read_audio(r, keys, "rt")
    check_stream(entries)
    # entry ids carry the server's clock: the last chunk went out >= ~1.4 s after the first
    assert stream_ms(entries[-1][0]) - stream_ms(entries[0][0]) >= 1300


def test_ctrl_c_closes_the_session_with_eos(env: dict[str, str], keys: Keys,
                                            redis_server: RedisServer) -> None:
    r = redis.Redis.from_url(redis_server.url)
    proc = subprocess.Popen(
        [sys.executable, "-m", "voxq", "produce", str(SAMPLE), "--session", "intr"],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while r.xlen(keys.audio("intr")) < 3:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    entries = [(eid.decode(), decode_chunk(f)) for eid, f in r.xrange(keys.audio("intr"))]
    r.close()
    check_stream(entries)  # contiguous seqs, eos last
    assert len(entries) < 100  # stopped early: the sample has ~180 chunks


def test_ctrl_c_while_stdin_is_still_open(env: dict[str, str], keys: Keys,
                                         redis_server: RedisServer) -> None:
    """`recorder | voxq produce -`: the reader thread is blocked in a read of stdin when
    Ctrl-C comes; the session still ends with eos and the process exits 130 (it used to
    abort at interpreter shutdown over the stdin buffer lock)."""
    r = redis.Redis.from_url(redis_server.url)
    upstream = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; sys.stdout.buffer.write(bytes(32000)); "
         "sys.stdout.flush(); time.sleep(60)"], stdout=subprocess.PIPE)
    assert upstream.stdout is not None
    proc = subprocess.Popen(
        [sys.executable, "-m", "voxq", "produce", "-", "--session", "live"], env=env,
        cwd=REPO, stdin=upstream.stdout, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    upstream.stdout.close()
    try:
        while r.xlen(keys.audio("live")) < 10:  # all 1 s is out; the reader waits for more
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.02)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        for p in (proc, upstream):
            if p.poll() is None:
                p.kill()
                p.wait()
    assert proc.returncode == 130, err.decode()
    assert b"Fatal Python error" not in err
    entries = [(eid.decode(), decode_chunk(f)) for eid, f in r.xrange(keys.audio("live"))]
    r.close()
    assert check_stream(entries) == bytes(32000)


def test_progress_forced(env: dict[str, str], tmp_path: Path) -> None:
    wav = _wav(tmp_path / "p.wav", 0.5)
    p = produce(env, str(wav), "--fast", "--progress")
    assert p.returncode == 0, p.stderr
    assert "s audio" in p.stderr and "published 5 chunks (0.5 s of audio)" in p.stderr


# --- bad input: clear message, non-zero exit, nothing written ------------------------------

async def _nothing_written(r: aioredis.Redis, prefix: str) -> None:
    assert await r.keys(f"{prefix}:*") == []


@pytest.mark.parametrize(("args", "message"), [
    (["{missing}"], "cannot read audio file"),
    (["{text}"], "cannot read audio file"),
    (["{sample}", "--vendor", "nope"], "unknown recognition vendor 'nope'"),
    (["{sample}", "--session", "bad id!"], "invalid session id"),
    (["{sample}", "--session", "x" * 200], "invalid session id"),
    (["{sample}", "--option", "vad_mode=9"], "invalid options: vad_mode"),
    (["{sample}", "--option", "colour=blue"], "invalid options: colour"),
    (["{sample}", "--option", "novalue"], "not of the form key=value"),
    (["{sample}", "--rate", "4000"], "sample rate 4000 Hz"),
    (["{sample}", "--chunk-ms", "5"], "chunk duration 5 ms"),
    (["{sample}", "--language", "de-DE"], "English"),
    (["{sample}", "--mic"], "either PATH or --mic"),
    ([], "give an audio file PATH"),
])
async def test_bad_input(env: dict[str, str], prefix: str, r: aioredis.Redis, tmp_path: Path,
                         args: list[str], message: str) -> None:
    text = tmp_path / "notes.wav"
    text.write_text("not audio")
    subst = {"missing": str(tmp_path / "missing.flac"), "text": str(text),
             "sample": str(SAMPLE)}
    p = produce(env, *[a.format(**subst) for a in args], "--fast")
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert p.stderr.startswith("voxq produce: error: ") and message in p.stderr, p.stderr
    assert "Traceback" not in p.stderr
    await _nothing_written(r, prefix)


async def test_session_exists(env: dict[str, str], keys: Keys, r: aioredis.Redis,
                              tmp_path: Path) -> None:
    wav = _wav(tmp_path / "s.wav", 0.2)
    assert produce(env, str(wav), "--session", "dup", "--fast").returncode == 0
    p = produce(env, str(wav), "--session", "dup", "--fast")
    assert p.returncode == 2 and "session 'dup' already exists" in p.stderr, p.stderr
    assert await r.xlen(keys.sessions) == 1


def test_redis_unreachable_fails_fast(env: dict[str, str]) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    # no retrying: it ends (within the helper's timeout) with the reason
    p = produce(env | {"REDIS_URL": url}, str(SAMPLE), "--fast", timeout=60)
    assert p.returncode == 2 and f"cannot reach Redis at {url}" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr


def test_mic_without_portaudio(env: dict[str, str]) -> None:
    try:
        import sounddevice  # noqa: F401
    except (ImportError, OSError):
        pass
    else:
        pytest.skip("sounddevice and PortAudio are installed here; covered in test_sources")
    p = produce(env, "--mic")
    assert p.returncode == 2
    assert "pip install 'voxq[mic]'" in p.stderr and "libportaudio2" in p.stderr, p.stderr


def test_argparse_rejects_bad_channel_count(env: dict[str, str]) -> None:
    p = produce(env, str(SAMPLE), "--channels", "3")
    assert p.returncode == 2 and "--channels" in p.stderr


# --- pure helpers ------------------------------------------------------------------------

def test_parse_options() -> None:
    assert parse_options(["a=1", "b=true", "c=hello", 'd={"x": [1, 2]}', "e=", "f=a=b",
                          "g=null", "h=1.5"]) == {
        "a": 1, "b": True, "c": "hello", "d": {"x": [1, 2]}, "e": "", "f": "a=b", "g": None,
        "h": 1.5}
    with pytest.raises(InvalidInput):
        parse_options(["=1"])


def test_pacer_does_not_drift() -> None:
    """Each wait is computed against the start, so oversleeping never accumulates."""
    now = [100.0]
    pacer = Pacer(32000, clock=lambda: now[0])  # 16 kHz mono: 3200 bytes = 100 ms
    for _ in range(1000):
        wait = pacer.delay(3200)
        now[0] += wait + 0.003  # every sleep overshoots by 3 ms
    # after 100 s of audio we are 3 ms late, not 3 s
    assert now[0] - 100.0 == pytest.approx(100.0 + 0.003, abs=1e-6)
    late = Pacer(32000, clock=lambda: now[0])
    late.delay(3200)
    now[0] += 5.0  # a stall: catch up without waiting, never sleep negative
    assert late.delay(3200) == 0.0


def test_rms_dbfs() -> None:
    t = np.arange(16000) / 16000
    full = (32767 * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes()
    assert rms_dbfs(full) == pytest.approx(-3.01, abs=0.05)
    assert rms_dbfs(bytes(3200)) == -96.0 and rms_dbfs(b"") == -96.0


def test_level_meter_and_quiet_display(capsys: pytest.CaptureFixture[str]) -> None:
    meta = SessionMeta(session_id="meter")
    t = np.arange(1600) / 16000
    loud = (16384 * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes()
    meter = make_display(Source(iter(()), "mic", "microphone"), meta, True)
    meter.update(loud)
    meter.stop()
    err = capsys.readouterr().err
    assert "microphone → meter" in err and "-9.0 dBFS" in err and "█" in err
    quiet = make_display(Source(iter(()), "mic", "microphone"), meta, False)
    quiet.update(loud)
    quiet.stop()
    assert capsys.readouterr().err == ""


async def test_tenant_and_webhook_reach_the_session(env: dict[str, str], keys: Keys,
                                                    r: aioredis.Redis, tmp_path: Path) -> None:
    """--tenant (and VOXQ_TENANT) own the session; --webhook and --webhook-finals are stored
    on it (they once stopped short of Publisher.open)."""
    wav = _wav(tmp_path / "t.wav", 0.5)
    p = produce(env, str(wav), "--session", "ten-1", "--fast", "--tenant", "acme",
                "--webhook", "https://hooks.example/voxq", "--webhook-finals")
    assert p.returncode == 0, p.stderr
    meta = SessionMeta.from_hash(await r.hgetall(keys.meta("ten-1")), "ten-1")
    assert meta.tenant == "acme"
    assert meta.webhook == "https://hooks.example/voxq" and meta.webhook_finals
    assert await r.zscore(keys.tenant_index("acme"), "ten-1") is not None
    p = produce(dict(env, VOXQ_TENANT="globex"), str(wav), "--session", "ten-2", "--fast")
    assert p.returncode == 0, p.stderr
    assert await r.hget(keys.meta("ten-2"), "tenant") == b"globex"
    assert await r.hget(keys.meta("ten-2"), "webhook") is None
    bad = produce(env, str(wav), "--session", "ten-3", "--fast", "--tenant", "no spaces")
    assert bad.returncode != 0 and "invalid tenant" in bad.stderr
    assert await r.exists(keys.meta("ten-3")) == 0
