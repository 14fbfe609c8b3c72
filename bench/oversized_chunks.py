"""Worker memory under hostile audio: a `voxq worker` process, its resident memory (VmRSS and
peak VmHWM from /proc) after one honest watermark session (the baseline, same run) and then
after a session whose stream holds oversized chunks written straight into Redis (16 entries of
10 MB, as a careless or hostile producer could, all written before the session is claimed).
Prints one JSON document with both figures
and the oversized session's end (it must be `failed` with the reason, never `finished`).

Run: ``python bench/oversized_chunks.py [--chunks 16] [--mb 10]`` (Linux: reads /proc).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.emulators.watermark import WatermarkEmulator, watermark_pcm  # noqa: E402
from voxq.embedded_redis import RedisServer  # noqa: E402
from voxq.keys import Keys  # noqa: E402
from voxq.records import SessionMeta, encode_chunk, encode_eos  # noqa: E402
from voxq.redis_conn import connect  # noqa: E402
from voxq.sessions import create_session  # noqa: E402


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in kB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(value.split()[0])
    return out


async def wait_end(r, keys: Keys, sid: str, timeout: float = 120) -> dict[str, str]:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        h = await r.hgetall(keys.meta(sid))
        if h.get(b"status") in (b"finished", b"failed", b"abandoned"):
            return {k.decode(): v.decode() for k, v in h.items()
                    if k in (b"status", b"error", b"bad_chunks")}
        await asyncio.sleep(0.1)
    raise TimeoutError(sid)


async def run(chunks: int, mb: int) -> dict[str, object]:
    keys = Keys("bench-oversized")
    with RedisServer() as server, WatermarkEmulator() as emu:
        env = {**os.environ, "REDIS_URL": server.url, "VOXQ_PREFIX": keys.prefix,
               "VOXQ_WS_URL": emu.url, "VOXQ_LOG_LEVEL": "WARNING"}
        worker = subprocess.Popen([sys.executable, "-m", "voxq", "worker", "--name", "bench"],
                                  env=env, cwd=REPO)
        r = connect(server.url)
        try:
            await create_session(r, keys, SessionMeta(session_id="honest", vendor="voxq-ws"))
            pcm = watermark_pcm(50)
            for i in range(0, len(pcm), 3200):
                await r.xadd(keys.audio("honest"), encode_chunk(i // 3200, pcm[i:i + 3200]))
            await r.xadd(keys.audio("honest"), encode_eos(len(pcm) // 3200))
            honest = await wait_end(r, keys, "honest")
            await asyncio.sleep(1.0)
            baseline = memory_kb(worker.pid)
            # the whole stream is there before the session is claimed: the worst case, the
            # first XREAD may return COUNT entries of it at once
            for i in range(chunks):
                await r.xadd(keys.audio("hostile"), encode_chunk(i, b"\0" * (mb * 1_000_000)))
            await r.xadd(keys.audio("hostile"), encode_eos(chunks))
            await create_session(r, keys, SessionMeta(session_id="hostile", vendor="voxq-ws"))
            hostile = await wait_end(r, keys, "hostile")
            await asyncio.sleep(1.0)
            after = memory_kb(worker.pid)
        finally:
            worker.terminate()
            worker.wait(30)
            await r.aclose()
    return {"machine": platform.node(), "python": platform.python_version(),
            "oversized_chunks": chunks, "chunk_mb": mb,
            "baseline_honest_session": {"end": honest, "rss_kb": baseline["VmRSS"],
                                        "peak_kb": baseline["VmHWM"]},
            "after_oversized_session": {"end": hostile, "rss_kb": after["VmRSS"],
                                        "peak_kb": after["VmHWM"]},
            "rss_growth_kb": after["VmRSS"] - baseline["VmRSS"],
            "peak_growth_kb": after["VmHWM"] - baseline["VmHWM"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--chunks", type=int, default=16)
    p.add_argument("--mb", type=int, default=10)
    args = p.parse_args()
    print(json.dumps(asyncio.run(run(args.chunks, args.mb)), indent=2))


if __name__ == "__main__":
    main()
