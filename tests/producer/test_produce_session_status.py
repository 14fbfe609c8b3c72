"""A producer follows its session: a session that fails (AWS without credentials, with a real
worker process) stops `voxq produce` and the `Publisher` with the session's own error; a good
one exits 0; and SIGTERM/Ctrl-C end a producer whose Redis is gone within its grace period,
saying how much audio Redis never acknowledged."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis
import redis.asyncio as aioredis
import soundfile as sf
from pubtest_util import check_stream, read_audio

from producer.publisher import Publisher, SyncPublisher
from tests.support import start_worker
from voxq.embedded_redis import RedisServer, free_port
from voxq.errors import SessionFailed
from voxq.keys import Keys
from voxq.records import Status, decode_chunk
from voxq.settings import Settings

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "voxq" / "samples" / "support-call.flac"
NO_CREDENTIALS = "AWS credentials are missing"


def _produce(env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "voxq", "produce", *args], env=env, cwd=REPO,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout)


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    health: str


async def _worker_listening(worker: Worker) -> None:
    """Wait until the worker says it is ready (it claims new sessions from then on)."""
    async with httpx.AsyncClient() as client:
        while True:
            assert worker.proc.poll() is None, "the worker exited"
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"{worker.health}/readyz", timeout=2)).status_code == 200:
                    return
            await asyncio.sleep(0.2)


@pytest.fixture
def worker(env: dict[str, str], tmp_path: Path) -> Iterator[Worker]:
    """One `voxq worker` process without any vendor credentials."""
    port = free_port()
    proc = start_worker(env | {"VOXQ_WORKER_HEALTH_PORT": str(port)}, "status-w",
                        log=tmp_path / "worker.log")
    yield Worker(proc, f"http://127.0.0.1:{port}")
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def test_failed_session_stops_the_producer_with_its_error(
        env: dict[str, str], keys: Keys, r: aioredis.Redis,
        worker: Worker) -> None:
    """Real-time publishing stops when the worker fails the session: exit 1, the session's
    error on stderr, and the rest of the file is not streamed into a dead session."""
    await _worker_listening(worker)
    p = _produce(env, str(SAMPLE), "--session", "aws-live", "--vendor", "aws")
    assert p.returncode == 1, (p.returncode, p.stderr)
    assert p.stderr.startswith("voxq produce: error: session aws-live failed: "), p.stderr
    assert NO_CREDENTIALS in p.stderr and "Traceback" not in p.stderr
    assert p.stdout.strip() == "aws-live"
    entries = await read_audio(r, keys, "aws-live")
    assert not any(c.eos for _, c in entries)  # stopped: no end of stream after the failure
    assert len(entries) < sf.info(str(SAMPLE)).duration * 10 - 5  # well short of the file
    meta = await r.hgetall(keys.meta("aws-live"))
    assert meta[b"status"] == b"failed" and NO_CREDENTIALS.encode() in meta[b"error"]


async def test_wait_reports_a_failure_after_the_audio_was_all_published(
        env: dict[str, str], keys: Keys, r: aioredis.Redis,
        worker: Worker) -> None:
    """--fast publishes the whole file before any worker looks at it; --wait still reports
    the session's failure (the worker may start after the producer: no readiness wait)."""
    p = _produce(env, str(SAMPLE), "--session", "aws-fast", "--vendor", "aws", "--fast",
                 "--wait")
    assert p.returncode == 1, (p.returncode, p.stderr)
    assert "session aws-fast failed: " in p.stderr and NO_CREDENTIALS in p.stderr, p.stderr
    check_stream(await read_audio(r, keys, "aws-fast"))  # all of it, eos last


async def test_good_session_exits_zero(env: dict[str, str], keys: Keys, r: aioredis.Redis,
                                       worker: Worker, tmp_path: Path) -> None:
    x, rate = sf.read(str(SAMPLE), dtype="float32", frames=3 * 16000)
    wav = tmp_path / "three-seconds.wav"
    sf.write(wav, x, rate)
    p = _produce(env, str(wav), "--session", "good", "--fast", "--wait")
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    meta = await r.hgetall(keys.meta("good"))
    assert meta[b"status"] == b"finished"


async def test_publisher_session_outcome(settings: Settings, keys: Keys, r: aioredis.Redis,
                                         worker: Worker) -> None:
    """The library: session_outcome() returns the worker's verdict, and send() stops with
    SessionFailed once the session failed."""
    pub = Publisher(settings.redis_url or "", settings=settings)
    await pub.open("aws-lib", vendor="aws")
    outcome = asyncio.create_task(pub.session_outcome(poll=0.05))
    silence = bytes(3200)  # 100 ms
    try:
        with pytest.raises(SessionFailed, match=NO_CREDENTIALS):
            while True:  # a live call: 100 ms of audio every 100 ms until the session fails
                await pub.send(silence)
                await asyncio.sleep(0.1)
        result = await outcome
        assert result.status is Status.FAILED and not result.ok
        assert NO_CREDENTIALS in result.error
        with pytest.raises(SessionFailed):
            await pub.close()
    finally:
        outcome.cancel()
        await pub.abort()


