"""Deepgram's settings and credentials (DEEPGRAM_API_KEY / DEEPGRAM_ACCESS_TOKEN as
Deepgram's SDKs read them, VOXQ_DEEPGRAM_URL)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import SecretStr

from workers.vendors.base import VendorAuthError
from workers.vendors.settings import VendorSettings


class DeepgramSettings(VendorSettings):
    """Key or temporary JWT, and the live-streaming URL."""

    prefix: ClassVar[str] = "deepgram_"
    api_key: SecretStr | None
    access_token: SecretStr | None
    url: str

    def authorization(self) -> tuple[str, tuple[str, ...]]:
        """The Authorization header (the JWT as Bearer wins over the key as Token) and the
        secrets to redact; VendorAuthError naming the variables when neither is set."""
        jwt = self.access_token.get_secret_value() if self.access_token else ""
        key = self.api_key.get_secret_value() if self.api_key else ""
        if not (jwt or key):
            raise VendorAuthError("Deepgram credentials are missing: set DEEPGRAM_API_KEY (or "
                                  "DEEPGRAM_ACCESS_TOKEN) in the worker's environment",
                                  vendor="deepgram")
        return (f"Bearer {jwt}" if jwt else f"Token {key}"), tuple(x for x in (jwt, key) if x)
