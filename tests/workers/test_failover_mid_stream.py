"""Failover mid-stream from every streaming vendor: each adapter, as a session's primary, talks
to its own strict emulator, which dies at a random point of the audio — the TCP connection
dropped without a close frame, or the vendor's own error (an AWS exception event, a Deepgram
1011 close, an AssemblyAI Error frame and close code, a v2 error frame and 4029, a DashScope
task-failed, a Volcengine error frame) — in some sessions before any final, in others after
finals were written. The session switches to its fallback (another tone-word emulator), which
replays from the checkpoint: across both vendors the transcript is the tone script word for
word, names and times (though each vendor groups the words into finals its own way: the pauses
are shorter than some vendors' ends of utterance and longer than others'), the primary's finals
first, each final naming its vendor, and the switch is recorded once with the vendor's reason,
which holds no secret even when the vendor echoes one in its error."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr

from tests.emulators import assemblyai_v2 as aai2
from tests.emulators import assemblyai_v3 as aai3
from tests.emulators import aws_transcribe as aws
from tests.emulators import dashscope_asr as dashscope
from tests.emulators import deepgram as dg
from tests.emulators import volcengine_asr as volc
from tests.emulators.common import wait_for
from tests.emulators.tone_words import ExpectedWord, Script, render, utterances
from tests.support import create, publish, wait_finished
from tests.workers.test_failover import finals, run_worker, switches
from voxq.aio import within
from voxq.keys import Keys
from voxq.settings import Settings
from workers.vendors.assemblyai.stt import AssemblyAIRecognizer
from workers.vendors.assemblyai.v2.stt import AssemblyAIV2Recognizer
from workers.vendors.aws.stt import AwsTranscribeRecognizer
from workers.vendors.dashscope.stt import DashScopeRecognizer
from workers.vendors.deepgram.stt import DeepgramRecognizer
from workers.vendors.volcengine.stt import VolcengineRecognizer

pytestmark = pytest.mark.timeout(120)

AWS_KEY_ID, AWS_SECRET = "AKIAMIDSTREAMTEST001", "mid-aws-secret-0000000000000001"
AAI_KEY = "mid-assemblyai-key-00000001"
DG_KEY = "mid-deepgram-key-000000001"
DG_FALLBACK_KEY = "mid-deepgram-fallback-key-01"
DS_KEY = "sk-midstream0000000000000001"
VOLC_APP, VOLC_TOKEN = "7300000042", "mid-volc-token-000000001"
SECRETS = (AWS_KEY_ID, AWS_SECRET, AAI_KEY, DG_KEY, DG_FALLBACK_KEY, DS_KEY, VOLC_TOKEN)

REPLAY_SPEED = 20.0  # every adapter replays this fast; the emulators' rate checks are relaxed
WORDS = 8
SESSIONS = (("early", "abort"), ("early", "error"), ("late", "abort"), ("late", "error"),
            ("late", "abort"), ("late", "error"))


@dataclass(frozen=True)
class Primary:
    """How one vendor's emulator is started, pointed at, made to die and read back."""

    emulator: Callable[[], Any]  # a fresh emulator (an async context manager)
    settings: Callable[[Any, Settings], Settings]  # the worker's settings for it (fake keys)
    connections: Callable[[Any], list[Any]]  # what it recorded, one entry per connection
    frame_seconds: float  # audio per vendor message (the adapter's re-cut)
    abort: Callable[[int], Any]  # drop the TCP connection after n audio messages
    error: Callable[[int], Any]  # the vendor's own error after n audio messages
    says: str  # what the switch reason shows of that error
    died: Callable[[Any], bool]  # the connection's record says the fault fired
    heard: Callable[[Any], int]  # audio messages the connection took


def _aws() -> aws.AwsTranscribeEmulator:
    emu = aws.AwsTranscribeEmulator()
    emu.config.credentials = {AWS_KEY_ID: AWS_SECRET}
    emu.config.realtime_factor = None  # the worker paces the replay
    return emu


