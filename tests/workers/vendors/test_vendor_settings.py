"""Each vendor package declares its settings; the deployment sets them through the core
settings' environment names, and nothing is declared on one side only."""

from __future__ import annotations

import pytest

from voxq.settings import Settings
from workers.vendors.assemblyai.settings import AssemblyAISettings
from workers.vendors.aws.settings import AwsSettings
from workers.vendors.base import VendorAuthError
from workers.vendors.dashscope.settings import DashScopeSettings
from workers.vendors.deepgram.settings import DeepgramSettings
from workers.vendors.settings import VendorSettings
from workers.vendors.volcengine.settings import VolcengineSettings
from workers.vendors.voxqws.settings import VoxqWsSettings

MODELS: list[type[VendorSettings]] = [AssemblyAISettings, AwsSettings, DashScopeSettings,
                                      DeepgramSettings, VolcengineSettings, VoxqWsSettings]


def test_every_vendor_setting_is_a_core_setting_and_back() -> None:
    claimed = {m.core_name(f) for m in MODELS for f in m.model_fields}
    assert claimed <= set(Settings.model_fields)
    vendor_fields = {f for f in Settings.model_fields
                     if f.startswith(tuple(m.prefix for m in MODELS))}
    assert vendor_fields == claimed


def test_vendor_settings_come_from_the_documented_environment_names(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEEPGRAM_API_KEY", "dg-key")
    monkeypatch.setenv("VOXQ_WS_URL", "ws://127.0.0.1:1/v1")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-2")
    monkeypatch.setenv("VOLCENGINE_API_KEY", "volc-key")
    s = Settings(redis_url="redis://unused")
    dg = DeepgramSettings.of(s)
    assert dg.authorization() == ("Token dg-key", ("dg-key",))
    assert VoxqWsSettings.of(s).url == "ws://127.0.0.1:1/v1"
    assert AwsSettings.of(s).region == "eu-west-2"
    headers, secrets = VolcengineSettings.of(s).asr_headers()
    assert headers["X-Api-Key"] == "volc-key" and secrets == ("volc-key",)
    with pytest.raises(VendorAuthError, match="set DASHSCOPE_API_KEY"):
        DashScopeSettings.of(s).headers()
    with pytest.raises(VendorAuthError, match="AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):
        AwsSettings.of(s).credentials()
