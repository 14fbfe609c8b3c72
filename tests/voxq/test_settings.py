"""Settings come from the environment; secrets never print."""

from voxq.settings import Settings


def test_env_names_and_secret_masking(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("REDIS_URL", "redis://x:1/0")
    monkeypatch.setenv("VOXQ_PREFIX", "pfx")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "TOPSECRETVALUE")
    monkeypatch.setenv("VOXQ_API_KEY", "APIKEYVALUE")
    s = Settings()
    assert (s.redis_url, s.prefix) == ("redis://x:1/0", "pfx")
    assert s.aws_secret_access_key and s.aws_secret_access_key.get_secret_value() == "TOPSECRETVALUE"
    for text in (repr(s), str(s), s.model_dump_json()):
        assert "TOPSECRETVALUE" not in text and "APIKEYVALUE" not in text