# --- signals while Redis is gone ---------------------------------------------------------

@pytest.fixture
def doomed_redis() -> Iterator[RedisServer]:
    """A private redis-server the test kills."""
    with RedisServer() as server:
        yield server


def _start_producing(env: dict[str, str], server: RedisServer, sid: str,
                     *args: str) -> tuple[subprocess.Popen[str], redis.Redis]:
    client = redis.Redis.from_url(server.url)
    proc = subprocess.Popen(
        [sys.executable, "-m", "voxq", "produce", str(SAMPLE), "--session", sid, *args],
        env=env | {"REDIS_URL": server.url}, cwd=REPO, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while client.xlen(f"{env['VOXQ_PREFIX']}:{{{sid}}}:audio") < 5:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    return proc, client


def _audio_entries(client: redis.Redis, prefix: str, sid: str) -> list[object]:
    return [decode_chunk(f) for _, f in client.xrange(f"{prefix}:{{{sid}}}:audio")]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_ends_a_producer_whose_redis_is_gone(env: dict[str, str],
                                                    doomed_redis: RedisServer,
                                                    sig: signal.Signals) -> None:
    proc, client = _start_producing(env, doomed_redis, "orphan", "--grace", "2")
    try:
        doomed_redis.kill()
        time.sleep(1.0)  # real-time audio piles up in the buffer, unacknowledged
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)  # the grace is 2 s; it used to retry forever
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        client.close()
    assert proc.returncode == (143 if sig == signal.SIGTERM else 130), err
    name = "SIGTERM" if sig == signal.SIGTERM else "Ctrl-C"
    assert f"stopped by {name}: " in err and "not acknowledged by Redis" in err, err
    assert "session orphan aborted without end of stream" in err
    assert "0.0 s of audio (0 chunk(s))" not in err  # the buffered second is counted
    assert "Traceback" not in err


def test_second_signal_ends_at_once(env: dict[str, str], doomed_redis: RedisServer) -> None:
    """With a long grace, a second Ctrl-C does not wait for it."""
    proc, client = _start_producing(env, doomed_redis, "twice", "--grace", "600")
    try:
        doomed_redis.kill()
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.5)
        assert proc.poll() is None  # inside its grace period, still trying to write eos
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        client.close()
    assert proc.returncode == 130, err
    assert "not acknowledged by Redis" in err and "Traceback" not in err, err


def test_signal_with_redis_up_acknowledges_everything(env: dict[str, str],
                                                      doomed_redis: RedisServer) -> None:
    proc, client = _start_producing(env, doomed_redis, "calm")
    try:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        entries = _audio_entries(client, env["VOXQ_PREFIX"], "calm")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        client.close()
    assert proc.returncode == 143, err
    assert "was acknowledged and session calm ended with end of stream" in err, err
    assert entries and getattr(entries[-1], "eos", False)


def test_stereo_file_keeps_both_channels(env: dict[str, str], keys: Keys,
                                         redis_server: RedisServer, tmp_path: Path) -> None:
    """No --channels: a stereo file makes a two-channel session; more than two channels is
    an error unless --downmix mixes them into one."""
    t = np.arange(16000) / 16000
    left, right = 0.3 * np.sin(2 * np.pi * 440 * t), np.zeros_like(t)
    sf.write(tmp_path / "st.wav", np.stack([left, right], axis=1), 16000)
    p = _produce(env, str(tmp_path / "st.wav"), "--session", "st", "--fast")
    assert p.returncode == 0, p.stderr
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert client.hget(keys.meta("st"), "channels") == b"2"
        chunks = _audio_entries(client, env["VOXQ_PREFIX"], "st")
        pcm = np.frombuffer(b"".join(getattr(c, "pcm", b"") for c in chunks), "<i2")
        frames = pcm.reshape(-1, 2)
        assert np.abs(frames[:, 0]).max() > 5000 and np.abs(frames[:, 1]).max() == 0
        sf.write(tmp_path / "quad.wav", np.stack([left] * 4, axis=1), 16000)
        p = _produce(env, str(tmp_path / "quad.wav"), "--session", "quad", "--fast")
        assert p.returncode == 2 and "has 4 channels" in p.stderr and "--downmix" in p.stderr
        assert not client.exists(keys.meta("quad"))
        p = _produce(env, str(tmp_path / "quad.wav"), "--session", "quad", "--fast",
                     "--downmix")
        assert p.returncode == 0, p.stderr
        assert client.hget(keys.meta("quad"), "channels") == b"1"
    finally:
        client.close()


def test_sync_publisher_session_outcome(settings: Settings, worker: Worker) -> None:
    with SyncPublisher(settings.redis_url or "", settings=settings) as pub:
        pub.open("aws-sync", vendor="aws")
        pub.send(bytes(32000))  # one second of silence
        result = pub.session_outcome(timeout=240)
        assert result.status is Status.FAILED and NO_CREDENTIALS in result.error
        with pytest.raises(SessionFailed):
            pub.send(bytes(3200))
        with pytest.raises(SessionFailed):
            pub.close()  # no end of stream into a failed session; the publisher is shut
