"""The embedded Redis is a real redis-server: it starts, answers, restarts with AOF data."""

import redis

from voxq.embedded_redis import RedisServer, find_redis_server
from voxq.errors import RedisUnavailable
from voxq.redis_conn import redact_url


def test_start_restart_keeps_data_with_aof() -> None:
    with RedisServer(appendonly=True) as server:
        c = redis.Redis.from_url(server.url)
        c.set("k", "v")
        server.restart()
        assert redis.Redis.from_url(server.url).get("k") == b"v"
    assert not server.ping()


def test_binary_found() -> None:
    assert find_redis_server()


def test_bad_binary_is_a_clear_error(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("VOXQ_REDIS_SERVER", "/bin/false")
    try:
        RedisServer().start(timeout=3)
    except RedisUnavailable as e:
        assert "redis-server" in str(e)
    else:
        raise AssertionError("expected RedisUnavailable")


def test_url_passwords_are_redacted() -> None:
    assert redact_url("redis://user:s3cret@h:6379/0") == "redis://user:***@h:6379/0"
    assert "s3cret" not in redact_url("rediss://:s3cret@h/0")
