"""Publisher.attach against a real Redis: a second publisher continues a session exactly after
the last chunk in its stream (the ingest gateway's resume), and refuses ended sessions."""

from __future__ import annotations

import numpy as np
import pytest
import redis.asyncio as aioredis
from pubtest_util import check_stream, read_audio

from producer.publisher import Publisher
from voxq.errors import InvalidInput, SessionExists
from voxq.keys import Keys
from voxq.settings import Settings

pytestmark = pytest.mark.timeout(60)


async def test_attach_continues_after_the_last_chunk(settings: Settings, keys: Keys,
                                                     r: aioredis.Redis) -> None:
    assert settings.redis_url
    pcm = np.arange(16000, dtype="<i2").tobytes()
    first = Publisher(settings.redis_url, settings=settings)
    await first.open("at")
    await first.send(pcm[:10000])  # 3 whole chunks of 3200 bytes, 400 bytes left over
    await first.flush()
    await first.abort()  # gone without eos: the partial chunk was never written
    acked = []
    second = Publisher(settings.redis_url, settings=settings)
    second.on_ack = acked.append
    meta = await second.attach("at")
    assert meta.session_id == "at" and second.acked_seq == 2
    await second.send(pcm[3 * 3200:])
    await second.close()
    assert check_stream(await read_audio(r, keys, "at")) == pcm
    assert acked and acked[-1] == second.acked_seq


async def test_attach_refuses_missing_and_ended_sessions(settings: Settings) -> None:
    assert settings.redis_url
    with pytest.raises(InvalidInput):
        await Publisher(settings.redis_url, settings=settings).attach("nosuch")
    p = Publisher(settings.redis_url, settings=settings)
    await p.open("done")
    await p.close()
    with pytest.raises(SessionExists):
        await Publisher(settings.redis_url, settings=settings).attach("done")
