"""A configuration that cannot work (a malformed REDIS_URL, a bad number, an unknown log level)
is one line naming the variable and exit status 2 from every entry point, never a traceback,
and never the Redis password."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from voxq.errors import ConfigError, InvalidInput
from voxq.redis_conn import validate_redis_url
from voxq.settings import load_settings

SAMPLE = Path(__file__).resolve().parents[2] / "voxq" / "samples" / "support-call.flac"
PASSWORD = "hunter2-do-not-show"

GOOD_URLS = ["redis://localhost:6379/0", f"redis://:{PASSWORD}@h:1/3", "rediss://h",
             "unix:///tmp/redis.sock", "redis://h:1?socket_timeout=2",
             "redis+cluster://a:1,b:2/", f"rediss+cluster://u:{PASSWORD}@a:1/"]
BAD_URLS = {
    "localhost:6379": "schemes",
    f"redis://:{PASSWORD}@h:port/0": "Port could not be cast",
    "redis://h:99999": "Port out of range",
    "redis://h:1/zero": "database must be a number",
    "redis://h:1?colour=blue": "unknown option 'colour'",
    "redis://h:1?socket_timeout=soon": "socket_timeout",
    "http://h:1": "schemes",
    "redis://[::1:6379": "IPv6",
    f"redis+cluster://u:{PASSWORD}@a:1,b:x/": "bad port 'x'",
    "redis+cluster://a:1/?nope=1": "unknown Redis Cluster URL option",
}

# Every entry point with arguments that would otherwise get it running.
ENTRY_POINTS = {
    "api": ["api", "--port", "0"],
    "worker": ["worker"],
    "produce": ["produce", str(SAMPLE), "--session", "cfg-1"],
    "tts": ["tts", "hello", "-o", "/dev/null"],
    "tts-worker": ["tts-worker"],
    "redis": ["redis", "--port", "0"],
    "demo": ["demo"],
}


@pytest.mark.parametrize("url", GOOD_URLS)
def test_good_urls_pass(url: str) -> None:
    assert validate_redis_url(url) == url


@pytest.mark.parametrize("url", sorted(BAD_URLS))
def test_bad_urls_say_what_is_wrong_without_the_password(url: str) -> None:
    with pytest.raises(InvalidInput) as e:
        validate_redis_url(url)
    assert BAD_URLS[url] in str(e.value)
    assert PASSWORD not in str(e.value)


def test_settings_load_names_every_bad_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", f"redis://:{PASSWORD}@h:port")
    monkeypatch.setenv("VOXQ_API_PORT", "eighty")
    monkeypatch.setenv("VOXQ_LOG_LEVEL", "loud")
    with pytest.raises(ConfigError) as e:
        load_settings()
    text = str(e.value)
    assert "\n" not in text and PASSWORD not in text
    for name in ("REDIS_URL", "VOXQ_API_PORT", "VOXQ_LOG_LEVEL"):
        assert name in text


def run_voxq(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("VOXQ_", "REDIS_"))}
    return subprocess.run([sys.executable, "-m", "voxq", *args], env={**clean, **env},
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_every_entry_point_reports_a_bad_redis_url_in_one_line(entry: str) -> None:
    done = run_voxq(ENTRY_POINTS[entry], REDIS_URL=f"redis://:{PASSWORD}@redis-host:63x79/0")
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("voxq: error: invalid configuration: REDIS_URL: ")
    assert "Port could not be cast" in lines[0]
    assert PASSWORD not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(("variable", "value", "words"), [
    ("VOXQ_RQ_REDIS_URL", "rq-host:6379", ["VOXQ_RQ_REDIS_URL", "schemes"]),
    ("VOXQ_LOG_LEVEL", "chatty", ["VOXQ_LOG_LEVEL", "DEBUG"]),
    ("VOXQ_API_PORT", "99999", ["VOXQ_API_PORT", "65535"]),
])
def test_other_bad_variables_are_one_line_too(variable: str, value: str,
                                              words: list[str]) -> None:
    done = run_voxq(["api", "--port", "0"], **{variable: value})
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    for word in words:
        assert word in lines[0]