def _aws_settings(emu: aws.AwsTranscribeEmulator, s: Settings) -> Settings:
    return s.model_copy(update={
        "aws_access_key_id": SecretStr(AWS_KEY_ID), "aws_secret_access_key": SecretStr(AWS_SECRET),
        "aws_session_token": None, "aws_region": emu.config.region,
        "aws_transcribe_endpoint": emu.url})


def _deepgram(key: str) -> Callable[[], dg.DeepgramEmulator]:
    def make() -> dg.DeepgramEmulator:
        return dg.DeepgramEmulator(dg.DgConfig(keys={key}))
    return make


def _aai3() -> aai3.AssemblyAIV3Emulator:
    return aai3.AssemblyAIV3Emulator(aai3.V3Config(keys={AAI_KEY}, realtime_factor=None))


def _aai2() -> aai2.AssemblyAIV2Emulator:
    return aai2.AssemblyAIV2Emulator(aai2.V2Config(keys={AAI_KEY}, too_fast_seconds=3600.0))


def _dashscope() -> dashscope.DashScopeEmulator:
    return dashscope.DashScopeEmulator(dashscope.EmulatorConfig(api_keys={DS_KEY}))


def _volcengine() -> volc.VolcengineEmulator:
    return volc.VolcengineEmulator(volc.EmulatorConfig(credentials={VOLC_APP: VOLC_TOKEN}))


PRIMARIES: dict[str, Primary] = {
    "aws": Primary(
        _aws, _aws_settings, lambda e: e.streams, 0.1,
        lambda n: aws.Fault("abort", after_events=n),
        lambda n: aws.Fault("exception", after_events=n,
                            exception_type="InternalFailureException",
                            message=f"An internal error occurred (credential {AWS_KEY_ID}, "
                                    f"secret {AWS_SECRET})."),
        "InternalFailureException",
        lambda c: c.exception is not None and c.exception[0] in ("<abort>",
                                                                 "InternalFailureException"),
        lambda c: c.events),
    "deepgram": Primary(
        _deepgram(DG_KEY), lambda e, s: e.configure(s, deepgram_api_key=SecretStr(DG_KEY)),
        lambda e: e.streams, 0.1,  # no re-cut: one message per 100 ms bus chunk
        lambda n: dg.Fault("abort", after_frames=n),
        lambda n: dg.Fault("close", after_frames=n, code=1011,
                           message=f"NET-0000: internal error on the stream of key {DG_KEY}"),
        "1011", lambda c: c.close is not None and c.close[0] in (1006, 1011),
        lambda c: len(c.frame_sizes)),
    "assemblyai": Primary(
        _aai3, lambda e, s: e.configure(s, assemblyai_api_key=SecretStr(AAI_KEY)),
        lambda e: e.sessions, AssemblyAIRecognizer.chunk_seconds or 0.1,
        lambda n: aai3.Fault("abort", after_chunks=n),
        lambda n: aai3.Fault("error", after_chunks=n, code=3005,
                             message=f"Session Cancelled: An error occurred (key {AAI_KEY})"),
        "3005", lambda c: c.close_code in (1006, 3005), lambda c: len(c.chunk_ms)),
    "assemblyai-v2": Primary(
        _aai2, lambda e, s: e.configure(s, assemblyai_api_key=SecretStr(AAI_KEY)),
        lambda e: e.sessions, AssemblyAIV2Recognizer.chunk_seconds or 0.1,
        lambda n: aai2.Fault("abort", after_chunks=n),
        lambda n: aai2.Fault("close", after_chunks=n, code=4029,
                             message=f"Client sent audio too fast (key {AAI_KEY})"),
        "4029", lambda c: c.close_code in (1006, 4029), lambda c: len(c.chunk_ms)),
    "dashscope": Primary(
        _dashscope, lambda e, s: e.configure(s, dashscope_api_key=SecretStr(DS_KEY)),
        lambda e: e.connections, DashScopeRecognizer.chunk_seconds or 0.1,
        lambda n: dashscope.Fault("abort", after_frames=n),
        lambda n: dashscope.Fault("task-failed", after_frames=n, code="InternalError",
                                  message=f"Internal server error! (api key {DS_KEY})"),
        "InternalError",
        lambda c: c.failure is not None and c.failure[0] in ("<abort>", "InternalError"),
        lambda c: c.frames),
    "volcengine": Primary(
        _volcengine,
        lambda e, s: e.configure(s, volcengine_app_id=VOLC_APP,
                                 volcengine_access_token=SecretStr(VOLC_TOKEN)),
        lambda e: e.streams, VolcengineRecognizer.chunk_seconds or 0.2,
        lambda n: volc.Fault("abort", after_packets=n),
        lambda n: volc.Fault("error", after_packets=n, code=55000000,
                             message=f"internal server error (access token {VOLC_TOKEN})"),
        "55000000", lambda c: c.error is not None and c.error[0] in (0, 55000000),
        lambda c: c.packets),
}


