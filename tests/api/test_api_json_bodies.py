"""Hostile JSON bodies on every route that takes one: deep nesting is a 422 (never a
RecursionError and a 500), oversized bodies are a 413 decided before the body is complete (from
Content-Length, or while a chunked body streams in), and big bodies never stop /healthz."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator

import httpx
import ijson
import pytest
from apitest_support import FAST, LiveServer, chunked, post_head, raw_exchange, serve_in_thread
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from api.app import create_app
from api.json_body import JsonLimits, _Builder
from api.routes_tts import batch_limits, single_limits
from voxq.settings import Settings

DEEP_BODIES = {
    "arrays": b"[" * 1000 + b"]" * 1000,
    "objects": b'{"a":' * 1000 + b"1" + b"}" * 1000,
    "in-items": b'{"items": [' + b"[" * 1000 + b"]" * 1000 + b"]}",
    "unclosed": b"[" * 100_000,
}


def json_post_routes(app_openapi: dict[str, object]) -> list[str]:
    """Every path whose POST takes a JSON body, from the app's own OpenAPI document."""
    out = []
    paths = app_openapi["paths"]
    assert isinstance(paths, dict)
    for path, ops in paths.items():
        post = ops.get("post")
        if post and "application/json" in post.get("requestBody", {}).get("content", {}):
            out.append(path)
    return sorted(out)


def limits_of(path: str, settings: Settings) -> JsonLimits:
    return {"/v1/tts": single_limits, "/v1/tts/batch": batch_limits}[path](settings)


@pytest.fixture
def small(settings: Settings) -> Settings:
    """Small TTS limits, so oversized bodies are cheap to send."""
    return settings.model_copy(update={"tts_max_text_chars": 100, "tts_max_batch_items": 5})


@pytest.fixture
def small_live(small: Settings) -> Iterator[LiveServer]:
    yield from serve_in_thread(create_app(small, small.redis_url or "", options=FAST))


async def test_every_json_route_is_covered(client: httpx.AsyncClient) -> None:
    routes = json_post_routes((await client.get("/openapi.json")).json())
    assert routes == ["/v1/keys", "/v1/tokens", "/v1/tts", "/v1/tts/batch", "/v1/webhooks"]


@pytest.mark.parametrize("shape", sorted(DEEP_BODIES))
async def test_deep_nesting_is_a_422_on_every_json_route(client: httpx.AsyncClient,
                                                         shape: str,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    for path in json_post_routes((await client.get("/openapi.json")).json()):
        resp = await client.post(path, content=DEEP_BODIES[shape],
                                 headers={"content-type": "application/json"})
        assert resp.status_code == 422, (path, resp.text)
        assert "nested deeper than" in resp.json()["detail"]
    assert "Traceback" not in caplog.text and "RecursionError" not in caplog.text


async def test_syntax_errors_do_not_echo_the_body(client: httpx.AsyncClient) -> None:
    for path in ("/v1/tts", "/v1/tts/batch"):
        for body in (b'{"text": "secret-ish" x', b"", b"\xff\xfe{}", b'{"text": NaN}'):
            resp = await client.post(path, content=body)
            assert resp.status_code == 422, (path, body, resp.text)
            assert "secret-ish" not in resp.text


def test_declared_oversize_is_refused_before_any_body(small_live: LiveServer,
                                                      small: Settings) -> None:
    for path in ("/v1/tts", "/v1/tts/batch"):
        limit = limits_of(path, small).max_bytes
        got = raw_exchange(small_live.url, post_head(path, limit + 1))  # no body byte sent
        assert got.status == 413, got.head
        assert f"limit is {limit}" in got.body.decode()


def test_chunked_oversize_is_refused_while_it_streams(small_live: LiveServer,
                                                      small: Settings) -> None:
    for path in ("/v1/tts", "/v1/tts/batch"):
        limit = limits_of(path, small).max_bytes
        # One JSON string longer than the limit, sent in 1 KB chunks, no final chunk: the
        # server must answer without ever seeing the end of the body.
        parts = [b'{"text": "'] + [b"x" * 1024] * (limit // 1024 + 2)
        got = raw_exchange(small_live.url, post_head(path, None), chunked(parts))
        assert got.status == 413, got.head
        assert f"over the limit of {limit} bytes" in got.body.decode()


def test_too_many_values_or_items_is_a_413(small_live: LiveServer) -> None:
    too_many_items = b'{"items": [' + b",".join([b'{"text": "a"}'] * 6) + b"]}"
    got = raw_exchange(small_live.url, post_head("/v1/tts/batch", len(too_many_items)),
                       [too_many_items])
    assert got.status == 413 and b"more than 5 items" in got.body
    many_values = b'{"text": "a", "x": [' + b",".join([b"1"] * 100) + b"]}"
    got = raw_exchange(small_live.url, post_head("/v1/tts", len(many_values)), [many_values])
    assert got.status == 413 and b"JSON values" in got.body


EMPTY_ITEMS_12MB = b'{"items": [' + b"{}," * 4_000_000 + b"{}]}"


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_huge_batch_is_refused_from_its_first_chunk(live: LiveServer, settings: Settings,
                                                    framing: str) -> None:
    body = EMPTY_ITEMS_12MB
    assert len(body) <= batch_limits(settings).max_bytes  # within the byte bound: items decide
    first = [body[:256 * 1024]]
    if framing == "chunked":
        got = raw_exchange(live.url, post_head("/v1/tts/batch", None), chunked(first))
    else:
        got = raw_exchange(live.url, post_head("/v1/tts/batch", len(body)), first)
    # Only the first 256 KB were sent and the body never ended: the 413 came without it.
    assert got.status == 413, got.head
    assert b"more than 100 items" in got.body


def test_healthz_answers_while_big_bodies_are_refused(live: LiveServer) -> None:
    answers: list[int] = []
    stop = threading.Event()

    def flood() -> None:
        while not stop.is_set():
            got = raw_exchange(live.url, post_head("/v1/tts/batch", len(EMPTY_ITEMS_12MB)),
                               [EMPTY_ITEMS_12MB[i:i + 1 << 20]
                                for i in range(0, len(EMPTY_ITEMS_12MB), 1 << 20)])
            answers.append(got.status)

    senders = [threading.Thread(target=flood, daemon=True) for _ in range(4)]
    for t in senders:
        t.start()
    try:
        async def probe() -> list[int]:
            codes = []
            async with asyncio.timeout(120), httpx.AsyncClient(base_url=live.url,
                                                               timeout=10.0) as c:
                while len(answers) < 8:
                    codes.append((await c.get("/healthz")).status_code)
                    await asyncio.sleep(0.01)
            return codes
        codes = asyncio.run(probe())
    finally:
        stop.set()
        for t in senders:
            t.join(30)
    assert codes and set(codes) == {200}
    assert set(answers) == {413}


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=4),
    max_leaves=30)


@hsettings(max_examples=200, deadline=None)
@given(value=JSON_VALUES, step=st.integers(1, 64))
def test_streamed_body_equals_json_loads(value: object, step: int) -> None:
    """Whatever the chunking, the streaming reader builds what json.loads builds."""
    body = json.dumps(value).encode()
    events = ijson.sendable_list()
    parser = ijson.basic_parse_coro(events, use_float=True)
    check = _Builder(JsonLimits(max_bytes=10**6, max_values=10**6, max_depth=100))
    for i in range(0, len(body), step):
        parser.send(body[i:i + step])
        check.feed(events)
        del events[:]
    parser.close()
    check.feed(events)
    assert check.builder.value == json.loads(body)
