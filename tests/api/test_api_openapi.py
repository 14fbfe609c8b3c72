"""The OpenAPI document tells the truth: schemathesis, with every check it has, against a live
uvicorn serving the API on a real Redis; and the document's own shape (resolvable references,
error answers in the one `{"detail": ...}` shape, security only with a key)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from apitest_support import FAST, LiveServer, add_final, add_session, serve_in_thread
from hypothesis import HealthCheck
from hypothesis import settings as hsettings
from pydantic import SecretStr
from schemathesis.checks import CHECKS, load_all_checks

from api.app import create_app
from voxq.embedded_redis import RedisServer
from voxq.keys import Keys
from voxq.records import Status
from voxq.redis_conn import connect
from voxq.settings import Settings

load_all_checks()
ALL_CHECKS = CHECKS.get_all()
# With a key the calls below add the Authorization header themselves, which undoes a case that
# drops it to test rejection: that check runs in the keyless run only.
KEYED_CHECKS = [c for c in ALL_CHECKS if c.__name__ != "negative_data_rejection"]


def small_settings(redis_server: RedisServer, prefix: str, **more: Any) -> Settings:
    return Settings(redis_url=redis_server.url, prefix=prefix, tts_max_text_chars=60,
                    tts_max_batch_items=3, **more)


KEY = "openapi-test-key"


def seeded_live(redis_server: RedisServer, **more: Any) -> Iterator[LiveServer]:
    """The API on the test Redis with one finished session (so /events of it ends)."""
    prefix = f"openapi-{time.time_ns()}"
    settings = small_settings(redis_server, prefix, **more)

    async def seed() -> None:
        r = connect(redis_server.url)
        keys = Keys(prefix)
        await add_session(r, keys, "done-1", status=Status.FINISHED)
        await add_final(r, keys, "done-1", 0, "hello", 0.0, 1.0)
        await r.aclose()

    import asyncio
    asyncio.run(seed())
    yield from serve_in_thread(create_app(settings, redis_server.url, options=FAST))


@pytest.fixture(scope="module")
def schema_live(redis_server: RedisServer) -> Iterator[LiveServer]:
    yield from seeded_live(redis_server)


@pytest.fixture(scope="module")
def schema_live_auth(redis_server: RedisServer) -> Iterator[LiveServer]:
    yield from seeded_live(redis_server, api_key=SecretStr(KEY))


# Every check at its defaults, except that a 413 also counts as rejecting schema-violating
# data: text over the documented maxLength and batches over maxItems are "too large".
CONFIG = schemathesis.Config.from_dict({"checks": {"negative_data_rejection": {
    "expected-statuses": ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422",
                          "428", "429", "5xx"]}}})


@pytest.fixture(scope="module")
def api_schema(schema_live: LiveServer) -> Any:
    return schemathesis.openapi.from_url(f"{schema_live.url}/openapi.json", config=CONFIG)


@pytest.fixture(scope="module")
def api_schema_auth(schema_live_auth: LiveServer) -> Any:
    return schemathesis.openapi.from_url(f"{schema_live_auth.url}/openapi.json", config=CONFIG)


# The firehose (GET /v1/events) never ends by design, so no whole answer exists to validate;
# tests/api/test_api_hub.py covers it. A session's /events waits up to ``wait`` seconds for a
# session that does not exist yet: the calls below cap a valid wait at one second.
FIREHOSE = r"^/v1/events$"
schema = schemathesis.pytest.from_fixture("api_schema").exclude(path_regex=FIREHOSE)
schema_auth = schemathesis.pytest.from_fixture("api_schema_auth").exclude(path_regex=FIREHOSE)


def short_waits(case: schemathesis.Case) -> schemathesis.Case:
    """The case with a numeric ``wait`` query capped at 1 s (others, invalid ones included,
    as generated)."""
    wait = (case.query or {}).get("wait")
    try:
        if wait is not None and float(wait) > 1:
            case.query["wait"] = 1
    except (TypeError, ValueError):
        pass
    return case
HEALTH = [HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture]


@pytest.mark.slow
@schema.parametrize()
@hsettings(max_examples=25, deadline=None, suppress_health_check=HEALTH, derandomize=True)
def test_api_matches_its_openapi_document(case: schemathesis.Case) -> None:
    short_waits(case).call_and_validate(checks=ALL_CHECKS, timeout=20)


@pytest.mark.slow
@schema_auth.parametrize()
@hsettings(max_examples=8, deadline=None, suppress_health_check=HEALTH, derandomize=True)
def test_api_with_a_key_matches_its_openapi_document(case: schemathesis.Case) -> None:
    """With VOXQ_API_KEY set: the same, and `ignored_auth` proves /v1 refuses a missing key."""
    short_waits(case).call_and_validate(checks=KEYED_CHECKS, timeout=20,
                                        headers={"Authorization": f"Bearer {KEY}"})


# --- the document's shape ---------------------------------------------------------------------

def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref":
                yield v
            else:
                yield from _refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _refs(v)


def _doc(settings: Settings) -> dict[str, Any]:
    doc: dict[str, Any] = create_app(settings, settings.redis_url or "").openapi()
    return json.loads(json.dumps(doc))


def test_every_reference_resolves_from_the_root(redis_server: RedisServer) -> None:
    doc = _doc(small_settings(redis_server, "doc"))
    refs = set(_refs(doc))
    assert "#/components/schemas/TtsRequest" in refs
    for ref in refs:
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.rsplit("/", 1)[1] in doc["components"]["schemas"], ref
    assert "$defs" not in json.dumps(doc)


def test_errors_are_documented_in_the_shape_they_have(redis_server: RedisServer) -> None:
    doc = _doc(small_settings(redis_server, "doc"))
    assert "HTTPValidationError" not in json.dumps(doc)
    paths = doc["paths"]
    want = {("/v1/sessions/{session_id}", "get"): {"404", "409", "422", "503"},
            ("/v1/tts", "post"): {"413", "422", "503"},
            ("/v1/tts/batch", "post"): {"413", "422", "503"},
            ("/v1/tts/{job_id}/audio", "get"): {"404", "409", "416", "503"},
            ("/v1/tts/batches/{batch_id}/zip", "get"): {"404", "409", "503"}}
    for (path, method), codes in want.items():
        responses = paths[path][method]["responses"]
        assert codes <= set(responses), (path, sorted(responses))
        for code in codes:
            schema_ = responses[code]["content"]["application/json"]["schema"]
            assert schema_ == {"$ref": "#/components/schemas/ErrorOut"}
    sid = next(p for p in paths["/v1/sessions/{session_id}"]["get"]["parameters"]
               if p["name"] == "session_id")
    assert sid["schema"]["pattern"] == "^[A-Za-z0-9._-]{1,128}$"
    text = doc["components"]["schemas"]["TtsRequest"]["properties"]["text"]
    assert text["minLength"] == 1 and text["maxLength"] == 60
    rates = {b["title"]: b["properties"]["sample_rate"]["enum"]
             for b in doc["components"]["schemas"]["TtsRequest"]["oneOf"]}
    assert rates["volcengine"] == [8000, 16000, 24000]
    items = doc["components"]["schemas"]["TtsBatchRequest"]["properties"]["items"]
    assert items["maxItems"] == 3


def test_security_is_declared_only_with_a_key(redis_server: RedisServer) -> None:
    off = _doc(small_settings(redis_server, "doc"))
    assert "securitySchemes" not in off["components"]
    assert all("security" not in op for ops in off["paths"].values() for op in ops.values())
    assert all("401" not in op["responses"] for ops in off["paths"].values()
               for op in ops.values())
    on = _doc(small_settings(redis_server, "doc", api_key=SecretStr("k-123")))
    assert on["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    for path, ops in on["paths"].items():
        for op in ops.values():
            # every route but the health probes needs a key (/metrics: metrics:read)
            guarded = op["x-required-scope"] != "public"
            assert guarded == (path.startswith("/v1/") or path == "/metrics"), path
            assert ("401" in op["responses"]) == guarded, path
            assert ("security" in op) == guarded, path


async def test_documented_answers_match_real_ones(schema_live: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=schema_live.url) as c:
        assert (await c.get("/v1/sessions/a b")).status_code == 422
        assert (await c.get("/v1/sessions/done-1/events")).status_code == 200
        assert (await c.post("/v1/tts", json={"text": "x" * 61})).status_code == 413
        assert (await c.post("/v1/tts", json={"text": "  "})).status_code == 422