@pytest.fixture(autouse=True)
def fast_replay(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each vendor's documented ceiling (1-4x real time) would make every session last seconds;
    # the emulators' rate checks are relaxed to match.
    for cls in (AwsTranscribeRecognizer, DeepgramRecognizer, AssemblyAIRecognizer,
                AssemblyAIV2Recognizer, DashScopeRecognizer, VolcengineRecognizer):
        monkeypatch.setattr(cls, "max_replay_speed", REPLAY_SPEED)


#: quiet between tones, in 10 ms steps: shorter than every end of utterance but Deepgram's
#: (10 ms), between AWS's (300 ms) / AssemblyAI's (400 ms) and v2's (700 ms), longer than all
GAPS = ((15, 27), (45, 65), (80, 120))
LONGEST_END_OF_UTTERANCE = 0.7  # v2's; the other emulators close utterances sooner


def tone_script(rng: random.Random) -> Script:
    """Distinct tones (every word its own name, so loss, order and repetition show word by
    word) on a 10 ms grid, with gaps that make each vendor group them into finals its own way;
    the last tone follows a long pause, so every vendor has spoken before it starts."""
    freqs = rng.sample(range(300, 3100, 100), WORDS)
    gaps = [rng.randint(30, 60)] + [rng.randint(*rng.choice(GAPS)) for _ in freqs[2:]]
    gaps.append(rng.randint(120, 150))
    return [(gap / 100, f, rng.randint(20, 45) / 100) for gap, f in zip(gaps, freqs, strict=True)]


def fault_frames(rng: random.Random, words: list[ExpectedWord], when: str,
                 frame_seconds: float) -> int:
    """Audio messages the primary takes before it dies: ``early`` inside the first tone (no
    final can have come), ``late`` after the first final of any vendor (however it groups
    the first words) and before the last tone (so both vendors speak)."""
    if when == "early":
        return rng.randint(1, max(1, math.floor(words[0][2] / frame_seconds)))
    first_utterance = utterances(words, LONGEST_END_OF_UTTERANCE)[0]
    first = math.ceil((first_utterance[-1][2] + LONGEST_END_OF_UTTERANCE + 0.4) / frame_seconds)
    return rng.randint(first, max(first, math.floor(words[-1][1] / frame_seconds)))


def spoken(t: Any) -> list[tuple[str, float, float]]:
    """A final's words as (name, start, end), formatting (capitals, full stops) removed."""
    return [(w.text.strip(".,").lower(), w.start, w.end) for w in t.words]


async def no_secret_in_redis(r: aioredis.Redis, prefix: str) -> int:
    """No key of the test's prefix holds a configured secret (hashes and streams); how many
    keys were read."""
    read = 0
    async for key in r.scan_iter(match=f"{prefix}*"):
        kind = (await r.type(key)).decode()
        if kind == "hash":
            blob = b"".join(k + v for k, v in (await r.hgetall(key)).items())
        elif kind == "stream":
            blob = b"".join(k + v for _, f in await r.xrange(key) for k, v in f.items())
        else:
            continue
        leaked = [s for s in SECRETS if s.encode() in blob]
        assert not leaked, (key, leaked)
        read += 1
    return read


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("vendor", list(PRIMARIES))
async def test_vendor_dying_mid_stream_fails_over_word_for_word(
        vendor: str, seed: int, settings: Settings, r: aioredis.Redis, keys: Keys,
        prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    spec = PRIMARIES[vendor]
    rng = random.Random(f"{vendor}-{seed}")
    # the deepgram emulator is the fallback of every vendor but its own (AssemblyAI's is)
    backup = "assemblyai" if vendor == "deepgram" else "deepgram"
    async with contextlib.AsyncExitStack() as stack:
        primary = await stack.enter_async_context(spec.emulator())
        if backup == "deepgram":
            fallback = await stack.enter_async_context(_deepgram(DG_FALLBACK_KEY)())
            s = fallback.configure(settings, deepgram_api_key=SecretStr(DG_FALLBACK_KEY))
        else:
            fallback = await stack.enter_async_context(_aai3())
            s = fallback.configure(settings, assemblyai_api_key=SecretStr(AAI_KEY))
        s = spec.settings(primary, s).model_copy(update={
            "failover_attempts": 1, "failover_seconds": 20.0, "breaker_threshold": 10_000})
        _w, stop, task = await run_worker(s, f"w-mid-{vendor}")
        try:
            plan = []
            for i, (when, how) in enumerate(SESSIONS):
                pcm, words = render(tone_script(rng))
                n = fault_frames(rng, words, when, spec.frame_seconds)
                plan.append((f"{vendor}-{seed}-{i}", when, how, pcm, words, n))
                primary.faults.append(spec.abort(n) if how == "abort" else spec.error(n))
            # one session at a time until its first connection is in: the n-th connection
            # takes the n-th fault, so each session dies where its plan says
            for i, (sid, *_rest) in enumerate(plan):
                await create(r, keys, sid, vendor=vendor, fallback=(backup,))
                await wait_for(lambda i=i: len(spec.connections(primary)) > i, 30,
                               f"{sid} connecting to {vendor}")
            await asyncio.gather(*(publish(r, keys, sid, pcm, realtime=REPLAY_SPEED)
                                   for sid, _when, _how, pcm, _words, _n in plan))
            for sid, when, how, _pcm, words, n in plan:
                meta = await wait_finished(r, keys, sid, timeout=60)
                got = await finals(r, keys, sid)
                said = [w for t in got for w in spoken(t)]
                assert [w[0] for w in said] == [w[0] for w in words], (sid, when, n)
                for (_, start, end), (_, want_start, want_end) in zip(said, words, strict=True):
                    assert (start, end) == (pytest.approx(want_start, abs=0.02),
                                            pytest.approx(want_end, abs=0.02)), (sid, said)
                vendors = [t.vendor for t in got]
                k = vendors.count(vendor)
                assert vendors == [vendor] * k + [backup] * (len(got) - k), (sid, vendors)
                if when == "early":
                    assert k == 0, (sid, n, vendors)
                else:
                    assert 0 < k < len(got), (sid, n, vendors)
                assert (meta.active_vendor, meta.vendor_switches) == (backup, 1), sid
                [ev] = await switches(r, keys, sid)
                assert (ev["from"], ev["vendor"]) == (vendor, backup), sid
                expect = "1006" if how == "abort" else spec.says
                assert expect in ev["reason"], (sid, ev["reason"])
                assert not [x for x in SECRETS if x in ev["reason"]], ev["reason"]
            conns = spec.connections(primary)
            assert len(conns) == len(plan)  # no retry on the primary: it switched at once
            assert all(spec.died(c) for c in conns), [vars(c).get("fault") for c in conns]
            # each session died where its plan said (the n-th connection, the n-th fault)
            assert [spec.heard(c) for c in conns] == [n for *_rest, n in plan]
            assert await no_secret_in_redis(r, prefix) >= 3 * len(plan)  # meta, final, status
            logged = [rec.getMessage() for rec in caplog.records]
            assert sum(f"switching from {vendor} to {backup}" in m for m in logged) == len(plan)
            assert not [m for m in logged if any(x in m for x in SECRETS)]
        finally:
            stop.set()
            await within(task, 30)
