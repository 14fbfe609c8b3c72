"""Volcengine's settings and credentials (console APP ID and Access Token, or a new-console
API key; resource ids and URLs of its ASR and TTS services)."""

from __future__ import annotations

import uuid
from typing import ClassVar

from pydantic import SecretStr

from workers.vendors.base import VendorAuthError
from workers.vendors.settings import VendorSettings


class VolcengineSettings(VendorSettings):
    """Credentials, the streaming-ASR resource and URL, and the TTS endpoints."""

    prefix: ClassVar[str] = "volcengine_"
    app_id: str | None
    access_token: SecretStr | None
    api_key: SecretStr | None
    asr_resource_id: str
    asr_url: str
    tts_url: str
    tts_cluster: str
    tts_v3_url: str
    tts_resource_id: str | None

    def asr_headers(self) -> tuple[dict[str, str], tuple[str, ...]]:
        """The streaming ASR's ``X-Api-*`` headers and the secrets to redact; VendorAuthError
        naming the variables when no credentials are set."""
        token = self.access_token.get_secret_value() if self.access_token else ""
        key = self.api_key.get_secret_value() if self.api_key else ""
        headers = {"X-Api-Resource-Id": self.asr_resource_id,
                   "X-Api-Connect-Id": str(uuid.uuid4())}
        if self.app_id and token:
            headers["X-Api-App-Key"] = self.app_id
            headers["X-Api-Access-Key"] = token
        elif key:
            headers["X-Api-Key"] = key
        else:
            raise VendorAuthError(
                "Volcengine credentials are missing: set VOLCENGINE_APP_ID and "
                "VOLCENGINE_ACCESS_TOKEN (or VOLCENGINE_API_KEY) in the worker's environment",
                vendor="volcengine")
        return headers, tuple(x for x in (token, key) if x)
